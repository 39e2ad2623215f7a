//! Turns profile files into one validated `Profile`: parses each file of the
//! `extends` chain, validates every value where it was written (so errors name
//! file:line:col), then merges base to child. Reads the profile files and
//! nothing else; never runs a process, never touches the network.

pub mod accounting;
pub mod auditd;
pub mod backups;
pub mod controls;
pub mod monitoring;
pub mod partitions;
pub mod elf_audit;
pub mod kernel;
pub mod raw;
pub mod sandboxes;
pub mod sessions;
pub mod time;
pub mod mail;
pub mod mail_gateway;
pub mod network;
pub mod updates;
pub mod encryption;
pub mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};


pub use controls::{FirewallAllow, FirewallSpec, PasswordAudit, PasswordPolicy, Protocol, ServicesSpec, Sited};
pub use backups::{BackupTarget, BackupsSpec};
pub use monitoring::{IntegritySpec, LogHost, LoggingSpec};
pub use accounting::AccountingSpec;
pub use sessions::SessionsSpec;
pub use time::TimeSpec;
pub use mail::MailSpec;
pub use mail_gateway::{AttachmentAction, MailGatewaySpec};
pub use network::{GatewaySpec, VpnSpec, WirelessSpec};
pub use updates::UpdatesSpec;
pub use encryption::EncryptionSpec;
pub use elf_audit::{ElfAuditSpec, HardeningProperty};
pub use types::{Cidr, Hostname, ImageSize, PackageName, Port, ProfileName, UserName};

/// A profile error: names file:line:col and the field.
pub type ProfileError = crate::located::LocatedError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorSpec {
    pub url: Option<String>,
    pub security_url: Option<String>,
    pub suite: String,
    pub security_suite: Option<String>,
    pub components: Vec<String>,
    pub snapshot: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageSpec {
    pub include: BTreeSet<PackageName>,
    pub exclude: BTreeSet<PackageName>,
    pub drop_docs: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSpec {
    pub package: PackageName,
    pub cmdline: String,
    pub initramfs_modules: InitramfsModules,
    /// Sysctls, command-line options, module blacklist, AppArmor, mount options.
    pub hardening: kernel::KernelHardening,
}

/// What the initramfs carries: initramfs-tools' MODULES=most, or exactly a
/// list (MODULES=list), which makes it several times smaller and faster to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitramfsModules {
    Most,
    List(Vec<String>),
}

/// The storage drivers of the virtual machines the cloud kernel is for.
pub const DEFAULT_INITRAMFS_MODULES: &[&str] =
    &["virtio_pci", "virtio_blk", "virtio_scsi", "sd_mod", "ahci", "nvme", "xen_blkfront", "hv_storvsc", "vmw_pvscsi"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    pub hostname: Hostname,
    /// The raw disk's size; `None`: just large enough (the last partition grows on first boot).
    pub size: Option<ImageSize>,
    /// The file systems of their own below the root (CIS 1.1.2), in fstab order.
    pub partitions: Vec<partitions::PartitionSpec>,
}

impl ImageSpec {
    /// Whether `mount` is a partition of its own.
    pub fn separates(&self, mount: &str) -> bool {
        self.partitions.iter().any(|p| p.partition.mount == mount)
    }

    /// The mount point whose partition is last on the disk and grows.
    pub fn grows(&self) -> &'static str {
        if self.separates(crate::layout::GROWS_WHEN_SEPARATE) {
            crate::layout::GROWS_WHEN_SEPARATE
        } else {
            "/"
        }
    }
}

/// `[toolchain]`: what anything compiled on the image gets by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolchainSpec {
    /// gcc's own defaults (a specs file) and dpkg-buildflags' hardening=+all.
    pub hardened: bool,
}

/// `[installer]`: where the offline installer (`build --installer`) writes the image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallerSpec {
    /// A /dev path of the target disk; `None`: the only empty disk.
    pub target: Option<String>,
    /// The named target may hold data, which the installer replaces.
    pub overwrite: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSpec {
    pub port: Port,
    pub allow_from: Vec<Cidr>,
    /// TCP, agent, stream-local and X11 forwarding (a jump host needs TCP).
    pub forwarding: bool,
    /// Keys in the users' own ~/.ssh/authorized_keys count too; by default
    /// only the root-owned files in /etc/ssh/authorized_keys.d do.
    pub user_keys: bool,
    pub max_auth_tries: u32,
    pub login_grace_time: u32,
    pub banner: String,
    /// Further sshd_config keywords, by keyword.
    pub options: BTreeMap<String, Sited<String>>,
}

/// A password the profile gives for an account, instead of a random one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GivenPassword {
    /// Plain text (test profiles): checked like a typed password.
    Plain(String),
    /// A crypt(3) hash: tried against common passwords at build time.
    Hash(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: UserName,
    pub groups: Vec<UserName>,
    pub ssh_authorized_keys: Vec<String>,
    pub shell: String,
    /// `None`: a random password, handed out in the secrets file.
    pub password: Option<Sited<GivenPassword>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayTree {
    pub name: String,
    /// The tree's directory on disk.
    pub dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMode {
    pub mode: u32,
    pub owner: String,
    pub group: String,
}

/// A fully merged and validated profile. Stages read only this.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: ProfileName,
    pub description: String,
    /// The profile file that was asked for.
    pub path: PathBuf,
    /// Every file of the `extends` chain, base first.
    pub files: Vec<PathBuf>,
    pub mirror: MirrorSpec,
    pub packages: PackageSpec,
    pub kernel: KernelSpec,
    pub image: ImageSpec,
    pub ssh: SshSpec,
    pub services: ServicesSpec,
    pub passwords: PasswordPolicy,
    pub sessions: SessionsSpec,
    pub time: TimeSpec,
    pub mail: MailSpec,
    pub mail_gateway: MailGatewaySpec,
    pub updates: UpdatesSpec,
    pub encryption: EncryptionSpec,
    pub accounting: AccountingSpec,
    pub firewall: FirewallSpec,
    pub gateway: GatewaySpec,
    pub vpn: VpnSpec,
    pub wireless: WirelessSpec,
    pub logging: LoggingSpec,
    pub integrity: IntegritySpec,
    pub auditd: auditd::AuditdSpec,
    pub backups: BackupsSpec,
    pub elf_audit: ElfAuditSpec,
    pub toolchain: ToolchainSpec,
    pub installer: InstallerSpec,
    /// `[audit] min-index`: the lowest Lynis hardening index `rampart audit` accepts.
    pub audit_min_index: Option<u8>,
    pub users: Vec<User>,
    pub overlays: Vec<OverlayTree>,
    pub overlay_modes: BTreeMap<String, FileMode>,
    pub variables: BTreeMap<String, serde_json::Value>,
}

impl Profile {
    /// Where the lock of this profile lives: next to it, `.lock` for `.toml`.
    pub fn lock_path(&self) -> PathBuf {
        self.path.with_extension("lock")
    }
}

use crate::located::SourceText as Source;

/// One file's settings, validated but not yet merged.
#[derive(Default)]
struct Layer {
    name: Option<ProfileName>,
    description: Option<String>,
    mirror_url: Option<String>,
    mirror_security_url: Option<String>,
    mirror_suite: Option<String>,
    mirror_security_suite: Option<String>,
    mirror_components: Option<Vec<String>>,
    mirror_snapshot: Option<(String, String)>,
    include: Vec<PackageName>,
    exclude: Vec<PackageName>,
    drop_docs: Option<bool>,
    kernel_package: Option<PackageName>,
    kernel_cmdline: Option<String>,
    initramfs_modules: Option<InitramfsModules>,
    kernel_hardening: kernel::KernelLayer,
    hostname: Option<Hostname>,
    size: Option<ImageSize>,
    ssh_port: Option<Port>,
    ssh_allow_from: Option<Vec<Cidr>>,
    controls: controls::ControlsLayer,
    sessions: sessions::SessionsLayer,
    time: time::TimeLayer,
    mail: mail::MailLayer,
    mail_gateway: mail_gateway::MailGatewayLayer,
    network: network::NetworkLayer,
    updates: updates::UpdatesLayer,
    encryption: encryption::EncryptionLayer,
    accounting: accounting::AccountingLayer,
    monitoring: monitoring::MonitoringLayer,
    auditd: auditd::AuditdLayer,
    partitions: partitions::PartitionsLayer,
    backups: backups::BackupsLayer,
    elf_audit: elf_audit::ElfAuditLayer,
    toolchain_hardened: Option<bool>,
    installer_target: Option<Option<String>>,
    installer_overwrite: Option<bool>,
    audit_min_index: Option<u8>,
    users: Vec<User>,
    overlays: Vec<OverlayTree>,
    overlay_modes: BTreeMap<String, FileMode>,
    variables: BTreeMap<String, serde_json::Value>,
}

/// Reads and validates the profile at `path` and everything it extends.
pub fn load(path: &Path) -> Result<Profile, ProfileError> {
    let mut chain: Vec<(PathBuf, PathBuf, Layer)> = Vec::new();
    let mut next = Some((path.to_path_buf(), None::<String>));
    while let Some((file, asked_at)) = next.take() {
        let canonical = std::fs::canonicalize(&file).map_err(|e| ProfileError {
            location: asked_at.clone().unwrap_or_else(|| file.display().to_string()),
            message: format!("cannot read profile {}: {}", file.display(), io_reason(&e)),
        })?;
        if let Some(position) = chain.iter().position(|(seen, _, _)| *seen == canonical) {
            let cycle: Vec<String> = chain[position..]
                .iter()
                .map(|(_, shown, _)| shown.display().to_string())
                .chain([file.display().to_string()])
                .collect();
            return Err(ProfileError {
                location: asked_at.unwrap_or_default(),
                message: format!("extends forms a cycle: {}", cycle.join(" -> ")),
            });
        }
        let text = std::fs::read_to_string(&canonical).map_err(|e| ProfileError {
            location: file.display().to_string(),
            message: format!("cannot read profile: {}", io_reason(&e)),
        })?;
        let source = Source { file: file.clone(), text };
        let raw: raw::RawProfile = source.parse()?;
        if let Some(extends) = &raw.extends {
            let base = file.parent().unwrap_or(Path::new(".")).join(extends.get_ref());
            next = Some((base, Some(source.location(extends.span().start))));
        }
        let layer = validate_layer(&source, raw)?;
        chain.push((canonical, file, layer));
    }
    let files: Vec<PathBuf> = chain.iter().rev().map(|(p, _, _)| p.clone()).collect();
    let top_name = chain[0].2.name.clone();
    let mut merged = Layer::default();
    for (_, _, layer) in chain.into_iter().rev() {
        merge(&mut merged, layer);
    }
    let profile = finish(path, files, top_name, merged)?;
    crate::stages::sandboxing::check_profile_units(&profile)?;
    Ok(profile)
}

fn io_reason(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_string(),
        _ => error.to_string(),
    }
}

fn validate_layer(source: &Source, raw: raw::RawProfile) -> Result<Layer, ProfileError> {
    let mut layer = Layer::default();
    if let Some(name) = &raw.name {
        layer.name = Some(source.check(name, "name", |s| ProfileName::parse(s))?);
    }
    layer.description = raw.description;
    if let Some(mirror) = raw.mirror {
        if let Some(url) = &mirror.url {
            layer.mirror_url = Some(source.check(url, "mirror.url", |s| types::parse_url(s))?);
        }
        if let Some(url) = &mirror.security_url {
            layer.mirror_security_url = Some(source.check(url, "mirror.security-url", |s| types::parse_url(s))?);
        }
        if let Some(suite) = &mirror.suite {
            layer.mirror_suite = Some(source.check(suite, "mirror.suite", |s| types::parse_suite(s))?);
        }
        if let Some(suite) = &mirror.security_suite {
            layer.mirror_security_suite = Some(source.check(suite, "mirror.security-suite", |s| types::parse_suite(s))?);
        }
        if let Some(components) = &mirror.components {
            let mut parsed = Vec::new();
            for component in components {
                parsed.push(source.check(component, "mirror.components", |s| types::parse_suite(s))?);
            }
            layer.mirror_components = Some(parsed);
        }
        if let Some(snapshot) = &mirror.snapshot {
            let date = source.check(snapshot, "mirror.snapshot", |s| types::parse_snapshot(s))?;
            layer.mirror_snapshot = Some((date, source.location(snapshot.span().start)));
        }
    }
    if let Some(packages) = raw.packages {
        for name in &packages.include {
            layer.include.push(source.check(name, "packages.include", |s| PackageName::parse(s))?);
        }
        for name in &packages.exclude {
            layer.exclude.push(source.check(name, "packages.exclude", |s| PackageName::parse(s))?);
        }
        layer.drop_docs = packages.drop_docs;
    }
    if let Some(kernel) = raw.kernel {
        if let Some(package) = &kernel.package {
            layer.kernel_package = Some(source.check(package, "kernel.package", |s| PackageName::parse(s))?);
        }
        if let Some(cmdline) = &kernel.cmdline {
            layer.kernel_cmdline = Some(source.check(cmdline, "kernel.cmdline", |s| types::parse_cmdline(s))?);
        }
        if let Some(modules) = &kernel.initramfs_modules {
            layer.initramfs_modules = Some(source.check(modules, "kernel.initramfs-modules", types::parse_initramfs_modules)?);
        }
        layer.kernel_hardening = kernel::validate(source, &kernel)?;
    }
    if let Some(image) = raw.image {
        if let Some(hostname) = &image.hostname {
            layer.hostname = Some(source.check(hostname, "image.hostname", |s| Hostname::parse(s))?);
        }
        if let Some(size) = &image.size {
            layer.size = Some(source.check(size, "image.size", |s| ImageSize::parse(s))?);
        }
        layer.partitions = partitions::validate(source, image.partitions.as_ref())?;
    }
    layer.controls = controls::validate(source, raw.ssh.as_ref(), raw.services, raw.passwords, raw.firewall)?;
    layer.sessions = sessions::validate(source, raw.sessions)?;
    layer.time = time::validate(source, raw.time)?;
    layer.mail = mail::validate(source, raw.mail)?;
    layer.mail_gateway = mail_gateway::validate(source, raw.mail_gateway)?;
    layer.network = network::validate(source, raw.gateway, raw.vpn, raw.wireless)?;
    layer.updates = updates::validate(raw.updates);
    layer.encryption = encryption::validate(raw.encryption);
    layer.accounting = accounting::validate(source, raw.accounting)?;
    layer.monitoring = monitoring::validate(source, raw.logging, raw.integrity)?;
    layer.auditd = auditd::validate(source, raw.auditd)?;
    layer.backups = backups::validate(source, raw.backups)?;
    layer.elf_audit = elf_audit::validate(source, raw.elf_audit)?;
    layer.toolchain_hardened = raw.toolchain.and_then(|t| t.hardened);
    if let Some(installer) = raw.installer {
        if let Some(target) = &installer.target {
            layer.installer_target =
                Some(if target.get_ref().is_empty() { None } else { Some(source.check(target, "installer.target", |s| types::parse_device_path(s))?) });
        }
        layer.installer_overwrite = installer.overwrite;
    }
    if let Some(audit) = raw.audit {
        if let Some(index) = &audit.min_index {
            layer.audit_min_index = Some(source.check(index, "audit.min-index", |i| u8::try_from(*i).ok().filter(|i| *i <= 100).ok_or("a hardening index, 0 to 100"))?);
        }
    }
    if let Some(ssh) = raw.ssh {
        if let Some(port) = &ssh.port {
            layer.ssh_port = Some(source.check(port, "ssh.port", |p| Port::from_i64(*p))?);
        }
        if let Some(ranges) = &ssh.allow_from {
            let mut parsed = Vec::new();
            for range in ranges {
                parsed.push(source.check(range, "ssh.allow-from", |s| Cidr::parse(s))?);
            }
            layer.ssh_allow_from = Some(parsed);
        }
    }
    let mut seen_users = BTreeSet::new();
    for user in &raw.users {
        let name = source.check(&user.name, "users.name", |s| UserName::parse(s))?;
        if name.as_str() == "root" {
            return Err(source.error(&user.name, "users.name: root cannot be an admin account; root login stays locked"));
        }
        if !seen_users.insert(name.clone()) {
            return Err(source.error(&user.name, format!("users.name: user {name} is declared twice")));
        }
        let mut groups = Vec::new();
        for group in &user.groups {
            groups.push(source.check(group, "users.groups", |s| UserName::parse(s))?);
        }
        let mut keys = Vec::new();
        for key in &user.ssh_authorized_keys {
            keys.push(source.check(key, "users.ssh-authorized-keys", |s| types::parse_ssh_public_key(s))?);
        }
        let shell = match &user.shell {
            Some(shell) => source.check(shell, "users.shell", |s| types::parse_absolute_path(s))?,
            None => "/bin/bash".to_string(),
        };
        let password = match (&user.password, &user.password_hash) {
            (Some(_), Some(hash)) => return Err(source.error(hash, "users.password-hash: give password or password-hash, not both")),
            (Some(plain), None) => Some(controls::Sited {
                value: GivenPassword::Plain(plain.get_ref().clone()),
                at: source.location(plain.span().start),
            }),
            (None, Some(hash)) => {
                let hash_text = source.check(hash, "users.password-hash", |s| types::parse_password_hash(s))?;
                Some(controls::Sited { value: GivenPassword::Hash(hash_text), at: source.location(hash.span().start) })
            }
            (None, None) => None,
        };
        layer.users.push(User { name, groups, ssh_authorized_keys: keys, shell, password });
    }
    if let Some(overlays) = raw.overlays {
        let overlays_root = source.file.parent().unwrap_or(Path::new(".")).join("..").join("overlays");
        for tree in &overlays.trees {
            let name = source.check(tree, "overlays.trees", |s| types::parse_tree_name(s))?;
            let dir = overlays_root.join(&name);
            if !dir.is_dir() {
                return Err(source.error(tree, format!("overlays.trees: no overlay tree {} (looked for {})", name, dir.display())));
            }
            layer.overlays.push(OverlayTree { name, dir });
        }
        for (path, spec) in &overlays.modes {
            let path = types::parse_absolute_path(path).map_err(|e| source.error(spec, format!("overlays.modes: {e}")))?;
            let mode = source.check(spec, &format!("overlays.modes.\"{path}\""), |s| types::parse_file_mode(s))?;
            layer.overlay_modes.insert(path, mode);
        }
    }
    for (key, value) in raw.variables {
        if !types::is_identifier(&key) {
            return Err(source.error(&value, format!("variables: {key:?} is not a valid variable name (letters, digits, _)")));
        }
        let json = serde_json::to_value(value.get_ref()).map_err(|e| source.error(&value, format!("variables.{key}: {e}")))?;
        layer.variables.insert(key, json);
    }
    Ok(layer)
}

/// Merge rules (documented in README): scalars of the child win; include and
/// exclude lists are unions (a child's exclude removes a base's include);
/// users are merged by name, the child's definition winning; overlay trees are
/// appended in order; modes and variables are merged by key.
fn merge(base: &mut Layer, child: Layer) {
    take(&mut base.name, child.name);
    take(&mut base.description, child.description);
    take(&mut base.mirror_url, child.mirror_url);
    take(&mut base.mirror_security_url, child.mirror_security_url);
    take(&mut base.mirror_suite, child.mirror_suite);
    take(&mut base.mirror_security_suite, child.mirror_security_suite);
    take(&mut base.mirror_components, child.mirror_components);
    take(&mut base.mirror_snapshot, child.mirror_snapshot);
    base.include.retain(|p| !child.exclude.contains(p));
    base.exclude.retain(|p| !child.include.contains(p));
    base.include.extend(child.include);
    base.exclude.extend(child.exclude);
    take(&mut base.drop_docs, child.drop_docs);
    take(&mut base.kernel_package, child.kernel_package);
    take(&mut base.kernel_cmdline, child.kernel_cmdline);
    take(&mut base.initramfs_modules, child.initramfs_modules);
    kernel::merge(&mut base.kernel_hardening, child.kernel_hardening);
    take(&mut base.hostname, child.hostname);
    take(&mut base.size, child.size);
    take(&mut base.ssh_port, child.ssh_port);
    take(&mut base.ssh_allow_from, child.ssh_allow_from);
    controls::merge(&mut base.controls, child.controls);
    sessions::merge(&mut base.sessions, child.sessions);
    time::merge(&mut base.time, child.time);
    mail::merge(&mut base.mail, child.mail);
    mail_gateway::merge(&mut base.mail_gateway, child.mail_gateway);
    network::merge(&mut base.network, child.network);
    updates::merge(&mut base.updates, child.updates);
    encryption::merge(&mut base.encryption, child.encryption);
    accounting::merge(&mut base.accounting, child.accounting);
    monitoring::merge(&mut base.monitoring, child.monitoring);
    auditd::merge(&mut base.auditd, child.auditd);
    partitions::merge(&mut base.partitions, child.partitions);
    backups::merge(&mut base.backups, child.backups);
    elf_audit::merge(&mut base.elf_audit, child.elf_audit);
    take(&mut base.toolchain_hardened, child.toolchain_hardened);
    take(&mut base.installer_target, child.installer_target);
    take(&mut base.installer_overwrite, child.installer_overwrite);
    take(&mut base.audit_min_index, child.audit_min_index);
    for user in child.users {
        base.users.retain(|u| u.name != user.name);
        base.users.push(user);
    }
    base.overlays.extend(child.overlays);
    base.overlay_modes.extend(child.overlay_modes);
    base.variables.extend(child.variables);
}

fn finish(path: &Path, files: Vec<PathBuf>, top_name: Option<ProfileName>, layer: Layer) -> Result<Profile, ProfileError> {
    let at_file = |message: String| ProfileError { location: path.display().to_string(), message };
    let name = top_name.ok_or_else(|| at_file("missing field `name` (every profile names itself)".into()))?;
    let url = layer.mirror_url;
    if let Some((date, location)) = &layer.mirror_snapshot {
        for candidate in [&url, &layer.mirror_security_url].into_iter().flatten() {
            if !candidate.contains("{snapshot}") {
                return Err(ProfileError {
                    location: location.clone(),
                    message: format!(
                        "mirror.snapshot: snapshot {date} needs mirror urls with a {{snapshot}} placeholder, and {candidate} has none"
                    ),
                });
            }
        }
        if url.is_none() {
            return Err(ProfileError {
                location: location.clone(),
                message: "mirror.snapshot: a snapshot needs mirror.url (with a {snapshot} placeholder)".into(),
            });
        }
    }
    let controls = controls::finish(layer.controls).map_err(at_file)?;
    let (logging, integrity) = monitoring::finish(layer.monitoring);
    let auditd = auditd::finish(layer.auditd);
    let partitions = partitions::finish(layer.partitions, &auditd, &logging)?;
    let backups = backups::finish(layer.backups)?;
    let mut elf_audit = elf_audit::finish(layer.elf_audit);
    if backups.enable {
        elf_audit.control_allowed_weak.extend(backups::ALLOWED_WEAK.iter().map(|(p, why)| (p.to_string(), why.to_string())));
    }
    let mut include: BTreeSet<PackageName> = layer.include.into_iter().collect();
    let exclude: BTreeSet<PackageName> = layer.exclude.into_iter().collect();
    // Each control brings the Debian packages that do its work in the image.
    // The boot loader on the ESP is the image's own, from its lock.
    let mut needed = vec![("boot", "systemd-boot-efi"), ("boot", "fdisk"), ("boot", "e2fsprogs"), ("passwords", "libpam-pwquality"), ("passwords", "cracklib-runtime")];
    if controls.firewall.enable {
        needed.push(("firewall", "nftables"));
    }
    if logging.enable {
        needed.push(("logging", "rsyslog"));
        needed.push(("logging", "logrotate"));
    }
    if integrity.enable {
        needed.push(("integrity", "aide"));
    }
    if integrity.enable && integrity.packages {
        needed.push(("integrity.packages", "debsums"));
    }
    if auditd.enable {
        needed.push(("auditd", "auditd"));
    }
    if backups.enable {
        needed.push(("backups", "borgbackup"));
    }
    let sessions = sessions::finish(layer.sessions);
    if sessions.private_tmp {
        needed.push(("sessions.private-tmp", "libpam-tmpdir"));
    }
    let accounting = accounting::finish(layer.accounting);
    if accounting.processes {
        needed.push(("accounting", "acct"));
    }
    let time = time::finish(layer.time);
    let (gateway, vpn, wireless) = network::finish(layer.network, &path.display().to_string())?;
    if gateway.dhcp.is_some() {
        needed.push(("gateway.dhcp", "dnsmasq"));
    }
    if vpn.enable {
        needed.push(("vpn", "wireguard-tools"));
    }
    if time.enable {
        needed.push(("time", "systemd-timesyncd"));
    }
    let mail = mail::finish(layer.mail)?;
    if mail.enable {
        needed.push(("mail", "postfix"));
        if mail.credentials.is_some() {
            // SASL's PLAIN and LOGIN mechanisms
            needed.push(("mail.credentials", "libsasl2-modules"));
        }
    }
    let mail_gateway = mail_gateway::finish(layer.mail_gateway, &mail, &path.display().to_string())?;
    if mail_gateway.enable {
        // clamav: clamscan checks the signatures at build time;
        // libarchive-zip-perl: MIMEDefang looks at the names inside zip files
        for package in ["mimedefang", "libarchive-zip-perl", "clamav", "clamav-daemon", "clamav-milter", "spamassassin", "spamd", "spamass-milter"] {
            needed.push(("mail-gateway", package));
        }
        let smtp = Port::from_i64(25).expect("a port");
        if controls.firewall.enable && !controls.firewall.allow.iter().any(|a| a.port == smtp && a.protocol == Protocol::Tcp) {
            return Err(at_file("mail-gateway: firewall.allow has no entry for port 25/tcp: the gateway would accept no mail (add [[firewall.allow]] port = 25, with the ranges that may send)".to_string()));
        }
    }
    if controls.passwords.audit.is_some() {
        needed.push(("passwords.audit", "john"));
    }
    let updates = updates::finish(layer.updates);
    if updates.automatic {
        needed.push(("updates.automatic", "unattended-upgrades"));
    }
    let encryption = encryption::finish(layer.encryption);
    if encryption.data && partitions.is_empty() {
        return Err(at_file("encryption.data: the image has no data partition to encrypt (image.partitions keeps every mount point on the root)".into()));
    }
    if encryption.data {
        // cryptsetup encrypts in place; systemd's cryptenroll and
        // cryptsetup reach the TPM through tpm2-tss; openssl seals the
        // recovery key to the site's certificate.
        for package in ["cryptsetup-bin", "libtss2-esys-3.0.2-0", "libtss2-rc0", "libtss2-tcti-device0", "openssl"] {
            needed.push(("encryption.data", package));
        }
    }
    let kernel_hardening = kernel::finish(layer.kernel_hardening);
    if gateway.enable {
        for key in ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"] {
            if let Some(value) = kernel_hardening.sysctl.get(key).filter(|v| v.value == "0") {
                return Err(ProfileError {
                    location: value.at.clone(),
                    message: format!("kernel.sysctl: {key} = 0 would stop the gateway forwarding; [gateway] forwards only what its default-drop forward chain lets through"),
                });
            }
        }
    }
    if kernel_hardening.apparmor {
        needed.push(("kernel.apparmor", "apparmor"));
    }
    for (control, package) in needed {
        let package = PackageName::parse(package).expect("valid");
        if exclude.contains(&package) {
            return Err(at_file(format!("packages.exclude: the {control} control needs {package}")));
        }
        include.insert(package);
    }
    if let Some(both) = include.intersection(&exclude).next() {
        return Err(at_file(format!("packages: {both} is both included and excluded")));
    }
    let kernel_package = layer.kernel_package.unwrap_or_else(|| PackageName::parse("linux-image-cloud-amd64").unwrap());
    if exclude.contains(&kernel_package) {
        return Err(at_file(format!("packages.exclude: {kernel_package} is the kernel package")));
    }
    let hostname = match layer.hostname {
        Some(h) => h,
        None => Hostname::parse(name.as_str()).map_err(|e| at_file(format!("image.hostname: {e}")))?,
    };
    let ssh_port = layer.ssh_port.unwrap_or(Port::SSH);
    if let Some(allow) = controls.firewall.allow.iter().find(|a| a.port == ssh_port && a.protocol == Protocol::Tcp) {
        return Err(ProfileError {
            location: allow.at.clone(),
            message: format!("firewall.allow: port {ssh_port}/tcp is SSH's; set who may reach it with ssh.allow-from"),
        });
    }
    let users = layer.users;
    for user in &users {
        if let Some(Sited { value: GivenPassword::Plain(plain), at }) = &user.password {
            if let Some(why) = controls::password_weakness(plain, user.name.as_str(), &controls.passwords) {
                return Err(ProfileError { location: at.clone(), message: format!("users.password of {}: too weak: {why}", user.name) });
            }
        }
    }
    Ok(Profile {
        description: layer.description.unwrap_or_default(),
        path: path.to_path_buf(),
        files,
        mirror: MirrorSpec {
            url,
            security_url: layer.mirror_security_url,
            suite: layer.mirror_suite.unwrap_or_else(|| "bookworm".into()),
            security_suite: layer.mirror_security_suite.or_else(|| Some("bookworm-security".into())).filter(|s| !s.is_empty()),
            components: layer.mirror_components.unwrap_or_else(|| vec!["main".into()]),
            snapshot: layer.mirror_snapshot.map(|(date, _)| date),
        },
        packages: PackageSpec { include, exclude, drop_docs: layer.drop_docs.unwrap_or(true) },
        kernel: KernelSpec {
            package: kernel_package,
            cmdline: layer.kernel_cmdline.unwrap_or_else(|| "console=ttyS0".into()),
            initramfs_modules: layer.initramfs_modules.unwrap_or_else(|| {
                InitramfsModules::List(DEFAULT_INITRAMFS_MODULES.iter().map(|m| m.to_string()).collect())
            }),
            hardening: kernel_hardening,
        },
        image: ImageSpec { hostname, size: layer.size, partitions },
        ssh: SshSpec {
            port: layer.ssh_port.unwrap_or(Port::SSH),
            allow_from: layer
                .ssh_allow_from
                .unwrap_or_else(controls::anywhere),
            forwarding: controls.ssh_forwarding,
            user_keys: controls.ssh_user_keys,
            max_auth_tries: controls.ssh_max_auth_tries,
            login_grace_time: controls.ssh_login_grace_time,
            banner: controls.ssh_banner,
            options: controls.ssh_options,
        },
        services: controls.services,
        passwords: controls.passwords,
        sessions,
        time,
        mail,
        mail_gateway,
        updates,
        encryption,
        accounting,
        firewall: controls.firewall,
        gateway,
        vpn,
        wireless,
        logging,
        integrity,
        auditd,
        elf_audit,
        backups,
        toolchain: ToolchainSpec { hardened: layer.toolchain_hardened.unwrap_or(true) },
        installer: InstallerSpec { target: layer.installer_target.flatten(), overwrite: layer.installer_overwrite.unwrap_or(false) },
        audit_min_index: layer.audit_min_index,
        users,
        overlays: layer.overlays,
        overlay_modes: layer.overlay_modes,
        variables: layer.variables,
        name,
    })
}

/// A child layer's value, when it gives one, replaces the base's.
fn take<T>(slot: &mut Option<T>, value: Option<T>) {
    if value.is_some() {
        *slot = value;
    }
}

#[cfg(test)]
mod tests;
