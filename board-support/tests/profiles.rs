//! Board profiles checked against the real tools: libubootenv's fw_printenv reads an env through
//! the fw_env.config a profile produces, sfdisk accepts the layout, and apply_to_sysroot keeps a
//! sysroot made by the real `ostree admin deploy` valid for `ostree admin status`.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use otter_board::{builtin_names, builtin_text, Bootloader, EntryStyle, Profile, Size};

fn tool(name: &str, package: &str) -> Command {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .unwrap();
    assert!(
        found.status.success(),
        "{name} not found: install the Debian package {package} (scripts/setup.sh)"
    );
    Command::new(name)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn every_builtin_profile_loads_and_is_named_after_its_file() {
    let names = builtin_names();
    for want in [
        "qemu-aarch64-virt",
        "raspberrypi4",
        "generic-uefi-aarch64",
        "generic-uefi-x86_64",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for n in names {
        let p = Profile::builtin(n).unwrap();
        assert_eq!(p.name, n);
        assert!(
            p.kernel_args.iter().any(|a| a.starts_with("console=")),
            "{n}"
        );
        assert!(p.has_entry_style(EntryStyle::Bls));
        assert_eq!(p.bootcount_kind(), p.bootloader.backend_kind());
        assert_eq!(p.partitions.last().unwrap().size, Size::Rest);
    }
    let q = Profile::builtin("qemu-aarch64-virt").unwrap();
    assert_eq!(q.bootloader, Bootloader::UBoot);
    assert_eq!(q.bootcount, "uboot:/etc/fw_env.config");
    assert!(q.has_entry_style(EntryStyle::UEnv));
    assert_eq!(
        q.uboot.as_ref().unwrap().env_file,
        "/boot/firmware/uboot.env"
    );
    let g = Profile::builtin("generic-uefi-x86_64").unwrap();
    assert_eq!(g.bootloader, Bootloader::Grub);
    assert!(Profile::builtin("nope")
        .unwrap_err()
        .to_string()
        .contains("qemu-aarch64-virt"));
}

#[test]
fn broken_profiles_are_rejected_with_where_and_why() {
    let base = builtin_text("qemu-aarch64-virt").unwrap();
    let cases: &[(&str, &str, &str)] = &[
        (
            "bootcount = uboot:/etc/fw_env.config",
            "bootcount = grubenv:/boot/grubenv",
            "'uboot:' backend",
        ),
        ("arch = aarch64", "arch = riscv", "expected aarch64"),
        ("max-tries = 3", "max-tries = 0", "1 to 15"),
        (
            "max-tries = 3",
            "max-tries = 3\ncolour = blue",
            "unknown key \"colour\"",
        ),
        ("entries = bls uenv", "entries = uenv", "'bls' is required"),
        (
            "env-size = 0x4000",
            "env-size = 0x2000",
            "differs from env-size",
        ),
        ("0x0 0x4000", "0x0 16384x", "always hex"),
        (
            "partitions = firmware root",
            "partitions = firmware extra root",
            "no [partition.extra]",
        ),
        (
            "partitions = firmware root",
            "partitions = root firmware",
            "only the last partition",
        ),
        ("size = 32M", "size = 32", "size like 32M"),
        (
            "boot-partition = root",
            "boot-partition = firmware",
            "symlinks",
        ),
        (
            "panic=1 quiet\n",
            "panic=1 quiet ostree=/x\n",
            "must not contain ostree=",
        ),
        ("[layout]", "[layuot]", "missing section [layout]"),
        (
            "mount = /boot/firmware",
            "mount = boot/firmware",
            "absolute path",
        ),
        (
            "mount = /boot/firmware",
            "mount = /boot/fw",
            "not on a vfat partition",
        ),
        ("name = qemu-aarch64-virt", "name = Qemu", "lowercase"),
    ];
    for (from, to, want) in cases {
        assert!(base.contains(from), "{from}");
        let text = base.replacen(from, to, 1);
        let err = format!("{:#}", Profile::parse("t.conf", &text).unwrap_err());
        assert!(err.contains(want), "{from} -> {to}: {err}");
        assert!(err.contains("t.conf"), "{err}");
    }
    // A file on disk loads the same way as a builtin.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("myboard.conf");
    std::fs::write(
        &f,
        base.replace("name = qemu-aarch64-virt", "name = myboard"),
    )
    .unwrap();
    assert_eq!(Profile::find(f.to_str().unwrap()).unwrap().name, "myboard");
}

#[test]
fn fw_env_config_from_profile_is_read_by_fw_printenv() {
    let dir = tempfile::tempdir().unwrap();
    for n in ["qemu-aarch64-virt", "raspberrypi4"] {
        let p = Profile::builtin(n).unwrap();
        let u = p.uboot.as_ref().unwrap();
        let env = dir.path().join(format!("{n}.env"));
        let vars = dir.path().join("vars.txt");
        std::fs::write(&vars, "BOOT_ORDER=A B\nBOOT_A_LEFT=3\n").unwrap();
        run(tool("mkenvimage", "u-boot-tools")
            .arg("-s")
            .arg(format!("0x{:x}", u.env_size))
            .arg("-o")
            .arg(&env)
            .arg(&vars));
        // Point the profile's config at our file instead of /boot/firmware/uboot.env.
        let cfg_text = p
            .file("fw_env.config")
            .unwrap()
            .replace(&u.env_file, env.to_str().unwrap());
        let cfg = dir.path().join("fw_env.config");
        std::fs::write(&cfg, cfg_text).unwrap();
        let out = run(tool("fw_printenv", "libubootenv-tool").arg("-c").arg(&cfg));
        assert!(out.contains("BOOT_ORDER=A B"), "{out}");
        assert!(out.contains("BOOT_A_LEFT=3"), "{out}");
    }
}

#[test]
fn sfdisk_accepts_every_layout() {
    let dir = tempfile::tempdir().unwrap();
    for n in builtin_names() {
        let p = Profile::builtin(n).unwrap();
        let disk = dir.path().join(format!("{n}.img"));
        let f = std::fs::File::create(&disk).unwrap();
        f.set_len(1024 * 1024 * 1024).unwrap();
        let mut child = tool("sfdisk", "fdisk")
            .arg("--no-reread")
            .arg("--no-tell-kernel")
            .arg(&disk)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(p.sfdisk_script().as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "{n}");
        let json: String = run(tool("sfdisk", "fdisk").arg("--json").arg(&disk));
        assert_eq!(
            json.matches("\"node\"").count(),
            p.partitions.len(),
            "{n}: {json}"
        );
        if let Size::MiB(m) = p.partitions[0].size {
            assert!(
                json.contains(&format!("\"size\": {}", m * 2048)),
                "{n}: {json}"
            );
        }
    }
}

/// Deploy a tiny tree with the real `ostree admin` inside a private tmpfs (ostree freezes the
/// filesystem holding /boot, so never on the host's root), then copy the sysroot out.
fn ostree_sysroot(dst: &Path) {
    tool("ostree", "ostree");
    let script = r#"
set -e
dst=$1
mount -t tmpfs tmpfs "$dst.mnt"
sr=$dst.mnt/sysroot; t=$dst.mnt/tree
mkdir -p $sr $t/usr/lib/modules/6.1.0-test $t/usr/etc $t/usr/bin
for d in boot dev proc run sys sysroot tmp var; do mkdir -p $t/$d; done
printf 'kernel\n' > $t/usr/lib/modules/6.1.0-test/vmlinuz
printf 'initramfs\n' > $t/usr/lib/modules/6.1.0-test/initramfs.img
printf 'PRETTY_NAME="Test OS"\n' > $t/usr/lib/os-release
ostree admin init-fs $sr >/dev/null
ostree admin os-init testos --sysroot=$sr >/dev/null
ostree commit --repo=$sr/ostree/repo -b testos/stable --add-metadata-string=version=1 -s v1 $t >/dev/null
ostree admin deploy --sysroot=$sr --os=testos testos/stable >/dev/null
ostree commit --repo=$sr/ostree/repo -b testos/stable --add-metadata-string=version=2 -s v2 $t >/dev/null
ostree admin deploy --sysroot=$sr --os=testos --retain testos/stable >/dev/null
cp -a $sr/. "$dst"
umount "$dst.mnt"
"#;
    std::fs::create_dir_all(dst).unwrap();
    std::fs::create_dir_all(format!("{}.mnt", dst.display())).unwrap();
    run(tool("unshare", "util-linux")
        .args(["-m", "bash", "-c", script, "x"])
        .arg(dst));
}

#[test]
fn apply_to_sysroot_writes_fw_env_kargs_and_uenv_that_ostree_still_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let sr = dir.path().join("sysroot");
    ostree_sysroot(&sr);
    let p = Profile::builtin("qemu-aarch64-virt").unwrap();
    let deploy_dir = sr.join("ostree/deploy/testos/deploy");
    let mut deps: Vec<_> = std::fs::read_dir(&deploy_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    deps.sort();
    assert_eq!(deps.len(), 2);
    let refs: Vec<&Path> = deps.iter().map(|p| p.as_path()).collect();
    let applied = otter_board::apply_to_sysroot(&p, &sr, &refs).unwrap();
    assert!(applied.files.len() >= 5, "{applied:?}");
    for d in &deps {
        let cfg = std::fs::read_to_string(d.join("etc/fw_env.config")).unwrap();
        assert!(cfg.contains("/boot/firmware/uboot.env 0x0 0x4000"), "{cfg}");
    }
    let uenv = std::fs::read_to_string(sr.join("boot/loader/uEnv.txt")).unwrap();
    let lines: Vec<&str> = uenv.lines().collect();
    assert!(
        lines[0].starts_with("kernel_image=/ostree/testos-"),
        "{uenv}"
    );
    let bootargs = lines.iter().find(|l| l.starts_with("bootargs=")).unwrap();
    assert!(
        bootargs.contains("ostree=/ostree/boot.") && bootargs.contains("root=/dev/vda2"),
        "{uenv}"
    );
    assert!(lines.iter().any(|l| l.starts_with("bootargs2=")), "{uenv}");
    assert!(
        lines.iter().any(|l| l.starts_with("kernel_image2=")),
        "{uenv}"
    );
    // The default entry (version 2) is the first one in uEnv.txt.
    let entries = otter_board::read_entries(&sr.join("boot/loader")).unwrap();
    assert_eq!(entries[0].get("version"), Some("2"));
    assert!(
        bootargs.ends_with(entries[0].get("options").unwrap()),
        "{uenv}"
    );
    // The real ostree still lists both deployments with the edited entries.
    let status = run(tool("ostree", "ostree")
        .arg("admin")
        .arg("status")
        .arg(format!("--sysroot={}", sr.display())));
    assert_eq!(status.matches("testos ").count(), 2, "{status}");
    // Idempotent: a second run changes only uEnv.txt (rewritten with the same text).
    let again = otter_board::apply_to_sysroot(&p, &sr, &refs).unwrap();
    assert_eq!(again.files.len(), 1, "{again:?}");
    assert_eq!(
        std::fs::read_to_string(sr.join("boot/loader/uEnv.txt")).unwrap(),
        uenv
    );
    // A sysroot without entries is refused and left alone.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert!(otter_board::apply_to_sysroot(&p, &empty, &[])
        .unwrap_err()
        .to_string()
        .contains("otter install"));
}
