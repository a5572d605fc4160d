//! Release artifacts in an OCI image layout directory (`oci:DIR[:TAG]`).
//!
//! Attaching writes the statement, signature, empty config and artifact manifest into
//! `blobs/sha256/` and adds a descriptor for the artifact manifest (with `artifactType`, no
//! `org.opencontainers.image.ref.name`, so tools listing tags do not see it) to `index.json`,
//! which is rewritten atomically. Finding walks `index.json` for entries of the artifact type
//! and keeps those whose manifest's `subject` is the image.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::keys::write_atomic;
use crate::verify::artifact::{sha256_digest, MAX_ARTIFACT_MANIFEST_SIZE, OCI_MANIFEST_MEDIA_TYPE};
use crate::verify::{ArtifactDescriptor, ArtifactManifest, ArtifactStore};

/// Largest `index.json` read.
pub const MAX_INDEX_SIZE: u64 = 16 * 1024 * 1024;
const REF_NAME: &str = "org.opencontainers.image.ref.name";

pub struct OciLayout {
    root: PathBuf,
}

impl OciLayout {
    pub fn open(root: &Path) -> Result<OciLayout> {
        let marker = root.join("oci-layout");
        if !marker.is_file() {
            bail!(
                "{} is not an OCI image layout (no oci-layout file); create one with \
                 `skopeo copy … oci:{}:TAG`",
                root.display(),
                root.display()
            );
        }
        Ok(OciLayout {
            root: root.to_path_buf(),
        })
    }

    /// Open `root`, creating an empty layout there if it does not exist yet.
    pub fn create(root: &Path) -> Result<OciLayout> {
        if !root.join("oci-layout").is_file() {
            fs::create_dir_all(root.join("blobs").join("sha256"))
                .with_context(|| format!("cannot create {}", root.display()))?;
            if !root.join("index.json").exists() {
                write_atomic(
                    &root.join("index.json"),
                    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
                    0o644,
                )?;
            }
            write_atomic(
                &root.join("oci-layout"),
                br#"{"imageLayoutVersion":"1.0.0"}"#,
                0o644,
            )?;
        }
        Self::open(root)
    }

    /// Stream the blob `desc` from `src` into this layout, checking size and digest; skipped
    /// when present.
    pub fn copy_blob(&self, src: &mut dyn ArtifactStore, desc: &ArtifactDescriptor) -> Result<()> {
        use sha2::{Digest, Sha256};
        use std::io::Write;
        let path = self.blob_path(&desc.digest)?;
        if path.exists() {
            return Ok(());
        }
        let tmp = path.with_extension("partial");
        let mut reader = src.open(desc)?;
        let mut out =
            fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = reader
                .read(&mut buf)
                .with_context(|| format!("cannot read blob {}", desc.digest))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > desc.size {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .with_context(|| format!("cannot write {}", tmp.display()))?;
        }
        let hex: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if total != desc.size || format!("sha256:{hex}") != desc.digest {
            let _ = fs::remove_file(&tmp);
            bail!(
                "blob {} did not match its descriptor (size {total}, expected {})",
                desc.digest,
                desc.size
            );
        }
        out.sync_all()
            .with_context(|| format!("cannot fsync {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("cannot rename {}", tmp.display()))?;
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .with_context(|| format!("unsupported digest {digest:?} (only sha256)"))?;
        Ok(self.root.join("blobs").join("sha256").join(hex))
    }

    fn read_index(&self) -> Result<Value> {
        let path = self.root.join("index.json");
        let f = fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut buf = Vec::new();
        f.take(MAX_INDEX_SIZE + 1)
            .read_to_end(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if buf.len() as u64 > MAX_INDEX_SIZE {
            bail!("{} is larger than {MAX_INDEX_SIZE} bytes", path.display());
        }
        let v: Value = serde_json::from_slice(&buf)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        if !v.get("manifests").is_some_and(Value::is_array) {
            bail!("{} has no \"manifests\" array", path.display());
        }
        Ok(v)
    }

    fn manifests(&self) -> Result<Vec<ArtifactDescriptor>> {
        let index = self.read_index()?;
        let list = index["manifests"].as_array().cloned().unwrap_or_default();
        list.into_iter()
            .map(|m| {
                serde_json::from_value(m)
                    .context("index.json has a malformed descriptor in \"manifests\"")
            })
            .collect()
    }

    /// The image manifest descriptor tagged `tag` (or the only untyped entry when `tag` is
    /// `None`).
    pub fn resolve(&self, tag: Option<&str>) -> Result<ArtifactDescriptor> {
        let images: Vec<ArtifactDescriptor> = self
            .manifests()?
            .into_iter()
            .filter(|d| d.artifact_type.is_none())
            .collect();
        let found: Vec<&ArtifactDescriptor> = match tag {
            Some(t) => images
                .iter()
                .filter(|d| d.annotations.get(REF_NAME).map(String::as_str) == Some(t))
                .collect(),
            None => images.iter().collect(),
        };
        match found.as_slice() {
            [one] => Ok((*one).clone()),
            [] => bail!(
                "no image {} in {}",
                tag.map_or("entry".to_string(), |t| format!("tagged {t:?}")),
                self.root.display()
            ),
            _ => bail!(
                "{} holds several images: name one as oci:{}:TAG",
                self.root.display(),
                self.root.display()
            ),
        }
    }

    /// Store `bytes` as a blob (atomic; no-op if present) and return its digest.
    pub fn write_blob(&self, bytes: &[u8]) -> Result<String> {
        let digest = sha256_digest(bytes);
        let path = self.blob_path(&digest)?;
        if !path.exists() {
            let dir = self.root.join("blobs").join("sha256");
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            write_atomic(&path, bytes, 0o644)?;
        }
        Ok(digest)
    }

    /// Read a blob fully (bounded by `max`).
    pub fn read_blob(&self, digest: &str, max: u64) -> Result<Vec<u8>> {
        let path = self.blob_path(digest)?;
        let f = fs::File::open(&path)
            .with_context(|| format!("cannot open blob {}", path.display()))?;
        let mut buf = Vec::new();
        f.take(max + 1)
            .read_to_end(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if buf.len() as u64 > max {
            bail!("blob {} is larger than {max} bytes", path.display());
        }
        Ok(buf)
    }

    /// Add `desc` to `index.json` (unless an entry with that digest exists); atomic rewrite.
    pub fn add_index_entry(&self, desc: &ArtifactDescriptor) -> Result<bool> {
        let mut index = self.read_index()?;
        let list = index["manifests"]
            .as_array_mut()
            .context("index.json has no \"manifests\" array")?;
        if list
            .iter()
            .any(|m| m.get("digest").and_then(Value::as_str) == Some(&desc.digest))
        {
            return Ok(false);
        }
        list.push(serde_json::to_value(desc)?);
        let bytes = serde_json::to_vec(&index)?;
        write_atomic(&self.root.join("index.json"), &bytes, 0o644)?;
        Ok(true)
    }

    /// Attach a release artifact (statement + signature) to the image `subject`.
    /// Returns the artifact manifest descriptor.
    pub fn attach(
        &self,
        subject: &ArtifactDescriptor,
        statement: &[u8],
        signature: &[u8],
    ) -> Result<ArtifactDescriptor> {
        let manifest = ArtifactManifest::release(plain(subject), statement, signature);
        let bytes = manifest.to_bytes()?;
        self.write_blob(b"{}")?;
        self.write_blob(statement)?;
        self.write_blob(signature)?;
        self.write_blob(&bytes)?;
        let mut desc = ArtifactDescriptor::for_bytes(OCI_MANIFEST_MEDIA_TYPE, &bytes);
        desc.artifact_type = manifest.artifact_type.clone();
        self.add_index_entry(&desc)?;
        Ok(desc)
    }
}

/// A subject descriptor without annotations/artifactType (a tag name does not belong there).
pub fn plain(d: &ArtifactDescriptor) -> ArtifactDescriptor {
    ArtifactDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        artifact_type: None,
        annotations: Default::default(),
    }
}

impl ArtifactStore for OciLayout {
    fn referrers(
        &mut self,
        manifest_digest: &str,
        artifact_type: &str,
    ) -> Result<Vec<ArtifactDescriptor>> {
        let mut out = Vec::new();
        for d in self.manifests()? {
            if d.artifact_type.as_deref() != Some(artifact_type) {
                continue;
            }
            let Ok(bytes) = self.read_blob(&d.digest, MAX_ARTIFACT_MANIFEST_SIZE) else {
                continue;
            };
            let Ok(m) = serde_json::from_slice::<ArtifactManifest>(&bytes) else {
                continue;
            };
            if m.subject
                .as_ref()
                .is_some_and(|s| s.digest == manifest_digest)
            {
                out.push(d);
            }
        }
        Ok(out)
    }

    fn open(&mut self, desc: &ArtifactDescriptor) -> Result<Box<dyn Read + '_>> {
        let path = self.blob_path(&desc.digest)?;
        let f = fs::File::open(&path)
            .with_context(|| format!("cannot open blob {}", path.display()))?;
        Ok(Box::new(f))
    }
}
