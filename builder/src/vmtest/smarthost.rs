//! The check of the lab's mail hosts (`[mail]` with `mail.smarthost` on the
//! outside host, `[mail-gateway]` with its internal host there): something
//! done in the guest as root, or a message sent from the outside host,
//! makes postfix send mail, which must arrive encrypted, as many times as
//! the check says (none: a refused message), with what it must hold and
//! without what it must never hold (a password the audit found, say).

use std::time::{Duration, Instant};

use crate::vmtest::mail_sink::Mail;
use crate::vmtest::qemu::Machine;
use crate::vmtest::scenario::{Action, Check, MailTrigger};
use crate::vmtest::{failed, show, CheckEnv, CheckFailure};

/// How long after the first matching mail the check still waits for more
/// (a repeated alert, which must not come).
const SETTLE: Duration = Duration::from_secs(15);

fn describe(mails: &[Mail]) -> String {
    mails
        .iter()
        .map(|m| format!("from {} to {} ({}):\n{}", m.from, m.to.join(", "), if m.encrypted { "after STARTTLS" } else { "in the clear" }, m.data.chars().take(3000).collect::<String>()))
        .collect::<Vec<_>>()
        .join("\n----\n")
}

pub(super) fn run(machine: &mut Machine, check: &Check, env: &CheckEnv) -> Result<Option<String>, CheckFailure> {
    let Action::SmarthostReceives { after, at, containing, absent, mails, from_start } = &check.action else {
        return Err(failed(format!("{:?} is not a check of this family", check.action), String::new()));
    };
    let Some((lab, address)) = env.outside else {
        return Err(failed("this check needs the isolated network's outside host", String::new()));
    };
    let sink = match at {
        Some(at) => lab.mail_sinks.iter().find(|s| s.address() == *at),
        None => lab.mail_sinks.first(),
    };
    let Some(sink) = sink else {
        return Err(failed(format!("no lab mail host at {}: the profile's mail.smarthost or mail-gateway.deliver-to names it", at.map_or("the outside host".to_string(), |a| a.to_string())), String::new()));
    };
    let deadline = Instant::now() + check.timeout;
    let before = if *from_start { 0 } else { sink.received().len() };
    let (after, ran) = match after {
        MailTrigger::Guest(command) => {
            let Some(password) = &env.session.sudo_password else {
                return Err(failed("running the command as root needs the admin's password, and the secrets file has none", String::new()));
            };
            (command.clone(), machine.ssh_as_root(command, password, check.timeout))
        }
        MailTrigger::Outside(command) => {
            let command = command.replace("{address}", address);
            let ran = lab.outside("sh").arg("-c").arg(&command).run_with_timeout(check.timeout);
            (command, ran)
        }
    };
    let after = after.as_str();
    let output = match ran {
        Ok(Some(output)) => output,
        Ok(None) => return Err(failed(format!("`{after}` timed out"), String::new())),
        Err(error) => return Err(failed(format!("`{after}` could not run"), format!("{error:#}"))),
    };
    if !output.status.success() {
        return Err(failed("the command before the mail failed", show(after, &output)));
    }
    let matching = || -> Vec<Mail> { sink.received().into_iter().skip(before).filter(|m| containing.iter().all(|c| m.data.contains(c.as_str()))).collect() };
    let mut settle_until: Option<Instant> = None;
    loop {
        let found = matching();
        if found.len() >= *mails && settle_until.is_none() {
            settle_until = Some(Instant::now() + SETTLE);
        }
        if settle_until.is_some_and(|t| Instant::now() >= t) || (settle_until.is_none() && Instant::now() >= deadline) {
            break;
        }
        crate::process::pause(Duration::from_millis(500));
    }
    let found = matching();
    let new: Vec<Mail> = sink.received().into_iter().skip(before).collect();
    if found.len() != *mails {
        return Err(failed(
            format!("the mail host at {} received {} mail(s) holding {containing:?}, not {mails}", sink.address(), found.len()),
            format!("{}\nmails received since the command:\n{}", show(after, &output), describe(&new)),
        ));
    }
    if let Some(clear) = found.iter().find(|m| !m.encrypted) {
        return Err(failed("a mail reached the mail host without STARTTLS", describe(std::slice::from_ref(clear))));
    }
    if let Some((mail, text)) = found.iter().find_map(|m| absent.iter().find(|a| m.data.contains(a.as_str())).map(|a| (m, a))) {
        return Err(failed(format!("a mail holds {text:?}, which it must never hold"), describe(std::slice::from_ref(mail))));
    }
    Ok(None)
}
