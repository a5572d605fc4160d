//! Arming the boot counter and reading its verdict.
//!
//! The boot-count stores, the health checks and the rollback decision live in the
//! `otter-boot` crate (`otter_boot`, also the device binary `otter-boot`); this module is the
//! agent's side: after `deploy` made a new deployment the default, [`arm_for_new_deployment`]
//! starts counting its trial boots; `otter status` shows [`state`] and [`health_report`].
//!
//! Config keys (section `[boot]` of `/etc/otter/otter.conf`, parsed by `config.rs`; the same
//! section is read by `otter-boot`, which rejects unknown keys in it):
//! - `backend = "grubenv:/boot/grub2/grubenv" | "uboot:/etc/fw_env.config" | "bls:/boot/loader/entries"`
//! - `tries = 3` (1..=20)
//! - `rollback-command = "otter rollback"`, `reboot-command = "systemctl reboot"`,
//!   `check-timeout = 300` (used by `otter-boot` only)

use std::path::Path;

use anyhow::{Context, Result};

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
