//! Time control (CIS Debian 12 2.3): systemd-timesyncd keeps the clock, from
//! the profile's NTP servers or, when it names none, timesyncd's built-in
//! fallback. Written into timesyncd.conf itself, the file auditors read. Logs,
//! certificates and Kerberos all need a clock that is right.

use anyhow::{bail, Result};
use serde_json::json;

use crate::build::context::BuildContext;

pub const SERVICE: &str = "systemd-timesyncd.service";
const CONFIG: &str = "etc/systemd/timesyncd.conf";

pub fn config_text(servers: &[String]) -> String {
    let mut text = String::from("# rampart: [time] of the profile\n[Time]\n");
    if servers.is_empty() {
        text.push_str("# no servers named: timesyncd's built-in fallback list\n");
    } else {
        // The profile's servers only: an air-gapped site's clock never asks outside.
        text.push_str(&format!("NTP={}\nFallbackNTP=\n", servers.join(" ")));
    }
    text
}

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    let time = ctx.profile.time.clone();
    if !time.enable {
        ctx.record("time", false, json!({ "reason": "time.enable = false" }));
        return Ok(());
    }
    if !ctx.root().join("lib/systemd/system").join(SERVICE).exists() {
        bail!("[time] of {}: the image has no {SERVICE}; is systemd-timesyncd excluded?", ctx.profile.path.display());
    }
    ctx.install_file(CONFIG, config_text(&time.servers).as_bytes(), 0o644)?;
    ctx.record(
        "time",
        true,
        json!({
            "daemon": SERVICE,
            "servers": if time.servers.is_empty() { json!("timesyncd's built-in fallback") } else { json!(time.servers) },
            "config": format!("/{CONFIG}"),
        }),
    );
    Ok(())
}
