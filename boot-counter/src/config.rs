//! The `[boot]` section of `/etc/otter/otter.conf` (other sections belong to the agent and are
//! skipped here). Syntax: `[section]` headers, `key = value` lines, `#` comments; a value may be
//! a double-quoted string (TOML basic string: `\"` and `\\` escapes) or a bare word/number.
//!
//! Keys (all optional):
//! - `backend`          boot-count store: `grubenv:PATH`, `uboot:FW_ENV_CONFIG` or `bls:ENTRIES_DIR`
//! - `tries`            trial boots of a new deployment before the bootloader falls back (default 3)
//! - `rollback-command` run after a fallback so the old deployment becomes the default
//!   (default `otter rollback`)
//! - `reboot-command`   run when a trial boot is unhealthy and tries remain (default `systemctl reboot`)
//! - `check-timeout`    seconds one health-check script may run (default 300)

use std::fs;
use std::path::Path;

use crate::{Error, IoContext, Result, MAX_TRIES};

pub const DEFAULT_CONFIG: &str = "/etc/otter/otter.conf";
pub const DEFAULT_ROLLBACK_COMMAND: &str = "otter rollback";
pub const DEFAULT_REBOOT_COMMAND: &str = "systemctl reboot";
pub const DEFAULT_CHECK_TIMEOUT: u64 = 300;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    pub backend: Option<String>,
    /// None: use greenboot.conf's GREENBOOT_MAX_BOOT_ATTEMPTS, else 3.
    pub tries: Option<u32>,
    pub rollback_command: String,
    pub reboot_command: String,
    pub check_timeout: u64,
}

impl Default for BootConfig {
    fn default() -> Self {
        BootConfig {
            backend: None,
            tries: None,
            rollback_command: DEFAULT_ROLLBACK_COMMAND.to_string(),
            reboot_command: DEFAULT_REBOOT_COMMAND.to_string(),
            check_timeout: DEFAULT_CHECK_TIMEOUT,
        }
    }
}

impl BootConfig {
    /// Parse the `[boot]` section of a config text. Unknown keys in `[boot]` are errors.
    pub fn parse(text: &str) -> Result<BootConfig> {
        let mut cfg = BootConfig::default();
        let mut in_boot = false;
        for (n, line) in text.lines().enumerate() {
            let err = |what: String| Error::new(format!("line {}: {what}", n + 1));
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(rest) = line.strip_prefix('[') {
                let name = rest.split(']').next().unwrap_or("").trim();
                in_boot = name == "boot";
                continue;
            }
            if !in_boot {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(err(format!("expected key = value, found {line:?}")));
            };
            let key = k.trim();
            let value = parse_value(v.trim()).map_err(|e| err(format!("{key}: {e}")))?;
            cfg.set(key, &value).map_err(|e| err(e.to_string()))?;
        }
        Ok(cfg)
    }

    /// Set one `[boot]` key from its (unquoted) value. The agent's config parser calls this for
    /// its `[boot]` section too, so both binaries accept exactly the same keys and values.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "backend" => {
                self.backend = match value {
                    "" | "none" => None,
                    spec => {
                        check_backend_spec(spec)?;
                        Some(spec.to_string())
                    }
                }
            }
            "tries" => {
                self.tries = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|t| (1..=MAX_TRIES).contains(t))
                        .ok_or_else(|| {
                            Error::new(format!(
                                "tries = {value:?}: use a number from 1 to {MAX_TRIES}"
                            ))
                        })?,
                )
            }
            "rollback-command" => self.rollback_command = value.to_string(),
            "reboot-command" => self.reboot_command = value.to_string(),
            "check-timeout" => {
                self.check_timeout = value.parse().ok().filter(|&t| t > 0).ok_or_else(|| {
                    Error::new(format!(
                        "check-timeout = {value:?}: use a number of seconds > 0"
                    ))
                })?
            }
            _ => {
                return Err(Error::new(format!(
                    "unknown key {key:?} in [boot] (known: {})",
                    KEYS.join(", ")
                )))
            }
        }
        Ok(())
    }

    /// Read a config file; a missing file gives the defaults when `required` is false.
    pub fn load(path: &Path, required: bool) -> Result<BootConfig> {
        match fs::read_to_string(path) {
            Ok(t) => {
                BootConfig::parse(&t).map_err(|e| e.context(format!("config {}", path.display())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok(BootConfig::default())
            }
            Err(e) => Err(e).ctx(|| format!("reading config {}", path.display())),
        }
    }
}

/// The keys of `[boot]`.
pub const KEYS: [&str; 5] = [
    "backend",
    "tries",
    "rollback-command",
    "reboot-command",
    "check-timeout",
];

/// `KIND:PATH` with a known kind and a non-empty absolute path.
pub fn check_backend_spec(spec: &str) -> Result<()> {
    match spec.split_once(':') {
        Some(("grubenv" | "uboot" | "bls", path)) if path.starts_with('/') => Ok(()),
        _ => Err(Error::new(format!(
            "backend = {spec:?}: use none, grubenv:PATH, uboot:FW_ENV_CONFIG or bls:ENTRIES_DIR (absolute paths)"
        ))),
    }
}

/// A value as written after `=`: a double-quoted string (`\"`, `\\`, `\n`, `\t` escapes;
/// a `#` comment may follow the closing quote) or a bare word (a ` #` starts a comment).
pub fn parse_value(v: &str) -> std::result::Result<String, String> {
    let Some(inner) = v.strip_prefix('"') else {
        // Bare value; allow a trailing comment.
        let v = v.split(" #").next().unwrap_or(v).trim();
        return Ok(v.to_string());
    };
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                let rest: String = chars.collect();
                let rest = rest.trim();
                if !rest.is_empty() && !rest.starts_with('#') {
                    return Err(format!("unexpected text after the closing quote: {rest:?}"));
                }
                return Ok(out);
            }
            '\\' => match chars.next() {
                Some('"') => out.push('"'),
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                other => {
                    return Err(format!(
                        "unsupported escape \\{}",
                        other.map(String::from).unwrap_or_default()
                    ))
                }
            },
            c => out.push(c),
        }
    }
    Err("unterminated string".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_section() {
        let c = BootConfig::parse(
            "[agent]\nfoo = 1\n[boot]\nbackend = \"uboot:/etc/fw_env.config\"\ntries = 5 # c\nrollback-command = \"sh -c \\\"x\\\"\"\n",
        )
        .unwrap();
        assert_eq!(c.backend.as_deref(), Some("uboot:/etc/fw_env.config"));
        assert_eq!(c.tries, Some(5));
        assert_eq!(c.rollback_command, "sh -c \"x\"");
        assert!(BootConfig::parse("[boot]\nbogus = 1\n").is_err());
        assert!(BootConfig::parse("[boot]\ntries = 0\n").is_err());
        assert!(BootConfig::parse("[boot]\nbackend = \"x\n").is_err());
        assert!(BootConfig::parse("[boot]\nbackend = floppy:/x\n").is_err());
        assert!(BootConfig::parse("[boot]\nbackend = grubenv:\n").is_err());
        assert_eq!(
            BootConfig::parse("[boot]\nbackend = none\n")
                .unwrap()
                .backend,
            None
        );
    }
}
