# otter boot counting for U-Boot builds without CONFIG_BOOTCOUNT_LIMIT (e.g. Debian's u-boot-qemu).
# Build:  mkimage -A arm64 -T script -C none -d boot.cmd boot.scr
# Install boot.scr where distro boot finds it (/boot.scr or /boot/boot.scr on the first partition).
#
# Counter: the file uboot.env (single-copy U-Boot environment, 0x4000 bytes) next to boot.scr,
# loaded with `load` + `env import -c` and written back with `env export -c` + `save`.
# Userspace (otter-boot, fw_printenv) reads the same file through an fw_env.config line like
#   /boot/efi/uboot.env 0x0 0x4000
# Variables (U-Boot BOOTCOUNT_ENV / Mender convention): upgrade_available=1 while a new
# deployment is on trial; bootcount = trial boots so far; bootlimit = trial boots allowed.
# Each boot while upgrade_available=1 increments bootcount (decimal; no setexpr, which is hex);
# when bootcount > bootlimit the rollback entry boots and userspace (otter-boot check /
# detect-fallback) rolls back and clears the counter.
#
# Entries: ostree's U-Boot config /boot/loader/uEnv.txt (or /loader/uEnv.txt on a separate boot
# partition): kernel_image, ramdisk_image, bootargs for the default deployment and
# kernel_image2, ramdisk_image2, bootargs2 for the rollback deployment.
#
# Overridable (set them in the default environment): otter_envdev/otter_envpart (where uboot.env
# is; default: the partition this script came from), otter_rootdev/otter_rootpart (where
# uEnv.txt and the kernels are; default: the same), otter_envaddr (scratch address).

if test -z "${devtype}"; then setenv devtype virtio; fi
if test -z "${devnum}"; then setenv devnum 0; fi
if test -z "${distro_bootpart}"; then setenv distro_bootpart 1; fi
if test -z "${otter_envdev}"; then setenv otter_envdev ${devtype}; fi
if test -z "${otter_envpart}"; then setenv otter_envpart ${devnum}:${distro_bootpart}; fi
if test -z "${otter_rootdev}"; then setenv otter_rootdev ${otter_envdev}; fi
if test -z "${otter_rootpart}"; then setenv otter_rootpart ${otter_envpart}; fi
if test -z "${otter_envaddr}"; then setenv otter_envaddr ${kernel_addr_r}; fi

# --- count -----------------------------------------------------------------------------------
setenv bootcount
setenv bootlimit
setenv upgrade_available
setenv otter_entry default
if load ${otter_envdev} ${otter_envpart} ${otter_envaddr} uboot.env; then
  setenv otter_envsize ${filesize}
  if env import -c ${otter_envaddr} ${otter_envsize} bootcount bootlimit upgrade_available; then
    echo "otter: counter bootcount=${bootcount} bootlimit=${bootlimit} upgrade_available=${upgrade_available}"
  else
    echo "otter: uboot.env is damaged (bad CRC); not counting"
  fi
else
  echo "otter: no uboot.env; not counting"
fi

if test "${upgrade_available}" = "1"; then
  if test -z "${bootcount}"; then setenv bootcount 0; fi
  if test -z "${bootlimit}"; then setenv bootlimit 1; fi
  if test ${bootcount} -gt ${bootlimit}; then
    setenv otter_entry rollback
  else
    if test "${bootcount}" = "0"; then
      setenv bootcount 1
    elif test "${bootcount}" = "1"; then
      setenv bootcount 2
    elif test "${bootcount}" = "2"; then
      setenv bootcount 3
    elif test "${bootcount}" = "3"; then
      setenv bootcount 4
    elif test "${bootcount}" = "4"; then
      setenv bootcount 5
    elif test "${bootcount}" = "5"; then
      setenv bootcount 6
    elif test "${bootcount}" = "6"; then
      setenv bootcount 7
    elif test "${bootcount}" = "7"; then
      setenv bootcount 8
    elif test "${bootcount}" = "8"; then
      setenv bootcount 9
    elif test "${bootcount}" = "9"; then
      setenv bootcount 10
    elif test "${bootcount}" = "10"; then
      setenv bootcount 11
    elif test "${bootcount}" = "11"; then
      setenv bootcount 12
    elif test "${bootcount}" = "12"; then
      setenv bootcount 13
    elif test "${bootcount}" = "13"; then
      setenv bootcount 14
    elif test "${bootcount}" = "14"; then
      setenv bootcount 15
    elif test "${bootcount}" = "15"; then
      setenv bootcount 16
    elif test "${bootcount}" = "16"; then
      setenv bootcount 17
    elif test "${bootcount}" = "17"; then
      setenv bootcount 18
    elif test "${bootcount}" = "18"; then
      setenv bootcount 19
    elif test "${bootcount}" = "19"; then
      setenv bootcount 20
    elif test "${bootcount}" = "20"; then
      setenv bootcount 21
    else
      setenv otter_entry rollback
    fi
    if test ${bootcount} -gt ${bootlimit}; then setenv otter_entry rollback; fi
    env export -c -s ${otter_envsize} ${otter_envaddr} bootcount bootlimit upgrade_available
    if save ${otter_envdev} ${otter_envpart} ${otter_envaddr} uboot.env ${otter_envsize}; then
      echo "otter: saved bootcount=${bootcount} (bootlimit ${bootlimit})"
    else
      echo "otter: cannot write uboot.env; booting without counting"
    fi
  fi
fi
if test "${otter_entry}" = "rollback"; then
  echo "otter: boot counter exhausted (bootcount ${bootcount} > bootlimit ${bootlimit})"
fi

# --- boot ------------------------------------------------------------------------------------
setenv kernel_image
setenv ramdisk_image
setenv kernel_image2
setenv ramdisk_image2
setenv bootargs2
setenv otter_prefix
if load ${otter_rootdev} ${otter_rootpart} ${otter_envaddr} /boot/loader/uEnv.txt; then
  setenv otter_prefix /boot
  env import -t ${otter_envaddr} ${filesize}
elif load ${otter_rootdev} ${otter_rootpart} ${otter_envaddr} /loader/uEnv.txt; then
  env import -t ${otter_envaddr} ${filesize}
else
  echo "otter: no /boot/loader/uEnv.txt on ${otter_rootdev} ${otter_rootpart}"
fi
if test "${otter_entry}" = "rollback"; then
  if test -n "${kernel_image2}"; then
    setenv kernel_image ${kernel_image2}
    setenv ramdisk_image ${ramdisk_image2}
    setenv bootargs ${bootargs2}
  else
    echo "otter: uEnv.txt has no rollback entry (kernel_image2); booting the default entry"
  fi
fi
echo "otter: booting entry ${otter_entry}: ${kernel_image}"
if test -n "${kernel_image}"; then
  setenv otter_kernel ${otter_prefix}${kernel_image}
  if load ${otter_rootdev} ${otter_rootpart} ${kernel_addr_r} ${otter_kernel}; then
    setenv otter_kernel_ok 1
  elif load ${otter_rootdev} ${otter_rootpart} ${kernel_addr_r} ${kernel_image}; then
    setenv otter_kernel_ok 1
    setenv otter_prefix
  fi
  if test "${otter_kernel_ok}" = "1"; then
    setenv otter_rd -
    if test -n "${ramdisk_image}"; then
      if load ${otter_rootdev} ${otter_rootpart} ${ramdisk_addr_r} ${otter_prefix}${ramdisk_image}; then
        setenv otter_rd ${ramdisk_addr_r}:${filesize}
      fi
    fi
    if test -n "${fdt_addr}"; then setenv otter_fdt ${fdt_addr}; else setenv otter_fdt ${fdtcontroladdr}; fi
    booti ${kernel_addr_r} ${otter_rd} ${otter_fdt}
  fi
fi
# Not booted: reset. While on trial this uses up a try, so a kernel that cannot even be loaded
# still ends in the rollback entry.
echo "otter: cannot boot ${otter_entry} entry; resetting"
reset
