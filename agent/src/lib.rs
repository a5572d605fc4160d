//! otter: an OTA update agent that ships the OS as an OCI image and runs it as an ostree deployment.
//!
//! The modules follow the update flow, one job each:
//!
//! | stage  | module     | what it does |
//! |--------|------------|--------------|
//! | source | [`source`] | image references; OCI layout, oci-archive and registry sources |
//! | fetch  | [`fetch`]  | resumable, journaled blob downloads |
//! | verify | [`verify`] | release statements, minisign signatures, trust policy, anti-rollback |
//! | import | [`import`] | OCI layers (tar, whiteouts) into one ostree commit |
//! | delta  | [`delta`]  | ship only what changed: apply (device) and generate (`publish`) deltas |
//! | store  | [`ostree`] | the native ostree repository (GVariant objects, refs, checkout) |
//! | deploy | [`deploy`] | deployments in an ostree sysroot, BLS entries, `/etc` merge |
//! | boot   | [`boot`]   | arming the boot counter, reading its verdict |
//! | fleet  | [`fleet`]  | timer policy, MQTT commands and reports |
//!
//! [`update`] runs the flow; [`cli`] maps the command line onto it.

pub mod boot;
pub mod chunked;
pub mod cli;
pub mod config;
pub mod delta;
pub mod deploy;
pub mod fetch;
pub mod fleet;
pub mod fsutil;
#[doc(hidden)]
pub mod fuzzing;
pub mod import;
pub mod ostree;
pub mod progress;
#[cfg(feature = "publish")]
pub mod publish;
pub mod source;
pub mod status;
pub mod update;
pub mod verify;
