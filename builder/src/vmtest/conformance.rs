//! Checks that the booted machine is what its profile says: the running
//! services, the listening sockets, the sysctls, what each service logs,
//! and the first login's forced password change.

use std::time::Duration;

use crate::vmtest::qemu::Machine;
use crate::vmtest::scenario::{Action, Check};
use std::collections::BTreeMap;

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
            // For each running one: its main process's name, found among the
            // program names of /var/log/syslog or auth.log (sshd logs as auth).
            let script = format!(
                "for u in {}; do [ \"$(systemctl is-active $u)\" = active ] || continue; \
                 pid=$(systemctl show -p MainPID --value $u); [ \"$pid\" -gt 0 ] || continue; comm=$(cat /proc/$pid/comm); \
                 tag=$comm; [ ${{#comm}} -eq 15 ] && tag=\"$comm[^ :[]*\"; \
                 if grep -qE \" $tag(\\[[0-9]+\\])?: \" /var/log/syslog /var/log/auth.log; then echo \"$u logs as $comm\"; else echo \"SILENT $u ($comm)\"; fi; done",
                units.join(" ")
            );
            let output = ssh(machine, &script, check.timeout)?;
            let text = output.stdout_text();
            if !output.status.success() || text.contains("SILENT") || !text.contains(" logs as ") {
                let silent: Vec<&str> = text.lines().filter_map(|line| line.strip_prefix("SILENT ")).collect();
                return Err(failed(
                    format!("running services of the profile with no lines of their own in /var/log/syslog or auth.log: {}", silent.join(", ")),
                    show(&script, &output),
                ));
            }
            Ok(None)
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
