"""Tests for yocto-layer/scripts/cargo-lock-to-bb.py (run: python3 -m unittest discover -s yocto-layer/tests)."""

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import tomllib
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SCRIPT = REPO / "yocto-layer/scripts/cargo-lock-to-bb.py"
COMMITTED = REPO / "yocto-layer/meta-otter/recipes-otter/otter/otter-crates.inc"
CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def lock(*pkgs, header='version = 4\n'):
    body = header
    for p in pkgs:
        body += "\n[[package]]\n" + "".join(f'{k} = "{v}"\n' for k, v in p.items())
    return body


def sha(s):
    return hashlib.sha256(s.encode()).hexdigest()


class CargoLockToBb(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.d = Path(self.tmp.name)
        self.lock = self.d / "Cargo.lock"
        self.out = self.d / "out" / "x-crates.inc"

    def tearDown(self):
        self.tmp.cleanup()

    def test_committed_inc_matches_workspace_lock(self):
        r = run("--check")
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_every_registry_package_of_the_real_lock_is_pinned(self):
        # Independent reading of Cargo.lock with tomllib; compare with the committed .inc.
        data = tomllib.loads((REPO / "Cargo.lock").read_text())
        want = {(p["name"], p["version"], p["checksum"]) for p in data["package"] if p.get("source") == CRATES_IO}
        text = COMMITTED.read_text()
        uris = set(re.findall(r"crate://crates\.io/([^/\s]+)/(\S+) \\", text))
        sums = set(re.findall(r'SRC_URI\[(\S+)\.sha256sum\] = "([0-9a-f]{64})"', text))
        self.assertEqual(uris, {(n, v) for n, v, _ in want})
        self.assertEqual(sums, {(f"{n}-{v}", c) for n, v, c in want})
        members = {p["name"] for p in data["package"] if "source" not in p}
        self.assertIn("otter", members)
        for m in members:
            self.assertNotIn(f"crates.io/{m}/", text)

    def test_generates_sorted_deterministic_output_and_check_mode(self):
        self.lock.write_text(lock(
            {"name": "zeta", "version": "1.0.0", "source": CRATES_IO, "checksum": sha("z")},
            {"name": "alpha", "version": "0.2.0+build.1", "source": CRATES_IO, "checksum": sha("a")},
            {"name": "otter", "version": "0.1.0"},
        ))
        r = run("--lock", self.lock, "--out", self.out)
        self.assertEqual(r.returncode, 0, r.stderr)
        text = self.out.read_text()
        self.assertLess(text.index("crate://crates.io/alpha/0.2.0+build.1"), text.index("crate://crates.io/zeta/1.0.0"))
        self.assertIn(f'SRC_URI[zeta-1.0.0.sha256sum] = "{sha("z")}"', text)
        self.assertNotIn("otter", text.split("Do not edit")[1])
        self.assertEqual(run("--lock", self.lock, "--out", self.out, "--check").returncode, 0)
        # A second run leaves the file byte-identical.
        before = self.out.read_bytes()
        self.assertEqual(run("--lock", self.lock, "--out", self.out).returncode, 0)
        self.assertEqual(before, self.out.read_bytes())

        # A changed lock -> --check fails with a diff, and does not touch the file.
        self.lock.write_text(lock({"name": "zeta", "version": "1.0.1", "source": CRATES_IO, "checksum": sha("z2")}))
        r = run("--lock", self.lock, "--out", self.out, "--check")
        self.assertEqual(r.returncode, 1)
        self.assertIn("out of date", r.stderr)
        self.assertRegex(r.stderr, r"\n  \+ *(SRC_URI \+= \")?crate://crates\.io/zeta/1\.0\.1")
        self.assertEqual(before, self.out.read_bytes())

    def test_check_fails_when_inc_missing(self):
        self.lock.write_text(lock({"name": "a", "version": "1.0.0", "source": CRATES_IO, "checksum": sha("a")}))
        r = run("--lock", self.lock, "--out", self.out, "--check")
        self.assertEqual(r.returncode, 1)
        self.assertFalse(self.out.exists())

    def test_v1_lock_metadata_checksums(self):
        self.lock.write_text(
            '[[package]]\nname = "a"\nversion = "1.0.0"\nsource = "%s"\n\n[metadata]\n'
            '"checksum a 1.0.0 (%s)" = "%s"\n' % (CRATES_IO, CRATES_IO, sha("a"))
        )
        r = run("--lock", self.lock, "--out", self.out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f'SRC_URI[a-1.0.0.sha256sum] = "{sha("a")}"', self.out.read_text())

    def assertBadInput(self, content, needle):
        if content is not None:
            self.lock.write_text(content)
        r = run("--lock", self.lock, "--out", self.out)
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertIn(needle, r.stderr)
        self.assertFalse(self.out.exists(), "nothing may be written on bad input")
        self.assertFalse(self.out.parent.exists() and any(self.out.parent.iterdir()))

    def test_bad_inputs_write_nothing(self):
        self.assertBadInput(None, "no such file")
        self.assertBadInput("this is [not toml", "not a valid Cargo.lock")
        self.assertBadInput("version = 4\n", "no [[package]]")
        self.assertBadInput(lock({"name": "a", "version": "1.0.0", "source": CRATES_IO}), "missing or malformed sha256")
        self.assertBadInput(
            lock({"name": "a", "version": "1.0.0", "source": CRATES_IO, "checksum": "abc"}), "malformed sha256"
        )
        self.assertBadInput(
            lock({"name": "a", "version": "1.0.0", "source": "git+https://example.com/a#0123"}), "git dependency"
        )
        self.assertBadInput(
            lock({"name": "a", "version": "1.0.0", "source": "registry+https://example.com/idx", "checksum": sha("a")}),
            "not crates.io",
        )
        self.assertBadInput(
            lock({"name": "a b", "version": "1.0.0", "source": CRATES_IO, "checksum": sha("a")}), "invalid crate name"
        )
        self.assertBadInput(
            lock({"name": "a", "version": "1.0", "source": CRATES_IO, "checksum": sha("a")}), "invalid version"
        )
        self.assertBadInput(lock({"name": "otter", "version": "0.1.0"}), "no crates.io packages")

    def test_existing_inc_untouched_on_bad_input(self):
        self.out.parent.mkdir(parents=True)
        self.out.write_text("keep me\n")
        self.lock.write_text("garbage [")
        r = run("--lock", self.lock, "--out", self.out)
        self.assertEqual(r.returncode, 2)
        self.assertEqual(self.out.read_text(), "keep me\n")
        self.assertEqual(sorted(os.listdir(self.out.parent)), ["x-crates.inc"])


if __name__ == "__main__":
    unittest.main()
