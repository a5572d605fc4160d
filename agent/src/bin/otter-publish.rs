//! otter-publish: the publisher's tool (keys, signing, verification, offline export).
//!
//! ```text
//! otter-publish keygen --out PREFIX                 writes PREFIX.key (secret) and PREFIX.pub
//! otter-publish sign --key SECRET IMAGE [--version V] [--board NAME] [--timestamp SECS]
//!                    [--content-checksum HEX]
//! otter-publish verify --key PUBLIC IMAGE [--board NAME]
//! otter-publish export IMAGE DIR
//! otter-publish delta --from IMAGE_A --to IMAGE_B [--out DIR]
//! ```
//! IMAGE: `oci:DIR[:TAG]` or `docker://HOST/REPO[:TAG|@DIGEST]`. `--plain-http` talks HTTP to
//! the registry (loopback test registries). Exit codes: 0 ok, 1 failure, 2 usage, 3
//! verification failed.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

const USAGE: &str = "usage:
  otter-publish keygen --out PREFIX
  otter-publish sign --key SECRET_KEY IMAGE [--version V] [--board NAME] [--timestamp SECS]
                     [--content-checksum HEX] [--plain-http]
  otter-publish verify --key PUBLIC_KEY|DIR IMAGE [--board NAME] [--plain-http]
  otter-publish export IMAGE DIR [--plain-http]
  otter-publish delta --from IMAGE_A --to IMAGE_B [--out DIR] [--plain-http]
                     (without --out: attached to IMAGE_B as an OCI artifact)
IMAGE: oci:DIR[:TAG] or docker://HOST/REPO[:TAG|@DIGEST]
env: OTTER_PUBLISH_PASSWORD (encrypted secret key), OTTER_PUBLISH_CREDS=user:password (registry)";

struct Usage(String);
impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n\n{USAGE}", self.0)
    }
}
impl std::fmt::Debug for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}
impl std::error::Error for Usage {}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Usage(msg.into()))
}

#[derive(Default)]
struct Args {
    positional: Vec<String>,
    key: Option<PathBuf>,
    out: Option<PathBuf>,
    version: Option<String>,
    board: Option<String>,
    timestamp: Option<u64>,
    content_checksum: Option<String>,
    from: Option<String>,
    to: Option<String>,
    plain_http: bool,
}

fn parse(argv: &[String]) -> Result<Args> {
    let mut a = Args::default();
    let mut it = argv.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| usage(format!("{name} needs a value"))),
            }
        };
        match flag {
            "--key" | "-k" => a.key = Some(PathBuf::from(value(flag)?)),
            "--out" | "-o" => a.out = Some(PathBuf::from(value(flag)?)),
            "--version" => a.version = Some(value(flag)?),
            "--board" => a.board = Some(value(flag)?),
            "--timestamp" => {
                let v = value(flag)?;
                a.timestamp = Some(
                    v.parse()
                        .map_err(|_| usage(format!("--timestamp {v:?} is not a number")))?,
                )
            }
            "--content-checksum" => a.content_checksum = Some(value(flag)?),
            "--from" => a.from = Some(value(flag)?),
            "--to" => a.to = Some(value(flag)?),
            "--plain-http" => a.plain_http = true,
            "-h" | "--help" => return Err(usage("")),
            f if f.starts_with('-') && f.len() > 1 => {
                return Err(usage(format!("unknown option {f}")))
            }
            _ => a.positional.push(arg.clone()),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let env = env_logger::Env::default().filter_or("OTTER_LOG", "warn");
    env_logger::Builder::from_env(env).init();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match run(&argv) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.downcast_ref::<Usage>().is_some() {
                eprintln!("otter-publish: {e}");
                return ExitCode::from(2);
            }
            eprintln!("otter-publish: error: {e:#}");
            if otter::verify::is_verification_error(&e) {
                ExitCode::from(3)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

fn run(argv: &[String]) -> Result<()> {
    let Some((cmd, rest)) = argv.split_first() else {
        return Err(usage("missing command"));
    };
    let a = parse(rest)?;
    match cmd.as_str() {
        "keygen" => {
            let out = a
                .out
                .as_ref()
                .ok_or_else(|| usage("keygen needs --out PREFIX"))?;
            if !a.positional.is_empty() {
                return Err(usage("keygen takes no positional arguments"));
            }
            let id = otter::publish::keys::keygen(out)?;
            let (sk, pk) = otter::publish::keys::key_paths(out);
            println!(
                "key {id}: secret key {} (keep it secret), public key {} (install it in \
                 /etc/otter/keys.d/ on devices)",
                sk.display(),
                pk.display()
            );
            Ok(())
        }
        "sign" => {
            let [image] = a.positional.as_slice() else {
                return Err(usage("sign needs exactly one IMAGE"));
            };
            let key = a
                .key
                .as_ref()
                .ok_or_else(|| usage("sign needs --key SECRET_KEY"))?;
            let opts = otter::publish::SignOptions {
                version: a.version.clone(),
                board: a.board.clone(),
                timestamp: a.timestamp,
                content_checksum: a.content_checksum.clone(),
                plain_http: a.plain_http,
            };
            let signed = otter::publish::sign(image, key, &opts)?;
            println!(
                "signed {} version {} (content {}): artifact {}",
                signed.statement.manifest_digest,
                signed.statement.version,
                signed.statement.content_checksum,
                signed.artifact.digest
            );
            Ok(())
        }
        "verify" => {
            let [image] = a.positional.as_slice() else {
                return Err(usage("verify needs exactly one IMAGE"));
            };
            let key = a
                .key
                .as_ref()
                .ok_or_else(|| usage("verify needs --key PUBLIC_KEY|DIR"))?;
            let stmt = otter::publish::verify(image, key, a.board.clone(), a.plain_http)?;
            println!(
                "OK: {} version {} timestamp {} content {}{}",
                stmt.manifest_digest,
                stmt.version,
                stmt.timestamp,
                stmt.content_checksum,
                stmt.board
                    .map(|b| format!(" board {b}"))
                    .unwrap_or_default()
            );
            Ok(())
        }
        "export" => {
            let [image, dir] = a.positional.as_slice() else {
                return Err(usage("export needs IMAGE DIR"));
            };
            let desc = otter::publish::export(image, &PathBuf::from(dir), a.plain_http)
                .with_context(|| format!("cannot export {image} to {dir}"))?;
            println!("exported {} with its signatures to oci:{dir}", desc.digest);
            Ok(())
        }
        "delta" => {
            let (Some(from), Some(to)) = (&a.from, &a.to) else {
                return Err(usage("delta needs --from IMAGE_A and --to IMAGE_B"));
            };
            if !a.positional.is_empty() {
                return Err(usage("delta takes no positional arguments"));
            }
            let p = otter::publish::delta::delta(from, to, a.out.as_deref(), a.plain_http)?;
            let s = &p.summary;
            let tree =
                |c: Option<otter::ostree::Checksum>| c.map(|c| c.to_hex()).unwrap_or_default();
            println!(
                "delta {} (tree {}) → {} (tree {}): {} bytes in {} parts ({} files new, {} \
                 patched ({} of them kernel objects with renumbered BTF), {} copied)",
                p.from_digest,
                tree(s.from),
                p.to_digest,
                tree(s.to),
                s.total_size,
                s.parts,
                s.new_files,
                s.patched_files,
                s.btf_patched_files,
                s.copied_files
            );
            match (&p.artifact, &a.out) {
                (Some(d), _) => println!("attached to {to}: artifact {}", d.digest),
                (None, Some(dir)) => println!("written to {}", dir.display()),
                (None, None) => {}
            }
            Ok(())
        }
        other => bail!(usage(format!("unknown command {other:?}"))),
    }
}
