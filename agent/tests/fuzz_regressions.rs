//! Every fuzz seed (`fuzz/corpus/<target>/`) and every input that once crashed a fuzz target
//! (`fuzz/regressions/<target>/`, named after the bug) run through the same entry points as the
//! fuzzers, in the normal test suite: a fixed bug stays fixed even when nobody runs the fuzzers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};

use otter::ostree::{Repo, RepoMode};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut out = Vec::new();
    for kind in ["corpus", "regressions"] {
        let dir = root.join(kind).join(target);
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd {
            out.push(e.unwrap().path());
        }
    }
    out.sort();
    out
}

fn run(target: &str, f: impl Fn(&[u8])) {
    let files = inputs(target);
    assert!(
        !files.is_empty(),
        "no seeds for fuzz target {target} in fuzz/corpus/{target}/"
    );
    for p in files {
        eprintln!("{target}: {}", p.display());
        f(&fs::read(&p).unwrap());
    }
}

#[test]
fn gvariant() {
    run("gvariant", otter::fuzzing::gvariant);
}

#[test]
fn ostree_object() {
    run("ostree_object", otter::fuzzing::ostree_object);
}

#[test]
fn mqtt() {
    run("mqtt", otter::fuzzing::mqtt);
}

#[test]
fn import_tar() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(&tmp.path().join("repo"), RepoMode::BareUser).unwrap();
    run("import_tar", |d| otter::fuzzing::import_tar(&repo, d));
}

#[test]
fn oci() {
    run("oci", otter::fuzzing::oci);
}

#[test]
fn boot_env() {
    run("boot_env", otter::fuzzing::boot_env);
}

#[test]
fn verify() {
    run("verify", otter::fuzzing::verify);
}
