//! Fleet features without a broker: timer policy with a fake clock, FleetLock, rollout waves,
//! USB import of real OCI layouts/archives, device id and time zones against system tools.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fleet_common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fleet_common::*;
use otter::fleet::tz::TimeZone;
use otter::fleet::{run_daemon, usb_import, DaemonOptions, Mode, Outcome, Policy};
use serde_json::Value;

const DIGEST: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
/// 2026-11-23 00:00 UTC, a Monday.
const MONDAY: i64 = 1_795_392_000;
const HOUR: i64 = 3600;

struct Running {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap().unwrap();
        }
    }
}

fn start(opts: DaemonOptions, rec: &Recorder, clock: &FakeClock) -> Running {
    let stop = opts.stop.clone();
    let mut actions = rec.clone();
    let clock = clock.clone();
    let thread = std::thread::spawn(move || run_daemon(opts, &mut actions, &clock));
    Running {
        stop,
        thread: Some(thread),
    }
}

fn wait_calls(rec: &Recorder, want: &[&str]) {
    let start = Instant::now();
    loop {
        let calls = rec.calls();
        if calls == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10) && calls.len() <= want.len(),
            "calls {calls:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn timer_opts(dir: &Path, policy: Policy) -> DaemonOptions {
    let mut o = DaemonOptions::new(dir.to_path_buf());
    o.device_id = Some("dev9".into());
    o.group = Some("canary".into());
    o.timer_interval = Some(Duration::from_secs(HOUR as u64));
    o.policy = policy;
    o
}

#[test]
fn apply_policy_stages_outside_the_window_and_reboots_inside_via_fleetlock() {
    let dir = tempfile::tempdir().unwrap();
    let lock = HttpServer::start();
    let clock = FakeClock::default();
    clock.set(MONDAY + HOUR); // 01:00, before the window
    let rec = Recorder::default();
    rec.state.lock().unwrap().available = Some(DIGEST.into());
    let mut opts = timer_opts(
        dir.path(),
        Policy {
            mode: Mode::Apply,
            windows: vec!["Mon 02:00-04:00".parse().unwrap()],
            timezone: TimeZone::Utc,
            rollout_delay: Duration::ZERO,
        },
    );
    opts.fleetlock_url = Some(lock.url.clone());
    let _d = start(opts, &rec, &clock);
    let staged = format!("upgrade {DIGEST}");
    wait_calls(&rec, &["check", &staged]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rec.calls().len(), 2, "no reboot outside the window");

    // 02:30, inside the window, but FleetLock says no.
    *lock.answer.lock().unwrap() = (
        409,
        r#"{"kind":"failed_lock","value":"semaphore is full"}"#.into(),
    );
    clock.set(MONDAY + 2 * HOUR + 1800);
    wait_calls(&rec, &["check", &staged, "check"]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rec.state.lock().unwrap().reboots, 0);

    // 03:31: the lock is free now.
    *lock.answer.lock().unwrap() = (200, "{}".into());
    clock.set(MONDAY + 3 * HOUR + 1860);
    wait_calls(&rec, &["check", &staged, "check", "check", "reboot"]);

    let reqs = lock.requests.lock().unwrap().clone();
    let paths: Vec<&str> = reqs.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(
        paths,
        ["/v1/steady-state", "/v1/pre-reboot", "/v1/pre-reboot"],
        "{reqs:?}"
    );
    for (method, _, proto, body) in &reqs {
        assert_eq!(method, "POST");
        assert_eq!(proto.as_deref(), Some("true"));
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["client_params"]["id"], "dev9");
        assert_eq!(v["client_params"]["group"], "canary");
    }
}

#[test]
fn window_in_a_fixed_offset_zone() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::default();
    // Monday 00:30 UTC is 02:30 at +02:00: inside "Mon 02:00-03:00".
    clock.set(MONDAY + 1800);
    let rec = Recorder::default();
    rec.state.lock().unwrap().available = Some(DIGEST.into());
    let opts = timer_opts(
        dir.path(),
        Policy {
            mode: Mode::Apply,
            windows: vec!["Mon 02:00-03:00".parse().unwrap()],
            timezone: "+02:00".parse().unwrap(),
            rollout_delay: Duration::ZERO,
        },
    );
    let _d = start(opts, &rec, &clock);
    wait_calls(&rec, &["check", &format!("upgrade {DIGEST}"), "reboot"]);
}

#[test]
fn rollout_wave_waits_after_first_seen_and_stage_never_reboots() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::default();
    clock.set(MONDAY);
    let rec = Recorder::default();
    rec.state.lock().unwrap().available = Some(DIGEST.into());
    let opts = timer_opts(
        dir.path(),
        Policy {
            mode: Mode::Stage,
            windows: vec![],
            timezone: TimeZone::Utc,
            rollout_delay: Duration::from_secs(2 * HOUR as u64),
        },
    );
    let state_dir = opts.state_dir.clone();
    let _d = start(opts, &rec, &clock);
    wait_calls(&rec, &["check"]);
    clock.set(MONDAY + HOUR + 1);
    wait_calls(&rec, &["check", "check"]);
    clock.set(MONDAY + 2 * HOUR + 2);
    let staged = format!("upgrade {DIGEST}");
    wait_calls(&rec, &["check", "check", "check", &staged]);
    clock.set(MONDAY + 4 * HOUR);
    wait_calls(&rec, &["check", "check", "check", &staged, "check"]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rec.state.lock().unwrap().reboots, 0);
    let state: Value =
        serde_json::from_slice(&std::fs::read(state_dir.join("rollout.json")).unwrap()).unwrap();
    assert_eq!(state["first_seen"][DIGEST], MONDAY);
}

fn skopeo_digest(image: &str) -> String {
    need("skopeo", "skopeo");
    run(Command::new("skopeo").args(["inspect", "--format", "{{.Digest}}", image]))
        .trim()
        .to_string()
}

fn make_layout(dir: &Path, name: &str) {
    need("umoci", "umoci");
    let layout = dir.display().to_string();
    run(Command::new("umoci").args(["init", "--layout", &layout]));
    run(Command::new("umoci").args(["new", "--image", &format!("{layout}:{name}")]));
}

#[test]
fn usb_import_runs_once_per_content() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("var/lib/otter");
    let stick = dir.path().join("stick");
    std::fs::create_dir_all(stick.join("otter")).unwrap();
    std::fs::write(stick.join("README.txt"), "holiday photos").unwrap();
    let layout = stick.join("otter/update");
    make_layout(&layout, "latest");
    let digest = skopeo_digest(&format!("oci:{}:latest", layout.display()));
    let mut rec = Recorder::default();

    let image = format!("oci:{}", layout.display());
    match usb_import(&stick, &state, &mut rec).unwrap() {
        Outcome::Imported {
            identity, image: i, ..
        } => {
            assert_eq!(identity, digest);
            assert_eq!(i, image);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        usb_import(&stick, &state, &mut rec).unwrap(),
        Outcome::AlreadyImported {
            identity: digest.clone(),
            image: image.clone()
        }
    );
    assert_eq!(rec.calls(), vec![format!("import {image}")]);
    let record = std::fs::read_to_string(state.join("usb-imported")).unwrap();
    assert_eq!(record, format!("{digest}\n"));

    // The same image as an oci-archive on another stick: same content, not imported again.
    let stick2 = dir.path().join("stick2");
    std::fs::create_dir_all(&stick2).unwrap();
    let archive = stick2.join("update.tar");
    run(Command::new("skopeo").args([
        "copy",
        &format!("oci:{}:latest", layout.display()),
        &format!("oci-archive:{}", archive.display()),
    ]));
    std::fs::write(stick2.join("broken.tar"), "not a tar").unwrap();
    let archive_digest = skopeo_digest(&format!("oci-archive:{}", archive.display()));
    let out = usb_import(&stick2, &state, &mut rec).unwrap();
    if archive_digest == digest {
        assert!(matches!(out, Outcome::AlreadyImported { .. }), "{out:?}");
    } else {
        assert!(
            matches!(&out, Outcome::Imported { identity, .. } if *identity == archive_digest),
            "{out:?}"
        );
    }

    // A different image on that stick is new.
    let stick3 = dir.path().join("stick3");
    make_layout(&stick3, "v2");
    run(Command::new("umoci").args([
        "config",
        "--image",
        &format!("{}:v2", stick3.display()),
        "--config.label",
        "org.opencontainers.image.version=2",
    ]));
    let d3 = skopeo_digest(&format!("oci:{}:v2", stick3.display()));
    match usb_import(&stick3, &state, &mut rec).unwrap() {
        Outcome::Imported { identity, .. } => assert_eq!(identity, d3),
        other => panic!("{other:?}"),
    }

    // Nothing on an empty stick; two different updates are refused, nothing imported.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert_eq!(
        usb_import(&empty, &state, &mut rec).unwrap(),
        Outcome::NothingFound
    );
    let two = dir.path().join("two");
    make_layout(&two.join("a"), "x");
    std::fs::create_dir_all(two.join("b")).unwrap();
    run(Command::new("skopeo").args([
        "copy",
        &format!("oci:{}:v2", stick3.display()),
        &format!("oci:{}:v2", two.join("b").display()),
    ]));
    let n = rec.calls().len();
    let err = usb_import(&two, &state, &mut rec).unwrap_err();
    assert!(
        format!("{err:#}").contains("several different updates"),
        "{err:#}"
    );
    assert_eq!(rec.calls().len(), n);
}

#[test]
fn device_id_matches_systemd_app_specific_id() {
    need("systemd-id128", "systemd");
    let app = otter::fleet::identity::OTTER_APP_ID
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    // systemd derives app-specific ids from the machine id or the boot id the same way; the
    // boot id exists on every Linux system (containers often lack /etc/machine-id), so it
    // stands in as the machine id of a scratch sysroot.
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let raw = boot_id.trim().replace('-', "");
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    std::fs::write(root.path().join("etc/machine-id"), format!("{raw}\n")).unwrap();
    let ours = otter::fleet::identity::device_id(root.path()).unwrap();
    let theirs =
        run(Command::new("systemd-id128").args(["boot-id", &format!("--app-specific={app}")]));
    assert_eq!(ours, theirs.trim());
    assert_ne!(ours, raw, "the raw machine id must never be used");
    if Path::new("/etc/machine-id").is_file() {
        let theirs =
            run(Command::new("systemd-id128")
                .args(["machine-id", &format!("--app-specific={app}")]));
        assert_eq!(
            otter::fleet::identity::device_id(Path::new("/")).unwrap(),
            theirs.trim()
        );
    }

    // A sysroot without machine-id: a clear error.
    let dir = tempfile::tempdir().unwrap();
    let err = otter::fleet::identity::device_id(dir.path()).unwrap_err();
    assert!(format!("{err:#}").contains("machine-id"), "{err:#}");
}

#[test]
fn localtime_offsets_match_date() {
    for zone in [
        "Europe/Berlin",
        "America/New_York",
        "Australia/Sydney",
        "Asia/Kolkata",
    ] {
        let file = Path::new("/usr/share/zoneinfo").join(zone);
        assert!(
            file.is_file(),
            "{} missing: install the apt package tzdata",
            file.display()
        );
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::copy(&file, root.path().join("etc/localtime")).unwrap();
        let tz = TimeZone::load("localtime", root.path()).unwrap();
        // Around DST changes and far beyond the last transition of the file (POSIX footer).
        for t in [
            0i64,
            1_711_846_799,
            1_711_846_800,
            1_730_595_600,
            MONDAY,
            2_500_000_000,
            2_531_000_000,
            3_000_000_000,
        ] {
            let out = run(Command::new("date")
                .env("TZ", format!(":{}", file.display()))
                .args(["-d", &format!("@{t}"), "+%z"]));
            let z = out.trim();
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let h: i32 = z[1..3].parse().unwrap();
            let m: i32 = z[3..5].parse().unwrap();
            assert_eq!(
                tz.offset_at(t),
                sign * (h * 3600 + m * 60),
                "{zone} at {t}: date says {z}"
            );
        }
    }
}

#[test]
fn timer_once_stages_and_reports_failures() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::default();
    clock.set(MONDAY);
    let mut rec = Recorder::default();
    let policy = Policy {
        mode: Mode::Stage,
        ..Policy::default()
    };
    // Nothing available: a check only.
    otter::fleet::run_timer_once(timer_opts(dir.path(), policy.clone()), &mut rec, &clock).unwrap();
    {
        let mut s = rec.state.lock().unwrap();
        s.available = Some(DIGEST.into());
        s.fail_upgrade = Some("signature verification failed".into());
    }
    let err =
        otter::fleet::run_timer_once(timer_opts(dir.path(), policy.clone()), &mut rec, &clock)
            .unwrap_err();
    assert!(
        format!("{err:#}").contains("signature verification failed"),
        "{err:#}"
    );
    otter::fleet::run_timer_once(timer_opts(dir.path(), policy), &mut rec, &clock).unwrap();
    let staged = format!("upgrade {DIGEST}");
    assert_eq!(rec.calls(), ["check", "check", &staged, "check", &staged]);
    assert_eq!(rec.state.lock().unwrap().staged.as_deref(), Some(DIGEST));
}

#[test]
fn systemd_units_verify() {
    need("systemd-analyze", "systemd");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/systemd");
    let dir = tempfile::tempdir().unwrap();
    let mut names = Vec::new();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("/usr/bin/otter", "/bin/true");
        let mut name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with("@.service") {
            name = name.replace("@.service", "@sdz9.service");
        }
        std::fs::write(dir.path().join(&name), text).unwrap();
        names.push(format!("./{name}"));
    }
    assert_eq!(names.len(), 4, "{names:?}");
    let out = Command::new("systemd-analyze")
        .current_dir(dir.path())
        .args(["verify", "--man=no"])
        .args(&names)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{err}");
}
