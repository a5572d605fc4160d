//! The shipped systemd units pass `systemd-analyze verify`, and the shipped GRUB files are the
//! generated snippet.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{require, run, run_ok};

#[test]
fn systemd_units_verify_cleanly() {
    let analyze = require("systemd-analyze", "systemd");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let tmp = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for name in [
        "otter-boot-check.service",
        "otter-boot-detect-fallback.service",
    ] {
        let text = std::fs::read_to_string(src.join(name)).unwrap();
        assert!(text.contains("ExecStart=/usr/bin/otter-boot "));
        // verify checks that ExecStart exists: point it at the built binary.
        let text = text.replace("/usr/bin/otter-boot", env!("CARGO_BIN_EXE_otter-boot"));
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        units.push(p);
    }
    let out = run(Command::new(analyze)
        .args(["verify", "--man=no"])
        .args(&units));
    let err = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = err.lines().filter(|l| l.contains("otter-boot")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {}\n{err}",
        out.status
    );
    let check = std::fs::read_to_string(src.join("otter-boot-check.service")).unwrap();
    assert!(
        check.contains("Before=boot-complete.target")
            && check.contains("RequiredBy=boot-complete.target")
    );
}

#[test]
fn grub_files_are_the_generated_snippet() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("grub");
    let generated = run_ok(Command::new(env!("CARGO_BIN_EXE_otter-boot")).arg("grub-snippet"));
    let from_script = run_ok(Command::new("/bin/sh").arg(dir.join("08_otter_counting")));
    assert_eq!(from_script, generated);
    assert_eq!(
        std::fs::read_to_string(dir.join("otter-counting.cfg")).unwrap(),
        generated
    );
}
