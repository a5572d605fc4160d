//! Board profiles: parse and validate `boards/NAME.conf`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

use crate::ini::{self, Entry, Section};

/// The profiles shipped inside the binary, `(name, file text)`.
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "generic-uefi-aarch64",
        include_str!("../boards/generic-uefi-aarch64.conf"),
    ),
    (
        "generic-uefi-x86_64",
        include_str!("../boards/generic-uefi-x86_64.conf"),
    ),
    (
        "qemu-aarch64-virt",
        include_str!("../boards/qemu-aarch64-virt.conf"),
    ),
    ("raspberrypi4", include_str!("../boards/raspberrypi4.conf")),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Aarch64,
    X86_64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootloader {
    UBoot,
    Grub,
    SystemdBoot,
}

impl Bootloader {
    /// The boot-count backend kind (`otter_boot::backend_from_spec` prefix) this bootloader uses.
    pub fn backend_kind(self) -> &'static str {
        match self {
            Bootloader::UBoot => "uboot",
            Bootloader::Grub => "grubenv",
            Bootloader::SystemdBoot => "bls",
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Bootloader::UBoot => "uboot",
            Bootloader::Grub => "grub",
            Bootloader::SystemdBoot => "systemd-boot",
        }
    }
}

/// How the bootloader finds the deployments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryStyle {
    /// Boot Loader Spec type #1 entries in `/boot/loader/entries` (always written by deploy).
    Bls,
    /// ostree's U-Boot backend: `/boot/loader/uEnv.txt` with `kernel_image`, `ramdisk_image`,
    /// `bootargs`, `fdt_file` (and `…2` for the rollback deployment).
    UEnv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionTable {
    Gpt,
    Dos,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartType {
    Esp,
    Fat32,
    Linux,
    LinuxRootAarch64,
    LinuxRootX86_64,
}

impl PartType {
    fn parse(s: &str) -> Option<PartType> {
        Some(match s {
            "esp" => PartType::Esp,
            "fat32" => PartType::Fat32,
            "linux" => PartType::Linux,
            "linux-root-aarch64" => PartType::LinuxRootAarch64,
            "linux-root-x86_64" => PartType::LinuxRootX86_64,
            _ => return None,
        })
    }
    /// The `type=` value for an `sfdisk` script.
    pub fn sfdisk_type(self, table: PartitionTable) -> &'static str {
        match (table, self) {
            (PartitionTable::Gpt, PartType::Esp) => "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            (PartitionTable::Gpt, PartType::Fat32) => "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
            (PartitionTable::Gpt, PartType::Linux) => "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            (PartitionTable::Gpt, PartType::LinuxRootAarch64) => {
                "B921B045-1DF0-41C3-AF44-4C6F280D3FAE"
            }
            (PartitionTable::Gpt, PartType::LinuxRootX86_64) => {
                "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
            }
            (PartitionTable::Dos, PartType::Esp) => "ef",
            (PartitionTable::Dos, PartType::Fat32) => "c",
            (PartitionTable::Dos, _) => "83",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    MiB(u64),
    /// The rest of the disk (only the last partition).
    Rest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    pub size: Size,
    pub part_type: PartType,
    /// `vfat`, `ext4`, or `none`.
    pub fs: String,
    pub label: String,
    /// Where the running system mounts it (`/sysroot` = the physical root holding `/ostree`).
    pub mount: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UBoot {
    /// The env file as the running system sees it (e.g. `/boot/firmware/uboot.env`).
    pub env_file: String,
    /// Env size in bytes (`CONFIG_ENV_SIZE`, `mkenvimage -s`).
    pub env_size: u64,
    /// The contents (one line, or two for a redundant env) of fw_env.config.
    pub fw_env_config: String,
    /// Boot script file name on the firmware partition (`mkimage -T script` output).
    pub script: String,
    /// U-Boot's `interface dev` of the boot disk, e.g. `virtio 0` or `mmc 0`.
    pub device: String,
    /// Device tree (relative to the kernel's dtb dir) U-Boot hands to the kernel, if not its own.
    pub fdt: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grub {
    pub env_file: String,
}

/// A validated board profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    pub description: String,
    pub arch: Arch,
    pub bootloader: Bootloader,
    /// Boot-count backend spec for `otter_boot::backend_from_spec`, e.g. `uboot:/etc/fw_env.config`.
    pub bootcount: String,
    pub entries: Vec<EntryStyle>,
    pub max_tries: u32,
    /// Kernel arguments every deployment boots with (never `ostree=`: deploy adds that).
    pub kernel_args: Vec<String>,
    /// Name of the partition that holds `/boot` (its mount point + `boot_dir`).
    pub boot_partition: String,
    /// `/boot` path as the bootloader sees it inside `boot_partition` (`/boot` on the root fs).
    pub boot_dir: String,
    pub uboot: Option<UBoot>,
    pub grub: Option<Grub>,
    pub table: PartitionTable,
    pub partitions: Vec<Partition>,
}

/// Names of the built-in profiles.
pub fn builtin_names() -> Vec<&'static str> {
    BUILTIN.iter().map(|(n, _)| *n).collect()
}

/// The raw text of a built-in profile.
pub fn builtin_text(name: &str) -> Option<&'static str> {
    BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

struct Keys<'a> {
    origin: &'a str,
    section: &'a Section,
    used: Vec<&'a str>,
}

impl<'a> Keys<'a> {
    fn new(origin: &'a str, section: &'a Section) -> Keys<'a> {
        Keys {
            origin,
            section,
            used: Vec::new(),
        }
    }
    fn opt(&mut self, key: &'a str) -> Option<&'a Entry> {
        self.used.push(key);
        self.section.entries.iter().find(|e| e.key == key)
    }
    fn req(&mut self, key: &'a str) -> Result<&'a Entry> {
        let (origin, section) = (self.origin, &self.section.name);
        self.opt(key)
            .ok_or_else(|| anyhow!("{origin}: [{section}] lacks the required key {key:?}"))
    }
    fn err(&self, e: &Entry, msg: &str) -> anyhow::Error {
        anyhow!(
            "{}:{}: [{}] {} = {:?}: {msg}",
            self.origin,
            e.line,
            self.section.name,
            e.key,
            e.value
        )
    }
    /// Unknown keys are errors, not silently ignored.
    fn finish(self) -> Result<()> {
        for e in &self.section.entries {
            if !self.used.contains(&e.key.as_str()) {
                bail!(
                    "{}:{}: unknown key {:?} in [{}] (known: {})",
                    self.origin,
                    e.line,
                    e.key,
                    self.section.name,
                    self.used.join(", ")
                );
            }
        }
        Ok(())
    }
}

fn abs_path(k: &Keys, e: &Entry) -> Result<String> {
    if !e.value.starts_with('/') || e.value.contains("/../") || e.value.ends_with("/..") {
        return Err(k.err(e, "must be an absolute path without '..'"));
    }
    Ok(e.value.clone())
}

/// Parse a size: `32M`, `1G`, `512K` (multiple of 1 MiB), or `rest`.
fn parse_size(k: &Keys, e: &Entry) -> Result<Size> {
    let v = e.value.as_str();
    if v == "rest" {
        return Ok(Size::Rest);
    }
    let (num, mult) = match v.char_indices().last() {
        Some((i, 'M')) => (&v[..i], 1),
        Some((i, 'G')) => (&v[..i], 1024),
        _ => return Err(k.err(e, "expected a size like 32M or 1G, or 'rest'")),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| k.err(e, "expected a size like 32M or 1G, or 'rest'"))?;
    if n == 0 {
        return Err(k.err(e, "size must not be zero"));
    }
    Ok(Size::MiB(n * mult))
}

/// Parse a C-style integer the way libubootenv reads OFFSET (`%lli`: 0x hex, leading 0 octal).
fn parse_c_int(s: &str) -> Option<i64> {
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let v = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        i64::from_str_radix(h, 16).ok()?
    } else if s.len() > 1 && s.starts_with('0') {
        i64::from_str_radix(&s[1..], 8).ok()?
    } else {
        s.parse().ok()?
    };
    Some(if neg { -v } else { v })
}

/// One line of fw_env.config: `DEVICE OFFSET ENVSIZE [SECTORSIZE [NSECTORS]]`. ENVSIZE is
/// always hex (libubootenv's `%zx`), with or without `0x`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwEnvLine {
    pub device: String,
    pub offset: i64,
    pub size: u64,
}

/// Parse fw_env.config contents (one line = single env, two = redundant).
pub fn parse_fw_env_config(text: &str) -> Result<Vec<FwEnvLine>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 3 {
            bail!(
                "fw_env.config line {}: expected 'DEVICE OFFSET ENVSIZE', got {l:?}",
                i + 1
            );
        }
        let offset = parse_c_int(f[1]).ok_or_else(|| {
            anyhow!(
                "fw_env.config line {}: bad offset {:?} (C integer, e.g. 0x0)",
                i + 1,
                f[1]
            )
        })?;
        let hex = f[2].trim_start_matches("0x").trim_start_matches("0X");
        let size = u64::from_str_radix(hex, 16).map_err(|_| {
            anyhow!(
                "fw_env.config line {}: bad env size {:?} (always hex, e.g. 0x4000)",
                i + 1,
                f[2]
            )
        })?;
        out.push(FwEnvLine {
            device: f[0].to_string(),
            offset,
            size,
        });
    }
    match out.len() {
        1 | 2 => Ok(out),
        n => bail!("fw_env.config has {n} env lines; need 1 (single) or 2 (redundant)"),
    }
}

impl Profile {
    /// A built-in profile by name.
    pub fn builtin(name: &str) -> Result<Profile> {
        let text = builtin_text(name).ok_or_else(|| {
            anyhow!(
                "unknown board {name:?}; known boards: {}",
                builtin_names().join(", ")
            )
        })?;
        Profile::parse(&format!("board {name}"), text)
    }

    /// A profile from a file (for boards not built in).
    pub fn load(path: &Path) -> Result<Profile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading board profile {}", path.display()))?;
        Profile::parse(&path.display().to_string(), &text)
    }

    /// Built-in name, or a path to a `.conf` file.
    pub fn find(name_or_path: &str) -> Result<Profile> {
        if name_or_path.contains('/') || name_or_path.ends_with(".conf") {
            Profile::load(Path::new(name_or_path))
        } else {
            Profile::builtin(name_or_path)
        }
    }

    /// Parse and validate profile text; `origin` names it in errors.
    pub fn parse(origin: &str, text: &str) -> Result<Profile> {
        let sections = ini::parse(origin, text)?;
        let get = |name: &str| sections.iter().find(|s| s.name == name);
        let need =
            |name: &str| get(name).ok_or_else(|| anyhow!("{origin}: missing section [{name}]"));

        let board = need("board")?;
        let mut k = Keys::new(origin, board);
        let name = k.req("name")?.value.clone();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        {
            bail!("{origin}: board name {name:?} must be lowercase letters, digits, '-', '_'");
        }
        let description = k
            .opt("description")
            .map(|e| e.value.clone())
            .unwrap_or_default();
        let e = k.req("arch")?;
        let arch = match e.value.as_str() {
            "aarch64" => Arch::Aarch64,
            "x86_64" => Arch::X86_64,
            _ => return Err(k.err(e, "expected aarch64 or x86_64")),
        };
        k.finish()?;

        let boot = need("boot")?;
        let mut k = Keys::new(origin, boot);
        let e = k.req("bootloader")?;
        let bootloader = match e.value.as_str() {
            "uboot" => Bootloader::UBoot,
            "grub" => Bootloader::Grub,
            "systemd-boot" => Bootloader::SystemdBoot,
            _ => return Err(k.err(e, "expected uboot, grub or systemd-boot")),
        };
        let e = k.req("bootcount")?;
        let bootcount = e.value.clone();
        let Some((kind, bc_path)) = bootcount.split_once(':') else {
            return Err(k.err(e, "expected KIND:PATH, e.g. uboot:/etc/fw_env.config"));
        };
        if kind != bootloader.backend_kind() {
            return Err(k.err(
                e,
                &format!(
                    "bootloader {} counts boots with the '{}:' backend, not '{kind}:'",
                    bootloader.as_str(),
                    bootloader.backend_kind()
                ),
            ));
        }
        if !bc_path.starts_with('/') {
            return Err(k.err(e, "the backend path must be absolute"));
        }
        let e = k.req("entries")?;
        let mut entries = Vec::new();
        for w in e.value.split_whitespace() {
            let s = match w {
                "bls" => EntryStyle::Bls,
                "uenv" => EntryStyle::UEnv,
                _ => return Err(k.err(e, &format!("unknown entry style {w:?} (bls, uenv)"))),
            };
            if !entries.contains(&s) {
                entries.push(s);
            }
        }
        if !entries.contains(&EntryStyle::Bls) {
            return Err(k.err(
                e,
                "'bls' is required: ostree deployments are listed by BLS entries",
            ));
        }
        if entries.contains(&EntryStyle::UEnv) && bootloader != Bootloader::UBoot {
            return Err(k.err(e, "'uenv' entries are only read by U-Boot"));
        }
        let max_tries = match k.opt("max-tries") {
            None => 3,
            Some(e) => match e.value.parse::<u32>() {
                Ok(n) if (1..=15).contains(&n) => n,
                _ => return Err(k.err(e, "expected a number of tries from 1 to 15")),
            },
        };
        let e = k.req("kernel-args")?;
        let kernel_args: Vec<String> = e.value.split_whitespace().map(String::from).collect();
        if kernel_args.iter().any(|a| a.starts_with("ostree=")) {
            return Err(k.err(
                e,
                "must not contain ostree= (deploy adds it per deployment)",
            ));
        }
        let e = k.req("boot-partition")?;
        let boot_partition = e.value.clone();
        let boot_partition_entry = e.clone();
        let e = k.req("boot-dir")?;
        let boot_dir = abs_path(&k, e)?;
        k.finish()?;

        let uboot = match get("uboot") {
            None => None,
            Some(s) => {
                let mut k = Keys::new(origin, s);
                let e = k.req("env-file")?;
                let env_file = abs_path(&k, e)?;
                let e = k.req("env-size")?;
                let env_size = u64::from_str_radix(e.value.trim_start_matches("0x"), 16)
                    .ok()
                    .filter(|n| *n >= 0x400 && n % 0x200 == 0)
                    .ok_or_else(|| {
                        k.err(e, "expected a hex size (e.g. 0x4000), multiple of 0x200")
                    })?;
                let e = k.req("fw-env-config")?;
                let fw_env_config = e.value.replace(" ; ", "\n");
                let lines =
                    parse_fw_env_config(&fw_env_config).map_err(|x| k.err(e, &x.to_string()))?;
                for l in &lines {
                    if l.size != env_size {
                        return Err(k.err(
                            e,
                            &format!(
                                "env size 0x{:x} differs from env-size 0x{env_size:x}",
                                l.size
                            ),
                        ));
                    }
                }
                if lines.len() == 1 && lines[0].device != env_file {
                    return Err(k.err(
                        e,
                        &format!("device {} is not env-file {env_file}", lines[0].device),
                    ));
                }
                let script = k.req("script")?.value.clone();
                let device = k.req("device")?.value.clone();
                let fdt = k.opt("fdt").map(|e| e.value.clone());
                k.finish()?;
                Some(UBoot {
                    env_file,
                    env_size,
                    fw_env_config,
                    script,
                    device,
                    fdt,
                })
            }
        };
        if (bootloader == Bootloader::UBoot) != uboot.is_some() {
            bail!(
                "{origin}: a [uboot] section is required for bootloader uboot and not allowed otherwise"
            );
        }
        let grub = match get("grub") {
            None => None,
            Some(s) => {
                let mut k = Keys::new(origin, s);
                let e = k.req("env-file")?;
                let env_file = abs_path(&k, e)?;
                k.finish()?;
                if env_file != bc_path {
                    bail!("{origin}: [grub] env-file {env_file} differs from the bootcount path {bc_path}");
                }
                Some(Grub { env_file })
            }
        };
        if (bootloader == Bootloader::Grub) != grub.is_some() {
            bail!("{origin}: a [grub] section is required for bootloader grub and not allowed otherwise");
        }

        let layout = need("layout")?;
        let mut k = Keys::new(origin, layout);
        let e = k.req("table")?;
        let table = match e.value.as_str() {
            "gpt" => PartitionTable::Gpt,
            "dos" => PartitionTable::Dos,
            _ => return Err(k.err(e, "expected gpt or dos")),
        };
        let e = k.req("partitions")?;
        let names: Vec<String> = e.value.split_whitespace().map(String::from).collect();
        if names.is_empty() {
            return Err(k.err(e, "list at least one partition"));
        }
        k.finish()?;
        let mut partitions = Vec::new();
        for (i, pname) in names.iter().enumerate() {
            let sname = format!("partition.{pname}");
            let s = get(&sname).ok_or_else(|| {
                anyhow!("{origin}: [layout] lists {pname:?} but there is no [{sname}]")
            })?;
            let mut k = Keys::new(origin, s);
            let e = k.req("size")?;
            let size = parse_size(&k, e)?;
            if size == Size::Rest && i + 1 != names.len() {
                return Err(k.err(e, "only the last partition can take the rest of the disk"));
            }
            let e = k.req("type")?;
            let part_type = PartType::parse(&e.value).ok_or_else(|| {
                k.err(
                    e,
                    "expected esp, fat32, linux, linux-root-aarch64 or linux-root-x86_64",
                )
            })?;
            if table == PartitionTable::Dos
                && matches!(
                    part_type,
                    PartType::LinuxRootAarch64 | PartType::LinuxRootX86_64
                )
            {
                return Err(k.err(e, "root partition type GUIDs need table = gpt; use 'linux'"));
            }
            let e = k.req("fs")?;
            if !matches!(e.value.as_str(), "vfat" | "ext4" | "none") {
                return Err(k.err(e, "expected vfat, ext4 or none"));
            }
            let fs = e.value.clone();
            let label = k.opt("label").map(|e| e.value.clone()).unwrap_or_default();
            let e = k.req("mount")?;
            let mount = abs_path(&k, e)?;
            k.finish()?;
            if partitions.iter().any(|p: &Partition| p.mount == mount) {
                bail!("{origin}: two partitions are mounted at {mount}");
            }
            partitions.push(Partition {
                name: pname.clone(),
                size,
                part_type,
                fs,
                label,
                mount,
            });
        }
        for s in &sections {
            let known = matches!(
                s.name.as_str(),
                "board" | "boot" | "uboot" | "grub" | "layout"
            ) || s
                .name
                .strip_prefix("partition.")
                .is_some_and(|p| names.iter().any(|n| n == p));
            if !known {
                bail!("{origin}:{}: unknown section [{}]", s.line, s.name);
            }
        }
        let Some(bp) = partitions.iter().find(|p| p.name == boot_partition) else {
            bail!(
                "{origin}:{}: boot-partition {boot_partition:?} is not in [layout] partitions",
                boot_partition_entry.line
            );
        };
        if bp.fs != "ext4" {
            bail!(
                "{origin}:{}: /boot must be on a filesystem with symlinks (ext4); {} is {}",
                boot_partition_entry.line,
                bp.name,
                bp.fs
            );
        }
        if !partitions.iter().any(|p| p.mount == "/sysroot") {
            bail!("{origin}: no partition is mounted at /sysroot (the physical root with /ostree)");
        }
        if let Some(u) = &uboot {
            if !partitions
                .iter()
                .any(|p| p.fs == "vfat" && u.env_file.starts_with(&format!("{}/", p.mount)))
            {
                bail!(
                    "{origin}: U-Boot env file {} is not on a vfat partition of the layout",
                    u.env_file
                );
            }
        }
        Ok(Profile {
            name,
            description,
            arch,
            bootloader,
            bootcount,
            entries,
            max_tries,
            kernel_args,
            boot_partition,
            boot_dir,
            uboot,
            grub,
            table,
            partitions,
        })
    }

    /// The backend kind (`uboot`, `grubenv`, `bls`) of the boot-count spec.
    pub fn bootcount_kind(&self) -> &str {
        self.bootcount.split_once(':').map(|(k, _)| k).unwrap_or("")
    }

    /// The path part of the boot-count spec (fw_env.config, grubenv or entries dir).
    pub fn bootcount_path(&self) -> &str {
        self.bootcount.split_once(':').map(|(_, p)| p).unwrap_or("")
    }

    /// Contents of fw_env.config (U-Boot boards), newline-terminated.
    pub fn fw_env_config(&self) -> Option<String> {
        self.uboot.as_ref().map(|u| {
            let mut s = String::from("# Written by otter from the board profile.\n");
            for l in u.fw_env_config.lines() {
                s.push_str(l.trim());
                s.push('\n');
            }
            s
        })
    }

    /// The kernel command line (without `ostree=`).
    pub fn kernel_cmdline(&self) -> String {
        self.kernel_args.join(" ")
    }

    /// An `sfdisk` script for the layout (sizes in MiB, 1 MiB aligned).
    pub fn sfdisk_script(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "label: {}",
            match self.table {
                PartitionTable::Gpt => "gpt",
                PartitionTable::Dos => "dos",
            }
        );
        for p in &self.partitions {
            let size = match p.size {
                Size::MiB(n) => format!("size={n}MiB, "),
                Size::Rest => String::new(),
            };
            let name = match self.table {
                PartitionTable::Gpt if !p.label.is_empty() => format!(", name=\"{}\"", p.label),
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "{size}type={}{name}",
                p.part_type.sfdisk_type(self.table)
            );
        }
        s
    }

    pub fn has_entry_style(&self, s: EntryStyle) -> bool {
        self.entries.contains(&s)
    }

    /// One of the files a board needs: `fw_env.config`, `sfdisk`, `cmdline`.
    pub fn file(&self, which: &str) -> Result<String> {
        match which {
            "fw_env.config" => self.fw_env_config().ok_or_else(|| {
                anyhow!(
                    "board {} boots with {}, which has no fw_env.config",
                    self.name,
                    self.bootloader.as_str()
                )
            }),
            "sfdisk" => Ok(self.sfdisk_script()),
            "cmdline" => Ok(format!("{}\n", self.kernel_cmdline())),
            _ => bail!("unknown board file {which:?}; known: fw_env.config, sfdisk, cmdline"),
        }
    }

    /// A human summary (what `otter-board show` prints).
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "board:        {}", self.name);
        let _ = writeln!(s, "description:  {}", self.description);
        let _ = writeln!(s, "arch:         {:?}", self.arch);
        let _ = writeln!(s, "bootloader:   {}", self.bootloader.as_str());
        let _ = writeln!(
            s,
            "bootcount:    {} (max tries {})",
            self.bootcount, self.max_tries
        );
        let styles: Vec<&str> = self
            .entries
            .iter()
            .map(|e| match e {
                EntryStyle::Bls => "bls",
                EntryStyle::UEnv => "uenv",
            })
            .collect();
        let _ = writeln!(s, "entries:      {}", styles.join(" "));
        let _ = writeln!(s, "kernel args:  {}", self.kernel_cmdline());
        let _ = writeln!(
            s,
            "/boot:        {} on partition {}",
            self.boot_dir, self.boot_partition
        );
        if let Some(u) = &self.uboot {
            let _ = writeln!(
                s,
                "uboot env:    {} (0x{:x} bytes), script {}, disk {}",
                u.env_file, u.env_size, u.script, u.device
            );
        }
        if let Some(g) = &self.grub {
            let _ = writeln!(s, "grubenv:      {}", g.env_file);
        }
        let _ = writeln!(s, "layout:       {:?}", self.table);
        for p in &self.partitions {
            let size = match p.size {
                Size::MiB(n) => format!("{n}MiB"),
                Size::Rest => "rest".into(),
            };
            let _ = writeln!(
                s,
                "  {:<10} {:>8} {:<18} {:<5} {:<12} {}",
                p.name,
                size,
                format!("{:?}", p.part_type),
                p.fs,
                p.label,
                p.mount
            );
        }
        s
    }
}
