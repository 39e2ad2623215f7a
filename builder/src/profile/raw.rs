//! Plain serde types for one profile file, exactly as written. No logic, no
//! defaults beyond "absent": validation and merging live in `profile/mod.rs`.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawProfile {
    pub name: Option<Spanned<String>>,
    pub description: Option<String>,
    pub extends: Option<Spanned<String>>,
    pub mirror: Option<RawMirror>,
    pub packages: Option<RawPackages>,
    pub kernel: Option<RawKernel>,
    pub image: Option<RawImage>,
    pub ssh: Option<RawSsh>,
    pub services: Option<RawServices>,
    pub passwords: Option<RawPasswords>,
    pub firewall: Option<RawFirewall>,
    pub logging: Option<RawLogging>,
    pub integrity: Option<RawIntegrity>,
    pub auditd: Option<RawAuditd>,
    pub backups: Option<RawBackups>,
    pub elf_audit: Option<RawElfAudit>,
    pub toolchain: Option<RawToolchain>,
    pub installer: Option<RawInstaller>,
    pub audit: Option<RawAudit>,
    pub sessions: Option<RawSessions>,
    pub time: Option<RawTime>,
    pub mail: Option<RawMail>,
    pub mail_gateway: Option<RawMailGateway>,
    pub accounting: Option<RawAccounting>,
    pub updates: Option<RawUpdates>,
    pub encryption: Option<RawEncryption>,
    pub gateway: Option<RawGateway>,
    pub vpn: Option<RawVpn>,
    pub wireless: Option<RawWireless>,
    #[serde(default)]
    pub users: Vec<RawUser>,
    pub overlays: Option<RawOverlays>,
    #[serde(default)]
    pub variables: BTreeMap<String, Spanned<toml::Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawMirror {
    pub url: Option<Spanned<String>>,
    pub security_url: Option<Spanned<String>>,
    pub suite: Option<Spanned<String>>,
    pub security_suite: Option<Spanned<String>>,
    pub components: Option<Vec<Spanned<String>>>,
    pub snapshot: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawPackages {
    #[serde(default)]
    pub include: Vec<Spanned<String>>,
    #[serde(default)]
    pub exclude: Vec<Spanned<String>>,
    pub drop_docs: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawKernel {
    pub package: Option<Spanned<String>>,
    pub cmdline: Option<Spanned<String>>,
    /// Kernel modules the initramfs carries; "most" for initramfs-tools' default.
    pub initramfs_modules: Option<Spanned<toml::Value>>,
    /// rampart's kernel hardening defaults (sysctls, command line, module blacklist, ctrl-alt-del off).
    pub hardening: Option<bool>,
    /// sysctl key = value, over rampart's defaults; dotted keys may be written bare.
    #[serde(default)]
    pub sysctl: BTreeMap<String, RawSysctlEntry>,
    /// Modules that may never load, on top of rampart's list.
    #[serde(default)]
    pub module_blacklist: Vec<Spanned<String>>,
    pub apparmor: Option<bool>,
    /// /tmp (tmpfs), /var/tmp and /dev/shm mounted nodev,nosuid,noexec.
    pub secure_mounts: Option<bool>,
    /// Programs may leave core dumps (rampart: no).
    pub core_dumps: Option<bool>,
}

/// A value in `[kernel.sysctl]` and where it was written. A bare dotted key
/// (`kernel.kptr_restrict = 2`) is a nested table in TOML, one that toml
/// gives no span, so entries take a span when there is one (values) and do
/// without it (implicit tables).
#[derive(Debug)]
pub struct RawSysctlEntry {
    pub value: RawSysctlValue,
    pub span: Option<std::ops::Range<usize>>,
}

#[derive(Debug)]
pub enum RawSysctlValue {
    Integer(i64),
    Text(String),
    Table(BTreeMap<String, RawSysctlEntry>),
    /// Any other TOML type, by name (refused by validation).
    Other(&'static str),
}

// serde_spanned's protocol: a spanned value is asked for as this struct.
const SPANNED_NAME: &str = "$__serde_spanned_private_Spanned";
const SPANNED_START: &str = "$__serde_spanned_private_start";
const SPANNED_END: &str = "$__serde_spanned_private_end";
const SPANNED_VALUE: &str = "$__serde_spanned_private_value";

struct SysctlVisitor {
    /// Whether a map may be serde_spanned's (start, end, value).
    spanned: bool,
}

impl<'de> serde::de::Visitor<'de> for SysctlVisitor {
    type Value = RawSysctlEntry;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an integer or a string")
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(RawSysctlEntry { value: RawSysctlValue::Integer(v), span: None })
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
        let v = i64::try_from(v).map_err(|_| E::custom("integer too large"))?;
        Ok(RawSysctlEntry { value: RawSysctlValue::Integer(v), span: None })
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(RawSysctlEntry { value: RawSysctlValue::Text(v.to_string()), span: None })
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(RawSysctlEntry { value: RawSysctlValue::Other("a boolean"), span: None })
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(RawSysctlEntry { value: RawSysctlValue::Other("a float"), span: None })
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(RawSysctlEntry { value: RawSysctlValue::Other("an array"), span: None })
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut table = BTreeMap::new();
        let mut first = true;
        while let Some(key) = map.next_key::<String>()? {
            if first && self.spanned && key == SPANNED_START {
                let start: usize = map.next_value()?;
                let _ = map.next_key::<String>()?;
                let end: usize = map.next_value()?;
                let _ = map.next_key::<String>()?;
                let inner = map.next_value_seed(SysctlSeed { spanned: false })?;
                return Ok(RawSysctlEntry { value: inner.value, span: Some(start..end) });
            }
            first = false;
            if key.starts_with("$__toml_private") {
                map.next_value::<serde::de::IgnoredAny>()?;
                return Ok(RawSysctlEntry { value: RawSysctlValue::Other("a date or time"), span: None });
            }
            table.insert(key, map.next_value::<RawSysctlEntry>()?);
        }
        Ok(RawSysctlEntry { value: RawSysctlValue::Table(table), span: None })
    }
}

struct SysctlSeed {
    spanned: bool,
}

impl<'de> serde::de::DeserializeSeed<'de> for SysctlSeed {
    type Value = RawSysctlEntry;
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(SysctlVisitor { spanned: self.spanned })
    }
}

impl<'de> Deserialize<'de> for RawSysctlEntry {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_struct(SPANNED_NAME, &[SPANNED_START, SPANNED_END, SPANNED_VALUE], SysctlVisitor { spanned: true })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawImage {
    pub hostname: Option<Spanned<String>>,
    pub size: Option<Spanned<String>>,
    /// Per mount point (CIS 1.1.2): a size, or "none".
    pub partitions: Option<BTreeMap<String, Spanned<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawSsh {
    pub port: Option<Spanned<i64>>,
    pub allow_from: Option<Vec<Spanned<String>>>,
    pub forwarding: Option<bool>,
    /// Also accept keys from the users' own ~/.ssh/authorized_keys.
    pub user_keys: Option<bool>,
    pub max_auth_tries: Option<Spanned<i64>>,
    pub login_grace_time: Option<Spanned<i64>>,
    pub banner: Option<Spanned<String>>,
    /// Further sshd_config keywords, checked by the image's `sshd -t`.
    #[serde(default)]
    pub options: BTreeMap<String, Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawServices {
    /// The allow-list: units that may be enabled; everything else is disabled and masked.
    pub enable: Option<Vec<Spanned<String>>>,
    /// Terminals that get a login prompt (tty1, ttyS0, ...).
    pub gettys: Option<Vec<Spanned<String>>>,
    /// rampart's systemd hardening drop-ins for the services it enables.
    pub sandbox: Option<bool>,
    /// `[services.sandboxes."nginx.service"]`: systemd sandboxing directive = value (or a list of values).
    #[serde(default)]
    pub sandboxes: BTreeMap<Spanned<String>, BTreeMap<Spanned<String>, Spanned<toml::Value>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawPasswords {
    pub min_length: Option<Spanned<i64>>,
    pub min_classes: Option<Spanned<i64>>,
    pub max_repeat: Option<Spanned<i64>>,
    pub max_sequence: Option<Spanned<i64>>,
    pub dictionary_check: Option<bool>,
    pub enforce_for_root: Option<bool>,
    pub remember: Option<Spanned<i64>>,
    pub lockout_attempts: Option<Spanned<i64>>,
    pub lockout_seconds: Option<Spanned<i64>>,
    pub max_days: Option<Spanned<i64>>,
    pub min_days: Option<Spanned<i64>>,
    pub warn_days: Option<Spanned<i64>>,
    pub inactive_days: Option<Spanned<i64>>,
    pub umask: Option<Spanned<String>>,
    /// John the Ripper against the shadow file on a timer.
    pub audit: Option<bool>,
    pub audit_schedule: Option<Spanned<String>>,
    pub audit_minutes: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawLogging {
    pub enable: Option<bool>,
    /// host:port of the remote log host; "" for none.
    pub remote: Option<Spanned<String>>,
    pub queue_max_mib: Option<Spanned<i64>>,
    /// The most the persistent journal may take on disk.
    pub journal_max_mib: Option<Spanned<i64>>,
    /// A log file in /var/log is rotated once it is this large (or weekly).
    pub file_max_mib: Option<Spanned<i64>>,
    /// How many rotated files of each log are kept.
    pub files_kept: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawIntegrity {
    pub enable: Option<bool>,
    /// Also check installed packages' files against dpkg's digests (debsums), on the same schedule.
    pub packages: Option<bool>,
    #[serde(default)]
    pub exclude: Vec<Spanned<String>>,
    #[serde(default)]
    pub rules: Vec<Spanned<String>>,
    pub schedule: Option<Spanned<String>>,
}

/// `[auditd]` exactly as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawAuditd {
    pub enable: Option<bool>,
    /// Further audit rules in auditctl syntax, one rule each.
    #[serde(default)]
    pub rules: Vec<Spanned<String>>,
    pub max_log_file_mib: Option<Spanned<i64>>,
    pub num_logs: Option<Spanned<i64>>,
    pub backlog_limit: Option<Spanned<i64>>,
    pub immutable: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawBackups {
    pub enable: Option<Spanned<bool>>,
    /// What is backed up; replaces rampart's list.
    pub paths: Option<Vec<Spanned<String>>>,
    /// A whole block device that holds the archives (e.g. /dev/disk/by-id/...).
    pub device: Option<Spanned<String>>,
    /// Or: the mount point of a separate, already mounted file system.
    pub directory: Option<Spanned<String>>,
    pub schedule: Option<Spanned<String>>,
    pub keep_daily: Option<Spanned<i64>>,
    pub keep_weekly: Option<Spanned<i64>>,
    pub keep_monthly: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawFirewall {
    pub enable: Option<bool>,
    /// Inbound ICMP echo requests accepted per second.
    pub icmp_echo_per_second: Option<Spanned<i64>>,
    /// Log dropped inbound packets (rate-limited).
    pub log_drops: Option<bool>,
    #[serde(default)]
    pub allow: Vec<RawFirewallAllow>,
    /// Extra nft rules for the input chain, checked by `nft -c` at build time.
    #[serde(default)]
    pub input_rules: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawFirewallAllow {
    pub port: Spanned<i64>,
    pub protocol: Option<Spanned<String>>,
    pub from: Option<Vec<Spanned<String>>>,
    /// What listens there (for the report and the reader).
    pub service: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawElfAudit {
    pub enable: Option<bool>,
    /// Least percentage of the image's executables with each property.
    pub floor: Option<RawElfFloor>,
    /// Executables allowed to be weak: not counted against the floors.
    pub allow_weak: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawElfFloor {
    pub pie: Option<Spanned<f64>>,
    pub nx: Option<Spanned<f64>>,
    pub relro: Option<Spanned<f64>>,
    pub bind_now: Option<Spanned<f64>>,
    pub stack_protector: Option<Spanned<f64>>,
    pub fortify: Option<Spanned<f64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawToolchain {
    /// Hardened defaults for the image's C compiler and for dpkg package builds.
    pub hardened: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawAudit {
    /// `rampart audit` fails when Lynis's hardening index is below this (0-100).
    pub min_index: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawSessions {
    /// An idle interactive shell ends after this many seconds; 0: never.
    pub idle_timeout: Option<Spanned<i64>>,
    /// Only members of this group may use su (pam_wheel); rampart makes it, empty.
    pub su_group: Option<Spanned<String>>,
    /// Each session gets its own temporary directory (pam_tmpdir: TMPDIR=/tmp/user/<uid>).
    pub private_tmp: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawAccounting {
    /// The kernel records every process that ends (acct).
    pub processes: Option<bool>,
    /// Days of records kept (rotated daily).
    pub days_kept: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawMail {
    pub enable: Option<bool>,
    /// host:port of the relay every mail leaves through; "" for none.
    pub smarthost: Option<Spanned<String>>,
    /// A file beside the profile holding "user:password" for the smarthost.
    pub credentials: Option<Spanned<String>>,
    /// Where root's mail and the alerts go.
    pub to: Option<Vec<Spanned<String>>>,
    pub alert_interval_minutes: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawMailGateway {
    pub enable: Option<bool>,
    /// The domains mail is accepted for (and only these).
    pub relay_domains: Option<Vec<Spanned<String>>>,
    /// host:port of the internal mail host their mail is passed to.
    pub deliver_to: Option<Spanned<String>>,
    /// Attachment name extensions MIMEDefang treats as risky.
    pub risky_extensions: Option<Vec<Spanned<String>>>,
    /// What happens to a risky attachment: "rename" (".txt" appended), "drop", "reject".
    pub attachments: Option<Spanned<String>>,
    /// A directory beside the profile of ClamAV signature databases.
    pub virus_databases: Option<Spanned<String>>,
    pub spam_threshold: Option<Spanned<f64>>,
    /// "reject" or "tag" a message SpamAssassin scores at the threshold.
    pub spam_action: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawTime {
    pub enable: Option<bool>,
    /// NTP servers (names or addresses); none: systemd-timesyncd's fallback.
    pub servers: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawUpdates {
    /// Security updates installed by unattended-upgrades from the image's
    /// own security suite.
    pub automatic: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawEncryption {
    /// The separate data partitions encrypted on first boot, bound to the
    /// machine's TPM.
    pub data: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawInstaller {
    /// The disk the offline installer writes the image to, e.g. "/dev/disk/by-path/pci-0000:00:1f.2-ata-1".
    pub target: Option<Spanned<String>>,
    /// Let the installer replace what the named target holds.
    pub overwrite: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawUser {
    pub name: Spanned<String>,
    #[serde(default)]
    pub groups: Vec<Spanned<String>>,
    #[serde(default)]
    pub ssh_authorized_keys: Vec<Spanned<String>>,
    pub shell: Option<Spanned<String>>,
    /// A yescrypt/sha512crypt hash; checked against common passwords at build time.
    pub password_hash: Option<Spanned<String>>,
    /// A plain password, for test profiles only; checked like a typed one.
    pub password: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawOverlays {
    #[serde(default)]
    pub trees: Vec<Spanned<String>>,
    /// Per image path: "0640" or "0640 root:adm".
    #[serde(default)]
    pub modes: BTreeMap<String, Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawGateway {
    pub enable: Option<bool>,
    /// One entry per role: wan, lan, and optionally dmz and mgmt.
    #[serde(default)]
    pub interface: Vec<RawGatewayInterface>,
    /// Port forwards from wan to a dmz host.
    #[serde(default)]
    pub forward: Vec<RawPortForward>,
    pub dhcp: Option<RawGatewayDhcp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawGatewayInterface {
    pub role: Spanned<String>,
    /// The NIC's MAC address ...
    pub mac: Option<Spanned<String>>,
    /// ... or its udev path (ID_PATH, e.g. "pci-0000:00:04.0").
    pub path: Option<Spanned<String>>,
    /// Addresses with their prefix length ("10.78.0.1/24", "fd78::1/64").
    pub addresses: Option<Vec<Spanned<String>>>,
    /// Take the IPv4 address by DHCP (wan and mgmt only).
    pub dhcp: Option<bool>,
    /// Routers for the default route (wan with static addresses).
    pub routers: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawPortForward {
    pub protocol: Option<Spanned<String>>,
    pub port: Spanned<i64>,
    /// "ADDRESS" or "ADDRESS:PORT" of a dmz host.
    pub to: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawGatewayDhcp {
    pub enable: Option<bool>,
    /// First and last address handed out on lan.
    pub range: Option<Vec<Spanned<String>>>,
    /// Also answer DNS queries from lan (dnsmasq's forwarder).
    pub dns: Option<bool>,
    /// Upstream DNS servers dnsmasq asks; none: the ones wan's DHCP gave.
    pub upstream: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawVpn {
    pub enable: Option<bool>,
    /// The host's addresses inside the tunnel, with prefix ("10.90.0.1/24").
    pub addresses: Option<Vec<Spanned<String>>>,
    pub listen_port: Option<Spanned<i64>>,
    /// "also" (SSH from its usual places and the VPN) or "only" (the VPN alone).
    pub ssh: Option<Spanned<String>>,
    /// Let a peer's allowed addresses cover the whole internet.
    pub allow_default_route: Option<bool>,
    #[serde(default)]
    pub peer: Vec<RawVpnPeer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawVpnPeer {
    pub name: Spanned<String>,
    /// The peer's WireGuard public key: 32 bytes in base64.
    pub public_key: Spanned<String>,
    pub allowed_ips: Vec<Spanned<String>>,
    /// Where to reach the peer ("host:port"); none: it calls in.
    pub endpoint: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawWireless {
    /// Off by default: no Wi-Fi, Bluetooth or other radio module loads.
    pub enable: Option<bool>,
}
