//! Sessions control (CIS Debian 12 5.2.7, 5.4.3.2, 5.4.3.3): an idle
//! interactive shell ends after `[sessions] idle-timeout` (TMOUT, read-only),
//! shells start with the password policy's umask, and only members of
//! `[sessions] su-group` (made empty) may use su (pam_wheel), and each user's
//! session gets a private TMPDIR (pam_tmpdir, which Debian's package adds to
//! the session stack through pam-auth-update). Written into
//! /etc/profile and /etc/pam.d/su themselves, the files auditors read; checked
//! with the image's own sh -n. Never touches the PAM stacks pam-auth-update owns.

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::build::context::BuildContext;

const PROFILE: &str = "etc/profile";
const SU_PAM: &str = "etc/pam.d/su";
const BLOCK_START: &str = "# rampart: [sessions]";

/// /etc/profile with rampart's block at its end, after Debian's own lines
/// and the profile.d scripts they source, so nothing read earlier changes it.
pub fn profile_text(debian: &str, umask: &str, idle_timeout: u32) -> String {
    let mut text = match debian.find(BLOCK_START) {
        Some(at) => debian[..at].to_string(),
        None => debian.to_string(),
    };
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!("{BLOCK_START} and [passwords] umask of the profile\numask {umask}\n"));
    if idle_timeout > 0 {
        text.push_str(&format!("TMOUT={idle_timeout}\nreadonly TMOUT\nexport TMOUT\n"));
    }
    text
}

/// /etc/pam.d/su with pam_wheel required right after pam_rootok (root may
/// still su to anyone; everyone else must be in `group`).
pub fn su_pam_text(debian: &str, group: &str) -> Result<String> {
    let line = format!("auth       required   pam_wheel.so use_uid group={group}");
    let mut out = String::new();
    let mut placed = false;
    for existing in debian.lines() {
        let words: Vec<&str> = existing.split_whitespace().collect();
        if words.first() == Some(&"auth") && words.contains(&"pam_wheel.so") {
            continue;
        }
        out.push_str(existing);
        out.push('\n');
        if !placed && words.first() == Some(&"auth") && words.contains(&"pam_rootok.so") {
            out.push_str(&format!("# rampart: [sessions] su-group: only its members may use su\n{line}\n"));
            placed = true;
        }
    }
    if !placed {
        bail!("/etc/pam.d/su of the image has no pam_rootok.so line to put pam_wheel after");
    }
    Ok(out)
}

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    let sessions = ctx.profile.sessions.clone();
    let umask = format!("{:03o}", ctx.profile.passwords.umask);
    let debian_profile = std::fs::read_to_string(ctx.root().join(PROFILE)).context("while reading the image's /etc/profile")?;
    ctx.install_file(PROFILE, profile_text(&debian_profile, &umask, sessions.idle_timeout).as_bytes(), 0o644)?;
    ctx.in_root("sh").args(["-n", "/etc/profile"]).run().context("while checking /etc/profile with the image's sh -n")?;

    let group = sessions.su_group.to_string();
    if !ctx.profile.users.iter().any(|u| u.name.as_str() == group) {
        let exists = ctx.in_root("getent").args(["group", &group]).run_unchecked()?.status.success();
        if !exists {
            ctx.in_root("groupadd").args(["--system", &group]).run().with_context(|| format!("while making the su group {group}"))?;
        }
    }
    let debian_su = std::fs::read_to_string(ctx.root().join(SU_PAM)).context("while reading the image's /etc/pam.d/su")?;
    ctx.install_file(SU_PAM, su_pam_text(&debian_su, &group)?.as_bytes(), 0o644)?;
    if sessions.private_tmp {
        let stack = std::fs::read_to_string(ctx.root().join("etc/pam.d/common-session")).unwrap_or_default();
        if !stack.lines().any(|l| !l.trim_start().starts_with('#') && l.contains("pam_tmpdir.so")) {
            bail!("sessions.private-tmp: pam-auth-update did not put pam_tmpdir.so into /etc/pam.d/common-session");
        }
    }
    let members: Vec<String> =
        ctx.profile.users.iter().filter(|u| u.groups.iter().any(|g| g.as_str() == group)).map(|u| u.name.to_string()).collect();
    ctx.record(
        "sessions",
        true,
        json!({
            "idle-timeout": if sessions.idle_timeout == 0 { json!("none") } else { json!(format!("TMOUT={} (read-only), /etc/profile", sessions.idle_timeout)) },
            "shell-umask": format!("{umask} (/etc/profile)"),
            "private-tmp": if sessions.private_tmp { "pam_tmpdir: TMPDIR=/tmp/user/<uid>, 0700 (common-session)" } else { "off" },
            "su": { "pam": "pam_wheel.so use_uid, required after pam_rootok (/etc/pam.d/su)", "group": group, "members": members },
        }),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_block_is_appended_once_and_replaced_on_a_rerun() {
        let debian = "PATH=/usr/bin\nexport PATH\n";
        let once = profile_text(debian, "027", 900);
        assert_eq!(once, "PATH=/usr/bin\nexport PATH\n# rampart: [sessions] and [passwords] umask of the profile\numask 027\nTMOUT=900\nreadonly TMOUT\nexport TMOUT\n");
        assert_eq!(profile_text(&once, "027", 0), "PATH=/usr/bin\nexport PATH\n# rampart: [sessions] and [passwords] umask of the profile\numask 027\n");
    }

    #[test]
    fn pam_wheel_follows_pam_rootok_and_replaces_debians_commented_example() {
        let debian = "auth       sufficient pam_rootok.so\n# auth       required   pam_wheel.so\nauth       required   pam_wheel.so deny group=nosu\n@include common-auth\n";
        let text = su_pam_text(debian, "sugroup").unwrap();
        assert_eq!(
            text,
            "auth       sufficient pam_rootok.so\n# rampart: [sessions] su-group: only its members may use su\nauth       required   pam_wheel.so use_uid group=sugroup\n# auth       required   pam_wheel.so\n@include common-auth\n"
        );
        assert!(su_pam_text("@include common-auth\n", "sugroup").is_err());
    }
}
