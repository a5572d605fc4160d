//! Release signing and verification against the real tools: the `minisign` CLI (both
//! directions), `umoci`/`skopeo` layouts, and a loopback `docker-registry`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use otter::publish::layout::OciLayout;
use otter::source::{ImageRef, SourceOptions};
use otter::verify::{
    check_content, check_not_older, verify_release, ArtifactDescriptor, ReleaseStatement,
    ReleaseVersion, TrustPolicy, VerificationError,
};

const PUBLISH: &str = env!("CARGO_BIN_EXE_otter-publish");

fn need(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` not found: install the Debian package `{package}` (scripts/setup.sh)"
    );
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn run_fail(cmd: &mut Command) -> (i32, String) {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(!out.status.success(), "{cmd:?} should have failed");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A one-layer OCI layout made by umoci, tagged `tag`, with a version label.
fn make_image(dir: &Path, tag: &str, version: &str, content: &str) {
    need("umoci", "umoci");
    let rootfs = dir.with_extension("rootfs");
    fs::create_dir_all(rootfs.join("etc")).unwrap();
    fs::write(rootfs.join("etc/os-release"), content).unwrap();
    let img = format!("{}:{tag}", dir.display());
    if !dir.exists() {
        run(Command::new("umoci").args(["init", "--layout"]).arg(dir));
    }
    run(Command::new("umoci").args(["new", "--image", &img]));
    // GNU tar + `umoci raw add-layer`: umoci 0.4.7's `insert` writes layers whose tar stream lacks
    // the last entry's padding and the end-of-archive blocks (GNU tar: "Unexpected EOF").
    let tar = dir.with_extension("layer.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    run(Command::new("umoci")
        .args(["raw", "add-layer", "--image", &img])
        .arg(&tar));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &img,
        "--config.label",
        &format!("org.opencontainers.image.version={version}"),
    ]));
}

fn minisign_keypair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    need("minisign", "minisign");
    let (pk, sk) = (
        dir.join(format!("{name}.pub")),
        dir.join(format!("{name}.key")),
    );
    run(Command::new("minisign")
        .args(["-G", "-W", "-p"])
        .arg(&pk)
        .arg("-s")
        .arg(&sk));
    (pk, sk)
}

fn keys_dir(dir: &Path, pubs: &[&Path]) -> PathBuf {
    let d = dir.join(format!("keys{}", pubs.len()));
    fs::create_dir_all(&d).unwrap();
    for (i, p) in pubs.iter().enumerate() {
        fs::copy(p, d.join(format!("k{i}.pub"))).unwrap();
    }
    d
}

fn policy(keys: &Path) -> TrustPolicy {
    TrustPolicy::default().with_key_dir(keys.to_path_buf())
}

fn source_opts(tmp: &Path) -> SourceOptions {
    SourceOptions {
        blob_dir: tmp.join("blobs-cache"),
        ..SourceOptions::default()
    }
}

/// Device side: resolve the image and verify its release statement.
fn device_verify(
    image: &str,
    tmp: &Path,
    policy: &TrustPolicy,
) -> anyhow::Result<Option<ReleaseStatement>> {
    let r: ImageRef = image.parse()?;
    let mut src = otter::source::open(&r, &source_opts(tmp))?;
    let resolved = src.resolve()?;
    verify_release(src.as_mut(), &resolved, policy)
}

/// Device side: import the image's layers into a fresh bare-user repo; returns the ostree
/// ContentChecksum as printed by the real `ostree show`.
fn device_import(image: &str, tmp: &Path) -> String {
    need("ostree", "ostree");
    let r: ImageRef = image.parse().unwrap();
    let mut src = otter::source::open(&r, &source_opts(tmp)).unwrap();
    let resolved = src.resolve().unwrap();
    let repo_path = tmp.join(format!("repo-{}", &resolved.manifest_digest[7..19]));
    let repo = otter::ostree::Repo::init(&repo_path, otter::ostree::RepoMode::BareUser).unwrap();
    let mut importer = otter::import::Importer::new(&repo);
    for layer in &resolved.manifest.layers {
        let mut rd = src.open_blob(layer).unwrap();
        importer.apply_layer(&layer.media_type, &mut rd).unwrap();
    }
    let imported = importer.commit("test", Vec::new(), None).unwrap();
    let out = run(Command::new("ostree")
        .arg(format!("--repo={}", repo_path.display()))
        .arg("show")
        .arg(imported.commit.to_hex()));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let shown = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("ContentChecksum:"))
        .unwrap_or_else(|| panic!("no ContentChecksum in `ostree show`: {text}"))
        .trim()
        .to_string();
    assert_eq!(shown, imported.content_checksum.to_hex());
    shown
}

fn verification_error(e: &anyhow::Error) -> VerificationError {
    e.chain()
        .find_map(|c| c.downcast_ref::<VerificationError>())
        .unwrap_or_else(|| panic!("not a VerificationError: {e:#}"))
        .clone()
}

fn subject_of(layout: &Path, tag: &str) -> ArtifactDescriptor {
    OciLayout::open(layout).unwrap().resolve(Some(tag)).unwrap()
}

fn statement_for(digest: &str, version: &str) -> ReleaseStatement {
    ReleaseStatement {
        manifest_digest: digest.to_string(),
        content_checksum: "c0".repeat(32),
        version: version.to_string(),
        timestamp: 1_800_000_000,
        board: Some("qemu-arm64".into()),
        import_rules: 1,
    }
}

/// Sign `stmt_bytes` with the minisign CLI (prehashed) and the given trusted comment.
fn cli_sign(dir: &Path, sk: &Path, stmt_bytes: &[u8], comment: &str) -> Vec<u8> {
    let f = dir.join("statement.json");
    fs::write(&f, stmt_bytes).unwrap();
    let _ = fs::remove_file(dir.join("statement.json.minisig"));
    run(Command::new("minisign")
        .args(["-S", "-H", "-s"])
        .arg(sk)
        .arg("-m")
        .arg(&f)
        .args(["-t", comment]));
    fs::read(dir.join("statement.json.minisig")).unwrap()
}

#[test]
fn minisign_cli_signature_is_accepted_by_device() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let img = t.join("img");
    make_image(&img, "v1", "1.0.0", "ID=test\n");
    let (pk, sk) = minisign_keypair(t, "cli");
    let subject = subject_of(&img, "v1");
    let stmt = statement_for(&subject.digest, "1.0.0");
    let bytes = stmt.to_canonical_json();
    let sig = cli_sign(t, &sk, &bytes, &stmt.trusted_comment());
    OciLayout::open(&img)
        .unwrap()
        .attach(&subject, &bytes, &sig)
        .unwrap();

    let keys = keys_dir(t, &[&pk]);
    let mut p = policy(&keys);
    p.board = Some("qemu-arm64".into());
    let got = device_verify(&format!("oci:{}:v1", img.display()), t, &p)
        .unwrap()
        .unwrap();
    assert_eq!(got, stmt);
    check_content(&got, &"c0".repeat(32)).unwrap();

    // the same through the publisher's verify command
    run(Command::new(PUBLISH)
        .args(["verify", "--key"])
        .arg(&pk)
        .arg(format!("oci:{}:v1", img.display())));

    // another board is refused
    p.board = Some("rpi4".into());
    let e = device_verify(&format!("oci:{}:v1", img.display()), t, &p).unwrap_err();
    assert!(
        matches!(verification_error(&e), VerificationError::WrongBoard { .. }),
        "{e:#}"
    );
}

#[test]
fn publish_keys_and_signatures_interoperate_with_minisign_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    need("minisign", "minisign");
    let prefix = t.join("release");
    run(Command::new(PUBLISH).args(["keygen", "--out"]).arg(&prefix));
    let (sk, pk) = (t.join("release.key"), t.join("release.pub"));
    assert!(fs::read_to_string(&pk)
        .unwrap()
        .starts_with("untrusted comment: minisign public key "));
    // refuses to overwrite
    let (code, err) = run_fail(Command::new(PUBLISH).args(["keygen", "--out"]).arg(&prefix));
    assert_eq!(code, 1);
    assert!(err.contains("already exists"), "{err}");

    // garbage secret key / usage errors
    fs::write(t.join("garbage.key"), "not a key\n").unwrap();
    let (code, err) = run_fail(
        Command::new(PUBLISH)
            .args(["sign", "--key"])
            .arg(t.join("garbage.key"))
            .arg("oci:/nonexistent:v1"),
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("garbage.key") && err.contains("not a minisign secret key"),
        "{err}"
    );
    let (code, err) = run_fail(Command::new(PUBLISH).args(["sign", "oci:/x:y"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--key"), "{err}");

    // the minisign CLI signs with our secret key (no password) and verifies with our public key
    let f = t.join("file.txt");
    fs::write(&f, "payload").unwrap();
    run(Command::new("minisign")
        .args(["-S", "-s"])
        .arg(&sk)
        .arg("-m")
        .arg(&f));
    run(Command::new("minisign")
        .args(["-V", "-p"])
        .arg(&pk)
        .arg("-m")
        .arg(&f));

    // otter-publish sign; the statement's signature verifies with `minisign -V`
    let img = t.join("img");
    make_image(&img, "v2", "2.0.0", "ID=test\nVERSION=2\n");
    let image = format!("oci:{}:v2", img.display());
    let out = run(Command::new(PUBLISH)
        .args(["sign", "--key"])
        .arg(&sk)
        .arg(&image)
        .args(["--board", "qemu-arm64"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("version 2.0.0"));
    let subject = subject_of(&img, "v2");
    let layout = OciLayout::open(&img).unwrap();
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(img.join("index.json")).unwrap()).unwrap();
    let art = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["artifactType"] == "application/vnd.otter.release.v1+json")
        .expect("artifact entry in index.json")
        .clone();
    let manifest: serde_json::Value = serde_json::from_slice(
        &layout
            .read_blob(art["digest"].as_str().unwrap(), 1 << 20)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["subject"]["digest"], subject.digest.as_str());
    assert_eq!(
        manifest["config"]["digest"],
        otter::verify::artifact::EMPTY_DIGEST
    );
    let stmt = layout
        .read_blob(manifest["layers"][0]["digest"].as_str().unwrap(), 4096)
        .unwrap();
    let sig = layout
        .read_blob(manifest["layers"][1]["digest"].as_str().unwrap(), 4096)
        .unwrap();
    fs::write(t.join("stmt.json"), &stmt).unwrap();
    fs::write(t.join("stmt.json.minisig"), &sig).unwrap();
    let out = run(Command::new("minisign")
        .args(["-V", "-p"])
        .arg(&pk)
        .arg("-m")
        .arg(t.join("stmt.json")));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("otter-release version=2.0.0") && shown.contains(&subject.digest),
        "{shown}"
    );

    // the device accepts it
    let keys = keys_dir(t, &[&pk]);
    let got = device_verify(&image, t, &policy(&keys)).unwrap().unwrap();
    assert_eq!(got.version, "2.0.0");
    assert_eq!(got.board.as_deref(), Some("qemu-arm64"));
    // the signed tree is the one a device import produces (checked with `ostree show`)
    let imported = device_import(&image, t);
    assert_eq!(got.content_checksum, imported);
    check_content(&got, &imported).unwrap();

    // and real tools still read the layout with our extra index entry
    need("skopeo", "skopeo");
    run(Command::new("skopeo").arg("inspect").arg(&image));
    run(Command::new("skopeo")
        .arg("copy")
        .arg(&image)
        .arg(format!("oci:{}:v2", t.join("copy").display())));
    let out = run(Command::new("umoci").args(["ls", "--layout"]).arg(&img));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v2");
    run(Command::new("umoci")
        .args([
            "unpack",
            "--rootless",
            "--image",
            &format!("{}:v2", img.display()),
        ])
        .arg(t.join("bundle")));
}

/// One refusal case: attach `stmt`/`sig` to a fresh image and check the device's error.
struct Case {
    tmp: tempfile::TempDir,
    img: PathBuf,
    subject: ArtifactDescriptor,
    pk: PathBuf,
    sk: PathBuf,
}

impl Case {
    fn new() -> Case {
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("img");
        make_image(&img, "v1", "1.0.0", "ID=case\n");
        let (pk, sk) = minisign_keypair(tmp.path(), "trusted");
        let subject = subject_of(&img, "v1");
        Case {
            tmp,
            img,
            subject,
            pk,
            sk,
        }
    }
    fn image(&self) -> String {
        format!("oci:{}:v1", self.img.display())
    }
    fn attach(&self, stmt: &[u8], sig: &[u8]) {
        OciLayout::open(&self.img)
            .unwrap()
            .attach(&self.subject, stmt, sig)
            .unwrap();
    }
    fn verify(&self) -> anyhow::Result<Option<ReleaseStatement>> {
        let keys = keys_dir(self.tmp.path(), &[&self.pk]);
        device_verify(&self.image(), self.tmp.path(), &policy(&keys))
    }
    fn refused(&self) -> VerificationError {
        let e = self.verify().unwrap_err();
        let v = verification_error(&e);
        // the publisher's verify agrees, with exit code 3 and the same message
        let (code, err) = run_fail(
            Command::new(PUBLISH)
                .args(["verify", "--key"])
                .arg(&self.pk)
                .arg(self.image()),
        );
        assert_eq!(code, 3, "{err}");
        assert!(err.contains(&v.to_string()), "{err}\nvs {v}");
        v
    }
    fn signed(&self, stmt: &ReleaseStatement) -> (Vec<u8>, Vec<u8>) {
        let b = stmt.to_canonical_json();
        let s = cli_sign(self.tmp.path(), &self.sk, &b, &stmt.trusted_comment());
        (b, s)
    }
}

#[test]
fn refusals_have_clear_errors() {
    // no signature at all
    let c = Case::new();
    let e = c.refused();
    assert!(matches!(e, VerificationError::NoSignature { .. }), "{e}");
    assert!(e.to_string().contains(&c.subject.digest));
    // ...unless the policy does not require one
    let keys = keys_dir(c.tmp.path(), &[&c.pk]);
    let lax = TrustPolicy {
        require_signature: false,
        ..policy(&keys)
    };
    assert_eq!(device_verify(&c.image(), c.tmp.path(), &lax).unwrap(), None);

    // signed by an untrusted key: the message names its key id
    let c = Case::new();
    let (_, other_sk) = minisign_keypair(c.tmp.path(), "other");
    let stmt = statement_for(&c.subject.digest, "1.0.0");
    let b = stmt.to_canonical_json();
    let sig = cli_sign(c.tmp.path(), &other_sk, &b, &stmt.trusted_comment());
    c.attach(&b, &sig);
    let other_id = otter::verify::keys::ParsedSignature::parse(&sig)
        .unwrap()
        .key_id
        .to_string();
    match c.refused() {
        VerificationError::UntrustedKey { key_id, .. } => assert_eq!(key_id, other_id),
        e => panic!("{e}"),
    }

    // tampered statement (re-serialised canonically, so only the signature catches it)
    let c = Case::new();
    let stmt = statement_for(&c.subject.digest, "1.0.0");
    let (_, sig) = c.signed(&stmt);
    let mut forged = stmt.clone();
    forged.content_checksum = "ee".repeat(32);
    c.attach(&forged.to_canonical_json(), &sig);
    assert!(matches!(
        c.refused(),
        VerificationError::BadSignature { .. }
    ));

    // tampered trusted comment
    let c = Case::new();
    let stmt = statement_for(&c.subject.digest, "1.0.0");
    let (b, sig) = c.signed(&stmt);
    let text = String::from_utf8(sig)
        .unwrap()
        .replace("version=1.0.0", "version=9.0.0");
    c.attach(&b, text.as_bytes());
    assert!(matches!(
        c.refused(),
        VerificationError::BadSignature { .. }
    ));

    // validly signed, but the comment disagrees with the statement
    let c = Case::new();
    let stmt = statement_for(&c.subject.digest, "1.0.0");
    let b = stmt.to_canonical_json();
    let sig = cli_sign(
        c.tmp.path(),
        &c.sk,
        &b,
        &stmt
            .trusted_comment()
            .replace("version=1.0.0", "version=9.0.0"),
    );
    c.attach(&b, &sig);
    assert!(matches!(
        c.refused(),
        VerificationError::CommentMismatch { .. }
    ));

    // statement for another manifest digest
    let c = Case::new();
    let other = format!("sha256:{}", "12".repeat(32));
    let (b, sig) = c.signed(&statement_for(&other, "1.0.0"));
    c.attach(&b, &sig);
    match c.refused() {
        VerificationError::WrongImage {
            expected,
            statement,
        } => {
            assert_eq!(expected, c.subject.digest);
            assert_eq!(statement, other);
        }
        e => panic!("{e}"),
    }

    // truncated and garbled signature files
    for mangle in [
        |s: &str| s[..s.len() / 2].to_string(),
        |s: &str| s.replace(['A', 'B', 'C'], "*"),
        |_: &str| String::new(),
    ] {
        let c = Case::new();
        let (b, sig) = c.signed(&statement_for(&c.subject.digest, "1.0.0"));
        let bad = mangle(std::str::from_utf8(&sig).unwrap());
        c.attach(&b, bad.as_bytes());
        assert!(matches!(
            c.refused(),
            VerificationError::MalformedSignature { .. }
        ));
    }

    // garbage in the trusted keys directory
    let c = Case::new();
    let (b, sig) = c.signed(&statement_for(&c.subject.digest, "1.0.0"));
    c.attach(&b, &sig);
    let keys = keys_dir(c.tmp.path(), &[&c.pk]);
    fs::write(keys.join("zz-garbage.pub"), "this is not a key\n").unwrap();
    let e = device_verify(&c.image(), c.tmp.path(), &policy(&keys)).unwrap_err();
    match verification_error(&e) {
        VerificationError::BadKeyFile { path, .. } => assert!(path.ends_with("zz-garbage.pub")),
        e => panic!("{e}"),
    }
    // an empty keys directory
    let empty = c.tmp.path().join("nokeys");
    fs::create_dir_all(&empty).unwrap();
    let e = device_verify(&c.image(), c.tmp.path(), &policy(&empty)).unwrap_err();
    assert!(matches!(
        verification_error(&e),
        VerificationError::NoTrustedKeys { .. }
    ));
    // key rotation: the right key among several trusted ones
    let (other_pk, _) = minisign_keypair(c.tmp.path(), "next");
    let both = keys_dir(c.tmp.path(), &[&other_pk, &c.pk]);
    device_verify(&c.image(), c.tmp.path(), &policy(&both))
        .unwrap()
        .unwrap();
}

#[test]
fn content_and_rollback_checks() {
    let stmt = statement_for(&format!("sha256:{}", "34".repeat(32)), "1.4.0");
    let e = check_content(&stmt, &"99".repeat(32)).unwrap_err();
    assert!(e.to_string().contains(&"99".repeat(32)) && e.to_string().contains(&"c0".repeat(32)));
    let booted = ReleaseVersion {
        version: "1.10.0".into(),
        timestamp: Some(1),
    };
    let p = TrustPolicy::default();
    let e = check_not_older(&stmt, Some(&booted), &p).unwrap_err();
    assert!(matches!(e, VerificationError::Downgrade { .. }));
    assert!(
        e.to_string().contains("1.4.0") && e.to_string().contains("1.10.0"),
        "{e}"
    );
    check_not_older(
        &stmt,
        Some(&booted),
        &TrustPolicy {
            allow_downgrade: true,
            ..p.clone()
        },
    )
    .unwrap();
    check_not_older(
        &stmt,
        Some(&ReleaseVersion {
            version: "1.3.9".into(),
            timestamp: None,
        }),
        &p,
    )
    .unwrap();
}

/// A loopback docker-registry, killed on drop.
struct RegistryServer {
    child: Child,
    port: u16,
}

impl RegistryServer {
    fn start(dir: &Path) -> RegistryServer {
        need("docker-registry", "docker-registry");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("registry.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let log = fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let server = RegistryServer { child, port };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!(
            "docker-registry did not start; see {}",
            dir.join("registry.log").display()
        );
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn registry_signature_with_fallback_tag() {
    need("skopeo", "skopeo");
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let reg = RegistryServer::start(t);
    let img = t.join("img");
    make_image(&img, "v3", "3.0.0", "ID=reg\n");
    let remote = format!("127.0.0.1:{}/otter/os", reg.port);
    run(Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v3", img.display()))
        .arg(format!("docker://{remote}:v3")));
    let digest = subject_of(&img, "v3").digest;

    // unsigned: the device refuses
    let prefix = t.join("pub");
    run(Command::new(PUBLISH).args(["keygen", "--out"]).arg(&prefix));
    let keys = keys_dir(t, &[&t.join("pub.pub")]);
    let image = format!("docker://{remote}:v3");
    let e = device_verify(&image, t, &policy(&keys)).unwrap_err();
    assert!(
        matches!(
            verification_error(&e),
            VerificationError::NoSignature { .. }
        ),
        "{e:#}"
    );

    // sign twice with two keys: both artifacts end up in the fallback index
    run(Command::new(PUBLISH)
        .args(["sign", "--plain-http", "--key"])
        .arg(t.join("pub.key"))
        .arg(&image));
    let (_, sk2) = minisign_keypair(t, "second");
    run(Command::new(PUBLISH)
        .args(["sign", "--plain-http", "--key"])
        .arg(&sk2)
        .arg(&image)
        .args(["--content-checksum", &"cd".repeat(32), "--version", "3.0.0"]));
    // (the second statement signs a wrong tree: the device catches that after importing)
    let tag = format!("sha256-{}", digest.trim_start_matches("sha256:"));
    let out = run(Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{remote}:{tag}")));
    let index: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{index}");
    assert!(entries
        .iter()
        .all(|e| e["artifactType"] == "application/vnd.otter.release.v1+json"));

    // the device finds and verifies it through the registry source
    let got = device_verify(&image, t, &policy(&keys)).unwrap().unwrap();
    assert_eq!(
        (got.version.as_str(), got.manifest_digest.as_str()),
        ("3.0.0", digest.as_str())
    );
    let imported = device_import(&image, t);
    check_content(&got, &imported).unwrap();
    // a statement (validly signed by another trusted key) for the wrong tree is caught after import
    let second_keys = t.join("second-keys");
    fs::create_dir_all(&second_keys).unwrap();
    fs::copy(t.join("second.pub"), second_keys.join("second.pub")).unwrap();
    let wrong = device_verify(&image, t, &policy(&second_keys))
        .unwrap()
        .unwrap();
    match check_content(&wrong, &imported).unwrap_err() {
        VerificationError::TreeMismatch {
            expected, actual, ..
        } => {
            assert_eq!((expected, actual), ("cd".repeat(32), imported.clone()))
        }
        e => panic!("{e}"),
    }
    run(Command::new(PUBLISH)
        .args(["verify", "--plain-http", "--key"])
        .arg(t.join("pub.pub"))
        .arg(&image));

    // export to a USB-stick layout: image + signatures, usable by skopeo and the device
    let usb = t.join("usb");
    run(Command::new(PUBLISH)
        .args(["export", "--plain-http"])
        .arg(&image)
        .arg(&usb));
    let offline = format!("oci:{}:v3", usb.display());
    run(Command::new("skopeo").arg("inspect").arg(&offline));
    let got = device_verify(&offline, t, &policy(&keys)).unwrap().unwrap();
    assert_eq!(got.manifest_digest, digest);
}

#[test]
fn statement_recorded_in_commit_drives_anti_rollback() {
    need("ostree", "ostree");
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let repo_path = t.join("repo");
    let repo = otter::ostree::Repo::init(&repo_path, otter::ostree::RepoMode::BareUser).unwrap();
    let stmt = statement_for(&format!("sha256:{}", "56".repeat(32)), "2.1.0");
    let mut importer = otter::import::Importer::new(&repo);
    let mut empty: &[u8] = &[0u8; 1024];
    importer
        .apply_layer("application/vnd.oci.image.layer.v1.tar", &mut empty)
        .unwrap();
    let imported = importer
        .commit(
            "with statement",
            vec![
                otter::verify::statement_metadata(&stmt),
                (
                    "version".into(),
                    otter::ostree::MetaValue::Str("2.1.0".into()),
                ),
            ],
            None,
        )
        .unwrap();
    // the real ostree CLI reads the recorded statement back byte for byte
    let out = run(Command::new("ostree")
        .arg(format!("--repo={}", repo_path.display()))
        .arg("show")
        .arg(format!(
            "--print-metadata-key={}",
            otter::verify::COMMIT_META_STATEMENT
        ))
        .arg(imported.commit.to_hex()));
    let shown = String::from_utf8_lossy(&out.stdout);
    let json = String::from_utf8(stmt.to_canonical_json()).unwrap();
    assert_eq!(shown.trim(), format!("'{json}'"));

    let commit = repo.read_commit(&imported.commit).unwrap();
    let booted = otter::verify::release_of_commit(&commit).unwrap();
    assert_eq!(
        booted,
        ReleaseVersion {
            version: "2.1.0".into(),
            timestamp: Some(1_800_000_000)
        }
    );
    let older = statement_for(&stmt.manifest_digest, "2.0.9");
    let e = check_not_older(&older, Some(&booted), &TrustPolicy::default()).unwrap_err();
    assert!(
        e.to_string().contains("2.0.9") && e.to_string().contains("2.1.0"),
        "{e}"
    );
}
