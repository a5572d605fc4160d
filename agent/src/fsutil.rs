//! Filesystem writes that matter, in one place: the atomic-write helper (temp file in the same
//! directory, fsync, rename, fsync directory) and thin wrappers over the calls that change the
//! disk (create, write, rename, link, mkdir, fsync, syncfs).
//!
//! Every wrapper first passes a *crash point*. In normal builds a crash point does nothing and
//! compiles away. With the cargo feature `crash-points` (tests only, never in a device build) the
//! environment decides, read once per process:
//!
//! * `OTTER_CRASH_AT=N` — the N-th crash point (1-based) kills the process with SIGKILL, as a
//!   power cut or an OOM kill would (no destructors, no buffered writes flushed by us);
//! * `OTTER_CRASH_AT=N:eio` / `N:enospc` — the N-th crash point fails with EIO / ENOSPC instead,
//!   so error paths are exercised the same way;
//! * `OTTER_CRASH_LOG=FILE` — each crash point appends `N what` to FILE (how the crash harness
//!   learns how many points an operation has and which they are).
//!
//! `agent/tests/crash.rs` runs operations in child processes and kills them at evenly spread
//! points, then checks the repository and the sysroot.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use anyhow::{Context, Result};

/// A point where the process may be killed or fail in crash tests (see the module doc).
/// `what` names the operation about to happen (for the crash log). The counter lives in
/// `otter_boot::crashpoint`, so the agent and the boot counter it links count as one process.
#[inline(always)]
pub fn crash_point(what: &'static str) -> io::Result<()> {
    otter_boot::crashpoint::crash_point(what)
}

/// How many crash points this process has passed (always 0 without the `crash-points` feature).
pub fn crash_points_passed() -> u64 {
    otter_boot::crashpoint::passed()
}

/// Create (truncate) a file for writing.
pub fn create(path: &Path) -> Result<File> {
    crash_point("create")
        .and_then(|()| File::create(path))
        .with_context(|| format!("creating {}", path.display()))
}

/// Write all of `data` to `f` (`path` names it in errors).
pub fn write_all(f: &mut File, data: &[u8], path: &Path) -> Result<()> {
    crash_point("write")
        .and_then(|()| f.write_all(data))
        .with_context(|| format!("writing {}", path.display()))
}

/// `rename(2)`.
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    crash_point("rename")
        .and_then(|()| fs::rename(from, to))
        .with_context(|| format!("renaming {} to {}", from.display(), to.display()))
}

/// `link(2)`; the raw io::Error is kept so callers can fall back on EXDEV/EMLINK/EPERM.
pub fn hard_link(from: &Path, to: &Path) -> io::Result<()> {
    crash_point("link")?;
    fs::hard_link(from, to)
}

/// `symlink(2)`.
pub fn symlink(target: &str, path: &Path) -> Result<()> {
    crash_point("symlink")
        .and_then(|()| std::os::unix::fs::symlink(target, path))
        .with_context(|| format!("creating symlink {}", path.display()))
}

/// `mkdir(2)`; the raw io::Error is kept so callers can accept EEXIST.
pub fn create_dir(path: &Path) -> io::Result<()> {
    crash_point("mkdir")?;
    fs::create_dir(path)
}

/// `mkdir -p`.
pub fn create_dir_all(path: &Path) -> Result<()> {
    crash_point("mkdir -p")
        .and_then(|()| fs::create_dir_all(path))
        .with_context(|| format!("creating {}", path.display()))
}

/// `unlink(2)`.
pub fn remove_file(path: &Path) -> Result<()> {
    crash_point("unlink")
        .and_then(|()| fs::remove_file(path))
        .with_context(|| format!("deleting {}", path.display()))
}

/// fsync a file (`path` names it in errors).
pub fn fsync(f: &File, path: &Path) -> Result<()> {
    crash_point("fsync")
        .and_then(|()| f.sync_all())
        .with_context(|| format!("fsync {}", path.display()))
}

/// fdatasync a file: its data and what is needed to read it back (size), not its timestamps.
pub fn fsync_data(f: &File, path: &Path) -> Result<()> {
    crash_point("fdatasync")
        .and_then(|()| f.sync_data())
        .with_context(|| format!("fdatasync {}", path.display()))
}

/// fsync a directory (makes renames and creations in it durable).
pub fn fsync_dir(dir: &Path) -> Result<()> {
    crash_point("fsync dir")
        .and_then(|()| File::open(dir))
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync directory {}", dir.display()))
}

/// Flush the whole filesystem holding `f`.
pub fn syncfs(f: &File) -> Result<()> {
    crash_point("syncfs")?;
    // SAFETY: valid fd.
    let r = unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(f)) };
    if r < 0 {
        return Err(io::Error::last_os_error()).context("syncfs");
    }
    Ok(())
}

/// Write `data` to `path` atomically: a temp file in the same directory, fsync, rename over
/// `path`, fsync the directory. Readers see the old or the new content, never a mix; after a
/// crash at most a stale `.NAME.tmpPID` file is left, which the next write of `path` replaces
/// (and which ref listings skip: dot-files are never refs).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let res = (|| -> Result<()> {
        let mut f = create(&tmp)?;
        write_all(&mut f, data, &tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", tmp.display()))?;
        fsync(&f, &tmp)?;
        rename(&tmp, path)?;
        fsync_dir(dir)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "temp file left behind");
    }

    #[test]
    fn atomic_write_into_missing_dir_fails_cleanly() {
        let d = tempfile::tempdir().unwrap();
        let err = write_atomic(&d.path().join("no/such/f"), b"x", 0o644).unwrap_err();
        assert!(format!("{err:#}").contains("creating"), "{err:#}");
    }
}
