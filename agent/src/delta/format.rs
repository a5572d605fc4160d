//! The delta wire format (see `docs/deltas.md`): superblock and part streams, little-endian.

use std::collections::HashSet;
#[cfg(feature = "publish")]
use std::io::Write;
use std::io::{BufReader, Read};

use anyhow::{bail, Context, Result};

pub use super::btf::MAX_BTF_SECTION;
use super::btf::{BtfMaps, IdMap};
use crate::ostree::{content_checksum, Checksum, DirMeta, FileHeader, Repo, MAX_TREE_DEPTH};

/// First 8 bytes of a superblock file (then `from`, the dirtree bases and one zstd frame).
pub const SUPERBLOCK_MAGIC: &[u8; 8] = b"OTDELTA4";
/// First 8 bytes of a part's decompressed stream.
pub const PART_MAGIC: &[u8; 8] = b"OTDPART2";
/// Largest decompressed superblock we accept.
pub const MAX_SUPERBLOCK_SIZE: u64 = 64 << 20;
/// Largest encoded file header (ownership, mode, xattrs, symlink target).
pub const MAX_HEADER_SIZE: u32 = 1 << 20;
/// zstd window of a superblock without dirtree bases (decoder buffer bound).
pub const PART_WINDOW_LOG_MAX: u32 = 23;
/// Most dirtree bases a superblock may list (an OS tree has some 10^4 directories).
pub const MAX_DIRTREE_BASES: u32 = 1 << 20;
/// Largest sum of base dirtrees a superblock may be compressed against (the decoder holds
/// them as the zstd reference prefix).
pub const MAX_BASE_PREFIX: u64 = 16 << 20;
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
    /// For the first `dirtree_bases.len()` dirtrees: the dirtree of A (its number in
    /// [`base_dirtree_order`]) the superblock is compressed against, usually the one at the same
    /// path. Costs nothing but compression: unchanged entries of a changed directory are
    /// matched in A's version of it.
    pub dirtree_bases: Vec<Option<u32>>,
    /// Dirmeta objects of B missing from A.
    pub dirmetas: Vec<Vec<u8>>,
    pub parts: Vec<PartInfo>,
    /// Type-id and string-offset maps for [`OP_PATCH_BSDIFF_BTF`] (empty when unused).
    pub btf: BtfMaps,
}

const META_DIRTREE: u8 = 2;
const META_DIRMETA: u8 = 3;

impl Superblock {
    /// Magic, `from`, the dirtree bases, then one zstd frame of the body compressed against
    /// the base dirtrees. `base(k)` returns A's dirtree number `k` of [`base_dirtree_order`].
    pub fn encode(
        &self,
        level: i32,
        base: &mut dyn FnMut(u32) -> Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        if self.dirtree_bases.len() > self.dirtrees.len()
            || self.dirtree_bases.len() > MAX_DIRTREE_BASES as usize
        {
            bail!(
                "{} dirtree bases for {} dirtrees",
                self.dirtree_bases.len(),
                self.dirtrees.len()
            );
        }
        let mut body = Vec::new();
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
        out.extend_from_slice(&self.from.0);
        put_u32(&mut out, len32(self.dirtree_bases.len())?);
        let mut prefix = Vec::new();
        let mut previous = -1i64;
        for b in &self.dirtree_bases {
            match b {
                None => put_varint(&mut out, 0),
                Some(k) => {
                    let step = i64::from(*k) - previous;
                    put_varint(&mut out, zigzag(step) + 1);
                    previous = i64::from(*k);
                    prefix.extend_from_slice(
                        &base(*k).with_context(|| format!("reading base dirtree #{k}"))?,
                    );
                }
            }
        }
        if prefix.len() as u64 > MAX_BASE_PREFIX {
            bail!(
                "the base dirtrees add up to {} bytes, more than {MAX_BASE_PREFIX}",
                prefix.len()
            );
        }
        let frame = if prefix.is_empty() {
            zstd::bulk::compress(&body, level).map_err(anyhow::Error::from)
        } else {
            zstd_patch(&prefix, &body, level)
        };
        out.extend_from_slice(&frame.context("compressing the superblock")?);
        Ok(out)
    }

    /// Parse and check a superblock: magic, sizes, `to` = content checksum of the root.
    /// `base(from, k)` returns dirtree number `k` of tree `from` in [`base_dirtree_order`]
    /// (it is called only when the superblock has bases, after `from` was read, so the
    /// caller can refuse a delta for another tree first).
    pub fn decode(
        r: &mut dyn Read,
        base: &mut dyn FnMut(&Checksum, u32) -> Result<Vec<u8>>,
    ) -> Result<Superblock> {
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)
            .context("reading the superblock magic")?;
        if &magic != SUPERBLOCK_MAGIC {
            bail!("not an otter delta superblock (magic {magic:02x?})");
        }
        let from = read_checksum(r).context("reading the superblock's source tree")?;
        let n_bases = read_u32(r)?;
        if n_bases > MAX_DIRTREE_BASES {
            bail!("superblock lists {n_bases} dirtree bases, more than {MAX_DIRTREE_BASES}");
        }
        let mut dirtree_bases = Vec::new();
        let mut prefix = Vec::new();
        let mut previous = -1i64;
        for i in 0..n_bases {
            let v = read_varint(r).with_context(|| format!("reading dirtree base {i}"))?;
            if v == 0 {
                dirtree_bases.push(None);
                continue;
            }
            let k = previous
                .checked_add(unzigzag(v - 1))
                .and_then(|k| u32::try_from(k).ok())
                .with_context(|| format!("dirtree base {i} is out of range"))?;
            previous = i64::from(k);
            dirtree_bases.push(Some(k));
            prefix.extend_from_slice(&base(&from, k)?);
            if prefix.len() as u64 > MAX_BASE_PREFIX {
                bail!("the superblock's base dirtrees add up to more than {MAX_BASE_PREFIX} bytes");
            }
        }
        let body = if prefix.is_empty() {
            let mut dec = zstd::stream::read::Decoder::new(r).context("starting zstd")?;
            dec.window_log_max(PART_WINDOW_LOG_MAX)
                .context("setting the zstd window limit")?;
            read_body(&mut dec)?
        } else {
            let mut dec = zstd::stream::read::Decoder::with_ref_prefix(BufReader::new(r), &prefix)
                .context("starting zstd")?;
            dec.window_log_max(patch_window_log(prefix.len() as u64, MAX_SUPERBLOCK_SIZE))
                .context("setting the zstd window limit")?;
            read_body(&mut dec)?
        };
        let mut r: &[u8] = &body;
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
        if dirtree_bases.len() > dirtrees.len() {
            bail!(
                "superblock lists {} dirtree bases for {} dirtrees",
                dirtree_bases.len(),
                dirtrees.len()
            );
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
            dirtree_bases,
            dirmetas,
            parts,
            btf: BtfMaps { types, strings },
        })
    }
}

/// One zstd frame of `new` with `old` as reference prefix (`zstd --patch-from`).
pub fn zstd_patch(old: &[u8], new: &[u8], level: i32) -> Result<Vec<u8>> {
    let wlog = patch_window_log(old.len() as u64, new.len() as u64);
    let mut enc = zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), level, old)
        .context("starting the zstd patch encoder")?;
    enc.window_log(wlog).context("setting the zstd window")?;
    if old.len() + new.len() > (8 << 20) {
        enc.long_distance_matching(true).context("zstd options")?;
    }
    enc.include_checksum(false).context("zstd options")?;
    enc.include_contentsize(true).context("zstd options")?;
    enc.set_pledged_src_size(Some(new.len() as u64))
        .context("zstd options")?;
    std::io::Write::write_all(&mut enc, new).context("compressing a patch")?;
    enc.finish().context("finishing a patch")
}

/// The decompressed superblock body, at most [`MAX_SUPERBLOCK_SIZE`] bytes.
fn read_body(dec: &mut dyn Read) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    dec.take(MAX_SUPERBLOCK_SIZE + 1)
        .read_to_end(&mut body)
        .context("decompressing the superblock")?;
    if body.len() as u64 > MAX_SUPERBLOCK_SIZE {
        bail!("superblock is larger than {MAX_SUPERBLOCK_SIZE} bytes");
    }
    Ok(body)
}

/// A's dirtrees as a superblock numbers them: depth first from the root, subdirectories in
/// their dirtree's (name) order, each dirtree numbered where it is first met (a subtree that
/// appears at several paths has one number and is not walked again).
pub fn base_dirtree_order(repo: &Repo, root: &Checksum) -> Result<Vec<Checksum>> {
    fn walk(
        repo: &Repo,
        tree: &Checksum,
        depth: usize,
        seen: &mut HashSet<Checksum>,
        out: &mut Vec<Checksum>,
    ) -> Result<()> {
        if depth > MAX_TREE_DEPTH {
            bail!("tree is nested deeper than {MAX_TREE_DEPTH}");
        }
        if !seen.insert(*tree) {
            return Ok(());
        }
        out.push(*tree);
        for (_, sub, _) in &repo.read_dirtree(tree)?.dirs {
            walk(repo, sub, depth + 1, seen, out)?;
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(repo, root, 0, &mut HashSet::new(), &mut out)?;
    Ok(out)
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// LEB128.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn read_varint(r: &mut dyn Read) -> Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = read_u8(r)?;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    bail!("varint is longer than 10 bytes")
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
        // A's dirtree number k: 200 bytes that do not compress on their own.
        let base_a = |k: u32| -> Result<Vec<u8>> {
            Ok((0..200u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) ^ k.wrapping_mul(40_503) >> 3) as u8)
                .collect())
        };
        // B's changed dirtrees: A's with an entry changed.
        let changed = |k: u32| {
            let mut t = base_a(k).unwrap();
            t[100] ^= 1;
            t
        };
        let (root_tree, root_meta) = (Checksum([3; 32]), Checksum([4; 32]));
        let sb = Superblock {
            from: Checksum([1; 32]),
            to: content_checksum(&root_tree, &root_meta),
            root_tree,
            root_meta,
            dirtrees: vec![changed(4), vec![5; 40], changed(2), vec![7; 40]],
            dirtree_bases: vec![Some(4), None, Some(2)],
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
        let enc = sb.encode(3, &mut |k| base_a(k)).unwrap();
        let mut asked = Vec::new();
        let dec = Superblock::decode(&mut &enc[..], &mut |from, k| {
            assert_eq!(*from, sb.from);
            asked.push(k);
            base_a(k)
        })
        .unwrap();
        assert_eq!(dec, sb);
        assert_eq!(asked, [4, 2]);
        let without = Superblock {
            dirtree_bases: Vec::new(),
            ..sb.clone()
        };
        let plain = without.encode(3, &mut |k| base_a(k)).unwrap();
        assert!(
            enc.len() + 200 < plain.len(),
            "the bases were not used: {} vs {} bytes",
            enc.len(),
            plain.len()
        );
        // Other base contents (another tree A) do not give the same body.
        assert!(
            Superblock::decode(&mut &enc[..], &mut |_, _| Ok(vec![0xee; 200]))
                .map_or(true, |d| d != sb)
        );
        // Refusing the base (a delta for another tree) fails the decode.
        assert!(Superblock::decode(&mut &enc[..], &mut |_, _| bail!("not this tree")).is_err());
        let mut bad = sb.clone();
        bad.to = Checksum([2; 32]);
        let enc = bad.encode(3, &mut |k| base_a(k)).unwrap();
        assert!(Superblock::decode(&mut &enc[..], &mut |_, k| base_a(k)).is_err());
        let mut bad = sb.clone();
        bad.dirtree_bases = vec![None; 5];
        assert!(bad.encode(3, &mut |k| base_a(k)).is_err());
        // A hostile count is refused before anything is allocated for it.
        let mut huge = enc[..40].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 64]);
        let err = Superblock::decode(&mut &huge[..], &mut |_, k| base_a(k)).unwrap_err();
        assert!(format!("{err:#}").contains("dirtree bases"), "{err:#}");
        assert!(Superblock::decode(&mut &b"OTDELTA0"[..], &mut |_, k| base_a(k)).is_err());
    }

    #[test]
    fn dirtree_base_steps_round_trip() {
        for v in [0i64, 1, -1, 2, -2, 1 << 40, -(1 << 40), i64::MAX, i64::MIN] {
            assert_eq!(unzigzag(zigzag(v)), v);
            let mut out = Vec::new();
            put_varint(&mut out, zigzag(v));
            assert_eq!(read_varint(&mut &out[..]).unwrap(), zigzag(v));
        }
        assert!(read_varint(&mut &[0xff; 11][..]).is_err());
    }

    #[test]
    fn window_logs() {
        assert_eq!(patch_window_log(0, 0), 10);
        assert_eq!(patch_window_log(1 << 20, 1 << 20), 21);
        assert_eq!(patch_window_log((1 << 20) + 1, 1 << 20), 22);
        assert_eq!(patch_window_log(u64::MAX, 1), 30);
    }
}
