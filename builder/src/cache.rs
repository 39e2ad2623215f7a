//! The shared, content-addressed cache (default /var/cache/rampart): .debs by
//! sha256 and package-stage root trees by input digest. Entries appear only
//! by rename, complete and verified; a killed run leaves no partial entry.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::fsutil::sha256_file;
use crate::lock::{Lock, LockedPackage};

pub const DEFAULT_CACHE: &str = "/var/cache/rampart";

#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// A cached .deb that failed its digest check and was thrown away.
#[derive(Debug)]
pub struct Damaged {
    pub package: String,
    pub actual_sha256: String,
}

impl Cache {
    pub fn open(root: &Path) -> Result<Cache> {
        for sub in ["debs", "rootfs", "tmp"] {
            std::fs::create_dir_all(root.join(sub))
                .with_context(|| format!("while creating the cache at {}", root.display()))?;
        }
        Ok(Cache { root: root.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn deb_path(&self, sha256: &str) -> PathBuf {
        self.root.join("debs").join(format!("{sha256}.deb"))
    }

    pub fn rootfs_path(&self, key: &str) -> PathBuf {
        self.root.join("rootfs").join(format!("{key}.tar"))
    }

    /// The digest stored beside the package stage `key`'s tarball, if both
    /// are there. Whether the tarball matches it, its reader checks.
    pub fn rootfs_digest(&self, key: &str) -> Option<String> {
        let tarball = self.rootfs_path(key);
        let expected = std::fs::read_to_string(tarball.with_extension("tar.sha256")).ok()?;
        tarball.exists().then(|| expected.trim().to_string())
    }

    /// Removes a package-stage entry whose tarball did not match its digest.
    pub fn discard_damaged_rootfs(&self, key: &str) -> Result<()> {
        let tarball = self.rootfs_path(key);
        crate::ui::warn(&format!("cached package stage {} is damaged; building it again", tarball.display()));
        std::fs::remove_file(&tarball)?;
        std::fs::remove_file(tarball.with_extension("tar.sha256"))?;
        Ok(())
    }

    /// Stores a finished package-stage tarball: synced, digest first, then
    /// the tarball by rename, so an entry is complete or absent.
    pub fn store_rootfs(&self, tarball: &Path, cached: &Path) -> Result<()> {
        std::fs::File::open(tarball)?.sync_all()?;
        let digest = sha256_file(tarball)?;
        crate::fsutil::write_atomic(&cached.with_extension("tar.sha256"), format!("{digest}\n").as_bytes())?;
        std::fs::rename(tarball, cached).context("while storing the package stage in the cache")?;
        Ok(())
    }

    /// A scratch directory on the cache's filesystem, so that finished
    /// entries can be renamed into place.
    pub fn scratch(&self) -> Result<crate::fsutil::OwnedTempDir> {
        crate::fsutil::owned_tempdir(&self.root.join("tmp"), "scratch-")
    }

    /// Checks every locked package in the cache. Damaged entries are removed
    /// and reported; returns the packages that are not (or no longer) cached.
    pub fn check<'a>(&self, lock: &'a Lock) -> Result<(Vec<&'a LockedPackage>, Vec<Damaged>)> {
        let mut missing = Vec::new();
        let mut damaged = Vec::new();
        for package in &lock.packages {
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
