//! `rampart verify IMAGE --baseline FILE`: an offline tamper check of a disk
//! image (raw or qcow2) against the `<name>.baseline` of its build, without
//! booting or mounting it. qemu-img reads the format, sfdisk the partition
//! table, debugfs the root file system (contents by rdump, and modes and
//! owners by `ls -p`, because rdump's chown clears set-id bits).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::baseline::{self, Record};
use crate::process::Cmd;

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
                if !what.is_empty() {
                    differences.changed.push((path.clone(), what));
                }
            }
        }
    }
    differences.removed = expected.keys().filter(|p| !found.contains_key(*p)).cloned().collect();
    differences
}

fn short(digest: &str) -> &str {
    &digest[..12.min(digest.len())]
}

pub fn verify(image: &Path, baseline_file: &Path) -> Result<Differences> {
    let (name, expected) = baseline::read(baseline_file)?;
    let work = crate::fsutil::owned_tempdir(&std::env::temp_dir(), "rampart-verify-")?;
    let raw = as_raw(image, work.path())?;
    let offset = root_partition_offset(image, &raw, &name, baseline_file)?;
    let device = format!("{}?offset={offset}", raw.display());
    let dump = work.path().join("root");
    std::fs::create_dir(&dump)?;
    Cmd::new("debugfs")
        .arg("-R")
        .arg(format!("rdump / {}", dump.display()))
        .arg(&device)
        .run()
        .with_context(|| format!("while reading the root file system of {}", image.display()))?;
    let mut found: BTreeMap<String, Record> = baseline::compute(&dump)?.into_iter().map(|r| (r.path.clone(), r)).collect();
    let directories: Vec<String> = found.values().filter(|r| r.kind == "d").map(|r| r.path.clone()).collect();
    let mut devices = Vec::new();
    for (path, InodeAttributes { mode, uid, gid }) in inode_attributes(&device, &directories, work.path())? {
        if let Some(record) = found.get_mut(&path) {
            record.mode = mode & 0o7777;
            record.uid = uid;
            record.gid = gid;
            continue;
        }
        // rdump skips special files: they come from the listing alone.
        let kind = match mode & 0o170000 {
            0o020000 => "c",
            0o060000 => "b",
            0o010000 => "p",
            0o140000 => "s",
            _ => continue,
        };
        if kind == "c" || kind == "b" {
            devices.push(path.clone());
        }
        let record = Record { path: path.clone(), kind: kind.into(), mode: mode & 0o7777, uid, gid, size: 0, content: "-".into() };
        found.insert(path, record);
    }
    for (path, numbers) in device_numbers(&device, &devices, work.path())? {
        if let Some(record) = found.get_mut(&path) {
            record.content = numbers;
        }
    }
    Ok(compare(&expected, &found))
}

/// The image as a raw file: itself, or a raw copy of a qcow2.
fn as_raw(image: &Path, work: &Path) -> Result<PathBuf> {
    if !image.is_file() {
        bail!("{}: no such image file", image.display());
    }
    let info = Cmd::new("qemu-img").args(["info", "--output=json"]).arg(image).run_unchecked()?;
    let json: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap_or_default();
    match json["format"].as_str() {
        Some("raw") => Ok(image.to_path_buf()),
        Some("qcow2") => {
            let raw = work.join("disk.raw");
            Cmd::new("qemu-img").args(["convert", "-O", "raw"]).arg(image).arg(&raw).run()?;
            Ok(raw)
        }
        Some(other) => bail!("{}: a {other} image; rampart verifies raw and qcow2 disk images", image.display()),
        None => bail!("{}: not a disk image (qemu-img cannot read it)", image.display()),
    }
}

/// The byte offset of the root partition, after checking that the disk is
/// the one the baseline describes (its partition UUIDs derive from the name).
fn root_partition_offset(image: &Path, raw: &Path, name: &str, baseline_file: &Path) -> Result<u64> {
    let output = Cmd::new("sfdisk").arg("--json").arg(raw).run_unchecked()?;
    let table: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    let Some(partitions) = table["partitiontable"]["partitions"].as_array() else {
        bail!("{}: no partition table; not a rampart disk image", image.display());
    };
    let sector = table["partitiontable"]["sectorsize"].as_u64().unwrap_or(512);
    let Some(root) = partitions.iter().find(|p| p["type"].as_str().is_some_and(|t| t.eq_ignore_ascii_case(ROOT_TYPE))) else {
        bail!("{}: no Linux root partition; not a rampart disk image", image.display());
    };
    let wanted = crate::layout::Identifiers::for_profile(name).root_partuuid;
    if !root["uuid"].as_str().is_some_and(|u| u.eq_ignore_ascii_case(&wanted)) {
        bail!(
            "{} is the baseline of image {name}, but {} is another image (its root partition is not {name}'s)",
            baseline_file.display(),
            image.display()
        );
    }
    Ok(root["start"].as_u64().context("the root partition has no start")? * sector)
}

/// Runs `command "<path>"` in debugfs for each path (one script, one
/// process) and returns each path's output lines. debugfs echoes every
/// command as "debugfs: <command>", which splits the output.
fn debugfs_each(device: &str, command: &str, paths: &[String], work: &Path) -> Result<Vec<(String, Vec<String>)>> {
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let script = work.join(format!("{command}.debugfs"));
    let text: String = paths.iter().map(|p| format!("{command} \"{}\"\n", p.replace('"', "\\\""))).collect();
    std::fs::write(&script, text)?;
    let output = Cmd::new("debugfs").arg("-f").arg(&script).arg(device).run()?;
    let echo = format!("debugfs: {command} ");
    let mut results: Vec<(String, Vec<String>)> = Vec::new();
    let mut next_path = paths.iter();
    for line in output.stdout_text().lines() {
        if line.starts_with(&echo) {
            if let Some(path) = next_path.next() {
                results.push((path.clone(), Vec::new()));
            }
        } else if let Some((_, lines)) = results.last_mut() {
            lines.push(line.to_string());
        }
    }
    Ok(results)
}

/// An entry's mode (type bits included), uid and gid, as its inode has them.
struct InodeAttributes {
    mode: u32,
    uid: u32,
    gid: u32,
}

/// Mode, uid and gid of every entry below `directories`, as the file system
/// records them (debugfs `ls -p`: /inode/mode/uid/gid/name/size/).
fn inode_attributes(device: &str, directories: &[String], work: &Path) -> Result<Vec<(String, InodeAttributes)>> {
    let mut attributes = Vec::new();
    for (dir, lines) in debugfs_each(device, "ls -p", directories, work)? {
        for line in lines {
            let Some(fields) = line.strip_prefix('/').and_then(|l| l.strip_suffix('/')) else { continue };
            let fields: Vec<&str> = fields.split('/').collect();
            if fields.len() < 6 {
                continue;
            }
            let entry = fields[4..fields.len() - 1].join("/");
            let path = match entry.as_str() {
                "." if dir == "/" => "/".to_string(),
                "." | ".." => continue,
                _ if dir == "/" => format!("/{entry}"),
                _ => format!("{dir}/{entry}"),
            };
            let (Ok(mode), Ok(uid), Ok(gid)) = (u32::from_str_radix(fields[1], 8), fields[2].parse(), fields[3].parse()) else { continue };
            attributes.push((path, InodeAttributes { mode, uid, gid }));
        }
    }
    Ok(attributes)
}

/// "major,minor" of each device node (debugfs `stat`: "Device major/minor
/// number: 01:03 (hex 01:03)").
fn device_numbers(device: &str, paths: &[String], work: &Path) -> Result<Vec<(String, String)>> {
    let mut numbers = Vec::new();
    for (path, lines) in debugfs_each(device, "stat", paths, work)? {
        let pair = lines.iter().find_map(|l| l.trim().strip_prefix("Device major/minor number: ")?.split_whitespace().next().map(String::from));
        let parsed = pair.as_deref().and_then(|p| p.split_once(':')).and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)));
        if let Some((major, minor)) = parsed {
            numbers.push((path, format!("{major},{minor}")));
        }
    }
    Ok(numbers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(path: &str, mode: u32, content: &str) -> (String, Record) {
        (path.to_string(), Record { path: path.into(), kind: "f".into(), mode, uid: 0, gid: 0, size: 3, content: content.into() })
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
