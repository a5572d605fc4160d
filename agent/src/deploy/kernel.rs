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

/// Look for `usr/lib/modules/$kver/vmlinuz` (first kver in name order) with its optional
/// `initramfs.img` and `devicetree`.
pub fn find(root: &Path) -> Result<BootFiles> {
    let modules = root.join("usr/lib/modules");
    let mut names: Vec<String> = match fs::read_dir(&modules) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("listing {}", modules.display())),
    };
    names.sort();
    for kver in names {
        let dir = modules.join(&kver);
        let vmlinuz = dir.join("vmlinuz");
        if !is_regular(&vmlinuz) {
            continue;
        }
        let initramfs = ["initramfs.img", "initramfs"]
            .iter()
            .map(|n| dir.join(n))
            .find(|p| is_regular(p));
        let devicetree = Some(dir.join("devicetree")).filter(|p| is_regular(p));
        let mut h = Sha256::new();
        for p in [Some(&vmlinuz), initramfs.as_ref(), devicetree.as_ref()]
            .into_iter()
            .flatten()
        {
            let mut f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
            io::copy(&mut f, &mut h).with_context(|| format!("reading {}", p.display()))?;
        }
        let bootcsum = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        return Ok(BootFiles {
            kver,
            vmlinuz,
            initramfs,
            devicetree,
            bootcsum,
        });
    }
    bail!(
        "no kernel in the image: expected usr/lib/modules/<kernel version>/vmlinuz (with \
         initramfs.img next to it); the image must be bootable"
    )
}
