//! A bundle's signed indices: for each suite of its lock, the InRelease the
//! lock was resolved from and the Packages indices it lists. They tie the
//! bundle to the archive's signature, checked with the host's keyring:
//! whoever rewrites the lock, the manifest and a .deb together still cannot
//! make a package the archive did not sign. Owns the `indices/` members;
//! never trusts a keyring that comes with the bundle (it carries none).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::{Content, Member, MemberKind, Planned, Unpacked};
use crate::apt::{self, IndexEntry, Release};
use crate::cache::Cache;
use crate::lock::{Lock, LockedSource};

pub const INDICES: &str = "indices";
/// A decompressed Packages index larger than this is refused (a gzip bomb).
const MAX_PACKAGES_BYTES: u64 = 1 << 30;

pub fn inrelease_member(suite: &str) -> String {
    format!("{INDICES}/{suite}/InRelease")
}

/// Kept gzipped: the InRelease lists the digest of the uncompressed file,
/// which is what is checked.
pub fn packages_member(suite: &str, component: &str) -> String {
    format!("{INDICES}/{suite}/{}.gz", apt::packages_relative(component))
}

/// A suite's verified packages, and the member they were read from (for errors).
pub struct SuiteIndex {
    pub members: Vec<String>,
    pub packages: HashMap<(String, String), IndexEntry>,
}

/// Every locked package must be a stanza of its suite's signed index: the
/// same name, version, architecture, size, sha256 and pool path.
pub fn check_locked_packages(lock: &Lock, indices: &BTreeMap<String, SuiteIndex>) -> Result<()> {
    for package in lock.every_package() {
        let Some(index) = indices.get(&package.suite) else {
            bail!("package {} {} is locked from suite {}, which has no signed index in the bundle", package.name, package.version, package.suite);
        };
        let members = index.members.join(", ");
        let Some(entry) = index.packages.get(&(package.name.clone(), package.version.clone())) else {
            bail!("package {} {} ({}) is in no stanza of the signed index {members}: the archive did not sign it", package.name, package.version, package.suite);
        };
        let mut differences = Vec::new();
        let mut compare = |field: &str, locked: &str, signed: &str| {
            if locked != signed {
                differences.push(format!("{field} is {locked} in the lock, {signed} in the index"));
            }
        };
        compare("arch", &package.arch, &entry.arch);
        compare("size", &package.size.to_string(), &entry.size.to_string());
        compare("sha256", &package.sha256, &entry.sha256);
        compare("filename", &package.filename, &entry.filename);
        if !differences.is_empty() {
            bail!(
                "package {} {} does not match its stanza in the signed index {members}: {}; the lock or its .deb was changed after the archive signed the index",
                package.name,
                package.version,
                differences.join("; ")
            );
        }
    }
    Ok(())
}

/// The `indices/` members of a bundle of `lock`, from the cache (`lock`,
/// `fetch` and `fetch::ensure_indices` keep them there). The cache is not
/// trusted: each is checked as a bundle reader will check it, and so is the
/// lock against them, so a bundle that would be refused is not made.
pub fn planned_indices(lock: &Lock, cache: &Cache) -> Result<Vec<Planned>> {
    let mut planned = Vec::new();
    let mut indices = BTreeMap::new();
    for source in &lock.sources {
        let inrelease_path = cache.index_path(&source.inrelease_sha256);
        let bytes = std::fs::read(&inrelease_path).with_context(|| format!("while reading the signed index of {} from the cache", source.suite))?;
        let (signed, sha256) = apt::verify_inrelease(&inrelease_path)?;
        let release = checked_release(source, &signed, &sha256, &format!("cached {}", inrelease_path.display()))?;
        let sha256_now = hex::encode(Sha256::digest(&bytes));
        if sha256_now != sha256 {
            bail!("{} changed while it was read", inrelease_path.display());
        }
        planned.push(file_member(inrelease_member(&source.suite), bytes));
        let mut suite = SuiteIndex { members: Vec::new(), packages: HashMap::new() };
        for component in &source.components {
            let relative = apt::packages_relative(component);
            let digest = release.sha256.get(&relative).with_context(|| format!("the signed InRelease of {} lists no digest for {relative}", source.suite))?;
            let path = cache.index_path(digest);
            let bytes = std::fs::read(&path).with_context(|| format!("while reading {relative} of {} from the cache", source.suite))?;
            apt::check_packages_digest(&release, &source.suite, &relative, &hex::encode(Sha256::digest(&bytes)))?;
            for entry in apt::parse_packages(&String::from_utf8_lossy(&bytes))? {
                suite.packages.insert((entry.name.clone(), entry.version.clone()), entry);
            }
            let member = packages_member(&source.suite, component);
            suite.members.push(member.clone());
            planned.push(file_member(member, gzip(&bytes)?));
        }
        indices.insert(source.suite.clone(), suite);
    }
    check_locked_packages(lock, &indices).context("the lock does not match the signed indices it was resolved from")?;
    Ok(planned)
}

fn file_member(path: String, bytes: Vec<u8>) -> Planned {
    let member = Member { path, kind: MemberKind::File, mode: "0644".into(), size: bytes.len() as u64, sha256: Some(hex::encode(Sha256::digest(&bytes))) };
    Planned { member, content: Content::Bytes(bytes) }
}

/// Deterministic: no name, time 0.
fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut encoder = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::new(6));
    encoder.write_all(bytes)?;
    Ok(encoder.finish()?)
}

/// The checks of one suite's InRelease once its signature is good: it is
/// the suite's, and the one the lock records (digest and date).
fn checked_release(source: &LockedSource, signed: &str, sha256: &str, what: &str) -> Result<Release> {
    let release = apt::check_release(signed, &source.suite, what)?;
    if sha256 != source.inrelease_sha256 {
        bail!(
            "the lock records InRelease sha256 {} for suite {}, but {what} has sha256 {sha256}: the lock was not resolved from this signed index",
            source.inrelease_sha256,
            source.suite
        );
    }
    if release.date != source.date {
        bail!("the lock records the date {:?} for suite {}, but {what} is dated {:?}", source.date, source.suite, release.date);
    }
    Ok(release)
}

/// `build --bundle`, after every member matched the manifest and before
/// anything from the bundle is used: each InRelease's signature with the
/// host's archive keyring, each Packages index against its InRelease, the
/// lock's InRelease digests against the bundled ones, then every locked
/// package against a stanza of its suite's verified Packages. (Each .deb
/// against the lock comes next, in `import_debs`.)
pub fn verify(unpacked: &Unpacked, lock: &Lock) -> Result<()> {
    let mut expected = BTreeSet::new();
    for source in &lock.sources {
        expected.insert(inrelease_member(&source.suite));
        expected.extend(source.components.iter().map(|c| packages_member(&source.suite, c)));
    }
    let listed: BTreeSet<&str> = unpacked.manifest.members.iter().map(|m| m.path.as_str()).collect();
    let prefix = format!("{INDICES}/");
    if let Some(extra) = unpacked.manifest.members.iter().find(|m| m.path.starts_with(&prefix) && m.kind == MemberKind::File && !expected.contains(&m.path)) {
        bail!("member {} is no signed index of the lock's suites", extra.path);
    }
    if let Some(absent) = expected.iter().find(|m| !listed.contains(m.as_str())) {
        bail!("the bundle has no member {absent}: the lock's suites must come with the signed indices they were resolved from");
    }
    let mut indices = BTreeMap::new();
    for source in &lock.sources {
        let member = inrelease_member(&source.suite);
        let (signed, sha256) = apt::verify_inrelease(&unpacked.path(&member))
            .with_context(|| format!("member {member} is not signed by the Debian archive"))?;
        let release = apt::check_release(&signed, &source.suite, &format!("member {member}"))?;
        let mut suite = SuiteIndex { members: Vec::new(), packages: HashMap::new() };
        for component in &source.components {
            let packages = packages_member(&source.suite, component);
            let bytes = gunzip(&unpacked.path(&packages)).with_context(|| format!("while reading member {packages}"))?;
            apt::check_packages_digest(&release, &source.suite, &apt::packages_relative(component), &hex::encode(Sha256::digest(&bytes)))
                .with_context(|| format!("member {packages} is not the index the signed {member} lists"))?;
            for entry in apt::parse_packages(&String::from_utf8_lossy(&bytes)).with_context(|| format!("while reading member {packages}"))? {
                suite.packages.insert((entry.name.clone(), entry.version.clone()), entry);
            }
            suite.members.push(packages);
        }
        checked_release(source, &signed, &sha256, &format!("the bundle's signed {member}"))?;
        indices.insert(source.suite.clone(), suite);
    }
    check_source_date_epoch(lock)?;
    check_locked_packages(lock, &indices)
}

/// The build's clock is the newest signed date, which the checks above tie
/// to the signature; a lock that claims another is refused.
pub fn check_source_date_epoch(lock: &Lock) -> Result<()> {
    let mut newest = 0;
    for source in &lock.sources {
        newest = newest.max(crate::lock::parse_release_date(&source.date).with_context(|| format!("while reading the date of suite {}", source.suite))?);
    }
    if lock.source_date_epoch != newest {
        bail!("the lock's source-date-epoch is {}, but its newest signed index is dated {newest}", lock.source_date_epoch);
    }
    Ok(())
}

fn gunzip(path: &std::path::Path) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(std::io::BufReader::new(file)).take(MAX_PACKAGES_BYTES + 1).read_to_end(&mut bytes).context("not a gzip file")?;
    if bytes.len() as u64 > MAX_PACKAGES_BYTES {
        bail!("it unpacks to more than {MAX_PACKAGES_BYTES} bytes");
    }
    Ok(bytes)
}
