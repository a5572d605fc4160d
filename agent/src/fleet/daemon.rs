//! `otter daemon`: MQTT commands and reports, the timer policy, FleetLock before reboots.
//!
//! One thread (the caller's) runs [`FleetActions`]; the MQTT session runs on its own thread
//! (see [`super::mqtt`]), so keepalives and progress reports flow while an update runs.
//! Commands that arrive meanwhile wait in a bounded queue.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

use super::codec::{QoS, Will};
use super::fleetlock::FleetLock;
use super::identity;
use super::mqtt::{self, Client, Event, SessionOptions};
use super::policy::{decide, Decision, Mode, Policy};
use super::state::Rollout;
use super::transport::{BrokerUrl, TlsFiles};
use super::{Clock, FleetActions, Progress};

/// Largest command payload the daemon parses (bytes). Larger ones get an error event.
pub const MAX_COMMAND_BYTES: usize = 16 * 1024;
/// Command ids remembered to drop QoS 1 redeliveries.
const RECENT_IDS: usize = 64;
/// Longest accepted command id.
const MAX_ID_LEN: usize = 128;
/// How long the daemon waits for its last messages to be acknowledged at shutdown/reboot.
const FLUSH_GRACE: Duration = Duration::from_secs(3);

/// `[mqtt]` settings. (Debug output hides the password.)
#[derive(Clone)]
pub struct MqttSettings {
    /// `mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]`.
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: TlsFiles,
    /// Seconds; 0 disables keepalive.
    pub keep_alive: u16,
    /// MQTT client id; default `otter-<device id>`.
    pub client_id: Option<String>,
    /// Reconnect backoff: first wait and cap.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl std::fmt::Debug for MqttSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSettings")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("tls", &self.tls)
            .field("keep_alive", &self.keep_alive)
            .field("client_id", &self.client_id)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .finish()
    }
}

impl MqttSettings {
    pub fn new(url: &str) -> MqttSettings {
        MqttSettings {
            url: url.to_string(),
            username: None,
            password: None,
            tls: TlsFiles::default(),
            keep_alive: 30,
            client_id: None,
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(300),
        }
    }
}

/// Everything `otter daemon` needs (built by the CLI from the config file).
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// Root of the system (`/` on a device); `etc/machine-id` and `etc/localtime` are read here.
    pub sysroot: PathBuf,
    /// State directory (`<sysroot>/var/lib/otter`).
    pub state_dir: PathBuf,
    /// Device id; default derived from `/etc/machine-id`.
    pub device_id: Option<String>,
    /// Fleet group (`otter/group/<group>/cmd`; FleetLock group). Default `default`.
    pub group: Option<String>,
    /// MQTT; None runs the timer only.
    pub mqtt: Option<MqttSettings>,
    /// Timer period; None disables the timer.
    pub timer_interval: Option<Duration>,
    pub policy: Policy,
    /// FleetLock server (`http[s]://…`) asked before every reboot.
    pub fleetlock_url: Option<String>,
    /// Set to end the daemon (signal handler or tests).
    pub stop: Arc<AtomicBool>,
}

impl DaemonOptions {
    pub fn new(sysroot: PathBuf) -> DaemonOptions {
        DaemonOptions {
            state_dir: sysroot.join("var/lib/otter"),
            sysroot,
            device_id: None,
            group: None,
            mqtt: None,
            timer_interval: None,
            policy: Policy::default(),
            fleetlock_url: None,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// MQTT topics of one device.
#[derive(Clone, Debug)]
pub struct Topics {
    pub cmd: String,
    pub group_cmd: String,
    pub status: String,
    pub events: String,
    pub progress: String,
    pub online: String,
}

impl Topics {
    pub fn new(device: &str, group: &str) -> Topics {
        Topics {
            cmd: format!("otter/{device}/cmd"),
            group_cmd: format!("otter/group/{group}/cmd"),
            status: format!("otter/{device}/status"),
            events: format!("otter/{device}/events"),
            progress: format!("otter/{device}/progress"),
            online: format!("otter/{device}/online"),
        }
    }
}

/// A parsed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Check,
    Upgrade {
        digest: Option<String>,
        reboot: bool,
    },
    Switch {
        image: String,
        reboot: bool,
    },
    Rollback {
        reboot: bool,
    },
    Reboot,
    Status,
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Check => "check",
            Op::Upgrade { .. } => "upgrade",
            Op::Switch { .. } => "switch",
            Op::Rollback { .. } => "rollback",
            Op::Reboot => "reboot",
            Op::Status => "status",
        }
    }
}

/// A command that could not be parsed: the id (if one could be read) and why.
#[derive(Clone, Debug, PartialEq)]
pub struct BadCommand {
    pub id: Value,
    pub message: String,
}

/// Reads the `id` of a command payload if it has a usable one (string or integer).
fn command_id(obj: &Map<String, Value>) -> Option<Value> {
    match obj.get("id")? {
        Value::String(s) if !s.is_empty() && s.len() <= MAX_ID_LEN => {
            Some(Value::String(s.clone()))
        }
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(Value::Number(n.clone())),
        _ => None,
    }
}

/// Parses a command payload.
pub fn parse_command(payload: &[u8]) -> Result<(Value, Op), BadCommand> {
    let bad = |id: &Value, message: String| BadCommand {
        id: id.clone(),
        message,
    };
    if payload.len() > MAX_COMMAND_BYTES {
        return Err(bad(
            &Value::Null,
            format!(
                "command of {} bytes exceeds the {MAX_COMMAND_BYTES}-byte limit",
                payload.len()
            ),
        ));
    }
    let v: Value = serde_json::from_slice(payload)
        .map_err(|e| bad(&Value::Null, format!("command is not valid JSON: {e}")))?;
    let Value::Object(obj) = v else {
        return Err(bad(&Value::Null, "command must be a JSON object".into()));
    };
    let id = command_id(&obj).ok_or_else(|| {
        bad(
            &Value::Null,
            format!("command needs an \"id\": a string of 1-{MAX_ID_LEN} characters or an integer"),
        )
    })?;
    let op = obj
        .get("op")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(&id, "command needs an \"op\" string".into()))?;
    let allowed: &[&str] = match op {
        "check" | "reboot" | "status" => &[],
        "upgrade" => &["digest", "reboot"],
        "switch" => &["image", "reboot"],
        "rollback" => &["reboot"],
        other => {
            return Err(bad(
                &id,
                format!(
                "unknown op {other:?}: expected check, upgrade, switch, rollback, reboot or status"
            ),
            ))
        }
    };
    if let Some(k) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "id" | "op") && !allowed.contains(&k.as_str()))
    {
        return Err(bad(&id, format!("unknown field {k:?} for op {op:?}")));
    }
    let reboot = match obj.get("reboot") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad(&id, "\"reboot\" must be true or false".into())),
    };
    let op = match op {
        "check" => Op::Check,
        "reboot" => Op::Reboot,
        "status" => Op::Status,
        "rollback" => Op::Rollback { reboot },
        "upgrade" => {
            let digest = match obj.get("digest") {
                None => None,
                Some(Value::String(d))
                    if d.strip_prefix("sha256:").is_some_and(|h| {
                        h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                    }) =>
                {
                    Some(d.clone())
                }
                Some(_) => {
                    return Err(bad(
                        &id,
                        "\"digest\" must be sha256:<64 lowercase hex>".into(),
                    ))
                }
            };
            Op::Upgrade { digest, reboot }
        }
        _ => match obj.get("image") {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 1024 => Op::Switch {
                image: s.clone(),
                reboot,
            },
            _ => {
                return Err(bad(
                    &id,
                    "\"image\" must be an image reference string".into(),
                ))
            }
        },
    };
    Ok((id, op))
}

/// Publishes progress of one command.
struct ProgressTo<'a> {
    out: &'a Out,
    id: Value,
    op: &'static str,
}

impl Progress for ProgressTo<'_> {
    fn progress(&mut self, value: Value) {
        let mut m = match value {
            Value::Object(m) => m,
            other => {
                let mut m = Map::new();
                m.insert("progress".into(), other);
                m
            }
        };
        m.insert("id".into(), self.id.clone());
        m.insert("op".into(), self.op.into());
        self.out.publish(
            &self.out.topics.progress,
            &Value::Object(m),
            QoS::AtMostOnce,
            false,
        );
    }
}

/// Where reports go (MQTT, and the log).
struct Out {
    client: Option<Client>,
    topics: Topics,
}

impl Out {
    fn publish(&self, topic: &str, v: &Value, qos: QoS, retain: bool) {
        if let Some(c) = &self.client {
            c.publish(topic, v.to_string().as_bytes(), qos, retain);
        }
    }

    fn event(&self, v: Value) {
        log::info!("event: {v}");
        self.publish(&self.topics.events, &v, QoS::AtLeastOnce, false);
    }
}

struct Daemon<'a> {
    opts: DaemonOptions,
    actions: &'a mut dyn FleetActions,
    clock: &'a dyn Clock,
    out: Out,
    device: String,
    group: String,
    fleetlock: Option<FleetLock>,
    steady_reported: bool,
    recent: VecDeque<Value>,
    last: Value,
    staged: Option<String>,
}

/// Runs the daemon until `opts.stop` is set. Errors only for bad settings; everything that
/// goes wrong later (broker away, a failing update) is reported and retried.
pub fn run_daemon(
    opts: DaemonOptions,
    actions: &mut dyn FleetActions,
    clock: &dyn Clock,
) -> Result<()> {
    let mut d = Daemon::new(opts, actions, clock, true)?;
    d.run();
    Ok(())
}

/// One timer round and exit (`otter daemon --once`, run by `otter-upgrade.timer`): no MQTT.
/// Errors when the check or the staging failed.
pub fn run_timer_once(
    opts: DaemonOptions,
    actions: &mut dyn FleetActions,
    clock: &dyn Clock,
) -> Result<()> {
    let mut d = Daemon::new(opts, actions, clock, false)?;
    d.report_steady_state();
    let now = d.clock.now_unix();
    d.tick(now)
}

/// Sets `stop` when SIGTERM or SIGINT arrives (for `otter daemon`).
pub fn stop_on_signals(stop: Arc<AtomicBool>) -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    static SIGNALLED: AtomicBool = AtomicBool::new(false);
    extern "C" fn on_signal(_: libc::c_int) {
        SIGNALLED.store(true, Ordering::SeqCst);
    }
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }
            .with_context(|| format!("installing a handler for {sig}"))?;
    }
    std::thread::Builder::new()
        .name("otter-signals".into())
        .spawn(move || loop {
            if SIGNALLED.load(Ordering::SeqCst) {
                stop.store(true, Ordering::SeqCst);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        })
        .context("starting the signal watcher thread")?;
    Ok(())
}

impl<'a> Daemon<'a> {
    fn new(
        opts: DaemonOptions,
        actions: &'a mut dyn FleetActions,
        clock: &'a dyn Clock,
        with_mqtt: bool,
    ) -> Result<Daemon<'a>> {
        let device = match &opts.device_id {
            Some(d) => d.clone(),
            None => identity::device_id(&opts.sysroot)?,
        };
        identity::check_topic_level("device id", &device)?;
        let group = opts.group.clone().unwrap_or_else(|| "default".into());
        identity::check_topic_level("group", &group)?;
        let topics = Topics::new(&device, &group);
        let fleetlock = match &opts.fleetlock_url {
            Some(u) => Some(FleetLock::new(u, &device, &group)?),
            None => None,
        };
        let client = match &opts.mqtt {
            Some(m) if with_mqtt => Some(start_mqtt(m, &device, &topics)?),
            _ => None,
        };
        Ok(Daemon {
            opts,
            actions,
            clock,
            out: Out { client, topics },
            device,
            group,
            fleetlock,
            steady_reported: false,
            recent: VecDeque::new(),
            last: Value::Null,
            staged: None,
        })
    }
}

fn start_mqtt(m: &MqttSettings, device: &str, topics: &Topics) -> Result<Client> {
    let url: BrokerUrl = m.url.parse()?;
    if m.password.is_some() && m.username.is_none() {
        bail!("[mqtt] password needs a username");
    }
    let events_topic = topics.events.clone();
    let overflow: mqtt::OverflowReply = Box::new(move |_topic, payload| {
        let id = serde_json::from_slice::<Value>(payload)
            .ok()
            .and_then(|v| v.as_object().and_then(command_id))
            .unwrap_or(Value::Null);
        let v = json!({"id": id, "event": "error", "message": "daemon busy: command queue full, command dropped"});
        Some((events_topic.clone(), v.to_string().into_bytes()))
    });
    let opts = SessionOptions {
        url,
        tls: m.tls.clone(),
        client_id: m
            .client_id
            .clone()
            .unwrap_or_else(|| format!("otter-{device}")),
        username: m.username.clone(),
        password: m.password.clone(),
        keep_alive: m.keep_alive,
        will: Some(Will {
            topic: topics.online.clone(),
            payload: b"offline".to_vec(),
            qos: QoS::AtLeastOnce,
            retain: true,
        }),
        subscriptions: vec![topics.cmd.clone(), topics.group_cmd.clone()],
        connect_timeout: Duration::from_secs(10),
        backoff_min: m.reconnect_min,
        backoff_max: m.reconnect_max.max(m.reconnect_min),
    };
    Client::start(opts, Arc::new(AtomicBool::new(false)), Some(overflow))
}

impl Daemon<'_> {
    fn stopped(&self) -> bool {
        self.opts.stop.load(Ordering::SeqCst)
    }

    fn run(&mut self) {
        log::info!(
            "otter daemon: device {} group {} policy {}",
            self.device,
            self.group,
            self.opts.policy.mode
        );
        let mut next_tick = self.opts.timer_interval.map(|_| self.clock.now_unix());
        self.report_steady_state();
        while !self.stopped() {
            let ev = match &self.out.client {
                Some(c) => match c.events().recv_timeout(Duration::from_millis(100)) {
                    Ok(ev) => Some(ev),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => {
                        std::thread::sleep(Duration::from_millis(100));
                        None
                    }
                },
                None => {
                    std::thread::sleep(Duration::from_millis(100));
                    None
                }
            };
            match ev {
                None => {}
                Some(Event::Connected { session_present }) => {
                    log::info!("MQTT connected (session present: {session_present})");
                    let online = self.out.topics.online.clone();
                    if let Some(c) = &self.out.client {
                        c.publish(&online, b"online", QoS::AtLeastOnce, true);
                    }
                    self.publish_status("idle");
                }
                Some(Event::Disconnected { error, retry_in }) => {
                    log::warn!("MQTT disconnected: {error}; retry in {retry_in:?}");
                }
                Some(Event::Message { topic, payload }) => self.command(&topic, &payload),
                Some(Event::Oversized { topic, len }) => self.out.event(json!({
                    "id": null,
                    "event": "error",
                    "message": format!(
                        "command of {len} bytes on {} exceeds the {}-byte packet limit; dropped",
                        topic.as_deref().unwrap_or("?"),
                        super::codec::MAX_PACKET_SIZE
                    ),
                })),
            }
            if let (Some(t), Some(interval)) = (next_tick, self.opts.timer_interval) {
                let now = self.clock.now_unix();
                if now >= t {
                    if let Err(e) = self.tick(now) {
                        log::warn!("timer: {e:#}");
                    }
                    next_tick = Some(now + interval.as_secs().max(1) as i64);
                }
            }
        }
        if let Some(c) = self.out.client.take() {
            c.publish(&self.out.topics.online, b"offline", QoS::AtLeastOnce, true);
            c.shutdown(FLUSH_GRACE);
        }
    }

    /// Tells FleetLock that this node runs steadily (frees its reboot slot); retried each tick.
    fn report_steady_state(&mut self) {
        if self.steady_reported {
            return;
        }
        if let Some(f) = &self.fleetlock {
            match f.steady_state() {
                Ok(()) => self.steady_reported = true,
                Err(e) => log::warn!("{e:#}"),
            }
        }
    }

    fn publish_status(&mut self, state: &str) {
        let otter = match self.actions.status() {
            Ok(v) => v,
            Err(e) => json!({"error": format!("{e:#}")}),
        };
        let v = json!({
            "device": self.device,
            "group": self.group,
            "state": state,
            "time": self.clock.now_unix(),
            "policy": self.opts.policy.mode.to_string(),
            "last": self.last,
            "otter": otter,
        });
        self.out
            .publish(&self.out.topics.status, &v, QoS::AtLeastOnce, true);
    }

    fn command(&mut self, topic: &str, payload: &[u8]) {
        let (id, op) = match parse_command(payload) {
            Ok(x) => x,
            Err(b) => {
                log::warn!("bad command on {topic}: {}", b.message);
                self.out
                    .event(json!({"id": b.id, "event": "error", "message": b.message}));
                return;
            }
        };
        if self.recent.contains(&id) {
            self.out
                .event(json!({"id": id, "event": "ignored", "op": op.name(),
                "message": "a command with this id was already handled"}));
            return;
        }
        self.recent.push_back(id.clone());
        if self.recent.len() > RECENT_IDS {
            self.recent.pop_front();
        }
        self.execute(id, op);
    }

    fn execute(&mut self, id: Value, op: Op) {
        let name = op.name();
        self.out
            .event(json!({"id": id, "event": "started", "op": name}));
        self.publish_status("busy");
        let mut progress = ProgressTo {
            out: &self.out,
            id: id.clone(),
            op: name,
        };
        let (result, reboot) = match &op {
            Op::Check => (
                self.actions
                    .check(&mut progress)
                    .and_then(|c| serde_json::to_value(c).context("encoding check result")),
                false,
            ),
            Op::Upgrade { digest, reboot } => (
                self.actions.upgrade(digest.as_deref(), &mut progress),
                *reboot,
            ),
            Op::Switch { image, reboot } => (self.actions.switch(image, &mut progress), *reboot),
            Op::Rollback { reboot } => (self.actions.rollback(), *reboot),
            Op::Reboot => (Ok(Value::Null), true),
            Op::Status => (self.actions.status(), false),
        };
        match result {
            Ok(v) => {
                self.last = json!({"id": id, "op": name, "result": "ok"});
                if !matches!(op, Op::Reboot) {
                    self.out
                        .event(json!({"id": id, "event": "finished", "op": name, "result": v}));
                }
                if reboot {
                    self.reboot(&id, name);
                }
            }
            Err(e) => {
                self.last =
                    json!({"id": id, "op": name, "result": "failed", "message": format!("{e:#}")});
                self.out
                    .event(json!({"id": id, "event": "failed", "op": name,
                    "message": format!("{e:#}")}));
            }
        }
        self.publish_status("idle");
    }

    /// Reboots after FleetLock said yes; reports why not otherwise.
    fn reboot(&mut self, id: &Value, op: &str) -> bool {
        if let Some(f) = &self.fleetlock {
            if let Err(e) = f.pre_reboot() {
                self.out
                    .event(json!({"id": id, "event": "reboot-deferred", "op": op,
                    "message": format!("{e:#}")}));
                return false;
            }
        }
        self.out
            .event(json!({"id": id, "event": "rebooting", "op": op}));
        self.publish_status("rebooting");
        if let Some(c) = &self.out.client {
            c.wait_sent(FLUSH_GRACE);
        }
        if let Err(e) = self.actions.reboot() {
            self.out.event(json!({"id": id, "event": "failed", "op": op,
                "message": format!("reboot: {e:#}")}));
            return false;
        }
        // After a real reboot we are gone; in tests (or if systemd refuses) we go on.
        self.steady_reported = false;
        self.staged = None;
        true
    }

    /// One timer round, as the policy says. Failures are reported as events and returned.
    fn tick(&mut self, now: i64) -> Result<()> {
        self.report_steady_state();
        let id = Value::String(format!("timer-{now}"));
        let mut progress = ProgressTo {
            out: &self.out,
            id: id.clone(),
            op: "check",
        };
        let check = match self.actions.check(&mut progress) {
            Ok(c) => c,
            Err(e) => {
                self.out
                    .event(json!({"id": id, "event": "failed", "op": "check",
                    "message": format!("{e:#}")}));
                return Err(e.context("checking for an update"));
            }
        };
        if let Some(s) = &check.staged {
            self.staged = Some(s.clone());
        }
        let first_seen = match &check.available {
            Some(d) if self.opts.policy.mode != Mode::Check => {
                let path = self.opts.state_dir.join("rollout.json");
                match Rollout::load(&path).and_then(|mut r| r.see(&path, d, now)) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        log::warn!("rollout state: {e:#}");
                        Some(now)
                    }
                }
            }
            _ => None,
        };
        let decision = decide(
            &self.opts.policy,
            now,
            check.available.as_deref(),
            self.staged.is_some(),
            first_seen,
        );
        log::info!("timer: {check:?} → {decision:?}");
        match decision {
            Decision::Idle => {}
            Decision::Report { waiting_secs } => {
                self.out
                    .event(json!({"id": id, "event": "update-available", "op": "check",
                    "result": check, "rollout_wait_secs": waiting_secs}));
            }
            Decision::Stage { digest, reboot } => {
                self.out
                    .event(json!({"id": id, "event": "started", "op": "upgrade",
                    "digest": digest}));
                let mut progress = ProgressTo {
                    out: &self.out,
                    id: id.clone(),
                    op: "upgrade",
                };
                match self.actions.upgrade(digest.as_deref(), &mut progress) {
                    Ok(v) => {
                        self.staged = digest.clone().or(Some(String::new()));
                        self.last = json!({"id": id, "op": "upgrade", "result": "ok"});
                        self.out
                            .event(json!({"id": id, "event": "staged", "op": "upgrade",
                            "digest": digest, "reboot": reboot, "result": v}));
                        if reboot {
                            self.reboot(&id, "upgrade");
                        }
                    }
                    Err(e) => {
                        self.last = json!({"id": id, "op": "upgrade", "result": "failed",
                            "message": format!("{e:#}")});
                        self.out
                            .event(json!({"id": id, "event": "failed", "op": "upgrade",
                            "message": format!("{e:#}")}));
                        self.publish_status("idle");
                        return Err(e.context("staging the update"));
                    }
                }
                self.publish_status("idle");
            }
            Decision::Reboot => {
                self.reboot(&id, "upgrade");
                self.publish_status("idle");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        let d = format!("sha256:{}", "0".repeat(64));
        let ok = [
            (r#"{"id":"a","op":"check"}"#.to_string(), Op::Check),
            (r#"{"id":7,"op":"status"}"#.to_string(), Op::Status),
            (
                format!(r#"{{"id":"b","op":"upgrade","digest":"{d}","reboot":true}}"#),
                Op::Upgrade {
                    digest: Some(d.clone()),
                    reboot: true,
                },
            ),
            (
                r#"{"id":"c","op":"switch","image":"oci:/x"}"#.to_string(),
                Op::Switch {
                    image: "oci:/x".into(),
                    reboot: false,
                },
            ),
            (
                r#"{"id":"d","op":"rollback"}"#.to_string(),
                Op::Rollback { reboot: false },
            ),
        ];
        for (s, op) in ok {
            assert_eq!(parse_command(s.as_bytes()).unwrap().1, op, "{s}");
        }
        let bad = [
            (r#"{"id":"a","op":"check""#, Value::Null),
            ("garbage", Value::Null),
            ("[1]", Value::Null),
            (r#"{"op":"check"}"#, Value::Null),
            (r#"{"id":"","op":"check"}"#, Value::Null),
            (r#"{"id":1.5,"op":"check"}"#, Value::Null),
            (r#"{"id":"a","op":"format-disk"}"#, json!("a")),
            (r#"{"id":"a"}"#, json!("a")),
            (r#"{"id":"a","op":"check","digest":"x"}"#, json!("a")),
            (
                r#"{"id":"a","op":"upgrade","digest":"sha256:12"}"#,
                json!("a"),
            ),
            (r#"{"id":"a","op":"upgrade","reboot":"yes"}"#, json!("a")),
            (r#"{"id":"a","op":"switch"}"#, json!("a")),
        ];
        for (s, id) in bad {
            let e = parse_command(s.as_bytes()).unwrap_err();
            assert_eq!(e.id, id, "{s}: {}", e.message);
        }
        let big = vec![b' '; MAX_COMMAND_BYTES + 1];
        assert!(parse_command(&big).unwrap_err().message.contains("limit"));
    }
}
