//! Images in an OCI distribution registry.

use std::io::{Cursor, Read};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use super::digest::{sha256_digest, sha256_hex, verify_bytes, VerificationError, VerifyingReader};
use super::oci::{
    check_image_manifest, is_manifest_media_type, parse_config, parse_manifest_or_index,
    select_platform, Descriptor, Index, ManifestKind, Platform, MAX_CONFIG_SIZE, MAX_INDEX_DEPTH,
};
use super::{ImageRef, ImageSource, ResolvedImage, SourceOptions};
use crate::fetch::{BlobFetcher, RegistryClient};
use crate::progress::Event;

/// Pages of referrers we follow (`Link: rel="next"`).
const MAX_REFERRER_PAGES: usize = 16;

pub(crate) struct RegistrySource {
    reference: ImageRef,
    repo: String,
    client: Arc<RegistryClient>,
    fetcher: BlobFetcher,
    platform: Platform,
    opts: SourceOptions,
}

impl RegistrySource {
    pub(crate) fn new(
        reference: &ImageRef,
        host: &str,
        repo: &str,
        opts: &SourceOptions,
    ) -> Result<RegistrySource> {
        let platform = match &opts.platform {
            Some(p) => Platform::parse(p)?,
            None => Platform::host(),
        };
        let client = Arc::new(RegistryClient::new(host, opts)?);
        let fetcher = BlobFetcher::new(client.clone(), repo, opts)?;
        Ok(RegistrySource {
            reference: reference.clone(),
            repo: repo.to_string(),
            client,
            fetcher,
            platform,
            opts: opts.clone(),
        })
    }

    /// Fetch a manifest by tag or digest. By digest, the body must hash to it; by tag, a
    /// `Docker-Content-Digest` header must agree with the body. Returns (digest, kind, bytes).
    fn manifest(
        &self,
        reference: &str,
        expect: Option<&Descriptor>,
    ) -> Result<(String, ManifestKind, Vec<u8>)> {
        let what = format!("manifest {}/{}:{reference}", self.client.host(), self.repo);
        let fetched = self
            .client
            .manifest(&self.repo, reference)?
            .with_context(|| format!("{what} not found (HTTP 404)"))?;
        let actual = sha256_digest(&fetched.bytes);
        if reference.starts_with("sha256:") && actual != reference {
            return Err(VerificationError::new(format!(
                "{what} has digest {actual}: the registry sent different content than requested"
            ))
            .into());
        }
        if let Some(h) = &fetched.digest_header {
            if h.starts_with("sha256:") && *h != actual {
                return Err(VerificationError::new(format!(
                    "{what}: body has digest {actual} but the registry says {h}"
                ))
                .into());
            }
        }
        if let Some(d) = expect {
            verify_bytes(&what, &fetched.bytes, &d.digest, Some(d.size))?;
        }
        let kind = parse_manifest_or_index(&fetched.bytes, fetched.content_type.as_deref())
            .with_context(|| what.clone())?;
        Ok((actual, kind, fetched.bytes))
    }

    fn referrers_api(
        &self,
        manifest_digest: &str,
        artifact_type: &str,
    ) -> Result<Option<Vec<Descriptor>>> {
        let mut path = format!(
            "/v2/{}/referrers/{manifest_digest}?artifactType={}",
            self.repo,
            percent_encode(artifact_type)
        );
        let mut out = Vec::new();
        for _ in 0..MAX_REFERRER_PAGES {
            let Some((bytes, link)) = self.client.referrers_page(&path, &self.repo)? else {
                return Ok(None);
            };
            let index: Index = serde_json::from_slice(&bytes).with_context(|| {
                format!("malformed referrers index from {}", self.client.host())
            })?;
            out.extend(index.manifests.into_iter().map(|e| e.descriptor));
            match link.as_deref().and_then(next_link) {
                Some(next) => path = next,
                None => break,
            }
        }
        Ok(Some(out))
    }
}

/// `<…>; rel="next"` → the path.
fn next_link(link: &str) -> Option<String> {
    for part in link.split(',') {
        let (url, params) = part.split_once(';')?;
        if params.replace(' ', "").contains("rel=\"next\"") {
            let url = url.trim().trim_start_matches('<').trim_end_matches('>');
            // only same-registry relative paths: never follow to another host with our token
            if url.starts_with("/v2/") {
                return Some(url.to_string());
            }
        }
    }
    None
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl ImageSource for RegistrySource {
    fn resolve(&mut self) -> Result<ResolvedImage> {
        let ImageRef::Registry { tag, digest, .. } = &self.reference else {
            bail!("not a registry reference: {}", self.reference);
        };
        let first = digest
            .clone()
            .or(tag.clone())
            .unwrap_or_else(|| "latest".to_string());
        let (mut mdigest, mut kind, mut bytes) = self.manifest(&first, None)?;
        for _ in 0..MAX_INDEX_DEPTH {
            let ManifestKind::Index(index) = &kind else {
                break;
            };
            let d = select_platform(index, &self.platform)
                .with_context(|| format!("image index {mdigest} of {}", self.reference))?
                .clone();
            (mdigest, kind, bytes) = self.manifest(&d.digest, Some(&d))?;
        }
        let ManifestKind::Manifest(manifest) = kind else {
            bail!(
                "image indexes of {} nest deeper than {MAX_INDEX_DEPTH} levels",
                self.reference
            );
        };
        check_image_manifest(&manifest)
            .with_context(|| format!("manifest {mdigest} of {}", self.reference))?;
        if let Some(p) = &self.opts.progress {
            p.event(&Event::Resolve {
                reference: self.reference.to_string(),
                digest: mdigest.clone(),
            });
        }
        // the config is small: download it like any blob, then read it whole
        let cfg_path = self.fetcher.fetch(&manifest.config)?;
        let mut cfg = Vec::new();
        VerifyingReader::new(
            std::fs::File::open(&cfg_path)
                .with_context(|| format!("opening {}", cfg_path.display()))?,
            &manifest.config.digest,
            manifest.config.size,
        )
        .take(MAX_CONFIG_SIZE + 1)
        .read_to_end(&mut cfg)
        .with_context(|| format!("reading image config {}", manifest.config.digest))?;
        let config = parse_config(&cfg)
            .with_context(|| format!("image config {}", manifest.config.digest))?;
        Ok(ResolvedImage {
            reference: self.reference.clone(),
            manifest_digest: mdigest,
            config_digest: manifest.config.digest.clone(),
            manifest,
            manifest_bytes: bytes,
            config,
        })
    }

    fn open_blob(&mut self, desc: &Descriptor) -> Result<Box<dyn Read + '_>> {
        sha256_hex(&desc.digest)?;
        if is_manifest_media_type(&desc.media_type) {
            let (_, _, bytes) = self.manifest(&desc.digest, Some(desc))?;
            return Ok(Box::new(Cursor::new(bytes)));
        }
        let path = self.fetcher.fetch(desc)?;
        let f =
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Box::new(VerifyingReader::new(
            std::io::BufReader::new(f),
            &desc.digest,
            desc.size,
        )))
    }

    fn referrers(&mut self, manifest_digest: &str, artifact_type: &str) -> Result<Vec<Descriptor>> {
        let hex = sha256_hex(manifest_digest)?;
        let all = match self.referrers_api(manifest_digest, artifact_type)? {
            Some(v) => v,
            None => {
                // referrers tag schema: an index tagged sha256-<hex>
                let tag = format!("sha256-{hex}");
                match self.client.manifest(&self.repo, &tag)? {
                    None => Vec::new(),
                    Some(m) => match serde_json::from_slice::<Index>(&m.bytes) {
                        Ok(i) => i.manifests.into_iter().map(|e| e.descriptor).collect(),
                        Err(e) => {
                            log::warn!("referrers tag {tag} of {} is not an image index ({e}); assuming no referrers", self.reference);
                            Vec::new()
                        }
                    },
                }
            }
        };
        Ok(all
            .into_iter()
            .filter(|d| d.artifact_type.as_deref() == Some(artifact_type))
            .collect())
    }

    fn prefetch(&mut self, blobs: &[Descriptor]) -> Result<()> {
        self.fetcher.fetch_all(blobs)
    }

    fn fetch_ranges(
        &mut self,
        desc: &Descriptor,
        ranges: &[(u64, u64)],
    ) -> Result<Option<crate::fetch::Ranges>> {
        sha256_hex(&desc.digest)?;
        self.fetcher.fetch_ranges(desc, ranges)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links() {
        assert_eq!(
            next_link(r#"</v2/r/referrers/sha256:a?n=2&last=x>; rel="next""#).as_deref(),
            Some("/v2/r/referrers/sha256:a?n=2&last=x")
        );
        assert_eq!(
            next_link(r#"<https://evil.example.com/v2/x>; rel="next""#),
            None
        );
        assert_eq!(
            percent_encode("application/vnd.otter+json"),
            "application%2Fvnd.otter%2Bjson"
        );
    }
}
