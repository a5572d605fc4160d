//! A bandwidth cap shared by all download threads.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keeps the average rate at or below `bytes_per_sec` (over a window that restarts after idling).
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_sec: u64,
    state: Mutex<(Instant, u64)>,
}

impl RateLimiter {
    pub fn new(bytes_per_sec: u64) -> RateLimiter {
        RateLimiter {
            bytes_per_sec: bytes_per_sec.max(1),
            state: Mutex::new((Instant::now(), 0)),
        }
    }

    /// Account for `n` bytes; sleeps as long as needed to stay under the cap.
    pub fn consume(&self, n: u64) {
        let due = {
            let Ok(mut st) = self.state.lock() else {
                return;
            };
            let now = Instant::now();
            let due = st.0 + Duration::from_secs_f64(st.1 as f64 / self.bytes_per_sec as f64);
            if now > due + Duration::from_secs(1) {
                // idle for a while: do not let old slack allow a burst
                *st = (now, n);
                return;
            }
            st.1 += n;
            st.0 + Duration::from_secs_f64(st.1 as f64 / self.bytes_per_sec as f64)
        };
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
    }
}
