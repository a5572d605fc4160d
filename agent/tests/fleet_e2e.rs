//! Fleet end to end: the real `otter daemon` (this crate's binary) against a real `mosquitto`
//! and a real `docker-registry` on loopback. Images are built with umoci and pushed with
//! `skopeo copy`; commands are published with `mosquitto_pub`, reports read with
//! `mosquitto_sub`; the upgraded sysroot is checked with `ostree admin status`. Releases are
//! signed in the registry with `otter-publish` and the device requires signatures: a command
//! can only pick an image the device would accept anyway.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod deploy_util;
mod fleet_common;
mod source_util;

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleet_common::{publish, Broker, Sub};
use serde_json::Value;

const OTTER: &str = env!("CARGO_BIN_EXE_otter");
const PUBLISH: &str = env!("CARGO_BIN_EXE_otter-publish");

fn publish_tool(args: &[&str]) {
    deploy_util::run(Command::new(PUBLISH).args(args));
}

/// The daemon process: stopped with SIGTERM (then killed) by its PID when the test ends.
struct Daemon(Option<Child>);

impl Daemon {
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.0.take()?;
        // SAFETY: signalling the child we started, by its PID.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn otter(sysroot: &Path, config: &Path, args: &[&str]) -> String {
    deploy_util::run(
        Command::new(OTTER)
            .arg(format!("--sysroot={}", sysroot.display()))
            .arg(format!("--config={}", config.display()))
            .args(args)
            .env_remove("OTTER_BOOTED_DEPLOYMENT"),
    )
}

#[test]
fn mqtt_upgrade_command_upgrades_the_sysroot() {
    let t = deploy_util::Tmpfs::new();
    let layout = deploy_util::build_images(t.path());
    let reg = source_util::Registry::start(
        &t.path().join("registry"),
        source_util::RegistryOpts {
            tls: None,
            htpasswd: None,
        },
    );
    let image = format!("docker://{}/os/demo:stable", reg.host());
    source_util::skopeo_push(&layout, "v1", &image, &[]);
    let keys = t.path().join("keys");
    fs::create_dir_all(&keys).unwrap();
    publish_tool(&["keygen", "--out", keys.join("release").to_str().unwrap()]);
    let sk = keys.join("release.key");
    let sign =
        |img: &str| publish_tool(&["sign", "--key", sk.to_str().unwrap(), img, "--plain-http"]);
    sign(&image);
    // the public key is the device's only trusted key
    let trusted = t.path().join("keys.d");
    fs::create_dir_all(&trusted).unwrap();
    fs::copy(keys.join("release.pub"), trusted.join("release.pub")).unwrap();

    let broker = Broker::start(t.path(), fleet_common::free_port(), "allow_anonymous true");
    let sr = t.path().join("sysroot");
    let conf = t.path().join("otter.conf");
    fs::write(
        &conf,
        format!(
            "[registry]\ninsecure-hosts = {}\n\n[trust]\nrequire-signature = true\nkeys-dir = {}\n\n\
             [mqtt]\nurl = mqtt://127.0.0.1:{}\ndevice-id = dev1\ngroup = lab\nkeep-alive = 10\n\
             reconnect-min = 1\nreconnect-max = 2\n\n[policy]\nmode = check\n",
            reg.host(),
            trusted.display(),
            broker.port
        ),
    )
    .unwrap();
    otter(&sr, &conf, &["install", "--stateroot", "testos", &image]);
    let before = deploy_util::admin_status_list(&sr);
    assert_eq!(before.len(), 1);
    // the registry now has v2 under the tracked tag
    source_util::skopeo_push(&layout, "v2", &image, &[]);
    sign(&image);

    let sub = Sub::start(broker.port, &["otter/dev1/#"], &[]);
    let log = t.path().join("daemon.log");
    let out = fs::File::create(&log).unwrap();
    let mut daemon = Daemon(Some(
        Command::new(OTTER)
            .arg(format!("--sysroot={}", sr.display()))
            .arg(format!("--config={}", conf.display()))
            .args(["-v", "daemon"])
            .env_remove("OTTER_BOOTED_DEPLOYMENT")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap(),
    ));
    let daemon_log = || fs::read_to_string(&log).unwrap_or_default();
    sub.wait_for("online", |topic, v| {
        topic == "otter/dev1/online" && v == "online"
    });
    sub.wait_for("idle status", |topic, v| {
        topic == "otter/dev1/status" && v["state"] == "idle"
    });

    publish(
        broker.port,
        "otter/dev1/cmd",
        br#"{"id":"c1","op":"upgrade"}"#,
        &[],
    );
    sub.wait_for("started c1", |topic, v| {
        topic == "otter/dev1/events" && v["id"] == "c1" && v["event"] == "started"
    });
    let (_, p) = sub.wait_for("progress of c1", |topic, v| {
        topic == "otter/dev1/progress" && v["id"] == "c1" && v["event"] == "bytes"
    });
    assert!(p["total"].as_u64().unwrap() > 0, "{p}");
    let (_, fin) = sub.wait_for("c1 finished", |topic, v| {
        topic == "otter/dev1/events"
            && v["id"] == "c1"
            && (v["event"] == "finished" || v["event"] == "failed")
    });
    assert_eq!(fin["event"], "finished", "{fin}\n{}", daemon_log());
    assert_eq!(fin["result"]["result"], "staged", "{fin}");
    assert_eq!(fin["result"]["version"], "2", "{fin}");
    let (_, st) = sub.wait_for("status with v2", |topic, v| {
        topic == "otter/dev1/status" && v["state"] == "idle" && v["last"]["id"] == "c1"
    });
    let ds = st["otter"]["deployments"].as_array().unwrap();
    assert_eq!(ds.len(), 2, "{st:#}");
    assert_eq!(ds[0]["image"]["version"], "2", "{st:#}");
    assert_eq!(ds[0]["image"]["reference"], image.as_str(), "{st:#}");
    assert_eq!(ds[1]["rollback"], true, "{st:#}");
    let after = deploy_util::admin_status_list(&sr);
    assert_eq!(after.len(), 2);
    assert_eq!(after[1], before[0], "v1 kept as rollback");
    assert_eq!(
        after[0].1,
        format!("{}.0", ds[0]["checksum"].as_str().unwrap())
    );

    // the retained status is there for a late subscriber too
    let late = Sub::start(broker.port, &["otter/dev1/status"], &[]);
    let (_, st) = late.wait_for("retained status", |_, v| v["last"]["id"] == "c1");
    assert_eq!(st["otter"]["deployments"][0]["image"]["version"], "2");

    // a switch to an image that does not exist: an error event, the daemon carries on
    let missing = format!("docker://{}/os/nope:missing", reg.host());
    publish(
        broker.port,
        "otter/dev1/cmd",
        format!(r#"{{"id":"c2","op":"switch","image":"{missing}"}}"#).as_bytes(),
        &[],
    );
    let (_, e) = sub.wait_for("c2 failed", |topic, v| {
        topic == "otter/dev1/events"
            && v["id"] == "c2"
            && (v["event"] == "failed" || v["event"] == "finished")
    });
    assert_eq!(e["event"], "failed", "{e}");
    assert!(e["message"].as_str().unwrap().contains("nope"), "{e}");
    assert_eq!(
        deploy_util::admin_status_list(&sr),
        after,
        "nothing changed"
    );
    publish(
        broker.port,
        "otter/dev1/cmd",
        br#"{"id":"c3","op":"check"}"#,
        &[],
    );
    let (_, c) = sub.wait_for("c3 finished", |topic, v| {
        topic == "otter/dev1/events" && v["id"] == "c3" && v["event"] == "finished"
    });
    assert_eq!(c["result"]["available"], Value::Null, "{c}");

    let st = daemon.stop();
    assert!(
        st.is_some_and(|s| s.success()),
        "daemon did not stop cleanly on SIGTERM: {st:?}\n{}",
        daemon_log()
    );
    sub.wait_for("offline", |topic, v| {
        topic == "otter/dev1/online" && v == "offline"
    });
}

#[test]
fn daemon_once_and_import_media() {
    let t = deploy_util::Tmpfs::new();
    let layout = deploy_util::build_images(t.path());
    let sr = t.path().join("sysroot");
    let conf = t.path().join("otter.conf");
    fs::write(
        &conf,
        "[trust]\nrequire-signature = false\n[policy]\nmode = stage\ninterval = 1h\n[mqtt]\ndevice-id = dev2\n",
    )
    .unwrap();
    let v1 = format!("oci:{}:v1", layout.display());
    otter(&sr, &conf, &["install", "--stateroot", "testos", &v1]);
    // the timer round: nothing new for the tracked oci:…:v1
    otter(&sr, &conf, &["daemon", "--once"]);
    assert_eq!(deploy_util::admin_status_list(&sr).len(), 1);

    // a "USB stick" with v2 as an oci-archive
    let media = t.path().join("media");
    fs::create_dir_all(media.join("otter")).unwrap();
    source_util::run(Command::new("skopeo").args([
        "--insecure-policy",
        "copy",
        "--quiet",
        &format!("oci:{}:v2", layout.display()),
        &format!("oci-archive:{}", media.join("otter/update.tar").display()),
    ]));
    let out = otter(&sr, &conf, &["import", "--media", media.to_str().unwrap()]);
    assert!(out.contains("Imported oci-archive:"), "{out}");
    let l = deploy_util::admin_status_list(&sr);
    assert_eq!(l.len(), 2);
    let st: Value = serde_json::from_str(&otter(&sr, &conf, &["status", "--json"])).unwrap();
    assert_eq!(st["deployments"][0]["image"]["version"], "2");
    // still tracks the image it tracked before
    assert_eq!(st["deployments"][0]["image"]["reference"], v1.as_str());
    // the stick stays plugged in: not imported again
    let out = otter(&sr, &conf, &["import", "--media", media.to_str().unwrap()]);
    assert!(out.contains("imported before"), "{out}");
    assert_eq!(deploy_util::admin_status_list(&sr), l);
}
