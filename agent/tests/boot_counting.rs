//! Boot counting end to end: the real `otter` binary installs and upgrades a scratch sysroot
//! with `[boot] backend` set; the counters are read back with the real tools (`fw_printenv`,
//! `grub-editenv`); the health check / fallback handling of `otter-boot` (its library entry
//! points `otter_boot::health::{check, handle_fallback}`, which the binary's `check` and
//! `detect-fallback` call) runs `[boot] rollback-command` = this test's `otter rollback`; the
//! result is checked with `ostree admin status` and `otter status --json`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod deploy_util;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use deploy_util::*;
use otter_boot::config::BootConfig;
use otter_boot::health::{self, CheckOptions};

const OTTER: &str = env!("CARGO_BIN_EXE_otter");
const OS: &str = "testos";

fn need(tool: &str, package: &str) -> String {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(found, "{tool} not found: install the apt package {package}");
    tool.to_owned()
}

fn otter(sysroot: &Path, config: &Path, args: &[&str]) -> Output {
    Command::new(OTTER)
        .arg(format!("--sysroot={}", sysroot.display()))
        .arg(format!("--config={}", config.display()))
        .args(args)
        .env_remove("OTTER_BOOTED_DEPLOYMENT")
        .env_remove("OTTER_FALLBACK_REASON")
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "otter failed: {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

struct Rig {
    t: Tmpfs,
    sr: PathBuf,
    conf: PathBuf,
    v1: String,
    v2: String,
    backend: String,
}

impl Rig {
    fn new(backend: &str) -> Rig {
        let t = Tmpfs::new();
        let layout = build_images(t.path());
        let sr = t.path().join("sysroot");
        let conf = t.path().join("otter.conf");
        let r = Rig {
            sr,
            conf,
            v1: format!("oci:{}:v1", layout.display()),
            v2: format!("oci:{}:v2", layout.display()),
            backend: backend.to_owned(),
            t,
        };
        r.write_conf("otter rollback");
        r
    }

    fn write_conf(&self, rollback_command: &str) {
        fs::write(
            &self.conf,
            format!(
                "[trust]\nrequire-signature = false\n\n[boot]\nbackend = \"{}\"\ntries = 2\n\
                 rollback-command = \"{}\"\nreboot-command = \"false\"\n",
                self.backend,
                rollback_command.replace('\\', "\\\\").replace('"', "\\\"")
            ),
        )
        .unwrap();
    }

    fn otter(&self, args: &[&str]) -> String {
        ok(&otter(&self.sr, &self.conf, args))
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.otter(&["status", "--json"])).unwrap()
    }

    /// The system root otter-boot sees on the device (`/`): here the stateroot directory,
    /// whose `var/lib/otter` `otter status` reads.
    fn root(&self) -> PathBuf {
        self.sr.join("ostree/deploy").join(OS)
    }

    fn script(&self, name: &str, body: &str) {
        let p = self
            .root()
            .join("etc/greenboot/check/required.d")
            .join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// `otter-boot check --no-reboot` on this system (config from the same file).
    fn check(&self) -> health::Verdict {
        let cfg = BootConfig::load(&self.conf, true).unwrap();
        let mut b =
            otter_boot::backend_from_spec_in_root(cfg.backend.as_deref().unwrap(), &self.sr)
                .unwrap();
        health::check(CheckOptions {
            root: self.root(),
            config: cfg,
            no_reboot: true,
            backend: Some(b.as_mut()),
        })
        .unwrap()
    }

    fn install_v1_upgrade_v2(&self) -> (String, String) {
        self.otter(&["install", "--stateroot", OS, &self.v1]);
        let c1 = self.status()["deployments"][0]["checksum"]
            .as_str()
            .unwrap()
            .to_owned();
        let st = self.status();
        assert_eq!(
            st["boot"]["counter"]["armed"], false,
            "first install is not armed: {st:#}"
        );
        self.otter(&["switch", &self.v2]);
        let st = self.status();
        let c2 = st["deployments"][0]["checksum"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(st["deployments"][0]["image"]["version"], "2");
        assert_eq!(st["boot"]["counter"]["armed"], true, "{st:#}");
        assert_eq!(st["boot"]["counter"]["tries_left"], 2, "{st:#}");
        (c1, c2)
    }
}

fn grub_list(genv: &Path) -> Vec<String> {
    let out = run(Command::new(need("grub-editenv", "grub-common"))
        .arg(genv)
        .arg("list"));
    let mut v: Vec<String> = out.lines().map(str::to_owned).collect();
    v.sort();
    v
}

fn fw_printenv(cfg: &Path) -> Vec<String> {
    let out = run(Command::new(need("fw_printenv", "libubootenv-tool"))
        .arg("-c")
        .arg(cfg));
    let mut v: Vec<String> = out
        .lines()
        .filter(|l| l.starts_with("boot") || l.starts_with("upgrade_available"))
        .map(str::to_owned)
        .collect();
    v.sort();
    v
}

fn fw_setenv(cfg: &Path, name: &str, value: &str) {
    run(Command::new(need("fw_setenv", "libubootenv-tool"))
        .arg("-c")
        .arg(cfg)
        .args([name, value]));
}

#[test]
fn grubenv_armed_on_upgrade_and_cleared_by_a_healthy_boot() {
    let r = Rig::new("grubenv:/boot/grub2/grubenv");
    let genv = r.sr.join("boot/grub2/grubenv");
    r.otter(&["install", "--stateroot", OS, &r.v1]);
    assert!(
        !genv.exists()
            || !grub_list(&genv)
                .iter()
                .any(|l| l.starts_with("boot_counter")),
        "first install must not arm the counter"
    );
    r.otter(&["switch", &r.v2]);
    assert_eq!(grub_list(&genv), vec!["boot_counter=2", "boot_success=0"]);
    let text = r.otter(&["status"]);
    assert!(
        text.contains("Boot counter: grubenv:/boot/grub2/grubenv: armed, 2 trial boots left"),
        "{text}"
    );

    // the new deployment boots and is healthy
    r.script("10-ok.sh", "exit 0");
    let v = r.check();
    assert!(v.healthy);
    assert_eq!(v.action, "marked-good");
    assert_eq!(grub_list(&genv), vec!["boot_success=1"]);
    let st = r.status();
    assert_eq!(st["boot"]["counter"]["armed"], false, "{st:#}");
    assert_eq!(st["boot"]["health"]["verdict"], "green", "{st:#}");
    let text = r.otter(&["status"]);
    assert!(text.contains("Last health check: green"), "{text}");

    // `otter boot …` is otter-boot with otter's --sysroot/--config: same env file
    r.otter(&["boot", "arm", "--tries", "1"]);
    assert_eq!(grub_list(&genv), vec!["boot_counter=1", "boot_success=0"]);
    let st = r.otter(&["boot", "status", "--json"]);
    assert!(st.contains("\"tries_left\":1"), "{st}");
    r.otter(&["boot", "mark-good"]);
    assert_eq!(grub_list(&genv), vec!["boot_success=1"]);
}

#[test]
fn uboot_fallback_runs_otter_rollback() {
    let r = Rig::new("uboot:/etc/fw_env.config");
    // device view (paths inside the sysroot) for otter, host view for fw_printenv
    fs::create_dir_all(r.sr.join("etc")).unwrap();
    fs::write(
        r.sr.join("etc/fw_env.config"),
        "/boot/uboot.env 0x0 0x4000\n",
    )
    .unwrap();
    let host_cfg = r.t.path().join("fw_env.host.config");
    fs::write(
        &host_cfg,
        format!("{} 0x0 0x4000\n", r.sr.join("boot/uboot.env").display()),
    )
    .unwrap();
    let (c1, c2) = r.install_v1_upgrade_v2();
    assert_eq!(
        fw_printenv(&host_cfg),
        vec!["bootcount=0", "bootlimit=2", "upgrade_available=1"]
    );
    assert_eq!(
        admin_status_list(&r.sr),
        vec![
            (OS.into(), format!("{c2}.0")),
            (OS.into(), format!("{c1}.0"))
        ]
    );

    // v2 boots and fails its required check (no reboot in the test)
    r.script("50-app.sh", "echo app is down >&2; exit 1");
    let v = r.check();
    assert!(!v.healthy);
    assert_eq!(v.action, "reboot-skipped");
    // U-Boot counts the failing boots until it gives up and boots the rollback entry (v1)
    fw_setenv(&host_cfg, "bootcount", "3");
    let st = r.status();
    assert_eq!(st["boot"]["counter"]["fell_back"], true, "{st:#}");

    // on v1: otter-boot sees the fallback and runs `otter rollback` on the booted v1
    let rollback = format!(
        "OTTER_BOOTED_DEPLOYMENT={OS}/{c1}.0 {OTTER} --sysroot {} --config {} rollback",
        r.sr.display(),
        r.conf.display()
    );
    r.write_conf(&rollback);
    r.script("50-app.sh", "exit 0");
    let v = r.check();
    assert!(v.healthy);
    let fb = v.fallback.expect("fallback handled");
    assert_eq!(
        fb.get("status").and_then(|s| s.as_str()),
        Some("ok"),
        "{fb:?}"
    );
    assert_eq!(
        admin_status_list(&r.sr),
        vec![
            (OS.into(), format!("{c1}.0")),
            (OS.into(), format!("{c2}.0"))
        ],
        "v1 is the default again"
    );
    assert_eq!(
        fw_printenv(&host_cfg),
        vec!["bootcount=0", "bootlimit=2", "upgrade_available=0"]
    );
    let st = r.status();
    let rb = &st["boot"]["rollback"];
    assert_eq!(rb["status"], "ok", "{st:#}");
    assert!(
        rb["reason"]
            .as_str()
            .unwrap()
            .contains("failed its required health checks: 50-app.sh"),
        "{st:#}"
    );
    assert_eq!(st["last_update"]["operation"], "rollback", "{st:#}");
    assert!(st["last_update"]["fallback_reason"]
        .as_str()
        .unwrap()
        .contains("50-app.sh"));
    let text = r.otter(&["status"]);
    assert!(text.contains("Last automatic rollback: ok"), "{text}");

    // the rollback command is idempotent: v1 is booted and already the default
    let o = Command::new("/bin/sh")
        .arg("-c")
        .arg(&rollback)
        .env("OTTER_FALLBACK_REASON", "again")
        .output()
        .unwrap();
    let out = ok(&o);
    assert!(out.contains("already the default"), "{out}");
    assert_eq!(admin_status_list(&r.sr)[0], (OS.into(), format!("{c1}.0")));
    // handled once: the next boot (fresh /run) finds no fallback
    fs::remove_dir_all(r.root().join("run")).unwrap();
    assert!(r.check().fallback.is_none());
}

#[test]
fn bls_counter_is_on_the_new_entry_and_a_failed_switch_leaves_no_counter() {
    let r = Rig::new("bls:/boot/loader/entries");
    r.otter(&["install", "--stateroot", OS, &r.v1]);
    let names = |sr: &Path| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(sr.join("boot/loader/entries"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&r.sr), vec![format!("ostree-1-{OS}.conf")]);

    // a switch whose hook arms and then fails (a crash before the loader swap): the boot
    // loader still sees the old entries, without any counter
    let config = otter::config::Config::load(&r.conf, true).unwrap();
    let opts = otter::update::UpdateOptions {
        config: config.clone(),
        no_signature_verification: true,
        ..Default::default()
    };
    let v2: otter::source::ImageRef = r.v2.parse().unwrap();
    let err = otter::update::update(
        &r.sr,
        Some(&v2),
        otter::update::Mode::Deploy,
        &opts,
        &mut |sw| {
            otter::update::before_switch(&config, &r.sr, sw)?;
            let armed: Vec<_> = fs::read_dir(sw.loader_dir.join("entries"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains('+'))
                .collect();
            assert_eq!(armed, vec![format!("ostree-2-{OS}+2.conf")]);
            anyhow::bail!("simulated crash before the switch")
        },
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("simulated crash"), "{err:#}");
    assert_eq!(names(&r.sr), vec![format!("ostree-1-{OS}.conf")]);
    assert_eq!(admin_status_list(&r.sr).len(), 1);

    // the real switch: the new default's entry carries the counter, ostree still reads it
    r.otter(&["switch", &r.v2]);
    assert_eq!(
        names(&r.sr),
        vec![
            format!("ostree-1-{OS}.conf"),
            format!("ostree-2-{OS}+2.conf")
        ]
    );
    let l = admin_status_list(&r.sr);
    assert_eq!(l.len(), 2);
    let st = r.status();
    assert_eq!(st["deployments"][0]["image"]["version"], "2");
    assert_eq!(st["boot"]["counter"]["armed"], true, "{st:#}");
}

#[test]
fn grubenv_arm_then_crash_leaves_the_old_default_on_trial_until_its_healthy_boot() {
    let r = Rig::new("grubenv:/boot/grub2/grubenv");
    let genv = r.sr.join("boot/grub2/grubenv");
    r.otter(&["install", "--stateroot", OS, &r.v1]);
    r.otter(&["switch", &r.v2]);
    r.script("10-ok.sh", "exit 0");
    assert!(r.check().healthy);
    assert_eq!(grub_list(&genv), vec!["boot_success=1"]);
    let before = admin_status_list(&r.sr);

    // switch back to v1 (a new deployment of it), crashing after the arm, before the swap
    let config = otter::config::Config::load(&r.conf, true).unwrap();
    let opts = otter::update::UpdateOptions {
        config: config.clone(),
        no_signature_verification: true,
        allow_downgrade: true,
        ..Default::default()
    };
    let v1: otter::source::ImageRef = r.v1.parse().unwrap();
    let err = otter::update::update(
        &r.sr,
        Some(&v1),
        otter::update::Mode::Deploy,
        &opts,
        &mut |sw| {
            otter::update::before_switch(&config, &r.sr, sw)?;
            anyhow::bail!("simulated crash before the switch")
        },
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("simulated crash"), "{err:#}");
    assert_eq!(admin_status_list(&r.sr), before, "old default kept");
    // the documented window: the old default is on trial ...
    assert_eq!(grub_list(&genv), vec!["boot_counter=2", "boot_success=0"]);
    // ... and its next healthy boot ends the trial, without any rollback
    let v = r.check();
    assert!(v.healthy && v.fallback.is_none());
    assert_eq!(grub_list(&genv), vec!["boot_success=1"]);
    assert_eq!(admin_status_list(&r.sr), before);

    // a manual rollback while a trial counts for the new default ends that trial
    r.otter(&["switch", "--allow-downgrade", &r.v1]);
    assert_eq!(grub_list(&genv), vec!["boot_counter=2", "boot_success=0"]);
    let out = r.otter(&["rollback"]);
    assert!(out.contains("is now the default"), "{out}");
    assert_eq!(admin_status_list(&r.sr)[0], before[0]);
    assert_eq!(grub_list(&genv), vec!["boot_success=1"]);
}
