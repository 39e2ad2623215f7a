//! Service sandboxing control (Lynis BOOT-5264, systemd-analyze security):
//! each service rampart enables or adds runs with a systemd hardening drop-in
//! (`<unit>.d/50-rampart-sandbox.conf`): a read-only system, no home
//! directories, private /tmp and devices, kernel interfaces protected, no new
//! privileges, only the capabilities, address families, system calls and
//! writable paths it needs. A profile's `[services.sandboxes."<unit>"]`
//! directives replace the lines of their key (on rampart's entry, or on
//! `BASE` for a service of the profile's own). The image's own
//! `systemd-analyze security --offline` rates every sandboxed service at
//! build time; one rated above "OK", or a line its systemd refuses, fails the
//! build. Services that cannot be confined (they start users' sessions, or
//! are systemd's own) are listed with the reason.

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::build::context::BuildContext;
use crate::located::LocatedError;
use crate::profile::{BackupTarget, Profile};
use crate::traced::{line_named_after, TracedText};

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
    applies: fn(&Profile) -> bool,
    needs: &'static [&'static str],
    without: &'static [&'static str],
    /// What depends on the profile's settings.
    from_settings: Option<fn(&Profile) -> SettingsLines>,
    why: &'static str,
}

/// The part of a sandbox that depends on the profile's settings: more
/// `BASE` keys left out, more lines.
#[derive(Debug, Default)]
struct SettingsLines {
    without: Vec<&'static str>,
    needs: Vec<String>,
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
        from_settings: None,
        why: "writes /var/log and its forwarding queue, reads the kernel log, sends to the log host",
    },
    Sandbox {
        unit: "nftables.service",
        applies: |p| p.firewall.enable,
        needs: &["CapabilityBoundingSet=CAP_NET_ADMIN", "RestrictAddressFamilies=AF_NETLINK AF_UNIX", "ProcSubset=pid"],
        without: &[],
        from_settings: None,
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
        from_settings: Some(|p| SettingsLines {
            without: Vec::new(),
            // space_left_action = email: sendmail drops the warning into postfix's queue
            needs: if p.mail.enable { vec!["ReadWritePaths=/var/spool/postfix/maildrop".to_string()] } else { Vec::new() },
        }),
        why: "talks to the kernel's audit system, writes /var/log/audit, forwards to syslog, mails root when its partition runs low",
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
        from_settings: None,
        why: "rotates /var/log",
    },
    Sandbox {
        unit: crate::stages::integrity::CHECK_SERVICE,
        applies: |p| p.integrity.enable,
        needs: &["CapabilityBoundingSet=CAP_DAC_READ_SEARCH CAP_DAC_OVERRIDE", "ProtectHome=read-only", "PrivateNetwork=yes", "RestrictAddressFamilies=AF_UNIX", "ProcSubset=pid"],
        // ProtectKernelModules hides /usr/lib/modules, whose files AIDE compares.
        without: &["ProtectHome", "ProtectKernelModules"],
        from_settings: None,
        why: "reads every file it compares (kernel modules included); writes nothing",
    },
    Sandbox {
        unit: crate::stages::firstboot::HOST_KEYS_UNIT,
        applies: |_| true,
        // ssh-keygen makes the private key 0600 itself; the public one is for all.
        needs: &["CapabilityBoundingSet=", "ReadWritePaths=/etc/ssh", "PrivateNetwork=yes", "RestrictAddressFamilies=AF_UNIX", "ProcSubset=pid", "UMask=0022"],
        without: &["UMask"],
        from_settings: None,
        why: "writes the host key into /etc/ssh",
    },
    Sandbox {
        unit: crate::stages::vpn::KEY_UNIT,
        applies: |p| p.vpn.enable,
        // the key is given to systemd-network's group, which networkd reads it as
        needs: &[
            "CapabilityBoundingSet=CAP_CHOWN",
            "ReadWritePaths=/var/lib/rampart-vpn",
            "PrivateNetwork=yes",
            "RestrictAddressFamilies=AF_UNIX",
            "ProcSubset=pid",
            FILTER_WITH_CHOWN[0],
            FILTER_WITH_CHOWN[1],
        ],
        without: &["SystemCallFilter"],
        from_settings: None,
        why: "makes this machine's WireGuard key in /var/lib/rampart-vpn",
    },
    Sandbox {
        unit: crate::stages::gateway::DHCP_SERVICE,
        applies: |p| p.gateway.enable && p.gateway.dhcp.is_some(),
        needs: &[
            // DHCP: raw sockets (ICMP probes, ARP), the privileged ports; then it becomes the dnsmasq user
            "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_NET_RAW CAP_SETUID CAP_SETGID CAP_CHOWN",
            // its pid file, in a directory systemd makes root's (Debian's helper
            // gives one it makes to the dnsmasq user, where root without
            // CAP_DAC_OVERRIDE cannot write)
            "RuntimeDirectory=dnsmasq",
            "ReadWritePaths=/var/lib/misc",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_PACKET",
            FILTER_WITH_CHOWN[0],
            FILTER_WITH_CHOWN[1],
            // it keeps CAP_NET_ADMIN across its change of user
            "SystemCallFilter=capset",
            "UMask=0022",
        ],
        without: &["SystemCallFilter", "UMask"],
        from_settings: None,
        why: "answers DHCP and DNS on lan, keeps its leases in /var/lib/misc",
    },
    Sandbox {
        unit: crate::stages::mail::SERVICE,
        applies: |p| p.mail.enable,
        needs: &[
            // master runs as root and starts its daemons as postfix; local(8)
            // writes mailboxes as their owners; no daemon is chrooted (master.cf)
            "CapabilityBoundingSet=CAP_SETUID CAP_SETGID CAP_CHOWN CAP_FOWNER CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_KILL",
            "ReadWritePaths=/var/spool/postfix /var/lib/postfix /var/mail",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
            FILTER_WITH_CHOWN[0],
            FILTER_WITH_CHOWN[1],
            "UMask=0022",
        ],
        without: &["SystemCallFilter", "UMask", "PrivateIPC"],
        from_settings: Some(|p| SettingsLines {
            without: Vec::new(),
            // [mail-gateway]: smtpd on port 25
            needs: if p.mail_gateway.enable { vec!["CapabilityBoundingSet=CAP_NET_BIND_SERVICE".to_string()] } else { Vec::new() },
        }),
        why: "postfix: queues mail in /var/spool/postfix, delivers root's mailbox in /var/mail or relays to the smarthost (with [mail-gateway], listens on port 25 and hands each message to the milters)",
    },
    Sandbox {
        unit: crate::stages::mail_gateway::CLAMD_SERVICE,
        applies: |p| p.mail_gateway.enable,
        // its socket is systemd's (clamav-daemon.socket); it reads the signatures and scans in its private /tmp
        needs: &["User=clamav", "Group=clamav", "CapabilityBoundingSet=", "PrivateNetwork=yes", "RestrictAddressFamilies=AF_UNIX"],
        without: &[],
        from_settings: None,
        why: "clamd scans what the milter hands it on its local socket, with the build's signatures",
    },
    Sandbox {
        unit: crate::stages::mail_gateway::CLAMAV_MILTER_SERVICE,
        applies: |p| p.mail_gateway.enable,
        // it gives its socket to group postfix (a group it is in: no capability)
        needs: &["CapabilityBoundingSet=", "PrivateNetwork=yes", "RestrictAddressFamilies=AF_UNIX", FILTER_WITH_CHOWN[0], FILTER_WITH_CHOWN[1]],
        without: &["SystemCallFilter"],
        from_settings: None,
        why: "ClamAV's milter: passes each message from postfix to clamd, on local sockets only",
    },
    Sandbox {
        unit: crate::stages::mail_gateway::SPAMD_SERVICE,
        applies: |p| p.mail_gateway.enable,
        needs: &["CapabilityBoundingSet=", "PrivateNetwork=yes", "RestrictAddressFamilies=AF_UNIX"],
        without: &[],
        from_settings: None,
        why: "spamd scores what the milter hands it on its local socket (no network tests)",
    },
    Sandbox {
        unit: crate::stages::mail_gateway::SPAMASS_MILTER_SERVICE,
        applies: |p| p.mail_gateway.enable,
        // its socket, group postfix by its setgid directory, 0770 by its umask
        needs: &["CapabilityBoundingSet=", "ReadWritePaths=/run/spamass-milter", "PrivateNetwork=yes", "RestrictAddressFamilies=AF_UNIX", "UMask=0007"],
        without: &["UMask"],
        from_settings: None,
        why: "SpamAssassin's milter: passes each message from postfix to spamd (spamc), on local sockets only",
    },
    Sandbox {
        unit: crate::stages::mail_gateway::MULTIPLEXOR_SERVICE,
        applies: |p| p.mail_gateway.enable,
        needs: &[
            "User=defang",
            "Group=defang",
            "CapabilityBoundingSet=",
            "ReadWritePaths=/var/spool/MIMEDefang /run/mimedefang",
            "PrivateNetwork=yes",
            "RestrictAddressFamilies=AF_UNIX",
        ],
        without: &[],
        from_settings: None,
        why: "MIMEDefang's Perl workers: run the filter on each message in /var/spool/MIMEDefang",
    },
    Sandbox {
        unit: crate::stages::mail_gateway::MIMEDEFANG_SERVICE,
        applies: |p| p.mail_gateway.enable,
        needs: &[
            "User=defang",
            "Group=defang",
            "CapabilityBoundingSet=",
            "ReadWritePaths=/var/spool/MIMEDefang /run/mimedefang /run/mimedefang-milter",
            "PrivateNetwork=yes",
            "RestrictAddressFamilies=AF_UNIX",
        ],
        without: &[],
        from_settings: None,
        why: "MIMEDefang's milter: takes each message from postfix into /var/spool/MIMEDefang for the workers",
    },
    Sandbox {
        unit: crate::stages::mail::ALERT_TEMPLATE,
        applies: |p| p.mail.enable,
        needs: &[
            // root's journal and the failed unit's state; the mail goes into postfix's maildrop
            "CapabilityBoundingSet=CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH",
            "ReadWritePaths=/var/spool/postfix/maildrop",
            "PrivateNetwork=yes",
            "RestrictAddressFamilies=AF_UNIX",
        ],
        without: &[],
        from_settings: None,
        why: "mails root what a watched unit's failed run logged (every instance: the drop-in is the template's)",
    },
    Sandbox {
        unit: crate::stages::passwords::AUDIT_SERVICE,
        applies: |p| p.passwords.audit.is_some(),
        needs: &[
            // reads /etc/shadow; chage rewrites it (a new file, renamed) and audits the change
            "CapabilityBoundingSet=CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_CHOWN CAP_FOWNER CAP_AUDIT_WRITE",
            "ReadWritePaths=/etc",
            // john's pot file (the passwords it found) goes to root's home: an empty tmpfs here
            "ProtectHome=tmpfs",
            "PrivateNetwork=yes",
            "RestrictAddressFamilies=AF_UNIX AF_NETLINK",
            "ProcSubset=pid",
            FILTER_WITH_CHOWN[0],
            FILTER_WITH_CHOWN[1],
        ],
        without: &["ProtectHome", "SystemCallFilter"],
        from_settings: None,
        why: "reads the shadow file, expires the accounts whose password john finds; john's pot file stays in a private tmpfs",
    },
    Sandbox {
        unit: crate::stages::firstboot::KEYS_RECORD_UNIT,
        applies: |_| true,
        needs: &["CapabilityBoundingSet=", "ReadWritePaths=/var/lib/rampart", "PrivateNetwork=yes", "RestrictAddressFamilies=AF_UNIX", "ProcSubset=pid"],
        without: &[],
        from_settings: None,
        why: "records the provisioned keys' digests in /var/lib/rampart",
    },
    Sandbox {
        unit: crate::stages::backups::SERVICE,
        applies: |p| p.backups.enable,
        needs: &[
            // the archives go to a disk or file system of their own, never the network
            "PrivateNetwork=yes",
            "IPAddressDeny=any",
            "RestrictAddressFamilies=AF_UNIX",
        ],
        without: &[],
        from_settings: Some(backup_sandbox),
        why: "reads everything it backs up; writes borg's state and the archives on the backup target, a disk it mounts in its own mount namespace while a run lasts",
    },
];

/// The backup service's sandbox as its settings need it. borg reads every
/// file it backs up (CAP_DAC_READ_SEARCH; the home directories read-only
/// when they are backed up, the kernel modules visible when they are) and
/// writes only its state directory, its lock and mount point under /run, and
/// the target: a directory target is made writable (a missing one is left to
/// the script, which says so); a device target is the one device it may
/// open, and it mounts it (CAP_SYS_ADMIN, the mount calls) in the service's
/// own mount namespace, so nothing else sees the archives while it runs.
fn backup_sandbox(profile: &Profile) -> SettingsLines {
    use crate::profile::backups::is_within;
    use crate::stages::backups::{BORG_BASE_DIR, RUNTIME_DIR};
    let backups = &profile.backups;
    let mut without = Vec::new();
    let mut needs = vec![
        format!("StateDirectory={}", BORG_BASE_DIR.trim_start_matches("/var/lib/")),
        "StateDirectoryMode=0700".to_string(),
        format!("RuntimeDirectory={}", RUNTIME_DIR.trim_start_matches("/run/")),
        "RuntimeDirectoryMode=0700".to_string(),
        // its lock: an admin's rampart-backup may hold it across the service's runs
        "RuntimeDirectoryPreserve=yes".to_string(),
    ];
    let touches = |area: &str| backups.paths.iter().any(|p| is_within(area, p) || is_within(p, area));
    if ["/home", "/root", "/run/user"].iter().any(|area| touches(area)) {
        without.push("ProtectHome");
        needs.push("ProtectHome=read-only".to_string());
    }
    if ["/usr/lib/modules", "/lib/modules"].iter().any(|area| touches(area)) {
        without.push("ProtectKernelModules");
    }
    match backups.target.as_ref().map(|t| &t.value) {
        Some(BackupTarget::Device(device)) => {
            without.extend(["PrivateDevices", "SystemCallFilter"]);
            needs.extend([
                "CapabilityBoundingSet=CAP_DAC_READ_SEARCH CAP_SYS_ADMIN".to_string(),
                "DevicePolicy=closed".to_string(),
                format!("DeviceAllow={device} rw"),
                "PrivateMounts=yes".to_string(),
                // BASE's filter with @mount allowed (@system-service does
                // not hold it): mount and umount2; chroot and pivot_root stay
                // out with @privileged
                "SystemCallFilter=@system-service @mount".to_string(),
                "SystemCallFilter=~@privileged @debug @cpu-emulation @obsolete @raw-io @reboot @swap".to_string(),
            ]);
        }
        Some(BackupTarget::Directory(directory)) => {
            needs.push("CapabilityBoundingSet=CAP_DAC_READ_SEARCH".to_string());
            needs.push(format!("ReadWritePaths=-{directory}"));
        }
        None => needs.push("CapabilityBoundingSet=CAP_DAC_READ_SEARCH".to_string()),
    }
    SettingsLines { without, needs }
}

/// Enabled services left as their packages made them, and why.
pub const NOT_SANDBOXED: &[(&str, &str)] = &[
    ("ssh.service", "sshd starts the users' sessions: every restriction of its unit would be theirs too (its own privilege separation and AppArmor confine it instead)"),
    ("dbus.service", "the system bus: it starts services and passes file descriptors and credentials between them"),
    ("serial-getty@", "getty starts console logins, which must be able to do what an admin does"),
    ("getty@", "getty starts console logins, which must be able to do what an admin does"),
    ("systemd-", "systemd's own units, confined by upstream as far as each allows"),
    ("user@", "each user's service manager, which runs their own services"),
    ("acct.service", "process accounting writes to a file on the root's own mount: the kernel stops accounting when that mount goes away, as a sandbox's private mounts do when the oneshot exits"),
    ("apt-daily.service", "with updates.automatic: apt fetches the lists as root and turns to its own _apt user for the downloads (setuid and setgroups, the privileged calls a sandbox takes away)"),
    ("apt-daily-upgrade.service", "with updates.automatic: installs packages, and dpkg and the packages' maintainer scripts write anywhere in the system"),
    ("rampart-encrypt-data.service", "with encryption.data: encrypts the data partitions in place before they are opened, writing block devices and the TPM as root, before any file system a sandbox would build on is mounted"),
    ("apparmor.service", "loads the AppArmor policy into the kernel at boot (a oneshot that must reach the kernel's security interfaces)"),
];

/// The drop-in's name in a unit's directory.
const DROP_IN: &str = "50-rampart-sandbox.conf";

fn key_of(line: &str) -> &str {
    line.split('=').next().unwrap_or_default()
}

/// The drop-in for `unit`: `BASE` less the lines its entry cannot live with,
/// the entry's needs (`sandbox` is `None` for a service of the profile's
/// own), then the profile's directives, each replacing every line of its key.
/// Each line remembers the profile field it came from.
pub fn drop_in(unit: &str, sandbox: Option<&Sandbox>, profile: &Profile) -> TracedText {
    let (mut without, mut needs): (Vec<&str>, Vec<String>) = (Vec::new(), Vec::new());
    if let Some(sandbox) = sandbox {
        without.extend(sandbox.without);
        needs.extend(sandbox.needs.iter().map(|line| line.to_string()));
        if let Some(from_settings) = sandbox.from_settings {
            let more = from_settings(profile);
            without.extend(more.without);
            needs.extend(more.needs);
        }
    }
    let mut lines: Vec<(String, Option<String>)> = BASE
        .iter()
        .filter(|line| !without.contains(&key_of(line)))
        .map(|line| (line.to_string(), None))
        .chain(needs.into_iter().map(|line| (line, None)))
        .collect();
    if let Some(given) = profile.services.sandboxes.get(unit) {
        for (key, values) in &given.directives {
            lines.retain(|(line, _)| key_of(line) != key);
            let origin = format!("{}: services.sandboxes.\"{unit}\".{key}", values.at);
            lines.extend(values.value.iter().map(|value| (format!("{key}={value}"), Some(origin.clone()))));
        }
    }
    // Where the profile was written stays out of the image (same inputs, same bytes).
    let why = match (sandbox, profile.services.sandboxes.contains_key(unit)) {
        (Some(sandbox), false) => sandbox.why.to_string(),
        (Some(sandbox), true) => format!("{}; and profile {}'s services.sandboxes", sandbox.why, profile.name),
        (None, true) => format!("rampart's base and profile {}'s services.sandboxes", profile.name),
        (None, false) => "rampart's base".to_string(),
    };
    let mut text = TracedText::default();
    text.line(&format!("# rampart: service sandboxing ({why}): what it needs and nothing more"), None);
    text.line("[Service]", None);
    for (line, origin) in lines {
        text.line(&line, origin);
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

/// The settings that add most to a unit's exposure, largest first, e.g.
/// "PrivateNetwork= (0.5)": what a sandbox rated too high should give next.
pub fn largest_exposures(output: &str, count: usize) -> Vec<String> {
    let mut found: Vec<(f64, &str)> = output
        .lines()
        .filter_map(|line| line.strip_prefix("✗ "))
        .filter_map(|rest| {
            let setting = rest.split_whitespace().next()?;
            let value: f64 = rest.split_whitespace().last()?.parse().ok()?;
            Some((value, setting))
        })
        .collect();
    found.sort_by(|a, b| b.0.total_cmp(&a.0));
    found.into_iter().take(count).map(|(value, setting)| format!("{setting} ({value})")).collect()
}

/// systemd's complaints about the drop-in's lines (it ignores what it cannot
/// parse, so a line it refuses would silently weaken the sandbox), each
/// with its line number.
fn complaints_about(stderr: &str, drop_in_path: &str) -> Vec<(Option<usize>, String)> {
    stderr
        .lines()
        .filter(|line| line.contains(drop_in_path))
        .map(|line| (line_named_after(line, drop_in_path), line.trim().to_string()))
        .collect()
}

struct Rating {
    value: f64,
    rating: String,
    output: String,
    stderr: String,
}

fn rate(ctx: &BuildContext, unit: &str) -> Result<Rating> {
    let output = ctx
        .in_root("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager", unit])
        .run()
        .with_context(|| format!("while rating {unit} with the image's systemd-analyze security"))?;
    let text = output.stdout_text();
    let (value, rating) = parse_exposure(&text).with_context(|| format!("systemd-analyze security gave no exposure level for {unit}"))?;
    Ok(Rating { value, rating, output: text, stderr: String::from_utf8_lossy(&output.stderr).into_owned() })
}

/// "OK" in systemd-analyze's words: below 5.0.
pub const OK_BELOW: f64 = 5.0;

/// Where a unit's file is in the image (an instance's is its template's).
fn unit_file_exists(ctx: &BuildContext, unit: &str) -> bool {
    let file = match unit.split_once('@') {
        Some((prefix, rest)) => format!("{prefix}@{}", &rest[rest.rfind('.').unwrap_or(0)..]),
        None => unit.to_string(),
    };
    ["etc/systemd/system", "lib/systemd/system"].iter().any(|dir| ctx.root().join(dir).join(&file).exists())
}

/// Writes one drop-in, rates it, and fails on a refused line or a rating
/// that is not OK, naming the profile's entry when it has one.
fn sandbox_unit(ctx: &BuildContext, unit: &str, sandbox: Option<&Sandbox>) -> Result<serde_json::Value> {
    let given = ctx.profile.services.sandboxes.get(unit);
    let text = drop_in(unit, sandbox, &ctx.profile);
    let path = format!("etc/systemd/system/{unit}.d/{DROP_IN}");
    ctx.install_file(&path, text.text.as_bytes(), 0o644)?;
    // a template is rated by an instance, which its drop-in covers
    let rated = rate(ctx, &unit.replace("@.service", "@sample.service"))?;
    let shown_path = format!("/{path}");
    if let Some((number, complaint)) = complaints_about(&rated.stderr, &shown_path).into_iter().next() {
        match number.and_then(|n| text.origin(n)) {
            Some(origin) => bail!("{origin}: the image's systemd refuses this directive, so it would not confine {unit}:\n{complaint}"),
            None => bail!("{unit}: the image's systemd refuses a line of rampart's sandbox (its table in stages/sandboxing.rs needs mending):\n{complaint}"),
        }
    }
    if rated.value >= OK_BELOW {
        let largest = largest_exposures(&rated.output, 6).join(", ");
        match given {
            Some(given) => bail!(
                "{}: services.sandboxes.\"{unit}\": the image's systemd-analyze security rates this sandbox {} {}, and it must be below {OK_BELOW:.1} (OK); what adds most: {largest}",
                given.at,
                rated.value,
                rated.rating
            ),
            None => bail!(
                "{unit}: the image's systemd-analyze security rates its sandbox {} {}, above OK ({largest}); rampart's table in stages/sandboxing.rs needs mending",
                rated.value,
                rated.rating
            ),
        }
    }
    let mut record = json!({
        "unit": unit,
        "exposure": rated.value,
        "rating": rated.rating,
        "why-it-needs-what-it-has": sandbox.map(|s| s.why).unwrap_or("the profile's own service: rampart's base and the profile's directives"),
    });
    if let Some(given) = given {
        record["profile-directives"] = json!({
            "at": given.at,
            "directives": given.directives.iter().map(|(key, values)| (key.clone(), values.value.clone())).collect::<std::collections::BTreeMap<_, _>>(),
            "merge": "each directive replaces every line of its name",
        });
    }
    Ok(record)
}

/// The sandbox entry of `unit` in rampart's table, when it applies to `profile`.
fn rampart_sandbox(profile: &Profile, unit: &str) -> Option<&'static Sandbox> {
    SANDBOXES.iter().find(|s| s.unit == unit && (s.applies)(profile))
}

/// Why rampart leaves `unit` as its package made it, if it does.
fn left_unconfined(unit: &str) -> Option<&'static str> {
    NOT_SANDBOXED.iter().find(|(pattern, _)| unit.starts_with(pattern)).map(|(_, why)| *why)
}

/// The last step of profile validation: each unit of
/// `[services.sandboxes]` is one the image runs (rampart's own, or one the
/// allow-list starts) and not one rampart leaves unconfined on purpose.
/// Pure: reads the profile and this module's tables.
pub fn check_profile_units(profile: &Profile) -> Result<(), LocatedError> {
    for (unit, given) in &profile.services.sandboxes {
        let refuse = |message: String| LocatedError { location: given.at.clone(), message: format!("services.sandboxes.\"{unit}\": {message}") };
        if let Some(why) = left_unconfined(unit) {
            return Err(refuse(format!("rampart leaves {unit} unsandboxed on purpose: {why}")));
        }
        if rampart_sandbox(profile, unit).is_none() && !profile.services.enables_service(unit) {
            return Err(refuse(format!(
                "the profile does not run {unit}: list it (or its .socket, .timer or .path) in services.enable"
            )));
        }
    }
    Ok(())
}

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    if !ctx.profile.services.sandbox {
        ctx.record("sandboxing", false, json!({ "reason": "services.sandbox = false (the profile's services.sandboxes too)" }));
        return Ok(());
    }
    let mut sandboxed = Vec::new();
    for sandbox in SANDBOXES.iter().filter(|s| (s.applies)(&ctx.profile)) {
        if !unit_file_exists(ctx, sandbox.unit) {
            if let Some(given) = ctx.profile.services.sandboxes.get(sandbox.unit) {
                bail!("{}: services.sandboxes.\"{}\": the image has no such unit", given.at, sandbox.unit);
            }
            continue;
        }
        sandboxed.push(sandbox_unit(ctx, sandbox.unit, Some(sandbox))?);
    }
    let profile_units: Vec<String> =
        ctx.profile.services.sandboxes.keys().filter(|unit| rampart_sandbox(&ctx.profile, unit).is_none()).cloned().collect();
    for unit in &profile_units {
        if !unit_file_exists(ctx, unit) {
            let at = &ctx.profile.services.sandboxes[unit].at;
            bail!("{at}: services.sandboxes.\"{unit}\": the image has no such unit (no installed package or overlay ships it)");
        }
        sandboxed.push(sandbox_unit(ctx, unit, None)?);
    }
    let mut not_sandboxed: Vec<serde_json::Value> = NOT_SANDBOXED.iter().map(|(unit, why)| json!({ "unit": unit, "why": why })).collect();
    for unit in ctx.profile.services.enable.iter().map(|u| &u.value).filter(|u| u.ends_with(".service")) {
        if rampart_sandbox(&ctx.profile, unit).is_none() && !ctx.profile.services.sandboxes.contains_key(unit) && left_unconfined(unit).is_none() {
            not_sandboxed.push(json!({ "unit": unit, "why": "the profile enables it and gives it no services.sandboxes entry: it runs as its package made it" }));
        }
    }
    ctx.record(
        "sandboxing",
        true,
        json!({
            "sandboxed": sandboxed,
            "not-sandboxed": not_sandboxed,
            "checked-with": "systemd-analyze security --offline (the image's own); OK is below 5.0; a line its systemd refuses fails the build",
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

    /// A profile of the repository's, or one written for the test beside them.
    fn profile(name: &str, text: Option<&str>) -> Profile {
        let profiles = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
        match text {
            None => crate::profile::load(&profiles.join(name)).unwrap(),
            Some(text) => {
                let dir = tempfile::tempdir().unwrap();
                std::fs::create_dir_all(dir.path().join("profiles")).unwrap();
                std::fs::copy(profiles.join("baseline.toml"), dir.path().join("profiles/baseline.toml")).unwrap();
                std::fs::create_dir_all(dir.path().join("overlays")).unwrap();
                for tree in std::fs::read_dir(profiles.join("../overlays")).unwrap() {
                    std::fs::create_dir_all(dir.path().join("overlays").join(tree.unwrap().file_name())).unwrap();
                }
                std::fs::write(dir.path().join("profiles").join(name), text).unwrap();
                crate::profile::load(&dir.path().join("profiles").join(name)).unwrap()
            }
        }
    }

    #[test]
    fn largest_exposures_come_first() {
        let output = "✗ PrivateNetwork=    Service has access to the host's network    0.5\n✓ PrivateTmp=   Service has no access\n✗ User=/DynamicUser=    Service runs as root user    0.4\n✗ UMask=   Files created by service are world-readable by default   0.1\n";
        assert_eq!(largest_exposures(output, 2), ["PrivateNetwork= (0.5)", "User=/DynamicUser= (0.4)"]);
    }

    #[test]
    fn systemd_complaints_are_traced_to_the_profile_field() {
        let stderr = "/etc/systemd/system/nginx.service.d/50-rampart-sandbox.conf:4: Failed to parse protect system value, ignoring: strcit\n/lib/systemd/system/other.service:3: something else\n";
        let complaints = complaints_about(stderr, "/etc/systemd/system/nginx.service.d/50-rampart-sandbox.conf");
        assert_eq!(complaints.len(), 1);
        assert_eq!(complaints[0].0, Some(4));
    }

    #[test]
    fn a_sandbox_replaces_the_base_lines_it_cannot_live_with() {
        let baseline = profile("baseline.toml", None);
        let rsyslog = rampart_sandbox(&baseline, "rsyslog.service").unwrap();
        let text = drop_in("rsyslog.service", Some(rsyslog), &baseline).text;
        assert_eq!(text.matches("ProtectKernelLogs=").count(), 1);
        assert!(text.contains("ProtectKernelLogs=no\n"));
        assert_eq!(text.matches("UMask=").count(), 1);
        assert!(text.contains("UMask=0027\n"));
        let nftables = drop_in("nftables.service", rampart_sandbox(&baseline, "nftables.service"), &baseline).text;
        assert!(nftables.contains("ProtectKernelLogs=yes\n") && nftables.contains("UMask=0077\n"));
    }

    #[test]
    fn the_backup_service_may_open_and_mount_only_its_own_disk() {
        let bastion = profile("lab-bastion.toml", None);
        let unit = crate::stages::backups::SERVICE;
        let text = drop_in(unit, rampart_sandbox(&bastion, unit), &bastion).text;
        for line in [
            "DevicePolicy=closed",
            "DeviceAllow=/dev/disk/by-id/virtio-rampart-backup rw",
            "CapabilityBoundingSet=CAP_DAC_READ_SEARCH CAP_SYS_ADMIN",
            "PrivateMounts=yes",
            "PrivateNetwork=yes",
            "ProtectHome=read-only",
            "ProtectKernelModules=yes",
            "StateDirectory=rampart-backup",
            "RuntimeDirectory=rampart-backup",
            "SystemCallFilter=@system-service @mount",
            "SystemCallFilter=~@privileged @debug @cpu-emulation @obsolete @raw-io @reboot @swap",
        ] {
            assert!(text.contains(&format!("\n{line}\n")), "{line} missing:\n{text}");
        }
        assert!(!text.contains("PrivateDevices=") && !text.contains("ProtectHome=yes") && !text.contains("~@privileged @mount"), "{text}");
        assert_eq!(format!("/run/{}", "rampart-backup"), crate::stages::backups::RUNTIME_DIR);
        assert_eq!(format!("/var/lib/{}", "rampart-backup"), crate::stages::backups::BORG_BASE_DIR);
        assert!(crate::stages::backups::DEVICE_MOUNT_POINT.starts_with(crate::stages::backups::RUNTIME_DIR));
    }

    #[test]
    fn a_backup_directory_target_is_writable_and_nothing_is_mounted() {
        let text = "name = \"dir\"\nextends = \"baseline.toml\"\n[backups]\nenable = true\ndirectory = \"/srv/backup\"\npaths = [\"/etc\", \"/usr\"]\n";
        let dir = profile("dir.toml", Some(text));
        let unit = crate::stages::backups::SERVICE;
        let text = drop_in(unit, rampart_sandbox(&dir, unit), &dir).text;
        for line in ["ReadWritePaths=-/srv/backup", "CapabilityBoundingSet=CAP_DAC_READ_SEARCH", "PrivateDevices=yes", "ProtectHome=yes"] {
            assert!(text.contains(&format!("\n{line}\n")), "{line} missing:\n{text}");
        }
        // /usr holds the kernel modules, which a sandbox would hide from borg
        assert!(!text.contains("ProtectKernelModules=") && !text.contains("CAP_SYS_ADMIN") && !text.contains("DeviceAllow="), "{text}");
        assert!(text.contains("~@privileged @mount"), "{text}");
    }

    #[test]
    fn profile_directives_replace_the_lines_of_their_key_and_name_their_field() {
        let text = "name = \"web\"\nextends = \"baseline.toml\"\n[services]\nenable = [\"ssh.service\", \"nginx.service\"]\n[services.sandboxes.\"rsyslog.service\"]\nReadWritePaths = [\"/var/log\", \"/srv/log\"]\n[services.sandboxes.\"nginx.service\"]\nCapabilityBoundingSet = \"CAP_NET_BIND_SERVICE\"\nMemoryDenyWriteExecute = false\nReadWritePaths = \"/var/log/nginx\"\n";
        let web = profile("web.toml", Some(text));
        let rsyslog = drop_in("rsyslog.service", rampart_sandbox(&web, "rsyslog.service"), &web);
        assert!(rsyslog.text.contains("\nReadWritePaths=/var/log\nReadWritePaths=/srv/log\n"), "{}", rsyslog.text);
        assert_eq!(rsyslog.text.matches("ReadWritePaths=").count(), 2);
        assert!(rsyslog.text.contains("CapabilityBoundingSet=CAP_SYSLOG"), "the table's other lines stay");
        let number = rsyslog.text.lines().position(|l| l == "ReadWritePaths=/srv/log").unwrap() + 1;
        let origin = rsyslog.origin(number).unwrap();
        assert!(origin.ends_with("web.toml:6:1: services.sandboxes.\"rsyslog.service\".ReadWritePaths"), "{origin}");
        // a service of the profile's own: rampart's base, then its directives
        assert!(rampart_sandbox(&web, "nginx.service").is_none());
        let nginx = drop_in("nginx.service", None, &web).text;
        for line in ["ProtectSystem=strict", "NoNewPrivileges=yes", "SystemCallFilter=@system-service", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE", "MemoryDenyWriteExecute=no", "ReadWritePaths=/var/log/nginx"] {
            assert!(nginx.contains(&format!("\n{line}\n")), "{line} missing:\n{nginx}");
        }
        assert_eq!(nginx.matches("MemoryDenyWriteExecute=").count(), 1, "{nginx}");
    }
}
