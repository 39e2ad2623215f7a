//! The `[auditd]` section of a profile: the Linux audit daemon's rules (CIS
//! Debian 12 section 6.3), log sizes, backlog and immutability. Validated
//! where written, merged field by field, defaults applied. The rule checker
//! is syntactic only: system call names are checked by the stage against the
//! image's own table. Pure: no IO.

use toml::Spanned;

use super::raw::RawAuditd;

use super::controls::Sited;
use crate::located::{LocatedError, SourceText};

/// `[auditd]`, validated and merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditdSpec {
    pub enable: bool,
    /// The profile's own rules, after rampart's CIS rules.
    pub rules: Vec<Sited<String>>,
    /// auditd.conf's max_log_file.
    pub max_log_file_mib: u32,
    /// auditd.conf's num_logs.
    pub num_logs: u32,
    /// The kernel's audit_backlog_limit= and the rules' -b.
    pub backlog_limit: u32,
    /// `-e 2`: the rules cannot change until the next boot.
    pub immutable: bool,
}

pub const DEFAULT_MAX_LOG_FILE_MIB: u32 = 32;
pub const DEFAULT_NUM_LOGS: u32 = 8;
pub const DEFAULT_BACKLOG_LIMIT: u32 = 8192;

/// One file's `[auditd]`, validated, not yet merged.
#[derive(Debug, Default)]
pub struct AuditdLayer {
    enable: Option<bool>,
    rules: Vec<Sited<String>>,
    max_log_file_mib: Option<u32>,
    num_logs: Option<u32>,
    backlog_limit: Option<u32>,
    immutable: Option<bool>,
}

pub fn validate(source: &SourceText, raw: Option<RawAuditd>) -> Result<AuditdLayer, LocatedError> {
    let mut layer = AuditdLayer::default();
    let Some(raw) = raw else { return Ok(layer) };
    layer.enable = raw.enable;
    layer.immutable = raw.immutable;
    for rule in &raw.rules {
        let parsed = source.check(rule, "auditd.rules", |s| parse_rule(s))?;
        layer.rules.push(Sited { value: parsed, at: source.location(rule.span().start) });
    }
    let in_range = |value: &Option<Spanned<i64>>, field: &str, low: i64, high: i64| -> Result<Option<u32>, LocatedError> {
        let Some(value) = value else { return Ok(None) };
        let checked = source.check(value, field, |n| if (low..=high).contains(n) { Ok(*n as u32) } else { Err(format!("{n} is out of range ({low} to {high})")) })?;
        Ok(Some(checked))
    };
    layer.max_log_file_mib = in_range(&raw.max_log_file_mib, "auditd.max-log-file-mib", 1, 1024)?;
    layer.num_logs = in_range(&raw.num_logs, "auditd.num-logs", 2, 99)?;
    layer.backlog_limit = in_range(&raw.backlog_limit, "auditd.backlog-limit", 64, 1_048_576)?;
    Ok(layer)
}

/// The child's values win field by field; rules add up, base first.
pub fn merge(base: &mut AuditdLayer, child: AuditdLayer) {
    take(&mut base.enable, child.enable);
    take(&mut base.max_log_file_mib, child.max_log_file_mib);
    take(&mut base.num_logs, child.num_logs);
    take(&mut base.backlog_limit, child.backlog_limit);
    take(&mut base.immutable, child.immutable);
    base.rules.extend(child.rules);
}

fn take<T>(slot: &mut Option<T>, value: Option<T>) {
    if value.is_some() {
        *slot = value;
    }
}

pub fn finish(layer: AuditdLayer) -> AuditdSpec {
    AuditdSpec {
        enable: layer.enable.unwrap_or(true),
        rules: layer.rules,
        max_log_file_mib: layer.max_log_file_mib.unwrap_or(DEFAULT_MAX_LOG_FILE_MIB),
        num_logs: layer.num_logs.unwrap_or(DEFAULT_NUM_LOGS),
        backlog_limit: layer.backlog_limit.unwrap_or(DEFAULT_BACKLOG_LIMIT),
        immutable: layer.immutable.unwrap_or(true),
    }
}

// ---------------------------------------------------------------- rules

/// Field names `-F` takes (auditctl(8)); `subj_*` and `obj_*` by prefix.
const FIELDS: &[&str] = &[
    "arch", "auid", "uid", "euid", "suid", "fsuid", "gid", "egid", "sgid", "fsgid", "pid", "ppid", "path", "dir", "perm", "success", "exit",
    "key", "inode", "msgtype", "exe", "filetype", "fstype", "devmajor", "devminor", "sessionid", "a0", "a1", "a2", "a3",
];

/// The fields `-C` compares (auditctl(8): uids with uids, gids with gids).
const COMPARED_FIELDS: &[&str] = &["auid", "uid", "euid", "suid", "fsuid", "obj_uid", "gid", "egid", "sgid", "fsgid", "obj_gid"];

/// Longest first, so that `<=` is not read as `<`.
const OPERATORS: &[&str] = &["!=", "<=", ">=", "&=", "=", "<", ">", "&"];

const ACTIONS: &[&str] = &["always", "never"];
const LISTS: &[&str] = &["exit", "task", "user", "exclude", "filesystem"];

/// What the shell, the rules file or auditctl's own parser would read as
/// something else; `<`, `>`, `&`, `!` and `=` only in an operator.
const REFUSED_CHARACTERS: &[char] = &['"', '\'', '`', '\\', '$', ';', '|', '(', ')', '{', '}', '*', '?', '#', '~', '[', ']'];

/// Options rampart sets itself, and why they are not the profile's.
const RAMPART_OPTIONS: &[(&str, &str)] = &[
    ("-D", "rampart deletes the previous rules itself"),
    ("-e", "rampart sets it from auditd.immutable"),
    ("-b", "rampart sets it from auditd.backlog-limit"),
    ("-f", "rampart sets the failure mode"),
    ("-r", "rampart sets the audit system's controls"),
    ("-R", "rules cannot read other files"),
];

/// Which system call table a rule's `-S` names are read against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SyscallTable {
    /// `-F arch=b64` (or no arch: the machine's own, x86_64).
    X86_64,
    /// `-F arch=b32`: the i386 compatibility table.
    I386,
}

impl SyscallTable {
    /// The name ausyscall knows the table by.
    pub fn ausyscall_name(self) -> &'static str {
        match self {
            SyscallTable::X86_64 => "x86_64",
            SyscallTable::I386 => "i386",
        }
    }
}

/// A path a rule asks the kernel to watch; its parent must exist when the
/// rule is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchedPath {
    /// `-w PATH` or `-F path=PATH`: the parent directory must exist.
    File(String),
    /// `-F dir=PATH`: the directory itself must exist.
    Dir(String),
}

/// Checks one auditctl rule line and returns it in a canonical form
/// (single spaces, `ACTION,LIST`). Only watches (`-w`) and rules (`-a`) are
/// accepted: rampart sets the controls (`-D`, `-e`, `-b`, `-f`, `-r`).
pub fn parse_rule(s: &str) -> Result<String, String> {
    let rule = s.trim();
    if rule.is_empty() {
        return Err("an empty rule (e.g. \"-w /etc/app -p wa -k app\")".to_string());
    }
    if let Some(c) = rule.chars().find(|c| c.is_control() && *c != '\t') {
        return Err(format!("{rule:?}: one rule per line, without control characters (found {c:?})"));
    }
    if let Some(c) = rule.chars().find(|c| REFUSED_CHARACTERS.contains(c)) {
        return Err(format!("{rule:?}: {c:?} has no place in an audit rule (no quotes, comments or shell metacharacters)"));
    }
    let tokens: Vec<&str> = rule.split_whitespace().collect();
    let mut out: Vec<String> = Vec::new();
    let mut watch: Option<&str> = None;
    let mut perms: Option<&str> = None;
    let mut action_list: Option<(&str, &str)> = None;
    let mut syscalls_seen = false;
    let mut i = 0;
    while i < tokens.len() {
        let option = tokens[i];
        if let Some((_, why)) = RAMPART_OPTIONS.iter().find(|(o, _)| *o == option) {
            return Err(format!("{option} is not allowed in auditd.rules: {why}"));
        }
        let takes_value = matches!(option, "-w" | "-p" | "-k" | "-a" | "-F" | "-S" | "-C");
        if !takes_value {
            return Err(format!("{option:?} is not an option auditd.rules takes (-w PATH -p PERMS, -a ACTION,LIST, -F, -S, -C, -k KEY)"));
        }
        let Some(value) = tokens.get(i + 1).copied() else {
            return Err(format!("{option}: needs a value"));
        };
        if value.starts_with('-') && option != "-F" {
            return Err(format!("{option}: needs a value, got the option {value:?}"));
        }
        i += 2;
        match option {
            "-w" => {
                if watch.is_some() || action_list.is_some() {
                    return Err("-w: a rule is either one watch (-w) or one syscall rule (-a)".to_string());
                }
                parse_absolute_path(value).map_err(|e| format!("-w: {e}"))?;
                watch = Some(value);
                out.push(format!("-w {value}"));
            }
            "-p" => {
                if perms.is_some() {
                    return Err("-p: given twice".to_string());
                }
                if !value.chars().all(|c| "rwxa".contains(c)) || value.chars().collect::<std::collections::BTreeSet<_>>().len() != value.len() {
                    return Err(format!("-p: permissions must be letters from rwxa, got {value:?}"));
                }
                perms = Some(value);
                out.push(format!("-p {value}"));
            }
            "-k" => {
                parse_key(value).map_err(|e| format!("-k: {e}"))?;
                out.push(format!("-k {value}"));
            }
            "-a" => {
                if watch.is_some() || action_list.is_some() {
                    return Err("-a: a rule is either one watch (-w) or one syscall rule (-a)".to_string());
                }
                let (action, list) = parse_action_list(value)?;
                action_list = Some((action, list));
                out.push(format!("-a {action},{list}"));
            }
            "-S" => {
                match action_list {
                    Some((_, "exit")) => {}
                    Some((_, list)) => return Err(format!("-S: system calls are filtered on the exit list only, not {list:?}")),
                    None => return Err("-S: needs -a ACTION,exit before it".to_string()),
                }
                for name in value.split(',') {
                    let valid = name == "all" || (!name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
                    if !valid {
                        return Err(format!("-S: {name:?} is not a system call name (lower-case letters, digits, _; or \"all\")"));
                    }
                }
                syscalls_seen = true;
                out.push(format!("-S {value}"));
            }
            "-F" => {
                if action_list.is_none() {
                    return Err("-F: needs -a ACTION,LIST before it (a watch takes -p and -k only)".to_string());
                }
                let (field, op, field_value) = split_comparison(value).map_err(|e| format!("-F: {e}"))?;
                check_field(field, op, field_value).map_err(|e| format!("-F {field}: {e}"))?;
                if field == "arch" && syscalls_seen {
                    return Err("-F arch: must come before -S, so that the names are read against its table".to_string());
                }
                out.push(format!("-F {value}"));
            }
            "-C" => {
                if action_list.is_none() {
                    return Err("-C: needs -a ACTION,LIST before it".to_string());
                }
                let (left, op, right) = split_comparison(value).map_err(|e| format!("-C: {e}"))?;
                if !matches!(op, "=" | "!=") {
                    return Err(format!("-C: fields are compared with = or !=, got {op:?}"));
                }
                for field in [left, right] {
                    if !COMPARED_FIELDS.contains(&field) {
                        return Err(format!("-C: {field:?} is not a field -C compares ({})", COMPARED_FIELDS.join(", ")));
                    }
                }
                out.push(format!("-C {value}"));
            }
            _ => unreachable!("options are matched above"),
        }
    }
    match (watch, perms, action_list) {
        (Some(_), None, _) => Err("-w: needs -p PERMS (letters from rwxa)".to_string()),
        (None, Some(_), _) => Err("-p: belongs to a watch (-w PATH -p PERMS)".to_string()),
        (None, None, None) => Err(format!("{rule:?}: neither a watch (-w) nor a syscall rule (-a)")),
        _ => Ok(out.join(" ")),
    }
}

fn parse_absolute_path(s: &str) -> Result<(), String> {
    let parts_ok = s.len() > 1 && s[1..].trim_end_matches('/').split('/').all(|part| !matches!(part, "" | "." | ".."));
    if !s.starts_with('/') || !parts_ok || s.len() > 4095 {
        return Err(format!("{s:?} is not an absolute path without \"//\", \".\" or \"..\""));
    }
    if let Some(c) = s.chars().find(|c| matches!(c, '<' | '>' | '&' | '!' | '=' | ',')) {
        return Err(format!("{s:?}: {c:?} has no place in a path in an audit rule"));
    }
    Ok(())
}

fn parse_key(s: &str) -> Result<(), String> {
    let valid = !s.is_empty() && s.len() <= 31 && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if valid {
        Ok(())
    } else {
        Err(format!("a key is 1 to 31 letters, digits, '-', '_', '.' or ':', got {s:?}"))
    }
}

fn parse_action_list(s: &str) -> Result<(&str, &str), String> {
    let bad = || format!("-a: {s:?} is not ACTION,LIST (action always or never; list exit, task, user, exclude or filesystem)");
    let (first, second) = s.split_once(',').ok_or_else(bad)?;
    if ACTIONS.contains(&first) && LISTS.contains(&second) {
        Ok((first, second))
    } else if LISTS.contains(&first) && ACTIONS.contains(&second) {
        Ok((second, first))
    } else {
        Err(bad())
    }
}

/// `field OP value`, the operator being the first run of `<>=!&`.
fn split_comparison(s: &str) -> Result<(&str, &str, &str), String> {
    let start = s.find(|c| "<>=!&".contains(c)).ok_or_else(|| format!("{s:?} is not FIELD OP VALUE (e.g. \"auid>=1000\")"))?;
    let rest = &s[start..];
    let op = OPERATORS.iter().find(|op| rest.starts_with(**op)).ok_or_else(|| format!("{s:?}: no operator (one of {})", OPERATORS.join(" ")))?;
    let (field, value) = (&s[..start], &rest[op.len()..]);
    if field.is_empty() || value.is_empty() {
        return Err(format!("{s:?} is not FIELD OP VALUE (e.g. \"auid>=1000\")"));
    }
    if value.contains(|c| "<>=!&".contains(c)) {
        return Err(format!("{s:?}: one operator (one of {}) between a field and its value", OPERATORS.join(" ")));
    }
    Ok((field, op, value))
}

fn check_field(field: &str, op: &str, value: &str) -> Result<(), String> {
    let known = FIELDS.contains(&field)
        || ["subj_", "obj_"].iter().any(|p| field.strip_prefix(p).is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_lowercase())));
    if !known {
        return Err(format!("unknown field (one of {}, subj_*, obj_*)", FIELDS.join(", ")));
    }
    if !value.chars().all(|c| c.is_ascii_alphanumeric() || "_-./:+,@%".contains(c)) {
        return Err(format!("{value:?} is not a value an audit rule can hold"));
    }
    match field {
        "arch" => {
            if op != "=" {
                return Err(format!("only \"=\" selects a system call table, got {op:?}"));
            }
            if !matches!(value, "b64" | "b32" | "x86_64" | "i386") {
                return Err(format!("{value:?} is not an architecture of this machine (b64, b32, x86_64 or i386)"));
            }
        }
        "path" | "dir" | "exe" => parse_absolute_path(value)?,
        "key" => parse_key(value)?,
        "perm" if !value.chars().all(|c| "rwxa".contains(c)) => {
            return Err(format!("permissions must be letters from rwxa, got {value:?}"));
        }
        _ => {}
    }
    Ok(())
}

/// The tokens of a rule already checked by `parse_rule`: (option, value).
fn options(rule: &str) -> Vec<(&str, &str)> {
    let tokens: Vec<&str> = rule.split_whitespace().collect();
    tokens.chunks(2).filter_map(|pair| match pair {
        [option, value] => Some((*option, *value)),
        _ => None,
    }).collect()
}

/// The system call names a rule names with `-S` ("all" left out).
pub fn syscalls_named(rule: &str) -> Vec<String> {
    options(rule)
        .into_iter()
        .filter(|(option, _)| *option == "-S")
        .flat_map(|(_, names)| names.split(','))
        .filter(|name| *name != "all" && !name.is_empty())
        .map(str::to_string)
        .collect()
}

/// The table a rule's system call names are read against.
pub fn syscall_table(rule: &str) -> SyscallTable {
    let arch = options(rule).into_iter().find_map(|(option, value)| (option == "-F").then(|| value.strip_prefix("arch=")).flatten());
    match arch {
        Some("b32" | "i386") => SyscallTable::I386,
        _ => SyscallTable::X86_64,
    }
}

/// The paths a rule watches, which must exist (or their parent must) when
/// the kernel loads it.
pub fn watched_paths(rule: &str) -> Vec<WatchedPath> {
    options(rule)
        .into_iter()
        .filter_map(|(option, value)| match option {
            "-w" => Some(WatchedPath::File(value.to_string())),
            "-F" => value
                .strip_prefix("path=")
                .map(|p| WatchedPath::File(p.to_string()))
                .or_else(|| value.strip_prefix("dir=").map(|d| WatchedPath::Dir(d.to_string()))),
            _ => None,
        })
        .collect()
}

/// The key a rule files its events under (`-k` or `-F key=`).
pub fn rule_key(rule: &str) -> Option<String> {
    options(rule).into_iter().find_map(|(option, value)| match option {
        "-k" => Some(value.to_string()),
        "-F" => value.strip_prefix("key=").map(str::to_string),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<&str, &str>) {
        let got = parse_rule(input);
        assert_eq!(got.as_deref().map_err(|e| e.as_str()), expected, "{input}");
    }

    #[test]
    fn watches_and_syscall_rules_are_accepted() {
        check("-w /etc/app.conf -p wa -k app", Ok("-w /etc/app.conf -p wa -k app"));
        check("  -w   /etc/app/  -p rwxa ", Ok("-w /etc/app/ -p rwxa"));
        check("-w /etc/app -k app -p w", Ok("-w /etc/app -k app -p w"));
        check(
            "-a always,exit -F arch=b64 -C euid!=uid -F auid!=unset -S execve -k user_emulation",
            Ok("-a always,exit -F arch=b64 -C euid!=uid -F auid!=unset -S execve -k user_emulation"),
        );
        check("-a exit,always -F arch=b32 -S open,openat -F exit=-EACCES -F auid>=1000 -F auid!=unset -k access", Ok("-a always,exit -F arch=b32 -S open,openat -F exit=-EACCES -F auid>=1000 -F auid!=unset -k access"));
        check("-a always,exit -F path=/usr/bin/sudo -F perm=x -F auid>=1000 -F auid!=unset -k privileged", Ok("-a always,exit -F path=/usr/bin/sudo -F perm=x -F auid>=1000 -F auid!=unset -k privileged"));
        check("-a never,exclude -F msgtype=CWD", Ok("-a never,exclude -F msgtype=CWD"));
        check("-a always,exit -F arch=b64 -S clock_settime -F a0=0x0 -F key=time-change", Ok("-a always,exit -F arch=b64 -S clock_settime -F a0=0x0 -F key=time-change"));
        check("-a always,exit -F arch=b64 -S all -F a2&=2 -F subj_type=unconfined_t", Ok("-a always,exit -F arch=b64 -S all -F a2&=2 -F subj_type=unconfined_t"));
        check("-a never,filesystem -F fstype=tracefs", Ok("-a never,filesystem -F fstype=tracefs"));
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        check("-w /etc/app -p rq", Err("-p: permissions must be letters from rwxa, got \"rq\""));
        check("-w /etc/app -p ww", Err("-p: permissions must be letters from rwxa, got \"ww\""));
        check("-w etc/app -p wa", Err("-w: \"etc/app\" is not an absolute path without \"//\", \".\" or \"..\""));
        check("-w /etc/../shadow -p wa", Err("-w: \"/etc/../shadow\" is not an absolute path without \"//\", \".\" or \"..\""));
        check("-w /etc/app", Err("-w: needs -p PERMS (letters from rwxa)"));
        check("-w /etc/app -p wa -k", Err("-k: needs a value"));
        check("-w /etc/app -p wa -k this-key-is-much-longer-than-31-chars", Err("-k: a key is 1 to 31 letters, digits, '-', '_', '.' or ':', got \"this-key-is-much-longer-than-31-chars\""));
        check("-w /etc/app -p wa -F auid>=1000", Err("-F: needs -a ACTION,LIST before it (a watch takes -p and -k only)"));
        check("-e 2", Err("-e is not allowed in auditd.rules: rampart sets it from auditd.immutable"));
        check("-D", Err("-D is not allowed in auditd.rules: rampart deletes the previous rules itself"));
        check("-b 320", Err("-b is not allowed in auditd.rules: rampart sets it from auditd.backlog-limit"));
        check("-f 2", Err("-f is not allowed in auditd.rules: rampart sets the failure mode"));
        check("-R /tmp/x", Err("-R is not allowed in auditd.rules: rules cannot read other files"));
        check("-l", Err("\"-l\" is not an option auditd.rules takes (-w PATH -p PERMS, -a ACTION,LIST, -F, -S, -C, -k KEY)"));
        check("-a always,exit -S execve; reboot", Err("\"-a always,exit -S execve; reboot\": ';' has no place in an audit rule (no quotes, comments or shell metacharacters)"));
        check("-w /etc/a -p wa -k \"x\"", Err("\"-w /etc/a -p wa -k \\\"x\\\"\": '\"' has no place in an audit rule (no quotes, comments or shell metacharacters)"));
        check("-w /etc/a -p wa\n-e 0", Err("\"-w /etc/a -p wa\\n-e 0\": one rule per line, without control characters (found '\\n')"));
        check("-a sometimes,exit -S execve", Err("-a: \"sometimes,exit\" is not ACTION,LIST (action always or never; list exit, task, user, exclude or filesystem)"));
        check("-a always,entry -S execve", Err("-a: \"always,entry\" is not ACTION,LIST (action always or never; list exit, task, user, exclude or filesystem)"));
        check("-a always,task -S execve", Err("-S: system calls are filtered on the exit list only, not \"task\""));
        check("-S execve", Err("-S: needs -a ACTION,exit before it"));
        check("-a always,exit -S Execve", Err("-S: \"Execve\" is not a system call name (lower-case letters, digits, _; or \"all\")"));
        check("-a always,exit -S execve -F arch=b64", Err("-F arch: must come before -S, so that the names are read against its table"));
        check("-a always,exit -F arch=arm64 -S execve", Err("-F arch: \"arm64\" is not an architecture of this machine (b64, b32, x86_64 or i386)"));
        check("-a always,exit -F colour=red", Err("-F colour: unknown field (one of arch, auid, uid, euid, suid, fsuid, gid, egid, sgid, fsgid, pid, ppid, path, dir, perm, success, exit, key, inode, msgtype, exe, filetype, fstype, devmajor, devminor, sessionid, a0, a1, a2, a3, subj_*, obj_*)"));
        check("-a always,exit -F auid", Err("-F: \"auid\" is not FIELD OP VALUE (e.g. \"auid>=1000\")"));
        check("-a always,exit -F auid=>1000", Err("-F: \"auid=>1000\": one operator (one of != <= >= &= = < > &) between a field and its value"));
        check("-a always,exit -F path=tmp/x", Err("-F path: \"tmp/x\" is not an absolute path without \"//\", \".\" or \"..\""));
        check("-a always,exit -C euid<uid", Err("-C: fields are compared with = or !=, got \"<\""));
        check("-a always,exit -C euid!=colour", Err("-C: \"colour\" is not a field -C compares (auid, uid, euid, suid, fsuid, obj_uid, gid, egid, sgid, fsgid, obj_gid)"));
        check("-w /etc/a -p wa -a always,exit", Err("-a: a rule is either one watch (-w) or one syscall rule (-a)"));
        check("-k lonely", Err("\"-k lonely\": neither a watch (-w) nor a syscall rule (-a)"));
        check("", Err("an empty rule (e.g. \"-w /etc/app -p wa -k app\")"));
    }

    #[test]
    fn rules_tell_their_syscalls_table_paths_and_key() {
        let rule = "-a always,exit -F arch=b32 -S chown,fchown -S lchown -F auid>=1000 -k perm_mod";
        assert_eq!(syscalls_named(rule), ["chown", "fchown", "lchown"]);
        assert_eq!(syscall_table(rule), SyscallTable::I386);
        assert_eq!(syscall_table("-a always,exit -S execve"), SyscallTable::X86_64);
        assert!(syscalls_named("-a always,exit -F arch=b64 -S all").is_empty());
        assert_eq!(watched_paths("-w /var/log/sudo.log -p wa -k sudo_log_file"), [WatchedPath::File("/var/log/sudo.log".into())]);
        assert_eq!(watched_paths("-a always,exit -F dir=/srv -F perm=w"), [WatchedPath::Dir("/srv".into())]);
        assert_eq!(rule_key("-a always,exit -F arch=b64 -S mount -F key=mounts").as_deref(), Some("mounts"));
        assert_eq!(rule_key("-w /etc/hosts -p wa -k system-locale").as_deref(), Some("system-locale"));
    }

    fn source(text: &str) -> SourceText {
        SourceText { file: "profiles/x.toml".into(), text: text.to_string() }
    }

    fn layer(text: &str) -> Result<AuditdLayer, String> {
        #[derive(serde::Deserialize)]
        struct File {
            auditd: Option<RawAuditd>,
        }
        let source = source(text);
        let file: File = source.parse().map_err(|e| e.to_string())?;
        validate(&source, file.auditd).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_cis_and_debian() {
        let spec = finish(layer("").unwrap());
        assert_eq!(spec, AuditdSpec { enable: true, rules: vec![], max_log_file_mib: 32, num_logs: 8, backlog_limit: 8192, immutable: true });
    }

    #[test]
    fn fields_are_checked_where_written() {
        let check = |text: &str, expected: &str| assert_eq!(layer(text).unwrap_err(), expected, "{text}");
        check("[auditd]\nnum-logs = 1\n", "profiles/x.toml:2:12: auditd.num-logs: 1 is out of range (2 to 99)");
        check("[auditd]\nmax-log-file-mib = 2048\n", "profiles/x.toml:2:20: auditd.max-log-file-mib: 2048 is out of range (1 to 1024)");
        check("[auditd]\nbacklog-limit = 10\n", "profiles/x.toml:2:17: auditd.backlog-limit: 10 is out of range (64 to 1048576)");
        check("[auditd]\nrules = [\"-w /etc/x -p wa\",\n  \"-e 0\"]\n", "profiles/x.toml:3:3: auditd.rules: -e is not allowed in auditd.rules: rampart sets it from auditd.immutable");
        check("[auditd]\nimutable = false\n", "profiles/x.toml:2:1: unknown field `imutable`, expected one of `enable`, `rules`, `max-log-file-mib`, `num-logs`, `backlog-limit`, `immutable`");
    }

    #[test]
    fn child_scalars_win_and_rules_add_up() {
        let mut base = layer("[auditd]\nnum-logs = 4\nbacklog-limit = 16384\nrules = [\"-w /srv/a -p wa -k a\"]\n").unwrap();
        let child = layer("[auditd]\nnum-logs = 10\nimmutable = false\nrules = [\"-w  /srv/b -p wa -k b\"]\n").unwrap();
        merge(&mut base, child);
        let spec = finish(base);
        assert_eq!(spec.num_logs, 10);
        assert_eq!(spec.backlog_limit, 16384);
        assert!(!spec.immutable);
        assert!(spec.enable);
        let rules: Vec<(&str, &str)> = spec.rules.iter().map(|r| (r.value.as_str(), r.at.as_str())).collect();
        assert_eq!(rules, [("-w /srv/a -p wa -k a", "profiles/x.toml:4:10"), ("-w /srv/b -p wa -k b", "profiles/x.toml:4:10")]);
    }
}
