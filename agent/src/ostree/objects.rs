//! ostree object schemas: dirmeta, dirtree, commit and the content-object header
//! (`ostree-core.h`; see `/work/shared/ref/ostree-format.md` §2.3).

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::gvariant::{Type, Value};
use super::{Checksum, MetaValue};

pub const S_IFMT: u32 = 0o170000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;

/// Extended attributes: (name without trailing NUL, value), sorted by name, no duplicates.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// Sort xattrs by name, drop duplicates (last wins) and empty values, like ostree's reader.
pub fn canonical_xattrs(mut x: Xattrs) -> Xattrs {
    x.retain(|(_, v)| !v.is_empty());
    x.reverse();
    x.sort_by(|a, b| a.0.cmp(&b.0));
    x.dedup_by(|a, b| a.0 == b.0);
    x
}

fn xattrs_value(x: &Xattrs) -> Value {
    Value::Array(
        Type::Tuple(vec![
            Type::Array(Box::new(Type::Byte)),
            Type::Array(Box::new(Type::Byte)),
        ]),
        x.iter()
            .map(|(n, v)| {
                let mut name = n.clone();
                name.push(0);
                Value::Tuple(vec![Value::Bytes(name), Value::Bytes(v.clone())])
            })
            .collect(),
    )
}

fn parse_xattrs(v: &Value) -> Result<Xattrs> {
    v.as_array()?
        .iter()
        .map(|e| {
            let m = e.as_tuple()?;
            let (Some(n), Some(val)) = (m.first(), m.get(1)) else {
                bail!("xattr entry is not a pair");
            };
            let mut name = n.as_bytes()?.to_vec();
            if name.pop() != Some(0) || name.is_empty() || name.contains(&0) {
                bail!("xattr name is not a NUL-terminated non-empty string");
            }
            Ok((name, val.as_bytes()?.to_vec()))
        })
        .collect()
}

fn type_of(s: &str) -> Type {
    // Only called with the constant schemas below, which parse.
    Type::parse(s).unwrap_or(Type::Tuple(Vec::new()))
}

/// `(uuua(ayay))` — also the `user.ostreemeta` xattr of bare-user objects.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DirMeta {
    pub uid: u32,
    pub gid: u32,
    /// Full st_mode (type bits included).
    pub mode: u32,
    pub xattrs: Xattrs,
}

impl DirMeta {
    pub fn encode(&self) -> Vec<u8> {
        Value::Tuple(vec![
            Value::U32(self.uid.to_be()),
            Value::U32(self.gid.to_be()),
            Value::U32(self.mode.to_be()),
            xattrs_value(&self.xattrs),
        ])
        .encode()
    }

    pub fn decode(data: &[u8]) -> Result<DirMeta> {
        let v = Value::decode(&type_of("(uuua(ayay))"), data)?;
        let m = v.as_tuple()?;
        let [uid, gid, mode, x] = m else {
            bail!("dirmeta has {} members", m.len());
        };
        Ok(DirMeta {
            uid: u32::from_be(uid.as_u32()?),
            gid: u32::from_be(gid.as_u32()?),
            mode: u32::from_be(mode.as_u32()?),
            xattrs: parse_xattrs(x)?,
        })
    }

    pub fn checksum(&self) -> Checksum {
        Checksum::of(&self.encode())
    }
}

/// `(a(say)a(sayay))`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirTree {
    /// (name, content checksum), sorted by name.
    pub files: Vec<(String, Checksum)>,
    /// (name, dirtree, dirmeta), sorted by name.
    pub dirs: Vec<(String, Checksum, Checksum)>,
}

impl DirTree {
    pub fn encode(&self) -> Vec<u8> {
        let files = Value::Array(
            type_of("(say)"),
            self.files
                .iter()
                .map(|(n, c)| Value::Tuple(vec![Value::Str(n.clone()), Value::Bytes(c.0.to_vec())]))
                .collect(),
        );
        let dirs = Value::Array(
            type_of("(sayay)"),
            self.dirs
                .iter()
                .map(|(n, t, m)| {
                    Value::Tuple(vec![
                        Value::Str(n.clone()),
                        Value::Bytes(t.0.to_vec()),
                        Value::Bytes(m.0.to_vec()),
                    ])
                })
                .collect(),
        );
        Value::Tuple(vec![files, dirs]).encode()
    }

    pub fn decode(data: &[u8]) -> Result<DirTree> {
        let v = Value::decode(&type_of("(a(say)a(sayay))"), data)?;
        let m = v.as_tuple()?;
        let [files, dirs] = m else {
            bail!("dirtree has {} members", m.len());
        };
        let mut t = DirTree::default();
        for f in files.as_array()? {
            let m = f.as_tuple()?;
            let [name, csum] = m else {
                bail!("dirtree file entry has {} members", m.len());
            };
            let name = valid_name(name.as_str()?)?;
            t.files
                .push((name, Checksum::from_slice(csum.as_bytes()?)?));
        }
        for d in dirs.as_array()? {
            let m = d.as_tuple()?;
            let [name, tree, meta] = m else {
                bail!("dirtree dir entry has {} members", m.len());
            };
            let name = valid_name(name.as_str()?)?;
            t.dirs.push((
                name,
                Checksum::from_slice(tree.as_bytes()?)?,
                Checksum::from_slice(meta.as_bytes()?)?,
            ));
        }
        Ok(t)
    }
}

/// A file name valid in a dirtree: non-empty, not `.`/`..`, no `/`.
pub fn valid_name(n: &str) -> Result<String> {
    if n.is_empty() || n == "." || n == ".." || n.contains('/') {
        bail!("invalid file name {n:?} in dirtree");
    }
    Ok(n.to_string())
}

/// The header of a content object (`(uuuusa(ayay))`), hashed in front of the content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileHeader {
    pub uid: u32,
    pub gid: u32,
    /// Full st_mode: S_IFREG|perm or S_IFLNK|0777.
    pub mode: u32,
    pub symlink_target: String,
    pub xattrs: Xattrs,
}

impl FileHeader {
    pub fn is_symlink(&self) -> bool {
        self.mode & S_IFMT == S_IFLNK
    }

    /// The GVariant V (without the length prefix).
    pub fn encode_variant(&self) -> Vec<u8> {
        Value::Tuple(vec![
            Value::U32(self.uid.to_be()),
            Value::U32(self.gid.to_be()),
            Value::U32(self.mode.to_be()),
            Value::U32(0),
            Value::Str(self.symlink_target.clone()),
            xattrs_value(&self.xattrs),
        ])
        .encode()
    }

    /// `BE32(len(V)) ‖ 0000 ‖ V`: what is hashed before the content.
    pub fn hash_prefix(&self) -> Vec<u8> {
        let v = self.encode_variant();
        let mut out = Vec::with_capacity(v.len() + 8);
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&v);
        out
    }

    /// A hasher primed with the header; feed the content and finish for the checksum.
    pub fn hasher(&self) -> Sha256 {
        let mut h = Sha256::new();
        h.update(self.hash_prefix());
        h
    }

    /// The bare-user `user.ostreemeta` xattr value.
    pub fn ostreemeta(&self) -> Vec<u8> {
        DirMeta {
            uid: self.uid,
            gid: self.gid,
            mode: self.mode,
            xattrs: self.xattrs.clone(),
        }
        .encode()
    }

    pub fn validate(&self) -> Result<()> {
        let t = self.mode & S_IFMT;
        if t != S_IFREG && t != S_IFLNK {
            bail!(
                "invalid file mode {:o}: not a regular file or symlink",
                self.mode
            );
        }
        if t == S_IFLNK && self.symlink_target.is_empty() {
            bail!("symlink with an empty target");
        }
        Ok(())
    }
}

/// A parsed commit object.
pub fn encode_commit(c: &super::Commit) -> Vec<u8> {
    encode_commit_parts(
        &c.metadata,
        c.parent.as_ref(),
        &c.subject,
        &c.body,
        c.timestamp,
        &c.root_tree,
        &c.root_meta,
    )
}

pub fn encode_commit_parts(
    metadata: &[(String, MetaValue)],
    parent: Option<&Checksum>,
    subject: &str,
    body: &str,
    timestamp: u64,
    root_tree: &Checksum,
    root_meta: &Checksum,
) -> Vec<u8> {
    let meta = Value::Array(
        type_of("{sv}"),
        metadata
            .iter()
            .map(|(k, v)| {
                Value::Dict(
                    Box::new(Value::Str(k.clone())),
                    Box::new(Value::Variant(Box::new(meta_to_value(v)))),
                )
            })
            .collect(),
    );
    Value::Tuple(vec![
        meta,
        Value::Bytes(parent.map(|p| p.0.to_vec()).unwrap_or_default()),
        Value::Array(type_of("(say)"), Vec::new()),
        Value::Str(subject.to_string()),
        Value::Str(body.to_string()),
        Value::U64(timestamp.to_be()),
        Value::Bytes(root_tree.0.to_vec()),
        Value::Bytes(root_meta.0.to_vec()),
    ])
    .encode()
}

fn meta_to_value(v: &MetaValue) -> Value {
    match v {
        MetaValue::Str(s) => Value::Str(s.clone()),
        MetaValue::U64(n) => Value::U64(*n),
        MetaValue::Bool(b) => Value::Bool(*b),
        MetaValue::Bytes(b) => Value::Bytes(b.clone()),
        MetaValue::StrArray(a) => {
            Value::Array(Type::Str, a.iter().map(|s| Value::Str(s.clone())).collect())
        }
    }
}

fn value_to_meta(v: &Value) -> Option<MetaValue> {
    Some(match v {
        Value::Str(s) | Value::ObjectPath(s) | Value::Signature(s) => MetaValue::Str(s.clone()),
        Value::U64(n) => MetaValue::U64(*n),
        Value::U32(n) => MetaValue::U64(u64::from(*n)),
        Value::Bool(b) => MetaValue::Bool(*b),
        Value::Bytes(b) => MetaValue::Bytes(b.clone()),
        Value::Array(Type::Str, a) => MetaValue::StrArray(
            a.iter()
                .filter_map(|s| s.as_str().ok().map(str::to_string))
                .collect(),
        ),
        _ => return None,
    })
}

pub fn decode_commit(checksum: Checksum, data: &[u8]) -> Result<super::Commit> {
    let v = Value::decode(&type_of("(a{sv}aya(say)sstayay)"), data)?;
    let m = v.as_tuple()?;
    let [meta, parent, _related, subject, body, ts, tree, dmeta] = m else {
        bail!("commit has {} members", m.len());
    };
    let mut metadata = Vec::new();
    for e in meta.as_array()? {
        let Value::Dict(k, v) = e else {
            bail!("commit metadata entry is not a dict entry");
        };
        let key = k.as_str()?.to_string();
        let Value::Variant(inner) = v.as_ref() else {
            bail!("commit metadata value for {key:?} is not a variant");
        };
        match value_to_meta(inner) {
            Some(mv) => metadata.push((key, mv)),
            None => log::debug!(
                "commit {checksum}: skipping metadata {key:?} of unsupported type {}",
                inner.type_of().to_type_string()
            ),
        }
    }
    let parent = parent.as_bytes()?;
    let parent = if parent.is_empty() {
        None
    } else {
        Some(Checksum::from_slice(parent).context("commit parent")?)
    };
    Ok(super::Commit {
        checksum,
        parent,
        subject: subject.as_str()?.to_string(),
        body: body.as_str()?.to_string(),
        timestamp: u64::from_be(ts.as_u64()?),
        root_tree: Checksum::from_slice(tree.as_bytes()?).context("commit root tree")?,
        root_meta: Checksum::from_slice(dmeta.as_bytes()?).context("commit root dirmeta")?,
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_checksums_match_ostree() {
        let h = FileHeader {
            uid: 0,
            gid: 0,
            mode: S_IFREG | 0o644,
            symlink_target: String::new(),
            xattrs: vec![],
        };
        let mut hasher = h.hasher();
        hasher.update(b"hello\n");
        assert_eq!(
            Checksum(hasher.finalize().into()).to_hex(),
            "44f778e59f0a4748d6b0c90a47347212a231c4ad1e8f7ea5c5dffc7749153a6b"
        );
        let l = FileHeader {
            uid: 0,
            gid: 0,
            mode: S_IFLNK | 0o777,
            symlink_target: "hello.txt".into(),
            xattrs: vec![],
        };
        assert_eq!(
            Checksum(l.hasher().finalize().into()).to_hex(),
            "f66efa496a72379413c44593de510dc344beb045294f1a543da87b2b6118db35"
        );
    }

    #[test]
    fn dirmeta_and_empty_dirtree_checksums() {
        let m = DirMeta {
            uid: 0,
            gid: 0,
            mode: S_IFDIR | 0o755,
            xattrs: vec![],
        };
        assert_eq!(
            m.checksum().to_hex(),
            "446a0ef11b7cc167f3b603e585c7eeeeb675faa412d5ec73f62988eb0b6c5488"
        );
        let t = DirTree::default();
        assert_eq!(t.encode(), vec![0]);
        assert_eq!(DirTree::decode(&[0]).unwrap(), t);
    }

    #[test]
    fn commit_round_trip() {
        let c = super::super::Commit {
            checksum: Checksum([0; 32]),
            parent: Some(Checksum([1; 32])),
            subject: "s".into(),
            body: "b".into(),
            timestamp: 1577836800,
            root_tree: Checksum([2; 32]),
            root_meta: Checksum([3; 32]),
            metadata: vec![
                ("version".into(), MetaValue::Str("1.0".into())),
                ("n".into(), MetaValue::U64(5)),
                ("b".into(), MetaValue::Bool(true)),
                ("a".into(), MetaValue::StrArray(vec!["x".into()])),
                ("y".into(), MetaValue::Bytes(vec![1, 2])),
            ],
        };
        let enc = encode_commit(&c);
        let d = decode_commit(Checksum([0; 32]), &enc).unwrap();
        assert_eq!(d, c);
        assert!(decode_commit(Checksum([0; 32]), &enc[..enc.len() - 1]).is_err());
    }
}
