//! `otter install --board NAME`: the board profile applied to the fresh sysroot, checked with
//! the real tools (`fw_printenv`/`fw_setenv` from libubootenv-tool, `mkenvimage` from
//! u-boot-tools, `ostree admin status`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod deploy_util;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use deploy_util::*;

const OTTER: &str = env!("CARGO_BIN_EXE_otter");
const BOARD: &str = "qemu-aarch64-virt";

/// An OCI layout with tag v1 whose /etc/otter/otter.conf has a `[trust]` section without `board`.
fn build_image(work: &Path) -> PathBuf {
    let layout = work.join("layout");
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    let img = format!("{}:v1", layout.display());
    run(Command::new("umoci").args(["new", "--image", &img]));
    let bundle = work.join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image", &img])
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    make_os_tree(&rootfs, "1", "v1", "1");
    fs::rename(rootfs.join("usr/etc"), rootfs.join("etc")).unwrap();
    fs::create_dir_all(rootfs.join("etc/otter")).unwrap();
    fs::write(
        rootfs.join("etc/otter/otter.conf"),
        "[update]\nstateroot = testos\n\n[trust]\nrequire-signature = false\n",
    )
    .unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image", &img])
        .arg(&bundle));
    layout
}

#[test]
fn install_with_board_profile() {
    let t = Tmpfs::new();
    let layout = build_image(t.path());
    let sr = t.path().join("sysroot");
    let v1 = format!("oci:{}:v1", layout.display());
    ok(&otter(
        &sr,
        &[
            "install",
            "--no-signature-verification",
            "--stateroot=testos",
            &format!("--board={BOARD}"),
            "--karg=extra=1",
            &v1,
        ],
    ));
    // ostree accepts the sysroot
    let l = admin_status_list(&sr);
    assert_eq!(l.len(), 1, "{l:?}");
    let dep = sr.join("ostree/deploy/testos/deploy").join(&l[0].1);
    let profile = otter_board::Profile::builtin(BOARD).unwrap();

    // BLS entry: every kernel argument of the profile, plus --karg and ostree=
    let entries: Vec<_> = fs::read_dir(sr.join("boot/loader/entries"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = fs::read_to_string(&entries[0]).unwrap();
    let options: Vec<&str> = entry
        .lines()
        .find_map(|l| l.strip_prefix("options "))
        .expect("options line")
        .split_whitespace()
        .collect();
    assert!(!profile.kernel_args.is_empty());
    for k in &profile.kernel_args {
        assert_eq!(
            options.iter().filter(|o| *o == k).count(),
            1,
            "{k} once in {options:?}"
        );
    }
    assert!(options.contains(&"extra=1"), "{options:?}");
    assert!(
        options.iter().any(|o| o.starts_with("ostree=")),
        "{options:?}"
    );

    // uEnv.txt for U-Boot, carrying the same arguments
    let uenv = fs::read_to_string(sr.join("boot/loader/uEnv.txt")).unwrap();
    let bootargs = uenv
        .lines()
        .find_map(|l| l.strip_prefix("bootargs="))
        .expect("bootargs in uEnv.txt");
    assert!(bootargs.contains("console=ttyAMA0"), "{uenv}");
    assert!(uenv.contains("kernel_image=/"), "{uenv}");

    // fw_env.config in the deployment's /etc (not usr/etc); fw_printenv/fw_setenv work with it
    // against an env file made by mkenvimage (the config's device path redirected to that file)
    let cfg = fs::read_to_string(dep.join("etc/fw_env.config")).unwrap();
    assert!(!dep.join("usr/etc/fw_env.config").exists());
    let line = cfg
        .lines()
        .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f, ["/boot/firmware/uboot.env", "0x0", "0x4000"], "{cfg}");
    let envfile = t.path().join("uboot.env");
    let src = t.path().join("env.txt");
    fs::write(&src, "bootcount=0\nupgrade_available=0\n").unwrap();
    run(Command::new("mkenvimage")
        .args(["-s", "0x4000", "-o"])
        .arg(&envfile)
        .arg(&src));
    let test_cfg = t.path().join("fw_env.config");
    fs::write(
        &test_cfg,
        cfg.replace("/boot/firmware/uboot.env", envfile.to_str().unwrap()),
    )
    .unwrap();
    let fw =
        |tool: &str, args: &[&str]| run(Command::new(tool).arg("-c").arg(&test_cfg).args(args));
    assert_eq!(fw("fw_printenv", &["-n", "upgrade_available"]).trim(), "0");
    fw("fw_setenv", &["upgrade_available", "1"]);
    assert_eq!(fw("fw_printenv", &["-n", "upgrade_available"]).trim(), "1");

    // the board name lands in [trust] of the deployment's otter.conf, nothing else changes
    let conf = fs::read_to_string(dep.join("etc/otter/otter.conf")).unwrap();
    assert_eq!(
        conf,
        format!(
            "[update]\nstateroot = testos\n\n[trust]\nboard = {BOARD}\nrequire-signature = false\n"
        )
    );
    // and otter's own parser accepts the result
    ok(&Command::new(OTTER)
        .arg(format!("--sysroot={}", sr.display()))
        .arg(format!(
            "--config={}",
            dep.join("etc/otter/otter.conf").display()
        ))
        .args(["status", "--json"])
        .env_remove("OTTER_BOOTED_DEPLOYMENT")
        .output()
        .unwrap());
}

#[test]
fn unknown_board_is_a_usage_error_and_changes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let sr = t.path().join("sysroot");
    let o = otter(
        &sr,
        &["install", "--board=no-such-board", "oci:/nonexistent:v1"],
    );
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no-such-board"), "{err}");
    assert!(err.contains(BOARD), "known boards listed: {err}");
    assert!(!sr.exists());
}
