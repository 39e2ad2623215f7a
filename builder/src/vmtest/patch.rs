//! Patching a machine installed from an older golden image: a machine with
//! `image-lock = "point-release"` boots the profile's image built from the
//! point release's lock (the profile's package set without the security
//! suite), with two disks attached: the medium `rampart patch` made from
//! that lock to the profile's, and a copy of it with one byte flipped. The
//! `patch-medium-applies` check applies them with `rampart-patch` and
//! proves the machine patched.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::qemu::{Attached, Machine};
use super::scenario::Check;
use super::{failed, show, CheckEnv, CheckFailure, TestOptions};
use crate::build::{self, BuildOptions};
use crate::lock::{self, Lock};
use crate::mirror::Mirror;
use crate::patch::{self, PatchOptions};
use crate::profile::Profile;
use crate::secureboot::archive::ArchiveKey;
use crate::ui;
use sha2::Digest;

pub const MEDIUM_SERIAL: &str = "rampart-patch";
pub const DAMAGED_SERIAL: &str = "rampart-damaged";
pub const FOREIGN_SERIAL: &str = "rampart-foreign";
pub const OTHER_LOCK_SERIAL: &str = "rampart-other-lock";
const POWER_OFF: Duration = Duration::from_secs(180);

/// The point release's image and the two media.
pub struct PatchSetup {
    /// `<name>.qcow2` of the point release's build.
    pub image: PathBuf,
    pub medium: PathBuf,
    /// One byte of its payload flipped.
    pub damaged: PathBuf,
    /// Its seal signed by another site's archive key.
    pub foreign: PathBuf,
    /// Its seal, signed by the site, naming another lock to start from.
    pub other_lock: PathBuf,
    /// The profile's lock, which the machine must run once patched.
    pub to: Lock,
    /// The packages the new lock changes or adds.
    pub changed: std::collections::BTreeSet<String>,
    pub kernel: String,
}

impl PatchSetup {
    pub fn media(&self) -> Vec<Attached> {
        [(&self.medium, MEDIUM_SERIAL), (&self.damaged, DAMAGED_SERIAL), (&self.foreign, FOREIGN_SERIAL), (&self.other_lock, OTHER_LOCK_SERIAL)]
            .into_iter()
            .map(|(file, serial)| Attached { file: file.clone(), serial, format: "raw", read_only: true })
            .collect()
    }
}

/// Locks the point release, builds its image beside `--out` (with the
/// profile's keys and secrets), and makes the media. The profile's own
/// build in `--out` must be current.
pub fn prepare(profile: &Profile, mirror: &Mirror, options: &TestOptions, work: &Path) -> Result<PatchSetup> {
    if options.offline {
        bail!("a machine with image-lock = \"point-release\" needs the mirror to lock the point release, so its scenario cannot run --offline; run the others with --scenario NAME");
    }
    let name = profile.name.as_str();
    let mut old_name = options.out.file_name().context("--out has no name")?.to_os_string();
    old_name.push(".point-release");
    let old_out = options.out.with_file_name(&old_name);
    old_name.push(".lock");
    let lock_path = options.out.with_file_name(old_name);
    let cache = crate::cache::Cache::open(&options.cache)?;
    let timer = ui::Timed::start("locking the point release (the profile's packages without the security suite)");
    let point_release = crate::cli::with_private_log("test", |log| lock::resolve_point_release(profile, mirror, log, Some(&cache)))?;
    point_release.write(&lock_path, name)?;
    timer.done();
    let to = Lock::read(&profile.lock_path())?;
    let changed: std::collections::BTreeSet<String> = patch::changed_packages(&point_release, &to).iter().map(|p| p.name.clone()).collect();
    ui::step(&format!("the point release's lock differs from {} in {} packages", profile.lock_path().display(), changed.len()));
    build::build(
        profile.clone(),
        mirror.clone(),
        &BuildOptions {
            offline: false,
            out: old_out.clone(),
            cache: options.cache.clone(),
            secrets: Some(options.out.join(format!("{name}.secrets"))),
            keys: Some(options.out.join(format!("{name}.{}", build::KEYS_SUFFIX))),
            installer: false,
            lock: Some(lock_path.clone()),
        },
    )
    .context("while building the point release's image")?;
    let medium = work.join("patch-medium.img");
    patch::make(
        profile.clone(),
        mirror.clone(),
        &PatchOptions { from: lock_path, output: medium.clone(), out: options.out.clone(), cache: options.cache.clone(), offline: false, keys: None },
    )?;
    let damaged = work.join("patch-medium-damaged.img");
    std::fs::copy(&medium, &damaged)?;
    flip_byte(&damaged, patch::PAYLOAD_OFFSET + (std::fs::metadata(&damaged)?.len() - patch::PAYLOAD_OFFSET) / 2)?;
    let site = crate::secureboot::archive::load(&options.out.join(format!("{name}.{}", build::KEYS_SUFFIX)))?;
    let stranger_keys = work.join("another-site.keys");
    std::fs::create_dir_all(&stranger_keys)?;
    crate::secureboot::archive::make_if_missing(&stranger_keys, name)?;
    let stranger = crate::secureboot::archive::load(&stranger_keys)?;
    let foreign = work.join("patch-medium-foreign.img");
    resealed(&medium, &foreign, &site, &stranger, |text| text.to_string(), to.source_date_epoch)?;
    let other_lock = work.join("patch-medium-other-lock.img");
    let another = hex::encode(sha2::Sha256::digest(b"another lock"));
    resealed(&medium, &other_lock, &site, &site, |text| text.lines().map(|l| if l.starts_with("From-Lock: ") { format!("From-Lock: {another}\n") } else { format!("{l}\n") }).collect(), to.source_date_epoch)?;
    Ok(PatchSetup { image: old_out.join(format!("{name}.qcow2")), medium, damaged, foreign, other_lock, kernel: patch::kernel_release(&to)?, to, changed })
}

/// A copy of `medium` whose seal says `edit(what the seal said)`, signed by
/// `signer`.
fn resealed(medium: &Path, copy: &Path, site: &ArchiveKey, signer: &ArchiveKey, edit: impl Fn(&str) -> String, epoch: i64) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    std::fs::copy(medium, copy)?;
    let mut file = std::fs::OpenOptions::new().read(true).write(true).open(copy)?;
    let mut seal = vec![0u8; patch::SEAL_SIZE as usize];
    file.seek(SeekFrom::Start(patch::SEAL_OFFSET))?;
    file.read_exact(&mut seal)?;
    let signed: Vec<u8> = seal.into_iter().take_while(|b| *b != 0).collect();
    let text = String::from_utf8(site.verify(&signed)?)?;
    let mut new = signer.clearsign(edit(&text).as_bytes(), epoch)?;
    new.resize(patch::SEAL_SIZE as usize, 0);
    file.seek(SeekFrom::Start(patch::SEAL_OFFSET))?;
    file.write_all(&new)?;
    Ok(())
}

fn flip_byte(file: &Path, offset: u64) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(file)?;
    let mut byte = [0u8; 1];
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(&mut byte)?;
    byte[0] ^= 0x01;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(&byte)?;
    Ok(())
}

/// A root command's output (stdout and stderr together, then `exit N`):
/// the check judges the status itself.
pub(super) fn root_status(machine: &Machine, env: &CheckEnv, command: &str, timeout: Duration) -> Result<String, CheckFailure> {
    let password = env.session.sudo_password.as_deref().ok_or_else(|| failed("the check needs the admin's password for sudo, and the secrets file has none", String::new()))?;
    let wrapped = format!("{{ {command}; }} 2>&1; echo \"exit $?\"");
    match machine.ssh_as_root(&wrapped, password, timeout) {
        Ok(Some(output)) if output.status.success() => Ok(output.stdout_text()),
        Ok(Some(output)) => Err(failed(format!("`{command}` could not be run as root"), show(&wrapped, &output))),
        Ok(None) => Err(failed(format!("`{command}` timed out after {} s", timeout.as_secs()), String::new())),
        Err(error) => Err(failed("could not run ssh", format!("{error:#}"))),
    }
}

/// Which packages of `lock` the machine does not hold at the locked
/// version, from `dpkg-query -W -f '${Package} ${Version} ${db:Status-Abbrev}\n'`.
pub fn packages_not_at_lock(lock: &Lock, installed: &str) -> Vec<String> {
    let held: std::collections::BTreeMap<&str, (&str, &str)> = installed
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ' ');
            Some((fields.next()?, (fields.next()?, fields.next()?.trim_end())))
        })
        .collect();
    lock.packages
        .iter()
        .filter(|p| held.get(p.name.as_str()) != Some(&(p.version.as_str(), "ii")))
        .map(|p| format!("{} {} (machine: {})", p.name, p.version, held.get(p.name.as_str()).map(|(v, s)| format!("{v} {s}")).unwrap_or_else(|| "not installed".into())))
        .collect()
}

/// The paths AIDE reports as added, removed or changed.
pub fn aide_reported_paths(report: &str) -> std::collections::BTreeSet<String> {
    report
        .lines()
        .filter(|line| line.starts_with(|c: char| c.is_ascii_lowercase()))
        .filter_map(|line| line.split_once(": /").map(|(_, path)| format!("/{}", path.trim_end())))
        .collect()
}

/// A guest command: rampart-patch from the disk `serial`, in a session of
/// its own, killed whole (SIGKILL) once three packages of the medium are
/// at their new versions (dpkg is under way), and waited for until every
/// process of it is gone; prints what it printed. (procps' kill: dash's
/// own takes no process group after `--`.)
fn cut_off_run(serial: &str) -> String {
    let list = "/var/cache/rampart-patch/rampart-patch/install";
    format!(
        "setsid sh -c 'exec rampart-patch /dev/disk/by-id/virtio-{serial}' > /run/cut.log 2>&1 < /dev/null & pid=$!; \
         i=0; until [ \"$(dpkg-query -W -f '${{Package}}=${{Version}}\\n' | grep -c -x -F -f {list} 2>/dev/null)\" -ge 3 ] 2>/dev/null; do i=$((i+1)); [ $i -lt 900 ] || break; sleep 1; done; \
         /bin/kill -KILL -- -$pid; i=0; while pgrep -g $pid > /dev/null && [ $i -lt 120 ]; do i=$((i+1)); sleep 1; done; cat /run/cut.log; rm -f /run/cut.log"
    )
}

/// Runs `before` (if any), powers the machine off and on again, and waits
/// until it answers SSH.
fn power_cycle(machine: &mut Machine, env: &CheckEnv, before: &str, timeout: Duration) -> Result<(), CheckFailure> {
    let fail = |what: &'static str| move |e: anyhow::Error| failed(what, format!("{e:#}"));
    let command = if before.is_empty() { "systemctl poweroff".to_string() } else { format!("{before}; systemctl poweroff") };
    // The connection drops as the machine goes down: its status says nothing.
    let _ = root_status(machine, env, &command, Duration::from_secs(120));
    machine.wait_for_power_off(POWER_OFF).map_err(fail("the machine did not power off"))?;
    machine.restart().map_err(fail("could not start the machine again"))?;
    machine.wait_for_ssh(timeout).map_err(fail("the machine did not come back after its restart"))?;
    Ok(())
}

const INSTALLED: &str = "dpkg-query -W -f '${Package} ${Version} ${db:Status-Abbrev}\\n'";
const AIDE_CHECK: &str = "aide --check --config /etc/rampart/aide/aide.conf";
/// A file no patch touches, changed after the patch.
const TAMPERED: &str = "/usr/bin/false";

pub fn patch_medium_applies(machine: &mut Machine, check: &Check, env: &CheckEnv, setup: &PatchSetup) -> Result<(), CheckFailure> {
    let short = Duration::from_secs(120);
    let state = format!("{INSTALLED}; sha256sum /etc/rampart/aide/aide.db.gz");
    let before = root_status(machine, env, &state, short)?;

    // What the machine reports, kept for `rampart outdated --installed`.
    let report = root_status(machine, env, "rampart-patch --report", short)?;
    let report = report.trim_end().strip_suffix("exit 0").ok_or_else(|| failed("rampart-patch --report failed", report.clone()))?.to_string();
    std::fs::write(env.out.join(format!("{}-{}.installed.txt", env.scenario.name, machine.name)), &report).map_err(|e| failed("could not keep the machine's report", e.to_string()))?;
    let reported = lock::parse_installed(&report, "the machine's report").map_err(|e| failed("the machine's report does not read", format!("{e:#}")))?;
    let lacking: std::collections::BTreeSet<String> = lock::outdated(&reported, &setup.to).into_iter().map(|u| u.name).collect();
    let missing: std::collections::BTreeSet<String> = lock::describe_changes(&reported, &setup.to).iter().filter_map(|l| l.strip_prefix("+ ")).filter_map(|l| l.split(' ').next()).map(str::to_string).collect();
    let explained: std::collections::BTreeSet<String> = lacking.union(&missing).cloned().collect();
    if explained != setup.changed {
        return Err(failed(
            "what the machine's report lacks against the new lock is not what the patch changes",
            format!("lacking or missing: {explained:?}\nchanged: {:?}\n{report}", setup.changed),
        ));
    }

    // Refused before anything changes: a flipped byte, another site's
    // signature, a medium for another lock, a /var too full.
    let fill = "avail=$(df -Pk /var | awk 'NR == 2 { print $4 }'); fallocate -l $(( (avail - 102400) * 1024 )) /var/rampart-test-fill";
    for (what, command, says) in [
        ("the medium with one byte flipped", format!("rampart-patch /dev/disk/by-id/virtio-{DAMAGED_SERIAL}"), "does not match its seal"),
        ("the medium signed by another site's key", format!("rampart-patch /dev/disk/by-id/virtio-{FOREIGN_SERIAL}"), "not signed by this site's archive key"),
        ("the medium for another lock", format!("rampart-patch /dev/disk/by-id/virtio-{OTHER_LOCK_SERIAL}"), "this machine runs lock"),
        ("the medium, with /var too full for it", format!("{fill} && rampart-patch /dev/disk/by-id/virtio-{MEDIUM_SERIAL}; s=$?; rm -f /var/rampart-test-fill; (exit $s)"), "/var has"),
    ] {
        let refused = root_status(machine, env, &command, short)?;
        if !refused.trim_end().ends_with("exit 1") || !refused.contains(says) {
            return Err(failed(format!("rampart-patch did not refuse {what}"), refused));
        }
    }
    let after_refusal = root_status(machine, env, &state, short)?;
    if after_refusal != before {
        return Err(failed("refusing the media changed the packages or the AIDE database", format!("before:\n{before}\nafter:\n{after_refusal}")));
    }

    // The medium rampart patch made, its run cut off (every process of it
    // killed) while dpkg unpacks, as a crash would: the machine is between
    // the two locks, its boot path untouched.
    let started = std::time::Instant::now();
    let cut = root_status(machine, env, &format!("{}; {INSTALLED}", cut_off_run(MEDIUM_SERIAL)), check.timeout)?;
    let halfway = packages_not_at_lock(&setup.to, &cut);
    if !cut.contains("apt: installing") || cut.contains("packages installed") || halfway.is_empty() {
        return Err(failed("the run meant to be cut off during apt was not", cut));
    }
    // Run again with the same medium, it resumes and finishes.
    let applied = root_status(machine, env, &format!("rampart-patch /dev/disk/by-id/virtio-{MEDIUM_SERIAL}"), check.timeout)?;
    if !applied.trim_end().ends_with("exit 0") || !applied.contains("resuming the interrupted patch") || !applied.contains("reboot required") {
        return Err(failed("rampart-patch did not resume the cut-off patch and finish it (or did not ask for the reboot its new kernel needs)", applied));
    }
    ui::step(&format!("{}: patched, ready for reboot {:.1} s after rampart-patch first started (cut off once while {} packages were not yet at the new lock)", machine.name, started.elapsed().as_secs_f64(), halfway.len()));
    let again = root_status(machine, env, &format!("rampart-patch /dev/disk/by-id/virtio-{MEDIUM_SERIAL}"), short)?;
    if !again.trim_end().ends_with("exit 0") || !again.contains("already runs lock") {
        return Err(failed("the same medium applied twice did something the second time", again));
    }

    power_cycle(machine, env, "", check.timeout)?;

    let running = root_status(machine, env, "uname -r", short)?;
    if running.lines().next() != Some(setup.kernel.as_str()) {
        return Err(failed(format!("the patched machine does not run kernel {}", setup.kernel), running));
    }
    let installed = root_status(machine, env, INSTALLED, short)?;
    let wrong = packages_not_at_lock(&setup.to, &installed);
    if !wrong.is_empty() {
        return Err(failed(format!("{} packages are not at the new lock's version", wrong.len()), wrong.join("\n")));
    }
    const ESP_FILES: &str = "mount -o ro /dev/disk/rampart/esp /mnt && find /mnt -type f | sort && cat /mnt/loader/loader.conf; umount /mnt";
    let esp = root_status(machine, env, ESP_FILES, short)?;
    if !esp.contains("/mnt/EFI/Linux/rampart.efi\n") || !esp.contains("/mnt/EFI/Linux/rampart-previous.efi\n") {
        return Err(failed("the ESP does not hold the new boot image and the previous one as its fallback", esp));
    }
    // A kernel dpkg installs with Secure Boot on: the hook says why it will
    // not boot and writes nothing unsigned to the ESP.
    let hook = root_status(machine, env, &format!("/etc/kernel/postinst.d/zz-rampart-boot {}", setup.kernel), short)?;
    if !hook.trim_end().ends_with("exit 0") || !hook.contains("will not boot") || !hook.contains("rampart-patch DEVICE") {
        return Err(failed("with Secure Boot on, the kernel hook did not say why a kernel from dpkg will not boot", hook));
    }
    let esp_after = root_status(machine, env, ESP_FILES, short)?;
    if esp_after != esp {
        return Err(failed("with Secure Boot on, the kernel hook changed the ESP", format!("before:\n{esp}\nafter:\n{esp_after}")));
    }
    let logged = root_status(
        machine,
        env,
        "journalctl -t rampart-patch -o cat --no-pager | grep -c 'patched to lock'; grep -c 'rampart-patch: patched to lock' /var/log/audit/audit.log; grep -c 'rampart-patch: patched to lock' /var/log/auth.log",
        short,
    )?;
    let counts: Vec<&str> = logged.lines().take(3).collect();
    if counts.len() != 3 || counts.contains(&"0") {
        return Err(failed("the patch is not in the journal, the audit log and syslog (counts: journal, audit, auth.log)", logged));
    }
    // And at the remote log host, when the profile forwards to the lab's.
    if let Some(collector) = env.outside.and_then(|(lab, _)| lab.collector.as_ref()) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !collector.received().contains("rampart-patch: patched to lock") {
            if std::time::Instant::now() >= deadline {
                return Err(failed("the patch's log lines did not reach the remote log host", collector.received().lines().rev().take(20).collect::<Vec<_>>().join("\n")));
            }
            crate::process::pause(Duration::from_secs(1));
        }
    }

    // AIDE, against the database the patch made: exactly the file changed
    // after it is reported.
    // The original waits in /run, which AIDE does not watch.
    let aide = root_status(machine, env, &format!("cp -p {TAMPERED} /run/tampered.orig; cp /usr/bin/true {TAMPERED}; {AIDE_CHECK}; s=$?; cp -p /run/tampered.orig {TAMPERED}; rm /run/tampered.orig; (exit $s)"), check.timeout)?;
    let reported = aide_reported_paths(&aide);
    if !aide.trim_end().ends_with("exit 4") || reported.iter().collect::<Vec<_>>() != [TAMPERED] {
        return Err(failed(format!("after the patch AIDE should report {TAMPERED} alone, changed"), aide));
    }
    ui::step(&format!("{}: patched to kernel {}, {} packages at the new lock's versions, AIDE reports {TAMPERED} alone", machine.name, setup.kernel, setup.to.packages.len()));
    Ok(())
}

/// A local repository in the guest: the medium's, read from its payload
/// partition with debugfs (signed with the site's archive key, which the
/// image trusts), and apt pointed at it alone.
const LOCAL_REPOSITORY: &str = "rm -rf /var/cache/local-repo && mkdir -p /var/cache/local-repo/lists/partial \
    && debugfs -R 'rdump /rampart-patch/repo /var/cache/local-repo' /dev/disk/by-id/virtio-rampart-patch-part2 2>/dev/null \
    && echo 'deb [signed-by=/etc/rampart/patch/archive.pgp] file:/var/cache/local-repo/repo rampart main' > /run/local-repo.list";
const LOCAL_APT: &str = "apt-get -o Dir::Etc::SourceList=/run/local-repo.list -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists=/var/cache/local-repo/lists -o Acquire::Languages=none";

pub fn kernel_from_apt_boots(machine: &mut Machine, check: &Check, env: &CheckEnv, setup: &PatchSetup) -> Result<(), CheckFailure> {
    let short = Duration::from_secs(120);
    let secure_boot = root_status(machine, env, "od -An -tu1 -j4 -N1 /sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c", short)?;
    if secure_boot.split_whitespace().next() != Some("0") {
        return Err(failed("kernel-from-apt-boots needs a machine with Secure Boot off (secure-boot = false)", secure_boot));
    }
    let old = root_status(machine, env, "uname -r", short)?;
    if old.lines().next() == Some(setup.kernel.as_str()) {
        return Err(failed(format!("the machine already runs kernel {}: nothing to prove", setup.kernel), old));
    }
    let meta = setup.to.packages.iter().find(|p| p.name == env.profile.kernel.package.to_string()).ok_or_else(|| failed("the new lock has no kernel package", String::new()))?;
    let install = format!(
        "{LOCAL_REPOSITORY} && DEBIAN_FRONTEND=noninteractive {LOCAL_APT} update -q && DEBIAN_FRONTEND=noninteractive {LOCAL_APT} install -y --no-install-recommends {}={}",
        meta.name, meta.version
    );
    let installed = root_status(machine, env, &install, check.timeout)?;
    if !installed.trim_end().ends_with("exit 0") || !installed.contains(&format!("kernel {} is the default boot entry", setup.kernel)) {
        return Err(failed("apt did not install the new kernel, or its hook did not make it the default boot entry", installed));
    }
    power_cycle(machine, env, "rm -rf /var/cache/local-repo /run/local-repo.list", check.timeout)?;
    let running = root_status(machine, env, "uname -r; mount -o ro /dev/disk/rampart/esp /mnt && cat /mnt/loader/loader.conf && ls /mnt/EFI/Linux; umount /mnt", short)?;
    if running.lines().next() != Some(setup.kernel.as_str()) {
        return Err(failed(format!("after the restart the machine does not run kernel {} from its boot loader entry", setup.kernel), running));
    }
    if !running.contains(&format!("default rampart-{}.conf", setup.kernel)) || !running.contains("rampart.efi") {
        return Err(failed("the loader does not default to the new entry with the signed image kept as the fallback", running));
    }
    ui::step(&format!("{}: kernel {} from apt booted through its boot loader entry (Secure Boot off)", machine.name, setup.kernel));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aide_reports_are_read_for_their_paths() {
        let report = "Start timestamp: 2026-12-05\nSummary:\n  Total number of entries:\t1000\n  Changed entries:\t1\n\n---------------------------------------------------\nChanged entries:\n---------------------------------------------------\n\nf   ...    .C... : /usr/bin/false\n\nDetailed information about changes:\nFile: /usr/bin/false\n  SHA512    : abc | def\n";
        assert_eq!(aide_reported_paths(report).into_iter().collect::<Vec<_>>(), ["/usr/bin/false"]);
        assert!(aide_reported_paths("AIDE found NO differences\n").is_empty());
    }
}
