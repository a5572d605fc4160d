//! Crash injection: run an operation in a child process, kill it with SIGKILL at the N-th crash
//! point (`otter::fsutil`, cargo feature `crash-points`, `OTTER_CRASH_AT=N`), then check what a
//! power cut must leave behind:
//!
//! * the repository passes the real `ostree fsck`;
//! * the sysroot is readable by the real `ostree admin status`; the deployment that was the
//!   default before is still there with an unchanged tree, and the default is either it or the
//!   complete new one;
//! * rerunning the operation completes.
//!
//! Operations: import+commit, `otter install`, `otter switch`, `otter rollback`, a delta apply
//! (A → B from a delta artifact in an OCI layout: the rerun must give B's exact tree and skip the
//! parts already complete), a journaled blob download from a loopback `docker-registry` (the
//! rerun must fetch exactly the bytes not yet journaled) and the boot-count environment writes.
//!
//! Every operation is first run once with `OTTER_CRASH_LOG` to count its crash points; the points
//! tried are spread evenly over them (all of them when there are fewer than the budget). The same
//! mechanism injects EIO (`OTTER_CRASH_AT=N:eio`): the operation must fail with the error, and
//! change nothing. ENOSPC comes from a real 8 MiB tmpfs.
//!
//! The summary table (operation × points × recovered) is printed and written to
//! `target/crash-summary.txt`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod deploy_util;
mod source_util;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use deploy_util::{admin_status_list, make_os_tree, run, snapshot, Tmpfs};

const OTTER: &str = env!("CARGO_BIN_EXE_otter");
/// Kill points tried per operation (spread evenly when an operation has more);
/// `OTTER_CRASH_KILL_POINTS` overrides it.
const KILL_POINTS: u64 = 100;
/// EIO points tried per operation; `OTTER_CRASH_EIO_POINTS` overrides it.
const EIO_POINTS: u64 = 20;
/// Journal chunk size of the download operation (small, so a 1 MiB blob has many chunks).
const FETCH_CHUNK: u64 = 16 * 1024;

fn budget(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// Child side: operations that have no CLI of their own run in this test binary, re-executed.

const CHILD_ENV: &str = "OTTER_CRASH_CHILD";

/// Not a test: the child half of `import_commit` (runs only when the harness starts this binary
/// with OTTER_CRASH_CHILD set; ignored otherwise).
#[test]
#[ignore = "child process of the crash harness"]
fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    if let Some(backend) = spec.strip_prefix("boot|") {
        // Arm the counter, then mark the boot good: the writes of a trial boot.
        let res = otter_boot::backend_from_spec(backend).and_then(|mut b| {
            b.arm(3)?;
            b.mark_good()
        });
        if let Err(e) = res {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        println!("boot env done");
        return;
    }
    if let Some(rest) = spec.strip_prefix("delta|") {
        let v: Vec<&str> = rest.split('|').collect();
        match child_delta(v[0], v[1], v[2], v[3]) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::exit(1);
            }
        }
        return;
    }
    if let Some(rest) = spec.strip_prefix("fetch|") {
        let (reference, blob_dir) = rest.split_once('|').unwrap();
        // Warnings (a failed best-effort removal) to stderr, where the harness looks for EIO.
        let _ = env_logger::Builder::new()
            .filter_level(log::LevelFilter::Warn)
            .try_init();
        let res = (|| -> anyhow::Result<()> {
            let mut opts = source_util::test_opts(Path::new(blob_dir));
            opts.chunk_size = FETCH_CHUNK;
            opts.concurrency = 1;
            let mut src = otter::source::open(&reference.parse()?, &opts)?;
            let resolved = src.resolve()?;
            src.prefetch(&resolved.manifest.layers)
        })();
        if let Err(e) = res {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
        println!("fetched");
        return;
    }
    let (repo, tar) = spec.split_once('|').unwrap();
    let repo = otter::ostree::Repo::open(Path::new(repo)).unwrap();
    let mut imp = otter::import::Importer::new(&repo);
    let mut f = fs::File::open(tar).unwrap();
    let res = imp
        .apply_layer("application/vnd.oci.image.layer.v1.tar", &mut f)
        .and_then(|()| imp.commit("crash test", vec![], None))
        .and_then(|done| {
            repo.set_ref("otter/new", Some(&done.commit))?;
            Ok(done)
        });
    match res {
        Ok(done) => println!("content {}", done.content_checksum),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn child_import(repo: &Path, tar: &Path, crash: Option<&str>, log: Option<&Path>) -> Output {
    child(&format!("{}|{}", repo.display(), tar.display()), crash, log)
}

/// Run the child half of the harness with `spec` (see [`crash_child`]).
fn child(spec: &str, crash: Option<&str>, log: Option<&Path>) -> Output {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "--exact",
        "crash_child",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, spec);
    env_crash(&mut c, crash, log);
    c.output().unwrap()
}

/// Child side of the delta operation: rebuild the tree of `oci:LAYOUT:v2` from its delta
/// artifact on top of commit `base` in `repo` (as `update::try_delta` does), write a commit over
/// it and set `otter/b`. Prints what `apply` reported.
fn child_delta(
    repo: &str,
    layout: &str,
    base: &str,
    booted_digest: &str,
) -> anyhow::Result<String> {
    let repo = otter::ostree::Repo::open(Path::new(repo))?;
    let base: otter::ostree::Checksum = base.parse()?;
    let opts = otter::source::SourceOptions {
        blob_dir: Path::new(layout).join("no-blobs"),
        ..Default::default()
    };
    let mut src = otter::source::open(&format!("oci:{layout}:v2").parse()?, &opts)?;
    let target = src.resolve()?.manifest_digest;
    let applied = otter::delta::apply_from_source(&repo, &mut *src, &target, booted_digest, &base)?
        .ok_or_else(|| anyhow::anyhow!("no delta found for {target}"))?;
    let c = repo.transaction()?.commit(
        "delta crash test",
        "",
        vec![],
        None,
        1_800_000_000,
        &applied.root_tree,
        &applied.root_meta,
    )?;
    repo.set_ref("otter/b", Some(&c))?;
    Ok(format!(
        "content {} applied {} skipped {} bytes {}",
        applied.content, applied.parts_applied, applied.parts_skipped, applied.bytes_read
    ))
}

fn child_boot(backend: &str, crash: Option<&str>, log: Option<&Path>) -> Output {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "--exact",
        "crash_child",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, format!("boot|{backend}"));
    env_crash(&mut c, crash, log);
    c.output().unwrap()
}

/// Boot-count environment writes (arm + mark-good), killed at every point; afterwards the real
/// tool must read the environment (`grub-editenv list`, `fw_printenv -c`) and a rerun completes.
fn boot_env(work: &Path, name: &str, setup: &dyn Fn(&Path) -> (String, Vec<String>)) -> Row {
    let label = name;
    let name = &name.replace([' ', '+'], "_");
    let pristine = work.join(format!("{name}-pristine"));
    fs::create_dir(&pristine).unwrap();
    setup(&pristine);
    let log = work.join(format!("{name}.log"));
    let r = work.join(format!("{name}-ref"));
    cp_a(&pristine, &r);
    let (spec, _) = setup_spec(&r, setup);
    let o = child_boot(&spec, None, Some(&log));
    assert!(o.status.success(), "reference {name}: {}", text(&o));
    let total = count_points(&log);
    let mut row = Row::new(label, total);
    let check = |dir: &Path| -> Result<(), String> {
        let (_, tool) = setup_spec(dir, setup);
        let o = Command::new(&tool[0])
            .args(&tool[1..])
            .output()
            .map_err(|e| {
                format!(
                    "cannot run {} (apt: grub-common / libubootenv-tool): {e}",
                    tool[0]
                )
            })?;
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        if !o.status.success() || out.contains("Cannot read environment") || out.contains("rror") {
            return Err(format!(
                "{tool:?} cannot read the environment: {}",
                text(&o)
            ));
        }
        Ok(())
    };
    for n in spread(total, budget("OTTER_CRASH_KILL_POINTS", KILL_POINTS)) {
        let d = work.join(format!("{name}-k{n}"));
        cp_a(&pristine, &d);
        let (spec, _) = setup_spec(&d, setup);
        let o = child_boot(&spec, Some(&n.to_string()), None);
        let res = (|| {
            if !killed(&o) {
                return Err(format!("not killed: {}", text(&o)));
            }
            check(&d)?;
            let o = child_boot(&spec, None, None);
            if !o.status.success() {
                return Err(format!("rerun failed: {}", text(&o)));
            }
            check(&d)
        })();
        row.kill(n, res);
        let _ = fs::remove_dir_all(&d);
    }
    for n in spread(total, budget("OTTER_CRASH_EIO_POINTS", EIO_POINTS)) {
        let d = work.join(format!("{name}-e{n}"));
        cp_a(&pristine, &d);
        let (spec, _) = setup_spec(&d, setup);
        let o = child_boot(&spec, Some(&format!("{n}:eio")), None);
        let res = (|| {
            eio_reported(&o)?;
            check(&d)
        })();
        row.eio(n, res);
        let _ = fs::remove_dir_all(&d);
    }
    row
}

/// The backend spec and the real tool's read command for an environment set up in `dir`
/// (the setup function is idempotent on the paths it returns).
fn setup_spec(dir: &Path, setup: &dyn Fn(&Path) -> (String, Vec<String>)) -> (String, Vec<String>) {
    setup(dir)
}

fn env_crash(c: &mut Command, crash: Option<&str>, log: Option<&Path>) {
    c.env_remove("OTTER_CRASH_AT").env_remove("OTTER_CRASH_LOG");
    if let Some(n) = crash {
        c.env("OTTER_CRASH_AT", n);
    }
    if let Some(l) = log {
        c.env("OTTER_CRASH_LOG", l);
    }
}

fn otter(sysroot: &Path, args: &[&str], crash: Option<&str>, log: Option<&Path>) -> Output {
    let mut c = Command::new(OTTER);
    c.arg(format!("--sysroot={}", sysroot.display()))
        .arg("--config=/dev/null")
        .args(args)
        .env_remove("OTTER_BOOTED_DEPLOYMENT");
    env_crash(&mut c, crash, log);
    c.output().unwrap()
}

fn killed(o: &Output) -> bool {
    use std::os::unix::process::ExitStatusExt;
    o.status.signal() == Some(libc::SIGKILL)
}

fn text(o: &Output) -> String {
    format!(
        "{:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

// ---------------------------------------------------------------------------------------------
// Checks.

fn fsck(repo: &Path) -> Result<(), String> {
    let o = Command::new("ostree")
        .arg("fsck")
        .arg(format!("--repo={}", repo.display()))
        .output()
        .map_err(|e| format!("cannot run ostree (apt package ostree): {e}"))?;
    let out = String::from_utf8_lossy(&o.stdout);
    if !o.status.success() || !out.contains("no errors found") {
        return Err(format!("ostree fsck failed: {}", text(&o)));
    }
    Ok(())
}

/// Our own reader must also accept the repo (refs listing, every ref's commit).
fn our_refs(repo: &Path) -> Result<Vec<(String, otter::ostree::Checksum)>, String> {
    let r = otter::ostree::Repo::open(repo).map_err(|e| format!("{e:#}"))?;
    let refs = r.list_refs("").map_err(|e| format!("list_refs: {e:#}"))?;
    for (n, c) in &refs {
        r.read_commit(c)
            .map_err(|e| format!("ref {n}: commit {c} unreadable: {e:#}"))?;
    }
    Ok(refs)
}

fn cp_a(from: &Path, to: &Path) {
    run(Command::new("cp").arg("-a").arg(from).arg(to));
}

/// `n` points spread evenly over 1..=total.
fn spread(total: u64, n: u64) -> Vec<u64> {
    if total <= n {
        return (1..=total).collect();
    }
    if n < 2 {
        return (1..=n).map(|_| total / 2).collect();
    }
    let mut v: Vec<u64> = (0..n).map(|i| 1 + i * (total - 1) / (n - 1)).collect();
    v.dedup();
    v
}

fn count_points(log: &Path) -> u64 {
    fs::read_to_string(log)
        .map(|s| s.lines().count() as u64)
        .unwrap_or(0)
}

#[derive(Default)]
struct Row {
    op: String,
    points: u64,
    tried: usize,
    recovered: usize,
    eio_tried: usize,
    eio_clean: usize,
    failures: Vec<String>,
}

impl Row {
    fn new(op: &str, points: u64) -> Row {
        Row {
            op: op.to_string(),
            points,
            ..Row::default()
        }
    }
    fn kill(&mut self, n: u64, r: Result<(), String>) {
        self.tried += 1;
        match r {
            Ok(()) => self.recovered += 1,
            Err(e) => self
                .failures
                .push(format!("{} killed at point {n}: {e}", self.op)),
        }
    }
    fn eio(&mut self, n: u64, r: Result<(), String>) {
        self.eio_tried += 1;
        match r {
            Ok(()) => self.eio_clean += 1,
            Err(e) => self
                .failures
                .push(format!("{} EIO at point {n}: {e}", self.op)),
        }
    }
}

fn report(rows: &[Row], extra: &[(String, bool)]) {
    let mut s = String::new();
    writeln!(
        s,
        "{:<30} {:>7} {:>7} {:>10} {:>8} {:>10}",
        "operation", "points", "killed", "recovered", "EIO", "EIO clean"
    )
    .unwrap();
    for r in rows {
        writeln!(
            s,
            "{:<30} {:>7} {:>7} {:>10} {:>8} {:>10}",
            r.op, r.points, r.tried, r.recovered, r.eio_tried, r.eio_clean
        )
        .unwrap();
    }
    for (what, ok) in extra {
        writeln!(s, "{what:<56} {}", if *ok { "ok" } else { "FAILED" }).unwrap();
    }
    println!("\n{s}");
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let _ = fs::write(target.join("crash-summary.txt"), &s);
    let all: Vec<&str> = rows
        .iter()
        .flat_map(|r| &r.failures)
        .map(String::as_str)
        .collect();
    let _ = fs::write(target.join("crash-failures.txt"), all.join("\n"));
    let failures: Vec<&String> = rows.iter().flat_map(|r| &r.failures).collect();
    let extra_failed: Vec<&String> = extra.iter().filter(|e| !e.1).map(|e| &e.0).collect();
    assert!(
        failures.is_empty() && extra_failed.is_empty(),
        "{} failures:\n{}\n{extra_failed:?}",
        failures.len(),
        failures
            .iter()
            .take(10)
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Fixtures.

/// A tar layer with `n` files (and a directory per 10), written with the tar crate.
fn make_tar(path: &Path, n: usize, big: usize) {
    let mut b = tar::Builder::new(fs::File::create(path).unwrap());
    for i in 0..n {
        let data = format!("file {i}\n").repeat(1 + i % 7);
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(
            &mut h,
            format!("usr/share/d{}/f{i}", i / 10),
            data.as_bytes(),
        )
        .unwrap();
    }
    if big > 0 {
        let data = vec![0x5au8; big];
        let mut h = tar::Header::new_gnu();
        h.set_size(big as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        b.append_data(&mut h, "usr/share/big.bin", data.as_slice())
            .unwrap();
    }
    b.finish().unwrap();
}

/// OCI layout with tags v1 and v2 (umoci), like the CLI tests build.
fn build_images(work: &Path) -> PathBuf {
    let layout = work.join("layout");
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    for (tag, kernel) in [("v1", "1"), ("v2", "2")] {
        let img = format!("{}:{tag}", layout.display());
        run(Command::new("umoci").args(["new", "--image", &img]));
        let bundle = work.join(format!("bundle-{tag}"));
        run(Command::new("umoci")
            .args(["unpack", "--image", &img])
            .arg(&bundle));
        let rootfs = bundle.join("rootfs");
        make_os_tree(&rootfs, &tag[1..], tag, kernel);
        fs::rename(rootfs.join("usr/etc"), rootfs.join("etc")).unwrap();
        for i in 0..20 {
            fs::write(
                rootfs.join(format!("usr/bin/tool{i}")),
                format!("{tag} {i}\n"),
            )
            .unwrap();
        }
        run(Command::new("umoci")
            .args(["repack", "--image", &img])
            .arg(&bundle));
        fs::remove_dir_all(&bundle).unwrap();
    }
    layout
}

fn repo_of(sr: &Path) -> PathBuf {
    sr.join("ostree/repo")
}

/// (stateroot, csum.serial) list, or an error naming what `ostree admin status` said.
fn admin_list(sr: &Path) -> Result<Vec<(String, String)>, String> {
    std::panic::catch_unwind(|| admin_status_list(sr))
        .map_err(|_| "ostree admin status failed".to_string())
}

fn deployment_dir(sr: &Path, d: &(String, String)) -> PathBuf {
    sr.join(format!("ostree/deploy/{}/deploy/{}", d.0, d.1))
}

// ---------------------------------------------------------------------------------------------

fn import_commit(work: &Path) -> Row {
    let tar = work.join("layer.tar");
    make_tar(&tar, 60, 0);
    let pristine = work.join("pristine-repo");
    let repo = otter::ostree::Repo::init(&pristine, otter::ostree::RepoMode::BareUser).unwrap();
    let mut imp = otter::import::Importer::new(&repo);
    let base_tar = work.join("base.tar");
    make_tar(&base_tar, 5, 0);
    imp.apply_layer(
        "application/vnd.oci.image.layer.v1.tar",
        &mut fs::File::open(&base_tar).unwrap(),
    )
    .unwrap();
    let base = imp.commit("base", vec![], None).unwrap();
    repo.set_ref("otter/base", Some(&base.commit)).unwrap();

    // Reference run: point count and the content checksum a complete run gives.
    let r = work.join("ref-repo");
    cp_a(&pristine, &r);
    let log = work.join("import.log");
    let o = child_import(&r, &tar, None, Some(&log));
    assert!(o.status.success(), "reference import: {}", text(&o));
    let want = String::from_utf8_lossy(&o.stdout)
        .lines()
        .find_map(|l| l.split_once("content ").map(|(_, c)| c.trim().to_owned()))
        .unwrap();
    let total = count_points(&log);
    let mut row = Row::new("import+commit", total);

    let check = |r: &Path| -> Result<(), String> {
        fsck(r)?;
        let refs = our_refs(r)?;
        if !refs
            .iter()
            .any(|(n, c)| n == "otter/base" && *c == base.commit)
        {
            return Err(format!("otter/base changed: {refs:?}"));
        }
        Ok(())
    };
    for n in spread(total, budget("OTTER_CRASH_KILL_POINTS", KILL_POINTS)) {
        let r = work.join(format!("k{n}"));
        cp_a(&pristine, &r);
        let o = child_import(&r, &tar, Some(&n.to_string()), None);
        let res = (|| {
            if !killed(&o) {
                return Err(format!("not killed: {}", text(&o)));
            }
            check(&r)?;
            let o = child_import(&r, &tar, None, None);
            if !o.status.success() {
                return Err(format!("rerun failed: {}", text(&o)));
            }
            if !String::from_utf8_lossy(&o.stdout).contains(&want) {
                return Err(format!("rerun gave another tree: {}", text(&o)));
            }
            check(&r)
        })();
        row.kill(n, res);
        fs::remove_dir_all(&r).unwrap();
    }
    let refs_before = our_refs(&pristine).unwrap();
    for n in spread(total, budget("OTTER_CRASH_EIO_POINTS", EIO_POINTS)) {
        let r = work.join(format!("e{n}"));
        cp_a(&pristine, &r);
        let o = child_import(&r, &tar, Some(&format!("{n}:eio")), None);
        let res = (|| {
            eio_reported(&o)?;
            // Refs unchanged (unless the EIO hit the final fsync after the ref's rename: then the
            // new ref is there and fsck vouches for its commit) and no staging left behind.
            // Objects already moved into the store before the failure stay (complete and
            // checksummed; the next prune removes them), as with ostree itself.
            let mut refs_now = our_refs(&r)?;
            refs_now.retain(|(n, _)| n != "otter/new" || o.status.code() == Some(1));
            if refs_now
                .iter()
                .filter(|(n, _)| n != "otter/new")
                .ne(refs_before.iter())
            {
                return Err(format!("refs changed after a failed import: {refs_now:?}"));
            }
            let staging: Vec<_> = fs::read_dir(r.join("tmp")).unwrap().collect();
            if !staging.is_empty() {
                return Err(format!("{} staging entries left in tmp/", staging.len()));
            }
            check(&r)
        })();
        row.eio(n, res);
        fs::remove_dir_all(&r).unwrap();
    }
    row
}

/// A full copy of a sysroot plus what must hold after a crash of `op`.
fn sysroot_op(
    work: &Path,
    name: &str,
    pristine: &Path,
    args: &[&str],
    check: &dyn Fn(&Path) -> Result<(), String>,
    rerun_ok: &dyn Fn(&Path, &Output) -> Result<(), String>,
    eio_unchanged: bool,
) -> Row {
    let log = work.join(format!("{name}.log"));
    let r = work.join(format!("{name}-ref"));
    cp_a(pristine, &r);
    let o = otter(&r, args, None, Some(&log));
    assert!(o.status.success(), "reference {name}: {}", text(&o));
    // An EIO after the operation's commit point fails it, but the new state is already in effect.
    let after_ref = eio_unchanged.then(|| state_of(&r));
    let _ = fs::remove_dir_all(&r);
    let total = count_points(&log);
    let mut row = Row::new(name, total);
    for n in spread(total, budget("OTTER_CRASH_KILL_POINTS", KILL_POINTS)) {
        let sr = work.join(format!("{name}-k{n}"));
        cp_a(pristine, &sr);
        let o = otter(&sr, args, Some(&n.to_string()), None);
        let res = (|| {
            if !killed(&o) {
                return Err(format!("not killed: {}", text(&o)));
            }
            check(&sr)?;
            let o = otter(&sr, args, None, None);
            rerun_ok(&sr, &o)?;
            check(&sr)
        })();
        row.kill(n, res);
        let _ = fs::remove_dir_all(&sr); // deployment dirs may be chattr +i; the tmpfs goes anyway
    }
    let before = if eio_unchanged {
        Some(state_of(pristine))
    } else {
        None
    };
    for n in spread(total, budget("OTTER_CRASH_EIO_POINTS", EIO_POINTS)) {
        let sr = work.join(format!("{name}-e{n}"));
        cp_a(pristine, &sr);
        let o = otter(&sr, args, Some(&format!("{n}:eio")), None);
        let res = (|| {
            eio_reported(&o)?;
            check(&sr)?;
            if let Some(b) = &before {
                if !o.status.success() {
                    let a = state_of(&sr);
                    if &a != b && Some(&a) != after_ref.as_ref() {
                        return Err(format!(
                            "a failed operation changed the deployments or the default tree: \
                             {:?} -> {:?}",
                            b.0, a.0
                        ));
                    }
                }
            }
            let o = otter(&sr, args, None, None);
            rerun_ok(&sr, &o)?;
            check(&sr)
        })();
        row.eio(n, res);
        let _ = fs::remove_dir_all(&sr); // deployment dirs may be chattr +i; the tmpfs goes anyway
    }
    row
}

/// Deployment list and the default deployment's tree: what a failed operation must keep. (The
/// deploy refs `ostree/B/S/N` of the next boot version may be left: they only keep objects from
/// being pruned, as with ostree.)
fn state_of(sr: &Path) -> (Vec<(String, String)>, BTreeMap<PathBuf, String>) {
    let list = admin_status_list(sr);
    let tree = list
        .first()
        .map(|d| snapshot(&deployment_dir(sr, d)))
        .unwrap_or_default();
    (list, tree)
}

/// The injected EIO must surface: a failure naming it, or (when it hit a best-effort step after
/// the operation's commit point) success with a warning naming it. Never a crash or a hang.
fn eio_reported(o: &Output) -> Result<(), String> {
    let err = String::from_utf8_lossy(&o.stderr);
    if killed(o) || o.status.code().is_none() {
        return Err(format!("died: {}", text(o)));
    }
    if !err.contains("Input/output error") {
        return Err(format!("EIO not reported: {}", text(o)));
    }
    if err.contains("panicked") {
        return Err(format!("panicked on EIO: {}", text(o)));
    }
    Ok(())
}

#[test]
fn crash_suite() {
    let t = Tmpfs::new();
    let work = t.path();
    let mut rows = Vec::new();
    let mut extra = Vec::new();

    rows.push(import_commit(work));

    let layout = build_images(work);
    let v1 = format!("oci:{}:v1", layout.display());
    let v2 = format!("oci:{}:v2", layout.display());
    let nosig = "--no-signature-verification";

    // install onto an empty sysroot.
    let empty = work.join("empty-sysroot");
    fs::create_dir(&empty).unwrap();
    let install_args = ["install", nosig, "--stateroot=os", &v1];
    let install_check = |sr: &Path| -> Result<(), String> {
        if repo_of(sr).join("config").exists() {
            fsck(&repo_of(sr))?;
        }
        if sr.join("boot/loader").exists() {
            let l = admin_list(sr)?;
            if l.len() > 1 {
                return Err(format!("{} deployments after one install", l.len()));
            }
            if let Some(d) = l.first() {
                let dir = deployment_dir(sr, d);
                if !dir.join("usr/bin/hello").is_file() {
                    return Err(format!("default deployment {} is incomplete", d.1));
                }
            }
        }
        Ok(())
    };
    let install_rerun = |sr: &Path, o: &Output| -> Result<(), String> {
        let done = admin_list(sr).map(|l| l.len() == 1).unwrap_or(false);
        if o.status.success()
            || (done && String::from_utf8_lossy(&o.stderr).contains("already has deployment"))
        {
            if !done {
                return Err("rerun succeeded but no deployment".into());
            }
            return Ok(());
        }
        Err(format!("rerun failed: {}", text(o)))
    };
    rows.push(sysroot_op(
        work,
        "otter install",
        &empty,
        &install_args,
        &install_check,
        &install_rerun,
        false,
    ));

    // upgrade: v1 installed, switch to v2 (same code path as upgrade, with a new image).
    let one = work.join("sysroot-v1");
    fs::create_dir(&one).unwrap();
    let o = otter(&one, &install_args, None, None);
    assert!(o.status.success(), "{}", text(&o));
    let v1_dep = admin_status_list(&one)[0].clone();
    let v1_tree = snapshot(&deployment_dir(&one, &v1_dep));
    let v1_dep2 = v1_dep.clone();
    let v1_tree2 = v1_tree.clone();
    let upgrade_check = move |sr: &Path| -> Result<(), String> {
        fsck(&repo_of(sr))?;
        let l = admin_list(sr)?;
        if !l.contains(&v1_dep2) {
            return Err(format!("the v1 deployment is gone: {l:?}"));
        }
        if snapshot(&deployment_dir(sr, &v1_dep2)) != v1_tree2 {
            return Err("the v1 deployment's tree changed".into());
        }
        for d in &l {
            if !deployment_dir(sr, d).join("usr/bin/hello").is_file() {
                return Err(format!("deployment {} listed but incomplete", d.1));
            }
        }
        our_refs(&repo_of(sr)).map(|_| ())
    };
    let upgrade_rerun = |sr: &Path, o: &Output| -> Result<(), String> {
        if !o.status.success() {
            return Err(format!("rerun failed: {}", text(o)));
        }
        let l = admin_list(sr)?;
        let default = deployment_dir(sr, &l[0]);
        let tool = fs::read_to_string(default.join("usr/bin/tool0")).unwrap_or_default();
        if tool != "v2 0\n" {
            return Err(format!("after the rerun the default is not v2: {l:?}"));
        }
        Ok(())
    };
    rows.push(sysroot_op(
        work,
        "otter upgrade (switch)",
        &one,
        &["switch", nosig, &v2],
        &upgrade_check,
        &upgrade_rerun,
        true,
    ));

    // rollback: v1 and v2 deployed, v2 default.
    let two = work.join("sysroot-v2");
    cp_a(&one, &two);
    let o = otter(&two, &["switch", nosig, &v2], None, None);
    assert!(o.status.success(), "{}", text(&o));
    let l2 = admin_status_list(&two);
    let trees: Vec<_> = l2
        .iter()
        .map(|d| (d.clone(), snapshot(&deployment_dir(&two, d))))
        .collect();
    let rollback_check = move |sr: &Path| -> Result<(), String> {
        fsck(&repo_of(sr))?;
        let mut l = admin_list(sr)?;
        l.sort();
        let mut want: Vec<_> = trees.iter().map(|t| t.0.clone()).collect();
        want.sort();
        if l != want {
            return Err(format!("deployments changed: {l:?} vs {want:?}"));
        }
        for (d, tree) in &trees {
            if &snapshot(&deployment_dir(sr, d)) != tree {
                return Err(format!("deployment {} changed", d.1));
            }
        }
        Ok(())
    };
    let rollback_rerun = |_sr: &Path, o: &Output| -> Result<(), String> {
        if o.status.success() {
            Ok(())
        } else {
            Err(format!("rerun failed: {}", text(o)))
        }
    };
    rows.push(sysroot_op(
        work,
        "otter rollback",
        &two,
        &["rollback"],
        &rollback_check,
        &rollback_rerun,
        true,
    ));

    rows.push(delta_apply(work, &layout));
    rows.push(download(work));

    // Boot-count environments: a GRUB env block and a redundant U-Boot env (two copies).
    rows.push(boot_env(work, "grubenv arm+mark-good", &|d: &Path| {
        let env = d.join("grubenv");
        if !env.exists() {
            run(Command::new("grub-editenv").arg(&env).arg("create"));
        }
        (
            format!("grubenv:{}", env.display()),
            vec![
                "grub-editenv".into(),
                env.display().to_string(),
                "list".into(),
            ],
        )
    }));
    rows.push(boot_env(
        work,
        "uboot redundant arm+mark-good",
        &|d: &Path| {
            let cfg = d.join("fw_env.config");
            let (a, b) = (d.join("env-a"), d.join("env-b"));
            fs::write(
                &cfg,
                format!("{} 0x0 0x2000\n{} 0x0 0x2000\n", a.display(), b.display()),
            )
            .unwrap();
            if !a.exists() {
                // Two valid copies as fw_setenv leaves them (flags 1 and 0).
                for (p, flag) in [(&a, 1u8), (&b, 0u8)] {
                    let mut data = b"bootcmd=run distro_bootcmd\0bootdelay=2\0".to_vec();
                    data.resize(0x2000 - 5, 0);
                    let crc = crc32(&data);
                    let mut out = crc.to_le_bytes().to_vec();
                    out.push(flag);
                    out.extend(data);
                    fs::write(p, out).unwrap();
                }
            }
            (
                format!("uboot:{}", cfg.display()),
                vec!["fw_printenv".into(), "-c".into(), cfg.display().to_string()],
            )
        },
    ));

    // ENOSPC: a real 8 MiB tmpfs; a 12 MiB file cannot fit.
    let small = work.join("small");
    fs::create_dir(&small).unwrap();
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "otter-enospc"])
        .arg(&small));
    let enospc = (|| -> Result<(), String> {
        let big_tar = work.join("big.tar");
        make_tar(&big_tar, 10, 12 << 20);
        let repo = small.join("repo");
        otter::ostree::Repo::init(&repo, otter::ostree::RepoMode::BareUser)
            .map_err(|e| format!("{e:#}"))?;
        let before = snapshot(&repo);
        let o = child_import(&repo, &big_tar, None, None);
        if o.status.success()
            || !String::from_utf8_lossy(&o.stderr).contains("No space left on device")
        {
            return Err(format!("ENOSPC not reported: {}", text(&o)));
        }
        let mut after = snapshot(&repo);
        after.remove(Path::new(".lock"));
        let mut b = before;
        b.remove(Path::new(".lock"));
        if after != b {
            return Err("repository changed after ENOSPC".into());
        }
        fsck(&repo)?;
        // With room again (the big file gone), the same repo takes a normal import.
        let o = child_import(&repo, &tar_small(work), None, None);
        if !o.status.success() {
            return Err(format!("import after ENOSPC failed: {}", text(&o)));
        }
        fsck(&repo)
    })();
    let _ = Command::new("umount").arg(&small).status();
    extra.push((
        format!(
            "ENOSPC import on an 8 MiB tmpfs: {}",
            enospc
                .as_ref()
                .err()
                .map(String::as_str)
                .unwrap_or("clean error, repo unchanged")
        ),
        enospc.is_ok(),
    ));

    report(&rows, &extra);
}

fn tar_small(work: &Path) -> PathBuf {
    let p = work.join("small.tar");
    make_tar(&p, 10, 0);
    p
}

fn crc32(data: &[u8]) -> u32 {
    otter_boot::uboot::crc32(data)
}

// ---------------------------------------------------------------------------------------------
// Delta apply and download.

/// Import every layer of `image` into `repo` with the importer (as a device or the publisher
/// does); returns the commit and the manifest digest.
fn import_image(repo: &otter::ostree::Repo, image: &str) -> (otter::ostree::Checksum, String) {
    let opts = otter::source::SourceOptions::default();
    let mut src = otter::source::open(&image.parse().unwrap(), &opts).unwrap();
    let resolved = src.resolve().unwrap();
    let mut imp = otter::import::Importer::new(repo);
    for l in &resolved.manifest.layers {
        let mut r = src.open_blob(l).unwrap();
        imp.apply_layer(&l.media_type, &mut r).unwrap();
    }
    let done = imp.commit(image, vec![], None).unwrap();
    (done.commit, resolved.manifest_digest)
}

/// What the delta child printed: (content, applied, skipped, bytes).
fn delta_report(o: &Output) -> Option<(String, usize, usize, u64)> {
    let out = String::from_utf8_lossy(&o.stdout);
    // (libtest prints "test crash_child ... " in front of the child's first line)
    let line = out
        .lines()
        .find_map(|l| l.split_once("content ").map(|x| x.1))?;
    let w: Vec<&str> = ["content"]
        .into_iter()
        .chain(line.split_whitespace())
        .collect();
    Some((
        w.get(1)?.to_string(),
        w.get(3)?.parse().ok()?,
        w.get(5)?.parse().ok()?,
        w.get(7)?.parse().ok()?,
    ))
}

/// Delta apply A → B from a delta artifact attached to B in an OCI layout (published with
/// `otter-publish`'s generator and `attach`, small parts so there are many). Killed and failed
/// with EIO at spread points; afterwards the repo is clean and A untouched, and a rerun ends in
/// B's exact tree — the content checksum a layer import of B gives — skipping every part whose
/// objects were already complete and reading only the others.
fn delta_apply(work: &Path, images: &Path) -> Row {
    use otter::delta;
    use otter::ostree::{ObjectKind, Repo, RepoMode};
    let layout = work.join("delta-layout");
    cp_a(images, &layout);
    let v1 = format!("oci:{}:v1", layout.display());
    let v2 = format!("oci:{}:v2", layout.display());
    // B = v2 plus 32 new incompressible 2 KiB files, so the delta has several parts.
    let bundle = work.join("delta-bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image", &v2[4..]])
        .arg(&bundle));
    let extra = bundle.join("rootfs/usr/share/extra");
    fs::create_dir_all(&extra).unwrap();
    for i in 0..32u64 {
        fs::write(
            extra.join(format!("f{i}")),
            source_util::random_bytes(2048, 100 + i),
        )
        .unwrap();
    }
    run(Command::new("umoci")
        .args(["repack", "--image", &v2[4..]])
        .arg(&bundle));
    fs::remove_dir_all(&bundle).unwrap();

    // Publisher: both images imported from their layers; the delta between them.
    let publ = Repo::init(&work.join("delta-publisher"), RepoMode::BareUser).unwrap();
    let (a_pub, from_digest) = import_image(&publ, &v1);
    let (b_pub, to_digest) = import_image(&publ, &v2);
    let want = publ
        .read_commit(&b_pub)
        .unwrap()
        .content_checksum()
        .to_hex();
    let dir = work.join("delta-dir");
    let opts = delta::GenerateOptions {
        max_part_size: 8192,
        level: 3,
        patch_level: 3,
        ..Default::default()
    };
    let summary = delta::generate_with(&publ, &a_pub, &b_pub, &dir, &opts).unwrap();
    assert!(
        summary.parts >= 4,
        "too few parts for the test: {summary:?}"
    );
    otter::publish::delta::attach(&v2, &to_digest, &from_digest, &summary, &dir, false).unwrap();

    // Device: A imported from its layers (its own commit), nothing of B.
    let pristine = work.join("delta-pristine");
    let dev = Repo::init(&pristine, RepoMode::BareUser).unwrap();
    let (a, _) = import_image(&dev, &v1);
    dev.set_ref("otter/a", Some(&a)).unwrap();
    let sb = delta::read_superblock(&dev, &mut delta::DirStore::new(&dir), &a).unwrap();
    drop(dev);
    let spec = |r: &Path| {
        format!(
            "delta|{}|{}|{a}|{from_digest}",
            r.display(),
            layout.display()
        )
    };

    let r = work.join("delta-ref");
    cp_a(&pristine, &r);
    let log = work.join("delta.log");
    let o = child(&spec(&r), None, Some(&log));
    assert!(o.status.success(), "reference delta apply: {}", text(&o));
    let (content, applied, _, _) = delta_report(&o).unwrap();
    assert_eq!(
        content, want,
        "the delta built another tree than the layers"
    );
    assert_eq!(applied, sb.parts.len());
    let total = count_points(&log);
    let mut row = Row::new("delta apply", total);

    let check = |r: &Path, b_allowed: bool| -> Result<(), String> {
        fsck(r)?;
        let refs = our_refs(r)?;
        if !refs.iter().any(|(n, c)| n == "otter/a" && *c == a) {
            return Err(format!("otter/a changed: {refs:?}"));
        }
        if !b_allowed && refs.iter().any(|(n, _)| n == "otter/b") {
            return Err("otter/b set by a failed apply".into());
        }
        Ok(())
    };
    // Parts whose objects are all in the repo (a rerun must skip exactly these).
    let complete = |r: &Path| -> Vec<usize> {
        let repo = Repo::open(r).unwrap();
        (0..sb.parts.len())
            .filter(|&i| {
                sb.parts[i]
                    .objects
                    .iter()
                    .all(|c| repo.has_object(ObjectKind::File, c))
            })
            .collect()
    };
    let rerun = |r: &Path| -> Result<(), String> {
        let done = complete(r);
        let repo = Repo::open(r).unwrap();
        let progress = delta::progress_path(&repo, &sb.from, &sb.to);
        let recorded: Vec<usize> = fs::read_to_string(&progress)
            .unwrap_or_default()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        if let Some(p) = recorded.iter().find(|p| !done.contains(p)) {
            return Err(format!("part {p} recorded as applied but incomplete"));
        }
        let o = child(&spec(r), None, None);
        let Some((content, applied, skipped, bytes)) = delta_report(&o) else {
            return Err(format!("rerun failed: {}", text(&o)));
        };
        if content != want {
            return Err(format!("rerun built tree {content}, want {want}"));
        }
        let rest: u64 = (0..sb.parts.len())
            .filter(|i| !done.contains(i))
            .map(|i| sb.parts[i].size)
            .sum();
        if skipped != done.len() || applied != sb.parts.len() - done.len() || bytes != rest {
            return Err(format!(
                "rerun applied {applied} parts ({bytes} bytes) and skipped {skipped}; {} of {} \
                 were complete, {rest} bytes left: finished parts were read again",
                done.len(),
                sb.parts.len()
            ));
        }
        if progress.exists() {
            return Err("progress record left after a complete apply".into());
        }
        check(r, true)
    };
    for n in spread(total, budget("OTTER_CRASH_KILL_POINTS", KILL_POINTS)) {
        let r = work.join(format!("delta-k{n}"));
        cp_a(&pristine, &r);
        let o = child(&spec(&r), Some(&n.to_string()), None);
        let res = (|| {
            if !killed(&o) {
                return Err(format!("not killed: {}", text(&o)));
            }
            check(&r, true)?;
            rerun(&r)
        })();
        row.kill(n, res);
        fs::remove_dir_all(&r).unwrap();
    }
    for n in spread(total, budget("OTTER_CRASH_EIO_POINTS", EIO_POINTS)) {
        let r = work.join(format!("delta-e{n}"));
        cp_a(&pristine, &r);
        let o = child(&spec(&r), Some(&format!("{n}:eio")), None);
        let res = (|| {
            eio_reported(&o)?;
            // An EIO at the final fsync of the directory of `otter/b` fails the run after the
            // ref's rename: then the ref is there, and must name B's tree (fsck vouches for it).
            check(&r, true)?;
            let b = our_refs(&r)?.into_iter().find(|(n, _)| n == "otter/b");
            if let Some((_, c)) = b {
                let got = Repo::open(&r)
                    .and_then(|repo| repo.read_commit(&c))
                    .map(|c| c.content_checksum().to_hex())
                    .map_err(|e| format!("{e:#}"))?;
                if o.status.success() || got != want {
                    return Err(format!("otter/b names tree {got} after a failed apply"));
                }
            }
            let staging: Vec<String> = fs::read_dir(r.join("tmp"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != "cache") // made by the `ostree fsck` above
                .collect();
            if !staging.is_empty() {
                return Err(format!("staging entries left in tmp/: {staging:?}"));
            }
            rerun(&r)
        })();
        row.eio(n, res);
        fs::remove_dir_all(&r).unwrap();
    }
    row
}

/// Download of a 1 MiB blob from a loopback `docker-registry` (through a counting proxy) into
/// a blob directory with 16 KiB journal chunks. After a kill at point N the journal holds every
/// chunk journaled before N, and the rerun fetches exactly the rest (resume, never restart);
/// after EIO the same.
fn download(work: &Path) -> Row {
    use source_util::proxy::{Faults, Proxy};
    use source_util::{random_bytes, skopeo_push, tar_of, write_image, write_index};
    let reg = source_util::Registry::start(
        &work.join("fetch-registry"),
        source_util::RegistryOpts {
            tls: None,
            htpasswd: None,
        },
    );
    let layout = work.join("fetch-layout");
    let img = write_image(
        &layout,
        "amd64",
        "1.0",
        &[(
            source_util::LAYER_TAR,
            tar_of(&[("usr/lib/blob.bin", random_bytes(1 << 20, 11))]),
        )],
    );
    write_index(&layout, &[source_util::tagged(&img.manifest, "v1")]);
    skopeo_push(
        &layout,
        "v1",
        &format!("docker://{}/os/fetch:v1", reg.host()),
        &[],
    );
    let blob = img.layers[0].clone();
    let hex = blob.digest.strip_prefix("sha256:").unwrap().to_owned();
    let proxy = Proxy::start(
        reg.port,
        Faults {
            target: hex.clone(),
            ..Default::default()
        },
    );
    let reference = format!("docker://127.0.0.1:{}/os/fetch:v1", proxy.port);
    let spec = |d: &Path| format!("fetch|{reference}|{}", d.display());
    // Bytes the proxy served, once the sender of a killed client has given up.
    let settled = || {
        let mut last = proxy.served();
        loop {
            std::thread::sleep(std::time::Duration::from_millis(30));
            let now = proxy.served();
            if now == last {
                return now;
            }
            last = now;
        }
    };
    let check_blob = |d: &Path| -> Result<(), String> {
        let data = fs::read(d.join(&hex)).map_err(|e| format!("blob missing: {e}"))?;
        if source_util::sha(&data) != blob.digest {
            return Err("blob has the wrong digest".into());
        }
        let left: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains('.'))
            .collect();
        if !left.is_empty() {
            return Err(format!("download state left behind: {left:?}"));
        }
        Ok(())
    };
    let journaled = |d: &Path| -> Result<Option<u64>, String> {
        let j = d.join(format!("{hex}.journal"));
        match fs::read(&j) {
            Err(_) => Ok(None),
            Ok(b) => {
                let v: serde_json::Value = serde_json::from_slice(&b)
                    .map_err(|e| format!("journal {} unreadable after a kill: {e}", j.display()))?;
                Ok(Some(
                    v["chunks"].as_array().map(|a| a.len()).unwrap_or(0) as u64
                ))
            }
        }
    };

    let log = work.join("fetch.log");
    let d = work.join("fetch-ref");
    let before = settled();
    let o = child(&spec(&d), None, Some(&log));
    assert!(o.status.success(), "reference download: {}", text(&o));
    assert_eq!(settled() - before, blob.size, "reference download");
    check_blob(&d).unwrap();
    let total = count_points(&log);
    let whats: Vec<String> = fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| l.split_once(' ').map(|x| x.1).unwrap_or("").to_owned())
        .collect();
    // The config blob is fetched first (by resolve); the layer's download starts at the last
    // "open partial".
    let layer_start = whats.iter().rposition(|w| w == "open partial").unwrap();
    let renames_in = |to: usize| {
        whats[layer_start..to.max(layer_start)]
            .iter()
            .filter(|w| *w == "rename")
            .count()
    };
    let renames_total = renames_in(whats.len());
    let mut row = Row::new("download (journal)", total);
    // After a kill or failure at point n: the rerun fetches exactly the bytes not journaled.
    // Renames are the journal saves (the first one, before any data, records the ETag) and,
    // last, the blob's own rename into place.
    let resume = |d: &Path, n: u64| -> Result<(), String> {
        let renames = renames_in((n - 1) as usize);
        let expect_chunks = renames.saturating_sub(1) as u64;
        let complete = renames == renames_total;
        let chunks = journaled(d)?;
        if !complete && renames > 0 && chunks != Some(expect_chunks) {
            return Err(format!(
                "journal holds {chunks:?} chunks, {expect_chunks} were journaled before point {n}"
            ));
        }
        let want = if complete {
            0
        } else {
            blob.size - (expect_chunks * FETCH_CHUNK).min(blob.size)
        };
        let before = settled();
        let o = child(&spec(d), None, None);
        if !o.status.success() {
            return Err(format!("rerun failed: {}", text(&o)));
        }
        let fetched = settled() - before;
        if fetched != want {
            return Err(format!(
                "rerun fetched {fetched} bytes, {want} were missing (point {n})"
            ));
        }
        check_blob(d)
    };
    for n in spread(total, budget("OTTER_CRASH_KILL_POINTS", KILL_POINTS)) {
        let d = work.join(format!("fetch-k{n}"));
        let o = child(&spec(&d), Some(&n.to_string()), None);
        let res = (|| {
            if !killed(&o) {
                return Err(format!("not killed: {}", text(&o)));
            }
            resume(&d, n)
        })();
        row.kill(n, res);
        let _ = fs::remove_dir_all(&d);
    }
    for n in spread(total, budget("OTTER_CRASH_EIO_POINTS", EIO_POINTS)) {
        let d = work.join(format!("fetch-e{n}"));
        let o = child(&spec(&d), Some(&format!("{n}:eio")), None);
        let res = (|| {
            eio_reported(&o)?;
            if o.status.success() {
                // Only the best-effort journal removal after the blob is in place may fail
                // (logged); the blob must be there and a rerun tidies up.
                if !d.join(&hex).is_file() {
                    return Err("download reported success without the blob".into());
                }
            }
            resume(&d, n)
        })();
        row.eio(n, res);
        let _ = fs::remove_dir_all(&d);
    }
    drop(proxy);
    drop(reg);
    row
}
