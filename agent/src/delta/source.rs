//! Deltas published as OCI artifacts next to the image (the device-side hook for `update`).
//!
//! A delta artifact is an OCI manifest with `artifactType` [`ARTIFACT_TYPE`], `subject` = the
//! target image's manifest, annotation [`ANNOTATION_FROM`] = the manifest digest of the image it
//! starts from, and as layers the superblock followed by the parts in order.

use std::io::Read;

use anyhow::{bail, Context, Result};

use super::apply::{apply, Applied, DeltaStore};
use super::format::PartInfo;
use super::{ANNOTATION_FROM, ARTIFACT_TYPE};
use crate::ostree::{Checksum, Repo};
use crate::source::{Descriptor, ImageSource, Manifest};

/// Largest artifact manifest we read.
const MAX_MANIFEST_SIZE: u64 = 4 << 20;
/// Referrers looked at.
const MAX_CANDIDATES: usize = 32;

/// The layers of a delta artifact read through an [`ImageSource`] (registry downloads are
/// journaled and resumable there; digests are checked there too).
pub struct ArtifactStore<'s> {
    source: &'s mut dyn ImageSource,
    layers: Vec<Descriptor>,
}

impl DeltaStore for ArtifactStore<'_> {
    fn superblock(&mut self) -> Result<Box<dyn Read + '_>> {
        let d = self
            .layers
            .first()
            .context("delta artifact has no layers")?
            .clone();
        self.source.open_blob(&d)
    }

    fn part(&mut self, index: usize, info: &PartInfo) -> Result<Box<dyn Read + '_>> {
        let d = self
            .layers
            .get(index + 1)
            .with_context(|| format!("delta artifact has no layer for part {index}"))?
            .clone();
        let want = format!("sha256:{}", Checksum(info.sha256).to_hex());
        if d.size != info.size || d.digest != want {
            bail!(
                "delta artifact layer {} ({} bytes) does not match part {index} ({want}, {} bytes)",
                d.digest,
                d.size,
                info.size
            );
        }
        self.source.open_blob(&d)
    }
}

/// The delta artifact attached to `target_digest` that starts from `booted_digest`, if any.
pub fn find_delta(
    source: &mut dyn ImageSource,
    target_digest: &str,
    booted_digest: &str,
) -> Result<Option<Manifest>> {
    let refs = source
        .referrers(target_digest, ARTIFACT_TYPE)
        .with_context(|| format!("listing deltas referring to {target_digest}"))?;
    for desc in refs.into_iter().take(MAX_CANDIDATES) {
        if desc
            .artifact_type
            .as_deref()
            .is_some_and(|t| t != ARTIFACT_TYPE)
        {
            continue;
        }
        if desc
            .annotations
            .get(ANNOTATION_FROM)
            .is_some_and(|f| f != booted_digest)
        {
            continue;
        }
        let mut bytes = Vec::new();
        source
            .open_blob(&desc)
            .and_then(|r| {
                r.take(MAX_MANIFEST_SIZE + 1)
                    .read_to_end(&mut bytes)
                    .context("reading")
            })
            .with_context(|| format!("reading delta artifact {}", desc.digest))?;
        if bytes.len() as u64 > MAX_MANIFEST_SIZE {
            log::warn!(
                "ignoring delta artifact {}: manifest too large",
                desc.digest
            );
            continue;
        }
        let m: Manifest = match serde_json::from_slice(&bytes) {
            Ok(m) => m,
            Err(e) => {
                log::warn!("ignoring delta artifact {}: {e}", desc.digest);
                continue;
            }
        };
        let subject_ok = m
            .subject
            .as_ref()
            .is_some_and(|s| s.digest == target_digest);
        let from_ok = m.annotations.get(ANNOTATION_FROM).map(String::as_str) == Some(booted_digest);
        if subject_ok && from_ok && !m.layers.is_empty() {
            return Ok(Some(m));
        }
    }
    Ok(None)
}

/// Update hook: if the image `target_digest` has a delta from the booted image, apply it on top
/// of `booted_commit` and return what was done; `Ok(None)` when there is no such delta. On
/// error the caller falls back to pulling the layers. The caller still checks the new commit's
/// content checksum against the signed release statement before deploying it.
pub fn apply_from_source(
    repo: &Repo,
    source: &mut dyn ImageSource,
    target_digest: &str,
    booted_digest: &str,
    booted_commit: &Checksum,
) -> Result<Option<Applied>> {
    let Some(m) = find_delta(source, target_digest, booted_digest)? else {
        return Ok(None);
    };
    let mut store = ArtifactStore {
        source,
        layers: m.layers,
    };
    apply(repo, &mut store, booted_commit)
        .with_context(|| format!("applying the delta {booted_digest} → {target_digest}"))
        .map(Some)
}
