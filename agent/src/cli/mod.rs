//! The `otter` command line: a small hand-rolled parser (no dependency) onto [`crate::update`],
//! [`crate::deploy`] and [`crate::status`].
//!
//! Exit codes: 0 ok · 1 failure · 2 usage/config error · 3 verification failed · 4 network ·
//! 5 not enough space · 77 `upgrade --check`: no update available.

use std::io::{IsTerminal, Write};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::config::{Config, DEFAULT_PATH};
use crate::deploy::{Deployment, Sysroot};
use crate::progress::{JsonLines, LogLines, NoProgress, Progress, TerminalBar};
use crate::source::ImageRef;
use crate::update::{self, Mode, Outcome, UpdateOptions};

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILURE: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_VERIFICATION: i32 = 3;
pub const EXIT_NETWORK: i32 = 4;
pub const EXIT_NO_SPACE: i32 = 5;
pub const EXIT_NO_UPDATE: i32 = 77;

const USAGE: &str = "\
usage: otter [GLOBAL OPTIONS] COMMAND [ARGS]

commands:
  install --sysroot DIR [--stateroot NAME] [--karg ARG]... IMAGE
                        first deployment onto an empty sysroot
  switch IMAGE          track another image, then upgrade to it
  upgrade [--check] [--download-only] [--apply]
                        update to the newest version of the tracked image
  rollback              make the previous deployment the default
  status [--json]       deployments, images, boot-count state
  import PATH           offline update from an OCI layout directory or oci-archive

IMAGE: docker://HOST/REPO:TAG (or HOST/REPO:TAG), oci:DIR[:TAG], oci-archive:FILE[:TAG]

global options:
  --sysroot DIR                 the system to act on (default /)
  --config FILE                 configuration file (default /etc/otter/otter.conf)
  -v, --verbose                 more log output (repeat for debug)
  --progress json|bar|log       progress format (default: bar on a terminal, else log)
  --progress-fd N               write JSON progress lines to file descriptor N
  --trusted-keys DIR            trust the minisign keys in DIR (instead of [trust] keys-dir)
  --no-signature-verification   DANGEROUS: accept unsigned images
  --allow-downgrade             accept a release older than the running one
  -h, --help                    this help

exit codes: 0 ok, 1 failure, 2 usage/config error, 3 verification failed, 4 network,
            5 not enough space, 77 upgrade --check: no update available
";

/// A command-line mistake (exit code 2).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (see `otter --help`)", self.0)
    }
}

impl std::error::Error for UsageError {}

/// A configuration file error (exit code 2).
#[derive(Debug)]
struct ConfigError;

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("invalid configuration")
    }
}

impl std::error::Error for ConfigError {}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    Auto,
    Json,
    Bar,
    Log,
}

/// Options valid for every command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Global {
    pub sysroot: PathBuf,
    pub config: Option<PathBuf>,
    pub verbose: u8,
    pub progress: ProgressMode,
    pub progress_fd: Option<i32>,
    pub no_signature_verification: bool,
    pub trusted_keys: Option<PathBuf>,
    pub allow_downgrade: bool,
}

impl Default for Global {
    fn default() -> Self {
        Global {
            sysroot: PathBuf::from("/"),
            config: None,
            verbose: 0,
            progress: ProgressMode::Auto,
            progress_fd: None,
            no_signature_verification: false,
            trusted_keys: None,
            allow_downgrade: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Install {
        stateroot: Option<String>,
        kargs: Vec<String>,
        image: String,
    },
    Switch {
        image: String,
    },
    Upgrade {
        check: bool,
        download_only: bool,
        apply: bool,
    },
    Rollback,
    Status {
        json: bool,
    },
    Import {
        path: String,
    },
    Help,
}

/// Parse the arguments (without argv[0]).
pub fn parse(args: &[String]) -> Result<(Global, Command)> {
    let mut g = Global::default();
    let mut sysroot_given = false;
    let mut cmd: Option<String> = None;
    let mut positional: Vec<String> = Vec::new();
    let mut stateroot = None;
    let mut kargs = Vec::new();
    let (mut check, mut download_only, mut apply, mut json) = (false, false, false, false);
    let mut it = args.iter().peekable();
    let mut only_positional = false;
    while let Some(arg) = it.next() {
        if only_positional || !arg.starts_with('-') || arg == "-" {
            if cmd.is_none() {
                cmd = Some(arg.clone());
            } else {
                positional.push(arg.clone());
            }
            continue;
        }
        if arg == "--" {
            only_positional = true;
            continue;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = |what: &str| -> Result<String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| usage(format!("{name} needs a value ({what})"))),
            }
        };
        let flag_only = |inline: &Option<String>| -> Result<()> {
            if inline.is_some() {
                return Err(usage(format!("{name} takes no value")));
            }
            Ok(())
        };
        match name {
            "-h" | "--help" => return Ok((g, Command::Help)),
            "-v" | "--verbose" => {
                flag_only(&inline)?;
                g.verbose += 1
            }
            "-vv" => g.verbose += 2,
            "--sysroot" => {
                g.sysroot = PathBuf::from(value("a directory")?);
                sysroot_given = true;
            }
            "--config" => g.config = Some(PathBuf::from(value("a file")?)),
            "--progress" => {
                g.progress = match value("json, bar or log")?.as_str() {
                    "json" => ProgressMode::Json,
                    "bar" => ProgressMode::Bar,
                    "log" => ProgressMode::Log,
                    other => {
                        return Err(usage(format!(
                            "--progress: unknown format {other:?} (expected json, bar or log)"
                        )))
                    }
                }
            }
            "--progress-fd" => {
                let v = value("a file descriptor number")?;
                let fd: i32 = v.parse().ok().filter(|n| *n >= 0).ok_or_else(|| {
                    usage(format!(
                        "--progress-fd: {v:?} is not a file descriptor number"
                    ))
                })?;
                g.progress_fd = Some(fd);
            }
            "--no-signature-verification" => {
                flag_only(&inline)?;
                g.no_signature_verification = true
            }
            "--trusted-keys" => g.trusted_keys = Some(PathBuf::from(value("a directory")?)),
            "--allow-downgrade" => {
                flag_only(&inline)?;
                g.allow_downgrade = true
            }
            "--stateroot" if cmd.as_deref() == Some("install") => {
                stateroot = Some(value("a stateroot name")?)
            }
            "--karg" if cmd.as_deref() == Some("install") => {
                kargs.push(value("a kernel argument")?)
            }
            "--check" if cmd.as_deref() == Some("upgrade") => {
                flag_only(&inline)?;
                check = true
            }
            "--download-only" if cmd.as_deref() == Some("upgrade") => {
                flag_only(&inline)?;
                download_only = true
            }
            "--apply" if cmd.as_deref() == Some("upgrade") => {
                flag_only(&inline)?;
                apply = true
            }
            "--json" if cmd.as_deref() == Some("status") => {
                flag_only(&inline)?;
                json = true
            }
            _ => {
                return Err(usage(match &cmd {
                    Some(c) => format!("unknown option {name} for `otter {c}`"),
                    None => format!("unknown option {name}"),
                }))
            }
        }
    }
    let Some(cmd) = cmd else {
        return Err(usage("no command given"));
    };
    let one = |what: &str, positional: &mut Vec<String>| -> Result<String> {
        match positional.len() {
            0 => Err(usage(format!("`otter {cmd}` needs {what}"))),
            1 => Ok(positional.remove(0)),
            _ => Err(usage(format!(
                "`otter {cmd}` takes one {what}, got {:?}",
                positional
            ))),
        }
    };
    let none = |positional: &Vec<String>| -> Result<()> {
        if let Some(p) = positional.first() {
            return Err(usage(format!("`otter {cmd}` takes no argument {p:?}")));
        }
        Ok(())
    };
    let c = match cmd.as_str() {
        "install" => {
            if !sysroot_given {
                return Err(usage("`otter install` needs --sysroot DIR"));
            }
            Command::Install {
                stateroot,
                kargs,
                image: one("an IMAGE", &mut positional)?,
            }
        }
        "switch" => Command::Switch {
            image: one("an IMAGE", &mut positional)?,
        },
        "upgrade" => {
            none(&positional)?;
            if check && (download_only || apply) {
                return Err(usage(
                    "--check cannot be combined with --download-only or --apply",
                ));
            }
            if download_only && apply {
                return Err(usage("--download-only and --apply exclude each other"));
            }
            Command::Upgrade {
                check,
                download_only,
                apply,
            }
        }
        "rollback" => {
            none(&positional)?;
            Command::Rollback
        }
        "status" => {
            none(&positional)?;
            Command::Status { json }
        }
        "import" => Command::Import {
            path: one("a PATH", &mut positional)?,
        },
        "help" => Command::Help,
        other => return Err(usage(format!("unknown command {other:?}"))),
    };
    Ok((g, c))
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let (g, cmd) = match parse(&args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("otter: {e:#}");
            return EXIT_USAGE;
        }
    };
    init_logging(g.verbose);
    match run(&g, cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("otter: error: {e:#}");
            exit_code(&e)
        }
    }
}

/// The exit code for an error (see the module docs).
pub fn exit_code(e: &anyhow::Error) -> i32 {
    if e.downcast_ref::<UsageError>().is_some()
        || e.downcast_ref::<ConfigError>().is_some()
        || e.chain().any(|c| c.is::<UsageError>())
    {
        return EXIT_USAGE;
    }
    if crate::verify::is_verification_error(e) {
        return EXIT_VERIFICATION;
    }
    match crate::fetch::error_class(e) {
        Some(crate::fetch::ErrorClass::Verification) => EXIT_VERIFICATION,
        Some(crate::fetch::ErrorClass::Network) => EXIT_NETWORK,
        Some(crate::fetch::ErrorClass::NoSpace) => EXIT_NO_SPACE,
        None => EXIT_FAILURE,
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    let _ = env_logger::Builder::new()
        .filter_level(level)
        .format_timestamp(None)
        .try_init();
}

fn load_config(g: &Global) -> Result<Config> {
    let res = match &g.config {
        Some(p) => Config::load(p, true),
        None => Config::load(Path::new(DEFAULT_PATH), false),
    };
    res.map_err(|e| e.context(ConfigError))
}

fn progress_sink(g: &Global) -> Result<Arc<dyn Progress>> {
    if let Some(fd) = g.progress_fd {
        // SAFETY: F_GETFD only queries the descriptor.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(usage(format!(
                "--progress-fd {fd}: not an open file descriptor"
            )));
        }
        // SAFETY: the fd is open (checked above) and handed to us by the caller for our
        // exclusive use for the rest of the process.
        let f = unsafe { std::fs::File::from_raw_fd(fd) };
        return Ok(Arc::new(JsonLines::new(f)));
    }
    Ok(match g.progress {
        ProgressMode::Json => Arc::new(JsonLines::new(std::io::stdout())),
        ProgressMode::Bar => Arc::new(TerminalBar::new(std::io::stderr())),
        ProgressMode::Log => Arc::new(LogLines::new(std::io::stderr())),
        ProgressMode::Auto if std::io::stderr().is_terminal() => {
            Arc::new(TerminalBar::new(std::io::stderr()))
        }
        ProgressMode::Auto => Arc::new(NoProgress),
    })
}

fn run(g: &Global, cmd: Command) -> Result<i32> {
    if cmd == Command::Help {
        print!("{USAGE}");
        return Ok(EXIT_OK);
    }
    let config = load_config(g)?;
    if g.no_signature_verification
        && matches!(
            cmd,
            Command::Install { .. }
                | Command::Switch { .. }
                | Command::Upgrade { .. }
                | Command::Import { .. }
        )
    {
        eprintln!(
            "otter: WARNING: --no-signature-verification: image signatures are NOT checked; \
             anyone who can change the image can take over this system"
        );
    }
    let opts = UpdateOptions {
        config: config.clone(),
        no_signature_verification: g.no_signature_verification,
        trusted_keys: g.trusted_keys.clone(),
        allow_downgrade: g.allow_downgrade,
        progress: progress_sink(g)?,
    };
    let sysroot = g.sysroot.as_path();
    let parse_image = |s: &str| -> Result<ImageRef> {
        s.parse::<ImageRef>()
            .map_err(|e| usage(format!("invalid image reference {s:?}: {e:#}")))
    };
    let mut hook = |d: &Deployment| update::before_switch(&config, sysroot, d);
    let out = std::io::stdout();
    match cmd {
        Command::Help => Ok(EXIT_OK),
        Command::Status { json } => {
            let st = crate::status::gather(sysroot)?;
            let mut o = out.lock();
            if json {
                st.write_json(&mut o)?;
            } else {
                st.write_text(&mut o)?;
            }
            Ok(EXIT_OK)
        }
        Command::Rollback => {
            let mut s = Sysroot::load_locked(sysroot)?;
            let d = s.rollback()?;
            println!(
                "Rollback: {} {} is now the default; reboot to use it.",
                d.stateroot,
                d.name()
            );
            Ok(EXIT_OK)
        }
        Command::Install {
            stateroot,
            kargs,
            image,
        } => {
            let image = parse_image(&image)?;
            let stateroot = stateroot.unwrap_or_else(|| config.update.stateroot.clone());
            let res = update::install(sysroot, &stateroot, &image, kargs, &opts, &mut hook);
            record(
                sysroot,
                "install",
                &image.to_string(),
                &res.as_ref().map(|d| Outcome::Deployed(Box::new(d.clone()))),
            );
            let d = res?;
            println!("Installed {image} as {} {}.", d.stateroot, d.name());
            Ok(EXIT_OK)
        }
        Command::Switch { image } => {
            let image = parse_image(&image)?;
            let res = update::update(sysroot, Some(&image), Mode::Deploy, &opts, &mut hook);
            finish(sysroot, "switch", &image.to_string(), res, false)
        }
        Command::Import { path } => {
            let image = if path.starts_with("oci:") || path.starts_with("oci-archive:") {
                parse_image(&path)?
            } else if Path::new(&path).is_dir() {
                parse_image(&format!("oci:{path}"))?
            } else {
                parse_image(&format!("oci-archive:{path}"))?
            };
            let res = update::import_offline(sysroot, &image, Mode::Deploy, &opts, &mut hook);
            finish(sysroot, "import", &image.to_string(), res, false)
        }
        Command::Upgrade {
            check,
            download_only,
            apply,
        } => {
            let mode = if check {
                Mode::Check
            } else if download_only {
                Mode::DownloadOnly
            } else {
                Mode::Deploy
            };
            let res = update::update(sysroot, None, mode, &opts, &mut hook);
            let code = finish(sysroot, "upgrade", "tracked image", res, check)?;
            if apply && code == EXIT_OK {
                reboot(sysroot)?;
            }
            Ok(code)
        }
    }
}

fn finish(sysroot: &Path, op: &str, image: &str, res: Result<Outcome>, check: bool) -> Result<i32> {
    if !check {
        record(sysroot, op, image, &res.as_ref().map(Clone::clone));
    }
    match res? {
        Outcome::NoUpdate { digest } => {
            println!("No update: the default deployment already runs {digest}.");
            Ok(if check { EXIT_NO_UPDATE } else { EXIT_OK })
        }
        Outcome::Available { digest, version } => {
            println!(
                "Update available: {digest}{}",
                version
                    .map(|v| format!(" (version {v})"))
                    .unwrap_or_default()
            );
            Ok(EXIT_OK)
        }
        Outcome::Downloaded { digest, commit } => {
            println!("Downloaded {digest} as commit {commit}; run `otter upgrade` to deploy it.");
            Ok(EXIT_OK)
        }
        Outcome::Deployed(d) => {
            println!(
                "Deployed {} {}{}; reboot to use it.",
                d.stateroot,
                d.name(),
                d.version
                    .as_ref()
                    .map(|v| format!(" (version {v})"))
                    .unwrap_or_default()
            );
            Ok(EXIT_OK)
        }
    }
}

/// Record the result in `ostree/otter/last-update.json` (best effort: never masks the result).
fn record(sysroot: &Path, op: &str, image: &str, res: &Result<Outcome, &anyhow::Error>) {
    if !sysroot.join("ostree/repo").is_dir() {
        return;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let v = match res {
        Ok(o) => {
            let (result, message) = match o {
                Outcome::NoUpdate { digest } => ("no-update", digest.clone()),
                Outcome::Available { digest, .. } => ("available", digest.clone()),
                Outcome::Downloaded { digest, .. } => ("downloaded", digest.clone()),
                Outcome::Deployed(d) => ("deployed", format!("{} {}", d.stateroot, d.name())),
            };
            serde_json::json!({"operation": op, "image": image, "time": now, "result": result, "message": message})
        }
        Err(e) => serde_json::json!({"operation": op, "image": image, "time": now,
            "result": "failed", "message": format!("{e:#}"), "exit_code": exit_code(e)}),
    };
    if let Err(e) = crate::status::record_last_update(sysroot, &v) {
        log::warn!("recording the update result: {e:#}");
    }
}

fn reboot(sysroot: &Path) -> Result<()> {
    if sysroot != Path::new("/") {
        println!(
            "Not rebooting: --sysroot is {}, not the running system.",
            sysroot.display()
        );
        return Ok(());
    }
    let _ = std::io::stdout().flush();
    let status = std::process::Command::new("systemctl")
        .arg("reboot")
        .status()
        .context("running `systemctl reboot`")?;
    if !status.success() {
        bail!("`systemctl reboot` failed: {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<(Global, Command)> {
        parse(&s.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
    }

    #[test]
    fn parses() {
        let (g, c) = p("install --sysroot /s --karg quiet --karg=console=ttyS0 oci:/x:v1").unwrap();
        assert_eq!(g.sysroot, PathBuf::from("/s"));
        assert_eq!(
            c,
            Command::Install {
                stateroot: None,
                kargs: vec!["quiet".into(), "console=ttyS0".into()],
                image: "oci:/x:v1".into()
            }
        );
        let (g, c) = p("-v --sysroot=/s upgrade --check --progress json").unwrap();
        assert_eq!((g.verbose, g.progress), (1, ProgressMode::Json));
        assert_eq!(
            c,
            Command::Upgrade {
                check: true,
                download_only: false,
                apply: false
            }
        );
        assert_eq!(
            p("status --json").unwrap().1,
            Command::Status { json: true }
        );
        assert_eq!(p("--help").unwrap().1, Command::Help);
    }

    #[test]
    fn usage_errors() {
        for bad in [
            "",
            "frobnicate",
            "install oci:/x",
            "upgrade --check --apply",
            "status --check",
            "switch",
            "switch a b",
            "rollback extra",
            "--progress=xml status",
            "--progress-fd -1 status",
            "--sysroot",
        ] {
            let e = p(bad).unwrap_err();
            assert!(e.is::<UsageError>(), "{bad:?}: {e:#}");
        }
    }
}
