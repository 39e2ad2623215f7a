//! Password policy control (seed step 3, "Secure Passwords"): PAM pwquality
//! with the cracklib dictionary, pwhistory, faillock, pam_umask, yescrypt,
//! login.defs aging and umask, sudo asking for the user's own password.
//! PAM stacks are made by Debian's pam-auth-update from profiles this stage
//! installs, never by editing /etc/pam.d by hand. Accounts are `users.rs`.
//!
//! `passwords.audit` (seed step 3, "cracking passwords after they are
//! created"): a timer runs John the Ripper with the image's cracklib
//! dictionary against the shadow file for a bounded time
//! (`builder/data/passwords/rampart-password-audit`); an account whose
//! password it finds is expired and named, and the unit fails, which mails
//! the admins (`[mail]` alerts). Passwords found stay in the unit's private,
//! memory-only /root.

use anyhow::{Context, Result};
use serde_json::json;

use crate::build::context::BuildContext;
use crate::profile::{PasswordAudit, PasswordPolicy};

pub const AUDIT_SERVICE: &str = "rampart-password-audit.service";
pub const AUDIT_TIMER: &str = "rampart-password-audit.timer";
const AUDIT_SCRIPT: &str = "usr/lib/rampart/rampart-password-audit";
const AUDIT_SCRIPT_TEXT: &str = include_str!("../../data/passwords/rampart-password-audit");
/// The dictionary john tries (cracklib-runtime's plain word list).
pub const AUDIT_DICTIONARY: &str = "usr/share/dict/cracklib-small";

fn audit_unit(audit: &PasswordAudit) -> String {
    format!(
        "[Unit]
Description=rampart: passwords in the shadow file tried against the dictionary (John the Ripper)
Documentation=man:john(8)

[Service]
Type=oneshot
Environment=RAMPART_AUDIT_MINUTES={minutes}
ExecStart=/{AUDIT_SCRIPT}
# john's pot file and session land in root's home: here a private tmpfs
RuntimeDirectory=rampart-password-audit
RuntimeDirectoryMode=0700
TimeoutStartSec={timeout}
Nice=19
IOSchedulingClass=idle
",
        minutes = audit.minutes,
        timeout = u64::from(audit.minutes) * 60 + 300,
    )
}

fn install_audit(ctx: &BuildContext, audit: &PasswordAudit) -> Result<serde_json::Value> {
    for needed in ["usr/sbin/john", AUDIT_DICTIONARY] {
        if !ctx.root().join(needed).exists() {
            anyhow::bail!("passwords.audit of {}: the image has no /{needed}; is john or cracklib-runtime excluded?", ctx.profile.path.display());
        }
    }
    ctx.install_file(AUDIT_SCRIPT, AUDIT_SCRIPT_TEXT.as_bytes(), 0o755)?;
    ctx.install_file(&format!("etc/systemd/system/{AUDIT_SERVICE}"), audit_unit(audit).as_bytes(), 0o644)?;
    super::install_timer(ctx, AUDIT_TIMER, "rampart: password audit (John the Ripper)", &audit.schedule, "passwords.audit-schedule")?;
    Ok(json!({
        "tool": "john (John the Ripper), --format=crypt",
        "dictionary": format!("/{AUDIT_DICTIONARY}"),
        "schedule": audit.schedule.value,
        "at-most-minutes": audit.minutes,
        "found": "expired (chage -d 0), named in the journal and auth.log; the unit fails and rampart-alert mails the admins",
        "found-passwords-kept": "nowhere: john's pot file is in the unit's private tmpfs /root, its output goes to /dev/null",
    }))
}

/// pam-auth-update profiles, in the form CIS Debian 12 (5.3.2) gives them.
/// `rampart-unix` replaces Debian's `unix` profile: the same, but without
/// `nullok` (no login with an empty password) and with pam_umask.
const PAM_UNIX: &str = "Name: Unix authentication (rampart: no empty passwords, umask from login.defs)
Default: yes
Priority: 256
Conflicts: unix
Auth-Type: Primary
Auth:
\t[success=end default=ignore]\tpam_unix.so try_first_pass
Auth-Initial:
\t[success=end default=ignore]\tpam_unix.so
Account-Type: Primary
Account:
\t[success=end new_authtok_reqd=done default=ignore]\tpam_unix.so
Account-Initial:
\t[success=end new_authtok_reqd=done default=ignore]\tpam_unix.so
Session-Type: Additional
Session:
\trequired\tpam_unix.so
\toptional\tpam_umask.so
Session-Initial:
\trequired\tpam_unix.so
\toptional\tpam_umask.so
Password-Type: Primary
Password:
\t[success=end default=ignore]\tpam_unix.so obscure use_authtok try_first_pass yescrypt
Password-Initial:
\t[success=end default=ignore]\tpam_unix.so obscure yescrypt
";

const PAM_FAILLOCK: &str = "Name: rampart: lock an account after failed logins (pam_faillock)
Default: yes
Priority: 0
Auth-Type: Primary
Auth:
\t[default=die]\tpam_faillock.so authfail
";

const PAM_FAILLOCK_NOTIFY: &str = "Name: rampart: refuse locked accounts, reset the count on success (pam_faillock)
Default: yes
Priority: 1024
Auth-Type: Primary
Auth:
\trequisite\tpam_faillock.so preauth
Account-Type: Primary
Account:
\trequired\tpam_faillock.so
";

fn pam_pwhistory(policy: &PasswordPolicy) -> String {
    let root = if policy.enforce_for_root { " enforce_for_root" } else { "" };
    format!(
        "Name: rampart: refuse reused passwords (pam_pwhistory)
Default: yes
Priority: 1000
Password-Type: Primary
Password:
\trequisite\tpam_pwhistory.so remember={}{root} try_first_pass use_authtok
",
        policy.remember
    )
}

fn pwquality_conf(policy: &PasswordPolicy) -> String {
    let mut text = format!(
        "# rampart: [passwords] of the profile (CIS Debian 12 5.3.3.2)\nminlen = {}\nminclass = {}\nmaxrepeat = {}\nmaxsequence = {}\ndictcheck = {}\nusercheck = 1\ndifok = 2\nenforcing = 1\nretry = 3\n",
        policy.min_length,
        policy.min_classes,
        policy.max_repeat,
        policy.max_sequence,
        policy.dictionary_check as u8,
    );
    if policy.enforce_for_root {
        text.push_str("enforce_for_root\n");
    }
    text
}

fn faillock_conf(policy: &PasswordPolicy) -> String {
    format!(
        "# rampart: [passwords] of the profile (CIS Debian 12 5.3.3.1); root too (5.3.3.1.3, Level 2), though its password is locked\ndeny = {}\nunlock_time = {}\nfail_interval = 900\neven_deny_root\nroot_unlock_time = {}\naudit\n",
        policy.lockout_attempts,
        policy.lockout_seconds,
        policy.lockout_seconds.max(60)
    )
}

/// Sets `key<separator>value` lines of a login.defs-style (tab) or shell-style
/// ("=") file, keeping everything else.
pub fn set_keys(text: &str, settings: &[(&str, String)], separator: &str) -> String {
    let mut out = String::new();
    let mut done = vec![false; settings.len()];
    for line in text.lines() {
        let key = line.split_whitespace().next().unwrap_or("");
        let key = key.split('=').next().unwrap_or("");
        match settings.iter().position(|(k, _)| *k == key && !line.trim_start().starts_with('#')) {
            Some(i) if !done[i] => {
                out.push_str(&format!("{}{separator}{}\n", settings[i].0, settings[i].1));
                done[i] = true;
            }
            Some(_) => {}
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    for (i, (key, value)) in settings.iter().enumerate() {
        if !done[i] {
            out.push_str(&format!("{key}{separator}{value}\n"));
        }
    }
    out
}

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    let policy = ctx.profile.passwords.clone();
    // The main file, not a drop-in: compliance scanners read only this one.
    ctx.install_file("etc/security/pwquality.conf", pwquality_conf(&policy).as_bytes(), 0o644)?;
    ctx.install_file("etc/security/faillock.conf", faillock_conf(&policy).as_bytes(), 0o644)?;
    ctx.install_file("usr/share/pam-configs/rampart-unix", PAM_UNIX.as_bytes(), 0o644)?;
    ctx.install_file("usr/share/pam-configs/rampart-faillock", PAM_FAILLOCK.as_bytes(), 0o644)?;
    ctx.install_file("usr/share/pam-configs/rampart-faillock-notify", PAM_FAILLOCK_NOTIFY.as_bytes(), 0o644)?;
    ctx.install_file("usr/share/pam-configs/rampart-pwhistory", pam_pwhistory(&policy).as_bytes(), 0o644)?;
    ctx.in_root("pam-auth-update")
        .args(["--enable", "rampart-unix", "rampart-faillock", "rampart-faillock-notify", "rampart-pwhistory", "pwquality"])
        .args(["--disable", "unix"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run()
        .context("while making the PAM stacks with pam-auth-update")?;
    check_pam_stacks(ctx)?;

    let login_defs_path = ctx.root().join("etc/login.defs");
    let login_defs = std::fs::read_to_string(&login_defs_path).context("while reading the image's /etc/login.defs")?;
    let umask = format!("{:03o}", policy.umask);
    let login_defs = set_keys(
        &login_defs,
        &[
            ("PASS_MAX_DAYS", policy.max_days.to_string()),
            ("PASS_MIN_DAYS", policy.min_days.to_string()),
            ("PASS_WARN_AGE", policy.warn_days.to_string()),
            ("UMASK", umask.clone()),
            ("ENCRYPT_METHOD", "YESCRYPT".into()),
            ("YESCRYPT_COST_FACTOR", "5".into()),
            // Should an admin hash with SHA-512 instead (chpasswd -c SHA512),
            // it is slow too (Lynis AUTH-9230 reads these two).
            ("SHA_CRYPT_MIN_ROUNDS", "100000".into()),
            ("SHA_CRYPT_MAX_ROUNDS", "100000".into()),
            // Home directories are private (CIS 7.2.9); umask covers new files.
            ("HOME_MODE", "0750".into()),
        ],
        "\t",
    );
    ctx.install_file("etc/login.defs", login_defs.as_bytes(), 0o644)?;
    let useradd_path = ctx.root().join("etc/default/useradd");
    let useradd = std::fs::read_to_string(&useradd_path).unwrap_or_default();
    let useradd = set_keys(&useradd, &[("INACTIVE", policy.inactive_days.to_string())], "=");
    ctx.install_file("etc/default/useradd", useradd.as_bytes(), 0o644)?;

    // The root account stays locked (no password can ever match).
    ctx.in_root("usermod").args(["--lock", "root"]).run().context("while locking root's password")?;

    let sudo = ctx.root().join("usr/bin/sudo").exists();
    if sudo {
        // sudo asks for the user's own password (no NOPASSWD anywhere), runs
        // commands on their own pseudo-terminal and keeps its own log.
        let sudoers = "# rampart: privilege escalation needs the user's password (CIS 5.2)\nDefaults use_pty\nDefaults logfile=\"/var/log/sudo.log\"\nDefaults timestamp_timeout=5\nDefaults passwd_tries=3\n";
        ctx.install_file("etc/sudoers.d/10-rampart", sudoers.as_bytes(), 0o440)?;
        ctx.in_root("visudo").args(["--check", "--strict", "--quiet"]).run().context("the image's visudo refuses the sudoers policy")?;
    }
    let audit = match &policy.audit {
        Some(audit) => install_audit(ctx, audit)?,
        None => json!("off (passwords.audit = false)"),
    };
    ctx.record(
        "passwords",
        true,
        json!({
            "audit": audit,
            "hash": "yescrypt (pam_unix, login.defs ENCRYPT_METHOD)",
            "pwquality": {
                "min-length": policy.min_length,
                "min-classes": policy.min_classes,
                "max-repeat": policy.max_repeat,
                "max-sequence": policy.max_sequence,
                "dictionary-check": policy.dictionary_check,
                "enforce-for-root": policy.enforce_for_root,
            },
            "pwhistory-remember": policy.remember,
            "faillock": { "deny": policy.lockout_attempts, "unlock-time": policy.lockout_seconds, "root": format!("locked out too, for {} s", policy.lockout_seconds.max(60)) },
            "aging": { "max-days": policy.max_days, "min-days": policy.min_days, "warn-days": policy.warn_days, "inactive-days": policy.inactive_days },
            "umask": umask,
            "empty-passwords": "refused (no nullok)",
            "root": "locked",
            "sudo": if sudo { "asks for the user's password; use_pty; /var/log/sudo.log" } else { "not installed" },
        }),
    );
    Ok(())
}

/// The stacks pam-auth-update wrote must hold every module this control
/// promises; a Debian change that drops one fails the build, not the audit.
fn check_pam_stacks(ctx: &BuildContext) -> Result<()> {
    let read = |name: &str| std::fs::read_to_string(ctx.root().join("etc/pam.d").join(name)).unwrap_or_default();
    let expected = [
        ("common-password", "pam_pwquality.so"),
        ("common-password", "pam_pwhistory.so"),
        ("common-password", "yescrypt"),
        ("common-auth", "pam_faillock.so preauth"),
        ("common-auth", "pam_faillock.so authfail"),
        ("common-account", "pam_faillock.so"),
        ("common-session", "pam_umask.so"),
    ];
    for (file, needle) in expected {
        if !read(file).contains(needle) {
            anyhow::bail!("pam-auth-update did not put {needle} into /etc/pam.d/{file}");
        }
    }
    if read("common-auth").contains("nullok") {
        anyhow::bail!("/etc/pam.d/common-auth still allows empty passwords (nullok)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_defs_keys_are_replaced_in_place_and_missing_ones_added() {
        let text = "# comment\nPASS_MAX_DAYS\t99999\n#UMASK 000\nUMASK\t\t022\n";
        let out = set_keys(text, &[("PASS_MAX_DAYS", "365".into()), ("UMASK", "027".into()), ("ENCRYPT_METHOD", "YESCRYPT".into())], "\t");
        assert_eq!(out, "# comment\nPASS_MAX_DAYS\t365\n#UMASK 000\nUMASK\t027\nENCRYPT_METHOD\tYESCRYPT\n");
    }

    #[test]
    fn pwquality_configuration_follows_the_policy() {
        let text = pwquality_conf(&PasswordPolicy::default());
        assert!(text.contains("minlen = 14\n"));
        assert!(text.contains("dictcheck = 1\n"));
        assert!(text.ends_with("enforce_for_root\n"));
    }
}
