//! fetch: talks to OCI registries and downloads blobs resumably into a blob directory; knows
//! nothing about ostree.
//!
//! On disk, per blob in [`crate::source::SourceOptions::blob_dir`]:
//! - `<hex>`: a complete blob, digest checked before it was renamed into place;
//! - `<hex>.partial`: the bytes received so far;
//! - `<hex>.journal`: JSON `{"version":1,"digest","size","chunk_size","etag","last_modified","chunks":[hex…]}`
//!   where `chunks[i]` is the SHA-256 of bytes `[i*chunk_size, (i+1)*chunk_size)` of the partial
//!   file, written (after an fsync of the partial file) each time a chunk is complete. On resume
//!   the chunks are re-hashed: the download continues after the last good chunk, so a torn or
//!   corrupted partial file costs at most the chunks after the damage.
//!
//! Errors a caller acts on are typed ([`NetworkError`], [`NoSpace`], and
//! [`crate::source::VerificationError`]); [`error_class`] finds them in an `anyhow` chain.

mod auth;
mod blob;
mod client;
mod limit;

use std::fmt;
use std::time::Duration;

pub use auth::{load_auth_file, Credentials};
pub use blob::{download_blobs, remove_blob, remove_ranges, BlobFetcher, Ranges};
pub use client::RegistryClient;
pub use limit::RateLimiter;

pub use crate::source::VerificationError;

/// The network failed in a way retries did not fix (exit code 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkError {
    pub message: String,
}

impl NetworkError {
    pub fn new(message: impl Into<String>) -> NetworkError {
        NetworkError {
            message: message.into(),
        }
    }
}

impl fmt::Display for NetworkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "network error: {}", self.message)
    }
}

impl std::error::Error for NetworkError {}

/// Not enough free space for the download (exit code 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoSpace {
    /// The directory that would receive the data.
    pub path: std::path::PathBuf,
    /// Bytes needed (missing blobs + headroom).
    pub needed: u64,
    /// Bytes available to unprivileged users on that filesystem.
    pub available: u64,
}

impl fmt::Display for NoSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not enough free space in {}: need {} bytes, {} available (free some space or point the blob directory elsewhere)",
            self.path.display(),
            self.needed,
            self.available
        )
    }
}

impl std::error::Error for NoSpace {}

/// The kinds of failure the CLI maps to exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Exit 3.
    Verification,
    /// Exit 4.
    Network,
    /// Exit 5.
    NoSpace,
}

/// Find a typed fetch/source error anywhere in the chain (also inside `io::Error`s, which is how
/// a reading error from [`crate::source::ImageSource::open_blob`] arrives).
pub fn error_class(err: &anyhow::Error) -> Option<ErrorClass> {
    fn class(e: &(dyn std::error::Error + 'static)) -> Option<ErrorClass> {
        if e.is::<VerificationError>() {
            return Some(ErrorClass::Verification);
        }
        if e.is::<NetworkError>() {
            return Some(ErrorClass::Network);
        }
        if e.is::<NoSpace>() {
            return Some(ErrorClass::NoSpace);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                return class(inner);
            }
        }
        None
    }
    err.chain().find_map(class)
}

/// How often and how long to retry a failing request. Attempts are counted while no bytes
/// arrive; any progress resets the count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts without progress before giving up (≥ 1).
    pub max_attempts: u32,
    /// Delay before the first retry; doubles each time, with ±50 % jitter.
    pub initial_delay: Duration,
    /// Upper bound for one delay (also for a server's `Retry-After`).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 8,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `attempt` (1-based): exponential with jitter, capped.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .initial_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let base = exp.min(self.max_delay);
        // jitter in [0.5, 1.5) from std's randomly keyed hasher
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(attempt);
        let frac = (h.finish() % 1000) as f64 / 1000.0;
        base.mul_f64(0.5 + frac).min(self.max_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_through_io_error() {
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, VerificationError::new("x"));
        let e = anyhow::Error::new(io).context("reading layer");
        assert_eq!(error_class(&e), Some(ErrorClass::Verification));
        let e = anyhow::Error::new(NetworkError::new("reset")).context("fetching");
        assert_eq!(error_class(&e), Some(ErrorClass::Network));
        let e = anyhow::anyhow!("plain");
        assert_eq!(error_class(&e), None);
    }

    #[test]
    fn retry_delays_are_bounded() {
        let p = RetryPolicy {
            max_attempts: 5,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        for a in 1..40 {
            let d = p.delay(a);
            assert!(d <= Duration::from_secs(1), "{a}: {d:?}");
            assert!(d >= Duration::from_millis(50), "{a}: {d:?}");
        }
    }
}
