//! Import of OCI image layers into one ostree commit.
//!
//! Layers are applied in order to an in-memory tree of names → (content checksum | directory
//! metadata). File contents stream straight from the (decompressed) tar into content objects
//! (see [`crate::ostree::Transaction`]), so memory grows with the number of entries, never with
//! file sizes. [`Importer::commit`] then writes the dirtrees, dirmetas and the commit.
//!
//! Import rules (version [`IMPORT_RULES_VERSION`]):
//! * media types: OCI `tar`, `tar+gzip`, `tar+zstd` (also the non-distributable variants) and
//!   Docker `rootfs.diff.tar(.gzip)`; anything else is an error;
//! * paths: a leading `/` or `./` is dropped (absolute = root-relative); **any** `..` component is
//!   refused, as is a non-UTF-8 name, a component longer than [`MAX_NAME_LEN`] or a path deeper
//!   than [`MAX_PATH_DEPTH`]; an entry whose parent path goes through a symlink or a
//!   non-directory is refused (the tree is never written through a symlink);
//! * OCI whiteouts: `.wh.NAME` hides NAME of lower layers, `.wh..wh..opq` hides all lower-layer
//!   content of its directory; entries of the same layer stay, whatever the order in the tar;
//!   other `.wh..wh.*` markers are ignored;
//! * hard links must point at an existing regular file or symlink (of this or an earlier
//!   layer), by the same path rules; they share the target's content object;
//! * owners, modes (incl. setuid/sticky) and xattrs (`SCHILY.xattr.*` PAX records; empty values
//!   are dropped as ostree does) are kept; directories implied by entries are `0755 0:0`;
//! * device nodes, fifos and sockets cannot be stored in ostree. Character and block devices are
//!   dropped under `/dev /proc /sys /run /tmp` (whose content is dropped anyway) and **refused**
//!   anywhere else (a device node in `/usr` or `/var` is a hole in the image, not something udev
//!   made); fifos are dropped with a warning;
//! * setuid/setgid regular files (also through a hard link) are accepted only under
//!   [`SETID_DIRS`] (`/usr/bin`, `/usr/sbin`, `/usr/lib*`, `/usr/libexec` and their non-usrmerged
//!   twins `/bin`, `/sbin`, `/lib*`); anywhere else (`/etc`, `/var`, `/home`, `/opt`, …) the layer
//!   is refused. Directories may be setgid (`/var/mail`, `/var/log/journal`);
//! * one layer may name a path only once, except directories (their metadata is updated): a
//!   second file, symlink or link at a path of the same layer is refused (tools disagree about
//!   which one wins);
//! * limits ([`ImportLimits`]): the uncompressed tar stream of a layer, and separately the file
//!   contents it expands to (sparse files), may not exceed `max_layer_size` (a decompression or
//!   sparse bomb is cut off there: the blob digest only covers the compressed bytes); a file whose
//!   header declares more is refused before anything is written; an import may hold at most
//!   `max_entries` tar entries; a path at most [`MAX_PATH_LEN`] bytes;
//! * at commit: `/etc` is moved to `/usr/etc` (merged into an existing `/usr/etc`, `/etc`
//!   entries winning); the contents of `/dev /proc /sys /run /tmp` are dropped (the directories
//!   stay); `/var` is kept as is (the seed of a first deployment's `/var`).
//!
//! A failed import changes no ref: its staged objects are deleted when the importer is dropped.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};

use crate::ostree::objects::{
    canonical_xattrs, DirMeta, DirTree, FileHeader, S_IFDIR, S_IFLNK, S_IFREG,
};
use crate::ostree::{content_checksum, Checksum, MetaValue, Repo, Transaction, MAX_TREE_DEPTH};

/// Version of the rules above; recorded in commits as `otter.import-rules` and in release
/// statements as `import_rules`.
///
/// * 1: the first rules (device nodes dropped everywhere, setuid files anywhere, no limits);
/// * 2: device nodes outside `/dev /proc /sys /run /tmp` refused, setuid/setgid files only
///   under [`SETID_DIRS`], duplicate entries refused, [`ImportLimits`] and the path limits.
///   An image accepted by both gives the same tree; v2 only refuses more.
///
/// A commit recorded with older rules is not reused for an image (`otter::update`): the image
/// is imported again under these rules.
pub const IMPORT_RULES_VERSION: u64 = 2;
/// Longest accepted path component (Linux NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;
/// Deepest accepted path.
pub const MAX_PATH_DEPTH: usize = 256;
/// Longest accepted path (Linux PATH_MAX).
pub const MAX_PATH_LEN: usize = 4096;
/// Default for [`ImportLimits::max_layer_size`]: 16 GiB uncompressed.
pub const DEFAULT_MAX_LAYER_SIZE: u64 = 16 << 30;
/// Default for [`ImportLimits::max_entries`]: the in-memory tree costs ~150 bytes per entry.
pub const DEFAULT_MAX_ENTRIES: u64 = 500_000;
/// Directories (and their subdirectories) where setuid/setgid files are accepted. An entry
/// ending in `*` matches any directory with that prefix (`usr/lib*` = `usr/lib`, `usr/lib64`,
/// `usr/libexec`).
pub const SETID_DIRS: [&str; 6] = ["usr/bin", "usr/sbin", "usr/lib*", "bin", "sbin", "lib*"];

/// What one import may contain. Hostile or broken layers hit these limits, not the device's
/// memory or disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImportLimits {
    /// Largest uncompressed layer: the decompressed tar stream, and separately the bytes of file
    /// contents it expands to (GNU sparse files), per layer.
    pub max_layer_size: u64,
    /// Most tar entries in one import (all layers together).
    pub max_entries: u64,
}

impl Default for ImportLimits {
    fn default() -> ImportLimits {
        ImportLimits {
            max_layer_size: DEFAULT_MAX_LAYER_SIZE,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

const _: () = assert!(MAX_PATH_DEPTH < MAX_TREE_DEPTH);

/// Largest zstd window accepted (2^25 = 32 MiB): bounds decoder memory. Frames made with
/// `zstd --long` and a bigger window are refused ("Frame requires too much memory").
pub const ZSTD_WINDOW_LOG_MAX: u32 = 25;

/// Top-level directories whose content is dropped (API filesystems and scratch space).
const EMPTIED_DIRS: [&str; 5] = ["dev", "proc", "sys", "run", "tmp"];

/// Result of an import.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Imported {
    pub commit: Checksum,
    pub content_checksum: Checksum,
    pub kernel: Option<Kernel>,
}

/// A kernel found in a tree. Paths are relative to the tree root (`usr/lib/modules/…`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kernel {
    pub version: String,
    pub vmlinuz: String,
    pub initramfs: Option<String>,
    pub devicetree: Option<String>,
}

struct Dir {
    meta: DirMeta,
    children: BTreeMap<String, Node>,
    /// Layer that last created or touched this directory (for whiteouts).
    layer: u32,
}

enum Node {
    Dir(Dir),
    File {
        csum: Checksum,
        symlink: bool,
        /// setuid or setgid (checked again for hard links to it).
        setid: bool,
        layer: u32,
    },
}

impl Node {
    fn layer(&self) -> u32 {
        match self {
            Node::Dir(d) => d.layer,
            Node::File { layer, .. } => *layer,
        }
    }
}

fn default_dir_meta() -> DirMeta {
    DirMeta {
        uid: 0,
        gid: 0,
        mode: S_IFDIR | 0o755,
        xattrs: Vec::new(),
    }
}

/// Applies layers, then writes one commit.
pub struct Importer<'r> {
    repo: &'r Repo,
    tx: Option<Transaction<'r>>,
    root: Dir,
    layer: u32,
    limits: ImportLimits,
    entries: u64,
    /// File content bytes written for the current layer.
    content_bytes: u64,
}

impl<'r> Importer<'r> {
    pub fn new(repo: &'r Repo) -> Importer<'r> {
        Importer {
            repo,
            tx: None,
            root: Dir {
                meta: default_dir_meta(),
                children: BTreeMap::new(),
                layer: 0,
            },
            layer: 0,
            limits: ImportLimits::default(),
            entries: 0,
            content_bytes: 0,
        }
    }

    /// An importer with other limits than [`ImportLimits::default`].
    pub fn with_limits(repo: &'r Repo, limits: ImportLimits) -> Importer<'r> {
        let mut i = Importer::new(repo);
        i.limits = limits;
        i
    }

    pub fn limits(&self) -> ImportLimits {
        self.limits
    }

    fn tx(&mut self) -> Result<&mut Transaction<'r>> {
        if self.tx.is_none() {
            self.tx = Some(self.repo.transaction()?);
        }
        self.tx.as_mut().context("transaction missing")
    }

    /// Apply one layer, in order. `media_type` selects decompression. The reader is read to its
    /// end (so a verifying reader can check size and digest).
    pub fn apply_layer(&mut self, media_type: &str, layer: &mut dyn Read) -> Result<()> {
        self.layer += 1;
        let n = self.layer;
        self.apply_layer_inner(media_type, layer)
            .with_context(|| format!("applying layer {n} ({media_type})"))
    }

    fn apply_layer_inner(&mut self, media_type: &str, layer: &mut dyn Read) -> Result<()> {
        self.tx()?;
        self.content_bytes = 0;
        let decoder: Box<dyn Read + '_> = match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Box::new(&mut *layer),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
                Box::new(flate2::read::MultiGzDecoder::new(&mut *layer))
            }
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
                let mut d = zstd::stream::read::Decoder::new(&mut *layer)
                    .context("starting zstd decoder")?;
                d.window_log_max(ZSTD_WINDOW_LOG_MAX)
                    .context("limiting the zstd window")?;
                Box::new(d)
            }
            other => bail!(
                "unsupported layer media type {other:?}: otter imports OCI tar, tar+gzip, tar+zstd \
                 and Docker rootfs.diff.tar.gzip layers"
            ),
        };
        let decoder: Box<dyn Read + '_> = Box::new(Bounded {
            inner: decoder,
            left: self.limits.max_layer_size,
            limit: self.limits.max_layer_size,
        });
        let mut archive = tar::Archive::new(decoder);
        let entries = archive.entries().context("reading the layer tar")?;
        for entry in entries {
            let mut entry =
                entry.context("reading the next tar entry (truncated or corrupt layer?)")?;
            self.entries += 1;
            if self.entries > self.limits.max_entries {
                bail!(
                    "the image has more than {} tar entries (import limit max_entries); refusing it",
                    self.limits.max_entries
                );
            }
            let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            self.apply_entry(&mut entry)
                .with_context(|| format!("layer entry {path:?}"))?;
        }
        // Read to the end: trailing padding, and for compressed layers the compressed trailer.
        let mut decoder = archive.into_inner();
        io::copy(&mut decoder, &mut io::sink()).context("reading the end of the layer")?;
        drop(decoder);
        io::copy(layer, &mut io::sink()).context("reading the end of the layer blob")?;
        Ok(())
    }

    fn apply_entry(&mut self, entry: &mut tar::Entry<'_, Box<dyn Read + '_>>) -> Result<()> {
        use tar::EntryType as T;
        let layer = self.layer;
        let etype = entry.header().entry_type();
        if matches!(
            etype,
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink
        ) {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let comps = split_path(&raw)?;
        let Some((name, parents)) = comps.split_last() else {
            // The root itself ("./").
            if etype == T::Directory {
                self.root.meta = dir_meta(entry)?;
                return Ok(());
            }
            bail!("entry for the root directory is not a directory");
        };

        // Whiteouts.
        if let Some(hidden) = name.strip_prefix(".wh.") {
            if hidden == ".wh..opq" {
                let dir = dir_mut(&mut self.root, parents, layer, true)?
                    .context("opaque whiteout parent missing")?;
                hide_lower(dir, layer);
            } else if hidden.starts_with(".wh.") {
                log::debug!("ignoring whiteout marker {name:?}");
            } else {
                let hidden = valid_component(hidden)?;
                if let Some(dir) = dir_mut(&mut self.root, parents, layer, false)? {
                    match dir.children.get_mut(&hidden) {
                        Some(n) if n.layer() < layer => {
                            dir.children.remove(&hidden);
                        }
                        Some(Node::Dir(d)) => hide_lower(d, layer),
                        _ => {}
                    }
                }
            }
            return Ok(());
        }

        let node = match etype {
            T::Directory => {
                let meta = dir_meta(entry)?;
                let parent = dir_mut(&mut self.root, parents, layer, true)?
                    .context("parent directory missing")?;
                match parent.children.get_mut(name) {
                    Some(Node::Dir(d)) => {
                        d.meta = meta;
                        d.layer = layer;
                    }
                    Some(n) if n.layer() == layer => bail!(
                        "the layer has this path as a file and as a directory; refusing an \
                         ambiguous layer"
                    ),
                    _ => {
                        parent.children.insert(
                            name.clone(),
                            Node::Dir(Dir {
                                meta,
                                children: BTreeMap::new(),
                                layer,
                            }),
                        );
                    }
                }
                return Ok(());
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                let h = entry.header();
                let mode = h.mode().context("invalid mode")? & 0o7777;
                let declared = if etype == T::GNUSparse {
                    h.as_gnu()
                        .context("sparse entry without a GNU header")?
                        .real_size()
                        .context("invalid sparse file size")?
                } else {
                    entry.size()
                };
                let header = FileHeader {
                    uid: owner(h.uid())?,
                    gid: owner(h.gid())?,
                    mode: S_IFREG | mode,
                    symlink_target: String::new(),
                    xattrs: pax_xattrs(entry)?,
                };
                let setid = mode & 0o6000 != 0;
                if setid {
                    check_setid(&comps)?;
                }
                let budget = self
                    .limits
                    .max_layer_size
                    .saturating_sub(self.content_bytes);
                if declared > budget {
                    bail!(
                        "file declares {declared} bytes, more than the {} bytes left of the \
                         uncompressed layer limit (max_layer_size {})",
                        budget,
                        self.limits.max_layer_size
                    );
                }
                // Refuse a bad parent or a duplicate before writing the content.
                let parent = dir_mut(&mut self.root, parents, layer, true)?
                    .context("parent directory missing")?;
                check_not_duplicate(parent, name, layer)?;
                let size = (etype != T::GNUSparse).then(|| entry.size());
                let mut content = Bounded {
                    inner: entry,
                    left: budget,
                    limit: self.limits.max_layer_size,
                };
                let tx = self.tx()?;
                let csum = tx.write_file_sized(&header, &mut content, size)?;
                self.content_bytes += budget - content.left;
                Node::File {
                    csum,
                    symlink: false,
                    setid,
                    layer,
                }
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .context("symlink without a target")?
                    .into_owned();
                let target = String::from_utf8(target).context("symlink target is not UTF-8")?;
                if target.is_empty() || target.contains('\0') {
                    bail!("symlink has an empty or invalid target");
                }
                let h = entry.header();
                let header = FileHeader {
                    uid: owner(h.uid())?,
                    gid: owner(h.gid())?,
                    mode: S_IFLNK | 0o777,
                    symlink_target: target,
                    xattrs: pax_xattrs(entry)?,
                };
                let parent = dir_mut(&mut self.root, parents, layer, true)?
                    .context("parent directory missing")?;
                check_not_duplicate(parent, name, layer)?;
                let csum = self.tx()?.write_file(&header, &mut io::empty())?;
                Node::File {
                    csum,
                    symlink: true,
                    setid: false,
                    layer,
                }
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .context("hard link without a target")?
                    .into_owned();
                let tcomps = split_path(&target).with_context(|| {
                    format!("hard link target {:?}", String::from_utf8_lossy(&target))
                })?;
                let (tname, tparents) = tcomps
                    .split_last()
                    .context("hard link to the root directory")?;
                let tdir = dir_mut(&mut self.root, tparents, layer, false).with_context(|| {
                    format!("hard link target {:?}", String::from_utf8_lossy(&target))
                })?;
                let node = match tdir.and_then(|d| d.children.get(tname)) {
                    Some(Node::File {
                        csum,
                        symlink,
                        setid,
                        ..
                    }) => Node::File {
                        csum: *csum,
                        symlink: *symlink,
                        setid: *setid,
                        layer,
                    },
                    Some(Node::Dir(_)) => bail!(
                        "hard link target {:?} is a directory",
                        String::from_utf8_lossy(&target)
                    ),
                    None => bail!(
                        "hard link target {:?} does not exist in this or an earlier layer",
                        String::from_utf8_lossy(&target)
                    ),
                };
                if matches!(node, Node::File { setid: true, .. }) {
                    check_setid(&comps).context("hard link to a setuid/setgid file")?;
                }
                let parent = dir_mut(&mut self.root, parents, layer, true)?
                    .context("parent directory missing")?;
                check_not_duplicate(parent, name, layer)?;
                node
            }
            T::Char | T::Block => {
                let top = parents.first().map(String::as_str).unwrap_or("");
                if !EMPTIED_DIRS.contains(&top) {
                    bail!(
                        "device node outside /dev: otter does not store device nodes (ostree cannot), \
                         and one elsewhere in an image is refused; create it at boot (udev, \
                         systemd-tmpfiles) instead"
                    );
                }
                log::debug!("dropping device node {:?}", comps.join("/"));
                return Ok(());
            }
            T::Fifo => {
                log::warn!(
                    "dropping fifo {:?}: ostree cannot store it",
                    comps.join("/")
                );
                return Ok(());
            }
            other => bail!("unsupported tar entry type {other:?}"),
        };
        let parent =
            dir_mut(&mut self.root, parents, layer, true)?.context("parent directory missing")?;
        parent.children.insert(name.clone(), node);
        Ok(())
    }

    /// Write dirtrees, dirmetas and the commit with `metadata` (plus `ostree.linux` when a
    /// kernel is found and the key is absent). Does not set refs.
    pub fn commit(
        mut self,
        subject: &str,
        mut metadata: Vec<(String, MetaValue)>,
        parent: Option<Checksum>,
    ) -> Result<Imported> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.tx()?;
        relocate_etc(&mut self.root)?;
        for d in EMPTIED_DIRS {
            if let Some(Node::Dir(dir)) = self.root.children.get_mut(d) {
                dir.children.clear();
            }
        }
        let kernel = kernel_in_tree(&self.root);
        if let Some(k) = &kernel {
            if !metadata.iter().any(|(key, _)| key == "ostree.linux") {
                metadata.push((
                    "ostree.linux".to_string(),
                    MetaValue::Str(k.version.clone()),
                ));
            }
        }
        let mut tx = self.tx.take().context("transaction missing")?;
        let (tree, meta) = write_dir(&mut tx, &self.root)?;
        let commit = tx
            .commit(subject, "", metadata, parent, now, &tree, &meta)
            .context("writing the commit")?;
        Ok(Imported {
            commit,
            content_checksum: content_checksum(&tree, &meta),
            kernel,
        })
    }
}

fn owner(v: io::Result<u64>) -> Result<u32> {
    let v = v.context("invalid owner id")?;
    u32::try_from(v).map_err(|_| anyhow!("owner id {v} is out of range"))
}

fn dir_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<DirMeta> {
    let h = entry.header();
    Ok(DirMeta {
        uid: owner(h.uid())?,
        gid: owner(h.gid())?,
        mode: S_IFDIR | (h.mode().context("invalid mode")? & 0o7777),
        xattrs: pax_xattrs(entry)?,
    })
}

fn pax_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    if let Some(exts) = entry.pax_extensions().context("reading PAX headers")? {
        for ext in exts {
            let ext = ext.context("reading a PAX record")?;
            let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
                continue;
            };
            if name.is_empty() || name.contains(&0) {
                bail!("invalid xattr name in PAX header");
            }
            out.push((name.to_vec(), ext.value_bytes().to_vec()));
        }
    }
    Ok(canonical_xattrs(out))
}

/// Is a setuid/setgid file allowed at `comps` (see [`SETID_DIRS`])?
fn check_setid(comps: &[String]) -> Result<()> {
    let parents = &comps[..comps.len().saturating_sub(1)];
    let allowed = SETID_DIRS.iter().any(|d| {
        let want: Vec<&str> = d.split('/').collect();
        parents.len() >= want.len()
            && want
                .iter()
                .zip(parents)
                .all(|(w, p)| match w.strip_suffix('*') {
                    Some(prefix) => p.starts_with(prefix),
                    None => p == w,
                })
    });
    if !allowed {
        bail!(
            "setuid/setgid file outside /usr/bin, /usr/sbin, /usr/lib*, /bin, /sbin, /lib*: \
             refused by the import policy (a setuid file in /etc, /var or /opt is a privilege \
             escalation waiting to happen); drop the bit or move the file"
        );
    }
    Ok(())
}

/// A second non-directory entry for the same path in one layer is refused.
fn check_not_duplicate(parent: &Dir, name: &str, layer: u32) -> Result<()> {
    match parent.children.get(name) {
        Some(n) if n.layer() == layer => bail!(
            "the layer has this path twice (or as a directory and a file); refusing an \
             ambiguous layer"
        ),
        _ => Ok(()),
    }
}

/// A reader that fails once more than `left` bytes come through.
struct Bounded<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(io::Error::other(format!(
                "the layer is larger than {} bytes uncompressed (import limit max_layer_size): \
                 refusing a possible decompression or sparse-file bomb",
                self.limit
            )));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn valid_component(c: &str) -> Result<String> {
    if c == ".." {
        bail!("path contains '..'");
    }
    if c.len() > MAX_NAME_LEN {
        bail!("path component is longer than {MAX_NAME_LEN} bytes");
    }
    if c.is_empty() || c == "." || c.contains('/') || c.contains('\0') {
        bail!("invalid path component {c:?}");
    }
    Ok(c.to_string())
}

/// Normalize a tar path into components: leading `/` and `.`/empty components dropped, `..` refused.
fn split_path(raw: &[u8]) -> Result<Vec<String>> {
    if raw.len() > MAX_PATH_LEN {
        bail!("path is longer than {MAX_PATH_LEN} bytes");
    }
    let s = std::str::from_utf8(raw).context(
        "path is not valid UTF-8 (ostree stores names as UTF-8 strings; rename the file)",
    )?;
    let mut out = Vec::new();
    for c in s.split('/') {
        if c.is_empty() || c == "." {
            continue;
        }
        out.push(valid_component(c)?);
    }
    if out.len() > MAX_PATH_DEPTH {
        bail!("path is deeper than {MAX_PATH_DEPTH} components");
    }
    Ok(out)
}

/// The directory at `comps`. With `create`, missing directories are created (0755 0:0) and every
/// directory on the way is marked as touched by `layer`; without, a missing one gives None.
/// A symlink or file on the way is an error.
fn dir_mut<'a>(
    mut dir: &'a mut Dir,
    comps: &[String],
    layer: u32,
    create: bool,
) -> Result<Option<&'a mut Dir>> {
    for (i, c) in comps.iter().enumerate() {
        if !dir.children.contains_key(c) {
            if !create {
                return Ok(None);
            }
            dir.children.insert(
                c.clone(),
                Node::Dir(Dir {
                    meta: default_dir_meta(),
                    children: BTreeMap::new(),
                    layer,
                }),
            );
        }
        let here = || comps[..=i].join("/");
        match dir.children.get_mut(c) {
            Some(Node::Dir(d)) => {
                if create {
                    d.layer = layer;
                }
                dir = d;
            }
            Some(Node::File { symlink: true, .. }) => {
                bail!(
                    "path goes through the symlink {:?}; refusing to write through symlinks",
                    here()
                )
            }
            Some(Node::File { .. }) => {
                bail!("path goes through {:?}, which is not a directory", here())
            }
            None => bail!("directory {:?} vanished", here()),
        }
    }
    Ok(Some(dir))
}

/// Drop everything in `dir` that comes from a lower layer than `layer`.
fn hide_lower(dir: &mut Dir, layer: u32) {
    dir.children.retain(|_, n| match n {
        Node::Dir(d) if d.layer >= layer => {
            hide_lower(d, layer);
            true
        }
        n => n.layer() >= layer,
    });
}

/// Move `/etc` to `/usr/etc`, merging into an existing `/usr/etc` (`/etc` entries win).
fn relocate_etc(root: &mut Dir) -> Result<()> {
    match root.children.get("etc") {
        Some(Node::Dir(_)) => {}
        Some(_) => {
            log::warn!("/etc is not a directory; leaving it in place");
            return Ok(());
        }
        None => return Ok(()),
    }
    let Some(Node::Dir(etc)) = root.children.remove("etc") else {
        return Ok(());
    };
    let usr =
        dir_mut(root, &["usr".to_string()], 0, true).context("relocating /etc to /usr/etc")?;
    let usr = usr.context("/usr missing")?;
    match usr.children.get_mut("etc") {
        Some(Node::Dir(usr_etc)) => {
            log::warn!("the image has both /etc and /usr/etc: merging /etc into /usr/etc");
            merge_into(usr_etc, etc);
        }
        _ => {
            usr.children.insert("etc".to_string(), Node::Dir(etc));
        }
    }
    Ok(())
}

fn merge_into(dst: &mut Dir, src: Dir) {
    dst.meta = src.meta;
    for (name, node) in src.children {
        match (dst.children.get_mut(&name), node) {
            (Some(Node::Dir(d)), Node::Dir(s)) => merge_into(d, s),
            (_, node) => {
                dst.children.insert(name, node);
            }
        }
    }
}

fn write_dir(tx: &mut Transaction<'_>, dir: &Dir) -> Result<(Checksum, Checksum)> {
    let mut tree = DirTree::default();
    for (name, node) in &dir.children {
        match node {
            Node::File { csum, .. } => tree.files.push((name.clone(), *csum)),
            Node::Dir(d) => {
                let (t, m) = write_dir(tx, d)?;
                tree.dirs.push((name.clone(), t, m));
            }
        }
    }
    Ok((tx.write_dirtree(&tree)?, tx.write_dirmeta(&dir.meta)?))
}

fn child<'a>(dir: &'a Dir, path: &[&str]) -> Option<&'a Node> {
    let (last, parents) = path.split_last()?;
    let mut d = dir;
    for p in parents {
        match d.children.get(*p)? {
            Node::Dir(sub) => d = sub,
            Node::File { .. } => return None,
        }
    }
    d.children.get(*last)
}

fn is_regular(n: Option<&Node>) -> bool {
    matches!(n, Some(Node::File { symlink: false, .. }))
}

/// The kernel in the in-memory tree (same rules as [`find_kernel`]).
fn kernel_in_tree(root: &Dir) -> Option<Kernel> {
    if let Some(Node::Dir(modules)) = child(root, &["usr", "lib", "modules"]) {
        for (kver, node) in &modules.children {
            let Node::Dir(d) = node else { continue };
            if !is_regular(d.children.get("vmlinuz")) {
                continue;
            }
            let base = format!("usr/lib/modules/{kver}");
            let initramfs = ["initramfs.img", "initramfs"]
                .into_iter()
                .find(|n| is_regular(d.children.get(*n)))
                .map(|n| format!("{base}/{n}"));
            let devicetree = if is_regular(d.children.get("devicetree")) {
                Some(format!("{base}/devicetree"))
            } else if matches!(d.children.get("dtb"), Some(Node::Dir(_))) {
                Some(format!("{base}/dtb"))
            } else {
                None
            };
            return Some(Kernel {
                version: kver.clone(),
                vmlinuz: format!("{base}/vmlinuz"),
                initramfs,
                devicetree,
            });
        }
    }
    let Some(Node::Dir(boot)) = root.children.get("boot") else {
        return None;
    };
    boot_fallback(
        boot.children
            .iter()
            .map(|(n, node)| (n.clone(), is_regular(Some(node)))),
    )
}

/// `boot/vmlinuz-KVER` (+ `boot/initramfs-KVER.img`), from (name, is-regular) pairs.
fn boot_fallback(entries: impl Iterator<Item = (String, bool)>) -> Option<Kernel> {
    let entries: BTreeMap<String, bool> = entries.collect();
    let (name, _) = entries
        .iter()
        .find(|(n, reg)| **reg && n.starts_with("vmlinuz-") && n.len() > "vmlinuz-".len())?;
    let kver = name["vmlinuz-".len()..].to_string();
    let initramfs = [
        format!("initramfs-{kver}.img"),
        format!("initramfs-{kver}"),
        format!("initrd.img-{kver}"),
    ]
    .into_iter()
    .find(|n| entries.get(n) == Some(&true))
    .map(|n| format!("boot/{n}"));
    let devicetree = [format!("devicetree-{kver}")]
        .into_iter()
        .find(|n| entries.get(n) == Some(&true))
        .map(|n| format!("boot/{n}"));
    Some(Kernel {
        version: kver,
        vmlinuz: format!("boot/{name}"),
        initramfs,
        devicetree,
    })
}

/// Find the kernel in a checked-out tree: the first `usr/lib/modules/KVER/` (sorted by name)
/// with a regular `vmlinuz`, with `initramfs.img` (or `initramfs`) and `devicetree` (or a `dtb/`
/// directory); else `boot/vmlinuz-KVER` with `boot/initramfs-KVER.img`. Paths are relative to
/// `root`.
pub fn find_kernel(root: &Path) -> Result<Option<Kernel>> {
    let is_file = |p: &Path| {
        fs::symlink_metadata(p)
            .map(|m| m.is_file())
            .unwrap_or(false)
    };
    let is_dir = |p: &Path| fs::symlink_metadata(p).map(|m| m.is_dir()).unwrap_or(false);
    let modules = root.join("usr/lib/modules");
    if is_dir(&modules) {
        let mut names = Vec::new();
        for e in fs::read_dir(&modules).with_context(|| format!("listing {}", modules.display()))? {
            let e = e.with_context(|| format!("listing {}", modules.display()))?;
            if let Ok(n) = e.file_name().into_string() {
                names.push(n);
            }
        }
        names.sort();
        for kver in names {
            let d = modules.join(&kver);
            if !is_dir(&d) || !is_file(&d.join("vmlinuz")) {
                continue;
            }
            let base = format!("usr/lib/modules/{kver}");
            let initramfs = ["initramfs.img", "initramfs"]
                .into_iter()
                .find(|n| is_file(&d.join(n)))
                .map(|n| format!("{base}/{n}"));
            let devicetree = if is_file(&d.join("devicetree")) {
                Some(format!("{base}/devicetree"))
            } else if is_dir(&d.join("dtb")) {
                Some(format!("{base}/dtb"))
            } else {
                None
            };
            return Ok(Some(Kernel {
                version: kver,
                vmlinuz: format!("{base}/vmlinuz"),
                initramfs,
                devicetree,
            }));
        }
    }
    let boot = root.join("boot");
    if !is_dir(&boot) {
        return Ok(None);
    }
    let mut entries = Vec::new();
    for e in fs::read_dir(&boot).with_context(|| format!("listing {}", boot.display()))? {
        let e = e.with_context(|| format!("listing {}", boot.display()))?;
        if let Ok(n) = e.file_name().into_string() {
            let reg = is_file(&e.path());
            entries.push((n, reg));
        }
    }
    Ok(boot_fallback(entries.into_iter()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(split_path(b"/a/./b//c/").unwrap(), vec!["a", "b", "c"]);
        assert_eq!(split_path(b"./").unwrap(), Vec::<String>::new());
        assert!(split_path(b"../x").is_err());
        assert!(split_path(b"a/../b").is_err());
        assert!(split_path(b"a/\xff").is_err());
        assert!(split_path("x/".repeat(300).as_bytes()).is_err());
        assert!(split_path("y".repeat(256).as_bytes()).is_err());
    }

    #[test]
    fn boot_fallback_names() {
        let k = boot_fallback(
            [
                ("vmlinuz-6.1.0".to_string(), true),
                ("initramfs-6.1.0.img".to_string(), true),
                ("config-6.1.0".to_string(), true),
            ]
            .into_iter(),
        )
        .unwrap();
        assert_eq!(k.version, "6.1.0");
        assert_eq!(k.vmlinuz, "boot/vmlinuz-6.1.0");
        assert_eq!(k.initramfs.as_deref(), Some("boot/initramfs-6.1.0.img"));
        assert!(boot_fallback([("vmlinuz-".to_string(), true)].into_iter()).is_none());
    }
}
