//! Signatures through the `otter` CLI end to end: images signed with `otter-publish`, sysroots
//! checked with the real `ostree` CLI. Unsigned, wrongly signed and older releases are refused
//! with exit code 3 and change nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod deploy_util;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use deploy_util::*;

const OTTER: &str = env!("CARGO_BIN_EXE_otter");
const PUBLISH: &str = env!("CARGO_BIN_EXE_otter-publish");

fn otter(sysroot: &Path, keys: &Path, args: &[&str]) -> Output {
    Command::new(OTTER)
        .arg(format!("--sysroot={}", sysroot.display()))
        .arg("--config=/dev/null")
        .arg(format!("--trusted-keys={}", keys.display()))
        .args(args)
        .env_remove("OTTER_BOOTED_DEPLOYMENT")
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Exit code 3 and stderr containing every one of `needles`.
fn refused(o: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "expected exit 3: {o:?}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
}

/// Tags v1 and v2 (versions "1" and "2") of a bootable test OS, built with umoci.
fn build_images(work: &Path) -> PathBuf {
    let layout = work.join("layout");
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    for tag in ["v1", "v2"] {
        let img = format!("{}:{tag}", layout.display());
        run(Command::new("umoci").args(["new", "--image", &img]));
        let bundle = work.join(format!("bundle-{tag}"));
        run(Command::new("umoci")
            .args(["unpack", "--image", &img])
            .arg(&bundle));
        let rootfs = bundle.join("rootfs");
        make_os_tree(&rootfs, &tag[1..], tag, &tag[1..]);
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

fn publish(args: &[&str]) -> String {
    ok(&Command::new(PUBLISH).args(args).output().unwrap())
}

fn deployments(sr: &Path) -> Vec<(String, String)> {
    if !sr.join("ostree/deploy").exists() {
        return Vec::new();
    }
    if admin_status(sr).contains("No deployments") {
        return Vec::new();
    }
    admin_status_list(sr)
}

#[test]
fn cli_install_and_switch_require_valid_signatures() {
    let t = Tmpfs::new();
    let layout = build_images(t.path());
    let sr = t.path().join("sysroot");
    let v1 = format!("oci:{}:v1", layout.display());
    let v2 = format!("oci:{}:v2", layout.display());
    let prefix = t.path().join("release");
    let sk = t.path().join("release.key");
    publish(&["keygen", "--out", prefix.to_str().unwrap()]);
    let keys = t.path().join("keys");
    fs::create_dir_all(&keys).unwrap();
    fs::copy(t.path().join("release.pub"), keys.join("release.pub")).unwrap();

    // unsigned: refused, nothing deployed
    let o = otter(&sr, &keys, &["install", &v1]);
    refused(&o, &["no signed release statement"]);
    assert!(deployments(&sr).is_empty());

    // signed by a key the device does not trust: refused
    let other = t.path().join("other");
    publish(&["keygen", "--out", other.to_str().unwrap()]);
    publish(&[
        "sign",
        "--key",
        t.path().join("other.key").to_str().unwrap(),
        &v1,
    ]);
    let o = otter(&sr, &keys, &["install", &v1]);
    refused(&o, &["untrusted key"]);
    assert!(deployments(&sr).is_empty());

    // signed: installed; the sysroot is valid for the real ostree CLI
    publish(&["sign", "--key", sk.to_str().unwrap(), &v1]);
    ok(&otter(&sr, &keys, &["install", &v1]));
    let after_v1 = deployments(&sr);
    assert_eq!(after_v1.len(), 1);
    let shown = ostree(&[
        &format!("--repo={}", sr.join("ostree/repo").display()),
        "show",
        "--print-metadata-key=otter.release.statement",
        after_v1[0].1.trim_end_matches(".0"),
    ]);
    assert!(shown.contains("\"version\":\"1\""), "{shown}");

    // v2 signed for the wrong tree (a stale signature from an older timestamp): refused
    // after the import, nothing deployed
    publish(&[
        "sign",
        "--key",
        sk.to_str().unwrap(),
        &v2,
        "--timestamp",
        "1000",
        "--content-checksum",
        &"0f".repeat(32),
    ]);
    let o = otter(&sr, &keys, &["switch", &v2]);
    refused(&o, &["imported tree does not match", &"0f".repeat(32)]);
    assert_eq!(deployments(&sr), after_v1);

    // re-signed correctly (newer statement wins): switched
    publish(&["sign", "--key", sk.to_str().unwrap(), &v2]);
    ok(&otter(&sr, &keys, &["switch", &v2]));
    let after_v2 = deployments(&sr);
    assert_eq!(after_v2.len(), 2);

    // back to v1: a downgrade, refused without the flag, allowed with it
    let o = otter(&sr, &keys, &["switch", &v1]);
    refused(&o, &["downgrade refused", "release 1 ", "release 2 "]);
    assert_eq!(deployments(&sr), after_v2);
    ok(&otter(&sr, &keys, &["switch", "--allow-downgrade", &v1]));
    // same commit as the first v1 deployment (a new serial of it)
    let csum = |d: &str| d.split('.').next().unwrap().to_owned();
    assert_eq!(csum(&deployments(&sr)[0].1), csum(&after_v1[0].1));
}

/// A newer release from removable media, then the tracked image (still the older release): the
/// timer's `upgrade` is "no update" (exit 0, `--check` 77), not a verification failure on every
/// round; `switch` to the older release is still refused.
#[test]
fn upgrade_after_a_newer_offline_import_is_no_update() {
    let t = Tmpfs::new();
    let layout = build_images(t.path());
    let sr = t.path().join("sysroot");
    let v1 = format!("oci:{}:v1", layout.display());
    let prefix = t.path().join("release");
    let sk = t.path().join("release.key");
    publish(&["keygen", "--out", prefix.to_str().unwrap()]);
    let keys = t.path().join("keys");
    fs::create_dir_all(&keys).unwrap();
    fs::copy(t.path().join("release.pub"), keys.join("release.pub")).unwrap();
    publish(&["sign", "--key", sk.to_str().unwrap(), &v1]);
    ok(&otter(&sr, &keys, &["install", &v1]));

    // the "USB stick": v2 alone in its own layout, signed there
    let stick = t.path().join("stick");
    run(Command::new("skopeo").args([
        "copy",
        &format!("oci:{}:v2", layout.display()),
        &format!("oci:{}:v2", stick.display()),
    ]));
    publish(&[
        "sign",
        "--key",
        sk.to_str().unwrap(),
        &format!("oci:{}:v2", stick.display()),
    ]);
    ok(&otter(&sr, &keys, &["import", stick.to_str().unwrap()]));
    let after_import = deployments(&sr);
    assert_eq!(after_import.len(), 2);

    let out = ok(&otter(&sr, &keys, &["upgrade"]));
    assert!(out.contains("No update"), "{out}");
    assert!(
        out.contains("release 1") && out.contains("release 2"),
        "{out}"
    );
    let o = otter(&sr, &keys, &["upgrade", "--check"]);
    assert_eq!(o.status.code(), Some(77), "{o:?}");
    assert_eq!(deployments(&sr), after_import);

    let o = otter(&sr, &keys, &["switch", &v1]);
    refused(&o, &["downgrade refused"]);
    assert_eq!(deployments(&sr), after_import);
}
