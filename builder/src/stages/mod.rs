//! One module per stage and per hardening control. Stages read the validated
//! profile from the context and never parse TOML.

pub mod accounting;
pub mod auditd;
pub mod backups;
pub mod config_partition;
pub mod configure;
pub mod disk;
pub mod elf_audit;
pub mod encryption;
pub mod firewall;
pub mod firstboot;
pub mod gateway;
pub mod installer;
pub mod integrity;
pub mod kernel;
pub mod logging;
pub mod mail;
pub mod mail_gateway;
pub mod overlays;
pub mod packages;
pub mod passwords;
pub mod patching;
pub mod seal;
pub mod sandboxing;
pub mod services;
pub mod sessions;
pub mod ssh;
pub mod time;
pub mod toolchain;
pub mod updates;
pub mod users;
pub mod vpn;
pub mod wireless;

use anyhow::{bail, Result};

use crate::build::context::BuildContext;
use crate::profile::Sited;

/// Installs the timer `unit` (in /etc/systemd/system) that starts its
/// service on the profile's `schedule`, once the image's `systemd-analyze
/// calendar` accepts the expression; a refusal names the profile `field`.
pub fn install_timer(ctx: &BuildContext, unit: &str, description: &str, schedule: &Sited<String>, field: &str) -> Result<()> {
    let calendar = ctx.in_root("systemd-analyze").args(["calendar", &schedule.value]).run_unchecked()?;
    if !calendar.status.success() {
        bail!(
            "{}: {field}: {:?} is not a calendar expression systemd accepts:\n{}",
            schedule.at,
            schedule.value,
            String::from_utf8_lossy(&calendar.stderr).trim()
        );
    }
    let text = format!(
        "[Unit]\nDescription={description}\n\n[Timer]\nOnCalendar={}\nPersistent=true\nRandomizedDelaySec=15min\n\n[Install]\nWantedBy=timers.target\n",
        schedule.value
    );
    ctx.install_file(&format!("etc/systemd/system/{unit}"), text.as_bytes(), 0o644)
}
