//! Checks of the remote log host (`logging.remote` on the isolated
//! network): a logged line arrives; lines logged while the host is down
//! wait in rsyslog's disk queue and arrive once it is back.

use std::time::{Duration, Instant};

use crate::vmtest::qemu::Machine;
use crate::vmtest::scenario::{Action, Check};
use crate::vmtest::{failed, guest_ssh, show, CheckEnv, CheckFailure};

/// Runs one check of this family; `Ok(Some(output))` is compared across machines (`differ`).
pub(super) fn run(machine: &mut Machine, check: &Check, env: &CheckEnv) -> Result<Option<String>, CheckFailure> {
    let outside = env.outside;
    let deadline = Instant::now() + check.timeout;
    let remaining = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
    let ssh = |machine: &Machine, command: &str, timeout: Duration| guest_ssh(machine, check, env, command, timeout);
    match &check.action {
        Action::RemoteLogReceives | Action::RemoteLogSurvivesOutage => {
            let Some(collector) = outside.and_then(|(lab, _)| lab.collector.as_ref()) else {
                return Err(failed("this check needs the profile's remote log host on the isolated network", String::new()));
            };
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
            let tag = format!("rampart-check-{}-{nanos}", std::process::id());
            let outage = matches!(check.action, Action::RemoteLogSurvivesOutage);
            if outage {
                collector.stop();
            }
            let lines: Vec<String> = (1..=if outage { 5 } else { 1 }).map(|i| format!("{tag}-line-{i}")).collect();
            for line in &lines {
                let command = format!("logger -p user.notice -t rampart-check {line}");
                let output = ssh(machine, &command, remaining())?;
                if !output.status.success() {
                    return Err(failed(format!("`{command}` failed"), show(&command, &output)));
                }
            }
            if outage {
                // Long enough for rsyslog to notice the host is gone and queue;
                // then a restart of rsyslog, which must keep the queue on disk.
                crate::process::pause(Duration::from_secs(5));
                let Some(password) = &env.session.sudo_password else {
                    return Err(failed("restarting rsyslog needs the admin's password, and the secrets file has none", String::new()));
                };
                let queue = crate::stages::logging::QUEUE_NAME;
                let command = "systemctl restart rsyslog.service && ls /var/spool/rsyslog";
                let output = match machine.ssh_as_root(command, password, remaining()) {
                    Ok(Some(output)) => output,
                    Ok(None) => return Err(failed(format!("`{command}` timed out"), String::new())),
                    Err(error) => return Err(failed(format!("`{command}` could not run"), format!("{error:#}"))),
                };
                if !output.status.success() || !output.stdout_text().contains(&format!("{queue}.")) {
                    return Err(failed("the forwarding queue was not kept on disk over a restart of rsyslog", show(command, &output)));
                }
                collector.start().map_err(|e| failed("could not start the log collector again", format!("{e:#}")))?;
            }
            loop {
                let received = collector.received();
                let missing: Vec<&String> = lines.iter().filter(|l| !received.contains(l.as_str())).collect();
                if missing.is_empty() {
                    return Ok(None);
                }
                if Instant::now() >= deadline {
                    let tail: String = received.chars().rev().take(2000).collect::<Vec<_>>().into_iter().rev().collect();
                    return Err(failed(
                        format!("{} of {} lines never reached the log host at {}: {missing:?}", missing.len(), lines.len(), collector.address()),
                        format!("the log host received (tail):\n{tail}"),
                    ));
                }
                crate::process::pause(Duration::from_millis(500));
            }
        }
        other => Err(failed(format!("{other:?} is not a check of this family"), String::new())),
    }
}
