//! Thin, checked wrappers over the syscalls std does not offer: xattrs, ownership, mtime, syncfs,
//! OFD locks.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Context, Result};

use super::objects::Xattrs;

/// Largest xattr value we read (the Linux VFS limit).
const XATTR_VALUE_MAX: usize = 64 * 1024;
/// Largest xattr name list we read (the Linux VFS limit).
const XATTR_LIST_MAX: usize = 64 * 1024;

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .with_context(|| format!("path {} contains NUL", p.display()))
}

fn check(r: libc::c_int, what: impl FnOnce() -> String) -> Result<()> {
    if r < 0 {
        return Err(io::Error::last_os_error()).with_context(what);
    }
    Ok(())
}

/// All xattrs of `path` (not following symlinks), sorted, empty values dropped like ostree does.
pub fn llistxattrs(path: &Path) -> Result<Xattrs> {
    let c = cpath(path)?;
    let mut names = vec![0u8; XATTR_LIST_MAX];
    // SAFETY: buffer pointer/len describe a valid writable buffer; c is NUL-terminated.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOTSUP) {
            return Ok(Vec::new());
        }
        return Err(e).with_context(|| format!("llistxattr {}", path.display()));
    }
    names.truncate(n as usize);
    let mut out = Vec::new();
    let mut value = vec![0u8; XATTR_VALUE_MAX];
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).context("xattr name")?;
        // SAFETY: as above.
        let n = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error()).with_context(|| {
                format!(
                    "lgetxattr {} {}",
                    path.display(),
                    String::from_utf8_lossy(name)
                )
            });
        }
        out.push((name.to_vec(), value[..n as usize].to_vec()));
    }
    Ok(super::objects::canonical_xattrs(out))
}

/// Read one xattr of an open file, None if it is absent.
pub fn fgetxattr(f: &File, name: &str) -> Result<Option<Vec<u8>>> {
    let cname = CString::new(name).context("xattr name")?;
    let mut value = vec![0u8; XATTR_VALUE_MAX];
    // SAFETY: valid fd, NUL-terminated name, valid buffer.
    let n = unsafe {
        libc::fgetxattr(
            f.as_raw_fd(),
            cname.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENODATA) {
            return Ok(None);
        }
        return Err(e).with_context(|| format!("fgetxattr({name})"));
    }
    value.truncate(n as usize);
    Ok(Some(value))
}

pub fn fsetxattr(f: &File, name: &[u8], value: &[u8]) -> Result<()> {
    let cname = CString::new(name).context("xattr name")?;
    // SAFETY: valid fd, NUL-terminated name, valid buffer.
    let r = unsafe {
        libc::fsetxattr(
            f.as_raw_fd(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    check(r, || {
        format!("fsetxattr({})", String::from_utf8_lossy(name))
    })
}

pub fn lsetxattr(path: &Path, name: &[u8], value: &[u8]) -> Result<()> {
    let c = cpath(path)?;
    let cname = CString::new(name).context("xattr name")?;
    // SAFETY: NUL-terminated strings, valid buffer.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    check(r, || {
        format!(
            "lsetxattr {} {}",
            path.display(),
            String::from_utf8_lossy(name)
        )
    })
}

pub fn lchown(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .with_context(|| format!("lchown {} to {uid}:{gid}", path.display()))
}

pub fn fchown(f: &File, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::fchown(f, Some(uid), Some(gid))
        .with_context(|| format!("fchown to {uid}:{gid}"))
}

/// Set atime and mtime of `path` (not following symlinks) to the epoch.
pub fn lset_mtime_zero(path: &Path) -> Result<()> {
    let c = cpath(path)?;
    let ts = [libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    }; 2];
    // SAFETY: NUL-terminated path, two timespecs.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    check(r, || format!("utimensat {}", path.display()))
}

pub fn fset_mtime_zero(f: &File) -> Result<()> {
    let ts = [libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    }; 2];
    // SAFETY: valid fd, two timespecs.
    let r = unsafe { libc::futimens(f.as_raw_fd(), ts.as_ptr()) };
    check(r, || "futimens".to_string())
}

/// Flush the whole filesystem holding `f`.
pub fn syncfs(f: &File) -> Result<()> {
    // SAFETY: valid fd.
    let r = unsafe { libc::syncfs(f.as_raw_fd()) };
    check(r, || "syncfs".to_string())
}

/// Take an OFD lock (shared or exclusive) on the whole file; blocks until granted.
/// Released when the file is closed.
pub fn ofd_lock(f: &File, exclusive: bool) -> Result<()> {
    // SAFETY: zeroed flock is a valid value; fields set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = if exclusive {
        libc::F_WRLCK
    } else {
        libc::F_RDLCK
    } as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    loop {
        // SAFETY: valid fd and flock pointer.
        let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLKW, &fl) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e).context("locking the repository (fcntl F_OFD_SETLKW)");
        }
    }
}

pub fn euid() -> u32 {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() }
}
