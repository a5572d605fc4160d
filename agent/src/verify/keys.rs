//! Trusted minisign public keys and minisign signature files.
//!
//! Formats (minisign's own, see `shared/ref/deps-and-protocols.md` §2.1):
//! public key = `untrusted comment: …` + base64(`Ed` | key id[8] | ed25519 pk[32]);
//! signature = `untrusted comment: …` + base64(alg[2] | key id[8] | sig[64]) +
//! `trusted comment: …` + base64(global sig[64]). Only prehashed (`ED`) signatures are accepted.
//! The cryptography is `minisign-verify`'s; this module parses strictly, extracts key ids and
//! maps failures onto [`VerificationError`].

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::error::VerificationError;

/// Largest public key file read (a real one is ~100 bytes).
pub const MAX_KEY_FILE_SIZE: u64 = 4096;
/// Largest signature accepted (a real one is ~300 bytes plus the trusted comment).
pub const MAX_SIGNATURE_SIZE: usize = 4096;

/// A minisign key id (8 bytes), shown the way the minisign CLI shows it: the little-endian u64
/// in upper-case hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 8]);

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}", u64::from_le_bytes(self.0))
    }
}

/// One trusted public key.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub id: KeyId,
    /// Where it was loaded from (for messages).
    pub path: PathBuf,
    key: minisign_verify::PublicKey,
}

impl TrustedKey {
    /// Parse a minisign public key file's text (2 lines; a bare base64 line is accepted too).
    pub fn parse(text: &str, path: &Path) -> Result<TrustedKey, VerificationError> {
        let bad = |detail: &str| VerificationError::BadKeyFile {
            path: path.to_path_buf(),
            detail: detail.to_string(),
        };
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let b64 = match lines.as_slice() {
            [comment, b64] if comment.starts_with("untrusted comment:") => *b64,
            [b64] => *b64,
            _ => return Err(bad("expected `untrusted comment: …` and one base64 line")),
        };
        let raw = base64_decode(b64.trim()).ok_or_else(|| bad("key line is not base64"))?;
        if raw.len() != 42 || &raw[0..2] != b"Ed" {
            return Err(bad(
                "key line does not decode to `Ed` + key id + Ed25519 key (42 bytes)",
            ));
        }
        let key = minisign_verify::PublicKey::from_base64(b64.trim())
            .map_err(|e| bad(&format!("rejected by minisign: {e}")))?;
        let mut id = [0u8; 8];
        id.copy_from_slice(&raw[2..10]);
        Ok(TrustedKey {
            id: KeyId(id),
            path: path.to_path_buf(),
            key,
        })
    }

    /// Read and parse a public key file.
    pub fn from_file(path: &Path) -> Result<TrustedKey, VerificationError> {
        let text = read_small(path, MAX_KEY_FILE_SIZE).map_err(|detail| {
            VerificationError::BadKeyFile {
                path: path.to_path_buf(),
                detail,
            }
        })?;
        Self::parse(&text, path)
    }
}

fn read_small(path: &Path, max: u64) -> Result<String, String> {
    let file = fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut buf = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read: {e}"))?;
    if buf.len() as u64 > max {
        return Err(format!("larger than {max} bytes"));
    }
    String::from_utf8(buf).map_err(|_| "not UTF-8 text".to_string())
}

/// The set of keys a device trusts.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    pub keys: Vec<TrustedKey>,
    /// The directories they came from (for messages).
    pub dirs: Vec<PathBuf>,
}

impl TrustedKeys {
    /// Load every `*.pub` file of the given directories (missing directories are skipped, a bad
    /// key file is an error naming it). Several keys may be trusted at once (key rotation).
    pub fn load(dirs: &[PathBuf]) -> anyhow::Result<TrustedKeys> {
        let mut keys = Vec::new();
        for dir in dirs {
            let entries = match fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!(
                        "cannot list trusted key directory {}",
                        dir.display()
                    )))
                }
            };
            let mut paths = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|e| {
                    anyhow::Error::new(e).context(format!(
                        "cannot list trusted key directory {}",
                        dir.display()
                    ))
                })?;
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "pub") {
                    paths.push(path);
                }
            }
            paths.sort();
            for path in paths {
                keys.push(TrustedKey::from_file(&path)?);
            }
        }
        Ok(TrustedKeys {
            keys,
            dirs: dirs.to_vec(),
        })
    }

    /// Keys given directly (publisher `verify --key`, tests).
    pub fn from_keys(keys: Vec<TrustedKey>) -> TrustedKeys {
        let dirs = keys.iter().map(|k| k.path.clone()).collect();
        TrustedKeys { keys, dirs }
    }

    /// Verify `signature` over `message` with the trusted key of the same key id, and return
    /// the (now authenticated) trusted comment.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<String, VerificationError> {
        let sig = ParsedSignature::parse(signature)?;
        if self.keys.is_empty() {
            return Err(VerificationError::NoTrustedKeys {
                dirs: self.dirs.clone(),
            });
        }
        let Some(key) = self.keys.iter().find(|k| k.id == sig.key_id) else {
            return Err(VerificationError::UntrustedKey {
                key_id: sig.key_id.to_string(),
                trusted: self.keys.iter().map(|k| k.id.to_string()).collect(),
            });
        };
        key.key.verify(message, &sig.inner, false).map_err(|_| {
            VerificationError::BadSignature {
                key_id: sig.key_id.to_string(),
            }
        })?;
        Ok(sig.inner.trusted_comment().to_string())
    }
}

/// A strictly parsed minisign signature file.
pub struct ParsedSignature {
    pub key_id: KeyId,
    inner: minisign_verify::Signature,
}

impl ParsedSignature {
    pub fn parse(bytes: &[u8]) -> Result<ParsedSignature, VerificationError> {
        let bad = |d: String| VerificationError::MalformedSignature { detail: d };
        if bytes.len() > MAX_SIGNATURE_SIZE {
            return Err(bad(format!(
                "{} bytes, limit {MAX_SIGNATURE_SIZE}",
                bytes.len()
            )));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8 text".into()))?;
        let body = text.strip_suffix('\n').unwrap_or(text);
        let lines: Vec<&str> = body.split('\n').collect();
        let [c1, sig_line, c2, global_line] = lines.as_slice() else {
            return Err(bad(format!("expected 4 lines, found {}", lines.len())));
        };
        if !c1.starts_with("untrusted comment:") {
            return Err(bad("line 1 is not `untrusted comment: …`".into()));
        }
        if !c2.starts_with("trusted comment: ") {
            return Err(bad("line 3 is not `trusted comment: …`".into()));
        }
        let raw = base64_decode(sig_line).ok_or_else(|| bad("line 2 is not base64".into()))?;
        if raw.len() != 74 {
            return Err(bad(format!(
                "line 2 decodes to {} bytes, expected 74",
                raw.len()
            )));
        }
        match &raw[0..2] {
            b"ED" => {}
            b"Ed" => {
                return Err(bad(
                    "legacy (non-prehashed `Ed`) signature; sign without `-l`".into(),
                ))
            }
            _ => return Err(bad("unknown signature algorithm".into())),
        }
        match base64_decode(global_line) {
            Some(g) if g.len() == 64 => {}
            _ => return Err(bad("line 4 is not a base64 64-byte global signature".into())),
        }
        let inner = minisign_verify::Signature::decode(body)
            .map_err(|e| bad(format!("rejected by minisign: {e}")))?;
        let mut id = [0u8; 8];
        id.copy_from_slice(&raw[2..10]);
        Ok(ParsedSignature {
            key_id: KeyId(id),
            inner,
        })
    }

    pub fn trusted_comment(&self) -> &str {
        self.inner.trusted_comment()
    }
}

/// Standard base64 with padding; `None` on anything else.
pub(crate) fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let b = s.as_bytes();
    if b.is_empty() || !b.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(b.len() / 4 * 3);
    for (i, chunk) in b.chunks(4).enumerate() {
        let last = i == b.len() / 4 - 1;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | val(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64() {
        assert_eq!(base64_decode("aGk=").unwrap(), b"hi");
        assert_eq!(base64_decode("aGVsbG8h").unwrap(), b"hello!");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert!(base64_decode("YQ=").is_none());
        assert!(base64_decode("Y===").is_none());
        assert!(base64_decode("YQ==YQ==").is_none());
        assert!(base64_decode("a*c=").is_none());
    }

    #[test]
    fn key_id_display_matches_minisign_cli() {
        // from a `minisign -G` run: bytes df f3 41 95 c3 ca 09 8f -> "8F09CAC39541F3DF"
        let key = TrustedKey::parse(
            "untrusted comment: minisign public key 8F09CAC39541F3DF\n\
             RWTf80GVw8oJj71hoonuOIuxd04J123q05b0oivMqW+VrI0n0QOVcIYc\n",
            Path::new("k.pub"),
        )
        .unwrap();
        assert_eq!(key.id.to_string(), "8F09CAC39541F3DF");
    }

    #[test]
    fn garbage_keys_refused() {
        for text in [
            "",
            "hello\nworld\n",
            "untrusted comment: x\nAAAA\n",
            "\u{0}\u{1}",
        ] {
            let err = TrustedKey::parse(text, Path::new("bad.pub"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("bad.pub"), "{err}");
        }
    }
}
