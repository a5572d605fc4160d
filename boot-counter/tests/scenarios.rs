//! End-to-end scenarios of `otter-boot` on a scratch root (`--root DIR`): arm, failing and
//! passing greenboot checks, bootloader fallback, rollback, and not looping. The bootloader's
//! side is played with the real tools (`fw_setenv`, `grub-editenv`) the way boot.cmd/the GRUB
//! snippet change the counter.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{fw_printenv, fw_setenv, otter_boot, require, run, run_ok, write_file, write_script};
use otter_boot::json::Value;

struct Rig {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
    backend: String,
}

impl Rig {
    fn new(kind: &str, extra_conf: &str) -> Rig {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let backend = match kind {
            "uboot" => {
                let cfg = tmp.path().join("fw_env.config");
                write_file(
                    &cfg,
                    &format!("{} 0x0 0x4000\n", tmp.path().join("uboot.env").display()),
                );
                format!("uboot:{}", cfg.display())
            }
            "bls" => {
                let d = tmp.path().join("entries");
                for v in ["1", "2"] {
                    write_file(
                        &d.join(format!("ostree-{v}.conf")),
                        &format!("title OS {v}\nversion {v}\nlinux /vmlinuz\n"),
                    );
                }
                format!("bls:{}", d.display())
            }
            _ => format!("grubenv:{}", tmp.path().join("grubenv").display()),
        };
        let config = tmp.path().join("otter.conf");
        let log = tmp.path().join("rollback.log");
        write_file(
            &config,
            &format!(
                "[agent]\nignored = 1\n\n[boot]\nbackend = \"{backend}\"\nrollback-command = \"echo \\\"rollback: $OTTER_FALLBACK_REASON\\\" >> {}\"\n{extra_conf}",
                log.display()
            ),
        );
        Rig {
            _tmp: tmp,
            root,
            config,
            backend,
        }
    }

    fn tmp(&self) -> &Path {
        self.root.parent().unwrap()
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = otter_boot();
        c.arg("--config")
            .arg(&self.config)
            .args(args)
            .arg("--root")
            .arg(&self.root);
        c
    }

    fn check(&self) -> Output {
        run(&mut self.cmd(&["check", "--no-reboot"]))
    }

    fn health(&self) -> Value {
        Value::parse(&std::fs::read_to_string(self.root.join("var/lib/otter/health.json")).unwrap())
            .unwrap()
    }

    fn motd(&self) -> String {
        std::fs::read_to_string(self.root.join("run/motd.d/otter-health")).unwrap()
    }

    fn script(&self, rel: &str, body: &str) {
        write_script(&self.root.join(rel), body);
    }

    fn marker(&self, name: &str) -> bool {
        self.tmp().join(name).exists()
    }

    fn rollbacks(&self) -> Vec<String> {
        std::fs::read_to_string(self.tmp().join("rollback.log"))
            .map(|s| s.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// A new boot: /run is empty again, the kernel command line names the deployment.
    fn boot(&self, deployment: &str) {
        let _ = std::fs::remove_dir_all(self.root.join("run"));
        write_file(
            &self.root.join("proc/cmdline"),
            &format!("root=/dev/vda2 ostree={deployment} rw\n"),
        );
    }

    fn fw_cfg(&self) -> PathBuf {
        PathBuf::from(self.backend.strip_prefix("uboot:").unwrap())
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn failing_trial_falls_back_and_rolls_back_once() {
    let rig = Rig::new("uboot", "");
    let t = rig.tmp().display().to_string();
    rig.script(
        "etc/greenboot/check/required.d/01_fail.sh",
        "echo 'service x is down' >&2; exit 3",
    );
    rig.script(
        "etc/greenboot/check/required.d/02_after.sh",
        &format!("touch {t}/after-ran"),
    );
    rig.script("usr/lib/greenboot/check/wanted.d/01_ok.sh", "exit 0");
    rig.script(
        "etc/greenboot/red.d/01_red.sh",
        &format!("echo red >> {t}/red.log"),
    );
    rig.script(
        "etc/greenboot/green.d/01_green.sh",
        &format!("echo green >> {t}/green.log"),
    );
    run_ok(&mut rig.cmd(&["arm", "--tries", "2"]));
    assert_eq!(
        fw_printenv(&rig.fw_cfg()),
        ["bootcount=0", "bootlimit=2", "upgrade_available=1"]
    );

    // Trial boots 1 and 2 of the new deployment: U-Boot's script counts, checks fail.
    for n in 1..=2 {
        rig.boot("/ostree/boot.1/os/new/0");
        fw_setenv(&rig.fw_cfg(), "bootcount", Some(&n.to_string()));
        let out = rig.check();
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("Script '01_fail.sh' FAILURE (exit code '3')"),
            "{err}"
        );
        assert!(
            err.contains("'02_after.sh' was skipped due to a previous failure"),
            "{err}"
        );
        let h = rig.health();
        assert_eq!(h.get("verdict").unwrap().as_str(), Some("red"));
        assert_eq!(
            h.get("failed_required").unwrap().str_array(),
            ["01_fail.sh"]
        );
        assert_eq!(h.get("action").unwrap().as_str(), Some("reboot-skipped"));
        assert_eq!(
            h.get("deployment").unwrap().as_str(),
            Some("/ostree/boot.1/os/new/0")
        );
        assert!(
            rig.motd().contains("RED - failed: 01_fail.sh"),
            "{}",
            rig.motd()
        );
        assert!(
            rig.motd().contains(&format!("({} tries left", 2 - n)),
            "{}",
            rig.motd()
        );
    }
    assert!(!rig.marker("after-ran"), "required.d is fail-fast");
    assert!(!rig.marker("green.log"));
    assert_eq!(
        std::fs::read_to_string(rig.tmp().join("red.log")).unwrap(),
        "red\nred\n"
    );

    // Boot 3: bootcount 3 > bootlimit 2, U-Boot booted the rollback entry (the old deployment,
    // whose checks pass: its image has no failing check).
    rig.boot("/ostree/boot.1/os/old/1");
    fw_setenv(&rig.fw_cfg(), "bootcount", Some("3"));
    let st = run_ok(&mut rig.cmd(&["status", "--json"]));
    assert!(st.contains("\"fell_back\":true"), "{st}");
    std::fs::remove_file(rig.root.join("etc/greenboot/check/required.d/01_fail.sh")).unwrap();
    let out = rig.check();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("FALLBACK BOOT DETECTED"));
    let rb = rig.rollbacks();
    assert_eq!(rb.len(), 1, "{rb:?}");
    assert!(
        rb[0].contains("failed its required health checks: 01_fail.sh"),
        "{rb:?}"
    );
    let rec = Value::parse(
        &std::fs::read_to_string(rig.root.join("var/lib/otter/rollback.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(rec.get("status").unwrap().as_str(), Some("ok"));
    assert_eq!(
        rec.get("failed_deployment").unwrap().as_str(),
        Some("/ostree/boot.1/os/new/0")
    );
    assert_eq!(
        rec.get("booted_deployment").unwrap().as_str(),
        Some("/ostree/boot.1/os/old/1")
    );
    assert_eq!(
        rec.get("failed_checks").unwrap().str_array(),
        ["01_fail.sh"]
    );
    let h = rig.health();
    assert_eq!(h.get("verdict").unwrap().as_str(), Some("green"));
    assert_eq!(
        h.get("fallback").unwrap().get("status").unwrap().as_str(),
        Some("ok")
    );
    assert!(
        rig.motd().starts_with("FALLBACK BOOT DETECTED!"),
        "{}",
        rig.motd()
    );
    // Counter cleared: U-Boot will boot the (now default) old deployment without counting.
    assert_eq!(
        fw_printenv(&rig.fw_cfg()),
        ["bootcount=0", "bootlimit=2", "upgrade_available=0"]
    );

    // Next boot: no second rollback.
    rig.boot("/ostree/boot.1/os/old/0");
    let out = rig.check();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(rig.rollbacks().len(), 1);
    assert!(rig.health().get("fallback").unwrap() == &Value::Null);
}

#[test]
fn healthy_trial_is_marked_good_and_wanted_failures_only_warn() {
    let editenv = require("grub-editenv", "grub-common");
    let rig = Rig::new("grubenv", "");
    let t = rig.tmp().display().to_string();
    rig.script("usr/lib/greenboot/check/required.d/01_ok.sh", "exit 0");
    // Not executable but *.sh: run with bash like greenboot.
    write_file(
        &rig.root.join("etc/greenboot/check/required.d/02_ok.sh"),
        "[[ 1 == 1 ]]\n",
    );
    rig.script("etc/greenboot/check/wanted.d/01_flaky.sh", "exit 1");
    write_file(
        &rig.root.join("etc/greenboot/check/required.d/README"),
        "not a check\n",
    );
    rig.script(
        "etc/greenboot/green.d/01_green.sh",
        &format!("echo green >> {t}/green.log"),
    );
    rig.script(
        "etc/greenboot/red.d/01_red.sh",
        &format!("echo red >> {t}/red.log"),
    );
    run_ok(&mut rig.cmd(&["arm"]));
    let genv = rig.tmp().join("grubenv");
    assert_eq!(
        run_ok(Command::new(&editenv).arg(&genv).arg("list")),
        "boot_counter=3\nboot_success=0\n"
    );
    // GRUB's snippet decremented once.
    run_ok(
        Command::new(&editenv)
            .arg(&genv)
            .args(["set", "boot_counter=2"]),
    );
    rig.boot("/ostree/boot.0/os/new/0");
    let out = rig.check();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("<2>Script '01_flaky.sh' FAILURE"), "{err}");
    assert!(err.contains("Boot Status is GREEN"), "{err}");
    assert_eq!(
        run_ok(Command::new(&editenv).arg(&genv).arg("list")),
        "boot_success=1\n"
    );
    let h = rig.health();
    assert_eq!(h.get("verdict").unwrap().as_str(), Some("green"));
    assert_eq!(h.get("failed_wanted").unwrap().str_array(), ["01_flaky.sh"]);
    assert_eq!(h.get("action").unwrap().as_str(), Some("marked-good"));
    let names: Vec<String> = h
        .get("checks")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.get("name").unwrap().as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        ["01_ok.sh", "02_ok.sh", "01_flaky.sh", "01_green.sh"],
        "vendor dir first, README ignored"
    );
    assert!(rig.marker("green.log") && !rig.marker("red.log"));
    assert!(rig.motd().contains("GREEN"));
}

#[test]
fn detect_fallback_unit_then_check_and_failed_rollback_retries() {
    let rig = Rig::new("grubenv", "");
    let editenv = require("grub-editenv", "grub-common");
    let genv = rig.tmp().join("grubenv");
    run_ok(&mut rig.cmd(&["arm", "--tries", "1"]));
    // GRUB: 1 -> 0 (trial boot), then 0 -> -1 and default=1 (fallback boot).
    run_ok(
        Command::new(&editenv)
            .arg(&genv)
            .args(["set", "boot_counter=-1"]),
    );
    rig.boot("/ostree/boot.0/os/old/1");

    // A failing rollback command: recorded, counter kept for the next boot, exit 1.
    let cfg = std::fs::read_to_string(&rig.config).unwrap();
    std::fs::write(
        &rig.config,
        cfg.replace(
            "rollback-command = \"echo",
            "rollback-command = \"false && echo",
        ),
    )
    .unwrap();
    let out = run(&mut rig.cmd(&["detect-fallback"]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let rec = Value::parse(
        &std::fs::read_to_string(rig.root.join("var/lib/otter/rollback.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(rec.get("status").unwrap().as_str(), Some("failed"));
    assert!(run_ok(Command::new(&editenv).arg(&genv).arg("list")).contains("boot_counter=-1"));

    // Next boot, working command: detect-fallback handles it, check sees the marker, no rerun.
    std::fs::write(&rig.config, &cfg).unwrap();
    rig.boot("/ostree/boot.0/os/old/1");
    let out = run(&mut rig.cmd(&["detect-fallback"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(rig.rollbacks().len(), 1);
    assert!(
        rig.rollbacks()[0].contains("did not complete a healthy boot"),
        "{:?}",
        rig.rollbacks()
    );
    assert_eq!(
        run_ok(Command::new(&editenv).arg(&genv).arg("list")),
        "boot_success=1\n"
    );
    rig.script("etc/greenboot/check/required.d/01_fail.sh", "exit 1");
    let out = rig.check();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(rig.rollbacks().len(), 1, "check does not roll back twice");
    let h = rig.health();
    assert_eq!(
        h.get("fallback").unwrap().get("status").unwrap().as_str(),
        Some("ok")
    );
    assert_eq!(
        h.get("action").unwrap().as_str(),
        Some("manual-intervention"),
        "the fallback is unhealthy too: no reboot loop"
    );
}

#[test]
fn reboot_timeout_and_disabled_checks() {
    let rig = Rig::new("uboot", "check-timeout = 1\n");
    let t = rig.tmp().display().to_string();
    let cfg = std::fs::read_to_string(&rig.config).unwrap();
    std::fs::write(
        &rig.config,
        format!("{cfg}reboot-command = \"touch {t}/rebooted\"\n"),
    )
    .unwrap();
    write_file(
        &rig.root.join("etc/greenboot/greenboot.conf"),
        "GREENBOOT_MAX_BOOT_ATTEMPTS=4\nDISABLED_HEALTHCHECKS=(\"02_broken.sh\")\n",
    );
    rig.script(
        "etc/greenboot/check/required.d/01_hang.sh",
        "sleep 30 & sleep 30",
    );
    rig.script("etc/greenboot/check/required.d/02_broken.sh", "exit 1");
    run_ok(&mut rig.cmd(&["arm"]));
    assert_eq!(
        fw_printenv(&rig.fw_cfg()),
        ["bootcount=0", "bootlimit=4", "upgrade_available=1"]
    );
    fw_setenv(&rig.fw_cfg(), "bootcount", Some("1"));
    let start = std::time::Instant::now();
    let out = run(&mut rig.cmd(&["check"]));
    assert!(
        start.elapsed().as_secs() < 20,
        "the hanging script was killed"
    );
    assert_eq!(out.status.code(), Some(1));
    let h = rig.health();
    let checks = h.get("checks").unwrap().as_array().unwrap().to_vec();
    assert_eq!(checks[0].get("result").unwrap().as_str(), Some("timeout"));
    assert_eq!(checks[1].get("result").unwrap().as_str(), Some("disabled"));
    assert_eq!(h.get("action").unwrap().as_str(), Some("reboot"));
    assert!(rig.marker("rebooted"));

    // Unhealthy with nothing on trial: no reboot, manual intervention.
    std::fs::remove_file(rig.tmp().join("rebooted")).unwrap();
    run_ok(&mut rig.cmd(&["mark-good"]));
    let out = run(&mut rig.cmd(&["check"]));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        rig.health().get("action").unwrap().as_str(),
        Some("manual-intervention")
    );
    assert!(!rig.marker("rebooted"));
}

#[test]
fn usage_errors_exit_2() {
    let rig = Rig::new("grubenv", "");
    let out = run(otter_boot().args(["arm", "--tries", "x"]));
    assert_eq!(out.status.code(), Some(2));
    let out = run(otter_boot().args(["--backend", "nope:/x", "status"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown boot-count backend kind"));
    let out = run(&mut rig.cmd(&["arm", "--tries", "99"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("use 1 to 20"));
    let bad = rig.tmp().join("bad.conf");
    write_file(&bad, "[boot]\ntypo = 1\n");
    let out = run(otter_boot().arg("--config").arg(&bad).arg("status"));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown key \"typo\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bls_bad_entry_is_rolled_back_once() {
    let rig = Rig::new("bls", "");
    let entries = rig.tmp().join("entries");
    run_ok(&mut rig.cmd(&["arm", "--tries", "1"]));
    assert!(entries.join("ostree-2+1.conf").exists());
    // systemd-boot: trial boot renames +1 -> +0-1 (bad); the next boot picks ostree-1.
    std::fs::rename(
        entries.join("ostree-2+1.conf"),
        entries.join("ostree-2+0-1.conf"),
    )
    .unwrap();
    for _ in 0..2 {
        rig.boot("/ostree/boot.1/os/old/1");
        let out = rig.check();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert_eq!(
        rig.rollbacks().len(),
        1,
        "a bad entry that stays bad is handled once"
    );
    let rec = Value::parse(
        &std::fs::read_to_string(rig.root.join("var/lib/otter/rollback.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        rec.get("fallback_key").unwrap().as_str(),
        Some("ostree-2+0-1.conf|")
    );
    assert!(
        entries.join("ostree-2+0-1.conf").exists(),
        "the bad entry stays bad (sorted last)"
    );
    // A different deployment failing under the same file name is a new fallback.
    write_file(
        &entries.join("ostree-2+0-1.conf"),
        "title OS 3\nversion 2\noptions ostree=/ostree/boot.0/os/other/0\n",
    );
    rig.boot("/ostree/boot.0/os/old/1");
    assert!(rig.check().status.success());
    assert_eq!(rig.rollbacks().len(), 2);
}

/// `--root` applies to everything the root's own config names: `arm` and `status` with the
/// config at ROOT/etc/otter/otter.conf change ROOT/boot/grub2/grubenv (checked with the real
/// grub-editenv), never the host's /boot.
#[test]
fn root_applies_to_the_backend_named_by_the_roots_config() {
    require("grub-editenv", "grub-common");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    write_file(
        &root.join("etc/otter/otter.conf"),
        "[boot]\nbackend = \"grubenv:/boot/grub2/grubenv\"\ntries = 2\n",
    );
    std::fs::create_dir_all(root.join("boot/grub2")).unwrap();
    let env = root.join("boot/grub2/grubenv");
    run_ok(Command::new("grub-editenv").arg(&env).arg("create"));
    run_ok(otter_boot().arg("--root").arg(&root).arg("arm"));
    let listed = run_ok(Command::new("grub-editenv").arg(&env).arg("list"));
    assert!(listed.contains("boot_counter=2"), "{listed}");
    let st = run_ok(otter_boot().args(["status", "--json", "--root"]).arg(&root));
    assert!(st.contains("\"tries_left\":2"), "{st}");
}
