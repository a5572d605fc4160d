#!/usr/bin/env bash
# Parse meta-otter with a real bitbake + openembedded-core and resolve the whole task graph of
# otter-image-minimal (bitbake -g), offline: nothing is fetched or built. Not part of run.sh
# because CI has no bitbake/oe-core checkouts; run it where you have them:
#   yocto-layer/tests/bitbake-parse.sh /path/to/bitbake /path/to/openembedded-core
# (bitbake 2.18 + oe-core wrynose, or bitbake 2.8 + oe-core scarthgap). Exit 0 = graph resolved.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 BITBAKE_DIR OECORE_DIR" >&2; exit 2; }
bitbake_dir=$(cd "$1" && pwd); oecore=$(cd "$2" && pwd)
repo=$(cd "$(dirname "$0")/../.." && pwd)
[ -x "$bitbake_dir/bin/bitbake" ] || { echo "$bitbake_dir/bin/bitbake not found" >&2; exit 2; }
[ -f "$oecore/meta/conf/layer.conf" ] || { echo "$oecore/meta/conf/layer.conf not found" >&2; exit 2; }
work=$(mktemp -d "${TMPDIR:-/tmp}/otter-bitbake-parse.XXXXXX")
trap 'rm -rf "$work"' EXIT
# bitbake insists on the en_US.UTF-8 locale; build a private one if the system lacks it
if ! locale -a 2>/dev/null | grep -qi '^en_US\.utf-\?8$'; then
  mkdir -p "$work/locale"
  localedef -i en_US -f UTF-8 "$work/locale/en_US.UTF-8"
  export LOCPATH="$work/locale" BB_ENV_PASSTHROUGH_ADDITIONS="LOCPATH"
fi
mkdir -p "$work/build/conf"
cat > "$work/build/conf/bblayers.conf" <<EOC
BBPATH = "\${TOPDIR}"
BBFILES ?= ""
BBLAYERS = "$oecore/meta $repo/yocto-layer/meta-otter"
EOC
cat > "$work/build/conf/local.conf" <<EOC
MACHINE = "qemuarm64"
DISTRO = "nodistro"
INIT_MANAGER = "systemd"
DISTRO_FEATURES:append = " usrmerge otter systemd"
PREFERRED_PROVIDER_virtual/bootloader = "u-boot"
OTTER_IMAGE_VERSION = "1.0.0"
# only the parse matters here: no host-tool sanity checks, and accept an older Rust (scarthgap)
INHERIT:remove = "sanity"
HOSTTOOLS:remove = "chrpath diffstat gawk makeinfo"
OTTER_MIN_RUST = "1.0"
INHERIT += "externalsrc"
EOC
for pn in otter otter-native otter-boot otter-board-native otter-boot-script; do
  echo "EXTERNALSRC:pn-$pn = \"$repo\"" >> "$work/build/conf/local.conf"
  echo "EXTERNALSRC_BUILD:pn-$pn = \"\${WORKDIR}/build\"" >> "$work/build/conf/local.conf"
done
cd "$work/build"
export PATH="$bitbake_dir/bin:$PATH" LANG=en_US.UTF-8
if ! bitbake -g otter-image-minimal > "$work/log" 2>&1; then
  grep -v '^NOTE: Retrying' "$work/log" | tail -40 >&2
  echo "bitbake-parse: FAILED" >&2
  exit 1
fi
for t in do_image_otter_oci do_otter_sign do_image_otter_sysroot do_image_wic; do
  grep -q "\"otter-image-minimal.$t\"" task-depends.dot || { echo "bitbake-parse: task $t missing" >&2; exit 1; }
done
echo "bitbake-parse: ok ($(wc -l < pn-buildlist) recipes in the graph of otter-image-minimal)"
