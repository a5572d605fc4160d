# otter QEMU rig: stand-in U-Boot boot script, used only while boot-counter/u-boot/boot.cmd
# does not exist. Counter in uboot.env on the FAT partition (U-Boot BOOTCOUNT_ENV / Mender
# convention: bootcount, bootlimit, upgrade_available), deployments from ostree's uEnv.txt.
setenv otter_dev "virtio 0"
setenv bootlimit 3
setenv bootcount 0
setenv upgrade_available 0
setenv rollback 0
if fatload virtio 0:1 ${loadaddr} uboot.env; then env import -c ${loadaddr} 0x4000; fi
if test "${upgrade_available}" = "1"; then
  if test "${bootcount}" = "0"; then setenv bootcount 1;
  elif test "${bootcount}" = "1"; then setenv bootcount 2;
  elif test "${bootcount}" = "2"; then setenv bootcount 3;
  elif test "${bootcount}" = "3"; then setenv bootcount 4;
  else setenv bootcount 5; fi
  if test ${bootcount} -gt ${bootlimit}; then
    echo "otter-uboot: boot limit ${bootlimit} exceeded, falling back to the previous deployment"
    setenv rollback 1
    setenv upgrade_available 0
  fi
  env export -c -s 0x4000 ${loadaddr} bootcount bootlimit rollback upgrade_available
  fatwrite virtio 0:1 ${loadaddr} uboot.env 0x4000
fi
echo "otter-uboot: bootcount=${bootcount} bootlimit=${bootlimit} upgrade_available=${upgrade_available} rollback=${rollback}"
ext4load virtio 0:2 ${loadaddr} /boot/loader/uEnv.txt
env import -t ${loadaddr} ${filesize}
if test "${rollback}" = "1"; then
  if test -n "${kernel_image2}"; then
    setenv kernel_image ${kernel_image2}
    setenv ramdisk_image ${ramdisk_image2}
    setenv bootargs ${bootargs2}
  fi
fi
echo "otter-uboot: booting ${kernel_image}"
ext4load virtio 0:2 ${kernel_addr_r} /boot${kernel_image}
ext4load virtio 0:2 ${ramdisk_addr_r} /boot${ramdisk_image}
booti ${kernel_addr_r} ${ramdisk_addr_r}:${filesize} ${fdtcontroladdr}
echo "otter-uboot: booti failed"
reset
