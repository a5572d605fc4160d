//! Registry credentials (docker-style `auth.json` / `config.json`) and `WWW-Authenticate` challenges.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use base64::Engine as _;

/// Largest auth file we read.
const MAX_AUTH_FILE_SIZE: u64 = 1024 * 1024;

/// A username and password (or token) for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// `Basic <base64(user:pass)>`.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// Find credentials for `host` in a docker-style auth file (`{"auths":{"<host>":{"auth":"<base64 user:pass>"}}}`,
/// as written by `docker login`, `podman login` or `skopeo login`). Keys may carry a scheme and a
/// path (`https://index.docker.io/v1/`). A missing file is not an error.
pub fn load_auth_file(path: &Path, host: &str) -> Result<Option<Credentials>> {
    let bytes = match std::fs::metadata(path) {
        Ok(m) if m.len() > MAX_AUTH_FILE_SIZE => {
            bail!(
                "auth file {} is larger than {MAX_AUTH_FILE_SIZE} bytes",
                path.display()
            )
        }
        Ok(_) => {
            std::fs::read(path).with_context(|| format!("reading auth file {}", path.display()))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading auth file {}", path.display())),
    };
    parse_auth_file(&bytes, host).with_context(|| format!("auth file {}", path.display()))
}

#[derive(serde::Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(serde::Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

pub(crate) fn parse_auth_file(bytes: &[u8], host: &str) -> Result<Option<Credentials>> {
    let file: AuthFile = serde_json::from_slice(bytes).context("malformed JSON")?;
    let normalize = |k: &str| -> String {
        let k = k
            .strip_prefix("https://")
            .or_else(|| k.strip_prefix("http://"))
            .unwrap_or(k);
        k.split('/').next().unwrap_or("").to_string()
    };
    let aliases: &[&str] = if host == "docker.io" || host == "registry-1.docker.io" {
        &["docker.io", "index.docker.io", "registry-1.docker.io"]
    } else {
        &[]
    };
    for (key, entry) in &file.auths {
        let k = normalize(key);
        if k != host && !aliases.contains(&k.as_str()) {
            continue;
        }
        if let Some(auth) = &entry.auth {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .with_context(|| format!("auths.{key}.auth is not valid base64"))?;
            let raw =
                String::from_utf8(raw).with_context(|| format!("auths.{key}.auth is not UTF-8"))?;
            let Some((u, p)) = raw.split_once(':') else {
                bail!("auths.{key}.auth does not decode to USER:PASSWORD");
            };
            return Ok(Some(Credentials {
                username: u.to_string(),
                password: p.to_string(),
            }));
        }
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            return Ok(Some(Credentials {
                username: u.clone(),
                password: p.clone(),
            }));
        }
    }
    Ok(None)
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parse `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"` (RFC 7235 auth-params;
/// quoted strings may contain commas).
pub(crate) fn parse_challenge(header: &str) -> Result<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let params = parse_params(rest);
    if scheme.eq_ignore_ascii_case("basic") {
        return Ok(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        bail!("unsupported authentication scheme {scheme:?} in WWW-Authenticate: {header:?}");
    }
    let get = |k: &str| {
        params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    let realm =
        get("realm").with_context(|| format!("Bearer challenge without realm: {header:?}"))?;
    Ok(Challenge::Bearer {
        realm,
        service: get("service"),
        scope: get("scope"),
    })
}

/// The `error` auth-param of a challenge (RFC 6750 §3: `invalid_token`, `insufficient_scope`).
pub(crate) fn challenge_error(header: &str) -> Option<String> {
    let (_, rest) = header.trim().split_once(' ')?;
    parse_params(rest)
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("error"))
        .map(|(_, v)| v)
}

fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b' ' || b[i] == b',') {
            i += 1;
        }
        let start = i;
        while i < b.len() && b[i] != b'=' && b[i] != b',' {
            i += 1;
        }
        let name = s[start..i].trim().to_string();
        if i >= b.len() || b[i] != b'=' {
            continue;
        }
        i += 1;
        let mut value = String::new();
        if i < b.len() && b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                // push whole UTF-8 chars
                let ch_len = s[i..].chars().next().map(char::len_utf8).unwrap_or(1);
                value.push_str(&s[i..i + ch_len]);
                i += ch_len;
            }
            i += 1;
        } else {
            let vs = i;
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
            value = s[vs..i].trim().to_string();
        }
        out.push((name, value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:ota/rootfs:pull,push""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.example.com/token".into(),
                service: Some("registry.example.com".into()),
                scope: Some("repository:ota/rootfs:pull,push".into()),
            }
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="x""#).unwrap(),
            Challenge::Basic
        );
        assert_eq!(
            challenge_error(
                r#"Bearer realm="http://r/token",service="s",scope="repository:a:pull",error="insufficient_scope""#
            )
            .as_deref(),
            Some("insufficient_scope")
        );
        assert_eq!(challenge_error(r#"Bearer realm="http://r/token""#), None);
        assert!(parse_challenge("Negotiate abc").is_err());
        assert!(parse_challenge(r#"Bearer service="x""#).is_err());
    }

    #[test]
    fn auth_files() {
        let f = br#"{"auths":{"https://reg.example.com:5000/v1/":{"auth":"dXNlcjpwYTpzcw=="},
                    "other.example.com":{"username":"a","password":"b"}}}"#;
        let c = parse_auth_file(f, "reg.example.com:5000").unwrap().unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("user", "pa:ss")
        );
        let c = parse_auth_file(f, "other.example.com").unwrap().unwrap();
        assert_eq!(c.username, "a");
        assert!(parse_auth_file(f, "nope.example.com").unwrap().is_none());
        assert!(parse_auth_file(br#"{"auths":{"h":{"auth":"!!"}}}"#, "h").is_err());
        assert!(parse_auth_file(b"not json", "h").is_err());
        assert!(!format!("{c:?}").contains('b') || format!("{c:?}").contains("redacted"));
        assert_eq!(
            Credentials {
                username: "user".into(),
                password: "pa:ss".into()
            }
            .basic_header(),
            "Basic dXNlcjpwYTpzcw=="
        );
    }
}
