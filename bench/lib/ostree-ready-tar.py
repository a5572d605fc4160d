#!/usr/bin/env python3
"""Rewrite a Debian rootfs tar into the layout `ostree admin deploy` accepts, so that otter and
ostree read the very same layer: /etc -> /usr/etc, no device nodes under /dev (ostree commit
cannot store them), and the kernel also at usr/lib/modules/$kver/vmlinuz (Debian keeps it in
/boot), plus a usr/lib/os-release when the tree has none. Streams entry by entry.  usage: ostree-ready-tar.py IN.tar OUT.tar"""
import io
import sys
import tarfile

OS_RELEASE = b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n'

src, dst = sys.argv[1], sys.argv[2]
kernels = []
seen = set()
with tarfile.open(src, "r|") as tin, tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tout:
    for m in tin:
        name = m.name
        if name.startswith("./dev/") and name != "./dev/":
            continue
        for old, new in (("./etc/", "./usr/etc/"), ("./etc", "./usr/etc")):
            if name == old.rstrip("/") or name.startswith(old):
                name = new + name[len(old):] if name.startswith(old) else new
                break
        if m.islnk() and (m.linkname.startswith("./etc/") or m.linkname.startswith("etc/")):
            m.linkname = "./usr/etc/" + m.linkname.split("etc/", 1)[1]
        m.name = name
        seen.add(name)
        if m.isfile():
            data = tin.extractfile(m)
            tout.addfile(m, data)
            if name.startswith("./boot/vmlinuz-"):
                kernels.append((m, name[len("./boot/vmlinuz-"):]))
        else:
            tout.addfile(m)
    # `mmdebstrap --variant=extract` leaves base-files' os-release out; ostree's deploy reads it.
    if "./usr/lib/os-release" not in seen:
        info = tarfile.TarInfo("./usr/lib/os-release")
        info.size = len(OS_RELEASE)
        info.mode = 0o644
        tout.addfile(info, io.BytesIO(OS_RELEASE))
    for m, kver in kernels:
        link = tarfile.TarInfo(f"./usr/lib/modules/{kver}/vmlinuz")
        link.type = tarfile.LNKTYPE
        link.linkname = m.name
        tout.addfile(link)
