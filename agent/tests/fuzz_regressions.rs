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

#[test]
fn delta() {
    run("delta", otter::fuzzing::delta);
    // The seeds follow the current format (a stale one never reaches the parsers behind the
    // magic): both superblock seeds decode.
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/delta");
    let stored = fs::read(corpus.join("superblock")).unwrap();
    let sb = otter::delta::Superblock::decode(&mut &stored[1..], &mut |_, k| {
        otter::fuzzing::delta_base_dirtree(k)
    })
    .unwrap();
    assert!(sb.dirtree_bases.iter().any(|b| b.is_some()), "{sb:?}");
    let body = fs::read(corpus.join("superblock-body")).unwrap();
    let frame = zstd::encode_all(&body[1..], 1).unwrap();
    let plain = [&otter::delta::SUPERBLOCK_MAGIC[..], &[0; 36], &frame].concat();
    otter::delta::Superblock::decode(&mut &plain[..], &mut |_, _| unreachable!()).unwrap();
}

/// Writes the `delta` seeds: the superblock of a real delta between two commits of the ostree
/// CLI, made by `otter::delta::generate`, re-encoded against the fuzz target's base dirtrees
/// (stored), and its body without bases (plain). Run by hand (`--ignored make_delta_seed`) to
/// refresh them.
#[cfg(feature = "publish")]
#[test]
#[ignore = "seed generator, run by hand"]
fn make_delta_seed() {
    use std::process::Command;
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let repo_path = t.join("repo");
    let repo = Repo::init(&repo_path, RepoMode::BareUser).unwrap();
    let mut commits = Vec::new();
    for v in ["1", "2"] {
        let tree = t.join(format!("tree{v}"));
        fs::create_dir_all(tree.join("usr/bin")).unwrap();
        fs::write(
            tree.join("usr/bin/app"),
            format!("app version {v}\n").repeat(50),
        )
        .unwrap();
        fs::write(tree.join(format!("usr/bin/new{v}")), v).unwrap();
        let out = Command::new("ostree")
            .arg(format!("--repo={}", repo_path.display()))
            .args(["commit", "--branch=b", "--no-bindings"])
            .arg(format!("--tree=dir={}", tree.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        commits.push(
            String::from_utf8(out.stdout)
                .unwrap()
                .trim()
                .parse()
                .unwrap(),
        );
    }
    let out = t.join("delta");
    otter::delta::generate(&repo, &commits[0], &commits[1], &out).unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/delta");
    fs::create_dir_all(&dir).unwrap();
    let sb =
        otter::delta::read_superblock(&repo, &mut otter::delta::DirStore::new(&out), &commits[0])
            .unwrap();
    assert!(sb.dirtree_bases.iter().any(|b| b.is_some()), "{sb:?}");
    let stored = sb
        .encode(19, &mut otter::fuzzing::delta_base_dirtree)
        .unwrap();
    fs::write(dir.join("superblock"), [&[0u8][..], &stored].concat()).unwrap();
    let plain = otter::delta::Superblock {
        dirtree_bases: Vec::new(),
        ..sb
    }
    .encode(19, &mut otter::fuzzing::delta_base_dirtree)
    .unwrap();
    // Magic, `from`, zero bases, then the frame.
    let body = zstd::decode_all(&plain[44..]).unwrap();
    fs::write(dir.join("superblock-body"), [&[1u8][..], &body].concat()).unwrap();
}

#[test]
fn zstd_chunked_toc() {
    run("zstd_chunked_toc", otter::fuzzing::zstd_chunked_toc);
}
