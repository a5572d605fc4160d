#!/usr/bin/env bash
# Runs every test: formatting, lints, unit and integration tests against the real tools
# (ostree, skopeo, umoci, docker-registry, minisign, grub-editenv, fw_printenv, mosquitto),
# the static aarch64 build, and the QEMU aarch64 rig. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib-reap.sh
trap reap_leftovers EXIT
exec </dev/null

# Servers the tests start write to files, never to our stdout: nothing may outlive this script
# holding the terminal or a CI pipe open.
./scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings

echo "== cargo test"
cargo test --workspace --all-features 2>&1

echo "== fuzz (each target 10 s)"
fuzz/run.sh 10

echo "== static aarch64 device binaries"
cargo build --release --target aarch64-unknown-linux-musl -p otter -p otter-boot
ls -l target/aarch64-unknown-linux-musl/release/otter target/aarch64-unknown-linux-musl/release/otter-boot

# Boots real U-Boot + a Debian arm64 kernel in qemu-system-aarch64 (TCG) and runs update,
# rollback, power-cut, usb and kernel-panic end to end; prints a summary with wall times and
# fails if any scenario fails. Its QEMU and registry processes are stopped by PID, their output
# goes to qemu-tests/.cache/logs/. Needs the aarch64 build above and the host otter,
# otter-board and otter-publish (signs the rig's images).
echo "== QEMU aarch64 rig: update rollback power-cut usb kernel-panic (qemu-tests/run all)"
cargo build -p otter -p otter-board --features otter/publish
qemu-tests/run all

echo "== yocto-layer (oelint-adv, crate list in sync with Cargo.lock, rootfs -> OCI -> otter install)"
yocto-layer/tests/run.sh

echo
echo "== all tests passed"
