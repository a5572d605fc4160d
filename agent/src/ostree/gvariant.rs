//! A small, bounded GVariant (normal form) serializer and deserializer.
//!
//! Only what ostree needs: the basic types `y b n q i u x t d s o g v`, arrays, tuples and dict
//! entries (no maybe types). Decoding never panics: every offset is checked against the container
//! it frames, nesting is capped at [`MAX_DEPTH`] and type strings at [`MAX_TYPE_LEN`].
//! [`is_normal_form`] re-encodes a decoded value and compares bytes, which is how fsck-style
//! validation of metadata objects is done here.

use anyhow::{bail, Context, Result};

/// Deepest nesting of containers accepted while parsing types or values.
pub const MAX_DEPTH: usize = 64;
/// Longest type string accepted.
pub const MAX_TYPE_LEN: usize = 255;

/// A GVariant type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Type {
    Byte,
    Bool,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F64,
    Str,
    ObjectPath,
    Signature,
    Variant,
    Array(Box<Type>),
    Tuple(Vec<Type>),
    Dict(Box<Type>, Box<Type>),
}

impl Type {
    /// Parse one complete type string (e.g. `a{sv}`).
    pub fn parse(s: &str) -> Result<Type> {
        if s.len() > MAX_TYPE_LEN {
            bail!("GVariant type string too long ({} bytes)", s.len());
        }
        let b = s.as_bytes();
        let (t, used) = Self::parse_at(b, 0, 0)?;
        if used != b.len() {
            bail!("GVariant type string {s:?} has trailing characters");
        }
        Ok(t)
    }

    fn parse_at(b: &[u8], pos: usize, depth: usize) -> Result<(Type, usize)> {
        if depth > MAX_DEPTH {
            bail!("GVariant type nested too deeply");
        }
        let Some(&c) = b.get(pos) else {
            bail!("GVariant type string ends early");
        };
        let simple = match c {
            b'y' => Some(Type::Byte),
            b'b' => Some(Type::Bool),
            b'n' => Some(Type::I16),
            b'q' => Some(Type::U16),
            b'i' => Some(Type::I32),
            b'u' => Some(Type::U32),
            b'x' => Some(Type::I64),
            b't' => Some(Type::U64),
            b'd' => Some(Type::F64),
            b's' => Some(Type::Str),
            b'o' => Some(Type::ObjectPath),
            b'g' => Some(Type::Signature),
            b'v' => Some(Type::Variant),
            _ => None,
        };
        if let Some(t) = simple {
            return Ok((t, pos + 1));
        }
        match c {
            b'a' => {
                let (e, p) = Self::parse_at(b, pos + 1, depth + 1)?;
                Ok((Type::Array(Box::new(e)), p))
            }
            b'(' => {
                let mut members = Vec::new();
                let mut p = pos + 1;
                loop {
                    match b.get(p) {
                        Some(b')') => return Ok((Type::Tuple(members), p + 1)),
                        Some(_) => {
                            let (m, np) = Self::parse_at(b, p, depth + 1)?;
                            members.push(m);
                            p = np;
                        }
                        None => bail!("GVariant type string: unclosed '('"),
                    }
                }
            }
            b'{' => {
                let (k, p) = Self::parse_at(b, pos + 1, depth + 1)?;
                if !k.is_basic() {
                    bail!("GVariant type string: dict key must be a basic type");
                }
                let (v, p) = Self::parse_at(b, p, depth + 1)?;
                if b.get(p) != Some(&b'}') {
                    bail!("GVariant type string: unclosed '{{'");
                }
                Ok((Type::Dict(Box::new(k), Box::new(v)), p + 1))
            }
            other => bail!("unsupported GVariant type character {:?}", other as char),
        }
    }

    fn is_basic(&self) -> bool {
        !matches!(
            self,
            Type::Variant | Type::Array(_) | Type::Tuple(_) | Type::Dict(_, _)
        )
    }

    /// The type string.
    pub fn to_type_string(&self) -> String {
        let mut s = String::new();
        self.write_type_string(&mut s);
        s
    }

    fn write_type_string(&self, s: &mut String) {
        match self {
            Type::Byte => s.push('y'),
            Type::Bool => s.push('b'),
            Type::I16 => s.push('n'),
            Type::U16 => s.push('q'),
            Type::I32 => s.push('i'),
            Type::U32 => s.push('u'),
            Type::I64 => s.push('x'),
            Type::U64 => s.push('t'),
            Type::F64 => s.push('d'),
            Type::Str => s.push('s'),
            Type::ObjectPath => s.push('o'),
            Type::Signature => s.push('g'),
            Type::Variant => s.push('v'),
            Type::Array(e) => {
                s.push('a');
                e.write_type_string(s);
            }
            Type::Tuple(m) => {
                s.push('(');
                for t in m {
                    t.write_type_string(s);
                }
                s.push(')');
            }
            Type::Dict(k, v) => {
                s.push('{');
                k.write_type_string(s);
                v.write_type_string(s);
                s.push('}');
            }
        }
    }

    /// Alignment in bytes.
    pub fn alignment(&self) -> usize {
        match self {
            Type::Byte | Type::Bool | Type::Str | Type::ObjectPath | Type::Signature => 1,
            Type::I16 | Type::U16 => 2,
            Type::I32 | Type::U32 => 4,
            Type::I64 | Type::U64 | Type::F64 | Type::Variant => 8,
            Type::Array(e) => e.alignment(),
            Type::Tuple(m) => m.iter().map(Type::alignment).max().unwrap_or(1),
            Type::Dict(k, v) => k.alignment().max(v.alignment()),
        }
    }

    /// Size in bytes if the type is fixed-size.
    pub fn fixed_size(&self) -> Option<usize> {
        match self {
            Type::Byte | Type::Bool => Some(1),
            Type::I16 | Type::U16 => Some(2),
            Type::I32 | Type::U32 => Some(4),
            Type::I64 | Type::U64 | Type::F64 => Some(8),
            Type::Str | Type::ObjectPath | Type::Signature | Type::Variant | Type::Array(_) => None,
            Type::Tuple(m) => {
                let mut end = 0usize;
                for t in m {
                    end = align(end, t.alignment());
                    end += t.fixed_size()?;
                }
                // The empty tuple is one byte.
                Some(align(end.max(1), self.alignment()))
            }
            Type::Dict(k, v) => {
                let end = align(k.fixed_size()?, v.alignment()) + v.fixed_size()?;
                Some(align(end, self.alignment()))
            }
        }
    }
}

/// A GVariant value. `Bytes` is the compact form of `ay`.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Byte(u8),
    Bool(bool),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(String),
    ObjectPath(String),
    Signature(String),
    Variant(Box<Value>),
    Bytes(Vec<u8>),
    /// Element type and elements.
    Array(Type, Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Box<Value>, Box<Value>),
}

impl Value {
    /// The value's type.
    pub fn type_of(&self) -> Type {
        match self {
            Value::Byte(_) => Type::Byte,
            Value::Bool(_) => Type::Bool,
            Value::I16(_) => Type::I16,
            Value::U16(_) => Type::U16,
            Value::I32(_) => Type::I32,
            Value::U32(_) => Type::U32,
            Value::I64(_) => Type::I64,
            Value::U64(_) => Type::U64,
            Value::F64(_) => Type::F64,
            Value::Str(_) => Type::Str,
            Value::ObjectPath(_) => Type::ObjectPath,
            Value::Signature(_) => Type::Signature,
            Value::Variant(_) => Type::Variant,
            Value::Bytes(_) => Type::Array(Box::new(Type::Byte)),
            Value::Array(t, _) => Type::Array(Box::new(t.clone())),
            Value::Tuple(m) => Type::Tuple(m.iter().map(Value::type_of).collect()),
            Value::Dict(k, v) => Type::Dict(Box::new(k.type_of()), Box::new(v.type_of())),
        }
    }

    /// Serialize in normal form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Value::Byte(v) => out.push(*v),
            Value::Bool(v) => out.push(u8::from(*v)),
            Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::Str(s) | Value::ObjectPath(s) | Value::Signature(s) => {
                out.extend_from_slice(s.as_bytes());
                out.push(0);
            }
            Value::Variant(v) => {
                v.encode_into(out);
                out.push(0);
                out.extend_from_slice(v.type_of().to_type_string().as_bytes());
            }
            Value::Bytes(b) => out.extend_from_slice(b),
            Value::Array(t, elems) => {
                if t.fixed_size().is_some() {
                    for e in elems {
                        e.encode_into(out);
                    }
                    return;
                }
                let mut body = Vec::new();
                let mut ends = Vec::with_capacity(elems.len());
                for e in elems {
                    pad(&mut body, t.alignment());
                    e.encode_into(&mut body);
                    ends.push(body.len());
                }
                append_offsets(&mut body, &ends);
                out.extend_from_slice(&body);
            }
            Value::Tuple(members) => encode_tuple(members.iter(), out),
            Value::Dict(k, v) => encode_tuple([k.as_ref(), v.as_ref()].into_iter(), out),
        }
    }

    /// Decode `data` as type `t`.
    pub fn decode(t: &Type, data: &[u8]) -> Result<Value> {
        decode_at(t, data, 0)
    }

    /// Accessors used by the object parsers; each fails with the expected type named.
    pub fn as_str(&self) -> Result<&str> {
        match self {
            Value::Str(s) | Value::ObjectPath(s) | Value::Signature(s) => Ok(s),
            other => bail!(
                "expected a string, found {}",
                other.type_of().to_type_string()
            ),
        }
    }
    pub fn as_bytes(&self) -> Result<&[u8]> {
        match self {
            Value::Bytes(b) => Ok(b),
            other => bail!("expected ay, found {}", other.type_of().to_type_string()),
        }
    }
    pub fn as_u32(&self) -> Result<u32> {
        match self {
            Value::U32(v) => Ok(*v),
            other => bail!("expected u, found {}", other.type_of().to_type_string()),
        }
    }
    pub fn as_u64(&self) -> Result<u64> {
        match self {
            Value::U64(v) => Ok(*v),
            other => bail!("expected t, found {}", other.type_of().to_type_string()),
        }
    }
    pub fn as_tuple(&self) -> Result<&[Value]> {
        match self {
            Value::Tuple(m) => Ok(m),
            other => bail!(
                "expected a tuple, found {}",
                other.type_of().to_type_string()
            ),
        }
    }
    pub fn as_array(&self) -> Result<&[Value]> {
        match self {
            Value::Array(_, e) => Ok(e),
            other => bail!(
                "expected an array, found {}",
                other.type_of().to_type_string()
            ),
        }
    }
}

/// True if `data` is a valid serialization of `t` in normal form.
pub fn is_normal_form(t: &Type, data: &[u8]) -> bool {
    match Value::decode(t, data) {
        Ok(v) => v.encode() == data,
        Err(_) => false,
    }
}

fn align(n: usize, a: usize) -> usize {
    n.div_ceil(a) * a
}

fn pad(buf: &mut Vec<u8>, a: usize) {
    let n = align(buf.len(), a);
    buf.resize(n, 0);
}

/// Offset width for a container whose body is `body` bytes and has `n` framing offsets.
fn offset_width(body: usize, n: usize) -> usize {
    for w in [1usize, 2, 4] {
        let max = (1u64 << (8 * w)) - 1;
        if (body + n * w) as u64 <= max {
            return w;
        }
    }
    8
}

/// Offset width a reader derives from a container's total size.
fn reader_width(size: usize) -> usize {
    if size <= 0xff {
        1
    } else if size <= 0xffff {
        2
    } else if size as u64 <= 0xffff_ffff {
        4
    } else {
        8
    }
}

fn append_offsets(body: &mut Vec<u8>, offsets: &[usize]) {
    let w = offset_width(body.len(), offsets.len());
    for &o in offsets {
        body.extend_from_slice(&(o as u64).to_le_bytes()[..w]);
    }
}

fn encode_tuple<'a>(members: impl Iterator<Item = &'a Value>, out: &mut Vec<u8>) {
    let members: Vec<&Value> = members.collect();
    let t = Type::Tuple(members.iter().map(|m| m.type_of()).collect());
    let mut body = Vec::new();
    let mut ends = Vec::new();
    let n = members.len();
    for (i, m) in members.iter().enumerate() {
        let mt = m.type_of();
        pad(&mut body, mt.alignment());
        m.encode_into(&mut body);
        if mt.fixed_size().is_none() && i + 1 != n {
            ends.push(body.len());
        }
    }
    if let Some(size) = t.fixed_size() {
        body.resize(size, 0);
        out.extend_from_slice(&body);
        return;
    }
    ends.reverse();
    append_offsets(&mut body, &ends);
    out.extend_from_slice(&body);
}

fn read_offset(data: &[u8], pos: usize, w: usize) -> Result<usize> {
    let bytes = pos
        .checked_add(w)
        .and_then(|end| data.get(pos..end))
        .context("GVariant framing offset out of bounds")?;
    let mut buf = [0u8; 8];
    buf[..w].copy_from_slice(bytes);
    usize::try_from(u64::from_le_bytes(buf)).context("GVariant framing offset too large")
}

fn fixed<const N: usize>(data: &[u8], what: &str) -> Result<[u8; N]> {
    data.try_into()
        .map_err(|_| anyhow::anyhow!("GVariant {what}: expected {N} bytes, found {}", data.len()))
}

fn decode_string(data: &[u8]) -> Result<String> {
    let Some((&0, body)) = data.split_last() else {
        bail!("GVariant string is not NUL-terminated");
    };
    if body.contains(&0) {
        bail!("GVariant string contains an embedded NUL");
    }
    String::from_utf8(body.to_vec()).context("GVariant string is not valid UTF-8")
}

fn decode_at(t: &Type, data: &[u8], depth: usize) -> Result<Value> {
    if depth > MAX_DEPTH {
        bail!("GVariant value nested too deeply");
    }
    Ok(match t {
        Type::Byte => Value::Byte(fixed::<1>(data, "byte")?[0]),
        Type::Bool => match fixed::<1>(data, "boolean")?[0] {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            other => bail!("GVariant boolean has invalid value {other}"),
        },
        Type::I16 => Value::I16(i16::from_le_bytes(fixed(data, "int16")?)),
        Type::U16 => Value::U16(u16::from_le_bytes(fixed(data, "uint16")?)),
        Type::I32 => Value::I32(i32::from_le_bytes(fixed(data, "int32")?)),
        Type::U32 => Value::U32(u32::from_le_bytes(fixed(data, "uint32")?)),
        Type::I64 => Value::I64(i64::from_le_bytes(fixed(data, "int64")?)),
        Type::U64 => Value::U64(u64::from_le_bytes(fixed(data, "uint64")?)),
        Type::F64 => Value::F64(f64::from_le_bytes(fixed(data, "double")?)),
        Type::Str => Value::Str(decode_string(data)?),
        Type::ObjectPath => Value::ObjectPath(decode_string(data)?),
        Type::Signature => Value::Signature(decode_string(data)?),
        Type::Variant => {
            let sep = data
                .iter()
                .rposition(|&b| b == 0)
                .context("GVariant variant has no type separator")?;
            let ts = std::str::from_utf8(&data[sep + 1..])
                .context("GVariant variant type string is not ASCII")?;
            // Parse with the remaining depth budget so nested variants stay bounded.
            if depth + ts.len() > MAX_DEPTH * 4 {
                bail!("GVariant variant nested too deeply");
            }
            let child_type = Type::parse(ts)?;
            Value::Variant(Box::new(decode_at(&child_type, &data[..sep], depth + 1)?))
        }
        Type::Array(e) => decode_array(e, data, depth)?,
        Type::Tuple(members) => Value::Tuple(decode_tuple(members, data, depth)?),
        Type::Dict(k, v) => {
            let members = [k.as_ref().clone(), v.as_ref().clone()];
            let mut vals = decode_tuple(&members, data, depth)?.into_iter();
            match (vals.next(), vals.next()) {
                (Some(k), Some(v)) => Value::Dict(Box::new(k), Box::new(v)),
                _ => bail!("GVariant dict entry is incomplete"),
            }
        }
    })
}

fn decode_array(e: &Type, data: &[u8], depth: usize) -> Result<Value> {
    if *e == Type::Byte {
        return Ok(Value::Bytes(data.to_vec()));
    }
    if let Some(size) = e.fixed_size() {
        if !data.len().is_multiple_of(size) {
            bail!(
                "GVariant array of {}: size {} is not a multiple of {size}",
                e.to_type_string(),
                data.len()
            );
        }
        let elems = data
            .chunks_exact(size)
            .map(|c| decode_at(e, c, depth + 1))
            .collect::<Result<Vec<_>>>()?;
        return Ok(Value::Array(e.clone(), elems));
    }
    if data.is_empty() {
        return Ok(Value::Array(e.clone(), Vec::new()));
    }
    let w = reader_width(data.len());
    let table_start = read_offset(data, data.len().saturating_sub(w), w)?;
    if table_start > data.len() || !(data.len() - table_start).is_multiple_of(w) {
        bail!("GVariant array framing offsets are invalid");
    }
    let n = (data.len() - table_start) / w;
    let mut elems = Vec::with_capacity(n.min(4096));
    let mut start = 0usize;
    for i in 0..n {
        let end = read_offset(data, table_start + i * w, w)?;
        start = align(start, e.alignment());
        if start > end || end > table_start {
            bail!("GVariant array element {i} has invalid bounds {start}..{end}");
        }
        elems.push(decode_at(e, &data[start..end], depth + 1)?);
        start = end;
    }
    Ok(Value::Array(e.clone(), elems))
}

fn decode_tuple(members: &[Type], data: &[u8], depth: usize) -> Result<Vec<Value>> {
    let whole = Type::Tuple(members.to_vec());
    if let Some(size) = whole.fixed_size() {
        if data.len() != size {
            bail!(
                "GVariant {}: expected {size} bytes, found {}",
                whole.to_type_string(),
                data.len()
            );
        }
    }
    let w = reader_width(data.len());
    let mut offsets_used = 0usize;
    let mut pos = 0usize;
    let mut out = Vec::with_capacity(members.len());
    let n = members.len();
    for (i, m) in members.iter().enumerate() {
        pos = align(pos, m.alignment());
        let end = if let Some(size) = m.fixed_size() {
            pos.checked_add(size).context("GVariant tuple overflow")?
        } else if i + 1 == n {
            data.len()
                .checked_sub(offsets_used * w)
                .context("GVariant tuple framing is invalid")?
        } else {
            offsets_used += 1;
            let at = data
                .len()
                .checked_sub(offsets_used * w)
                .context("GVariant tuple framing is invalid")?;
            read_offset(data, at, w)?
        };
        let limit = data
            .len()
            .checked_sub(offsets_used * w)
            .context("GVariant tuple framing is invalid")?;
        if pos > end || end > limit {
            bail!(
                "GVariant tuple member {i} ({}) has invalid bounds {pos}..{end}",
                m.to_type_string()
            );
        }
        out.push(decode_at(m, &data[pos..end], depth + 1)?);
        pos = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn dirmeta_with_xattr_matches_ostree_bytes() {
        let v = Value::Tuple(vec![
            Value::U32(0),
            Value::U32(0),
            Value::U32(0o40755u32.swap_bytes()),
            Value::Array(
                Type::parse("(ayay)").unwrap(),
                vec![Value::Tuple(vec![
                    Value::Bytes(b"user.foo\0".to_vec()),
                    Value::Bytes(b"bar".to_vec()),
                ])],
            ),
        ]);
        let want = hex("00000000 00000000 000041ed 757365722e666f6f00 626172 09 0d");
        assert_eq!(v.encode(), want);
        let t = Type::parse("(uuua(ayay))").unwrap();
        assert_eq!(Value::decode(&t, &want).unwrap(), v);
        assert!(is_normal_form(&t, &want));
    }

    #[test]
    fn asv_examples_match_ostree_bytes() {
        let entry = |k: &str, v: Value| {
            Value::Array(
                Type::parse("{sv}").unwrap(),
                vec![Value::Dict(
                    Box::new(Value::Str(k.into())),
                    Box::new(Value::Variant(Box::new(v))),
                )],
            )
        };
        let mut want = b"ostree.bootable\0".to_vec();
        want.extend_from_slice(&hex("01 00 62 10 14"));
        assert_eq!(entry("ostree.bootable", Value::Bool(true)).encode(), want);

        let mut want = b"n\0".to_vec();
        want.extend_from_slice(&hex("000000000000 0500000000000000 0074 02 13"));
        let v = entry("n", Value::U64(5));
        assert_eq!(v.encode(), want);
        let t = Type::parse("a{sv}").unwrap();
        assert_eq!(Value::decode(&t, &want).unwrap(), v);

        let v = entry(
            "ostree.ref-binding",
            Value::Array(Type::Str, vec![Value::Str("os/x".into())]),
        );
        let enc = v.encode();
        assert_eq!(Value::decode(&t, &enc).unwrap(), v);
        assert_eq!(enc.len(), 19 + 5 + 5 + 1 + 3 + 1 + 1);
    }

    #[test]
    fn wide_offsets_round_trip() {
        let t = Type::parse("a(say)").unwrap();
        let elems: Vec<Value> = (0..3000)
            .map(|i| {
                Value::Tuple(vec![
                    Value::Str(format!("name{i}")),
                    Value::Bytes(vec![7; 32]),
                ])
            })
            .collect();
        let v = Value::Array(Type::parse("(say)").unwrap(), elems);
        let enc = v.encode();
        assert!(enc.len() > 0xffff);
        assert_eq!(Value::decode(&t, &enc).unwrap(), v);
        assert!(is_normal_form(&t, &enc));
    }

    #[test]
    fn empty_containers() {
        let t = Type::parse("(a(say)a(sayay))").unwrap();
        let v = Value::decode(&t, &[0]).unwrap();
        assert_eq!(v.encode(), vec![0]);
        assert_eq!(Value::Tuple(vec![]).encode(), vec![0]);
        assert_eq!(Type::parse("()").unwrap().fixed_size(), Some(1));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let types = [
            "(a{sv}aya(say)sstayay)",
            "(a(say)a(sayay))",
            "(uuua(ayay))",
            "(uuuusa(ayay))",
            "a{sv}",
            "v",
            "as",
            "(ts)",
        ];
        let mut seed = 0x1234_5678_u32;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for ts in types {
            let t = Type::parse(ts).unwrap();
            for len in 0..200usize {
                for _ in 0..20 {
                    let data: Vec<u8> = (0..len).map(|_| (rnd() & 0xff) as u8).collect();
                    let _ = Value::decode(&t, &data);
                    let _ = is_normal_form(&t, &data);
                }
            }
        }
        // Specific hostile cases.
        let t = Type::parse("as").unwrap();
        assert!(Value::decode(&t, &[0xff]).is_err());
        assert!(Value::decode(&t, b"abc\x02").is_err());
        assert!(Value::decode(&Type::Variant, b"\0").is_err());
        assert!(Value::decode(&Type::Variant, b"x").is_err());
        assert!(Value::decode(&Type::Bool, &[2]).is_err());
        assert!(Value::decode(&Type::Str, b"a\0b\0").is_err());
        assert!(Type::parse("a{vs}").is_err());
        assert!(Type::parse("(((").is_err());
        assert!(Type::parse(&"a".repeat(200)).is_err());
        // Deeply nested variants are bounded.
        let mut v = Value::Byte(1);
        for _ in 0..200 {
            v = Value::Variant(Box::new(v));
        }
        assert!(Value::decode(&Type::Variant, &v.encode()).is_err());
    }
}
