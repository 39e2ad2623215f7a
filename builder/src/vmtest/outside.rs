//! Checks made from the lab's hosts: commands run on a network's host,
//! port scans of a machine (or of anything behind it) from a host's
//! address, and the admin VPN seen from the outside host (a userspace
//! WireGuard peer, wireguard-go, in its namespace).

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use crate::process::Cmd;
use crate::profile::network::Role;
use crate::vmtest::lab::Lab;
use crate::vmtest::qemu::Machine;
use crate::vmtest::scenario::{Action, Check, Expect};
use crate::vmtest::{failed, matches_expectation, show, CheckEnv, CheckFailure};

/// A command on network `host`'s host; `{address}` is the machine's outside address.
pub(super) fn host_command(check: &Check, lab: &Lab, address: &str, command: &str, host: usize) -> Result<(), CheckFailure> {
    let command = command.replace("{address}", address);
    let output = match lab.host(host, "sh").arg("-c").arg(&command).run_with_timeout(check.timeout) {
        Ok(Some(output)) => output,
        Ok(None) => return Err(failed(format!("timed out after {} s on the lab host", check.timeout.as_secs()), format!("command: {command}"))),
        Err(error) => return Err(failed("could not run the command on the lab host", format!("{error:#}"))),
    };
    let (want_success, expect) = match &check.action {
        Action::OutsideSucceed { expect, .. } => (true, expect.clone()),
        _ => (false, Expect::Anything),
    };
    if output.status.success() != want_success {
        let verb = if want_success { "failed" } else { "succeeded but should have failed" };
        return Err(failed(format!("lab host: `{command}` {verb}"), show(&command, &output)));
    }
    if want_success && !matches_expectation(&output.stdout_text(), &expect) {
        return Err(failed(format!("lab host: `{command}` printed something else than expected: {expect:?}"), show(&command, &output)));
    }
    Ok(())
}

/// Which scan: TCP (every port, or only these), or nmap's common UDP ports.
pub(super) enum Kind<'a> {
    Tcp(Option<&'a str>),
    Udp,
}

/// A scan from the host with address `from` of `target` (default: the
/// machine's outside address) finds exactly `ports` open, and no port
/// answers "closed" (something drops every probe it does not accept).
pub(super) fn open_ports(check: &Check, lab: &Lab, address: &str, ports: &[u16], from: &str, target: Option<&str>, kind: Kind) -> Result<(), CheckFailure> {
    let target = target.unwrap_or(address);
    // Wait until the first hop answers ARP (no firewall rule of the guest
    // sees ARP): a machine's address may come by DHCP.
    let hop = lab.first_hop(from, target).map_err(|e| failed("no route from the scanning host", format!("{e:#}")))?;
    let network = lab.host_with(from).map_err(|e| failed("no such lab host", format!("{e:#}")))?;
    let reachable = format!("for i in $(seq 60); do nmap -n -sn -PR {hop} 2>/dev/null | grep -q 'Host is up' && exit 0; sleep 1; done; exit 1");
    let up = lab.host(network, "sh").arg("-c").arg(&reachable).run_with_timeout(Duration::from_secs(90));
    if !matches!(&up, Ok(Some(output)) if output.status.success()) {
        // A scan of nothing finds nothing open: that proves nothing.
        return Err(failed(format!("nothing answered at {hop} (the way to {target}) on the lab network"), format!("{up:?}")));
    }
    let scanned = match kind {
        Kind::Udp => lab.open_udp_ports(target, from, check.timeout),
        Kind::Tcp(only) => lab.open_tcp_ports(target, from, only, check.timeout),
    };
    let kind = if matches!(kind, Kind::Udp) { "UDP" } else { "TCP" };
    let shown = format!("nmap scan of {target} from {from}");
    match scanned {
        Ok(scan) if scan.n_closed > 0 => Err(failed(format!("from {from}, {} {kind} ports of {target} answered \"closed\": nothing drops probes of undeclared ports", scan.n_closed), shown)),
        Ok(scan) if scan.open == ports => Ok(()),
        Ok(scan) => Err(failed(format!("from {from}, open {kind} ports of {target} are {:?}, expected exactly {ports:?}", scan.open), shown)),
        Err(error) => Err(failed("the port scan failed", format!("{error:#}"))),
    }
}

/// The tunnel interface of the outside host's WireGuard peer.
const PEER_INTERFACE: &str = "rampart-wg";

/// A WireGuard peer on the outside host (wireguard-go: the lab's kernel
/// may have no WireGuard), removed on drop.
struct Peer<'a> {
    lab: &'a Lab,
    _daemon: crate::process::Background,
}

impl<'a> Peer<'a> {
    fn up(lab: &'a Lab, work: &Path, key: &Path, own: Ipv4Addr, machine_key: &str, machine_vpn: Ipv4Addr, endpoint: &str) -> anyhow::Result<Peer<'a>> {
        let _ = lab.outside("ip").args(["link", "del", PEER_INTERFACE]).run_unchecked();
        let daemon = lab
            .outside("wireguard-go")
            .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
            .args(["-f", PEER_INTERFACE])
            .spawn_background(&work.join("lab-wireguard-go.log"))?;
        let peer = Peer { lab, _daemon: daemon };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !lab.outside("ip").args(["link", "show", PEER_INTERFACE]).run_unchecked()?.status.success() {
            anyhow::ensure!(std::time::Instant::now() < deadline, "wireguard-go made no {PEER_INTERFACE} in 20 s");
            crate::process::check_interrupted()?;
            crate::process::pause(Duration::from_millis(100));
        }
        lab.outside("wg")
            .args(["set", PEER_INTERFACE, "private-key"])
            .arg(key)
            .args(["peer", machine_key, "allowed-ips", &format!("{machine_vpn}/32"), "endpoint", endpoint, "persistent-keepalive", "1"])
            .run()?;
        lab.outside("ip").args(["addr", "add", &format!("{own}/32"), "dev", PEER_INTERFACE]).run()?;
        lab.outside("ip").args(["link", "set", PEER_INTERFACE, "up"]).run()?;
        lab.outside("ip").args(["route", "add", &format!("{machine_vpn}/32"), "dev", PEER_INTERFACE]).run()?;
        Ok(peer)
    }

    /// The SSH banner's first bytes at `address`, if it answers within `seconds`.
    fn ssh_banner(&self, address: Ipv4Addr, seconds: u64) -> String {
        // One connection at a time, each in a shell of its own (a failed
        // `exec` redirection ends a non-interactive bash), until one answers.
        let probe = format!(
            "end=$(( $(date +%s) + {seconds} )); while [ $(date +%s) -lt $end ]; do b=$(timeout 5 bash -c 'exec 3<>/dev/tcp/{address}/22 && head -c 8 <&3' 2>/dev/null); [ -n \"$b\" ] && {{ printf %s \"$b\"; exit 0; }}; sleep 1; done"
        );
        self.lab.outside("sh").arg("-c").arg(&probe).run_with_timeout(Duration::from_secs(seconds + 10)).ok().flatten().map(|o| o.stdout_text()).unwrap_or_default()
    }

    fn handshakes(&self) -> String {
        self.lab.outside("wg").args(["show", PEER_INTERFACE, "latest-handshakes"]).run().map(|o| o.stdout_text()).unwrap_or_default()
    }
}

impl Drop for Peer<'_> {
    fn drop(&mut self) {
        let _ = self.lab.outside("ip").args(["link", "del", PEER_INTERFACE]).run_unchecked();
    }
}

fn wg_public_key(private: &str) -> anyhow::Result<String> {
    Ok(Cmd::new("wg").arg("pubkey").stdin_bytes(private.as_bytes().to_vec()).run()?.stdout_text().trim().to_string())
}

/// `[vpn]` from the outside host: the machine's public key is on its
/// console and in its journal; SSH does not answer on its outside address;
/// a tunnel with the enrolled peer's key (the file `key`) reaches SSH on the
/// machine's VPN address; a tunnel with any other key gets no handshake.
pub(super) fn vpn_admits_enrolled_peer(machine: &mut Machine, check: &Check, env: &CheckEnv, lab: &Lab, address: &str, key: &Path) -> Result<(), CheckFailure> {
    let vpn = &env.profile.vpn;
    let private = std::fs::read_to_string(key).map_err(|e| failed(format!("cannot read the peer key {}", key.display()), e.to_string()))?;
    let public = wg_public_key(private.trim()).map_err(|e| failed("wg pubkey refused the peer key", format!("{e:#}")))?;
    let peer = vpn.peers.iter().find(|p| p.public_key == public).ok_or_else(|| failed(format!("the profile enrolls no peer with the key in {} ({public})", key.display()), String::new()))?;
    let own = peer.allowed_ips.iter().find_map(|c| match c.address {
        std::net::IpAddr::V4(a) if c.prefix == 32 => Some(a),
        _ => None,
    });
    let own = own.ok_or_else(|| failed(format!("peer {} has no IPv4 /32 among its allowed addresses", peer.name), String::new()))?;
    let machine_vpn = vpn.addresses.iter().find_map(|a| match a.address {
        std::net::IpAddr::V4(v4) => Some(v4),
        _ => None,
    });
    let machine_vpn = machine_vpn.ok_or_else(|| failed("the profile's VPN has no IPv4 address", String::new()))?;
    let outside_address = match env.profile.gateway.interface(Role::Wan).and_then(|w| w.ipv4()) {
        Some(wan) => wan.address.to_string(),
        None => address.to_string(),
    };
    let line = machine.wait_for_console(crate::stages::vpn::PUBLIC_KEY_MARKER, check.timeout).map_err(|e| failed("the machine's WireGuard public key is not on its console", format!("{e:#}")))?;
    let machine_key = line.split(crate::stages::vpn::PUBLIC_KEY_MARKER).nth(1).unwrap_or_default().trim().to_string();
    crate::profile::network::parse_wireguard_key(&machine_key).map_err(|e| failed("the console's public key is not a WireGuard key", e))?;
    let journal = crate::vmtest::patch::root_status(machine, env, "journalctl -b -t rampart-vpn -o cat --no-pager", check.timeout)?;
    if !journal.contains(&machine_key) {
        return Err(failed("the machine's journal does not carry its WireGuard public key", journal));
    }
    let plain = format!("nmap -n -Pn -sS -p 22 --max-retries 1 {outside_address} | grep '^22/'");
    let seen = lab.outside("sh").arg("-c").arg(&plain).run_with_timeout(Duration::from_secs(60)).ok().flatten().map(|o| o.stdout_text()).unwrap_or_default();
    if !seen.contains("filtered") {
        return Err(failed(format!("without the tunnel, SSH at {outside_address} is not filtered from the outside host"), seen));
    }
    let endpoint = format!("{outside_address}:{}", vpn.listen_port);
    let enrolled = Peer::up(lab, env.work, key, own, &machine_key, machine_vpn, &endpoint).map_err(|e| failed("could not bring the outside host's WireGuard peer up", format!("{e:#}")))?;
    let banner = enrolled.ssh_banner(machine_vpn, 40);
    let handshakes = enrolled.handshakes();
    drop(enrolled);
    if !banner.starts_with("SSH-2.0") {
        return Err(failed(format!("through the enrolled peer's tunnel, SSH at {machine_vpn} did not answer"), format!("banner: {banner:?}\nwg latest-handshakes: {handshakes}")));
    }
    let stranger_key = env.work.join("lab-wireguard-stranger.key");
    let generated = Cmd::new("wg").arg("genkey").run().map_err(|e| failed("wg genkey failed", format!("{e:#}")))?;
    crate::fsutil::write_atomic(&stranger_key, generated.stdout_text().as_bytes()).map_err(|e| failed("could not write the stranger's key", format!("{e:#}")))?;
    let stranger = Peer::up(lab, env.work, &stranger_key, own, &machine_key, machine_vpn, &endpoint).map_err(|e| failed("could not bring the stranger's WireGuard peer up", format!("{e:#}")))?;
    let banner = stranger.ssh_banner(machine_vpn, 15);
    let handshakes = stranger.handshakes();
    drop(stranger);
    let handshake_done = handshakes.split_whitespace().nth(1).is_some_and(|t| t != "0");
    if !banner.is_empty() || handshake_done {
        return Err(failed("a WireGuard key the profile does not enroll got through", format!("banner: {banner:?}\nwg latest-handshakes: {handshakes}")));
    }
    Ok(())
}
