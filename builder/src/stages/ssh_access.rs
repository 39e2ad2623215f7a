//! SSH access stage: which port sshd listens on and who may log in from
//! where (`[ssh]` port and allow-from, for the profile's admin accounts).
//! The drop-in is checked with the image's own `sshd -t` at build time.
//! The full sshd hardening (ciphers, root login, ...) is a later control.

use anyhow::{Context, Result};
use serde_json::json;

use crate::build::context::BuildContext;

const DROP_IN: &str = "etc/ssh/sshd_config.d/20-rampart-access.conf";

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    if !ctx.root().join("usr/sbin/sshd").exists() {
        ctx.record("ssh-access", false, json!({ "reason": "openssh-server is not installed" }));
        return Ok(());
    }
    let ssh = ctx.profile.ssh.clone();
    let mut text = format!("# rampart: [ssh] of profile {}\nPort {}\n", ctx.profile.name, ssh.port);
    let patterns: Vec<String> = ctx
        .profile
        .users
        .iter()
        .flat_map(|user| ssh.allow_from.iter().map(move |range| format!("{}@{}", user.name, range)))
        .collect();
    if !patterns.is_empty() {
        text.push_str(&format!("AllowUsers {}\n", patterns.join(" ")));
    }
    ctx.install_file(DROP_IN, text.as_bytes(), 0o644)?;
    check_with_sshd(ctx).with_context(|| format!("the sshd configuration made from [ssh] of {} is refused", ctx.profile.path.display()))?;
    ctx.record(
        "ssh-access",
        true,
        json!({
            "port": ssh.port.get(),
            "allow-users": patterns,
            "checked-with": "sshd -t (the image's own sshd)",
        }),
    );
    Ok(())
}

/// Runs the image's `sshd -t` with a throwaway host key (the image has none).
fn check_with_sshd(ctx: &BuildContext) -> Result<()> {
    let key = "/run/rampart-sshd-check-key";
    std::fs::create_dir_all(ctx.root().join("run/sshd"))?;
    let _ = std::fs::remove_file(ctx.root().join(&key[1..]));
    ctx.in_root("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f", key]).run()?;
    let result = ctx.in_root("/usr/sbin/sshd").args(["-t", "-h", key]).run();
    for leftover in [key.to_string(), format!("{key}.pub")] {
        let _ = std::fs::remove_file(ctx.root().join(&leftover[1..]));
    }
    let _ = std::fs::remove_dir(ctx.root().join("run/sshd"));
    result.map(|_| ())
}
