//! The native ostree store against the real `ostree` CLI (apt package `ostree`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ostree_util;

use std::path::Path;

use ostree_util::*;
use otter::ostree::{content_checksum, Checksum, MetaValue, ObjectKind, Repo, RepoMode};

const TS: u64 = 1_577_836_800; // 2020-01-01 00:00:00 UTC

fn modes() -> [(RepoMode, &'static str); 2] {
    [(RepoMode::Bare, "bare"), (RepoMode::BareUser, "bare-user")]
}

#[test]
fn reads_and_checks_out_commits_written_by_ostree_cli() {
    for (mode, name) in modes() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in");
        make_tree(&input);
        let repo_path = tmp.path().join("repo");
        ostree(&repo_path, &["init", &format!("--mode={name}")]);
        let csum = ostree(
            &repo_path,
            &[
                "commit",
                "-b",
                "os/stable",
                &format!("--tree=dir={}", input.display()),
                "-s",
                "Subject line",
                "-m",
                "Body text",
                "--timestamp=2020-01-01 00:00:00 +0000",
                "--add-metadata-string=version=1.0",
            ],
        );
        let csum: Checksum = csum.trim().parse().unwrap();

        let repo = Repo::open(&repo_path).unwrap();
        assert_eq!(repo.mode(), mode);
        assert_eq!(repo.resolve_ref("os/stable").unwrap(), Some(csum));
        assert_eq!(repo.resolve_ref("os/missing").unwrap(), None);
        assert_eq!(
            repo.list_refs("os/").unwrap(),
            vec![("os/stable".to_string(), csum)]
        );
        assert!(repo.has_object(ObjectKind::Commit, &csum));

        let c = repo.read_commit(&csum).unwrap();
        assert_eq!(c.checksum, csum);
        assert_eq!(c.subject, "Subject line");
        assert_eq!(c.body, "Body text");
        assert_eq!(c.timestamp, TS);
        assert_eq!(c.parent, None);
        assert_eq!(c.meta_str("version"), Some("1.0"));
        // `ostree commit -b` binds the commit to its ref.
        assert!(c.metadata.iter().any(|(k, v)| k == "ostree.ref-binding"
            && *v == MetaValue::StrArray(vec!["os/stable".into()])));
        assert_eq!(
            c.content_checksum().to_hex(),
            ostree_content_checksum(&repo_path, "os/stable")
        );

        let ours = tmp.path().join("ours");
        repo.checkout(&csum, &ours).unwrap();
        let theirs = tmp.path().join("theirs");
        ostree(
            &repo_path,
            &["checkout", "os/stable", theirs.to_str().unwrap()],
        );
        assert_same(&snapshot(&theirs, FULL), &snapshot(&ours, FULL), name);
        assert_same(&snapshot(&input, FULL), &snapshot(&ours, FULL), name);
        assert!(
            repo.checkout(&csum, &ours).is_err(),
            "checkout over an existing dir must fail"
        );
        fsck(&repo_path);
    }
}

#[test]
fn our_commits_pass_fsck_and_match_ostree_commit_byte_for_byte() {
    for (mode, name) in modes() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in");
        make_tree(&input);

        let repo_path = tmp.path().join("repo");
        let repo = Repo::init(&repo_path, mode).unwrap();
        let meta = vec![("version".to_string(), MetaValue::Str("1.0".into()))];
        let ours = repo.commit_dir(&input, "Subject", meta, None, TS).unwrap();
        repo.set_ref("os/stable", Some(&ours)).unwrap();
        fsck(&repo_path);

        // The same content committed by the CLI gives the same objects and commit.
        let cli_path = tmp.path().join("cli");
        ostree(&cli_path, &["init", &format!("--mode={name}")]);
        let theirs = ostree(
            &cli_path,
            &[
                "commit",
                "-b",
                "os/stable",
                "--no-bindings",
                &format!("--tree=dir={}", input.display()),
                "-s",
                "Subject",
                "--timestamp=2020-01-01 00:00:00 +0000",
                "--add-metadata-string=version=1.0",
            ],
        );
        let cli_repo = Repo::open(&cli_path).unwrap();
        let theirs: Checksum = theirs.trim().parse().unwrap();
        let ct = cli_repo.read_commit(&theirs).unwrap();
        let co = repo.read_commit(&ours).unwrap();
        assert_eq!(co.root_tree, ct.root_tree, "{name}: root dirtree");
        assert_eq!(co.root_meta, ct.root_meta, "{name}: root dirmeta");
        assert_eq!(ours, theirs, "{name}: commit checksum");
        assert_eq!(
            content_checksum(&co.root_tree, &co.root_meta).to_hex(),
            ostree_content_checksum(&repo_path, "os/stable")
        );

        // ostree lists and checks out exactly the input.
        let ls = ostree(&repo_path, &["ls", "-R", "os/stable"]);
        for p in [
            "/hello.txt",
            "/sub/deep/a/b/c",
            "/link -> hello.txt",
            "/\u{e9} x",
            "/empty",
        ] {
            assert!(ls.contains(p), "{name}: `ostree ls -R` lacks {p}:\n{ls}");
        }
        let owned = ostree(&repo_path, &["ls", "os/stable", "/sub/owned"]);
        assert!(owned.starts_with("-00640 1234 5678"), "{name}: {owned}");
        let co_dir = tmp.path().join("co");
        ostree(
            &repo_path,
            &["checkout", "os/stable", co_dir.to_str().unwrap()],
        );
        assert_same(&snapshot(&input, FULL), &snapshot(&co_dir, FULL), name);
        if mode == RepoMode::BareUser {
            let co_u = tmp.path().join("co-u");
            ostree(
                &repo_path,
                &["checkout", "-U", "os/stable", co_u.to_str().unwrap()],
            );
            let o = Opts {
                owners: false,
                xattrs: false,
                root: false,
            };
            let mut want = snapshot(&input, o);
            // User-mode checkouts drop setuid bits.
            want.get_mut("setuid").unwrap().mode = 0o755;
            assert_same(&want, &snapshot(&co_u, o), "checkout -U");
        }

        // Our own checkout agrees too.
        let mine = tmp.path().join("mine");
        repo.checkout(&ours, &mine).unwrap();
        assert_same(&snapshot(&input, FULL), &snapshot(&mine, FULL), name);
    }
}

#[test]
fn unchanged_objects_are_not_rewritten() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    make_tree(&input);
    let repo = Repo::init(&tmp.path().join("repo"), RepoMode::BareUser).unwrap();
    let a = repo.commit_dir(&input, "a", vec![], None, TS).unwrap();
    let obj = repo.object_path(
        ObjectKind::File,
        &repo
            .read_dirtree(&repo.read_commit(&a).unwrap().root_tree)
            .unwrap()
            .files
            .iter()
            .find(|(n, _)| n == "big.bin")
            .unwrap()
            .1,
    );
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&obj).unwrap());
    let b = repo
        .commit_dir(&input, "b", vec![], Some(a), TS + 1)
        .unwrap();
    assert_ne!(a, b);
    assert_eq!(repo.read_commit(&b).unwrap().parent, Some(a));
    let ino2 = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&obj).unwrap());
    assert_eq!(ino, ino2, "existing object was rewritten");
    // No staging left behind.
    assert_eq!(
        std::fs::read_dir(repo.path().join("tmp")).unwrap().count(),
        0
    );
}

#[test]
fn refs_and_prune() {
    let tmp = tempfile::tempdir().unwrap();
    let repo_path = tmp.path().join("repo");
    let repo = Repo::init(&repo_path, RepoMode::Bare).unwrap();
    assert!(Repo::init(&repo_path, RepoMode::BareUser).is_err());
    assert_eq!(
        Repo::init(&repo_path, RepoMode::Bare).unwrap().mode(),
        RepoMode::Bare
    );

    let one = tmp.path().join("one");
    make_tree(&one);
    let two = tmp.path().join("two");
    std::fs::create_dir_all(two.join("only-in-two")).unwrap();
    std::fs::write(two.join("only-in-two/file"), b"two\n").unwrap();
    let c1 = repo.commit_dir(&one, "one", vec![], None, TS).unwrap();
    let c2 = repo.commit_dir(&two, "two", vec![], None, TS).unwrap();
    repo.set_ref("os/one", Some(&c1)).unwrap();
    repo.set_ref("ostree/0/1/0", Some(&c2)).unwrap();
    assert!(repo.set_ref("../evil", Some(&c1)).is_err());
    assert!(repo.set_ref("os/bogus", Some(&Checksum([9; 32]))).is_err());
    assert_eq!(
        repo.list_refs("ostree/").unwrap(),
        vec![("ostree/0/1/0".into(), c2)]
    );
    let refs = ostree(&repo_path, &["refs"]);
    assert!(
        refs.contains("os/one") && refs.contains("ostree/0/1/0"),
        "{refs}"
    );
    fsck(&repo_path);

    assert_eq!(repo.prune().unwrap(), 0);
    repo.set_ref("ostree/0/1/0", None).unwrap();
    repo.set_ref("ostree/0/1/0", None).unwrap();
    assert_eq!(repo.resolve_ref("ostree/0/1/0").unwrap(), None);
    // c2: commit, root dirtree, only-in-two dirtree, the file; the dirmeta is shared with c1.
    assert_eq!(repo.prune().unwrap(), 4);
    assert!(!repo.has_object(ObjectKind::Commit, &c2));
    assert!(repo.has_object(ObjectKind::Commit, &c1));
    fsck(&repo_path);
    let co = tmp.path().join("co");
    repo.checkout(&c1, &co).unwrap();
    assert_same(&snapshot(&one, FULL), &snapshot(&co, FULL), "after prune");
    let _ = Path::new("");
}
