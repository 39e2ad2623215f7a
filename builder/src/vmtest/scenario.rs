//! Test scenarios (`vm-tests/*.toml`): which profile to boot, on which
//! machines, and the ordered checks, in the spirit of the NixOS test driver.
//! Parsed and validated completely before anything boots. No IO beyond
//! reading the scenario file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::located::{LocatedError, SourceText};
use crate::profile::{ImageSize, Port};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawScenario {
    description: Option<String>,
    profile: Spanned<String>,
    boot_timeout: Option<Spanned<u64>>,
    isolated_network: Option<bool>,
    /// Networks of the lab besides "outside" (or amending it).
    #[serde(default)]
    network: Vec<crate::vmtest::networks::RawNetwork>,
    #[serde(default)]
    machine: Vec<RawMachine>,
    #[serde(default)]
    check: Vec<RawCheck>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawMachine {
    name: Spanned<String>,
    disk_size: Option<Spanned<String>>,
    memory_mib: Option<Spanned<u64>>,
    /// The machine's disk starts empty; the offline installer writes the image onto it.
    installer: Option<bool>,
    /// With installer: a copy of the image that was never booted (as the
    /// disk of an earlier install would be) stays attached while the
    /// installer runs and while the machine boots.
    image_copy_attached: Option<Spanned<bool>>,
    /// Blank disks attached besides the system disk.
    #[serde(default)]
    extra_disks: Vec<RawExtraDisk>,
    /// The machine has a TPM 2.0 of its own (swtpm), kept across restarts.
    tpm: Option<bool>,
    /// "point-release": the machine boots the profile's image built from the
    /// point release's lock (its security suite left out), with the patch
    /// medium from that lock to the profile's attached (see
    /// `Action::PatchMediumApplies`).
    image_lock: Option<Spanned<String>>,
    /// false: the firmware has no keys enrolled (setup mode), so Secure Boot
    /// is off; default true (the site's keys, Secure Boot on).
    secure_boot: Option<bool>,
    /// The lab networks the machine has a NIC on, in order; default ["outside"].
    networks: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawExtraDisk {
    size: Spanned<String>,
    /// The guest sees the disk as /dev/disk/by-id/virtio-SERIAL.
    serial: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawSmarthostReceives {
    /// Run as root in the guest first (or `outside`, on the outside host).
    after: Option<String>,
    outside: Option<String>,
    /// Which of the lab's mail hosts (host:port); default: the first (the smarthost).
    at: Option<String>,
    containing: Vec<String>,
    #[serde(default)]
    absent: Vec<String>,
    mails: Option<u32>,
    /// Count the mails since the sink started, not only those after the command.
    #[serde(default)]
    from_start: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawCheck {
    name: Spanned<String>,
    machine: Option<Spanned<String>>,
    timeout: Option<Spanned<u64>>,
    succeed: Option<String>,
    fail: Option<String>,
    wait_until_succeeds: Option<String>,
    wait_for_unit: Option<String>,
    wait_for_port: Option<Spanned<i64>>,
    differ: Option<String>,
    ssh_refuses_wrong_key: Option<bool>,
    outside_succeed: Option<String>,
    outside_fail: Option<String>,
    open_tcp_ports: Option<Vec<Spanned<i64>>>,
    open_udp_ports: Option<Vec<Spanned<i64>>>,
    /// With open-tcp-ports / open-udp-ports: scan from this address of the
    /// second host (it has 10.77.0.2 and 10.77.0.3).
    scan_from: Option<Spanned<String>>,
    /// With open-tcp-ports / open-udp-ports: scan this address instead of
    /// the machine's on the outside network.
    scan_target: Option<Spanned<String>>,
    /// With open-tcp-ports: scan these ports (nmap's -p, e.g. "1-1024,8080")
    /// instead of all 65535.
    scan_ports: Option<Spanned<String>>,
    /// With outside-succeed / outside-fail: run on this network's host.
    host: Option<Spanned<String>>,
    /// `[vpn]`: with the WireGuard key in this file (relative to the
    /// scenario; a peer the profile enrolls), the outside host's tunnel
    /// reaches SSH on the machine's VPN address; without the tunnel, and
    /// with a key the profile does not enroll, it does not.
    vpn_admits_enrolled_peer: Option<Spanned<String>>,
    /// `[mail]`: after a command run as root in the guest, the lab's
    /// smarthost (the profile's `mail.smarthost` on the outside host)
    /// receives this many mails holding every `containing` string and none
    /// of `absent`, all of them after STARTTLS.
    smarthost_receives: Option<Spanned<RawSmarthostReceives>>,
    ssh_refuses: Option<Vec<String>>,
    ssh_user: Option<String>,
    running_services_match_profile: Option<bool>,
    listening_sockets_match_profile: Option<bool>,
    /// Every sysctl rampart and the profile set reads back with its value.
    sysctls_match_profile: Option<bool>,
    first_login_forced_password_change: Option<bool>,
    /// A line logged in the guest reaches the profile's remote log host.
    remote_log_receives: Option<bool>,
    /// Lines logged while the remote log host is down arrive once it is back.
    remote_log_survives_outage: Option<bool>,
    /// Every running service of the profile has lines of its own in syslog.
    profile_services_log: Option<bool>,
    /// The offline installer, given an empty disk of this size, refuses it
    /// (too small) with the message in expect-contains and writes nothing.
    installer_refuses_disk_of: Option<Spanned<String>>,
    /// A copy of the image whose firewall ruleset does not load boots with
    /// every interface but lo down: its console says why, and the second
    /// host finds no trace of it on the network.
    firewall_fails_closed: Option<bool>,
    /// A copy of the image with one byte of its signed boot image changed
    /// does not boot: the firmware's Secure Boot refuses it.
    tampered_boot_image_is_refused: Option<bool>,
    /// A copy of the image whose loader entry asks for `init=/bin/sh` boots
    /// the command line signed into the boot image all the same.
    injected_command_line_is_ignored: Option<bool>,
    /// `[encryption] data`: the data partitions are sealed to the machine's
    /// TPM (see `Action::DataIsSealedToTheTpm`).
    data_is_sealed_to_the_tpm: Option<bool>,
    /// The disk the machine booted from holds its root and configuration
    /// partition, and none of its identifiers is the image's.
    disk_is_its_own: Option<bool>,
    /// `rampart patch` brings the machine (image-lock = "point-release") to
    /// the profile's lock (see `Action::PatchMediumApplies`).
    patch_medium_applies: Option<bool>,
    /// A kernel apt installs reaches the boot path of a machine without
    /// Secure Boot (see `Action::KernelFromAptBoots`).
    kernel_from_apt_boots: Option<bool>,
    /// Run the command as root, through sudo with the admin's password.
    as_root: Option<bool>,
    expect: Option<String>,
    expect_contains: Option<String>,
}

#[derive(Debug, Clone)]
pub struct MachineSpec {
    pub name: String,
    pub disk_size: ImageSize,
    pub memory_mib: u64,
    /// Installed by the offline installer onto an empty disk, then booted.
    pub installer: bool,
    /// A never-booted copy of the image stays attached (installer machines).
    pub image_copy_attached: bool,
    pub extra_disks: Vec<ExtraDisk>,
    /// A TPM 2.0 of its own (swtpm).
    pub tpm: bool,
    /// Boots the image of the point release's lock, the patch media attached.
    pub point_release: bool,
    /// The site's keys enrolled in the firmware (Secure Boot on).
    pub secure_boot: bool,
    /// Indices into the scenario's networks, one NIC each, in order.
    pub networks: Vec<usize>,
}

/// A blank virtio disk: the guest finds it at /dev/disk/by-id/virtio-SERIAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraDisk {
    pub size: ImageSize,
    pub serial: String,
}

/// A virtio-blk serial: at most 20 bytes (the longest the device reports),
/// letters, digits, '-' and '_'.
pub fn parse_disk_serial(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 20 || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(format!("{s:?} is not a disk serial (1 to 20 letters, digits, '-' or '_', e.g. \"rampart-backup\")"));
    }
    Ok(s.to_string())
}

/// Which machines a check runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    One(usize),
    All,
}

/// What the output of a command must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    Anything,
    Equals(String),
    Contains(String),
}

/// What makes a mail: a command as root in the guest, or one on the
/// outside host (`{address}` is the machine's outside address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailTrigger {
    Guest(String),
    Outside(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The command exits 0 (and its output matches).
    Succeed { command: String, expect: Expect },
    /// The command exits non-zero.
    Fail { command: String },
    /// Retry until the command exits 0 (and its output matches).
    WaitUntilSucceeds { command: String, expect: Expect },
    /// Wait until the unit is active; fail at once if it failed.
    WaitForUnit { unit: String },
    /// Wait until something in the guest listens on the TCP port.
    WaitForPort { port: Port },
    /// The command's output differs between every pair of machines.
    Differ { command: String },
    /// An SSH login with a key the machine was not given is refused.
    SshRefusesWrongKey,
    /// On the host of network `host` (0: the outside host), the command
    /// exits 0; `{address}` stands for the machine's outside address.
    OutsideSucceed { command: String, expect: Expect, host: usize },
    /// On that host, the command exits non-zero.
    OutsideFail { command: String, host: usize },
    /// A scan of every TCP port of `target` (default: the machine's outside
    /// address) from the host with address `from` finds exactly these open.
    OpenTcpPorts { ports: Vec<u16>, from: String, target: Option<String>, only: Option<String> },
    /// A scan of the common UDP ports finds exactly these open.
    OpenUdpPorts { ports: Vec<u16>, from: String, target: Option<String> },
    /// `[vpn]`: an enrolled peer's tunnel from the outside host reaches SSH
    /// on the machine's VPN address; no tunnel, or another key, does not.
    VpnAdmitsEnrolledPeer { key: PathBuf },
    /// `[mail]`, `[mail-gateway]`: once `after` ran (as root in the guest,
    /// or on the outside host), the lab's mail host `at` (default: the
    /// first, the smarthost) receives exactly `mails` messages holding every
    /// `containing` string and no `absent` one, each after STARTTLS (with
    /// `from_start`, counted since the sink started: mails an earlier
    /// check's failure sent). `mails = 0`: a refused message never arrives.
    SmarthostReceives { after: MailTrigger, at: Option<std::net::SocketAddr>, containing: Vec<String>, absent: Vec<String>, mails: usize, from_start: bool },
    /// An SSH login with the provisioned key and these client options (and
    /// perhaps another user) is refused.
    SshRefuses { options: Vec<String>, user: Option<String>, expect: Expect },
    /// The running services are the profile's allow-list plus systemd's core.
    RunningServicesMatchProfile,
    /// The listening sockets are the ports the profile declares.
    ListeningSocketsMatchProfile,
    /// The first login had to change the account's expired password.
    FirstLoginForcedPasswordChange,
    /// A line logged in the guest arrives at the remote log host (the
    /// profile's `logging.remote`, an address of the second host).
    RemoteLogReceives,
    /// With the remote log host down, lines logged in the guest wait in its
    /// queue and all arrive once the host is back.
    RemoteLogSurvivesOutage,
    /// Every running service of the profile writes lines of its own to syslog.
    ProfileServicesLog,
    /// Every sysctl the firewall, the kernel control and the profile set
    /// reads back (`sysctl -n`) with the value they set.
    SysctlsMatchProfile,
    /// The offline installer, booted with only an empty disk of this size
    /// beside it, refuses to install (the message matches) and the disk
    /// stays empty.
    InstallerRefuses { disk_size: ImageSize, expect: Expect },
    /// A copy of the image with an unloadable ruleset, booted beside the
    /// machine on the isolated network, says on its console that the
    /// firewall did not load, and neither gets a DHCP lease nor answers the
    /// second host's ARP sweep of the subnet.
    FirewallFailsClosed,
    /// A copy whose signed boot image has one byte changed does not boot.
    TamperedBootImageIsRefused,
    /// A copy whose unsigned loader configuration asks for `init=/bin/sh`
    /// runs systemd as init all the same.
    InjectedCommandLineIsIgnored,
    /// What the machine writes to /var and /home is not on its disk in the
    /// clear; each data partition is a LUKS2 volume with a TPM token that
    /// the recovery key (its escrow opened with the site's key) opens; the
    /// machine restarted opens them with its TPM alone; the disk in a
    /// machine with another TPM stops at the recovery prompt; a copy of the
    /// image without a TPM says so. Powers the machine off and on.
    DataIsSealedToTheTpm,
    /// The root, the configuration partition and the partition the boot
    /// loader was loaded from are on the disk the machine booted, and no
    /// identifier on it (disk GUID, partition UUIDs, file-system UUIDs) is
    /// the image's; a copy attached beside it still carries the image's.
    DiskIsItsOwn,
    /// On a machine of the point release's image: its package report says
    /// what it lacks; media damaged, signed by another site or for another
    /// lock, and /var too full, are refused with nothing changed; the medium
    /// `rampart patch` made, cut off while dpkg unpacks, resumes and
    /// finishes; restarted, the machine runs the new lock's kernel and
    /// every package at the new lock's version, AIDE is clean but for a
    /// file changed after the patch, and each step was logged (the remote
    /// log host too, on the isolated network). Powers the machine off and on.
    PatchMediumApplies,
    /// On a point-release machine with Secure Boot off: the new lock's
    /// kernel, installed by plain apt from a local repository (the patch
    /// medium's, read in the guest), gets a boot loader entry from the
    /// kernel hook; restarted, the machine runs it. Powers it off and on.
    KernelFromAptBoots,
}

impl Action {
    fn needs_isolated_network(&self) -> bool {
        matches!(
            self,
            Action::OutsideSucceed { .. }
                | Action::OutsideFail { .. }
                | Action::OpenTcpPorts { .. }
                | Action::OpenUdpPorts { .. }
                | Action::RemoteLogReceives
                | Action::RemoteLogSurvivesOutage
                | Action::FirewallFailsClosed
                | Action::VpnAdmitsEnrolledPeer { .. }
                | Action::SmarthostReceives { .. }
        )
    }

    /// The check boots the offline installer (`build --installer`).
    pub fn needs_installer(&self) -> bool {
        matches!(self, Action::InstallerRefuses { .. })
    }

    /// The check needs the profile's remote log host on the second host.
    pub fn needs_remote_log_host(&self) -> bool {
        matches!(self, Action::RemoteLogReceives | Action::RemoteLogSurvivesOutage)
    }
}

#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub target: Target,
    pub action: Action,
    pub timeout: Duration,
    /// Commands run as root (through sudo) instead of the admin user.
    pub as_root: bool,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub path: PathBuf,
    pub description: String,
    pub profile_path: PathBuf,
    pub boot_timeout: Duration,
    /// Machines also get a NIC on an isolated network with a second host.
    pub isolated_network: bool,
    /// The lab's networks, "outside" first (only with isolated_network).
    pub networks: Vec<crate::vmtest::networks::NetworkSpec>,
    pub machines: Vec<MachineSpec>,
    pub checks: Vec<Check>,
}

impl Scenario {
    /// Some machine or check boots the offline installer.
    pub fn needs_point_release(&self) -> bool {
        self.machines.iter().any(|m| m.point_release)
    }

    pub fn needs_installer(&self) -> bool {
        self.machines.iter().any(|m| m.installer) || self.checks.iter().any(|c| c.action.needs_installer())
    }
}

/// Reads and validates a scenario. Profiles are looked up as
/// `<scenario dir>/../profiles/<profile>.toml`.
pub fn load(path: &Path) -> Result<Scenario, LocatedError> {
    let text = std::fs::read_to_string(path).map_err(|e| LocatedError {
        location: path.display().to_string(),
        message: format!("cannot read scenario: {e}"),
    })?;
    let source = SourceText { file: path.to_path_buf(), text };
    let raw: RawScenario = source.parse()?;
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let profile_name = source.check(&raw.profile, "profile", |s| crate::profile::ProfileName::parse(s))?;
    let profile_path = path
        .parent()
        .unwrap_or(Path::new("."))
        .join("..")
        .join("profiles")
        .join(format!("{profile_name}.toml"));
    if !profile_path.exists() {
        return Err(source.error(&raw.profile, format!("profile: no profile {profile_name} (looked for {})", profile_path.display())));
    }
    let isolated_network = raw.isolated_network.unwrap_or(false);
    if !isolated_network && !raw.network.is_empty() {
        return Err(source.error(raw.network[0].name_span(), "network: the lab's networks need isolated-network = true"));
    }
    let networks = crate::vmtest::networks::parse(&source, &raw.network)?;
    let mut machines = Vec::new();
    for machine in &raw.machine {
        let spec = machine_spec(&source, machine, &machines, &networks, isolated_network)?;
        machines.push(spec);
    }
    if machines.is_empty() {
        machines.push(MachineSpec { name: "machine".into(), disk_size: ImageSize::from_bytes(4 << 30), memory_mib: 1024, installer: false, image_copy_attached: false, extra_disks: Vec::new(), tpm: false, point_release: false, secure_boot: true, networks: vec![0] });
    }
    let mut checks = Vec::new();
    for check in raw.check {
        let name = check.name.clone();
        let check = validate_check(&source, check, &machines, &networks)?;
        if check.action.needs_isolated_network() && !isolated_network {
            return Err(source.error(&name, format!("check {}: checks from outside need isolated-network = true", check.name)));
        }
        if matches!(check.action, Action::PatchMediumApplies | Action::KernelFromAptBoots) {
            let on_point_release = match check.target {
                Target::One(index) => machines[index].point_release,
                Target::All => machines.iter().all(|m| m.point_release),
            };
            if !on_point_release {
                return Err(source.error(&name, format!("check {}: patch-medium-applies and kernel-from-apt-boots run on machines with image-lock = \"point-release\"", check.name)));
            }
        }
        checks.push(check);
    }
    if checks.is_empty() {
        return Err(LocatedError { location: path.display().to_string(), message: "a scenario needs at least one [[check]]".into() });
    }
    let boot_timeout = match &raw.boot_timeout {
        Some(t) => Duration::from_secs(source.check(t, "boot-timeout", |t| if *t >= 10 { Ok(*t) } else { Err("at least 10 seconds") })?),
        None => Duration::from_secs(240),
    };
    Ok(Scenario {
        name,
        path: path.to_path_buf(),
        description: raw.description.unwrap_or_default(),
        profile_path,
        boot_timeout,
        isolated_network,
        networks: if isolated_network { networks } else { Vec::new() },
        machines,
        checks,
    })
}

/// One `[[machine]]`, validated against those before it and the scenario's networks.
fn machine_spec(source: &SourceText, machine: &RawMachine, machines: &[MachineSpec], networks: &[crate::vmtest::networks::NetworkSpec], isolated_network: bool) -> Result<MachineSpec, LocatedError> {
    let name = source.check(&machine.name, "machine.name", |s| crate::profile::Hostname::parse(s))?.to_string();
    if machines.iter().any(|m: &MachineSpec| m.name == name) {
        return Err(source.error(&machine.name, format!("machine.name: {name} is declared twice")));
    }
    let disk_size = match &machine.disk_size {
        Some(size) => source.check(size, "machine.disk-size", |s| ImageSize::parse(s))?,
        None => ImageSize::from_bytes(4 << 30),
    };
    let memory_mib = match &machine.memory_mib {
        Some(m) => source.check(m, "machine.memory-mib", |m| {
            if (256..=65536).contains(m) { Ok(*m) } else { Err(format!("{m} MiB is out of range (256 to 65536)")) }
        })?,
        None => 1024,
    };
    let mut extra_disks: Vec<ExtraDisk> = Vec::new();
    for disk in &machine.extra_disks {
        let serial = source.check(&disk.serial, "machine.extra-disks.serial", |s| parse_disk_serial(s))?;
        if extra_disks.iter().any(|d| d.serial == serial) {
            return Err(source.error(&disk.serial, format!("machine.extra-disks.serial: {serial} is given twice")));
        }
        let size = source.check(&disk.size, "machine.extra-disks.size", |s| ImageSize::parse(s))?;
        extra_disks.push(ExtraDisk { size, serial });
    }
    let installer = machine.installer.unwrap_or(false);
    let image_copy_attached = match &machine.image_copy_attached {
        Some(flag) if *flag.get_ref() && !installer => {
            return Err(source.error(flag, "machine.image-copy-attached: only a machine installed by the offline installer (installer = true) boots beside a copy of its image"));
        }
        Some(flag) => *flag.get_ref(),
        None => false,
    };
    let point_release = match &machine.image_lock {
        Some(lock) if lock.get_ref() != "point-release" => {
            return Err(source.error(lock, format!("machine.image-lock: {:?} is not a lock the harness makes; the one is \"point-release\"", lock.get_ref())));
        }
        Some(lock) if installer => return Err(source.error(lock, "machine.image-lock: a machine installed by the offline installer boots the profile's own image")),
        Some(_) => true,
        None => false,
    };
    let mut nics = Vec::new();
    for network in machine.networks.iter().flatten() {
        let Some(index) = networks.iter().position(|n| &n.name == network.get_ref()) else {
            let names: Vec<&str> = networks.iter().map(|n| n.name.as_str()).collect();
            return Err(source.error(network, format!("machine.networks: no network {:?} (the scenario's: {})", network.get_ref(), names.join(", "))));
        };
        if nics.contains(&index) {
            return Err(source.error(network, format!("machine.networks: {} is given twice", network.get_ref())));
        }
        if !isolated_network {
            return Err(source.error(network, "machine.networks: the lab's networks need isolated-network = true"));
        }
        nics.push(index);
    }
    if machine.networks.is_none() {
        nics.push(0);
    }
    Ok(MachineSpec { name, disk_size, memory_mib, installer, image_copy_attached, extra_disks, tpm: machine.tpm.unwrap_or(false), point_release, secure_boot: machine.secure_boot.unwrap_or(true), networks: nics })
}

/// Ports as nmap's -p takes them: "22", "1-1024", "1-1024,8080".
fn parse_port_ranges(s: &str) -> Result<String, String> {
    let bad = || format!("{s:?} is not a list of ports and ranges (e.g. \"1-1024,8080\")");
    for item in s.split(',') {
        let (low, high) = item.split_once('-').unwrap_or((item, item));
        let low = low.parse::<i64>().map_err(|_| bad()).and_then(|p| Port::from_i64(p).map_err(|_| bad()))?;
        let high = high.parse::<i64>().map_err(|_| bad()).and_then(|p| Port::from_i64(p).map_err(|_| bad()))?;
        if low > high {
            return Err(bad());
        }
    }
    Ok(s.to_string())
}

fn validate_check(source: &SourceText, raw: RawCheck, machines: &[MachineSpec], networks: &[crate::vmtest::networks::NetworkSpec]) -> Result<Check, LocatedError> {
    let name = raw.name.get_ref().clone();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(source.error(&raw.name, "check.name: use letters, digits, '_' and '-' (it names the JUnit test case)"));
    }
    let expect = match (&raw.expect, &raw.expect_contains) {
        (Some(_), Some(_)) => return Err(source.error(&raw.name, "check: give expect or expect-contains, not both")),
        (Some(text), None) => Expect::Equals(text.trim().to_string()),
        (None, Some(text)) => Expect::Contains(text.clone()),
        (None, None) => Expect::Anything,
    };
    let mut actions = actions_of(source, &raw, &name, &expect, networks)?;
    let action = match actions.len() {
        1 => actions.remove(0),
        0 => return Err(source.error(&raw.name, format!("check {name}: no action; give one of succeed, fail, wait-until-succeeds, wait-for-unit, wait-for-port, differ, ssh-refuses-wrong-key, ssh-refuses, outside-succeed, outside-fail, open-tcp-ports, open-udp-ports, running-services-match-profile, listening-sockets-match-profile, sysctls-match-profile, first-login-forced-password-change, remote-log-receives, remote-log-survives-outage, profile-services-log, installer-refuses-disk-of, firewall-fails-closed, tampered-boot-image-is-refused, injected-command-line-is-ignored, data-is-sealed-to-the-tpm, disk-is-its-own, patch-medium-applies, kernel-from-apt-boots, vpn-admits-enrolled-peer, smarthost-receives"))),
        _ => return Err(source.error(&raw.name, format!("check {name}: give exactly one action"))),
    };
    check_modifiers(source, &raw, &name, &action, &expect)?;
    let target = match (&raw.machine, &action) {
        (_, Action::Differ { .. }) if machines.len() < 2 => {
            return Err(source.error(&raw.name, format!("check {name}: differ needs at least two machines")));
        }
        (_, Action::Differ { .. }) => Target::All,
        (None, _) => Target::One(0),
        (Some(m), _) if m.get_ref() == "all" => Target::All,
        (Some(m), _) => match machines.iter().position(|spec| &spec.name == m.get_ref()) {
            Some(index) => Target::One(index),
            None => return Err(source.error(m, format!("check.machine: no machine named {}", m.get_ref()))),
        },
    };
    let timeout = match &raw.timeout {
        Some(t) => Duration::from_secs(source.check(t, "check.timeout", |t| if (1..=3600).contains(t) { Ok(*t) } else { Err("1 to 3600 seconds") })?),
        None => Duration::from_secs(60),
    };
    Ok(Check { name, target, action, timeout, as_root: raw.as_root.unwrap_or(false) })
}

/// The actions a check's fields ask for (exactly one is allowed).
fn actions_of(source: &SourceText, raw: &RawCheck, name: &str, expect: &Expect, networks: &[crate::vmtest::networks::NetworkSpec]) -> Result<Vec<Action>, LocatedError> {
    let mut actions = Vec::new();
    if let Some(command) = raw.succeed.clone() {
        actions.push(Action::Succeed { command, expect: expect.clone() });
    }
    if let Some(command) = raw.wait_until_succeeds.clone() {
        actions.push(Action::WaitUntilSucceeds { command, expect: expect.clone() });
    }
    if let Some(command) = raw.fail.clone() {
        actions.push(Action::Fail { command });
    }
    if let Some(unit) = raw.wait_for_unit.clone() {
        actions.push(Action::WaitForUnit { unit });
    }
    if let Some(port) = &raw.wait_for_port {
        actions.push(Action::WaitForPort { port: source.check(port, "check.wait-for-port", |p| Port::from_i64(*p))? });
    }
    if let Some(command) = raw.differ.clone() {
        actions.push(Action::Differ { command });
    }
    if raw.ssh_refuses_wrong_key == Some(true) {
        actions.push(Action::SshRefusesWrongKey);
    }
    let host = match &raw.host {
        None => 0,
        Some(name) => source.check(name, "check.host", |n| {
            networks.iter().position(|x| &x.name == n).ok_or_else(|| format!("no network {n:?} (the scenario's: {})", networks.iter().map(|x| x.name.as_str()).collect::<Vec<_>>().join(", ")))
        })?,
    };
    if let Some(command) = raw.outside_succeed.clone() {
        actions.push(Action::OutsideSucceed { command, expect: expect.clone(), host });
    }
    if let Some(command) = raw.outside_fail.clone() {
        actions.push(Action::OutsideFail { command, host });
    }
    let from = match &raw.scan_from {
        None => crate::vmtest::lab::OUTSIDE_ADDRESS.to_string(),
        Some(address) => source.check(address, "check.scan-from", |a| match crate::vmtest::networks::host_of(networks, a) {
            Some(_) => Ok(a.clone()),
            None => {
                let all: Vec<String> = networks.iter().flat_map(|n| n.hosts.iter().map(|h| h.to_string())).collect();
                Err(format!("{a:?} is not an address of a lab host ({})", all.join(", ")))
            }
        })?,
    };
    let target = match &raw.scan_target {
        None => None,
        Some(address) => Some(source.check(address, "check.scan-target", |a| a.parse::<std::net::Ipv4Addr>().map(|a| a.to_string()).map_err(|_| format!("{a:?} is not an IPv4 address")))?),
    };
    for (list, field, udp) in [(&raw.open_tcp_ports, "check.open-tcp-ports", false), (&raw.open_udp_ports, "check.open-udp-ports", true)] {
        let Some(ports) = list else { continue };
        let mut parsed = Vec::new();
        for port in ports {
            parsed.push(source.check(port, field, |p| Port::from_i64(*p))?.get());
        }
        parsed.sort_unstable();
        parsed.dedup();
        let (from, target) = (from.clone(), target.clone());
        let only = match &raw.scan_ports {
            Some(spec) if udp => return Err(source.error(spec, "check.scan-ports: goes with open-tcp-ports (a UDP scan covers nmap's 100 most common ports)")),
            Some(spec) => Some(source.check(spec, "check.scan-ports", |s| parse_port_ranges(s))?),
            None => None,
        };
        actions.push(if udp { Action::OpenUdpPorts { ports: parsed, from, target } } else { Action::OpenTcpPorts { ports: parsed, from, target, only } });
    }
    if let Some(options) = raw.ssh_refuses.clone() {
        // The harness pins the guest's host key; a check may not undo that.
        const PINNING: &[&str] = &["stricthostkeychecking", "userknownhostsfile", "globalknownhostsfile", "hostkeyalias", "knownhostscommand"];
        if let Some(option) = options.iter().find(|o| PINNING.iter().any(|p| o.to_ascii_lowercase().contains(p))) {
            return Err(source.error(&raw.name, format!("check {name}: ssh-refuses may not set {option:?}: the harness accepts only the host key the guest printed")));
        }
        actions.push(Action::SshRefuses { options, user: raw.ssh_user.clone(), expect: expect.clone() });
    } else if raw.ssh_user.is_some() {
        return Err(source.error(&raw.name, format!("check {name}: ssh-user goes with ssh-refuses")));
    }
    if raw.running_services_match_profile == Some(true) {
        actions.push(Action::RunningServicesMatchProfile);
    }
    if raw.listening_sockets_match_profile == Some(true) {
        actions.push(Action::ListeningSocketsMatchProfile);
    }
    if raw.sysctls_match_profile == Some(true) {
        actions.push(Action::SysctlsMatchProfile);
    }
    if let Some(size) = &raw.installer_refuses_disk_of {
        let disk_size = source.check(size, "check.installer-refuses-disk-of", |s| ImageSize::parse_any(s))?;
        actions.push(Action::InstallerRefuses { disk_size, expect: expect.clone() });
    }
    if raw.firewall_fails_closed == Some(true) {
        actions.push(Action::FirewallFailsClosed);
    }
    if raw.tampered_boot_image_is_refused == Some(true) {
        actions.push(Action::TamperedBootImageIsRefused);
    }
    if raw.injected_command_line_is_ignored == Some(true) {
        actions.push(Action::InjectedCommandLineIsIgnored);
    }
    if raw.data_is_sealed_to_the_tpm == Some(true) {
        actions.push(Action::DataIsSealedToTheTpm);
    }
    if raw.disk_is_its_own == Some(true) {
        actions.push(Action::DiskIsItsOwn);
    }
    if raw.patch_medium_applies == Some(true) {
        actions.push(Action::PatchMediumApplies);
    }
    if raw.kernel_from_apt_boots == Some(true) {
        actions.push(Action::KernelFromAptBoots);
    }
    if let Some(key) = &raw.vpn_admits_enrolled_peer {
        let key = source.check(key, "check.vpn-admits-enrolled-peer", |k| {
            if k.is_empty() || k.starts_with('/') || k.split('/').any(|c| c == "..") {
                Err(format!("{k:?} is not a file below the scenario's directory"))
            } else {
                Ok(source.file.parent().unwrap_or(Path::new(".")).join(k))
            }
        })?;
        actions.push(Action::VpnAdmitsEnrolledPeer { key });
    }
    if let Some(receives) = &raw.smarthost_receives {
        let spec = receives.get_ref();
        if spec.containing.iter().chain(&spec.absent).any(|s| s.is_empty()) || spec.containing.is_empty() {
            return Err(source.error(receives, "check.smarthost-receives: containing needs at least one string, and no string may be empty"));
        }
        let mails = spec.mails.unwrap_or(1) as usize;
        if mails > 20 {
            return Err(source.error(receives, "check.smarthost-receives: mails is out of range (0 to 20)"));
        }
        let after = match (&spec.after, &spec.outside) {
            (Some(command), None) => MailTrigger::Guest(command.clone()),
            (None, Some(command)) => MailTrigger::Outside(command.clone()),
            _ => return Err(source.error(receives, "check.smarthost-receives: give one of after (a command run as root in the guest) or outside (one run on the outside host)")),
        };
        let at = match &spec.at {
            Some(at) => Some(at.parse().map_err(|_| source.error(receives, format!("check.smarthost-receives: at = {at:?} is not an address:port")))?),
            None => None,
        };
        actions.push(Action::SmarthostReceives { after, at, containing: spec.containing.clone(), absent: spec.absent.clone(), mails, from_start: spec.from_start });
    }
    if raw.first_login_forced_password_change == Some(true) {
        actions.push(Action::FirstLoginForcedPasswordChange);
    }
    if raw.remote_log_receives == Some(true) {
        actions.push(Action::RemoteLogReceives);
    }
    if raw.remote_log_survives_outage == Some(true) {
        actions.push(Action::RemoteLogSurvivesOutage);
    }
    if raw.profile_services_log == Some(true) {
        actions.push(Action::ProfileServicesLog);
    }
    Ok(actions)
}

/// The fields that qualify an action (expect, as-root, scan-from, host, ...) go with one that takes them.
fn check_modifiers(source: &SourceText, raw: &RawCheck, name: &str, action: &Action, expect: &Expect) -> Result<(), LocatedError> {
    let uses_expect = matches!(
        action,
        Action::Succeed { .. } | Action::WaitUntilSucceeds { .. } | Action::OutsideSucceed { .. } | Action::SshRefuses { .. } | Action::InstallerRefuses { .. }
    );
    if *expect != Expect::Anything && !uses_expect {
        return Err(source.error(&raw.name, format!("check {name}: expect applies only to succeed, wait-until-succeeds, outside-succeed, ssh-refuses and installer-refuses-disk-of")));
    }
    let runs_a_command = matches!(
        action,
        Action::Succeed { .. } | Action::Fail { .. } | Action::WaitUntilSucceeds { .. } | Action::Differ { .. } | Action::SysctlsMatchProfile
    );
    let as_root = raw.as_root.unwrap_or(false);
    if as_root && !runs_a_command {
        return Err(source.error(&raw.name, format!("check {name}: as-root applies only to succeed, fail, wait-until-succeeds, differ and sysctls-match-profile")));
    }
    if raw.scan_from.is_some() && !matches!(action, Action::OpenTcpPorts { .. } | Action::OpenUdpPorts { .. }) {
        return Err(source.error(&raw.name, format!("check {name}: scan-from goes with open-tcp-ports or open-udp-ports")));
    }
    if raw.scan_target.is_some() && !matches!(action, Action::OpenTcpPorts { .. } | Action::OpenUdpPorts { .. }) {
        return Err(source.error(&raw.name, format!("check {name}: scan-target goes with open-tcp-ports or open-udp-ports")));
    }
    if raw.scan_ports.is_some() && !matches!(action, Action::OpenTcpPorts { .. }) {
        return Err(source.error(&raw.name, format!("check {name}: scan-ports goes with open-tcp-ports")));
    }
    if raw.host.is_some() && !matches!(action, Action::OutsideSucceed { .. } | Action::OutsideFail { .. }) {
        return Err(source.error(&raw.name, format!("check {name}: host goes with outside-succeed or outside-fail")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch tree with profiles/baseline.toml, and where its scenario goes.
    fn workspace() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("profiles")).unwrap();
        std::fs::create_dir_all(dir.path().join("vm-tests")).unwrap();
        std::fs::write(dir.path().join("profiles/baseline.toml"), "name = \"baseline\"\n").unwrap();
        let path = dir.path().join("vm-tests/t.toml");
        (dir, path)
    }

    fn check_error(scenario: &str, expected: &str) {
        let (dir, path) = workspace();
        std::fs::write(&path, scenario).unwrap();
        let error = load(&path).unwrap_err().to_string().replace(&dir.path().display().to_string(), "$DIR");
        assert_eq!(error, expected);
    }

    #[test]
    fn unknown_profile_is_refused_before_boot() {
        check_error(
            "profile = \"nope\"\n[[check]]\nname = \"x\"\nsucceed = \"true\"\n",
            "$DIR/vm-tests/t.toml:1:11: profile: no profile nope (looked for $DIR/vm-tests/../profiles/nope.toml)",
        );
    }

    #[test]
    fn unknown_check_kind_is_refused() {
        check_error(
            "profile = \"baseline\"\n[[check]]\nname = \"x\"\nsucceeds = \"true\"\n",
            "$DIR/vm-tests/t.toml:4:1: unknown field `succeeds`, expected one of `name`, `machine`, `timeout`, `succeed`, `fail`, `wait-until-succeeds`, `wait-for-unit`, `wait-for-port`, `differ`, `ssh-refuses-wrong-key`, `outside-succeed`, `outside-fail`, `open-tcp-ports`, `open-udp-ports`, `scan-from`, `scan-target`, `scan-ports`, `host`, `vpn-admits-enrolled-peer`, `smarthost-receives`, `ssh-refuses`, `ssh-user`, `running-services-match-profile`, `listening-sockets-match-profile`, `sysctls-match-profile`, `first-login-forced-password-change`, `remote-log-receives`, `remote-log-survives-outage`, `profile-services-log`, `installer-refuses-disk-of`, `firewall-fails-closed`, `tampered-boot-image-is-refused`, `injected-command-line-is-ignored`, `data-is-sealed-to-the-tpm`, `disk-is-its-own`, `patch-medium-applies`, `kernel-from-apt-boots`, `as-root`, `expect`, `expect-contains`",
        );
    }

    #[test]
    fn patch_checks_need_a_machine_of_the_point_release() {
        check_error(
            "profile = \"baseline\"\n[[check]]\nname = \"p\"\npatch-medium-applies = true\n",
            "$DIR/vm-tests/t.toml:3:8: check p: patch-medium-applies and kernel-from-apt-boots run on machines with image-lock = \"point-release\"",
        );
        check_error(
            "profile = \"baseline\"\n[[machine]]\nname = \"m\"\nimage-lock = \"2026-11\"\n[[check]]\nname = \"p\"\nsucceed = \"true\"\n",
            "$DIR/vm-tests/t.toml:4:14: machine.image-lock: \"2026-11\" is not a lock the harness makes; the one is \"point-release\"",
        );
    }

    #[test]
    fn check_needs_exactly_one_action() {
        check_error(
            "profile = \"baseline\"\n[[check]]\nname = \"x\"\nsucceed = \"a\"\nfail = \"b\"\n",
            "$DIR/vm-tests/t.toml:3:8: check x: give exactly one action",
        );
    }

    #[test]
    fn outside_checks_need_the_isolated_network() {
        check_error(
            "profile = \"baseline\"\n[[check]]\nname = \"scan\"\nopen-tcp-ports = [22]\n",
            "$DIR/vm-tests/t.toml:3:8: check scan: checks from outside need isolated-network = true",
        );
        check_error(
            "profile = \"baseline\"\n[[check]]\nname = \"offline\"\nfirewall-fails-closed = true\n",
            "$DIR/vm-tests/t.toml:3:8: check offline: checks from outside need isolated-network = true",
        );
    }

    #[test]
    fn ssh_checks_may_not_undo_the_host_key_pinning() {
        check_error(
            "profile = \"baseline\"\n[[check]]\nname = \"weak\"\nssh-refuses = [\"-o\", \"StrictHostKeyChecking=no\"]\n",
            "$DIR/vm-tests/t.toml:3:8: check weak: ssh-refuses may not set \"StrictHostKeyChecking=no\": the harness accepts only the host key the guest printed",
        );
    }

    #[test]
    fn differ_needs_two_machines() {
        check_error(
            "profile = \"baseline\"\n[[check]]\nname = \"ids\"\ndiffer = \"cat /etc/machine-id\"\n",
            "$DIR/vm-tests/t.toml:3:8: check ids: differ needs at least two machines",
        );
    }

    #[test]
    fn sysctls_match_profile_may_run_as_root_but_takes_no_expect() {
        check_error(
            "profile = \"baseline\"\n[[check]]\nname = \"s\"\nas-root = true\nsysctls-match-profile = true\nexpect = \"1\"\n",
            "$DIR/vm-tests/t.toml:3:8: check s: expect applies only to succeed, wait-until-succeeds, outside-succeed, ssh-refuses and installer-refuses-disk-of",
        );
    }

    #[test]
    fn checks_target_named_machines() {
        let (_dir, path) = workspace();
        std::fs::write(
            &path,
            "profile = \"baseline\"\n[[machine]]\nname = \"a\"\n[[machine]]\nname = \"b\"\ndisk-size = \"8G\"\n[[check]]\nname = \"one\"\nmachine = \"b\"\nsucceed = \"hostname\"\nexpect = \"baseline\\n\"\n[[check]]\nname = \"ids\"\ndiffer = \"cat /etc/machine-id\"\n",
        )
        .unwrap();
        let scenario = load(&path).unwrap();
        assert_eq!(scenario.checks[0].target, Target::One(1));
        assert_eq!(scenario.checks[0].action, Action::Succeed { command: "hostname".into(), expect: Expect::Equals("baseline".into()) });
        assert_eq!(scenario.checks[1].target, Target::All);
        assert_eq!(scenario.machines[1].disk_size.bytes(), 8 << 30);
        assert!(scenario.machines.iter().all(|m| m.extra_disks.is_empty()), "no extra disks unless asked for");
    }

    #[test]
    fn machines_may_have_blank_extra_disks_named_by_serial() {
        let (_dir, path) = workspace();
        std::fs::write(
            &path,
            "profile = \"baseline\"\n[[machine]]\nname = \"a\"\nextra-disks = [{ size = \"2G\", serial = \"rampart-backup\" }]\n[[check]]\nname = \"one\"\nsucceed = \"true\"\n",
        )
        .unwrap();
        let scenario = load(&path).unwrap();
        assert_eq!(scenario.machines[0].extra_disks, vec![ExtraDisk { size: ImageSize::from_bytes(2 << 30), serial: "rampart-backup".into() }]);
        let machine = |disks: &str| format!("profile = \"baseline\"\n[[machine]]\nname = \"a\"\nextra-disks = [{disks}]\n[[check]]\nname = \"one\"\nsucceed = \"true\"\n");
        check_error(
            &machine("{ size = \"2G\", serial = \"a disk\" }"),
            "$DIR/vm-tests/t.toml:4:40: machine.extra-disks.serial: \"a disk\" is not a disk serial (1 to 20 letters, digits, '-' or '_', e.g. \"rampart-backup\")",
        );
        check_error(
            &machine("{ size = \"2G\", serial = \"x\" }, { size = \"1G\", serial = \"x\" }"),
            "$DIR/vm-tests/t.toml:4:71: machine.extra-disks.serial: x is given twice",
        );
        check_error(
            &machine("{ size = \"2G\" }"),
            "$DIR/vm-tests/t.toml:4:16: missing field `serial`",
        );
    }

    #[test]
    fn installer_machines_and_refusal_checks_ask_for_the_installer() {
        let (_dir, path) = workspace();
        let plain = "profile = \"baseline\"\n[[machine]]\nname = \"a\"\n[[check]]\nname = \"h\"\nsucceed = \"hostname\"\n";
        std::fs::write(&path, plain).unwrap();
        assert!(!load(&path).unwrap().needs_installer());
        std::fs::write(&path, plain.replace("name = \"a\"\n", "name = \"a\"\ninstaller = true\n")).unwrap();
        let scenario = load(&path).unwrap();
        assert!(scenario.machines[0].installer && scenario.needs_installer());
        std::fs::write(&path, format!("{plain}[[check]]\nname = \"small\"\ninstaller-refuses-disk-of = \"256M\"\nexpect-contains = \"too small\"\n")).unwrap();
        let scenario = load(&path).unwrap();
        assert!(scenario.needs_installer());
        assert_eq!(scenario.checks[1].action, Action::InstallerRefuses { disk_size: ImageSize::parse_any("256M").unwrap(), expect: Expect::Contains("too small".into()) });
    }

    #[test]
    fn every_shipped_scenario_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vm-tests");
        let mut loaded = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                load(&path).unwrap_or_else(|e| panic!("{e}"));
                loaded += 1;
            }
        }
        assert!(loaded >= 6, "{loaded} scenarios");
        let gateway = load(&dir.join("gateway.toml")).unwrap();
        assert_eq!(gateway.networks.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["outside", "lan", "dmz"]);
        assert_eq!(gateway.machines[0].networks, [0, 1, 2]);
    }
}
