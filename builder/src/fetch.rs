//! `rampart fetch`: brings every locked .deb into the cache, verified along the
//! whole chain: InRelease signature -> Packages digest -> the index's sha256
//! of each .deb == the lock's sha256 == the downloaded file's sha256.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::apt::AptRoot;
use crate::cache::Cache;
use crate::fsutil::sha256_file;
use crate::lock::{Lock, LockedPackage};
use crate::mirror::Mirror;
use crate::ui;

pub struct FetchSummary {
    pub n_packages: usize,
    pub n_downloaded: usize,
    pub n_damaged: usize,
}

pub fn fetch(lock: &Lock, mirror: &Mirror, cache: &Cache, log: &Path) -> Result<FetchSummary> {
    let (missing, damaged) = cache.check(lock.every_package())?;
    for entry in &damaged {
        ui::warn(&format!(
            "cached .deb of {} was damaged (sha256 {}); fetching it again",
            entry.package, entry.actual_sha256
        ));
    }
    if missing.is_empty() {
        return Ok(FetchSummary { n_packages: lock.every_package().count(), n_downloaded: 0, n_damaged: damaged.len() });
    }
    let bytes: u64 = missing.iter().map(|p| p.size).sum();
    ui::step(&format!("fetching {} packages ({:.1} MB) from {}", missing.len(), bytes as f64 / 1e6, mirror.url));
    let apt = AptRoot::update(mirror, log)?;
    let indices = apt.verified_indices()?;
    AptRoot::keep_indices(&indices, cache)?;
    let mut gone = Vec::new();
    for package in &missing {
        let entry = indices
            .iter()
            .filter(|i| i.source.suite == package.suite)
            .find_map(|i| i.packages.get(&(package.name.clone(), package.version.clone())));
        match entry {
            None => gone.push(format!("{} {} ({})", package.name, package.version, package.suite)),
            Some(entry) if entry.sha256 != package.sha256 => bail!(
                "the mirror serves a different file for {} {} than the lock records (lock sha256 {}, mirror {}); the mirror or the lock has been tampered with",
                package.name, package.version, package.sha256, entry.sha256
            ),
            Some(_) => {}
        }
    }
    if !gone.is_empty() {
        bail!(
            "the mirror {} no longer serves {} locked package version(s): {}; run `rampart lock --update` to re-lock, or point mirror.url at a snapshot mirror holding the locked versions",
            mirror.url,
            gone.len(),
            gone.join(", ")
        );
    }
    let scratch = cache.scratch()?;
    let wanted: Vec<String> = missing.iter().map(|p| format!("{}={}", p.name, p.version)).collect();
    apt.download(&wanted, scratch.path(), log)?;
    store_downloads(&missing, scratch.path(), cache)?;
    Ok(FetchSummary { n_packages: lock.every_package().count(), n_downloaded: missing.len(), n_damaged: damaged.len() })
}

/// For bundles: the signed indices each suite of the lock was resolved from
/// (its InRelease, by the digest the lock records, and the Packages indices
/// that InRelease lists) must be in the cache. `lock` and `fetch` keep them
/// there; if they are missing, they are fetched, and the mirror must still
/// serve the very InRelease the lock records.
pub fn ensure_indices(lock: &Lock, mirror: &Mirror, cache: &Cache, log: &Path) -> Result<()> {
    let missing = |lock: &Lock| -> Vec<String> {
        lock.sources.iter().filter(|s| !cache.index_path(&s.inrelease_sha256).exists()).map(|s| s.suite.clone()).collect()
    };
    if missing(lock).is_empty() {
        return Ok(());
    }
    ui::step(&format!("fetching the signed indices of {} from {}", missing(lock).join(", "), mirror.url));
    let apt = AptRoot::update(mirror, log)?;
    let indices = apt.verified_indices()?;
    AptRoot::keep_indices(&indices, cache)?;
    let still = missing(lock);
    if !still.is_empty() {
        let now: Vec<String> = indices.iter().map(|i| format!("{} {}", i.source.suite, i.inrelease_sha256)).collect();
        bail!(
            "the signed index (InRelease) the lock was resolved from is not in the cache {} for suite(s) {}, and the mirror {} now serves another ({}); bundle on the host that made the lock, point mirror.url at a snapshot mirror of that date, or run `rampart lock --update`",
            cache.root().display(),
            still.join(", "),
            mirror.url,
            now.join(", ")
        );
    }
    Ok(())
}

/// Moves downloaded files into the cache under their digest, checking each
/// against the lock; a file that matches no locked digest is an error.
fn store_downloads(wanted: &[&LockedPackage], dir: &Path, cache: &Cache) -> Result<()> {
    let mut by_digest: HashMap<String, std::path::PathBuf> = HashMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        by_digest.insert(sha256_file(&path)?, path);
    }
    for package in wanted {
        let Some(path) = by_digest.get(&package.sha256) else {
            bail!(
                "the mirror served a file for {} {} whose sha256 does not match the lock ({})",
                package.name, package.version, package.sha256
            );
        };
        std::fs::rename(path, cache.deb_path(&package.sha256))
            .with_context(|| format!("while storing {} in the cache", package.name))?;
    }
    Ok(())
}

/// For offline builds: every locked .deb must be in the cache and intact.
pub fn require_cached(lock: &Lock, cache: &Cache, profile_path: &Path) -> Result<()> {
    let (missing, damaged) = cache.check(&lock.packages)?;
    if missing.is_empty() {
        return Ok(());
    }
    let damaged_note = if damaged.is_empty() {
        String::new()
    } else {
        format!(" ({} were damaged in the cache and have been removed)", damaged.len())
    };
    let names: Vec<String> = missing.iter().map(|p| format!("{} {}", p.name, p.version)).collect();
    bail!(
        "offline build, but {} locked package(s) are not in the cache {}{}: {}; run `rampart fetch {}` on a connected host first",
        missing.len(),
        cache.root().display(),
        damaged_note,
        names.join(", "),
        profile_path.display()
    )
}
