//! source: where an image comes from. Parses image references, resolves them to a verified
//! manifest and config, and opens verified blob streams, from a registry (downloaded resumably
//! through [`crate::fetch`]), an OCI layout directory or an oci-archive.

pub mod digest;
mod layout;
pub mod oci;
mod reference;
mod registry;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

pub use digest::{VerificationError, VerifyingReader};
pub use oci::{Descriptor, ImageConfig, Manifest, Platform};
pub use reference::ImageRef;

use crate::fetch::RetryPolicy;
use crate::progress::Progress;

/// An image resolved to one platform manifest.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    pub reference: ImageRef,
    /// `sha256:<hex>` of `manifest_bytes`.
    pub manifest_digest: String,
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    pub config_digest: String,
    pub config: ImageConfig,
}

/// Settings of a source. `Default` gives the documented defaults with
/// `blob_dir = /var/lib/otter/blobs`.
#[derive(Clone)]
pub struct SourceOptions {
    /// Platform to pick from an image index, `OS/ARCH[/VARIANT]`; default: the host (`linux/arm64` on aarch64).
    pub platform: Option<String>,
    /// Where registry blobs are downloaded (complete blobs, `.partial` files and journals).
    pub blob_dir: PathBuf,
    /// Docker-style auth files searched in order for the registry host (`auths.<host>.auth`). Default: none.
    pub auth_files: Vec<PathBuf>,
    /// Explicit registry credentials; take precedence over `auth_files` for the hosts in
    /// `credential_hosts`. The password is `password`, else the first line of `password_file`.
    /// Default: none.
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Registries (`host` or `host:port`) the explicit credentials are sent to; empty = every
    /// registry. Default: empty.
    pub credential_hosts: Vec<String>,
    /// PEM file with the CA certificate(s) to trust instead of the built-in Mozilla roots. Default: none.
    pub ca_file: Option<PathBuf>,
    /// Registry hosts (`host` or `host:port`) that may be reached over plain HTTP (when their TLS
    /// handshake fails). Loopback hosts always may. Default: none.
    pub insecure_hosts: Vec<String>,
    /// TCP/TLS connect timeout. Default 30 s.
    pub connect_timeout: Duration,
    /// Longest wait for response headers or for the next bytes of a body (stall detection). Default 30 s.
    pub read_timeout: Duration,
    /// Retries of failing requests. Default: 8 attempts without progress, 0.5 s doubling to 60 s.
    pub retry: RetryPolicy,
    /// Blobs downloaded at once. Default 3.
    pub concurrency: usize,
    /// Bandwidth cap for all downloads together, bytes per second. Default: none.
    pub max_bytes_per_sec: Option<u64>,
    /// Journal granularity: the partial file is synced and its hash recorded every this many bytes.
    /// A crash loses at most one chunk per blob. Default 1 MiB.
    pub chunk_size: u64,
    /// Free space required beyond the missing blobs before a download starts. Default 64 MiB.
    pub space_headroom: u64,
    /// Where download progress goes. Default: nowhere.
    pub progress: Option<Arc<dyn Progress>>,
}

impl Default for SourceOptions {
    fn default() -> SourceOptions {
        SourceOptions {
            platform: None,
            blob_dir: PathBuf::from("/var/lib/otter/blobs"),
            auth_files: Vec::new(),
            username: None,
            password: None,
            password_file: None,
            credential_hosts: Vec::new(),
            ca_file: None,
            insecure_hosts: Vec::new(),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            concurrency: 3,
            max_bytes_per_sec: None,
            chunk_size: 1024 * 1024,
            space_headroom: 64 * 1024 * 1024,
            progress: None,
        }
    }
}

impl fmt::Debug for SourceOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceOptions")
            .field("platform", &self.platform)
            .field("blob_dir", &self.blob_dir)
            .field("auth_files", &self.auth_files)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_file", &self.password_file)
            .field("credential_hosts", &self.credential_hosts)
            .field("ca_file", &self.ca_file)
            .field("insecure_hosts", &self.insecure_hosts)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("retry", &self.retry)
            .field("concurrency", &self.concurrency)
            .field("max_bytes_per_sec", &self.max_bytes_per_sec)
            .field("chunk_size", &self.chunk_size)
            .field("space_headroom", &self.space_headroom)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// A place images come from.
pub trait ImageSource {
    /// Resolve the reference to one verified image manifest (picking the platform from an index)
    /// and its verified config.
    fn resolve(&mut self) -> Result<ResolvedImage>;
    /// A reader over the blob; reading it to EOF fails if size or digest do not match `desc`.
    /// For a registry the blob is first downloaded (resumably) into `blob_dir`. A descriptor of a
    /// manifest media type (e.g. from [`ImageSource::referrers`]) reads that manifest.
    fn open_blob(&mut self, desc: &Descriptor) -> Result<Box<dyn std::io::Read + '_>>;
    /// Artifacts that refer to `manifest_digest` (OCI referrers / `sha256-<hex>` tag fallback /
    /// layout entries with a `subject`), filtered by artifact type; used for signatures and deltas.
    fn referrers(&mut self, manifest_digest: &str, artifact_type: &str) -> Result<Vec<Descriptor>>;
    /// Download these blobs ahead of [`ImageSource::open_blob`] — several at once, after a
    /// free-space check. Local sources have nothing to do.
    fn prefetch(&mut self, _blobs: &[Descriptor]) -> Result<()> {
        Ok(())
    }
    /// Byte ranges `[start, end)` of a blob (sorted, not overlapping), fetched resumably for a
    /// zstd:chunked partial pull ([`crate::chunked`]). `Ok(None)`: this source does not serve
    /// ranges (local sources: their blobs are read whole; a registry that ignores Range).
    fn fetch_ranges(
        &mut self,
        _desc: &Descriptor,
        _ranges: &[(u64, u64)],
    ) -> Result<Option<crate::fetch::Ranges>> {
        Ok(None)
    }
}

/// Open the source a reference names.
pub fn open(reference: &ImageRef, opts: &SourceOptions) -> Result<Box<dyn ImageSource>> {
    let src: Box<dyn ImageSource> = match reference {
        ImageRef::Registry { host, repo, .. } => Box::new(
            registry::RegistrySource::new(reference, host, repo, opts)
                .with_context(|| format!("opening {reference}"))?,
        ),
        ImageRef::OciDir { path, tag } => Box::new(
            layout::open_dir(reference, path, tag.as_deref(), opts)
                .with_context(|| format!("opening {reference}"))?,
        ),
        ImageRef::OciArchive { path, tag } => Box::new(
            layout::open_archive(reference, path, tag.as_deref(), opts)
                .with_context(|| format!("opening {reference}"))?,
        ),
    };
    Ok(src)
}
