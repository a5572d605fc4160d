//! Small state files under `/var/lib/otter`: atomic writes and the rollout-wave record.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Largest state file we read back.
const STATE_MAX: u64 = 1024 * 1024;
/// Digests remembered by the rollout record (oldest are forgotten first).
const ROLLOUT_KEEP: usize = 32;

/// Writes `bytes` to `path` atomically: temp file in the same dir, fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write()
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
        .with_context(|| format!("writing {} atomically", path.display()))
}

/// Reads a state file; `None` if it does not exist.
pub fn read_state(path: &Path) -> Result<Option<Vec<u8>>> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut v = Vec::new();
    f.take(STATE_MAX + 1)
        .read_to_end(&mut v)
        .with_context(|| format!("reading {}", path.display()))?;
    if v.len() as u64 > STATE_MAX {
        anyhow::bail!("{} is over {STATE_MAX} bytes; remove it", path.display());
    }
    Ok(Some(v))
}

/// When each update digest was first seen (`/var/lib/otter/rollout.json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// digest → unix seconds when first seen.
    pub first_seen: BTreeMap<String, i64>,
}

impl Rollout {
    pub fn load(path: &Path) -> Result<Rollout> {
        match read_state(path)? {
            None => Ok(Rollout::default()),
            Some(b) => serde_json::from_slice(&b).with_context(|| {
                format!(
                    "parsing {} (delete it to restart rollout waits)",
                    path.display()
                )
            }),
        }
    }

    /// Records `digest` as seen at `now` unless already known; returns when it was first seen.
    pub fn see(&mut self, path: &Path, digest: &str, now: i64) -> Result<i64> {
        if let Some(t) = self.first_seen.get(digest) {
            return Ok(*t);
        }
        self.first_seen.insert(digest.to_string(), now);
        while self.first_seen.len() > ROLLOUT_KEEP {
            let oldest = self
                .first_seen
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.first_seen.remove(&k),
                None => break,
            };
        }
        let bytes = serde_json::to_vec_pretty(self).context("encoding rollout state")?;
        write_atomic(path, &bytes)?;
        Ok(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollout_first_seen_persists() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lib/rollout.json");
        let mut r = Rollout::load(&p).unwrap();
        assert_eq!(r.see(&p, "sha256:a", 100).unwrap(), 100);
        assert_eq!(r.see(&p, "sha256:a", 200).unwrap(), 100);
        let mut r2 = Rollout::load(&p).unwrap();
        assert_eq!(r2.see(&p, "sha256:a", 300).unwrap(), 100);
        std::fs::write(&p, b"{garbage").unwrap();
        assert!(Rollout::load(&p).is_err());
    }
}
