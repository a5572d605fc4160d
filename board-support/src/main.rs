//! `otter-board`: list, show and export board profiles.

use std::process::ExitCode;

use otter_board::{builtin_names, builtin_text, Profile};

const USAGE: &str = "usage: otter-board list
       otter-board show NAME|FILE.conf
       otter-board raw NAME
       otter-board file NAME|FILE.conf fw_env.config|sfdisk|cmdline";

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
        _ => return Ok(None),
    }))
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
