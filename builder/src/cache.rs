//! The shared, content-addressed cache (default /var/cache/rampart): .debs by
//! sha256, signed indices by sha256, and package-stage root trees by input
//! digest. Entries appear only by rename, complete and verified; a killed run
//! leaves no partial entry. The cache is not a trust root: a .deb or an index
//! is used only after its digest matches the lock or a signed index, and a
//! package stage only when its HMAC under this host's key (kept outside the
//! cache) matches. A directory others could write to is refused outright.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::fsutil::sha256_file;
use crate::lock::LockedPackage;

pub const DEFAULT_CACHE: &str = "/var/cache/rampart";
/// The host-local key that binds package-stage entries to this host: outside
/// the cache, so whoever can write the cache cannot forge an entry.
pub const DEFAULT_CACHE_KEY: &str = "/var/lib/rampart/cache-key";
const CACHE_KEY_BYTES: usize = 32;
const SUBDIRECTORIES: [&str; 4] = ["debs", "indices", "rootfs", "tmp"];

#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    key_path: PathBuf,
}

/// A cached .deb that failed its digest check and was thrown away.
#[derive(Debug)]
pub struct Damaged {
    pub package: String,
    pub actual_sha256: String,
}

/// What a trusted directory must not be: writable by anyone but its owner,
/// or owned by anyone but root (or the user rampart runs as, who could
/// change it anyway). A parent may be world-writable if it is sticky and
/// root's (/tmp, /var/tmp): nobody else can rename or remove what is in it.
/// Returns why the directory is refused.
pub fn untrusted_because(mode: u32, owner: u32, euid: u32, is_parent: bool) -> Option<String> {
    if owner != 0 && owner != euid {
        return Some(format!("it is owned by uid {owner}, not root"));
    }
    let sticky_root_parent = is_parent && owner == 0 && mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky_root_parent {
        let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
            (true, true) => "its group and others",
            (true, false) => "its group",
            _ => "others",
        };
        return Some(format!("it is writable by {who} (mode {:04o})", mode & 0o7777));
    }
    None
}

/// Refuses `dir` (and, with `with_parents`, every directory above it up to
/// /) if someone but root could change what is in it.
pub fn check_trusted_directory(dir: &Path, what: &str, with_parents: bool) -> Result<()> {
    let euid = unsafe { libc::geteuid() };
    let canonical = std::fs::canonicalize(dir).with_context(|| format!("while checking {}", dir.display()))?;
    let mut current = Some(canonical.as_path());
    let mut is_parent = false;
    while let Some(path) = current {
        let meta = std::fs::metadata(path).with_context(|| format!("while checking {}", path.display()))?;
        if let Some(reason) = untrusted_because(meta.mode(), meta.uid(), euid, is_parent) {
            let fix = if meta.uid() != 0 && meta.uid() != euid {
                format!("chown root: {}", path.display())
            } else {
                format!("chmod go-w {}", path.display())
            };
            let place = if is_parent { format!("{} (above {what} {})", path.display(), dir.display()) } else { format!("{what} {}", path.display()) };
            bail!("refusing {place}: {reason}, so it cannot be trusted; fix it with `{fix}` (or use another directory)");
        }
        if !with_parents {
            break;
        }
        current = path.parent();
        is_parent = true;
    }
    Ok(())
}

/// Creates a directory and its missing parents 0755 (whatever the umask
/// would have allowed), or 0700 with `private`.
fn create_directory(path: &Path, private: bool) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(if private { 0o700 } else { 0o755 }).create(path)
}

impl Cache {
    pub fn open(root: &Path) -> Result<Cache> {
        Cache::open_with_key(root, Path::new(DEFAULT_CACHE_KEY))
    }

    /// A cache whose package-stage entries are bound to the key at `key_path`.
    pub fn open_with_key(root: &Path, key_path: &Path) -> Result<Cache> {
        for sub in SUBDIRECTORIES {
            create_directory(&root.join(sub), false).with_context(|| format!("while creating the cache at {}", root.display()))?;
        }
        check_trusted_directory(root, "the cache", true)?;
        for sub in SUBDIRECTORIES {
            check_trusted_directory(&root.join(sub), "the cache directory", false)?;
        }
        Ok(Cache { root: root.to_path_buf(), key_path: key_path.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn deb_path(&self, sha256: &str) -> PathBuf {
        self.root.join("debs").join(format!("{sha256}.deb"))
    }

    /// A signed index (InRelease or Packages) kept for bundles, by its sha256.
    pub fn index_path(&self, sha256: &str) -> PathBuf {
        self.root.join("indices").join(sha256)
    }

    /// Keeps an index file under its digest (by copy and rename).
    pub fn keep_index(&self, file: &Path, sha256: &str) -> Result<()> {
        let target = self.index_path(sha256);
        if target.exists() {
            return Ok(());
        }
        let scratch = self.scratch()?;
        let copy = scratch.path().join("index");
        std::fs::copy(file, &copy).with_context(|| format!("while keeping {} in the cache", file.display()))?;
        if sha256_file(&copy)? != sha256 {
            bail!("{} changed while it was kept in the cache", file.display());
        }
        std::fs::rename(&copy, &target).with_context(|| format!("while keeping {} in the cache", file.display()))?;
        Ok(())
    }

    pub fn rootfs_path(&self, key: &str) -> PathBuf {
        self.root.join("rootfs").join(format!("{key}.tar"))
    }

    fn rootfs_mac_path(&self, key: &str) -> PathBuf {
        self.rootfs_path(key).with_extension("tar.hmac")
    }

    /// The HMAC stored beside the package stage `key`'s tarball, if both are
    /// there. Whether the tarball matches it, its reader checks
    /// (`rootfs_matches`).
    pub fn rootfs_mac(&self, key: &str) -> Option<String> {
        let stored = std::fs::read_to_string(self.rootfs_mac_path(key)).ok()?;
        self.rootfs_path(key).exists().then(|| stored.trim().to_string())
    }

    /// Whether a tarball with sha256 `tarball_sha256` is the entry this host
    /// stored for `key` (its HMAC under the host's key is `stored`).
    pub fn rootfs_matches(&self, key: &str, tarball_sha256: &str, stored: &str) -> Result<bool> {
        let secret = self.cache_key()?;
        Ok(stage_mac_matches(&secret, key, tarball_sha256, stored))
    }

    /// Removes a package-stage entry whose tarball did not match its HMAC.
    pub fn discard_damaged_rootfs(&self, key: &str) -> Result<()> {
        let tarball = self.rootfs_path(key);
        crate::ui::warn(&format!(
            "cached package stage {} does not match its HMAC (damaged, changed, or not made on this host with its key {}); building it again",
            tarball.display(),
            self.key_path.display()
        ));
        std::fs::remove_file(&tarball)?;
        std::fs::remove_file(self.rootfs_mac_path(key))?;
        Ok(())
    }

    /// Stores a finished package-stage tarball: synced, its HMAC first, then
    /// the tarball by rename, so an entry is complete or absent.
    pub fn store_rootfs(&self, tarball: &Path, key: &str) -> Result<()> {
        std::fs::File::open(tarball)?.sync_all()?;
        let digest = sha256_file(tarball)?;
        let mac = stage_mac(&self.cache_key()?, key, &digest);
        crate::fsutil::write_atomic(&self.rootfs_mac_path(key), format!("{mac}\n").as_bytes())?;
        std::fs::rename(tarball, self.rootfs_path(key)).context("while storing the package stage in the cache")?;
        Ok(())
    }

    /// The host's cache key: read, or made on first use (0600 in a 0700
    /// directory, root's). Refused if anyone else could read or change it.
    fn cache_key(&self) -> Result<Vec<u8>> {
        load_or_create_key(&self.key_path)
    }

    /// A scratch directory on the cache's filesystem, so that finished
    /// entries can be renamed into place.
    pub fn scratch(&self) -> Result<crate::fsutil::OwnedTempDir> {
        crate::fsutil::owned_tempdir(&self.root.join("tmp"), "scratch-")
    }

    /// Checks every locked package in the cache. Damaged entries are removed
    /// and reported; returns the packages that are not (or no longer) cached.
    pub fn check<'a>(&self, packages: impl IntoIterator<Item = &'a LockedPackage>) -> Result<(Vec<&'a LockedPackage>, Vec<Damaged>)> {
        let mut missing = Vec::new();
        let mut damaged = Vec::new();
        for package in packages {
            let path = self.deb_path(&package.sha256);
            if !path.exists() {
                missing.push(package);
                continue;
            }
            let actual = sha256_file(&path)?;
            if actual != package.sha256 {
                std::fs::remove_file(&path).with_context(|| format!("while removing damaged {}", path.display()))?;
                damaged.push(Damaged { package: format!("{} {}", package.name, package.version), actual_sha256: actual });
                missing.push(package);
            }
        }
        Ok((missing, damaged))
    }
}

fn stage_hmac(secret: &[u8], key: &str, tarball_sha256: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    // The stage key is in the message: an entry moved to another key's name fails.
    mac.update(format!("rampart package stage\nkey {key}\ntarball-sha256 {tarball_sha256}\n").as_bytes());
    mac
}

/// The HMAC-SHA256 under the host's key of a package stage's key and its
/// tarball's sha256, hex.
pub fn stage_mac(secret: &[u8], key: &str, tarball_sha256: &str) -> String {
    hex::encode(stage_hmac(secret, key, tarball_sha256).finalize().into_bytes())
}

/// Compares in constant time.
pub fn stage_mac_matches(secret: &[u8], key: &str, tarball_sha256: &str, stored: &str) -> bool {
    let Ok(stored) = hex::decode(stored.trim()) else { return false };
    stage_hmac(secret, key, tarball_sha256).verify_slice(&stored).is_ok()
}

/// Reads the key at `path`, or makes it (random, 0600, its directory 0700)
/// if there is none. A key file others could read or write, or a directory
/// others could change, is refused.
pub fn load_or_create_key(path: &Path) -> Result<Vec<u8>> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    create_directory(dir, true).with_context(|| format!("while creating {}", dir.display()))?;
    check_trusted_directory(dir, "the cache key's directory", true)?;
    if !path.exists() {
        let mut secret = vec![0u8; CACHE_KEY_BYTES];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut random| std::io::Read::read_exact(&mut random, &mut secret))
            .context("while reading /dev/urandom for the cache key")?;
        let mut temp = tempfile::Builder::new()
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .tempfile_in(dir)
            .with_context(|| format!("while creating the cache key {}", path.display()))?;
        std::io::Write::write_all(&mut temp, &secret)?;
        temp.as_file().sync_all()?;
        // Two first runs at once: one key wins, both use it.
        match temp.persist_noclobber(path) {
            Ok(_) => {}
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.error).with_context(|| format!("while creating the cache key {}", path.display())),
        }
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("while reading the cache key {}", path.display()))?;
    let meta = file.metadata()?;
    let euid = unsafe { libc::geteuid() };
    if !meta.is_file() || (meta.uid() != 0 && meta.uid() != euid) || meta.mode() & 0o077 != 0 {
        bail!(
            "refusing the cache key {}: it must be a file of root's that only root can read (mode 0600); it is mode {:04o}, owned by uid {}",
            path.display(),
            meta.mode() & 0o7777,
            meta.uid()
        );
    }
    let mut secret = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(&file, 4096), &mut secret)?;
    if secret.len() < CACHE_KEY_BYTES {
        bail!("the cache key {} is {} bytes, fewer than {CACHE_KEY_BYTES}; remove it and a new one is made (cached package stages are then built again)", path.display(), secret.len());
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(mode: u32, owner: u32, is_parent: bool, expected: Option<&str>) {
        let reason = untrusted_because(mode, owner, 1000, is_parent);
        match expected {
            None => assert_eq!(reason, None, "mode {mode:o} owner {owner}"),
            Some(part) => assert!(reason.as_deref().is_some_and(|r| r.contains(part)), "mode {mode:o} owner {owner}: {reason:?}"),
        }
    }

    #[test]
    fn cache_directories_writable_by_others_are_refused() {
        check(0o40755, 0, false, None);
        check(0o40700, 0, false, None);
        check(0o40700, 1000, false, None);
        check(0o40777, 0, false, Some("writable by its group and others (mode 0777)"));
        check(0o40775, 0, false, Some("writable by its group (mode 0775)"));
        check(0o40757, 0, true, Some("writable by others"));
        check(0o41777, 0, false, Some("mode 1777"));
        check(0o40755, 1001, false, Some("owned by uid 1001"));
        // /tmp and /var/tmp above a cache: sticky and root's.
        check(0o41777, 0, true, None);
        check(0o41777, 1001, true, Some("owned by uid 1001"));
    }

    #[test]
    fn a_world_writable_cache_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        let key = dir.path().join("state/cache-key");
        let cache = Cache::open_with_key(&root, &key).unwrap();
        let mode = std::fs::metadata(root.join("rootfs")).unwrap().mode() & 0o7777;
        assert_eq!(mode & 0o022, 0, "made without group or other write: {mode:o}");
        drop(cache);
        std::fs::set_permissions(root.join("tmp"), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let message = format!("{:#}", Cache::open_with_key(&root, &key).unwrap_err());
        assert!(message.contains(&format!("the cache directory {}", root.join("tmp").display())), "{message}");
        assert!(message.contains("chmod go-w"), "{message}");
    }

    #[test]
    fn the_stage_mac_binds_the_tarball_the_stage_key_and_the_host_key() {
        let secret = [7u8; 32];
        let mac = stage_mac(&secret, "k1", "aa");
        assert_eq!(mac.len(), 64);
        assert!(stage_mac_matches(&secret, "k1", "aa", &format!("{mac}\n")));
        assert!(!stage_mac_matches(&secret, "k1", "ab", &mac), "another tarball");
        assert!(!stage_mac_matches(&secret, "k2", "aa", &mac), "the entry under another key");
        assert!(!stage_mac_matches(&[8u8; 32], "k1", "aa", &mac), "another host's key");
        assert!(!stage_mac_matches(&secret, "k1", "aa", "aa"), "a plain sha256 is no MAC");
        assert!(!stage_mac_matches(&secret, "k1", "aa", "not hex"));
    }

    #[test]
    fn the_cache_key_is_made_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/cache-key");
        let first = load_or_create_key(&path).unwrap();
        assert_eq!(first.len(), CACHE_KEY_BYTES);
        assert_eq!(load_or_create_key(&path).unwrap(), first);
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
        assert_eq!(std::fs::metadata(dir.path().join("state")).unwrap().mode() & 0o7777, 0o700);
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let message = format!("{:#}", load_or_create_key(&path).unwrap_err());
        assert!(message.contains("only root can read"), "{message}");
    }
}
