//! Wireless control (seed step 14, "Wireless Security"), off by default:
//! no radio can be brought up. Every module of the image's kernel for Wi-Fi
//! (cfg80211, mac80211 and the drivers), Bluetooth, NFC and 802.15.4 is
//! refused by modprobe (`install <module> /bin/false`: loading it fails,
//! which udev logs), rfkill's default state is "blocked", and
//! systemd-rfkill, which would restore a saved unblocked state, is masked.
//! The report lists what the kernel carries; a kernel that carries none
//! (the cloud kernel) is said to.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::build::context::BuildContext;

const CONF: &str = "etc/modprobe.d/rampart-wireless.conf";
pub const REFUSED: &str = "/bin/false";

/// Where a kernel keeps each radio's modules, below `kernel/`.
const RADIO_TREES: &[(&str, &str)] = &[
    ("net/wireless", "Wi-Fi"),
    ("net/mac80211", "Wi-Fi"),
    ("drivers/net/wireless", "Wi-Fi"),
    ("net/bluetooth", "Bluetooth"),
    ("drivers/bluetooth", "Bluetooth"),
    ("net/nfc", "NFC"),
    ("drivers/nfc", "NFC"),
    ("net/ieee802154", "802.15.4"),
    ("net/mac802154", "802.15.4"),
    ("drivers/net/ieee802154", "802.15.4"),
];

/// A module's name from its file name (`iwlwifi.ko`, `.ko.xz`, `.ko.zst`).
fn module_name(file: &str) -> Option<String> {
    let stem = file.split_once(".ko").filter(|(_, rest)| rest.is_empty() || rest.starts_with('.')).map(|(stem, _)| stem)?;
    Some(stem.replace('-', "_"))
}

fn modules_below(dir: &Path, found: &mut Vec<String>) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for entry in entries {
        let entry = entry.with_context(|| format!("while listing {}", dir.display()))?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            modules_below(&entry.path(), found)?;
        } else if let Some(name) = entry.file_name().to_str().and_then(module_name) {
            found.push(name);
        }
    }
    Ok(())
}

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    if ctx.profile.wireless.enable {
        ctx.record("wireless", false, json!({ "reason": "wireless.enable = true: radios may load" }));
        return Ok(());
    }
    let version = crate::stages::kernel::modules_version(ctx)?;
    let kernel_dir = ctx.root().join("lib/modules").join(&version).join("kernel");
    let mut by_radio: std::collections::BTreeMap<&str, Vec<String>> = std::collections::BTreeMap::new();
    for (tree, radio) in RADIO_TREES {
        let mut found = Vec::new();
        modules_below(&kernel_dir.join(tree), &mut found)?;
        by_radio.entry(radio).or_default().extend(found);
    }
    let has_rfkill = ctx.root().join("lib/modules").join(&version).join("kernel/net/rfkill").is_dir();
    let mut conf = format!("# rampart: [wireless] off: no radio module loads (kernel {version})\n");
    if has_rfkill {
        conf.push_str("# rfkill starts with every radio blocked\noptions rfkill default_state=0\n");
    }
    let mut modules: Vec<&String> = by_radio.values().flatten().collect();
    modules.sort();
    modules.dedup();
    for module in &modules {
        conf.push_str(&format!("install {module} {REFUSED}\nblacklist {module}\n"));
    }
    ctx.install_file(CONF, conf.as_bytes(), 0o644)?;
    for unit in ["systemd-rfkill.service", "systemd-rfkill.socket"] {
        ctx.install_symlink(&format!("etc/systemd/system/{unit}"), "/dev/null")?;
    }
    // The image's modprobe must refuse each: a sample of every radio.
    for names in by_radio.values() {
        for module in names.iter().take(3) {
            let output = crate::stages::kernel::modprobe_dry_run(ctx, &version, module)?;
            if !output.stdout_text().contains(REFUSED) {
                bail!("wireless: the image's modprobe would still load {module}:\n{}", output.stdout_text().trim());
            }
        }
    }
    let carried: serde_json::Map<String, serde_json::Value> = by_radio.iter().map(|(radio, names)| (radio.to_string(), json!(names.len()))).collect();
    let kernel = ctx.profile.kernel.package.to_string();
    let settings = if modules.is_empty() {
        json!({
            "radios": "off",
            "kernel-carries": format!("no Wi-Fi, Bluetooth, NFC or 802.15.4 modules ({kernel}, {version}): nothing can bring a radio up"),
            "rfkill": if has_rfkill { "default state blocked" } else { "not in the kernel" },
            "systemd-rfkill": "masked",
        })
    } else {
        json!({
            "radios": "off",
            "modules-refused": modules.len(),
            "kernel-carries": carried,
            "refused-with": format!("/{CONF}: install <module> {REFUSED}, blacklist <module>"),
            "rfkill": if has_rfkill { "default state blocked (options rfkill default_state=0)" } else { "not in the kernel" },
            "systemd-rfkill": "masked (it would restore a saved unblocked state)",
        })
    };
    ctx.record("wireless", true, settings);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_come_from_their_files() {
        assert_eq!(module_name("iwlwifi.ko").as_deref(), Some("iwlwifi"));
        assert_eq!(module_name("rtw88-pci.ko.xz").as_deref(), Some("rtw88_pci"));
        assert_eq!(module_name("btusb.ko.zst").as_deref(), Some("btusb"));
        assert_eq!(module_name("modules.order"), None);
        assert_eq!(module_name("x.kobject"), None);
    }
}
