//! Partial pulls of zstd:chunked layers: download only the files the repository lacks.
//!
//! A zstd:chunked layer (`skopeo copy --dest-compress-format zstd:chunked`, podman) is an
//! ordinary `tar+zstd` blob in which every file's content is its own zstd frame(s), followed by
//! a table of contents ([`toc`]) that lists each entry's metadata, the SHA-256 of its content and
//! the blob range of its frames. The layer descriptor names the TOC's position and its SHA-256;
//! the manifest holding the descriptor is pinned by the signed release statement, so a TOC that
//! hashes right is as trustworthy as the layer.
//!
//! For a layer whose diff_id is not already recorded ([`crate::import::layer_ref`]):
//! 1. [`plan`]: fetch the TOC with one Range request (resumable, like blobs), check its
//!    checksum, parse it with the importer's limits; look each regular file's content up in the
//!    repository's payload links ([`crate::ostree::Repo::payload_link`], ostree's own index by
//!    content SHA-256, written at import for files of at least `[update] payload-link-threshold`
//!    bytes); the frames of the others are coalesced into ranges (gaps under [`MERGE_GAP`]
//!    bytes are downloaded rather than split into another request). A layer under
//!    [`MIN_LAYER_SIZE`] bytes, or one whose partial pull would cost more than
//!    [`MAX_SHARE_PERCENT`] % of the blob, is fetched whole instead.
//! 2. [`import_layer`]: download the ranges into the blob directory (resumable across restarts:
//!    see [`crate::fetch::Ranges`]), then apply the layer from the TOC through the importer's
//!    tar rules ([`Importer::apply_layer_toc`]). Each file's content — read from its local
//!    object, or decompressed from its fetched frames — must match the TOC's size and digest; a
//!    file found locally under other owner/mode/xattrs gets a new object with the TOC's header.
//!    The resulting tree is the one the tar gives.
//!
//! Any problem (bad annotations, checksum mismatch, parse error, a file digest mismatch, a
//! registry that ignores Range) makes the caller import the whole layer the normal way: it costs
//! bytes, never a wrong tree.

pub mod toc;

use std::collections::HashMap;
use std::io::{self, Read};

use anyhow::{Context, Result};
use sha2::Digest as _;

use crate::fetch::Ranges;
use crate::import::{ContentSource, ImportLimits, Importer, ZSTD_WINDOW_LOG_MAX};
use crate::ostree::{Checksum, Repo};
use crate::source::{Descriptor, ImageSource, VerificationError};
use toc::{Kind, Toc, TocLocation};

/// Gaps between missing files shorter than this are downloaded rather than split into two
/// requests (a request costs a round trip and ~1 KiB of headers).
pub const MERGE_GAP: u64 = 4096;
/// Layers smaller than this are downloaded whole.
pub const MIN_LAYER_SIZE: u64 = 64 * 1024;
/// A partial pull that would download more than this share (percent) of the blob is not worth
/// its requests: the whole blob is fetched instead.
pub const MAX_SHARE_PERCENT: u64 = 80;

/// How a zstd:chunked layer will be pulled.
#[derive(Debug)]
pub struct Plan {
    pub toc: Toc,
    /// Content SHA-256 → a local content object with those bytes.
    local: HashMap<Checksum, Checksum>,
    /// Content SHA-256 → blob range of the frames to fetch it from.
    fetch: HashMap<Checksum, (u64, u64)>,
    /// The coalesced ranges to download.
    pub ranges: Vec<(u64, u64)>,
    /// Compressed TOC size (downloaded first).
    pub toc_bytes: u64,
    /// Regular files with content: found locally, and to download.
    pub files_local: usize,
    pub files_fetched: usize,
}

impl Plan {
    /// Bytes a pull downloads (TOC + ranges; at most: ranges already fetched are not subtracted).
    pub fn bytes(&self) -> u64 {
        self.toc_bytes + self.ranges.iter().map(|r| r.1 - r.0).sum::<u64>()
    }
}

/// Plan a partial pull of `desc`. `Ok(None)`: not a zstd:chunked layer, too small, not worth
/// it, or the source cannot serve ranges — fetch it whole. `Err`: the TOC is unusable (the
/// caller logs why and fetches the layer whole).
pub fn plan(
    repo: &Repo,
    src: &mut dyn ImageSource,
    desc: &Descriptor,
    limits: &ImportLimits,
) -> Result<Option<Plan>> {
    let Some(loc) = TocLocation::of(desc)? else {
        return Ok(None);
    };
    if desc.size < MIN_LAYER_SIZE {
        log::debug!(
            "layer {} is zstd:chunked but small ({} bytes): fetching it whole",
            desc.digest,
            desc.size
        );
        return Ok(None);
    }
    let toc_range = (loc.offset, loc.offset + loc.length);
    let Some(ranges) = src.fetch_ranges(desc, &[toc_range])? else {
        return Ok(None);
    };
    let compressed = ranges.read(toc_range.0, toc_range.1)?;
    let toc = toc::parse(&compressed, &loc, desc.size, limits)
        .with_context(|| format!("the zstd:chunked TOC of layer {}", desc.digest))?;
    let mut local = HashMap::new();
    let mut fetch: HashMap<Checksum, (u64, u64)> = HashMap::new();
    let (mut files_local, mut files_fetched) = (0, 0);
    for e in &toc.entries {
        let (Kind::Reg, Some(d)) = (e.kind, e.digest) else {
            continue;
        };
        if local.contains_key(&d) {
            files_local += 1;
            continue;
        }
        files_fetched += 1;
        if let std::collections::hash_map::Entry::Vacant(v) = fetch.entry(d) {
            match repo.payload_link(&d) {
                Some(obj) => {
                    local.insert(d, obj);
                    files_fetched -= 1;
                    files_local += 1;
                }
                None => {
                    v.insert((e.offset, e.end));
                }
            }
        }
    }
    let plan = Plan {
        ranges: coalesce(fetch.values().copied().collect(), MERGE_GAP),
        toc,
        local,
        fetch,
        toc_bytes: loc.length,
        files_local,
        files_fetched,
    };
    if plan.bytes() > desc.size / 100 * MAX_SHARE_PERCENT {
        log::info!(
            "layer {}: {} of {} files are missing; a partial pull ({} bytes) is not worth it for a \
             {}-byte blob: fetching it whole",
            desc.digest,
            plan.files_fetched,
            plan.files_fetched + plan.files_local,
            plan.bytes(),
            desc.size
        );
        return Ok(None);
    }
    Ok(Some(plan))
}

/// Sort ranges and merge those that overlap or lie less than `gap` bytes apart.
pub fn coalesce(mut ranges: Vec<(u64, u64)>, gap: u64) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (s, e) in ranges {
        match out.last_mut() {
            Some(last) if s <= last.1.saturating_add(gap) => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Download what `plan` lacks and apply the layer from its TOC (see the module docs). With
/// `diff_id`, the layer is recorded for later updates.
pub fn import_layer(
    imp: &mut Importer<'_>,
    repo: &Repo,
    src: &mut dyn ImageSource,
    desc: &Descriptor,
    plan: &Plan,
    diff_id: Option<&str>,
) -> Result<()> {
    let ranges = src
        .fetch_ranges(desc, &plan.ranges)?
        .context("the registry stopped answering Range requests")?;
    log::info!(
        "layer {}: {} files from the repository, {} downloaded ({} bytes in {} ranges)",
        desc.digest,
        plan.files_local,
        plan.files_fetched,
        plan.bytes(),
        plan.ranges.len()
    );
    let mut contents = Contents {
        repo,
        ranges: &ranges,
        plan,
    };
    imp.apply_layer_toc(&plan.toc, &mut contents, diff_id)
}

struct Contents<'a> {
    repo: &'a Repo,
    ranges: &'a Ranges,
    plan: &'a Plan,
}

impl ContentSource for Contents<'_> {
    fn open(&mut self, e: &toc::Entry) -> Result<Box<dyn Read + '_>> {
        let d = e
            .digest
            .with_context(|| format!("{:?} has content but no digest", e.name))?;
        let inner: Box<dyn Read> = if let Some(obj) = self.plan.local.get(&d) {
            let f = self.repo.open_file(obj)?;
            Box::new(
                f.content
                    .with_context(|| format!("content object {obj} is not a regular file"))?,
            )
        } else {
            let (s, end) =
                *self.plan.fetch.get(&d).with_context(|| {
                    format!("no source planned for {:?} (internal error)", e.name)
                })?;
            let mut z = zstd::stream::read::Decoder::new(self.ranges.open(s, end)?)
                .context("starting zstd decoder")?;
            z.window_log_max(ZSTD_WINDOW_LOG_MAX)
                .context("limiting the zstd window")?;
            Box::new(z)
        };
        Ok(Box::new(Checked {
            inner,
            hasher: sha2::Sha256::new(),
            len: 0,
            size: e.size,
            digest: d,
            name: e.name.clone(),
        }))
    }
}

/// Passes content through; fails at the end unless it had the TOC's size and digest.
struct Checked<R> {
    inner: R,
    hasher: sha2::Sha256,
    len: u64,
    size: u64,
    digest: Checksum,
    name: String,
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        let bad = |what: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                VerificationError::new(format!(
                    "{:?} {what} than its zstd:chunked TOC entry says",
                    self.name
                )),
            )
        };
        if self.len > self.size {
            return Err(bad(format!(
                "is larger ({}+ bytes, not {})",
                self.len, self.size
            )));
        }
        if n == 0 && !buf.is_empty() {
            if self.len != self.size {
                return Err(bad(format!(
                    "is shorter ({} bytes, not {})",
                    self.len, self.size
                )));
            }
            let got = Checksum(self.hasher.clone().finalize().into());
            if got != self.digest {
                return Err(bad(format!("has other content (sha256 {got})")));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalescing() {
        assert_eq!(coalesce(vec![], 10), vec![]);
        assert_eq!(
            coalesce(
                vec![(100, 200), (0, 50), (55, 60), (300, 400), (190, 250)],
                10
            ),
            vec![(0, 60), (100, 250), (300, 400)]
        );
        assert_eq!(
            coalesce(vec![(0, 10), (20, 30)], 0),
            vec![(0, 10), (20, 30)]
        );
        assert_eq!(coalesce(vec![(0, 10), (10, 30)], 0), vec![(0, 30)]);
    }

    #[test]
    fn checked_reader() {
        let data = b"hello\n".to_vec();
        let mk = |d: &[u8], size| Checked {
            inner: io::Cursor::new(d.to_vec()),
            hasher: sha2::Sha256::new(),
            len: 0,
            size,
            digest: Checksum::of(&data),
            name: "f".into(),
        };
        let mut out = Vec::new();
        mk(&data, 6).read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        assert!(mk(b"hellO\n", 6).read_to_end(&mut Vec::new()).is_err());
        assert!(mk(b"hello", 6).read_to_end(&mut Vec::new()).is_err());
        assert!(mk(b"hello\n!", 6).read_to_end(&mut Vec::new()).is_err());
    }
}
