//! `rampart test`: builds the image if its inputs changed, boots the real
//! artifact in QEMU for each machine of each scenario, runs the checks, and
//! writes a human summary and JUnit XML. The verdict comes from the checks
//! only; QEMU's exit status is never trusted.

pub mod junit;
pub mod lab;
pub mod qemu;
pub mod scenario;

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
    pub offline: bool,
}

/// Where scenarios live for a profile: `<profile dir>/../vm-tests`.
fn scenario_dir(profile: &Profile) -> PathBuf {
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
    qemu::require_host_tools()?;
    let Some(admin) = profile.users.first().map(|u| u.name.to_string()) else {
        bail!("{}: the profile has no [[users]] admin account, so the test harness has no way in", profile.path.display());
    };
    ensure_built(&profile, mirror, options)?;
    let name = profile.name.to_string();
    let image = options.out.join(format!("{name}.qcow2"));
    let raw = options.out.join(format!("{name}.raw"));
    let work = crate::fsutil::owned_tempdir(&std::env::temp_dir(), "rampart-test-")?;
    let accel = qemu::choose_accel(options.accel, &raw, work.path())?;

    let mut n_failed = 0;
    let mut n_cases = 0;
    for scenario in &scenarios {
        ui::step(&format!("scenario {} ({}): {}", scenario.name, accel.name(), scenario.description));
        let cases = run_scenario(scenario, &image, &admin, profile.ssh.port.get(), accel, work.path(), &options.out)?;
        let junit_path = options.out.join(format!("{}.junit.xml", scenario.name));
        write_atomic(&junit_path, junit::render(&scenario.name, &cases).as_bytes())?;
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
    if n_failed > 0 {
        bail!("{n_failed} of {n_cases} checks failed; details in the JUnit reports and serial logs in {}", options.out.display());
    }
    ui::step(&format!("all {n_cases} checks passed"));
    Ok(())
}

/// Builds unless the artifacts in `out` were made from exactly these inputs.
fn ensure_built(profile: &Profile, mirror: Mirror, options: &TestOptions) -> Result<()> {
    let report_path = options.out.join(format!("{}.report.json", profile.name));
    let image = options.out.join(format!("{}.qcow2", profile.name));
    if profile.lock_path().exists() && image.exists() && report_path.exists() {
        let wanted = build::inputs_digest(profile, &mirror)?;
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report_path)?)?;
        if report["inputs-sha256"].as_str() == Some(wanted.as_str()) {
            ui::step(&format!("artifacts in {} are current; not rebuilding", options.out.display()));
            return Ok(());
        }
    }
    build::build(
        profile.clone(),
        mirror,
        &BuildOptions { offline: options.offline, out: options.out.clone(), cache: options.cache.clone() },
    )
}

fn run_scenario(
    scenario: &Scenario,
    image: &Path,
    admin: &str,
    guest_ssh_port: u16,
    accel: Accel,
    work: &Path,
    out: &Path,
) -> Result<Vec<CaseResult>> {
    let key = TestKey::generate(work, &format!("{}-admin", scenario.name))?;
    let stranger = TestKey::generate(work, &format!("{}-stranger", scenario.name))?;
    let boot_timeout = scenario.boot_timeout;
    let mut cases = Vec::new();
    let mut captured: BTreeMap<usize, Vec<(String, String)>> = BTreeMap::new();
    let lab = if scenario.isolated_network { Some(lab::Lab::create(work, scenario.machines.len())?) } else { None };
    for (index, spec) in scenario.machines.iter().enumerate() {
        let config = MachineConfig {
            name: &spec.name,
            image,
            disk_bytes: spec.disk_size.bytes(),
            memory_mib: spec.memory_mib,
            accel,
            user: admin,
            guest_ssh_port,
            key: &key,
            extra_args: if lab.is_some() { lab::Lab::nic_args(index) } else { Vec::new() },
            netns: lab.as_ref().map(|l| l.lab_ns.clone()),
        };
        let mut machine = Machine::boot(&config, work)?;
        if let Some(lab) = &lab {
            lab.attach(index)?;
        }
        let outside = lab.as_ref().map(|l| (l, lab::machine_address(index).0));
        let booted = machine.wait_for_ssh(boot_timeout);
        let serial_copy = out.join(format!("{}-{}.serial.log", scenario.name, spec.name));
        match booted {
            Ok(elapsed) => {
                ui::step(&format!("{}: SSH ready {:.1} s after QEMU started", spec.name, elapsed.as_secs_f64()));
                cases.push(CaseResult { name: "boots_to_ssh".into(), machine: spec.name.clone(), seconds: elapsed.as_secs_f64(), failure: None });
                for (check_index, check) in scenario.checks.iter().enumerate() {
                    let applies = matches!(check.target, Target::All) || check.target == Target::One(index);
                    if !applies {
                        continue;
                    }
                    let started = Instant::now();
                    let outcome = run_check(&mut machine, check, &stranger, outside.as_ref().map(|(l, a)| (*l, a.as_str())));
                    let seconds = started.elapsed().as_secs_f64();
                    let failure = match outcome {
                        Ok(Some(output)) => {
                            captured.entry(check_index).or_default().push((spec.name.clone(), output));
                            None
                        }
                        Ok(None) => None,
                        Err(failure) => Some((failure.message, format!("{}\n{}", failure.details, machine.serial_tail(20)))),
                    };
                    if !matches!(check.action, Action::Differ { .. }) || failure.is_some() {
                        cases.push(CaseResult { name: check.name.clone(), machine: spec.name.clone(), seconds, failure });
                    }
                }
            }
            Err(error) => {
                let message = format!("{error:#}");
                let first = message.lines().next().unwrap_or("").to_string();
                cases.push(CaseResult { name: "boots_to_ssh".into(), machine: spec.name.clone(), seconds: boot_timeout.as_secs_f64(), failure: Some((first, message)) });
                for check in scenario.checks.iter().filter(|c| matches!(c.target, Target::All) || c.target == Target::One(index)) {
                    cases.push(CaseResult {
                        name: check.name.clone(),
                        machine: spec.name.clone(),
                        seconds: 0.0,
                        failure: Some(("not run: the machine did not boot".into(), String::new())),
                    });
                }
            }
        }
        machine.shut_down();
        let _ = std::fs::copy(work.join(format!("serial-{}.log", spec.name)), &serial_copy);
    }
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
    Ok(cases)
}

/// Why a check failed: a one-line message and the details.
struct CheckFailure {
    message: String,
    details: String,
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

/// Runs one check; `Ok(Some(output))` carries output that other machines'
/// answers are compared with (`differ`).
fn run_check(
    machine: &mut Machine,
    check: &Check,
    stranger: &TestKey,
    outside: Option<(&lab::Lab, &str)>,
) -> Result<Option<String>, CheckFailure> {
    let deadline = Instant::now() + check.timeout;
    let remaining = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
    let ssh = |machine: &Machine, command: &str, timeout: Duration| -> Result<crate::process::Output, CheckFailure> {
        match machine.ssh(command, timeout) {
            Ok(Some(output)) => Ok(output),
            Ok(None) => Err(failed(format!("timed out after {} s", timeout.as_secs()), format!("command: {command}"))),
            Err(error) => Err(failed("could not run ssh", format!("{error:#}"))),
        }
    };
    match &check.action {
        Action::Succeed { command, expect } => {
            let output = ssh(machine, command, check.timeout)?;
            if !output.status.success() {
                return Err(failed(format!("`{command}` failed ({})", crate::process::describe_status(output.status)), show(command, &output)));
            }
            if !matches_expectation(&output.stdout_text(), expect) {
                return Err(failed(format!("`{command}` printed something else than expected: {expect:?}"), show(command, &output)));
            }
            Ok(None)
        }
        Action::Fail { command } => {
            let output = ssh(machine, command, check.timeout)?;
            if output.status.success() {
                return Err(failed(format!("`{command}` succeeded but should have failed"), show(command, &output)));
            }
            Ok(None)
        }
        Action::WaitUntilSucceeds { command, expect } => loop {
            let output = ssh(machine, command, remaining())?;
            if output.status.success() && matches_expectation(&output.stdout_text(), expect) {
                return Ok(None);
            }
            if Instant::now() >= deadline {
                return Err(failed(format!("`{command}` did not succeed within {} s", check.timeout.as_secs()), show(command, &output)));
            }
            std::thread::sleep(Duration::from_secs(1));
        },
        Action::WaitForUnit { unit } => loop {
            let command = format!("systemctl is-active {}", shell_words::quote(unit));
            let output = ssh(machine, &command, remaining())?;
            let state = output.stdout_text().trim().to_string();
            if state == "active" {
                return Ok(None);
            }
            if state == "failed" || Instant::now() >= deadline {
                let status_command = format!("systemctl status --no-pager {}", shell_words::quote(unit));
                let status = machine.ssh(&status_command, Duration::from_secs(20)).ok().flatten();
                let details = status.map(|s| show(&status_command, &s)).unwrap_or_default();
                return Err(failed(format!("unit {unit} is {state}"), details));
            }
            std::thread::sleep(Duration::from_secs(1));
        },
        Action::WaitForPort { port } => loop {
            let command = format!("ss -Htln 'sport = :{port}'");
            let output = ssh(machine, &command, remaining())?;
            if output.status.success() && !output.stdout_text().trim().is_empty() {
                return Ok(None);
            }
            if Instant::now() >= deadline {
                return Err(failed(format!("nothing listens on TCP port {port} after {} s", check.timeout.as_secs()), show(&command, &output)));
            }
            std::thread::sleep(Duration::from_secs(1));
        },
        Action::Differ { command } => {
            let output = ssh(machine, command, check.timeout)?;
            if !output.status.success() {
                return Err(failed(format!("`{command}` failed"), show(command, &output)));
            }
            Ok(Some(output.stdout_text().trim().to_string()))
        }
        Action::SshRefusesWrongKey => {
            let result = machine.ssh_with_key(&stranger.private, "true", check.timeout);
            match result {
                Ok(Some(output)) if output.status.success() => {
                    Err(failed("a key the machine was never given logged in", show("ssh -i <stranger key> true", &output)))
                }
                Ok(Some(output)) if String::from_utf8_lossy(&output.stderr).contains("Permission denied") => Ok(None),
                Ok(Some(output)) => Err(failed("the login failed, but not because the key was refused", show("ssh -i <stranger key> true", &output))),
                Ok(None) => Err(failed("the login attempt timed out", String::new())),
                Err(error) => Err(failed("could not run ssh", format!("{error:#}"))),
            }
        }
        Action::OutsideSucceed { command, .. } | Action::OutsideFail { command } if outside.is_some() => {
            let (lab, address) = outside.expect("checked");
            let command = command.replace("{address}", address);
            let result = lab.outside("sh").arg("-c").arg(&command).run_with_timeout(check.timeout);
            let output = match result {
                Ok(Some(output)) => output,
                Ok(None) => return Err(failed(format!("timed out after {} s on the outside host", check.timeout.as_secs()), format!("command: {command}"))),
                Err(error) => return Err(failed("could not run the command on the outside host", format!("{error:#}"))),
            };
            let want_success = matches!(check.action, Action::OutsideSucceed { .. });
            let expect = match &check.action {
                Action::OutsideSucceed { expect, .. } => expect.clone(),
                _ => Expect::Anything,
            };
            if output.status.success() != want_success {
                let verb = if want_success { "failed" } else { "succeeded but should have failed" };
                return Err(failed(format!("outside host: `{command}` {verb}"), show(&command, &output)));
            }
            if want_success && !matches_expectation(&output.stdout_text(), &expect) {
                return Err(failed(format!("outside host: `{command}` printed something else than expected: {expect:?}"), show(&command, &output)));
            }
            Ok(None)
        }
        Action::OpenTcpPorts { ports } if outside.is_some() => {
            let (lab, address) = outside.expect("checked");
            // The lab address comes by DHCP; wait until the machine answers there.
            let reachable = format!("for i in $(seq 30); do ping -c1 -W1 {address} >/dev/null 2>&1 && exit 0; sleep 1; done; exit 1");
            let _ = lab.outside("sh").arg("-c").arg(&reachable).run_with_timeout(Duration::from_secs(70));
            match lab.open_tcp_ports(address, check.timeout) {
                Ok(open) if &open == ports => Ok(None),
                Ok(open) => Err(failed(
                    format!("from outside, open TCP ports of {address} are {open:?}, expected exactly {ports:?}"),
                    format!("nmap -sT -p- {address} from {}", lab::OUTSIDE_ADDRESS),
                )),
                Err(error) => Err(failed("the port scan failed", format!("{error:#}"))),
            }
        }
        Action::OutsideSucceed { .. } | Action::OutsideFail { .. } | Action::OpenTcpPorts { .. } => {
            Err(failed("this check needs the isolated network", String::new()))
        }
    }
}
