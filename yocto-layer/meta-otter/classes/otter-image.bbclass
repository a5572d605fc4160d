# otter-image.bbclass: publish a Yocto image as an otter OS image.
#
#   inherit otter-image
#   OTTER_IMAGE_VERSION = "1.4.2"
#
# adds two image types:
#   otter-oci      ${IMAGE_NAME}.otter-oci (link ${IMAGE_LINK_NAME}.otter-oci): an OCI image layout (one tar+gzip layer,
#                  label org.opencontainers.image.version = OTTER_IMAGE_VERSION, platform from
#                  TARGET_ARCH) holding the rootfs as an ostree-friendly tree (/etc -> /usr/etc,
#                  kernel/initramfs/dtbs in /usr/lib/modules/$kver/, empty /var), made by
#                  scripts/rootfs-to-oci.py; signed by `otter-publish sign` when
#                  OTTER_SIGNING_KEY is set (task do_otter_sign)
#   otter-sysroot  an ostree sysroot made by `otter install --sysroot` from that layout: the
#                  root partition of the first disk image (wic, wic/otter-uboot.wks.in)
# Push the layout with: skopeo copy oci:<deploy>/<image>.otter-oci:<tag> docker://host/repo:<tag>

OTTER_IMAGE_VERSION ??= ""
# OCI tag in index.json (default: the version, '+' and '~' replaced by '_')
OTTER_OCI_TAG ??= "${@(d.getVar('OTTER_IMAGE_VERSION') or '').replace('+', '_').replace('~', '_')}"
# one timestamp for every file, the config and the gzip header (reproducible)
OTTER_OCI_MTIME ??= "${REPRODUCIBLE_TIMESTAMP_ROOTFS}"
OTTER_OCI_EXTRA_ARGS ??= ""
# an initramfs to place at /usr/lib/modules/$kver/initramfs.img (path in DEPLOY_DIR_IMAGE)
OTTER_INITRAMFS ??= ""

# minisign secret key for `otter-publish sign`; empty = unsigned layout (devices refuse it
# unless they run with signature verification off)
OTTER_SIGNING_KEY ??= ""
OTTER_PUBLISH ??= "otter-publish"
# the release statement binds version and board (anti-rollback, board check on the device).
# Secrets stay out of the datastore (it is written to task scripts and logs): use a key file
# readable only by the build user, or leave OTTER_SIGNING_KEY empty and sign the deployed
# layout outside bitbake with `otter-publish sign` (password from OTTER_PUBLISH_PASSWORD).
OTTER_PUBLISH_SIGN_ARGS ??= "--key ${OTTER_SIGNING_KEY} --version ${OTTER_IMAGE_VERSION} ${@'--board ' + d.getVar('OTTER_BOARD') if d.getVar('OTTER_BOARD') else ''}"
OTTER_PUBLISH_DEPENDS ??= "otter-native:do_populate_sysroot"

OTTER_SYSROOT_DIR ??= "${WORKDIR}/otter-sysroot"
# the factory image installs the layout that this very build produced
OTTER_INSTALL_ARGS ??= "--no-signature-verification"

OTTER_IMAGE_PACKAGES ??= "otter otter-boot otter-board-config kernel-image kernel-devicetree kernel-modules"
IMAGE_INSTALL:append = " ${OTTER_IMAGE_PACKAGES}"

IMAGE_TYPES += "otter-oci otter-sysroot"
IMAGE_FSTYPES:append = " otter-oci"
# IMAGE_TYPEDEP:<type> is keyed by image type (as in oe-core's image_types.bbclass), not an override
# nooelint: oelint.vars.specific
IMAGE_TYPEDEP:otter-sysroot = "otter-oci"
# nooelint: oelint.vars.specific, oelint.vars.overrideappend
IMAGE_TYPEDEP:wic:append = " otter-sysroot"

OTTER_ROOTFS_TO_OCI = "${OTTER_LAYERDIR}/scripts/rootfs-to-oci.py"
OTTER_OCI_LAYOUT = "${IMGDEPLOYDIR}/${IMAGE_NAME}.otter-oci"

# Image type names follow oe-core's own dashed types (squashfs-xz -> do_image_squashfs_xz).
# nooelint: oelint.task.dash - IMAGE_CMD:<type> is not a task name; the task is do_image_otter_oci
IMAGE_CMD:otter-oci() {
    if [ -z "${OTTER_IMAGE_VERSION}" ]; then
        bbfatal "${PN} inherits otter-image but OTTER_IMAGE_VERSION is empty: set it (e.g. \"1.0.0\"); it becomes the org.opencontainers.image.version label that devices compare for anti-rollback"
    fi
    if [ ! -f "${OTTER_ROOTFS_TO_OCI}" ]; then
        bbfatal "${OTTER_ROOTFS_TO_OCI} not found: is meta-otter in BBLAYERS?"
    fi
    rm -rf ${OTTER_OCI_LAYOUT}
    initramfs=""
    if [ -n "${OTTER_INITRAMFS}" ]; then
        initramfs="--initramfs ${DEPLOY_DIR_IMAGE}/${OTTER_INITRAMFS}"
    fi
    python3 ${OTTER_ROOTFS_TO_OCI} --rootfs ${IMAGE_ROOTFS} --out ${OTTER_OCI_LAYOUT} \
        --version "${OTTER_IMAGE_VERSION}" --tag "${OTTER_OCI_TAG}" --arch ${TARGET_ARCH} \
        --mtime ${OTTER_OCI_MTIME} $initramfs ${OTTER_OCI_EXTRA_ARGS} > ${T}/otter-oci.json
    cat ${T}/otter-oci.json
}
IMAGE_CMD:otter-oci[doc] = "Write the rootfs as an ostree-friendly OCI image layout (rootfs-to-oci.py)"
do_image_otter_oci[vardeps] += "OTTER_IMAGE_VERSION OTTER_OCI_TAG OTTER_OCI_MTIME OTTER_INITRAMFS OTTER_OCI_EXTRA_ARGS"

do_otter_sign() {
    if [ -z "${OTTER_SIGNING_KEY}" ]; then
        bbwarn "OTTER_SIGNING_KEY is not set: ${OTTER_OCI_LAYOUT} is unsigned"
        return
    fi
    [ -r "${OTTER_SIGNING_KEY}" ] || bbfatal "OTTER_SIGNING_KEY ${OTTER_SIGNING_KEY} is not readable"
    ${OTTER_PUBLISH} sign ${OTTER_PUBLISH_SIGN_ARGS} "oci:${OTTER_OCI_LAYOUT}:${OTTER_OCI_TAG}"
}
do_otter_sign[doc] = "Sign the otter OCI layout with otter-publish when OTTER_SIGNING_KEY is set"
do_otter_sign[depends] += "${@d.getVar('OTTER_PUBLISH_DEPENDS') if d.getVar('OTTER_SIGNING_KEY') else ''}"
do_otter_sign[vardeps] += "OTTER_SIGNING_KEY OTTER_PUBLISH_SIGN_ARGS"
do_otter_sign[fakeroot] = "1"
addtask otter_sign after do_image_otter_oci before do_image_otter_sysroot do_image_complete

# OCI platform of TARGET_ARCH (as scripts/rootfs-to-oci.py writes it)
def otter_oci_platform(d):
    arch = d.getVar("TARGET_ARCH")
    return {"aarch64": "linux/arm64", "x86_64": "linux/amd64", "arm": "linux/arm/v7",
            "i686": "linux/386", "i586": "linux/386", "riscv64": "linux/riscv64",
            "powerpc64le": "linux/ppc64le"}.get(arch, "linux/" + arch)

# First deployment onto an empty sysroot, the way a factory does it:
#   otter --config C install --sysroot DIR [--karg A]... --no-signature-verification oci:LAYOUT:TAG
# with a private config C (never the build host's /etc/otter/otter.conf) that names the target
# platform, and the kernel arguments of the board profile (`otter-board file B cmdline`).
# Deployments stay mutable (no immutable flag under pseudo; mkfs.ext4 -d would drop it anyway).
# nooelint: oelint.task.dash - IMAGE_CMD:<type> is not a task name; the task is do_image_otter_sysroot
IMAGE_CMD:otter-sysroot() {
    rm -rf ${OTTER_SYSROOT_DIR}
    mkdir -p ${OTTER_SYSROOT_DIR}
    printf '[update]\nplatform = %s\n' "${@otter_oci_platform(d)}" > ${WORKDIR}/otter-install.conf
    kargs=""
    if [ -n "${OTTER_BOARD}" ]; then
        for arg in $(otter-board file ${OTTER_BOARD} cmdline); do
            kargs="$kargs --karg $arg"
        done
    fi
    OSTREE_SYSROOT_DEBUG=mutable-deployments \
        otter --config ${WORKDIR}/otter-install.conf install --sysroot ${OTTER_SYSROOT_DIR} \
        $kargs ${OTTER_INSTALL_ARGS} "oci:${OTTER_OCI_LAYOUT}:${OTTER_OCI_TAG}"
}
IMAGE_CMD:otter-sysroot[doc] = "Install the OCI layout into an empty ostree sysroot with otter install"
do_image_otter_sysroot[depends] += "otter-native:do_populate_sysroot otter-board-native:do_populate_sysroot"
do_image_otter_sysroot[vardeps] += "OTTER_INSTALL_ARGS OTTER_SYSROOT_DIR"

# wic: FAT firmware partition (boot.scr, uboot.env) + ext4 root holding the otter sysroot,
# the layout of the U-Boot board profiles (board-support/boards/*.conf: [partition.firmware]
# label FIRMWARE mounted at /boot/firmware, [partition.root] label otter-root, GPT)
# (a plain assignment: machine configs set WKS_FILE with ?=; choose yours with OTTER_WKS_FILE)
OTTER_WKS_FILE ??= "otter-uboot.wks.in"
WKS_FILE = "${OTTER_WKS_FILE}"
# wrynose searches <layer>/files/wic, scarthgap/whinlatter <layer>/wic: name ours explicitly
WKS_SEARCH_PATH:prepend = "${OTTER_LAYERDIR}/wic:"
OTTER_FIRMWARE_LABEL ??= "FIRMWARE"
OTTER_FIRMWARE_SIZE ??= "32M"
OTTER_WIC_BOOTIMG_PLUGIN ??= "${@'bootimg-partition' if 'scarthgap' in (d.getVar('LAYERSERIES_CORENAMES') or '') else 'bootimg_partition'}"
IMAGE_BOOT_FILES:append = " boot.scr uboot.env"
do_image_wic[depends] += "otter-boot-script:do_deploy"
# the sysroot has no top-level /etc/fstab for wic to edit; the deployment's fstab is below
WIC_CREATE_EXTRA_ARGS:append = " --no-fstab-update"

# mount the FAT boot partition (boot.scr, uboot.env) at /boot/firmware
otter_boot_firmware_fstab() {
    if ! grep -q '/boot/firmware' ${IMAGE_ROOTFS}${sysconfdir}/fstab 2>/dev/null; then
        echo "LABEL=${OTTER_FIRMWARE_LABEL} /boot/firmware vfat defaults,noatime 0 2" >> ${IMAGE_ROOTFS}${sysconfdir}/fstab
    fi
}
otter_boot_firmware_fstab[doc] = "Add the /boot/firmware mount of the FAT boot partition to fstab"
ROOTFS_POSTPROCESS_COMMAND:append = " otter_boot_firmware_fstab"
