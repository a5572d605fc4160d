//! Shared helpers for the boot-counter integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Fail (never skip) when a tool is missing, naming the apt package.
pub fn require(tool: &str, package: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(tool);
        if p.exists() {
            return p;
        }
    }
    panic!("{tool} not found: install the apt package `{package}` (scripts/setup.sh)");
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    out
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn otter_boot() -> Command {
    Command::new(env!("CARGO_BIN_EXE_otter-boot"))
}

/// `fw_printenv -c CFG` as sorted `name=value` lines.
pub fn fw_printenv(cfg: &Path) -> Vec<String> {
    let tool = require("fw_printenv", "libubootenv-tool");
    let out = run_ok(Command::new(tool).arg("-c").arg(cfg));
    let mut v: Vec<String> = out.lines().map(str::to_string).collect();
    v.sort();
    v
}

pub fn fw_setenv(cfg: &Path, name: &str, value: Option<&str>) {
    let tool = require("fw_setenv", "libubootenv-tool");
    let mut c = Command::new(tool);
    c.arg("-c").arg(cfg).arg(name);
    if let Some(v) = value {
        c.arg(v);
    }
    run_ok(&mut c);
}

pub fn write_file(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

pub fn write_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    write_file(path, &format!("#!/bin/sh\n{body}\n"));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}
