//! The lab's networks, as a scenario declares them (`[[network]]`): the
//! "outside" network every isolated scenario has (10.77.0.0/24, its host
//! at 10.77.0.2 and 10.77.0.3, DHCP from the lab), and more of the
//! scenario's own (a gateway's lan and dmz), each an isolated bridge with a
//! host of its own: its addresses, its routes (through a machine), and
//! small listeners that say who connected. Parsed and checked here; no IO.

use std::net::{IpAddr, Ipv4Addr};

use serde::Deserialize;
use toml::Spanned;

use crate::located::{LocatedError, SourceText};
use crate::profile::network::{contains, overlap};
use crate::profile::{Cidr, Port};

pub const OUTSIDE: &str = "outside";
/// At most this many networks (the MAC's fifth byte and the tap names hold the index).
const MAX_NETWORKS: usize = 8;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawNetwork {
    name: Spanned<String>,
    /// The network's IPv4 range (not for "outside", which is 10.77.0.0/24).
    subnet: Option<Spanned<String>>,
    /// The host's addresses on it (not for "outside": 10.77.0.2 and 10.77.0.3).
    hosts: Option<Vec<Spanned<String>>>,
    /// The host's default route: a machine's address on this network.
    router: Option<Spanned<String>>,
    /// More routes of the host: "PREFIX via ADDRESS".
    #[serde(default)]
    routes: Vec<Spanned<String>>,
    /// TCP ports the host listens on; each answers "rampart-lab NAME PORT from PEER".
    #[serde(default)]
    listen_tcp: Vec<Spanned<i64>>,
    /// UDP ports the host answers on, the same way.
    #[serde(default)]
    listen_udp: Vec<Spanned<i64>>,
}

impl RawNetwork {
    pub fn name_span(&self) -> &Spanned<String> {
        &self.name
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSpec {
    pub name: String,
    pub subnet: Cidr,
    /// The host's addresses; the first is its own, the others for scans from another source.
    pub hosts: Vec<Ipv4Addr>,
    pub router: Option<Ipv4Addr>,
    pub routes: Vec<(Cidr, Ipv4Addr)>,
    pub listen_tcp: Vec<u16>,
    pub listen_udp: Vec<u16>,
    /// The lab's DHCP server serves it (the outside network).
    pub dhcp: bool,
}

impl NetworkSpec {
    pub fn outside() -> NetworkSpec {
        NetworkSpec {
            name: OUTSIDE.into(),
            subnet: Cidr::parse(&format!("{}.0/24", crate::vmtest::lab::SUBNET_PREFIX)).expect("valid"),
            hosts: crate::vmtest::lab::OUTSIDE_ADDRESSES.iter().map(|a| a.parse().expect("valid")).collect(),
            router: None,
            routes: Vec::new(),
            listen_tcp: Vec::new(),
            listen_udp: Vec::new(),
            dhcp: true,
        }
    }
}

/// Which network's host has `address`.
pub fn host_of(networks: &[NetworkSpec], address: &str) -> Option<usize> {
    let address: Ipv4Addr = address.parse().ok()?;
    networks.iter().position(|n| n.hosts.contains(&address))
}

fn ipv4(s: &str) -> Result<Ipv4Addr, String> {
    s.parse().map_err(|_| format!("{s:?} is not an IPv4 address"))
}

fn ports(source: &SourceText, list: &[Spanned<i64>], field: &str) -> Result<Vec<u16>, LocatedError> {
    let mut parsed = Vec::new();
    for port in list {
        parsed.push(source.check(port, field, |p| Port::from_i64(*p))?.get());
    }
    parsed.sort_unstable();
    parsed.dedup();
    Ok(parsed)
}

/// The scenario's networks: "outside" first (amended by its entry, if any),
/// then the others in order.
pub fn parse(source: &SourceText, raw: &[RawNetwork]) -> Result<Vec<NetworkSpec>, LocatedError> {
    let mut networks = vec![NetworkSpec::outside()];
    for entry in raw {
        let name = source.check(&entry.name, "network.name", |s| {
            if !s.is_empty() && s.len() <= 8 && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) {
                Ok(s.clone())
            } else {
                Err(format!("{s:?} is not a network name (1 to 8 lower-case letters or digits)"))
            }
        })?;
        if name == "lab" {
            // The namespace of the lab's bridges and machines is named so.
            return Err(source.error(&entry.name, "network.name: \"lab\" is the lab's own; pick another"));
        }
        let is_outside = name == OUTSIDE;
        if !is_outside && networks.iter().any(|n| n.name == name) {
            return Err(source.error(&entry.name, format!("network.name: {name} is declared twice")));
        }
        let mut network = if is_outside {
            if entry.subnet.is_some() || entry.hosts.is_some() {
                return Err(source.error(&entry.name, "network: the outside network's subnet and hosts are the lab's (10.77.0.0/24; 10.77.0.2, 10.77.0.3)"));
            }
            networks.remove(0)
        } else {
            let subnet = match &entry.subnet {
                Some(s) => source.check(s, "network.subnet", |s| Cidr::parse(s).and_then(|c| if c.address.is_ipv4() && (8..=30).contains(&c.prefix) { Ok(c) } else { Err(format!("{c} is not an IPv4 range from /8 to /30")) }))?,
                None => return Err(source.error(&entry.name, format!("network {name}: give its subnet"))),
            };
            if let Some(other) = networks.iter().find(|n| overlap(&n.subnet, &subnet)) {
                return Err(source.error(entry.subnet.as_ref().expect("given"), format!("network.subnet: {subnet} overlaps network {}'s {}", other.name, other.subnet)));
            }
            let mut hosts = Vec::new();
            for host in entry.hosts.iter().flatten() {
                let address = source.check(host, "network.hosts", |s| ipv4(s))?;
                if !contains(&subnet, IpAddr::V4(address)) {
                    return Err(source.error(host, format!("network.hosts: {address} is not in {subnet}")));
                }
                hosts.push(address);
            }
            if hosts.is_empty() {
                return Err(source.error(&entry.name, format!("network {name}: give its host's address (hosts)")));
            }
            NetworkSpec { name: name.clone(), subnet, hosts, router: None, routes: Vec::new(), listen_tcp: Vec::new(), listen_udp: Vec::new(), dhcp: false }
        };
        if let Some(router) = &entry.router {
            let address = source.check(router, "network.router", |s| ipv4(s))?;
            if !contains(&network.subnet, IpAddr::V4(address)) {
                return Err(source.error(router, format!("network.router: {address} is not in {}", network.subnet)));
            }
            network.router = Some(address);
        }
        for route in &entry.routes {
            let parsed = source.check(route, "network.routes", |s| {
                let (to, via) = s.split_once(" via ").ok_or_else(|| format!("{s:?} is not \"PREFIX via ADDRESS\""))?;
                let to = Cidr::parse(to.trim())?;
                let via = ipv4(via.trim())?;
                if !contains(&network.subnet, IpAddr::V4(via)) {
                    return Err(format!("{via} is not on this network ({})", network.subnet));
                }
                Ok((to, via))
            })?;
            network.routes.push(parsed);
        }
        network.listen_tcp = ports(source, &entry.listen_tcp, "network.listen-tcp")?;
        network.listen_udp = ports(source, &entry.listen_udp, "network.listen-udp")?;
        if is_outside {
            networks.insert(0, network);
        } else {
            networks.push(network);
        }
        if networks.len() > MAX_NETWORKS {
            return Err(source.error(&entry.name, format!("network: at most {MAX_NETWORKS} networks")));
        }
    }
    Ok(networks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Vec<NetworkSpec>, String> {
        #[derive(Deserialize)]
        struct Doc {
            #[serde(default)]
            network: Vec<RawNetwork>,
        }
        let source = SourceText { file: "s.toml".into(), text: text.into() };
        let doc: Doc = source.parse().map_err(|e| e.to_string())?;
        parse(&source, &doc.network).map_err(|e| e.to_string())
    }

    #[test]
    fn networks_get_hosts_routes_and_listeners() {
        let networks = parse_text(
            "[[network]]\nname = \"lan\"\nsubnet = \"10.78.0.0/24\"\nhosts = [\"10.78.0.2\"]\nrouter = \"10.78.0.1\"\nlisten-tcp = [445, 80, 80]\n\
             [[network]]\nname = \"outside\"\nroutes = [\"10.78.0.0/24 via 10.77.0.1\"]\nlisten-tcp = [80]\n",
        )
        .unwrap();
        assert_eq!(networks.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["outside", "lan"]);
        assert_eq!(networks[0].routes, vec![(Cidr::parse("10.78.0.0/24").unwrap(), "10.77.0.1".parse().unwrap())]);
        assert!(networks[0].dhcp && !networks[1].dhcp);
        assert_eq!(networks[1].listen_tcp, vec![80, 445]);
        assert_eq!(host_of(&networks, "10.78.0.2"), Some(1));
        assert_eq!(host_of(&networks, "10.77.0.3"), Some(0));
        assert_eq!(host_of(&networks, "10.78.0.9"), None);
    }

    #[test]
    fn bad_networks_are_refused_naming_the_field() {
        for (text, message) in [
            ("[[network]]\nname = \"lan\"\nsubnet = \"10.77.0.0/16\"\nhosts = [\"10.77.1.2\"]\n", "overlaps network outside"),
            ("[[network]]\nname = \"lan\"\nsubnet = \"10.78.0.0/24\"\nhosts = [\"10.79.0.2\"]\n", "is not in 10.78.0.0/24"),
            ("[[network]]\nname = \"lan\"\nsubnet = \"10.78.0.0/24\"\n", "give its host's address"),
            ("[[network]]\nname = \"outside\"\nsubnet = \"10.78.0.0/24\"\n", "the lab's"),
            ("[[network]]\nname = \"Lan\"\n", "not a network name"),
            ("[[network]]\nname = \"lab\"\nsubnet = \"10.78.0.0/24\"\nhosts = [\"10.78.0.2\"]\n", "the lab's own"),
            ("[[network]]\nname = \"outside\"\nroutes = [\"10.78.0.0/24 through 10.77.0.1\"]\n", "PREFIX via ADDRESS"),
        ] {
            let error = parse_text(text).unwrap_err();
            assert!(error.contains(message), "{text}: {error}");
        }
    }
}
