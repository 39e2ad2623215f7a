//! Updates control (seed step 1, "update what you install"): with
//! `updates.automatic`, a deployed machine installs security updates on its
//! own. Debian's unattended-upgrades does the work, started by apt's own
//! timers (apt-daily for the lists, apt-daily-upgrade for the upgrade), from
//! the image's own sources.list and only from its security suite. Kernels
//! are held back: the boot path is written at build time, so a kernel
//! installed on the machine would never boot; they come with a rebuilt image.
//! Off by default, said in the report: a golden image is rebuilt from a new
//! lock (`rampart outdated` says when) and redeployed.

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::build::context::BuildContext;

pub const TIMERS: &[&str] = &["apt-daily.timer", "apt-daily-upgrade.timer"];
pub const SERVICES: &[&str] = &["apt-daily.service", "apt-daily-upgrade.service"];
const PERIODIC: &str = "etc/apt/apt.conf.d/20auto-upgrades";
const POLICY: &str = "etc/apt/apt.conf.d/52rampart-unattended-upgrades";
/// Packages unattended-upgrades leaves alone (apt-config regular expressions).
pub const HELD: &[&str] = &["^linux-image-", "^linux-headers-", "^systemd-boot"];

const PERIODIC_TEXT: &str = "// rampart: [updates] automatic: the lists daily (apt-daily.timer), then security updates (apt-daily-upgrade.timer)
APT::Periodic::Update-Package-Lists \"1\";
APT::Periodic::Unattended-Upgrade \"1\";
APT::Periodic::AutocleanInterval \"7\";
";

/// Only the security suite, whatever Debian's 50unattended-upgrades lists.
pub fn policy_text(security_suite: &str) -> String {
    let mut text = format!(
        "// rampart: [updates] automatic: security updates only, from the image's own sources.list\n\
         #clear Unattended-Upgrade::Allowed-Origins;\n\
         #clear Unattended-Upgrade::Origins-Pattern;\n\
         Unattended-Upgrade::Origins-Pattern {{\n\
         \x20   \"codename={security_suite}\";\n\
         }};\n\
         // the boot path is written at build time: new kernels come with a rebuilt image\n\
         #clear Unattended-Upgrade::Package-Blacklist;\n\
         Unattended-Upgrade::Package-Blacklist {{\n"
    );
    for held in HELD {
        text.push_str(&format!("    \"{held}\";\n"));
    }
    text.push_str(
        "};\n\
         Unattended-Upgrade::Automatic-Reboot \"false\";\n\
         Unattended-Upgrade::Remove-Unused-Dependencies \"false\";\n\
         Unattended-Upgrade::SyslogEnable \"true\";\n",
    );
    text
}

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    if !ctx.profile.updates.automatic {
        ctx.record(
            "updates",
            false,
            json!({ "reason": "updates.automatic = false: the image is rebuilt from a new lock (rampart outdated says when) and redeployed" }),
        );
        return Ok(());
    }
    let Some(security_suite) = ctx.mirror.security_suite.clone() else {
        bail!("updates.automatic of {}: the image has no security suite to take updates from (mirror.security-suite is empty)", ctx.profile.path.display());
    };
    if !ctx.root().join("usr/bin/unattended-upgrade").exists() {
        bail!("updates.automatic of {}: the image has no unattended-upgrade; is unattended-upgrades excluded?", ctx.profile.path.display());
    }
    ctx.install_file(PERIODIC, PERIODIC_TEXT.as_bytes(), 0o644)?;
    ctx.install_file(POLICY, policy_text(&security_suite).as_bytes(), 0o644)?;
    // apt itself reads the result: a syntax error fails the build here, and
    // the patterns must be the security suite alone.
    let output = ctx.in_root("apt-config").args(["dump", "Unattended-Upgrade::Origins-Pattern"]).run_unchecked()?;
    let dump = String::from_utf8_lossy(&output.stdout).to_string();
    if !output.status.success() {
        bail!("the image's apt refuses rampart's [updates] configuration /{POLICY}:\n{}", String::from_utf8_lossy(&output.stderr).trim());
    }
    let patterns: Vec<&str> = dump.lines().filter(|l| l.starts_with("Unattended-Upgrade::Origins-Pattern:: ")).collect();
    let expected = format!("Unattended-Upgrade::Origins-Pattern:: \"codename={security_suite}\";");
    if patterns != [expected.as_str()] {
        bail!("the image's apt reads other origins than the security suite {security_suite} for unattended-upgrades:\n{}", patterns.join("\n"));
    }
    for unit in TIMERS.iter().chain(SERVICES) {
        let path = ctx.root().join("lib/systemd/system").join(unit);
        std::fs::metadata(&path).with_context(|| format!("updates.automatic: the image has no {unit}"))?;
    }
    ctx.record(
        "updates",
        true,
        json!({
            "tool": "unattended-upgrades (Debian's), run by apt-daily-upgrade.timer after apt-daily.timer fetched the lists",
            "origins": format!("codename={security_suite} only (/{POLICY}, checked with the image's apt-config)"),
            "held": HELD,
            "why-held": "the boot path is written at build time; new kernels come with a rebuilt image",
            "reboot": "never automatic",
            "integrity": "upgraded files differ from the integrity baseline, and the integrity check reports them until the image is rebuilt",
        }),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_security_suite_is_an_origin_and_kernels_are_held() {
        let text = policy_text("bookworm-security");
        assert!(text.contains("#clear Unattended-Upgrade::Origins-Pattern;\nUnattended-Upgrade::Origins-Pattern {\n    \"codename=bookworm-security\";\n};\n"), "{text}");
        assert!(text.contains("    \"^linux-image-\";\n"), "{text}");
        assert!(text.contains("Automatic-Reboot \"false\""), "{text}");
    }
}
