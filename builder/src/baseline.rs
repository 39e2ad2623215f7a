//! The integrity baseline: one line per file of the image with its path, type,
//! mode, owner, size, sha256 (or symlink target) and xattrs. Owns the format,
//! its writer and its reader; `rampart verify` compares two of them. Names
//! are bytes: `escape` keeps every one distinct, UTF-8 or not.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::fsutil::sha256_file;
use crate::tree::{walk, Kind};

/// v3 added the whole disk: the configuration partition's files at its
/// mount point, the EFI system partition's (`[esp]/...`) and the partition
/// table (`[gpt]/N`). v2 (no xattrs before it) still reads: its disks are
/// verified over the root and the separate partitions only. v1 files are
/// refused (see `parse`).
pub const HEADER: &str = "# rampart-baseline v3";
const HEADER_V2: &str = "# rampart-baseline v2";
const HEADER_V1: &str = "# rampart-baseline v1";
/// The version of the baseline format `HEADER` writes.
pub const VERSION: u32 = 3;

/// A baseline as read: the image's name, the format's version and the records.
pub struct Baseline {
    pub name: String,
    pub version: u32,
    pub records: BTreeMap<String, Record>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The path as baseline text (`escape` of its bytes).
    pub path: String,
    pub kind: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// sha256 for files, the target for symlinks (as `escape`d text), "major,minor" for devices, "-" otherwise.
    pub content: String,
    /// Extended attributes: `escape_xattr_name` of the name -> hex of the value.
    pub xattrs: BTreeMap<String, String>,
}

impl Record {
    pub fn line(&self) -> String {
        format!(
            "{}\t{}\t{:04o}\t{}\t{}\t{}\t{}\t{}",
            self.path,
            self.kind,
            self.mode,
            self.uid,
            self.gid,
            self.size,
            self.content,
            render_xattrs(&self.xattrs)
        )
    }
}

/// Name bytes as baseline text: `\\`, `\t`, `\n` and `\xNN` for bytes that
/// are not UTF-8, so no two names share a text and any line stays one line.
pub fn escape(bytes: &[u8]) -> String {
    escape_with(bytes, b"")
}

/// An xattr name as baseline text: `escape`, and `=` and `,` as `\xNN` too,
/// since they separate the column's items.
pub fn escape_xattr_name(bytes: &[u8]) -> String {
    escape_with(bytes, b"=,")
}

fn escape_with(bytes: &[u8], also: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                c if c.is_ascii() && also.contains(&(c as u8)) => out.push_str(&format!("\\x{:02x}", c as u32)),
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

/// The xattrs column: `name=hex` items sorted by name, comma-separated, `-` for none.
fn render_xattrs(xattrs: &BTreeMap<String, String>) -> String {
    if xattrs.is_empty() {
        return "-".to_string();
    }
    xattrs.iter().map(|(name, value)| format!("{name}={value}")).collect::<Vec<_>>().join(",")
}

fn parse_xattrs(text: &str) -> Option<BTreeMap<String, String>> {
    if text == "-" {
        return Some(BTreeMap::new());
    }
    text.split(',')
        .map(|item| {
            let (name, value) = item.split_once('=')?;
            let hex_ok = value.len() % 2 == 0 && value.bytes().all(|b| b.is_ascii_hexdigit());
            (!name.is_empty() && hex_ok).then(|| (name.to_string(), value.to_string()))
        })
        .collect()
}

/// Computes the records of every entry below `root`.
pub fn compute(root: &Path) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    for entry in walk(root)? {
        let meta = &entry.meta;
        let (size, content) = match entry.kind {
            Kind::File => (meta.len(), sha256_file(&entry.host_path)?),
            Kind::Symlink => (0, escape(std::fs::read_link(&entry.host_path)?.as_os_str().as_bytes())),
            Kind::CharDevice | Kind::BlockDevice => {
                let rdev = meta.rdev();
                (0, format!("{},{}", libc::major(rdev), libc::minor(rdev)))
            }
            _ => (0, "-".to_string()),
        };
        // The walk's image path is lossy; the host path has the bytes.
        let relative = entry.host_path.strip_prefix(root).unwrap_or(Path::new("")).as_os_str().as_bytes();
        let mut path = b"/".to_vec();
        path.extend_from_slice(relative);
        records.push(Record {
            path: escape(&path),
            kind: entry.kind.letter().to_string(),
            mode: entry.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            size,
            content,
            xattrs: entry.xattrs()?.iter().map(|(name, value)| (escape_xattr_name(name), hex::encode(value))).collect(),
        });
    }
    Ok(records)
}

pub fn render(image_name: &str, records: &[Record]) -> String {
    let mut text = format!("{HEADER} image={image_name}\n# path\ttype\tmode\tuid\tgid\tsize\tsha256|target|device\txattrs\n");
    for record in records {
        text.push_str(&record.line());
        text.push('\n');
    }
    text
}

/// Parses a baseline file.
pub fn parse(text: &str, file: &Path) -> Result<Baseline> {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("");
    if header.starts_with(HEADER_V1) {
        bail!("{}:1: a v1 baseline, which has no xattrs to verify against; rebuild the image (rampart build) for a v{VERSION} baseline", file.display());
    }
    let (version, rest) = match (header.strip_prefix(HEADER), header.strip_prefix(HEADER_V2)) {
        (Some(rest), _) => (VERSION, rest),
        (None, Some(rest)) => (2, rest),
        (None, None) => bail!("{}:1: not a rampart baseline (expected a first line starting with {HEADER:?})", file.display()),
    };
    let Some(name) = rest.trim().strip_prefix("image=") else {
        bail!("{}:1: not a rampart baseline (its first line names no image=)", file.display());
    };
    let mut records = BTreeMap::new();
    for (number, line) in text.lines().enumerate().skip(1) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let bad = || anyhow::anyhow!("{}:{}: malformed baseline line", file.display(), number + 1);
        if fields.len() != 8 {
            return Err(bad());
        }
        let record = Record {
            path: fields[0].to_string(),
            kind: fields[1].to_string(),
            mode: u32::from_str_radix(fields[2], 8).map_err(|_| bad())?,
            uid: fields[3].parse().map_err(|_| bad())?,
            gid: fields[4].parse().map_err(|_| bad())?,
            size: fields[5].parse().map_err(|_| bad())?,
            content: fields[6].to_string(),
            xattrs: parse_xattrs(fields[7]).ok_or_else(bad)?,
        };
        records.insert(record.path.clone(), record);
    }
    Ok(Baseline { name: name.to_string(), version, records })
}

pub fn read(file: &Path) -> Result<Baseline> {
    let text = std::fs::read_to_string(file).with_context(|| format!("while reading baseline {}", file.display()))?;
    parse(&text, file)
}

/// The records of a partition's tree at its mount point (the tree's own top
/// directory left out: the mount point's record stands for it).
pub fn at_mount_point(records: Vec<Record>, mount: &str) -> Vec<Record> {
    records
        .into_iter()
        .filter(|r| r.path != "/")
        .map(|mut r| {
            r.path = format!("{mount}{}", r.path);
            r
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    #[test]
    fn baseline_lists_every_entry_with_digest() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/hostname"), "box\n").unwrap();
        std::os::unix::fs::symlink("hostname", root.path().join("etc/link")).unwrap();
        let records = compute(root.path()).unwrap();
        let paths: Vec<&str> = records.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, vec!["/", "/etc", "/etc/hostname", "/etc/link"]);
        let file = &records[2];
        assert_eq!(file.kind, "f");
        assert_eq!(file.size, 4);
        use sha2::Digest;
        assert_eq!(file.content, hex::encode(sha2::Sha256::digest(b"box\n")));
        assert_eq!(records[3].content, "hostname");
    }

    #[test]
    fn baseline_round_trips_odd_names() {
        let path = escape(b"/a\tb\\c\xff=");
        assert_eq!(path, "/a\\tb\\\\c\\xff=");
        assert_ne!(escape(b"\xff"), escape("\u{fffd}".as_bytes()), "non-UTF-8 bytes are not merged");
        assert_ne!(escape(b"\xff"), escape(b"\\xff"));
        let xattrs = BTreeMap::from([(escape_xattr_name(b"user.a=b"), "00ff".to_string()), ("security.capability".to_string(), String::new())]);
        let record = Record { path: path.clone(), kind: "f".into(), mode: 0o640, uid: 0, gid: 4, size: 3, content: "00".into(), xattrs };
        let text = render("img", std::slice::from_ref(&record));
        assert!(text.contains("\tsecurity.capability=,user.a\\x3db=00ff\n"), "{text}");
        let parsed = parse(&text, Path::new("x.baseline")).unwrap();
        assert_eq!((parsed.name.as_str(), parsed.version), ("img", VERSION));
        assert_eq!(parsed.records[&path], record);
        let older = parse(&text.replacen("v3", "v2", 1), Path::new("x.baseline")).unwrap();
        assert_eq!((older.version, older.records.len()), (2, 1), "a v2 baseline still reads");
    }

    #[test]
    fn non_baseline_is_refused_with_file_name() {
        let error = parse("hello\n", Path::new("notes.txt")).err().unwrap();
        assert!(format!("{error}").starts_with("notes.txt:1: not a rampart baseline"));
        let error = parse("# rampart-baseline v1 image=web\n", Path::new("web.baseline")).err().unwrap();
        assert!(format!("{error}").contains("web.baseline:1: a v1 baseline, which has no xattrs to verify against; rebuild the image"), "{error}");
    }

    #[test]
    fn baseline_records_xattrs_of_the_host_tree() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("tool"), "x").unwrap();
        let path = CString::new(root.path().join("tool").as_os_str().as_bytes()).unwrap();
        // SAFETY: valid NUL-terminated strings and a 1-byte value.
        let set = unsafe { libc::lsetxattr(path.as_ptr(), c"user.rampart".as_ptr(), b"\x01".as_ptr().cast(), 1, 0) };
        if set != 0 {
            eprintln!("skipped: {} has no user xattrs", root.path().display());
            return;
        }
        let records = compute(root.path()).unwrap();
        assert_eq!(records[1].xattrs, BTreeMap::from([("user.rampart".to_string(), "01".to_string())]));
        assert!(records[1].line().ends_with("\tuser.rampart=01"));
        assert!(records[0].xattrs.is_empty());
    }
}
