//! fleet: the long-running side of otter — timer policy, MQTT commands and reports, FleetLock
//! reboot coordination, rollout waves and USB auto-import.
//!
//! | module        | what it does |
//! |---------------|--------------|
//! | [`codec`]     | MQTT 3.1.1 packets, bounded framing (own code: small, no heapless, never panics) |
//! | [`transport`] | `mqtt://` / `mqtts://` URLs; TCP or rustls (ring) streams via `embedded-io-adapters` |
//! | [`mqtt`]      | the session thread: QoS 1, keepalive, persistent session, reconnect with backoff |
//! | [`daemon`]    | `otter daemon`: commands from MQTT, status/events/progress, the timer |
//! | [`policy`]    | `[policy]`: check / stage / apply, maintenance windows, rollout delay |
//! | [`tz`]        | UTC, fixed offsets and `/etc/localtime` (TZif) for windows |
//! | [`identity`]  | device id derived from `/etc/machine-id` (app-specific, like zincati) |
//! | [`fleetlock`] | FleetLock client (`/v1/pre-reboot`, `/v1/steady-state`) |
//! | [`usb`]       | import an update from removable media once |
//! | [`state`]     | atomic state files under `/var/lib/otter` |
//!
//! The fleet code never updates anything itself: it calls [`FleetActions`], which the update
//! flow implements, so a command can only choose among images the device would accept anyway
//! (signature and anti-rollback checks stay in the one flow).
//!
//! ## Topics
//! - subscribe `otter/<device-id>/cmd` and `otter/group/<group>/cmd` (QoS 1);
//! - publish `otter/<device-id>/status` (retained JSON), `otter/<device-id>/events`,
//!   `otter/<device-id>/progress`, and `otter/<device-id>/online` (retained `online`; the last
//!   will sets it to `offline`).
//!
//! ## Commands
//! JSON objects `{"id": "…", "op": "…", …}` with `op` one of `check`, `upgrade` (optional
//! `digest`, `reboot`), `switch` (`image`, optional `reboot`), `rollback` (optional `reboot`),
//! `reboot`, `status`. Every event about a command carries its `id`. Bad commands (not JSON,
//! truncated, unknown op or field, over [`daemon::MAX_COMMAND_BYTES`]) get
//! `{"id":…,"event":"error","message":…}` and the daemon carries on.

pub mod actions;
pub mod codec;
pub mod daemon;
pub mod fleetlock;
pub mod identity;
pub mod mqtt;
pub mod policy;
pub mod state;
pub mod transport;
pub mod tz;
pub mod usb;

use anyhow::Result;
use serde::{Deserialize, Serialize};

pub use daemon::{run_daemon, run_timer_once, stop_on_signals, DaemonOptions, MqttSettings};
pub use policy::{Mode, Policy, Window};
pub use usb::{usb_import, Outcome};

/// Receives progress reports of a long action (JSON objects, e.g. `{"stage":"fetch",
/// "done":123,"total":456}`); the daemon publishes them on the progress topic.
pub trait Progress {
    fn progress(&mut self, value: serde_json::Value);
}

/// Drops progress reports.
pub struct NoProgress;

impl Progress for NoProgress {
    fn progress(&mut self, _value: serde_json::Value) {}
}

/// What a check found.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckOutcome {
    /// Manifest digest of a newer, acceptable update; None when there is nothing new.
    pub available: Option<String>,
    /// Its version, if known.
    pub version: Option<String>,
    /// Digest of an update that is staged and waits for a reboot.
    pub staged: Option<String>,
}

/// The operations the fleet side may trigger. Implemented by the update flow; every method
/// goes through the same verification as the CLI.
pub trait FleetActions {
    /// Looks for an update of the tracked image (no download beyond manifests/statements).
    fn check(&mut self, progress: &mut dyn Progress) -> Result<CheckOutcome>;
    /// Fetches, verifies and stages the update (`digest`: only this manifest digest). No reboot.
    fn upgrade(
        &mut self,
        digest: Option<&str>,
        progress: &mut dyn Progress,
    ) -> Result<serde_json::Value>;
    /// Tracks another image (`docker://…`, `oci:…`, `oci-archive:…`) and stages it. No reboot.
    fn switch(&mut self, image: &str, progress: &mut dyn Progress) -> Result<serde_json::Value>;
    /// Imports and stages an offline update (`oci:DIR` / `oci-archive:FILE`). No reboot.
    fn import(&mut self, image: &str, progress: &mut dyn Progress) -> Result<serde_json::Value>;
    /// Makes the previous deployment the default. No reboot.
    fn rollback(&mut self) -> Result<serde_json::Value>;
    /// Reboots the machine (returns only in tests or when the reboot failed to start).
    fn reboot(&mut self) -> Result<()>;
    /// The `otter status --json` document.
    fn status(&mut self) -> Result<serde_json::Value>;
}

/// Wall-clock time, replaceable in tests.
pub trait Clock {
    /// Seconds since the Unix epoch (UTC).
    fn now_unix(&self) -> i64;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }
}
