//! File system helpers for deployments: metadata-preserving copies, `rm -rf` that clears the
//! immutable flag, atomic symlink replacement.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::ostree::{fsync_dir, sys};

/// Deepest directory nesting we copy or delete.
const MAX_DEPTH: usize = 512;

/// `FS_IOC_GETFLAGS` / `FS_IOC_SETFLAGS` (`_IOR('f', 1, long)` / `_IOW('f', 2, long)`).
const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;
const FS_IMMUTABLE_FL: libc::c_long = 0x10;

/// Set or clear `chattr +i` on a directory, like ostree does on deployment roots. Filesystems
/// without the flag (tmpfs, overlayfs) are ignored, as ostree ignores them.
pub fn set_immutable(dir: &Path, on: bool) -> Result<()> {
    let f = match File::open(dir) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("opening {}", dir.display())),
    };
    let mut flags: libc::c_long = 0;
    // SAFETY: valid fd; the ioctl writes one long into `flags`.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_GETFLAGS as _, &mut flags) };
    if r < 0 {
        return ignore_unsupported(io::Error::last_os_error(), dir);
    }
    let new = if on {
        flags | FS_IMMUTABLE_FL
    } else {
        flags & !FS_IMMUTABLE_FL
    };
    if new == flags {
        return Ok(());
    }
    // SAFETY: valid fd; the ioctl reads one long.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_SETFLAGS as _, &new) };
    if r < 0 {
        return ignore_unsupported(io::Error::last_os_error(), dir);
    }
    Ok(())
}

fn ignore_unsupported(e: io::Error, dir: &Path) -> Result<()> {
    match e.raw_os_error() {
        Some(libc::ENOTTY) | Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::ENOSYS) => {
            Ok(())
        }
        _ => Err(e).with_context(|| format!("changing the immutable flag of {}", dir.display())),
    }
}

/// `rm -rf`, clearing the immutable flag on directories first. Missing paths are fine.
pub fn remove_all(path: &Path) -> Result<()> {
    let md = match fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("stat {}", path.display())),
    };
    if md.is_dir() {
        remove_dir_rec(path, 0)
    } else {
        fs::remove_file(path).with_context(|| format!("deleting {}", path.display()))
    }
}

fn remove_dir_rec(dir: &Path, depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        bail!("{} is nested deeper than {MAX_DEPTH}", dir.display());
    }
    set_immutable(dir, false)?;
    for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        let p = e.path();
        if e.file_type()
            .with_context(|| format!("stat {}", p.display()))?
            .is_dir()
        {
            remove_dir_rec(&p, depth + 1)?;
        } else {
            fs::remove_file(&p).with_context(|| format!("deleting {}", p.display()))?;
        }
    }
    fs::remove_dir(dir).with_context(|| format!("deleting {}", dir.display()))
}

/// Copy a regular file or symlink with owner, mode, xattrs and mtime (a real copy, never a
/// hard link). `dst` must not exist.
pub fn copy_entry(src: &Path, dst: &Path) -> Result<()> {
    let md = fs::symlink_metadata(src).with_context(|| format!("stat {}", src.display()))?;
    let ft = md.file_type();
    if ft.is_symlink() {
        let target = fs::read_link(src).with_context(|| format!("readlink {}", src.display()))?;
        symlink(&target, dst).with_context(|| format!("creating symlink {}", dst.display()))?;
    } else if ft.is_file() {
        let mut r = File::open(src).with_context(|| format!("opening {}", src.display()))?;
        let mut w = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dst)
            .with_context(|| format!("creating {}", dst.display()))?;
        io::copy(&mut r, &mut w)
            .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        w.set_permissions(fs::Permissions::from_mode(md.mode() & 0o7777))
            .with_context(|| format!("chmod {}", dst.display()))?;
    } else if ft.is_dir() {
        fs::create_dir(dst).with_context(|| format!("creating {}", dst.display()))?;
        fs::set_permissions(dst, fs::Permissions::from_mode(md.mode() & 0o7777))
            .with_context(|| format!("chmod {}", dst.display()))?;
    } else {
        bail!(
            "{} is not a regular file, directory or symlink; refusing to copy it",
            src.display()
        );
    }
    copy_owner_xattrs(src, dst, &md)
}

fn copy_owner_xattrs(src: &Path, dst: &Path, md: &fs::Metadata) -> Result<()> {
    if sys::euid() == 0 {
        sys::lchown(dst, md.uid(), md.gid())?;
        if md.is_file() {
            // chown clears setuid/setgid bits: restore the mode.
            fs::set_permissions(dst, fs::Permissions::from_mode(md.mode() & 0o7777))
                .with_context(|| format!("chmod {}", dst.display()))?;
        }
    }
    for (name, value) in sys::llistxattrs(src)? {
        let n = name.strip_suffix(b"\0").unwrap_or(&name);
        if let Err(e) = sys::lsetxattr(dst, n, &value) {
            // Not every filesystem takes every namespace (tmpfs and user.* on old kernels).
            log::debug!("copying xattrs to {}: {e:#}", dst.display());
        }
    }
    Ok(())
}

/// Recursively copy `src` to `dst` (which must not exist), preserving metadata.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    copy_tree_rec(src, dst, 0)
}

fn copy_tree_rec(src: &Path, dst: &Path, depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        bail!("{} is nested deeper than {MAX_DEPTH}", src.display());
    }
    let md = fs::symlink_metadata(src).with_context(|| format!("stat {}", src.display()))?;
    if !md.is_dir() {
        return copy_entry(src, dst);
    }
    fs::create_dir(dst).with_context(|| format!("creating {}", dst.display()))?;
    for e in fs::read_dir(src).with_context(|| format!("listing {}", src.display()))? {
        let e = e.with_context(|| format!("listing {}", src.display()))?;
        copy_tree_rec(&e.path(), &dst.join(e.file_name()), depth + 1)?;
    }
    // Mode and owner last, so a read-only directory can still be filled.
    fs::set_permissions(dst, fs::Permissions::from_mode(md.mode() & 0o7777))
        .with_context(|| format!("chmod {}", dst.display()))?;
    copy_owner_xattrs(src, dst, &md)
}

/// Copy the entries of `src` into the existing `dst`, skipping names that exist there already
/// (used to seed the stateroot's `/var`).
pub fn merge_missing(src: &Path, dst: &Path) -> Result<()> {
    for e in fs::read_dir(src).with_context(|| format!("listing {}", src.display()))? {
        let e = e.with_context(|| format!("listing {}", src.display()))?;
        let d = dst.join(e.file_name());
        match fs::symlink_metadata(&d) {
            Ok(md) if md.is_dir() && e.path().is_dir() && !e.path().is_symlink() => {
                merge_missing(&e.path(), &d)?
            }
            Ok(_) => {}
            Err(_) => copy_tree(&e.path(), &d)?,
        }
    }
    Ok(())
}

/// Atomically make `link` a symlink to `target` (temp symlink + rename + fsync dir).
pub fn symlink_replace(target: &str, link: &Path) -> Result<()> {
    let dir = link.parent().context("symlink path has no parent")?;
    let name = link
        .file_name()
        .context("symlink path has no name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    symlink(target, &tmp).with_context(|| format!("creating symlink {}", tmp.display()))?;
    fs::rename(&tmp, link)
        .with_context(|| format!("renaming {} to {}", tmp.display(), link.display()))?;
    fsync_dir(dir)
}

/// Copy `src` to `dst` atomically (hard link when possible, else temp copy + fsync + rename).
/// Does nothing if `dst` exists already.
pub fn install_file(src: &Path, dst: &Path) -> Result<()> {
    if fs::symlink_metadata(dst).is_ok() {
        return Ok(());
    }
    let dir = dst.parent().context("destination has no parent")?;
    let name = dst
        .file_name()
        .context("destination has no name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    if fs::hard_link(src, &tmp).is_err() {
        let mut r = File::open(src).with_context(|| format!("opening {}", src.display()))?;
        let mut w = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        io::copy(&mut r, &mut w)
            .with_context(|| format!("copying {} to {}", src.display(), tmp.display()))?;
        w.set_permissions(fs::Permissions::from_mode(0o644))
            .with_context(|| format!("chmod {}", tmp.display()))?;
        w.sync_all()
            .with_context(|| format!("fsync {}", tmp.display()))?;
    }
    fs::rename(&tmp, dst)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dst.display()))?;
    fsync_dir(dir)
}

/// `mkdir -p` followed by an fsync of each created directory's parent.
pub fn create_dir_all(path: &Path, mode: u32) -> Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(p) = path.parent() {
        create_dir_all(p, mode)?;
    }
    match fs::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))?;
    if let Some(p) = path.parent() {
        fsync_dir(p)?;
    }
    Ok(())
}

/// Flush the filesystem holding `path`.
pub fn syncfs(path: &Path) -> Result<()> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    sys::syncfs(&f).with_context(|| format!("syncfs {}", path.display()))
}
