//! Gateway control (seed steps 13, "Firewalls and Routing"): a border
//! gateway that filters what it forwards. Each NIC takes its role's name
//! (wan, lan, dmz, mgmt) from a systemd .link file matching its MAC or its
//! udev path, so the same image names the same ports on the hardware it was
//! made for and in QEMU; interfaces without a role stay unconfigured.
//! IPv4 and IPv6 forwarding on; the firewall's forward chain (rendered here,
//! loaded by [firewall]) drops by default and lets lan out to wan (IPv4
//! masqueraded) and to the dmz, the declared port forwards from wan in to
//! their dmz hosts, and replies back; the seed's border ports are dropped
//! and logged between any two zones. wan drops spoofed sources (bogons, the
//! inside prefixes, anything without a route back through wan). SSH to the
//! gateway answers from lan and mgmt only. Optional DHCP and DNS for lan by
//! dnsmasq, on lan alone.

use anyhow::{bail, Result};
use serde_json::json;

use crate::build::context::BuildContext;
use crate::profile::network::{overlap, GatewayInterface, LinkMatch, Role};
use crate::profile::{Cidr, FirewallAllow, Port, Profile, Protocol};
use crate::traced::TracedText;

/// The seed's border ports, as nft writes the set.
pub const BORDER_PORTS: &str = "111, 137-139, 445, 515";
pub const DNSMASQ_CONF: &str = "etc/dnsmasq.d/rampart-lan.conf";
pub const DHCP_SERVICE: &str = "dnsmasq.service";

/// Sources that never arrive on wan from the internet: unroutable and
/// special-purpose ranges (RFC 6890).
const BOGONS_V4: &[&str] = &[
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
];
/// Private and shared ranges: bogons too, unless the wan link itself is in
/// one (a gateway behind another router), or wan takes its address by DHCP.
const PRIVATE_V4: &[&str] = &["10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16"];
const BOGONS_V6: &[&str] = &["::1/128", "::ffff:0:0/96", "100::/64", "2001:db8::/32", "fec0::/10", "ff00::/8"];
const PRIVATE_V6: &[&str] = &["fc00::/7"];

fn cidrs(list: &[&str]) -> Vec<Cidr> {
    list.iter().map(|c| Cidr::parse(c).expect("valid range")).collect()
}

/// The sources wan drops, of one family: bogons, private ranges the wan link
/// is not in, and every prefix behind the gateway; ranges inside one already
/// listed are left out (nft refuses overlapping intervals).
pub fn spoofed_sources(profile: &Profile, v4: bool) -> Vec<Cidr> {
    let gateway = &profile.gateway;
    let wan = gateway.interface(Role::Wan).expect("a gateway has wan");
    let (bogons, private) = if v4 { (BOGONS_V4, PRIVATE_V4) } else { (BOGONS_V6, PRIVATE_V6) };
    let mut candidates = cidrs(bogons);
    let wan_networks: Vec<Cidr> = wan.addresses.iter().map(|a| a.network()).collect();
    if !(v4 && wan.dhcp) {
        candidates.extend(cidrs(private).into_iter().filter(|p| !wan_networks.iter().any(|w| overlap(p, w))));
    }
    candidates.extend(gateway.inside_prefixes());
    if profile.vpn.enable {
        candidates.extend(profile.vpn.addresses.iter().map(|a| a.network()));
    }
    candidates.retain(|c| c.address.is_ipv4() == v4);
    candidates.sort_by_key(|c| c.prefix);
    let mut kept: Vec<Cidr> = Vec::new();
    for candidate in candidates {
        if !kept.iter().any(|k| overlap(k, &candidate)) {
            kept.push(candidate);
        }
    }
    kept
}

/// The interfaces SSH answers on; empty: any.
pub fn ssh_interfaces(profile: &Profile) -> Vec<String> {
    let mut interfaces = Vec::new();
    if profile.gateway.enable {
        for role in [Role::Lan, Role::Mgmt] {
            if profile.gateway.interface(role).is_some() {
                interfaces.push(role.name().to_string());
            }
        }
    }
    crate::stages::vpn::restrict_ssh(profile, &mut interfaces);
    interfaces
}

/// The gateway's own services: DHCP and DNS for lan, on lan.
pub fn declared_ports(profile: &Profile) -> Vec<FirewallAllow> {
    let Some(dhcp) = profile.gateway.dhcp.as_ref().filter(|_| profile.gateway.enable) else { return Vec::new() };
    let on_lan = |port: u16, protocol: Protocol, service: &str, from: Vec<crate::profile::Cidr>| FirewallAllow {
        port: Port::from_i64(port.into()).expect("valid"),
        protocol,
        from,
        interfaces: vec!["lan".into()],
        service: Some(service.into()),
        at: "[gateway.dhcp]".into(),
    };
    // DHCP is IPv4's (a client asks from 0.0.0.0); DNS answers both families.
    let ipv4_only = vec![crate::profile::Cidr::parse("0.0.0.0/0").expect("valid")];
    let mut ports = vec![on_lan(67, Protocol::Udp, DHCP_SERVICE, ipv4_only)];
    if dhcp.dns {
        ports.push(on_lan(53, Protocol::Udp, DHCP_SERVICE, crate::profile::controls::anywhere()));
        ports.push(on_lan(53, Protocol::Tcp, DHCP_SERVICE, crate::profile::controls::anywhere()));
    }
    ports
}

/// The sysctls a gateway changes from the firewall's: it forwards.
pub const FORWARDING_SYSCTLS: &[(&str, &str)] = &[("net.ipv4.ip_forward", "1"), ("net.ipv6.conf.all.forwarding", "1")];

fn set(items: &[Cidr]) -> String {
    let items: Vec<String> = items.iter().map(|c| c.to_string()).collect();
    format!("{{ {} }}", items.join(", "))
}

/// The forward chain's rules (inside `chain forward`, after its policy).
pub fn render_forward(profile: &Profile, r: &mut TracedText) {
    let gateway = &profile.gateway;
    if !gateway.enable {
        return;
    }
    r.line("\t\tct state invalid drop", Some("[gateway]".into()));
    r.line("\t\t# the seed's border ports, between any two zones and both ways: dropped and logged", None);
    r.line(&format!("\t\tmeta l4proto {{ tcp, udp }} th dport {{ {BORDER_PORTS} }} limit rate 10/minute burst 5 packets log prefix \"rampart-border: \" level warn"), None);
    r.line(&format!("\t\tmeta l4proto {{ tcp, udp }} th dport {{ {BORDER_PORTS} }} drop"), None);
    r.line("\t\tct state established,related accept", None);
    r.line("\t\ticmp type { destination-unreachable, time-exceeded, parameter-problem } accept", None);
    r.line("\t\ticmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem } accept", None);
    r.line("\t\t# lan reaches wan and the dmz; wan reaches the dmz only through a declared forward", None);
    r.line("\t\tiifname \"lan\" oifname \"wan\" accept", Some("[gateway] lan".into()));
    if gateway.interface(Role::Dmz).is_some() {
        r.line("\t\tiifname \"lan\" oifname \"dmz\" accept", Some("[gateway] dmz".into()));
    }
    if !gateway.forwards.is_empty() {
        r.line("\t\tiifname \"wan\" oifname \"dmz\" ct status dnat accept", Some("gateway.forward".into()));
    }
    if profile.firewall.log_drops {
        r.line("\t\tlimit rate 5/minute burst 10 packets log prefix \"rampart-forward-drop: \" level info", Some("firewall.log-drops".into()));
    }
}

/// The gateway's chains besides input, output and forward: anti-spoofing
/// before anything else sees a packet, then the port forwards and the
/// masquerade.
pub fn render_chains(profile: &Profile, r: &mut TracedText) {
    let gateway = &profile.gateway;
    if !gateway.enable {
        return;
    }
    r.line("\tchain prerouting {", None);
    r.line("\t\ttype filter hook prerouting priority mangle; policy accept;", None);
    r.line("\t\t# anti-spoofing on wan: bogons, the inside prefixes, and sources without a route back through wan (strict reverse path)", None);
    for v4 in [true, false] {
        let sources = spoofed_sources(profile, v4);
        if sources.is_empty() {
            continue;
        }
        let family = if v4 { "ip" } else { "ip6" };
        r.line(&format!("\t\tiifname \"wan\" {family} saddr {} limit rate 10/minute burst 5 packets log prefix \"rampart-spoofed: \" level warn", set(&sources)), Some("[gateway] wan".into()));
        r.line(&format!("\t\tiifname \"wan\" {family} saddr {} drop", set(&sources)), Some("[gateway] wan".into()));
    }
    r.line("\t\tiifname \"wan\" meta nfproto ipv4 fib saddr . iif oif missing limit rate 10/minute burst 5 packets log prefix \"rampart-spoofed: \" level warn", None);
    r.line("\t\tiifname \"wan\" meta nfproto ipv4 fib saddr . iif oif missing drop", None);
    r.line("\t\tiifname \"wan\" ip6 saddr != :: fib saddr . iif oif missing drop", None);
    r.line("\t}", None);
    r.line("\tchain dstnat {", None);
    r.line("\t\ttype nat hook prerouting priority dstnat; policy accept;", None);
    for forward in &gateway.forwards {
        r.line(
            &format!("\t\tiifname \"wan\" fib daddr type local {} dport {} dnat ip to {}:{}", forward.protocol.as_str(), forward.port, forward.to, forward.to_port),
            Some(format!("{}: gateway.forward", forward.at)),
        );
    }
    r.line("\t}", None);
    r.line("\tchain srcnat {", None);
    r.line("\t\ttype nat hook postrouting priority srcnat; policy accept;", None);
    r.line("\t\toifname \"wan\" meta nfproto ipv4 masquerade", Some("[gateway] wan".into()));
    r.line("\t}", None);
}

/// The .link file that names a NIC after its role.
fn link_file(interface: &GatewayInterface) -> String {
    let matcher = match &interface.link {
        LinkMatch::Mac(mac) => format!("MACAddress={mac}"),
        LinkMatch::Path(path) => format!("Path={path}"),
    };
    format!("# rampart: [gateway] the {role} interface ({})\n[Match]\n{matcher}\n\n[Link]\nName={role}\nNamePolicy=\n", interface.at, role = interface.role.name())
}

fn network_file(interface: &GatewayInterface) -> String {
    let role = interface.role.name();
    let mut text = format!("# rampart: [gateway] the {role} zone\n[Match]\nName={role}\n\n[Network]\n");
    for address in &interface.addresses {
        text.push_str(&format!("Address={address}\n"));
    }
    for router in &interface.routers {
        text.push_str(&format!("Gateway={router}\n"));
    }
    text.push_str(if interface.dhcp { "DHCP=ipv4\n" } else { "DHCP=no\n" });
    // Router advertisements are taken on wan only; the zones behind are
    // configured here, not by whatever advertises on them, and the gateway
    // advertises their IPv6 prefixes itself (SLAAC for their hosts).
    text.push_str(if interface.role == Role::Wan { "IPv6AcceptRA=yes\n" } else { "IPv6AcceptRA=no\n" });
    let advertised = advertised_prefixes(interface);
    if !advertised.is_empty() {
        text.push_str("IPv6SendRA=yes\n");
    }
    text.push_str("LLMNR=no\nMulticastDNS=no\n");
    for prefix in &advertised {
        text.push_str(&format!("\n[IPv6Prefix]\nPrefix={prefix}\n"));
    }
    if interface.dhcp && interface.role == Role::Mgmt {
        // Management reaches the gateway, never the internet: no default route, no resolver.
        text.push_str("\n[DHCPv4]\nUseGateway=no\nUseRoutes=no\nUseDNS=no\nUseDomains=no\n");
    } else if interface.dhcp {
        text.push_str("\n[DHCPv4]\nUseDomains=yes\n");
    }
    text
}

/// The IPv6 prefixes a zone's hosts learn from the gateway's advertisements.
fn advertised_prefixes(interface: &GatewayInterface) -> Vec<Cidr> {
    if !matches!(interface.role, Role::Lan | Role::Dmz) {
        return Vec::new();
    }
    interface.addresses.iter().filter(|a| a.address.is_ipv6() && a.prefix == 64).map(|a| a.network()).collect()
}

/// Input rules of the gateway's own: router solicitations from the zones it advertises to.
pub fn render_input(profile: &Profile, r: &mut TracedText) {
    let zones: Vec<String> = profile.gateway.interfaces.iter().filter(|i| !advertised_prefixes(i).is_empty()).map(|i| format!("\"{}\"", i.role.name())).collect();
    if profile.gateway.enable && !zones.is_empty() {
        r.line("\t\t# router solicitations from the zones the gateway advertises IPv6 prefixes to", None);
        r.line(&format!("\t\tiifname {{ {} }} icmpv6 type nd-router-solicit ip6 hoplimit 255 accept", zones.join(", ")), Some("[gateway]".into()));
    }
}

fn dnsmasq_conf(profile: &Profile) -> Option<String> {
    let dhcp = profile.gateway.dhcp.as_ref()?;
    let lan = profile.gateway.interface(Role::Lan)?.ipv4()?;
    let mask = std::net::Ipv4Addr::from(u32::MAX.checked_shl(32 - lan.prefix as u32).unwrap_or(0));
    let mut text = String::from("# rampart: [gateway.dhcp] DHCP (and DNS) for lan, on lan alone\n");
    text.push_str("interface=lan\nexcept-interface=lo\nbind-dynamic\nno-hosts\ndhcp-authoritative\n");
    text.push_str(&format!("dhcp-range=lan,{},{},{mask},12h\n", dhcp.first, dhcp.last));
    text.push_str(&format!("dhcp-option=option:router,{}\n", lan.address));
    if dhcp.dns {
        text.push_str(&format!("dhcp-option=option:dns-server,{}\ndomain-needed\nbogus-priv\n", lan.address));
        if dhcp.upstream.is_empty() {
            text.push_str("# upstream servers: the ones wan's DHCP gave systemd-resolved\nresolv-file=/run/systemd/resolve/resolv.conf\n");
        } else {
            text.push_str("no-resolv\n");
            for server in &dhcp.upstream {
                text.push_str(&format!("server={server}\n"));
            }
        }
    } else {
        text.push_str("# no DNS: DHCP only\nport=0\n");
    }
    Some(text)
}

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    let gateway = ctx.profile.gateway.clone();
    if !gateway.enable {
        ctx.record("gateway", false, json!({ "reason": "no [gateway] interfaces" }));
        return Ok(());
    }
    if !ctx.profile.firewall.enable {
        bail!("gateway: a gateway filters what it forwards with [firewall]; firewall.enable = false leaves it without one");
    }
    for interface in &gateway.interfaces {
        let role = interface.role.name();
        ctx.install_file(&format!("etc/systemd/network/10-rampart-{role}.link"), link_file(interface).as_bytes(), 0o644)?;
        ctx.install_file(&format!("etc/systemd/network/10-rampart-{role}.network"), network_file(interface).as_bytes(), 0o644)?;
    }
    let mut sysctls = String::from("# rampart: [gateway] a gateway forwards (after the firewall's file, which turns forwarding off)\n");
    for (key, value) in FORWARDING_SYSCTLS {
        sysctls.push_str(&format!("{key} = {value}\n"));
    }
    ctx.install_file("etc/sysctl.d/61-rampart-gateway.conf", sysctls.as_bytes(), 0o644)?;
    let dhcp = match dnsmasq_conf(&ctx.profile) {
        Some(conf) => {
            ctx.install_file(DNSMASQ_CONF, conf.as_bytes(), 0o644)?;
            let output = ctx.in_root("dnsmasq").args(["--test", &format!("--conf-file=/{DNSMASQ_CONF}")]).without_network().run_unchecked()?;
            if !output.status.success() {
                bail!("gateway.dhcp: the image's dnsmasq refuses the configuration made from it:\n{}", String::from_utf8_lossy(&output.stderr).trim());
            }
            let d = gateway.dhcp.as_ref().expect("dhcp");
            json!({ "server": "dnsmasq on lan only", "range": format!("{}-{}", d.first, d.last), "dns": d.dns, "upstream": d.upstream.iter().map(|u| u.to_string()).collect::<Vec<_>>(), "config": format!("/{DNSMASQ_CONF}") })
        }
        None => json!(null),
    };
    let interfaces: Vec<serde_json::Value> = gateway
        .interfaces
        .iter()
        .map(|i| {
            json!({
                "role": i.role.name(),
                "matched-by": match &i.link { LinkMatch::Mac(m) => format!("MAC {m}"), LinkMatch::Path(p) => format!("path {p}") },
                "addresses": i.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "dhcp-client": i.dhcp,
                "routers": i.routers.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let forwards: Vec<serde_json::Value> =
        gateway.forwards.iter().map(|f| json!({ "from-wan": format!("{}/{}", f.port, f.protocol.as_str()), "to": format!("{}:{}", f.to, f.to_port) })).collect();
    let spoofed: Vec<String> = [true, false].iter().flat_map(|v4| spoofed_sources(&ctx.profile, *v4)).map(|c| c.to_string()).collect();
    ctx.record(
        "gateway",
        true,
        json!({
            "interfaces": interfaces,
            "unnamed-interfaces": "not configured (no catch-all DHCP on a gateway)",
            "forwarding": "IPv4 and IPv6 (/etc/sysctl.d/61-rampart-gateway.conf)",
            "forward-chain": "default drop; lan to wan (IPv4 masqueraded) and to the dmz; wan to the dmz through declared forwards only; established and related back",
            "border-ports-dropped-and-logged": BORDER_PORTS,
            "port-forwards": forwards,
            "wan-drops-sources": spoofed,
            "reverse-path": "strict on wan (fib saddr . iif) and net.ipv4.conf.all.rp_filter = 1",
            "ssh-from": ssh_interfaces(&ctx.profile),
            "dhcp": dhcp,
        }),
    );
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The lab's gateway profile (profiles/lab-gateway.toml), for the network controls' tests.
    pub(crate) fn lab_gateway() -> Profile {
        crate::profile::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/lab-gateway.toml")).unwrap()
    }

    #[test]
    fn wan_drops_bogons_private_ranges_outside_its_own_and_the_inside_prefixes() {
        let profile = lab_gateway();
        let v4: Vec<String> = spoofed_sources(&profile, true).iter().map(|c| c.to_string()).collect();
        // wan is 10.77.0.1/24: 10.0.0.0/8 stays, the zones inside it are listed one by one.
        assert!(!v4.contains(&"10.0.0.0/8".to_string()));
        for range in ["192.168.0.0/16", "172.16.0.0/12", "127.0.0.0/8", "10.78.0.0/24", "10.79.0.0/24", "10.90.0.0/24"] {
            assert!(v4.contains(&range.to_string()), "{range} in {v4:?}");
        }
        // No two overlap: nft refuses overlapping intervals in one set.
        let ranges = spoofed_sources(&profile, true);
        for (n, a) in ranges.iter().enumerate() {
            assert!(ranges[n + 1..].iter().all(|b| !overlap(a, b)), "{a} overlaps");
        }
        let gateway = crate::profile::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/gateway.toml")).unwrap();
        // wan by DHCP may sit behind another router: private ranges are kept.
        let v4: Vec<String> = spoofed_sources(&gateway, true).iter().map(|c| c.to_string()).collect();
        assert!(!v4.contains(&"192.168.0.0/16".to_string()) && v4.contains(&"192.168.10.0/24".to_string()), "{v4:?}");
        let v6: Vec<String> = spoofed_sources(&gateway, false).iter().map(|c| c.to_string()).collect();
        assert!(v6.contains(&"fc00::/7".to_string()) && !v6.iter().any(|r| r.starts_with("fd10")), "{v6:?}");
    }

    #[test]
    fn forwards_are_for_the_gateways_own_addresses_and_ssh_answers_inside_only() {
        let profile = lab_gateway();
        let mut r = TracedText::default();
        render_chains(&profile, &mut r);
        assert!(r.text.contains("iifname \"wan\" fib daddr type local tcp dport 8080 dnat ip to 10.79.0.2:80\n"), "{}", r.text);
        assert!(r.text.contains("oifname \"wan\" meta nfproto ipv4 masquerade"));
        let mut f = TracedText::default();
        render_forward(&profile, &mut f);
        let border = f.text.find("rampart-border").unwrap();
        assert!(border < f.text.find("ct state established,related accept").unwrap(), "border ports go first, both ways");
        assert_eq!(ssh_interfaces(&profile), ["lan", "mgmt", "wg0"]);
        let input = crate::stages::firewall::render(&profile).text;
        assert!(input.contains("iifname { \"lan\" } ip saddr { 0.0.0.0/0 } udp dport 67 accept"), "{input}");
        assert!(!input.contains("ip6 saddr { ::/0 } udp dport 67"), "DHCP is IPv4's");
        assert!(input.contains("iifname { \"lan\" } ip6 saddr { ::/0 } udp dport 53 accept"));
    }

    #[test]
    fn interfaces_are_named_by_their_match_and_mgmt_takes_no_default_route() {
        let profile = lab_gateway();
        let mgmt = profile.gateway.interface(Role::Mgmt).unwrap();
        assert!(link_file(mgmt).contains("[Match]\nMACAddress=52:54:00:12:34:56\n\n[Link]\nName=mgmt\n"));
        assert!(network_file(mgmt).contains("UseGateway=no"));
        let wan = profile.gateway.interface(Role::Wan).unwrap();
        assert!(network_file(wan).contains("Address=10.77.0.1/24\n") && network_file(wan).contains("DHCP=no\n"));
        assert!(!network_file(wan).contains("IPv6SendRA"));
        let lan = network_file(profile.gateway.interface(Role::Lan).unwrap());
        assert!(lan.contains("IPv6SendRA=yes\n") && lan.contains("\n[IPv6Prefix]\nPrefix=fd78::/64\n"), "{lan}");
        let input = crate::stages::firewall::render(&profile).text;
        assert!(input.contains("iifname { \"lan\" } icmpv6 type nd-router-solicit ip6 hoplimit 255 accept"), "{input}");
    }
}
