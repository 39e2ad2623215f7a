//! Patching (seed step 6, "download any software updates you will need to
//! another network server, and then copy this software to your new network
//! server"): every image carries `rampart-patch`, which applies a patch
//! medium made by `rampart patch` (`crate::patch`), the site's archive
//! public key, the only key it and apt trust for a medium (on the read-only
//! configuration partition), and the digest of the lock the image was built
//! from, which a medium must start from.

use anyhow::Result;
use serde_json::json;

use crate::build::context::BuildContext;
use crate::layout::CONFIG_MOUNT;

const SCRIPT: &str = "usr/sbin/rampart-patch";
pub const SCRIPT_TEXT: &str = include_str!("../../data/patch/rampart-patch");
/// The kernel packages' hook: with Secure Boot, says why a kernel dpkg
/// installed will not boot; without, gives it a boot loader entry.
const KERNEL_HOOK: &str = "zz-rampart-boot";
const KERNEL_HOOK_TEXT: &str = include_str!("../../data/patch/zz-rampart-boot");
/// The command line of the image's boot entry, for entries the hook makes.
const CMDLINE: &str = "etc/kernel/cmdline";

/// rampart-patch's marker of a patch in progress, left out of AIDE's view;
/// the lock the machine runs is recorded beside it, watched.
pub const IN_PROGRESS: &str = "/var/lib/rampart/patch/applying";

/// The site's archive public key in the image.
pub fn keyring_path() -> String {
    format!("{CONFIG_MOUNT}/patch/archive.pgp")
}

/// The digest of the lock the image was built from.
pub fn lock_digest_path() -> String {
    format!("{CONFIG_MOUNT}/patch/lock.sha256")
}

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    let public = std::fs::read(&ctx.site_keys()?.archive.public)?;
    let digest = ctx.lock.digest(ctx.profile.name.as_str())?;
    ctx.install_file(SCRIPT, SCRIPT_TEXT.as_bytes(), 0o755)?;
    for when in ["postinst.d", "postrm.d"] {
        ctx.install_file(&format!("etc/kernel/{when}/{KERNEL_HOOK}"), KERNEL_HOOK_TEXT.as_bytes(), 0o755)?;
    }
    let cmdline = crate::stages::disk::boot_cmdline(ctx);
    ctx.install_file(CMDLINE, format!("{cmdline}\n").as_bytes(), 0o644)?;
    ctx.install_file(&keyring_path()[1..], &public, 0o644)?;
    ctx.install_file(&lock_digest_path()[1..], format!("{digest}\n").as_bytes(), 0o644)?;
    ctx.record(
        "patching",
        true,
        json!({
            "command": format!("/{SCRIPT} DEVICE (a medium made by `rampart patch`), /{SCRIPT} --report (the installed packages)"),
            "trusted-key": keyring_path(),
            "lock-sha256": digest,
            "boot-image": "the medium's, signed by the site; the previous one stays on the ESP as EFI/Linux/rampart-previous.efi",
            "kernels-from-dpkg": format!("/etc/kernel/postinst.d/{KERNEL_HOOK}: with Secure Boot on, nothing unsigned reaches the ESP and the hook says why (the patch medium brings the signed image); with it off, a boot loader entry for the new kernel becomes the default, the signed image the fallback"),
            "cmdline": cmdline,
            "integrity": "the AIDE database is made again on the machine by rampart-patch alone, only after a clean check before the upgrade; every step logged to the journal, syslog and the audit log",
        }),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_reads_the_paths_the_stage_writes() {
        assert!(SCRIPT_TEXT.contains(&format!("KEYRING={}\n", keyring_path())));
        assert!(SCRIPT_TEXT.contains(&format!("IMAGE_LOCK={}\n", lock_digest_path())));
        assert!(SCRIPT_TEXT.contains(&format!("STATE={}\n", IN_PROGRESS.trim_end_matches("/applying"))));
        assert!(SCRIPT_TEXT.contains(&format!("AIDE_CONFIG={}\n", crate::stages::integrity::config_path())));
        assert!(SCRIPT_TEXT.contains(&format!("AIDE_DATABASE={}\n", crate::stages::integrity::database_path())));
        assert!(SCRIPT_TEXT.contains(&format!("SEAL_OFFSET={}\n", crate::patch::SEAL_OFFSET)));
        assert!(SCRIPT_TEXT.contains(&format!("SEAL_SIZE={}\n", crate::patch::SEAL_SIZE)));
        assert!(SCRIPT_TEXT.contains(&format!("PAYLOAD_OFFSET={}\n", crate::patch::PAYLOAD_OFFSET)));
        assert!(KERNEL_HOOK_TEXT.contains(&format!("{}/{}", crate::layout::BOOT_DISK_LINKS, crate::layout::ESP_PARTITION)));
        assert!(KERNEL_HOOK_TEXT.contains("RAMPART_PATCH_BOOT_IMAGE") && SCRIPT_TEXT.contains("RAMPART_PATCH_BOOT_IMAGE="));
        assert!(KERNEL_HOOK_TEXT.contains(&format!("$(cat /{CMDLINE})")));
        assert!(KERNEL_HOOK_TEXT.contains(&format!("default {}", crate::stages::disk::UKI_PATH.rsplit('/').next().unwrap())));
        assert!(SCRIPT_TEXT.contains(&format!("ESP_DEVICE={}/{}\n", crate::layout::BOOT_DISK_LINKS, crate::layout::ESP_PARTITION)));
    }
}
