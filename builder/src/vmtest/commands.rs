//! Checks that run a command in the guest over SSH (as the admin, or as
//! root through sudo) and judge its status and output, or that try logins
//! the guest must refuse.

use std::time::{Duration, Instant};

use crate::vmtest::qemu::Machine;
use crate::vmtest::scenario::{Action, Check};
use crate::vmtest::{failed, guest_ssh, matches_expectation, show, CheckEnv, CheckFailure};

/// Runs one check of this family; `Ok(Some(output))` is compared across machines (`differ`).
pub(super) fn run(machine: &mut Machine, check: &Check, env: &CheckEnv) -> Result<Option<String>, CheckFailure> {
    let stranger = env.stranger;
    let deadline = Instant::now() + check.timeout;
    let remaining = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
    let ssh = |machine: &Machine, command: &str, timeout: Duration| guest_ssh(machine, check, env, command, timeout);
    match &check.action {
        Action::Succeed { command, expect } => {
            let output = ssh(machine, command, check.timeout)?;
            if !output.status.success() {
                return Err(failed(format!("`{command}` failed ({})", crate::process::describe_status(output.status)), show(command, &output)));
            }
            if !matches_expectation(&output.stdout_text(), expect) {
                return Err(failed(format!("`{command}` printed something else than expected: {expect:?}"), show(command, &output)));
            }
            Ok(None)
        }
        Action::Fail { command } => {
            let output = ssh(machine, command, check.timeout)?;
            if output.status.success() {
                return Err(failed(format!("`{command}` succeeded but should have failed"), show(command, &output)));
            }
            Ok(None)
        }
        Action::WaitUntilSucceeds { command, expect } => loop {
            let output = ssh(machine, command, remaining())?;
            if output.status.success() && matches_expectation(&output.stdout_text(), expect) {
                return Ok(None);
            }
            if Instant::now() >= deadline {
                return Err(failed(format!("`{command}` did not succeed within {} s", check.timeout.as_secs()), show(command, &output)));
            }
            crate::process::pause(Duration::from_secs(1));
        },
        Action::WaitForUnit { unit } => loop {
            let command = format!("systemctl is-active {}", shell_words::quote(unit));
            let output = ssh(machine, &command, remaining())?;
            let state = output.stdout_text().trim().to_string();
            if state == "active" {
                return Ok(None);
            }
            if state == "failed" || Instant::now() >= deadline {
                let status_command = format!("systemctl status --no-pager {}", shell_words::quote(unit));
                let status = machine.ssh(&status_command, Duration::from_secs(20)).ok().flatten();
                let details = status.map(|s| show(&status_command, &s)).unwrap_or_default();
                return Err(failed(format!("unit {unit} is {state}"), details));
            }
            crate::process::pause(Duration::from_secs(1));
        },
        Action::WaitForPort { port } => loop {
            let command = format!("ss -Htln 'sport = :{port}'");
            let output = ssh(machine, &command, remaining())?;
            if output.status.success() && !output.stdout_text().trim().is_empty() {
                return Ok(None);
            }
            if Instant::now() >= deadline {
                return Err(failed(format!("nothing listens on TCP port {port} after {} s", check.timeout.as_secs()), show(&command, &output)));
            }
            crate::process::pause(Duration::from_secs(1));
        },
        Action::Differ { command } => {
            let output = ssh(machine, command, check.timeout)?;
            if !output.status.success() {
                return Err(failed(format!("`{command}` failed"), show(command, &output)));
            }
            Ok(Some(output.stdout_text().trim().to_string()))
        }
        Action::SshRefusesWrongKey => {
            let result = machine.ssh_with_key(&stranger.private, "true", check.timeout);
            match result {
                Ok(Some(output)) if output.status.success() => {
                    Err(failed("a key the machine was never given logged in", show("ssh -i <stranger key> true", &output)))
                }
                Ok(Some(output)) if String::from_utf8_lossy(&output.stderr).contains("Permission denied") => Ok(None),
                Ok(Some(output)) => Err(failed("the login failed, but not because the key was refused", show("ssh -i <stranger key> true", &output))),
                Ok(None) => Err(failed("the login attempt timed out", String::new())),
                Err(error) => Err(failed("could not run ssh", format!("{error:#}"))),
            }
        }
        Action::SshRefuses { options, user, expect } => {
            let shown = format!("ssh {} {}@<machine> true", options.join(" "), user.as_deref().unwrap_or("<admin>"));
            match machine.ssh_with_options(options, user.as_deref(), check.timeout) {
                Ok(Some(output)) if output.status.success() => Err(failed("the login was let in", show(&shown, &output))),
                Ok(Some(output)) if !matches_expectation(&String::from_utf8_lossy(&output.stderr), expect) => {
                    Err(failed(format!("the login was refused, but not as expected: {expect:?}"), show(&shown, &output)))
                }
                Ok(Some(_)) => Ok(None),
                Ok(None) => Err(failed("the login attempt timed out", shown)),
                Err(error) => Err(failed("could not run ssh", format!("{error:#}"))),
            }
        }
        other => Err(failed(format!("{other:?} is not a check of this family"), String::new())),
    }
}
