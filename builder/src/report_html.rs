//! `<name>.report.html`: one self-contained page a security reviewer reads
//! (no script, no fetch, styles inline, charts as inline SVG). Pure: the
//! build's report, the lock, the artifacts' digests and, when they are of
//! this image, the last `rampart test` and `rampart audit` results go in;
//! the same inputs give the same bytes. Every text from a profile, a lock
//! or a report is escaped.

use std::fmt::Write;

use serde_json::Value;

/// One scenario's last run against this image.
pub struct ScenarioRun {
    pub name: String,
    pub cases: Vec<CaseRun>,
}

pub struct CaseRun {
    pub machine: String,
    pub name: String,
    pub seconds: f64,
    pub failure: Option<String>,
}

/// The last audit of this image.
pub struct AuditRun {
    pub lynis_version: String,
    pub hardening_index: u8,
    pub min_index: Option<u8>,
    pub tests_performed: usize,
    /// (test id, text)
    pub warnings: Vec<(String, String)>,
    pub suggestions: Vec<(String, String)>,
}

pub struct Package {
    pub name: String,
    pub version: String,
    pub suite: String,
}

pub struct Inputs<'a> {
    /// `<name>.report.json`, parsed.
    pub report: &'a Value,
    /// (artifact file name, sha256), the report itself not among them.
    pub digests: &'a [(String, String)],
    pub packages: &'a [Package],
    pub scenarios: &'a [ScenarioRun],
    pub audit: Option<&'a AuditRun>,
}

/// Text for HTML or XML (the JUnit reports use it too): the five markup
/// characters as references, control characters (which XML 1.0 cannot
/// carry even as references) as U+FFFD.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' && c != '\r' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:70em;color:#1b1f24;line-height:1.4}
h1{margin-bottom:0}h2{border-bottom:1px solid #ccd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccd;padding:.2em .5em;text-align:left;vertical-align:top}
th{background:#eef}code,.mono{font-family:ui-monospace,monospace;font-size:.9em}.mono{word-break:break-all}td code{overflow-wrap:anywhere}
.pass{color:#11632a;font-weight:bold}.fail{color:#a4161a;font-weight:bold}.off{color:#6b7280}
.figure{display:inline-block;margin:0 2em 1em 0;padding:.6em 1em;border:1px solid #ccd;border-radius:.4em}
.figure b{font-size:1.8em;display:block}details{margin:.2em 0}summary{cursor:pointer}
dl{margin:.2em 0}dt{font-weight:bold}dd{margin:0 0 .3em 1.5em}";

/// The page.
pub fn render(inputs: &Inputs) -> String {
    let report = inputs.report;
    let image = report["image"].as_str().unwrap_or("image");
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">\n\
         <title>rampart report: {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        escape(image)
    );
    let _ = writeln!(html, "<h1>rampart report: {}</h1>", escape(image));
    let _ = writeln!(
        html,
        "<p>Profile <code>{}</code>; packages as of <code>{}</code> (SOURCE_DATE_EPOCH {}); build inputs sha256 <code>{}</code>.</p>",
        escape(report["profile"].as_str().unwrap_or("?")),
        escape(&date_of(report["source-date-epoch"].as_i64().unwrap_or(0))),
        report["source-date-epoch"].as_i64().unwrap_or(0),
        escape(report["inputs-sha256"].as_str().unwrap_or("?"))
    );
    summary(&mut html, inputs);
    digests(&mut html, inputs.digests);
    tests(&mut html, inputs.scenarios);
    audit(&mut html, inputs.audit);
    elf_audit(&mut html, report);
    controls(&mut html, report);
    packages(&mut html, inputs.packages);
    html.push_str("</body>\n</html>\n");
    html
}

fn date_of(seconds: i64) -> String {
    let (year, month, day, hour, minute, second) = crate::secureboot::efivars::civil_time(seconds);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02} UTC")
}

fn summary(html: &mut String, inputs: &Inputs) {
    html.push_str("<h2 id=\"summary\">Summary</h2>\n<div>\n");
    let stages = inputs.report["stages"].as_array().map(Vec::as_slice).unwrap_or_default();
    let applied = stages.iter().filter(|s| s["applied"].as_bool() == Some(true)).count();
    let _ = writeln!(html, "<div class=\"figure\"><b>{applied} of {}</b>controls and stages applied</div>", stages.len());
    match inputs.audit {
        Some(audit) => {
            let _ = writeln!(
                html,
                "<div class=\"figure\" id=\"hardening-index\"><b>{}</b>Lynis {} hardening index ({} warnings, {} suggestions)</div>",
                audit.hardening_index,
                escape(&audit.lynis_version),
                audit.warnings.len(),
                audit.suggestions.len()
            );
        }
        None => html.push_str("<div class=\"figure\" id=\"hardening-index\"><b>&ndash;</b>not audited yet (<code>rampart audit</code>)</div>\n"),
    }
    let cases: Vec<&CaseRun> = inputs.scenarios.iter().flat_map(|s| &s.cases).collect();
    if cases.is_empty() {
        html.push_str("<div class=\"figure\"><b>&ndash;</b>not tested yet (<code>rampart test</code>)</div>\n");
    } else {
        let passed = cases.iter().filter(|c| c.failure.is_none()).count();
        let class = if passed == cases.len() { "pass" } else { "fail" };
        let _ = writeln!(html, "<div class=\"figure\"><b class=\"{class}\">{passed} of {}</b>checks passed in QEMU</div>", cases.len());
    }
    let security = inputs.packages.iter().filter(|p| p.suite.ends_with("-security")).count();
    let _ = writeln!(html, "<div class=\"figure\"><b>{}</b>packages, {security} from the security suite</div>", inputs.packages.len());
    html.push_str("</div>\n");
}

fn digests(html: &mut String, digests: &[(String, String)]) {
    html.push_str("<h2 id=\"artifacts\">Artifacts</h2>\n<table>\n<tr><th>file</th><th>sha256</th></tr>\n");
    for (file, sha256) in digests {
        let _ = writeln!(html, "<tr><td><code>{}</code></td><td class=\"mono\">{}</td></tr>", escape(file), escape(sha256));
    }
    html.push_str("</table>\n");
}

fn tests(html: &mut String, scenarios: &[ScenarioRun]) {
    html.push_str("<h2 id=\"tests\">Last rampart test</h2>\n");
    if scenarios.is_empty() {
        html.push_str("<p class=\"off\">No scenario has run against this image.</p>\n");
        return;
    }
    for scenario in scenarios {
        let failed = scenario.cases.iter().filter(|c| c.failure.is_some()).count();
        let seconds: f64 = scenario.cases.iter().map(|c| c.seconds).sum();
        let verdict = if failed == 0 { "<span class=\"pass\">passed</span>".to_string() } else { format!("<span class=\"fail\">{failed} failed</span>") };
        let _ = writeln!(
            html,
            "<details{}><summary>scenario <b>{}</b>: {} checks, {verdict}, {seconds:.0} s</summary>\n<table>\n<tr><th>machine</th><th>check</th><th>verdict</th><th>s</th></tr>",
            if failed > 0 { " open" } else { "" },
            escape(&scenario.name),
            scenario.cases.len()
        );
        for case in &scenario.cases {
            let verdict = match &case.failure {
                None => "<span class=\"pass\">pass</span>".to_string(),
                Some(message) => format!("<span class=\"fail\">FAIL</span> {}", escape(message)),
            };
            let _ = writeln!(html, "<tr><td>{}</td><td><code>{}</code></td><td>{verdict}</td><td>{:.1}</td></tr>", escape(&case.machine), escape(&case.name), case.seconds);
        }
        html.push_str("</table>\n</details>\n");
    }
}

fn audit(html: &mut String, audit: Option<&AuditRun>) {
    html.push_str("<h2 id=\"audit\">Last rampart audit (Lynis)</h2>\n");
    let Some(audit) = audit else {
        html.push_str("<p class=\"off\">This image has not been audited.</p>\n");
        return;
    };
    let floor = audit.min_index.map(|m| format!(" (minimum {m})")).unwrap_or_default();
    let _ = writeln!(
        html,
        "<p>Lynis {}: hardening index <b>{}</b>{floor}, {} tests, {} warnings, {} suggestions.</p>",
        escape(&audit.lynis_version),
        audit.hardening_index,
        audit.tests_performed,
        audit.warnings.len(),
        audit.suggestions.len()
    );
    // Findings by group (the test id's prefix: AUTH, BOOT, DEB, ...).
    let mut groups: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for (test, _) in audit.warnings.iter().chain(&audit.suggestions) {
        *groups.entry(test.split('-').next().unwrap_or(test).to_string()).or_default() += 1;
    }
    if !groups.is_empty() {
        let bars: Vec<(String, f64, String)> = groups.iter().map(|(group, n)| (group.clone(), *n as f64, n.to_string())).collect();
        let most = bars.iter().map(|b| b.1).fold(1.0, f64::max);
        html.push_str(&bar_chart("Open findings by group", &bars, most, None));
    }
    html.push_str("<table>\n<tr><th>kind</th><th>test</th><th>finding</th></tr>\n");
    for (kind, findings) in [("warning", &audit.warnings), ("suggestion", &audit.suggestions)] {
        for (test, text) in findings {
            let _ = writeln!(html, "<tr><td>{kind}</td><td><code>{}</code></td><td>{}</td></tr>", escape(test), escape(text));
        }
    }
    html.push_str("</table>\n");
}

/// A horizontal bar chart: (label, value, shown text); `floor`, if given,
/// is drawn as a mark on each bar's scale of 0..`most`.
fn bar_chart(title: &str, bars: &[(String, f64, String)], most: f64, floors: Option<&[f64]>) -> String {
    let row = 22;
    let height = 30 + row * bars.len();
    let mut svg = format!(
        "<figure><svg width=\"560\" height=\"{height}\" role=\"img\" aria-label=\"{}\">\n<text x=\"0\" y=\"16\" font-size=\"14\" font-weight=\"bold\">{}</text>\n",
        escape(title),
        escape(title)
    );
    for (i, (label, value, shown)) in bars.iter().enumerate() {
        let y = 26 + i * row;
        let width = (value / most * 360.0).clamp(0.0, 360.0);
        let _ = writeln!(
            svg,
            "<text x=\"0\" y=\"{}\" font-size=\"12\">{}</text><rect x=\"130\" y=\"{y}\" width=\"{width:.1}\" height=\"16\" fill=\"#4062bb\"/><text x=\"{:.1}\" y=\"{}\" font-size=\"12\">{}</text>",
            y + 12,
            escape(label),
            135.0 + width,
            y + 12,
            escape(shown)
        );
        if let Some(floor) = floors.and_then(|f| f.get(i)) {
            let x = 130.0 + floor / most * 360.0;
            let _ = writeln!(svg, "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{}\" y2=\"{}\" stroke=\"#a4161a\" stroke-width=\"2\"/>", y - 2, y + 18);
        }
    }
    svg.push_str("</svg></figure>\n");
    svg
}

fn stage<'a>(report: &'a Value, name: &str) -> Option<&'a Value> {
    report["stages"].as_array()?.iter().find(|s| s["stage"] == name)
}

fn elf_audit(html: &mut String, report: &Value) {
    html.push_str("<h2 id=\"elf-audit\">ELF hardening of the image's programs</h2>\n");
    let Some(settings) = stage(report, "elf-audit").filter(|s| s["applied"] == true).map(|s| &s["settings"]) else {
        html.push_str("<p class=\"off\">The ELF audit is off in this profile.</p>\n");
        return;
    };
    let Some(properties) = settings["executables"].as_object() else {
        return;
    };
    let floors = settings["floors-percent-of-executables"].as_object();
    let mut bars = Vec::new();
    let mut marks = Vec::new();
    for (property, figures) in properties {
        let percent = figures["percent"].as_f64().unwrap_or(0.0);
        bars.push((property.clone(), percent, format!("{percent:.1} % ({} of {})", figures["have"], figures["of"])));
        marks.push(floors.and_then(|f| f.get(property)).and_then(Value::as_f64).unwrap_or(0.0));
    }
    let _ = writeln!(html, "<p>{} ELF files; executables with each property (the red mark: the profile's floor).</p>", settings["elf-files"]);
    html.push_str(&bar_chart("Executables with each hardening property", &bars, 100.0, Some(&marks)));
    if let Some(weak) = settings["weak-executables"].as_object().filter(|w| !w.is_empty()) {
        let _ = writeln!(html, "<details open><summary>{} executables lack a property</summary>\n<table>\n<tr><th>file</th><th>lacks</th></tr>", weak.len());
        for (file, lacks) in weak {
            let _ = writeln!(html, "<tr><td><code>{}</code></td><td>{}</td></tr>", escape(file), escape(lacks.as_str().unwrap_or_default()));
        }
        html.push_str("</table>\n</details>\n");
    }
}

fn controls(html: &mut String, report: &Value) {
    html.push_str("<h2 id=\"controls\">Controls and stages</h2>\n<p>Each stage of the build, in order, with its settings and what it did (from <code>report.json</code>).</p>\n");
    for stage in report["stages"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let name = stage["stage"].as_str().unwrap_or("?");
        let applied = stage["applied"].as_bool() == Some(true);
        let _ = writeln!(
            html,
            "<details id=\"stage-{0}\"><summary><b>{0}</b> {1}</summary>",
            escape(name),
            if applied { "<span class=\"pass\">applied</span>" } else { "<span class=\"off\">off</span>" }
        );
        value(html, &stage["settings"], 0);
        html.push_str("</details>\n");
    }
}

/// A JSON value as nested definition lists; long lists folded.
fn value(html: &mut String, value: &Value, depth: usize) {
    match value {
        Value::Object(map) if depth < 6 => {
            html.push_str("<dl>\n");
            for (key, inner) in map {
                let _ = write!(html, "<dt>{}</dt><dd>", escape(key));
                self::value(html, inner, depth + 1);
                html.push_str("</dd>\n");
            }
            html.push_str("</dl>\n");
        }
        Value::Array(items) if depth < 6 => {
            if items.is_empty() {
                html.push_str("<span class=\"off\">none</span>");
                return;
            }
            let folded = items.len() > 12;
            if folded {
                let _ = write!(html, "<details><summary>{} entries</summary>", items.len());
            }
            html.push_str("<ul>");
            for item in items {
                html.push_str("<li>");
                self::value(html, item, depth + 1);
                html.push_str("</li>");
            }
            html.push_str("</ul>");
            if folded {
                html.push_str("</details>");
            }
        }
        Value::String(text) => {
            let _ = write!(html, "{}", escape(text));
        }
        other => {
            let _ = write!(html, "<code>{}</code>", escape(&other.to_string()));
        }
    }
}

fn packages(html: &mut String, packages: &[Package]) {
    let _ = writeln!(
        html,
        "<h2 id=\"packages\">Packages</h2>\n<details><summary>{} packages from the lock (security-suite versions marked)</summary>\n<table>\n<tr><th>package</th><th>version</th><th>suite</th></tr>",
        packages.len()
    );
    for package in packages {
        let mark = if package.suite.ends_with("-security") { " <b>security</b>" } else { "" };
        let _ = writeln!(html, "<tr><td>{}</td><td><code>{}</code></td><td>{}{mark}</td></tr>", escape(&package.name), escape(&package.version), escape(&package.suite));
    }
    html.push_str("</table>\n</details>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Value {
        serde_json::json!({
            "format": "rampart-report-v1", "image": "web<script>", "profile": "web.toml", "source-date-epoch": 1_796_356_468, "inputs-sha256": "ab",
            "stages": [
                { "stage": "firewall", "applied": true, "settings": { "open": [{ "port": 22 }], "note": "<b>not bold</b>" } },
                { "stage": "backups", "applied": false, "settings": { "reason": "off" } },
                { "stage": "elf-audit", "applied": true, "settings": {
                    "elf-files": 10, "floors-percent-of-executables": { "pie": 98.0 },
                    "executables": { "pie": { "have": 9, "of": 10, "percent": 90.0 } },
                    "weak-executables": { "/usr/bin/old": "pie" } } }
            ]
        })
    }

    #[test]
    fn the_page_is_self_contained_escaped_and_the_same_for_the_same_inputs() {
        let report = report();
        let packages = vec![Package { name: "openssl".into(), version: "3.0.17-1~deb12u3".into(), suite: "bookworm-security".into() }];
        let audit = AuditRun { lynis_version: "3.0.8".into(), hardening_index: 91, min_index: Some(90), tests_performed: 253, warnings: vec![], suggestions: vec![("DEB-0810".into(), "Install apt-listbugs".into())] };
        let scenarios = vec![ScenarioRun { name: "web".into(), cases: vec![CaseRun { machine: "first".into(), name: "boots".into(), seconds: 30.0, failure: None }] }];
        let digests = vec![("web.qcow2".to_string(), "00ff".to_string())];
        let inputs = Inputs { report: &report, digests: &digests, packages: &packages, scenarios: &scenarios, audit: Some(&audit) };
        let page = render(&inputs);
        assert_eq!(page, render(&inputs));
        assert!(!page.contains("<script") && !page.contains("<b>not bold</b>") && page.contains("web&lt;script&gt;"), "{page}");
        assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("src=\""), "nothing is fetched");
        assert!(page.contains("id=\"hardening-index\"><b>91</b>"));
        assert!(page.contains("1 of 1</b>checks passed") && page.contains("<b>1</b>packages, 1 from the security suite"));
        assert!(page.contains("/usr/bin/old") && page.contains("90.0 % (9 of 10)") && page.contains("<line "), "the ELF chart and its floor");
        assert!(page.contains(">DEB</text>"), "findings by group");
    }

    #[test]
    fn without_test_or_audit_the_page_says_so() {
        let report = report();
        let page = render(&Inputs { report: &report, digests: &[], packages: &[], scenarios: &[], audit: None });
        assert!(page.contains("not audited yet") && page.contains("not tested yet") && page.contains("This image has not been audited."));
    }
}
