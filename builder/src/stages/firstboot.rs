//! First-boot stage: what turns one golden image into many distinct machines.
//! The disk gets identifiers of its own on the first boot of a copy (the
//! initramfs's rampart-boot-disk); the machine-id is generated on first boot (the seal stage empties it); SSH
//! host keys are generated before sshd first starts (the seal stage removes
//! the build's); the root partition and file system grow to fill the disk
//! (systemd-repart + systemd-growfs); admin keys can be provisioned at first
//! boot from systemd credentials (SMBIOS type 11 or fw_cfg), the same input a
//! user's deployment gives.

use anyhow::{Context, Result};
use serde_json::json;

use crate::build::context::BuildContext;
use crate::layout::{BOOT_DISK_LINKS, CONFIG_MOUNT, CONFIG_PARTITION, ROOT_PARTITION};
use crate::profile::Profile;

/// Only an Ed25519 host key: modern, and generated in milliseconds even
/// under emulation (RSA 3072 takes ~18 s under TCG). Its public half goes to
/// the console (a line starting with `HOST_KEY_MARKER`), so whoever connects
/// first can check the key they are offered before they send a password.
pub const HOST_KEY_MARKER: &str = "rampart-ssh-host-key: ";
const HOSTKEYS_UNIT: &str = "[Unit]
Description=Generate the SSH host key unique to this machine
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N \"\" -f /etc/ssh/ssh_host_ed25519_key
ExecStartPost=/bin/sh -c 'echo \"rampart-ssh-host-key: $$(cat /etc/ssh/ssh_host_ed25519_key.pub)\"'
StandardOutput=journal+console
RemainAfterExit=yes

[Install]
RequiredBy=ssh.service
";

/// Where first-boot provisioned keys live: root-owned, outside the users'
/// homes, so an account cannot rewrite what the deployment gave it. sshd
/// reads only these (and the profile's keys below `image/`), unless the
/// profile sets `ssh.user-keys`.
pub const PROVISIONED_KEYS_DIR: &str = "/etc/ssh/authorized_keys.d";
/// The profile's own keys, in the image: `<dir>/image/<user>`.
pub const IMAGE_KEYS_DIR: &str = "/etc/ssh/authorized_keys.d/image";
/// The digests of the keys provisioned at first boot, recorded then, which
/// the integrity check compares them with (AIDE's database, made at build
/// time, cannot know them).
pub const PROVISIONED_KEYS_RECORD: &str = "/var/lib/rampart/ssh-keys.sha256";
pub const HOST_KEYS_UNIT: &str = "rampart-ssh-hostkeys.service";
pub const KEYS_RECORD_UNIT: &str = "rampart-ssh-keys-record.service";
/// Compares the provisioned key files with the record: the same names, the
/// same digests. Run by the integrity check.
pub const KEYS_CHECK: &str = "/usr/lib/rampart/check-ssh-keys";

fn keys_check_script() -> String {
    format!(
        r#"#!/bin/sh
# rampart: the SSH key files in {PROVISIONED_KEYS_DIR} against their record of the
# first boot ({PROVISIONED_KEYS_RECORD}): the same files, the same contents.
set -u
record={PROVISIONED_KEYS_RECORD}
if [ ! -f "$record" ]; then
    echo "rampart: no record of the SSH keys provisioned on first boot ($record)"
    exit 1
fi
cd {PROVISIONED_KEYS_DIR} || exit 1
now=$(find . -maxdepth 1 -type f -printf '%f
' | LC_ALL=C sort | tr '
' ' ')
recorded=$(sed 's/^[0-9a-f]*  //' "$record" | LC_ALL=C sort | tr '
' ' ')
status=0
if [ "$now" != "$recorded" ]; then
    echo "rampart: the key files in {PROVISIONED_KEYS_DIR} are not those of the first boot: now [ $now], then [ $recorded]"
    status=1
fi
if [ -s "$record" ] && ! sha256sum --check --strict --quiet "$record"; then
    echo "rampart: SSH keys in {PROVISIONED_KEYS_DIR} differ from those provisioned on first boot"
    status=1
fi
exit $status
"#
    )
}

fn keys_record_unit() -> String {
    format!(
        "[Unit]
Description=Record the SSH keys provisioned on first boot, for the integrity check
After=systemd-tmpfiles-setup.service
Before=ssh.service
ConditionPathExists=!{PROVISIONED_KEYS_RECORD}

[Service]
Type=oneshot
RemainAfterExit=yes
UMask=0077
ExecStart=/bin/sh -c 'cd {PROVISIONED_KEYS_DIR} && find . -maxdepth 1 -type f -printf \"%%f\\\\0\" | sort -z | xargs -0r sha256sum -- > {PROVISIONED_KEYS_RECORD}.new && mv {PROVISIONED_KEYS_RECORD}.new {PROVISIONED_KEYS_RECORD}'
ProtectSystem=strict
ReadWritePaths=/var/lib/rampart
ProtectHome=yes
PrivateNetwork=yes
PrivateTmp=yes
NoNewPrivileges=yes
CapabilityBoundingSet=

[Install]
RequiredBy=ssh.service
"
    )
}

/// systemd-repart's rule for the partition that grows to fill the disk;
/// the installer reads it too.
pub const GROW_RULE: &str = "etc/repart.d/50-grow.conf";

/// The file systems in fstab.
pub fn fstab(profile: &Profile) -> String {
    let grows = profile.image.grows();
    let growfs = |mount: &str| if mount == grows { ",x-systemd.growfs" } else { "" };
    let mut text = format!(
        "# rampart layout: partitions by name on the disk this machine booted from\n\
         # (/dev/disk/rampart/<partition name>); {grows} grows to the disk on boot\n\
         {BOOT_DISK_LINKS}/{ROOT_PARTITION}\t/\text4\tdefaults,errors=remount-ro{}\t0\t1\n\
         # the configuration partition (logging, integrity): read-only, mounted by the initramfs with the root\n\
         {BOOT_DISK_LINKS}/{CONFIG_PARTITION}\t{CONFIG_MOUNT}\text4\tro,nodev,nosuid,noexec,x-initrd.mount\t0\t0\n",
        growfs("/")
    );
    if !profile.image.partitions.is_empty() {
        text.push_str("# image.partitions: file systems of their own, with the options CIS Debian 12 1.1.2 asks\n");
    }
    for spec in &profile.image.partitions {
        let p = spec.partition;
        let device = crate::stages::encryption::mount_device(profile, p.name);
        text.push_str(&format!("{device}\t{}\text4\t{},errors=remount-ro{}\t0\t2\n", p.mount, p.options, growfs(p.mount)));
    }
    text.push_str(&crate::stages::kernel::fstab_lines(profile));
    text
}

/// systemd-repart grows the last partition, of this mount point's type.
pub fn grow_rule(mount: &str) -> String {
    let kind = if mount == "/" { "root" } else { "var" };
    format!("# rampart: grow the {mount} partition, last on the disk, to fill it (systemd-repart)\n[Partition]\nType={kind}\n")
}

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    let mut done = Vec::new();

    // Partitions by their names on the disk the machine booted from (a udev
    // rule the initramfs writes), never by an identifier: each installed
    // disk has its own, and other disks from the same image may be attached.
    let grows = ctx.profile.image.grows();
    ctx.install_file("etc/fstab", fstab(&ctx.profile).as_bytes(), 0o644)?;
    ctx.install_file(GROW_RULE, grow_rule(grows).as_bytes(), 0o644)?;
    done.push(format!("{grows} grown to the disk: its partition, which is last, by systemd-repart; its file system online (x-systemd.growfs)"));
    for spec in &ctx.profile.image.partitions {
        done.push(format!("{} a partition of its own, mounted {} (CIS {})", spec.partition.mount, spec.partition.options, spec.partition.cis));
    }
    done.push("a copy's first boot gives its disk its own GUID, partition UUIDs and file-system UUIDs (initramfs); the root is found on the disk the boot loader was loaded from, the other partitions by name on it".to_string());

    if ctx.root().join("lib/systemd/system/ssh.service").exists() {
        ctx.install_file("etc/systemd/system/rampart-ssh-hostkeys.service", HOSTKEYS_UNIT.as_bytes(), 0o644)?;
        ctx.install_symlink(
            "etc/systemd/system/ssh.service.requires/rampart-ssh-hostkeys.service",
            "/etc/systemd/system/rampart-ssh-hostkeys.service",
        )?;
        let user_keys = if ctx.profile.ssh.user_keys { " .ssh/authorized_keys" } else { "" };
        let sshd = format!(
            "# rampart: one modern host key, generated on first boot. Authorized keys come from\n# root-owned files only: provisioned at first boot ({PROVISIONED_KEYS_DIR}/<user>)\n# and the profile's ({IMAGE_KEYS_DIR}/<user>){}.\nHostKey /etc/ssh/ssh_host_ed25519_key\nAuthorizedKeysFile {PROVISIONED_KEYS_DIR}/%u {IMAGE_KEYS_DIR}/%u{user_keys}\n",
            if user_keys.is_empty() { "; the users' own ~/.ssh/authorized_keys are not read" } else { ", and ~/.ssh/authorized_keys (ssh.user-keys)" }
        );
        ctx.install_file("etc/ssh/sshd_config.d/10-rampart-firstboot.conf", sshd.as_bytes(), 0o600)?;
        done.push("ssh host key (ed25519) generated on first boot before sshd starts".to_string());

        let mut tmpfiles = String::from(
            "# rampart: admin SSH keys from systemd credentials (SMBIOS type 11 or fw_cfg),\n# written once, on the first boot that carries them.\n",
        );
        tmpfiles.push_str(&format!("d {PROVISIONED_KEYS_DIR} 0755 root root -\n"));
        for user in &ctx.profile.users {
            tmpfiles.push_str(&format!(
                "f^ {PROVISIONED_KEYS_DIR}/{name} 0644 root root - ssh.authorized_keys.{name}\n",
                name = user.name
            ));
        }
        ctx.install_file("etc/tmpfiles.d/rampart-provision.conf", tmpfiles.as_bytes(), 0o644)?;
        // The directory is in the image (and so in its integrity baseline);
        // only the keys come at first boot.
        let keys_dir = crate::fsutil::resolve_in_root(&ctx.root(), std::path::Path::new(&PROVISIONED_KEYS_DIR[1..]))?;
        std::fs::create_dir_all(&keys_dir)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&keys_dir, std::fs::Permissions::from_mode(0o755))?;
        }
        // systemd 252's tmpfiles service sees only the credentials it loads by name.
        let mut dropin = String::from("[Service]\n");
        for user in &ctx.profile.users {
            dropin.push_str(&format!("LoadCredential=ssh.authorized_keys.{}\n", user.name));
        }
        ctx.install_file("etc/systemd/system/systemd-tmpfiles-setup.service.d/rampart-provision.conf", dropin.as_bytes(), 0o644)?;
        done.push("admin keys accepted at first boot from credentials ssh.authorized_keys.<user>".to_string());
        ctx.install_file(&format!("etc/systemd/system/{KEYS_RECORD_UNIT}"), keys_record_unit().as_bytes(), 0o644)?;
        ctx.install_file(&KEYS_CHECK[1..], keys_check_script().as_bytes(), 0o755)?;
        ctx.in_root("sh").args(["-n", KEYS_CHECK]).run().context("while checking the SSH key check script with the image's sh -n")?;
        ctx.install_symlink(&format!("etc/systemd/system/ssh.service.requires/{KEYS_RECORD_UNIT}"), &format!("/etc/systemd/system/{KEYS_RECORD_UNIT}"))?;
        let record_dir = crate::fsutil::resolve_in_root(&ctx.root(), std::path::Path::new("var/lib/rampart"))?;
        std::fs::create_dir_all(&record_dir)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&record_dir, std::fs::Permissions::from_mode(0o700))?;
        }
        done.push(format!("keys provisioned on first boot recorded in {PROVISIONED_KEYS_RECORD}, compared by the integrity check"));
    }
    ctx.record(
        "firstboot",
        true,
        json!({
            "machine-id": "generated on first boot",
            "prepared": done,
            "ssh-authorized-keys": if ctx.profile.ssh.user_keys { "root-owned files and ~/.ssh/authorized_keys (ssh.user-keys)" } else { "root-owned files only" },
        }),
    );
    Ok(())
}
