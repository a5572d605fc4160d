#!/usr/bin/env bash
# Import benchmark: one real OS image (Debian bookworm arm64 with a kernel, ~545 MB tree,
# thousands of files; made by mmdebstrap) as a one-layer gzip OCI image.
#   otter:  `otter install` (verify blob digest, decompress, import into a bare repo, deploy)
#   ostree: `ostree commit --tree=tar=` of the same gzip layer into a bare repo, then
#           `ostree admin deploy` of that commit (the same two jobs, done by the real tool)
# Prints wall time and peak RSS of each and their ratios. Needs root (bare repos keep owners).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null
command -v mmdebstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q mmdebstrap >/dev/null

. bench/lib/bench-image.sh
cargo build --release -q -p otter
# Deployment roots get `chattr +i` like ostree does; keep the scratch sysroots deletable.
export OSTREE_SYSROOT_DEBUG=mutable-deployments
otter=target/release/otter
layer=$(find "$layout/blobs/sha256" -type f -size +10M | head -n1)

work=$(mktemp -d /var/tmp/otter-bench.XXXXXX)
trap '[ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
measure() { # name, command...: prints "seconds peak_kib"
  local out=$work/$1.time
  shift
  sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -f "%e %M" -o "$out" "$@" >"$work/cmd.log" 2>&1 || { cat "$work/cmd.log" >&2; kill $$; exit 1; }
  cat "$out"
}

printf '[update]\nplatform = linux/arm64\n' >"$work/otter.conf"
read -r otter_s otter_kib < <(measure otter "$otter" --config "$work/otter.conf" install --sysroot "$work/otter-sysroot" \
  --no-signature-verification "oci:$layout:bench")

mkdir -p "$work/ostree-sysroot"
ostree admin init-fs "$work/ostree-sysroot" >/dev/null
ostree admin os-init --sysroot="$work/ostree-sysroot" default >/dev/null
repo=$work/ostree-sysroot/ostree/repo
read -r commit_s commit_kib < <(measure commit ostree commit --repo="$repo" --branch=bench --tree=tar="$layer" \
  --tar-autocreate-parents --no-xattrs)
read -r deploy_s deploy_kib < <(measure deploy ostree admin deploy --sysroot="$work/ostree-sysroot" --os=default \
  --no-prune bench)

files=$(tar -tf "$rootfs_tar" | wc -l)
size=$(stat -c %s "$layer")
python3 - "$files" "$size" "$otter_s" "$otter_kib" "$commit_s" "$commit_kib" "$deploy_s" "$deploy_kib" <<'PY'
import sys
files, size, os_, okib, cs, ckib, ds, dkib = sys.argv[1:]
os_, cs, ds = float(os_), float(cs), float(ds)
okib, ckib, dkib = int(okib), int(ckib), int(dkib)
print(f"image: {int(files)} entries, layer {int(size)/2**20:.1f} MiB gzip")
print(f"{'':28}{'wall s':>8}{'peak RSS MiB':>14}")
print(f"{'otter install':28}{os_:8.1f}{okib/1024:14.1f}")
print(f"{'ostree commit --tree=tar=':28}{cs:8.1f}{ckib/1024:14.1f}")
print(f"{'ostree admin deploy':28}{ds:8.1f}{dkib/1024:14.1f}")
print(f"{'ostree commit + deploy':28}{cs+ds:8.1f}{max(ckib,dkib)/1024:14.1f}")
print(f"ratio otter / ostree (wall): {os_/(cs+ds):.2f}   peak RSS: {okib/max(ckib,dkib):.2f}")
PY
