//! Finding the kernel in a deployment and computing its boot checksum, the way
//! `ostree admin deploy` does (`get_kernel_from_tree`, modules layout).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// The boot files of a deployment.
#[derive(Clone, Debug)]
pub struct BootFiles {
    /// Kernel version: the directory name under `usr/lib/modules`.
    pub kver: String,
    pub vmlinuz: PathBuf,
    pub initramfs: Option<PathBuf>,
    pub devicetree: Option<PathBuf>,
    /// sha256(vmlinuz ‖ initramfs ‖ devicetree), hex.
    pub bootcsum: String,
}

impl BootFiles {
    pub fn vmlinuz_name(&self) -> String {
        format!("vmlinuz-{}", self.kver)
    }
    pub fn initramfs_name(&self) -> String {
        format!("initramfs-{}.img", self.kver)
    }
    pub fn devicetree_name(&self) -> String {
        format!("devicetree-{}", self.kver)
    }
}

fn is_regular(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.is_file())
}

/// Find the kernel the way the importer does ([`crate::import::find_kernel`]:
/// `usr/lib/modules/$kver/vmlinuz` with its optional `initramfs.img` and `devicetree`, else
/// `boot/vmlinuz-$kver` as Debian-style images have it) and compute the boot checksum.
/// A `dtb/` directory is not copied to `/boot` (only a single `devicetree` file is).
pub fn find(root: &Path) -> Result<BootFiles> {
    let Some(kernel) = crate::import::find_kernel(root)? else {
        bail!(
            "no kernel in the image: expected usr/lib/modules/<kernel version>/vmlinuz (with \
             initramfs.img next to it) or boot/vmlinuz-<kernel version>; the image must be bootable"
        )
    };
    let vmlinuz = root.join(&kernel.vmlinuz);
    let initramfs = kernel.initramfs.map(|p| root.join(p));
    let devicetree = kernel
        .devicetree
        .map(|p| root.join(p))
        .filter(|p| is_regular(p));
    let mut h = Sha256::new();
    for p in [Some(&vmlinuz), initramfs.as_ref(), devicetree.as_ref()]
        .into_iter()
        .flatten()
    {
        let mut f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
        io::copy(&mut f, &mut h).with_context(|| format!("reading {}", p.display()))?;
    }
    let bootcsum = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(BootFiles {
        kver: kernel.version,
        vmlinuz,
        initramfs,
        devicetree,
        bootcsum,
    })
}
