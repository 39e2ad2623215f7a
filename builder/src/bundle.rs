//! Air-gapped build bundles: `rampart bundle` writes one tar archive with
//! everything a host without network needs to rebuild an image (the profile
//! and what it extends, its overlay trees, its lock, the signed indices the
//! lock was resolved from, every locked .deb), and `rampart build --bundle`
//! verifies and unpacks one. Owns the bundle format; never builds, never
//! trusts a member it has not checked against the manifest, and never
//! trusts the manifest beyond what the archive's signature (checked with
//! the host's keyring, `signed.rs`) confirms.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cache::Cache;
use crate::fsutil::{owned_tempdir, sha256_file, OwnedTempDir};
use crate::lock::{Lock, LockedPackage};
use crate::mirror::Mirror;
use crate::profile::Profile;
use crate::tree::{walk, Kind};

pub const FORMAT: &str = "rampart-bundle-v2";
/// The first member of every bundle.
pub const MANIFEST_MEMBER: &str = "rampart-bundle.json";
/// The profile files, the lock and the overlay trees, in their relative layout.
const INPUTS: &str = "inputs";
const DEBS: &str = "debs";
const MAX_MANIFEST_BYTES: u64 = 64 << 20;

/// `rampart-bundle.json`: what the bundle is for and every other member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BundleManifest {
    pub format: String,
    pub profile_name: String,
    /// The member holding the profile the bundle was made for.
    pub profile: String,
    /// A digest of the input members (profiles, lock, overlays): the profile's version.
    pub profile_inputs_sha256: String,
    /// The mirror the lock was resolved against; the image's apt sources name it.
    pub mirror: Mirror,
    /// Every member but this manifest, in archive order.
    pub members: Vec<Member>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemberKind {
    File,
    Dir,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Member {
    pub path: String,
    pub kind: MemberKind,
    /// Octal permission bits, "0644".
    pub mode: String,
    pub size: u64,
    /// Of a file's content; absent for a directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl Member {
    fn mode_bits(&self) -> Result<u32> {
        u32::from_str_radix(&self.mode, 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .with_context(|| format!("member {}: mode {:?} is not octal permission bits", self.path, self.mode))
    }
}

impl BundleManifest {
    pub fn render(&self) -> String {
        // Fields in declaration order: what the bundle is for comes first.
        format!("{}\n", serde_json::to_string_pretty(self).expect("a manifest is plain data"))
    }

    /// Parses and checks a manifest: its format, and that every member path
    /// stays inside the bundle and appears once.
    pub fn parse(bytes: &[u8]) -> Result<BundleManifest> {
        // The format first: an older manifest may not parse as this one.
        let value: serde_json::Value = serde_json::from_slice(bytes).context("the manifest is not a rampart bundle manifest")?;
        match value.get("format").and_then(|f| f.as_str()) {
            Some(FORMAT) => {}
            Some("rampart-bundle-v1") => bail!(
                "it is a rampart-bundle-v1 bundle, made by an older rampart: it does not carry the signed indices its lock was resolved from, so it cannot be verified to the archive's signature; make it again with `rampart bundle` (format {FORMAT})"
            ),
            Some(other) => bail!("the manifest's format is {other:?}; this rampart reads {FORMAT:?}"),
            None => bail!("the manifest names no format: not a rampart bundle manifest"),
        }
        let manifest: BundleManifest = serde_json::from_value(value).context("the manifest is not a rampart bundle manifest")?;
        crate::profile::types::ProfileName::parse(&manifest.profile_name).map_err(|e| anyhow::anyhow!("the manifest's profile-name: {e}"))?;
        let mut seen = BTreeSet::new();
        for member in &manifest.members {
            check_member_path(&member.path)?;
            member.mode_bits()?;
            if !seen.insert(member.path.as_str()) {
                bail!("member {} is listed twice in the manifest", member.path);
            }
            match (member.kind, &member.sha256) {
                (MemberKind::File, Some(digest)) if digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()) => {}
                (MemberKind::File, _) => bail!("member {}: the manifest gives no sha256 for it", member.path),
                (MemberKind::Dir, _) => {}
            }
        }
        if !manifest.members.iter().any(|m| m.path == manifest.profile && m.kind == MemberKind::File) {
            bail!("the manifest names profile {}, which is not one of its members", manifest.profile);
        }
        Ok(manifest)
    }
}

/// A member path must name something inside the bundle: relative, no `.`,
/// `..` or empty components, and not the manifest itself.
pub fn check_member_path(path: &str) -> Result<()> {
    if path.starts_with('/') {
        bail!("member {path} has an absolute path");
    }
    if path.is_empty() || path.contains('\0') || path.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        bail!("member {path:?} has a path that escapes the bundle or is not plain (empty, `.` or `..` components)");
    }
    if path == MANIFEST_MEMBER {
        bail!("member {path} may only be the first member");
    }
    Ok(())
}

/// Where a locked .deb lives in a bundle: readable names, one per package.
pub fn deb_member(package: &LockedPackage) -> String {
    format!("{DEBS}/{}_{}_{}.deb", package.name, package.version.replace(':', "%3a"), package.arch)
}

/// A member to write and where its bytes come from.
pub struct Planned {
    pub member: Member,
    pub content: Content,
}

pub enum Content {
    Dir,
    Bytes(Vec<u8>),
    File(PathBuf),
}

/// The profile's input files as members: every profile of the `extends`
/// chain, its lock (if present), the mail gateway's signature databases
/// and every overlay tree, below `inputs/` in
/// their layout relative to the deepest directory holding them all, so that
/// `extends` and `overlays/` still resolve after unpacking.
pub fn profile_inputs(profile: &Profile) -> Result<(String, Vec<Planned>)> {
    let canonical = |path: &Path| std::fs::canonicalize(path).with_context(|| format!("while reading {}", path.display()));
    let top = canonical(&profile.path)?;
    let mut files: Vec<PathBuf> = profile.files.iter().map(|f| canonical(f)).collect::<Result<_>>()?;
    let lock_path = profile.lock_path();
    if lock_path.exists() {
        files.push(canonical(&lock_path)?);
    }
    // The mail gateway's signature databases: a build input the air-gapped
    // site cannot fetch.
    if let Some(dir) = profile.mail_gateway.virus_databases.as_ref().filter(|_| profile.mail_gateway.enable) {
        let listed = crate::stages::mail_gateway::signature_files(&dir.value).map_err(|e| anyhow::anyhow!("{}: mail-gateway.virus-databases: {e}", dir.at))?;
        for (_, path) in listed {
            files.push(canonical(&path)?);
        }
    }
    let trees: Vec<PathBuf> = profile.overlays.iter().map(|t| canonical(&t.dir)).collect::<Result<_>>()?;
    // The overlays/ directory beside the profiles/ directory is an anchor:
    // a profile finds its trees at <its dir>/../overlays.
    let anchors: Vec<&Path> = files.iter().chain(&trees).filter_map(|p| p.parent()).collect();
    let base = common_ancestor(&anchors);
    let member_of = |path: &Path| -> Result<String> {
        let relative = path.strip_prefix(&base).expect("below the common ancestor");
        let text = relative.to_str().with_context(|| format!("{}: a bundle member name must be UTF-8", path.display()))?;
        Ok(format!("{INPUTS}/{text}"))
    };
    let mut planned: BTreeMap<String, Planned> = BTreeMap::new();
    for file in &files {
        let meta = std::fs::metadata(file)?;
        let path = member_of(file)?;
        let member = Member { path: path.clone(), kind: MemberKind::File, mode: format!("{:04o}", meta.mode() & 0o7777), size: meta.len(), sha256: Some(sha256_file(file)?) };
        planned.insert(path, Planned { member, content: Content::File(file.clone()) });
    }
    for (tree, dir) in profile.overlays.iter().zip(&trees) {
        for entry in walk(dir)? {
            let path = member_of(&entry.host_path)?;
            let mode = format!("{:04o}", entry.mode());
            let item = match entry.kind {
                Kind::Dir => Planned { member: Member { path: path.clone(), kind: MemberKind::Dir, mode, size: 0, sha256: None }, content: Content::Dir },
                Kind::File => Planned {
                    member: Member { path: path.clone(), kind: MemberKind::File, mode, size: entry.meta.len(), sha256: Some(sha256_file(&entry.host_path)?) },
                    content: Content::File(entry.host_path.clone()),
                },
                other => bail!(
                    "overlay tree {} holds {} ({}), which a bundle cannot carry: bundles hold regular files and directories only",
                    tree.name,
                    entry.host_path.display(),
                    match other {
                        Kind::Symlink => "a symbolic link",
                        _ => "a special file",
                    }
                ),
            };
            planned.insert(path, item);
        }
    }
    Ok((member_of(&top)?, planned.into_values().collect()))
}

fn common_ancestor(paths: &[&Path]) -> PathBuf {
    let mut base = paths.first().map(|p| p.to_path_buf()).unwrap_or_default();
    for path in paths.iter().skip(1) {
        while !path.starts_with(&base) {
            if !base.pop() {
                break;
            }
        }
    }
    base
}

/// The version of a profile's inputs: a digest of their member list.
pub fn inputs_digest<'a>(members: impl IntoIterator<Item = &'a Member>) -> String {
    let mut lines: Vec<String> = members
        .into_iter()
        .filter(|m| m.path.starts_with(&format!("{INPUTS}/")))
        .map(|m| format!("{:?} {} {} {} {}\n", m.kind, m.mode, m.size, m.sha256.as_deref().unwrap_or("-"), m.path))
        .collect();
    lines.sort();
    hex::encode(Sha256::digest(lines.concat().as_bytes()))
}

/// Writes the bundle of a locked, fetched profile to `output`, through a
/// temporary file and a rename: the file is complete or absent.
pub fn write(profile: &Profile, mirror: &Mirror, lock: &Lock, cache: &Cache, output: &Path) -> Result<BundleManifest> {
    let (top, mut planned) = profile_inputs(profile)?;
    let mut packages: Vec<&LockedPackage> = lock.every_package().collect();
    packages.sort();
    for package in packages {
        planned.push(Planned {
            member: Member { path: deb_member(package), kind: MemberKind::File, mode: "0644".into(), size: package.size, sha256: Some(package.sha256.clone()) },
            content: Content::File(cache.deb_path(&package.sha256)),
        });
    }
    planned.extend(signed::planned_indices(lock, cache)?);
    planned.sort_by(|a, b| a.member.path.as_bytes().cmp(b.member.path.as_bytes()));
    let members: Vec<Member> = planned.iter().map(|p| p.member.clone()).collect();
    let manifest = BundleManifest {
        format: FORMAT.into(),
        profile_name: profile.name.to_string(),
        profile: top,
        profile_inputs_sha256: inputs_digest(&members),
        mirror: mirror.clone(),
        members,
    };

    let dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("while creating {}", dir.display()))?;
    let temp = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("while writing {}", output.display()))?;
    let mut writer = BufWriter::with_capacity(1 << 20, temp.as_file());
    write_tar(&mut writer, manifest.render().as_bytes(), &planned).with_context(|| format!("while writing {}", output.display()))?;
    writer.flush()?;
    drop(writer);
    temp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
    temp.as_file().sync_all()?;
    temp.persist(output).with_context(|| format!("while writing {}", output.display()))?;
    Ok(manifest)
}

/// The archive: the manifest first, then the members in the given order,
/// with fixed times and owners. Each file is checked against its member
/// entry as it is copied, so a file that changed since it was listed fails.
pub fn write_tar(out: &mut dyn Write, manifest: &[u8], planned: &[Planned]) -> Result<()> {
    let mut builder = tar::Builder::new(out);
    let mut header = fixed_header(tar::EntryType::Regular, 0o644, manifest.len() as u64);
    builder.append_data(&mut header, MANIFEST_MEMBER, manifest)?;
    for item in planned {
        let member = &item.member;
        let kind = if member.kind == MemberKind::Dir { tar::EntryType::Directory } else { tar::EntryType::Regular };
        let mut header = fixed_header(kind, member.mode_bits()?, member.size);
        let mut reader: HashingReader<Box<dyn Read>> = HashingReader::new(match &item.content {
            Content::Dir => Box::new(std::io::empty()),
            Content::Bytes(bytes) => Box::new(&bytes[..]),
            Content::File(path) => Box::new(File::open(path).with_context(|| format!("while reading {}", path.display()))?),
        });
        builder.append_data(&mut header, &member.path, &mut reader)?;
        if member.kind == MemberKind::File {
            let (n_bytes, digest) = reader.finish();
            if n_bytes != member.size || Some(&digest) != member.sha256.as_ref() {
                bail!(
                    "{} changed while it was bundled, or does not match the lock (size {n_bytes}, sha256 {digest}; expected size {}, sha256 {})",
                    member.path,
                    member.size,
                    member.sha256.as_deref().unwrap_or("-")
                );
            }
        }
    }
    builder.into_inner()?.flush()?;
    Ok(())
}

fn fixed_header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(if kind == tar::EntryType::Directory { 0 } else { size });
    header
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    n_bytes: u64,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader { inner, hasher: Sha256::new(), n_bytes: 0 }
    }

    fn finish(self) -> (u64, String) {
        (self.n_bytes, hex::encode(self.hasher.finalize()))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.n_bytes += n as u64;
        Ok(n)
    }
}

/// Reads only the manifest (the first member) of a bundle.
pub fn read_manifest(bundle: &Path) -> Result<BundleManifest> {
    let file = File::open(bundle).with_context(|| format!("while reading bundle {}", bundle.display()))?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    let mut entries = archive.entries().with_context(|| format!("{} is not a tar archive", bundle.display()))?;
    let manifest = read_manifest_entry(&mut entries);
    manifest.with_context(|| format!("bundle {} refused", bundle.display()))
}

fn read_manifest_entry<R: Read>(entries: &mut tar::Entries<R>) -> Result<BundleManifest> {
    let Some(first) = entries.next() else { bail!("the archive is empty: no {MANIFEST_MEMBER}") };
    let mut first = first?;
    let name = String::from_utf8_lossy(&first.path_bytes()).into_owned();
    if name != MANIFEST_MEMBER || first.header().entry_type() != tar::EntryType::Regular {
        bail!("its first member is {name}, not the manifest {MANIFEST_MEMBER}: not a rampart bundle");
    }
    if first.size() > MAX_MANIFEST_BYTES {
        bail!("its manifest is {} bytes, more than a manifest can be", first.size());
    }
    let mut bytes = Vec::new();
    first.read_to_end(&mut bytes)?;
    BundleManifest::parse(&bytes)
}

/// A verified bundle, unpacked into a private work directory that lives as
/// long as this value.
pub struct Unpacked {
    pub manifest: BundleManifest,
    dir: OwnedTempDir,
}

impl Unpacked {
    pub fn path(&self, member: &str) -> PathBuf {
        self.dir.path().join(member)
    }

    pub fn profile_path(&self) -> PathBuf {
        self.path(&self.manifest.profile)
    }

    /// The unpacked profile reads nothing outside the bundle: no `extends`
    /// and no overlay tree may lead out of it.
    pub fn check_self_contained(&self, profile: &Profile) -> Result<()> {
        let inside = std::fs::canonicalize(self.dir.path())?;
        let dirs = profile.overlays.iter().map(|t| &t.dir);
        for path in profile.files.iter().chain(dirs) {
            let resolved = std::fs::canonicalize(path).with_context(|| format!("while reading {}", path.display()))?;
            if !resolved.starts_with(&inside) {
                bail!("its profile reads {}, outside the bundle", path.display());
            }
        }
        Ok(())
    }
}

/// Checks every member against the manifest while unpacking the bundle into
/// a private directory under `parent`: each listed member present once, of
/// the listed kind, mode, size and sha256; nothing unlisted; no link; no
/// path leaving the bundle. Any fault is refused naming the member, and the
/// directory is removed. With `expected_sha256` (checked before, by
/// `check_digest`) the bytes read here must have it too, so a file changed
/// after that check is refused as well.
pub fn unpack(bundle: &Path, parent: &Path, expected_sha256: Option<&str>) -> Result<Unpacked> {
    unpack_inner(bundle, parent, expected_sha256).with_context(|| format!("bundle {} refused", bundle.display()))
}

/// `build --bundle FILE --sha256 HEX`: the file's sha256 (what `rampart
/// bundle` prints), checked before anything else is read from it.
pub fn check_digest(bundle: &Path, expected: &str) -> Result<()> {
    let expected = expected.trim().to_ascii_lowercase();
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("--sha256 {expected:?} is not a sha256 (64 hexadecimal digits)");
    }
    let actual = sha256_file(bundle).with_context(|| format!("while reading bundle {}", bundle.display()))?;
    if actual != expected {
        bail!("bundle {} refused: its sha256 is {actual}, but --sha256 says {expected}; it is not the bundle that was made", bundle.display());
    }
    Ok(())
}

fn unpack_inner(bundle: &Path, parent: &Path, expected_sha256: Option<&str>) -> Result<Unpacked> {
    let file = File::open(bundle).with_context(|| format!("while reading {}", bundle.display()))?;
    let mut archive = tar::Archive::new(HashingReader::new(BufReader::with_capacity(1 << 20, file)));
    let mut entries = archive.entries().context("not a tar archive")?;
    let manifest = read_manifest_entry(&mut entries)?;
    std::fs::create_dir_all(parent).with_context(|| format!("while creating {}", parent.display()))?;
    let dir = owned_tempdir(parent, "bundle-")?;
    let listed: BTreeMap<&str, &Member> = manifest.members.iter().map(|m| (m.path.as_str(), m)).collect();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for entry in entries {
        let mut entry = entry.context("the archive is damaged")?;
        let path = String::from_utf8(entry.path_bytes().into_owned())
            .map_err(|e| anyhow::anyhow!("a member's name is not UTF-8: {:?}", String::from_utf8_lossy(e.as_bytes())))?;
        check_member_path(&path)?;
        let Some(member) = listed.get(path.as_str()) else {
            bail!("member {path} is not listed in the manifest");
        };
        if !seen.insert(path.clone()) {
            bail!("member {path} appears twice");
        }
        let entry_type = entry.header().entry_type();
        let target = dir.path().join(&path);
        match (member.kind, entry_type) {
            (_, tar::EntryType::Symlink | tar::EntryType::Link) => bail!("member {path} is a link; a bundle holds files and directories only"),
            (MemberKind::Dir, tar::EntryType::Directory) => {
                std::fs::create_dir_all(&target).with_context(|| format!("while unpacking member {path}"))?;
            }
            (MemberKind::File, tar::EntryType::Regular) => {
                if entry.size() != member.size {
                    bail!("member {path} is {} bytes; the manifest says {}", entry.size(), member.size);
                }
                if let Some(up) = target.parent() {
                    std::fs::create_dir_all(up).with_context(|| format!("while unpacking member {path}"))?;
                }
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&target)
                    .with_context(|| format!("while unpacking member {path}"))?;
                let mut reader = HashingReader::new(&mut entry);
                std::io::copy(&mut reader, &mut out).with_context(|| format!("while unpacking member {path}"))?;
                let (_, digest) = reader.finish();
                let expected = member.sha256.as_deref().unwrap_or("");
                if digest != expected {
                    bail!("member {path} is damaged: its sha256 is {digest}, the manifest says {expected}");
                }
            }
            (kind, other) => bail!("member {path} is a {other:?} entry; the manifest lists a {kind:?}"),
        }
        let mode = entry.header().mode().with_context(|| format!("member {path}: unreadable mode"))? & 0o7777;
        if mode != member.mode_bits()? {
            bail!("member {path} has mode {mode:04o}; the manifest says {}", member.mode);
        }
    }
    if let Some(expected) = expected_sha256 {
        let mut rest = archive.into_inner();
        std::io::copy(&mut rest, &mut std::io::sink()).context("the archive is damaged")?;
        let (_, actual) = rest.finish();
        if actual != expected.trim().to_ascii_lowercase() {
            bail!("it changed while it was read: the bytes read have sha256 {actual}, not {expected}");
        }
    }
    if let Some(missing) = manifest.members.iter().find(|m| !seen.contains(&m.path)) {
        let n_missing = manifest.members.iter().filter(|m| !seen.contains(&m.path)).count();
        bail!("member {} is missing ({n_missing} listed in the manifest are absent from the archive)", missing.path);
    }
    // Modes last, deepest first, so that a read-only directory is filled before it closes.
    for member in manifest.members.iter().rev() {
        std::fs::set_permissions(dir.path().join(&member.path), std::fs::Permissions::from_mode(member.mode_bits()?))?;
    }
    Ok(Unpacked { manifest, dir })
}

/// Refuses a profile given beside `--bundle` that is not the one the bundle
/// was made for: another name, or another version of its input files.
pub fn check_same_profile(manifest: &BundleManifest, given_name: &str, given: &[Member], given_path: &Path) -> Result<()> {
    if manifest.profile_name != given_name {
        bail!(
            "the bundle was made for profile {:?}, not {:?} ({}); give that profile, or none to build the bundle's own",
            manifest.profile_name,
            given_name,
            given_path.display()
        );
    }
    let bundled: BTreeMap<&str, &Member> =
        manifest.members.iter().filter(|m| m.path.starts_with(&format!("{INPUTS}/"))).map(|m| (m.path.as_str(), m)).collect();
    let ours: BTreeMap<&str, &Member> = given.iter().map(|m| (m.path.as_str(), m)).collect();
    let mut differences = Vec::new();
    for (path, member) in &bundled {
        match ours.get(path) {
            None => differences.push(format!("{path} is only in the bundle")),
            Some(mine) if mine != member => differences.push(format!("{path} differs")),
            Some(_) => {}
        }
    }
    for path in ours.keys().filter(|p| !bundled.contains_key(*p)) {
        differences.push(format!("{path} is not in the bundle"));
    }
    if !differences.is_empty() || inputs_digest(given) != manifest.profile_inputs_sha256 {
        bail!(
            "{} does not match: this is a bundle built for another profile version ({}); build without PROFILE to use the bundle's own",
            given_path.display(),
            if differences.is_empty() { "the inputs digest differs".to_string() } else { differences.join(", ") }
        );
    }
    Ok(())
}

/// Checks that the unpacked debs are exactly the lock's, then moves them
/// into the cache (content-addressed: the bundle's copy replaces any entry).
pub fn import_debs(unpacked: &Unpacked, lock: &Lock, cache: &Cache) -> Result<()> {
    let listed: BTreeMap<&str, &Member> = unpacked.manifest.members.iter().map(|m| (m.path.as_str(), m)).collect();
    let mut wanted = BTreeSet::new();
    for package in lock.every_package() {
        let path = deb_member(package);
        match listed.get(path.as_str()) {
            None => bail!("the lock locks {} {}, but the bundle has no member {path}", package.name, package.version),
            Some(member) if member.sha256.as_deref() != Some(package.sha256.as_str()) => bail!(
                "member {path} has sha256 {}, but the lock locks {} {} with sha256 {}",
                member.sha256.as_deref().unwrap_or("-"),
                package.name,
                package.version,
                package.sha256
            ),
            Some(_) => {}
        }
        wanted.insert(path);
    }
    if let Some(extra) = listed.keys().find(|p| p.starts_with(&format!("{DEBS}/")) && !wanted.contains(**p)) {
        bail!("member {extra} is no package of the lock");
    }
    for package in lock.every_package() {
        let from = unpacked.path(&deb_member(package));
        let to = cache.deb_path(&package.sha256);
        // A cache entry is plain data, whatever mode the manifest gave it.
        std::fs::set_permissions(&from, std::fs::Permissions::from_mode(0o644))?;
        // The work directory is in the cache's own scratch space: a rename.
        std::fs::rename(&from, &to).with_context(|| format!("while putting {} into the cache {}", package.name, cache.root().display()))?;
    }
    Ok(())
}

pub mod signed;

#[cfg(test)]
mod tests;
