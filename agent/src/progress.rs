//! progress: events from the update flow and the sinks that show them (JSON lines for machines,
//! a live bar for terminals, plain log lines for journals).
//!
//! JSON lines format (one object per line, `"v"` is the format version):
//! `{"v":1,"event":"bytes","digest":"sha256:…","done":1048576,"total":20971520}`; the other events
//! are `resolve`, `layer_start`, `layer_done`, `import`, `deploy`, `done` and `error` with the
//! fields of the matching [`Event`] variant.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Version of the JSON lines format.
pub const JSON_VERSION: u32 = 1;
/// Terminal redraw interval (at most 10 per second).
const BAR_INTERVAL: Duration = Duration::from_millis(100);
/// Interval between byte progress lines of the plain log sink.
const LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Something that happened during an update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The image reference was resolved to a manifest digest.
    Resolve { reference: String, digest: String },
    /// A blob download started (or resumed).
    LayerStart { digest: String, size: u64 },
    /// Bytes of a blob are on disk (rate-limited by the sender to ~10 per second per blob).
    Bytes {
        digest: String,
        done: u64,
        total: u64,
    },
    /// A blob is complete and verified.
    LayerDone { digest: String },
    /// Layer `index` (0-based) of `count` is being imported.
    Import {
        digest: String,
        index: usize,
        count: usize,
    },
    /// How the update will be fetched: `path` "delta", "chunked" (zstd:chunked layers: only
    /// the files the repository lacks) or "layers", `bytes` to download (at most: blobs already
    /// downloaded are not subtracted).
    Plan { path: String, bytes: u64 },
    /// A deploy step (e.g. "checkout", "bootloader", "staged").
    Deploy { step: String },
    /// The operation finished.
    Done { message: String },
    /// The operation failed.
    Error { message: String },
}

/// A sink for events; called from download threads, so it must be thread safe.
pub trait Progress: Send + Sync {
    fn event(&self, e: &Event);
}

/// Ignores everything.
#[derive(Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn event(&self, _e: &Event) {}
}

/// One JSON object per line to a writer (stdout, a file, an inherited fd).
pub struct JsonLines<W: Write + Send> {
    out: Mutex<W>,
}

impl<W: Write + Send> JsonLines<W> {
    pub fn new(out: W) -> JsonLines<W> {
        JsonLines {
            out: Mutex::new(out),
        }
    }
}

/// The JSON line for an event (without the newline).
pub fn to_json_line(e: &Event) -> String {
    #[derive(Serialize)]
    struct Line<'a> {
        v: u32,
        #[serde(flatten)]
        event: &'a Event,
    }
    serde_json::to_string(&Line {
        v: JSON_VERSION,
        event: e,
    })
    .unwrap_or_else(|err| {
        format!("{{\"v\":{JSON_VERSION},\"event\":\"error\",\"message\":\"{err}\"}}")
    })
}

impl<W: Write + Send> Progress for JsonLines<W> {
    fn event(&self, e: &Event) {
        let line = to_json_line(e);
        if let Ok(mut w) = self.out.lock() {
            // progress must never fail the update; a closed pipe just loses lines
            let _ = writeln!(w, "{line}").and_then(|_| w.flush());
        }
    }
}

/// Plain log lines (for a journal or a file): one line per event, byte events every few seconds.
pub struct LogLines<W: Write + Send> {
    state: Mutex<(W, BTreeMap<String, Instant>)>,
}

impl<W: Write + Send> LogLines<W> {
    pub fn new(out: W) -> LogLines<W> {
        LogLines {
            state: Mutex::new((out, BTreeMap::new())),
        }
    }
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl<W: Write + Send> Progress for LogLines<W> {
    fn event(&self, e: &Event) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let (out, last) = &mut *st;
        let line = match e {
            Event::Resolve { reference, digest } => format!("resolved {reference} to {digest}"),
            Event::LayerStart { digest, size } => {
                last.insert(digest.clone(), Instant::now());
                format!("fetching {} ({})", short(digest), human(*size))
            }
            Event::Bytes {
                digest,
                done,
                total,
            } => {
                let due = last.get(digest).is_none_or(|t| t.elapsed() >= LOG_INTERVAL);
                if !due || done == total {
                    return;
                }
                last.insert(digest.clone(), Instant::now());
                format!(
                    "fetching {}: {} of {}",
                    short(digest),
                    human(*done),
                    human(*total)
                )
            }
            Event::LayerDone { digest } => {
                last.remove(digest);
                format!("fetched {}", short(digest))
            }
            Event::Import {
                digest,
                index,
                count,
            } => {
                format!("importing layer {}/{count} ({})", index + 1, short(digest))
            }
            Event::Plan { path, bytes } => format!("fetching by {path}: {}", human(*bytes)),
            Event::Deploy { step } => format!("deploy: {step}"),
            Event::Done { message } => message.clone(),
            Event::Error { message } => format!("error: {message}"),
        };
        let _ = writeln!(out, "{line}");
    }
}

/// A live one-line bar on a terminal: total bytes of all blobs, rate, ETA; redrawn at most 10
/// times per second. Other events are printed as lines above it.
pub struct TerminalBar<W: Write + Send> {
    state: Mutex<BarState<W>>,
}

struct BarState<W> {
    out: W,
    blobs: BTreeMap<String, (u64, u64)>,
    started: Option<Instant>,
    /// Bytes that were already there when we started (resumed), not counted in the rate.
    resumed: u64,
    last_draw: Option<Instant>,
    drawn: bool,
}

impl<W: Write + Send> TerminalBar<W> {
    pub fn new(out: W) -> TerminalBar<W> {
        TerminalBar {
            state: Mutex::new(BarState {
                out,
                blobs: BTreeMap::new(),
                started: None,
                resumed: 0,
                last_draw: None,
                drawn: false,
            }),
        }
    }
}

impl<W: Write> BarState<W> {
    fn line(&mut self, text: &str) {
        if self.drawn {
            let _ = write!(self.out, "\r\x1b[2K");
            self.drawn = false;
        }
        let _ = writeln!(self.out, "{text}");
        self.draw(true);
    }

    fn draw(&mut self, force: bool) {
        if self.blobs.is_empty() {
            let _ = self.out.flush();
            return;
        }
        if !force && self.last_draw.is_some_and(|t| t.elapsed() < BAR_INTERVAL) {
            return;
        }
        self.last_draw = Some(Instant::now());
        let done: u64 = self.blobs.values().map(|b| b.0).sum();
        let total: u64 = self.blobs.values().map(|b| b.1).sum();
        let secs = self
            .started
            .map(|s| s.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        let rate = if secs > 0.5 {
            done.saturating_sub(self.resumed) as f64 / secs
        } else {
            0.0
        };
        let eta = if rate > 0.0 {
            let s = (total.saturating_sub(done) as f64 / rate) as u64;
            format!("{}:{:02}", s / 60, s % 60)
        } else {
            "--:--".to_string()
        };
        let width = 30usize;
        let filled = if total > 0 {
            ((done as f64 / total as f64) * width as f64) as usize
        } else {
            0
        }
        .min(width);
        let _ = write!(
            self.out,
            "\r\x1b[2K[{}{}] {} / {}  {}/s  ETA {eta}",
            "#".repeat(filled),
            " ".repeat(width - filled),
            human(done),
            human(total),
            human(rate as u64),
        );
        let _ = self.out.flush();
        self.drawn = true;
    }
}

impl<W: Write + Send> Progress for TerminalBar<W> {
    fn event(&self, e: &Event) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        match e {
            Event::LayerStart { digest, size } => {
                st.started.get_or_insert_with(Instant::now);
                st.blobs.entry(digest.clone()).or_insert((0, *size));
                st.draw(true);
            }
            Event::Bytes {
                digest,
                done,
                total,
            } => {
                let first = st.blobs.get(digest).is_none_or(|b| b.0 == 0);
                if first {
                    // the first report of a resumed blob: those bytes were not transferred now
                    st.resumed += *done;
                }
                st.blobs.insert(digest.clone(), (*done, *total));
                st.draw(false);
            }
            Event::LayerDone { digest } => {
                if let Some(b) = st.blobs.get_mut(digest) {
                    b.0 = b.1;
                }
                st.draw(true);
            }
            Event::Resolve { reference, digest } => {
                st.line(&format!("resolved {reference} to {digest}"))
            }
            Event::Import {
                digest,
                index,
                count,
            } => st.line(&format!(
                "importing layer {}/{count} ({})",
                index + 1,
                short(digest)
            )),
            Event::Plan { path, bytes } => {
                st.line(&format!("fetching by {path}: {}", human(*bytes)))
            }
            Event::Deploy { step } => st.line(&format!("deploy: {step}")),
            Event::Done { message } => {
                st.draw(true);
                st.blobs.clear();
                if st.drawn {
                    let _ = writeln!(st.out);
                    st.drawn = false;
                }
                let _ = writeln!(st.out, "{message}");
            }
            Event::Error { message } => st.line(&format!("error: {message}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Buf(std::sync::Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Buf {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn json_lines() {
        let buf = Buf::default();
        let p = JsonLines::new(buf.clone());
        p.event(&Event::Bytes {
            digest: "sha256:ab".into(),
            done: 5,
            total: 10,
        });
        p.event(&Event::Resolve {
            reference: "oci:/x".into(),
            digest: "sha256:cd".into(),
        });
        let text = buf.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            r#"{"v":1,"event":"bytes","digest":"sha256:ab","done":5,"total":10}"#
        );
        let v: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(v["event"], "resolve");
        assert_eq!(v["reference"], "oci:/x");
    }

    #[test]
    fn bar_and_log() {
        let buf = Buf::default();
        let p = TerminalBar::new(buf.clone());
        p.event(&Event::LayerStart {
            digest: "sha256:aa".into(),
            size: 2048,
        });
        for i in 0..100 {
            p.event(&Event::Bytes {
                digest: "sha256:aa".into(),
                done: i * 20,
                total: 2048,
            });
        }
        p.event(&Event::LayerDone {
            digest: "sha256:aa".into(),
        });
        p.event(&Event::Done {
            message: "ok".into(),
        });
        let t = buf.text();
        // 100 byte events in well under a second: throttled to a few redraws
        assert!(t.matches('\r').count() < 20, "{t:?}");
        assert!(t.contains("2.0 KiB / 2.0 KiB"), "{t:?}");
        assert!(t.ends_with("ok\n"));

        let buf = Buf::default();
        let p = LogLines::new(buf.clone());
        p.event(&Event::LayerStart {
            digest: "sha256:aa".into(),
            size: 2048,
        });
        p.event(&Event::Bytes {
            digest: "sha256:aa".into(),
            done: 10,
            total: 2048,
        });
        p.event(&Event::LayerDone {
            digest: "sha256:aa".into(),
        });
        assert_eq!(buf.text(), "fetching aa (2.0 KiB)\nfetched aa\n");
    }
}
