#![no_main]
use std::sync::OnceLock;

use otter::ostree::{Repo, RepoMode};

/// One scratch bare-user repo per fuzzing process (under $TMPDIR, which fuzz/run.sh points at a
/// directory it removes afterwards).
fn repo() -> &'static Repo {
    static REPO: OnceLock<Repo> = OnceLock::new();
    REPO.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("otter-fuzz-repo")
            .tempdir()
            .expect("temp dir")
            .keep();
        Repo::init(&dir.join("repo"), RepoMode::BareUser).expect("init repo")
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| otter::fuzzing::import_tar(repo(), data));
