//! systemd-boot boot counting in Boot Loader Spec entry file names.
//!
//! An entry `NAME+LEFT[-DONE].conf` is being counted: LEFT boots left, DONE boots tried.
//! systemd-boot renames the entry it boots to `+max(LEFT-1,0)-(DONE+1)`; an entry with LEFT=0 is
//! "bad" and sorts after all others, so the next entry boots (the fallback). Like
//! `systemd-bless-boot`: good = drop the counter, bad = `+0-DONE` (`+0` when DONE=0). Renames
//! are atomic and never replace an existing file (RENAME_NOREPLACE).

use std::cmp::Ordering;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::{util, Backend, BootState, Error, IoContext, Result};

/// systemd-boot's loader vendor GUID; `LoaderBootCountPath` names the entry it counted.
pub const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
/// Largest entry file we read.
const MAX_ENTRY_SIZE: u64 = 64 << 10;

/// An entry file name split around its counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryName {
    /// Name without counter and suffix (the entry id).
    pub id: String,
    /// `.conf` or `.efi`.
    pub suffix: String,
    /// (LEFT, DONE) if counted.
    pub counter: Option<(u32, u32)>,
}

impl EntryName {
    /// Split a file name; `None` if it is not a `.conf`/`.efi` entry.
    pub fn parse(file: &str) -> Option<EntryName> {
        let suffix = [".conf", ".efi"].into_iter().find(|s| file.ends_with(s))?;
        let stem = &file[..file.len() - suffix.len()];
        let plain = EntryName {
            id: stem.to_string(),
            suffix: suffix.to_string(),
            counter: None,
        };
        let Some(plus) = stem.rfind('+') else {
            return Some(plain);
        };
        let tail = &stem[plus + 1..];
        let (left, done) = match tail.split_once('-') {
            Some((l, d)) => (l, Some(d)),
            None => (tail, None),
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(left) || !done.is_none_or(digits) {
            return Some(plain);
        }
        let left: u32 = left.parse().ok()?;
        let done: u32 = match done {
            Some(d) => d.parse().ok()?,
            None => 0,
        };
        Some(EntryName {
            id: stem[..plus].to_string(),
            suffix: suffix.to_string(),
            counter: Some((left, done)),
        })
    }

    pub fn file_name(&self) -> String {
        match self.counter {
            None => format!("{}{}", self.id, self.suffix),
            Some((l, 0)) => format!("{}+{l}{}", self.id, self.suffix),
            Some((l, d)) => format!("{}+{l}-{d}{}", self.id, self.suffix),
        }
    }

    pub fn is_bad(&self) -> bool {
        matches!(self.counter, Some((0, _)))
    }

    /// The name systemd-boot gives the entry when it boots it.
    pub fn tried(&self) -> EntryName {
        let mut n = self.clone();
        if let Some((l, d)) = n.counter {
            n.counter = Some((l.saturating_sub(1), d.saturating_add(1)));
        }
        n
    }

    /// systemd-bless-boot good: no counter.
    pub fn blessed(&self) -> EntryName {
        EntryName {
            counter: None,
            ..self.clone()
        }
    }

    /// systemd-bless-boot bad: `+0-DONE`.
    pub fn cursed(&self) -> EntryName {
        let d = self.counter.map(|(_, d)| d).unwrap_or(0);
        EntryName {
            counter: Some((0, d)),
            ..self.clone()
        }
    }
}

/// An entry with the keys that matter for sorting.
#[derive(Debug, Clone)]
pub struct Entry {
    pub file: String,
    pub name: EntryName,
    pub sort_key: Option<String>,
    pub machine_id: Option<String>,
    pub version: Option<String>,
}

/// Compare version strings like systemd's `strverscmp_improved` (UAPI version format).
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    let valid = |c: u8| c.is_ascii_alphanumeric() || b"~-^.".contains(&c);
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    loop {
        while i < a.len() && !valid(a[i]) {
            i += 1;
        }
        while j < b.len() && !valid(b[j]) {
            j += 1;
        }
        let ca = a.get(i).copied();
        let cb = b.get(j).copied();
        if ca == Some(b'~') || cb == Some(b'~') {
            let r = (ca != Some(b'~')).cmp(&(cb != Some(b'~')));
            if r != Ordering::Equal {
                return r;
            }
            i += 1;
            j += 1;
        }
        if i >= a.len() || j >= b.len() {
            return a[i.min(a.len())..].cmp(&b[j.min(b.len())..]);
        }
        for sep in [b'-', b'^', b'.'] {
            if a.get(i) == Some(&sep) || b.get(j) == Some(&sep) {
                let r = (a.get(i) != Some(&sep)).cmp(&(b.get(j) != Some(&sep)));
                if r != Ordering::Equal {
                    return r;
                }
                i += 1;
                j += 1;
            }
        }
        let (ca, cb) = (
            a.get(i).copied().unwrap_or(0),
            b.get(j).copied().unwrap_or(0),
        );
        if ca.is_ascii_digit() || cb.is_ascii_digit() {
            while i < a.len() && a[i] == b'0' {
                i += 1;
            }
            while j < b.len() && b[j] == b'0' {
                j += 1;
            }
            let na = a[i..].iter().take_while(|c| c.is_ascii_digit()).count();
            let nb = b[j..].iter().take_while(|c| c.is_ascii_digit()).count();
            let r = na.cmp(&nb).then_with(|| a[i..i + na].cmp(&b[j..j + nb]));
            if r != Ordering::Equal {
                return r;
            }
            i += na;
            j += nb;
        } else {
            let seg = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_alphabetic()).count();
            let (na, nb) = (seg(&a[i..]), seg(&b[j..]));
            let m = na.min(nb);
            let r = a[i..i + m].cmp(&b[j..j + m]).then(na.cmp(&nb));
            if r != Ordering::Equal {
                return r;
            }
            i += na;
            j += nb;
            if na == 0 && nb == 0 {
                // Neither digit nor letter nor known separator: step over it.
                i += 1;
                j += 1;
            }
        }
    }
}

/// Boot Loader Spec order: bad entries last; entries with sort-key first, by sort-key, then
/// machine-id ascending, version descending; finally id descending (version compare), then
/// counter.
pub fn entry_cmp(x: &Entry, y: &Entry) -> Ordering {
    x.name
        .is_bad()
        .cmp(&y.name.is_bad())
        .then_with(|| match (&x.sort_key, &y.sort_key) {
            (Some(a), Some(b)) => a
                .cmp(b)
                .then_with(|| x.machine_id.cmp(&y.machine_id))
                .then_with(|| match (&x.version, &y.version) {
                    (Some(a), Some(b)) => version_cmp(b, a),
                    (Some(_), None) => Ordering::Less,
                    (None, Some(_)) => Ordering::Greater,
                    (None, None) => Ordering::Equal,
                }),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        })
        .then_with(|| version_cmp(&y.name.id, &x.name.id))
        .then_with(|| y.name.counter.cmp(&x.name.counter))
}

/// Read the entries of a directory, in boot-menu order (index 0 = default).
pub fn read_entries(dir: &Path) -> Result<Vec<Entry>> {
    let rd = fs::read_dir(dir).ctx(|| format!("reading BLS entry directory {}", dir.display()))?;
    let mut out = Vec::new();
    for de in rd {
        let de = de.ctx(|| format!("reading BLS entry directory {}", dir.display()))?;
        let file = de.file_name().to_string_lossy().into_owned();
        let Some(name) = EntryName::parse(&file) else {
            continue;
        };
        if file.starts_with('.') || !de.file_type().map(|t| t.is_file()).unwrap_or(false) {
            continue;
        }
        let mut e = Entry {
            file,
            name,
            sort_key: None,
            machine_id: None,
            version: None,
        };
        if e.name.suffix == ".conf" {
            let path = de.path();
            let meta = fs::metadata(&path).ctx(|| format!("reading {}", path.display()))?;
            if meta.len() <= MAX_ENTRY_SIZE {
                let text = fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
                for line in String::from_utf8_lossy(&text).lines() {
                    let line = line.trim_start();
                    let (k, v) = line.split_once([' ', '\t']).unwrap_or((line, ""));
                    let v = Some(v.trim().to_string());
                    match k {
                        "sort-key" => e.sort_key = v,
                        "machine-id" => e.machine_id = v,
                        "version" => e.version = v,
                        _ => {}
                    }
                }
            }
        }
        out.push(e);
    }
    out.sort_by(entry_cmp);
    Ok(out)
}

/// Rename within `dir` without replacing an existing file.
pub fn rename_noreplace(dir: &Path, from: &str, to: &str) -> Result<()> {
    if from == to {
        return Ok(());
    }
    let (src, dst) = (dir.join(from), dir.join(to));
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| Error::new(format!("path {} contains NUL", p.display())))
    };
    let (cs, cd) = (c(&src)?, c(&dst)?);
    // SAFETY: two valid NUL-terminated paths; renameat2 via syscall (musl may lack the wrapper).
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            cs.as_ptr(),
            libc::AT_FDCWD,
            cd.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOSYS) | Some(libc::EINVAL) => {
                if dst.exists() {
                    return Err(Error::new(format!(
                        "cannot rename {} to {}: target exists",
                        src.display(),
                        dst.display()
                    )));
                }
                fs::rename(&src, &dst)
                    .ctx(|| format!("renaming {} to {}", src.display(), dst.display()))?;
            }
            _ => {
                return Err(Error::io(
                    format!("renaming {} to {}", src.display(), dst.display()),
                    e,
                ))
            }
        }
    }
    util::sync_dir(dir)
}

/// The file name systemd-boot exported in `LoaderBootCountPath` (if running under it).
fn loader_boot_count_name() -> Option<String> {
    let p = format!("/sys/firmware/efi/efivars/LoaderBootCountPath-{LOADER_GUID}");
    let data = fs::read(p).ok()?;
    let utf16: Vec<u16> = data
        .get(4..)?
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&c| c != 0)
        .collect();
    let s = String::from_utf16_lossy(&utf16);
    s.rsplit(['\\', '/']).next().map(str::to_string)
}

/// The BLS counter backend over an entries directory.
pub struct BlsBackend {
    dir: PathBuf,
}

impl BlsBackend {
    pub fn new(dir: PathBuf) -> BlsBackend {
        BlsBackend { dir }
    }

    /// The entry counted in this boot: the one systemd-boot named in LoaderBootCountPath, else
    /// the first (menu order) counted entry that has been tried (DONE>0) and is not bad.
    fn booted(&self, entries: &[Entry]) -> Option<Entry> {
        if let Some(name) = loader_boot_count_name() {
            if let Some(e) = entries.iter().find(|e| e.file == name) {
                return Some(e.clone());
            }
        }
        entries
            .iter()
            .find(|e| matches!(e.name.counter, Some((l, d)) if l > 0 && d > 0))
            .cloned()
    }
}

impl Backend for BlsBackend {
    fn arm(&mut self, tries: u32) -> Result<()> {
        crate::grubenv::check_tries(tries)?;
        let entries = read_entries(&self.dir)?;
        let Some(first) = entries.iter().find(|e| !e.name.is_bad()) else {
            return Err(Error::new(format!(
                "no boot entry to arm in {}",
                self.dir.display()
            )));
        };
        let mut n = first.name.clone();
        n.counter = Some((tries, 0));
        rename_noreplace(&self.dir, &first.file, &n.file_name())
    }

    fn mark_good(&mut self) -> Result<()> {
        let entries = read_entries(&self.dir)?;
        match self.booted(&entries) {
            Some(e) => rename_noreplace(&self.dir, &e.file, &e.name.blessed().file_name()),
            None => Ok(()),
        }
    }

    fn mark_bad(&mut self) -> Result<()> {
        let entries = read_entries(&self.dir)?;
        let e = self.booted(&entries).or_else(|| {
            entries
                .iter()
                .find(|e| matches!(e.name.counter, Some((l, _)) if l > 0))
                .cloned()
        });
        match e {
            Some(e) => rename_noreplace(&self.dir, &e.file, &e.name.cursed().file_name()),
            None => Err(Error::new(format!(
                "no counted boot entry to mark bad in {}",
                self.dir.display()
            ))),
        }
    }

    fn state(&self) -> Result<BootState> {
        let entries = read_entries(&self.dir)?;
        let mut st = BootState {
            backend: "bls".into(),
            ..Default::default()
        };
        for e in &entries {
            st.raw.push(("entry".into(), e.file.clone()));
            match e.name.counter {
                Some((0, _)) => st.bad_entries.push(e.file.clone()),
                Some((l, _)) if !st.armed => {
                    st.armed = true;
                    st.tries_left = Some(l);
                }
                _ => {}
            }
        }
        st.fell_back = !st.bad_entries.is_empty();
        Ok(st)
    }

    /// A bad entry stays bad (it sorts last and is never booted); the fallback is remembered in
    /// the rollback record (see [`BootState::fallback_key`]) so it is handled once.
    fn clear_fallback(&mut self) -> Result<()> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "bls"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let n = EntryName::parse("os-2+3.conf").unwrap();
        assert_eq!(n.counter, Some((3, 0)));
        assert_eq!(n.tried().file_name(), "os-2+2-1.conf");
        assert_eq!(EntryName::parse("a+b.conf").unwrap().counter, None);
        assert_eq!(
            EntryName::parse("x+0-2.efi").unwrap().cursed().file_name(),
            "x+0-2.efi"
        );
        assert_eq!(
            EntryName::parse("x+1.conf").unwrap().cursed().file_name(),
            "x+0.conf"
        );
        assert!(EntryName::parse("x.txt").is_none());
    }

    #[test]
    fn versions() {
        use Ordering::*;
        for (a, b, o) in [
            ("1", "2", Less),
            ("10", "9", Greater),
            ("1.0", "1.0.1", Less),
            ("1~rc1", "1", Less),
            ("6.5.0", "6.5.0", Equal),
            ("fc39", "fc40", Less),
            ("a", "1", Less),
            ("123-9", "123.1-1", Less),
        ] {
            assert_eq!(version_cmp(a, b), o, "{a} vs {b}");
        }
    }
}
