//! Booting the real artifact in QEMU through OVMF, and talking to it over
//! SSH with a throwaway key provisioned the way a user's deployment does it
//! (a systemd credential in an SMBIOS type 11 string). Owns acceleration
//! choice (a KVM that hangs is detected by a time-limited probe) and makes
//! sure no QEMU outlives the harness.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::process::{Background, Cmd, Output};
use crate::ui;

/// OVMF with Secure Boot enforced: every machine boots with the image's own
/// variable store (`<name>.ovmf-vars.fd`: the site's keys, Secure Boot on).
pub const OVMF_CODE: &str = crate::secureboot::OVMF_CODE_SECURE;
/// What the firmware's secure build needs of the machine: SMM, and the
/// variable store's flash writable from SMM only.
/// The MAC of every machine's management NIC (QEMU's user network, the
/// harness's SSH): a profile can name that NIC by it (a gateway's mgmt role).
pub const MANAGEMENT_MAC: &str = "52:54:00:12:34:56";
const SECURE_MACHINE: [&str; 4] = ["-machine", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on"];
const QEMU: &str = "qemu-system-x86_64";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelChoice {
    /// KVM if a probe boot shows it really works, TCG otherwise
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelKind {
    Kvm,
    Tcg,
}

/// How every machine of a run gets its processors: the accelerator chosen
/// and how many vCPUs each machine has (`--vcpus`: one per machine keeps
/// two runs side by side on a two-core host from oversubscribing it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accel {
    pub kind: AccelKind,
    pub vcpus: u8,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self.kind {
            AccelKind::Kvm => "kvm",
            AccelKind::Tcg => "tcg",
        }
    }

    /// QEMU's `-smp` value.
    pub fn smp(self) -> String {
        self.vcpus.to_string()
    }

    /// The guest's CPU: the host's own under KVM; under TCG QEMU's default
    /// model without AMD-V, so the guest's udev does not load kvm and
    /// kvm_amd (1.2 MB of modules, checked and linked under emulation) on
    /// every boot for a hypervisor nobody runs in the test.
    pub fn cpu(self) -> &'static str {
        match self.kind {
            AccelKind::Kvm => "host",
            AccelKind::Tcg => "qemu64,-svm",
        }
    }
}

/// Checks that QEMU and OVMF are installed before anything boots.
pub fn require_host_tools() -> Result<()> {
    crate::process::require_programs(&[(QEMU, "qemu-system-x86"), ("ssh", "openssh-client")])?;
    for firmware in [OVMF_CODE] {
        if !Path::new(firmware).exists() {
            bail!("UEFI firmware {firmware} is missing (package ovmf); {}", crate::process::INSTALL_HINT);
        }
    }
    Ok(())
}

/// Decides the accelerator. `auto` boots the image's own kernel under KVM
/// with a time limit and uses KVM only if the kernel ran to its end (a panic
/// for want of a root file system, as asked); otherwise TCG.
pub fn choose_accel(choice: AccelChoice, vcpus: u8, raw_image: &Path, work: &Path) -> Result<Accel> {
    let kind = match choice {
        AccelChoice::Tcg => AccelKind::Tcg,
        AccelChoice::Kvm => AccelKind::Kvm,
        AccelChoice::Auto => probe_accel(raw_image, work)?,
    };
    Ok(Accel { kind, vcpus })
}

/// KVM if /dev/kvm opens and a probe kernel runs under it within 10 s.
fn probe_accel(raw_image: &Path, work: &Path) -> Result<AccelKind> {
    let usable = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    if !usable {
        ui::step("acceleration: /dev/kvm is not usable; using TCG");
        return Ok(AccelKind::Tcg);
    }
    let kernel = work.join("probe-vmlinuz");
    let uki = work.join("probe-uki.efi");
    Cmd::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-o")
        .arg("-i")
        .arg(format!("{}@@{}", raw_image.display(), crate::layout::FIRST_LBA_MIB << 20))
        .arg(format!("::/{}", crate::stages::disk::UKI_PATH))
        .arg(&uki)
        .run()
        .context("while taking the boot image out of the disk for the KVM probe")?;
    let mut dump = std::ffi::OsString::from(".linux=");
    dump.push(&kernel);
    Cmd::new("objcopy")
        .arg("--dump-section")
        .arg(dump)
        .arg(&uki)
        .arg(work.join("probe-uki-copy.efi"))
        .run()
        .context("while taking the kernel out of the boot image for the KVM probe")?;
    let log = work.join("kvm-probe.log");
    let started = Instant::now();
    let output = Cmd::new(QEMU)
        .args(["-accel", "kvm", "-machine", "q35", "-m", "256", "-nodefaults", "-no-reboot", "-display", "none"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-kernel")
        .arg(&kernel)
        .args(["-append", "console=ttyS0 panic=-1 root=/dev/rampart-probe-none rootwait=0"])
        .run_with_timeout(Duration::from_secs(10))?;
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    let kernel_ran = console.contains("Kernel panic") || console.contains("VFS:");
    if output.is_some() && kernel_ran {
        ui::step(&format!("acceleration: KVM works (probe kernel ran in {:.1} s); using KVM", started.elapsed().as_secs_f64()));
        Ok(AccelKind::Kvm)
    } else {
        let why = match output {
            None => "the probe kernel hung (no end within 10 s)".to_string(),
            Some(out) if !kernel_ran => format!(
                "the probe kernel did not run ({})",
                String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("no output")
            ),
            Some(_) => "unknown".to_string(),
        };
        ui::step(&format!("acceleration: KVM does not work here: {why}; using TCG"));
        Ok(AccelKind::Tcg)
    }
}

/// A throwaway SSH key pair for one test run.
pub struct TestKey {
    pub private: PathBuf,
    pub public_line: String,
}

impl TestKey {
    /// A key whose comment is `rampart-test-NAME`.
    pub fn generate(dir: &Path, name: &str) -> Result<TestKey> {
        TestKey::generate_with_comment(dir, name, &format!("rampart-test-{name}"))
    }

    pub fn generate_with_comment(dir: &Path, name: &str, comment: &str) -> Result<TestKey> {
        let private = dir.join(name);
        Cmd::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(&private)
            .run()
            .context("while making a throwaway SSH key")?;
        let public_line = std::fs::read_to_string(private.with_extension("pub"))?.trim().to_string();
        Ok(TestKey { private, public_line })
    }
}

/// The test machines' disks are throwaway files: the guest's flushes need
/// not reach the host's disk (what the guest wrote is in the host's page
/// cache, which every later reader of the file sees). dpkg's and the first
/// boot's fsyncs would otherwise each wait for the host's disk.
const THROWAWAY: &str = "cache=unsafe";

pub struct MachineConfig<'a> {
    pub name: &'a str,
    pub image: &'a Path,
    pub disk_bytes: u64,
    pub memory_mib: u64,
    pub accel: Accel,
    pub user: &'a str,
    /// The port sshd listens on in the guest (the profile's ssh.port).
    pub guest_ssh_port: u16,
    pub key: &'a TestKey,
    /// Blank disks besides the system disk (e.g. a backup target).
    pub extra_disks: &'a [crate::vmtest::scenario::ExtraDisk],
    /// Disks attached after the system disk as they are (a never-booted
    /// copy of the image, the auditor's disk).
    pub attached: Vec<Attached>,
    /// Extra QEMU arguments (e.g. a NIC on an isolated test network).
    pub extra_args: Vec<String>,
    /// Run QEMU (and so its loopback port forward) in this network namespace.
    pub netns: Option<String>,
    /// Boot this disk (made ready before, e.g. by the installer) instead of
    /// a copy-on-write scratch disk over `image`.
    pub prepared_disk: Option<PathBuf>,
    /// Where QEMU writes the serial console: next to the artifacts, so the
    /// path a failure names is still there after the run.
    pub serial_log: PathBuf,
    /// A TPM 2.0 (swtpm) whose state lives in this directory: the same
    /// directory is the same TPM, across restarts.
    pub tpm: Option<PathBuf>,
    /// The serial console also takes input (`type_on_console`), through a
    /// socket in the work directory; what it prints still goes to `serial_log`.
    pub console_input: bool,
    /// Firmware with the site's keys enrolled (Secure Boot on), or OVMF's
    /// blank store (no keys, setup mode: Secure Boot off).
    pub secure_boot: bool,
}

/// A running VM. QEMU is killed when this drops (and if rampart dies).
pub struct Machine {
    pub name: String,
    pub serial_log: PathBuf,
    /// The disk it boots (the scratch disk over the image, or the one made ready).
    pub disk: PathBuf,
    /// The run's private work directory (the probes' logs go there).
    work: PathBuf,
    process: Background,
    qemu_log: PathBuf,
    ssh_port: u16,
    user: String,
    key: PathBuf,
    netns: Option<String>,
    /// QEMU's command, to start the machine again with its disk, variable
    /// store and TPM as they are (`restart`).
    command: Cmd,
    tpm: Option<Tpm>,
    console_socket: Option<PathBuf>,
    /// The guest's host key, as its console showed it on first boot: ssh
    /// accepts no other (a process that took the forwarded port first gets
    /// no password).
    known_hosts: PathBuf,
    pub started: Instant,
}

/// `program` run in the namespace, if any.
fn in_netns(netns: &Option<String>, program: &str) -> Cmd {
    match netns {
        Some(ns) => Cmd::new("ip").args(["netns", "exec", ns, program]),
        None => Cmd::new(program),
    }
}

impl Machine {
    /// Boots a copy-on-write scratch disk, larger than the image, backed by
    /// the image itself: the artifact's bytes are what boots.
    pub fn boot(config: &MachineConfig, dir: &Path) -> Result<Machine> {
        let scratch = match &config.prepared_disk {
            Some(disk) => disk.clone(),
            None => {
                let scratch = dir.join(format!("{}.scratch.qcow2", config.name));
                Cmd::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
                    .arg(std::fs::canonicalize(config.image)?)
                    .arg(&scratch)
                    .arg(config.disk_bytes.to_string())
                    .run()
                    .context("while making the scratch disk")?;
                scratch
            }
        };
        let vars = if config.secure_boot {
            fresh_vars(dir, config.name, config.image)?
        } else {
            let vars = dir.join(format!("{}.OVMF_VARS.fd", config.name));
            std::fs::copy(crate::secureboot::OVMF_VARS_BLANK, &vars).with_context(|| format!("while copying {}", crate::secureboot::OVMF_VARS_BLANK))?;
            vars
        };
        let ssh_port = free_loopback_port()?;
        let serial_log = config.serial_log.clone();
        // An earlier run's console must not be read as this one's (its host key above all).
        if serial_log.exists() {
            std::fs::remove_file(&serial_log).with_context(|| format!("while removing the earlier console log {}", serial_log.display()))?;
        }
        let qemu_log = dir.join(format!("qemu-{}.log", config.name));
        // Commas in an SMBIOS value must be doubled for QEMU's option parser.
        let credential = format!("io.systemd.credential:ssh.authorized_keys.{}={}", config.user, config.key.public_line).replace(',', ",,");
        let mut command = in_netns(&config.netns, QEMU)
            .args(SECURE_MACHINE)
            .args(["-accel", config.accel.name(), "-cpu", config.accel.cpu(), "-smp", &config.accel.smp()])
            .arg("-m")
            .arg(config.memory_mib.to_string())
            .args(["-nodefaults", "-display", "none", "-no-reboot"])
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()))
            .arg("-drive")
            .arg(format!("file={},if=none,id=system,format=qcow2,{THROWAWAY}", scratch.display()))
            .arg("-device")
            .arg(format!("virtio-blk-pci,drive=system,serial={},bootindex=0", super::identity::SYSTEM_SERIAL))
            .args(attached_args(&config.attached))
            .arg("-nic")
            .arg(format!("user,model=virtio-net-pci,mac={MANAGEMENT_MAC},restrict=on,hostfwd=tcp:127.0.0.1:{ssh_port}-:{}", config.guest_ssh_port))
            .args(["-device", "virtio-rng-pci"])
            .arg("-smbios")
            .arg(format!("type=11,value={credential}"))
            .arg("-serial");
        let console_socket = config.console_input.then(|| dir.join(format!("{}.console", config.name)));
        command = match &console_socket {
            Some(socket) => command.arg("chardev:console").arg("-chardev").arg(format!("socket,id=console,path={},server=on,wait=off,logfile={}", socket.display(), serial_log.display())),
            None => command.arg(format!("file:{}", serial_log.display())),
        };
        for disk in config.extra_disks {
            let file = dir.join(format!("{}.{}.qcow2", config.name, disk.serial));
            Cmd::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2"])
                .arg(&file)
                .arg(disk.size.bytes().to_string())
                .run()
                .with_context(|| format!("while making the blank disk {}", disk.serial))?;
            // The serial is a property of the device (QEMU no longer takes it on -drive).
            command = command
                .arg("-drive")
                .arg(format!("file={},if=none,id=disk-{},format=qcow2,{THROWAWAY}", file.display(), disk.serial))
                .arg("-device")
                .arg(format!("virtio-blk-pci,drive=disk-{},serial={}", disk.serial, disk.serial));
        }
        for extra in &config.extra_args {
            command = command.arg(extra);
        }
        let tpm = match &config.tpm {
            Some(state) => {
                command = command.args(Tpm::qemu_args(state));
                Some(Tpm::start(state, dir, config.name)?)
            }
            None => None,
        };
        let process = command.spawn_background(&qemu_log)?;
        Ok(Machine {
            name: config.name.to_string(),
            serial_log,
            disk: scratch.clone(),
            work: dir.to_path_buf(),
            process,
            qemu_log,
            ssh_port,
            user: config.user.to_string(),
            key: config.key.private.clone(),
            netns: config.netns.clone(),
            command,
            tpm,
            console_socket,
            known_hosts: dir.join(format!("{}.known_hosts", config.name)),
            started: Instant::now(),
        })
    }

    fn ssh_command(&self, key: &Path, command: &str) -> Cmd {
        self.ssh_command_with(key, &[], &self.user, command)
    }

    /// The ssh client command line, with extra client options and a user.
    fn ssh_command_with(&self, key: &Path, options: &[String], user: &str, command: &str) -> Cmd {
        // ssh takes the first value of an option: the check's own come first.
        in_netns(&self.netns, "ssh")
            .args(options)
            .args([
                "-o", "StrictHostKeyChecking=yes",
                "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR",
                "-o", "BatchMode=yes",
                "-o", "IdentitiesOnly=yes",
                "-o", "ConnectTimeout=10",
                "-o", "ServerAliveInterval=5",
                "-o", "ServerAliveCountMax=3",
            ])
            .args(["-o", "PasswordAuthentication=no", "-o", "KbdInteractiveAuthentication=no"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .arg("-o")
            .arg(format!("HostKeyAlias={}", self.host_key_alias()))
            .arg("-i")
            .arg(key)
            .arg("-p")
            .arg(self.ssh_port.to_string())
            .arg(format!("{user}@127.0.0.1"))
            .arg("--")
            .arg(command)
    }

    fn host_key_alias(&self) -> String {
        format!("rampart-test-{}", self.name)
    }

    /// Pins the host key `other` pinned: a copy of its disk is the same
    /// host, and prints no host key line again.
    pub fn pin_host_key_of(&self, other: &Machine) -> Result<()> {
        let pinned = std::fs::read_to_string(&other.known_hosts).with_context(|| format!("{} has no pinned host key", other.name))?;
        let key = pinned.split_once(' ').map(|(_, key)| key).with_context(|| format!("{} is malformed", other.known_hosts.display()))?;
        std::fs::write(&self.known_hosts, format!("{} {key}", self.host_key_alias()))?;
        Ok(())
    }

    /// Waits for the host key line on the console (printed once, before
    /// sshd first starts) and pins that key for every later connection; a
    /// machine started again keeps the key pinned on its first boot.
    fn pin_host_key(&mut self, timeout: Duration) -> Result<()> {
        if self.known_hosts.exists() {
            return Ok(());
        }
        let deadline = self.started + timeout;
        use crate::stages::firstboot::HOST_KEY_MARKER;
        loop {
            self.ensure_running()?;
            crate::process::check_interrupted()?;
            let text = String::from_utf8_lossy(&std::fs::read(&self.serial_log).unwrap_or_default()).into_owned();
            let key = text.lines().find_map(|line| {
                let rest = &line[line.find(HOST_KEY_MARKER)? + HOST_KEY_MARKER.len()..];
                let mut words = rest.split_whitespace();
                let (kind, blob) = (words.next()?, words.next()?);
                let plausible = kind == "ssh-ed25519" && blob.len() >= 68 && blob.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
                plausible.then(|| format!("{kind} {blob}"))
            });
            if let Some(key) = key {
                std::fs::write(&self.known_hosts, format!("{} {key}\n", self.host_key_alias()))?;
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not accept SSH logins within {} s: it printed no SSH host key on its console ({HOST_KEY_MARKER}...)\n{}",
                    self.name,
                    timeout.as_secs(),
                    self.serial_tail(30)
                );
            }
            crate::process::pause(Duration::from_millis(250));
        }
    }

    /// Runs `command` in the guest as the admin user. `None` on timeout.
    pub fn ssh(&self, command: &str, timeout: Duration) -> Result<Option<Output>> {
        self.ssh_command(&self.key, command).run_with_timeout(timeout)
    }

    /// Runs `command` as root through sudo, which asks for the admin's
    /// password (given on stdin, never on a command line).
    pub fn ssh_as_root(&self, command: &str, password: &str, timeout: Duration) -> Result<Option<Output>> {
        let wrapped = format!("sudo -S -p '' -- sh -c {}", shell_words::quote(command));
        self.ssh_command(&self.key, &wrapped).stdin_bytes(format!("{password}\n").into_bytes()).run_with_timeout(timeout)
    }

    /// Tries a login with another key; returns the client's output.
    pub fn ssh_with_key(&self, key: &Path, command: &str, timeout: Duration) -> Result<Option<Output>> {
        self.ssh_command(key, command).run_with_timeout(timeout)
    }

    /// Tries a login with the provisioned key, extra client options (e.g.
    /// only weak ciphers, or password authentication) and another user.
    pub fn ssh_with_options(&self, options: &[String], user: Option<&str>, timeout: Duration) -> Result<Option<Output>> {
        let options: Vec<String> = options.iter().map(|o| o.to_string()).collect();
        self.ssh_command_with(&self.key, &options, user.unwrap_or(&self.user), "true").run_with_timeout(timeout)
    }

    /// `wait_for_ssh`, with a spinner on a terminal naming the machine (`label`).
    pub fn wait_for_ssh_shown(&mut self, label: &str, timeout: Duration) -> Result<(Duration, bool)> {
        let spinner = crate::ui::Timed::quietly(&format!("{label}: booting (SSH within {} s)", timeout.as_secs()));
        let waited = self.wait_for_ssh(timeout);
        spinner.end();
        waited
    }

    /// Waits until sshd lets the provisioned key in; returns the time from
    /// QEMU's start and whether the account must change its password first
    /// (sshd then refuses commands without a terminal).
    ///
    /// QEMU's user-mode network accepts a probe's connection at once and
    /// then retransmits its SYN to a guest that has no address yet, with a
    /// growing back-off: one probe started too early waits for seconds after
    /// sshd is up. So a new probe starts every second (a few in flight, each
    /// with its own banner timeout) and the first to get in counts.
    pub fn wait_for_ssh(&mut self, timeout: Duration) -> Result<(Duration, bool)> {
        const PROBE_EVERY: Duration = Duration::from_secs(1);
        const PROBES_IN_FLIGHT: usize = 3;
        const PROBE_LIMIT: Duration = Duration::from_secs(30);
        let deadline = self.started + timeout;
        self.pin_host_key(timeout)?;
        let mut probes: Vec<(Background, PathBuf, Instant)> = Vec::new();
        let mut n_started = 0;
        let mut last_started: Option<Instant> = None;
        loop {
            self.ensure_running()?;
            crate::process::check_interrupted()?;
            let mut still_running = Vec::new();
            for (mut probe, log, started) in probes.drain(..) {
                match probe.try_wait()? {
                    Some(status) => {
                        let said = std::fs::read_to_string(&log).unwrap_or_default();
                        if status.success() {
                            return Ok((self.started.elapsed(), false));
                        }
                        if said.contains("Password change required") {
                            return Ok((self.started.elapsed(), true));
                        }
                    }
                    None if started.elapsed() > PROBE_LIMIT => probe.kill(),
                    None => still_running.push((probe, log, started)),
                }
            }
            probes = still_running;
            if Instant::now() >= deadline {
                bail!(
                    "{} did not accept SSH logins within {} s\n{}",
                    self.name,
                    timeout.as_secs(),
                    self.serial_tail(30)
                );
            }
            let due = last_started.is_none_or(|at| at.elapsed() >= PROBE_EVERY);
            if due && probes.len() < PROBES_IN_FLIGHT {
                let log = self.work.join(format!("ssh-probe-{}-{n_started}.log", self.name));
                let probe = self.ssh_command_with(&self.key, &["-o".into(), "ConnectTimeout=5".into()], &self.user, "true").spawn_background(&log)?;
                probes.push((probe, log, Instant::now()));
                n_started += 1;
                last_started = Some(Instant::now());
            }
            crate::process::pause(Duration::from_millis(100));
        }
    }

    /// The first interactive login of an account whose password expired:
    /// sshd runs passwd on the terminal, which asks for the current password
    /// and a new one twice. Answers each prompt as it comes, like a user.
    pub fn change_expired_password(&self, current: &str, new: &str, timeout: Duration) -> Result<()> {
        let mut dialogue = self.ssh_command_with(&self.key, &["-tt".to_string()], &self.user, "true").spawn_dialogue()?;
        // What the session printed, for errors, with both passwords blotted out.
        let transcript = |dialogue: &crate::process::Dialogue| dialogue.transcript_text().replace(current, "<initial password>").replace(new, "<new password>");
        let mut at = 0;
        for (prompt, answer) in [("urrent password:", current), ("ew password:", new), ("etype new password:", new)] {
            match dialogue.expect(at, &[prompt], timeout) {
                Some((_, next)) => at = next,
                None => bail!("passwd did not ask {prompt:?} at the first login; the session printed:\n{}", transcript(&dialogue)),
            }
            dialogue.send(answer)?;
        }
        match dialogue.expect(at, &["updated successfully", "BAD PASSWORD", "failure", "Authentication token manipulation error"], timeout) {
            Some((0, _)) => {
                let _ = dialogue.wait(Duration::from_secs(10));
                Ok(())
            }
            _ => bail!("the password change at the first login failed:\n{}", transcript(&dialogue)),
        }
    }

    /// Errors if QEMU has exited, with its own log and the console's tail.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.process.try_wait()? {
            let log = std::fs::read_to_string(&self.qemu_log).unwrap_or_default();
            bail!(
                "QEMU of {} exited ({}): {}\n{}",
                self.name,
                crate::process::describe_status(status),
                log.trim(),
                self.serial_tail(30)
            );
        }
        Ok(())
    }

    /// Waits until a complete line of the serial console contains `marker`;
    /// returns that line.
    pub fn wait_for_console(&mut self, marker: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            self.ensure_running()?;
            crate::process::check_interrupted()?;
            let text = String::from_utf8_lossy(&std::fs::read(&self.serial_log).unwrap_or_default()).into_owned();
            let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
            if let Some(line) = complete.lines().find(|l| l.contains(marker)) {
                return Ok(line.trim_end().to_string());
            }
            if Instant::now() >= deadline {
                bail!("{} printed no line with {marker:?} on its console within {} s\n{}", self.name, timeout.as_secs(), self.serial_tail(30));
            }
            crate::process::pause(Duration::from_millis(500));
        }
    }

    /// Waits until the console shows one of `texts` after its first `from`
    /// bytes, on a complete line or not (a prompt waits at the end of its
    /// line): which one showed first, and where it ends, to wait for the
    /// next from there.
    pub fn wait_for_console_text(&mut self, texts: &[&str], from: usize, timeout: Duration) -> Result<(usize, usize)> {
        let deadline = Instant::now() + timeout;
        loop {
            self.ensure_running()?;
            crate::process::check_interrupted()?;
            let console = std::fs::read(&self.serial_log).unwrap_or_default();
            let rest = console.get(from..).unwrap_or_default();
            let first = texts
                .iter()
                .enumerate()
                .filter_map(|(which, text)| rest.windows(text.len()).position(|w| w == text.as_bytes()).map(|at| (at, which, from + at + text.len())))
                .min();
            if let Some((_, which, end)) = first {
                return Ok((which, end));
            }
            if Instant::now() >= deadline {
                bail!("{} showed none of {texts:?} on its console within {} s\n{}", self.name, timeout.as_secs(), self.serial_tail(30));
            }
            crate::process::pause(Duration::from_millis(500));
        }
    }

    /// The last `n` lines of the serial console, for failure reports.
    pub fn serial_tail(&self, n: usize) -> String {
        console_tail(&self.serial_log, &self.name, n)
    }

    pub fn shut_down(mut self) {
        self.process.kill();
    }

    pub fn has_tpm(&self) -> bool {
        self.tpm.is_some()
    }

    /// Types `line` and Enter on the serial console (a machine made with
    /// `console_input`), as someone at the console would.
    pub fn type_on_console(&self, line: &str) -> Result<()> {
        use std::io::Write;
        let socket = self.console_socket.as_ref().with_context(|| format!("{} has no console input", self.name))?;
        let mut stream = std::os::unix::net::UnixStream::connect(socket).with_context(|| format!("while connecting to the console of {} ({})", self.name, socket.display()))?;
        stream.write_all(format!("{line}\r").as_bytes())?;
        stream.flush()?;
        // QEMU reads what was sent before it sees the connection close.
        crate::process::pause(Duration::from_millis(500));
        Ok(())
    }

    /// Waits until QEMU has exited (the guest powered off) within `timeout`.
    pub fn wait_for_power_off(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.process.try_wait()?.is_none() {
            crate::process::check_interrupted()?;
            if Instant::now() >= deadline {
                bail!("{} did not power off within {} s\n{}", self.name, timeout.as_secs(), self.serial_tail(20));
            }
            crate::process::pause(Duration::from_millis(500));
        }
        Ok(())
    }

    /// Starts the machine again after it powered off: the same disk,
    /// variable store and TPM, as a real machine switched on again. The
    /// last boot's console is kept beside the new one (`.previous`).
    pub fn restart(&mut self) -> Result<()> {
        self.process.kill();
        let previous = self.serial_log.with_extension("previous.log");
        std::fs::rename(&self.serial_log, &previous).with_context(|| format!("while keeping {}", self.serial_log.display()))?;
        if let Some(tpm) = &mut self.tpm {
            tpm.restart()?;
        }
        self.process = self.command.clone().spawn_background(&self.qemu_log)?;
        self.started = Instant::now();
        Ok(())
    }
}

/// A machine's TPM 2.0: bookworm's swtpm, its state in a directory.
struct Tpm {
    state: PathBuf,
    log: PathBuf,
    process: Background,
}

impl Tpm {
    fn socket(state: &Path) -> PathBuf {
        state.join("swtpm.sock")
    }

    fn qemu_args(state: &Path) -> Vec<String> {
        vec![
            "-chardev".into(),
            format!("socket,id=tpm-socket,path={}", Tpm::socket(state).display()),
            "-tpmdev".into(),
            "emulator,id=tpm,chardev=tpm-socket".into(),
            "-device".into(),
            "tpm-crb,tpmdev=tpm".into(),
        ]
    }

    fn start(state: &Path, dir: &Path, name: &str) -> Result<Tpm> {
        let log = dir.join(format!("swtpm-{name}.log"));
        let process = Tpm::spawn(state, &log)?;
        Ok(Tpm { state: state.to_path_buf(), log, process })
    }

    fn restart(&mut self) -> Result<()> {
        self.process.kill();
        self.process = Tpm::spawn(&self.state, &self.log)?;
        Ok(())
    }

    /// Starts swtpm and waits for its socket (QEMU connects at once).
    fn spawn(state: &Path, log: &Path) -> Result<Background> {
        std::fs::create_dir_all(state)?;
        let socket = Tpm::socket(state);
        if socket.exists() {
            std::fs::remove_file(&socket)?;
        }
        let mut process = Cmd::new("swtpm")
            .args(["socket", "--tpm2", "--tpmstate"])
            .arg(format!("dir={}", state.display()))
            .args(["--ctrl"])
            .arg(format!("type=unixio,path={}", socket.display()))
            .spawn_background(log)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if let Some(status) = process.try_wait()? {
                bail!("swtpm exited ({}): {}", crate::process::describe_status(status), std::fs::read_to_string(log).unwrap_or_default().trim());
            }
            if Instant::now() >= deadline {
                bail!("swtpm made no socket {} within 10 s", socket.display());
            }
            crate::process::pause(Duration::from_millis(100));
        }
        Ok(process)
    }
}

/// The last `n` lines of a serial console log, control characters dropped.
fn console_tail(log: &Path, machine: &str, n: usize) -> String {
    let bytes = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let cleaned: String = text.chars().filter(|c| *c == '\n' || !c.is_control()).collect();
    let lines: Vec<&str> = cleaned.lines().filter(|l| !l.trim().is_empty()).collect();
    format!(
        "--- last {} lines of the serial console of {} ({}) ---\n{}",
        n.min(lines.len()),
        machine,
        log.display(),
        lines[lines.len().saturating_sub(n)..].join("\n")
    )
}

/// The variable store built with an artifact (`<name>.qcow2`, `<name>.raw`,
/// `<name>.installer.raw`): `<name>.ovmf-vars.fd` beside it.
pub fn vars_beside(artifact: &Path) -> PathBuf {
    let file = artifact.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let name = [".installer.raw", ".qcow2", ".raw"].iter().find_map(|suffix| file.strip_suffix(suffix)).unwrap_or(&file);
    artifact.with_file_name(format!("{name}.{}", crate::secureboot::VARS_SUFFIX))
}

/// A machine's own copy of the variable store built with `artifact`.
fn fresh_vars(dir: &Path, name: &str, artifact: &Path) -> Result<PathBuf> {
    let template = vars_beside(artifact);
    let vars = dir.join(format!("{name}.OVMF_VARS.fd"));
    std::fs::copy(&template, &vars)
        .with_context(|| format!("{} has no variable store {} beside it (the site's keys, Secure Boot on): rebuild it with this rampart", artifact.display(), template.display()))?;
    Ok(vars)
}

/// A qcow2 copy of the qcow2 `image` with one file of its root file system
/// (the partition `root_partuuid`) replaced by `contents`: written with
/// debugfs at the partition's offset in a raw copy, no mount.
pub fn copy_with_replaced_file(image: &Path, root_partuuid: &str, copy: &Path, image_path: &str, contents: &[u8], work: &Path) -> Result<()> {
    let raw = copy.with_extension("raw");
    Cmd::new("qemu-img").args(["convert", "-f", "qcow2", "-O", "raw"]).arg(image).arg(&raw).run().context("while copying the image")?;
    let table = Cmd::new("sfdisk").arg("--json").arg(&raw).run()?;
    let table: serde_json::Value = serde_json::from_slice(&table.stdout).context("sfdisk printed no JSON")?;
    let sector = table["partitiontable"]["sectorsize"].as_u64().unwrap_or(512);
    let start = table["partitiontable"]["partitions"]
        .as_array()
        .and_then(|parts| parts.iter().find(|p| p["uuid"].as_str().is_some_and(|u| u.eq_ignore_ascii_case(root_partuuid))))
        .and_then(|p| p["start"].as_u64())
        .with_context(|| format!("{} has no partition {root_partuuid}", image.display()))?;
    let device = format!("{}?offset={}", raw.display(), start * sector);
    let replacement = work.join(format!("{}.replacement", copy.file_name().and_then(|n| n.to_str()).unwrap_or("copy")));
    std::fs::write(&replacement, contents)?;
    let script = work.join(format!("{}.debugfs", copy.file_name().and_then(|n| n.to_str()).unwrap_or("copy")));
    std::fs::write(&script, format!("rm {image_path}\nwrite {} {image_path}\n", replacement.display()))?;
    Cmd::new("debugfs").arg("-w").arg("-f").arg(&script).arg(&device).run().context("while replacing the file with debugfs")?;
    // debugfs reports a failed command on stderr only: read the file back.
    let written = Cmd::new("debugfs").arg("-R").arg(format!("cat {image_path}")).arg(&device).run()?;
    if written.stdout != contents {
        bail!("debugfs did not replace {image_path} in the copy of {}", image.display());
    }
    Cmd::new("qemu-img").args(["convert", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(copy).run().context("while converting the copy")?;
    std::fs::remove_file(&raw)?;
    Ok(())
}

/// How a copy's EFI system partition is changed, as an attacker with the
/// disk in hand would change it.
pub enum EspChange<'a> {
    /// The byte in the middle of this file inverted.
    FlipByte(&'a str),
    /// These files written (made, or replaced), their directories made.
    Write(&'a [(&'a str, &'a [u8])]),
}

/// A qcow2 copy of the qcow2 `image` with its EFI system partition changed:
/// files taken out and written back with mtools at the partition's offset.
pub fn copy_with_changed_esp(image: &Path, copy: &Path, change: EspChange, work: &Path) -> Result<()> {
    let raw = copy.with_extension("raw");
    Cmd::new("qemu-img").args(["convert", "-f", "qcow2", "-O", "raw"]).arg(image).arg(&raw).run().context("while copying the image")?;
    let esp = format!("{}@@{}", raw.display(), crate::layout::FIRST_LBA_MIB << 20);
    let local = work.join(format!("{}.boot-file", copy.file_name().and_then(|n| n.to_str()).unwrap_or("copy")));
    let mtools = |program: &str| Cmd::new(program).env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(&esp);
    let put = |path: &str| mtools("mcopy").arg("-o").arg(&local).arg(format!("::/{path}")).run().with_context(|| format!("while writing {path} to the copy's ESP"));
    match change {
        EspChange::FlipByte(path) => {
            mtools("mcopy").arg("-o").arg(format!("::/{path}")).arg(&local).run().with_context(|| format!("while taking {path} off the copy's ESP"))?;
            let mut bytes = std::fs::read(&local)?;
            let middle = bytes.len() / 2;
            bytes[middle] = !bytes[middle];
            std::fs::write(&local, &bytes)?;
            put(path)?;
        }
        EspChange::Write(files) => {
            for (path, contents) in files {
                // Each parent directory, skipped where it exists.
                let parents: Vec<&str> = path.match_indices('/').map(|(at, _)| &path[..at]).collect();
                for parent in parents {
                    if !mtools("mdir").arg("-b").arg(format!("::/{parent}")).run_unchecked()?.status.success() {
                        mtools("mmd").arg(format!("::/{parent}")).run().with_context(|| format!("while making {parent} on the copy's ESP"))?;
                    }
                }
                std::fs::write(&local, contents)?;
                put(path)?;
            }
        }
    }
    Cmd::new("qemu-img").args(["convert", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(copy).run().context("while converting the copy")?;
    std::fs::remove_file(&raw)?;
    std::fs::remove_file(&local)?;
    Ok(())
}

/// Makes an empty qcow2 disk of `bytes`.
pub fn blank_disk(path: &Path, bytes: u64) -> Result<()> {
    Cmd::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(path).arg(bytes.to_string()).run().context("while making an empty disk")?;
    Ok(())
}

/// Whether a qcow2 disk holds no data at all (nothing was ever written).
pub fn disk_is_untouched(path: &Path) -> Result<bool> {
    let output = Cmd::new("qemu-img").args(["map", "--output=json"]).arg(path).run().context("while reading the disk's allocation map")?;
    let map: serde_json::Value = serde_json::from_slice(&output.stdout).context("qemu-img map printed no JSON")?;
    Ok(map.as_array().is_some_and(|extents| extents.iter().all(|e| e["data"] == serde_json::Value::Bool(false))))
}

/// How a run of the offline installer ended.
pub struct InstallRun {
    /// The installer printed its done line and powered off.
    pub installed: bool,
    /// The installer's own console lines.
    pub messages: Vec<String>,
}

/// Boots the offline installer medium (read-only, first in the boot order)
/// with `target` (and `attached`) beside it and no network, and waits until it
/// powers off after its done line, or halts after its failure line. Its
/// console goes to `serial_log` (kept beside the artifacts).
#[allow(clippy::too_many_arguments)]
pub fn run_installer(installer: &Path, target: &Path, attached: &[Attached], accel: Accel, dir: &Path, name: &str, serial_log: &Path, timeout: Duration) -> Result<InstallRun> {
    use crate::stages::installer::{DONE_MARKER, FAILED_MARKER};
    let vars = fresh_vars(dir, &format!("{name}-installer"), installer)?;
    let qemu_log = dir.join(format!("qemu-{name}-installer.log"));
    let mut process = Cmd::new(QEMU)
        .args(SECURE_MACHINE)
        .args(["-accel", accel.name(), "-cpu", accel.cpu(), "-smp", &accel.smp(), "-m", "1024", "-nodefaults", "-display", "none", "-no-reboot", "-nic", "none"])
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,file={}", vars.display()))
        .arg("-drive")
        .arg(format!("file={},if=none,id=installer,format=raw,readonly=on", installer.display()))
        .args(["-device", "virtio-blk-pci,drive=installer,bootindex=0"])
        .arg("-drive")
        .arg(format!("file={},if=none,id=target,format=qcow2,{THROWAWAY}", target.display()))
        .arg("-device")
        .arg(format!("virtio-blk-pci,drive=target,serial={}", super::identity::SYSTEM_SERIAL))
        .args(attached_args(attached))
        .args(["-device", "virtio-rng-pci"])
        .arg("-serial")
        .arg(format!("file:{}", serial_log.display()))
        .spawn_background(&qemu_log)?;
    let started = Instant::now();
    // Whole lines only: a line still being written is not read yet.
    let messages = |log: &Path| -> Vec<String> {
        let text = String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned();
        let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
        complete.lines().filter_map(|l| l.find("rampart-install: ").map(|at| l[at..].trim_end().to_string())).collect()
    };
    loop {
        crate::process::check_interrupted()?;
        let exited = process.try_wait()?.is_some();
        let seen = messages(serial_log);
        let done = seen.iter().any(|l| l.starts_with(DONE_MARKER));
        let failed = seen.iter().any(|l| l.starts_with(FAILED_MARKER));
        if exited || failed {
            process.kill();
            return Ok(InstallRun { installed: done && exited && !failed, messages: seen });
        }
        if started.elapsed() > timeout {
            process.kill();
            bail!("the installer did not finish within {} s\n{}", timeout.as_secs(), console_tail(serial_log, &format!("{name}'s installer"), 30));
        }
        crate::process::pause(Duration::from_millis(500));
    }
}

/// A disk file attached to a machine as it is; the guest sees it as
/// /dev/disk/by-id/virtio-SERIAL.
#[derive(Debug, Clone)]
pub struct Attached {
    pub file: PathBuf,
    pub serial: &'static str,
    /// "qcow2" or "raw".
    pub format: &'static str,
    pub read_only: bool,
}

fn attached_args(disks: &[Attached]) -> Vec<String> {
    let mut args = Vec::new();
    for disk in disks {
        let read_only = if disk.read_only { ",readonly=on".to_string() } else { format!(",{THROWAWAY}") };
        args.push("-drive".to_string());
        args.push(format!("file={},if=none,id=attached-{},format={}{read_only}", disk.file.display(), disk.serial, disk.format));
        args.push("-device".to_string());
        args.push(format!("virtio-blk-pci,drive=attached-{0},serial={0}", disk.serial));
    }
    args
}

/// A never-booted copy of `image`: a copy-on-write disk over it.
pub fn image_copy(image: &Path, copy: &Path) -> Result<Attached> {
    Cmd::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(std::fs::canonicalize(image)?)
        .arg(copy)
        .run()
        .context("while making a copy of the image to attach")?;
    Ok(Attached { file: copy.to_path_buf(), serial: super::identity::COPY_SERIAL, format: "qcow2", read_only: false })
}

fn free_loopback_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("while finding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}
