//! The integrity baseline: one line per file of the image with its path, type,
//! mode, owner, size and sha256 (or symlink target). Owns the format, its
//! writer and its reader; `rampart verify` compares two of them.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::fsutil::sha256_file;
use crate::tree::{walk, Kind};

pub const HEADER: &str = "# rampart-baseline v1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub path: String,
    pub kind: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// sha256 for files, the target for symlinks, "major,minor" for devices, "-" otherwise.
    pub content: String,
}

impl Record {
    pub fn line(&self) -> String {
        format!(
            "{}\t{}\t{:04o}\t{}\t{}\t{}\t{}",
            escape(&self.path),
            self.kind,
            self.mode,
            self.uid,
            self.gid,
            self.size,
            escape(&self.content)
        )
    }
}

/// Computes the records of every entry below `root`.
pub fn compute(root: &Path) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    for entry in walk(root)? {
        let meta = &entry.meta;
        let (size, content) = match entry.kind {
            Kind::File => (meta.len(), sha256_file(&entry.host_path)?),
            Kind::Symlink => (0, std::fs::read_link(&entry.host_path)?.to_string_lossy().into_owned()),
            Kind::CharDevice | Kind::BlockDevice => {
                let rdev = meta.rdev();
                (0, format!("{},{}", libc::major(rdev), libc::minor(rdev)))
            }
            _ => (0, "-".to_string()),
        };
        records.push(Record {
            path: entry.image_path.clone(),
            kind: entry.kind.letter().to_string(),
            mode: entry.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            size,
            content,
        });
    }
    Ok(records)
}

pub fn render(image_name: &str, records: &[Record]) -> String {
    let mut text = format!("{HEADER} image={image_name}\n# path\ttype\tmode\tuid\tgid\tsize\tsha256|target|device\n");
    for record in records {
        text.push_str(&record.line());
        text.push('\n');
    }
    text
}

/// Parses a baseline file; returns the image name and the records by path.
pub fn parse(text: &str, file: &Path) -> Result<(String, BTreeMap<String, Record>)> {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("");
    let Some(name) = header.strip_prefix(HEADER).and_then(|r| r.trim().strip_prefix("image=")) else {
        bail!("{}:1: not a rampart baseline (expected a first line starting with {HEADER:?})", file.display());
    };
    let mut records = BTreeMap::new();
    for (number, line) in text.lines().enumerate().skip(1) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let bad = || anyhow::anyhow!("{}:{}: malformed baseline line", file.display(), number + 1);
        if fields.len() != 7 {
            return Err(bad());
        }
        let record = Record {
            path: unescape(fields[0]),
            kind: fields[1].to_string(),
            mode: u32::from_str_radix(fields[2], 8).map_err(|_| bad())?,
            uid: fields[3].parse().map_err(|_| bad())?,
            gid: fields[4].parse().map_err(|_| bad())?,
            size: fields[5].parse().map_err(|_| bad())?,
            content: unescape(fields[6]),
        };
        records.insert(record.path.clone(), record);
    }
    Ok((name.to_string(), records))
}

pub fn read(file: &Path) -> Result<(String, BTreeMap<String, Record>)> {
    let text = std::fs::read_to_string(file).with_context(|| format!("while reading baseline {}", file.display()))?;
    parse(&text, file)
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('t') => out.push('\t'),
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let record = Record { path: "/a\tb\\c".into(), kind: "f".into(), mode: 0o640, uid: 0, gid: 4, size: 3, content: "00".into() };
        let text = render("img", std::slice::from_ref(&record));
        let (name, parsed) = parse(&text, Path::new("x.baseline")).unwrap();
        assert_eq!(name, "img");
        assert_eq!(parsed["/a\tb\\c"], record);
    }

    #[test]
    fn non_baseline_is_refused_with_file_name() {
        let error = parse("hello\n", Path::new("notes.txt")).unwrap_err();
        assert!(format!("{error}").starts_with("notes.txt:1: not a rampart baseline"));
    }
}
