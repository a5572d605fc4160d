//! The table of contents (TOC) of a zstd:chunked layer: where it is (descriptor annotations),
//! and what it says (file metadata, content digests and the byte ranges of each file's zstd
//! frames in the blob). Format: containers/storage `pkg/chunked/internal/minimal` (a CRFS /
//! stargz-style JSON document, zstd-compressed, stored as a skippable frame after the data).
//!
//! Everything here is input from the network, authenticated only by the TOC's SHA-256 in the
//! (signed) manifest: the parser bounds sizes and entry counts, and checks that each file's
//! range lies inside the blob's data, before anything uses it.

use std::collections::BTreeMap;
use std::io::Read;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde::Deserialize;
use sha2::Digest as _;

use crate::import::{ImportLimits, ZSTD_WINDOW_LOG_MAX};
use crate::ostree::Checksum;
use crate::source::Descriptor;

/// Largest uncompressed TOC we read (containers/storage caps it at 150 MiB; a device has
/// less memory: 64 MiB is ~300,000 files).
pub const MAX_TOC_SIZE: u64 = 64 * 1024 * 1024;
/// Longest file or link name in a TOC entry (Linux PATH_MAX).
const MAX_NAME: usize = 4096;

/// Annotation keys of the TOC position and checksum: the current containers/storage ones and
/// the older ones (skopeo ≤ 1.13, e.g. Debian bookworm's 1.9.3).
pub const POSITION_KEYS: [&str; 2] = [
    "io.github.containers.zstd-chunked.manifest-position",
    "io.containers.zstd-chunked.manifest-position",
];
pub const CHECKSUM_KEYS: [&str; 2] = [
    "io.github.containers.zstd-chunked.manifest-checksum",
    "io.containers.zstd-chunked.manifest-checksum",
];

/// Where a layer's TOC is and what it must hash to (from the layer descriptor).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TocLocation {
    /// Blob offset of the compressed TOC (after the skippable frame header).
    pub offset: u64,
    /// Compressed length.
    pub length: u64,
    /// Uncompressed length.
    pub uncompressed: u64,
    /// `sha256:<hex>` of the compressed TOC.
    pub checksum: String,
}

impl TocLocation {
    /// The TOC location of a zstd:chunked layer; `Ok(None)` for a layer without the
    /// annotations (not zstd:chunked); an error for annotations that are there but wrong.
    pub fn of(desc: &Descriptor) -> Result<Option<TocLocation>> {
        let get = |keys: &[&str]| keys.iter().find_map(|k| desc.annotations.get(*k));
        let (Some(pos), Some(sum)) = (get(&POSITION_KEYS), get(&CHECKSUM_KEYS)) else {
            return Ok(None);
        };
        if !desc.media_type.ends_with("+zstd") && !desc.media_type.ends_with(".zstd") {
            bail!(
                "layer has zstd:chunked annotations but media type {}",
                desc.media_type
            );
        }
        let parts: Vec<&str> = pos.split(':').collect();
        let num = |s: &str| -> Result<u64> {
            s.parse::<u64>()
                .with_context(|| format!("bad number {s:?} in TOC position {pos:?}"))
        };
        if parts.len() != 4 {
            bail!("TOC position {pos:?} is not offset:length:uncompressed-length:type");
        }
        let (offset, length, uncompressed, kind) = (
            num(parts[0])?,
            num(parts[1])?,
            num(parts[2])?,
            num(parts[3])?,
        );
        if kind != 1 {
            bail!("TOC position {pos:?}: type {kind} is not the CRFS TOC (1)");
        }
        if length == 0 || offset.checked_add(length).is_none_or(|e| e > desc.size) {
            bail!(
                "TOC position {pos:?} lies outside the {}-byte blob",
                desc.size
            );
        }
        if uncompressed == 0 || uncompressed > MAX_TOC_SIZE {
            bail!("TOC of {uncompressed} bytes is empty or larger than {MAX_TOC_SIZE} bytes");
        }
        let hex = sum
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .with_context(|| format!("TOC checksum {sum:?} is not sha256:<64 hex>"))?;
        Ok(Some(TocLocation {
            offset,
            length,
            uncompressed,
            checksum: format!("sha256:{}", hex.to_ascii_lowercase()),
        }))
    }
}

/// What a TOC entry is (the tar entry types zstd:chunked knows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Reg,
    Dir,
    Symlink,
    Hardlink,
    Char,
    Block,
    Fifo,
}

/// One file of the layer, in tar order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// The tar name as is (the importer normalizes and checks it).
    pub name: String,
    /// Symlink target or hard link target.
    pub link_name: String,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Content size (regular files).
    pub size: u64,
    /// Sorted, empty values dropped (as the tar importer does).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// SHA-256 of the content (regular files with content).
    pub digest: Option<Checksum>,
    /// Blob range of the content's zstd frames (`offset..end`, empty for empty files).
    pub offset: u64,
    pub end: u64,
}

/// A parsed, checked TOC.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Toc {
    pub entries: Vec<Entry>,
}

#[derive(Deserialize)]
struct RawToc {
    version: i64,
    #[serde(default)]
    entries: Vec<RawEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEntry {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    link_name: String,
    #[serde(default)]
    mode: i64,
    #[serde(default)]
    size: i64,
    #[serde(default)]
    uid: i64,
    #[serde(default)]
    gid: i64,
    #[serde(default)]
    xattrs: BTreeMap<String, String>,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    offset: i64,
    #[serde(default)]
    end_offset: i64,
}

/// Check the compressed TOC against `loc`'s checksum, decompress it (bounded) and parse it.
/// `blob_size` bounds the file ranges (they must end before the TOC); `limits` bound the entry
/// count and the total content size.
pub fn parse(
    compressed: &[u8],
    loc: &TocLocation,
    blob_size: u64,
    limits: &ImportLimits,
) -> Result<Toc> {
    let actual = format!("sha256:{}", Checksum::of(compressed).to_hex());
    if compressed.len() as u64 != loc.length || actual != loc.checksum {
        bail!(
            "the TOC in the blob ({} bytes, {actual}) is not the one the manifest names ({} bytes, {})",
            compressed.len(),
            loc.length,
            loc.checksum
        );
    }
    let mut d = zstd::stream::read::Decoder::new(compressed).context("starting zstd decoder")?;
    d.window_log_max(ZSTD_WINDOW_LOG_MAX)
        .context("limiting the zstd window")?;
    let cap = loc.uncompressed.min(MAX_TOC_SIZE);
    let mut json = Vec::new();
    d.take(cap + 1)
        .read_to_end(&mut json)
        .context("decompressing the TOC")?;
    if json.len() as u64 != loc.uncompressed {
        bail!(
            "the TOC decompresses to {}{} bytes, the manifest says {}",
            json.len().min(cap as usize),
            if json.len() as u64 > cap { "+" } else { "" },
            loc.uncompressed
        );
    }
    parse_json(&json, loc.offset.min(blob_size), limits)
}

/// Parse the TOC JSON; file ranges must end at or before `data_end`.
pub fn parse_json(json: &[u8], data_end: u64, limits: &ImportLimits) -> Result<Toc> {
    let raw: RawToc = serde_json::from_slice(json).context("parsing the TOC JSON")?;
    if raw.version != 1 {
        bail!("TOC version {} is not 1", raw.version);
    }
    if raw.entries.len() as u64 > limits.max_entries {
        bail!(
            "the TOC has {} entries, more than the import limit max_entries ({})",
            raw.entries.len(),
            limits.max_entries
        );
    }
    let mut entries = Vec::with_capacity(raw.entries.len());
    let mut total: u64 = 0;
    for (i, e) in raw.entries.into_iter().enumerate() {
        let what = || {
            format!(
                "TOC entry {i} ({:?})",
                e.name.chars().take(200).collect::<String>()
            )
        };
        let kind = match e.kind.as_str() {
            "reg" => Kind::Reg,
            "dir" => Kind::Dir,
            "symlink" => Kind::Symlink,
            "hardlink" => Kind::Hardlink,
            "char" => Kind::Char,
            "block" => Kind::Block,
            "fifo" => Kind::Fifo,
            // Content-defined chunks of the preceding file: its offset..endOffset covers them.
            "chunk" => continue,
            other => bail!("{}: unknown type {other:?}", what()),
        };
        if e.name.is_empty() || e.name.len() > MAX_NAME || e.link_name.len() > MAX_NAME {
            bail!("{}: empty or too long name", what());
        }
        let id = |v: i64, n: &str| -> Result<u32> {
            u32::try_from(v).with_context(|| format!("{}: {n} {v} is out of range", what()))
        };
        let mode = u32::try_from(e.mode)
            .ok()
            .filter(|m| *m & !0o7777 == 0 || *m & !0o177777 == 0)
            .with_context(|| format!("{}: invalid mode {}", what(), e.mode))?
            & 0o7777;
        let mut xattrs = Vec::new();
        for (k, v) in &e.xattrs {
            if k.is_empty() || k.contains('\0') {
                bail!("{}: invalid xattr name", what());
            }
            let v = base64::engine::general_purpose::STANDARD
                .decode(v)
                .with_context(|| format!("{}: xattr {k:?} is not base64", what()))?;
            xattrs.push((k.as_bytes().to_vec(), v));
        }
        let xattrs = crate::ostree::objects::canonical_xattrs(xattrs);
        let mut entry = Entry {
            kind,
            name: e.name.clone(),
            link_name: e.link_name.clone(),
            mode,
            uid: id(e.uid, "uid")?,
            gid: id(e.gid, "gid")?,
            size: 0,
            xattrs,
            digest: None,
            offset: 0,
            end: 0,
        };
        match kind {
            Kind::Reg => {
                let size =
                    u64::try_from(e.size).with_context(|| format!("{}: negative size", what()))?;
                total = total.saturating_add(size);
                if size > limits.max_layer_size || total > limits.max_layer_size {
                    bail!(
                        "{}: the files add up to more than the import limit max_layer_size ({} bytes)",
                        what(),
                        limits.max_layer_size
                    );
                }
                entry.size = size;
                if size > 0 {
                    let hex = e.digest.strip_prefix("sha256:").with_context(|| {
                        format!("{}: digest {:?} is not sha256:…", what(), e.digest)
                    })?;
                    entry.digest = Some(
                        Checksum::from_hex(hex)
                            .with_context(|| format!("{}: bad digest {:?}", what(), e.digest))?,
                    );
                    let (o, end) = (
                        u64::try_from(e.offset).unwrap_or(u64::MAX),
                        u64::try_from(e.end_offset).unwrap_or(u64::MAX),
                    );
                    if o == 0 || o >= end || end > data_end {
                        bail!(
                            "{}: content range {}..{} is not inside the layer data (0..{data_end})",
                            what(),
                            e.offset,
                            e.end_offset
                        );
                    }
                    (entry.offset, entry.end) = (o, end);
                }
            }
            Kind::Symlink | Kind::Hardlink if e.link_name.is_empty() => {
                bail!("{}: link without a target", what());
            }
            _ => {}
        }
        entries.push(entry);
    }
    Ok(Toc { entries })
}

/// Check that `content` (what the TOC entry's frames decompressed to) is that entry's file.
pub fn content_matches(e: &Entry, hasher: sha2::Sha256, len: u64) -> bool {
    len == e.size
        && e.digest
            .is_none_or(|d| Checksum(hasher.finalize().into()) == d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ImportLimits {
        ImportLimits {
            max_layer_size: 1 << 20,
            max_entries: 10,
        }
    }

    fn toc(entries: &str) -> Result<Toc> {
        parse_json(
            format!(r#"{{"version":1,"entries":[{entries}]}}"#).as_bytes(),
            10_000,
            &limits(),
        )
    }

    const D: &str = "sha256:98ea6e4f216f2fb4b69fff9b3a44842c38686ca685f3f55dc48c5d3fb1107be4";

    #[test]
    fn parses_what_skopeo_writes() {
        let t = toc(&format!(
            r#"{{"type":"dir","name":".","mode":493,"modtime":"2026-01-01T00:00:00Z"}},
               {{"type":"reg","name":"etc/x","mode":420,"size":3,"uid":1,"gid":2,
                 "digest":"{D}","offset":124,"endOffset":140,"xattrs":{{"user.a":"Yg==","user.e":""}}}},
               {{"type":"chunk","name":"etc/x","chunkSize":1}},
               {{"type":"symlink","name":"etc/y","linkName":"x","mode":511}},
               {{"type":"hardlink","name":"etc/z","linkName":"etc/x"}},
               {{"type":"reg","name":"empty","mode":3565}}"#
        ))
        .unwrap();
        assert_eq!(t.entries.len(), 5);
        let x = &t.entries[1];
        assert_eq!((x.kind, x.size, x.offset, x.end), (Kind::Reg, 3, 124, 140));
        assert_eq!((x.uid, x.gid, x.mode), (1, 2, 0o644));
        assert_eq!(x.xattrs, vec![(b"user.a".to_vec(), b"b".to_vec())]);
        assert_eq!(x.digest.unwrap().to_hex(), D[7..]);
        assert_eq!(t.entries[4].mode, 0o6755);
        assert_eq!(t.entries[4].digest, None);
    }

    #[test]
    fn refuses_hostile_tocs() {
        let reg = |extra: &str| format!(r#"{{"type":"reg","name":"f","digest":"{D}",{extra}}}"#);
        for (entries, want) in [
            (
                reg(r#""size":9999999999,"offset":1,"endOffset":2"#),
                "max_layer_size",
            ),
            (reg(r#""size":-1"#), "negative size"),
            (reg(r#""size":3,"offset":0,"endOffset":2"#), "not inside"),
            (reg(r#""size":3,"offset":5,"endOffset":5"#), "not inside"),
            (
                reg(r#""size":3,"offset":5,"endOffset":20000"#),
                "not inside",
            ),
            (reg(r#""size":3,"offset":-5,"endOffset":2"#), "not inside"),
            (reg(r#""size":3,"offset":5,"endOffset":-1"#), "not inside"),
            (
                r#"{"type":"reg","name":"f","size":3,"digest":"md5:x","offset":1,"endOffset":2}"#
                    .into(),
                "not sha256",
            ),
            (r#"{"type":"reg","name":"f","uid":-1}"#.into(), "uid"),
            (
                r#"{"type":"reg","name":"f","gid":4294967296}"#.into(),
                "gid",
            ),
            (r#"{"type":"reg","name":"f","mode":-1}"#.into(), "mode"),
            (r#"{"type":"reg","name":""}"#.into(), "empty"),
            (
                r#"{"type":"symlink","name":"l"}"#.into(),
                "without a target",
            ),
            (r#"{"type":"sock","name":"s"}"#.into(), "unknown type"),
            (
                r#"{"type":"reg","name":"f","xattrs":{"user.a":"!!"}}"#.into(),
                "base64",
            ),
            (
                format!(r#"{{"type":"dir","name":"{}"}}"#, "a".repeat(5000)),
                "too long",
            ),
            (
                [r#"{"type":"dir","name":"d"}"#; 11].join(","),
                "max_entries",
            ),
        ] {
            let err = format!("{:#}", toc(&entries).unwrap_err());
            assert!(err.contains(want), "{entries}: {err}");
        }
        // Sizes that add up past the limit.
        let one = reg(r#""size":600000,"offset":1,"endOffset":2"#);
        let two = format!("{one},{one}");
        assert!(format!("{:#}", toc(&two).unwrap_err()).contains("max_layer_size"));
        assert!(parse_json(br#"{"version":2,"entries":[]}"#, 1, &limits()).is_err());
        assert!(parse_json(b"{", 1, &limits()).is_err());
    }

    /// Path traversal names parse (the TOC is only a description); the importer refuses them
    /// by the same rules as a tar's names.
    #[test]
    fn traversal_names_are_left_to_the_importer() {
        let t = toc(r#"{"type":"dir","name":"../../etc"}"#).unwrap();
        assert_eq!(t.entries[0].name, "../../etc");
    }

    #[test]
    fn checks_checksum_and_size() {
        let json = br#"{"version":1,"entries":[{"type":"dir","name":"."}]}"#;
        let z = zstd::encode_all(&json[..], 3).unwrap();
        let loc = TocLocation {
            offset: 100,
            length: z.len() as u64,
            uncompressed: json.len() as u64,
            checksum: format!("sha256:{}", Checksum::of(&z).to_hex()),
        };
        assert_eq!(parse(&z, &loc, 1000, &limits()).unwrap().entries.len(), 1);
        let bad = TocLocation {
            checksum: format!("sha256:{}", "0".repeat(64)),
            ..loc.clone()
        };
        assert!(
            format!("{:#}", parse(&z, &bad, 1000, &limits()).unwrap_err())
                .contains("not the one the manifest names")
        );
        let short = TocLocation {
            uncompressed: 10,
            ..loc.clone()
        };
        assert!(
            format!("{:#}", parse(&z, &short, 1000, &limits()).unwrap_err())
                .contains("decompresses to")
        );
    }

    #[test]
    fn locations_from_annotations() {
        let mut d = Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
            digest: format!("sha256:{}", "1".repeat(64)),
            size: 1000,
            annotations: BTreeMap::new(),
            artifact_type: None,
        };
        assert_eq!(TocLocation::of(&d).unwrap(), None);
        let sum = format!("sha256:{}", "a".repeat(64));
        d.annotations.insert(CHECKSUM_KEYS[1].into(), sum.clone());
        d.annotations
            .insert(POSITION_KEYS[1].into(), "900:50:200:1".into());
        let l = TocLocation::of(&d).unwrap().unwrap();
        assert_eq!((l.offset, l.length, l.uncompressed), (900, 50, 200));
        for bad in [
            "900:200:200:1",
            "1:2:3",
            "900:50:200:2",
            "x:1:1:1",
            "0:0:1:1",
            "18446744073709551615:2:1:1",
        ] {
            d.annotations.insert(POSITION_KEYS[1].into(), bad.into());
            assert!(TocLocation::of(&d).is_err(), "{bad}");
        }
        d.annotations
            .insert(POSITION_KEYS[1].into(), "900:50:200:1".into());
        d.annotations
            .insert(CHECKSUM_KEYS[1].into(), "sha256:zz".into());
        assert!(TocLocation::of(&d).is_err());
    }
}
