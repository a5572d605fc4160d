//! Crash-safe file writes and small helpers.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{IoContext, Result};

/// Follow symlinks of the final component so an atomic replace writes the real file
/// (e.g. a `grubenv` symlink into `/boot/grub2`). A missing file is returned unchanged.
pub(crate) fn resolve_target(path: &Path) -> PathBuf {
    match fs::canonicalize(path) {
        Ok(p) => p,
        Err(_) => path.to_path_buf(),
    }
}

/// Write `data` to `path` atomically: temp file in the same directory, fsync, rename, fsync dir.
pub(crate) fn atomic_write(path: &Path, data: &[u8]) -> Result<()> {
    let path = resolve_target(path);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let res = (|| -> Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .ctx(|| format!("creating {}", tmp.display()))?;
        f.write_all(data)
            .ctx(|| format!("writing {}", tmp.display()))?;
        f.sync_all().ctx(|| format!("fsync {}", tmp.display()))?;
        // Keep the mode of the file being replaced.
        if let Ok(meta) = fs::metadata(&path) {
            let _ = fs::set_permissions(&tmp, meta.permissions());
        }
        fs::rename(&tmp, &path)
            .ctx(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        sync_dir(&dir)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// fsync a directory (after a rename in it). Filesystems that cannot (vfat on some kernels)
/// report EINVAL, which is ignored.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    let f = File::open(dir).ctx(|| format!("opening directory {}", dir.display()))?;
    match f.sync_all() {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        Err(e) => Err(crate::Error::io(
            format!("fsync directory {}", dir.display()),
            e,
        )),
    }
}

/// Create the parent directories of `path`.
pub(crate) fn create_parent(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            fs::create_dir_all(dir).ctx(|| format!("creating directory {}", dir.display()))?;
        }
    }
    Ok(())
}

/// Seconds since the epoch.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
