#!/usr/bin/env bash
# Regenerates the seed corpora in fuzz/corpus/<target>/ from real tools (ostree, tar, mosquitto).
# The seeds are committed; run this only to refresh them. Needs: ostree, tar, python3, mosquitto.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
c=corpus

# --- ostree objects: a real commit, dirtree and dirmeta written by `ostree commit`.
mkdir -p "$c/ostree_object" "$c/gvariant" "$c/import_tar" "$c/mqtt"
ostree init --repo="$tmp/repo" --mode=bare-user >/dev/null
mkdir -p "$tmp/tree/usr/bin" "$tmp/tree/etc"
echo hello >"$tmp/tree/usr/bin/hello"; chmod 755 "$tmp/tree/usr/bin/hello"
echo x >"$tmp/tree/etc/os-release"; ln -s ../usr/bin/hello "$tmp/tree/etc/link"
ostree commit --repo="$tmp/repo" --branch=seed --subject="seed commit" --body="body" \
  --add-metadata-string=version=1.0 --add-metadata-string=otter.image.digest=sha256:0000 \
  "$tmp/tree" >/dev/null
put() { # put TARGET NAME PREFIXBYTES FILE
  { printf "$3"; cat "$4"; } >"$c/$1/$2"
}
for f in "$tmp"/repo/objects/*/*; do
  case "$f" in
    *.commit)  put ostree_object commit '\x00' "$f"; put gvariant commit '(a{sv}aya(say)sstayay)\x00' "$f" ;;
    *.dirmeta) put ostree_object "dirmeta-$(basename "$f" .dirmeta | cut -c1-8)" '\x02' "$f"
               put gvariant "dirmeta-$(basename "$f" .dirmeta | cut -c1-8)" '(uuua(ayay))\x00' "$f" ;;
    *.dirtree) put ostree_object "dirtree-$(basename "$f" .dirtree | cut -c1-8)" '\x01' "$f"
               put gvariant "dirtree-$(basename "$f" .dirtree | cut -c1-8)" '(a(say)a(sayay))\x00' "$f" ;;
  esac
done
# A bare-user content object header (user.ostreemeta) as a gvariant seed.
obj=$(ls "$tmp"/repo/objects/*/*.file | head -1)
getfattr --only-values -n user.ostreemeta "$obj" >"$tmp/meta" 2>/dev/null \
  && put gvariant ostreemeta '(uuua(ayay))\x00' "$tmp/meta" || true

# --- tar layers made by GNU tar: files, dirs, symlink, hardlink, setuid, whiteout, sparse, PAX.
r="$tmp/rootfs"
mkdir -p "$r/usr/bin" "$r/etc" "$r/var/lib" "$r/d"
echo '#!/bin/sh' >"$r/usr/bin/tool"; chmod 4755 "$r/usr/bin/tool"
echo conf >"$r/etc/conf"; ln "$r/etc/conf" "$r/etc/conf.hard"; ln -s /usr/bin/tool "$r/usr/bin/alias"
: >"$r/d/.wh.gone"; : >"$r/var/.wh..wh..opq"
tar --numeric-owner --owner=0 --group=0 -C "$r" -cf "$c/import_tar/gnu-basic.tar" .
tar --format=posix --numeric-owner -C "$r" -cf "$c/import_tar/pax-basic.tar" .
truncate -s 1M "$tmp/sparse"; echo data | dd of="$tmp/sparse" bs=1 seek=65536 conv=notrunc 2>/dev/null
tar --sparse -C "$tmp" -cf "$c/import_tar/gnu-sparse.tar" sparse
python3 - "$c/import_tar/pax-xattr.tar" <<'PY'
import io, sys, tarfile
with tarfile.open(sys.argv[1], "w", format=tarfile.PAX_FORMAT) as t:
    ti = tarfile.TarInfo("usr/bin/ping"); data = b"ping"; ti.size = len(data); ti.mode = 0o755
    ti.pax_headers = {"SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00"}
    t.addfile(ti, io.BytesIO(data))
    ti = tarfile.TarInfo("usr/lib/modules/6.1.0/vmlinuz"); ti.size = 1; t.addfile(ti, io.BytesIO(b"k"))
PY

# --- MQTT: the bytes a real mosquitto broker sends (CONNACK, SUBACK, a retained PUBLISH QoS 1,
# PINGRESP), captured from a socket; plus fleet command payloads.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" >"$tmp/m.conf"
mosquitto -c "$tmp/m.conf" >"$tmp/m.log" 2>&1 &
mpid=$!
trap 'kill $mpid 2>/dev/null; wait $mpid 2>/dev/null; rm -rf "$tmp"' EXIT
sleep 0.5
mosquitto_pub -p "$port" -h 127.0.0.1 -q 1 -r -t otter/dev1/cmd -m '{"id":"c1","op":"upgrade","digest":"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}'
python3 - "$port" "$c/mqtt" <<'PY'
import socket, sys, time
port, out = int(sys.argv[1]), sys.argv[2]
def s16(b): return len(b).to_bytes(2, "big") + b
def pkt(t, body): 
    n = len(body); enc = b""
    while True:
        d = n % 128; n //= 128
        enc += bytes([d | (0x80 if n else 0)])
        if not n: break
    return bytes([t]) + enc + body
s = socket.create_connection(("127.0.0.1", port))
s.sendall(pkt(0x10, s16(b"MQTT") + b"\x04\x02\x00\x3c" + s16(b"seed")))
s.sendall(pkt(0x82, b"\x00\x01" + s16(b"otter/dev1/cmd") + b"\x01"))
s.sendall(pkt(0xc0, b""))
time.sleep(0.5); s.settimeout(0.5)
data = b""
try:
    while True:
        d = s.recv(65536)
        if not d: break
        data += d
except socket.timeout: pass
assert data[0] == 0x20, data[:4]   # CONNACK first
open(out + "/broker-stream", "wb").write(b"\x00\x07" + data)
open(out + "/broker-stream-bytewise", "wb").write(b"\x00\x01" + data)
PY
printf '\x01{"id":"c1","op":"upgrade","digest":"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}' >"$c/mqtt/cmd-upgrade"
printf '\x01{"id":7,"op":"switch","image":"docker://registry.example/os:2","reboot":true}' >"$c/mqtt/cmd-switch"
printf '\x01{"id":"r","op":"rollback","reboot":false}' >"$c/mqtt/cmd-rollback"
# --- OCI: a manifest, index and config written by skopeo (from an umoci-built layout).
mkdir -p "$c/oci" "$c/boot_env" "$c/verify"
umoci init --layout "$tmp/l1" && umoci new --image "$tmp/l1:v1"
umoci config --image "$tmp/l1:v1" --config.label=org.opencontainers.image.version=1.2.3 --os=linux --architecture=arm64
skopeo copy --quiet "oci:$tmp/l1:v1" "oci:$tmp/l2:v1"
put oci index '\x00' "$tmp/l2/index.json"
for b in "$tmp"/l2/blobs/sha256/*; do
  if jq -e .layers "$b" >/dev/null 2>&1; then put oci manifest '\x00' "$b"
  elif jq -e .rootfs "$b" >/dev/null 2>&1; then put oci config '\x01' "$b"; fi
done
printf '\x02sha256:%s' "$(sha256sum "$tmp/l2/index.json" | cut -c1-64)" >"$c/oci/digest"
printf '\x03docker://registry.example:5000/os/image:1.2@sha256:%s' "$(sha256sum "$tmp/l2/index.json" | cut -c1-64)" >"$c/oci/ref-registry"
printf '\x03oci-archive:/media/usb/os.tar:v2' >"$c/oci/ref-archive"
printf '\x04linux/arm64/v8' >"$c/oci/platform"

# --- Boot environments: grub-editenv and fw_setenv (single copy, 16 KiB).
grub-editenv "$tmp/grubenv" create
grub-editenv "$tmp/grubenv" set boot_counter=3 boot_success=0 otter_entry=ostree-2-os
put boot_env grubenv '\x00' "$tmp/grubenv"
printf '%s 0x0 0x4000\n' "$tmp/uboot.env" >"$tmp/fw_env.config"
python3 - "$tmp/uboot.env" <<'PY'
import sys, zlib
data = b"bootcmd=run distro_bootcmd\0bootdelay=2\0".ljust(16384 - 4, b"\0")
open(sys.argv[1], "wb").write(zlib.crc32(data).to_bytes(4, "little") + data)
PY
fw_setenv -c "$tmp/fw_env.config" bootcount 1
fw_setenv -c "$tmp/fw_env.config" upgrade_available 1
fw_setenv -c "$tmp/fw_env.config" bootlimit 3
tail -c +5 "$tmp/uboot.env" | head -c 512 >"$tmp/uboot.data"
put boot_env uboot-data '\x01' "$tmp/uboot.data"
printf '\x02# device offset size\n/dev/mmcblk0 0x3c0000 0x20000\n/dev/mmcblk0 0x3e0000 0x20000\n' >"$c/boot_env/fw_env.config"

# --- Release statement, signed with the minisign CLI.
stmt='{"manifest_digest":"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef","content_checksum":"fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210","version":"1.2.3","timestamp":1700000000,"board":"rpi4","import_rules":1}'
printf '%s' "$stmt" >"$tmp/stmt.json"
put verify statement '\x00' "$tmp/stmt.json"
minisign -G -W -p "$tmp/k.pub" -s "$tmp/k.key" >/dev/null
minisign -S -s "$tmp/k.key" -m "$tmp/stmt.json" -x "$tmp/stmt.sig" \
  -t "otter-release version=1.2.3 timestamp=1700000000 digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef content=fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210 board=rpi4" >/dev/null
put verify signature '\x01' "$tmp/stmt.sig"
put verify pubkey '\x02' "$tmp/k.pub"

# --- zstd:chunked TOC: a real layer converted by skopeo (needs umoci, skopeo, zstd, jq).
mkdir -p "$c/zstd_chunked_toc" "$tmp/z"
umoci init --layout "$tmp/z/lay" && umoci new --image "$tmp/z/lay:a"
mkdir -p "$tmp/z/root/etc" "$tmp/z/root/usr/bin"
echo hi >"$tmp/z/root/etc/x"; ln -s x "$tmp/z/root/etc/y"; ln "$tmp/z/root/etc/x" "$tmp/z/root/etc/z"
head -c 300000 /dev/urandom >"$tmp/z/root/usr/bin/big"; : >"$tmp/z/root/empty"
tar --numeric-owner -C "$tmp/z/root" -cf "$tmp/z/l.tar" .
umoci raw add-layer --image "$tmp/z/lay:a" "$tmp/z/l.tar"
skopeo --insecure-policy copy -q --dest-compress-format zstd:chunked "oci:$tmp/z/lay:a" "oci:$tmp/z/out:a"
m=$(jq -r '.manifests[0].digest' "$tmp/z/out/index.json" | cut -d: -f2)
l=$(jq -r '.layers[0].digest' "$tmp/z/out/blobs/sha256/$m" | cut -d: -f2)
pos=$(jq -r '.layers[0].annotations | to_entries[] | select(.key|endswith("manifest-position")) | .value' "$tmp/z/out/blobs/sha256/$m")
IFS=: read -r off len _ <<<"$pos"
tail -c +$((off + 1)) "$tmp/z/out/blobs/sha256/$l" | head -c "$len" | zstd -dc >"$c/zstd_chunked_toc/skopeo"

echo "seeds written to $c/"
