//! Release verification: minisign-signed release statements, the device trust policy and
//! anti-rollback.
//!
//! The publisher (`otter-publish sign`) signs a small canonical JSON [`ReleaseStatement`] that
//! binds the image manifest digest, the ostree content checksum a correct import produces, a
//! version and a timestamp; the minisign trusted comment repeats them and is signed too. The
//! statement and its `.minisig` travel as an OCI artifact whose `subject` is the image manifest
//! ([`artifact`]).
//!
//! On the device the update flow calls, in order:
//! 1. [`verify_release`] after resolving the image: finds the artifact, verifies the signature
//!    with a trusted key ([`TrustPolicy::key_dirs`]), checks image digest and board;
//! 2. [`check_not_older`] against the booted release (anti-rollback);
//! 3. [`check_content`] after the import, with the imported commit's content checksum.
//!
//! Every refusal is a [`VerificationError`] inside the `anyhow::Error` (CLI exit code 3, see
//! [`is_verification_error`]).

pub mod artifact;
mod error;
pub mod keys;
mod policy;
mod statement;

use std::io::Read;

use anyhow::Context;

pub use artifact::{
    ArtifactDescriptor, ArtifactManifest, SIGNATURE_MEDIA_TYPE, STATEMENT_ARTIFACT_TYPE,
};
pub use error::{is_verification_error, VerificationError};
pub use keys::{KeyId, TrustedKey, TrustedKeys};
pub use policy::{
    check_content, check_not_older, compare_versions, verify_statement, ReleaseVersion,
    TrustPolicy, ETC_KEYS_DIR, VENDOR_KEYS_DIR,
};
pub use statement::{ReleaseStatement, MAX_STATEMENT_SIZE, TRUSTED_COMMENT_PREFIX};

/// Import rules version this agent applies.
pub const LOCAL_IMPORT_RULES: u64 = crate::import::IMPORT_RULES_VERSION;

/// Where release artifacts are looked up: the seam between verification and an image source.
pub trait ArtifactStore {
    /// Descriptors of artifact manifests whose `subject` is `manifest_digest`, filtered by
    /// `artifact_type` (filtering again here is harmless).
    fn referrers(
        &mut self,
        manifest_digest: &str,
        artifact_type: &str,
    ) -> anyhow::Result<Vec<ArtifactDescriptor>>;
    /// A reader over the blob or manifest `desc` names.
    fn open(&mut self, desc: &ArtifactDescriptor) -> anyhow::Result<Box<dyn Read + '_>>;
}

/// Read a small blob, refusing anything larger than `max` or not matching its descriptor.
pub fn read_capped(
    store: &mut dyn ArtifactStore,
    desc: &ArtifactDescriptor,
    max: u64,
) -> anyhow::Result<Vec<u8>> {
    if desc.size > max {
        anyhow::bail!(
            "blob {} ({}) is {} bytes, more than the {max}-byte limit",
            desc.digest,
            desc.media_type,
            desc.size
        );
    }
    let mut reader = store
        .open(desc)
        .with_context(|| format!("cannot open blob {}", desc.digest))?;
    let mut buf = Vec::with_capacity(desc.size as usize);
    (&mut reader)
        .take(max + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("cannot read blob {}", desc.digest))?;
    drop(reader);
    if buf.len() as u64 != desc.size || artifact::sha256_digest(&buf) != desc.digest {
        anyhow::bail!(
            "blob {} does not match its descriptor ({} bytes read, {} expected)",
            desc.digest,
            buf.len(),
            desc.size
        );
    }
    Ok(buf)
}

/// A statement and signature found for an image (unverified).
#[derive(Debug, Clone)]
pub struct SignedStatement {
    pub artifact: ArtifactDescriptor,
    pub statement: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Collect every release statement + signature attached to `manifest_digest`.
/// Artifacts that are not otter release artifacts for this digest are skipped.
pub fn find_statements(
    store: &mut dyn ArtifactStore,
    manifest_digest: &str,
) -> anyhow::Result<Vec<SignedStatement>> {
    let mut out = Vec::new();
    let mut unreadable = None;
    let refs = store
        .referrers(manifest_digest, STATEMENT_ARTIFACT_TYPE)
        .with_context(|| format!("cannot list signatures referring to {manifest_digest}"))?;
    for desc in refs.into_iter().take(artifact::MAX_CANDIDATES) {
        if desc
            .artifact_type
            .as_deref()
            .is_some_and(|t| t != STATEMENT_ARTIFACT_TYPE)
        {
            continue;
        }
        let bytes = match read_capped(store, &desc, artifact::MAX_ARTIFACT_MANIFEST_SIZE) {
            Ok(b) => b,
            Err(e) => {
                log::warn!("ignoring referrer {}: {e:#}", desc.digest);
                unreadable = Some(e);
                continue;
            }
        };
        let manifest: ArtifactManifest = match serde_json::from_slice(&bytes) {
            Ok(m) => m,
            Err(e) => {
                log::warn!(
                    "ignoring referrer {}: not an OCI manifest: {e}",
                    desc.digest
                );
                continue;
            }
        };
        let Some((stmt_desc, sig_desc)) = manifest.release_layers(manifest_digest) else {
            log::warn!(
                "ignoring referrer {}: not an otter release artifact",
                desc.digest
            );
            continue;
        };
        let (stmt_desc, sig_desc) = (stmt_desc.clone(), sig_desc.clone());
        let blobs = read_capped(store, &stmt_desc, MAX_STATEMENT_SIZE as u64).and_then(|s| {
            Ok((
                s,
                read_capped(store, &sig_desc, keys::MAX_SIGNATURE_SIZE as u64)?,
            ))
        });
        match blobs {
            Ok((statement, signature)) => out.push(SignedStatement {
                artifact: desc,
                statement,
                signature,
            }),
            Err(e) => {
                log::warn!("ignoring signature artifact {}: {e:#}", desc.digest);
                unreadable = Some(e);
            }
        }
    }
    // Only an error if nothing usable was found: a broken extra artifact must not hide a
    // good one.
    match unreadable {
        Some(e) if out.is_empty() => Err(e),
        _ => Ok(out),
    }
}

fn severity(e: &VerificationError) -> u8 {
    match e {
        VerificationError::NoSignature { .. } => 0,
        VerificationError::UntrustedKey { .. } => 1,
        _ => 2,
    }
}

/// Find and verify the release statement of `manifest_digest` in `store` (see
/// [`verify_release`]).
pub fn verify_release_in(
    store: &mut dyn ArtifactStore,
    manifest_digest: &str,
    policy: &TrustPolicy,
) -> anyhow::Result<Option<ReleaseStatement>> {
    let result = policy
        .load_keys()
        .and_then(|keys| verify_with_keys(store, manifest_digest, &keys, policy));
    match result {
        Ok(stmt) => Ok(Some(stmt)),
        Err(e) if !policy.require_signature && is_verification_error(&e) => {
            log::warn!("signatures not required by policy, continuing without: {e:#}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Like [`verify_release_in`] with an explicit key set and signatures always required.
pub fn verify_with_keys(
    store: &mut dyn ArtifactStore,
    manifest_digest: &str,
    keys: &TrustedKeys,
    policy: &TrustPolicy,
) -> anyhow::Result<ReleaseStatement> {
    if keys.keys.is_empty() {
        return Err(VerificationError::NoTrustedKeys {
            dirs: keys.dirs.clone(),
        }
        .into());
    }
    let candidates = find_statements(store, manifest_digest)?;
    let mut worst = VerificationError::NoSignature {
        manifest_digest: manifest_digest.into(),
    };
    for c in &candidates {
        match verify_statement(&c.statement, &c.signature, manifest_digest, keys, policy) {
            Ok(stmt) => {
                log::info!(
                    "release {} of {manifest_digest} verified (signature artifact {})",
                    stmt.version,
                    c.artifact.digest
                );
                return Ok(stmt);
            }
            Err(e) => {
                log::warn!("signature artifact {}: {e}", c.artifact.digest);
                if severity(&e) > severity(&worst) {
                    worst = e;
                }
            }
        }
    }
    Err(worst.into())
}

/// Adapter: an [`crate::source::ImageSource`] as an [`ArtifactStore`].
pub struct SourceArtifacts<'a>(pub &'a mut dyn crate::source::ImageSource);

fn to_source_descriptor(d: &ArtifactDescriptor) -> crate::source::Descriptor {
    crate::source::Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        annotations: d.annotations.clone(),
        artifact_type: d.artifact_type.clone(),
    }
}

impl ArtifactStore for SourceArtifacts<'_> {
    fn referrers(
        &mut self,
        manifest_digest: &str,
        artifact_type: &str,
    ) -> anyhow::Result<Vec<ArtifactDescriptor>> {
        Ok(self
            .0
            .referrers(manifest_digest, artifact_type)?
            .into_iter()
            .map(|d| ArtifactDescriptor {
                media_type: d.media_type,
                digest: d.digest,
                size: d.size,
                artifact_type: d.artifact_type,
                annotations: d.annotations,
            })
            .collect())
    }

    fn open(&mut self, desc: &ArtifactDescriptor) -> anyhow::Result<Box<dyn Read + '_>> {
        self.0.open_blob(&to_source_descriptor(desc))
    }
}

/// Fetch the release statement + signature referring to `image`, verify the signature with a
/// trusted key of `policy` (key id match; statement and trusted comment), and check that the
/// statement names this manifest digest and (if the policy has one) this board. Returns the
/// statement; the caller then checks [`check_not_older`] and, after importing,
/// [`check_content`]. `Ok(None)` only when `!policy.require_signature` and no valid signature
/// was found (logged as a warning).
pub fn verify_release(
    source: &mut dyn crate::source::ImageSource,
    image: &crate::source::ResolvedImage,
    policy: &TrustPolicy,
) -> anyhow::Result<Option<ReleaseStatement>> {
    verify_release_in(&mut SourceArtifacts(source), &image.manifest_digest, policy)
}

/// Commit metadata key under which the update flow stores the verified statement (canonical
/// JSON string) so that later updates can compare against the booted release.
pub const COMMIT_META_STATEMENT: &str = "otter.release.statement";

/// The commit metadata entry recording `stmt` (add it to the metadata given to
/// `Importer::commit`).
pub fn statement_metadata(stmt: &ReleaseStatement) -> (String, crate::ostree::MetaValue) {
    let json = String::from_utf8_lossy(&stmt.to_canonical_json()).into_owned();
    (
        COMMIT_META_STATEMENT.to_string(),
        crate::ostree::MetaValue::Str(json),
    )
}

/// The release a deployed commit carries, for [`check_not_older`]: its recorded statement
/// (version + timestamp) if any, else its `version` metadata (from the image label) without a
/// timestamp, else `None`.
pub fn release_of_commit(commit: &crate::ostree::Commit) -> Option<ReleaseVersion> {
    if let Some(json) = commit.meta_str(COMMIT_META_STATEMENT) {
        match ReleaseStatement::parse(json.as_bytes()) {
            Ok(stmt) => return Some(ReleaseVersion::from(&stmt)),
            Err(e) => log::warn!(
                "commit {}: ignoring recorded statement: {e}",
                commit.checksum
            ),
        }
    }
    commit.meta_str("version").map(|v| ReleaseVersion {
        version: v.to_string(),
        timestamp: None,
    })
}

/// The checks before importing, in one call: [`verify_release`], then [`check_not_older`]
/// against `booted` (see [`release_of_commit`]). Without a statement (signatures not required
/// and none valid), anti-rollback compares the image's version label when both are known.
pub fn check_release(
    source: &mut dyn crate::source::ImageSource,
    image: &crate::source::ResolvedImage,
    policy: &TrustPolicy,
    booted: Option<&ReleaseVersion>,
) -> anyhow::Result<Option<ReleaseStatement>> {
    let stmt = verify_release(source, image, policy)?;
    match &stmt {
        Some(s) => check_not_older(s, booted, policy)?,
        None => {
            if let (Some(v), Some(b)) = (image.config.version(), booted) {
                let pseudo = ReleaseStatement {
                    manifest_digest: image.manifest_digest.clone(),
                    content_checksum: String::new(),
                    version: v.to_string(),
                    timestamp: 0,
                    board: None,
                    import_rules: LOCAL_IMPORT_RULES,
                };
                let booted = ReleaseVersion {
                    version: b.version.clone(),
                    timestamp: None,
                };
                check_not_older(&pseudo, Some(&booted), policy)?;
            }
        }
    }
    Ok(stmt)
}
