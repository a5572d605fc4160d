SUMMARY = "otter OTA update agent"
DESCRIPTION = "Pulls the OS as a signed OCI image, imports it into ostree, deploys it beside \
               the running system, boots it with boot counting and rolls back when health \
               checks fail."

require otter-common.inc

inherit cargo

# The workspace root has the Cargo.lock; the agent is the `otter` package in agent/.
CARGO_SRC_DIR = "agent"
CARGO_LOCK_PATH = "${S}/Cargo.lock"

# Extra cargo features of the `otter` crate (space separated).
OTTER_CARGO_FEATURES ??= ""

PACKAGECONFIG ??= "${@bb.utils.filter('DISTRO_FEATURES', 'systemd', d)}"
# the build host signs images (otter-image.bbclass do_otter_sign) with otter-native
PACKAGECONFIG:class-native ??= "publish"
# systemd: install the agent's units (agent/data/systemd/*.service|*.timer) and a preset
PACKAGECONFIG[systemd] = ",,,"
# publish: also build and install otter-publish (cargo feature "publish": keygen/sign/export);
# publisher-only code, so not for devices
PACKAGECONFIG[publish] = ",,,"
OTTER_FEATURES = "${OTTER_CARGO_FEATURES} ${@bb.utils.contains('PACKAGECONFIG', 'publish', 'publish', '', d)}"

# Minisign public keys trusted for updates, installed to ${sysconfdir}/otter/keys.d/.
# Absolute paths or file names found in FILESPATH (e.g. a bbappend's files/ dir).
# There is no default key: an image without keys cannot verify any update.
OTTER_TRUSTED_KEYS ??= ""

# Units (or patterns) the systemd preset enables. otter-daemon runs the [policy] timer and MQTT
# (both off until configured); add "otter-upgrade.timer" for a plain periodic `otter upgrade`.
OTTER_SYSTEMD_PRESET ??= "otter-daemon.service"

do_compile() {
    features="$(echo ${OTTER_FEATURES} | tr ' ' ',')"
    if [ -n "$features" ]; then
        oe_cargo_build --features "$features"
    else
        oe_cargo_build
    fi
}

def otter_key_path(d, name):
    return name if os.path.isabs(name) else bb.utils.which(d.getVar("FILESPATH"), name)

# rerun do_otter_keys when a key file changes
def otter_key_checksums(d):
    paths = [otter_key_path(d, k) for k in (d.getVar("OTTER_TRUSTED_KEYS") or "").split()]
    return " ".join("%s:%s" % (p, os.path.exists(p)) for p in paths if p)

python do_otter_keys() {
    import shutil
    outdir = os.path.join(d.getVar("WORKDIR"), "otter-keys")
    bb.utils.remove(outdir, recurse=True)
    bb.utils.mkdirhier(outdir)
    keys = (d.getVar("OTTER_TRUSTED_KEYS") or "").split()
    if not keys:
        bb.warn("OTTER_TRUSTED_KEYS is empty: %s/otter/keys.d stays empty and the device will "
                "refuse signed updates until a minisign public key is put there" % d.getVar("sysconfdir"))
    seen = set()
    for k in keys:
        path = otter_key_path(d, k)
        if not path or not os.path.isfile(path):
            bb.fatal("OTTER_TRUSTED_KEYS: %s not found (give an absolute path or a file in FILESPATH)" % k)
        with open(path, "r", errors="replace") as f:
            lines = [line.strip() for line in f.read().splitlines() if line.strip()]
        if len(lines) != 2 or not lines[0].startswith("untrusted comment:") or not lines[1].startswith("RW"):
            bb.fatal("OTTER_TRUSTED_KEYS: %s is not a minisign public key (want 2 lines: "
                     "'untrusted comment: ...' and a base64 key starting with RW)" % path)
        name = os.path.basename(path)
        if not name.endswith(".pub"):
            name += ".pub"
        if name in seen:
            bb.fatal("OTTER_TRUSTED_KEYS: two keys named %s" % name)
        seen.add(name)
        shutil.copyfile(path, os.path.join(outdir, name))
}
do_otter_keys[vardeps] += "OTTER_TRUSTED_KEYS"
do_otter_keys[file-checksums] += "${@otter_key_checksums(d)}"
do_otter_keys[doc] = "Check the OTTER_TRUSTED_KEYS minisign public keys and stage them for do_install"
addtask otter_keys after do_unpack before do_install

do_install() {
    install -d ${D}${bindir}
    install -m 0755 ${B}/target/${CARGO_TARGET_SUBDIR}/otter ${D}${bindir}/otter
    if ${@bb.utils.contains('PACKAGECONFIG', 'publish', 'true', 'false', d)}; then
        install -m 0755 ${B}/target/${CARGO_TARGET_SUBDIR}/otter-publish ${D}${bindir}/otter-publish
    fi

    # /etc/otter/otter.conf (board, boot backend) comes from otter-board-config
    install -d ${D}${sysconfdir}/otter/keys.d ${D}${nonarch_libdir}/otter/keys.d
    for k in ${WORKDIR}/otter-keys/*.pub; do
        [ -e "$k" ] || continue
        install -m 0644 "$k" ${D}${sysconfdir}/otter/keys.d/
    done
    install -d ${D}${localstatedir}/lib/otter

    if ${@bb.utils.contains('PACKAGECONFIG', 'systemd', 'true', 'false', d)}; then
        install -d ${D}${systemd_system_unitdir} ${D}${systemd_unitdir}/system-preset
        for unit in ${S}/agent/data/systemd/*.service ${S}/agent/data/systemd/*.timer; do
            [ -e "$unit" ] || continue
            install -m 0644 "$unit" ${D}${systemd_system_unitdir}/
        done
        : > ${D}${systemd_unitdir}/system-preset/80-otter.preset
        for pattern in ${OTTER_SYSTEMD_PRESET}; do
            echo "enable $pattern" >> ${D}${systemd_unitdir}/system-preset/80-otter.preset
        done
    fi

    # udev rules (USB stick import)
    for rule in ${S}/agent/data/udev/*.rules; do
        [ -e "$rule" ] || continue
        install -d ${D}${nonarch_base_libdir}/udev/rules.d
        install -m 0644 "$rule" ${D}${nonarch_base_libdir}/udev/rules.d/
    done
}

FILES:${PN} += "${nonarch_libdir}/otter ${systemd_system_unitdir} ${systemd_unitdir}/system-preset \
                ${nonarch_base_libdir}/udev/rules.d"
RDEPENDS:${PN}:class-target = "otter-boot"
RRECOMMENDS:${PN}:class-target = "otter-board-config"

BBCLASSEXTEND = "native"
