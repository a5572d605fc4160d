//! Checking out a commit into a directory, the way `ostree admin deploy` does: hard links into
//! the object store where the object file is exactly the checked-out file, copies otherwise.

use std::fs::{self, File};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::objects::FileHeader;
use super::{fsync_dir, sys, Checksum, FileObject, ObjectKind, Repo, RepoMode, MAX_TREE_DEPTH};

pub(super) fn checkout(repo: &Repo, commit: &Checksum, dest: &Path) -> Result<()> {
    if fs::symlink_metadata(dest).is_ok() {
        bail!("checkout destination {} already exists", dest.display());
    }
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .with_context(|| format!("checkout destination {} has no file name", dest.display()))?
        .to_string_lossy();
    let tmp = parent.join(format!(".{name}.checkout-{}", std::process::id()));
    if fs::symlink_metadata(&tmp).is_ok() {
        fs::remove_dir_all(&tmp).with_context(|| format!("removing stale {}", tmp.display()))?;
    }
    let c = repo.read_commit(commit)?;
    let res = (|| -> Result<()> {
        checkout_tree(repo, &c.root_tree, &c.root_meta, &tmp, 0)?;
        let d = File::open(&tmp).with_context(|| format!("opening {}", tmp.display()))?;
        sys::syncfs(&d).with_context(|| format!("flushing checkout {}", tmp.display()))?;
        fs::rename(&tmp, dest)
            .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
        fsync_dir(parent)
    })();
    if res.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    res.with_context(|| format!("checking out commit {commit} to {}", dest.display()))
}

fn checkout_tree(
    repo: &Repo,
    tree: &Checksum,
    meta: &Checksum,
    path: &Path,
    depth: usize,
) -> Result<()> {
    if depth > MAX_TREE_DEPTH {
        bail!(
            "tree is nested deeper than {MAX_TREE_DEPTH} at {}",
            path.display()
        );
    }
    let t = repo.read_dirtree(tree)?;
    let m = repo.read_dirmeta(meta)?;
    fs::create_dir(path).with_context(|| format!("creating {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod {}", path.display()))?;
    for (name, c) in &t.files {
        let p = path.join(name);
        checkout_file(repo, c, &p)
            .with_context(|| format!("checking out {} ({c})", p.display()))?;
    }
    for (name, sub, submeta) in &t.dirs {
        checkout_tree(repo, sub, submeta, &path.join(name), depth + 1)?;
    }
    chown_maybe(path, m.uid, m.gid)?;
    for (n, v) in &m.xattrs {
        sys::lsetxattr(path, n, v)?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(m.mode & 0o7777))
        .with_context(|| format!("chmod {}", path.display()))?;
    sys::lset_mtime_zero(path)?;
    Ok(())
}

fn checkout_file(repo: &Repo, c: &Checksum, dest: &Path) -> Result<()> {
    let src = repo.object_path(ObjectKind::File, c);
    if repo.mode() == RepoMode::Bare {
        // A bare object is the file itself: owner, mode, xattrs, mtime 0.
        match fs::hard_link(&src, dest) {
            Ok(()) => return Ok(()),
            Err(e) if !can_fall_back(&e) => {
                return Err(e).with_context(|| format!("hardlinking {}", src.display()))
            }
            Err(_) => {}
        }
    }
    let obj = repo.open_file(c)?;
    if repo.mode() == RepoMode::BareUser && linkable_bare_user(&obj)? {
        match fs::hard_link(&obj.path, dest) {
            Ok(()) => return Ok(()),
            Err(e) if !can_fall_back(&e) => {
                return Err(e).with_context(|| format!("hardlinking {}", src.display()))
            }
            Err(_) => {}
        }
    }
    copy_object(obj, dest)
}

fn can_fall_back(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EXDEV) | Some(libc::EMLINK) | Some(libc::EPERM)
    )
}

/// A bare-user regular file can be linked when the object file already has the recorded owner
/// and mode and there are no xattrs to apply.
fn linkable_bare_user(obj: &FileObject) -> Result<bool> {
    let h = &obj.header;
    if h.is_symlink() || !h.xattrs.is_empty() {
        return Ok(false);
    }
    let md = fs::metadata(&obj.path).with_context(|| format!("stat {}", obj.path.display()))?;
    Ok(md.uid() == h.uid && md.gid() == h.gid && md.mode() & 0o7777 == h.mode & 0o7777)
}

fn copy_object(obj: FileObject, dest: &Path) -> Result<()> {
    let h: &FileHeader = &obj.header;
    match obj.content {
        None => {
            std::os::unix::fs::symlink(&h.symlink_target, dest)
                .with_context(|| format!("creating symlink {}", dest.display()))?;
            chown_maybe(dest, h.uid, h.gid)?;
            for (n, v) in &h.xattrs {
                sys::lsetxattr(dest, n, v)?;
            }
        }
        Some(mut src) => {
            let mut f =
                File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
            io::copy(&mut src, &mut f).with_context(|| format!("copying to {}", dest.display()))?;
            match sys::fchown(&f, h.uid, h.gid) {
                Ok(()) => {}
                Err(_) if sys::euid() != 0 => {}
                Err(e) => return Err(e).with_context(|| format!("chown {}", dest.display())),
            }
            for (n, v) in &h.xattrs {
                sys::fsetxattr(&f, n, v)
                    .with_context(|| format!("setting xattrs on {}", dest.display()))?;
            }
            f.set_permissions(fs::Permissions::from_mode(h.mode & 0o7777))
                .with_context(|| format!("chmod {}", dest.display()))?;
            sys::fset_mtime_zero(&f)?;
        }
    }
    Ok(())
}

/// chown, tolerating EPERM when not running as root (a user-mode checkout).
fn chown_maybe(path: &Path, uid: u32, gid: u32) -> Result<()> {
    match std::os::unix::fs::lchown(path, Some(uid), Some(gid)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::PermissionDenied && sys::euid() != 0 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("lchown {} to {uid}:{gid}", path.display())),
    }
}
