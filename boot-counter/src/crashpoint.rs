//! Crash points for the crash-injection tests (see `agent/src/fsutil.rs` and
//! `agent/tests/crash.rs`). Without the cargo feature `crash-points` they do nothing and compile
//! away. With it, read once per process from the environment:
//! `OTTER_CRASH_AT=N` kills the process with SIGKILL at the N-th point, `N:eio` / `N:enospc`
//! makes it fail with that error instead, `OTTER_CRASH_LOG=FILE` appends `N what` per point.
//! Never enabled in a device build.

use std::io;

/// A point where the process may be killed or fail (test builds only).
#[inline(always)]
pub fn crash_point(what: &'static str) -> io::Result<()> {
    #[cfg(feature = "crash-points")]
    {
        inject::hit(what)
    }
    #[cfg(not(feature = "crash-points"))]
    {
        let _ = what;
        Ok(())
    }
}

/// Crash points passed so far (0 without the feature).
pub fn passed() -> u64 {
    #[cfg(feature = "crash-points")]
    {
        inject::passed()
    }
    #[cfg(not(feature = "crash-points"))]
    {
        0
    }
}

#[cfg(feature = "crash-points")]
mod inject {
    use std::fs::{File, OpenOptions};
    use std::io::{self, Write};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Mutex, OnceLock};

    #[derive(Clone, Copy)]
    enum Action {
        Kill,
        Fail(i32),
    }

    struct Config {
        at: Option<(u64, Action)>,
        log: Option<Mutex<File>>,
    }

    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static CONFIG: OnceLock<Config> = OnceLock::new();

    fn config() -> &'static Config {
        CONFIG.get_or_init(|| {
            let at = std::env::var("OTTER_CRASH_AT").ok().and_then(|v| {
                let (n, action) = match v.split_once(':') {
                    Some((n, "eio")) => (n.to_string(), Action::Fail(libc::EIO)),
                    Some((n, "enospc")) => (n.to_string(), Action::Fail(libc::ENOSPC)),
                    Some((n, _)) => (n.to_string(), Action::Kill),
                    None => (v.clone(), Action::Kill),
                };
                n.parse::<u64>().ok().map(|n| (n, action))
            });
            let log = std::env::var_os("OTTER_CRASH_LOG").and_then(|p| {
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .ok()
                    .map(Mutex::new)
            });
            Config { at, log }
        })
    }

    pub(super) fn passed() -> u64 {
        COUNTER.load(Ordering::SeqCst)
    }

    pub(super) fn hit(what: &'static str) -> io::Result<()> {
        let cfg = config();
        if cfg.at.is_none() && cfg.log.is_none() {
            COUNTER.fetch_add(1, Ordering::SeqCst);
            return Ok(());
        }
        let n = COUNTER.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(log) = &cfg.log {
            if let Ok(mut f) = log.lock() {
                let _ = writeln!(f, "{n} {what}");
            }
        }
        match cfg.at {
            Some((at, Action::Kill)) if at == n => {
                // SAFETY: plain syscalls on our own pid.
                unsafe {
                    libc::kill(libc::getpid(), libc::SIGKILL);
                }
                loop {
                    std::thread::park();
                }
            }
            Some((at, Action::Fail(errno))) if at == n => Err(io::Error::from_raw_os_error(errno)),
            _ => Ok(()),
        }
    }
}
