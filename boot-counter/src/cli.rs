//! The `otter-boot` command line, shared by the `otter-boot` binary and `otter boot`.
//! Exit codes: 0 ok (green), 1 failure (red verdict, backend error), 2 usage or config error.

use std::path::{Path, PathBuf};

use crate::config::{BootConfig, DEFAULT_CONFIG};
use crate::health::{self, CheckOptions, GreenbootConf};
use crate::{backend_from_spec_in_root, Backend, DEFAULT_TRIES};

pub const USAGE: &str = "usage: otter-boot [--root DIR] [--backend KIND:PATH] [--config FILE] COMMAND
commands:
  arm [--tries N]                 count the next N boots as trial boots (default: [boot] tries,
                                  else GREENBOOT_MAX_BOOT_ATTEMPTS, else 3)
  mark-good                       the current boot is healthy: stop counting
  mark-bad                        the current boot is bad: the next boot falls back
  status [--json]                 show the boot counter
  check [--no-reboot]             run greenboot-style health checks and act on the verdict
  detect-fallback                 after a bootloader fallback: roll back and record it
  grub-snippet                    print the GRUB counting snippet
backends: grubenv:PATH  uboot:FW_ENV_CONFIG  bls:ENTRIES_DIR  (or [boot] backend in /etc/otter/otter.conf)
--root DIR: act on the system mounted at DIR (default /): its /etc/otter/otter.conf, health
checks and state files, and the backend paths of that config, are taken inside DIR; paths given
with --backend or in a --config file are used as given";

struct Args {
    backend: Option<String>,
    config: Option<PathBuf>,
    command: String,
    tries: Option<u32>,
    json: bool,
    root: PathBuf,
    no_reboot: bool,
    /// Take the config's backend paths inside `root` even though `config` was named.
    config_paths_in_root: bool,
}

/// What a caller (`otter boot`) sets before the arguments are parsed.
#[derive(Clone, Debug, Default)]
pub struct Preset {
    /// `--root` (None: `/`).
    pub root: Option<PathBuf>,
    /// `--config`.
    pub config: Option<PathBuf>,
    /// The backend paths in `config` name files of the system at `root` (otter's rule for
    /// `--sysroot` with `--config`), instead of being used as given.
    pub config_paths_in_root: bool,
}

enum Fail {
    Usage(String),
    Runtime(String),
}

fn parse_args(mut it: impl Iterator<Item = String>, preset: Preset) -> Result<Args, Fail> {
    let mut a = Args {
        backend: None,
        config: preset.config,
        command: String::new(),
        tries: None,
        json: false,
        root: preset.root.unwrap_or_else(|| PathBuf::from("/")),
        no_reboot: false,
        config_paths_in_root: preset.config_paths_in_root,
    };
    let usage = |m: String| Fail::Usage(m);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, Fail> {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| usage(format!("{name} needs a value")))
        };
        match flag.as_str() {
            "--backend" => a.backend = Some(value("--backend")?),
            "--config" => a.config = Some(PathBuf::from(value("--config")?)),
            "--root" => a.root = PathBuf::from(value("--root")?),
            "--tries" => {
                let v = value("--tries")?;
                a.tries = Some(
                    v.parse()
                        .map_err(|_| usage(format!("--tries {v:?} is not a number")))?,
                );
            }
            "--json" => a.json = true,
            "--no-reboot" => a.no_reboot = true,
            "-h" | "--help" => return Err(usage(String::new())),
            s if s.starts_with('-') => return Err(usage(format!("unknown option {s}"))),
            s if a.command.is_empty() => a.command = s.to_string(),
            s => return Err(usage(format!("unexpected argument {s:?}"))),
        }
    }
    if a.command.is_empty() {
        return Err(usage("no command given".into()));
    }
    Ok(a)
}

fn load_config(a: &Args) -> Result<BootConfig, Fail> {
    let (path, required) = match &a.config {
        Some(p) => (p.clone(), true),
        None => (crate::reroot(&a.root, Path::new(DEFAULT_CONFIG)), false),
    };
    BootConfig::load(&path, required).map_err(|e| Fail::Usage(e.to_string()))
}

/// The backend named by `--backend` (paths as given), else by the config. A config read from
/// the root (no `--config`) describes that system, so its paths are taken inside `--root`.
fn open_backend(a: &Args, cfg: &BootConfig) -> Result<Option<Box<dyn Backend>>, Fail> {
    let (spec, root) = match (&a.backend, &cfg.backend) {
        (Some(spec), _) => (spec, Path::new("/")),
        (None, Some(spec)) if a.config.is_none() || a.config_paths_in_root => {
            (spec, a.root.as_path())
        }
        (None, Some(spec)) => (spec, Path::new("/")),
        (None, None) => return Ok(None),
    };
    backend_from_spec_in_root(spec, root)
        .map(Some)
        .map_err(|e| Fail::Usage(e.to_string()))
}

fn need(b: Option<Box<dyn Backend>>) -> Result<Box<dyn Backend>, Fail> {
    b.ok_or_else(|| {
        Fail::Usage("no boot-count backend: pass --backend KIND:PATH or set `backend` in the [boot] section of /etc/otter/otter.conf".into())
    })
}

fn run(a: Args) -> Result<u8, Fail> {
    let rt = |e: crate::Error| Fail::Runtime(e.to_string());
    if a.command == "grub-snippet" {
        print!("{}", crate::grubenv::counting_snippet());
        return Ok(0);
    }
    let cfg = load_config(&a)?;
    let backend = open_backend(&a, &cfg)?;
    match a.command.as_str() {
        "arm" => {
            let tries = a
                .tries
                .or(cfg.tries)
                .or_else(|| GreenbootConf::load(&a.root).max_boot_attempts)
                .unwrap_or(DEFAULT_TRIES);
            need(backend)?.arm(tries).map_err(rt)?;
            eprintln!("<5>otter-boot: armed: the next {tries} boots are trial boots");
        }
        "mark-good" => need(backend)?.mark_good().map_err(rt)?,
        "mark-bad" => need(backend)?.mark_bad().map_err(rt)?,
        "status" => {
            let st = need(backend)?.state().map_err(rt)?;
            if a.json {
                println!("{}", st.to_json());
            } else {
                print!("{st}");
            }
        }
        "detect-fallback" => {
            let mut b = need(backend)?;
            match health::handle_fallback(&a.root, b.as_mut(), &cfg).map_err(rt)? {
                Some(rec) if rec.get("status").and_then(|s| s.as_str()) == Some("failed") => {
                    return Ok(1)
                }
                Some(_) => eprintln!("<5>otter-boot: fallback handled"),
                None => eprintln!("<6>otter-boot: no fallback"),
            }
        }
        "check" => {
            let mut b = backend;
            let v = health::check(CheckOptions {
                root: a.root.clone(),
                config: cfg,
                no_reboot: a.no_reboot,
                backend: b.as_mut().map(|x| x.as_mut() as &mut dyn Backend),
            })
            .map_err(rt)?;
            return Ok(if v.healthy { 0 } else { 1 });
        }
        other => return Err(Fail::Usage(format!("unknown command {other:?}"))),
    }
    Ok(0)
}

/// Run `otter-boot` with `args` (without argv[0]); `prog` names the command in messages.
/// Returns the exit code.
pub fn main(args: impl Iterator<Item = String>, prog: &str) -> u8 {
    main_with(args, prog, Preset::default())
}

/// [`main`] with options set by the caller; the arguments can still override them.
pub fn main_with(args: impl Iterator<Item = String>, prog: &str, preset: Preset) -> u8 {
    let res = parse_args(args, preset).and_then(run);
    match res {
        Ok(c) => c,
        Err(Fail::Usage(m)) => {
            if !m.is_empty() {
                eprintln!("{prog}: {m}");
            }
            eprintln!("{USAGE}");
            2
        }
        Err(Fail::Runtime(m)) => {
            eprintln!("{prog}: error: {m}");
            1
        }
    }
}
