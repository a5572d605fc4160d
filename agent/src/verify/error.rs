//! The typed verification error: every reason an image is refused on trust grounds.
//!
//! It travels inside `anyhow::Error`; the CLI finds it with
//! `err.downcast_ref::<VerificationError>()` (or [`super::is_verification_error`]) and exits with 3.

use std::fmt;
use std::path::PathBuf;

/// Why a release was refused. Each message names what was checked, the values involved, and
/// what the operator can do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerificationError {
    /// The image has no release statement with a signature attached (registry referrers,
    /// `sha256-<hex>` fallback tag, or layout entries).
    NoSignature { manifest_digest: String },
    /// No trusted public key is installed, so nothing can be verified.
    NoTrustedKeys { dirs: Vec<PathBuf> },
    /// A trusted-key file could not be parsed.
    BadKeyFile { path: PathBuf, detail: String },
    /// The signature was made by a key that is not trusted here.
    UntrustedKey {
        key_id: String,
        trusted: Vec<String>,
    },
    /// The signature file is not a minisign signature (truncated, garbled, wrong algorithm).
    MalformedSignature { detail: String },
    /// The signature does not match the statement or its trusted comment.
    BadSignature { key_id: String },
    /// The statement is not a valid canonical otter release statement.
    MalformedStatement { detail: String },
    /// The signed trusted comment disagrees with the statement it signs.
    CommentMismatch { detail: String },
    /// The statement was made for another image (manifest digest).
    WrongImage { expected: String, statement: String },
    /// The statement was made for another board.
    WrongBoard {
        expected: String,
        statement: Option<String>,
    },
    /// The imported tree is not the one the publisher signed.
    TreeMismatch {
        expected: String,
        actual: String,
        statement_rules: u64,
        local_rules: u64,
    },
    /// The release is older than the one running and downgrades are not allowed.
    Downgrade { candidate: String, booted: String },
}

impl fmt::Display for VerificationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use VerificationError::*;
        match self {
            NoSignature { manifest_digest } => write!(
                f,
                "no signed release statement found for image {manifest_digest}: sign it with \
                 `otter-publish sign` (or copy the signature artifact along with the image)"
            ),
            NoTrustedKeys { dirs } => {
                let dirs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
                write!(
                    f,
                    "no trusted minisign public keys (*.pub) found in {}: install the publisher's \
                     public key there",
                    dirs.join(", ")
                )
            }
            BadKeyFile { path, detail } => write!(
                f,
                "trusted key file {} is not a minisign public key ({detail}): replace or remove it",
                path.display()
            ),
            UntrustedKey { key_id, trusted } => {
                write!(
                f,
                "release is signed by untrusted key {key_id} (trusted: {}): install that public \
                 key in the keys directory if you trust its owner",
                if trusted.is_empty() { "none".to_string() } else { trusted.join(", ") }
            )
            }
            MalformedSignature { detail } => {
                write!(
                    f,
                    "release signature is not a valid minisign signature: {detail}"
                )
            }
            BadSignature { key_id } => write!(
                f,
                "bad signature by key {key_id}: the release statement or its trusted comment was \
                 modified after signing"
            ),
            MalformedStatement { detail } => write!(f, "release statement is invalid: {detail}"),
            CommentMismatch { detail } => write!(
                f,
                "signed trusted comment does not match the release statement: {detail}"
            ),
            WrongImage {
                expected,
                statement,
            } => write!(
                f,
                "release statement is for another image: it names manifest {statement}, the image \
                 is {expected}"
            ),
            WrongBoard {
                expected,
                statement,
            } => write!(
                f,
                "release statement is for board {}, this device is {expected}",
                statement.as_deref().unwrap_or("(none)")
            ),
            TreeMismatch {
                expected,
                actual,
                statement_rules,
                local_rules,
            } => {
                write!(
                    f,
                    "imported tree does not match the signed release: signed content checksum \
                     {expected}, imported {actual}"
                )?;
                if statement_rules != local_rules {
                    write!(
                        f,
                        " (statement made with import rules v{statement_rules}, this agent uses \
                         v{local_rules}: update the agent or re-sign with matching rules)"
                    )?;
                }
                Ok(())
            }
            Downgrade { candidate, booted } => write!(
                f,
                "downgrade refused: release {candidate} is older than the running release \
                 {booted}; pass --allow-downgrade to install it anyway"
            ),
        }
    }
}

impl std::error::Error for VerificationError {}

/// True if `err` (or anything in its chain) is a [`VerificationError`]; the CLI maps that to
/// exit code 3.
pub fn is_verification_error(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|e| e.downcast_ref::<VerificationError>().is_some())
}
