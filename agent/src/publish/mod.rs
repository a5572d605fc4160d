//! Publisher side (cargo feature `publish`, binary `otter-publish`): key generation, signing
//! release statements, attaching them to images in OCI layouts and registries, verifying, and
//! exporting a signed image for offline media.
//!
//! Never part of the device build: it links the `minisign` crate (secret keys, scrypt).

pub mod keys;
pub mod layout;
pub mod registry;

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::verify::artifact::{OCI_INDEX_MEDIA_TYPE, OCI_MANIFEST_MEDIA_TYPE};
use crate::verify::{ArtifactDescriptor, ArtifactStore};

/// Where an image lives, as far as the publisher needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `oci:DIR[:TAG]`
    Layout { dir: PathBuf, tag: Option<String> },
    /// `docker://HOST/REPO[:TAG|@DIGEST]` (or without `docker://`)
    Registry {
        host: String,
        repo: String,
        reference: String,
    },
}

impl std::str::FromStr for Target {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Target> {
        if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((d, t)) if !t.contains('/') && !t.is_empty() => (d, Some(t.to_string())),
                _ => (rest, None),
            };
            if dir.is_empty() {
                bail!("{s:?}: empty directory in oci:DIR[:TAG]");
            }
            return Ok(Target::Layout {
                dir: PathBuf::from(dir),
                tag,
            });
        }
        if s.starts_with("oci-archive:") {
            bail!(
                "{s:?}: oci-archive images cannot carry an attached signature in place; extract \
                 the archive to a directory and use oci:DIR[:TAG]"
            );
        }
        let rest = s.strip_prefix("docker://").unwrap_or(s);
        let (host, path) = rest
            .split_once('/')
            .with_context(|| format!("{s:?} is not oci:DIR[:TAG] or docker://HOST/REPO[:TAG]"))?;
        let (repo, reference) = if let Some((r, d)) = path.split_once('@') {
            (r, d.to_string())
        } else {
            match path.rsplit_once(':') {
                Some((r, t)) if !t.contains('/') => (r, t.to_string()),
                _ => (path, "latest".to_string()),
            }
        };
        if host.is_empty() || repo.is_empty() {
            bail!("{s:?}: missing registry host or repository");
        }
        Ok(Target::Registry {
            host: host.into(),
            repo: repo.into(),
            reference,
        })
    }
}

/// An opened image: where release artifacts are attached and found.
pub enum Store {
    Layout(layout::OciLayout, Option<String>),
    Registry(registry::Registry, String),
}

impl Store {
    pub fn open(target: &Target, plain_http: bool) -> Result<Store> {
        Ok(match target {
            Target::Layout { dir, tag } => {
                Store::Layout(layout::OciLayout::open(dir)?, tag.clone())
            }
            Target::Registry {
                host,
                repo,
                reference,
            } => Store::Registry(
                registry::Registry::new(host, repo, plain_http),
                reference.clone(),
            ),
        })
    }

    /// The descriptor of the image manifest the reference names. Image indexes are refused:
    /// devices verify the platform manifest they resolve, so sign each platform manifest.
    pub fn subject(&mut self) -> Result<ArtifactDescriptor> {
        let desc = match self {
            Store::Layout(l, tag) => l.resolve(tag.as_deref())?,
            Store::Registry(r, reference) => {
                let reference = reference.clone();
                r.resolve(&reference)?
            }
        };
        if desc.media_type == OCI_INDEX_MEDIA_TYPE
            || desc.media_type == "application/vnd.docker.distribution.manifest.list.v2+json"
        {
            bail!(
                "the reference names an image index ({}); sign each platform manifest by digest \
                 (IMAGE@sha256:…) instead",
                desc.digest
            );
        }
        Ok(desc)
    }

    pub fn attach(
        &mut self,
        subject: &ArtifactDescriptor,
        statement: &[u8],
        signature: &[u8],
    ) -> Result<ArtifactDescriptor> {
        match self {
            Store::Layout(l, _) => l.attach(subject, statement, signature),
            Store::Registry(r, _) => r.attach(subject, statement, signature),
        }
    }

    pub fn artifacts(&mut self) -> &mut dyn ArtifactStore {
        match self {
            Store::Layout(l, _) => l,
            Store::Registry(r, _) => r,
        }
    }
}

/// The `org.opencontainers.image.version` label of the image `subject`, if any.
pub fn image_version(
    store: &mut dyn ArtifactStore,
    subject: &ArtifactDescriptor,
) -> Result<Option<String>> {
    if subject.media_type != OCI_MANIFEST_MEDIA_TYPE
        && subject.media_type != "application/vnd.docker.distribution.manifest.v2+json"
    {
        bail!(
            "{} has unsupported manifest media type {}",
            subject.digest,
            subject.media_type
        );
    }
    let manifest = crate::verify::read_capped(store, subject, 4 << 20)?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&manifest).context("image manifest is not JSON")?;
    let config: ArtifactDescriptor = serde_json::from_value(manifest["config"].clone())
        .context("image manifest has no valid config descriptor")?;
    let config = crate::verify::read_capped(store, &config, 4 << 20)?;
    let config: serde_json::Value =
        serde_json::from_slice(&config).context("image config is not JSON")?;
    Ok(
        config["config"]["Labels"]["org.opencontainers.image.version"]
            .as_str()
            .map(String::from),
    )
}

/// Read everything from `r` (small blobs only).
pub fn read_all(mut r: impl Read, max: u64) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    (&mut r).take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        bail!("more than {max} bytes");
    }
    Ok(buf)
}

/// Options of [`sign`].
#[derive(Debug, Clone, Default)]
pub struct SignOptions {
    /// Release version; default: the image's `org.opencontainers.image.version` label.
    pub version: Option<String>,
    pub board: Option<String>,
    /// Release time; default: now.
    pub timestamp: Option<u64>,
    /// Content checksum to sign instead of importing the image to compute it.
    pub content_checksum: Option<String>,
    pub plain_http: bool,
}

/// What [`sign`] produced.
#[derive(Debug, Clone)]
pub struct Signed {
    pub statement: crate::verify::ReleaseStatement,
    pub artifact: ArtifactDescriptor,
}

/// Sign `image` with the secret key at `key` and attach the release artifact to it.
pub fn sign(image: &str, key: &std::path::Path, opts: &SignOptions) -> Result<Signed> {
    let sk = keys::load_secret_key(key)?;
    let target: Target = image.parse()?;
    let mut store = Store::open(&target, opts.plain_http)?;
    let subject = store.subject()?;
    let version = match &opts.version {
        Some(v) => v.clone(),
        None => image_version(store.artifacts(), &subject)?.with_context(|| {
            format!("{image} has no org.opencontainers.image.version label: pass --version")
        })?,
    };
    let content_checksum = match &opts.content_checksum {
        Some(c) => c.to_ascii_lowercase(),
        None => content_checksum(image, opts.plain_http)
            .with_context(|| format!("cannot compute the content checksum of {image}"))?,
    };
    let timestamp = match opts.timestamp {
        Some(t) => t,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("system clock is before 1970")?
            .as_secs(),
    };
    let statement = crate::verify::ReleaseStatement {
        manifest_digest: subject.digest.clone(),
        content_checksum,
        version,
        timestamp,
        board: opts.board.clone(),
        import_rules: crate::verify::LOCAL_IMPORT_RULES,
    };
    let (stmt_bytes, sig_bytes) = keys::sign_statement(&sk, &statement)?;
    let artifact = store
        .attach(&subject, &stmt_bytes, &sig_bytes)
        .with_context(|| format!("cannot attach the signature to {image}"))?;
    Ok(Signed {
        statement,
        artifact,
    })
}

/// The ostree content checksum a correct import of `image` produces: the layers are imported
/// with [`crate::import`] into a temporary bare-user repository (under `$TMPDIR`, removed
/// afterwards), exactly as a device imports them.
pub fn content_checksum(image: &str, plain_http: bool) -> Result<String> {
    let reference: crate::source::ImageRef = image.parse()?;
    let work = TempDir::new("otter-publish")?;
    let mut opts = crate::source::SourceOptions {
        blob_dir: work.path.join("blobs"),
        ..Default::default()
    };
    if let (true, crate::source::ImageRef::Registry { host, .. }) = (plain_http, &reference) {
        opts.insecure_hosts.push(host.clone());
    }
    let mut src = crate::source::open(&reference, &opts)?;
    let resolved = src.resolve()?;
    let repo =
        crate::ostree::Repo::init(&work.path.join("repo"), crate::ostree::RepoMode::BareUser)?;
    let mut importer = crate::import::Importer::new(&repo);
    for layer in &resolved.manifest.layers {
        let mut reader = src.open_blob(layer)?;
        importer
            .apply_layer(&layer.media_type, &mut reader)
            .with_context(|| format!("cannot import layer {}", layer.digest))?;
    }
    let imported = importer.commit(&format!("otter-publish {image}"), Vec::new(), None)?;
    Ok(imported.content_checksum.to_hex())
}

/// A scratch directory removed on drop.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(prefix: &str) -> Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&path)
            .with_context(|| format!("cannot create scratch directory {}", path.display()))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Verify the release artifact of `image` with the public key file (or directory of `*.pub`
/// files) `key`.
pub fn verify(
    image: &str,
    key: &std::path::Path,
    board: Option<String>,
    plain_http: bool,
) -> Result<crate::verify::ReleaseStatement> {
    let target: Target = image.parse()?;
    let mut store = Store::open(&target, plain_http)?;
    let subject = store.subject()?;
    let policy = crate::verify::TrustPolicy {
        key_dirs: vec![key.to_path_buf()],
        board,
        ..Default::default()
    };
    let keys = if key.is_dir() {
        policy.load_keys()?
    } else {
        crate::verify::TrustedKeys::from_keys(vec![crate::verify::TrustedKey::from_file(key)?])
    };
    crate::verify::verify_with_keys(store.artifacts(), &subject.digest, &keys, &policy)
}

/// Copy `image` and its release artifacts into the OCI layout `dir` (created if needed), for
/// offline media. The image is tagged with its source tag (or `latest`).
pub fn export(image: &str, dir: &std::path::Path, plain_http: bool) -> Result<ArtifactDescriptor> {
    let target: Target = image.parse()?;
    let tag = match &target {
        Target::Layout { tag, .. } => tag.clone(),
        Target::Registry { reference, .. } if !reference.contains(':') => Some(reference.clone()),
        Target::Registry { .. } => None,
    }
    .unwrap_or_else(|| "latest".to_string());
    let mut store = Store::open(&target, plain_http)?;
    let subject = store.subject()?;
    let dest = layout::OciLayout::create(dir)?;
    let src = store.artifacts();
    let manifest = crate::verify::read_capped(src, &subject, 4 << 20)?;
    let m: serde_json::Value =
        serde_json::from_slice(&manifest).context("image manifest is not JSON")?;
    let mut blobs: Vec<ArtifactDescriptor> = Vec::new();
    blobs.push(serde_json::from_value(m["config"].clone()).context("manifest has no config")?);
    for l in m["layers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        blobs.push(serde_json::from_value(l.clone()).context("malformed layer descriptor")?);
    }
    for b in &blobs {
        dest.copy_blob(src, b)?;
    }
    dest.write_blob(&manifest)?;
    let mut entry = layout::plain(&subject);
    entry
        .annotations
        .insert("org.opencontainers.image.ref.name".into(), tag);
    dest.add_index_entry(&entry)?;
    let found = crate::verify::find_statements(src, &subject.digest)?;
    if found.is_empty() {
        bail!(
            "{image} has no release signature to export (sign it with `otter-publish sign`); \
             the image was copied to {}",
            dir.display()
        );
    }
    for f in found {
        dest.attach(&subject, &f.statement, &f.signature)?;
    }
    Ok(subject)
}
