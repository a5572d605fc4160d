//! `otter-board`: list, show and export board profiles.

use std::process::ExitCode;

use otter_board::{builtin_names, builtin_text, Profile};

const USAGE: &str = "usage: otter-board list
       otter-board show NAME|FILE.conf
       otter-board raw NAME
       otter-board file NAME|FILE.conf fw_env.config|sfdisk|cmdline
       otter-board apply NAME|FILE.conf SYSROOT   (after otter install / ostree admin deploy)";

fn run(args: &[String]) -> anyhow::Result<Option<String>> {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    Ok(Some(match a.as_slice() {
        ["list"] => {
            let mut s = String::new();
            for n in builtin_names() {
                let p = Profile::builtin(n)?;
                s.push_str(&format!("{:<22} {}\n", p.name, p.description));
            }
            s
        }
        ["show", name] => Profile::find(name)?.summary(),
        ["raw", name] => builtin_text(name)
            .ok_or_else(|| anyhow::anyhow!("unknown board {name:?}; see 'otter-board list'"))?
            .to_string(),
        ["file", name, which] => Profile::find(name)?.file(which)?,
        ["apply", name, sysroot] => {
            let profile = Profile::find(name)?;
            let sysroot = std::path::Path::new(sysroot);
            let deployments = list_deployments(sysroot)?;
            let refs: Vec<&std::path::Path> = deployments.iter().map(|p| p.as_path()).collect();
            let applied = otter_board::apply_to_sysroot(&profile, sysroot, &refs)?;
            applied
                .files
                .iter()
                .map(|f| format!("wrote {}\n", f.display()))
                .collect()
        }
        _ => return Ok(None),
    }))
}

/// Every deployment root under `SYSROOT/ostree/deploy/*/deploy/`.
fn list_deployments(sysroot: &std::path::Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    use anyhow::Context;
    let base = sysroot.join("ostree/deploy");
    let mut out = Vec::new();
    for os in std::fs::read_dir(&base).with_context(|| format!("listing {}", base.display()))? {
        let dir = os
            .with_context(|| format!("listing {}", base.display()))?
            .path()
            .join("deploy");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for d in rd {
            let d = d
                .with_context(|| format!("listing {}", dir.display()))?
                .path();
            if d.is_dir() {
                out.push(d);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(Some(out)) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Ok(None) => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("otter-board: {e:#}");
            ExitCode::FAILURE
        }
    }
}
