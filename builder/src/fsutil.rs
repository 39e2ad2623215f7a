//! Small filesystem helpers shared by stages: atomic writes, streaming
//! digests, and resolving a path inside an image root without ever following
//! a symlink out of it.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// Writes `bytes` to `path` through a temporary file in the same directory and
/// a rename, so readers see the old content or the new, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("while creating {}", dir.display()))?;
    let mut temp = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("while writing {}", path.display()))?;
    temp.write_all(bytes)?;
    use std::os::unix::fs::PermissionsExt;
    temp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
    temp.as_file().sync_all()?;
    temp.persist(path).with_context(|| format!("while writing {}", path.display()))?;
    Ok(())
}

/// Like `write_atomic`, for a file only its owner may read (0600 from the
/// moment it exists).
pub fn write_atomic_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("while creating {}", dir.display()))?;
    let mut temp = tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .with_context(|| format!("while writing {}", path.display()))?;
    temp.write_all(bytes)?;
    temp.as_file().sync_all()?;
    temp.persist(path).with_context(|| format!("while writing {}", path.display()))?;
    Ok(())
}

/// A temporary directory whose owner holds a lock on it. A run that is
/// killed leaves it behind unlocked, and the next run removes it.
pub struct OwnedTempDir {
    path: PathBuf,
    _lock: File,
}

impl OwnedTempDir {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for OwnedTempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

const OWNER_LOCK: &str = ".rampart-owner";

/// Creates a locked temporary directory `<parent>/<prefix>XXXX`, first
/// removing any such directory a killed run left behind.
pub fn owned_tempdir(parent: &Path, prefix: &str) -> Result<OwnedTempDir> {
    remove_abandoned(parent, prefix)?;
    // Made and locked under another name, then renamed into view: no other
    // run ever sees this directory unlocked.
    let unborn = tempfile::Builder::new()
        .prefix(".unborn-")
        .tempdir_in(parent)
        .with_context(|| format!("while creating a work directory in {}", parent.display()))?;
    let lock = File::create(unborn.path().join(OWNER_LOCK))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!("could not lock {}", unborn.path().display());
    }
    let unborn_path = unborn.keep();
    let suffix = unborn_path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix(".unborn-")).unwrap_or("x").to_string();
    let path = parent.join(format!("{prefix}{suffix}"));
    std::fs::rename(&unborn_path, &path).with_context(|| format!("while creating {}", path.display()))?;
    Ok(OwnedTempDir { path, _lock: lock })
}

/// The owner lock of a work directory `owned_tempdir` made, now held by
/// the caller, if its owner is gone (a killed run left it); None while a
/// running rampart holds it, or when it has no lock file (it is made
/// locked and renamed into view, so that one is being removed).
pub fn claim_abandoned(dir: &Path) -> Option<File> {
    let lock = File::open(dir.join(OWNER_LOCK)).ok()?;
    // SAFETY: flock on a file descriptor we own; dropping it releases the lock.
    let free = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    free.then_some(lock)
}

/// Removes `<parent>/<prefix>*` directories whose owner is gone.
fn remove_abandoned(parent: &Path, prefix: &str) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(parent) else { return Ok(()) };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(prefix) || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        // Held while it is removed: another run that looks now finds it owned.
        if let Some(_lock) = claim_abandoned(&entry.path()) {
            crate::ui::step(&format!("removing {}, left behind by an interrupted run", entry.path().display()));
            std::fs::remove_dir_all(entry.path()).with_context(|| format!("while removing {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// tmpfs's file system magic (statfs(2)).
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Free memory the shared-memory tmpfs needs before build trees go there:
/// a root, its file system image and an installer's copies fit many times.
const MEMORY_SCRATCH_MIN_FREE: u64 = 6 << 30;

/// The shared-memory tmpfs (/dev/shm) if it has room (MEMORY_SCRATCH_MIN_FREE):
/// the place for scratch trees written file by file. An image root (10,000
/// files) unpacks there in half a second, against seconds onto a journalled
/// disk. None when there is no such tmpfs or it is too small.
pub fn memory_scratch_parent() -> Option<PathBuf> {
    let path = Path::new("/dev/shm");
    let c_path = std::ffi::CString::new("/dev/shm").ok()?;
    // SAFETY: statfs(2) on a NUL-terminated path into a zeroed struct we own.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 || stat.f_type as i64 != TMPFS_MAGIC {
        return None;
    }
    let free = stat.f_bavail as u64 * stat.f_bsize as u64;
    (free >= MEMORY_SCRATCH_MIN_FREE).then(|| path.to_path_buf())
}

/// The sha256 of a file, read in chunks.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("while reading {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Resolves `relative` (an image path like "etc/ssh/sshd_config") inside
/// `root` the way the image itself would see it: symlinks are followed
/// relative to `root`, and any path that would leave `root` is refused.
/// The last component is not followed.
pub fn resolve_in_root(root: &Path, relative: &Path) -> Result<PathBuf> {
    resolve(root, relative, false)
}

/// Like `resolve_in_root`, but a symlink in the last component is followed
/// too: where the image itself would end up.
pub fn resolve_in_root_following(root: &Path, relative: &Path) -> Result<PathBuf> {
    resolve(root, relative, true)
}

fn resolve(root: &Path, relative: &Path, follow_last: bool) -> Result<PathBuf> {
    let mut resolved = PathBuf::new();
    let mut pending: Vec<std::ffi::OsString> = Vec::new();
    for component in relative.components().rev() {
        pending.push(component.as_os_str().to_os_string());
    }
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        let part_path = Path::new(&part);
        match part_path.components().next() {
            Some(Component::RootDir) | Some(Component::CurDir) | None => continue,
            Some(Component::ParentDir) => {
                if !resolved.pop() {
                    bail!("path {} escapes the image root", relative.display());
                }
                continue;
            }
            _ => {}
        }
        let candidate = resolved.join(&part);
        let on_host = root.join(&candidate);
        let is_last = pending.is_empty();
        match std::fs::symlink_metadata(&on_host) {
            Ok(meta) if meta.file_type().is_symlink() && (follow_last || !is_last) => {
                hops += 1;
                if hops > 40 {
                    bail!("too many symlinks resolving {}", relative.display());
                }
                let target = std::fs::read_link(&on_host)?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                for component in target.components().rev() {
                    pending.push(component.as_os_str().to_os_string());
                }
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("usr/lib", root.path().join("lib")).unwrap();
        std::os::unix::fs::symlink("/usr/lib", root.path().join("abs")).unwrap();
        assert_eq!(resolve_in_root(root.path(), Path::new("lib/x")).unwrap(), root.path().join("usr/lib/x"));
        assert_eq!(resolve_in_root(root.path(), Path::new("/abs/x")).unwrap(), root.path().join("usr/lib/x"));
        assert_eq!(resolve_in_root(root.path(), Path::new("lib")).unwrap(), root.path().join("lib"));
        assert_eq!(resolve_in_root_following(root.path(), Path::new("lib")).unwrap(), root.path().join("usr/lib"));
    }

    #[test]
    fn escaping_paths_are_refused() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("../../../..", root.path().join("etc/up")).unwrap();
        assert!(resolve_in_root(root.path(), Path::new("../x")).is_err());
        assert!(resolve_in_root(root.path(), Path::new("etc/up/x")).is_err());
    }

    #[test]
    fn abandoned_work_directories_are_removed_but_owned_ones_stay() {
        let parent = tempfile::tempdir().unwrap();
        let owned = owned_tempdir(parent.path(), "work-").unwrap();
        let abandoned = parent.path().join("work-abandoned");
        std::fs::create_dir(&abandoned).unwrap();
        std::fs::write(abandoned.join(OWNER_LOCK), "").unwrap();
        let _second = owned_tempdir(parent.path(), "work-").unwrap();
        assert!(!abandoned.exists());
        assert!(owned.path().exists());
    }

    #[test]
    fn atomic_write_replaces_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b.txt");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
    }
}
