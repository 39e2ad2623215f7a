//! Walks an image tree in one fixed order (by path bytes), without following
//! symlinks. The baseline, the archives and `verify` all see the same list.

use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

impl Kind {
    pub fn of(meta: &Metadata) -> Kind {
        let t = meta.file_type();
        if t.is_symlink() {
            Kind::Symlink
        } else if t.is_dir() {
            Kind::Dir
        } else if t.is_char_device() {
            Kind::CharDevice
        } else if t.is_block_device() {
            Kind::BlockDevice
        } else if t.is_fifo() {
            Kind::Fifo
        } else if t.is_socket() {
            Kind::Socket
        } else {
            Kind::File
        }
    }

    pub fn letter(self) -> &'static str {
        match self {
            Kind::File => "f",
            Kind::Dir => "d",
            Kind::Symlink => "l",
            Kind::CharDevice => "c",
            Kind::BlockDevice => "b",
            Kind::Fifo => "p",
            Kind::Socket => "s",
        }
    }
}

pub struct Entry {
    /// Path inside the image, starting with '/'; "/" for the root itself.
    pub image_path: String,
    pub host_path: PathBuf,
    pub meta: Metadata,
    pub kind: Kind,
}

impl Entry {
    pub fn mode(&self) -> u32 {
        self.meta.mode() & 0o7777
    }
}

/// Every entry below `root` (and the root itself), sorted by image path.
pub fn walk(root: &Path) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let meta = std::fs::symlink_metadata(root).with_context(|| format!("while reading {}", root.display()))?;
    entries.push(Entry { image_path: "/".into(), host_path: root.to_path_buf(), kind: Kind::of(&meta), meta });
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for item in std::fs::read_dir(&dir).with_context(|| format!("while reading {}", dir.display()))? {
            let item = item?;
            let name = item.file_name().to_string_lossy().into_owned();
            let image_path = format!("{prefix}/{name}");
            let meta = std::fs::symlink_metadata(item.path())?;
            let kind = Kind::of(&meta);
            if kind == Kind::Dir {
                stack.push((item.path(), image_path.clone()));
            }
            entries.push(Entry { image_path, host_path: item.path(), meta, kind });
        }
    }
    entries.sort_by(|a, b| a.image_path.as_bytes().cmp(b.image_path.as_bytes()));
    Ok(entries)
}
