//! Writes `<name>.report.html` in an artifact directory from what is there:
//! the build's report and manifest, SHA256SUMS, and the JUnit reports and
//! audit record whose image digest is this image's qcow2 (a stale result
//! of another image is never shown). Its own line in SHA256SUMS is
//! replaced. Run by the build, and again by `rampart test` and `rampart
//! audit` when they finish.

use std::path::Path;

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::fsutil::{sha256_file, write_atomic};
use crate::report_html::{self, AuditRun, CaseRun, Package, ScenarioRun};

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("while reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

pub fn write(dir: &Path, name: &str) -> Result<()> {
    let page_name = format!("{name}.report.html");
    let report = read_json(&dir.join(format!("{name}.report.json")))?;
    let manifest = read_json(&dir.join(format!("{name}.manifest.json")))?;
    let sums_path = dir.join("SHA256SUMS");
    let sums = std::fs::read_to_string(&sums_path).with_context(|| format!("while reading {}", sums_path.display()))?;
    let digests: Vec<(String, String)> = sums
        .lines()
        .filter_map(|l| l.split_once("  "))
        .map(|(digest, file)| (file.to_string(), digest.to_string()))
        .filter(|(file, _)| *file != page_name)
        .collect();
    let image_sha256 = digests.iter().find(|(file, _)| *file == format!("{name}.qcow2")).map(|(_, d)| d.clone()).unwrap_or_default();
    let packages: Vec<Package> = manifest["packages"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|p| Package {
            name: p["name"].as_str().unwrap_or_default().to_string(),
            version: p["version"].as_str().unwrap_or_default().to_string(),
            suite: p["suite"].as_str().unwrap_or_default().to_string(),
        })
        .collect();
    let scenarios = scenarios_of(dir, &image_sha256)?;
    let audit = audit_of(&dir.join(format!("{name}.audit.json")), &image_sha256);
    let page = report_html::render(&report_html::Inputs { report: &report, digests: &digests, packages: &packages, scenarios: &scenarios, audit: audit.as_ref() });
    let page_path = dir.join(&page_name);
    write_atomic(&page_path, page.as_bytes())?;

    let mut lines: Vec<String> = sums.lines().filter(|l| l.split_once("  ").is_none_or(|(_, file)| file != page_name)).map(str::to_string).collect();
    lines.push(format!("{}  {page_name}", sha256_file(&page_path)?));
    lines.sort_by(|a, b| a.split_once("  ").map(|x| x.1).cmp(&b.split_once("  ").map(|x| x.1)));
    write_atomic(&sums_path, format!("{}\n", lines.join("\n")).as_bytes())
}

/// The scenarios whose last JUnit report is of this image, by name.
fn scenarios_of(dir: &Path, image_sha256: &str) -> Result<Vec<ScenarioRun>> {
    let mut runs = Vec::new();
    if image_sha256.is_empty() {
        return Ok(runs);
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(file) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else { continue };
        let Some(scenario) = file.strip_suffix(".junit.xml") else { continue };
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        let Some(read) = crate::vmtest::junit::read(&text) else { continue };
        if read.properties.iter().any(|(k, v)| k == "image-sha256" && v == image_sha256) {
            let cases = read.cases.into_iter().map(|c| CaseRun { machine: c.machine, name: c.name, seconds: c.seconds, failure: c.failure.map(|f| f.0) }).collect();
            runs.push(ScenarioRun { name: scenario.to_string(), cases });
        }
    }
    runs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(runs)
}

/// The audit record, if it is of this image.
fn audit_of(path: &Path, image_sha256: &str) -> Option<AuditRun> {
    let record = read_json(path).ok()?;
    if image_sha256.is_empty() || record["image-sha256"] != image_sha256 {
        return None;
    }
    let findings = |key: &str| -> Vec<(String, String)> {
        record[key]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|f| (f["test"].as_str().unwrap_or_default().to_string(), f["text"].as_str().unwrap_or_default().to_string()))
            .collect()
    };
    Some(AuditRun {
        lynis_version: record["lynis-version"].as_str().unwrap_or_default().to_string(),
        hardening_index: u8::try_from(record["hardening-index"].as_u64()?).ok()?,
        min_index: record["min-index"].as_u64().and_then(|m| u8::try_from(m).ok()),
        tests_performed: record["tests-performed"].as_u64().unwrap_or_default() as usize,
        warnings: findings("warnings"),
        suggestions: findings("suggestions"),
    })
}
