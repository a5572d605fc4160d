SUMMARY = "otter U-Boot boot script and initial boot-counter environment"
DESCRIPTION = "Compiles boot-counter/u-boot/boot.cmd from the otter repository into boot.scr \
               with mkimage and writes the initial U-Boot environment image (uboot.env) for the \
               boot partition, both deployed for wic (IMAGE_BOOT_FILES)."

require recipes-otter/otter/otter-source.inc

inherit deploy

DEPENDS += "otter-board-native u-boot-tools-native"

PACKAGE_ARCH = "${MACHINE_ARCH}"

# The script inside the otter source tree (written by the boot-counter component).
OTTER_BOOT_CMD ??= "boot-counter/u-boot/boot.cmd"
OTTER_BOOT_SCR_NAME ??= "boot.scr"
OTTER_UBOOT_ENV_NAME ??= "uboot.env"
# Boot-counter variables of the initial environment (OTTER_BOOTLIMIT, OTTER_UBOOT_ALTBOOTCMD:
# conf/otter-machines.inc). bootcount only counts while upgrade_available is non-zero; U-Boot
# runs altbootcmd once bootcount > bootlimit.
OTTER_UBOOT_ENV_VARS ??= "bootlimit=${OTTER_BOOTLIMIT} bootcount=0 upgrade_available=0"
# Start from U-Boot's own default environment when the machine uses U-Boot, so the env file
# can also be U-Boot's env store (CONFIG_ENV_IS_IN_FAT); empty = only the otter variables.
# Only for OTTER_UBOOT_BOOTCOUNT = "native" where uboot.env is U-Boot's env store.
OTTER_UBOOT_ENV_BASE ??= "${@'${DEPLOY_DIR_IMAGE}/u-boot-initial-env-${MACHINE}' if d.getVar('OTTER_UBOOT_BOOTCOUNT') == 'native' else ''}"
do_compile[vardeps] += "OTTER_BOARD OTTER_UBOOT_ENV_SIZE OTTER_BOOTLIMIT OTTER_UBOOT_ALTBOOTCMD"
do_compile[depends] += "${@'virtual/bootloader:do_deploy' if d.getVar('OTTER_UBOOT_ENV_BASE') else ''}"

def otter_mkimage_arch(d):
    arch = d.getVar('TARGET_ARCH')
    return {'aarch64': 'arm64', 'arm': 'arm', 'x86_64': 'x86_64', 'i686': 'x86',
            'riscv64': 'riscv', 'riscv32': 'riscv'}.get(arch, arch)

do_configure[noexec] = "1"

do_compile() {
    if [ ! -f "${S}/${OTTER_BOOT_CMD}" ]; then
        bbfatal "${OTTER_BOOT_CMD} not found in the otter source tree ${S} (set OTTER_BOOT_CMD)"
    fi
    uboot-mkimage -A ${@otter_mkimage_arch(d)} -O linux -T script -C none \
        -n "otter boot script" -d "${S}/${OTTER_BOOT_CMD}" ${B}/${OTTER_BOOT_SCR_NAME}

    rm -f ${B}/otter-env.txt
    if [ -n "${OTTER_UBOOT_ENV_BASE}" ]; then
        [ -f "${OTTER_UBOOT_ENV_BASE}" ] || bbfatal "${OTTER_UBOOT_ENV_BASE} missing (U-Boot's initial env)"
        grep -v -E '^(bootlimit|bootcount|upgrade_available|altbootcmd)=' "${OTTER_UBOOT_ENV_BASE}" > ${B}/otter-env.txt || true
    fi
    for kv in ${OTTER_UBOOT_ENV_VARS}; do
        echo "$kv" >> ${B}/otter-env.txt
    done
    echo "altbootcmd=${OTTER_UBOOT_ALTBOOTCMD}" >> ${B}/otter-env.txt

    # env size: OTTER_UBOOT_ENV_SIZE, else the SIZE column of the board's fw_env.config
    size="${OTTER_UBOOT_ENV_SIZE}"
    if [ -z "$size" ]; then
        size=$(otter-board file ${OTTER_BOARD} fw_env.config | awk '!/^#/ && NF >= 3 { print $3; exit }')
        [ -n "$size" ] || bbfatal "board ${OTTER_BOARD} has no U-Boot env size (fw_env.config); set OTTER_UBOOT_ENV_SIZE"
    fi
    case "$size" in 0x*|0X*) ;; *) size="0x$size" ;; esac  # fw_env.config sizes are hex
    uboot-mkenvimage -s $size -o ${B}/${OTTER_UBOOT_ENV_NAME} ${B}/otter-env.txt
}

do_install[noexec] = "1"

do_deploy() {
    install -m 0644 ${B}/${OTTER_BOOT_SCR_NAME} ${DEPLOYDIR}/${OTTER_BOOT_SCR_NAME}
    install -m 0644 ${B}/${OTTER_UBOOT_ENV_NAME} ${DEPLOYDIR}/${OTTER_UBOOT_ENV_NAME}
    install -m 0644 ${B}/otter-env.txt ${DEPLOYDIR}/otter-uboot-env-${MACHINE}.txt
}
addtask deploy after do_compile before do_build

