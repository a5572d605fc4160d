//! Device side: rebuild tree B from tree A plus a delta, part by part, into the repo.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::Digest;

use super::btf::BtfMaps;
use super::format::{
    base_dirtree_order, patch_window_log, read_checksum, read_header, read_u64, read_u8,
    HashReader, PartInfo, Superblock, MAX_BTF_SECTION, MAX_PATCH_SOURCE_SIZE,
    MAX_PATCH_TARGET_SIZE, OP_COPY, OP_END, OP_NEW, OP_PATCH_BSDIFF, OP_PATCH_BSDIFF_BTF,
    OP_PATCH_ZSTD, PART_DICT_MAX, PART_MAGIC,
};
use super::{part_name, SUPERBLOCK_NAME};
use crate::ostree::{
    content_checksum, write_atomic, Checksum, DirMeta, DirTree, ObjectKind, Repo, Transaction,
};

/// Where the superblock and the parts come from (a directory, a registry artifact, …).
pub trait DeltaStore {
    /// The superblock file.
    fn superblock(&mut self) -> Result<Box<dyn Read + '_>>;
    /// Part `index` (its size and SHA-256 are checked by the caller while reading).
    fn part(&mut self, index: usize, info: &PartInfo) -> Result<Box<dyn Read + '_>>;
}

/// A delta unpacked in a directory: `superblock`, `part-0000`, `part-0001`, …
pub struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    pub fn new(dir: &Path) -> DirStore {
        DirStore {
            dir: dir.to_path_buf(),
        }
    }
}

impl DeltaStore for DirStore {
    fn superblock(&mut self) -> Result<Box<dyn Read + '_>> {
        let p = self.dir.join(SUPERBLOCK_NAME);
        let f = File::open(&p).with_context(|| format!("opening {}", p.display()))?;
        Ok(Box::new(BufReader::new(f)))
    }

    fn part(&mut self, index: usize, _info: &PartInfo) -> Result<Box<dyn Read + '_>> {
        let p = self.dir.join(part_name(index));
        let f = File::open(&p).with_context(|| format!("opening {}", p.display()))?;
        Ok(Box::new(f))
    }
}

/// What [`apply`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Content checksum of tree B, now complete in the repo (no commit is written).
    pub content: Checksum,
    /// B's root dirtree and dirmeta: the caller writes its own commit over them.
    pub root_tree: Checksum,
    pub root_meta: Checksum,
    /// Parts written by this run.
    pub parts_applied: usize,
    /// Parts skipped because all their objects were already present (earlier, interrupted run).
    pub parts_skipped: usize,
    /// Compressed bytes of the parts read by this run.
    pub bytes_read: u64,
}

/// The progress record of an apply: `state/otter-delta-<from>-<to>` (content checksums), one
/// applied part index a line.
pub fn progress_path(repo: &Repo, from: &Checksum, to: &Checksum) -> PathBuf {
    repo.path()
        .join("state")
        .join(format!("otter-delta-{from}-{to}"))
}

/// Apply the delta in a directory; see [`apply`].
pub fn apply_dir(repo: &Repo, dir: &Path, base: &Checksum) -> Result<Applied> {
    apply(repo, &mut DirStore::new(dir), base)
        .with_context(|| format!("applying the delta in {}", dir.display()))
}

/// The superblock of a delta that must start from the tree of commit `base` (read and
/// checked, nothing written). Its dirtrees are compressed against A's, read from `repo`.
pub fn read_superblock(
    repo: &Repo,
    store: &mut dyn DeltaStore,
    base: &Checksum,
) -> Result<Superblock> {
    let a = repo
        .read_commit(base)
        .with_context(|| format!("reading commit {base}: the delta cannot be applied"))?;
    let have = a.content_checksum();
    let other_tree = |from: &Checksum| {
        anyhow::anyhow!(
            "the delta starts from tree {from} but this system runs tree {have} (commit \
             {base}): it does not apply here; fetch the full image instead"
        )
    };
    let mut order: Option<Vec<Checksum>> = None;
    let mut r = store.superblock()?;
    let sb = Superblock::decode(&mut r, &mut |from, k| {
        if *from != have {
            return Err(other_tree(from));
        }
        let order = match &mut order {
            Some(o) => o,
            empty => empty.insert(base_dirtree_order(repo, &a.root_tree)?),
        };
        let c = order.get(k as usize).with_context(|| {
            format!(
                "the superblock's base dirtree #{k} is not in tree {have}, which has {}",
                order.len()
            )
        })?;
        repo.read_metadata(ObjectKind::DirTree, c)
    })
    .context("reading the delta superblock")?;
    if sb.from != have {
        return Err(other_tree(&sb.from));
    }
    Ok(sb)
}

/// Rebuild tree B of a delta on top of the tree of commit `base` (the device's commit of
/// image A), which must be in `repo` and whose content checksum must be the delta's `from`.
/// Parts are applied in order, each in its own transaction, so an interrupted apply resumes
/// where it stopped. B's dirtrees/dirmetas are written last, after checking that every object
/// they refer to is present; the root they form must have the content checksum `to`. No commit
/// is written and no ref is set: the caller writes its own commit over
/// [`Applied::root_tree`]/[`Applied::root_meta`] (as an import would). On error nothing is
/// referenced: the caller can fall back to full layers.
pub fn apply(repo: &Repo, store: &mut dyn DeltaStore, base: &Checksum) -> Result<Applied> {
    let sb = read_superblock(repo, store, base)?;
    let (from, to) = (sb.from, sb.to);
    let mut done = Applied {
        content: to,
        root_tree: sb.root_tree,
        root_meta: sb.root_meta,
        parts_applied: 0,
        parts_skipped: 0,
        bytes_read: 0,
    };
    let progress = progress_path(repo, &from, &to);
    let mut recorded = read_progress(&progress);
    for (i, part) in sb.parts.iter().enumerate() {
        if part
            .objects
            .iter()
            .all(|c| repo.has_object(ObjectKind::File, c))
        {
            done.parts_skipped += 1;
            continue;
        }
        let r = store
            .part(i, part)
            .with_context(|| format!("fetching part {i} of the delta {from} → {to}"))?;
        apply_part(repo, r, part, &sb.btf)
            .with_context(|| format!("applying part {i} of the delta {from} → {to}"))?;
        done.parts_applied += 1;
        done.bytes_read += part.size;
        recorded.insert(i);
        write_progress(&progress, &recorded)?;
    }
    finish(repo, &sb).with_context(|| format!("writing tree {to} from the delta"))?;
    match crate::fsutil::crash_point("unlink").and_then(|()| fs::remove_file(&progress)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("deleting {}", progress.display())),
    }
    Ok(done)
}

fn read_progress(p: &Path) -> HashSet<usize> {
    fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn write_progress(p: &Path, done: &HashSet<usize>) -> Result<()> {
    let mut v: Vec<_> = done.iter().copied().collect();
    v.sort_unstable();
    let text: String = v.iter().map(|i| format!("{i}\n")).collect();
    if let Some(dir) = p.parent() {
        if !dir.is_dir() {
            crate::fsutil::create_dir_all(dir)?;
        }
    }
    write_atomic(p, text.as_bytes(), 0o644)
}

/// Decode one part straight into a transaction; publish it only if everything checks out.
fn apply_part(
    repo: &Repo,
    reader: Box<dyn Read + '_>,
    info: &PartInfo,
    maps: &BtfMaps,
) -> Result<()> {
    let mut hashing = HashReader {
        inner: reader.take(info.size.saturating_add(1)),
        hasher: sha2::Sha256::new(),
        count: 0,
    };
    let mut tx = repo.transaction()?;
    let mut produced = 0;
    {
        // One xz stream; its dictionary (memory) is bounded, nothing may follow it.
        let stream =
            liblzma::stream::Stream::new_stream_decoder(u64::from(PART_DICT_MAX) + (1 << 20), 0)
                .context("starting the xz decoder")?;
        let mut dec = liblzma::read::XzDecoder::new_stream(&mut hashing, stream);
        let mut r = (&mut dec).take(info.uncompressed_size);
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic).context("reading the part magic")?;
        if &magic != PART_MAGIC {
            bail!("not an otter delta part (magic {magic:02x?})");
        }
        loop {
            let op = read_u8(&mut r)?;
            if op == OP_END {
                break;
            }
            // Operations rebuild the part's objects in the order the superblock lists them.
            let Some(&object) = info.objects.get(produced) else {
                bail!(
                    "part has more operations than the {} objects the superblock lists",
                    info.objects.len()
                );
            };
            let got = apply_op(repo, &mut tx, &mut r, op, maps)
                .with_context(|| format!("rebuilding object {object}"))?;
            if got != object {
                bail!("rebuilt object {object} has checksum {got}: the delta is corrupt");
            }
            produced += 1;
        }
        let short = r.limit();
        if short != 0 {
            bail!("part ends {short} bytes before its announced size");
        }
        // The frame must end here: nothing but EOF may follow.
        let mut extra = [0u8; 1];
        if dec
            .read(&mut extra)
            .context("reading the end of the part")?
            != 0
        {
            bail!("part has data after its end marker");
        }
        let mut rest = dec.into_inner();
        io::copy(&mut rest, &mut io::sink()).context("reading the end of the part")?;
    }
    if hashing.count != info.size {
        bail!(
            "part is {} bytes, the superblock says {}",
            hashing.count,
            info.size
        );
    }
    let sha: [u8; 32] = hashing.hasher.finalize().into();
    if sha != info.sha256 {
        bail!("part has the wrong SHA-256: it is corrupt or was altered");
    }
    if produced != info.objects.len() {
        bail!(
            "part rebuilt {} of the {} objects the superblock lists",
            produced,
            info.objects.len()
        );
    }
    tx.finish()
}

/// One operation; returns the checksum of the object it wrote.
fn apply_op(
    repo: &Repo,
    tx: &mut Transaction<'_>,
    r: &mut dyn Read,
    op: u8,
    maps: &BtfMaps,
) -> Result<Checksum> {
    match op {
        OP_NEW => {
            let h = read_header(r)?;
            let size = read_u64(r)?;
            if h.is_symlink() && size != 0 {
                bail!("symlink with content");
            }
            tx.write_file_sized(&h, &mut r.take(size), Some(size))
        }
        OP_PATCH_ZSTD => {
            let h = read_header(r)?;
            let size = read_u64(r)?;
            let source = read_checksum(r)?;
            let patch_len = read_u64(r)?;
            if h.is_symlink() || size > MAX_PATCH_TARGET_SIZE {
                bail!("invalid patch target ({size} bytes)");
            }
            let old = read_source(repo, &source)?;
            let mut pr = BufReader::new(r.take(patch_len));
            let mut dec = zstd::stream::read::Decoder::with_ref_prefix(&mut pr, &old)
                .context("starting the zstd patch decoder")?
                .single_frame();
            dec.window_log_max(patch_window_log(old.len() as u64, size))
                .context("setting the zstd window limit")?;
            let c = tx.write_file_sized(&h, &mut dec, Some(size))?;
            drop(dec);
            if io::copy(&mut pr, &mut io::sink()).context("reading the patch")? != 0 {
                bail!("patch has trailing data");
            }
            Ok(c)
        }
        OP_PATCH_BSDIFF | OP_PATCH_BSDIFF_BTF => {
            let h = read_header(r)?;
            let size = read_u64(r)?;
            let source = read_checksum(r)?;
            let btf = if op == OP_PATCH_BSDIFF_BTF {
                Some((read_u64(r)?, read_u64(r)?))
            } else {
                None
            };
            let patch_len = read_u64(r)?;
            if h.is_symlink() || size > MAX_PATCH_TARGET_SIZE {
                bail!("invalid patch target ({size} bytes)");
            }
            let src = repo.open_file(&source).with_context(|| {
                format!(
                    "source object {source} of the delta is missing: the system's commit is \
                     incomplete"
                )
            })?;
            let mut old = src
                .content
                .with_context(|| format!("source object {source} is a symlink"))?;
            let overlay = match btf {
                Some((offset, len)) => {
                    Some((offset, btf_section(&mut old, src.size, offset, len, maps)?))
                }
                None => None,
            };
            let mut patch = r.take(patch_len);
            let mut rebuilt = BsPatch {
                patch: &mut patch,
                old: BufReader::with_capacity(64 * 1024, old),
                old_len: src.size,
                old_pos: 0,
                overlay,
                mix_left: 0,
                copy_left: 0,
                seek: 0,
                out_left: size,
            };
            let c = tx.write_file_sized(&h, &mut rebuilt, Some(size))?;
            if io::copy(&mut patch, &mut io::sink()).context("reading the patch")? != 0 {
                bail!("patch has trailing data");
            }
            Ok(c)
        }
        OP_COPY => {
            let h = read_header(r)?;
            let source = read_checksum(r)?;
            if h.is_symlink() {
                bail!("copy into a symlink");
            }
            let src = repo
                .open_file(&source)
                .with_context(|| format!("source object {source} of the delta"))?;
            let Some(mut f) = src.content else {
                bail!("source object {source} is a symlink");
            };
            tx.write_file_sized(&h, &mut f, Some(src.size))
        }
        other => bail!("unknown operation {other}"),
    }
}

/// The `.BTF` section (`offset`, `len`) of a source object, rewritten through the delta's maps:
/// what [`OP_PATCH_BSDIFF_BTF`] patches against in place of the object's own bytes.
fn btf_section(
    old: &mut File,
    old_len: u64,
    offset: u64,
    len: u64,
    maps: &BtfMaps,
) -> Result<Vec<u8>> {
    use std::io::Seek as _;
    if len > MAX_BTF_SECTION || offset.checked_add(len).is_none_or(|end| end > old_len) {
        bail!("BTF section {offset}+{len} is outside the {old_len}-byte source or too large");
    }
    let mut section = vec![0u8; len as usize];
    old.seek(io::SeekFrom::Start(offset))
        .and_then(|_| old.read_exact(&mut section))
        .context("reading the source's BTF section")?;
    maps.apply(&mut section)
        .context("the source's BTF section does not parse")?;
    Ok(section)
}

/// A bsdiff patch ([`OP_PATCH_BSDIFF`]) applied as a reader of the new content: memory is the
/// buffers, whatever the file sizes. Every position and length is checked against the source
/// size and the declared target size; the rebuilt object is then checked against its checksum.
struct BsPatch<'p> {
    patch: &'p mut dyn Read,
    old: BufReader<File>,
    old_len: u64,
    old_pos: u64,
    /// Source bytes that replace the file's from an offset on (the rewritten `.BTF` section).
    overlay: Option<(u64, Vec<u8>)>,
    mix_left: u64,
    copy_left: u64,
    /// Applied to `old_pos` once the record's mix and copy bytes are done.
    seek: i64,
    out_left: u64,
}

impl BsPatch<'_> {
    fn bad(what: &str) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, format!("bsdiff patch: {what}"))
    }

    fn read_patch(&mut self, buf: &mut [u8], what: &str) -> io::Result<()> {
        self.patch.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                Self::bad(what)
            } else {
                e
            }
        })
    }

    /// The next record; false at the end of the patch.
    fn next_record(&mut self) -> io::Result<bool> {
        let mut rec = [0u8; 24];
        let mut got = 0;
        while got < rec.len() {
            match self.patch.read(&mut rec[got..])? {
                0 if got == 0 => return Ok(false),
                0 => return Err(Self::bad("truncated record")),
                n => got += n,
            }
        }
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&rec[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        self.mix_left = word(0);
        self.copy_left = word(1);
        let raw = word(2);
        let magnitude = i64::try_from(raw & !(1 << 63)).map_err(|_| Self::bad("bad seek"))?;
        self.seek = if raw & (1 << 63) == 0 {
            magnitude
        } else {
            -magnitude
        };
        let out = self
            .mix_left
            .checked_add(self.copy_left)
            .ok_or_else(|| Self::bad("record too long"))?;
        if out > self.out_left {
            return Err(Self::bad("patch writes past the declared size"));
        }
        if self
            .old_pos
            .checked_add(self.mix_left)
            .is_none_or(|e| e > self.old_len)
        {
            return Err(Self::bad("patch reads past the end of the source"));
        }
        use std::io::Seek as _;
        self.old.seek(io::SeekFrom::Start(self.old_pos))?;
        Ok(true)
    }
}

impl Read for BsPatch<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.mix_left > 0 {
                let n = (buf.len() as u64).min(self.mix_left) as usize;
                self.read_patch(&mut buf[..n], "truncated diff bytes")?;
                let mut old = [0u8; 8192];
                let mut done = 0;
                while done < n {
                    let m = (n - done).min(old.len());
                    self.old.read_exact(&mut old[..m])?;
                    if let Some((at, bytes)) = &self.overlay {
                        overlay(&mut old[..m], self.old_pos + done as u64, *at, bytes);
                    }
                    for (b, o) in buf[done..done + m].iter_mut().zip(&old[..m]) {
                        *b = b.wrapping_add(*o);
                    }
                    done += m;
                }
                self.mix_left -= n as u64;
                self.old_pos += n as u64;
                self.out_left -= n as u64;
                return Ok(n);
            }
            if self.copy_left > 0 {
                let n = (buf.len() as u64).min(self.copy_left) as usize;
                self.read_patch(&mut buf[..n], "truncated literal bytes")?;
                self.copy_left -= n as u64;
                self.out_left -= n as u64;
                return Ok(n);
            }
            if self.seek != 0 {
                let pos = i128::from(self.old_pos) + i128::from(self.seek);
                self.old_pos = u64::try_from(pos)
                    .ok()
                    .filter(|p| *p <= self.old_len)
                    .ok_or_else(|| Self::bad("seek outside the source"))?;
                self.seek = 0;
            }
            if !self.next_record()? {
                return Ok(0);
            }
        }
    }
}

/// Replace the bytes of `buf` (source bytes from `pos` on) that `bytes` (from `at` on) covers.
fn overlay(buf: &mut [u8], pos: u64, at: u64, bytes: &[u8]) {
    let start = pos.max(at);
    let end = (pos + buf.len() as u64).min(at + bytes.len() as u64);
    if start < end {
        let (b, o) = ((start - pos) as usize, (start - at) as usize);
        let n = (end - start) as usize;
        buf[b..b + n].copy_from_slice(&bytes[o..o + n]);
    }
}

fn read_source(repo: &Repo, source: &Checksum) -> Result<Vec<u8>> {
    let src = repo.open_file(source).with_context(|| {
        format!("source object {source} of the delta is missing: the system's commit is incomplete")
    })?;
    let Some(f) = src.content else {
        bail!("source object {source} is a symlink");
    };
    if src.size > MAX_PATCH_SOURCE_SIZE {
        bail!(
            "source object {source} is {} bytes, above the patch limit of {MAX_PATCH_SOURCE_SIZE}",
            src.size
        );
    }
    let mut old = Vec::with_capacity(src.size as usize);
    f.take(src.size)
        .read_to_end(&mut old)
        .with_context(|| format!("reading {}", src.path.display()))?;
    if old.len() as u64 != src.size {
        bail!("source object {source} changed while reading");
    }
    // The content is trusted only through B's checksums: a damaged source yields a wrong
    // rebuilt object, which is refused.
    Ok(old)
}

/// Write B's new dirtrees/dirmetas after checking the tree is complete and its root is `to`.
fn finish(repo: &Repo, sb: &Superblock) -> Result<()> {
    let mut tx = repo.transaction()?;
    let mut trees = HashSet::new();
    let mut metas = HashSet::new();
    for m in &sb.dirmetas {
        DirMeta::decode(m).context("dirmeta in the superblock does not parse")?;
        metas.insert(tx.write_metadata(ObjectKind::DirMeta, m)?);
    }
    for t in &sb.dirtrees {
        DirTree::decode(t).context("dirtree in the superblock does not parse")?;
        trees.insert(tx.write_metadata(ObjectKind::DirTree, t)?);
    }
    for t in &sb.dirtrees {
        let tree = DirTree::decode(t).context("dirtree in the superblock does not parse")?;
        for (name, c) in &tree.files {
            if !tx.has_object(ObjectKind::File, c) {
                bail!("file {name:?} (object {c}) is neither in the delta nor in the repository");
            }
        }
        for (name, t, m) in &tree.dirs {
            if !trees.contains(t) && !tx.has_object(ObjectKind::DirTree, t) {
                bail!("directory {name:?} (dirtree {t}) is missing");
            }
            if !metas.contains(m) && !tx.has_object(ObjectKind::DirMeta, m) {
                bail!("directory {name:?} (dirmeta {m}) is missing");
            }
        }
    }
    if !trees.contains(&sb.root_tree) && !tx.has_object(ObjectKind::DirTree, &sb.root_tree) {
        bail!(
            "root dirtree {} is neither in the delta nor in the repository",
            sb.root_tree
        );
    }
    if !metas.contains(&sb.root_meta) && !tx.has_object(ObjectKind::DirMeta, &sb.root_meta) {
        bail!(
            "root dirmeta {} is neither in the delta nor in the repository",
            sb.root_meta
        );
    }
    // Every metadata object was hashed as it was written, so the root is what its checksums
    // say; the content checksum ties it to the tree the delta promised (and the caller compares
    // that with the signed statement).
    let got = content_checksum(&sb.root_tree, &sb.root_meta);
    if got != sb.to {
        bail!("rebuilt tree is {got}, the delta promised {}", sb.to);
    }
    tx.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, mut seed: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 33) as u8
            })
            .collect()
    }

    fn apply_bs(old: &[u8], patch: &[u8], size: u64) -> io::Result<Vec<u8>> {
        apply_bs_over(old, None, patch, size)
    }

    fn apply_bs_over(
        old: &[u8],
        overlay: Option<(u64, Vec<u8>)>,
        patch: &[u8],
        size: u64,
    ) -> io::Result<Vec<u8>> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("old");
        std::fs::write(&p, old).unwrap();
        let mut patch = patch;
        let mut r = BsPatch {
            patch: &mut patch,
            old: BufReader::new(File::open(&p).unwrap()),
            old_len: old.len() as u64,
            old_pos: 0,
            overlay,
            mix_left: 0,
            copy_left: 0,
            seek: 0,
            out_left: size,
        };
        let mut out = Vec::new();
        // small reads, so records and buffers split at odd places
        let mut buf = [0u8; 777];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    /// The streaming applier rebuilds what the bsdiff crate's differ encoded (moved code with
    /// shifted addresses, insertions, deletions), reading the source from a file.
    #[test]
    fn bsdiff_patches_apply_streaming() {
        let old = pseudo_random(300_000, 1);
        let mut new = old.clone();
        // shift "addresses": add a constant to every 97th byte, insert and delete blocks
        for i in (0..new.len()).step_by(97) {
            new[i] = new[i].wrapping_add(3);
        }
        new.splice(1000..1000, pseudo_random(5000, 2));
        new.drain(200_000..210_000);
        let mut patch = Vec::new();
        bsdiff::diff(&old, &new, &mut patch).unwrap();
        assert_eq!(apply_bs(&old, &patch, new.len() as u64).unwrap(), new);

        // hostile patches: errors, never a panic or a read outside the source
        let mut bad = Vec::new();
        bad.extend_from_slice(&u64::MAX.to_le_bytes());
        bad.extend_from_slice(&0u64.to_le_bytes());
        bad.extend_from_slice(&0u64.to_le_bytes());
        assert!(apply_bs(&old, &bad, new.len() as u64).is_err());
        let mut seek_out = Vec::new();
        seek_out.extend_from_slice(&0u64.to_le_bytes());
        seek_out.extend_from_slice(&0u64.to_le_bytes());
        seek_out.extend_from_slice(&(1u64 << 63 | 5).to_le_bytes());
        seek_out.extend_from_slice(&1u64.to_le_bytes());
        seek_out.extend_from_slice(&[0u8; 16]);
        seek_out.push(0);
        assert!(apply_bs(&old, &seek_out, 10).is_err());
        assert!(apply_bs(&old, &patch[..patch.len() - 7], new.len() as u64).is_err());
        // more output than declared
        assert!(apply_bs(&old, &patch, new.len() as u64 - 1).is_err());
    }

    /// A patch made against a source whose middle was replaced (the rewritten BTF section)
    /// applies to the original file plus that overlay, whatever the read sizes.
    #[test]
    fn bsdiff_patches_apply_over_an_overlay() {
        let old = pseudo_random(100_000, 3);
        let (at, len) = (40_000usize, 20_000usize);
        let section = pseudo_random(len, 4);
        let mut rewritten = old.clone();
        rewritten[at..at + len].copy_from_slice(&section);
        let mut new = rewritten.clone();
        new.splice(50_000..50_000, pseudo_random(300, 5));
        for i in (0..new.len()).step_by(61) {
            new[i] = new[i].wrapping_add(1);
        }
        let mut patch = Vec::new();
        bsdiff::diff(&rewritten, &new, &mut patch).unwrap();
        let got = apply_bs_over(&old, Some((at as u64, section)), &patch, new.len() as u64);
        assert_eq!(got.unwrap(), new);
        assert_ne!(apply_bs(&old, &patch, new.len() as u64).unwrap(), new);
    }
}
