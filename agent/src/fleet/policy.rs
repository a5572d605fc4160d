//! Timer policy (`[policy]`): what a periodic check may do, and when a reboot is allowed.
//!
//! - mode `check`: only look and report;
//! - mode `stage`: download, verify and stage; never reboot (the operator or a command does);
//! - mode `apply`: stage, then reboot — but only inside a maintenance window when windows are
//!   configured (like zincati's "periodic" strategy): outside a window the update is staged and
//!   the reboot waits for the next window.
//!
//! Windows are written `DAYS HH:MM-HH:MM`, e.g. `Mon-Fri 02:00-04:00`, `Sat,Sun 22:00-02:00`
//! (an end before the start runs past midnight and belongs to the start day). They are read in
//! the policy's time zone: `UTC`, a fixed offset (`+02:00`, `-0530`) or `localtime`
//! (`/etc/localtime`, a TZif file, see [`super::tz`]).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use super::tz::TimeZone;

/// What the timer does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Check,
    Stage,
    Apply,
}

impl FromStr for Mode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Mode> {
        match s {
            "check" => Ok(Mode::Check),
            "stage" => Ok(Mode::Stage),
            "apply" => Ok(Mode::Apply),
            _ => bail!("policy mode {s:?} must be one of check, stage, apply"),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Check => "check",
            Mode::Stage => "stage",
            Mode::Apply => "apply",
        })
    }
}

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// One maintenance window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// Monday = 0.
    pub days: [bool; 7],
    /// Minutes after local midnight.
    pub start: u16,
    pub end: u16,
}

fn parse_day(s: &str) -> Result<usize> {
    DAYS.iter()
        .position(|d| d.eq_ignore_ascii_case(s))
        .ok_or_else(|| anyhow!("day {s:?} must be one of {}", DAYS.join(", ")))
}

fn parse_hhmm(s: &str) -> Result<u16> {
    let (h, m) = s
        .split_once(':')
        .ok_or_else(|| anyhow!("time {s:?} must be HH:MM"))?;
    let h: u16 = h
        .parse()
        .map_err(|_| anyhow!("hour in {s:?} is not a number"))?;
    let m: u16 = m
        .parse()
        .map_err(|_| anyhow!("minute in {s:?} is not a number"))?;
    if m > 59 || h > 24 || (h == 24 && m != 0) || h > 99 {
        bail!("time {s:?} is not between 00:00 and 24:00");
    }
    Ok(h * 60 + m)
}

impl FromStr for Window {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Window> {
        let inner = || -> Result<Window> {
            let (days_s, times) = s
                .trim()
                .split_once(' ')
                .ok_or_else(|| anyhow!("expected `DAYS HH:MM-HH:MM`"))?;
            let mut days = [false; 7];
            for part in days_s.split(',') {
                match part.split_once('-') {
                    Some((a, b)) => {
                        let (a, b) = (parse_day(a)?, parse_day(b)?);
                        let mut d = a;
                        loop {
                            days[d] = true;
                            if d == b {
                                break;
                            }
                            d = (d + 1) % 7;
                        }
                    }
                    None => days[parse_day(part)?] = true,
                }
            }
            let (a, b) = times
                .trim()
                .split_once('-')
                .ok_or_else(|| anyhow!("times must be HH:MM-HH:MM"))?;
            let (start, end) = (parse_hhmm(a)?, parse_hhmm(b)?);
            if start == end {
                bail!("window is empty (start = end)");
            }
            Ok(Window { days, start, end })
        };
        inner().with_context(|| format!("maintenance window {s:?}"))
    }
}

impl Window {
    /// Is local time (day of week Monday=0, minute of day) inside the window?
    pub fn contains(&self, weekday: usize, minute: u16) -> bool {
        let today = self.days.get(weekday).copied().unwrap_or(false);
        if self.start < self.end {
            return today && minute >= self.start && minute < self.end;
        }
        // Runs past midnight: the tail belongs to the previous day's window.
        let yesterday = self.days[(weekday + 6) % 7];
        (today && minute >= self.start) || (yesterday && minute < self.end)
    }
}

/// The `[policy]` settings.
#[derive(Clone, Debug)]
pub struct Policy {
    pub mode: Mode,
    /// Empty: reboots are allowed at any time.
    pub windows: Vec<Window>,
    pub timezone: TimeZone,
    /// Rollout wave: the timer takes a new digest only this long after it first saw it.
    pub rollout_delay: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            mode: Mode::Check,
            windows: Vec::new(),
            timezone: TimeZone::Utc,
            rollout_delay: Duration::ZERO,
        }
    }
}

impl Policy {
    /// May we reboot at `unix` seconds (UTC)?
    pub fn reboot_allowed(&self, unix: i64) -> bool {
        if self.windows.is_empty() {
            return true;
        }
        let local = unix + i64::from(self.timezone.offset_at(unix));
        let days = local.div_euclid(86_400);
        let minute = (local.rem_euclid(86_400) / 60) as u16;
        // 1970-01-01 was a Thursday (Monday = 0 → 3).
        let weekday = (days + 3).rem_euclid(7) as usize;
        self.windows.iter().any(|w| w.contains(weekday, minute))
    }
}

/// What a timer tick decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing new.
    Idle,
    /// Report only (mode check, or a rollout wave still waiting).
    Report { waiting_secs: u64 },
    /// Stage `digest`; reboot afterwards if `reboot`.
    Stage {
        digest: Option<String>,
        reboot: bool,
    },
    /// An update is already staged: reboot into it now.
    Reboot,
}

/// The timer's decision for one tick.
///
/// `available`: digest of a newer update (None: nothing new); `staged`: an update is staged and
/// waits for a reboot; `first_seen`: when `available` was first seen (unix seconds).
pub fn decide(
    policy: &Policy,
    now: i64,
    available: Option<&str>,
    staged: bool,
    first_seen: Option<i64>,
) -> Decision {
    let may_reboot = policy.mode == Mode::Apply && policy.reboot_allowed(now);
    if let Some(digest) = available {
        if policy.mode == Mode::Check {
            return Decision::Report { waiting_secs: 0 };
        }
        let seen = first_seen.unwrap_or(now);
        let ready_at = seen.saturating_add(policy.rollout_delay.as_secs() as i64);
        if now < ready_at {
            return Decision::Report {
                waiting_secs: (ready_at - now) as u64,
            };
        }
        return Decision::Stage {
            digest: Some(digest.to_string()),
            reboot: may_reboot,
        };
    }
    if staged && may_reboot {
        return Decision::Reboot;
    }
    Decision::Idle
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-23 is a Monday.
    const MON_0000_UTC: i64 = 1_795_392_000;

    #[test]
    fn monday_epoch_constant() {
        let p = Policy {
            windows: vec!["Mon 00:00-00:01".parse().unwrap()],
            ..Policy::default()
        };
        assert!(p.reboot_allowed(MON_0000_UTC));
        assert!(!p.reboot_allowed(MON_0000_UTC + 60));
        assert!(!p.reboot_allowed(MON_0000_UTC - 1));
    }

    #[test]
    fn windows_parse_and_match() {
        let w: Window = "Mon-Fri 02:00-04:00".parse().unwrap();
        assert_eq!(w.days, [true, true, true, true, true, false, false]);
        assert!(w.contains(0, 120) && w.contains(4, 239));
        assert!(!w.contains(5, 150) && !w.contains(0, 240) && !w.contains(0, 119));
        let w: Window = "Sat,Sun 22:00-02:00".parse().unwrap();
        assert!(w.contains(5, 23 * 60));
        assert!(w.contains(6, 60)); // Sunday 01:00 from Saturday's window
        assert!(w.contains(0, 60)); // Monday 01:00 from Sunday's window
        assert!(!w.contains(1, 60));
        let w: Window = "Fri-Mon 10:00-11:00".parse().unwrap();
        assert_eq!(w.days, [true, false, false, false, true, true, true]);
        for bad in [
            "",
            "Mon",
            "Mon 02:00",
            "Mo 01:00-02:00",
            "Mon 25:00-26:00",
            "Mon 01:60-02:00",
            "Mon 01:00-01:00",
            "Mon 1-2",
        ] {
            assert!(bad.parse::<Window>().is_err(), "{bad}");
        }
    }

    #[test]
    fn fixed_offset_moves_the_window() {
        let p = Policy {
            mode: Mode::Apply,
            windows: vec!["Mon 02:00-03:00".parse().unwrap()],
            timezone: "+02:00".parse().unwrap(),
            rollout_delay: Duration::ZERO,
        };
        // Monday 00:30 UTC = 02:30 at +02:00.
        assert!(p.reboot_allowed(MON_0000_UTC + 30 * 60));
        assert!(!p.reboot_allowed(MON_0000_UTC + 2 * 3600 + 30 * 60));
    }

    #[test]
    fn decisions() {
        let mut p = Policy {
            mode: Mode::Apply,
            windows: vec!["Mon 02:00-04:00".parse().unwrap()],
            ..Policy::default()
        };
        let inside = MON_0000_UTC + 3 * 3600;
        let outside = MON_0000_UTC + 5 * 3600;
        let d = Some("sha256:aa");
        assert_eq!(
            decide(&p, outside, d, false, None),
            Decision::Stage {
                digest: Some("sha256:aa".into()),
                reboot: false
            }
        );
        assert_eq!(
            decide(&p, inside, d, false, None),
            Decision::Stage {
                digest: Some("sha256:aa".into()),
                reboot: true
            }
        );
        assert_eq!(decide(&p, outside, None, true, None), Decision::Idle);
        assert_eq!(decide(&p, inside, None, true, None), Decision::Reboot);
        p.rollout_delay = Duration::from_secs(3600);
        assert_eq!(
            decide(&p, inside, d, false, Some(inside - 600)),
            Decision::Report { waiting_secs: 3000 }
        );
        p.mode = Mode::Stage;
        assert_eq!(
            decide(&p, inside, d, false, Some(inside - 7200)),
            Decision::Stage {
                digest: Some("sha256:aa".into()),
                reboot: false
            }
        );
        assert_eq!(decide(&p, inside, None, true, None), Decision::Idle);
        p.mode = Mode::Check;
        assert_eq!(
            decide(&p, inside, d, false, None),
            Decision::Report { waiting_secs: 0 }
        );
    }
}
