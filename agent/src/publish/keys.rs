//! Publisher keys and signing, in minisign's own file formats (the `minisign` CLI reads and
//! writes the same files).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::verify::{KeyId, ReleaseStatement};

/// Environment variable holding the password of an encrypted secret key (otherwise the
/// password is asked on the terminal).
pub const PASSWORD_ENV: &str = "OTTER_PUBLISH_PASSWORD";

/// Paths `keygen` writes for `prefix`: `PREFIX.key`, `PREFIX.pub`.
pub fn key_paths(prefix: &Path) -> (PathBuf, PathBuf) {
    let mut sk = prefix.as_os_str().to_owned();
    sk.push(".key");
    let mut pk = prefix.as_os_str().to_owned();
    pk.push(".pub");
    (PathBuf::from(sk), PathBuf::from(pk))
}

/// Generate an unencrypted minisign key pair (`minisign -G -W` format) at `PREFIX.key` (mode
/// 0600) and `PREFIX.pub`. Refuses to overwrite existing files.
pub fn keygen(prefix: &Path) -> Result<KeyId> {
    let (sk_path, pk_path) = key_paths(prefix);
    for p in [&sk_path, &pk_path] {
        if p.exists() {
            bail!(
                "{} already exists: refusing to overwrite a key; remove it first",
                p.display()
            );
        }
    }
    let kp = minisign::KeyPair::generate_unencrypted_keypair()
        .map_err(|e| anyhow::anyhow!("cannot generate a key pair: {e}"))?;
    let mut id = [0u8; 8];
    id.copy_from_slice(kp.pk.keynum());
    let key_id = KeyId(id);
    let sk_text = kp
        .sk
        .to_box(Some("minisign encrypted secret key"))
        .map_err(|e| anyhow::anyhow!("cannot encode the secret key: {e}"))?
        .into_string();
    let pk_text = format!(
        "untrusted comment: minisign public key {key_id}\n{}\n",
        kp.pk.to_base64()
    );
    write_atomic(&sk_path, sk_text.as_bytes(), 0o600)?;
    write_atomic(&pk_path, pk_text.as_bytes(), 0o644)?;
    Ok(key_id)
}

/// Load a minisign secret key (unencrypted, or encrypted with the password from
/// `OTTER_PUBLISH_PASSWORD` / the terminal).
pub fn load_secret_key(path: &Path) -> Result<minisign::SecretKey> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("cannot read secret key {}", path.display()))?;
    let sk_box = minisign::SecretKeyBox::from_string(&text)
        .map_err(|e| anyhow::anyhow!("{} is not a minisign secret key: {e}", path.display()))?;
    // Unencrypted keys (`minisign -G -W`, `otter-publish keygen`): kdf algorithm 0x0000. The
    // minisign CLI (0.11) leaves the checksum of such keys zeroed, which the crate's
    // `into_unencrypted_secret_key` rejects as "Corrupted key", so parse the bytes directly.
    let raw = text
        .lines()
        .nth(1)
        .and_then(|l| crate::verify::keys::base64_decode(l.trim()))
        .with_context(|| {
            format!(
                "{} is not a minisign secret key (line 2 is not base64)",
                path.display()
            )
        })?;
    if raw.len() != 158 || &raw[0..2] != b"Ed" {
        bail!("{} is not a minisign Ed25519 secret key", path.display());
    }
    if raw[2..4] == [0, 0] {
        return minisign::SecretKey::from_bytes(&raw)
            .map_err(|e| anyhow::anyhow!("{} is not a valid secret key: {e}", path.display()));
    }
    let password = std::env::var(PASSWORD_ENV).ok();
    sk_box.into_secret_key(password).map_err(|e| {
        anyhow::anyhow!(
            "cannot decrypt secret key {}: {e} (set {PASSWORD_ENV} or type the password)",
            path.display()
        )
    })
}

/// Sign a release statement: returns the canonical statement bytes and the `.minisig` text
/// (prehashed `ED`, trusted comment from [`ReleaseStatement::trusted_comment`]).
pub fn sign_statement(
    sk: &minisign::SecretKey,
    stmt: &ReleaseStatement,
) -> Result<(Vec<u8>, Vec<u8>)> {
    stmt.validate()?;
    let bytes = stmt.to_canonical_json();
    let pk = minisign::PublicKey::from_secret_key(sk)
        .map_err(|e| anyhow::anyhow!("cannot derive the public key: {e}"))?;
    let mut id = [0u8; 8];
    id.copy_from_slice(sk.keynum());
    let untrusted = format!("signature from otter-publish, key {}", KeyId(id));
    let sig = minisign::sign(
        Some(&pk),
        sk,
        bytes.as_slice(),
        Some(&stmt.trusted_comment()),
        Some(&untrusted),
    )
    .map_err(|e| anyhow::anyhow!("signing failed: {e}"))?;
    Ok((bytes, sig.into_string().into_bytes()))
}

/// Write `bytes` to `path` atomically: temp file in the same directory, fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| -> Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("cannot fsync {}", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot fsync directory {}", dir.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
