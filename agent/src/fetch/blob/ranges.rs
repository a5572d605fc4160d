//! Resumable downloads of byte ranges of a blob (the TOC and the missing files of a
//! zstd:chunked layer), next to the whole-blob downloads of the parent module:
//!
//! - `<hex>.ranges/<start>-<end>`: a complete range (renamed into place after an fsync);
//! - `<hex>.ranges/<start>-<end>.partial`: the bytes received so far, and
//!   `<start>-<end>.synced`: how many of them are durable (written after each fsync, every
//!   `chunk_size` bytes). A restart continues from there with a `Range` request, so a kill or a
//!   power loss costs at most one chunk per range.
//!
//! Ranges carry no digest of their own: the consumer checks every file it decompresses from
//! them against the (signed) TOC, and falls back to the whole blob on a mismatch. A server that
//! answers a Range request with the whole blob (HTTP 200) gets the connection closed at once,
//! and the caller is told ranges are unsupported (`Ok(None)`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::{
    check_space, error_text, header, is_retryable_status, parse_content_range, retry_after,
    BlobFetcher, BUF_SIZE, PROGRESS_INTERVAL,
};
use crate::fetch::{error_class, ErrorClass, NetworkError};
use crate::progress::Event;
use crate::source::digest::sha256_hex;
use crate::source::{Descriptor, VerificationError};

/// Fetched ranges of one blob: read any `[start, end)` inside one of them.
#[derive(Debug)]
pub struct Ranges {
    kind: RangesKind,
}

#[derive(Debug)]
enum RangesKind {
    /// The whole blob is on disk (downloaded earlier).
    Whole(PathBuf),
    /// Range files in a directory, sorted by start.
    Files(PathBuf, Vec<(u64, u64)>),
}

impl Ranges {
    /// A reader over bytes `[start, end)` of the blob; they must lie inside one fetched range.
    pub fn open(&self, start: u64, end: u64) -> Result<io::Take<File>> {
        let (path, base) = match &self.kind {
            RangesKind::Whole(p) => (p.clone(), 0),
            RangesKind::Files(dir, rs) => {
                let i = rs.partition_point(|r| r.0 <= start);
                let r = i
                    .checked_sub(1)
                    .map(|i| rs[i])
                    .filter(|r| end <= r.1 && start < end)
                    .with_context(|| {
                        format!("blob bytes {start}..{end} were not fetched (internal error)")
                    })?;
                (dir.join(format!("{}-{}", r.0, r.1)), r.0)
            }
        };
        let mut f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        f.seek(SeekFrom::Start(start - base))
            .with_context(|| format!("seeking in {}", path.display()))?;
        Ok(f.take(end - start))
    }

    /// Read `[start, end)` into memory (small ranges: the TOC).
    pub fn read(&self, start: u64, end: u64) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.open(start, end)?
            .read_to_end(&mut v)
            .context("reading a fetched range")?;
        if v.len() as u64 != end - start {
            bail!("fetched range {start}..{end} is short");
        }
        Ok(v)
    }
}

/// The directory of a blob's fetched ranges.
pub fn ranges_dir(dir: &Path, digest: &str) -> Result<PathBuf> {
    Ok(dir.join(format!("{}.ranges", sha256_hex(digest)?)))
}

impl BlobFetcher {
    /// Fetch byte ranges `[start, end)` of a blob (sorted, not overlapping, inside the blob)
    /// into the blob directory, resuming what an earlier run fetched. `Ok(None)`: the registry
    /// does not honour Range requests (fetch the whole blob instead). When the whole blob is
    /// already downloaded, nothing is fetched.
    pub fn fetch_ranges(&self, desc: &Descriptor, ranges: &[(u64, u64)]) -> Result<Option<Ranges>> {
        if self.is_complete(desc)? {
            return Ok(Some(Ranges {
                kind: RangesKind::Whole(self.blob_path(&desc.digest)?),
            }));
        }
        let mut prev = 0;
        for &(s, e) in ranges {
            if s >= e || s < prev || e > desc.size {
                bail!(
                    "bad range list for blob {} ({} bytes): {s}..{e} (internal error)",
                    desc.digest,
                    desc.size
                );
            }
            prev = e;
        }
        let dir = ranges_dir(&self.dir, &desc.digest)?;
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let done = |r: &(u64, u64)| {
            fs::metadata(dir.join(format!("{}-{}", r.0, r.1)))
                .is_ok_and(|m| m.is_file() && m.len() == r.1 - r.0)
        };
        let missing: Vec<(u64, u64)> = ranges.iter().copied().filter(|r| !done(r)).collect();
        let total: u64 = missing.iter().map(|r| r.1 - r.0).sum();
        if !missing.is_empty() {
            check_space(&self.dir, total + self.headroom)?;
            self.emit(Event::LayerStart {
                digest: desc.digest.clone(),
                size: total,
            });
            let mut p = Progress {
                done: 0,
                total,
                last: Instant::now(),
            };
            for r in &missing {
                let ok = self
                    .fetch_range_resumable(desc, &dir, *r, &mut p)
                    .with_context(|| {
                        format!(
                            "downloading bytes {}..{} of blob {} from {}/{}",
                            r.0,
                            r.1,
                            desc.digest,
                            self.client.host(),
                            self.repo
                        )
                    })?;
                if !ok {
                    return Ok(None);
                }
            }
            crate::fsutil::fsync_dir(&dir)?;
            self.emit(Event::LayerDone {
                digest: desc.digest.clone(),
            });
        }
        Ok(Some(Ranges {
            kind: RangesKind::Files(dir, ranges.to_vec()),
        }))
    }

    /// One range with retries (attempts without progress, like blobs). False: Range unsupported.
    fn fetch_range_resumable(
        &self,
        desc: &Descriptor,
        dir: &Path,
        (start, end): (u64, u64),
        p: &mut Progress,
    ) -> Result<bool> {
        let name = format!("{start}-{end}");
        let partial = dir.join(format!("{name}.partial"));
        let synced_path = dir.join(format!("{name}.synced"));
        // What an earlier run made durable; anything after it may be torn.
        let synced = fs::read_to_string(&synced_path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
            .min(end - start);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&partial)
            .with_context(|| format!("opening {}", partial.display()))?;
        let have_len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut have = synced.min(have_len);
        file.set_len(have)
            .with_context(|| format!("truncating {}", partial.display()))?;
        file.seek(SeekFrom::Start(have))?;
        if have > 0 {
            log::info!(
                "resuming bytes {start}..{end} of blob {} at {}",
                desc.digest,
                start + have
            );
        }
        p.done += have;
        let mut failures = 0u32;
        while start + have < end {
            let before = have;
            let res = self.range_attempt(
                desc,
                &mut file,
                &partial,
                &synced_path,
                start,
                end,
                &mut have,
                p,
            );
            match res {
                Ok(true) => {}
                Ok(false) => return Ok(false),
                Err(e) => {
                    if !matches!(error_class(&e), Some(ErrorClass::Network)) {
                        return Err(e);
                    }
                    if have > before {
                        failures = 0;
                    } else {
                        failures += 1;
                    }
                    if failures >= self.retry.max_attempts.max(1) {
                        return Err(e.context(format!(
                            "giving up after {failures} attempts without progress"
                        )));
                    }
                    let delay = self.retry.delay(failures.max(1));
                    log::info!(
                        "blob {} range {name}: {e:#}; retrying in {delay:?}",
                        desc.digest
                    );
                    std::thread::sleep(delay);
                }
            }
        }
        file.sync_all()
            .with_context(|| format!("syncing {}", partial.display()))?;
        drop(file);
        let fin = dir.join(&name);
        fs::rename(&partial, &fin)
            .with_context(|| format!("renaming {} to {}", partial.display(), fin.display()))?;
        let _ = fs::remove_file(&synced_path);
        Ok(true)
    }

    /// One request for `[start + have, end)`, streamed into `file`. Ok(false): the server sent
    /// the whole blob (no Range support).
    #[allow(clippy::too_many_arguments)]
    fn range_attempt(
        &self,
        desc: &Descriptor,
        file: &mut File,
        partial: &Path,
        synced_path: &Path,
        start: u64,
        end: u64,
        have: &mut u64,
        p: &mut Progress,
    ) -> Result<bool> {
        let from = start + *have;
        let mut resp =
            self.client
                .blob_request(&self.repo, &desc.digest, from, Some(end - 1), None)?;
        match resp.status().as_u16() {
            206 => {
                let cr = header(&resp, "content-range").unwrap_or_default();
                let (first, total) = parse_content_range(&cr).with_context(|| {
                    format!("registry answered 206 with a bad Content-Range {cr:?}")
                })?;
                if total.is_some_and(|t| t != desc.size) {
                    return Err(VerificationError::new(format!(
                        "registry says blob {} is {total:?} bytes, the manifest says {}",
                        desc.digest, desc.size
                    ))
                    .into());
                }
                if first != from {
                    return Err(NetworkError::new(format!(
                        "asked for bytes from {from} but the registry sent a range starting at {first}"
                    ))
                    .into());
                }
            }
            200 => {
                log::info!(
                    "the registry ignores Range requests for blob {}: fetching it whole",
                    desc.digest
                );
                return Ok(false);
            }
            404 => bail!(
                "blob {} not found (HTTP 404: {})",
                desc.digest,
                error_text(&mut resp)
            ),
            s if is_retryable_status(s) => {
                let wait = retry_after(&resp).map(|w| w.min(self.retry.max_delay));
                let msg = format!("HTTP {s}: {}", error_text(&mut resp));
                if let Some(w) = wait {
                    std::thread::sleep(w);
                }
                return Err(NetworkError::new(msg).into());
            }
            s => bail!(
                "registry answered HTTP {s} to a Range request for blob {}: {}",
                desc.digest,
                error_text(&mut resp)
            ),
        }
        let cs = self.chunk_size;
        let mut body = resp.body_mut().as_reader();
        let mut buf = vec![0u8; BUF_SIZE];
        while start + *have < end {
            let want = ((end - start - *have) as usize).min(BUF_SIZE);
            let n = match body.read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(NetworkError::new(format!(
                        "reading blob {} at byte {}: {e}",
                        desc.digest,
                        start + *have
                    ))
                    .into())
                }
            };
            file.write_all(&buf[..n])
                .with_context(|| format!("writing {}", partial.display()))?;
            let before = *have;
            *have += n as u64;
            p.done += n as u64;
            if let Some(l) = &self.limiter {
                l.consume(n as u64);
            }
            if *have / cs != before / cs {
                // a chunk boundary passed: make the bytes durable, then say so
                file.sync_data()
                    .with_context(|| format!("syncing {}", partial.display()))?;
                crate::ostree::write_atomic(synced_path, have.to_string().as_bytes(), 0o644)?;
            }
            if p.last.elapsed() >= PROGRESS_INTERVAL {
                p.last = Instant::now();
                self.emit(Event::Bytes {
                    digest: desc.digest.clone(),
                    done: p.done,
                    total: p.total,
                });
            }
        }
        if start + *have < end {
            return Err(NetworkError::new(format!(
                "connection ended at byte {} of range {start}..{end}",
                start + *have
            ))
            .into());
        }
        Ok(true)
    }
}

struct Progress {
    done: u64,
    total: u64,
    last: Instant,
}

/// Remove a blob's fetched ranges (after the layer was imported, or when they proved bad).
pub fn remove_ranges(dir: &Path, digest: &str) -> Result<()> {
    let d = ranges_dir(dir, digest)?;
    match fs::remove_dir_all(&d) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", d.display())),
    }
}
