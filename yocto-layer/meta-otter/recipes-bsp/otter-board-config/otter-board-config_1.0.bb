SUMMARY = "otter board integration: otter.conf and fw_env.config of the board"
DESCRIPTION = "Installs /etc/otter/otter.conf (board name, boot-count backend, tries) and, for \
               U-Boot boards, /etc/fw_env.config for the environment that holds the boot \
               counter, both generated from the otter board profile OTTER_BOARD."
HOMEPAGE = "https://github.com/otter-ota/otter"
BUGTRACKER = "https://github.com/otter-ota/otter/issues"
SECTION = "admin"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

DEPENDS += "otter-board-native"

# fw_env.config.in: used only when OTTER_FW_ENV_CONFIG overrides the board profile
SRC_URI = "file://otter.conf.in file://fw_env.config.in"
# file:// sources: WORKDIR on scarthgap, UNPACKDIR on whinlatter/wrynose
S = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"

PACKAGE_ARCH = "${MACHINE_ARCH}"

CVE_PRODUCT = "otter-ota:otter"

# OTTER_BOARD (and the optional OTTER_FW_ENV_CONFIG / OTTER_BOOT_BACKEND overrides) come from
# conf/otter-machines.inc (per MACHINE) or local.conf. Empty OTTER_BOOT_BACKEND = the
# profile's [boot] bootcount (e.g. uboot:/etc/fw_env.config).
OTTER_BOOT_BACKEND ??= ""

do_configure[noexec] = "1"

do_compile() {
    if [ -z "${OTTER_BOARD}" ]; then
        bbfatal "OTTER_BOARD is not set for MACHINE ${MACHINE}: set it in local.conf or the machine .conf (see meta-otter conf/otter-machines.inc; 'otter-board list' shows the profiles)"
    fi
    rm -f ${B}/fw_env.config
    if [ -n "${OTTER_FW_ENV_CONFIG}" ]; then
        sed -e 's|@OTTER_FW_ENV_CONFIG@|${OTTER_FW_ENV_CONFIG}|' ${S}/fw_env.config.in > ${B}/fw_env.config
    elif ! otter-board file ${OTTER_BOARD} fw_env.config > ${B}/fw_env.config 2> ${B}/otter-board.err; then
        if grep -q 'has no fw_env.config' ${B}/otter-board.err; then
            rm -f ${B}/fw_env.config  # GRUB / systemd-boot board: no U-Boot environment
        else
            bbfatal "otter-board file ${OTTER_BOARD} fw_env.config failed: $(cat ${B}/otter-board.err)"
        fi
    fi

    backend="${OTTER_BOOT_BACKEND}"
    if [ -z "$backend" ]; then
        otter-board raw ${OTTER_BOARD} > ${B}/profile.conf 2> ${B}/otter-board.err \
            || bbfatal "otter-board raw ${OTTER_BOARD} failed: $(cat ${B}/otter-board.err)"
        backend=$(awk -F'=' '/^\[/ { sec = $0 } sec == "[boot]" && $1 ~ /^[ \t]*bootcount[ \t]*$/ { gsub(/^[ \t]+|[ \t]+$/, "", $2); print $2; exit }' ${B}/profile.conf)
        [ -n "$backend" ] || bbfatal "board profile ${OTTER_BOARD} has no [boot] bootcount; set OTTER_BOOT_BACKEND"
    fi
    sed -e 's|@OTTER_BOARD@|${OTTER_BOARD}|g' -e "s|@OTTER_BOOT_BACKEND@|$backend|" \
        -e 's|@OTTER_BOOTLIMIT@|${OTTER_BOOTLIMIT}|' ${S}/otter.conf.in > ${B}/otter.conf
}
do_compile[vardeps] += "OTTER_BOARD OTTER_FW_ENV_CONFIG OTTER_BOOT_BACKEND OTTER_BOOTLIMIT"

do_install() {
    install -d ${D}${sysconfdir}/otter
    install -m 0644 ${B}/otter.conf ${D}${sysconfdir}/otter/otter.conf
    if [ -e ${B}/fw_env.config ]; then
        install -m 0644 ${B}/fw_env.config ${D}${sysconfdir}/fw_env.config
    fi
}

CONFFILES:${PN} = "${sysconfdir}/otter/otter.conf ${sysconfdir}/fw_env.config"
RCONFLICTS:${PN} = "u-boot-fw-utils"
