//! The monitoring sections of a profile: `[logging]` (rsyslog with its
//! configuration on the read-only partition, persistent journal, forwarding
//! to a remote log host) and `[integrity]` (the AIDE baseline made at build
//! time). Validated where written, merged field by field, defaults applied.
//! Pure: no IO.

use std::fmt;

use super::controls::Sited;
use super::raw;
use super::types::Port;
use crate::located::{LocatedError, SourceText};

/// A remote log host: a DNS name or an IP address, and a TCP port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogHost {
    pub host: String,
    pub port: Port,
}

impl fmt::Display for LogHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl LogHost {
    pub fn parse(s: &str) -> Result<LogHost, String> {
        let bad = || format!("{s:?} is not host:port (e.g. \"logs.example.org:514\", \"192.0.2.7:514\" or \"[2001:db8::7]:514\")");
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, port) = rest.split_once("]:").ok_or_else(bad)?;
            host.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
            (host, port)
        } else {
            let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
            if host.contains(':') {
                return Err(bad());
            }
            let is_address = host.parse::<std::net::Ipv4Addr>().is_ok();
            let looks_numeric = host.chars().all(|c| c.is_ascii_digit() || c == '.');
            if !is_address && (looks_numeric || !is_dns_name(host)) {
                return Err(bad());
            }
            (host, port)
        };
        let port: i64 = port.parse().map_err(|_| bad())?;
        let port = Port::from_i64(port).map_err(|e| format!("{s:?}: {e}"))?;
        Ok(LogHost { host: host.to_string(), port })
    }
}

pub fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// `[logging]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingSpec {
    pub enable: bool,
    /// Where every message is forwarded (TCP, disk-assisted queue).
    pub remote: Option<Sited<LogHost>>,
    /// The most the forwarding queue may hold on disk while the host is down.
    pub queue_max_mib: u32,
    /// journald's SystemMaxUse.
    pub journal_max_mib: u32,
    /// logrotate's maxsize for syslog, auth.log and kern.log (checked hourly).
    pub file_max_mib: u32,
    /// logrotate's rotate count.
    pub files_kept: u32,
}

/// `[integrity]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntegritySpec {
    pub enable: bool,
    /// Paths left out of the baseline besides rampart's own list.
    pub exclude: Vec<Sited<String>>,
    /// Further AIDE rule lines, checked by the image's `aide --config-check`.
    pub rules: Vec<Sited<String>>,
    /// When the check runs: a systemd calendar expression.
    pub schedule: Sited<String>,
    /// Installed packages' files checked against dpkg's digests (debsums) too.
    pub packages: bool,
}

/// One file's settings of these sections, validated, not yet merged.
#[derive(Debug, Default)]
pub struct MonitoringLayer {
    logging_enable: Option<bool>,
    remote: Option<Option<Sited<LogHost>>>,
    queue_max_mib: Option<u32>,
    journal_max_mib: Option<u32>,
    file_max_mib: Option<u32>,
    files_kept: Option<u32>,
    integrity_enable: Option<bool>,
    integrity_packages: Option<bool>,
    exclude: Vec<Sited<String>>,
    rules: Vec<Sited<String>>,
    schedule: Option<Sited<String>>,
}

fn sited<T, U>(source: &SourceText, value: &toml::Spanned<T>, parsed: U) -> Sited<U> {
    Sited { value: parsed, at: source.location(value.span().start) }
}

/// An absolute path without white space or control characters.
pub fn parse_excluded_path(s: &str) -> Result<String, String> {
    if !s.starts_with('/') || s.len() < 2 {
        return Err(format!("{s:?} is not an absolute path (e.g. \"/srv/cache\")"));
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) || s[1..].trim_end_matches('/').split('/').any(|part| matches!(part, "" | "." | "..")) {
        return Err(format!("{s:?}: a path below / without white space, \"//\", \".\" or \"..\" (e.g. \"/srv/cache\")"));
    }
    Ok(s.trim_end_matches('/').to_string())
}

/// One AIDE selection line: `REGEX [TYPES] ATTRIBUTES`, `=REGEX ...` or `!REGEX`.
pub fn parse_rule(s: &str) -> Result<String, String> {
    let rule = s.trim();
    let starts_right = rule.starts_with('/') || rule.starts_with("=/") || rule.starts_with("!/");
    if !starts_right || rule.contains('\n') || rule.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!(
            "{s:?} is not an AIDE selection line (one line: \"/path ATTRIBUTES\", \"=/path ATTRIBUTES\" or \"!/path\", e.g. \"/srv/app Content\")"
        ));
    }
    Ok(rule.to_string())
}

pub fn parse_schedule(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() || s.len() > 200 || s.chars().any(|c| c.is_control()) {
        return Err(format!("{s:?} is not a systemd calendar expression (e.g. \"daily\" or \"*-*-* 03:30\")"));
    }
    Ok(s.to_string())
}

pub fn validate(
    source: &SourceText,
    logging: Option<raw::RawLogging>,
    integrity: Option<raw::RawIntegrity>,
) -> Result<MonitoringLayer, LocatedError> {
    let mut layer = MonitoringLayer::default();
    if let Some(logging) = logging {
        layer.logging_enable = logging.enable;
        if let Some(remote) = &logging.remote {
            layer.remote = Some(if remote.get_ref().is_empty() {
                None
            } else {
                Some(sited(source, remote, source.check(remote, "logging.remote", |s| LogHost::parse(s))?))
            });
        }
        let in_range = |value: &Option<toml::Spanned<i64>>, field: &str, low: i64, high: i64| -> Result<Option<u32>, LocatedError> {
            let Some(value) = value else { return Ok(None) };
            let checked = source.check(value, field, |n| if (low..=high).contains(n) { Ok(*n as u32) } else { Err(format!("{n} is out of range ({low} to {high})")) })?;
            Ok(Some(checked))
        };
        layer.queue_max_mib = in_range(&logging.queue_max_mib, "logging.queue-max-mib", 16, 65_536)?;
        layer.journal_max_mib = in_range(&logging.journal_max_mib, "logging.journal-max-mib", 16, 65_536)?;
        layer.file_max_mib = in_range(&logging.file_max_mib, "logging.file-max-mib", 1, 65_536)?;
        layer.files_kept = in_range(&logging.files_kept, "logging.files-kept", 1, 100)?;
    }
    if let Some(integrity) = integrity {
        layer.integrity_enable = integrity.enable;
        layer.integrity_packages = integrity.packages;
        for path in &integrity.exclude {
            let parsed = source.check(path, "integrity.exclude", |s| parse_excluded_path(s))?;
            layer.exclude.push(sited(source, path, parsed));
        }
        for rule in &integrity.rules {
            let parsed = source.check(rule, "integrity.rules", |s| parse_rule(s))?;
            layer.rules.push(sited(source, rule, parsed));
        }
        if let Some(schedule) = &integrity.schedule {
            layer.schedule = Some(sited(source, schedule, source.check(schedule, "integrity.schedule", |s| parse_schedule(s))?));
        }
    }
    Ok(layer)
}

/// The child's values win field by field; exclusions and rules add up.
pub fn merge(base: &mut MonitoringLayer, child: MonitoringLayer) {
    super::take(&mut base.logging_enable, child.logging_enable);
    super::take(&mut base.remote, child.remote);
    super::take(&mut base.queue_max_mib, child.queue_max_mib);
    super::take(&mut base.journal_max_mib, child.journal_max_mib);
    super::take(&mut base.file_max_mib, child.file_max_mib);
    super::take(&mut base.files_kept, child.files_kept);
    super::take(&mut base.integrity_enable, child.integrity_enable);
    super::take(&mut base.integrity_packages, child.integrity_packages);
    super::take(&mut base.schedule, child.schedule);
    base.exclude.extend(child.exclude);
    base.rules.extend(child.rules);
}

pub fn finish(layer: MonitoringLayer) -> (LoggingSpec, IntegritySpec) {
    let logging = LoggingSpec {
        enable: layer.logging_enable.unwrap_or(true),
        remote: layer.remote.flatten(),
        queue_max_mib: layer.queue_max_mib.unwrap_or(1024),
        journal_max_mib: layer.journal_max_mib.unwrap_or(256),
        file_max_mib: layer.file_max_mib.unwrap_or(32),
        files_kept: layer.files_kept.unwrap_or(4),
    };
    let integrity = IntegritySpec {
        enable: layer.integrity_enable.unwrap_or(true),
        exclude: layer.exclude,
        rules: layer.rules,
        schedule: layer.schedule.unwrap_or(Sited { value: "daily".to_string(), at: "rampart's default".to_string() }),
        packages: layer.integrity_packages.unwrap_or(true),
    };
    (logging, integrity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_hosts_are_host_and_port() {
        let check = |input: &str, expected: Result<&str, &str>| {
            let got = LogHost::parse(input).map(|h| h.to_string());
            assert_eq!(got.as_deref().map_err(|e| e.as_str()), expected, "{input}");
        };
        check("logs.example.org:514", Ok("logs.example.org:514"));
        check("10.77.0.2:514", Ok("10.77.0.2:514"));
        check("[2001:db8::7]:6514", Ok("[2001:db8::7]:6514"));
        check("logs", Err("\"logs\" is not host:port (e.g. \"logs.example.org:514\", \"192.0.2.7:514\" or \"[2001:db8::7]:514\")"));
        check("10.77.0.256:514", Err("\"10.77.0.256:514\" is not host:port (e.g. \"logs.example.org:514\", \"192.0.2.7:514\" or \"[2001:db8::7]:514\")"));
        check("2001:db8::7:514", Err("\"2001:db8::7:514\" is not host:port (e.g. \"logs.example.org:514\", \"192.0.2.7:514\" or \"[2001:db8::7]:514\")"));
        check("bad_name:514", Err("\"bad_name:514\" is not host:port (e.g. \"logs.example.org:514\", \"192.0.2.7:514\" or \"[2001:db8::7]:514\")"));
        check("logs:70000", Err("\"logs:70000\": 70000 is not a port (1 to 65535)"));
    }

    #[test]
    fn excluded_paths_and_rules_are_checked() {
        assert_eq!(parse_excluded_path("/srv/cache/").as_deref(), Ok("/srv/cache"));
        assert!(parse_excluded_path("srv").is_err());
        assert!(parse_excluded_path("/srv/../etc").is_err());
        assert!(parse_excluded_path("/srv/a b").is_err());
        assert!(parse_excluded_path("//").is_err(), "would exclude everything");
        assert!(parse_excluded_path("/srv//x").is_err());
        assert!(parse_excluded_path("/./srv").is_err());
        assert_eq!(parse_rule(" /srv/app Content ").as_deref(), Ok("/srv/app Content"));
        assert!(parse_rule("!/srv/tmp").is_ok());
        assert!(parse_rule("=/srv$ Perms").is_ok());
        assert!(parse_rule("database_in=file:/tmp/x").is_err());
        assert!(parse_rule("@@include /tmp/x").is_err());
    }
}
