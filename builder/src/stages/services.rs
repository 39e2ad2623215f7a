//! Minimal-services control (seed step 4, "Services"): the profile's
//! allow-list becomes a systemd preset policy ("enable" for each allowed
//! unit, "disable *" for the rest) applied by the image's own
//! `systemctl preset-all`; every unit left disabled is then masked, socket
//! and timer units included. Only the profile's gettys get a login prompt.

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::build::context::BuildContext;
use crate::profile::{Profile, ServicesSpec};

const PRESET: &str = "etc/systemd/system-preset/00-rampart.preset";

/// Units rampart's own stages configure, added to the profile's allow-list
/// (where the image has them): a profile without `[services]` still boots to
/// a machine one can reach.
pub fn implied_units(profile: &Profile) -> Vec<(String, &'static str)> {
    let mut units = vec![
        ("ssh.service".to_string(), "[ssh]"),
        (crate::stages::firstboot::HOST_KEYS_UNIT.to_string(), "first-boot SSH host keys"),
        (crate::stages::firstboot::KEYS_RECORD_UNIT.to_string(), "first-boot record of the provisioned SSH keys"),
        ("systemd-networkd.service".to_string(), "networking (DHCP)"),
        ("systemd-resolved.service".to_string(), "name resolution"),
    ];
    if profile.firewall.enable {
        units.push(("nftables.service".to_string(), "[firewall]"));
    }
    if profile.logging.enable {
        units.push(("rsyslog.service".to_string(), "[logging]"));
        units.push(("logrotate.timer".to_string(), "[logging] rotation"));
        units.push(("logrotate.service".to_string(), "[logging] rotation, started by its timer"));
    }
    if profile.auditd.enable {
        units.push(("auditd.service".to_string(), "[auditd]"));
    }
    if profile.integrity.enable {
        units.push((crate::stages::integrity::CHECK_TIMER.to_string(), "[integrity]"));
        units.push((crate::stages::integrity::CHECK_SERVICE.to_string(), "[integrity], started by its timer"));
        if profile.integrity.packages {
            units.push((crate::stages::integrity::PACKAGES_TIMER.to_string(), "[integrity] packages"));
            units.push((crate::stages::integrity::PACKAGES_SERVICE.to_string(), "[integrity] packages, started by its timer"));
        }
    }
    if profile.backups.enable {
        units.push((crate::stages::backups::TIMER.to_string(), "[backups]"));
        units.push((crate::stages::backups::SERVICE.to_string(), "[backups], started by its timer"));
    }
    if profile.kernel.hardening.apparmor {
        units.push(("apparmor.service".to_string(), "[kernel] apparmor"));
    }
    if profile.accounting.processes {
        units.push((crate::stages::accounting::SERVICE.to_string(), "[accounting]"));
    }
    if profile.time.enable {
        units.push((crate::stages::time::SERVICE.to_string(), "[time]"));
    }
    if profile.mail.enable {
        units.push((crate::stages::mail::WRAPPER_SERVICE.to_string(), "[mail]"));
        units.push((crate::stages::mail::SERVICE.to_string(), "[mail] postfix's instance"));
    }
    if profile.mail_gateway.enable {
        units.extend(crate::stages::mail_gateway::UNITS.iter().map(|(unit, why)| (unit.to_string(), *why)));
    }
    if profile.passwords.audit.is_some() {
        units.push((crate::stages::passwords::AUDIT_TIMER.to_string(), "[passwords] audit"));
        units.push((crate::stages::passwords::AUDIT_SERVICE.to_string(), "[passwords] audit, started by its timer"));
    }
    if profile.encryption.data {
        units.push((crate::stages::encryption::SERVICE.to_string(), "[encryption] data, at every boot before the volumes open"));
    }
    if profile.gateway.enable && profile.gateway.dhcp.is_some() {
        units.push((crate::stages::gateway::DHCP_SERVICE.to_string(), "[gateway] dhcp"));
    }
    if profile.vpn.enable {
        units.push((crate::stages::vpn::KEY_UNIT.to_string(), "[vpn] this machine's key, made on first boot"));
    }
    if profile.updates.automatic {
        for unit in crate::stages::updates::TIMERS {
            units.push((unit.to_string(), "[updates] automatic"));
        }
        for unit in crate::stages::updates::SERVICES {
            units.push((unit.to_string(), "[updates] automatic, started by its timer"));
        }
    }
    units
}

/// systemd's own services, which run whatever the allow-list says: the
/// core daemons, user managers of logged-in users, and the D-Bus activated
/// helpers that start on demand and exit when idle.
pub const CORE_SERVICES: &[&str] = &[
    "dbus.service",
    "systemd-journald.service",
    "systemd-logind.service",
    "systemd-udevd.service",
    "user@*.service",
    "systemd-hostnamed.service",
    "systemd-timedated.service",
    "systemd-localed.service",
    // fsck's progress channel: started by the checks of the separate
    // partitions at boot, it exits once idle for 30 s.
    "systemd-fsckd.service",
];

/// The services a booted image may run: allow-list, implied units, gettys
/// and systemd's core (`*` matches within one name).
pub fn expected_running(profile: &Profile) -> Vec<String> {
    let mut units: Vec<String> = profile.services.enable.iter().map(|u| u.value.clone()).collect();
    units.extend(implied_units(profile).into_iter().map(|(u, _)| u));
    units.extend(profile.services.gettys.iter().map(|t| ServicesSpec::getty_unit(t)));
    units.extend(CORE_SERVICES.iter().map(|u| u.to_string()));
    if profile.mail.enable {
        // started by a watched unit's failure
        units.push("rampart-alert@*.service".to_string());
    }
    units
}

/// Whether `unit` matches `pattern` ("user@*.service").
pub fn unit_matches(pattern: &str, unit: &str) -> bool {
    match pattern.split_once('*') {
        Some((prefix, suffix)) => unit.len() >= prefix.len() + suffix.len() && unit.starts_with(prefix) && unit.ends_with(suffix),
        None => pattern == unit,
    }
}

/// The unit's file in the image (merged /usr), if a package ships it.
fn unit_file(ctx: &BuildContext, unit: &str) -> Option<std::path::PathBuf> {
    let template = match unit.split_once('@') {
        Some((prefix, rest)) => format!("{prefix}@.{}", rest.rsplit('.').next().unwrap_or("service")),
        None => unit.to_string(),
    };
    ["etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system"]
        .iter()
        .flat_map(|dir| [ctx.root().join(dir).join(unit), ctx.root().join(dir).join(&template)])
        .find(|path| path.exists())
}

fn unit_exists(ctx: &BuildContext, unit: &str) -> bool {
    unit_file(ctx, unit).is_some()
}

/// The `Also=` units of a unit's [Install] section: enabling a unit enables
/// them too (systemd-networkd.service brings its socket).
fn also_units(ctx: &BuildContext, unit: &str) -> Vec<String> {
    let Some(path) = unit_file(ctx, unit) else { return Vec::new() };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut in_install = false;
    let mut also = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_install = line == "[Install]";
        } else if let Some(value) = line.strip_prefix("Also=").filter(|_| in_install) {
            also.extend(value.split_whitespace().map(String::from));
        }
    }
    also
}

/// systemd's generators that could start or mount something the allow-list
/// does not name, or that only read inputs a rampart image does not have.
/// Masked (a /dev/null link in /etc/systemd/system-generators), which also
/// spares every boot their start-up. The fstab generator stays.
const MASKED_GENERATORS: &[MaskedGenerator] = &[
    MaskedGenerator { name: "systemd-getty-generator", input: GeneratorInput::Never, why: "gettys come from services.gettys only" },
    MaskedGenerator { name: "systemd-sysv-generator", input: GeneratorInput::Never, why: "init scripts would start services off the allow-list" },
    MaskedGenerator { name: "systemd-rc-local-generator", input: GeneratorInput::RefusedIf("etc/rc.local"), why: "rc.local would run commands off the allow-list" },
    MaskedGenerator { name: "systemd-run-generator", input: GeneratorInput::Never, why: "no unit from systemd.run= on the kernel command line" },
    MaskedGenerator { name: "systemd-debug-generator", input: GeneratorInput::Never, why: "no debug shell or extra units from the kernel command line" },
    MaskedGenerator { name: "systemd-system-update-generator", input: GeneratorInput::Never, why: "no offline-update boots" },
    MaskedGenerator { name: "systemd-hibernate-resume-generator", input: GeneratorInput::Never, why: "no hibernation (kernel lockdown forbids it)" },
    MaskedGenerator { name: "systemd-gpt-auto-generator", input: GeneratorInput::Never, why: "mounts come from fstab only; no discovered partition is mounted unasked" },
    MaskedGenerator { name: "systemd-cryptsetup-generator", input: GeneratorInput::KeptIf("etc/crypttab"), why: "no encrypted volumes" },
    MaskedGenerator { name: "systemd-integritysetup-generator", input: GeneratorInput::KeptIf("etc/integritytab"), why: "no integrity volumes" },
    MaskedGenerator { name: "systemd-veritysetup-generator", input: GeneratorInput::KeptIf("etc/veritytab"), why: "no verity volumes" },
    MaskedGenerator {
        name: "postfix-instance-generator",
        input: GeneratorInput::Never,
        why: "postfix's one instance, postfix@-.service, is enabled through the allow-list ([mail]); the generator would start instances main.cf's multi_instance_directories name",
    },
];

struct MaskedGenerator {
    name: &'static str,
    input: GeneratorInput,
    /// why it goes, for the report
    why: &'static str,
}

/// What a file in the image that the generator reads means for its mask.
enum GeneratorInput {
    /// nothing a rampart image has: always masked
    Never,
    /// kept when the image has the file: a profile that sets such volumes up needs it
    KeptIf(&'static str),
    /// the build refuses an image that has the file
    RefusedIf(&'static str),
}

/// Static units that load kernel modules (or mount their file systems) at
/// every boot for features a server image does not use. Masked: the
/// modules still load on demand, through their device nodes, when a
/// program asks for them.
const MASKED_KERNEL_FEATURE_UNITS: &[(&str, &str)] = &[
    ("modprobe@dm_mod.service", "device-mapper"),
    ("modprobe@loop.service", "loop devices"),
    ("modprobe@drm.service", "graphics (logind's seats)"),
    ("modprobe@fuse.service", "FUSE"),
    ("sys-fs-fuse-connections.mount", "FUSE control file system"),
    ("modprobe@configfs.service", "configfs"),
    ("sys-kernel-config.mount", "configfs file system"),
];

/// Masks the generators of MASKED_GENERATORS the image has; refuses an
/// image whose overlays rely on one (an rc.local).
fn mask_generators(ctx: &BuildContext) -> Result<Vec<serde_json::Value>> {
    let in_image = |path: &str| std::fs::symlink_metadata(ctx.root().join(path)).is_ok();
    let mut masked = Vec::new();
    for generator in MASKED_GENERATORS {
        if !ctx.root().join("usr/lib/systemd/system-generators").join(generator.name).exists() {
            continue;
        }
        match generator.input {
            GeneratorInput::Never => {}
            GeneratorInput::KeptIf(input) if in_image(input) => continue,
            GeneratorInput::KeptIf(_) => {}
            GeneratorInput::RefusedIf(input) if in_image(input) => bail!(
                "services of {}: the image has /{input}, which would run commands off the allow-list; make it a unit and name it in services.enable",
                ctx.profile.path.display()
            ),
            GeneratorInput::RefusedIf(_) => {}
        }
        ctx.install_symlink(&format!("etc/systemd/system-generators/{}", generator.name), "/dev/null")?;
        masked.push(json!({ "generator": generator.name, "why": generator.why }));
    }
    Ok(masked)
}

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    let spec = ctx.profile.services.clone();
    for unit in &spec.enable {
        if !unit_exists(ctx, &unit.value) {
            bail!(
                "{}: services.enable: no installed package provides {}; add the package that ships it to packages.include, or drop it from the allow-list",
                unit.at,
                unit.value
            );
        }
    }
    let implied: Vec<(String, &str)> = implied_units(&ctx.profile).into_iter().filter(|(u, _)| unit_exists(ctx, u)).collect();
    let mut allowed: BTreeSet<String> = spec.enable.iter().map(|u| u.value.clone()).collect();
    allowed.extend(implied.iter().map(|(u, _)| u.clone()));
    let also: Vec<String> = allowed.iter().flat_map(|u| also_units(ctx, u)).filter(|u| unit_exists(ctx, u)).collect();
    allowed.extend(also);

    let mut preset = format!("# rampart: [services] allow-list of profile {}; everything else is disabled (and masked).\n", ctx.profile.name);
    for unit in &allowed {
        match unit.split_once('@') {
            Some((prefix, rest)) => {
                let (instance, kind) = rest.rsplit_once('.').unwrap_or((rest, "service"));
                preset.push_str(&format!("enable {prefix}@.{kind} {instance}\n"));
            }
            None => preset.push_str(&format!("enable {unit}\n")),
        }
    }
    for tty in &spec.gettys {
        let unit = ServicesSpec::getty_unit(tty);
        let (template, _) = unit.split_once('@').expect("getty units are templates");
        preset.push_str(&format!("enable {template}@.service {tty}\n"));
    }
    preset.push_str("disable *\n");
    ctx.install_file(PRESET, preset.as_bytes(), 0o644)?;
    ctx.in_root("systemctl")
        .args(["preset-all", "--preset-mode=full"])
        .run()
        .context("while applying the service allow-list with systemctl preset-all")?;

    let listing = ctx
        .in_root("systemctl")
        .args(["list-unit-files", "--no-legend", "--no-pager", "--state=disabled"])
        .run()
        .context("while listing the image's disabled units")?;
    let mut masked = Vec::new();
    for line in listing.stdout_text().lines() {
        let Some(unit) = line.split_whitespace().next() else { continue };
        let governed = [".service", ".socket", ".timer", ".path"].iter().any(|k| unit.ends_with(k));
        // Templates stay unmasked: their instances are what the policy names
        // (a masked getty@.service would mask the profile's own gettys too).
        if governed && !unit.contains("@.") && !allowed.contains(unit) {
            // A unit the profile's own overlays put into /etc cannot be masked
            // (the mask would replace it): the allow-list must name it.
            let local = ctx.root().join("etc/systemd/system").join(unit);
            if std::fs::symlink_metadata(&local).is_ok_and(|m| m.file_type().is_file()) {
                bail!(
                    "services.enable of {}: the overlays install {unit}, but the allow-list does not name it; add it to services.enable or drop it from the overlay",
                    ctx.profile.path.display()
                );
            }
            masked.push(unit.to_string());
        }
    }
    if !masked.is_empty() {
        ctx.in_root("systemctl").arg("mask").args(&masked).run().context("while masking the units off the allow-list")?;
    }
    // No getty appears unasked: none on virtual terminals switched to, none
    // made by the getty generator for the kernel console.
    ctx.install_file("etc/systemd/logind.conf.d/50-rampart.conf", b"[Login]\nNAutoVTs=0\nReserveVT=0\n", 0o644)?;
    ctx.kernel_cmdline_extra.push("systemd.getty_auto=0".into());
    let generators = mask_generators(ctx)?;
    let mut kernel_features = Vec::new();
    for (unit, feature) in MASKED_KERNEL_FEATURE_UNITS {
        let template = unit.split_once('@').map(|(prefix, _)| format!("{prefix}@.service")).unwrap_or_else(|| unit.to_string());
        if ctx.root().join("usr/lib/systemd/system").join(&template).exists() {
            ctx.install_symlink(&format!("etc/systemd/system/{unit}"), "/dev/null")?;
            kernel_features.push(json!({ "unit": unit, "feature": feature }));
        }
    }
    let cron_dirs = close_cron_directories(ctx)?;

    ctx.record(
        "services",
        true,
        json!({
            "allow-list": spec.enable.iter().map(|u| u.value.clone()).collect::<Vec<_>>(),
            "implied": implied.iter().map(|(u, why)| json!({ "unit": u, "for": why })).collect::<Vec<_>>(),
            "gettys": spec.gettys.iter().map(|t| ServicesSpec::getty_unit(t)).collect::<Vec<_>>(),
            "policy": "systemd preset: enable the allow-list, disable *; disabled units masked",
            "masked": masked,
            "generators-masked": generators,
            "boot-time-module-loads-masked": kernel_features,
            "cron-directories": { "mode": "0700 root:root (CIS 2.4.1.3-2.4.1.7; the image runs no cron)", "dirs": cron_dirs },
        }),
    );
    Ok(())
}

/// The cron directories packages bring (logrotate's and acct's scripts):
/// the image runs no cron, and CIS asks them 0700 root:root all the same.
fn close_cron_directories(ctx: &BuildContext) -> Result<Vec<String>> {
    use std::os::unix::fs::PermissionsExt;
    let mut closed = Vec::new();
    for dir in ["etc/cron.d", "etc/cron.hourly", "etc/cron.daily", "etc/cron.weekly", "etc/cron.monthly", "etc/cron.yearly"] {
        let path = crate::fsutil::resolve_in_root(&ctx.root(), std::path::Path::new(dir))?;
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).with_context(|| format!("while closing /{dir}"))?;
                closed.push(format!("/{dir}"));
            }
            _ => {}
        }
    }
    Ok(closed)
}
