//! systemd-boot counting in BLS entry names: renames follow systemd's rules
//! (systemd-boot's per-boot rename, systemd-bless-boot good/bad) and the sort order matches the
//! real `bootctl list` (systemd-boot package).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{require, run_ok, write_file};
use otter_boot::bls::{self, read_entries, BlsBackend, EntryName};
use otter_boot::Backend;

fn entry(dir: &Path, file: &str, version: &str) {
    write_file(&dir.join(file), &format!("title OS {version}\nversion {version}\nlinux /vmlinuz-{version}\noptions ostree=/ostree/boot.1/os/{version}/0\n"));
}

fn names(dir: &Path) -> Vec<String> {
    read_entries(dir)
        .unwrap()
        .into_iter()
        .map(|e| e.file)
        .collect()
}

/// What systemd-boot does when it boots an entry: rename to `+max(L-1,0)-(D+1)`.
fn boot_default(dir: &Path) -> String {
    let first = read_entries(dir).unwrap().into_iter().next().unwrap();
    let new = first.name.tried().file_name();
    bls::rename_noreplace(dir, &first.file, &new).unwrap();
    new
}

#[test]
fn counting_renames_follow_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    entry(d, "ostree-1.conf", "1");
    entry(d, "ostree-2.conf", "2");
    let mut b = BlsBackend::new(d.to_path_buf());
    b.arm(3).unwrap();
    assert_eq!(names(d), ["ostree-2+3.conf", "ostree-1.conf"]);
    let st = b.state().unwrap();
    assert!(st.armed && !st.fell_back);
    assert_eq!(st.tries_left, Some(3));
    // +3 -> +2-1 -> +1-2 -> +0-3 (bad), then the old entry is the default.
    assert_eq!(boot_default(d), "ostree-2+2-1.conf");
    assert_eq!(boot_default(d), "ostree-2+1-2.conf");
    assert_eq!(b.state().unwrap().tries_left, Some(1));
    assert_eq!(boot_default(d), "ostree-2+0-3.conf");
    assert_eq!(
        names(d),
        ["ostree-1.conf", "ostree-2+0-3.conf"],
        "bad entries sort last"
    );
    let st = b.state().unwrap();
    assert!(st.fell_back);
    assert_eq!(st.bad_entries, ["ostree-2+0-3.conf"]);
    // Booting the old (uncounted) entry renames nothing.
    assert_eq!(boot_default(d), "ostree-1.conf");
}

#[test]
fn bless_good_and_bad_like_systemd_bless_boot() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    entry(d, "ostree-1.conf", "1");
    entry(d, "ostree-2.conf", "2");
    let mut b = BlsBackend::new(d.to_path_buf());
    b.arm(2).unwrap();
    // Not booted yet (DONE=0): mark-good has no booted entry to bless and changes nothing.
    b.mark_good().unwrap();
    assert_eq!(names(d), ["ostree-2+2.conf", "ostree-1.conf"]);
    boot_default(d);
    b.mark_good().unwrap();
    assert_eq!(
        names(d),
        ["ostree-2.conf", "ostree-1.conf"],
        "good = counter dropped"
    );
    b.arm(2).unwrap();
    boot_default(d);
    b.mark_bad().unwrap();
    assert_eq!(
        names(d),
        ["ostree-1.conf", "ostree-2+0-1.conf"],
        "bad = +0-DONE"
    );
    assert_eq!(
        EntryName::parse("a+5.conf").unwrap().cursed().file_name(),
        "a+0.conf"
    );
    // RENAME_NOREPLACE: never replaces an existing entry.
    entry(d, "ostree-3.conf", "3");
    entry(d, "ostree-3+1.conf", "3");
    assert!(bls::rename_noreplace(d, "ostree-3+1.conf", "ostree-3.conf").is_err());
    assert!(d.join("ostree-3+1.conf").exists());
}

#[test]
fn sort_order_matches_bootctl() {
    let bootctl = require("bootctl", "systemd-boot");
    let dir = tempfile::tempdir().unwrap();
    let esp = dir.path();
    let entries = esp.join("loader/entries");
    std::fs::create_dir_all(&entries).unwrap();
    entry(&entries, "ostree-2+0-3.conf", "2");
    entry(&entries, "ostree-1.conf", "1");
    entry(&entries, "ostree-3+2-1.conf", "3");
    entry(&entries, "ostree-10.conf", "10");
    write_file(
        &entries.join("a-sorted.conf"),
        "title S\nsort-key zzz\nversion 1\nlinux /vmlinuz-1\n",
    );
    for v in ["1", "2", "3", "10"] {
        write_file(&esp.join(format!("vmlinuz-{v}")), "");
    }
    let ours = names(&entries);
    assert_eq!(
        ours,
        [
            "a-sorted.conf",
            "ostree-10.conf",
            "ostree-3+2-1.conf",
            "ostree-1.conf",
            "ostree-2+0-3.conf"
        ]
    );
    // bootctl insists on a mount point for the ESP: use a private mount namespace + tmpfs.
    let script = format!(
        "set -e; mnt=$(mktemp -d -p {d}); mount -t tmpfs otter-test \"$mnt\"; cp -a {d}/loader {d}/vmlinuz-* \"$mnt\"/; \
         SYSTEMD_RELAX_ESP_CHECKS=1 {bootctl} --esp-path=\"$mnt\" --no-pager list",
        d = esp.display(),
        bootctl = bootctl.display()
    );
    let out =
        run_ok(Command::new(require("unshare", "util-linux")).args(["-m", "sh", "-c", &script]));
    let theirs: Vec<String> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("source: "))
        .map(|s| s.rsplit('/').next().unwrap().to_string())
        .collect();
    assert_eq!(theirs, ours, "bootctl list output:\n{out}");
    assert!(
        out.contains("tries: 2 left; 1 done") && out.contains("tries: 0 left; 3 done"),
        "{out}"
    );
}
