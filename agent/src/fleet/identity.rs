//! Device identity: an app-specific id derived from `/etc/machine-id`, the way zincati does it
//! (systemd's `sd_id128_get_machine_app_specific`), so the raw machine id never leaves the device.
//!
//! id = HMAC-SHA256(key = machine id (16 bytes), message = [`OTTER_APP_ID`] (16 bytes)), first
//! 16 bytes, marked as a v4 UUID, as 32 lowercase hex digits. The same value is printed by
//! `systemd-id128 machine-id --app-specific=ca90a281c3684eb294506093fe2df42e`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// otter's application id for app-specific machine ids (random, fixed forever).
pub const OTTER_APP_ID: [u8; 16] = [
    0xca, 0x90, 0xa2, 0x81, 0xc3, 0x68, 0x4e, 0xb2, 0x94, 0x50, 0x60, 0x93, 0xfe, 0x2d, 0xf4, 0x2e,
];

/// Largest machine-id file we read (it is 33 bytes).
const MACHINE_ID_MAX: u64 = 1024;

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn parse_id128(s: &str) -> Result<[u8; 16]> {
    let s = s.trim();
    if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("machine id {s:?} is not 32 hex digits");
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).context("machine id hex")?;
    }
    if out.iter().all(|b| *b == 0) {
        bail!("machine id is all zeros (uninitialized)");
    }
    Ok(out)
}

/// The app-specific id for a machine id given as 32 hex digits.
pub fn app_specific_id(machine_id: &str, app_id: &[u8; 16]) -> Result<String> {
    let key = parse_id128(machine_id)?;
    let mac = hmac_sha256(&key, app_id);
    let mut id = [0u8; 16];
    id.copy_from_slice(&mac[..16]);
    id[6] = (id[6] & 0x0F) | 0x40;
    id[8] = (id[8] & 0x3F) | 0x80;
    Ok(id.iter().map(|b| format!("{b:02x}")).collect())
}

/// otter's device id from `<sysroot>/etc/machine-id`.
pub fn device_id(sysroot: &Path) -> Result<String> {
    use std::io::Read;
    let path = sysroot.join("etc/machine-id");
    let mut s = String::new();
    std::fs::File::open(&path)
        .with_context(|| {
            format!(
                "opening {} (set [mqtt] device_id to override)",
                path.display()
            )
        })?
        .take(MACHINE_ID_MAX)
        .read_to_string(&mut s)
        .with_context(|| format!("reading {}", path.display()))?;
    app_specific_id(&s, &OTTER_APP_ID).with_context(|| format!("in {}", path.display()))
}

/// A device id or group given in the config must be usable as one MQTT topic level.
pub fn check_topic_level(what: &str, s: &str) -> Result<()> {
    if s.is_empty()
        || s.len() > 128
        || s.chars()
            .any(|c| matches!(c, '/' | '+' | '#' | '\0') || c.is_control())
    {
        bail!("{what} {s:?} must be 1-128 characters without '/', '+', '#' or control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn bad_machine_ids() {
        for bad in [
            "",
            "xyz",
            "00000000000000000000000000000000",
            "3d1219c7c4c5404aaa1f6d2a48adfda",
        ] {
            assert!(app_specific_id(bad, &OTTER_APP_ID).is_err(), "{bad}");
        }
    }

    #[test]
    fn topic_levels() {
        assert!(check_topic_level("group", "canary-1").is_ok());
        for bad in ["", "a/b", "a+", "#", "a\nb"] {
            assert!(check_topic_level("group", bad).is_err());
        }
    }
}
