//! Audit control (CIS Debian 12 section 6.3): the kernel audits from boot
//! (audit=1 with a backlog), auditd keeps its log with CIS actions on full
//! disks, the CIS 6.3.3 rules and one rule per set-uid/set-gid program of the
//! image are laid in rules.d with the profile's own, locked with `-e 2`, and
//! every record also goes to syslog (and so to the remote log host). System
//! call names are checked against the image's own `ausyscall` tables. Rules
//! are never loaded here: auditctl and augenrules --load would act on the
//! build host's kernel, so augenrules' merge is reproduced instead.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::build::context::BuildContext;
use crate::profile::auditd::{parse_rule, rule_key, syscall_table, syscalls_named, watched_paths, SyscallTable, WatchedPath};

const RULES_DIR: &str = "etc/audit/rules.d";
const DEBIAN_DEFAULT_RULES: &str = "etc/audit/rules.d/audit.rules";
const BASE_RULES: &str = "etc/audit/rules.d/10-rampart-base.rules";
const CIS_RULES: &str = "etc/audit/rules.d/50-rampart-cis.rules";
/// Before the CIS rules: an event takes the key of the first rule it matches,
/// and a set-uid program run by a user also matches CIS's "actions as another
/// user" (euid != uid); the program's own rule says more.
const PRIVILEGED_RULES: &str = "etc/audit/rules.d/40-rampart-privileged.rules";
/// journald's own reading of the kernel's audit records: with auditd running
/// it would put every record into the journal a second time (beside the
/// syslog plugin's copy), and the burst at boot crowds out other messages on
/// their way to rsyslog.
const JOURNALD_AUDIT_SOCKET: &str = "systemd-journald-audit.socket";
const PROFILE_RULES: &str = "etc/audit/rules.d/60-rampart-profile.rules";
const FINALIZE_RULES: &str = "etc/audit/rules.d/99-rampart-finalize.rules";
/// What augenrules makes of rules.d, and what auditd.service loads at boot.
const MERGED_RULES: &str = "etc/audit/audit.rules";
const AUDITD_CONF: &str = "etc/audit/auditd.conf";
/// In bookworm the syslog plugin comes with auditd itself (audispd-plugins
/// holds only the remote ones).
const SYSLOG_PLUGIN: &str = "etc/audit/plugins.d/syslog.conf";

/// Where sudo logs (CIS 6.3.3.3 reads it from sudoers' `Defaults logfile`);
/// the passwords stage writes that Defaults line.
pub const SUDO_LOG: &str = "/var/log/sudo.log";

/// Debian's UID_MIN (login.defs): the first account of a person.
const UID_MIN: u32 = 1000;

/// The facility and level the audit records reach syslog with.
pub const SYSLOG_ARGS: &str = "LOG_INFO LOG_LOCAL6";

/// One CIS recommendation and its rules; `{auid}` is the interactive-user filter.
struct CisRules {
    id: &'static str,
    title: &'static str,
    rules: &'static [&'static str],
}

const AUID: &str = "-F auid>=1000 -F auid!=unset";

/// CIS Debian Linux 12 Benchmark v1.1.0, 6.3.3.1 to 6.3.3.19, x86_64.
const CIS: &[CisRules] = &[
    CisRules { id: "6.3.3.1", title: "changes to system administration scope (sudoers)", rules: &["-w /etc/sudoers -p wa -k scope", "-w /etc/sudoers.d -p wa -k scope"] },
    CisRules {
        id: "6.3.3.2",
        title: "actions as another user",
        rules: &[
            "-a always,exit -F arch=b64 -C euid!=uid -F auid!=unset -S execve -k user_emulation",
            "-a always,exit -F arch=b32 -C euid!=uid -F auid!=unset -S execve -k user_emulation",
        ],
    },
    CisRules { id: "6.3.3.3", title: "changes to the sudo log file", rules: &["-w /var/log/sudo.log -p wa -k sudo_log_file"] },
    CisRules {
        id: "6.3.3.4",
        title: "changes to date and time",
        rules: &[
            "-a always,exit -F arch=b64 -S adjtimex,settimeofday -k time-change",
            "-a always,exit -F arch=b32 -S adjtimex,settimeofday -k time-change",
            "-a always,exit -F arch=b64 -S clock_settime -F a0=0x0 -k time-change",
            "-a always,exit -F arch=b32 -S clock_settime -F a0=0x0 -k time-change",
            "-w /etc/localtime -p wa -k time-change",
        ],
    },
    CisRules {
        id: "6.3.3.5",
        title: "changes to the network environment",
        rules: &[
            "-a always,exit -F arch=b64 -S sethostname,setdomainname -k system-locale",
            "-a always,exit -F arch=b32 -S sethostname,setdomainname -k system-locale",
            "-w /etc/issue -p wa -k system-locale",
            "-w /etc/issue.net -p wa -k system-locale",
            "-w /etc/hosts -p wa -k system-locale",
            "-w /etc/hostname -p wa -k system-locale",
            "-w /etc/networks -p wa -k system-locale",
            "-w /etc/network/ -p wa -k system-locale",
            // rampart's images use systemd-networkd, not netplan.
            "-w /etc/systemd/network/ -p wa -k system-locale",
        ],
    },
    // 6.3.3.6, privileged commands: one rule per program, in PRIVILEGED_RULES.
    CisRules {
        id: "6.3.3.7",
        title: "unsuccessful file access attempts",
        rules: &[
            "-a always,exit -F arch=b64 -S creat,open,openat,truncate,ftruncate -F exit=-EACCES -F auid>=1000 -F auid!=unset -k access",
            "-a always,exit -F arch=b64 -S creat,open,openat,truncate,ftruncate -F exit=-EPERM -F auid>=1000 -F auid!=unset -k access",
            "-a always,exit -F arch=b32 -S creat,open,openat,truncate,ftruncate -F exit=-EACCES -F auid>=1000 -F auid!=unset -k access",
            "-a always,exit -F arch=b32 -S creat,open,openat,truncate,ftruncate -F exit=-EPERM -F auid>=1000 -F auid!=unset -k access",
        ],
    },
    CisRules {
        id: "6.3.3.8",
        title: "changes to users and groups",
        rules: &[
            "-w /etc/group -p wa -k identity",
            "-w /etc/passwd -p wa -k identity",
            "-w /etc/gshadow -p wa -k identity",
            "-w /etc/shadow -p wa -k identity",
            "-w /etc/security/opasswd -p wa -k identity",
            "-w /etc/nsswitch.conf -p wa -k identity",
            "-w /etc/pam.conf -p wa -k identity",
            "-w /etc/pam.d -p wa -k identity",
        ],
    },
    CisRules {
        id: "6.3.3.9",
        title: "discretionary access control permission changes",
        rules: &[
            "-a always,exit -F arch=b64 -S chmod,fchmod,fchmodat -F auid>=1000 -F auid!=unset -k perm_mod",
            "-a always,exit -F arch=b64 -S chown,fchown,lchown,fchownat -F auid>=1000 -F auid!=unset -k perm_mod",
            "-a always,exit -F arch=b32 -S chmod,fchmod,fchmodat -F auid>=1000 -F auid!=unset -k perm_mod",
            "-a always,exit -F arch=b32 -S lchown,fchown,chown,fchownat -F auid>=1000 -F auid!=unset -k perm_mod",
            "-a always,exit -F arch=b64 -S setxattr,lsetxattr,fsetxattr,removexattr,lremovexattr,fremovexattr -F auid>=1000 -F auid!=unset -k perm_mod",
            "-a always,exit -F arch=b32 -S setxattr,lsetxattr,fsetxattr,removexattr,lremovexattr,fremovexattr -F auid>=1000 -F auid!=unset -k perm_mod",
        ],
    },
    CisRules {
        id: "6.3.3.10",
        title: "successful file system mounts",
        rules: &[
            "-a always,exit -F arch=b64 -S mount -F auid>=1000 -F auid!=unset -k mounts",
            "-a always,exit -F arch=b32 -S mount -F auid>=1000 -F auid!=unset -k mounts",
        ],
    },
    CisRules {
        id: "6.3.3.11",
        title: "session initiation",
        rules: &["-w /var/run/utmp -p wa -k session", "-w /var/log/wtmp -p wa -k session", "-w /var/log/btmp -p wa -k session"],
    },
    CisRules { id: "6.3.3.12", title: "login and logout", rules: &["-w /var/log/lastlog -p wa -k logins", "-w /var/run/faillock -p wa -k logins"] },
    CisRules {
        id: "6.3.3.13",
        title: "file deletion by users",
        rules: &[
            "-a always,exit -F arch=b64 -S rename,unlink,unlinkat,renameat -F auid>=1000 -F auid!=unset -k delete",
            "-a always,exit -F arch=b32 -S rename,unlink,unlinkat,renameat -F auid>=1000 -F auid!=unset -k delete",
        ],
    },
    CisRules { id: "6.3.3.14", title: "changes to mandatory access controls", rules: &["-w /etc/apparmor/ -p wa -k MAC-policy", "-w /etc/apparmor.d/ -p wa -k MAC-policy"] },
    CisRules { id: "6.3.3.15", title: "chcon", rules: &["-a always,exit -F path=/usr/bin/chcon -F perm=x -F auid>=1000 -F auid!=unset -k perm_chng"] },
    CisRules { id: "6.3.3.16", title: "setfacl", rules: &["-a always,exit -F path=/usr/bin/setfacl -F perm=x -F auid>=1000 -F auid!=unset -k perm_chng"] },
    CisRules { id: "6.3.3.17", title: "chacl", rules: &["-a always,exit -F path=/usr/bin/chacl -F perm=x -F auid>=1000 -F auid!=unset -k perm_chng"] },
    CisRules { id: "6.3.3.18", title: "usermod", rules: &["-a always,exit -F path=/usr/sbin/usermod -F perm=x -F auid>=1000 -F auid!=unset -k usermod"] },
    CisRules {
        id: "6.3.3.19",
        title: "loading, unloading and changing kernel modules",
        rules: &[
            "-a always,exit -F arch=b64 -S init_module,finit_module,delete_module,create_module,query_module -F auid>=1000 -F auid!=unset -k kernel_modules",
            "-a always,exit -F path=/usr/bin/kmod -F perm=x -F auid>=1000 -F auid!=unset -k kernel_modules",
        ],
    },
];

/// auditd.conf settings: key, value, why (CIS Debian 12 6.3.2).
fn auditd_conf_settings(max_log_file_mib: u32, num_logs: u32, mail: bool) -> Vec<(&'static str, String, &'static str)> {
    let space_left = if mail {
        ("space_left_action", "EMAIL".to_string(), "mail root, whom [mail] sends to the admins, and warn through syslog (CIS 6.3.2.4)")
    } else {
        ("space_left_action", "SYSLOG".to_string(), "warn through syslog, which reaches the remote log host (mail.enable = false: CIS 6.3.2.4 asks email)")
    };
    vec![
        ("max_log_file", max_log_file_mib.to_string(), "[auditd] max-log-file-mib (CIS 6.3.2.1)"),
        ("num_logs", num_logs.to_string(), "[auditd] num-logs"),
        ("max_log_file_action", "ROTATE".into(), "rotate, keeping num_logs files (CIS 6.3.2.2 asks keep_logs, which fills the disk)"),
        space_left,
        ("action_mail_acct", "root".into(), "who space_left_action = email writes to"),
        ("admin_space_left_action", "SINGLE".into(), "CIS 6.3.2.4"),
        ("disk_full_action", "SINGLE".into(), "CIS 6.3.2.3"),
        ("disk_error_action", "SINGLE".into(), "CIS 6.3.2.3"),
        ("log_group", "root".into(), "log files 0600 root:root (CIS 6.3.4.1 to 6.3.4.4)"),
        ("log_format", "ENRICHED".into(), "ids resolved on this machine, so records read the same at the log host"),
    ]
}

/// The rules CIS 6.3.3 asks for, with their recommendation's number.
pub fn cis_rules() -> Vec<(&'static str, &'static str)> {
    CIS.iter().flat_map(|c| c.rules.iter().map(move |r| (c.id, *r))).collect()
}

/// The keys a booted image's `auditctl -l` shows, for the VM tests.
pub fn expected_rule_keys() -> Vec<String> {
    let mut keys: Vec<String> = cis_rules().iter().filter_map(|(_, r)| rule_key(r)).collect();
    keys.push("privileged".to_string());
    keys.sort();
    keys.dedup();
    keys
}

/// The rule for one set-uid or set-gid program (CIS 6.3.3.6).
fn privileged_rule(path: &str) -> String {
    format!("-a always,exit -F path={path} -F perm=x {AUID} -k privileged")
}

/// Where a rule came from: rampart's own (a bug if wrong) or the profile's.
#[derive(Debug, Clone)]
enum Origin {
    Rampart(String),
    Profile(String),
}

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    let spec = ctx.profile.auditd.clone();
    if !spec.enable {
        ctx.record("auditd", false, json!({ "reason": "auditd.enable = false" }));
        return Ok(());
    }
    // The profile brings the auditd package with the control: an image
    // without it is broken, and a control that is on is never skipped.
    if !ctx.root().join("usr/sbin/auditctl").exists() {
        bail!("auditd.enable of {}: the image has no /usr/sbin/auditctl; is the auditd package in the lock?", ctx.profile.path.display());
    }
    let tables = syscall_tables(ctx)?;

    // The rules, with where each came from; rampart's own are checked as a
    // profile's are, so that a typo here fails every build at once.
    let mut rules: Vec<(String, Origin)> = Vec::new();
    let mut cis_text = format!("## rampart: CIS Debian Linux 12 Benchmark 6.3.3 audit rules (x86_64, UID_MIN {UID_MIN}).\n");
    let mut left_out: Vec<serde_json::Value> = Vec::new();
    for section in CIS {
        cis_text.push_str(&format!("\n## {} {}\n", section.id, section.title));
        for rule in section.rules {
            let checked = parse_rule(rule).map_err(|e| anyhow::anyhow!("bug: rampart's CIS {} rule {rule:?} is refused: {e}", section.id))?;
            if let Some(missing) = missing_watch_parent(&ctx.root(), &checked)? {
                // A watch below a missing directory makes auditctl stop loading.
                cis_text.push_str(&format!("## left out: {missing} is not in the image\n## {checked}\n"));
                left_out.push(json!({ "rule": checked, "cis": section.id, "missing": missing }));
                continue;
            }
            cis_text.push_str(&checked);
            cis_text.push('\n');
            rules.push((checked, Origin::Rampart(format!("CIS {}", section.id))));
        }
    }
    let n_cis = rules.len();

    let privileged = privileged_programs(&ctx.root())?;
    let privileged_text = privileged_rules_text(&privileged)?;
    for rule in privileged_text.lines().filter(|l| !l.starts_with('#')) {
        rules.push((rule.to_string(), Origin::Rampart("CIS 6.3.3.6".into())));
    }

    let mut profile_text = format!("## rampart: auditd.rules of profile {}.\n", ctx.profile.name);
    for rule in &spec.rules {
        // What the rules watch is checked after the overlays, which may make it.
        profile_text.push_str(&format!("# {}\n{}\n", rule.at, rule.value));
        rules.push((rule.value.clone(), Origin::Profile(rule.at.clone())));
    }
    check_syscalls(&rules, &tables)?;

    // Debian's rules.d/audit.rules holds only the controls rampart sets in
    // its base file; anything else in it is kept.
    let debian_default = ctx.root().join(DEBIAN_DEFAULT_RULES);
    let debian_default_removed = match std::fs::read_to_string(&debian_default) {
        Ok(text) if only_controls(&text) => {
            std::fs::remove_file(&debian_default).with_context(|| format!("while removing /{DEBIAN_DEFAULT_RULES}"))?;
            true
        }
        _ => false,
    };
    let base_text = format!(
        "## rampart: the audit system's controls. -D first; rampart's [auditd] backlog-limit;\n## on failure, a kernel message (-f 1); wait up to 60 s for room in the backlog.\n-D\n-b {}\n-f 1\n--backlog_wait_time 60000\n",
        spec.backlog_limit
    );
    let finalize_text = if spec.immutable {
        "## rampart: CIS 6.3.3.20, no change to the rules until the next boot.\n-e 2\n".to_string()
    } else {
        "## rampart: auditd.immutable = false: the rules may be changed at run time.\n".to_string()
    };
    let files: [(&str, &str, usize); 5] = [
        (BASE_RULES, &base_text, 0),
        (CIS_RULES, &cis_text, n_cis),
        (PRIVILEGED_RULES, &privileged_text, privileged.len()),
        (PROFILE_RULES, &profile_text, spec.rules.len()),
        (FINALIZE_RULES, &finalize_text, 0),
    ];
    for (path, text, _) in &files {
        ctx.install_file(path, text.as_bytes(), 0o640)?;
    }
    let merged = write_merged_rules(ctx)?;

    let conf_path = ctx.root().join(AUDITD_CONF);
    let conf = std::fs::read_to_string(&conf_path).with_context(|| format!("while reading /{AUDITD_CONF} of the image"))?;
    let settings = auditd_conf_settings(spec.max_log_file_mib, spec.num_logs, ctx.profile.mail.enable);
    let edited = set_keys(&conf, &settings.iter().map(|(k, v, why)| (*k, v.as_str(), *why)).collect::<Vec<_>>());
    ctx.install_file(AUDITD_CONF, edited.as_bytes(), 0o640)?;

    let plugin_path = ctx.root().join(SYSLOG_PLUGIN);
    let plugin = std::fs::read_to_string(&plugin_path).with_context(|| format!("while reading /{SYSLOG_PLUGIN} of the image (the syslog plugin of auditd)"))?;
    let plugin = set_keys(&plugin, &[("active", "yes", "audit records to syslog, and so to the remote log host"), ("args", SYSLOG_ARGS, "level, then facility")]);
    ctx.install_file(SYSLOG_PLUGIN, plugin.as_bytes(), 0o640)?;

    ctx.install_symlink(&format!("etc/systemd/system/{JOURNALD_AUDIT_SOCKET}"), "/dev/null")?;

    let cmdline = ["audit=1".to_string(), format!("audit_backlog_limit={}", spec.backlog_limit)];
    ctx.kernel_cmdline_extra.extend(cmdline.iter().cloned());

    ctx.record(
        "auditd",
        true,
        json!({
            "rules-files": files.iter().map(|(path, text, n)| json!({
                "path": format!("/{path}"),
                "rules": if path == &BASE_RULES || path == &FINALIZE_RULES { count_rule_lines(text) } else { *n },
            })).collect::<Vec<_>>(),
            "debian-default-rules-removed": debian_default_removed,
            "cis-left-out": left_out,
            "privileged-programs": privileged,
            "profile-rules": spec.rules.iter().map(|r| json!({ "rule": r.value, "at": r.at })).collect::<Vec<_>>(),
            "keys": expected_rule_keys(),
            "merged": { "path": format!("/{MERGED_RULES}"), "rules": merged, "as": "augenrules would make it (not loaded at build time)" },
            "immutable": spec.immutable,
            "backlog-limit": spec.backlog_limit,
            "auditd-conf": settings.iter().map(|(k, v, _)| (k.to_string(), v.clone())).collect::<BTreeMap<_, _>>(),
            "kernel-cmdline": cmdline,
            "forwarding": { "plugin": format!("/{SYSLOG_PLUGIN}"), "program": "/sbin/audisp-syslog", "args": SYSLOG_ARGS, "journald-audit-socket": "masked: records reach the journal once, through the plugin" },
            "checked-with": "ausyscall x86_64 --dump, ausyscall i386 --dump (the image's own)",
        }),
    );
    Ok(())
}

/// The image's system call tables, by the image's own `ausyscall`.
fn syscall_tables(ctx: &BuildContext) -> Result<BTreeMap<SyscallTable, std::collections::BTreeSet<String>>> {
    let mut tables = BTreeMap::new();
    for table in [SyscallTable::X86_64, SyscallTable::I386] {
        let output = ctx
            .in_root("ausyscall")
            .args([table.ausyscall_name(), "--dump"])
            .run()
            .with_context(|| format!("while reading the image's {} system call table", table.ausyscall_name()))?;
        let names = parse_syscall_dump(&output.stdout_text());
        if names.is_empty() {
            bail!("the image's ausyscall {} --dump listed no system calls", table.ausyscall_name());
        }
        tables.insert(table, names);
    }
    Ok(tables)
}

/// `ausyscall ARCH --dump`: a "Using ... syscall table:" line, then
/// "NUMBER<TAB>NAME" lines.
fn parse_syscall_dump(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter_map(|line| {
            let (number, name) = line.split_once(char::is_whitespace)?;
            number.parse::<u32>().ok()?;
            let name = name.trim();
            (!name.is_empty()).then(|| name.to_string())
        })
        .collect()
}

fn check_syscalls(rules: &[(String, Origin)], tables: &BTreeMap<SyscallTable, std::collections::BTreeSet<String>>) -> Result<()> {
    for (rule, origin) in rules {
        let table = syscall_table(rule);
        let known = &tables[&table];
        if let Some(unknown) = syscalls_named(rule).into_iter().find(|name| !known.contains(name)) {
            match origin {
                Origin::Profile(at) => bail!(
                    "{at}: auditd.rules: the image's audit tools know no system call {unknown:?} (in the {} table)",
                    table.ausyscall_name()
                ),
                Origin::Rampart(what) => bail!(
                    "bug: rampart's {what} rule {rule:?} names the system call {unknown:?}, which the image's {} table does not have",
                    table.ausyscall_name()
                ),
            }
        }
    }
    Ok(())
}

/// The directory a rule's watch needs that the image lacks: the kernel
/// refuses the rule, and auditctl stops loading the rest.
fn missing_watch_parent(root: &Path, rule: &str) -> Result<Option<String>> {
    for watched in watched_paths(rule) {
        let needed = match &watched {
            WatchedPath::File(path) => {
                let trimmed = path.trim_end_matches('/');
                match trimmed.rfind('/') {
                    Some(0) | None => "/".to_string(),
                    Some(i) => trimmed[..i].to_string(),
                }
            }
            WatchedPath::Dir(dir) => dir.trim_end_matches('/').to_string(),
        };
        let on_host = crate::fsutil::resolve_in_root_following(root, Path::new(&needed))?;
        if !on_host.is_dir() {
            return Ok(Some(needed));
        }
    }
    Ok(None)
}

/// The regular files with the set-uid or set-gid bit below `root`, as image
/// paths, sorted. Symlinks are not followed; /proc, /sys, /dev and /run are
/// not looked at.
fn privileged_programs(root: &Path) -> Result<Vec<String>> {
    use std::os::unix::fs::PermissionsExt;
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("while listing {}", dir.display()))? {
            let path = entry?.path();
            let relative = path.strip_prefix(root).expect("below the root");
            if dir == root && ["proc", "sys", "dev", "run"].iter().any(|skipped| relative == Path::new(skipped)) {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                pending.push(path);
            } else if meta.is_file() && meta.permissions().mode() & 0o6000 != 0 {
                let Some(name) = relative.to_str() else {
                    bail!("the set-uid/set-gid file {} has a name that is not UTF-8", path.display());
                };
                found.push(format!("/{name}"));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The rules file of the set-id programs: one `-k privileged` rule each.
fn privileged_rules_text(programs: &[String]) -> Result<String> {
    let mut text = "## rampart: CIS 6.3.3.6, every set-uid and set-gid program of the image at build time.\n".to_string();
    for path in programs {
        let rule = parse_rule(&privileged_rule(path)).map_err(|e| anyhow::anyhow!("the set-uid/set-gid program {path:?} cannot be named in an audit rule: {e}"))?;
        text.push_str(&rule);
        text.push('\n');
    }
    Ok(text)
}

/// Whether a rules file holds nothing but the controls rampart's base file sets.
fn only_controls(text: &str) -> bool {
    text.lines().map(str::trim).all(|line| {
        line.is_empty()
            || line.starts_with('#')
            || line == "-D"
            || ["-b ", "-f ", "--backlog_wait_time "].iter().any(|p| line.strip_prefix(p).is_some_and(|n| n.trim().parse::<u32>().is_ok()))
    })
}

fn count_rule_lines(text: &str) -> usize {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).count()
}

/// After the overlays, which may make what the profile's rules watch and
/// add rules files: each watch's directory is there (else auditctl would
/// stop loading at that rule, and `-e 2` would never come), and the merged
/// rules are made again.
pub fn after_overlays(ctx: &mut BuildContext) -> Result<()> {
    if !ctx.profile.auditd.enable {
        return Ok(());
    }
    for rule in &ctx.profile.auditd.rules {
        if let Some(missing) = missing_watch_parent(&ctx.root(), &rule.value)? {
            bail!("{}: auditd.rules: {missing} is not in the image, and the kernel cannot watch below it", rule.at);
        }
    }
    // The overlays (and their modes) may have added set-id programs.
    let privileged = privileged_programs(&ctx.root())?;
    ctx.install_file(PRIVILEGED_RULES, privileged_rules_text(&privileged)?.as_bytes(), 0o640)?;
    let n_rules = write_merged_rules(ctx)?;
    if let Some(record) = ctx.records.iter_mut().rev().find(|r| r.stage == "auditd") {
        record.settings["merged"]["rules"] = json!(n_rules);
        record.settings["privileged-programs"] = json!(privileged);
    }
    Ok(())
}

/// Writes /etc/audit/audit.rules as `augenrules` makes it from rules.d, so
/// that its run at boot finds nothing to change (and the integrity
/// baseline stays true). Call again after anything adds rules files (the
/// overlays). Returns its number of rule lines.
pub fn write_merged_rules(ctx: &BuildContext) -> Result<usize> {
    let dir = ctx.root().join(RULES_DIR);
    let mut names: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("while listing /{RULES_DIR}"))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".rules") {
            names.push(name);
        }
    }
    names.sort_by(|a, b| version_order(a, b));
    let mut texts = Vec::new();
    for name in &names {
        texts.push(std::fs::read_to_string(dir.join(name)).with_context(|| format!("while reading /{RULES_DIR}/{name}"))?);
    }
    let merged = augenrules_merge(&texts);
    ctx.install_file(MERGED_RULES, merged.as_bytes(), 0o640)?;
    let _ = std::fs::remove_file(ctx.root().join(format!("{MERGED_RULES}.prev")));
    Ok(count_rule_lines(&merged))
}

/// augenrules (bookworm, audit 3.0.9): comments and empty lines dropped;
/// the last `-D`, `-b` and `-f` first, in that order; the rest as read;
/// the last `-e` last (an empty line when there is none).
fn augenrules_merge(texts: &[String]) -> String {
    let (mut minus_d, mut minus_b, mut minus_f, mut minus_e) = ("", "", "", "");
    let mut rest: Vec<&str> = Vec::new();
    for line in texts.iter().flat_map(|t| t.lines()) {
        let trimmed = line.trim_start();
        if line.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if trimmed.starts_with("-e") {
            minus_e = line;
        } else if trimmed.trim_end() == "-D" {
            minus_d = line;
        } else if trimmed.starts_with("-f") {
            minus_f = line;
        } else if trimmed.starts_with("-b") {
            minus_b = line;
        } else {
            rest.push(line);
        }
    }
    let mut out = "## This file is automatically generated from /etc/audit/rules.d\n".to_string();
    for line in [minus_d, minus_b, minus_f].into_iter().chain(rest).chain([minus_e]) {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// `ls -v` order for rules file names: runs of digits by number.
fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for ((da, xa), (db, xb)) in ca.iter().zip(cb.iter()) {
        let ordering = if *da && *db {
            let (ta, tb) = (xa.trim_start_matches('0'), xb.trim_start_matches('0'));
            ta.len().cmp(&tb.len()).then(ta.cmp(tb))
        } else {
            xa.cmp(xb)
        };
        if ordering != std::cmp::Ordering::Equal {
            return ordering;
        }
    }
    ca.len().cmp(&cb.len()).then(a.cmp(b))
}

/// Sets `key = value` lines of an auditd-style file, keeping everything
/// else (comments included); each changed line gets a comment saying why.
/// Keys the file lacks are appended.
fn set_keys(text: &str, settings: &[(&str, &str, &str)]) -> String {
    let mut out = String::new();
    let mut done: Vec<&str> = Vec::new();
    for line in text.lines() {
        let key = line.split_once('=').map(|(k, _)| k.trim()).filter(|_| !line.trim_start().starts_with('#'));
        match key.and_then(|k| settings.iter().find(|(name, _, _)| *name == k)) {
            Some((name, value, why)) => {
                out.push_str(&format!("# rampart: {why}\n{name} = {value}\n"));
                done.push(name);
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    for (name, value, why) in settings {
        if !done.contains(name) {
            out.push_str(&format!("# rampart: {why}\n{name} = {value}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rampart_rules_pass_the_profile_checker_unchanged() {
        for (id, rule) in cis_rules() {
            assert_eq!(parse_rule(rule).as_deref(), Ok(rule), "CIS {id}");
        }
        let rule = privileged_rule("/usr/bin/sudo");
        assert_eq!(rule, "-a always,exit -F path=/usr/bin/sudo -F perm=x -F auid>=1000 -F auid!=unset -k privileged");
        assert_eq!(parse_rule(&rule).as_deref(), Ok(rule.as_str()));
        assert!(cis_rules().iter().any(|(_, r)| r.contains(&format!("-w {SUDO_LOG} "))));
    }

    #[test]
    fn keys_are_the_cis_ones() {
        assert_eq!(
            expected_rule_keys(),
            [
                "MAC-policy", "access", "delete", "identity", "kernel_modules", "logins", "mounts", "perm_chng", "perm_mod", "privileged", "scope", "session",
                "sudo_log_file", "system-locale", "time-change", "user_emulation", "usermod"
            ]
        );
    }

    #[test]
    fn syscall_dump_is_read() {
        let dump = "Using x86_64 syscall table:\n0\tread\n1\twrite\n450\tset_mempolicy_home_node\n";
        let names: Vec<String> = parse_syscall_dump(dump).into_iter().collect();
        assert_eq!(names, ["read", "set_mempolicy_home_node", "write"]);
    }

    #[test]
    fn unknown_syscalls_name_the_profile_field() {
        let tables: BTreeMap<_, _> = [
            (SyscallTable::X86_64, ["execve".to_string()].into_iter().collect()),
            (SyscallTable::I386, ["execve".to_string(), "chown32".to_string()].into_iter().collect()),
        ]
        .into_iter()
        .collect();
        let check = |rule: &str, origin: Origin, expected: Option<&str>| {
            let got = check_syscalls(&[(rule.to_string(), origin)], &tables).err().map(|e| e.to_string());
            assert_eq!(got.as_deref(), expected, "{rule}");
        };
        check("-a always,exit -F arch=b32 -S chown32 -k x", Origin::Profile("p.toml:3:4".into()), None);
        check(
            "-a always,exit -F arch=b64 -S chown32 -k x",
            Origin::Profile("p.toml:3:4".into()),
            Some("p.toml:3:4: auditd.rules: the image's audit tools know no system call \"chown32\" (in the x86_64 table)"),
        );
        check(
            "-a always,exit -S foo",
            Origin::Rampart("CIS 6.3.3.2".into()),
            Some("bug: rampart's CIS 6.3.3.2 rule \"-a always,exit -S foo\" names the system call \"foo\", which the image's x86_64 table does not have"),
        );
    }

    #[test]
    fn debian_default_rules_are_recognised() {
        let debian = "## First rule - delete all\n-D\n\n## Increase the buffers to survive stress events.\n## Make this bigger for busy systems\n-b 8192\n\n## This determine how long to wait in burst of events\n--backlog_wait_time 60000\n\n## Set failure mode to syslog\n-f 1\n\n";
        assert!(only_controls(debian));
        assert!(!only_controls(&format!("{debian}-w /etc/x -p wa\n")));
        assert!(!only_controls("-e 2\n"));
    }

    #[test]
    fn merge_is_augenrules_order() {
        let base = "## c\n-D\n-b 8192\n-f 1\n--backlog_wait_time 60000\n".to_string();
        let cis = "\n## 6.3.3.1\n-w /etc/sudoers -p wa -k scope\n".to_string();
        let finalize = "## x\n-e 2\n".to_string();
        assert_eq!(
            augenrules_merge(&[base.clone(), cis.clone(), finalize]),
            "## This file is automatically generated from /etc/audit/rules.d\n-D\n-b 8192\n-f 1\n--backlog_wait_time 60000\n-w /etc/sudoers -p wa -k scope\n-e 2\n"
        );
        assert_eq!(
            augenrules_merge(&[cis, base]),
            "## This file is automatically generated from /etc/audit/rules.d\n-D\n-b 8192\n-f 1\n-w /etc/sudoers -p wa -k scope\n--backlog_wait_time 60000\n\n"
        );
        // The files' merge by bookworm's own augenrules (mawk), captured.
        let files = [
            "## rampart: base\n-D\n-b 8192\n-f 1\n--backlog_wait_time 60000\n",
            "## rampart: CIS\n\n## 6.3.3.1 x\n-w /etc/sudoers -p wa -k scope\n-a always,exit -F arch=b64 -C euid!=uid -F auid!=unset -S execve -k user_emulation\n",
            "## p\n-a always,exit -F path=/usr/bin/sudo -F perm=x -F auid>=1000 -F auid!=unset -k privileged\n",
            "## profile\n# profiles/x.toml:3:4\n-w /srv -p wa -k srv\n",
            "## fin\n-e 2\n",
        ];
        assert_eq!(
            augenrules_merge(&files.map(String::from)),
            "## This file is automatically generated from /etc/audit/rules.d\n-D\n-b 8192\n-f 1\n--backlog_wait_time 60000\n-w /etc/sudoers -p wa -k scope\n-a always,exit -F arch=b64 -C euid!=uid -F auid!=unset -S execve -k user_emulation\n-a always,exit -F path=/usr/bin/sudo -F perm=x -F auid>=1000 -F auid!=unset -k privileged\n-w /srv -p wa -k srv\n-e 2\n"
        );
        let mut names = vec!["99-rampart-finalize.rules", "audit.rules", "9-x.rules", "10-rampart-base.rules", "55-a.rules"];
        names.sort_by(|a, b| version_order(a, b));
        assert_eq!(names, ["9-x.rules", "10-rampart-base.rules", "55-a.rules", "99-rampart-finalize.rules", "audit.rules"]);
    }

    #[test]
    fn auditd_conf_keeps_debian_comments_and_sets_values() {
        let conf = "#\n# This file controls the configuration of the audit daemon\n#\n\nlog_group = adm\nmax_log_file = 8\n##name = mydomain\nnum_logs=5\n";
        let got = set_keys(conf, &[("log_group", "root", "CIS"), ("num_logs", "8", "n"), ("disk_full_action", "SINGLE", "CIS 6.3.2.3")]);
        assert_eq!(
            got,
            "#\n# This file controls the configuration of the audit daemon\n#\n\n# rampart: CIS\nlog_group = root\nmax_log_file = 8\n##name = mydomain\n# rampart: n\nnum_logs = 8\n# rampart: CIS 6.3.2.3\ndisk_full_action = SINGLE\n"
        );
    }

    #[test]
    fn watches_need_their_directory_in_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("run")).unwrap();
        std::fs::create_dir_all(root.join("var/log")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("../run", root.join("var/run")).unwrap();
        let check = |rule: &str, expected: Option<&str>| assert_eq!(missing_watch_parent(root, rule).unwrap().as_deref(), expected, "{rule}");
        check("-w /var/run/faillock -p wa -k logins", None);
        check("-w /etc/apparmor.d/ -p wa -k MAC-policy", None);
        check("-w /srv/app/conf -p wa -k app", Some("/srv/app"));
        check("-a always,exit -F dir=/srv -F perm=w -k srv", Some("/srv"));
        check("-a always,exit -F path=/usr/bin/chcon -F perm=x -k perm_chng", Some("/usr/bin"));
        check("-a always,exit -F arch=b64 -S mount -k mounts", None);
    }

    #[test]
    fn privileged_programs_are_found_without_following_links() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for sub in ["usr/bin", "proc", "run", "etc"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        for (path, mode) in [("usr/bin/sudo", 0o4755), ("usr/bin/chage", 0o2755), ("usr/bin/ls", 0o755), ("proc/x", 0o4755), ("run/y", 0o4755)] {
            std::fs::write(root.join(path), b"").unwrap();
            std::fs::set_permissions(root.join(path), std::fs::Permissions::from_mode(mode)).unwrap();
        }
        std::os::unix::fs::symlink("/usr/bin", root.join("bin")).unwrap();
        std::os::unix::fs::symlink("/", root.join("etc/loop")).unwrap();
        assert_eq!(privileged_programs(root).unwrap(), ["/usr/bin/chage", "/usr/bin/sudo"]);
    }
}
