//! Release artifacts in a registry: push (blobs, artifact manifest, `sha256-<hex>` fallback
//! tag) and find (referrers API, else the fallback tag).
//!
//! Push: blobs by monolithic upload (`POST /v2/<repo>/blobs/uploads/` then `PUT
//! <location>?digest=`), skipped when `HEAD` finds them; the artifact manifest by digest. If the
//! registry answers the referrers API (`GET /v2/<repo>/referrers/<digest>` is not 404) it
//! indexes the artifact itself; otherwise the fallback tag `sha256-<hex of the subject>` is
//! read, merged with the new descriptor and written back (read-modify-write; concurrent
//! publishers for the same image can race, as the OCI spec notes).
//!
//! Auth: anonymous, HTTP Basic (`OTTER_PUBLISH_CREDS=user:password`), and Bearer tokens
//! obtained from the `WWW-Authenticate` challenge (with Basic credentials if given).

use std::io::Read;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::verify::artifact::{
    sha256_digest, MAX_ARTIFACT_MANIFEST_SIZE, OCI_INDEX_MEDIA_TYPE, OCI_MANIFEST_MEDIA_TYPE,
};
use crate::verify::{ArtifactDescriptor, ArtifactManifest, ArtifactStore};

/// `user:password` for registry auth.
pub const CREDS_ENV: &str = "OTTER_PUBLISH_CREDS";
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";
const MAX_INDEX_SIZE: u64 = 4 * 1024 * 1024;

pub struct Registry {
    agent: ureq::Agent,
    base: String,
    repo: String,
    basic: Option<String>,
    token: Option<String>,
}

type Resp = ureq::http::Response<ureq::Body>;

impl Registry {
    /// `host` like `registry.example.com` or `127.0.0.1:5000`; `plain_http` for loopback/test
    /// registries without TLS.
    pub fn new(host: &str, repo: &str, plain_http: bool) -> Registry {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(120)))
            .build()
            .into();
        let scheme = if plain_http { "http" } else { "https" };
        let basic = std::env::var(CREDS_ENV)
            .ok()
            .map(|c| format!("Basic {}", base64_encode(c.as_bytes())));
        Registry {
            agent,
            base: format!("{scheme}://{host}"),
            repo: repo.to_string(),
            basic,
            token: None,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.repo)
    }

    /// Send a request, answering one 401 challenge (Basic or Bearer) and retrying.
    fn send(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Resp> {
        for attempt in 0..2 {
            let mut req = ureq::http::Request::builder().method(method).uri(url);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            if let Some(auth) = self.token.as_ref().or(self.basic.as_ref()) {
                req = req.header("Authorization", auth.as_str());
            }
            let resp = match body {
                Some(b) => self.agent.run(req.body(b.to_vec())?),
                None => self.agent.run(req.body(())?),
            }
            .with_context(|| format!("{method} {url} failed"))?;
            if resp.status().as_u16() == 401 && attempt == 0 {
                let challenge = resp
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                if self.answer_challenge(&challenge)? {
                    continue;
                }
            }
            return Ok(resp);
        }
        bail!("{method} {url}: still unauthorized after authenticating; check {CREDS_ENV}")
    }

    fn answer_challenge(&mut self, challenge: &str) -> Result<bool> {
        let Some(params) = challenge.strip_prefix("Bearer ") else {
            return Ok(self.basic.is_some()
                && self.token.is_none()
                && challenge.starts_with("Basic"));
        };
        let get = |name: &str| -> Option<String> {
            let key = format!("{name}=\"");
            let start = params.find(&key)? + key.len();
            let end = params[start..].find('"')? + start;
            Some(params[start..end].to_string())
        };
        let realm = get("realm").context("Bearer challenge without realm")?;
        let mut url = format!("{realm}?");
        if let Some(service) = get("service") {
            url.push_str(&format!("service={}&", urlencode(&service)));
        }
        let scope = get("scope").unwrap_or_else(|| format!("repository:{}:pull,push", self.repo));
        url.push_str(&format!("scope={}", urlencode(&scope)));
        let mut req = self.agent.get(&url);
        if let Some(b) = &self.basic {
            req = req.header("Authorization", b.as_str());
        }
        let mut resp = req
            .call()
            .with_context(|| format!("token request to {realm} failed"))?;
        if resp.status().as_u16() != 200 {
            bail!("token server {realm} answered {}", resp.status());
        }
        let v: Value =
            serde_json::from_slice(&resp.body_mut().with_config().limit(1 << 20).read_to_vec()?)
                .context("token server answer is not JSON")?;
        let token = v
            .get("token")
            .or_else(|| v.get("access_token"))
            .and_then(Value::as_str)
            .context("token server answer has no token")?;
        self.token = Some(format!("Bearer {token}"));
        Ok(true)
    }

    fn has_blob(&mut self, digest: &str) -> Result<bool> {
        let url = self.url(&format!("blobs/{digest}"));
        let resp = self.send("HEAD", &url, &[], None)?;
        Ok(resp.status().is_success())
    }

    /// Upload a small blob unless the registry has it.
    pub fn push_blob(&mut self, bytes: &[u8]) -> Result<String> {
        let digest = sha256_digest(bytes);
        if self.has_blob(&digest)? {
            return Ok(digest);
        }
        let url = self.url("blobs/uploads/");
        let resp = self.send("POST", &url, &[("Content-Length", "0")], Some(&[]))?;
        if resp.status().as_u16() != 202 {
            bail!(
                "starting a blob upload at {url}: registry answered {}",
                resp.status()
            );
        }
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .context("blob upload answer has no Location")?;
        let mut put = if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            location.to_string()
        };
        put.push(if put.contains('?') { '&' } else { '?' });
        put.push_str(&format!("digest={}", urlencode(&digest)));
        let resp = self.send(
            "PUT",
            &put,
            &[("Content-Type", "application/octet-stream")],
            Some(bytes),
        )?;
        if resp.status().as_u16() != 201 {
            bail!(
                "uploading blob {digest}: registry answered {}",
                resp.status()
            );
        }
        Ok(digest)
    }

    /// PUT a manifest under `reference` (tag or digest); returns whether the registry
    /// answered with `OCI-Subject` (it indexes referrers itself).
    pub fn push_manifest(
        &mut self,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<bool> {
        let url = self.url(&format!("manifests/{reference}"));
        let mut resp = self.send("PUT", &url, &[("Content-Type", media_type)], Some(bytes))?;
        if resp.status().as_u16() != 201 {
            let body = resp
                .body_mut()
                .with_config()
                .limit(4096)
                .read_to_string()
                .unwrap_or_default();
            bail!(
                "pushing manifest {reference}: registry answered {}: {body}",
                resp.status()
            );
        }
        Ok(resp.headers().contains_key("oci-subject"))
    }

    /// GET a manifest by tag or digest (bounded).
    pub fn get_manifest(&mut self, reference: &str) -> Result<Option<(String, Vec<u8>)>> {
        let url = self.url(&format!("manifests/{reference}"));
        let mut resp = self.send("GET", &url, &[("Accept", MANIFEST_ACCEPT)], None)?;
        match resp.status().as_u16() {
            200 => {}
            404 => return Ok(None),
            s => bail!("GET {url}: registry answered {s}"),
        }
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_INDEX_SIZE)
            .read_to_vec()?;
        Ok(Some((ct, bytes)))
    }

    /// The referrers API answer, or `None` when the registry does not have the API.
    fn referrers_api(&mut self, subject: &str) -> Result<Option<Vec<ArtifactDescriptor>>> {
        let url = self.url(&format!("referrers/{subject}"));
        let mut resp = self.send("GET", &url, &[("Accept", OCI_INDEX_MEDIA_TYPE)], None)?;
        if resp.status().as_u16() != 200 {
            return Ok(None);
        }
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_INDEX_SIZE)
            .read_to_vec()?;
        Ok(Some(index_descriptors(&bytes).unwrap_or_default()))
    }

    /// Push a release artifact for `subject` and make it findable.
    pub fn attach(
        &mut self,
        subject: &ArtifactDescriptor,
        statement: &[u8],
        signature: &[u8],
    ) -> Result<ArtifactDescriptor> {
        let manifest =
            ArtifactManifest::release(super::layout::plain(subject), statement, signature);
        let bytes = manifest.to_bytes()?;
        self.push_blob(b"{}")?;
        self.push_blob(statement)?;
        self.push_blob(signature)?;
        let mut desc = ArtifactDescriptor::for_bytes(OCI_MANIFEST_MEDIA_TYPE, &bytes);
        desc.artifact_type = manifest.artifact_type.clone();
        let indexed = self.push_manifest(&desc.digest, OCI_MANIFEST_MEDIA_TYPE, &bytes)?;
        if !indexed && self.referrers_api(&subject.digest)?.is_none() {
            self.update_fallback_tag(&subject.digest, &desc)?;
        }
        Ok(desc)
    }

    /// Merge `desc` into the `sha256-<hex>` index for `subject`.
    fn update_fallback_tag(&mut self, subject: &str, desc: &ArtifactDescriptor) -> Result<()> {
        let tag = fallback_tag(subject)?;
        let mut index = match self.get_manifest(&tag)? {
            Some((_, bytes)) => match serde_json::from_slice::<Value>(&bytes) {
                Ok(v) if v.get("manifests").is_some_and(Value::is_array) => v,
                _ => {
                    log::warn!("fallback tag {tag} is not an image index; replacing it");
                    empty_index()
                }
            },
            None => empty_index(),
        };
        let list = index["manifests"]
            .as_array_mut()
            .context("index without manifests")?;
        if !list
            .iter()
            .any(|m| m.get("digest").and_then(Value::as_str) == Some(&desc.digest))
        {
            list.push(serde_json::to_value(desc)?);
        }
        let bytes = serde_json::to_vec(&index)?;
        self.push_manifest(&tag, OCI_INDEX_MEDIA_TYPE, &bytes)?;
        Ok(())
    }

    /// Resolve a tag or digest to the image manifest descriptor.
    pub fn resolve(&mut self, reference: &str) -> Result<ArtifactDescriptor> {
        let (media_type, bytes) = self
            .get_manifest(reference)?
            .with_context(|| format!("{}/{}:{reference} not found", self.base, self.repo))?;
        Ok(ArtifactDescriptor::for_bytes(&media_type, &bytes))
    }
}

fn empty_index() -> Value {
    json!({"schemaVersion": 2, "mediaType": OCI_INDEX_MEDIA_TYPE, "manifests": []})
}

/// `sha256:<hex>` -> `sha256-<hex>`.
pub fn fallback_tag(digest: &str) -> Result<String> {
    match digest.split_once(':') {
        Some((alg, hex)) if !alg.is_empty() && !hex.is_empty() => Ok(format!("{alg}-{hex}")),
        _ => bail!("{digest:?} is not a digest"),
    }
}

fn index_descriptors(bytes: &[u8]) -> Result<Vec<ArtifactDescriptor>> {
    let v: Value = serde_json::from_slice(bytes)?;
    let list = v
        .get("manifests")
        .and_then(Value::as_array)
        .context("no manifests")?;
    Ok(list
        .iter()
        .filter_map(|m| serde_json::from_value(m.clone()).ok())
        .collect())
}

impl ArtifactStore for Registry {
    fn referrers(
        &mut self,
        manifest_digest: &str,
        artifact_type: &str,
    ) -> Result<Vec<ArtifactDescriptor>> {
        let list = match self.referrers_api(manifest_digest)? {
            Some(l) => l,
            None => match self.get_manifest(&fallback_tag(manifest_digest)?)? {
                Some((_, bytes)) => index_descriptors(&bytes).unwrap_or_default(),
                None => Vec::new(),
            },
        };
        Ok(list
            .into_iter()
            .filter(|d| d.artifact_type.as_deref() == Some(artifact_type))
            .collect())
    }

    fn open(&mut self, desc: &ArtifactDescriptor) -> Result<Box<dyn Read + '_>> {
        let is_manifest = desc.media_type == OCI_MANIFEST_MEDIA_TYPE
            || desc.media_type == OCI_INDEX_MEDIA_TYPE
            || desc
                .media_type
                .starts_with("application/vnd.docker.distribution.manifest");
        if is_manifest {
            let (_, bytes) = self
                .get_manifest(&desc.digest)?
                .with_context(|| format!("manifest {} not found", desc.digest))?;
            if bytes.len() as u64 > MAX_ARTIFACT_MANIFEST_SIZE.max(desc.size) {
                bail!("manifest {} too large", desc.digest);
            }
            return Ok(Box::new(std::io::Cursor::new(bytes)));
        }
        let url = self.url(&format!("blobs/{}", desc.digest));
        let resp = self.send("GET", &url, &[], None)?;
        if resp.status().as_u16() != 200 {
            bail!("GET {url}: registry answered {}", resp.status());
        }
        Ok(Box::new(resp.into_body().into_reader()))
    }
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn helpers() {
        assert_eq!(super::base64_encode(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(super::base64_encode(b"a"), "YQ==");
        assert_eq!(super::fallback_tag("sha256:abc").unwrap(), "sha256-abc");
        assert_eq!(super::urlencode("sha256:ab"), "sha256%3Aab");
    }
}
