#!/bin/sh
# otter prepare-root: the initramfs /init for images that do not ship ostree's own
# ostree-prepare-root (busybox initramfs; see README.md next to this file).
#
# Reads from /proc/cmdline:
#   root=DEV            the physical root partition (/dev/vda2, LABEL=x, UUID=x, PARTUUID=x)
#   rootfstype=TYPE     optional (default: let mount probe)
#   ostree=/ostree/boot.N/OS/BOOTCSUM/SERIAL   the deployment to boot (written by otter/ostree)
#   init=PATH           optional, the deployment's init (default /sbin/init)
#   otter.debug         drop to a shell on failure instead of letting the kernel panic
# Then, like ostree-prepare-root: mounts the root partition at /sysroot, resolves the ostree=
# bootlink to the deployment, bind-mounts the deployment, the stateroot's var at /var, a
# read-only bind of /usr, moves the physical root to /sysroot inside the deployment, mounts
# /sysroot/boot at /boot when /boot lives on the root partition, writes /run/ostree-booted and
# switch_roots into the deployment.
#
# Kernel modules: if /etc/modules-load exists, each line is a module file (relative to
# /lib/modules/$(uname -r)/) loaded with insmod, in order, before the root is mounted.

PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH

msg() { echo "prepare-root: $*" >/dev/kmsg 2>/dev/null; echo "prepare-root: $*"; }
fail() {
    msg "ERROR: $*"
    if [ -n "$debug" ]; then
        msg "otter.debug set: starting a shell"
        exec sh
    fi
    # Exiting PID 1 makes the kernel panic; with panic=N it reboots and the bootloader's
    # boot counter sees one more failed try.
    exit 1
}

mkdir -p /proc /sys /dev /run /sysroot /sysroot.tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run

root= rootfstype= ostree= init=/sbin/init debug= rootflags=rw
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        root=*) root=${arg#root=} ;;
        rootfstype=*) rootfstype=${arg#rootfstype=} ;;
        rootflags=*) rootflags=${arg#rootflags=} ;;
        ostree=*) ostree=${arg#ostree=} ;;
        init=*) init=${arg#init=} ;;
        otter.debug) debug=1 ;;
        ro) rootflags=ro ;;
    esac
done
[ -n "$root" ] || fail "no root= on the kernel command line"
[ -n "$ostree" ] || fail "no ostree= on the kernel command line (boot an ostree deployment entry)"

kver=$(uname -r)
if [ -f /etc/modules-load ]; then
    while read -r mod; do
        case "$mod" in ''|'#'*) continue ;; esac
        insmod "/lib/modules/$kver/$mod" 2>/dev/null || true
    done </etc/modules-load
fi

resolve_root() {
    case "$root" in
        LABEL=*|UUID=*|PARTUUID=*) findfs "$root" 2>/dev/null ;;
        *) echo "$root" ;;
    esac
}
i=0
dev=$(resolve_root)
while [ -z "$dev" ] || [ ! -b "$dev" ]; do
    i=$((i + 1))
    [ $i -le 300 ] || fail "root device $root did not appear within 30 s"
    sleep 0.1
    dev=$(resolve_root)
done

if [ -n "$rootfstype" ]; then
    mount -t "$rootfstype" -o "$rootflags" "$dev" /sysroot || fail "cannot mount $dev ($rootfstype) at /sysroot"
else
    mount -o "$rootflags" "$dev" /sysroot || fail "cannot mount $dev at /sysroot"
fi

# The bootlink is relative (../../../deploy/OS/deploy/CSUM.SERIAL): resolve it inside /sysroot.
link=/sysroot$ostree
[ -L "$link" ] || fail "ostree=$ostree: $link is not a bootlink (deployment gone? wrong boot entry?)"
deploy=$(readlink -f "$link") || fail "cannot resolve bootlink $link"
case "$deploy" in
    /sysroot/ostree/deploy/*/deploy/*) ;;
    *) fail "bootlink $link points outside /sysroot/ostree/deploy: $deploy" ;;
esac
[ -d "$deploy/usr" ] || fail "deployment $deploy has no usr/"
stateroot=${deploy#/sysroot/ostree/deploy/}
stateroot=${stateroot%%/*}
msg "booting deployment ${deploy#/sysroot} (stateroot $stateroot)"

mount --bind "$deploy" "$deploy" || fail "bind-mounting $deploy"
mkdir -p "/sysroot/ostree/deploy/$stateroot/var"
mount --bind "/sysroot/ostree/deploy/$stateroot/var" "$deploy/var" || fail "bind-mounting the stateroot's var"
mount --bind "$deploy/usr" "$deploy/usr" || fail "bind-mounting usr"
mount -o remount,bind,ro "$deploy/usr" || fail "making usr read-only"
if [ -d /sysroot/boot/loader ] && [ -d "$deploy/boot" ]; then
    # /boot lives on the root partition: make it visible as /boot.
    mount --bind /sysroot/boot "$deploy/boot" || fail "bind-mounting /sysroot/boot at /boot"
fi

# Same dance as ostree-prepare-root: the deployment becomes /sysroot, the physical root
# becomes /sysroot/sysroot.
mount --move "$deploy" /sysroot.tmp || fail "moving the deployment"
mount --move /sysroot /sysroot.tmp/sysroot || fail "moving the physical root under the deployment"
mount --move /sysroot.tmp /sysroot || fail "moving the deployment to /sysroot"

mkdir -p /run/ostree
: >/run/ostree-booted
mount --move /run /sysroot/run 2>/dev/null || mount -t tmpfs tmpfs /sysroot/run
[ -e /sysroot/run/ostree-booted ] || : >/sysroot/run/ostree-booted
umount /sys 2>/dev/null
umount /proc 2>/dev/null
umount /dev 2>/dev/null

[ -x "/sysroot$init" ] || [ -L "/sysroot$init" ] || fail "init $init not found in the deployment"
exec switch_root /sysroot "$init"
fail "switch_root to $init failed"
