//! The update flow: source → resolve → verify → import → deploy → cleanup.
//!
//! 1. [`crate::source::open`] the image and resolve it to one manifest (digest-checked).
//! 2. Same manifest digest as the current default deployment → nothing to do.
//! 3. [`crate::verify::check_release`]: signed release statement, anti-rollback against the
//!    booted (else default) deployment's release.
//! 4. Import each layer ([`Importer::apply_layer_recorded`] on the verified blob stream, or
//!    [`Importer::apply_layer_commit`] without any download for a layer whose diff_id an earlier
//!    import recorded as `otter/layer/<diff_id hex>`; see [`import`]), commit with the
//!    metadata keys of api.md plus `otter.image.diff-ids`, check the signed content checksum
//!    (the same either way), and set the ref
//!    `otter/image/<manifest sha256 hex>` — it protects the commit from pruning until it is
//!    deployed, and lets `upgrade --download-only` + a later `upgrade` skip the import.
//!    Cleanup drops image refs whose commit is not deployed, and layer refs no deployed commit's
//!    `otter.image.diff-ids` names.
//! 5. [`Sysroot::deploy`] with the `before_switch` hook (boot counter), then cleanup.
//!
//! Downloaded blobs live in `STATEROOT/var/lib/otter/blobs` of the sysroot (that is
//! `/var/lib/otter/blobs` on a booted device) and are deleted after a successful deploy unless
//! `[update] keep-blobs` is set. A failed import leaves only unreferenced objects behind (pruned
//! by the next successful update) and the downloaded blobs (so the next run resumes).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::chunked;
use crate::config::Config;
use crate::delta;
use crate::deploy::{
    BeforeSwitch, DeployOptions, Deployment, Origin, Switch, Sysroot, DIFF_IDS_KEY,
    IMAGE_REF_PREFIX,
};
use crate::import::{layer_ref, ImportLimits, Importer, IMPORT_RULES_VERSION};
use crate::ostree::{Checksum, MetaValue, ObjectKind, Repo};
use crate::progress::{Event, NoProgress, Progress};
use crate::source::{self, ImageRef, ImageSource, ResolvedImage, SourceOptions};
use crate::verify::{self, ReleaseStatement, TrustPolicy, VerificationError};

/// How an update runs.
#[derive(Clone)]
pub struct UpdateOptions {
    pub config: Config,
    /// Skip signature verification (`--no-signature-verification`).
    pub no_signature_verification: bool,
    /// Overrides `[trust] keys-dir` (`--trusted-keys`).
    pub trusted_keys: Option<PathBuf>,
    pub allow_downgrade: bool,
    pub progress: Arc<dyn Progress>,
}

impl Default for UpdateOptions {
    fn default() -> Self {
        UpdateOptions {
            config: Config::default(),
            no_signature_verification: false,
            trusted_keys: None,
            allow_downgrade: false,
            progress: Arc::new(NoProgress),
        }
    }
}

/// How an update's tree gets into the repo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchPlan {
    /// "delta", "chunked" (zstd:chunked layers, only the files the repository lacks; see
    /// [`crate::chunked`]) or "layers".
    pub path: &'static str,
    /// Bytes to download (the delta's blobs, or the image's layers: whole, or the TOCs and
    /// missing files of zstd:chunked ones).
    pub bytes: u64,
}

/// What `upgrade`/`switch`/`import` should do after resolving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Only report whether an update exists.
    Check,
    /// Fetch, verify and import, but do not deploy.
    DownloadOnly,
    /// Everything, up to a new default deployment.
    Deploy,
}

/// What happened.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// The default deployment already runs this manifest (`older`: None), or the tracked image
    /// is an older release than the running one (`older`: why; e.g. a newer release came from
    /// removable media) and downgrades are not allowed.
    NoUpdate {
        digest: String,
        older: Option<String>,
    },
    /// `Mode::Check` found a different manifest.
    Available {
        digest: String,
        version: Option<String>,
        /// How it would be fetched: a delta from the running tree, or the layers.
        plan: FetchPlan,
    },
    /// `Mode::DownloadOnly`: imported as this commit.
    Downloaded { digest: String, commit: Checksum },
    /// Deployed as the new default.
    Deployed(Box<Deployment>),
}

impl UpdateOptions {
    fn trust_policy(&self) -> TrustPolicy {
        let t = &self.config.trust;
        TrustPolicy {
            key_dirs: match &self.trusted_keys {
                Some(k) => vec![k.clone()],
                None => t.keys_dirs.clone(),
            },
            require_signature: t.require_signature && !self.no_signature_verification,
            allow_downgrade: self.allow_downgrade || self.config.policy.allow_downgrade,
            board: t.board.clone(),
        }
    }

    /// The source settings from `[registry]`/`[update]`.
    pub fn source_options(&self, blob_dir: PathBuf) -> SourceOptions {
        let r = &self.config.registry;
        let mut o = SourceOptions {
            platform: self.config.update.platform.clone(),
            blob_dir,
            auth_files: r.auth_file.iter().cloned().collect(),
            username: r.username.clone(),
            password_file: r.password_file.clone(),
            credential_hosts: r.credentials_for.clone(),
            ca_file: r.ca_file.clone(),
            insecure_hosts: r.insecure_hosts.clone(),
            concurrency: r.concurrency as usize,
            max_bytes_per_sec: (r.bandwidth_limit > 0).then_some(r.bandwidth_limit),
            progress: Some(self.progress.clone()),
            ..SourceOptions::default()
        };
        o.read_timeout = std::time::Duration::from_secs(r.timeout);
        o.retry.max_attempts = r.retries.max(1);
        o
    }
}

/// The hook the CLI passes to [`Sysroot::deploy`]: runs right before the bootloader switch
/// (the `boot/loader` swap) with the new boot version on disk. Arms the boot counter
/// (`[boot] backend`, `[boot] tries`) for the new default when there is a deployment to fall
/// back to; see [`crate::boot::arm_for_switch`] and `docs/boot.md`. An error aborts the deploy
/// with the old default intact.
pub fn before_switch(config: &Config, sysroot: &Path, sw: &Switch<'_>) -> Result<()> {
    crate::boot::arm_for_switch(sysroot, &config.boot, sw).map(|_| ())
}

/// Where a stateroot's downloads go.
pub fn blob_dir(sysroot: &Path, stateroot: &str) -> PathBuf {
    sysroot.join(format!("ostree/deploy/{stateroot}/var/lib/otter/blobs"))
}

/// `otter install`: create the sysroot and stateroot if needed and deploy `image` as the first
/// deployment of `stateroot`.
pub fn install(
    sysroot: &Path,
    stateroot: &str,
    image: &ImageRef,
    kargs: Vec<String>,
    opts: &UpdateOptions,
    before_switch: BeforeSwitch<'_>,
) -> Result<Deployment> {
    Sysroot::create(sysroot)?;
    Sysroot::init_stateroot(sysroot, stateroot)?;
    let mut s = Sysroot::load_locked(sysroot)?;
    if let Some(d) = s.deployments().iter().find(|d| d.stateroot == stateroot) {
        bail!(
            "stateroot {stateroot} in {} already has deployment {}; use `otter switch` or `otter upgrade`",
            sysroot.display(),
            d.name()
        );
    }
    match run(
        &mut s,
        stateroot,
        image,
        Some(kargs),
        None,
        Mode::Deploy,
        opts,
        before_switch,
    )? {
        Outcome::Deployed(d) => Ok(*d),
        other => bail!("internal error: install ended with {other:?}"),
    }
}

/// The stateroot and image an upgrade follows: the booted (else default) deployment's origin,
/// else `[update] image`.
pub fn tracked(s: &Sysroot, config: &Config) -> Result<(String, Option<String>)> {
    let current = s.booted().or_else(|| s.deployments().first());
    let stateroot = current
        .map(|d| d.stateroot.clone())
        .unwrap_or_else(|| config.update.stateroot.clone());
    let image = current
        .and_then(|d| d.image().map(str::to_owned))
        .or_else(|| config.update.image.clone());
    Ok((stateroot, image))
}

/// `otter upgrade` (image None: the tracked one) / `otter switch IMAGE` / `otter import PATH`.
pub fn update(
    sysroot: &Path,
    image: Option<&ImageRef>,
    mode: Mode,
    opts: &UpdateOptions,
    before_switch: BeforeSwitch<'_>,
) -> Result<Outcome> {
    let mut s = Sysroot::load_locked(sysroot)?;
    let (stateroot, tracked) = tracked(&s, &opts.config)?;
    let explicit = image.is_some();
    let image = match (image, tracked) {
        (Some(i), _) => i.clone(),
        (None, Some(t)) => t
            .parse::<ImageRef>()
            .with_context(|| format!("parsing the tracked image reference {t:?}"))?,
        (None, None) => bail!(
            "no image to upgrade from: the deployment has no otter origin and [update] image is \
             not set; use `otter switch IMAGE`"
        ),
    };
    let res = run(
        &mut s,
        &stateroot,
        &image,
        None,
        None,
        mode,
        opts,
        before_switch,
    );
    // The tracked image going back to an older release (the device got a newer one from a USB
    // stick, or the tag was moved back) is not an update, and not an attack worth an alarm on
    // every timer round: no update. `switch IMAGE` to an older release still fails.
    match res {
        Err(e) if !explicit => match e.downcast_ref::<VerificationError>() {
            Some(v @ VerificationError::Downgrade { .. }) => {
                let older = format!("{image}: {v}");
                log::info!("no update: {older}");
                let running = s
                    .deployments()
                    .iter()
                    .find(|d| d.stateroot == stateroot)
                    .and_then(|d| commit_digest(s.repo(), &d.checksum));
                Ok(Outcome::NoUpdate {
                    digest: running.unwrap_or_default(),
                    older: Some(older),
                })
            }
            _ => Err(e),
        },
        other => other,
    }
}

/// `otter import PATH`: an offline update from an OCI layout directory or oci-archive (e.g. on
/// a USB stick), verified like an online one. The deployment keeps tracking the image it
/// tracked before (the stick's path is not remembered), or the path when nothing was tracked.
pub fn import_offline(
    sysroot: &Path,
    image: &ImageRef,
    mode: Mode,
    opts: &UpdateOptions,
    before_switch: BeforeSwitch<'_>,
) -> Result<Outcome> {
    let mut s = Sysroot::load_locked(sysroot)?;
    let (stateroot, tracked) = tracked(&s, &opts.config)?;
    run(
        &mut s,
        &stateroot,
        image,
        None,
        tracked,
        mode,
        opts,
        before_switch,
    )
}

#[allow(clippy::too_many_arguments)]
fn run(
    s: &mut Sysroot,
    stateroot: &str,
    image: &ImageRef,
    kargs: Option<Vec<String>>,
    origin_image: Option<String>,
    mode: Mode,
    opts: &UpdateOptions,
    before_switch: BeforeSwitch<'_>,
) -> Result<Outcome> {
    let progress = opts.progress.clone();
    s.repo()
        .set_payload_link_threshold(opts.config.update.payload_link_threshold);
    let blobs = blob_dir(s.path(), stateroot);
    let sopts = opts.source_options(blobs.clone());
    let mut src = source::open(image, &sopts)?;
    let resolved = src
        .resolve()
        .with_context(|| format!("resolving {image}"))?;
    progress.event(&Event::Resolve {
        reference: image.to_string(),
        digest: resolved.manifest_digest.clone(),
    });
    check_platform(&resolved, opts.config.update.platform.as_deref())?;
    let digest = resolved.manifest_digest.clone();
    let hex = source::digest::sha256_hex(&digest)?.to_owned();

    // Same manifest as the default deployment of this stateroot → nothing to do.
    let current = s
        .booted()
        .filter(|d| d.stateroot == stateroot)
        .or_else(|| s.deployments().iter().find(|d| d.stateroot == stateroot))
        .cloned();
    let default_digest = s
        .deployments()
        .iter()
        .find(|d| d.stateroot == stateroot)
        .and_then(|d| commit_digest(s.repo(), &d.checksum));
    let origin_image = origin_image.unwrap_or_else(|| image.to_string());
    let same_image = s
        .deployments()
        .iter()
        .find(|d| d.stateroot == stateroot)
        .and_then(|d| d.image())
        .is_some_and(|i| i == origin_image);
    if kargs.is_none() && default_digest.as_deref() == Some(digest.as_str()) && same_image {
        return Ok(Outcome::NoUpdate {
            digest,
            older: None,
        });
    }
    let base = current
        .as_ref()
        .and_then(|d| DeltaBase::of(s.repo(), &d.checksum));
    // Verify (signature, statement, anti-rollback) before anything else, also for a check:
    // an update that would be refused is not an available update.
    let policy = opts.trust_policy();
    let booted_release = current
        .as_ref()
        .and_then(|d| s.repo().read_commit(&d.checksum).ok())
        .and_then(|c| verify::release_of_commit(&c));
    let stmt = verify::check_release(src.as_mut(), &resolved, &policy, booted_release.as_ref())
        .with_context(|| format!("verifying {image} ({digest})"))?;

    if mode == Mode::Check {
        let plan = fetch_plan(src.as_mut(), &resolved, base.as_ref(), Some(s.repo()));
        progress.event(&Event::Plan {
            path: plan.path.to_owned(),
            bytes: plan.bytes,
        });
        return Ok(Outcome::Available {
            digest,
            version: resolved.config.version().map(str::to_owned),
            plan,
        });
    }

    let image_ref = format!("{IMAGE_REF_PREFIX}{hex}");
    let imported = s.repo().resolve_ref(&image_ref)?;
    let commit = match imported {
        Some(c) if import_rules_of(s.repo(), &c) >= IMPORT_RULES_VERSION => {
            log::info!("{image} ({digest}) is already imported as {c}");
            c
        }
        stale => {
            if let Some(c) = stale {
                // Older rules accepted more (see IMPORT_RULES_VERSION): import it again, so an
                // image the current rules refuse is refused, not deployed from the old commit.
                log::info!(
                    "{image} ({digest}) was imported as {c} under import rules v{}; this agent \
                     applies v{IMPORT_RULES_VERSION}: importing it again",
                    import_rules_of(s.repo(), &c)
                );
            }
            let via_delta = base.as_ref().and_then(|b| {
                try_delta(
                    s.repo(),
                    src.as_mut(),
                    &resolved,
                    b,
                    stmt.as_ref(),
                    &*progress,
                )
            });
            let c = match via_delta {
                Some(c) => c,
                None => import(s.repo(), src.as_mut(), &resolved, stmt.as_ref(), &*progress)?,
            };
            s.repo().set_ref(&image_ref, Some(&c))?;
            c
        }
    };
    if let Some(stmt) = &stmt {
        let content = s.repo().read_commit(&commit)?.content_checksum();
        verify::check_content(stmt, &content.to_hex())
            .map_err(anyhow::Error::new)
            .with_context(|| format!("checking the imported tree of {image}"))?;
    }
    if mode == Mode::DownloadOnly {
        return Ok(Outcome::Downloaded { digest, commit });
    }
    drop(src);

    progress.event(&Event::Deploy {
        step: "deploy".into(),
    });
    let d = s.deploy(
        &DeployOptions {
            stateroot: stateroot.to_owned(),
            commit,
            origin: Origin::for_image(&origin_image),
            kargs,
        },
        before_switch,
    )?;
    if !opts.config.update.keep_blobs {
        if let Err(e) = crate::deploy::fsops::remove_all(&blobs) {
            log::warn!("removing downloaded blobs: {e:#}");
        }
    }
    progress.event(&Event::Done {
        message: format!("deployed {} ({})", d.name(), digest),
    });
    Ok(Outcome::Deployed(Box::new(d)))
}

/// Refuse an image built for another OS/architecture than the device's (the host's, or
/// `[update] platform`). An index is resolved to the right platform by the source; this catches
/// single-platform images.
fn check_platform(image: &ResolvedImage, configured: Option<&str>) -> Result<()> {
    let want = match configured {
        Some(p) => source::Platform::parse(p)
            .with_context(|| format!("invalid [update] platform {p:?}"))?,
        None => source::Platform::host(),
    };
    let c = &image.config;
    let os_ok = c.os.is_empty() || c.os == want.os;
    let arch_ok = c.architecture.is_empty() || c.architecture == want.architecture;
    if !(os_ok && arch_ok) {
        bail!(
            "{} ({}) is an image for {}/{}, not for this device ({}); pick the right image, or \
             set [update] platform when installing for another machine",
            image.reference,
            image.manifest_digest,
            c.os,
            c.architecture,
            want
        );
    }
    Ok(())
}

/// The import rules a commit was made under (`otter.import-rules`; 0 when it is not recorded
/// or the commit cannot be read).
pub fn import_rules_of(repo: &Repo, c: &Checksum) -> u64 {
    repo.read_commit(c)
        .ok()
        .and_then(|c| {
            c.metadata.iter().find_map(|(k, v)| match v {
                MetaValue::U64(n) if k == "otter.import-rules" => Some(*n),
                _ => None,
            })
        })
        .unwrap_or(0)
}

/// The manifest digest a commit was imported from.
pub fn commit_digest(repo: &Repo, c: &Checksum) -> Option<String> {
    repo.read_commit(c)
        .ok()
        .and_then(|c| c.meta_str("otter.image.digest").map(str::to_owned))
}

/// The running image a delta may start from: its commit, manifest digest and tree.
pub struct DeltaBase {
    pub commit: Checksum,
    pub digest: String,
    pub content: Checksum,
}

impl DeltaBase {
    pub fn of(repo: &Repo, commit: &Checksum) -> Option<DeltaBase> {
        let c = repo.read_commit(commit).ok()?;
        Some(DeltaBase {
            commit: *commit,
            digest: c.meta_str("otter.image.digest").unwrap_or("").to_owned(),
            content: c.content_checksum(),
        })
    }
}

/// Whether a delta from `base` to `image` is published, and what it costs to download; else
/// the layers (without those `repo` has recorded, see [`recorded_layers`]). Errors looking for
/// a delta mean "layers" (logged).
pub fn fetch_plan(
    src: &mut dyn ImageSource,
    image: &ResolvedImage,
    base: Option<&DeltaBase>,
    repo: Option<&Repo>,
) -> FetchPlan {
    let recorded = match repo {
        Some(r) => recorded_layers(r, image),
        None => vec![None; image.manifest.layers.len()],
    };
    let mut layers = FetchPlan {
        path: "layers",
        bytes: 0,
    };
    for (l, _) in image
        .manifest
        .layers
        .iter()
        .zip(&recorded)
        .filter(|(_, r)| r.is_none())
    {
        let partial = repo.and_then(|r| {
            chunked::plan(r, src, l, &ImportLimits::default()).unwrap_or_else(|e| {
                log::warn!("{e:#}; the layer would be fetched whole");
                None
            })
        });
        match partial {
            Some(p) => {
                layers.path = "chunked";
                layers.bytes += p.bytes();
            }
            None => layers.bytes += l.size,
        }
    }
    let Some(base) = base else {
        return layers;
    };
    match delta::find_delta(
        src,
        &image.manifest_digest,
        &base.digest,
        &base.content.to_hex(),
    ) {
        Ok(Some(m)) => FetchPlan {
            path: "delta",
            bytes: delta::delta_size(&m),
        },
        Ok(None) => layers,
        Err(e) => {
            log::warn!("looking for a delta to {}: {e:#}", image.manifest_digest);
            layers
        }
    }
}

/// The delta path of an update: find a delta from the running tree to `image`, apply it, check
/// the tree against the signed statement and write the commit an import would write. `None`
/// (logged) when there is no delta or anything fails: the caller imports the layers instead, so
/// a bad delta costs time, never a wrong tree.
pub fn try_delta(
    repo: &Repo,
    src: &mut dyn ImageSource,
    image: &ResolvedImage,
    base: &DeltaBase,
    stmt: Option<&ReleaseStatement>,
    progress: &dyn Progress,
) -> Option<Checksum> {
    let digest = &image.manifest_digest;
    if let Some(stmt) = stmt.filter(|s| s.import_rules < IMPORT_RULES_VERSION) {
        // A delta rebuilds the tree the publisher's import made; under older rules that import
        // accepted more than this agent does. The layers go through the current rules.
        log::info!(
            "the release statement of {digest} was made under import rules v{}, this agent \
             applies v{IMPORT_RULES_VERSION}: fetching the layers instead of a delta",
            stmt.import_rules
        );
        return None;
    }
    let m = match delta::find_delta(src, digest, &base.digest, &base.content.to_hex()) {
        Ok(Some(m)) => m,
        Ok(None) => {
            log::info!(
                "no delta from tree {} to {digest}: fetching the layers",
                base.content
            );
            return None;
        }
        Err(e) => {
            log::warn!("looking for a delta to {digest}: {e:#}; fetching the layers");
            return None;
        }
    };
    progress.event(&Event::Plan {
        path: "delta".into(),
        bytes: delta::delta_size(&m),
    });
    let res = delta::apply_manifest(repo, src, m, &base.commit)
        .and_then(|applied| {
            if let Some(stmt) = stmt {
                verify::check_content(stmt, &applied.content.to_hex())
                    .map_err(anyhow::Error::new)
                    .context("the tree the delta built is not the signed one")?;
            }
            let mut meta = commit_metadata(image, stmt);
            if let Some(k) = kernel_version(repo, &applied.root_tree)? {
                meta.push(("ostree.linux".to_owned(), MetaValue::Str(k)));
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let subject = format!("{} ({})", image.reference, image.manifest_digest);
            let c = repo.transaction()?.commit(
                &subject,
                "",
                meta,
                None,
                now,
                &applied.root_tree,
                &applied.root_meta,
            )?;
            log::info!(
                "{digest}: tree {} rebuilt from a delta ({} parts, {} bytes downloaded) as commit {c}",
                applied.content,
                applied.parts_applied,
                applied.bytes_read
            );
            Ok(c)
        })
        .with_context(|| format!("applying the delta from tree {} to {digest}", base.content));
    match res {
        Ok(c) => Some(c),
        Err(e) => {
            log::warn!("{e:#}; fetching the layers instead");
            None
        }
    }
}

/// The kernel version of a tree in the repo, by the importer's rules (the first
/// `usr/lib/modules/KVER/` with a regular `vmlinuz`, else `boot/vmlinuz-KVER`): the
/// `ostree.linux` commit key.
fn kernel_version(repo: &Repo, root: &Checksum) -> Result<Option<String>> {
    let regular = |c: &Checksum| -> Result<bool> { Ok(!repo.open_file(c)?.header.is_symlink()) };
    let dir = |t: &Checksum, name: &str| -> Result<Option<Checksum>> {
        Ok(repo
            .read_dirtree(t)?
            .dirs
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, t, _)| *t))
    };
    let mut modules = Some(*root);
    for name in ["usr", "lib", "modules"] {
        modules = match modules {
            Some(t) => dir(&t, name)?,
            None => None,
        };
    }
    if let Some(m) = modules {
        for (kver, t, _) in &repo.read_dirtree(&m)?.dirs {
            let tree = repo.read_dirtree(t)?;
            if let Some((_, c)) = tree.files.iter().find(|(n, _)| n == "vmlinuz") {
                if regular(c)? {
                    return Ok(Some(kver.clone()));
                }
            }
        }
    }
    if let Some(boot) = dir(root, "boot")? {
        for (name, c) in &repo.read_dirtree(&boot)?.files {
            if let Some(kver) = name.strip_prefix("vmlinuz-") {
                if !kver.is_empty() && regular(c)? {
                    return Ok(Some(kver.to_owned()));
                }
            }
        }
    }
    Ok(None)
}

/// The commit metadata of an imported image (without `ostree.linux`, which comes from the tree).
fn commit_metadata(
    image: &ResolvedImage,
    stmt: Option<&ReleaseStatement>,
) -> Vec<(String, MetaValue)> {
    let mut meta = vec![
        (
            "otter.image.reference".to_owned(),
            MetaValue::Str(image.reference.to_string()),
        ),
        (
            "otter.image.digest".to_owned(),
            MetaValue::Str(image.manifest_digest.clone()),
        ),
        (
            "otter.image.config-digest".to_owned(),
            MetaValue::Str(image.config_digest.clone()),
        ),
        (
            "otter.import-rules".to_owned(),
            MetaValue::U64(IMPORT_RULES_VERSION),
        ),
    ];
    if !image.config.diff_ids.is_empty() {
        // Keeps the recorded layers (`otter/layer/…`) of deployed images; see cleanup.
        meta.push((
            DIFF_IDS_KEY.to_owned(),
            MetaValue::StrArray(image.config.diff_ids.clone()),
        ));
    }
    if let Some(v) = image.config.version() {
        meta.push(("version".to_owned(), MetaValue::Str(v.to_owned())));
    }
    if let Some(stmt) = stmt {
        meta.push(verify::statement_metadata(stmt));
    }
    meta
}

/// For each layer of `image`: the commit of its `otter/layer/<diff_id>` ref when an earlier
/// import recorded it (then it is applied from the repo, not downloaded).
pub fn recorded_layers(repo: &Repo, image: &ResolvedImage) -> Vec<Option<Checksum>> {
    let layers = &image.manifest.layers;
    let diff_ids = &image.config.diff_ids;
    if diff_ids.len() != layers.len() {
        return vec![None; layers.len()];
    }
    diff_ids
        .iter()
        .map(|d| {
            let name = layer_ref(d)?;
            match repo.resolve_ref(&name) {
                Ok(Some(c)) if repo.has_object(ObjectKind::Commit, &c) => {
                    // A record made under older import rules may lack what they dropped and
                    // the current ones refuse (device nodes): download the layer again.
                    let rules = import_rules_of(repo, &c);
                    if rules < IMPORT_RULES_VERSION {
                        log::info!(
                            "{name} was recorded under import rules v{rules}, this agent applies \
                             v{IMPORT_RULES_VERSION}: downloading the layer again"
                        );
                        return None;
                    }
                    Some(c)
                }
                Ok(_) => None,
                Err(e) => {
                    log::warn!("reading {name}: {e:#}; downloading the layer");
                    None
                }
            }
        })
        .collect()
}

/// Why [`import_layers`] failed.
enum ImportError {
    /// Replaying the recorded layer `ref` failed: retry downloading everything.
    Replay {
        layer_ref: String,
        err: anyhow::Error,
    },
    /// A zstd:chunked partial pull failed: retry with whole layers.
    Chunked(anyhow::Error),
    Other(anyhow::Error),
}

/// Import all layers of `image` into one commit (no ref is set). Layers an earlier import
/// recorded (same diff_id) are applied from their `otter/layer/…` commit instead of being
/// downloaded; of zstd:chunked layers only the files the repository lacks are downloaded
/// ([`crate::chunked`]); the others are downloaded whole. Downloaded layers are recorded. The
/// tree is the same either way (the caller checks it against the signed content checksum). If
/// replaying a recorded layer fails, its ref is dropped and everything is downloaded; if a
/// partial pull fails, the layers are downloaded whole.
pub fn import(
    repo: &Repo,
    src: &mut dyn ImageSource,
    image: &ResolvedImage,
    stmt: Option<&ReleaseStatement>,
    progress: &dyn Progress,
) -> Result<Checksum> {
    let mut recorded = recorded_layers(repo, image);
    let mut chunked = true;
    loop {
        match import_layers(repo, src, image, stmt, progress, &recorded, chunked) {
            Ok(c) => return Ok(c),
            Err(ImportError::Other(e)) => return Err(e),
            Err(ImportError::Replay { layer_ref, err }) if recorded.iter().any(Option::is_some) => {
                log::warn!("{err:#}; dropping {layer_ref} and downloading all layers");
                repo.set_ref(&layer_ref, None)?;
                recorded = vec![None; recorded.len()];
            }
            Err(ImportError::Chunked(err)) if chunked => {
                log::warn!("{err:#}; downloading the whole layers instead");
                chunked = false;
            }
            Err(ImportError::Replay { err, .. } | ImportError::Chunked(err)) => return Err(err),
        }
    }
}

fn import_layers(
    repo: &Repo,
    src: &mut dyn ImageSource,
    image: &ResolvedImage,
    stmt: Option<&ReleaseStatement>,
    progress: &dyn Progress,
    recorded: &[Option<Checksum>],
    chunked: bool,
) -> std::result::Result<Checksum, ImportError> {
    let layers = &image.manifest.layers;
    let diff_ids = &image.config.diff_ids;
    let mut imp = Importer::new(repo);
    // Partial pulls of zstd:chunked layers (this fetches their TOCs).
    let plans: Vec<Option<chunked::Plan>> = layers
        .iter()
        .zip(recorded)
        .enumerate()
        .map(|(i, (l, r))| {
            if !chunked || r.is_some() {
                return None;
            }
            chunked::plan(repo, src, l, &imp.limits()).unwrap_or_else(|e| {
                log::warn!("layer {i} ({}): {e:#}; fetching the whole layer", l.digest);
                None
            })
        })
        .collect();
    let to_fetch: Vec<_> = layers
        .iter()
        .zip(recorded)
        .zip(&plans)
        .filter(|((_, r), p)| r.is_none() && p.is_none())
        .map(|((l, _), _)| l.clone())
        .collect();
    if plans.iter().any(Option::is_some) {
        progress.event(&Event::Plan {
            path: "chunked".into(),
            bytes: plans
                .iter()
                .flatten()
                .map(chunked::Plan::bytes)
                .sum::<u64>()
                + to_fetch.iter().map(|l| l.size).sum::<u64>(),
        });
    }
    let replayed = recorded.iter().filter(|r| r.is_some()).count();
    if replayed > 0 {
        log::info!(
            "{}: {} of {} layers are already in the repository and are not downloaded",
            image.reference,
            replayed,
            layers.len()
        );
    }
    src.prefetch(&to_fetch)
        .with_context(|| format!("downloading {}", image.reference))
        .map_err(ImportError::Other)?;
    for (i, layer) in layers.iter().enumerate() {
        progress.event(&Event::Import {
            digest: layer.digest.clone(),
            index: i,
            count: layers.len(),
        });
        let diff_id = diff_ids
            .get(i)
            .filter(|_| diff_ids.len() == layers.len())
            .filter(|d| layer_ref(d).is_some());
        if let (Some(c), Some(d)) = (recorded.get(i).copied().flatten(), diff_id) {
            log::debug!(
                "layer {i} ({}): applying the recorded layer {d}",
                layer.digest
            );
            if let Err(err) = imp.apply_layer_commit(&c) {
                return Err(ImportError::Replay {
                    layer_ref: layer_ref(d).unwrap_or_default(),
                    err: err.context(format!(
                        "importing layer {i} ({}) from the repository",
                        layer.digest
                    )),
                });
            }
            continue;
        }
        if let Some(plan) = &plans[i] {
            chunked::import_layer(
                &mut imp,
                repo,
                src,
                layer,
                plan,
                diff_id.map(String::as_str),
            )
            .map_err(|e| {
                ImportError::Chunked(e.context(format!(
                    "partial pull of zstd:chunked layer {i} ({})",
                    layer.digest
                )))
            })?;
            continue;
        }
        let mut r = src
            .open_blob(layer)
            .with_context(|| format!("opening layer {} ({})", i, layer.digest))
            .map_err(ImportError::Other)?;
        let applied = match diff_id {
            Some(d) => imp.apply_layer_recorded(&layer.media_type, &mut r, d),
            None => imp.apply_layer(&layer.media_type, &mut r),
        };
        if let Err(e) = applied {
            // A corrupt blob usually breaks decompression or tar parsing before its digest can
            // be checked at the end: read the rest so a digest/size mismatch is reported as
            // what it is (a verification failure), not as a tar error.
            if let Err(v) = std::io::copy(&mut r, &mut std::io::sink()) {
                let v = anyhow::Error::new(v);
                if crate::fetch::error_class(&v).is_some() {
                    return Err(ImportError::Other(v.context(format!(
                        "layer {i} ({}) of {} does not match its digest",
                        layer.digest, image.reference
                    ))));
                }
            }
            return Err(ImportError::Other(
                e.context(format!("importing layer {} ({})", i, layer.digest)),
            ));
        }
    }
    let meta = commit_metadata(image, stmt);
    let subject = format!("{} ({})", image.reference, image.manifest_digest);
    let imported = imp
        .commit(&subject, meta, None)
        .with_context(|| format!("committing {}", image.reference))
        .map_err(ImportError::Other)?;
    Ok(imported.commit)
}
