//! Firewall control (seed step 5, "Firewalls and Protecting Services"):
//! an nftables ruleset rendered from `[firewall]` and `[ssh]`, default-deny
//! on every hook (outbound, the host's own TCP, UDP and ICMP pass), checked by the image's own `nft -c` in an empty
//! network namespace at build time and loaded by nftables.service before the
//! network comes up; plus the anti-spoofing and SYN-flood sysctls. It fails
//! closed: systemd-networkd requires nftables.service, so a ruleset that does
//! not load (or loads without rampart's three default-deny chains) leaves
//! every interface but lo down, and the console and the journal say why.

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::build::context::BuildContext;
use crate::profile::{Cidr, FirewallAllow, Profile, Protocol};
use crate::traced::{line_named_after, TracedText};

/// The seed's risky ports: NetBIOS, SMB, RPC portmapper, LPR.
pub const RISKY_PORTS: &str = "111, 137-139, 445, 515";

/// The kernel modules the ruleset above needs (their dependencies come with
/// them). Left to the kernel, each is asked for while nft loads the ruleset,
/// and each request aborts and replays the whole batch and runs modprobe
/// once more: about 10 s of a boot under emulation. systemd-modules-load
/// loads them in one process before nftables.service starts instead.
/// Modules of a profile's own `input-rules` still load on demand.
pub const PRELOADED_MODULES: &[&str] = &["nf_tables", "nft_ct", "nft_limit", "nft_log", "nf_log_syslog"];
const MODULES_LOAD_FILE: &str = "etc/modules-load.d/rampart-firewall.conf";
const NFTABLES_AFTER_MODULES: &str = "# rampart: the ruleset's kernel modules are loaded before it (modules-load.d/rampart-firewall.conf)
[Unit]
Wants=systemd-modules-load.service
After=systemd-modules-load.service
";

/// No network without the firewall: networkd (which brings up every
/// interface but lo) and its netlink socket start only after
/// nftables.service succeeded, and fail at once when it did not (Requisite=:
/// a failed ruleset is not retried each time the socket is triggered); a
/// restart or stop of the firewall takes networkd with it (PartOf=).
const NETWORKD_NEEDS_FIREWALL: &[(&str, &str)] = &[
    (
        "etc/systemd/system/systemd-networkd.service.d/rampart-firewall.conf",
        "# rampart: [firewall] fails closed: no interface comes up unless the ruleset loaded
[Unit]
Requisite=nftables.service
After=nftables.service
PartOf=nftables.service
",
    ),
    (
        "etc/systemd/system/systemd-networkd.socket.d/rampart-firewall.conf",
        "# rampart: [firewall] fails closed: networkd is not activated unless the ruleset loaded
[Unit]
Requisite=nftables.service
After=nftables.service
",
    ),
];
/// nftables.service succeeds only when the loaded ruleset is rampart's
/// (its input chain with the drop policy is there), and reports a failure.
const NFTABLES_FAIL_CLOSED_FILE: &str = "etc/systemd/system/nftables.service.d/rampart-fail-closed.conf";
pub const FAILURE_UNIT: &str = "rampart-firewall-failed.service";
const NFTABLES_FAIL_CLOSED: &str = "# rampart: [firewall] the loaded ruleset must hold rampart's three default-deny chains;
# stopping the firewall (or restarting it with a ruleset that does not load) leaves
# everything but loopback dropped, not an empty ruleset
[Unit]
OnFailure=rampart-firewall-failed.service

[Service]
ExecStartPost=/bin/sh -c 'test \"$$(/usr/sbin/nft list table inet rampart | grep -c \"policy drop;\")\" = 3'
ExecStop=
ExecStop=/usr/sbin/nft -f /etc/nftables-closed.conf
";
/// What a stopped firewall leaves: only loopback.
const CLOSED_RULESET_FILE: &str = "etc/nftables-closed.conf";
pub const CLOSED_RULESET: &str = "#!/usr/sbin/nft -f
# rampart: [firewall] what nftables.service leaves when it stops: nothing but loopback
flush ruleset

table inet rampart-closed {
\tchain input {
\t\ttype filter hook input priority filter; policy drop;
\t\tiif \"lo\" accept
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy drop;
\t}
\tchain output {
\t\ttype filter hook output priority filter; policy drop;
\t\toif \"lo\" accept
\t}
}
";
/// What a machine whose firewall did not load prints on its console.
pub const FAILURE_MARKER: &str = "rampart-firewall: the firewall ruleset did not load";
const FAILURE_UNIT_TEXT: &str = "# rampart: [firewall] says on the console and in the journal why the network stays down
[Unit]
Description=Report that the firewall did not load and the network stays down
DefaultDependencies=no

[Service]
Type=oneshot
StandardOutput=journal+console
SyslogIdentifier=rampart-firewall
ExecStart=/bin/echo \"rampart-firewall: the firewall ruleset did not load (nftables.service failed), so no network interface but lo is brought up; nft said:\"
ExecStart=/bin/journalctl --boot --unit=nftables.service --output=cat --no-pager --lines=20
ProtectSystem=strict
ProtectHome=yes
PrivateNetwork=yes
PrivateTmp=yes
NoNewPrivileges=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_UNIX
CapabilityBoundingSet=
";

pub const SYSCTLS: &str = "# rampart: [firewall] anti-spoofing and SYN-flood protection (CIS Debian 12 3.3)
net.ipv4.conf.all.rp_filter = 1
net.ipv4.conf.default.rp_filter = 1
net.ipv4.tcp_syncookies = 1
net.ipv4.conf.all.accept_redirects = 0
net.ipv4.conf.default.accept_redirects = 0
net.ipv4.conf.all.secure_redirects = 0
net.ipv4.conf.default.secure_redirects = 0
net.ipv4.conf.all.send_redirects = 0
net.ipv4.conf.default.send_redirects = 0
net.ipv6.conf.all.accept_redirects = 0
net.ipv6.conf.default.accept_redirects = 0
net.ipv4.conf.all.accept_source_route = 0
net.ipv4.conf.default.accept_source_route = 0
net.ipv6.conf.all.accept_source_route = 0
net.ipv6.conf.default.accept_source_route = 0
net.ipv4.conf.all.log_martians = 1
net.ipv4.conf.default.log_martians = 1
net.ipv4.icmp_echo_ignore_broadcasts = 1
net.ipv4.icmp_ignore_bogus_error_responses = 1
net.ipv4.ip_forward = 0
net.ipv6.conf.all.forwarding = 0
";

/// Every declared inbound service: SSH (from `[ssh]`) and `[[firewall.allow]]`.
pub fn declared_ports(profile: &Profile) -> Vec<FirewallAllow> {
    let mut ports = vec![FirewallAllow {
        port: profile.ssh.port,
        protocol: Protocol::Tcp,
        from: profile.ssh.allow_from.clone(),
        interfaces: crate::stages::gateway::ssh_interfaces(profile),
        service: Some("ssh.service".into()),
        at: "[ssh]".into(),
    }];
    // The profile refuses the SSH port in firewall.allow and merges entries
    // by port and protocol: no entry repeats another.
    ports.extend(profile.firewall.allow.iter().cloned());
    ports.extend(crate::stages::gateway::declared_ports(profile));
    ports.extend(crate::stages::vpn::declared_ports(profile));
    ports
}

fn address_set(ranges: &[&Cidr]) -> String {
    let items: Vec<String> = ranges.iter().map(|c| c.to_string()).collect();
    format!("{{ {} }}", items.join(", "))
}

pub fn render(profile: &Profile) -> TracedText {
    let firewall = &profile.firewall;
    let mut r = TracedText::default();
    r.line("#!/usr/sbin/nft -f", None);
    r.line(&format!("# rampart: [firewall] of profile {}; loaded before the network comes up.", profile.name), None);
    r.line("flush ruleset", None);
    r.line("", None);
    r.line("table inet rampart {", None);
    r.line("\tchain input {", None);
    r.line("\t\ttype filter hook input priority filter; policy drop;", None);
    r.line("\t\tiif \"lo\" accept", None);
    r.line("\t\tct state invalid drop", None);
    r.line("\t\tct state established,related accept", None);
    r.line("\t\t# loopback addresses arrive on lo only (anti-spoofing)", None);
    r.line("\t\tip saddr 127.0.0.0/8 drop", None);
    r.line("\t\tip6 saddr ::1 drop", None);
    r.line("\t\t# the seed's risky ports: NetBIOS, SMB, RPC, LPR, dropped and logged", None);
    r.line(&format!("\t\tmeta l4proto {{ tcp, udp }} th dport {{ {RISKY_PORTS} }} limit rate 10/minute burst 5 packets log prefix \"rampart-risky-port: \" level warn"), None);
    r.line(&format!("\t\tmeta l4proto {{ tcp, udp }} th dport {{ {RISKY_PORTS} }} drop"), None);
    r.line("\t\t# ICMP: errors, and echo requests at a limited rate", None);
    r.line("\t\ticmp type { destination-unreachable, time-exceeded, parameter-problem } accept", None);
    r.line("\t\ticmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem } accept", None);
    r.line("\t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } ip6 hoplimit 255 accept", None);
    if firewall.icmp_echo_per_second > 0 {
        let rate = firewall.icmp_echo_per_second;
        r.line(&format!("\t\ticmp type echo-request limit rate {rate}/second burst {} packets accept", rate * 2), Some("firewall.icmp-echo-per-second".into()));
        r.line(&format!("\t\ticmpv6 type echo-request limit rate {rate}/second burst {} packets accept", rate * 2), Some("firewall.icmp-echo-per-second".into()));
    }
    r.line("\t\t# DHCP replies to this host's own clients", None);
    r.line("\t\tudp sport 67 udp dport 68 accept", None);
    r.line("\t\tip6 saddr fe80::/10 udp sport 547 udp dport 546 accept", None);
    crate::stages::gateway::render_input(profile, &mut r);
    r.line("\t\t# declared services, each for its source ranges only", None);
    for allow in declared_ports(profile) {
        let v4: Vec<&Cidr> = allow.from.iter().filter(|c| c.address.is_ipv4()).collect();
        let v6: Vec<&Cidr> = allow.from.iter().filter(|c| c.address.is_ipv6()).collect();
        let what = format!("{} dport {}", allow.protocol.as_str(), allow.port);
        let on = if allow.interfaces.is_empty() {
            String::new()
        } else {
            let names: Vec<String> = allow.interfaces.iter().map(|i| format!("\"{i}\"")).collect();
            format!("iifname {{ {} }} ", names.join(", "))
        };
        let origin = Some(format!("{} (port {})", allow.at, allow.port));
        if !v4.is_empty() {
            r.line(&format!("\t\t{on}ip saddr {} {what} accept", address_set(&v4)), origin.clone());
        }
        if !v6.is_empty() {
            r.line(&format!("\t\t{on}ip6 saddr {} {what} accept", address_set(&v6)), origin);
        }
    }
    for rule in &firewall.input_rules {
        r.line(&format!("\t\t{}", rule.value), Some(format!("{}: firewall.input-rules", rule.at)));
    }
    if firewall.log_drops {
        r.line("\t\tlimit rate 5/minute burst 10 packets log prefix \"rampart-drop: \" level info", Some("firewall.log-drops".into()));
    }
    r.line("\t}", None);
    r.line("\tchain forward {", None);
    r.line("\t\ttype filter hook forward priority filter; policy drop;", None);
    crate::stages::gateway::render_forward(profile, &mut r);
    r.line("\t}", None);
    r.line("\tchain output {", None);
    r.line("\t\ttype filter hook output priority filter; policy drop;", None);
    r.line("\t\toif \"lo\" accept", None);
    r.line("\t\tct state established,related accept", None);
    r.line("\t\t# connections this host opens: TCP, UDP and ICMP; any other protocol is dropped", None);
    r.line("\t\tmeta l4proto { tcp, udp, icmp, icmpv6 } accept", None);
    r.line("\t}", None);
    crate::stages::gateway::render_chains(profile, &mut r);
    r.line("}", None);
    r
}

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    if !ctx.profile.firewall.enable {
        ctx.record("firewall", false, json!({ "reason": "firewall.enable = false" }));
        return Ok(());
    }
    let ruleset = render(&ctx.profile);
    ctx.install_file("etc/nftables.conf", ruleset.text.as_bytes(), 0o755)?;
    // The image's nft checks the ruleset against a kernel in a fresh, empty
    // network namespace: nothing of the build host's firewall is touched.
    let output = ctx.in_root("nft").args(["--check", "--file", "/etc/nftables.conf"]).without_network().run_unchecked()?;
    if !output.status.success() {
        let error = String::from_utf8_lossy(&output.stderr).trim().to_string();
        match line_named_after(&error, "/etc/nftables.conf").and_then(|n| ruleset.origin(n)) {
            Some(field) => bail!("{field}: nft refuses the firewall rule made from it:\n{error}"),
            None => bail!("nft refuses the firewall ruleset made from [firewall] of {}:\n{error}", ctx.profile.path.display()),
        }
    }
    ctx.install_file(CLOSED_RULESET_FILE, CLOSED_RULESET.as_bytes(), 0o644)?;
    let output = ctx.in_root("nft").args(["--check", "--file", &format!("/{CLOSED_RULESET_FILE}")]).without_network().run_unchecked()?;
    if !output.status.success() {
        bail!("nft refuses rampart's closed ruleset /{CLOSED_RULESET_FILE}:\n{}", String::from_utf8_lossy(&output.stderr).trim());
    }
    ctx.install_file("etc/sysctl.d/60-rampart-network.conf", SYSCTLS.as_bytes(), 0o644)?;
    let mut modules = String::from("# rampart: [firewall] the ruleset's kernel modules, loaded before nftables.service\n");
    for module in PRELOADED_MODULES {
        modules.push_str(&format!("{module}\n"));
    }
    ctx.install_file(MODULES_LOAD_FILE, modules.as_bytes(), 0o644)?;
    ctx.install_file("etc/systemd/system/nftables.service.d/rampart-modules.conf", NFTABLES_AFTER_MODULES.as_bytes(), 0o644)?;
    for (path, text) in NETWORKD_NEEDS_FIREWALL {
        ctx.install_file(path, text.as_bytes(), 0o644)?;
    }
    ctx.install_file(NFTABLES_FAIL_CLOSED_FILE, NFTABLES_FAIL_CLOSED.as_bytes(), 0o644)?;
    ctx.install_file(&format!("etc/systemd/system/{FAILURE_UNIT}"), FAILURE_UNIT_TEXT.as_bytes(), 0o644)?;
    crate::stages::kernel::check_modules_load(ctx, PRELOADED_MODULES).context("while checking the firewall's kernel modules")?;
    let declared: Vec<serde_json::Value> = declared_ports(&ctx.profile)
        .iter()
        .map(|a| {
            json!({
                "port": a.port.get(),
                "protocol": a.protocol.as_str(),
                "from": a.from.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
                "on-interfaces": if a.interfaces.is_empty() { json!("any") } else { json!(a.interfaces) },
                "service": a.service,
            })
        })
        .collect();
    let firewall = &ctx.profile.firewall;
    let settings = json!({
        "engine": "nftables (nftables.service, before network-pre.target)",
        "inbound": "default deny; loopback and established allowed",
        "forward": if ctx.profile.gateway.enable { "default deny; what [gateway] forwards (see the gateway stage)" } else { "default deny" },
        "outbound": "default deny; loopback, established, and new TCP, UDP and ICMP connections allowed",
        "open": declared,
        "risky-ports-dropped-and-logged": RISKY_PORTS,
        "icmp-echo-per-second": firewall.icmp_echo_per_second,
        "log-drops": firewall.log_drops,
        "extra-input-rules": firewall.input_rules.iter().map(|r| r.value.clone()).collect::<Vec<_>>(),
        "sysctls": "/etc/sysctl.d/60-rampart-network.conf (rp_filter, syncookies, no redirects, no source routing, log_martians)",
        "checked-with": "nft --check (the image's own nft)",
        "fails-closed": format!("systemd-networkd and its socket need nftables.service to have started (Requisite=, PartOf=); stopping it loads /{CLOSED_RULESET_FILE} (loopback only) instead of flushing; which fails unless rampart's input, forward and output chains (policy drop) are loaded; {FAILURE_UNIT} says why on the console and in the journal"),
        "modules-preloaded": format!("/{MODULES_LOAD_FILE}: {}", PRELOADED_MODULES.join(", ")),
    });
    ctx.record("firewall", true, settings);
    Ok(())
}
