//! The access-control sections of a profile: `[services]`, `[passwords]`,
//! `[firewall]` and the hardening part of `[ssh]`. Validated where written
//! (errors name file:line:col and the field), merged field by field, then
//! given their defaults (CIS Debian 12 level 1 or stricter). Pure: no IO.

use std::collections::BTreeMap;

use super::raw;
use super::sandboxes::{self, SandboxesLayer, UnitSandbox};
use super::types::{Cidr, Port};
use crate::located::{LocatedError, SourceText};

/// A value together with where the profile gave it, so that a check made
/// later (at build time, against the image) can still name the place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sited<T> {
    pub value: T,
    /// file:line:col of the value.
    pub at: String,
}

pub(super) fn sited<T, U>(source: &SourceText, value: &toml::Spanned<T>, parsed: U) -> Sited<U> {
    Sited { value: parsed, at: source.location(value.span().start) }
}

// ---------------------------------------------------------------- services

/// `[services]`: the allow-list. Everything not on it (and not systemd's own
/// core) is disabled and masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicesSpec {
    pub enable: Vec<Sited<String>>,
    /// Terminals with a login prompt; no other getty runs.
    pub gettys: Vec<String>,
    /// rampart's systemd hardening drop-ins (stages/sandboxing.rs).
    pub sandbox: bool,
    /// The profile's own sandboxing directives, by service.
    pub sandboxes: BTreeMap<String, UnitSandbox>,
}

/// A systemd unit name of a kind the allow-list governs.
pub fn parse_unit_name(s: &str) -> Result<String, String> {
    let kinds = [".service", ".socket", ".timer", ".path"];
    let stem = kinds.iter().find_map(|k| s.strip_suffix(k));
    let ok = stem.is_some_and(|stem| {
        !stem.is_empty() && !stem.ends_with('@') && stem.chars().all(|c| c.is_ascii_alphanumeric() || ":_.@-\\".contains(c))
    });
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not a unit name (e.g. \"nginx.service\"; kinds: .service, .socket, .timer, .path; templates need an instance)"))
    }
}

pub fn parse_getty(s: &str) -> Result<String, String> {
    let numbered = |prefix: &str| s.strip_prefix(prefix).is_some_and(|n| !n.is_empty() && n.len() <= 2 && n.chars().all(|c| c.is_ascii_digit()));
    if numbered("ttyS") || numbered("hvc") || numbered("ttyAMA") || (numbered("tty") && s != "tty0") {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not a terminal (tty1..tty63, ttyS0.., hvc0..)"))
    }
}

impl ServicesSpec {
    /// The systemd unit of the getty on `tty`.
    pub fn getty_unit(tty: &str) -> String {
        if tty.starts_with("tty") && tty[3..].chars().all(|c| c.is_ascii_digit()) {
            format!("getty@{tty}.service")
        } else {
            format!("serial-getty@{tty}.service")
        }
    }

    /// Whether the allow-list starts `service`: it is listed, or its
    /// socket, timer or path unit (of the same name) is.
    pub fn enables_service(&self, service: &str) -> bool {
        let stem = service.strip_suffix(".service").unwrap_or(service);
        let activators = [".service", ".socket", ".timer", ".path"].map(|kind| format!("{stem}{kind}"));
        self.enable.iter().any(|unit| activators.contains(&unit.value))
    }
}

// ---------------------------------------------------------------- passwords

/// `[passwords]`: PAM pwquality, pwhistory, faillock and login.defs aging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordPolicy {
    pub min_length: u32,
    pub min_classes: u32,
    pub max_repeat: u32,
    pub max_sequence: u32,
    pub dictionary_check: bool,
    pub enforce_for_root: bool,
    pub remember: u32,
    pub lockout_attempts: u32,
    pub lockout_seconds: u32,
    pub max_days: u32,
    pub min_days: u32,
    pub warn_days: u32,
    pub inactive_days: u32,
    pub umask: u32,
    /// `passwords.audit`: John the Ripper on a timer; `None` when off.
    pub audit: Option<PasswordAudit>,
}

/// How the password audit runs: on a schedule, for at most `minutes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordAudit {
    pub schedule: Sited<String>,
    pub minutes: u32,
}

impl Default for PasswordAudit {
    fn default() -> Self {
        PasswordAudit { schedule: Sited { value: "weekly".into(), at: "rampart's default".into() }, minutes: 30 }
    }
}

impl Default for PasswordPolicy {
    /// CIS Debian 12 level 1 (5.3.3, 5.4.1) or stricter.
    fn default() -> Self {
        PasswordPolicy {
            min_length: 14,
            min_classes: 4,
            max_repeat: 3,
            max_sequence: 3,
            dictionary_check: true,
            enforce_for_root: true,
            remember: 24,
            lockout_attempts: 5,
            lockout_seconds: 900,
            max_days: 365,
            min_days: 1,
            warn_days: 7,
            inactive_days: 30,
            umask: 0o027,
            audit: Some(PasswordAudit::default()),
        }
    }
}

/// Characters classes as pwquality counts them: lower, upper, digit, other.
pub fn character_classes(password: &str) -> u32 {
    let has = |f: fn(&char) -> bool| password.chars().any(|c| f(&c)) as u32;
    has(char::is_ascii_lowercase) + has(char::is_ascii_uppercase) + has(char::is_ascii_digit) + has(|c| !c.is_ascii_alphanumeric())
}

/// The longest run of one repeated character, and of a monotonic sequence
/// ("abcd", "4321"), as pwquality's maxrepeat and maxsequence count them.
fn longest_runs(password: &str) -> (u32, u32) {
    let chars: Vec<char> = password.chars().collect();
    let (mut repeat, mut best_repeat) = (1u32, 1u32);
    let (mut sequence, mut best_sequence, mut direction) = (1u32, 1u32, 0i32);
    for pair in chars.windows(2) {
        let step = pair[1] as i32 - pair[0] as i32;
        repeat = if step == 0 { repeat + 1 } else { 1 };
        sequence = if step.abs() == 1 && step == direction { sequence + 1 } else if step.abs() == 1 { 2 } else { 1 };
        direction = step;
        best_repeat = best_repeat.max(repeat);
        best_sequence = best_sequence.max(sequence);
    }
    if chars.is_empty() {
        return (0, 0);
    }
    (best_repeat, best_sequence)
}

/// Common passwords, refused whatever the policy says (also tried against a
/// given hash at build time).
pub const COMMON_PASSWORDS: &[&str] = &[
    "123456", "password", "123456789", "12345678", "12345", "qwerty", "1234567", "111111", "1234567890", "123123",
    "abc123", "1234", "password1", "iloveyou", "1q2w3e4r", "000000", "qwerty123", "zaq12wsx", "dragon", "sunshine",
    "princess", "letmein", "654321", "monkey", "27653", "1qaz2wsx", "123321", "qwertyuiop", "superman", "asdfghjkl",
    "admin", "administrator", "root", "toor", "changeme", "welcome", "welcome1", "passw0rd", "p@ssw0rd", "P@ssw0rd",
    "Password1", "Password123", "Password123!", "P@ssw0rd123", "Passw0rd!", "Welcome1!", "Welcome123!", "Admin123!",
    "Qwerty123!", "Summer2024!", "Winter2024!", "Spring2024!", "Autumn2024!", "Summer2025!", "Winter2025!",
    "Changeme123!", "Letmein123!", "Debian123!", "debian", "raspberry", "ubuntu", "secret", "master", "football",
    "baseball", "shadow", "michael", "trustno1", "hunter2", "access", "login", "starwars", "whatever", "qazwsx",
    "Aa123456", "Aa123456!", "1q2w3e4r5t", "Qwerty1234!", "Password1!", "Password12!", "Pa$$w0rd", "Pa$$w0rd123",
];

/// Why `password` would not pass the policy (pwquality's rules, the common
/// list and the user name), or `None`. The image's cracklib dictionary check
/// is made at build time on top of this.
pub fn password_weakness(password: &str, user: &str, policy: &PasswordPolicy) -> Option<String> {
    let length = password.chars().count() as u32;
    if length < policy.min_length {
        return Some(format!("it is {length} characters long; the policy asks for at least {}", policy.min_length));
    }
    let classes = character_classes(password);
    if classes < policy.min_classes {
        return Some(format!(
            "it uses {classes} character classes; the policy asks for {} of lower case, upper case, digits and others",
            policy.min_classes
        ));
    }
    let (repeat, sequence) = longest_runs(password);
    if policy.max_repeat > 0 && repeat > policy.max_repeat {
        return Some(format!("it repeats one character {repeat} times in a row (at most {})", policy.max_repeat));
    }
    if policy.max_sequence > 0 && sequence > policy.max_sequence {
        return Some(format!("it holds a sequence of {sequence} characters (at most {})", policy.max_sequence));
    }
    let lower = password.to_ascii_lowercase();
    if COMMON_PASSWORDS.iter().any(|c| c.to_ascii_lowercase() == lower) {
        return Some("it is on the list of common passwords".into());
    }
    if user.len() >= 3 && lower.contains(&user.to_ascii_lowercase()) {
        return Some(format!("it contains the user name {user}"));
    }
    None
}

// ---------------------------------------------------------------- firewall

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One declared service port, open to the given source ranges only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallAllow {
    pub port: Port,
    pub protocol: Protocol,
    pub from: Vec<Cidr>,
    /// Only on these interfaces (by name); empty: on any.
    pub interfaces: Vec<String>,
    pub service: Option<String>,
    pub at: String,
}

/// `[firewall]`: nftables, default-deny inbound and forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallSpec {
    pub enable: bool,
    pub icmp_echo_per_second: u32,
    pub log_drops: bool,
    pub allow: Vec<FirewallAllow>,
    pub input_rules: Vec<Sited<String>>,
}

/// Any address, IPv4 and IPv6.
pub fn anywhere() -> Vec<Cidr> {
    vec![Cidr::parse("0.0.0.0/0").expect("valid"), Cidr::parse("::/0").expect("valid")]
}

// ---------------------------------------------------------------- ssh

/// sshd keywords the profile sets through their own fields (or that stay
/// fixed); `ssh.options` may not set them.
pub const SSH_MANAGED_KEYWORDS: &[&str] = &[
    "port", "allowusers", "permitrootlogin", "passwordauthentication", "kbdinteractiveauthentication",
    "challengeresponseauthentication", "permitemptypasswords", "pubkeyauthentication", "authenticationmethods",
    "allowtcpforwarding", "allowagentforwarding", "allowstreamlocalforwarding", "x11forwarding", "permittunnel",
    "gatewayports", "disableforwarding", "maxauthtries", "logingracetime", "banner", "hostkey", "authorizedkeysfile",
    "usepam", "hostbasedauthentication", "ignorerhosts", "permituserenvironment",
    // A Match block or an Include would swallow or reorder the lines after it.
    "match", "include",
];

/// Shown before login on the console (/etc/issue) and over SSH
/// (/etc/issue.net): what a legal notice says (CIS 1.7), and nothing about
/// the operating system.
pub const DEFAULT_BANNER: &str = "Authorised access only. This system is private: activity on it is logged, monitored and recorded,\nand the records may be used as evidence. Disconnect now if you are not authorised.";

/// A banner as the profile gives it: printable text, at most 2000
/// characters, and no backslash, which agetty would expand in /etc/issue
/// (`\s`, `\r`, `\v` name the operating system, its release and version).
pub fn parse_banner(s: &str) -> Result<String, String> {
    if s.len() > 2000 || s.chars().any(|c| c.is_control() && c != '\n') {
        return Err("the banner is printable text of at most 2000 characters".into());
    }
    if let Some(at) = s.find('\\') {
        let escape: String = s[at..].chars().take(2).collect();
        return Err(format!(
            "`{escape}`: the banner is also the console's /etc/issue, where agetty expands backslash escapes (\\s, \\r and \\v show the operating system and its version); write it without backslashes"
        ));
    }
    Ok(s.trim_end().to_string())
}

fn parse_ssh_option(key: &str, value: &str) -> Result<(), String> {
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(format!("{key:?} is not an sshd_config keyword"));
    }
    if ["match", "include"].contains(&key.to_ascii_lowercase().as_str()) {
        return Err(format!("{key} cannot be used in ssh.options (it would change what the lines after it mean)"));
    }
    if SSH_MANAGED_KEYWORDS.contains(&key.to_ascii_lowercase().as_str()) {
        return Err(format!("{key} is set by rampart's SSH control; use the [ssh] field for it, where there is one"));
    }
    if value.trim().is_empty() || value.contains('\n') || value.contains('#') {
        return Err(format!("the value of {key} must be one line, not empty, without '#'"));
    }
    Ok(())
}

// ---------------------------------------------------------------- layers

/// One file's settings of these sections, validated, not yet merged.
#[derive(Debug, Default)]
pub struct ControlsLayer {
    services_enable: Option<Vec<Sited<String>>>,
    gettys: Option<Vec<String>>,
    sandbox: Option<bool>,
    sandboxes: SandboxesLayer,
    passwords: PasswordLayer,
    firewall_enable: Option<bool>,
    icmp_echo_per_second: Option<u32>,
    log_drops: Option<bool>,
    firewall_allow: Vec<FirewallAllow>,
    input_rules: Vec<Sited<String>>,
    ssh_forwarding: Option<bool>,
    ssh_user_keys: Option<bool>,
    ssh_max_auth_tries: Option<u32>,
    ssh_login_grace_time: Option<u32>,
    ssh_banner: Option<String>,
    ssh_options: BTreeMap<String, Sited<String>>,
}

#[derive(Debug, Default)]
struct PasswordLayer {
    min_length: Option<u32>,
    min_classes: Option<u32>,
    max_repeat: Option<u32>,
    max_sequence: Option<u32>,
    dictionary_check: Option<bool>,
    enforce_for_root: Option<bool>,
    remember: Option<u32>,
    lockout_attempts: Option<u32>,
    lockout_seconds: Option<u32>,
    max_days: Option<u32>,
    min_days: Option<u32>,
    warn_days: Option<u32>,
    inactive_days: Option<u32>,
    audit: Option<bool>,
    audit_schedule: Option<Sited<String>>,
    audit_minutes: Option<u32>,
    umask: Option<u32>,
}

fn in_range(source: &SourceText, value: &Option<toml::Spanned<i64>>, field: &str, low: i64, high: i64) -> Result<Option<u32>, LocatedError> {
    match value {
        None => Ok(None),
        Some(v) => source
            .check(v, field, |n| if (low..=high).contains(n) { Ok(*n as u32) } else { Err(format!("{n} is out of range ({low} to {high})")) })
            .map(Some),
    }
}

fn parse_umask(s: &str) -> Result<u32, String> {
    let bad = || format!("{s:?} is not a umask (three or four octal digits, e.g. \"027\")");
    if !(3..=4).contains(&s.len()) || !s.chars().all(|c| ('0'..='7').contains(&c)) {
        return Err(bad());
    }
    let mask = u32::from_str_radix(s, 8).map_err(|_| bad())?;
    if mask > 0o777 {
        return Err(bad());
    }
    if mask & 0o022 != 0o022 {
        return Err(format!("{s:?} lets group or others write new files; use 022 or stricter (027 recommended)"));
    }
    Ok(mask)
}

pub fn validate(
    source: &SourceText,
    ssh: Option<&raw::RawSsh>,
    services: Option<raw::RawServices>,
    passwords: Option<raw::RawPasswords>,
    firewall: Option<raw::RawFirewall>,
) -> Result<ControlsLayer, LocatedError> {
    let mut layer = ControlsLayer::default();
    if let Some(services) = services {
        if let Some(units) = &services.enable {
            let mut parsed = Vec::new();
            for unit in units {
                let name = source.check(unit, "services.enable", |s| parse_unit_name(s))?;
                parsed.push(sited(source, unit, name));
            }
            layer.services_enable = Some(parsed);
        }
        if let Some(gettys) = &services.gettys {
            let mut parsed = Vec::new();
            for tty in gettys {
                parsed.push(source.check(tty, "services.gettys", |s| parse_getty(s))?);
            }
            layer.gettys = Some(parsed);
        }
        layer.sandbox = services.sandbox;
        layer.sandboxes = sandboxes::validate(source, &services.sandboxes)?;
    }
    if let Some(p) = passwords {
        let l = &mut layer.passwords;
        l.min_length = in_range(source, &p.min_length, "passwords.min-length", 8, 128)?;
        l.min_classes = in_range(source, &p.min_classes, "passwords.min-classes", 1, 4)?;
        l.max_repeat = in_range(source, &p.max_repeat, "passwords.max-repeat", 0, 16)?;
        l.max_sequence = in_range(source, &p.max_sequence, "passwords.max-sequence", 0, 16)?;
        l.dictionary_check = p.dictionary_check;
        l.enforce_for_root = p.enforce_for_root;
        l.remember = in_range(source, &p.remember, "passwords.remember", 0, 400)?;
        l.lockout_attempts = in_range(source, &p.lockout_attempts, "passwords.lockout-attempts", 1, 100)?;
        l.lockout_seconds = in_range(source, &p.lockout_seconds, "passwords.lockout-seconds", 0, 604_800)?;
        l.max_days = in_range(source, &p.max_days, "passwords.max-days", 1, 99_999)?;
        l.min_days = in_range(source, &p.min_days, "passwords.min-days", 0, 99_999)?;
        l.warn_days = in_range(source, &p.warn_days, "passwords.warn-days", 0, 99_999)?;
        l.inactive_days = in_range(source, &p.inactive_days, "passwords.inactive-days", 0, 99_999)?;
        l.audit = p.audit;
        if let Some(schedule) = &p.audit_schedule {
            l.audit_schedule = Some(sited(source, schedule, source.check(schedule, "passwords.audit-schedule", |s| super::monitoring::parse_schedule(s))?));
        }
        l.audit_minutes = in_range(source, &p.audit_minutes, "passwords.audit-minutes", 1, 1440)?;
        if let Some(umask) = &p.umask {
            l.umask = Some(source.check(umask, "passwords.umask", |s| parse_umask(s))?);
        }
    }
    if let Some(f) = firewall {
        layer.firewall_enable = f.enable;
        layer.icmp_echo_per_second = in_range(source, &f.icmp_echo_per_second, "firewall.icmp-echo-per-second", 0, 10_000)?;
        layer.log_drops = f.log_drops;
        for allow in &f.allow {
            let port = source.check(&allow.port, "firewall.allow.port", |p| Port::from_i64(*p))?;
            let protocol = match &allow.protocol {
                None => Protocol::Tcp,
                Some(p) => source.check(p, "firewall.allow.protocol", |s| match s.as_str() {
                    "tcp" => Ok(Protocol::Tcp),
                    "udp" => Ok(Protocol::Udp),
                    other => Err(format!("{other:?} is not a protocol (tcp or udp)")),
                })?,
            };
            let from = match &allow.from {
                None => anywhere(),
                Some(ranges) => {
                    let mut parsed = Vec::new();
                    for range in ranges {
                        parsed.push(source.check(range, "firewall.allow.from", |s| Cidr::parse(s))?);
                    }
                    if parsed.is_empty() {
                        return Err(source.error(&allow.port, "firewall.allow.from: an empty list opens the port to nobody; drop the entry instead"));
                    }
                    parsed
                }
            };
            let at = source.location(allow.port.span().start);
            layer.firewall_allow.push(FirewallAllow { port, protocol, from, interfaces: Vec::new(), service: allow.service.clone(), at });
        }
        for rule in &f.input_rules {
            let text = source.check(rule, "firewall.input-rules", |s: &String| {
                if s.trim().is_empty() || s.contains('\n') || s.contains(';') || s.matches('{').count() != s.matches('}').count() {
                    Err("a rule is one nft statement on one line (no ';', braces balanced)".to_string())
                } else {
                    Ok(s.trim().to_string())
                }
            })?;
            layer.input_rules.push(sited(source, rule, text));
        }
    }
    if let Some(ssh) = ssh {
        layer.ssh_forwarding = ssh.forwarding;
        layer.ssh_user_keys = ssh.user_keys;
        layer.ssh_max_auth_tries = in_range(source, &ssh.max_auth_tries, "ssh.max-auth-tries", 1, 10)?;
        layer.ssh_login_grace_time = in_range(source, &ssh.login_grace_time, "ssh.login-grace-time", 5, 600)?;
        if let Some(banner) = &ssh.banner {
            layer.ssh_banner = Some(source.check(banner, "ssh.banner", |s: &String| parse_banner(s))?);
        }
        for (key, value) in &ssh.options {
            source.check(value, &format!("ssh.options.{key}"), |v| parse_ssh_option(key, v))?;
            layer.ssh_options.insert(key.clone(), sited(source, value, value.get_ref().trim().to_string()));
        }
    }
    Ok(layer)
}

/// The child's values win field by field; allowed ports, extra rules and
/// sshd options add up (options by keyword), sandboxes by unit and directive.
pub fn merge(base: &mut ControlsLayer, child: ControlsLayer) {
    macro_rules! take {
        ($($field:ident).+) => {
            if child.$($field).+.is_some() {
                base.$($field).+ = child.$($field).+;
            }
        };
    }
    take!(services_enable);
    take!(gettys);
    take!(sandbox);
    take!(passwords.min_length);
    take!(passwords.min_classes);
    take!(passwords.max_repeat);
    take!(passwords.max_sequence);
    take!(passwords.dictionary_check);
    take!(passwords.enforce_for_root);
    take!(passwords.remember);
    take!(passwords.lockout_attempts);
    take!(passwords.lockout_seconds);
    take!(passwords.max_days);
    take!(passwords.min_days);
    take!(passwords.warn_days);
    take!(passwords.inactive_days);
    take!(passwords.umask);
    take!(passwords.audit);
    take!(passwords.audit_schedule);
    take!(passwords.audit_minutes);
    take!(firewall_enable);
    take!(icmp_echo_per_second);
    take!(log_drops);
    take!(ssh_forwarding);
    take!(ssh_user_keys);
    take!(ssh_max_auth_tries);
    take!(ssh_login_grace_time);
    take!(ssh_banner);
    for allow in child.firewall_allow {
        base.firewall_allow.retain(|a| (a.port, a.protocol) != (allow.port, allow.protocol));
        base.firewall_allow.push(allow);
    }
    base.input_rules.extend(child.input_rules);
    base.ssh_options.extend(child.ssh_options);
    sandboxes::merge(&mut base.sandboxes, child.sandboxes);
}

/// The merged sections with their defaults.
pub struct Controls {
    pub services: ServicesSpec,
    pub passwords: PasswordPolicy,
    pub firewall: FirewallSpec,
    pub ssh_forwarding: bool,
    pub ssh_user_keys: bool,
    pub ssh_max_auth_tries: u32,
    pub ssh_login_grace_time: u32,
    pub ssh_banner: String,
    pub ssh_options: BTreeMap<String, Sited<String>>,
}

pub fn finish(layer: ControlsLayer) -> Result<Controls, String> {
    let d = PasswordPolicy::default();
    let p = layer.passwords;
    let passwords = PasswordPolicy {
        min_length: p.min_length.unwrap_or(d.min_length),
        min_classes: p.min_classes.unwrap_or(d.min_classes),
        max_repeat: p.max_repeat.unwrap_or(d.max_repeat),
        max_sequence: p.max_sequence.unwrap_or(d.max_sequence),
        dictionary_check: p.dictionary_check.unwrap_or(d.dictionary_check),
        enforce_for_root: p.enforce_for_root.unwrap_or(d.enforce_for_root),
        remember: p.remember.unwrap_or(d.remember),
        lockout_attempts: p.lockout_attempts.unwrap_or(d.lockout_attempts),
        lockout_seconds: p.lockout_seconds.unwrap_or(d.lockout_seconds),
        max_days: p.max_days.unwrap_or(d.max_days),
        min_days: p.min_days.unwrap_or(d.min_days),
        warn_days: p.warn_days.unwrap_or(d.warn_days),
        inactive_days: p.inactive_days.unwrap_or(d.inactive_days),
        umask: p.umask.unwrap_or(d.umask),
        audit: if p.audit.unwrap_or(true) {
            let default = PasswordAudit::default();
            Some(PasswordAudit { schedule: p.audit_schedule.unwrap_or(default.schedule), minutes: p.audit_minutes.unwrap_or(default.minutes) })
        } else {
            None
        },
    };
    if passwords.min_days >= passwords.max_days {
        return Err(format!("passwords: min-days ({}) must be below max-days ({})", passwords.min_days, passwords.max_days));
    }
    if passwords.warn_days >= passwords.max_days {
        return Err(format!("passwords: warn-days ({}) must be below max-days ({})", passwords.warn_days, passwords.max_days));
    }
    Ok(Controls {
        services: ServicesSpec {
            enable: layer.services_enable.unwrap_or_default(),
            gettys: layer.gettys.unwrap_or_else(|| vec!["ttyS0".to_string()]),
            sandbox: layer.sandbox.unwrap_or(true),
            sandboxes: layer.sandboxes,
        },
        passwords,
        firewall: FirewallSpec {
            enable: layer.firewall_enable.unwrap_or(true),
            icmp_echo_per_second: layer.icmp_echo_per_second.unwrap_or(5),
            log_drops: layer.log_drops.unwrap_or(true),
            allow: layer.firewall_allow,
            input_rules: layer.input_rules,
        },
        ssh_forwarding: layer.ssh_forwarding.unwrap_or(false),
        ssh_user_keys: layer.ssh_user_keys.unwrap_or(false),
        ssh_max_auth_tries: layer.ssh_max_auth_tries.unwrap_or(3),
        ssh_login_grace_time: layer.ssh_login_grace_time.unwrap_or(30),
        ssh_banner: layer.ssh_banner.unwrap_or_else(|| DEFAULT_BANNER.to_string()),
        ssh_options: layer.ssh_options,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_passwords_are_named_with_the_reason() {
        let policy = PasswordPolicy::default();
        let check = |password: &str, expected: Option<&str>| {
            assert_eq!(password_weakness(password, "admin", &policy).as_deref(), expected, "{password}");
        };
        check("short1A!", Some("it is 8 characters long; the policy asks for at least 14"));
        check("alllowercaseletters", Some("it uses 1 character classes; the policy asks for 4 of lower case, upper case, digits and others"));
        check("Xq-aaaa-zR!vb#7", Some("it repeats one character 4 times in a row (at most 3)"));
        check("Xq-1234-zR!vb#", Some("it holds a sequence of 4 characters (at most 3)"));
        check("Admin-Tr0ub4dor!", Some("it contains the user name admin"));
        check("Correct-H0rse-Battery!", None);
    }

    #[test]
    fn runs_are_counted_like_pwquality() {
        assert_eq!(longest_runs("aaab"), (3, 2));
        assert_eq!(longest_runs("x9876y"), (1, 4));
        assert_eq!(longest_runs("acegi"), (1, 1));
        assert_eq!(longest_runs(""), (0, 0));
    }

    #[test]
    fn unit_names_and_terminals_are_checked() {
        assert!(parse_unit_name("nginx.service").is_ok());
        assert!(parse_unit_name("getty@tty1.service").is_ok());
        assert!(parse_unit_name("getty@.service").is_err());
        assert!(parse_unit_name("nginx").is_err());
        assert!(parse_unit_name("multi-user.target").is_err());
        assert!(parse_getty("ttyS0").is_ok());
        assert!(parse_getty("tty1").is_ok());
        assert!(parse_getty("tty0").is_err());
        assert!(parse_getty("console").is_err());
        assert_eq!(ServicesSpec::getty_unit("tty1"), "getty@tty1.service");
        assert_eq!(ServicesSpec::getty_unit("ttyS0"), "serial-getty@ttyS0.service");
    }

    #[test]
    fn umask_must_keep_others_from_writing() {
        assert_eq!(parse_umask("027"), Ok(0o027));
        assert!(parse_umask("002").unwrap_err().contains("lets group or others write"));
        assert!(parse_umask("27").is_err());
    }

    #[test]
    fn sshd_options_may_not_override_the_fixed_controls() {
        assert!(parse_ssh_option("ClientAliveInterval", "300").is_ok());
        assert!(parse_ssh_option("PermitRootLogin", "yes").unwrap_err().contains("set by rampart's SSH control"));
        assert!(parse_ssh_option("Ciphers", "").is_err());
    }
}
