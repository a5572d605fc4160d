//! Shared helpers of the fleet tests: a recording `FleetActions`, a fake clock, server guards.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use otter::fleet::{CheckOutcome, Clock, FleetActions, Progress};
use serde_json::{json, Value};

/// What the fake update flow does and has done.
#[derive(Default)]
pub struct FakeState {
    pub calls: Vec<String>,
    /// Digest a check reports as available.
    pub available: Option<String>,
    /// Digest staged (set by upgrade).
    pub staged: Option<String>,
    pub reboots: usize,
    /// Fail the next upgrade with this message.
    pub fail_upgrade: Option<String>,
}

/// A `FleetActions` that records calls; `hold` makes upgrade wait until cleared.
#[derive(Clone, Default)]
pub struct Recorder {
    pub state: Arc<Mutex<FakeState>>,
    pub hold: Arc<AtomicBool>,
}

impl Recorder {
    pub fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }
    fn call(&self, s: String) {
        self.state.lock().unwrap().calls.push(s);
    }
}

impl FleetActions for Recorder {
    fn check(&mut self, _p: &mut dyn Progress) -> Result<CheckOutcome> {
        self.call("check".into());
        let s = self.state.lock().unwrap();
        Ok(CheckOutcome {
            available: s.available.clone(),
            version: s.available.as_ref().map(|_| "2.0".into()),
            staged: s.staged.clone(),
        })
    }
    fn upgrade(&mut self, digest: Option<&str>, p: &mut dyn Progress) -> Result<Value> {
        self.call(format!("upgrade {}", digest.unwrap_or("-")));
        p.progress(json!({"stage": "fetch", "done": 1, "total": 2}));
        let start = Instant::now();
        while self.hold.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
        }
        p.progress(json!({"stage": "fetch", "done": 2, "total": 2}));
        let mut s = self.state.lock().unwrap();
        if let Some(m) = s.fail_upgrade.take() {
            bail!("{m}");
        }
        let d = digest.map(String::from).or(s.available.clone());
        s.staged = d.clone();
        s.available = None;
        Ok(json!({"staged": d}))
    }
    fn switch(&mut self, image: &str, _p: &mut dyn Progress) -> Result<Value> {
        self.call(format!("switch {image}"));
        Ok(json!({"image": image}))
    }
    fn import(&mut self, image: &str, _p: &mut dyn Progress) -> Result<Value> {
        self.call(format!("import {image}"));
        Ok(json!({"imported": image}))
    }
    fn rollback(&mut self) -> Result<Value> {
        self.call("rollback".into());
        Ok(json!({}))
    }
    fn reboot(&mut self) -> Result<()> {
        self.call("reboot".into());
        let mut s = self.state.lock().unwrap();
        s.reboots += 1;
        s.staged = None;
        Ok(())
    }
    fn status(&mut self) -> Result<Value> {
        let s = self.state.lock().unwrap();
        Ok(json!({"booted": "sha256:booted", "staged": s.staged}))
    }
}

/// A clock the test moves.
#[derive(Clone, Default)]
pub struct FakeClock(pub Arc<AtomicI64>);

impl Clock for FakeClock {
    fn now_unix(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl FakeClock {
    pub fn set(&self, t: i64) {
        self.0.store(t, Ordering::SeqCst)
    }
}

/// Fails with the apt package name when a tool is missing.
pub fn need(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(tool).is_file();
    assert!(found, "{tool} not found: install the apt package {package}");
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_port(port: u16, log: &Path) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if start.elapsed() > Duration::from_secs(10) {
            panic!(
                "server on port {port} did not start: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed (and waited for) on drop.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    pub fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A mosquitto broker in a temp dir.
pub struct Broker {
    pub port: u16,
    pub conf: std::path::PathBuf,
    pub log: std::path::PathBuf,
    pub child: ChildGuard,
}

impl Broker {
    /// Starts mosquitto with `extra` config lines added after `listener PORT 127.0.0.1`.
    pub fn start(dir: &Path, port: u16, extra: &str) -> Broker {
        need("mosquitto", "mosquitto");
        let conf = dir.join(format!("mosquitto-{port}.conf"));
        let log = dir.join(format!("mosquitto-{port}.log"));
        let text = format!(
            "per_listener_settings false\npersistence false\nuser root\nlog_dest file {}\nlog_type all\n\
             listener {port} 127.0.0.1\n{extra}\n",
            log.display()
        );
        std::fs::write(&conf, text).unwrap();
        let mut b = Broker {
            port,
            conf,
            log,
            child: ChildGuard(None),
        };
        b.restart();
        b
    }

    pub fn restart(&mut self) {
        self.child.kill();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log.with_extension("out"))
            .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        self.child = ChildGuard(Some(child));
        wait_port(self.port, &self.log);
    }
}

/// `mosquitto_sub` printing `topic payload` lines; read them with [`Sub::line`].
pub struct Sub {
    child: ChildGuard,
    rx: std::sync::mpsc::Receiver<String>,
}

impl Sub {
    /// Subscribes to `topics`; `args` adds connection options (TLS, auth).
    pub fn start(port: u16, topics: &[&str], args: &[&str]) -> Sub {
        need("mosquitto_sub", "mosquitto-clients");
        let mut cmd = Command::new("mosquitto_sub");
        cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-v", "-q", "1"]);
        cmd.args(args);
        for t in topics {
            cmd.args(["-t", t]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Sub {
            child: ChildGuard(Some(child)),
            rx,
        }
    }

    /// The next line, or None after `timeout`.
    pub fn line(&self, timeout: Duration) -> Option<String> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Reads lines until `pred` matches one (topic, JSON-or-string payload); panics after 15 s.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&str, &Value) -> bool) -> (String, Value) {
        let start = Instant::now();
        let mut seen = Vec::new();
        while start.elapsed() < Duration::from_secs(15) {
            let Some(line) = self.line(Duration::from_millis(200)) else {
                continue;
            };
            let (topic, payload) = line.split_once(' ').unwrap_or((&line, ""));
            let v: Value =
                serde_json::from_str(payload).unwrap_or_else(|_| Value::String(payload.into()));
            if pred(topic, &v) {
                return (topic.to_string(), v);
            }
            seen.push(line.chars().take(300).collect::<String>());
        }
        panic!("timed out waiting for {what}; saw:\n{}", seen.join("\n"));
    }
}

/// Publishes with `mosquitto_pub` (QoS 1); `payload` None reads `file` with `-s`.
pub fn publish(port: u16, topic: &str, payload: &[u8], args: &[&str]) {
    need("mosquitto_pub", "mosquitto-clients");
    let mut child = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
            "-s",
        ])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(payload).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One recorded HTTP request: method, path, `fleet-lock-protocol` header, body.
pub type Request = (String, String, Option<String>, String);

/// A tiny HTTP/1.1 server for FleetLock: records requests, answers with `status` and `body`.
pub struct HttpServer {
    pub url: String,
    pub requests: Arc<Mutex<Vec<Request>>>,
    pub answer: Arc<Mutex<(u16, String)>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    pub fn start() -> HttpServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(Mutex::new((200u16, String::new())));
        let stop = Arc::new(AtomicBool::new(false));
        let (rq, an, st) = (requests.clone(), answer.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                let Ok((s, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut r = BufReader::new(s);
                let mut first = String::new();
                if r.read_line(&mut first).is_err() {
                    continue;
                }
                let mut len = 0usize;
                let mut proto = None;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                        break;
                    }
                    let (k, v) = h.split_once(':').unwrap_or((&h, ""));
                    let k = k.trim().to_ascii_lowercase();
                    if k == "content-length" {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    if k == "fleet-lock-protocol" {
                        proto = Some(v.trim().to_string());
                    }
                }
                let mut body = vec![0u8; len];
                let _ = r.read_exact(&mut body);
                let mut parts = first.split_whitespace();
                let method = parts.next().unwrap_or("").to_string();
                let path = parts.next().unwrap_or("").to_string();
                rq.lock().unwrap().push((
                    method,
                    path,
                    proto,
                    String::from_utf8_lossy(&body).into(),
                ));
                let (code, text) = an.lock().unwrap().clone();
                let mut s = r.into_inner();
                let _ = write!(
                    s,
                    "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
            }
        });
        HttpServer {
            url,
            requests,
            answer,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs a command, panics with its output on failure; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
