//! The configuration file (`/etc/otter/otter.conf`; `--config FILE` overrides the path).
//!
//! INI style: `[section]`, `key = value`, `#` (or `;`) starts a comment line. Every key is
//! documented in `docs/config.md`. Unknown sections and keys, duplicate keys and bad values are
//! errors that name the file, line and key. A missing default file means "all defaults"; a
//! missing `--config` file is an error.
//!
//! To add a key: add the field (with its default in `Default`), a match arm in the section's
//! `set`, and a row in `docs/config.md`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The default configuration file.
pub const DEFAULT_PATH: &str = "/etc/otter/otter.conf";
/// Largest config file we read.
const MAX_CONFIG_SIZE: u64 = 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub update: UpdateConfig,
    pub registry: RegistryConfig,
    pub trust: TrustConfig,
    pub boot: BootConfig,
    pub mqtt: MqttConfig,
    pub policy: PolicyConfig,
}

/// `[update]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateConfig {
    /// Stateroot (ostree "os") that `install` creates and updates go to when nothing is deployed.
    pub stateroot: String,
    /// Image `upgrade` tracks when no deployment has an origin image (e.g. first boot of a
    /// device installed by other means). None: take it from the deployment's origin.
    pub image: Option<String>,
    /// Platform to pick from multi-platform images, `os/arch[/variant]`; None: the host's.
    pub platform: Option<String>,
    /// Keep the downloaded blobs under `ostree/otter/blobs` after a successful update.
    pub keep_blobs: bool,
}

/// `[registry]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Registries reached over plain HTTP or with unverified TLS (`host[:port]`).
    pub insecure_hosts: Vec<String>,
    /// Extra CA certificates (PEM) trusted for registries.
    pub ca_file: Option<PathBuf>,
    /// Credentials, in the containers `auth.json` format.
    pub auth_file: Option<PathBuf>,
    /// Parallel blob downloads.
    pub concurrency: u32,
    /// Download limit in bytes per second; 0 = unlimited.
    pub bandwidth_limit: u64,
    /// Seconds without progress before a request is retried.
    pub timeout: u64,
    /// Attempts per request before giving up.
    pub retries: u32,
}

/// `[trust]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustConfig {
    /// Directories holding trusted minisign public keys (`*.pub`).
    pub keys_dirs: Vec<PathBuf>,
    /// Refuse images without a valid release statement signature.
    pub require_signature: bool,
    /// Board name a release statement must name (if it names one).
    pub board: Option<String>,
}

/// `[boot]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootConfig {
    /// Boot-count backend spec: `grubenv:PATH`, `uboot:FW_ENV_CONFIG`, `bls:DIR`, or `none`.
    pub backend: String,
    /// Boot attempts a new deployment gets before the bootloader falls back.
    pub tries: u32,
    /// Command `otter-boot` runs to roll back after failed health checks.
    pub rollback_command: String,
    /// Command `otter-boot` runs to reboot.
    pub reboot_command: String,
    /// Seconds the health checks may take in total.
    pub check_timeout: u64,
}

/// `[mqtt]` (used by `otter daemon`)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MqttConfig {
    /// Broker URL `mqtt://host:port` or `mqtts://host:port`; None disables MQTT.
    pub broker: Option<String>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Topic prefix; device topics are `PREFIX/devices/ID/…`.
    pub topic_prefix: String,
    /// Group this device listens to (`PREFIX/groups/GROUP/…`).
    pub group: Option<String>,
}

/// `[policy]` (used by `otter daemon`)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Seconds between update checks; 0 disables the timer.
    pub check_interval: u64,
    /// Apply (reboot into) updates automatically after staging them.
    pub auto_apply: bool,
    /// Allow downgrades (older signed releases) — normally only set for one operation.
    pub allow_downgrade: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            update: UpdateConfig {
                stateroot: "default".into(),
                image: None,
                platform: None,
                keep_blobs: false,
            },
            registry: RegistryConfig {
                insecure_hosts: Vec::new(),
                ca_file: None,
                auth_file: None,
                concurrency: 2,
                bandwidth_limit: 0,
                timeout: 30,
                retries: 5,
            },
            trust: TrustConfig {
                keys_dirs: vec!["/etc/otter/keys.d".into(), "/usr/lib/otter/keys.d".into()],
                require_signature: true,
                board: None,
            },
            boot: BootConfig {
                backend: "none".into(),
                tries: 3,
                rollback_command: "otter rollback".into(),
                reboot_command: "systemctl reboot".into(),
                check_timeout: 300,
            },
            mqtt: MqttConfig {
                broker: None,
                username: None,
                password_file: None,
                ca_file: None,
                client_cert: None,
                client_key: None,
                topic_prefix: "otter".into(),
                group: None,
            },
            policy: PolicyConfig {
                check_interval: 0,
                auto_apply: false,
                allow_downgrade: false,
            },
        }
    }
}

impl Config {
    /// Read `path`; if `explicit` is false a missing file gives the defaults.
    pub fn load(path: &Path, explicit: bool) -> Result<Config> {
        use std::io::Read;
        let f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Config::default())
            }
            Err(e) => {
                return Err(e).with_context(|| format!("opening config file {}", path.display()))
            }
        };
        let mut text = String::new();
        f.take(MAX_CONFIG_SIZE)
            .read_to_string(&mut text)
            .with_context(|| format!("reading config file {} (must be UTF-8)", path.display()))?;
        Config::parse(&text).with_context(|| format!("in config file {}", path.display()))
    }

    /// Parse config text.
    pub fn parse(text: &str) -> Result<Config> {
        let mut c = Config::default();
        let mut section: Option<String> = None;
        let mut seen: Vec<(String, String)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(rest) = line.strip_prefix('[') {
                let Some(name) = rest.strip_suffix(']') else {
                    bail!("line {n}: malformed section header {line:?} (expected [name])");
                };
                let name = name.trim();
                if !SECTIONS.contains(&name) {
                    bail!(
                        "line {n}: unknown section [{name}] (known: {})",
                        SECTIONS.join(", ")
                    );
                }
                section = Some(name.to_owned());
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                bail!("line {n}: expected `key = value`, found {line:?}");
            };
            let (k, v) = (k.trim(), unquote(v.trim()));
            let Some(sec) = &section else {
                bail!("line {n}: key {k:?} appears before any [section]");
            };
            if seen.iter().any(|(s, key)| s == sec && key == k) {
                bail!("line {n}: [{sec}] {k} is set twice");
            }
            seen.push((sec.clone(), k.to_owned()));
            c.set(sec, k, v)
                .with_context(|| format!("line {n}: [{sec}] {k} = {v:?}"))?;
        }
        Ok(c)
    }

    fn set(&mut self, section: &str, key: &str, v: &str) -> Result<()> {
        match (section, key) {
            ("update", "stateroot") => {
                crate::deploy::validate_stateroot(v)?;
                self.update.stateroot = v.into()
            }
            ("update", "image") => self.update.image = opt_str(v),
            ("update", "platform") => self.update.platform = opt_str(v),
            ("update", "keep-blobs") => self.update.keep_blobs = parse_bool(v)?,
            ("registry", "insecure-hosts") => self.registry.insecure_hosts = list(v),
            ("registry", "ca-file") => self.registry.ca_file = opt_path(v),
            ("registry", "auth-file") => self.registry.auth_file = opt_path(v),
            ("registry", "concurrency") => self.registry.concurrency = parse_num(v, 1, 64)? as u32,
            ("registry", "bandwidth-limit") => self.registry.bandwidth_limit = parse_rate(v)?,
            ("registry", "timeout") => self.registry.timeout = parse_num(v, 1, 3600)?,
            ("registry", "retries") => self.registry.retries = parse_num(v, 0, 1000)? as u32,
            ("trust", "keys-dir") => {
                self.trust.keys_dirs = list(v).into_iter().map(Into::into).collect()
            }
            ("trust", "require-signature") => self.trust.require_signature = parse_bool(v)?,
            ("trust", "board") => self.trust.board = opt_str(v),
            ("boot", "backend") => {
                let kind = v.split_once(':').map_or(v, |(k, _)| k);
                if !matches!(kind, "none" | "grubenv" | "uboot" | "bls") {
                    bail!("unknown boot-count backend {kind:?} (expected none, grubenv:PATH, uboot:FW_ENV_CONFIG or bls:DIR)");
                }
                self.boot.backend = v.into()
            }
            ("boot", "tries") => self.boot.tries = parse_num(v, 1, 20)? as u32,
            ("boot", "rollback-command") => self.boot.rollback_command = v.into(),
            ("boot", "reboot-command") => self.boot.reboot_command = v.into(),
            ("boot", "check-timeout") => self.boot.check_timeout = parse_num(v, 1, 86400)?,
            ("mqtt", "broker") => self.mqtt.broker = opt_str(v),
            ("mqtt", "username") => self.mqtt.username = opt_str(v),
            ("mqtt", "password-file") => self.mqtt.password_file = opt_path(v),
            ("mqtt", "ca-file") => self.mqtt.ca_file = opt_path(v),
            ("mqtt", "client-cert") => self.mqtt.client_cert = opt_path(v),
            ("mqtt", "client-key") => self.mqtt.client_key = opt_path(v),
            ("mqtt", "topic-prefix") => self.mqtt.topic_prefix = v.into(),
            ("mqtt", "group") => self.mqtt.group = opt_str(v),
            ("policy", "check-interval") => self.policy.check_interval = parse_duration(v)?,
            ("policy", "auto-apply") => self.policy.auto_apply = parse_bool(v)?,
            ("policy", "allow-downgrade") => self.policy.allow_downgrade = parse_bool(v)?,
            _ => bail!("unknown key {key:?} in section [{section}] (see docs/config.md)"),
        }
        Ok(())
    }
}

const SECTIONS: &[&str] = &["update", "registry", "trust", "boot", "mqtt", "policy"];

fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(v)
}

fn opt_str(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_owned())
}

fn opt_path(v: &str) -> Option<PathBuf> {
    (!v.is_empty()).then(|| PathBuf::from(v))
}

/// Comma- or space-separated list.
fn list(v: &str) -> Vec<String> {
    v.split([',', ' ', '\t'])
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn parse_bool(v: &str) -> Result<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => bail!("expected true or false"),
    }
}

fn parse_num(v: &str, min: u64, max: u64) -> Result<u64> {
    let n: u64 = v
        .parse()
        .map_err(|_| anyhow::anyhow!("expected a whole number"))?;
    if n < min || n > max {
        bail!("must be between {min} and {max}");
    }
    Ok(n)
}

/// `0`, `500000`, `512K`, `2M`, `1G` (bytes per second, binary units).
fn parse_rate(v: &str) -> Result<u64> {
    let (num, mult) = match v.char_indices().last() {
        Some((i, 'K' | 'k')) => (&v[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&v[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&v[..i], 1 << 30),
        _ => (v, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("expected bytes per second like 0, 500000, 512K or 2M"))?;
    n.checked_mul(mult)
        .ok_or_else(|| anyhow::anyhow!("value too large"))
}

/// `3600`, `90s`, `30m`, `6h`, `1d` → seconds.
fn parse_duration(v: &str) -> Result<u64> {
    let (num, mult) = match v.char_indices().last() {
        Some((i, 's')) => (&v[..i], 1u64),
        Some((i, 'm')) => (&v[..i], 60),
        Some((i, 'h')) => (&v[..i], 3600),
        Some((i, 'd')) => (&v[..i], 86400),
        _ => (v, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("expected a duration like 3600, 90s, 30m, 6h or 1d"))?;
    n.checked_mul(mult)
        .ok_or_else(|| anyhow::anyhow!("value too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_file() {
        let c = Config::parse(
            "# comment\n[update]\nstateroot = fedora-iot\n\n[registry]\ninsecure-hosts = 127.0.0.1:5000, reg.local\n\
             bandwidth-limit = 512K\nconcurrency=4\n[trust]\nrequire-signature = false\nkeys-dir = /a /b\n\
             [boot]\nbackend = grubenv:/boot/grub/grubenv\ntries = 5\n[policy]\ncheck-interval = 6h\n",
        )
        .unwrap();
        assert_eq!(c.update.stateroot, "fedora-iot");
        assert_eq!(
            c.registry.insecure_hosts,
            vec!["127.0.0.1:5000", "reg.local"]
        );
        assert_eq!(c.registry.bandwidth_limit, 512 * 1024);
        assert_eq!(c.registry.concurrency, 4);
        assert!(!c.trust.require_signature);
        assert_eq!(
            c.trust.keys_dirs,
            vec![PathBuf::from("/a"), PathBuf::from("/b")]
        );
        assert_eq!(c.boot.backend, "grubenv:/boot/grub/grubenv");
        assert_eq!(c.boot.tries, 5);
        assert_eq!(c.policy.check_interval, 6 * 3600);
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn errors_name_key_and_line() {
        let cases = [
            ("[update]\nstaterot = x\n", "line 2", "staterot"),
            ("[updates]\n", "line 1", "[updates]"),
            ("[boot]\n\ntries = many\n", "line 3", "tries"),
            ("[boot]\nbackend = floppy:x\n", "line 2", "backend"),
            ("stateroot = x\n", "line 1", "stateroot"),
            (
                "[trust]\nrequire-signature = maybe\n",
                "line 2",
                "require-signature",
            ),
            (
                "[update]\nstateroot = a\nstateroot = b\n",
                "line 3",
                "stateroot",
            ),
            ("[update]\nstateroot = a/b\n", "line 2", "stateroot"),
            ("[registry]\njunk\n", "line 2", "junk"),
        ];
        for (text, line, key) in cases {
            let e = format!("{:#}", Config::parse(text).unwrap_err());
            assert!(e.contains(line) && e.contains(key), "{text:?}: {e}");
        }
    }
}
