//! Image references in the transports users know from skopeo and bootc:
//! `docker://HOST[:PORT]/REPO[:TAG][@DIGEST]` (also bare `HOST/REPO:TAG`), `oci:DIR[:TAG]`,
//! `oci-archive:FILE[:TAG]`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{bail, Context, Result};

use super::digest::sha256_hex;

/// Where an image comes from. `Display` prints the canonical form, which parses back to the same value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ImageRef {
    /// An OCI distribution registry: `docker://host[:port]/repo[:tag][@sha256:…]`.
    Registry {
        host: String,
        repo: String,
        tag: Option<String>,
        digest: Option<String>,
    },
    /// An OCI image layout directory: `oci:DIR[:TAG]`.
    OciDir { path: PathBuf, tag: Option<String> },
    /// A tar of an OCI image layout: `oci-archive:FILE[:TAG]`.
    OciArchive { path: PathBuf, tag: Option<String> },
}

/// Longest tag the distribution spec allows.
const MAX_TAG_LEN: usize = 128;
/// Longest repository name we accept (the spec recommends registries accept at least 255).
const MAX_REPO_LEN: usize = 255;

impl FromStr for ImageRef {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<ImageRef> {
        parse(s).with_context(|| format!("invalid image reference {s:?}"))
    }
}

fn parse(s: &str) -> Result<ImageRef> {
    if s.is_empty() {
        bail!("empty image reference");
    }
    if let Some(rest) = s.strip_prefix("docker://") {
        return parse_registry(rest);
    }
    if let Some(rest) = s.strip_prefix("oci:") {
        let (path, tag) = split_path_tag(rest)?;
        return Ok(ImageRef::OciDir { path, tag });
    }
    if let Some(rest) = s.strip_prefix("oci-archive:") {
        let (path, tag) = split_path_tag(rest)?;
        return Ok(ImageRef::OciArchive { path, tag });
    }
    if let Some((transport, _)) = s.split_once(':') {
        if !transport.contains('/')
            && !transport.contains('.')
            && s[transport.len()..].starts_with("://")
        {
            bail!("unsupported transport {transport:?}: use docker://, oci: or oci-archive:");
        }
    }
    parse_registry(s)
}

/// `DIR[:TAG]`, split at the first `:` the way skopeo's oci transports do.
fn split_path_tag(s: &str) -> Result<(PathBuf, Option<String>)> {
    let (path, tag) = match s.split_once(':') {
        Some((p, t)) => (p, Some(t)),
        None => (s, None),
    };
    if path.is_empty() {
        bail!("missing path (write oci:DIR[:TAG] or oci-archive:FILE[:TAG])");
    }
    let tag = match tag {
        None => None,
        Some("") => bail!("empty tag after ':'"),
        Some(t) if t.len() > 4096 || t.chars().any(|c| c.is_control()) => {
            bail!("invalid tag {t:?}")
        }
        Some(t) => Some(t.to_string()),
    };
    Ok((PathBuf::from(path), tag))
}

fn parse_registry(s: &str) -> Result<ImageRef> {
    let Some((host, rest)) = s.split_once('/') else {
        bail!("no repository: write docker://HOST/REPO[:TAG] (e.g. docker://registry.example.com/os/rootfs:stable)");
    };
    if !looks_like_host(host) {
        bail!(
            "{host:?} is not a registry host: references need one, e.g. docker://docker.io/{s} or docker://registry.example.com/{s}"
        );
    }
    check_host(host)?;
    let (name, digest) = match rest.split_once('@') {
        Some((n, d)) => {
            sha256_hex(d)?;
            (n, Some(d.to_string()))
        }
        None => (rest, None),
    };
    let (repo, tag) = match name.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, Some(t.to_string())),
        _ => (name, None),
    };
    check_repo(repo)?;
    if let Some(t) = &tag {
        check_tag(t)?;
    }
    Ok(ImageRef::Registry {
        host: host.to_string(),
        repo: repo.to_string(),
        tag,
        digest,
    })
}

fn looks_like_host(h: &str) -> bool {
    h.contains('.') || h.contains(':') || h == "localhost" || h.starts_with('[')
}

fn check_host(h: &str) -> Result<()> {
    let (name, port) = if let Some(rest) = h.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            bail!("malformed IPv6 host {h:?}");
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            bail!("malformed IPv6 address {v6:?}");
        }
        match after {
            "" => (None, None),
            p => match p.strip_prefix(':') {
                Some(p) => (None, Some(p)),
                None => bail!("malformed host {h:?}"),
            },
        }
    } else {
        match h.split_once(':') {
            Some((n, p)) => (Some(n), Some(p)),
            None => (Some(h), None),
        }
    };
    if let Some(name) = name {
        let ok = !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !ok {
            bail!("malformed registry host {name:?}");
        }
    }
    if let Some(p) = port {
        if p.parse::<u16>().map(|p| p == 0).unwrap_or(true) {
            bail!("malformed port {p:?} in registry host {h:?}");
        }
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`
fn check_repo(repo: &str) -> Result<()> {
    if repo.is_empty() || repo.len() > MAX_REPO_LEN {
        bail!("repository name must be 1 to {MAX_REPO_LEN} characters");
    }
    for comp in repo.split('/') {
        let b = comp.as_bytes();
        let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        let mut ok = !b.is_empty() && alnum(b[0]) && alnum(b[b.len() - 1]);
        let mut i = 0;
        while ok && i < b.len() {
            if alnum(b[i]) {
                i += 1;
                continue;
            }
            // a separator run: ".", "_", "__" or "-+"
            let start = i;
            while i < b.len() && !alnum(b[i]) {
                i += 1;
            }
            let sep = &comp[start..i];
            ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
        }
        if !ok {
            bail!(
                "malformed repository name {repo:?}: components are lowercase letters and digits separated by '.', '_', '__' or '-'"
            );
        }
    }
    Ok(())
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`
fn check_tag(tag: &str) -> Result<()> {
    let b = tag.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= MAX_TAG_LEN
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-');
    if !ok {
        bail!("malformed tag {tag:?}: 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'");
    }
    Ok(())
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Registry {
                host,
                repo,
                tag,
                digest,
            } => {
                write!(f, "docker://{host}/{repo}")?;
                if let Some(t) = tag {
                    write!(f, ":{t}")?;
                }
                if let Some(d) = digest {
                    write!(f, "@{d}")?;
                }
                Ok(())
            }
            ImageRef::OciDir { path, tag } => {
                write!(f, "oci:{}", path.display())?;
                tag.iter().try_for_each(|t| write!(f, ":{t}"))
            }
            ImageRef::OciArchive { path, tag } => {
                write!(f, "oci-archive:{}", path.display())?;
                tag.iter().try_for_each(|t| write!(f, ":{t}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(host: &str, repo: &str, tag: Option<&str>, digest: Option<&str>) -> ImageRef {
        ImageRef::Registry {
            host: host.into(),
            repo: repo.into(),
            tag: tag.map(Into::into),
            digest: digest.map(Into::into),
        }
    }

    #[test]
    fn parse_good() {
        let d = format!("sha256:{}", "0".repeat(64));
        let cases: Vec<(String, ImageRef, String)> = vec![
            (
                "docker://registry.example.com/os/rootfs:stable".into(),
                reg("registry.example.com", "os/rootfs", Some("stable"), None),
                "docker://registry.example.com/os/rootfs:stable".into(),
            ),
            (
                "127.0.0.1:5000/repo:v1.2".into(),
                reg("127.0.0.1:5000", "repo", Some("v1.2"), None),
                "docker://127.0.0.1:5000/repo:v1.2".into(),
            ),
            (
                format!("docker://localhost/a/b-c__d@{d}"),
                reg("localhost", "a/b-c__d", None, Some(&d)),
                format!("docker://localhost/a/b-c__d@{d}"),
            ),
            (
                format!("docker://[::1]:5000/x:t@{d}"),
                reg("[::1]:5000", "x", Some("t"), Some(&d)),
                format!("docker://[::1]:5000/x:t@{d}"),
            ),
            (
                "oci:/tmp/layout:v1".into(),
                ImageRef::OciDir {
                    path: "/tmp/layout".into(),
                    tag: Some("v1".into()),
                },
                "oci:/tmp/layout:v1".into(),
            ),
            (
                "oci:rel/dir".into(),
                ImageRef::OciDir {
                    path: "rel/dir".into(),
                    tag: None,
                },
                "oci:rel/dir".into(),
            ),
            (
                "oci-archive:/media/usb/os.tar:latest".into(),
                ImageRef::OciArchive {
                    path: "/media/usb/os.tar".into(),
                    tag: Some("latest".into()),
                },
                "oci-archive:/media/usb/os.tar:latest".into(),
            ),
        ];
        for (input, want, canon) in cases {
            let got: ImageRef = input.parse().unwrap();
            assert_eq!(got, want, "{input}");
            assert_eq!(got.to_string(), canon);
            assert_eq!(canon.parse::<ImageRef>().unwrap(), want);
        }
    }

    #[test]
    fn parse_bad() {
        for bad in [
            "",
            "alpine",
            "alpine:latest",
            "library/alpine:latest",
            "docker://host.example.com",
            "docker://host.example.com/",
            "docker://host.example.com/UPPER",
            "docker://host.example.com/a//b",
            "docker://host.example.com/a:-bad",
            "docker://host.example.com/a@sha256:abc",
            "docker://host.example.com:99999/a",
            "docker://bad_host.com/a",
            "oci:",
            "oci::tag",
            "oci:dir:",
            "oci-archive:",
            "ftp://x.example.com/a",
        ] {
            let e = bad.parse::<ImageRef>();
            assert!(e.is_err(), "{bad:?} parsed as {e:?}");
            let msg = format!("{:#}", e.unwrap_err());
            assert!(msg.contains("invalid image reference"), "{msg}");
        }
    }
}
