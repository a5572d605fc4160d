//! Interop with the real `fw_printenv`/`fw_setenv` (libubootenv-tool): single and redundant
//! environments, bad-CRC fallback, interrupted writes.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{fw_printenv, fw_setenv, otter_boot, run, run_ok};
use otter_boot::uboot::{crc32, UbootBackend};
use otter_boot::Backend;

const SIZE: usize = 0x4000;

fn single(dir: &Path) -> (PathBuf, PathBuf) {
    let env = dir.join("uboot.env");
    let cfg = dir.join("fw_env.config");
    std::fs::write(&cfg, format!("# single copy\n{} 0x0 4000\n", env.display())).unwrap();
    (cfg, env)
}

fn redundant(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (a, b) = (dir.join("env1"), dir.join("env2"));
    let cfg = dir.join("fw_env.config");
    std::fs::write(
        &cfg,
        format!("{} 0x0 0x4000\n{} 0x0 0x4000\n", a.display(), b.display()),
    )
    .unwrap();
    (cfg, a, b)
}

fn backend(cfg: &Path) -> UbootBackend {
    UbootBackend::open(cfg, Path::new("/")).unwrap()
}

fn flags(p: &Path) -> u8 {
    std::fs::read(p).unwrap()[4]
}

#[test]
fn single_copy_round_trip_with_fw_tools() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, env) = single(dir.path());
    run_ok(
        otter_boot()
            .arg("--backend")
            .arg(format!("uboot:{}", cfg.display()))
            .args(["arm", "--tries", "3"]),
    );
    assert_eq!(
        fw_printenv(&cfg),
        ["bootcount=0", "bootlimit=3", "upgrade_available=1"]
    );
    // Byte layout like U-Boot's saveenv: LE CRC over the whole data area, sorted, zero-filled.
    let data = std::fs::read(&env).unwrap();
    assert_eq!(data.len(), SIZE);
    assert_eq!(
        u32::from_le_bytes(data[..4].try_into().unwrap()),
        crc32(&data[4..])
    );
    let body = b"bootcount=0\0bootlimit=3\0upgrade_available=1\0\0";
    assert_eq!(&data[4..4 + body.len()], body);
    assert!(data[4 + body.len()..].iter().all(|&b| b == 0));

    // fw_setenv writes, we read (and keep variables we do not own).
    fw_setenv(&cfg, "bootcount", Some("2"));
    fw_setenv(&cfg, "other", Some("a b=c"));
    let mut b = backend(&cfg);
    let st = b.state().unwrap();
    assert!(st.armed && !st.fell_back);
    assert_eq!(st.tries_left, Some(1));
    fw_setenv(&cfg, "bootcount", Some("4"));
    assert!(b.state().unwrap().fell_back);
    b.mark_good().unwrap();
    assert_eq!(
        fw_printenv(&cfg),
        [
            "bootcount=0",
            "bootlimit=3",
            "other=a b=c",
            "upgrade_available=0"
        ]
    );
    b.mark_bad().unwrap();
    assert_eq!(
        fw_printenv(&cfg),
        [
            "bootcount=4",
            "bootlimit=3",
            "other=a b=c",
            "upgrade_available=1"
        ]
    );
}

#[test]
fn redundant_copies_alternate_with_incrementing_flags() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, e1, e2) = redundant(dir.path());
    let mut b = backend(&cfg);
    b.arm(2).unwrap();
    assert_eq!((flags(&e1), flags(&e2)), (1, 0));
    assert_eq!(
        fw_printenv(&cfg),
        ["bootcount=0", "bootlimit=2", "upgrade_available=1"]
    );
    // fw_setenv writes the other copy with flags+1; we read it.
    fw_setenv(&cfg, "bootcount", Some("1"));
    assert_eq!(flags(&e2), 2);
    assert_eq!(b.state().unwrap().tries_left, Some(1));
    // We write the copy that is not current, never touching the current one.
    let current = std::fs::read(&e2).unwrap();
    b.mark_good().unwrap();
    assert_eq!(
        std::fs::read(&e2).unwrap(),
        current,
        "the current copy is untouched"
    );
    assert_eq!(flags(&e1), 3);
    assert_eq!(
        fw_printenv(&cfg),
        ["bootcount=0", "bootlimit=2", "upgrade_available=0"]
    );
    fw_setenv(&cfg, "x", Some("y"));
    assert_eq!(flags(&e2), 4);
    b.arm(3).unwrap();
    assert_eq!(flags(&e1), 5);
    assert_eq!(
        fw_printenv(&cfg),
        ["bootcount=0", "bootlimit=3", "upgrade_available=1", "x=y"]
    );
}

#[test]
fn bad_crc_falls_back_to_the_other_copy() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, e1, _e2) = redundant(dir.path());
    let mut b = backend(&cfg);
    b.arm(3).unwrap(); // e1 flags 1, e2 flags 0: both bootlimit=3
    fw_setenv(&cfg, "bootlimit", Some("5")); // e2 flags 2 (newest)
    b.mark_good().unwrap(); // e1 flags 3 (newest): upgrade_available=0
                            // Corrupt the newest copy (e1): both readers fall back to e2 (bootlimit=5, armed).
    let mut d = std::fs::read(&e1).unwrap();
    d[100] ^= 0x55;
    std::fs::write(&e1, &d).unwrap();
    assert_eq!(
        fw_printenv(&cfg),
        ["bootcount=0", "bootlimit=5", "upgrade_available=1"]
    );
    let st = b.state().unwrap();
    assert!(st.armed);
    assert_eq!(st.tries, Some(5));
    // The next write repairs the damaged copy (it is the non-current one).
    b.mark_good().unwrap();
    assert_eq!(
        fw_printenv(&cfg),
        ["bootcount=0", "bootlimit=5", "upgrade_available=0"]
    );
}

#[test]
fn interrupted_write_leaves_a_valid_environment() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, e1, e2) = redundant(dir.path());
    let mut b = backend(&cfg);
    b.arm(3).unwrap();
    fw_setenv(&cfg, "bootcount", Some("1")); // current = e2
                                             // Simulate power loss while writing the next copy (e1): half of it written, rest garbage.
    let good = std::fs::read(&e1).unwrap();
    let mut half = vec![0xA5u8; SIZE];
    half[..SIZE / 2].copy_from_slice(&good[..SIZE / 2]);
    std::fs::write(&e1, &half).unwrap();
    assert_eq!(
        fw_printenv(&cfg),
        ["bootcount=1", "bootlimit=3", "upgrade_available=1"]
    );
    assert_eq!(b.state().unwrap().tries_left, Some(2));
    // Truncated copy too.
    std::fs::write(&e1, &good[..100]).unwrap();
    assert_eq!(b.state().unwrap().tries_left, Some(2));
    b.mark_good().unwrap();
    assert_eq!(std::fs::metadata(&e1).unwrap().len() as usize, SIZE);
    assert_eq!(
        fw_printenv(&cfg),
        ["bootcount=0", "bootlimit=3", "upgrade_available=0"]
    );
    let _ = e2;

    // Single copy: the write goes to a temp file that is renamed; an interrupted write leaves a
    // stray temp file and the old environment intact.
    let dir = tempfile::tempdir().unwrap();
    let (cfg, env) = single(dir.path());
    let mut b = backend(&cfg);
    b.arm(2).unwrap();
    let before = std::fs::read(&env).unwrap();
    std::fs::write(dir.path().join(".uboot.env.tmp.99999"), &before[..SIZE / 3]).unwrap();
    assert_eq!(
        fw_printenv(&cfg),
        ["bootcount=0", "bootlimit=2", "upgrade_available=1"]
    );
    b.mark_good().unwrap();
    assert_eq!(
        fw_printenv(&cfg),
        ["bootcount=0", "bootlimit=2", "upgrade_available=0"]
    );
}

#[test]
fn no_valid_copy_is_an_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, env) = single(dir.path());
    std::fs::write(&env, vec![0x42u8; SIZE]).unwrap();
    let out = run(otter_boot()
        .arg("--backend")
        .arg(format!("uboot:{}", cfg.display()))
        .args(["arm"]));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no valid U-Boot environment") && err.contains("bad CRC"),
        "{err}"
    );
    assert_eq!(std::fs::read(&env).unwrap(), vec![0x42u8; SIZE]);
    // A bad fw_env.config names the line.
    std::fs::write(&cfg, "/x 0 16384zz\n").unwrap();
    let out = run(otter_boot()
        .arg("--backend")
        .arg(format!("uboot:{}", cfg.display()))
        .arg("status"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1"));
}
