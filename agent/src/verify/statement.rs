//! The release statement: the small JSON document a publisher signs.
//!
//! Canonical form (the only form accepted): UTF-8, no whitespace, keys in this order, `board`
//! left out when absent:
//!
//! ```text
//! {"manifest_digest":"sha256:<64 hex>","content_checksum":"<64 hex>","version":"1.2.3",
//!  "timestamp":1700000000,"board":"rpi4","import_rules":2}
//! ```
//!
//! Parsing is strict: the bytes must be exactly the canonical serialisation of what they parse
//! to, so unknown or duplicate fields, other key orders, whitespace, escapes and wrong types are
//! all refused. The trusted comment of the minisign signature repeats the key facts
//! ([`ReleaseStatement::trusted_comment`]) so that `minisign -V` shows them.

use super::error::VerificationError;

/// Largest statement accepted (bytes). A canonical statement is about 250 bytes.
pub const MAX_STATEMENT_SIZE: usize = 4096;
/// Longest version string.
pub const MAX_VERSION_LEN: usize = 64;
/// Longest board name.
pub const MAX_BOARD_LEN: usize = 64;
/// First word of the trusted comment of every otter release signature.
pub const TRUSTED_COMMENT_PREFIX: &str = "otter-release";

/// What a publisher vouches for: "this manifest, imported with these rules, gives this tree, and
/// is release `version` made at `timestamp`".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseStatement {
    /// The image manifest digest, `sha256:<hex>`.
    pub manifest_digest: String,
    /// ostree content checksum (hex) of the tree a correct import of the image produces.
    pub content_checksum: String,
    /// Release version (dotted numbers, optionally `-prerelease` / `+build`).
    pub version: String,
    /// Release time, seconds since the epoch (UTC).
    pub timestamp: u64,
    /// Board the release is for; `None` = any board.
    pub board: Option<String>,
    /// Version of the import rules used to compute `content_checksum`.
    pub import_rules: u64,
}

fn malformed(detail: impl Into<String>) -> VerificationError {
    VerificationError::MalformedStatement {
        detail: detail.into(),
    }
}

fn is_lower_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Characters allowed in versions and board names (no spaces, quotes, `=` or control chars, so
/// they embed unambiguously in JSON and in the trusted comment).
fn is_token(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+' | b'_' | b'~'))
}

impl ReleaseStatement {
    /// Check field syntax; both the publisher (before signing) and the device call it.
    pub fn validate(&self) -> Result<(), VerificationError> {
        match self.manifest_digest.strip_prefix("sha256:") {
            Some(hex) if is_lower_hex64(hex) => {}
            _ => {
                return Err(malformed(format!(
                    "manifest_digest {:?} is not sha256:<64 lower-case hex>",
                    self.manifest_digest
                )))
            }
        }
        if !is_lower_hex64(&self.content_checksum) {
            return Err(malformed(format!(
                "content_checksum {:?} is not 64 lower-case hex digits",
                self.content_checksum
            )));
        }
        if !is_token(&self.version, MAX_VERSION_LEN) {
            return Err(malformed(format!(
                "version {:?} must be 1-{MAX_VERSION_LEN} characters of [A-Za-z0-9.+_~-]",
                self.version
            )));
        }
        if let Some(board) = &self.board {
            if !is_token(board, MAX_BOARD_LEN) {
                return Err(malformed(format!(
                    "board {board:?} must be 1-{MAX_BOARD_LEN} characters of [A-Za-z0-9.+_~-]"
                )));
            }
        }
        Ok(())
    }

    /// The canonical JSON bytes (what gets signed). Call [`Self::validate`] first; the fields
    /// then need no escaping.
    pub fn to_canonical_json(&self) -> Vec<u8> {
        let mut s = String::with_capacity(256);
        s.push_str("{\"manifest_digest\":");
        push_json_str(&mut s, &self.manifest_digest);
        s.push_str(",\"content_checksum\":");
        push_json_str(&mut s, &self.content_checksum);
        s.push_str(",\"version\":");
        push_json_str(&mut s, &self.version);
        s.push_str(",\"timestamp\":");
        s.push_str(&self.timestamp.to_string());
        if let Some(board) = &self.board {
            s.push_str(",\"board\":");
            push_json_str(&mut s, board);
        }
        s.push_str(",\"import_rules\":");
        s.push_str(&self.import_rules.to_string());
        s.push('}');
        s.into_bytes()
    }

    /// Parse a statement strictly (see the module docs).
    pub fn parse(bytes: &[u8]) -> Result<ReleaseStatement, VerificationError> {
        if bytes.len() > MAX_STATEMENT_SIZE {
            return Err(malformed(format!(
                "{} bytes, more than the {MAX_STATEMENT_SIZE}-byte limit",
                bytes.len()
            )));
        }
        let raw: RawStatement = serde_json::from_slice(bytes)
            .map_err(|e| malformed(format!("not a release statement JSON document: {e}")))?;
        let stmt = ReleaseStatement {
            manifest_digest: raw.manifest_digest,
            content_checksum: raw.content_checksum,
            version: raw.version,
            timestamp: raw.timestamp,
            board: raw.board,
            import_rules: raw.import_rules,
        };
        stmt.validate()?;
        if stmt.to_canonical_json() != bytes {
            return Err(malformed(
                "not in canonical form (fixed key order, no whitespace, no duplicate keys)",
            ));
        }
        Ok(stmt)
    }

    /// The trusted comment signed along with the statement:
    /// `otter-release version=V timestamp=T digest=sha256:… content=HEX[ board=B]`.
    pub fn trusted_comment(&self) -> String {
        let mut c = format!(
            "{TRUSTED_COMMENT_PREFIX} version={} timestamp={} digest={} content={}",
            self.version, self.timestamp, self.manifest_digest, self.content_checksum
        );
        if let Some(board) = &self.board {
            c.push_str(" board=");
            c.push_str(board);
        }
        c
    }

    /// Check that a (verified) trusted comment agrees with this statement. Every `key=value`
    /// it carries must match; `version`, `timestamp` and `digest` must be present. Other keys
    /// are allowed, so publishers may add their own notes.
    pub fn check_trusted_comment(&self, comment: &str) -> Result<(), VerificationError> {
        let mismatch = |d: String| VerificationError::CommentMismatch { detail: d };
        let mut words = comment.split(' ');
        if words.next() != Some(TRUSTED_COMMENT_PREFIX) {
            return Err(mismatch(format!(
                "trusted comment {comment:?} does not start with {TRUSTED_COMMENT_PREFIX:?}"
            )));
        }
        let timestamp = self.timestamp.to_string();
        let mut seen = [false; 3];
        for word in words.filter(|w| !w.is_empty()) {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            let expected = match key {
                "version" => {
                    seen[0] = true;
                    Some(self.version.as_str())
                }
                "timestamp" => {
                    seen[1] = true;
                    Some(timestamp.as_str())
                }
                "digest" => {
                    seen[2] = true;
                    Some(self.manifest_digest.as_str())
                }
                "content" => Some(self.content_checksum.as_str()),
                "board" => Some(self.board.as_deref().unwrap_or("")),
                _ => None,
            };
            if let Some(expected) = expected {
                if value != expected {
                    return Err(mismatch(format!(
                        "comment says {key}={value}, statement says {key}={expected}"
                    )));
                }
            }
        }
        if seen != [true; 3] {
            return Err(mismatch(format!(
                "trusted comment {comment:?} lacks one of version=, timestamp=, digest="
            )));
        }
        Ok(())
    }
}

fn push_json_str(out: &mut String, s: &str) {
    // Validated fields are plain tokens; escaping keeps the output valid JSON regardless.
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatement {
    manifest_digest: String,
    content_checksum: String,
    version: String,
    timestamp: u64,
    #[serde(default)]
    board: Option<String>,
    import_rules: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ReleaseStatement {
        ReleaseStatement {
            manifest_digest: format!("sha256:{}", "ab".repeat(32)),
            content_checksum: "cd".repeat(32),
            version: "1.2.3".into(),
            timestamp: 1_700_000_000,
            board: Some("rpi4".into()),
            import_rules: 1,
        }
    }

    #[test]
    fn canonical_round_trip() {
        let s = sample();
        let json = s.to_canonical_json();
        assert_eq!(
            String::from_utf8(json.clone()).unwrap(),
            format!(
                "{{\"manifest_digest\":\"sha256:{}\",\"content_checksum\":\"{}\",\"version\":\"1.2.3\",\"timestamp\":1700000000,\"board\":\"rpi4\",\"import_rules\":1}}",
                "ab".repeat(32),
                "cd".repeat(32)
            )
        );
        assert_eq!(ReleaseStatement::parse(&json).unwrap(), s);
        let mut nb = s.clone();
        nb.board = None;
        assert_eq!(
            ReleaseStatement::parse(&nb.to_canonical_json()).unwrap(),
            nb
        );
    }

    #[test]
    fn strict_parse_refuses_variants() {
        let good = String::from_utf8(sample().to_canonical_json()).unwrap();
        let cases: Vec<(String, &str)> = vec![
            (
                good.replace(",\"import_rules\"", ", \"import_rules\""),
                "canonical",
            ),
            (good.replace("}", ",\"extra\":1}"), "unknown field"),
            (good.replace("1700000000", "\"1700000000\""), "invalid type"),
            (
                good.replace("\"version\":\"1.2.3\"", "\"version\":\"1.2 3\""),
                "version",
            ),
            (good.replace("sha256:", "sha512:"), "manifest_digest"),
            (
                good.replace("\"content_checksum\":\"cd", "\"content_checksum\":\"CD"),
                "content_checksum",
            ),
            (
                good.replace(",\"timestamp\":1700000000", ""),
                "missing field",
            ),
            (format!("{good}\n"), "canonical"),
            (
                good.replace(
                    "\"board\":\"rpi4\",",
                    "\"board\":\"rpi4\",\"board\":\"rpi4\",",
                ),
                "duplicate",
            ),
            ("x".repeat(MAX_STATEMENT_SIZE + 1), "limit"),
            (String::new(), "EOF"),
        ];
        for (input, want) in cases {
            let err = ReleaseStatement::parse(input.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{input:?}: {err} should mention {want}");
        }
    }

    #[test]
    fn trusted_comment_checks() {
        let s = sample();
        s.check_trusted_comment(&s.trusted_comment()).unwrap();
        s.check_trusted_comment(&format!("{} note=hello", s.trusted_comment()))
            .unwrap();
        let bad = s
            .trusted_comment()
            .replace("version=1.2.3", "version=9.9.9");
        assert!(s
            .check_trusted_comment(&bad)
            .unwrap_err()
            .to_string()
            .contains("version=9.9.9"));
        assert!(s.check_trusted_comment("timestamp:1\tfile:x").is_err());
        assert!(s
            .check_trusted_comment("otter-release version=1.2.3")
            .is_err());
    }
}
