//! Users stage: the profile's admin accounts, created with the image's own
//! useradd, with their SSH authorized keys (the build-time provisioning
//! input). Passwords stay locked: these accounts log in by key only.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use crate::build::context::BuildContext;
use crate::fsutil::resolve_in_root;

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    if ctx.profile.users.is_empty() {
        ctx.record("users", false, json!({}));
        return Ok(());
    }
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
        let (uid, gid) = ids_of(ctx, user.name.as_str())?;
        if !user.ssh_authorized_keys.is_empty() {
            let ssh_dir = format!("home/{}/.ssh", user.name);
            let ssh_dir_path = resolve_in_root(&ctx.root(), Path::new(&ssh_dir))?;
            std::fs::create_dir_all(&ssh_dir_path)?;
            std::fs::set_permissions(&ssh_dir_path, std::fs::Permissions::from_mode(0o700))?;
            std::os::unix::fs::lchown(&ssh_dir_path, Some(uid), Some(gid))?;
            let keys_file = format!("{ssh_dir}/authorized_keys");
            let mut keys = user.ssh_authorized_keys.join("\n");
            keys.push('\n');
            ctx.install_file(&keys_file, keys.as_bytes(), 0o600)?;
            let keys_path = resolve_in_root(&ctx.root(), Path::new(&keys_file))?;
            std::os::unix::fs::lchown(&keys_path, Some(uid), Some(gid))?;
        }
        created.push(json!({
            "name": user.name.as_str(),
            "uid": uid,
            "groups": user.groups.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
            "ssh-keys": user.ssh_authorized_keys.len(),
            "password": "locked (key login only)",
        }));
    }
    ctx.record("users", true, json!({ "accounts": created }));
    Ok(())
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
