//! `[mail-gateway]` (the seed's step 11, "Tools"): postfix accepting mail
//! on port 25 for the relay domains only and passing it to the internal
//! mail host, through MIMEDefang (risky attachments renamed, dropped or
//! refused), ClamAV (signatures given as a build input: an air-gapped site
//! has no freshclam) and SpamAssassin. Pure: the signature directory is
//! named here and read by the stage.

use std::path::{Path, PathBuf};

use super::controls::sited;
use super::mail::{parse_file_name, MailSpec};
use super::monitoring::{is_dns_name, LogHost};
use super::raw::RawMailGateway;
use super::Sited;
use crate::located::{LocatedError, SourceText};

/// The merged `[mail-gateway]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailGatewaySpec {
    pub enable: bool,
    pub relay_domains: Vec<Sited<String>>,
    pub deliver_to: Option<Sited<LogHost>>,
    /// Lower-case, without the dot.
    pub risky_extensions: Vec<String>,
    pub attachments: AttachmentAction,
    pub virus_databases: Option<Sited<PathBuf>>,
    /// SpamAssassin's required score, in tenths (50 = 5.0).
    pub spam_threshold_tenths: u32,
    pub spam_reject: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachmentAction {
    /// ".txt" appended to the name (the seed's defanging).
    Rename,
    /// The attachment removed, a note in its place.
    Drop,
    /// The whole message refused.
    Reject,
}

/// The seed's list (.exe, .pif, .scr, .com, .bat, .reg, .asp, .vbs) and
/// what carries code today: scripts, installers, shortcuts, disk images,
/// macro-enabled documents.
pub const DEFAULT_RISKY_EXTENSIONS: &[&str] = &[
    "exe", "pif", "scr", "com", "bat", "reg", "asp", "vbs", "vbe", "js", "jse", "wsf", "wsh", "ps1", "psm1", "cmd", "hta", "msi", "msp", "cpl", "dll", "jar", "lnk",
    "iso", "img", "vhd", "vhdx", "docm", "xlsm", "pptm", "chm", "scf", "url", "inf", "sct", "appx", "msix",
];

#[derive(Debug, Default)]
pub struct MailGatewayLayer {
    enable: Option<bool>,
    relay_domains: Option<Vec<Sited<String>>>,
    deliver_to: Option<Sited<LogHost>>,
    risky_extensions: Option<Vec<String>>,
    attachments: Option<AttachmentAction>,
    virus_databases: Option<Sited<PathBuf>>,
    spam_threshold_tenths: Option<u32>,
    spam_reject: Option<bool>,
}

fn parse_domain(s: &str) -> Result<String, String> {
    if is_dns_name(s) && s.contains('.') && !s.chars().all(|c| c.is_ascii_digit() || c == '.') {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!("{s:?} is not a domain name (e.g. \"example.org\")"))
    }
}

fn parse_extension(s: &str) -> Result<String, String> {
    let plain = s.strip_prefix('.').unwrap_or(s);
    if plain.is_empty() || plain.len() > 16 || !plain.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(format!("{s:?} is not a file name extension (letters and digits, e.g. \"exe\")"));
    }
    Ok(plain.to_ascii_lowercase())
}

fn parse_attachment_action(s: &str) -> Result<AttachmentAction, String> {
    match s {
        "rename" => Ok(AttachmentAction::Rename),
        "drop" => Ok(AttachmentAction::Drop),
        "reject" => Ok(AttachmentAction::Reject),
        _ => Err(format!("{s:?} is not an attachment action (\"rename\", \"drop\" or \"reject\")")),
    }
}

pub fn validate(source: &SourceText, raw: Option<RawMailGateway>) -> Result<MailGatewayLayer, LocatedError> {
    let Some(raw) = raw else { return Ok(MailGatewayLayer::default()) };
    let mut layer = MailGatewayLayer { enable: raw.enable, ..MailGatewayLayer::default() };
    if let Some(domains) = &raw.relay_domains {
        let mut parsed = Vec::new();
        for domain in domains {
            parsed.push(sited(source, domain, source.check(domain, "mail-gateway.relay-domains", |s| parse_domain(s))?));
        }
        layer.relay_domains = Some(parsed);
    }
    if let Some(to) = &raw.deliver_to {
        layer.deliver_to = Some(sited(source, to, source.check(to, "mail-gateway.deliver-to", |s| LogHost::parse(s))?));
    }
    if let Some(extensions) = &raw.risky_extensions {
        let mut parsed = Vec::new();
        for extension in extensions {
            parsed.push(source.check(extension, "mail-gateway.risky-extensions", |s| parse_extension(s))?);
        }
        layer.risky_extensions = Some(parsed);
    }
    if let Some(action) = &raw.attachments {
        layer.attachments = Some(source.check(action, "mail-gateway.attachments", |s| parse_attachment_action(s))?);
    }
    if let Some(dir) = &raw.virus_databases {
        let path = source.check(dir, "mail-gateway.virus-databases", |s| parse_file_name(s))?;
        let base = source.file.parent().unwrap_or(Path::new("."));
        layer.virus_databases = Some(Sited { value: base.join(path), at: source.location(dir.span().start) });
    }
    if let Some(threshold) = &raw.spam_threshold {
        layer.spam_threshold_tenths = Some(source.check(threshold, "mail-gateway.spam-threshold", |t| {
            if (0.1..=100.0).contains(t) {
                Ok((t * 10.0).round() as u32)
            } else {
                Err(format!("{t} is out of range (0.1 to 100)"))
            }
        })?);
    }
    if let Some(action) = &raw.spam_action {
        layer.spam_reject = Some(source.check(action, "mail-gateway.spam-action", |s| match s.as_str() {
            "reject" => Ok(true),
            "tag" => Ok(false),
            _ => Err(format!("{s:?} is not a spam action (\"reject\" or \"tag\")")),
        })?);
    }
    Ok(layer)
}

pub fn merge(base: &mut MailGatewayLayer, child: MailGatewayLayer) {
    super::take(&mut base.enable, child.enable);
    super::take(&mut base.relay_domains, child.relay_domains);
    super::take(&mut base.deliver_to, child.deliver_to);
    super::take(&mut base.risky_extensions, child.risky_extensions);
    super::take(&mut base.attachments, child.attachments);
    super::take(&mut base.virus_databases, child.virus_databases);
    super::take(&mut base.spam_threshold_tenths, child.spam_threshold_tenths);
    super::take(&mut base.spam_reject, child.spam_reject);
}

/// The merged section, checked whole against `[mail]`.
pub fn finish(layer: MailGatewayLayer, mail: &MailSpec, profile_file: &str) -> Result<MailGatewaySpec, LocatedError> {
    let spec = MailGatewaySpec {
        enable: layer.enable.unwrap_or(false),
        relay_domains: layer.relay_domains.unwrap_or_default(),
        deliver_to: layer.deliver_to,
        risky_extensions: layer.risky_extensions.unwrap_or_else(|| DEFAULT_RISKY_EXTENSIONS.iter().map(|e| e.to_string()).collect()),
        attachments: layer.attachments.unwrap_or(AttachmentAction::Rename),
        virus_databases: layer.virus_databases,
        spam_threshold_tenths: layer.spam_threshold_tenths.unwrap_or(50),
        spam_reject: layer.spam_reject.unwrap_or(true),
    };
    if !spec.enable {
        return Ok(spec);
    }
    let error = |message: &str| LocatedError { location: profile_file.to_string(), message: format!("mail-gateway: {message}") };
    if !mail.enable {
        return Err(error("the gateway is postfix: it needs mail.enable"));
    }
    if spec.relay_domains.is_empty() {
        return Err(error("relay-domains is empty: name the domains mail is accepted for (nothing else is relayed)"));
    }
    if spec.deliver_to.is_none() {
        return Err(error("deliver-to is missing: name the internal mail host (host:port) the relay domains' mail goes to"));
    }
    if spec.virus_databases.is_none() {
        return Err(error("virus-databases is missing: a directory of ClamAV signature files (.cvd, .cld, .hdb, ...) beside the profile; an air-gapped site has no freshclam"));
    }
    Ok(spec)
}

