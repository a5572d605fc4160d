#!/usr/bin/env bash
# Pull benchmark: a >= 500 MB image (Debian bookworm arm64 with a kernel, from mmdebstrap, one gzip
# layer) pushed by skopeo to a loopback docker-registry, then
#   otter:  `otter install docker://…`  (resumable journaled download + verify + import + deploy)
#   skopeo: `skopeo copy docker://… oci:DIR` (download + verify only)
# Prints wall time, throughput (compressed MiB/s) and peak RSS of each, and the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null
command -v mmdebstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q mmdebstrap >/dev/null

. bench/lib/bench-image.sh
cargo build --release -q -p otter
# Deployment roots get `chattr +i` like ostree does; keep the scratch sysroots deletable.
export OSTREE_SYSROOT_DEBUG=mutable-deployments
otter=$PWD/target/release/otter

work=$(mktemp -d /var/tmp/otter-pull.XXXXXX)
registry_pid=
cleanup() { [ -z "$registry_pid" ] || kill "$registry_pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/registry.yml" <<YML
version: 0.1
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$port
log:
  level: error
YML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 </dev/null &
registry_pid=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.2; done
skopeo copy -q --dest-tls-verify=false "oci:$layout:bench" "docker://127.0.0.1:$port/bench/os:1"
printf '[update]\nplatform = linux/arm64\n' >"$work/otter.conf"

measure() { # name, command...: prints "seconds peak_kib"
  local out=$work/$1.time
  shift
  sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -f "%e %M" -o "$out" "$@" >"$work/cmd.log" 2>&1 || { cat "$work/cmd.log" >&2; kill $$; exit 1; }
  cat "$out"
}
sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
read -r otter_s otter_kib otter_dl_s < <(python3 bench/lib/run-with-progress.py "$work/otter.log" \
  "$otter" --config "$work/otter.conf" --progress json install --sysroot "$work/sysroot" \
  --no-signature-verification "docker://127.0.0.1:$port/bench/os:1" || kill $$)
read -r skopeo_s skopeo_kib < <(measure skopeo skopeo copy -q --src-tls-verify=false \
  "docker://127.0.0.1:$port/bench/os:1" "oci:$work/skopeo-out:1")

size=$(find "$layout/blobs/sha256" -type f -printf '%s\n' | sort -n | tail -n1)
python3 - "$size" "$otter_s" "$otter_kib" "$otter_dl_s" "$skopeo_s" "$skopeo_kib" <<'PY'
import sys
size, os_, okib, odl, ss, skib = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
mib = size / 2**20
print(f"image: one gzip layer of {mib:.1f} MiB (Debian bookworm arm64 + kernel)")
print(f"{'':50}{'wall s':>8}{'MiB/s':>8}{'peak RSS MiB':>14}")
print(f"{'otter: download phase (journaled, verified)':50}{odl:8.1f}{mib/odl:8.1f}{'':>14}")
print(f"{'otter install (download+import+deploy, whole run)':50}{os_:8.1f}{'':>8}{okib/1024:14.1f}")
print(f"{'skopeo copy docker:// oci: (download+verify)':50}{ss:8.1f}{mib/ss:8.1f}{skib/1024:14.1f}")
print(f"ratio otter / skopeo: download throughput {ss/odl:.2f}, peak RSS {okib/skib:.2f}")
PY
