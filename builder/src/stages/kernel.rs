//! Kernel hardening control (seed steps 2 and 7): KSPP and CIS sysctls, the
//! kernel command-line options, a module blacklist, ctrl-alt-del and SysRq
//! off, AppArmor enforcing, the temporary directories mounted
//! nodev,nosuid,noexec, and no core dumps (limits, systemd, the shell). Checked at build time with the image's own
//! systemd-sysctl and modprobe. It never writes the network sysctls: those
//! are the firewall's (60-rampart-network.conf), which the profile's file
//! (90-rampart-profile.conf) outranks.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::build::context::BuildContext;
use crate::profile::kernel::{SysctlOrigin, DEFAULT_CMDLINE};
use crate::profile::Profile;

/// rampart's sysctls (those the profile does not set).
pub const DEFAULTS_FILE: &str = "etc/sysctl.d/50-rampart-kernel.conf";
/// The profile's `[kernel.sysctl]`: after every other file, so it wins.
pub const PROFILE_FILE: &str = "etc/sysctl.d/90-rampart-profile.conf";
const BLACKLIST_FILE: &str = "etc/modprobe.d/rampart-blacklist.conf";
/// What modprobe runs instead of loading a refused module: nothing, and
/// succeeds (the form CIS and Lynis recognise, `install X /bin/true`).
const REFUSED_INSTALL: &str = "install /bin/true";
/// procps's vendor file sets fs.protected_* weaker than rampart and sorts
/// after every numbered file; rampart's file sets all four, so it is masked.
const PROTECT_LINKS: &str = "99-protect-links.conf";

/// The fstab lines of the temporary directories (CIS 1.1.2): /tmp a tmpfs,
/// /var/tmp bound onto itself (it keeps its contents across boots), /dev/shm
/// (mounted by systemd before fstab is read) remounted by
/// systemd-remount-fs with these options, as is /dev itself (device nodes,
/// never programs: noexec).
pub fn fstab_lines(profile: &Profile) -> String {
    if !profile.kernel.hardening.secure_mounts {
        return String::new();
    }
    // A /var/tmp partition of its own is mounted with these options already.
    let var_tmp = if profile.image.separates("/var/tmp") {
        ""
    } else {
        "/var/tmp\t/var/tmp\tnone\tbind,nosuid,nodev,noexec\t0\t0\n"
    };
    format!(
        "# rampart: [kernel] secure-mounts: no devices, set-id programs or executables in temporary directories\n\
         tmpfs\t/tmp\ttmpfs\tmode=1777,strictatime,nosuid,nodev,noexec,size=50%\t0\t0\n\
         {var_tmp}\
         tmpfs\t/dev/shm\ttmpfs\tnosuid,nodev,noexec\t0\t0\n\
         devtmpfs\t/dev\tdevtmpfs\tnosuid,noexec,mode=0755\t0\t0\n"
    )
}

/// Every sysctl the booted image must show, by key: the firewall's, then
/// rampart's kernel defaults, then the profile's (which win).
pub fn expected_sysctls(profile: &Profile) -> BTreeMap<String, String> {
    let mut expected = BTreeMap::new();
    if profile.firewall.enable {
        for (key, value) in parse_assignments(crate::stages::firewall::SYSCTLS) {
            expected.insert(key, value);
        }
        if profile.gateway.enable {
            for (key, value) in crate::stages::gateway::FORWARDING_SYSCTLS {
                expected.insert(key.to_string(), value.to_string());
            }
        }
    }
    for (key, value, _) in profile.kernel.hardening.sysctls() {
        expected.insert(key, value);
    }
    expected
}

/// `key = value` lines of a sysctl.d text; keys in dotted form.
fn parse_assignments(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.split_once('='))
        .map(|(key, value)| {
            let key = key.trim().trim_start_matches('-');
            // sysctl.d: a key whose first separator is '/' uses '/' between
            // names and may have '.' inside one (VLAN interfaces).
            let key = if key.find('/').is_some_and(|slash| key.find('.').is_none_or(|dot| slash < dot)) {
                key.chars().map(|c| match c { '/' => '.', '.' => '/', c => c }).collect()
            } else {
                key.to_string()
            };
            (key, value.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .collect()
}

/// The value each key ends with after systemd-sysctl reads every file in
/// order (`--cat-config`), and the file that set it. Globs are left out:
/// systemd lets an explicit key win over any glob.
fn effective_sysctls(cat_config: &str) -> BTreeMap<String, (String, String)> {
    let mut effective = BTreeMap::new();
    let mut file = String::new();
    for line in cat_config.lines() {
        if let Some(path) = line.strip_prefix("# /") {
            file = format!("/{}", path.trim());
            continue;
        }
        for (key, value) in parse_assignments(line) {
            if !key.contains(['*', '?', '[']) {
                effective.insert(key, (value, file.clone()));
            }
        }
    }
    effective
}

fn file_name_only(at: &str) -> &str {
    at.rsplit('/').next().unwrap_or(at)
}

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    let hardening = ctx.profile.kernel.hardening.clone();
    let sysctls = hardening.sysctls();
    let modules = hardening.blacklisted_modules();
    if !hardening.defaults && sysctls.is_empty() && modules.is_empty() && !hardening.apparmor && !hardening.secure_mounts && hardening.core_dumps {
        ctx.record("kernel", false, json!({ "reason": "kernel.hardening, apparmor and secure-mounts are off and no sysctl or module is given" }));
        return Ok(());
    }
    let mut settings = serde_json::Map::new();

    // Sysctls: rampart's defaults early, the profile's last.
    let mut defaults = String::from("# rampart: [kernel] hardening sysctls (KSPP, CIS Debian 12 1.5); the profile's own are in 90-rampart-profile.conf\n");
    let mut own = String::from("# rampart: [kernel.sysctl] of the profile; read last, so these win over every other file\n");
    for (key, value, origin) in &sysctls {
        match origin {
            SysctlOrigin::Default(why) => defaults.push_str(&format!("# {why}\n{key} = {value}\n")),
            SysctlOrigin::Profile(at) => own.push_str(&format!("# {}\n{key} = {value}\n", file_name_only(at))),
        }
    }
    if hardening.defaults {
        ctx.install_file(DEFAULTS_FILE, defaults.as_bytes(), 0o644)?;
        if ctx.root().join("usr/lib/sysctl.d").join(PROTECT_LINKS).exists() {
            ctx.install_symlink(&format!("etc/sysctl.d/{PROTECT_LINKS}"), "/dev/null")?;
        }
    }
    if !hardening.sysctl.is_empty() {
        ctx.install_file(PROFILE_FILE, own.as_bytes(), 0o644)?;
    }
    if !sysctls.is_empty() {
        check_effective_sysctls(ctx, &sysctls)?;
        settings.insert(
            "sysctls".into(),
            json!(sysctls.iter().map(|(k, v, o)| json!({
                "key": k,
                "value": v,
                "file": format!("/{}", if matches!(o, SysctlOrigin::Profile(_)) { PROFILE_FILE } else { DEFAULTS_FILE }),
            })).collect::<Vec<_>>()),
        );
    }

    if hardening.defaults {
        let options = hardening.cmdline();
        ctx.kernel_cmdline_extra.extend(options.iter().map(|o| o.to_string()));
        settings.insert("kernel-cmdline".into(), json!(DEFAULT_CMDLINE.iter().map(|(o, why)| json!({ "option": o, "why": why })).collect::<Vec<_>>()));

        // ctrl-alt-del neither reboots (the target is masked) nor, pressed
        // seven times in two seconds, forces a reboot.
        ctx.install_symlink("etc/systemd/system/ctrl-alt-del.target", "/dev/null")?;
        ctx.install_file("etc/systemd/system.conf.d/50-rampart-kernel.conf", b"# rampart: [kernel] hardening: ctrl-alt-del does nothing\n[Manager]\nCtrlAltDelBurstAction=none\n", 0o644)?;
        settings.insert("ctrl-alt-del".into(), json!("ctrl-alt-del.target masked, CtrlAltDelBurstAction=none"));
    }

    if !modules.is_empty() {
        let mut text = String::from("# rampart: [kernel] modules that may never load (CIS 1.1.1, 3.2): not on demand, not by name\n");
        for module in &modules {
            text.push_str(&format!("blacklist {module}\ninstall {module} /bin/true\n"));
        }
        ctx.install_file(BLACKLIST_FILE, text.as_bytes(), 0o644)?;
        check_blacklist(ctx, &modules)?;
        settings.insert("module-blacklist".into(), json!(modules));
    }

    if hardening.apparmor {
        if !ctx.root().join("lib/systemd/system/apparmor.service").exists() {
            bail!("kernel.apparmor of {}: the image has no apparmor.service; is the apparmor package excluded?", ctx.profile.path.display());
        }
        let profiles = apparmor_profiles(ctx)?;
        settings.insert(
            "apparmor".into(),
            json!({
                "service": "apparmor.service (enabled; loads /etc/apparmor.d at boot)",
                "lsm": "the kernel's default LSM list has apparmor: no command-line option needed",
                "profiles": profiles,
            }),
        );
    }

    if hardening.secure_mounts {
        settings.insert("mounts".into(), json!({
            "/tmp": "tmpfs, nosuid,nodev,noexec (fstab)",
            "/var/tmp": if ctx.profile.image.separates("/var/tmp") { "a partition of its own, nosuid,nodev,noexec (fstab)" } else { "bind mount of itself, nosuid,nodev,noexec (fstab)" },
            "/dev/shm": "nosuid,nodev,noexec (fstab, applied by systemd-remount-fs)",
            "/dev": "nosuid,noexec (fstab, applied by systemd-remount-fs)",
        }));
    }
    if !hardening.core_dumps {
        refuse_core_dumps(ctx)?;
        settings.insert("core-dumps".into(), json!({
            "limits": "/etc/security/limits.conf: * hard core 0, * soft core 0 (PAM sessions)",
            "services": "DefaultLimitCORE=0 (systemd, every service)",
            "shells": "/etc/profile.d/rampart-core-dumps.sh: ulimit -c 0",
            "systemd-coredump": "/etc/systemd/coredump.conf: Storage=none, ProcessSizeMax=0",
            "set-id programs": "fs.suid_dumpable = 0",
        }));
    }
    ctx.record("kernel", true, serde_json::Value::Object(settings));
    Ok(())
}

/// No core files (CIS 1.5.4): a hard limit of 0 for sessions (PAM's
/// limits.conf, the main file, which scanners read) and for services
/// (systemd's default), the shells' soft limit, and systemd-coredump told
/// to keep nothing should a profile add it.
fn refuse_core_dumps(ctx: &BuildContext) -> Result<()> {
    const LIMITS: &str = "etc/security/limits.conf";
    let mut limits = std::fs::read_to_string(ctx.root().join(LIMITS)).unwrap_or_default();
    let block = "# rampart: [kernel] core-dumps = false: no core files (CIS 1.5.4)\n*\thard\tcore\t0\n*\tsoft\tcore\t0\n";
    if !limits.contains(block) {
        limits.push_str(block);
    }
    ctx.install_file(LIMITS, limits.as_bytes(), 0o644)?;
    ctx.install_file("etc/systemd/system.conf.d/50-rampart-core-dumps.conf", b"# rampart: [kernel] core-dumps = false\n[Manager]\nDefaultLimitCORE=0\n", 0o644)?;
    ctx.install_file("etc/profile.d/rampart-core-dumps.sh", b"# rampart: [kernel] core-dumps = false\nulimit -c 0\n", 0o644)?;
    ctx.install_file("etc/systemd/coredump.conf", b"# rampart: [kernel] core-dumps = false: systemd-coredump keeps nothing\n[Coredump]\nStorage=none\nProcessSizeMax=0\n", 0o644)
}

/// Reads the sysctl configuration the way the image's systemd-sysctl will at
/// boot and fails if another file would override one of rampart's values.
fn check_effective_sysctls(ctx: &BuildContext, sysctls: &[(String, String, SysctlOrigin)]) -> Result<()> {
    let output = ctx
        .in_root("/lib/systemd/systemd-sysctl")
        .args(["--cat-config", "--no-pager"])
        .run()
        .context("while reading the image's sysctl configuration with systemd-sysctl --cat-config")?;
    let effective = effective_sysctls(&output.stdout_text());
    for (key, value, origin) in sysctls {
        let wanted_from = match origin {
            SysctlOrigin::Default(_) => format!("/{DEFAULTS_FILE}"),
            SysctlOrigin::Profile(at) => format!("kernel.sysctl at {at}"),
        };
        match effective.get(key) {
            Some((found, _)) if found == value => {}
            Some((found, file)) => bail!("{key} = {value} ({wanted_from}) is overridden by {file}, which sets {found} and is read later by systemd-sysctl"),
            None => bail!("{key} = {value} ({wanted_from}) is not in the configuration systemd-sysctl reads"),
        }
    }
    Ok(())
}

/// The version of the kernel the disk boots, whose modules must be there.
pub fn modules_version(ctx: &BuildContext) -> Result<String> {
    let version = crate::stages::disk::boot_kernel_version(&ctx.root())?;
    if !ctx.root().join("lib/modules").join(&version).is_dir() {
        bail!("the image boots kernel {version}, but has no /lib/modules/{version}");
    }
    Ok(version)
}

/// What the image's modprobe would do to load `module`.
pub fn modprobe_dry_run(ctx: &BuildContext, version: &str, module: &str) -> Result<crate::process::Output> {
    ctx.in_root("modprobe")
        .args(["--dry-run", "--verbose", "--set-version", version, module])
        .run()
        .with_context(|| format!("while asking the image's modprobe about {module}"))
}

/// Asks the image's modprobe what loading each module would do.
fn check_blacklist(ctx: &BuildContext, modules: &[String]) -> Result<()> {
    let version = modules_version(ctx)?;
    for module in modules {
        let output = modprobe_dry_run(ctx, &version, module)?;
        if !output.stdout_text().contains(REFUSED_INSTALL) {
            bail!("kernel.module-blacklist: the image's modprobe would still load {module}:\n{}", output.stdout_text().trim());
        }
    }
    Ok(())
}

/// Checks that the image's kernel has each module of a modules-load.d file
/// and that nothing blacklists it, so systemd-modules-load cannot fail on it.
pub fn check_modules_load(ctx: &BuildContext, modules: &[&str]) -> Result<()> {
    let version = modules_version(ctx)?;
    for module in modules {
        let output = modprobe_dry_run(ctx, &version, module)?;
        if output.stdout_text().contains(REFUSED_INSTALL) {
            bail!("the image's modprobe refuses {module} (blacklisted), which systemd-modules-load is to load");
        }
    }
    Ok(())
}

/// The kernel's AppArmor feature set (libapparmor's flattened form, as a
/// booted image keeps it in /var/cache/apparmor/<hash>.0/.features), by the
/// kernel series it was read from. The policy cache is only valid for the
/// kernel whose features hash to the cache's directory name.
const APPARMOR_KERNEL_FEATURES: &[(&str, &str)] = &[("6.1.", include_str!("../../data/apparmor/kernel-features-6.1"))];
const APPARMOR_CACHE: &str = "/var/cache/apparmor";

/// Compiles the image's AppArmor profiles for its kernel at build time, so
/// apparmor.service loads them from the cache at boot instead of compiling
/// them first (seconds on the critical path of every first boot, far more
/// under emulation). Runs after the overlays, which may add profiles. A
/// kernel whose feature set rampart does not know keeps compiling at boot.
pub fn compile_apparmor_policy(ctx: &mut BuildContext) -> Result<()> {
    if !ctx.profile.kernel.hardening.apparmor {
        return Ok(());
    }
    let version = modules_version(ctx)?;
    let outcome = match APPARMOR_KERNEL_FEATURES.iter().find(|(series, _)| version.starts_with(series)) {
        None => json!({ "compiled": "at first boot", "why": format!("no AppArmor feature set known for kernel {version}") }),
        Some((series, features)) => {
            let features_file = ctx.root().join("tmp/rampart-apparmor-features");
            std::fs::write(&features_file, features)?;
            // The parser needs /proc (it sizes its job pool from it and
            // silently writes nothing without it).
            let result = ctx
                .in_root_with_proc("/sbin/apparmor_parser")
                .args(["--kernel-features", "/tmp/rampart-apparmor-features", "--write-cache", "--skip-kernel-load", "--quiet", "--cache-loc", APPARMOR_CACHE])
                .args(["--", "/etc/apparmor.d"])
                .run();
            let cache_dir = ctx
                .in_root("/sbin/apparmor_parser")
                .args(["--kernel-features", "/tmp/rampart-apparmor-features", "--print-cache-dir", "--cache-loc", APPARMOR_CACHE])
                .run();
            std::fs::remove_file(&features_file)?;
            result.context("while compiling the image's AppArmor profiles for its kernel")?;
            let cache_dir = cache_dir.context("while asking the image's apparmor_parser for its cache directory")?.stdout_text().trim().to_string();
            let profiles = apparmor_profiles(ctx)?;
            for profile in &profiles {
                let name = profile["file"].as_str().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_string();
                if !ctx.root().join(cache_dir.trim_start_matches('/')).join(&name).exists() {
                    bail!("apparmor_parser wrote no cache for /etc/apparmor.d/{name} in {cache_dir}; the profile would be compiled at every first boot");
                }
            }
            json!({ "compiled": "at build time", "cache": cache_dir, "kernel-features": format!("kernel {series}x (rampart's data/apparmor)"), "n-profiles": profiles.len() })
        }
    };
    if let Some(record) = ctx.records.iter_mut().rev().find(|r| r.stage == "kernel") {
        record.settings["apparmor"]["policy-cache"] = outcome;
    }
    Ok(())
}

/// The AppArmor profiles the image loads, with their mode.
fn apparmor_profiles(ctx: &BuildContext) -> Result<Vec<serde_json::Value>> {
    let dir = ctx.root().join("etc/apparmor.d");
    let mut profiles = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("while listing {}", dir.display()))? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let mode = if text.contains("flags=(complain") || text.contains("complain)") { "complain" } else { "enforce" };
        profiles.push(json!({ "file": format!("/etc/apparmor.d/{}", entry.file_name().to_string_lossy()), "mode": mode }));
    }
    profiles.sort_by(|a, b| a["file"].as_str().cmp(&b["file"].as_str()));
    Ok(profiles)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_file_systemd_reads_sets_the_value() {
        let cat = "# /usr/lib/sysctl.d/50-default.conf\nkernel.sysrq = 0x01b6\nnet.ipv4.conf.*.rp_filter = 2\n-net.ipv4.conf.all.accept_source_route = 0\n\n# /etc/sysctl.d/50-rampart-kernel.conf\n# why\nkernel.sysrq = 0\nfs/protected_fifos=2\n\n# /usr/lib/sysctl.d/99-protect-links.conf\nfs.protected_fifos = 1\n";
        let effective = effective_sysctls(cat);
        assert_eq!(effective["kernel.sysrq"], ("0".to_string(), "/etc/sysctl.d/50-rampart-kernel.conf".to_string()));
        assert_eq!(effective["fs.protected_fifos"], ("1".to_string(), "/usr/lib/sysctl.d/99-protect-links.conf".to_string()));
        assert_eq!(effective["net.ipv4.conf.all.accept_source_route"].0, "0");
        assert!(!effective.contains_key("net.ipv4.conf.*.rp_filter"));
    }

    #[test]
    fn slash_keys_are_read_as_dotted_ones() {
        assert_eq!(parse_assignments("net/ipv4/conf/eth0.100/rp_filter = 1"), vec![("net.ipv4.conf.eth0/100.rp_filter".to_string(), "1".to_string())]);
    }
}
