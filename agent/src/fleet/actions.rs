//! [`FleetActions`] over the update flow: what `otter daemon` and `otter import --media` run.
//!
//! Every operation goes through [`crate::update`] exactly like the CLI (same verification, same
//! boot-counter hook, same `last-update.json` record). Progress events of the update flow come
//! from download threads; the operation runs on a scoped thread and the caller's thread forwards
//! the events to the fleet [`Progress`] (the MQTT progress topic) as JSON objects
//! (`{"event":"bytes","digest":…,"done":…,"total":…}`, see [`crate::progress::Event`]).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use super::{CheckOutcome, FleetActions, Progress};
use crate::deploy::{Switch, Sysroot};
use crate::progress::{Event, Progress as UpdateProgress};
use crate::source::ImageRef;
use crate::update::{self, Mode, Outcome, UpdateOptions};

/// The update flow as fleet actions.
pub struct UpdateActions {
    sysroot: PathBuf,
    opts: UpdateOptions,
}

impl UpdateActions {
    /// `opts.progress` still gets every event (e.g. the daemon's log); they are also forwarded
    /// to the fleet progress of the running operation.
    pub fn new(sysroot: &Path, opts: UpdateOptions) -> UpdateActions {
        UpdateActions {
            sysroot: sysroot.to_path_buf(),
            opts,
        }
    }

    /// Run one update operation on a helper thread, forwarding its progress events.
    fn with_progress<T: Send>(
        &self,
        progress: &mut dyn Progress,
        op: impl FnOnce(&UpdateOptions) -> Result<T> + Send,
    ) -> Result<T> {
        let (tx, rx) = mpsc::channel::<Event>();
        let sink = Arc::new(Forward {
            tx: Mutex::new(tx),
            also: self.opts.progress.clone(),
        });
        let mut opts = self.opts.clone();
        opts.progress = sink;
        std::thread::scope(|sc| {
            let h = sc.spawn(move || op(&opts));
            let mut forward = |e: Event| {
                progress.progress(serde_json::to_value(&e).unwrap_or(Value::Null));
            };
            loop {
                let finished = h.is_finished();
                match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(e) => forward(e),
                    Err(mpsc::RecvTimeoutError::Timeout) if !finished => {}
                    Err(_) => break,
                }
            }
            while let Ok(e) = rx.try_recv() {
                forward(e);
            }
            h.join()
                .map_err(|_| anyhow!("internal error: the update thread panicked"))?
        })
    }

    fn hook<'c>(
        config: &'c crate::config::Config,
        sysroot: &'c Path,
    ) -> impl FnMut(&Switch<'_>) -> Result<()> + 'c {
        move |sw| update::before_switch(config, sysroot, sw)
    }

    fn stage(
        &mut self,
        op: &str,
        image: Option<ImageRef>,
        pin: Option<ImageRef>,
        progress: &mut dyn Progress,
    ) -> Result<Value> {
        let sysroot = self.sysroot.clone();
        let label = image
            .as_ref()
            .or(pin.as_ref())
            .map(ToString::to_string)
            .unwrap_or_else(|| "tracked image".into());
        let res = self.with_progress(progress, |opts| {
            let mut hook = Self::hook(&opts.config, &sysroot);
            match &pin {
                // A pinned digest of the tracked image: stage it, keep tracking the image.
                Some(p) => update::import_offline(&sysroot, p, Mode::Deploy, opts, &mut hook),
                None => update::update(&sysroot, image.as_ref(), Mode::Deploy, opts, &mut hook),
            }
        });
        crate::cli::record(&self.sysroot, op, &label, &res.as_ref().map(Clone::clone));
        Ok(outcome_json(&res?))
    }
}

/// Sends update events to the fleet side (and to the CLI's sink).
struct Forward {
    tx: Mutex<mpsc::Sender<Event>>,
    also: Arc<dyn UpdateProgress>,
}

impl UpdateProgress for Forward {
    fn event(&self, e: &Event) {
        self.also.event(e);
        if let Ok(tx) = self.tx.lock() {
            let _ = tx.send(e.clone());
        }
    }
}

/// The JSON result of a staging operation.
pub fn outcome_json(o: &Outcome) -> Value {
    match o {
        Outcome::NoUpdate { digest, older } => {
            json!({"result": "no-update", "digest": digest, "older": older})
        }
        Outcome::Available {
            digest,
            version,
            plan,
        } => {
            json!({"result": "available", "digest": digest, "version": version,
                   "fetch": plan.path, "download_bytes": plan.bytes})
        }
        Outcome::Downloaded { digest, commit } => {
            json!({"result": "downloaded", "digest": digest, "commit": commit.to_hex()})
        }
        Outcome::Deployed(d) => json!({
            "result": "staged",
            "stateroot": d.stateroot,
            "deployment": d.name(),
            "version": d.version,
            "image": d.image(),
        }),
    }
}

impl FleetActions for UpdateActions {
    fn check(&mut self, progress: &mut dyn Progress) -> Result<CheckOutcome> {
        let sysroot = self.sysroot.clone();
        let out = self.with_progress(progress, |opts| {
            update::update(&sysroot, None, Mode::Check, opts, &mut |_| Ok(()))
        })?;
        let mut c = CheckOutcome {
            staged: staged_digest(&self.sysroot)?,
            ..CheckOutcome::default()
        };
        if let Outcome::Available {
            digest, version, ..
        } = out
        {
            c.available = Some(digest);
            c.version = version;
        }
        Ok(c)
    }

    fn upgrade(&mut self, digest: Option<&str>, progress: &mut dyn Progress) -> Result<Value> {
        let Some(want) = digest else {
            return self.stage("upgrade", None, None, progress);
        };
        let s = Sysroot::load(&self.sysroot)?;
        let (_, tracked) = update::tracked(&s, &self.opts.config)?;
        drop(s);
        let tracked = tracked.context(
            "no tracked image: the deployment has no otter origin and [update] image is not set",
        )?;
        let tracked: ImageRef = tracked
            .parse()
            .with_context(|| format!("parsing the tracked image reference {tracked:?}"))?;
        match &tracked {
            ImageRef::Registry { host, repo, .. } => {
                let pinned = ImageRef::Registry {
                    host: host.clone(),
                    repo: repo.clone(),
                    tag: None,
                    digest: Some(want.to_owned()),
                };
                self.stage("upgrade", None, Some(pinned), progress)
            }
            // A layout or archive cannot be addressed by digest: take what the tracked
            // reference resolves to, if it is the wanted manifest.
            _ => {
                let sysroot = self.sysroot.clone();
                let now = self.with_progress(progress, |opts| {
                    update::update(&sysroot, None, Mode::Check, opts, &mut |_| Ok(()))
                })?;
                let have = match &now {
                    Outcome::Available { digest, .. } | Outcome::NoUpdate { digest, .. } => digest,
                    other => bail!("internal error: check ended with {other:?}"),
                };
                if have != want {
                    bail!(
                        "{tracked} now resolves to {have}, not the requested {want}; nothing staged"
                    );
                }
                self.stage("upgrade", None, None, progress)
            }
        }
    }

    fn switch(&mut self, image: &str, progress: &mut dyn Progress) -> Result<Value> {
        let r: ImageRef = image
            .parse()
            .with_context(|| format!("invalid image reference {image:?}"))?;
        self.stage("switch", Some(r), None, progress)
    }

    fn import(&mut self, image: &str, progress: &mut dyn Progress) -> Result<Value> {
        let r: ImageRef = image
            .parse()
            .with_context(|| format!("invalid image reference {image:?}"))?;
        if matches!(r, ImageRef::Registry { .. }) {
            bail!("import takes oci:DIR or oci-archive:FILE, not the registry image {r}");
        }
        let sysroot = self.sysroot.clone();
        let res = self.with_progress(progress, |opts| {
            let mut hook = Self::hook(&opts.config, &sysroot);
            update::import_offline(&sysroot, &r, Mode::Deploy, opts, &mut hook)
        });
        crate::cli::record(
            &self.sysroot,
            "import",
            image,
            &res.as_ref().map(Clone::clone),
        );
        Ok(outcome_json(&res?))
    }

    fn rollback(&mut self) -> Result<Value> {
        let msg = crate::cli::rollback(&self.sysroot, &self.opts.config, None)?;
        Ok(json!({"result": "rolled-back", "message": msg}))
    }

    fn reboot(&mut self) -> Result<()> {
        if self.sysroot != Path::new("/") {
            bail!(
                "not rebooting: --sysroot {} is not the running system",
                self.sysroot.display()
            );
        }
        crate::cli::reboot(&self.sysroot, &self.opts.config.boot.reboot_command)
    }

    fn status(&mut self) -> Result<Value> {
        let st = crate::status::gather_with_boot(&self.sysroot, &self.opts.config)?;
        serde_json::to_value(&st).context("encoding the status")
    }
}

/// The manifest digest of a deployment that waits for a reboot (the default deployment when
/// it is not the booted one); None when not booted or nothing is staged.
fn staged_digest(sysroot: &Path) -> Result<Option<String>> {
    let s = Sysroot::load(sysroot)?;
    let Some(b) = s.booted_index() else {
        return Ok(None);
    };
    if b == 0 {
        return Ok(None);
    }
    Ok(s.deployments()
        .first()
        .and_then(|d| update::commit_digest(s.repo(), &d.checksum)))
}
