SUMMARY = "otter board integration: fw_env.config and the board profile name"
DESCRIPTION = "Installs /etc/fw_env.config for the U-Boot environment that holds the boot \
               counter, generated from the otter board profile OTTER_BOARD, and \
               /etc/otter/board naming that profile."
HOMEPAGE = "https://github.com/otter-ota/otter"
BUGTRACKER = "https://github.com/otter-ota/otter/issues"
SECTION = "admin"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

DEPENDS += "otter-board-native"

# used only when OTTER_FW_ENV_CONFIG overrides the board profile
SRC_URI = "file://fw_env.config.in"
# file:// sources: WORKDIR on scarthgap, UNPACKDIR on whinlatter/wrynose
S = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"

PACKAGE_ARCH = "${MACHINE_ARCH}"

CVE_PRODUCT = "otter-ota:otter"

# OTTER_BOARD (and the optional OTTER_FW_ENV_CONFIG override) come from
# conf/otter-machines.inc (per MACHINE) or local.conf.
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
}
do_compile[vardeps] += "OTTER_BOARD OTTER_FW_ENV_CONFIG"

do_install() {
    install -d ${D}${sysconfdir}/otter
    echo "${OTTER_BOARD}" > ${B}/board
    install -m 0644 ${B}/board ${D}${sysconfdir}/otter/board
    if [ -e ${B}/fw_env.config ]; then
        install -m 0644 ${B}/fw_env.config ${D}${sysconfdir}/fw_env.config
    fi
}

CONFFILES:${PN} = "${sysconfdir}/fw_env.config"
RCONFLICTS:${PN} = "u-boot-fw-utils"
