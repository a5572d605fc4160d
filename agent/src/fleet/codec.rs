//! A small MQTT 3.1.1 codec: the packets a device client sends and receives, nothing more.
//!
//! Encoding builds whole packets in a `Vec`. Decoding is split in two so that hostile bytes can
//! never make us allocate more than [`MAX_PACKET_SIZE`]:
//! - [`Framer`] takes bytes as they arrive from the socket (any chunking, timeouts between
//!   chunks are fine), cuts them into packets by the fixed header, and *skips* packets whose
//!   remaining length is over the limit, reporting them as [`Frame::Oversized`] (with topic and
//!   packet id if it was a PUBLISH, so it can still be acknowledged);
//! - [`decode`] parses one complete packet body with bounds-checked reads.
//!
//! Neither panics on any input (see the tests with truncated and random bytes).

use std::fmt;

/// Largest packet (remaining length) we accept; larger ones are skipped, never buffered.
pub const MAX_PACKET_SIZE: usize = 64 * 1024;
/// Bytes of an oversized PUBLISH kept to learn its topic and packet id.
const OVERSIZED_PREFIX: usize = 1024;
/// MQTT's own limit for the remaining length (4 length bytes).
const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Quality of service of a PUBLISH or subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    fn from_bits(bits: u8) -> Result<QoS, CodecError> {
        match bits {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            2 => Ok(QoS::ExactlyOnce),
            _ => Err(CodecError::Malformed("QoS 3 is not a valid QoS")),
        }
    }
}

/// What went wrong while decoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CodecError {
    /// The bytes do not form a valid MQTT 3.1.1 packet.
    Malformed(&'static str),
    /// A packet type a client never receives (CONNECT, SUBSCRIBE, …) or a reserved one.
    UnexpectedPacket(u8),
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::Malformed(what) => write!(f, "malformed MQTT packet: {what}"),
            CodecError::UnexpectedPacket(t) => {
                write!(f, "unexpected MQTT packet type {t} from the broker")
            }
        }
    }
}

impl std::error::Error for CodecError {}

/// The last will: published by the broker when the connection dies without DISCONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: QoS,
    pub retain: bool,
}

/// CONNECT parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    pub client_id: String,
    pub keep_alive: u16,
    pub clean_session: bool,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
}

/// A PUBLISH in either direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: String,
    /// Present iff qos > 0.
    pub packet_id: Option<u16>,
    pub payload: Vec<u8>,
}

/// Packets a client receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    ConnAck {
        session_present: bool,
        return_code: u8,
    },
    Publish(Publish),
    PubAck {
        packet_id: u16,
    },
    SubAck {
        packet_id: u16,
        return_codes: Vec<u8>,
    },
    PingResp,
}

/// Text for a CONNACK return code (MQTT 3.1.1 §3.2.2.3).
pub fn connack_reason(code: u8) -> &'static str {
    match code {
        0 => "accepted",
        1 => "unacceptable protocol version",
        2 => "client identifier rejected",
        3 => "server unavailable",
        4 => "bad user name or password",
        5 => "not authorized",
        _ => "unknown return code",
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding

fn put_remaining_length(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) -> Result<(), CodecError> {
    let len =
        u16::try_from(b.len()).map_err(|_| CodecError::Malformed("field over 65535 bytes"))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(b);
    Ok(())
}

fn finish(first: u8, body: Vec<u8>) -> Result<Vec<u8>, CodecError> {
    if body.len() > MAX_REMAINING_LENGTH {
        return Err(CodecError::Malformed("packet over the MQTT size limit"));
    }
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(first);
    put_remaining_length(&mut out, body.len());
    out.extend_from_slice(&body);
    Ok(out)
}

/// CONNECT packet bytes.
pub fn encode_connect(c: &Connect) -> Result<Vec<u8>, CodecError> {
    let mut body = Vec::new();
    put_bytes(&mut body, b"MQTT")?;
    body.push(4); // protocol level 3.1.1
    let mut flags = 0u8;
    if c.username.is_some() {
        flags |= 0x80;
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if let Some(w) = &c.will {
        flags |= 0x04 | ((w.qos as u8) << 3);
        if w.retain {
            flags |= 0x20;
        }
    }
    if c.clean_session {
        flags |= 0x02;
    }
    body.push(flags);
    body.extend_from_slice(&c.keep_alive.to_be_bytes());
    put_bytes(&mut body, c.client_id.as_bytes())?;
    if let Some(w) = &c.will {
        put_bytes(&mut body, w.topic.as_bytes())?;
        put_bytes(&mut body, &w.payload)?;
    }
    if let Some(u) = &c.username {
        put_bytes(&mut body, u.as_bytes())?;
    }
    if let Some(p) = &c.password {
        put_bytes(&mut body, p)?;
    }
    finish(0x10, body)
}

/// PUBLISH packet bytes.
pub fn encode_publish(p: &Publish) -> Result<Vec<u8>, CodecError> {
    let mut first = 0x30 | ((p.qos as u8) << 1);
    if p.dup {
        first |= 0x08;
    }
    if p.retain {
        first |= 0x01;
    }
    let mut body = Vec::with_capacity(p.topic.len() + p.payload.len() + 4);
    put_bytes(&mut body, p.topic.as_bytes())?;
    match (p.qos, p.packet_id) {
        (QoS::AtMostOnce, _) => {}
        (_, Some(id)) if id != 0 => body.extend_from_slice(&id.to_be_bytes()),
        _ => {
            return Err(CodecError::Malformed(
                "QoS>0 PUBLISH needs a non-zero packet id",
            ))
        }
    }
    body.extend_from_slice(&p.payload);
    finish(first, body)
}

/// PUBACK packet bytes.
pub fn encode_puback(packet_id: u16) -> Vec<u8> {
    let id = packet_id.to_be_bytes();
    vec![0x40, 0x02, id[0], id[1]]
}

/// SUBSCRIBE packet bytes.
pub fn encode_subscribe(packet_id: u16, topics: &[(String, QoS)]) -> Result<Vec<u8>, CodecError> {
    if topics.is_empty() {
        return Err(CodecError::Malformed("SUBSCRIBE needs at least one topic"));
    }
    let mut body = Vec::new();
    body.extend_from_slice(&packet_id.to_be_bytes());
    for (t, q) in topics {
        put_bytes(&mut body, t.as_bytes())?;
        body.push(*q as u8);
    }
    finish(0x82, body)
}

/// PINGREQ packet bytes.
pub fn encode_pingreq() -> Vec<u8> {
    vec![0xC0, 0x00]
}

/// DISCONNECT packet bytes.
pub fn encode_disconnect() -> Vec<u8> {
    vec![0xE0, 0x00]
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// Bounds-checked reader over one packet body.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CodecError> {
        if self.buf.len() < n {
            return Err(CodecError::Malformed(what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, CodecError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, CodecError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn string(&mut self, what: &'static str) -> Result<String, CodecError> {
        let len = self.u16(what)? as usize;
        let b = self.take(len, what)?;
        let s = std::str::from_utf8(b).map_err(|_| CodecError::Malformed("string is not UTF-8"))?;
        if s.contains('\0') {
            return Err(CodecError::Malformed("string contains U+0000"));
        }
        Ok(s.to_string())
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    fn end(&self, what: &'static str) -> Result<(), CodecError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(CodecError::Malformed(what))
        }
    }
}

/// Decodes the topic and packet id of a PUBLISH from its first bytes (the body may be cut off).
fn publish_head(first: u8, body: &[u8]) -> Result<(String, Option<u16>, QoS), CodecError> {
    let qos = QoS::from_bits((first >> 1) & 0x03)?;
    let mut r = Reader { buf: body };
    let topic = r.string("PUBLISH topic truncated")?;
    let packet_id = match qos {
        QoS::AtMostOnce => None,
        _ => match r.u16("PUBLISH packet id truncated")? {
            0 => return Err(CodecError::Malformed("PUBLISH packet id 0")),
            id => Some(id),
        },
    };
    Ok((topic, packet_id, qos))
}

/// Parses one complete packet: `first` is the fixed-header byte, `body` the remaining bytes.
pub fn decode(first: u8, body: &[u8]) -> Result<Packet, CodecError> {
    let kind = first >> 4;
    let flags = first & 0x0F;
    let mut r = Reader { buf: body };
    match kind {
        2 => {
            if flags != 0 {
                return Err(CodecError::Malformed("CONNACK flags must be 0"));
            }
            let ack = r.u8("CONNACK truncated")?;
            let return_code = r.u8("CONNACK truncated")?;
            r.end("CONNACK too long")?;
            if ack & 0xFE != 0 {
                return Err(CodecError::Malformed("CONNACK reserved bits set"));
            }
            Ok(Packet::ConnAck {
                session_present: ack & 1 == 1,
                return_code,
            })
        }
        3 => {
            let (topic, packet_id, qos) = publish_head(first, body)?;
            let head_len = 2 + topic.len() + if packet_id.is_some() { 2 } else { 0 };
            let payload = body.get(head_len..).unwrap_or_default().to_vec();
            Ok(Packet::Publish(Publish {
                dup: flags & 0x08 != 0,
                qos,
                retain: flags & 0x01 != 0,
                topic,
                packet_id,
                payload,
            }))
        }
        4 => {
            if flags != 0 {
                return Err(CodecError::Malformed("PUBACK flags must be 0"));
            }
            let packet_id = r.u16("PUBACK truncated")?;
            r.end("PUBACK too long")?;
            Ok(Packet::PubAck { packet_id })
        }
        9 => {
            if flags != 0 {
                return Err(CodecError::Malformed("SUBACK flags must be 0"));
            }
            let packet_id = r.u16("SUBACK truncated")?;
            let return_codes = r.rest().to_vec();
            if return_codes.is_empty() {
                return Err(CodecError::Malformed("SUBACK without return codes"));
            }
            if return_codes.iter().any(|c| !matches!(c, 0 | 1 | 2 | 0x80)) {
                return Err(CodecError::Malformed(
                    "SUBACK return code not 0, 1, 2 or 0x80",
                ));
            }
            Ok(Packet::SubAck {
                packet_id,
                return_codes,
            })
        }
        13 => {
            if flags != 0 || !body.is_empty() {
                return Err(CodecError::Malformed("PINGRESP must be empty"));
            }
            Ok(Packet::PingResp)
        }
        other => Err(CodecError::UnexpectedPacket(other)),
    }
}

/// A unit that the [`Framer`] cut from the byte stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete packet within the size limit: fixed-header byte and body.
    Packet { first: u8, body: Vec<u8> },
    /// A packet over [`MAX_PACKET_SIZE`] that was skipped. For a PUBLISH, topic/packet id/QoS
    /// are given when its head could be read, so the caller can still acknowledge it.
    Oversized {
        first: u8,
        len: usize,
        publish: Option<(String, Option<u16>, QoS)>,
    },
}

enum FrameState {
    /// Reading the fixed header: first byte and up to 4 length bytes.
    Header { bytes: Vec<u8> },
    /// Collecting a body of `len` bytes.
    Body {
        first: u8,
        len: usize,
        body: Vec<u8>,
    },
    /// Skipping an oversized body; keeps its first bytes.
    Skip {
        first: u8,
        len: usize,
        left: usize,
        prefix: Vec<u8>,
    },
}

/// Incremental packet framer; see the module doc.
pub struct Framer {
    state: FrameState,
}

impl Default for Framer {
    fn default() -> Self {
        Framer::new()
    }
}

impl Framer {
    pub fn new() -> Framer {
        Framer {
            state: FrameState::Header {
                bytes: Vec::with_capacity(5),
            },
        }
    }

    /// Feeds bytes; appends finished frames to `out`. An error means the stream is broken
    /// (bad length encoding) and the connection must be dropped.
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<Frame>) -> Result<(), CodecError> {
        while !data.is_empty() {
            match &mut self.state {
                FrameState::Header { bytes } => {
                    bytes.push(data[0]);
                    data = &data[1..];
                    if bytes.len() == 1 {
                        continue;
                    }
                    let last = bytes[bytes.len() - 1];
                    if last & 0x80 != 0 {
                        if bytes.len() == 5 {
                            return Err(CodecError::Malformed("remaining length over 4 bytes"));
                        }
                        continue;
                    }
                    let first = bytes[0];
                    let mut len = 0usize;
                    for (i, b) in bytes[1..].iter().enumerate() {
                        len += ((b & 0x7F) as usize) << (7 * i);
                    }
                    self.state = if len > MAX_PACKET_SIZE {
                        FrameState::Skip {
                            first,
                            len,
                            left: len,
                            prefix: Vec::new(),
                        }
                    } else {
                        FrameState::Body {
                            first,
                            len,
                            body: Vec::with_capacity(len.min(4096)),
                        }
                    };
                }
                FrameState::Body { len, body, .. } => {
                    let n = (*len - body.len()).min(data.len());
                    body.extend_from_slice(&data[..n]);
                    data = &data[n..];
                }
                FrameState::Skip { left, prefix, .. } => {
                    let n = (*left).min(data.len());
                    let keep = (OVERSIZED_PREFIX - prefix.len()).min(n);
                    prefix.extend_from_slice(&data[..keep]);
                    *left -= n;
                    data = &data[n..];
                }
            }
            self.complete(out);
        }
        self.complete(out);
        Ok(())
    }

    /// Emits the current packet if it is complete and resets to header state.
    fn complete(&mut self, out: &mut Vec<Frame>) {
        let done = match &self.state {
            FrameState::Header { .. } => false,
            FrameState::Body { len, body, .. } => body.len() == *len,
            FrameState::Skip { left, .. } => *left == 0,
        };
        if !done {
            return;
        }
        let state = std::mem::replace(
            &mut self.state,
            FrameState::Header {
                bytes: Vec::with_capacity(5),
            },
        );
        match state {
            FrameState::Body { first, body, .. } => out.push(Frame::Packet { first, body }),
            FrameState::Skip {
                first, len, prefix, ..
            } => {
                let publish = if first >> 4 == 3 {
                    publish_head(first, &prefix).ok()
                } else {
                    None
                };
                out.push(Frame::Oversized {
                    first,
                    len,
                    publish,
                })
            }
            FrameState::Header { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(bytes: &[u8], chunk: usize) -> Result<Vec<Frame>, CodecError> {
        let mut f = Framer::new();
        let mut out = Vec::new();
        for c in bytes.chunks(chunk.max(1)) {
            f.feed(c, &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn publish_roundtrip_any_chunking() {
        let p = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: "otter/dev/cmd".into(),
            packet_id: Some(7),
            payload: b"{\"id\":\"1\"}".to_vec(),
        };
        let bytes = encode_publish(&p).unwrap();
        for chunk in [1, 2, 3, 7, 1000] {
            let fr = frames(&bytes, chunk).unwrap();
            assert_eq!(fr.len(), 1);
            let Frame::Packet { first, body } = &fr[0] else {
                panic!("{fr:?}")
            };
            assert_eq!(decode(*first, body).unwrap(), Packet::Publish(p.clone()));
        }
    }

    #[test]
    fn connect_bytes_match_spec_example() {
        let c = Connect {
            client_id: "a".into(),
            keep_alive: 60,
            clean_session: false,
            will: Some(Will {
                topic: "w".into(),
                payload: b"x".to_vec(),
                qos: QoS::AtLeastOnce,
                retain: true,
            }),
            username: Some("u".into()),
            password: Some(b"p".to_vec()),
        };
        let b = encode_connect(&c).unwrap();
        assert_eq!(
            b,
            [
                0x10, 25, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xEC, 0, 60, 0, 1, b'a', 0, 1, b'w', 0,
                1, b'x', 0, 1, b'u', 0, 1, b'p'
            ]
        );
    }

    #[test]
    fn large_remaining_length_is_skipped_not_buffered() {
        let p = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "t".into(),
            packet_id: Some(9),
            payload: vec![b'x'; MAX_PACKET_SIZE + 1],
        };
        let bytes = encode_publish(&p).unwrap();
        let fr = frames(&bytes, 4096).unwrap();
        assert_eq!(
            fr,
            vec![Frame::Oversized {
                first: 0x32,
                len: MAX_PACKET_SIZE + 6,
                publish: Some(("t".into(), Some(9), QoS::AtLeastOnce)),
            }]
        );
        // The next packet after it still decodes.
        let mut more = bytes.clone();
        more.extend_from_slice(&[0xD0, 0x00]);
        let fr = frames(&more, 5000).unwrap();
        assert_eq!(fr.len(), 2);
    }

    #[test]
    fn bad_length_encoding_is_an_error() {
        assert!(frames(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], 1).is_err());
    }

    #[test]
    fn truncated_and_hostile_bodies_never_panic() {
        let cases: &[(u8, &[u8])] = &[
            (0x20, &[]),
            (0x20, &[0]),
            (0x20, &[2, 0]),
            (0x21, &[0, 0]),
            (0x30, &[]),
            (0x30, &[0, 5, b'a']),
            (0x32, &[0, 1, b'a']),
            (0x32, &[0, 1, b'a', 0, 0]),
            (0x36, &[0, 1, b'a', 0, 1]),
            (0x30, &[0, 2, 0xFF, 0xFE]),
            (0x40, &[0]),
            (0x40, &[0, 1, 2]),
            (0x90, &[0, 1]),
            (0x90, &[0, 1, 3]),
            (0xD0, &[1]),
            (0x10, &[]),
            (0xF0, &[]),
            (0x00, &[]),
        ];
        for (first, body) in cases {
            assert!(decode(*first, body).is_err(), "{first:#x} {body:?}");
        }
        // Pseudo-random streams through framer and decoder.
        let mut x: u32 = 0x1234_5678;
        for _ in 0..2000 {
            let mut bytes = Vec::new();
            for _ in 0..(x % 64) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                bytes.push(x as u8);
            }
            if let Ok(fr) = frames(&bytes, (x % 7) as usize + 1) {
                for f in fr {
                    if let Frame::Packet { first, body } = f {
                        let _ = decode(first, &body);
                    }
                }
            }
        }
    }
}
