//! greenboot-compatible health checks, the verdict record and fallback handling.
//!
//! Checks: `check/required.d` (fail-fast: after the first failure the rest are skipped) then
//! `check/wanted.d` (failures only warn), each first under `/usr/lib/greenboot` then
//! `/etc/greenboot`; scripts are regular files ending in `.sh` (run with bash) or executable
//! files, in name order; `DISABLED_HEALTHCHECKS` in `greenboot.conf` skips scripts by basename.
//! Then `green.d` or `red.d`. Results go to stderr with journald `<N>` priority prefixes, one
//! line to `/run/motd.d/otter-health`, and the verdict to `/var/lib/otter/health.json`.
//!
//! Fallback: when the bootloader ran out of tries and booted the rollback entry, the configured
//! rollback command (default `otter rollback`) makes the old deployment the default; the
//! reason is recorded in `/var/lib/otter/rollback.json` (and in health.json), the counter is
//! cleared, and a marker in `/run/otter` makes the rest of this boot know it (no reboot loop).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::BootConfig;
use crate::json::Value;
use crate::{reroot, util, Backend, BootState, Error, IoContext, Result};

pub const HEALTH_FILE: &str = "/var/lib/otter/health.json";
pub const ROLLBACK_FILE: &str = "/var/lib/otter/rollback.json";
pub const MOTD_FILE: &str = "/run/motd.d/otter-health";
pub const FALLBACK_MARKER: &str = "/run/otter/fallback.json";
pub const GREENBOOT_CONF: &str = "/etc/greenboot/greenboot.conf";
/// Script roots, vendor first (greenboot order).
pub const CHECK_ROOTS: [&str; 2] = ["/usr/lib/greenboot", "/etc/greenboot"];
const STATE_VERSION: i64 = 1;
/// Largest state file we read back.
const MAX_STATE_FILE: u64 = 1 << 20;

/// The keys of `greenboot.conf` that otter uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GreenbootConf {
    pub max_boot_attempts: Option<u32>,
    pub disabled_healthchecks: Vec<String>,
}

impl GreenbootConf {
    /// Parse the shell-style file: `KEY=VALUE`, quotes, `DISABLED_HEALTHCHECKS=("a.sh" "b.sh")`.
    pub fn parse(text: &str) -> GreenbootConf {
        let mut c = GreenbootConf::default();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim();
            match k.trim() {
                "GREENBOOT_MAX_BOOT_ATTEMPTS" => {
                    c.max_boot_attempts = v.trim_matches(['"', '\'']).parse().ok();
                }
                "DISABLED_HEALTHCHECKS" => {
                    let inner = v.trim_start_matches('(').split(')').next().unwrap_or("");
                    c.disabled_healthchecks = inner
                        .split_whitespace()
                        .map(|s| s.trim_matches(['"', '\'']).to_string())
                        .filter(|s| !s.is_empty())
                        .collect();
                }
                _ => {}
            }
        }
        c
    }

    pub fn load(root: &Path) -> GreenbootConf {
        let p = reroot(root, Path::new(GREENBOOT_CONF));
        fs::read_to_string(p)
            .map(|t| GreenbootConf::parse(&t))
            .unwrap_or_default()
    }
}

/// How one script ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed(i32),
    TimedOut,
    /// Skipped after an earlier required failure.
    Skipped,
    /// Named in DISABLED_HEALTHCHECKS.
    Disabled,
    /// Could not be started.
    Error(String),
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed(_) => "failed",
            Outcome::TimedOut => "timeout",
            Outcome::Skipped => "skipped",
            Outcome::Disabled => "disabled",
            Outcome::Error(_) => "error",
        }
    }

    fn failed(&self) -> bool {
        matches!(
            self,
            Outcome::Failed(_) | Outcome::TimedOut | Outcome::Error(_)
        )
    }
}

#[derive(Debug, Clone)]
pub struct ScriptRun {
    pub name: String,
    /// Directory as seen on the device (without the --root prefix).
    pub dir: String,
    /// `required`, `wanted`, `green` or `red`.
    pub kind: &'static str,
    pub outcome: Outcome,
    pub duration_ms: u64,
}

impl ScriptRun {
    fn to_json(&self) -> Value {
        let code = match &self.outcome {
            Outcome::Failed(c) => Value::Num((*c).into()),
            Outcome::Passed => Value::Num(0),
            _ => Value::Null,
        };
        let mut o = vec![
            ("name".into(), Value::Str(self.name.clone())),
            ("dir".into(), Value::Str(self.dir.clone())),
            ("kind".into(), Value::Str(self.kind.into())),
            ("result".into(), Value::Str(self.outcome.label().into())),
            ("exit_code".into(), code),
            ("duration_ms".into(), Value::Num(self.duration_ms as i64)),
        ];
        if let Outcome::Error(e) = &self.outcome {
            o.push(("error".into(), Value::Str(e.clone())));
        }
        Value::Obj(o)
    }
}

/// Log to stderr with a journald priority prefix.
fn log(prio: u8, msg: &str) {
    eprintln!("<{prio}>{msg}");
}

/// Scripts of one directory in name order: regular files that end in `.sh` or are executable.
pub fn list_scripts(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::io(
                format!("reading check directory {}", dir.display()),
                e,
            ))
        }
    };
    let mut out = Vec::new();
    for de in rd {
        let de = de.ctx(|| format!("reading check directory {}", dir.display()))?;
        let name = de.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = de.path();
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        if name.ends_with(".sh") || meta.permissions().mode() & 0o111 != 0 {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn stderr_stdio() -> Stdio {
    use std::os::fd::AsFd;
    match std::io::stderr().as_fd().try_clone_to_owned() {
        Ok(fd) => Stdio::from(fd),
        Err(_) => Stdio::null(),
    }
}

/// Run one script with a timeout. Its output goes to our stderr (the journal).
pub fn run_script(path: &Path, timeout: Duration, root: &Path) -> Outcome {
    let executable = fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false);
    let mut cmd = if executable {
        Command::new(path)
    } else {
        let shell = if Path::new("/bin/bash").exists() {
            "/bin/bash"
        } else {
            "/bin/sh"
        };
        let mut c = Command::new(shell);
        c.arg(path);
        c
    };
    cmd.stdin(Stdio::null())
        .stdout(stderr_stdio())
        .env("OTTER_ROOT", root);
    // Own process group, so a timed-out script is killed together with its children.
    cmd.process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Outcome::Error(format!("cannot run {}: {e}", path.display())),
    };
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) => {
                return match st.code() {
                    Some(0) => Outcome::Passed,
                    Some(c) => Outcome::Failed(c),
                    None => Outcome::Failed(128 + st.signal().unwrap_or(0)),
                }
            }
            Ok(None) => {}
            Err(e) => return Outcome::Error(format!("waiting for {}: {e}", path.display())),
        }
        if start.elapsed() >= timeout {
            let pid = child.id() as i32;
            // SAFETY: signal the process group we created for this script (pgid == its pid).
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let _ = child.kill();
            let _ = child.wait();
            return Outcome::TimedOut;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run `<root>/{usr/lib,etc}/greenboot/<sub>` scripts. `strict`: stop after the first failure.
fn run_dir_set(
    root: &Path,
    sub: &str,
    kind: &'static str,
    strict: bool,
    gb: &GreenbootConf,
    timeout: Duration,
    runs: &mut Vec<ScriptRun>,
) -> Result<bool> {
    let mut ok = true;
    for base in CHECK_ROOTS {
        let dev_dir = format!("{base}/{sub}");
        let dir = reroot(root, Path::new(&dev_dir));
        for path in list_scripts(&dir)? {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let start = Instant::now();
            let outcome = if gb.disabled_healthchecks.contains(&name) {
                log(
                    6,
                    &format!("Script '{name}' is disabled (DISABLED_HEALTHCHECKS)"),
                );
                Outcome::Disabled
            } else if strict && !ok {
                log(
                    4,
                    &format!("Script '{name}' was skipped due to a previous failure"),
                );
                Outcome::Skipped
            } else {
                log(6, &format!("Running {kind} script '{dev_dir}/{name}'"));
                run_script(&path, timeout, root)
            };
            let duration_ms = start.elapsed().as_millis() as u64;
            match &outcome {
                Outcome::Passed => log(6, &format!("Script '{name}' SUCCESS")),
                Outcome::Failed(c) => {
                    let prio = if kind == "required" { 0 } else { 2 };
                    log(
                        prio,
                        &format!("Script '{name}' FAILURE (exit code '{c}'). Continuing..."),
                    )
                }
                Outcome::TimedOut => log(
                    if kind == "required" { 0 } else { 2 },
                    &format!(
                        "Script '{name}' FAILURE (timed out after {}s)",
                        timeout.as_secs()
                    ),
                ),
                Outcome::Error(e) => log(
                    if kind == "required" { 0 } else { 2 },
                    &format!("Script '{name}' FAILURE: {e}"),
                ),
                _ => {}
            }
            if outcome.failed() {
                ok = false;
            }
            runs.push(ScriptRun {
                name,
                dir: dev_dir.clone(),
                kind,
                outcome,
                duration_ms,
            });
        }
    }
    Ok(ok)
}

/// The deployment this boot runs (`ostree=` kernel argument), if any.
pub fn booted_deployment(root: &Path) -> Option<String> {
    let text = fs::read_to_string(reroot(root, Path::new("/proc/cmdline"))).ok()?;
    text.split_whitespace()
        .find_map(|a| a.strip_prefix("ostree=").map(str::to_string))
}

fn read_json(path: &Path) -> Option<Value> {
    let meta = fs::metadata(path).ok()?;
    if meta.len() > MAX_STATE_FILE {
        return None;
    }
    let text = fs::read_to_string(path).ok()?;
    match Value::parse(&text) {
        Ok(v) => Some(v),
        Err(e) => {
            log(4, &format!("ignoring unreadable {}: {e}", path.display()));
            None
        }
    }
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    util::create_parent(path)?;
    util::atomic_write(path, v.pretty().as_bytes())
}

fn state_json(st: &BootState) -> Value {
    Value::parse(&st.to_json()).unwrap_or(Value::Null)
}

/// If the bootloader fell back, run the rollback command, record why, clear the counter.
/// Returns the rollback record when this boot is a fallback boot (also when it was handled
/// earlier in this boot, e.g. by `detect-fallback`).
pub fn handle_fallback(
    root: &Path,
    backend: &mut dyn Backend,
    cfg: &BootConfig,
) -> Result<Option<Value>> {
    let marker = reroot(root, Path::new(FALLBACK_MARKER));
    if let Some(v) = read_json(&marker) {
        return Ok(Some(v));
    }
    let st = backend
        .state()
        .ctx(|| "reading the boot counter".to_string())?;
    if !st.fell_back {
        return Ok(None);
    }
    let rollback_path = reroot(root, Path::new(ROLLBACK_FILE));
    let key = st.fallback_key();
    if !key.is_empty() {
        if let Some(prev) = read_json(&rollback_path) {
            if prev.get("fallback_key").and_then(Value::as_str) == Some(key.as_str())
                && prev.get("status").and_then(Value::as_str) == Some("ok")
            {
                return Ok(None); // this fallback was handled in an earlier boot
            }
        }
    }
    log(3, "FALLBACK BOOT DETECTED! The bootloader ran out of tries and booted the previous deployment.");
    let prev_health = read_json(&reroot(root, Path::new(HEALTH_FILE)));
    let failed_checks = prev_health
        .as_ref()
        .filter(|h| h.get("verdict").and_then(Value::as_str) == Some("red"))
        .and_then(|h| h.get("failed_required"))
        .map(Value::str_array)
        .unwrap_or_default();
    let failed_deployment = prev_health
        .as_ref()
        .and_then(|h| h.get("deployment"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let reason = if failed_checks.is_empty() {
        "the new deployment did not complete a healthy boot within its tries (it may not have reached the health check)".to_string()
    } else {
        format!(
            "the new deployment failed its required health checks: {}",
            failed_checks.join(", ")
        )
    };

    log(
        5,
        &format!("Running rollback command: {}", cfg.rollback_command),
    );
    let status = Command::new("/bin/sh")
        .arg("-c")
        .arg(&cfg.rollback_command)
        .env("OTTER_ROOT", root)
        .env("OTTER_FALLBACK_REASON", &reason)
        .stdin(Stdio::null())
        .stdout(stderr_stdio())
        .status();
    let (ok, error) = match status {
        Ok(s) if s.success() => (true, None),
        Ok(s) => (
            false,
            Some(format!(
                "rollback command {:?} failed with {s}",
                cfg.rollback_command
            )),
        ),
        Err(e) => (
            false,
            Some(format!(
                "cannot run rollback command {:?}: {e}",
                cfg.rollback_command
            )),
        ),
    };
    if ok {
        backend
            .clear_fallback()
            .ctx(|| "clearing the boot counter after the rollback".to_string())?;
        log(3, "Default deployment has been rolled back.");
    } else if let Some(e) = &error {
        log(
            2,
            &format!("{e}; the boot counter is kept so the next boot tries again"),
        );
    }
    let record = Value::Obj(vec![
        ("version".into(), Value::Num(STATE_VERSION)),
        ("time".into(), Value::Num(util::now() as i64)),
        ("reason".into(), Value::Str(reason)),
        (
            "failed_deployment".into(),
            failed_deployment.map_or(Value::Null, Value::Str),
        ),
        (
            "failed_checks".into(),
            Value::Arr(failed_checks.into_iter().map(Value::Str).collect()),
        ),
        (
            "booted_deployment".into(),
            booted_deployment(root).map_or(Value::Null, Value::Str),
        ),
        ("backend".into(), Value::Str(backend.kind().into())),
        ("boot_state".into(), state_json(&st)),
        ("fallback_key".into(), Value::Str(key)),
        (
            "rollback_command".into(),
            Value::Str(cfg.rollback_command.clone()),
        ),
        (
            "status".into(),
            Value::Str(if ok { "ok" } else { "failed" }.into()),
        ),
        ("error".into(), error.map_or(Value::Null, Value::Str)),
    ]);
    write_json(&rollback_path, &record)?;
    write_json(&marker, &record)?;
    Ok(Some(record))
}

/// What `check` decided.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub healthy: bool,
    pub runs: Vec<ScriptRun>,
    pub fallback: Option<Value>,
    /// `marked-good`, `reboot`, `reboot-skipped`, `manual-intervention`, `none`.
    pub action: String,
    pub record: Value,
}

/// Options of `check`.
pub struct CheckOptions<'a> {
    pub root: PathBuf,
    pub config: BootConfig,
    pub no_reboot: bool,
    pub backend: Option<&'a mut dyn Backend>,
}

/// Run the health checks and act on the verdict.
pub fn check(opts: CheckOptions<'_>) -> Result<Verdict> {
    let CheckOptions {
        root,
        config,
        no_reboot,
        mut backend,
    } = opts;
    let gb = GreenbootConf::load(&root);
    let timeout = Duration::from_secs(config.check_timeout);

    let mut fallback = None;
    if let Some(b) = backend.as_deref_mut() {
        match handle_fallback(&root, b, &config) {
            Ok(f) => fallback = f,
            Err(e) => log(2, &format!("fallback detection failed: {e}")),
        }
    }
    let state = match backend.as_deref() {
        Some(b) => match b.state() {
            Ok(s) => Some(s),
            Err(e) => {
                log(2, &format!("cannot read the boot counter: {e}"));
                None
            }
        },
        None => {
            log(
                4,
                "no boot-count backend configured: checks run, nothing is marked",
            );
            None
        }
    };

    let mut runs = Vec::new();
    let required_ok = run_dir_set(
        &root,
        "check/required.d",
        "required",
        true,
        &gb,
        timeout,
        &mut runs,
    )?;
    run_dir_set(
        &root,
        "check/wanted.d",
        "wanted",
        false,
        &gb,
        timeout,
        &mut runs,
    )?;
    let healthy = required_ok;
    let failed = |kind: &str| -> Vec<String> {
        runs.iter()
            .filter(|r| r.kind == kind && r.outcome.failed())
            .map(|r| r.name.clone())
            .collect()
    };
    let (failed_required, failed_wanted) = (failed("required"), failed("wanted"));
    for w in &failed_wanted {
        log(4, &format!("wanted check '{w}' failed (warning only)"));
    }
    let rollback_failed = fallback
        .as_ref()
        .and_then(|f| f.get("status"))
        .and_then(Value::as_str)
        == Some("failed");

    let mut reboot = false;
    let action;
    let motd;
    if healthy {
        log(5, "Boot Status is GREEN - Health Check SUCCESS");
        action = match backend.as_deref_mut() {
            Some(_) if rollback_failed => "none".to_string(),
            Some(b) => match b.mark_good() {
                Ok(()) => "marked-good".to_string(),
                Err(e) => {
                    log(2, &format!("cannot mark the boot good: {e}"));
                    "none".to_string()
                }
            },
            None => "none".to_string(),
        };
        run_dir_set(&root, "green.d", "green", false, &gb, timeout, &mut runs)?;
        motd = "otter health: GREEN - all required health checks passed.".to_string();
    } else {
        log(0, "Boot Status is RED - Health Check FAILURE!");
        run_dir_set(&root, "red.d", "red", false, &gb, timeout, &mut runs)?;
        let armed = state.as_ref().is_some_and(|s| s.armed && !s.fell_back);
        let mut m = format!(
            "otter health: RED - failed: {}.",
            failed_required.join(", ")
        );
        if fallback.is_some() {
            log(
                0,
                "The fallback deployment is unhealthy too. Manual intervention necessary.",
            );
            action = "manual-intervention".to_string();
            m.push_str(" The fallback deployment is unhealthy too: manual intervention necessary.");
        } else if armed {
            let left = state.as_ref().and_then(|s| s.tries_left);
            let left_txt = left
                .map(|l| format!(" ({l} tries left before fallback)"))
                .unwrap_or_default();
            if no_reboot {
                log(
                    1,
                    &format!("SYSTEM is UNHEALTHY. Would reboot{left_txt} (--no-reboot)."),
                );
                action = "reboot-skipped".to_string();
            } else {
                log(1, &format!("SYSTEM is UNHEALTHY. Rebooting{left_txt}..."));
                action = "reboot".to_string();
                reboot = true;
            }
            m.push_str(&format!(" Rebooting{left_txt}."));
        } else {
            log(1, "SYSTEM is UNHEALTHY and no trial boot is being counted. Manual intervention necessary.");
            action = "manual-intervention".to_string();
            m.push_str(" Manual intervention necessary.");
        }
        motd = m;
    }
    let motd = match &fallback {
        Some(f) if f.get("status").and_then(Value::as_str) == Some("ok") => {
            format!("FALLBACK BOOT DETECTED! The previous deployment is the default again. {motd}")
        }
        Some(_) => {
            format!("FALLBACK BOOT DETECTED! Rolling back the default deployment FAILED. {motd}")
        }
        None => motd,
    };

    let state_after = backend.as_deref().and_then(|b| b.state().ok());
    let record = Value::Obj(vec![
        ("version".into(), Value::Num(STATE_VERSION)),
        ("time".into(), Value::Num(util::now() as i64)),
        (
            "verdict".into(),
            Value::Str(if healthy { "green" } else { "red" }.into()),
        ),
        (
            "deployment".into(),
            booted_deployment(&root).map_or(Value::Null, Value::Str),
        ),
        (
            "failed_required".into(),
            Value::Arr(failed_required.into_iter().map(Value::Str).collect()),
        ),
        (
            "failed_wanted".into(),
            Value::Arr(failed_wanted.into_iter().map(Value::Str).collect()),
        ),
        (
            "checks".into(),
            Value::Arr(runs.iter().map(ScriptRun::to_json).collect()),
        ),
        ("action".into(), Value::Str(action.clone())),
        ("fallback".into(), fallback.clone().unwrap_or(Value::Null)),
        (
            "boot_state".into(),
            state_after.as_ref().map_or(Value::Null, state_json),
        ),
        ("motd".into(), Value::Str(motd.clone())),
    ]);
    write_json(&reroot(&root, Path::new(HEALTH_FILE)), &record)?;
    let motd_path = reroot(&root, Path::new(MOTD_FILE));
    if let Err(e) = util::create_parent(&motd_path)
        .and_then(|_| util::atomic_write(&motd_path, format!("{motd}\n").as_bytes()))
    {
        log(4, &format!("cannot write {}: {e}", motd_path.display()));
    }
    if reboot {
        let st = Command::new("/bin/sh")
            .arg("-c")
            .arg(&config.reboot_command)
            .stdin(Stdio::null())
            .status();
        match st {
            Ok(s) if s.success() => {}
            Ok(s) => log(
                2,
                &format!("reboot command {:?} failed with {s}", config.reboot_command),
            ),
            Err(e) => log(
                2,
                &format!("cannot run reboot command {:?}: {e}", config.reboot_command),
            ),
        }
    }
    Ok(Verdict {
        healthy,
        runs,
        fallback,
        action,
        record,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greenboot_conf() {
        let c = GreenbootConf::parse(
            "# x\nGREENBOOT_MAX_BOOT_ATTEMPTS=5\nDISABLED_HEALTHCHECKS=(\"01_a.sh\" '02_b.sh')\n",
        );
        assert_eq!(c.max_boot_attempts, Some(5));
        assert_eq!(c.disabled_healthchecks, vec!["01_a.sh", "02_b.sh"]);
    }
}
