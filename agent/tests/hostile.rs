//! Hostile inputs: every case must end in a clear error (the message names the problem) and
//! change nothing — the repository's refs, objects and tmp/ are byte-for-byte the same before and
//! after, and `ostree fsck` (the real CLI) is clean. A few cases are *accepted* by policy
//! (absolute paths are root-relative, setuid under /usr/bin, device nodes under /dev are dropped):
//! those tests check the result stays inside the tree.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ostree_util;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ostree_util::{fsck, ostree};
use otter::import::{ImportLimits, Importer};
use otter::ostree::{Repo, RepoMode};

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const TAR_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const TAR_ZST: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

// ---------------------------------------------------------------------------------------------
// Raw tar building: the `tar` crate's builder refuses `..` and friends, hostile layers need them.

#[derive(Clone)]
struct E {
    name: Vec<u8>,
    kind: u8,
    mode: u32,
    size: Option<u64>,
    body: Vec<u8>,
    link: Vec<u8>,
    pax: Vec<(String, Vec<u8>)>,
    uid: u64,
}

fn e(name: &str) -> E {
    E {
        name: name.as_bytes().to_vec(),
        kind: b'0',
        mode: 0o644,
        size: None,
        body: Vec::new(),
        link: Vec::new(),
        pax: Vec::new(),
        uid: 0,
    }
}
fn file(name: &str, body: &[u8]) -> E {
    E {
        body: body.to_vec(),
        ..e(name)
    }
}
fn dir(name: &str, mode: u32) -> E {
    E {
        kind: b'5',
        mode,
        ..e(name)
    }
}
fn symlink(name: &str, target: &str) -> E {
    E {
        kind: b'2',
        mode: 0o777,
        link: target.as_bytes().to_vec(),
        ..e(name)
    }
}
fn hardlink(name: &str, target: &str) -> E {
    E {
        kind: b'1',
        link: target.as_bytes().to_vec(),
        ..e(name)
    }
}
fn device(name: &str, kind: u8) -> E {
    E { kind, ..e(name) }
}

/// A numeric tar field: octal when it fits, else GNU base-256 (high bit set, big-endian).
fn octal(field: &mut [u8], v: u64) {
    let s = format!("{:0width$o}\0", v, width = field.len() - 1);
    if s.len() == field.len() {
        field.copy_from_slice(s.as_bytes());
    } else {
        field.fill(0);
        let n = field.len();
        field[n - 8..].copy_from_slice(&v.to_be_bytes());
        field[0] |= 0x80;
    }
}

fn header(name: &[u8], kind: u8, mode: u32, size: u64, link: &[u8], uid: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    octal(&mut h[100..108], mode as u64);
    octal(&mut h[108..116], uid);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 0);
    h[156] = kind;
    let l = link.len().min(100);
    h[157..157 + l].copy_from_slice(&link[..l]);
    h[257..263].copy_from_slice(b"ustar ");
    h[263..265].copy_from_slice(b" \0");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

fn pad(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(512) {
        out.push(0);
    }
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while format!("{len}").len() + rest != len {
        len += 1;
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

fn tar(entries: &[E]) -> Vec<u8> {
    let mut out = Vec::new();
    for en in entries {
        if !en.pax.is_empty() {
            let mut body = Vec::new();
            for (k, v) in &en.pax {
                body.extend(pax_record(k, v));
            }
            out.extend(header(b"pax", b'x', 0o644, body.len() as u64, b"", 0));
            out.extend(body);
            pad(&mut out);
        }
        if en.name.len() > 100 {
            // GNU long name.
            let mut n = en.name.clone();
            n.push(0);
            out.extend(header(
                b"././@LongLink",
                b'L',
                0o644,
                n.len() as u64,
                b"",
                0,
            ));
            out.extend(n);
            pad(&mut out);
        }
        let size = en.size.unwrap_or(en.body.len() as u64);
        out.extend(header(&en.name, en.kind, en.mode, size, &en.link, en.uid));
        out.extend(&en.body);
        pad(&mut out);
    }
    out.extend([0u8; 1024]);
    out
}

// ---------------------------------------------------------------------------------------------
// The "nothing changed" check.

/// Everything under the repo except the lock file: path → (kind, content or target).
fn repo_state(repo: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, p: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in fs::read_dir(p).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == ".lock" {
                continue;
            }
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                out.insert(format!("{rel}/"), Vec::new());
                walk(root, &path, out);
            } else if ft.is_symlink() {
                out.insert(
                    rel,
                    fs::read_link(&path)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                );
            } else {
                out.insert(rel, fs::read(&path).unwrap());
            }
        }
    }
    walk(repo, repo, &mut out);
    out
}

struct Fixture {
    _tmp: tempfile::TempDir,
    path: PathBuf,
    repo: Repo,
}

/// A bare-user repo with one good commit on `otter/stable`.
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("repo");
    let repo = Repo::init(&path, RepoMode::BareUser).unwrap();
    let mut imp = Importer::new(&repo);
    imp.apply_layer(
        TAR,
        &mut tar(&[
            file("etc/shadow", b"root:*:1::::::\n"),
            file("usr/bin/su", b"su"),
        ])
        .as_slice(),
    )
    .unwrap();
    let good = imp.commit("good", vec![], None).unwrap();
    repo.set_ref("otter/stable", Some(&good.commit)).unwrap();
    Fixture {
        _tmp: tmp,
        path,
        repo,
    }
}

fn import(
    repo: &Repo,
    limits: ImportLimits,
    layers: &mut [(&str, &mut dyn Read)],
) -> anyhow::Result<()> {
    let mut imp = Importer::with_limits(repo, limits);
    for (mt, r) in layers.iter_mut() {
        imp.apply_layer(mt, *r)?;
    }
    let done = imp.commit("hostile", vec![], None)?;
    repo.set_ref("otter/hostile", Some(&done.commit))
}

/// Run a hostile import; it must fail with an error containing `needle`, and change nothing.
fn refused_with(
    f: &Fixture,
    what: &str,
    limits: ImportLimits,
    layers: &mut [(&str, &mut dyn Read)],
    needle: &str,
) {
    let before = repo_state(&f.path);
    let err = import(&f.repo, limits, layers).expect_err(what);
    let msg = format!("{err:#}");
    eprintln!("{what}: {msg}");
    assert!(
        msg.contains(needle),
        "{what}: the error does not say {needle:?}: {msg}"
    );
    let after = repo_state(&f.path);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "{what}: repository listing changed"
    );
    assert!(before == after, "{what}: repository content changed");
}

fn refused(what: &str, layer: Vec<u8>, needle: &str) {
    let f = fixture();
    refused_with(
        &f,
        what,
        ImportLimits::default(),
        &mut [(TAR, &mut layer.as_slice())],
        needle,
    );
    fsck(&f.path);
}

// ---------------------------------------------------------------------------------------------
// Paths.

#[test]
fn dotdot_paths_are_refused() {
    refused("leading ..", tar(&[file("../x", b"x")]), "'..'");
    refused("inner ..", tar(&[file("a/../../x", b"x")]), "'..'");
    refused("trailing ..", tar(&[dir("a/..", 0o755)]), "'..'");
    refused("whiteout of ..", tar(&[file("a/.wh...", b"")]), "'..'");
    let mut long = e("harmless");
    long.pax = vec![("path".into(), b"../../etc/cron.d/x".to_vec())];
    long.body = b"* * * * * root sh".to_vec();
    refused("PAX path with ..", tar(&[long]), "'..'");
    let gnu_long = format!("{}/../../../etc/x", "d".repeat(120));
    refused(
        "GNU long name with ..",
        tar(&[file(&gnu_long, b"x")]),
        "'..'",
    );
}

#[test]
fn absolute_paths_stay_inside_the_tree() {
    // Policy: a leading '/' is root-relative (what docker and umoci do), never the host's /.
    let tmp = tempfile::tempdir().unwrap();
    let repo_path = tmp.path().join("repo");
    let repo = Repo::init(&repo_path, RepoMode::BareUser).unwrap();
    let mut imp = Importer::new(&repo);
    imp.apply_layer(
        TAR,
        &mut tar(&[file("/abs/passwd", b"x"), file("//double/x", b"y")]).as_slice(),
    )
    .unwrap();
    let done = imp.commit("abs", vec![], None).unwrap();
    repo.set_ref("abs", Some(&done.commit)).unwrap();
    fsck(&repo_path);
    let ls = ostree(&repo_path, &["ls", "-R", "abs"]);
    assert!(
        ls.contains("/abs/passwd") && ls.contains("/double/x"),
        "{ls}"
    );
}

#[test]
fn symlink_escapes_are_refused() {
    refused(
        "write through a symlink",
        tar(&[
            symlink("l", "/etc"),
            file("l/passwd", b"root::0:0::/:/bin/sh"),
        ]),
        "symlink",
    );
    refused(
        "write through a relative symlink",
        tar(&[symlink("usr/l", "../../../.."), file("usr/l/x", b"x")]),
        "symlink",
    );
    refused(
        "directory entry through a symlink",
        tar(&[symlink("l", "/"), dir("l/etc", 0o755)]),
        "symlink",
    );
    refused(
        "hard link through a symlink",
        tar(&[symlink("l", "/etc"), hardlink("h", "l/shadow")]),
        "symlink",
    );
    refused(
        "symlink with an empty target",
        tar(&[symlink("l", "")]),
        "target",
    );
    // A symlink of an earlier layer followed by a write through it in a later layer.
    let f = fixture();
    refused_with(
        &f,
        "write through a lower-layer symlink",
        ImportLimits::default(),
        &mut [
            (TAR, &mut tar(&[symlink("usr/lib/x", "/etc")]).as_slice()),
            (TAR, &mut tar(&[file("usr/lib/x/cron", b"x")]).as_slice()),
        ],
        "refusing to write through symlinks",
    );
    fsck(&f.path);
}

#[test]
fn hardlink_escapes_are_refused() {
    refused(
        "hard link ..",
        tar(&[hardlink("h", "../../etc/shadow")]),
        "'..'",
    );
    refused(
        "hard link to nothing",
        tar(&[hardlink("h", "nope")]),
        "does not exist",
    );
    refused(
        "hard link to a directory",
        tar(&[dir("d", 0o755), hardlink("h", "d")]),
        "is a directory",
    );
    refused("hard link to the root", tar(&[hardlink("h", "./")]), "root");
}

#[test]
fn names_are_checked() {
    refused(
        "component over 255 bytes",
        tar(&[file(&"n".repeat(256), b"x")]),
        "longer than 255",
    );
    let deep = "d/".repeat(300) + "f";
    refused("300 levels deep", tar(&[file(&deep, b"x")]), "deeper than");
    let long = format!("{}/f", ["abcdefghij"; 420].join("/"));
    refused(
        "path over 4096 bytes",
        tar(&[file(&long, b"x")]),
        "longer than 4096",
    );
    let mut bad = e("x");
    bad.name = b"bad-\xff\xfe-name".to_vec();
    refused("invalid UTF-8 name", tar(&[bad]), "not valid UTF-8");
    let mut nul_target = symlink("l", "x");
    nul_target.link = b"\xc3(".to_vec();
    refused(
        "invalid UTF-8 symlink target",
        tar(&[nul_target]),
        "not UTF-8",
    );
}

#[test]
fn deeply_nested_directories_within_limits_work() {
    // 250 levels: under MAX_PATH_DEPTH, imported, fsck clean, checked out by the real CLI.
    let tmp = tempfile::tempdir().unwrap();
    let repo_path = tmp.path().join("repo");
    let repo = Repo::init(&repo_path, RepoMode::BareUser).unwrap();
    let mut imp = Importer::new(&repo);
    let deep = "d/".repeat(250) + "f";
    imp.apply_layer(TAR, &mut tar(&[file(&deep, b"x")]).as_slice())
        .unwrap();
    let done = imp.commit("deep", vec![], None).unwrap();
    repo.set_ref("deep", Some(&done.commit)).unwrap();
    fsck(&repo_path);
}

// ---------------------------------------------------------------------------------------------
// Policy: devices, setuid, duplicates.

#[test]
fn device_nodes_outside_dev_are_refused() {
    refused(
        "char device in /usr",
        tar(&[device("usr/lib/mem", b'3')]),
        "device node outside /dev",
    );
    refused(
        "block device in /var",
        tar(&[device("var/sda", b'4')]),
        "device node outside /dev",
    );
    // Under /dev they are dropped (the directory's content is dropped anyway).
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(&tmp.path().join("repo"), RepoMode::BareUser).unwrap();
    let mut imp = Importer::new(&repo);
    imp.apply_layer(
        TAR,
        &mut tar(&[device("dev/null", b'3'), device("dev/sda", b'4')]).as_slice(),
    )
    .unwrap();
    imp.commit("dev", vec![], None).unwrap();
}

#[test]
fn setuid_files_only_where_policy_allows() {
    let suid = |name: &str, mode: u32| E {
        mode,
        body: b"elf".to_vec(),
        ..e(name)
    };
    refused(
        "setuid in /etc",
        tar(&[suid("etc/backdoor", 0o4755)]),
        "setuid/setgid",
    );
    refused(
        "setgid in /var",
        tar(&[suid("var/lib/x", 0o2755)]),
        "setuid/setgid",
    );
    refused(
        "setuid in /opt",
        tar(&[suid("opt/app/x", 0o4711)]),
        "setuid/setgid",
    );
    refused(
        "setuid at the root",
        tar(&[suid("x", 0o4755)]),
        "setuid/setgid",
    );
    refused(
        "setuid in /usr/local",
        tar(&[suid("usr/local/bin/x", 0o4755)]),
        "setuid/setgid",
    );
    refused(
        "hard link to a setuid file from /var",
        tar(&[
            suid("usr/bin/su2", 0o4755),
            hardlink("var/su", "usr/bin/su2"),
        ]),
        "setuid/setgid",
    );
    // Allowed: /usr/bin, /usr/sbin, /usr/lib*, /usr/libexec, /bin, /sbin; setgid directories.
    let tmp = tempfile::tempdir().unwrap();
    let repo_path = tmp.path().join("repo");
    let repo = Repo::init(&repo_path, RepoMode::BareUser).unwrap();
    let mut imp = Importer::new(&repo);
    imp.apply_layer(
        TAR,
        &mut tar(&[
            suid("usr/bin/su", 0o4755),
            suid("usr/sbin/unix_chkpwd", 0o2755),
            suid("usr/lib/dbus-1.0/dbus-daemon-launch-helper", 0o4754),
            suid("usr/libexec/x", 0o4755),
            suid("usr/lib64/y", 0o4755),
            suid("bin/mount", 0o4755),
            suid("sbin/z", 0o2755),
            dir("var/mail", 0o2775),
            hardlink("usr/bin/su-link", "usr/bin/su"),
        ])
        .as_slice(),
    )
    .unwrap();
    let done = imp.commit("suid", vec![], None).unwrap();
    repo.set_ref("suid", Some(&done.commit)).unwrap();
    fsck(&repo_path);
    let ls = ostree(&repo_path, &["ls", "suid", "/usr/bin/su"]);
    assert!(ls.starts_with("-04755"), "{ls}");
}

#[test]
fn duplicate_entries_are_refused() {
    refused(
        "same file twice",
        tar(&[file("a", b"1"), file("a", b"2")]),
        "twice",
    );
    refused(
        "file then symlink",
        tar(&[file("a", b"1"), symlink("a", "b")]),
        "twice",
    );
    refused(
        "file then hard link",
        tar(&[file("b", b"1"), file("a", b"1"), hardlink("a", "b")]),
        "twice",
    );
    refused(
        "file then directory",
        tar(&[file("a", b"1"), dir("a", 0o755)]),
        "file and as a directory",
    );
    refused(
        "directory then file",
        tar(&[dir("a", 0o755), file("a/x", b""), file("a", b"1")]),
        "twice",
    );
    // Across layers a later layer may replace a path, and a directory may be listed twice.
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(&tmp.path().join("repo"), RepoMode::BareUser).unwrap();
    let mut imp = Importer::new(&repo);
    imp.apply_layer(
        TAR,
        &mut tar(&[dir("d", 0o755), dir("d", 0o700), file("a", b"1")]).as_slice(),
    )
    .unwrap();
    imp.apply_layer(TAR, &mut tar(&[file("a", b"2")]).as_slice())
        .unwrap();
    imp.commit("ok", vec![], None).unwrap();
}

#[test]
fn out_of_range_owner_is_refused() {
    let mut big = file("x", b"x");
    big.uid = 1 << 40;
    refused("uid over 32 bits", tar(&[big]), "out of range");
}

// ---------------------------------------------------------------------------------------------
// Sizes and bombs.

fn small(max_layer_size: u64) -> ImportLimits {
    ImportLimits {
        max_layer_size,
        ..ImportLimits::default()
    }
}

#[test]
fn huge_declared_size_is_refused_before_writing() {
    let mut huge = file("big", b"short body");
    huge.size = Some(1 << 40); // 1 TiB declared, 10 bytes present
    let f = fixture();
    let layer = tar(&[huge.clone()]);
    refused_with(
        &f,
        "1 TiB declared, default limit",
        ImportLimits::default(),
        &mut [(TAR, &mut layer.as_slice())],
        "declares 1099511627776 bytes",
    );
    // Under the limit but longer than the stream: a truncation error, still nothing changed.
    huge.size = Some(1 << 20);
    let layer = tar(&[huge]);
    refused_with(
        &f,
        "1 MiB declared, 10 bytes present",
        ImportLimits::default(),
        &mut [(TAR, &mut layer.as_slice())],
        "truncated",
    );
    fsck(&f.path);
}

/// A GNU sparse entry ('S') claiming `real` bytes with one tiny data segment at offset 0.
fn sparse(name: &str, real: u64) -> Vec<u8> {
    let mut h = header(name.as_bytes(), b'S', 0o644, 512, b"", 0);
    // GNU sparse map: 4 entries at 386, each offset[12] numbytes[12]; isextended at 482;
    // realsize at 483.
    let mut field = [0u8; 12];
    octal(&mut field, 0);
    h[386..398].copy_from_slice(&field);
    octal(&mut field, 512);
    h[398..410].copy_from_slice(&field);
    // Second chunk: zero bytes at the very end, so the map covers the claimed size.
    octal(&mut field, real);
    h[410..422].copy_from_slice(&field);
    octal(&mut field, 0);
    h[422..434].copy_from_slice(&field);
    octal(&mut field, real);
    h[483..495].copy_from_slice(&field);
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend([b'A'; 512]);
    out.extend([0u8; 1024]);
    out
}

#[test]
fn sparse_bombs_are_refused() {
    let f = fixture();
    let bomb = sparse("sparse", 1 << 40);
    refused_with(
        &f,
        "sparse file claiming 1 TiB",
        ImportLimits::default(),
        &mut [(TAR, &mut bomb.as_slice())],
        "declares",
    );
    // Within the default limit but over a configured one: cut off by the limit.
    let bomb = sparse("sparse", 64 << 20);
    refused_with(
        &f,
        "sparse file of 64 MiB, limit 8 MiB",
        small(8 << 20),
        &mut [(TAR, &mut bomb.as_slice())],
        "max_layer_size",
    );
    fsck(&f.path);
    // A sparse file within the limit is imported with its holes as zeros.
    let ok = sparse("sparse", 4096);
    let mut imp = Importer::new(&f.repo);
    imp.apply_layer(TAR, &mut ok.as_slice()).unwrap();
    imp.commit("sparse", vec![], None).unwrap();
}

/// `n` bytes of zeros after a small valid tar: a decompression bomb once compressed.
fn zero_tail_member() -> Vec<u8> {
    vec![0u8; 1 << 20]
}

/// A gzip stream of a small tar followed by `mib` MiB of zeros, built from repeated members so
/// the test never compresses GBs (MultiGzDecoder reads concatenated members like gzip(1)).
fn gzip_bomb(mib: usize) -> Vec<u8> {
    use flate2::{write::GzEncoder, Compression};
    let gz = |data: &[u8]| {
        let mut e = GzEncoder::new(Vec::new(), Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    };
    let mut out = gz(&tar(&[file("hello", b"hello")]));
    let zeros = gz(&zero_tail_member());
    for _ in 0..mib {
        out.extend_from_slice(&zeros);
    }
    out
}

fn zstd_bomb(mib: usize) -> Vec<u8> {
    let mut out = zstd::encode_all(tar(&[file("hello", b"hello")]).as_slice(), 19).unwrap();
    let zeros = zstd::encode_all(zero_tail_member().as_slice(), 19).unwrap();
    for _ in 0..mib {
        out.extend_from_slice(&zeros);
    }
    out
}

#[test]
fn decompression_bombs_are_cut_off_by_the_layer_limit() {
    let f = fixture();
    // 4 GiB of zeros each, from ~4 MB (gzip) and ~100 KB (zstd) of blob; limit 32 MiB.
    let gz = gzip_bomb(4096);
    let zs = zstd_bomb(4096);
    eprintln!("gzip bomb {} bytes, zstd bomb {} bytes", gz.len(), zs.len());
    refused_with(
        &f,
        "gzip bomb",
        small(32 << 20),
        &mut [(TAR_GZ, &mut gz.as_slice())],
        "max_layer_size",
    );
    refused_with(
        &f,
        "zstd bomb",
        small(32 << 20),
        &mut [(TAR_ZST, &mut zs.as_slice())],
        "max_layer_size",
    );
    // Many files, each small, together over the limit: the stream bound catches them.
    let many: Vec<E> = (0..40)
        .map(|i| file(&format!("f{i}"), &[i as u8; 1 << 20]))
        .collect();
    let layer = tar(&many);
    refused_with(
        &f,
        "40 MiB of files, limit 32 MiB",
        small(32 << 20),
        &mut [(TAR, &mut layer.as_slice())],
        "max_layer_size",
    );
    fsck(&f.path);
}

#[test]
fn entry_count_is_limited() {
    let f = fixture();
    let many: Vec<E> = (0..101).map(|i| file(&format!("f{i}"), b"")).collect();
    let layer = tar(&many);
    let limits = ImportLimits {
        max_entries: 100,
        ..ImportLimits::default()
    };
    refused_with(
        &f,
        "101 entries, limit 100",
        limits,
        &mut [(TAR, &mut layer.as_slice())],
        "max_entries",
    );
    fsck(&f.path);
}

#[test]
fn corrupt_streams_are_refused() {
    let good = tar(&[file("a", &[7u8; 3000])]);
    let mut bad_sum = good.clone();
    bad_sum[0] = b'b'; // checksum no longer matches
    refused("bad header checksum", bad_sum, "corrupt");
    refused("truncated in a body", good[..1200].to_vec(), "truncated");
    let f = fixture();
    let mut gz = gzip_bomb(0);
    let n = gz.len();
    gz[n - 5] ^= 0xff; // gzip trailer (ISIZE) corrupted
    refused_with(
        &f,
        "gzip trailer corrupted",
        ImportLimits::default(),
        &mut [(TAR_GZ, &mut gz.as_slice())],
        "layer",
    );
    let zs = zstd_bomb(0);
    let cut = &zs[..zs.len() - 3];
    refused_with(
        &f,
        "zstd cut short",
        ImportLimits::default(),
        &mut [(TAR_ZST, &mut &cut[..])],
        "layer",
    );
    fsck(&f.path);
}

// ---------------------------------------------------------------------------------------------
// OCI documents and digests (otter::source).

const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn manifest_with(config: &str, layers: &str) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{config},"layers":{layers}}}"#
    )
    .into_bytes()
}

fn good_desc(mt: &str) -> String {
    format!(r#"{{"mediaType":"{mt}","digest":"{D}","size":10}}"#)
}

fn manifest_refused(what: &str, bytes: &[u8], needle: &str) {
    use otter::source::oci;
    let res = oci::parse_manifest_or_index(bytes, None).and_then(|k| match k {
        oci::ManifestKind::Manifest(m) => oci::check_image_manifest(&m),
        oci::ManifestKind::Index(_) => Ok(()),
    });
    let err = res.expect_err(what);
    let msg = format!("{err:#}");
    eprintln!("{what}: {msg}");
    assert!(
        msg.contains(needle),
        "{what}: {msg:?} does not say {needle:?}"
    );
}

#[test]
fn hostile_manifests_are_refused() {
    use otter::source::oci;
    let cfg = good_desc("application/vnd.oci.image.config.v1+json");
    let layer = good_desc("application/vnd.oci.image.layer.v1.tar+gzip");
    // The good one parses (so the refusals below are about what was changed).
    oci::parse_manifest_or_index(&manifest_with(&cfg, &format!("[{layer}]")), None).unwrap();

    manifest_refused(
        "schemaVersion as a string",
        br#"{"schemaVersion":"2","config":{},"layers":[]}"#,
        "manifest",
    );
    manifest_refused(
        "layers as an object",
        &manifest_with(&cfg, "{}"),
        "manifest",
    );
    manifest_refused(
        "size as a string",
        &manifest_with(&cfg, &format!("[{}]", layer.replace("10", "\"10\""))),
        "manifest",
    );
    manifest_refused(
        "negative size",
        &manifest_with(&cfg, &format!("[{}]", layer.replace("10", "-1"))),
        "manifest",
    );
    manifest_refused(
        "duplicated key",
        format!(r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{cfg},"config":{cfg},"layers":[]}}"#).as_bytes(),
        "duplicate",
    );
    manifest_refused("not JSON", b"\x00\xff{", "malformed manifest JSON");
    manifest_refused("deeply nested", &[b'['; 100_000], "malformed manifest JSON");
    // Over the 4 MiB manifest limit: refused before parsing.
    let huge = format!("[{}]", vec![layer.as_str(); 60_000].join(","));
    manifest_refused(
        "60k layers, 5 MB",
        &manifest_with(&cfg, &huge),
        "byte limit",
    );
    let e = oci::parse_manifest_or_index(
        &manifest_with(&cfg, "[]"),
        Some("application/vnd.oci.image.index.v1+json"),
    )
    .map(|_| ())
    .expect_err("type confusion");
    assert!(format!("{e:#}").contains("mismatch"), "{e:#}");
    // Configs.
    for (what, bytes) in [
        ("config labels as a list", &br#"{"architecture":"arm64","os":"linux","config":{"Labels":["a"]},"rootfs":{"type":"layers","diff_ids":[]}}"#[..]),
        ("config diff_ids as a string", br#"{"architecture":"arm64","os":"linux","rootfs":{"type":"layers","diff_ids":"x"}}"#),
    ] {
        assert!(oci::parse_config(bytes).is_err(), "{what}");
    }
}

#[test]
fn digest_algorithm_confusion_is_refused() {
    use otter::source::digest::{sha256_hex, verify_bytes};
    let hex = &D["sha256:".len()..];
    for bad in [
        format!("sha512:{hex}{hex}"),
        format!("md5:{}", &hex[..32]),
        format!("SHA256:{hex}"),
        format!("sha256:{}", hex.to_uppercase()),
        format!("sha256:{}", &hex[..63]),
        format!("sha256:{hex}0"),
        format!("sha256:{}g", &hex[..63]),
        format!("sha256:{hex}\0"),
        format!("sha256 :{hex}"),
        hex.to_string(),
        String::new(),
    ] {
        assert!(sha256_hex(&bad).is_err(), "accepted digest {bad:?}");
        let e = verify_bytes("blob", b"x", &bad, None).expect_err(&bad);
        assert!(format!("{e:#}").contains("digest"), "{e:#}");
    }
    // The right algorithm with the wrong value, and the right value with a wrong size.
    let data = b"hello";
    let right = otter::source::digest::sha256_digest(data);
    assert!(verify_bytes("blob", data, D, None).is_err());
    assert!(verify_bytes("blob", data, &right, Some(4)).is_err());
    verify_bytes("blob", data, &right, Some(5)).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Release statements and signatures (otter::verify).

#[test]
fn tampered_statements_and_signatures_are_refused() {
    use otter::verify::{keys::ParsedSignature, ReleaseStatement, TrustedKey, TrustedKeys};
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let stmt = br#"{"manifest_digest":"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef","content_checksum":"fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210","version":"1.2.3","timestamp":1700000000,"import_rules":1}"#;
    let parsed = ReleaseStatement::parse(stmt).unwrap();
    let s = std::str::from_utf8(stmt).unwrap();
    for (what, bad) in [
        ("whitespace", s.replace(",\"version\"", ", \"version\"")),
        (
            "reordered keys",
            s.replace(
                r#""version":"1.2.3","timestamp":1700000000"#,
                r#""timestamp":1700000000,"version":"1.2.3""#,
            ),
        ),
        (
            "duplicated key",
            s.replace(
                r#","import_rules":1}"#,
                r#","import_rules":1,"import_rules":1}"#,
            ),
        ),
        (
            "unknown key",
            s.replace(r#","import_rules":1}"#, r#","import_rules":1,"x":1}"#),
        ),
        (
            "timestamp as a string",
            s.replace("1700000000", "\"1700000000\""),
        ),
        (
            "md5 digest",
            s.replace(
                "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "md5:0123456789abcdef0123456789abcdef",
            ),
        ),
        ("uppercase checksum", s.replace("fedcba", "FEDCBA")),
        ("trailing newline", format!("{s}\n")),
    ] {
        assert!(
            ReleaseStatement::parse(bad.as_bytes()).is_err(),
            "{what} accepted"
        );
    }

    // A real minisign signature over the statement; then tamper with each part.
    let run = |c: &mut std::process::Command| {
        let o = c.output().expect("minisign (apt package minisign)");
        assert!(o.status.success(), "{o:?}");
    };
    let (pk, sk) = (t.join("k.pub"), t.join("k.key"));
    run(std::process::Command::new("minisign")
        .args(["-G", "-W", "-p"])
        .arg(&pk)
        .arg("-s")
        .arg(&sk));
    fs::write(t.join("s.json"), stmt).unwrap();
    run(std::process::Command::new("minisign")
        .args(["-S", "-s"])
        .arg(&sk)
        .arg("-m")
        .arg(t.join("s.json"))
        .arg("-t")
        .arg(parsed.trusted_comment()));
    let sig = fs::read(t.join("s.json.minisig")).unwrap();
    let key = TrustedKey::from_file(&pk).unwrap();
    let keys = TrustedKeys::from_keys(vec![key]);
    let comment = keys.verify(stmt, &sig).unwrap();
    parsed.check_trusted_comment(&comment).unwrap();

    let sig_text = String::from_utf8(sig.clone()).unwrap();
    let lines: Vec<&str> = sig_text.lines().collect();
    // Message changed by one byte.
    let mut msg = stmt.to_vec();
    msg[stmt.len() - 2] = b'2';
    assert!(
        keys.verify(&msg, &sig).is_err(),
        "changed statement verified"
    );
    // Trusted comment changed (it is signed too).
    let forged = sig_text.replace("version=1.2.3", "version=9.9.9");
    assert!(
        keys.verify(stmt, forged.as_bytes()).is_err(),
        "changed trusted comment verified"
    );
    // Signature bytes flipped.
    let mut b = lines[1].as_bytes().to_vec();
    b[20] = if b[20] == b'A' { b'B' } else { b'A' };
    let flipped = sig_text.replace(lines[1], std::str::from_utf8(&b).unwrap());
    assert!(
        keys.verify(stmt, flipped.as_bytes()).is_err(),
        "flipped signature verified"
    );
    // Truncated, extra lines, not UTF-8, empty.
    for bad in [
        sig[..sig.len() / 2].to_vec(),
        [sig.clone(), b"extra line\n".to_vec()].concat(),
        vec![0xff; 200],
        Vec::new(),
    ] {
        assert!(ParsedSignature::parse(&bad).is_err() || keys.verify(stmt, &bad).is_err());
    }
    // A valid signature by another key.
    let (pk2, sk2) = (t.join("o.pub"), t.join("o.key"));
    run(std::process::Command::new("minisign")
        .args(["-G", "-W", "-p"])
        .arg(&pk2)
        .arg("-s")
        .arg(&sk2));
    run(std::process::Command::new("minisign")
        .args(["-S", "-s"])
        .arg(&sk2)
        .arg("-m")
        .arg(t.join("s.json"))
        .arg("-x")
        .arg(t.join("other.minisig")));
    let other = fs::read(t.join("other.minisig")).unwrap();
    assert!(
        keys.verify(stmt, &other).is_err(),
        "signature by an untrusted key verified"
    );
    // A statement whose trusted comment names another version.
    let other_stmt = ReleaseStatement::parse(&s.replace("1.2.3", "1.2.4").into_bytes()).unwrap();
    assert!(other_stmt.check_trusted_comment(&comment).is_err());
}

// ---------------------------------------------------------------------------------------------
// MQTT (otter::fleet): a hostile broker.

#[test]
fn hostile_mqtt_input_is_bounded_and_refused() {
    use otter::fleet::codec::{decode, Frame, Framer, MAX_PACKET_SIZE};
    use otter::fleet::daemon::parse_command;
    // A PUBLISH announcing 256 MiB: skipped as oversized, never buffered.
    let mut f = Framer::new();
    let mut out = Vec::new();
    f.feed(&[0x30, 0xff, 0xff, 0xff, 0x7f], &mut out).unwrap();
    f.feed(&vec![0u8; 1 << 20], &mut out).unwrap();
    assert!(out.is_empty());
    // Five length bytes: a broken stream.
    assert!(Framer::new()
        .feed(&[0x30, 0x80, 0x80, 0x80, 0x80, 0x01], &mut Vec::new())
        .is_err());
    // A packet over the limit becomes Frame::Oversized.
    let mut out = Vec::new();
    let len = MAX_PACKET_SIZE + 1;
    let mut pkt = vec![
        0x30,
        (len & 0x7f) as u8 | 0x80,
        ((len >> 7) & 0x7f) as u8 | 0x80,
        (len >> 14) as u8,
    ];
    pkt.extend([0, 1, b't']);
    pkt.resize(4 + len, b'x');
    Framer::new().feed(&pkt, &mut out).unwrap();
    assert!(
        matches!(out.as_slice(), [Frame::Oversized { .. }]),
        "{out:?}"
    );
    // QoS 3, topic not UTF-8, NUL in topic, CONNACK too long, packets a client never receives.
    for (first, body) in [
        (0x36u8, &b"\x00\x01t\x00\x01x"[..]),
        (0x30, b"\x00\x02\xff\xfex"),
        (0x30, b"\x00\x02a\x00x"),
        (0x20, b"\x00\x00\x00"),
        (0x10, b""),
        (0x80, b"\x00\x01"),
    ] {
        assert!(decode(first, body).is_err(), "{first:#x} {body:?}");
    }
    // Command payloads: huge, deeply nested, duplicated op, unknown fields, bad digests.
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let huge = format!(
        r#"{{"id":"x","op":"check","pad":"{}"}}"#,
        "a".repeat(1 << 20)
    );
    for bad in [
        huge.as_str(),
        nested.as_str(),
        r#"{"id":"x","op":"upgrade","digest":"sha512:00"}"#,
        r#"{"id":"x","op":"upgrade","digest":"sha256:ABCDEF"}"#,
        r#"{"id":"x","op":"switch","image":"docker://h/r:1","extra":1}"#,
        r#"{"id":"x","op":"rollback","reboot":"yes"}"#,
        r#"{"op":"check"}"#,
        r#"{"id":"x","op":"format-disk"}"#,
        "\u{0}",
    ] {
        assert!(
            parse_command(bad.as_bytes()).is_err(),
            "accepted {:.80}",
            bad
        );
    }
}
