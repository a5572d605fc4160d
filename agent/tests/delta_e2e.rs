//! Deltas end to end through the CLIs: images built with `umoci`, pushed with `skopeo copy` to a
//! real loopback `docker-registry`, signed and delta'd with `otter-publish`, deployed with
//! `otter`; trees compared with the real `ostree` CLI. A device taking the delta ends in exactly
//! the tree of a device pulling the layers; bad deltas are detected and fall back to the layers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod deploy_util;
mod source_util;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use deploy_util::{admin_status_list, make_os_tree, ostree, run, snapshot, Tmpfs};
use source_util::{random_bytes, skopeo_push, Registry, RegistryOpts};

const OTTER: &str = env!("CARGO_BIN_EXE_otter");
const PUBLISH: &str = env!("CARGO_BIN_EXE_otter-publish");

/// Tags v1, v2, v3 of a test OS: a 3 MB incompressible file that never changes, a 400 kB binary
/// edited a little per version, a kernel per version.
fn build_images(work: &Path) -> PathBuf {
    let layout = work.join("layout");
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    let big = random_bytes(3 << 20, 42);
    for v in ["1", "2", "3"] {
        let img = format!("{}:v{v}", layout.display());
        run(Command::new("umoci").args(["new", "--image", &img]));
        let bundle = work.join(format!("bundle-{v}"));
        run(Command::new("umoci")
            .args(["unpack", "--image", &img])
            .arg(&bundle));
        let rootfs = bundle.join("rootfs");
        make_os_tree(&rootfs, v, v, v);
        fs::rename(rootfs.join("usr/etc"), rootfs.join("etc")).unwrap();
        fs::write(rootfs.join("usr/lib/big.bin"), &big).unwrap();
        let mut app = random_bytes(400_000, 7);
        let n: usize = v.parse().unwrap();
        for b in &mut app[1000 * n..1000 * n + 200] {
            *b ^= 0x5a;
        }
        fs::write(rootfs.join("usr/bin/app"), &app).unwrap();
        run(Command::new("umoci")
            .args(["repack", "--image", &img])
            .arg(&bundle));
        run(Command::new("umoci").args([
            "config",
            "--image",
            &img,
            &format!("--config.label=org.opencontainers.image.version={v}"),
        ]));
    }
    layout
}

fn ok(o: &Output) -> (String, String) {
    assert!(
        o.status.success(),
        "failed: {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn publish(args: &[&str]) -> String {
    ok(&Command::new(PUBLISH).args(args).output().unwrap()).0
}

struct World {
    t: Tmpfs,
    reg: Registry,
    layout: PathBuf,
    config: PathBuf,
    keys: PathBuf,
    sk: PathBuf,
}

impl World {
    fn new() -> World {
        let t = Tmpfs::new();
        let layout = build_images(t.path());
        let reg = Registry::start(
            &t.path().join("registry"),
            RegistryOpts {
                tls: None,
                htpasswd: None,
            },
        );
        let config = t.path().join("otter.conf");
        fs::write(
            &config,
            format!("[registry]\ninsecure-hosts = {}\n", reg.host()),
        )
        .unwrap();
        let prefix = t.path().join("release");
        publish(&["keygen", "--out", prefix.to_str().unwrap()]);
        let keys = t.path().join("keys");
        fs::create_dir_all(&keys).unwrap();
        fs::copy(t.path().join("release.pub"), keys.join("release.pub")).unwrap();
        let sk = t.path().join("release.key");
        World {
            t,
            reg,
            layout,
            config,
            keys,
            sk,
        }
    }

    fn image(&self, repo: &str, tag: &str) -> String {
        format!("docker://{}/{repo}:{tag}", self.reg.host())
    }

    /// Push and sign tags into registry repository `repo`.
    fn push(&self, repo: &str, tags: &[&str]) {
        for tag in tags {
            let dest = self.image(repo, tag);
            skopeo_push(&self.layout, tag, &dest, &[]);
            publish(&[
                "sign",
                "--key",
                self.sk.to_str().unwrap(),
                &dest,
                "--plain-http",
            ]);
        }
        self.release(repo, "v1");
    }

    /// Move tag `stable` (what devices track) of `repo` to `tag`.
    fn release(&self, repo: &str, tag: &str) {
        skopeo_push(&self.layout, tag, &self.image(repo, "stable"), &[]);
    }

    fn otter(&self, sysroot: &Path, args: &[&str]) -> Output {
        Command::new(OTTER)
            .arg(format!("--sysroot={}", sysroot.display()))
            .arg(format!("--config={}", self.config.display()))
            .arg(format!("--trusted-keys={}", self.keys.display()))
            .arg("-v")
            .args(args)
            .env_remove("OTTER_BOOTED_DEPLOYMENT")
            .output()
            .unwrap()
    }

    /// A device running v1 of `repo`.
    fn device(&self, name: &str, repo: &str) -> PathBuf {
        let sr = self.t.path().join(name);
        ok(&self.otter(&sr, &["install", &self.image(repo, "stable")]));
        sr
    }

    /// `upgrade --check --progress json`: the plan (path, bytes).
    fn plan(&self, sr: &Path) -> (String, u64) {
        let (out, err) = ok(&self.otter(sr, &["upgrade", "--check", "--progress", "json"]));
        let line = out
            .lines()
            .chain(err.lines())
            .find(|l| l.contains("\"event\":\"plan\""))
            .unwrap_or_else(|| panic!("no plan event:\n{out}\n{err}"));
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        (
            v["path"].as_str().unwrap().to_owned(),
            v["bytes"].as_u64().unwrap(),
        )
    }

    /// `otter upgrade`: the new default deployment's commit, stderr.
    fn upgrade(&self, sr: &Path) -> (String, String) {
        let (_, err) = ok(&self.otter(sr, &["upgrade"]));
        let list = admin_status_list(sr);
        assert_eq!(list.len(), 2, "{list:?}");
        let commit = list[0].1.split('.').next().unwrap().to_owned();
        (commit, err)
    }
}

fn content_checksum(sr: &Path, commit: &str) -> String {
    let show = ostree(&[
        &format!("--repo={}", sr.join("ostree/repo").display()),
        "show",
        commit,
    ]);
    show.lines()
        .find_map(|l| l.strip_prefix("ContentChecksum:"))
        .unwrap_or_else(|| panic!("no ContentChecksum in {show}"))
        .trim()
        .to_owned()
}

fn checkout(sr: &Path, commit: &str, dest: &Path) -> std::collections::BTreeMap<PathBuf, String> {
    ostree(&[
        &format!("--repo={}", sr.join("ostree/repo").display()),
        "checkout",
        "-U",
        commit,
        dest.to_str().unwrap(),
    ]);
    snapshot(dest)
}

fn meta(sr: &Path, commit: &str, key: &str) -> String {
    ostree(&[
        &format!("--repo={}", sr.join("ostree/repo").display()),
        "show",
        &format!("--print-metadata-key={key}"),
        commit,
    ])
}

/// Layers on one device, the delta on another: same tree, same kind of commit, and the delta
/// downloads far less.
#[test]
fn delta_path_gives_the_layer_path_tree_for_far_fewer_bytes() {
    let w = World::new();
    w.push("os", &["v1", "v2"]);
    let layers_dev = w.device("dev-layers", "os");
    let delta_dev = w.device("dev-delta", "os");
    w.release("os", "v2");

    // No delta published yet: the layers.
    let (path, layer_bytes) = w.plan(&layers_dev);
    assert_eq!(path, "layers");
    let (layers_commit, err) = w.upgrade(&layers_dev);
    assert!(err.contains("no delta from tree"), "{err}");

    let out = publish(&[
        "delta",
        "--from",
        &w.image("os", "v1"),
        "--to",
        &w.image("os", "v2"),
        "--plain-http",
    ]);
    assert!(out.contains("attached to"), "{out}");
    let (path, delta_bytes) = w.plan(&delta_dev);
    assert_eq!(path, "delta");
    assert!(
        delta_bytes * 10 < layer_bytes,
        "delta {delta_bytes} bytes vs layers {layer_bytes}"
    );
    let human = ok(&w.otter(&delta_dev, &["upgrade", "--check"])).0;
    assert!(human.contains("fetched as delta"), "{human}");

    let (delta_commit, err) = w.upgrade(&delta_dev);
    assert!(err.contains("rebuilt from a delta"), "{err}");
    assert!(!err.contains("fetching the layers"), "{err}");
    // Each device wrote its own commit, over the same tree.
    assert_eq!(
        content_checksum(&layers_dev, &layers_commit),
        content_checksum(&delta_dev, &delta_commit)
    );
    let a = checkout(&layers_dev, &layers_commit, &w.t.path().join("co-layers"));
    let b = checkout(&delta_dev, &delta_commit, &w.t.path().join("co-delta"));
    assert_eq!(a, b);
    for key in [
        "otter.image.digest",
        "otter.image.config-digest",
        "version",
        "ostree.linux",
        "otter.release.statement",
    ] {
        assert_eq!(
            meta(&layers_dev, &layers_commit, key),
            meta(&delta_dev, &delta_commit, key),
            "{key}"
        );
    }
    run(Command::new("ostree")
        .arg(format!(
            "--repo={}",
            delta_dev.join("ostree/repo").display()
        ))
        .arg("fsck"));
}

/// Path of a blob in the registry's filesystem storage.
fn registry_blob(reg: &Registry, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    reg.dir
        .join("data/docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

/// A corrupt part, and a delta that builds another tree than the signed one: both detected,
/// the device falls back to the layers and ends in the right tree.
#[test]
fn bad_deltas_fall_back_to_the_layers() {
    let w = World::new();
    w.push("corrupt", &["v1", "v2"]);
    w.push("wrong", &["v1", "v2", "v3"]);
    let reference = w.t.path().join("reference");
    let ref_dev = w.device("dev-ref", "corrupt");
    let dev_corrupt = w.device("dev-corrupt", "corrupt");
    let dev_wrong = w.device("dev-wrong", "wrong");
    w.release("corrupt", "v2");
    w.release("wrong", "v2");
    let (ref_commit, _) = w.upgrade(&ref_dev);
    let want = content_checksum(&ref_dev, &ref_commit);
    let want_tree = checkout(&ref_dev, &ref_commit, &reference);

    // Corrupt part: the registry serves altered bytes for part 0.
    let p = otter::publish::delta::delta(
        &w.image("corrupt", "v1"),
        &w.image("corrupt", "v2"),
        None,
        true,
    )
    .unwrap();
    let art = p.artifact.unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(registry_blob(&w.reg, &art.digest)).unwrap()).unwrap();
    let part0 = manifest["layers"][1]["digest"].as_str().unwrap();
    let path = registry_blob(&w.reg, part0);
    let mut data = fs::read(&path).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    fs::write(&path, &data).unwrap();
    let dev = dev_corrupt;
    assert_eq!(w.plan(&dev).0, "delta");
    let (c, err) = w.upgrade(&dev);
    assert!(err.contains("fetching the layers instead"), "{err}");
    assert_eq!(content_checksum(&dev, &c), want);
    assert_eq!(
        checkout(&dev, &c, &w.t.path().join("co-corrupt")),
        want_tree
    );

    // A delta v1 → v3 attached to v2 (its superblock promises v3's tree, not the signed v2).
    let dir = w.t.path().join("wrong-delta");
    let p = otter::publish::delta::delta(
        &w.image("wrong", "v1"),
        &w.image("wrong", "v3"),
        Some(&dir),
        true,
    )
    .unwrap();
    let v2 = otter::publish::delta::delta(
        &w.image("wrong", "v1"),
        &w.image("wrong", "v2"),
        Some(&w.t.path().join("scratch")),
        true,
    )
    .unwrap();
    otter::publish::delta::attach(
        &w.image("wrong", "v2"),
        &v2.to_digest,
        &p.from_digest,
        &p.summary,
        &dir,
        true,
    )
    .unwrap();
    let dev = dev_wrong;
    assert_eq!(w.plan(&dev).0, "delta");
    let (c, err) = w.upgrade(&dev);
    assert!(err.contains("not the signed one"), "{err}");
    assert!(err.contains("fetching the layers instead"), "{err}");
    assert_eq!(content_checksum(&dev, &c), want);
    assert_eq!(checkout(&dev, &c, &w.t.path().join("co-wrong")), want_tree);
}
