SUMMARY = "otter board integration: fw_env.config and the board profile name"
DESCRIPTION = "Installs /etc/fw_env.config pointing at the U-Boot environment that holds the \
               boot counter, and /etc/otter/board naming the otter board profile of this MACHINE."
HOMEPAGE = "https://github.com/otter-ota/otter"
BUGTRACKER = "https://github.com/otter-ota/otter/issues"
SECTION = "admin"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

CVE_PRODUCT = "otter-ota:otter"

SRC_URI = "file://fw_env.config.in"
# file:// sources: WORKDIR on scarthgap, UNPACKDIR on whinlatter/wrynose
S = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"

# OTTER_BOARD and OTTER_FW_ENV_CONFIG come from conf/otter-machines.inc (per MACHINE) or local.conf.
do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    if [ -z "${OTTER_BOARD}" ]; then
        bbfatal "OTTER_BOARD is not set for MACHINE ${MACHINE}: set it in local.conf or the machine .conf (see meta-otter conf/otter-machines.inc)"
    fi
    install -d ${D}${sysconfdir}/otter
    echo "${OTTER_BOARD}" > ${D}${sysconfdir}/otter/board
    if [ -n "${OTTER_FW_ENV_CONFIG}" ]; then
        sed -e 's|@OTTER_FW_ENV_CONFIG@|${OTTER_FW_ENV_CONFIG}|' ${S}/fw_env.config.in > ${B}/fw_env.config
        install -m 0644 ${B}/fw_env.config ${D}${sysconfdir}/fw_env.config
    fi
}
do_install[vardeps] += "OTTER_BOARD OTTER_FW_ENV_CONFIG"

PACKAGE_ARCH = "${MACHINE_ARCH}"

CONFFILES:${PN} = "${sysconfdir}/fw_env.config"
RCONFLICTS:${PN} = "u-boot-fw-utils"
