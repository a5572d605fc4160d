//! FleetLock client (the protocol of coreos/airlock, spoken by zincati): take a reboot slot
//! before rebooting, give it back once the new system runs.
//!
//! `POST <base>/v1/pre-reboot` and `POST <base>/v1/steady-state`, header
//! `fleet-lock-protocol: true`, body `{"client_params":{"id":ID,"group":GROUP}}`. 200 means
//! yes; anything else is a refusal whose JSON body `{"kind":…,"value":…}` is shown to the user.

use std::io::Read;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Largest error body we read.
const BODY_MAX: u64 = 16 * 1024;

/// A FleetLock server.
#[derive(Clone, Debug)]
pub struct FleetLock {
    base: String,
    id: String,
    group: String,
    agent: ureq::Agent,
}

impl FleetLock {
    /// `base` is the server URL (`http://host:port` or `https://…`).
    pub fn new(base: &str, id: &str, group: &str) -> Result<FleetLock> {
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("FleetLock URL {base:?} must start with http:// or https://");
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .new_agent();
        Ok(FleetLock {
            base: base.trim_end_matches('/').to_string(),
            id: id.to_string(),
            group: group.to_string(),
            agent,
        })
    }

    fn post(&self, what: &str) -> Result<()> {
        let url = format!("{}/v1/{what}", self.base);
        let body = serde_json::json!({"client_params": {"id": self.id, "group": self.group}});
        let resp = self
            .agent
            .post(&url)
            .header("fleet-lock-protocol", "true")
            .header("content-type", "application/json")
            .send(body.to_string())
            .with_context(|| format!("FleetLock request POST {url}"))?;
        let status = resp.status().as_u16();
        if status == 200 {
            return Ok(());
        }
        let mut text = String::new();
        let _ = resp
            .into_body()
            .into_reader()
            .take(BODY_MAX)
            .read_to_string(&mut text);
        let detail = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .map(|v| {
                format!(
                    "{}: {}",
                    v.get("kind").and_then(|k| k.as_str()).unwrap_or("?"),
                    v.get("value").and_then(|k| k.as_str()).unwrap_or("?")
                )
            })
            .unwrap_or_else(|| text.chars().take(200).collect());
        bail!("FleetLock POST {url} refused with HTTP {status} ({detail})")
    }

    /// Takes a reboot slot; an error means "do not reboot now".
    pub fn pre_reboot(&self) -> Result<()> {
        self.post("pre-reboot")
    }

    /// Gives the slot back (after boot, when the system is healthy).
    pub fn steady_state(&self) -> Result<()> {
        self.post("steady-state")
    }
}
