//! Board profiles: which bootloader and boot-count backend a board uses, where its env lives,
//! its kernel arguments, partition layout and bootloader entry style. Profiles are data
//! (`board-support/boards/NAME.conf`, embedded in the binary); this crate loads and validates
//! them and writes what a board needs into a sysroot.

mod apply;
pub mod bls;
pub mod ini;
mod profile;

pub use apply::{apply_to_sysroot, Applied};
pub use bls::{read_entries, render_uenv, sync_uenv, write_uenv, BlsEntry};
pub use profile::{
    builtin_names, builtin_text, parse_fw_env_config, Arch, Bootloader, EntryStyle, FwEnvLine,
    Grub, PartType, Partition, PartitionTable, Profile, Size, UBoot, BUILTIN,
};
