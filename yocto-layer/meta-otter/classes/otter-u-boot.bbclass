# otter boot counting in U-Boot: inherited by the u-boot bbappend when DISTRO_FEATURES has
# "otter" and the machine sets OTTER_UBOOT_BOOTCOUNT = "native". Enables U-Boot's bootcount
# (stored in the environment while upgrade_available=1) and adds bootlimit / upgrade_available / altbootcmd to the board's default environment
# (OTTER_UBOOT_BOARD_ENV, U-Boot's board/<vendor>/<board>/<board>.env text file).
#
# Why this class is not MACHINE/DISTRO-override-scoped (oelint.vars.noncoreoverride): it is
# only ever inherited when DISTRO_FEATURES contains "otter" (see u-boot_%.bbappend), which is
# the yocto-check-layer compliant way to scope a bbappend to a distro.

# nooelint: oelint.vars.noncoreoverride
SRC_URI += "file://otter-bootcount.cfg"
# Where the environment lives is the board's business: add a config fragment (.cfg) for it in
# your BSP (e.g. CONFIG_ENV_IS_IN_MMC, CONFIG_SYS_REDUNDAND_ENVIRONMENT) matching fw_env.config.

# nooelint: oelint.vars.noncoreoverride
do_otter_uboot_env() {
    if [ -z "${OTTER_UBOOT_BOARD_ENV}" ]; then
        bbwarn "OTTER_UBOOT_BOARD_ENV is empty for ${MACHINE}: bootlimit/altbootcmd are not in U-Boot's default env; set them in uboot.env (otter-boot-script) or name the board .env file"
        return
    fi
    envfile="${S}/${OTTER_UBOOT_BOARD_ENV}"
    [ -f "$envfile" ] || bbfatal "OTTER_UBOOT_BOARD_ENV: $envfile does not exist in this U-Boot"
    # idempotent: drop what an earlier run added, then append
    sed -i '/^\/\* otter begin \*\/$/,/^\/\* otter end \*\/$/d' "$envfile"
    {
        echo "/* otter begin */"
        echo "bootlimit=${OTTER_BOOTLIMIT}"
        echo "upgrade_available=0"
        echo "altbootcmd=${OTTER_UBOOT_ALTBOOTCMD}"
        echo "/* otter end */"
    } >> "$envfile"
}
do_otter_uboot_env[doc] = "Add otter's boot-counter variables to U-Boot's default environment"
do_otter_uboot_env[vardeps] += "OTTER_BOOTLIMIT OTTER_UBOOT_ALTBOOTCMD OTTER_UBOOT_BOARD_ENV"
addtask otter_uboot_env after do_patch before do_configure
