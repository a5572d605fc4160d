//! USB auto-import: find an otter update on mounted removable media and import it once.
//!
//! The media carries either an OCI image layout directory (`oci-layout` + `index.json`, as
//! written by `skopeo copy … oci:DIR` or `umoci`) or an oci-archive (a tar of such a layout,
//! named `*.tar`, `*.oci`, `*.ociarchive` or `*.oci-archive`), at the top level or under
//! `otter/`. The signature artifacts travel inside the layout; the import runs the same
//! verification as every other update. The content identity is the manifest digest(s) named
//! by `index.json`; identities already imported are recorded in `<state_dir>/usb-imported`
//! (atomic write) and skipped, so a stick left plugged in is not imported at every boot.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::state::{read_state, write_atomic};
use super::{FleetActions, NoProgress};

/// Largest `index.json` we read.
const INDEX_MAX: u64 = 1024 * 1024;
/// Identities remembered in `usb-imported`.
const KEEP: usize = 256;
/// Name of the record file in the state dir.
pub const RECORD: &str = "usb-imported";

/// What [`usb_import`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// No otter update on the media.
    NothingFound,
    /// This content was imported before.
    AlreadyImported { identity: String, image: String },
    /// Imported now; `result` is what the import reported.
    Imported {
        identity: String,
        image: String,
        result: serde_json::Value,
    },
}

/// An update found on the media.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    Layout(PathBuf),
    Archive(PathBuf),
}

impl Found {
    /// The image reference for the import (`oci:DIR` / `oci-archive:FILE`).
    pub fn image(&self) -> String {
        match self {
            Found::Layout(p) => format!("oci:{}", p.display()),
            Found::Archive(p) => format!("oci-archive:{}", p.display()),
        }
    }
}

fn is_archive_name(p: &Path) -> bool {
    let n = p
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    [".tar", ".oci", ".ociarchive", ".oci-archive"]
        .iter()
        .any(|e| n.ends_with(e))
}

/// Looks for updates at the top of the media and under `otter/` (no deeper, symlinks not
/// followed).
pub fn find_updates(mount_dir: &Path) -> Result<Vec<Found>> {
    let mut found = Vec::new();
    for dir in [mount_dir.to_path_buf(), mount_dir.join("otter")] {
        if dir != mount_dir && !dir.is_dir() {
            continue;
        }
        if dir.join("oci-layout").is_file() {
            found.push(Found::Layout(dir.clone()));
            continue;
        }
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .filter_map(|e| e.ok())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() && p.join("oci-layout").is_file() && p.join("index.json").is_file() {
                found.push(Found::Layout(p));
            } else if ft.is_file() && is_archive_name(&p) {
                found.push(Found::Archive(p));
            }
        }
    }
    Ok(found)
}

fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// The content identity from `index.json` bytes: the digests of the image manifests/indexes
/// it names (not artifacts such as signatures), sorted, comma-separated.
pub fn identity_from_index(bytes: &[u8]) -> Result<String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).context("parsing index.json")?;
    let manifests = v
        .get("manifests")
        .and_then(|m| m.as_array())
        .context("index.json has no manifests array")?;
    let mut digests: Vec<String> = Vec::new();
    for m in manifests {
        let mt = m.get("mediaType").and_then(|x| x.as_str()).unwrap_or("");
        let image = matches!(
            mt,
            "application/vnd.oci.image.manifest.v1+json"
                | "application/vnd.oci.image.index.v1+json"
                | "application/vnd.docker.distribution.manifest.v2+json"
                | "application/vnd.docker.distribution.manifest.list.v2+json"
        );
        if !image || m.get("artifactType").is_some() {
            continue;
        }
        let d = m.get("digest").and_then(|x| x.as_str()).unwrap_or("");
        if !is_digest(d) {
            bail!("index.json names a manifest with a bad digest {d:?}");
        }
        if !digests.iter().any(|x| x == d) {
            digests.push(d.to_string());
        }
    }
    if digests.is_empty() {
        bail!("index.json names no image manifest");
    }
    digests.sort();
    Ok(digests.join(","))
}

fn read_index_from_archive(path: &Path) -> Result<Vec<u8>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut ar = tar::Archive::new(f);
    for entry in ar
        .entries()
        .with_context(|| format!("reading tar {}", path.display()))?
    {
        let entry = entry.with_context(|| format!("reading tar {}", path.display()))?;
        let name = entry.path().map(|p| p.into_owned()).unwrap_or_default();
        let name = name.strip_prefix("./").unwrap_or(&name);
        if name == Path::new("index.json") {
            let mut v = Vec::new();
            entry
                .take(INDEX_MAX + 1)
                .read_to_end(&mut v)
                .with_context(|| format!("reading index.json in {}", path.display()))?;
            if v.len() as u64 > INDEX_MAX {
                bail!("index.json in {} is over {INDEX_MAX} bytes", path.display());
            }
            return Ok(v);
        }
    }
    bail!("{} is not an oci-archive: no index.json", path.display())
}

/// The content identity of a found update.
pub fn identity(found: &Found) -> Result<String> {
    let bytes = match found {
        Found::Layout(dir) => {
            let p = dir.join("index.json");
            read_state(&p)?.with_context(|| format!("{} is missing", p.display()))?
        }
        Found::Archive(p) => read_index_from_archive(p)?,
    };
    identity_from_index(&bytes).with_context(|| format!("update at {}", found.image()))
}

fn load_record(path: &Path) -> Result<Vec<String>> {
    Ok(match read_state(path)? {
        None => Vec::new(),
        Some(b) => String::from_utf8_lossy(&b)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
    })
}

/// Finds the update on the media mounted at `mount_dir`, imports it through `actions` unless
/// this content was imported before, and records it in `<state_dir>/usb-imported`.
/// Several different updates on one medium are refused (which one would be meant?).
pub fn usb_import(
    mount_dir: &Path,
    state_dir: &Path,
    actions: &mut dyn FleetActions,
) -> Result<Outcome> {
    let found = find_updates(mount_dir)?;
    let mut candidates = Vec::new();
    for f in found {
        match identity(&f) {
            Ok(id) => candidates.push((f, id)),
            Err(e) if matches!(f, Found::Archive(_)) => {
                log::info!("ignoring {}: {e:#}", f.image());
            }
            Err(e) => return Err(e),
        }
    }
    let (found, identity) = match candidates.len() {
        0 => return Ok(Outcome::NothingFound),
        1 => candidates.remove(0),
        _ => {
            candidates.dedup_by(|a, b| a.1 == b.1);
            if candidates.len() > 1 {
                let names: Vec<_> = candidates.iter().map(|c| c.0.image()).collect();
                bail!(
                    "{} holds several different updates ({}); leave only one on the medium",
                    mount_dir.display(),
                    names.join(", ")
                );
            }
            candidates.remove(0)
        }
    };
    let record = state_dir.join(RECORD);
    let mut seen = load_record(&record)?;
    let image = found.image();
    if seen.contains(&identity) {
        return Ok(Outcome::AlreadyImported { identity, image });
    }
    let result = actions
        .import(&image, &mut NoProgress)
        .with_context(|| format!("importing {image} from removable media"))?;
    seen.push(identity.clone());
    if seen.len() > KEEP {
        seen.drain(..seen.len() - KEEP);
    }
    let mut text = seen.join("\n");
    text.push('\n');
    write_atomic(&record, text.as_bytes())?;
    Ok(Outcome::Imported {
        identity,
        image,
        result,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_skips_artifacts_and_checks_digests() {
        let d1 = format!("sha256:{}", "a".repeat(64));
        let d2 = format!("sha256:{}", "b".repeat(64));
        let idx = serde_json::json!({"schemaVersion":2,"manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":d2,"size":1},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":d1,"size":1,
             "artifactType":"application/vnd.otter.release.v1+json"}]});
        assert_eq!(identity_from_index(idx.to_string().as_bytes()).unwrap(), d2);
        for bad in [
            "{",
            "{}",
            r#"{"manifests":[]}"#,
            r#"{"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:xx"}]}"#,
        ] {
            assert!(identity_from_index(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
