//! The isolated test networks: network namespaces that the test creates
//! and removes. "lab" holds one bridge per network of the scenario, with the
//! VMs' NICs on it (taps), and their QEMU processes (so their management
//! port forwards stay inside it); each network has a host of its own, a
//! namespace joined to its bridge: "outside", the second host, with its
//! addresses, a DHCP server for its network (dnsmasq) and the scanner
//! (nmap); the scenario's other networks' hosts (a gateway's lan and dmz)
//! with their addresses, routes through a machine and small listeners.
//! Nothing outside these namespaces is ever contacted.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::process::{Background, Cmd};
use crate::vmtest::collector::Collector;
use crate::vmtest::listeners::Listeners;
use crate::vmtest::networks::NetworkSpec;

/// The lab subnet; it exists only inside the namespaces.
pub const SUBNET_PREFIX: &str = "10.77.0";
pub const OUTSIDE_ADDRESS: &str = "10.77.0.2";
/// Every address of the second host: a scan from the second one shows what
/// a source outside a port's allowed range sees (or inside it).
pub const OUTSIDE_ADDRESSES: &[&str] = &["10.77.0.2", "10.77.0.3"];

pub struct Lab {
    pub lab_ns: String,
    pub outside_ns: String,
    /// Each network's host namespace, by the scenario's network index (0: outside_ns).
    hosts: Vec<String>,
    /// The networks, by the same index.
    networks: Vec<NetworkSpec>,
    /// The hosts' listeners, stopped with the lab.
    listeners: Vec<Listeners>,
    dhcp: Option<Background>,
    /// dnsmasq's lease file: every lease it handed out.
    leases: std::path::PathBuf,
    /// The namespaces this run added (only these are removed on drop).
    made: Vec<String>,
    /// The remote log host on the second host, when the profile forwards there.
    pub collector: Option<Collector>,
    /// Mail hosts on the second host: the profile's smarthost, a mail
    /// gateway's internal host, when they are its addresses.
    pub mail_sinks: Vec<crate::vmtest::mail_sink::MailSink>,
}

/// The lab address and MAC of the machine with this index.
pub fn machine_address(index: usize) -> (String, String) {
    let host = 10 + index;
    (format!("{SUBNET_PREFIX}.{host}"), machine_mac(index, 0))
}

/// The MAC of machine `index`'s NIC on network `network`.
pub fn machine_mac(index: usize, network: usize) -> String {
    format!("52:54:00:77:{network:02x}:{:02x}", 10 + index)
}

/// The tap of machine `index` on network `network` (the outside one keeps its old name).
fn tap_name(index: usize, network: usize) -> String {
    if network == 0 {
        format!("lab{index}")
    } else {
        format!("lab{index}n{network}")
    }
}

fn ip(args: &[&str]) -> Result<()> {
    Cmd::new("ip").args(args).run().map(|_| ()).context("while setting up the isolated test network")
}

impl Lab {
    /// A lab for `n_machines`, and one slot more (index `n_machines`) for a
    /// machine a check boots beside them.
    pub fn create(work: &Path, n_machines: usize, networks: &[NetworkSpec]) -> Result<Lab> {
        remove_stale_namespaces();
        let tag = std::process::id();
        let outside = NetworkSpec::outside();
        let networks = if networks.is_empty() { std::slice::from_ref(&outside) } else { networks };
        let mut lab = Lab {
            lab_ns: format!("rampart-{tag}-lab"),
            outside_ns: format!("rampart-{tag}-outside"),
            hosts: networks.iter().enumerate().map(|(k, n)| if k == 0 { format!("rampart-{tag}-outside") } else { format!("rampart-{tag}-{}", n.name) }).collect(),
            networks: networks.to_vec(),
            listeners: Vec::new(),
            dhcp: None,
            leases: work.join("lab.leases"),
            made: Vec::new(),
            collector: None,
            mail_sinks: Vec::new(),
        };
        let mut namespaces = vec![lab.lab_ns.clone()];
        namespaces.extend(lab.hosts.iter().cloned());
        for namespace in namespaces {
            record_owner(&namespace)?;
            if let Err(error) = ip(&["netns", "add", &namespace]) {
                let _ = std::fs::remove_file(Path::new(OWNERS_DIR).join(&namespace));
                return Err(error);
            }
            ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
            lab.made.push(namespace);
        }
        for (k, network) in networks.iter().enumerate() {
            let (bridge, uplink, host) = (format!("br{k}"), if k == 0 { "uplink".to_string() } else { format!("uplink{k}") }, lab.hosts[k].clone());
            ip(&["-n", &lab.lab_ns, "link", "add", &bridge, "type", "bridge"])?;
            ip(&["-n", &lab.lab_ns, "link", "set", &bridge, "up"])?;
            ip(&["-n", &lab.lab_ns, "link", "add", &uplink, "type", "veth", "peer", "name", "lab0", "netns", &host])?;
            ip(&["-n", &lab.lab_ns, "link", "set", &uplink, "master", &bridge, "up"])?;
            for address in &network.hosts {
                ip(&["-n", &host, "addr", "add", &format!("{address}/{}", network.subnet.prefix), "dev", "lab0"])?;
            }
            ip(&["-n", &host, "link", "set", "lab0", "up"])?;
            if let Some(router) = network.router {
                ip(&["-n", &host, "route", "add", "default", "via", &router.to_string()])?;
            }
            for (to, via) in &network.routes {
                ip(&["-n", &host, "route", "add", &to.to_string(), "via", &via.to_string()])?;
            }
            if !network.listen_tcp.is_empty() || !network.listen_udp.is_empty() {
                lab.listeners.push(Listeners::start(&host, &network.name, network.hosts[0], &network.listen_tcp, &network.listen_udp)?);
            }
        }
        let mut dnsmasq = lab
            .outside("dnsmasq")
            .args(["--keep-in-foreground", "--log-facility=-", "--no-resolv", "--no-hosts", "--port=0"])
            .args(["--interface=lab0", "--bind-interfaces", "--dhcp-authoritative"])
            // Stay root: a process that changes its user loses the parent-death
            // signal, and dnsmasq must die with rampart however rampart ends.
            .arg("--user=root")
            .arg(format!("--dhcp-range={SUBNET_PREFIX}.10,{SUBNET_PREFIX}.99,255.255.255.0,1h"))
            // No router and no DNS server: the lab leads nowhere.
            .args(["--dhcp-option=3", "--dhcp-option=6"])
            .arg(format!("--dhcp-leasefile={}", lab.leases.display()))
            .arg(format!("--pid-file={}", work.join("lab-dnsmasq.pid").display()));
        for index in 0..=n_machines {
            let (address, mac) = machine_address(index);
            dnsmasq = dnsmasq.arg(format!("--dhcp-host={mac},{address}"));
        }
        lab.dhcp = Some(dnsmasq.spawn_background(&work.join("lab-dnsmasq.log"))?);
        Ok(lab)
    }

    /// Starts the remote log host at `address` (an address of the second host).
    pub fn start_collector(&mut self, address: std::net::SocketAddr) -> Result<()> {
        let collector = Collector::new(&self.outside_ns, address);
        collector.start()?;
        self.collector = Some(collector);
        Ok(())
    }

    /// Starts a mail host at `address` (an address of the second host).
    pub fn start_mail_sink(&mut self, address: std::net::SocketAddr, work: &Path) -> Result<()> {
        self.mail_sinks.push(crate::vmtest::mail_sink::MailSink::start(&self.outside_ns, address, work)?);
        Ok(())
    }

    /// A command run on the second host.
    pub fn outside(&self, program: &str) -> Cmd {
        self.host(0, program)
    }

    /// A command run on network `network`'s host.
    pub fn host(&self, network: usize, program: &str) -> Cmd {
        Cmd::new("ip").args(["netns", "exec", &self.hosts[network], program])
    }

    /// The index of the network whose host has `address`.
    pub fn host_with(&self, address: &str) -> Result<usize> {
        crate::vmtest::networks::host_of(&self.networks, address).with_context(|| format!("no lab host has the address {address}"))
    }

    /// The address the host with address `from` sends to on its way to
    /// `target`: the target itself on the host's own network, else the
    /// router of its route there (or its default route).
    pub fn first_hop(&self, from: &str, target: &str) -> Result<String> {
        let network = &self.networks[self.host_with(from)?];
        let target_ip: std::net::IpAddr = target.parse().with_context(|| format!("{target:?} is not an IP address"))?;
        if crate::profile::network::contains(&network.subnet, target_ip) {
            return Ok(target.to_string());
        }
        let via = network
            .routes
            .iter()
            .filter(|(to, _)| crate::profile::network::contains(to, target_ip))
            .max_by_key(|(to, _)| to.prefix)
            .map(|(_, via)| *via)
            .or(network.router);
        via.map(|v| v.to_string()).with_context(|| format!("the lab host {from} has no route to {target}"))
    }

    /// QEMU arguments for a machine's lab NICs, one per network, in order.
    pub fn nic_args(index: usize, networks: &[usize]) -> Vec<String> {
        let mut args = Vec::new();
        for &k in networks {
            args.push("-netdev".into());
            args.push(format!("tap,id=lab{k},ifname={},script=no,downscript=no", tap_name(index, k)));
            args.push("-device".into());
            args.push(format!("virtio-net-pci,netdev=lab{k},mac={}", machine_mac(index, k)));
        }
        args
    }

    /// Puts each of a machine's taps on its network's bridge once QEMU has made it.
    pub fn attach(&self, index: usize, networks: &[usize]) -> Result<()> {
        for &k in networks {
            let tap = tap_name(index, k);
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let exists = Cmd::new("ip").args(["-n", &self.lab_ns, "link", "show", &tap]).run_unchecked()?.status.success();
                if exists {
                    ip(&["-n", &self.lab_ns, "link", "set", &tap, "master", &format!("br{k}"), "up"])?;
                    break;
                }
                if Instant::now() >= deadline {
                    bail!("QEMU did not create the lab interface {tap}");
                }
                crate::process::check_interrupted()?;
                crate::process::pause(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// The leases dnsmasq has handed out (one line each, with the MAC).
    pub fn leases(&self) -> String {
        std::fs::read_to_string(&self.leases).unwrap_or_default()
    }

    /// nmap's report of an ARP sweep of the whole lab subnet from the second
    /// host: every machine with an IPv4 address on it, with its MAC.
    pub fn arp_sweep(&self, timeout: Duration) -> Result<String> {
        let output = self
            .outside("nmap")
            .args(["-n", "-sn", "-PR", "-e", "lab0", "-T4"])
            .arg(format!("{SUBNET_PREFIX}.0/24"))
            .run_with_timeout(timeout)?
            .with_context(|| format!("the ARP sweep of the lab did not finish in {} s", timeout.as_secs()))?;
        if !output.status.success() {
            bail!("nmap failed: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(output.stdout_text())
    }

    /// The TCP ports of `address` that answer, seen from a lab host's
    /// address `from`: a SYN scan of all 65535 ports, or of `only`.
    pub fn open_tcp_ports(&self, address: &str, from: &str, only: Option<&str>, timeout: Duration) -> Result<Scan> {
        let ports = only.map(|p| format!("-p{p}")).unwrap_or_else(|| "-p-".into());
        self.scan(&["-sS", &ports], address, from, timeout)
    }

    /// The common UDP ports (nmap's top 100) of `address` that answer.
    /// Silence counts as not open: only a reply proves a listener.
    pub fn open_udp_ports(&self, address: &str, from: &str, timeout: Duration) -> Result<Scan> {
        self.scan(&["-sU", "--top-ports", "100"], address, from, timeout)
    }

    fn scan(&self, kind: &[&str], address: &str, from: &str, timeout: Duration) -> Result<Scan> {
        let output = self
            .host(self.host_with(from)?, "nmap")
            .args(["-n", "-Pn"])
            .args(kind)
            .args(["-S", from, "-e", "lab0", "-T4", "--max-retries", "1", "-oG", "-", address])
            // A host that drops everything gives nmap no round trips to learn
            // from; on a bridge inside one machine, answers take milliseconds.
            // At 5000 probes a second a full TCP scan, each port tried twice,
            // takes about 30 s.
            .args(["--min-rate", "5000", "--initial-rtt-timeout", "100ms", "--max-rtt-timeout", "500ms"])
            .run_with_timeout(timeout)?
            .with_context(|| format!("the port scan of {address} did not finish in {} s", timeout.as_secs()))?;
        if !output.status.success() {
            bail!("nmap failed: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        let text = output.stdout_text();
        Ok(Scan { open: parse_ports(&text, "open"), n_closed: parse_ports(&text, "closed").len() + ignored_closed(&text) })
    }
}

/// What a scan found: the open ports, and how many ports answered "closed"
/// (a TCP reset or an ICMP port-unreachable: nothing dropped the probe).
pub struct Scan {
    pub open: Vec<u16>,
    pub n_closed: usize,
}

/// The count in "Ignored State: closed (65534)" of nmap's grepable output.
fn ignored_closed(text: &str) -> usize {
    text.split("Ignored State: closed (").nth(1).and_then(|rest| rest.split(')').next()).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// Ports in one state from nmap's grepable output ("Ports: 22/open/tcp//ssh///, ...").
pub fn parse_ports(text: &str, state: &str) -> Vec<u16> {
    let mut ports = Vec::new();
    for line in text.lines() {
        let Some((_, list)) = line.split_once("Ports: ") else { continue };
        for item in list.split(", ") {
            let fields: Vec<&str> = item.split('/').collect();
            if fields.len() > 2 && fields[1] == state {
                if let Ok(port) = fields[0].trim().parse() {
                    ports.push(port);
                }
            }
        }
    }
    ports.sort_unstable();
    ports
}

/// Where rampart records which run made each test namespace: one file per
/// namespace, holding the maker's pid and start time. Only namespaces
/// recorded here are ever removed as stale; another tool's, whatever its
/// name, are left alone.
const OWNERS_DIR: &str = "/run/rampart/netns";

/// A process's start time in clock ticks since boot (field 22 of its stat):
/// with the pid, it names one process, even after the pid is reused.
fn start_time(pid: u32) -> Option<u64> {
    crate::process::proc_stat_field(pid, 19)
}

fn record_owner(namespace: &str) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(OWNERS_DIR).with_context(|| format!("while creating {OWNERS_DIR}"))?;
    let pid = std::process::id();
    let started = start_time(pid).context("cannot read this process's start time")?;
    crate::fsutil::write_atomic(&Path::new(OWNERS_DIR).join(namespace), format!("{pid} {started}\n").as_bytes())
}

/// Whether a record names a process that is still running.
fn owner_alive(record: &str) -> bool {
    let mut fields = record.split_whitespace();
    match (fields.next().and_then(|p| p.parse::<u32>().ok()), fields.next().and_then(|t| t.parse::<u64>().ok())) {
        (Some(pid), Some(started)) => start_time(pid) == Some(started),
        // A record that cannot be read is no proof its maker is gone.
        _ => true,
    }
}

/// Removes the namespaces that a run recorded as its own and that outlived
/// it (it was killed), with what still runs in them.
fn remove_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir(OWNERS_DIR) else { return };
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(String::from) else { continue };
        let record = std::fs::read_to_string(entry.path()).unwrap_or_default();
        if owner_alive(&record) {
            continue;
        }
        // A killed run's second host (dnsmasq drops capabilities, which
        // clears its parent-death signal) goes with its namespace.
        if let Ok(pids) = Cmd::new("ip").args(["netns", "pids", &name]).run() {
            for pid in pids.stdout_text().split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                // SAFETY: kill(2) with a pid read from the namespace's process list.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = Cmd::new("ip").args(["netns", "del", &name]).run();
        }
        let _ = std::fs::remove_file(entry.path());
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(collector) = self.collector.take() {
            collector.stop();
        }
        self.mail_sinks.clear();
        self.listeners.clear();
        if let Some(mut dhcp) = self.dhcp.take() {
            dhcp.kill();
        }
        for namespace in &self.made {
            if Cmd::new("ip").args(["netns", "del", namespace]).run().is_ok() {
                let _ = std::fs::remove_file(Path::new(OWNERS_DIR).join(namespace));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nmap_grepable_output_gives_open_ports() {
        let text = "# Nmap 7.93 scan\nHost: 10.77.0.10 ()\tStatus: Up\nHost: 10.77.0.10 ()\tPorts: 22/open/tcp//ssh///, 80/closed/tcp//http///, 443/open/tcp//https///\tIgnored State: closed (65533)\n";
        assert_eq!(parse_ports(text, "open"), vec![22, 443]);
        assert_eq!(parse_ports(text, "closed"), vec![80]);
        assert_eq!(ignored_closed(text), 65533);
        assert_eq!(parse_ports("Host: x\tStatus: Up\n", "open"), Vec::<u16>::new());
        assert_eq!(ignored_closed("Host: x\tIgnored State: filtered (65534)\n"), 0);
    }

    #[test]
    fn a_namespace_record_names_a_live_process_or_a_gone_one() {
        let me = std::process::id();
        assert!(owner_alive(&format!("{me} {}", start_time(me).unwrap())));
        // Same pid, another start time: the pid was reused, its maker is gone.
        assert!(!owner_alive(&format!("{me} {}", start_time(me).unwrap() + 1)));
        assert!(owner_alive("garbage"));
    }

    #[test]
    fn machines_get_distinct_lab_addresses() {
        assert_eq!(machine_address(0), ("10.77.0.10".to_string(), "52:54:00:77:00:0a".to_string()));
        assert_ne!(machine_address(1).0, machine_address(0).0);
    }
}
