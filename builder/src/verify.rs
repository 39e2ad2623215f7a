//! `rampart verify IMAGE --baseline FILE`: an offline tamper check of a disk
//! image (raw or qcow2) against the `<name>.baseline` of its build, without
//! booting or mounting it. qemu-img reads the format (always told it), sfdisk
//! the partition table, and `ext4` the root file system and the separate
//! partitions (by their GPT names, at their mount points) in place. The image
//! is hostile: nothing it names is ever opened or written on the host; the
//! only file verify writes is a qcow2's raw copy in its own work directory.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::baseline::{self, Record};
use crate::ext4::{self, FileSystem};
use crate::process::Cmd;
use crate::layout::{DataIdentifiers, DATA_PARTITIONS};
use crate::tree::Kind;

/// Entries a file system makes on its own; no build puts them there.
const FILE_SYSTEM_ENTRIES: &[&str] = &["/lost+found"];

/// How the image differs from its baseline.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Differences {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Path and what changed ("mode 0755 -> 4755", "content", ...).
    pub changed: Vec<(String, Vec<String>)>,
}

impl Differences {
    /// The differences as `rampart verify --json` prints them.
    pub fn to_json(&self, image: &Path, baseline: &Path) -> serde_json::Value {
        serde_json::json!({
            "image": image,
            "baseline": baseline,
            "matches": self.is_empty(),
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed.iter().map(|(path, what)| serde_json::json!({ "path": path, "what": what })).collect::<Vec<_>>(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Compares the records of an image with those of its baseline.
pub fn compare(expected: &BTreeMap<String, Record>, found: &BTreeMap<String, Record>) -> Differences {
    let mut differences = Differences::default();
    for (path, record) in found {
        match expected.get(path) {
            None if !FILE_SYSTEM_ENTRIES.contains(&path.as_str()) => differences.added.push(path.clone()),
            None => {}
            Some(wanted) => {
                let mut what = Vec::new();
                if wanted.kind != record.kind {
                    what.push(format!("type {} -> {}", wanted.kind, record.kind));
                }
                if wanted.mode != record.mode {
                    what.push(format!("mode {:04o} -> {:04o}", wanted.mode, record.mode));
                }
                if (wanted.uid, wanted.gid) != (record.uid, record.gid) {
                    what.push(format!("owner {}:{} -> {}:{}", wanted.uid, wanted.gid, record.uid, record.gid));
                }
                if wanted.size != record.size {
                    what.push(format!("size {} -> {}", wanted.size, record.size));
                }
                if wanted.content != record.content && wanted.kind == record.kind {
                    what.push(match record.kind.as_str() {
                        "l" => format!("target {} -> {}", wanted.content, record.content),
                        "p" => format!("{} -> {}", wanted.content, record.content),
                        _ => format!("sha256 {} -> {}", short(&wanted.content), short(&record.content)),
                    });
                }
                what.extend(xattr_changes(&wanted.xattrs, &record.xattrs));
                if !what.is_empty() {
                    differences.changed.push((path.clone(), what));
                }
            }
        }
    }
    differences.removed = expected.keys().filter(|p| !found.contains_key(*p)).cloned().collect();
    differences
}

/// "xattr security.capability added", "... removed", "... 01.. -> 02..".
fn xattr_changes(wanted: &BTreeMap<String, String>, found: &BTreeMap<String, String>) -> Vec<String> {
    let mut what = Vec::new();
    for (name, value) in found {
        match wanted.get(name) {
            None => what.push(format!("xattr {name} added")),
            Some(old) if old != value => what.push(format!("xattr {name} {} -> {}", shown_value(old), shown_value(value))),
            Some(_) => {}
        }
    }
    what.extend(wanted.keys().filter(|name| !found.contains_key(*name)).map(|name| format!("xattr {name} removed")));
    what
}

/// A hex value, shortened when long.
fn shown_value(hex: &str) -> &str {
    if hex.len() > 64 {
        short(hex)
    } else {
        hex
    }
}

fn short(digest: &str) -> &str {
    &digest[..12.min(digest.len())]
}

pub fn verify(image: &Path, baseline_file: &Path) -> Result<Differences> {
    let baseline::Baseline { name, version, records: expected } = baseline::read(baseline_file)?;
    let work = crate::fsutil::owned_tempdir(&std::env::temp_dir(), "rampart-verify-")?;
    let raw = as_raw(image, work.path())?;
    let table = partitions(image, &raw)?;
    let file = File::open(&raw).with_context(|| format!("while opening {}", raw.display()))?;
    let ids = crate::layout::Identifiers::for_profile(&name);
    // Each installed disk has UUIDs of its own; the hash seeds are the image's.
    let read = |partition: &Partition, what: &str, seed: &str| -> Result<BTreeMap<String, Record>> {
        let found_seed = FileSystem::open(&file, partition.offset, partition.length)
            .with_context(|| format!("while reading the {what} file system of {}", image.display()))?
            .hash_seed();
        if found_seed != seed {
            bail!(
                "{} is the baseline of image {name}, but {} is another image (its {what} file system is not {name}'s)",
                baseline_file.display(),
                image.display()
            );
        }
        read_root(&file, partition.offset, partition.length).with_context(|| format!("while reading the {what} file system of {}", image.display()))
    };
    let one_named = |wanted: &str| -> Result<Option<&Partition>> {
        let named: Vec<&Partition> = table.iter().filter(|p| p.name == wanted).collect();
        match named.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(*one)),
            _ => bail!("{}: {} partitions named {wanted}; a rampart disk has at most one", image.display(), named.len()),
        }
    };
    let roots: Vec<&Partition> = table.iter().filter(|p| p.type_guid.eq_ignore_ascii_case(crate::layout::TYPE_ROOT_X86_64)).collect();
    let root = match roots.as_slice() {
        [root] => *root,
        [] => bail!("{}: no Linux root partition; not a rampart disk image", image.display()),
        _ => bail!("{}: {} Linux root partitions; a rampart disk has one", image.display(), roots.len()),
    };
    let mut found = read(root, "root", &ids.root_hash_seed)?;
    let mut extra = Differences::default();
    // The separate partitions (image.partitions), found by their GPT names,
    // parents first, each read in place at its mount point; the read-only
    // configuration partition too (v3 baselines list its files).
    let mut mounted: Vec<(&str, &str, String)> = Vec::new();
    if version >= 3 {
        mounted.push((crate::layout::CONFIG_PARTITION, crate::layout::CONFIG_MOUNT, ids.config_hash_seed.clone()));
    }
    for data in DATA_PARTITIONS {
        mounted.push((data.name, data.mount, DataIdentifiers::for_partition(&name, data).hash_seed));
    }
    mounted.sort_by_key(|(_, mount, _)| mount.len());
    for (partition_name, mount, seed) in mounted {
        let Some(partition) = one_named(partition_name)? else {
            if partition_name == crate::layout::CONFIG_PARTITION {
                extra.removed.push(format!("partition {partition_name} ({mount})"));
            }
            continue;
        };
        let records = read(partition, &format!("{partition_name} ({mount})"), &seed)?;
        graft(&mut found, records, mount, &mut extra);
    }
    if version >= 3 {
        match one_named(crate::layout::ESP_PARTITION)? {
            Some(esp) => found.extend(esp_records(&raw, esp.offset).with_context(|| format!("while reading the EFI system partition of {}", image.display()))?),
            None => extra.removed.push(format!("partition {} (the EFI system partition)", crate::layout::ESP_PARTITION)),
        }
        found.extend(table_records(&table));
    } else {
        extra.added.extend(foreign_partitions(&table));
        crate::ui::step(&format!(
            "{} is a v{version} baseline: the EFI system partition, the configuration partition and the partition table are not covered; rebuild the image for a v{} baseline",
            baseline_file.display(),
            baseline::VERSION
        ));
    }
    let mut differences = compare(&expected, &found);
    differences.added.extend(extra.added);
    differences.removed.extend(extra.removed);
    differences.changed.extend(extra.changed);
    differences.added.sort();
    differences.removed.sort();
    differences.changed.sort();
    Ok(differences)
}

/// Where the EFI system partition's records live in a baseline.
pub const ESP_PREFIX: &str = "[esp]";
/// Where the partition table's records live in a baseline.
pub const GPT_PREFIX: &str = "[gpt]";

/// The records of the FAT EFI system partition at `offset` of `raw`: every
/// directory and file (hidden ones too), listed by mtools and each file's
/// bytes streamed through a pipe for its digest; nothing is written on the
/// host. FAT has no owners or modes: those columns are 0.
pub fn esp_records(raw: &Path, offset: u64) -> Result<BTreeMap<String, Record>> {
    let image = format!("{}@@{offset}", raw.display());
    let mtools = |program: &str| Cmd::new(program).env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(&image);
    let listing = mtools("mdir").args(["-/", "-a", "-b", "::/"]).run().context("mdir could not list it")?;
    let mut records = BTreeMap::new();
    let mut add = |path: String, kind: &str, size: u64, content: String| {
        let record = Record { path: path.clone(), kind: kind.to_string(), mode: 0, uid: 0, gid: 0, size, content, xattrs: BTreeMap::new() };
        records.insert(path, record)
    };
    add(format!("{ESP_PREFIX}/"), "d", 0, "-".to_string());
    for line in String::from_utf8_lossy(&listing.stdout).lines() {
        let Some(path) = line.strip_prefix("::") else { continue };
        let shown = format!("{ESP_PREFIX}{}", baseline::escape(path.trim_end_matches('/').as_bytes()));
        let fresh = if path.ends_with('/') {
            add(shown.clone(), "d", 0, "-".to_string())
        } else {
            let bytes = mtools("mtype").arg(format!("::{path}")).run().with_context(|| format!("mtype could not read {shown}"))?.stdout;
            use sha2::Digest;
            add(shown.clone(), "f", bytes.len() as u64, hex::encode(sha2::Sha256::digest(&bytes)))
        };
        if fresh.is_some() {
            bail!("{shown} is listed twice on the EFI system partition");
        }
    }
    Ok(records)
}

/// The partition table's records: each partition's type, name and place.
/// The last partition grows on first boot: its size is not compared.
fn table_records(table: &[Partition]) -> BTreeMap<String, Record> {
    let last = table.len().saturating_sub(1);
    table
        .iter()
        .enumerate()
        .map(|(index, p)| {
            let path = format!("{GPT_PREFIX}/{}", index + 1);
            let size = if index == last { 0 } else { p.length };
            let content = format!("type={} name={} start={}", p.type_guid.to_ascii_lowercase(), baseline::escape(p.name.as_bytes()), p.offset);
            (path.clone(), Record { path, kind: "p".to_string(), mode: 0, uid: 0, gid: 0, size, content, xattrs: BTreeMap::new() })
        })
        .collect()
}

/// The partition table and EFI system partition records of a disk `raw`
/// rampart made, for its baseline.
pub fn disk_records(raw: &Path) -> Result<Vec<Record>> {
    let table = partitions(raw, raw)?;
    let esp = table.iter().find(|p| p.name == crate::layout::ESP_PARTITION).context("the disk has no EFI system partition")?;
    let mut records: Vec<Record> = esp_records(raw, esp.offset)?.into_values().collect();
    records.extend(table_records(&table).into_values());
    Ok(records)
}

/// The partitions a rampart image never has, named. They change no file,
/// yet a booted system may mount one (systemd's gpt-auto generator mounts
/// a /srv-type partition it finds on the boot disk).
fn foreign_partitions(table: &[Partition]) -> Vec<String> {
    let known = |name: &str| [crate::layout::ESP_PARTITION, crate::layout::CONFIG_PARTITION, crate::layout::ROOT_PARTITION].contains(&name) || DATA_PARTITIONS.iter().any(|d| d.name == name);
    table
        .iter()
        .enumerate()
        .filter(|(_, p)| !known(&p.name))
        .map(|(number, p)| format!("partition {} {:?} of type {} (not one a rampart image has)", number + 1, p.name, p.type_guid))
        .collect()
}

/// Puts a partition's records at its mount point. What the file systems
/// read so far hold below the mount point is hidden by the mount on a
/// running system, so it is reported, never compared; the partition's top
/// directory must match the mount point's record.
fn graft(found: &mut BTreeMap<String, Record>, records: BTreeMap<String, Record>, mount: &str, extra: &mut Differences) {
    let below = format!("{mount}/");
    let hidden: Vec<String> = found.keys().filter(|path| path.starts_with(&below)).cloned().collect();
    for path in hidden {
        found.remove(&path);
        extra.added.push(format!("{path} (on the file system below, hidden under the {mount} partition)"));
    }
    for (path, mut record) in records {
        if path == "/" {
            if let Some(point) = found.get(mount) {
                let one = |r: &Record| BTreeMap::from([(mount.to_string(), r.clone())]);
                let mut top = record.clone();
                top.path = mount.to_string();
                for (_, what) in compare(&one(point), &one(&top)).changed {
                    extra.changed.push((format!("{mount} (the top directory of its partition)"), what));
                }
            }
            continue;
        }
        // Every ext4 file system makes its own lost+found; what is in it is not exempt.
        if path == "/lost+found" && record.kind == "d" {
            continue;
        }
        let grafted = format!("{mount}{path}");
        record.path = grafted.clone();
        found.insert(grafted, record);
    }
}

/// The records of an ext4 file system, in the baseline's terms.
pub fn read_root(file: &File, offset: u64, length: u64) -> Result<BTreeMap<String, Record>> {
    let fs = FileSystem::open(file, offset, length)?;
    let mut digests = ext4::Digests::default();
    let mut found = BTreeMap::new();
    for entry in fs.entries()? {
        let content = match entry.kind {
            Kind::File => hex::encode(digests.sha256(&fs, &entry)?),
            Kind::Symlink => baseline::escape(&entry.target),
            Kind::CharDevice | Kind::BlockDevice => format!("{},{}", entry.device.0, entry.device.1),
            _ => "-".to_string(),
        };
        let xattrs = entry.xattrs.iter().map(|(name, value)| (baseline::escape_xattr_name(name), hex::encode(value))).collect();
        let record = Record {
            path: baseline::escape(&entry.path),
            kind: entry.kind.letter().to_string(),
            mode: entry.mode,
            uid: entry.uid,
            gid: entry.gid,
            size: entry.size,
            content,
            xattrs,
        };
        found.insert(record.path.clone(), record);
    }
    Ok(found)
}

/// qcow2 images start with these bytes; anything else is read as raw.
const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

/// The image as a raw file: itself, or a raw copy of a qcow2 in `work`.
/// qemu-img is always told the format, so a raw file is never probed, and a
/// qcow2 that names other files (a backing file, an external data file) is
/// refused before qemu-img opens them.
/// The largest qcow2 verify converts to a raw copy in its work directory.
const MAX_QCOW2_BYTES: u64 = 64 << 30;

fn as_raw(image: &Path, work: &Path) -> Result<PathBuf> {
    if !image.is_file() {
        bail!("{}: no such image file", image.display());
    }
    let mut magic = [0u8; 4];
    let n = File::open(image)
        .and_then(|mut f| f.read(&mut magic))
        .with_context(|| format!("while reading {}", image.display()))?;
    let format = if n == 4 && &magic == QCOW2_MAGIC { "qcow2" } else { "raw" };
    if format == "qcow2" {
        refuse_external_files(image)?;
    }
    let info = Cmd::new("qemu-img").args(["info", "--output=json", "-f", format]).arg(image).run_unchecked()?;
    if !info.status.success() {
        bail!("{}: not a disk image (qemu-img cannot read it as {format}): {}", image.display(), String::from_utf8_lossy(&info.stderr).trim());
    }
    let json: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap_or_default();
    if format == "raw" {
        return Ok(image.to_path_buf());
    }
    for (field, what) in [("backing-filename", "a backing file"), ("full-backing-filename", "a backing file")] {
        if let Some(named) = json[field].as_str() {
            bail!("{}: a qcow2 with {what} ({named}); verify reads only self-contained images", image.display());
        }
    }
    if let Some(named) = json["format-specific"]["data"]["data-file"].as_str() {
        bail!("{}: a qcow2 with an external data file ({named}); verify reads only self-contained images", image.display());
    }
    // A few KiB of qcow2 can claim terabytes of data (every cluster mapped to
    // one): the raw copy is made only of a size a rampart image can have.
    let virtual_size = json["virtual-size"].as_u64().with_context(|| format!("{}: qemu-img gives no virtual size", image.display()))?;
    if virtual_size > MAX_QCOW2_BYTES {
        bail!(
            "{}: a qcow2 of {} GiB; verify converts images of up to {} GiB (a rampart image is as large as its files)",
            image.display(),
            virtual_size >> 30,
            MAX_QCOW2_BYTES >> 30
        );
    }
    let raw = work.join("disk.raw");
    Cmd::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(image)
        .arg(&raw)
        .run()
        .with_context(|| format!("while converting {} to raw", image.display()))?;
    Ok(raw)
}

/// Refuses a qcow2 whose header names a backing file or an external data
/// file, before qemu-img is run on it at all (qemu-img would open them).
fn refuse_external_files(image: &Path) -> Result<()> {
    let file = File::open(image).with_context(|| format!("while opening {}", image.display()))?;
    let mut header = [0u8; 104];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut header, 0).with_context(|| format!("{}: a truncated qcow2 header", image.display()))?;
    let be64 = |at: usize| u64::from_be_bytes(header[at..at + 8].try_into().unwrap_or_default());
    let version = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    let backing_offset = be64(8);
    if backing_offset != 0 {
        let length = u32::from_be_bytes([header[16], header[17], header[18], header[19]]).min(1023) as usize;
        let mut name = vec![0u8; length];
        let named = std::os::unix::fs::FileExt::read_exact_at(&file, &mut name, backing_offset).map(|_| String::from_utf8_lossy(&name).into_owned());
        bail!(
            "{}: a qcow2 with a backing file ({}); verify reads only self-contained images",
            image.display(),
            named.unwrap_or_else(|_| "unreadable name".into())
        );
    }
    // Incompatible feature bit 2: the guest data lives in an external file.
    if version >= 3 && be64(72) & 0x4 != 0 {
        let named = data_file_name(&file, u32::from_be_bytes([header[100], header[101], header[102], header[103]]) as u64);
        bail!(
            "{}: a qcow2 with an external data file ({}); verify reads only self-contained images",
            image.display(),
            named.unwrap_or_else(|| "name not recorded".into())
        );
    }
    Ok(())
}

/// The external data file's name from the qcow2 header extensions (type
/// "DATA"), which follow the header in its first 64 KiB.
fn data_file_name(file: &File, header_length: u64) -> Option<String> {
    let mut area = vec![0u8; 65536];
    let n = std::os::unix::fs::FileExt::read_at(file, &mut area, header_length.min(65536)).ok()?;
    let area = &area[..n];
    let mut offset = 0;
    while offset + 8 <= area.len() {
        let kind = u32::from_be_bytes(area[offset..offset + 4].try_into().ok()?);
        let length = u32::from_be_bytes(area[offset + 4..offset + 8].try_into().ok()?) as usize;
        let data = area.get(offset + 8..offset + 8 + length)?;
        match kind {
            0 => return None,
            0x4441_5441 => return Some(String::from_utf8_lossy(data).into_owned()),
            _ => offset += 8 + length.div_ceil(8) * 8,
        }
    }
    None
}

/// One entry of the image's partition table, bounds checked.
struct Partition {
    name: String,
    type_guid: String,
    offset: u64,
    length: u64,
}

/// The partition table as sfdisk reads it; every partition's bounds are
/// checked against the disk before any is read.
fn partitions(image: &Path, raw: &Path) -> Result<Vec<Partition>> {
    let output = Cmd::new("sfdisk").arg("--json").arg(raw).run_unchecked()?;
    let table: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    let Some(entries) = table["partitiontable"]["partitions"].as_array() else {
        bail!("{}: no partition table; not a rampart disk image", image.display());
    };
    let sector = table["partitiontable"]["sectorsize"].as_u64().unwrap_or(512);
    let file_length = std::fs::metadata(raw)?.len();
    let mut found = Vec::new();
    for (number, entry) in entries.iter().enumerate() {
        let which = format!("partition {}", number + 1);
        let start = entry["start"].as_u64().with_context(|| format!("{}: {which} has no start", image.display()))?;
        let size = entry["size"].as_u64().with_context(|| format!("{}: {which} has no size", image.display()))?;
        let (Some(offset), Some(length)) = (start.checked_mul(sector), size.checked_mul(sector)) else {
            bail!("{}: the bounds of {which} overflow", image.display());
        };
        if offset.checked_add(length).is_none_or(|end| end > file_length) {
            bail!("{}: {which} reaches past the end of the disk", image.display());
        }
        found.push(Partition {
            name: entry["name"].as_str().unwrap_or_default().to_string(),
            type_guid: entry["type"].as_str().unwrap_or_default().to_string(),
            offset,
            length,
        });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_as_json_name_each_path_and_what_changed() {
        let differences = Differences { added: vec!["/usr/bin/evil".into()], removed: Vec::new(), changed: vec![("/usr/bin/passwd".into(), vec!["mode 4755 -> 0755".into()])] };
        let json = differences.to_json(Path::new("m.raw"), Path::new("m.baseline"));
        assert_eq!(json["matches"], false);
        assert_eq!(json["added"], serde_json::json!(["/usr/bin/evil"]));
        assert_eq!(json["changed"], serde_json::json!([{ "path": "/usr/bin/passwd", "what": ["mode 4755 -> 0755"] }]));
        assert_eq!(Differences { added: Vec::new(), removed: Vec::new(), changed: Vec::new() }.to_json(Path::new("a"), Path::new("b"))["matches"], true);
    }

    fn record(path: &str, mode: u32, content: &str) -> (String, Record) {
        (path.to_string(), Record { path: path.into(), kind: "f".into(), mode, uid: 0, gid: 0, size: 3, content: content.into(), xattrs: BTreeMap::new() })
    }

    #[test]
    fn partitions_a_rampart_image_never_has_are_named() {
        let partition = |name: &str| Partition { name: name.into(), type_guid: "T".into(), offset: 0, length: 0 };
        let table: Vec<Partition> = ["esp", "rampart-config", "root", "home", "var-log-audit", "var", "srv"].into_iter().map(partition).collect();
        assert_eq!(foreign_partitions(&table), ["partition 7 \"srv\" of type T (not one a rampart image has)"]);
    }

    #[test]
    fn a_partition_is_read_at_its_mount_point_and_what_its_mount_hides_is_reported() {
        let dir = |path: &str, mode: u32| (path.to_string(), Record { path: path.into(), kind: "d".into(), mode, uid: 0, gid: 0, size: 0, content: "-".into(), xattrs: BTreeMap::new() });
        let mut found: BTreeMap<_, _> = [dir("/", 0o755), dir("/var", 0o755), record("/var/hidden", 0o644, "aa")].into();
        let partition: BTreeMap<_, _> = [dir("/", 0o700), dir("/lost+found", 0o700), record("/lost+found/#12", 0o644, "bb"), record("/lib/x", 0o644, "cc")].into();
        let mut extra = Differences::default();
        graft(&mut found, partition, "/var", &mut extra);
        // The partition's own lost+found is not compared; what is in it is.
        assert_eq!(found.keys().collect::<Vec<_>>(), ["/", "/var", "/var/lib/x", "/var/lost+found/#12"]);
        assert_eq!(extra.added, ["/var/hidden (on the file system below, hidden under the /var partition)"]);
        assert_eq!(extra.changed, [("/var (the top directory of its partition)".to_string(), vec!["mode 0755 -> 0700".to_string()])]);
    }

    #[test]
    fn the_efi_system_partition_is_read_whole_hidden_files_too() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("esp.img");
        std::fs::File::create(&image).unwrap().set_len(40 << 20).unwrap();
        Cmd::new("mkfs.vfat").args(["-F", "32"]).arg(&image).run().unwrap();
        let local = dir.path().join("payload");
        std::fs::write(&local, b"signed bytes").unwrap();
        let mtools = |program: &str| Cmd::new(program).env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(&image);
        mtools("mmd").args(["::/EFI", "::/EFI/Linux"]).run().unwrap();
        mtools("mcopy").arg(&local).arg("::/EFI/Linux/rampart.efi").run().unwrap();
        mtools("mcopy").arg(&local).arg("::/EFI/stowaway.efi").run().unwrap();
        mtools("mattrib").args(["+h", "+s", "::/EFI/stowaway.efi"]).run().unwrap();
        let records = esp_records(&image, 0).unwrap();
        assert_eq!(records.keys().collect::<Vec<_>>(), ["[esp]/", "[esp]/EFI", "[esp]/EFI/Linux", "[esp]/EFI/Linux/rampart.efi", "[esp]/EFI/stowaway.efi"]);
        use sha2::Digest;
        let uki = &records["[esp]/EFI/Linux/rampart.efi"];
        assert_eq!((uki.kind.as_str(), uki.size, uki.content.clone()), ("f", 12, hex::encode(sha2::Sha256::digest(b"signed bytes"))));
    }

    #[test]
    fn the_partition_table_is_recorded_but_the_last_partitions_size() {
        let table = [
            Partition { name: "esp".into(), type_guid: "C12A7328-F81F-11D2-BA4B-00A0C93EC93B".into(), offset: 1 << 20, length: 128 << 20 },
            Partition { name: "root".into(), type_guid: "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709".into(), offset: 129 << 20, length: 900 << 20 },
        ];
        let records = table_records(&table);
        assert_eq!(records["[gpt]/1"].content, "type=c12a7328-f81f-11d2-ba4b-00a0c93ec93b name=esp start=1048576");
        assert_eq!((records["[gpt]/1"].size, records["[gpt]/2"].size), (128 << 20, 0), "the last partition grows on first boot");
    }

    #[test]
    fn differences_name_what_changed() {
        let expected: BTreeMap<_, _> = [record("/usr/bin/passwd", 0o4755, "aa"), record("/etc/motd", 0o644, "bb")].into();
        let found: BTreeMap<_, _> =
            [record("/usr/bin/passwd", 0o755, "cc"), record("/usr/bin/evil", 0o755, "dd"), record("/lost+found", 0o700, "-")].into();
        let differences = compare(&expected, &found);
        assert_eq!(differences.added, vec!["/usr/bin/evil"]);
        assert_eq!(differences.removed, vec!["/etc/motd"]);
        assert_eq!(differences.changed, vec![("/usr/bin/passwd".to_string(), vec!["mode 4755 -> 0755".to_string(), "sha256 aa -> cc".to_string()])]);
        assert!(compare(&expected, &expected).is_empty());
    }
}
