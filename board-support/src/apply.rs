//! Write what a board needs into a freshly deployed sysroot.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::bls::{merge_kargs, read_entries, write_atomic, write_uenv};
use crate::profile::{EntryStyle, Profile};

/// What [`apply_to_sysroot`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub files: Vec<PathBuf>,
}

/// Make a deployed sysroot boot on `profile`'s board:
/// - the boot-count backend's config (U-Boot: `fw_env.config` at the path of the `uboot:` spec)
///   into each deployment's `etc/` (never `usr/etc`: deployment files under `usr` are hard links
///   into the repository and must not be modified; files added to `/etc` survive upgrades
///   through ostree's /etc merge);
/// - the board's kernel arguments into every BLS entry of the current `boot/loader` (arguments
///   whose key an entry already has are left alone);
/// - for U-Boot boards, `boot/loader/uEnv.txt` regenerated from those entries.
///
/// `deployments` are deployment roots (`SYSROOT/ostree/deploy/OS/deploy/CSUM.N`). Idempotent.
pub fn apply_to_sysroot(
    profile: &Profile,
    sysroot: &Path,
    deployments: &[&Path],
) -> Result<Applied> {
    let mut applied = Applied::default();
    let loader = sysroot.join("boot/loader");
    if !loader.join("entries").is_dir() {
        bail!(
            "{} has no boot/loader/entries: deploy an image first (otter install), then apply board {}",
            sysroot.display(),
            profile.name
        );
    }
    for d in deployments {
        if !d.join("usr").is_dir() {
            bail!("{} does not look like a deployment (no usr/)", d.display());
        }
        if let Some(text) = profile.fw_env_config() {
            let rel = profile.bootcount_path().trim_start_matches('/');
            let Some(rel) = rel.strip_prefix("etc/") else {
                bail!(
                    "board {}: fw_env.config path {} is not under /etc",
                    profile.name,
                    profile.bootcount_path()
                );
            };
            let dest = d.join("etc").join(rel);
            if fs::read_to_string(&dest).ok().as_deref() != Some(text.as_str()) {
                if let Some(parent) = dest.parent() {
                    fs::create_dir_all(parent)
                        .with_context(|| format!("creating {}", parent.display()))?;
                }
                write_atomic(&dest, text.as_bytes(), 0o644)?;
                applied.files.push(dest);
            }
        }
    }
    for mut e in read_entries(&loader)? {
        let opts = e.get("options").unwrap_or("").to_string();
        if let Some(new) = merge_kargs(&opts, &profile.kernel_args) {
            e.set("options", new);
            write_atomic(&e.path, e.to_text().as_bytes(), 0o644)?;
            applied.files.push(e.path.clone());
        }
    }
    if profile.has_entry_style(EntryStyle::UEnv) {
        applied.files.push(write_uenv(&loader)?);
    }
    Ok(applied)
}
