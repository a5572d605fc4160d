//! Device trust policy: which keys, whether signatures are required, board, downgrades; plus the
//! checks made after the signature (content checksum, anti-rollback).

use std::cmp::Ordering;
use std::path::PathBuf;

use super::error::VerificationError;
use super::keys::TrustedKeys;
use super::statement::ReleaseStatement;

/// Admin-managed trusted keys.
pub const ETC_KEYS_DIR: &str = "/etc/otter/keys.d";
/// Vendor keys shipped read-only in the OS image.
pub const VENDOR_KEYS_DIR: &str = "/usr/lib/otter/keys.d";

/// What the device accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustPolicy {
    /// Directories whose `*.pub` files are trusted minisign public keys (all at once).
    pub key_dirs: Vec<PathBuf>,
    /// Refuse images without a valid signature (default true).
    pub require_signature: bool,
    /// Allow installing a release older than the booted one.
    pub allow_downgrade: bool,
    /// This device's board; when set, statements naming another board are refused.
    /// Statements without a board are valid for every board.
    pub board: Option<String>,
}

impl Default for TrustPolicy {
    fn default() -> Self {
        TrustPolicy {
            key_dirs: vec![PathBuf::from(ETC_KEYS_DIR), PathBuf::from(VENDOR_KEYS_DIR)],
            require_signature: true,
            allow_downgrade: false,
            board: None,
        }
    }
}

impl TrustPolicy {
    /// The default key directories, placed under `sysroot` (e.g. `/` on a device, a test
    /// directory otherwise).
    pub fn for_sysroot(sysroot: &std::path::Path) -> TrustPolicy {
        TrustPolicy {
            key_dirs: vec![
                sysroot.join(ETC_KEYS_DIR.trim_start_matches('/')),
                sysroot.join(VENDOR_KEYS_DIR.trim_start_matches('/')),
            ],
            ..TrustPolicy::default()
        }
    }

    /// Only the keys in `dir` (the CLI's `--trusted-keys DIR`).
    pub fn with_key_dir(mut self, dir: PathBuf) -> TrustPolicy {
        self.key_dirs = vec![dir];
        self
    }

    pub fn load_keys(&self) -> anyhow::Result<TrustedKeys> {
        TrustedKeys::load(&self.key_dirs)
    }
}

/// Verify one statement + signature pair for the image `manifest_digest` under `policy`:
/// signature by a trusted key (statement and trusted comment), canonical statement, trusted
/// comment consistent with it, right image, right board.
pub fn verify_statement(
    statement: &[u8],
    signature: &[u8],
    manifest_digest: &str,
    keys: &TrustedKeys,
    policy: &TrustPolicy,
) -> Result<ReleaseStatement, VerificationError> {
    let comment = keys.verify(statement, signature)?;
    let stmt = ReleaseStatement::parse(statement)?;
    stmt.check_trusted_comment(&comment)?;
    if stmt.manifest_digest != manifest_digest {
        return Err(VerificationError::WrongImage {
            expected: manifest_digest.to_string(),
            statement: stmt.manifest_digest.clone(),
        });
    }
    if let (Some(board), Some(stmt_board)) = (&policy.board, &stmt.board) {
        if board != stmt_board {
            return Err(VerificationError::WrongBoard {
                expected: board.clone(),
                statement: Some(stmt_board.clone()),
            });
        }
    }
    Ok(stmt)
}

/// After importing: the tree we built must be the one the publisher signed.
/// `imported_content_checksum` is `Imported::content_checksum` / `Commit::content_checksum()`
/// as hex.
pub fn check_content(
    stmt: &ReleaseStatement,
    imported_content_checksum: &str,
) -> Result<(), VerificationError> {
    if stmt
        .content_checksum
        .eq_ignore_ascii_case(imported_content_checksum)
    {
        return Ok(());
    }
    Err(VerificationError::TreeMismatch {
        expected: stmt.content_checksum.clone(),
        actual: imported_content_checksum.to_string(),
        statement_rules: stmt.import_rules,
        local_rules: crate::verify::LOCAL_IMPORT_RULES,
    })
}

/// The release facts anti-rollback compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseVersion {
    pub version: String,
    /// Release timestamp if known (from a statement); tie-breaker for equal versions.
    pub timestamp: Option<u64>,
}

impl From<&ReleaseStatement> for ReleaseVersion {
    fn from(s: &ReleaseStatement) -> Self {
        ReleaseVersion {
            version: s.version.clone(),
            timestamp: Some(s.timestamp),
        }
    }
}

impl std::fmt::Display for ReleaseVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.timestamp {
            Some(t) => write!(f, "{} (timestamp {t})", self.version),
            None => write!(f, "{}", self.version),
        }
    }
}

/// Anti-rollback: refuse a release older than the booted one unless `policy.allow_downgrade`.
///
/// Older means: [`compare_versions`] says the candidate version is lower; or the versions are
/// equal and both timestamps are known and the candidate's is earlier (a re-signed older build).
/// Same version and timestamp (re-install) is allowed. `booted = None` (nothing booted, or the
/// booted system has no known version) allows anything.
pub fn check_not_older(
    stmt: &ReleaseStatement,
    booted: Option<&ReleaseVersion>,
    policy: &TrustPolicy,
) -> Result<(), VerificationError> {
    let Some(booted) = booted else {
        return Ok(());
    };
    let candidate = ReleaseVersion::from(stmt);
    let older = match compare_versions(&candidate.version, &booted.version) {
        Ordering::Less => true,
        Ordering::Greater => false,
        Ordering::Equal => matches!(booted.timestamp, Some(t) if stmt.timestamp < t),
    };
    if older && !policy.allow_downgrade {
        return Err(VerificationError::Downgrade {
            candidate: candidate.to_string(),
            booted: booted.to_string(),
        });
    }
    Ok(())
}

/// Compare release versions, semver-ish:
/// - a `+build` suffix is ignored;
/// - the part before the first `-` is split on `.`: numeric parts compare as numbers,
///   other parts as strings, a numeric part sorts before a non-numeric one, missing parts
///   count as `0` (`1.2` == `1.2.0`);
/// - if those are equal, a version with a `-pre` suffix is older than one without, and two
///   pre-release suffixes compare part by part the same way (`1.0-rc.2` < `1.0-rc.10` < `1.0`).
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let strip_build = |s: &str| s.split('+').next().unwrap_or("").to_string();
    let (a, b) = (strip_build(a), strip_build(b));
    let (a_core, a_pre) = a
        .split_once('-')
        .map_or((a.as_str(), None), |(c, p)| (c, Some(p)));
    let (b_core, b_pre) = b
        .split_once('-')
        .map_or((b.as_str(), None), |(c, p)| (c, Some(p)));
    match compare_dotted(a_core, b_core, true) {
        Ordering::Equal => {}
        o => return o,
    }
    match (a_pre, b_pre) {
        (None, None) => Ordering::Equal,
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (Some(x), Some(y)) => compare_dotted(x, y, false),
    }
}

fn compare_dotted(a: &str, b: &str, pad_zero: bool) -> Ordering {
    let mut ia = a.split('.');
    let mut ib = b.split('.');
    loop {
        let (x, y) = match (ia.next(), ib.next()) {
            (None, None) => return Ordering::Equal,
            (Some(x), None) if pad_zero => (x, "0"),
            (None, Some(y)) if pad_zero => ("0", y),
            (Some(_), None) => return Ordering::Greater,
            (None, Some(_)) => return Ordering::Less,
            (Some(x), Some(y)) => (x, y),
        };
        let o = match (parse_num(x), parse_num(y)) {
            (Some(n), Some(m)) => n.cmp(&m),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => x.cmp(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
}

fn parse_num(s: &str) -> Option<u128> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Strip leading zeros so arbitrarily long numbers still compare correctly by length.
    let t = s.trim_start_matches('0');
    if t.len() > 38 {
        return Some(u128::MAX);
    }
    Some(t.parse().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        use Ordering::*;
        let cases = [
            ("1.2.3", "1.2.3", Equal),
            ("1.2", "1.2.0", Equal),
            ("1.10", "1.9", Greater),
            ("2", "10", Less),
            ("1.0-rc.1", "1.0", Less),
            ("1.0-rc.2", "1.0-rc.10", Less),
            ("1.0-alpha", "1.0-beta", Less),
            ("1.0+build5", "1.0+build4", Equal),
            ("1.0.1", "1.0.a", Less),
            ("2026.11.22", "2026.11.3", Greater),
            ("007", "7", Equal),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    fn stmt(version: &str, timestamp: u64) -> ReleaseStatement {
        ReleaseStatement {
            manifest_digest: format!("sha256:{}", "0".repeat(64)),
            content_checksum: "1".repeat(64),
            version: version.into(),
            timestamp,
            board: None,
            import_rules: 1,
        }
    }

    #[test]
    fn rollback_rules() {
        let p = TrustPolicy::default();
        let allow = TrustPolicy {
            allow_downgrade: true,
            ..TrustPolicy::default()
        };
        let booted = ReleaseVersion::from(&stmt("1.2.0", 1000));
        check_not_older(&stmt("1.3.0", 900), Some(&booted), &p).unwrap();
        check_not_older(&stmt("1.2.0", 1000), Some(&booted), &p).unwrap();
        check_not_older(&stmt("1.2.0", 999), None, &p).unwrap();
        let err = check_not_older(&stmt("1.1.9", 2000), Some(&booted), &p).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("1.1.9") && msg.contains("1.2.0"), "{msg}");
        check_not_older(&stmt("1.1.9", 2000), Some(&booted), &allow).unwrap();
        assert!(check_not_older(&stmt("1.2.0", 999), Some(&booted), &p).is_err());
        let no_ts = ReleaseVersion {
            version: "1.2.0".into(),
            timestamp: None,
        };
        check_not_older(&stmt("1.2.0", 1), Some(&no_ts), &p).unwrap();
    }

    #[test]
    fn content_check() {
        let s = stmt("1", 1);
        check_content(&s, &"1".repeat(64)).unwrap();
        let e = check_content(&s, &"2".repeat(64)).unwrap_err().to_string();
        assert!(
            e.contains(&"2".repeat(64)) && e.contains(&"1".repeat(64)),
            "{e}"
        );
    }
}
