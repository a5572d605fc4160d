//! The `/etc` three-way merge (ostree's `merge_configuration_from`).
//!
//! The old deployment's `usr/etc` (the defaults it shipped) is compared with its `etc` (what the
//! machine runs). Files compare equal when type, mode, owner and content (or symlink target) are
//! equal; xattrs are ignored, as ostree does. Onto the new deployment's `etc` (a fresh copy of
//! its own `usr/etc`):
//! * removed locally (in `usr/etc`, not in `etc`) → removed in the new `etc`;
//! * modified or added locally → copied from the old `etc` over the new one;
//! * everything else keeps the new default.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::fsops;

const MAX_DEPTH: usize = 256;

/// What the merge carried over.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MergeStats {
    pub modified: usize,
    pub removed: usize,
    pub added: usize,
}

pub fn merge(orig: &Path, modified: &Path, new: &Path) -> Result<MergeStats> {
    let mut stats = MergeStats::default();
    if !modified.is_dir() {
        return Ok(stats);
    }
    merge_dir(orig, modified, new, modified, 0, &mut stats)?;
    log::info!(
        "copying /etc changes: {} modified, {} removed, {} added",
        stats.modified,
        stats.removed,
        stats.added
    );
    Ok(stats)
}

fn entries(dir: &Path) -> Result<BTreeMap<OsString, fs::Metadata>> {
    let mut out = BTreeMap::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for e in rd {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        let md = fs::symlink_metadata(e.path())
            .with_context(|| format!("stat {}", e.path().display()))?;
        out.insert(e.file_name(), md);
    }
    Ok(out)
}

fn merge_dir(
    orig: &Path,
    modified: &Path,
    new: &Path,
    modified_root: &Path,
    depth: usize,
    stats: &mut MergeStats,
) -> Result<()> {
    if depth > MAX_DEPTH {
        bail!("{} is nested deeper than {MAX_DEPTH}", modified.display());
    }
    let o = entries(orig)?;
    let m = entries(modified)?;
    for (name, omd) in &o {
        if !m.contains_key(name) {
            let _ = omd;
            fsops::remove_all(&new.join(name))?;
            stats.removed += 1;
        }
    }
    for (name, mmd) in &m {
        let (op, mp, np) = (orig.join(name), modified.join(name), new.join(name));
        match o.get(name) {
            None => {
                replace_with(&mp, &np, modified_root)?;
                stats.added += 1;
            }
            Some(omd) if omd.is_dir() && mmd.is_dir() => {
                if !same_meta(omd, mmd) {
                    if fs::symlink_metadata(&np).is_ok_and(|n| n.is_dir()) {
                        apply_dir_meta(mmd, &np)?;
                    }
                    stats.modified += 1;
                }
                if fs::symlink_metadata(&np).is_ok_and(|n| n.is_dir()) {
                    merge_dir(&op, &mp, &np, modified_root, depth + 1, stats)?;
                } else {
                    // The new default dropped (or replaced) the directory; keep what the
                    // machine had changed in it.
                    merge_into_missing(&op, &mp, &np, modified_root, depth + 1, stats)?;
                }
            }
            Some(omd) => {
                if !same_entry(&op, omd, &mp, mmd)? {
                    replace_with(&mp, &np, modified_root)?;
                    stats.modified += 1;
                }
            }
        }
    }
    Ok(())
}

/// Changes inside a directory the new default no longer has as a directory: only the
/// modified/added entries are carried over.
fn merge_into_missing(
    orig: &Path,
    modified: &Path,
    new: &Path,
    modified_root: &Path,
    depth: usize,
    stats: &mut MergeStats,
) -> Result<()> {
    if depth > MAX_DEPTH {
        bail!("{} is nested deeper than {MAX_DEPTH}", modified.display());
    }
    let o = entries(orig)?;
    for (name, mmd) in entries(modified)? {
        let (op, mp, np) = (orig.join(&name), modified.join(&name), new.join(&name));
        match o.get(&name) {
            None => {
                replace_with(&mp, &np, modified_root)?;
                stats.added += 1;
            }
            Some(omd) if omd.is_dir() && mmd.is_dir() => {
                merge_into_missing(&op, &mp, &np, modified_root, depth + 1, stats)?
            }
            Some(omd) => {
                if !same_entry(&op, omd, &mp, &mmd)? {
                    replace_with(&mp, &np, modified_root)?;
                    stats.modified += 1;
                }
            }
        }
    }
    Ok(())
}

/// Replace `dst` with a copy of `src`, creating missing parents with the attributes of the
/// corresponding directories under `src_root`.
fn replace_with(src: &Path, dst: &Path, src_root: &Path) -> Result<()> {
    if let Some(parent) = dst.parent() {
        ensure_parent(parent, src.parent(), src_root)?;
    }
    fsops::remove_all(dst)?;
    fsops::copy_tree(src, dst)
}

fn ensure_parent(dst_dir: &Path, src_dir: Option<&Path>, src_root: &Path) -> Result<()> {
    match fs::symlink_metadata(dst_dir) {
        Ok(md) if md.is_dir() => return Ok(()),
        Ok(_) => fsops::remove_all(dst_dir)?,
        Err(_) => {}
    }
    let Some(src_dir) = src_dir.filter(|s| s.starts_with(src_root) && *s != src_root) else {
        bail!("cannot create {}: no source directory", dst_dir.display());
    };
    if let Some(p) = dst_dir.parent() {
        ensure_parent(p, src_dir.parent(), src_root)?;
    }
    fsops::copy_entry(src_dir, dst_dir)
}

fn apply_dir_meta(md: &fs::Metadata, dst: &Path) -> Result<()> {
    fs::set_permissions(dst, fs::Permissions::from_mode(md.mode() & 0o7777))
        .with_context(|| format!("chmod {}", dst.display()))?;
    if crate::ostree::sys::euid() == 0 {
        crate::ostree::sys::lchown(dst, md.uid(), md.gid())?;
    }
    Ok(())
}

fn same_meta(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    a.mode() == b.mode() && a.uid() == b.uid() && a.gid() == b.gid()
}

fn same_entry(ap: &Path, a: &fs::Metadata, bp: &Path, b: &fs::Metadata) -> Result<bool> {
    if !same_meta(a, b) {
        return Ok(false);
    }
    if a.file_type().is_symlink() {
        let ta = fs::read_link(ap).with_context(|| format!("readlink {}", ap.display()))?;
        let tb = fs::read_link(bp).with_context(|| format!("readlink {}", bp.display()))?;
        return Ok(ta == tb);
    }
    if a.is_file() {
        if a.len() != b.len() {
            return Ok(false);
        }
        if a.dev() == b.dev() && a.ino() == b.ino() {
            return Ok(true);
        }
        return same_content(ap, bp);
    }
    // Devices, fifos: compare by metadata only.
    Ok(a.rdev() == b.rdev())
}

fn same_content(a: &Path, b: &Path) -> Result<bool> {
    let mut fa = File::open(a).with_context(|| format!("opening {}", a.display()))?;
    let mut fb = File::open(b).with_context(|| format!("opening {}", b.display()))?;
    let mut ba = vec![0u8; 64 * 1024];
    let mut bb = vec![0u8; 64 * 1024];
    loop {
        let na = read_full(&mut fa, &mut ba).with_context(|| format!("reading {}", a.display()))?;
        let nb = read_full(&mut fb, &mut bb).with_context(|| format!("reading {}", b.display()))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn three_way() {
        let t = tempfile::tempdir().unwrap();
        let (o, m, n) = (t.path().join("o"), t.path().join("m"), t.path().join("n"));
        for d in [&o, &m, &n] {
            fs::create_dir_all(d.join("sub")).unwrap();
        }
        // o = old defaults, m = old running /etc, n = new defaults
        fs::write(o.join("edited"), "v1").unwrap();
        fs::write(m.join("edited"), "local").unwrap();
        fs::write(n.join("edited"), "v2").unwrap();
        fs::write(o.join("untouched"), "v1").unwrap();
        fs::write(m.join("untouched"), "v1").unwrap();
        fs::write(n.join("untouched"), "v2").unwrap();
        fs::write(o.join("deleted"), "v1").unwrap();
        fs::write(n.join("deleted"), "v2").unwrap();
        fs::write(m.join("sub/added"), "mine").unwrap();
        symlink("edited", m.join("link")).unwrap();
        fs::write(n.join("brand-new"), "v2").unwrap();
        let s = merge(&o, &m, &n).unwrap();
        assert_eq!(fs::read_to_string(n.join("edited")).unwrap(), "local");
        assert_eq!(fs::read_to_string(n.join("untouched")).unwrap(), "v2");
        assert!(!n.join("deleted").exists());
        assert_eq!(fs::read_to_string(n.join("sub/added")).unwrap(), "mine");
        assert_eq!(
            fs::read_link(n.join("link")).unwrap(),
            Path::new("edited").to_path_buf()
        );
        assert_eq!(fs::read_to_string(n.join("brand-new")).unwrap(), "v2");
        assert_eq!(
            s,
            MergeStats {
                modified: 1,
                removed: 1,
                added: 2
            }
        );
    }

    #[test]
    fn modified_file_in_dropped_dir() {
        let t = tempfile::tempdir().unwrap();
        let (o, m, n) = (t.path().join("o"), t.path().join("m"), t.path().join("n"));
        fs::create_dir_all(o.join("d")).unwrap();
        fs::create_dir_all(m.join("d")).unwrap();
        fs::create_dir_all(&n).unwrap();
        fs::write(o.join("d/a"), "1").unwrap();
        fs::write(m.join("d/a"), "2").unwrap();
        fs::write(o.join("d/b"), "1").unwrap();
        fs::write(m.join("d/b"), "1").unwrap();
        merge(&o, &m, &n).unwrap();
        assert_eq!(fs::read_to_string(n.join("d/a")).unwrap(), "2");
        assert!(!n.join("d/b").exists());
    }
}
