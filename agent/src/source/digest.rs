//! Content digests (`sha256:<hex>`) and a reader that checks size and digest while it streams.

use std::fmt;
use std::io::{self, Read};

use anyhow::{bail, Result};
use sha2::{Digest as _, Sha256};

/// A blob or manifest did not match what was promised (digest, size, or a manifest's content).
/// The CLI maps it to exit code 3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerificationError {
    /// What failed, e.g. "blob sha256:… (layer) has digest sha256:… but the manifest says …".
    pub message: String,
}

impl VerificationError {
    pub fn new(message: impl Into<String>) -> VerificationError {
        VerificationError {
            message: message.into(),
        }
    }
}

impl fmt::Display for VerificationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "verification failed: {}", self.message)
    }
}

impl std::error::Error for VerificationError {}

/// Check that `digest` is `sha256:` followed by 64 lowercase hex digits; returns the hex part.
pub fn sha256_hex(digest: &str) -> Result<&str> {
    let Some(hex) = digest.strip_prefix("sha256:") else {
        bail!("unsupported digest {digest:?}: only sha256:<64 hex digits> is supported");
    };
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        bail!("malformed digest {digest:?}: expected sha256:<64 lowercase hex digits>");
    }
    Ok(hex)
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Check `data` against an expected digest and size (either may be absent).
pub fn verify_bytes(what: &str, data: &[u8], digest: &str, size: Option<u64>) -> Result<()> {
    if let Some(size) = size {
        if data.len() as u64 != size {
            return Err(VerificationError::new(format!(
                "{what} {digest} is {} bytes, expected {size}",
                data.len()
            ))
            .into());
        }
    }
    let actual = sha256_digest(data);
    if actual != digest {
        return Err(VerificationError::new(format!(
            "{what} has digest {actual}, expected {digest}"
        ))
        .into());
    }
    Ok(())
}

/// Wraps a reader: hashes what passes through, fails as soon as more than `size` bytes arrive, and
/// at EOF fails unless exactly `size` bytes with digest `digest` were read. The error is an
/// `io::Error` of kind `InvalidData` wrapping a [`VerificationError`].
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Sha256,
    digest: String,
    size: u64,
    read: u64,
    checked: bool,
}

impl<R: Read> VerifyingReader<R> {
    pub fn new(inner: R, digest: &str, size: u64) -> VerifyingReader<R> {
        VerifyingReader {
            inner,
            hasher: Sha256::new(),
            digest: digest.to_string(),
            size,
            read: 0,
            checked: false,
        }
    }

    fn fail(&self, message: String) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, VerificationError::new(message))
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            if self.checked {
                return Ok(0);
            }
            if self.read != self.size {
                return Err(self.fail(format!(
                    "blob {} ended after {} bytes, expected {} (truncated)",
                    self.digest, self.read, self.size
                )));
            }
            let actual = format!("sha256:{}", hex(&self.hasher.clone().finalize()));
            if actual != self.digest {
                return Err(self.fail(format!(
                    "blob has digest {actual}, expected {} (corrupted)",
                    self.digest
                )));
            }
            self.checked = true;
            return Ok(0);
        }
        self.read += n as u64;
        if self.read > self.size {
            return Err(self.fail(format!(
                "blob {} is larger than its declared size {} bytes",
                self.digest, self.size
            )));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_syntax() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert!(sha256_hex(&good).is_ok());
        for bad in [
            "sha256:abc",
            "sha512:aa",
            "aaaa",
            &format!("sha256:{}", "A".repeat(64)),
        ] {
            assert!(sha256_hex(bad).is_err(), "{bad}");
        }
    }

    fn read_all(data: &[u8], digest: &str, size: u64) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        VerifyingReader::new(data, digest, size).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn verifying_reader() {
        let data = b"hello world";
        let d = sha256_digest(data);
        assert_eq!(read_all(data, &d, 11).unwrap(), data);
        // wrong digest
        let e = read_all(data, &sha256_digest(b"x"), 11).unwrap_err();
        assert!(e.to_string().contains("corrupted"), "{e}");
        assert!(e.get_ref().unwrap().is::<VerificationError>());
        // too long
        let e = read_all(data, &d, 5).unwrap_err();
        assert!(e.to_string().contains("larger"), "{e}");
        // truncated
        let e = read_all(data, &d, 20).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
    }
}
