//! Shared helpers for the source/fetch integration tests: a real `docker-registry` on loopback,
//! OCI layouts made in Rust, pushes with `skopeo`, and small HTTP servers (mock registry, fault proxy).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod proxy;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Deterministic incompressible bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn require_tool(name: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{name} not found: install the Debian package {package}"
    );
}

pub fn wait_port(port: u16, what: &str, log: &Path) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{what} did not listen on port {port}; log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Kills and reaps a child process when dropped.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct RegistryOpts {
    pub tls: Option<(PathBuf, PathBuf)>,
    pub htpasswd: Option<PathBuf>,
}

/// A real Debian `docker-registry` on 127.0.0.1.
pub struct Registry {
    pub port: u16,
    pub dir: PathBuf,
    _guard: ChildGuard,
}

impl Registry {
    pub fn start(dir: &Path, opts: RegistryOpts) -> Registry {
        require_tool("docker-registry", "docker-registry");
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("data").display()
        );
        if let Some((cert, key)) = &opts.tls {
            cfg += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            );
        }
        if let Some(h) = &opts.htpasswd {
            cfg += &format!(
                "auth:\n  htpasswd:\n    realm: otter-test\n    path: {}\n",
                h.display()
            );
        }
        Registry::serve(dir, port, cfg)
    }

    /// A plain-HTTP registry with distribution's token auth (`auth.token`): `realm` is the token
    /// endpoint, tokens must be issued by `issuer` for `service` and signed by a key whose
    /// certificate chains to `root_certs` (PEM).
    pub fn start_token_auth(
        dir: &Path,
        realm: &str,
        service: &str,
        issuer: &str,
        root_certs: &Path,
    ) -> Registry {
        require_tool("docker-registry", "docker-registry");
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let cfg = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\nauth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
            dir.join("data").display(),
            root_certs.display()
        );
        Registry::serve(dir, port, cfg)
    }

    fn serve(dir: &Path, port: u16, cfg: String) -> Registry {
        let cfg_path = dir.join("config.yml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let log = dir.join("registry.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("starting docker-registry");
        let guard = ChildGuard(child);
        wait_port(port, "docker-registry", &log);
        Registry {
            port,
            dir: dir.to_path_buf(),
            _guard: guard,
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `skopeo copy` an OCI layout tag into the registry.
pub fn skopeo_push(layout: &Path, tag: &str, dest: &str, extra: &[&str]) {
    require_tool("skopeo", "skopeo");
    let mut cmd = Command::new("skopeo");
    cmd.args([
        "--insecure-policy",
        "copy",
        "--quiet",
        "--preserve-digests",
        "--dest-tls-verify=false",
    ])
    .args(extra)
    .arg(format!("oci:{}:{tag}", layout.display()))
    .arg(dest);
    run(&mut cmd);
}

/// A blob written into a layout.
#[derive(Clone, Debug)]
pub struct Blob {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Blob {
    pub fn json(&self) -> String {
        format!(
            r#"{{"mediaType":"{}","digest":"{}","size":{}}}"#,
            self.media_type, self.digest, self.size
        )
    }
}

pub fn write_blob(layout: &Path, media_type: &str, data: &[u8]) -> Blob {
    let d = sha(data);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(d.strip_prefix("sha256:").unwrap()), data).unwrap();
    Blob {
        media_type: media_type.into(),
        digest: d,
        size: data.len() as u64,
    }
}

/// A tar with the given files.
pub fn tar_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// An image written into a layout: its manifest blob, config and layers.
#[derive(Clone, Debug)]
pub struct Image {
    pub manifest: Blob,
    pub manifest_bytes: Vec<u8>,
    pub config: Blob,
    pub layers: Vec<Blob>,
}

pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Write an image (config + layers + manifest blobs) into a layout; not yet in index.json.
pub fn write_image(layout: &Path, arch: &str, version: &str, layers: &[(&str, Vec<u8>)]) -> Image {
    let layer_blobs: Vec<Blob> = layers
        .iter()
        .map(|(mt, d)| write_blob(layout, mt, d))
        .collect();
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|(mt, d)| {
            if *mt == LAYER_GZIP {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(&d[..])
                    .read_to_end(&mut out)
                    .unwrap();
                format!("\"{}\"", sha(&out))
            } else {
                format!("\"{}\"", sha(d))
            }
        })
        .collect();
    let config = format!(
        r#"{{"architecture":"{arch}","os":"linux","created":"2024-05-01T00:00:00Z","config":{{"Labels":{{"org.opencontainers.image.version":"{version}"}}}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        diff_ids.join(",")
    );
    let config = write_blob(
        layout,
        "application/vnd.oci.image.config.v1+json",
        config.as_bytes(),
    );
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{},"layers":[{}]}}"#,
        config.json(),
        layer_blobs
            .iter()
            .map(Blob::json)
            .collect::<Vec<_>>()
            .join(",")
    );
    let mblob = write_blob(layout, MANIFEST, manifest.as_bytes());
    Image {
        manifest: mblob,
        manifest_bytes: manifest.into_bytes(),
        config,
        layers: layer_blobs,
    }
}

/// Write `oci-layout` and an `index.json` listing `entries` (descriptor JSON strings).
pub fn write_index(layout: &Path, entries: &[String]) {
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    std::fs::write(
        layout.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[{}]}}"#,
            entries.join(",")
        ),
    )
    .unwrap();
}

pub fn tagged(b: &Blob, tag: &str) -> String {
    format!(
        r#"{{"mediaType":"{}","digest":"{}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"{tag}"}}}}"#,
        b.media_type, b.digest, b.size
    )
}

/// A small multi-layer test image (a gzip layer and a plain tar layer) as layout tag `tag`.
pub fn small_image(layout: &Path, tag: &str) -> Image {
    let l1 = gzip(&tar_of(&[
        ("etc/os-release", b"NAME=otter-test\n".to_vec()),
        ("usr/bin/tool", random_bytes(300_000, 1)),
    ]));
    let l2 = tar_of(&[("usr/share/data.bin", random_bytes(700_000, 2))]);
    let img = write_image(
        layout,
        "amd64",
        "1.0.0",
        &[(LAYER_GZIP, l1), (LAYER_TAR, l2)],
    );
    write_index(layout, &[tagged(&img.manifest, tag)]);
    img
}

/// Upload a blob and a manifest straight to a registry (for artifacts skopeo will not copy).
pub fn push_blob(base: &str, repo: &str, data: &[u8]) {
    let agent = ureq::Agent::new_with_defaults();
    let resp = agent
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send_empty()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let loc = resp
        .headers()
        .get("location")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let loc = if loc.starts_with("http") {
        loc
    } else {
        format!("{base}{loc}")
    };
    let sep = if loc.contains('?') { '&' } else { '?' };
    let resp = agent
        .put(format!("{loc}{sep}digest={}", sha(data)))
        .header("Content-Type", "application/octet-stream")
        .send(data)
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201, "blob upload");
}

pub fn push_manifest(base: &str, repo: &str, reference: &str, media_type: &str, data: &[u8]) {
    let resp = ureq::Agent::new_with_defaults()
        .put(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("Content-Type", media_type)
        .send(data)
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201, "manifest upload");
}

/// A CA and a server certificate for 127.0.0.1 made with openssl: (ca.pem, cert.pem, key.pem).
pub fn make_tls(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    require_tool("openssl", "openssl");
    let ca_key = dir.join("ca.key");
    let ca = dir.join("ca.pem");
    let key = dir.join("server.key");
    let csr = dir.join("server.csr");
    let cert = dir.join("server.pem");
    let ext = dir.join("ext.cnf");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=otter test CA",
        ])
        .arg("-keyout")
        .arg(&ca_key)
        .arg("-out")
        .arg(&ca));
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
        .arg("-in")
        .arg(&csr)
        .arg("-CA")
        .arg(&ca)
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-out")
        .arg(&cert)
        .arg("-extfile")
        .arg(&ext));
    (ca, cert, key)
}

/// Options for tests: a blob dir in `dir`, fast retries.
pub fn test_opts(blob_dir: &Path) -> otter::source::SourceOptions {
    otter::source::SourceOptions {
        blob_dir: blob_dir.to_path_buf(),
        platform: Some("linux/amd64".into()),
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(5),
        retry: otter::fetch::RetryPolicy {
            max_attempts: 6,
            initial_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
        },
        space_headroom: 0,
        ..Default::default()
    }
}

/// Read a whole blob through a source.
pub fn read_blob(src: &mut dyn otter::source::ImageSource, b: &Blob) -> anyhow::Result<Vec<u8>> {
    let desc = otter::source::Descriptor {
        media_type: b.media_type.clone(),
        digest: b.digest.clone(),
        size: b.size,
        annotations: Default::default(),
        artifact_type: None,
    };
    let mut r = src.open_blob(&desc)?;
    let mut out = Vec::new();
    r.read_to_end(&mut out)?;
    Ok(out)
}

pub fn layout_blob(layout: &Path, digest: &str) -> Vec<u8> {
    std::fs::read(
        layout
            .join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap()),
    )
    .unwrap()
}
