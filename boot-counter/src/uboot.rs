//! U-Boot environment through an `fw_env.config`, and the `bootcount`/`bootlimit`/
//! `upgrade_available` counter convention (U-Boot CONFIG_BOOTCOUNT_ENV, Mender, meta-updater).
//!
//! Format (U-Boot include/env_internal.h): single copy = `u32 crc` + data; redundant copy =
//! `u32 crc` + `u8 flags` + data. The CRC-32 (zlib) covers the whole data area and is stored
//! little-endian. Data = NUL-terminated `name=value` strings, sorted by name, ended by an
//! extra NUL, zero-filled like U-Boot's `saveenv`.
//!
//! Crash safety: with two copies we always write the copy that is *not* the current one, with
//! flags = current + 1 (NOR flash: new = 1, then the old copy's flag byte is programmed to 0), so
//! an interrupted write leaves the current copy valid. A single copy in a regular file is
//! replaced by temp file + rename; a single copy on a raw device cannot be written crash-safely
//! (use a redundant environment there).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::{util, Backend, BootState, Error, IoContext, Result};

/// Largest environment size we accept from an fw_env.config (U-Boot envs are KiBs).
const MAX_ENV_SIZE: usize = 16 << 20;
/// The lock file libubootenv's fw_printenv/fw_setenv use.
pub const LOCK_FILE: &str = "/var/lock/fw_printenv.lock";

const MTD_NORFLASH: u8 = 3;
// _IOR('M', 1, struct mtd_info_user) and _IOW('M', 2, struct erase_info_user)
const MEMGETINFO: u64 = 0x8020_4d01;
const MEMERASE: u64 = 0x4008_4d02;

#[repr(C)]
#[derive(Default)]
struct MtdInfoUser {
    kind: u8,
    flags: u32,
    size: u32,
    erasesize: u32,
    writesize: u32,
    oobsize: u32,
    padding: u64,
}

#[repr(C)]
struct EraseInfoUser {
    start: u32,
    length: u32,
}

/// One line of an fw_env.config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvLocation {
    pub device: PathBuf,
    /// Byte offset; negative = from the end of a block device.
    pub offset: i64,
    /// Size of the whole copy (CRC + flags + data).
    pub size: usize,
    pub sector_size: Option<u64>,
    pub sectors: Option<u64>,
}

/// Parse an fw_env.config: `DEVICE OFFSET ENVSIZE [SECTORSIZE [NSECTORS]]` per line, like
/// libubootenv (`%s %lli %zx %zx %lx`): OFFSET is a C integer literal, the sizes are always hex.
pub fn parse_fw_env_config(text: &str) -> Result<Vec<EnvLocation>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |what: &str| Error::new(format!("line {}: {what}: {line:?}", n + 1));
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 {
            return Err(err("expected DEVICE OFFSET ENVSIZE"));
        }
        let offset = parse_c_int(f[1]).ok_or_else(|| err("OFFSET is not an integer"))?;
        let size = parse_hex(f[2]).ok_or_else(|| err("ENVSIZE is not hex"))?;
        let size = usize::try_from(size).map_err(|_| err("ENVSIZE too large"))?;
        if !(6..=MAX_ENV_SIZE).contains(&size) {
            return Err(err("ENVSIZE out of range"));
        }
        let sector_size = match f.get(3) {
            Some(s) => Some(parse_hex(s).ok_or_else(|| err("SECTORSIZE is not hex"))?),
            None => None,
        };
        let sectors = match f.get(4) {
            Some(s) => Some(parse_hex(s).ok_or_else(|| err("NSECTORS is not hex"))?),
            None => None,
        };
        out.push(EnvLocation {
            device: PathBuf::from(f[0]),
            offset,
            size,
            sector_size,
            sectors,
        });
    }
    match out.len() {
        1 | 2 => {}
        0 => {
            return Err(Error::new(
                "no environment location (expected 1 line, or 2 for a redundant environment)",
            ))
        }
        n => {
            return Err(Error::new(format!(
                "{n} environment locations; at most 2 are supported"
            )))
        }
    }
    if out.len() == 2 && out[0].size != out[1].size {
        return Err(Error::new(
            "the two redundant copies must have the same ENVSIZE",
        ));
    }
    Ok(out)
}

/// strtoll(s, NULL, 0): optional sign, `0x` hex, leading `0` octal, else decimal.
fn parse_c_int(s: &str) -> Option<i64> {
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let v = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        i64::from_str_radix(h, 16).ok()?
    } else if s.len() > 1 && s.starts_with('0') {
        i64::from_str_radix(&s[1..], 8).ok()?
    } else {
        s.parse().ok()?
    };
    Some(if neg { -v } else { v })
}

fn parse_hex(s: &str) -> Option<u64> {
    let h = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    u64::from_str_radix(h, 16).ok()
}

/// CRC-32 (IEEE, zlib's `crc32(0, ...)`).
pub fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, t) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *t = c;
    }
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc ^ 0xFFFF_FFFF
}

/// The variables of an environment, sorted by name like U-Boot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    pub vars: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Env {
    pub fn get(&self, name: &str) -> Option<String> {
        self.vars
            .get(name.as_bytes())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
            return Err(Error::new(format!(
                "invalid U-Boot variable {name:?}={value:?}"
            )));
        }
        self.vars
            .insert(name.as_bytes().to_vec(), value.as_bytes().to_vec());
        Ok(())
    }

    pub fn unset(&mut self, name: &str) {
        self.vars.remove(name.as_bytes());
    }

    /// Parse the data area (after CRC/flags).
    pub fn parse_data(data: &[u8]) -> Env {
        let mut vars = BTreeMap::new();
        for entry in data.split(|&c| c == 0) {
            if entry.is_empty() {
                break; // the double NUL ends the list
            }
            if let Some(eq) = entry.iter().position(|&c| c == b'=') {
                vars.insert(entry[..eq].to_vec(), entry[eq + 1..].to_vec());
            }
        }
        Env { vars }
    }

    /// The data area of `len` bytes: sorted entries, terminator, zero fill.
    pub fn to_data(&self, len: usize) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(len);
        for (k, v) in &self.vars {
            out.extend_from_slice(k);
            out.push(b'=');
            out.extend_from_slice(v);
            out.push(0);
        }
        out.push(0);
        if out.len() > len {
            return Err(Error::new(format!(
                "environment too large: {} bytes of variables, the data area has {len}",
                out.len()
            )));
        }
        out.resize(len, 0);
        Ok(out)
    }
}

/// What one copy holds.
#[derive(Debug)]
enum CopyState {
    /// File missing, empty, or erased (all 0x00 or all 0xFF): no environment yet.
    Blank,
    Invalid(String),
    Valid {
        flags: u8,
        env: Env,
    },
}

/// An environment store described by an fw_env.config.
pub struct UbootStore {
    config: PathBuf,
    copies: Vec<EnvLocation>,
}

/// The loaded environment and which copy it came from.
pub struct Loaded {
    pub env: Env,
    /// Index of the copy in use (None: no valid copy, empty environment).
    pub active: Option<usize>,
    pub flags: u8,
}

impl UbootStore {
    /// Read an fw_env.config; regular-file devices are taken relative to `root`.
    pub fn open(config: &Path, root: &Path) -> Result<UbootStore> {
        let text = fs::read_to_string(config)
            .ctx(|| format!("reading fw_env.config {}", config.display()))?;
        let mut copies = parse_fw_env_config(&text)
            .map_err(|e| e.context(format!("fw_env.config {}", config.display())))?;
        for c in &mut copies {
            if !c.device.starts_with("/dev") {
                c.device = crate::reroot(root, &c.device);
            }
        }
        Ok(UbootStore {
            config: config.to_path_buf(),
            copies,
        })
    }

    pub fn from_locations(config: PathBuf, copies: Vec<EnvLocation>) -> UbootStore {
        UbootStore { config, copies }
    }

    fn redundant(&self) -> bool {
        self.copies.len() == 2
    }

    fn header_len(&self) -> usize {
        if self.redundant() {
            5
        } else {
            4
        }
    }

    fn read_copy(&self, loc: &EnvLocation) -> Result<CopyState> {
        let mut f = match File::open(&loc.device) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(CopyState::Blank),
            Err(e) => return Err(Error::io(format!("opening {}", loc.device.display()), e)),
        };
        let off = resolve_offset(&mut f, loc)?;
        let len = f
            .seek(SeekFrom::End(0))
            .ctx(|| format!("seeking {}", loc.device.display()))?;
        if len == 0 && off == 0 {
            return Ok(CopyState::Blank);
        }
        if len < off + loc.size as u64
            && fs::metadata(&loc.device)
                .map(|m| m.is_file())
                .unwrap_or(false)
        {
            return Ok(CopyState::Invalid(format!(
                "{} is {len} bytes, too short for an environment of {:#x} bytes at offset {off:#x}",
                loc.device.display(),
                loc.size
            )));
        }
        let mut buf = vec![0u8; loc.size];
        f.seek(SeekFrom::Start(off))
            .ctx(|| format!("seeking {}", loc.device.display()))?;
        f.read_exact(&mut buf)
            .ctx(|| format!("reading {} at offset {off:#x}", loc.device.display()))?;
        if buf.iter().all(|&b| b == 0xFF) || buf.iter().all(|&b| b == 0) {
            return Ok(CopyState::Blank);
        }
        let h = self.header_len();
        let stored = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let computed = crc32(&buf[h..]);
        if stored != computed {
            return Ok(CopyState::Invalid(format!(
                "bad CRC in {} at offset {off:#x} (stored {stored:#010x}, computed {computed:#010x})",
                loc.device.display()
            )));
        }
        let flags = if self.redundant() { buf[4] } else { 0 };
        Ok(CopyState::Valid {
            flags,
            env: Env::parse_data(&buf[h..]),
        })
    }

    /// Load the current environment. All copies blank → empty environment; no valid copy but
    /// some damaged → error (nothing is changed).
    pub fn load(&self) -> Result<Loaded> {
        let mut states = Vec::new();
        for loc in &self.copies {
            states.push(self.read_copy(loc)?);
        }
        let valid: Vec<(usize, u8)> = states
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                CopyState::Valid { flags, .. } => Some((i, *flags)),
                _ => None,
            })
            .collect();
        let active = match valid.as_slice() {
            [] => None,
            [(i, _)] => Some(*i),
            [(_, f0), (_, f1)] => Some(if *f0 == 255 && *f1 == 0 {
                1
            } else if *f1 == 255 && *f0 == 0 {
                0
            } else if f1 > f0 {
                1
            } else {
                0
            }),
            _ => None,
        };
        for (i, s) in states.iter().enumerate() {
            if let CopyState::Invalid(why) = s {
                if active.is_some() {
                    eprintln!(
                        "<4>otter-boot: U-Boot environment copy {}: {why}; using the other copy",
                        i + 1
                    );
                }
            }
        }
        match active {
            Some(i) => match states.swap_remove(i) {
                CopyState::Valid { flags, env } => Ok(Loaded {
                    env,
                    active: Some(i),
                    flags,
                }),
                _ => Err(Error::new("internal: active copy is not valid")),
            },
            None => {
                if let Some(CopyState::Invalid(why)) =
                    states.iter().find(|s| matches!(s, CopyState::Invalid(_)))
                {
                    return Err(Error::new(format!(
                        "no valid U-Boot environment ({why}); check {} against the bootloader's env location",
                        self.config.display()
                    )));
                }
                Ok(Loaded {
                    env: Env::default(),
                    active: None,
                    flags: 0,
                })
            }
        }
    }

    /// Write `env` as the new current environment (see the module doc for crash safety).
    pub fn save(&self, env: &Env, prev: &Loaded) -> Result<()> {
        let h = self.header_len();
        let target = match (self.redundant(), prev.active) {
            (false, _) => 0,
            (true, Some(i)) => 1 - i,
            (true, None) => 0,
        };
        let loc = &self.copies[target];
        let nor = is_nor(&loc.device);
        let flags = if nor { 1 } else { prev.flags.wrapping_add(1) };
        let flags = if prev.active.is_none() { 1 } else { flags };
        let mut buf = vec![0u8; h];
        buf.extend_from_slice(&env.to_data(loc.size - h)?);
        let crc = crc32(&buf[h..]);
        buf[..4].copy_from_slice(&crc.to_le_bytes());
        if self.redundant() {
            buf[4] = flags;
        }
        if self.redundant() && prev.active.is_none() {
            // Fresh redundant environment: write copy 1 (flags 1) and copy 2 (flags 0, older),
            // so both locations exist and hold a valid environment.
            write_in_place(loc, &buf)?;
            let mut older = buf.clone();
            older[4] = 0;
            return write_in_place(&self.copies[1 - target], &older);
        }
        let single_file = !self.redundant()
            && fs::metadata(&loc.device)
                .map(|m| m.is_file())
                .unwrap_or(true);
        if single_file {
            replace_in_file(loc, &buf)?;
        } else {
            write_in_place(loc, &buf)?;
            if self.redundant() && nor {
                if let Some(old) = prev.active {
                    // Boolean flags on NOR: mark the old copy obsolete (programming 1→0 needs no erase).
                    let o = &self.copies[old];
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&o.device)
                        .ctx(|| format!("opening {}", o.device.display()))?;
                    let mut fh = f;
                    let off = resolve_offset(&mut fh, o)?;
                    fh.write_all_at(&[0], off + 4)
                        .ctx(|| format!("writing flag byte of {}", o.device.display()))?;
                    fh.sync_all()
                        .ctx(|| format!("syncing {}", o.device.display()))?;
                }
            }
        }
        Ok(())
    }
}

fn resolve_offset(f: &mut File, loc: &EnvLocation) -> Result<u64> {
    if loc.offset >= 0 {
        return Ok(loc.offset as u64);
    }
    let end = f
        .seek(SeekFrom::End(0))
        .ctx(|| format!("seeking {}", loc.device.display()))?;
    end.checked_sub(loc.offset.unsigned_abs()).ok_or_else(|| {
        Error::new(format!(
            "negative offset {} is before the start of {}",
            loc.offset,
            loc.device.display()
        ))
    })
}

fn is_mtd(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.file_type().is_char_device())
        .unwrap_or(false)
        && path
            .file_name()
            .map(|n| n.to_string_lossy().starts_with("mtd"))
            .unwrap_or(false)
}

fn mtd_info(f: &File) -> Option<MtdInfoUser> {
    let mut info = MtdInfoUser::default();
    // SAFETY: MEMGETINFO fills a struct mtd_info_user, which MtdInfoUser mirrors (repr(C)).
    let r = unsafe {
        libc::ioctl(
            f.as_raw_fd(),
            MEMGETINFO as _,
            &mut info as *mut MtdInfoUser,
        )
    };
    (r == 0).then_some(info)
}

fn is_nor(path: &Path) -> bool {
    if !is_mtd(path) {
        return false;
    }
    File::open(path)
        .ok()
        .and_then(|f| mtd_info(&f))
        .map(|i| i.kind == MTD_NORFLASH)
        .unwrap_or(false)
}

/// Single copy in a regular file: copy the file to a temp file, patch it, fsync, rename.
fn replace_in_file(loc: &EnvLocation, buf: &[u8]) -> Result<()> {
    let path = util::resolve_target(&loc.device);
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let res = (|| -> Result<()> {
        let mut out = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .ctx(|| format!("creating {}", tmp.display()))?;
        if let Ok(mut src) = File::open(&path) {
            std::io::copy(&mut src, &mut out)
                .ctx(|| format!("copying {} to {}", path.display(), tmp.display()))?;
        }
        let off = resolve_offset(&mut out, loc)?;
        out.write_all_at(buf, off)
            .ctx(|| format!("writing {}", tmp.display()))?;
        out.sync_all().ctx(|| format!("fsync {}", tmp.display()))?;
        if let Ok(meta) = fs::metadata(&path) {
            let _ = fs::set_permissions(&tmp, meta.permissions());
        }
        fs::rename(&tmp, &path)
            .ctx(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        util::sync_dir(&dir)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Redundant copy or raw device: write in place (erasing first on MTD), then fsync.
fn write_in_place(loc: &EnvLocation, buf: &[u8]) -> Result<()> {
    let dev = loc.device.display();
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(!loc.device.starts_with("/dev"))
        .truncate(false)
        .open(&loc.device)
        .ctx(|| format!("opening {dev} for writing"))?;
    let off = resolve_offset(&mut f, loc)?;
    if is_mtd(&loc.device) {
        let info = mtd_info(&f)
            .ok_or_else(|| Error::new(format!("{dev}: MEMGETINFO failed; is it an MTD device?")))?;
        let es = loc.sector_size.unwrap_or(info.erasesize as u64).max(1);
        let start = off - off % es;
        let end = (off + buf.len() as u64).div_ceil(es) * es;
        let mut region = vec![0u8; (end - start) as usize];
        f.read_exact_at(&mut region, start)
            .ctx(|| format!("reading {dev} erase block at {start:#x}"))?;
        let rel = (off - start) as usize;
        region[rel..rel + buf.len()].copy_from_slice(buf);
        let erase = EraseInfoUser {
            start: u32::try_from(start)
                .map_err(|_| Error::new(format!("{dev}: offset too large for MEMERASE")))?,
            length: u32::try_from(end - start)
                .map_err(|_| Error::new(format!("{dev}: erase length too large")))?,
        };
        // SAFETY: MEMERASE reads a struct erase_info_user, which EraseInfoUser mirrors.
        let r =
            unsafe { libc::ioctl(f.as_raw_fd(), MEMERASE as _, &erase as *const EraseInfoUser) };
        if r != 0 {
            return Err(Error::io(
                format!("erasing {dev} at {start:#x}"),
                std::io::Error::last_os_error(),
            ));
        }
        f.write_all_at(&region, start)
            .ctx(|| format!("writing {dev} at {start:#x}"))?;
    } else {
        f.write_all_at(buf, off)
            .ctx(|| format!("writing {dev} at offset {off:#x}"))?;
    }
    f.flush().ctx(|| format!("flushing {dev}"))?;
    f.sync_all().ctx(|| format!("fsync {dev}"))
}

/// Hold libubootenv's lock (`/var/lock/fw_printenv.lock`) while reading-modifying-writing.
/// Where the lock cannot be taken (no /var/lock, no permission) we go on without it.
struct EnvLock(Option<File>);

impl EnvLock {
    fn take() -> EnvLock {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_FILE)
            .ok();
        if let Some(f) = &f {
            // SAFETY: flock on an fd we own.
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        }
        EnvLock(f)
    }
}

impl Drop for EnvLock {
    fn drop(&mut self) {
        if let Some(f) = &self.0 {
            // SAFETY: unlock an fd we own.
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
        }
    }
}

/// The U-Boot counter backend.
pub struct UbootBackend {
    store: UbootStore,
}

impl UbootBackend {
    pub fn open(config: &Path, root: &Path) -> Result<UbootBackend> {
        Ok(UbootBackend {
            store: UbootStore::open(config, root)?,
        })
    }

    pub fn store(&self) -> &UbootStore {
        &self.store
    }

    fn modify(&mut self, f: impl FnOnce(&mut Env) -> Result<()>) -> Result<()> {
        let _lock = EnvLock::take();
        let loaded = self.store.load()?;
        let mut env = loaded.env.clone();
        f(&mut env)?;
        if loaded.active.is_some() && env == loaded.env {
            return Ok(());
        }
        self.store.save(&env, &loaded).ctx(|| {
            format!(
                "saving U-Boot environment ({})",
                self.store.config.display()
            )
        })
    }
}

fn num(env: &Env, name: &str) -> Option<u32> {
    env.get(name).and_then(|v| v.trim().parse().ok())
}

impl Backend for UbootBackend {
    fn arm(&mut self, tries: u32) -> Result<()> {
        crate::grubenv::check_tries(tries)?;
        self.modify(|env| {
            env.set("bootlimit", &tries.to_string())?;
            env.set("bootcount", "0")?;
            env.set("upgrade_available", "1")
        })
    }

    fn mark_good(&mut self) -> Result<()> {
        self.modify(|env| {
            env.set("upgrade_available", "0")?;
            env.set("bootcount", "0")
        })
    }

    fn mark_bad(&mut self) -> Result<()> {
        self.modify(|env| {
            let limit = num(env, "bootlimit").filter(|&l| l > 0).unwrap_or(1);
            env.set("bootlimit", &limit.to_string())?;
            env.set("bootcount", &(limit + 1).to_string())?;
            env.set("upgrade_available", "1")
        })
    }

    fn state(&self) -> Result<BootState> {
        let env = self.store.load()?.env;
        let mut st = BootState {
            backend: "uboot".into(),
            ..Default::default()
        };
        let ua = env
            .get("upgrade_available")
            .map(|v| v.trim() == "1")
            .unwrap_or(false);
        let count = num(&env, "bootcount").unwrap_or(0);
        let limit = num(&env, "bootlimit");
        st.tries = limit;
        if ua {
            match limit {
                Some(l) if l > 0 && count > l => st.fell_back = true,
                Some(l) if l > 0 => {
                    st.armed = true;
                    st.tries_left = Some(l - count);
                }
                _ => st.armed = true,
            }
        }
        for k in ["bootcount", "bootlimit", "upgrade_available"] {
            if let Some(v) = env.get(k) {
                st.raw.push((k.to_string(), v));
            }
        }
        Ok(st)
    }

    fn kind(&self) -> &'static str {
        "uboot"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lines() {
        let c = parse_fw_env_config(
            "# c\n/dev/mmcblk0 -0x4000 4000\n/boot/uboot.env 010 0x4000 200 2\n",
        )
        .unwrap();
        assert_eq!(c[0].offset, -0x4000);
        assert_eq!(c[0].size, 0x4000);
        assert_eq!(c[1].offset, 8);
        assert_eq!(c[1].sector_size, Some(0x200));
        assert!(parse_fw_env_config("/x 0 zz\n").is_err());
        assert!(parse_fw_env_config("").is_err());
    }

    #[test]
    fn crc_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn data_sorted_zero_filled() {
        let mut e = Env::default();
        e.set("b", "2").unwrap();
        e.set("a", "1").unwrap();
        assert_eq!(e.to_data(10).unwrap(), b"a=1\0b=2\0\0\0");
        assert!(e.to_data(8).is_err());
        assert_eq!(Env::parse_data(b"a=1\0b=2\0\0junk"), e);
    }
}
