//! SSH control (seed step 5): one sshd drop-in made from `[ssh]`: port and
//! who may log in from where, no root login, keys only, no empty passwords,
//! modern key exchange, ciphers and MACs only, MaxAuthTries, LoginGraceTime,
//! no forwarding unless the profile allows it, a login banner (the legal
//! notice, also the console's /etc/issue). The same settings are written
//! into sshd_config itself, after the Include that reads the drop-in first,
//! so scanners that read only the main file see what sshd runs with.
//! Checked with the image's own `sshd -t` at build time; a refused line
//! names its field.

use anyhow::{bail, Result};
use serde_json::json;

use crate::build::context::BuildContext;
use crate::traced::{line_named_after, TracedText};

const DROP_IN: &str = "etc/ssh/sshd_config.d/20-rampart.conf";
const MAIN_CONFIG: &str = "etc/ssh/sshd_config";
/// The legal notice before login: over SSH, and on the console (agetty).
const BANNERS: &[&str] = &["etc/issue.net", "etc/issue"];

/// OpenSSH 9.2 (bookworm): post-quantum hybrid and curve25519 first, no SHA-1.
pub const KEX_ALGORITHMS: &str = "sntrup761x25519-sha512@openssh.com,curve25519-sha256,curve25519-sha256@libssh.org,diffie-hellman-group16-sha512,diffie-hellman-group18-sha512,diffie-hellman-group-exchange-sha256";
pub const CIPHERS: &str = "chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-gcm@openssh.com,aes256-ctr,aes192-ctr,aes128-ctr";
pub const MACS: &str = "hmac-sha2-512-etm@openssh.com,hmac-sha2-256-etm@openssh.com,umac-128-etm@openssh.com";
pub const HOST_KEY_ALGORITHMS: &str = "ssh-ed25519,sk-ssh-ed25519@openssh.com,rsa-sha2-512,rsa-sha2-256";

/// One `Keyword value` line of the drop-in, traced to its field.
fn keyword(d: &mut TracedText, keyword: &str, value: &str, origin: &str) {
    d.line(&format!("{keyword} {value}"), Some(origin.to_string()));
}

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    if !ctx.root().join("usr/sbin/sshd").exists() {
        ctx.record("ssh", false, json!({ "reason": "openssh-server is not installed" }));
        return Ok(());
    }
    let ssh = ctx.profile.ssh.clone();
    let mut d = TracedText::default();
    d.line(&format!("# rampart: [ssh] of profile {}. sshd takes the first value it reads,", ctx.profile.name), None);
    d.line("# and this file is read before sshd_config's own settings.", None);
    // The profile's own options first, so that they win over the defaults below.
    for (name, value) in &ssh.options {
        keyword(&mut d, name, &value.value, &format!("{}: ssh.options.{name}", value.at));
    }
    keyword(&mut d, "Port", &ssh.port.to_string(), "ssh.port");
    let patterns: Vec<String> = ctx
        .profile
        .users
        .iter()
        .flat_map(|user| ssh.allow_from.iter().map(move |range| format!("{}@{}", user.name, range)))
        .collect();
    if !patterns.is_empty() {
        keyword(&mut d, "AllowUsers", &patterns.join(" "), "ssh.allow-from");
    }
    for (name, value) in [
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
        keyword(&mut d, name, value, "fixed by rampart");
    }
    keyword(&mut d, "MaxAuthTries", &ssh.max_auth_tries.to_string(), "ssh.max-auth-tries");
    keyword(&mut d, "LoginGraceTime", &ssh.login_grace_time.to_string(), "ssh.login-grace-time");
    let forwarding = if ssh.forwarding { "yes" } else { "no" };
    for name in ["AllowTcpForwarding", "AllowAgentForwarding", "AllowStreamLocalForwarding"] {
        keyword(&mut d, name, forwarding, "ssh.forwarding");
    }
    if !ssh.forwarding {
        // every kind of forwarding at once, X11 included (CIS 5.1.8, Level 2)
        keyword(&mut d, "DisableForwarding", "yes", "ssh.forwarding");
    }
    for (name, value) in [("X11Forwarding", "no"), ("PermitTunnel", "no"), ("GatewayPorts", "no")] {
        keyword(&mut d, name, value, "fixed by rampart");
    }
    for (name, value) in [
        ("KexAlgorithms", KEX_ALGORITHMS),
        ("Ciphers", CIPHERS),
        ("MACs", MACS),
        ("HostKeyAlgorithms", HOST_KEY_ALGORITHMS),
        ("ClientAliveInterval", "300"),
        ("ClientAliveCountMax", "2"),
        ("TCPKeepAlive", "no"),
        ("Compression", "no"),
        ("MaxStartups", "10:30:60"),
        ("MaxSessions", "2"),
        ("LogLevel", "VERBOSE"),
        ("UseDNS", "no"),
        ("PrintLastLog", "yes"),
        ("StrictModes", "yes"),
    ] {
        keyword(&mut d, name, value, "rampart default (ssh.options may override)");
    }
    keyword(&mut d, "Banner", "/etc/issue.net", "ssh.banner");
    // Read by sshd (root) alone (CIS 5.1.1).
    ctx.install_file(DROP_IN, d.text.as_bytes(), 0o600)?;
    let debian_main = std::fs::read_to_string(ctx.root().join(MAIN_CONFIG)).unwrap_or_default();
    ctx.install_file(MAIN_CONFIG, main_config(&ctx.profile.name.to_string(), &d.text, &debian_main).as_bytes(), 0o600)?;
    for banner in BANNERS {
        ctx.install_file(banner, format!("{}\n", ssh.banner).as_bytes(), 0o644)?;
    }
    // The old access-only drop-in of earlier rampart versions must not linger.
    let _ = std::fs::remove_file(ctx.root().join("etc/ssh/sshd_config.d/20-rampart-access.conf"));
    if let Err(error) = check_with_sshd(ctx) {
        let message = format!("{error:#}");
        let field = line_named_after(&message, "20-rampart.conf")
            .and_then(|n| d.origin(n))
            .unwrap_or_else(|| format!("[ssh] of {}", ctx.profile.path.display()));
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
            "banner": "/etc/issue.net (SSH) and /etc/issue (console)",
            "main-config": "/etc/ssh/sshd_config repeats the drop-in's settings after its Include",
            "options": ssh.options.iter().map(|(k, v)| (k.clone(), v.value.clone())).collect::<std::collections::BTreeMap<_, _>>(),
            "checked-with": "sshd -t (the image's own sshd)",
        }),
    );
    Ok(())
}

/// The main sshd_config: the Include of the drop-ins first (sshd keeps the
/// first value it reads, so the drop-in decides), then the drop-in's own
/// lines again for readers of this file alone, then what Debian's file sets
/// that rampart does not (sftp, accepted locale variables, ...).
fn main_config(profile: &str, drop_in: &str, debian_main: &str) -> String {
    let keyword = |line: &str| line.split_whitespace().next().map(str::to_ascii_lowercase);
    let settings: Vec<&str> = drop_in.lines().filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')).collect();
    let ours: std::collections::BTreeSet<String> = settings.iter().filter_map(|l| keyword(l)).collect();
    let mut text = format!(
        "# rampart: [ssh] of profile {profile}. sshd keeps the first value it reads: the drop-ins\n\
         # (sshd_config.d/20-rampart.conf) come first and decide; the same settings follow here.\n\
         Include /etc/ssh/sshd_config.d/*.conf\n\n"
    );
    for line in settings {
        text.push_str(line);
        text.push('\n');
    }
    let kept: Vec<&str> = debian_main
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| keyword(l).is_some_and(|k| k != "include" && !ours.contains(&k)))
        .collect();
    if !kept.is_empty() {
        text.push_str("\n# Debian's settings that rampart does not set\n");
        for line in kept {
            text.push_str(line);
            text.push('\n');
        }
    }
    text
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
