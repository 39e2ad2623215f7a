//! `rampart verify IMAGE --baseline FILE`: an offline tamper check of a disk
//! image (raw or qcow2) against the `<name>.baseline` of its build, without
//! booting or mounting it. qemu-img reads the format (always told it), sfdisk
//! the partition table, and `ext4` the root file system in place. The image
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
use crate::tree::Kind;
/// The GPT type of a Linux x86-64 root partition (Discoverable Partitions).
const ROOT_TYPE: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

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
    let (name, expected) = baseline::read(baseline_file)?;
    let work = crate::fsutil::owned_tempdir(&std::env::temp_dir(), "rampart-verify-")?;
    let raw = as_raw(image, work.path())?;
    let (offset, length) = root_partition(image, &raw)?;
    let file = File::open(&raw).with_context(|| format!("while opening {}", raw.display()))?;
    // Each installed disk has UUIDs of its own; the hash seed is the image's.
    let seed = FileSystem::open(&file, offset, length).with_context(|| format!("while reading the root file system of {}", image.display()))?.hash_seed();
    if seed != crate::layout::Identifiers::for_profile(&name).root_hash_seed {
        bail!(
            "{} is the baseline of image {name}, but {} is another image (its root file system is not {name}'s)",
            baseline_file.display(),
            image.display()
        );
    }
    let found = read_root(&file, offset, length).with_context(|| format!("while reading the root file system of {}", image.display()))?;
    Ok(compare(&expected, &found))
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

/// The byte offset and length of the root partition: the one x86-64 root
/// partition, found by its type (its UUID is each installed disk's own).
fn root_partition(image: &Path, raw: &Path) -> Result<(u64, u64)> {
    let output = Cmd::new("sfdisk").arg("--json").arg(raw).run_unchecked()?;
    let table: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    let Some(partitions) = table["partitiontable"]["partitions"].as_array() else {
        bail!("{}: no partition table; not a rampart disk image", image.display());
    };
    let sector = table["partitiontable"]["sectorsize"].as_u64().unwrap_or(512);
    let roots: Vec<_> = partitions.iter().filter(|p| p["type"].as_str().is_some_and(|t| t.eq_ignore_ascii_case(ROOT_TYPE))).collect();
    let root = match roots.as_slice() {
        [root] => *root,
        [] => bail!("{}: no Linux root partition; not a rampart disk image", image.display()),
        _ => bail!("{}: {} Linux root partitions; a rampart disk has one", image.display(), roots.len()),
    };
    let start = root["start"].as_u64().context("the root partition has no start")?;
    let size = root["size"].as_u64().context("the root partition has no size")?;
    let (Some(offset), Some(length)) = (start.checked_mul(sector), size.checked_mul(sector)) else {
        bail!("{}: the root partition's bounds overflow", image.display());
    };
    let file_length = std::fs::metadata(raw)?.len();
    if offset.checked_add(length).is_none_or(|end| end > file_length) {
        bail!("{}: the root partition reaches past the end of the disk", image.display());
    }
    Ok((offset, length))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(path: &str, mode: u32, content: &str) -> (String, Record) {
        (path.to_string(), Record { path: path.into(), kind: "f".into(), mode, uid: 0, gid: 0, size: 3, content: content.into(), xattrs: BTreeMap::new() })
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
