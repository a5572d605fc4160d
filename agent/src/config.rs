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
    /// Imported regular files of at least this many bytes get an ostree payload link (a local
    /// index by content SHA-256, used to skip files of zstd:chunked layers the repo already
    /// has); None (`off`): no links are written.
    pub payload_link_threshold: Option<u64>,
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
    /// Account for the registries in `credentials_for` (with `password_file`).
    pub username: Option<String>,
    /// File whose first line is the password (or token) of `username`.
    pub password_file: Option<PathBuf>,
    /// Registries (`host[:port]`) `username` is sent to; never to any other.
    pub credentials_for: Vec<String>,
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

/// `[boot]`: the boot counter's section, shared with `otter-boot` (which reads the same file).
/// One parser for both: [`otter_boot::config::BootConfig::set`]. `backend: None` = no boot
/// counting; `tries: None` = greenboot.conf's `GREENBOOT_MAX_BOOT_ATTEMPTS`, else 3.
pub type BootConfig = otter_boot::config::BootConfig;

/// `[mqtt]` (used by `otter daemon`; no `url` = no MQTT, the timer only)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MqttConfig {
    /// Broker URL `mqtt://host[:port]` or `mqtts://host[:port]`.
    pub url: Option<String>,
    /// Device id in the topics; None: derived from `/etc/machine-id`.
    pub device_id: Option<String>,
    /// Fleet group (`otter/group/GROUP/cmd`, FleetLock group); None: `default`.
    pub group: Option<String>,
    pub username: Option<String>,
    /// Password in the config file itself (prefer `password-file`).
    pub password: Option<String>,
    /// File whose first line is the password.
    pub password_file: Option<PathBuf>,
    /// CA certificates (PEM) that sign the broker certificate; required for `mqtts://`.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain and key (PEM) for TLS client authentication.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// MQTT keepalive in seconds (0 disables).
    pub keep_alive: u16,
    /// MQTT client id; None: `otter-<device id>`.
    pub client_id: Option<String>,
    /// Reconnect backoff: first wait and cap (seconds).
    pub reconnect_min: u64,
    pub reconnect_max: u64,
}

/// `[policy]` (used by `otter daemon`)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyConfig {
    /// What the timer does: `check`, `stage` or `apply`.
    pub mode: String,
    /// Seconds between timer rounds; 0 disables the timer.
    pub interval: u64,
    /// Maintenance windows for reboots (`DAYS HH:MM-HH:MM`), empty = any time.
    pub windows: Vec<String>,
    /// Time zone of the windows: `UTC`, `+HH:MM`, `localtime`.
    pub timezone: String,
    /// Seconds the timer waits after first seeing a new digest before taking it.
    pub rollout_delay: u64,
    /// FleetLock server asked before every reboot.
    pub fleetlock_url: Option<String>,
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
                payload_link_threshold: Some(crate::ostree::DEFAULT_PAYLOAD_LINK_THRESHOLD),
            },
            registry: RegistryConfig {
                insecure_hosts: Vec::new(),
                ca_file: None,
                auth_file: None,
                username: None,
                password_file: None,
                credentials_for: Vec::new(),
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
            boot: BootConfig::default(),
            mqtt: MqttConfig {
                url: None,
                device_id: None,
                group: None,
                username: None,
                password: None,
                password_file: None,
                ca_file: None,
                cert_file: None,
                key_file: None,
                keep_alive: 30,
                client_id: None,
                reconnect_min: 1,
                reconnect_max: 300,
            },
            policy: PolicyConfig {
                mode: "check".into(),
                interval: 0,
                windows: Vec::new(),
                timezone: "UTC".into(),
                rollout_delay: 0,
                fleetlock_url: None,
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
            let k = k.trim();
            let v = otter_boot::config::parse_value(v.trim())
                .map_err(|e| anyhow::anyhow!("line {n}: {k}: {e}"))?;
            let v = v.as_str();
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
        let r = &c.registry;
        match (&r.username, &r.password_file, r.credentials_for.is_empty()) {
            (None, None, true) | (Some(_), Some(_), false) => {}
            _ => bail!(
                "[registry] username, password-file and credentials-for go together: the \
                 account, the file holding its password, and the registries (host[:port]) it \
                 may be sent to"
            ),
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
            ("update", "payload-link-threshold") => {
                self.update.payload_link_threshold = match v {
                    "off" => None,
                    v => Some(parse_rate(v).map_err(|_| {
                        anyhow::anyhow!("expected a size in bytes like 4096 or 4K, or off")
                    })?),
                }
            }
            ("registry", "insecure-hosts") => self.registry.insecure_hosts = list(v),
            ("registry", "ca-file") => self.registry.ca_file = opt_path(v),
            ("registry", "auth-file") => self.registry.auth_file = opt_path(v),
            ("registry", "username") => self.registry.username = opt_str(v),
            ("registry", "password-file") => self.registry.password_file = opt_path(v),
            ("registry", "credentials-for") => self.registry.credentials_for = list(v),
            ("registry", "concurrency") => self.registry.concurrency = parse_num(v, 1, 64)? as u32,
            ("registry", "bandwidth-limit") => self.registry.bandwidth_limit = parse_rate(v)?,
            ("registry", "timeout") => self.registry.timeout = parse_num(v, 1, 3600)?,
            ("registry", "retries") => self.registry.retries = parse_num(v, 0, 1000)? as u32,
            ("trust", "keys-dir") => {
                self.trust.keys_dirs = list(v).into_iter().map(Into::into).collect()
            }
            ("trust", "require-signature") => self.trust.require_signature = parse_bool(v)?,
            ("trust", "board") => self.trust.board = opt_str(v),
            ("boot", k) => self.boot.set(k, v).map_err(|e| anyhow::anyhow!("{e}"))?,
            ("mqtt", "url") => {
                if let Some(u) = opt_str(v) {
                    u.parse::<crate::fleet::transport::BrokerUrl>()?;
                }
                self.mqtt.url = opt_str(v)
            }
            ("mqtt", "device-id") => self.mqtt.device_id = opt_topic_level("device id", v)?,
            ("mqtt", "group") => self.mqtt.group = opt_topic_level("group", v)?,
            ("mqtt", "username") => self.mqtt.username = opt_str(v),
            ("mqtt", "password") => self.mqtt.password = opt_str(v),
            ("mqtt", "password-file") => self.mqtt.password_file = opt_path(v),
            ("mqtt", "ca-file") => self.mqtt.ca_file = opt_path(v),
            ("mqtt", "cert-file") => self.mqtt.cert_file = opt_path(v),
            ("mqtt", "key-file") => self.mqtt.key_file = opt_path(v),
            ("mqtt", "keep-alive") => self.mqtt.keep_alive = parse_duration_max(v, 65535)? as u16,
            ("mqtt", "client-id") => self.mqtt.client_id = opt_str(v),
            ("mqtt", "reconnect-min") => self.mqtt.reconnect_min = parse_duration(v)?,
            ("mqtt", "reconnect-max") => self.mqtt.reconnect_max = parse_duration(v)?,
            ("policy", "mode") => {
                v.parse::<crate::fleet::Mode>()?;
                self.policy.mode = v.into()
            }
            ("policy", "interval") => self.policy.interval = parse_duration(v)?,
            ("policy", "windows") => {
                let ws: Vec<String> = v
                    .split(';')
                    .map(str::trim)
                    .filter(|w| !w.is_empty())
                    .map(str::to_owned)
                    .collect();
                for w in &ws {
                    w.parse::<crate::fleet::Window>()
                        .with_context(|| format!("window {w:?}"))?;
                }
                self.policy.windows = ws
            }
            ("policy", "timezone") => {
                if v != "localtime" {
                    v.parse::<crate::fleet::tz::TimeZone>()?;
                }
                self.policy.timezone = v.into()
            }
            ("policy", "rollout-delay") => self.policy.rollout_delay = parse_duration(v)?,
            ("policy", "fleetlock-url") => {
                if let Some(u) = opt_str(v) {
                    if !(u.starts_with("http://") || u.starts_with("https://")) {
                        bail!("expected an http:// or https:// URL");
                    }
                }
                self.policy.fleetlock_url = opt_str(v)
            }
            ("policy", "allow-downgrade") => self.policy.allow_downgrade = parse_bool(v)?,
            _ => bail!("unknown key {key:?} in section [{section}] (see docs/config.md)"),
        }
        Ok(())
    }
}

const SECTIONS: &[&str] = &["update", "registry", "trust", "boot", "mqtt", "policy"];

fn opt_topic_level(what: &str, v: &str) -> Result<Option<String>> {
    let v = opt_str(v);
    if let Some(x) = &v {
        crate::fleet::identity::check_topic_level(what, x)?;
    }
    Ok(v)
}

fn parse_duration_max(v: &str, max: u64) -> Result<u64> {
    let n = parse_duration(v)?;
    if n > max {
        bail!("must be at most {max} seconds");
    }
    Ok(n)
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
             [boot]\nbackend = grubenv:/boot/grub/grubenv\ntries = 5\n[policy]\ninterval = 6h\nmode = stage\n\
             windows = \"Mon-Fri 02:00-04:00; Sat,Sun 22:00-02:00\"\n[mqtt]\nurl = mqtt://127.0.0.1:1883\n\
             device-id = dev1\nkeep-alive = 1m\n",
        )
        .unwrap();
        assert_eq!(c.update.stateroot, "fedora-iot");
        assert_eq!(c.update.payload_link_threshold, Some(4096));
        for (v, want) in [("8K", Some(8192)), ("0", Some(0)), ("off", None)] {
            let c = Config::parse(&format!("[update]\npayload-link-threshold = {v}\n")).unwrap();
            assert_eq!(c.update.payload_link_threshold, want, "{v}");
        }
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
        assert_eq!(
            c.boot.backend.as_deref(),
            Some("grubenv:/boot/grub/grubenv")
        );
        assert_eq!(c.boot.tries, Some(5));
        assert_eq!(c.policy.interval, 6 * 3600);
        assert_eq!(c.policy.mode, "stage");
        assert_eq!(c.policy.windows.len(), 2);
        assert_eq!(c.mqtt.url.as_deref(), Some("mqtt://127.0.0.1:1883"));
        assert_eq!(c.mqtt.device_id.as_deref(), Some("dev1"));
        assert_eq!(c.mqtt.keep_alive, 60);
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn errors_name_key_and_line() {
        let cases = [
            (
                "[update]\npayload-link-threshold = big\n",
                "line 2",
                "payload-link-threshold",
            ),
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
            ("[policy]\nmode = yolo\n", "line 2", "mode"),
            ("[policy]\nwindows = Mon 25:00-26:00\n", "line 2", "windows"),
            ("[mqtt]\nurl = http://x\n", "line 2", "url"),
            ("[mqtt]\ngroup = a/b\n", "line 2", "group"),
            ("[mqtt]\nbroker = mqtt://x\n", "line 2", "broker"),
            ("[boot]\nbackend = \"grubenv:/x\n", "line 2", "backend"),
        ];
        for (text, line, key) in cases {
            let e = format!("{:#}", Config::parse(text).unwrap_err());
            assert!(e.contains(line) && e.contains(key), "{text:?}: {e}");
        }
    }
}
