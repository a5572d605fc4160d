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
use crate::deploy::{Switch, Sysroot};
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
  install --sysroot DIR [--stateroot NAME] [--board NAME|FILE] [--karg ARG]... IMAGE
                        first deployment onto an empty sysroot; --board writes the
                        board's boot-count config, kernel arguments and uEnv.txt
  switch IMAGE          track another image, then upgrade to it
  upgrade [--check] [--download-only] [--apply]
                        update to the newest version of the tracked image
  rollback              make the previous deployment the default
  status [--json]       deployments, images, boot-count state
  import PATH           offline update from an OCI layout directory or oci-archive
  import --media DIR    import the update on mounted removable media once (USB stick)
  daemon [--once] [--mqtt URL] [--device-id ID] [--group NAME]
                        timer policy ([policy]) and MQTT fleet commands ([mqtt]);
                        --once: one timer round, no MQTT (for a systemd timer)
  boot ARGS             the boot counter, as `otter-boot ARGS` (arm, mark-good, mark-bad,
                        status [--json], check, detect-fallback); --sysroot is its --root

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
        /// Board profile name (built in) or path to a `.conf`; checked at parse time.
        board: Option<String>,
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
    ImportMedia {
        dir: String,
    },
    Daemon {
        once: bool,
        mqtt: Option<String>,
        device_id: Option<String>,
        group: Option<String>,
    },
    /// `otter boot ARGS…`: the `otter-boot` command line.
    Boot {
        args: Vec<String>,
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
    let mut board = None;
    let (mut check, mut download_only, mut apply, mut json) = (false, false, false, false);
    let (mut once, mut mqtt, mut device_id, mut group, mut media) = (false, None, None, None, None);
    let mut it = args.iter().peekable();
    let mut only_positional = false;
    while let Some(arg) = it.next() {
        if only_positional || !arg.starts_with('-') || arg == "-" {
            if cmd.is_none() {
                cmd = Some(arg.clone());
                if arg == "boot" {
                    // `otter boot …` is `otter-boot …`: its options are its own.
                    positional.extend(it.by_ref().cloned());
                }
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
            "--board" if cmd.as_deref() == Some("install") => {
                let name = value("a board name or profile file")?;
                otter_board::Profile::find(&name).map_err(|e| usage(format!("--board: {e:#}")))?;
                board = Some(name)
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
            "--once" if cmd.as_deref() == Some("daemon") => {
                flag_only(&inline)?;
                once = true
            }
            "--mqtt" if cmd.as_deref() == Some("daemon") => {
                mqtt = Some(value("a broker URL mqtt://HOST:PORT")?)
            }
            "--device-id" if cmd.as_deref() == Some("daemon") => {
                device_id = Some(value("a device id")?)
            }
            "--group" if cmd.as_deref() == Some("daemon") => group = Some(value("a group name")?),
            "--media" if cmd.as_deref() == Some("import") => {
                media = Some(value("a mounted media directory")?)
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
        "boot" => Command::Boot {
            args: std::mem::take(&mut positional),
        },
        "install" => {
            if !sysroot_given {
                return Err(usage("`otter install` needs --sysroot DIR"));
            }
            Command::Install {
                stateroot,
                board,
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
        "import" => match media {
            Some(dir) => {
                none(&positional)?;
                Command::ImportMedia { dir }
            }
            None => Command::Import {
                path: one("a PATH", &mut positional)?,
            },
        },
        "daemon" => {
            none(&positional)?;
            if once && mqtt.is_some() {
                return Err(usage("--once runs the timer only; it takes no --mqtt"));
            }
            Command::Daemon {
                once,
                mqtt,
                device_id,
                group,
            }
        }
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
    if let Command::Boot { args } = cmd {
        // otter's --config and --sysroot become otter-boot's --config and --root, with otter's
        // rule that the config's paths are the sysroot's.
        let preset = otter_boot::cli::Preset {
            root: Some(g.sysroot.clone()),
            config: g.config.clone(),
            config_paths_in_root: true,
        };
        return Ok(i32::from(otter_boot::cli::main_with(
            args.into_iter(),
            "otter boot",
            preset,
        )));
    }
    let config = load_config(g)?;
    if g.no_signature_verification
        && matches!(
            cmd,
            Command::Install { .. }
                | Command::Switch { .. }
                | Command::Upgrade { .. }
                | Command::Import { .. }
                | Command::ImportMedia { .. }
                | Command::Daemon { .. }
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
    let mut hook = |sw: &Switch<'_>| update::before_switch(&config, sysroot, sw);
    let out = std::io::stdout();
    match cmd {
        Command::Help | Command::Boot { .. } => Ok(EXIT_OK),
        Command::Status { json } => {
            let st = crate::status::gather_with_boot(sysroot, &config)?;
            let mut o = out.lock();
            if json {
                st.write_json(&mut o)?;
            } else {
                st.write_text(&mut o)?;
            }
            Ok(EXIT_OK)
        }
        Command::Rollback => {
            let reason = std::env::var(FALLBACK_REASON_ENV)
                .ok()
                .filter(|r| !r.trim().is_empty());
            println!("{}", rollback(sysroot, &config, reason.as_deref())?);
            Ok(EXIT_OK)
        }
        Command::ImportMedia { dir } => {
            let root = state_root(sysroot, &config)?;
            let mut actions = crate::fleet::actions::UpdateActions::new(sysroot, opts);
            match crate::fleet::usb_import(
                Path::new(&dir),
                &root.join("var/lib/otter"),
                &mut actions,
            )? {
                crate::fleet::Outcome::NothingFound => {
                    println!("No otter update on {dir}.")
                }
                crate::fleet::Outcome::AlreadyImported { identity, image } => {
                    println!("{image} ({identity}) was imported before; nothing to do.")
                }
                crate::fleet::Outcome::Imported { image, result, .. } => {
                    println!("Imported {image}: {result}")
                }
            }
            Ok(EXIT_OK)
        }
        Command::Daemon {
            once,
            mqtt,
            device_id,
            group,
        } => daemon(sysroot, &config, opts, once, mqtt, device_id, group),
        Command::Install {
            stateroot,
            board,
            kargs,
            image,
        } => {
            let image = parse_image(&image)?;
            let profile = match &board {
                Some(b) => {
                    Some(otter_board::Profile::find(b).map_err(|e| usage(format!("{e:#}")))?)
                }
                None => None,
            };
            // The board's kernel arguments first, then --karg (which can add to them).
            let kargs = match &profile {
                Some(p) => p.kernel_args.iter().cloned().chain(kargs).collect(),
                None => kargs,
            };
            let stateroot = stateroot.unwrap_or_else(|| config.update.stateroot.clone());
            let res = update::install(sysroot, &stateroot, &image, kargs, &opts, &mut hook);
            record(
                sysroot,
                "install",
                &image.to_string(),
                &res.as_ref().map(|d| Outcome::Deployed(Box::new(d.clone()))),
            );
            let d = res?;
            if let Some(p) = &profile {
                apply_board(sysroot, &sysroot.join(d.rel_path()), p)?;
            }
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
                reboot(sysroot, &opts.config.boot.reboot_command)?;
            }
            Ok(code)
        }
    }
}

/// After `install --board`: the board's files into the sysroot (`fw_env.config`, kernel
/// arguments, `uEnv.txt`: [`otter_board::apply_to_sysroot`]) and the board name as `[trust]
/// board` into the deployment's `etc/otter/otter.conf` (only when that file exists and has no
/// `board` in `[trust]`; release statements naming another board are then refused).
fn apply_board(sysroot: &Path, deployment: &Path, profile: &otter_board::Profile) -> Result<()> {
    let applied = otter_board::apply_to_sysroot(profile, sysroot, &[deployment])
        .with_context(|| format!("applying board {} to {}", profile.name, sysroot.display()))?;
    for f in &applied.files {
        log::info!("board {}: wrote {}", profile.name, f.display());
    }
    let conf = deployment.join("etc/otter/otter.conf");
    if conf.is_file() {
        let text = std::fs::read_to_string(&conf)
            .with_context(|| format!("reading {}", conf.display()))?;
        if let Some(new) = with_trust_board(&text, &profile.name) {
            let mode = std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(&conf)
                    .with_context(|| format!("stat {}", conf.display()))?
                    .permissions(),
            ) & 0o7777;
            crate::ostree::write_atomic(&conf, new.as_bytes(), mode)?;
            log::info!(
                "board {}: set [trust] board in {}",
                profile.name,
                conf.display()
            );
        }
    }
    Ok(())
}

/// `text` (an otter.conf) with `board = NAME` in `[trust]`, or None when `[trust]` already has
/// a `board` key. Adds the key right after the `[trust]` header (or a new `[trust]` section at
/// the end), leaving every other line as it was.
fn with_trust_board(text: &str, name: &str) -> Option<String> {
    let mut section = String::new();
    let mut header_line = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(s) = t.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            section = s.trim().to_string();
            if section == "trust" && header_line.is_none() {
                header_line = Some(i);
            }
        } else if section == "trust" && t.split_once('=').map(|(k, _)| k.trim()) == Some("board") {
            return None;
        }
    }
    let mut out = String::with_capacity(text.len() + 32);
    match header_line {
        Some(h) => {
            for (i, line) in text.lines().enumerate() {
                out.push_str(line);
                out.push('\n');
                if i == h {
                    out.push_str(&format!("board = {name}\n"));
                }
            }
        }
        None => {
            out.push_str(text);
            if !text.is_empty() && !text.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&format!("\n[trust]\nboard = {name}\n"));
        }
    }
    Some(out)
}

fn finish(sysroot: &Path, op: &str, image: &str, res: Result<Outcome>, check: bool) -> Result<i32> {
    if !check {
        record(sysroot, op, image, &res.as_ref().map(Clone::clone));
    }
    match res? {
        Outcome::NoUpdate {
            older: Some(why), ..
        } => {
            println!("No update: the tracked image is not newer than the running system ({why}).");
            Ok(if check { EXIT_NO_UPDATE } else { EXIT_OK })
        }
        Outcome::NoUpdate { digest, .. } => {
            println!("No update: the default deployment already runs {digest}.");
            Ok(if check { EXIT_NO_UPDATE } else { EXIT_OK })
        }
        Outcome::Available {
            digest,
            version,
            plan,
        } => {
            println!(
                "Update available: {digest}{}; it will be fetched as {} ({}).",
                version
                    .map(|v| format!(" (version {v})"))
                    .unwrap_or_default(),
                plan.path,
                crate::progress::human(plan.bytes)
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
pub fn record(sysroot: &Path, op: &str, image: &str, res: &Result<Outcome, &anyhow::Error>) {
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
                Outcome::NoUpdate { digest, older } => {
                    ("no-update", older.clone().unwrap_or_else(|| digest.clone()))
                }
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

/// Environment variable `otter-boot` sets when it runs `[boot] rollback-command` after a
/// bootloader fallback (the reason, for the record).
pub const FALLBACK_REASON_ENV: &str = "OTTER_FALLBACK_REASON";

/// `otter rollback`. Never reboots. Returns the message for the user.
///
/// - `fallback_reason` None (a person or a fleet command): swap the default with the previous
///   deployment, then end a boot-count trial that was counting for the old default.
/// - `fallback_reason` Some (run by `otter-boot` on the deployment the boot loader fell back
///   to): make the *booted* deployment the default; if it already is, say so and succeed
///   (idempotent). The boot counter is left to `otter-boot`, which clears it after this
///   command succeeds. The reason is recorded in `last-update.json`.
pub fn rollback(sysroot: &Path, config: &Config, fallback_reason: Option<&str>) -> Result<String> {
    let mut s = Sysroot::load_locked(sysroot)?;
    let res = (|| -> Result<String> {
        if let Some(reason) = fallback_reason {
            match s.booted_index() {
                Some(0) => {
                    let d = &s.deployments()[0];
                    return Ok(format!(
                        "Rollback: the booted deployment {} {} is already the default; nothing to do.",
                        d.stateroot,
                        d.name()
                    ));
                }
                Some(i) => {
                    let d = s.promote(i)?;
                    log::warn!("fallback rollback: {reason}");
                    return Ok(format!(
                        "Rollback: the booted deployment {} {} is the default again (boot loader fallback: {reason}).",
                        d.stateroot,
                        d.name()
                    ));
                }
                None => log::warn!(
                    "{FALLBACK_REASON_ENV} is set but no booted deployment was found in {}: \
                     doing a plain rollback",
                    sysroot.display()
                ),
            }
        }
        let d = s.rollback()?;
        match crate::boot::disarm_after_rollback(sysroot, &config.boot) {
            Ok(true) => log::info!("ended the boot-count trial of the previous default"),
            Ok(false) => {}
            Err(e) => log::warn!("{e:#}"),
        }
        Ok(format!(
            "Rollback: {} {} is now the default; reboot to use it.",
            d.stateroot,
            d.name()
        ))
    })();
    drop(s);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let v = match &res {
        Ok(m) => serde_json::json!({"operation": "rollback", "image": null, "time": now,
            "result": "rolled-back", "message": m, "fallback_reason": fallback_reason}),
        Err(e) => serde_json::json!({"operation": "rollback", "image": null, "time": now,
            "result": "failed", "message": format!("{e:#}"), "exit_code": exit_code(e),
            "fallback_reason": fallback_reason}),
    };
    if sysroot.join("ostree/repo").is_dir() {
        if let Err(e) = crate::status::record_last_update(sysroot, &v) {
            log::warn!("recording the rollback: {e:#}");
        }
    }
    res
}

/// The root under which `var/lib/otter` (fleet state, health records) lives for `sysroot`.
fn state_root(sysroot: &Path, config: &Config) -> Result<PathBuf> {
    let s = Sysroot::load(sysroot)?;
    let (stateroot, _) = update::tracked(&s, config)?;
    Ok(crate::boot::state_root(sysroot, &stateroot))
}

/// `otter daemon`.
#[allow(clippy::too_many_arguments)]
fn daemon(
    sysroot: &Path,
    config: &Config,
    opts: UpdateOptions,
    once: bool,
    mqtt_url: Option<String>,
    device_id: Option<String>,
    group: Option<String>,
) -> Result<i32> {
    use crate::fleet::{self, DaemonOptions, MqttSettings};
    let m = &config.mqtt;
    let p = &config.policy;
    let mut d = DaemonOptions::new(sysroot.to_path_buf());
    d.state_dir = state_root(sysroot, config)?.join("var/lib/otter");
    d.device_id = device_id.or_else(|| m.device_id.clone());
    d.group = group.or_else(|| m.group.clone());
    d.timer_interval = (p.interval > 0).then(|| std::time::Duration::from_secs(p.interval));
    d.fleetlock_url = p.fleetlock_url.clone();
    let bad = |e: anyhow::Error| e.context(ConfigError);
    d.policy = fleet::Policy {
        mode: p.mode.parse().map_err(bad)?,
        windows: p
            .windows
            .iter()
            .map(|w| w.parse())
            .collect::<Result<_>>()
            .map_err(bad)?,
        timezone: fleet::tz::TimeZone::load(&p.timezone, sysroot)
            .with_context(|| format!("[policy] timezone = {:?}", p.timezone))
            .map_err(bad)?,
        rollout_delay: std::time::Duration::from_secs(p.rollout_delay),
    };
    if let Some(url) = mqtt_url.or_else(|| m.url.clone()) {
        let mut s = MqttSettings::new(&url);
        s.username = m.username.clone();
        s.password = match (&m.password, &m.password_file) {
            (Some(_), Some(_)) => {
                return Err(usage(
                    "[mqtt] password and password-file exclude each other",
                ))
            }
            (Some(p), None) => Some(p.clone()),
            (None, Some(f)) => Some(read_password(f)?),
            (None, None) => None,
        };
        s.tls = fleet::transport::TlsFiles {
            ca_file: m.ca_file.clone(),
            cert_file: m.cert_file.clone(),
            key_file: m.key_file.clone(),
        };
        s.keep_alive = m.keep_alive;
        s.client_id = m.client_id.clone();
        s.reconnect_min = std::time::Duration::from_secs(m.reconnect_min.max(1));
        s.reconnect_max = std::time::Duration::from_secs(m.reconnect_max.max(1));
        d.mqtt = Some(s);
    }
    let mut actions = fleet::actions::UpdateActions::new(sysroot, opts);
    if once {
        fleet::run_timer_once(d, &mut actions, &fleet::SystemClock)?;
        return Ok(EXIT_OK);
    }
    if d.mqtt.is_none() && d.timer_interval.is_none() {
        log::warn!("otter daemon: neither [mqtt] url nor [policy] interval is set: nothing to do until stopped");
    }
    fleet::stop_on_signals(d.stop.clone())?;
    fleet::run_daemon(d, &mut actions, &fleet::SystemClock)?;
    Ok(EXIT_OK)
}

fn read_password(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(4096).read_to_string(&mut text))
        .with_context(|| format!("reading [mqtt] password-file {}", path.display()))?;
    Ok(text.lines().next().unwrap_or("").to_owned())
}

/// Reboot the running system with `[boot] reboot-command` (run by `/bin/sh -c`, default
/// `systemctl reboot`); with another `--sysroot` only say so.
pub fn reboot(sysroot: &Path, command: &str) -> Result<()> {
    if sysroot != Path::new("/") {
        println!(
            "Not rebooting: --sysroot is {}, not the running system.",
            sysroot.display()
        );
        return Ok(());
    }
    let _ = std::io::stdout().flush();
    let status = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .status()
        .with_context(|| {
            format!("running the reboot command {command:?} ([boot] reboot-command)")
        })?;
    if !status.success() {
        bail!("the reboot command {command:?} ([boot] reboot-command) failed: {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<(Global, Command)> {
        parse(&s.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
    }

    /// `upgrade --apply` and the fleet's reboot run `[boot] reboot-command`, not a fixed
    /// `systemctl reboot`; a failing command is an error that names it.
    #[test]
    fn reboot_runs_the_configured_command() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("rebooted");
        reboot(Path::new("/"), &format!("echo now > {}", marker.display())).unwrap();
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "now\n");
        let err = reboot(Path::new("/"), "exit 3").unwrap_err();
        assert!(format!("{err:#}").contains("reboot-command"), "{err:#}");
        // another sysroot: never runs it
        reboot(dir.path(), &format!("rm {}", marker.display())).unwrap();
        assert!(marker.exists());
    }

    #[test]
    fn parses() {
        let (g, c) = p("install --sysroot /s --karg quiet --karg=console=ttyS0 oci:/x:v1").unwrap();
        assert_eq!(g.sysroot, PathBuf::from("/s"));
        assert_eq!(
            c,
            Command::Install {
                stateroot: None,
                board: None,
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
        let (_, c) = p("install --sysroot /s --board qemu-aarch64-virt oci:/x").unwrap();
        assert!(matches!(c, Command::Install { board: Some(b), .. } if b == "qemu-aarch64-virt"));
    }

    #[test]
    fn unknown_board_lists_known() {
        let e = p("install --sysroot /s --board nope oci:/x").unwrap_err();
        assert!(e.is::<UsageError>());
        assert!(format!("{e:#}").contains("qemu-aarch64-virt"), "{e:#}");
    }

    #[test]
    fn trust_board_edit() {
        assert_eq!(
            with_trust_board(
                "[update]\nimage = x\n[trust]\nrequire-signature = true\n",
                "b"
            )
            .unwrap(),
            "[update]\nimage = x\n[trust]\nboard = b\nrequire-signature = true\n"
        );
        assert_eq!(
            with_trust_board("[update]\nimage = x", "b").unwrap(),
            "[update]\nimage = x\n\n[trust]\nboard = b\n"
        );
        assert_eq!(with_trust_board("[trust]\n board = a\n", "b"), None);
        // `board` of another section does not count
        assert!(with_trust_board("[x]\nboard = a\n", "b").is_some());
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
            "install --sysroot /s --board no-such-board oci:/x",
            "status --board qemu-aarch64-virt",
        ] {
            let e = p(bad).unwrap_err();
            assert!(e.is::<UsageError>(), "{bad:?}: {e:#}");
        }
    }
}
