//! Seal stage: makes the tree a golden image. Removes what identifies the
//! build host or one machine (machine-id, SSH host keys, logs, caches, apt
//! lists) and clamps every timestamp to the lock's clock, so two builds are
//! bit-identical. Runs last before the artifacts are made.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use crate::build::context::BuildContext;

/// Files that differ per build or per machine; removed from the image.
const REMOVED: &[&str] = &[
    "var/lib/dbus/machine-id",
    "var/lib/systemd/random-seed",
    "var/cache/ldconfig/aux-cache",
    "var/cache/debconf/config.dat-old",
    "var/cache/debconf/templates.dat-old",
    "var/lib/dpkg/status-old",
    "var/lib/dpkg/diversions-old",
    "var/lib/dpkg/statoverride-old",
    "etc/passwd-",
    "etc/group-",
    "etc/shadow-",
    "etc/gshadow-",
    "etc/subuid-",
    "etc/subgid-",
    "etc/resolv.conf",
];

/// Directories whose contents are emptied (the directories stay).
const EMPTIED: &[&str] = &["var/lib/apt/lists", "var/cache/apt", "var/log", "tmp", "var/tmp", "run"];

/// systemd's "up to date with /usr" stamps (ConditionNeedsUpdate=).
const UPDATE_STAMPS: &[&str] = &["etc/.updated", "var/.updated"];

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    let root = ctx.root();
    // An empty machine-id marks the first boot: systemd generates one then.
    ctx.install_file("etc/machine-id", b"", 0o444)?;
    let mut removed = Vec::new();
    for relative in REMOVED {
        let path = root.join(relative);
        if std::fs::symlink_metadata(&path).is_ok_and(|m| !m.file_type().is_symlink()) {
            std::fs::remove_file(&path).with_context(|| format!("while removing /{relative}"))?;
            removed.push(format!("/{relative}"));
        }
    }
    // D-Bus's machine id is systemd's: a link, as dbus's tmpfiles.d would
    // make on first boot (and then the integrity baseline would miss it).
    if root.join("usr/lib/tmpfiles.d/dbus.conf").exists() {
        ctx.install_symlink("var/lib/dbus/machine-id", "/etc/machine-id")?;
    }
    let ssh_dir = root.join("etc/ssh");
    if ssh_dir.is_dir() {
        for entry in std::fs::read_dir(&ssh_dir)? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            if name.starts_with("ssh_host_") {
                std::fs::remove_file(&path)?;
                removed.push(format!("/etc/ssh/{name}"));
            }
        }
    }
    for relative in EMPTIED {
        let dir = root.join(relative);
        if dir.is_dir() {
            empty_directory(&dir, relative == &"var/log" || relative == &"var/cache/apt" || relative == &"var/lib/apt/lists")?;
        }
    }
    // /etc and /var are up to date with /usr (dpkg ran every trigger): the
    // stamps systemd-update-done would write on first boot, so the boot skips
    // the units that wait for ConditionNeedsUpdate (sysusers, ldconfig, hwdb,
    // the journal catalog). Clamped below to /usr's time; an upgrade that
    // changes /usr makes them run again, as systemd intends.
    let stamp = format!(
        "# rampart: written at build time, as systemd-update-done would; see systemd.unit(5), ConditionNeedsUpdate=\nTIMESTAMP_NSEC={}\n",
        ctx.source_date_epoch * 1_000_000_000
    );
    for stamp_path in UPDATE_STAMPS {
        ctx.install_file(stamp_path, stamp.as_bytes(), 0o644)?;
    }
    let clamped = clamp_times(&root, ctx.source_date_epoch)?;
    removed.sort();
    ctx.record(
        "seal",
        true,
        json!({
            "machine-id": "empty (generated on first boot)",
            "removed": removed,
            "emptied": EMPTIED.iter().map(|d| format!("/{d}")).collect::<Vec<_>>(),
            "timestamps-clamped-to": ctx.source_date_epoch,
            "update-stamps": UPDATE_STAMPS.iter().map(|p| format!("/{p}")).collect::<Vec<_>>(),
            "n-timestamps-clamped": clamped,
        }),
    );
    Ok(())
}

/// Removes the files below `dir`. With `keep_dirs`, sub-directories stay
/// (packages expect /var/log/apt and friends) but lose their files.
fn empty_directory(dir: &Path, keep_dirs: bool) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            if keep_dirs {
                empty_directory(&path, true)?;
            } else {
                std::fs::remove_dir_all(&path)?;
            }
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Sets every mtime later than `epoch` to `epoch` (and every atime to the
/// mtime), symlinks included. Returns how many were changed.
pub fn clamp_times(root: &Path, epoch: i64) -> Result<usize> {
    use std::os::unix::fs::MetadataExt;
    let mut changed = 0;
    for entry in crate::tree::walk(root)? {
        let meta = &entry.meta;
        let mtime = meta.mtime().min(epoch);
        if meta.mtime() != mtime || meta.atime() != mtime || meta.mtime_nsec() != 0 {
            set_times(&entry.host_path, mtime)?;
            changed += 1;
        }
    }
    Ok(changed)
}

pub fn set_times(path: &Path, seconds: i64) -> Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    let time = libc::timespec { tv_sec: seconds, tv_nsec: 0 };
    let times = [time, time];
    // SAFETY: c_path is a valid NUL-terminated string; times has two entries.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c_path.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("while setting the time of {}", path.display()));
    }
    Ok(())
}
