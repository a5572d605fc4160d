//! Arming the boot counter and reading its verdict.
//!
//! The boot-count stores, the health checks and the rollback decision live in the
//! `otter-boot` crate (`otter_boot`, also the device binary `otter-boot`); this module is the
//! agent's side: after `deploy` made a new deployment the default, [`arm_for_new_deployment`]
//! starts counting its trial boots; `otter status` shows [`state`] and [`health_report`].
//!
//! When the counter is armed (decided in `docs/boot.md`): by [`arm_for_switch`], from the
//! deploy's [`crate::deploy::BeforeSwitch`] hook, *before* the `boot/loader` swap, and only
//! when the new list has a second entry to fall back to (never on the first install).
//!
//! Config keys (section `[boot]` of `/etc/otter/otter.conf`; one parser,
//! `otter_boot::config::BootConfig::set`, used by `config.rs` and by `otter-boot`):
//! - `backend = "grubenv:/boot/grub2/grubenv" | "uboot:/etc/fw_env.config" | "bls:/boot/loader/entries"`
//! - `tries = 3` (1..=20)
//! - `rollback-command = "otter rollback"`, `reboot-command = "systemctl reboot"`,
//!   `check-timeout = 300` (used by `otter-boot` only)

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::config::BootConfig;
use crate::deploy::Switch;

pub use otter_boot::{BootState, DEFAULT_TRIES, MAX_TRIES};

/// State files written by `otter-boot check` / `detect-fallback` (relative to the root).
pub const HEALTH_FILE: &str = otter_boot::health::HEALTH_FILE;
pub const ROLLBACK_FILE: &str = otter_boot::health::ROLLBACK_FILE;

/// The `[boot]` settings the agent needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSettings {
    /// `KIND:PATH` (paths as seen on the device; taken relative to the sysroot). None = no
    /// boot counting (deployments are not armed).
    pub backend: Option<String>,
    /// Trial boots before the bootloader falls back.
    pub tries: u32,
}

impl Default for BootSettings {
    fn default() -> Self {
        BootSettings {
            backend: None,
            tries: DEFAULT_TRIES,
        }
    }
}

impl BootSettings {
    /// The settings of a parsed `[boot]` section (`tries` unset: [`DEFAULT_TRIES`]).
    pub fn from_config(c: &BootConfig) -> BootSettings {
        BootSettings {
            backend: c.backend.clone(),
            tries: c.tries.unwrap_or(DEFAULT_TRIES),
        }
    }

    /// Take the settings from the `[boot]` section of a config text (same parser as
    /// `otter-boot`; other sections are ignored).
    pub fn from_config_text(text: &str) -> Result<BootSettings> {
        let c =
            otter_boot::config::BootConfig::parse(text).context("parsing the [boot] section")?;
        Ok(BootSettings {
            backend: c.backend,
            tries: c.tries.unwrap_or(DEFAULT_TRIES),
        })
    }

    /// Check the values (backend kind, tries range) without touching anything.
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_TRIES).contains(&self.tries) {
            anyhow::bail!(
                "[boot] tries = {}: use a number from 1 to {MAX_TRIES}",
                self.tries
            );
        }
        if let Some(spec) = &self.backend {
            let kind = spec.split_once(':').map(|(k, _)| k).unwrap_or("");
            if !["grubenv", "uboot", "bls"].contains(&kind) || spec.ends_with(':') {
                anyhow::bail!(
                    "[boot] backend = {spec:?}: use grubenv:PATH, uboot:FW_ENV_CONFIG or bls:ENTRIES_DIR"
                );
            }
        }
        Ok(())
    }
}

fn open(sysroot: &Path, settings: &BootSettings) -> Result<Option<Box<dyn otter_boot::Backend>>> {
    let Some(spec) = &settings.backend else {
        return Ok(None);
    };
    otter_boot::backend_from_spec_in_root(spec, sysroot)
        .with_context(|| {
            format!(
                "opening boot-count backend {spec} in sysroot {}",
                sysroot.display()
            )
        })
        .map(Some)
}

/// Arm the boot counter for the deployment that was just made the default: the next
/// `settings.tries` boots are trial boots, then the bootloader falls back to the previous one.
/// For `bls:` the first entry in boot-menu order (the new deployment) gets `+TRIES`, so call
/// this after the new BLS entries are in place. Returns false when no backend is configured.
pub fn arm_for_new_deployment(sysroot: &Path, settings: &BootSettings) -> Result<bool> {
    settings.validate()?;
    let Some(mut b) = open(sysroot, settings)? else {
        log::info!("no [boot] backend configured: the new deployment is not boot-counted");
        return Ok(false);
    };
    b.arm(settings.tries).with_context(|| {
        format!(
            "arming the {} boot counter for {} trial boots",
            b.kind(),
            settings.tries
        )
    })?;
    log::info!("boot counter armed: {} trial boots", settings.tries);
    Ok(true)
}

/// The BLS entries directory the boot menu is read from, as `[boot] backend = bls:` must name it.
pub const BLS_ENTRIES: &str = "/boot/loader/entries";

/// Arm the boot counter for the deployment that `sw` makes the default (the deploy hook; runs
/// before the `boot/loader` swap). Does nothing (returns false) without a backend or when there
/// is no second deployment to fall back to. `tries`: `[boot] tries`, else the new deployment's
/// `/etc/greenboot/greenboot.conf` `GREENBOOT_MAX_BOOT_ATTEMPTS`, else 3 — what `otter-boot arm`
/// would use on that system.
///
/// grubenv/uboot arm "the default entry is on trial"; `bls:` renames the new default's entry in
/// the new loader directory (`sw.loader_dir/entries`, not yet visible to the boot loader), so
/// for BLS a crash before the swap leaves no trace at all.
pub fn arm_for_switch(sysroot: &Path, config: &BootConfig, sw: &Switch<'_>) -> Result<bool> {
    let Some(spec) = &config.backend else {
        return Ok(false);
    };
    let new = sw.new_default();
    if sw.fallback().is_none() {
        log::info!(
            "{} is the only deployment: nothing to fall back to, the boot counter is not armed",
            new.name()
        );
        return Ok(false);
    }
    let deployment_root = sysroot.join(new.rel_path());
    let tries = config
        .tries
        .or_else(|| otter_boot::health::GreenbootConf::load(&deployment_root).max_boot_attempts)
        .unwrap_or(DEFAULT_TRIES);
    let settings = BootSettings {
        backend: Some(spec.clone()),
        tries,
    };
    settings.validate()?;
    let mut backend: Box<dyn otter_boot::Backend> = match spec.split_once(':') {
        Some(("bls", dir)) => {
            if dir.trim_end_matches('/') != BLS_ENTRIES {
                bail!(
                    "[boot] backend = {spec:?}: otter writes the boot entries, so the BLS backend                      must be bls:{BLS_ENTRIES}"
                );
            }
            Box::new(otter_boot::bls::BlsBackend::new(
                sw.loader_dir.join("entries"),
            ))
        }
        _ => match open(sysroot, &settings)? {
            Some(b) => b,
            None => return Ok(false),
        },
    };
    backend.arm(tries).with_context(|| {
        format!(
            "arming the {} boot counter ({spec}) for {tries} trial boots of {}",
            backend.kind(),
            new.name()
        )
    })?;
    log::info!(
        "boot counter {spec} armed: {} gets {tries} trial boots before the boot loader falls \
         back to {}",
        new.name(),
        sw.fallback().map(|d| d.name()).unwrap_or_default()
    );
    Ok(true)
}

/// After a manual `otter rollback` (the swap is durable): a trial that was counting for the
/// deployment that is no longer the default is ended, so the new default is not counted down.
/// Leaves a bootloader fallback alone (`otter-boot` clears that after its rollback command).
/// BLS needs nothing: the swap wrote fresh entry names without counters.
pub fn disarm_after_rollback(sysroot: &Path, config: &BootConfig) -> Result<bool> {
    let settings = BootSettings::from_config(config);
    let Some(spec) = &settings.backend else {
        return Ok(false);
    };
    if spec.starts_with("bls:") {
        return Ok(false);
    }
    let Some(mut b) = open(sysroot, &settings)? else {
        return Ok(false);
    };
    let st = b
        .state()
        .with_context(|| format!("reading the {} boot counter", b.kind()))?;
    if !st.armed || st.fell_back {
        return Ok(false);
    }
    b.mark_good()
        .with_context(|| format!("ending the {} trial after the rollback", b.kind()))?;
    Ok(true)
}

/// The system root whose `/var/lib/otter` holds the health and rollback records: `/` on a
/// device; for another sysroot, the stateroot directory `SYSROOT/ostree/deploy/STATEROOT`
/// (whose `var` is what the booted system sees as `/var`).
pub fn state_root(sysroot: &Path, stateroot: &str) -> std::path::PathBuf {
    if sysroot == Path::new("/") {
        sysroot.to_path_buf()
    } else {
        sysroot.join("ostree/deploy").join(stateroot)
    }
}

/// The `boot` field of `otter status --json`: backend, counter state, last health verdict and
/// the last automatic rollback record. None when nothing is configured or recorded.
pub fn status_json(sysroot: &Path, config: &BootConfig, root: &Path) -> Option<serde_json::Value> {
    let settings = BootSettings::from_config(config);
    let counter = match state(sysroot, &settings) {
        Ok(Some(st)) => serde_json::from_str::<serde_json::Value>(&st.to_json())
            .unwrap_or(serde_json::Value::Null),
        Ok(None) => serde_json::Value::Null,
        Err(e) => serde_json::json!({"error": format!("{e:#}")}),
    };
    let (health, rollback) = match health_report(root) {
        Ok(r) => (r.health, r.rollback),
        Err(e) => (Some(serde_json::json!({"error": format!("{e:#}")})), None),
    };
    if settings.backend.is_none() && health.is_none() && rollback.is_none() {
        return None;
    }
    Some(serde_json::json!({
        "backend": settings.backend,
        "tries": settings.tries,
        "counter": counter,
        "health": health,
        "rollback": rollback,
    }))
}

/// The boot counter as it is now (None when no backend is configured).
pub fn state(sysroot: &Path, settings: &BootSettings) -> Result<Option<BootState>> {
    let Some(b) = open(sysroot, settings)? else {
        return Ok(None);
    };
    b.state()
        .with_context(|| format!("reading the {} boot counter", b.kind()))
        .map(Some)
}

/// The last health verdict and the last rollback record, for `otter status` and fleet reports.
#[derive(Debug, Clone, Default)]
pub struct HealthReport {
    /// `/var/lib/otter/health.json`: verdict (`green`/`red`), failed checks, action, fallback.
    pub health: Option<serde_json::Value>,
    /// `/var/lib/otter/rollback.json`: why and when the last automatic rollback happened.
    pub rollback: Option<serde_json::Value>,
}

/// Read the health and rollback records under `root` (missing files are `None`).
pub fn health_report(root: &Path) -> Result<HealthReport> {
    let read = |rel: &str| -> Result<Option<serde_json::Value>> {
        let p = otter_boot::reroot(root, Path::new(rel));
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("parsing {} (written by otter-boot)", p.display()))
                .map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    };
    Ok(HealthReport {
        health: read(HEALTH_FILE)?,
        rollback: read(ROLLBACK_FILE)?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn arm_in_sysroot_and_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let s = BootSettings::from_config_text(
            "[boot]\nbackend = \"grubenv:/boot/grub2/grubenv\"\ntries = 2\n",
        )
        .unwrap();
        assert!(arm_for_new_deployment(root, &s).unwrap());
        let data = std::fs::read(root.join("boot/grub2/grubenv")).unwrap();
        assert_eq!(data.len(), 1024);
        let st = state(root, &s).unwrap().unwrap();
        assert!(st.armed);
        assert_eq!(st.tries_left, Some(2));
        assert!(!arm_for_new_deployment(root, &BootSettings::default()).unwrap());
        assert!(BootSettings {
            backend: Some("nope:/x".into()),
            tries: 3
        }
        .validate()
        .is_err());
        assert!(BootSettings {
            backend: None,
            tries: 0
        }
        .validate()
        .is_err());
        let r = health_report(root).unwrap();
        assert!(r.health.is_none() && r.rollback.is_none());
        std::fs::create_dir_all(root.join("var/lib/otter")).unwrap();
        std::fs::write(
            root.join("var/lib/otter/health.json"),
            "{\"verdict\":\"green\"}",
        )
        .unwrap();
        assert_eq!(
            health_report(root).unwrap().health.unwrap()["verdict"],
            "green"
        );
    }
}
