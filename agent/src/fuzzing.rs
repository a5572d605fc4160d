//! Entry points for the `cargo fuzz` targets in `fuzz/` (not an API: hidden from the docs, may
//! change at any time). Each takes arbitrary bytes, must never panic on them, and checks what
//! can be checked cheaply (a value that decodes re-encodes into something that decodes to the
//! same value). A panic here is a bug the fuzzer found.
#![allow(clippy::panic)]

use crate::fleet::codec::{self, Frame, Framer};
use crate::import::{ImportLimits, Importer};
use crate::ostree::gvariant::{Type, Value, MAX_TYPE_LEN};
use crate::ostree::objects::{decode_commit, encode_commit, DirMeta, DirTree};
use crate::ostree::{Checksum, Repo};

/// `TYPE\0DATA`: parse the GVariant type string, decode DATA as it; a decoded value must
/// re-encode into bytes that decode and re-encode to the same bytes (normal form is a fixed
/// point; values are not compared directly because NaN != NaN).
pub fn gvariant(data: &[u8]) {
    let Some(nul) = data.iter().take(MAX_TYPE_LEN + 1).position(|&b| b == 0) else {
        return;
    };
    let Ok(ts) = std::str::from_utf8(&data[..nul]) else {
        return;
    };
    let Ok(t) = Type::parse(ts) else {
        return;
    };
    let body = &data[nul + 1..];
    if let Ok(v) = Value::decode(&t, body) {
        let enc = v.encode();
        match Value::decode(&t, &enc) {
            Ok(v2) => assert!(
                v2.encode() == enc,
                "re-encoded {ts} value {v:?} does not round-trip"
            ),
            Err(e) => panic!("re-encoded {ts} value does not decode: {e:#}"),
        }
    }
}

/// First byte selects the object: 0 commit, 1 dirtree, 2 dirmeta. Decoded objects must
/// round-trip through their encoder.
pub fn ostree_object(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            if let Ok(c) = decode_commit(Checksum([0; 32]), body) {
                let enc = encode_commit(&c);
                let c2 = decode_commit(Checksum([0; 32]), &enc)
                    .unwrap_or_else(|e| panic!("re-encoded commit does not decode: {e:#}"));
                assert_eq!(c, c2, "re-encoded commit decodes differently");
            }
        }
        1 => {
            if let Ok(t) = DirTree::decode(body) {
                let t2 = DirTree::decode(&t.encode())
                    .unwrap_or_else(|e| panic!("re-encoded dirtree does not decode: {e:#}"));
                assert_eq!(t, t2);
            }
        }
        _ => {
            if let Ok(m) = DirMeta::decode(body) {
                let m2 = DirMeta::decode(&m.encode())
                    .unwrap_or_else(|e| panic!("re-encoded dirmeta does not decode: {e:#}"));
                assert_eq!(m, m2);
            }
        }
    }
}

/// Limits for the tar fuzz target: small, so bombs are cut off fast.
pub const FUZZ_IMPORT_LIMITS: ImportLimits = ImportLimits {
    max_layer_size: 4 << 20,
    max_entries: 10_000,
};

/// Apply `data` as a plain tar layer to `repo` (a scratch bare-user repo); when that works, write
/// the commit too and read it back. Errors are fine, panics are not.
pub fn import_tar(repo: &Repo, data: &[u8]) {
    let mut imp = Importer::with_limits(repo, FUZZ_IMPORT_LIMITS);
    if imp
        .apply_layer("application/vnd.oci.image.layer.v1.tar", &mut &data[..])
        .is_err()
    {
        return;
    }
    if let Ok(done) = imp.commit("fuzz", Vec::new(), None) {
        let c = repo
            .read_commit(&done.commit)
            .unwrap_or_else(|e| panic!("a commit we just wrote does not read back: {e:#}"));
        assert_eq!(c.content_checksum(), done.content_checksum);
    }
}

/// First byte: even = MQTT byte stream (cut into chunks by the next byte, framed, each packet
/// decoded); odd = a fleet command payload.
pub fn mqtt(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    if which % 2 == 1 {
        let _ = crate::fleet::daemon::parse_command(rest);
        return;
    }
    let Some((&chunk, stream)) = rest.split_first() else {
        return;
    };
    let chunk = (chunk as usize).max(1);
    let mut framer = Framer::new();
    let mut frames = Vec::new();
    for piece in stream.chunks(chunk) {
        if framer.feed(piece, &mut frames).is_err() {
            break;
        }
    }
    for f in frames {
        match f {
            Frame::Packet { first, body } => {
                assert!(body.len() <= codec::MAX_PACKET_SIZE);
                let _ = codec::decode(first, &body);
            }
            Frame::Oversized { len, .. } => assert!(len > codec::MAX_PACKET_SIZE),
        }
    }
}

/// First byte: 0 manifest or index, 1 image config, 2 digest string, 3 image reference,
/// 4 platform string.
pub fn oci(data: &[u8]) {
    use crate::source::oci;
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let text = std::str::from_utf8(body).ok();
    match which % 5 {
        0 => {
            if let Ok(oci::ManifestKind::Manifest(m)) = oci::parse_manifest_or_index(body, None) {
                let _ = oci::check_image_manifest(&m);
            }
        }
        1 => {
            if let Ok(c) = oci::parse_config(body) {
                let _ = c.version();
            }
        }
        2 => {
            if let Some(t) = text {
                let _ = crate::source::digest::sha256_hex(t);
            }
        }
        3 => {
            if let Some(t) = text {
                if let Ok(r) = t.parse::<crate::source::ImageRef>() {
                    // The canonical form must parse back to the same reference.
                    let again: crate::source::ImageRef =
                        r.to_string().parse().unwrap_or_else(|e| {
                            panic!("canonical form of {t:?} does not parse: {e:#}")
                        });
                    assert_eq!(r, again, "canonical form of {t:?} changes the reference");
                }
            }
        }
        _ => {
            if let Some(t) = text {
                let _ = oci::Platform::parse(t);
            }
        }
    }
}

/// First byte: 0 GRUB environment block, 1 U-Boot environment data area, 2 fw_env.config.
/// Parsed environments must re-serialize into blocks that parse to the same variables.
pub fn boot_env(data: &[u8]) {
    use otter_boot::{grubenv::GrubEnv, uboot};
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            if let Ok(env) = GrubEnv::parse(body) {
                if let Ok(bytes) = env.to_bytes() {
                    let again = GrubEnv::parse(&bytes)
                        .unwrap_or_else(|e| panic!("re-serialized grubenv does not parse: {e}"));
                    assert_eq!(env.vars(), again.vars());
                }
            }
        }
        1 => {
            let env = uboot::Env::parse_data(body);
            if let Ok(bytes) = env.to_data(body.len().max(16)) {
                assert_eq!(uboot::Env::parse_data(&bytes), env);
            }
        }
        _ => {
            if let Ok(t) = std::str::from_utf8(body) {
                let _ = uboot::parse_fw_env_config(t);
            }
        }
    }
}

/// First byte: 0 release statement, 1 minisign signature file, 2 minisign public key file.
pub fn verify(data: &[u8]) {
    use crate::verify::{keys::ParsedSignature, ReleaseStatement, TrustedKey};
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            if let Ok(s) = ReleaseStatement::parse(body) {
                assert_eq!(
                    s.to_canonical_json(),
                    body,
                    "accepted a non-canonical statement"
                );
                let _ = s.check_trusted_comment(&s.trusted_comment());
            }
        }
        1 => {
            let _ = ParsedSignature::parse(body);
        }
        _ => {
            if let Ok(t) = std::str::from_utf8(body) {
                let _ = TrustedKey::parse(t, std::path::Path::new("fuzz.pub"));
            }
        }
    }
}

/// First byte mod 3: 0 = a delta superblock file as stored (magic, `from`, dirtree bases, zstd
/// body); 1 = the rest is the *uncompressed* superblock body (compressed here, so the fuzzer
/// explores the part table, commit and BTF map parsers rather than zstd). Whatever decodes must re-encode and decode the
/// same. 2 = a `.BTF` section a patch source names: rewriting it through a map either succeeds
/// or fails leaving it unchanged.
pub fn delta(data: &[u8]) {
    use crate::delta::{BtfMaps, IdMap, Superblock, SUPERBLOCK_MAGIC};
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    if which % 3 == 2 {
        let maps = BtfMaps {
            types: IdMap::from_runs(vec![(1, 7), (100, u32::MAX)]).unwrap_or_default(),
            strings: IdMap::from_runs(vec![(0, 3)]).unwrap_or_default(),
        };
        let mut section = body.to_vec();
        if maps.apply(&mut section).is_err() {
            assert_eq!(section, body, "a refused BTF section was changed");
        }
        return;
    }
    let stored;
    let input: &[u8] = if which % 3 == 0 {
        body
    } else {
        let Ok(z) = zstd::encode_all(body, 1) else {
            return;
        };
        // Magic, `from`, no dirtree bases, the frame.
        stored = [&SUPERBLOCK_MAGIC[..], &[0; 32], &[0; 4], &z[..]].concat();
        &stored
    };
    let mut base = delta_base_dirtree;
    if let Ok(sb) = Superblock::decode(&mut &input[..], &mut |_, k| base(k)) {
        if let Ok(enc) = sb.encode(1, &mut base) {
            let again = Superblock::decode(&mut &enc[..], &mut |_, k| base(k))
                .unwrap_or_else(|e| panic!("re-encoded superblock does not decode: {e:#}"));
            assert!(again == sb, "re-encoded superblock decodes differently");
        }
    }
}

/// The `delta` target's tree A: its dirtree number `k` (a device reads it from its repo; here
/// numbers above 63 are missing, as in a tree with fewer directories). Seeds are encoded
/// against these.
pub fn delta_base_dirtree(k: u32) -> anyhow::Result<Vec<u8>> {
    match k {
        0..=63 => Ok(vec![k as u8; 2 * k as usize + 1]),
        _ => anyhow::bail!("tree A has no dirtree #{k}"),
    }
}

/// A zstd:chunked TOC (its JSON): what parses must satisfy the invariants the partial pull
/// relies on (content ranges inside the data, bounded sizes and counts, permission bits only).
pub fn zstd_chunked_toc(data: &[u8]) {
    use crate::chunked::toc::{parse_json, Kind};
    const DATA_END: u64 = 1 << 20;
    let limits = ImportLimits {
        max_layer_size: 1 << 30,
        max_entries: 10_000,
    };
    let Ok(toc) = parse_json(data, DATA_END, &limits) else {
        return;
    };
    assert!(toc.entries.len() as u64 <= limits.max_entries);
    let mut total = 0u64;
    for e in &toc.entries {
        assert!(e.mode <= 0o7777, "mode {:o}", e.mode);
        assert!(!e.name.is_empty());
        if e.kind == Kind::Reg {
            total += e.size;
            if e.size > 0 {
                assert!(e.digest.is_some(), "{e:?}");
                assert!(
                    0 < e.offset && e.offset < e.end && e.end <= DATA_END,
                    "{e:?}"
                );
            }
        }
        for w in e.xattrs.windows(2) {
            assert!(w[0].0 < w[1].0, "xattrs not sorted: {e:?}");
        }
    }
    assert!(total <= limits.max_layer_size);
}
