#!/bin/bash
# Delta benchmark: otter deltas vs ostree static deltas vs zstd --patch-from vs full layers,
# on a real Debian image pair (arm64, bookworm → bookworm + updates + security). One run prints
# every number side by side. Needs: mmdebstrap, ostree, zstd, gzip, /usr/bin/time, and the
# host's apt sources for bookworm and bookworm-security. Images are cached in bench/.cache/
# (gitignored); delete it to rebuild.
#
# Usage: bench/delta.sh           (from the repository root or anywhere)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
C=$HERE/.cache
mkdir -p "$C"
for t in mmdebstrap ostree zstd gzip /usr/bin/time; do
    command -v "$t" >/dev/null || { echo "missing $t (apt: mmdebstrap ostree zstd gzip time)" >&2; exit 1; }
done

# The mirrors this machine's apt already uses (deb822 .sources or one-line .list files): the
# first URI serving the suite bookworm, and the one serving bookworm-security.
apt_uri() { # SUITE
    apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null |
        awk -v s="$1" '$2 == s { sub(/\/$/, "", $1); print $1; exit }'
}
M=$(apt_uri bookworm)
S=$(apt_uri bookworm-security)
[ -n "$M" ] && [ -n "$S" ] || {
    echo "apt has no bookworm and bookworm-security sources configured (run apt-get update first)" >&2
    exit 1
}
INC=linux-image-arm64,openssh-server,curl,ca-certificates
# --variant=extract: arm64 maintainer scripts cannot run here (no qemu-user binfmt); extract
# unpacks Essential packages plus --include and their dependencies.
mk() { # NAME SOURCES...
    local name=$1; shift
    [ -s "$C/$name.tar" ] && return
    echo "== building $name.tar (mmdebstrap)"
    local srcs=()
    for s in "$@"; do srcs+=("$s"); done
    mmdebstrap --variant=extract --format=tar --arch=arm64 --include=$INC bookworm \
        "$C/$name.tar.tmp" "${srcs[@]}" >"$C/$name.log" 2>&1
    mv "$C/$name.tar.tmp" "$C/$name.tar"
}
mk A "deb $M bookworm main"
mk B "deb $M bookworm main" "deb $M bookworm-updates main" "deb $S bookworm-security main"

echo "== building the bench driver (profile publisher: release at opt-level 3)"
(cd "$ROOT" && cargo build -q --profile publisher --example delta-bench -p otter --features publish)
BIN=$ROOT/target/publisher/examples/delta-bench

W=$C/work
rm -rf "$W"
mkdir -p "$W"
T() { # LABEL CMD... : run under /usr/bin/time, keep "seconds peakKiB" in $W/LABEL.time
    local label=$1; shift
    /usr/bin/time -f "%e %M" -o "$W/$label.time" "$@"
}
tm() { cut -d' ' -f1 "$W/$1.time"; }
rss() { echo $(( $(cut -d' ' -f2 "$W/$1.time") / 1024 )); }

echo "== import A and B (otter importer)"
T import-a "$BIN" import "$W/pub" "$C/A.tar" A >"$W/a.commit"
T import-b "$BIN" import "$W/pub" "$C/B.tar" B >"$W/b.commit"
A=$(cat "$W/a.commit"); B=$(cat "$W/b.commit")

echo "== generate: otter"
T gen-ours "$BIN" generate "$W/pub" "$A" "$B" "$W/ours" | tee "$W/ours.summary"
OURS=$(du -cb "$W"/ours/* | tail -1 | cut -f1)
echo "== generate: ostree static-delta (inline, no fallbacks)"
T gen-ostree ostree static-delta generate --repo="$W/pub" --from="$A" --to="$B" \
    --inline --min-fallback-size=0 --filename="$W/ostree.delta" >/dev/null
OST=$(stat -c %s "$W/ostree.delta")

for d in dev-ours dev-ostree; do
    ostree init --repo="$W/$d" --mode=bare-user
    ostree pull-local --repo="$W/$d" "$W/pub" "$A" >/dev/null
done
sync
echo "== apply: otter"
T apply-ours "$BIN" apply "$W/dev-ours" "$W/ours" "$A" >"$W/apply-ours.out"
echo "== apply: ostree static-delta apply-offline"
T apply-ostree ostree static-delta apply-offline --repo="$W/dev-ostree" "$W/ostree.delta"

echo "== verify"
B_CONTENT=$(ostree --repo="$W/pub" show "$B" | awk '/ContentChecksum/ {print $2}')
[ "$(cat "$W/apply-ours.out")" = "$B_CONTENT" ] || { echo "otter apply produced tree $(cat "$W/apply-ours.out"), want $B_CONTENT" >&2; exit 1; }
# (the device wrote its own commit over the rebuilt tree: ref bench/B)
ostree fsck --repo="$W/dev-ours" | tail -1
ostree ls -R --repo="$W/dev-ours" bench/B | md5sum | cut -c1-32 >"$W/ls-ours"
ostree ls -R --repo="$W/pub" "$B" | md5sum | cut -c1-32 >"$W/ls-pub"
cmp "$W/ls-ours" "$W/ls-pub" && echo "tree listing of B identical to the publisher's"

# Last: the whole-tar compressions are the slowest steps (single-threaded, level 19).
echo "== full layers"
GZ=$(gzip -6 -c "$C/B.tar" | wc -c)
ZS=$(zstd -q -19 -T1 -c "$C/B.tar" | wc -c)
echo "== zstd --patch-from"
ZP=$(zstd -q -19 --long=31 -T1 --patch-from="$C/A.tar" -c "$C/B.tar" | wc -c)

FILES=$(tar -tf "$C/B.tar" | wc -l)
mib() { awk -v b="$1" 'BEGIN { printf "%.2f MiB", b / 1048576 }'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f %%", 100 * a / b }'; }
cat <<REPORT

== Results (A = bookworm, B = bookworm + bookworm-updates + bookworm-security; arm64, $INC)
A.tar $(mib "$(stat -c %s "$C/A.tar")"), B.tar $(mib "$(stat -c %s "$C/B.tar")"), $FILES entries in B
kernels: A $(tar -tf "$C/A.tar" | grep -oE 'boot/vmlinuz-[^/]+' | head -1), B $(tar -tf "$C/B.tar" | grep -oE 'boot/vmlinuz-[^/]+' | head -1); \
entries whose path or size differ: $(diff <(tar -tvf "$C/A.tar" | awk '{print $6, $3}' | sort) <(tar -tvf "$C/B.tar" | awk '{print $6, $3}' | sort) | grep -c '^>' || true)

size (bytes to download for A -> B)
  full layer, gzip -6            $(mib "$GZ")
  full layer, zstd -19           $(mib "$ZS")
  zstd -19 --long=31 --patch-from $(mib "$ZP")
  ostree static delta (inline)   $(mib "$OST")
  otter delta                    $(mib "$OURS")   ($(pct "$OURS" "$OST") of ostree's)
  otter summary: $(cat "$W/ours.summary")

generate (wall s / peak RSS MiB)
  otter                          $(tm gen-ours) s / $(rss gen-ours) MiB
  ostree static-delta generate   $(tm gen-ostree) s / $(rss gen-ostree) MiB

apply on a repo holding only A (wall s / peak RSS MiB)
  otter                          $(tm apply-ours) s / $(rss apply-ours) MiB
  ostree static-delta apply-offline $(tm apply-ostree) s / $(rss apply-ostree) MiB

import of the full tar (otter importer, for reference): A $(tm import-a) s / $(rss import-a) MiB, B $(tm import-b) s / $(rss import-b) MiB
REPORT
