# Sourced by bench/import.sh and bench/pull.sh: the shared bench image, built once and cached.
# Sets $cache, $rootfs_tar (Debian bookworm arm64 + kernel, from mmdebstrap), $layer_tar (the
# same tree made ostree-ready) and $layout (an OCI layout, tag `bench`, one gzip layer).
cache=bench/.cache
mkdir -p "$cache"
rootfs_tar=$cache/A.tar   # shared with bench/pull.sh and bench/delta.sh
if [ ! -s "$rootfs_tar" ]; then
  echo "== building the arm64 bench rootfs with mmdebstrap (once, cached in $cache)"
  mmdebstrap --variant=extract --arch=arm64 --include=linux-image-arm64,openssh-server,curl,ca-certificates \
    bookworm "$cache/A.part.tar" >"$cache/A.log" 2>&1
  mv "$cache/A.part.tar" "$rootfs_tar"
fi
# Both tools read the very same layer blob, prepared once so that `ostree admin deploy`
# accepts it (bench/lib/ostree-ready-tar.py).
layer_tar=$cache/A-ostree.tar
if [ ! -s "$layer_tar" ]; then
  python3 bench/lib/ostree-ready-tar.py "$rootfs_tar" "$cache/A-ostree.part.tar"
  mv "$cache/A-ostree.part.tar" "$layer_tar"
fi
layout=$cache/pull-layout   # one image for both benches
if [ ! -d "$layout" ]; then
  rm -rf "$layout.part"
  umoci init --layout "$layout.part"
  umoci new --image "$layout.part:bench"
  umoci raw add-layer --image "$layout.part:bench" "$layer_tar"
  umoci config --image "$layout.part:bench" --architecture arm64 --os linux \
    --config.label org.opencontainers.image.version=1
  mv "$layout.part" "$layout"
fi
