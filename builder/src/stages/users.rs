//! Users stage: the profile's admin accounts, created with the image's own
//! useradd, with their SSH authorized keys (the build-time provisioning
//! input), aging from `[passwords]`, and a password that must be changed at
//! first login: random (handed out in the 0600 secrets file, never written
//! into the image, the report or a log) or given by the profile and checked.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use crate::build::context::BuildContext;
use crate::fsutil::resolve_in_root;
use crate::profile::controls::{password_weakness, COMMON_PASSWORDS};
use crate::profile::{GivenPassword, Sited, User};

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    if ctx.profile.users.is_empty() {
        ctx.record("users", false, json!({}));
        return Ok(());
    }
    let previous = crate::secrets::read(ctx.secrets_file.path())?;
    let mut created = Vec::new();
    for user in ctx.profile.users.clone() {
        let mut command = ctx
            .in_root("useradd")
            .args(["--create-home", "--user-group", "--shell", &user.shell]);
        if !user.groups.is_empty() {
            let groups: Vec<&str> = user.groups.iter().map(|g| g.as_str()).collect();
            command = command.args(["--groups", &groups.join(",")]);
        }
        command
            .arg(user.name.as_str())
            .run()
            .with_context(|| format!("while creating user {} of profile {}", user.name, ctx.profile.path.display()))?;
        let (uid, _) = ids_of(ctx, user.name.as_str())?;
        if !user.ssh_authorized_keys.is_empty() {
            // Root-owned, outside the home: the account cannot add keys to it.
            let keys_dir = &crate::stages::firstboot::IMAGE_KEYS_DIR[1..];
            std::fs::create_dir_all(resolve_in_root(&ctx.root(), Path::new(keys_dir))?)?;
            std::fs::set_permissions(resolve_in_root(&ctx.root(), Path::new(keys_dir))?, std::fs::Permissions::from_mode(0o755))?;
            let mut keys = user.ssh_authorized_keys.join("\n");
            keys.push('\n');
            ctx.install_file(&format!("{keys_dir}/{}", user.name), keys.as_bytes(), 0o644)?;
        }
        let password = set_password(ctx, &user, &previous)
            .with_context(|| format!("while setting the password of {} of profile {}", user.name, ctx.profile.path.display()))?;
        let policy = &ctx.profile.passwords;
        ctx.in_root("chage")
            .args(["--lastday", "0"])
            .args(["--maxdays", &policy.max_days.to_string(), "--mindays", &policy.min_days.to_string()])
            .args(["--warndays", &policy.warn_days.to_string(), "--inactive", &policy.inactive_days.to_string()])
            .arg(user.name.as_str())
            .run()
            .with_context(|| format!("while setting the password aging of {}", user.name))?;
        created.push(json!({
            "name": user.name.as_str(),
            "uid": uid,
            "groups": user.groups.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
            "ssh-keys": user.ssh_authorized_keys.len(),
            "password": password,
            "must-change-at-first-login": true,
        }));
    }
    ctx.record(
        "users",
        true,
        json!({
            "accounts": created,
            // The file's name only: where the build ran is no part of the image.
            "secrets-file": (!ctx.secrets.is_empty()).then(|| ctx.secrets_file.path().file_name().map(|n| n.to_string_lossy().into_owned())),
        }),
    );
    Ok(())
}

/// Sets the account's password hash; returns how it was chosen (for the report).
fn set_password(ctx: &mut BuildContext, user: &User, previous: &[(String, String)]) -> Result<&'static str> {
    let name = user.name.as_str();
    let (hash, how) = match &user.password {
        Some(Sited { value: GivenPassword::Hash(hash), at }) => {
            if let Some(common) = matching_common_password(ctx, name, hash)? {
                anyhow::bail!("{at}: users.password-hash of {name}: too weak: it is the hash of {common:?}, a common password");
            }
            (hash.clone(), "given as a hash; checked against common passwords")
        }
        Some(Sited { value: GivenPassword::Plain(plain), at }) => {
            if let Some(why) = dictionary_weakness(ctx, plain)? {
                anyhow::bail!("{at}: users.password of {name}: too weak: {why}");
            }
            // The harness (and the operator) log in with it the first time.
            ctx.secrets.push((name.to_string(), plain.clone()));
            (hash_password(ctx, name, plain)?, "given in the profile (test profiles only); checked")
        }
        None => {
            let policy = ctx.profile.passwords.clone();
            let reused = previous.iter().find(|(u, p)| u == name && password_weakness(p, name, &policy).is_none()).map(|(_, p)| p.clone());
            // Kept from an earlier secrets file or new: the report says the same
            // either way, so a rebuild from the same inputs gives the same bytes.
            let password = match reused {
                Some(password) => password,
                None => crate::secrets::random_password(name, &policy)?,
            };
            let hash = hash_password(ctx, name, &password)?;
            ctx.secrets.push((name.to_string(), password));
            (hash, "random, in the secrets file")
        }
    };
    ctx.in_root("chpasswd").arg("--encrypted").stdin_bytes(format!("{name}:{hash}\n").into_bytes()).run()?;
    Ok(how)
}

/// yescrypt with the image's own libcrypt (through perl-base, which every
/// Debian has). The salt derives from the image, the account and the lock's
/// clock, never from the password (a salt made from it would let anyone with
/// /etc/shadow test guesses at SHA-256 speed), so a rebuild from the same
/// inputs gives the same bytes. Salt and password go through stdin.
fn hash_password(ctx: &BuildContext, user: &str, password: &str) -> Result<String> {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"rampart yescrypt salt\0")
        .chain_update(ctx.profile.name.as_str())
        .chain_update(b"\0")
        .chain_update(user)
        .chain_update(b"\0")
        .chain_update(ctx.source_date_epoch.to_le_bytes())
        .finalize();
    let salt = format!("$y$j9T${}", crypt_base64(&digest[..16]));
    let output = ctx
        .in_root("perl")
        .args(["-e", "my $s = <STDIN>; my $p = <STDIN>; chomp $s; chomp $p; print crypt($p, $s) // ''"])
        .stdin_bytes(format!("{salt}\n{password}\n").into_bytes())
        .run()?;
    let hash = output.stdout_text();
    if !hash.starts_with(&salt) {
        anyhow::bail!("the image's crypt() did not make a yescrypt hash");
    }
    Ok(hash)
}

/// The crypt(3) base-64 encoding yescrypt uses for salts (little-endian).
fn crypt_base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let mut value = 0u32;
        for (i, b) in chunk.iter().enumerate() {
            value |= (*b as u32) << (8 * i);
        }
        let n_chars = (chunk.len() * 8).div_ceil(6);
        for i in 0..n_chars {
            out.push(ALPHABET[((value >> (6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// The image's cracklib verdict on a password, `None` if it passes.
fn dictionary_weakness(ctx: &BuildContext, password: &str) -> Result<Option<String>> {
    if !ctx.profile.passwords.dictionary_check {
        return Ok(None);
    }
    let output = ctx.in_root("cracklib-check").stdin_bytes(format!("{password}\n").into_bytes()).run()?;
    let text = output.stdout_text();
    // "<password>: OK" or "<password>: <reason>"; the password itself is cut off.
    let verdict = text.trim_end().rsplit_once(": ").map(|(_, v)| v.to_string()).unwrap_or_default();
    Ok(if verdict == "OK" { None } else { Some(format!("the cracklib dictionary check says: {verdict}")) })
}

/// Tries the common passwords (and the account name) against a given hash
/// with the image's crypt(); returns the one that matches.
fn matching_common_password(ctx: &BuildContext, user: &str, hash: &str) -> Result<Option<String>> {
    let mut candidates: Vec<String> = COMMON_PASSWORDS.iter().map(|s| s.to_string()).collect();
    candidates.extend([user.to_string(), format!("{user}123"), format!("{user}1234"), format!("{user}123!")]);
    let output = ctx
        .in_root("perl")
        .args(["-e", "my $h = <STDIN>; chomp $h; while (my $p = <STDIN>) { chomp $p; if (crypt($p, $h) eq $h) { print $p; last } }"])
        .stdin_bytes(format!("{hash}\n{}\n", candidates.join("\n")).into_bytes())
        .run()?;
    let found = output.stdout_text();
    Ok(if found.is_empty() { None } else { Some(found) })
}

/// The uid and gid of `name` in the image's /etc/passwd.
pub fn ids_of(ctx: &BuildContext, name: &str) -> Result<(u32, u32)> {
    let passwd = std::fs::read_to_string(ctx.root().join("etc/passwd"))?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 4 && fields[0] == name {
            return Ok((fields[2].parse()?, fields[3].parse()?));
        }
    }
    anyhow::bail!("user {name} is not in the image's /etc/passwd")
}

/// The gid of group `name` in the image's /etc/group.
pub fn gid_of(ctx: &BuildContext, name: &str) -> Result<u32> {
    let group = std::fs::read_to_string(ctx.root().join("etc/group"))?;
    for line in group.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 3 && fields[0] == name {
            return Ok(fields[2].parse()?);
        }
    }
    anyhow::bail!("group {name} is not in the image's /etc/group")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salts_use_yescrypts_base64() {
        // 16 bytes -> 22 characters, the last holding 2 bits.
        let salt = crypt_base64(&[0xff; 16]);
        assert_eq!(salt.len(), 22);
        assert_eq!(salt, "zzzzzzzzzzzzzzzzzzzzz1");
        assert_eq!(crypt_base64(&[0, 0, 0]), "....");
    }

}
