#!/usr/bin/env bash
# Tests for yocto-layer/ (meta-otter). Called by scripts/test.sh; runs on its own too:
#   yocto-layer/tests/run.sh
# 1. oelint-adv over every recipe, append, class and inc (installed into a venv in the cache)
# 2. the crate list is regenerated from Cargo.lock and must match the committed one (--check)
# 3. python3 -m unittest: the generator and rootfs-to-oci.py, checked with skopeo and umoci,
#    and `otter install --sysroot` of the produced layout (builds the otter binary first)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
layer=$(dirname "$here")
repo=$(dirname "$layer")
cd "$repo"

die() { echo "yocto-layer/tests/run.sh: error: $*" >&2; exit 1; }

for tool in python3 skopeo umoci busybox ostree cargo; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install $(case $tool in
    busybox) echo busybox-static;; python3) echo python3 python3-venv;; cargo) echo 'rustup (https://rustup.rs)';; *) echo "$tool";; esac); scripts/setup.sh installs it)"
done
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "python3 >= 3.11 needed (tomllib)"

echo "== oelint-adv (meta-otter)"
venv=${XDG_CACHE_HOME:-$HOME/.cache}/otter-oelint
oelint_version=9.11.2
kas_version=5.5
if ! "$venv/bin/oelint-adv" --version 2>/dev/null | grep -qx "oelint-adv $oelint_version" \
   || ! "$venv/bin/kas" --version 2>&1 | grep -q "kas $kas_version"; then
  log=$(mktemp)
  if ! { python3 -m venv "$venv" && "$venv/bin/pip" install --disable-pip-version-check -q \
           "oelint-adv==$oelint_version" "kas==$kas_version"; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    die "could not install oelint-adv and kas into $venv (needs python3-venv and access to PyPI)"
  fi
  rm -f "$log"
fi
mapfile -t files < <(find "$layer/meta-otter" -type f \( -name '*.bb' -o -name '*.bbappend' -o -name '*.bbclass' -o -name '*.inc' \) | sort)
[ ${#files[@]} -gt 0 ] || die "no recipes found under $layer/meta-otter"
# settings and suppressions (each with its reason): yocto-layer/.oelint.cfg, read from $layer
for release in scarthgap wrynose; do
  (cd "$layer" && OELINT_CONFIG="$layer/.oelint.cfg" "$venv/bin/oelint-adv" --release=$release "${files[@]}") \
    || die "oelint-adv --release=$release found problems (fix them, or suppress with a reason in yocto-layer/.oelint.cfg)"
done
echo "   ${#files[@]} files clean for scarthgap and wrynose"

echo "== kas/qemuarm64.yml against kas $kas_version's schema"
"$venv/bin/python" - "$layer/kas/qemuarm64.yml" <<'PY' || die "kas/qemuarm64.yml is not a valid kas file"
import json, os, sys
import jsonschema, kas, yaml
schema = json.load(open(os.path.join(os.path.dirname(kas.__file__), "schema-kas.json")))
doc = yaml.safe_load(open(sys.argv[1]))
jsonschema.validate(doc, schema)
layers = doc["repos"]["otter"]["layers"]
for layer in layers:
    conf = os.path.join(os.path.dirname(sys.argv[1]), "..", "..", layer, "conf", "layer.conf")
    if not os.path.isfile(conf):
        sys.exit(f"kas layer {layer} has no conf/layer.conf (looked at {conf})")
print("   valid")
PY

echo "== crate list in sync with Cargo.lock"
python3 yocto-layer/scripts/cargo-lock-to-bb.py --check

echo "== otter binary for the install test"
CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2} cargo build -q -p otter --bin otter
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
export OTTER_BIN="$target_dir/debug/otter"

echo "== python unit tests (yocto-layer/tests)"
python3 -m unittest discover -s "$here" -t "$here" -v
