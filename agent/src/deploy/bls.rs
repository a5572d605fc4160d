//! Boot Loader Specification entries as ostree writes and reads them
//! (`ostree-bootconfig-parser.c`): one `key value` per line.

use std::cmp::Ordering;
use std::path::Path;

use anyhow::{Context, Result};

/// Largest BLS entry / os-release file we read.
const MAX_SMALL_FILE: u64 = 1024 * 1024;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// Keys in file order.
    pub fields: Vec<(String, String)>,
}

impl Entry {
    pub fn parse(text: &str) -> Entry {
        let mut fields = Vec::new();
        for line in text.lines() {
            if !line.starts_with(|c: char| c.is_ascii_alphabetic()) {
                continue;
            }
            let (k, v) = match line.find([' ', '\t']) {
                Some(i) => (&line[..i], line[i + 1..].trim()),
                None => (line, ""),
            };
            fields.push((k.to_owned(), v.to_owned()));
        }
        Entry { fields }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn push(&mut self, key: &str, value: impl Into<String>) {
        self.fields.push((key.to_owned(), value.into()));
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.fields {
            s.push_str(k);
            s.push(' ');
            s.push_str(v);
            s.push('\n');
        }
        s
    }
}

/// glibc's `strverscmp` for the BLS `version` sort key (digits compare numerically).
pub fn strverscmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].is_ascii_digit() && b[j].is_ascii_digit() {
            let si = i;
            while i < a.len() && a[i].is_ascii_digit() {
                i += 1;
            }
            let sj = j;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            let na = std::str::from_utf8(&a[si..i])
                .unwrap_or("0")
                .trim_start_matches('0');
            let nb = std::str::from_utf8(&b[sj..j])
                .unwrap_or("0")
                .trim_start_matches('0');
            let o = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
            if o != Ordering::Equal {
                return o;
            }
        } else {
            if a[i] != b[j] {
                return a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
    }
    (a.len() - i).cmp(&(b.len() - j))
}

/// Read a small text file (BLS entry, os-release), bounded.
pub fn read_small(path: &Path) -> Result<String> {
    use std::io::Read;
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut s = String::new();
    f.take(MAX_SMALL_FILE)
        .read_to_string(&mut s)
        .with_context(|| format!("reading {} (expected UTF-8 text)", path.display()))?;
    Ok(s)
}

/// `PRETTY_NAME` (else `ID`) of a deployment's os-release.
pub fn os_pretty_name(deployment: &Path) -> String {
    for rel in ["usr/lib/os-release", "etc/os-release", "usr/etc/os-release"] {
        let Ok(text) = read_small(&deployment.join(rel)) else {
            continue;
        };
        let mut id = None;
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = unquote(v.trim());
            match k.trim() {
                "PRETTY_NAME" if !v.is_empty() => return v,
                "ID" if !v.is_empty() => id = Some(v),
                _ => {}
            }
        }
        if let Some(id) = id {
            return id;
        }
    }
    "(Untitled)".to_owned()
}

fn unquote(v: &str) -> String {
    let v = v
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .or_else(|| v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
        .unwrap_or(v);
    v.replace("\\\"", "\"").replace("\\\\", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_write() {
        let e = Entry::parse("title Foo 1 (ostree:0)\nversion 2\n# c\noptions a=b ostree=/x\n");
        assert_eq!(e.get("title"), Some("Foo 1 (ostree:0)"));
        assert_eq!(e.get("version"), Some("2"));
        assert_eq!(e.get("options"), Some("a=b ostree=/x"));
        assert_eq!(
            e.to_text(),
            "title Foo 1 (ostree:0)\nversion 2\noptions a=b ostree=/x\n"
        );
    }

    #[test]
    fn versions() {
        assert_eq!(strverscmp("10", "9"), Ordering::Greater);
        assert_eq!(strverscmp("2", "2"), Ordering::Equal);
        assert_eq!(strverscmp("1", "2"), Ordering::Less);
        assert_eq!(strverscmp("1.10", "1.9"), Ordering::Greater);
    }
}
