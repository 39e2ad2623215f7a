//! `[mail]` (the seed's steps 4 and 8): postfix in send-only mode on every
//! profile, and who is told when a control fires. With a smarthost, root's
//! mail (and so every alert) goes to the profile's addresses through it,
//! STARTTLS required; without one it stays in root's local mailbox and
//! nothing leaves the machine. Pure: the credentials file is named here and
//! read by the stage.

use std::path::{Path, PathBuf};

use super::monitoring::{is_dns_name, LogHost};
use super::raw::RawMail;
use super::controls::sited;
use super::Sited;
use crate::located::{LocatedError, SourceText};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailSpec {
    pub enable: bool,
    /// host:port every mail leaves through (STARTTLS required); `None`: local delivery only.
    pub smarthost: Option<Sited<LogHost>>,
    /// A file of one line "user:password" for the smarthost (SASL), beside the profile.
    pub credentials: Option<Sited<PathBuf>>,
    /// Where root's mail (and every alert) goes, through the smarthost.
    pub to: Vec<Sited<String>>,
    /// The least time between two alert mails about one unit.
    pub alert_interval_minutes: u32,
}

#[derive(Debug, Default)]
pub struct MailLayer {
    enable: Option<bool>,
    smarthost: Option<Option<Sited<LogHost>>>,
    credentials: Option<Sited<PathBuf>>,
    to: Option<Vec<Sited<String>>>,
    alert_interval_minutes: Option<u32>,
}

/// An address mail can be sent to: local-part@domain, the local part plain
/// (no quoting, no white space, nothing a postfix table or a header would
/// read differently).
pub fn parse_address(s: &str) -> Result<String, String> {
    let bad = || format!("{s:?} is not a mail address (e.g. \"security@example.org\")");
    let (local, domain) = s.rsplit_once('@').ok_or_else(bad)?;
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local.chars().all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c));
    if !local_ok || !is_dns_name(domain) || !domain.contains('.') || domain.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(bad());
    }
    Ok(s.to_ascii_lowercase())
}

pub(super) fn parse_file_name(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() || s.chars().any(|c| c.is_control()) {
        return Err(format!("{s:?} is not a file name"));
    }
    Ok(PathBuf::from(s))
}

/// The credentials file's one line: "user:password", both printable and
/// without white space (postfix's table reads "[host]:port user:password").
pub fn parse_credentials(text: &str) -> Result<(String, String), String> {
    let line = text.strip_suffix('\n').unwrap_or(text);
    let bad = "it must hold one line, user:password, with no white space";
    if line.contains('\n') {
        return Err(bad.into());
    }
    let (user, password) = line.split_once(':').ok_or(bad)?;
    let plain = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic());
    if !plain(user) || !plain(password) {
        return Err(bad.into());
    }
    Ok((user.to_string(), password.to_string()))
}

pub fn validate(source: &SourceText, raw: Option<RawMail>) -> Result<MailLayer, LocatedError> {
    let Some(raw) = raw else { return Ok(MailLayer::default()) };
    let mut layer = MailLayer { enable: raw.enable, ..MailLayer::default() };
    if let Some(smarthost) = &raw.smarthost {
        layer.smarthost = Some(if smarthost.get_ref().is_empty() {
            None
        } else {
            Some(sited(source, smarthost, source.check(smarthost, "mail.smarthost", |s| LogHost::parse(s))?))
        });
    }
    if let Some(credentials) = &raw.credentials {
        let path = source.check(credentials, "mail.credentials", |s| parse_file_name(s))?;
        let base = source.file.parent().unwrap_or(Path::new("."));
        layer.credentials = Some(Sited { value: base.join(path), at: source.location(credentials.span().start) });
    }
    if let Some(to) = &raw.to {
        let mut addresses = Vec::new();
        for address in to {
            addresses.push(sited(source, address, source.check(address, "mail.to", |s| parse_address(s))?));
        }
        layer.to = Some(addresses);
    }
    if let Some(minutes) = &raw.alert_interval_minutes {
        layer.alert_interval_minutes = Some(source.check(minutes, "mail.alert-interval-minutes", |n| {
            if (1..=10_080).contains(n) {
                Ok(*n as u32)
            } else {
                Err(format!("{n} is out of range (1 to 10080, a week)"))
            }
        })?);
    }
    Ok(layer)
}

pub fn merge(base: &mut MailLayer, child: MailLayer) {
    super::take(&mut base.enable, child.enable);
    super::take(&mut base.smarthost, child.smarthost);
    super::take(&mut base.credentials, child.credentials);
    super::take(&mut base.to, child.to);
    super::take(&mut base.alert_interval_minutes, child.alert_interval_minutes);
}

/// The merged section, checked whole: addresses and credentials only make
/// sense with a smarthost, and a smarthost needs someone to write to.
pub fn finish(layer: MailLayer) -> Result<MailSpec, LocatedError> {
    let spec = MailSpec {
        enable: layer.enable.unwrap_or(true),
        smarthost: layer.smarthost.flatten(),
        credentials: layer.credentials,
        to: layer.to.unwrap_or_default(),
        alert_interval_minutes: layer.alert_interval_minutes.unwrap_or(60),
    };
    let error = |location: &str, message: String| LocatedError { location: location.to_string(), message };
    if !spec.enable {
        return Ok(spec);
    }
    match &spec.smarthost {
        None => {
            if let Some(address) = spec.to.first() {
                return Err(error(&address.at, "mail.to: with no mail.smarthost mail never leaves the machine (root's mail stays in its local mailbox); name the smarthost that reaches these addresses".into()));
            }
            if let Some(credentials) = &spec.credentials {
                return Err(error(&credentials.at, "mail.credentials: there is no mail.smarthost to log in to".into()));
            }
        }
        Some(smarthost) if spec.to.is_empty() => {
            return Err(error(&smarthost.at, format!("mail.smarthost: root's mail and the alerts go through {} to mail.to, which is empty; name the admins' addresses", smarthost.value)));
        }
        Some(_) => {}
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_plain_and_lower_cased() {
        assert_eq!(parse_address("Security@Example.org").as_deref(), Ok("security@example.org"));
        assert_eq!(parse_address("ops+alerts@mail.example.org").as_deref(), Ok("ops+alerts@mail.example.org"));
        for bad in ["", "root", "root@localhost", "a b@example.org", "x@-bad.example", "\"x\"@example.org", "x@example.org\nBcc: y@z.org", "x@1.2.3.4", ".x@example.org", "x@"] {
            assert!(parse_address(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn credentials_are_one_line_of_user_colon_password() {
        assert_eq!(parse_credentials("relay:s3cret:with:colons\n"), Ok(("relay".into(), "s3cret:with:colons".into())));
        for bad in ["", "\n", "user", "user:", ":pw", "user:pass word", "user:pw\nmore:lines\n", "us er:pw"] {
            assert!(parse_credentials(bad).is_err(), "{bad:?}");
        }
    }
}
