//! Disk stage: assembles `<name>.raw` (GPT: EFI system partition, a small
//! configuration partition, the ext4 root, and the profile's separate
//! partitions (CIS 1.1.2: /home, /var/tmp, /var/log, /var/log/audit, and
//! /var last so that it grows; without a separate /var the root is last and
//! grows) and
//! `<name>.qcow2`, without loop devices or mounts: file systems are made from
//! files (`mkfs.ext4 -d`, mtools) and written at partition offsets. Boots by
//! systemd-boot through UEFI; the root found on the disk systemd-boot was
//! loaded from (no root=; see rampart-boot-disk). Every identifier and
//! timestamp is fixed, so two builds are bit-identical.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::build::context::BuildContext;
use crate::layout::{Identifiers, ESP_PARTITION, CONFIG_LABEL, CONFIG_PARTITION, ROOT_PARTITION, CONFIG_MOUNT, CONFIG_SIZE_MIB, ESP_LABEL, ESP_SIZE_MIB, FIRST_LBA_MIB, ROOT_LABEL};
use crate::process::Cmd;
use crate::tree::{walk, Kind};
use crate::ui;

pub(crate) const MIB: u64 = 1 << 20;
/// systemd-boot, from the image's own systemd-boot-efi (a locked package,
/// so in the manifest, the SBOM and the inputs digest), never the host's.
pub(crate) const SYSTEMD_BOOT: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";
pub(crate) const TYPE_ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
pub(crate) use crate::layout::TYPE_LINUX_DATA;
use crate::layout::{DataIdentifiers, DATA_PARTITIONS, GROWS_WHEN_SEPARATE, TYPE_ROOT_X86_64};

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    let timer = ui::Timed::start("disk stage: assembling the UEFI disk");
    let name = ctx.profile.name.to_string();
    let ids = Identifiers::for_profile(&name);
    let epoch = ctx.source_date_epoch.to_string();
    let root = ctx.root();
    let work = ctx.work();
    let (kernel, initrd) = find_kernel(&root)?;

    // Each separate partition is made from a hard-linked copy of its part of
    // the finished root; the root's copy keeps only the empty mount points.
    let separate = &ctx.profile.image.partitions;
    let mounts: Vec<&str> = separate.iter().map(|p| p.partition.mount).collect();
    let split = work.join("partitions");
    let root_tree = if separate.is_empty() { root.clone() } else { split_tree(&root, "/", &mounts, &split.join("root"))? };
    let mut file_systems = Vec::new();
    let (root_needs_mib, root_entries) = root_needs(&root_tree)?;
    // Room for a second kernel beside this one: a machine patched later
    // keeps the kernel it ran as the fallback until the next patch.
    let root_size_mib = root_needs_mib + kernel_room_mib(&root)?;
    file_systems.push(Planned { name: ROOT_PARTITION, mount: "/", type_guid: TYPE_ROOT_X86_64, tree: root_tree, needs_mib: root_needs_mib, entries: root_entries, size_mib: root_size_mib, field: None, label: ROOT_LABEL.to_string(), uuid: ids.root_fs_uuid.clone(), partuuid: ids.root_partuuid.clone(), hash_seed: ids.root_hash_seed.clone() });
    for spec in separate {
        let partition = spec.partition;
        let tree = split_tree(&root, partition.mount, &mounts, &split.join(partition.name))?;
        let (needs_mib, entries) = root_needs(&tree)?;
        let field = format!("image.partitions.\"{}\" ({})", partition.mount, spec.at.as_deref().unwrap_or("rampart's default"));
        if needs_mib > spec.size_mib && partition.mount != GROWS_WHEN_SEPARATE {
            bail!("{field}: {} MiB is too small: the image's {} needs about {needs_mib} MiB; raise it in {}", spec.size_mib, partition.mount, ctx.profile.path.display());
        }
        let data = DataIdentifiers::for_partition(&name, partition);
        file_systems.push(Planned { name: partition.name, mount: partition.mount, type_guid: partition.type_guid, tree, needs_mib, entries, size_mib: spec.size_mib.max(needs_mib), field: Some(field), label: partition.name.to_string(), uuid: data.fs_uuid, partuuid: data.partuuid, hash_seed: data.hash_seed });
    }
    // The partition that grows is last on the disk: /var when separate (a
    // server's data grows there), else the root.
    let grows = file_systems.iter().position(|f| f.mount == ctx.profile.image.grows()).unwrap_or(0);
    let last = file_systems.remove(grows);
    file_systems.push(last);

    let first_mib = FIRST_LBA_MIB + ESP_SIZE_MIB + CONFIG_SIZE_MIB;
    let fixed_mib: u64 = file_systems[..file_systems.len() - 1].iter().map(|f| f.size_mib).sum();
    let growing = file_systems.last_mut().expect("the root at least");
    // The backup GPT takes the last 1 MiB.
    let disk_bytes = match ctx.profile.image.size {
        Some(size) => size.bytes(),
        None => (first_mib + fixed_mib + growing.size_mib + 1) * MIB,
    };
    let rest_mib = (disk_bytes / MIB).saturating_sub(first_mib + fixed_mib + 1);
    if rest_mib < growing.size_mib {
        bail!(
            "image.size of {} is too small: the partitions need {} MiB ({} MiB for the boot and configuration partitions, {} MiB for the fixed ones, at least {} MiB for {}, which grows); raise image.size or make image.partitions smaller",
            ctx.profile.path.display(),
            first_mib + fixed_mib + growing.size_mib + 1,
            first_mib + 1,
            fixed_mib,
            growing.size_mib,
            growing.mount
        );
    }
    growing.size_mib = rest_mib;

    // Read-only where mounted: no journal to replay.
    let config_image = work.join("config.ext4");
    let config_fs = Ext4 {
        what: "configuration",
        tree: ctx.config_tree(),
        size_mib: CONFIG_SIZE_MIB,
        inodes: 1024,
        label: CONFIG_LABEL,
        uuid: &ids.config_fs_uuid,
        hash_seed: &ids.config_hash_seed,
        journal: false,
    };
    make_ext4(&ctx.work(), &config_image, &config_fs, &epoch)?;
    let esp_image = work.join("esp.vfat");
    // No root=: the initramfs finds the root on the disk systemd-boot was
    // loaded from, and gives a copy whose disk GUID is still this one
    // identifiers of its own on its first boot (rampart-boot-disk).
    let cmdline = boot_cmdline(ctx);
    let keys = ctx.site_keys()?;
    let esp = Esp { title: "Debian GNU/Linux 12 (rampart)", root: &root, kernel: &kernel, initrd: &initrd, cmdline: &cmdline, label: ESP_LABEL, volume_id: &ids.esp_volume_id, keys };
    make_esp(&work.join("esp"), &esp_image, &esp, &epoch)?;
    let vars = crate::secureboot::boot::variable_store(keys, Path::new(crate::secureboot::OVMF_VARS_BLANK), ctx.source_date_epoch)?;
    crate::fsutil::write_atomic(&ctx.artifact(crate::secureboot::VARS_SUFFIX), &vars)?;

    let raw = ctx.artifact("raw");
    let mut partitions = vec![
        GptPartition { start_mib: FIRST_LBA_MIB, size_mib: ESP_SIZE_MIB, type_guid: TYPE_ESP, uuid: &ids.esp_partuuid, name: ESP_PARTITION },
        GptPartition { start_mib: FIRST_LBA_MIB + ESP_SIZE_MIB, size_mib: CONFIG_SIZE_MIB, type_guid: TYPE_LINUX_DATA, uuid: &ids.config_partuuid, name: CONFIG_PARTITION },
    ];
    let mut start_mib = first_mib;
    let mut starts = Vec::new();
    for fs in &file_systems {
        partitions.push(GptPartition { start_mib, size_mib: fs.size_mib, type_guid: fs.type_guid, uuid: &fs.partuuid, name: fs.name });
        starts.push(start_mib);
        start_mib += fs.size_mib;
    }
    write_partition_table(&raw, &work, disk_bytes, &ids.disk_guid, &partitions)?;
    copy_sparse(&esp_image, &raw, FIRST_LBA_MIB * MIB)?;
    copy_sparse(&config_image, &raw, (FIRST_LBA_MIB + ESP_SIZE_MIB) * MIB)?;
    std::fs::remove_file(&config_image)?;
    let mut records = vec![
        json!({"name": ESP_PARTITION, "label": ESP_LABEL, "size-mib": ESP_SIZE_MIB, "partuuid": ids.esp_partuuid, "type": TYPE_ESP}),
        json!({"name": CONFIG_PARTITION, "label": CONFIG_LABEL, "size-mib": CONFIG_SIZE_MIB, "partuuid": ids.config_partuuid, "fs-uuid": ids.config_fs_uuid, "type": TYPE_LINUX_DATA, "mount": format!("{CONFIG_MOUNT} (read-only)")}),
    ];
    for (fs, start) in file_systems.iter().zip(starts) {
        let image = work.join(format!("{}.ext4", fs.name));
        let what = format!("{} ({})", fs.name, fs.mount);
        let ext4 = Ext4 {
            what: &what,
            tree: fs.tree.clone(),
            size_mib: fs.size_mib,
            inodes: (fs.entries * 2).max(if fs.mount == "/" { 65536 } else { 16384 }),
            label: &fs.label,
            uuid: &fs.uuid,
            hash_seed: &fs.hash_seed,
            journal: true,
        };
        make_ext4(&ctx.work(), &image, &ext4, &epoch).with_context(|| match &fs.field {
            Some(field) => format!("the partition of {field} does not hold what the image keeps there"),
            None => "the root partition does not hold what the image keeps there".to_string(),
        })?;
        copy_sparse(&image, &raw, start * MIB)?;
        std::fs::remove_file(&image)?;
        let mut record = json!({"name": fs.name, "label": fs.label, "size-mib": fs.size_mib, "partuuid": fs.partuuid, "fs-uuid": fs.uuid, "type": fs.type_guid, "mount": fs.mount, "content-mib": fs.needs_mib});
        if let Some(partition) = DATA_PARTITIONS.iter().find(|p| p.mount == fs.mount) {
            record["options"] = json!(partition.options);
            record["cis"] = json!(partition.cis);
        }
        if fs.name == ROOT_PARTITION {
            record["room-for-a-kernel-update-mib"] = json!(fs.size_mib.saturating_sub(fs.needs_mib));
        }
        records.push(record);
    }
    if split.exists() {
        std::fs::remove_dir_all(&split)?;
    }

    let qcow2 = ctx.artifact("qcow2");
    Cmd::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2", "-c", "-o", "compression_type=zstd"])
        .arg(&raw)
        .arg(&qcow2)
        .run()
        .context("while converting the disk to qcow2")?;

    let grows = file_systems.last().map(|f| f.mount).unwrap_or("/");
    let keys = ctx.site_keys()?;
    let fingerprint = |der: &[u8]| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(der));
    let secure_boot = json!({
        "keys": keys.dir.file_name().map(|n| n.to_string_lossy().into_owned()),
        "owner-guid": keys.owner,
        // So a reviewer can tell which keys the machines trust.
        "certificates-sha256": { "PK": fingerprint(&keys.pk.der), "KEK": fingerprint(&keys.kek.der), "db": fingerprint(&keys.db.der) },
        "variable-store": format!("{}.{} (OVMF, 4 MiB: the site's PK, KEK and db enrolled, Secure Boot on)", name, crate::secureboot::VARS_SUFFIX),
    });
    ctx.record(
        "disk",
        true,
        json!({
            "size": disk_bytes,
            "partitions": records,
            "grows on first boot": grows,
            "disk-guid": ids.disk_guid,
            "bootloader": format!("systemd-boot (UEFI), signed with the site's db key; menu hidden, editor off, secure-boot-enroll manual (/{ENROLMENT_DIR})"),
            "boot-image": format!("/{UKI_PATH}: a unified kernel image (systemd-stub, kernel, initrd, command line, os-release), signed with the site's db key"),
            "secure-boot": secure_boot,
            "kernel": kernel.file_name().map(|n| n.to_string_lossy().into_owned()),
            "kernel-cmdline": cmdline,
            "qcow2": "zstd-compressed",
        }),
    );
    timer.done();
    Ok(())
}

/// One file system of the disk, planned before any is made.
struct Planned {
    name: &'static str,
    mount: &'static str,
    type_guid: &'static str,
    tree: PathBuf,
    needs_mib: u64,
    entries: u64,
    size_mib: u64,
    /// The profile field behind its size; `None` for the root.
    field: Option<String>,
    label: String,
    uuid: String,
    partuuid: String,
    hash_seed: String,
}

/// A hard-linked copy of the image root's `mount` at `target`, in which the
/// other partitions' mount points below it are kept as empty directories
/// with their own owner, mode and times. Files are never written through
/// (mkfs.ext4 -d only reads them), so the links cost no copies.
fn split_tree(root: &Path, mount: &str, mounts: &[&str], target: &Path) -> Result<PathBuf> {
    let source = crate::fsutil::resolve_in_root(root, Path::new(mount.trim_start_matches('/')))?;
    if !source.is_dir() {
        bail!("the image has no directory {mount} for its partition");
    }
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    Cmd::new("cp").arg("-a").arg("-l").arg("--no-target-directory").arg(&source).arg(target).run().with_context(|| format!("while copying the image's {mount} for its partition"))?;
    // The mount points directly below: one below those is emptied with them.
    let directly = |m: &&&str| **m != mount && is_below(m, mount) && !mounts.iter().any(|between| *between != mount && is_below(between, mount) && is_below(m, between));
    for below in mounts.iter().filter(directly) {
        let relative = below.strip_prefix(mount).unwrap_or(below).trim_start_matches('/');
        let point = target.join(relative);
        let meta = std::fs::symlink_metadata(&point).with_context(|| format!("the image has no directory {below} to mount its partition on"))?;
        if !meta.is_dir() {
            bail!("the image's {below} is not a directory; its partition cannot be mounted there");
        }
        for entry in std::fs::read_dir(&point)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(entry.path())?;
            } else {
                std::fs::remove_file(entry.path())?;
            }
        }
        crate::stages::seal::set_times(&point, meta.mtime())?;
    }
    Ok(target.to_path_buf())
}

/// Whether mount point `a` lies below `b` ("/" holds everything).
fn is_below(a: &str, b: &str) -> bool {
    b == "/" || a.strip_prefix(b).is_some_and(|rest| rest.starts_with('/'))
}

/// The newest kernel in /boot and its initrd.
pub(crate) fn find_kernel(root: &Path) -> Result<(PathBuf, PathBuf)> {
    let boot = root.join("boot");
    let version = boot_kernel_version(root)?;
    let initrd = boot.join(format!("initrd.img-{version}"));
    if !initrd.exists() {
        bail!("the image has kernel {version} but no initrd; is initramfs-tools installed?");
    }
    Ok((boot.join(format!("vmlinuz-{version}")), initrd))
}

/// The version of the kernel the disk boots: the newest in /boot. The
/// checks of modules and the AppArmor cache are made for this one.
pub(crate) fn boot_kernel_version(root: &Path) -> Result<String> {
    let boot = root.join("boot");
    let mut kernels: Vec<String> = std::fs::read_dir(&boot)
        .with_context(|| format!("while looking for a kernel in {}", boot.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_prefix("vmlinuz-")).map(str::to_string))
        .collect();
    // Version order, so 6.1.0-10 comes after 6.1.0-9.
    kernels.sort_by_key(|a| version_key(a));
    kernels.pop().context("the image has no kernel in /boot; set kernel.package in the profile")
}

/// The kernel command line the unified kernel image carries (and
/// /etc/kernel/cmdline, for entries a machine without Secure Boot makes).
pub(crate) fn boot_cmdline(ctx: &BuildContext) -> String {
    let ids = Identifiers::for_profile(ctx.profile.name.as_str());
    format!("rw rampart.copy-of={} {}", ids.disk_guid, ctx.kernel_cmdline())
}

/// MiB for one more kernel like the image's: its modules, its files in
/// /boot and the initrd made for it, with a quarter more, in 4 MiB steps.
pub(crate) fn kernel_room_mib(root: &Path) -> Result<u64> {
    let version = boot_kernel_version(root)?;
    let mut bytes: u64 = 0;
    for entry in walk(&root.join("usr/lib/modules").join(&version))? {
        bytes += entry.meta.size().div_ceil(4096) * 4096;
    }
    for entry in std::fs::read_dir(root.join("boot"))? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().ends_with(&format!("-{version}")) {
            bytes += entry.metadata()?.len();
        }
    }
    Ok((bytes * 5 / 4 / MIB).div_ceil(4) * 4)
}

/// Splits a version into numeric and text runs, compared piecewise.
fn version_key(version: &str) -> Vec<(u64, String)> {
    let mut parts = Vec::new();
    let mut rest = version;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let (number, after) = rest.split_at(digits);
        let text_len = after.len() - after.trim_start_matches(|c: char| !c.is_ascii_digit()).len();
        let (text, after) = after.split_at(text_len);
        parts.push((number.parse().unwrap_or(0), text.to_string()));
        rest = after;
    }
    parts
}

/// MiB the root file system needs (content + 30 % + 64 MiB of metadata and
/// journal, in 4 MiB steps), and the number of entries. Counted from file
/// sizes, not `du`, so the answer does not depend on the build host's fs.
pub(crate) fn root_needs(root: &Path) -> Result<(u64, u64)> {
    let mut kib: u64 = 0;
    let mut entries: u64 = 0;
    for entry in walk(root)? {
        entries += 1;
        kib += match entry.kind {
            Kind::File => entry.meta.size().div_ceil(4096) * 4,
            _ => 4,
        };
    }
    let mib = (kib * 130 / 100 / 1024 + 64).div_ceil(4) * 4;
    Ok((mib, entries))
}

/// One ext4 file system made from a tree, with fixed identifiers and times.
pub(crate) struct Ext4<'a> {
    pub what: &'a str,
    pub tree: PathBuf,
    pub size_mib: u64,
    pub inodes: u64,
    pub label: &'a str,
    pub uuid: &'a str,
    pub hash_seed: &'a str,
    pub journal: bool,
}

pub(crate) fn make_ext4(work: &Path, image: &Path, fs: &Ext4, epoch: &str) -> Result<()> {
    File::create(image)?.set_len(fs.size_mib * MIB)?;
    Cmd::new("mkfs.ext4")
        .args(["-q", "-F", "-T", "default", "-b", "4096"])
        // metadata_csum_seed: a new UUID (each copy's own) is one superblock
        // write, not a rewrite of every checksum.
        .args(if fs.journal { &["-O", "metadata_csum_seed"][..] } else { &["-O", "^has_journal,metadata_csum_seed"][..] })
        .arg("-N").arg(fs.inodes.to_string())
        .arg("-L").arg(fs.label)
        .arg("-U").arg(fs.uuid)
        .arg("-E").arg(format!("hash_seed={},lazy_itable_init=1,lazy_journal_init=1,nodiscard,root_owner=0:0", fs.hash_seed))
        .arg("-d").arg(&fs.tree)
        .arg(image)
        // mke2fs 1.47.0 ignores SOURCE_DATE_EPOCH but honours this.
        .env("E2FSPROGS_FAKE_TIME", epoch)
        .run()
        .with_context(|| format!("while making the {} file system", fs.what))?;
    // mkfs.ext4 -d copies atime and ctime from the build tree; pin them. It
    // makes the file system's top directory 0755 root's: give it the tree's
    // (a separate /var/tmp is 1777, /var/log/audit 0750 root:adm).
    let top = std::fs::metadata(&fs.tree)?;
    let mut commands = format!("sif / mode 0{:o}\nsif / uid {}\nsif / gid {}\n", top.mode(), top.uid(), top.gid());
    for entry in walk(&fs.tree)? {
        if entry.image_path.contains('"') || entry.image_path.contains('\n') {
            bail!("the image holds a path debugfs cannot address: {:?}", entry.image_path);
        }
        commands.push_str(&format!("sif \"{0}\" atime @{epoch}\nsif \"{0}\" ctime @{epoch}\n", entry.image_path));
    }
    let script = work.join(format!("debugfs-times-{}.cmds", fs.label));
    std::fs::write(&script, commands)?;
    let output = Cmd::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&script)
        .arg(image)
        .env("E2FSPROGS_FAKE_TIME", epoch)
        .run()
        .with_context(|| format!("while pinning the {} file system's timestamps", fs.what))?;
    let complaints: Vec<String> = String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|l| !l.starts_with("debugfs") && !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    if !complaints.is_empty() {
        bail!("debugfs could not pin timestamps: {}", complaints.join("; "));
    }
    Ok(())
}

/// What one EFI system partition boots: systemd-boot, signed, and one
/// signed unified kernel image (the kernel, the initrd and the command line
/// under one signature, so none of them can be changed or swapped).
pub(crate) struct Esp<'a> {
    pub title: &'a str,
    /// The image root the boot loader and the stub come from.
    pub root: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub cmdline: &'a str,
    pub label: &'a str,
    /// FAT volume id, 8 hex digits.
    pub volume_id: &'a str,
    pub keys: &'a crate::secureboot::keys::SiteKeys,
}

/// The unified kernel image on the ESP (a Type #2 boot loader entry).
pub const UKI_PATH: &str = "EFI/Linux/rampart.efi";
/// systemd-stub, from the image's own systemd-boot-efi.
pub(crate) const SYSTEMD_STUB: &str = "usr/lib/systemd/boot/efi/linuxx64.efi.stub";
/// Where systemd-boot finds the signed enrolment files (setup mode only).
pub const ENROLMENT_DIR: &str = "loader/keys/rampart";
/// The menu stays hidden and cannot edit an entry; in setup mode it offers
/// to enrol the site's keys from ENROLMENT_DIR (never on its own).
const LOADER_CONF: &str = "default rampart.efi\ntimeout 0\neditor no\nauto-entries no\nauto-firmware no\nsecure-boot-enroll manual\n";

/// `os-release` of the image with the entry's title as its PRETTY_NAME.
fn os_release(root: &Path, title: &str) -> Result<String> {
    let path = crate::fsutil::resolve_in_root_following(root, Path::new("usr/lib/os-release"))?;
    let text = std::fs::read_to_string(&path).with_context(|| format!("while reading the image's {}", path.display()))?;
    let mut out: String = text.lines().filter(|l| !l.starts_with("PRETTY_NAME=")).map(|l| format!("{l}\n")).collect();
    out.push_str(&format!("PRETTY_NAME=\"{}\"\n", title.replace(['"', '\\', '$', '`'], "")));
    Ok(out)
}

/// Makes the ESP image from files gathered in `staging`.
pub(crate) fn make_esp(staging: &Path, image: &Path, esp: &Esp, epoch: &str) -> Result<()> {
    use crate::secureboot::boot;
    std::fs::create_dir_all(staging)?;
    let seconds: i64 = epoch.parse()?;
    std::fs::write(staging.join("loader.conf"), LOADER_CONF)?;
    let boot_loader = crate::fsutil::resolve_in_root(esp.root, Path::new(SYSTEMD_BOOT))?;
    if !boot_loader.exists() {
        bail!("the image has no /{SYSTEMD_BOOT}: is systemd-boot-efi in its lock?");
    }
    boot::sign(esp.keys, &boot_loader, &staging.join("BOOTX64.EFI"), seconds)?;
    let stub = crate::fsutil::resolve_in_root(esp.root, Path::new(SYSTEMD_STUB))?;
    let uki = boot::Uki { stub: &stub, kernel: esp.kernel, initrd: esp.initrd, cmdline: esp.cmdline, os_release: &os_release(esp.root, esp.title)? };
    let unsigned = staging.join("rampart-unsigned.efi");
    boot::make_uki(&uki, &staging.join("uki-parts"), &unsigned, seconds)?;
    boot::sign(esp.keys, &unsigned, &staging.join("rampart.efi"), seconds)?;
    std::fs::remove_file(&unsigned)?;
    let enrolment = staging.join("enrolment");
    boot::enrolment_files(esp.keys, &enrolment, seconds)?;
    let mut files = vec![
        (staging.join("BOOTX64.EFI"), "::/EFI/BOOT/BOOTX64.EFI".to_string()),
        (staging.join("rampart.efi"), format!("::/{UKI_PATH}")),
        (staging.join("loader.conf"), "::/loader/loader.conf".to_string()),
    ];
    for role in crate::secureboot::keys::ROLES {
        files.push((enrolment.join(format!("{role}.auth")), format!("::/{ENROLMENT_DIR}/{role}.auth")));
    }
    for (file, _) in &files {
        crate::stages::seal::set_times(file, seconds)?;
    }

    File::create(image)?.set_len(ESP_SIZE_MIB * MIB)?;
    // --invariant must come before -i, or the volume id is ignored.
    Cmd::new("mkfs.vfat")
        .args(["--invariant", "-F", "32", "-S", "512", "-s", "1", "-n", esp.label, "-i", esp.volume_id])
        .arg(image)
        .run()
        .context("while making the EFI system partition")?;
    let mtools = |program: &str| {
        Cmd::new(program).env("MTOOLS_SKIP_CHECK", "1").env("SOURCE_DATE_EPOCH", epoch).arg("-i").arg(image)
    };
    mtools("mmd")
        .args(["::/EFI", "::/EFI/BOOT", "::/EFI/Linux", "::/loader", "::/loader/keys", &format!("::/{ENROLMENT_DIR}")])
        .run()
        .context("while making directories on the EFI system partition")?;
    for (file, target) in files {
        mtools("mcopy")
            .arg("-m")
            .arg(&file)
            .arg(&target)
            .run()
            .with_context(|| format!("while copying {} to the EFI system partition", file.display()))?;
    }
    Ok(())
}

/// One GPT partition, placed in whole MiB.
pub(crate) struct GptPartition<'a> {
    pub start_mib: u64,
    pub size_mib: u64,
    pub type_guid: &'a str,
    pub uuid: &'a str,
    pub name: &'a str,
}

/// Creates `raw` at its full (sparse) size with this GPT.
pub(crate) fn write_partition_table(raw: &Path, work: &Path, disk_bytes: u64, disk_guid: &str, partitions: &[GptPartition]) -> Result<()> {
    let file = File::create(raw).with_context(|| format!("while creating {}", raw.display()))?;
    file.set_len(disk_bytes)?;
    drop(file);
    const SECTORS_PER_MIB: u64 = 2048;
    let mut script = format!("label: gpt\nlabel-id: {disk_guid}\nunit: sectors\nfirst-lba: 2048\n");
    for p in partitions {
        script.push_str(&format!(
            "start={}, size={}, type={}, uuid={}, name=\"{}\"\n",
            p.start_mib * SECTORS_PER_MIB,
            p.size_mib * SECTORS_PER_MIB,
            p.type_guid,
            p.uuid,
            p.name
        ));
    }
    let script_path = work.join(format!("{}.sfdisk", raw.file_name().unwrap_or_default().to_string_lossy()));
    std::fs::write(&script_path, &script)?;
    Cmd::new("sh")
        .arg("-c")
        .arg("exec sfdisk -q --no-reread --no-tell-kernel \"$1\" < \"$2\"")
        .arg("sh")
        .arg(raw)
        .arg(&script_path)
        .run()
        .context("while writing the GPT partition table")?;
    Ok(())
}

/// Copies `source` into `target` at `offset`, seeking over all-zero blocks
/// so the target stays sparse.
pub(crate) fn copy_sparse(source: &Path, target: &Path, offset: u64) -> Result<()> {
    let mut input = File::open(source)?;
    let mut output = OpenOptions::new().write(true).open(target)?;
    let mut buffer = vec![0u8; MIB as usize];
    let mut position = offset;
    loop {
        let mut filled = 0;
        while filled < buffer.len() {
            let n = input.read(&mut buffer[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        if buffer[..filled].iter().any(|b| *b != 0) {
            output.seek(SeekFrom::Start(position))?;
            output.write_all(&buffer[..filled])?;
        }
        position += filled as u64;
        if filled < buffer.len() {
            break;
        }
    }
    output.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_sort_numerically() {
        let mut versions = vec!["6.1.0-10-cloud-amd64", "6.1.0-9-cloud-amd64", "6.1.0-56-cloud-amd64"];
        versions.sort_by_key(|a| version_key(a));
        assert_eq!(versions, ["6.1.0-9-cloud-amd64", "6.1.0-10-cloud-amd64", "6.1.0-56-cloud-amd64"]);
    }
}
