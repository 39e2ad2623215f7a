//! Logging control (seed step 8, "System Logging"): rsyslog reads its
//! configuration from the read-only configuration partition, so logging
//! cannot be quietly reconfigured on the box; journald keeps a persistent
//! journal and hands every message to rsyslog over the syslog socket (CIS
//! 6.1.3.3), except at boot, before rsyslog reads that socket: what does not
//! fit in it stays in the journal only, and journald reports how many
//! (`Forwarding to syslog missed N messages.`); with `logging.remote`, every
//! message rsyslog has also goes to the remote log host over TCP through a
//! disk-assisted queue, so nothing is lost while that host is down. The
//! image's own `rsyslogd -N1` checks the configuration at build time.

use anyhow::{bail, Result};
use serde_json::json;

use crate::build::context::BuildContext;
use crate::layout::CONFIG_MOUNT;
use crate::profile::Profile;

/// Where rsyslog's configuration lives, on the read-only partition.
pub fn config_path() -> String {
    format!("{CONFIG_MOUNT}/rsyslog/rsyslog.conf")
}

/// The file of the forwarding queue under rsyslog's work directory.
pub const QUEUE_NAME: &str = "rampart-forward";

pub fn render(profile: &Profile) -> String {
    let logging = &profile.logging;
    let mut text = format!(
        "# rampart: [logging] of profile {name}. This file is on the read-only
# configuration partition ({CONFIG_MOUNT}); changing it takes a visible remount.
# rsyslog's own messages (its start, a forwarding failure, a full queue) are
# written by rsyslog itself, to these files and the remote log host. Sent
# through the journal instead, they come back on the syslog socket as
# rsyslog's own, and imuxsock drops them more often than not.
global(workDirectory=\"/var/spool/rsyslog\" processInternalMessages=\"on\")

# What journald receives from services comes over the syslog socket; the
# kernel's messages (firewall drops, AppArmor denials) are read from the
# kernel log, which journald does not forward.
module(load=\"imuxsock\")
module(load=\"imklog\")

module(load=\"builtin:omfile\" fileOwner=\"root\" fileGroup=\"adm\" fileCreateMode=\"0640\" dirCreateMode=\"0750\")

*.*;auth,authpriv.none          -/var/log/syslog
auth,authpriv.*                 /var/log/auth.log
kern.*                          -/var/log/kern.log
*.emerg                         :omusrmsg:*
",
        name = profile.name
    );
    if let Some(remote) = &logging.remote {
        text.push_str(&format!(
            "
# Everything to the remote log host ({at}), over TCP. While it is down,
# messages wait in a queue that spills to disk and survives a shutdown;
# rsyslog keeps retrying, so nothing is lost.
*.* action(type=\"omfwd\" target=\"{host}\" port=\"{port}\" protocol=\"tcp\"
           tcp_framing=\"octet-counted\" template=\"RSYSLOG_SyslogProtocol23Format\"
           action.resumeRetryCount=\"-1\" action.resumeInterval=\"2\"
           queue.type=\"LinkedList\" queue.filename=\"{QUEUE_NAME}\"
           queue.maxDiskSpace=\"{mib}m\" queue.saveOnShutdown=\"on\"
           queue.size=\"100000\" queue.highWatermark=\"80000\" queue.lowWatermark=\"20000\")
",
            at = remote.at,
            host = remote.value.host,
            port = remote.value.port,
            mib = logging.queue_max_mib,
        ));
    }
    text
}

fn rsyslog_dropin() -> String {
    format!(
        "# rampart: rsyslog reads its configuration from the read-only partition only
[Unit]
RequiresMountsFor={CONFIG_MOUNT}
[Service]
ExecStart=
ExecStart=/usr/sbin/rsyslogd -n -iNONE -f {}
",
        config_path()
    )
}

fn journald_dropin(profile: &Profile) -> String {
    format!(
        "# rampart: [logging]: a persistent journal of at most {mib} MiB, every message handed to rsyslog
# (at boot, what overflows the syslog socket before rsyslog reads it stays in the journal only)
[Journal]
Storage=persistent
Compress=yes
ForwardToSyslog=yes
SystemMaxUse={mib}M
",
        mib = profile.logging.journal_max_mib
    )
}

/// The files rsyslog writes (see `render`), rotated by logrotate.
pub const LOG_FILES: &[&str] = &["/var/log/syslog", "/var/log/auth.log", "/var/log/kern.log"];

const LOG_FILES_TMPFILES: &str = "etc/tmpfiles.d/rampart-logs.conf";

fn log_files_tmpfiles() -> String {
    let mut text = String::from("# rampart: [logging] the files rsyslog writes, made 0640 root:adm before it starts\n");
    for file in LOG_FILES {
        text.push_str(&format!("f {file} 0640 root adm -\n"));
    }
    text
}

/// Replaces the rsyslog package's rotation (weekly only, for files this
/// configuration does not write): weekly or at the size cap, whichever
/// comes first, checked hourly by logrotate.timer.
fn logrotate_config(profile: &Profile) -> String {
    let logging = &profile.logging;
    format!(
        "# rampart: [logging] the files rsyslog writes, rotated weekly or once larger than {mib} MiB
# (logrotate.timer checks hourly); {kept} rotated files of each are kept.
{files}
{{
\tweekly
\tmaxsize {mib}M
\trotate {kept}
\tmissingok
\tnotifempty
\tcompress
\tdelaycompress
\tcreate 0640 root adm
\tsharedscripts
\tpostrotate
\t\t/usr/lib/rsyslog/rsyslog-rotate
\tendscript
}}
",
        mib = logging.file_max_mib,
        kept = logging.files_kept,
        files = LOG_FILES.join("\n"),
    )
}

const LOGROTATE_HOURLY: &str = "# rampart: [logging] the size caps are checked every hour
[Timer]
OnCalendar=
OnCalendar=hourly
AccuracySec=1m
";

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    let logging = ctx.profile.logging.clone();
    if !logging.enable {
        ctx.record("logging", false, json!({ "reason": "logging.enable = false" }));
        return Ok(());
    }
    let config = config_path();
    ctx.install_file(&config[1..], render(&ctx.profile).as_bytes(), 0o644)?;
    // The image's rsyslogd checks the configuration it will run with.
    let output = ctx.in_root("rsyslogd").args(["-N1", "-f", &config]).run_unchecked()?;
    if !output.status.success() {
        let error = String::from_utf8_lossy(&output.stderr).trim().to_string();
        match &logging.remote {
            Some(remote) => bail!("{}: logging.remote: rsyslogd refuses the configuration made from it:\n{error}", remote.at),
            None => bail!("rsyslogd refuses the logging configuration rampart made for {}:\n{error}", ctx.profile.path.display()),
        }
    }
    // Tools and admins looking in the usual place find the real file, and
    // writing through the link fails like writing the file itself.
    ctx.install_symlink("etc/rsyslog.conf", &config)?;
    ctx.install_file("etc/systemd/system/rsyslog.service.d/50-rampart.conf", rsyslog_dropin().as_bytes(), 0o644)?;
    // The main file, not a drop-in: compliance scanners read only this one.
    ctx.install_file("etc/systemd/journald.conf", journald_dropin(&ctx.profile).as_bytes(), 0o644)?;
    ctx.install_file("etc/logrotate.d/rsyslog", logrotate_config(&ctx.profile).as_bytes(), 0o644)?;
    // The files exist, 0640 root:adm, before rsyslog opens them: bookworm's
    // rsyslog (8.2302.0-1+deb12u2) leaves the files it makes root:root
    // whatever its fileGroup says, which shuts the adm group out.
    ctx.install_file(LOG_FILES_TMPFILES, log_files_tmpfiles().as_bytes(), 0o644)?;
    ctx.install_file("etc/systemd/system/logrotate.timer.d/50-rampart.conf", LOGROTATE_HOURLY.as_bytes(), 0o644)?;
    // The image's logrotate checks the configuration (debug mode: reads, rotates nothing).
    let output = ctx.in_root("logrotate").args(["--debug", "/etc/logrotate.conf"]).run_unchecked()?;
    let said = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() || said.lines().any(|l| l.starts_with("error:")) {
        bail!("logrotate refuses the rotation rampart made from [logging] of {}:\n{}", ctx.profile.path.display(), said.trim());
    }
    ctx.record(
        "logging",
        true,
        json!({
            "rsyslog-config": config,
            "config-partition": format!("{CONFIG_MOUNT}, mounted read-only"),
            "journal": format!("persistent (/var/log/journal), at most {} MiB, forwarded to rsyslog", logging.journal_max_mib),
            "rotation": format!("logrotate.timer hourly: {} weekly or above {} MiB, {} kept, compressed", LOG_FILES.join(", "), logging.file_max_mib, logging.files_kept),
            "files": ["/var/log/syslog", "/var/log/auth.log", "/var/log/kern.log"],
            "remote": logging.remote.as_ref().map(|r| json!({
                "host": r.value.to_string(),
                "protocol": "tcp (octet-counted, RFC 5424)",
                "queue": format!("disk-assisted, up to {} MiB, kept over shutdown", logging.queue_max_mib),
            })),
            "checked-by": "rsyslogd -N1 (the image's)",
        }),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_is_rendered_only_with_a_remote_host() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/lab-bastion.toml");
        let profile = crate::profile::load(&path).unwrap();
        let text = render(&profile);
        assert!(text.contains("target=\"10.77.0.2\" port=\"514\" protocol=\"tcp\""), "{text}");
        assert!(text.contains("queue.saveOnShutdown=\"on\""));
        let base = crate::profile::load(&path.with_file_name("baseline.toml")).unwrap();
        assert!(!render(&base).contains("omfwd"));
    }

    #[test]
    fn rotation_and_journal_caps_are_the_profiles() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/lab-bastion.toml");
        let bastion = crate::profile::load(&path).unwrap();
        let rotation = logrotate_config(&bastion);
        for line in ["\tmaxsize 4M", "\trotate 2", "\tweekly", "/var/log/syslog\n/var/log/auth.log\n/var/log/kern.log\n{"] {
            assert!(rotation.contains(line), "{line:?} in\n{rotation}");
        }
        assert!(journald_dropin(&bastion).contains("\nSystemMaxUse=16M\n"));
        let base = crate::profile::load(&path.with_file_name("baseline.toml")).unwrap();
        assert!(logrotate_config(&base).contains("\tmaxsize 32M\n\trotate 4\n"));
        assert!(journald_dropin(&base).contains("\nSystemMaxUse=256M\n"));
    }
}
