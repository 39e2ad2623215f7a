//! `rampart build`: the pipeline, read top to bottom. Each stage takes the
//! context and records what it did; outputs are made in staging and moved
//! into `--out` only when everything succeeded.

pub mod context;
pub mod html;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use sha2::{Digest, Sha256};

use crate::cache::Cache;
use crate::fsutil::{sha256_file, write_atomic};
use crate::lock::Lock;
use crate::mirror::Mirror;
use crate::profile::Profile;
use crate::{archive, baseline, fetch, lock, manifest, spdx, stages, ui};
use context::BuildContext;

pub struct BuildOptions {
    pub offline: bool,
    pub out: PathBuf,
    pub cache: PathBuf,
    /// Where the accounts' initial passwords are kept; `None`: `<out>/<name>.secrets`.
    pub secrets: Option<PathBuf>,
    /// The site's Secure Boot keys; `None`: `<out>/<name>.keys`.
    pub keys: Option<PathBuf>,
    /// Also make `<name>.installer.raw`, the offline installer.
    pub installer: bool,
    /// Build from this lock of the profile instead of PROFILE's .lock
    /// (which is neither read nor written).
    pub lock: Option<PathBuf>,
}

/// The operator's own files a build reads and keeps, never part of what ships.
pub struct OperatorFiles {
    pub secrets: Option<PathBuf>,
    pub keys: Option<PathBuf>,
}

/// The lock to build from: read it, or (online) make or refresh it.
pub fn ensure_lock(profile: &Profile, mirror: &Mirror, offline: bool, log: &Path, cache: &Cache) -> Result<Lock> {
    let path = profile.lock_path();
    if path.exists() {
        let existing = Lock::read(&path)?;
        if existing.is_current_for(profile) {
            return Ok(existing);
        }
        if offline {
            bail!(
                "{} is stale: the profile's package selection changed since it was locked; run `rampart lock {}` on a connected host",
                path.display(),
                profile.path.display()
            );
        }
        ui::step(&format!("{} is stale for the profile's package selection; re-locking", path.display()));
    } else if offline {
        bail!("offline build, but {} has no lock; run `rampart lock {}` on a connected host", profile.path.display(), profile.path.display());
    }
    let timer = ui::Timed::start(&format!("locking the package set of {}", profile.path.display()));
    let fresh = lock::resolve(profile, mirror, log, Some(cache))?;
    fresh.write(&path, profile.name.as_str())?;
    timer.done();
    Ok(fresh)
}

/// A digest of everything a build reads besides the package cache: rampart
/// itself (its executable), the mirror the image's apt sources name and
/// everything `content_digest` covers. `rampart test` rebuilds only when it
/// changes.
pub fn inputs_digest(profile: &Profile, mirror: &Mirror) -> Result<String> {
    inputs_digest_of(profile, mirror, &profile.lock_path())
}

fn inputs_digest_of(profile: &Profile, mirror: &Mirror, lock: &Path) -> Result<String> {
    let mut digest = LabelledDigest::new();
    // The program itself: a rampart that builds differently is another input.
    let program = std::env::current_exe().and_then(std::fs::read).context("while reading rampart's own executable")?;
    digest.add("rampart executable", &program);
    for source in mirror.sources() {
        digest.add("apt source", format!("{} {} {}", source.url, source.suite, source.components.join(" ")).as_bytes());
    }
    add_content_inputs(&mut digest, profile, lock)?;
    Ok(digest.finish())
}

/// A digest of what decides an image's content, read from the files alone:
/// rampart's version, the profile files, the lock and the overlay trees. It
/// may go into an artifact (it names the SPDX document) because, unlike
/// `inputs_digest`, it depends on neither the host's mirror nor the executable.
pub fn content_digest(profile: &Profile, lock: &Path) -> Result<String> {
    let mut digest = LabelledDigest::new();
    add_content_inputs(&mut digest, profile, lock)?;
    Ok(digest.finish())
}

fn add_content_inputs(digest: &mut LabelledDigest, profile: &Profile, lock: &Path) -> Result<()> {
    digest.add("rampart", env!("CARGO_PKG_VERSION").as_bytes());
    for file in &profile.files {
        digest.add("profile", &std::fs::read(file).with_context(|| format!("while reading {}", file.display()))?);
    }
    digest.add("lock", &std::fs::read(lock).with_context(|| format!("while reading {}", lock.display()))?);
    if let Some(dir) = profile.mail_gateway.virus_databases.as_ref().filter(|_| profile.mail_gateway.enable) {
        let files = stages::mail_gateway::signature_files(&dir.value).map_err(|e| anyhow::anyhow!("{}: mail-gateway.virus-databases: {e}", dir.at))?;
        for (name, path) in files {
            digest.add(&format!("virus database {name}"), &std::fs::read(&path).with_context(|| format!("while reading {}", path.display()))?);
        }
    }
    for tree in &profile.overlays {
        for entry in crate::tree::walk(&tree.dir)? {
            use std::os::unix::fs::MetadataExt;
            let content = match entry.kind {
                crate::tree::Kind::File => std::fs::read(&entry.host_path)?,
                crate::tree::Kind::Symlink => std::fs::read_link(&entry.host_path)?.into_os_string().into_encoded_bytes(),
                _ => Vec::new(),
            };
            digest.add(&format!("overlay {} {} {:o}", tree.name, entry.image_path, entry.meta.mode()), &content);
        }
    }
    Ok(())
}

/// sha256 over labelled, length-prefixed parts: no two sequences of parts
/// hash the same bytes.
struct LabelledDigest(Sha256);

impl LabelledDigest {
    fn new() -> Self {
        Self(Sha256::new())
    }

    fn add(&mut self, label: &str, bytes: &[u8]) {
        self.0.update((label.len() as u64).to_le_bytes());
        self.0.update(label.as_bytes());
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

/// Builds unless the artifacts in `options.out` were made from exactly these
/// inputs (and include the offline installer if it is asked for).
pub fn ensure_built(profile: &Profile, mirror: Mirror, options: &BuildOptions) -> Result<()> {
    let name = profile.name.as_str();
    let report_path = options.out.join(format!("{name}.report.json"));
    let has_installer = !options.installer || options.out.join(format!("{name}.installer.raw")).exists();
    let made = ["qcow2", "raw"].iter().all(|suffix| options.out.join(format!("{name}.{suffix}")).exists());
    if options.lock.is_none() && profile.lock_path().exists() && made && report_path.exists() && has_installer {
        let wanted = inputs_digest(profile, &mirror)?;
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report_path)?)?;
        if report["inputs-sha256"].as_str() == Some(wanted.as_str()) {
            ui::step(&format!("artifacts in {} are current; not rebuilding", options.out.display()));
            return Ok(());
        }
    }
    build(profile.clone(), mirror, options)
}

pub fn build(profile: Profile, mirror: Mirror, options: &BuildOptions) -> Result<()> {
    // Everything the profile names is checked before any work starts.
    stages::overlays::validate(&profile)?;
    crate::secureboot::require_host_tools()?;
    // Keys that exist are checked before any work starts too.
    let keys_at = KeysAt::new(options, profile.name.as_str())?;
    if keys_at.dir().exists() {
        crate::secureboot::keys::load_or_make(keys_at.dir(), profile.name.as_str())?;
    }
    context::check_replaceable(&options.out)?;
    let cache = Cache::open(&options.cache)?;
    if let Some(parent) = options.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("while creating {}", parent.display()))?;
    }
    let mut log_name = options.out.file_name().unwrap_or_default().to_os_string();
    log_name.push(".build.log");
    let log = options.out.with_file_name(log_name);
    std::fs::write(&log, "").with_context(|| format!("while creating {}", log.display()))?;
    ui::step(&format!("log: {}", log.display()));

    let (lock, lock_path) = match &options.lock {
        Some(path) => {
            let given = Lock::read(path)?;
            if !given.is_current_for(&profile) {
                bail!("{} is not a lock of {}'s package selection", path.display(), profile.path.display());
            }
            (given, path.clone())
        }
        None => (ensure_lock(&profile, &mirror, options.offline, &log, &cache)?, profile.lock_path()),
    };
    if options.offline {
        fetch::require_cached(&lock, &cache, &profile.path)?;
    } else {
        fetch::fetch(&lock, &mirror, &cache, &log)?;
    }

    let inputs = inputs_digest_of(&profile, &mirror, &lock_path)?;
    let content = content_digest(&profile, &lock_path)?;
    let mut ctx = BuildContext::new(profile, lock, mirror, cache, &options.out, log)?;
    ctx.secrets_file = match &options.secrets {
        Some(path) => context::SecretsFile::Given(path.clone()),
        None => context::SecretsFile::InOut(options.out.join(format!("{}.secrets", ctx.profile.name))),
    };
    ctx.keys = Some(keys_at.load(&ctx)?);
    type Stage = fn(&mut BuildContext) -> Result<()>;
    let pipeline: &[Stage] = &[
        stages::packages::run,
        stages::configure::run,
        stages::kernel::run,
        stages::wireless::run,
        stages::passwords::run,
        stages::users::run,
        stages::sessions::run,
        stages::firstboot::run,
        stages::encryption::run,
        stages::ssh::run,
        stages::time::run,
        stages::mail::run,
        stages::mail_gateway::run,
        stages::updates::run,
        stages::firewall::run,
        stages::gateway::run,
        stages::vpn::run,
        stages::logging::run,
        stages::accounting::run,
        stages::auditd::run,
        stages::integrity::run,
        stages::backups::run,
        stages::toolchain::run,
        stages::overlays::run,
        stages::auditd::after_overlays,
        stages::services::run,
        stages::sandboxing::run,
        stages::patching::run,
        stages::kernel::compile_apparmor_policy,
        stages::seal::run,
        stages::elf_audit::run,
        stages::integrity::seed_database,
        stages::config_partition::run,
    ];
    for stage in pipeline {
        // A signal between stages stops the build as one inside a command does.
        crate::process::check_interrupted()?;
        stage(&mut ctx)?;
    }
    write_artifacts(&mut ctx, &Digests { inputs, content }, options.installer)?;
    ctx.publish(&options.out)?;
    ui::step(&format!("artifacts in {}", options.out.display()));
    Ok(())
}

/// The build's digests of its inputs, taken before any stage ran.
struct Digests {
    /// `inputs_digest`: host-dependent, for `rampart test`'s rebuild decision.
    inputs: String,
    /// `content_digest`: from the files alone, names the SPDX document.
    content: String,
}

fn write_artifacts(ctx: &mut BuildContext, digests: &Digests, installer: bool) -> Result<()> {
    let timer = ui::Timed::start("writing artifacts");
    let name = ctx.profile.name.to_string();
    // The baseline: the root, the configuration partition at its mount
    // point, and (once the disk is made) its EFI system partition and table.
    let mut records = baseline::compute(&ctx.root())?;
    records.extend(baseline::at_mount_point(baseline::compute(&ctx.config_tree())?, crate::layout::CONFIG_MOUNT));
    let manifest = manifest::render(&ctx.profile, &ctx.lock, &ctx.build_inputs);
    write_atomic(&ctx.artifact("manifest.json"), format!("{:#}\n", manifest).as_bytes())?;
    let sbom = spdx::SbomInputs { image_name: &name, content_sha256: &digests.content };
    write_atomic(&ctx.artifact("spdx.json"), spdx::render(&sbom, &ctx.lock).as_bytes())?;

    let root = ctx.root();
    let config_tree = ctx.config_tree();
    let archive_path = ctx.artifact("rootfs.tar.gz");
    let etc_archive_path = ctx.artifact("etc.tar.gz");
    // The archives and the disk are independent; make them side by side.
    let archive_thread = std::thread::spawn(move || {
        archive::write_rootfs_archive(&root, &archive_path)?;
        archive::write_etc_archive(&root, &config_tree, &etc_archive_path)
    });
    let disk_result = stages::disk::run(ctx);
    archive_thread.join().map_err(|_| anyhow::anyhow!("the archive writer panicked"))??;
    disk_result?;
    records.extend(crate::verify::disk_records(&ctx.artifact("raw")).context("while reading the disk back for its baseline")?);
    records.sort_by(|a, b| a.path.cmp(&b.path));
    write_atomic(&ctx.artifact("baseline"), baseline::render(&name, &records).as_bytes())?;
    if installer {
        stages::installer::run(ctx)?;
    }

    let report = serde_json::json!({
        "format": "rampart-report-v1",
        "image": name,
        "profile": ctx.profile.path.file_name().map(|n| n.to_string_lossy().into_owned()),
        "source-date-epoch": ctx.source_date_epoch,
        "inputs-sha256": digests.inputs,
        "stages": ctx.records,
    });
    write_atomic(&ctx.artifact("report.json"), format!("{:#}\n", report).as_bytes())?;
    write_sums(&ctx.artifacts())?;
    html::write(&ctx.artifacts(), &name).context("while writing the HTML report")?;
    ctx.write_secrets()?;
    timer.done();
    Ok(())
}

/// Where the site's Secure Boot keys are kept: a directory of the
/// operator's (`--keys`), or `<out>/<name>.keys` beside the previous build's
/// artifacts, carried into the new ones (the output directory is replaced
/// whole by each build).
enum KeysAt {
    Given(PathBuf),
    InOut(PathBuf),
}

impl KeysAt {
    fn new(options: &BuildOptions, name: &str) -> Result<KeysAt> {
        let in_out = options.out.join(format!("{name}.{KEYS_SUFFIX}"));
        match &options.keys {
            Some(dir) if *dir != in_out => {
                let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
                if absolute(dir).starts_with(absolute(&options.out)) {
                    bail!("--keys {}: the keys must live outside --out {}, which each build replaces; leave --keys out to keep them at {}", dir.display(), options.out.display(), in_out.display());
                }
                Ok(KeysAt::Given(dir.clone()))
            }
            _ => Ok(KeysAt::InOut(in_out)),
        }
    }

    fn dir(&self) -> &Path {
        match self {
            KeysAt::Given(dir) | KeysAt::InOut(dir) => dir,
        }
    }

    /// Loads the keys (made on first use); kept ones are carried into the artifacts.
    fn load(&self, ctx: &BuildContext) -> Result<crate::secureboot::keys::SiteKeys> {
        use crate::secureboot::keys;
        let name = ctx.profile.name.as_str();
        let previous = match self {
            KeysAt::Given(dir) => return keys::load_or_make(dir, name),
            KeysAt::InOut(previous) => previous,
        };
        let carried = ctx.artifact(KEYS_SUFFIX);
        if previous.exists() {
            keys::copy_dir(previous, &carried)?;
        }
        let loaded = keys::load_or_make(&carried, name)?;
        if loaded.made {
            ui::step(&format!("made new Secure Boot keys (PK, KEK, db): {}; keep them with the secrets file", previous.display()));
        }
        Ok(loaded)
    }
}

/// `<name>.keys`: the site keys' directory among the artifacts.
pub const KEYS_SUFFIX: &str = "keys";

/// SHA256SUMS over every artifact, in name order, `sha256sum -c` compatible.
fn write_sums(dir: &Path) -> Result<()> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    // The secrets file and the keys stay with the operator; they are no part of what ships.
    names.retain(|n| n != "SHA256SUMS" && !n.ends_with(".secrets") && !n.ends_with(&format!(".{KEYS_SUFFIX}")));
    names.sort();
    // One thread per artifact: the disk images dominate.
    let digests: Vec<Result<String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = names.iter().map(|name| scope.spawn(move || sha256_file(&dir.join(name)))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a digest thread panicked")))).collect()
    });
    let mut text = String::new();
    for (name, digest) in names.iter().zip(digests) {
        text.push_str(&format!("{}  {}\n", digest?, name));
    }
    write_atomic(&dir.join("SHA256SUMS"), text.as_bytes())
}
