//! Checks that the booted machine is what its profile says: the running
//! services, the listening sockets, the sysctls, what each service logs,
//! and the first login's forced password change.

use std::time::Duration;

use crate::vmtest::qemu::Machine;
use crate::vmtest::scenario::{Action, Check};
use std::collections::BTreeMap;

use crate::ui;
use crate::vmtest::{failed, guest_ssh, show, CheckEnv, CheckFailure};

/// Runs one check of this family; `Ok(Some(output))` is compared across machines (`differ`).
pub(super) fn run(machine: &mut Machine, check: &Check, env: &CheckEnv) -> Result<Option<String>, CheckFailure> {
    let ssh = |machine: &Machine, command: &str, timeout: Duration| guest_ssh(machine, check, env, command, timeout);
    match &check.action {
        Action::RunningServicesMatchProfile => {
            let command = "systemctl list-units --type=service --state=running --no-legend --plain";
            let output = ssh(machine, command, check.timeout)?;
            let running: Vec<String> = output.stdout_text().lines().filter_map(|l| l.split_whitespace().next().map(String::from)).collect();
            let expected = crate::stages::services::expected_running(env.profile);
            let unexpected: Vec<&String> = running.iter().filter(|u| !expected.iter().any(|e| crate::stages::services::unit_matches(e, u))).collect();
            let missing: Vec<&String> = env
                .profile
                .services
                .enable
                .iter()
                .map(|u| &u.value)
                .filter(|u| u.ends_with(".service") && !running.contains(u))
                .collect();
            if !unexpected.is_empty() || !missing.is_empty() {
                return Err(failed(
                    format!("running services differ from the allow-list: not allowed but running {unexpected:?}; allowed but not running {missing:?}"),
                    show(command, &output),
                ));
            }
            Ok(None)
        }
        Action::ListeningSocketsMatchProfile => {
            let command = "ss -Hlntu";
            let output = ssh(machine, command, check.timeout)?;
            let listening = parse_listening(&output.stdout_text());
            let declared: std::collections::BTreeSet<(String, u16)> = crate::stages::firewall::declared_ports(env.profile)
                .iter()
                .map(|a| (a.protocol.as_str().to_string(), a.port.get()))
                .collect();
            if listening != declared {
                return Err(failed(
                    format!("listening sockets {listening:?} differ from the declared {declared:?}"),
                    show(command, &output),
                ));
            }
            Ok(None)
        }
        Action::SysctlsMatchProfile => {
            let expected = crate::stages::kernel::expected_sysctls(env.profile);
            let keys: Vec<String> = expected.keys().map(|k| shell_words::quote(k).into_owned()).collect();
            let command = format!(
                "for key in {}; do printf '%s = %s\\n' \"$key\" \"$(sysctl -n \"$key\" 2>&1 | tr '\\t\\n' '  ')\"; done",
                keys.join(" ")
            );
            let output = ssh(machine, &command, check.timeout)?;
            let found = parse_sysctl_readings(&output.stdout_text());
            let differing: Vec<String> = expected
                .iter()
                .filter(|(key, value)| found.get(*key) != Some(value))
                .map(|(key, value)| format!("{key}: set {value}, reads {}", found.get(key).map(String::as_str).unwrap_or("nothing")))
                .collect();
            if !differing.is_empty() {
                return Err(failed(format!("{} of {} sysctls differ from the profile: {}", differing.len(), expected.len(), differing.join("; ")), show(&command, &output)));
            }
            Ok(None)
        }
        Action::ProfileServicesLog => {
            let mut units: Vec<String> = env.profile.services.enable.iter().map(|u| u.value.clone()).collect();
            units.extend(crate::stages::services::implied_units(env.profile).into_iter().map(|(u, _)| u));
            units.retain(|u| u.ends_with(".service"));
            units.sort();
            units.dedup();
            let script = services_log_script(&units);
            // rsyslog writes a forwarded line a moment after the journal has
            // it, and journald reports the lines it could not forward at most
            // every 30 s: a silent service is asked again until the check's
            // time is up, and that is never less than 90 s.
            let deadline = std::time::Instant::now() + check.timeout.max(Duration::from_secs(90));
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now()).max(Duration::from_secs(10));
                let output = ssh(machine, &script, left)?;
                let text = output.stdout_text();
                let silent: Vec<&str> = text.lines().filter_map(|line| line.strip_prefix("SILENT ")).collect();
                let cannot: Vec<&str> = text.lines().filter_map(|line| line.strip_prefix("CANNOT ")).collect();
                let logging = text.contains(" logs as ");
                if output.status.success() && silent.is_empty() && cannot.is_empty() && logging {
                    if let Some((at, count)) = text.lines().find_map(|line| line.strip_prefix("MISSED ")?.split_once(' ')) {
                        ui::step(&format!("{}: journald could not hand {count} messages to rsyslog (the syslog socket was full; they are in the journal); services are held to syslog from its last report, at {at}", machine.name));
                    }
                    let quiet: Vec<&str> = text.lines().filter_map(|line| line.strip_prefix("QUIET ")).collect();
                    if !quiet.is_empty() {
                        ui::step(&format!("{}: quiet services (no journal lines to look for in syslog): {}", machine.name, quiet.join(", ")));
                    }
                    return Ok(None);
                }
                if !cannot.is_empty() || !output.status.success() || std::time::Instant::now() + Duration::from_secs(3) > deadline {
                    let why = if !cannot.is_empty() {
                        format!("the check cannot tell a quiet service from a silenced one: it cannot {}", cannot.join("; nor "))
                    } else if silent.is_empty() {
                        "no running service of the profile has lines of its own in /var/log/syslog or auth.log".to_string()
                    } else {
                        format!("lines in the journal since rsyslog started (and since journald last reported messages it could not hand over) that are missing from /var/log/syslog and auth.log: {}", silent.join(", "))
                    };
                    return Err(failed(why, show(&script, &output)));
                }
                crate::process::pause(Duration::from_secs(3));
            }
        }
        Action::FirstLoginForcedPasswordChange => {
            if env.session.forced_password_change {
                Ok(None)
            } else {
                Err(failed("the first login was let in without changing the initial password", String::new()))
            }
        }
        other => Err(failed(format!("{other:?} is not a check of this family"), String::new())),
    }
}

/// (protocol, port) of every listening socket in `ss -Hlntu` output, except
/// the DHCP clients' own (68, 546), which only take replies to their requests.
pub(super) fn parse_listening(text: &str) -> std::collections::BTreeSet<(String, u16)> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let protocol = fields.first()?.to_string();
            let port: u16 = fields.get(4)?.rsplit(':').next()?.parse().ok()?;
            Some((protocol, port))
        })
        .filter(|(protocol, port)| !(protocol == "udp" && (*port == 68 || *port == 546)))
        .collect()
}

/// `key = value` lines, values with their white space collapsed (the kernel
/// separates several numbers with tabs).
pub(super) fn parse_sysctl_readings(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once(" = "))
        .map(|(key, value)| (key.trim().to_string(), value.split_whitespace().collect::<Vec<_>>().join(" ")))
        .collect()
}

/// For each running unit of `units`, a line: `<unit> logs as <name>` when
/// its main process's name tags lines of /var/log/syslog or auth.log (sshd
/// logs as auth); `QUIET <unit> (<name>)` when that process has written
/// nothing to the journal since the boundary below (nothing to forward: no
/// proof either way, and not a failure); otherwise `SILENT <unit> (<name>)`:
/// the journal has its lines and syslog does not.
///
/// The boundary is rsyslog's start, to the microsecond, or journald's last
/// report that it could not hand messages to rsyslog, if later (journald's
/// own lines, `_TRANSPORT=driver`, which no client can write): at boot,
/// journald fills the syslog socket before rsyslog reads it, drops what does
/// not fit (`Forwarding to syslog missed N messages.`, reported at most
/// every 30 s) and keeps it in the journal. A `MISSED <time> <count>` line
/// says so. A line sent with `logger` now must reach syslog, or the
/// check's output has `SILENT a line sent with logger`: a socket nobody
/// reads makes journald report misses over and over, and that must not
/// pass for quiet services.
///
/// First a `CANNOT ...` line if the journal shows the checking user nothing
/// of PID 1, rsyslog is not active, its start time cannot be read or
/// journalctl fails: each would make services look quiet. Only the main
/// process's lines count, as only its name is looked for in syslog (a
/// unit's other programs log under their own names).
fn services_log_script(units: &[String]) -> String {
    services_log_script_reading(units, "/var/log/syslog /var/log/auth.log")
}

fn services_log_script_reading(units: &[String], logs: &str) -> String {
    format!(
        "journalctl -q -o cat -n 1 --no-pager _PID=1 | grep -q . || echo 'CANNOT read the journal: it shows no lines of PID 1'; \
         systemctl is-active --quiet rsyslog.service || echo 'CANNOT tell what rsyslog missed: it is not active'; \
         started=$(systemctl show -p ActiveEnterTimestamp --timestamp=us+utc --value rsyslog.service); \
         since=$([ -n \"$started\" ] && date -u -d \"$started\" +%s.%6N) || echo \"CANNOT tell when rsyslog started: '$started'\"; \
         missed=$(journalctl -b -q -o short-unix --no-pager _TRANSPORT=driver | grep -F 'Forwarding to syslog missed' | awk '{{n += $(NF-1); t = $1}} END {{if (NR) print t, n}}'); \
         if [ -n \"$missed\" ]; then echo \"MISSED $missed\"; since=$(printf '%s\\n%s\\n' \"$since\" \"${{missed%% *}}\" | sort -g | tail -n 1); fi; \
         probe=\"rampart-services-log-$(cat /proc/sys/kernel/random/boot_id)\"; \
         if ! grep -qF \"$probe\" {logs}; then logger -t rampart-check \"$probe\"; sleep 2; grep -qF \"$probe\" {logs} || echo \"SILENT a line sent with logger ($probe)\"; fi; \
         for u in {units}; do [ \"$(systemctl is-active $u)\" = active ] || continue; \
         pid=$(systemctl show -p MainPID --value $u); [ \"$pid\" -gt 0 ] || continue; comm=$(cat /proc/$pid/comm) && [ -n \"$comm\" ] || continue; \
         tag=$comm; [ ${{#comm}} -eq 15 ] && tag=\"$comm[^ :[]*\"; \
         if grep -qE \" $tag(\\[[0-9]+\\])?: \" {logs}; then echo \"$u logs as $comm\"; \
         elif ! lines=$(journalctl -q -o cat -n 1 --no-pager _PID=$pid --since \"@$since\"); then echo \"CANNOT query the journal for $u since @$since\"; \
         elif [ -z \"$lines\" ]; then echo \"QUIET $u ($comm)\"; \
         else echo \"SILENT $u ($comm)\"; fi; done",
        units = units.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::services_log_script_reading;
    use crate::process::{Background, Cmd};
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    /// A process whose name (/proc/PID/comm) is `name`: sleep, run through
    /// a symbolic link of that name (comm is the name it was run by).
    fn named_process(dir: &Path, name: &str) -> Background {
        let program = dir.join(name);
        std::os::unix::fs::symlink("/bin/sleep", &program).unwrap();
        Cmd::new(&program.display().to_string()).arg("30").spawn_background(&dir.join(format!("{name}.log"))).unwrap()
    }

    fn stub(dir: &Path, name: &str, body: &str) {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// What the stub journal and syslog hold for one run of the guest's script.
    #[derive(Default)]
    struct Guest<'a> {
        /// PID 1's lines are readable
        readable: bool,
        /// journalctl fails
        broken: bool,
        /// logger's line reaches the syslog file
        logger_works: bool,
        syslog: &'a str,
        /// (process name, unix time of its one journal line)
        journal: &'a [(&'a str, &'a str)],
        /// journald's own lines, `-o short-unix`
        journald: &'a str,
    }

    /// rsyslog's start in the stub systemctl: 2026-12-06 12:00:00.25 UTC.
    const RSYSLOG_STARTED: &str = "Sun 2026-12-06 12:00:00.250000 UTC";

    /// The guest's script, run against stub systemctl, journalctl and
    /// logger: the journal of each PID is a file `journal-<pid>` of
    /// `<unix time> <line>`, which the stub journalctl filters by
    /// `--since @<time>`; every unit is active with the stub processes as
    /// main PIDs.
    fn run(guest: &Guest) -> String {
        let dir = tempfile::tempdir().unwrap();
        let mut children: Vec<(String, Background)> = ["chattyd", "quietd", "silentd"].iter().map(|n| (n.to_string(), named_process(dir.path(), n))).collect();
        let d = dir.path().display();
        let mut pids = String::new();
        for (name, child) in &children {
            pids.push_str(&format!("*{name}*) echo {} ;; ", child.id()));
            for (_, at) in guest.journal.iter().filter(|(n, _)| n == name) {
                std::fs::write(dir.path().join(format!("journal-{}", child.id())), format!("{at} a line\n")).unwrap();
            }
        }
        if guest.readable {
            std::fs::write(dir.path().join("journal-1"), "1796558399.000000 systemd line\n").unwrap();
        }
        std::fs::write(dir.path().join("journal-journald"), guest.journald).unwrap();
        stub(dir.path(), "systemctl", &format!("case \"$*\" in is-active*--quiet*) ;; is-active*) echo active ;; *ActiveEnterTimestamp*us+utc*rsyslog*) echo '{RSYSLOG_STARTED}' ;; {pids} esac"));
        stub(
            dir.path(),
            "journalctl",
            &format!(
                "[ -e {d}/journal-broken ] && exit 1; since=0; file=; while [ $# -gt 0 ]; do case $1 in --since) since=${{2#@}}; shift ;; _PID=*) file={d}/journal-${{1#_PID=}} ;; _TRANSPORT=driver) file={d}/journal-journald ;; esac; shift; done; \
                 [ -e \"$file\" ] && awk -v s=\"$since\" '$1 >= s + 0' \"$file\"; true"
            ),
        );
        if guest.logger_works {
            stub(dir.path(), "logger", &format!("echo \"Dec  6 12:00:09 host rampart-check: $3\" >> {d}/syslog"));
        } else {
            stub(dir.path(), "logger", "true");
        }
        stub(dir.path(), "sleep", "true");
        if guest.broken {
            std::fs::write(dir.path().join("journal-broken"), "").unwrap();
        }
        std::fs::write(dir.path().join("syslog"), guest.syslog).unwrap();
        let units: Vec<String> = ["chattyd.service", "quietd.service", "silentd.service"].iter().map(|s| s.to_string()).collect();
        let script = services_log_script_reading(&units, &format!("{d}/syslog"));
        let output = Cmd::new("sh").arg("-c").arg(&script).env("PATH", format!("{d}:/usr/bin:/bin")).run_unchecked().unwrap();
        for (_, child) in &mut children {
            child.kill();
        }
        output.stdout_text()
    }

    const CHATTY_IN_SYSLOG: &str = "Dec  6 12:00:01 host chattyd[42]: started\n";

    #[test]
    fn a_service_with_journal_lines_missing_from_syslog_is_silent_one_with_none_is_quiet() {
        let journal = [("chattyd", "1796558401.0"), ("silentd", "1796558401.0")];
        let text = run(&Guest { readable: true, logger_works: true, syslog: CHATTY_IN_SYSLOG, journal: &journal, ..Default::default() });
        assert!(text.contains("chattyd.service logs as chattyd\n"), "{text}");
        assert!(text.contains("QUIET quietd.service (quietd)\n"), "{text}");
        assert!(text.contains("SILENT silentd.service (silentd)\n"), "{text}");
        assert!(!text.contains("CANNOT") && !text.contains("MISSED") && !text.contains("logger"), "{text}");
    }

    #[test]
    fn lines_from_before_rsyslog_started_to_the_microsecond_are_not_held_to_syslog() {
        // 0.1 s before rsyslog's start, in the same second
        let journal = [("silentd", "1796558400.150000")];
        let text = run(&Guest { readable: true, logger_works: true, syslog: CHATTY_IN_SYSLOG, journal: &journal, ..Default::default() });
        assert!(text.contains("QUIET silentd.service (silentd)\n"), "{text}");
        let journal = [("silentd", "1796558400.350000")];
        let text = run(&Guest { readable: true, logger_works: true, syslog: CHATTY_IN_SYSLOG, journal: &journal, ..Default::default() });
        assert!(text.contains("SILENT silentd.service (silentd)\n"), "{text}");
    }

    #[test]
    fn lines_journald_reported_missing_are_counted_and_only_later_ones_held_to_syslog() {
        let journald = "1796558430.500000 host systemd-journald[273]: Forwarding to syslog missed 307 messages.\n\
                        1796558470.000000 host systemd-journald[273]: Forwarding to syslog missed 5 messages.\n";
        let journal = [("silentd", "1796558460.0")];
        let text = run(&Guest { readable: true, logger_works: true, syslog: CHATTY_IN_SYSLOG, journal: &journal, journald, ..Default::default() });
        assert!(text.contains("MISSED 1796558470.000000 312\n"), "{text}");
        assert!(text.contains("QUIET silentd.service (silentd)\n"), "{text}");
        let journal = [("silentd", "1796558480.0")];
        let text = run(&Guest { readable: true, logger_works: true, syslog: CHATTY_IN_SYSLOG, journal: &journal, journald, ..Default::default() });
        assert!(text.contains("SILENT silentd.service (silentd)\n"), "{text}");
    }

    #[test]
    fn a_syslog_socket_nobody_reads_fails_even_when_every_service_looks_quiet() {
        // journald reports misses over and over; every line is older than the last report
        let journald = "1796558470.000000 host systemd-journald[273]: Forwarding to syslog missed 900 messages.\n";
        let journal = [("silentd", "1796558460.0")];
        let text = run(&Guest { readable: true, syslog: CHATTY_IN_SYSLOG, journal: &journal, journald, ..Default::default() });
        assert!(text.contains("QUIET silentd.service (silentd)\n"), "{text}");
        assert!(text.contains("SILENT a line sent with logger (rampart-services-log-"), "{text}");
    }

    #[test]
    fn a_journal_the_check_cannot_read_is_said_so_not_taken_for_quiet_services() {
        let text = run(&Guest { logger_works: true, ..Default::default() });
        assert!(text.starts_with("CANNOT read the journal"), "{text}");
    }

    #[test]
    fn a_journalctl_that_fails_is_said_so_not_taken_for_a_quiet_service() {
        let text = run(&Guest { readable: true, broken: true, logger_works: true, syslog: CHATTY_IN_SYSLOG, ..Default::default() });
        assert!(text.contains("CANNOT query the journal for quietd.service since @1796558400.250000"), "{text}");
        assert!(!text.contains("QUIET"), "{text}");
    }
}
