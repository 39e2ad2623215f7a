//! Walks an image tree in one fixed order (by path bytes), without following
//! symlinks, and reads entries' xattrs. The baseline and the archives see
//! the same list.

use std::ffi::CString;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
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

    /// The entry's extended attributes (name, value), sorted by name, not
    /// following a symlink; none where the file system has none.
    pub fn xattrs(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        read_xattrs(&self.host_path)
    }
}

/// `llistxattr` and `lgetxattr`: a path's extended attributes, sorted by name.
pub fn read_xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    let failed = |what: &str| anyhow::anyhow!(std::io::Error::last_os_error()).context(format!("while {what} the xattrs of {}", path.display()));
    let mut names = vec![0u8; 4096];
    loop {
        // SAFETY: the buffer is valid for its length; the path is NUL-terminated.
        let n = unsafe { libc::llistxattr(c_path.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
        if n >= 0 {
            names.truncate(n as usize);
            break;
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            Some(libc::ERANGE) if names.len() < 1 << 20 => names.resize(names.len() * 4, 0),
            _ => return Err(failed("listing")),
        }
    }
    let mut xattrs = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let c_name = CString::new(name)?;
        let mut value = vec![0u8; 256];
        loop {
            // SAFETY: as above.
            let n = unsafe { libc::lgetxattr(c_path.as_ptr(), c_name.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
            if n >= 0 {
                value.truncate(n as usize);
                break;
            }
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::ERANGE) if value.len() < 1 << 20 => value.resize(value.len() * 4, 0),
                _ => return Err(failed("reading")),
            }
        }
        xattrs.push((name.to_vec(), value));
    }
    xattrs.sort();
    Ok(xattrs)
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
