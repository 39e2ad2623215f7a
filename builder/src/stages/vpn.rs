//! VPN control (seed step 14, "Wireless Security": weak link layers, so a
//! VPN layer for administration): a WireGuard interface made by
//! systemd-networkd from the profile's peers. The host's private key is
//! made on its first boot, never in the image (every machine of an image
//! has its own); its public half is printed on the console and in the
//! journal for enrolment at the peers. The firewall opens the listen port
//! and, with `vpn.ssh = "only"`, lets SSH answer on the tunnel alone.
//! Nothing is forwarded from the tunnel: it reaches this host only.

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::build::context::BuildContext;
use crate::profile::network::VpnSsh;
use crate::profile::{FirewallAllow, Profile, Protocol};

pub const INTERFACE: &str = "wg0";
/// networkd (user systemd-network) reads the key: the directory is
/// 0750 root:systemd-network, made at build time and empty in the image.
pub const KEY_DIR: &str = "/var/lib/rampart-vpn";
const KEY_FILE: &str = "/var/lib/rampart-vpn/private.key";
pub const KEY_UNIT: &str = "rampart-vpn-key.service";
/// The console line that carries the public key.
pub const PUBLIC_KEY_MARKER: &str = "rampart-vpn-public-key: ";
const MODULES_LOAD_FILE: &str = "etc/modules-load.d/rampart-vpn.conf";

const KEY_UNIT_TEXT: &str = "# rampart: [vpn] this machine's WireGuard key, made on its first boot
[Unit]
Description=Make this machine's WireGuard key and show its public half
Before=systemd-networkd.service
RequiresMountsFor=/var/lib/rampart-vpn

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/lib/rampart/vpn-key
StandardOutput=journal+console
SyslogIdentifier=rampart-vpn

[Install]
WantedBy=systemd-networkd.service
";

/// Makes the key once (0640 root:systemd-network, as networkd reads it),
/// then prints the public half at every boot.
const KEY_SCRIPT: &str = "#!/bin/sh
# rampart: [vpn] this machine's WireGuard private key, made on its first boot
set -eu
key=/var/lib/rampart-vpn/private.key
if [ ! -s \"$key\" ]; then
    umask 077
    wg genkey > \"$key.new\"
    chgrp systemd-network \"$key.new\"
    chmod 0640 \"$key.new\"
    sync \"$key.new\"
    mv \"$key.new\" \"$key\"
fi
echo \"rampart-vpn-public-key: $(wg pubkey < \"$key\")\"
";

/// Narrows `interfaces` (where SSH answers; empty: anywhere) for the VPN.
pub fn restrict_ssh(profile: &Profile, interfaces: &mut Vec<String>) {
    let vpn = &profile.vpn;
    if !vpn.enable {
        return;
    }
    match vpn.ssh {
        VpnSsh::Only => {
            // Out-of-band management stays: it is how a gateway is reached when all else fails.
            interfaces.retain(|i| i == "mgmt");
            interfaces.push(INTERFACE.into());
        }
        VpnSsh::Also if !interfaces.is_empty() => interfaces.push(INTERFACE.into()),
        VpnSsh::Also => {}
    }
}

/// The WireGuard port, open to anyone: a peer without an enrolled key gets
/// no answer at all from WireGuard.
pub fn declared_ports(profile: &Profile) -> Vec<FirewallAllow> {
    if !profile.vpn.enable {
        return Vec::new();
    }
    vec![FirewallAllow {
        port: profile.vpn.listen_port,
        protocol: Protocol::Udp,
        from: crate::profile::controls::anywhere(),
        interfaces: Vec::new(),
        service: Some("WireGuard (systemd-networkd, in the kernel)".into()),
        at: "vpn.listen-port".into(),
    }]
}

fn netdev(profile: &Profile) -> String {
    let vpn = &profile.vpn;
    let mut text = format!(
        "# rampart: [vpn] the admin VPN\n[NetDev]\nName={INTERFACE}\nKind=wireguard\nDescription=rampart admin VPN\n\n[WireGuard]\nPrivateKeyFile={KEY_FILE}\nListenPort={}\n",
        vpn.listen_port
    );
    for peer in &vpn.peers {
        let allowed: Vec<String> = peer.allowed_ips.iter().map(|c| c.to_string()).collect();
        text.push_str(&format!("\n# {} ({})\n[WireGuardPeer]\nPublicKey={}\nAllowedIPs={}\n", peer.name, peer.at, peer.public_key, allowed.join(",")));
        if let Some(endpoint) = &peer.endpoint {
            text.push_str(&format!("Endpoint={endpoint}\nPersistentKeepalive=25\n"));
        }
    }
    text
}

fn network(profile: &Profile) -> String {
    let mut text = format!("# rampart: [vpn] the admin VPN's addresses\n[Match]\nName={INTERFACE}\n\n[Network]\n");
    for address in &profile.vpn.addresses {
        text.push_str(&format!("Address={address}\n"));
    }
    text.push_str("LLMNR=no\nMulticastDNS=no\nIPv6AcceptRA=no\n");
    text
}

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    if !ctx.profile.vpn.enable {
        ctx.record("vpn", false, json!({ "reason": "no [vpn] peers" }));
        return Ok(());
    }
    if !ctx.profile.firewall.enable {
        bail!("vpn: the VPN's port and SSH's restriction to it are firewall rules; firewall.enable = false leaves it without them");
    }
    ctx.install_file("etc/systemd/network/20-rampart-vpn.netdev", netdev(&ctx.profile).as_bytes(), 0o640)?;
    ctx.install_file("etc/systemd/network/20-rampart-vpn.network", network(&ctx.profile).as_bytes(), 0o644)?;
    // networkd reads the .netdev as systemd-network; the peers' keys are public, but the list is nobody else's business.
    ctx.in_root("chgrp").args(["systemd-network", "/etc/systemd/network/20-rampart-vpn.netdev"]).run().context("while giving the VPN's .netdev to systemd-network")?;
    ctx.install_file("usr/lib/rampart/vpn-key", KEY_SCRIPT.as_bytes(), 0o755)?;
    let key_dir = ctx.root().join(KEY_DIR.trim_start_matches('/'));
    std::fs::create_dir_all(&key_dir).with_context(|| format!("while making {KEY_DIR}"))?;
    ctx.in_root("chown").args(["root:systemd-network", KEY_DIR]).run().context("while giving the VPN key's directory to systemd-network")?;
    ctx.in_root("chmod").args(["0750", KEY_DIR]).run()?;
    ctx.install_file(&format!("etc/systemd/system/{KEY_UNIT}"), KEY_UNIT_TEXT.as_bytes(), 0o644)?;
    ctx.install_file(MODULES_LOAD_FILE, b"# rampart: [vpn] WireGuard, loaded before networkd makes the interface\nwireguard\n", 0o644)?;
    crate::stages::kernel::check_modules_load(ctx, &["wireguard"]).context("while checking the VPN's kernel module")?;
    let vpn = &ctx.profile.vpn;
    let ssh = crate::stages::gateway::ssh_interfaces(&ctx.profile);
    let peers: Vec<serde_json::Value> = vpn
        .peers
        .iter()
        .map(|p| json!({ "name": p.name, "public-key": p.public_key, "allowed-ips": p.allowed_ips.iter().map(|c| c.to_string()).collect::<Vec<_>>(), "endpoint": p.endpoint.as_ref().map(|e| e.to_string()) }))
        .collect();
    let settings = json!({
        "interface": INTERFACE,
        "addresses": vpn.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "listen-port": vpn.listen_port.get(),
        "peers": peers,
        "private-key": format!("made on first boot by {KEY_UNIT} in {KEY_FILE} (0640 root:systemd-network, in a 0750 directory); never in the image"),
        "public-key": format!("on the console and in the journal, after {PUBLIC_KEY_MARKER:?}"),
        "ssh-answers-on": if ssh.is_empty() { vec!["any interface".to_string()] } else { ssh },
        "forwarded": "nothing: the tunnel reaches this host only",
    });
    ctx.record("vpn", true, settings);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::gateway::tests::lab_gateway;

    #[test]
    fn ssh_over_the_vpn_only_keeps_out_of_band_management() {
        let mut profile = lab_gateway();
        let mut interfaces = vec!["lan".to_string(), "mgmt".to_string()];
        restrict_ssh(&profile, &mut interfaces);
        assert_eq!(interfaces, ["lan", "mgmt", "wg0"]);
        profile.vpn.ssh = VpnSsh::Only;
        let mut interfaces = vec!["lan".to_string(), "mgmt".to_string()];
        restrict_ssh(&profile, &mut interfaces);
        assert_eq!(interfaces, ["mgmt", "wg0"]);
        // A host that is no gateway: SSH anywhere, or over the tunnel alone.
        let mut anywhere = Vec::new();
        restrict_ssh(&profile, &mut anywhere);
        assert_eq!(anywhere, ["wg0"]);
        profile.vpn.ssh = VpnSsh::Also;
        let mut anywhere = Vec::new();
        restrict_ssh(&profile, &mut anywhere);
        assert!(anywhere.is_empty());
    }

    #[test]
    fn the_netdev_lists_each_peer_and_reads_the_key_made_on_first_boot() {
        let text = netdev(&lab_gateway());
        assert!(text.contains("PrivateKeyFile=/var/lib/rampart-vpn/private.key\nListenPort=51820\n"), "{text}");
        assert!(text.contains("# lab-admin ("));
        assert!(text.contains("[WireGuardPeer]\nPublicKey=SvWXT97e+NlIR9lVm0otSbOUbjflGUMw51gDXG4OJ3I=\nAllowedIPs=10.90.0.2/32\n"));
        assert!(!text.contains("PrivateKey="), "no key in the image");
    }
}
