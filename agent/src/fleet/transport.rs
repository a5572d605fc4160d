//! The byte stream under MQTT: plain TCP or TLS (rustls + ring), as blocking
//! `embedded_io::{Read, Write}` through `embedded_io_adapters::std::FromStd`.

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use embedded_io_adapters::std::FromStd;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Where the broker is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl std::str::FromStr for BrokerUrl {
    type Err = anyhow::Error;

    /// `mqtt://HOST[:PORT]` (default 1883) or `mqtts://HOST[:PORT]` (default 8883); IPv6 hosts
    /// in brackets.
    fn from_str(s: &str) -> Result<BrokerUrl> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("mqtt://") {
            (false, r)
        } else {
            bail!("MQTT URL {s:?} must start with mqtt:// or mqtts://");
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') || rest.contains('@') {
            bail!("MQTT URL {s:?}: expected mqtt[s]://HOST[:PORT] (credentials go in the config)");
        }
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| anyhow!("MQTT URL {s:?}: unclosed '[' in IPv6 host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => bail!("MQTT URL {s:?}: junk after IPv6 host"),
            };
            (h.to_string(), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (rest.to_string(), None),
            }
        };
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| anyhow!("MQTT URL {s:?}: port {p:?} is not 1..65535"))?,
            None => default_port,
        };
        if host.is_empty() {
            bail!("MQTT URL {s:?} has no host");
        }
        Ok(BrokerUrl { host, port, tls })
    }
}

/// TLS files (PEM).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificates that may sign the broker's certificate. Required for mqtts://:
    /// fleets use a private CA and no system bundle is assumed on the device.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// Private key of the client certificate (PKCS#8, PKCS#1 or SEC1 PEM).
    pub key_file: Option<PathBuf>,
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading PEM certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing PEM certificates in {}", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no PEM CERTIFICATE block", path.display());
    }
    Ok(certs)
}

/// Builds the rustls client configuration from the TLS files.
pub fn client_config(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>> {
    let ca = files.ca_file.as_ref().ok_or_else(|| {
        anyhow!("mqtts:// needs a CA file ([mqtt] ca_file) to verify the broker's certificate")
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(ca)? {
        roots
            .add(cert)
            .with_context(|| format!("adding CA certificate from {}", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("setting up TLS protocol versions")?
        .with_root_certificates(roots);
    let config = match (&files.cert_file, &files.key_file) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("reading PEM private key from {}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .context("client certificate and key do not match or are unsupported")?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => bail!("client TLS needs both cert_file and key_file"),
    };
    Ok(Arc::new(config))
}

/// A connected stream.
pub enum Stream {
    Tcp(FromStd<TcpStream>),
    Tls(Box<FromStd<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>>),
}

/// How often a blocked read wakes up so the session can send keepalives and queued messages.
pub const READ_TICK: Duration = Duration::from_millis(100);

impl Stream {
    /// Connects (TCP, then the TLS handshake if configured).
    pub fn connect(
        url: &BrokerUrl,
        tls: Option<&Arc<rustls::ClientConfig>>,
        timeout: Duration,
    ) -> Result<Stream> {
        let addrs: Vec<_> = (url.host.as_str(), url.port)
            .to_socket_addrs()
            .with_context(|| format!("resolving MQTT broker {}:{}", url.host, url.port))?
            .collect();
        let mut last = None;
        let mut tcp = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let tcp = match (tcp, last) {
            (Some(t), _) => t,
            (None, Some(e)) => {
                return Err(e).with_context(|| {
                    format!("connecting to MQTT broker {}:{}", url.host, url.port)
                })
            }
            (None, None) => bail!("MQTT broker host {} resolved to no address", url.host),
        };
        tcp.set_nodelay(true).ok();
        tcp.set_write_timeout(Some(timeout))
            .context("setting socket write timeout")?;
        match tls {
            None => {
                tcp.set_read_timeout(Some(READ_TICK))
                    .context("setting socket read timeout")?;
                Ok(Stream::Tcp(FromStd::new(tcp)))
            }
            Some(cfg) => {
                let name = ServerName::try_from(url.host.clone())
                    .with_context(|| format!("{:?} is not a valid TLS server name", url.host))?;
                let mut conn = rustls::ClientConnection::new(cfg.clone(), name)
                    .context("creating TLS client connection")?;
                tcp.set_read_timeout(Some(timeout))
                    .context("setting socket read timeout")?;
                let mut tcp = tcp;
                while conn.is_handshaking() {
                    conn.complete_io(&mut tcp).with_context(|| {
                        format!("TLS handshake with MQTT broker {}:{}", url.host, url.port)
                    })?;
                }
                tcp.set_read_timeout(Some(READ_TICK))
                    .context("setting socket read timeout")?;
                Ok(Stream::Tls(Box::new(FromStd::new(
                    rustls::StreamOwned::new(conn, tcp),
                ))))
            }
        }
    }

    /// Reads some bytes; `Ok(None)` when the read tick passed without data.
    pub fn read_some(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let r = match self {
            Stream::Tcp(s) => embedded_io::Read::read(s, buf),
            Stream::Tls(s) => embedded_io::Read::read(s.as_mut(), buf),
        };
        match r {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "broker closed the connection",
            )),
            Ok(n) => Ok(Some(n)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes all bytes and flushes.
    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                embedded_io::Write::write_all(s, bytes)?;
                embedded_io::Write::flush(s)
            }
            Stream::Tls(s) => {
                embedded_io::Write::write_all(s.as_mut(), bytes)?;
                embedded_io::Write::flush(s.as_mut())
            }
        }
    }

    /// Closes the TCP connection (both directions).
    pub fn shutdown(&mut self) {
        let tcp = match self {
            Stream::Tcp(s) => s.inner(),
            Stream::Tls(s) => s.inner().get_ref(),
        };
        let _ = tcp.shutdown(std::net::Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        let u: BrokerUrl = "mqtt://127.0.0.1:1884".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port, u.tls), ("127.0.0.1", 1884, false));
        let u: BrokerUrl = "mqtts://broker.example".parse().unwrap();
        assert_eq!((u.port, u.tls), (8883, true));
        let u: BrokerUrl = "mqtt://[::1]:99".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 99));
        for bad in [
            "http://x",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://h:70000",
            "mqtt://u:p@h",
            "mqtt://h/x",
            "mqtt://[::1",
        ] {
            assert!(bad.parse::<BrokerUrl>().is_err(), "{bad}");
        }
    }
}
