//! Layers an earlier import recorded (`otter/layer/<diff_id>`) are not downloaded again: an
//! upgrade from v1 (base + app1) to v2 (base + app2) reads only app2's blob, builds the same tree
//! as a fresh install of v2, and cleanup keeps exactly the layers of deployed images. Layouts
//! are made with umoci, trees checked with the real `ostree` CLI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod deploy_util;
mod source_util;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use deploy_util::*;
use otter::deploy::Sysroot;
use source_util::proxy::{Faults, Proxy};
use source_util::{skopeo_push, Registry, RegistryOpts};

const OTTER: &str = env!("CARGO_BIN_EXE_otter");

fn otter(sysroot: &Path, args: &[&str]) -> Output {
    otter_cfg(sysroot, Path::new("/dev/null"), args)
}

fn otter_cfg(sysroot: &Path, config: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(OTTER);
    c.arg(format!("--sysroot={}", sysroot.display()))
        .arg(format!("--config={}", config.display()))
        .args(args)
        .env_remove("OTTER_BOOTED_DEPLOYMENT");
    c.output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "otter failed: {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A layer tar (uncompressed) built entry by entry.
struct LayerTar(tar::Builder<Vec<u8>>);

impl LayerTar {
    fn new() -> LayerTar {
        LayerTar(tar::Builder::new(Vec::new()))
    }
    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(size);
        h
    }
    fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0);
        self.0.append_data(&mut h, path, &[][..]).unwrap();
        self
    }
    fn file(&mut self, path: &str, data: &str) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Regular, 0o644, data.len() as u64);
        self.0.append_data(&mut h, path, data.as_bytes()).unwrap();
        self
    }
    fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Link, 0o644, 0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }
    fn write(&mut self, to: &Path) {
        let b = std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()));
        fs::write(to, b.into_inner().unwrap()).unwrap();
    }
}

/// Tags `base`, `v1` (base + app1) and `v2` (base + app2) in one umoci layout; v1 and v2 share
/// the base layer blob.
fn build_images(work: &Path) -> PathBuf {
    let layout = work.join("layout");
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    let base = format!("{}:base", layout.display());
    run(Command::new("umoci").args(["new", "--image", &base]));
    let bundle = work.join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image", &base])
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    make_os_tree(&rootfs, "1", "1", "1");
    fs::rename(rootfs.join("usr/etc"), rootfs.join("etc")).unwrap();
    for f in ["a", "b"] {
        fs::create_dir_all(rootfs.join("opt/data/sub")).unwrap();
        fs::write(rootfs.join("opt/data").join(f), format!("base {f}\n")).unwrap();
    }
    fs::write(rootfs.join("opt/data/sub/deep"), "deep\n").unwrap();
    fs::create_dir_all(rootfs.join("usr/share/old")).unwrap();
    fs::write(rootfs.join("usr/share/old/file"), "old\n").unwrap();
    fs::write(rootfs.join("usr/share/gone"), "gone\n").unwrap();
    fs::hard_link(
        rootfs.join("usr/bin/hello"),
        rootfs.join("usr/bin/hello-again"),
    )
    .unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image", &base])
        .arg(&bundle));

    // app1: plain files and a hard link into the base layer
    let app1 = work.join("app1.tar");
    LayerTar::new()
        .dir("opt", 0o755)
        .file("opt/app1", "app one\n")
        .hardlink("opt/hello-link", "usr/bin/hello")
        .write(&app1);
    // app2: an opaque dir, whiteouts of a file and a directory, a hard link into the base
    // layer, a file hard-linked within the layer, a directory with a new mode
    let app2 = work.join("app2.tar");
    LayerTar::new()
        .dir("opt", 0o700)
        .file("opt/data/.wh..wh..opq", "")
        .file("opt/data/c", "app2 c\n")
        .file("usr/share/.wh.old", "")
        .file("usr/share/.wh.gone", "")
        .file("opt/app2", "app two\n")
        .hardlink("opt/app2-again", "opt/app2")
        .hardlink("opt/hello-link", "usr/bin/hello")
        .write(&app2);
    for (tag, tar, version) in [("v1", &app1, "1"), ("v2", &app2, "2")] {
        run(Command::new("umoci")
            .args(["raw", "add-layer", "--image", &base, "--tag", tag])
            .arg(tar));
        run(Command::new("umoci").args([
            "config",
            "--image",
            &format!("{}:{tag}", layout.display()),
            &format!("--config.label=org.opencontainers.image.version={version}"),
        ]));
    }
    layout
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
}

/// (layer blob digests, diff_ids) of a tag.
fn layers_of(layout: &Path, tag: &str) -> (Vec<String>, Vec<String>) {
    let index = read_json(&layout.join("index.json"));
    let m = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap();
    let manifest = read_json(&blob(layout, m["digest"].as_str().unwrap()));
    let config = read_json(&blob(
        layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ));
    let strs = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    (
        strs(&serde_json::Value::Array(
            manifest["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["digest"].clone())
                .collect(),
        )),
        strs(&config["rootfs"]["diff_ids"]),
    )
}

fn repo_arg(sr: &Path) -> String {
    format!("--repo={}", sr.join("ostree/repo").display())
}

fn layer_refs(sr: &Path) -> Vec<String> {
    let mut v: Vec<String> = ostree(&["refs", &repo_arg(sr)])
        .lines()
        .filter(|l| l.starts_with("otter/layer/"))
        .map(str::to_owned)
        .collect();
    v.sort();
    v
}

fn layer_ref(diff_id: &str) -> String {
    format!("otter/layer/{}", diff_id.strip_prefix("sha256:").unwrap())
}

fn content_checksum(sr: &Path, commit: &str) -> String {
    let out = ostree(&["show", &repo_arg(sr), commit]);
    out.lines()
        .find_map(|l| l.strip_prefix("ContentChecksum:"))
        .unwrap_or_else(|| panic!("no ContentChecksum in {out}"))
        .trim()
        .to_owned()
}

fn default_commit(sr: &Path) -> String {
    let st: serde_json::Value =
        serde_json::from_str(&ok(&otter(sr, &["status", "--json"]))).unwrap();
    st["deployments"][0]["checksum"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn shared_base_layer_is_not_downloaded_again() {
    let t = Tmpfs::new();
    let layout = build_images(t.path());
    let v1 = format!("oci:{}:v1", layout.display());
    let v2 = format!("oci:{}:v2", layout.display());
    let (blobs1, diffs1) = layers_of(&layout, "v1");
    let (blobs2, diffs2) = layers_of(&layout, "v2");
    assert_eq!(blobs1.len(), 2);
    assert_eq!(blobs1[0], blobs2[0], "v1 and v2 must share the base blob");
    assert_ne!(blobs1[1], blobs2[1]);

    // Reference: v2 installed on an empty sysroot, every layer from its blob.
    let fresh = t.path().join("fresh");
    ok(&otter(
        &fresh,
        &[
            "install",
            "--no-signature-verification",
            "--stateroot=testos",
            &v2,
        ],
    ));
    let fresh_content = content_checksum(&fresh, &default_commit(&fresh));
    let mut want = vec![layer_ref(&diffs2[0]), layer_ref(&diffs2[1])];
    want.sort();
    assert_eq!(layer_refs(&fresh), want);

    // v1, then v2 with the base blob gone from the layout: it must come from the repo.
    let sr = t.path().join("sysroot");
    ok(&otter(
        &sr,
        &[
            "install",
            "--no-signature-verification",
            "--stateroot=testos",
            &v1,
        ],
    ));
    let c1 = default_commit(&sr);
    let mut want = vec![layer_ref(&diffs1[0]), layer_ref(&diffs1[1])];
    want.sort();
    assert_eq!(layer_refs(&sr), want);
    fs::remove_file(blob(&layout, &blobs1[0])).unwrap();
    ok(&otter(&sr, &["switch", "--no-signature-verification", &v2]));
    let c2 = default_commit(&sr);
    assert_ne!(c1, c2);
    assert_eq!(content_checksum(&sr, &c2), fresh_content);
    ostree(&["fsck", &repo_arg(&sr)]);
    ostree(&["fsck", &repo_arg(&fresh)]);

    // The upper layer's whiteouts, opaque dir and hard links applied over the replayed base.
    let d2 = sr.join(format!("ostree/deploy/testos/deploy/{c2}.0"));
    let names = |p: &str| {
        let mut v: Vec<String> = fs::read_dir(d2.join(p))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names("opt/data"), vec!["c"]);
    assert!(!d2.join("usr/share/old").exists());
    assert!(!d2.join("usr/share/gone").exists());
    assert!(!d2.join("opt/app1").exists());
    assert_eq!(
        fs::read_to_string(d2.join("opt/hello-link")).unwrap(),
        "#!/bin/sh\necho hello\n"
    );
    assert_eq!(
        fs::read_to_string(d2.join("usr/bin/hello-again")).unwrap(),
        "#!/bin/sh\necho hello\n"
    );
    assert_eq!(
        fs::read_to_string(d2.join("opt/app2-again")).unwrap(),
        "app two\n"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(d2.join("opt")).unwrap().permissions().mode() & 0o7777,
        0o700
    );
    assert!(d2.join("usr/lib/modules/6.1.0-test/vmlinuz").is_file());

    // Both images deployed: all three layers kept.
    let mut want = vec![
        layer_ref(&diffs1[0]),
        layer_ref(&diffs1[1]),
        layer_ref(&diffs2[1]),
    ];
    want.sort();
    assert_eq!(layer_refs(&sr), want);

    // Drop v1 and clean up: base stays (v2 uses it), app1's layer goes.
    {
        let mut s = Sysroot::load_locked(&sr).unwrap();
        let keep = vec![s.deployments()[0].clone()];
        assert_eq!(keep[0].checksum.to_hex(), c2);
        s.write_deployments(keep, &mut |_| Ok(())).unwrap();
        s.cleanup().unwrap();
    }
    let mut want = vec![layer_ref(&diffs2[0]), layer_ref(&diffs2[1])];
    want.sort();
    assert_eq!(layer_refs(&sr), want);
    ostree(&["fsck", &repo_arg(&sr)]);

    // A recorded layer commit holds its tree under /tree, whiteouts as (empty) files, and its
    // entries in tar order in /ops (the real ostree reads both).
    let ls = ostree(&[
        "ls",
        &repo_arg(&sr),
        "-R",
        &layer_ref(&diffs2[1]),
        "/tree/opt/data",
        "/tree/usr/share",
    ]);
    assert!(ls.contains("/tree/opt/data/.wh..wh..opq"), "{ls}");
    assert!(ls.contains("/tree/usr/share/.wh.old"), "{ls}");
    let ops = ostree(&["cat", &repo_arg(&sr), &layer_ref(&diffs2[1]), "/ops"]);
    assert!(ops.starts_with("OTLOPS2\n"), "{ops:?}");
    assert!(ops.contains("opt/data/.wh..wh..opq"), "{ops:?}");
}

/// Same images from a real `docker-registry` behind a counting proxy: the upgrade to v2 sends
/// no request for the shared base blob.
#[test]
fn registry_upgrade_skips_the_shared_base_blob() {
    let t = Tmpfs::new();
    let layout = build_images(t.path());
    let (blobs1, _) = layers_of(&layout, "v1");
    let reg = Registry::start(
        &t.path().join("reg"),
        RegistryOpts {
            tls: None,
            htpasswd: None,
        },
    );
    for tag in ["v1", "v2"] {
        skopeo_push(
            &layout,
            tag,
            &format!("docker://{}/os/dedup:{tag}", reg.host()),
            &[],
        );
    }
    let proxy = Proxy::start(
        reg.port,
        Faults {
            target: blobs1[0].strip_prefix("sha256:").unwrap().to_owned(),
            ..Default::default()
        },
    );
    let cfg = t.path().join("otter.conf");
    fs::write(
        &cfg,
        format!("[registry]\ninsecure-hosts = 127.0.0.1:{}\n", proxy.port),
    )
    .unwrap();
    let image = |tag: &str| format!("docker://127.0.0.1:{}/os/dedup:{tag}", proxy.port);
    let sr = t.path().join("sysroot");
    ok(&otter_cfg(
        &sr,
        &cfg,
        &[
            "install",
            "--no-signature-verification",
            "--stateroot=testos",
            &image("v1"),
        ],
    ));
    let base_size = fs::metadata(blob(&layout, &blobs1[0])).unwrap().len();
    let (requests, served) = (
        proxy.requests.load(std::sync::atomic::Ordering::SeqCst),
        proxy.served(),
    );
    assert!(requests >= 1, "the install must fetch the base blob");
    assert_eq!(served, base_size);
    ok(&otter_cfg(
        &sr,
        &cfg,
        &["switch", "--no-signature-verification", &image("v2")],
    ));
    assert_eq!(
        proxy.requests.load(std::sync::atomic::Ordering::SeqCst),
        requests,
        "the upgrade requested the base blob again"
    );
    assert_eq!(proxy.served(), served);
    ostree(&["fsck", &repo_arg(&sr)]);
    let d2 = sr.join(format!(
        "ostree/deploy/testos/deploy/{}.0",
        default_commit_cfg(&sr, &cfg)
    ));
    assert_eq!(
        fs::read_to_string(d2.join("opt/app2")).unwrap(),
        "app two\n"
    );
    assert!(!d2.join("opt/app1").exists());
}

fn default_commit_cfg(sr: &Path, cfg: &Path) -> String {
    let st: serde_json::Value =
        serde_json::from_str(&ok(&otter_cfg(sr, cfg, &["status", "--json"]))).unwrap();
    st["deployments"][0]["checksum"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A recorded layer that cannot be replayed (its ref points at something that is not a layer
/// commit) costs a download, never a wrong tree: the ref is dropped, everything is fetched, and
/// the layer is recorded again.
#[test]
fn broken_layer_record_falls_back_to_download() {
    let t = Tmpfs::new();
    let layout = build_images(t.path());
    let (_, diffs1) = layers_of(&layout, "v1");
    let sr = t.path().join("sysroot");
    ok(&otter(
        &sr,
        &[
            "install",
            "--no-signature-verification",
            "--stateroot=testos",
            &format!("oci:{}:v1", layout.display()),
        ],
    ));
    let c1 = default_commit(&sr);
    let base = layer_ref(&diffs1[0]);
    ostree(&["refs", &repo_arg(&sr), "--delete", &base]);
    ostree(&["refs", &repo_arg(&sr), &format!("--create={base}"), &c1]);
    ok(&otter(
        &sr,
        &[
            "switch",
            "--no-signature-verification",
            &format!("oci:{}:v2", layout.display()),
        ],
    ));
    let c2 = default_commit(&sr);
    let d2 = sr.join(format!("ostree/deploy/testos/deploy/{c2}.0"));
    assert_eq!(fs::read_dir(d2.join("opt/data")).unwrap().count(), 1);
    assert!(d2.join("usr/bin/hello").is_file());
    let now = ostree(&["rev-parse", &repo_arg(&sr), &base]);
    assert_ne!(now.trim(), c1, "the broken record must be replaced");
    ostree(&["fsck", &repo_arg(&sr)]);
}

/// A layer record made under older import rules is not replayed (it may lack what those rules
/// dropped and the current ones refuse): the layer is downloaded and recorded again.
#[test]
fn layer_record_under_older_import_rules_is_downloaded_again() {
    use otter::ostree::{MetaValue, Repo};
    let t = Tmpfs::new();
    let layout = build_images(t.path());
    let (_, diffs1) = layers_of(&layout, "v1");
    let sr = t.path().join("sysroot");
    ok(&otter(
        &sr,
        &[
            "install",
            "--no-signature-verification",
            "--stateroot=testos",
            &format!("oci:{}:v1", layout.display()),
        ],
    ));
    // Re-record the shared base layer as an agent of import rules v1 would have.
    let base = layer_ref(&diffs1[0]);
    let planted = {
        let repo = Repo::open(&sr.join("ostree/repo")).unwrap();
        let old = repo
            .read_commit(
                &ostree(&["rev-parse", &repo_arg(&sr), &base])
                    .trim()
                    .parse()
                    .unwrap(),
            )
            .unwrap();
        let meta: Vec<(String, MetaValue)> = old
            .metadata
            .iter()
            .map(|(k, v)| match k.as_str() {
                "otter.import-rules" => (k.clone(), MetaValue::U64(1)),
                _ => (k.clone(), v.clone()),
            })
            .collect();
        let c = repo
            .transaction()
            .unwrap()
            .commit(
                &old.subject,
                "",
                meta,
                None,
                1_700_000_000,
                &old.root_tree,
                &old.root_meta,
            )
            .unwrap();
        repo.set_ref(&base, Some(&c)).unwrap();
        assert_eq!(otter::update::import_rules_of(&repo, &c), 1);
        c.to_hex()
    };
    let o = otter(
        &sr,
        &[
            "-v",
            "switch",
            "--no-signature-verification",
            &format!("oci:{}:v2", layout.display()),
        ],
    );
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("recorded under import rules v1") && err.contains("downloading the layer"),
        "{err}"
    );
    let now = ostree(&["rev-parse", &repo_arg(&sr), &base]);
    assert_ne!(now.trim(), planted, "the v1-rules record was replayed");
    let repo = Repo::open(&sr.join("ostree/repo")).unwrap();
    assert_eq!(
        otter::update::import_rules_of(&repo, &now.trim().parse().unwrap()),
        otter::import::IMPORT_RULES_VERSION
    );
    ostree(&["fsck", &repo_arg(&sr)]);
}
