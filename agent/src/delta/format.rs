//! The delta wire format (see `docs/deltas.md`): superblock and part streams, little-endian.

use std::io::Read;
#[cfg(feature = "publish")]
use std::io::Write;

use anyhow::{bail, Context, Result};

pub use super::btf::MAX_BTF_SECTION;
use super::btf::{BtfMaps, IdMap};
use crate::ostree::{content_checksum, Checksum, DirMeta, FileHeader};

/// First 8 bytes of a superblock file (then one zstd frame).
pub const SUPERBLOCK_MAGIC: &[u8; 8] = b"OTDELTA3";
/// First 8 bytes of a part's decompressed stream.
pub const PART_MAGIC: &[u8; 8] = b"OTDPART2";
/// Largest decompressed superblock we accept.
pub const MAX_SUPERBLOCK_SIZE: u64 = 64 << 20;
/// Largest encoded file header (ownership, mode, xattrs, symlink target).
pub const MAX_HEADER_SIZE: u32 = 1 << 20;
/// zstd window of the superblock (decoder buffer bound).
pub const PART_WINDOW_LOG_MAX: u32 = 23;
/// Largest LZMA2 dictionary of a part stream: the decoder refuses parts that need more memory.
pub const PART_DICT_MAX: u32 = 8 << 20;
/// Largest source ("old") object a zstd patch may reference; larger files are sent whole.
pub const MAX_PATCH_SOURCE_SIZE: u64 = 64 << 20;
/// Largest file a zstd patch may produce; larger files are sent whole.
pub const MAX_PATCH_TARGET_SIZE: u64 = 128 << 20;

/// End of the part.
pub const OP_END: u8 = 0;
/// `object, header, size u64, content[size]`: a file sent whole (symlinks: size 0).
pub const OP_NEW: u8 = 1;
/// `object, header, size u64, source object, patch_len u64, patch[patch_len]`: one zstd frame
/// compressed with the source object's content as reference prefix (`--patch-from`).
pub const OP_PATCH_ZSTD: u8 = 2;
/// `object, header, source object`: same content as the source object, other metadata.
pub const OP_COPY: u8 = 3;
/// `object, header, size u64, source object, patch_len u64, patch[patch_len]`: a raw bsdiff
/// patch (no compression of its own: the part stream compresses it). Repeated records of
/// `mix_len u64 LE, copy_len u64 LE, seek i64 (sign-magnitude LE)`, then `mix_len` bytes added
/// bytewise to the source at the current position, then `copy_len` literal bytes; the source
/// position then moves by `seek`. Applied streaming: the source is read where the records say,
/// never held in memory.
pub const OP_PATCH_BSDIFF: u8 = 4;
/// `object, header, size u64, source object, btf_offset u64, btf_len u64, patch_len u64,
/// patch[patch_len]`: a bsdiff patch against the source whose `.BTF` section (at `btf_offset`,
/// `btf_len` ≤ [`MAX_BTF_SECTION`] bytes) was first rewritten through the superblock's BTF maps
/// (see [`super::btf`]).
pub const OP_PATCH_BSDIFF_BTF: u8 = 5;

/// One part as listed in the superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartInfo {
    /// Bytes of the part file (compressed).
    pub size: u64,
    /// Bytes of the decompressed stream.
    pub uncompressed_size: u64,
    /// SHA-256 of the part file.
    pub sha256: [u8; 32],
    /// The file objects this part produces, in order.
    pub objects: Vec<Checksum>,
}

/// Everything a device needs before the parts: the trees the delta is between (ostree *content
/// checksums*, not commits: every device writes its own commit for the same image), B's root,
/// the metadata objects of B that A does not have, and the part list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// Content checksum of tree A (sha256(root dirtree ‖ root dirmeta)).
    pub from: Checksum,
    /// Content checksum of tree B; equals `content_checksum(root_tree, root_meta)`.
    pub to: Checksum,
    /// B's root dirtree.
    pub root_tree: Checksum,
    /// B's root dirmeta.
    pub root_meta: Checksum,
    /// Dirtree objects of B missing from A.
    pub dirtrees: Vec<Vec<u8>>,
    /// Dirmeta objects of B missing from A.
    pub dirmetas: Vec<Vec<u8>>,
    pub parts: Vec<PartInfo>,
    /// Type-id and string-offset maps for [`OP_PATCH_BSDIFF_BTF`] (empty when unused).
    pub btf: BtfMaps,
}

const META_DIRTREE: u8 = 2;
const META_DIRMETA: u8 = 3;

impl Superblock {
    /// Magic, then one zstd frame of the body.
    pub fn encode(&self, level: i32) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        body.extend_from_slice(&self.from.0);
        body.extend_from_slice(&self.to.0);
        body.extend_from_slice(&self.root_tree.0);
        body.extend_from_slice(&self.root_meta.0);
        put_u32(&mut body, len32(self.dirtrees.len() + self.dirmetas.len())?);
        for (kind, objs) in [
            (META_DIRTREE, &self.dirtrees),
            (META_DIRMETA, &self.dirmetas),
        ] {
            for o in objs {
                body.push(kind);
                put_bytes(&mut body, o);
            }
        }
        put_u32(&mut body, len32(self.parts.len())?);
        for p in &self.parts {
            put_u64(&mut body, p.size);
            put_u64(&mut body, p.uncompressed_size);
            body.extend_from_slice(&p.sha256);
            put_u32(&mut body, len32(p.objects.len())?);
            for o in &p.objects {
                body.extend_from_slice(&o.0);
            }
        }
        for map in [&self.btf.types, &self.btf.strings] {
            put_u32(&mut body, len32(map.runs().len())?);
            for (start, shift) in map.runs() {
                put_u32(&mut body, *start);
                put_u32(&mut body, *shift);
            }
        }
        let mut out = SUPERBLOCK_MAGIC.to_vec();
        out.extend_from_slice(
            &zstd::bulk::compress(&body, level).context("compressing the superblock")?,
        );
        Ok(out)
    }

    /// Parse and check a superblock: magic, sizes, `to` = content checksum of the root.
    pub fn decode(r: &mut dyn Read) -> Result<Superblock> {
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)
            .context("reading the superblock magic")?;
        if &magic != SUPERBLOCK_MAGIC {
            bail!("not an otter delta superblock (magic {magic:02x?})");
        }
        let mut dec = zstd::stream::read::Decoder::new(r).context("starting zstd")?;
        dec.window_log_max(PART_WINDOW_LOG_MAX)
            .context("setting the zstd window limit")?;
        let mut body = Vec::new();
        (&mut dec)
            .take(MAX_SUPERBLOCK_SIZE + 1)
            .read_to_end(&mut body)
            .context("decompressing the superblock")?;
        if body.len() as u64 > MAX_SUPERBLOCK_SIZE {
            bail!("superblock is larger than {MAX_SUPERBLOCK_SIZE} bytes");
        }
        let mut r: &[u8] = &body;
        let from = read_checksum(&mut r)?;
        let to = read_checksum(&mut r)?;
        let root_tree = read_checksum(&mut r)?;
        let root_meta = read_checksum(&mut r)?;
        let actual = content_checksum(&root_tree, &root_meta);
        if actual != to {
            bail!("superblock names target tree {to} but its root {root_tree}/{root_meta} is tree {actual}");
        }
        let n = read_u32(&mut r)?;
        let (mut dirtrees, mut dirmetas) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let kind = read_u8(&mut r)?;
            let data = read_bytes(&mut r, MAX_SUPERBLOCK_SIZE)?;
            match kind {
                META_DIRTREE => dirtrees.push(data),
                META_DIRMETA => dirmetas.push(data),
                k => bail!("superblock has a metadata object of unknown kind {k}"),
            }
        }
        let n = read_u32(&mut r)?;
        let mut parts = Vec::new();
        for _ in 0..n {
            let size = read_u64(&mut r)?;
            let uncompressed_size = read_u64(&mut r)?;
            let mut sha256 = [0u8; 32];
            r.read_exact(&mut sha256)
                .context("superblock is truncated")?;
            let count = read_u32(&mut r)? as usize;
            if count > r.len() / 32 {
                bail!("superblock part lists {count} objects, more than it holds");
            }
            let mut objects = Vec::with_capacity(count);
            for _ in 0..count {
                objects.push(read_checksum(&mut r)?);
            }
            parts.push(PartInfo {
                size,
                uncompressed_size,
                sha256,
                objects,
            });
        }
        let mut maps = Vec::new();
        for what in ["type", "string"] {
            let count = read_u32(&mut r)? as usize;
            if count > r.len() / 8 {
                bail!("superblock's BTF {what} map lists {count} runs, more than it holds");
            }
            let mut runs = Vec::with_capacity(count);
            for _ in 0..count {
                runs.push((read_u32(&mut r)?, read_u32(&mut r)?));
            }
            maps.push(IdMap::from_runs(runs).with_context(|| format!("BTF {what} map"))?);
        }
        let strings = maps.pop().unwrap_or_default();
        let types = maps.pop().unwrap_or_default();
        if !r.is_empty() {
            bail!("superblock has {} bytes of trailing data", r.len());
        }
        Ok(Superblock {
            from,
            to,
            root_tree,
            root_meta,
            dirtrees,
            dirmetas,
            parts,
            btf: BtfMaps { types, strings },
        })
    }
}

/// The zstd window (log2) of a patch from `old` to `new` bytes: covers both, so every byte of
/// the reference prefix can be matched. Generator and device compute it the same way.
pub fn patch_window_log(old: u64, new: u64) -> u32 {
    let total = old.saturating_add(new).max(1);
    let log = 64 - (total - 1).leading_zeros();
    log.clamp(10, 30)
}

fn len32(n: usize) -> Result<u32> {
    u32::try_from(n).context("count does not fit the delta format")
}

pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// `u32 len, DirMeta (uid, gid, mode, xattrs) GVariant, u32 len, symlink target`.
#[cfg(feature = "publish")]
pub fn encode_header(h: &FileHeader) -> Vec<u8> {
    let meta = DirMeta {
        uid: h.uid,
        gid: h.gid,
        mode: h.mode,
        xattrs: h.xattrs.clone(),
    }
    .encode();
    let mut out = Vec::with_capacity(meta.len() + h.symlink_target.len() + 8);
    put_bytes(&mut out, &meta);
    put_bytes(&mut out, h.symlink_target.as_bytes());
    out
}

pub fn read_header(r: &mut dyn Read) -> Result<FileHeader> {
    let meta = read_bytes(r, u64::from(MAX_HEADER_SIZE))?;
    let m = DirMeta::decode(&meta).context("file header does not parse")?;
    let target = read_bytes(r, u64::from(MAX_HEADER_SIZE))?;
    let symlink_target = String::from_utf8(target).context("symlink target is not UTF-8")?;
    let h = FileHeader {
        uid: m.uid,
        gid: m.gid,
        mode: m.mode,
        symlink_target,
        xattrs: m.xattrs,
    };
    h.validate()?;
    if !h.is_symlink() && !h.symlink_target.is_empty() {
        bail!("regular file header carries a symlink target");
    }
    Ok(h)
}

pub fn read_u8(r: &mut dyn Read) -> Result<u8> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b).context("stream is truncated")?;
    Ok(b[0])
}

pub fn read_u32(r: &mut dyn Read) -> Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).context("stream is truncated")?;
    Ok(u32::from_le_bytes(b))
}

pub fn read_u64(r: &mut dyn Read) -> Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b).context("stream is truncated")?;
    Ok(u64::from_le_bytes(b))
}

pub fn read_checksum(r: &mut dyn Read) -> Result<Checksum> {
    let mut b = [0u8; 32];
    r.read_exact(&mut b).context("stream is truncated")?;
    Ok(Checksum(b))
}

fn read_bytes(r: &mut dyn Read, max: u64) -> Result<Vec<u8>> {
    let n = u64::from(read_u32(r)?);
    if n > max {
        bail!("length {n} exceeds the limit of {max} bytes");
    }
    let mut out = Vec::new();
    r.take(n).read_to_end(&mut out).context("reading")?;
    if out.len() as u64 != n {
        bail!("stream is truncated");
    }
    Ok(out)
}

/// A writer that hashes and counts what passes through.
#[cfg(feature = "publish")]
pub struct HashWriter<W: Write> {
    pub inner: W,
    pub hasher: sha2::Sha256,
    pub count: u64,
}

#[cfg(feature = "publish")]
impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use sha2::Digest;
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes and counts what passes through.
pub struct HashReader<R: Read> {
    pub inner: R,
    pub hasher: sha2::Sha256,
    pub count: u64,
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use sha2::Digest;
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_round_trip_and_checks() {
        let (root_tree, root_meta) = (Checksum([3; 32]), Checksum([4; 32]));
        let sb = Superblock {
            from: Checksum([1; 32]),
            to: content_checksum(&root_tree, &root_meta),
            root_tree,
            root_meta,
            dirtrees: vec![vec![0]],
            dirmetas: vec![vec![1, 2, 3]],
            parts: vec![PartInfo {
                size: 10,
                uncompressed_size: 20,
                sha256: [7; 32],
                objects: vec![Checksum([9; 32])],
            }],
            btf: BtfMaps {
                types: IdMap::from_runs(vec![(5, 1), (9, u32::MAX)]).unwrap(),
                strings: IdMap::from_runs(vec![(100, 7)]).unwrap(),
            },
        };
        let enc = sb.encode(3).unwrap();
        assert_eq!(Superblock::decode(&mut &enc[..]).unwrap(), sb);
        let mut bad = sb.clone();
        bad.to = Checksum([2; 32]);
        let enc = bad.encode(3).unwrap();
        assert!(Superblock::decode(&mut &enc[..]).is_err());
        assert!(Superblock::decode(&mut &b"OTDELTA0"[..]).is_err());
    }

    #[test]
    fn window_logs() {
        assert_eq!(patch_window_log(0, 0), 10);
        assert_eq!(patch_window_log(1 << 20, 1 << 20), 21);
        assert_eq!(patch_window_log((1 << 20) + 1, 1 << 20), 22);
        assert_eq!(patch_window_log(u64::MAX, 1), 30);
    }
}
