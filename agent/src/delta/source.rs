//! Deltas published as OCI artifacts next to the image (the device-side hook for `update`).
//!
//! A delta artifact is an OCI manifest with `artifactType` [`ARTIFACT_TYPE`], `subject` = the
//! target image's manifest, annotations [`ANNOTATION_FROM`] = the manifest digest of the image it
//! starts from and [`ANNOTATION_FROM_CONTENT`] = that image's tree (content checksum), and as
//! layers the superblock followed by the parts in order.

use std::io::Read;

use anyhow::{bail, Context, Result};

use super::apply::{apply, Applied, DeltaStore};
use super::format::PartInfo;
use super::{ANNOTATION_FROM, ANNOTATION_FROM_CONTENT, ARTIFACT_TYPE};
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

/// Whether a delta's annotations say it starts from this device's image: the tree
/// ([`ANNOTATION_FROM_CONTENT`]) when present, else the manifest digest ([`ANNOTATION_FROM`]).
/// The superblock's `from` is what is finally checked.
fn starts_here(
    annotations: &std::collections::BTreeMap<String, String>,
    booted_digest: &str,
    booted_content: &str,
) -> bool {
    match annotations.get(ANNOTATION_FROM_CONTENT) {
        Some(c) => c.eq_ignore_ascii_case(booted_content),
        None => annotations.get(ANNOTATION_FROM).map(String::as_str) == Some(booted_digest),
    }
}

/// The delta artifact attached to `target_digest` that starts from the device's image
/// (`booted_digest`, tree `booted_content` in hex), if any.
pub fn find_delta(
    source: &mut dyn ImageSource,
    target_digest: &str,
    booted_digest: &str,
    booted_content: &str,
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
        let annotated = desc.annotations.contains_key(ANNOTATION_FROM)
            || desc.annotations.contains_key(ANNOTATION_FROM_CONTENT);
        if annotated && !starts_here(&desc.annotations, booted_digest, booted_content) {
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
        let from_ok = starts_here(&m.annotations, booted_digest, booted_content);
        if subject_ok && from_ok && !m.layers.is_empty() {
            return Ok(Some(m));
        }
    }
    Ok(None)
}

/// Bytes a device downloads to apply the delta `m` (superblock + parts).
pub fn delta_size(m: &Manifest) -> u64 {
    m.layers.iter().map(|l| l.size).sum()
}

/// Update hook: if the image `target_digest` has a delta from the device's image
/// (`booted_digest`, imported as `booted_commit`), rebuild its tree on top of `booted_commit`
/// and return what was done; `Ok(None)` when there is no such delta. On error the caller falls
/// back to pulling the layers. The caller still checks the tree's content checksum against the
/// signed release statement and writes the commit.
pub fn apply_from_source(
    repo: &Repo,
    source: &mut dyn ImageSource,
    target_digest: &str,
    booted_digest: &str,
    booted_commit: &Checksum,
) -> Result<Option<Applied>> {
    let booted_content = repo
        .read_commit(booted_commit)
        .with_context(|| format!("reading the running commit {booted_commit}"))?
        .content_checksum()
        .to_hex();
    let Some(m) = find_delta(source, target_digest, booted_digest, &booted_content)? else {
        return Ok(None);
    };
    apply_manifest(repo, source, m, booted_commit)
        .with_context(|| format!("applying the delta {booted_digest} → {target_digest}"))
        .map(Some)
}

/// Apply the delta artifact `m` (found with [`find_delta`]) on top of `base`.
pub fn apply_manifest(
    repo: &Repo,
    source: &mut dyn ImageSource,
    m: Manifest,
    base: &Checksum,
) -> Result<Applied> {
    let mut store = ArtifactStore {
        source,
        layers: m.layers,
    };
    apply(repo, &mut store, base)
}
