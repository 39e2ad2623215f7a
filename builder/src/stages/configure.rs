//! Configure stage: identity and plumbing every image needs: host name,
//! /etc/hosts, apt sources pointing at the
//! profile's mirror, DHCP networking by systemd-networkd. Writes files only.

use anyhow::Result;
use serde_json::json;

use crate::build::context::BuildContext;

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    let hostname = ctx.profile.image.hostname.to_string();
    ctx.install_file("etc/hostname", format!("{hostname}\n").as_bytes(), 0o644)?;
    let hosts = format!(
        "127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
    );
    ctx.install_file("etc/hosts", hosts.as_bytes(), 0o644)?;

    // One-line format in sources.list itself: every tool reads it (audit
    // tools that look for the security suite read nothing else).
    let mut sources = String::from("# rampart: the profile's mirror and its security suite\n");
    for source in ctx.mirror.sources() {
        sources.push_str(&format!(
            "deb [signed-by={}] {} {} {}\n",
            crate::apt::ARCHIVE_KEYRING,
            without_credentials(&source.url),
            source.suite,
            source.components.join(" "),
        ));
    }
    ctx.install_file("etc/apt/sources.list", sources.as_bytes(), 0o644)?;

    // A gateway configures each NIC by its role ([gateway]); one left
    // without a role stays unconfigured rather than taking an address.
    let network_setting = if ctx.profile.gateway.enable {
        "systemd-networkd, each interface by its [gateway] role; others unconfigured"
    } else {
        let network = "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n\n[DHCPv4]\nUseDomains=yes\n";
        ctx.install_file("etc/systemd/network/80-rampart-dhcp.network", network.as_bytes(), 0o644)?;
        "systemd-networkd, DHCP on en*/eth*"
    };
    ctx.install_symlink(
        "etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
        "/lib/systemd/system/systemd-networkd.service",
    )?;
    ctx.install_symlink(
        "etc/systemd/system/sockets.target.wants/systemd-networkd.socket",
        "/lib/systemd/system/systemd-networkd.socket",
    )?;
    // A unit that wants network-online.target (postfix's does) starts
    // systemd-networkd-wait-online, which by default waits for every link:
    // a NIC with no DHCP server on its wire would hold the boot for two
    // minutes and then fail. One configured link is "online".
    ctx.install_file(
        "etc/systemd/system/systemd-networkd-wait-online.service.d/50-rampart-any.conf",
        b"# rampart: online once any link is configured, at most 60 s\n[Service]\nExecStart=\nExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=60\n",
        0o644,
    )?;

    let resolver = if ctx.root().join("lib/systemd/system/systemd-resolved.service").exists() {
        // resolved keeps the list of DNS servers (from DHCP) in its
        // resolv.conf; it listens nowhere: no stub on loopback, no LLMNR or
        // mDNS responder on the network. Every listening socket is declared.
        ctx.install_file(
            "etc/systemd/resolved.conf.d/rampart.conf",
            b"[Resolve]\nLLMNR=no\nMulticastDNS=no\nDNSStubListener=no\n",
            0o644,
        )?;
        ctx.install_symlink("etc/resolv.conf", "../run/systemd/resolve/resolv.conf")?;
        "systemd-resolved (servers from DHCP in /etc/resolv.conf; no stub listener, LLMNR or mDNS)"
    } else {
        "none (no resolver package in the profile)"
    };
    ctx.record(
        "configure",
        true,
        json!({
            "hostname": hostname,
            "apt-sources": ctx.mirror.sources().iter().map(|s| format!("{} {}", without_credentials(&s.url), s.suite)).collect::<Vec<_>>(),
            "network": network_setting,
            "network-online": "systemd-networkd-wait-online --any --timeout=60: one configured link",
            "name-resolution": resolver,
        }),
    );
    Ok(())
}

/// A mirror URL without any user:password@ part: credentials never go into an image.
pub fn without_credentials(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_once('/').map(|(a, p)| (a, format!("/{p}"))).unwrap_or((rest, String::new()));
            let host = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_stripped_from_mirror_urls() {
        assert_eq!(without_credentials("http://user:secret@mirror.example/debian"), "http://mirror.example/debian");
        assert_eq!(without_credentials("http://mirror.example/debian"), "http://mirror.example/debian");
        assert_eq!(without_credentials("file:///srv/mirror"), "file:///srv/mirror");
    }
}
