//! Sysroot deployments checked against the real `ostree` CLI (admin status/deploy, fsck).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod deploy_util;

use std::fs;
use std::path::Path;

use deploy_util::*;
use otter::deploy::{DeployOptions, Origin, Sysroot};
use otter::ostree::Checksum;

const OS: &str = "testos";

fn deploy(sysroot: &Path, commit: &str, kargs: Option<Vec<String>>) -> otter::deploy::Deployment {
    let mut s = Sysroot::load_locked(sysroot).unwrap();
    let mut hook_saw = None;
    let d = s
        .deploy(
            &DeployOptions {
                stateroot: OS.into(),
                commit: Checksum::from_hex(commit).unwrap(),
                origin: Origin::for_image("oci:/images/test:1"),
                kargs,
            },
            &mut |d| {
                hook_saw = Some(d.checksum.to_hex());
                Ok(())
            },
        )
        .unwrap();
    assert_eq!(
        hook_saw.as_deref(),
        Some(commit),
        "before_switch hook got the new default"
    );
    d
}

/// A fresh sysroot on tmpfs with commits v1 and v2 (different kernels) in its repo.
fn setup() -> (Tmpfs, String, String) {
    let t = Tmpfs::new();
    let sr = t.path().join("sysroot");
    Sysroot::create(&sr).unwrap();
    Sysroot::init_stateroot(&sr, OS).unwrap();
    let repo = sr.join("ostree/repo");
    let (d1, d2) = (t.path().join("os1"), t.path().join("os2"));
    make_os_tree(&d1, "1", "v1", "1");
    make_os_tree(&d2, "2", "v2", "2");
    let c1 = commit_tree(&repo, "testos/v1", &d1, "1");
    let c2 = commit_tree(&repo, "testos/v2", &d2, "2");
    (t, c1, c2)
}

#[test]
fn install_upgrade_rollback_seen_by_ostree_admin_status() {
    let (t, c1, c2) = setup();
    let sr = t.path().join("sysroot");
    deploy(&sr, &c1, Some(vec!["console=ttyS0".into(), "quiet".into()]));
    assert_eq!(admin_status_list(&sr), vec![(OS.into(), format!("{c1}.0"))]);
    let st = admin_status(&sr);
    assert!(st.contains("Version: 1"), "{st}");
    // BLS entry, kernel and bootlink like ostree's
    assert_eq!(
        fs::read_link(sr.join("boot/loader")).unwrap().to_str(),
        Some("loader.1")
    );
    assert_eq!(
        fs::read_link(sr.join("ostree/boot.1")).unwrap().to_str(),
        Some("boot.1.1")
    );
    let entry = fs::read_to_string(sr.join("boot/loader/entries/ostree-1-testos.conf")).unwrap();
    assert!(entry.starts_with("title TestOS 1 (ostree:0)\nversion 1\noptions console=ttyS0 quiet ostree=/ostree/boot.1/testos/"), "{entry}");
    let bootdir = fs::read_dir(sr.join("boot/ostree"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(
        fs::read_to_string(bootdir.join("vmlinuz-6.1.0-test")).unwrap(),
        "kernel-1\n"
    );
    assert_eq!(
        fs::read_to_string(bootdir.join("initramfs-6.1.0-test.img")).unwrap(),
        "initramfs-1\n"
    );
    // /var seeded from the image on the first deployment
    assert_eq!(
        fs::read_to_string(sr.join("ostree/deploy/testos/var/lib/seeded")).unwrap(),
        "seeded-1\n"
    );
    // deploy ref
    let refs = ostree(&[
        "refs",
        &format!("--repo={}", sr.join("ostree/repo").display()),
    ]);
    assert!(refs.lines().any(|l| l == "ostree/1/1/0"), "{refs}");

    // local /etc edits on the running deployment
    let d1 = sr.join(format!("ostree/deploy/testos/deploy/{c1}.0"));
    fs::write(d1.join("etc/myconf"), "locally-modified\n").unwrap();
    fs::remove_file(d1.join("etc/todelete")).unwrap();
    fs::write(d1.join("etc/sub/added"), "mine\n").unwrap();

    let new = deploy(&sr, &c2, None);
    assert_eq!(
        new.kargs,
        vec!["console=ttyS0", "quiet"],
        "kargs kept from the merge deployment"
    );
    assert_eq!(
        admin_status_list(&sr),
        vec![
            (OS.into(), format!("{c2}.0")),
            (OS.into(), format!("{c1}.0"))
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
    assert!(!d2.join("etc/todelete").exists(), "deleted stays deleted");
    assert_eq!(
        fs::read_to_string(d2.join("etc/sub/added")).unwrap(),
        "mine\n"
    );
    // /var is shared, not re-seeded
    assert_eq!(
        fs::read_to_string(sr.join("ostree/deploy/testos/var/lib/seeded")).unwrap(),
        "seeded-1\n"
    );
    // origin
    let origin =
        fs::read_to_string(sr.join(format!("ostree/deploy/testos/deploy/{c2}.0.origin"))).unwrap();
    assert!(
        origin.contains("[otter]\nimage=oci:/images/test:1\n"),
        "{origin}"
    );

    // rollback
    let mut s = Sysroot::load_locked(&sr).unwrap();
    let back = s.rollback().unwrap();
    drop(s);
    assert_eq!(back.checksum.to_hex(), c1);
    assert_eq!(
        admin_status_list(&sr),
        vec![
            (OS.into(), format!("{c1}.0")),
            (OS.into(), format!("{c2}.0"))
        ]
    );
    // a third deploy drops the oldest (keeps new default + one rollback)
    deploy(&sr, &c2, None);
    let l = admin_status_list(&sr);
    assert_eq!(
        l,
        vec![
            (OS.into(), format!("{c2}.1")),
            (OS.into(), format!("{c1}.0"))
        ]
    );
    assert!(
        !sr.join(format!("ostree/deploy/testos/deploy/{c2}.0"))
            .exists(),
        "cleaned up"
    );
    assert_eq!(fs::read_dir(sr.join("boot/ostree")).unwrap().count(), 2);
    let fsck = ostree(&[
        "fsck",
        &format!("--repo={}", sr.join("ostree/repo").display()),
    ]);
    assert!(fsck.contains("no errors found"), "{fsck}");
}

#[test]
fn ostree_admin_deploy_on_top_of_ours() {
    let (t, c1, c2) = setup();
    let sr = t.path().join("sysroot");
    deploy(&sr, &c1, None);
    let d1 = sr.join(format!("ostree/deploy/testos/deploy/{c1}.0"));
    fs::write(d1.join("etc/myconf"), "locally-modified\n").unwrap();
    ostree(&[
        "admin",
        "deploy",
        &format!("--sysroot={}", sr.display()),
        "--os=testos",
        "testos/v2",
    ]);
    assert_eq!(
        admin_status_list(&sr),
        vec![
            (OS.into(), format!("{c2}.0")),
            (OS.into(), format!("{c1}.0"))
        ]
    );
    let d2 = sr.join(format!("ostree/deploy/testos/deploy/{c2}.0"));
    assert_eq!(
        fs::read_to_string(d2.join("etc/myconf")).unwrap(),
        "locally-modified\n"
    );
    // we read ostree's result
    let s = Sysroot::load(&sr).unwrap();
    let l: Vec<String> = s.deployments().iter().map(|d| d.name()).collect();
    assert_eq!(l, vec![format!("{c2}.0"), format!("{c1}.0")]);
    assert_eq!(
        s.deployments()[0].origin.as_ref().unwrap().refspec(),
        Some("testos/v2")
    );
    drop(s);
    // and keep going on top of it
    deploy(&sr, &c1, None);
    assert_eq!(
        admin_status_list(&sr),
        vec![
            (OS.into(), format!("{c1}.1")),
            (OS.into(), format!("{c2}.0"))
        ]
    );
    ostree(&["admin", "cleanup", &format!("--sysroot={}", sr.display())]);
    assert_eq!(admin_status_list(&sr).len(), 2);
    let fsck = ostree(&[
        "fsck",
        &format!("--repo={}", sr.join("ostree/repo").display()),
    ]);
    assert!(fsck.contains("no errors found"), "{fsck}");
}

#[test]
fn ours_on_top_of_ostree_admin_sysroot() {
    let t = Tmpfs::new();
    let sr = t.path().join("sysroot");
    fs::create_dir(&sr).unwrap();
    let sra = format!("--sysroot={}", sr.display());
    ostree(&["admin", "init-fs", &sr.to_string_lossy()]);
    ostree(&["admin", "os-init", OS, &sra]);
    let repo = sr.join("ostree/repo");
    let (d1, d2) = (t.path().join("os1"), t.path().join("os2"));
    make_os_tree(&d1, "1", "v1", "1");
    make_os_tree(&d2, "2", "v2", "1");
    let c1 = commit_tree(&repo, "testos/v1", &d1, "1");
    let c2 = commit_tree(&repo, "testos/v2", &d2, "2");
    ostree(&[
        "admin",
        "deploy",
        &sra,
        "--os=testos",
        "--karg=root=LABEL=x",
        "testos/v1",
    ]);
    let d1 = sr.join(format!("ostree/deploy/testos/deploy/{c1}.0"));
    fs::write(d1.join("etc/myconf"), "locally-modified\n").unwrap();
    let new = deploy(&sr, &c2, None);
    assert_eq!(new.kargs, vec!["root=LABEL=x"]);
    assert_eq!(
        admin_status_list(&sr),
        vec![
            (OS.into(), format!("{c2}.0")),
            (OS.into(), format!("{c1}.0"))
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
    // same kernel: shared /boot/ostree dir, bootserials 0 and 1
    let s = Sysroot::load(&sr).unwrap();
    assert_eq!(s.deployments()[0].bootcsum, s.deployments()[1].bootcsum);
    assert_eq!(
        (s.deployments()[0].bootserial, s.deployments()[1].bootserial),
        (0, 1)
    );
    let fsck = ostree(&["fsck", &format!("--repo={}", repo.display())]);
    assert!(fsck.contains("no errors found"), "{fsck}");
}

#[test]
fn failing_hook_changes_nothing() {
    let (t, c1, c2) = setup();
    let sr = t.path().join("sysroot");
    deploy(&sr, &c1, None);
    let before = snapshot(&sr);
    let mut s = Sysroot::load_locked(&sr).unwrap();
    let err = s
        .deploy(
            &DeployOptions {
                stateroot: OS.into(),
                commit: Checksum::from_hex(&c2).unwrap(),
                origin: Origin::for_image("oci:/x:2"),
                kargs: None,
            },
            &mut |_| anyhow::bail!("boot counter unavailable"),
        )
        .unwrap_err();
    drop(s);
    assert!(
        format!("{err:#}").contains("boot counter unavailable"),
        "{err:#}"
    );
    assert_eq!(admin_status_list(&sr), vec![(OS.into(), format!("{c1}.0"))]);
    // The failed deploy removed its half-written boot version: the same tree as before.
    let after = snapshot(&sr);
    let diff: Vec<_> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .chain(before.keys().filter(|k| !after.contains_key(*k)).cloned())
        .filter(|k| !k.starts_with("ostree/repo/objects") && !k.starts_with("ostree/repo/tmp"))
        .collect();
    assert!(diff.is_empty(), "changed: {diff:?}");
}
