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
//! Recorded layers ([`Importer::apply_layer_recorded`]): after the import's commit, each layer
//! whose uncompressed tar matches its diff_id is also written as a small commit under
//! [`layer_ref`] (`otter/layer/<diff_id hex>`, format [`LAYER_FORMAT_VERSION`]). Its root holds
//! `tree/`, the layer's tree as the tar had it (whiteouts as empty regular files, hard links as
//! their content object, implied directories `0755 0:0`; content objects shared with the image,
//! kept reachable by it), and `ops`, its entries in tar order: after the magic `OTLOPS2\n`, per
//! entry a kind byte (`r d f l h w o`), the path (LE32 length + bytes), then for `r`/`d` the
//! dirmeta GVariant (LE32 length + bytes), for `f`/`l` the content checksum and a setid byte,
//! for `h` the target path and the content checksum. While importing, the entries go to an
//! unlinked spill file, so recording costs a buffer, not memory per entry.
//! [`Importer::apply_layer_commit`] streams those entries through the same code as the tar, so
//! whiteouts, opaque directories, hard links (resolved against the lower layers at replay time)
//! and refusals behave exactly alike and the merged tree is identical.
//!
//! A failed import changes no ref: its staged objects are deleted when the importer is dropped.

use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, Read, Seek, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use sha2::Digest;

use crate::ostree::objects::{
    canonical_xattrs, DirMeta, DirTree, FileHeader, S_IFDIR, S_IFLNK, S_IFREG,
};
use crate::ostree::{
    content_checksum, Checksum, MetaValue, ObjectKind, Repo, Transaction, MAX_TREE_DEPTH,
};

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

/// One tar entry's effect on the tree, paths as components. Whiteout paths include the marker
/// name (`…/.wh.NAME`, `…/.wh..wh..opq`).
#[derive(Clone, Debug)]
enum Op {
    Root(DirMeta),
    Opaque(Vec<String>),
    Whiteout(Vec<String>),
    Dir(Vec<String>, DirMeta),
    /// A regular file or a symlink; `setid`: setuid or setgid bit (checked against the policy).
    File {
        path: Vec<String>,
        csum: Checksum,
        symlink: bool,
        setid: bool,
    },
    /// Hard link: path, target path.
    Link(Vec<String>, Vec<String>),
}

impl Op {
    fn path(&self) -> &[String] {
        match self {
            Op::Root(_) => &[],
            Op::Opaque(p)
            | Op::Whiteout(p)
            | Op::Dir(p, _)
            | Op::File { path: p, .. }
            | Op::Link(p, _) => p,
        }
    }

    /// The op's kind letter in a layer record.
    fn encode_kind(&self) -> char {
        match self {
            Op::Root(_) => 'r',
            Op::Opaque(_) => 'o',
            Op::Whiteout(_) => 'w',
            Op::Dir(..) => 'd',
            Op::File { symlink: false, .. } => 'f',
            Op::File { symlink: true, .. } => 'l',
            Op::Link(..) => 'h',
        }
    }
}

/// The ops of one layer being recorded (with the content of hard links), spilled to an
/// unlinked temporary file in the repository's `tmp/`: an OS layer has tens of thousands of
/// entries, and recording must cost a buffer, not memory per entry.
struct Recording {
    out: io::BufWriter<fs::File>,
}

impl Recording {
    fn new(repo: &Repo) -> Result<Recording> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = repo
            .path()
            .join("tmp")
            .join(format!("otter-layer-ops-{}-{n}", std::process::id()));
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        // Unlinked at once: a crash leaves nothing behind.
        fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        let mut out = io::BufWriter::with_capacity(64 * 1024, file);
        out.write_all(OPS_MAGIC)
            .context("writing the layer record")?;
        Ok(Recording { out })
    }

    fn push(&mut self, op: &Op, link: Option<&Checksum>) -> io::Result<()> {
        let w = &mut self.out;
        let put = |w: &mut io::BufWriter<fs::File>, b: &[u8]| -> io::Result<()> {
            w.write_all(&(b.len() as u32).to_le_bytes())?;
            w.write_all(b)
        };
        let kind = op.encode_kind();
        w.write_all(&[kind as u8])?;
        put(w, op.path().join("/").as_bytes())?;
        match op {
            Op::Root(m) | Op::Dir(_, m) => put(w, &m.encode())?,
            Op::File { csum, setid, .. } => {
                w.write_all(&csum.0)?;
                w.write_all(&[u8::from(*setid)])?;
            }
            Op::Link(_, target) => {
                put(w, target.join("/").as_bytes())?;
                let c = link.ok_or_else(|| io::Error::other("hard link without content"))?;
                w.write_all(&c.0)?;
            }
            Op::Opaque(_) | Op::Whiteout(_) => {}
        }
        Ok(())
    }

    /// The recorded ops, from the start.
    fn into_reader(self) -> Result<RecordedOps> {
        let mut file = self
            .out
            .into_inner()
            .map_err(|e| e.into_error())
            .context("writing the layer record")?;
        let len = file
            .seek(io::SeekFrom::End(0))
            .context("sizing the layer record")?;
        RecordedOps::new(file, len)
    }
}

/// Start of a layer record (the spill file and the `ops` object of a layer commit).
const OPS_MAGIC: &[u8; 8] = b"OTLOPS2\n";

/// Reads back what a [`Recording`] wrote: from the spill file, or from a layer commit's `ops`
/// object when the layer is replayed.
struct RecordedOps {
    input: io::BufReader<fs::File>,
    len: u64,
}

impl RecordedOps {
    fn new(mut file: fs::File, len: u64) -> Result<RecordedOps> {
        file.seek(io::SeekFrom::Start(0))
            .context("rewinding the layer record")?;
        let mut input = io::BufReader::with_capacity(64 * 1024, file);
        let mut magic = [0u8; 8];
        input
            .read_exact(&mut magic)
            .context("reading the layer record")?;
        if &magic != OPS_MAGIC {
            bail!("not a layer record of this format (magic {magic:02x?})");
        }
        Ok(RecordedOps { input, len })
    }

    /// The whole record again, from its first byte (to store it as an object).
    fn rewind(&mut self) -> Result<(&mut dyn Read, u64)> {
        self.input
            .seek(io::SeekFrom::Start(0))
            .context("rewinding the layer record")?;
        Ok((&mut self.input, self.len))
    }

    fn next(&mut self) -> Result<Option<(Op, Option<Checksum>)>> {
        let r = &mut self.input;
        let mut kind = [0u8; 1];
        if r.read(&mut kind)? == 0 {
            return Ok(None);
        }
        fn get(r: &mut impl Read) -> Result<Vec<u8>> {
            let mut len = [0u8; 4];
            r.read_exact(&mut len)?;
            let mut b = vec![0u8; u32::from_le_bytes(len) as usize];
            r.read_exact(&mut b)?;
            Ok(b)
        }
        fn comps(b: Vec<u8>) -> Result<Vec<String>> {
            let s = String::from_utf8(b).context("layer record path is not UTF-8")?;
            Ok(if s.is_empty() {
                Vec::new()
            } else {
                s.split('/').map(str::to_owned).collect()
            })
        }
        fn csum(r: &mut impl Read) -> Result<Checksum> {
            let mut c = [0u8; 32];
            r.read_exact(&mut c)?;
            Ok(Checksum(c))
        }
        let path = comps(get(r)?)?;
        let op = match kind[0] {
            b'r' => Op::Root(DirMeta::decode(&get(r)?)?),
            b'd' => Op::Dir(path, DirMeta::decode(&get(r)?)?),
            b'o' => Op::Opaque(path),
            b'w' => Op::Whiteout(path),
            k @ (b'f' | b'l') => {
                let c = csum(r)?;
                let mut setid = [0u8; 1];
                r.read_exact(&mut setid)?;
                Op::File {
                    path,
                    csum: c,
                    symlink: k == b'l',
                    setid: setid[0] != 0,
                }
            }
            b'h' => {
                let target = comps(get(r)?)?;
                let c = csum(r)?;
                return Ok(Some((Op::Link(path, target), Some(c))));
            }
            other => bail!("corrupt layer record (op kind {other})"),
        };
        Ok(Some((op, None)))
    }
}

/// A layer recorded while importing, written as its own commit after the import's commit.
struct RecordedLayer {
    diff_id: String,
    ops: RecordedOps,
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
    /// The ops of the current layer, when it is being recorded.
    recording: Option<Recording>,
    /// Layers to write as `otter/layer/…` commits after the import's commit.
    recorded: Vec<RecordedLayer>,
    /// Writing the current layer's record failed: it is not kept.
    recording_failed: bool,
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
            recording: None,
            recorded: Vec::new(),
            recording_failed: false,
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
        self.recording = None;
        self.apply_layer_inner(media_type, layer, None)
            .with_context(|| format!("applying layer {n} ({media_type})"))
    }

    /// [`apply_layer`](Self::apply_layer), and remember the layer so that [`commit`](Self::commit)
    /// also writes it as its own commit under [`layer_ref`]`(diff_id)` (see
    /// [`apply_layer_commit`](Self::apply_layer_commit)). Only a layer whose uncompressed tar
    /// hashes to `diff_id` (`sha256:…`) is recorded; others are imported all the same.
    pub fn apply_layer_recorded(
        &mut self,
        media_type: &str,
        layer: &mut dyn Read,
        diff_id: &str,
    ) -> Result<()> {
        self.layer += 1;
        let n = self.layer;
        self.recording = match Recording::new(self.repo) {
            Ok(r) => Some(r),
            Err(e) => {
                log::warn!("layer {n}: not recording it for later updates: {e:#}");
                None
            }
        };
        self.recording_failed = false;
        let mut hasher = sha2::Sha256::new();
        let res = self
            .apply_layer_inner(media_type, layer, Some(&mut hasher))
            .with_context(|| format!("applying layer {n} ({media_type})"));
        let recording = self.recording.take();
        res?;
        let got = format!("sha256:{}", hex_of(&hasher.finalize()));
        if got != diff_id {
            log::warn!(
                "layer {n}: the uncompressed tar is {got}, but the image config says {diff_id}; \
                 not keeping it for later updates"
            );
        } else if let Some(rec) = recording.filter(|_| !self.recording_failed) {
            match rec.into_reader() {
                Ok(ops) => self.recorded.push(RecordedLayer {
                    diff_id: diff_id.to_owned(),
                    ops,
                }),
                Err(e) => log::warn!("layer {n}: not recording it for later updates: {e:#}"),
            }
        }
        Ok(())
    }

    /// Apply a layer recorded by an earlier import (the commit of an `otter/layer/…` ref) exactly
    /// like its tar: same whiteout, opaque-directory and hard-link semantics, same refusals. No
    /// blob is read; the content objects must be in the repo.
    pub fn apply_layer_commit(&mut self, commit: &Checksum) -> Result<()> {
        self.layer += 1;
        let n = self.layer;
        self.recording = None;
        self.apply_layer_commit_inner(commit)
            .with_context(|| format!("applying layer {n} from the recorded layer commit {commit}"))
    }

    /// Apply a zstd:chunked layer from its table of contents ([`crate::chunked`]) instead of
    /// its tar: every TOC entry goes through the same rules as a tar entry (names, whiteouts,
    /// hard links, setid and device policy, limits); a regular file's content comes from
    /// `content` (which checks it against the TOC digest). With `diff_id`, the layer is recorded
    /// like [`apply_layer_recorded`](Self::apply_layer_recorded); the diff_id cannot be checked
    /// without the tar, but the TOC is authenticated by the same manifest that pins the config
    /// naming the diff_id.
    pub(crate) fn apply_layer_toc(
        &mut self,
        toc: &crate::chunked::toc::Toc,
        content: &mut dyn ContentSource,
        diff_id: Option<&str>,
    ) -> Result<()> {
        self.layer += 1;
        let n = self.layer;
        self.recording = match diff_id.map(|_| Recording::new(self.repo)).transpose() {
            Ok(r) => r,
            Err(e) => {
                log::warn!("layer {n}: not recording it for later updates: {e:#}");
                None
            }
        };
        self.recording_failed = false;
        let res = self
            .apply_layer_toc_inner(toc, content)
            .with_context(|| format!("applying layer {n} from its zstd:chunked TOC"));
        let recording = self.recording.take();
        res?;
        if let (Some(d), Some(rec)) = (diff_id, recording.filter(|_| !self.recording_failed)) {
            match rec.into_reader() {
                Ok(ops) => self.recorded.push(RecordedLayer {
                    diff_id: d.to_owned(),
                    ops,
                }),
                Err(e) => log::warn!("layer {n}: not recording it for later updates: {e:#}"),
            }
        }
        Ok(())
    }

    fn apply_layer_toc_inner(
        &mut self,
        toc: &crate::chunked::toc::Toc,
        content: &mut dyn ContentSource,
    ) -> Result<()> {
        use crate::chunked::toc::Kind;
        self.tx()?;
        self.content_bytes = 0;
        for e in &toc.entries {
            self.entries += 1;
            if self.entries > self.limits.max_entries {
                bail!(
                    "the image has more than {} entries (import limit max_entries); refusing it",
                    self.limits.max_entries
                );
            }
            let meta = EntryMeta {
                kind: match e.kind {
                    Kind::Reg => EntryKind::Reg,
                    Kind::Dir => EntryKind::Dir,
                    Kind::Symlink => EntryKind::Symlink,
                    Kind::Hardlink => EntryKind::Hardlink,
                    Kind::Char | Kind::Block => EntryKind::Device,
                    Kind::Fifo => EntryKind::Fifo,
                },
                path: e.name.as_bytes().to_vec(),
                link: e.link_name.as_bytes().to_vec(),
                mode: e.mode,
                uid: e.uid,
                gid: e.gid,
                size: e.size,
                exact_size: true,
                xattrs: e.xattrs.clone(),
            };
            let res = if e.kind == Kind::Reg && e.size > 0 {
                let mut r = content.open(e)?;
                self.apply_meta(meta, &mut r)
            } else {
                self.apply_meta(meta, &mut io::empty())
            };
            res.with_context(|| format!("layer entry {:?}", e.name))?;
        }
        Ok(())
    }

    fn apply_layer_commit_inner(&mut self, commit: &Checksum) -> Result<()> {
        self.tx()?;
        let repo = self.repo;
        let c = repo.read_commit(commit)?;
        let format = c.metadata.iter().find_map(|(k, v)| match v {
            MetaValue::U64(f) if k == "otter.layer.format" => Some(*f),
            _ => None,
        });
        if format != Some(LAYER_FORMAT_VERSION) {
            bail!("not a layer commit of format {LAYER_FORMAT_VERSION} (found {format:?})");
        }
        let root = repo.read_dirtree(&c.root_tree)?;
        let ops_csum = root
            .files
            .iter()
            .find(|(n, _)| n == "ops")
            .map(|(_, c)| *c)
            .context("layer commit without its ops object")?;
        let obj = repo
            .open_file(&ops_csum)
            .with_context(|| format!("ops object {ops_csum}"))?;
        let file = obj
            .content
            .with_context(|| format!("ops object {ops_csum} is not a regular file"))?;
        let mut ops = RecordedOps::new(file, obj.size)?;
        while let Some((op, _)) = ops.next()? {
            let shown = op.path().join("/");
            // The same checks as for a tar entry: valid names, and the content must be here.
            split_path(shown.as_bytes()).with_context(|| format!("layer op {shown:?}"))?;
            let op = match op {
                Op::Opaque(comps) => {
                    if comps.last().map(String::as_str) != Some(".wh..wh..opq") {
                        bail!("bad opaque whiteout {shown:?}");
                    }
                    Op::Opaque(comps)
                }
                Op::Whiteout(comps) => {
                    let hidden = comps
                        .last()
                        .and_then(|n| n.strip_prefix(".wh."))
                        .with_context(|| format!("bad whiteout {shown:?}"))?;
                    valid_component(hidden)?;
                    Op::Whiteout(comps)
                }
                Op::File {
                    path,
                    csum,
                    symlink,
                    ..
                } => {
                    if !repo.has_object(ObjectKind::File, &csum) {
                        bail!("content object {csum} of {shown:?} is missing from the repository");
                    }
                    // The setid bit as the object has it, not as recorded.
                    let setid = !symlink
                        && repo
                            .open_file(&csum)
                            .with_context(|| format!("content object {csum} of {shown:?}"))?
                            .header
                            .mode
                            & 0o6000
                            != 0;
                    Op::File {
                        path,
                        csum,
                        symlink,
                        setid,
                    }
                }
                Op::Link(comps, target) => {
                    let t = target.join("/");
                    split_path(t.as_bytes()).with_context(|| format!("hard link target {t:?}"))?;
                    Op::Link(comps, target)
                }
                other @ (Op::Root(_) | Op::Dir(..)) => other,
            };
            self.apply_op(op)
                .with_context(|| format!("layer entry {shown:?}"))?;
        }
        Ok(())
    }

    fn apply_layer_inner(
        &mut self,
        media_type: &str,
        layer: &mut dyn Read,
        hasher: Option<&mut sha2::Sha256>,
    ) -> Result<()> {
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
        let decoder = HashingReader {
            inner: Bounded {
                inner: decoder,
                left: self.limits.max_layer_size,
                limit: self.limits.max_layer_size,
            },
            hasher,
        };
        let delivered = Cell::new(0u64);
        let at_eof = Cell::new(false);
        let decoder = CountingReader {
            inner: decoder,
            delivered: &delivered,
            at_eof: &at_eof,
        };
        let mut archive = tar::Archive::new(decoder);
        let entries = archive.entries().context("reading the layer tar")?;
        // Where the data of the last entry ends in the uncompressed stream.
        let mut data_end = None;
        for entry in entries {
            let mut entry = match entry {
                Ok(e) => e,
                // Some writers (umoci 0.4 `insert`: Go's tar writer never closed) stop right after
                // the last file's data, without its block padding and the end-of-archive blocks.
                // Nothing is missing then (every byte of every entry arrived, and the blob digest
                // pins the stream), so that is the end of the layer, not a truncation.
                Err(e) if at_eof.get() && data_end == Some(delivered.get()) => {
                    log::debug!("layer ends without tar padding/end-of-archive blocks ({e})");
                    break;
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context("reading the next tar entry (truncated or corrupt layer?)"))
                }
            };
            data_end = entry
                .header()
                .entry_size()
                .ok()
                .map(|size| entry.raw_file_position().saturating_add(size));
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

    fn apply_entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        use tar::EntryType as T;
        let etype = entry.header().entry_type();
        if matches!(
            etype,
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink
        ) {
            return Ok(());
        }
        let path = entry.path_bytes().into_owned();
        let whiteout = split_path(&path)
            .ok()
            .and_then(|c| c.last().map(|n| n.starts_with(".wh.")))
            .unwrap_or(false);
        let kind = match etype {
            // A whiteout is a marker whatever its type; only its name counts.
            _ if whiteout => EntryKind::Reg,
            T::Directory => EntryKind::Dir,
            T::Regular | T::Continuous | T::GNUSparse => EntryKind::Reg,
            T::Symlink => EntryKind::Symlink,
            T::Link => EntryKind::Hardlink,
            T::Char | T::Block => EntryKind::Device,
            T::Fifo => EntryKind::Fifo,
            other => {
                split_path(&path)?;
                bail!("unsupported tar entry type {other:?}")
            }
        };
        // Owners, modes and xattrs are only read for the kinds that use them (a device
        // node's or a whiteout's header is not parsed beyond its type).
        let link = match kind {
            _ if whiteout => Vec::new(),
            EntryKind::Symlink => entry
                .link_name_bytes()
                .context("symlink without a target")?
                .into_owned(),
            EntryKind::Hardlink => entry
                .link_name_bytes()
                .context("hard link without a target")?
                .into_owned(),
            _ => Vec::new(),
        };
        let mut meta = EntryMeta {
            kind,
            path,
            link,
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            exact_size: false,
            xattrs: Vec::new(),
        };
        if !whiteout && matches!(kind, EntryKind::Dir | EntryKind::Reg | EntryKind::Symlink) {
            let h = entry.header();
            meta.uid = owner(h.uid())?;
            meta.gid = owner(h.gid())?;
            if kind != EntryKind::Symlink {
                meta.mode = h.mode().context("invalid mode")? & 0o7777;
            }
            if kind == EntryKind::Reg {
                meta.size = if etype == T::GNUSparse {
                    h.as_gnu()
                        .context("sparse entry without a GNU header")?
                        .real_size()
                        .context("invalid sparse file size")?
                } else {
                    entry.size()
                };
                meta.exact_size = etype != T::GNUSparse;
            }
            meta.xattrs = pax_xattrs(entry)?;
        }
        self.apply_meta(meta, entry)
    }

    /// Apply one layer entry described by `m` (from a tar header or a zstd:chunked TOC entry),
    /// its content read from `content` (regular files only): the import rules of the module
    /// docs, then [`apply_op`](Self::apply_op).
    fn apply_meta(&mut self, m: EntryMeta, content: &mut dyn Read) -> Result<()> {
        let layer = self.layer;
        let comps = split_path(&m.path)?;
        let Some((name, parents)) = comps.split_last() else {
            // The root itself ("./").
            if m.kind == EntryKind::Dir {
                return self.apply_op(Op::Root(m.dir_meta()));
            }
            bail!("entry for the root directory is not a directory");
        };

        // Whiteouts.
        if let Some(hidden) = name.strip_prefix(".wh.") {
            if hidden == ".wh..opq" {
                return self.apply_op(Op::Opaque(comps));
            } else if hidden.starts_with(".wh.") {
                log::debug!("ignoring whiteout marker {name:?}");
                return Ok(());
            }
            valid_component(hidden)?;
            return self.apply_op(Op::Whiteout(comps));
        }

        match m.kind {
            EntryKind::Dir => {
                let meta = m.dir_meta();
                self.apply_op(Op::Dir(comps, meta))
            }
            EntryKind::Reg => {
                let mode = m.mode & 0o7777;
                let declared = m.size;
                let header = FileHeader {
                    uid: m.uid,
                    gid: m.gid,
                    mode: S_IFREG | mode,
                    symlink_target: String::new(),
                    xattrs: m.xattrs,
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
                let size = m.exact_size.then_some(declared);
                let mut content = Bounded {
                    inner: content,
                    left: budget,
                    limit: self.limits.max_layer_size,
                };
                let tx = self.tx()?;
                let csum = tx.write_file_sized(&header, &mut content, size)?;
                self.content_bytes += budget - content.left;
                self.apply_op(Op::File {
                    path: comps,
                    csum,
                    symlink: false,
                    setid,
                })
            }
            EntryKind::Symlink => {
                let target = String::from_utf8(m.link).context("symlink target is not UTF-8")?;
                if target.is_empty() || target.contains('\0') {
                    bail!("symlink has an empty or invalid target");
                }
                let header = FileHeader {
                    uid: m.uid,
                    gid: m.gid,
                    mode: S_IFLNK | 0o777,
                    symlink_target: target,
                    xattrs: m.xattrs,
                };
                let parent = dir_mut(&mut self.root, parents, layer, true)?
                    .context("parent directory missing")?;
                check_not_duplicate(parent, name, layer)?;
                let csum = self.tx()?.write_file(&header, &mut io::empty())?;
                self.apply_op(Op::File {
                    path: comps,
                    csum,
                    symlink: true,
                    setid: false,
                })
            }
            EntryKind::Hardlink => {
                let tcomps = split_path(&m.link).with_context(|| {
                    format!("hard link target {:?}", String::from_utf8_lossy(&m.link))
                })?;
                self.apply_op(Op::Link(comps, tcomps))
            }
            EntryKind::Device => {
                let top = parents.first().map(String::as_str).unwrap_or("");
                if !EMPTIED_DIRS.contains(&top) {
                    bail!(
                        "device node outside /dev: otter does not store device nodes (ostree cannot), \
                         and one elsewhere in an image is refused; create it at boot (udev, \
                         systemd-tmpfiles) instead"
                    );
                }
                log::debug!("dropping device node {:?}", comps.join("/"));
                Ok(())
            }
            EntryKind::Fifo => {
                log::warn!(
                    "dropping fifo {:?}: ostree cannot store it",
                    comps.join("/")
                );
                Ok(())
            }
        }
    }

    /// Apply one parsed entry to the tree (the tar and a layer commit both end up here), and
    /// record it when the current layer is being recorded.
    fn apply_op(&mut self, op: Op) -> Result<()> {
        let layer = self.layer;
        let mut link_csum = None;
        match &op {
            Op::Root(meta) => self.root.meta = meta.clone(),
            Op::Opaque(comps) => {
                let parents = &comps[..comps.len().saturating_sub(1)];
                let dir = dir_mut(&mut self.root, parents, layer, true)?
                    .context("opaque whiteout parent missing")?;
                hide_lower(dir, layer);
            }
            Op::Whiteout(comps) => {
                let (name, parents) = comps.split_last().context("whiteout without a name")?;
                let hidden = name
                    .strip_prefix(".wh.")
                    .context("whiteout name without .wh.")?;
                if let Some(dir) = dir_mut(&mut self.root, parents, layer, false)? {
                    match dir.children.get_mut(hidden) {
                        Some(n) if n.layer() < layer => {
                            dir.children.remove(hidden);
                        }
                        Some(Node::Dir(d)) => hide_lower(d, layer),
                        _ => {}
                    }
                }
            }
            Op::Dir(comps, meta) => {
                let (name, parents) = comps.split_last().context("directory without a name")?;
                let parent = dir_mut(&mut self.root, parents, layer, true)?
                    .context("parent directory missing")?;
                match parent.children.get_mut(name) {
                    Some(Node::Dir(d)) => {
                        d.meta = meta.clone();
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
                                meta: meta.clone(),
                                children: BTreeMap::new(),
                                layer,
                            }),
                        );
                    }
                }
            }
            Op::File {
                path,
                csum,
                symlink,
                setid,
            } => {
                let (name, parents) = path.split_last().context("file without a name")?;
                if *setid {
                    check_setid(path)?;
                }
                let parent = dir_mut(&mut self.root, parents, layer, true)?
                    .context("parent directory missing")?;
                check_not_duplicate(parent, name, layer)?;
                parent.children.insert(
                    name.clone(),
                    Node::File {
                        csum: *csum,
                        symlink: *symlink,
                        setid: *setid,
                        layer,
                    },
                );
            }
            Op::Link(comps, tcomps) => {
                let (name, parents) = comps.split_last().context("hard link without a name")?;
                let shown = || tcomps.join("/");
                let (tname, tparents) = tcomps
                    .split_last()
                    .context("hard link to the root directory")?;
                let tdir = dir_mut(&mut self.root, tparents, layer, false)
                    .with_context(|| format!("hard link target {:?}", shown()))?;
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
                    Some(Node::Dir(_)) => {
                        bail!("hard link target {:?} is a directory", shown())
                    }
                    None => bail!(
                        "hard link target {:?} does not exist in this or an earlier layer",
                        shown()
                    ),
                };
                if let Node::File { csum, setid, .. } = &node {
                    if *setid {
                        check_setid(comps).context("hard link to a setuid/setgid file")?;
                    }
                    link_csum = Some(*csum);
                }
                let parent = dir_mut(&mut self.root, parents, layer, true)?
                    .context("parent directory missing")?;
                check_not_duplicate(parent, name, layer)?;
                parent.children.insert(name.clone(), node);
            }
        }
        if let Some(rec) = &mut self.recording {
            if let Err(e) = rec.push(&op, link_csum.as_ref()) {
                log::warn!("layer {layer}: not recording it for later updates: {e}");
                self.recording = None;
                self.recording_failed = true;
            }
        }
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
        // The import's tree is written: free it before building the layer trees (peak memory).
        drop(std::mem::replace(
            &mut self.root,
            Dir {
                meta: default_dir_meta(),
                children: BTreeMap::new(),
                layer: 0,
            },
        ));
        // The import's content objects are now in the repo: record its layers. A failure here
        // only costs a download next time.
        for mut l in std::mem::take(&mut self.recorded) {
            if let Err(e) = write_layer_commit(self.repo, &mut l, now) {
                log::warn!("recording layer {} for later updates: {e:#}", l.diff_id);
            }
        }
        Ok(Imported {
            commit,
            content_checksum: content_checksum(&tree, &meta),
            kernel,
        })
    }
}

/// Format of layer commits (`otter.layer.format`).
pub const LAYER_FORMAT_VERSION: u64 = 2;

/// The ref of a recorded layer: `otter/layer/<sha256 hex of its diff_id>`. None for a diff_id
/// that is not `sha256:<64 hex>`.
pub fn layer_ref(diff_id: &str) -> Option<String> {
    let hex = diff_id.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| format!("{LAYER_REF_PREFIX}{hex}"))
}

/// Ref prefix of recorded layers.
pub const LAYER_REF_PREFIX: &str = "otter/layer/";

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hashes what is read through it (the uncompressed layer tar, for its diff_id).
/// Counts the bytes passed through and notes when the inner reader hit its end.
struct CountingReader<'c, R> {
    inner: R,
    delivered: &'c Cell<u64>,
    at_eof: &'c Cell<bool>,
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.at_eof.set(true);
        }
        self.delivered.set(self.delivered.get() + n as u64);
        Ok(n)
    }
}

struct HashingReader<'h, R> {
    inner: R,
    hasher: Option<&'h mut sha2::Sha256>,
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// Write a recorded layer as a commit whose root holds `ops` (its entries in order, the record
/// format of [`Recording`]) and `tree` (its tree as the tar had it: whiteouts as empty files,
/// hard links as their content, implied directories `0755 0:0`), then point [`layer_ref`] at
/// it.
fn write_layer_commit(repo: &Repo, l: &mut RecordedLayer, now: u64) -> Result<()> {
    let name = layer_ref(&l.diff_id).with_context(|| format!("invalid diff_id {:?}", l.diff_id))?;
    let mut tx = repo.transaction()?;
    let marker = tx.write_file(
        &FileHeader {
            uid: 0,
            gid: 0,
            mode: S_IFREG | 0o644,
            symlink_target: String::new(),
            xattrs: Vec::new(),
        },
        &mut io::empty(),
    )?;
    let mut root = Dir {
        meta: default_dir_meta(),
        children: BTreeMap::new(),
        layer: 0,
    };
    // Hashes of the paths seen (not the paths: a layer has tens of thousands).
    let mut seen = HashSet::new();
    while let Some((op, link_csum)) = l.ops.next().context("reading the layer record")? {
        let (op, link_csum) = (&op, &link_csum);
        let key = op.path().join("/");
        if !seen.insert(Checksum::of(key.as_bytes())) {
            bail!("the layer has more than one entry for {key:?}");
        }
        let (name, parents) = match op.path().split_last() {
            Some(x) => x,
            None => {
                if let Op::Root(m) = op {
                    root.meta = m.clone();
                }
                continue;
            }
        };
        let parent = dir_mut(&mut root, parents, 0, true)
            .with_context(|| format!("layer entry {key:?}"))?
            .context("parent directory missing")?;
        let node = match op {
            Op::Root(_) => continue,
            Op::Dir(_, m) => {
                match parent.children.get_mut(name) {
                    Some(Node::Dir(d)) => d.meta = m.clone(),
                    Some(Node::File { .. }) => bail!("{key:?} is both a file and a directory"),
                    None => {
                        parent.children.insert(
                            name.clone(),
                            Node::Dir(Dir {
                                meta: m.clone(),
                                children: BTreeMap::new(),
                                layer: 0,
                            }),
                        );
                    }
                }
                continue;
            }
            Op::File { csum, symlink, .. } => (*csum, *symlink),
            Op::Link(..) => (link_csum.context("hard link without content")?, false),
            Op::Opaque(_) | Op::Whiteout(_) => (marker, false),
        };
        if parent.children.contains_key(name) {
            bail!("{key:?} is both a file and a directory");
        }
        parent.children.insert(
            name.clone(),
            Node::File {
                csum: node.0,
                symlink: node.1,
                setid: false,
                layer: 0,
            },
        );
    }
    // The commit's root: `ops` (the record, streamed from the spill file) and `tree` (the
    // layer's tree, which keeps its content objects reachable for prune and `ostree fsck`).
    let (record, len) = l.ops.rewind()?;
    let ops = tx
        .write_file_sized(
            &FileHeader {
                uid: 0,
                gid: 0,
                mode: S_IFREG | 0o644,
                symlink_target: String::new(),
                xattrs: Vec::new(),
            },
            record,
            Some(len),
        )
        .context("storing the layer record")?;
    let mut top = Dir {
        meta: default_dir_meta(),
        children: BTreeMap::new(),
        layer: 0,
    };
    top.children.insert(
        "ops".to_owned(),
        Node::File {
            csum: ops,
            symlink: false,
            setid: false,
            layer: 0,
        },
    );
    top.children.insert("tree".to_owned(), Node::Dir(root));
    let (tree, meta) = write_dir(&mut tx, &top)?;
    let metadata = vec![
        (
            "otter.layer.diff-id".to_owned(),
            MetaValue::Str(l.diff_id.clone()),
        ),
        (
            "otter.layer.format".to_owned(),
            MetaValue::U64(LAYER_FORMAT_VERSION),
        ),
        (
            "otter.import-rules".to_owned(),
            MetaValue::U64(IMPORT_RULES_VERSION),
        ),
    ];
    let c = tx.commit(
        &format!("layer {}", l.diff_id),
        "",
        metadata,
        None,
        now,
        &tree,
        &meta,
    )?;
    repo.set_ref(&name, Some(&c))?;
    log::debug!("recorded layer {} as {c}", l.diff_id);
    Ok(())
}

fn owner(v: io::Result<u64>) -> Result<u32> {
    let v = v.context("invalid owner id")?;
    u32::try_from(v).map_err(|_| anyhow!("owner id {v} is out of range"))
}

/// Where [`Importer::apply_layer_toc`] gets file contents from.
pub(crate) trait ContentSource {
    /// A reader over the content of a regular file of the TOC; it must fail (at the latest at
    /// its end) unless the bytes are the entry's (size and digest).
    fn open(&mut self, entry: &crate::chunked::toc::Entry) -> Result<Box<dyn Read + '_>>;
}

/// What a layer entry is, for [`Importer::apply_meta`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EntryKind {
    Dir,
    Reg,
    Symlink,
    Hardlink,
    /// Character or block device.
    Device,
    Fifo,
}

/// One layer entry, from a tar header or a zstd:chunked TOC entry.
#[derive(Clone, Debug)]
pub(crate) struct EntryMeta {
    pub kind: EntryKind,
    /// The path as the layer names it (normalized and checked by the importer).
    pub path: Vec<u8>,
    /// Symlink or hard link target.
    pub link: Vec<u8>,
    /// Permission bits (`& 0o7777`; ignored for symlinks).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Declared content size (regular files).
    pub size: u64,
    /// The content must be exactly `size` bytes (false for GNU sparse files).
    pub exact_size: bool,
    /// Sorted, empty values dropped.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl EntryMeta {
    fn dir_meta(&self) -> DirMeta {
        DirMeta {
            uid: self.uid,
            gid: self.gid,
            mode: S_IFDIR | (self.mode & 0o7777),
            xattrs: self.xattrs.clone(),
        }
    }
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

    /// Tar entries: (path, kind, data or link target, mode).
    fn tar(entries: &[(&str, char, &str, u32)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, mode) in entries {
            let mut h = tar::Header::new_ustar();
            h.set_mode(*mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match kind {
                'd' => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    b.append_data(&mut h, path, &[][..]).unwrap();
                }
                'f' => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, path, data.as_bytes()).unwrap();
                }
                'l' => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, path, data).unwrap();
                }
                'h' => {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    b.append_link(&mut h, path, data).unwrap();
                }
                _ => unreachable!(),
            }
        }
        b.into_inner().unwrap()
    }

    fn diff_id(t: &[u8]) -> String {
        format!("sha256:{}", hex_of(&sha2::Sha256::digest(t)))
    }

    const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

    /// Import `layers` from their tars (recording them), returning the content checksum.
    fn import_tars(repo: &Repo, layers: &[&[u8]]) -> Checksum {
        let mut imp = Importer::new(repo);
        for l in layers {
            imp.apply_layer_recorded(TAR, &mut &l[..], &diff_id(l))
                .unwrap();
        }
        imp.commit("t", Vec::new(), None).unwrap().content_checksum
    }

    /// Replaying recorded layers builds exactly the tree their tars build, also over another
    /// lower layer than the one they were recorded on (order-dependent whiteouts, implied
    /// directories, hard links into the lower layer, the root entry).
    #[test]
    fn replay_equals_tar() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::init(&dir.path().join("repo"), crate::ostree::RepoMode::BareUser).unwrap();
        let base = tar(&[
            ("usr/", 'd', "", 0o755),
            ("usr/bin/hello", 'f', "hello\n", 0o755),
            ("d/", 'd', "", 0o750),
            ("d/old", 'f', "old\n", 0o644),
            ("d2/keep/", 'd', "", 0o711),
            ("d2/keep/x", 'f', "x\n", 0o644),
            ("o/a", 'f', "a\n", 0o644),
            ("o/sub/b", 'f', "b\n", 0o644),
            ("gone", 'f', "gone\n", 0o644),
            ("etc/conf", 'f', "conf\n", 0o600),
        ]);
        let other_base = tar(&[
            ("usr/bin/hello", 'f', "another hello\n", 0o700),
            ("d/", 'd', "", 0o700),
            ("d/other", 'f', "other\n", 0o644),
            ("d2/", 'd', "", 0o700),
            ("o/", 'd', "", 0o701),
            ("o/z", 'f', "z\n", 0o644),
        ]);
        let upper = tar(&[
            ("./", 'd', "", 0o700),
            // whiteout first, then an implied directory of the same name
            (".wh.d", 'f', "", 0o644),
            ("d/new", 'f', "new\n", 0o644),
            // implied directory first, then its whiteout
            ("d2/y", 'f', "y\n", 0o644),
            (".wh.d2", 'f', "", 0o644),
            ("o/.wh..wh..opq", 'f', "", 0o644),
            ("o/c", 'f', "c\n", 0o644),
            (".wh.gone", 'f', "", 0o644),
            ("link", 'h', "usr/bin/hello", 0o644),
            ("sym", 'l', "usr/bin/hello", 0o777),
            ("twin", 'f', "twin\n", 0o640),
            ("twin2", 'h', "twin", 0o640),
            ("etc/conf", 'f', "new conf\n", 0o600),
            ("x/.wh..wh.plnk", 'f', "", 0o644),
        ]);
        let from_tars = import_tars(&repo, &[&base, &upper]);
        let refs: Vec<Checksum> = [&base, &upper]
            .iter()
            .map(|t| {
                repo.resolve_ref(&layer_ref(&diff_id(t)).unwrap())
                    .unwrap()
                    .expect("layer recorded")
            })
            .collect();
        let mut imp = Importer::new(&repo);
        for c in &refs {
            imp.apply_layer_commit(c).unwrap();
        }
        let replayed = imp.commit("t", Vec::new(), None).unwrap().content_checksum;
        assert_eq!(replayed, from_tars);

        // the upper layer over another base: tar vs replay
        let from_tars = import_tars(&repo, &[&other_base, &upper]);
        let mut imp = Importer::new(&repo);
        imp.apply_layer(TAR, &mut &other_base[..]).unwrap();
        imp.apply_layer_commit(&refs[1]).unwrap();
        let replayed = imp.commit("t", Vec::new(), None).unwrap().content_checksum;
        assert_eq!(replayed, from_tars);
        assert_ne!(replayed, import_tars(&repo, &[&base, &upper]));

        // a replayed layer keeps the tar's refusals: a hard link whose target a lower layer
        // lacks
        let lone = tar(&[("f", 'f', "f\n", 0o644)]);
        let mut imp = Importer::new(&repo);
        imp.apply_layer(TAR, &mut &lone[..]).unwrap();
        let err = imp.apply_layer_commit(&refs[1]).unwrap_err();
        assert!(format!("{err:#}").contains("does not exist"), "{err:#}");

        // a layer naming one path twice is refused, and so not recorded
        let dup = tar(&[("a", 'f', "1\n", 0o644), ("a", 'f', "2\n", 0o644)]);
        let mut imp = Importer::new(&repo);
        let err = imp
            .apply_layer_recorded(TAR, &mut &dup[..], &diff_id(&dup))
            .unwrap_err();
        assert!(format!("{err:#}").contains("twice"), "{err:#}");
        drop(imp);
        assert!(repo
            .resolve_ref(&layer_ref(&diff_id(&dup)).unwrap())
            .unwrap()
            .is_none());
        // a wrong diff_id: imported, not recorded
        let mut imp = Importer::new(&repo);
        let wrong = format!("sha256:{}", "0".repeat(64));
        imp.apply_layer_recorded(TAR, &mut &lone[..], &wrong)
            .unwrap();
        imp.commit("t", Vec::new(), None).unwrap();
        assert!(repo
            .resolve_ref(&layer_ref(&wrong).unwrap())
            .unwrap()
            .is_none());
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
