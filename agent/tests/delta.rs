//! Deltas against the real `ostree` CLI (apt package `ostree`): trees committed by `ostree
//! commit`, the device repo made by `ostree pull-local`, results checked by `ostree fsck` and
//! `ostree checkout`.
#![cfg(feature = "publish")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ostree_util;

use std::fs;
use std::os::unix::fs::{lchown, symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use ostree_util::*;
use otter::delta::{self, GenerateOptions};
use otter::ostree::{Checksum, ObjectKind, Repo};

/// Incompressible bytes (an LCG), so that only a patch makes a changed file cheap.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

/// `v` with a few edits: bytes changed, a run inserted, a run deleted.
fn edit(v: &[u8], seed: u64) -> Vec<u8> {
    let mut out = v.to_vec();
    let n = out.len();
    for i in 0..20 {
        let at = (i * 7919 + seed as usize * 131) % n;
        out[at] ^= 0x5a;
    }
    out.splice(n / 3..n / 3, noise(seed + 99, 300));
    out.drain(n / 2..n / 2 + 200);
    out
}

fn w(root: &Path, p: &str, data: &[u8], mode: u32) {
    let path = root.join(p);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, data).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
}

fn text(seed: u64, lines: usize) -> Vec<u8> {
    (0..lines)
        .map(|i| {
            format!(
                "line {i} of file {seed}: the quick brown fox {}\n",
                i * seed as usize
            )
        })
        .collect::<String>()
        .into_bytes()
}

/// Commit A: a small "OS" with a binary, a kernel module dir, a versioned library, config.
fn make_a(root: &Path) {
    fs::create_dir_all(root).unwrap();
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
    w(root, "usr/bin/tool", &noise(1, 1_500_000), 0o755);
    w(root, "usr/bin/same", &noise(2, 100_000), 0o755);
    for (i, m) in ["a", "b", "c", "d"].iter().enumerate() {
        w(
            root,
            &format!("usr/lib/modules/6.1.0-18-arm64/kernel/drivers/{m}.ko"),
            &noise(10 + i as u64, 200_000),
            0o644,
        );
    }
    w(
        root,
        "usr/lib/modules/6.1.0-18-arm64/modules.dep",
        &text(5, 2000),
        0o644,
    );
    w(root, "usr/lib/libfoo.so.1.2.3", &noise(20, 400_000), 0o644);
    symlink("libfoo.so.1.2.3", root.join("usr/lib/libfoo.so.1")).unwrap();
    w(root, "usr/share/doc/readme", &text(6, 500), 0o644);
    w(root, "usr/share/doc/removed", &text(7, 500), 0o644);
    w(root, "usr/bin/modechange", &noise(3, 50_000), 0o644);
    w(root, "etc/config", &text(8, 50), 0o644);
    set_xattr(&root.join("etc/config"), "user.label", b"old");
    w(root, "etc/owned", b"owned\n", 0o640);
    lchown(root.join("etc/owned"), Some(1234), Some(5678)).unwrap();
    symlink("../usr/bin/tool", root.join("etc/tool-link")).unwrap();
    fs::create_dir_all(root.join("var/lib/private")).unwrap();
    fs::set_permissions(
        root.join("var/lib/private"),
        fs::Permissions::from_mode(0o700),
    )
    .unwrap();
}

/// Commit B: modified binaries, renamed module dir (some modules changed), new .so version,
/// added/removed files, symlink retargeted, xattr and mode changes.
fn make_b(root: &Path) {
    fs::create_dir_all(root).unwrap();
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
    w(root, "usr/bin/tool", &edit(&noise(1, 1_500_000), 1), 0o755);
    w(root, "usr/bin/same", &noise(2, 100_000), 0o755);
    for (i, m) in ["a", "b", "c", "d"].iter().enumerate() {
        let old = noise(10 + i as u64, 200_000);
        let data = if i % 2 == 0 {
            edit(&old, i as u64)
        } else {
            old
        };
        w(
            root,
            &format!("usr/lib/modules/6.1.0-21-arm64/kernel/drivers/{m}.ko"),
            &data,
            0o644,
        );
    }
    w(
        root,
        "usr/lib/modules/6.1.0-21-arm64/kernel/drivers/new.ko",
        &noise(30, 300_000),
        0o644,
    );
    let mut dep = text(5, 2000);
    dep.extend_from_slice(b"kernel/drivers/new.ko:\n");
    w(
        root,
        "usr/lib/modules/6.1.0-21-arm64/modules.dep",
        &dep,
        0o644,
    );
    w(
        root,
        "usr/lib/libfoo.so.1.2.4",
        &edit(&noise(20, 400_000), 4),
        0o644,
    );
    symlink("libfoo.so.1.2.4", root.join("usr/lib/libfoo.so.1")).unwrap();
    w(root, "usr/share/doc/readme", &text(6, 500), 0o644);
    w(root, "usr/share/doc/added", &noise(40, 700_000), 0o644);
    for i in 0..12 {
        w(
            root,
            &format!("usr/share/locale/l{i}/messages"),
            &text(100 + i, 800),
            0o644,
        );
    }
    w(root, "usr/bin/modechange", &noise(3, 50_000), 0o755);
    w(root, "etc/config", &text(8, 50), 0o644);
    set_xattr(&root.join("etc/config"), "user.label", b"new");
    w(root, "etc/owned", b"owned\n", 0o640);
    lchown(root.join("etc/owned"), Some(1234), Some(5678)).unwrap();
    symlink("../usr/bin/tool", root.join("etc/tool-link")).unwrap();
    symlink("/usr/lib/libfoo.so.1", root.join("etc/new-link")).unwrap();
    fs::create_dir_all(root.join("var/lib/private")).unwrap();
    fs::set_permissions(
        root.join("var/lib/private"),
        fs::Permissions::from_mode(0o750),
    )
    .unwrap();
}

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    b_tree: PathBuf,
    /// The device's own commit of tree A (not the publisher's: other subject and timestamp).
    a: Checksum,
    /// The publisher's commit of B (the device never gets it).
    b: Checksum,
    /// Content checksums of trees A and B.
    a_content: Checksum,
    b_content: Checksum,
    /// B's root dirtree.
    b_root: Checksum,
    /// The device: a bare-user repo with only its own commit of tree A (ref `os/a`).
    device: PathBuf,
    delta: PathBuf,
    summary: delta::DeltaSummary,
}

fn commit(repo: &Path, branch: &str, tree: &Path) -> Checksum {
    commit_at(repo, branch, tree, "2024-01-01 00:00:00 +0000")
}

fn commit_at(repo: &Path, branch: &str, tree: &Path, when: &str) -> Checksum {
    ostree(
        repo,
        &[
            "commit",
            "-b",
            branch,
            &format!("--tree=dir={}", tree.display()),
            "-s",
            branch,
            &format!("--timestamp={when}"),
        ],
    )
    .trim()
    .parse()
    .unwrap()
}

/// `fast`: low zstd levels (the format is the same; keeps the suite quick).
fn setup(part_size: u64, fast: bool) -> Setup {
    let opts = GenerateOptions {
        max_part_size: part_size,
        level: if fast { 3 } else { 19 },
        patch_level: if fast { 3 } else { 19 },
        ..Default::default()
    };
    setup_with(make_a, make_b, &opts)
}

fn setup_with(make_a: fn(&Path), make_b: fn(&Path), opts: &GenerateOptions) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (ta, tb) = (dir.join("tree-a"), dir.join("tree-b"));
    make_a(&ta);
    make_b(&tb);
    let publ = dir.join("publisher");
    ostree(&publ, &["init", "--mode=bare-user"]);
    let a_pub = commit(&publ, "os/a", &ta);
    let b = commit(&publ, "os/b", &tb);
    // The device imported the same image A at another time: its own commit, same tree.
    let device = dir.join("device");
    ostree(&device, &["init", "--mode=bare-user"]);
    let a = commit_at(&device, "os/a", &ta, "2025-06-01 12:00:00 +0000");
    assert_ne!(a, a_pub);
    let dev = Repo::open(&device).unwrap();
    let pub_repo = Repo::open(&publ).unwrap();
    let a_content = dev.read_commit(&a).unwrap().content_checksum();
    assert_eq!(
        a_content,
        pub_repo.read_commit(&a_pub).unwrap().content_checksum()
    );
    let b_content = pub_repo.read_commit(&b).unwrap().content_checksum();
    assert!(!dev.has_object(ObjectKind::Commit, &b));

    let delta = dir.join("delta");
    let summary = delta::generate_with(&pub_repo, &a_pub, &b, &delta, opts).unwrap();
    assert_eq!(summary.from, Some(a_content));
    assert_eq!(summary.to, Some(b_content));
    Setup {
        _tmp: tmp,
        dir,
        b_tree: tb,
        a,
        b,
        a_content,
        b_content,
        b_root: pub_repo.read_commit(&b).unwrap().root_tree,
        device,
        delta,
        summary,
    }
}

fn part_files(delta: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = fs::read_dir(delta)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("part-")
        })
        .collect();
    v.sort();
    v
}

/// Tree B is in the device repo: the device writes its own commit over the rebuilt root, fsck
/// is clean, `ostree show` agrees on the content checksum and the checkout equals B's input.
fn assert_device_has_b(s: &Setup, applied: &delta::Applied) {
    let repo = Repo::open(&s.device).unwrap();
    assert_eq!(applied.content, s.b_content);
    let c = repo
        .transaction()
        .unwrap()
        .commit(
            "device commit of B",
            "",
            Vec::new(),
            None,
            1_800_000_000,
            &applied.root_tree,
            &applied.root_meta,
        )
        .unwrap();
    assert_ne!(c, s.b);
    repo.set_ref("os/b", Some(&c)).unwrap();
    fsck(&s.device);
    let show = ostree(&s.device, &["show", "os/b"]);
    assert!(
        show.contains(&format!("ContentChecksum:  {}", s.b_content)),
        "{show}"
    );
    let co = s.dir.join("checkout-b");
    ostree(&s.device, &["checkout", "os/b", co.to_str().unwrap()]);
    assert_same(
        &snapshot(&s.b_tree, FULL),
        &snapshot(&co, FULL),
        "delta-rebuilt B",
    );
}

#[test]
fn delta_rebuilds_b_on_a_device_that_has_only_a() {
    let s = setup(8 << 20, false);
    let sum = &s.summary;
    // Changed binaries, modules in the renamed dir and the new .so version go as patches; the
    // mode-only change as a copy; the added file whole.
    assert!(sum.patched_files >= 4, "{sum:?}");
    assert!(sum.copied_files >= 1, "{sum:?}");
    assert!(sum.new_files >= 2, "{sum:?}");
    // Unchanged and renamed-but-identical objects (same.ko content, /usr/bin/same) are not sent.
    assert!(sum.patch_bytes < 100_000, "{sum:?}");
    // Dominated by the two new incompressible files (1 MB), not by the 2.5 MB of changed ones.
    assert!(sum.total_size < 1_150_000, "{sum:?}");
    // The changed directories (/, usr, usr/bin, usr/lib, the renamed modules dir, …) are
    // compressed against A's versions of them.
    assert!(sum.dirtree_bases >= 5, "{sum:?}");

    let repo = Repo::open(&s.device).unwrap();
    let applied = delta::apply_dir(&repo, &s.delta, &s.a).unwrap();
    assert_eq!(applied.parts_applied, sum.parts);
    assert!(!delta::progress_path(&repo, &s.a_content, &s.b_content).exists());
    assert_device_has_b(&s, &applied);
    // Applying again is a no-op.
    let again = delta::apply_dir(&repo, &s.delta, &s.a).unwrap();
    assert_eq!(again.parts_applied, 0);
}

#[test]
fn corrupt_part_or_wrong_source_commit_changes_nothing() {
    let s = setup(64 << 10, true);
    let parts = part_files(&s.delta);
    assert!(parts.len() >= 3, "{:?}", s.summary);
    let repo = Repo::open(&s.device).unwrap();

    // A delta for another source commit: the device runs B' (A with one more file).
    let other_tree = s.dir.join("tree-other");
    make_a(&other_tree);
    w(&other_tree, "extra", b"x", 0o644);
    let other = commit(&s.device, "os/other", &other_tree);
    let err = delta::apply_dir(&repo, &s.delta, &other).unwrap_err();
    assert!(
        format!("{err:#}").contains("does not apply here"),
        "{err:#}"
    );

    let refs_before = ostree(&s.device, &["refs"]);
    // One flipped byte in the last part: refused, B absent, refs unchanged, fsck clean.
    let last = parts.last().unwrap();
    let mut data = fs::read(last).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 1;
    fs::write(last, &data).unwrap();
    let err = delta::apply_dir(&repo, &s.delta, &s.a).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains(&format!("part {}", parts.len() - 1)), "{msg}");
    assert!(!repo.has_object(ObjectKind::DirTree, &s.b_root));
    assert_eq!(ostree(&s.device, &["refs"]), refs_before);
    fsck(&s.device);

    // A tampered superblock (target commit swapped) is refused before anything is written.
    let sb = s.delta.join("superblock");
    let mut data = fs::read(&sb).unwrap();
    data[0] = b'X';
    fs::write(&sb, &data).unwrap();
    assert!(delta::apply_dir(&repo, &s.delta, &s.a).is_err());
}

#[test]
fn interrupted_apply_resumes_without_redoing_finished_parts() {
    let s = setup(64 << 10, true);
    let parts = part_files(&s.delta);
    let n = parts.len();
    assert!(n >= 4, "{:?}", s.summary);
    let repo = Repo::open(&s.device).unwrap();

    // The download of part 2 was cut short: parts 0 and 1 are applied, then the apply fails.
    let good = fs::read(&parts[2]).unwrap();
    fs::write(&parts[2], &good[..good.len() / 2]).unwrap();
    let err = delta::apply_dir(&repo, &s.delta, &s.a).unwrap_err();
    assert!(format!("{err:#}").contains("part 2"), "{err:#}");
    assert!(!repo.has_object(ObjectKind::DirTree, &s.b_root));
    let progress =
        fs::read_to_string(delta::progress_path(&repo, &s.a_content, &s.b_content)).unwrap();
    assert_eq!(progress, "0\n1\n");
    fsck(&s.device);

    // Resume with the full part 2; parts 0 and 1 are gone, so redoing them would fail.
    fs::write(&parts[2], &good).unwrap();
    fs::remove_file(&parts[0]).unwrap();
    fs::remove_file(&parts[1]).unwrap();
    let applied = delta::apply_dir(&repo, &s.delta, &s.a).unwrap();
    assert_eq!(applied.parts_skipped, 2);
    assert_eq!(applied.parts_applied, n - 2);
    assert_device_has_b(&s, &applied);
}

/// Write `data` as a blob of an OCI layout; returns its descriptor JSON.
/// Builds a "kernel" with real BTF: `gcc -g` objects whose DWARF `pahole -J` (apt package
/// `dwarves`) turns into a `.BTF` section, and modules with split BTF against it
/// (`pahole --btf_base`), like Debian's kernel build. Kernel B has 25 more types at the front,
/// so every type id and string offset in every module's BTF moves, as in a real ABI bump.
fn make_kernel(root: &Path, version: &str, extra_types: bool) {
    let work = root.with_extension("build");
    fs::create_dir_all(&work).unwrap();
    let run = |cmd: &str, args: &[&str]| {
        let out = std::process::Command::new(cmd)
            .args(args)
            .current_dir(&work)
            .output()
            .unwrap_or_else(|e| {
                panic!("{cmd} not runnable ({e}): apt-get install gcc dwarves (scripts/setup.sh)")
            });
        assert!(
            out.status.success(),
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let mut added = String::new();
    if extra_types {
        for i in 0..25 {
            added += &format!(
                "struct added{i} {{ int a{i}; long b{i}; }}; struct added{i} added_var{i};\n"
            );
        }
    }
    let mut base = String::from("struct s0 { int a; };\n");
    for i in 1..200 {
        base += &format!(
            "struct s{i} {{ struct s{p} *parent; unsigned long field_{i}; int (*op{i})(struct s{i} *); }};\n",
            p = i - 1
        );
    }
    fs::write(work.join("types.h"), &base).unwrap();
    let vars: String = (1..200).map(|i| format!("struct s{i} var{i};\n")).collect();
    fs::write(
        work.join("base.c"),
        format!("{added}#include \"types.h\"\n{vars}"),
    )
    .unwrap();
    run("gcc", &["-g", "-O2", "-c", "base.c", "-o", "vmlinux"]);
    run("pahole", &["-J", "vmlinux"]);
    run("strip", &["--strip-debug", "vmlinux"]);
    let modules = root.join(format!("usr/lib/modules/{version}/kernel/drivers"));
    fs::create_dir_all(&modules).unwrap();
    fs::create_dir_all(root.join("boot")).unwrap();
    fs::copy(
        work.join("vmlinux"),
        root.join(format!("boot/vmlinux-{version}")),
    )
    .unwrap();
    for m in 0..12 {
        let mut src = String::from("#include \"types.h\"\n");
        for i in (m + 1..200).step_by(3) {
            src += &format!(
                "struct drv{m}_{i} {{ struct s{i} *obj; char name[{n}]; int id; }};\n\
                 struct drv{m}_{i} drv{m}_{i};\n\
                 int probe{m}_{i}(struct s{i} *o) {{ drv{m}_{i}.obj = o; return drv{m}_{i}.id; }}\n",
                n = 8 + i % 5
            );
        }
        fs::write(work.join(format!("m{m}.c")), &src).unwrap();
        // (letters: digit runs are version numbers to the path matcher)
        let obj = format!("drv_{}.ko", char::from(b'a' + m as u8));
        run("gcc", &["-g", "-O2", "-c", &format!("m{m}.c"), "-o", &obj]);
        run("pahole", &["-J", "--btf_base", "vmlinux", &obj]);
        // Debian ships modules without DWARF (the BTF stays).
        run("strip", &["--strip-debug", &obj]);
        fs::copy(work.join(&obj), modules.join(&obj)).unwrap();
    }
    w(root, "etc/os-release", b"ID=test\n", 0o644);
}

#[test]
fn kernel_modules_are_patched_against_renumbered_btf() {
    fn a(root: &Path) {
        make_kernel(root, "6.1.0-1-arm64", false)
    }
    fn b(root: &Path) {
        make_kernel(root, "6.1.0-2-arm64", true)
    }
    let opts = GenerateOptions {
        level: 19,
        ..Default::default()
    };
    let s = setup_with(a, b, &opts);
    let sum = &s.summary;
    // The modules and the kernel went as patches against their renumbered sources (a few may
    // go as zstd patches, when those come out smaller), with maps learnt from the modules.
    assert_eq!(sum.patched_files, 13, "{sum:?}");
    assert!(sum.btf_patched_files >= 10, "{sum:?}");
    assert!(sum.btf_map_runs > 0, "{sum:?}");
    let repo = Repo::open(&s.device).unwrap();
    let applied = delta::apply_dir(&repo, &s.delta, &s.a).unwrap();
    assert_device_has_b(&s, &applied);

    // The same pair without BTF renumbering: plain bsdiff has to spell out every moved id.
    let plain = s.dir.join("delta-plain");
    let publ = Repo::open(&s.dir.join("publisher")).unwrap();
    let a_pub = ostree(&s.dir.join("publisher"), &["rev-parse", "os/a"]);
    let off = GenerateOptions { btf: false, ..opts };
    let p =
        delta::generate_with(&publ, &a_pub.trim().parse().unwrap(), &s.b, &plain, &off).unwrap();
    assert_eq!(p.btf_patched_files, 0);
    // One patch thread or several: the same bytes.
    let serial = s.dir.join("delta-serial");
    let one = GenerateOptions {
        threads: 1,
        ..opts.clone()
    };
    delta::generate_with(&publ, &a_pub.trim().parse().unwrap(), &s.b, &serial, &one).unwrap();
    for f in fs::read_dir(&s.delta).unwrap() {
        let f = f.unwrap().path();
        let name = f.file_name().unwrap();
        assert!(
            fs::read(&f).unwrap() == fs::read(serial.join(name)).unwrap(),
            "{name:?}"
        );
    }
    // (the patches, each compressed alone; the part compresses across files, which hides
    // some of the repetition in plain patches)
    assert!(
        sum.patch_bytes * 10 < p.patch_bytes * 7 && sum.total_size < p.total_size,
        "renumbered {sum:?}, plain {p:?}"
    );
}

fn blob(layout: &Path, media_type: &str, data: &[u8]) -> serde_json::Value {
    use sha2::Digest;
    let hex = format!("{:x}", sha2::Sha256::digest(data));
    let dir = layout.join("blobs/sha256");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(&hex), data).unwrap();
    serde_json::json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": data.len()})
}

#[test]
fn delta_found_as_oci_referrer_and_applied_from_the_source() {
    let s = setup(64 << 10, true);
    let layout = s.dir.join("layout");
    fs::create_dir_all(&layout).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let target = format!("sha256:{}", "b".repeat(64));
    let booted = format!("sha256:{}", "a".repeat(64));
    let mut layers = vec![blob(
        &layout,
        "application/octet-stream",
        &fs::read(s.delta.join("superblock")).unwrap(),
    )];
    for p in part_files(&s.delta) {
        layers.push(blob(&layout, "application/zstd", &fs::read(p).unwrap()));
    }
    let config = blob(&layout, "application/vnd.oci.empty.v1+json", b"{}");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": delta::ARTIFACT_TYPE,
        "config": config,
        "layers": layers,
        "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": target, "size": 1},
        "annotations": {
            delta::ANNOTATION_FROM: booted,
            delta::ANNOTATION_FROM_CONTENT: s.a_content.to_hex(),
        },
    });
    let mut desc = blob(
        &layout,
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    desc["artifactType"] = delta::ARTIFACT_TYPE.into();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [desc]});
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();

    let opts = otter::source::SourceOptions {
        blob_dir: s.dir.join("blobs"),
        ..Default::default()
    };
    let reference = otter::source::ImageRef::OciDir {
        path: layout.clone(),
        tag: None,
    };
    let mut src = otter::source::open(&reference, &opts).unwrap();
    let repo = Repo::open(&s.device).unwrap();
    // No delta from another booted tree.
    let other_digest = format!("sha256:{}", "c".repeat(64));
    let other_tree = s.dir.join("tree-other");
    make_a(&other_tree);
    w(&other_tree, "extra", b"x", 0o644);
    let other = commit(&s.device, "os/other", &other_tree);
    assert!(
        delta::apply_from_source(&repo, &mut *src, &target, &other_digest, &other)
            .unwrap()
            .is_none()
    );
    // The annotation names the tree: an image with another manifest digest but the same tree
    // (e.g. rebuilt, re-pushed) gets the delta too.
    let applied = delta::apply_from_source(&repo, &mut *src, &target, &other_digest, &s.a)
        .unwrap()
        .unwrap();
    assert_device_has_b(&s, &applied);
}
