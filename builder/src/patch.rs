//! `rampart patch PROFILE --from OLD.lock -o FILE`: the offline patch medium
//! that brings machines installed from the image of OLD.lock to the image of
//! the profile's current lock. `rampart-patch` (`stages::patching`) applies
//! it on each machine.
//!
//! The medium is a GPT disk a machine can be given as it is (a USB stick, a
//! virtual disk):
//!
//! ```text
//! 1 MiB  rampart-patch-seal  the seal: clear-signed by the site's archive key,
//!                            the payload's size and sha256, the two locks'
//!                            digests and the kernel the boot image is for
//! 2 MiB  rampart-patch       the payload, ext4 (label rampart-patch), below /rampart-patch:
//!                              repo/      apt repository of every package the new
//!                                         lock changes or adds, its InRelease signed
//!                                         by the same key
//!                              boot/rampart.efi   the new image's unified kernel
//!                                         image, signed with the site's db key
//!                              lock       the new lock
//!                              install    name=version of each package to install
//!                              SHA256SUMS every file above
//! ```
//!
//! The seal sits at a fixed offset, so the machine reads nothing it must
//! parse (no partition table, no file system) before the signature is
//! checked; then it copies the payload and checks its digest before it
//! reads a file of it.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::build::{self, BuildOptions};
use crate::cache::Cache;
use crate::fsutil::sha256_file;
use crate::lock::{Lock, LockedPackage};
use crate::mirror::Mirror;
use crate::process::Cmd;
use crate::profile::Profile;
use crate::secureboot::archive::ArchiveKey;
use crate::stages::disk::{self, Ext4, GptPartition, MIB};
use crate::ui;

pub const SEAL_OFFSET: u64 = MIB;
pub const SEAL_SIZE: u64 = MIB;
pub const PAYLOAD_OFFSET: u64 = 2 * MIB;
pub const FORMAT: &str = "rampart-patch 1";
/// The payload's top directory and label.
pub const PAYLOAD_DIR: &str = "rampart-patch";
/// GPT type of both partitions: Linux data (nothing mounts them on its own).
const TYPE_DATA: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

pub struct PatchOptions {
    pub from: PathBuf,
    pub output: PathBuf,
    /// The build of the profile's current lock (made here if not current).
    pub out: PathBuf,
    pub cache: PathBuf,
    pub offline: bool,
    pub keys: Option<PathBuf>,
}

/// What a medium carries, as its seal says it.
#[derive(Debug, PartialEq)]
pub struct Seal {
    pub profile: String,
    pub from_lock: String,
    pub to_lock: String,
    pub kernel: String,
    pub payload_size: u64,
    pub payload_sha256: String,
    pub packages: usize,
}

impl Seal {
    pub fn render(&self) -> String {
        format!(
            "Format: {FORMAT}\nProfile: {}\nFrom-Lock: {}\nTo-Lock: {}\nKernel: {}\nPackages: {}\nPayload-Offset: {PAYLOAD_OFFSET}\nPayload-Size: {}\nPayload-SHA256: {}\n",
            self.profile, self.from_lock, self.to_lock, self.kernel, self.packages, self.payload_size, self.payload_sha256
        )
    }
}

/// The packages of `to` that `from` does not hold at the same version.
pub fn changed_packages<'a>(from: &Lock, to: &'a Lock) -> Vec<&'a LockedPackage> {
    let held: BTreeSet<(&str, &str, &str)> = from.packages.iter().map(|p| (p.name.as_str(), p.version.as_str(), p.arch.as_str())).collect();
    to.packages.iter().filter(|p| !held.contains(&(p.name.as_str(), p.version.as_str(), p.arch.as_str()))).collect()
}

/// The kernel release the lock boots: the one versioned kernel image package.
pub fn kernel_release(lock: &Lock) -> Result<String> {
    let releases: Vec<&str> = lock
        .packages
        .iter()
        .filter_map(|p| p.name.strip_prefix("linux-image-"))
        .filter(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    match releases.as_slice() {
        [one] => Ok(one.to_string()),
        _ => bail!("the lock holds {} versioned kernel packages (linux-image-<release>); a patch medium boots exactly one", releases.len()),
    }
}

/// RFC 2822 date of a Unix time, as Release files carry it.
pub fn release_date(epoch: i64) -> String {
    let days = epoch.div_euclid(86_400);
    let seconds = epoch.rem_euclid(86_400);
    let (year, month, day) = crate::lock::civil_from_days(days);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let month_name = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"][(month - 1) as usize];
    format!("{weekday}, {day:02} {month_name} {year} {:02}:{:02}:{:02} UTC", seconds / 3600, seconds / 60 % 60, seconds % 60)
}

/// The repository's Release file over its one Packages index.
pub fn release_text(name: &str, epoch: i64, packages: &[u8]) -> String {
    format!(
        "Origin: rampart\nLabel: rampart patch for {name}\nSuite: rampart\nCodename: rampart\nDate: {}\nArchitectures: amd64\nComponents: main\nDescription: packages of a rampart patch medium\nSHA256:\n {} {} main/binary-amd64/Packages\n",
        release_date(epoch),
        hex::encode(Sha256::digest(packages)),
        packages.len()
    )
}

pub fn make(profile: Profile, mirror: Mirror, options: &PatchOptions) -> Result<()> {
    let from = Lock::read(&options.from).with_context(|| format!("--from {}", options.from.display()))?;
    let name = profile.name.to_string();
    build::ensure_built(
        &profile,
        mirror,
        &BuildOptions { offline: options.offline, out: options.out.clone(), cache: options.cache.clone(), secrets: None, keys: options.keys.clone(), installer: false, lock: None },
    )?;
    let to = Lock::read(&profile.lock_path())?;
    let (from_digest, to_digest) = (from.digest(&name)?, to.digest(&name)?);
    if from_digest == to_digest {
        bail!("--from {} is the profile's current lock: there is nothing to patch", options.from.display());
    }
    let changed = changed_packages(&from, &to);
    if changed.is_empty() {
        bail!("the profile's lock holds no package that --from {} does not: there is nothing to patch", options.from.display());
    }
    let kernel = kernel_release(&to)?;
    let keys_dir = options.keys.clone().unwrap_or_else(|| options.out.join(format!("{name}.{}", build::KEYS_SUFFIX)));
    let keys = crate::secureboot::keys::load_or_make(&keys_dir, &name)?;
    let cache = Cache::open(&options.cache)?;
    let timer = ui::Timed::start(&format!("making the patch medium {}", options.output.display()));
    let parent = options.output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let work = crate::fsutil::owned_tempdir(parent, ".rampart-patch-")?;
    let tree = work.path().join("tree");
    let top = tree.join(PAYLOAD_DIR);
    let raw = options.out.join(format!("{name}.raw"));
    write_payload_tree(&top, &name, &to, &changed, &cache, &keys.archive, &raw)?;

    let epoch = to.source_date_epoch;
    crate::stages::seal::clamp_times(&tree, epoch)?;
    let (size_mib, _) = disk::root_needs(&tree)?;
    let payload = work.path().join("payload.ext4");
    let uuid = derived_uuid(&to_digest, "payload");
    disk::make_ext4(
        work.path(),
        &payload,
        &Ext4 { what: "patch medium", tree: tree.clone(), size_mib, inodes: 4096, label: PAYLOAD_DIR, uuid: &uuid, hash_seed: &derived_uuid(&to_digest, "hash"), journal: false },
        &epoch.to_string(),
    )?;
    let seal = Seal {
        profile: name.clone(),
        from_lock: from_digest,
        to_lock: to_digest.clone(),
        kernel: kernel.clone(),
        payload_size: size_mib * MIB,
        payload_sha256: sha256_file(&payload)?,
        packages: changed.len(),
    };
    let signed = keys.archive.clearsign(seal.render().as_bytes(), epoch)?;
    if signed.len() as u64 > SEAL_SIZE {
        bail!("the signed seal is {} bytes, more than its {SEAL_SIZE}", signed.len());
    }
    let medium = work.path().join("medium.img");
    let (seal_uuid, payload_uuid) = (derived_uuid(&to_digest, "seal-partition"), derived_uuid(&to_digest, "payload-partition"));
    disk::write_partition_table(
        &medium,
        work.path(),
        PAYLOAD_OFFSET + size_mib * MIB + MIB,
        &derived_uuid(&to_digest, "disk"),
        &[
            GptPartition { start_mib: SEAL_OFFSET / MIB, size_mib: SEAL_SIZE / MIB, type_guid: TYPE_DATA, uuid: &seal_uuid, name: "rampart-patch-seal" },
            GptPartition { start_mib: PAYLOAD_OFFSET / MIB, size_mib, type_guid: TYPE_DATA, uuid: &payload_uuid, name: PAYLOAD_DIR },
        ],
    )?;
    {
        use std::io::{Seek, SeekFrom};
        let mut file = std::fs::OpenOptions::new().write(true).open(&medium)?;
        file.seek(SeekFrom::Start(SEAL_OFFSET))?;
        file.write_all(&signed)?;
        file.sync_all()?;
    }
    disk::copy_sparse(&payload, &medium, PAYLOAD_OFFSET)?;
    std::fs::rename(&medium, &options.output).with_context(|| format!("while moving the medium to {}", options.output.display()))?;
    timer.done();
    ui::step(&format!(
        "{}: {} packages, kernel {kernel}, {} MiB; lock {} -> {}",
        options.output.display(),
        changed.len(),
        size_mib + 3,
        &seal.from_lock[..12],
        &to_digest[..12]
    ));
    Ok(())
}

/// A UUID from the new lock's digest and a role: the same medium twice is
/// the same bytes.
fn derived_uuid(digest: &str, role: &str) -> String {
    let h = hex::encode(Sha256::digest(format!("rampart-patch {role} {digest}").as_bytes()));
    format!("{}-{}-4{}-8{}-{}", &h[0..8], &h[8..12], &h[13..16], &h[17..20], &h[20..32])
}

fn write_payload_tree(top: &Path, name: &str, to: &Lock, changed: &[&LockedPackage], cache: &Cache, archive: &ArchiveKey, raw: &Path) -> Result<()> {
    let pool = top.join("repo/pool");
    let index_dir = top.join("repo/dists/rampart/main/binary-amd64");
    std::fs::create_dir_all(&pool)?;
    std::fs::create_dir_all(&index_dir)?;
    let mut index = String::new();
    let mut install = String::new();
    for package in changed {
        let cached = cache.deb_path(&package.sha256);
        let file_name = format!("{}_{}_{}.deb", package.name, package.version.replace(':', "%3a"), package.arch);
        let target = pool.join(&file_name);
        std::fs::copy(&cached, &target)
            .with_context(|| format!("{} {} is not in the cache {}: run `rampart fetch` on a connected host", package.name, package.version, cache.root().display()))?;
        // The cache is storage, not a trust root: the copy is checked.
        if sha256_file(&target)? != package.sha256 {
            bail!("the cached {} {} does not match the lock's sha256; run `rampart fetch` again", package.name, package.version);
        }
        let control = Cmd::new("dpkg-deb").arg("--field").arg(&target).run().with_context(|| format!("while reading the control of {file_name}"))?.stdout_text();
        index.push_str(control.trim_end());
        index.push_str(&format!("\nFilename: pool/{file_name}\nSize: {}\nSHA256: {}\n\n", package.size, package.sha256));
        install.push_str(&format!("{}={}\n", package.name, package.version));
    }
    std::fs::write(index_dir.join("Packages"), &index)?;
    let release = release_text(name, to.source_date_epoch, index.as_bytes());
    std::fs::write(top.join("repo/dists/rampart/InRelease"), archive.clearsign(release.as_bytes(), to.source_date_epoch)?)?;
    std::fs::write(top.join("install"), install)?;
    std::fs::write(top.join("lock"), to.render(name)?)?;
    std::fs::create_dir_all(top.join("boot"))?;
    let uki = top.join("boot/rampart.efi");
    let esp = format!("{}@@{}", raw.display(), crate::layout::FIRST_LBA_MIB * MIB);
    Cmd::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-n")
        .arg("-i")
        .arg(esp)
        .arg(format!("::/{}", disk::UKI_PATH))
        .arg(&uki)
        .run()
        .with_context(|| format!("while reading the boot image from {}", raw.display()))?;
    let mut sums = String::new();
    for entry in crate::tree::walk(top)? {
        if entry.kind == crate::tree::Kind::File {
            sums.push_str(&format!("{}  {}\n", sha256_file(&entry.host_path)?, &entry.image_path[1..]));
        }
    }
    std::fs::write(top.join("SHA256SUMS"), sums)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_dates_read_as_apt_writes_them() {
        assert_eq!(release_date(0), "Thu, 01 Jan 1970 00:00:00 UTC");
        assert_eq!(release_date(1_796_253_223), "Wed, 02 Dec 2026 23:13:43 UTC");
    }

    #[test]
    fn the_seal_names_every_field_rampart_patch_reads() {
        let seal = Seal {
            profile: "baseline".into(),
            from_lock: "a".repeat(64),
            to_lock: "b".repeat(64),
            kernel: "6.1.0-57-cloud-amd64".into(),
            payload_size: 3 * MIB,
            payload_sha256: "c".repeat(64),
            packages: 29,
        };
        let text = seal.render();
        for field in ["Format", "From-Lock", "To-Lock", "Kernel", "Payload-Size", "Payload-SHA256"] {
            assert_eq!(text.lines().filter(|l| l.starts_with(&format!("{field}: "))).count(), 1, "{field}");
            assert!(crate::stages::patching::SCRIPT_TEXT.contains(&format!("field {field}")), "the script reads {field}");
        }
        assert!(crate::stages::patching::SCRIPT_TEXT.contains(&format!("\"{FORMAT}\"")));
        assert!(crate::stages::patching::SCRIPT_TEXT.contains(&format!("rdump /{PAYLOAD_DIR} ")));
    }

    #[test]
    fn changed_packages_are_new_names_and_new_versions() {
        let package = |name: &str, version: &str| LockedPackage {
            name: name.into(),
            version: version.into(),
            arch: "amd64".into(),
            suite: "bookworm".into(),
            filename: String::new(),
            size: 1,
            sha256: String::new(),
        };
        let lock = |packages: Vec<LockedPackage>| Lock { lock_version: 1, request_sha256: String::new(), source_date_epoch: 0, sources: vec![], packages, auditor: vec![] };
        let from = lock(vec![package("linux-image-6.1.0-40-cloud-amd64", "6.1.176-1"), package("linux-image-cloud-amd64", "6.1.176-1"), package("bash", "5.2.15-2+b8")]);
        let to = lock(vec![package("linux-image-6.1.0-57-cloud-amd64", "6.1.192-3"), package("linux-image-cloud-amd64", "6.1.192-3"), package("bash", "5.2.15-2+b8")]);
        let names: Vec<&str> = changed_packages(&from, &to).iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["linux-image-6.1.0-57-cloud-amd64", "linux-image-cloud-amd64"]);
        assert_eq!(kernel_release(&to).unwrap(), "6.1.0-57-cloud-amd64");
        assert!(kernel_release(&lock(vec![])).is_err());
    }
}
