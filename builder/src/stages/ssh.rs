//! SSH control (seed step 5): one sshd drop-in made from `[ssh]`: port and
//! who may log in from where, no root login, keys only, no empty passwords,
//! modern key exchange, ciphers and MACs only, MaxAuthTries, LoginGraceTime,
//! no forwarding unless the profile allows it, a login banner. Checked with
//! the image's own `sshd -t` at build time; a refused line names its field.

use anyhow::{bail, Result};
use serde_json::json;

use crate::build::context::BuildContext;

const DROP_IN: &str = "etc/ssh/sshd_config.d/20-rampart.conf";
const BANNER: &str = "etc/issue.net";

/// OpenSSH 9.2 (bookworm): post-quantum hybrid and curve25519 first, no SHA-1.
pub const KEX_ALGORITHMS: &str = "sntrup761x25519-sha512@openssh.com,curve25519-sha256,curve25519-sha256@libssh.org,diffie-hellman-group16-sha512,diffie-hellman-group18-sha512,diffie-hellman-group-exchange-sha256";
pub const CIPHERS: &str = "chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-gcm@openssh.com,aes256-ctr,aes192-ctr,aes128-ctr";
pub const MACS: &str = "hmac-sha2-512-etm@openssh.com,hmac-sha2-256-etm@openssh.com,umac-128-etm@openssh.com";
pub const HOST_KEY_ALGORITHMS: &str = "ssh-ed25519,sk-ssh-ed25519@openssh.com,rsa-sha2-512,rsa-sha2-256";

/// The drop-in and, per line, the profile field it came from.
struct DropIn {
    text: String,
    origins: Vec<String>,
}

impl DropIn {
    fn line(&mut self, keyword: &str, value: &str, origin: &str) {
        self.text.push_str(&format!("{keyword} {value}\n"));
        self.origins.push(origin.to_string());
    }
}

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    if !ctx.root().join("usr/sbin/sshd").exists() {
        ctx.record("ssh", false, json!({ "reason": "openssh-server is not installed" }));
        return Ok(());
    }
    let ssh = ctx.profile.ssh.clone();
    let mut d = DropIn { text: String::new(), origins: Vec::new() };
    d.text.push_str(&format!("# rampart: [ssh] of profile {}. sshd takes the first value it reads,\n# and this file is read before sshd_config's own settings.\n", ctx.profile.name));
    d.origins.extend(["comment".to_string(), "comment".to_string()]);
    // The profile's own options first, so that they win over the defaults below.
    for (keyword, value) in &ssh.options {
        d.line(keyword, &value.value, &format!("{}: ssh.options.{keyword}", value.at));
    }
    d.line("Port", &ssh.port.to_string(), "ssh.port");
    let patterns: Vec<String> = ctx
        .profile
        .users
        .iter()
        .flat_map(|user| ssh.allow_from.iter().map(move |range| format!("{}@{}", user.name, range)))
        .collect();
    if !patterns.is_empty() {
        d.line("AllowUsers", &patterns.join(" "), "ssh.allow-from");
    }
    for (keyword, value) in [
        ("PermitRootLogin", "no"),
        ("PubkeyAuthentication", "yes"),
        ("AuthenticationMethods", "publickey"),
        ("PasswordAuthentication", "no"),
        ("KbdInteractiveAuthentication", "no"),
        ("PermitEmptyPasswords", "no"),
        ("HostbasedAuthentication", "no"),
        ("IgnoreRhosts", "yes"),
        ("PermitUserEnvironment", "no"),
        ("UsePAM", "yes"),
    ] {
        d.line(keyword, value, "fixed by rampart");
    }
    d.line("MaxAuthTries", &ssh.max_auth_tries.to_string(), "ssh.max-auth-tries");
    d.line("LoginGraceTime", &ssh.login_grace_time.to_string(), "ssh.login-grace-time");
    let forwarding = if ssh.forwarding { "yes" } else { "no" };
    for keyword in ["AllowTcpForwarding", "AllowAgentForwarding", "AllowStreamLocalForwarding"] {
        d.line(keyword, forwarding, "ssh.forwarding");
    }
    for (keyword, value) in [("X11Forwarding", "no"), ("PermitTunnel", "no"), ("GatewayPorts", "no")] {
        d.line(keyword, value, "fixed by rampart");
    }
    for (keyword, value) in [
        ("KexAlgorithms", KEX_ALGORITHMS),
        ("Ciphers", CIPHERS),
        ("MACs", MACS),
        ("HostKeyAlgorithms", HOST_KEY_ALGORITHMS),
        ("ClientAliveInterval", "300"),
        ("ClientAliveCountMax", "3"),
        ("MaxStartups", "10:30:60"),
        ("MaxSessions", "10"),
        ("LogLevel", "VERBOSE"),
    ] {
        d.line(keyword, value, "rampart default (ssh.options may override)");
    }
    d.line("Banner", "/etc/issue.net", "ssh.banner");
    ctx.install_file(DROP_IN, d.text.as_bytes(), 0o644)?;
    ctx.install_file(BANNER, format!("{}\n", ssh.banner).as_bytes(), 0o644)?;
    // The old access-only drop-in of earlier rampart versions must not linger.
    let _ = std::fs::remove_file(ctx.root().join("etc/ssh/sshd_config.d/20-rampart-access.conf"));
    if let Err(error) = check_with_sshd(ctx) {
        let message = format!("{error:#}");
        let field = blame(&d.origins, &message).unwrap_or_else(|| format!("[ssh] of {}", ctx.profile.path.display()));
        bail!("{field}: the image's sshd refuses the configuration made from it:\n{message}");
    }
    ctx.record(
        "ssh",
        true,
        json!({
            "port": ssh.port.get(),
            "allow-users": patterns,
            "root-login": "no",
            "authentication": "publickey only; no passwords, no keyboard-interactive, no empty passwords",
            "max-auth-tries": ssh.max_auth_tries,
            "login-grace-time": ssh.login_grace_time,
            "forwarding": ssh.forwarding,
            "kex": KEX_ALGORITHMS,
            "ciphers": CIPHERS,
            "macs": MACS,
            "banner": "/etc/issue.net",
            "options": ssh.options.iter().map(|(k, v)| (k.clone(), v.value.clone())).collect::<std::collections::BTreeMap<_, _>>(),
            "checked-with": "sshd -t (the image's own sshd)",
        }),
    );
    Ok(())
}

/// The field behind "…/20-rampart.conf line N: …" or "…/20-rampart.conf:
/// line N: …" (unknown keywords) in sshd's complaint.
fn blame(origins: &[String], message: &str) -> Option<String> {
    let rest = message.split("20-rampart.conf").nth(1)?;
    let rest = rest.trim_start_matches(':').trim_start().strip_prefix("line ")?;
    let line: usize = rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()?;
    origins.get(line.checked_sub(1)?).cloned()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sshd_complaints_are_traced_to_the_profile_field() {
        let origins = vec!["comment".to_string(), "comment".to_string(), "web.toml:9:11: ssh.options.Ciphers".to_string()];
        let message = "/etc/ssh/sshd_config.d/20-rampart.conf line 3: Bad SSH2 cipher spec 'des'.";
        assert_eq!(blame(&origins, message).as_deref(), Some("web.toml:9:11: ssh.options.Ciphers"));
        let unknown = "/etc/ssh/sshd_config.d/20-rampart.conf: line 3: Bad configuration option: Chiphers";
        assert_eq!(blame(&origins, unknown).as_deref(), Some("web.toml:9:11: ssh.options.Ciphers"));
        assert_eq!(blame(&origins, "something else"), None);
    }
}
