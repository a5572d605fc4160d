//! Helpers shared by the ostree store and import tests: run tools, snapshot trees.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

/// Run a tool, panic with its output if it fails; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {:?}: {e} (install the apt package: ostree / umoci / skopeo / python3)",
            cmd.get_program()
        )
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn ostree(repo: &Path, args: &[&str]) -> String {
    let mut c = Command::new("ostree");
    c.args(args).arg(format!("--repo={}", repo.display()));
    run(&mut c)
}

pub fn fsck(repo: &Path) {
    let out = ostree(repo, &["fsck"]);
    assert!(out.contains("no errors found"), "fsck: {out}");
}

pub fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "lsetxattr {} {name}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

pub fn xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 65536];
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n >= 0, "llistxattr {}", p.display());
    buf.truncate(n as usize);
    let mut out = BTreeMap::new();
    for name in buf.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cn = CString::new(name).unwrap();
        let mut v = vec![0u8; 65536];
        let n = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        assert!(n >= 0);
        v.truncate(n as usize);
        let name = String::from_utf8(name.to_vec()).unwrap();
        if name == "user.ostreemeta" || name.starts_with("security.") {
            continue;
        }
        out.insert(name, v);
    }
    out
}

#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Entry {
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub content: Vec<u8>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

#[derive(Clone, Copy)]
pub struct Opts {
    pub owners: bool,
    pub xattrs: bool,
    pub root: bool,
}

pub const FULL: Opts = Opts {
    owners: true,
    xattrs: true,
    root: true,
};

/// Every entry under `root`: kind, permission bits, owner, content (or target), xattrs.
pub fn snapshot(root: &Path, o: Opts) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    walk(root, root, o, &mut out);
    if !o.root {
        out.remove("");
    }
    out
}

fn walk(root: &Path, p: &Path, o: Opts, out: &mut BTreeMap<String, Entry>) {
    let md = fs::symlink_metadata(p).unwrap();
    let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
    let ft = md.file_type();
    let (kind, content) = if ft.is_dir() {
        ('d', Vec::new())
    } else if ft.is_symlink() {
        (
            'l',
            fs::read_link(p).unwrap().as_os_str().as_bytes().to_vec(),
        )
    } else if ft.is_file() {
        ('f', fs::read(p).unwrap())
    } else {
        ('?', Vec::new())
    };
    out.insert(
        rel,
        Entry {
            kind,
            mode: if kind == 'l' {
                0o777
            } else {
                md.mode() & 0o7777
            },
            uid: if o.owners { md.uid() } else { 0 },
            gid: if o.owners { md.gid() } else { 0 },
            content,
            xattrs: if o.xattrs { xattrs(p) } else { BTreeMap::new() },
        },
    );
    if ft.is_dir() {
        for e in fs::read_dir(p).unwrap() {
            walk(root, &e.unwrap().path(), o, out);
        }
    }
}

/// Assert two snapshots are equal, naming the first differing path.
pub fn assert_same(a: &BTreeMap<String, Entry>, b: &BTreeMap<String, Entry>, what: &str) {
    let keys_a: Vec<_> = a.keys().collect();
    let keys_b: Vec<_> = b.keys().collect();
    for k in a.keys() {
        assert!(
            b.contains_key(k),
            "{what}: {k:?} missing on the right; right has {keys_b:?}"
        );
    }
    for k in b.keys() {
        assert!(
            a.contains_key(k),
            "{what}: {k:?} missing on the left; left has {keys_a:?}"
        );
    }
    for (k, ea) in a {
        let eb = &b[k];
        assert_eq!(ea, eb, "{what}: entry {k:?} differs");
    }
}

/// A test tree with every feature the store must keep.
pub fn make_tree(dir: &Path) {
    use std::os::unix::fs::{lchown, symlink, PermissionsExt};
    let w = |p: &str, data: &[u8], mode: u32| {
        let path = dir.join(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, data).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    };
    fs::create_dir_all(dir).unwrap();
    w("hello.txt", b"hello\n", 0o644);
    set_xattr(&dir.join("hello.txt"), "user.foo", b"bar");
    w("run.sh", b"#!/bin/sh\necho hi\n", 0o755);
    w("setuid", b"x", 0o4755);
    w("sub/empty-file", b"", 0o600);
    w("sub/owned", b"owned\n", 0o640);
    lchown(dir.join("sub/owned"), Some(1234), Some(5678)).unwrap();
    w("sub/deep/a/b/c", b"deep", 0o444);
    w("\u{e9} x", b"utf8 name", 0o644);
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    w("big.bin", &big, 0o644);
    symlink("hello.txt", dir.join("link")).unwrap();
    symlink("/etc/passwd", dir.join("abs-link")).unwrap();
    symlink("does/not/exist", dir.join("sub/dangling")).unwrap();
    lchown(dir.join("sub/dangling"), Some(42), Some(43)).unwrap();
    fs::create_dir_all(dir.join("empty")).unwrap();
    fs::create_dir_all(dir.join("private")).unwrap();
    fs::set_permissions(dir.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    set_xattr(&dir.join("private"), "user.dir", b"1");
    lchown(dir.join("private"), Some(7), Some(8)).unwrap();
    fs::create_dir_all(dir.join("sticky")).unwrap();
    fs::set_permissions(dir.join("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
}

/// `ostree show` ContentChecksum of a ref/commit.
pub fn ostree_content_checksum(repo: &Path, rev: &str) -> String {
    let out = ostree(repo, &["show", rev]);
    out.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("ContentChecksum:")
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no ContentChecksum in `ostree show`: {out}"))
}
