//! Publisher side: compute the delta between the trees of two commits of one repository.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::Digest;

use super::btf::{find_btf, BtfMaps, MapBuilder};
use super::format::{
    base_dirtree_order, encode_header, put_u64, zstd_patch, HashWriter, PartInfo, Superblock,
    MAX_BASE_PREFIX, MAX_PATCH_SOURCE_SIZE, MAX_PATCH_TARGET_SIZE, OP_COPY, OP_END, OP_NEW,
    OP_PATCH_BSDIFF, OP_PATCH_BSDIFF_BTF, OP_PATCH_ZSTD, PART_DICT_MAX, PART_MAGIC,
};
use super::{part_name, SUPERBLOCK_NAME};
use crate::ostree::{Checksum, ObjectKind, Repo, MAX_TREE_DEPTH};

/// Knobs of [`generate_with`]; the defaults are what `otter-publish` uses.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// A part is closed once its decompressed stream reaches this size (a single file larger
    /// than this gets a part of its own).
    pub max_part_size: u64,
    /// zstd level of the superblock.
    pub level: i32,
    /// xz preset of the part streams (0-9; always "extreme").
    pub part_preset: u32,
    /// zstd level of per-file patches.
    pub patch_level: i32,
    /// LZMA2 dictionary of the part streams (≤ [`PART_DICT_MAX`]): device memory.
    pub dict_size: u32,
    /// Larger source files are not used as patch bases (device memory: old + new in RAM).
    pub max_patch_source_size: u64,
    /// Threads computing patches (0: one per core). The output does not depend on it.
    pub threads: usize,
    /// Diff kernel objects against a source whose `.BTF` section is renumbered the way B's
    /// kernel numbers types and strings (off: plain bsdiff; for measurements).
    pub btf: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_part_size: 8 << 20,
            level: 19,
            part_preset: 9,
            patch_level: 19,
            dict_size: 4 << 20,
            max_patch_source_size: MAX_PATCH_SOURCE_SIZE,
            threads: 0,
            btf: true,
        }
    }
}

/// What [`generate`] wrote.
#[derive(Clone, Debug, Default)]
pub struct DeltaSummary {
    /// Content checksums of trees A and B.
    pub from: Option<Checksum>,
    pub to: Option<Checksum>,
    pub parts: usize,
    /// Bytes of the superblock plus all parts.
    pub total_size: u64,
    pub superblock_size: u64,
    /// Dirtree and dirmeta objects carried in the superblock.
    pub metadata_objects: usize,
    /// Files sent whole (incl. symlinks) and their content bytes.
    pub new_files: usize,
    pub new_bytes: u64,
    /// Files sent as zstd patches, their size and the patch bytes.
    pub patched_files: usize,
    pub patched_bytes: u64,
    pub patch_bytes: u64,
    /// Files whose content exists in A under another object (metadata change, rename).
    pub copied_files: usize,
    /// Of the patched files, those diffed against a BTF-renumbered source (kernel objects).
    pub btf_patched_files: usize,
    /// Runs of the BTF type-id and string-offset maps.
    pub btf_map_runs: usize,
    /// New dirtrees compressed against A's dirtree at the same (or a renamed) path.
    pub dirtree_bases: usize,
}

/// Generate the delta `from` → `to` into `out_dir` (which must not exist), with default options.
pub fn generate(
    repo: &Repo,
    from: &Checksum,
    to: &Checksum,
    out_dir: &Path,
) -> Result<DeltaSummary> {
    generate_with(repo, from, to, out_dir, &GenerateOptions::default())
}

/// Generate the delta `from` → `to` into `out_dir` (which must not exist). The directory is
/// built under a temporary name next to it and renamed at the end.
pub fn generate_with(
    repo: &Repo,
    from: &Checksum,
    to: &Checksum,
    out_dir: &Path,
    opts: &GenerateOptions,
) -> Result<DeltaSummary> {
    if opts.dict_size > PART_DICT_MAX || opts.dict_size < 4096 || opts.part_preset > 9 {
        bail!(
            "dict_size {} is outside 4 KiB..={PART_DICT_MAX} or preset {} above 9",
            opts.dict_size,
            opts.part_preset
        );
    }
    if out_dir.exists() {
        bail!("{} exists: choose a new directory", out_dir.display());
    }
    let name = out_dir
        .file_name()
        .with_context(|| format!("{} has no file name", out_dir.display()))?
        .to_string_lossy();
    let tmp = out_dir.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let res = generate_into(repo, from, to, &tmp, opts);
    match res {
        Ok(s) => {
            fs::rename(&tmp, out_dir)
                .with_context(|| format!("renaming {} to {}", tmp.display(), out_dir.display()))?;
            Ok(s)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Commit A as the device has it.
struct Old {
    by_path: HashMap<String, Checksum>,
    by_pattern: HashMap<String, Vec<Checksum>>,
    files: HashSet<Checksum>,
    dirtrees: HashSet<Checksum>,
    dirmetas: HashSet<Checksum>,
    /// Directory path → its dirtree, and path pattern → the first dirtree with that pattern:
    /// the bases B's new dirtrees are compressed against.
    dir_by_path: HashMap<String, Checksum>,
    dir_by_pattern: HashMap<String, Checksum>,
    /// A's dirtrees numbered as the superblock refers to them ([`base_dirtree_order`]).
    dirtree_numbers: HashMap<Checksum, u32>,
    /// size → regular objects of that size (built on first use).
    by_size: std::sync::OnceLock<HashMap<u64, Vec<Checksum>>>,
    /// SHA-256 of object contents (shared by the workers).
    content_hash: std::sync::Mutex<HashMap<Checksum, [u8; 32]>>,
    /// How B's BTF type ids and string offsets relate to A's (learnt before any file is
    /// emitted; see [`super::btf`]).
    btf_maps: BtfMaps,
}

/// Patch base candidates looked at per path pattern.
const MAX_PATTERN_CANDIDATES: usize = 32;

/// A path with every digit run replaced by `#`: `usr/lib/modules/6.1.0-18-arm64/…` and
/// `libfoo.so.1.2.3` match their next versions.
fn pattern(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_digits = false;
    for c in path.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

fn walk_old(repo: &Repo, tree: &Checksum, prefix: &str, depth: usize, old: &mut Old) -> Result<()> {
    if depth > MAX_TREE_DEPTH {
        bail!("tree {prefix} is nested deeper than {MAX_TREE_DEPTH}");
    }
    // A subtree seen at another path is walked again: its paths are patch bases too.
    old.dirtrees.insert(*tree);
    old.dir_by_path.insert(prefix.to_string(), *tree);
    old.dir_by_pattern.entry(pattern(prefix)).or_insert(*tree);
    let t = repo.read_dirtree(tree)?;
    for (name, c) in &t.files {
        let p = format!("{prefix}/{name}");
        old.by_pattern.entry(pattern(&p)).or_default().push(*c);
        old.by_path.insert(p, *c);
        old.files.insert(*c);
    }
    for (name, st, sm) in &t.dirs {
        old.dirmetas.insert(*sm);
        walk_old(repo, st, &format!("{prefix}/{name}"), depth + 1, old)?;
    }
    Ok(())
}

/// B's objects the device lacks: metadata objects and (path, file object) pairs.
struct New {
    dirtrees: Vec<Vec<u8>>,
    /// Per new dirtree: A's dirtree at the same (or a renamed) path, by its number.
    dirtree_bases: Vec<Option<u32>>,
    dirmetas: Vec<Vec<u8>>,
    files: Vec<(String, Checksum)>,
    seen_trees: HashSet<Checksum>,
    seen_metas: HashSet<Checksum>,
    seen_files: HashSet<Checksum>,
}

fn walk_new(
    repo: &Repo,
    old: &Old,
    tree: &Checksum,
    meta: &Checksum,
    prefix: &str,
    depth: usize,
    new: &mut New,
) -> Result<()> {
    if depth > MAX_TREE_DEPTH {
        bail!("tree {prefix} is nested deeper than {MAX_TREE_DEPTH}");
    }
    if !old.dirmetas.contains(meta) && new.seen_metas.insert(*meta) {
        new.dirmetas
            .push(repo.read_metadata(ObjectKind::DirMeta, meta)?);
    }
    if old.dirtrees.contains(tree) || !new.seen_trees.insert(*tree) {
        return Ok(());
    }
    new.dirtrees
        .push(repo.read_metadata(ObjectKind::DirTree, tree)?);
    let base = old
        .dir_by_path
        .get(prefix)
        .or_else(|| old.dir_by_pattern.get(&pattern(prefix)))
        .and_then(|c| old.dirtree_numbers.get(c));
    new.dirtree_bases.push(base.copied());
    let t = repo.read_dirtree(tree)?;
    for (name, c) in &t.files {
        if !old.files.contains(c) && new.seen_files.insert(*c) {
            new.files.push((format!("{prefix}/{name}"), *c));
        }
    }
    for (name, st, sm) in &t.dirs {
        walk_new(
            repo,
            old,
            st,
            sm,
            &format!("{prefix}/{name}"),
            depth + 1,
            new,
        )?;
    }
    Ok(())
}

fn read_content(repo: &Repo, c: &Checksum, max: u64) -> Result<Option<Vec<u8>>> {
    let f = repo.open_file(c)?;
    let Some(file) = f.content else {
        return Ok(None);
    };
    if f.size > max {
        return Ok(None);
    }
    let mut v = Vec::with_capacity(f.size as usize);
    file.take(f.size)
        .read_to_end(&mut v)
        .with_context(|| format!("reading {}", f.path.display()))?;
    Ok(Some(v))
}

fn content_sha(repo: &Repo, old: &Old, c: &Checksum) -> Result<Option<[u8; 32]>> {
    if let Some(h) = old.content_hash.lock().ok().and_then(|m| m.get(c).copied()) {
        return Ok(Some(h));
    }
    let f = repo.open_file(c)?;
    let Some(mut file) = f.content else {
        return Ok(None);
    };
    let mut h = sha2::Sha256::new();
    io::copy(&mut file, &mut h).with_context(|| format!("reading {}", f.path.display()))?;
    let h: [u8; 32] = h.finalize().into();
    if let Ok(mut m) = old.content_hash.lock() {
        m.insert(*c, h);
    }
    Ok(Some(h))
}

/// An A object with exactly this content, if any (same size, same SHA-256).
fn find_same_content(
    repo: &Repo,
    old: &Old,
    size: u64,
    sha: &[u8; 32],
) -> Result<Option<Checksum>> {
    if old.by_size.get().is_none() {
        let mut m: HashMap<u64, Vec<Checksum>> = HashMap::new();
        for c in &old.files {
            let md = fs::symlink_metadata(repo.object_path(ObjectKind::File, c))
                .with_context(|| format!("object {c} of the source commit is missing"))?;
            // bare-user symlinks are small regular files too; content_sha filters them.
            m.entry(md.len()).or_default().push(*c);
        }
        let _ = old.by_size.set(m);
    }
    let candidates = old.by_size.get().and_then(|m| m.get(&size));
    for c in candidates.into_iter().flatten() {
        if content_sha(repo, old, c)?.as_ref() == Some(sha) {
            return Ok(Some(*c));
        }
    }
    Ok(None)
}

/// The best patch base in A for a file at `path` of `size` bytes: same path, else the same
/// path pattern with the closest size.
fn patch_base(repo: &Repo, old: &Old, path: &str, size: u64) -> Result<Option<(Checksum, u64)>> {
    let mut cands: Vec<Checksum> = Vec::new();
    if let Some(c) = old.by_path.get(path) {
        cands.push(*c);
    }
    if let Some(v) = old.by_pattern.get(&pattern(path)) {
        // Bounded: a pattern shared by many files (numbered names) is not worth scanning.
        cands.extend(
            v.iter()
                .filter(|c| Some(*c) != old.by_path.get(path))
                .take(MAX_PATTERN_CANDIDATES),
        );
    }
    let mut best: Option<(Checksum, u64)> = None;
    for (i, c) in cands.iter().enumerate() {
        let f = repo.open_file(c)?;
        if f.content.is_none() || f.size == 0 {
            continue;
        }
        if i == 0 && old.by_path.get(path) == Some(c) {
            return Ok(Some((*c, f.size)));
        }
        let better = match best {
            None => true,
            Some((_, s)) => f.size.abs_diff(size) < s.abs_diff(size),
        };
        if better {
            best = Some((*c, f.size));
        }
    }
    Ok(best)
}

type PartEncoder = liblzma::write::XzEncoder<HashWriter<BufWriter<File>>>;

/// Bytes handed to a part's compressor at a time.
const PART_CHUNK: usize = 1 << 20;
/// Parts whose compression may still run while the next one is being filled: LZMA2 at preset
/// 9e is about half as fast as bsdiff produces input, so compressing on other threads takes
/// it off the critical path (each encoder holds ~12× its dictionary).
const MAX_PARTS_IN_FLIGHT: usize = 2;

/// The part being filled: its compressor thread's input, the bytes not yet handed over.
struct OpenPart {
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
    compressor: std::thread::JoinHandle<Result<(u64, [u8; 32])>>,
    buf: Vec<u8>,
    /// Decompressed bytes so far.
    n: u64,
    objects: Vec<Checksum>,
}

/// A closed part whose compressor may still be running.
struct ClosingPart {
    compressor: std::thread::JoinHandle<Result<(u64, [u8; 32])>>,
    uncompressed_size: u64,
    objects: Vec<Checksum>,
}

struct PartWriter<'a> {
    dir: &'a Path,
    opts: &'a GenerateOptions,
    /// Finished parts, in order.
    parts: Vec<PartInfo>,
    current: Option<OpenPart>,
    closing: std::collections::VecDeque<ClosingPart>,
}

impl PartWriter<'_> {
    fn open(&mut self) -> Result<OpenPart> {
        let index = self.parts.len() + self.closing.len();
        let p = self.dir.join(part_name(index));
        let f = File::create(&p).with_context(|| format!("creating {}", p.display()))?;
        let hw = HashWriter {
            inner: BufWriter::new(f),
            hasher: sha2::Sha256::new(),
            count: 0,
        };
        // LZMA2 with 4-byte literal positions (lp=2, pb=2, lc=0): tuned on bsdiff output of
        // aarch64 code, where instructions are 32-bit words. The part's SHA-256 in the
        // superblock replaces xz's own check.
        let mut lz = liblzma::stream::LzmaOptions::new_preset(
            self.opts.part_preset | liblzma::stream::PRESET_EXTREME,
        )
        .context("xz options")?;
        lz.dict_size(self.opts.dict_size)
            .literal_context_bits(0)
            .literal_position_bits(2)
            .position_bits(2);
        let mut filters = liblzma::stream::Filters::new();
        filters.lzma2(&lz);
        let stream =
            liblzma::stream::Stream::new_stream_encoder(&filters, liblzma::stream::Check::None)
                .context("starting the xz encoder")?;
        let mut enc: PartEncoder = liblzma::write::XzEncoder::new_stream(hw, stream);
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        let compressor = std::thread::spawn(move || -> Result<(u64, [u8; 32])> {
            for chunk in rx {
                enc.write_all(&chunk)
                    .with_context(|| format!("writing {}", p.display()))?;
            }
            let mut hw = enc.finish().context("finishing a part")?;
            hw.flush().context("writing a part")?;
            let f = hw
                .inner
                .into_inner()
                .map_err(|e| e.into_error())
                .context("writing a part")?;
            f.sync_all().context("fsync of a part")?;
            Ok((hw.count, hw.hasher.finalize().into()))
        });
        let mut buf = Vec::with_capacity(PART_CHUNK);
        buf.extend_from_slice(PART_MAGIC);
        Ok(OpenPart {
            tx,
            compressor,
            buf,
            n: PART_MAGIC.len() as u64,
            objects: Vec::new(),
        })
    }

    fn write(&mut self, data: &[u8]) -> Result<()> {
        if self.current.is_none() {
            self.current = Some(self.open()?);
        }
        let Some(part) = self.current.as_mut() else {
            return Ok(());
        };
        part.buf.extend_from_slice(data);
        part.n += data.len() as u64;
        if part.buf.len() >= PART_CHUNK {
            let chunk = std::mem::replace(&mut part.buf, Vec::with_capacity(PART_CHUNK));
            if part.tx.send(chunk).is_err() {
                // The compressor stopped: its error says why.
                let part = self.current.take().context("no open part")?;
                drop(part.tx);
                return match part.compressor.join() {
                    Ok(Err(e)) => Err(e),
                    _ => bail!("the part compressor stopped"),
                };
            }
        }
        Ok(())
    }

    fn copy(&mut self, r: &mut dyn Read, size: u64) -> Result<()> {
        let mut buf = vec![0u8; 128 * 1024];
        let mut left = size;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = r.read(&mut buf[..want]).context("reading file content")?;
            if n == 0 {
                bail!("file content ended {left} bytes early");
            }
            self.write(&buf[..n])?;
            left -= n as u64;
        }
        Ok(())
    }

    fn end_object(&mut self, c: Checksum) -> Result<()> {
        let full = if let Some(part) = self.current.as_mut() {
            part.objects.push(c);
            part.n >= self.opts.max_part_size
        } else {
            false
        };
        if full {
            self.close()?;
        }
        Ok(())
    }

    /// Hand the open part's last bytes to its compressor; wait for the oldest ones while more
    /// than [`MAX_PARTS_IN_FLIGHT`] are compressing.
    fn close(&mut self) -> Result<()> {
        if let Some(mut part) = self.current.take() {
            part.buf.push(OP_END);
            // A send error means the compressor failed: joining it reports why.
            let _ = part.tx.send(part.buf);
            drop(part.tx);
            self.closing.push_back(ClosingPart {
                compressor: part.compressor,
                uncompressed_size: part.n + 1,
                objects: part.objects,
            });
        }
        while self.closing.len() > MAX_PARTS_IN_FLIGHT {
            self.collect_oldest()?;
        }
        Ok(())
    }

    fn collect_oldest(&mut self) -> Result<()> {
        let Some(done) = self.closing.pop_front() else {
            return Ok(());
        };
        let (size, sha256) = done
            .compressor
            .join()
            .map_err(|_| anyhow::anyhow!("the part compressor panicked"))??;
        self.parts.push(PartInfo {
            size,
            uncompressed_size: done.uncompressed_size,
            sha256,
            objects: done.objects,
        });
        Ok(())
    }

    /// Close the last part and wait for every compressor.
    fn finish(&mut self) -> Result<()> {
        self.close()?;
        while !self.closing.is_empty() {
            self.collect_oldest()?;
        }
        Ok(())
    }
}

fn generate_into(
    repo: &Repo,
    from: &Checksum,
    to: &Checksum,
    dir: &Path,
    opts: &GenerateOptions,
) -> Result<DeltaSummary> {
    let a = repo
        .read_commit(from)
        .with_context(|| format!("reading source commit {from}"))?;
    let b = repo
        .read_commit(to)
        .with_context(|| format!("reading target commit {to}"))?;
    let order = base_dirtree_order(repo, &a.root_tree)?;
    let mut old = Old {
        by_path: HashMap::new(),
        by_pattern: HashMap::new(),
        files: HashSet::new(),
        dirtrees: HashSet::new(),
        dirmetas: HashSet::new(),
        dir_by_path: HashMap::new(),
        dir_by_pattern: HashMap::new(),
        dirtree_numbers: order.iter().copied().zip(0u32..).collect(),
        by_size: std::sync::OnceLock::new(),
        content_hash: std::sync::Mutex::new(HashMap::new()),
        btf_maps: BtfMaps::default(),
    };
    old.dirmetas.insert(a.root_meta);
    walk_old(repo, &a.root_tree, "", 0, &mut old)?;
    let mut new = New {
        dirtrees: Vec::new(),
        dirtree_bases: Vec::new(),
        dirmetas: Vec::new(),
        files: Vec::new(),
        seen_trees: HashSet::new(),
        seen_metas: HashSet::new(),
        seen_files: HashSet::new(),
    };
    walk_new(repo, &old, &b.root_tree, &b.root_meta, "", 0, &mut new)?;
    // The device holds the bases as one zstd reference prefix: stop adding them at its limit.
    let mut base_dirtrees: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut prefix_len = 0u64;
    for b in &mut new.dirtree_bases {
        if let Some(k) = *b {
            let c = order
                .get(k as usize)
                .with_context(|| format!("A has no dirtree #{k}"))?;
            let data = repo.read_metadata(ObjectKind::DirTree, c)?;
            prefix_len += data.len() as u64;
            if prefix_len > MAX_BASE_PREFIX {
                *b = None;
            } else {
                base_dirtrees.insert(k, data);
            }
        }
    }
    if opts.btf {
        old.btf_maps = learn_btf_maps(repo, &old, &new.files)?;
    }

    let mut sum = DeltaSummary {
        from: Some(a.content_checksum()),
        to: Some(b.content_checksum()),
        metadata_objects: new.dirtrees.len() + new.dirmetas.len(),
        ..Default::default()
    };
    let mut pw = PartWriter {
        dir,
        opts,
        parts: Vec::new(),
        current: None,
        closing: std::collections::VecDeque::new(),
    };
    prepare_in_parallel(repo, &old, &new.files, opts, &mut |p| {
        write_prepared(repo, &mut pw, p, &mut sum)
    })?;
    pw.finish()?;
    let sb = Superblock {
        from: a.content_checksum(),
        to: b.content_checksum(),
        root_tree: b.root_tree,
        root_meta: b.root_meta,
        dirtrees: new.dirtrees,
        dirtree_bases: new.dirtree_bases,
        dirmetas: new.dirmetas,
        parts: pw.parts,
        btf: std::mem::take(&mut old.btf_maps),
    };
    let data = sb.encode(opts.level, &mut |k| {
        base_dirtrees
            .get(&k)
            .cloned()
            .with_context(|| format!("dirtree #{k} of A is not a base"))
    })?;
    let p: PathBuf = dir.join(SUPERBLOCK_NAME);
    crate::ostree::write_atomic(&p, &data, 0o644)?;
    sum.parts = sb.parts.len();
    sum.btf_map_runs = sb.btf.types.runs().len() + sb.btf.strings.runs().len();
    sum.dirtree_bases = sb.dirtree_bases.iter().flatten().count();
    sum.superblock_size = data.len() as u64;
    sum.total_size = sum.superblock_size + sb.parts.iter().map(|p| p.size).sum::<u64>();
    Ok(sum)
}

/// One file of B, ready to be written into a part: the whole op (or, for a file too large to
/// hold, the op's head and the object to stream after it) and what it counts for.
struct Prepared {
    object: Checksum,
    op: Vec<u8>,
    /// Content streamed from `object` after `op` (files sent whole that are not held).
    stream: Option<u64>,
    kind: PreparedKind,
}

impl Prepared {
    /// A patch op (`estimate`: its bytes, compressed alone).
    fn patched(object: Checksum, op: Vec<u8>, size: u64, estimate: usize, btf: bool) -> Prepared {
        Prepared {
            object,
            op,
            stream: None,
            kind: PreparedKind::Patched {
                size,
                estimate: estimate as u64,
                btf,
            },
        }
    }
}

enum PreparedKind {
    New { bytes: u64 },
    Patched { size: u64, estimate: u64, btf: bool },
    Copied,
}

/// Choose and compute the op for one file of B (the expensive part: patches). Shares nothing
/// mutable but `old`'s caches, so it runs on several threads.
fn prepare(
    repo: &Repo,
    old: &Old,
    path: &str,
    c: &Checksum,
    opts: &GenerateOptions,
) -> Result<Prepared> {
    let f = repo.open_file(c)?;
    let header = encode_header(&f.header);
    let Some(mut content) = f.content else {
        let mut op = vec![OP_NEW];
        op.extend_from_slice(&header);
        put_u64(&mut op, 0);
        return Ok(Prepared {
            object: *c,
            op,
            stream: None,
            kind: PreparedKind::New { bytes: 0 },
        });
    };
    let size = f.size;
    let base = if size <= MAX_PATCH_TARGET_SIZE && size > 0 {
        patch_base(repo, old, path, size)?
            .filter(|(_, s)| *s <= opts.max_patch_source_size.min(MAX_PATCH_SOURCE_SIZE))
    } else {
        None
    };
    // Small and medium files are read once into memory to try the alternatives.
    let data = if size <= MAX_PATCH_TARGET_SIZE {
        let mut v = Vec::with_capacity(size as usize);
        (&mut content)
            .take(size)
            .read_to_end(&mut v)
            .with_context(|| format!("reading {}", f.path.display()))?;
        if v.len() as u64 != size {
            bail!("object {c} changed while reading");
        }
        Some(v)
    } else {
        None
    };
    if let Some(data) = &data {
        let sha: [u8; 32] = sha2::Sha256::digest(data).into();
        if let Some(src) = find_same_content(repo, old, size, &sha)? {
            let mut op = vec![OP_COPY];
            op.extend_from_slice(&header);
            op.extend_from_slice(&src.0);
            return Ok(Prepared {
                object: *c,
                op,
                stream: None,
                kind: PreparedKind::Copied,
            });
        }
        if let Some((src, _)) = base {
            let raw = zstd::bulk::compress(data, 3).context("compressing")?;
            if let Some(oldc) = read_content(repo, &src, MAX_PATCH_SOURCE_SIZE)? {
                // bsdiff models code whose addresses moved (rebuilt kernel modules, binaries)
                // far better than a zstd reference; its raw output compresses in the part. Its
                // size there is estimated with a fast zstd level (the part's level does better).
                // A kernel object is diffed against its source with the BTF section renumbered
                // the way B's kernel numbers types and strings (what the device does too).
                let btf = btf_source(&old.btf_maps, &oldc);
                let bs = if oldc.len() as u64 <= BSDIFF_MAX_SOURCE {
                    let source = btf.as_ref().map_or(&oldc[..], |(_, _, s)| &s[..]);
                    let mut bs = Vec::new();
                    bsdiff::diff(source, data, &mut bs).context("bsdiff")?;
                    let est = zstd::bulk::compress(&bs, 3).context("compressing")?.len();
                    Some((bs, est))
                } else {
                    None
                };
                // A zstd patch needs its source and a window of source + target in the
                // device's memory: only small pairs get one (bsdiff applies streaming). Its
                // slow high levels are only spent where a quick level-9 try comes close to
                // the other candidates (level 19 saves ~10-20 % over 9, not more).
                let best_other = bs
                    .as_ref()
                    .map_or(raw.len(), |(_, est)| raw.len().min(*est));
                let patch = if (oldc.len() + data.len()) as u64 <= ZSTD_PATCH_MAX_PAIR {
                    let level = patch_level(oldc.len() + data.len(), opts.patch_level);
                    let quick = zstd_patch(&oldc, data, level.min(9))?;
                    if level > 9 && quick.len() * 4 < best_other * 5 {
                        zstd_patch(&oldc, data, level)?
                    } else {
                        quick
                    }
                } else {
                    raw.clone()
                };
                if let Some((bs, est)) = bs.filter(|(_, est)| *est < patch.len().min(raw.len())) {
                    let mut op = vec![if btf.is_some() {
                        OP_PATCH_BSDIFF_BTF
                    } else {
                        OP_PATCH_BSDIFF
                    }];
                    op.extend_from_slice(&header);
                    put_u64(&mut op, size);
                    op.extend_from_slice(&src.0);
                    if let Some((offset, len, _)) = &btf {
                        put_u64(&mut op, *offset);
                        put_u64(&mut op, *len);
                    }
                    put_u64(&mut op, bs.len() as u64);
                    op.extend_from_slice(&bs);
                    return Ok(Prepared::patched(*c, op, size, est, btf.is_some()));
                }
                if patch.len() < raw.len() {
                    let mut op = vec![OP_PATCH_ZSTD];
                    op.extend_from_slice(&header);
                    put_u64(&mut op, size);
                    op.extend_from_slice(&src.0);
                    put_u64(&mut op, patch.len() as u64);
                    op.extend_from_slice(&patch);
                    return Ok(Prepared::patched(*c, op, size, patch.len(), false));
                }
            }
        }
    }
    let mut op = vec![OP_NEW];
    op.extend_from_slice(&header);
    put_u64(&mut op, size);
    let stream = match data {
        Some(d) => {
            op.extend_from_slice(&d);
            None
        }
        None => Some(size),
    };
    Ok(Prepared {
        object: *c,
        op,
        stream,
        kind: PreparedKind::New { bytes: size },
    })
}

/// Write a prepared op into the parts, in B's order.
fn write_prepared(
    repo: &Repo,
    pw: &mut PartWriter<'_>,
    p: Prepared,
    sum: &mut DeltaSummary,
) -> Result<()> {
    pw.write(&p.op)?;
    if let Some(size) = p.stream {
        let mut file = repo
            .open_file(&p.object)?
            .content
            .with_context(|| format!("object {} has no content", p.object))?;
        pw.copy(&mut file, size)?;
    }
    match p.kind {
        PreparedKind::New { bytes } => {
            sum.new_files += 1;
            sum.new_bytes += bytes;
        }
        PreparedKind::Patched {
            size,
            estimate,
            btf,
        } => {
            sum.patched_files += 1;
            sum.patched_bytes += size;
            sum.patch_bytes += estimate;
            sum.btf_patched_files += usize::from(btf);
        }
        PreparedKind::Copied => sum.copied_files += 1,
    }
    pw.end_object(p.object)
}

/// Files prepared ahead of the one being written (bounds memory: each holds its patch).
const PREPARE_AHEAD: usize = 8;

/// Prepare every file on `opts.threads` workers (0: one per core) and hand the results to
/// `write` in the files' order. The first error stops the workers and is returned.
fn prepare_in_parallel(
    repo: &Repo,
    old: &Old,
    files: &[(String, Checksum)],
    opts: &GenerateOptions,
    write: &mut dyn FnMut(Prepared) -> Result<()>,
) -> Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{mpsc, Condvar, Mutex};
    let workers = match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    // Index of the next file to be written; workers wait while they are too far ahead.
    let written = (Mutex::new(0usize), Condvar::new());
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel::<(usize, Result<Prepared>)>();
        for _ in 0..workers {
            let tx = tx.clone();
            let (next, stop, written) = (&next, &stop, &written);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some((path, c)) = files.get(i) else {
                    break;
                };
                if let Ok(mut w) = written.0.lock() {
                    while i >= *w + PREPARE_AHEAD && !stop.load(Ordering::SeqCst) {
                        w = match written.1.wait(w) {
                            Ok(w) => w,
                            Err(_) => break,
                        };
                    }
                }
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let r = prepare(repo, old, path, c, opts)
                    .with_context(|| format!("adding {path} (object {c}) to the delta"));
                if tx.send((i, r)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        let mut ready = std::collections::BTreeMap::new();
        let mut want = 0;
        let mut result = Ok(());
        'receive: for (i, r) in rx {
            ready.insert(i, r);
            while let Some(r) = ready.remove(&want) {
                if let Err(e) = r.and_then(&mut *write) {
                    result = Err(e);
                    break 'receive;
                }
                want += 1;
                if let Ok(mut w) = written.0.lock() {
                    *w = want;
                }
                written.1.notify_all();
            }
        }
        if result.is_err() {
            stop.store(true, Ordering::SeqCst);
            written.1.notify_all();
        } else if want != files.len() {
            result = Err(anyhow::anyhow!(
                "prepared {want} of {} files: a worker stopped",
                files.len()
            ));
        }
        result
    })
}

/// `old` with its `.BTF` section rewritten through the maps: (section offset, length, bytes).
fn btf_source(maps: &BtfMaps, old: &[u8]) -> Option<(u64, u64, Vec<u8>)> {
    if maps.is_empty() {
        return None;
    }
    let (offset, len) = find_btf(old)?;
    let mut source = old.to_vec();
    let section = source.get_mut(offset as usize..(offset + len) as usize)?;
    maps.apply(section).ok()?;
    Some((offset, len, source))
}

/// Learn the BTF maps from every ELF file of B whose patch base in A is an ELF file, both with
/// a `.BTF` section whose records line up.
fn learn_btf_maps(repo: &Repo, old: &Old, files: &[(String, Checksum)]) -> Result<BtfMaps> {
    let mut builder = MapBuilder::default();
    for (path, c) in files {
        let f = repo.open_file(c)?;
        let (size, Some(mut content)) = (f.size, f.content) else {
            continue;
        };
        let mut magic = [0u8; 4];
        if size > BSDIFF_MAX_SOURCE
            || content.read_exact(&mut magic).is_err()
            || &magic != b"\x7fELF"
        {
            continue;
        }
        let Some((base, _)) = patch_base(repo, old, path, size)? else {
            continue;
        };
        let (Some(new), Some(oldc)) = (
            read_content(repo, c, BSDIFF_MAX_SOURCE)?,
            read_content(repo, &base, BSDIFF_MAX_SOURCE)?,
        ) else {
            continue;
        };
        let section = |d: &[u8]| {
            let (o, l) = find_btf(d)?;
            d.get(o as usize..(o + l) as usize).map(<[u8]>::to_vec)
        };
        if let (Some(a), Some(b)) = (section(&oldc), section(&new)) {
            builder.add_pair(&a, &b);
        }
    }
    log::debug!("BTF maps learnt from {} file pairs", builder.pairs);
    Ok(builder.build())
}

/// Larger sources are not bsdiffed (suffix sorting costs ~9× the source in publisher memory).
const BSDIFF_MAX_SOURCE: u64 = 32 << 20;

/// Largest source + target of a zstd patch: applying one holds the source and a window of this
/// size in memory, which must fit the device's budget next to the part decoder.
const ZSTD_PATCH_MAX_PAIR: u64 = 2 << 20;

/// The zstd level for a patch whose reference plus target are `total` bytes: `max` for small
/// files; lower for big ones, where the optimal parsers of levels 16+ spend minutes indexing
/// the reference for a few percent (measured on Debian's kernel modules and firmware).
fn patch_level(total: usize, max: i32) -> i32 {
    if total <= 2 << 20 {
        max
    } else if total <= 16 << 20 {
        max.min(15)
    } else {
        max.min(9)
    }
}
