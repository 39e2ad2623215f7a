//! `rampart test`: builds the image if its inputs changed, boots the real
//! artifact in QEMU for each machine of each scenario, runs the checks, and
//! writes a human summary and JUnit XML. The verdict comes from the checks
//! only; QEMU's exit status is never trusted.

pub mod collector;
pub mod mail_sink;
mod smarthost;
pub mod audit;
pub mod identity;
pub mod junit;
pub mod lab;
pub mod listeners;
pub mod networks;
mod outside;
mod commands;
mod conformance;
mod remote_log;
pub mod qemu;
pub mod scenario;
pub mod plan;
mod patch;
mod sealed;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::build::{self, BuildOptions};
use crate::fsutil::write_atomic;
use crate::mirror::Mirror;
use crate::profile::Profile;
use crate::ui;
use junit::CaseResult;
use qemu::{Accel, AccelChoice, Machine, MachineConfig, TestKey};
use scenario::{Action, Check, Expect, Scenario, Target};

pub struct TestOptions {
    pub scenario: Option<String>,
    pub out: PathBuf,
    pub cache: PathBuf,
    pub accel: AccelChoice,
    /// vCPUs per machine (`--vcpus`).
    pub vcpus: u8,
    pub offline: bool,
}

/// Where scenarios live for a profile: `<profile dir>/../vm-tests`.
pub fn scenario_dir(profile: &Profile) -> PathBuf {
    profile.path.parent().unwrap_or(Path::new(".")).join("..").join("vm-tests")
}

/// The scenarios to run, all validated before anything is built or booted.
pub fn find_scenarios(profile: &Profile, only: Option<&str>) -> Result<Vec<Scenario>> {
    let dir = scenario_dir(profile);
    let paths: Vec<PathBuf> = match only {
        Some(name) => {
            let path = dir.join(format!("{name}.toml"));
            if !path.exists() {
                bail!("--scenario {name}: no scenario {}", path.display());
            }
            vec![path]
        }
        None => {
            let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
                .with_context(|| format!("while looking for scenarios in {}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect();
            paths.sort();
            paths
        }
    };
    let mut scenarios = Vec::new();
    for path in paths {
        let scenario = scenario::load(&path)?;
        let same_profile = std::fs::canonicalize(&scenario.profile_path).ok() == std::fs::canonicalize(&profile.path).ok();
        if same_profile {
            scenarios.push(scenario);
        } else if only.is_some() {
            bail!("scenario {} tests profile {}, not {}", path.display(), scenario.profile_path.display(), profile.path.display());
        }
    }
    if scenarios.is_empty() {
        bail!("no scenario in {} tests profile {}", dir.display(), profile.path.display());
    }
    Ok(scenarios)
}

pub fn run(profile: Profile, mirror: Mirror, options: &TestOptions) -> Result<()> {
    let scenarios = find_scenarios(&profile, options.scenario.as_deref())?;
    for scenario in &scenarios {
        if let Some(check) = scenario.checks.iter().find(|c| c.action.needs_remote_log_host()) {
            if lab_log_host(&profile).is_none() {
                bail!(
                    "{}: check {} needs the profile's logging.remote to be an address of the lab's second host ({}); {} forwards to {}",
                    scenario.path.display(),
                    check.name,
                    lab::OUTSIDE_ADDRESSES.join(", "),
                    profile.path.display(),
                    profile.logging.remote.as_ref().map(|r| r.value.to_string()).unwrap_or_else(|| "no remote host".into())
                );
            }
        }
    }
    qemu::require_host_tools()?;
    let Some(admin) = profile.users.first().map(|u| u.name.to_string()) else {
        bail!("{}: the profile has no [[users]] admin account, so the test harness has no way in", profile.path.display());
    };
    let needs_installer = scenarios.iter().any(Scenario::needs_installer);
    let name = profile.name.to_string();
    let artifacts = Artifacts::in_dir(&options.out, &name);
    let mirror_for_patch = mirror.clone();
    ensure_built(&profile, mirror, options, needs_installer)?;
    // From here on a signal shuts the machines down and removes the test
    // network and the work directory before rampart exits.
    crate::process::stop_on_signals()?;
    let work = crate::fsutil::owned_tempdir(&std::env::temp_dir(), "rampart-test-")?;
    let accel = qemu::choose_accel(options.accel, options.vcpus, &artifacts.raw, work.path())?;
    let absolute = |path: &Path| std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()).display().to_string();
    let properties = [
        ("profile", absolute(&profile.path)),
        ("image", absolute(&artifacts.image)),
        ("image-sha256", crate::fsutil::sha256_file(&artifacts.image)?),
        ("accel", accel.name().to_string()),
        ("vcpus", accel.vcpus.to_string()),
        ("rampart", env!("CARGO_PKG_VERSION").to_string()),
    ];
    let installer_sha256 = if needs_installer { Some(crate::fsutil::sha256_file(&artifacts.installer)?) } else { None };
    let patch_setup = if scenarios.iter().any(Scenario::needs_point_release) { Some(patch::prepare(&profile, &mirror_for_patch, options, work.path())?) } else { None };
    crate::process::check_interrupted()?;

    let mut n_failed = 0;
    let mut n_cases = 0;
    for scenario in &scenarios {
        ui::step(&format!("scenario {} ({}): {}", scenario.name, accel.name(), scenario.description));
        let junit_path = options.out.join(format!("{}.junit.xml", scenario.name));
        // An earlier run's verdict must not stand for a run that is interrupted.
        if junit_path.exists() {
            std::fs::remove_file(&junit_path).with_context(|| format!("while removing the earlier report {}", junit_path.display()))?;
        }
        let cases = run_scenario(scenario, &profile, &artifacts, &admin, accel, work.path(), &options.out, patch_setup.as_ref())?;
        let mut scenario_properties = properties.to_vec();
        if let (true, Some(digest)) = (scenario.needs_installer(), &installer_sha256) {
            // Its machines boot a disk the installer wrote, not the qcow2.
            scenario_properties.push(("installer", absolute(&artifacts.installer)));
            scenario_properties.push(("installer-sha256", digest.clone()));
        }
        write_atomic(&junit_path, junit::render(&scenario.name, &scenario_properties, &cases).as_bytes())?;
        for case in &cases {
            match &case.failure {
                None => println!("PASS  {:<10} {} ({:.1} s)", case.machine, case.name, case.seconds),
                Some((message, _)) => println!("FAIL  {:<10} {} ({:.1} s): {}", case.machine, case.name, case.seconds, message),
            }
        }
        n_failed += cases.iter().filter(|c| c.failure.is_some()).count();
        n_cases += cases.len();
        ui::step(&format!("JUnit report: {}", junit_path.display()));
    }
    refresh_html_report(&options.out, &name);
    if n_failed > 0 {
        bail!("{n_failed} of {n_cases} checks failed; details in the JUnit reports and serial logs in {}", options.out.display());
    }
    ui::step(&format!("all {n_cases} checks passed"));
    Ok(())
}

/// The profile's remote log host, if it is an address of the lab's second host.
fn lab_log_host(profile: &Profile) -> Option<std::net::SocketAddr> {
    let remote = profile.logging.remote.as_ref()?;
    if !profile.logging.enable || !lab::OUTSIDE_ADDRESSES.contains(&remote.value.host.as_str()) {
        return None;
    }
    format!("{}:{}", remote.value.host, remote.value.port).parse().ok()
}

/// The profile's mail hosts that are addresses of the lab's second host:
/// its smarthost, and a mail gateway's internal host.
fn lab_mail_hosts(profile: &Profile) -> Vec<std::net::SocketAddr> {
    let smarthost = profile.mail.smarthost.as_ref().filter(|_| profile.mail.enable);
    let internal = profile.mail_gateway.deliver_to.as_ref().filter(|_| profile.mail_gateway.enable);
    let mut hosts: Vec<std::net::SocketAddr> = smarthost
        .into_iter()
        .chain(internal)
        .filter(|h| lab::OUTSIDE_ADDRESSES.contains(&h.value.host.as_str()))
        .filter_map(|h| format!("{}:{}", h.value.host, h.value.port).parse().ok())
        .collect();
    hosts.dedup();
    hosts
}

/// The build's artifacts the harness boots, in `--out`.
struct Artifacts {
    /// `<name>.qcow2`, the backing file of every scratch disk
    image: PathBuf,
    /// `<name>.raw`, whose kernel the KVM probe boots
    raw: PathBuf,
    /// `<name>.installer.raw`, the offline installer medium
    installer: PathBuf,
}

impl Artifacts {
    fn in_dir(out: &Path, name: &str) -> Artifacts {
        Artifacts {
            image: out.join(format!("{name}.qcow2")),
            raw: out.join(format!("{name}.raw")),
            installer: out.join(format!("{name}.installer.raw")),
        }
    }
}

/// Where the serial console of `what` (a machine, an installer run) is
/// written: beside the artifacts, where it stays.
fn kept_console(out: &Path, scenario: &Scenario, what: &str) -> PathBuf {
    out.join(format!("{}-{what}.serial.log", scenario.name))
}

/// Builds unless the artifacts in `out` were made from exactly these inputs
/// (and include the offline installer if a scenario boots it).
fn ensure_built(profile: &Profile, mirror: Mirror, options: &TestOptions, installer: bool) -> Result<()> {
    build::ensure_built(
        profile,
        mirror,
        &BuildOptions { offline: options.offline, out: options.out.clone(), cache: options.cache.clone(), secrets: None, keys: None, installer, lock: None },
    )
}

/// What the harness knows about one booted machine's admin account.
struct Session {
    /// The admin's password, for sudo (after the first login changed it).
    sudo_password: Option<String>,
    /// The first login had to change an expired password.
    forced_password_change: bool,
}

/// Logs in for the first time as a user would: if the account's password
/// expired (pre-expired golden image), answers passwd's prompts with the
/// initial password from the secrets file and a new random one.
fn first_login(machine: &Machine, profile: &Profile, admin: &str, out: &Path, change_required: bool) -> Result<Session> {
    let secrets_path = out.join(format!("{}.secrets", profile.name));
    let initial = crate::secrets::read(&secrets_path)?.into_iter().find(|(user, _)| user == admin).map(|(_, p)| p);
    if !change_required {
        return Ok(Session { sudo_password: initial, forced_password_change: false });
    }
    let initial = initial.with_context(|| format!("{admin} must change its password at first login, but {} has no password for it", secrets_path.display()))?;
    let new = crate::secrets::random_password(admin, &profile.passwords)?;
    machine.change_expired_password(&initial, &new, Duration::from_secs(60))?;
    Ok(Session { sudo_password: Some(new), forced_password_change: true })
}

fn run_scenario(
    scenario: &Scenario,
    profile: &Profile,
    artifacts: &Artifacts,
    admin: &str,
    accel: Accel,
    work: &Path,
    out: &Path,
    patch_setup: Option<&patch::PatchSetup>,
) -> Result<Vec<CaseResult>> {
    let guest_ssh_port = profile.ssh.port.get();
    let key = TestKey::generate(work, &format!("{}-admin", scenario.name))?;
    let stranger = TestKey::generate(work, &format!("{}-stranger", scenario.name))?;
    let boot_timeout = scenario.boot_timeout;
    let mut cases = Vec::new();
    let mut captured: BTreeMap<usize, Vec<(String, String)>> = BTreeMap::new();
    let mut lab = if scenario.isolated_network { Some(lab::Lab::create(work, scenario.machines.len(), &scenario.networks)?) } else { None };
    if let (Some(lab), Some(address)) = (lab.as_mut(), lab_log_host(profile)) {
        lab.start_collector(address)?;
    }
    if let Some(lab) = lab.as_mut() {
        for address in lab_mail_hosts(profile) {
            lab.start_mail_sink(address, work)?;
        }
    }
    for (index, spec) in scenario.machines.iter().enumerate() {
        crate::process::check_interrupted()?;
        let mut prepared_disk = None;
        let mut attached = if spec.image_copy_attached { vec![qemu::image_copy(&artifacts.image, &work.join(format!("{}.image-copy.qcow2", spec.name)))?] } else { Vec::new() };
        let mut image = artifacts.image.as_path();
        if spec.point_release {
            let setup = patch_setup.context("a point-release machine without its patch media")?;
            image = &setup.image;
            attached.extend(setup.media());
        }
        if spec.installer {
            let (case, disk) = install(spec, &attached, artifacts, accel, work, out, scenario);
            cases.push(case);
            match disk {
                Some(disk) => prepared_disk = Some(disk),
                None => {
                    not_run(&mut cases, scenario, index, &spec.name, "the offline installer did not install the machine");
                    continue;
                }
            }
        }
        let config = MachineConfig {
            name: &spec.name,
            image,
            disk_bytes: spec.disk_size.bytes(),
            memory_mib: spec.memory_mib,
            extra_disks: &spec.extra_disks,
            attached,
            accel,
            user: admin,
            guest_ssh_port,
            key: &key,
            extra_args: if lab.is_some() { lab::Lab::nic_args(index, &spec.networks) } else { Vec::new() },
            netns: lab.as_ref().map(|l| l.lab_ns.clone()),
            prepared_disk,
            serial_log: kept_console(out, scenario, &spec.name),
            tpm: spec.tpm.then(|| work.join(format!("{}.tpm", spec.name))),
            console_input: false,
            secure_boot: spec.secure_boot,
        };
        let mut machine = Machine::boot(&config, work)?;
        if let Some(lab) = &lab {
            lab.attach(index, &spec.networks)?;
        }
        let outside = lab.as_ref().map(|l| (l, lab::machine_address(index).0));
        let booted = machine.wait_for_ssh_shown(&spec.name, boot_timeout).and_then(|(elapsed, change_required)| {
            ui::step(&format!("{}: SSH ready {:.1} s after QEMU started", spec.name, elapsed.as_secs_f64()));
            let session = first_login(&machine, profile, admin, out, change_required)
                .with_context(|| format!("{}: the first login failed\n{}", spec.name, machine.serial_tail(20)))?;
            Ok((elapsed, session))
        });
        match booted {
            Ok((elapsed, session)) => {
                cases.push(CaseResult { name: "boots_to_ssh".into(), machine: spec.name.clone(), seconds: elapsed.as_secs_f64(), failure: None });
                let env = CheckEnv {
                    admin_key: &key,
                    stranger: &stranger,
                    outside: outside.as_ref().map(|(l, a)| (*l, a.as_str())),
                    profile,
                    session: &session,
                    installer: &artifacts.installer,
                    image: &artifacts.image,
                    admin,
                    accel,
                    work,
                    out,
                    scenario,
                    patch: patch_setup,
                };
                run_checks(&mut machine, index, &spec.name, scenario, &env, &mut captured, &mut cases)?;
            }
            Err(error) => {
                let message = format!("{error:#}");
                let first = message.lines().next().unwrap_or("").to_string();
                cases.push(CaseResult { name: "boots_to_ssh".into(), machine: spec.name.clone(), seconds: boot_timeout.as_secs_f64(), failure: Some((first, message)) });
                not_run(&mut cases, scenario, index, &spec.name, "the machine did not boot");
            }
        }
        machine.shut_down();
    }
    // An interrupted machine is no verdict: nothing is reported for it (the
    // next machine's turn checks too).
    crate::process::check_interrupted()?;
    cases.extend(judge_differ(scenario, captured));
    Ok(cases)
}

/// The `differ` checks' verdicts, from the outputs every machine gave.
fn judge_differ(scenario: &Scenario, captured: BTreeMap<usize, Vec<(String, String)>>) -> Vec<CaseResult> {
    let mut cases = Vec::new();
    for (check_index, outputs) in captured {
        let check = &scenario.checks[check_index];
        if !matches!(check.action, Action::Differ { .. }) {
            continue;
        }
        let mut failure = None;
        if outputs.len() < scenario.machines.len() {
            failure = Some(("not every machine answered".to_string(), format!("{outputs:?}")));
        }
        for (i, (a_name, a)) in outputs.iter().enumerate() {
            for (b_name, b) in &outputs[i + 1..] {
                if a == b {
                    failure = Some((format!("{a_name} and {b_name} give the same output"), format!("both: {a}")));
                }
            }
        }
        cases.push(CaseResult { name: check.name.clone(), machine: "all".into(), seconds: 0.0, failure });
    }
    cases
}

/// Runs every check of machine `index`, recording each case (and the outputs `differ` compares).
fn run_checks(machine: &mut Machine, index: usize, name: &str, scenario: &Scenario, env: &CheckEnv, captured: &mut BTreeMap<usize, Vec<(String, String)>>, cases: &mut Vec<CaseResult>) -> Result<()> {
    for (check_index, check) in scenario.checks.iter().enumerate() {
        let applies = matches!(check.target, Target::All) || check.target == Target::One(index);
        if !applies {
            continue;
        }
        crate::process::check_interrupted()?;
        let what = format!("{name}: check {}/{} {}", check_index + 1, scenario.checks.len(), check.name);
        ui::detail(&format!("{what}..."));
        let spinner = ui::Timed::quietly(&what);
        let started = Instant::now();
        let outcome = run_check(machine, check, env);
        let seconds = started.elapsed().as_secs_f64();
        spinner.end();
        ui::detail(&format!("{what}: {} in {seconds:.1} s", if outcome.is_ok() { "passed" } else { "FAILED" }));
        let failure = match outcome {
            Ok(Some(output)) => {
                captured.entry(check_index).or_default().push((name.to_string(), output));
                None
            }
            Ok(None) => None,
            Err(failure) => Some((failure.message, format!("{}\n{}", failure.details, machine.serial_tail(20)))),
        };
        if !matches!(check.action, Action::Differ { .. }) || failure.is_some() {
            cases.push(CaseResult { name: check.name.clone(), machine: name.to_string(), seconds, failure });
        }
    }
    Ok(())
}

/// Installs machine `spec` with the offline installer onto an empty disk:
/// the case's verdict, and the disk when it was installed.
fn install(spec: &scenario::MachineSpec, attached: &[qemu::Attached], artifacts: &Artifacts, accel: Accel, work: &Path, out: &Path, scenario: &Scenario) -> (CaseResult, Option<PathBuf>) {
    let disk = work.join(format!("{}.installed.qcow2", spec.name));
    let started = Instant::now();
    let outcome = qemu::blank_disk(&disk, spec.disk_size.bytes())
        .and_then(|_| qemu::run_installer(&artifacts.installer, &disk, attached, accel, work, &spec.name, &kept_console(out, scenario, &format!("{}-installer", spec.name)), INSTALL_TIMEOUT));
    let failure = match &outcome {
        Ok(run) if run.installed => None,
        Ok(run) => Some(("the installer did not install".to_string(), run.messages.join("\n"))),
        Err(error) => Some(("the installer did not finish".to_string(), format!("{error:#}"))),
    };
    let seconds = started.elapsed().as_secs_f64();
    if let Ok(run) = &outcome {
        ui::step(&format!("{}: installed by the offline installer in {seconds:.1} s: {}", spec.name, run.messages.last().map(String::as_str).unwrap_or("")));
    }
    let installed = failure.is_none();
    (CaseResult { name: "offline_installer_installs".into(), machine: spec.name.clone(), seconds, failure }, installed.then_some(disk))
}

/// How long the offline installer may take to boot, write, check and grow.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);

/// Records every check of machine `index` as failed, not run, for `why`.
fn not_run(cases: &mut Vec<CaseResult>, scenario: &Scenario, index: usize, machine: &str, why: &str) {
    for check in scenario.checks.iter().filter(|c| matches!(c.target, Target::All) || c.target == Target::One(index)) {
        cases.push(CaseResult { name: check.name.clone(), machine: machine.to_string(), seconds: 0.0, failure: Some((format!("not run: {why}"), String::new())) });
    }
}

/// Why a check failed: a one-line message and the details.
struct CheckFailure {
    message: String,
    details: String,
}

/// `<name>.report.html` again, with the results just written: a report
/// that cannot be written is a warning, never a verdict of the test.
pub(crate) fn refresh_html_report(out: &Path, name: &str) {
    match crate::build::html::write(out, name) {
        Ok(()) => ui::step(&format!("HTML report: {}", out.join(format!("{name}.report.html")).display())),
        Err(error) => ui::warn(&format!("the HTML report was not updated: {error:#}")),
    }
}

fn failed(message: impl Into<String>, details: impl Into<String>) -> CheckFailure {
    CheckFailure { message: message.into(), details: details.into() }
}

fn show(command: &str, output: &crate::process::Output) -> String {
    format!(
        "command: {command}\n{}\nstdout:\n{}\nstderr:\n{}",
        crate::process::describe_status(output.status),
        String::from_utf8_lossy(&output.stdout).trim_end(),
        String::from_utf8_lossy(&output.stderr).trim_end()
    )
}

fn matches_expectation(output: &str, expect: &Expect) -> bool {
    match expect {
        Expect::Anything => true,
        Expect::Equals(text) => output.trim() == text,
        Expect::Contains(text) => output.contains(text.as_str()),
    }
}

/// What checks of one machine can use besides the machine itself.
struct CheckEnv<'a> {
    /// The admin's key (the machines') and one the image never saw.
    admin_key: &'a TestKey,
    stranger: &'a TestKey,
    outside: Option<(&'a lab::Lab, &'a str)>,
    profile: &'a Profile,
    session: &'a Session,
    /// The offline installer medium, `<name>.installer.raw`.
    installer: &'a Path,
    /// The qcow2 image the scenario's machines boot, and its admin account.
    image: &'a Path,
    admin: &'a str,
    accel: Accel,
    work: &'a Path,
    out: &'a Path,
    scenario: &'a Scenario,
    /// The point release's image and its patch media, if a machine boots it.
    patch: Option<&'a patch::PatchSetup>,
}

/// What an image's firewall stage writes to /etc/nftables.conf, replaced in
/// the copy by a file nft cannot load.
const UNLOADABLE_RULESET: &[u8] = b"#!/usr/sbin/nft -f\n# rampart test: a ruleset nft refuses\ntable inet rampart {\n\tchain input {\n\t\tthis is no rule\n\t}\n}\n";

/// How long a copy whose firewall failed is watched for any sign of a
/// network after it said so: networkd, were it started, has DHCP well before.
const OFFLINE_WATCH: Duration = Duration::from_secs(20);

/// A machine that boots a changed copy of the image (`disk`), made ready
/// before; no one logs in to it (the stranger's key).
fn copy_config<'a>(name: &'a str, disk: PathBuf, env: &'a CheckEnv) -> MachineConfig<'a> {
    MachineConfig {
        name,
        image: env.image,
        disk_bytes: 0,
        memory_mib: 1024,
        extra_disks: &[],
        attached: Vec::new(),
        accel: env.accel,
        user: env.admin,
        guest_ssh_port: env.profile.ssh.port.get(),
        key: env.stranger,
        extra_args: Vec::new(),
        netns: None,
        prepared_disk: Some(disk),
        serial_log: kept_console(env.out, env.scenario, name),
        tpm: None,
        console_input: false,
        secure_boot: true,
    }
}

/// Boots a copy of the image with an unloadable ruleset beside `machine`
/// (the lab's spare slot) and checks that it stays off the network.
fn firewall_fails_closed(machine: &Machine, check: &Check, env: &CheckEnv, lab: &lab::Lab) -> Result<(), CheckFailure> {
    let name = format!("{}-{}", machine.name, check.name);
    let disk = env.work.join(format!("{name}.qcow2"));
    let root = crate::layout::Identifiers::for_profile(env.profile.name.as_str()).root_partuuid;
    qemu::copy_with_replaced_file(env.image, &root, &disk, "/etc/nftables.conf", UNLOADABLE_RULESET, env.work)
        .map_err(|e| failed("could not make a copy of the image with an unloadable ruleset", format!("{e:#}")))?;
    let spare = env.scenario.machines.len();
    let mut config = copy_config(&name, disk, env);
    config.extra_args = lab::Lab::nic_args(spare, &[0]);
    config.netns = Some(lab.lab_ns.clone());
    let mut copy = Machine::boot(&config, env.work).map_err(|e| failed("could not boot the copy", format!("{e:#}")))?;
    lab.attach(spare, &[0]).map_err(|e| failed("could not attach the copy to the lab", format!("{e:#}")))?;
    let said = copy
        .wait_for_console(crate::stages::firewall::FAILURE_MARKER, check.timeout)
        .map_err(|e| failed("the copy with an unloadable ruleset did not say that its firewall failed", format!("{e:#}")))?;
    crate::process::pause(OFFLINE_WATCH);
    let (address, mac) = lab::machine_address(spare);
    let sweep = lab.arp_sweep(Duration::from_secs(60)).map_err(|e| failed("the ARP sweep failed", format!("{e:#}")))?;
    let leases = lab.leases();
    let details = format!("console: {said}\n--- ARP sweep from the second host ---\n{sweep}\n--- DHCP leases ---\n{leases}\n{}", copy.serial_tail(30));
    copy.shut_down();
    if leases.to_ascii_lowercase().contains(&mac) {
        return Err(failed(format!("the copy whose firewall did not load asked for a DHCP lease ({mac})"), details));
    }
    if sweep.to_ascii_lowercase().contains(&mac) || sweep.contains(&format!("for {address}\n")) {
        return Err(failed(format!("the copy whose firewall did not load answers on the lab network ({mac})"), details));
    }
    // The sweep must have worked: it finds the machine itself.
    let (own_address, _) = lab::machine_address(env.scenario.machines.iter().position(|m| m.name == machine.name).unwrap_or(0));
    if !sweep.contains(&format!("for {own_address}")) {
        return Err(failed(format!("the ARP sweep did not even find {} ({own_address}); it proves nothing", machine.name), details));
    }
    Ok(())
}

/// What systemd-boot prints when the firmware will not start the boot
/// image, followed by the firmware's reason.
const BOOT_IMAGE_NOT_LOADED: &str = "Error loading \\EFI\\Linux\\rampart.efi: ";
/// The reasons a firmware enforcing Secure Boot gives for an image whose
/// signature does not verify (OVMF denies execution: Access Denied).
const SIGNATURE_REFUSALS: &[&str] = &["Access Denied", "Security Violation"];
/// What shows that Linux started after all.
const LINUX_STARTED: &[&str] = &["Linux version", "rampart-boot:", "systemd["];

/// Boots a copy of the image whose unified kernel image has one byte
/// changed: the firmware, enforcing Secure Boot with the site's keys,
/// refuses it, and Linux never starts.
fn tampered_boot_image_is_refused(machine: &Machine, check: &Check, env: &CheckEnv) -> Result<(), CheckFailure> {
    let name = format!("{}-{}", machine.name, check.name);
    let disk = env.work.join(format!("{name}.qcow2"));
    qemu::copy_with_changed_esp(env.image, &disk, qemu::EspChange::FlipByte(crate::stages::disk::UKI_PATH), env.work)
        .map_err(|e| failed("could not make a copy of the image with a changed boot image", format!("{e:#}")))?;
    let config = copy_config(&name, disk, env);
    let mut copy = Machine::boot(&config, env.work).map_err(|e| failed("could not boot the copy", format!("{e:#}")))?;
    let said = copy.wait_for_console(BOOT_IMAGE_NOT_LOADED, check.timeout);
    let console = String::from_utf8_lossy(&std::fs::read(&copy.serial_log).unwrap_or_default()).into_owned();
    let tail = copy.serial_tail(30);
    copy.shut_down();
    let line = said.map_err(|e| failed("the copy with a changed boot image was not refused: systemd-boot never said it could not load it", format!("{e:#}\n{tail}")))?;
    if !SIGNATURE_REFUSALS.iter().any(|reason| line.contains(reason)) {
        return Err(failed(format!("the copy's boot image was not loaded, but not for its signature: {line}"), tail));
    }
    if let Some(sign) = LINUX_STARTED.iter().find(|sign| console.contains(*sign)) {
        return Err(failed(format!("the copy with a changed boot image started Linux ({sign:?} on its console)"), tail));
    }
    Ok(())
}

/// The title of the loader entry an attacker adds to a copy of the image.
const INJECTED_ENTRY_TITLE: &str = "rampart-test-injected-entry";

/// What the attacker writes to the copy's ESP: a loader entry that starts
/// the signed boot image with a root shell for init (what the editor would
/// type), made the default, with the menu shown and the editor on.
fn injected_entry_files() -> [(&'static str, Vec<u8>); 2] {
    let entry = format!("title {INJECTED_ENTRY_TITLE}\nefi /{}\noptions console=ttyS0 init=/bin/sh\n", crate::stages::disk::UKI_PATH);
    let loader = "default injected.conf\ntimeout 1\neditor yes\n".to_string();
    [("loader/entries/injected.conf", entry.into_bytes()), ("loader/loader.conf", loader.into_bytes())]
}

/// Boots a copy of the image whose loader (unsigned: anyone with the disk
/// can edit it) starts the signed boot image with `init=/bin/sh`: the stub
/// ignores a command line from outside while Secure Boot is on, so systemd
/// runs as init and prints the first boot's host key, as ever.
fn injected_command_line_is_ignored(machine: &Machine, check: &Check, env: &CheckEnv) -> Result<(), CheckFailure> {
    let name = format!("{}-{}", machine.name, check.name);
    let disk = env.work.join(format!("{name}.qcow2"));
    let files = injected_entry_files();
    let files: Vec<(&str, &[u8])> = files.iter().map(|(path, contents)| (*path, contents.as_slice())).collect();
    qemu::copy_with_changed_esp(env.image, &disk, qemu::EspChange::Write(&files), env.work)
        .map_err(|e| failed("could not make a copy of the image with an injected loader entry", format!("{e:#}")))?;
    let config = copy_config(&name, disk, env);
    let mut copy = Machine::boot(&config, env.work).map_err(|e| failed("could not boot the copy", format!("{e:#}")))?;
    let said = copy.wait_for_console(crate::stages::firstboot::HOST_KEY_MARKER, check.timeout);
    let console = String::from_utf8_lossy(&std::fs::read(&copy.serial_log).unwrap_or_default()).into_owned();
    let tail = copy.serial_tail(30);
    copy.shut_down();
    if !console.contains(INJECTED_ENTRY_TITLE) {
        return Err(failed("the copy's loader never showed the injected entry in its menu: the check proves nothing", tail));
    }
    said.map_err(|e| failed("the copy whose loader asks for init=/bin/sh did not start systemd (no host key line on its console)", format!("{e:#}\n{tail}")))?;
    Ok(())
}

/// Runs `command` in the guest over SSH: as the admin, or as root through
/// sudo when the check says `as-root`.
fn guest_ssh(machine: &Machine, check: &Check, env: &CheckEnv, command: &str, timeout: Duration) -> Result<crate::process::Output, CheckFailure> {
    let result = if check.as_root {
        match &env.session.sudo_password {
            Some(password) => machine.ssh_as_root(command, password, timeout),
            None => return Err(failed("as-root needs the admin's password, and the secrets file has none", String::new())),
        }
    } else {
        machine.ssh(command, timeout)
    };
    match result {
        Ok(Some(output)) => Ok(output),
        Ok(None) => Err(failed(format!("timed out after {} s", timeout.as_secs()), format!("command: {command}"))),
        Err(error) => Err(failed("could not run ssh", format!("{error:#}"))),
    }
}

/// The offline installer, booted beside an empty disk of `disk_size`, refuses it as expected and writes nothing.
fn installer_refuses(machine: &Machine, check: &Check, env: &CheckEnv, disk_size: &crate::profile::ImageSize, expect: &Expect) -> Result<Option<String>, CheckFailure> {
        let disk = env.work.join(format!("{}-{}.refused.qcow2", machine.name, check.name));
        let run = qemu::blank_disk(&disk, disk_size.bytes())
            .and_then(|_| {
                let name = format!("{}-{}", machine.name, check.name);
                qemu::run_installer(env.installer, &disk, &[], env.accel, env.work, &name, &kept_console(env.out, env.scenario, &format!("{name}-installer")), check.timeout)
            })
            .map_err(|e| failed("the installer did not answer", format!("{e:#}")))?;
        let console = run.messages.join("\n");
        let refusal = run.messages.iter().find(|l| l.starts_with(crate::stages::installer::FAILED_MARKER));
        let Some(refusal) = refusal else {
            return Err(failed(format!("the installer did not refuse a disk of {} MiB", disk_size.bytes() >> 20), console));
        };
        if !matches_expectation(refusal, expect) {
            return Err(failed(format!("the installer refused with another reason than expected: {expect:?}"), console));
        }
        let untouched = qemu::disk_is_untouched(&disk).map_err(|e| failed("could not read the refused disk", format!("{e:#}")))?;
        if !untouched {
            return Err(failed("the installer refused, yet wrote to the disk", console));
        }
        Ok(None)
}

/// The machine booted from a disk of its own identifiers (see `identity`).
fn disk_is_its_own(machine: &Machine, check: &Check, env: &CheckEnv) -> Result<Option<String>, CheckFailure> {
        let Some(password) = &env.session.sudo_password else {
            return Err(failed("this check reads the boot loader's variable as root, and the secrets file has no admin password", String::new()));
        };
        let output = match machine.ssh_as_root(identity::COMMAND, password, check.timeout) {
            Ok(Some(output)) if output.status.success() => output,
            Ok(Some(output)) => return Err(failed("the guest could not list its disks", show(identity::COMMAND, &output))),
            Ok(None) => return Err(failed(format!("timed out after {} s", check.timeout.as_secs()), identity::COMMAND)),
            Err(error) => return Err(failed("could not run ssh", format!("{error:#}"))),
        };
        let copy_attached = env.scenario.machines.iter().any(|m| m.name == machine.name && m.image_copy_attached);
        let ids = crate::layout::Identifiers::for_profile(env.profile.name.as_str());
        match identity::judge(&output.stdout_text(), &ids, copy_attached) {
            Ok(summary) => {
                ui::step(&format!("{}: {summary}", machine.name));
                Ok(None)
            }
            Err(problem) => Err(failed(problem, show(identity::COMMAND, &output))),
        }
}

/// Runs one check; `Ok(Some(output))` carries output that other machines'
/// answers are compared with (`differ`).
fn run_check(machine: &mut Machine, check: &Check, env: &CheckEnv) -> Result<Option<String>, CheckFailure> {
    let outside = env.outside;
    match &check.action {
        Action::Succeed { .. } | Action::Fail { .. } | Action::WaitUntilSucceeds { .. } | Action::WaitForUnit { .. } | Action::WaitForPort { .. } | Action::Differ { .. } | Action::SshRefusesWrongKey | Action::SshRefuses { .. } => commands::run(machine, check, env),
        Action::RunningServicesMatchProfile | Action::ListeningSocketsMatchProfile | Action::SysctlsMatchProfile | Action::ProfileServicesLog | Action::FirstLoginForcedPasswordChange => conformance::run(machine, check, env),
        Action::RemoteLogReceives | Action::RemoteLogSurvivesOutage => remote_log::run(machine, check, env),
        Action::SmarthostReceives { .. } => smarthost::run(machine, check, env),
        Action::OutsideSucceed { command, host, .. } | Action::OutsideFail { command, host } if outside.is_some() => {
            let (lab, address) = outside.expect("checked");
            outside::host_command(check, lab, address, command, *host)?;
            Ok(None)
        }
        Action::OpenTcpPorts { ports, from, target, only } if outside.is_some() => {
            let (lab, address) = outside.expect("checked");
            outside::open_ports(check, lab, address, ports, from, target.as_deref(), outside::Kind::Tcp(only.as_deref()))?;
            Ok(None)
        }
        Action::OpenUdpPorts { ports, from, target } if outside.is_some() => {
            let (lab, address) = outside.expect("checked");
            outside::open_ports(check, lab, address, ports, from, target.as_deref(), outside::Kind::Udp)?;
            Ok(None)
        }
        Action::VpnAdmitsEnrolledPeer { key } if outside.is_some() => {
            let (lab, address) = outside.expect("checked");
            outside::vpn_admits_enrolled_peer(machine, check, env, lab, address, key)?;
            Ok(None)
        }
        Action::InstallerRefuses { disk_size, expect } => installer_refuses(machine, check, env, disk_size, expect),
        Action::FirewallFailsClosed => {
            let Some((lab, _)) = outside else {
                return Err(failed("this check needs the isolated network", String::new()));
            };
            firewall_fails_closed(machine, check, env, lab)?;
            Ok(None)
        }
        Action::DataIsSealedToTheTpm => {
            sealed::data_is_sealed_to_the_tpm(machine, check, env)?;
            Ok(None)
        }
        Action::PatchMediumApplies => {
            let setup = env.patch.ok_or_else(|| failed("patch-medium-applies needs a machine with image-lock = \"point-release\"", String::new()))?;
            patch::patch_medium_applies(machine, check, env, setup)?;
            Ok(None)
        }
        Action::KernelFromAptBoots => {
            let setup = env.patch.ok_or_else(|| failed("kernel-from-apt-boots needs a machine with image-lock = \"point-release\"", String::new()))?;
            patch::kernel_from_apt_boots(machine, check, env, setup)?;
            Ok(None)
        }
        Action::InjectedCommandLineIsIgnored => {
            injected_command_line_is_ignored(machine, check, env)?;
            Ok(None)
        }
        Action::TamperedBootImageIsRefused => {
            tampered_boot_image_is_refused(machine, check, env)?;
            Ok(None)
        }
        Action::DiskIsItsOwn => disk_is_its_own(machine, check, env),
        Action::OutsideSucceed { .. } | Action::OutsideFail { .. } | Action::OpenTcpPorts { .. } | Action::OpenUdpPorts { .. } | Action::VpnAdmitsEnrolledPeer { .. } => {
            Err(failed("this check needs the isolated network", String::new()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_readings_collapse_white_space() {
        let found = conformance::parse_sysctl_readings("kernel.sysrq = 0\nnet.ipv4.tcp_rmem = 4096 131072  6291456 \nfs.x = sysctl: permission denied on key \"fs.x\" \n");
        assert_eq!(found["kernel.sysrq"], "0");
        assert_eq!(found["net.ipv4.tcp_rmem"], "4096 131072 6291456");
        assert_eq!(found["fs.x"], "sysctl: permission denied on key \"fs.x\"");
    }

    #[test]
    fn listening_sockets_are_read_from_ss_without_dhcp_clients() {
        let ss = "udp   UNCONN 0      0       10.0.2.15%eth0:68         0.0.0.0:*\n\
                  tcp   LISTEN 0      128            0.0.0.0:22         0.0.0.0:*\n\
                  tcp   LISTEN 0      128               [::]:22            [::]:*\n\
                  udp   UNCONN 0      0          127.0.0.1:323        0.0.0.0:*\n";
        let found: Vec<(String, u16)> = conformance::parse_listening(ss).into_iter().collect();
        assert_eq!(found, vec![("tcp".to_string(), 22), ("udp".to_string(), 323)]);
    }
}
