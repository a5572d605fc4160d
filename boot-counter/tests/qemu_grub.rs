//! Real bootloader: Debian's GRUB 2.06 (arm64-efi, which has no `increment` module) under
//! AAVMF runs our counting snippet with the grubenv our backend wrote, counts down with
//! `save_env` and falls back to menu entry 1. The entries echo and `halt` (QEMU exits).
//! Needs qemu-efi-aarch64 and GRUB's arm64-efi modules unpacked by scripts/setup.sh.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{otter_boot, require, run_ok, write_file};

const AAVMF_CODE: &str = "/usr/share/AAVMF/AAVMF_CODE.fd";
const AAVMF_VARS: &str = "/usr/share/AAVMF/AAVMF_VARS.fd";
const PART_OFFSET: u64 = 1 << 20;
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn grub_modules() -> PathBuf {
    let dir = std::env::var_os("OTTER_GRUB_ARM64_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/local/lib/otter-test/grub-arm64-efi"));
    assert!(
        dir.join("normal.mod").exists(),
        "GRUB arm64-efi modules missing in {}: run scripts/setup.sh (unpacks grub-efi-arm64-bin:arm64) or set OTTER_GRUB_ARM64_DIR",
        dir.display()
    );
    dir
}

fn editenv_list(path: &Path) -> String {
    run_ok(
        Command::new(require("grub-editenv", "grub-common"))
            .arg(path)
            .arg("list"),
    )
}

struct Machine {
    dir: PathBuf,
    image: PathBuf,
    vars: PathBuf,
    boots: u32,
}

impl Machine {
    fn img(&self) -> String {
        format!("{}@@{PART_OFFSET}", self.image.display())
    }

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
                "512",
                "-nic",
                "none",
                "-no-reboot",
            ])
            .args(["-display", "none", "-monitor", "none"])
            .arg("-serial")
            .arg(format!("file:{}", log.display()))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,readonly=on,file={AAVMF_CODE}"
            ))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", self.vars.display()))
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
        while guard.0.try_wait().unwrap().is_none() {
            if start.elapsed() > BOOT_TIMEOUT {
                let serial =
                    String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
                panic!(
                    "boot {} did not finish in {BOOT_TIMEOUT:?}; serial:\n{serial}",
                    self.boots
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let serial = String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned();
        let lines: Vec<String> = serial
            .split(['\n', '\r'])
            .filter_map(|l| l.find("otter-grub:").map(|i| l[i..].trim().to_string()))
            .collect();
        assert!(
            !lines.is_empty(),
            "GRUB did not run our grub.cfg; serial:\n{serial}"
        );
        lines
    }

    fn copy_out(&self, dest: &Path) {
        run_ok(
            Command::new(require("mcopy", "mtools"))
                .args(["-n", "-o", "-i"])
                .arg(self.img())
                .arg("::/EFI/BOOT/grubenv")
                .arg(dest),
        );
    }

    fn copy_in(&self, src: &Path) {
        run_ok(
            Command::new(require("mcopy", "mtools"))
                .args(["-o", "-i"])
                .arg(self.img())
                .arg(src)
                .arg("::/EFI/BOOT/grubenv"),
        );
    }
}

#[test]
fn grub_counts_down_and_falls_back_to_entry_1() {
    assert!(
        Path::new(AAVMF_CODE).exists(),
        "{AAVMF_CODE} missing: install the apt package `qemu-efi-aarch64`"
    );
    let modules = grub_modules();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    // GRUB image: no `increment` module, as on Debian.
    let efi = dir.join("BOOTAA64.EFI");
    run_ok(
        Command::new(require("grub-mkimage", "grub-common"))
            .args(["-O", "arm64-efi", "-d"])
            .arg(&modules)
            .arg("-o")
            .arg(&efi)
            .args([
                "-p",
                "/EFI/BOOT",
                "fat",
                "part_gpt",
                "loadenv",
                "test",
                "echo",
                "halt",
                "normal",
                "configfile",
            ]),
    );
    let snippet = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("grub/otter-counting.cfg"),
    )
    .unwrap();
    let cfg = dir.join("grub.cfg");
    write_file(
        &cfg,
        &format!(
            "set timeout=0\nload_env\n{snippet}echo \"otter-grub: boot_counter=${{boot_counter}}\"\n\
             menuentry \"new\" {{ echo \"otter-grub: booting entry new\"; halt; }}\n\
             menuentry \"old\" {{ echo \"otter-grub: booting entry old\"; halt; }}\n"
        ),
    );
    let genv = dir.join("grubenv");
    let spec = format!("grubenv:{}", genv.display());
    run_ok(
        otter_boot()
            .arg("--backend")
            .arg(&spec)
            .args(["arm", "--tries", "2"]),
    );

    // ESP (FAT, made without root) in a GPT disk image.
    let esp = dir.join("esp.img");
    run_ok(
        Command::new(require("mkfs.vfat", "dosfstools"))
            .arg("-C")
            .arg(&esp)
            .arg("32768"),
    );
    run_ok(
        Command::new(require("mmd", "mtools"))
            .arg("-i")
            .arg(&esp)
            .args(["::/EFI", "::/EFI/BOOT"]),
    );
    run_ok(
        Command::new(require("mcopy", "mtools"))
            .arg("-i")
            .arg(&esp)
            .arg(&efi)
            .arg(&cfg)
            .arg(&genv)
            .arg("::/EFI/BOOT/"),
    );
    let image = dir.join("disk.img");
    let mut data = vec![0u8; PART_OFFSET as usize];
    data.extend_from_slice(&std::fs::read(&esp).unwrap());
    data.resize(data.len() + PART_OFFSET as usize, 0);
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
        .write_all(
            b"label: gpt\nstart=2048, size=65536, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n",
        )
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk failed");
    let vars = dir.join("vars.fd");
    std::fs::copy(AAVMF_VARS, &vars).unwrap();
    let mut m = Machine {
        dir: dir.to_path_buf(),
        image,
        vars,
        boots: 0,
    };
    let backend = otter_boot::backend_from_spec(&spec).unwrap();

    // boot 1: 2 -> 1, boot 2: 1 -> 0 (both the new entry), boot 3: 0 -> -1 and entry 1.
    for (n, counter, entry) in [(1, "1", "new"), (2, "0", "new"), (3, "-1", "old")] {
        let lines = m.boot();
        assert!(
            lines.contains(&format!("otter-grub: booting entry {entry}")),
            "boot {n}: {lines:#?}"
        );
        m.copy_out(&genv);
        assert_eq!(
            editenv_list(&genv),
            format!("boot_counter={counter}\nboot_success=0\n"),
            "boot {n}"
        );
        let st = backend.state().unwrap();
        assert_eq!(st.fell_back, counter == "-1", "boot {n}: {st:?}");
    }

    // Userspace on the fallback boot: rollback (recorded) + counter cleared; GRUB stops counting.
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
            .arg(dir.join("root")),
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "rolled-back\n");
    assert_eq!(editenv_list(&genv), "boot_success=1\n");
    m.copy_in(&genv);
    let lines = m.boot();
    assert!(
        lines.contains(&"otter-grub: booting entry new".to_string()),
        "{lines:#?}"
    );
    m.copy_out(&genv);
    assert_eq!(editenv_list(&genv), "boot_success=1\n");
}
