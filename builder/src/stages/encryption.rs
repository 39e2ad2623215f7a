//! Encryption control (seed step 2: "if someone gains physical access to
//! the box ... you could encrypt data on the drive"): with
//! `encryption.data`, each machine encrypts its data partitions (every
//! separate partition of `image.partitions`) on its own first boot, in
//! place, with LUKS2 (cryptsetup), so no two machines share a volume key and
//! the image carries none. Each volume is bound to the machine's TPM 2.0
//! with a PCR 7 policy (systemd-cryptenroll): PCR 7 measures Secure Boot's
//! state and the keys that verified the boot path, the site's, so a kernel
//! update signed with the same db key unlocks as before, and a machine
//! booted with Secure Boot off, other keys, or another TPM does not. One
//! recovery key per machine, sealed to the site's recovery certificate.
//! Every later boot opens the volumes with systemd-cryptsetup (crypttab,
//! `tpm2-device=auto`); fstab mounts the opened volumes.

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::build::context::BuildContext;
use crate::layout::BOOT_DISK_LINKS;
use crate::profile::Profile;

pub const SERVICE: &str = "rampart-encrypt-data.service";
const SCRIPT: &str = "usr/lib/rampart/encrypt-data";
const SCRIPT_TEXT: &str = include_str!("../../data/encryption/encrypt-data");
/// The site's recovery certificate, which the machine seals its recovery key to.
const SITE_CERT: &str = "usr/share/rampart/recovery.crt";
/// The machine's recovery key, sealed (RSA-OAEP, base64), on the root.
pub const ESCROW: &str = "/etc/rampart-recovery-key.escrow";
/// What the script prints first on each line (console and journal).
pub const CONSOLE_MARKER: &str = "rampart-encrypt: ";
/// systemd-repart grows the last partition before any volume is opened, so
/// the opened volume spans it (a LUKS2 segment grows with its partition).
const REPART_DROP_IN: &str = "etc/systemd/system/systemd-repart.service.d/50-rampart-encryption.conf";
const CRYPTTAB: &str = "etc/crypttab";

/// The device-mapper name of an encrypted data partition.
pub fn volume(partition: &str) -> String {
    format!("rampart-{partition}")
}

/// The device fstab mounts for a data partition.
pub fn mount_device(profile: &Profile, partition: &str) -> String {
    if profile.encryption.data {
        format!("/dev/mapper/{}", volume(partition))
    } else {
        format!("{BOOT_DISK_LINKS}/{partition}")
    }
}

pub fn crypttab(profile: &Profile) -> String {
    let mut text = String::from(
        "# rampart: [encryption] data: each data partition, encrypted on the machine's first\n\
         # boot and bound to its TPM (PCR 7); asks for the recovery key when the TPM will not unseal\n",
    );
    for spec in &profile.image.partitions {
        let name = spec.partition.name;
        text.push_str(&format!("{}\t{BOOT_DISK_LINKS}/{name}\tnone\tluks,tpm2-device=auto\n", volume(name)));
    }
    text
}

fn unit(profile: &Profile) -> String {
    let names: Vec<&str> = profile.image.partitions.iter().map(|p| p.partition.name).collect();
    format!(
        "[Unit]
Description=rampart: encrypt the data partitions to this machine's TPM (first boot)
Documentation=man:systemd-cryptenroll(1) man:cryptsetup-reencrypt(8)
DefaultDependencies=no
Wants=cryptsetup-pre.target
After=systemd-remount-fs.service systemd-udev-trigger.service
Before=cryptsetup-pre.target systemd-repart.service shutdown.target
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/{SCRIPT} {}
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity

[Install]
WantedBy=sysinit.target
",
        names.join(" ")
    )
}

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    if !ctx.profile.encryption.data {
        ctx.record("encryption", false, json!({ "reason": "encryption.data = false: the data partitions are written in the clear" }));
        return Ok(());
    }
    for tool in ["usr/bin/systemd-cryptenroll", "sbin/cryptsetup", "usr/bin/openssl"] {
        if !ctx.root().join(tool).exists() {
            bail!("[encryption] of {}: the image has no /{tool}", ctx.profile.path.display());
        }
    }
    let cert_path = ctx.site_keys()?.recovery.cert.clone();
    let site_cert = std::fs::read(&cert_path).with_context(|| format!("while reading the site's recovery certificate {}", cert_path.display()))?;
    let script = SCRIPT_TEXT.replace("@ESCROW@", ESCROW).replace("@SITE_CERT@", &format!("/{SITE_CERT}"));
    ctx.install_file(SCRIPT, script.as_bytes(), 0o755)?;
    ctx.install_file(SITE_CERT, &site_cert, 0o644)?;
    ctx.install_file(&format!("etc/systemd/system/{SERVICE}"), unit(&ctx.profile).as_bytes(), 0o644)?;
    ctx.install_file(REPART_DROP_IN, b"# rampart: [encryption] the last partition grows before its volume is opened\n[Unit]\nBefore=cryptsetup-pre.target\n", 0o644)?;
    ctx.install_file(CRYPTTAB, crypttab(&ctx.profile).as_bytes(), 0o644)?;
    let volumes: Vec<String> = ctx.profile.image.partitions.iter().map(|p| format!("{} -> /dev/mapper/{}", p.partition.mount, volume(p.partition.name))).collect();
    ctx.record(
        "encryption",
        true,
        json!({
            "volumes": volumes,
            "when": format!("on each machine's first boot, in place ({SERVICE}, before any volume is opened; an interrupted run resumes)"),
            "format": "LUKS2, aes-xts-plain64 (cryptsetup's default), one volume key per partition and machine",
            "unlock": "the machine's TPM 2.0, PCR 7 (Secure Boot on, with the site's keys): kernels signed with the same db key unlock as before; Secure Boot off, other keys or another TPM ask for the recovery key",
            "recovery": format!("one key per machine, made on it (systemd-cryptenroll --recovery-key) and kept only sealed to the site's recovery certificate: {ESCROW} and the journal"),
            "no-tpm": "the first boot stops with a message and encrypts nothing; the data partitions are not mounted",
        }),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_data_partition_has_a_crypttab_line_and_the_unit_names_them() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/sealed.toml");
        let profile = crate::profile::load(&path).unwrap();
        let tab = crypttab(&profile);
        for spec in &profile.image.partitions {
            let line = format!("rampart-{0}\t/dev/disk/rampart/{0}\tnone\tluks,tpm2-device=auto", spec.partition.name);
            assert!(tab.lines().any(|l| l == line), "{tab}");
            assert_eq!(mount_device(&profile, spec.partition.name), format!("/dev/mapper/rampart-{}", spec.partition.name));
        }
        assert!(unit(&profile).contains("ExecStart=/usr/lib/rampart/encrypt-data home var var-tmp var-log var-log-audit\n"), "{}", unit(&profile));
        assert!(SCRIPT_TEXT.contains("@ESCROW@") && SCRIPT_TEXT.contains("@SITE_CERT@"));
    }
}
