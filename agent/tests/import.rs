//! OCI layer import against images made by real tools (apt packages `umoci`, `skopeo`,
//! `python3` for hand-made hostile tars) and checked with the `ostree` CLI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ostree_util;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use ostree_util::*;
use otter::import::{find_kernel, Imported, Importer, IMPORT_RULES_VERSION};
use otter::ostree::{MetaValue, Repo, RepoMode};

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const TAR_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn umoci(args: &[&str]) {
    run(Command::new("umoci").args(args));
}

/// The path of a blob in an OCI layout.
fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

/// The manifest digest and manifest of `layout:tag`.
fn manifest_of(layout: &Path, tag: &str) -> (String, serde_json::Value) {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("tag {tag} not in {}", layout.display()));
    let digest = desc["digest"].as_str().unwrap().to_owned();
    let manifest = serde_json::from_slice(&fs::read(blob(layout, &digest)).unwrap()).unwrap();
    (digest, manifest)
}

/// (media type, blob path) of each layer of `layout:tag`, in order.
fn layers_of(layout: &Path, tag: &str) -> Vec<(String, PathBuf)> {
    let (_, manifest) = manifest_of(layout, tag);
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let media_type = l["mediaType"].as_str().unwrap().to_owned();
            (media_type, blob(layout, l["digest"].as_str().unwrap()))
        })
        .collect()
}

/// Import every layer of `layout:tag` (an OCI image layout) into `repo`.
fn import_layout(repo: &Repo, layout: &Path, tag: &str) -> Result<Imported, anyhow::Error> {
    let (digest, _) = manifest_of(layout, tag);
    let mut imp = Importer::new(repo);
    for (media_type, path) in layers_of(layout, tag) {
        imp.apply_layer(&media_type, &mut fs::File::open(path).unwrap())?;
    }
    imp.commit(
        "import",
        vec![
            ("otter.image.digest".into(), MetaValue::Str(digest)),
            (
                "otter.import-rules".into(),
                MetaValue::U64(IMPORT_RULES_VERSION),
            ),
        ],
        None,
    )
}

/// Like [`import_layout`] but every gzip layer is decompressed here and imported as plain tar.
fn import_layout_plain(repo: &Repo, layout: &Path, tag: &str) -> Imported {
    let mut imp = Importer::new(repo);
    for (media_type, path) in layers_of(layout, tag) {
        assert_eq!(media_type, TAR_GZ);
        let f = fs::File::open(path).unwrap();
        imp.apply_layer(TAR, &mut flate2::read::GzDecoder::new(f))
            .unwrap();
    }
    imp.commit("plain", vec![], None).unwrap()
}

fn layer_media_types(layout: &Path, tag: &str) -> Vec<String> {
    layers_of(layout, tag).into_iter().map(|(m, _)| m).collect()
}

fn write(root: &Path, p: &str, data: &[u8], mode: u32) {
    let path = root.join(p);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, data).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Build a three-layer image with umoci; returns (layout, merged rootfs from `umoci unpack`).
fn build_umoci_image(tmp: &Path) -> (PathBuf, PathBuf) {
    let layout = tmp.join("layout");
    let l = layout.to_str().unwrap();
    let img = format!("{l}:t");
    umoci(&["init", "--layout", l]);
    umoci(&["new", "--image", &img]);
    // Each layer is made in a fresh bundle: repacking a bundle twice replaces its layer.
    let mut n = 0;
    let mut unpack = || {
        n += 1;
        let b = tmp.join(format!("bundle{n}"));
        umoci(&["unpack", "--image", &img, b.to_str().unwrap()]);
        b
    };
    let bundle = unpack();
    let r = bundle.join("rootfs");

    // Layer 1.
    write(&r, "etc/hostname", b"device\n", 0o644);
    write(&r, "etc/removed-later", b"bye\n", 0o644);
    write(&r, "usr/bin/tool", b"#!/bin/sh\n", 0o755);
    write(&r, "usr/bin/suid", b"s", 0o4755);
    write(
        &r,
        "usr/lib/modules/6.1.0-test/vmlinuz",
        b"kernel-v1\n",
        0o644,
    );
    write(
        &r,
        "usr/lib/modules/6.1.0-test/initramfs.img",
        b"initramfs-v1\n",
        0o644,
    );
    write(
        &r,
        "usr/lib/os-release",
        b"PRETTY_NAME=\"TestOS 1\"\n",
        0o644,
    );
    write(&r, "usr/share/doc/a/1", b"1", 0o644);
    write(&r, "usr/share/doc/a/2", b"2", 0o644);
    write(&r, "opaque/old1", b"old1", 0o644);
    write(&r, "opaque/sub/old3", b"old3", 0o644);
    write(&r, "var/lib/seed/data", b"seed\n", 0o600);
    write(&r, "tmp/junk", b"junk", 0o644);
    write(&r, "run/junk", b"junk", 0o644);
    write(&r, "xattr-file", b"x", 0o644);
    set_xattr(&r.join("xattr-file"), "user.foo", b"bar");
    write(&r, "owned", b"owned", 0o640);
    std::os::unix::fs::chown(r.join("owned"), Some(1234), Some(5678)).unwrap();
    let big: Vec<u8> = (0..2_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
        .collect();
    write(&r, "usr/share/big", &big, 0o644);
    symlink("usr/bin", r.join("bin")).unwrap();
    symlink("/etc/hostname", r.join("abs-link")).unwrap();
    umoci(&["repack", "--image", &img, bundle.to_str().unwrap()]);

    // Layer 2: deletions, a replaced directory, a hard link, changed content.
    let bundle = unpack();
    let r = bundle.join("rootfs");
    fs::remove_file(r.join("etc/removed-later")).unwrap();
    fs::remove_dir_all(r.join("opaque")).unwrap();
    write(&r, "opaque/new", b"new", 0o644);
    fs::hard_link(r.join("usr/bin/tool"), r.join("usr/bin/tool-link")).unwrap();
    write(
        &r,
        "usr/lib/os-release",
        b"PRETTY_NAME=\"TestOS 2\"\n",
        0o644,
    );
    fs::remove_dir_all(r.join("usr/share/doc/a")).unwrap();
    umoci(&["repack", "--image", &img, bundle.to_str().unwrap()]);

    // Layer 3: metadata-only changes and scratch content.
    let bundle = unpack();
    let r = bundle.join("rootfs");
    fs::set_permissions(r.join("usr/bin/tool"), fs::Permissions::from_mode(0o750)).unwrap();
    set_xattr(&r.join("usr/share"), "user.dir", b"d");
    write(&r, "run/more", b"more", 0o644);
    write(&r, "etc/new.conf", b"k=v\n", 0o644);
    umoci(&["repack", "--image", &img, bundle.to_str().unwrap()]);

    let merged = tmp.join("merged");
    umoci(&["unpack", "--image", &img, merged.to_str().unwrap()]);
    (layout, merged.join("rootfs"))
}

/// The merged view as otter stores it: /etc under /usr/etc, scratch dirs emptied.
fn expected_from(rootfs: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    for (k, v) in snapshot(rootfs, FULL) {
        let drop = ["tmp/", "run/", "dev/", "proc/", "sys/"]
            .iter()
            .any(|p| k.starts_with(p));
        if drop {
            continue;
        }
        let k = if k == "etc" || k.starts_with("etc/") {
            format!("usr/{k}")
        } else {
            k
        };
        out.insert(k, v);
    }
    out
}

#[test]
fn umoci_image_matches_umoci_unpack() {
    let tmp = tempfile::tempdir().unwrap();
    let (layout, rootfs) = build_umoci_image(tmp.path());
    assert_eq!(layer_media_types(&layout, "t").len(), 3);
    for mode in [RepoMode::Bare, RepoMode::BareUser] {
        let repo_path = tmp.path().join(format!("repo-{mode:?}"));
        let repo = Repo::init(&repo_path, mode).unwrap();
        let imported = import_layout(&repo, &layout, "t").unwrap();
        repo.set_ref("otter/test", Some(&imported.commit)).unwrap();
        fsck(&repo_path);

        let commit = repo.read_commit(&imported.commit).unwrap();
        assert_eq!(commit.meta_str("ostree.linux"), Some("6.1.0-test"));
        assert_eq!(commit.content_checksum(), imported.content_checksum);
        assert_eq!(
            imported.content_checksum.to_hex(),
            ostree_content_checksum(&repo_path, "otter/test")
        );
        let k = imported.kernel.clone().unwrap();
        assert_eq!(k.vmlinuz, "usr/lib/modules/6.1.0-test/vmlinuz");
        assert_eq!(
            k.initramfs.as_deref(),
            Some("usr/lib/modules/6.1.0-test/initramfs.img")
        );

        let co = tmp.path().join(format!("co-{mode:?}"));
        ostree(
            &repo_path,
            &["checkout", "otter/test", co.to_str().unwrap()],
        );
        let got = snapshot(&co, FULL);
        assert_same(
            &expected_from(&rootfs),
            &got,
            "ostree checkout vs umoci unpack",
        );
        // Spot checks of the rules, so a tool regression cannot hide them.
        assert!(!got.contains_key("etc"));
        assert!(!got.contains_key("usr/etc/removed-later"));
        assert!(got.contains_key("usr/etc/new.conf"));
        assert!(!got.contains_key("opaque/old1") && got.contains_key("opaque/new"));
        assert!(!got.contains_key("usr/share/doc/a"));
        assert_eq!(got["tmp"].kind, 'd');
        assert!(!got.contains_key("tmp/junk") && !got.contains_key("run/more"));
        assert_eq!(got["var/lib/seed/data"].content, b"seed\n");
        assert_eq!(got["xattr-file"].xattrs["user.foo"], b"bar");
        assert_eq!(
            (got["owned"].uid, got["owned"].gid, got["owned"].mode),
            (1234, 5678, 0o640)
        );
        assert_eq!(
            got["usr/bin/tool-link"].content,
            got["usr/bin/tool"].content
        );
        assert_eq!(got["usr/bin/suid"].mode, 0o4755);
        assert_eq!(got["abs-link"].content, b"/etc/hostname");

        assert_eq!(find_kernel(&co).unwrap(), imported.kernel);
        // Our own checkout agrees with ostree's.
        let mine = tmp.path().join(format!("mine-{mode:?}"));
        repo.checkout(&imported.commit, &mine).unwrap();
        assert_same(&got, &snapshot(&mine, FULL), "our checkout");
    }
}

#[test]
fn zstd_gzip_and_plain_layers_give_the_same_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let (layout, _) = build_umoci_image(tmp.path());
    let src = format!("oci:{}:t", layout.display());
    let zstd = tmp.path().join("zstd");
    run(Command::new("skopeo").args([
        "copy",
        "--dest-compress-format",
        "zstd",
        &src,
        &format!("oci:{}:t", zstd.display()),
    ]));
    assert!(layer_media_types(&zstd, "t")
        .iter()
        .all(|m| m.ends_with("+zstd")));
    assert!(layer_media_types(&layout, "t").iter().all(|m| m == TAR_GZ));

    let repo_path = tmp.path().join("repo");
    let repo = Repo::init(&repo_path, RepoMode::BareUser).unwrap();
    let a = import_layout(&repo, &layout, "t").unwrap();
    let b = import_layout(&repo, &zstd, "t").unwrap();
    // skopeo 1.9 cannot write uncompressed layers: feed the decompressed gzip blobs as `tar`.
    let c = import_layout_plain(&repo, &layout, "t");
    assert_eq!(a.content_checksum, b.content_checksum);
    assert_eq!(a.content_checksum, c.content_checksum);
    repo.set_ref("z", Some(&b.commit)).unwrap();
    fsck(&repo_path);
}

const PY_TAR: &str = r#"
import io, json, sys, tarfile
spec = json.load(open(sys.argv[1]))
with tarfile.open(sys.argv[2], "w", format=tarfile.PAX_FORMAT) as t:
    for e in spec:
        ti = tarfile.TarInfo(e["name"])
        ti.mode = e.get("mode", 0o644)
        ti.uid = e.get("uid", 0)
        ti.gid = e.get("gid", 0)
        ti.pax_headers = {"SCHILY.xattr." + k: v for k, v in e.get("xattrs", {}).items()}
        kind = e.get("type", "file")
        data = None
        if kind == "file":
            data = e.get("data", "").encode()
            ti.size = len(data)
        elif kind == "dir":
            ti.type = tarfile.DIRTYPE
            ti.mode = e.get("mode", 0o755)
        elif kind == "symlink":
            ti.type = tarfile.SYMTYPE
            ti.linkname = e["target"]
        elif kind == "link":
            ti.type = tarfile.LNKTYPE
            ti.linkname = e["target"]
        elif kind == "fifo":
            ti.type = tarfile.FIFOTYPE
        t.addfile(ti, io.BytesIO(data) if data is not None else None)
"#;

/// A tar layer built by Python's tarfile from a JSON spec.
fn py_tar(dir: &Path, name: &str, spec: serde_json::Value) -> Vec<u8> {
    let script = dir.join("mktar.py");
    fs::write(&script, PY_TAR).unwrap();
    let spec_path = dir.join(format!("{name}.json"));
    fs::write(&spec_path, spec.to_string()).unwrap();
    let out = dir.join(format!("{name}.tar"));
    run(Command::new("python3")
        .arg(&script)
        .arg(&spec_path)
        .arg(&out));
    fs::read(out).unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn import_tars(repo: &Repo, layers: &[(&str, Vec<u8>)]) -> anyhow::Result<Imported> {
    let mut imp = Importer::new(repo);
    for (mt, data) in layers {
        imp.apply_layer(mt, &mut data.as_slice())?;
    }
    imp.commit("test", vec![], None)
}

#[test]
fn whiteouts_follow_oci_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let l1 = py_tar(
        t,
        "l1",
        serde_json::json!([
            {"name": "d/x", "data": "x"},
            {"name": "d/sub/y", "data": "y"},
            {"name": "keep", "data": "k"},
            {"name": "gone", "data": "g"},
            {"name": "samelayer/old", "data": "o"},
        ]),
    );
    let l2 = py_tar(
        t,
        "l2",
        serde_json::json!([
            {"name": "d/new", "data": "n"},
            {"name": "d/.wh..wh..opq", "data": ""},
            {"name": "samelayer/fresh", "data": "f"},
            {"name": ".wh.samelayer", "data": ""},
            {"name": ".wh.gone", "data": ""},
            {"name": ".wh.never-existed", "data": ""},
            {"name": "/abs/file", "data": "a"},
            {"name": "./dot/file", "data": "d"},
            {"name": "pipe", "type": "fifo"},
        ]),
    );
    let repo_path = t.join("repo");
    let repo = Repo::init(&repo_path, RepoMode::BareUser).unwrap();
    let imp = import_tars(&repo, &[(TAR, l1), (TAR_GZ, gzip(&l2))]).unwrap();
    repo.set_ref("w", Some(&imp.commit)).unwrap();
    fsck(&repo_path);
    let co = t.join("co");
    ostree(&repo_path, &["checkout", "w", co.to_str().unwrap()]);
    let got: Vec<String> = snapshot(&co, FULL).into_keys().collect();
    assert_eq!(
        got,
        [
            "",
            "abs",
            "abs/file",
            "d",
            "d/new",
            "dot",
            "dot/file",
            "keep",
            "samelayer",
            "samelayer/fresh"
        ]
    );
}

#[test]
fn hostile_layers_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let repo_path = t.join("repo");
    let repo = Repo::init(&repo_path, RepoMode::BareUser).unwrap();
    let base = py_tar(
        t,
        "base",
        serde_json::json!([{"name": "etc/shadow", "data": "secret"}]),
    );
    let good = import_tars(&repo, &[(TAR, base.clone())]).unwrap();
    repo.set_ref("otter/stable", Some(&good.commit)).unwrap();

    let big = py_tar(
        t,
        "big",
        serde_json::json!([{"name": "f", "data": "x".repeat(5000)}]),
    );
    let cases: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            TAR,
            py_tar(t, "a", serde_json::json!([{"name": "../x", "data": "x"}])),
            "../x",
        ),
        (
            "inner dotdot",
            TAR,
            py_tar(
                t,
                "b",
                serde_json::json!([{"name": "a/../../x", "data": "x"}]),
            ),
            "a/../../x",
        ),
        (
            "through symlink",
            TAR,
            py_tar(
                t,
                "c",
                serde_json::json!([
                    {"name": "l", "type": "symlink", "target": "/etc"},
                    {"name": "l/passwd", "data": "root::0:0::/:/bin/sh"},
                ]),
            ),
            "l/passwd",
        ),
        (
            "hardlink escape",
            TAR,
            py_tar(
                t,
                "d",
                serde_json::json!([{"name": "h", "type": "link", "target": "../../etc/shadow"}]),
            ),
            "../../etc/shadow",
        ),
        (
            "hardlink missing",
            TAR,
            py_tar(
                t,
                "e",
                serde_json::json!([{"name": "h", "type": "link", "target": "nope"}]),
            ),
            "nope",
        ),
        ("truncated tar", TAR, big[..1536].to_vec(), "truncated"),
        (
            "truncated gzip",
            TAR_GZ,
            gzip(&big)[..60].to_vec(),
            "deflate",
        ),
        ("garbage tar", TAR, vec![0x5a; 4096], "corrupt layer"),
        ("garbage gzip", TAR_GZ, vec![0x5a; 4096], "gzip header"),
        (
            "unknown media type",
            "application/x-rar",
            base.clone(),
            "unsupported layer media type",
        ),
    ];
    for (what, mt, data, needle) in cases {
        let err = import_tars(&repo, &[(TAR, base.clone()), (mt, data)])
            .map(|_| ())
            .expect_err(what);
        let msg = format!("{err:#}");
        eprintln!("{what}: {msg}");
        assert!(
            msg.contains(needle),
            "{what}: error does not mention {needle:?}: {msg}"
        );
        assert_eq!(
            repo.resolve_ref("otter/stable").unwrap(),
            Some(good.commit),
            "{what}"
        );
        assert_eq!(repo.list_refs("").unwrap().len(), 1, "{what}");
        assert_eq!(
            fs::read_dir(repo_path.join("tmp")).unwrap().count(),
            0,
            "{what}: staging left"
        );
    }
    fsck(&repo_path);
    let commits = ostree(&repo_path, &["log", "otter/stable"]);
    assert!(commits.contains(&good.commit.to_hex()));
}

/// A tar stream of one `size`-byte file, generated on the fly (never in memory).
struct GeneratedTar {
    header: Vec<u8>,
    size: u64,
    pos: u64,
}

impl GeneratedTar {
    fn new(size: u64) -> GeneratedTar {
        let mut h = tar::Header::new_ustar();
        h.set_path("big.img").unwrap();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        GeneratedTar {
            header: h.as_bytes().to_vec(),
            size,
            pos: 0,
        }
    }
}

impl Read for GeneratedTar {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let padded = self.size.div_ceil(512) * 512;
        let total = 512 + padded + 1024;
        if self.pos >= total {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(total - self.pos) as usize;
        for (i, b) in buf[..n].iter_mut().enumerate() {
            let p = self.pos + i as u64;
            *b = if p < 512 {
                self.header[p as usize]
            } else if p - 512 < self.size {
                ((p - 512) % 251) as u8
            } else {
                0
            };
        }
        self.pos += n as u64;
        Ok(n)
    }
}

fn max_rss_kib() -> i64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) }, 0);
    ru.ru_maxrss
}

#[test]
fn large_file_is_streamed_not_buffered() {
    const SIZE: u64 = 192 * 1024 * 1024;
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(&tmp.path().join("repo"), RepoMode::BareUser).unwrap();
    let before = max_rss_kib();
    let mut imp = Importer::new(&repo);
    imp.apply_layer(TAR, &mut GeneratedTar::new(SIZE)).unwrap();
    let done = imp.commit("big", vec![], None).unwrap();
    let grown_mib = (max_rss_kib() - before) / 1024;
    // Other tests run in this process too, so allow slack; buffering would need ≥192 MiB.
    assert!(
        grown_mib < 96,
        "RSS grew by {grown_mib} MiB importing a {SIZE}-byte file"
    );
    let tree = repo
        .read_dirtree(&repo.read_commit(&done.commit).unwrap().root_tree)
        .unwrap();
    let obj = repo.open_file(&tree.files[0].1).unwrap();
    assert_eq!(obj.size, SIZE);
}

/// `umoci insert` (0.4) ends its layer right after the last file's data: no block padding, no
/// end-of-archive blocks (GNU tar calls that an unexpected EOF). Every byte of every entry is
/// there, so otter imports it; a layer cut inside a file's data is still refused.
#[test]
fn umoci_insert_layer_without_end_blocks_is_imported() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let l = layout.to_str().unwrap();
    let img = format!("{l}:t");
    let src = tmp.path().join("src");
    write(&src, "bin/tool", b"#!/bin/sh\necho six\n", 0o755);
    write(&src, "bin/odd", b"odd-size", 0o644);
    umoci(&["init", "--layout", l]);
    umoci(&["new", "--image", &img]);
    umoci(&[
        "insert",
        "--image",
        &img,
        src.join("bin").to_str().unwrap(),
        "/usr/bin",
    ]);
    let layers = layers_of(&layout, "t");
    assert_eq!(layers.len(), 1);
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(fs::File::open(&layers[0].1).unwrap())
        .read_to_end(&mut tar)
        .unwrap();
    assert_ne!(
        tar.len() % 512,
        0,
        "umoci insert now pads its layers; the test lost its point"
    );

    let repo_path = tmp.path().join("repo");
    let repo = Repo::init(&repo_path, RepoMode::BareUser).unwrap();
    let imported = import_layout(&repo, &layout, "t").unwrap();
    repo.set_ref("otter/test", Some(&imported.commit)).unwrap();
    fsck(&repo_path);
    let cat = ostree(&repo_path, &["cat", "otter/test", "/usr/bin/odd"]);
    assert_eq!(cat, "odd-size");
    let cat = ostree(&repo_path, &["cat", "otter/test", "/usr/bin/tool"]);
    assert_eq!(cat, "#!/bin/sh\necho six\n");

    // The same stream cut 3 bytes into the last file's data: refused, repo unchanged.
    let before = ostree(&repo_path, &["refs"]);
    let cut = &tar[..tar.len() - 5];
    let mut imp = Importer::new(&repo);
    let err = imp.apply_layer(TAR, &mut &cut[..]).unwrap_err();
    assert!(format!("{err:#}").contains("truncated"), "{err:#}");
    drop(imp);
    assert_eq!(ostree(&repo_path, &["refs"]), before);
}
