//! `[time]`: time synchronisation (CIS Debian 12 2.3): on by default, with
//! the profile's NTP servers (an air-gapped site names its own) or, with
//! none, the servers Debian builds into systemd-timesyncd. Pure.

use super::monitoring::is_dns_name;
use super::raw::RawTime;
use crate::located::{LocatedError, SourceText};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeSpec {
    pub enable: bool,
    /// NTP servers, names or addresses; empty: timesyncd's fallback list.
    pub servers: Vec<String>,
}

#[derive(Debug, Default)]
pub struct TimeLayer {
    enable: Option<bool>,
    servers: Option<Vec<String>>,
}

/// An NTP server: a DNS name or an IPv4 or IPv6 address.
pub fn parse_server(s: &str) -> Result<String, String> {
    if s.parse::<std::net::IpAddr>().is_ok() || (is_dns_name(s) && !s.chars().all(|c| c.is_ascii_digit() || c == '.')) {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not a host name or an IP address"))
    }
}

pub fn validate(source: &SourceText, raw: Option<RawTime>) -> Result<TimeLayer, LocatedError> {
    let Some(raw) = raw else { return Ok(TimeLayer::default()) };
    let mut layer = TimeLayer { enable: raw.enable, servers: None };
    if let Some(servers) = &raw.servers {
        let mut parsed = Vec::new();
        for server in servers {
            parsed.push(source.check(server, "time.servers", |s| parse_server(s))?);
        }
        layer.servers = Some(parsed);
    }
    Ok(layer)
}

pub fn merge(base: &mut TimeLayer, child: TimeLayer) {
    super::take(&mut base.enable, child.enable);
    super::take(&mut base.servers, child.servers);
}

pub fn finish(layer: TimeLayer) -> TimeSpec {
    TimeSpec { enable: layer.enable.unwrap_or(true), servers: layer.servers.unwrap_or_default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_names_or_addresses() {
        for good in ["ntp.example.org", "192.0.2.123", "2001:db8::123", "clock1"] {
            assert_eq!(parse_server(good).as_deref(), Ok(good));
        }
        for bad in ["", "ntp example", "1.2.3", "ntp.example.org:123", "-x.example"] {
            assert!(parse_server(bad).is_err(), "{bad}");
        }
    }
}
