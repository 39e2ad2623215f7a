//! Time control (CIS Debian 12 2.3): systemd-timesyncd keeps the clock, from
//! the profile's NTP servers or, when it names none, the servers the image's
//! own timesyncd.conf lists as its built-in fallback. Either way they are
//! written as `NTP=` into timesyncd.conf itself, the file auditors read, and
//! nothing else is asked (`FallbackNTP=` empty). Logs, certificates and
//! Kerberos all need a clock that is right.

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::build::context::BuildContext;

pub const SERVICE: &str = "systemd-timesyncd.service";
const CONFIG: &str = "etc/systemd/timesyncd.conf";

pub fn config_text(servers: &[String], from_profile: bool) -> String {
    let origin = if from_profile { "time.servers of the profile" } else { "no time.servers: the servers Debian's timesyncd.conf lists as built in" };
    // Only these servers: an air-gapped site's clock never asks outside.
    format!("# rampart: [time] {origin}\n[Time]\nNTP={}\nFallbackNTP=\n", servers.join(" "))
}

/// The servers a stock timesyncd.conf names in its commented-out
/// `#FallbackNTP=` line: what timesyncd asks when nothing is configured.
pub fn builtin_servers(stock: &str) -> Vec<String> {
    stock
        .lines()
        .find_map(|line| line.trim().strip_prefix("#FallbackNTP="))
        .map(|list| list.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
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
    let servers = if time.servers.is_empty() {
        let stock = std::fs::read_to_string(ctx.root().join(CONFIG)).with_context(|| format!("while reading the image's /{CONFIG}"))?;
        let servers = builtin_servers(&stock);
        if servers.is_empty() {
            bail!("[time] of {}: time.servers is empty and the image's /{CONFIG} names no built-in FallbackNTP servers; name the site's servers in time.servers", ctx.profile.path.display());
        }
        servers
    } else {
        time.servers.clone()
    };
    ctx.install_file(CONFIG, config_text(&servers, !time.servers.is_empty()).as_bytes(), 0o644)?;
    ctx.record(
        "time",
        true,
        json!({
            "daemon": SERVICE,
            "servers": servers,
            "servers-from": if time.servers.is_empty() { "the image's stock timesyncd.conf (its built-in fallback)" } else { "time.servers" },
            "config": format!("/{CONFIG}"),
        }),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stock_files_fallback_servers_are_found_and_written_as_the_only_servers() {
        let stock = "[Time]\n#NTP=\n#FallbackNTP=0.pool.example 1.pool.example\n#RootDistanceMaxSec=5\n";
        let servers = builtin_servers(stock);
        assert_eq!(servers, ["0.pool.example", "1.pool.example"]);
        let text = config_text(&servers, false);
        assert!(text.contains("\nNTP=0.pool.example 1.pool.example\nFallbackNTP=\n"), "{text}");
        assert!(builtin_servers("[Time]\n#NTP=\n").is_empty());
    }
}
