#!/usr/bin/env python3
"""Turn a Yocto rootfs directory into an ostree-friendly OCI image layout (one tar+gzip layer).

The rootfs is read, never changed. While it is streamed into the layer, paths are mapped the way
ostree wants a tree:

  * /etc/...                      -> /usr/etc/...        (ostree's 3-way merged default config)
  * kernel from /boot (Image*, vmlinuz*, zImage*, fitImage*) or --kernel
                                  -> /usr/lib/modules/$kver/vmlinuz
  * initramfs from /boot or --initramfs -> /usr/lib/modules/$kver/initramfs.img
  * *.dtb from /boot or --dtb     -> /usr/lib/modules/$kver/dtb/NAME.dtb
  * /lib/modules/$kver (no usrmerge) -> /usr/lib/modules/$kver, /lib/modules -> ../usr/lib/modules
  * /var/...                      -> empty /var; dirs and symlinks become systemd-tmpfiles lines
                                     (usr/lib/tmpfiles.d/otter-var.conf), files are kept under
                                     /usr/share/factory/var and copied in by tmpfiles ("C")
  * /boot                         -> empty; device nodes, fifos and sockets are dropped (devtmpfs)
  * /sysroot (empty) and /ostree -> sysroot/ostree are added when missing

Determinism: entries sorted by path, every mtime = SOURCE_DATE_EPOCH (or --mtime), numeric
owners only (uid/gid, no names), PAX format, gzip header without name and with the same mtime.
Hardlinks inside the rootfs stay hardlinks; setuid/setgid/sticky bits are kept.

The layout is written into a temporary directory beside OUT and renamed into place; if OUT is
already an OCI layout the new blobs are added and index.json is replaced atomically (the tag is
moved). Bad input (missing rootfs, bad version or tag, unknown arch) -> exit 2, nothing written.

Python 3 stdlib only (runs on any Yocto build host).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
VERSION_LABEL = "org.opencontainers.image.version"
REF_NAME = "org.opencontainers.image.ref.name"

# A version must sort sensibly for anti-rollback: start with a digit, then a small safe alphabet.
VERSION_RE = re.compile(r"^[0-9][0-9A-Za-z.+~_-]{0,127}$")
# OCI distribution spec tag grammar.
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
KVER_RE = re.compile(r"^[0-9][A-Za-z0-9._+~-]*$")
KERNEL_PREFIXES = ("vmlinuz", "Image", "zImage", "fitImage", "uImage", "bzImage", "vmlinux")
INITRAMFS_PREFIXES = ("initramfs", "initrd")

# Yocto TARGET_ARCH -> OCI platform (architecture, variant)
ARCH_MAP = {
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "arm": ("arm", "v7"),
    "i686": ("386", None),
    "i586": ("386", None),
    "riscv64": ("riscv64", None),
    "ppc64le": ("ppc64le", None),
}

CHUNK = 1 << 20


class InputError(Exception):
    """Bad input: one clear message, exit code 2, nothing written."""


@dataclass
class Entry:
    path: str  # path in the layer, relative, no leading '/', '' never used
    src: Path | None  # file in the rootfs (or extra input), None for synthesized entries
    kind: str  # 'dir' 'file' 'symlink'
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    target: str = ""  # symlink target
    inode: tuple[int, int] | None = None  # (dev, ino) for hardlink detection
    nlink: int = 1


@dataclass
class Plan:
    entries: dict[str, Entry] = field(default_factory=dict)
    tmpfiles: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    kver: str | None = None


def split(path: str) -> tuple[str, ...]:
    return tuple(p for p in path.split("/") if p)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rootfs", type=Path, required=True, help="the image rootfs (IMAGE_ROOTFS)")
    ap.add_argument("--out", type=Path, required=True, help="OCI image layout directory to write")
    ap.add_argument("--version", required=True, help="image version (label org.opencontainers.image.version)")
    ap.add_argument("--tag", help="tag in index.json (default: the version)")
    ap.add_argument("--arch", default="aarch64", help="Yocto TARGET_ARCH or OCI arch (default aarch64)")
    ap.add_argument("--mtime", type=int, help="timestamp for every entry (default $SOURCE_DATE_EPOCH)")
    ap.add_argument("--kernel", type=Path, help="kernel image when the rootfs has none in /boot")
    ap.add_argument("--initramfs", type=Path, help="initramfs to put beside the kernel")
    ap.add_argument("--dtb", type=Path, action="append", default=[], help="devicetree blob (repeatable)")
    ap.add_argument("--kernel-version", help="kernel version when it cannot be inferred")
    ap.add_argument("--label", action="append", default=[], metavar="K=V", help="extra config label")
    ap.add_argument("--compression-level", type=int, default=6, choices=range(1, 10), metavar="1-9")
    return ap.parse_args(argv)


def validate(args: argparse.Namespace) -> tuple[str, str, str | None, int, dict[str, str]]:
    if not VERSION_RE.match(args.version or ""):
        raise InputError(
            f"bad version {args.version!r}: must start with a digit and use only [0-9A-Za-z.+~_-] "
            "(max 128), e.g. OTTER_IMAGE_VERSION = \"1.4.2\""
        )
    tag = args.tag if args.tag is not None else args.version.replace("+", "_").replace("~", "_")
    if not TAG_RE.match(tag):
        raise InputError(f"bad tag {tag!r}: OCI tags are [A-Za-z0-9_][A-Za-z0-9._-]{{0,127}}")
    arch = ARCH_MAP.get(args.arch)
    if arch is None:
        raise InputError(f"unknown arch {args.arch!r}; known: {', '.join(sorted(ARCH_MAP))}")
    if args.mtime is not None:
        mtime = args.mtime
    else:
        sde = os.environ.get("SOURCE_DATE_EPOCH")
        if sde is None:
            raise InputError("no timestamp: set SOURCE_DATE_EPOCH or pass --mtime")
        try:
            mtime = int(sde)
        except ValueError as e:
            raise InputError(f"SOURCE_DATE_EPOCH={sde!r} is not an integer") from e
    if mtime < 0 or mtime > 2**33:
        raise InputError(f"timestamp {mtime} out of range")
    labels = {}
    for kv in args.label:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            raise InputError(f"bad --label {kv!r}: expected KEY=VALUE")
        labels[k] = v
    labels[VERSION_LABEL] = args.version
    root = args.rootfs
    if not root.is_dir():
        raise InputError(f"rootfs {root} does not exist or is not a directory (IMAGE_ROOTFS)")
    if args.kernel_version is not None and not KVER_RE.match(args.kernel_version):
        raise InputError(f"bad --kernel-version {args.kernel_version!r}")
    for p in [args.kernel, args.initramfs, *args.dtb]:
        if p is not None and not p.is_file():
            raise InputError(f"{p}: no such file")
    out = args.out
    if not out.absolute().parent.is_dir():
        raise InputError(f"the parent directory of --out {out} does not exist")
    if out.exists() and not (out / "oci-layout").is_file():
        raise InputError(f"{out} exists and is not an OCI image layout; remove it or pick another --out")
    return tag, arch[0], arch[1], mtime, labels


def lstat_entry(path: str, src: Path, st: os.stat_result) -> Entry:
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISDIR(st.st_mode):
        return Entry(path, src, "dir", mode, st.st_uid, st.st_gid)
    if stat.S_ISLNK(st.st_mode):
        return Entry(path, src, "symlink", 0o777, st.st_uid, st.st_gid, target=os.readlink(src))
    return Entry(path, src, "file", mode, st.st_uid, st.st_gid, inode=(st.st_dev, st.st_ino), nlink=st.st_nlink)


def kver_from_name(name: str) -> str | None:
    for p in KERNEL_PREFIXES + INITRAMFS_PREFIXES:
        if name.startswith(p + "-"):
            v = name[len(p) + 1 :]
            for suffix in (".img", ".bin", ".cpio.gz", ".cpio"):
                if v.endswith(suffix):
                    v = v[: -len(suffix)]
            return v if KVER_RE.match(v) else None
    return None


def walk(root: Path):
    """Yield (relpath, Path, lstat) for everything under root, in sorted order, not following links."""
    stack = [""]
    while stack:
        rel = stack.pop()
        d = root / rel if rel else root
        try:
            names = sorted(os.listdir(d), reverse=True)
        except OSError as e:
            raise InputError(f"cannot list {d}: {e.strerror}") from e
        for name in names:
            r = f"{rel}/{name}" if rel else name
            p = root / r
            st = os.lstat(p)
            yield r, p, st
            if stat.S_ISDIR(st.st_mode):
                stack.append(r)


def plan_tree(args: argparse.Namespace) -> Plan:
    root: Path = args.rootfs
    plan = Plan()
    ents = plan.entries
    boot_kernels: list[tuple[str, Path, os.stat_result]] = []
    boot_initrds: list[tuple[str, Path, os.stat_result]] = []
    boot_dtbs: list[tuple[str, Path, os.stat_result]] = []
    modules_kvers: list[str] = []
    lib_is_symlink = os.path.islink(root / "lib")
    if os.path.isdir(root / "etc") and os.path.lexists(root / "usr" / "etc"):
        raise InputError(f"{root} has both /etc and /usr/etc; ostree keeps /etc in /usr/etc, remove one")
    var_files: list[tuple[str, Path, os.stat_result]] = []

    top = os.lstat(root)
    ents[""] = Entry("", root, "dir", stat.S_IMODE(top.st_mode), top.st_uid, top.st_gid)
    for rel, p, st in walk(root):
        parts = split(rel)
        head = parts[0]
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode):
            plan.notes.append(f"dropped special file /{rel} (devices come from devtmpfs at boot)")
            continue
        if head == "etc":
            new = "usr/" + rel
            if new in ents:
                raise InputError(f"both /{rel} and /{new} exist in the rootfs; ostree keeps /etc in /usr/etc")
            ents[new] = lstat_entry(new, p, st)
            continue
        if head == "boot":
            if len(parts) == 1:
                ents["boot"] = Entry("boot", None, "dir", 0o755)
                continue
            name = parts[-1]
            if len(parts) == 2 and not stat.S_ISDIR(st.st_mode):
                target = p
                if stat.S_ISLNK(st.st_mode):  # e.g. Image -> Image-6.6.21-yocto-standard
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                if name.startswith(KERNEL_PREFIXES):
                    boot_kernels.append((name, target, st))
                elif name.startswith(INITRAMFS_PREFIXES):
                    boot_initrds.append((name, target, st))
                elif name.endswith(".dtb"):
                    boot_dtbs.append((name, target, st))
                else:
                    plan.notes.append(f"dropped /{rel} (/boot is managed by the bootloader integration)")
            elif name.endswith(".dtb") and stat.S_ISREG(st.st_mode):  # /boot/dtb/vendor/x.dtb
                boot_dtbs.append((name, p, st))
            elif not stat.S_ISDIR(st.st_mode):
                plan.notes.append(f"dropped /{rel} (/boot is managed by the bootloader integration)")
            continue
        if head == "var":
            if len(parts) == 1:
                ents["var"] = Entry("var", None, "dir", 0o755)
                continue
            if stat.S_ISDIR(st.st_mode):
                plan.tmpfiles.append(f"d /{rel} {stat.S_IMODE(st.st_mode):04o} {st.st_uid} {st.st_gid} -")
            elif stat.S_ISLNK(st.st_mode):
                plan.tmpfiles.append(f"L /{rel} - - - - {os.readlink(p)}")
            else:
                var_files.append((rel, p, st))
            continue
        if head == "lib" and not lib_is_symlink and len(parts) >= 2 and parts[1] == "modules":
            new = "usr/" + rel
            if len(parts) == 2:
                if not stat.S_ISDIR(st.st_mode):
                    raise InputError(f"/{rel} is not a directory")
                continue  # replaced by a symlink below
            if len(parts) == 3 and stat.S_ISDIR(st.st_mode):
                modules_kvers.append(parts[2])
            ents[new] = lstat_entry(new, p, st)
            continue
        ents[rel] = lstat_entry(rel, p, st)
        if parts[:3] == ("usr", "lib", "modules") and len(parts) == 4 and stat.S_ISDIR(st.st_mode):
            modules_kvers.append(parts[3])

    if (root / "lib" / "modules").is_dir() and not lib_is_symlink:
        ents["lib/modules"] = Entry("lib/modules", None, "symlink", 0o777, target="../usr/lib/modules")

    # /var content: files are kept under /usr/share/factory and copied in by tmpfiles (C).
    for rel, p, st in var_files:
        new = "usr/share/factory/" + rel
        ents[new] = lstat_entry(new, p, st)
        plan.tmpfiles.append(f"C /{rel} - - - - /{new}")

    # Kernel version: explicit > /lib/modules/<kver> (exactly one) > kernel file name suffix.
    kvers = sorted(set(modules_kvers))
    kver = args.kernel_version
    if kver is None and len(kvers) == 1:
        kver = kvers[0]
    if kver is None:
        names = [n for n, _, _ in boot_kernels] + ([args.kernel.name] if args.kernel else [])
        cands = sorted({v for v in (kver_from_name(n) for n in names) if v})
        if len(cands) == 1:
            kver = cands[0]
    kernel_src: Path | None = args.kernel
    if kernel_src is None and boot_kernels:
        # prefer the versioned file (Image-6.6...) over plain names; symlinks were skipped
        versioned = [(n, p, s) for n, p, s in boot_kernels if kver and n.endswith(kver)]
        pick = versioned or boot_kernels
        if len({n for n, _, _ in pick}) > 1 and not versioned:
            raise InputError(
                "several kernels in /boot (" + ", ".join(n for n, _, _ in pick) + "); pass --kernel"
            )
        kernel_src = pick[0][1]
    if kernel_src is not None:
        if kver is None:
            raise InputError(
                f"cannot tell the kernel version of {kernel_src}: /lib/modules has {kvers or 'nothing'}; "
                "pass --kernel-version"
            )
        if kvers and kver not in kvers:
            raise InputError(f"kernel version {kver} has no /lib/modules/{kver} (found {kvers})")
        plan.kver = kver
        moddir = f"usr/lib/modules/{kver}"
        ents[f"{moddir}/vmlinuz"] = Entry(f"{moddir}/vmlinuz", kernel_src, "file", 0o644)
        initrd = args.initramfs
        if initrd is None and boot_initrds:
            initrd = boot_initrds[0][1]
        if initrd is not None:
            ents[f"{moddir}/initramfs.img"] = Entry(f"{moddir}/initramfs.img", initrd, "file", 0o644)
        dtbs = [(d.name, d) for d in args.dtb] or [(n, p) for n, p, _ in boot_dtbs]
        for name, p in dtbs:
            if name.startswith("devicetree-"):
                name = name[len("devicetree-") :]
            ents[f"{moddir}/dtb/{name}"] = Entry(f"{moddir}/dtb/{name}", p, "file", 0o644)
    elif boot_initrds or boot_dtbs:
        raise InputError("/boot has an initramfs or devicetree but no kernel; pass --kernel")
    else:
        plan.notes.append("no kernel found (/boot or --kernel): the image is not bootable by itself")

    # ostree's expected toplevel
    ents.setdefault("boot", Entry("boot", None, "dir", 0o755))
    ents.setdefault("var", Entry("var", None, "dir", 0o755))
    ents.setdefault("sysroot", Entry("sysroot", None, "dir", 0o755))
    ents.setdefault("ostree", Entry("ostree", None, "symlink", 0o777, target="sysroot/ostree"))
    if plan.tmpfiles:
        body = "# Generated by meta-otter rootfs-to-oci.py: /var content of the Yocto rootfs\n"
        body += "\n".join(sorted(plan.tmpfiles, key=lambda line: split(line.split()[1]))) + "\n"
        path = "usr/lib/tmpfiles.d/otter-var.conf"
        if path in ents:
            raise InputError(f"/{path} already exists in the rootfs")
        e = Entry(path, None, "file", 0o644)
        e.target = body  # content carried in target for synthesized files
        ents[path] = e

    # Synthesize missing parent directories (e.g. usr/lib/modules/KVER/dtb).
    for path in list(ents):
        parts = split(path)
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in ents:
                ents[parent] = Entry(parent, None, "dir", 0o755)
            elif ents[parent].kind != "dir":
                raise InputError(f"/{parent} is a {ents[parent].kind} but /{path} needs it to be a directory")
    return plan


class HashingWriter(io.RawIOBase):
    def __init__(self, f):
        self.f = f
        self.h = hashlib.sha256()
        self.n = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.f.write(b)
        self.h.update(b)
        self.n += len(b)
        return len(b)


def write_layer(plan: Plan, mtime: int, blobs: Path, level: int) -> tuple[str, int, str]:
    """Stream the layer into blobs/sha256; return (digest hex, size, diff_id hex)."""
    fd, tmp = tempfile.mkstemp(prefix=".layer.", dir=blobs)
    with os.fdopen(fd, "wb") as raw:
        comp = HashingWriter(raw)
        with gzip.GzipFile(filename="", mode="wb", fileobj=comp, mtime=mtime, compresslevel=level) as gz:
            uncomp = HashingWriter(gz)
            with tarfile.open(fileobj=uncomp, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                seen_inodes: dict[tuple[int, int], str] = {}
                for path in sorted((p for p in plan.entries if p), key=split):
                    e = plan.entries[path]
                    ti = tarfile.TarInfo(path)
                    ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = mtime, e.uid, e.gid, "", ""
                    ti.mode = e.mode
                    if e.kind == "dir":
                        ti.type = tarfile.DIRTYPE
                        tar.addfile(ti)
                    elif e.kind == "symlink":
                        ti.type, ti.linkname = tarfile.SYMTYPE, e.target
                        tar.addfile(ti)
                    elif e.src is None:  # synthesized file
                        data = e.target.encode()
                        ti.size = len(data)
                        tar.addfile(ti, io.BytesIO(data))
                    else:
                        if e.inode is not None and e.nlink > 1 and e.inode in seen_inodes:
                            ti.type, ti.linkname = tarfile.LNKTYPE, seen_inodes[e.inode]
                            tar.addfile(ti)
                            continue
                        if e.inode is not None and e.nlink > 1:
                            seen_inodes[e.inode] = path
                        with open(e.src, "rb") as f:
                            ti.size = os.fstat(f.fileno()).st_size
                            tar.addfile(ti, f)
            uncomp.flush()
        raw.flush()
        os.fsync(raw.fileno())
    digest = comp.h.hexdigest()
    os.replace(tmp, blobs / digest)
    return digest, comp.n, uncomp.h.hexdigest()


def put_blob(blobs: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    atomic_write(blobs / digest, data)
    return digest, len(data)


def atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    dfd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def build(args: argparse.Namespace) -> dict:
    tag, arch, variant, mtime, labels = validate(args)
    plan = plan_tree(args)
    out: Path = args.out
    existing = out.exists()
    work = out if existing else Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        blobs = work / "blobs" / "sha256"
        blobs.mkdir(parents=True, exist_ok=True)
        layer_digest, layer_size, diff_id = write_layer(plan, mtime, blobs, args.compression_level)
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mtime))
        config = {
            "created": created,
            "architecture": arch,
            "os": "linux",
            "config": {"Labels": labels},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
            "history": [{"created": created, "created_by": "meta-otter rootfs-to-oci.py"}],
        }
        if variant:
            config["variant"] = variant
        cfg_digest, cfg_size = put_blob(blobs, canonical(config))
        manifest = {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, "digest": f"sha256:{cfg_digest}", "size": cfg_size},
            "layers": [{"mediaType": MT_LAYER, "digest": f"sha256:{layer_digest}", "size": layer_size}],
            "annotations": {VERSION_LABEL: args.version, "org.opencontainers.image.created": created},
        }
        man_digest, man_size = put_blob(blobs, canonical(manifest))
        platform = {"architecture": arch, "os": "linux"}
        if variant:
            platform["variant"] = variant
        desc = {
            "mediaType": MT_MANIFEST,
            "digest": f"sha256:{man_digest}",
            "size": man_size,
            "annotations": {REF_NAME: tag},
            "platform": platform,
        }
        manifests = []
        if existing:
            try:
                old = json.loads((work / "index.json").read_text())
                manifests = [m for m in old.get("manifests", []) if m.get("annotations", {}).get(REF_NAME) != tag]
            except (OSError, ValueError, AttributeError) as e:
                raise InputError(f"{work}/index.json is unreadable ({e}); remove {out} and retry") from e
        manifests.append(desc)
        index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": manifests}
        atomic_write(work / "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        atomic_write(work / "index.json", json.dumps(index, indent=2, sort_keys=True).encode() + b"\n")
        if not existing:
            os.rename(work, out)
            fsync_dir(out.parent)
    except BaseException:
        if not existing:
            shutil.rmtree(work, ignore_errors=True)
        raise
    return {
        "layout": str(out),
        "tag": tag,
        "manifest_digest": f"sha256:{man_digest}",
        "config_digest": f"sha256:{cfg_digest}",
        "layer_digest": f"sha256:{layer_digest}",
        "diff_id": f"sha256:{diff_id}",
        "kernel_version": plan.kver,
        "notes": plan.notes,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = build(args)
    except InputError as e:
        print(f"rootfs-to-oci: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"rootfs-to-oci: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 1
    for n in result.pop("notes"):
        print(f"rootfs-to-oci: note: {n}", file=sys.stderr)
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
