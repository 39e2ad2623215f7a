//! Backups control (seed step 10, "Backups"): Debian's borgbackup writes a
//! deduplicated archive of the profile's paths to a separate disk (or a
//! separately mounted file system) on a timer, verifies each archive after
//! writing it (`borg check --verify-data`) and rotates them (`borg prune`:
//! daily, weekly, monthly). `/usr/sbin/rampart-backup` runs, lists, checks
//! and restores; its configuration is rendered from the profile onto the
//! read-only configuration partition. This module writes files and checks
//! them with the image's own tools; it never formats or mounts anything at
//! build time: a blank target disk is given its file system on first use.

use anyhow::{Context, Result};
use serde_json::json;

use crate::build::context::BuildContext;
use crate::layout::CONFIG_MOUNT;
use crate::profile::{BackupTarget, BackupsSpec, Profile};

pub const SERVICE: &str = "rampart-backup.service";
pub const TIMER: &str = "rampart-backup.timer";
pub const SCRIPT: &str = "/usr/sbin/rampart-backup";
/// borg's cache, configuration and security directories (BORG_BASE_DIR):
/// they change with every run, so they are neither backed up nor in the
/// integrity baseline.
pub const BORG_BASE_DIR: &str = "/var/lib/rampart-backup";
/// The lock and the device target's mount point (the service's
/// RuntimeDirectory, writable in its sandbox).
pub const RUNTIME_DIR: &str = "/run/rampart-backup";
/// Where a device target is mounted while a run lasts (tmpfs).
pub const DEVICE_MOUNT_POINT: &str = "/run/rampart-backup/target";
/// The label of the file system rampart-backup makes on a blank device; a
/// device with any other content is never touched.
pub const FILE_SYSTEM_LABEL: &str = "rampart-backup";
/// The borg repository's directory on the target.
pub const REPOSITORY_DIR: &str = "rampart-borg";

pub fn config_path() -> String {
    format!("{CONFIG_MOUNT}/backup/backup.conf")
}

/// What the AIDE baseline leaves out for this control: borg's own state,
/// and a directory target, whose archives change with every run.
pub fn integrity_exclusions(profile: &Profile) -> Vec<(String, &'static str)> {
    let backups = &profile.backups;
    if !backups.enable {
        return Vec::new();
    }
    let mut paths = vec![(BORG_BASE_DIR.to_string(), "[backups]: borg's cache and security directories")];
    if let Some(target) = &backups.target {
        if let BackupTarget::Directory(directory) = &target.value {
            paths.push((directory.clone(), "[backups]: the backup file system"));
        }
    }
    paths
}

/// The script's configuration: shell assignments of values the profile
/// checked to be plain (no quotes, spaces or wildcards).
pub fn render_config(profile: &Profile) -> String {
    let backups = &profile.backups;
    let (device, directory) = match backups.target.as_ref().map(|t| &t.value) {
        Some(BackupTarget::Device(device)) => (device.as_str(), ""),
        Some(BackupTarget::Directory(directory)) => ("", directory.as_str()),
        None => ("", ""),
    };
    format!(
        "# rampart: [backups] of profile {name}, read by {SCRIPT}.
# On the read-only configuration partition ({CONFIG_MOUNT}): changing what is
# backed up, or where to, takes a visible remount.
BACKUP_PATHS='{paths}'
BACKUP_DEVICE='{device}'
BACKUP_DIRECTORY='{directory}'
BACKUP_LABEL='{FILE_SYSTEM_LABEL}'
KEEP_DAILY={daily}
KEEP_WEEKLY={weekly}
KEEP_MONTHLY={monthly}
",
        name = profile.name,
        paths = backups.paths.join(" "),
        daily = backups.keep_daily,
        weekly = backups.keep_weekly,
        monthly = backups.keep_monthly,
    )
}

/// The program behind the units and the admin's restore command. bash and
/// util-linux from the image, borg for everything that touches archives.
pub fn script() -> String {
    format!(
        r##"#!/bin/bash
# rampart-backup: backups with borg to a separate disk, made by rampart's
# [backups] control. Configuration: {config} (read-only partition).
#
#   rampart-backup run                      back up, verify the new archive, rotate
#   rampart-backup list                     list the archives
#   rampart-backup check                    verify the repository and every archive's data
#   rampart-backup restore [--to DIR] [ARCHIVE] PATH...
#                                           restore PATHs (absolute) from ARCHIVE
#                                           (default: the newest) into / (or DIR)
#   rampart-backup borg ARGS...             borg itself, with the target mounted
#                                           and BORG_REPO set (archives are ::NAME)
#
# RAMPART_BACKUP_DEVICE (a replacement disk) or RAMPART_BACKUP_DIRECTORY (a
# mounted file system) overrides the profile's target.
set -euo pipefail
CONFIG={config}
. "$CONFIG"
DEVICE=${{RAMPART_BACKUP_DEVICE:-$BACKUP_DEVICE}}
if [ -n "${{RAMPART_BACKUP_DIRECTORY:-}}" ]; then
    DEVICE=
    BACKUP_DIRECTORY=$RAMPART_BACKUP_DIRECTORY
fi
MOUNT_POINT={mount_point}
export BORG_BASE_DIR={base_dir}
# The repository is not encrypted (it lives on a disk beside the machine; see
# README "Backups and restore"); borg's data verification still checks every
# chunk against its id. A repository met on a new or reinstalled machine is
# expected, not a warning.
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
export BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
umask 077

say() {{ echo "rampart-backup: $*" >&2; }}
die() {{ say "$*"; exit 1; }}

mounted=
borg_log=
cleanup() {{
    [ -n "$borg_log" ] && rm -f "$borg_log"
    if [ -n "$mounted" ]; then
        sync
        umount "$MOUNT_POINT" || say "could not unmount $MOUNT_POINT"
        mounted=
    fi
}}
trap cleanup EXIT

# The target: a device that is mounted for this run only, or a directory
# that must be the mount point of another file system.
open_target() {{
    if [ -n "$DEVICE" ]; then
        [ -b "$DEVICE" ] || die "the backup device $DEVICE is missing (no such block device): attach the backup disk, or set backups.device to the disk that is there"
        if findmnt -rn -S "$(readlink -f "$DEVICE")" >/dev/null; then
            die "the backup device $DEVICE is mounted elsewhere; rampart-backup mounts it only while it runs"
        fi
        local probe rc=0
        probe=$(blkid -p -o export "$DEVICE" 2>&1) || rc=$?
        case $rc in
        2)
            # Nothing blkid knows: it must be blank too, or it is left alone.
            cmp -s -n 1048576 "$DEVICE" /dev/zero ||
                die "the backup device $DEVICE holds data blkid does not recognise; rampart-backup formats only a blank disk and never touches anything else"
            say "the backup device $DEVICE is blank: making an ext4 file system labelled $BACKUP_LABEL"
            mkfs.ext4 -q -m 0 -L "$BACKUP_LABEL" "$DEVICE"
            ;;
        0)
            local type label
            type=$(sed -n 's/^TYPE=//p' <<<"$probe")
            label=$(sed -n 's/^LABEL=//p' <<<"$probe")
            if [ "$type" != ext4 ] || [ "$label" != "$BACKUP_LABEL" ]; then
                die "the backup device $DEVICE holds something else ($(tr '\n' ' ' <<<"$probe")); rampart-backup uses only a blank disk or its own ext4 file system labelled $BACKUP_LABEL, and never touches anything else"
            fi
            ;;
        *) die "cannot probe the backup device $DEVICE: $probe" ;;
        esac
        mkdir -p "$MOUNT_POINT"
        mount -t ext4 -o nodev,nosuid,noexec "$DEVICE" "$MOUNT_POINT" || die "could not mount the backup device $DEVICE on $MOUNT_POINT"
        mounted=yes
        TARGET=$MOUNT_POINT
    else
        # Another file system than its parent's: the service's sandbox
        # bind-mounts the directory onto itself, which mountpoint(1) would
        # take for a mount point.
        [ -d "$BACKUP_DIRECTORY" ] && [ "$(stat -c %d "$BACKUP_DIRECTORY")" != "$(stat -c %d "$BACKUP_DIRECTORY/..")" ] ||
            die "the backup directory $BACKUP_DIRECTORY is not a mount point: the archives would land on the disk they protect; mount the backup file system there"
        TARGET=$BACKUP_DIRECTORY
    fi
    export BORG_REPO=$TARGET/{repository}
}}

# borg; its warnings (status 1, e.g. a log file that grew while it was read)
# pass, errors end the run with a message that says what happened.
borg_run() {{
    local rc=0
    [ -n "$borg_log" ] || borg_log=$(mktemp)
    borg "$@" 2>"$borg_log" || rc=$?
    cat "$borg_log" >&2
    if [ "$rc" -ge 2 ]; then
        if grep -q -e 'No space left on device' -e 'Insufficient free space' "$borg_log"; then
            die "the backup target $TARGET is full ($(df -h --output=avail "$TARGET" | tail -n 1 | tr -d ' ') free): borg $1 failed and rolled back; the earlier archives are untouched (rampart-backup check verifies them)"
        fi
        die "borg $1 failed (exit status $rc)"
    fi
    [ "$rc" -eq 0 ] || say "borg $1 finished with warnings (above)"
}}

ensure_repository() {{
    if [ ! -e "$BORG_REPO/config" ]; then
        say "making the borg repository $BORG_REPO (no encryption)"
        borg_run init --encryption=none "$BORG_REPO"
    fi
}}

run() {{
    open_target
    mkdir -p -m 0700 "$BORG_BASE_DIR"
    ensure_repository
    local name
    name="$(uname -n)-$(date -u +%Y-%m-%dT%H:%M:%S)"
    # shellcheck disable=SC2086 # the paths are plain words, checked by rampart
    borg_run create --stats --compression lz4 --exclude "pp:$BORG_BASE_DIR" --exclude "pp:$TARGET" --exclude "pp:$MOUNT_POINT" \
        "::$name" $BACKUP_PATHS
    borg_run check --verify-data "::$name"
    say "archive $name written and verified (borg check --verify-data)"
    borg_run prune --list --keep-daily "$KEEP_DAILY" --keep-weekly "$KEEP_WEEKLY" --keep-monthly "$KEEP_MONTHLY"
    # prune lists what it keeps: counted from its log, not by another borg run.
    local kept
    kept=$(grep -c '^Keeping archive' "$borg_log" || true)
    borg_run compact
    say "done: $kept archives kept (daily $KEEP_DAILY, weekly $KEEP_WEEKLY, monthly $KEEP_MONTHLY); $(df -h --output=avail "$TARGET" | tail -n 1 | tr -d ' ') free on the target"
}}

restore() {{
    local destination=/ archive=
    if [ "${{1:-}}" = --to ]; then
        [ $# -ge 2 ] || die "restore: --to needs a directory"
        destination=$2
        shift 2
        [ -d "$destination" ] || die "restore: $destination is not a directory"
    fi
    if [ $# -gt 0 ] && [ "${{1#/}}" = "$1" ]; then
        archive=$1
        shift
    fi
    [ $# -gt 0 ] || die "restore: name the absolute paths to restore (rampart-backup restore [--to DIR] [ARCHIVE] PATH...)"
    local relative=() path
    for path in "$@"; do
        [ "${{path#/}}" != "$path" ] || die "restore: $path is not an absolute path"
        relative+=("${{path#/}}")
    done
    open_target
    if [ -z "$archive" ]; then
        archive=$(borg list --last 1 --short)
        [ -n "$archive" ] || die "restore: the repository $BORG_REPO holds no archives"
    fi
    cd "$destination"
    borg_run extract --list "::$archive" "${{relative[@]}}"
    say "restored $* from $archive into $destination"
}}

mkdir -p {runtime_dir}
exec 9>{runtime_dir}/lock
flock -w 3600 9 || die "another rampart-backup has been running for an hour"

case "${{1:-}}" in
run) run ;;
list) open_target; borg_run list ;;
check) open_target; borg_run check --verify-data; say "the repository and every archive's data verified" ;;
restore) shift; restore "$@" ;;
borg) shift; open_target; borg_run "$@" ;;
*) die "usage: rampart-backup run | list | check | restore [--to DIR] [ARCHIVE] PATH... | borg ARGS..." ;;
esac
"##,
        config = config_path(),
        mount_point = DEVICE_MOUNT_POINT,
        runtime_dir = RUNTIME_DIR,
        base_dir = BORG_BASE_DIR,
        repository = REPOSITORY_DIR,
    )
}

fn service_unit() -> String {
    format!(
        "[Unit]
Description=rampart: back up to the separate backup target (borg), verify, rotate
Documentation=man:borg(1)
RequiresMountsFor={CONFIG_MOUNT} /var/lib

[Service]
Type=oneshot
# A missing or full target makes the unit fail; the reason is in the journal.
ExecStart={SCRIPT} run
Nice=10
IOSchedulingClass=idle
PrivateTmp=yes
"
    )
}

fn target_settings(spec: &BackupsSpec) -> serde_json::Value {
    match spec.target.as_ref().map(|t| &t.value) {
        Some(BackupTarget::Device(device)) => json!({
            "device": device,
            "file-system": format!("ext4 labelled {FILE_SYSTEM_LABEL}, made on first use if the disk is blank; any other content is refused"),
            "mounted": format!("{DEVICE_MOUNT_POINT} (nodev,nosuid,noexec), only while a run lasts"),
        }),
        Some(BackupTarget::Directory(directory)) => json!({ "directory": directory, "must-be": "a mount point at run time" }),
        None => json!(null),
    }
}

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    let spec = ctx.profile.backups.clone();
    if !spec.enable {
        ctx.record("backups", false, json!({ "reason": "backups.enable = false" }));
        return Ok(());
    }
    let config_path = config_path();
    ctx.install_file(&config_path[1..], render_config(&ctx.profile).as_bytes(), 0o644)?;
    ctx.install_file(&SCRIPT[1..], script().as_bytes(), 0o755)?;
    ctx.in_root("bash").args(["-n", SCRIPT]).run().context("while checking rampart-backup's syntax with the image's bash")?;
    let version = ctx.in_root("borg").arg("--version").run().context("while asking the image's borg for its version")?;
    ctx.install_file(&format!("etc/systemd/system/{SERVICE}"), service_unit().as_bytes(), 0o644)?;
    super::install_timer(ctx, TIMER, "rampart: scheduled backup", &spec.schedule, "backups.schedule")?;
    ctx.record(
        "backups",
        true,
        json!({
            "tool": version.stdout_text().trim(),
            "paths": spec.paths,
            "target": target_settings(&spec),
            "repository": format!("{REPOSITORY_DIR}/ on the target, borg, no encryption (chunk ids still verified), lz4"),
            "verified": "borg check --verify-data of each new archive",
            "keep": { "daily": spec.keep_daily, "weekly": spec.keep_weekly, "monthly": spec.keep_monthly },
            "schedule": format!("{TIMER} ({})", spec.schedule.value),
            "config": config_path,
            "program": SCRIPT,
            "restore": format!("{SCRIPT} restore [--to DIR] [ARCHIVE] PATH..."),
            "not-backed-up": [BORG_BASE_DIR, DEVICE_MOUNT_POINT],
            "elf-audit-allowed-weak": crate::profile::backups::ALLOWED_WEAK.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            "checked-by": "bash -n, borg --version, systemd-analyze calendar (the image's)",
        }),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_names_the_target_paths_and_counts() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/lab-bastion.toml");
        let profile = crate::profile::load(&path).unwrap();
        let text = render_config(&profile);
        assert!(text.contains("\nBACKUP_PATHS='/etc /home /root /var/lib /var/log'\n"), "{text}");
        assert!(text.contains("\nBACKUP_DEVICE='/dev/disk/by-id/virtio-rampart-backup'\nBACKUP_DIRECTORY=''\n"), "{text}");
        assert!(text.contains("\nKEEP_DAILY=3\nKEEP_WEEKLY=2\nKEEP_MONTHLY=2\n"), "{text}");
        assert_eq!(integrity_exclusions(&profile), vec![(BORG_BASE_DIR.to_string(), "[backups]: borg's cache and security directories")]);
        let base = crate::profile::load(&path.with_file_name("baseline.toml")).unwrap();
        assert!(integrity_exclusions(&base).is_empty());
    }

    #[test]
    fn the_script_reads_the_rendered_configuration() {
        let text = script();
        assert!(text.contains(&format!("CONFIG={}\n", config_path())));
        for variable in ["BACKUP_PATHS", "BACKUP_DEVICE", "BACKUP_DIRECTORY", "BACKUP_LABEL", "KEEP_DAILY", "KEEP_WEEKLY", "KEEP_MONTHLY"] {
            assert!(text.contains(&format!("${variable}")), "{variable}");
        }
        assert!(!text.contains("{{") && !text.contains("}}"), "format escapes left in the script");
    }
}
