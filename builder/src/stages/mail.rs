//! Mail control (the seed's step 4, "configure it to start in send only
//! mode", and step 8, "how you will be warned"): postfix with no listener at
//! all (the `smtp inet` service is taken out of master.cf; mail is handed to
//! it by sendmail through its maildrop queue), delivering root's mail either
//! to the profile's addresses through the smarthost, STARTTLS required, or,
//! with no smarthost, to root's local mailbox and nowhere else. The admins'
//! accounts, postmaster and abuse are aliased to root. The image's own
//! `postconf` reads the result at build time: a warning fails the build.
//!
//! Alerts: every unit rampart watches (the integrity and package checks,
//! the backup, the password audit, and the profile's services) gets
//! `OnFailure=rampart-alert@%n.service`, which mails root what the failed
//! run logged, at most once per unit per `mail.alert-interval-minutes`
//! (sandboxed by `stages::sandboxing`, like every service rampart adds).
//! auditd mails root itself when its partition runs low (`space_left_action
//! = email`, set by the auditd stage).

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::build::context::BuildContext;
use crate::profile::{MailSpec, Profile};

pub const SERVICE: &str = "postfix@-.service";
pub const WRAPPER_SERVICE: &str = "postfix.service";
pub const ALERT_TEMPLATE: &str = "rampart-alert@.service";
const ALERT_SCRIPT: &str = "usr/lib/rampart/rampart-alert";
const ALERT_SCRIPT_TEXT: &str = include_str!("../../data/mail/rampart-alert");
const ALIASES: &str = "etc/postfix/rampart-aliases";
const CREDENTIALS: &str = "etc/postfix/rampart-smarthost-credentials";
/// The drop-in, in each watched unit's directory, that starts the alert.
const ALERT_DROP_IN: &str = "50-rampart-alert.conf";
/// Where the alert keeps when it last mailed about each unit.
pub const ALERT_STATE: &str = "/var/lib/rampart-alert";

/// postfix's address for the smarthost: brackets, so no MX lookup is made
/// (an IPv6 address as postfix writes it, `[ipv6:...]`).
pub(crate) fn relay(smarthost: &crate::profile::monitoring::LogHost) -> String {
    let prefix = if smarthost.host.contains(':') { "ipv6:" } else { "" };
    format!("[{prefix}{}]:{}", smarthost.host, smarthost.port)
}

pub fn main_cf(profile: &Profile) -> String {
    let mail = &profile.mail;
    let mut lines = vec![
        format!("# rampart: [mail] of profile {}: send-only. Nothing listens (master.cf has no", profile.name),
        "# smtp inet service); local programs hand mail over through sendmail.".to_string(),
        "compatibility_level = 3.6".to_string(),
        format!("myhostname = {}", profile.image.hostname),
        "myorigin = $myhostname".to_string(),
        "mydestination = $myhostname, localhost".to_string(),
        "mynetworks = 127.0.0.0/8 [::1]/128".to_string(),
        "inet_interfaces = loopback-only".to_string(),
        "inet_protocols = all".to_string(),
        format!("alias_maps = texthash:/{ALIASES}"),
        "alias_database =".to_string(),
        "mailbox_size_limit = 51200000".to_string(),
        "message_size_limit = 10240000".to_string(),
        "biff = no".to_string(),
        "append_dot_mydomain = no".to_string(),
        // what a banner or a probe would tell (Lynis MAIL-8818, MAIL-8820)
        "smtpd_banner = $myhostname ESMTP".to_string(),
        "disable_vrfy_command = yes".to_string(),
        "smtpd_relay_restrictions = permit_mynetworks reject_unauth_destination".to_string(),
        "readme_directory = no".to_string(),
    ];
    match &mail.smarthost {
        Some(smarthost) => {
            lines.push(format!("# every mail leaves through {} (mail.smarthost), encrypted or not at all", smarthost.value));
            lines.push(format!("relayhost = {}", relay(&smarthost.value)));
            lines.push("smtp_tls_security_level = encrypt".to_string());
            lines.push("smtp_tls_mandatory_protocols = >=TLSv1.2".to_string());
            lines.push("smtp_tls_loglevel = 1".to_string());
            if mail.credentials.is_some() {
                lines.push("smtp_sasl_auth_enable = yes".to_string());
                lines.push(format!("smtp_sasl_password_maps = texthash:/{CREDENTIALS}"));
                lines.push("smtp_sasl_security_options = noanonymous".to_string());
                lines.push("smtp_sasl_tls_security_options = noanonymous".to_string());
            }
        }
        None => {
            lines.push("# no mail.smarthost: mail for this host stays in its mailboxes; any other is refused".to_string());
            lines.push("default_transport = error:this host sends no mail off itself (no mail.smarthost in its profile)".to_string());
            lines.push("relay_transport = error:this host relays nothing".to_string());
        }
    }
    lines.join("\n") + "\n"
}

/// The image's master.cf with the `smtp inet` service (the listener on
/// port 25) taken out and every service's chroot column set to "n": the
/// daemons run inside the unit's systemd sandbox instead (a chroot would
/// need copies of /etc files and its own /dev/log kept in the spool).
pub fn send_only_master_cf(stock: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut dropping = false;
    let mut listeners = 0;
    for line in stock.lines() {
        let continuation = line.starts_with(char::is_whitespace) && !line.trim().is_empty();
        if continuation && dropping {
            continue;
        }
        dropping = false;
        if line.starts_with('#') || line.trim().is_empty() || continuation {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            return Err(format!("master.cf: a service line with fewer than 8 fields: {line:?}"));
        }
        if fields[1] == "inet" {
            listeners += 1;
            dropping = true;
            out.push_str(&format!("# rampart: send-only, no listener: {line}\n"));
            continue;
        }
        let mut fields: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
        fields[4] = "n".to_string();
        let command = fields.split_off(7).join(" ");
        // aligned as postfix's own file is, with at least one space between fields
        for (field, width) in fields.iter().zip([9, 5, 7, 7, 7, 7, 7]) {
            out.push_str(&format!("{field:<width$} "));
        }
        out.push_str(&command);
        out.push('\n');
    }
    if listeners == 0 {
        return Err("master.cf: no smtp inet service found; is this postfix's master.cf?".into());
    }
    Ok(out)
}

/// postfix's local aliases (texthash): the admins, postmaster and abuse
/// to root; root to the profile's addresses when mail leaves the host.
pub fn aliases(profile: &Profile) -> String {
    let mut text = String::from("# rampart: [mail] aliases (postfix texthash: name, white space, targets)\n");
    text.push_str("postmaster root\nabuse root\nmailer-daemon root\nnobody root\n");
    for user in &profile.users {
        text.push_str(&format!("{} root\n", user.name));
    }
    if profile.mail.smarthost.is_some() {
        let to: Vec<&str> = profile.mail.to.iter().map(|a| a.value.as_str()).collect();
        text.push_str(&format!("root {}\n", to.join(", ")));
    }
    text
}

/// The units whose failure mails the admins, and why each is watched.
pub fn alerted_units(profile: &Profile) -> Vec<(String, &'static str)> {
    let mut units: Vec<(String, &'static str)> = Vec::new();
    if profile.integrity.enable {
        units.push((crate::stages::integrity::CHECK_SERVICE.into(), "an AIDE finding"));
        if profile.integrity.packages {
            units.push((crate::stages::integrity::PACKAGES_SERVICE.into(), "a package's file changed (debsums)"));
        }
    }
    if profile.backups.enable {
        units.push((crate::stages::backups::SERVICE.into(), "a failed backup"));
    }
    if profile.passwords.audit.is_some() {
        units.push((crate::stages::passwords::AUDIT_SERVICE.into(), "a password found in the dictionary"));
    }
    let services = profile
        .services
        .enable
        .iter()
        .map(|u| u.value.clone())
        .chain(crate::stages::services::implied_units(profile).into_iter().map(|(u, _)| u));
    for unit in services {
        // postfix cannot mail about itself; templates have no one instance
        let own = unit == SERVICE || unit == WRAPPER_SERVICE;
        if unit.ends_with(".service") && !unit.contains('*') && !own && !units.iter().any(|(u, _)| *u == unit) {
            units.push((unit, "a service of the profile failed"));
        }
    }
    units
}

fn alert_unit(mail: &MailSpec) -> String {
    format!(
        "[Unit]
Description=rampart: mail the admins that %i failed
Documentation=man:systemd.unit(5)
After=postfix.service

[Service]
Type=oneshot
Environment=RAMPART_ALERT_INTERVAL={}
ExecStart=/{ALERT_SCRIPT} %i
StateDirectory={}
StateDirectoryMode=0700
",
        u64::from(mail.alert_interval_minutes) * 60,
        ALERT_STATE.trim_start_matches("/var/lib/"),
    )
}

fn check_postconf(ctx: &BuildContext) -> Result<String> {
    let output = ctx.in_root("postconf").args(["-c", "/etc/postfix", "-n"]).run().context("while reading the mail configuration back with the image's postconf")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("warning") || stderr.contains("fatal") {
        bail!("[mail] of {}: the image's postconf complains about the configuration rampart wrote:\n{}", ctx.profile.path.display(), stderr.trim());
    }
    let services = ctx.in_root("postconf").args(["-c", "/etc/postfix", "-M"]).run().context("while reading master.cf back with the image's postconf")?;
    if let Some(listener) = services.stdout_text().lines().find(|l| l.split_whitespace().nth(1) == Some("inet")) {
        bail!("[mail] of {}: master.cf still has a listener: {listener}", ctx.profile.path.display());
    }
    Ok(output.stdout_text())
}

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    let mail = ctx.profile.mail.clone();
    if !mail.enable {
        ctx.record("mail", false, json!({ "reason": "mail.enable = false: no MTA; no control's failure is mailed" }));
        return Ok(());
    }
    if !ctx.root().join("usr/sbin/postfix").exists() {
        bail!("[mail] of {}: the image has no /usr/sbin/postfix; is postfix excluded?", ctx.profile.path.display());
    }
    ctx.install_file("etc/postfix/main.cf", main_cf(&ctx.profile).as_bytes(), 0o644)?;
    // with "No configuration" postfix's maintainer script may leave master.cf to us
    let stock = ["etc/postfix/master.cf", "usr/share/postfix/master.cf.dist"]
        .iter()
        .find_map(|p| std::fs::read_to_string(ctx.root().join(p)).ok())
        .context("the image has neither /etc/postfix/master.cf nor postfix's /usr/share/postfix/master.cf.dist")?;
    let master = send_only_master_cf(&stock).map_err(|e| anyhow::anyhow!("[mail] of {}: the image's {e}", ctx.profile.path.display()))?;
    ctx.install_file("etc/postfix/master.cf", master.as_bytes(), 0o644)?;
    ctx.install_file(ALIASES, aliases(&ctx.profile).as_bytes(), 0o644)?;
    if let Some(credentials) = &mail.credentials {
        let smarthost = mail.smarthost.as_ref().expect("credentials need a smarthost (profile::mail::finish)");
        let text = read_credentials(&credentials.value).map_err(|e| anyhow::anyhow!("{}: mail.credentials: {e}", credentials.at))?;
        let (user, password) = crate::profile::mail::parse_credentials(&text).map_err(|e| anyhow::anyhow!("{}: mail.credentials: {}: {e}", credentials.at, credentials.value.display()))?;
        ctx.install_file(CREDENTIALS, format!("{} {user}:{password}\n", relay(&smarthost.value)).as_bytes(), 0o600)?;
    }
    let settings = check_postconf(ctx)?;
    // ssl-cert (a dependency of postfix) makes a "snakeoil" key pair at
    // install: one private key on every machine of the image, and another
    // on each build. Nothing here uses it (no listener; the smarthost
    // client needs no certificate): it goes.
    let mut removed = Vec::new();
    for path in ["etc/ssl/private/ssl-cert-snakeoil.key", "etc/ssl/certs/ssl-cert-snakeoil.pem"] {
        if std::fs::symlink_metadata(ctx.root().join(path)).is_ok() {
            std::fs::remove_file(ctx.root().join(path)).with_context(|| format!("while removing /{path} from the image"))?;
            removed.push(format!("/{path}"));
        }
    }
    for entry in std::fs::read_dir(ctx.root().join("etc/ssl/certs")).into_iter().flatten().flatten() {
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        if target.to_string_lossy().ends_with("ssl-cert-snakeoil.pem") {
            std::fs::remove_file(entry.path())?;
            removed.push(format!("/etc/ssl/certs/{}", entry.file_name().to_string_lossy()));
        }
    }

    ctx.install_file(ALERT_SCRIPT, ALERT_SCRIPT_TEXT.as_bytes(), 0o755)?;
    ctx.install_file(&format!("etc/systemd/system/{ALERT_TEMPLATE}"), alert_unit(&mail).as_bytes(), 0o644)?;
    let watched = alerted_units(&ctx.profile);
    for (unit, _) in &watched {
        let text = "# rampart: [mail] a failure of this unit is mailed to the admins\n[Unit]\nOnFailure=rampart-alert@%n.service\n";
        ctx.install_file(&format!("etc/systemd/system/{unit}.d/{ALERT_DROP_IN}"), text.as_bytes(), 0o644)?;
    }
    ctx.record(
        "mail",
        true,
        json!({
            "mta": "postfix, send-only: no listener (master.cf's smtp inet service removed)",
            "delivery": match &mail.smarthost {
                Some(s) => format!("through {} (STARTTLS required{})", s.value, if mail.credentials.is_some() { ", SASL login from mail.credentials" } else { "" }),
                None => "local only: root's mailbox /var/mail/root; mail for other hosts is refused".to_string(),
            },
            "snakeoil-removed": removed,
            "root-to": mail.to.iter().map(|a| a.value.clone()).collect::<Vec<_>>(),
            "postconf": settings.lines().filter(|l| !l.starts_with("smtp_sasl_password_maps")).collect::<Vec<_>>(),
            "alerts": {
                "unit": ALERT_TEMPLATE,
                "at-most-one-mail-per-unit-every-minutes": mail.alert_interval_minutes,
                "watched": watched.iter().map(|(u, why)| json!({ "unit": u, "for": why })).collect::<Vec<_>>(),
            },
        }),
    );
    Ok(())
}

/// The credentials file, which must be the builder's own and readable by no one else.
fn read_credentials(path: &std::path::Path) -> Result<String, String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!("{} is mode {:04o}; a file with a password must be readable by its owner only (chmod 600)", path.display(), meta.mode() & 0o7777));
    }
    if meta.len() > 4096 {
        return Err(format!("{} is larger than a credentials line", path.display()));
    }
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STOCK: &str = "#\n# Postfix master process configuration file.\n#\nsmtp      inet  n       -       y       -       -       smtpd\n#submission inet n       -       y       -       -       smtpd\n#  -o syslog_name=postfix/submission\npickup    unix  n       -       y       60      1       pickup\nrelay     unix  -       -       y       -       -       smtp\n        -o syslog_name=postfix/$service_name\nlocal     unix  -       n       n       -       -       local\nproxywrite unix -       -       n       -       1       proxymap\n";

    #[test]
    fn the_listener_goes_and_no_service_is_chrooted() {
        let master = send_only_master_cf(STOCK).unwrap();
        assert!(master.contains("# rampart: send-only, no listener: smtp      inet"), "{master}");
        let services: Vec<&str> = master.lines().filter(|l| !l.starts_with('#') && !l.starts_with(char::is_whitespace)).collect();
        assert_eq!(services.len(), 4, "{master}");
        assert!(master.contains("proxywrite unix  -       -       n       -       1       proxymap\n"), "{master}");
        assert!(services.iter().all(|l| l.split_whitespace().nth(4) == Some("n")), "{master}");
        assert!(services.iter().all(|l| l.split_whitespace().nth(1) != Some("inet")), "{master}");
        assert!(master.contains("pickup    unix  n       -       n       60      1       pickup\n"), "{master}");
        assert!(master.contains("        -o syslog_name=postfix/$service_name\n"), "the relay's option stays: {master}");
    }

    #[test]
    fn the_relay_is_bracketed_and_an_ipv6_one_marked() {
        let v4 = crate::profile::monitoring::LogHost::parse("192.0.2.25:587").unwrap();
        let v6 = crate::profile::monitoring::LogHost::parse("[2001:db8::25]:25").unwrap();
        let name = crate::profile::monitoring::LogHost::parse("relay.example.org:587").unwrap();
        assert_eq!((relay(&v4), relay(&v6), relay(&name)), ("[192.0.2.25]:587".into(), "[ipv6:2001:db8::25]:25".into(), "[relay.example.org]:587".into()));
    }

    #[test]
    fn a_listeners_options_go_with_it_and_a_file_without_one_is_refused() {
        let stock = "smtp      inet  n       -       y       -       -       smtpd\n  -o smtpd_tls=yes\nlocal     unix  -       n       n       -       -       local\n";
        let master = send_only_master_cf(stock).unwrap();
        assert!(!master.contains("smtpd_tls"), "{master}");
        assert!(send_only_master_cf("local     unix  -       n       n       -       -       local\n").is_err());
        assert!(send_only_master_cf("smtp inet n\n").is_err());
    }
}
