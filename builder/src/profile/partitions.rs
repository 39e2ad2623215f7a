//! `[image] partitions`: the CIS Debian 12 1.1.2 layout. /home, /var,
//! /var/tmp, /var/log and /var/log/audit are file systems of their own, each
//! mounted with the options CIS asks (`layout::DATA_PARTITIONS`), with a
//! size per mount point; a profile changes a size, or drops a partition with
//! "none". On by default. Pure.

use std::collections::BTreeMap;

use super::controls::Sited;
use super::types::ImageSize;
use crate::layout::{DataPartition, DATA_PARTITIONS};
use crate::located::{LocatedError, SourceText};
use crate::profile::auditd::AuditdSpec;
use crate::profile::monitoring::LoggingSpec;

/// One separate partition: its place in the layout and its size in MiB (for
/// /var, the least: it grows to fill the disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSpec {
    pub partition: &'static DataPartition,
    pub size_mib: u64,
    /// Where the profile set the size; `None`: rampart's default.
    pub at: Option<String>,
}

/// Per mount point: a size, or `None` for "none" (kept on the root).
#[derive(Debug, Default)]
pub struct PartitionsLayer {
    sizes: BTreeMap<&'static str, Option<Sited<u64>>>,
}

/// The smallest partition rampart makes.
const LEAST_MIB: u64 = 32;
/// What the auditd partition keeps free beyond its logs: auditd's
/// space_left (75 MiB in Debian's auditd.conf) and the file system's own.
const AUDIT_RESERVE_MIB: u64 = 128;

/// What the log partition keeps beyond the caps: wtmp, btmp, lastlog,
/// process accounting, and journald's own free space (SystemKeepFree).
const LOG_RESERVE_MIB: u64 = 128;

/// Default sizes, MiB. /var is the least it gets: it takes the rest of the disk.
fn default_mib(mount: &str, auditd: &AuditdSpec, logging: &LoggingSpec) -> u64 {
    match mount {
        "/home" => 256,
        "/var" => 512,
        "/var/tmp" => 256,
        "/var/log" => log_least_mib(logging).div_ceil(64) * 64,
        "/var/log/audit" => audit_least_mib(auditd).div_ceil(64) * 64,
        _ => unreachable!("a mount point of DATA_PARTITIONS"),
    }
}

/// The auditd partition holds every rotated log and the reserve below
/// which auditd acts (space_left, then admin_space_left: single user).
pub fn audit_least_mib(auditd: &AuditdSpec) -> u64 {
    u64::from(auditd.max_log_file_mib) * u64::from(auditd.num_logs) + AUDIT_RESERVE_MIB
}

/// The log partition holds the journal at its cap and rsyslog's three files
/// at theirs: the current one and the newest rotated one uncompressed
/// (delaycompress), the older ones compressed at least 4 to 1.
pub fn log_least_mib(logging: &LoggingSpec) -> u64 {
    let files = if logging.enable {
        let each = u64::from(logging.file_max_mib);
        crate::stages::logging::LOG_FILES.len() as u64 * (2 * each + u64::from(logging.files_kept.saturating_sub(1)) * each.div_ceil(4))
    } else {
        0
    };
    u64::from(logging.journal_max_mib) + files + LOG_RESERVE_MIB
}

pub fn validate(source: &SourceText, raw: Option<&BTreeMap<String, toml::Spanned<String>>>) -> Result<PartitionsLayer, LocatedError> {
    let mut layer = PartitionsLayer::default();
    let Some(raw) = raw else { return Ok(layer) };
    for (mount, value) in raw {
        let field = format!("image.partitions.\"{mount}\"");
        let Some(partition) = DATA_PARTITIONS.iter().find(|p| p.mount == mount) else {
            let known: Vec<&str> = DATA_PARTITIONS.iter().map(|p| p.mount).collect();
            return Err(source.error(value, format!("{field}: rampart makes separate partitions for {} only", known.join(", "))));
        };
        let size = if value.get_ref() == "none" {
            None
        } else {
            let bytes = source.check(value, &field, |s| ImageSize::parse_any(s))?.bytes();
            if bytes % (1 << 20) != 0 || bytes < LEAST_MIB << 20 {
                return Err(source.error(value, format!("{field}: {:?} is not a whole number of MiB of at least {LEAST_MIB}M (or \"none\")", value.get_ref())));
            }
            Some(Sited { value: bytes >> 20, at: source.location(value.span().start) })
        };
        layer.sizes.insert(partition.mount, size);
    }
    Ok(layer)
}

/// A child's sizes replace its base's, mount point by mount point.
pub fn merge(base: &mut PartitionsLayer, child: PartitionsLayer) {
    base.sizes.extend(child.sizes);
}

/// The partitions of the image, in `DATA_PARTITIONS` order; the log and
/// auditd partitions checked against the caps of what they hold.
pub fn finish(layer: PartitionsLayer, auditd: &AuditdSpec, logging: &LoggingSpec) -> Result<Vec<PartitionSpec>, LocatedError> {
    let mut partitions = Vec::new();
    for partition in DATA_PARTITIONS {
        let (size_mib, at) = match layer.sizes.get(partition.mount) {
            Some(None) => continue,
            Some(Some(size)) => (size.value, Some(size.at.clone())),
            None => (default_mib(partition.mount, auditd, logging), None),
        };
        // What the log partitions must hold: the least size, and what it is.
        let holds = match partition.mount {
            "/var/log/audit" if auditd.enable => Some((
                audit_least_mib(auditd),
                format!(
                    "hold auditd's {} logs of {} MiB (auditd.num-logs, auditd.max-log-file-mib) and keep the {AUDIT_RESERVE_MIB} MiB free that auditd's space_left and admin_space_left watch (below the latter it takes the machine to single user)",
                    auditd.num_logs, auditd.max_log_file_mib
                ),
                "",
            )),
            "/var/log" => Some((
                log_least_mib(logging),
                format!(
                    "hold the journal at its cap ({} MiB, logging.journal-max-mib), syslog, auth.log and kern.log at theirs ({} MiB before rotation, {} kept: logging.file-max-mib, logging.files-kept) and {LOG_RESERVE_MIB} MiB for the rest",
                    logging.journal_max_mib, logging.file_max_mib, logging.files_kept
                ),
                " or lower the caps",
            )),
            _ => None,
        };
        if let Some((least, what, or)) = holds.filter(|(least, _, _)| size_mib < *least) {
            return Err(LocatedError {
                location: at.clone().unwrap_or_default(),
                message: format!("image.partitions.\"{}\": {size_mib} MiB cannot {what}; give at least {least}M{or}", partition.mount),
            });
        }
        partitions.push(PartitionSpec { partition, size_mib, at });
    }
    Ok(partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str) -> SourceText {
        SourceText { file: "p.toml".into(), text: text.to_string() }
    }

    fn parse(text: &str) -> Result<PartitionsLayer, LocatedError> {
        #[derive(serde::Deserialize)]
        struct T {
            partitions: BTreeMap<String, toml::Spanned<String>>,
        }
        let t: T = toml::from_str(text).unwrap();
        validate(&source(text), Some(&t.partitions))
    }

    fn auditd() -> AuditdSpec {
        crate::profile::auditd::finish(Default::default())
    }

    fn logging() -> LoggingSpec {
        crate::profile::monitoring::finish(Default::default()).0
    }

    #[test]
    fn the_cis_layout_is_the_default_and_sizes_audit_for_auditd() {
        let parts = finish(PartitionsLayer::default(), &auditd(), &logging()).unwrap();
        let mounts: Vec<&str> = parts.iter().map(|p| p.partition.mount).collect();
        assert_eq!(mounts, ["/home", "/var", "/var/tmp", "/var/log", "/var/log/audit"]);
        let audit = parts.iter().find(|p| p.partition.mount == "/var/log/audit").unwrap();
        assert!(audit.size_mib >= audit_least_mib(&auditd()));
        let log = parts.iter().find(|p| p.partition.mount == "/var/log").unwrap();
        assert_eq!((log_least_mib(&logging()), log.size_mib), (648, 704));
    }

    #[test]
    fn a_child_resizes_or_drops_partitions() {
        let mut base = parse("[partitions]\n\"/home\" = \"1G\"\n").unwrap();
        merge(&mut base, parse("[partitions]\n\"/var/tmp\" = \"none\"\n\"/var\" = \"2G\"\n").unwrap());
        let parts = finish(base, &auditd(), &logging()).unwrap();
        let sizes: Vec<(&str, u64)> = parts.iter().map(|p| (p.partition.mount, p.size_mib)).collect();
        assert_eq!(&sizes[..2], [("/home", 1024), ("/var", 2048)]);
        assert!(!sizes.iter().any(|(m, _)| *m == "/var/tmp"));
    }

    #[test]
    fn bad_partitions_name_the_field() {
        let e = parse("[partitions]\n\"/srv\" = \"1G\"\n").unwrap_err();
        assert_eq!(e.location, "p.toml:2:10");
        assert!(e.message.contains("image.partitions.\"/srv\": rampart makes separate partitions for /home, /var"), "{}", e.message);
        let e = parse("[partitions]\n\"/var\" = \"16M\"\n").unwrap_err();
        assert!(e.message.contains("at least 32M"), "{}", e.message);
        let e = parse("[partitions]\n\"/var\" = \"lots\"\n").unwrap_err();
        assert!(e.message.contains("image.partitions.\"/var\": \"lots\" is not a size"), "{}", e.message);
        let e = finish(parse("[partitions]\n\"/var/log/audit\" = \"64M\"\n").unwrap(), &auditd(), &logging()).unwrap_err();
        assert_eq!(e.location, "p.toml:2:20");
        assert!(e.message.contains("cannot hold auditd's 8 logs of 32 MiB"), "{}", e.message);
        let e = finish(parse("[partitions]\n\"/var/log\" = \"256M\"\n").unwrap(), &auditd(), &logging()).unwrap_err();
        assert!(e.message.contains("cannot hold the journal at its cap (256 MiB"), "{}", e.message);
    }
}
