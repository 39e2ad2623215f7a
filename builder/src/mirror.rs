//! Decides which Debian mirror a run talks to: `--mirror` beats the profile,
//! the profile beats the host's own apt sources. Owns reading the host's apt
//! sources; knows nothing about packages.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::profile::MirrorSpec;

/// One apt source: a URL and a suite with its components.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptSource {
    pub url: String,
    pub suite: String,
    pub components: Vec<String>,
}

/// The mirror a run uses, fully resolved (a bundle's manifest records it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Mirror {
    pub url: String,
    pub security_url: Option<String>,
    pub suite: String,
    pub security_suite: Option<String>,
    pub components: Vec<String>,
    pub snapshot: Option<String>,
}

impl Mirror {
    /// The apt sources of this mirror, with any snapshot date filled in.
    pub fn sources(&self) -> Vec<AptSource> {
        let fill = |url: &str| match &self.snapshot {
            Some(date) => url.replace("{snapshot}", date),
            None => url.to_string(),
        };
        let mut sources = vec![AptSource { url: fill(&self.url), suite: self.suite.clone(), components: self.components.clone() }];
        if let (Some(url), Some(suite)) = (&self.security_url, &self.security_suite) {
            sources.push(AptSource { url: fill(url), suite: suite.clone(), components: self.components.clone() });
        }
        sources
    }
}

/// The host's own apt sources (deb lines only).
pub fn host_sources() -> Result<Vec<AptSource>> {
    let mut sources = Vec::new();
    let list = Path::new("/etc/apt/sources.list");
    if list.exists() {
        let text = std::fs::read_to_string(list).with_context(|| format!("while reading {}", list.display()))?;
        sources.extend(parse_one_line_sources(&text));
    }
    let dir = Path::new("/etc/apt/sources.list.d");
    if dir.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        entries.sort();
        for path in entries {
            let text = || std::fs::read_to_string(&path).with_context(|| format!("while reading {}", path.display()));
            match path.extension().and_then(|e| e.to_str()) {
                Some("list") => sources.extend(parse_one_line_sources(&text()?)),
                Some("sources") => sources.extend(parse_deb822_sources(&text()?)),
                _ => {}
            }
        }
    }
    Ok(sources)
}

fn parse_one_line_sources(text: &str) -> Vec<AptSource> {
    let mut sources = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words: Vec<&str> = line.split_whitespace().collect();
        if words.first() != Some(&"deb") {
            continue;
        }
        words.remove(0);
        if words.first().is_some_and(|w| w.starts_with('[')) {
            while let Some(word) = words.first() {
                let done = word.ends_with(']');
                words.remove(0);
                if done {
                    break;
                }
            }
        }
        if words.len() >= 2 {
            sources.push(AptSource {
                url: words[0].trim_end_matches('/').to_string(),
                suite: words[1].to_string(),
                components: words[2..].iter().map(|s| s.to_string()).collect(),
            });
        }
    }
    sources
}

fn parse_deb822_sources(text: &str) -> Vec<AptSource> {
    let mut sources = Vec::new();
    for stanza in text.split("\n\n") {
        let mut types = Vec::new();
        let mut uris = Vec::new();
        let mut suites = Vec::new();
        let mut components = Vec::new();
        let mut enabled = true;
        for line in stanza.lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else { continue };
            let values: Vec<String> = value.split_whitespace().map(|s| s.to_string()).collect();
            match key.trim().to_ascii_lowercase().as_str() {
                "types" => types = values,
                "uris" => uris = values,
                "suites" => suites = values,
                "components" => components = values,
                "enabled" => enabled = value.trim() != "no",
                _ => {}
            }
        }
        if !enabled || !types.iter().any(|t| t == "deb") {
            continue;
        }
        for uri in &uris {
            for suite in &suites {
                sources.push(AptSource {
                    url: uri.trim_end_matches('/').to_string(),
                    suite: suite.clone(),
                    components: components.clone(),
                });
            }
        }
    }
    sources
}

/// Resolves the mirror: `--mirror` first, then the profile, then the host.
pub fn resolve(spec: &MirrorSpec, cli_mirror: Option<&str>, host: &[AptSource]) -> Result<Mirror> {
    let host_url = |suite: &str| host.iter().find(|s| s.suite == suite).map(|s| s.url.clone());
    let url = match (cli_mirror, &spec.url) {
        (Some(url), _) => crate::profile::types::parse_url(url).map_err(|e| anyhow::anyhow!("--mirror: {e}"))?,
        (None, Some(url)) => url.clone(),
        (None, None) => match host_url(&spec.suite) {
            Some(url) => url,
            None => bail!(
                "no mirror for suite {}: the host's apt sources (/etc/apt/sources.list, /etc/apt/sources.list.d) have none; set mirror.url in the profile or pass --mirror",
                spec.suite
            ),
        },
    };
    let security_url = match &spec.security_suite {
        None => None,
        Some(suite) => match (&spec.security_url, host_url(suite)) {
            (Some(url), _) => Some(url.clone()),
            (None, Some(url)) => Some(url),
            (None, None) => bail!(
                "no mirror for the security suite {suite}: set mirror.security-url in the profile (or security-suite = \"\" to build without security updates)"
            ),
        },
    };
    if let Some(date) = &spec.snapshot {
        for candidate in [Some(&url), security_url.as_ref()].into_iter().flatten() {
            if !candidate.contains("{snapshot}") {
                bail!("the profile pins snapshot {date}, but the mirror {candidate} has no {{snapshot}} placeholder; give mirror urls (and --mirror) with one");
            }
        }
    }
    Ok(Mirror {
        url,
        security_url,
        suite: spec.suite.clone(),
        security_suite: spec.security_suite.clone(),
        components: spec.components.clone(),
        snapshot: spec.snapshot.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_deb822(text: &str, expected: &[(&str, &str)]) {
        let got: Vec<(String, String)> = parse_deb822_sources(text).into_iter().map(|s| (s.url, s.suite)).collect();
        let expected: Vec<(String, String)> = expected.iter().map(|(u, s)| (u.to_string(), s.to_string())).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn deb822_sources_expand_every_suite() {
        check_deb822(
            "Types: deb\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb-src\nURIs: http://mirror.example/src\nSuites: bookworm\n",
            &[("http://mirror.example/debian", "bookworm"), ("http://mirror.example/debian", "bookworm-updates")],
        );
    }

    #[test]
    fn one_line_sources_skip_options() {
        let got = parse_one_line_sources("deb [signed-by=/k.gpg arch=amd64] http://mirror.example/debian/ bookworm main contrib\n# deb http://x/ y\n");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].url, "http://mirror.example/debian");
        assert_eq!(got[0].components, vec!["main", "contrib"]);
    }

    #[test]
    fn cli_mirror_beats_profile_and_host() {
        let spec = MirrorSpec {
            url: Some("http://profile.example/debian".into()),
            security_url: None,
            suite: "bookworm".into(),
            security_suite: Some("bookworm-security".into()),
            components: vec!["main".into()],
            snapshot: None,
        };
        let host = vec![
            AptSource { url: "http://host.example/debian".into(), suite: "bookworm".into(), components: vec![] },
            AptSource { url: "http://host.example/security".into(), suite: "bookworm-security".into(), components: vec![] },
        ];
        let mirror = resolve(&spec, Some("http://cli.example/debian"), &host).unwrap();
        assert_eq!(mirror.url, "http://cli.example/debian");
        assert_eq!(mirror.security_url.as_deref(), Some("http://host.example/security"));
        let mirror = resolve(&spec, None, &host).unwrap();
        assert_eq!(mirror.url, "http://profile.example/debian");
    }
}
