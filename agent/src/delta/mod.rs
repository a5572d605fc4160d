//! Deltas: ship only what changed between two trees (`docs/deltas.md`).
//!
//! A delta rebuilds tree B (an ostree content checksum: root dirtree + dirmeta) on a device that
//! has tree A. Commits are not part of it: every device writes its own commit for an image, so
//! the caller writes one over the rebuilt root, as a layer import would. It is a directory (or
//! an OCI artifact with the same blobs): a `superblock` (from/to content checksums, B's root,
//! the dirtrees/dirmetas A lacks, compressed against A's dirtrees at the same paths, a list of
//! parts with sizes, SHA-256 and the objects each rebuilds)
//! and `part-NNNN` files, each one xz stream of operations: a file sent whole, a file as a
//! zstd patch against an object of A (`--patch-from`), a bsdiff patch (for kernel objects
//! against a BTF-renumbered source, see [`btf`]), or a file whose content A already has.
//!
//! [`apply`] streams part by part into repo transactions and verifies every rebuilt object, so
//! memory is bounded by the buffers, the part window (≤ 8 MiB) and the largest patched
//! old + new file pair (patch sources are capped at [`MAX_PATCH_SOURCE_SIZE`]). Applied parts
//! survive an interruption; the root is checked against `to` last.

mod apply;
mod btf;
mod format;
#[cfg(feature = "publish")]
mod generate;
mod source;

pub use apply::{apply, apply_dir, progress_path, read_superblock, Applied, DeltaStore, DirStore};
pub use btf::{BtfMaps, IdMap, MAX_BTF_SECTION};
pub use format::{
    PartInfo, Superblock, MAX_PATCH_SOURCE_SIZE, MAX_PATCH_TARGET_SIZE, PART_WINDOW_LOG_MAX,
    SUPERBLOCK_MAGIC,
};
#[cfg(feature = "publish")]
pub use generate::{generate, generate_with, DeltaSummary, GenerateOptions};
pub use source::{apply_from_source, apply_manifest, delta_size, find_delta, ArtifactStore};

/// OCI artifact type of a delta (its blobs: the superblock first, then the parts in order).
pub const ARTIFACT_TYPE: &str = "application/vnd.otter.delta.v3";
/// Annotation on a delta artifact: the manifest digest of the image it starts from.
pub const ANNOTATION_FROM: &str = "org.otter.delta.from";
/// Annotation on a delta artifact: the content checksum (hex) of the tree it starts from.
pub const ANNOTATION_FROM_CONTENT: &str = "org.otter.delta.from-content";
/// Annotation on a delta artifact: the content checksum (hex) of the tree it produces.
pub const ANNOTATION_TO_CONTENT: &str = "org.otter.delta.to-content";
/// File name of the superblock in a delta directory.
pub const SUPERBLOCK_NAME: &str = "superblock";

/// File name of part `index` in a delta directory.
pub fn part_name(index: usize) -> String {
    format!("part-{index:04}")
}
