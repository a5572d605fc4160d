//! OCI image layout sources: a directory (`oci:DIR`) and a tar of one (`oci-archive:FILE`, read in
//! place by seeking, with an offset index built once).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::digest::{sha256_hex, verify_bytes, VerifyingReader};
use super::oci::{
    self, check_image_manifest, parse_config, parse_manifest_or_index, select_platform, Descriptor,
    Index, Manifest, ManifestKind, Platform, ANNOTATION_REF_NAME, MAX_CONFIG_SIZE,
    MAX_MANIFEST_SIZE,
};
use super::{ImageRef, ImageSource, ResolvedImage, SourceOptions};

/// Largest `index.json` we read.
const MAX_INDEX_JSON_SIZE: u64 = MAX_MANIFEST_SIZE;
/// Most tar entries an oci-archive may have (blobs + 2 files; a real image has dozens).
const MAX_ARCHIVE_ENTRIES: usize = 100_000;

/// Where the files of a layout live.
trait LayoutStore {
    /// Human name for errors: the directory or archive path.
    fn describe(&self) -> String;
    /// Open a file by its path inside the layout (`index.json`, `blobs/sha256/<hex>`); None if absent.
    fn open(&self, rel: &str) -> Result<Option<(Box<dyn Read + '_>, u64)>>;
}

struct DirStore {
    root: PathBuf,
}

impl LayoutStore for DirStore {
    fn describe(&self) -> String {
        format!("OCI layout {}", self.root.display())
    }

    fn open(&self, rel: &str) -> Result<Option<(Box<dyn Read + '_>, u64)>> {
        let path = self.root.join(rel);
        match File::open(&path) {
            Ok(f) => {
                let len = f
                    .metadata()
                    .with_context(|| format!("reading metadata of {}", path.display()))?
                    .len();
                Ok(Some((Box::new(f), len)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("opening {}", path.display())),
        }
    }
}

/// An oci-archive: the tar file plus where each regular file's data starts.
struct ArchiveStore {
    path: PathBuf,
    entries: HashMap<String, (u64, u64)>,
}

impl ArchiveStore {
    fn open(path: &Path) -> Result<ArchiveStore> {
        let file =
            File::open(path).with_context(|| format!("opening oci-archive {}", path.display()))?;
        let mut archive = tar::Archive::new(file);
        let mut entries = HashMap::new();
        let iter = archive
            .entries_with_seek()
            .with_context(|| format!("reading tar {}", path.display()))?;
        for entry in iter {
            let entry = entry.with_context(|| format!("reading tar {}", path.display()))?;
            if entries.len() >= MAX_ARCHIVE_ENTRIES {
                bail!(
                    "oci-archive {} has more than {MAX_ARCHIVE_ENTRIES} entries",
                    path.display()
                );
            }
            if entry.header().entry_type() != tar::EntryType::Regular
                && entry.header().entry_type() != tar::EntryType::Continuous
            {
                continue;
            }
            let name = entry
                .path()
                .with_context(|| format!("bad entry name in tar {}", path.display()))?
                .to_string_lossy()
                .into_owned();
            let name = normalize(&name);
            entries.insert(name, (entry.raw_file_position(), entry.size()));
        }
        Ok(ArchiveStore {
            path: path.to_path_buf(),
            entries,
        })
    }
}

fn normalize(name: &str) -> String {
    name.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

impl LayoutStore for ArchiveStore {
    fn describe(&self) -> String {
        format!("oci-archive {}", self.path.display())
    }

    fn open(&self, rel: &str) -> Result<Option<(Box<dyn Read + '_>, u64)>> {
        let Some(&(offset, size)) = self.entries.get(rel) else {
            return Ok(None);
        };
        let mut f = File::open(&self.path)
            .with_context(|| format!("opening oci-archive {}", self.path.display()))?;
        f.seek(SeekFrom::Start(offset))
            .with_context(|| format!("seeking to {rel} in {}", self.path.display()))?;
        Ok(Some((Box::new(f.take(size)), size)))
    }
}

/// An image source over a layout store.
pub(crate) struct LayoutSource {
    reference: ImageRef,
    tag: Option<String>,
    store: Box<dyn LayoutStore + Send>,
    platform: Platform,
}

pub(crate) fn open_dir(
    reference: &ImageRef,
    path: &Path,
    tag: Option<&str>,
    opts: &SourceOptions,
) -> Result<LayoutSource> {
    if !path.is_dir() {
        bail!("OCI layout {} is not a directory", path.display());
    }
    let store = DirStore {
        root: path.to_path_buf(),
    };
    LayoutSource::new(reference, tag, Box::new(store), opts)
}

pub(crate) fn open_archive(
    reference: &ImageRef,
    path: &Path,
    tag: Option<&str>,
    opts: &SourceOptions,
) -> Result<LayoutSource> {
    let store = ArchiveStore::open(path)?;
    LayoutSource::new(reference, tag, Box::new(store), opts)
}

impl LayoutSource {
    fn new(
        reference: &ImageRef,
        tag: Option<&str>,
        store: Box<dyn LayoutStore + Send>,
        opts: &SourceOptions,
    ) -> Result<LayoutSource> {
        let platform = match &opts.platform {
            Some(p) => Platform::parse(p)?,
            None => Platform::host(),
        };
        let src = LayoutSource {
            reference: reference.clone(),
            tag: tag.map(str::to_string),
            store,
            platform,
        };
        src.check_layout_file()?;
        Ok(src)
    }

    fn check_layout_file(&self) -> Result<()> {
        let bytes = self.read_small("oci-layout", 4096)?.with_context(|| {
            format!(
                "{} has no oci-layout file: not an OCI image layout",
                self.store.describe()
            )
        })?;
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct LayoutFile {
            image_layout_version: String,
        }
        let l: LayoutFile = serde_json::from_slice(&bytes)
            .with_context(|| format!("malformed oci-layout file in {}", self.store.describe()))?;
        if !l.image_layout_version.starts_with("1.") {
            bail!(
                "{}: unsupported imageLayoutVersion {:?}",
                self.store.describe(),
                l.image_layout_version
            );
        }
        Ok(())
    }

    /// Read a whole small file, refusing more than `cap` bytes.
    fn read_small(&self, rel: &str, cap: u64) -> Result<Option<Vec<u8>>> {
        let Some((r, len)) = self.store.open(rel)? else {
            return Ok(None);
        };
        if len > cap {
            bail!(
                "{rel} in {} is {len} bytes, more than the {cap} byte limit",
                self.store.describe()
            );
        }
        let mut buf = Vec::with_capacity(len as usize);
        r.take(cap + 1)
            .read_to_end(&mut buf)
            .with_context(|| format!("reading {rel} in {}", self.store.describe()))?;
        Ok(Some(buf))
    }

    fn blob_path(digest: &str) -> Result<String> {
        Ok(format!("blobs/sha256/{}", sha256_hex(digest)?))
    }

    /// Read and verify a small blob (manifest, config) against its descriptor.
    fn read_blob(&self, desc: &Descriptor, cap: u64, what: &str) -> Result<Vec<u8>> {
        if desc.size > cap {
            bail!(
                "{what} {} is {} bytes, more than the {cap} byte limit",
                desc.digest,
                desc.size
            );
        }
        let rel = Self::blob_path(&desc.digest)?;
        let bytes = self.read_small(&rel, cap)?.with_context(|| {
            format!(
                "{what} {} is missing from {} (the layout is incomplete)",
                desc.digest,
                self.store.describe()
            )
        })?;
        verify_bytes(what, &bytes, &desc.digest, Some(desc.size))
            .with_context(|| format!("in {}", self.store.describe()))?;
        Ok(bytes)
    }

    fn index(&self) -> Result<Index> {
        let bytes = self
            .read_small("index.json", MAX_INDEX_JSON_SIZE)?
            .with_context(|| format!("{} has no index.json", self.store.describe()))?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("malformed index.json in {}", self.store.describe()))
    }

    /// Read a manifest-or-index blob.
    fn read_manifest(&self, desc: &Descriptor) -> Result<(ManifestKind, Vec<u8>)> {
        let bytes = self.read_blob(desc, MAX_MANIFEST_SIZE, "manifest")?;
        let kind = parse_manifest_or_index(&bytes, Some(&desc.media_type))
            .with_context(|| format!("manifest {} in {}", desc.digest, self.store.describe()))?;
        Ok((kind, bytes))
    }

    /// The index.json entry the reference names.
    fn select_entry(&self, index: &Index) -> Result<Descriptor> {
        let tags: Vec<&str> = index
            .manifests
            .iter()
            .filter_map(|e| {
                e.descriptor
                    .annotations
                    .get(ANNOTATION_REF_NAME)
                    .map(String::as_str)
            })
            .collect();
        if let Some(tag) = &self.tag {
            return index
                .manifests
                .iter()
                .find(|e| e.descriptor.annotations.get(ANNOTATION_REF_NAME) == Some(tag))
                .map(|e| e.descriptor.clone())
                .with_context(|| {
                    format!(
                        "{} has no image tagged {tag:?}; tags: {}",
                        self.store.describe(),
                        if tags.is_empty() {
                            "none".to_string()
                        } else {
                            tags.join(", ")
                        }
                    )
                });
        }
        // No tag: the layout must hold a single image. Artifacts (signatures, deltas: manifests
        // with a subject or an artifactType) and referrers-tag indexes do not count.
        let mut images = Vec::new();
        for e in &index.manifests {
            let d = &e.descriptor;
            if d.artifact_type.is_some()
                || d.annotations
                    .get(ANNOTATION_REF_NAME)
                    .is_some_and(|t| t.starts_with("sha256-"))
                || !oci::is_manifest_media_type(&d.media_type)
            {
                continue;
            }
            if let Ok((ManifestKind::Manifest(m), _)) = self.read_manifest(d) {
                if m.subject.is_some() || m.artifact_type.is_some() {
                    continue;
                }
            }
            images.push(d.clone());
        }
        match images.len() {
            1 => Ok(images.remove(0)),
            0 => bail!("{} contains no image", self.store.describe()),
            n => bail!(
                "{} contains {n} images; name one with a tag (oci:DIR:TAG); tags: {}",
                self.store.describe(),
                if tags.is_empty() {
                    "none".to_string()
                } else {
                    tags.join(", ")
                }
            ),
        }
    }

    /// Follow indexes down to the image manifest for our platform.
    fn resolve_manifest(&self, mut desc: Descriptor) -> Result<(Descriptor, Manifest, Vec<u8>)> {
        for _ in 0..oci::MAX_INDEX_DEPTH {
            let (kind, bytes) = self.read_manifest(&desc)?;
            match kind {
                ManifestKind::Manifest(m) => return Ok((desc, m, bytes)),
                ManifestKind::Index(i) => {
                    desc = select_platform(&i, &self.platform)
                        .with_context(|| {
                            format!("image index {} in {}", desc.digest, self.store.describe())
                        })?
                        .clone();
                }
            }
        }
        bail!(
            "image indexes nested deeper than {} levels",
            oci::MAX_INDEX_DEPTH
        )
    }
}

impl ImageSource for LayoutSource {
    fn resolve(&mut self) -> Result<ResolvedImage> {
        let index = self.index()?;
        let entry = self.select_entry(&index)?;
        let (desc, manifest, manifest_bytes) = self.resolve_manifest(entry)?;
        check_image_manifest(&manifest)
            .with_context(|| format!("manifest {} in {}", desc.digest, self.store.describe()))?;
        let config_bytes = self.read_blob(&manifest.config, MAX_CONFIG_SIZE, "image config")?;
        let config = parse_config(&config_bytes)
            .with_context(|| format!("image config {}", manifest.config.digest))?;
        Ok(ResolvedImage {
            reference: self.reference.clone(),
            manifest_digest: desc.digest,
            config_digest: manifest.config.digest.clone(),
            manifest,
            manifest_bytes,
            config,
        })
    }

    fn open_blob(&mut self, desc: &Descriptor) -> Result<Box<dyn Read + '_>> {
        let rel = Self::blob_path(&desc.digest)?;
        let (r, len) = self.store.open(&rel)?.with_context(|| {
            format!(
                "blob {} is missing from {} (the layout is incomplete)",
                desc.digest,
                self.store.describe()
            )
        })?;
        if len != desc.size {
            return Err(super::VerificationError::new(format!(
                "blob {} in {} is {len} bytes, the manifest says {}",
                desc.digest,
                self.store.describe(),
                desc.size
            ))
            .into());
        }
        Ok(Box::new(VerifyingReader::new(r, &desc.digest, desc.size)))
    }

    fn referrers(&mut self, manifest_digest: &str, artifact_type: &str) -> Result<Vec<Descriptor>> {
        sha256_hex(manifest_digest)?;
        let index = self.index()?;
        let mut out: Vec<Descriptor> = Vec::new();
        let consider = |d: &Descriptor, out: &mut Vec<Descriptor>| -> Result<()> {
            if !oci::is_manifest_media_type(&d.media_type)
                || d.artifact_type
                    .as_deref()
                    .is_some_and(|t| t != artifact_type)
                || out.iter().any(|o| o.digest == d.digest)
            {
                return Ok(());
            }
            let (kind, _) = self.read_manifest(d)?;
            if let ManifestKind::Manifest(m) = kind {
                let refers = m
                    .subject
                    .as_ref()
                    .is_some_and(|s| s.digest == manifest_digest);
                if refers && m.effective_artifact_type() == artifact_type {
                    let mut d = d.clone();
                    d.artifact_type = Some(artifact_type.to_string());
                    if d.annotations.is_empty() {
                        d.annotations = m.annotations.clone();
                    }
                    out.push(d);
                }
            }
            Ok(())
        };
        let fallback_tag = format!("sha256-{}", sha256_hex(manifest_digest)?);
        for e in &index.manifests {
            let d = &e.descriptor;
            // a referrers-tag index copied into the layout
            if d.annotations.get(ANNOTATION_REF_NAME) == Some(&fallback_tag) {
                if let (ManifestKind::Index(i), _) = self.read_manifest(d)? {
                    for r in &i.manifests {
                        if self
                            .store
                            .open(&Self::blob_path(&r.descriptor.digest)?)?
                            .is_some()
                        {
                            consider(&r.descriptor, &mut out)?;
                        }
                    }
                }
                continue;
            }
            consider(d, &mut out)?;
        }
        Ok(out)
    }
}
