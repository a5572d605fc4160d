#!/usr/bin/env bash
# Installs everything the demo and the tests need on a Debian bookworm machine:
# the real tools our formats are checked against, and the Rust cross target.
# Safe to run again: it only installs what is missing.
set -euo pipefail

log=${OTTER_SETUP_LOG:-/tmp/otter-setup.log}
packages=(
  ostree skopeo umoci minisign zstd jq openssl ca-certificates
  grub-common libubootenv-tool u-boot-tools
  docker-registry apache2-utils mosquitto mosquitto-clients systemd tzdata
  qemu-system-arm qemu-utils u-boot-qemu dosfstools mtools e2fsprogs fdisk busybox-static cpio
  gcc-aarch64-linux-gnu libc6-dev-arm64-cross time python3 python3-venv
  systemd-boot qemu-efi-aarch64
  gcc binutils dwarves
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"

if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing: ${missing[*]} (log: $log)"
  # Packages like docker-registry and mosquitto start a system service on install; we start our
  # own servers from the tests, so keep apt from launching daemons that would outlive us.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod 755 /usr/sbin/policy-rc.d
    trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  if ! { $sudo apt-get update && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"; } >"$log" 2>&1 </dev/null; then
    tail -n 40 "$log"
    echo "setup: apt-get install failed (full log: $log)" >&2
    exit 1
  fi
fi

# The QEMU rig (qemu-tests/) fetches the arm64 kernel and busybox-static with
# `apt-get download PKG:arm64`, which needs arm64 as a dpkg foreign architecture (no arm64
# package gets installed).
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  echo "== dpkg --add-architecture arm64 (for qemu-tests' apt-get download of arm64 packages)"
  { $sudo dpkg --add-architecture arm64 && $sudo apt-get update; } >"$log.arm64" 2>&1 </dev/null \
    || { tail -n 20 "$log.arm64"; echo "setup: enabling arm64 packages failed" >&2; exit 1; }
fi

# GRUB's arm64-efi modules for boot-counter/tests/qemu_grub.rs (GRUB under AAVMF). The package
# exists only for arm64, so it is downloaded as a foreign-architecture .deb and unpacked, not
# installed.
grub_arm64=${OTTER_GRUB_ARM64_DIR:-/usr/local/lib/otter-test/grub-arm64-efi}
if [ ! -e "$grub_arm64/normal.mod" ]; then
  echo "== unpacking grub-efi-arm64-bin:arm64 into $grub_arm64"
  tmp=$(mktemp -d)
  if ! { (cd "$tmp" && apt-get download grub-efi-arm64-bin:arm64) && dpkg -x "$tmp"/grub-efi-arm64-bin_*.deb "$tmp/x"; } >>"$log" 2>&1 </dev/null; then
    tail -n 20 "$log"; echo "setup: could not download grub-efi-arm64-bin:arm64 (full log: $log)" >&2; exit 1
  fi
  $sudo mkdir -p "$grub_arm64"
  $sudo cp -a "$tmp/x/usr/lib/grub/arm64-efi/." "$grub_arm64/"
  rm -rf "$tmp"
fi

if ! rustup target list --installed | grep -qx aarch64-unknown-linux-musl; then
  echo "== rustup target add aarch64-unknown-linux-musl"
  rustup target add aarch64-unknown-linux-musl >"$log.rustup" 2>&1 || { cat "$log.rustup"; exit 1; }
fi
# cargo-fuzz (libFuzzer driver for fuzz/run.sh); built from the Rust package registry with the stable toolchain.
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "== cargo install cargo-fuzz"
  cargo install cargo-fuzz --locked >"$log.cargo-fuzz" 2>&1 || { tail -n 40 "$log.cargo-fuzz"; exit 1; }
fi
echo "== setup done"
