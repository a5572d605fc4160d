//! Resumable, journaled blob downloads into a blob directory (format in the module docs of
//! [`crate::fetch`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sha2::{Digest as _, Sha256};

use super::client::{error_text, header, is_retryable_status, retry_after, RegistryClient};
use super::{error_class, ErrorClass, NetworkError, NoSpace, RateLimiter, RetryPolicy};
use crate::fsutil;
use crate::progress::{Event, Progress};
use crate::source::digest::{hex, sha256_hex};
use crate::source::{Descriptor, SourceOptions, VerificationError};

mod ranges;
pub use ranges::{remove_ranges, Ranges};

/// Read buffer per download.
const BUF_SIZE: usize = 64 * 1024;
/// Writes to the partial file pass a crash point (`crate::fsutil`) once per this many bytes of
/// the blob (at aligned offsets).
const WRITE_UNIT: u64 = 64 * 1024;
/// Journal format version.
const JOURNAL_VERSION: u32 = 1;
/// Largest journal we read (a chunk hash list for a multi-GiB blob is still far below this).
const MAX_JOURNAL_SIZE: u64 = 16 * 1024 * 1024;
/// Minimum interval between two byte-progress events of one blob.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Journal {
    version: u32,
    digest: String,
    size: u64,
    chunk_size: u64,
    #[serde(default)]
    etag: Option<String>,
    #[serde(default)]
    last_modified: Option<String>,
    /// SHA-256 (hex) of each complete chunk of the partial file, in order.
    chunks: Vec<String>,
}

/// Downloads blobs of one repository into a blob directory.
pub struct BlobFetcher {
    client: Arc<RegistryClient>,
    repo: String,
    dir: PathBuf,
    chunk_size: u64,
    retry: RetryPolicy,
    concurrency: usize,
    headroom: u64,
    limiter: Option<Arc<RateLimiter>>,
    progress: Option<Arc<dyn Progress>>,
}

impl BlobFetcher {
    /// Creates `opts.blob_dir` if needed.
    pub fn new(
        client: Arc<RegistryClient>,
        repo: &str,
        opts: &SourceOptions,
    ) -> Result<BlobFetcher> {
        fsutil::create_dir_all(&opts.blob_dir)
            .with_context(|| format!("creating blob directory {}", opts.blob_dir.display()))?;
        Ok(BlobFetcher {
            client,
            repo: repo.to_string(),
            dir: opts.blob_dir.clone(),
            chunk_size: opts.chunk_size.max(4096),
            retry: opts.retry.clone(),
            concurrency: opts.concurrency.max(1),
            headroom: opts.space_headroom,
            limiter: opts
                .max_bytes_per_sec
                .map(|r| Arc::new(RateLimiter::new(r))),
            progress: opts.progress.clone(),
        })
    }

    /// Where the complete blob lives (whether or not it is there yet).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.dir.join(sha256_hex(digest)?))
    }

    fn emit(&self, e: Event) {
        if let Some(p) = &self.progress {
            p.event(&e);
        }
    }

    /// Whether the complete blob is in place. Download state a crash left next to it (the
    /// journal is removed after the blob's rename) is removed then.
    fn is_complete(&self, desc: &Descriptor) -> Result<bool> {
        let p = self.blob_path(&desc.digest)?;
        let complete = fs::metadata(&p)
            .map(|m| m.is_file() && m.len() == desc.size)
            .unwrap_or(false);
        if complete {
            let hex = sha256_hex(&desc.digest)?;
            for ext in ["journal", "journal.tmp", "partial"] {
                let stale = self.dir.join(format!("{hex}.{ext}"));
                if stale.symlink_metadata().is_ok() {
                    remove_warn(&stale);
                }
            }
        }
        Ok(complete)
    }

    /// Bytes already on disk for an incomplete blob (partial file, counted optimistically).
    fn partial_len(&self, desc: &Descriptor) -> u64 {
        let Ok(hex) = sha256_hex(&desc.digest) else {
            return 0;
        };
        fs::metadata(self.dir.join(format!("{hex}.partial")))
            .map(|m| m.len().min(desc.size))
            .unwrap_or(0)
    }

    /// Check free space for the blobs still missing, then download them, `concurrency` at a time.
    pub fn fetch_all(&self, descs: &[Descriptor]) -> Result<()> {
        let mut missing = Vec::new();
        for d in descs {
            if !self.is_complete(d)? && !missing.iter().any(|m: &Descriptor| m.digest == d.digest) {
                missing.push(d.clone());
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let need: u64 = missing
            .iter()
            .map(|d| d.size - self.partial_len(d))
            .sum::<u64>()
            + self.headroom;
        check_space(&self.dir, need)?;
        let queue = Mutex::new(missing);
        let failed = AtomicBool::new(false);
        let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..self.concurrency {
                s.spawn(|| loop {
                    if failed.load(Ordering::SeqCst) {
                        return;
                    }
                    let next = queue.lock().ok().and_then(|mut q| q.pop());
                    let Some(desc) = next else {
                        return;
                    };
                    if let Err(e) = self.fetch(&desc) {
                        failed.store(true, Ordering::SeqCst);
                        if let Ok(mut fe) = first_error.lock() {
                            fe.get_or_insert(e);
                        }
                        return;
                    }
                });
            }
        });
        match first_error.into_inner() {
            Ok(Some(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// Download one blob (resuming a partial download) and return the path of the complete,
    /// digest-checked file. A complete blob already in the directory is not downloaded again.
    pub fn fetch(&self, desc: &Descriptor) -> Result<PathBuf> {
        let hex = sha256_hex(&desc.digest)?;
        let done = self.dir.join(hex);
        if self.is_complete(desc)? {
            return Ok(done);
        }
        self.emit(Event::LayerStart {
            digest: desc.digest.clone(),
            size: desc.size,
        });
        let mut dl = Download::open(self, desc)
            .with_context(|| format!("preparing download of blob {}", desc.digest))?;
        let result = dl.run(self);
        match result {
            Ok(()) => {
                self.emit(Event::LayerDone {
                    digest: desc.digest.clone(),
                });
                Ok(done)
            }
            Err(e) => {
                if error_class(&e) == Some(ErrorClass::Verification) {
                    // bad content: start over next time
                    dl.discard();
                }
                Err(e.context(format!(
                    "downloading blob {} ({} bytes) from {}/{}",
                    desc.digest,
                    desc.size,
                    self.client.host(),
                    self.repo
                )))
            }
        }
    }
}

/// Remove a blob and its download state from the blob directory (after it was imported).
pub fn remove_blob(dir: &Path, digest: &str) -> Result<()> {
    let hex = sha256_hex(digest)?;
    for name in [
        hex.to_string(),
        format!("{hex}.partial"),
        format!("{hex}.journal"),
    ] {
        let p = dir.join(&name);
        match fsutil::crash_point("unlink").and_then(|()| fs::remove_file(&p)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
        }
    }
    Ok(())
}

/// Download `descs` into `opts.blob_dir` through `client` (see [`BlobFetcher::fetch_all`]).
pub fn download_blobs(
    client: Arc<RegistryClient>,
    repo: &str,
    descs: &[Descriptor],
    opts: &SourceOptions,
) -> Result<()> {
    BlobFetcher::new(client, repo, opts)?.fetch_all(descs)
}

fn check_space(dir: &Path, need: u64) -> Result<()> {
    let st = nix::sys::statvfs::statvfs(dir)
        .with_context(|| format!("checking free space in {}", dir.display()))?;
    let available = (st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64);
    if available < need {
        return Err(NoSpace {
            path: dir.to_path_buf(),
            needed: need,
            available,
        }
        .into());
    }
    Ok(())
}

/// What a response said about where its body starts.
enum Start {
    /// Body begins at this blob offset.
    At(u64),
    /// The blob changed on the server (If-Range did not match): begin again at 0.
    Restart,
}

/// The state of one blob download.
struct Download {
    desc: Descriptor,
    dir: PathBuf,
    partial: PathBuf,
    journal_path: PathBuf,
    done: PathBuf,
    file: File,
    journal: Journal,
    /// Bytes of the blob in the partial file that are hashed into `hasher`.
    offset: u64,
    hasher: Sha256,
    chunk_hasher: Sha256,
    last_event: Instant,
}

impl Download {
    fn open(f: &BlobFetcher, desc: &Descriptor) -> Result<Download> {
        let hex = sha256_hex(&desc.digest)?;
        let partial = f.dir.join(format!("{hex}.partial"));
        let journal_path = f.dir.join(format!("{hex}.journal"));
        let fresh = Journal {
            version: JOURNAL_VERSION,
            digest: desc.digest.clone(),
            size: desc.size,
            chunk_size: f.chunk_size,
            etag: None,
            last_modified: None,
            chunks: Vec::new(),
        };
        let journal = match read_journal(&journal_path) {
            Some(j)
                if j.version == JOURNAL_VERSION
                    && j.digest == desc.digest
                    && j.size == desc.size
                    && j.chunk_size == f.chunk_size =>
            {
                j
            }
            _ => fresh,
        };
        let file = fsutil::crash_point("open partial")
            .and_then(|()| {
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&partial)
            })
            .with_context(|| format!("opening {}", partial.display()))?;
        let mut dl = Download {
            desc: desc.clone(),
            dir: f.dir.clone(),
            partial,
            journal_path,
            done: f.dir.join(hex),
            file,
            journal,
            offset: 0,
            hasher: Sha256::new(),
            chunk_hasher: Sha256::new(),
            last_event: Instant::now(),
        };
        dl.recover()?;
        Ok(dl)
    }

    /// Re-hash the journaled chunks of the partial file; keep the good prefix, drop the rest.
    fn recover(&mut self) -> Result<()> {
        let cs = self.journal.chunk_size;
        let mut good = 0usize;
        self.hasher = Sha256::new();
        self.file.seek(SeekFrom::Start(0))?;
        let mut buf = vec![0u8; BUF_SIZE];
        'chunks: for (i, want) in self.journal.chunks.iter().enumerate() {
            let start = i as u64 * cs;
            let mut left = cs.min(self.desc.size.saturating_sub(start));
            let mut chunk = Sha256::new();
            let mut prefix = self.hasher.clone();
            while left > 0 {
                let n = (left as usize).min(BUF_SIZE);
                if let Err(e) = self.file.read_exact(&mut buf[..n]) {
                    log::debug!(
                        "partial file {} shorter than its journal: {e}",
                        self.partial.display()
                    );
                    break 'chunks;
                }
                chunk.update(&buf[..n]);
                prefix.update(&buf[..n]);
                left -= n as u64;
            }
            if hex(&chunk.finalize()) != *want {
                log::warn!(
                    "partial download {} is damaged in chunk {i}; fetching again from byte {start}",
                    self.partial.display()
                );
                break;
            }
            self.hasher = prefix;
            good = i + 1;
        }
        self.journal.chunks.truncate(good);
        self.offset = (good as u64 * cs).min(self.desc.size);
        fsutil::crash_point("truncate")
            .and_then(|()| self.file.set_len(self.offset))
            .with_context(|| format!("truncating {}", self.partial.display()))?;
        self.file.seek(SeekFrom::Start(self.offset))?;
        if self.offset > 0 {
            log::info!(
                "resuming blob {} at byte {} of {}",
                self.desc.digest,
                self.offset,
                self.desc.size
            );
        }
        Ok(())
    }

    fn rehash_prefix(&mut self, len: u64) -> Result<()> {
        self.hasher = Sha256::new();
        self.file.seek(SeekFrom::Start(0))?;
        let mut r = (&self.file).take(len);
        let mut buf = vec![0u8; BUF_SIZE];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            self.hasher.update(&buf[..n]);
        }
        Ok(())
    }

    fn restart(&mut self) -> Result<()> {
        self.journal.chunks.clear();
        self.journal.etag = None;
        self.journal.last_modified = None;
        self.offset = 0;
        self.hasher = Sha256::new();
        self.chunk_hasher = Sha256::new();
        fsutil::crash_point("truncate")
            .and_then(|()| self.file.set_len(0))
            .with_context(|| format!("truncating {}", self.partial.display()))?;
        self.file.seek(SeekFrom::Start(0))?;
        self.save_journal()
    }

    fn discard(&mut self) {
        for p in [&self.partial, &self.journal_path] {
            let _ = fsutil::crash_point("unlink").and_then(|()| fs::remove_file(p));
        }
    }

    /// Replace the journal: a temp file next to it (a fixed name, so a crash leaves at most one,
    /// overwritten next time), fsync, rename. The directory is not synced: a journal rename lost
    /// in a power cut only means resuming from an older, still valid journal.
    fn save_journal(&self) -> Result<()> {
        let tmp = self.journal_path.with_extension("journal.tmp");
        let data = serde_json::to_vec(&self.journal)?;
        let mut f = fsutil::create(&tmp)?;
        fsutil::write_all(&mut f, &data, &tmp)?;
        fsutil::fsync_data(&f, &tmp)?;
        fsutil::rename(&tmp, &self.journal_path)
    }

    /// Append bytes that belong at `self.offset`.
    fn write(&mut self, f: &BlobFetcher, mut data: &[u8]) -> Result<()> {
        let cs = self.journal.chunk_size;
        let total = data.len() as u64;
        if self.offset + data.len() as u64 > self.desc.size {
            return Err(VerificationError::new(format!(
                "blob {} is larger than the {} bytes its descriptor declares",
                self.desc.digest, self.desc.size
            ))
            .into());
        }
        while !data.is_empty() {
            // Pieces end at chunk and WRITE_UNIT boundaries; a crash point precedes each piece
            // that starts a unit, so their number depends on the blob, not on how the network
            // split it into reads (the crash harness kills at the same place every run).
            let in_chunk = self.offset % cs;
            let in_unit = self.offset % WRITE_UNIT;
            let n = ((cs - in_chunk).min(WRITE_UNIT - in_unit) as usize).min(data.len());
            let (now, rest) = data.split_at(n);
            if in_unit == 0 {
                fsutil::write_all(&mut self.file, now, &self.partial)?;
            } else {
                self.file
                    .write_all(now)
                    .with_context(|| format!("writing {}", self.partial.display()))?;
            }
            self.hasher.update(now);
            self.chunk_hasher.update(now);
            self.offset += n as u64;
            data = rest;
            if self.offset.is_multiple_of(cs) {
                // a chunk is complete: make it durable, then record it
                fsutil::fsync_data(&self.file, &self.partial)?;
                let h = std::mem::take(&mut self.chunk_hasher);
                self.journal.chunks.push(hex(&h.finalize()));
                self.save_journal()?;
            }
        }
        if let Some(l) = &f.limiter {
            l.consume(total);
        }
        if self.last_event.elapsed() >= PROGRESS_INTERVAL || self.offset == self.desc.size {
            self.last_event = Instant::now();
            f.emit(Event::Bytes {
                digest: self.desc.digest.clone(),
                done: self.offset,
                total: self.desc.size,
            });
        }
        Ok(())
    }

    fn run(&mut self, f: &BlobFetcher) -> Result<()> {
        // the chunk hasher must cover the bytes of the current chunk already on disk
        let cs = self.journal.chunk_size;
        self.chunk_hasher = Sha256::new();
        debug_assert!(self.offset.is_multiple_of(cs) || self.offset == self.desc.size);
        let mut failures = 0u32;
        let mut repaired = false;
        loop {
            if self.offset == self.desc.size {
                if self.finish()? {
                    return Ok(());
                }
                if repaired {
                    return Err(VerificationError::new(format!(
                        "blob {} from the registry does not match its digest even after fetching it again",
                        self.desc.digest
                    ))
                    .into());
                }
                repaired = true;
                self.repair(f)?;
                continue;
            }
            let before = self.offset;
            let err = match self.attempt(f) {
                Ok(()) => None,
                Err(e) => {
                    if !matches!(error_class(&e), Some(ErrorClass::Network)) {
                        return Err(e);
                    }
                    Some(e)
                }
            };
            if self.offset > before {
                failures = 0;
            } else {
                failures += 1;
            }
            if let Some(e) = err {
                if failures >= f.retry.max_attempts.max(1) {
                    return Err(e.context(format!(
                        "giving up after {failures} attempts without progress"
                    )));
                }
                let delay = e
                    .downcast_ref::<RetryAfter>()
                    .map(|r| r.0.min(f.retry.max_delay))
                    .unwrap_or_else(|| f.retry.delay(failures.max(1)));
                log::info!("blob {}: {e:#}; retrying in {delay:?}", self.desc.digest);
                std::thread::sleep(delay);
            }
        }
    }

    /// One request: stream the response into the partial file until it ends or fails.
    fn attempt(&mut self, f: &BlobFetcher) -> Result<()> {
        let if_range = self
            .journal
            .etag
            .clone()
            .or(self.journal.last_modified.clone());
        let mut resp = f.client.blob_request(
            &f.repo,
            &self.desc.digest,
            self.offset,
            None,
            if_range.as_deref(),
        )?;
        let status = resp.status().as_u16();
        let start = match status {
            200 => {
                let etag = header(&resp, "etag");
                if self.offset > 0
                    && if_range.is_some()
                    && etag.is_some()
                    && etag != self.journal.etag
                {
                    Start::Restart
                } else {
                    Start::At(0)
                }
            }
            206 => {
                let cr = header(&resp, "content-range").unwrap_or_default();
                let (first, total) = parse_content_range(&cr).with_context(|| {
                    format!("registry answered 206 with a bad Content-Range {cr:?}")
                })?;
                if let Some(total) = total {
                    if total != self.desc.size {
                        return Err(VerificationError::new(format!(
                            "registry says blob {} is {total} bytes, the manifest says {}",
                            self.desc.digest, self.desc.size
                        ))
                        .into());
                    }
                }
                if first != self.offset {
                    return Err(NetworkError::new(format!(
                        "asked for bytes from {} but the registry sent a range starting at {first}",
                        self.offset
                    ))
                    .into());
                }
                Start::At(first)
            }
            416 => {
                let cr = header(&resp, "content-range").unwrap_or_default();
                let total = cr
                    .strip_prefix("bytes */")
                    .and_then(|t| t.trim().parse::<u64>().ok());
                // the body length lies (distribution 2.8.2): do not read it
                drop(resp);
                if let Some(t) = total {
                    if t != self.desc.size {
                        return Err(VerificationError::new(format!(
                            "registry says blob {} is {t} bytes, the manifest says {}",
                            self.desc.digest, self.desc.size
                        ))
                        .into());
                    }
                }
                log::warn!(
                    "blob {}: range from {} not satisfiable; starting over",
                    self.desc.digest,
                    self.offset
                );
                self.restart()?;
                return Err(NetworkError::new("HTTP 416 Range Not Satisfiable").into());
            }
            404 => bail!(
                "blob {} not found in {}/{} (HTTP 404: {})",
                self.desc.digest,
                f.client.host(),
                f.repo,
                error_text(&mut resp)
            ),
            s if is_retryable_status(s) => {
                let wait = retry_after(&resp);
                let msg = format!("HTTP {s}: {}", error_text(&mut resp));
                let e = anyhow::Error::new(NetworkError::new(msg));
                return Err(match wait {
                    Some(w) => e.context(RetryAfter(w)),
                    None => e,
                });
            }
            s => bail!(
                "registry answered HTTP {s} for blob {}: {}",
                self.desc.digest,
                error_text(&mut resp)
            ),
        };
        if self.journal.etag.is_none() || matches!(start, Start::Restart) {
            let etag = header(&resp, "etag").filter(|e| !e.starts_with("W/"));
            let lm = header(&resp, "last-modified");
            if matches!(start, Start::Restart) {
                log::warn!(
                    "blob {} changed on the server; starting over",
                    self.desc.digest
                );
                self.restart()?;
            }
            if etag != self.journal.etag || lm != self.journal.last_modified {
                self.journal.etag = etag;
                self.journal.last_modified = lm;
                self.save_journal()?;
            }
        }
        let mut skip = match start {
            Start::At(first) => self.offset - first,
            Start::Restart => 0,
        };
        if skip > 0 {
            log::info!(
                "blob {}: registry ignored the Range request; skipping {skip} bytes we have",
                self.desc.digest
            );
        }
        let mut body = resp.body_mut().as_reader();
        let mut buf = vec![0u8; BUF_SIZE];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(NetworkError::new(format!(
                        "reading blob {} at byte {}: {e}",
                        self.desc.digest, self.offset
                    ))
                    .into())
                }
            };
            let mut data = &buf[..n];
            if skip > 0 {
                let s = (skip as usize).min(data.len());
                data = &data[s..];
                skip -= s as u64;
            }
            if !data.is_empty() {
                self.write(f, data)?;
            }
        }
        if self.offset < self.desc.size {
            return Err(NetworkError::new(format!(
                "connection ended at byte {} of {}",
                self.offset, self.desc.size
            ))
            .into());
        }
        // a body that goes on past the declared size is caught in write()
        Ok(())
    }

    /// All bytes are there: check the digest and move the blob into place. False on mismatch.
    fn finish(&mut self) -> Result<bool> {
        let actual = format!("sha256:{}", hex(&self.hasher.clone().finalize()));
        if actual != self.desc.digest {
            log::warn!(
                "blob {} downloaded with digest {actual}; looking for the damaged chunk",
                self.desc.digest
            );
            return Ok(false);
        }
        fsutil::fsync(&self.file, &self.partial)?;
        fsutil::rename(&self.partial, &self.done)?;
        fsutil::fsync_dir(&self.dir)?;
        remove_warn(&self.journal_path);
        Ok(true)
    }

    /// The whole blob is there but its digest is wrong: something was corrupted in transit.
    /// Fetch it again chunk by chunk, replace the first chunk that differs, and stop as soon as
    /// the digest matches. Costs at most one more download; usually less.
    fn repair(&mut self, f: &BlobFetcher) -> Result<()> {
        let cs = self.journal.chunk_size;
        let size = self.desc.size;
        let nchunks = size.div_ceil(cs);
        for i in 0..nchunks {
            let start = i * cs;
            let end = (start + cs).min(size);
            let fresh = self.fetch_range(f, start, end)?;
            let fresh_hash = hex(&Sha256::digest(&fresh));
            let have_hash = match self.journal.chunks.get(i as usize) {
                Some(h) => h.clone(),
                None => {
                    let mut have = vec![0u8; (end - start) as usize];
                    self.file.seek(SeekFrom::Start(start))?;
                    self.file.read_exact(&mut have)?;
                    hex(&Sha256::digest(&have))
                }
            };
            if fresh_hash == have_hash {
                continue;
            }
            log::info!("blob {}: chunk {i} differed; replaced", self.desc.digest);
            self.file.seek(SeekFrom::Start(start))?;
            fsutil::write_all(&mut self.file, &fresh, &self.partial)?;
            fsutil::fsync_data(&self.file, &self.partial)?;
            if let Some(h) = self.journal.chunks.get_mut(i as usize) {
                *h = fresh_hash;
                self.save_journal()?;
            }
            self.rehash_prefix(size)?;
            if format!("sha256:{}", hex(&self.hasher.clone().finalize())) == self.desc.digest {
                return Ok(());
            }
        }
        self.file.seek(SeekFrom::Start(size))?;
        Ok(())
    }

    /// Fetch bytes `[start, end)` with retries (used by repair; bounded by the chunk size).
    fn fetch_range(&self, f: &BlobFetcher, start: u64, end: u64) -> Result<Vec<u8>> {
        let mut failures = 0;
        loop {
            let r = (|| -> Result<Vec<u8>> {
                let mut resp = f.client.blob_request(
                    &f.repo,
                    &self.desc.digest,
                    start,
                    Some(end - 1),
                    None,
                )?;
                let status = resp.status().as_u16();
                let skip = match status {
                    206 => {
                        let cr = header(&resp, "content-range").unwrap_or_default();
                        let (first, _) = parse_content_range(&cr)
                            .with_context(|| format!("bad Content-Range {cr:?}"))?;
                        if first != start {
                            return Err(
                                NetworkError::new("range starts at the wrong offset").into()
                            );
                        }
                        0
                    }
                    200 => start,
                    s if is_retryable_status(s) => {
                        return Err(NetworkError::new(format!("HTTP {s}")).into())
                    }
                    s => bail!("registry answered HTTP {s}: {}", error_text(&mut resp)),
                };
                let mut r = resp.body_mut().as_reader();
                io::copy(&mut (&mut r).take(skip), &mut io::sink())
                    .map_err(|e| NetworkError::new(e.to_string()))?;
                let mut out = Vec::with_capacity((end - start) as usize);
                (&mut r)
                    .take(end - start)
                    .read_to_end(&mut out)
                    .map_err(|e| NetworkError::new(e.to_string()))?;
                if out.len() as u64 != end - start {
                    return Err(NetworkError::new("short range response").into());
                }
                if let Some(l) = &f.limiter {
                    l.consume(out.len() as u64);
                }
                Ok(out)
            })();
            match r {
                Ok(v) => return Ok(v),
                Err(e) if error_class(&e) == Some(ErrorClass::Network) => {
                    failures += 1;
                    if failures >= f.retry.max_attempts.max(1) {
                        return Err(e);
                    }
                    std::thread::sleep(f.retry.delay(failures));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Remove download state that is no longer needed; a failure only leaves a stale file (removed
/// with the blob), so it is logged, not returned.
fn remove_warn(p: &Path) {
    if let Err(e) = fsutil::remove_file(p) {
        log::warn!("{e:#}");
    }
}

/// Context marker carrying a server's `Retry-After`.
#[derive(Debug)]
struct RetryAfter(Duration);

impl std::fmt::Display for RetryAfter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "server asked to retry after {:?}", self.0)
    }
}

fn read_journal(path: &Path) -> Option<Journal> {
    let meta = fs::metadata(path).ok()?;
    if meta.len() > MAX_JOURNAL_SIZE {
        return None;
    }
    let bytes = fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(j) => Some(j),
        Err(e) => {
            log::warn!(
                "ignoring unreadable download journal {}: {e}",
                path.display()
            );
            None
        }
    }
}

/// `bytes FIRST-LAST/TOTAL` (TOTAL may be `*`) → (FIRST, TOTAL).
fn parse_content_range(s: &str) -> Option<(u64, Option<u64>)> {
    let rest = s.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let first: u64 = first.trim().parse().ok()?;
    let last: u64 = last.trim().parse().ok()?;
    if last < first {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((first, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 0-99/3002453"),
            Some((0, Some(3002453)))
        );
        assert_eq!(parse_content_range("bytes 100-199/*"), Some((100, None)));
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("bytes 5-1/100"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }
}
