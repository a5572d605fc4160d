//! The `otter` binary end to end: OCI layouts built with umoci, sysroots checked with the real
//! `ostree` CLI, exit codes, `status --json`, config errors, bad input changing nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod deploy_util;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use deploy_util::*;

const OTTER: &str = env!("CARGO_BIN_EXE_otter");

/// An OCI layout at `layout` with tags v1 and v2 (umoci), like ref §5's trees.
fn build_images(work: &Path) -> PathBuf {
    let layout = work.join("layout");
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    for (tag, kernel, etc) in [("v1", "1", "v1"), ("v2", "2", "v2")] {
        let img = format!("{}:{tag}", layout.display());
        run(Command::new("umoci").args(["new", "--image", &img]));
        let bundle = work.join(format!("bundle-{tag}"));
        run(Command::new("umoci")
            .args(["unpack", "--image", &img])
            .arg(&bundle));
        let rootfs = bundle.join("rootfs");
        make_os_tree(&rootfs, &tag[1..], etc, kernel);
        // images ship their defaults in /etc; import moves them to /usr/etc
        fs::rename(rootfs.join("usr/etc"), rootfs.join("etc")).unwrap();
        run(Command::new("umoci")
            .args(["repack", "--image", &img])
            .arg(&bundle));
        run(Command::new("umoci").args([
            "config",
            "--image",
            &img,
            &format!(
                "--config.label=org.opencontainers.image.version={}",
                &tag[1..]
            ),
        ]));
    }
    layout
}

fn status_json(sr: &Path) -> serde_json::Value {
    serde_json::from_str(&ok(&otter(sr, &["status", "--json"]))).unwrap()
}

#[test]
fn install_switch_upgrade_rollback() {
    let t = Tmpfs::new();
    let layout = build_images(t.path());
    let sr = t.path().join("sysroot");
    let v1 = format!("oci:{}:v1", layout.display());
    let v2 = format!("oci:{}:v2", layout.display());
    ok(&otter(
        &sr,
        &[
            "install",
            "--no-signature-verification",
            "--stateroot=testos",
            "--karg=quiet",
            &v1,
        ],
    ));
    let l = admin_status_list(&sr);
    assert_eq!(l.len(), 1);
    let st = status_json(&sr);
    let d = &st["deployments"][0];
    assert_eq!(d["stateroot"], "testos");
    assert_eq!(d["serial"], 0);
    assert_eq!(d["default"], true);
    assert_eq!(d["booted"], false);
    assert_eq!(d["image"]["reference"], v1.as_str());
    assert_eq!(d["image"]["version"], "1");
    assert!(d["image"]["digest"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    assert!(d["image"]["timestamp"].as_u64().unwrap() > 0);
    assert_eq!(l[0].1, format!("{}.0", d["checksum"].as_str().unwrap()));
    let c1 = d["checksum"].as_str().unwrap().to_owned();

    // unchanged image: no update
    let o = otter(&sr, &["upgrade", "--check", "--no-signature-verification"]);
    assert_eq!(o.status.code(), Some(77), "{o:?}");
    let o = ok(&otter(&sr, &["upgrade", "--no-signature-verification"]));
    assert!(o.contains("No update"), "{o}");

    // local /etc edit, then switch to v2
    let d1 = sr.join(format!("ostree/deploy/testos/deploy/{c1}.0"));
    fs::write(d1.join("etc/myconf"), "locally-modified\n").unwrap();
    ok(&otter(&sr, &["switch", "--no-signature-verification", &v2]));
    let st = status_json(&sr);
    let ds = st["deployments"].as_array().unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds[0]["image"]["version"], "2");
    assert_eq!(ds[0]["image"]["reference"], v2.as_str());
    assert_eq!(ds[1]["checksum"], c1.as_str());
    assert_eq!(ds[1]["rollback"], true);
    let c2 = ds[0]["checksum"].as_str().unwrap().to_owned();
    assert_eq!(
        admin_status_list(&sr),
        vec![
            ("testos".into(), format!("{c2}.0")),
            ("testos".into(), format!("{c1}.0"))
        ]
    );
    let d2 = sr.join(format!("ostree/deploy/testos/deploy/{c2}.0"));
    assert_eq!(
        fs::read_to_string(d2.join("etc/myconf")).unwrap(),
        "locally-modified\n"
    );
    assert_eq!(
        fs::read_to_string(d2.join("etc/untouched")).unwrap(),
        "keep-default-v2\n"
    );
    let entry = fs::read_to_string(sr.join("boot/loader/entries/ostree-2-testos.conf")).unwrap();
    assert!(
        entry.contains("options quiet ostree="),
        "kargs kept: {entry}"
    );

    // booted into v2 (override), rollback: v1 becomes default and shows as pending
    let booted = format!("testos/{c2}.0");
    let o = Command::new(OTTER)
        .args([
            &format!("--sysroot={}", sr.display()),
            "--config=/dev/null",
            "status",
            "--json",
        ])
        .env("OTTER_BOOTED_DEPLOYMENT", &booted)
        .output()
        .unwrap();
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["deployments"][0]["booted"], true);
    assert_eq!(st["deployments"][1]["rollback"], true);
    ok(&otter(&sr, &["rollback"]));
    assert_eq!(
        admin_status_list(&sr),
        vec![
            ("testos".into(), format!("{c1}.0")),
            ("testos".into(), format!("{c2}.0"))
        ]
    );
    let o = Command::new(OTTER)
        .args([
            &format!("--sysroot={}", sr.display()),
            "--config=/dev/null",
            "status",
        ])
        .env("OTTER_BOOTED_DEPLOYMENT", &booted)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("(default, pending)"), "{text}");
    assert!(
        text.contains(&format!("* testos {c2}.0 (booted)")),
        "{text}"
    );
    let fsck = ostree(&[
        "fsck",
        &format!("--repo={}", sr.join("ostree/repo").display()),
    ]);
    assert!(fsck.contains("no errors found"), "{fsck}");
}

#[test]
fn config_errors_name_key_and_line() {
    let t = tempfile::tempdir().unwrap();
    let conf = t.path().join("otter.conf");
    fs::write(
        &conf,
        "[update]\nstateroot = ok\n[registry]\nconcurency = 3\n",
    )
    .unwrap();
    let o = Command::new(OTTER)
        .args(["--sysroot", &t.path().display().to_string()])
        .arg(format!("--config={}", conf.display()))
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("line 4") && err.contains("concurency"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "error printed once: {err}");
    let o = Command::new(OTTER).arg("frobnicate").output().unwrap();
    assert_eq!(o.status.code(), Some(2));
}

/// Corrupt a copy of the layout in various ways; a failed upgrade leaves the sysroot as it was
/// (objects of a partial import are unreferenced and not part of the comparison; blobs cache).
#[test]
fn bad_input_changes_nothing() {
    let t = Tmpfs::new();
    let layout = build_images(t.path());
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
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let v2 = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "v2")
        .unwrap()
        .clone();
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(blob(v2["digest"].as_str().unwrap())).unwrap()).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();

    let snap = |sr: &Path| {
        let mut s = snapshot(sr);
        s.retain(|k, _| {
            !k.starts_with("ostree/repo/objects")
                && !k.starts_with("ostree/repo/tmp")
                && !k.starts_with("ostree/deploy/testos/var/lib/otter")
                && !k.starts_with("ostree/otter/last-update.json")
        });
        s
    };
    let before = snap(&sr);
    type Corrupt = fn(&Path, &Path);
    let cases: Vec<(&str, Corrupt)> = vec![
        ("truncated layer", |_l, b| {
            let d = fs::read(b).unwrap();
            fs::write(b, &d[..d.len() / 2]).unwrap();
        }),
        ("flipped byte (bad digest)", |_l, b| {
            let mut d = fs::read(b).unwrap();
            let n = d.len() / 2;
            d[n] ^= 0xff;
            fs::write(b, d).unwrap();
        }),
        ("missing blob", |_l, b| fs::remove_file(b).unwrap()),
    ];
    let cases: Vec<(&str, Corrupt)> = cases
        .into_iter()
        .chain([
            (
                "unknown layer media type",
                (|l: &Path, _b: &Path| {
                    rewrite_v2(l, |m, _| {
                        m["layers"][0]["mediaType"] = "application/vnd.example.unknown".into();
                    })
                }) as Corrupt,
            ),
            ("other-platform image", |l, _b| {
                rewrite_v2(l, |m, l| {
                    let cfg_path = l.join("blobs/sha256").join(
                        m["config"]["digest"]
                            .as_str()
                            .unwrap()
                            .trim_start_matches("sha256:"),
                    );
                    let mut cfg: serde_json::Value =
                        serde_json::from_slice(&fs::read(cfg_path).unwrap()).unwrap();
                    cfg["architecture"] = "s390x".into();
                    let (d, n) = write_blob(l, &serde_json::to_vec(&cfg).unwrap());
                    m["config"]["digest"] = d.into();
                    m["config"]["size"] = n.into();
                })
            }),
        ])
        .collect();
    for (name, corrupt) in cases {
        let bad = t.path().join(format!("bad-{}", name.replace(' ', "-")));
        run(Command::new("cp").arg("-a").arg(&layout).arg(&bad));
        corrupt(
            &bad,
            &bad.join("blobs/sha256")
                .join(layer.trim_start_matches("sha256:")),
        );
        let o = otter(
            &sr,
            &[
                "switch",
                "--no-signature-verification",
                &format!("oci:{}:v2", bad.display()),
            ],
        );
        assert!(!o.status.success(), "{name}: switch succeeded");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("error:"), "{name}: {err}");
        let after = snap(&sr);
        let diff: Vec<_> = after
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(v))
            .map(|(k, _)| k.clone())
            .chain(before.keys().filter(|k| !after.contains_key(*k)).cloned())
            .collect();
        assert!(diff.is_empty(), "{name}: sysroot changed: {diff:?}");
        let last: serde_json::Value =
            serde_json::from_slice(&fs::read(sr.join("ostree/otter/last-update.json")).unwrap())
                .unwrap();
        assert_eq!(last["result"], "failed", "{name}");
        if name.contains("digest") || name.contains("truncated") {
            assert_eq!(
                o.status.code(),
                Some(3),
                "{name}: exit code 3 for verification: {err}"
            );
        }
    }
    let fsck = ostree(&[
        "fsck",
        &format!("--repo={}", sr.join("ostree/repo").display()),
    ]);
    assert!(fsck.contains("no errors found"), "{fsck}");
}

fn write_blob(layout: &Path, data: &[u8]) -> (String, u64) {
    use sha2::Digest;
    let hex: String = sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    fs::write(layout.join("blobs/sha256").join(&hex), data).unwrap();
    (format!("sha256:{hex}"), data.len() as u64)
}

/// Rewrite the v2 manifest of a layout with `f`, store it as a new blob and point the index at it.
fn rewrite_v2(layout: &Path, f: impl Fn(&mut serde_json::Value, &Path)) {
    let ip = layout.join("index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&fs::read(&ip).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "v2")
        .unwrap();
    let mp = layout.join("blobs/sha256").join(
        entry["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:"),
    );
    let mut m: serde_json::Value = serde_json::from_slice(&fs::read(mp).unwrap()).unwrap();
    f(&mut m, layout);
    let (d, n) = write_blob(layout, &serde_json::to_vec(&m).unwrap());
    entry["digest"] = d.into();
    entry["size"] = n.into();
    fs::write(&ip, serde_json::to_vec(&index).unwrap()).unwrap();
}

/// Point tag `to` of a layout at the manifest tag `from` has (drops the old `to` entry).
fn retag(layout: &Path, from: &str, to: &str) {
    let ip = layout.join("index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&fs::read(&ip).unwrap()).unwrap();
    let ms = index["manifests"].as_array_mut().unwrap();
    ms.retain(|m| m["annotations"]["org.opencontainers.image.ref.name"] != to);
    let mut e = ms
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == from)
        .unwrap()
        .clone();
    e["annotations"]["org.opencontainers.image.ref.name"] = to.into();
    ms.push(e);
    fs::write(&ip, serde_json::to_vec(&index).unwrap()).unwrap();
}

#[test]
fn upgrade_check_download_only_then_deploy() {
    let t = Tmpfs::new();
    let layout = build_images(t.path());
    retag(&layout, "v1", "stable");
    let sr = t.path().join("sysroot");
    let stable = format!("oci:{}:stable", layout.display());
    ok(&otter(
        &sr,
        &["install", "--no-signature-verification", &stable],
    ));
    assert_eq!(admin_status_list(&sr)[0].0, "default", "default stateroot");
    let o = otter(&sr, &["upgrade", "--check", "--no-signature-verification"]);
    assert_eq!(o.status.code(), Some(77));

    retag(&layout, "v2", "stable");
    let o = ok(&otter(
        &sr,
        &["upgrade", "--check", "--no-signature-verification"],
    ));
    assert!(
        o.contains("Update available") && o.contains("version 2"),
        "{o}"
    );
    let o = ok(&otter(
        &sr,
        &[
            "upgrade",
            "--download-only",
            "--no-signature-verification",
            "--progress=json",
        ],
    ));
    assert!(o.contains("Downloaded"), "{o}");
    assert!(
        o.lines().any(|l| l.contains("\"event\":\"import\"")),
        "json progress: {o}"
    );
    assert_eq!(
        admin_status_list(&sr).len(),
        1,
        "download-only does not deploy"
    );
    let refs = ostree(&[
        "refs",
        &format!("--repo={}", sr.join("ostree/repo").display()),
    ]);
    assert!(
        refs.lines().any(|l| l.starts_with("otter/image/")),
        "{refs}"
    );
    let o = ok(&otter(&sr, &["upgrade", "--no-signature-verification"]));
    assert!(o.contains("Deployed") && o.contains("version 2"), "{o}");
    let st = status_json(&sr);
    assert_eq!(st["deployments"][0]["image"]["version"], "2");
    assert_eq!(st["deployments"][0]["image"]["reference"], stable.as_str());
    assert_eq!(st["deployments"][1]["image"]["version"], "1");
    assert_eq!(admin_status_list(&sr).len(), 2);
    let o = otter(&sr, &["upgrade", "--check", "--no-signature-verification"]);
    assert_eq!(o.status.code(), Some(77));
}

/// The manifest digest (hex) of `tag` in an OCI layout.
fn manifest_hex(layout: &Path, tag: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .strip_prefix("sha256:")
        .unwrap()
        .to_owned()
}

/// Plant `otter/image/<hex>` → a commit of `tree_of`'s tree recorded with import rules v1, as
/// an agent of the first rules would have left it; returns the commit.
fn plant_v1_import(sr: &Path, hex: &str, tree_of: &str) -> String {
    use otter::ostree::{MetaValue, Repo};
    let repo = Repo::open(&sr.join("ostree/repo")).unwrap();
    let src = repo.read_commit(&tree_of.parse().unwrap()).unwrap();
    let mut meta: Vec<(String, MetaValue)> = src
        .metadata
        .iter()
        .filter(|(k, _)| k != "otter.import-rules" && k != "otter.image.digest")
        .cloned()
        .collect();
    meta.push((
        "otter.image.digest".into(),
        MetaValue::Str(format!("sha256:{hex}")),
    ));
    meta.push(("otter.import-rules".into(), MetaValue::U64(1)));
    let c = repo
        .transaction()
        .unwrap()
        .commit(
            "imported under rules v1",
            "",
            meta,
            None,
            1_700_000_000,
            &src.root_tree,
            &src.root_meta,
        )
        .unwrap();
    repo.set_ref(&format!("otter/image/{hex}"), Some(&c))
        .unwrap();
    c.to_hex()
}

/// An image imported under import rules v1 is never reused by an agent with newer rules: it is
/// imported again (the deployed commit records the current rules), and an image the current
/// rules refuse (a setuid file in /etc) fails with the policy error instead of deploying the
/// old commit.
#[test]
fn images_imported_under_older_import_rules_are_imported_again() {
    let t = Tmpfs::new();
    let layout = build_images(t.path());
    // v3: v2 plus a setuid file in /etc (accepted by rules v1, refused since v2).
    let v3 = format!("{}:v3", layout.display());
    let bundle = t.path().join("bundle-3");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:v2", layout.display()))
        .arg(&bundle));
    let evil = bundle.join("rootfs/etc/evil");
    fs::write(&evil, b"#!/bin/sh\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&evil, fs::Permissions::from_mode(0o4755)).unwrap();
    }
    run(Command::new("umoci")
        .args(["repack", "--image", &v3])
        .arg(&bundle));

    let sr = t.path().join("sysroot");
    let nosig = "--no-signature-verification";
    ok(&otter(
        &sr,
        &["install", nosig, &format!("oci:{}:v1", layout.display())],
    ));
    let v1_commit = admin_status_list(&sr)[0]
        .1
        .split('.')
        .next()
        .unwrap()
        .to_owned();
    let v1_list = admin_status_list(&sr);
    let repo_arg = format!("--repo={}", sr.join("ostree/repo").display());
    let rules_of = |c: &str| {
        ostree(&[
            &repo_arg,
            "show",
            "--print-metadata-key=otter.import-rules",
            c,
        ])
        .trim()
        .to_owned()
    };
    let rules_lib = |c: &str| {
        let repo = otter::ostree::Repo::open(&sr.join("ostree/repo")).unwrap();
        otter::update::import_rules_of(&repo, &c.parse().unwrap())
    };
    assert_eq!(rules_lib(&v1_commit), otter::import::IMPORT_RULES_VERSION);

    // v2 "imported" earlier under rules v1: switching to it imports it again.
    let stale = plant_v1_import(&sr, &manifest_hex(&layout, "v2"), &v1_commit);
    let stale_rules = rules_of(&stale);
    assert_ne!(stale_rules, rules_of(&v1_commit));
    let o = otter(
        &sr,
        &[
            "-v",
            "switch",
            nosig,
            &format!("oci:{}:v2", layout.display()),
        ],
    );
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("under import rules v1") && err.contains("importing it again"),
        "{err}"
    );
    let list = admin_status_list(&sr);
    let deployed = list[0].1.split('.').next().unwrap().to_owned();
    assert_ne!(deployed, stale, "the v1-rules commit was reused");
    // (`ostree show` prints metadata integers byte-swapped; compare as it prints them.)
    assert_eq!(rules_of(&deployed), rules_of(&v1_commit));
    assert_eq!(rules_lib(&deployed), otter::import::IMPORT_RULES_VERSION);
    // The planted commit holds v1's tree: reusing it would deploy TestOS 1.
    let os = fs::read_to_string(
        sr.join(format!("ostree/deploy/{}/deploy/{}", list[0].0, list[0].1))
            .join("usr/lib/os-release"),
    )
    .unwrap();
    assert!(os.contains("TestOS 2"), "not the v2 tree: {os}");
    let v2_list = admin_status_list(&sr);
    assert_ne!(v2_list, v1_list);

    // v3 "imported" under rules v1 (planted with v2's tree): the current rules refuse it.
    plant_v1_import(&sr, &manifest_hex(&layout, "v3"), &deployed);
    let o = otter(&sr, &["switch", nosig, &format!("oci:{v3}")]);
    assert!(!o.status.success(), "deployed an image the rules refuse");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("setuid") && err.contains("etc/evil"), "{err}");
    assert_eq!(admin_status_list(&sr), v2_list, "deployments changed");
}
