# otter boot counting in U-Boot's own environment: only when the distro opts in with
# DISTRO_FEATURES += "otter" (adding the layer alone changes nothing: the files below are only
# used by otter-u-boot.bbclass, which is only inherited with that distro feature).
# nooelint: oelint.vars.noncoreoverride
FILESEXTRAPATHS:prepend := "${THISDIR}/files:"
# the expression is empty without the distro feature (leaves a trailing space when expanded)
# nooelint: oelint.spaces.lineend
inherit_defer ${@bb.utils.contains('DISTRO_FEATURES', 'otter', 'otter-u-boot', '', d)}
