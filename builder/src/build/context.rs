//! The build context: the validated profile, the lock, and the workspace
//! paths (`root()`, `artifacts()`, `log()`), so that no stage invents its own.
//! Stages record what they did here for the report.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::cache::Cache;
use crate::lock::Lock;
use crate::mirror::Mirror;
use crate::profile::Profile;

/// One entry of `<name>.report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct StageRecord {
    pub stage: String,
    pub applied: bool,
    pub settings: serde_json::Value,
}

pub struct BuildContext {
    pub profile: Profile,
    pub lock: Lock,
    pub mirror: Mirror,
    pub cache: Cache,
    /// The clock of the build: every timestamp in the artifacts is at most this.
    pub source_date_epoch: i64,
    staging: crate::fsutil::OwnedTempDir,
    /// The image root and the intermediate files: in memory when there is
    /// room (`fsutil::memory_scratch_parent`), else beside the staging directory.
    tree: crate::fsutil::OwnedTempDir,
    log: PathBuf,
    pub records: Vec<StageRecord>,
    /// Files a stage took in besides the profile's (their digests), for the manifest.
    pub build_inputs: Vec<serde_json::Value>,
    /// Kernel command-line words that controls add to the profile's.
    pub kernel_cmdline_extra: Vec<String>,
    /// Where the accounts' initial passwords are read from and written to.
    pub secrets_file: SecretsFile,
    /// Initial passwords made or reused by the users stage, by account.
    pub secrets: Vec<(String, String)>,
    /// The site's Secure Boot keys, loaded before the first stage.
    pub keys: Option<crate::secureboot::keys::SiteKeys>,
}

/// Where initial passwords live: a file the user named, or the one in the
/// output directory (read from the previous build, written with the new).
#[derive(Debug, Clone)]
pub enum SecretsFile {
    Given(PathBuf),
    InOut(PathBuf),
}

impl SecretsFile {
    pub fn path(&self) -> &Path {
        match self {
            SecretsFile::Given(p) | SecretsFile::InOut(p) => p,
        }
    }
}

impl BuildContext {
    pub fn new(profile: Profile, lock: Lock, mirror: Mirror, cache: Cache, out: &Path, log: PathBuf) -> Result<BuildContext> {
        let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).with_context(|| format!("while creating {}", parent.display()))?;
        let staging = crate::fsutil::owned_tempdir(parent, &format!(".rampart-staging-{}-", profile.name))?;
        std::fs::create_dir_all(staging.path().join("artifacts"))?;
        let tree_parent = crate::fsutil::memory_scratch_parent().unwrap_or_else(|| parent.to_path_buf());
        let tree = crate::fsutil::owned_tempdir(&tree_parent, &format!(".rampart-tree-{}-", profile.name))?;
        std::fs::create_dir_all(tree.path().join("work"))?;
        let source_date_epoch = lock.source_date_epoch;
        let secrets_file = SecretsFile::InOut(out.join(format!("{}.secrets", profile.name)));
        Ok(BuildContext {
            profile,
            lock,
            mirror,
            cache,
            source_date_epoch,
            staging,
            tree,
            log,
            records: Vec::new(),
            build_inputs: Vec::new(),
            kernel_cmdline_extra: Vec::new(),
            secrets_file,
            secrets: Vec::new(),
            keys: None,
        })
    }

    /// The image's root file system tree.
    pub fn root(&self) -> PathBuf {
        self.tree.path().join("root")
    }

    /// Where finished artifacts are collected before they are published.
    pub fn artifacts(&self) -> PathBuf {
        self.staging.path().join("artifacts")
    }

    /// Scratch space for intermediate files (file system images, ...).
    pub fn work(&self) -> PathBuf {
        self.tree.path().join("work")
    }

    /// The tree of the read-only configuration partition (mounted at
    /// `layout::CONFIG_MOUNT`), split off the root before the disk is made.
    pub fn config_tree(&self) -> PathBuf {
        self.tree.path().join("config-partition")
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The path of an artifact: `<name>.<suffix>`.
    pub fn artifact(&self, suffix: &str) -> PathBuf {
        self.artifacts().join(format!("{}.{suffix}", self.profile.name))
    }

    /// Writes a root-owned file into the image, refusing paths that leave it.
    pub fn install_file(&self, image_path: &str, contents: &[u8], mode: u32) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let path = crate::fsutil::resolve_in_root(&self.root(), Path::new(image_path))?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            std::fs::remove_file(&path)?;
        }
        std::fs::write(&path, contents).with_context(|| format!("while writing {image_path} into the image"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        std::os::unix::fs::lchown(&path, Some(0), Some(0))?;
        Ok(())
    }

    /// Makes `image_path` a symlink to `target` inside the image.
    pub fn install_symlink(&self, image_path: &str, target: &str) -> Result<()> {
        let path = crate::fsutil::resolve_in_root(&self.root(), Path::new(image_path))?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if std::fs::symlink_metadata(&path).is_ok() {
            std::fs::remove_file(&path)?;
        }
        std::os::unix::fs::symlink(target, &path).with_context(|| format!("while linking {image_path} in the image"))?;
        Ok(())
    }

    /// A command run inside the image root (chroot), with the build's clock.
    pub fn in_root(&self, program: &str) -> crate::process::Cmd {
        crate::process::Cmd::new("chroot")
            .arg(self.root())
            .arg(program)
            .env("SOURCE_DATE_EPOCH", self.source_date_epoch.to_string())
    }

    /// As `in_root`, for a program that needs /proc: it runs in its own PID
    /// and mount namespaces with a private /proc at the root's, gone when
    /// it ends.
    pub fn in_root_with_proc(&self, program: &str) -> crate::process::Cmd {
        let mut proc_option = std::ffi::OsString::from("--mount-proc=");
        proc_option.push(self.root().join("proc"));
        crate::process::Cmd::new("unshare")
            .args(["--fork", "--pid"])
            .arg(proc_option)
            .arg("chroot")
            .arg(self.root())
            .arg(program)
            .env("SOURCE_DATE_EPOCH", self.source_date_epoch.to_string())
    }

    pub fn record(&mut self, stage: &str, applied: bool, settings: serde_json::Value) {
        self.records.push(StageRecord { stage: stage.to_string(), applied, settings });
    }

    /// The full kernel command line after the root= part: the profile's,
    /// then what controls added.
    pub fn kernel_cmdline(&self) -> String {
        let mut words: Vec<&str> = self.profile.kernel.cmdline.split_whitespace().collect();
        words.extend(self.kernel_cmdline_extra.iter().map(String::as_str));
        words.join(" ")
    }

    /// Writes the initial passwords, mode 0600 from the first byte: into the
    /// artifacts (published with them) or to the file the user named.
    pub fn write_secrets(&self) -> Result<()> {
        if self.secrets.is_empty() {
            return Ok(());
        }
        let mut text = format!(
            "# rampart: initial passwords of the accounts of image {}.\n# Keep this file off the image and away from logs; each account must\n# change its password at first login.\n",
            self.profile.name
        );
        let path = match &self.secrets_file {
            SecretsFile::Given(path) => path.clone(),
            SecretsFile::InOut(_) => self.artifact("secrets"),
        };
        // A file the user named may be shared by several profiles: keep the
        // other accounts' lines.
        let mut lines: Vec<(String, String)> = match &self.secrets_file {
            SecretsFile::Given(path) => crate::secrets::read(path)?,
            SecretsFile::InOut(_) => Vec::new(),
        };
        lines.retain(|(user, _)| !self.secrets.iter().any(|(ours, _)| ours == user));
        lines.extend(self.secrets.iter().cloned());
        for (user, password) in &lines {
            text.push_str(&format!("{user}:{password}\n"));
        }
        crate::fsutil::write_atomic_private(&path, text.as_bytes())
    }

    /// Moves the artifacts to `out`, replacing a previous rampart output
    /// there in one atomic exchange; the old one is removed with staging.
    /// A directory that is not rampart output is never replaced.
    pub fn publish(self, out: &Path) -> Result<()> {
        let artifacts = self.artifacts();
        if !out.exists() {
            std::fs::rename(&artifacts, out).with_context(|| format!("while publishing artifacts to {}", out.display()))?;
            return Ok(());
        }
        check_replaceable(out)?;
        exchange(&artifacts, out).with_context(|| format!("while publishing artifacts to {}", out.display()))
    }
}

/// `out` may be replaced by a build: it is absent, empty, or rampart output.
pub fn check_replaceable(out: &Path) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    let is_empty = std::fs::read_dir(out).map(|mut d| d.next().is_none()).unwrap_or(false);
    if !is_empty && !out.join("SHA256SUMS").exists() {
        anyhow::bail!(
            "refusing to replace {}: it is not a rampart output directory (no SHA256SUMS); choose another --out",
            out.display()
        );
    }
    Ok(())
}

/// Swaps two paths atomically (renameat2 with RENAME_EXCHANGE).
fn exchange(a: &Path, b: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let a = std::ffi::CString::new(a.as_os_str().as_bytes())?;
    let b = std::ffi::CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both are valid NUL-terminated paths.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

impl BuildContext {
    /// The site's Secure Boot keys (loaded by `build` before any stage).
    pub fn site_keys(&self) -> anyhow::Result<&crate::secureboot::keys::SiteKeys> {
        self.keys.as_ref().context("the site's Secure Boot keys were not loaded")
    }
}
