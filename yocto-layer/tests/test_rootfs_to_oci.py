"""Tests for meta-otter/scripts/rootfs-to-oci.py against the real tools (skopeo, umoci, otter).

A small Yocto-style rootfs is built (busybox-static, /etc files, a kernel under /boot plus
/lib/modules/$kver, /var content, a symlink, a hardlink, a setuid file, a device node, a file
owned by another uid), converted, then checked with `skopeo inspect`, `skopeo copy`, `umoci
unpack` and compared file by file with the input through the expected ostree mapping.
Tests run as root in CI (device nodes, chown, umoci keeping owners).
"""

import gzip
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SCRIPT = REPO / "yocto-layer/meta-otter/scripts/rootfs-to-oci.py"
SDE = 1700000000
KVER = "6.6.21-yocto-standard"
TOOLS = {"skopeo": "skopeo", "umoci": "umoci", "busybox": "busybox-static", "ostree": "ostree"}


def need(tool):
    path = shutil.which(tool)
    if path is None:
        raise AssertionError(f"`{tool}` not found: apt-get install {TOOLS[tool]} (scripts/setup.sh installs it)")
    return path


# otter sets the immutable flag on deployment roots like ostree; tests must be able to delete them
MUTABLE_ENV = {**os.environ, "OSTREE_SYSROOT_DEBUG": "mutable-deployments"}


def sh(*args, **kw):
    kw.setdefault("env", MUTABLE_ENV)
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r.stdout


def convert(rootfs, out, *extra, version="1.2.3", env_sde=True):
    env = dict(os.environ)
    env.pop("SOURCE_DATE_EPOCH", None)
    if env_sde:
        env["SOURCE_DATE_EPOCH"] = str(SDE)
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--rootfs", str(rootfs), "--out", str(out), "--version", version,
         "--arch", "aarch64", *map(str, extra)],
        capture_output=True, text=True, env=env,
    )


def make_rootfs(r: Path):
    """A Yocto-style rootfs (no usrmerge: real /lib) as `bitbake core-image-minimal` leaves it."""
    for d in ["bin", "sbin", "etc/init.d", "boot", f"lib/modules/{KVER}/kernel/drivers", "usr/bin",
              "usr/lib", "var/log", "var/lib/otter-test", "dev", "home/user", "proc", "sys", "run", "tmp"]:
        (r / d).mkdir(parents=True, exist_ok=True)
    os.chmod(r / "tmp", 0o1777)
    busybox = Path(need("busybox")).resolve()
    shutil.copy2(busybox, r / "bin/busybox")
    os.symlink("busybox", r / "bin/sh")
    os.symlink("../bin/busybox", r / "sbin/init")
    (r / "etc/hostname").write_text("qemuarm64\n")
    (r / "etc/passwd").write_text("root:x:0:0:root:/home/root:/bin/sh\nuser:x:1234:1234::/home/user:/bin/sh\n")
    (r / "etc/shadow").write_text("root::1::::::\n")
    os.chmod(r / "etc/shadow", 0o400)
    (r / "etc/init.d/rcS").write_text("#!/bin/sh\necho up\n")
    os.chmod(r / "etc/init.d/rcS", 0o755)
    os.symlink("/proc/self/mounts", r / "etc/mtab")
    (r / f"boot/Image-{KVER}").write_bytes(b"\x4d\x5a" + os.urandom(4096))
    os.symlink(f"Image-{KVER}", r / "boot/Image")
    (r / "boot/qemu-aarch64-virt.dtb").write_bytes(b"\xd0\x0d\xfe\xed" + b"\0" * 60)
    (r / f"lib/modules/{KVER}/kernel/drivers/virtio.ko").write_bytes(b"\x7fELF" + b"\1" * 100)
    (r / f"lib/modules/{KVER}/modules.dep").write_text("kernel/drivers/virtio.ko:\n")
    (r / "usr/bin/passwd").write_bytes(b"#!/bin/sh\nexit 0\n")
    os.chmod(r / "usr/bin/passwd", 0o4755)  # setuid
    os.link(r / "usr/bin/passwd", r / "usr/bin/chpasswd")  # hardlink
    (r / "usr/lib/os-release").write_text('ID=poky\nVERSION_ID="5.0"\n')
    (r / "home/user/.profile").write_text("PS1='$ '\n")
    os.chown(r / "home/user/.profile", 1234, 1234)
    os.chown(r / "home/user", 1234, 1234)
    (r / "var/lib/otter-test/state").write_text("seed\n")
    os.symlink("../run", r / "var/run")
    os.mknod(r / "dev/console", 0o600 | stat.S_IFCHR, os.makedev(5, 1))


def expected_path(rel: str):
    """Where an input path must end up (None = not in the image)."""
    parts = rel.split("/")
    if parts[0] == "etc":
        return "usr/" + rel
    if parts[0] == "var" or parts[0] == "boot" or rel.startswith("dev/"):
        return None
    if rel.startswith("lib/modules/"):
        return "usr/" + rel
    if rel == "lib/modules":
        return None
    return rel


def tree(root: Path):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            out[str(p.relative_to(root))] = os.lstat(p)
    return out


def digest(p: Path):
    return hashlib.sha256(p.read_bytes()).hexdigest()


class RootfsToOci(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        for t in TOOLS:
            need(t)
        if os.geteuid() != 0:
            raise AssertionError("these tests need root (mknod, chown, umoci keeping owners); CI runs as root")
        cls.tmp = tempfile.TemporaryDirectory(prefix="otter-yocto-")
        cls.d = Path(cls.tmp.name)
        cls.rootfs = cls.d / "rootfs"
        make_rootfs(cls.rootfs)
        cls.layout = cls.d / "oci"
        r = convert(cls.rootfs, cls.layout)
        if r.returncode != 0:
            raise AssertionError(f"rootfs-to-oci failed:\n{r.stdout}\n{r.stderr}")
        cls.result = json.loads(r.stdout)
        cls.bundle = cls.d / "bundle"
        sh(need("umoci"), "unpack", "--image", f"{cls.layout}:1.2.3", cls.bundle)
        cls.unpacked = cls.bundle / "rootfs"

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_skopeo_inspect_sees_version_label_platform_one_layer(self):
        info = json.loads(sh(need("skopeo"), "inspect", f"oci:{self.layout}:1.2.3"))
        self.assertEqual(info["Labels"]["org.opencontainers.image.version"], "1.2.3")
        self.assertEqual(info["Architecture"], "arm64")
        self.assertEqual(info["Os"], "linux")
        self.assertEqual(len(info["Layers"]), 1)
        self.assertEqual(info["Digest"], self.result["manifest_digest"])
        raw = json.loads(sh(need("skopeo"), "inspect", "--raw", f"oci:{self.layout}:1.2.3"))
        self.assertEqual(raw["layers"][0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip")
        cfg = json.loads(sh(need("skopeo"), "inspect", "--config", "--raw", f"oci:{self.layout}:1.2.3"))
        self.assertEqual(cfg["rootfs"]["diff_ids"], [self.result["diff_id"]])
        self.assertEqual(cfg["created"], "2023-11-14T22:13:20Z")

    def test_skopeo_copy_verifies_every_blob(self):
        dst = self.d / "copy"
        sh(need("skopeo"), "copy", f"oci:{self.layout}:1.2.3", f"oci:{dst}:copied")
        info = json.loads(sh(need("skopeo"), "inspect", f"oci:{dst}:copied"))
        self.assertEqual(info["Labels"]["org.opencontainers.image.version"], "1.2.3")

    def test_unpacked_tree_matches_input_through_ostree_mapping(self):
        src, dst = tree(self.rootfs), tree(self.unpacked)
        mapped = {}
        for rel, st in src.items():
            new = expected_path(rel)
            if new is None:
                continue
            mapped[new] = rel
            self.assertIn(new, dst, f"/{rel} should be at /{new}")
            got = dst[new]
            self.assertEqual(stat.S_IFMT(got.st_mode), stat.S_IFMT(st.st_mode), new)
            self.assertEqual(stat.S_IMODE(got.st_mode), stat.S_IMODE(st.st_mode), f"mode of /{new}")
            self.assertEqual((got.st_uid, got.st_gid), (st.st_uid, st.st_gid), f"owner of /{new}")
            if stat.S_ISLNK(st.st_mode):
                self.assertEqual(os.readlink(self.unpacked / new), os.readlink(self.rootfs / rel))
            elif stat.S_ISREG(st.st_mode):
                self.assertEqual(digest(self.unpacked / new), digest(self.rootfs / rel), new)
        extra = set(dst) - set(mapped)
        allowed = {
            "usr/lib/modules", f"usr/lib/modules/{KVER}/vmlinuz", f"usr/lib/modules/{KVER}/dtb",
            f"usr/lib/modules/{KVER}/dtb/qemu-aarch64-virt.dtb", "lib/modules", "var", "boot", "sysroot", "ostree",
            "usr/lib/tmpfiles.d", "usr/lib/tmpfiles.d/otter-var.conf", "usr/share", "usr/share/factory",
            "usr/share/factory/var", "usr/share/factory/var/lib", "usr/share/factory/var/lib/otter-test",
            "usr/share/factory/var/lib/otter-test/state",
        }
        self.assertEqual(extra, allowed)

    def test_ostree_layout_details(self):
        u = self.unpacked
        self.assertFalse((u / "etc").exists(), "/etc must move to /usr/etc")
        self.assertEqual(os.listdir(u / "var"), [], "/var must be empty")
        self.assertEqual(os.listdir(u / "boot"), [], "/boot must be empty")
        self.assertEqual(os.listdir(u / "dev"), [], "device nodes are dropped")
        kdir = u / "usr/lib/modules" / KVER
        self.assertEqual(digest(kdir / "vmlinuz"), digest(self.rootfs / f"boot/Image-{KVER}"))
        self.assertEqual(digest(kdir / "dtb/qemu-aarch64-virt.dtb"), digest(self.rootfs / "boot/qemu-aarch64-virt.dtb"))
        self.assertEqual(os.readlink(u / "lib/modules"), "../usr/lib/modules")
        self.assertEqual(os.readlink(u / "ostree"), "sysroot/ostree")
        tmpfiles = (u / "usr/lib/tmpfiles.d/otter-var.conf").read_text().splitlines()[1:]
        self.assertEqual(tmpfiles, [
            "d /var/lib 0755 0 0 -",
            "d /var/lib/otter-test 0755 0 0 -",
            "C /var/lib/otter-test/state - - - - /usr/share/factory/var/lib/otter-test/state",
            "d /var/log 0755 0 0 -",
            "L /var/run - - - - ../run",
        ])
        a, b = os.lstat(u / "usr/bin/passwd"), os.lstat(u / "usr/bin/chpasswd")
        self.assertEqual((a.st_dev, a.st_ino), (b.st_dev, b.st_ino), "hardlink must stay a hardlink")
        self.assertTrue(a.st_mode & stat.S_ISUID)
        self.assertEqual(stat.S_IMODE(os.lstat(u / "tmp").st_mode), 0o1777)
        self.assertEqual(self.result["kernel_version"], KVER)
        # busybox-static still runs from the unpacked tree (the binary is intact)
        out = subprocess.run([u / "bin/busybox", "echo", "ok"], capture_output=True, text=True)
        self.assertEqual(out.stdout.strip(), "ok")

    def test_layer_is_deterministic_sorted_numeric(self):
        blob = self.layout / "blobs/sha256" / self.result["layer_digest"].split(":")[1]
        with open(blob, "rb") as f:
            head = f.read(10)
        self.assertEqual(int.from_bytes(head[4:8], "little"), SDE, "gzip header mtime")
        names = []
        with tarfile.open(blob, "r:gz") as t:
            for m in t:
                names.append(m.name)
                self.assertEqual(m.mtime, SDE, m.name)
                self.assertEqual((m.uname, m.gname), ("", ""), m.name)
        self.assertEqual(names, sorted(names, key=lambda n: n.split("/")))
        self.assertEqual(len(names), len(set(names)))
        with gzip.open(blob) as g:
            self.assertEqual(hashlib.sha256(g.read()).hexdigest(), self.result["diff_id"].split(":")[1])
        # same input, different run and output dir -> same bytes
        again = self.d / "again"
        r = convert(self.rootfs, again)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["manifest_digest"], self.result["manifest_digest"])

    def test_adds_a_tag_to_an_existing_layout(self):
        lay = self.d / "multi"
        self.assertEqual(convert(self.rootfs, lay, version="1.0.0").returncode, 0)
        r = convert(self.rootfs, lay, version="1.1.0")
        self.assertEqual(r.returncode, 0, r.stderr)
        for v in ("1.0.0", "1.1.0"):
            info = json.loads(sh(need("skopeo"), "inspect", f"oci:{lay}:{v}"))
            self.assertEqual(info["Labels"]["org.opencontainers.image.version"], v)

    def assertRejected(self, out, needle, *extra, rootfs=None, version="1.2.3", env_sde=True):
        r = convert(rootfs or self.rootfs, out, *extra, version=version, env_sde=env_sde)
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertIn(needle, r.stderr)
        self.assertEqual(r.stdout, "")
        return r

    def test_bad_input_clear_error_nothing_written(self):
        scratch = self.d / "bad"
        scratch.mkdir()
        out = scratch / "oci"
        self.assertRejected(out, "does not exist", rootfs=self.d / "missing-rootfs")
        for bad in ["", "v1.0", "1.0 beta", "1/2", "../1", "1" * 200]:
            self.assertRejected(out, "bad version", version=bad)
        self.assertRejected(out, "bad tag", "--tag=-x")
        self.assertRejected(out, "unknown arch", "--arch", "sparc")
        self.assertRejected(out, "SOURCE_DATE_EPOCH", env_sde=False)
        self.assertRejected(scratch / "no/such/dir/oci", "parent directory")
        self.assertEqual(os.listdir(scratch), [], "nothing may be written on bad input")
        # an existing non-layout directory is refused and left alone
        other = scratch / "notalayout"
        other.mkdir()
        (other / "keep").write_text("x")
        self.assertRejected(other, "not an OCI image layout")
        self.assertEqual(os.listdir(other), ["keep"])
        # ambiguous trees
        both = self.d / "both-etc"
        (both / "etc").mkdir(parents=True)
        (both / "usr/etc").mkdir(parents=True)
        self.assertRejected(out, "both /etc and /usr/etc", rootfs=both)
        nokver = self.d / "nokver"
        (nokver / "boot").mkdir(parents=True)
        (nokver / "boot/Image").write_bytes(b"k")
        self.assertRejected(out, "--kernel-version", rootfs=nokver)
        self.assertEqual(sorted(os.listdir(scratch)), ["notalayout"])


class RootfsToOciUsrmerge(unittest.TestCase):
    """usrmerge rootfs (/lib -> usr/lib), kernel/initramfs/dtb given from DEPLOY_DIR_IMAGE."""

    def test_usrmerge_with_external_kernel_initramfs_dtb(self):
        with tempfile.TemporaryDirectory(prefix="otter-yocto-um-") as t:
            t = Path(t)
            r = t / "rootfs"
            (r / f"usr/lib/modules/{KVER}").mkdir(parents=True)
            (r / "usr/bin").mkdir(parents=True)
            (r / "etc").mkdir()
            os.symlink("usr/lib", r / "lib")
            os.symlink("usr/bin", r / "bin")
            (r / f"usr/lib/modules/{KVER}/modules.dep").write_text("")
            (r / "etc/os-release").write_text("ID=poky\n")
            deploy = t / "deploy"
            deploy.mkdir()
            (deploy / "Image").write_bytes(b"kernel")
            (deploy / "core-image-initramfs.cpio.gz").write_bytes(b"initrd")
            (deploy / "virt.dtb").write_bytes(b"dtb")
            res = convert(r, t / "oci", "--kernel", deploy / "Image", "--initramfs",
                          deploy / "core-image-initramfs.cpio.gz", "--dtb", deploy / "virt.dtb")
            self.assertEqual(res.returncode, 0, res.stderr)
            bundle = t / "bundle"
            sh(need("umoci"), "unpack", "--image", f"{t / 'oci'}:1.2.3", bundle)
            u = bundle / "rootfs"
            k = u / "usr/lib/modules" / KVER
            self.assertEqual((k / "vmlinuz").read_bytes(), b"kernel")
            self.assertEqual((k / "initramfs.img").read_bytes(), b"initrd")
            self.assertEqual((k / "dtb/virt.dtb").read_bytes(), b"dtb")
            self.assertEqual(os.readlink(u / "lib"), "usr/lib")
            self.assertEqual((u / "usr/etc/os-release").read_text(), "ID=poky\n")
            self.assertFalse((u / "etc").exists())

    def test_two_module_dirs_need_an_explicit_kernel_version(self):
        with tempfile.TemporaryDirectory(prefix="otter-yocto-um-") as t:
            t = Path(t)
            r = t / "rootfs"
            for v in ("6.1.0", "6.6.0"):
                (r / f"usr/lib/modules/{v}").mkdir(parents=True)
            (r / "boot").mkdir()
            (r / "boot/Image").write_bytes(b"k")
            res = convert(r, t / "oci")
            self.assertEqual(res.returncode, 2)
            self.assertIn("--kernel-version", res.stderr)
            self.assertFalse((t / "oci").exists())
            res = convert(r, t / "oci", "--kernel-version", "6.6.0")
            self.assertEqual(res.returncode, 0, res.stderr)
            self.assertEqual(json.loads(res.stdout)["kernel_version"], "6.6.0")


class OtterInstall(unittest.TestCase):
    """The layout installs with the real agent: `otter install --sysroot S --no-signature-verification`.

    Needs OTTER_BIN (yocto-layer/tests/run.sh builds `cargo build -p otter` and sets it)."""

    def test_otter_install_into_scratch_sysroot(self):
        otter = os.environ.get("OTTER_BIN")
        if not otter or not os.access(otter, os.X_OK):
            raise AssertionError("OTTER_BIN is not set to an executable otter binary (run yocto-layer/tests/run.sh)")
        help_out = subprocess.run([otter, "install", "--help"], capture_output=True, text=True)
        if help_out.returncode != 0 or "--no-signature-verification" not in help_out.stdout + help_out.stderr:
            raise AssertionError(
                "this otter has no `install --no-signature-verification` yet (helper `deploy` builds it; "
                f"merge branch deploy). otter said:\n{help_out.stdout}{help_out.stderr}"
            )
        if os.geteuid() != 0:
            raise AssertionError("needs root (CI runs as root)")
        with tempfile.TemporaryDirectory(prefix="otter-yocto-install-") as t:
            t = Path(t)
            make_rootfs(t / "rootfs")
            r = convert(t / "rootfs", t / "oci", version="2.0.1")
            self.assertEqual(r.returncode, 0, r.stderr)
            sysroot = t / "sysroot"
            sysroot.mkdir()
            # what otter-image.bbclass does: a private config naming the target platform (never
            # the build host's /etc/otter/otter.conf)
            conf = t / "otter-install.conf"
            conf.write_text("[update]\nplatform = linux/arm64\n")
            sh(otter, "--config", conf, "install", "--sysroot", sysroot, "--no-signature-verification",
               f"oci:{t / 'oci'}:2.0.1")
            status = sh(need("ostree"), "admin", "status", f"--sysroot={sysroot}")
            self.assertIn("Version: 2.0.1", status, status)  # the OCI version label, as ostree reads it
            deploys = list(sysroot.glob("ostree/deploy/*/deploy/*.0"))
            self.assertEqual(len(deploys), 1, f"one deployment expected, got {deploys}\n{status}")
            dep = deploys[0]
            self.assertEqual((dep / "etc/hostname").read_text(), "qemuarm64\n")
            self.assertEqual((dep / "usr/etc/hostname").read_text(), "qemuarm64\n")
            self.assertTrue(os.lstat(dep / "usr/bin/passwd").st_mode & stat.S_ISUID)
            self.assertEqual(os.readlink(dep / "bin/sh"), "busybox")
            # the kernel the class moved to /usr/lib/modules/$kver is what the boot entry boots
            entries = list(sysroot.glob("boot/loader/entries/*.conf"))
            self.assertEqual(len(entries), 1, entries)
            linux = [ln.split(None, 1)[1] for ln in entries[0].read_text().splitlines() if ln.startswith("linux ")]
            self.assertEqual(len(linux), 1, entries[0].read_text())
            self.assertEqual(digest(sysroot / "boot" / linux[0].lstrip("/")), digest(t / f"rootfs/boot/Image-{KVER}"))
            repo = sysroot / "ostree/repo"
            sh(need("ostree"), "fsck", f"--repo={repo}")
            status = json.loads(sh(otter, "--config", conf, "--sysroot", sysroot, "status", "--json"))
            self.assertIn("2.0.1", json.dumps(status))

    def test_board_config_template_is_accepted_by_otter(self):
        """/etc/otter/otter.conf as otter-board-config writes it: otter must accept every key."""
        otter = os.environ.get("OTTER_BIN")
        if not otter or not os.access(otter, os.X_OK):
            raise AssertionError("OTTER_BIN is not set to an executable otter binary (run yocto-layer/tests/run.sh)")
        template = (REPO / "yocto-layer/meta-otter/recipes-bsp/otter-board-config/files/otter.conf.in").read_text()
        text = (template.replace("@OTTER_BOARD@", "qemu-aarch64-virt")
                .replace("@OTTER_BOOT_BACKEND@", "uboot:/etc/fw_env.config").replace("@OTTER_BOOTLIMIT@", "3"))
        self.assertNotIn("@", text)
        with tempfile.TemporaryDirectory(prefix="otter-yocto-conf-") as t:
            conf = Path(t) / "otter.conf"
            conf.write_text(text)
            r = subprocess.run([otter, "--config", conf, "--sysroot", t, "status", "--json"],
                               capture_output=True, text=True, env=MUTABLE_ENV)
            self.assertNotEqual(r.returncode, 2, f"otter rejected the config:\n{r.stderr}")
            # and a typo is rejected (the check can fail)
            conf.write_text(text.replace("tries", "triess"))
            r = subprocess.run([otter, "--config", conf, "--sysroot", t, "status", "--json"],
                               capture_output=True, text=True, env=MUTABLE_ENV)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn("triess", r.stderr)


if __name__ == "__main__":
    unittest.main()
