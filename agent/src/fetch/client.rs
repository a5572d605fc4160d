//! A blocking OCI distribution client: one ureq agent per registry, TLS by default, Basic and
//! Bearer-token auth with a token cache, manifests and blob requests.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ureq::http::Response;
use ureq::Body;

use super::auth::{challenge_error, load_auth_file, parse_challenge, Challenge, Credentials};
use super::{NetworkError, RetryPolicy};
use crate::source::oci::{MANIFEST_ACCEPT, MAX_MANIFEST_SIZE};
use crate::source::SourceOptions;

/// How long a token lives when the server does not say (distribution token spec).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Largest token response we read.
const MAX_TOKEN_RESPONSE_SIZE: u64 = 1024 * 1024;
/// Largest error body we read for a message.
const MAX_ERROR_BODY_SIZE: u64 = 64 * 1024;
/// Redirects followed (to blob storage / CDN).
const MAX_REDIRECTS: u32 = 8;

/// A client for one registry host.
pub struct RegistryClient {
    agent: ureq::Agent,
    /// Host (and port) as written in the reference.
    host: String,
    /// Host used on the wire (`docker.io` → `registry-1.docker.io`).
    api_host: String,
    /// Plain HTTP is allowed (loopback or listed insecure); decided by probing.
    allow_plain: bool,
    base: Mutex<Option<String>>,
    creds: Option<Credentials>,
    challenge: Mutex<Option<Challenge>>,
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    retry: RetryPolicy,
}

/// A fetched manifest.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    pub content_type: Option<String>,
    /// `Docker-Content-Digest`, if the registry sent it.
    pub digest_header: Option<String>,
}

fn is_loopback(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.split(':').next().unwrap_or("")
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

fn host_matches(host: &str, list: &[String]) -> bool {
    let bare = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    list.iter().any(|h| h == host || h == bare)
}

pub(crate) fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// `Retry-After: <seconds>` (HTTP dates are not worth the code here).
pub(crate) fn retry_after(resp: &Response<Body>) -> Option<Duration> {
    header(resp, "retry-after")?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

pub(crate) fn header(resp: &Response<Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn net_err(e: ureq::Error, what: &str) -> anyhow::Error {
    anyhow::Error::new(NetworkError::new(format!("{what}: {e}")))
}

/// Read an error body for a message: the OCI `{"errors":[{"code","message"}]}` shape or text.
pub(crate) fn error_text(resp: &mut Response<Body>) -> String {
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_ERROR_BODY_SIZE)
        .read_to_vec()
        .unwrap_or_default();
    #[derive(serde::Deserialize)]
    struct Errs {
        errors: Vec<Err>,
    }
    #[derive(serde::Deserialize)]
    struct Err {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(e) = serde_json::from_slice::<Errs>(&body) {
        let parts: Vec<String> = e
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.code, e.message))
            .collect();
        if !parts.is_empty() {
            return parts.join("; ");
        }
    }
    let text = String::from_utf8_lossy(&body);
    text.trim().chars().take(200).collect()
}

/// The first line of a password file (at most 4 KiB are read).
fn read_password_file(path: &Path) -> Result<String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(4096).read_to_string(&mut text))
        .with_context(|| format!("reading the registry password file {}", path.display()))?;
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if line.is_empty() {
        bail!("the registry password file {} is empty", path.display());
    }
    Ok(line.to_owned())
}

impl RegistryClient {
    /// A client for `host` configured from `opts` (credentials, CA, insecure hosts, timeouts).
    pub fn new(host: &str, opts: &SourceOptions) -> Result<RegistryClient> {
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(ca) = &opts.ca_file {
            tls = tls.root_certs(load_ca(ca)?);
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(MAX_REDIRECTS)
            .timeout_connect(Some(opts.connect_timeout))
            .timeout_per_read(Some(opts.read_timeout))
            .timeout_recv_response(Some(opts.read_timeout))
            .user_agent(concat!("otter/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls.build())
            .build();
        let agent = ureq::Agent::new_with_config(config);
        let for_host =
            opts.credential_hosts.is_empty() || opts.credential_hosts.iter().any(|h| h == host);
        let password = match (&opts.password, &opts.password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(f)) if for_host && opts.username.is_some() => Some(read_password_file(f)?),
            _ => None,
        };
        let creds = match (&opts.username, password) {
            (Some(u), Some(p)) if for_host => Some(Credentials {
                username: u.clone(),
                password: p,
            }),
            (Some(_), None) | (None, Some(_)) if for_host => {
                bail!("registry credentials need both a username and a password")
            }
            _ => {
                let mut found = None;
                for f in &opts.auth_files {
                    if let Some(c) = load_auth_file(f, host)? {
                        found = Some(c);
                        break;
                    }
                }
                found
            }
        };
        let api_host = if host == "docker.io" {
            "registry-1.docker.io".to_string()
        } else {
            host.to_string()
        };
        Ok(RegistryClient {
            agent,
            host: host.to_string(),
            allow_plain: is_loopback(host) || host_matches(host, &opts.insecure_hosts),
            api_host,
            base: Mutex::new(None),
            creds,
            challenge: Mutex::new(None),
            tokens: Mutex::new(HashMap::new()),
            retry: opts.retry.clone(),
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// `https://host` or, for loopback / insecure hosts whose TLS handshake fails, `http://host`.
    fn base(&self) -> Result<String> {
        if let Ok(g) = self.base.lock() {
            if let Some(b) = g.as_ref() {
                return Ok(b.clone());
            }
        }
        let https = format!("https://{}", self.api_host);
        let chosen = if !self.allow_plain {
            https
        } else {
            match self.agent.get(format!("{https}/v2/")).call() {
                Ok(_) => https,
                // the server speaks TLS but we do not trust it: keep https so the error says so
                Err(e) if e.to_string().to_ascii_lowercase().contains("certificate") => https,
                Err(e) => {
                    log::debug!(
                        "{https}/v2/ failed ({e}); using plain http for {}",
                        self.host
                    );
                    format!("http://{}", self.api_host)
                }
            }
        };
        if let Ok(mut g) = self.base.lock() {
            *g = Some(chosen.clone());
        }
        Ok(chosen)
    }

    fn scope(repo: &str) -> String {
        format!("repository:{repo}:pull")
    }

    /// The Authorization header to send for `scope`, fetching a token if a Bearer challenge is known.
    fn auth_header(&self, scope: &str) -> Result<Option<String>> {
        let challenge = self.challenge.lock().ok().and_then(|c| c.clone());
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self.creds.as_ref().map(Credentials::basic_header)),
            Some(Challenge::Bearer { realm, service, .. }) => {
                if let Some(tok) = self.cached_token(scope) {
                    return Ok(Some(format!("Bearer {tok}")));
                }
                let tok = self.fetch_token(&realm, service.as_deref(), scope)?;
                Ok(Some(format!("Bearer {tok}")))
            }
        }
    }

    fn cached_token(&self, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().ok()?;
        let (tok, expires) = tokens.get(scope)?;
        (Instant::now() < *expires).then(|| tok.clone())
    }

    fn forget_token(&self, scope: &str) {
        if let Ok(mut t) = self.tokens.lock() {
            t.remove(scope);
        }
    }

    fn fetch_token(&self, realm: &str, service: Option<&str>, scope: &str) -> Result<String> {
        let plain_ok = realm
            .strip_prefix("http://")
            .map(|rest| {
                let h = rest.split('/').next().unwrap_or("");
                is_loopback(h) || self.allow_plain
            })
            .unwrap_or(false);
        if !realm.starts_with("https://") && !plain_ok {
            bail!("token realm {realm:?} of registry {} is not https; refusing to send credentials there", self.host);
        }
        let mut req = self.agent.get(realm).query("scope", scope);
        if let Some(s) = service {
            req = req.query("service", s);
        }
        if let Some(c) = &self.creds {
            req = req.header("Authorization", c.basic_header());
        }
        let mut resp = req
            .call()
            .map_err(|e| net_err(e, &format!("requesting a token from {realm}")))?;
        let status = resp.status().as_u16();
        if status == 401 || status == 403 {
            bail!(
                "the token server {realm} refused {} (HTTP {status}: {}); check the registry credentials",
                if self.creds.is_some() { "our credentials" } else { "anonymous access" },
                error_text(&mut resp)
            );
        }
        if status != 200 {
            let msg = format!(
                "token server {realm} answered HTTP {status}: {}",
                error_text(&mut resp)
            );
            if is_retryable_status(status) {
                return Err(NetworkError::new(msg).into());
            }
            bail!(msg);
        }
        #[derive(serde::Deserialize)]
        struct TokenResp {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_TOKEN_RESPONSE_SIZE)
            .read_to_vec()
            .map_err(|e| net_err(e, &format!("reading the token from {realm}")))?;
        let t: TokenResp = serde_json::from_slice(&body)
            .with_context(|| format!("malformed token response from {realm}"))?;
        let token = t
            .token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .with_context(|| format!("token response from {realm} has no token"))?;
        let life = t
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_LIFETIME);
        // renew a little early so a token does not expire between check and use
        let life = life.saturating_sub((life / 10).min(Duration::from_secs(30)));
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.insert(scope.to_string(), (token.clone(), Instant::now() + life));
        }
        Ok(token)
    }

    /// One GET (no retries) with auth: answers a 401 by running the challenge once and repeating.
    /// Transport failures are [`NetworkError`]s. Other statuses are returned to the caller.
    pub fn get(
        &self,
        path: &str,
        repo: &str,
        headers: &[(&str, String)],
    ) -> Result<Response<Body>> {
        let url = format!("{}{path}", self.base()?);
        let scope = Self::scope(repo);
        let mut reauthed = false;
        loop {
            let mut req = self.agent.get(&url);
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            if let Some(a) = self.auth_header(&scope)? {
                req = req.header("Authorization", a);
            }
            let mut resp = req.call().map_err(|e| net_err(e, &format!("GET {url}")))?;
            if resp.status().as_u16() != 401 {
                return Ok(resp);
            }
            let www = header(&resp, "www-authenticate");
            let detail = error_text(&mut resp);
            if reauthed {
                if let Some(err) = www.as_deref().and_then(challenge_error) {
                    if err == "invalid_token" {
                        bail!(
                            "registry {} does not accept the token it just got for {repo} (HTTP 401 invalid_token: {detail}); the token server and the registry disagree (issuer, service, signing certificate) or a clock is wrong",
                            self.host
                        );
                    }
                    if err == "insufficient_scope" {
                        bail!(
                            "registry {} refused access to {repo} (HTTP 401 insufficient_scope: {detail}): the token server did not grant {scope} to {}; give the account pull access to {repo}",
                            self.host,
                            self.creds.as_ref().map(|c| format!("account {:?}", c.username)).unwrap_or_else(|| "anonymous users".to_string())
                        );
                    }
                }
                bail!(
                    "registry {} refused access to {repo} (HTTP 401: {detail}){}",
                    self.host,
                    if self.creds.is_some() {
                        "; the credentials were rejected"
                    } else {
                        "; no credentials are configured for this registry (set them in the config or an auth file)"
                    }
                );
            }
            let Some(www) = www else {
                bail!(
                    "registry {} answered 401 without a WWW-Authenticate challenge ({detail})",
                    self.host
                );
            };
            let ch = parse_challenge(&www)
                .with_context(|| format!("authenticating to registry {}", self.host))?;
            if ch == Challenge::Basic && self.creds.is_none() {
                bail!(
                    "registry {} requires a username and password for {repo} (HTTP 401: {detail}); none are configured (set them in the config or an auth file)",
                    self.host
                );
            }
            // a 401 with a cached token means it expired or was revoked: drop it and ask again
            self.forget_token(&scope);
            if let Ok(mut c) = self.challenge.lock() {
                *c = Some(ch);
            }
            reauthed = true;
        }
    }

    /// GET with retries for transport errors and 408/429/5xx (for small requests; blob downloads
    /// do their own retrying so they can resume).
    pub fn get_retrying(
        &self,
        path: &str,
        repo: &str,
        headers: &[(&str, String)],
    ) -> Result<Response<Body>> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt >= self.retry.max_attempts.max(1);
            match self.get(path, repo, headers) {
                Ok(resp) if is_retryable_status(resp.status().as_u16()) => {
                    let mut resp = resp;
                    if last {
                        let status = resp.status().as_u16();
                        return Err(NetworkError::new(format!(
                            "GET {path} on {}: HTTP {status} after {attempt} attempts: {}",
                            self.host,
                            error_text(&mut resp)
                        ))
                        .into());
                    }
                    let wait = retry_after(&resp)
                        .unwrap_or_else(|| self.retry.delay(attempt))
                        .min(self.retry.max_delay);
                    std::thread::sleep(wait);
                }
                Ok(resp) => return Ok(resp),
                Err(e) if !last && super::error_class(&e) == Some(super::ErrorClass::Network) => {
                    log::debug!("retrying after: {e:#}");
                    std::thread::sleep(self.retry.delay(attempt));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Fetch a manifest or index by tag or digest; `Ok(None)` on 404. The body is capped at
    /// [`MAX_MANIFEST_SIZE`]. The caller verifies the digest.
    pub fn manifest(&self, repo: &str, reference: &str) -> Result<Option<FetchedManifest>> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let mut resp =
            self.get_retrying(&path, repo, &[("Accept", MANIFEST_ACCEPT.to_string())])?;
        let status = resp.status().as_u16();
        if status == 404 {
            return Ok(None);
        }
        if status != 200 {
            bail!(
                "registry {} answered HTTP {status} for manifest {repo}:{reference}: {}",
                self.host,
                error_text(&mut resp)
            );
        }
        let content_type = header(&resp, "content-type");
        let digest_header = header(&resp, "docker-content-digest");
        let bytes = read_capped(resp.body_mut().as_reader(), MAX_MANIFEST_SIZE)
            .with_context(|| format!("reading manifest {repo}:{reference} from {}", self.host))?;
        Ok(Some(FetchedManifest {
            bytes,
            content_type,
            digest_header,
        }))
    }

    /// GET `/v2/<repo>/referrers/<digest>?artifactType=…`; `Ok(None)` on 404 (API not supported).
    pub fn referrers_page(
        &self,
        path: &str,
        repo: &str,
    ) -> Result<Option<(Vec<u8>, Option<String>)>> {
        let mut resp = self.get_retrying(
            path,
            repo,
            &[("Accept", crate::source::oci::MEDIA_OCI_INDEX.to_string())],
        )?;
        let status = resp.status().as_u16();
        if status == 404 {
            return Ok(None);
        }
        if status != 200 {
            bail!(
                "registry {} answered HTTP {status} for {path}: {}",
                self.host,
                error_text(&mut resp)
            );
        }
        let link = header(&resp, "link");
        let bytes = read_capped(resp.body_mut().as_reader(), MAX_MANIFEST_SIZE)
            .with_context(|| format!("reading {path} from {}", self.host))?;
        Ok(Some((bytes, link)))
    }

    /// Start a blob GET at `offset` (a `Range` request when > 0, with `If-Range` when an ETag is known).
    pub fn blob_request(
        &self,
        repo: &str,
        digest: &str,
        offset: u64,
        end: Option<u64>,
        if_range: Option<&str>,
    ) -> Result<Response<Body>> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let mut headers: Vec<(&str, String)> = Vec::new();
        if offset > 0 || end.is_some() {
            let end = end.map(|e| e.to_string()).unwrap_or_default();
            headers.push(("Range", format!("bytes={offset}-{end}")));
            if let Some(tag) = if_range {
                headers.push(("If-Range", tag.to_string()));
            }
        }
        self.get(&path, repo, &headers)
    }
}

/// Read at most `cap` bytes; more is an error.
pub(crate) fn read_capped(r: impl Read, cap: u64) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.take(cap + 1)
        .read_to_end(&mut buf)
        .map_err(|e| NetworkError::new(format!("reading response: {e}")))?;
    if buf.len() as u64 > cap {
        bail!("response is larger than the {cap} byte limit");
    }
    Ok(buf)
}

fn load_ca(path: &Path) -> Result<ureq::tls::RootCerts> {
    let pem = std::fs::read(path).with_context(|| format!("reading CA file {}", path.display()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item.with_context(|| format!("malformed PEM in CA file {}", path.display()))? {
            ureq::tls::PemItem::Certificate(c) => certs.push(c),
            _ => continue,
        }
    }
    if certs.is_empty() {
        bail!("CA file {} contains no certificates", path.display());
    }
    Ok(ureq::tls::RootCerts::new_with_certs(&certs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "127.0.0.1:5000",
            "localhost",
            "localhost:80",
            "[::1]:5000",
            "127.1.2.3",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["example.com", "10.0.0.1:5000", "[fe80::1]:5"] {
            assert!(!is_loopback(h), "{h}");
        }
        assert!(host_matches("reg.lan:5000", &["reg.lan".to_string()]));
        assert!(!host_matches("reg2.lan:5000", &["reg.lan".to_string()]));
    }
}
