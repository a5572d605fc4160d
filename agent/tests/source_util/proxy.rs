//! Tiny HTTP/1.1 servers on 127.0.0.1 for tests: a generic one-request-per-connection server and a
//! fault-injecting proxy in front of a real registry.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Read a request or response head; None on EOF or garbage (e.g. a TLS ClientHello).
pub fn read_head(r: &mut impl BufRead) -> Option<(String, Vec<(String, String)>)> {
    let mut first = String::new();
    r.read_line(&mut first).ok()?;
    if !first.ends_with("\r\n") || !first.is_ascii() {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        let line = line.trim_end_matches("\r\n");
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
        if headers.len() > 100 {
            return None;
        }
    }
    Some((first.trim_end().to_string(), headers))
}

pub type Handler = dyn Fn(Request, &mut TcpStream) + Send + Sync;

/// Serves each connection on a thread; one request per connection. Stopped on drop.
pub struct Server {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(handler: Arc<Handler>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let h = handler.clone();
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let Some((first, headers)) = read_head(&mut reader) else {
                        return;
                    };
                    let mut parts = first.split(' ');
                    let method = parts.next().unwrap_or("").to_string();
                    let path = parts.next().unwrap_or("").to_string();
                    h(
                        Request {
                            method,
                            path,
                            headers,
                        },
                        &mut conn,
                    );
                    let _ = conn.flush();
                    let _ = conn.shutdown(Shutdown::Both);
                });
            }
        });
        Server {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn respond(conn: &mut TcpStream, status: u16, headers: &[(&str, String)], body: &[u8]) {
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += "\r\n";
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body);
}

/// Faults injected on blob GETs whose path contains `target` (a digest).
#[derive(Default)]
pub struct Faults {
    pub target: String,
    /// Close each response after this many body bytes.
    pub cut_every: Option<u64>,
    /// Close the first response after this many body bytes.
    pub cut_once: Option<u64>,
    /// The first response stalls after this many bytes for this long, then closes.
    pub stall: Option<(u64, Duration)>,
    /// The next requests get these statuses (no upstream contact).
    pub statuses: Mutex<VecDeque<u16>>,
    /// Drop the Range header of requests after the first one.
    pub ignore_range: bool,
    /// Flip the byte at this blob offset, once.
    pub corrupt_at: Option<u64>,
    /// Pace body bytes at this rate (bytes/s), so socket buffers stay small.
    pub pace: Option<u64>,
}

pub struct Proxy {
    pub port: u16,
    /// Body bytes sent to the client for the target blob.
    pub served: Arc<AtomicU64>,
    /// Requests for the target blob.
    pub requests: Arc<AtomicU64>,
    _server: Server,
}

impl Proxy {
    pub fn start(upstream: u16, faults: Faults) -> Proxy {
        let served = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let faults = Arc::new(faults);
        let stalled = Arc::new(AtomicBool::new(false));
        let corrupted = Arc::new(AtomicBool::new(false));
        let (s2, r2) = (served.clone(), requests.clone());
        let handler = move |req: Request, conn: &mut TcpStream| {
            let targeted = !faults.target.is_empty()
                && req.path.contains("/blobs/")
                && req.path.contains(&faults.target);
            let nth = if targeted {
                r2.fetch_add(1, Ordering::SeqCst)
            } else {
                0
            };
            if targeted {
                if let Some(s) = faults.statuses.lock().unwrap().pop_front() {
                    respond(conn, s, &[("Retry-After", "0".into())], b"");
                    return;
                }
            }
            let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                return;
            };
            let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.path);
            for (k, v) in &req.headers {
                if k.eq_ignore_ascii_case("connection")
                    || (targeted
                        && faults.ignore_range
                        && nth > 0
                        && (k.eq_ignore_ascii_case("range") || k.eq_ignore_ascii_case("if-range")))
                {
                    continue;
                }
                head += &format!("{k}: {v}\r\n");
            }
            head += "Connection: close\r\n\r\n";
            up.write_all(head.as_bytes()).unwrap();
            let mut upr = BufReader::new(up);
            let Some((status, headers)) = read_head(&mut upr) else {
                return;
            };
            let mut out = format!("{status}\r\n");
            let mut len: Option<u64> = None;
            let mut first: u64 = 0;
            for (k, v) in &headers {
                if k.eq_ignore_ascii_case("connection") {
                    continue;
                }
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.parse().ok();
                }
                if k.eq_ignore_ascii_case("content-range") {
                    first = v
                        .strip_prefix("bytes ")
                        .and_then(|r| r.split('-').next())
                        .and_then(|f| f.parse().ok())
                        .unwrap_or(0);
                }
                out += &format!("{k}: {v}\r\n");
            }
            out += "Connection: close\r\n\r\n";
            if conn.write_all(out.as_bytes()).is_err() {
                return;
            }
            if req.method == "HEAD" {
                return;
            }
            let mut left = len.unwrap_or(u64::MAX);
            let mut sent: u64 = 0;
            let mut buf = vec![0u8; 16 * 1024];
            let start = Instant::now();
            while left > 0 {
                let want = (left.min(buf.len() as u64)) as usize;
                let mut want = want;
                if targeted {
                    if let Some(cut) = faults.cut_every {
                        want = want.min((cut - sent) as usize);
                    }
                    if let Some(cut) = faults.cut_once.filter(|_| nth == 0) {
                        want = want.min((cut - sent) as usize);
                    }
                    if let Some((at, _)) = faults.stall {
                        if !stalled.load(Ordering::SeqCst) && sent < at {
                            want = want.min((at - sent) as usize);
                        }
                    }
                }
                let n = match upr.read(&mut buf[..want]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if targeted {
                    if let Some(at) = faults.corrupt_at {
                        let off = first + sent;
                        if at >= off
                            && at < off + n as u64
                            && !corrupted.swap(true, Ordering::SeqCst)
                        {
                            buf[(at - off) as usize] ^= 0xff;
                        }
                    }
                }
                if conn.write_all(&buf[..n]).is_err() {
                    break;
                }
                sent += n as u64;
                left -= n as u64;
                if targeted {
                    s2.fetch_add(n as u64, Ordering::SeqCst);
                    if let Some(rate) = faults.pace {
                        let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                        if let Some(wait) = due.checked_sub(start.elapsed()) {
                            std::thread::sleep(wait);
                        }
                    }
                    if faults.cut_every.is_some_and(|c| sent >= c)
                        || (nth == 0 && faults.cut_once.is_some_and(|c| sent >= c))
                    {
                        break;
                    }
                    if let Some((at, d)) = faults.stall {
                        if sent >= at && !stalled.swap(true, Ordering::SeqCst) {
                            std::thread::sleep(d);
                            break;
                        }
                    }
                }
            }
        };
        let server = Server::start(Arc::new(handler));
        Proxy {
            port: server.port,
            served,
            requests,
            _server: server,
        }
    }

    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }
}
