//! `[backups]`: what is backed up, to which separate disk or file system,
//! when, and how many daily, weekly and monthly archives are kept.
//! Validated where written (file:line:col and the field), merged field by
//! field, defaults applied. Pure: no IO.

use super::controls::Sited;
use super::raw;
use crate::located::{LocatedError, SourceText};

/// What is backed up when the profile names nothing.
pub const DEFAULT_PATHS: &[&str] = &["/etc", "/home", "/root", "/var/lib", "/var/log"];

pub const DEFAULT_KEEP_DAILY: u32 = 7;
pub const DEFAULT_KEEP_WEEKLY: u32 = 4;
pub const DEFAULT_KEEP_MONTHLY: u32 = 6;

/// Executables borgbackup brings that Debian 12 builds without PIE: the
/// ELF audit lists them with this reason instead of counting them.
pub const ALLOWED_WEAK: &[(&str, &str)] =
    &[("/usr/bin/python3.11", "[backups]: borgbackup runs on Debian 12's python3.11, which Debian builds without PIE")];

/// Where the archives go: never the disk that is backed up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupTarget {
    /// A whole block device: given an ext4 file system on first use when it
    /// holds nothing at all, mounted only while a backup runs.
    Device(String),
    /// A separate file system, already mounted there.
    Directory(String),
}

/// `[backups]`, merged and with its defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupsSpec {
    pub enable: bool,
    pub paths: Vec<String>,
    /// `None` only when backups are off.
    pub target: Option<Sited<BackupTarget>>,
    /// A systemd calendar expression.
    pub schedule: Sited<String>,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
}

/// One file's `[backups]`, validated, not yet merged.
#[derive(Debug, Default)]
pub struct BackupsLayer {
    enable: Option<(bool, String)>,
    paths: Option<Vec<Sited<String>>>,
    target: Option<Sited<BackupTarget>>,
    schedule: Option<Sited<String>>,
    keep_daily: Option<u32>,
    keep_weekly: Option<u32>,
    keep_monthly: Option<u32>,
}

fn sited<T, U>(source: &SourceText, value: &toml::Spanned<T>, parsed: U) -> Sited<U> {
    Sited { value: parsed, at: source.location(value.span().start) }
}

/// An absolute, normalised path that a shell word and a borg pattern can
/// hold as it is: no white space, quotes, globs or `..`.
fn parse_plain_path(s: &str, example: &str) -> Result<String, String> {
    let trimmed = if s.len() > 1 { s.trim_end_matches('/') } else { s };
    let plain = trimmed.starts_with('/')
        && trimmed.len() > 1
        && trimmed[1..].split('/').all(|part| !matches!(part, "" | "." | ".."))
        && trimmed.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+@:".contains(c));
    if plain {
        Ok(trimmed.to_string())
    } else {
        Err(format!(
            "{s:?} is not an absolute path below / of letters, digits and ._-+@: (no \"..\", \"//\", spaces or wildcards; e.g. {example:?})"
        ))
    }
}

pub fn parse_backup_path(s: &str) -> Result<String, String> {
    parse_plain_path(s, "/srv/data")
}

pub fn parse_device(s: &str) -> Result<String, String> {
    let path = parse_plain_path(s, "/dev/disk/by-id/virtio-backup")?;
    if !path.starts_with("/dev/") {
        return Err(format!("{s:?} is not a block device path under /dev (e.g. \"/dev/disk/by-id/virtio-backup\")"));
    }
    Ok(path)
}

pub fn parse_directory(s: &str) -> Result<String, String> {
    let path = parse_plain_path(s, "/srv/backup")?;
    let system = ["/dev", "/proc", "/sys", "/run", "/tmp", "/etc", "/usr", "/boot", "/var"];
    if system.contains(&path.as_str()) {
        return Err(format!("{s:?} is a system directory, not the mount point of a separate file system (e.g. \"/srv/backup\")"));
    }
    Ok(path)
}

fn parse_keep(n: &i64) -> Result<u32, String> {
    if (0..=1000).contains(n) {
        Ok(*n as u32)
    } else {
        Err(format!("{n} is out of range (0 to 1000)"))
    }
}

/// Whether `inner` is `outer` or below it.
pub fn is_within(inner: &str, outer: &str) -> bool {
    inner == outer || outer == "/" || inner.strip_prefix(outer).is_some_and(|rest| rest.starts_with('/'))
}

pub fn validate(source: &SourceText, backups: Option<raw::RawBackups>) -> Result<BackupsLayer, LocatedError> {
    let mut layer = BackupsLayer::default();
    let Some(backups) = backups else { return Ok(layer) };
    if let Some(enable) = &backups.enable {
        layer.enable = Some((*enable.get_ref(), source.location(enable.span().start)));
    }
    if let Some(paths) = &backups.paths {
        let mut parsed: Vec<Sited<String>> = Vec::new();
        for path in paths {
            let value = source.check(path, "backups.paths", |s| parse_backup_path(s))?;
            if let Some(other) = parsed.iter().find(|p| is_within(&value, &p.value) || is_within(&p.value, &value)) {
                return Err(source.error(path, format!("backups.paths: {value} overlaps {} (given at {})", other.value, other.at)));
            }
            parsed.push(sited(source, path, value));
        }
        if parsed.is_empty() {
            return Err(LocatedError {
                location: source.file.display().to_string(),
                message: "backups.paths: name at least one path (or leave the field out for rampart's list)".into(),
            });
        }
        layer.paths = Some(parsed);
    }
    match (&backups.device, &backups.directory) {
        (Some(_), Some(directory)) => {
            return Err(source.error(directory, "backups.directory: give device or directory, not both"));
        }
        (Some(device), None) => {
            let value = source.check(device, "backups.device", |s| parse_device(s))?;
            layer.target = Some(sited(source, device, BackupTarget::Device(value)));
        }
        (None, Some(directory)) => {
            let value = source.check(directory, "backups.directory", |s| parse_directory(s))?;
            layer.target = Some(sited(source, directory, BackupTarget::Directory(value)));
        }
        (None, None) => {}
    }
    if let Some(schedule) = &backups.schedule {
        let value = source.check(schedule, "backups.schedule", |s| super::monitoring::parse_schedule(s))?;
        layer.schedule = Some(sited(source, schedule, value));
    }
    if let Some(n) = &backups.keep_daily {
        layer.keep_daily = Some(source.check(n, "backups.keep-daily", parse_keep)?);
    }
    if let Some(n) = &backups.keep_weekly {
        layer.keep_weekly = Some(source.check(n, "backups.keep-weekly", parse_keep)?);
    }
    if let Some(n) = &backups.keep_monthly {
        layer.keep_monthly = Some(source.check(n, "backups.keep-monthly", parse_keep)?);
    }
    Ok(layer)
}

/// The child's values win field by field; a child's `paths` replaces the
/// base's list, and its device or directory replaces the base's target.
pub fn merge(base: &mut BackupsLayer, child: BackupsLayer) {
    super::take(&mut base.enable, child.enable);
    super::take(&mut base.paths, child.paths);
    super::take(&mut base.target, child.target);
    super::take(&mut base.schedule, child.schedule);
    super::take(&mut base.keep_daily, child.keep_daily);
    super::take(&mut base.keep_weekly, child.keep_weekly);
    super::take(&mut base.keep_monthly, child.keep_monthly);
}

/// Defaults applied; an enabled section must name its target, which must
/// not lie inside what is backed up, and must keep at least one archive.
pub fn finish(layer: BackupsLayer) -> Result<BackupsSpec, LocatedError> {
    let (enable, enable_at) = match layer.enable {
        Some((enable, at)) => (enable, Some(at)),
        None => (false, None),
    };
    let paths: Vec<String> = match &layer.paths {
        Some(paths) => paths.iter().map(|p| p.value.clone()).collect(),
        None => DEFAULT_PATHS.iter().map(|p| p.to_string()).collect(),
    };
    let spec = BackupsSpec {
        enable,
        paths,
        target: layer.target,
        schedule: layer.schedule.unwrap_or(Sited { value: "daily".to_string(), at: "rampart's default".to_string() }),
        keep_daily: layer.keep_daily.unwrap_or(DEFAULT_KEEP_DAILY),
        keep_weekly: layer.keep_weekly.unwrap_or(DEFAULT_KEEP_WEEKLY),
        keep_monthly: layer.keep_monthly.unwrap_or(DEFAULT_KEEP_MONTHLY),
    };
    if !spec.enable {
        return Ok(spec);
    }
    let enable_at = enable_at.unwrap_or_default();
    let Some(target) = &spec.target else {
        return Err(LocatedError {
            location: enable_at,
            message: "backups.enable: backups need a separate target: set backups.device (a whole disk) or backups.directory (a mounted file system)".into(),
        });
    };
    if let BackupTarget::Directory(directory) = &target.value {
        if let Some(path) = spec.paths.iter().find(|p| is_within(directory, p)) {
            return Err(LocatedError {
                location: target.at.clone(),
                message: format!("backups.directory: {directory} is inside {path}, which is backed up; the target must be a separate file system outside backups.paths"),
            });
        }
    }
    if spec.keep_daily + spec.keep_weekly + spec.keep_monthly == 0 {
        return Err(LocatedError {
            location: enable_at,
            message: "backups: keep-daily, keep-weekly and keep-monthly are all 0, so every archive would be pruned".into(),
        });
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_paths_are_plain_absolute_paths() {
        let check = |input: &str, expected: Result<&str, &str>| {
            assert_eq!(parse_backup_path(input).as_deref().map_err(|e| e.as_str()), expected, "{input}");
        };
        check("/srv/data/", Ok("/srv/data"));
        check("/var/lib", Ok("/var/lib"));
        let refused = |s: &str| format!("{s:?} is not an absolute path below / of letters, digits and ._-+@: (no \"..\", \"//\", spaces or wildcards; e.g. \"/srv/data\")");
        for bad in ["srv", "/", "/srv/../etc", "/srv//x", "/srv/a b", "/srv/*", "/./srv", "/srv/'x'"] {
            check(bad, Err(&refused(bad)));
        }
    }

    #[test]
    fn devices_live_under_dev_and_directories_are_not_system_ones() {
        assert_eq!(parse_device("/dev/vdb").as_deref(), Ok("/dev/vdb"));
        assert_eq!(
            parse_device("/srv/disk").unwrap_err(),
            "\"/srv/disk\" is not a block device path under /dev (e.g. \"/dev/disk/by-id/virtio-backup\")"
        );
        assert_eq!(parse_directory("/srv/backup/").as_deref(), Ok("/srv/backup"));
        assert_eq!(
            parse_directory("/var").unwrap_err(),
            "\"/var\" is a system directory, not the mount point of a separate file system (e.g. \"/srv/backup\")"
        );
    }

    #[test]
    fn within_means_the_path_or_below_it() {
        assert!(is_within("/var/lib", "/var/lib"));
        assert!(is_within("/var/lib/x", "/var/lib"));
        assert!(!is_within("/var/library", "/var/lib"));
        assert!(is_within("/srv", "/"));
    }
}
