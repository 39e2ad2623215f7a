//! Service sandboxing control (Lynis BOOT-5264, systemd-analyze security):
//! each service rampart enables or adds runs with a systemd hardening drop-in
//! (`<unit>.d/50-rampart-sandbox.conf`): a read-only system, no home
//! directories, private /tmp and devices, kernel interfaces protected, no new
//! privileges, only the capabilities, address families, system calls and
//! writable paths it needs. The image's own `systemd-analyze security
//! --offline` rates every enabled service at build time; a sandboxed one
//! rated above "OK" fails the build. Services that cannot be confined (they
//! start users' sessions, or are systemd's own) are listed with the reason.

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::build::context::BuildContext;

/// What every sandboxed service gets, unless its entry takes a line out.
const BASE: &[&str] = &[
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "PrivateIPC=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "ProtectProc=invisible",
    "RestrictNamespaces=yes",
    "RestrictRealtime=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "MemoryDenyWriteExecute=yes",
    "NoNewPrivileges=yes",
    "KeyringMode=private",
    "RemoveIPC=yes",
    "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service",
    "SystemCallFilter=~@privileged @mount @debug @cpu-emulation @obsolete @raw-io @reboot @swap",
    "SystemCallErrorNumber=EPERM",
    "UMask=0077",
];

/// For services that chown the files they make (log files root:adm): the
/// base filter's "~@privileged" less what they need. Allowing @chown again
/// after "~@privileged" did not give it back (seen: rsyslog's files came out
/// root:root), so these services get a filter of their own.
const FILTER_WITH_CHOWN: &[&str] = &[
    "SystemCallFilter=@system-service",
    "SystemCallFilter=~@clock @module @raw-io @reboot @swap @mount @debug @cpu-emulation @obsolete",
];

/// One service's sandbox: what it needs on top of `BASE`, and which `BASE`
/// lines it cannot live with (matched by their key).
pub struct Sandbox {
    pub unit: &'static str,
    /// Only when the profile runs it.
    applies: fn(&crate::profile::Profile) -> bool,
    needs: &'static [&'static str],
    without: &'static [&'static str],
    why: &'static str,
}

pub const SANDBOXES: &[Sandbox] = &[
    Sandbox {
        unit: "rsyslog.service",
        applies: |p| p.logging.enable,
        needs: &[
            // imklog reads /proc/kmsg; files are made root:adm 0640.
            "CapabilityBoundingSet=CAP_SYSLOG CAP_CHOWN CAP_FOWNER CAP_DAC_OVERRIDE",
            "ReadWritePaths=/var/log /var/spool/rsyslog",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
            FILTER_WITH_CHOWN[0],
            FILTER_WITH_CHOWN[1],
            "ProtectKernelLogs=no",
            "UMask=0027",
        ],
        without: &["ProtectKernelLogs", "UMask", "SystemCallFilter"],
        why: "writes /var/log and its forwarding queue, reads the kernel log, sends to the log host",
    },
    Sandbox {
        unit: "nftables.service",
        applies: |p| p.firewall.enable,
        needs: &["CapabilityBoundingSet=CAP_NET_ADMIN", "RestrictAddressFamilies=AF_NETLINK AF_UNIX", "ProcSubset=pid"],
        without: &[],
        why: "loads the ruleset over netlink",
    },
    Sandbox {
        unit: "auditd.service",
        applies: |p| p.auditd.enable,
        needs: &[
            "CapabilityBoundingSet=CAP_AUDIT_CONTROL CAP_AUDIT_READ CAP_AUDIT_WRITE CAP_SYS_NICE CAP_SYS_RESOURCE CAP_DAC_OVERRIDE CAP_CHOWN",
            // its pid and state files; augenrules rewrites audit.rules only when rules.d changed
            "ReadWritePaths=/var/log/audit /etc/audit /run",
            "RestrictAddressFamilies=AF_NETLINK AF_UNIX",
            // it drops capabilities itself, chowns its logs, sets its priority
            FILTER_WITH_CHOWN[0],
            FILTER_WITH_CHOWN[1],
            "SystemCallFilter=capset",
        ],
        without: &["SystemCallFilter"],
        why: "talks to the kernel's audit system, writes /var/log/audit, forwards to syslog",
    },
    Sandbox {
        unit: "logrotate.service",
        applies: |p| p.logging.enable,
        needs: &[
            // rotated files keep their owners; rsyslog and acct are told by systemctl
            "CapabilityBoundingSet=CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_CHOWN CAP_FOWNER CAP_KILL",
            "ReadWritePaths=/var/log /var/lib/logrotate",
            "RestrictAddressFamilies=AF_UNIX",
            "PrivateNetwork=yes",
            FILTER_WITH_CHOWN[0],
            FILTER_WITH_CHOWN[1],
        ],
        without: &["SystemCallFilter"],
        why: "rotates /var/log",
    },
    Sandbox {
        unit: crate::stages::integrity::CHECK_SERVICE,
        applies: |p| p.integrity.enable,
        needs: &["CapabilityBoundingSet=CAP_DAC_READ_SEARCH CAP_DAC_OVERRIDE", "ProtectHome=read-only", "PrivateNetwork=yes", "RestrictAddressFamilies=AF_UNIX", "ProcSubset=pid"],
        // ProtectKernelModules hides /usr/lib/modules, whose files AIDE compares.
        without: &["ProtectHome", "ProtectKernelModules"],
        why: "reads every file it compares (kernel modules included); writes nothing",
    },
    Sandbox {
        unit: crate::stages::firstboot::HOST_KEYS_UNIT,
        applies: |_| true,
        // ssh-keygen makes the private key 0600 itself; the public one is for all.
        needs: &["CapabilityBoundingSet=", "ReadWritePaths=/etc/ssh", "PrivateNetwork=yes", "RestrictAddressFamilies=AF_UNIX", "ProcSubset=pid", "UMask=0022"],
        without: &["UMask"],
        why: "writes the host key into /etc/ssh",
    },
    Sandbox {
        unit: crate::stages::firstboot::KEYS_RECORD_UNIT,
        applies: |_| true,
        needs: &["CapabilityBoundingSet=", "ReadWritePaths=/var/lib/rampart", "PrivateNetwork=yes", "RestrictAddressFamilies=AF_UNIX", "ProcSubset=pid"],
        without: &[],
        why: "records the provisioned keys' digests in /var/lib/rampart",
    },
];

/// Enabled services left as their packages made them, and why.
pub const NOT_SANDBOXED: &[(&str, &str)] = &[
    ("ssh.service", "sshd starts the users' sessions: every restriction of its unit would be theirs too (its own privilege separation and AppArmor confine it instead)"),
    ("dbus.service", "the system bus: it starts services and passes file descriptors and credentials between them"),
    ("serial-getty@", "getty starts console logins, which must be able to do what an admin does"),
    ("getty@", "getty starts console logins, which must be able to do what an admin does"),
    ("systemd-", "systemd's own units, confined by upstream as far as each allows"),
    ("user@", "each user's service manager, which runs their own services"),
    ("acct.service", "process accounting writes to a file on the root's own mount: the kernel stops accounting when that mount goes away, as a sandbox's private mounts do when the oneshot exits"),
    ("apparmor.service", "loads the AppArmor policy into the kernel at boot (a oneshot that must reach the kernel's security interfaces)"),
];

/// The drop-in for one sandbox.
pub fn drop_in(sandbox: &Sandbox) -> String {
    let mut text = format!("# rampart: service sandboxing ({}): what it needs and nothing more\n[Service]\n", sandbox.why);
    for line in BASE {
        let key = line.split('=').next().unwrap_or_default();
        if !sandbox.without.contains(&key) {
            text.push_str(line);
            text.push('\n');
        }
    }
    for line in sandbox.needs {
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// The exposure `systemd-analyze security --offline` gives a unit, e.g. 2.2.
pub fn parse_exposure(output: &str) -> Option<(f64, String)> {
    let line = output.lines().rev().find(|l| l.contains("Overall exposure level for"))?;
    let rest = line.rsplit(": ").next()?;
    let mut words = rest.split_whitespace();
    let value: f64 = words.next()?.parse().ok()?;
    let rating = words.next()?.to_string();
    Some((value, rating))
}

fn exposure(ctx: &BuildContext, unit: &str) -> Result<(f64, String)> {
    let output = ctx
        .in_root("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager", unit])
        .run()
        .with_context(|| format!("while rating {unit} with the image's systemd-analyze security"))?;
    parse_exposure(&output.stdout_text()).with_context(|| format!("systemd-analyze security gave no exposure level for {unit}"))
}

/// "OK" in systemd-analyze's words: below 5.0.
pub const OK_BELOW: f64 = 5.0;

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    if !ctx.profile.services.sandbox {
        ctx.record("sandboxing", false, json!({ "reason": "services.sandbox = false" }));
        return Ok(());
    }
    let mut sandboxed = Vec::new();
    for sandbox in SANDBOXES.iter().filter(|s| (s.applies)(&ctx.profile)) {
        let unit_dir = if ctx.root().join("etc/systemd/system").join(sandbox.unit).exists() { "etc/systemd/system" } else { "lib/systemd/system" };
        if !ctx.root().join(unit_dir).join(sandbox.unit).exists() {
            continue;
        }
        ctx.install_file(&format!("etc/systemd/system/{}.d/50-rampart-sandbox.conf", sandbox.unit), drop_in(sandbox).as_bytes(), 0o644)?;
        let (value, rating) = exposure(ctx, sandbox.unit)?;
        if value >= OK_BELOW {
            bail!("{}: the image's systemd-analyze security rates its sandbox {value} {rating}, above OK; rampart's table in stages/sandboxing.rs needs mending", sandbox.unit);
        }
        sandboxed.push(json!({ "unit": sandbox.unit, "exposure": value, "rating": rating, "why-it-needs-what-it-has": sandbox.why }));
    }
    ctx.record(
        "sandboxing",
        true,
        json!({
            "sandboxed": sandboxed,
            "not-sandboxed": NOT_SANDBOXED.iter().map(|(unit, why)| json!({ "unit": unit, "why": why })).collect::<Vec<_>>(),
            "checked-with": "systemd-analyze security --offline (the image's own); OK is below 5.0",
        }),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposure_is_read_from_the_last_line() {
        let output = "  NAME  DESCRIPTION  EXPOSURE\n✓ PrivateNetwork= ...\n\n→ Overall exposure level for rsyslog.service: 2.2 OK 🙂\n";
        assert_eq!(parse_exposure(output), Some((2.2, "OK".to_string())));
        assert_eq!(parse_exposure("nothing"), None);
    }

    #[test]
    fn a_sandbox_replaces_the_base_lines_it_cannot_live_with() {
        let rsyslog = SANDBOXES.iter().find(|s| s.unit == "rsyslog.service").unwrap();
        let text = drop_in(rsyslog);
        assert_eq!(text.matches("ProtectKernelLogs=").count(), 1);
        assert!(text.contains("ProtectKernelLogs=no\n"));
        assert_eq!(text.matches("UMask=").count(), 1);
        assert!(text.contains("UMask=0027\n"));
        let nftables = drop_in(SANDBOXES.iter().find(|s| s.unit == "nftables.service").unwrap());
        assert!(nftables.contains("ProtectKernelLogs=yes\n") && nftables.contains("UMask=0077\n"));
    }
}
