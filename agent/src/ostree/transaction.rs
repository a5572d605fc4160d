//! Writing objects: stage, hash while streaming, sync once, publish (see the module doc of
//! [`super`]).

use std::fs::{self, File};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use sha2::Digest;

use super::objects::{self, DirMeta, DirTree, FileHeader};
use super::{sys, Checksum, MetaValue, ObjectKind, Repo, RepoMode};
use crate::fsutil;

/// Copy buffer for file contents.
pub const COPY_BUFFER_SIZE: usize = 128 * 1024;
const STAGING_PREFIX: &str = "staging-";

static STAGING_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A set of objects being written. Dropping it without [`Transaction::commit`] discards them.
pub struct Transaction<'r> {
    repo: &'r Repo,
    staging: PathBuf,
    buf: Vec<u8>,
    tmp_counter: u64,
    committed: bool,
    _lock: File,
}

impl<'r> Transaction<'r> {
    pub(super) fn new(repo: &'r Repo) -> Result<Transaction<'r>> {
        let lock = repo.lock(false)?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let staging = repo.path.join("tmp").join(format!(
            "{STAGING_PREFIX}{}-{nanos}-{}",
            std::process::id(),
            STAGING_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fsutil::create_dir_all(&staging)?;
        Ok(Transaction {
            repo,
            staging,
            buf: vec![0; COPY_BUFFER_SIZE],
            tmp_counter: 0,
            committed: false,
            _lock: lock,
        })
    }

    pub fn repo(&self) -> &Repo {
        self.repo
    }

    fn staged_path(&self, kind: ObjectKind, c: &Checksum) -> PathBuf {
        self.staging
            .join(format!("{}.{}", c.to_hex(), kind.extension()))
    }

    /// True if the object is in the repo or staged in this transaction.
    pub fn has_object(&self, kind: ObjectKind, c: &Checksum) -> bool {
        self.repo.has_object(kind, c) || fs::symlink_metadata(self.staged_path(kind, c)).is_ok()
    }

    fn tmp_name(&mut self) -> PathBuf {
        self.tmp_counter += 1;
        self.staging.join(format!("tmp.{}", self.tmp_counter))
    }

    /// Write a content object: the header, then `content` streamed through the hasher into a
    /// staged file (ignored for symlinks). Returns its checksum. An object that already exists
    /// is not rewritten.
    pub fn write_file(&mut self, header: &FileHeader, content: &mut dyn Read) -> Result<Checksum> {
        self.write_file_sized(header, content, None)
    }

    /// Like [`write_file`](Self::write_file), failing unless exactly `size` bytes arrive.
    pub fn write_file_sized(
        &mut self,
        header: &FileHeader,
        content: &mut dyn Read,
        size: Option<u64>,
    ) -> Result<Checksum> {
        header.validate()?;
        let bare = self.repo.mode == RepoMode::Bare;
        if header.is_symlink() {
            let c = Checksum(header.hasher().finalize_fixed());
            if self.has_object(ObjectKind::File, &c) {
                return Ok(c);
            }
            let tmp = self.tmp_name();
            if bare {
                fsutil::symlink(&header.symlink_target, &tmp)?;
                sys::lchown(&tmp, header.uid, header.gid)?;
                for (n, v) in &header.xattrs {
                    sys::lsetxattr(&tmp, n, v)?;
                }
                sys::lset_mtime_zero(&tmp)?;
            } else {
                let mut f = fsutil::create(&tmp)?;
                let mut data = header.symlink_target.as_bytes().to_vec();
                data.push(0);
                fsutil::write_all(&mut f, &data, &tmp)?;
                f.set_permissions(fs::Permissions::from_mode(0o644))
                    .with_context(|| format!("chmod {}", tmp.display()))?;
                sys::fsetxattr(&f, b"user.ostreemeta", &header.ostreemeta())?;
                sys::fset_mtime_zero(&f)?;
            }
            self.publish_staged(&tmp, ObjectKind::File, &c)?;
            return Ok(c);
        }

        let tmp = self.tmp_name();
        let mut f = fsutil::create(&tmp)?;
        let mut hasher = header.hasher();
        // The plain SHA-256 of the content, for the payload link (only when the file may be big
        // enough to get one: hashing twice costs CPU).
        let threshold = self.repo.payload_link_threshold();
        let mut payload = threshold
            .filter(|t| size.is_none_or(|s| s >= *t))
            .map(|_| sha2::Sha256::new());
        let mut total = 0u64;
        let res = (|| -> Result<()> {
            loop {
                let n = match content.read(&mut self.buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e).context("reading file content"),
                };
                hasher.update(&self.buf[..n]);
                if let Some(p) = &mut payload {
                    p.update(&self.buf[..n]);
                }
                fsutil::write_all(&mut f, &self.buf[..n], &tmp)?;
                total += n as u64;
            }
            if let Some(want) = size {
                if total != want {
                    bail!("file content is truncated: {total} of {want} bytes");
                }
            }
            Ok(())
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let c = Checksum(hasher.finalize_fixed());
        if let (Some(p), Some(t)) = (payload, threshold) {
            if total >= t {
                self.stage_payload_link(&Checksum(p.finalize_fixed()), &c)?;
            }
        }
        if self.has_object(ObjectKind::File, &c) {
            fs::remove_file(&tmp).with_context(|| format!("deleting {}", tmp.display()))?;
            return Ok(c);
        }
        if bare {
            sys::fchown(&f, header.uid, header.gid)?;
            f.set_permissions(fs::Permissions::from_mode(header.mode & 0o7777))
                .with_context(|| format!("chmod {}", tmp.display()))?;
            for (n, v) in &header.xattrs {
                sys::fsetxattr(&f, n, v)?;
            }
        } else {
            f.set_permissions(fs::Permissions::from_mode((header.mode & 0o775) | 0o400))
                .with_context(|| format!("chmod {}", tmp.display()))?;
            sys::fsetxattr(&f, b"user.ostreemeta", &header.ostreemeta())?;
        }
        sys::fset_mtime_zero(&f)?;
        drop(f);
        self.publish_staged(&tmp, ObjectKind::File, &c)?;
        Ok(c)
    }

    /// Stage `objects/xx/<payload>.payload-link` → `../yy/<rest>.file` unless the repo already
    /// has a working link for this content (any object with the same bytes will do).
    fn stage_payload_link(&mut self, payload: &Checksum, object: &Checksum) -> Result<()> {
        if self.repo.payload_link(payload).is_some()
            || fs::symlink_metadata(self.staged_path(ObjectKind::PayloadLink, payload)).is_ok()
        {
            return Ok(());
        }
        let hex = object.to_hex();
        let target = format!("../{}/{}.file", &hex[..2], &hex[2..]);
        let tmp = self.tmp_name();
        fsutil::symlink(&target, &tmp)?;
        self.publish_staged(&tmp, ObjectKind::PayloadLink, payload)
    }

    fn publish_staged(&self, tmp: &Path, kind: ObjectKind, c: &Checksum) -> Result<()> {
        let dest = self.staged_path(kind, c);
        fsutil::rename(tmp, &dest)
    }

    /// Write a metadata object (its bytes are its identity).
    pub fn write_metadata(&mut self, kind: ObjectKind, data: &[u8]) -> Result<Checksum> {
        let c = Checksum::of(data);
        if self.has_object(kind, &c) {
            return Ok(c);
        }
        let tmp = self.tmp_name();
        let mut f = fsutil::create(&tmp)?;
        fsutil::write_all(&mut f, data, &tmp)?;
        f.set_permissions(fs::Permissions::from_mode(0o644))
            .with_context(|| format!("chmod {}", tmp.display()))?;
        drop(f);
        self.publish_staged(&tmp, kind, &c)?;
        Ok(c)
    }

    pub fn write_dirmeta(&mut self, m: &DirMeta) -> Result<Checksum> {
        self.write_metadata(ObjectKind::DirMeta, &m.encode())
    }

    /// Write a dirtree; entries are sorted here (bytewise by name) and duplicates refused.
    pub fn write_dirtree(&mut self, t: &DirTree) -> Result<Checksum> {
        let mut t = t.clone();
        t.files.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        t.dirs.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for w in t.files.windows(2) {
            if w[0].0 == w[1].0 {
                bail!("dirtree has the file name {:?} twice", w[0].0);
            }
        }
        for w in t.dirs.windows(2) {
            if w[0].0 == w[1].0 {
                bail!("dirtree has the directory name {:?} twice", w[0].0);
            }
        }
        for (n, _, _) in &t.dirs {
            if t.files
                .binary_search_by(|f| f.0.as_bytes().cmp(n.as_bytes()))
                .is_ok()
            {
                bail!("dirtree has {n:?} both as a file and as a directory");
            }
        }
        for n in t
            .files
            .iter()
            .map(|f| &f.0)
            .chain(t.dirs.iter().map(|d| &d.0))
        {
            objects::valid_name(n)?;
        }
        self.write_metadata(ObjectKind::DirTree, &t.encode())
    }

    /// Write the commit object and make everything durable and visible: syncfs, move staged
    /// objects into `objects/` (commit last), syncfs. Does not set refs.
    #[allow(clippy::too_many_arguments)]
    pub fn commit(
        mut self,
        subject: &str,
        body: &str,
        metadata: Vec<(String, MetaValue)>,
        parent: Option<Checksum>,
        timestamp: u64,
        root_tree: &Checksum,
        root_meta: &Checksum,
    ) -> Result<Checksum> {
        for (k, _) in &metadata {
            if k.is_empty() {
                bail!("commit metadata has an empty key");
            }
        }
        if !self.has_object(ObjectKind::DirTree, root_tree)
            || !self.has_object(ObjectKind::DirMeta, root_meta)
        {
            bail!("commit refers to a root tree {root_tree}/{root_meta} that was not written");
        }
        let data = objects::encode_commit_parts(
            &metadata,
            parent.as_ref(),
            subject,
            body,
            timestamp,
            root_tree,
            root_meta,
        );
        let commit = self.write_metadata(ObjectKind::Commit, &data)?;
        self.publish()?;
        Ok(commit)
    }

    /// Write a commit object given as its exact serialized bytes (e.g. received in a delta), then
    /// publish like [`commit`](Self::commit). The bytes must parse as a commit whose root tree
    /// and dirmeta are in the repo or staged here.
    pub fn commit_object(mut self, data: &[u8]) -> Result<Checksum> {
        let c = Checksum::of(data);
        let parsed = objects::decode_commit(c, data)
            .with_context(|| format!("commit object {c} does not parse"))?;
        if !self.has_object(ObjectKind::DirTree, &parsed.root_tree)
            || !self.has_object(ObjectKind::DirMeta, &parsed.root_meta)
        {
            bail!(
                "commit {c} refers to a root tree {}/{} that is not in the repository",
                parsed.root_tree,
                parsed.root_meta
            );
        }
        self.write_metadata(ObjectKind::Commit, data)?;
        self.publish()?;
        Ok(c)
    }

    /// Make the staged objects durable and visible without writing a commit (e.g. one part of a
    /// delta): syncfs, move into `objects/`, syncfs. Such objects stay unreferenced until a commit
    /// refers to them (prune deletes them if none does).
    pub fn finish(mut self) -> Result<()> {
        self.publish()
    }

    fn publish(&mut self) -> Result<()> {
        let staging_dir = File::open(&self.staging)
            .with_context(|| format!("opening {}", self.staging.display()))?;
        fsutil::syncfs(&staging_dir).context("flushing written objects to disk")?;

        let mut commits = Vec::new();
        for e in fs::read_dir(&self.staging)
            .with_context(|| format!("listing {}", self.staging.display()))?
        {
            let e = e.with_context(|| format!("listing {}", self.staging.display()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((hex, ext)) = name.split_once('.') else {
                continue;
            };
            let (Ok(c), Some(kind)) = (Checksum::from_hex(hex), ObjectKind::from_extension(ext))
            else {
                continue;
            };
            // Payload links go in after the objects they point at, commits last.
            if kind == ObjectKind::Commit || kind == ObjectKind::PayloadLink {
                commits.push((e.path(), kind, c));
                continue;
            }
            self.move_into_store(&e.path(), kind, &c)?;
        }
        commits.sort_by_key(|(_, kind, _)| *kind == ObjectKind::Commit);
        for (p, kind, c) in commits {
            self.move_into_store(&p, kind, &c)?;
        }
        fsutil::syncfs(&staging_dir).context("flushing the object store")?;
        self.committed = true;
        let _ = fs::remove_dir_all(&self.staging);
        Ok(())
    }

    fn move_into_store(&self, from: &Path, kind: ObjectKind, c: &Checksum) -> Result<()> {
        let dest = self.repo.object_path(kind, c);
        // A payload link that is there is stale (it was checked when staging): replace it.
        if kind != ObjectKind::PayloadLink && fs::symlink_metadata(&dest).is_ok() {
            return Ok(());
        }
        let dir = dest.parent().context("object path has no parent")?;
        match fsutil::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
        fsutil::rename(from, &dest)
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.staging);
        }
    }
}

/// Remove staging directories of processes that no longer run (left by a crash).
pub(super) fn remove_stale_staging(repo: &Repo) -> Result<()> {
    let tmp = repo.path.join("tmp");
    let rd = match fs::read_dir(&tmp) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", tmp.display())),
    };
    for e in rd {
        let e = e.with_context(|| format!("listing {}", tmp.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(STAGING_PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if pid == std::process::id().to_string() {
            continue;
        }
        if !pid.is_empty() && Path::new("/proc").join(pid).exists() {
            continue;
        }
        fs::remove_dir_all(e.path()).with_context(|| format!("deleting {}", e.path().display()))?;
    }
    Ok(())
}

trait FinalizeFixed {
    fn finalize_fixed(self) -> [u8; 32];
}

impl FinalizeFixed for sha2::Sha256 {
    fn finalize_fixed(self) -> [u8; 32] {
        self.finalize().into()
    }
}
