//! `[sessions]`: what a login session gets beyond the password policy: an
//! idle shell timeout (TMOUT), who may use `su` (pam_wheel's group) and a
//! private temporary directory per user (pam_tmpdir).
//! Validated where written, merged field by field, defaults applied. Pure.

use super::raw::RawSessions;
use super::types::UserName;
use crate::located::{LocatedError, SourceText};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionsSpec {
    pub idle_timeout: u32,
    pub su_group: UserName,
    pub private_tmp: bool,
}

/// CIS Debian 12 5.4.3.2 asks for 900 seconds or less.
pub const DEFAULT_IDLE_TIMEOUT: u32 = 900;
/// CIS Debian 12 5.2.7 names it `sugroup`.
pub const DEFAULT_SU_GROUP: &str = "sugroup";

#[derive(Debug, Default)]
pub struct SessionsLayer {
    idle_timeout: Option<u32>,
    su_group: Option<UserName>,
    private_tmp: Option<bool>,
}

pub fn validate(source: &SourceText, raw: Option<RawSessions>) -> Result<SessionsLayer, LocatedError> {
    let Some(raw) = raw else { return Ok(SessionsLayer::default()) };
    let mut layer = SessionsLayer { private_tmp: raw.private_tmp, ..Default::default() };
    if let Some(timeout) = &raw.idle_timeout {
        layer.idle_timeout = Some(source.check(timeout, "sessions.idle-timeout", |n: &i64| {
            u32::try_from(*n).ok().filter(|n| *n <= 86_400).ok_or("seconds from 0 (never) to 86400")
        })?);
    }
    if let Some(group) = &raw.su_group {
        let name = source.check(group, "sessions.su-group", |s| UserName::parse(s))?;
        if ["root", "sudo", "adm", "wheel"].contains(&name.as_str()) {
            return Err(source.error(group, format!("sessions.su-group: {name} is a group Debian uses for other rights; name a group for su alone")));
        }
        layer.su_group = Some(name);
    }
    Ok(layer)
}

pub fn merge(base: &mut SessionsLayer, child: SessionsLayer) {
    super::take(&mut base.idle_timeout, child.idle_timeout);
    super::take(&mut base.su_group, child.su_group);
    super::take(&mut base.private_tmp, child.private_tmp);
}

pub fn finish(layer: SessionsLayer) -> SessionsSpec {
    SessionsSpec {
        idle_timeout: layer.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT),
        su_group: layer.su_group.unwrap_or_else(|| UserName::parse(DEFAULT_SU_GROUP).expect("valid")),
        private_tmp: layer.private_tmp.unwrap_or(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    fn check(toml_text: &str, expected: Result<SessionsSpec, &str>) {
        #[derive(Deserialize)]
        struct Wrapper {
            sessions: Option<RawSessions>,
        }
        let source = SourceText { file: "p.toml".into(), text: toml_text.to_string() };
        let wrapper: Wrapper = toml::from_str(toml_text).unwrap();
        let result = validate(&source, wrapper.sessions).map(finish).map_err(|e| e.to_string());
        assert_eq!(result, expected.map_err(str::to_string), "{toml_text}");
    }

    #[test]
    fn sessions_default_to_cis_and_refuse_what_would_widen_su() {
        let spec = |idle_timeout, group: &str, private_tmp| SessionsSpec { idle_timeout, su_group: UserName::parse(group).unwrap(), private_tmp };
        check("", Ok(spec(900, "sugroup", true)));
        check("[sessions]\nidle-timeout = 0\nsu-group = \"operators\"\nprivate-tmp = false\n", Ok(spec(0, "operators", false)));
        check("[sessions]\nidle-timeout = -5\n", Err("p.toml:2:16: sessions.idle-timeout: seconds from 0 (never) to 86400"));
        check(
            "[sessions]\nsu-group = \"sudo\"\n",
            Err("p.toml:2:12: sessions.su-group: sudo is a group Debian uses for other rights; name a group for su alone"),
        );
    }
}
