//! Package stage: the root tree, made by mmdebstrap from a local repository of
//! the cached, verified .debs alone, with the network cut. Its output is
//! cached by a digest of every input, so a profile edit that keeps the lock
//! reuses it. Never downloads anything, and never lets mmdebstrap read a
//! file of the cache: the .debs are copied into a private directory and
//! checked there, and a cached stage is used only if its HMAC matches.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::apt::ARCH;
use crate::build::context::BuildContext;
use crate::process::Cmd;
use crate::profile::InitramfsModules;
use crate::ui;

/// How a package-stage tarball is unpacked into the image root.
const UNPACK: &[&str] = &["--extract", "--preserve-permissions", "--numeric-owner", "--xattrs", "--xattrs-include=*"];

/// Bump when the way this stage calls mmdebstrap changes.
const STAGE_VERSION: &str = "packages-v5";

/// Paths dpkg leaves out of the image when `packages.drop-docs` is on.
const DOC_EXCLUDES: &[&str] = &[
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/lintian/*",
    "path-exclude=/usr/share/linda/*",
];

/// John the Ripper's character sets (19 MB) serve only its incremental
/// mode; the password audit runs its wordlist mode alone.
const JOHN_EXCLUDES: &[&str] = &["path-exclude=/usr/share/john/*.chr"];

/// Perl's C headers (8 MB) serve only building XS modules, which needs a
/// compiler: left out of an image without gcc.
const PERL_HEADER_EXCLUDES: &[&str] = &["path-exclude=/usr/lib/x86_64-linux-gnu/perl/*/CORE/*.h"];

/// Perl's Chinese, Japanese and Korean encodings (9 MB of tables): nothing
/// in an image without the mail gateway (whose filters decode mail in any
/// charset) reads text in them. Left out with the docs.
const PERL_CJK_EXCLUDES: &[&str] = &[
    "path-exclude=/usr/lib/x86_64-linux-gnu/perl/*/auto/Encode/CN/*",
    "path-exclude=/usr/lib/x86_64-linux-gnu/perl/*/auto/Encode/JP/*",
    "path-exclude=/usr/lib/x86_64-linux-gnu/perl/*/auto/Encode/KR/*",
    "path-exclude=/usr/lib/x86_64-linux-gnu/perl/*/auto/Encode/TW/*",
];

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    let mut dpkg_options: Vec<&str> = if ctx.profile.packages.drop_docs { DOC_EXCLUDES.to_vec() } else { Vec::new() };
    if ctx.profile.passwords.audit.is_some() {
        dpkg_options.extend(JOHN_EXCLUDES);
    }
    if ctx.profile.packages.drop_docs && !ctx.lock.packages.iter().any(|p| p.name.as_str() == "gcc") {
        dpkg_options.extend(PERL_HEADER_EXCLUDES);
    }
    if ctx.profile.packages.drop_docs && !ctx.profile.mail_gateway.enable {
        dpkg_options.extend(PERL_CJK_EXCLUDES);
    }
    let mmdebstrap_version = Cmd::new("mmdebstrap").arg("--version").run()?.stdout_text().trim().to_string();
    let initramfs = initramfs_files(&ctx.profile.kernel.initramfs_modules);
    let initramfs_key: String = initramfs.iter().map(|(path, text, mode)| format!("{path} {mode:o}\n{text}")).collect();
    let key = stage_key(&ctx.lock.render("")?, &dpkg_options, &mmdebstrap_version, &ctx.profile.mirror.suite, &initramfs_key);
    let root = ctx.root();
    std::fs::create_dir_all(&root)?;
    let reused = match ctx.cache.rootfs_mac(&key) {
        Some(stored) => unpack_verified(ctx, &key, &stored)?,
        None => false,
    };
    if reused {
        ui::step(&format!("package stage: reusing cached root tree {} (verified before it was unpacked)", short(&key)));
    } else {
        let timer = ui::Timed::start(&format!("package stage: mmdebstrap of {} packages, network cut", ctx.lock.packages.len()));
        bootstrap(ctx, &dpkg_options, &initramfs, &key)?;
        timer.done();
    }
    let installed = installed_packages(&root)?;
    let locked: Vec<String> = ctx.lock.packages.iter().map(|p| format!("{} {}", p.name, p.version)).collect();
    let missing: Vec<&String> = locked.iter().filter(|p| !installed.contains(p)).collect();
    let extra: Vec<&String> = installed.iter().filter(|p| !locked.contains(p)).collect();
    if !missing.is_empty() || !extra.is_empty() {
        bail!("the installed packages differ from the lock (not installed: {missing:?}; not locked: {extra:?}); run `rampart lock --update`");
    }
    let settings = json!({
        "packages": ctx.lock.packages.len(),
        "variant": "essential",
        "initramfs-modules": match &ctx.profile.kernel.initramfs_modules {
            InitramfsModules::Most => json!("most"),
            InitramfsModules::List(names) => json!(names),
        },
        "drop-docs": ctx.profile.packages.drop_docs,
        "dpkg-options": dpkg_options,
        "mmdebstrap": mmdebstrap_version,
        "network": "none (own network and mount namespaces)",
        "stage-key": key,
    });
    ctx.record("packages", true, settings);
    Ok(())
}

fn short(key: &str) -> &str {
    &key[..12.min(key.len())]
}

fn stage_key(lock_text: &str, dpkg_options: &[&str], mmdebstrap_version: &str, suite: &str, initramfs_hook: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [STAGE_VERSION, lock_text, &dpkg_options.join("\n"), mmdebstrap_version, suite, initramfs_hook] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// The initramfs script that mounts the fstab entries marked x-initrd.mount.
const INITRD_MOUNTS_SCRIPT: &str = include_str!("../../data/initramfs/rampart-initrd-mounts");
/// The initramfs script that finds the root on the disk the machine booted
/// from, and makes a copy booting for the first time a disk of its own.
const BOOT_DISK_SCRIPT: &str = include_str!("../../data/initramfs/rampart-boot-disk");
/// Gives a disk random identifiers (the initramfs, the installer).
pub const MAKE_DISK_UNIQUE: &str = include_str!("../../data/identity/make-disk-unique");
/// The initramfs hook that brings the boot-disk script's tools.
const BOOT_DISK_HOOK: &str = r#"#!/bin/sh
# rampart: the tools of the boot-disk script (scripts/local-top/rampart-boot-disk),
# in a directory of their own so that none replaces klibc's.
case "$1" in prereqs) exit 0 ;; esac
. /usr/share/initramfs-tools/hook-functions
set -e
mkdir -p "$DESTDIR/usr/lib/rampart-initrd"
for tool in /usr/bin/lsblk /usr/sbin/sfdisk /usr/sbin/tune2fs /usr/sbin/blockdev /usr/bin/tr /usr/bin/dd /usr/bin/rm; do
	copy_exec "$tool" /usr/lib/rampart-initrd/
done
cp /etc/initramfs-tools/rampart/make-disk-unique "$DESTDIR/usr/lib/rampart-initrd/make-disk-unique"
manual_add_modules efivarfs
"#;

/// Files laid into /etc/initramfs-tools before the kernel package builds
/// the initramfs (mmdebstrap's essential hook): a script that mounts the
/// fstab entries marked x-initrd.mount (the configuration partition) with
/// the root, and with `kernel.initramfs-modules` a list, MODULES=list and a
/// hook that adds the profile's modules, which udev in the initramfs loads
/// on demand.
fn initramfs_files(modules: &InitramfsModules) -> Vec<(&'static str, String, u32)> {
    let mut files = vec![
        ("scripts/local-bottom/rampart-initrd-mounts", INITRD_MOUNTS_SCRIPT.to_string(), 0o755),
        ("scripts/local-top/rampart-boot-disk", BOOT_DISK_SCRIPT.to_string(), 0o755),
        ("hooks/rampart-boot-disk", BOOT_DISK_HOOK.to_string(), 0o755),
        ("rampart/make-disk-unique", MAKE_DISK_UNIQUE.to_string(), 0o755),
    ];
    if let InitramfsModules::List(names) = modules {
        files.push(("conf.d/rampart.conf", "# rampart: only the modules named in hooks/rampart-modules\nMODULES=list\n".to_string(), 0o644));
        files.push((
            "hooks/rampart-modules",
            format!(
                "#!/bin/sh\n# rampart: the storage drivers this image boots from (kernel.initramfs-modules), and ext4,\n# the root's file system (built into the cloud kernel, a module of the generic one)\ncase \"$1\" in prereqs) exit 0 ;; esac\n. /usr/share/initramfs-tools/hook-functions\nfor module in ext4 {}; do manual_add_modules \"$module\"; done\n",
                names.join(" ")
            ),
            0o755,
        ));
    }
    files
}

/// Unpacks the cached package stage into the root once it is verified: the
/// tarball is copied into the build's private work directory and hashed in
/// the same read, the digest checked against the entry's HMAC under the
/// host's cache key (kept outside the cache: rewriting the tarball and its
/// stored digest together does not make a valid entry), and tar reads only
/// that copy. An entry that does not match is removed from the cache and
/// nothing of it is unpacked: false, build it again.
fn unpack_verified(ctx: &BuildContext, key: &str, stored_mac: &str) -> Result<bool> {
    let work = ctx.work();
    std::fs::create_dir_all(&work)?;
    let copy = work.join("package-stage.tar");
    let digest = copy_hashing(&ctx.cache.rootfs_path(key), &copy)?;
    if !ctx.cache.rootfs_matches(key, &digest, stored_mac)? {
        std::fs::remove_file(&copy)?;
        ctx.cache.discard_damaged_rootfs(key)?;
        return Ok(false);
    }
    Cmd::new("tar")
        .args(UNPACK)
        .arg("--file")
        .arg(&copy)
        .arg("--directory")
        .arg(ctx.root())
        .run()
        .context("while unpacking the package stage's root tree")?;
    std::fs::remove_file(&copy)?;
    Ok(true)
}

/// Copies `from` to a new file `to` and returns the sha256 of the bytes
/// written: one read, so what is hashed is what the copy holds.
pub(crate) fn copy_hashing(from: &Path, to: &Path) -> Result<String> {
    use std::io::{Read, Write};
    let mut source = std::fs::File::open(from).with_context(|| format!("while reading {}", from.display()))?;
    let mut target = std::fs::OpenOptions::new().write(true).create_new(true).open(to).with_context(|| format!("while writing {}", to.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = source.read(&mut buffer).with_context(|| format!("while reading {}", from.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        target.write_all(&buffer[..n]).with_context(|| format!("while writing {}", to.display()))?;
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Runs mmdebstrap against a local repository and stores its tarball in the
/// cache under `key`, by rename only when complete.
fn bootstrap(ctx: &BuildContext, dpkg_options: &[&str], initramfs: &[(&str, String, u32)], key: &str) -> Result<()> {
    let scratch = ctx.cache.scratch()?;
    let initramfs_dir = scratch.path().join("initramfs-tools");
    for (relative, text, mode) in initramfs {
        use std::os::unix::fs::PermissionsExt;
        let path = initramfs_dir.join(relative);
        std::fs::create_dir_all(path.parent().expect("has a parent"))?;
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode))?;
    }
    let temporary_root = crate::fsutil::memory_scratch_parent().map(|parent| crate::fsutil::owned_tempdir(&parent, ".rampart-mmdebstrap-")).transpose()?;
    let repo = scratch.path().join("repo");
    let suite = &ctx.profile.mirror.suite;
    let pool = repo.join("pool");
    let index_dir = repo.join(format!("dists/{suite}/main/binary-{ARCH}"));
    std::fs::create_dir_all(&pool)?;
    std::fs::create_dir_all(&index_dir)?;
    for package in &ctx.lock.packages {
        let name = format!("{}_{}_{}.deb", package.name, package.version.replace(':', "%3a"), package.arch);
        copy_verified(&ctx.cache.deb_path(&package.sha256), &pool.join(&name), package)?;
    }
    let packages = Cmd::new("apt-ftparchive").args(["packages", "pool"]).cwd(&repo).run()?;
    std::fs::write(index_dir.join("Packages"), &packages.stdout)?;
    let release = Cmd::new("apt-ftparchive")
        .arg("-o").arg(format!("APT::FTPArchive::Release::Suite={suite}"))
        .arg("-o").arg(format!("APT::FTPArchive::Release::Codename={suite}"))
        .arg("-o").arg("APT::FTPArchive::Release::Components=main")
        .arg("-o").arg(format!("APT::FTPArchive::Release::Architectures={ARCH}"))
        .arg("release")
        .arg(format!("dists/{suite}"))
        .cwd(&repo)
        .run()?;
    std::fs::write(repo.join(format!("dists/{suite}/Release")), &release.stdout)?;

    let names: Vec<&str> = ctx.lock.packages.iter().map(|p| p.name.as_str()).collect();
    let tarball = scratch.path().join("rootfs.tar");
    // mmdebstrap writes the tarball to a pipe that stores it for the cache
    // and unpacks it into the image root at the same time. tar stops reading
    // at the archive's end marker, before the padding after it: tee -p keeps
    // writing the whole stream to the file instead of dying of SIGPIPE.
    let pipeline = format!(
        "set -o pipefail; \"$@\" | tee -p \"$RAMPART_TARBALL\" | tar {} --directory \"$RAMPART_ROOT\"",
        UNPACK.iter().map(|a| shell_words::quote(a).into_owned()).collect::<Vec<_>>().join(" ")
    );
    let mut command = Cmd::new("bash")
        .arg("-c")
        .arg(pipeline)
        .arg("bash")
        .arg("mmdebstrap")
        .arg("--variant=essential")
        .arg("--mode=root")
        .arg("--format=tar")
        // merged /usr from the start, so usr-is-merged satisfies init-system-helpers
        // without pulling usrmerge and perl into the image.
        .arg("--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr")
        .arg("--essential-hook=mkdir -p \"$1/etc/initramfs-tools\"")
        .arg(format!("--essential-hook=sync-in {} /etc/initramfs-tools", initramfs_dir.display()))
        // postfix's maintainer script makes no configuration (its newaliases
        // needs a network interface, and the package stage has none): the
        // mail stage writes postfix's whole configuration itself.
        .arg("--essential-hook=echo 'postfix postfix/main_mailer_type select No configuration' | chroot \"$1\" debconf-set-selections")
        .arg(format!("--architectures={ARCH}"))
        .arg(format!("--include={}", names.join(",")))
        .arg("--aptopt=Acquire::Languages \"none\"");
    for option in dpkg_options {
        command = command.arg(format!("--dpkgopt={option}"));
    }
    command
        .arg(suite)
        .arg("-")
        // The only source: the private repository of checked copies. apt
        // checks each copy against the index made from them above.
        .arg(format!("deb [trusted=yes] copy://{} {suite} main", repo.display()))
        .env("RAMPART_TARBALL", &tarball)
        .env("RAMPART_ROOT", ctx.root())
        .env("SOURCE_DATE_EPOCH", ctx.source_date_epoch.to_string())
        // mmdebstrap's own temporary root lives in a directory of ours (in
        // memory when there is room), so an interrupted run's leftovers are
        // cleaned up with it.
        .env("TMPDIR", temporary_root.as_ref().map_or(scratch.path(), |dir| dir.path()))
        .without_network()
        .run_logged(ctx.log())
        .context("while installing the locked packages with mmdebstrap (network cut)")?;
    ctx.cache.store_rootfs(&tarball, key)
}

/// Copies a cached .deb into the private repository and checks the copy
/// against the lock. A copy, not a hard link: a link is the cache's inode,
/// which whoever can write the cache could change after the check; the copy
/// is in a 0700 directory of this run's that nothing else writes.
fn copy_verified(source: &Path, copy: &Path, package: &crate::lock::LockedPackage) -> Result<()> {
    std::fs::copy(source, copy).with_context(|| format!("while copying {} {} from the cache into the local repository", package.name, package.version))?;
    let actual = crate::fsutil::sha256_file(copy)?;
    if actual != package.sha256 {
        bail!(
            "{} {} changed in the cache after it was verified (the copy mmdebstrap would read has sha256 {actual}, the lock {}); run `rampart fetch`",
            package.name,
            package.version,
            package.sha256
        );
    }
    Ok(())
}

/// "name version" of every package dpkg has installed in the root.
pub fn installed_packages(root: &Path) -> Result<Vec<String>> {
    let status_path = root.join("var/lib/dpkg/status");
    let text = std::fs::read_to_string(&status_path).with_context(|| format!("while reading {}", status_path.display()))?;
    let mut installed = Vec::new();
    for stanza in text.split("\n\n") {
        let fields = crate::apt::parse_stanza(stanza);
        if fields.get("Status").is_some_and(|s| s.ends_with(" installed")) {
            if let (Some(name), Some(version)) = (fields.get("Package"), fields.get("Version")) {
                installed.push(format!("{name} {version}"));
            }
        }
    }
    installed.sort();
    Ok(installed)
}
