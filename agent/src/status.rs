//! `otter status`: the deployments of a sysroot with their images, as JSON or text.
//!
//! JSON (`otter status --json`), one object:
//! ```json
//! {"sysroot": "/", "booted": true,
//!  "deployments": [{"stateroot": "default", "checksum": "…", "serial": 0, "default": true,
//!    "rollback": false, "booted": true, "pending": false,
//!    "image": {"reference": "docker://…", "digest": "sha256:…", "version": "2", "timestamp": 1700000000},
//!    "origin_refspec": null, "kargs": ["quiet"]}],
//!  "last_update": {…} | null, "boot": {…} | null}
//! ```
//! `deployments` is in boot order (index 0 = default). `rollback` marks the deployment
//! `otter rollback` would make the default (the one after the booted deployment, or the second
//! one of the default's stateroot when not booted); `pending` one that becomes active at the
//! next boot (before the booted one).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::deploy::Sysroot;

/// File (in the sysroot) where the last update's result is recorded.
pub const LAST_UPDATE_FILE: &str = "ostree/otter/last-update.json";

#[derive(Debug, Serialize)]
pub struct Status {
    pub sysroot: String,
    /// Whether a booted deployment was detected.
    pub booted: bool,
    pub deployments: Vec<DeploymentStatus>,
    /// Contents of `ostree/otter/last-update.json`, if any.
    pub last_update: Option<serde_json::Value>,
    /// Boot-count state (filled by the boot module when a backend is configured).
    pub boot: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
pub struct DeploymentStatus {
    pub stateroot: String,
    pub checksum: String,
    pub serial: u32,
    pub default: bool,
    pub rollback: bool,
    pub booted: bool,
    pub pending: bool,
    pub image: ImageStatus,
    /// `refspec` of deployments made by `ostree admin deploy`.
    pub origin_refspec: Option<String>,
    pub kargs: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ImageStatus {
    pub reference: Option<String>,
    pub digest: Option<String>,
    pub version: Option<String>,
    /// Commit timestamp, seconds since the epoch.
    pub timestamp: Option<u64>,
}

/// Gather the status of a sysroot.
pub fn gather(sysroot: &Path) -> Result<Status> {
    let s = Sysroot::load(sysroot)?;
    let booted = s.booted_index();
    let rollback = match booted {
        Some(b) => s
            .deployments()
            .iter()
            .enumerate()
            .skip(b + 1)
            .find(|(_, d)| d.stateroot == s.deployments()[b].stateroot)
            .map(|(i, _)| i),
        None => s.rollback_deployment().and_then(|r| {
            s.deployments()
                .iter()
                .position(|d| d.name() == r.name() && d.stateroot == r.stateroot)
        }),
    };
    let pending = booted.and_then(|b| {
        s.deployments()[..b]
            .iter()
            .position(|d| d.stateroot == s.deployments()[b].stateroot)
    });
    let mut out = Vec::new();
    for (i, d) in s.deployments().iter().enumerate() {
        let commit = s.repo().read_commit(&d.checksum).ok();
        let meta = |k: &str| {
            commit
                .as_ref()
                .and_then(|c| c.meta_str(k).map(str::to_owned))
        };
        out.push(DeploymentStatus {
            stateroot: d.stateroot.clone(),
            checksum: d.checksum.to_hex(),
            serial: d.serial,
            default: i == 0,
            rollback: rollback == Some(i),
            booted: booted == Some(i),
            pending: pending == Some(i),
            image: ImageStatus {
                reference: d
                    .image()
                    .map(str::to_owned)
                    .or_else(|| meta("otter.image.reference")),
                digest: meta("otter.image.digest"),
                version: d.version.clone(),
                timestamp: commit.as_ref().map(|c| c.timestamp),
            },
            origin_refspec: d
                .origin
                .as_ref()
                .and_then(|o| o.refspec().map(str::to_owned)),
            kargs: d.kargs.clone(),
        });
    }
    let last_update = match std::fs::read(sysroot.join(LAST_UPDATE_FILE)) {
        Ok(b) => serde_json::from_slice(&b).ok(),
        Err(_) => None,
    };
    Ok(Status {
        sysroot: sysroot.display().to_string(),
        booted: booted.is_some(),
        deployments: out,
        last_update,
        boot: None,
    })
}

/// Record the result of an update for `status`.
pub fn record_last_update(sysroot: &Path, value: &serde_json::Value) -> Result<()> {
    let p = sysroot.join(LAST_UPDATE_FILE);
    let dir = p.parent().context("no parent")?;
    crate::deploy::fsops::create_dir_all(dir, 0o755)?;
    let text = serde_json::to_vec_pretty(value).context("serializing the update result")?;
    crate::ostree::write_atomic(&p, &text, 0o644)
}

impl Status {
    pub fn write_json(&self, w: &mut dyn Write) -> Result<()> {
        serde_json::to_writer_pretty(&mut *w, self).context("writing status")?;
        writeln!(w).context("writing status")
    }

    pub fn write_text(&self, w: &mut dyn Write) -> Result<()> {
        if self.deployments.is_empty() {
            writeln!(w, "No deployments in {}.", self.sysroot)?;
        }
        for d in &self.deployments {
            let mut flags = Vec::new();
            if d.booted {
                flags.push("booted");
            }
            if d.default {
                flags.push("default");
            }
            if d.pending {
                flags.push("pending");
            }
            if d.rollback {
                flags.push("rollback");
            }
            let mark = if d.booted { "*" } else { " " };
            writeln!(
                w,
                "{mark} {} {}.{}{}",
                d.stateroot,
                d.checksum,
                d.serial,
                if flags.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", flags.join(", "))
                }
            )?;
            if let Some(r) = &d.image.reference {
                writeln!(w, "    Image:     {r}")?;
            } else if let Some(r) = &d.origin_refspec {
                writeln!(w, "    Refspec:   {r}")?;
            }
            if let Some(dg) = &d.image.digest {
                writeln!(w, "    Digest:    {dg}")?;
            }
            if let Some(v) = &d.image.version {
                writeln!(w, "    Version:   {v}")?;
            }
            if let Some(t) = d.image.timestamp {
                writeln!(w, "    Timestamp: {t} (seconds since epoch)")?;
            }
        }
        if let Some(b) = &self.boot {
            writeln!(w, "Boot counter: {b}")?;
        }
        if let Some(l) = &self.last_update {
            let result = l.get("result").and_then(|v| v.as_str()).unwrap_or("?");
            let msg = l.get("message").and_then(|v| v.as_str()).unwrap_or("");
            writeln!(w, "Last update: {result} {msg}")?;
        }
        Ok(())
    }
}
