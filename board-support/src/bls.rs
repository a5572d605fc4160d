//! BLS entries (as ostree writes them) and ostree's U-Boot `uEnv.txt` made from them.

use std::cmp::Ordering;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// One Boot Loader Spec type #1 entry: `key value` lines in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlsEntry {
    pub path: PathBuf,
    pub lines: Vec<(String, String)>,
}

impl BlsEntry {
    pub fn parse(path: &Path, text: &str) -> BlsEntry {
        // ostree-bootconfig-parser: a line must start with a letter; split at the first space/tab.
        let lines = text
            .lines()
            .filter(|l| l.starts_with(|c: char| c.is_ascii_alphabetic()))
            .map(|l| match l.split_once([' ', '\t']) {
                Some((k, v)) => (k.to_string(), v.trim_start().to_string()),
                None => (l.to_string(), String::new()),
            })
            .collect();
        BlsEntry {
            path: path.to_path_buf(),
            lines,
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.lines
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn set(&mut self, key: &str, value: String) {
        match self.lines.iter_mut().find(|(k, _)| k == key) {
            Some(l) => l.1 = value,
            None => self.lines.push((key.to_string(), value)),
        }
    }

    pub fn to_text(&self) -> String {
        self.lines
            .iter()
            .map(|(k, v)| format!("{k} {v}\n"))
            .collect()
    }
}

/// glibc `strverscmp` for the digit/non-digit runs ostree's `version` keys use.
fn vercmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, _) => return Ordering::Less,
            (_, None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let na = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let nb = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (da, db) = (&a[..na], &b[..nb]);
                let strip = |d: &[u8]| -> usize { d.iter().take_while(|c| **c == b'0').count() };
                let (ta, tb) = (&da[strip(da)..], &db[strip(db)..]);
                let o = ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb));
                if o != Ordering::Equal {
                    return o;
                }
                a = &a[na..];
                b = &b[nb..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

/// Read the `ostree-*.conf` entries of a loader directory (`SYSROOT/boot/loader`), ordered like
/// ostree does: `version` descending; entries without a version last.
pub fn read_entries(loader_dir: &Path) -> Result<Vec<BlsEntry>> {
    let dir = loader_dir.join("entries");
    let rd = fs::read_dir(&dir).with_context(|| {
        format!(
            "reading BLS entries in {} (is the sysroot deployed?)",
            dir.display()
        )
    })?;
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.with_context(|| format!("listing {}", dir.display()))?;
        let name = ent.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with("ostree-") && name.ends_with(".conf")) {
            continue;
        }
        let path = ent.path();
        let text = fs::read_to_string(&path)
            .with_context(|| format!("reading BLS entry {}", path.display()))?;
        out.push(BlsEntry::parse(&path, &text));
    }
    out.sort_by(|a, b| match (a.get("version"), b.get("version")) {
        (Some(x), Some(y)) => vercmp(y, x),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => b.path.cmp(&a.path),
    });
    Ok(out)
}

/// ostree's U-Boot backend text for the ordered entries: the default deployment as
/// `kernel_image`, `bootdir`, `ramdisk_image`, `fdt_file`, `bootargs`; the others with the suffix
/// `2`, `3`, … (the rollback is `kernel_image2`, `bootargs2`, …).
pub fn render_uenv(entries: &[BlsEntry]) -> Result<String> {
    if entries.is_empty() {
        bail!("no BLS entries: nothing to boot, refusing to write an empty uEnv.txt");
    }
    let mut s = String::new();
    for (i, e) in entries.iter().enumerate() {
        let sfx = if i == 0 {
            String::new()
        } else {
            (i + 1).to_string()
        };
        let Some(linux) = e.get("linux") else {
            bail!("BLS entry {} has no 'linux' line", e.path.display());
        };
        s.push_str(&format!("kernel_image{sfx}={linux}\n"));
        if let Some((dir, _)) = linux.rsplit_once('/') {
            s.push_str(&format!("bootdir{sfx}={dir}/\n"));
        }
        if let Some(v) = e.get("initrd") {
            s.push_str(&format!("ramdisk_image{sfx}={v}\n"));
        }
        if let Some(v) = e.get("devicetree") {
            s.push_str(&format!("fdt_file{sfx}={v}\n"));
        }
        let Some(opts) = e.get("options") else {
            bail!("BLS entry {} has no 'options' line", e.path.display());
        };
        if !opts.split_whitespace().any(|a| a.starts_with("ostree=")) {
            bail!(
                "BLS entry {} has no ostree= kernel argument",
                e.path.display()
            );
        }
        s.push_str(&format!("bootargs{sfx}={opts}\n"));
    }
    Ok(s)
}

/// Write `LOADER/uEnv.txt` (atomically) from the entries of `loader_dir`
/// (e.g. `SYSROOT/boot/loader.1` before the swap, or `SYSROOT/boot/loader`).
pub fn write_uenv(loader_dir: &Path) -> Result<PathBuf> {
    let entries = read_entries(loader_dir)?;
    let text = render_uenv(&entries)?;
    let path = loader_dir.join("uEnv.txt");
    write_atomic(&path, text.as_bytes(), 0o644)?;
    Ok(path)
}

/// What a deploy calls after writing the entries of a new loader directory (`boot/loader.N`,
/// before the `boot/loader` swap): if the sysroot boots with U-Boot's uEnv.txt (ostree's own
/// auto-detection: `boot/loader/uEnv.txt` exists), write the new directory's uEnv.txt too.
/// Returns the file written, or None for sysroots that do not use uEnv.txt.
pub fn sync_uenv(sysroot: &Path, new_loader_dir: &Path) -> Result<Option<PathBuf>> {
    if !sysroot.join("boot/loader/uEnv.txt").exists() {
        return Ok(None);
    }
    write_uenv(new_loader_dir).map(Some)
}

/// Add the arguments of `args` that the options line lacks (matched by the part before `=`).
/// Returns the new options line, or None if nothing was missing.
pub fn merge_kargs(options: &str, args: &[String]) -> Option<String> {
    let key = |a: &str| {
        a.split_once('=')
            .map(|(k, _)| k.to_string())
            .unwrap_or_else(|| a.to_string())
    };
    let have: Vec<String> = options.split_whitespace().map(key).collect();
    let missing: Vec<&String> = args.iter().filter(|a| !have.contains(&key(a))).collect();
    if missing.is_empty() {
        return None;
    }
    let mut out = options.trim().to_string();
    for a in missing {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(a);
    }
    Some(out)
}

/// Write `path` atomically: temp file in the same directory, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let res = (|| -> Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(data)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing directory {}", dir.display()))?;
        Ok(())
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
    fn versions_sort_like_strverscmp() {
        assert_eq!(vercmp("10", "9"), Ordering::Greater);
        assert_eq!(vercmp("2", "2"), Ordering::Equal);
        assert_eq!(vercmp("1.10", "1.9"), Ordering::Greater);
    }

    #[test]
    fn uenv_lists_default_then_rollback() {
        let a = BlsEntry::parse(
            Path::new("a"),
            "title A (ostree:0)\nversion 2\noptions root=/dev/vda2 ostree=/ostree/boot.1/os/aa/0\nlinux /ostree/os-aa/vmlinuz-6.1\ninitrd /ostree/os-aa/initramfs-6.1.img\n",
        );
        let b = BlsEntry::parse(
            Path::new("b"),
            "title B\nversion 1\noptions ostree=/ostree/boot.1/os/bb/0\nlinux /ostree/os-bb/vmlinuz-6.1\n",
        );
        let t = render_uenv(&[a, b]).unwrap();
        assert_eq!(
            t,
            "kernel_image=/ostree/os-aa/vmlinuz-6.1\nbootdir=/ostree/os-aa/\nramdisk_image=/ostree/os-aa/initramfs-6.1.img\nbootargs=root=/dev/vda2 ostree=/ostree/boot.1/os/aa/0\nkernel_image2=/ostree/os-bb/vmlinuz-6.1\nbootdir2=/ostree/os-bb/\nbootargs2=ostree=/ostree/boot.1/os/bb/0\n"
        );
        let c = BlsEntry::parse(Path::new("c"), "linux /x\noptions quiet\n");
        assert!(render_uenv(&[c])
            .unwrap_err()
            .to_string()
            .contains("ostree="));
        assert!(render_uenv(&[]).is_err());
    }

    #[test]
    fn kargs_are_added_once() {
        let args: Vec<String> = ["console=ttyAMA0", "rw", "root=/dev/vda2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            merge_kargs("ostree=/x root=/dev/sda1", &args).unwrap(),
            "ostree=/x root=/dev/sda1 console=ttyAMA0 rw"
        );
        assert_eq!(
            merge_kargs("ostree=/x console=ttyS0 rw root=/dev/x", &args),
            None
        );
    }
}
