#!/usr/bin/env bash
# Runs every fuzz target for a fixed time and prints target × executions × crashes.
#   fuzz/run.sh [SECONDS]      (default 20; CI uses 20)
# Exits non-zero when a target crashed; the crashing input is kept in
# fuzz/artifacts/<target>/ — turn it into a regression test (a unit test with the input as a
# fixture) before fixing the bug.
#
# Only stable Rust is installed: cargo-fuzz needs nightly flags, so RUSTC_BOOTSTRAP=1 lets the
# stable compiler accept them. No sanitizer by default (the code is safe Rust; libFuzzer's
# coverage guidance still works and builds are much faster); FUZZ_SANITIZER=address to change.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-20}
sanitizer=${FUZZ_SANITIZER:-none}
export RUSTC_BOOTSTRAP=1
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}

command -v cargo-fuzz >/dev/null || {
  echo "fuzz/run.sh: cargo-fuzz is missing: run scripts/setup.sh (cargo install cargo-fuzz --locked)" >&2
  exit 1
}

targets=$(cargo fuzz list)
echo "== building fuzz targets (sanitizer: $sanitizer)"
cargo fuzz build -O --sanitizer "$sanitizer" --codegen-units "${FUZZ_CODEGEN_UNITS:-16}" >build.log 2>&1 || { tail -40 build.log; exit 1; }
triple=$(rustc -vV | sed -n 's/^host: //p')
bindir=target/$triple/release

# Scratch space (the import target's repo, new corpus entries) on tmpfs when there is one.
base=/dev/shm
[ -d "$base" ] && [ -w "$base" ] || base=${TMPDIR:-/tmp}
work=$(mktemp -d "$base/otter-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT

failed=0
rows=()
for t in $targets; do
  mkdir -p "$work/$t/new" "$work/$t/tmp" "artifacts/$t" "corpus/$t"
  log="$work/$t/log"
  set +e
  TMPDIR="$work/$t/tmp" "$bindir/$t" "$work/$t/new" "corpus/$t" \
    -max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
    -max_len=65536 -artifact_prefix="artifacts/$t/" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  [ -n "$execs" ] || execs=$(sed -n 's/^#\([0-9]*\).*DONE.*/\1/p' "$log" | tail -1)
  [ -n "$execs" ] || execs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)
  crashes=0
  if [ $rc -ne 0 ]; then
    crashes=$(ls "artifacts/$t" | wc -l)
    [ "$crashes" -gt 0 ] || crashes=1
    failed=1
    echo "---- $t failed (exit $rc); last lines of its log:"
    tail -30 "$log"
  fi
  rows+=("$(printf '%-16s %12s %8s' "$t" "${execs:-?}" "$crashes")")
done

echo
printf '%-16s %12s %8s\n' target executions crashes
for r in "${rows[@]}"; do echo "$r"; done
if [ $failed -ne 0 ]; then
  echo "fuzz: crashes found; inputs in fuzz/artifacts/<target>/" >&2
  exit 1
fi
