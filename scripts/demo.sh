#!/usr/bin/env bash
# otter demo: build a small bootable-looking OS as an OCI image (v1, v2), install v1 into a fresh
# sysroot, change /etc, switch to v2, show `otter status` and `ostree admin status`, roll back.
#
#   scripts/demo.sh [WORKDIR]        (default: a new temp dir; kept afterwards for a look around)
#
# Runs as root (the sysroot repo is a `bare` ostree repo, which stores real file ownership).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
echo "== building otter"
cargo build -p otter --quiet
otter="$PWD/target/debug/otter"

work=${1:-$(mktemp -d /tmp/otter-demo.XXXXXX)}
mkdir -p "$work"
layout="$work/layout"
sysroot="$work/sysroot"
# Deployment roots get `chattr +i` like ostree does; keep the demo easy to delete.
export OSTREE_SYSROOT_DEBUG=mutable-deployments

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

build_version() { # VERSION
  local v=$1 bundle="$work/bundle-v$1" img="$layout:v$1"
  umoci new --image "$img"
  umoci unpack --image "$img" "$bundle" >/dev/null
  local r="$bundle/rootfs"
  mkdir -p "$r"/usr/bin "$r"/usr/lib/modules/6.1.0-demo "$r"/etc/otter "$r"/var/lib \
    "$r"/boot "$r"/dev "$r"/proc "$r"/run "$r"/sys "$r"/sysroot "$r"/tmp
  cp /bin/busybox "$r/usr/bin/busybox"
  for app in sh ls cat echo mount; do ln -sf busybox "$r/usr/bin/$app"; done
  ln -sfn usr/bin "$r/bin"; ln -sfn usr/bin "$r/sbin"; ln -sfn usr/lib "$r/lib"
  ln -sfn sysroot/ostree "$r/ostree"
  printf 'fake kernel %s\n' "$v" >"$r/usr/lib/modules/6.1.0-demo/vmlinuz"
  printf 'fake initramfs %s\n' "$v" >"$r/usr/lib/modules/6.1.0-demo/initramfs.img"
  printf 'NAME="Demo OS"\nID=demo\nVERSION_ID=%s\nPRETTY_NAME="Demo OS %s"\n' "$v" "$v" >"$r/usr/lib/os-release"
  ln -sf ../usr/lib/os-release "$r/etc/os-release"
  printf 'motd of version %s\n' "$v" >"$r/etc/motd"
  printf 'hostname-default\n' >"$r/etc/hostname"
  printf '# release %s\n' "$v" >"$r/etc/demo.conf"
  umoci repack --image "$img" "$bundle" >/dev/null
  umoci config --image "$img" --config.label "org.opencontainers.image.version=$v"
}

say "building the OS image (OCI layout $layout, tags v1 and v2)"
rm -rf "$layout" "$work"/bundle-v*
umoci init --layout "$layout"
build_version 1
build_version 2
run skopeo inspect --format '{{.Digest}} version={{index .Labels "org.opencontainers.image.version"}}' "oci:$layout:v1"

say "install v1 into an empty sysroot"
rm -rf "$sysroot"
run "$otter" --sysroot "$sysroot" --no-signature-verification install --stateroot demo --karg console=ttyS0 "oci:$layout:v1"
run "$otter" --sysroot "$sysroot" status
run ostree admin status --sysroot="$sysroot"

say "local configuration change on the running system"
booted="$sysroot/ostree/deploy/demo/deploy/$("$otter" --sysroot "$sysroot" status --json | jq -r '.deployments[0] | "\(.checksum).\(.serial)"')"
echo "my-device" >"$booted/etc/hostname"
run cat "$booted/etc/hostname"

say "upgrade check (same image: nothing to do, exit 77)"
set +e; "$otter" --sysroot "$sysroot" --no-signature-verification upgrade --check; echo "exit code $?"; set -e

say "switch to v2"
run "$otter" --sysroot "$sysroot" --no-signature-verification switch "oci:$layout:v2"
run "$otter" --sysroot "$sysroot" status
run ostree admin status --sysroot="$sysroot"
new="$sysroot/ostree/deploy/demo/deploy/$("$otter" --sysroot "$sysroot" status --json | jq -r '.deployments[0] | "\(.checksum).\(.serial)"')"
echo "/etc in the new deployment: hostname (edited, kept) and motd (untouched, new default):"
run cat "$new/etc/hostname" "$new/etc/motd"
run cat "$sysroot"/boot/loader/entries/ostree-2-demo.conf

say "roll back to v1"
run "$otter" --sysroot "$sysroot" rollback
run "$otter" --sysroot "$sysroot" status --json
run ostree admin status --sysroot="$sysroot"
run ostree fsck --repo="$sysroot/ostree/repo"

say "done; everything is in $work"
