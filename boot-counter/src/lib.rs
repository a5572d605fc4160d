//! otter-boot: boot counting, greenboot-compatible health checks and automatic rollback.
//!
//! Module index:
//! - [`grubenv`]: GRUB environment block (`grub-editenv` format), greenboot's
//!   `boot_counter`/`boot_success` convention.
//! - [`uboot`]: U-Boot environment through an `fw_env.config` (single or redundant copies),
//!   `bootcount`/`bootlimit`/`upgrade_available` (U-Boot BOOTCOUNT_ENV / Mender convention).
//! - [`bls`]: systemd-boot boot counting in Boot Loader Spec entry file names (`+LEFT-DONE`).
//! - [`config`]: the `[boot]` section of `/etc/otter/otter.conf`.
//! - [`health`]: greenboot-style health checks, verdict record, fallback detection and rollback.
//! - [`json`]: the tiny JSON writer/reader used for state files (no serde: size matters).
//!
//! All backends implement [`Backend`]; [`backend_from_spec`] builds one from `KIND:PATH`.

pub mod bls;
pub mod cli;
pub mod config;
#[doc(hidden)]
pub mod crashpoint;
pub mod grubenv;
pub mod health;
pub mod json;
pub mod uboot;
mod util;

use std::fmt;
use std::path::{Path, PathBuf};

/// Most boot attempts `arm` accepts. The GRUB snippet and the U-Boot script count with lookup
/// tables (Debian's GRUB has no `increment` module, U-Boot's `setexpr` prints hex), which are
/// generated up to this value.
pub const MAX_TRIES: u32 = 20;

/// Default number of boot attempts (greenboot's `GREENBOOT_MAX_BOOT_ATTEMPTS` default).
pub const DEFAULT_TRIES: u32 = 3;

/// The error type of this crate: a message with the chain of what was being done.
#[derive(Debug)]
pub struct Error {
    msg: String,
    source: Option<std::io::Error>,
}

impl Error {
    pub fn new(msg: impl Into<String>) -> Error {
        Error {
            msg: msg.into(),
            source: None,
        }
    }

    pub fn io(msg: impl Into<String>, err: std::io::Error) -> Error {
        Error {
            msg: msg.into(),
            source: Some(err),
        }
    }

    /// Prefix the message with what the caller was doing.
    pub fn context(self, what: impl fmt::Display) -> Error {
        Error {
            msg: format!("{what}: {}", self.msg),
            source: self.source,
        }
    }

    /// The underlying I/O error kind, if this error came from I/O.
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        self.source.as_ref().map(|e| e.kind())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(e) => write!(f, "{}: {e}", self.msg),
            None => f.write_str(&self.msg),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// Attach context to I/O results: `.ctx(|| format!("reading {path}"))`.
pub(crate) trait IoContext<T> {
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T> {
        self.map_err(|e| Error::io(f(), e))
    }
}

impl<T> IoContext<T> for Result<T> {
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T> {
        self.map_err(|e| e.context(f()))
    }
}

/// What the boot counter says about the current boot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootState {
    /// Backend kind: `grubenv`, `uboot` or `bls`.
    pub backend: String,
    /// A trial boot is in progress: a new deployment is being counted and not yet marked good.
    pub armed: bool,
    /// Boots the bootloader still grants the counted entry before it falls back.
    pub tries_left: Option<u32>,
    /// The configured number of tries, when the store keeps it (U-Boot `bootlimit`).
    pub tries: Option<u32>,
    /// The bootloader ran out of tries and booted the fallback (rollback) entry.
    pub fell_back: bool,
    /// BLS only: entries marked bad (`+0-N`), sorted last by the boot loader.
    pub bad_entries: Vec<String>,
    /// Raw variables/entries the state was derived from, for `status` (name, value).
    pub raw: Vec<(String, String)>,
    /// Identifies this fallback where the backend cannot clear it (BLS: the bad entries' names
    /// and `options` lines), so a handled fallback is not handled again; empty otherwise.
    pub fallback_key: String,
}

impl BootState {
    pub fn to_json(&self) -> String {
        use json::Value;
        let mut o = vec![
            ("backend".to_string(), Value::Str(self.backend.clone())),
            ("armed".to_string(), Value::Bool(self.armed)),
            (
                "tries_left".to_string(),
                self.tries_left
                    .map_or(Value::Null, |t| Value::Num(t.into())),
            ),
            (
                "tries".to_string(),
                self.tries.map_or(Value::Null, |t| Value::Num(t.into())),
            ),
            ("fell_back".to_string(), Value::Bool(self.fell_back)),
            (
                "bad_entries".to_string(),
                Value::Arr(
                    self.bad_entries
                        .iter()
                        .map(|s| Value::Str(s.clone()))
                        .collect(),
                ),
            ),
        ];
        let raw = self
            .raw
            .iter()
            .map(|(k, v)| (k.clone(), Value::Str(v.clone())))
            .collect();
        o.push(("raw".to_string(), Value::Obj(raw)));
        Value::Obj(o).to_string()
    }
}

impl fmt::Display for BootState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "backend:    {}", self.backend)?;
        let phase = if self.fell_back {
            "fell back (the bootloader booted the rollback entry)"
        } else if self.armed {
            "armed (trial boot of a new deployment)"
        } else {
            "idle (nothing being counted)"
        };
        writeln!(f, "state:      {phase}")?;
        if let Some(t) = self.tries_left {
            writeln!(f, "tries left: {t}")?;
        }
        if let Some(t) = self.tries {
            writeln!(f, "tries:      {t}")?;
        }
        for b in &self.bad_entries {
            writeln!(f, "bad entry:  {b}")?;
        }
        for (k, v) in &self.raw {
            writeln!(f, "  {k}={v}")?;
        }
        Ok(())
    }
}

/// A boot-count store.
pub trait Backend {
    /// Start counting: the next `tries` boots are trial boots; after that the bootloader falls back.
    fn arm(&mut self, tries: u32) -> Result<()>;
    /// The current boot is healthy: stop counting.
    fn mark_good(&mut self) -> Result<()>;
    /// The current boot is bad: make the next boot fall back.
    fn mark_bad(&mut self) -> Result<()>;
    /// Read the counter.
    fn state(&self) -> Result<BootState>;
    /// After a handled fallback (rollback done): clear the counter so the fallback is not seen again.
    fn clear_fallback(&mut self) -> Result<()> {
        self.mark_good()
    }
    /// Backend kind (`grubenv`, `uboot`, `bls`).
    fn kind(&self) -> &'static str;
}

/// Build a backend from `grubenv:PATH`, `uboot:FW_ENV_CONFIG` or `bls:ENTRIES_DIR`.
pub fn backend_from_spec(spec: &str) -> Result<Box<dyn Backend>> {
    backend_from_spec_in_root(spec, Path::new("/"))
}

/// Like [`backend_from_spec`], with the paths in the spec (and regular-file devices named in an
/// fw_env.config) taken relative to `root` (a sysroot that is not `/`).
pub fn backend_from_spec_in_root(spec: &str, root: &Path) -> Result<Box<dyn Backend>> {
    let Some((kind, path)) = spec.split_once(':') else {
        return Err(Error::new(format!(
            "invalid boot-count backend {spec:?}: expected KIND:PATH with KIND grubenv, uboot or bls"
        )));
    };
    if path.is_empty() {
        return Err(Error::new(format!(
            "invalid boot-count backend {spec:?}: the path is empty"
        )));
    }
    let path = reroot(root, Path::new(path));
    match kind {
        "grubenv" => Ok(Box::new(grubenv::GrubBackend::new(path))),
        "uboot" => Ok(Box::new(uboot::UbootBackend::open(&path, root)?)),
        "bls" => Ok(Box::new(bls::BlsBackend::new(path))),
        _ => Err(Error::new(format!(
            "unknown boot-count backend kind {kind:?} in {spec:?}: use grubenv:PATH, uboot:FW_ENV_CONFIG or bls:ENTRIES_DIR"
        ))),
    }
}

/// `root` joined with an absolute `path` (`/` root leaves it unchanged).
pub fn reroot(root: &Path, path: &Path) -> PathBuf {
    if root == Path::new("/") || root.as_os_str().is_empty() {
        return path.to_path_buf();
    }
    let rel = path.strip_prefix("/").unwrap_or(path);
    root.join(rel)
}
