//! The command line: argument types (clap) and the thin dispatch from each
//! command to the module that does the work. No work happens here.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::build::{self, BuildOptions};
use crate::cache::{Cache, DEFAULT_CACHE};
use crate::lock::{self, Lock};
use crate::mirror::{self, Mirror};
use crate::profile::{self, Profile};
use crate::vmtest::qemu::AccelChoice;
use crate::vmtest::{self, TestOptions};
use crate::{bundle, fetch, ui};

#[derive(Debug, Parser)]
#[command(name = "rampart", version, about = "Build hardened, bootable Debian 12 images offline and prove them in QEMU")]
pub struct Cli {
    /// Print warnings and errors only: no step lines, spinners or bars
    #[arg(long, short, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Also print every command rampart runs, with its wall time
    #[arg(long, short, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Resolve the profile's complete package set and write PROFILE's .lock next to it
    Lock {
        /// The profile file (profiles/NAME.toml)
        profile: PathBuf,
        /// Re-resolve even if the lock is current, and show what changed
        #[arg(long)]
        update: bool,
        /// Package cache where the signed indices the lock is resolved from are kept (for bundles)
        #[arg(long, default_value = DEFAULT_CACHE)]
        cache: PathBuf,
        /// Debian mirror URL, overriding the profile and the host's apt sources
        #[arg(long)]
        mirror: Option<String>,
    },
    /// Download every locked .deb into the cache, verifying signature and digests
    Fetch {
        /// The profile file (profiles/NAME.toml)
        profile: PathBuf,
        /// Content-addressed package cache, shared by every profile and run
        #[arg(long, default_value = DEFAULT_CACHE)]
        cache: PathBuf,
        /// Debian mirror URL, overriding the profile and the host's apt sources
        #[arg(long)]
        mirror: Option<String>,
    },
    /// Compare the lock with the mirror: packages with newer versions, security updates first
    /// (the signal to rebuild the golden image); the lock is left alone
    Outdated {
        /// The profile file (profiles/NAME.toml)
        profile: PathBuf,
        /// Compare a machine's packages with the lock instead of the lock with the mirror: FILE
        /// is what `rampart-patch --report` (dpkg-query -W) printed on it; lists the security
        /// updates it lacks first. Needs no network
        #[arg(long, value_name = "FILE")]
        installed: Option<PathBuf>,
        /// Debian mirror URL, overriding the profile and the host's apt sources
        #[arg(long)]
        mirror: Option<String>,
        /// Print the findings as one JSON object on standard output
        #[arg(long)]
        json: bool,
    },
    /// Build the image and its artifacts (locks and fetches first unless --offline)
    Build {
        /// The profile file; with --bundle optional, and if given it must be the bundle's
        #[arg(required_unless_present = "bundle")]
        profile: Option<PathBuf>,
        /// Use the cache alone; the package stage runs with the network cut
        #[arg(long)]
        offline: bool,
        /// Build offline from a bundle made by `rampart bundle`: verified whole before anything
        /// is built, its .debs put into the cache, its profile, lock and mirror used
        #[arg(long, conflicts_with = "mirror")]
        bundle: Option<PathBuf>,
        /// With --bundle: the bundle file's sha256 as `rampart bundle` printed it, carried by a
        /// channel you trust; checked before anything else is read from the bundle
        #[arg(long, requires = "bundle", value_name = "HEX")]
        sha256: Option<String>,
        /// Output directory [default: out/<profile-name>]
        #[arg(long)]
        out: Option<PathBuf>,
        /// Content-addressed package cache, shared by every profile and run
        #[arg(long, default_value = DEFAULT_CACHE)]
        cache: PathBuf,
        /// Debian mirror URL, overriding the profile and the host's apt sources
        #[arg(long)]
        mirror: Option<String>,
        /// The accounts' initial passwords (0600): reused if the file exists, else made and written there
        /// [default: <out>/<name>.secrets, reused from the previous build]
        #[arg(long)]
        secrets: Option<PathBuf>,
        /// The site's Secure Boot keys (PK, KEK, db; a directory only root reads): reused if it
        /// exists, else made there [default: <out>/<name>.keys, reused from the previous build]
        #[arg(long)]
        keys: Option<PathBuf>,
        /// Also make <name>.installer.raw: boots, writes the image to the profile's installer.target
        /// (or the only empty disk), grows it and powers off
        #[arg(long)]
        installer: bool,
    },
    /// Write one archive with everything an air-gapped host needs to build the profile:
    /// the profile and what it extends, its overlays, its lock, every locked .deb, the archive keyring
    Bundle {
        /// The profile file (profiles/NAME.toml)
        profile: PathBuf,
        /// The bundle file to write (a tar archive)
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// Content-addressed package cache, shared by every profile and run
        #[arg(long, default_value = DEFAULT_CACHE)]
        cache: PathBuf,
        /// Debian mirror URL, overriding the profile and the host's apt sources
        #[arg(long)]
        mirror: Option<String>,
    },
    /// Make an offline patch medium that brings machines installed from the image of OLD.lock
    /// to the profile's current lock: its changed packages as an apt repository, the new signed
    /// boot image, all sealed with the site's archive key; `rampart-patch DEVICE` applies it
    Patch {
        /// The profile file (profiles/NAME.toml); its current lock is the one patched to
        profile: PathBuf,
        /// The lock the machines run (the lock their image was built from)
        #[arg(long, value_name = "OLD.lock")]
        from: PathBuf,
        /// The medium to write (a GPT disk image: write it to a USB stick or attach it as a disk)
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// The build of the current lock, made there if it is not current [default: out/<profile-name>]
        #[arg(long)]
        out: Option<PathBuf>,
        /// Build (if needed) from the cache alone
        #[arg(long)]
        offline: bool,
        /// Content-addressed package cache, shared by every profile and run
        #[arg(long, default_value = DEFAULT_CACHE)]
        cache: PathBuf,
        /// Debian mirror URL, overriding the profile and the host's apt sources
        #[arg(long)]
        mirror: Option<String>,
        /// The site's keys (the db key signs the boot image, the archive key the medium)
        /// [default: <out>/<name>.keys]
        #[arg(long)]
        keys: Option<PathBuf>,
    },
    /// Check a disk image (raw or qcow2) against the baseline of its build, without booting
    /// it: lists added, removed and changed files; exit 0 only if none
    Verify {
        /// The disk image to check (<name>.raw or <name>.qcow2)
        image: PathBuf,
        /// The <name>.baseline written by the build
        #[arg(long)]
        baseline: PathBuf,
        /// Print the differences as one JSON object on standard output (exit status as without)
        #[arg(long)]
        json: bool,
    },
    /// Build if needed, boot the image in QEMU and run the profile's vm-tests scenarios
    Test {
        /// The profile file (profiles/NAME.toml); without it, --list and --shard take every
        /// scenario in ./vm-tests
        profile: Option<PathBuf>,
        /// Run only this scenario (vm-tests/NAME.toml) [default: every scenario of the profile]
        #[arg(long)]
        scenario: Option<String>,
        /// Print the profile × scenario pairs (with --shard, that share's) and their last
        /// durations instead of running them
        #[arg(long)]
        list: bool,
        /// With --list: one JSON array on standard output
        #[arg(long, requires = "list")]
        json: bool,
        /// Run (or list) share I of N of the pairs, balanced by their last durations (the
        /// JUnit reports in out/<profile-name>/): the N CI jobs of a matrix each take one
        #[arg(long, value_name = "I/N", conflicts_with = "scenario")]
        shard: Option<vmtest::plan::Shard>,
        #[command(flatten)]
        machine: MachineArgs,
    },
    /// Build if needed, boot the image in QEMU and audit it from inside with Lynis (from the
    /// lock, on a read-only disk of its own): writes <name>.audit.json, the Lynis report and
    /// log; exit 1 below the minimum hardening index
    Audit {
        /// The profile file (profiles/NAME.toml)
        profile: PathBuf,
        /// Fail below this Lynis hardening index (0-100) [default: the profile's audit.min-index]
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
        min_index: Option<u8>,
        #[command(flatten)]
        machine: MachineArgs,
    },
    /// Start a site profile: write profiles/NAME.toml (extending BASE, with the sections a site
    /// usually sets commented out) and vm-tests/NAME.toml, a scenario that passes `rampart test` as written
    New {
        /// The new profile's name (lower-case letters, digits and '-')
        name: String,
        /// The profile it extends, by name (profiles/BASE.toml)
        #[arg(long, value_name = "BASE", default_value = "baseline")]
        extends: String,
        /// The directory holding profiles/ and vm-tests/
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
    },
    /// Print the shell completion script for SHELL on standard output
    /// (e.g. `rampart completions bash > /etc/bash_completion.d/rampart`)
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the manual pages, rampart(1) and one per command (rampart-build(1), ...), into DIR
    Man {
        /// The directory (made if missing), e.g. /usr/local/share/man/man1
        dir: PathBuf,
    },
}

/// The options of the commands that build if needed and boot the image (test, audit).
#[derive(Debug, clap::Args)]
pub struct MachineArgs {
    /// Output directory [default: out/<profile-name>]
    #[arg(long)]
    out: Option<PathBuf>,
    /// Acceleration: auto probes KVM with a time limit and falls back to TCG
    #[arg(long, value_enum, default_value = "auto")]
    accel: AccelChoice,
    /// vCPUs per machine; one lets two runs share a two-core host without
    /// oversubscribing it
    #[arg(long, env = "RAMPART_VCPUS", default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=64))]
    vcpus: u8,
    /// Build (and, for audit, find Lynis) from the cache alone
    #[arg(long)]
    offline: bool,
    /// Content-addressed package cache, shared by every profile and run
    #[arg(long, default_value = DEFAULT_CACHE)]
    cache: PathBuf,
    /// Debian mirror URL, overriding the profile and the host's apt sources
    #[arg(long)]
    mirror: Option<String>,
}

pub fn run(cli: Cli) -> Result<i32> {
    // A signal stops what rampart started (each command's whole process
    // group) and lets the work directories go with their owners.
    crate::process::stop_on_signals()?;
    ui::set_verbosity(match (cli.quiet, cli.verbose) {
        (true, _) => ui::Verbosity::Quiet,
        (_, true) => ui::Verbosity::Verbose,
        _ => ui::Verbosity::Normal,
    });
    match cli.command {
        Command::New { name, extends, dir } => {
            let created = crate::scaffold::create(&dir, &name, &extends)?;
            ui::step(&format!("wrote {} (extends {extends}) and {}", created.profile.display(), created.scenario.display()));
            ui::step(&format!("next: rampart lock {0} && rampart test {0}", created.profile.display()));
        }
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "rampart", &mut std::io::stdout());
        }
        Command::Man { dir } => {
            let pages = crate::manual::pages()?;
            std::fs::create_dir_all(&dir).with_context(|| format!("while making {}", dir.display()))?;
            for (name, page) in &pages {
                crate::fsutil::write_atomic(&dir.join(name), page).with_context(|| format!("while writing {}", dir.join(name).display()))?;
            }
            ui::step(&format!("{} manual pages in {}", pages.len(), dir.display()));
        }
        Command::Lock { profile, update, cache, mirror } => {
            let profile = load(&profile)?;
            let mirror = resolve_mirror(&profile, mirror.as_deref())?;
            run_lock(&profile, &mirror, update, &cache)?;
        }
        Command::Verify { image, baseline, json } => {
            crate::process::require_programs(&[("qemu-img", "qemu-utils"), ("sfdisk", "fdisk")])?;
            let differences = crate::verify::verify(&image, &baseline)?;
            if json {
                println!("{:#}", differences.to_json(&image, &baseline));
            } else {
                for path in &differences.added {
                    println!("added    {path}");
                }
                for path in &differences.removed {
                    println!("removed  {path}");
                }
                for (path, what) in &differences.changed {
                    println!("changed  {path}: {}", what.join(", "));
                }
            }
            if !differences.is_empty() {
                anyhow::bail!(
                    "{} does not match {}: {} changed, {} added, {} removed",
                    image.display(),
                    baseline.display(),
                    differences.changed.len(),
                    differences.added.len(),
                    differences.removed.len()
                );
            }
            ui::step(&format!("{} matches {}", image.display(), baseline.display()));
        }
        Command::Outdated { profile, installed: Some(installed), mirror: _, json } => {
            let profile = load(&profile)?;
            run_outdated_installed(&profile, &installed, json)?;
        }
        Command::Outdated { profile, installed: None, mirror, json } => {
            let profile = load(&profile)?;
            let mirror = resolve_mirror(&profile, mirror.as_deref())?;
            run_outdated(&profile, &mirror, json)?;
        }
        Command::Fetch { profile, cache, mirror } => {
            let profile = load(&profile)?;
            let mirror = resolve_mirror(&profile, mirror.as_deref())?;
            let cache = Cache::open(&cache)?;
            let summary = with_private_log("fetch", |log| {
                let lock = build::ensure_lock(&profile, &mirror, false, log, &cache)?;
                fetch::fetch(&lock, &mirror, &cache, log)
            })?;
            ui::step(&format!(
                "{} packages verified in {} ({} downloaded, {} damaged entries replaced)",
                summary.n_packages,
                cache.root().display(),
                summary.n_downloaded,
                summary.n_damaged
            ));
        }
        Command::Build { profile, offline, bundle: Some(bundle), sha256, out, cache, secrets, keys, mirror: _, installer } => {
            if offline {
                ui::step("--bundle builds offline in any case");
            }
            run_build_from_bundle(&bundle, sha256.as_deref(), profile.as_deref(), out, &cache, build::OperatorFiles { secrets, keys }, installer)?;
        }
        Command::Build { profile, offline, bundle: None, sha256: _, out, cache, mirror, secrets, keys, installer } => {
            let profile = load(&profile.expect("clap requires a profile without --bundle"))?;
            let mirror = resolve_mirror(&profile, mirror.as_deref())?;
            let out = out.unwrap_or_else(|| default_out(&profile));
            build::build(profile, mirror, &BuildOptions { offline, out, cache, secrets, keys, installer, lock: None })?;
        }
        Command::Bundle { profile, output, cache, mirror } => {
            let profile = load(&profile)?;
            let mirror = resolve_mirror(&profile, mirror.as_deref())?;
            run_bundle(&profile, &mirror, &output, &cache)?;
        }
        Command::Patch { profile, from, output, out, offline, cache, mirror, keys } => {
            let profile = load(&profile)?;
            let mirror = resolve_mirror(&profile, mirror.as_deref())?;
            let out = out.unwrap_or_else(|| default_out(&profile));
            crate::patch::make(profile, mirror, &crate::patch::PatchOptions { from, output, out, cache, offline, keys })?;
        }
        Command::Test { profile, scenario, list, json, shard, machine } if list || shard.is_some() => {
            run_pairs(profile.as_deref(), scenario.is_some(), list, json, shard, machine)?;
        }
        Command::Test { profile: None, .. } => {
            anyhow::bail!("rampart test: give a PROFILE, or --list or --shard I/N for every scenario in ./vm-tests");
        }
        Command::Test { profile: Some(profile), scenario, machine, .. } => {
            let profile = load(&profile)?;
            let mirror = resolve_mirror(&profile, machine.mirror.as_deref())?;
            let out = machine.out.unwrap_or_else(|| default_out(&profile));
            vmtest::run(profile, mirror, &TestOptions { scenario, out, cache: machine.cache, accel: machine.accel, vcpus: machine.vcpus, offline: machine.offline })?;
        }
        Command::Audit { profile, min_index, machine } => {
            let profile = load(&profile)?;
            let mirror = resolve_mirror(&profile, machine.mirror.as_deref())?;
            let out = machine.out.unwrap_or_else(|| default_out(&profile));
            vmtest::audit::run(profile, mirror, &vmtest::audit::AuditOptions { out, cache: machine.cache, accel: machine.accel, vcpus: machine.vcpus, offline: machine.offline, min_index })?;
        }
    }
    Ok(0)
}

fn load(path: &Path) -> Result<Profile> {
    Ok(profile::load(path)?)
}

fn resolve_mirror(profile: &Profile, cli_mirror: Option<&str>) -> Result<Mirror> {
    let host = mirror::host_sources()?;
    mirror::resolve(&profile.mirror, cli_mirror, &host).with_context(|| format!("while choosing the mirror for {}", profile.path.display()))
}

/// Runs `work` with a log file of an unpredictable name for the tools it
/// runs: removed when the work succeeds, kept for the user to read when it
/// fails (a failed tool's error names it).
pub(crate) fn with_private_log<T>(command: &str, work: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let file = tempfile::Builder::new().prefix(&format!("rampart-{command}-")).suffix(".log").tempfile()?;
    let result = work(file.path());
    if result.is_err() && file.as_file().metadata().is_ok_and(|m| m.len() > 0) {
        // The command's own error is the one to report, whatever happens here.
        match file.keep() {
            Ok((_, path)) => ui::step(&format!("the log of `rampart {command}` is kept in {}", path.display())),
            Err(error) => ui::step(&format!("the log of `rampart {command}` could not be kept: {error}")),
        }
    }
    result
}

pub fn default_out(profile: &Profile) -> PathBuf {
    PathBuf::from("out").join(profile.name.as_str())
}

/// `rampart test --list` and `--shard`: the pairs of ./vm-tests (or of the
/// profile's scenario directory), listed, or the share's run one by one,
/// each in its profile's default output directory.
fn run_pairs(profile: Option<&Path>, scenario: bool, list: bool, json: bool, shard: Option<vmtest::plan::Shard>, machine: MachineArgs) -> Result<()> {
    if scenario {
        anyhow::bail!("rampart test: --scenario runs one scenario of a PROFILE; --list and --shard take them all");
    }
    if !list && machine.out.is_some() {
        anyhow::bail!("rampart test --shard: each profile's results go to out/<profile-name>; --out names one directory");
    }
    let dir = match profile {
        Some(path) => vmtest::scenario_dir(&load(path)?),
        None => PathBuf::from("vm-tests"),
    };
    let last = |profile: &Path, scenario: &str| -> Option<f64> {
        let report = default_out(&profile::load(profile).ok()?).join(format!("{scenario}.junit.xml"));
        vmtest::plan::junit_seconds(&std::fs::read_to_string(report).ok()?)
    };
    let all = vmtest::plan::pairs(&dir, profile, last)?;
    let chosen = match shard {
        Some(shard) => vmtest::plan::share(&all, shard),
        None => all,
    };
    if list {
        if json {
            println!("{:#}", serde_json::Value::Array(chosen.iter().map(|p| p.to_json()).collect()));
        } else {
            for pair in &chosen {
                let last = pair.last_seconds.map_or("no report yet".to_string(), |s| format!("last {s:.0} s"));
                println!("{} {} ({last})", pair.profile.display(), pair.scenario);
            }
        }
        return Ok(());
    }
    let mut failed = Vec::new();
    for pair in &chosen {
        ui::step(&format!("shard: {} --scenario {}", pair.profile.display(), pair.scenario));
        let profile = load(&pair.profile)?;
        let mirror = resolve_mirror(&profile, machine.mirror.as_deref())?;
        let options = TestOptions { scenario: Some(pair.scenario.clone()), out: default_out(&profile), cache: machine.cache.clone(), accel: machine.accel, vcpus: machine.vcpus, offline: machine.offline };
        if let Err(error) = vmtest::run(profile, mirror, &options) {
            crate::process::check_interrupted()?;
            ui::step(&format!("{} --scenario {}: {error:#}", pair.profile.display(), pair.scenario));
            failed.push(format!("{} {}", pair.profile.display(), pair.scenario));
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("{} of {} scenarios of this share failed: {}", failed.len(), chosen.len(), failed.join(", "));
    }
    Ok(())
}

fn run_outdated(profile: &Profile, mirror: &Mirror, json: bool) -> Result<()> {
    let path = profile.lock_path();
    let locked = read_existing_lock(profile)?;
    let fresh = with_private_log("outdated", |log| lock::resolve(profile, mirror, log, None))?;
    let updates = lock::outdated(&locked, &fresh);
    let n_security = updates.iter().filter(|u| u.security).count();
    let added_or_dropped: Vec<String> =
        lock::describe_changes(&locked, &fresh).into_iter().filter(|l| !l.starts_with('~')).collect();
    if json {
        let report = serde_json::json!({
            "lock": path,
            "compared-with": "mirror",
            "updates": updates.iter().map(update_json).collect::<Vec<_>>(),
            "other-differences": added_or_dropped,
        });
        println!("{report:#}");
        return Ok(());
    }
    print_updates(&updates, ["security updates", "other updates"]);
    if !added_or_dropped.is_empty() {
        println!("other differences ({}):", added_or_dropped.len());
        for line in &added_or_dropped {
            println!("  {line}");
        }
    }
    if updates.is_empty() && added_or_dropped.is_empty() {
        ui::step(&format!("{} is up to date with the mirror ({} packages)", path.display(), locked.packages.len()));
    } else {
        ui::step(&format!(
            "{} packages have newer versions ({n_security} from the security suite); run `rampart lock --update {}` and rebuild",
            updates.len(),
            profile.path.display()
        ));
    }
    Ok(())
}

/// The profile's lock, which must exist.
fn read_existing_lock(profile: &Profile) -> Result<Lock> {
    let path = profile.lock_path();
    if !path.exists() {
        anyhow::bail!("{} has no lock ({}); run `rampart lock {}` first", profile.path.display(), path.display(), profile.path.display());
    }
    Lock::read(&path)
}

fn update_json(update: &lock::Update) -> serde_json::Value {
    serde_json::json!({ "name": update.name, "locked": update.locked, "available": update.available, "security": update.security })
}

/// Updates under two headings: security ones first, then the others.
fn print_updates(updates: &[lock::Update], headings: [&str; 2]) {
    for (heading, security) in [(headings[0], true), (headings[1], false)] {
        let group: Vec<&lock::Update> = updates.iter().filter(|u| u.security == security).collect();
        if group.is_empty() {
            continue;
        }
        println!("{heading} ({}):", group.len());
        for update in group {
            println!("  {} {} -> {}", update.name, update.locked, update.available);
        }
    }
}

/// What a machine lacks against the profile's lock, from its package report.
fn run_outdated_installed(profile: &Profile, installed: &Path, json: bool) -> Result<()> {
    let text = std::fs::read_to_string(installed).with_context(|| format!("while reading --installed {}", installed.display()))?;
    let machine = lock::parse_installed(&text, &installed.display().to_string())?;
    let path = profile.lock_path();
    let locked = read_existing_lock(profile)?;
    let lacking = lock::outdated(&machine, &locked);
    let n_security = lacking.iter().filter(|u| u.security).count();
    let changes = lock::describe_changes(&machine, &locked);
    let missing: Vec<&String> = changes.iter().filter(|l| l.starts_with('+')).collect();
    let extra: Vec<&String> = changes.iter().filter(|l| l.starts_with('-')).collect();
    if json {
        let names = |lines: &[&String]| lines.iter().map(|l| l[2..].to_string()).collect::<Vec<_>>();
        let report = serde_json::json!({
            "lock": path,
            "compared-with": installed,
            "lacking": lacking.iter().map(update_json).collect::<Vec<_>>(),
            "not-installed": names(&missing),
            "not-in-the-lock": names(&extra),
        });
        println!("{report:#}");
        return Ok(());
    }
    print_updates(&lacking, ["security updates the machine lacks", "other versions that differ from the lock"]);
    for (heading, lines) in [("in the lock, not installed", &missing), ("installed, not in the lock", &extra)] {
        if !lines.is_empty() {
            println!("{heading} ({}):", lines.len());
            for line in lines {
                println!("  {}", &line[2..]);
            }
        }
    }
    if lacking.is_empty() && missing.is_empty() {
        ui::step(&format!("{} runs every package of {} at its locked version", installed.display(), path.display()));
    } else {
        ui::step(&format!(
            "{} lacks {n_security} security updates of {}, {} other versions differ, {} packages are missing; bring it a medium made by `rampart patch`",
            installed.display(),
            path.display(),
            lacking.len() - n_security,
            missing.len()
        ));
    }
    Ok(())
}

fn run_bundle(profile: &Profile, mirror: &Mirror, output: &Path, cache: &Path) -> Result<()> {
    crate::stages::overlays::validate(profile)?;
    let cache = Cache::open(cache)?;
    // As an online build does: lock if needed, fetch what the cache lacks.
    let lock = with_private_log("bundle", |log| {
        let lock = build::ensure_lock(profile, mirror, false, log, &cache)?;
        fetch::fetch(&lock, mirror, &cache, log)?;
        fetch::ensure_indices(&lock, mirror, &cache, log)?;
        Ok(lock)
    })?;
    let timer = ui::Timed::start(&format!("bundling {} with {} packages", profile.path.display(), lock.packages.len()));
    let manifest = bundle::write(profile, mirror, &lock, &cache, output)?;
    timer.done();
    let bytes = std::fs::metadata(output)?.len();
    ui::step(&format!(
        "wrote {} ({} members, {:.1} MB, sha256 {}); carry that digest to the air-gapped host by a channel you trust",
        output.display(),
        manifest.members.len() + 1,
        bytes as f64 / 1e6,
        crate::fsutil::sha256_file(output)?
    ));
    Ok(())
}

/// `build --bundle`: the file's digest if given, then the whole bundle
/// against its manifest, the given profile against the bundle's, the lock
/// against the archive's signature (`bundle::signed`), the .debs against the
/// lock as they go into the cache; then the normal offline build.
fn run_build_from_bundle(
    bundle_path: &Path,
    sha256: Option<&str>,
    given: Option<&Path>,
    out: Option<PathBuf>,
    cache: &Path,
    operator: build::OperatorFiles,
    installer: bool,
) -> Result<()> {
    if let Some(expected) = sha256 {
        bundle::check_digest(bundle_path, expected)?;
    }
    let manifest = bundle::read_manifest(bundle_path)?;
    if let Some(given) = given {
        let profile = load(given)?;
        let (_, inputs) = bundle::profile_inputs(&profile)?;
        let members: Vec<bundle::Member> = inputs.into_iter().map(|p| p.member).collect();
        bundle::check_same_profile(&manifest, profile.name.as_str(), &members, given)
            .with_context(|| format!("bundle {} refused for {}", bundle_path.display(), given.display()))?;
    }
    // Checked before the cache is touched: the bundle's name decides the default.
    let out = out.unwrap_or_else(|| PathBuf::from("out").join(&manifest.profile_name));
    build::context::check_replaceable(&out)?;
    let cache = Cache::open(cache)?;
    let timer = ui::Timed::start(&format!("verifying and unpacking bundle {} ({} members)", bundle_path.display(), manifest.members.len() + 1));
    let unpacked = bundle::unpack(bundle_path, &cache.root().join("tmp"), sha256)?;
    let refused = || format!("bundle {} refused", bundle_path.display());
    if unpacked.manifest != manifest {
        anyhow::bail!("{}: it changed while it was read", refused());
    }
    let profile = load(&unpacked.profile_path())?;
    if profile.name.as_str() != manifest.profile_name {
        anyhow::bail!("{}: its manifest names profile {:?}, its profile file {:?}", refused(), manifest.profile_name, profile.name.as_str());
    }
    unpacked.check_self_contained(&profile).with_context(refused)?;
    let lock = Lock::read(&profile.lock_path()).with_context(refused)?;
    bundle::signed::verify(&unpacked, &lock).with_context(refused)?;
    // The signature vouches for the packages only: the profile (accounts,
    // keys, firewall, overlays) and the choice of signed versions come from
    // whoever made the bundle.
    if sha256.is_none() && given.is_none() {
        anyhow::bail!(
            "{}: its packages match the archive's signature, but nothing shows its profile is yours; give the digest `rampart bundle` printed (--sha256 HEX) or your own copy of the profile (build --bundle FILE PROFILE)",
            refused()
        );
    }
    bundle::import_debs(&unpacked, &lock, &cache).with_context(refused)?;
    timer.done();
    let mirror = unpacked.manifest.mirror.clone();
    build::build(profile, mirror, &BuildOptions { offline: true, out, cache: cache.root().to_path_buf(), secrets: operator.secrets, keys: operator.keys, installer, lock: None })
}

fn run_lock(profile: &Profile, mirror: &Mirror, update: bool, cache: &Path) -> Result<()> {
    let path = profile.lock_path();
    let old = if path.exists() { Some(Lock::read(&path)?) } else { None };
    if let Some(old) = &old {
        if old.is_current_for(profile) && !update {
            ui::step(&format!("{} is current ({} packages); use --update to refresh it", path.display(), old.packages.len()));
            return Ok(());
        }
    }
    let cache = Cache::open(cache)?;
    let fresh = with_private_log("lock", |log| lock::resolve(profile, mirror, log, Some(&cache)))?;
    if let Some(old) = &old {
        let changes = lock::describe_changes(old, &fresh);
        if changes.is_empty() {
            ui::step("no package changed");
        }
        for line in changes {
            println!("{line}");
        }
    }
    fresh.write(&path, profile.name.as_str())?;
    ui::step(&format!("wrote {} ({} packages)", path.display(), fresh.packages.len()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_argument_of_every_command_has_help() {
        fn undocumented(command: &clap::Command, path: &str, found: &mut Vec<String>) {
            let path = format!("{path} {}", command.get_name()).trim().to_string();
            found.extend(command.get_arguments().filter(|arg| arg.get_help().is_none()).map(|arg| format!("{path} {}", arg.get_id())));
            for sub in command.get_subcommands() {
                undocumented(sub, &path, found);
            }
        }
        let mut found = Vec::new();
        undocumented(&super::Cli::command(), "", &mut found);
        assert!(found.is_empty(), "arguments without help text: {found:?}");
    }
}
