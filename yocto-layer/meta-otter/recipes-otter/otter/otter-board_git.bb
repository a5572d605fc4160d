SUMMARY = "otter-board: otter board profiles and the tool that exports their files"
DESCRIPTION = "Board profiles (bootloader, boot-count backend, env location, kernel arguments, \
               partition layout) and otter-board, which prints a board's fw_env.config, \
               sfdisk script or kernel command line."

require otter-common.inc

inherit cargo

CARGO_SRC_DIR = "board-support"
CARGO_LOCK_PATH = "${S}/Cargo.lock"

do_install() {
    install -d ${D}${bindir} ${D}${datadir}/otter/boards
    install -m 0755 ${B}/target/${CARGO_TARGET_SUBDIR}/otter-board ${D}${bindir}/otter-board
    for profile in ${S}/board-support/boards/*.conf; do
        [ -e "$profile" ] || continue
        install -m 0644 "$profile" ${D}${datadir}/otter/boards/
    done
}

FILES:${PN} += "${datadir}/otter"

BBCLASSEXTEND = "native"
