//! Lynis's report (`lynis-report.dat`, `key=value` lines, `key[]=` for
//! lists, list fields separated by `|`), read into what `rampart audit`
//! records. Pure: no IO.

use anyhow::{bail, Context, Result};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Finding {
    /// The Lynis test id, e.g. `ACCT-9628`.
    pub test: String,
    pub text: String,
    /// Lynis's detail field, when it gives one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Report {
    pub lynis_version: String,
    pub hardening_index: u8,
    /// How many tests Lynis ran.
    pub tests_performed: usize,
    pub warnings: Vec<Finding>,
    pub suggestions: Vec<Finding>,
}

pub fn parse(text: &str) -> Result<Report> {
    let mut version = None;
    let mut index = None;
    let mut tests_done = None;
    let mut executed = 0;
    let mut warnings = Vec::new();
    let mut suggestions = Vec::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else { continue };
        match key {
            "lynis_version" => version = Some(value.to_string()),
            "hardening_index" => index = Some(value.trim().parse::<u8>().ok().filter(|i| *i <= 100).with_context(|| format!("hardening_index={value} is no index"))?),
            "lynis_tests_done" => tests_done = value.trim().parse::<usize>().ok(),
            "tests_executed" => executed = value.split('|').filter(|t| !t.is_empty()).count(),
            "warning[]" => warnings.push(finding(value)?),
            "suggestion[]" => suggestions.push(finding(value)?),
            _ => {}
        }
    }
    let (Some(lynis_version), Some(hardening_index)) = (version, index) else {
        bail!("the report has no lynis_version or no hardening_index: Lynis did not finish its audit");
    };
    Ok(Report { lynis_version, hardening_index, tests_performed: tests_done.unwrap_or(executed), warnings, suggestions })
}

/// `TEST-ID|text|details|solution|`: "-" means none.
fn finding(value: &str) -> Result<Finding> {
    let mut fields = value.split('|');
    let test = fields.next().unwrap_or("").trim().to_string();
    if test.is_empty() {
        bail!("a finding without a test id: {value}");
    }
    let text = fields.next().unwrap_or("").trim().to_string();
    let details = fields.next().map(str::trim).filter(|d| !d.is_empty() && *d != "-").map(str::to_string);
    Ok(Finding { test, text, details })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_index_and_every_finding() {
        let report = parse(
            "# Lynis Report\nlynis_version=3.0.8\nhardening_index=75\nlynis_tests_done=254\n\
             warning[]=PKGS-7388|Ensure security repository is configured|-|-|\n\
             suggestion[]=ACCT-9628|Enable auditd to collect audit information|-|-|\n\
             suggestion[]=KRNL-6000|One or more sysctl values differ from the scan profile|sysctl key: fs.protected_fifos|-|\n",
        )
        .unwrap();
        assert_eq!((report.lynis_version.as_str(), report.hardening_index, report.tests_performed), ("3.0.8", 75, 254));
        assert_eq!(report.warnings, vec![Finding { test: "PKGS-7388".into(), text: "Ensure security repository is configured".into(), details: None }]);
        assert_eq!(report.suggestions.len(), 2);
        assert_eq!(report.suggestions[1].details.as_deref(), Some("sysctl key: fs.protected_fifos"));
    }

    #[test]
    fn an_unfinished_report_is_an_error() {
        assert!(parse("lynis_version=3.0.8\n").unwrap_err().to_string().contains("did not finish"));
        assert!(parse("lynis_version=3.0.8\nhardening_index=250\n").is_err());
        assert!(parse("lynis_version=3.0.8\nhardening_index=70\nwarning[]=|no id|\n").is_err());
    }
}
