//! Installer stage (`build --installer`): `<name>.installer.raw`, a disk to
//! write to a USB stick that boots, writes the golden `<name>.raw` to the
//! target disk (the profile's `installer.target`, or the only empty disk),
//! reads it back, grows it and powers off: no network, no questions.
//!
//! The installer runs the golden image's own system (same kernel, same
//! hardening), from a second root file system: a hard-linked copy of the
//! finished root with its fstab and growth rules taken out, the installer's
//! script and units added, and the golden raw image as a file. It boots with
//! the root read-only and `systemd.unit=rampart-install.target`, so nothing
//! but the installer starts and nothing is written to the medium. Made like
//! the disk stage: no mounts, fixed identifiers, bit-identical rebuilds.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use crate::build::context::BuildContext;
use crate::fsutil::{resolve_in_root, sha256_file};
use crate::layout::{Identifiers, ESP_SIZE_MIB, FIRST_LBA_MIB, TYPE_ROOT_X86_64, TYPE_VAR};
use crate::stages::firstboot::GROW_RULE;
use crate::process::Cmd;
use crate::stages::disk::{self, Esp, Ext4, GptPartition, MIB, TYPE_ESP, TYPE_LINUX_DATA};
use crate::ui;

/// Where the installer keeps its script, settings and the image.
const DIR: &str = "usr/lib/rampart-installer";
const ESP_LABEL: &str = "RAMPARTINST";
const ROOT_LABEL: &str = "rampart-installer";
/// Printed on the console when the installer ends, for people and the test harness.
pub const DONE_MARKER: &str = "rampart-install: done:";
pub const FAILED_MARKER: &str = "rampart-install: FAILED:";

const SCRIPT: &str = include_str!("../../data/installer/install.sh");

const TARGET_UNIT: &str = "\
[Unit]
Description=rampart offline installer
Documentation=man:systemd.special(7)
Requires=rampart-install.service
After=rampart-install.service
AllowIsolate=yes
";

const SERVICE_UNIT: &str = "\
[Unit]
Description=rampart offline installer: write the golden image to the target disk
DefaultDependencies=no
Wants=systemd-udevd.service systemd-udev-trigger.service
After=systemd-udevd.service systemd-udev-trigger.service systemd-journald.service
# On failure the machine stays up, the reason on its console.
SuccessAction=poweroff

[Service]
Type=oneshot
ExecStart=/usr/lib/rampart-installer/install
# Straight to the console: the journal may not be up yet, and there is no getty.
StandardOutput=tty
StandardError=tty
TTYPath=/dev/console
TimeoutStartSec=infinity
";

/// The identifiers of a profile's installer: its own, never the image's,
/// so the medium and the installed disk can sit side by side.
pub fn identifiers(profile_name: &str) -> Identifiers {
    // A profile name has no '.', so this cannot be another profile's.
    Identifiers::for_profile(&format!("{profile_name}.installer"))
}

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    let timer = ui::Timed::start("installer stage: assembling the offline installer");
    let name = ctx.profile.name.to_string();
    let ids = identifiers(&name);
    let epoch_text = ctx.source_date_epoch.to_string();
    let epoch = ctx.source_date_epoch;
    let work = ctx.work();
    let raw = ctx.artifact("raw");
    let image_bytes = std::fs::metadata(&raw).with_context(|| format!("while reading {}", raw.display()))?.len();
    let image_sha256 = sha256_file(&raw)?;

    // The installer's root: the golden root, hard-linked (files are never
    // written through: changed paths are unlinked and made anew).
    let tree = work.join("installer-root");
    Cmd::new("cp").arg("-al").arg(ctx.root()).arg(&tree).run().context("while copying the image root for the installer")?;
    let place = |image_path: &str, contents: &[u8], mode: u32| -> Result<()> {
        let path = resolve_in_root(&tree, Path::new(image_path))?;
        if std::fs::symlink_metadata(&path).is_ok() {
            std::fs::remove_file(&path)?;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, contents).with_context(|| format!("while writing {image_path} into the installer"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        crate::stages::seal::set_times(&path, epoch)
    };
    // Nothing of the installed system is mounted from the medium, and the
    // medium is never grown: the growth rule is for the target only.
    let repart_rule = std::fs::read(ctx.root().join(GROW_RULE)).with_context(|| format!("the image has no /{GROW_RULE}"))?;
    std::fs::remove_file(resolve_in_root(&tree, Path::new(GROW_RULE))?)?;
    place("etc/fstab", b"# rampart installer: the root file system stays read-only; nothing else is mounted\n", 0o644)?;
    place(&format!("{DIR}/repart.d/50-grow.conf"), &repart_rule, 0o644)?;
    place(&format!("{DIR}/install"), SCRIPT.as_bytes(), 0o755)?;
    place(&format!("{DIR}/make-disk-unique"), crate::stages::packages::MAKE_DISK_UNIQUE.as_bytes(), 0o755)?;
    let image_path = format!("/{DIR}/{name}.raw");
    let config = render_config(&ctx.profile, &image_path, image_bytes, &image_sha256);
    place(&format!("{DIR}/installer.conf"), config.as_bytes(), 0o644)?;
    place("etc/systemd/system/rampart-install.target", TARGET_UNIT.as_bytes(), 0o644)?;
    place("etc/systemd/system/rampart-install.service", SERVICE_UNIT.as_bytes(), 0o644)?;
    let payload = resolve_in_root(&tree, Path::new(image_path.trim_start_matches('/')))?;
    // A hard link when the build tree shares the artifacts' file system;
    // else a sparse copy (the tree may be in memory).
    if std::fs::hard_link(&raw, &payload).is_err() {
        std::fs::File::create(&payload)?.set_len(image_bytes)?;
        disk::copy_sparse(&raw, &payload, 0).context("while placing the image in the installer")?;
    }
    crate::stages::seal::set_times(&payload, epoch)?;
    // Directories whose entries changed get the build's time again.
    for dir in ["etc", "etc/repart.d", "etc/systemd/system", "usr/lib", DIR, &format!("{DIR}/repart.d")] {
        crate::stages::seal::set_times(&tree.join(dir), epoch)?;
    }

    let (needed_mib, n_entries) = disk::root_needs(&tree)?;
    let root_start_mib = FIRST_LBA_MIB + ESP_SIZE_MIB;
    let disk_bytes = (root_start_mib + needed_mib + 1) * MIB;
    let root_image = work.join("installer-root.ext4");
    let root_fs = Ext4 {
        what: "installer root",
        tree: tree.clone(),
        size_mib: needed_mib,
        inodes: (n_entries * 2).max(65536),
        label: ROOT_LABEL,
        uuid: &ids.root_fs_uuid,
        hash_seed: &ids.root_hash_seed,
        journal: false,
    };
    disk::make_ext4(&ctx.work(), &root_image, &root_fs, &epoch_text)?;
    std::fs::remove_dir_all(&tree)?;

    let image_root = ctx.root();
    let (kernel, initrd) = disk::find_kernel(&image_root)?;
    let cmdline = format!("root=PARTUUID={} ro systemd.unit=rampart-install.target {}", ids.root_partuuid, ctx.kernel_cmdline());
    let title = format!("rampart installer: writes {name} to the target disk");
    let esp = Esp { title: &title, root: &image_root, kernel: &kernel, initrd: &initrd, cmdline: &cmdline, label: ESP_LABEL, volume_id: &ids.esp_volume_id, keys: ctx.site_keys()? };
    let esp_image = work.join("installer-esp.vfat");
    disk::make_esp(&work.join("installer-esp"), &esp_image, &esp, &epoch_text)?;

    let installer = ctx.artifact("installer.raw");
    let partitions = [
        GptPartition { start_mib: FIRST_LBA_MIB, size_mib: ESP_SIZE_MIB, type_guid: TYPE_ESP, uuid: &ids.esp_partuuid, name: "esp" },
        GptPartition { start_mib: root_start_mib, size_mib: needed_mib, type_guid: TYPE_LINUX_DATA, uuid: &ids.root_partuuid, name: "rampart-installer" },
    ];
    disk::write_partition_table(&installer, &work, disk_bytes, &ids.disk_guid, &partitions)?;
    disk::copy_sparse(&esp_image, &installer, FIRST_LBA_MIB * MIB)?;
    disk::copy_sparse(&root_image, &installer, root_start_mib * MIB)?;
    std::fs::remove_file(&root_image)?;
    std::fs::remove_file(&esp_image)?;

    let target = ctx.profile.installer.target.clone();
    ctx.record(
        "installer",
        true,
        json!({
            "artifact": format!("{name}.installer.raw"),
            "size": disk_bytes,
            "image": format!("{name}.raw"),
            "image-sha256": image_sha256,
            "target": target.as_deref().unwrap_or("the only empty disk"),
            "overwrite": ctx.profile.installer.overwrite,
            "checks before writing": ["target found, a whole disk, not the installer's own", "empty, or installer.overwrite", "large enough", "image sha256 on the medium"],
            "after writing": ["read back and compared", "identifiers of its own (disk GUID, partition and file-system UUIDs, FAT volume ID)", "the last partition (/var, or the root) grown (systemd-repart)", "its file system checked and grown (e2fsck, resize2fs)", "power off"],
            "on error": "nothing written, or what was written wiped; the reason on the console; the machine halts",
            "kernel-cmdline": cmdline,
        }),
    );
    timer.done();
    Ok(())
}

/// The installer's settings, sourced by its script. Every value is one the
/// profile validated (a /dev path without quotes) or rampart computed.
fn render_config(profile: &crate::profile::Profile, image: &str, bytes: u64, sha256: &str) -> String {
    let grows = profile.image.grows();
    let grows_type = if grows == "/" { TYPE_ROOT_X86_64 } else { TYPE_VAR };
    format!(
        "# rampart installer settings (from profile {name})\nNAME='{name}'\nIMAGE='{image}'\nIMAGE_BYTES={bytes}\nIMAGE_SHA256={sha256}\nTARGET='{target}'\nOVERWRITE={overwrite}\n# the partition that grows to fill the disk, last on it\nGROWS='{grows}'\nGROWS_TYPE={grows_type}\n",
        name = profile.name,
        target = profile.installer.target.as_deref().unwrap_or(""),
        overwrite = if profile.installer.overwrite { "yes" } else { "no" },
    )
}
