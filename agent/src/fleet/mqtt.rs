//! A blocking MQTT 3.1.1 client session on its own thread.
//!
//! One thread owns the connection: it reads with a short tick ([`READ_TICK`]), sends queued
//! publishes, keepalive PINGREQs, and acknowledges incoming QoS 1 messages. It reconnects with
//! exponential backoff; the session is persistent (`clean_session=false`), subscriptions are
//! renewed after every CONNACK (a restarted broker may have lost them) and unacknowledged QoS 1
//! publishes are sent again with DUP set. Everything is bounded: packets over
//! [`codec::MAX_PACKET_SIZE`] are skipped, the outgoing queue and the in-flight window have fixed
//! sizes, and the incoming queue is bounded too (overflow is answered, not buffered).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::codec::{self, Connect, Frame, Packet, Publish, QoS, Will};
use super::transport::{self, BrokerUrl, Stream, TlsFiles};

/// Outgoing messages queued while the broker is away; beyond this, new ones are dropped.
pub const OUTGOING_QUEUE: usize = 512;
/// Unacknowledged QoS 1 publishes in flight at once.
pub const MAX_INFLIGHT: usize = 32;
/// Incoming messages waiting for the daemon.
pub const INCOMING_QUEUE: usize = 32;
/// Retained topics whose last message the session keeps to publish again after a reconnect.
pub const RETAINED_KEEP: usize = 8;

/// Session settings.
#[derive(Clone)]
pub struct SessionOptions {
    pub url: BrokerUrl,
    pub tls: TlsFiles,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Keepalive in seconds (0 disables it).
    pub keep_alive: u16,
    pub will: Option<Will>,
    /// Topics subscribed at QoS 1 after every connect.
    pub subscriptions: Vec<String>,
    pub connect_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl std::fmt::Debug for SessionOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionOptions")
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("keep_alive", &self.keep_alive)
            .field("subscriptions", &self.subscriptions)
            .finish_non_exhaustive()
    }
}

/// What the session reports to its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// CONNACK accepted and subscriptions acknowledged.
    Connected { session_present: bool },
    /// The connection ended or could not be made; the session retries after `retry_in`.
    Disconnected { error: String, retry_in: Duration },
    /// A message on a subscribed topic.
    Message { topic: String, payload: Vec<u8> },
    /// A message over the packet size limit, skipped (and acknowledged).
    Oversized { topic: Option<String>, len: usize },
}

/// Builds a reply for a message that could not be queued (queue full): topic and payload.
pub type OverflowReply = Box<dyn Fn(&str, &[u8]) -> Option<(String, Vec<u8>)> + Send>;

struct Outgoing {
    topic: String,
    payload: Vec<u8>,
    qos: QoS,
    retain: bool,
}

enum Cmd {
    Publish(Outgoing),
    /// Send what is queued, wait up to this long for acknowledgements, then DISCONNECT.
    Shutdown(Duration),
}

/// Handle to the session thread.
pub struct Client {
    tx: SyncSender<Cmd>,
    /// Messages queued or in flight (not yet written for QoS 0, not yet acknowledged for QoS 1).
    pending: Arc<AtomicUsize>,
    events: Receiver<Event>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Client {
    /// Starts the session thread. It runs until [`Client::shutdown`] or until `stop` is set.
    pub fn start(
        opts: SessionOptions,
        stop: Arc<AtomicBool>,
        overflow: Option<OverflowReply>,
    ) -> Result<Client> {
        let tls = if opts.url.tls {
            Some(transport::client_config(&opts.tls)?)
        } else {
            None
        };
        let (tx, rx) = mpsc::sync_channel(OUTGOING_QUEUE);
        let (ev_tx, events) = mpsc::sync_channel(INCOMING_QUEUE);
        let session_stop = stop.clone();
        let pending = Arc::new(AtomicUsize::new(0));
        let session_pending = pending.clone();
        let thread = std::thread::Builder::new()
            .name("otter-mqtt".into())
            .spawn(move || {
                let mut s = Session {
                    opts,
                    tls,
                    rx,
                    events: ev_tx,
                    stop: session_stop,
                    overflow,
                    inflight: BTreeMap::new(),
                    next_id: 1,
                    pending: session_pending,
                    retained: BTreeMap::new(),
                };
                s.run();
            })
            .context("starting the MQTT thread")?;
        Ok(Client {
            tx,
            pending,
            events,
            stop,
            thread: Some(thread),
        })
    }

    /// Queues a publish. Never blocks: when the queue is full (broker away for long) the
    /// message is dropped with a warning.
    pub fn publish(&self, topic: &str, payload: &[u8], qos: QoS, retain: bool) {
        let msg = Outgoing {
            topic: topic.to_string(),
            payload: payload.to_vec(),
            qos,
            retain,
        };
        self.pending.fetch_add(1, Ordering::SeqCst);
        let r = self.tx.try_send(Cmd::Publish(msg));
        if r.is_err() {
            self.pending.fetch_sub(1, Ordering::SeqCst);
        }
        match r {
            Ok(()) => {}
            Err(TrySendError::Full(Cmd::Publish(m))) => {
                log::warn!("MQTT outgoing queue full, dropping message to {}", m.topic)
            }
            Err(TrySendError::Full(Cmd::Shutdown(_))) => {}
            Err(TrySendError::Disconnected(_)) => log::warn!("MQTT session has ended"),
        }
    }

    /// Waits until everything published so far was sent (QoS 0) or acknowledged (QoS 1), at
    /// most `timeout`; returns whether it was.
    pub fn wait_sent(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        while self.pending.load(Ordering::SeqCst) > 0 {
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Incoming events.
    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }

    /// Sends what is queued (waiting up to `grace` for acknowledgements), disconnects cleanly
    /// (no last will) and joins the thread.
    pub fn shutdown(mut self, grace: Duration) {
        let _ = self.tx.try_send(Cmd::Shutdown(grace));
        let until = Instant::now() + grace + Duration::from_millis(500);
        while Instant::now() < until && self.thread.as_ref().is_some_and(|t| !t.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.store(true, Ordering::SeqCst);
            let _ = t.join();
        }
    }
}

struct Session {
    opts: SessionOptions,
    tls: Option<Arc<rustls::ClientConfig>>,
    rx: Receiver<Cmd>,
    events: SyncSender<Event>,
    stop: Arc<AtomicBool>,
    overflow: Option<OverflowReply>,
    /// Unacknowledged QoS 1 publishes by packet id.
    inflight: BTreeMap<u16, Publish>,
    next_id: u16,
    pending: Arc<AtomicUsize>,
    /// Last retained message per topic: published again after every reconnect, so a broker
    /// that lost its state (restart without persistence) gets the status back even while the
    /// daemon is busy with a long update.
    retained: BTreeMap<String, Vec<u8>>,
}

enum End {
    /// Stop requested (flag or shutdown marker).
    Stop,
}

impl Session {
    fn run(&mut self) {
        let mut backoff = self.opts.backoff_min;
        while !self.stopped() {
            match self.connection() {
                Ok(End::Stop) => return,
                Err((e, was_connected)) => {
                    if was_connected {
                        backoff = self.opts.backoff_min;
                    }
                    log::warn!("MQTT: {e:#}; retrying in {backoff:?}");
                    let _ = self.events.try_send(Event::Disconnected {
                        error: format!("{e:#}"),
                        retry_in: backoff,
                    });
                    let until = Instant::now() + backoff;
                    while Instant::now() < until {
                        if self.stopped() {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    backoff = (backoff * 2).min(self.opts.backoff_max);
                }
            }
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&id) {
                return id;
            }
        }
    }

    /// One connection, from connect to its end. The bool says whether CONNACK was accepted.
    fn connection(&mut self) -> Result<End, (anyhow::Error, bool)> {
        let mut stream =
            Stream::connect(&self.opts.url, self.tls.as_ref(), self.opts.connect_timeout)
                .map_err(|e| (e, false))?;
        let r = self.handshake(&mut stream);
        let session_present = match r {
            Ok(sp) => sp,
            Err(e) => {
                stream.shutdown();
                return Err((e, false));
            }
        };
        let _ = self.events.try_send(Event::Connected { session_present });
        let r = self.serve(&mut stream);
        stream.shutdown();
        r.map_err(|e| (e, true))
    }

    fn connect_packet(&self) -> Result<Vec<u8>> {
        let c = Connect {
            client_id: self.opts.client_id.clone(),
            keep_alive: self.opts.keep_alive,
            clean_session: false,
            will: self.opts.will.clone(),
            username: self.opts.username.clone(),
            password: self.opts.password.as_ref().map(|p| p.as_bytes().to_vec()),
        };
        codec::encode_connect(&c).context("encoding CONNECT")
    }

    /// CONNECT/CONNACK, SUBSCRIBE/SUBACK, resend in-flight publishes.
    fn handshake(&mut self, stream: &mut Stream) -> Result<bool> {
        let url = self.opts.url.clone();
        stream
            .write_all(&self.connect_packet()?)
            .with_context(|| format!("sending CONNECT to {}:{}", url.host, url.port))?;
        let mut framer = codec::Framer::new();
        let deadline = Instant::now() + self.opts.connect_timeout;
        let session_present = match self.wait_packet(stream, &mut framer, deadline)? {
            Packet::ConnAck {
                session_present,
                return_code: 0,
            } => session_present,
            Packet::ConnAck { return_code, .. } => bail!(
                "MQTT broker {}:{} refused the connection: {} (code {return_code})",
                url.host,
                url.port,
                codec::connack_reason(return_code)
            ),
            other => bail!("expected CONNACK, got {other:?}"),
        };
        if !self.opts.subscriptions.is_empty() {
            let id = self.packet_id();
            let topics: Vec<_> = self
                .opts
                .subscriptions
                .iter()
                .map(|t| (t.clone(), QoS::AtLeastOnce))
                .collect();
            stream
                .write_all(&codec::encode_subscribe(id, &topics).context("encoding SUBSCRIBE")?)
                .context("sending SUBSCRIBE")?;
            match self.wait_packet(stream, &mut framer, deadline)? {
                Packet::SubAck {
                    packet_id,
                    return_codes,
                } if packet_id == id => {
                    if let Some(i) = return_codes.iter().position(|c| *c == 0x80) {
                        bail!(
                            "MQTT broker refused the subscription to {:?} (check the ACL)",
                            self.opts
                                .subscriptions
                                .get(i)
                                .map(String::as_str)
                                .unwrap_or("?")
                        );
                    }
                }
                other => bail!("expected SUBACK {id}, got {other:?}"),
            }
        }
        let resend: Vec<Publish> = self.inflight.values().cloned().collect();
        for mut p in resend {
            p.dup = true;
            stream
                .write_all(&codec::encode_publish(&p).context("encoding PUBLISH")?)
                .context("re-sending unacknowledged PUBLISH")?;
        }
        let inflight_topics: Vec<String> =
            self.inflight.values().map(|p| p.topic.clone()).collect();
        let again: Vec<(String, Vec<u8>)> = self
            .retained
            .iter()
            .filter(|(t, _)| !inflight_topics.contains(t))
            .map(|(t, p)| (t.clone(), p.clone()))
            .collect();
        for (topic, payload) in again {
            let p = Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: true,
                topic,
                packet_id: None,
                payload,
            };
            stream
                .write_all(&codec::encode_publish(&p).context("encoding PUBLISH")?)
                .context("re-publishing retained state")?;
        }
        Ok(session_present)
    }

    /// Waits for one packet during the handshake (publishes of a persistent session may come
    /// first: those are delivered).
    fn wait_packet(
        &mut self,
        stream: &mut Stream,
        framer: &mut codec::Framer,
        deadline: Instant,
    ) -> Result<Packet> {
        let mut buf = [0u8; 4096];
        let mut frames = Vec::new();
        loop {
            if Instant::now() > deadline {
                bail!(
                    "MQTT broker did not answer within {:?}",
                    self.opts.connect_timeout
                );
            }
            if self.stopped() {
                bail!("stopping");
            }
            let n = match stream
                .read_some(&mut buf)
                .context("reading from MQTT broker")?
            {
                Some(n) => n,
                None => continue,
            };
            framer
                .feed(&buf[..n], &mut frames)
                .context("MQTT stream from broker")?;
            let mut found = None;
            for f in frames.drain(..) {
                match self.handle_frame(stream, f)? {
                    Some(p) if found.is_none() => found = Some(p),
                    Some(p) => bail!("unexpected {p:?} during connect"),
                    None => {}
                }
            }
            if let Some(p) = found {
                return Ok(p);
            }
        }
    }

    /// Handles publishes, acks and pings; returns other packets to the caller.
    fn handle_frame(&mut self, stream: &mut Stream, frame: Frame) -> Result<Option<Packet>> {
        match frame {
            Frame::Oversized {
                first,
                len,
                publish,
            } => {
                let topic = match publish {
                    Some((topic, id, _)) => {
                        if let Some(id) = id {
                            stream
                                .write_all(&codec::encode_puback(id))
                                .context("sending PUBACK")?;
                        }
                        Some(topic)
                    }
                    None if first >> 4 == 3 => None,
                    None => bail!("broker sent an oversized packet of type {}", first >> 4),
                };
                log::warn!(
                    "MQTT: skipped a {len}-byte message on {topic:?} (limit {})",
                    codec::MAX_PACKET_SIZE
                );
                self.deliver(stream, Event::Oversized { topic, len })?;
                Ok(None)
            }
            Frame::Packet { first, body } => match codec::decode(first, &body)? {
                Packet::Publish(p) => {
                    match p.qos {
                        QoS::AtMostOnce => {}
                        QoS::AtLeastOnce => {}
                        QoS::ExactlyOnce => {
                            bail!("broker sent a QoS 2 message although we subscribed at QoS 1")
                        }
                    }
                    let id = p.packet_id;
                    self.deliver(
                        stream,
                        Event::Message {
                            topic: p.topic,
                            payload: p.payload,
                        },
                    )?;
                    if let Some(id) = id {
                        stream
                            .write_all(&codec::encode_puback(id))
                            .context("sending PUBACK")?;
                    }
                    Ok(None)
                }
                Packet::PubAck { packet_id } => {
                    if self.inflight.remove(&packet_id).is_some() {
                        self.pending.fetch_sub(1, Ordering::SeqCst);
                    }
                    Ok(None)
                }
                other => Ok(Some(other)),
            },
        }
    }

    /// Queues an event for the owner; when that queue is full the overflow reply is sent.
    fn deliver(&mut self, stream: &mut Stream, ev: Event) -> Result<()> {
        match self.events.try_send(ev) {
            Ok(()) => Ok(()),
            Err(TrySendError::Disconnected(_)) => Ok(()),
            Err(TrySendError::Full(ev)) => {
                let Event::Message { topic, payload } = ev else {
                    return Ok(());
                };
                log::warn!("MQTT: incoming queue full, refusing message on {topic}");
                if let Some((t, body)) = self.overflow.as_ref().and_then(|f| f(&topic, &payload)) {
                    let p = Publish {
                        dup: false,
                        qos: QoS::AtMostOnce,
                        retain: false,
                        topic: t,
                        packet_id: None,
                        payload: body,
                    };
                    stream
                        .write_all(&codec::encode_publish(&p)?)
                        .context("sending overflow reply")?;
                }
                Ok(())
            }
        }
    }

    /// The connected loop: read, send, keep alive.
    fn serve(&mut self, stream: &mut Stream) -> Result<End> {
        let mut framer = codec::Framer::new();
        let mut buf = [0u8; 4096];
        let mut frames = Vec::new();
        let keep_alive = Duration::from_secs(u64::from(self.opts.keep_alive));
        let mut last_write = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        let mut flush_until: Option<Instant> = None;
        loop {
            if self.stopped() && flush_until.is_none() {
                flush_until = Some(Instant::now());
            }
            if let Some(n) = stream
                .read_some(&mut buf)
                .context("reading from MQTT broker")?
            {
                framer
                    .feed(&buf[..n], &mut frames)
                    .context("MQTT stream from broker")?;
                for f in std::mem::take(&mut frames) {
                    match self.handle_frame(stream, f)? {
                        None => {}
                        Some(Packet::PingResp) => ping_sent = None,
                        Some(Packet::SubAck { .. }) => {}
                        Some(other) => bail!("unexpected packet from broker: {other:?}"),
                    }
                }
            }
            // Queued publishes, within the in-flight window.
            let mut queue_empty = false;
            while self.inflight.len() < MAX_INFLIGHT {
                let m = match self.rx.try_recv() {
                    Ok(Cmd::Publish(m)) => m,
                    Ok(Cmd::Shutdown(grace)) => {
                        flush_until = Some(Instant::now() + grace);
                        continue;
                    }
                    Err(TryRecvError::Empty) => {
                        queue_empty = true;
                        break;
                    }
                    Err(TryRecvError::Disconnected) => {
                        queue_empty = true;
                        flush_until.get_or_insert_with(Instant::now);
                        break;
                    }
                };
                if m.retain
                    && (self.retained.contains_key(&m.topic) || self.retained.len() < RETAINED_KEEP)
                {
                    self.retained.insert(m.topic.clone(), m.payload.clone());
                }
                let packet_id = match m.qos {
                    QoS::AtMostOnce => None,
                    _ => Some(self.packet_id()),
                };
                let p = Publish {
                    dup: false,
                    qos: if packet_id.is_some() {
                        QoS::AtLeastOnce
                    } else {
                        QoS::AtMostOnce
                    },
                    retain: m.retain,
                    topic: m.topic,
                    packet_id,
                    payload: m.payload,
                };
                stream
                    .write_all(&codec::encode_publish(&p).context("encoding PUBLISH")?)
                    .context("sending PUBLISH")?;
                last_write = Instant::now();
                match packet_id {
                    Some(id) => {
                        self.inflight.insert(id, p);
                    }
                    None => {
                        self.pending.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            }
            if let Some(until) = flush_until {
                if (self.inflight.is_empty() && queue_empty) || Instant::now() >= until {
                    let _ = stream.write_all(&codec::encode_disconnect());
                    return Ok(End::Stop);
                }
            }
            if !keep_alive.is_zero() {
                if let Some(t) = ping_sent {
                    if t.elapsed() > keep_alive {
                        return Err(anyhow!(
                            "no PINGRESP within {keep_alive:?}: connection lost"
                        ));
                    }
                } else if last_write.elapsed() >= keep_alive / 2 {
                    stream
                        .write_all(&codec::encode_pingreq())
                        .context("sending PINGREQ")?;
                    last_write = Instant::now();
                    ping_sent = Some(last_write);
                }
            }
        }
    }
}
