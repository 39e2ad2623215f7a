//! `[services.sandboxes."<unit>"]`: systemd sandboxing directives a profile
//! gives a service, checked against the sandboxing directives of systemd 252
//! (Debian 12) where written, merged by unit and then by directive. Pure: no
//! IO; whether the image runs the unit is checked once the profile is whole.

use std::collections::BTreeMap;

use toml::Spanned;

use super::controls::Sited;
use crate::located::{LocatedError, SourceText};

/// Whether a directive may be given more than once (one line per value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lines {
    One,
    Many,
}

/// The sandboxing, security and capability directives of systemd 252's
/// systemd.exec(5), the directories it makes writable under
/// `ProtectSystem=strict`, and the device and network access directives of
/// systemd.resource-control(5). Nothing that changes what a service runs.
const DIRECTIVES: &[(&str, Lines)] = &[
    // credentials
    ("User", Lines::One),
    ("Group", Lines::One),
    ("DynamicUser", Lines::One),
    ("SupplementaryGroups", Lines::Many),
    // capabilities and security
    ("CapabilityBoundingSet", Lines::Many),
    ("AmbientCapabilities", Lines::Many),
    ("NoNewPrivileges", Lines::One),
    ("SecureBits", Lines::Many),
    ("AppArmorProfile", Lines::One),
    ("UMask", Lines::One),
    ("KeyringMode", Lines::One),
    // sandboxing
    ("RootDirectory", Lines::One),
    ("ProtectSystem", Lines::One),
    ("ProtectHome", Lines::One),
    ("RuntimeDirectory", Lines::Many),
    ("StateDirectory", Lines::Many),
    ("CacheDirectory", Lines::Many),
    ("LogsDirectory", Lines::Many),
    ("ConfigurationDirectory", Lines::Many),
    ("RuntimeDirectoryMode", Lines::One),
    ("StateDirectoryMode", Lines::One),
    ("CacheDirectoryMode", Lines::One),
    ("LogsDirectoryMode", Lines::One),
    ("ConfigurationDirectoryMode", Lines::One),
    ("RuntimeDirectoryPreserve", Lines::One),
    ("ReadWritePaths", Lines::Many),
    ("ReadOnlyPaths", Lines::Many),
    ("InaccessiblePaths", Lines::Many),
    ("ExecPaths", Lines::Many),
    ("NoExecPaths", Lines::Many),
    ("TemporaryFileSystem", Lines::Many),
    ("BindPaths", Lines::Many),
    ("BindReadOnlyPaths", Lines::Many),
    ("PrivateTmp", Lines::One),
    ("PrivateDevices", Lines::One),
    ("PrivateNetwork", Lines::One),
    ("PrivateIPC", Lines::One),
    ("PrivateUsers", Lines::One),
    ("PrivateMounts", Lines::One),
    ("MountFlags", Lines::One),
    ("ProtectHostname", Lines::One),
    ("ProtectClock", Lines::One),
    ("ProtectKernelTunables", Lines::One),
    ("ProtectKernelModules", Lines::One),
    ("ProtectKernelLogs", Lines::One),
    ("ProtectControlGroups", Lines::One),
    ("ProtectProc", Lines::One),
    ("ProcSubset", Lines::One),
    ("RestrictAddressFamilies", Lines::Many),
    ("RestrictFileSystems", Lines::Many),
    ("RestrictNamespaces", Lines::Many),
    ("LockPersonality", Lines::One),
    ("MemoryDenyWriteExecute", Lines::One),
    ("RestrictRealtime", Lines::One),
    ("RestrictSUIDSGID", Lines::One),
    ("RemoveIPC", Lines::One),
    // system calls
    ("SystemCallFilter", Lines::Many),
    ("SystemCallErrorNumber", Lines::One),
    ("SystemCallArchitectures", Lines::Many),
    ("SystemCallLog", Lines::Many),
    // systemd.resource-control: devices and network access
    ("DevicePolicy", Lines::One),
    ("DeviceAllow", Lines::Many),
    ("IPAddressAllow", Lines::Many),
    ("IPAddressDeny", Lines::Many),
    ("SocketBindAllow", Lines::Many),
    ("SocketBindDeny", Lines::Many),
    ("RestrictNetworkInterfaces", Lines::Many),
];

/// The directive names rampart takes, for the README and the tests.
pub fn directive_names() -> impl Iterator<Item = &'static str> {
    DIRECTIVES.iter().map(|(name, _)| *name)
}

/// The directives one profile gives one service: directive -> its values
/// (one drop-in line each), with where each directive was given.
pub type UnitDirectives = BTreeMap<String, Sited<Vec<String>>>;

/// A service's directives as the merged profile gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitSandbox {
    /// file:line:col of the unit's name, in the last file that named it.
    pub at: String,
    pub directives: UnitDirectives,
}

/// One file's `[services.sandboxes]`, validated, not yet merged.
pub type SandboxesLayer = BTreeMap<String, UnitSandbox>;

fn closest_directive(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    directive_names()
        .map(|known| (super::kernel::edit_distance(&lower, &known.to_ascii_lowercase()), known))
        .filter(|(distance, _)| *distance <= 3)
        .min()
        .map(|(_, known)| known)
}

fn parse_directive(name: &str) -> Result<Lines, String> {
    if let Some((_, lines)) = DIRECTIVES.iter().find(|(known, _)| *known == name) {
        return Ok(*lines);
    }
    let hint = closest_directive(name).map(|k| format!(" (did you mean {k}?)")).unwrap_or_default();
    Err(format!(
        "unknown directive {name:?}: not one of systemd 252's sandboxing directives that rampart takes{hint}; README's profile reference lists them"
    ))
}

/// One value as it goes into a drop-in line after `Directive=`.
fn parse_value(value: &str) -> Result<String, String> {
    if value.chars().any(char::is_control) {
        return Err("a value is one line of printable text (it becomes one line of a systemd drop-in)".into());
    }
    if value.ends_with('\\') {
        return Err("a value may not end with a backslash (systemd would join the next line to it)".into());
    }
    Ok(value.trim().to_string())
}

/// A value as the profile writes it: a string, a boolean (yes or no), or a
/// list of strings for a directive that may be given more than once.
fn parse_values(value: &toml::Value, lines: Lines) -> Result<Vec<String>, String> {
    match value {
        toml::Value::String(s) => Ok(vec![parse_value(s)?]),
        toml::Value::Boolean(b) => Ok(vec![if *b { "yes" } else { "no" }.to_string()]),
        toml::Value::Array(items) if lines == Lines::Many => items
            .iter()
            .map(|item| match item {
                toml::Value::String(s) => parse_value(s),
                _ => Err("a list of values holds strings only".to_string()),
            })
            .collect(),
        toml::Value::Array(_) => Err("takes one value, not a list".into()),
        toml::Value::Integer(_) | toml::Value::Float(_) => {
            Err("give the value as a string, as systemd reads it (e.g. UMask = \"0077\", not 0077)".into())
        }
        _ => Err("a value is a string, a boolean or a list of strings".into()),
    }
}

pub fn validate(
    source: &SourceText,
    sandboxes: &BTreeMap<Spanned<String>, BTreeMap<Spanned<String>, Spanned<toml::Value>>>,
) -> Result<SandboxesLayer, LocatedError> {
    let mut layer = SandboxesLayer::new();
    for (unit, directives) in sandboxes {
        let unit_name = source.check(unit, "services.sandboxes", |s| {
            super::controls::parse_unit_name(s).and_then(|name| {
                if name.ends_with(".service") {
                    Ok(name)
                } else {
                    Err(format!("{name}: sandboxing directives belong to a .service unit"))
                }
            })
        })?;
        let field = format!("services.sandboxes.\"{unit_name}\"");
        let mut parsed = UnitDirectives::new();
        for (directive, value) in directives {
            let lines = source.check(directive, &field, |name| parse_directive(name))?;
            let name = directive.get_ref();
            let values = source.check(value, &format!("{field}.{name}"), |v| parse_values(v, lines))?;
            parsed.insert(name.clone(), Sited { value: values, at: source.location(directive.span().start) });
        }
        layer.insert(unit_name, UnitSandbox { at: source.location(unit.span().start), directives: parsed });
    }
    Ok(layer)
}

/// By unit, then by directive: a child's directive replaces the base's
/// directive of that name for that unit, and leaves its others.
pub fn merge(base: &mut SandboxesLayer, child: SandboxesLayer) {
    for (unit, sandbox) in child {
        match base.get_mut(&unit) {
            Some(existing) => {
                existing.at = sandbox.at;
                existing.directives.extend(sandbox.directives);
            }
            None => {
                base.insert(unit, sandbox);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_are_known_by_their_exact_name_with_a_hint_for_typos() {
        assert_eq!(parse_directive("ProtectSystem"), Ok(Lines::One));
        assert_eq!(parse_directive("ReadWritePaths"), Ok(Lines::Many));
        assert!(parse_directive("ProtectSystm").unwrap_err().contains("(did you mean ProtectSystem?)"));
        assert!(parse_directive("protectsystem").unwrap_err().contains("(did you mean ProtectSystem?)"));
        let not_sandboxing = parse_directive("ExecStart").unwrap_err();
        assert!(not_sandboxing.starts_with("unknown directive \"ExecStart\": not one of"), "{not_sandboxing}");
    }

    #[test]
    fn readme_lists_every_directive_rampart_takes() {
        let readme = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
        let row = readme.lines().find(|line| line.starts_with("| `services.sandboxes.")).expect("README has a services.sandboxes row");
        for name in directive_names() {
            let listed = row.contains(&format!("`{name}`")) || (name.ends_with("DirectoryMode") && row.contains("`...Mode`"));
            assert!(listed, "README's services.sandboxes row does not list {name}");
        }
    }

    #[test]
    fn values_are_one_printable_line_each() {
        let check = |value: toml::Value, lines: Lines, expected: Result<Vec<&str>, &str>| {
            let expected = expected.map(|v| v.into_iter().map(String::from).collect()).map_err(String::from);
            assert_eq!(parse_values(&value, lines), expected, "{value:?}");
        };
        check("strict".into(), Lines::One, Ok(vec!["strict"]));
        check(true.into(), Lines::One, Ok(vec!["yes"]));
        check(false.into(), Lines::One, Ok(vec!["no"]));
        check("".into(), Lines::Many, Ok(vec![""]));
        check(vec!["/var/lib/nginx", "/var/log/nginx"].into(), Lines::Many, Ok(vec!["/var/lib/nginx", "/var/log/nginx"]));
        check(vec!["yes"].into(), Lines::One, Err("takes one value, not a list"));
        check("/srv\nExecStartPre=/bin/sh".into(), Lines::Many, Err("a value is one line of printable text (it becomes one line of a systemd drop-in)"));
        check("/srv\u{1b}[2J".into(), Lines::Many, Err("a value is one line of printable text (it becomes one line of a systemd drop-in)"));
        check("/srv \\".into(), Lines::Many, Err("a value may not end with a backslash (systemd would join the next line to it)"));
        check(77.into(), Lines::One, Err("give the value as a string, as systemd reads it (e.g. UMask = \"0077\", not 0077)"));
    }
}
