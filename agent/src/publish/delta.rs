//! `otter-publish delta`: compute the delta between two images and attach it to the target
//! image as an OCI artifact (`docs/deltas.md`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{Store, Target, TempDir};
use crate::delta::{self, DeltaSummary};
use crate::ostree::{Checksum, Repo, RepoMode};
use crate::verify::artifact::{
    rfc3339_now, ArtifactManifest, EMPTY_DIGEST, EMPTY_MEDIA_TYPE, OCI_MANIFEST_MEDIA_TYPE,
};
use crate::verify::ArtifactDescriptor;

/// Media type of the superblock layer of a delta artifact.
pub const SUPERBLOCK_MEDIA_TYPE: &str = "application/vnd.otter.delta.superblock.v3";
/// Media type of a part layer of a delta artifact.
pub const PART_MEDIA_TYPE: &str = "application/vnd.otter.delta.part.v2+xz";

/// What [`delta`] did.
#[derive(Debug, Clone)]
pub struct Published {
    pub from_digest: String,
    pub to_digest: String,
    pub summary: DeltaSummary,
    /// The artifact manifest, when it was attached to the target image.
    pub artifact: Option<ArtifactDescriptor>,
}

/// Import `image` into `repo` as a device would (all layers, no metadata that matters here).
fn import(repo: &Repo, image: &str, blobs: &Path, plain_http: bool) -> Result<(Checksum, String)> {
    let reference: crate::source::ImageRef = image.parse()?;
    let mut opts = crate::source::SourceOptions {
        blob_dir: blobs.to_path_buf(),
        ..Default::default()
    };
    if let (true, crate::source::ImageRef::Registry { host, .. }) = (plain_http, &reference) {
        opts.insecure_hosts.push(host.clone());
    }
    let mut src = crate::source::open(&reference, &opts)?;
    let resolved = src
        .resolve()
        .with_context(|| format!("resolving {image}"))?;
    let mut importer = crate::import::Importer::new(repo);
    for layer in &resolved.manifest.layers {
        let mut reader = src.open_blob(layer)?;
        importer
            .apply_layer(&layer.media_type, &mut reader)
            .with_context(|| format!("cannot import layer {} of {image}", layer.digest))?;
    }
    let imported = importer.commit(&format!("otter-publish {image}"), Vec::new(), None)?;
    Ok((imported.commit, resolved.manifest_digest))
}

/// Generate the delta `from` → `to` (both images imported into a scratch repository under
/// `$TMPDIR`) and either write it to the directory `out` (must not exist) or, when `out` is
/// None, attach it to `to` (OCI layout or registry) as an artifact of type
/// [`delta::ARTIFACT_TYPE`].
pub fn delta(from: &str, to: &str, out: Option<&Path>, plain_http: bool) -> Result<Published> {
    let work = TempDir::new("otter-publish-delta")?;
    let repo = Repo::init(&work.path.join("repo"), RepoMode::BareUser)?;
    let blobs = work.path.join("blobs");
    let (a, from_digest) = import(&repo, from, &blobs, plain_http)
        .with_context(|| format!("cannot import the source image {from}"))?;
    let (b, to_digest) = import(&repo, to, &blobs, plain_http)
        .with_context(|| format!("cannot import the target image {to}"))?;
    let dir: PathBuf = match out {
        Some(d) => d.to_path_buf(),
        None => work.path.join("delta"),
    };
    let summary = delta::generate(&repo, &a, &b, &dir)
        .with_context(|| format!("cannot generate the delta {from} → {to}"))?;
    let artifact = match out {
        Some(_) => None,
        None => Some(
            attach(to, &to_digest, &from_digest, &summary, &dir, plain_http)
                .with_context(|| format!("cannot attach the delta to {to}"))?,
        ),
    };
    Ok(Published {
        from_digest,
        to_digest,
        summary,
        artifact,
    })
}

/// Attach the delta in `dir` to the image `to` (whose manifest digest is `to_digest`).
pub fn attach(
    to: &str,
    to_digest: &str,
    from_digest: &str,
    summary: &DeltaSummary,
    dir: &Path,
    plain_http: bool,
) -> Result<ArtifactDescriptor> {
    let target: Target = to.parse()?;
    let mut store = Store::open(&target, plain_http)?;
    let subject = store.subject()?;
    if subject.digest != to_digest {
        bail!(
            "{to} now names {} but the delta was made for {to_digest}; run again",
            subject.digest
        );
    }
    let mut files = vec![(SUPERBLOCK_MEDIA_TYPE, dir.join(delta::SUPERBLOCK_NAME))];
    for i in 0..summary.parts {
        files.push((PART_MEDIA_TYPE, dir.join(delta::part_name(i))));
    }
    let mut blobs = Vec::new();
    let mut layers = Vec::new();
    for (media_type, p) in &files {
        // Parts are bounded by the generator's part size (8 MiB of stream; a single larger
        // file gets a part of its own).
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        layers.push(ArtifactDescriptor::for_bytes(media_type, &bytes));
        blobs.push(bytes);
    }
    let mut annotations = std::collections::BTreeMap::new();
    annotations.insert(delta::ANNOTATION_FROM.to_string(), from_digest.to_string());
    let hex = |c: Option<Checksum>| c.map(|c| c.to_hex()).unwrap_or_default();
    annotations.insert(
        delta::ANNOTATION_FROM_CONTENT.to_string(),
        hex(summary.from),
    );
    annotations.insert(delta::ANNOTATION_TO_CONTENT.to_string(), hex(summary.to));
    annotations.insert(
        "org.opencontainers.image.created".to_string(),
        rfc3339_now(),
    );
    let manifest = ArtifactManifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST_MEDIA_TYPE.to_string()),
        artifact_type: Some(delta::ARTIFACT_TYPE.to_string()),
        config: ArtifactDescriptor {
            media_type: EMPTY_MEDIA_TYPE.to_string(),
            digest: EMPTY_DIGEST.to_string(),
            size: 2,
            artifact_type: None,
            annotations: Default::default(),
        },
        layers,
        subject: Some(super::layout::plain(&subject)),
        annotations: annotations.clone(),
    };
    let bytes = manifest.to_bytes()?;
    let mut desc = ArtifactDescriptor::for_bytes(OCI_MANIFEST_MEDIA_TYPE, &bytes);
    desc.artifact_type = Some(delta::ARTIFACT_TYPE.to_string());
    // The index entry / referrers descriptor carries the annotations, so devices can pick the
    // right delta without reading every manifest.
    desc.annotations = annotations;
    desc.annotations.remove("org.opencontainers.image.created");
    let mut all: Vec<&[u8]> = vec![b"{}"];
    all.extend(blobs.iter().map(Vec::as_slice));
    store.attach_artifact(&subject, &all, &bytes, &desc)?;
    Ok(desc)
}
