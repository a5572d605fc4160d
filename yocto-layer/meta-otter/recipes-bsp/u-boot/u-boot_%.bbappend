# U-Boot's native boot counting (CONFIG_BOOTCOUNT_LIMIT + CONFIG_BOOTCOUNT_ENV, bootlimit,
# altbootcmd, upgrade_available) for boards that set OTTER_UBOOT_BOOTCOUNT = "native", and only
# when the distro opts in with DISTRO_FEATURES += "otter": adding the layer alone changes
# nothing (the files below are only used by otter-u-boot.bbclass).
# nooelint: oelint.vars.noncoreoverride
FILESEXTRAPATHS:prepend := "${THISDIR}/files:"
# the expression is empty unless enabled (leaves a trailing space when expanded)
# nooelint: oelint.spaces.lineend
inherit_defer ${@'otter-u-boot' if bb.utils.contains('DISTRO_FEATURES', 'otter', True, False, d) and d.getVar('OTTER_UBOOT_BOOTCOUNT') == 'native' else ''}
