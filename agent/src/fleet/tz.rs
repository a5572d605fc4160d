//! Time zones for maintenance windows: UTC, fixed offsets, and `localtime` from a TZif file
//! (RFC 8536, versions 1–4).
//!
//! For a TZif file the UTC offset at a time is the one of the last transition before it; after
//! the last transition (slim files end early; fat ones run to 2037) the POSIX TZ string of the
//! footer is used (`CET-1CEST,M3.5.0,M10.5.0/3`: `Mm.w.d[/time]` rules; the rarely used
//! `Jn`/`n` day forms fall back to standard time). Leap seconds are ignored.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};

/// Largest TZif file we read (real ones are a few KB).
const TZIF_MAX: u64 = 256 * 1024;

/// A time zone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TimeZone {
    Utc,
    /// Seconds east of UTC.
    Fixed(i32),
    Tzif(Arc<Tzif>),
}

impl FromStr for TimeZone {
    type Err = anyhow::Error;
    /// `UTC`, `Z`, `+HH:MM`, `-HHMM`, `+HH`. (`localtime` needs a file: see [`TimeZone::load`].)
    fn from_str(s: &str) -> Result<TimeZone> {
        if s.eq_ignore_ascii_case("utc") || s == "Z" {
            return Ok(TimeZone::Utc);
        }
        let (sign, rest) = match s.as_bytes().first() {
            Some(b'+') => (1, &s[1..]),
            Some(b'-') => (-1, &s[1..]),
            _ => bail!("time zone {s:?} must be UTC, localtime or an offset like +02:00"),
        };
        let digits: String = rest.chars().filter(|c| *c != ':').collect();
        let ok = matches!(digits.len(), 2 | 4) && digits.bytes().all(|b| b.is_ascii_digit());
        if !ok || (rest.contains(':') && rest.len() != 5) {
            bail!("time zone offset {s:?} must look like +02:00, -0530 or +01");
        }
        let h: i32 = digits[..2].parse().context("offset hours")?;
        let m: i32 = if digits.len() == 4 {
            digits[2..].parse().context("offset minutes")?
        } else {
            0
        };
        if h > 14 || m > 59 {
            bail!("time zone offset {s:?} is out of range");
        }
        Ok(TimeZone::Fixed(sign * (h * 3600 + m * 60)))
    }
}

impl TimeZone {
    /// Parses a config value; `localtime` reads `<sysroot>/etc/localtime`.
    pub fn load(s: &str, sysroot: &Path) -> Result<TimeZone> {
        if s == "localtime" {
            let path = sysroot.join("etc/localtime");
            let bytes = read_bounded(&path)?;
            let tz =
                Tzif::parse(&bytes).with_context(|| format!("parsing TZif {}", path.display()))?;
            return Ok(TimeZone::Tzif(Arc::new(tz)));
        }
        s.parse()
    }

    /// Offset east of UTC, in seconds, at `unix` seconds.
    pub fn offset_at(&self, unix: i64) -> i32 {
        match self {
            TimeZone::Utc => 0,
            TimeZone::Fixed(o) => *o,
            TimeZone::Tzif(t) => t.offset_at(unix),
        }
    }
}

fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut v = Vec::new();
    std::fs::File::open(path)
        .with_context(|| format!("opening {}", path.display()))?
        .take(TZIF_MAX + 1)
        .read_to_end(&mut v)
        .with_context(|| format!("reading {}", path.display()))?;
    if v.len() as u64 > TZIF_MAX {
        bail!(
            "{} is larger than {TZIF_MAX} bytes: not a TZif file",
            path.display()
        );
    }
    Ok(v)
}

/// A parsed TZif file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tzif {
    /// (transition time, offset from then on), ascending.
    transitions: Vec<(i64, i32)>,
    /// Offset before the first transition.
    initial: i32,
    footer: Option<PosixTz>,
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            bail!("truncated TZif data");
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

struct Counts {
    isut: usize,
    isstd: usize,
    leap: usize,
    time: usize,
    typ: usize,
    chars: usize,
}

fn header(c: &mut Cursor) -> Result<(u8, Counts)> {
    if c.take(4)? != b"TZif" {
        bail!("not a TZif file (no TZif magic)");
    }
    let version = c.take(1)?[0];
    c.take(15)?;
    let mut n = [0usize; 6];
    for x in &mut n {
        *x = c.u32()? as usize;
        if *x > 65_536 {
            bail!("TZif count {x} is implausibly large");
        }
    }
    Ok((
        version,
        Counts {
            isut: n[0],
            isstd: n[1],
            leap: n[2],
            time: n[3],
            typ: n[4],
            chars: n[5],
        },
    ))
}

impl Tzif {
    pub fn parse(data: &[u8]) -> Result<Tzif> {
        let mut c = Cursor(data);
        let (version, n) = header(&mut c)?;
        let (n, tsize) = if version >= b'2' {
            // Skip the v1 block; use the 64-bit one.
            c.take(n.time * 5 + n.typ * 6 + n.chars + n.leap * 8 + n.isstd + n.isut)?;
            let (_, n2) = header(&mut c)?;
            (n2, 8)
        } else {
            (n, 4)
        };
        if n.typ == 0 {
            bail!("TZif file has no local time types");
        }
        let times = c.take(n.time * tsize)?;
        let idx = c.take(n.time)?;
        let types = c.take(n.typ * 6)?;
        c.take(n.chars + n.leap * (tsize + 4) + n.isstd + n.isut)?;
        let offset_of = |i: usize| -> Result<i32> {
            let t = types
                .get(i * 6..i * 6 + 4)
                .ok_or_else(|| anyhow!("TZif transition names type {i} of {}", n.typ))?;
            Ok(i32::from_be_bytes([t[0], t[1], t[2], t[3]]))
        };
        let mut transitions = Vec::with_capacity(n.time);
        for i in 0..n.time {
            let t = &times[i * tsize..(i + 1) * tsize];
            let at = if tsize == 8 {
                i64::from_be_bytes([t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]])
            } else {
                i64::from(i32::from_be_bytes([t[0], t[1], t[2], t[3]]))
            };
            transitions.push((at, offset_of(idx[i] as usize)?));
        }
        if transitions.windows(2).any(|w| w[0].0 >= w[1].0) {
            bail!("TZif transition times are not ascending");
        }
        let footer = if version >= b'2' {
            let rest = std::str::from_utf8(c.0).unwrap_or("");
            let tz = rest
                .trim_start_matches('\n')
                .split('\n')
                .next()
                .unwrap_or("");
            if tz.is_empty() {
                None
            } else {
                Some(PosixTz::parse(tz).with_context(|| format!("TZif footer {tz:?}"))?)
            }
        } else {
            None
        };
        Ok(Tzif {
            transitions,
            initial: offset_of(0)?,
            footer,
        })
    }

    pub fn offset_at(&self, unix: i64) -> i32 {
        let i = self.transitions.partition_point(|(t, _)| *t <= unix);
        if i == self.transitions.len() {
            if let Some(f) = &self.footer {
                return f.offset_at(unix);
            }
        }
        match i {
            0 => self.initial,
            i => self.transitions[i - 1].1,
        }
    }
}

/// A POSIX TZ string (`STDoff[DST[off][,start[/time],end[/time]]]`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct PosixTz {
    std_offset: i32,
    dst: Option<(i32, Rule, Rule)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Rule {
    /// Month 1-12, week 1-5 (5 = last), weekday 0 = Sunday; seconds after local midnight.
    MonthWeekDay { m: u32, w: u32, d: u32, time: i64 },
    /// `Jn` / `n` forms: not supported, DST is then ignored.
    Unsupported,
}

fn skip_name(s: &str) -> Result<&str> {
    if let Some(r) = s.strip_prefix('<') {
        let end = r
            .find('>')
            .ok_or_else(|| anyhow!("unclosed '<' in TZ name"))?;
        return Ok(&r[end + 1..]);
    }
    let n = s
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(s.len());
    if n < 3 {
        bail!("TZ name must have at least 3 letters");
    }
    Ok(&s[n..])
}

/// `[+-]hh[:mm[:ss]]` as seconds; returns the rest.
fn parse_hms(s: &str) -> Result<(i64, &str)> {
    let (sign, s) = match s.as_bytes().first() {
        Some(b'-') => (-1, &s[1..]),
        Some(b'+') => (1, &s[1..]),
        _ => (1, s),
    };
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == ':'))
        .unwrap_or(s.len());
    let mut secs = 0i64;
    let mut parts = 0;
    for (i, p) in s[..end].split(':').enumerate() {
        let v: i64 = p
            .parse()
            .map_err(|_| anyhow!("bad time {:?} in TZ string", &s[..end]))?;
        if i > 2 || v > 167 {
            bail!("bad time {:?} in TZ string", &s[..end]);
        }
        secs += v * [3600, 60, 1][i];
        parts += 1;
    }
    if parts == 0 {
        bail!("missing offset in TZ string");
    }
    Ok((sign * secs, &s[end..]))
}

fn parse_rule(s: &str) -> Result<Rule> {
    let (date, time) = match s.split_once('/') {
        Some((d, t)) => (d, parse_hms(t)?.0),
        None => (s, 7200),
    };
    let Some(mwd) = date.strip_prefix('M') else {
        return Ok(Rule::Unsupported);
    };
    let v: Vec<u32> = mwd
        .split('.')
        .map(|p| p.parse().map_err(|_| anyhow!("bad rule {s:?}")))
        .collect::<Result<_>>()?;
    match v.as_slice() {
        [m @ 1..=12, w @ 1..=5, d @ 0..=6] => Ok(Rule::MonthWeekDay {
            m: *m,
            w: *w,
            d: *d,
            time,
        }),
        _ => bail!("bad rule {s:?}"),
    }
}

impl PosixTz {
    fn parse(s: &str) -> Result<PosixTz> {
        let rest = skip_name(s)?;
        let (std_off, rest) = parse_hms(rest)?;
        let std_offset = -(std_off as i32);
        if rest.is_empty() {
            return Ok(PosixTz {
                std_offset,
                dst: None,
            });
        }
        let rest = skip_name(rest)?;
        let (dst_offset, rest) = if rest.starts_with(',') || rest.is_empty() {
            (std_offset + 3600, rest)
        } else {
            let (o, r) = parse_hms(rest)?;
            (-(o as i32), r)
        };
        let rules = rest.strip_prefix(',').unwrap_or(rest);
        let (a, b) = rules
            .split_once(',')
            .ok_or_else(|| anyhow!("DST without start and end rules"))?;
        Ok(PosixTz {
            std_offset,
            dst: Some((dst_offset, parse_rule(a)?, parse_rule(b)?)),
        })
    }

    fn offset_at(&self, unix: i64) -> i32 {
        let Some((dst_offset, start, end)) = &self.dst else {
            return self.std_offset;
        };
        let year = civil_from_days((unix + i64::from(self.std_offset)).div_euclid(86_400)).0;
        let (Some(s), Some(e)) = (rule_local(start, year), rule_local(end, year)) else {
            return self.std_offset;
        };
        let s_utc = s - i64::from(self.std_offset);
        let e_utc = e - i64::from(*dst_offset);
        let in_dst = if s_utc < e_utc {
            unix >= s_utc && unix < e_utc
        } else {
            !(unix >= e_utc && unix < s_utc)
        };
        if in_dst {
            *dst_offset
        } else {
            self.std_offset
        }
    }
}

/// Local seconds (since the epoch, as if local time were UTC) when the rule fires in `year`.
fn rule_local(rule: &Rule, year: i64) -> Option<i64> {
    let Rule::MonthWeekDay { m, w, d, time } = rule else {
        return None;
    };
    let first = days_from_civil(year, *m, 1);
    let wd_first = (first + 4).rem_euclid(7); // 0 = Sunday
    let mut day = 1 + (i64::from(*d) - wd_first).rem_euclid(7) + 7 * (i64::from(*w) - 1);
    let (ny, nm) = if *m == 12 {
        (year + 1, 1)
    } else {
        (year, m + 1)
    };
    let len = days_from_civil(ny, nm, 1) - first;
    while day > len {
        day -= 7;
    }
    Some((first + day - 1) * 86_400 + time)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month, day) of days since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets() {
        assert_eq!("UTC".parse::<TimeZone>().unwrap(), TimeZone::Utc);
        assert_eq!("+02:00".parse::<TimeZone>().unwrap(), TimeZone::Fixed(7200));
        assert_eq!(
            "-0530".parse::<TimeZone>().unwrap(),
            TimeZone::Fixed(-19800)
        );
        assert_eq!("+01".parse::<TimeZone>().unwrap(), TimeZone::Fixed(3600));
        for bad in [
            "", "CET", "+2", "+02:0", "+25:00", "+02:60", "02:00", "+0a:00",
        ] {
            assert!(bad.parse::<TimeZone>().is_err(), "{bad}");
        }
    }

    #[test]
    fn civil_roundtrip() {
        for z in [-800_000, -1, 0, 1, 19_000, 20_779, 2_000_000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        assert_eq!(civil_from_days(20_780), (2026, 11, 23));
    }

    #[test]
    fn posix_rules_europe() {
        let tz = PosixTz::parse("CET-1CEST,M3.5.0,M10.5.0/3").unwrap();
        // 2040-03-25 01:00 UTC is when CEST starts (last Sunday of March 2040 = 25th).
        let start = days_from_civil(2040, 3, 25) * 86_400 + 3600;
        assert_eq!(tz.offset_at(start - 1), 3600);
        assert_eq!(tz.offset_at(start), 7200);
        // 2040-10-28 01:00 UTC it ends.
        let end = days_from_civil(2040, 10, 28) * 86_400 + 3600;
        assert_eq!(tz.offset_at(end - 1), 7200);
        assert_eq!(tz.offset_at(end), 3600);
        // Southern hemisphere.
        let tz = PosixTz::parse("<-03>3").unwrap();
        assert_eq!(tz.offset_at(0), -10800);
        let tz = PosixTz::parse("AEST-10AEDT,M10.1.0,M4.1.0/3").unwrap();
        assert_eq!(
            tz.offset_at(days_from_civil(2040, 1, 10) * 86_400),
            11 * 3600
        );
        assert_eq!(
            tz.offset_at(days_from_civil(2040, 7, 10) * 86_400),
            10 * 3600
        );
        for bad in ["", "C-1", "CET", "CET-1CEST", "CET-1CEST,M13.1.0,M1.1.0"] {
            assert!(PosixTz::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hostile_tzif_never_panics() {
        assert!(Tzif::parse(b"").is_err());
        assert!(Tzif::parse(b"TZif2").is_err());
        let mut v = b"TZif2".to_vec();
        v.extend_from_slice(&[0; 15]);
        v.extend_from_slice(&[0xFF; 24]);
        assert!(Tzif::parse(&v).is_err());
    }
}
