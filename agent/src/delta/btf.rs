//! BTF-aware patch sources for kernel objects.
//!
//! Every kernel module carries a `.BTF` section (BPF type information) whose type records refer
//! to the kernel's own types by number and to the kernel's string table by offset. A kernel
//! update that adds one type or one string renumbers everything after it, so every module's
//! BTF changes in thousands of places although its types did not: in a Debian security update
//! that is more than half of the bytes a bsdiff of the modules has to describe.
//!
//! The delta therefore carries two maps, old type id → new type id and old string offset → new
//! string offset, each a sorted list of runs `(first old value, shift)`, learnt by the generator
//! from all module pairs. Before a bsdiff patch of an ELF file is applied, the type-id and
//! name-offset fields of the source's `.BTF` section are rewritten through the maps; the patch is
//! made against that rewritten source, so it only describes what really changed. Generator and
//! device share [`rewrite`]: the device rewrites the same fields with the same maps, and the
//! rebuilt object is checked against its checksum like every other.

use anyhow::{bail, Result};

/// Largest `.BTF` section a patch may name: the device holds it, rewritten, in memory (a
/// Debian arm64 kernel image has 4.8 MB of BTF, its modules up to a few hundred KB).
pub const MAX_BTF_SECTION: u64 = 6 << 20;
/// Most runs a map may have (a Debian kernel update needs a few thousand).
pub const MAX_MAP_RUNS: usize = 1 << 20;

const BTF_MAGIC: u16 = 0xeb9f;
const BTF_HEADER_MIN: usize = 24;

/// A field of a BTF type record that [`rewrite`] visits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    /// A type id (`type`, `index_type`, member/param/variable types, return type).
    TypeId,
    /// An offset into the string section (`name_off` of types, members, enumerators, params).
    NameOff,
}

/// A monotone renumbering: sorted runs of `(first old value, shift)`; a value below the first run
/// is unchanged, any other gets the shift of the last run starting at or below it (wrapping).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdMap {
    runs: Vec<(u32, u32)>,
}

impl IdMap {
    /// Runs must start at strictly increasing values.
    pub fn from_runs(runs: Vec<(u32, u32)>) -> Result<IdMap> {
        if runs.len() > MAX_MAP_RUNS {
            bail!("BTF map has {} runs, more than {MAX_MAP_RUNS}", runs.len());
        }
        if runs.windows(2).any(|w| w[0].0 >= w[1].0) {
            bail!("BTF map runs are not sorted by their first value");
        }
        Ok(IdMap { runs })
    }

    pub fn runs(&self) -> &[(u32, u32)] {
        &self.runs
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    pub fn map(&self, v: u32) -> u32 {
        match self.runs.partition_point(|(start, _)| *start <= v) {
            0 => v,
            i => v.wrapping_add(self.runs[i - 1].1),
        }
    }
}

/// The two maps a delta carries (both empty: no BTF rewriting).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BtfMaps {
    pub types: IdMap,
    pub strings: IdMap,
}

impl BtfMaps {
    pub fn is_empty(&self) -> bool {
        self.types.is_empty() && self.strings.is_empty()
    }

    pub fn map(&self, field: Field, v: u32) -> u32 {
        match field {
            Field::TypeId => self.types.map(v),
            Field::NameOff => self.strings.map(v),
        }
    }

    /// Rewrite a `.BTF` section through the maps.
    pub fn apply(&self, section: &mut [u8]) -> Result<()> {
        rewrite(section, &mut |_, field, v| self.map(field, v))
    }
}

fn get_u32(d: &[u8], at: usize) -> Option<u32> {
    let b = d.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Walk the type records of a `.BTF` section and replace every type-id and name-offset field
/// by `f(offset in section, kind, value)`. Fails, changing nothing meaningful, on anything that
/// is not a well-formed BTF type section (the caller then does not use the section).
pub fn rewrite(section: &mut [u8], f: &mut dyn FnMut(usize, Field, u32) -> u32) -> Result<()> {
    let d = &*section;
    if d.len() < BTF_HEADER_MIN || u16::from_le_bytes([d[0], d[1]]) != BTF_MAGIC {
        bail!("not a BTF section (magic)");
    }
    let num = |at: usize| get_u32(d, at).map(|v| v as usize);
    let (Some(hdr_len), Some(type_off), Some(type_len)) = (num(4), num(8), num(12)) else {
        bail!("BTF header is truncated");
    };
    let start = hdr_len.checked_add(type_off);
    let end = start.and_then(|s| s.checked_add(type_len));
    let (Some(start), Some(end)) = (start, end) else {
        bail!("BTF type section is out of range");
    };
    if hdr_len < BTF_HEADER_MIN || end > d.len() {
        bail!(
            "BTF type section ({start}..{end}) is outside the {}-byte section",
            d.len()
        );
    }
    // First pass: check the whole layout (without calling `f`), so that a bad section is
    // rejected before any field is changed; second pass: rewrite.
    walk(section, start, end, &mut |_, _, v| v)?;
    walk(section, start, end, f)
}

fn walk(
    s: &mut [u8],
    start: usize,
    end: usize,
    f: &mut dyn FnMut(usize, Field, u32) -> u32,
) -> Result<()> {
    let mut field = |s: &mut [u8], at: usize, kind: Field| -> Result<()> {
        let Some(v) = get_u32(s, at).filter(|_| at + 4 <= end) else {
            bail!("BTF record field at {at} runs past the type section");
        };
        s[at..at + 4].copy_from_slice(&f(at, kind, v).to_le_bytes());
        Ok(())
    };
    let mut at = start;
    while at < end {
        let Some(info) = get_u32(s, at + 4).filter(|_| at + 12 <= end) else {
            bail!("BTF type record at {at} is truncated");
        };
        let vlen = (info & 0xffff) as usize;
        let kind = (info >> 24) & 0x1f;
        field(s, at, Field::NameOff)?;
        // Kinds whose third word is a type id rather than a size.
        if matches!(kind, 2 | 8 | 9 | 10 | 11 | 12 | 13 | 14 | 17 | 18) {
            field(s, at + 8, Field::TypeId)?;
        }
        at += 12;
        // (item size, fields of an item), per kind (see the kernel's btf.rst).
        let items: (usize, &[(usize, Field)]) = match kind {
            1 | 14 | 17 => (4, &[]),                              // INT, VAR, DECL_TAG
            3 => (12, &[(0, Field::TypeId), (4, Field::TypeId)]), // ARRAY
            4 | 5 => (12, &[(0, Field::NameOff), (4, Field::TypeId)]), // STRUCT, UNION
            6 => (8, &[(0, Field::NameOff)]),                     // ENUM
            13 => (8, &[(0, Field::NameOff), (4, Field::TypeId)]), // FUNC_PROTO
            15 => (12, &[(0, Field::TypeId)]),                    // DATASEC
            19 => (12, &[(0, Field::NameOff)]),                   // ENUM64
            2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => (0, &[]),
            k => bail!("BTF type record at {} has unknown kind {k}", at - 12),
        };
        let count = match kind {
            1 | 3 | 14 | 17 => 1,
            4 | 5 | 6 | 13 | 15 | 19 => vlen,
            _ => 0,
        };
        for _ in 0..count {
            for (off, kind) in items.1 {
                field(s, at + off, *kind)?;
            }
            at += items.0;
            if at > end {
                bail!("BTF type record ends past the type section");
            }
        }
    }
    Ok(())
}

/// The BTF of a kernel object: the `.BTF` section of a 64-bit little-endian ELF file (modules,
/// vmlinux), else the first well-formed BTF blob of a raw kernel `Image` (found by its header:
/// magic, version 1, 24-byte header, strings right after the types). (offset, size).
#[cfg(feature = "publish")]
pub fn find_btf(d: &[u8]) -> Option<(u64, u64)> {
    if d.starts_with(b"\x7fELF") {
        return elf_btf_section(d);
    }
    // An arm64 Image starts with its boot header: branch, text offset, then "ARM\x64" at 56.
    if d.get(56..60)? != b"ARM\x64" {
        return None;
    }
    let mut at = 0;
    while at + BTF_HEADER_MIN <= d.len() {
        if d[at..at + 8] == [0x9f, 0xeb, 1, 0, 24, 0, 0, 0] {
            let word = |i: usize| get_u32(d, at + i).map(u64::from);
            if let (Some(0), Some(tlen), Some(soff), Some(slen)) =
                (word(8), word(12), word(16), word(20))
            {
                let len = 24 + soff + slen;
                if soff == tlen && len <= MAX_BTF_SECTION && at as u64 + len <= d.len() as u64 {
                    let mut copy = d[at..at + len as usize].to_vec();
                    if rewrite(&mut copy, &mut |_, _, v| v).is_ok() {
                        return Some((at as u64, len));
                    }
                }
            }
        }
        at += 4;
    }
    None
}

/// The `.BTF` section of a 64-bit little-endian ELF file: (offset, size).
#[cfg(feature = "publish")]
fn elf_btf_section(d: &[u8]) -> Option<(u64, u64)> {
    let u16at = |at: usize| d.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64at = |at: usize| {
        d.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    if d.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let shoff = usize::try_from(u64at(0x28)?).ok()?;
    let (entsize, shnum, shstrndx) = (
        u16at(0x3a)? as usize,
        u16at(0x3c)? as usize,
        u16at(0x3e)? as usize,
    );
    if entsize < 0x40 {
        return None;
    }
    let header = |i: usize| {
        let at = shoff.checked_add(i.checked_mul(entsize)?)?;
        Some((
            get_u32(d, at)? as usize,
            u64at(at + 0x18)?,
            u64at(at + 0x20)?,
        ))
    };
    let (_, names, _) = header(shstrndx)?;
    let names = usize::try_from(names).ok()?;
    (0..shnum).find_map(|i| {
        let (name, off, size) = header(i)?;
        let at = names.checked_add(name)?;
        (d.get(at..at.checked_add(5)?)? == b".BTF\0"
            && off.checked_add(size)? <= d.len() as u64
            && size <= MAX_BTF_SECTION)
            .then_some((off, size))
    })
}

/// Learns the maps from pairs of `.BTF` sections (old, new) whose records line up one to one
/// (same kinds and counts): each field votes for "old value → new value"; the winner of each
/// old value (most votes, then the smallest new value) becomes part of a run.
#[cfg(feature = "publish")]
#[derive(Default)]
pub struct MapBuilder {
    votes: [std::collections::HashMap<u32, std::collections::HashMap<u32, u32>>; 2],
    pub pairs: usize,
}

#[cfg(feature = "publish")]
impl MapBuilder {
    /// Returns whether the pair lined up (and voted).
    pub fn add_pair(&mut self, old: &[u8], new: &[u8]) -> bool {
        let fields = |s: &[u8]| {
            let mut v = Vec::new();
            let mut copy = s.to_vec();
            rewrite(&mut copy, &mut |_, f, x| {
                v.push((f, x));
                x
            })
            .ok()?;
            Some(v)
        };
        let (Some(a), Some(b)) = (fields(old), fields(new)) else {
            return false;
        };
        if a.len() != b.len() || a.iter().zip(&b).any(|(x, y)| x.0 != y.0) {
            return false;
        }
        for ((field, o), (_, n)) in a.into_iter().zip(b) {
            let slot = usize::from(field == Field::NameOff);
            *self.votes[slot].entry(o).or_default().entry(n).or_default() += 1;
        }
        self.pairs += 1;
        true
    }

    pub fn build(self) -> BtfMaps {
        let [types, strings] = self.votes.map(|votes| {
            let mut best: Vec<(u32, u32)> = votes
                .into_iter()
                .filter_map(|(o, news)| {
                    let (n, _) = news
                        .into_iter()
                        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))?;
                    Some((o, n.wrapping_sub(o)))
                })
                .collect();
            best.sort_unstable();
            let mut runs: Vec<(u32, u32)> = Vec::new();
            for (o, shift) in best {
                if runs.last().map_or(0, |r| r.1) != shift {
                    runs.push((o, shift));
                }
            }
            IdMap { runs }
        });
        BtfMaps { types, strings }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF section with one record of every kind otter knows.
    fn sample() -> (Vec<u8>, Vec<(usize, Field, u32)>) {
        let mut t: Vec<u32> = Vec::new();
        let info = |kind: u32, vlen: u32| (kind << 24) | vlen;
        t.extend([10, info(1, 0), 4, 0x0100_0020]); // INT
        t.extend([0, info(2, 0), 1]); // PTR → 1
        t.extend([0, info(3, 0), 0, 1, 1, 5]); // ARRAY of 1 indexed by 1
        t.extend([20, info(4, 2), 16, 30, 1, 0, 31, 2, 64]); // STRUCT
        t.extend([40, info(6, 1), 4, 41, 7]); // ENUM
        t.extend([50, info(7, 0), 0]); // FWD
        t.extend([60, info(8, 0), 4]); // TYPEDEF → 4
        t.extend([0, info(13, 1), 1, 70, 2]); // FUNC_PROTO
        t.extend([80, info(12, 0), 8]); // FUNC → 8
        t.extend([90, info(14, 0), 1, 1]); // VAR
        t.extend([100, info(15, 1), 8, 10, 0, 4]); // DATASEC
        t.extend([110, info(16, 0), 8]); // FLOAT
        t.extend([120, info(17, 0), 4, 0xffff_ffff]); // DECL_TAG
        t.extend([0, info(18, 0), 1]); // TYPE_TAG
        t.extend([130, info(19, 1), 8, 131, 1, 2]); // ENUM64
        let types: Vec<u8> = t.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut s = vec![0x9f, 0xeb, 1, 0];
        for w in [24u32, 0, types.len() as u32, types.len() as u32, 1] {
            s.extend(w.to_le_bytes());
        }
        s.extend(&types);
        s.push(0);
        let (n, ty) = (Field::NameOff, Field::TypeId);
        let want = [
            (0, n, 10),
            (16, n, 0),
            (24, ty, 1),
            (28, n, 0),
            (40, ty, 1),
            (44, ty, 1),
            (52, n, 20),
            (64, n, 30),
            (68, ty, 1),
            (76, n, 31),
            (80, ty, 2),
            (88, n, 40),
            (100, n, 41),
            (108, n, 50),
            (120, n, 60),
            (128, ty, 4),
            (132, n, 0),
            (140, ty, 1),
            (144, n, 70),
            (148, ty, 2),
            (152, n, 80),
            (160, ty, 8),
            (164, n, 90),
            (172, ty, 1),
            (180, n, 100),
            (192, ty, 10),
            (204, n, 110),
            (216, n, 120),
            (224, ty, 4),
            (232, n, 0),
            (240, ty, 1),
            (244, n, 130),
            (256, n, 131),
        ];
        let want = want.iter().map(|(o, f, v)| (o + 24, *f, *v)).collect();
        (s, want)
    }

    #[test]
    fn every_kind_has_its_fields_visited_and_rewritten() {
        let (mut s, want) = sample();
        let mut seen = Vec::new();
        rewrite(&mut s, &mut |at, f, v| {
            seen.push((at, f, v));
            v
        })
        .unwrap();
        assert_eq!(seen, want);
        let maps = BtfMaps {
            types: IdMap::from_runs(vec![(1, 100)]).unwrap(),
            strings: IdMap::from_runs(vec![(30, 1000), (90, 0)]).unwrap(),
        };
        maps.apply(&mut s).unwrap();
        for (at, f, v) in want {
            let got = get_u32(&s, at).unwrap();
            assert_eq!(got, maps.map(f, v), "field at {at}");
        }
        assert_eq!(maps.map(Field::TypeId, 0), 0, "void stays void");
        assert_eq!(maps.map(Field::NameOff, 31), 1031);
        assert_eq!(maps.map(Field::NameOff, 95), 95);
    }

    #[test]
    fn malformed_sections_are_refused_unchanged() {
        let (s, _) = sample();
        let maps = BtfMaps {
            types: IdMap::from_runs(vec![(0, 1)]).unwrap(),
            strings: IdMap::default(),
        };
        // Every truncation of the type section, a bad magic, an unknown kind.
        let mut cases = Vec::new();
        for cut in [30, 100, 200, s.len() - 9] {
            let mut t = s.clone();
            let len = (cut - 24) as u32;
            t[12..16].copy_from_slice(&len.to_le_bytes());
            cases.push(t);
        }
        let mut t = s.clone();
        t[0] = 0;
        cases.push(t);
        let mut t = s.clone();
        t[24 + 7] = 30; // kind 30
        cases.push(t);
        let mut t = s.clone();
        t[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        cases.push(t);
        for (i, case) in cases.into_iter().enumerate() {
            let mut c = case.clone();
            assert!(maps.apply(&mut c).is_err(), "case {i} accepted");
            assert_eq!(c, case, "case {i} changed");
        }
        assert!(IdMap::from_runs(vec![(5, 1), (5, 2)]).is_err());
    }
}
