//! The Bearer token flow against the real thing: Debian's `docker-registry` (distribution 2.8)
//! with `auth.token`, and a token server in this file that checks Basic credentials, grants only
//! the scopes an account may have, and mints RS256 JWTs with an `x5c` chain to a test CA made
//! with `openssl` (signed with `openssl dgst -sha256 -sign`). Images are pushed by `skopeo`
//! through the same token flow; `otter install` deploys them into a real ostree sysroot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod deploy_util;
mod source_util;

use std::fs;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use deploy_util::{admin_status, admin_status_list, build_images, ok, ostree, Tmpfs};
use otter::source::{self, ImageRef};
use source_util::proxy::{respond, Faults, Proxy, Request, Server};
use source_util::{
    layout_blob, random_bytes, read_blob, require_tool, run, skopeo_push, small_image, test_opts,
    Registry,
};

const OTTER: &str = env!("CARGO_BIN_EXE_otter");
const SERVICE: &str = "otter-test-registry";
const ISSUER: &str = "otter-test-token-issuer";
/// distribution's `token.Leeway`: the registry accepts a token until `exp` + 60 s.
const REGISTRY_LEEWAY: i64 = 60;

/// The token signing key and the CA the registry trusts (`rootcertbundle`).
struct Pki {
    ca: PathBuf,
    key: PathBuf,
    /// base64 (standard) DER of the signing certificate, for the JWT header's `x5c`.
    x5c: String,
}

fn make_pki(dir: &Path) -> Pki {
    require_tool("openssl", "openssl");
    fs::create_dir_all(dir).unwrap();
    let p = |n: &str| dir.join(n);
    let openssl = |args: &[&str]| {
        run(Command::new("openssl").current_dir(dir).args(args));
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=otter test token CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=otter test token signer",
        "-keyout",
        "signer.key",
        "-out",
        "signer.csr",
    ]);
    fs::write(
        p("ext.cnf"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        "signer.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-extfile",
        "ext.cnf",
        "-out",
        "signer.pem",
    ]);
    openssl(&[
        "x509",
        "-in",
        "signer.pem",
        "-outform",
        "DER",
        "-out",
        "signer.der",
    ]);
    Pki {
        ca: p("ca.pem"),
        key: p("signer.key"),
        x5c: base64::engine::general_purpose::STANDARD.encode(fs::read(p("signer.der")).unwrap()),
    }
}

/// An account of the token server: repositories (`*` = all) and the actions it may have there.
struct Account {
    user: &'static str,
    password: &'static str,
    grants: Vec<(&'static str, Vec<&'static str>)>,
}

/// One answered token request.
#[derive(Debug, Clone)]
struct Issued {
    user: String,
    /// `scope` parameters as sent.
    asked: Vec<String>,
    /// (repository, actions) put into the token.
    granted: Vec<(String, Vec<String>)>,
    token: String,
}

struct TokenState {
    pki: Pki,
    accounts: Vec<Account>,
    /// How long the registry accepts a token after it is issued (its `exp` is set so that
    /// `exp + leeway` is then).
    registry_life: i64,
    /// `expires_in` told to the client.
    claimed_expires_in: u64,
    issued: Mutex<Vec<Issued>>,
    refused: AtomicU64,
    jti: AtomicU64,
    log: Mutex<fs::File>,
}

/// The token server: a thread on a loopback port (stopped on drop).
struct TokenServer {
    port: u16,
    state: Arc<TokenState>,
    _server: Server,
}

impl TokenServer {
    fn start(state: TokenState) -> TokenServer {
        let state = Arc::new(state);
        let st = state.clone();
        let server = Server::start(Arc::new(move |req: Request, conn: &mut TcpStream| {
            handle_token_request(&st, &req, conn)
        }));
        TokenServer {
            port: server.port,
            state,
            _server: server,
        }
    }

    fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    fn issued(&self) -> Vec<Issued> {
        self.state.issued.lock().unwrap().clone()
    }

    fn issued_to(&self, user: &str) -> Vec<Issued> {
        self.issued()
            .into_iter()
            .filter(|i| i.user == user)
            .collect()
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(h, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

fn b64url(d: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// RS256 JWT signed by the `openssl` CLI (PKCS#1 v1.5 over SHA-256, what RS256 is).
fn sign_jwt(pki: &Pki, header: &serde_json::Value, claims: &serde_json::Value) -> String {
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&pki.key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running openssl (Debian package openssl)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl dgst -sign: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("{input}.{}", b64url(&out.stdout))
}

fn handle_token_request(st: &TokenState, req: &Request, conn: &mut TcpStream) {
    let log = |line: String| {
        let _ = writeln!(st.log.lock().unwrap(), "{line}");
    };
    log(format!("{} {}", req.method, req.path));
    let (path, query) = req.path.split_once('?').unwrap_or((&req.path, ""));
    if path != "/token" || req.method != "GET" {
        respond(conn, 404, &[], b"not found");
        return;
    }
    let mut service = None;
    let mut scopes = Vec::new();
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "service" => service = Some(percent_decode(v)),
            "scope" => scopes.push(percent_decode(v)),
            _ => {}
        }
    }
    if service.as_deref() != Some(SERVICE) {
        log(format!("  wrong service {service:?}"));
        respond(
            conn,
            400,
            &[],
            br#"{"errors":[{"code":"BAD_REQUEST","message":"unknown service"}]}"#,
        );
        return;
    }
    let creds = req
        .header("authorization")
        .and_then(|a| a.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let account = creds.as_deref().and_then(|c| {
        let (u, p) = c.split_once(':')?;
        st.accounts.iter().find(|a| a.user == u && a.password == p)
    });
    let Some(account) = account else {
        st.refused.fetch_add(1, Ordering::SeqCst);
        log(format!(
            "  refused: {}",
            if creds.is_some() {
                "bad credentials"
            } else {
                "no credentials"
            }
        ));
        respond(
            conn,
            401,
            &[(
                "WWW-Authenticate",
                "Basic realm=\"otter test token server\"".into(),
            )],
            br#"{"errors":[{"code":"UNAUTHORIZED","message":"invalid username or password"}]}"#,
        );
        return;
    };
    // grant the intersection of what was asked and what the account may do
    let mut granted: Vec<(String, Vec<String>)> = Vec::new();
    for scope in &scopes {
        let mut parts = scope.splitn(3, ':');
        let (Some(typ), Some(name), Some(actions)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if typ != "repository" {
            continue;
        }
        let allowed: Vec<String> = actions
            .split(',')
            .filter(|a| {
                account
                    .grants
                    .iter()
                    .any(|(repo, acts)| (*repo == "*" || *repo == name) && acts.contains(a))
            })
            .map(str::to_string)
            .collect();
        if !allowed.is_empty() {
            granted.push((name.to_string(), allowed));
        }
    }
    let t = now();
    let jti = st.jti.fetch_add(1, Ordering::SeqCst);
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [st.pki.x5c]});
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": account.user,
        "aud": SERVICE,
        "exp": t + st.registry_life - REGISTRY_LEEWAY,
        "nbf": t - 10,
        "iat": t,
        "jti": format!("otter-test-{jti}"),
        "access": granted.iter().map(|(name, actions)| serde_json::json!({
            "type": "repository", "name": name, "actions": actions,
        })).collect::<Vec<_>>(),
    });
    let token = sign_jwt(&st.pki, &header, &claims);
    log(format!("  issued {jti} to {}: {granted:?}", account.user));
    st.issued.lock().unwrap().push(Issued {
        user: account.user.to_string(),
        asked: scopes,
        granted,
        token: token.clone(),
    });
    let body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": st.claimed_expires_in,
    });
    respond(
        conn,
        200,
        &[("Content-Type", "application/json".into())],
        body.to_string().as_bytes(),
    );
}

const PUSHER: (&str, &str) = ("pusher", "push-pw");
const DEVICE: (&str, &str) = ("device", "s3cret");

/// A token server and a registry that trusts it. `device` may pull `os/rootfs` and `os/app`.
struct World {
    dir: PathBuf,
    tokens: TokenServer,
    reg: Registry,
}

impl World {
    fn new(dir: &Path, registry_life: i64, claimed_expires_in: u64) -> World {
        let pki = make_pki(&dir.join("pki"));
        let ca = pki.ca.clone();
        let tokens = TokenServer::start(TokenState {
            pki,
            accounts: vec![
                Account {
                    user: PUSHER.0,
                    password: PUSHER.1,
                    grants: vec![("*", vec!["pull", "push"])],
                },
                Account {
                    user: DEVICE.0,
                    password: DEVICE.1,
                    grants: vec![("os/rootfs", vec!["pull"]), ("os/app", vec!["pull"])],
                },
            ],
            registry_life,
            claimed_expires_in,
            issued: Mutex::new(Vec::new()),
            refused: AtomicU64::new(0),
            jti: AtomicU64::new(0),
            log: Mutex::new(fs::File::create(dir.join("token-server.log")).unwrap()),
        });
        let reg =
            Registry::start_token_auth(&dir.join("reg"), &tokens.realm(), SERVICE, ISSUER, &ca);
        World {
            dir: dir.to_path_buf(),
            tokens,
            reg,
        }
    }

    fn push(&self, layout: &Path, tag: &str, repo: &str) {
        skopeo_push(
            layout,
            tag,
            &format!("docker://{}/{repo}:{tag}", self.reg.host()),
            &["--dest-creds", &format!("{}:{}", PUSHER.0, PUSHER.1)],
        );
    }

    /// An `auth.json` for `host` and an otter config that points at it (plus `extra` lines in
    /// `[registry]`); returns the config path.
    fn config(&self, name: &str, host: &str, creds: (&str, &str), extra: &str) -> PathBuf {
        let auth = self.dir.join(format!("{name}-auth.json"));
        let b =
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", creds.0, creds.1));
        fs::write(
            &auth,
            format!(r#"{{"auths":{{"{host}":{{"auth":"{b}"}}}}}}"#),
        )
        .unwrap();
        let cfg = self.dir.join(format!("{name}.conf"));
        fs::write(
            &cfg,
            format!("[registry]\nauth-file = {}\n{extra}", auth.display()),
        )
        .unwrap();
        cfg
    }

    fn registry_log(&self) -> String {
        fs::read_to_string(self.reg.dir.join("registry.log")).unwrap_or_default()
    }
}

fn otter(sysroot: &Path, config: &Path, args: &[&str]) -> Output {
    Command::new(OTTER)
        .arg(format!("--sysroot={}", sysroot.display()))
        .arg(format!("--config={}", config.display()))
        .args(args)
        .env_remove("OTTER_BOOTED_DEPLOYMENT")
        .output()
        .unwrap()
}

fn repo_arg(sr: &Path) -> String {
    format!("--repo={}", sr.join("ostree/repo").display())
}

fn default_deployment_dir(sr: &Path) -> PathBuf {
    let list = admin_status_list(sr);
    let (stateroot, csum) = &list[0];
    sr.join(format!("ostree/deploy/{stateroot}/deploy/{csum}"))
}

/// skopeo pushes through the token flow; `otter install` with credentials from an `auth.json`
/// named by otter's config deploys the image; wrong or missing credentials give a clear error,
/// exit code 1, and change nothing.
#[test]
fn token_auth_install_and_refused_credentials() {
    require_tool("umoci", "umoci");
    let t = Tmpfs::new();
    let w = World::new(t.path(), 300, 300);
    let layout = build_images(t.path());
    w.push(&layout, "v1", "os/rootfs");
    w.push(&layout, "v2", "os/rootfs");
    assert!(
        !w.tokens.issued_to(PUSHER.0).is_empty(),
        "skopeo did not use the token server"
    );
    let image = |tag: &str| format!("docker://{}/os/rootfs:{tag}", w.reg.host());

    let sr = t.path().join("sysroot");
    let cfg = w.config("good", &w.reg.host(), DEVICE, "");
    ok(&otter(
        &sr,
        &cfg,
        &[
            "install",
            "--no-signature-verification",
            "--stateroot=testos",
            &image("v1"),
        ],
    ));
    let status = admin_status(&sr);
    assert_eq!(admin_status_list(&sr).len(), 1, "{status}");
    assert!(status.contains("testos"), "{status}");
    ostree(&["fsck", &repo_arg(&sr)]);
    let dep = default_deployment_dir(&sr);
    assert_eq!(
        fs::read_to_string(dep.join("usr/bin/hello")).unwrap(),
        "#!/bin/sh\necho hello\n"
    );
    // otter asked for exactly pull on the repository, with the device's account
    let device = w.tokens.issued_to(DEVICE.0);
    assert!(!device.is_empty());
    for i in &device {
        assert_eq!(
            i.asked,
            vec!["repository:os/rootfs:pull".to_string()],
            "{i:?}"
        );
        assert_eq!(
            i.granted,
            vec![("os/rootfs".to_string(), vec!["pull".to_string()])]
        );
    }

    let refs_before = ostree(&["refs", &repo_arg(&sr)]);
    let status_before = admin_status(&sr);
    let check_unchanged = |what: &str| {
        assert_eq!(admin_status(&sr), status_before, "{what}");
        assert_eq!(ostree(&["refs", &repo_arg(&sr)]), refs_before, "{what}");
        ostree(&["fsck", &repo_arg(&sr)]);
    };

    // wrong password in the auth file
    let refused = w.tokens.state.refused.load(Ordering::SeqCst);
    let bad = w.config("bad", &w.reg.host(), (DEVICE.0, "wrong"), "");
    let o = otter(
        &sr,
        &bad,
        &["switch", "--no-signature-verification", &image("v2")],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("refused our credentials") && err.contains("invalid username or password"),
        "{err}"
    );
    assert!(err.contains(&w.tokens.realm()), "{err}");
    assert!(w.tokens.state.refused.load(Ordering::SeqCst) > refused);
    check_unchanged("wrong credentials");

    // no credentials at all
    let none = t.path().join("none.conf");
    fs::write(&none, "").unwrap();
    let o = otter(
        &sr,
        &none,
        &["switch", "--no-signature-verification", &image("v2")],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("refused anonymous access"), "{err}");
    check_unchanged("no credentials");

    // the right credentials again: v2 is deployed
    ok(&otter(
        &sr,
        &cfg,
        &["switch", "--no-signature-verification", &image("v2")],
    ));
    assert_eq!(admin_status_list(&sr).len(), 2, "{}", admin_status(&sr));
    ostree(&["fsck", &repo_arg(&sr)]);
}

/// Tokens the registry stops accepting 2–3 s after they are issued (while the token server
/// says 300 s: a revoked token or a skewed clock), a 4 MiB layer at a 1 MiB/s bandwidth cap,
/// and a proxy that cuts the layer's responses every 512 KiB: the resumed requests meet
/// expired tokens, otter gets a fresh one and goes on where it stopped.
#[test]
fn token_expiry_mid_download_reauthenticates_and_resumes() {
    require_tool("umoci", "umoci");
    let t = Tmpfs::new();
    let w = World::new(t.path(), 3, 300);
    let layout = build_images(t.path());
    // tag "big": v1 plus a layer with 4 MiB of incompressible data
    let big = random_bytes(4 << 20, 77);
    let tar = t.path().join("big.tar");
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(big.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    b.append_data(&mut h, "opt/big.bin", &big[..]).unwrap();
    fs::write(&tar, b.into_inner().unwrap()).unwrap();
    let v1 = format!("{}:v1", layout.display());
    run(Command::new("umoci")
        .args(["raw", "add-layer", "--image", &v1, "--tag", "big"])
        .arg(&tar));
    w.push(&layout, "big", "os/rootfs");
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mdigest = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "big")
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let manifest: serde_json::Value =
        serde_json::from_slice(&layout_blob(&layout, &mdigest)).unwrap();
    let layer = manifest["layers"].as_array().unwrap().last().unwrap();
    let (ldigest, lsize) = (
        layer["digest"].as_str().unwrap().to_string(),
        layer["size"].as_u64().unwrap(),
    );
    assert!(lsize > 4 << 20, "{lsize}");

    let proxy = Proxy::start(
        w.reg.port,
        Faults {
            target: ldigest.strip_prefix("sha256:").unwrap().to_string(),
            cut_every: Some(512 * 1024),
            ..Default::default()
        },
    );
    let host = format!("127.0.0.1:{}", proxy.port);
    let cfg = w.config("cap", &host, DEVICE, "bandwidth-limit = 1M\n");
    let sr = t.path().join("sysroot");
    let o = otter(
        &sr,
        &cfg,
        &[
            "-v",
            "install",
            "--no-signature-verification",
            &format!("docker://{host}/os/rootfs:big"),
        ],
    );
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    fs::write(t.path().join("otter.stderr"), &stderr).unwrap();
    ok(&o);
    ostree(&["fsck", &repo_arg(&sr)]);
    assert_eq!(
        fs::read(default_deployment_dir(&sr).join("opt/big.bin")).unwrap(),
        big
    );
    // the registry really refused expired tokens, and otter got new ones
    let reglog = w.registry_log();
    let expired = reglog.matches("token not to be used after").count();
    assert!(
        expired >= 1,
        "the registry never saw an expired token; registry log:\n{reglog}"
    );
    let issued = w.tokens.issued_to(DEVICE.0).len();
    assert!(issued >= 2, "only {issued} token(s) issued\n{stderr}");
    // ... without starting the layer over
    let served = proxy.served();
    assert!(
        served as f64 <= lsize as f64 * 1.05,
        "served {served} bytes for a {lsize}-byte layer"
    );
    let requests = proxy.requests.load(Ordering::SeqCst);
    eprintln!(
        "layer {lsize} bytes: {served} served in {requests} requests; {issued} tokens issued, {expired} expired tokens refused by the registry"
    );
    assert!(requests >= 8, "only {requests} requests for the layer");
}

/// Tokens carry only the scopes asked for and granted; the registry refuses a token for one
/// repository on another; otter asks for `repository:<repo>:pull` of the repository it reads
/// and says clearly when the account may not pull it.
#[test]
fn token_scope_is_per_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let w = World::new(tmp.path(), 300, 300);
    let layout = tmp.path().join("layout");
    let img = small_image(&layout, "v1");
    for repo in ["os/rootfs", "os/app", "os/secret"] {
        w.push(&layout, "v1", repo);
    }
    let mut opts = test_opts(&tmp.path().join("blobs"));
    opts.username = Some(DEVICE.0.into());
    opts.password = Some(DEVICE.1.into());

    for repo in ["os/rootfs", "os/app"] {
        let before = w.tokens.issued_to(DEVICE.0).len();
        let r: ImageRef = format!("docker://{}/{repo}:v1", w.reg.host())
            .parse()
            .unwrap();
        let mut src = source::open(&r, &opts).unwrap();
        let got = src.resolve().unwrap();
        assert_eq!(got.manifest_digest, img.manifest.digest);
        for l in &img.layers {
            assert_eq!(
                read_blob(src.as_mut(), l).unwrap(),
                layout_blob(&layout, &l.digest)
            );
        }
        let new = &w.tokens.issued_to(DEVICE.0)[before..];
        assert!(!new.is_empty(), "{repo}: no token requested");
        for i in new {
            assert_eq!(i.asked, vec![format!("repository:{repo}:pull")], "{i:?}");
            assert_eq!(
                i.granted,
                vec![(repo.to_string(), vec!["pull".to_string()])]
            );
        }
    }

    // the registry checks the scope: a token for os/rootfs opens os/rootfs, not os/app
    let rootfs_token = w
        .tokens
        .issued_to(DEVICE.0)
        .into_iter()
        .find(|i| i.granted[0].0 == "os/rootfs")
        .unwrap()
        .token;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let get = |repo: &str| {
        agent
            .get(format!("http://{}/v2/{repo}/manifests/v1", w.reg.host()))
            .header("Accept", source_util::MANIFEST)
            .header("Authorization", format!("Bearer {rootfs_token}"))
            .call()
            .unwrap()
    };
    assert_eq!(get("os/rootfs").status().as_u16(), 200);
    let resp = get("os/app");
    assert_eq!(resp.status().as_u16(), 401);
    let www = resp
        .headers()
        .get("www-authenticate")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        www.contains(r#"error="insufficient_scope""#)
            && www.contains(r#"scope="repository:os/app:pull""#),
        "{www}"
    );

    // an account without pull on os/secret: a token without access, then a clear refusal
    let before = w.tokens.issued_to(DEVICE.0).len();
    let r: ImageRef = format!("docker://{}/os/secret:v1", w.reg.host())
        .parse()
        .unwrap();
    let e = source::open(&r, &opts).unwrap().resolve().unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("os/secret") && msg.contains("insufficient_scope"),
        "{msg}"
    );
    let new = &w.tokens.issued_to(DEVICE.0)[before..];
    assert!(!new.is_empty());
    for i in new {
        assert_eq!(i.asked, vec!["repository:os/secret:pull".to_string()]);
        assert!(i.granted.is_empty(), "{i:?}");
    }
    // nothing of os/secret was downloaded
    let left: Vec<_> = fs::read_dir(&opts.blob_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".partial"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A token the registry rejects although it was just issued (here: already expired, as with a
/// token server whose clock is far behind): a clear error naming the cause, not "bad credentials".
#[test]
fn token_the_registry_rejects_is_reported_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    let w = World::new(tmp.path(), -5, 300);
    let mut opts = test_opts(&tmp.path().join("blobs"));
    opts.username = Some(DEVICE.0.into());
    opts.password = Some(DEVICE.1.into());
    let r: ImageRef = format!("docker://{}/os/rootfs:v1", w.reg.host())
        .parse()
        .unwrap();
    let e = source::open(&r, &opts).unwrap().resolve().unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("does not accept the token") && msg.contains("invalid_token"),
        "{msg}"
    );
    assert!(!w.tokens.issued_to(DEVICE.0).is_empty());
}

/// Credentials in otter's own config (`[registry] username`, `password-file`,
/// `credentials-for`): used for the named registry, never sent to another one.
#[test]
fn config_credentials_are_sent_only_to_the_named_registries() {
    require_tool("umoci", "umoci");
    let t = Tmpfs::new();
    let w = World::new(t.path(), 300, 300);
    let layout = build_images(t.path());
    w.push(&layout, "v1", "os/rootfs");
    let image = format!("docker://{}/os/rootfs:v1", w.reg.host());
    let pw = t.path().join("registry.password");
    fs::write(&pw, format!("{}\n", DEVICE.1)).unwrap();
    let conf = |name: &str, hosts: &str| {
        let p = t.path().join(name);
        fs::write(
            &p,
            format!(
                "[registry]\nusername = {}\npassword-file = {}\ncredentials-for = {hosts}\n",
                DEVICE.0,
                pw.display()
            ),
        )
        .unwrap();
        p
    };
    let args = [
        "install",
        "--no-signature-verification",
        "--stateroot=testos",
        &image,
    ];

    // named for another registry only: not sent, so anonymous, refused, nothing installed
    let sr = t.path().join("sysroot");
    let before = w.tokens.issued_to(DEVICE.0).len();
    let o = otter(&sr, &conf("other.conf", "registry.example:5000"), &args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("refused anonymous access"), "{err}");
    assert_eq!(w.tokens.issued_to(DEVICE.0).len(), before);
    let deployed = fs::read_dir(sr.join("ostree/deploy/testos/deploy"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(deployed, 0);

    // named for this registry: installed with the device's account
    ok(&otter(&sr, &conf("this.conf", &w.reg.host()), &args));
    assert_eq!(admin_status_list(&sr).len(), 1, "{}", admin_status(&sr));
    assert!(w.tokens.issued_to(DEVICE.0).len() > before);
    ostree(&["fsck", &repo_arg(&sr)]);

    // a username without the other two keys is a config error (exit 2) naming them
    let half = t.path().join("half.conf");
    fs::write(&half, format!("[registry]\nusername = {}\n", DEVICE.0)).unwrap();
    let o = otter(&sr, &half, &["status"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("credentials-for"),
        "{o:?}"
    );
}
