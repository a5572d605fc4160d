SUMMARY = "otter-boot: boot counting, greenboot-style health checks and rollback"
DESCRIPTION = "Arms and reads the bootloader boot counter (GRUB env, U-Boot env, BLS), runs \
               greenboot-compatible health checks and marks the boot good or rolls back."

require otter-common.inc

inherit cargo

CARGO_SRC_DIR = "boot-counter"
CARGO_LOCK_PATH = "${S}/Cargo.lock"

PACKAGECONFIG ??= "${@bb.utils.filter('DISTRO_FEATURES', 'systemd', d)}"
# systemd: install boot-counter/systemd/*.service|*.timer and a preset enabling them
PACKAGECONFIG[systemd] = ",,,"

# otter-boot-check.service (health checks, Before=boot-complete.target) and
# otter-boot-detect-fallback.service (rollback after a bootloader fallback)
OTTER_BOOT_SYSTEMD_PRESET ??= "otter-boot*.service otter-boot*.timer"

do_install() {
    install -d ${D}${bindir}
    install -m 0755 ${B}/target/${CARGO_TARGET_SUBDIR}/otter-boot ${D}${bindir}/otter-boot

    # greenboot-compatible check directories: admin (/etc) and vendor (/usr/lib)
    for root in ${D}${sysconfdir}/greenboot ${D}${nonarch_libdir}/greenboot; do
        install -d $root/check/required.d $root/check/wanted.d $root/green.d $root/red.d
    done

    if ${@bb.utils.contains('PACKAGECONFIG', 'systemd', 'true', 'false', d)}; then
        install -d ${D}${systemd_system_unitdir} ${D}${systemd_unitdir}/system-preset
        for unit in ${S}/boot-counter/systemd/*.service ${S}/boot-counter/systemd/*.timer \
                    ${S}/boot-counter/systemd/*.target; do
            [ -e "$unit" ] || continue
            install -m 0644 "$unit" ${D}${systemd_system_unitdir}/
        done
        : > ${D}${systemd_unitdir}/system-preset/80-otter-boot.preset
        for pattern in ${OTTER_BOOT_SYSTEMD_PRESET}; do
            echo "enable $pattern" >> ${D}${systemd_unitdir}/system-preset/80-otter-boot.preset
        done
        if [ -e ${S}/boot-counter/systemd/otter-boot.tmpfiles.conf ]; then
            install -d ${D}${nonarch_libdir}/tmpfiles.d
            install -m 0644 ${S}/boot-counter/systemd/otter-boot.tmpfiles.conf ${D}${nonarch_libdir}/tmpfiles.d/otter-boot.conf
        fi
    fi
}

FILES:${PN} += "${nonarch_libdir}/greenboot ${systemd_system_unitdir} ${systemd_unitdir}/system-preset \
                ${nonarch_libdir}/tmpfiles.d"
# The U-Boot backend talks to the env through fw_env.config (otter-board-config).
RRECOMMENDS:${PN} = "otter-board-config"

