//! The hardening part of `[kernel]`: sysctls (rampart's KSPP and CIS
//! defaults, and the profile's own, checked against the keys Debian 12's
//! kernel knows and the values it takes), the command-line options, the
//! module blacklist, AppArmor and the mount options of the temporary
//! directories. Validated where written, merged key by key. Pure: no IO (the
//! list of keys is compiled in).

use std::collections::BTreeMap;

use super::controls::Sited;
use super::raw::{RawKernel, RawSysctlEntry, RawSysctlValue};
use crate::located::{LocatedError, SourceText};

/// Every sysctl of Debian 12's cloud kernel (linux-image-cloud-amd64, 6.1),
/// read in a booted baseline image (`sysctl -a`, `/proc/sys` modes), with
/// per-interface keys written once with `*` for the interface.
const SYSCTL_KEYS: &str = include_str!("../../data/sysctl-keys-bookworm.txt");

/// Which kernel the list of keys is from, for error messages.
pub const SYSCTL_KERNEL: &str = "Debian 12's kernel (6.1)";

/// rampart's sysctls: KSPP's recommended settings and CIS Debian 12 1.5,
/// with why. Network sysctls are the firewall control's
/// (`/etc/sysctl.d/60-rampart-network.conf`).
pub const DEFAULT_SYSCTLS: &[(&str, &str, &str)] = &[
    ("kernel.kptr_restrict", "2", "kernel addresses hidden from everyone (KSPP)"),
    ("kernel.dmesg_restrict", "1", "kernel log for root only (KSPP)"),
    ("kernel.unprivileged_bpf_disabled", "1", "no BPF for unprivileged users, until reboot (KSPP)"),
    ("net.core.bpf_jit_harden", "2", "BPF JIT constant blinding for everyone (KSPP)"),
    ("kernel.yama.ptrace_scope", "2", "ptrace attach for root only (KSPP, CIS 1.5.2)"),
    ("kernel.kexec_load_disabled", "1", "no kexec of another kernel, until reboot (KSPP)"),
    ("kernel.perf_event_paranoid", "3", "no perf events for unprivileged users (KSPP)"),
    ("kernel.randomize_va_space", "2", "full address-space layout randomisation (KSPP, CIS 1.5.3)"),
    ("kernel.sysrq", "0", "no magic SysRq keys, on the keyboard or the serial line (seed step 2)"),
    ("fs.protected_symlinks", "1", "no following others' symlinks in sticky directories (KSPP)"),
    ("fs.protected_hardlinks", "1", "no hard links to files one cannot write (KSPP)"),
    ("fs.protected_fifos", "2", "no opening others' FIFOs in sticky directories (KSPP)"),
    ("fs.protected_regular", "2", "no opening others' files in sticky directories with O_CREAT (KSPP)"),
    ("fs.suid_dumpable", "0", "no core dumps of set-id programs (KSPP, CIS 1.5.4)"),
    ("kernel.core_uses_pid", "1", "a core file, where a profile allows them, never overwrites another's"),
    ("dev.tty.ldisc_autoload", "0", "no loading line disciplines on demand (KSPP)"),
    ("vm.unprivileged_userfaultfd", "0", "userfaultfd for root only (KSPP)"),
    ("vm.mmap_min_addr", "65536", "no mapping of low addresses (KSPP)"),
];

/// rampart's kernel command-line options, each one that Debian's 6.1 cloud
/// kernel knows and that boots under QEMU, with why (KSPP). Left out for
/// boot time: `init_on_free=1` (zeroing every freed page) and `pti=on`
/// (page-table isolation on CPUs that do not need it; the kernel turns it on
/// by itself where the CPU is vulnerable); a profile can add them to
/// `kernel.cmdline`.
pub const DEFAULT_CMDLINE: &[(&str, &str)] = &[
    ("init_on_alloc=1", "memory zeroed when allocated"),
    ("slab_nomerge", "no merging of slab caches (heap overflows stay in their cache)"),
    ("page_alloc.shuffle=1", "page allocator free lists randomised"),
    ("randomize_kstack_offset=on", "kernel stack offset randomised on each system call"),
    ("vsyscall=none", "no legacy vsyscall page at a fixed address"),
    ("debugfs=off", "no debugfs"),
    ("lockdown=integrity", "kernel lockdown: no unsigned modules, no writing kernel memory from user space"),
];

/// Modules that may never load: file systems a server does not mount and
/// USB storage (CIS 1.1.1), network protocols it does not speak (CIS 3.2),
/// FireWire, whose controllers can read and write memory directly (DMA).
pub const DEFAULT_MODULE_BLACKLIST: &[&str] = &[
    "cramfs", "freevxfs", "hfs", "hfsplus", "jffs2", "squashfs", "udf", "usb-storage", "dccp", "sctp", "rds", "tipc", "firewire-core", "firewire-ohci",
    "firewire-sbp2",
];

/// Values the kernel takes for keys whose meaning is a small range.
const RANGES: &[(&str, i64, i64)] = &[
    ("kernel.kptr_restrict", 0, 2),
    ("kernel.dmesg_restrict", 0, 1),
    ("kernel.unprivileged_bpf_disabled", 0, 2),
    ("net.core.bpf_jit_harden", 0, 2),
    ("net.core.bpf_jit_enable", 0, 2),
    ("net.core.bpf_jit_kallsyms", 0, 1),
    ("kernel.yama.ptrace_scope", 0, 3),
    ("kernel.kexec_load_disabled", 0, 1),
    ("kernel.modules_disabled", 0, 1),
    ("kernel.perf_event_paranoid", -1, 3),
    ("kernel.randomize_va_space", 0, 2),
    ("kernel.sysrq", 0, 511),
    ("kernel.panic_on_oops", 0, 1),
    ("kernel.unprivileged_userns_clone", 0, 1),
    ("fs.protected_symlinks", 0, 1),
    ("fs.protected_hardlinks", 0, 1),
    ("fs.protected_fifos", 0, 2),
    ("fs.protected_regular", 0, 2),
    ("fs.suid_dumpable", 0, 2),
    ("dev.tty.ldisc_autoload", 0, 1),
    ("vm.unprivileged_userfaultfd", 0, 1),
    ("vm.mmap_min_addr", 0, 4_294_967_295),
    ("net.ipv4.ip_forward", 0, 1),
    ("net.ipv4.tcp_syncookies", 0, 2),
    ("net.ipv4.tcp_rfc1337", 0, 1),
    ("net.ipv4.icmp_echo_ignore_broadcasts", 0, 1),
    ("net.ipv4.icmp_echo_ignore_all", 0, 1),
    ("net.ipv4.icmp_ignore_bogus_error_responses", 0, 1),
    ("net.ipv4.conf.*.rp_filter", 0, 2),
    ("net.ipv4.conf.*.accept_redirects", 0, 1),
    ("net.ipv4.conf.*.secure_redirects", 0, 1),
    ("net.ipv4.conf.*.send_redirects", 0, 1),
    ("net.ipv4.conf.*.accept_source_route", 0, 1),
    ("net.ipv4.conf.*.log_martians", 0, 1),
    ("net.ipv4.conf.*.forwarding", 0, 1),
    ("net.ipv6.conf.*.accept_redirects", 0, 1),
    ("net.ipv6.conf.*.forwarding", 0, 1),
    ("net.ipv6.conf.*.disable_ipv6", 0, 1),
];

/// How the kernel reads a key's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysctlKind {
    /// One integer or several, separated by white space.
    Integers,
    /// Text (a congestion-control name, a core pattern, ...).
    Text,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KnownKey {
    kind: SysctlKind,
    writable: bool,
}

fn known_keys() -> &'static BTreeMap<&'static str, KnownKey> {
    static KEYS: std::sync::OnceLock<BTreeMap<&'static str, KnownKey>> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        SYSCTL_KEYS
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let key = words.next()?;
                let writable = words.next()? == "rw";
                let kind = if words.next()? == "text" { SysctlKind::Text } else { SysctlKind::Integers };
                Some((key, KnownKey { kind, writable }))
            })
            .collect()
    })
}

/// The per-interface sysctl directories: `<prefix><interface>.<setting>`.
const PER_INTERFACE: &[&str] = &["net.ipv4.conf.", "net.ipv6.conf.", "net.ipv4.neigh.", "net.ipv6.neigh.", "net.mpls.conf."];

/// A key as the list has it: the interface of a per-interface key becomes
/// `*` (so `all`, `default` and any interface name are accepted).
pub fn normalise_key(key: &str) -> Result<String, String> {
    for prefix in PER_INTERFACE {
        if let Some(rest) = key.strip_prefix(prefix) {
            let Some((interface, setting)) = rest.split_once('.') else { continue };
            let interface_ok = !interface.is_empty()
                && interface.len() <= 15
                && interface.chars().all(|c| c.is_ascii_alphanumeric() || "_-@:".contains(c));
            if !interface_ok {
                return Err(format!("{interface:?} in {key:?} is not an interface name (all, default, or a name such as eth0)"));
            }
            return Ok(format!("{prefix}*.{setting}"));
        }
    }
    Ok(key.to_string())
}

/// The number of single-character edits between two keys, to suggest one.
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

fn closest_key(normalised: &str) -> Option<&'static str> {
    known_keys()
        .keys()
        .map(|k| (edit_distance(normalised, k), *k))
        .filter(|(distance, _)| *distance <= 3)
        .min()
        .map(|(_, k)| k)
}

/// Checks one `[kernel.sysctl]` entry and returns the value as it goes into
/// the sysctl.d file. Errors say what is allowed.
pub fn parse_sysctl(key: &str, value: &RawSysctlValue) -> Result<String, String> {
    let normalised = normalise_key(key)?;
    let Some(known) = known_keys().get(normalised.as_str()) else {
        let hint = closest_key(&normalised).map(|k| format!(" (did you mean {k}?)")).unwrap_or_default();
        return Err(format!("unknown key {key:?}: {SYSCTL_KERNEL} has no such sysctl{hint}"));
    };
    if !known.writable {
        return Err(format!("{key} is read-only; the kernel takes no value for it"));
    }
    let text = match value {
        RawSysctlValue::Integer(n) => n.to_string(),
        RawSysctlValue::Text(s) => s.trim().to_string(),
        RawSysctlValue::Other(what) => return Err(format!("{key}: give an integer or a string, not {what}")),
        RawSysctlValue::Table(_) => return Err(format!("{key}: give an integer or a string, not a table")),
    };
    match known.kind {
        SysctlKind::Integers => {
            let numbers: Vec<&str> = text.split_whitespace().collect();
            if numbers.is_empty() || numbers.iter().any(|n| n.parse::<i64>().is_err()) {
                return Err(format!("{key} takes integers (one, or several separated by spaces), not {text:?}"));
            }
            if let Some((_, low, high)) = RANGES.iter().find(|(k, _, _)| *k == normalised) {
                let in_range = numbers.len() == 1 && numbers[0].parse::<i64>().is_ok_and(|n| (*low..=*high).contains(&n));
                if !in_range {
                    return Err(format!("{key} = {text} is out of range: the kernel takes one integer from {low} to {high}"));
                }
            }
            Ok(numbers.join(" "))
        }
        SysctlKind::Text => {
            if text.is_empty() || text.chars().any(|c| c.is_control()) {
                return Err(format!("{key} takes one line of text, not empty"));
            }
            Ok(text)
        }
    }
}

/// Module names as modprobe writes them (`-` and `_` are the same to it).
pub fn parse_module_name(s: &str) -> Result<String, String> {
    if !s.is_empty() && s.len() <= 55 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not a kernel module name (letters, digits, '_' and '-')"))
    }
}

/// Where a sysctl's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SysctlOrigin {
    /// rampart's default, with why.
    Default(&'static str),
    /// The profile, at file:line:col.
    Profile(String),
}

/// The validated `[kernel]` hardening settings, merged with their defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelHardening {
    /// rampart's sysctls, command-line options, module blacklist, ctrl-alt-del off.
    pub defaults: bool,
    /// The profile's sysctls, by key; they win over rampart's and the firewall's.
    pub sysctl: BTreeMap<String, Sited<String>>,
    /// The profile's modules, on top of rampart's list.
    pub module_blacklist: Vec<String>,
    pub apparmor: bool,
    pub secure_mounts: bool,
    /// Programs may leave core dumps (off: no core files, CIS 1.5.4).
    pub core_dumps: bool,
}

impl KernelHardening {
    /// rampart's sysctls the profile does not override, then the profile's.
    pub fn sysctls(&self) -> Vec<(String, String, SysctlOrigin)> {
        let mut all = Vec::new();
        if self.defaults {
            for (key, value, why) in DEFAULT_SYSCTLS {
                if !self.sysctl.contains_key(*key) {
                    all.push((key.to_string(), value.to_string(), SysctlOrigin::Default(why)));
                }
            }
        }
        for (key, value) in &self.sysctl {
            all.push((key.clone(), value.value.clone(), SysctlOrigin::Profile(value.at.clone())));
        }
        all
    }

    pub fn cmdline(&self) -> Vec<&'static str> {
        if self.defaults {
            DEFAULT_CMDLINE.iter().map(|(option, _)| *option).collect()
        } else {
            Vec::new()
        }
    }

    pub fn blacklisted_modules(&self) -> Vec<String> {
        let mut modules: Vec<String> = if self.defaults { DEFAULT_MODULE_BLACKLIST.iter().map(|m| m.to_string()).collect() } else { Vec::new() };
        for module in &self.module_blacklist {
            if !modules.contains(module) {
                modules.push(module.clone());
            }
        }
        modules
    }
}

/// One file's `[kernel]` hardening settings, validated, not yet merged.
#[derive(Debug, Default)]
pub struct KernelLayer {
    defaults: Option<bool>,
    sysctl: BTreeMap<String, Sited<String>>,
    module_blacklist: Vec<String>,
    apparmor: Option<bool>,
    secure_mounts: Option<bool>,
    core_dumps: Option<bool>,
}

/// Flattens `[kernel.sysctl]`, where a bare dotted key is a nested table.
fn flatten<'a>(prefix: &str, table: &'a BTreeMap<String, RawSysctlEntry>, out: &mut Vec<(String, &'a RawSysctlEntry)>) {
    for (key, entry) in table {
        let full = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match &entry.value {
            RawSysctlValue::Table(inner) => flatten(&full, inner, out),
            _ => out.push((full, entry)),
        }
    }
}

pub fn validate(source: &SourceText, kernel: &RawKernel) -> Result<KernelLayer, LocatedError> {
    let mut layer = KernelLayer { defaults: kernel.hardening, apparmor: kernel.apparmor, secure_mounts: kernel.secure_mounts, core_dumps: kernel.core_dumps, ..Default::default() };
    let mut entries = Vec::new();
    flatten("", &kernel.sysctl, &mut entries);
    for (key, entry) in entries {
        // Values always carry a span; the file alone is the fallback.
        let at = match &entry.span {
            Some(span) => source.location(span.start),
            None => source.file.display().to_string(),
        };
        let text = parse_sysctl(&key, &entry.value).map_err(|e| LocatedError { location: at.clone(), message: format!("kernel.sysctl: {e}") })?;
        layer.sysctl.insert(key, Sited { value: text, at });
    }
    for module in &kernel.module_blacklist {
        let name = source.check(module, "kernel.module-blacklist", |s| parse_module_name(s))?;
        if !layer.module_blacklist.contains(&name) {
            layer.module_blacklist.push(name);
        }
    }
    Ok(layer)
}

/// The child's values win; sysctls merge by key, blacklisted modules add up.
pub fn merge(base: &mut KernelLayer, child: KernelLayer) {
    super::take(&mut base.defaults, child.defaults);
    super::take(&mut base.apparmor, child.apparmor);
    super::take(&mut base.secure_mounts, child.secure_mounts);
    super::take(&mut base.core_dumps, child.core_dumps);
    base.sysctl.extend(child.sysctl);
    for module in child.module_blacklist {
        if !base.module_blacklist.contains(&module) {
            base.module_blacklist.push(module);
        }
    }
}

pub fn finish(layer: KernelLayer) -> KernelHardening {
    KernelHardening {
        defaults: layer.defaults.unwrap_or(true),
        sysctl: layer.sysctl,
        module_blacklist: layer.module_blacklist,
        apparmor: layer.apparmor.unwrap_or(true),
        secure_mounts: layer.secure_mounts.unwrap_or(true),
        core_dumps: layer.core_dumps.unwrap_or(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(key: &str, value: RawSysctlValue, expected: Result<&str, &str>) {
        assert_eq!(parse_sysctl(key, &value).as_deref(), expected.map_err(|e| e.to_string()).as_deref(), "{key}");
    }

    #[test]
    fn sysctl_values_are_checked_against_what_the_kernel_takes() {
        use RawSysctlValue::*;
        check("kernel.kptr_restrict", Integer(1), Ok("1"));
        check("kernel.kptr_restrict", Integer(3), Err("kernel.kptr_restrict = 3 is out of range: the kernel takes one integer from 0 to 2"));
        check("net.ipv4.conf.eth0.rp_filter", Integer(2), Ok("2"));
        check("net.ipv4.conf.all.rp_filter", Text("1".into()), Ok("1"));
        check("net.ipv4.tcp_rmem", Text("4096  131072 6291456".into()), Ok("4096 131072 6291456"));
        check("net.ipv4.tcp_rmem", Text("lots".into()), Err("net.ipv4.tcp_rmem takes integers (one, or several separated by spaces), not \"lots\""));
        check("net.ipv4.tcp_congestion_control", Text("cubic".into()), Ok("cubic"));
        check("kernel.sysrq", Other("a boolean"), Err("kernel.sysrq: give an integer or a string, not a boolean"));
        check("kernel.osrelease", Text("6.1".into()), Err("kernel.osrelease is read-only; the kernel takes no value for it"));
        check("net.ipv4.conf.eth/0.rp_filter", Integer(1), Err("\"eth/0\" in \"net.ipv4.conf.eth/0.rp_filter\" is not an interface name (all, default, or a name such as eth0)"));
        check(
            "kernel.kptr_restirct",
            Integer(2),
            Err("unknown key \"kernel.kptr_restirct\": Debian 12's kernel (6.1) has no such sysctl (did you mean kernel.kptr_restrict?)"),
        );
        check("kernel.no_such_thing_at_all", Integer(2), Err("unknown key \"kernel.no_such_thing_at_all\": Debian 12's kernel (6.1) has no such sysctl"));
    }

    #[test]
    fn every_default_and_ranged_key_is_one_the_kernel_has() {
        for (key, value, _) in DEFAULT_SYSCTLS {
            assert_eq!(parse_sysctl(key, &RawSysctlValue::Text(value.to_string())).as_deref(), Ok(*value), "{key}");
        }
        for (key, _, _) in RANGES {
            assert!(known_keys().contains_key(key), "{key} is not in the list of keys");
        }
    }

    #[test]
    fn profile_sysctls_override_defaults_by_key() {
        let mut sysctl = BTreeMap::new();
        sysctl.insert("kernel.sysrq".to_string(), Sited { value: "176".to_string(), at: "p.toml:9:1".to_string() });
        let hardening = KernelHardening { defaults: true, sysctl, module_blacklist: vec!["thunderbolt".into()], apparmor: true, secure_mounts: true, core_dumps: false };
        let all = hardening.sysctls();
        assert_eq!(all.iter().filter(|(k, _, _)| k == "kernel.sysrq").count(), 1);
        assert_eq!(all.last().unwrap(), &("kernel.sysrq".to_string(), "176".to_string(), SysctlOrigin::Profile("p.toml:9:1".into())));
        assert_eq!(hardening.blacklisted_modules().last().map(String::as_str), Some("thunderbolt"));
    }
}
