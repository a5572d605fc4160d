#!/usr/bin/env python3
"""otter QEMU aarch64 rig: builds a disk (real U-Boot, Debian arm64 kernel, busybox initramfs with
otter's prepare-root, an ostree sysroot) without root or loop devices, boots it in
qemu-system-aarch64 (TCG) and runs whole update / rollback scenarios over the serial console.

Everything it needs is Debian packages (scripts/setup.sh) and our own build. Built artifacts are
cached under qemu-tests/.cache/ (keyed by their inputs); scenarios run on qcow2 overlays of one
base disk. Every process it starts (qemu, docker-registry) is killed by PID when it ends.
"""

import glob
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CACHE = os.environ.get("OTTER_RIG_CACHE", os.path.join(HERE, ".cache"))
BOARD = "qemu-aarch64-virt"
STATEROOT = "otter"
ENV_SIZE = 0x4000
MODULES = [  # initramfs modules, dependency order (Debian builds these as modules)
    "kernel/drivers/virtio/virtio_mmio.ko",
    "kernel/drivers/block/virtio_blk.ko",
    "kernel/net/core/failover.ko",
    "kernel/drivers/net/net_failover.ko",
    "kernel/drivers/net/virtio_net.ko",
    "kernel/lib/crc16.ko",
    "kernel/crypto/crc32c_generic.ko",
    "kernel/lib/libcrc32c.ko",
    "kernel/fs/mbcache.ko",
    "kernel/fs/jbd2/jbd2.ko",
    "kernel/fs/ext4/ext4.ko",
    "kernel/fs/fat/fat.ko",
    "kernel/fs/fat/vfat.ko",
    "kernel/fs/nls/nls_cp437.ko",
    "kernel/fs/nls/nls_iso8859-1.ko",
    "kernel/fs/nls/nls_ascii.ko",
]
TOOLS = {  # command -> Debian package
    "qemu-system-aarch64": "qemu-system-arm",
    "qemu-img": "qemu-utils",
    "mkimage": "u-boot-tools",
    "mkenvimage": "u-boot-tools",
    "fw_printenv": "libubootenv-tool",
    "sfdisk": "fdisk",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "mkfs.ext4": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "cpio": "cpio",
    "ostree": "ostree",
    "skopeo": "skopeo",
    "docker-registry": "docker-registry",
    "busybox": "busybox-static",
    "apt-get": "apt",
    "dpkg-deb": "dpkg",
}
UBOOT_BIN = "/usr/lib/u-boot/qemu_arm64/u-boot.bin"


class RigError(Exception):
    pass


def log(msg):
    print(f"[rig {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd, cwd=None, env=None, input=None, check=True, quiet=True):
    """Run a command; on failure raise with its output."""
    p = subprocess.run(cmd, cwd=cwd, env=env, input=input, capture_output=True,
                       shell=isinstance(cmd, str))
    if check and p.returncode != 0:
        raise RigError(f"command failed ({p.returncode}): {cmd}\n{p.stdout.decode(errors='replace')}"
                       f"{p.stderr.decode(errors='replace')}")
    if not quiet:
        sys.stdout.write(p.stdout.decode(errors="replace"))
    return p.stdout.decode(errors="replace")


def need_tools():
    missing = [f"{c} (apt package {p})" for c, p in TOOLS.items() if shutil.which(c) is None]
    if not os.path.exists(UBOOT_BIN):
        missing.append(f"{UBOOT_BIN} (apt package u-boot-qemu)")
    if missing:
        raise RigError("missing tools: " + ", ".join(missing) + "; run scripts/setup.sh")


def digest(*parts):
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, str) and os.path.isfile(p):
            with open(p, "rb") as f:
                h.update(f.read())
        elif isinstance(p, str) and os.path.isdir(p):
            for root, dirs, files in sorted(os.walk(p)):
                dirs.sort()
                for fn in sorted(files):
                    fp = os.path.join(root, fn)
                    h.update(fp.encode())
                    if os.path.isfile(fp) and not os.path.islink(fp):
                        with open(fp, "rb") as f:
                            h.update(f.read())
        else:
            h.update(str(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


class Step:
    """A cached build step: output dir CACHE/name, redone when its key changes."""

    def __init__(self, name, key):
        self.dir = os.path.join(CACHE, name)
        self.key = key
        self.stamp = self.dir + ".key"

    def fresh(self):
        try:
            with open(self.stamp) as f:
                return f.read() == self.key and os.path.isdir(self.dir)
        except OSError:
            return False

    def begin(self):
        if os.path.exists(self.dir):
            run(["rm", "-rf", self.dir])
        os.makedirs(self.dir)
        return self.dir

    def done(self):
        with open(self.stamp, "w") as f:
            f.write(self.key)


# ------------------------------------------------------------------------------------------------
# Build: Debian arm64 packages, kernel, initramfs, U-Boot bits


def debs():
    d = os.path.join(CACHE, "debs")
    os.makedirs(d, exist_ok=True)
    have_k = glob.glob(os.path.join(d, "linux-image-*-arm64_*_arm64.deb"))
    have_b = glob.glob(os.path.join(d, "busybox-static_*_arm64.deb"))
    if have_k and have_b:
        return have_k[0], have_b[0]
    archs = run(["dpkg", "--print-foreign-architectures"]).split()
    if "arm64" not in archs:
        raise RigError("dpkg has no arm64 foreign architecture: run scripts/setup.sh "
                       "(it runs dpkg --add-architecture arm64 && apt-get update)")
    deps = run(["apt-cache", "depends", "linux-image-arm64:arm64"])
    m = re.search(r"Depends: (linux-image-[0-9.]+-[0-9]+-arm64)", deps)
    if not m:
        raise RigError(f"cannot find the kernel package behind linux-image-arm64:arm64:\n{deps}")
    log(f"apt-get download {m.group(1)}:arm64 busybox-static:arm64")
    run(["apt-get", "download", f"{m.group(1)}:arm64", "busybox-static:arm64"], cwd=d)
    return debs()


def kernel():
    kdeb, bdeb = debs()
    st = Step("kernel", digest(kdeb, bdeb, "v2"))
    if not st.fresh():
        d = st.begin()
        log("extracting kernel and busybox")
        x = os.path.join(d, "x")
        run(["dpkg-deb", "-x", kdeb, x])
        run(["dpkg-deb", "-x", bdeb, x])
        (kver,) = os.listdir(os.path.join(x, "lib/modules"))
        shutil.move(os.path.join(x, "boot", f"vmlinuz-{kver}"), os.path.join(d, "Image"))
        mods = os.path.join(d, "modules")
        for m in MODULES:
            src = os.path.join(x, "lib/modules", kver, m)
            if not os.path.exists(src):
                raise RigError(f"kernel {kver} has no module {m}")
            os.makedirs(os.path.dirname(os.path.join(mods, m)), exist_ok=True)
            shutil.copy(src, os.path.join(mods, m))
        shutil.move(os.path.join(x, "bin/busybox"), os.path.join(d, "busybox"))
        with open(os.path.join(d, "kver"), "w") as f:
            f.write(kver)
        run(["rm", "-rf", x])
        st.done()
    with open(os.path.join(st.dir, "kver")) as f:
        kver = f.read().strip()
    return st.dir, kver


def applets():
    # Debian builds busybox and busybox-static for every arch from one config: the host's list
    # is the arm64 binary's list.
    return run(["busybox", "--list"]).split()


def cpio_newc(root, out):
    """Pack `root` as a gzip'd newc cpio owned by root (no root needed)."""
    files = []
    for r, dirs, fs in os.walk(root):
        dirs.sort()
        for n in sorted(dirs + fs):
            files.append(os.path.relpath(os.path.join(r, n), root))
    p = subprocess.run(["cpio", "-o", "-H", "newc", "-R", "0:0", "--quiet"], cwd=root,
                       input="\n".join(files).encode() + b"\n", capture_output=True)
    if p.returncode != 0:
        raise RigError(f"cpio failed: {p.stderr.decode()}")
    import gzip
    with open(out, "wb") as f:
        f.write(gzip.compress(p.stdout, 6, mtime=0))


def initramfs(broken=False):
    """The initramfs: busybox, the modules above, prepare-root as /init. `broken` gives the
    'kernel that cannot boot' variant (no /init, no modules: the kernel panics)."""
    kdir, kver = kernel()
    pr = os.path.join(REPO, "board-support/initramfs/prepare-root.sh")
    name = "initramfs-broken" if broken else "initramfs"
    st = Step(name, digest(kdir, pr, broken, "v3"))
    if not st.fresh():
        d = st.begin()
        log(f"building {name}")
        root = os.path.join(d, "root")
        for sub in ["bin", "dev", "proc", "sys", "run", "sysroot", "sysroot.tmp", "etc"]:
            os.makedirs(os.path.join(root, sub))
        if broken:
            with open(os.path.join(root, "etc/broken"), "w") as f:
                f.write("this initramfs has no /init on purpose\n")
        else:
            shutil.copy(os.path.join(kdir, "busybox"), os.path.join(root, "bin/busybox"))
            for a in applets():
                if a != "busybox":
                    os.symlink("busybox", os.path.join(root, "bin", a))
            os.symlink("bin", os.path.join(root, "sbin"))
            shutil.copytree(os.path.join(kdir, "modules"), os.path.join(root, "lib/modules", kver))
            with open(os.path.join(root, "etc/modules-load"), "w") as f:
                f.write("\n".join(MODULES) + "\n")
            shutil.copy(pr, os.path.join(root, "init"))
            os.chmod(os.path.join(root, "init"), 0o755)
        cpio_newc(root, os.path.join(d, "initramfs.img"))
        run(["rm", "-rf", root])
        st.done()
    return os.path.join(st.dir, "initramfs.img")


def boot_script_source():
    ours = os.path.join(REPO, "boot-counter/u-boot/boot.cmd")
    return ours if os.path.exists(ours) else os.path.join(HERE, "uboot/boot.cmd")


def uboot_bits():
    """boot.scr (mkimage), the pflash env that makes Debian's U-Boot run it, the initial
    uboot.env for the FAT partition."""
    src = boot_script_source()
    st = Step("uboot", digest(src, UBOOT_BIN, "uboot-format-1"))
    if not st.fresh():
        d = st.begin()
        log(f"building boot.scr from {os.path.relpath(src, REPO)}")
        run(["mkimage", "-A", "arm64", "-O", "linux", "-T", "script", "-C", "none",
             "-n", "otter boot", "-d", src, os.path.join(d, "boot.scr")])
        # U-Boot's own env (pflash bank 1, read-only: saveenv is broken on QEMU 7.2): run the
        # script from the FAT partition right away.
        envtxt = os.path.join(d, "flash-env.txt")
        with open(envtxt, "w") as f:
            # The flash env replaces U-Boot's default env, so carry qemu_arm64's addresses.
            f.write("bootdelay=0\n"
                    "fdt_high=0xffffffff\ninitrd_high=0xffffffff\n"
                    "scriptaddr=0x40100000\nloadaddr=0x40200000\n"
                    # boot-counter/u-boot/boot.cmd: uboot.env on partition 1, root on 2.
                    "otter_envpart=0:1\notter_rootpart=0:2\n"
                    "kernel_addr_r=0x40400000\nramdisk_addr_r=0x46000000\n"
                    "bootcmd=virtio scan; fatload virtio 0:1 ${scriptaddr} boot.scr && "
                    "source ${scriptaddr}; echo otter-rig: boot script failed; poweroff\n")
        flash = os.path.join(d, "flash1.img")
        run(["mkenvimage", "-s", "0x40000", "-o", flash + ".env", envtxt])
        with open(flash, "wb") as f:
            with open(flash + ".env", "rb") as e:
                f.write(e.read())
            f.truncate(64 * 1024 * 1024)
        os.unlink(flash + ".env")
        # The boot-count env file the script and fw_printenv share; starts empty (not armed).
        with open(os.path.join(d, "uboot-env.txt"), "w") as f:
            f.write("bootcount=0\nbootlimit=3\nupgrade_available=0\n")
        run(["mkenvimage", "-s", hex(ENV_SIZE), "-o", os.path.join(d, "uboot.env"),
             os.path.join(d, "uboot-env.txt")])
        st.done()
    return st.dir


# ------------------------------------------------------------------------------------------------
# The test OS: busybox, otter, otter-boot, kernel + initramfs, health checks; versions v1..v4

RCS = r"""#!/bin/sh
# otter test OS: bring the system up, then run the boot-count health check.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /tmp /run/lock /var/lib/otter /var/tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t vfat /dev/vda1 /boot/firmware || echo "rcS: cannot mount the firmware partition"
[ -b /dev/vdb ] && mkdir -p /media/usb && mount -o ro /dev/vdb /media/usb 2>/dev/null
hostname otter-rig
ip link set lo up
ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up && ip route add default via 10.0.2.2
. /usr/lib/os-release
echo "OTTER-OS version=$VERSION_ID"
if [ -x /etc/otter/rig-boot.sh ]; then /etc/otter/rig-boot.sh; fi
echo "OTTER-BOOTED version=$VERSION_ID check=$(cat /run/otter-check-rc 2>/dev/null || echo none)"
"""

# Run at the end of rcS: what systemd units (otter-boot-detect-fallback, otter-boot-check) do
# on a systemd image.
RIG_BOOT = r"""#!/bin/sh
if [ -x /usr/bin/otter-boot ]; then
    otter-boot detect-fallback; echo "OTTER-DETECT rc=$?"
    otter-boot check; rc=$?; echo "OTTER-CHECK rc=$rc"; echo $rc > /run/otter-check-rc
    otter-boot status
fi
"""

CHUNK = 1024 * 1024  # otter's download journal chunk (SourceOptions::chunk_size)
REGISTRY = "10.0.2.100:5000"  # the guest's view of the rig's registry (QEMU guestfwd)
IMAGE = f"{REGISTRY}/otter/os:stable"

OTTER_CONF = f"""# otter test OS
[update]
stateroot = {STATEROOT}
[registry]
insecure-hosts = {REGISTRY}
[trust]
require-signature = true
keys-dir = /etc/otter/keys
[boot]
backend = uboot:/etc/fw_env.config
tries = 3
# busybox init, no systemd: the defaults would be systemctl reboot / otter rollback
reboot-command = sync; reboot
rollback-command = otter rollback
check-timeout = 120
"""

INITTAB = """::sysinit:/etc/init.d/rcS
::respawn:-/bin/sh
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/sync
::shutdown:/bin/umount -a -r
"""


def otter_binaries():
    """Static aarch64 otter + otter-boot if built (cargo build --release --target
    aarch64-unknown-linux-musl -p otter -p otter-boot); None until they exist."""
    d = os.path.join(REPO, "target/aarch64-unknown-linux-musl/release")
    return {n: os.path.join(d, n) for n in ["otter", "otter-boot"]
            if os.path.exists(os.path.join(d, n))}


def build_binaries():
    log("cargo build --release --target aarch64-unknown-linux-musl -p otter -p otter-boot")
    env = dict(os.environ, CARGO_BUILD_JOBS=os.environ.get("CARGO_BUILD_JOBS", "2"))
    p = subprocess.run(["cargo", "build", "--release", "--target", "aarch64-unknown-linux-musl",
                        "-p", "otter", "-p", "otter-boot"], cwd=REPO, env=env,
                       capture_output=True)
    if p.returncode != 0:
        raise RigError("cargo build of the aarch64 binaries failed:\n" + p.stderr.decode()[-4000:])
    return otter_binaries()


def os_tree(version, dest, health="ok"):
    """Write the OS tree for `version` (1..4) into dest (ostree/OCI layout: /usr, /usr/etc)."""
    kdir, kver = kernel()
    bb = os.path.join(kdir, "busybox")
    for sub in ["usr/bin", "usr/lib", "usr/etc/init.d", "usr/etc/otter/keys", "usr/share/otter-test",
                "usr/lib/greenboot/check/required.d", "usr/lib/greenboot/check/wanted.d",
                "usr/lib/greenboot/green.d", "usr/lib/greenboot/red.d",
                f"usr/lib/modules/{kver}",
                "boot", "dev", "proc", "run", "sys", "sysroot", "tmp", "var", "root", "media",
                "mnt", "home"]:
        os.makedirs(os.path.join(dest, sub), exist_ok=True)
    os.chmod(os.path.join(dest, "tmp"), 0o1777)
    shutil.copy(bb, os.path.join(dest, "usr/bin/busybox"))
    for a in applets():
        if a != "busybox":
            os.symlink("busybox", os.path.join(dest, "usr/bin", a))
    for link, target in [("bin", "usr/bin"), ("sbin", "usr/bin"), ("lib", "usr/lib"),
                         ("usr/sbin", "bin"), ("ostree", "sysroot/ostree")]:
        os.symlink(target, os.path.join(dest, link))
    bins = otter_binaries()
    if bins:
        for n, p in bins.items():
            shutil.copy(p, os.path.join(dest, "usr/bin", n))
    # Kernel + initramfs where ostree looks for them. v4 ships an initramfs that cannot boot.
    shutil.copy(os.path.join(kdir, "Image"), os.path.join(dest, f"usr/lib/modules/{kver}/vmlinuz"))
    shutil.copy(initramfs(broken=(health == "panic")),
                os.path.join(dest, f"usr/lib/modules/{kver}/initramfs.img"))
    def w(rel, text, mode=0o644):
        p = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(text)
        os.chmod(p, mode)
    w("usr/lib/os-release", f'NAME="Otter Test OS"\nID=otter-test\nVERSION_ID={version}\n'
      f'PRETTY_NAME="Otter Test OS {version}"\n')
    os.symlink("../lib/os-release", os.path.join(dest, "usr/etc/os-release"))
    w("usr/etc/inittab", INITTAB)
    w("usr/etc/init.d/rcS", RCS, 0o755)
    w("usr/etc/hostname", "otter-rig\n")
    w("usr/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
    w("usr/etc/group", "root:x:0:\n")
    w("usr/etc/profile", "export PATH=/usr/bin:/bin\nexport PS1='otter# '\n")
    w("usr/share/otter-test/version", f"{version}\n")
    # 512 KiB that does not compress: makes the per-version layer big enough to cut the power
    # in the middle of its download.
    payload, h = bytearray(), hashlib.sha256(f"payload v{version}".encode()).digest()
    while len(payload) < 512 * 1024:
        h = hashlib.sha256(h).digest()
        payload += h
    with open(os.path.join(dest, f"usr/share/otter-test/payload-v{version}"), "wb") as f:
        f.write(payload)
    # Health checks: executables without .sh (otter-boot runs *.sh with bash; this OS has ash).
    w("usr/lib/greenboot/check/required.d/10-version",
      f"#!/bin/sh\ntest \"$(cat /usr/share/otter-test/version)\" = {version}\n", 0o755)
    if health == "fail":
        w("usr/lib/greenboot/check/required.d/50-must-fail",
          "#!/bin/sh\necho 'rig: v%s health check fails on purpose' >&2\nexit 1\n" % version, 0o755)
    w("usr/lib/greenboot/green.d/50-rig", "#!/bin/sh\necho OTTER-GREEN\n", 0o755)
    w("usr/lib/greenboot/red.d/50-rig", "#!/bin/sh\necho OTTER-RED\n", 0o755)
    w("usr/etc/otter/rig-boot.sh", RIG_BOOT, 0o755)
    w("usr/etc/otter/otter.conf", OTTER_CONF)
    shutil.copy(release_key()[1], os.path.join(dest, "usr/etc/otter/keys/rig.pub"))
    return dest


VERSIONS = {1: "ok", 2: "ok", 3: "fail", 4: "panic"}
# Bump when os_tree(), the disk layout or the install steps change (cache key of the images).
IMAGE_FORMAT = ("image-format-3", RCS, RIG_BOOT, OTTER_CONF, INITTAB, tuple(VERSIONS.items()))


PUBLISH = os.path.join(REPO, "target/debug/otter-publish")


def release_key():
    """The rig's minisign release key pair (otter-publish keygen), made once per cache."""
    st = Step("keys", "keys-1")
    if not st.fresh():
        d = st.begin()
        run([PUBLISH, "keygen", "--out", os.path.join(d, "rig")])
        st.done()
    return os.path.join(st.dir, "rig.key"), os.path.join(st.dir, "rig.pub")


def sign(image, content=None):
    """`otter-publish sign` a release statement for IMAGE (for this board); returns the content
    checksum. With `content` (known from signing the layout) the import is skipped."""
    cmd = [PUBLISH, "sign", "--key", release_key()[0], "--board", BOARD, image]
    if content:
        cmd += ["--content-checksum", content]
    if image.startswith("docker://"):
        cmd.append("--plain-http")
    m = re.search(r"\(content ([0-9a-f]{64})\)", run(cmd))
    if not m:
        raise RigError(f"otter-publish sign {image}: no content checksum in its output")
    return m.group(1)


def content_checksums():
    with open(os.path.join(oci_images() + "-content.json")) as f:
        return {int(k): v for k, v in json.load(f).items()}


def otter_board(*args):
    return run(["cargo", "run", "-q", "-p", "otter-board", "--", *args], cwd=REPO)


def placeholder_sysroot(trees, out):
    """A sysroot made by the real `ostree admin deploy` (stand-in until `otter install` works):
    `trees` deployed in order, the last one is the default. ostree freezes the filesystem holding
    /boot, so it runs on a private tmpfs, then the result is copied out."""
    kargs = otter_board("file", BOARD, "cmdline").split()
    script = r"""
set -e
out=$1; shift
mnt=$(mktemp -d); mount -t tmpfs tmpfs $mnt; sr=$mnt/sr; mkdir $sr
ostree admin init-fs $sr >/dev/null
ostree admin os-init %(os)s --sysroot=$sr >/dev/null
kargs=""
while [ "$1" != "--" ]; do kargs="$kargs --karg=$1"; shift; done; shift
for t in "$@"; do
  v=${t##*-v}
  ostree commit --repo=$sr/ostree/repo -b %(os)s/base --add-metadata-string=version=$v -s v$v $t >/dev/null
  ostree admin deploy --sysroot=$sr --os=%(os)s --retain $kargs %(os)s/base >/dev/null
done
cp -a $sr/. $out
umount $mnt; rmdir $mnt
""" % {"os": STATEROOT}
    os.makedirs(out)
    run(["unshare", "-m", "bash", "-c", script, "x", out] + kargs + ["--"] + trees)


def otter_install_sysroot(image_dir, out):
    """`otter install --board BOARD --sysroot OUT oci:DIR:v1` with the host build of otter (the
    board profile writes fw_env.config, the kernel arguments and uEnv.txt)."""
    otter = os.path.join(REPO, "target/debug/otter")
    os.makedirs(out)
    cfg = os.path.join(os.path.dirname(out), "install.conf")
    with open(cfg, "w") as f:
        f.write(f"[update]\nstateroot = {STATEROOT}\nplatform = linux/arm64\n[trust]\n"
                f"require-signature = true\nkeys-dir = {os.path.dirname(release_key()[1])}\n")
    run([otter, "--config", cfg, "install", "--sysroot", out, "--stateroot", STATEROOT,
         "--board", BOARD, f"oci:{image_dir}:v1"])


def make_disk(sysroot, out_qcow2, envfile=None):
    """GPT disk per the board profile: FAT firmware partition (boot.scr, uboot.env) + ext4 root
    holding the sysroot. No root, no loop devices: sfdisk on a file, mkfs into files, dd."""
    ub = uboot_bits()
    work = tempfile.mkdtemp(dir=CACHE, prefix="disk.")
    try:
        fw_mib, root_mib = 32, 320
        raw = os.path.join(work, "disk.img")
        with open(raw, "wb") as f:
            f.truncate((1 + fw_mib + root_mib + 1) * 1024 * 1024)
        run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", raw],
            input=otter_board("file", BOARD, "sfdisk").encode())
        parts = json.loads(run(["sfdisk", "--json", raw]))["partitiontable"]["partitions"]
        fat = os.path.join(work, "fat.img")
        run(["mkfs.vfat", "-n", "FIRMWARE", "-C", fat, str(parts[0]["size"] // 2)])
        run(["mcopy", "-i", fat, os.path.join(ub, "boot.scr"),
             envfile or os.path.join(ub, "uboot.env"), "::/"])
        ext = os.path.join(work, "root.img")
        os.makedirs(os.path.join(sysroot, "boot/firmware"), exist_ok=True)
        run(["mkfs.ext4", "-q", "-F", "-L", "otter-root", "-O", "^orphan_file", "-d", sysroot,
             ext, f"{parts[1]['size'] // 2}k"], check=False)
        if not os.path.exists(ext) or os.path.getsize(ext) == 0:
            run(["mkfs.ext4", "-q", "-F", "-L", "otter-root", "-d", sysroot, ext,
                 f"{parts[1]['size'] // 2}k"])
        for img, p in [(fat, parts[0]), (ext, parts[1])]:
            run(["dd", f"if={img}", f"of={raw}", "bs=512", f"seek={p['start']}", "conv=notrunc,sparse",
                 "status=none"])
        run(["qemu-img", "convert", "-O", "qcow2", raw, out_qcow2])
    finally:
        run(["rm", "-rf", work])


# ------------------------------------------------------------------------------------------------
# Driving QEMU over the serial console


class Vm:
    def __init__(self, name, disk, logdir, usb=None, registry_port=None):
        self.name, self.disk, self.usb = name, disk, usb
        self.registry_port = registry_port
        self.log_path = os.path.join(logdir, f"{name}.console.log")
        self.buf = bytearray()
        self.cond = threading.Condition()
        self.proc = None
        self.boots = 0

    def cmd(self):
        ub = uboot_bits()
        net = "user,id=n0,restrict=on"
        if self.registry_port:
            relay = os.path.join(HERE, "relay.py")
            net += f",guestfwd=tcp:10.0.2.100:5000-cmd:python3 {relay} 127.0.0.1 {self.registry_port}"
        c = ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a57", "-m", "512", "-smp", "1",
             "-nographic", "-monitor", "none", "-serial", "stdio",
             "-bios", UBOOT_BIN,
             "-drive", f"if=pflash,format=raw,index=1,readonly=on,file={ub}/flash1.img",
             "-netdev", net, "-device", "virtio-net-device,netdev=n0"]
        if self.usb:
            # virtio-mmio devices are found in reverse command-line order: the stick goes first
            # so that the system disk stays `virtio 0` / vda.
            c += ["-drive", f"if=none,id=d1,format=raw,readonly=on,file={self.usb}",
                  "-device", "virtio-blk-device,drive=d1"]
        c += ["-drive", f"if=none,id=d0,format=qcow2,file={self.disk}",
              "-device", "virtio-blk-device,drive=d0"]
        return c

    def start(self):
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.mark = 0
        threading.Thread(target=self._reader, daemon=True).start()
        return self

    def _reader(self):
        fd = self.proc.stdout.fileno()
        while True:
            try:
                b = os.read(fd, 4096)
            except OSError:
                b = b""
            with self.cond:
                if not b:
                    self.eof = True
                    self.cond.notify_all()
                    return
                self.buf += b
                if b"\x1b[6n" in b:
                    # busybox's line editor asks for the cursor position; answer like a terminal.
                    try:
                        self.proc.stdin.write(b"\x1b[1;1R")
                        self.proc.stdin.flush()
                    except OSError:
                        pass
                self.logf.write(b)
                self.logf.flush()
                self.cond.notify_all()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def expect(self, pattern, timeout, what=None, fail=None):
        """Wait for regex `pattern` in the console output after the last match; `fail`: a regex
        that aborts the wait at once."""
        rx = re.compile(pattern.encode() if isinstance(pattern, str) else pattern, re.S)
        frx = re.compile(fail.encode()) if fail else None
        deadline = time.time() + timeout
        with self.cond:
            while True:
                m = rx.search(self.buf, self.mark)
                if m:
                    self.mark = m.end()
                    return m
                if frx:
                    fm = frx.search(self.buf, self.mark)
                    if fm:
                        raise RigError(f"{self.name}: saw {fm.group(0)!r} while waiting for "
                                       f"{what or pattern}\n{self.tail()}")
                left = deadline - time.time()
                if left <= 0 or getattr(self, "eof", False):
                    why = "QEMU exited" if getattr(self, "eof", False) else f"timeout {timeout}s"
                    raise RigError(f"{self.name}: {why} waiting for {what or pattern!r}\n{self.tail()}")
                self.cond.wait(min(left, 1.0))

    def tail(self, n=3000):
        return "---- console tail ----\n" + self.buf[-n:].decode(errors="replace")

    def send(self, line):
        # Trickle the bytes in so that the PL011's small FIFO never overflows.
        data = line.encode() + b"\n"
        for i in range(0, len(data), 8):
            self.proc.stdin.write(data[i:i + 8])
            self.proc.stdin.flush()
            time.sleep(0.01)

    def wait_booted(self, timeout=120):
        m = self.expect(r"OTTER-BOOTED version=(\d+) ", timeout, "the OS to finish booting",
                        fail=r"Kernel panic|prepare-root: ERROR")
        self.boots += 1
        time.sleep(0.3)
        return int(m.group(1))

    def sh(self, command, timeout=60, check=True):
        """Run a shell command in the guest; return (rc, output)."""
        tok = hashlib.sha1(f"{time.time()}{command}".encode()).hexdigest()[:8]
        time.sleep(0.2)
        self.send(f"echo '<{tok}'; {command}; echo \"{tok}>\"${{?}}")
        m = self.expect(rf"<{tok}\r?\n(.*?){tok}>(\d+)", timeout, f"`{command}`")
        out = m.group(1).decode(errors="replace").replace("\r", "")
        rc = int(m.group(2))
        if check and rc != 0:
            raise RigError(f"{self.name}: `{command}` exited {rc}:\n{out}")
        return rc, out

    def kill(self):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc:
            self.proc.wait()
        if hasattr(self, "logf"):
            self.logf.close()


# ------------------------------------------------------------------------------------------------
# Base disk and scenarios


def host_otter_boot():
    """otter-boot built for the host (to arm the counter of a disk image the way the device does)."""
    run(["cargo", "build", "-q", "-p", "otter-boot"], cwd=REPO)
    return os.path.join(REPO, "target/debug/otter-boot")


def disk_for(versions=(1,), arm=False):
    """A base disk with `versions` deployed in order (last = default), optionally with the boot
    counter armed (as after staging an update). Cached by everything that goes into it."""
    kdir, _ = kernel()
    bins = otter_binaries()
    use_otter = "otter" in bins and os.environ.get("OTTER_RIG_PLACEHOLDER") != "1" and \
        otter_install_works() and list(versions) == [1] and not arm
    key = digest(kdir, initramfs(), initramfs(broken=True), uboot_bits(), IMAGE_FORMAT,
                 os.path.join(REPO, "board-support/boards", BOARD + ".conf"),
                 *bins.values(), *release_key(), use_otter, versions, arm)
    name = "base-" + "-".join(map(str, versions)) + ("-armed" if arm else "")
    st = Step(name, key)
    if not st.fresh():
        d = st.begin()
        sr = os.path.join(d, "sysroot")
        trees = [os_tree(v, os.path.join(d, f"tree-v{v}"), VERSIONS[v]) for v in versions]
        if use_otter:
            log("installing v1 with otter install")
            otter_install_sysroot(oci_layout(1), sr)
        else:
            log(f"deploying v{versions} with ostree admin deploy (placeholder until otter install works)")
            placeholder_sysroot(trees, sr)
            log("applying board profile: " +
                otter_board("apply", BOARD, sr).strip().replace("\n", "; "))
        envfile = None
        if arm:
            envfile = os.path.join(d, "uboot.env")
            shutil.copy(os.path.join(uboot_bits(), "uboot.env"), envfile)
            cfg = os.path.join(d, "fw_env.config")
            with open(cfg, "w") as f:
                f.write(f"{envfile} 0x0 {hex(ENV_SIZE)}\n")
            run([host_otter_boot(), "--backend", f"uboot:{cfg}", "arm", "--tries", "3"])
            log("armed: " + run(["fw_printenv", "-c", cfg]).replace("\n", " "))
        make_disk(sr, os.path.join(d, "base.qcow2"), envfile)
        run(["chattr", "-R", "-i", sr], check=False)
        run(["rm", "-rf", sr, *trees])
        st.done()
    return os.path.join(st.dir, "base.qcow2")


def base_disk():
    return disk_for((1,))


def otter_install_works():
    """True once the host build of otter has a working `install` (helper "deploy")."""
    otter = os.path.join(REPO, "target/debug/otter")
    if not os.path.exists(otter):
        return False
    p = subprocess.run([otter, "install", "--help"], capture_output=True)
    return p.returncode == 0 and b"not built yet" not in p.stderr


def tar_tree(tree, out_gz, only=None):
    """A gzip'd tar layer of `tree` (all files owned by root, mtime 0). `only`: relative paths
    (files) to include, with their parent directories."""
    import gzip
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        def add(rel):
            full = os.path.join(tree, rel)
            ti = tf.gettarinfo(full, rel)
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "root"
            ti.mtime = 0
            if ti.isreg():
                with open(full, "rb") as f:
                    tf.addfile(ti, f)
            else:
                tf.addfile(ti)
        if only is None:
            for r, dirs, files in os.walk(tree):
                dirs.sort()
                for n in sorted(dirs + files):
                    add(os.path.relpath(os.path.join(r, n), tree))
        else:
            seen = set()
            for rel in sorted(only):
                parts = rel.split("/")
                for i in range(1, len(parts)):
                    d = "/".join(parts[:i])
                    if d not in seen:
                        seen.add(d)
                        add(d)
                add(rel)
    data = raw.getvalue()
    with open(out_gz, "wb") as f:
        f.write(gzip.compress(data, 6, mtime=0))
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob(layout, data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    p = os.path.join(layout, "blobs/sha256", d[7:])
    if not os.path.exists(p):
        with open(p, "wb") as f:
            f.write(data)
    return {"digest": d, "size": len(data)}


def oci_images():
    """One OCI image layout holding v1..v4 (tags v1..v4) for linux/arm64: a shared base layer
    (busybox, kernel, initramfs) and a small per-version layer, as an OS build would have."""
    kdir, kver = kernel()
    bins = otter_binaries()
    key = digest(kdir, initramfs(), initramfs(broken=True), IMAGE_FORMAT, *bins.values(),
                 *release_key())
    st = Step("oci", key)
    if not st.fresh():
        d = st.begin()
        layout = os.path.join(d, "layout")
        os.makedirs(os.path.join(layout, "blobs/sha256"))
        with open(os.path.join(layout, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                 "manifests": []}
        base_layer = None
        for v, health in VERSIONS.items():
            tree = os_tree(v, os.path.join(d, f"tree-v{v}"), health)
            versioned = [os.path.relpath(os.path.join(r, n), tree)
                         for r, _, fs in os.walk(tree) for n in fs
                         if os.path.relpath(os.path.join(r, n), tree).startswith(
                             ("usr/share/otter-test", "usr/lib/os-release",
                              "usr/lib/greenboot", "usr/etc/otter"))]
            if health == "panic":
                versioned.append(f"usr/lib/modules/{kver}/initramfs.img")
            layers = []
            if base_layer is None:
                # Every directory, plus every other entry that is not version-specific.
                common = []
                for r, dirs, fs in os.walk(tree):
                    for n in dirs + fs:
                        rel = os.path.relpath(os.path.join(r, n), tree)
                        is_dir = os.path.isdir(os.path.join(r, n)) and not os.path.islink(
                            os.path.join(r, n))
                        if is_dir or rel not in versioned:
                            common.append(rel)
                gz = os.path.join(d, "base.tar.gz")
                diff = tar_tree(tree, gz, only=common)
                with open(gz, "rb") as f:
                    base_layer = (blob(layout, f.read()), diff)
            layers.append(base_layer)
            gz = os.path.join(d, f"v{v}.tar.gz")
            diff = tar_tree(tree, gz, only=versioned)
            with open(gz, "rb") as f:
                layers.append((blob(layout, f.read()), diff))
            config = {
                "architecture": "arm64", "os": "linux", "created": "2026-01-0%dT00:00:00Z" % v,
                "config": {"Labels": {"org.opencontainers.image.version": str(v),
                                      "org.opencontainers.image.title": "otter test OS"}},
                "rootfs": {"type": "layers", "diff_ids": [l[1] for l in layers]},
                "history": [{"created_by": "otter qemu-tests rig"}] * len(layers),
            }
            cdesc = blob(layout, json.dumps(config, sort_keys=True).encode())
            manifest = {
                "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cdesc},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **l[0]}
                           for l in layers],
            }
            mdesc = blob(layout, json.dumps(manifest, sort_keys=True).encode())
            index["manifests"].append({
                "mediaType": "application/vnd.oci.image.manifest.v1+json", **mdesc,
                "platform": {"architecture": "arm64", "os": "linux"},
                "annotations": {"org.opencontainers.image.ref.name": f"v{v}"}})
            run(["rm", "-rf", tree])
        with open(os.path.join(layout, "index.json"), "w") as f:
            json.dump(index, f, indent=1)
        run(["rm", "-f", os.path.join(d, "base.tar.gz")] + glob.glob(os.path.join(d, "v*.tar.gz")))
        # The real tools must accept it.
        for v in VERSIONS:
            run(["skopeo", "inspect", f"oci:{layout}:v{v}"])
        # Release statements (signature artifacts in the layout, not tagged).
        content = {v: sign(f"oci:{layout}:v{v}") for v in VERSIONS}
        with open(layout + "-content.json", "w") as f:
            json.dump(content, f)
        for v in VERSIONS:
            run(["skopeo", "inspect", f"oci:{layout}:v{v}"])
        st.done()
    return os.path.join(st.dir, "layout")


def oci_layout(version):
    return oci_images()


class Registry:
    """docker-registry on 127.0.0.1:<free port>, storage and log in `workdir`."""

    def __init__(self, workdir):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.dir = workdir
        cfg = os.path.join(workdir, "registry.yml")
        with open(cfg, "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n"
                    f"    rootdirectory: {workdir}/registry-data\n  delete:\n    enabled: true\n"
                    f"http:\n  addr: 127.0.0.1:{self.port}\n")
        self.logf = open(os.path.join(workdir, "registry.log"), "wb")
        self.proc = subprocess.Popen(["docker-registry", "serve", cfg], stdout=self.logf,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RigError(f"docker-registry did not listen on {self.port}; see {workdir}/registry.log")

    def push(self, layout, tag, name="otter/os", dest_tag=None):
        run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:{tag}",
             f"docker://127.0.0.1:{self.port}/{name}:{dest_tag or tag}"])

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.logf.close()


def overlay(base, path):
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, path])
    return path


LIVE = set()  # scenario contexts with processes that may still run (killed on a signal)


class Ctx:
    def __init__(self, name, workdir):
        self.name, self.dir = name, workdir
        self.vms = []
        self.registry = None
        LIVE.add(self)

    def start_registry(self):
        self.registry = Registry(self.dir)
        return self.registry

    def vm(self, disk, **kw):
        v = Vm(f"{self.name}-{len(self.vms)}", disk, self.dir, **kw)
        self.vms.append(v)
        return v.start()

    def cleanup(self):
        for v in self.vms:
            v.kill()
        if self.registry:
            self.registry.stop()
        LIVE.discard(self)


def scenario_boot(ctx):
    """Smoke: U-Boot -> kernel -> initramfs prepare-root -> deployment v1 -> shell."""
    disk = overlay(base_disk(), os.path.join(ctx.dir, "disk.qcow2"))
    reg = registry_with(ctx, stable=1)
    vm = ctx.vm(disk, registry_port=reg.port)
    vm.expect(r"otter(-uboot)?: booting .*/ostree/", 60, "U-Boot to run boot.scr")
    vm.expect(r"prepare-root: booting deployment /ostree/deploy/otter/deploy/[0-9a-f]{64}\.0", 90,
              "prepare-root")
    assert vm.wait_booted() == 1
    _, out = vm.sh("cat /proc/cmdline; mount; ls /sysroot/ostree; test -e /run/ostree-booted")
    for want in ["ostree=/ostree/boot.", "/usr ", "/sysroot ", "/boot/firmware "]:
        if want not in out:
            raise RigError(f"boot: {want!r} missing in\n{out}")
    rc, _ = vm.sh("touch /usr/x", check=False)
    if rc == 0:
        raise RigError("boot: /usr is writable")
    _, cat = vm.sh(f"wget -q -O- http://{REGISTRY}/v2/_catalog")
    if "otter/os" not in cat:
        raise RigError(f"boot: the registry is not reachable through guestfwd: {cat}")
    _, st = vm.sh("otter-boot status")
    vm.kill()


def fat_env(disk_qcow2, workdir):
    """Read uboot.env out of a (qcow2) disk with mtools + fw_printenv: the disk afterwards."""
    raw = os.path.join(workdir, "after.raw")
    run(["qemu-img", "convert", "-O", "raw", disk_qcow2, raw])
    parts = json.loads(run(["sfdisk", "--json", raw]))["partitiontable"]["partitions"]
    env = os.path.join(workdir, "uboot.env.after")
    run(["mcopy", "-o", "-i", f"{raw}@@{parts[0]['start'] * 512}", "::/uboot.env", env])
    cfg = os.path.join(workdir, "fw_env.config.after")
    with open(cfg, "w") as f:
        f.write(f"{env} 0x0 {hex(ENV_SIZE)}\n")
    out = run(["fw_printenv", "-c", cfg])
    os.unlink(raw)
    return dict(l.split("=", 1) for l in out.splitlines() if "=" in l)


def scenario_kernel_panic(ctx):
    """v4's kernel panics before userspace; U-Boot's counting alone brings back v2."""
    if "otter" in otter_binaries() and otter_install_works():
        return scenario_kernel_panic_otter(ctx)
    log("kernel-panic: otter not available: v2+v4 deployed with ostree admin, counter armed "
        "with the host otter-boot")
    return scenario_kernel_panic_offline(ctx)


def scenario_kernel_panic_offline(ctx):
    """v4 is the default with the counter armed; its kernel panics before userspace (its
    initramfs cannot mount the root). U-Boot's counting alone must bring back v2."""
    disk = overlay(disk_for((2, 4), arm=True), os.path.join(ctx.dir, "disk.qcow2"))
    vm = ctx.vm(disk)
    for i in (1, 2, 3):
        vm.expect(rf"otter: saved bootcount={i} ", 60, f"U-Boot to count try {i}")
        vm.expect(r"otter: booting entry default", 10, "the default (v4) entry")
        vm.expect(r"Kernel panic - not syncing", 90, f"v4 to panic (try {i})",
                  fail=r"OTTER-BOOTED")
    vm.expect(r"otter: boot counter exhausted", 60, "U-Boot to give up on v4")
    vm.expect(r"otter: booting entry rollback", 10, "the rollback entry")
    v = vm.wait_booted()
    if v != 2:
        raise RigError(f"kernel-panic: fell back to v{v}, expected v2")
    _, st = vm.sh("otter-boot status", check=False)
    vm.sh("sync")
    vm.kill()
    env = fat_env(disk, ctx.dir)
    log(f"kernel-panic: uboot.env afterwards: {env}; guest status: {st.strip()}")
    if "otter" in otter_binaries():
        # otter rollback (run by otter-boot detect-fallback) made v2 the default and cleared
        # the counter.
        if env.get("upgrade_available") not in (None, "0"):
            raise RigError(f"kernel-panic: counter still armed after the fallback: {env}")


def need_otter():
    if "otter" not in otter_binaries() or not otter_install_works():
        raise RigError("needs a working otter (otter install/upgrade/rollback from helper "
                       "'deploy'); build: cargo build --release --target "
                       "aarch64-unknown-linux-musl -p otter -p otter-boot && cargo build -p otter")


def registry_with(ctx, stable):
    """The rig's registry with v1..v4 and `stable` pointing at version `stable`."""
    reg = ctx.registry or ctx.start_registry()
    layout = oci_images()
    content = content_checksums()
    for v in VERSIONS:
        reg.push(layout, f"v{v}")
        sign(f"docker://127.0.0.1:{reg.port}/otter/os:v{v}", content[v])
    reg.push(layout, f"v{stable}", dest_tag="stable")
    return reg


def boot_expect(vm, version, counted=None, then=(), check="0", timeout=150):
    """Wait for `version` to boot: U-Boot saved bootcount `counted` (if given), the console
    lines `then` in order, and the final marker with otter-boot check's exit code `check`."""
    if counted is not None:
        vm.expect(rf"otter: saved bootcount={counted} ", timeout, f"U-Boot to count try {counted}")
    vm.expect(rf"OTTER-OS version=(\d+)", timeout, "the OS to start", fail=r"Kernel panic")
    for p in then:
        vm.expect(p, 120, p, fail=r"OTTER-BOOTED")
    m = vm.expect(r"OTTER-BOOTED version=(\d+) check=(\S+)", 120, "the OS to finish booting",
                  fail=r"Kernel panic|prepare-root: ERROR")
    vm.boots += 1
    time.sleep(0.3)
    v, rc = int(m.group(1)), m.group(2).decode()
    if v != version:
        raise RigError(f"{vm.name}: booted v{v}, expected v{version}\n{vm.tail()}")
    if check is not None and rc != check:
        raise RigError(f"{vm.name}: v{v}: otter-boot check exited {rc}, expected {check}\n"
                       f"{vm.tail()}")
    return v


def reboot(vm):
    vm.sh("sync")
    vm.send("reboot")


def upgrade_to(vm, version, cmd=None):
    """Stage `version` (the registry's `stable`) and check that it is pending."""
    vm.sh(cmd or f"otter --progress log switch {IMAGE}", timeout=600)
    _, st = vm.sh("otter status", check=False)
    if f"version: {version}" not in st.lower() and f"version {version}" not in st.lower():
        log(f"{vm.name}: otter status after staging:\n{st}")
    _, uenv = vm.sh("head -n 3 /boot/loader/uEnv.txt")
    return uenv, check_armed(vm, f"staging v{version}")


def check_armed(vm, after):
    """The agent must arm the boot counter when it stages a deployment. OTTER_RIG_LENIENT=1
    arms it from the rig instead (to exercise the rest of a scenario while that is missing)."""
    _, fw = vm.sh("otter-boot status")
    if "upgrade_available=1" in fw:
        return True
    if os.environ.get("OTTER_RIG_LENIENT") == "1":
        log(f"{vm.name}: LENIENT: counter not armed after {after}; arming with otter-boot arm")
        vm.sh("otter-boot arm")
        return False
    raise RigError(f"{vm.name}: boot counter not armed after {after}:\n{fw}")


def disk_state(ctx, disk):
    """Copy /ostree and /boot out of the disk's ext4 (debugfs, no mount) and check them with the
    real ostree CLI; return (fsck output, admin status)."""
    raw = os.path.join(ctx.dir, "state.raw")
    run(["qemu-img", "convert", "-O", "raw", disk, raw])
    parts = json.loads(run(["sfdisk", "--json", raw]))["partitiontable"]["partitions"]
    ext = os.path.join(ctx.dir, "root.ext4")
    run(["dd", f"if={raw}", f"of={ext}", "bs=512", f"skip={parts[1]['start']}",
         f"count={parts[1]['size']}", "conv=sparse", "status=none"])
    os.unlink(raw)
    out = os.path.join(ctx.dir, "sysroot-after")
    os.makedirs(out, exist_ok=True)
    run(["debugfs", "-R", f"rdump /ostree /boot {out}", ext])
    os.unlink(ext)
    fsck = run(["ostree", "fsck", f"--repo={out}/ostree/repo"])
    status = run(["ostree", "admin", "status", f"--sysroot={out}"])
    return fsck, status


SAVED = {}


def disk_after_update(ctx):
    """The disk at the end of `update` (v2 booted and good); runs `update` if it did not run."""
    if "update" not in SAVED:
        wd = os.path.join(ctx.dir, "pre-update")
        os.makedirs(wd)
        sub = Ctx("pre-update", wd)
        try:
            scenario_update(sub)
        finally:
            sub.cleanup()
    return overlay(SAVED["update"], os.path.join(ctx.dir, "disk.qcow2"))


def scenario_update(ctx):
    """v1 -> otter upgrade from the registry -> reboot -> v2 on trial -> healthy -> marked good."""
    need_otter()
    reg = registry_with(ctx, stable=2)
    reg.push(oci_images(), "v2", name="otter/unsigned")
    disk = overlay(base_disk(), os.path.join(ctx.dir, "disk.qcow2"))
    vm = ctx.vm(disk, registry_port=ctx.registry.port)
    boot_expect(vm, 1)
    # [trust] require-signature = true: an image without a release statement is refused (exit 3)
    # and nothing is staged or armed.
    rc, out = vm.sh(f"otter --progress log switch {REGISTRY}/otter/unsigned:v2", timeout=300,
                    check=False)
    if rc != 3:
        raise RigError(f"update: unsigned image: expected exit 3 (verification failed), got {rc}:"
                       f"\n{out}")
    _, st = vm.sh("otter status")
    if "pending" in st or "armed" in st.split("Boot counter:")[-1].split("\n")[0]:
        raise RigError(f"update: the refused unsigned image changed the system:\n{st}")
    log("update: unsigned image refused: " + out.strip().splitlines()[-1])
    upgrade_to(vm, 2)
    reboot(vm)
    boot_expect(vm, 2, counted=1, then=[r"OTTER-GREEN"])
    _, fw = vm.sh("otter-boot status")
    if "upgrade_available=1" in fw:
        raise RigError(f"update: v2 not marked good:\n{fw}")
    _, st = vm.sh("otter status")
    log(f"update: otter status on v2:\n{st}")
    vm.sh("sync")
    vm.kill()
    env = fat_env(disk, ctx.dir)
    if env.get("upgrade_available") == "1":
        raise RigError(f"update: uboot.env still armed on disk: {env}")
    fsck, status = disk_state(ctx, disk)
    if status.count(f"{STATEROOT} ") < 2:
        raise RigError(f"update: expected v2 + rollback v1 in ostree admin status:\n{status}")
    SAVED["update"] = disk


def scenario_rollback(ctx):
    """From v2: upgrade to v3, whose required health check fails -> otter-boot reboots -> tries
    run out -> U-Boot boots v2 -> v2 detects the fallback, makes it permanent (otter rollback)
    and records it."""
    need_otter()
    disk = disk_after_update(ctx)
    registry_with(ctx, stable=3)
    vm = ctx.vm(disk, registry_port=ctx.registry.port)
    boot_expect(vm, 2)
    upgrade_to(vm, 3, cmd="otter --progress log upgrade")
    reboot(vm)
    for i in (1, 2, 3):
        vm.expect(rf"otter: saved bootcount={i} ", 150, f"U-Boot to count try {i} of v3")
        vm.expect(r"OTTER-OS version=3", 120, f"v3 to start (try {i})")
        vm.expect(r"OTTER-RED", 60, f"v3's health check to fail (try {i})", fail="OTTER-BOOTED")
    vm.expect(r"otter: boot counter exhausted", 120, "U-Boot to give up on v3")
    vm.expect(r"otter: booting entry rollback", 10)
    boot_expect(vm, 2, then=[r"FALLBACK BOOT DETECTED", r"OTTER-DETECT rc=0"])
    _, rb = vm.sh("cat /var/lib/otter/rollback.json")
    _, st = vm.sh("otter status")
    log(f"rollback: rollback.json {rb.strip()}\notter status:\n{st}")
    # Permanent: the next boot is v2 from the default entry, without counting.
    reboot(vm)
    vm.expect(r"otter: booting entry default", 60)
    boot_expect(vm, 2, then=[r"otter-boot: no fallback"])
    _, fw = vm.sh("otter-boot status")
    if "upgrade_available=1" in fw:
        raise RigError(f"rollback: counter still armed:\n{fw}")
    vm.sh("sync")
    vm.kill()
    disk_state(ctx, disk)


def scenario_power_cut(ctx):
    """Cut the power (kill QEMU) during the download and during the deploy of v2: every next
    boot is still v1 and healthy, and the upgrade resumes and completes."""
    need_otter()
    registry_with(ctx, stable=2)
    disk = overlay(base_disk(), os.path.join(ctx.dir, "disk.qcow2"))
    slow_conf = OTTER_CONF.replace("[registry]\n", "[registry]\nbandwidth-limit = 100000\n")
    slow = "printf '" + slow_conf.replace("\n", "\\n") + "' > /tmp/slow.conf"
    bytes_rx = r'"event":"bytes","digest":"(sha256:[0-9a-f]+)","done":(\d+),"total":(\d+)'
    cut_at = {}
    for phase, conf, pattern in [
            # at least 1.2 MB into a layer that is bigger than 10 MB: past the first journaled
            # chunk (the download journal records 1 MiB chunks; a cut inside the first one
            # rightly starts over)
            ("download", "/tmp/slow.conf",
             r'"event":"bytes","digest":"(sha256:[0-9a-f]+)",'
             r'"done":(1[2-9]\d{5}|[2-9]\d{6}|\d{8,}),"total":(\d{8,})'),
            ("deploy", "/etc/otter/otter.conf", r'"event":"deploy"')]:
        vm = ctx.vm(disk, registry_port=ctx.registry.port)
        boot_expect(vm, 1)
        vm.sh(slow)
        start = vm.mark
        vm.send(f"otter --config {conf} --progress json switch {IMAGE} &")
        m = vm.expect(pattern, 300, f"otter to reach the {phase} phase")
        if phase == "download":
            # What the kernel's periodic writeback would have persisted by now (a power cut
            # loses only the guest's dirty page cache).
            vm.send("sync")
            time.sleep(1.0)
            cut_at = {"digest": m.group(1).decode(), "done": int(m.group(2))}
        else:
            # The download must have resumed where the power cut left it, not from zero.
            firsts = [mm for mm in re.finditer(bytes_rx.encode(), vm.buf[start:])
                      if mm.group(1).decode() == cut_at["digest"]]
            journaled = cut_at["done"] // CHUNK * CHUNK
            if not firsts or int(firsts[0].group(2)) < journaled:
                got = firsts[0].group(0).decode() if firsts else "no bytes events"
                raise RigError(f"power-cut: download of {cut_at['digest']} did not resume after "
                               f"the cut at {cut_at['done']} bytes ({journaled} journaled): "
                               f"first event {got}")
            log(f"power-cut: download resumed at {int(firsts[0].group(2))} bytes "
                f"(cut at {cut_at['done']})")
        time.sleep(0.05)
        log(f"power-cut: killing QEMU during {phase}")
        vm.kill()
    vm = ctx.vm(disk, registry_port=ctx.registry.port)
    boot_expect(vm, 1)  # still v1 and healthy after two power cuts
    upgrade_to(vm, 2)
    reboot(vm)
    boot_expect(vm, 2, counted=1)
    vm.sh("sync")
    vm.kill()
    fsck, _ = disk_state(ctx, disk)
    log("power-cut: " + fsck.strip().splitlines()[-1])


def usb_disk(ctx, version):
    """A second disk (ext4, no partition table) with an OCI layout holding `version` at /os."""
    d = os.path.join(ctx.dir, "usb")
    os.makedirs(d)
    run(["skopeo", "copy", "-q", f"oci:{oci_images()}:v{version}", f"oci:{d}/os:v{version}"])
    sign(f"oci:{d}/os:v{version}", content_checksums()[version])
    img = os.path.join(ctx.dir, "usb.img")
    run(["mkfs.ext4", "-q", "-F", "-L", "OTTERUSB", "-d", d, img, "64M"])
    return img


def scenario_usb(ctx):
    """Offline update: a second disk with an OCI layout -> otter import -> reboot -> v2 good."""
    need_otter()
    disk = overlay(base_disk(), os.path.join(ctx.dir, "disk.qcow2"))
    vm = ctx.vm(disk, usb=usb_disk(ctx, 2))
    boot_expect(vm, 1)
    vm.sh("ls /media/usb/os")
    vm.sh("otter --progress log import oci:/media/usb/os:v2", timeout=600)
    check_armed(vm, "otter import")
    reboot(vm)
    boot_expect(vm, 2, counted=1)
    vm.kill()


def scenario_kernel_panic_otter(ctx):
    """From v2: upgrade to v4, whose kernel panics before userspace -> U-Boot's counting alone
    brings back v2 -> v2 makes the fallback permanent."""
    need_otter()
    disk = disk_after_update(ctx)
    registry_with(ctx, stable=4)
    vm = ctx.vm(disk, registry_port=ctx.registry.port)
    boot_expect(vm, 2)
    upgrade_to(vm, 4, cmd="otter --progress log upgrade")
    reboot(vm)
    for i in (1, 2, 3):
        vm.expect(rf"otter: saved bootcount={i} ", 60, f"U-Boot to count try {i}")
        vm.expect(r"Kernel panic - not syncing", 90, f"v4 to panic (try {i})", fail=r"OTTER-BOOTED")
    vm.expect(r"otter: booting entry rollback", 60)
    boot_expect(vm, 2, then=[r"FALLBACK BOOT DETECTED", r"OTTER-DETECT rc=0"])
    vm.sh("sync")
    vm.kill()
    env = fat_env(disk, ctx.dir)
    if env.get("upgrade_available") == "1":
        raise RigError(f"kernel-panic: counter still armed after the fallback: {env}")


SCENARIOS = {
    "boot": scenario_boot,
    "update": scenario_update,
    "rollback": scenario_rollback,
    "power-cut": scenario_power_cut,
    "usb": scenario_usb,
    "kernel-panic": scenario_kernel_panic,
}
ALL = ["update", "rollback", "power-cut", "kernel-panic", "usb"]


def main(argv):
    if len(argv) != 1 or (argv[0] != "all" and argv[0] not in SCENARIOS):
        print(f"usage: qemu-tests/run SCENARIO|all   (scenarios: {', '.join(SCENARIOS)})",
              file=sys.stderr)
        return 2
    need_tools()
    if os.environ.get("OTTER_RIG_PLACEHOLDER") != "1" and (
            "otter" not in otter_binaries() or not otter_install_works()
            or not os.path.exists(PUBLISH)):
        raise RigError("needs target/debug/{otter,otter-publish} and target/aarch64-unknown-linux-"
                       "musl/release/{otter,otter-boot}: cargo build -p otter -p otter-board "
                       "--features otter/publish && cargo build --release --target "
                       "aarch64-unknown-linux-musl -p otter -p otter-boot")
    os.makedirs(CACHE, exist_ok=True)
    names = ALL if argv[0] == "all" else [argv[0]]
    logroot = os.path.join(CACHE, "logs", time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(logroot)
    t0 = time.time()
    base_disk()
    log(f"artifacts ready in {time.time() - t0:.0f}s (logs: {logroot})")
    if argv[0] == "all" and "otter" in otter_binaries() and otter_install_works():
        oci_images()
    results = []

    def one(n):
        wd = os.path.join(logroot, n)
        os.makedirs(wd)
        ctx = Ctx(n, wd)
        t = time.time()
        try:
            SCENARIOS[n](ctx)
            r = (n, "PASS", time.time() - t, "")
        except (RigError, AssertionError) as e:
            r = (n, "FAIL", time.time() - t, str(e))
        except Exception as e:  # a bug in the rig: report it, keep the others going
            r = (n, "FAIL", time.time() - t, f"rig error: {type(e).__name__}: {e}")
        finally:
            ctx.cleanup()
        results.append(r)
        log(f"{r[0]}: {r[1]} in {r[2]:.0f}s" + (f"\n{r[3]}" if r[3] else ""))

    # `update` first (rollback and kernel-panic continue from its disk), then two at a time
    # (TCG runs one vCPU per QEMU process; CI has 2 cores).
    jobs = int(os.environ.get("OTTER_RIG_JOBS", "2"))
    queue = [n for n in names if n == "update"] + [n for n in names if n != "update"]
    if queue and queue[0] == "update" and len(queue) > 1:
        one(queue.pop(0))
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                if not queue:
                    return
                n = queue.pop(0)
            one(n)

    threads = [threading.Thread(target=worker) for _ in range(jobs)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    print("\n== qemu-tests summary")
    for n, res, secs, _ in results:
        print(f"  {n:<14} {res}  {secs:5.0f}s")
    print(f"  total {time.time() - t0:.0f}s")
    return 0 if all(r[1] == "PASS" for r in results) else 1


def _terminated(signum, _frame):
    # SIGTERM/SIGHUP/SIGINT (CI cancelling the job): kill every running scenario's QEMU and
    # registry processes by PID, then exit (worker threads would otherwise keep going).
    print(f"qemu-tests: signal {signum}: stopping QEMU and registry processes", file=sys.stderr)
    for ctx in list(LIVE):
        try:
            ctx.cleanup()
        except Exception as e:  # keep killing the others
            print(f"qemu-tests: cleanup of {ctx.name}: {e}", file=sys.stderr)
    os._exit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminated)
    signal.signal(signal.SIGHUP, _terminated)
    signal.signal(signal.SIGINT, _terminated)
    try:
        sys.exit(main(sys.argv[1:]))
    except RigError as e:
        print(f"qemu-tests: {e}", file=sys.stderr)
        sys.exit(1)
