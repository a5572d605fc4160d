//! The small INI dialect of board profiles (and otter.conf): `[section]` headers, `key = value`
//! lines, `#` or `;` comments on their own line, no continuation lines, no quoting. Every key is
//! remembered with its line number so that the validator can say where a bad value is.

use anyhow::{bail, Result};

/// One `key = value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    pub line: usize,
}

/// One `[section]` with its entries in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub line: usize,
    pub entries: Vec<Entry>,
}

/// Parse `text`; `origin` names the file in error messages.
pub fn parse(origin: &str, text: &str) -> Result<Vec<Section>> {
    let mut sections: Vec<Section> = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        if let Some(rest) = l.strip_prefix('[') {
            let Some(name) = rest.strip_suffix(']') else {
                bail!("{origin}:{line}: section header {l:?} lacks its closing ']'");
            };
            let name = name.trim();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                bail!("{origin}:{line}: bad section name {name:?} (use letters, digits, '-', '_', '.')");
            }
            if let Some(prev) = sections.iter().find(|s| s.name == name) {
                bail!(
                    "{origin}:{line}: section [{name}] appears twice (first at line {})",
                    prev.line
                );
            }
            sections.push(Section {
                name: name.to_string(),
                line,
                entries: Vec::new(),
            });
            continue;
        }
        let Some((k, v)) = l.split_once('=') else {
            bail!(
                "{origin}:{line}: expected 'key = value', '[section]' or a '#' comment, got {l:?}"
            );
        };
        let key = k.trim();
        if key.is_empty() {
            bail!("{origin}:{line}: empty key before '='");
        }
        let Some(section) = sections.last_mut() else {
            bail!("{origin}:{line}: key {key:?} before the first [section]");
        };
        if let Some(prev) = section.entries.iter().find(|e| e.key == key) {
            bail!(
                "{origin}:{line}: key {key:?} set twice in [{}] (first at line {})",
                section.name,
                prev.line
            );
        }
        section.entries.push(Entry {
            key: key.to_string(),
            value: v.trim().to_string(),
            line,
        });
    }
    Ok(sections)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sections_keys_and_comments() {
        let s = parse("t", "# c\n[a]\nx = 1\n; c\n y=two words \n[b.c]\n").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].entries[1].value, "two words");
        assert_eq!(s[0].entries[1].line, 5);
        assert_eq!(s[1].name, "b.c");
    }

    #[test]
    fn rejects_bad_lines_with_their_line_number() {
        for (text, want) in [
            ("[a]\nnovalue\n", "t:2:"),
            ("x = 1\n", "t:1: key \"x\" before the first"),
            ("[a\n", "closing"),
            ("[a]\nx=1\nx=2\n", "t:3: key \"x\" set twice"),
            ("[a]\n[a]\n", "appears twice"),
            ("[a b]\n", "bad section name"),
            ("[a]\n = 3\n", "empty key"),
        ] {
            let err = parse("t", text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
