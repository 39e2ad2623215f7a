//! `[elf-audit]`: whether the build audits the hardening of every ELF file in
//! the image, and the floors below which it fails. Validated where written
//! (file:line:col and the field), merged field by field. Pure: no IO.

use super::controls::Sited;
use super::raw;
use crate::located::{LocatedError, SourceText};

/// A hardening property of a compiled program, as `hardening-check` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum HardeningProperty {
    Pie,
    Nx,
    Relro,
    BindNow,
    StackProtector,
    Fortify,
}

impl HardeningProperty {
    pub const ALL: [HardeningProperty; 6] = [
        HardeningProperty::Pie,
        HardeningProperty::Nx,
        HardeningProperty::Relro,
        HardeningProperty::BindNow,
        HardeningProperty::StackProtector,
        HardeningProperty::Fortify,
    ];

    /// The name in profiles and in the report.
    pub fn name(self) -> &'static str {
        match self {
            HardeningProperty::Pie => "pie",
            HardeningProperty::Nx => "nx",
            HardeningProperty::Relro => "relro",
            HardeningProperty::BindNow => "bind-now",
            HardeningProperty::StackProtector => "stack-protector",
            HardeningProperty::Fortify => "fortify",
        }
    }

    /// rampart's floor when the profile sets none: what Debian 12's baseline
    /// image reaches, less a margin for the programs a profile adds, yet high
    /// enough that a badly built package set or a non-hardened overlay binary
    /// falls below it. Measured figures are in the README.
    pub fn default_floor(self) -> f64 {
        match self {
            HardeningProperty::Pie => 98.0,
            HardeningProperty::Nx => 100.0,
            HardeningProperty::Relro => 98.0,
            HardeningProperty::BindNow => 70.0,
            HardeningProperty::StackProtector => 90.0,
            HardeningProperty::Fortify => 85.0,
        }
    }
}

/// The least share of the image's executables (percent) that must have a
/// property, and where the profile set it (`None`: rampart's default).
#[derive(Debug, Clone, PartialEq)]
pub struct Floor {
    pub property: HardeningProperty,
    pub percent: f64,
    pub at: Option<String>,
}

/// `[elf-audit]`, merged and with its defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ElfAuditSpec {
    pub enable: bool,
    /// One per property, in `HardeningProperty::ALL` order.
    pub floors: Vec<Floor>,
    /// Executables that may lack properties (`*` within a name): listed in
    /// the report, not counted against the floors. Each pattern must match
    /// an executable in the image.
    pub allow_weak: Vec<Sited<String>>,
    /// Executables a control brings that are weak by Debian's build, with
    /// the reason (e.g. [backups]' python3.11): listed in the report, not
    /// counted against the floors.
    pub control_allowed_weak: Vec<(String, String)>,
}

/// One file's `[elf-audit]`, validated, not yet merged.
#[derive(Debug, Default)]
pub struct ElfAuditLayer {
    enable: Option<bool>,
    floors: Vec<(HardeningProperty, Sited<f64>)>,
    allow_weak: Vec<Sited<String>>,
}

fn parse_percent(value: &f64) -> Result<f64, String> {
    if value.is_finite() && (0.0..=100.0).contains(value) {
        Ok(*value)
    } else {
        Err(format!("{value} is not a percentage (0 to 100)"))
    }
}

fn parse_path_pattern(pattern: &String) -> Result<String, String> {
    let parts: Vec<&str> = pattern.split('/').skip(1).collect();
    let ok = pattern.starts_with('/') && parts.iter().all(|part| !part.is_empty() && *part != "." && *part != "..");
    if ok {
        Ok(pattern.clone())
    } else {
        Err(format!("{pattern:?} is not an absolute path of a file in the image (e.g. \"/usr/bin/tool\"; * matches within one name)"))
    }
}

/// Whether an image path matches a pattern where `*` stands for any run of
/// characters within one path component.
pub fn pattern_matches(pattern: &str, path: &str) -> bool {
    fn matches(pattern: &[u8], path: &[u8]) -> bool {
        match pattern.split_first() {
            None => path.is_empty(),
            Some((b'*', rest)) => {
                let run = path.iter().position(|&c| c == b'/').unwrap_or(path.len());
                (0..=run).any(|taken| matches(rest, &path[taken..]))
            }
            Some((&c, rest)) => path.first() == Some(&c) && matches(rest, &path[1..]),
        }
    }
    matches(pattern.as_bytes(), path.as_bytes())
}

pub fn validate(source: &SourceText, elf_audit: Option<raw::RawElfAudit>) -> Result<ElfAuditLayer, LocatedError> {
    let mut layer = ElfAuditLayer::default();
    let Some(elf_audit) = elf_audit else {
        return Ok(layer);
    };
    layer.enable = elf_audit.enable;
    if let Some(floor) = &elf_audit.floor {
        let given = [
            (HardeningProperty::Pie, &floor.pie),
            (HardeningProperty::Nx, &floor.nx),
            (HardeningProperty::Relro, &floor.relro),
            (HardeningProperty::BindNow, &floor.bind_now),
            (HardeningProperty::StackProtector, &floor.stack_protector),
            (HardeningProperty::Fortify, &floor.fortify),
        ];
        for (property, value) in given {
            if let Some(value) = value {
                let percent = source.check(value, &format!("elf-audit.floor.{}", property.name()), parse_percent)?;
                layer.floors.push((property, Sited { value: percent, at: source.location(value.span().start) }));
            }
        }
    }
    for path in elf_audit.allow_weak.iter().flatten() {
        let parsed = source.check(path, "elf-audit.allow-weak", parse_path_pattern)?;
        layer.allow_weak.push(Sited { value: parsed, at: source.location(path.span().start) });
    }
    Ok(layer)
}

/// The child's `enable` and each floor it sets win; allowed paths add up.
pub fn merge(base: &mut ElfAuditLayer, child: ElfAuditLayer) {
    if child.enable.is_some() {
        base.enable = child.enable;
    }
    for (property, floor) in child.floors {
        base.floors.retain(|(p, _)| *p != property);
        base.floors.push((property, floor));
    }
    for path in child.allow_weak {
        base.allow_weak.retain(|p| p.value != path.value);
        base.allow_weak.push(path);
    }
}

pub fn finish(layer: ElfAuditLayer) -> ElfAuditSpec {
    let floors = HardeningProperty::ALL
        .iter()
        .map(|&property| match layer.floors.iter().find(|(p, _)| *p == property) {
            Some((_, set)) => Floor { property, percent: set.value, at: Some(set.at.clone()) },
            None => Floor { property, percent: property.default_floor(), at: None },
        })
        .collect();
    let mut allow_weak = layer.allow_weak;
    allow_weak.sort_by(|a, b| a.value.cmp(&b.value));
    ElfAuditSpec { enable: layer.enable.unwrap_or(true), floors, allow_weak, control_allowed_weak: Vec::new() }
}

impl ElfAuditSpec {
    pub fn floor(&self, property: HardeningProperty) -> &Floor {
        self.floors.iter().find(|f| f.property == property).expect("one floor per property")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_within_one_path_component() {
        let check = |pattern: &str, path: &str, expected: bool| assert_eq!(pattern_matches(pattern, path), expected, "{pattern} {path}");
        check("/usr/bin/tool", "/usr/bin/tool", true);
        check("/usr/bin/tool", "/usr/bin/tool2", false);
        check("/usr/lib/klibc/bin/*", "/usr/lib/klibc/bin/sh", true);
        check("/usr/lib/klibc/bin/*", "/usr/lib/klibc/bin/sub/sh", false);
        check("/usr/lib/klibc-*.so", "/usr/lib/klibc-XX6cASCB7KZyJWpIJW79y94XHBY.so", true);
        check("/usr/lib/klibc-*.so", "/usr/lib/klibc-a/b.so", false);
        check("/opt/*/bin/*", "/opt/app/bin/run", true);
        check("/usr/bin/*", "/usr/bin/", true);
    }
}
