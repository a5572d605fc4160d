//! zstd:chunked partial pulls against a real `docker-registry`: images converted with the real
//! `skopeo copy --dest-compress-format zstd:chunked`, pushed with skopeo; the bytes the registry
//! serves for the new layer are counted by a proxy; trees are compared with the same image
//! imported from its gzip layer, and checked with the real `ostree` CLI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod deploy_util;
mod source_util;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use deploy_util::{make_os_tree, ok, ostree, Tmpfs};
use source_util::proxy::{Faults, Proxy};
use source_util::{random_bytes, require_tool, run, skopeo_push, Registry, RegistryOpts};

const OTTER: &str = env!("CARGO_BIN_EXE_otter");
const FILES: usize = 32;
const FILE_SIZE: usize = 64 * 1024;
/// Files B changes (spread out, so their frames are separate ranges).
const CHANGED: [usize; 4] = [1, 9, 17, 25];

fn otter(sr: &Path, cfg: &Path, args: &[&str]) -> Output {
    Command::new(OTTER)
        .arg(format!("--sysroot={}", sr.display()))
        .arg(format!("--config={}", cfg.display()))
        .arg("-v")
        .args(args)
        .env_remove("OTTER_BOOTED_DEPLOYMENT")
        .output()
        .unwrap()
}

/// A single-layer image `tag` of `rootfs` in the gzip layout (GNU tar: end-of-archive blocks,
/// which skopeo 1.9.3 needs to convert it).
fn add_image(work: &Path, layout: &Path, tag: &str, rootfs: &Path, version: &str) {
    let tar = work.join(format!("{tag}.tar"));
    run(Command::new("tar")
        .args(["--numeric-owner", "--sort=name", "--mtime=@0", "-C"])
        .arg(rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    let img = format!("{}:{tag}", layout.display());
    run(Command::new("umoci").args(["new", "--image", &img]));
    run(Command::new("umoci")
        .args(["raw", "add-layer", "--image", &img])
        .arg(&tar));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &img,
        &format!("--config.label=org.opencontainers.image.version={version}"),
    ]));
}

struct Images {
    /// gzip layers (umoci)
    gz: PathBuf,
    /// the same images converted to zstd:chunked by skopeo
    zc: PathBuf,
}

/// A (an OS tree + FILES random files) and B (A with files changed, one added, one removed,
/// one chmod'ed), in a gzip layout and converted to zstd:chunked.
fn build(work: &Path) -> Images {
    require_tool("umoci", "umoci");
    require_tool("skopeo", "skopeo");
    let gz = work.join("gz");
    run(Command::new("umoci").args(["init", "--layout"]).arg(&gz));
    let root = work.join("rootfs");
    make_os_tree(&root, "1", "1", "1");
    fs::rename(root.join("usr/etc"), root.join("etc")).unwrap();
    let data = root.join("usr/share/data");
    fs::create_dir_all(&data).unwrap();
    for i in 0..FILES {
        fs::write(
            data.join(format!("f{i:02}")),
            random_bytes(FILE_SIZE, i as u64),
        )
        .unwrap();
    }
    fs::write(data.join("small"), "small file\n").unwrap();
    add_image(work, &gz, "a", &root, "1");

    for i in CHANGED {
        fs::write(
            data.join(format!("f{i:02}")),
            random_bytes(FILE_SIZE, 1000 + i as u64),
        )
        .unwrap();
    }
    fs::write(data.join("added"), random_bytes(FILE_SIZE, 5000)).unwrap();
    fs::remove_file(data.join("f30")).unwrap();
    fs::set_permissions(data.join("f31"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(
        root.join("usr/lib/os-release"),
        "PRETTY_NAME=\"TestOS 2\"\n",
    )
    .unwrap();
    add_image(work, &gz, "b", &root, "2");

    let zc = work.join("zc");
    for tag in ["a", "b"] {
        let mut c = Command::new("timeout");
        c.args([
            "120",
            "skopeo",
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-compress-format",
            "zstd:chunked",
        ])
        .arg(format!("oci:{}:{tag}", gz.display()))
        .arg(format!("oci:{}:{tag}", zc.display()));
        run(&mut c);
    }
    Images { gz, zc }
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

/// (manifest path, manifest JSON) of a tag.
fn manifest(layout: &Path, tag: &str) -> (PathBuf, serde_json::Value) {
    let index = read_json(&layout.join("index.json"));
    let m = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap();
    let p = blob_path(layout, m["digest"].as_str().unwrap());
    let v = read_json(&p);
    (p, v)
}

/// (digest, size, annotations) of the single layer of a tag.
fn layer(layout: &Path, tag: &str) -> (String, u64, serde_json::Value) {
    let (_, m) = manifest(layout, tag);
    let l = &m["layers"][0];
    assert_eq!(m["layers"].as_array().unwrap().len(), 1);
    (
        l["digest"].as_str().unwrap().to_owned(),
        l["size"].as_u64().unwrap(),
        l["annotations"].clone(),
    )
}

fn repo_arg(sr: &Path) -> String {
    format!("--repo={}", sr.join("ostree/repo").display())
}

fn content_checksum(sr: &Path, commit: &str) -> String {
    let out = ostree(&["show", &repo_arg(sr), commit]);
    out.lines()
        .find_map(|l| l.strip_prefix("ContentChecksum:"))
        .unwrap_or_else(|| panic!("no ContentChecksum in {out}"))
        .trim()
        .to_owned()
}

fn default_commit(sr: &Path, cfg: &Path) -> String {
    let st: serde_json::Value =
        serde_json::from_str(&ok(&otter(sr, cfg, &["status", "--json"]))).unwrap();
    st["deployments"][0]["checksum"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The tree of the gzip image `tag` installed on a fresh sysroot (the reference).
fn reference_content(t: &Path, gz: &Path, tag: &str, cfg: &Path) -> String {
    let sr = t.join(format!("ref-{tag}"));
    ok(&otter(
        &sr,
        cfg,
        &[
            "install",
            "--stateroot=testos",
            &format!("oci:{}:{tag}", gz.display()),
        ],
    ));
    content_checksum(&sr, &default_commit(&sr, cfg))
}

struct World {
    t: Tmpfs,
    images: Images,
    reg: Registry,
    cfg: PathBuf,
}

impl World {
    fn new() -> World {
        let t = Tmpfs::new();
        let images = build(t.path());
        let reg = Registry::start(
            &t.path().join("reg"),
            RegistryOpts {
                tls: None,
                htpasswd: None,
            },
        );
        let cfg = t.path().join("otter.conf");
        fs::write(&cfg, "[trust]\nrequire-signature = false\n").unwrap();
        World {
            t,
            images,
            reg,
            cfg,
        }
    }

    /// Push zstd:chunked tag `tag` (from `layout`) as `os/chunked:stable`.
    fn release(&self, layout: &Path, tag: &str) {
        skopeo_push(
            layout,
            tag,
            &format!("docker://{}/os/chunked:stable", self.reg.host()),
            &[],
        );
    }

    /// A proxy counting the bytes served for B's layer, and a config that reaches it.
    fn proxy(&self, faults: Faults) -> (Proxy, PathBuf, String) {
        let proxy = Proxy::start(self.reg.port, faults);
        let cfg = self.t.path().join(format!("otter-{}.conf", proxy.port));
        fs::write(
            &cfg,
            format!(
                "[trust]\nrequire-signature = false\n[registry]\ninsecure-hosts = 127.0.0.1:{}\n",
                proxy.port
            ),
        )
        .unwrap();
        let image = format!("docker://127.0.0.1:{}/os/chunked:stable", proxy.port);
        (proxy, cfg, image)
    }

    fn b_layer(&self) -> (String, u64) {
        let (d, s, _) = layer(&self.images.zc, "b");
        (d, s)
    }
}

/// `upgrade --check --progress json`: (path, bytes) of the plan event.
fn plan(sr: &Path, cfg: &Path) -> (String, u64, String) {
    let o = otter(sr, cfg, &["upgrade", "--check", "--progress", "json"]);
    let out = ok(&o);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let line = out
        .lines()
        .chain(err.lines())
        .find(|l| l.contains("\"event\":\"plan\""))
        .unwrap_or_else(|| panic!("no plan event:\n{out}\n{err}"))
        .to_owned();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    (
        v["path"].as_str().unwrap().to_owned(),
        v["bytes"].as_u64().unwrap(),
        out,
    )
}

fn check_b_tree(sr: &Path, cfg: &Path) {
    let d = sr.join(format!(
        "ostree/deploy/testos/deploy/{}.0",
        default_commit(sr, cfg)
    ));
    let data = d.join("usr/share/data");
    for i in CHANGED {
        assert_eq!(
            fs::read(data.join(format!("f{i:02}"))).unwrap(),
            random_bytes(FILE_SIZE, 1000 + i as u64)
        );
    }
    assert_eq!(
        fs::read(data.join("f00")).unwrap(),
        random_bytes(FILE_SIZE, 0)
    );
    assert_eq!(
        fs::read(data.join("added")).unwrap(),
        random_bytes(FILE_SIZE, 5000)
    );
    assert!(!data.join("f30").exists());
    assert_eq!(
        fs::metadata(data.join("f31")).unwrap().permissions().mode() & 0o7777,
        0o600
    );
}

#[test]
fn partial_pull_fetches_only_missing_files() {
    let w = World::new();
    let (b_digest, b_size) = w.b_layer();
    let (_, _, ann) = layer(&w.images.zc, "b");
    assert!(
        ann.get("io.containers.zstd-chunked.manifest-position")
            .is_some()
            || ann
                .get("io.github.containers.zstd-chunked.manifest-position")
                .is_some(),
        "skopeo did not write a zstd:chunked layer: {ann}"
    );
    let want = reference_content(w.t.path(), &w.images.gz, "b", &w.cfg);

    w.release(&w.images.zc, "a");
    let (proxy, cfg, image) = w.proxy(Faults {
        target: b_digest.strip_prefix("sha256:").unwrap().to_owned(),
        ..Default::default()
    });
    let sr = w.t.path().join("sysroot");
    ok(&otter(
        &sr,
        &cfg,
        &["install", "--stateroot=testos", &image],
    ));
    let repo = sr.join("ostree/repo");
    // The install wrote payload links for the big files (ostree's own format), fsck agrees.
    let links = count_payload_links(&repo);
    assert!(links >= FILES, "only {links} payload links");
    ostree(&["fsck", &repo_arg(&sr)]);

    w.release(&w.images.zc, "b");
    let (path, bytes, out) = plan(&sr, &cfg);
    assert_eq!(path, "chunked", "{out}");
    assert!(
        out.contains("it will be fetched as chunked"),
        "the check output must name the path: {out}"
    );
    // The changed and added files (incompressible) plus the TOC and small neighbours.
    let changed = ((CHANGED.len() + 1) * FILE_SIZE) as u64;
    assert!(
        bytes >= changed && bytes < b_size / 4,
        "plan says {bytes} bytes; changed {changed}, layer {b_size}"
    );
    let after_check = proxy.served();
    assert!(after_check > 0, "the check must read the TOC");
    assert!(
        after_check < 64 * 1024,
        "the check read {after_check} bytes"
    );

    ok(&otter(&sr, &cfg, &["upgrade"]));
    let served = proxy.served();
    assert!(
        served <= bytes,
        "served {served} bytes for B's layer, the plan said {bytes}"
    );
    assert!(
        served * 4 < b_size,
        "served {served} of the {b_size}-byte layer"
    );
    eprintln!("plan {bytes} bytes, served {served} of the {b_size}-byte layer");
    let c = default_commit(&sr, &cfg);
    assert_eq!(
        content_checksum(&sr, &c),
        want,
        "tree differs from the gzip import"
    );
    check_b_tree(&sr, &cfg);
    ostree(&["fsck", &repo_arg(&sr)]);

    // Prune (ours at cleanup, then the real one) keeps the repo consistent; links of pruned
    // objects go with them.
    ostree(&["prune", &repo_arg(&sr), "--refs-only"]);
    ostree(&["fsck", &repo_arg(&sr)]);
    for l in payload_links(&repo) {
        let t = fs::read_link(&l).unwrap();
        assert!(
            l.parent().unwrap().join(&t).exists(),
            "stale payload link {} -> {}",
            l.display(),
            t.display()
        );
    }
}

fn payload_links(repo: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for d in fs::read_dir(repo.join("objects")).unwrap() {
        let d = d.unwrap().path();
        if !d.is_dir() {
            continue;
        }
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.to_string_lossy().ends_with(".payload-link") {
                v.push(p);
            }
        }
    }
    v
}

fn count_payload_links(repo: &Path) -> usize {
    let links = payload_links(repo);
    for l in &links {
        let t = fs::read_link(l).unwrap();
        let t = t.to_str().unwrap();
        assert!(
            t.starts_with("../") && t.ends_with(".file") && t.len() == 3 + 2 + 1 + 62 + 5,
            "payload link target {t:?} is not ostree's ../xx/<62 hex>.file"
        );
        assert!(l.parent().unwrap().join(t).is_file(), "{t} is missing");
    }
    links.len()
}

/// A TOC checksum annotation that does not match: the layer is downloaded whole and the tree
/// is right.
#[test]
fn wrong_toc_checksum_falls_back_to_the_whole_layer() {
    let w = World::new();
    let want = reference_content(w.t.path(), &w.images.gz, "b", &w.cfg);
    // A copy of the zstd:chunked layout whose B manifest names another TOC checksum.
    let bad = w.t.path().join("bad");
    run(Command::new("cp").arg("-a").arg(&w.images.zc).arg(&bad));
    let (mpath, mut m) = manifest(&bad, "b");
    let ann = m["layers"][0]["annotations"].as_object_mut().unwrap();
    let key = ann
        .keys()
        .find(|k| k.ends_with("zstd-chunked.manifest-checksum"))
        .unwrap()
        .clone();
    ann.insert(key, format!("sha256:{}", "0".repeat(64)).into());
    let bytes = serde_json::to_vec(&m).unwrap();
    let digest = source_util::sha(&bytes);
    fs::write(blob_path(&bad, &digest), &bytes).unwrap();
    let _ = mpath;
    let mut index = read_json(&bad.join("index.json"));
    for e in index["manifests"].as_array_mut().unwrap() {
        if e["annotations"]["org.opencontainers.image.ref.name"] == "b" {
            e["digest"] = digest.clone().into();
            e["size"] = bytes.len().into();
        }
    }
    fs::write(bad.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();

    let (b_digest, b_size) = w.b_layer();
    w.release(&w.images.zc, "a");
    let (proxy, cfg, image) = w.proxy(Faults {
        target: b_digest.strip_prefix("sha256:").unwrap().to_owned(),
        ..Default::default()
    });
    let sr = w.t.path().join("sysroot");
    ok(&otter(
        &sr,
        &cfg,
        &["install", "--stateroot=testos", &image],
    ));
    w.release(&bad, "b");
    let o = otter(&sr, &cfg, &["upgrade"]);
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("not the one the manifest names"),
        "the fallback must say why: {err}"
    );
    let served = proxy.served();
    assert!(
        served >= b_size,
        "served {served} bytes: the whole {b_size}-byte layer must be downloaded"
    );
    assert_eq!(
        content_checksum(&sr, &default_commit(&sr, &cfg)),
        want,
        "tree differs from the gzip import"
    );
    check_b_tree(&sr, &cfg);
    ostree(&["fsck", &repo_arg(&sr)]);
}

/// `otter upgrade` killed (SIGKILL) in the middle of the chunk downloads: the rerun completes,
/// and the ranges finished before the kill are not fetched again.
#[test]
fn killed_partial_pull_resumes() {
    let w = World::new();
    let want = reference_content(w.t.path(), &w.images.gz, "b", &w.cfg);
    let (b_digest, _) = w.b_layer();
    w.release(&w.images.zc, "a");
    // Paced: the missing ranges (~5 × 64 KiB) take a few seconds.
    let (proxy, cfg, image) = w.proxy(Faults {
        target: b_digest.strip_prefix("sha256:").unwrap().to_owned(),
        pace: Some(96 * 1024),
        ..Default::default()
    });
    let sr = w.t.path().join("sysroot");
    ok(&otter(
        &sr,
        &cfg,
        &["install", "--stateroot=testos", &image],
    ));
    w.release(&w.images.zc, "b");
    let (path, bytes, _) = plan(&sr, &cfg);
    assert_eq!(path, "chunked");
    let log = fs::File::create(w.t.path().join("killed.log")).unwrap();
    let mut child = source_util::ChildGuard(
        Command::new(OTTER)
            .arg(format!("--sysroot={}", sr.display()))
            .arg(format!("--config={}", cfg.display()))
            .arg("-v")
            .arg("upgrade")
            .env_remove("OTTER_BOOTED_DEPLOYMENT")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    let kill_at = bytes / 2;
    while proxy.served() < kill_at {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the upgrade did not download"
        );
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "the upgrade ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let before = proxy.served();
    assert!(before < bytes, "killed too late ({before} of {bytes})");
    let requests = proxy.requests.load(Ordering::SeqCst);

    ok(&otter(&sr, &cfg, &["upgrade"]));
    let again = proxy.served() - before;
    eprintln!("plan {bytes} bytes; killed after {before}, the rerun fetched {again}");
    // Everything before the kill but the range in flight is kept: the rerun fetches at most
    // what was left plus one range (a 64 KiB file and its neighbours' headers).
    assert!(
        again <= bytes - kill_at + 2 * FILE_SIZE as u64,
        "the rerun fetched {again} bytes of {bytes} after {before} were served"
    );
    assert!(proxy.requests.load(Ordering::SeqCst) > requests);
    assert_eq!(content_checksum(&sr, &default_commit(&sr, &cfg)), want);
    check_b_tree(&sr, &cfg);
    ostree(&["fsck", &repo_arg(&sr)]);
}
