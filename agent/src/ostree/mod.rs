//! A native ostree repository: objects, refs, commits, checkout and prune, without libostree.
//!
//! Formats follow `/work/shared/ref/ostree-format.md` (ostree 2022.7). Supported repo modes are
//! `bare` (as root: ownership, mode and xattrs are applied to the object files) and `bare-user`
//! (metadata in the `user.ostreemeta` xattr). Objects are written through a [`Transaction`]:
//!
//! * each object is written to a staging directory `tmp/staging-*` (content is hashed while it
//!   streams into the staged file; nothing is held in memory);
//! * objects are **not** fsynced one by one. [`Transaction::commit`] runs `syncfs` once, then
//!   renames the staged objects into `objects/`, the commit object last, and runs `syncfs` again.
//!   An object is therefore only ever visible under its checksum once its bytes are durable, and
//!   a commit only once all its objects are (the same scheme ostree uses);
//! * a transaction that is dropped without committing deletes its staging directory.
//!
//! Refs are separate: [`Repo::set_ref`] writes them atomically after a commit.

mod checkout;
pub mod gvariant;
pub mod objects;
pub(crate) mod sys;
mod transaction;

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

pub use objects::{DirMeta, DirTree, FileHeader, Xattrs};
pub use transaction::Transaction;

/// The object checksum in a payload link's target `../xx/<62 hex>.file` (ostree's
/// `_OSTREE_PAYLOAD_LINK_PREFIX` + loose path of a bare/bare-user content object).
pub(crate) fn parse_payload_link_target(t: &str) -> Option<Checksum> {
    let rest = t.strip_prefix("../")?;
    let (dir, file) = rest.split_once('/')?;
    let hex = file.strip_suffix(".file")?;
    if dir.len() != 2 || hex.len() != 62 {
        return None;
    }
    Checksum::from_hex(&format!("{dir}{hex}")).ok()
}

/// Largest metadata object we read (ostree's `OSTREE_MAX_METADATA_SIZE`).
pub const MAX_METADATA_SIZE: u64 = 128 * 1024 * 1024;
/// Deepest directory nesting we follow in a commit.
pub const MAX_TREE_DEPTH: usize = 512;

/// A SHA-256 object checksum.
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Checksum(pub [u8; 32]);

impl Checksum {
    pub fn from_hex(s: &str) -> Result<Checksum> {
        let b = s.as_bytes();
        if b.len() != 64 {
            bail!("invalid checksum {s:?}: expected 64 hex characters");
        }
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            let hi = hex_val(pair[0]);
            let lo = hex_val(pair[1]);
            match (hi, lo) {
                (Some(h), Some(l)) => out[i] = (h << 4) | l,
                _ => bail!("invalid checksum {s:?}: not lowercase hex"),
            }
        }
        Ok(Checksum(out))
    }

    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 15) as usize] as char);
        }
        s
    }

    /// SHA-256 of `data`.
    pub fn of(data: &[u8]) -> Checksum {
        Checksum(Sha256::digest(data).into())
    }

    /// A checksum from 32 raw bytes.
    pub fn from_slice(b: &[u8]) -> Result<Checksum> {
        let a: [u8; 32] = b
            .try_into()
            .map_err(|_| anyhow!("invalid checksum: {} bytes instead of 32", b.len()))?;
        Ok(Checksum(a))
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Checksum({})", self.to_hex())
    }
}

impl std::str::FromStr for Checksum {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Checksum> {
        Checksum::from_hex(s)
    }
}

/// How content objects are stored.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub enum RepoMode {
    /// Real ownership, mode and xattrs on the object files (needs root).
    Bare,
    /// Metadata in the `user.ostreemeta` xattr; objects owned by the writer.
    BareUser,
}

impl RepoMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            RepoMode::Bare => "bare",
            RepoMode::BareUser => "bare-user",
        }
    }
}

/// The object types otter reads and writes.
#[derive(Copy, Clone, PartialEq, Eq, Debug, Hash)]
pub enum ObjectKind {
    File,
    DirTree,
    DirMeta,
    Commit,
    /// `objects/xx/<sha256 of the content>.payload-link`: a symlink `../yy/<rest>.file` to a
    /// regular-file content object with that content (ostree's `payload-link-threshold`
    /// feature); named by the plain SHA-256 of the file's bytes, not by an object checksum.
    PayloadLink,
}

impl ObjectKind {
    pub fn extension(&self) -> &'static str {
        match self {
            ObjectKind::File => "file",
            ObjectKind::DirTree => "dirtree",
            ObjectKind::DirMeta => "dirmeta",
            ObjectKind::Commit => "commit",
            ObjectKind::PayloadLink => "payload-link",
        }
    }

    fn from_extension(ext: &str) -> Option<ObjectKind> {
        Some(match ext {
            "file" => ObjectKind::File,
            "dirtree" => ObjectKind::DirTree,
            "dirmeta" => ObjectKind::DirMeta,
            "commit" => ObjectKind::Commit,
            "payload-link" => ObjectKind::PayloadLink,
            _ => return None,
        })
    }
}

/// A commit metadata value (the `v` of the commit's `a{sv}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetaValue {
    Str(String),
    U64(u64),
    Bool(bool),
    Bytes(Vec<u8>),
    StrArray(Vec<String>),
}

/// A parsed commit object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    pub checksum: Checksum,
    pub parent: Option<Checksum>,
    pub subject: String,
    pub body: String,
    /// Seconds since the epoch (UTC).
    pub timestamp: u64,
    pub root_tree: Checksum,
    pub root_meta: Checksum,
    pub metadata: Vec<(String, MetaValue)>,
}

impl Commit {
    pub fn meta_str(&self, key: &str) -> Option<&str> {
        self.metadata.iter().find_map(|(k, v)| match v {
            MetaValue::Str(s) if k == key => Some(s.as_str()),
            _ => None,
        })
    }

    /// sha256(root_tree ‖ root_meta): `ostree show`'s ContentChecksum.
    pub fn content_checksum(&self) -> Checksum {
        content_checksum(&self.root_tree, &self.root_meta)
    }
}

/// sha256(root dirtree csum ‖ root dirmeta csum).
pub fn content_checksum(root_tree: &Checksum, root_meta: &Checksum) -> Checksum {
    let mut h = Sha256::new();
    h.update(root_tree.0);
    h.update(root_meta.0);
    Checksum(h.finalize().into())
}

/// A content object opened for reading.
pub struct FileObject {
    pub header: FileHeader,
    /// The content (None for a symlink).
    pub content: Option<File>,
    pub size: u64,
    /// Where the object lives (for hardlinking).
    pub path: PathBuf,
}

/// An ostree repository on disk.
#[derive(Debug)]
pub struct Repo {
    path: PathBuf,
    mode: RepoMode,
    /// Regular files of at least this many bytes get a payload link when written
    /// (`u64::MAX`: none); see [`Repo::set_payload_link_threshold`].
    payload_link_threshold: AtomicU64,
}

/// Default of [`Repo::set_payload_link_threshold`] (and of `[update] payload-link-threshold`):
/// smaller files are cheaper to download than to look up.
pub const DEFAULT_PAYLOAD_LINK_THRESHOLD: u64 = 4096;

impl Repo {
    /// Create a repository (like `ostree init --mode=`); fine if one with this mode exists.
    pub fn init(path: &Path, mode: RepoMode) -> Result<Repo> {
        let config = path.join("config");
        if config.exists() {
            let repo = Repo::open(path)?;
            if repo.mode != mode {
                bail!(
                    "repository {} exists with mode {}, not {}",
                    path.display(),
                    repo.mode.as_str(),
                    mode.as_str()
                );
            }
            return Ok(repo);
        }
        for d in [
            "objects",
            "refs/heads",
            "refs/remotes",
            "refs/mirrors",
            "tmp",
            "state",
            "extensions",
        ] {
            let p = path.join(d);
            fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        }
        let text = format!("[core]\nrepo_version=1\nmode={}\n", mode.as_str());
        write_atomic(&config, text.as_bytes(), 0o644)?;
        Repo::open(path)
    }

    /// Open an existing repository and read its mode from `config`.
    pub fn open(path: &Path) -> Result<Repo> {
        let config = path.join("config");
        let text = fs::read_to_string(&config).with_context(|| {
            format!(
                "reading {}: is {} an ostree repository?",
                config.display(),
                path.display()
            )
        })?;
        let mode =
            parse_config_mode(&text).with_context(|| format!("parsing {}", config.display()))?;
        for d in ["objects", "refs/heads", "refs/remotes"] {
            if !path.join(d).is_dir() {
                bail!("repository {} has no {d}/ directory", path.display());
            }
        }
        // Like ostree: tmp/ is created on demand (best effort, the repo may be read-only).
        let _ = fs::create_dir_all(path.join("tmp"));
        Ok(Repo {
            path: path.to_path_buf(),
            mode,
            payload_link_threshold: AtomicU64::new(DEFAULT_PAYLOAD_LINK_THRESHOLD),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn mode(&self) -> RepoMode {
        self.mode
    }

    /// `objects/xx/yyyy….ext`.
    pub fn object_path(&self, kind: ObjectKind, c: &Checksum) -> PathBuf {
        let hex = c.to_hex();
        self.path.join("objects").join(&hex[..2]).join(format!(
            "{}.{}",
            &hex[2..],
            kind.extension()
        ))
    }

    pub fn has_object(&self, kind: ObjectKind, c: &Checksum) -> bool {
        fs::symlink_metadata(self.object_path(kind, c)).is_ok()
    }

    /// Regular files written from now on with at least `threshold` bytes get a payload link
    /// (`objects/xx/<sha256 of the content>.payload-link`, see [`ObjectKind::PayloadLink`]);
    /// `None` writes none. Default [`DEFAULT_PAYLOAD_LINK_THRESHOLD`].
    pub fn set_payload_link_threshold(&self, threshold: Option<u64>) {
        self.payload_link_threshold
            .store(threshold.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub(crate) fn payload_link_threshold(&self) -> Option<u64> {
        match self.payload_link_threshold.load(Ordering::Relaxed) {
            u64::MAX => None,
            t => Some(t),
        }
    }

    /// The content object a payload link names, if the link exists, has ostree's form
    /// (`../xx/<62 hex>.file`) and its object is still there. A stale or malformed link is
    /// ignored (never trusted): the caller downloads the content instead.
    pub fn payload_link(&self, content_sha256: &Checksum) -> Option<Checksum> {
        let p = self.object_path(ObjectKind::PayloadLink, content_sha256);
        let target = fs::read_link(&p).ok()?;
        let c = parse_payload_link_target(target.to_str()?)?;
        self.has_object(ObjectKind::File, &c).then_some(c)
    }

    fn ref_path(&self, name: &str) -> Result<PathBuf> {
        let (remote, r) = match name.split_once(':') {
            Some((remote, r)) => {
                validate_ref_name(remote).with_context(|| format!("invalid remote in {name:?}"))?;
                (Some(remote), r)
            }
            None => (None, name),
        };
        validate_ref_name(r).with_context(|| format!("invalid ref name {name:?}"))?;
        Ok(match remote {
            Some(remote) => self.path.join("refs/remotes").join(remote).join(r),
            None => self.path.join("refs/heads").join(r),
        })
    }

    /// The commit a ref (`NAME` or `REMOTE:NAME`) points to, None if it does not exist.
    pub fn resolve_ref(&self, name: &str) -> Result<Option<Checksum>> {
        let p = self.ref_path(name)?;
        let text = match fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading ref {}", p.display())),
        };
        let c = Checksum::from_hex(text.trim_end_matches('\n'))
            .with_context(|| format!("ref {} holds no commit checksum", p.display()))?;
        Ok(Some(c))
    }

    /// Point a ref at a commit (atomic write), or delete it with None.
    pub fn set_ref(&self, name: &str, commit: Option<&Checksum>) -> Result<()> {
        let p = self.ref_path(name)?;
        match commit {
            Some(c) => {
                if !self.has_object(ObjectKind::Commit, c) {
                    bail!(
                        "cannot set ref {name} to {c}: the commit is not in {}",
                        self.path.display()
                    );
                }
                let parent = p.parent().context("ref path has no parent")?;
                fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
                write_atomic(&p, format!("{c}\n").as_bytes(), 0o644)
            }
            None => {
                match crate::fsutil::crash_point("unlink ref").and_then(|()| fs::remove_file(&p)) {
                    Ok(()) => fsync_dir(p.parent().unwrap_or(&self.path)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(e).with_context(|| format!("deleting ref {}", p.display())),
                }
            }
        }
    }

    /// Local refs whose name starts with `prefix` (e.g. `ostree/`), sorted by name.
    pub fn list_refs(&self, prefix: &str) -> Result<Vec<(String, Checksum)>> {
        let mut out = Vec::new();
        self.collect_refs(&self.path.join("refs/heads"), "", &mut out)?;
        out.retain(|(n, _)| n.starts_with(prefix));
        out.sort();
        Ok(out)
    }

    fn collect_refs(
        &self,
        dir: &Path,
        prefix: &str,
        out: &mut Vec<(String, Checksum)>,
    ) -> Result<()> {
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        for e in rd {
            let e = e.with_context(|| format!("listing {}", dir.display()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                // Not a ref: a temp file of an interrupted atomic write (ref names never start
                // with '.').
                continue;
            }
            let full = format!("{prefix}{name}");
            let ft = e
                .file_type()
                .with_context(|| format!("stat {}", e.path().display()))?;
            if ft.is_dir() {
                self.collect_refs(&e.path(), &format!("{full}/"), out)?;
            } else if ft.is_file() {
                let text = fs::read_to_string(e.path())
                    .with_context(|| format!("reading ref {}", e.path().display()))?;
                let c = Checksum::from_hex(text.trim_end_matches('\n')).with_context(|| {
                    format!("ref {} holds no commit checksum", e.path().display())
                })?;
                out.push((full, c));
            }
        }
        Ok(())
    }

    /// All refs including remotes (`REMOTE:NAME`), for prune.
    fn all_ref_targets(&self) -> Result<Vec<Checksum>> {
        let mut out = Vec::new();
        self.collect_refs(&self.path.join("refs/heads"), "", &mut out)?;
        self.collect_refs(&self.path.join("refs/remotes"), "", &mut out)?;
        Ok(out.into_iter().map(|(_, c)| c).collect())
    }

    /// Read a metadata object, checking its checksum.
    pub fn read_metadata(&self, kind: ObjectKind, c: &Checksum) -> Result<Vec<u8>> {
        let p = self.object_path(kind, c);
        let f =
            File::open(&p).with_context(|| format!("opening {} object {c}", kind.extension()))?;
        let mut data = Vec::new();
        f.take(MAX_METADATA_SIZE + 1)
            .read_to_end(&mut data)
            .with_context(|| format!("reading {}", p.display()))?;
        if data.len() as u64 > MAX_METADATA_SIZE {
            bail!("{} is larger than {MAX_METADATA_SIZE} bytes", p.display());
        }
        let actual = Checksum::of(&data);
        if actual != *c {
            bail!("corrupted object {}: checksum is {actual}", p.display());
        }
        Ok(data)
    }

    pub fn read_commit(&self, commit: &Checksum) -> Result<Commit> {
        let data = self.read_metadata(ObjectKind::Commit, commit)?;
        objects::decode_commit(*commit, &data).with_context(|| format!("parsing commit {commit}"))
    }

    pub fn read_dirtree(&self, c: &Checksum) -> Result<DirTree> {
        let data = self.read_metadata(ObjectKind::DirTree, c)?;
        DirTree::decode(&data).with_context(|| format!("parsing dirtree {c}"))
    }

    pub fn read_dirmeta(&self, c: &Checksum) -> Result<DirMeta> {
        let data = self.read_metadata(ObjectKind::DirMeta, c)?;
        let m = DirMeta::decode(&data).with_context(|| format!("parsing dirmeta {c}"))?;
        if m.mode & objects::S_IFMT != objects::S_IFDIR || m.mode & !(objects::S_IFMT | 0o7777) != 0
        {
            bail!("dirmeta {c} has invalid mode {:o}", m.mode);
        }
        Ok(m)
    }

    /// Open a content object: its header (uid, gid, mode, symlink target, xattrs) and content.
    pub fn open_file(&self, c: &Checksum) -> Result<FileObject> {
        let path = self.object_path(ObjectKind::File, c);
        let md =
            fs::symlink_metadata(&path).with_context(|| format!("file object {c} is missing"))?;
        match self.mode {
            RepoMode::Bare => {
                let xattrs = sys::llistxattrs(&path)?;
                if md.file_type().is_symlink() {
                    let target = fs::read_link(&path)
                        .with_context(|| format!("readlink {}", path.display()))?;
                    let target = target
                        .to_str()
                        .with_context(|| format!("symlink {} target is not UTF-8", path.display()))?
                        .to_string();
                    return Ok(FileObject {
                        header: FileHeader {
                            uid: md.uid(),
                            gid: md.gid(),
                            mode: objects::S_IFLNK | 0o777,
                            symlink_target: target,
                            xattrs,
                        },
                        content: None,
                        size: 0,
                        path,
                    });
                }
                let f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
                Ok(FileObject {
                    header: FileHeader {
                        uid: md.uid(),
                        gid: md.gid(),
                        mode: md.mode(),
                        symlink_target: String::new(),
                        xattrs,
                    },
                    content: Some(f),
                    size: md.len(),
                    path,
                })
            }
            RepoMode::BareUser => {
                let mut f =
                    File::open(&path).with_context(|| format!("opening {}", path.display()))?;
                let meta = sys::fgetxattr(&f, "user.ostreemeta")
                    .with_context(|| format!("reading metadata of {}", path.display()))?
                    .with_context(|| format!("{} has no user.ostreemeta xattr", path.display()))?;
                let m = DirMeta::decode(&meta)
                    .with_context(|| format!("parsing user.ostreemeta of {}", path.display()))?;
                let mut header = FileHeader {
                    uid: m.uid,
                    gid: m.gid,
                    mode: m.mode,
                    symlink_target: String::new(),
                    xattrs: m.xattrs,
                };
                if header.is_symlink() {
                    let mut t = Vec::new();
                    (&mut f)
                        .take(8192)
                        .read_to_end(&mut t)
                        .with_context(|| format!("reading {}", path.display()))?;
                    if t.pop() != Some(0) {
                        bail!(
                            "bare-user symlink object {} is not NUL-terminated",
                            path.display()
                        );
                    }
                    header.symlink_target = String::from_utf8(t).with_context(|| {
                        format!("symlink target in {} is not UTF-8", path.display())
                    })?;
                    return Ok(FileObject {
                        header,
                        content: None,
                        size: 0,
                        path,
                    });
                }
                header
                    .validate()
                    .with_context(|| format!("object {}", path.display()))?;
                Ok(FileObject {
                    header,
                    content: Some(f),
                    size: md.len(),
                    path,
                })
            }
        }
    }

    /// Start writing objects.
    pub fn transaction(&self) -> Result<Transaction<'_>> {
        Transaction::new(self)
    }

    /// Check out a commit into `dest` (which must not exist); see [`checkout`].
    pub fn checkout(&self, commit: &Checksum, dest: &Path) -> Result<()> {
        checkout::checkout(self, commit, dest)
    }

    /// Delete objects not reachable from any ref's commit (its tree; history is not kept, like
    /// `ostree admin cleanup`'s prune at depth 0) and stale staging directories. Returns how many
    /// objects were deleted.
    pub fn prune(&self) -> Result<usize> {
        let _lock = self.lock(true)?;
        let mut keep: HashSet<(ObjectKind, Checksum)> = HashSet::new();
        for c in self.all_ref_targets()? {
            if !keep.insert((ObjectKind::Commit, c)) {
                continue;
            }
            let commit = self.read_commit(&c)?;
            keep.insert((ObjectKind::DirMeta, commit.root_meta));
            self.mark_tree(&commit.root_tree, &mut keep, 0)?;
        }
        let mut deleted = 0usize;
        let objects = self.path.join("objects");
        for d in fs::read_dir(&objects).with_context(|| format!("listing {}", objects.display()))? {
            let d = d.with_context(|| format!("listing {}", objects.display()))?;
            let prefix = d.file_name().to_string_lossy().into_owned();
            if prefix.len() != 2 || !d.path().is_dir() {
                continue;
            }
            for e in
                fs::read_dir(d.path()).with_context(|| format!("listing {}", d.path().display()))?
            {
                let e = e.with_context(|| format!("listing {}", d.path().display()))?;
                let name = e.file_name().to_string_lossy().into_owned();
                let Some((rest, ext)) = name.split_once('.') else {
                    continue;
                };
                let Ok(c) = Checksum::from_hex(&format!("{prefix}{rest}")) else {
                    continue;
                };
                let live = match ObjectKind::from_extension(ext) {
                    // A payload link lives as long as the object it points at.
                    Some(ObjectKind::PayloadLink) => fs::read_link(e.path())
                        .ok()
                        .and_then(|t| parse_payload_link_target(t.to_str()?))
                        .is_some_and(|t| keep.contains(&(ObjectKind::File, t))),
                    Some(k) => keep.contains(&(k, c)),
                    // Detached metadata lives as long as its commit.
                    None if ext == "commitmeta" => keep.contains(&(ObjectKind::Commit, c)),
                    None => true,
                };
                if !live {
                    fs::remove_file(e.path())
                        .with_context(|| format!("deleting {}", e.path().display()))?;
                    deleted += 1;
                }
            }
        }
        transaction::remove_stale_staging(self)?;
        Ok(deleted)
    }

    fn mark_tree(
        &self,
        tree: &Checksum,
        keep: &mut HashSet<(ObjectKind, Checksum)>,
        depth: usize,
    ) -> Result<()> {
        if depth > MAX_TREE_DEPTH {
            bail!("dirtree {tree} is nested deeper than {MAX_TREE_DEPTH}");
        }
        if !keep.insert((ObjectKind::DirTree, *tree)) {
            return Ok(());
        }
        let t = self.read_dirtree(tree)?;
        for (_, c) in &t.files {
            keep.insert((ObjectKind::File, *c));
        }
        for (_, sub, meta) in &t.dirs {
            keep.insert((ObjectKind::DirMeta, *meta));
            self.mark_tree(sub, keep, depth + 1)?;
        }
        Ok(())
    }

    /// OFD lock on `.lock`: shared for writers, exclusive for prune.
    fn lock(&self, exclusive: bool) -> Result<File> {
        let p = self.path.join(".lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&p)
            .with_context(|| format!("opening {}", p.display()))?;
        sys::ofd_lock(&f, exclusive).with_context(|| format!("locking {}", p.display()))?;
        Ok(f)
    }

    /// Commit a directory of the host filesystem (like `ostree commit --tree=dir=`), owners,
    /// modes and xattrs as found. Devices, fifos and sockets are refused.
    pub fn commit_dir(
        &self,
        dir: &Path,
        subject: &str,
        metadata: Vec<(String, MetaValue)>,
        parent: Option<Checksum>,
        timestamp: u64,
    ) -> Result<Checksum> {
        let mut tx = self.transaction()?;
        let (tree, meta) = commit_dir_rec(&mut tx, dir, 0)?;
        tx.commit(subject, "", metadata, parent, timestamp, &tree, &meta)
    }
}

fn commit_dir_rec(
    tx: &mut Transaction<'_>,
    dir: &Path,
    depth: usize,
) -> Result<(Checksum, Checksum)> {
    if depth > MAX_TREE_DEPTH {
        bail!("{} is nested deeper than {MAX_TREE_DEPTH}", dir.display());
    }
    let md = fs::symlink_metadata(dir).with_context(|| format!("stat {}", dir.display()))?;
    let dirmeta = DirMeta {
        uid: md.uid(),
        gid: md.gid(),
        mode: md.mode(),
        xattrs: sys::llistxattrs(dir)?,
    };
    let mut names = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        let name = e
            .file_name()
            .into_string()
            .map_err(|n| anyhow!("file name {n:?} in {} is not UTF-8", dir.display()))?;
        names.push(name);
    }
    names.sort();
    let mut tree = DirTree::default();
    for name in names {
        let p = dir.join(&name);
        let md = fs::symlink_metadata(&p).with_context(|| format!("stat {}", p.display()))?;
        let ft = md.file_type();
        if ft.is_dir() {
            let (t, m) = commit_dir_rec(tx, &p, depth + 1)?;
            tree.dirs.push((name, t, m));
            continue;
        }
        let xattrs = sys::llistxattrs(&p)?;
        let c = if ft.is_symlink() {
            let target = fs::read_link(&p).with_context(|| format!("readlink {}", p.display()))?;
            let target = target
                .to_str()
                .with_context(|| format!("symlink target of {} is not UTF-8", p.display()))?
                .to_string();
            let h = FileHeader {
                uid: md.uid(),
                gid: md.gid(),
                mode: objects::S_IFLNK | 0o777,
                symlink_target: target,
                xattrs,
            };
            tx.write_file(&h, &mut std::io::empty())
                .with_context(|| format!("committing {}", p.display()))?
        } else if ft.is_file() {
            let h = FileHeader {
                uid: md.uid(),
                gid: md.gid(),
                mode: md.mode(),
                symlink_target: String::new(),
                xattrs,
            };
            let mut f = File::open(&p).with_context(|| format!("opening {}", p.display()))?;
            tx.write_file(&h, &mut f)
                .with_context(|| format!("committing {}", p.display()))?
        } else {
            bail!(
                "{} is not a regular file, symlink or directory",
                p.display()
            );
        };
        tree.files.push((name, c));
    }
    let t = tx.write_dirtree(&tree)?;
    let m = tx.write_dirmeta(&dirmeta)?;
    Ok((t, m))
}

/// Parse the `mode=` of the `[core]` group.
fn parse_config_mode(text: &str) -> Result<RepoMode> {
    let mut in_core = false;
    let mut mode = None;
    let mut version = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            in_core = line == "[core]";
            continue;
        }
        if !in_core {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            match k.trim() {
                "mode" => mode = Some(v.trim().to_string()),
                "repo_version" => version = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    if version.as_deref() != Some("1") {
        bail!("repo_version is {version:?}, expected 1");
    }
    match mode.as_deref() {
        None | Some("bare") => Ok(RepoMode::Bare),
        Some("bare-user") => Ok(RepoMode::BareUser),
        Some(other) => {
            bail!("unsupported repository mode {other:?} (otter supports bare and bare-user)")
        }
    }
}

/// A ref name: `(FRAG/)*FRAG`, FRAG = `[\w\d][-._\w\d]*`.
fn validate_ref_name(name: &str) -> Result<()> {
    if name.is_empty() {
        bail!("empty ref name");
    }
    for frag in name.split('/') {
        let mut chars = frag.chars();
        match chars.next() {
            Some(c) if c.is_alphanumeric() || c == '_' => {}
            _ => bail!("ref name {name:?}: each component must start with a letter, digit or '_'"),
        }
        if !chars.all(|c| c.is_alphanumeric() || matches!(c, '-' | '.' | '_')) {
            bail!(
                "ref name {name:?} contains characters other than letters, digits, '-', '.', '_'"
            );
        }
    }
    Ok(())
}

/// Write `data` to `path` atomically (see [`crate::fsutil::write_atomic`]).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    crate::fsutil::write_atomic(path, data, mode)
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    crate::fsutil::fsync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_hex() {
        let h = "44f778e59f0a4748d6b0c90a47347212a231c4ad1e8f7ea5c5dffc7749153a6b";
        let c: Checksum = h.parse().unwrap();
        assert_eq!(c.to_hex(), h);
        assert_eq!(format!("{c}"), h);
        assert!(Checksum::from_hex(&h[1..]).is_err());
        assert!(Checksum::from_hex(&h.to_uppercase()).is_err());
        assert!(Checksum::from_hex(&format!("{}g", &h[1..])).is_err());
    }

    /// Payload links: written for big regular files only, in ostree's form; a stale link (its
    /// object pruned) or a malformed one is ignored, and prune drops links with their object.
    #[test]
    fn payload_links() {
        let d = tempfile::tempdir().unwrap();
        let repo = Repo::init(&d.path().join("repo"), RepoMode::BareUser).unwrap();
        repo.set_payload_link_threshold(Some(10));
        let hdr = FileHeader {
            uid: 0,
            gid: 0,
            mode: objects::S_IFREG | 0o644,
            symlink_target: String::new(),
            xattrs: Vec::new(),
        };
        let big = b"0123456789abcdef".to_vec();
        let mut tx = repo.transaction().unwrap();
        let obj = tx.write_file(&hdr, &mut &big[..]).unwrap();
        let small = tx.write_file(&hdr, &mut &b"tiny"[..]).unwrap();
        tx.finish().unwrap();
        let sum = Checksum::of(&big);
        assert_eq!(repo.payload_link(&sum), Some(obj));
        assert_eq!(repo.payload_link(&Checksum::of(b"tiny")), None);
        let link = repo.object_path(ObjectKind::PayloadLink, &sum);
        let hex = obj.to_hex();
        assert_eq!(
            fs::read_link(&link).unwrap().to_str().unwrap(),
            format!("../{}/{}.file", &hex[..2], &hex[2..])
        );
        assert!(repo.has_object(ObjectKind::File, &small));

        // Malformed targets are ignored.
        for bad in [
            "../zz/x.file",
            "/etc/passwd",
            &format!("{}/{}.file", &hex[..2], &hex[2..]),
        ] {
            fs::remove_file(&link).unwrap();
            std::os::unix::fs::symlink(bad, &link).unwrap();
            assert_eq!(repo.payload_link(&sum), None, "{bad}");
        }
        // Stale: the object is gone. A new write replaces the link.
        fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(format!("../{}/{}.file", &hex[..2], &hex[2..]), &link).unwrap();
        fs::remove_file(repo.object_path(ObjectKind::File, &obj)).unwrap();
        assert_eq!(repo.payload_link(&sum), None);
        let hdr2 = FileHeader {
            mode: objects::S_IFREG | 0o600,
            ..hdr.clone()
        };
        let mut tx = repo.transaction().unwrap();
        let obj2 = tx.write_file(&hdr2, &mut &big[..]).unwrap();
        tx.finish().unwrap();
        assert_eq!(repo.payload_link(&sum), Some(obj2));

        // Nothing refers to the object: prune deletes it and its link.
        repo.prune().unwrap();
        assert!(!repo.has_object(ObjectKind::File, &obj2));
        assert!(fs::symlink_metadata(&link).is_err());

        // Off: no links.
        repo.set_payload_link_threshold(None);
        let mut tx = repo.transaction().unwrap();
        tx.write_file(&hdr, &mut &big[..]).unwrap();
        tx.finish().unwrap();
        assert!(fs::symlink_metadata(&link).is_err());
    }

    #[test]
    fn ref_names() {
        assert!(validate_ref_name("ostree/0/1/0").is_ok());
        assert!(validate_ref_name("otter/stable-1.x").is_ok());
        for bad in ["", "/a", "a/", "a//b", "../x", "a/../b", ".x", "a b"] {
            assert!(validate_ref_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_modes() {
        assert_eq!(
            parse_config_mode("[core]\nrepo_version=1\nmode=bare-user\n").unwrap(),
            RepoMode::BareUser
        );
        assert_eq!(
            parse_config_mode("[core]\nrepo_version=1\n").unwrap(),
            RepoMode::Bare
        );
        assert!(parse_config_mode("[core]\nrepo_version=1\nmode=archive-z2\n").is_err());
        assert!(parse_config_mode("[core]\nmode=bare\n").is_err());
    }
}
