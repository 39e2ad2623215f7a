//! `rampart audit`: an outside auditor's verdict on the image that ships.
//! The image's qcow2 boots through OVMF (as `rampart test` boots it) with a
//! second, read-only disk holding Lynis from the lock (verified against it,
//! unpacked on the host, never installed in the image); the admin logs in
//! for the first time as a user would, and Lynis runs as root from that
//! disk in its own directory (`--usecwd`): no profile, plugin or setting of
//! the image's is read, and an image that carries a Lynis configuration is
//! refused. Its report and log come back over SSH (no getty's console) and
//! are kept beside the artifacts with `<name>.audit.json`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::qemu::{self, AccelChoice, Attached, Machine, MachineConfig, TestKey};
use super::{ensure_built, first_login, Artifacts, TestOptions};
use crate::fsutil::write_atomic;
use crate::lock::Lock;
use crate::lynis;
use crate::mirror::Mirror;
use crate::process::Cmd;
use crate::profile::Profile;
use crate::ui;

pub struct AuditOptions {
    pub out: PathBuf,
    pub cache: PathBuf,
    pub accel: AccelChoice,
    /// vCPUs of the audited machine (`--vcpus`).
    pub vcpus: u8,
    pub offline: bool,
    /// `--min-index`, over the profile's `audit.min-index`.
    pub min_index: Option<u8>,
}

/// The auditor disk's serial: the guest finds it at /dev/disk/by-id/virtio-rampart-auditor.
const AUDITOR_SERIAL: &str = "rampart-auditor";
/// Lynis under TCG takes 10 to 20 minutes.
const AUDIT_TIMEOUT: Duration = Duration::from_secs(45 * 60);
/// Where Lynis looks for settings besides its own directory: the image
/// must hold none of them.
const IMAGE_LYNIS_PATHS: &[&str] = &["/etc/lynis", "/usr/local/etc/lynis", "/usr/local/lynis", "/usr/share/lynis", "/usr/local/share/lynis", "/usr/local/include/lynis"];

/// Run as root in the guest: mounts the auditor read-only and runs Lynis
/// from it, its report and log in /run/rampart-audit.
fn audit_script() -> String {
    format!(
        r#"set -u
for dir in {paths}; do
    if [ -e "$dir" ]; then echo "rampart-audit: the image holds $dir; an image must not configure its auditor"; exit 3; fi
done
mkdir -p /run/rampart-auditor /run/rampart-audit
mountpoint -q /run/rampart-auditor || mount -o ro,nodev,nosuid /dev/disk/by-id/virtio-{AUDITOR_SERIAL} /run/rampart-auditor || exit 4
cd /run/rampart-auditor/lynis || exit 4
sh ./lynis audit system --usecwd --no-colors --quiet --plugindir ./plugins --logfile /run/rampart-audit/lynis.log --report-file /run/rampart-audit/lynis-report.dat >/run/rampart-audit/lynis.out 2>&1
status=$?
echo "rampart-audit: lynis exited $status"
tail -n 20 /run/rampart-audit/lynis.out
"#,
        paths = IMAGE_LYNIS_PATHS.join(" ")
    )
}

pub fn run(profile: Profile, mirror: Mirror, options: &AuditOptions) -> Result<lynis::Report> {
    qemu::require_host_tools()?;
    let Some(admin) = profile.users.first().map(|u| u.name.to_string()) else {
        bail!("{}: the profile has no [[users]] admin account, so the auditor has no way in", profile.path.display());
    };
    let min_index = options.min_index.or(profile.audit_min_index);
    let name = profile.name.to_string();
    let artifacts = Artifacts::in_dir(&options.out, &name);
    let test_options = TestOptions { scenario: None, out: options.out.clone(), cache: options.cache.clone(), accel: options.accel, vcpus: options.vcpus, offline: options.offline };
    ensure_built(&profile, mirror.clone(), &test_options, false)?;
    let lock = Lock::read(&profile.lock_path())?;
    if lock.auditor.is_empty() {
        bail!("{} locks no auditor (Lynis); run `rampart lock --update {}`", profile.lock_path().display(), profile.path.display());
    }
    let cache = crate::cache::Cache::open(&options.cache)?;
    let (missing, _) = cache.check(&lock.auditor)?;
    if !missing.is_empty() {
        if options.offline {
            let names: Vec<String> = missing.iter().map(|p| format!("{} {}", p.name, p.version)).collect();
            bail!("offline audit, but the auditor's packages are not in the cache {}: {}; run `rampart fetch {}` on a connected host first", cache.root().display(), names.join(", "), profile.path.display());
        }
        crate::cli::with_private_log("audit-fetch", |log| crate::fetch::fetch(&lock, &mirror, &cache, log))?;
    }

    crate::process::stop_on_signals()?;
    let work = crate::fsutil::owned_tempdir(&std::env::temp_dir(), "rampart-audit-")?;
    let auditor = auditor_disk(&lock, &cache, work.path())?;
    let image_sha256 = crate::fsutil::sha256_file(&artifacts.image)?;
    let accel = qemu::choose_accel(options.accel, options.vcpus, &artifacts.raw, work.path())?;
    // Not a test's key: nothing that looks for the test harness's machines finds this one.
    let key = TestKey::generate_with_comment(work.path(), "audit-admin", "rampart-audit-admin")?;
    let serial_log = options.out.join("audit.serial.log");
    let config = MachineConfig {
        name: "audit",
        image: &artifacts.image,
        disk_bytes: 4 << 30,
        memory_mib: 1024,
        extra_disks: &[],
        attached: vec![Attached { file: auditor, serial: AUDITOR_SERIAL, format: "raw", read_only: true }],
        accel,
        user: &admin,
        guest_ssh_port: profile.ssh.port.get(),
        key: &key,
        extra_args: Vec::new(),
        netns: None,
        prepared_disk: None,
        serial_log,
        tpm: None,
        console_input: false,
        secure_boot: true,
    };
    ui::step(&format!("audit ({}): booting {} with Lynis {} on a read-only disk beside it", accel.name(), artifacts.image.display(), lock.auditor.iter().map(|p| p.version.as_str()).collect::<Vec<_>>().join(" ")));
    let mut machine = Machine::boot(&config, work.path())?;
    let (elapsed, change_required) = machine.wait_for_ssh_shown("audit", Duration::from_secs(300))?;
    ui::step(&format!("audit: SSH ready {:.1} s after QEMU started", elapsed.as_secs_f64()));
    let session = first_login(&machine, &profile, &admin, &options.out, change_required).with_context(|| format!("the first login failed\n{}", machine.serial_tail(20)))?;
    let password = session.sudo_password.context("the secrets file has no password for the admin, so the auditor cannot become root")?;
    let as_root = |command: &str, timeout: Duration| -> Result<String> {
        let output = machine.ssh_as_root(command, &password, timeout)?.with_context(|| format!("timed out after {} s: {command}", timeout.as_secs()))?;
        if !output.status.success() {
            bail!("`{command}` failed in the guest ({}): {}{}", crate::process::describe_status(output.status), output.stdout_text(), String::from_utf8_lossy(&output.stderr));
        }
        Ok(output.stdout_text())
    };
    let started = Instant::now();
    let timer = ui::Timed::start("audit: Lynis audit system, as root, from the auditor's disk");
    let said = as_root(&audit_script(), AUDIT_TIMEOUT)?;
    timer.done();
    let seconds = started.elapsed().as_secs_f64();
    let report_text = as_root("cat /run/rampart-audit/lynis-report.dat", Duration::from_secs(60)).with_context(|| format!("Lynis wrote no report; it said:\n{said}"))?;
    let log_text = as_root("cat /run/rampart-audit/lynis.log", Duration::from_secs(120))?;
    drop(machine);
    let report = lynis::parse(&report_text).with_context(|| format!("while reading Lynis's report; it said:\n{said}"))?;

    write_atomic(&options.out.join(format!("{name}.lynis-report.dat")), report_text.as_bytes())?;
    write_atomic(&options.out.join(format!("{name}.lynis.log")), log_text.as_bytes())?;
    let record = json!({
        "image": format!("{name}.qcow2"),
        "image-sha256": image_sha256,
        "auditor": lock.auditor.iter().map(|p| json!({"name": p.name, "version": p.version, "sha256": p.sha256})).collect::<Vec<_>>(),
        "lynis-version": report.lynis_version,
        "hardening-index": report.hardening_index,
        "min-index": min_index,
        "tests-performed": report.tests_performed,
        "warnings": report.warnings,
        "suggestions": report.suggestions,
        "accel": accel.name(),
        "vcpus": accel.vcpus,
        "audit-seconds": seconds.round(),
    });
    write_atomic(&options.out.join(format!("{name}.audit.json")), format!("{}\n", serde_json::to_string_pretty(&record)?).as_bytes())?;
    super::refresh_html_report(&options.out, &name);
    for finding in &report.warnings {
        println!("WARNING     {:<10} {}", finding.test, finding.text);
    }
    for finding in &report.suggestions {
        println!("suggestion  {:<10} {}", finding.test, finding.text);
    }
    ui::step(&format!(
        "Lynis {}: hardening index {} ({} tests, {} warnings, {} suggestions) in {:.0} s; {name}.audit.json in {}",
        report.lynis_version,
        report.hardening_index,
        report.tests_performed,
        report.warnings.len(),
        report.suggestions.len(),
        seconds,
        options.out.display()
    ));
    let source = if options.min_index.is_some() { "--min-index".to_string() } else { format!("audit.min-index of {}", profile.path.display()) };
    meets_floor(report.hardening_index, min_index, &source).with_context(|| format!("the findings are in {}", options.out.join(format!("{name}.audit.json")).display()))?;
    Ok(report)
}

/// The verdict of the floor (`--min-index` or `audit.min-index`, named by `source`).
fn meets_floor(index: u8, floor: Option<u8>, source: &str) -> Result<()> {
    match floor {
        Some(floor) if index < floor => bail!("the hardening index {index} is below the minimum {floor} ({source})"),
        _ => Ok(()),
    }
}

/// The auditor's read-only ext4 disk: each locked auditor .deb copied out
/// of the cache and checked against the lock in the same read, unpacked,
/// and Lynis laid out as its own standalone directory `lynis/` (the
/// script, include/, db/, plugins/, default.prf).
fn auditor_disk(lock: &Lock, cache: &crate::cache::Cache, work: &Path) -> Result<PathBuf> {
    if let Some(extra) = lock.auditor.iter().find(|p| p.name != "lynis") {
        bail!("the auditor needs {} {}, which the image does not have; rampart brings only Lynis itself to the image", extra.name, extra.version);
    }
    let unpacked = work.join("auditor-unpacked");
    std::fs::create_dir_all(&unpacked)?;
    for package in &lock.auditor {
        let copy = work.join(format!("{}.deb", package.name));
        let digest = crate::stages::packages::copy_hashing(&cache.deb_path(&package.sha256), &copy)?;
        if digest != package.sha256 {
            bail!("the cached .deb of {} {} has sha256 {digest}, and the lock records {}: the cache was changed; run `rampart fetch` again", package.name, package.version, package.sha256);
        }
        Cmd::new("dpkg-deb").arg("-x").arg(&copy).arg(&unpacked).run().with_context(|| format!("while unpacking {}", package.name))?;
    }
    let tree = work.join("auditor-tree");
    let lynis = tree.join("lynis");
    std::fs::create_dir_all(&lynis)?;
    for (from, to) in [("usr/sbin/lynis", "lynis"), ("usr/share/lynis/include", "include"), ("usr/share/lynis/db", "db"), ("etc/lynis/plugins", "plugins"), ("etc/lynis/default.prf", "default.prf")] {
        std::fs::rename(unpacked.join(from), lynis.join(to)).with_context(|| format!("the Lynis package has no {from}"))?;
    }
    let disk = work.join("auditor.ext4");
    std::fs::File::create(&disk)?.set_len(64 << 20)?;
    Cmd::new("mkfs.ext4")
        .args(["-q", "-F", "-O", "^has_journal", "-L", "rampart-audit", "-E", "root_owner=0:0", "-d"])
        .arg(&tree)
        .arg(&disk)
        .run()
        .context("while making the auditor's disk")?;
    Ok(disk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_below_the_floor_fails_naming_where_the_floor_was_set() {
        assert!(meets_floor(78, None, "-").is_ok());
        assert!(meets_floor(78, Some(78), "-").is_ok());
        let error = meets_floor(78, Some(90), "audit.min-index of profiles/baseline.toml").unwrap_err().to_string();
        assert_eq!(error, "the hardening index 78 is below the minimum 90 (audit.min-index of profiles/baseline.toml)");
    }
}
