//! `[gateway]`, `[vpn]` and `[wireless]` (seed steps 13 and 14): a border
//! gateway's interfaces by role, its port forwards and lan DHCP; the
//! WireGuard admin VPN and its peers; whether radios may load. Validated
//! where written, merged (interfaces by role, forwards by port, peers by
//! name), and checked as a whole once merged (zones that overlap, a forward
//! outside the dmz, a peer that would take the default route). Pure.

use std::net::{IpAddr, Ipv4Addr};

use super::controls::{Protocol, Sited};
use super::monitoring::LogHost;
use super::raw::{RawGateway, RawVpn, RawWireless};
use super::types::{address_value, host_mask, Cidr, Port};
use crate::located::{LocatedError, SourceText};

/// The seed's border ports, never forwarded (NetBIOS, SMB, RPC, LPR).
pub const BORDER_PORTS: &[(u16, u16)] = &[(111, 111), (137, 139), (445, 445), (515, 515)];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Wan,
    Lan,
    Dmz,
    /// Out-of-band management: SSH to the gateway, never forwarded.
    Mgmt,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Wan => "wan",
            Role::Lan => "lan",
            Role::Dmz => "dmz",
            Role::Mgmt => "mgmt",
        }
    }

    fn parse(s: &str) -> Result<Role, String> {
        match s {
            "wan" => Ok(Role::Wan),
            "lan" => Ok(Role::Lan),
            "dmz" => Ok(Role::Dmz),
            "mgmt" => Ok(Role::Mgmt),
            _ => Err(format!("{s:?} is not a role (wan, lan, dmz or mgmt)")),
        }
    }
}

/// How udev finds the NIC that takes a role's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkMatch {
    Mac(String),
    Path(String),
}

/// An interface address with its prefix length ("10.78.0.1/24").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IfAddress {
    pub address: IpAddr,
    pub prefix: u8,
}

impl IfAddress {
    pub fn parse(s: &str) -> Result<IfAddress, String> {
        let bad = || format!("{s:?} is not an interface address with its prefix length (e.g. \"10.78.0.1/24\" or \"fd78::1/64\")");
        let (address, prefix) = s.split_once('/').ok_or_else(bad)?;
        let address: IpAddr = address.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        if prefix == 0 || prefix > bits {
            return Err(format!("{s:?}: a prefix length from 1 to {bits}"));
        }
        let network = network_of(address, prefix);
        if prefix < bits && (network.address == address || (address.is_ipv4() && bits - prefix >= 2 && address_value(address) == address_value(network.address) | host_mask(bits, prefix))) {
            return Err(format!("{s:?} is the network's own (or broadcast) address, not a host's"));
        }
        Ok(IfAddress { address, prefix })
    }

    pub fn network(&self) -> Cidr {
        network_of(self.address, self.prefix)
    }
}

impl std::fmt::Display for IfAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

fn network_of(address: IpAddr, prefix: u8) -> Cidr {
    let bits = if address.is_ipv4() { 32 } else { 128 };
    let value = address_value(address) & !host_mask(bits, prefix);
    let address = match address {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(value as u32)),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(value)),
    };
    Cidr { address, prefix }
}

/// The first and last address a range covers, as numbers of its family.
fn bounds(range: &Cidr) -> (u128, u128) {
    let bits = if range.address.is_ipv4() { 32 } else { 128 };
    let low = address_value(range.address);
    (low, low | host_mask(bits, range.prefix))
}

pub fn contains(range: &Cidr, address: IpAddr) -> bool {
    let (low, high) = bounds(range);
    range.address.is_ipv4() == address.is_ipv4() && (low..=high).contains(&address_value(address))
}

pub fn overlap(a: &Cidr, b: &Cidr) -> bool {
    let ((a_low, a_high), (b_low, b_high)) = (bounds(a), bounds(b));
    a.address.is_ipv4() == b.address.is_ipv4() && a_low <= b_high && b_low <= a_high
}

/// Whether the ranges of one family together cover every address of it.
fn cover_everything(ranges: &[Cidr], v4: bool) -> bool {
    let mut spans: Vec<(u128, u128)> = ranges.iter().filter(|r| r.address.is_ipv4() == v4).map(bounds).collect();
    spans.sort_unstable();
    let last = if v4 { u32::MAX as u128 } else { u128::MAX };
    let mut next = 0u128;
    for (low, high) in spans {
        if low > next {
            return false;
        }
        if high == last {
            return true;
        }
        next = next.max(high + 1);
    }
    false
}

fn parse_mac(s: &str) -> Result<String, String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 || !parts.iter().all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit())) {
        return Err(format!("{s:?} is not a MAC address (six hex pairs, e.g. \"52:54:00:12:34:56\")"));
    }
    Ok(s.to_ascii_lowercase())
}

/// A udev ID_PATH as networkd's `Path=` matches it.
fn parse_link_path(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 128 || !s.chars().all(|c| c.is_ascii_alphanumeric() || ":._-".contains(c)) {
        return Err(format!("{s:?} is not a device path as udev names it (ID_PATH, e.g. \"pci-0000:00:04.0\")"));
    }
    Ok(s.to_string())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayInterface {
    pub role: Role,
    pub link: LinkMatch,
    pub addresses: Vec<IfAddress>,
    pub dhcp: bool,
    pub routers: Vec<IpAddr>,
    pub at: String,
}

impl GatewayInterface {
    pub fn ipv4(&self) -> Option<&IfAddress> {
        self.addresses.iter().find(|a| a.address.is_ipv4())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortForward {
    pub protocol: Protocol,
    pub port: Port,
    pub to: Ipv4Addr,
    pub to_port: Port,
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpSpec {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
    pub dns: bool,
    pub upstream: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GatewaySpec {
    pub enable: bool,
    /// In role order: wan, lan, dmz, mgmt.
    pub interfaces: Vec<GatewayInterface>,
    pub forwards: Vec<PortForward>,
    pub dhcp: Option<DhcpSpec>,
}

impl GatewaySpec {
    pub fn interface(&self, role: Role) -> Option<&GatewayInterface> {
        self.interfaces.iter().find(|i| i.role == role)
    }

    /// The prefixes behind the gateway (lan, dmz, mgmt): never a source on wan.
    pub fn inside_prefixes(&self) -> Vec<Cidr> {
        self.interfaces.iter().filter(|i| i.role != Role::Wan).flat_map(|i| i.addresses.iter().map(|a| a.network())).collect()
    }
}

#[derive(Debug, Default)]
pub struct GatewayLayer {
    enable: Option<bool>,
    interfaces: Vec<GatewayInterface>,
    forwards: Vec<PortForward>,
    dhcp_enable: Option<bool>,
    dhcp_range: Option<Sited<(Ipv4Addr, Ipv4Addr)>>,
    dhcp_dns: Option<bool>,
    dhcp_upstream: Option<Vec<IpAddr>>,
    /// Where the section was written, for errors about the whole.
    at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VpnSsh {
    /// SSH answers where it did, and over the VPN.
    Also,
    /// SSH answers over the VPN alone.
    Only,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpnPeer {
    pub name: String,
    pub public_key: String,
    pub allowed_ips: Vec<Cidr>,
    pub endpoint: Option<LogHost>,
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpnSpec {
    pub enable: bool,
    pub addresses: Vec<IfAddress>,
    pub listen_port: Port,
    pub ssh: VpnSsh,
    pub allow_default_route: bool,
    pub peers: Vec<VpnPeer>,
}

#[derive(Debug, Default)]
pub struct VpnLayer {
    enable: Option<bool>,
    addresses: Option<Vec<IfAddress>>,
    listen_port: Option<Port>,
    ssh: Option<VpnSsh>,
    allow_default_route: Option<bool>,
    peers: Vec<VpnPeer>,
    at: Option<String>,
}

#[derive(Debug, Default)]
pub struct NetworkLayer {
    gateway: GatewayLayer,
    vpn: VpnLayer,
    wireless: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WirelessSpec {
    /// false (the default): radio modules refused, rfkill blocks at boot.
    pub enable: bool,
}

/// A WireGuard key: 32 bytes in standard base64.
pub fn parse_wireguard_key(s: &str) -> Result<String, String> {
    use base64::Engine;
    match base64::engine::general_purpose::STANDARD.decode(s) {
        Ok(bytes) if bytes.len() == 32 => Ok(s.to_string()),
        Ok(bytes) => Err(format!("{s:?} is {} bytes, not the 32 of a WireGuard key", bytes.len())),
        Err(_) => Err(format!("{s:?} is not base64 (a WireGuard key is 32 bytes in base64, as `wg pubkey` prints it)")),
    }
}

fn parse_addresses(source: &SourceText, values: &[toml::Spanned<String>], field: &str) -> Result<Vec<IfAddress>, LocatedError> {
    let mut parsed: Vec<IfAddress> = Vec::new();
    for value in values {
        let address = source.check(value, field, |s| IfAddress::parse(s))?;
        if parsed.iter().any(|a| a.address.is_ipv4() == address.address.is_ipv4()) {
            return Err(source.error(value, format!("{field}: one address of each family (IPv4, IPv6)")));
        }
        parsed.push(address);
    }
    Ok(parsed)
}

fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.parse().map_err(|_| format!("{s:?} is not an IP address"))
}

pub fn validate(source: &SourceText, gateway: Option<RawGateway>, vpn: Option<RawVpn>, wireless: Option<RawWireless>) -> Result<NetworkLayer, LocatedError> {
    let mut layer = NetworkLayer { wireless: wireless.and_then(|w| w.enable), ..NetworkLayer::default() };
    if let Some(raw) = gateway {
        let g = &mut layer.gateway;
        g.enable = raw.enable;
        for interface in &raw.interface {
            let role = source.check(&interface.role, "gateway.interface.role", |s| Role::parse(s))?;
            if g.interfaces.iter().any(|i| i.role == role) {
                return Err(source.error(&interface.role, format!("gateway.interface.role: {} is given to two interfaces", role.name())));
            }
            let at = source.location(interface.role.span().start);
            let link = match (&interface.mac, &interface.path) {
                (Some(mac), None) => LinkMatch::Mac(source.check(mac, "gateway.interface.mac", |s| parse_mac(s))?),
                (None, Some(path)) => LinkMatch::Path(source.check(path, "gateway.interface.path", |s| parse_link_path(s))?),
                _ => return Err(source.error(&interface.role, format!("gateway.interface: the {} interface needs mac or path (one of them)", role.name()))),
            };
            let addresses = match &interface.addresses {
                Some(values) => parse_addresses(source, values, "gateway.interface.addresses")?,
                None => Vec::new(),
            };
            let dhcp = interface.dhcp.unwrap_or(false);
            if dhcp && !matches!(role, Role::Wan | Role::Mgmt) {
                return Err(source.error(&interface.role, format!("gateway.interface.dhcp: the {} interface serves its zone and needs a static address", role.name())));
            }
            if dhcp && addresses.iter().any(|a| a.address.is_ipv4()) {
                return Err(source.error(&interface.role, "gateway.interface: give dhcp = true or an IPv4 address, not both"));
            }
            if !dhcp && addresses.iter().all(|a| !a.address.is_ipv4()) {
                return Err(source.error(&interface.role, format!("gateway.interface: the {} interface needs an IPv4 address (addresses) or dhcp = true", role.name())));
            }
            let mut routers = Vec::new();
            for router in interface.routers.iter().flatten() {
                let address = source.check(router, "gateway.interface.routers", |s| parse_ip(s))?;
                if role != Role::Wan {
                    return Err(source.error(router, "gateway.interface.routers: only wan has the default route"));
                }
                if !addresses.iter().any(|a| contains(&a.network(), address)) {
                    return Err(source.error(router, format!("gateway.interface.routers: {address} is not on the wan interface's networks")));
                }
                routers.push(address);
            }
            g.interfaces.push(GatewayInterface { role, link, addresses, dhcp, routers, at });
        }
        for forward in &raw.forward {
            let port = source.check(&forward.port, "gateway.forward.port", |p| Port::from_i64(*p))?;
            let protocol = match &forward.protocol {
                Some(p) => source.check(p, "gateway.forward.protocol", |s| match s.as_str() {
                    "tcp" => Ok(Protocol::Tcp),
                    "udp" => Ok(Protocol::Udp),
                    other => Err(format!("{other:?} is not tcp or udp")),
                })?,
                None => Protocol::Tcp,
            };
            let (to, to_port) = source.check(&forward.to, "gateway.forward.to", |s| parse_forward_target(s, port))?;
            for p in [port, to_port] {
                if BORDER_PORTS.iter().any(|(low, high)| (*low..=*high).contains(&p.get())) {
                    return Err(source.error(&forward.port, format!("gateway.forward: port {p} is one of the seed's border ports (111, 137-139, 445, 515), dropped at the border and never forwarded")));
                }
            }
            let at = source.location(forward.port.span().start);
            if layer.gateway.forwards.iter().any(|f| (f.protocol, f.port) == (protocol, port)) {
                return Err(source.error(&forward.port, format!("gateway.forward: {port}/{} is forwarded twice", protocol.as_str())));
            }
            layer.gateway.forwards.push(PortForward { protocol, port, to, to_port, at });
        }
        if let Some(dhcp) = &raw.dhcp {
            let g = &mut layer.gateway;
            g.dhcp_enable = dhcp.enable;
            g.dhcp_dns = dhcp.dns;
            if let Some(range) = &dhcp.range {
                let parsed: Vec<Ipv4Addr> = range
                    .iter()
                    .map(|v| source.check(v, "gateway.dhcp.range", |s| s.parse::<Ipv4Addr>().map_err(|_| format!("{s:?} is not an IPv4 address"))))
                    .collect::<Result<_, _>>()?;
                let at = range.first().map(|v| source.location(v.span().start)).unwrap_or_default();
                match parsed.as_slice() {
                    [first, last] if first <= last => g.dhcp_range = Some(Sited { value: (*first, *last), at }),
                    _ => return Err(LocatedError { location: at, message: "gateway.dhcp.range: the first and the last address handed out, in that order".into() }),
                }
            }
            if let Some(upstream) = &dhcp.upstream {
                g.dhcp_upstream = Some(upstream.iter().map(|v| source.check(v, "gateway.dhcp.upstream", |s| parse_ip(s))).collect::<Result<_, _>>()?);
            }
        }
        layer.gateway.at = Some(raw.interface.first().map(|i| source.location(i.role.span().start)).unwrap_or_else(|| source.location(0)));
    }
    if let Some(raw) = vpn {
        let v = &mut layer.vpn;
        v.enable = raw.enable;
        v.allow_default_route = raw.allow_default_route;
        let first = raw.addresses.as_ref().and_then(|a| a.first()).map(|a| a.span().start).or(raw.peer.first().map(|p| p.name.span().start));
        v.at = Some(source.location(first.unwrap_or(0)));
        if let Some(values) = &raw.addresses {
            v.addresses = Some(parse_addresses(source, values, "vpn.addresses")?);
        }
        if let Some(port) = &raw.listen_port {
            v.listen_port = Some(source.check(port, "vpn.listen-port", |p| Port::from_i64(*p))?);
        }
        if let Some(ssh) = &raw.ssh {
            v.ssh = Some(source.check(ssh, "vpn.ssh", |s| match s.as_str() {
                "also" => Ok(VpnSsh::Also),
                "only" => Ok(VpnSsh::Only),
                other => Err(format!("{other:?} is not \"also\" (SSH where it answers now, and over the VPN) or \"only\" (over the VPN alone)")),
            })?);
        }
        for peer in &raw.peer {
            let name = source.check(&peer.name, "vpn.peer.name", |s| super::Hostname::parse(s).map(|h| h.to_string()))?;
            if v.peers.iter().any(|p| p.name == name) {
                return Err(source.error(&peer.name, format!("vpn.peer.name: {name} is declared twice")));
            }
            let public_key = source.check(&peer.public_key, "vpn.peer.public-key", |s| parse_wireguard_key(s))?;
            if let Some(other) = v.peers.iter().find(|p| p.public_key == public_key) {
                return Err(source.error(&peer.public_key, format!("vpn.peer.public-key: peer {} has the same key", other.name)));
            }
            if peer.allowed_ips.is_empty() {
                return Err(source.error(&peer.name, "vpn.peer.allowed-ips: a peer with no allowed addresses can send nothing; drop it instead"));
            }
            let allowed_ips = peer.allowed_ips.iter().map(|r| source.check(r, "vpn.peer.allowed-ips", |s| Cidr::parse(s))).collect::<Result<Vec<_>, _>>()?;
            let endpoint = match &peer.endpoint {
                Some(e) => Some(source.check(e, "vpn.peer.endpoint", |s| LogHost::parse(s))?),
                None => None,
            };
            v.peers.push(VpnPeer { name, public_key, allowed_ips, endpoint, at: source.location(peer.name.span().start) });
        }
    }
    Ok(layer)
}

/// "ADDRESS" (the same port) or "ADDRESS:PORT", IPv4.
fn parse_forward_target(s: &str, port: Port) -> Result<(Ipv4Addr, Port), String> {
    let bad = || format!("{s:?} is not an IPv4 address or ADDRESS:PORT of a dmz host (e.g. \"10.79.0.2:80\")");
    match s.split_once(':') {
        Some((address, to_port)) => {
            let address = address.parse().map_err(|_| bad())?;
            let to_port = to_port.parse::<i64>().map_err(|_| bad())?;
            Ok((address, Port::from_i64(to_port).map_err(|e| format!("{s:?}: {e}"))?))
        }
        None => Ok((s.parse().map_err(|_| bad())?, port)),
    }
}

pub fn merge(base: &mut NetworkLayer, child: NetworkLayer) {
    let (g, c) = (&mut base.gateway, child.gateway);
    super::take(&mut g.enable, c.enable);
    for interface in c.interfaces {
        g.interfaces.retain(|i| i.role != interface.role);
        g.interfaces.push(interface);
    }
    for forward in c.forwards {
        g.forwards.retain(|f| (f.protocol, f.port) != (forward.protocol, forward.port));
        g.forwards.push(forward);
    }
    super::take(&mut g.dhcp_enable, c.dhcp_enable);
    super::take(&mut g.dhcp_range, c.dhcp_range);
    super::take(&mut g.dhcp_dns, c.dhcp_dns);
    super::take(&mut g.dhcp_upstream, c.dhcp_upstream);
    super::take(&mut g.at, c.at);
    let (v, c) = (&mut base.vpn, child.vpn);
    super::take(&mut v.enable, c.enable);
    super::take(&mut v.addresses, c.addresses);
    super::take(&mut v.listen_port, c.listen_port);
    super::take(&mut v.ssh, c.ssh);
    super::take(&mut v.allow_default_route, c.allow_default_route);
    super::take(&mut v.at, c.at);
    for peer in c.peers {
        v.peers.retain(|p| p.name != peer.name && p.public_key != peer.public_key);
        v.peers.push(peer);
    }
    super::take(&mut base.wireless, child.wireless);
}

fn error(at: &str, message: String) -> LocatedError {
    LocatedError { location: at.to_string(), message }
}

/// The merged settings, checked as a whole; `file` locates errors about
/// sections no file wrote.
pub fn finish(layer: NetworkLayer, file: &str) -> Result<(GatewaySpec, VpnSpec, WirelessSpec), LocatedError> {
    let gateway = finish_gateway(layer.gateway, file)?;
    let vpn = finish_vpn(layer.vpn, &gateway, file)?;
    Ok((gateway, vpn, WirelessSpec { enable: layer.wireless.unwrap_or(false) }))
}

fn finish_gateway(layer: GatewayLayer, file: &str) -> Result<GatewaySpec, LocatedError> {
    let at = layer.at.clone().unwrap_or_else(|| file.to_string());
    let enable = layer.enable.unwrap_or(!layer.interfaces.is_empty());
    if !enable {
        return Ok(GatewaySpec::default());
    }
    let mut interfaces = layer.interfaces;
    interfaces.sort_by_key(|i| i.role);
    for role in [Role::Wan, Role::Lan] {
        if !interfaces.iter().any(|i| i.role == role) {
            return Err(error(&at, format!("gateway: a gateway needs a {} interface ([[gateway.interface]] role = \"{}\")", role.name(), role.name())));
        }
    }
    for (n, a) in interfaces.iter().enumerate() {
        for b in &interfaces[n + 1..] {
            if a.link == b.link {
                return Err(error(&b.at, format!("gateway.interface: {} and {} match the same NIC", a.role.name(), b.role.name())));
            }
            for x in &a.addresses {
                for y in &b.addresses {
                    if overlap(&x.network(), &y.network()) {
                        return Err(error(&b.at, format!("gateway.interface.addresses: the {} zone's {} overlaps the {} zone's {}", b.role.name(), y.network(), a.role.name(), x.network())));
                    }
                }
            }
        }
    }
    let spec_dmz = interfaces.iter().find(|i| i.role == Role::Dmz).cloned();
    for forward in &layer.forwards {
        let Some(dmz) = &spec_dmz else {
            return Err(error(&forward.at, "gateway.forward: port forwards lead to dmz hosts, and the gateway has no dmz interface".into()));
        };
        let inside = dmz.addresses.iter().any(|a| contains(&a.network(), IpAddr::V4(forward.to)) && a.address != IpAddr::V4(forward.to));
        if !inside {
            let zones: Vec<String> = dmz.addresses.iter().map(|a| a.network().to_string()).collect();
            return Err(error(&forward.at, format!("gateway.forward.to: {} is not a host of the dmz ({})", forward.to, zones.join(", "))));
        }
    }
    let dhcp = match (layer.dhcp_enable.unwrap_or(layer.dhcp_range.is_some()), layer.dhcp_range) {
        (false, _) => None,
        (true, None) => return Err(error(&at, "gateway.dhcp: give range = [first, last] on lan".into())),
        (true, Some(range)) => {
            let lan = interfaces.iter().find(|i| i.role == Role::Lan).and_then(|i| i.ipv4().copied()).expect("lan has an IPv4 address");
            let (first, last) = range.value;
            let network = lan.network();
            for address in [first, last] {
                if !contains(&network, IpAddr::V4(address)) {
                    return Err(error(&range.at, format!("gateway.dhcp.range: {address} is not on lan ({network})")));
                }
            }
            if (first..=last).contains(&match lan.address {
                IpAddr::V4(a) => a,
                IpAddr::V6(_) => unreachable!("ipv4"),
            }) {
                return Err(error(&range.at, format!("gateway.dhcp.range: it holds the gateway's own lan address {}", lan.address)));
            }
            Some(DhcpSpec { first, last, dns: layer.dhcp_dns.unwrap_or(true), upstream: layer.dhcp_upstream.unwrap_or_default() })
        }
    };
    Ok(GatewaySpec { enable, interfaces, forwards: layer.forwards, dhcp })
}

fn finish_vpn(layer: VpnLayer, gateway: &GatewaySpec, file: &str) -> Result<VpnSpec, LocatedError> {
    let at = layer.at.clone().unwrap_or_else(|| file.to_string());
    let enable = layer.enable.unwrap_or(!layer.peers.is_empty());
    let spec = VpnSpec {
        enable,
        addresses: layer.addresses.unwrap_or_default(),
        listen_port: layer.listen_port.unwrap_or(Port::from_i64(51820).expect("valid")),
        ssh: layer.ssh.unwrap_or(VpnSsh::Also),
        allow_default_route: layer.allow_default_route.unwrap_or(false),
        peers: layer.peers,
    };
    if !enable {
        return Ok(VpnSpec { enable: false, ..spec });
    }
    if spec.addresses.is_empty() {
        return Err(error(&at, "vpn.addresses: the host's address inside the tunnel (e.g. [\"10.90.0.1/24\"])".into()));
    }
    if spec.peers.is_empty() {
        return Err(error(&at, "vpn: no peer is enrolled ([[vpn.peer]]), so nobody could use it".into()));
    }
    for address in &spec.addresses {
        for interface in &gateway.interfaces {
            if let Some(zone) = interface.addresses.iter().find(|a| overlap(&a.network(), &address.network())) {
                return Err(error(&at, format!("vpn.addresses: {} overlaps the gateway's {} zone {}", address.network(), interface.role.name(), zone.network())));
            }
        }
    }
    for peer in &spec.peers {
        for v4 in [true, false] {
            if !spec.allow_default_route && cover_everything(&peer.allowed_ips, v4) {
                let family = if v4 { "IPv4" } else { "IPv6" };
                return Err(error(
                    &peer.at,
                    format!("vpn.peer.allowed-ips of {}: together they cover the whole {family} internet, so every connection would go through that peer; set vpn.allow-default-route = true if that is meant", peer.name),
                ));
            }
        }
        for range in &peer.allowed_ips {
            if let Some(own) = spec.addresses.iter().find(|a| contains(range, a.address)) {
                if range.prefix == if range.address.is_ipv4() { 32 } else { 128 } {
                    return Err(error(&peer.at, format!("vpn.peer.allowed-ips of {}: {range} is this host's own tunnel address {}", peer.name, own.address)));
                }
            }
        }
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_addresses_are_hosts_with_a_prefix() {
        assert_eq!(IfAddress::parse("10.78.0.1/24").unwrap().network().to_string(), "10.78.0.0/24");
        assert_eq!(IfAddress::parse("fd78::1/64").unwrap().network().to_string(), "fd78::/64");
        for bad in ["10.78.0.0/24", "10.78.0.255/24", "10.78.0.1", "10.78.0.1/33", "10.78.0.1/0", "lan/24"] {
            assert!(IfAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ranges_overlap_and_cover() {
        let c = |s: &str| Cidr::parse(s).unwrap();
        assert!(overlap(&c("10.78.0.0/16"), &c("10.78.5.0/24")));
        assert!(!overlap(&c("10.78.0.0/24"), &c("10.79.0.0/24")));
        assert!(!overlap(&c("10.78.0.0/24"), &c("fd00::/8")));
        assert!(cover_everything(&[c("0.0.0.0/0")], true));
        assert!(cover_everything(&[c("128.0.0.0/1"), c("0.0.0.0/1")], true));
        assert!(!cover_everything(&[c("0.0.0.0/1"), c("128.0.0.0/2")], true));
        assert!(cover_everything(&[c("::/1"), c("8000::/1")], false));
        assert!(!cover_everything(&[c("10.90.0.2/32")], true));
    }

    #[test]
    fn wireguard_keys_are_32_bytes_of_base64() {
        assert!(parse_wireguard_key("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=").is_ok());
        assert!(parse_wireguard_key("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3f").unwrap_err().contains("not the 32"));
        assert!(parse_wireguard_key("not a key").unwrap_err().contains("not base64"));
    }

    #[test]
    fn forward_targets_name_an_address_and_perhaps_a_port() {
        let port = Port::from_i64(8080).unwrap();
        assert_eq!(parse_forward_target("10.79.0.2:80", port).unwrap(), ("10.79.0.2".parse().unwrap(), Port::from_i64(80).unwrap()));
        assert_eq!(parse_forward_target("10.79.0.2", port).unwrap().1, port);
        assert!(parse_forward_target("dmz-host:80", port).is_err());
        assert!(parse_forward_target("10.79.0.2:0", port).is_err());
    }
}
