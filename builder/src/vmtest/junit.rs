//! JUnit XML for CI systems: one test case per check and machine.

use std::fmt::Write;

use crate::report_html::escape;

#[derive(Debug, Clone)]
pub struct CaseResult {
    pub name: String,
    pub machine: String,
    pub seconds: f64,
    /// `None` if it passed; otherwise the failure message and details.
    pub failure: Option<(String, String)>,
}

/// `properties` say what was tested and how (the image's digest, the
/// accelerator), so a CI system's record ties the verdict to the bytes.
pub fn render(suite: &str, properties: &[(&str, String)], cases: &[CaseResult]) -> String {
    let failures = cases.iter().filter(|c| c.failure.is_some()).count();
    let total: f64 = cases.iter().map(|c| c.seconds).sum();
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(xml, "<testsuites name=\"rampart\" tests=\"{}\" failures=\"{failures}\" time=\"{total:.3}\">", cases.len());
    let _ = writeln!(
        xml,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" time=\"{total:.3}\">",
        escape(suite),
        cases.len()
    );
    if !properties.is_empty() {
        xml.push_str("    <properties>\n");
        for (name, value) in properties {
            let _ = writeln!(xml, "      <property name=\"{}\" value=\"{}\"/>", escape(name), escape(value));
        }
        xml.push_str("    </properties>\n");
    }
    for case in cases {
        let _ = write!(
            xml,
            "    <testcase classname=\"{}.{}\" name=\"{}\" time=\"{:.3}\"",
            escape(suite),
            escape(&case.machine),
            escape(&case.name),
            case.seconds
        );
        match &case.failure {
            None => xml.push_str("/>\n"),
            Some((message, details)) => {
                let _ = writeln!(xml, ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>", escape(message), escape(details));
            }
        }
    }
    xml.push_str("  </testsuite>\n</testsuites>\n");
    xml
}

/// A report `render` wrote, read back: its properties and cases.
pub struct Read {
    pub properties: Vec<(String, String)>,
    pub cases: Vec<CaseResult>,
}

/// Reads a report of `render`'s (no other JUnit dialect): `None` if it is
/// not one. Attribute values are unescaped; the case's machine is its
/// classname after the suite's name.
pub fn read(xml: &str) -> Option<Read> {
    let attribute = |element: &str, name: &str| -> Option<String> {
        let start = element.find(&format!(" {name}=\""))? + name.len() + 3;
        let end = start + element[start..].find('"')?;
        Some(unescape(&element[start..end]))
    };
    if !xml.contains("<testsuites name=\"rampart\"") {
        return None;
    }
    let properties = xml
        .split("<property ")
        .skip(1)
        .filter_map(|p| {
            let head = format!(" {}", &p[..p.find('>')?]);
            Some((attribute(&head, "name")?, attribute(&head, "value")?))
        })
        .collect();
    let mut cases = Vec::new();
    for element in xml.split("<testcase ").skip(1) {
        let element = format!(" {element}");
        let head = &element[..element.find('>')?];
        let classname = attribute(head, "classname")?;
        let failure = if head.ends_with('/') { None } else { element.split("<failure ").nth(1).map(|f| (attribute(&format!(" {f}"), "message").unwrap_or_default(), String::new())) };
        cases.push(CaseResult {
            name: attribute(head, "name")?,
            machine: classname.split_once('.').map(|(_, m)| m.to_string()).unwrap_or(classname),
            seconds: attribute(head, "time")?.parse().ok()?,
            failure,
        });
    }
    Some(Read { properties, cases })
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&apos;", "'").replace("&#39;", "'").replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_back_as_written() {
        let cases = vec![
            CaseResult { name: "it's ok".into(), machine: "m".into(), seconds: 1.25, failure: None },
            CaseResult { name: "bad".into(), machine: "second".into(), seconds: 0.5, failure: Some(("exit <1> & \"x\"".into(), "details".into())) },
        ];
        let xml = render("suite", &[("image-sha256", "ab".to_string())], &cases);
        let back = super::read(&xml).unwrap();
        assert_eq!(back.properties, vec![("image-sha256".to_string(), "ab".to_string())]);
        assert_eq!(back.cases.len(), 2);
        assert_eq!((back.cases[0].name.as_str(), back.cases[0].machine.as_str(), back.cases[0].seconds, back.cases[0].failure.is_none()), ("it's ok", "m", 1.25, true));
        assert_eq!(back.cases[1].failure.as_ref().unwrap().0, "exit <1> & \"x\"");
        assert!(super::read("<testsuites name=\"other\">").is_none());
    }

    #[test]
    fn failures_are_escaped_and_counted() {
        let cases = vec![
            CaseResult { name: "ok".into(), machine: "m".into(), seconds: 1.0, failure: None },
            CaseResult { name: "bad".into(), machine: "m".into(), seconds: 0.5, failure: Some(("exit <1>".into(), "a & b\u{1b}[0m".into())) },
        ];
        let xml = render("baseline", &[("image-sha256", "ab\"cd".into())], &cases);
        assert!(xml.contains("tests=\"2\" failures=\"1\""));
        assert!(xml.contains("<properties>\n      <property name=\"image-sha256\" value=\"ab&quot;cd\"/>\n    </properties>"));
        assert!(xml.contains("<testcase classname=\"baseline.m\" name=\"ok\" time=\"1.000\"/>"));
        assert!(xml.contains("<failure message=\"exit &lt;1&gt;\">a &amp; b\u{fffd}[0m</failure>"));
    }
}
