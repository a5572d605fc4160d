//! OCI image-spec JSON (manifest, index, config) with the Docker v2 schema 2 equivalents, media
//! types, size caps and platform selection. Parsers take bytes; no I/O here.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Largest manifest or index we read (the distribution spec suggests registries cap at 4 MiB).
pub const MAX_MANIFEST_SIZE: u64 = 4 * 1024 * 1024;
/// Largest image config we read (history and labels only; real ones are a few KiB).
pub const MAX_CONFIG_SIZE: u64 = 8 * 1024 * 1024;
/// How deep image indexes may nest (index → index → manifest).
pub const MAX_INDEX_DEPTH: usize = 4;

pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Layer media types the importer understands (OCI, deprecated non-distributable, Docker).
pub const LAYER_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// The `Accept` header for manifest requests: without it Debian's docker-registry 2.8.2 hides OCI
/// manifests and converts Docker ones to schema 1.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Annotation carrying a tag in an OCI layout's `index.json`.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Label / annotation with the image version.
pub const LABEL_VERSION: &str = "org.opencontainers.image.version";

/// A content descriptor (image-spec `descriptor.md`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

/// An image manifest (OCI or Docker v2s2; both have the same shape for what we use).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Manifest {
    /// The artifact type as the referrers API reports it: `artifactType`, else the config media type.
    pub fn effective_artifact_type(&self) -> &str {
        self.artifact_type
            .as_deref()
            .unwrap_or(&self.config.media_type)
    }
}

/// A platform in an index entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this binary runs on (`linux/arm64` on aarch64).
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "aarch64" => "arm64",
            "x86_64" => "amd64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            "loongarch64" => "loong64",
            other => other,
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: arch.to_string(),
            variant: None,
        }
    }

    /// Parse `os/arch[/variant]`, e.g. `linux/arm64` or `linux/arm/v7`.
    pub fn parse(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.is_empty()) {
            bail!("invalid platform {s:?}: expected OS/ARCH[/VARIANT], e.g. linux/arm64");
        }
        Ok(Platform {
            os: parts[0].to_string(),
            architecture: parts[1].to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
        })
    }

    fn matches(&self, other: &Platform) -> bool {
        if self.os != other.os || self.architecture != other.architecture {
            return false;
        }
        match (&self.variant, &other.variant) {
            (None, _) => true,
            (Some(want), Some(have)) => want == have,
            // arm64 without a variant means v8
            (Some(want), None) => self.architecture == "arm64" && want == "v8",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// One entry of an image index: a descriptor plus an optional platform.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    #[serde(flatten)]
    pub descriptor: Descriptor,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// An image index / Docker manifest list (also the layout's `index.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<IndexEntry>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What an image config says (OCI `config.json` / Docker image JSON), reduced to what otter uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    /// RFC 3339 creation time, if present.
    pub created: Option<String>,
    /// `config.Labels`.
    pub labels: BTreeMap<String, String>,
    /// `rootfs.diff_ids`: digests of the uncompressed layers.
    pub diff_ids: Vec<String>,
}

impl ImageConfig {
    /// `org.opencontainers.image.version` label, if any.
    pub fn version(&self) -> Option<&str> {
        self.labels.get(LABEL_VERSION).map(String::as_str)
    }
}

/// What a manifest-like document turned out to be.
// short-lived parse result; boxing would only add noise at every match
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum ManifestKind {
    Manifest(Manifest),
    Index(Index),
}

/// Strip parameters from a Content-Type (`type; charset=…` → `type`).
pub fn bare_media_type(ct: &str) -> &str {
    ct.split(';').next().unwrap_or("").trim()
}

/// Parse a manifest or index. `content_type` is the transport's type (HTTP Content-Type or the
/// referring descriptor's mediaType), if any; the document's own `mediaType` is used otherwise.
pub fn parse_manifest_or_index(bytes: &[u8], content_type: Option<&str>) -> Result<ManifestKind> {
    if bytes.len() as u64 > MAX_MANIFEST_SIZE {
        bail!(
            "manifest is {} bytes, more than the {MAX_MANIFEST_SIZE} byte limit",
            bytes.len()
        );
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
        #[serde(default)]
        schema_version: Option<u32>,
        #[serde(default)]
        config: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(bytes).context("malformed manifest JSON")?;
    let ct = content_type.map(bare_media_type).filter(|t| {
        // registries may answer with a generic type; fall back to the document then
        !t.is_empty() && *t != "application/json" && *t != "application/octet-stream"
    });
    let media_type = match (ct, probe.media_type.as_deref()) {
        (Some(t), Some(doc)) if t != doc => {
            bail!("manifest media type mismatch: served as {t}, document says {doc}")
        }
        (Some(t), _) => t.to_string(),
        (None, Some(doc)) => doc.to_string(),
        // OCI manifests may omit mediaType: decide by shape
        (None, None) if probe.manifests.is_some() => MEDIA_OCI_INDEX.to_string(),
        (None, None) => MEDIA_OCI_MANIFEST.to_string(),
    };
    if probe.schema_version != Some(2) {
        bail!(
            "unsupported manifest schemaVersion {:?} (only 2 is supported; Docker schema 1 is obsolete)",
            probe.schema_version
        );
    }
    match media_type.as_str() {
        MEDIA_OCI_MANIFEST | MEDIA_DOCKER_MANIFEST if probe.manifests.is_some() => {
            bail!("document of type {media_type} has a \"manifests\" list: it is an index, not a manifest")
        }
        MEDIA_OCI_INDEX | MEDIA_DOCKER_LIST if probe.config.is_some() || probe.manifests.is_none() => {
            bail!("document of type {media_type} has no \"manifests\" list: it is not an image index")
        }
        MEDIA_OCI_MANIFEST | MEDIA_DOCKER_MANIFEST => {
            let m: Manifest =
                serde_json::from_slice(bytes).context("malformed image manifest")?;
            Ok(ManifestKind::Manifest(m))
        }
        MEDIA_OCI_INDEX | MEDIA_DOCKER_LIST => {
            let i: Index = serde_json::from_slice(bytes).context("malformed image index")?;
            Ok(ManifestKind::Index(i))
        }
        other => bail!(
            "unsupported manifest media type {other:?}: expected an OCI or Docker v2 schema 2 manifest or index"
        ),
    }
}

/// True for manifest and index media types (fetched from `/manifests/`, not `/blobs/`).
pub fn is_manifest_media_type(t: &str) -> bool {
    matches!(
        bare_media_type(t),
        MEDIA_OCI_MANIFEST | MEDIA_OCI_INDEX | MEDIA_DOCKER_MANIFEST | MEDIA_DOCKER_LIST
    )
}

/// Check that a manifest describes an OS image we can import: a known config type and known layer types.
pub fn check_image_manifest(m: &Manifest) -> Result<()> {
    match m.config.media_type.as_str() {
        MEDIA_OCI_CONFIG | MEDIA_DOCKER_CONFIG => {}
        other => bail!(
            "not a container image: config media type is {other:?} (artifact type {:?})",
            m.artifact_type
        ),
    }
    for (i, l) in m.layers.iter().enumerate() {
        if !LAYER_MEDIA_TYPES.contains(&l.media_type.as_str()) {
            bail!(
                "layer {i} ({}) has unsupported media type {:?}; supported: tar, tar+gzip, tar+zstd (OCI or Docker)",
                l.digest,
                l.media_type
            );
        }
        super::digest::sha256_hex(&l.digest)
            .with_context(|| format!("layer {i} of the manifest"))?;
    }
    super::digest::sha256_hex(&m.config.digest).context("config descriptor of the manifest")?;
    if m.config.size > MAX_CONFIG_SIZE {
        bail!(
            "image config {} is {} bytes, more than the {MAX_CONFIG_SIZE} byte limit",
            m.config.digest,
            m.config.size
        );
    }
    Ok(())
}

/// Parse an image config blob.
pub fn parse_config(bytes: &[u8]) -> Result<ImageConfig> {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(default)]
        architecture: String,
        #[serde(default)]
        os: String,
        #[serde(default)]
        variant: Option<String>,
        #[serde(default)]
        created: Option<String>,
        #[serde(default)]
        config: Option<RawRun>,
        #[serde(default)]
        rootfs: Option<RawRootfs>,
    }
    #[derive(Deserialize)]
    struct RawRun {
        #[serde(default, rename = "Labels")]
        labels: Option<BTreeMap<String, String>>,
    }
    #[derive(Deserialize)]
    struct RawRootfs {
        #[serde(default)]
        diff_ids: Vec<String>,
    }
    let raw: Raw = serde_json::from_slice(bytes).context("malformed image config JSON")?;
    Ok(ImageConfig {
        os: raw.os,
        architecture: raw.architecture,
        variant: raw.variant,
        created: raw.created,
        labels: raw.config.and_then(|c| c.labels).unwrap_or_default(),
        diff_ids: raw.rootfs.map(|r| r.diff_ids).unwrap_or_default(),
    })
}

/// Choose the manifest for `want` from an index. Entries for `unknown/unknown` (attestations)
/// are ignored; an entry without a platform is taken only when it is the only manifest.
pub fn select_platform<'a>(index: &'a Index, want: &Platform) -> Result<&'a Descriptor> {
    let candidates: Vec<&IndexEntry> = index
        .manifests
        .iter()
        .filter(|e| is_manifest_media_type(&e.descriptor.media_type))
        .collect();
    if let Some(e) = candidates
        .iter()
        .find(|e| e.platform.as_ref().is_some_and(|p| want.matches(p)))
    {
        return Ok(&e.descriptor);
    }
    if let [only] = candidates.as_slice() {
        if only.platform.is_none() {
            return Ok(&only.descriptor);
        }
    }
    let available: Vec<String> = candidates
        .iter()
        .filter_map(|e| e.platform.as_ref())
        .filter(|p| p.os != "unknown")
        .map(|p| p.to_string())
        .collect();
    bail!(
        "the image has no manifest for platform {want}; available: {} (choose another image or set the platform option)",
        if available.is_empty() {
            "none".to_string()
        } else {
            available.join(", ")
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: char) -> String {
        format!("sha256:{}", n.to_string().repeat(64))
    }

    fn index_json() -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{MEDIA_OCI_INDEX}","manifests":[
            {{"mediaType":"{MEDIA_OCI_MANIFEST}","digest":"{}","size":10,"platform":{{"os":"linux","architecture":"amd64"}}}},
            {{"mediaType":"{MEDIA_OCI_MANIFEST}","digest":"{}","size":10,"platform":{{"os":"linux","architecture":"arm","variant":"v7"}}}},
            {{"mediaType":"{MEDIA_OCI_MANIFEST}","digest":"{}","size":10,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
            {{"mediaType":"{MEDIA_OCI_MANIFEST}","digest":"{}","size":10,"platform":{{"os":"unknown","architecture":"unknown"}}}}
            ]}}"#,
            d('1'),
            d('2'),
            d('3'),
            d('4')
        )
    }

    #[test]
    fn platform_selection() {
        let ManifestKind::Index(i) =
            parse_manifest_or_index(index_json().as_bytes(), None).unwrap()
        else {
            panic!("not an index")
        };
        let pick =
            |p: &str| select_platform(&i, &Platform::parse(p).unwrap()).map(|d| d.digest.clone());
        assert_eq!(pick("linux/arm64").unwrap(), d('3'));
        assert_eq!(pick("linux/arm64/v8").unwrap(), d('3'));
        assert_eq!(pick("linux/amd64").unwrap(), d('1'));
        assert_eq!(pick("linux/arm/v7").unwrap(), d('2'));
        let e = pick("linux/riscv64").unwrap_err().to_string();
        assert!(
            e.contains("linux/amd64, linux/arm/v7, linux/arm64/v8"),
            "{e}"
        );
        assert!(!e.contains("unknown"), "{e}");
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux//x").is_err());
        assert_eq!(
            Platform::parse("linux/arm64").unwrap().to_string(),
            "linux/arm64"
        );
    }

    #[test]
    fn manifest_parsing() {
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{MEDIA_OCI_CONFIG}","digest":"{}","size":2}},
               "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":5}}]}}"#,
            d('a'),
            d('b')
        );
        let ManifestKind::Manifest(man) = parse_manifest_or_index(m.as_bytes(), None).unwrap()
        else {
            panic!("not a manifest")
        };
        check_image_manifest(&man).unwrap();
        // served type must agree with the document
        let e = parse_manifest_or_index(m.as_bytes(), Some(MEDIA_OCI_INDEX));
        assert!(e.is_err());
        // unknown media type
        let e = parse_manifest_or_index(m.as_bytes(), Some("application/vnd.example+json; x=y"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unsupported manifest media type"), "{e}");
        // malformed JSON
        let e = parse_manifest_or_index(b"{\"schemaVersion\":2,", None).unwrap_err();
        assert!(format!("{e:#}").contains("malformed manifest JSON"));
        // schema 1
        assert!(parse_manifest_or_index(br#"{"schemaVersion":1}"#, None).is_err());
        // unknown layer type
        let mut bad = man.clone();
        bad.layers[0].media_type = "application/x-foo".into();
        let e = check_image_manifest(&bad).unwrap_err().to_string();
        assert!(e.contains("unsupported media type"), "{e}");
        // an artifact is not an image
        let mut art = man.clone();
        art.config.media_type = MEDIA_OCI_EMPTY.into();
        assert!(check_image_manifest(&art).is_err());
    }

    #[test]
    fn config_parsing() {
        let c = br#"{"architecture":"arm64","os":"linux","created":"2024-01-01T00:00:00Z",
            "config":{"Labels":{"org.opencontainers.image.version":"1.2.3"}},
            "rootfs":{"type":"layers","diff_ids":["sha256:00"]}}"#;
        let cfg = parse_config(c).unwrap();
        assert_eq!(cfg.version(), Some("1.2.3"));
        assert_eq!(cfg.architecture, "arm64");
        assert_eq!(cfg.diff_ids.len(), 1);
        let cfg =
            parse_config(br#"{"architecture":"amd64","os":"linux","config":{"Labels":null}}"#)
                .unwrap();
        assert_eq!(cfg.version(), None);
        assert!(parse_config(b"[1,2]").is_err());
    }
}
