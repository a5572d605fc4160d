//! Deployments in an ostree sysroot, written natively and compatible with `ostree admin`
//! (formats: `ref/ostree-format.md` §4).
//!
//! A sysroot is
//! ```text
//! SYSROOT/boot/loader -> loader.BV          BLS entries of the current boot version
//! SYSROOT/boot/ostree/STATEROOT-BOOTCSUM/   kernel, initramfs, devicetree
//! SYSROOT/ostree/repo                       bare repository
//! SYSROOT/ostree/boot.BV -> boot.BV.SBV     bootlinks to the deployments
//! SYSROOT/ostree/deploy/STATEROOT/{var,deploy/CSUM.SERIAL{,.origin}}
//! ```
//! Writing a new deployment list ([`Sysroot::write_deployments`]) always does ostree's "full
//! swap": new entries in `loader.(1-BV)`, new bootlinks, deploy refs, then one atomic rename of
//! `boot/loader` — the single commit point. A crash anywhere before it leaves the old entries
//! and everything they point to untouched; leftovers are removed by the next [`Sysroot::cleanup`].
//!
//! Booted detection follows ostree (`/run/ostree-booted`, `ostree=` on `/proc/cmdline`, only
//! when the sysroot is `/`). Tests and image builders can override it with the environment
//! variable `OTTER_BOOTED_DEPLOYMENT` = `CSUM.SERIAL` or `STATEROOT/CSUM.SERIAL` (or `none`).

mod bls;
pub mod etc;
pub mod fsops;
pub mod kernel;
mod origin;

use std::collections::{BTreeSet, HashSet};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

pub use self::origin::Origin;
use crate::ostree::{fsync_dir, sys, write_atomic, Checksum, MetaValue, Repo, RepoMode};

/// Environment variable that overrides booted-deployment detection.
pub const BOOTED_ENV: &str = "OTTER_BOOTED_DEPLOYMENT";
/// Ref prefix of ostree's deploy refs (`ostree/BV/SBV/INDEX`).
const DEPLOY_REF_PREFIX: &str = "ostree/";
/// Ref prefix of imported images (`otter/image/<manifest sha256 hex>`); see [`crate::update`].
pub const IMAGE_REF_PREFIX: &str = "otter/image/";
/// Commit metadata key listing the image's layer diff_ids (string array); cleanup keeps the
/// recorded layers (`otter/layer/…`, see [`crate::import::layer_ref`]) these name.
pub const DIFF_IDS_KEY: &str = "otter.image.diff-ids";

/// One deployment, as listed by the BLS entries of the current boot version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployment {
    pub stateroot: String,
    /// The deployed commit.
    pub checksum: Checksum,
    pub serial: u32,
    /// sha256 of the boot files; names `/boot/ostree/STATEROOT-BOOTCSUM`.
    pub bootcsum: String,
    /// Index among the deployments with the same bootcsum (the bootlink name).
    pub bootserial: u32,
    /// Kernel arguments other than `ostree=` (and the `init=` ostree adds without initramfs).
    pub kargs: Vec<String>,
    /// The `.origin` file, None if it is missing.
    pub origin: Option<Origin>,
    /// The commit's `version` metadata.
    pub version: Option<String>,
}

impl Deployment {
    /// `CSUM.SERIAL`
    pub fn name(&self) -> String {
        format!("{}.{}", self.checksum, self.serial)
    }

    /// Path relative to the sysroot.
    pub fn rel_path(&self) -> PathBuf {
        PathBuf::from(format!(
            "ostree/deploy/{}/deploy/{}",
            self.stateroot,
            self.name()
        ))
    }

    /// The image this deployment tracks (`[otter] image` of its origin).
    pub fn image(&self) -> Option<&str> {
        self.origin.as_ref().and_then(|o| o.image())
    }

    fn same(&self, o: &Deployment) -> bool {
        self.stateroot == o.stateroot && self.checksum == o.checksum && self.serial == o.serial
    }
}

/// What to deploy.
#[derive(Clone, Debug)]
pub struct DeployOptions {
    pub stateroot: String,
    pub commit: Checksum,
    pub origin: Origin,
    /// Kernel arguments; None keeps those of the merge deployment.
    pub kargs: Option<Vec<String>>,
}

/// A hook run right before the bootloader switch (used to arm the boot counter). An error aborts
/// the deploy and leaves the old default in place.
pub type BeforeSwitch<'a> = &'a mut dyn FnMut(&Switch<'_>) -> Result<()>;

/// What [`BeforeSwitch`] sees: the new boot version, complete on disk but not yet active.
#[derive(Debug)]
pub struct Switch<'a> {
    /// The new deployment list in boot order (index 0 = the new default).
    pub deployments: &'a [Deployment],
    /// The loader directory being switched to (`SYSROOT/boot/loader.N`); its `entries/` hold
    /// the new BLS entries. `SYSROOT/boot/loader` points here after the switch.
    pub loader_dir: &'a Path,
}

impl Switch<'_> {
    /// The deployment that becomes the default.
    pub fn new_default(&self) -> &Deployment {
        &self.deployments[0]
    }

    /// The entry the bootloader falls back to (the second one), if there is one.
    pub fn fallback(&self) -> Option<&Deployment> {
        self.deployments.get(1)
    }
}

/// What [`Sysroot::cleanup`] removed.
#[derive(Debug, Default, Clone)]
pub struct CleanupStats {
    pub deployments: usize,
    pub boot_dirs: usize,
    pub objects: usize,
}

/// An exclusive OFD lock on `SYSROOT/ostree/lock`, the one `ostree admin` takes.
struct SysrootLock {
    path: PathBuf,
    _file: File,
}

impl SysrootLock {
    fn acquire(sysroot: &Path) -> Result<SysrootLock> {
        let path = sysroot.join("ostree/lock");
        loop {
            let f = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            sys::ofd_lock(&f, true).with_context(|| {
                format!(
                    "locking the sysroot {} (is another otter or ostree running?)",
                    sysroot.display()
                )
            })?;
            // ostree unlinks the lock file on release: retry if we locked a deleted one.
            let md = f
                .metadata()
                .with_context(|| format!("stat {}", path.display()))?;
            if md.nlink() > 0 {
                return Ok(SysrootLock { path, _file: f });
            }
        }
    }
}

impl Drop for SysrootLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// A loaded sysroot.
pub struct Sysroot {
    path: PathBuf,
    repo: Repo,
    bootversion: u32,
    subbootversion: u32,
    deployments: Vec<Deployment>,
    booted: Option<usize>,
    lock: Option<SysrootLock>,
}

impl Sysroot {
    /// Create the layout `ostree admin init-fs` makes (idempotent): `boot`, `ostree/deploy`,
    /// the bare repo `ostree/repo`, and the usual top-level directories.
    pub fn create(path: &Path) -> Result<()> {
        fsops::create_dir_all(path, 0o755)?;
        for (d, mode) in [
            ("boot", 0o755),
            ("dev", 0o755),
            ("home", 0o755),
            ("proc", 0o755),
            ("root", 0o700),
            ("run", 0o755),
            ("sys", 0o755),
            ("tmp", 0o1777),
            ("ostree/deploy", 0o755),
        ] {
            fsops::create_dir_all(&path.join(d), mode)?;
        }
        Repo::init(&path.join("ostree/repo"), RepoMode::Bare)
            .with_context(|| format!("creating the repository in {}", path.display()))?;
        Ok(())
    }

    /// Create `ostree/deploy/NAME/var` (like `ostree admin os-init NAME`); idempotent.
    pub fn init_stateroot(path: &Path, name: &str) -> Result<()> {
        validate_stateroot(name)?;
        fsops::create_dir_all(&path.join("ostree/deploy").join(name).join("var"), 0o755)?;
        fsops::create_dir_all(&path.join("ostree/deploy").join(name).join("deploy"), 0o755)
    }

    /// Load without locking (for reading: status).
    pub fn load(path: &Path) -> Result<Sysroot> {
        Self::load_inner(path, None)
    }

    /// Take the sysroot lock, then load (for every change).
    pub fn load_locked(path: &Path) -> Result<Sysroot> {
        if !path.join("ostree/repo").is_dir() {
            bail!(
                "{} is not an ostree sysroot (no ostree/repo); run `otter install --sysroot {}` first",
                path.display(),
                path.display()
            );
        }
        let lock = SysrootLock::acquire(path)?;
        Self::load_inner(path, Some(lock))
    }

    fn load_inner(path: &Path, lock: Option<SysrootLock>) -> Result<Sysroot> {
        let repo = Repo::open(&path.join("ostree/repo"))
            .with_context(|| format!("{} is not an ostree sysroot", path.display()))?;
        let bootversion = read_bootversion(path)?;
        let subbootversion = read_subbootversion(path, bootversion)?;
        let mut s = Sysroot {
            path: path.to_owned(),
            repo,
            bootversion,
            subbootversion,
            deployments: Vec::new(),
            booted: None,
            lock,
        };
        s.deployments = s.read_deployments()?;
        s.booted = detect_booted(&s.path, &s.deployments)?;
        Ok(s)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn repo(&self) -> &Repo {
        &self.repo
    }

    pub fn bootversion(&self) -> u32 {
        self.bootversion
    }

    pub fn subbootversion(&self) -> u32 {
        self.subbootversion
    }

    /// Deployments in boot order: index 0 is the default (next boot).
    pub fn deployments(&self) -> &[Deployment] {
        &self.deployments
    }

    pub fn booted(&self) -> Option<&Deployment> {
        self.booted.map(|i| &self.deployments[i])
    }

    pub fn booted_index(&self) -> Option<usize> {
        self.booted
    }

    /// The deployment whose `/etc` a new deployment of `stateroot` inherits: the booted one if it
    /// is of that stateroot, else that stateroot's first (default) deployment.
    pub fn merge_deployment(&self, stateroot: &str) -> Option<&Deployment> {
        self.booted()
            .filter(|d| d.stateroot == stateroot)
            .or_else(|| self.deployments.iter().find(|d| d.stateroot == stateroot))
    }

    /// The deployment that `rollback` would make the default: the booted deployment's successor
    /// (or, when not booted, the second deployment of the default's stateroot).
    pub fn rollback_deployment(&self) -> Option<&Deployment> {
        let first = self.deployments.first()?;
        self.deployments
            .iter()
            .skip(1)
            .find(|d| d.stateroot == first.stateroot)
    }

    /// Absolute path of a deployment's root.
    pub fn deployment_dir(&self, d: &Deployment) -> PathBuf {
        self.path.join(d.rel_path())
    }

    fn require_lock(&self) -> Result<()> {
        if self.lock.is_none() {
            bail!("internal error: sysroot changed without holding its lock");
        }
        Ok(())
    }

    fn read_deployments(&self) -> Result<Vec<Deployment>> {
        let dir = self
            .path
            .join(format!("boot/loader.{}/entries", self.bootversion));
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        let mut entries = Vec::new();
        for e in rd {
            let e = e.with_context(|| format!("listing {}", dir.display()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !(name.starts_with("ostree-") && name.ends_with(".conf")) {
                continue;
            }
            let text = bls::read_small(&e.path())?;
            entries.push((e.path(), bls::Entry::parse(&text)));
        }
        // Sort by `version` descending (strverscmp); entries without one go last.
        entries.sort_by(
            |(_, a), (_, b)| match (a.get("version"), b.get("version")) {
                (Some(x), Some(y)) => bls::strverscmp(y, x),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            },
        );
        let mut out = Vec::new();
        for (p, e) in entries {
            let d = self
                .deployment_from_entry(&e)
                .with_context(|| format!("reading boot entry {}", p.display()))?;
            out.push(d);
        }
        Ok(out)
    }

    fn deployment_from_entry(&self, e: &bls::Entry) -> Result<Deployment> {
        let options = e.get("options").context("no `options` line")?;
        let mut kargs = Vec::new();
        let mut ostree_arg = None;
        for a in options.split_whitespace() {
            if let Some(v) = a.strip_prefix("ostree=") {
                ostree_arg = Some(v.to_owned());
            } else if a.starts_with("init=/ostree/boot.") {
                // added by ostree for initramfs-less boots; regenerated on write
            } else {
                kargs.push(a.to_owned());
            }
        }
        let ostree_arg = ostree_arg.context("no ostree= kernel argument")?;
        let (bv, stateroot, bootcsum, bootserial) = parse_ostree_arg(&ostree_arg)?;
        if bv != self.bootversion {
            bail!(
                "ostree={ostree_arg} names boot version {bv}, but the entry is in loader.{}",
                self.bootversion
            );
        }
        let link = self.path.join(ostree_arg.trim_start_matches('/'));
        let target =
            fs::read_link(&link).with_context(|| format!("reading bootlink {}", link.display()))?;
        let base = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (checksum, serial) = parse_deployment_name(&base)
            .with_context(|| format!("bootlink {} -> {}", link.display(), target.display()))?;
        let origin_path = self.path.join(format!(
            "ostree/deploy/{stateroot}/deploy/{checksum}.{serial}.origin"
        ));
        let origin = match bls::read_small(&origin_path) {
            Ok(t) => Some(
                Origin::parse(&t).with_context(|| format!("parsing {}", origin_path.display()))?,
            ),
            Err(_) if !origin_path.exists() => None,
            Err(e) => return Err(e),
        };
        let version = match self.repo.read_commit(&checksum) {
            Ok(c) => c.meta_str("version").map(str::to_owned),
            Err(e) => {
                log::warn!("reading deployed commit {checksum}: {e:#}");
                None
            }
        };
        Ok(Deployment {
            stateroot,
            checksum,
            serial,
            bootcsum,
            bootserial,
            kargs,
            origin,
            version,
        })
    }

    /// Check out `opts.commit` as a new deployment, make it the default with the previous
    /// default (or the booted deployment) kept as rollback, and clean up. `before_switch` runs
    /// right before the bootloader switch.
    pub fn deploy(
        &mut self,
        opts: &DeployOptions,
        before_switch: BeforeSwitch<'_>,
    ) -> Result<Deployment> {
        self.require_lock()?;
        validate_stateroot(&opts.stateroot)?;
        let osdir = self.path.join("ostree/deploy").join(&opts.stateroot);
        if !osdir.join("var").is_dir() {
            bail!(
                "no such stateroot {:?} in {} (create it with `otter install`)",
                opts.stateroot,
                self.path.display()
            );
        }
        let commit = self
            .repo
            .read_commit(&opts.commit)
            .with_context(|| format!("reading commit {} to deploy", opts.commit))?;
        let deploy_dir = osdir.join("deploy");
        fsops::create_dir_all(&deploy_dir, 0o755)?;
        let serial = allocate_serial(&deploy_dir, &opts.commit)?;
        let name = format!("{}.{serial}", opts.commit);
        let root = deploy_dir.join(&name);
        let origin_path = deploy_dir.join(format!("{name}.origin"));

        let merge = self.merge_deployment(&opts.stateroot).cloned();
        let first_of_stateroot = !self
            .deployments
            .iter()
            .any(|d| d.stateroot == opts.stateroot);

        let res = (|| -> Result<Deployment> {
            self.repo.checkout(&opts.commit, &root)?;
            self.prepare_tree(&root, merge.as_ref())?;
            if first_of_stateroot && root.join("var").is_dir() {
                fsops::merge_missing(&root.join("var"), &osdir.join("var"))
                    .context("seeding the stateroot's /var from the image")?;
            }
            let boot = kernel::find(&root)?;
            write_atomic(&origin_path, opts.origin.to_text().as_bytes(), 0o644)?;
            if !std::env::var("OSTREE_SYSROOT_DEBUG")
                .is_ok_and(|v| v.contains("mutable-deployments"))
            {
                fsops::set_immutable(&root, true)?;
            }
            let kargs = match &opts.kargs {
                Some(k) => k.clone(),
                None => merge.as_ref().map(|m| m.kargs.clone()).unwrap_or_default(),
            };
            let new = Deployment {
                stateroot: opts.stateroot.clone(),
                checksum: opts.commit,
                serial,
                bootcsum: boot.bootcsum,
                bootserial: 0,
                kargs,
                origin: Some(opts.origin.clone()),
                version: commit.meta_str("version").map(str::to_owned),
            };
            // New list: the new default, the booted deployment, the merge deployment, and the
            // deployments of other stateroots. Everything else falls out.
            let mut list = vec![new.clone()];
            for d in self.booted().into_iter().chain(merge.as_ref()) {
                if !list.iter().any(|x| x.same(d)) {
                    list.push(d.clone());
                }
            }
            for d in &self.deployments {
                if d.stateroot != opts.stateroot && !list.iter().any(|x| x.same(d)) {
                    list.push(d.clone());
                }
            }
            self.write_deployments(list, before_switch)?;
            Ok(new)
        })();
        let new = match res {
            Ok(n) => n,
            Err(e) => {
                // Undo what the old list does not reference (the new deployment, the
                // half-written boot version, its deploy refs); imported objects stay.
                if let Err(ce) = self.cleanup_inner(false) {
                    log::warn!("cleaning up after a failed deploy: {ce:#}");
                }
                return Err(e).with_context(|| {
                    format!(
                        "deploying commit {} to stateroot {}",
                        opts.commit, opts.stateroot
                    )
                });
            }
        };
        self.cleanup()?;
        let d = self
            .deployments
            .iter()
            .find(|d| d.same(&new))
            .cloned()
            .ok_or_else(|| anyhow!("internal error: new deployment missing after write"))?;
        Ok(d)
    }

    /// `/etc`: move a tree's `/etc` to `/usr/etc` if needed, copy `usr/etc` to `etc`, merge the
    /// local changes of `merge`, drop `.updated` stamps.
    fn prepare_tree(&self, root: &Path, merge: Option<&Deployment>) -> Result<()> {
        let etc = root.join("etc");
        let usr_etc = root.join("usr/etc");
        let has_etc = fs::symlink_metadata(&etc).is_ok();
        let has_usr_etc = fs::symlink_metadata(&usr_etc).is_ok();
        if has_etc && has_usr_etc {
            let empty = fs::read_dir(&etc)
                .map(|mut r| r.next().is_none())
                .unwrap_or(false);
            if !empty {
                bail!("the image contains both /etc and /usr/etc; it must ship its defaults in one of them");
            }
            fs::remove_dir(&etc).with_context(|| format!("removing {}", etc.display()))?;
        } else if has_etc {
            fs::rename(&etc, &usr_etc)
                .with_context(|| format!("renaming {} to {}", etc.display(), usr_etc.display()))?;
        }
        if fs::symlink_metadata(&usr_etc).is_ok() {
            fsops::copy_tree(&usr_etc, &etc).context("copying usr/etc to etc")?;
        } else {
            fs::create_dir(&etc).with_context(|| format!("creating {}", etc.display()))?;
        }
        if let Some(m) = merge {
            let mroot = self.deployment_dir(m);
            etc::merge(&mroot.join("usr/etc"), &mroot.join("etc"), &etc)
                .with_context(|| format!("merging /etc changes from deployment {}", m.name()))?;
        }
        for stamp in ["etc/.updated", "var/.updated"] {
            let _ = fs::remove_file(root.join(stamp));
        }
        Ok(())
    }

    /// Make the previous deployment the default (swap the first two deployments of the default
    /// stateroot). Returns the new default.
    pub fn rollback(&mut self) -> Result<Deployment> {
        self.require_lock()?;
        let Some(first) = self.deployments.first().cloned() else {
            bail!("no deployments in {}", self.path.display());
        };
        let Some(j) = self
            .deployments
            .iter()
            .enumerate()
            .skip(1)
            .find(|(_, d)| d.stateroot == first.stateroot)
            .map(|(j, _)| j)
        else {
            bail!(
                "no rollback deployment: {} is the only deployment of stateroot {}",
                first.name(),
                first.stateroot
            );
        };
        let mut list = self.deployments.clone();
        list.swap(0, j);
        let new = list[0].clone();
        self.write_deployments(list, &mut |_| Ok(()))?;
        self.cleanup()?;
        Ok(new)
    }

    /// Make deployment `index` (of [`Sysroot::deployments`]) the default, keeping the order of
    /// the others (used after a bootloader fallback: the booted deployment becomes the default).
    /// Returns the new default.
    pub fn promote(&mut self, index: usize) -> Result<Deployment> {
        self.require_lock()?;
        if index >= self.deployments.len() {
            bail!(
                "no deployment {index} in {} ({} deployments)",
                self.path.display(),
                self.deployments.len()
            );
        }
        let mut list = self.deployments.clone();
        let d = list.remove(index);
        list.insert(0, d.clone());
        if index != 0 {
            self.write_deployments(list, &mut |_| Ok(()))?;
            self.cleanup()?;
        }
        Ok(d)
    }

    /// Write a new ordered deployment list (index 0 = default) with a full boot-version swap.
    /// `before_switch` runs right before the commit point (the `boot/loader` rename).
    pub fn write_deployments(
        &mut self,
        mut list: Vec<Deployment>,
        before_switch: BeforeSwitch<'_>,
    ) -> Result<()> {
        self.require_lock()?;
        if list.is_empty() {
            bail!("refusing to write an empty deployment list");
        }
        // bootserials: per bootcsum, in list order
        for i in 0..list.len() {
            let n = list[..i]
                .iter()
                .filter(|d| d.bootcsum == list[i].bootcsum && d.stateroot == list[i].stateroot)
                .count();
            list[i].bootserial = n as u32;
        }
        let nbv = 1 - self.bootversion;
        let boot = self.path.join("boot");
        let loader_dir = boot.join(format!("loader.{nbv}"));
        fsops::remove_all(&loader_dir)?;
        let entries_dir = loader_dir.join("entries");
        fsops::create_dir_all(&entries_dir, 0o755)?;
        let stateroots: BTreeSet<&str> = list.iter().map(|d| d.stateroot.as_str()).collect();
        let n = list.len();
        for (i, d) in list.iter().enumerate() {
            let entry = self
                .install_kernel_and_entry(d, i, n, nbv, stateroots.len() > 1)
                .with_context(|| format!("writing the boot entry for {}", d.name()))?;
            let file = entries_dir.join(format!("ostree-{}-{}.conf", n - i, d.stateroot));
            write_atomic(&file, entry.to_text().as_bytes(), 0o644)?;
        }
        // U-Boot boards boot from ostree's uEnv.txt (default + rollback entry); like ostree's
        // uboot backend it is regenerated when the current loader has one.
        otter_board::sync_uenv(&self.path, &loader_dir)
            .with_context(|| format!("writing uEnv.txt in {}", loader_dir.display()))?;
        fsync_dir(&loader_dir)?;

        // Bootlinks for the new boot version.
        let ostree = self.path.join("ostree");
        let old_sub = read_subbootversion(&self.path, nbv)?;
        let nsbv = 1 - old_sub;
        let subdir_name = format!("boot.{nbv}.{nsbv}");
        let subdir = ostree.join(&subdir_name);
        fsops::remove_all(&subdir)?;
        for d in &list {
            let parent = subdir.join(&d.stateroot).join(&d.bootcsum);
            fsops::create_dir_all(&parent, 0o755)?;
            let target = format!("../../../deploy/{}/deploy/{}", d.stateroot, d.name());
            std::os::unix::fs::symlink(&target, parent.join(d.bootserial.to_string()))
                .with_context(|| format!("creating bootlink in {}", parent.display()))?;
        }
        fsops::symlink_replace(&subdir_name, &ostree.join(format!("boot.{nbv}")))?;
        if fs::symlink_metadata(boot.join("boot")).is_err() {
            std::os::unix::fs::symlink(".", boot.join("boot"))
                .with_context(|| format!("creating {}/boot", boot.display()))?;
        }
        // Deploy refs for the new list, before the switch: the new commits are protected from
        // pruning whichever way a crash goes.
        for (i, d) in list.iter().enumerate() {
            self.repo
                .set_ref(&format!("ostree/{nbv}/{nsbv}/{i}"), Some(&d.checksum))?;
        }

        before_switch(&Switch {
            deployments: &list,
            loader_dir: &loader_dir,
        })
        .context("preparing the switch to the new deployment")?;

        fsops::syncfs(&self.path)?;
        fsops::syncfs(&boot)?;
        // The commit point.
        fsops::symlink_replace(&format!("loader.{nbv}"), &boot.join("loader"))?;
        fsops::syncfs(&boot)?;

        let previous_booted = self.booted().cloned();
        self.bootversion = nbv;
        self.subbootversion = nsbv;
        self.deployments = list;
        self.booted =
            previous_booted.and_then(|b| self.deployments.iter().position(|d| d.same(&b)));
        // Other tools watch the mtime of ostree/deploy.
        let _ = filetime_now(&ostree.join("deploy"));
        Ok(())
    }

    fn install_kernel_and_entry(
        &self,
        d: &Deployment,
        index: usize,
        n: usize,
        bv: u32,
        show_stateroot: bool,
    ) -> Result<bls::Entry> {
        let root = self.deployment_dir(d);
        let files = kernel::find(&root)?;
        if files.bootcsum != d.bootcsum {
            bail!(
                "boot files of {} changed: bootcsum {} != {}",
                d.name(),
                files.bootcsum,
                d.bootcsum
            );
        }
        let bootdir_rel = format!("ostree/{}-{}", d.stateroot, d.bootcsum);
        let bootdir = self.path.join("boot").join(&bootdir_rel);
        fsops::create_dir_all(&bootdir, 0o755)?;
        fsops::install_file(&files.vmlinuz, &bootdir.join(files.vmlinuz_name()))?;
        if let Some(i) = &files.initramfs {
            fsops::install_file(i, &bootdir.join(files.initramfs_name()))?;
        }
        if let Some(dt) = &files.devicetree {
            fsops::install_file(dt, &bootdir.join(files.devicetree_name()))?;
        }

        let mut title = bls::os_pretty_name(&root);
        if let Some(v) = &d.version {
            if !title.contains(v.as_str()) {
                title.push(' ');
                title.push_str(v);
            }
        }
        if show_stateroot {
            title.push_str(&format!(" (ostree:{}:{index})", d.stateroot));
        } else {
            title.push_str(&format!(" (ostree:{index})"));
        }
        let bootlink = format!(
            "/ostree/boot.{bv}/{}/{}/{}",
            d.stateroot, d.bootcsum, d.bootserial
        );
        let mut options = d.kargs.clone();
        options.push(format!("ostree={bootlink}"));
        if files.initramfs.is_none() {
            options.push(format!(
                "init={bootlink}/usr/lib/ostree/ostree-prepare-root"
            ));
        }
        let mut e = bls::Entry::default();
        e.push("title", title);
        e.push("version", (n - index).to_string());
        e.push("options", options.join(" "));
        if files.devicetree.is_some() {
            e.push(
                "devicetree",
                format!("/{bootdir_rel}/{}", files.devicetree_name()),
            );
        }
        e.push("linux", format!("/{bootdir_rel}/{}", files.vmlinuz_name()));
        if files.initramfs.is_some() {
            e.push(
                "initrd",
                format!("/{bootdir_rel}/{}", files.initramfs_name()),
            );
        }
        Ok(e)
    }

    /// Remove what the current deployment list does not reference: deployment directories and
    /// origins, `/boot/ostree` directories, the other boot version's entries and bootlinks,
    /// stale deploy refs and image refs; then prune unreferenced objects.
    pub fn cleanup(&mut self) -> Result<CleanupStats> {
        self.cleanup_inner(true)
    }

    fn cleanup_inner(&mut self, prune: bool) -> Result<CleanupStats> {
        self.require_lock()?;
        let mut stats = CleanupStats::default();
        let (bv, sbv) = (self.bootversion, self.subbootversion);
        // Refs first (so prune sees exactly the deployed set).
        let want: Vec<(String, Checksum)> = self
            .deployments
            .iter()
            .enumerate()
            .map(|(i, d)| (format!("ostree/{bv}/{sbv}/{i}"), d.checksum))
            .collect();
        for (name, c) in &want {
            if self.repo.resolve_ref(name)? != Some(*c) {
                self.repo.set_ref(name, Some(c))?;
            }
        }
        for (name, _) in self.repo.list_refs(DEPLOY_REF_PREFIX)? {
            let is_deploy_ref = name.split('/').count() == 4;
            if is_deploy_ref && !want.iter().any(|(n, _)| *n == name) {
                self.repo.set_ref(&name, None)?;
            }
        }
        remove_empty_dirs(&self.repo.path().join("refs/heads/ostree"), false)?;
        if prune {
            let deployed: HashSet<Checksum> = self.deployments.iter().map(|d| d.checksum).collect();
            for (name, c) in self.repo.list_refs(IMAGE_REF_PREFIX)? {
                if !deployed.contains(&c) {
                    self.repo.set_ref(&name, None)?;
                }
            }
            // Recorded layers no deployed image uses.
            let mut layers = HashSet::new();
            let mut complete = true;
            for c in &deployed {
                match self.repo.read_commit(c) {
                    Ok(commit) => {
                        for (k, v) in &commit.metadata {
                            if let (true, MetaValue::StrArray(ids)) = (k == DIFF_IDS_KEY, v) {
                                layers
                                    .extend(ids.iter().filter_map(|d| crate::import::layer_ref(d)));
                            }
                        }
                    }
                    Err(e) => {
                        log::warn!(
                            "reading deployed commit {c}: {e:#}; keeping all recorded layers"
                        );
                        complete = false;
                    }
                }
            }
            if complete {
                for (name, _) in self.repo.list_refs(crate::import::LAYER_REF_PREFIX)? {
                    if !layers.contains(&name) {
                        self.repo.set_ref(&name, None)?;
                    }
                }
            }
            remove_empty_dirs(&self.repo.path().join("refs/heads/otter"), false)?;
        }

        // Other boot version, other sub boot version.
        fsops::remove_all(&self.path.join(format!("boot/loader.{}", 1 - bv)))?;
        let ostree = self.path.join("ostree");
        let keep = [format!("boot.{bv}"), format!("boot.{bv}.{sbv}")];
        for e in fs::read_dir(&ostree).with_context(|| format!("listing {}", ostree.display()))? {
            let e = e.with_context(|| format!("listing {}", ostree.display()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("boot.") && !keep.contains(&name) {
                fsops::remove_all(&e.path())?;
            }
        }

        // Deployment directories and origins.
        let referenced: HashSet<PathBuf> = self.deployments.iter().map(|d| d.rel_path()).collect();
        let deploy_root = ostree.join("deploy");
        for os in fs::read_dir(&deploy_root)
            .with_context(|| format!("listing {}", deploy_root.display()))?
        {
            let os = os.with_context(|| format!("listing {}", deploy_root.display()))?;
            let osname = os.file_name().to_string_lossy().into_owned();
            let dir = os.path().join("deploy");
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for e in rd {
                let e = e.with_context(|| format!("listing {}", dir.display()))?;
                let name = e.file_name().to_string_lossy().into_owned();
                let base = name.strip_suffix(".origin").unwrap_or(&name);
                let rel = PathBuf::from(format!("ostree/deploy/{osname}/deploy/{base}"));
                if referenced.contains(&rel) {
                    continue;
                }
                let is_deployment = parse_deployment_name(base).is_ok();
                let is_stale_tmp = name.starts_with('.');
                if !(is_deployment || is_stale_tmp) {
                    continue;
                }
                log::info!("removing deployment {osname}/{name}");
                fsops::remove_all(&e.path())?;
                if is_deployment && !name.ends_with(".origin") {
                    stats.deployments += 1;
                }
            }
        }

        // Boot files nobody references.
        let used: HashSet<String> = self
            .deployments
            .iter()
            .map(|d| format!("{}-{}", d.stateroot, d.bootcsum))
            .collect();
        let bootostree = self.path.join("boot/ostree");
        if let Ok(rd) = fs::read_dir(&bootostree) {
            for e in rd {
                let e = e.with_context(|| format!("listing {}", bootostree.display()))?;
                let name = e.file_name().to_string_lossy().into_owned();
                if !used.contains(&name) {
                    fsops::remove_all(&e.path())?;
                    stats.boot_dirs += 1;
                }
            }
        }
        if prune {
            stats.objects = self.repo.prune()?;
        }
        Ok(stats)
    }
}

/// Remove empty directories below `dir` (and `dir` itself if `remove_self`), e.g. ref
/// directories left behind by deleted refs.
fn remove_empty_dirs(dir: &Path, remove_self: bool) -> Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for e in rd {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_empty_dirs(&e.path(), true)?;
        }
    }
    if remove_self && fs::read_dir(dir).is_ok_and(|mut r| r.next().is_none()) {
        fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

fn filetime_now(p: &Path) -> Result<()> {
    let f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
    ];
    use std::os::fd::AsRawFd;
    // SAFETY: valid fd and two timespecs.
    let r = unsafe { libc::futimens(f.as_raw_fd(), times.as_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("touch {}", p.display()));
    }
    Ok(())
}

/// A stateroot name must be one path component ostree accepts.
pub fn validate_stateroot(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        bail!("invalid stateroot name {name:?}: use letters, digits, '-', '_', '.'");
    }
    Ok(())
}

fn read_bootversion(sysroot: &Path) -> Result<u32> {
    let p = sysroot.join("boot/loader");
    match fs::read_link(&p) {
        Ok(t) => match t.to_str() {
            Some("loader.0") => Ok(0),
            Some("loader.1") => Ok(1),
            _ => bail!(
                "{} points to {}, expected loader.0 or loader.1",
                p.display(),
                t.display()
            ),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).with_context(|| format!("{} is not a symlink", p.display())),
    }
}

fn read_subbootversion(sysroot: &Path, bv: u32) -> Result<u32> {
    let p = sysroot.join(format!("ostree/boot.{bv}"));
    match fs::read_link(&p) {
        Ok(t) => {
            let s = t.to_string_lossy();
            if s == format!("boot.{bv}.0") {
                Ok(0)
            } else if s == format!("boot.{bv}.1") {
                Ok(1)
            } else {
                bail!(
                    "{} points to {s}, expected boot.{bv}.0 or boot.{bv}.1",
                    p.display()
                )
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// `/ostree/boot.BV/STATEROOT/BOOTCSUM/SERIAL`
fn parse_ostree_arg(arg: &str) -> Result<(u32, String, String, u32)> {
    let parts: Vec<&str> = arg.split('/').collect();
    let bad = || anyhow!("malformed ostree={arg}: expected /ostree/boot.N/STATEROOT/BOOTCSUM/N");
    if parts.len() != 6 || !parts[0].is_empty() || parts[1] != "ostree" {
        return Err(bad());
    }
    let bv = match parts[2] {
        "boot.0" => 0,
        "boot.1" => 1,
        _ => return Err(bad()),
    };
    let serial = parts[5].parse::<u32>().map_err(|_| bad())?;
    Ok((bv, parts[3].to_owned(), parts[4].to_owned(), serial))
}

/// `CSUM.SERIAL`
fn parse_deployment_name(name: &str) -> Result<(Checksum, u32)> {
    let (c, s) = name
        .split_once('.')
        .ok_or_else(|| anyhow!("{name:?} is not CHECKSUM.SERIAL"))?;
    let serial = s
        .parse::<u32>()
        .map_err(|_| anyhow!("{name:?} is not CHECKSUM.SERIAL"))?;
    Ok((Checksum::from_hex(c)?, serial))
}

fn allocate_serial(deploy_dir: &Path, commit: &Checksum) -> Result<u32> {
    let mut next = 0;
    for e in
        fs::read_dir(deploy_dir).with_context(|| format!("listing {}", deploy_dir.display()))?
    {
        let e = e.with_context(|| format!("listing {}", deploy_dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let base = name.strip_suffix(".origin").unwrap_or(&name);
        if let Ok((c, s)) = parse_deployment_name(base) {
            if c == *commit {
                next = next.max(s + 1);
            }
        }
    }
    Ok(next)
}

/// Which deployment is running (see the module docs).
fn detect_booted(sysroot: &Path, deployments: &[Deployment]) -> Result<Option<usize>> {
    if let Ok(v) = std::env::var(BOOTED_ENV) {
        let v = v.trim();
        if v.is_empty() || v == "none" {
            return Ok(None);
        }
        let found = deployments
            .iter()
            .position(|d| v == d.name() || v == format!("{}/{}", d.stateroot, d.name()));
        return match found {
            Some(i) => Ok(Some(i)),
            None => bail!(
                "{BOOTED_ENV}={v} names no deployment of {} (expected CSUM.SERIAL or STATEROOT/CSUM.SERIAL)",
                sysroot.display()
            ),
        };
    }
    if !Path::new("/run/ostree-booted").exists() {
        return Ok(None);
    }
    let (Ok(root), Ok(sr)) = (fs::metadata("/"), fs::metadata(sysroot)) else {
        return Ok(None);
    };
    let is_root = fs::canonicalize(sysroot).is_ok_and(|p| p == Path::new("/"))
        || (root.dev() == sr.dev() && root.ino() == sr.ino());
    if !is_root {
        return Ok(None);
    }
    if let Ok(cmdline) = fs::read_to_string("/proc/cmdline") {
        if let Some(arg) = cmdline
            .split_whitespace()
            .find_map(|a| a.strip_prefix("ostree="))
        {
            let link = sysroot.join(arg.trim_start_matches('/'));
            if let Ok(t) = fs::read_link(&link) {
                let base = t
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if let Some(i) = deployments.iter().position(|d| d.name() == base) {
                    return Ok(Some(i));
                }
            }
        }
    }
    // Fall back to comparing the deployment roots with `/`.
    Ok(deployments.iter().position(|d| {
        fs::metadata(sysroot.join(d.rel_path()))
            .is_ok_and(|m| m.dev() == root.dev() && m.ino() == root.ino())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ostree_arg() {
        let (bv, os, bc, s) = parse_ostree_arg("/ostree/boot.1/testos/abc/0").unwrap();
        assert_eq!((bv, os.as_str(), bc.as_str(), s), (1, "testos", "abc", 0));
        assert!(parse_ostree_arg("/ostree/boot.2/testos/abc/0").is_err());
        assert!(parse_ostree_arg("/ostree/boot.1/testos/abc").is_err());
    }

    #[test]
    fn stateroot_names() {
        assert!(validate_stateroot("fedora-iot").is_ok());
        assert!(validate_stateroot("a/b").is_err());
        assert!(validate_stateroot("..").is_err());
        assert!(validate_stateroot("").is_err());
    }
}
