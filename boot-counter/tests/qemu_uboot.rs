//! Real bootloader: Debian's U-Boot for qemu_arm64 (no CONFIG_BOOTCOUNT_LIMIT) runs our
//! boot.scr from a FAT partition (made without root: mkfs.vfat -C + mtools), counts in the
//! uboot.env our backend wrote, and falls back to ostree's rollback entry (uEnv.txt
//! kernel_image2). No kernel: the script echoes the entry, fails to load it and resets
//! (QEMU -no-reboot exits). The env is read back with our backend and fw_printenv.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{fw_printenv, otter_boot, require, run_ok, write_file};
use otter_boot::uboot::{crc32, Env};
use otter_boot::Backend;

const UBOOT_BIN: &str = "/usr/lib/u-boot/qemu_arm64/u-boot.bin";
const PART_OFFSET: u64 = 1 << 20;
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Kills and reaps the QEMU process it owns.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Disk {
    dir: PathBuf,
    image: PathBuf,
    boots: u32,
}

impl Disk {
    fn mtools_img(&self) -> String {
        format!("{}@@{PART_OFFSET}", self.image.display())
    }

    fn new(dir: &Path, files: &[(&Path, &str)]) -> Disk {
        let part = dir.join("part.img");
        run_ok(
            Command::new(require("mkfs.vfat", "dosfstools"))
                .arg("-C")
                .arg(&part)
                .arg("16384"),
        );
        let mmd = require("mmd", "mtools");
        run_ok(
            Command::new(&mmd)
                .arg("-i")
                .arg(&part)
                .args(["::/boot", "::/boot/loader"]),
        );
        for (src, dst) in files {
            run_ok(
                Command::new(require("mcopy", "mtools"))
                    .arg("-i")
                    .arg(&part)
                    .arg(src)
                    .arg(format!("::{dst}")),
            );
        }
        let image = dir.join("disk.img");
        let mut data = vec![0u8; PART_OFFSET as usize];
        data.extend_from_slice(&std::fs::read(&part).unwrap());
        std::fs::write(&image, data).unwrap();
        let mut sf = Command::new(require("sfdisk", "fdisk"));
        sf.arg("-q")
            .arg(&image)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = sf.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"start=2048, type=c\n")
            .unwrap();
        assert!(child.wait().unwrap().success(), "sfdisk failed");
        Disk {
            dir: dir.to_path_buf(),
            image,
            boots: 0,
        }
    }

    fn copy_out(&self, name: &str, dest: &Path) {
        run_ok(
            Command::new(require("mcopy", "mtools"))
                .args(["-n", "-o", "-i"])
                .arg(self.mtools_img())
                .arg(format!("::/{name}"))
                .arg(dest),
        );
    }

    fn copy_in(&self, src: &Path, name: &str) {
        run_ok(
            Command::new(require("mcopy", "mtools"))
                .args(["-o", "-i"])
                .arg(self.mtools_img())
                .arg(src)
                .arg(format!("::/{name}")),
        );
    }

    /// One power-on: returns the `otter:` lines U-Boot printed.
    fn boot(&mut self) -> Vec<String> {
        self.boots += 1;
        let log = self.dir.join(format!("serial-{}.log", self.boots));
        let out = std::fs::File::create(self.dir.join(format!("qemu-{}.out", self.boots))).unwrap();
        let child = Command::new(require("qemu-system-aarch64", "qemu-system-arm"))
            .args([
                "-M",
                "virt",
                "-cpu",
                "cortex-a57",
                "-m",
                "256",
                "-nic",
                "none",
                "-no-reboot",
            ])
            .args(["-display", "none", "-monitor", "none"])
            .arg("-serial")
            .arg(format!("file:{}", log.display()))
            .args(["-bios", UBOOT_BIN])
            .arg("-drive")
            .arg(format!(
                "if=none,file={},format=raw,id=d0",
                self.image.display()
            ))
            .args(["-device", "virtio-blk-device,drive=d0"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut guard = Guard(child);
        let start = Instant::now();
        loop {
            if let Some(st) = guard.0.try_wait().unwrap() {
                assert!(st.success(), "qemu exited with {st}");
                break;
            }
            if start.elapsed() > BOOT_TIMEOUT {
                let serial = std::fs::read_to_string(&log).unwrap_or_default();
                panic!(
                    "boot {} did not finish in {BOOT_TIMEOUT:?}; serial:\n{serial}",
                    self.boots
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let serial = String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned();
        let lines: Vec<String> = serial
            .lines()
            .filter(|l| l.starts_with("otter:"))
            .map(|l| l.trim().to_string())
            .collect();
        assert!(
            !lines.is_empty(),
            "our boot script did not run; serial:\n{serial}"
        );
        lines
    }
}

#[test]
fn uboot_counts_down_and_falls_back_to_the_rollback_entry() {
    assert!(
        Path::new(UBOOT_BIN).exists(),
        "{UBOOT_BIN} missing: install the apt package `u-boot-qemu`"
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let scr = dir.join("boot.scr");
    let cmd = Path::new(env!("CARGO_MANIFEST_DIR")).join("u-boot/boot.cmd");
    run_ok(
        Command::new(require("mkimage", "u-boot-tools"))
            .args(["-A", "arm64", "-T", "script", "-C", "none", "-d"])
            .arg(&cmd)
            .arg(&scr),
    );

    // Userspace side: fw_env.config names the host copy of the FAT partition's uboot.env.
    let env = dir.join("uboot.env");
    let cfg = dir.join("fw_env.config");
    write_file(&cfg, &format!("{} 0x0 0x4000\n", env.display()));
    let spec = format!("uboot:{}", cfg.display());
    run_ok(
        otter_boot()
            .arg("--backend")
            .arg(&spec)
            .args(["arm", "--tries", "3"]),
    );

    // ostree's U-Boot config: default (new) and rollback (old) deployments.
    let uenv = dir.join("uEnv.txt");
    write_file(
        &uenv,
        "kernel_image=/ostree/os-new/vmlinuz-6.1\nramdisk_image=/ostree/os-new/initramfs-6.1.img\nbootargs=ostree=/ostree/boot.1/os/new/0\n\
         kernel_image2=/ostree/os-old/vmlinuz-6.1\nramdisk_image2=/ostree/os-old/initramfs-6.1.img\nbootargs2=ostree=/ostree/boot.1/os/old/0\n",
    );
    let mut disk = Disk::new(
        dir,
        &[
            (&scr, "/boot.scr"),
            (&env, "/uboot.env"),
            (&uenv, "/boot/loader/uEnv.txt"),
        ],
    );
    let backend = otter_boot::backend_from_spec(&spec).unwrap();

    for n in 1..=4u32 {
        let lines = disk.boot();
        disk.copy_out("uboot.env", &env);
        let st = backend.state().unwrap();
        let expect_entry = if n <= 3 {
            "otter: booting entry default: /ostree/os-new/vmlinuz-6.1"
        } else {
            "otter: booting entry rollback: /ostree/os-old/vmlinuz-6.1"
        };
        assert!(
            lines.iter().any(|l| l == expect_entry),
            "boot {n}: {lines:#?}"
        );
        assert_eq!(
            fw_printenv(&cfg),
            [
                format!("bootcount={n}"),
                "bootlimit=3".into(),
                "upgrade_available=1".into()
            ],
            "boot {n}"
        );
        if n <= 3 {
            assert!(st.armed && !st.fell_back, "boot {n}: {st:?}");
            assert_eq!(st.tries_left, Some(3 - n));
        } else {
            assert!(st.fell_back, "boot {n}: {st:?}");
        }
        if n == 1 {
            // U-Boot's `env export -c` bytes equal what our writer produces for the same variables.
            let data = std::fs::read(&env).unwrap();
            let mut ours = Env::default();
            for (k, v) in [
                ("bootcount", "1"),
                ("bootlimit", "3"),
                ("upgrade_available", "1"),
            ] {
                ours.set(k, v).unwrap();
            }
            let body = ours.to_data(0x4000 - 4).unwrap();
            assert_eq!(&data[4..], &body[..]);
            assert_eq!(
                u32::from_le_bytes(data[..4].try_into().unwrap()),
                crc32(&body)
            );
        }
    }
    // Fallback boots keep falling back without counting further.
    let lines = disk.boot();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("otter: booting entry rollback")),
        "{lines:#?}"
    );
    disk.copy_out("uboot.env", &env);
    assert_eq!(fw_printenv(&cfg)[0], "bootcount=4");

    // Userspace on the fallback boot: check rolls back (recorded) and clears the counter; the
    // rollback rewrote uEnv.txt so the old deployment is the default.
    let root = dir.join("root");
    let conf = dir.join("otter.conf");
    let log = dir.join("rollback.log");
    write_file(
        &conf,
        &format!(
            "[boot]\nbackend = \"{spec}\"\nrollback-command = \"echo rolled-back >> {}\"\n",
            log.display()
        ),
    );
    run_ok(
        otter_boot()
            .arg("--config")
            .arg(&conf)
            .args(["check", "--no-reboot", "--root"])
            .arg(&root),
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "rolled-back\n");
    assert_eq!(
        fw_printenv(&cfg),
        ["bootcount=0", "bootlimit=3", "upgrade_available=0"]
    );
    disk.copy_in(&env, "uboot.env");
    write_file(&uenv, "kernel_image=/ostree/os-old/vmlinuz-6.1\nbootargs=ostree=/ostree/boot.0/os/old/0\nkernel_image2=/ostree/os-new/vmlinuz-6.1\n");
    disk.copy_in(&uenv, "boot/loader/uEnv.txt");
    let before = std::fs::read(&env).unwrap();
    let lines = disk.boot();
    assert!(
        lines
            .iter()
            .any(|l| l == "otter: booting entry default: /ostree/os-old/vmlinuz-6.1"),
        "{lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("otter: saved")),
        "not counting when nothing is on trial: {lines:#?}"
    );
    disk.copy_out("uboot.env", &env);
    assert_eq!(
        std::fs::read(&env).unwrap(),
        before,
        "U-Boot did not rewrite the env"
    );
}
