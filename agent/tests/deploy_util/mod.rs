//! Helpers for the sysroot tests: a tmpfs-backed sysroot (so that `ostree admin deploy`'s
//! FIFREEZE never touches the host's root filesystem), OS trees, and the real `ostree` CLI.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `otter` binary on `sysroot` with an empty config and no booted-deployment override.
pub fn otter(sysroot: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_otter"))
        .arg(format!("--sysroot={}", sysroot.display()))
        .arg("--config=/dev/null")
        .args(args)
        .env_remove("OTTER_BOOTED_DEPLOYMENT")
        .output()
        .unwrap()
}

/// Assert that an `otter` run succeeded (printing its output if not); returns stdout.
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "otter failed: {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Run a tool, panic with its output if it fails; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {:?}: {e} (install the apt package: ostree / umoci / skopeo / util-linux)",
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

/// A temp dir with a tmpfs mounted on it; unmounted (lazily) and removed on drop.
pub struct Tmpfs {
    pub dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn new() -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "mode=0755", "otter-test"])
            .arg(dir.path()));
        Tmpfs { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// `ostree` with extra args, as a Command (env: mutable deployments so no chattr +i).
pub fn ostree_cmd(args: &[&str]) -> Command {
    let mut c = Command::new("ostree");
    c.args(args);
    c.env_remove("OTTER_BOOTED_DEPLOYMENT");
    c
}

pub fn ostree(args: &[&str]) -> String {
    run(&mut ostree_cmd(args))
}

pub fn admin_status(sysroot: &Path) -> String {
    ostree(&[
        "admin",
        "status",
        &format!("--sysroot={}", sysroot.display()),
    ])
}

/// (stateroot, csum.serial) in the order `ostree admin status` prints them.
pub fn admin_status_list(sysroot: &Path) -> Vec<(String, String)> {
    admin_status(sysroot)
        .lines()
        .filter(|l| !l.starts_with("    ") && !l.trim().is_empty())
        .map(|l| {
            let mut it = l.trim_start_matches(['*', ' ']).split_whitespace();
            (it.next().unwrap().to_owned(), it.next().unwrap().to_owned())
        })
        .collect()
}

/// Build an OS tree like ref §5: kernel + initramfs, os-release, /usr/etc defaults, empty
/// mount points. `tag` goes into the kernel so different versions have different bootcsums
/// when `new_kernel` is true.
pub fn make_os_tree(dir: &Path, version: &str, etc_default: &str, kernel: &str) {
    let w = |p: &str, s: &str| {
        let path = dir.join(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, s).unwrap();
    };
    w("usr/bin/hello", "#!/bin/sh\necho hello\n");
    fs::set_permissions(dir.join("usr/bin/hello"), fs::Permissions::from_mode(0o755)).unwrap();
    w(
        "usr/lib/modules/6.1.0-test/vmlinuz",
        &format!("kernel-{kernel}\n"),
    );
    w(
        "usr/lib/modules/6.1.0-test/initramfs.img",
        &format!("initramfs-{kernel}\n"),
    );
    w(
        "usr/lib/os-release",
        &format!("NAME=TestOS\nID=testos\nPRETTY_NAME=\"TestOS {version}\"\n"),
    );
    w("usr/etc/myconf", &format!("default-{etc_default}\n"));
    w(
        "usr/etc/untouched",
        &format!("keep-default-{etc_default}\n"),
    );
    w("usr/etc/todelete", "delete me\n");
    w("usr/etc/sub/nested", "nested\n");
    symlink("../lib/os-release", dir.join("usr/etc/os-release")).unwrap();
    w("var/lib/seeded", &format!("seeded-{version}\n"));
    for d in ["boot", "dev", "proc", "run", "sys", "sysroot", "tmp"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    symlink("sysroot/ostree", dir.join("ostree")).unwrap();
    for l in ["bin", "lib", "sbin"] {
        symlink(format!("usr/{l}"), dir.join(l)).unwrap();
    }
}

/// Commit a tree into a repo with the real CLI; returns the commit checksum.
pub fn commit_tree(repo: &Path, branch: &str, tree: &Path, version: &str) -> String {
    ostree(&[
        "commit",
        &format!("--repo={}", repo.display()),
        &format!("--branch={branch}"),
        &format!("--tree=dir={}", tree.display()),
        "--no-bindings",
        &format!("--add-metadata-string=version={version}"),
        "--add-metadata-string=otter.image.reference=oci:/test:1",
        "--add-metadata-string=otter.image.digest=sha256:0000000000000000000000000000000000000000000000000000000000000000",
        &format!("--subject=v{version}"),
    ])
    .trim()
    .to_owned()
}

/// Every path under `root` with type, mode, owner, size, symlink target, content hash for small
/// files; for before/after comparisons.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    snap(root, root, &mut out);
    out
}

fn snap(root: &Path, p: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let md = fs::symlink_metadata(p).unwrap();
    let rel = p.strip_prefix(root).unwrap().to_owned();
    let desc = if md.file_type().is_symlink() {
        format!("l {}", fs::read_link(p).unwrap().display())
    } else if md.is_dir() {
        format!("d {:o} {}:{}", md.mode(), md.uid(), md.gid())
    } else {
        let data = fs::read(p).unwrap();
        format!(
            "f {:o} {}:{} {:?}",
            md.mode(),
            md.uid(),
            md.gid(),
            sha(&data)
        )
    };
    out.insert(rel, desc);
    if md.is_dir() {
        for e in fs::read_dir(p).unwrap() {
            snap(root, &e.unwrap().path(), out);
        }
    }
}

fn sha(d: &[u8]) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(d);
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OCI layout with tags v1 and v2 (umoci), bootable-looking trees with different kernels.
pub fn build_images(work: &Path) -> PathBuf {
    let layout = work.join("layout");
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    for v in ["1", "2"] {
        let img = format!("{}:v{v}", layout.display());
        run(Command::new("umoci").args(["new", "--image", &img]));
        let bundle = work.join(format!("bundle-{v}"));
        run(Command::new("umoci")
            .args(["unpack", "--image", &img])
            .arg(&bundle));
        let rootfs = bundle.join("rootfs");
        make_os_tree(&rootfs, v, v, v);
        fs::rename(rootfs.join("usr/etc"), rootfs.join("etc")).unwrap();
        run(Command::new("umoci")
            .args(["repack", "--image", &img])
            .arg(&bundle));
        run(Command::new("umoci").args([
            "config",
            "--image",
            &img,
            &format!("--config.label=org.opencontainers.image.version={v}"),
        ]));
    }
    layout
}
