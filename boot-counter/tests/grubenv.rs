//! Interop with the real `grub-editenv` (grub-common): it reads what we write and we read what
//! it writes, byte for byte.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{otter_boot, require, run, run_ok};
use otter_boot::grubenv::{self, GrubEnv};
use otter_boot::Backend;

fn editenv() -> Command {
    Command::new(require("grub-editenv", "grub-common"))
}

fn list(path: &std::path::Path) -> String {
    run_ok(editenv().arg(path).arg("list"))
}

#[test]
fn missing_file_is_created_like_grub_editenv_create() {
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("grubenv");
    let theirs = dir.path().join("grubenv.ref");
    run_ok(
        otter_boot()
            .arg("--backend")
            .arg(format!("grubenv:{}", ours.display()))
            .args(["arm", "--tries", "3"]),
    );
    run_ok(editenv().arg(&theirs).arg("create"));
    run_ok(
        editenv()
            .arg(&theirs)
            .args(["set", "boot_counter=3", "boot_success=0"]),
    );
    assert_eq!(
        std::fs::read(&ours).unwrap(),
        std::fs::read(&theirs).unwrap(),
        "byte-identical to grub-editenv's block"
    );
    assert_eq!(std::fs::metadata(&ours).unwrap().len(), 1024);
    assert_eq!(list(&ours), "boot_counter=3\nboot_success=0\n");
}

#[test]
fn escaping_round_trips_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let theirs = dir.path().join("theirs");
    run_ok(editenv().arg(&theirs).arg("create"));
    // grub-editenv writes, we read.
    run_ok(
        editenv()
            .arg(&theirs)
            .args(["set", "a=x\\y\nz", "eq=k=v", "boot_counter=2"]),
    );
    let env = grubenv::read_file(&theirs).unwrap().unwrap();
    assert_eq!(env.get("a").unwrap(), "x\\y\nz");
    assert_eq!(env.get("eq").unwrap(), "k=v");
    // We edit, grub-editenv reads; our bytes equal grub-editenv doing the same edits.
    let ours = dir.path().join("ours");
    std::fs::copy(&theirs, &ours).unwrap();
    let mut e = grubenv::read_file(&ours).unwrap().unwrap();
    e.set("b", "1\\\n2").unwrap();
    e.unset("eq");
    e.set("a", "short").unwrap();
    grubenv::write_file(&ours, &e).unwrap();
    run_ok(editenv().arg(&theirs).args(["set", "b=1\\\n2"]));
    run_ok(editenv().arg(&theirs).args(["unset", "eq"]));
    run_ok(editenv().arg(&theirs).args(["set", "a=short"]));
    assert_eq!(
        std::fs::read(&ours).unwrap(),
        std::fs::read(&theirs).unwrap()
    );
    assert_eq!(list(&ours), "a=short\nboot_counter=2\nb=1\\\n2\n");
}

#[test]
fn full_block_is_refused_and_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("grubenv");
    run_ok(editenv().arg(&p).arg("create"));
    let filler = "v".repeat(900);
    run_ok(editenv().arg(&p).arg("set").arg(format!("fill={filler}")));
    let before = std::fs::read(&p).unwrap();
    let mut b = grubenv::GrubBackend::new(p.clone());
    let err = b.arm(3).unwrap_err().to_string();
    assert!(err.contains("too small"), "{err}");
    assert_eq!(
        std::fs::read(&p).unwrap(),
        before,
        "a failed set changes nothing"
    );
    // grub-editenv agrees that it does not fit.
    let out = run(editenv()
        .arg(&p)
        .args(["set", "boot_counter=3", "boot_success=0"]));
    assert!(!out.status.success());
}

#[test]
fn broken_block_gives_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("grubenv");
    run_ok(editenv().arg(&p).arg("create"));
    let mut data = std::fs::read(&p).unwrap();
    let last = data.len() - 1;
    data[last] = b'x';
    std::fs::write(&p, &data).unwrap();
    let out = run(otter_boot()
        .arg("--backend")
        .arg(format!("grubenv:{}", p.display()))
        .arg("status"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken environment block") && err.contains("grub-editenv"),
        "{err}"
    );
    // grub-editenv refuses to set in it as well.
    assert!(!run(editenv().arg(&p).args(["set", "x=1"])).status.success());
    // Wrong signature.
    std::fs::write(&p, b"not a grub env").unwrap();
    let err = GrubEnv::parse(&std::fs::read(&p).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid environment block"), "{err}");
}

#[test]
fn greenboot_counter_sequence_matches_grub_editenv() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("grubenv");
    let spec = format!("grubenv:{}", p.display());
    let mut b = otter_boot::backend_from_spec(&spec).unwrap();
    b.arm(2).unwrap();
    assert!(b.state().unwrap().armed);
    assert_eq!(b.state().unwrap().tries_left, Some(2));
    // What GRUB's snippet does at boot, done with grub-editenv: 2 -> 1 -> 0 -> -1 (fallback).
    for v in ["1", "0"] {
        run_ok(
            editenv()
                .arg(&p)
                .arg("set")
                .arg(format!("boot_counter={v}")),
        );
        assert_eq!(b.state().unwrap().tries_left, Some(v.parse().unwrap()));
    }
    run_ok(editenv().arg(&p).args(["set", "boot_counter=-1"]));
    let st = b.state().unwrap();
    assert!(st.fell_back && !st.armed);
    b.clear_fallback().unwrap();
    assert_eq!(list(&p), "boot_success=1\n");
    b.mark_bad().unwrap();
    assert_eq!(list(&p), "boot_success=0\nboot_counter=0\n");
}
