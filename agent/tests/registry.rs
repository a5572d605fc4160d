//! otter::source against a real `docker-registry` (plain, TLS + htpasswd), OCI layouts and
//! oci-archives written by skopeo, and a mock registry for the Bearer token flow and bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod source_util;

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use otter::fetch::{error_class, ErrorClass};
use otter::source::{self, ImageRef, ImageSource};
use source_util::proxy::{respond, Request, Server};
use source_util::*;

fn open(r: &str, opts: &source::SourceOptions) -> anyhow::Result<Box<dyn ImageSource>> {
    source::open(&r.parse::<ImageRef>()?, opts)
}

#[test]
fn registry_layout_and_archive_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(
        &tmp.path().join("reg"),
        RegistryOpts {
            tls: None,
            htpasswd: None,
        },
    );
    let layout = tmp.path().join("layout");
    let img = small_image(&layout, "v1");
    skopeo_push(
        &layout,
        "v1",
        &format!("docker://{}/os/rootfs:v1", reg.host()),
        &[],
    );
    // skopeo writes the oci-archive (blobs first, index.json last)
    let archive = tmp.path().join("img.tar");
    run(Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--quiet", "--preserve-digests"])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("oci-archive:{}:v1", archive.display())));

    let refs = [
        format!("docker://{}/os/rootfs:v1", reg.host()),
        format!("{}/os/rootfs:v1", reg.host()),
        format!("oci:{}:v1", layout.display()),
        format!("oci:{}", layout.display()),
        format!("oci-archive:{}:v1", archive.display()),
        format!("oci-archive:{}", archive.display()),
    ];
    let mut digests = Vec::new();
    for (i, r) in refs.iter().enumerate() {
        let opts = test_opts(&tmp.path().join(format!("blobs{i}")));
        let mut src = open(r, &opts).unwrap();
        let resolved = src.resolve().unwrap_or_else(|e| panic!("{r}: {e:#}"));
        assert_eq!(resolved.config.version(), Some("1.0.0"), "{r}");
        assert_eq!(resolved.manifest.layers.len(), 2);
        assert_eq!(resolved.config.diff_ids.len(), 2);
        assert_eq!(resolved.manifest_digest, sha(&resolved.manifest_bytes));
        for (l, want) in resolved.manifest.layers.iter().zip(&img.layers) {
            assert_eq!(l.digest, want.digest, "{r}");
            let got = read_blob(src.as_mut(), want).unwrap();
            assert_eq!(got, layout_blob(&layout, &want.digest), "{r}");
        }
        digests.push(resolved.manifest_digest.clone());
    }
    assert!(
        digests.iter().all(|d| *d == img.manifest.digest),
        "{digests:?}"
    );

    // by digest; blobs already in the blob dir are used as they are
    let opts = test_opts(&tmp.path().join("blobs0"));
    let mut src = open(
        &format!("docker://{}/os/rootfs@{}", reg.host(), img.manifest.digest),
        &opts,
    )
    .unwrap();
    let r = src.resolve().unwrap();
    assert_eq!(r.manifest_digest, img.manifest.digest);
    src.prefetch(&r.manifest.layers).unwrap();
    for l in &img.layers {
        assert!(opts
            .blob_dir
            .join(l.digest.strip_prefix("sha256:").unwrap())
            .is_file());
    }
    // unknown tag / repo: clear errors
    let e = open(&format!("docker://{}/os/rootfs:nope", reg.host()), &opts)
        .unwrap()
        .resolve()
        .unwrap_err();
    assert!(format!("{e:#}").contains("not found"), "{e:#}");
    let e = open(&format!("oci:{}:nope", layout.display()), &opts)
        .unwrap()
        .resolve()
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("no image tagged \"nope\"; tags: v1"),
        "{e:#}"
    );
    // a missing blob in a layout names the digest
    std::fs::remove_file(
        layout
            .join("blobs/sha256")
            .join(img.layers[1].digest.strip_prefix("sha256:").unwrap()),
    )
    .unwrap();
    let mut src = open(&format!("oci:{}:v1", layout.display()), &opts).unwrap();
    let e = read_blob(src.as_mut(), &img.layers[1])
        .map(|_| ())
        .unwrap_err();
    assert!(format!("{e:#}").contains(&img.layers[1].digest), "{e:#}");
    assert!(format!("{e:#}").contains("missing"), "{e:#}");
}

/// An index with two platforms, and referrers through the `sha256-<hex>` tag fallback.
#[test]
fn registry_index_platforms_and_referrers() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(
        &tmp.path().join("reg"),
        RegistryOpts {
            tls: None,
            htpasswd: None,
        },
    );
    let layout = tmp.path().join("layout");
    let amd = write_image(
        &layout,
        "amd64",
        "2.0",
        &[(LAYER_TAR, tar_of(&[("a", b"amd64".to_vec())]))],
    );
    let arm = write_image(
        &layout,
        "arm64",
        "2.0",
        &[(LAYER_TAR, tar_of(&[("a", b"arm64".to_vec())]))],
    );
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[
        {{"mediaType":"{MANIFEST}","digest":"{}","size":{},"platform":{{"os":"linux","architecture":"amd64"}}}},
        {{"mediaType":"{MANIFEST}","digest":"{}","size":{},"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#,
        amd.manifest.digest, amd.manifest.size, arm.manifest.digest, arm.manifest.size
    );
    let ib = write_blob(&layout, INDEX, index.as_bytes());
    write_index(&layout, &[tagged(&ib, "multi")]);
    skopeo_push(
        &layout,
        "multi",
        &format!("docker://{}/os/multi:multi", reg.host()),
        &["--all"],
    );

    let r = format!("docker://{}/os/multi:multi", reg.host());
    for (platform, want) in [
        ("linux/arm64", &arm),
        ("linux/amd64", &amd),
        ("linux/arm64/v8", &arm),
    ] {
        let mut opts = test_opts(&tmp.path().join("b"));
        opts.platform = Some(platform.into());
        let got = open(&r, &opts).unwrap().resolve().unwrap();
        assert_eq!(got.manifest_digest, want.manifest.digest, "{platform}");
        let got = open(&format!("oci:{}:multi", layout.display()), &opts)
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(got.manifest_digest, want.manifest.digest, "{platform}");
    }
    let mut opts = test_opts(&tmp.path().join("b"));
    opts.platform = Some("linux/riscv64".into());
    let e = open(&r, &opts).unwrap().resolve().unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains(
            "no manifest for platform linux/riscv64; available: linux/amd64, linux/arm64/v8"
        ),
        "{msg}"
    );

    // an artifact that refers to the arm64 manifest, pushed by hand with its fallback tag index
    let base = format!("http://{}", reg.host());
    let sig = b"untrusted comment: test\nRWQ...\n".to_vec();
    push_blob(&base, "os/multi", &sig);
    push_blob(&base, "os/multi", b"{}");
    let art_type = "application/vnd.otter.release.v1+json";
    let artifact = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","artifactType":"{art_type}","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{}","size":2}},"layers":[{{"mediaType":"application/vnd.otter.minisig","digest":"{}","size":{}}}],"subject":{{"mediaType":"{MANIFEST}","digest":"{}","size":{}}}}}"#,
        sha(b"{}"),
        sha(&sig),
        sig.len(),
        arm.manifest.digest,
        arm.manifest.size
    );
    let art_digest = sha(artifact.as_bytes());
    push_manifest(
        &base,
        "os/multi",
        &art_digest,
        MANIFEST,
        artifact.as_bytes(),
    );
    let fallback = format!(
        r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[{{"mediaType":"{MANIFEST}","digest":"{art_digest}","size":{},"artifactType":"{art_type}"}}]}}"#,
        artifact.len()
    );
    let tag = format!(
        "sha256-{}",
        arm.manifest.digest.strip_prefix("sha256:").unwrap()
    );
    push_manifest(&base, "os/multi", &tag, INDEX, fallback.as_bytes());

    let opts = test_opts(&tmp.path().join("b"));
    let mut src = open(&r, &opts).unwrap();
    let refs = src.referrers(&arm.manifest.digest, art_type).unwrap();
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0].digest, art_digest);
    assert!(src
        .referrers(&arm.manifest.digest, "application/x-other")
        .unwrap()
        .is_empty());
    assert!(src
        .referrers(&amd.manifest.digest, art_type)
        .unwrap()
        .is_empty());
    // the referrer descriptor opens as a verified manifest
    let mut bytes = Vec::new();
    src.open_blob(&refs[0])
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    assert_eq!(bytes, artifact.as_bytes());

    // the same artifact in a layout (an untagged index.json entry with a subject)
    let l2 = tmp.path().join("layout2");
    let img = small_image(&l2, "v1");
    let art2 = artifact
        .replace(&arm.manifest.digest, &img.manifest.digest)
        .replace(
            &format!("\"size\":{}}}}}", arm.manifest.size),
            &format!("\"size\":{}}}}}", img.manifest.size),
        );
    write_blob(&l2, "application/vnd.otter.minisig", &sig);
    write_blob(&l2, "application/vnd.oci.empty.v1+json", b"{}");
    let a2 = write_blob(&l2, MANIFEST, art2.as_bytes());
    write_index(&l2, &[tagged(&img.manifest, "v1"), a2.json()]);
    let mut src = open(&format!("oci:{}", l2.display()), &opts).unwrap();
    // no tag: the single image is chosen, the artifact does not count
    assert_eq!(src.resolve().unwrap().manifest_digest, img.manifest.digest);
    let refs = src.referrers(&img.manifest.digest, art_type).unwrap();
    assert_eq!(
        refs.iter().map(|d| d.digest.clone()).collect::<Vec<_>>(),
        vec![a2.digest.clone()]
    );
    assert!(src
        .referrers(&img.manifest.digest, "application/x-other")
        .unwrap()
        .is_empty());
}

use std::io::Read;

#[test]
fn registry_tls_and_basic_auth() {
    require_tool("htpasswd", "apache2-utils");
    let tmp = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_tls(tmp.path());
    let htpasswd = tmp.path().join("htpasswd");
    let line = run(Command::new("htpasswd").args(["-Bbn", "otter", "s3cret"]));
    std::fs::write(&htpasswd, line).unwrap();
    let reg = Registry::start(
        &tmp.path().join("reg"),
        RegistryOpts {
            tls: Some((cert, key)),
            htpasswd: Some(htpasswd),
        },
    );
    let layout = tmp.path().join("layout");
    let img = small_image(&layout, "v1");
    skopeo_push(
        &layout,
        "v1",
        &format!("docker://{}/os/secure:v1", reg.host()),
        &["--dest-creds", "otter:s3cret"],
    );
    let r = format!("docker://{}/os/secure:v1", reg.host());

    let mut opts = test_opts(&tmp.path().join("b1"));
    opts.ca_file = Some(ca.clone());
    opts.username = Some("otter".into());
    opts.password = Some("s3cret".into());
    let mut src = open(&r, &opts).unwrap();
    let got = src.resolve().unwrap();
    assert_eq!(got.manifest_digest, img.manifest.digest);
    for l in &img.layers {
        assert_eq!(
            read_blob(src.as_mut(), l).unwrap(),
            layout_blob(&layout, &l.digest)
        );
    }

    // credentials from a docker-style auth file
    let auth = tmp.path().join("auth.json");
    std::fs::write(
        &auth,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"b3R0ZXI6czNjcmV0"}}}}}}"#,
            reg.host()
        ),
    )
    .unwrap();
    let mut opts = test_opts(&tmp.path().join("b2"));
    opts.ca_file = Some(ca.clone());
    opts.auth_files = vec![tmp.path().join("missing.json"), auth];
    assert_eq!(
        open(&r, &opts).unwrap().resolve().unwrap().manifest_digest,
        img.manifest.digest
    );

    // no credentials
    let mut opts = test_opts(&tmp.path().join("b3"));
    opts.ca_file = Some(ca.clone());
    let e = open(&r, &opts).unwrap().resolve().unwrap_err();
    assert!(
        format!("{e:#}").contains("requires a username and password"),
        "{e:#}"
    );
    // wrong password
    opts.username = Some("otter".into());
    opts.password = Some("wrong".into());
    let e = open(&r, &opts).unwrap().resolve().unwrap_err();
    assert!(
        format!("{e:#}").contains("credentials were rejected"),
        "{e:#}"
    );
    // the CA is not trusted: a TLS error, no fallback to plain http
    let mut opts = test_opts(&tmp.path().join("b4"));
    opts.username = Some("otter".into());
    opts.password = Some("s3cret".into());
    let e = open(&r, &opts).unwrap().resolve().unwrap_err();
    assert!(format!("{e:#}").contains("certificate"), "{e:#}");
    assert_eq!(error_class(&e), Some(ErrorClass::Network));
}

/// status, headers, body
type Route = (u16, Vec<(&'static str, String)>, Vec<u8>);

/// A registry imitation: fixed routes, optional Bearer token auth with revocation.
struct Mock {
    routes: Mutex<HashMap<String, Route>>,
    /// Bearer mode: tokens are valid for this many registry requests.
    token_uses: Option<u64>,
    /// Basic credentials the token endpoint accepts (None: anonymous tokens).
    token_creds: Option<String>,
    tokens_issued: AtomicU64,
    valid: Mutex<HashMap<String, u64>>,
}

fn start_mock(mock: Arc<Mock>) -> Server {
    let port_cell: Arc<Mutex<u16>> = Arc::new(Mutex::new(0));
    let pc = port_cell.clone();
    let server = Server::start(Arc::new(move |req: Request, conn: &mut TcpStream| {
        let port = *pc.lock().unwrap();
        if req.path.starts_with("/token") {
            if let Some(c) = &mock.token_creds {
                if req.header("authorization") != Some(c.as_str()) {
                    respond(
                        conn,
                        401,
                        &[],
                        br#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#,
                    );
                    return;
                }
            }
            assert!(
                req.path.contains("scope=repository%3Aos%2Fmock%3Apull")
                    || req.path.contains("scope=repository:os/mock:pull"),
                "{}",
                req.path
            );
            let n = mock.tokens_issued.fetch_add(1, Ordering::SeqCst);
            let tok = format!("tok{n}");
            mock.valid.lock().unwrap().insert(tok.clone(), 0);
            respond(
                conn,
                200,
                &[],
                format!(r#"{{"access_token":"{tok}","expires_in":300}}"#).as_bytes(),
            );
            return;
        }
        if let Some(limit) = mock.token_uses {
            let auth = req
                .header("authorization")
                .and_then(|a| a.strip_prefix("Bearer "))
                .map(str::to_string);
            let ok = auth.and_then(|t| {
                let mut v = mock.valid.lock().unwrap();
                let uses = v.get_mut(&t)?;
                *uses += 1;
                (*uses <= limit).then_some(())
            });
            if ok.is_none() {
                let ch = format!(
                    r#"Bearer realm="http://127.0.0.1:{port}/token",service="mock",scope="repository:os/mock:pull""#
                );
                respond(
                    conn,
                    401,
                    &[("WWW-Authenticate", ch)],
                    br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
                );
                return;
            }
        }
        let routes = mock.routes.lock().unwrap();
        match routes.get(&req.path) {
            Some((status, headers, body)) => respond(conn, *status, headers, body),
            None => respond(
                conn,
                404,
                &[],
                br#"{"errors":[{"code":"NOT_FOUND","message":"nope"}]}"#,
            ),
        }
    }));
    *port_cell.lock().unwrap() = server.port;
    server
}

fn mock_image(mock: &Mock, layout: &std::path::Path, tag: &str) -> Image {
    let img = small_image(layout, tag);
    let mut routes = mock.routes.lock().unwrap();
    let ct = |t: &str| vec![("Content-Type", t.to_string())];
    routes.insert(
        format!("/v2/os/mock/manifests/{tag}"),
        (200, ct(MANIFEST), img.manifest_bytes.clone()),
    );
    routes.insert(
        format!("/v2/os/mock/manifests/{}", img.manifest.digest),
        (200, ct(MANIFEST), img.manifest_bytes.clone()),
    );
    for b in img.layers.iter().chain([&img.config]) {
        routes.insert(
            format!("/v2/os/mock/blobs/{}", b.digest),
            (200, vec![], layout_blob(layout, &b.digest)),
        );
    }
    img
}

#[test]
fn bearer_token_flow_with_reauth() {
    let tmp = tempfile::tempdir().unwrap();
    let mock = Arc::new(Mock {
        routes: Mutex::new(HashMap::new()),
        token_uses: Some(2),
        token_creds: Some("Basic b3R0ZXI6czNjcmV0".into()),
        tokens_issued: AtomicU64::new(0),
        valid: Mutex::new(HashMap::new()),
    });
    let layout = tmp.path().join("layout");
    let img = mock_image(&mock, &layout, "v1");
    let server = start_mock(mock.clone());
    let r = format!("docker://127.0.0.1:{}/os/mock:v1", server.port);

    let mut opts = test_opts(&tmp.path().join("b"));
    opts.username = Some("otter".into());
    opts.password = Some("s3cret".into());
    let mut src = open(&r, &opts).unwrap();
    let got = src.resolve().unwrap();
    assert_eq!(got.manifest_digest, img.manifest.digest);
    for l in &img.layers {
        assert_eq!(
            read_blob(src.as_mut(), l).unwrap(),
            layout_blob(&layout, &l.digest)
        );
    }
    // tokens are revoked after 2 uses: the client must have asked again (re-auth on 401)
    let issued = mock.tokens_issued.load(Ordering::SeqCst);
    assert!(issued >= 2, "only {issued} tokens issued");

    // anonymous: the token server refuses
    let opts = test_opts(&tmp.path().join("b2"));
    let e = open(&r, &opts).unwrap().resolve().unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("refused anonymous access") && msg.contains("bad credentials"),
        "{msg}"
    );
}

#[test]
fn bad_registry_input_gives_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let mock = Arc::new(Mock {
        routes: Mutex::new(HashMap::new()),
        token_uses: None,
        token_creds: None,
        tokens_issued: AtomicU64::new(0),
        valid: Mutex::new(HashMap::new()),
    });
    let layout = tmp.path().join("layout");
    let img = mock_image(&mock, &layout, "v1");
    {
        let mut routes = mock.routes.lock().unwrap();
        let ct = |t: &str| vec![("Content-Type", t.to_string())];
        // asked by digest, the registry sends other bytes
        let other = sha(b"something else");
        routes.insert(
            format!("/v2/os/mock/manifests/{other}"),
            (200, ct(MANIFEST), img.manifest_bytes.clone()),
        );
        // malformed JSON
        routes.insert(
            "/v2/os/mock/manifests/broken".into(),
            (
                200,
                ct(MANIFEST),
                br#"{"schemaVersion":2,"config":"#.to_vec(),
            ),
        );
        // unknown media type
        routes.insert(
            "/v2/os/mock/manifests/odd".into(),
            (
                200,
                ct("application/vnd.example.thing+json"),
                br#"{"schemaVersion":2,"mediaType":"application/vnd.example.thing+json"}"#.to_vec(),
            ),
        );
        // blob larger than declared
        let mut big = layout_blob(&layout, &img.layers[1].digest);
        big.extend_from_slice(b"trailing garbage");
        routes.insert(
            format!("/v2/os/mock/blobs/{}", img.layers[1].digest),
            (200, vec![], big),
        );
        // blob with the right size but wrong content
        let mut bad = layout_blob(&layout, &img.layers[0].digest);
        bad[10] ^= 1;
        routes.insert(
            format!("/v2/os/mock/blobs/{}", img.layers[0].digest),
            (200, vec![], bad),
        );
        // basic auth required
        routes.insert(
            "/v2/os/mock/manifests/locked".into(),
            (
                401,
                vec![("WWW-Authenticate", "Basic realm=\"x\"".into())],
                b"".to_vec(),
            ),
        );
    }
    let server = start_mock(mock.clone());
    let host = format!("127.0.0.1:{}", server.port);
    let opts = test_opts(&tmp.path().join("b"));

    let e = open(
        &format!("docker://{host}/os/mock@{}", sha(b"something else")),
        &opts,
    )
    .unwrap()
    .resolve()
    .unwrap_err();
    assert_eq!(error_class(&e), Some(ErrorClass::Verification), "{e:#}");
    assert!(format!("{e:#}").contains("different content"), "{e:#}");

    let e = open(&format!("docker://{host}/os/mock:broken"), &opts)
        .unwrap()
        .resolve()
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("malformed manifest JSON"),
        "{e:#}"
    );

    let e = open(&format!("docker://{host}/os/mock:odd"), &opts)
        .unwrap()
        .resolve()
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("unsupported manifest media type"),
        "{e:#}"
    );

    let e = open(&format!("docker://{host}/os/mock:locked"), &opts)
        .unwrap()
        .resolve()
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("requires a username and password"),
        "{e:#}"
    );

    let mut src = open(&format!("docker://{host}/os/mock:v1"), &opts).unwrap();
    src.resolve().unwrap();
    let e = read_blob(src.as_mut(), &img.layers[1]).unwrap_err();
    assert_eq!(error_class(&e), Some(ErrorClass::Verification), "{e:#}");
    assert!(format!("{e:#}").contains("larger than"), "{e:#}");
    let e = read_blob(src.as_mut(), &img.layers[0]).unwrap_err();
    assert_eq!(error_class(&e), Some(ErrorClass::Verification), "{e:#}");
    assert!(
        format!("{e:#}").contains("does not match its digest"),
        "{e:#}"
    );
    // nothing bad is left in the blob dir
    let left: Vec<_> = std::fs::read_dir(&opts.blob_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    for l in &img.layers {
        let hex = l.digest.strip_prefix("sha256:").unwrap();
        assert!(
            !left.iter().any(|n| n.to_string_lossy().starts_with(hex)),
            "{left:?}"
        );
    }
    drop(server);
    let _ = std::io::stdout().flush();
}
