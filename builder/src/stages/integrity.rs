//! Integrity control (seed step 9, "System Integrity Checking"): an AIDE
//! database of the finished image, made at build time, offline, before the
//! image ever touches a network, and kept with its configuration on the
//! read-only configuration partition. A timer runs `aide --check` on the
//! profile's schedule; the report goes to the journal (and so to syslog and
//! the remote log host). Rules leave out only what changes by design at run
//! time. The image's own `aide --config-check` checks the rules at build time.

use std::io::Write;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::build::context::BuildContext;
use crate::fsutil::sha256_file;
use crate::layout::CONFIG_MOUNT;
use crate::profile::Profile;
use crate::traced::{line_named_after, TracedText};

pub fn config_path() -> String {
    format!("{CONFIG_MOUNT}/aide/aide.conf")
}

pub fn database_path() -> String {
    format!("{CONFIG_MOUNT}/aide/aide.db.gz")
}

/// AIDE's standard configuration path (Debian's aide package).
const STANDARD_CONFIG: &str = "etc/aide/aide.conf";

pub const PACKAGES_SERVICE: &str = "rampart-debsums-check.service";
pub const PACKAGES_TIMER: &str = "rampart-debsums-check.timer";

/// debsums over every installed package's files (not the configuration
/// files, which the build changes and AIDE watches); it honours dpkg's
/// path-exclude, so dropped documentation is not missing. Reads only.
const PACKAGES_UNIT: &str = "[Unit]
Description=rampart: installed packages' files against dpkg's digests (debsums)
Documentation=man:debsums(1)

[Service]
Type=oneshot
# A changed or missing file fails the unit and is named in the journal.
ExecStart=/usr/bin/debsums --silent
Nice=19
IOSchedulingClass=idle
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
PrivateNetwork=yes
NoNewPrivileges=yes
CapabilityBoundingSet=CAP_DAC_READ_SEARCH CAP_DAC_OVERRIDE
ProtectKernelTunables=yes
# (not ProtectKernelModules: it hides /usr/lib/modules, whose files are checked)
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
UMask=0077
";

pub const CHECK_SERVICE: &str = "rampart-aide-check.service";
pub const CHECK_TIMER: &str = "rampart-aide-check.timer";

/// What changes at run time by design, left out of the baseline.
const RUN_TIME_PATHS: &[(&str, &str)] = &[
    ("/proc", "kernel interfaces"),
    ("/sys", "kernel interfaces"),
    ("/dev", "device nodes"),
    ("/run", "run-time state (tmpfs)"),
    ("/tmp", "temporary files"),
    ("/var/tmp", "temporary files"),
    ("/lost+found", "made with each file system"),
    ("/var/lost+found", "made with the /var file system (image.partitions; the other partitions' are below paths left out here)"),
    ("/var/log", "logs, kept and forwarded by [logging]"),
    ("/var/cache", "caches"),
    ("/var/spool/rsyslog", "the log forwarding queue"),
    ("/var/lib/systemd", "systemd's state: timers, random seed, credentials"),
    ("/var/lib/private", "state of services with dynamic users"),
    ("/var/lib/apt/lists", "package lists"),
    ("/var/lib/sudo", "sudo's time stamps"),
    ("/var/lib/logrotate/", "logrotate's state: when each log was last rotated"),
    ("/home", "the users' own files"),
    (crate::stages::firstboot::PROVISIONED_KEYS_RECORD, "the SSH keys provisioned on first boot, recorded then (compared by the check)"),
    ("/etc/ssh/ssh_host_", "host keys, made on first boot"),
    (crate::stages::vpn::KEY_DIR, "the WireGuard private key, made on first boot ([vpn])"),
    ("/var/lib/misc/dnsmasq.leases", "dnsmasq's DHCP leases ([gateway.dhcp])"),
    ("/var/spool/postfix", "postfix's queue ([mail])"),
    ("/var/lib/postfix", "postfix's state: its lock, the TLS session cache ([mail])"),
    ("/var/spool/MIMEDefang", "MIMEDefang's work directories, one per message ([mail-gateway])"),
    ("/var/mail", "local mailboxes ([mail])"),
    (crate::stages::mail::ALERT_STATE, "when each alert was last mailed ([mail])"),
    ("/etc/passwd-", "shadow-utils' backup of the previous version"),
    ("/etc/group-", "shadow-utils' backup of the previous version"),
    ("/etc/shadow-", "shadow-utils' backup of the previous version"),
    ("/etc/gshadow-", "shadow-utils' backup of the previous version"),
    ("/etc/subuid-", "shadow-utils' backup of the previous version"),
    ("/etc/subgid-", "shadow-utils' backup of the previous version"),
    ("/etc/security/opasswd.old", "pam_pwhistory's backup of the previous version"),
    (CONFIG_MOUNT, "the read-only partition, which holds this database"),
    (crate::stages::patching::IN_PROGRESS, "rampart-patch's marker of a patch in progress (removed after the database is made again)"),
];

/// Files whose contents change by design: their type, owner and mode are
/// still checked.
const RUN_TIME_CONTENTS: &[(&str, &str)] = &[
    ("/etc/machine-id", "made on first boot"),
    ("/etc/shadow", "passwords change (the first login must change it)"),
    ("/etc/security/opasswd", "the password history (pam_pwhistory)"),
];

fn provisioned_keys(user: &str) -> String {
    format!("{}/{user}", crate::stages::firstboot::PROVISIONED_KEYS_DIR)
}

/// AIDE selection lines are regular expressions: a path is quoted.
fn regex_quoted(path: &str) -> String {
    let mut quoted = String::new();
    for c in path.chars() {
        if ".[]()*+?{}|^$\\".contains(c) {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted
}

pub fn render(profile: &Profile) -> TracedText {
    let integrity = &profile.integrity;
    let mut t = TracedText::default();
    t.line(&format!("# rampart: [integrity] of profile {}. This configuration and the database", profile.name), None);
    t.line(&format!("# were made at build time and live on the read-only partition ({CONFIG_MOUNT})."), None);
    t.line(&format!("database_in=file:{}", database_path()), None);
    t.line("# no database_out: the baseline is made at build time only", None);
    t.line("database_add_metadata=no", None);
    t.line("report_url=stdout", None);
    t.line("# Content: what a file is; never inode numbers or change times, which", None);
    t.line("# differ on every disk the image is written to.", None);
    t.line("Content = ftype+p+u+g+n+s+m+sha512+acl+xattrs+caps", None);
    t.line("Attributes = ftype+p+u+g+acl+xattrs", None);
    t.line("/ f,l Content", None);
    t.line("# a directory's size and times change with what is in it", None);
    t.line("/ d Attributes", None);
    t.line("# device nodes, fifos and sockets have no content to compare", None);
    t.line("/ b,c,p,s Attributes", None);
    for (path, why) in RUN_TIME_CONTENTS {
        t.line(&format!("{}$ f Attributes", regex_quoted(path)), Some(format!("rampart: {why}")));
    }
    for (path, why) in RUN_TIME_PATHS {
        t.line(&format!("# {why}"), None);
        // "dir/" and "prefix_" name what is below or after; "file-" is one file.
        let suffix = if path.ends_with('_') || path.ends_with('/') {
            ""
        } else if path.ends_with('-') {
            "$"
        } else {
            "(/|$)"
        };
        t.line(&format!("!{}{suffix}", regex_quoted(path)), None);
    }
    if profile.encryption.data {
        t.line("# [encryption]: the machine's recovery key, sealed on its first boot", None);
        t.line(&format!("!{}$", regex_quoted(crate::stages::encryption::ESCROW)), None);
    }
    for (path, why) in crate::stages::backups::integrity_exclusions(profile) {
        t.line(&format!("# {why}"), None);
        t.line(&format!("!{}(/|$)", regex_quoted(&path)), None);
    }
    // Each admin's key file comes from the deployment's credential at first
    // boot; a key file of any other name is reported.
    for user in &profile.users {
        t.line(&format!("# {}'s SSH keys, provisioned at first boot", user.name), None);
        t.line(&format!("!{}$", regex_quoted(&provisioned_keys(user.name.as_str()))), None);
    }
    for path in &integrity.exclude {
        t.line(&format!("!{}(/|$)", regex_quoted(&path.value)), Some(format!("{}: integrity.exclude", path.at)));
    }
    for rule in &integrity.rules {
        t.line(&rule.value, Some(format!("{}: integrity.rules", rule.at)));
    }
    t
}

/// The check: AIDE against the build-time database and, on an image with
/// sshd, the SSH keys provisioned on first boot against their record.
fn check_unit(ssh_keys: bool) -> String {
    // `$$` is a `$` the shell sees (systemd expands `$NAME` itself).
    let keys = if ssh_keys { format!(" {} || status=$$((status | 64));", crate::stages::firstboot::KEYS_CHECK) } else { String::new() };
    format!(
        "[Unit]
Description=rampart: AIDE integrity check against the build-time baseline
Documentation=man:aide(1)
RequiresMountsFor={CONFIG_MOUNT}

[Service]
Type=oneshot
# Differences make the unit fail: visible in systemctl --failed, and the
# report is in the journal, syslog and at the remote log host. The SSH keys
# provisioned on first boot are compared with their record of that boot.
ExecStart=/bin/sh -c '/usr/bin/aide --check --config {config}; status=$$?;{keys} exit $$status'
Nice=19
IOSchedulingClass=idle
",
        config = config_path(),
    )
}

/// Before the services stage: the configuration (checked by the image's
/// aide) and the units. The database comes last, in `seed_database`.
pub fn run(ctx: &mut BuildContext) -> Result<()> {
    let integrity = ctx.profile.integrity.clone();
    if !integrity.enable {
        ctx.record("integrity", false, json!({ "reason": "integrity.enable = false" }));
        return Ok(());
    }
    let config = render(&ctx.profile);
    let config_path = config_path();
    ctx.install_file(&config_path[1..], config.text.as_bytes(), 0o600)?;
    let output = ctx.in_root("aide").args(["--config-check", "--config", &config_path]).run_unchecked()?;
    if !output.status.success() {
        let error = String::from_utf8_lossy(&output.stderr).trim().to_string();
        match line_named_after(&error, &config_path).and_then(|n| config.origin(n)) {
            Some(field) => bail!("{field}: aide refuses the rule made from it:\n{error}"),
            None => bail!("aide refuses the integrity configuration made from [integrity] of {}:\n{error}", ctx.profile.path.display()),
        }
    }
    // Where auditors and Debian's tools look for it: a link to the copy on
    // the read-only partition, so there is one configuration, not two.
    ctx.install_symlink(STANDARD_CONFIG, &config_path)?;
    ctx.install_file(&format!("etc/systemd/system/{CHECK_SERVICE}"), check_unit(ctx.root().join("lib/systemd/system/ssh.service").exists()).as_bytes(), 0o644)?;
    super::install_timer(ctx, CHECK_TIMER, "rampart: scheduled AIDE integrity check", &integrity.schedule, "integrity.schedule")?;
    if integrity.packages {
        if !ctx.root().join("usr/bin/debsums").exists() {
            bail!("integrity.packages of {}: the image has no debsums; is it excluded?", ctx.profile.path.display());
        }
        ctx.install_file(&format!("etc/systemd/system/{PACKAGES_SERVICE}"), PACKAGES_UNIT.as_bytes(), 0o644)?;
        super::install_timer(ctx, PACKAGES_TIMER, "rampart: scheduled debsums check of the installed packages", &integrity.schedule, "integrity.schedule")?;
    }
    ctx.record(
        "integrity",
        true,
        json!({
            "tool": "aide",
            "config": config_path,
            "standard-path": format!("/{STANDARD_CONFIG} -> {config_path}"),
            "packages": if integrity.packages { json!(format!("{PACKAGES_TIMER}: debsums --silent (every package's files but configuration files, against dpkg's digests)")) } else { json!("off") },
            "database": database_path(),
            "compared": "type, mode, owners, links, size, mtime, sha512, ACLs, xattrs, capabilities",
            "left-out": RUN_TIME_PATHS.iter().map(|(p, why)| json!({"path": p, "why": why})).collect::<Vec<_>>(),
            "contents-not-compared": RUN_TIME_CONTENTS.iter().map(|(p, why)| json!({"path": p, "why": why})).collect::<Vec<_>>(),
            "left-out-for-backups": crate::stages::backups::integrity_exclusions(&ctx.profile).iter().map(|(p, why)| json!({"path": p, "why": why})).collect::<Vec<_>>(),
            "provisioned-at-first-boot": ctx.profile.users.iter().map(|u| provisioned_keys(u.name.as_str())).collect::<Vec<_>>(),
            "profile-exclude": integrity.exclude.iter().map(|p| p.value.clone()).collect::<Vec<_>>(),
            "profile-rules": integrity.rules.iter().map(|r| r.value.clone()).collect::<Vec<_>>(),
            "check": format!("{CHECK_TIMER} ({})", integrity.schedule.value),
            "checked-by": "aide --config-check, systemd-analyze calendar (the image's)",
        }),
    );
    Ok(())
}

/// After the seal: the database of the finished image, by the image's own
/// aide. Inode numbers are zeroed (they are not compared, and they differ
/// with the build host's file system), so two builds give the same bytes.
pub fn seed_database(ctx: &mut BuildContext) -> Result<()> {
    if !ctx.profile.integrity.enable {
        return Ok(());
    }
    let fresh = format!("{CONFIG_MOUNT}/aide/aide.db.new");
    ctx.in_root("aide")
        .args(["--init", "--config", &config_path()])
        .arg("--after")
        .arg(format!("database_out=file:{fresh}"))
        .arg("--after")
        .arg("gzip_dbout=no")
        .run()
        .context("while making the AIDE database of the image")?;
    let fresh_host = ctx.root().join(&fresh[1..]);
    let text = std::fs::read_to_string(&fresh_host).with_context(|| format!("while reading {}", fresh_host.display()))?;
    let (normalised, n_entries) = without_inode_numbers(&text)?;
    let database = ctx.root().join(&database_path()[1..]);
    let file = std::fs::File::create(&database).with_context(|| format!("while writing {}", database.display()))?;
    let mut gz = flate2::GzBuilder::new().mtime(0).write(file, flate2::Compression::best());
    gz.write_all(normalised.as_bytes())?;
    gz.finish()?.sync_all()?;
    std::fs::remove_file(&fresh_host)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&database, std::fs::Permissions::from_mode(0o600))?;
    }
    let digest = sha256_file(&database)?;
    if let Some(record) = ctx.records.iter_mut().rev().find(|r| r.stage == "integrity") {
        record.settings["database-entries"] = json!(n_entries);
        record.settings["database-sha256"] = json!(digest);
    }
    Ok(())
}

/// The database with every inode number set to 0 and its entries in byte
/// order (whatever order the build host's directories listed them in), and
/// its number of entries.
fn without_inode_numbers(text: &str) -> Result<(String, usize)> {
    let mut column = None;
    let mut head = String::new();
    let mut entries: Vec<String> = Vec::new();
    let mut tail = String::new();
    for line in text.lines() {
        if let Some(spec) = line.strip_prefix("@@db_spec ") {
            // Entry fields follow the spec's names ("name" is the path).
            column = spec.split_whitespace().position(|f| f == "inode");
            head.push_str(line);
            head.push('\n');
        } else if line.starts_with('/') {
            let mut fields: Vec<&str> = line.split(' ').collect();
            let Some(index) = column.filter(|i| *i < fields.len()) else {
                bail!("unexpected AIDE database layout (no inode column before the entries)");
            };
            fields[index] = "0";
            entries.push(fields.join(" "));
        } else if entries.is_empty() {
            head.push_str(line);
            head.push('\n');
        } else {
            tail.push_str(line);
            tail.push('\n');
        }
    }
    entries.sort();
    let n_entries = entries.len();
    let mut out = head;
    for entry in entries {
        out.push_str(&entry);
        out.push('\n');
    }
    out.push_str(&tail);
    Ok((out, n_entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_numbers_are_zeroed_and_entries_sorted() {
        let db = "@@begin_db\n@@db_spec name perm uid gid size mtime inode lcount\n/bin 120777 0 0 7 MTc= 10207379 1\n/ 40755 0 0 4096 MTc= 10207378 17\n@@end_db\n";
        let (out, n) = without_inode_numbers(db).unwrap();
        assert_eq!(n, 2);
        assert_eq!(out, "@@begin_db\n@@db_spec name perm uid gid size mtime inode lcount\n/ 40755 0 0 4096 MTc= 0 17\n/bin 120777 0 0 7 MTc= 0 1\n@@end_db\n");
    }

    #[test]
    fn paths_are_quoted_for_aide() {
        assert_eq!(regex_quoted("/srv/a.b+c"), "/srv/a\\.b\\+c");
    }
}
