//! The daemon against a real mosquitto: commands in, events/progress/status out, bad input,
//! broker restarts, last will, TLS with client certificates and passwords.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fleet_common;

use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fleet_common::*;
use otter::fleet::daemon::MAX_COMMAND_BYTES;
use otter::fleet::transport::TlsFiles;
use otter::fleet::{run_daemon, DaemonOptions, MqttSettings};
use serde_json::Value;

const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

struct Running {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap().unwrap();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn daemon_opts(dir: &Path, url: &str) -> DaemonOptions {
    let mut o = DaemonOptions::new(dir.to_path_buf());
    o.device_id = Some("dev1".into());
    o.group = Some("lab".into());
    let mut m = MqttSettings::new(url);
    m.keep_alive = 2;
    m.reconnect_min = Duration::from_millis(100);
    m.reconnect_max = Duration::from_millis(500);
    o.mqtt = Some(m);
    o
}

fn start(opts: DaemonOptions, rec: &Recorder) -> Running {
    let stop = opts.stop.clone();
    let mut actions = rec.clone();
    let thread = std::thread::spawn(move || run_daemon(opts, &mut actions, &FakeClock::default()));
    Running {
        stop,
        thread: Some(thread),
    }
}

fn is_event(v: &Value, id: &str, event: &str) -> bool {
    v["id"] == id && v["event"] == event
}

/// Subscribes to online/events/progress and waits for the retained `online` (proves both the
/// subscription and the daemon's connection).
fn watch(port: u16, args: &[&str]) -> Sub {
    let sub = Sub::start(
        port,
        &[
            "otter/dev1/online",
            "otter/dev1/events",
            "otter/dev1/progress",
        ],
        args,
    );
    sub.wait_for("online", |t, v| t == "otter/dev1/online" && v == "online");
    sub
}

#[test]
fn command_reaches_daemon_and_reports_events_progress_status() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker = Broker::start(dir.path(), port, "allow_anonymous true");
    let rec = Recorder::default();
    let mut d = start(
        daemon_opts(dir.path(), &format!("mqtt://127.0.0.1:{port}")),
        &rec,
    );

    let status = Sub::start(port, &["otter/dev1/status"], &["-C", "1", "-W", "10"]);
    let (_, s) = status.wait_for("retained status", |_, v| v["state"] == "idle");
    assert_eq!(s["device"], "dev1");
    assert_eq!(s["group"], "lab");
    assert_eq!(s["otter"]["booted"], "sha256:booted");

    let sub = watch(port, &[]);
    publish(
        port,
        "otter/dev1/cmd",
        format!(r#"{{"id":"c1","op":"upgrade","digest":"{DIGEST}"}}"#).as_bytes(),
        &[],
    );
    sub.wait_for("started c1", |_, v| is_event(v, "c1", "started"));
    sub.wait_for("progress c1", |t, v| {
        t == "otter/dev1/progress" && v["id"] == "c1" && v["done"] == 2 && v["op"] == "upgrade"
    });
    let (_, fin) = sub.wait_for("finished c1", |_, v| is_event(v, "c1", "finished"));
    assert_eq!(fin["result"]["staged"], DIGEST);

    // The group topic works too; a redelivered id is not executed twice.
    publish(
        port,
        "otter/group/lab/cmd",
        br#"{"id":"g1","op":"check"}"#,
        &[],
    );
    sub.wait_for("finished g1", |_, v| is_event(v, "g1", "finished"));
    publish(port, "otter/dev1/cmd", br#"{"id":"g1","op":"check"}"#, &[]);
    sub.wait_for("ignored g1", |_, v| is_event(v, "g1", "ignored"));

    // Retained status shows the staged update and the last command.
    let status = Sub::start(port, &["otter/dev1/status"], &["-C", "1", "-W", "10"]);
    let (_, s) = status.wait_for("status", |_, v| v["state"] == "idle");
    assert_eq!(s["otter"]["staged"], DIGEST);
    assert_eq!(s["last"]["id"], "g1");

    // Keepalive 2 s: the broker logs our PINGREQs.
    std::thread::sleep(Duration::from_millis(2500));
    let log = std::fs::read_to_string(&broker.log).unwrap();
    assert!(log.contains("Received PINGREQ from otter-dev1"), "{log}");
    assert_eq!(
        rec.calls(),
        vec![format!("upgrade {DIGEST}"), "check".to_string()]
    );

    // A clean stop publishes offline (not via the will).
    d.stop();
    let online = Sub::start(port, &["otter/dev1/online"], &["-C", "1", "-W", "10"]);
    online.wait_for("offline", |_, v| v == "offline");
    let log = std::fs::read_to_string(&broker.log).unwrap();
    assert!(log.contains("Received DISCONNECT from otter-dev1"), "{log}");
}

#[test]
fn bad_commands_get_error_events_and_the_daemon_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = Broker::start(dir.path(), port, "allow_anonymous true");
    let rec = Recorder::default();
    let _d = start(
        daemon_opts(dir.path(), &format!("mqtt://127.0.0.1:{port}")),
        &rec,
    );
    let sub = watch(port, &[]);
    let error = |v: &Value, id: &Value, text: &str| {
        v["event"] == "error"
            && v["id"] == *id
            && v["message"].as_str().unwrap_or("").contains(text)
    };

    publish(port, "otter/dev1/cmd", b"garbage \xff\x00", &[]);
    sub.wait_for("garbage error", |_, v| {
        error(v, &Value::Null, "not valid JSON")
    });
    publish(port, "otter/dev1/cmd", br#"{"id":"t1","op":"che"#, &[]);
    sub.wait_for("truncated error", |_, v| {
        error(v, &Value::Null, "not valid JSON")
    });
    publish(
        port,
        "otter/dev1/cmd",
        br#"{"id":"u1","op":"format-disk"}"#,
        &[],
    );
    sub.wait_for("unknown op error", |_, v| {
        error(v, &"u1".into(), "unknown op")
    });
    publish(port, "otter/dev1/cmd", br#"{"id":"n1","op":"switch"}"#, &[]);
    sub.wait_for("missing image", |_, v| error(v, &"n1".into(), "image"));

    // Just above the daemon's command limit (the packet itself is fine).
    let mut big = br#"{"id":"big1","op":"check"}"#.to_vec();
    big.resize(MAX_COMMAND_BYTES + 1, b' ');
    publish(port, "otter/dev1/cmd", &big, &[]);
    sub.wait_for("command limit", |_, v| error(v, &Value::Null, "byte limit"));

    // Just above the MQTT packet limit, then 10 MB: skipped without buffering.
    let mut huge = br#"{"id":"huge","op":"check"}"#.to_vec();
    huge.resize(otter::fleet::codec::MAX_PACKET_SIZE + 1, b' ');
    publish(port, "otter/dev1/cmd", &huge, &[]);
    sub.wait_for("packet limit", |_, v| {
        error(v, &Value::Null, "packet limit")
    });
    let file = dir.path().join("10m");
    std::fs::write(&file, vec![b'x'; 10 * 1024 * 1024]).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "mosquitto_pub -h 127.0.0.1 -p {port} -q 1 -t otter/dev1/cmd -s < {}",
            file.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sub.wait_for("10 MB", |_, v| error(v, &Value::Null, "10485"));

    // Still alive and answering.
    publish(port, "otter/dev1/cmd", br#"{"id":"ok1","op":"check"}"#, &[]);
    sub.wait_for("ok1 finished", |_, v| is_event(v, "ok1", "finished"));
    assert_eq!(rec.calls(), vec!["check".to_string()]);
}

#[test]
fn broker_restart_mid_command_reconnects_and_republishes_status() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut broker = Broker::start(dir.path(), port, "allow_anonymous true");
    let rec = Recorder::default();
    rec.hold.store(true, Ordering::SeqCst);
    let _d = start(
        daemon_opts(dir.path(), &format!("mqtt://127.0.0.1:{port}")),
        &rec,
    );
    let sub = watch(port, &[]);
    publish(
        port,
        "otter/dev1/cmd",
        br#"{"id":"r1","op":"upgrade"}"#,
        &[],
    );
    sub.wait_for("started r1", |_, v| is_event(v, "r1", "started"));
    drop(sub);

    // The broker goes away (losing all retained messages and sessions) and comes back.
    broker.restart();
    let status = Sub::start(port, &["otter/dev1/status"], &["-C", "1", "-W", "10"]);
    let (_, s) = status.wait_for("status after restart", |_, v| v["device"] == "dev1");
    assert_eq!(s["state"], "busy", "{s}");
    let sub = watch(port, &[]);
    rec.hold.store(false, Ordering::SeqCst);
    sub.wait_for("finished r1", |_, v| is_event(v, "r1", "finished"));
    let status = Sub::start(port, &["otter/dev1/status"], &["-C", "1", "-W", "10"]);
    status.wait_for("idle status", |_, v| v["state"] == "idle");
}

/// A TCP proxy whose connections the test can cut.
struct Proxy {
    port: u16,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(upstream: u16) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let conns = Arc::new(Mutex::new(Vec::new()));
        let c2 = conns.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(a) = s else { break };
                let Ok(b) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                c2.lock().unwrap().push(a.try_clone().unwrap());
                c2.lock().unwrap().push(b.try_clone().unwrap());
                for (mut from, mut to) in [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, conns }
    }

    fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

#[test]
fn last_will_marks_offline_when_the_connection_dies() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker = Broker::start(dir.path(), port, "allow_anonymous true");
    let proxy = Proxy::start(port);
    let rec = Recorder::default();
    let _d = start(
        daemon_opts(dir.path(), &format!("mqtt://127.0.0.1:{}", proxy.port)),
        &rec,
    );
    let online = Sub::start(port, &["otter/dev1/online"], &[]);
    online.wait_for("online", |_, v| v == "online");
    proxy.cut();
    online.wait_for("offline will", |_, v| v == "offline");
    // It comes back by itself.
    online.wait_for("online again", |_, v| v == "online");
    let log = std::fs::read_to_string(&broker.log).unwrap();
    assert!(
        log.contains("Client otter-dev1") && log.contains("closed its connection"),
        "{log}"
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    need("openssl", "openssl");
    run(Command::new("openssl").current_dir(dir).args(args));
}

/// A test CA, a server certificate for 127.0.0.1 and a client certificate.
fn make_pki(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut a = vec!["req", "-x509", "-days", "2", "-subj", "/CN=otter test CA"];
    a.extend(ec);
    a.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &a);
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, cn) in [("server", "127.0.0.1"), ("client", "dev1")] {
        let subj = format!("/CN={cn}");
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let crt = format!("{name}.crt");
        let ext = format!("{name}.ext");
        let mut a = vec!["req", "-subj", &subj, "-keyout", &key, "-out", &csr];
        a.extend(ec);
        openssl(dir, &a);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-days",
                "2",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-extfile",
                &ext,
            ],
        );
    }
}

#[test]
fn tls_with_client_certificate_and_password() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| -> PathBuf { dir.path().join(n) };
    make_pki(dir.path());
    need("mosquitto_passwd", "mosquitto");
    run(Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(p("passwd"))
        .args(["fleet", "s3cret"]));
    let port = free_port();
    let extra = format!(
        "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\npassword_file {}\n\
         allow_anonymous false\n",
        p("ca.crt").display(),
        p("server.crt").display(),
        p("server.key").display(),
        p("passwd").display()
    );
    let _broker = Broker::start(dir.path(), port, &extra);
    let tls = TlsFiles {
        ca_file: Some(p("ca.crt")),
        cert_file: Some(p("client.crt")),
        key_file: Some(p("client.key")),
    };

    // Wrong password: refused with a clear reason, no messages flow.
    let mut wrong = MqttSettings::new(&format!("mqtts://127.0.0.1:{port}"));
    wrong.tls = tls.clone();
    wrong.username = Some("fleet".into());
    wrong.password = Some("wrong".into());
    let opts = otter::fleet::mqtt::SessionOptions {
        url: wrong.url.parse().unwrap(),
        tls: tls.clone(),
        client_id: "otter-wrong".into(),
        username: wrong.username.clone(),
        password: wrong.password.clone(),
        keep_alive: 5,
        will: None,
        subscriptions: vec!["x".into()],
        connect_timeout: Duration::from_secs(5),
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_millis(100),
    };
    let c =
        otter::fleet::mqtt::Client::start(opts, Arc::new(AtomicBool::new(false)), None).unwrap();
    match c.events().recv_timeout(Duration::from_secs(10)).unwrap() {
        otter::fleet::mqtt::Event::Disconnected { error, .. } => assert!(
            error.contains("not authorized") || error.contains("bad user name or password"),
            "{error}"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    c.shutdown(Duration::ZERO);

    // Right credentials over mutual TLS.
    let mut opts = daemon_opts(dir.path(), &format!("mqtts://127.0.0.1:{port}"));
    if let Some(m) = opts.mqtt.as_mut() {
        m.tls = tls;
        m.username = Some("fleet".into());
        m.password = Some("s3cret".into());
    }
    let rec = Recorder::default();
    let _d = start(opts, &rec);
    let ca = p("ca.crt").display().to_string();
    let cert = p("client.crt").display().to_string();
    let key = p("client.key").display().to_string();
    let args = [
        "--cafile", &ca, "--cert", &cert, "--key", &key, "-u", "fleet", "-P", "s3cret",
    ];
    let sub = watch(port, &args);
    publish(
        port,
        "otter/dev1/cmd",
        br#"{"id":"s1","op":"switch","image":"oci:/media/x"}"#,
        &args,
    );
    sub.wait_for("finished s1", |_, v| is_event(v, "s1", "finished"));
    assert_eq!(rec.calls(), vec!["switch oci:/media/x".to_string()]);

    // A server the CA does not vouch for is refused (a fresh CA with the same name).
    let other = tempfile::tempdir().unwrap();
    make_pki(other.path());
    let opts = otter::fleet::mqtt::SessionOptions {
        url: format!("mqtts://127.0.0.1:{port}").parse().unwrap(),
        tls: TlsFiles {
            ca_file: Some(other.path().join("ca.crt")),
            cert_file: None,
            key_file: None,
        },
        client_id: "otter-badca".into(),
        username: None,
        password: None,
        keep_alive: 5,
        will: None,
        subscriptions: vec![],
        connect_timeout: Duration::from_secs(5),
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_millis(100),
    };
    let start = Instant::now();
    let c =
        otter::fleet::mqtt::Client::start(opts, Arc::new(AtomicBool::new(false)), None).unwrap();
    match c.events().recv_timeout(Duration::from_secs(10)).unwrap() {
        otter::fleet::mqtt::Event::Disconnected { error, .. } => {
            assert!(error.contains("TLS handshake"), "{error}")
        }
        other => panic!("expected a TLS failure, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(10));
    c.shutdown(Duration::ZERO);
}

#[test]
fn persistent_session_delivers_commands_sent_while_offline() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = Broker::start(dir.path(), port, "allow_anonymous true");
    let url = format!("mqtt://127.0.0.1:{port}");
    let rec = Recorder::default();
    let mut d = start(daemon_opts(dir.path(), &url), &rec);
    let online = Sub::start(port, &["otter/dev1/online"], &[]);
    online.wait_for("online", |_, v| v == "online");
    d.stop();
    online.wait_for("offline", |_, v| v == "offline");

    // Sent while the device is away: the broker keeps it for the persistent session.
    publish(
        port,
        "otter/dev1/cmd",
        br#"{"id":"p1","op":"rollback"}"#,
        &[],
    );
    let sub = Sub::start(port, &["otter/dev1/events", "otter/dev1/online"], &[]);
    sub.wait_for("subscribed (retained offline)", |_, v| v == "offline");
    let _d = start(daemon_opts(dir.path(), &url), &rec);
    sub.wait_for("finished p1", |_, v| is_event(v, "p1", "finished"));
    assert_eq!(rec.calls(), vec!["rollback".to_string()]);
}

#[test]
fn reconnect_backoff_doubles_up_to_the_cap() {
    // A port nobody listens on.
    let port = free_port();
    let opts = otter::fleet::mqtt::SessionOptions {
        url: format!("mqtt://127.0.0.1:{port}").parse().unwrap(),
        tls: TlsFiles::default(),
        client_id: "otter-backoff".into(),
        username: None,
        password: Some("not printed".into()),
        keep_alive: 5,
        will: None,
        subscriptions: vec![],
        connect_timeout: Duration::from_secs(2),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
    };
    assert!(!format!("{opts:?}").contains("not printed"));
    let c =
        otter::fleet::mqtt::Client::start(opts, Arc::new(AtomicBool::new(false)), None).unwrap();
    let mut waits = Vec::new();
    while waits.len() < 5 {
        match c.events().recv_timeout(Duration::from_secs(10)).unwrap() {
            otter::fleet::mqtt::Event::Disconnected { error, retry_in } => {
                assert!(error.contains(&port.to_string()), "{error}");
                waits.push(retry_in.as_millis());
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(waits, [20, 40, 80, 100, 100]);
    c.shutdown(Duration::ZERO);
}
