//! The OCI artifact that carries a release statement and its signature.
//!
//! ```text
//! image manifest (mediaType application/vnd.oci.image.manifest.v1+json)
//!   artifactType: application/vnd.otter.release.v1+json
//!   config:  the empty descriptor (application/vnd.oci.empty.v1+json, `{}`)
//!   layers:  [statement  application/vnd.otter.release.v1+json,
//!             signature  application/vnd.otter.release.sig.v1+minisign]
//!   subject: the signed image's manifest descriptor
//! ```
//! In a registry it is found through the referrers API or the `sha256-<hex>` fallback tag; in an
//! OCI layout through an `index.json` entry with `artifactType` (see `publish`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Artifact type (and statement blob media type) of otter release statements.
pub const STATEMENT_ARTIFACT_TYPE: &str = "application/vnd.otter.release.v1+json";
/// Media type of the minisign signature blob.
pub const SIGNATURE_MEDIA_TYPE: &str = "application/vnd.otter.release.sig.v1+minisign";
pub const OCI_MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// `{}`
pub const EMPTY_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
/// Largest artifact manifest read.
pub const MAX_ARTIFACT_MANIFEST_SIZE: u64 = 64 * 1024;
/// How many candidate artifacts are examined at most.
pub const MAX_CANDIDATES: usize = 32;

/// An OCI content descriptor (just the fields otter uses; unknown fields ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactDescriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl ArtifactDescriptor {
    pub fn for_bytes(media_type: &str, bytes: &[u8]) -> ArtifactDescriptor {
        ArtifactDescriptor {
            media_type: media_type.to_string(),
            digest: sha256_digest(bytes),
            size: bytes.len() as u64,
            artifact_type: None,
            annotations: BTreeMap::new(),
        }
    }
}

/// The artifact manifest, as written and as read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactManifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
    pub config: ArtifactDescriptor,
    pub layers: Vec<ArtifactDescriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<ArtifactDescriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl ArtifactManifest {
    /// The release artifact for `subject` with the given statement and signature blobs.
    pub fn release(subject: ArtifactDescriptor, statement: &[u8], signature: &[u8]) -> Self {
        let mut annotations = BTreeMap::new();
        annotations.insert(
            "org.opencontainers.image.created".to_string(),
            rfc3339_now(),
        );
        ArtifactManifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST_MEDIA_TYPE.to_string()),
            artifact_type: Some(STATEMENT_ARTIFACT_TYPE.to_string()),
            config: ArtifactDescriptor {
                media_type: EMPTY_MEDIA_TYPE.to_string(),
                digest: EMPTY_DIGEST.to_string(),
                size: 2,
                artifact_type: None,
                annotations: BTreeMap::new(),
            },
            layers: vec![
                ArtifactDescriptor::for_bytes(STATEMENT_ARTIFACT_TYPE, statement),
                ArtifactDescriptor::for_bytes(SIGNATURE_MEDIA_TYPE, signature),
            ],
            subject: Some(subject),
            annotations,
        }
    }

    /// Serialised manifest bytes.
    pub fn to_bytes(&self) -> anyhow::Result<Vec<u8>> {
        Ok(serde_json::to_vec(self)?)
    }

    /// The statement and signature layer descriptors, if this is an otter release artifact for
    /// `subject_digest`.
    pub fn release_layers(
        &self,
        subject_digest: &str,
    ) -> Option<(&ArtifactDescriptor, &ArtifactDescriptor)> {
        let artifact_type = self
            .artifact_type
            .as_deref()
            .unwrap_or(&self.config.media_type);
        if artifact_type != STATEMENT_ARTIFACT_TYPE {
            return None;
        }
        if self.subject.as_ref().map(|s| s.digest.as_str()) != Some(subject_digest) {
            return None;
        }
        let stmt = self
            .layers
            .iter()
            .find(|l| l.media_type == STATEMENT_ARTIFACT_TYPE)?;
        let sig = self
            .layers
            .iter()
            .find(|l| l.media_type == SIGNATURE_MEDIA_TYPE)?;
        Some((stmt, sig))
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Current UTC time as RFC 3339 (`2026-11-22T07:09:00Z`).
pub fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

/// Seconds since the epoch as RFC 3339 UTC.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // civil_from_days (H. Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_digest_and_dates() {
        assert_eq!(sha256_digest(b"{}"), EMPTY_DIGEST);
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
