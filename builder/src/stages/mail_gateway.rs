//! Mail gateway control (the seed's step 11, "Tools": defang risky
//! attachments, a virus scanner at the MTA, SpamAssassin): the mail stage's
//! postfix also listens on port 25, accepts mail for the profile's relay
//! domains only (anything else is refused: no open relay, no local
//! delivery to outside senders) and passes it to the internal mail host,
//! STARTTLS required. Each message goes through three milters, each on a
//! socket only postfix's group may use, and postfix tempfails mail while
//! any of them is down (fails closed):
//!
//! - ClamAV's milter, with clamd and the signature databases the profile
//!   gives as a build input (an air-gapped site has no freshclam): a
//!   directory beside the profile, loaded by the image's `clamscan` at build
//!   time (a corrupt or empty database fails the build), each file's sha256
//!   in the report and the manifest;
//! - SpamAssassin's milter and spamd (no network tests, no learning),
//!   rejecting or tagging at the profile's threshold; checked with the
//!   image's `spamassassin --lint`;
//! - MIMEDefang, renaming (".txt"), dropping or refusing attachments with a
//!   risky extension, zip members included; its filter checked with the
//!   image's `mimedefang.pl -test`.
//!
//! Every daemon runs sandboxed (`stages::sandboxing`) and its failure is
//! mailed to the admins (`stages::mail`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::build::context::BuildContext;
use crate::profile::{AttachmentAction, MailGatewaySpec};

pub const CLAMD_SERVICE: &str = "clamav-daemon.service";
pub const CLAMD_SOCKET: &str = "clamav-daemon.socket";
pub const CLAMAV_MILTER_SERVICE: &str = "clamav-milter.service";
pub const SPAMD_SERVICE: &str = "spamd.service";
pub const SPAMASS_MILTER_SERVICE: &str = "spamass-milter.service";
pub const MIMEDEFANG_SERVICE: &str = "mimedefang.service";
pub const MULTIPLEXOR_SERVICE: &str = "mimedefang-multiplexor.service";

/// The units the gateway runs, and what each is.
pub const UNITS: &[(&str, &str)] = &[
    (CLAMD_SOCKET, "[mail-gateway] clamd's socket"),
    (CLAMD_SERVICE, "[mail-gateway] clamd, the virus scanner"),
    (CLAMAV_MILTER_SERVICE, "[mail-gateway] ClamAV's milter"),
    (SPAMD_SERVICE, "[mail-gateway] spamd"),
    (SPAMASS_MILTER_SERVICE, "[mail-gateway] SpamAssassin's milter"),
    (MULTIPLEXOR_SERVICE, "[mail-gateway] MIMEDefang's Perl workers"),
    (MIMEDEFANG_SERVICE, "[mail-gateway] MIMEDefang's milter"),
];

pub const CLAMAV_MILTER_SOCKET: &str = "/run/clamav-milter/clamav-milter.ctl";
pub const SPAMASS_MILTER_SOCKET_DIR: &str = "/run/spamass-milter";
pub const SPAMASS_MILTER_SOCKET: &str = "/run/spamass-milter/spamass.sock";
pub const SPAMD_SOCKET: &str = "/run/spamd/spamd.sock";
/// MIMEDefang's milter socket, in a directory of group postfix (setgid, so
/// the socket is postfix's group's too: postfix's daemons keep only their
/// primary group).
pub const MIMEDEFANG_SOCKET_DIR: &str = "/run/mimedefang-milter";
pub const MIMEDEFANG_SOCKET: &str = "/run/mimedefang-milter/mimedefang.sock";
pub const MIMEDEFANG_RUN_DIR: &str = "/run/mimedefang";
pub const MIMEDEFANG_SPOOL: &str = "/var/spool/MIMEDefang";
const CLAMD_CTL: &str = "/run/clamav/clamd.ctl";
/// Where the signature databases go in the image.
pub const SIGNATURES: &str = "/var/lib/clamav";
const TRANSPORT: &str = "etc/postfix/rampart-transport";
const TLS_POLICY: &str = "etc/postfix/rampart-tls-policy";
const RELAY_DOMAINS: &str = "etc/postfix/rampart-relay-domains";
const FILTER_TEXT: &str = include_str!("../../data/mail/mimedefang-filter");

/// ClamAV's database file types (its documentation's list): anything else
/// in the directory is refused, so a stray file is not silently ignored.
const DATABASE_EXTENSIONS: &[&str] = &[
    "cvd", "cld", "cud", "hdb", "hsb", "hdu", "hsu", "mdb", "msb", "mdu", "msu", "ndb", "ndu", "ldb", "ldu", "idb", "cdb", "cfg", "crb", "cat", "ftm", "fp",
    "sfp", "ign", "ign2", "pdb", "gdb", "wdb", "yar", "yara", "pwdb", "info",
];

/// The signature files of `dir`: regular files with a database extension
/// and a plain name, at least one, none empty; sorted by name.
pub fn signature_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if !meta.is_file() {
            return Err(format!("{} is not a regular file (the directory holds signature files only; no links, no subdirectories)", path.display()));
        }
        let extension = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
        if !DATABASE_EXTENSIONS.contains(&extension.as_str()) || name.starts_with('.') || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            return Err(format!("{} is not a ClamAV signature database (.cvd, .cld, .hdb, .ndb, .ldb, ...; letters, digits, '.', '_' and '-' in its name)", path.display()));
        }
        if meta.len() == 0 {
            return Err(format!("{} is empty", path.display()));
        }
        files.push((name, path));
    }
    if files.is_empty() {
        return Err(format!("{} holds no signature files", dir.display()));
    }
    files.sort();
    Ok(files)
}

/// postfix's address of the internal mail host: brackets, no MX lookup.
fn next_hop(profile: &MailGatewaySpec) -> String {
    crate::stages::mail::relay(&profile.deliver_to.as_ref().expect("checked by profile::mail_gateway::finish").value)
}

/// The `postconf -e` settings the gateway adds to the mail stage's main.cf.
pub fn main_cf_settings(gateway: &MailGatewaySpec) -> Vec<String> {
    let domains: Vec<&str> = gateway.relay_domains.iter().map(|d| d.value.as_str()).collect();
    vec![
        "inet_interfaces = all".to_string(),
        format!("relay_domains = {}", domains.join(", ")),
        format!("transport_maps = texthash:/{TRANSPORT}"),
        format!("smtp_tls_policy_maps = texthash:/{TLS_POLICY}"),
        // outside senders reach the relay domains and nothing else (not this host's own users)
        format!("smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination, check_recipient_access texthash:/{RELAY_DOMAINS}, reject"),
        "smtpd_helo_required = yes".to_string(),
        "strict_rfc821_envelopes = yes".to_string(),
        format!("smtpd_milters = unix:{CLAMAV_MILTER_SOCKET}, unix:{SPAMASS_MILTER_SOCKET}, unix:{MIMEDEFANG_SOCKET}"),
        // a milter that is down or fails: the sender is told to try again later
        "milter_default_action = tempfail".to_string(),
    ]
}

pub fn transport(gateway: &MailGatewaySpec) -> String {
    let mut text = String::from("# rampart: [mail-gateway] the relay domains' mail goes to the internal mail host (mail-gateway.deliver-to)\n");
    for domain in &gateway.relay_domains {
        text.push_str(&format!("{} relay:{}\n", domain.value, next_hop(gateway)));
    }
    text
}

fn tls_policy(gateway: &MailGatewaySpec) -> String {
    format!("# rampart: [mail-gateway] the internal mail host: encrypted or not at all\n{} encrypt protocols=>=TLSv1.2\n", next_hop(gateway))
}

fn relay_domains_access(gateway: &MailGatewaySpec) -> String {
    let mut text = String::from("# rampart: [mail-gateway] the recipients outside senders may reach: the relay domains (and their subdomains)\n");
    for domain in &gateway.relay_domains {
        text.push_str(&format!("{} OK\n", domain.value));
    }
    text
}

/// The filter with the profile's extensions and action put in. Extensions
/// are letters and digits only (profile::mail_gateway), so they go into the
/// Perl regular expression as they are.
pub fn mimedefang_filter(gateway: &MailGatewaySpec) -> String {
    let action = match gateway.attachments {
        AttachmentAction::Rename => "rename",
        AttachmentAction::Drop => "drop",
        AttachmentAction::Reject => "reject",
    };
    FILTER_TEXT.replace("@EXTENSIONS@", &gateway.risky_extensions.join("|")).replace("@ACTION@", action)
}

fn mimedefang_defaults() -> String {
    format!(
        "# rampart: [mail-gateway] read by Debian's mimedefang units, which run as
# defang (their sandbox's User=): nothing to drop to
MX_USER=
SOCKET={MIMEDEFANG_SOCKET}
# the socket 0660 in its setgid directory of group postfix
MD_ALLOW_GROUP_ACCESS=yes
SYSLOG_FACILITY=mail
MX_MINIMUM=1
MX_MAXIMUM=4
# no header naming the filter and its version
X_SCANNED_BY=-
LOOPBACK_RESERVED_CONNECTIONS=-1
ALLOW_NEW_CONNECTIONS_TO_QUEUE=no
MX_RECIPOK_PERDOMAIN_LIMIT=0
"
    )
}

fn clamd_conf() -> String {
    format!(
        "# rampart: [mail-gateway] clamd: a local socket only (systemd's, clamav-daemon.socket);
# the signatures are the build's (mail-gateway.virus-databases), never downloaded.
LocalSocket {CLAMD_CTL}
FixStaleSocket true
LocalSocketGroup clamav
LocalSocketMode 660
Foreground true
LogSyslog true
LogFacility LOG_MAIL
DatabaseDirectory {SIGNATURES}
OfficialDatabaseOnly false
SelfCheck 3600
ScanMail true
ScanArchive true
ScanPE true
ScanELF true
ScanOLE2 true
ScanPDF true
ScanHTML true
Bytecode true
MaxFileSize 25M
MaxScanSize 100M
StreamMaxLength 25M
ExitOnOOM true
"
    )
}

fn clamav_milter_conf() -> String {
    format!(
        "# rampart: [mail-gateway] ClamAV's milter: infected mail refused, mail it could not scan deferred
MilterSocket {CLAMAV_MILTER_SOCKET}
MilterSocketGroup postfix
MilterSocketMode 660
FixStaleSocket true
Foreground true
ReadTimeout 120
ClamdSocket unix:{CLAMD_CTL}
OnClean Accept
OnInfected Reject
OnFail Defer
RejectMsg Rejected: a virus (%v) was found
AddHeader No
LogSyslog true
LogFacility LOG_MAIL
LogInfected Basic
MaxFileSize 25M
"
    )
}

/// A milter's unit (neither milter package ships one): after the daemon
/// it hands messages to, before postfix; `service` is its [Service] lines.
fn milter_unit(package: &str, description: &str, manual: &str, after: &str, service: &str) -> String {
    format!(
        "# rampart: [mail-gateway] ({package} ships no systemd unit)
[Unit]
Description={description}
Documentation={manual}
Wants={after}
After={after}
Before=postfix.service

[Service]
Type=simple
{service}Restart=on-failure

[Install]
WantedBy=multi-user.target
"
    )
}

fn clamav_milter_unit() -> String {
    let service = "User=clamav
Group=clamav
# its socket is made group postfix, whose daemons keep only that group
SupplementaryGroups=postfix
RuntimeDirectory=clamav-milter
RuntimeDirectoryMode=0755
ExecStart=/usr/sbin/clamav-milter --config-file=/etc/clamav/clamav-milter.conf
";
    milter_unit("clamav-milter", "ClamAV's milter for postfix", "man:clamav-milter(8)", CLAMD_SOCKET, service)
}

fn spamass_milter_unit(gateway: &MailGatewaySpec) -> String {
    // -r -1: refuse what SpamAssassin calls spam (required_score); without
    // it the message is tagged. No -i: mail from loopback is checked too.
    // Bookworm's spamass-milter cannot set its socket's group: the socket
    // takes its directory's (setgid, postfix; tmpfiles), with mode 0770.
    let reject = if gateway.spam_reject { " -r -1" } else { "" };
    let service = format!(
        "User=spamass-milter
Group=spamass-milter
# spamd's socket is debian-spamd's
SupplementaryGroups=debian-spamd
UMask=0007
ExecStartPre=/bin/rm -f {SPAMASS_MILTER_SOCKET}
ExecStart=/usr/sbin/spamass-milter -p {SPAMASS_MILTER_SOCKET}{reject} -- -U {SPAMD_SOCKET}
"
    );
    milter_unit("spamass-milter", "SpamAssassin's milter for postfix", "man:spamass-milter(1)", SPAMD_SERVICE, &service)
}

/// spamd as its own user on a local socket only (no TCP listener).
fn spamd_drop_in() -> String {
    format!(
        "# rampart: [mail-gateway] spamd as debian-spamd, on a local socket only
[Service]
User=debian-spamd
Group=debian-spamd
RuntimeDirectory=spamd
RuntimeDirectoryMode=0755
PIDFile=/run/spamd/spamd.pid
ExecStart=
ExecStart=/usr/sbin/spamd --pidfile=/run/spamd/spamd.pid --max-children=2 --min-children=1 --nouser-config --syslog=mail --socketpath={SPAMD_SOCKET} --socketmode=0660
"
    )
}

fn spamassassin_local_cf(gateway: &MailGatewaySpec) -> String {
    let threshold = format!("{}.{}", gateway.spam_threshold_tenths / 10, gateway.spam_threshold_tenths % 10);
    let mut text = format!(
        "# rampart: [mail-gateway] SpamAssassin, written whole by rampart
required_score {threshold}
report_safe 0
# an air-gapped site: no DNS blocklists, no network checks, no learning
dns_available no
skip_rbl_checks 1
use_bayes 0
bayes_auto_learn 0
ifplugin Mail::SpamAssassin::Plugin::Razor2
use_razor2 0
endif
ifplugin Mail::SpamAssassin::Plugin::Pyzor
use_pyzor 0
endif
"
    );
    if !gateway.spam_reject {
        text.push_str("# mail-gateway.spam-action = \"tag\": marked, delivered\nrewrite_header Subject [SPAM]\n");
    }
    text
}

/// clamd's units skip themselves without Debian's main and daily
/// databases (freshclam's): here the build's databases are the ones.
const CLAMD_CONDITION_DROP_IN: &str = "# rampart: [mail-gateway] the signatures are the build's own, not freshclam's main and daily
[Unit]
ConditionPathExistsGlob=
AssertDirectoryNotEmpty=/var/lib/clamav
";

/// clamd runs as clamav from the start (its sandbox's User=): the chown of
/// /run/clamav that the package's postinst adds (`extend.conf`, which it
/// may write again on an upgrade) is dropped; the socket unit makes the
/// directory. The drop-in's name sorts after `extend.conf`.
const CLAMD_SERVICE_DROP_IN: &str = "
[Service]
ExecStartPre=
";

fn tmpfiles() -> String {
    format!(
        "# rampart: [mail-gateway] MIMEDefang's run directory (its pid files), and the
# milter sockets' directories: setgid postfix, so each socket is postfix's
# group's (postfix's daemons keep only their primary group)
d {MIMEDEFANG_RUN_DIR} 0755 defang defang -
d {MIMEDEFANG_SOCKET_DIR} 2750 defang postfix -
d {SPAMASS_MILTER_SOCKET_DIR} 2750 spamass-milter postfix -
"
    )
}

/// The milter hands clamd each message as an open file in its own private
/// /tmp (a mount clamd's namespace cannot name): AppArmor's clamd profile
/// refuses it ("Failed name lookup - disconnected path") unless the profile
/// attaches such paths to the root, where its `/tmp/**` rule applies.
/// The build compiles the policy afterwards (kernel stage).
fn attach_disconnected_for_clamd(ctx: &BuildContext) -> Result<()> {
    const PROFILE: &str = "etc/apparmor.d/usr.sbin.clamd";
    let Ok(text) = std::fs::read_to_string(ctx.root().join(PROFILE)) else {
        return Ok(()); // no AppArmor profile for clamd in the image
    };
    let header = "/usr/sbin/clamd {";
    if text.lines().filter(|l| l.trim() == header).count() != 1 {
        bail!("[mail-gateway] of {}: /{PROFILE} has no line {header:?} to add flags=(attach_disconnected) to; has clamav-daemon's AppArmor profile changed?", ctx.profile.path.display());
    }
    let changed: String = text
        .lines()
        .map(|l| if l.trim() == header { "# rampart: [mail-gateway] the milter's messages come from its private /tmp\n/usr/sbin/clamd flags=(attach_disconnected) {".to_string() } else { l.to_string() })
        .map(|l| l + "\n")
        .collect();
    ctx.install_file(PROFILE, changed.as_bytes(), 0o644)
}

/// The image's uid and gid of `user`, from its /etc/passwd.
fn ids_of(ctx: &BuildContext, user: &str) -> Result<(u32, u32)> {
    let passwd = std::fs::read_to_string(ctx.root().join("etc/passwd"))?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0] == user)
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .with_context(|| format!("user {user} is not in the image's /etc/passwd; did its package's maintainer script run?"))
}

fn postconf(ctx: &BuildContext, args: &[&str]) -> Result<String> {
    let output = ctx.in_root("postconf").args(["-c", "/etc/postfix"]).args(args).run().context("while configuring postfix with the image's postconf")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("warning") || stderr.contains("fatal") {
        bail!("[mail-gateway] of {}: the image's postconf complains:\n{}", ctx.profile.path.display(), stderr.trim());
    }
    Ok(output.stdout_text())
}

/// Copies the signature files in (owned by clamav) and has the image's
/// clamscan load them: it refuses a corrupt database, and the count of
/// signatures must not be zero. Returns each file's name, size and sha256.
fn install_signatures(ctx: &BuildContext, dir: &crate::profile::Sited<PathBuf>) -> Result<(Vec<serde_json::Value>, u64)> {
    let field = |e: String| anyhow::anyhow!("{}: mail-gateway.virus-databases: {e}", dir.at);
    let files = signature_files(&dir.value).map_err(field)?;
    let (uid, gid) = ids_of(ctx, "clamav")?;
    let target = ctx.root().join(SIGNATURES.trim_start_matches('/'));
    for entry in std::fs::read_dir(&target).into_iter().flatten().flatten() {
        // nothing but the build's databases: a package's leftovers would load too
        std::fs::remove_file(entry.path()).with_context(|| format!("while emptying {SIGNATURES} in the image"))?;
    }
    let mut listed = Vec::new();
    for (name, path) in &files {
        let bytes = std::fs::read(path).map_err(|e| field(format!("{}: {e}", path.display())))?;
        let image_path = format!("{}/{name}", SIGNATURES.trim_start_matches('/'));
        ctx.install_file(&image_path, &bytes, 0o644)?;
        std::os::unix::fs::lchown(ctx.root().join(&image_path), Some(uid), Some(gid))?;
        listed.push(json!({ "file": name, "bytes": bytes.len(), "sha256": hex::encode(Sha256::digest(&bytes)) }));
    }
    let output = ctx
        .in_root_with_proc("clamscan")
        .args(["--database", SIGNATURES, "--stdout", "/etc/hostname"])
        .run_unchecked()
        .context("while loading the signatures with the image's clamscan")?;
    let text = output.stdout_text();
    // 0: clean, 1: found; 2 and up: an error (a database it cannot load)
    if output.status.code().is_none_or(|c| c > 1) {
        bail!("{}: mail-gateway.virus-databases: the image's clamscan refuses {}:\n{}{}", dir.at, dir.value.display(), text.trim(), String::from_utf8_lossy(&output.stderr).trim());
    }
    let known: u64 = text.lines().find_map(|l| l.strip_prefix("Known viruses:")).and_then(|n| n.trim().parse().ok()).unwrap_or(0);
    if known == 0 {
        bail!("{}: mail-gateway.virus-databases: the image's clamscan loads no signature from {}:\n{}", dir.at, dir.value.display(), text.trim());
    }
    Ok((listed, known))
}

/// clamd and its milter log to syslog (mail.log, rotated with rsyslog's
/// files), never to /var/log/clamav: Debian's logrotate entries for their
/// own files lack `missingok`, and logrotate.service would fail each hour.
const CLAMAV_LOGROTATE: &[&str] = &["etc/logrotate.d/clamav-daemon", "etc/logrotate.d/clamav-milter"];

fn drop_file_log_rotation(ctx: &BuildContext) -> Result<()> {
    for entry in CLAMAV_LOGROTATE {
        match std::fs::remove_file(ctx.root().join(entry)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).with_context(|| format!("while removing /{entry}")),
            _ => {}
        }
    }
    Ok(())
}

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    let gateway = ctx.profile.mail_gateway.clone();
    if !gateway.enable {
        ctx.record("mail-gateway", false, json!({ "reason": "mail-gateway.enable = false: nothing listens on port 25" }));
        return Ok(());
    }
    let dir = gateway.virus_databases.clone().expect("checked by profile::mail_gateway::finish");
    let (signatures, known) = install_signatures(ctx, &dir)?;
    ctx.build_inputs.push(json!({ "input": "mail-gateway.virus-databases", "files": signatures.clone() }));

    ctx.install_file(TRANSPORT, transport(&gateway).as_bytes(), 0o644)?;
    ctx.install_file(TLS_POLICY, tls_policy(&gateway).as_bytes(), 0o644)?;
    ctx.install_file(RELAY_DOMAINS, relay_domains_access(&gateway).as_bytes(), 0o644)?;
    let settings = main_cf_settings(&gateway);
    let mut args = vec!["-e"];
    args.extend(settings.iter().map(String::as_str));
    postconf(ctx, &args)?;
    postconf(ctx, &["-M", "-e", "smtp/inet=smtp inet n - n - - smtpd"])?;
    let listeners = postconf(ctx, &["-M"])?;
    if !listeners.lines().any(|l| l.split_whitespace().take(2).eq(["smtp", "inet"])) {
        bail!("[mail-gateway] of {}: master.cf has no smtp inet service after rampart added it", ctx.profile.path.display());
    }
    let postconf_n = postconf(ctx, &["-n"])?;

    // ClamAV
    ctx.install_file("etc/clamav/clamd.conf", clamd_conf().as_bytes(), 0o644)?;
    ctx.install_file("etc/clamav/clamav-milter.conf", clamav_milter_conf().as_bytes(), 0o644)?;
    ctx.install_file(&format!("etc/systemd/system/{CLAMD_SOCKET}.d/50-rampart-signatures.conf"), CLAMD_CONDITION_DROP_IN.as_bytes(), 0o644)?;
    let service = format!("{CLAMD_CONDITION_DROP_IN}{CLAMD_SERVICE_DROP_IN}");
    ctx.install_file(&format!("etc/systemd/system/{CLAMD_SERVICE}.d/rampart-signatures.conf"), service.as_bytes(), 0o644)?;
    ctx.install_file(&format!("etc/systemd/system/{CLAMAV_MILTER_SERVICE}"), clamav_milter_unit().as_bytes(), 0o644)?;
    attach_disconnected_for_clamd(ctx)?;
    drop_file_log_rotation(ctx)?;
    // SpamAssassin
    ctx.install_file("etc/spamassassin/local.cf", spamassassin_local_cf(&gateway).as_bytes(), 0o644)?;
    ctx.install_file(&format!("etc/systemd/system/{SPAMD_SERVICE}.d/50-rampart-socket.conf"), spamd_drop_in().as_bytes(), 0o644)?;
    ctx.install_file(&format!("etc/systemd/system/{SPAMASS_MILTER_SERVICE}"), spamass_milter_unit(&gateway).as_bytes(), 0o644)?;
    let lint = ctx.in_root_with_proc("spamassassin").arg("--lint").run_unchecked().context("while checking SpamAssassin's configuration with the image's spamassassin --lint")?;
    if !lint.status.success() {
        bail!("[mail-gateway] of {}: the image's spamassassin --lint refuses the configuration:\n{}", ctx.profile.path.display(), String::from_utf8_lossy(&lint.stderr).trim());
    }
    // MIMEDefang
    ctx.install_file("etc/mail/mimedefang-filter", mimedefang_filter(&gateway).as_bytes(), 0o644)?;
    ctx.install_file("etc/default/mimedefang", mimedefang_defaults().as_bytes(), 0o644)?;
    ctx.install_file("etc/tmpfiles.d/rampart-mail-gateway.conf", tmpfiles().as_bytes(), 0o644)?;
    let test = ctx
        .in_root_with_proc("mimedefang.pl")
        .args(["-f", "/etc/mail/mimedefang-filter", "-test"])
        .run_unchecked()
        .context("while checking the filter with the image's mimedefang.pl -test")?;
    if !test.status.success() {
        bail!(
            "[mail-gateway] of {}: the image's mimedefang.pl -test refuses the filter:\n{}{}",
            ctx.profile.path.display(),
            test.stdout_text().trim(),
            String::from_utf8_lossy(&test.stderr).trim()
        );
    }

    ctx.record(
        "mail-gateway",
        true,
        json!({
            "listens": "postfix on port 25 (every address); mail for the relay domains only",
            "relay-domains": gateway.relay_domains.iter().map(|d| d.value.clone()).collect::<Vec<_>>(),
            "deliver-to": format!("{} (STARTTLS required)", next_hop(&gateway)),
            "milters": [CLAMAV_MILTER_SOCKET, SPAMASS_MILTER_SOCKET, MIMEDEFANG_SOCKET],
            "milter-default-action": "tempfail",
            "attachments": { "action": format!("{:?}", gateway.attachments).to_lowercase(), "risky-extensions": gateway.risky_extensions },
            "virus-databases": { "files": signatures, "signatures": known },
            "spam": { "required-score": gateway.spam_threshold_tenths as f64 / 10.0, "action": if gateway.spam_reject { "reject" } else { "tag" } },
            "postconf": postconf_n.lines().collect::<Vec<_>>(),
        }),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    fn gateway(attachments: AttachmentAction, spam_reject: bool) -> MailGatewaySpec {
        let sited = |value: &str| crate::profile::Sited { value: value.to_string(), at: "p.toml:1:1".into() };
        MailGatewaySpec {
            enable: true,
            relay_domains: vec![sited("example.org"), sited("example.net")],
            deliver_to: Some(crate::profile::Sited { value: crate::profile::LogHost::parse("192.0.2.25:25").unwrap(), at: "p.toml:2:1".into() }),
            risky_extensions: vec!["exe".into(), "scr".into()],
            attachments,
            virus_databases: None,
            spam_threshold_tenths: 65,
            spam_reject,
        }
    }

    #[test]
    fn each_relay_domain_goes_to_the_internal_host_encrypted_and_nothing_else_is_accepted() {
        let g = gateway(AttachmentAction::Rename, true);
        assert_eq!(transport(&g).lines().skip(1).collect::<Vec<_>>(), vec!["example.org relay:[192.0.2.25]:25", "example.net relay:[192.0.2.25]:25"]);
        assert_eq!(tls_policy(&g).lines().nth(1), Some("[192.0.2.25]:25 encrypt protocols=>=TLSv1.2"));
        let settings = main_cf_settings(&g);
        assert!(settings.contains(&"relay_domains = example.org, example.net".to_string()));
        assert!(settings.iter().any(|s| s.starts_with("smtpd_recipient_restrictions = ") && s.ends_with(", reject")), "{settings:?}");
        assert!(settings.contains(&"milter_default_action = tempfail".to_string()));
    }

    #[test]
    fn the_filter_and_spam_settings_follow_the_profile() {
        let renamed = mimedefang_filter(&gateway(AttachmentAction::Rename, true));
        assert!(renamed.contains(r"my $risky = '\.(?:exe|scr)[\s.]*$';") && renamed.contains("my $action = 'rename';"), "{renamed}");
        assert!(mimedefang_filter(&gateway(AttachmentAction::Reject, true)).contains("my $action = 'reject';"));
        assert!(!renamed.contains("@EXTENSIONS@") && !renamed.contains("@ACTION@"));
        let tagged = gateway(AttachmentAction::Drop, false);
        assert!(spamassassin_local_cf(&tagged).contains("required_score 6.5\n") && spamassassin_local_cf(&tagged).contains("rewrite_header Subject"));
        assert!(!spamass_milter_unit(&tagged).contains(" -r -1"));
        assert!(spamass_milter_unit(&gateway(AttachmentAction::Drop, true)).contains(" -p /run/spamass-milter/spamass.sock -r -1 -- -U /run/spamd/spamd.sock"));
    }

    #[test]
    fn a_signature_directory_holds_databases_only_and_none_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(signature_files(dir.path()).unwrap_err().contains("holds no signature files"));
        write(dir.path(), "site.hdb", "44d88612fea8a8f36de82e1278abb02f:68:Site.Test\n");
        write(dir.path(), "a.ndb", "x");
        let names: Vec<String> = signature_files(dir.path()).unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["a.ndb", "site.hdb"]);
        write(dir.path(), "empty.cvd", "");
        assert!(signature_files(dir.path()).unwrap_err().contains("empty.cvd is empty"));
        std::fs::remove_file(dir.path().join("empty.cvd")).unwrap();
        write(dir.path(), "notes.txt", "x");
        assert!(signature_files(dir.path()).unwrap_err().contains("is not a ClamAV signature database"));
        std::fs::remove_file(dir.path().join("notes.txt")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link.hdb")).unwrap();
        assert!(signature_files(dir.path()).unwrap_err().contains("not a regular file"));
    }
}
