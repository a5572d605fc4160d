//! Drives otter's delta code for `bench/delta.sh` (one step per process, so that
//! `/usr/bin/time` measures each step's wall time and peak RSS on its own):
//!
//! ```text
//! delta-bench import REPO TAR SUBJECT      # import a rootfs tar as one layer; prints the commit
//! delta-bench generate REPO FROM TO OUT    # generate the delta; prints a summary line
//! delta-bench apply REPO DIR FROM          # apply it; prints the commit
//! ```
//!
//! Build: `cargo build --release --example delta-bench -p otter --features publish`.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use anyhow::{bail, Context, Result};
use otter::import::Importer;
use otter::ostree::{Checksum, MetaValue, Repo, RepoMode};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["import", repo, tar, subject] => {
            let repo = Repo::init(Path::new(repo), RepoMode::BareUser)?;
            let f = File::open(tar).with_context(|| format!("opening {tar}"))?;
            let mut r = BufReader::new(f);
            let mut imp = Importer::new(&repo);
            imp.apply_layer("application/vnd.oci.image.layer.v1.tar", &mut r)?;
            let meta = vec![("version".to_string(), MetaValue::Str(subject.to_string()))];
            let done = imp.commit(subject, meta, None)?;
            repo.set_ref(&format!("bench/{subject}"), Some(&done.commit))?;
            println!("{}", done.commit);
        }
        ["generate", repo, from, to, out] => {
            let repo = Repo::open(Path::new(repo))?;
            let from: Checksum = from.parse()?;
            let to: Checksum = to.parse()?;
            let s = otter::delta::generate(&repo, &from, &to, Path::new(out))?;
            println!(
                "total={} parts={} superblock={} meta={} new={}/{}B patched={}/{}B->{}B copied={} btf-patched={} btf-map-runs={} dirtree-bases={}",
                s.total_size,
                s.parts,
                s.superblock_size,
                s.metadata_objects,
                s.new_files,
                s.new_bytes,
                s.patched_files,
                s.patched_bytes,
                s.patch_bytes,
                s.copied_files,
                s.btf_patched_files,
                s.btf_map_runs,
                s.dirtree_bases
            );
        }
        ["apply", repo, dir, from] => {
            let repo = Repo::open(Path::new(repo))?;
            let from: Checksum = from.parse()?;
            let done = otter::delta::apply_dir(&repo, Path::new(dir), &from)?;
            // Like a device: its own commit over the rebuilt root, ref bench/B; prints the
            // tree (content checksum).
            let commit = repo.transaction()?.commit(
                "delta-bench: B rebuilt from A and the delta",
                "",
                Vec::new(),
                None,
                0,
                &done.root_tree,
                &done.root_meta,
            )?;
            repo.set_ref("bench/B", Some(&commit))?;
            println!("{}", done.content);
        }
        _ => bail!("usage: delta-bench import REPO TAR SUBJECT | generate REPO FROM TO OUT | apply REPO DIR FROM"),
    }
    Ok(())
}
