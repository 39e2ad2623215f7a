//! ELF hardening audit (seed step 7, buffer overflows): reads every ELF file
//! of the sealed image and judges PIE, NX, RELRO, BIND_NOW, stack protector
//! and FORTIFY as `hardening-check` does; records the figures and the weak
//! executables, and fails the build below the profile's floors. It only
//! reads the root: it never writes into the image.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context as _, Result};
use object::elf;
use object::read::elf::{Dyn as _, FileHeader as _, ProgramHeader as _, Sym as _};
use object::Endianness;
use serde_json::json;

use crate::build::context::BuildContext;
use crate::profile::elf_audit::pattern_matches;
use crate::profile::{ElfAuditSpec, HardeningProperty};

/// What an ELF file is, as far as hardening goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ElfKind {
    /// ET_DYN with an interpreter or DF_1_PIE: a position-independent program.
    PieExecutable,
    /// ET_DYN with DF_1_PIE and no interpreter: relocates itself.
    StaticPieExecutable,
    /// ET_EXEC with an interpreter: loaded at a fixed address.
    Executable,
    /// ET_EXEC without an interpreter.
    StaticExecutable,
    /// ET_DYN that is not a program (glibc's libc.so.6 has an interpreter
    /// but also a soname and no DF_1_PIE: a library).
    SharedLibrary,
}

impl ElfKind {
    pub fn name(self) -> &'static str {
        match self {
            ElfKind::PieExecutable => "pie-executable",
            ElfKind::StaticPieExecutable => "static-pie-executable",
            ElfKind::Executable => "executable",
            ElfKind::StaticExecutable => "static-executable",
            ElfKind::SharedLibrary => "shared-library",
        }
    }

    pub fn is_executable(self) -> bool {
        self != ElfKind::SharedLibrary
    }
}

/// FORTIFY_SOURCE as `hardening-check` judges it from the imported symbols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fortify {
    /// Calls at least one `__*_chk` function.
    Fortified,
    /// Calls only plain functions that have a `__*_chk` variant.
    Unfortified,
    /// Calls none of them: nothing to judge.
    NothingToFortify,
}

/// The hardening facts of one x86-64 ELF file. `None`: the property cannot
/// be judged for this file (a static program has nothing to bind; a
/// stripped static program has no symbols to look at).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfFacts {
    pub kind: ElfKind,
    pub nx: bool,
    pub relro: bool,
    pub bind_now: Option<bool>,
    pub stack_protector: Option<bool>,
    pub fortify: Fortify,
}

impl ElfFacts {
    /// Whether the file has `property`; `None` when it does not apply.
    pub fn has(&self, property: HardeningProperty) -> Option<bool> {
        match property {
            HardeningProperty::Pie => {
                self.kind.is_executable().then_some(matches!(self.kind, ElfKind::PieExecutable | ElfKind::StaticPieExecutable))
            }
            HardeningProperty::Nx => Some(self.nx),
            HardeningProperty::Relro => Some(self.relro),
            HardeningProperty::BindNow => self.bind_now,
            HardeningProperty::StackProtector => self.stack_protector,
            HardeningProperty::Fortify => match self.fortify {
                Fortify::Fortified => Some(true),
                Fortify::Unfortified => Some(false),
                Fortify::NothingToFortify => None,
            },
        }
    }

    /// The properties that apply to the file and that it lacks.
    pub fn lacks(&self) -> Vec<HardeningProperty> {
        HardeningProperty::ALL.into_iter().filter(|&p| self.has(p) == Some(false)).collect()
    }
}

/// Why an ELF file is not audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Skipped {
    /// ET_REL: kernel modules and object files are linked, not run.
    Relocatable,
    /// Not 64-bit little-endian x86-64 (firmware, 32-bit helpers, ...).
    OtherArchitecture,
    /// ET_CORE and other types that are not loaded as programs.
    OtherType,
    /// Headers that do not parse.
    Malformed,
}

impl Skipped {
    pub fn name(self) -> &'static str {
        match self {
            Skipped::Relocatable => "relocatable (kernel modules, objects)",
            Skipped::OtherArchitecture => "not x86-64",
            Skipped::OtherType => "other ELF types",
            Skipped::Malformed => "malformed",
        }
    }
}

/// The plain functions that glibc also offers as `__<name>_chk` (memcpy,
/// printf, read, ...), read from the image's own libc.so.6 as
/// `hardening-check` reads the host's.
#[derive(Debug, Clone, Default)]
pub struct FortifiableFunctions {
    plain: BTreeSet<Vec<u8>>,
}

impl FortifiableFunctions {
    pub fn from_libc(data: &[u8]) -> Result<FortifiableFunctions> {
        let header = elf::FileHeader64::<Endianness>::parse(data).map_err(|e| anyhow::anyhow!("{e}"))?;
        let endian = header.endian().map_err(|e| anyhow::anyhow!("{e}"))?;
        let sections = header.sections(endian, data).map_err(|e| anyhow::anyhow!("{e}"))?;
        let symbols = sections.symbols(endian, data, elf::SHT_DYNSYM).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut plain = BTreeSet::new();
        for symbol in symbols.iter() {
            if symbol.is_undefined(endian) {
                continue;
            }
            let Ok(name) = symbol.name(endian, symbols.strings()) else { continue };
            if let Some(function) = checked_variant_of(name) {
                plain.insert(function.to_vec());
            }
        }
        Ok(FortifiableFunctions { plain })
    }

    pub fn len(&self) -> usize {
        self.plain.len()
    }

    pub fn is_empty(&self) -> bool {
        self.plain.is_empty()
    }
}

/// `memcpy` for `__memcpy_chk`; `None` for names of another shape.
fn checked_variant_of(name: &[u8]) -> Option<&[u8]> {
    let inner = name.strip_prefix(b"__")?.strip_suffix(b"_chk")?;
    (!inner.is_empty()).then_some(inner)
}

/// The first bytes of an ELF file.
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// Enough for the ELF64 file header.
const HEADER_BYTES: usize = 64;

/// Whether an ELF file is audited, from its first 64 bytes alone, so that
/// kernel modules and foreign files are never read whole.
pub fn classify_header(header_bytes: &[u8]) -> Result<(), Skipped> {
    if header_bytes.len() < HEADER_BYTES || &header_bytes[..4] != ELF_MAGIC {
        return Err(Skipped::Malformed);
    }
    // EI_CLASS 2: 64-bit; EI_DATA 1: little-endian.
    if header_bytes[4] != 2 || header_bytes[5] != 1 {
        return Err(Skipped::OtherArchitecture);
    }
    let e_type = u16::from_le_bytes([header_bytes[16], header_bytes[17]]);
    let e_machine = u16::from_le_bytes([header_bytes[18], header_bytes[19]]);
    if e_type == elf::ET_REL {
        return Err(Skipped::Relocatable);
    }
    if e_machine != elf::EM_X86_64 {
        return Err(Skipped::OtherArchitecture);
    }
    if e_type != elf::ET_EXEC && e_type != elf::ET_DYN {
        return Err(Skipped::OtherType);
    }
    Ok(())
}

/// The hardening facts of a whole x86-64 ELF file.
pub fn classify(data: &[u8], fortifiable: &FortifiableFunctions) -> Result<ElfFacts, Skipped> {
    classify_header(data)?;
    let header = elf::FileHeader64::<Endianness>::parse(data).map_err(|_| Skipped::Malformed)?;
    let endian = header.endian().map_err(|_| Skipped::Malformed)?;
    let segments = header.program_headers(endian, data).map_err(|_| Skipped::Malformed)?;
    let mut has_interpreter = false;
    let mut has_dynamic = false;
    let mut gnu_stack_executable = None;
    let mut relro = false;
    let (mut bind_now, mut pie_flag, mut soname, mut needs_libraries) = (false, false, false, false);
    for segment in segments {
        match segment.p_type(endian) {
            elf::PT_INTERP => has_interpreter = true,
            elf::PT_GNU_STACK => gnu_stack_executable = Some(segment.p_flags(endian) & elf::PF_X != 0),
            elf::PT_GNU_RELRO => relro = true,
            elf::PT_DYNAMIC => {
                has_dynamic = true;
                let entries = segment.dynamic(endian, data).map_err(|_| Skipped::Malformed)?.unwrap_or_default();
                for entry in entries {
                    let value = entry.val(endian);
                    match entry.tag(endian) {
                        elf::DT_BIND_NOW => bind_now = true,
                        elf::DT_FLAGS => bind_now |= value & u64::from(elf::DF_BIND_NOW) != 0,
                        elf::DT_FLAGS_1 => {
                            bind_now |= value & u64::from(elf::DF_1_NOW) != 0;
                            pie_flag |= value & u64::from(elf::DF_1_PIE) != 0;
                        }
                        elf::DT_SONAME => soname = true,
                        elf::DT_NEEDED => needs_libraries = true,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let kind = match header.e_type(endian) {
        elf::ET_EXEC if has_interpreter => ElfKind::Executable,
        elf::ET_EXEC => ElfKind::StaticExecutable,
        _ if pie_flag && has_interpreter => ElfKind::PieExecutable,
        _ if pie_flag => ElfKind::StaticPieExecutable,
        // Programs linked before binutils set DF_1_PIE: an interpreter and no soname.
        _ if has_interpreter && !soname => ElfKind::PieExecutable,
        _ => ElfKind::SharedLibrary,
    };
    // Without PT_GNU_STACK the loader may map an executable stack;
    // hardening-check counts that as no NX, and so does rampart.
    let nx = gnu_stack_executable == Some(false);
    // Only what ld.so loads binds lazily or not; a static(-pie) program
    // resolves everything itself before main.
    let dynamically_linked = has_dynamic && (has_interpreter || needs_libraries || kind == ElfKind::SharedLibrary);

    // Dynamically linked files import what they call through .dynsym, which
    // stripping keeps; static ones only have .symtab, when not stripped.
    let sections = header.sections(endian, data).map_err(|_| Skipped::Malformed)?;
    let symbol_table = if dynamically_linked { elf::SHT_DYNSYM } else { elf::SHT_SYMTAB };
    let symbols = sections.symbols(endian, data, symbol_table).map_err(|_| Skipped::Malformed)?;
    let (mut canary, mut fortified, mut unfortified) = (false, false, false);
    for symbol in symbols.iter() {
        let Ok(name) = symbol.name(endian, symbols.strings()) else { continue };
        if name == b"__stack_chk_fail" || name == b"__stack_chk_guard" {
            canary = true;
            continue;
        }
        // A library that defines memcpy does not call it; in .symtab a
        // static program's own calls are definitions too.
        if dynamically_linked && !symbol.is_undefined(endian) {
            continue;
        }
        if checked_variant_of(name).is_some_and(|plain| fortifiable.plain.contains(plain)) {
            fortified = true;
        } else if fortifiable.plain.contains(name) {
            unfortified = true;
        }
    }
    let judgeable = !symbols.is_empty();
    Ok(ElfFacts {
        kind,
        nx,
        relro,
        bind_now: dynamically_linked.then_some(bind_now),
        stack_protector: judgeable.then_some(canary),
        fortify: if fortified {
            Fortify::Fortified
        } else if unfortified {
            Fortify::Unfortified
        } else {
            Fortify::NothingToFortify
        },
    })
}

/// One audited file.
#[derive(Debug, Clone)]
pub struct AuditedFile {
    pub path: String,
    pub facts: ElfFacts,
}

/// Every ELF file of a tree, judged.
#[derive(Debug, Default)]
pub struct Audit {
    pub files: Vec<AuditedFile>,
    pub skipped: Vec<(String, Skipped)>,
    pub fortifiable_from: Option<String>,
    pub n_fortifiable: usize,
}

/// Where glibc lives in a Debian 12 x86-64 image (merged /usr first).
const LIBC_PATHS: &[&str] = &["/usr/lib/x86_64-linux-gnu/libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6"];

/// Reads every regular file's first bytes; files with the ELF magic are
/// judged. Symlinks are not followed (their targets are audited in place).
pub fn audit_tree(root: &Path) -> Result<Audit> {
    let mut audit = Audit::default();
    let mut fortifiable = FortifiableFunctions::default();
    for libc in LIBC_PATHS {
        let path = root.join(libc.trim_start_matches('/'));
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
            let data = std::fs::read(&path).with_context(|| format!("while reading {libc} in the image"))?;
            fortifiable = FortifiableFunctions::from_libc(&data).with_context(|| format!("while reading the symbols of {libc}"))?;
            audit.fortifiable_from = Some(libc.to_string());
            break;
        }
    }
    audit.n_fortifiable = fortifiable.len();
    for entry in crate::tree::walk(root)? {
        if entry.kind != crate::tree::Kind::File || entry.meta.len() < HEADER_BYTES as u64 {
            continue;
        }
        let mut file = std::fs::File::open(&entry.host_path).with_context(|| format!("while reading {} in the image", entry.image_path))?;
        let mut header = [0u8; HEADER_BYTES];
        file.read_exact(&mut header).with_context(|| format!("while reading {} in the image", entry.image_path))?;
        if &header[..4] != ELF_MAGIC {
            continue;
        }
        if let Err(skipped) = classify_header(&header) {
            audit.skipped.push((entry.image_path, skipped));
            continue;
        }
        let mut data = header.to_vec();
        file.read_to_end(&mut data).with_context(|| format!("while reading {} in the image", entry.image_path))?;
        match classify(&data, &fortifiable) {
            Ok(facts) => audit.files.push(AuditedFile { path: entry.image_path, facts }),
            Err(skipped) => audit.skipped.push((entry.image_path, skipped)),
        }
    }
    Ok(audit)
}

/// How many of the files a property applies to have it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tally {
    pub have: usize,
    pub of: usize,
}

impl Tally {
    pub fn count<'a>(files: impl Iterator<Item = &'a ElfFacts>, property: HardeningProperty) -> Tally {
        let mut tally = Tally::default();
        for verdict in files.filter_map(|f| f.has(property)) {
            tally.of += 1;
            tally.have += verdict as usize;
        }
        tally
    }

    /// The share in percent, to one decimal (100 when nothing applies).
    pub fn percent(self) -> f64 {
        if self.of == 0 {
            return 100.0;
        }
        (self.have as f64 * 1000.0 / self.of as f64).floor() / 10.0
    }

    pub fn meets(self, floor: f64) -> bool {
        self.of == 0 || self.have as f64 * 100.0 >= floor * self.of as f64
    }
}

/// Executables every Debian 12 image rampart builds carries, weak by design:
/// klibc-utils comes with initramfs-tools (the kernel's initramfs generator)
/// and is built without PIE and RELRO; its programs run inside the initramfs.
pub const BUILT_IN_ALLOWED_WEAK: &[(&str, &str)] = &[
    ("/usr/lib/klibc/bin/*", "klibc-utils (initramfs-tools): built without PIE and RELRO by design, run in the initramfs"),
    ("/usr/lib/klibc-*.so", "klibc-utils (initramfs-tools): built without PIE and RELRO by design, run in the initramfs"),
];

fn is_allowed_weak(path: &str, spec: &ElfAuditSpec) -> bool {
    BUILT_IN_ALLOWED_WEAK.iter().any(|(pattern, _)| pattern_matches(pattern, path))
        || spec.allow_weak.iter().any(|allowed| pattern_matches(&allowed.value, path))
        || spec.control_allowed_weak.iter().any(|(pattern, _)| pattern_matches(pattern, path))
}

/// The executables that count against the floors: all but the allowed ones.
fn counted_executables<'a>(audit: &'a Audit, spec: &'a ElfAuditSpec) -> impl Iterator<Item = &'a AuditedFile> {
    audit.files.iter().filter(|f| f.facts.kind.is_executable() && !is_allowed_weak(&f.path, spec))
}

/// How many files are named in a floor error before "and N more".
const NAMED_IN_ERROR: usize = 20;

/// Checks the allowed paths and the floors; an error names the profile
/// field, the measured figure and the files at fault.
pub fn check_floors(audit: &Audit, spec: &ElfAuditSpec, profile_path: &Path) -> Result<()> {
    for allowed in &spec.allow_weak {
        if !audit.files.iter().any(|f| f.facts.kind.is_executable() && pattern_matches(&allowed.value, &f.path)) {
            bail!("{}: elf-audit.allow-weak: {:?} matches no x86-64 ELF executable in the image", allowed.at, allowed.value);
        }
    }
    let mut failures = Vec::new();
    for floor in &spec.floors {
        let tally = Tally::count(counted_executables(audit, spec).map(|f| &f.facts), floor.property);
        if tally.meets(floor.percent) {
            continue;
        }
        let lacking: Vec<&str> =
            counted_executables(audit, spec).filter(|f| f.facts.has(floor.property) == Some(false)).map(|f| f.path.as_str()).collect();
        let mut named = lacking.iter().take(NAMED_IN_ERROR).copied().collect::<Vec<_>>().join(", ");
        if lacking.len() > NAMED_IN_ERROR {
            named.push_str(&format!(" and {} more", lacking.len() - NAMED_IN_ERROR));
        }
        let (location, whose) = match &floor.at {
            Some(at) => (at.clone(), "the floor"),
            None => (profile_path.display().to_string(), "rampart's default floor"),
        };
        failures.push(format!(
            "{location}: elf-audit.floor.{}: {}% of the image's executables have it ({} of {}), below {whose} of {}%; without it: {named}",
            floor.property.name(),
            tally.percent(),
            tally.have,
            tally.of,
            floor.percent,
        ));
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}

/// The report's figures: counts per kind and per property, the weak
/// executables with what each lacks. Sorted, so the same image gives the
/// same report.
pub fn report(audit: &Audit, spec: &ElfAuditSpec) -> serde_json::Value {
    let mut kinds = serde_json::Map::new();
    for kind in [ElfKind::PieExecutable, ElfKind::StaticPieExecutable, ElfKind::Executable, ElfKind::StaticExecutable, ElfKind::SharedLibrary] {
        kinds.insert(kind.name().into(), json!(audit.files.iter().filter(|f| f.facts.kind == kind).count()));
    }
    let mut skipped = serde_json::Map::new();
    for reason in [Skipped::Relocatable, Skipped::OtherArchitecture, Skipped::OtherType, Skipped::Malformed] {
        skipped.insert(reason.name().into(), json!(audit.skipped.iter().filter(|(_, r)| *r == reason).count()));
    }
    let figures = |files: &[&ElfFacts], properties: &[HardeningProperty]| {
        let mut map = serde_json::Map::new();
        for &property in properties {
            let tally = Tally::count(files.iter().copied(), property);
            map.insert(property.name().into(), json!({ "have": tally.have, "of": tally.of, "percent": tally.percent() }));
        }
        serde_json::Value::Object(map)
    };
    let counted: Vec<&ElfFacts> = counted_executables(audit, spec).map(|f| &f.facts).collect();
    let libraries: Vec<&ElfFacts> = audit.files.iter().filter(|f| !f.facts.kind.is_executable()).map(|f| &f.facts).collect();
    let floors: serde_json::Map<String, serde_json::Value> =
        spec.floors.iter().map(|f| (f.property.name().to_string(), json!(f.percent))).collect();
    let lacks = |f: &AuditedFile| json!(f.facts.lacks().iter().map(|p| p.name()).collect::<Vec<_>>().join(", "));
    let weak = |allowed: bool| -> serde_json::Map<String, serde_json::Value> {
        audit
            .files
            .iter()
            .filter(|f| f.facts.kind.is_executable() && !f.facts.lacks().is_empty() && is_allowed_weak(&f.path, spec) == allowed)
            .map(|f| (f.path.clone(), lacks(f)))
            .collect()
    };
    let mut allow_weak: serde_json::Map<String, serde_json::Value> =
        BUILT_IN_ALLOWED_WEAK.iter().map(|(pattern, why)| (pattern.to_string(), json!(format!("rampart: {why}")))).collect();
    for (pattern, why) in &spec.control_allowed_weak {
        allow_weak.insert(pattern.clone(), json!(format!("rampart: {why}")));
    }
    for allowed in &spec.allow_weak {
        allow_weak.insert(allowed.value.clone(), json!("profile: elf-audit.allow-weak"));
    }
    let libraries_with_executable_stack: Vec<&str> =
        audit.files.iter().filter(|f| !f.facts.kind.is_executable() && !f.facts.nx).map(|f| f.path.as_str()).collect();
    json!({
        "elf-files": audit.files.len(),
        "kinds": kinds,
        "skipped": skipped,
        "executables": figures(&counted, &HardeningProperty::ALL),
        "executables-counted": counted.len(),
        "shared-libraries": figures(&libraries, &HardeningProperty::ALL[1..]),
        "floors-percent-of-executables": floors,
        "allow-weak": allow_weak,
        "weak-executables": weak(false),
        "allowed-weak-executables": weak(true),
        "libraries-with-executable-stack": libraries_with_executable_stack,
        "fortify-functions": { "from": audit.fortifiable_from, "count": audit.n_fortifiable },
        "judged-as": "as hardening-check does: PIE (ET_DYN program), NX (PT_GNU_STACK not executable), RELRO (PT_GNU_RELRO), BIND_NOW (DT_BIND_NOW, DF_BIND_NOW, DF_1_NOW; dynamically linked files), stack protector (__stack_chk_fail; files with symbols), FORTIFY (__*_chk imports; files that call a fortifiable libc function)",
    })
}

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    let spec = ctx.profile.elf_audit.clone();
    if !spec.enable {
        ctx.record("elf-audit", false, json!({ "reason": "elf-audit.enable = false" }));
        return Ok(());
    }
    let timer = crate::ui::Timed::start("auditing the hardening of every ELF file");
    let audit = audit_tree(&ctx.root())?;
    timer.done();
    let settings = report(&audit, &spec);
    check_floors(&audit, &spec, &ctx.profile.path)?;
    ctx.record("elf-audit", true, settings);
    Ok(())
}



#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::Cmd;
    use crate::profile::elf_audit::Floor;
    use crate::profile::Sited;

    /// A program with a stack buffer and calls that FORTIFY can check.
    const PROGRAM: &str = "#include <stdio.h>\n#include <string.h>\nint main(int argc, char **argv) {\n  char buffer[64];\n  strcpy(buffer, argc > 1 ? argv[1] : \"none\");\n  printf(\"%s %d\\n\", buffer, argc);\n  return 0;\n}\n";
    /// The same as a library function.
    const LIBRARY: &str = "#include <stdio.h>\n#include <string.h>\nint greet(const char *name) {\n  char buffer[64];\n  strcpy(buffer, name);\n  return printf(\"%s\\n\", buffer);\n}\n";
    /// Nothing to protect: no buffer, no libc call.
    const TRIVIAL: &str = "int main(void) { return 0; }\n";

    /// Debian's dpkg-buildflags with hardening=+all, as a package is built.
    const HARDENED: &[&str] = &["-O2", "-D_FORTIFY_SOURCE=2", "-fstack-protector-strong", "-fPIE", "-pie", "-Wl,-z,relro", "-Wl,-z,now"];

    /// Compiles `source` with the host's cc; later flags override earlier ones.
    fn compile(dir: &Path, name: &str, source: &str, flags: &[&str]) -> Vec<u8> {
        let source_path = dir.join(format!("{name}.c"));
        std::fs::write(&source_path, source).unwrap();
        let output = dir.join(name);
        Cmd::new("cc").args(flags).arg("-o").arg(&output).arg(&source_path).run().expect("the host's cc compiles the fixture");
        std::fs::read(&output).unwrap()
    }

    fn host_fortifiable() -> FortifiableFunctions {
        let libc = LIBC_PATHS.iter().map(Path::new).find(|p| p.exists()).expect("the host has glibc");
        FortifiableFunctions::from_libc(&std::fs::read(libc).unwrap()).unwrap()
    }

    fn facts(kind: ElfKind, nx: bool, relro: bool, bind_now: Option<bool>, stack_protector: Option<bool>, fortify: Fortify) -> ElfFacts {
        ElfFacts { kind, nx, relro, bind_now, stack_protector, fortify }
    }

    #[test]
    fn fortifiable_functions_come_from_libc() {
        let fortifiable = host_fortifiable();
        for plain in ["memcpy", "printf", "strcpy", "read", "snprintf"] {
            assert!(fortifiable.plain.contains(plain.as_bytes()), "{plain}");
        }
        assert!(!fortifiable.plain.contains(b"stack".as_slice()), "__stack_chk_fail is no fortified function");
        assert!(fortifiable.len() > 50);
        assert_eq!(checked_variant_of(b"__memcpy_chk"), Some(b"memcpy".as_slice()));
        assert_eq!(checked_variant_of(b"__chk"), None);
        assert_eq!(checked_variant_of(b"memcpy"), None);
    }

    #[test]
    fn compiled_programs_are_judged_by_their_build_flags() {
        use ElfKind::*;
        use Fortify::*;
        let dir = tempfile::tempdir().unwrap();
        let fortifiable = host_fortifiable();
        let check = |name: &str, source: &str, extra: &[&str], expected: ElfFacts| {
            let mut flags = HARDENED.to_vec();
            flags.extend_from_slice(extra);
            let data = compile(dir.path(), name, source, &flags);
            assert_eq!(classify(&data, &fortifiable), Ok(expected), "{name}: cc {}", flags.join(" "));
        };
        check("hardened", PROGRAM, &[], facts(PieExecutable, true, true, Some(true), Some(true), Fortified));
        check("no-pie", PROGRAM, &["-fno-pie", "-no-pie"], facts(Executable, true, true, Some(true), Some(true), Fortified));
        check("execstack", PROGRAM, &["-Wl,-z,execstack"], facts(PieExecutable, false, true, Some(true), Some(true), Fortified));
        check("norelro", PROGRAM, &["-Wl,-z,norelro"], facts(PieExecutable, true, false, Some(true), Some(true), Fortified));
        check("lazy", PROGRAM, &["-Wl,-z,lazy"], facts(PieExecutable, true, true, Some(false), Some(true), Fortified));
        check("no-canary", PROGRAM, &["-fno-stack-protector"], facts(PieExecutable, true, true, Some(true), Some(false), Fortified));
        check("unfortified", PROGRAM, &["-U_FORTIFY_SOURCE"], facts(PieExecutable, true, true, Some(true), Some(true), Unfortified));
        // No buffer and no libc call: -fstack-protector-strong adds no
        // canary, and there is nothing to fortify (hardening-check's
        // known false negative for the canary).
        check("trivial", TRIVIAL, &[], facts(PieExecutable, true, true, Some(true), Some(false), NothingToFortify));
        check("library", LIBRARY, &["-shared", "-fPIC"], facts(SharedLibrary, true, true, Some(true), Some(true), Fortified));
        check("lazy-library", LIBRARY, &["-shared", "-fPIC", "-Wl,-z,lazy"], facts(SharedLibrary, true, true, Some(false), Some(true), Fortified));
        // Static programs bind nothing at run time; their symbols are in
        // .symtab, gone when stripped.
        check("static", PROGRAM, &["-no-pie", "-static"], facts(StaticExecutable, true, true, None, Some(true), Fortified));
        check("static-stripped", PROGRAM, &["-no-pie", "-static", "-s"], facts(StaticExecutable, true, true, None, None, NothingToFortify));
        check("static-pie", PROGRAM, &["-static-pie"], facts(StaticPieExecutable, true, true, None, Some(true), Fortified));
    }

    #[test]
    fn objects_other_machines_and_other_files_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let fortifiable = host_fortifiable();
        std::fs::write(dir.path().join("unit.c"), PROGRAM).unwrap();
        let object_path = dir.path().join("unit.o");
        Cmd::new("cc").args(["-O2", "-c", "-o"]).arg(&object_path).arg(dir.path().join("unit.c")).run().unwrap();
        assert_eq!(classify(&std::fs::read(&object_path).unwrap(), &fortifiable), Err(Skipped::Relocatable));
        let mut other_machine = compile(dir.path(), "program", PROGRAM, HARDENED);
        other_machine[18..20].copy_from_slice(&elf::EM_AARCH64.to_le_bytes());
        assert_eq!(classify(&other_machine, &fortifiable), Err(Skipped::OtherArchitecture));
        assert_eq!(classify(b"#!/bin/sh\nexit 0\n", &fortifiable), Err(Skipped::Malformed));
        let mut truncated = compile(dir.path(), "truncated", PROGRAM, HARDENED);
        truncated.truncate(200);
        assert_eq!(classify(&truncated, &fortifiable), Err(Skipped::Malformed));
    }

    #[test]
    fn a_tree_is_audited_by_magic_not_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        let root = dir.path().join("root");
        for sub in ["work", "root/usr/bin", "root/usr/lib/modules", "root/usr/lib/klibc/bin", "root/etc"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        std::fs::write(root.join("usr/bin/good"), compile(&work, "good", PROGRAM, HARDENED)).unwrap();
        let mut lazy = HARDENED.to_vec();
        lazy.push("-Wl,-z,lazy");
        std::fs::write(root.join("etc/lazy.conf"), compile(&work, "lazy", PROGRAM, &lazy)).unwrap();
        let mut no_pie = HARDENED.to_vec();
        no_pie.extend(["-fno-pie", "-no-pie"]);
        std::fs::write(root.join("usr/lib/klibc/bin/sh"), compile(&work, "klibc-sh", PROGRAM, &no_pie)).unwrap();
        Cmd::new("cc").args(["-c", "-o"]).arg(root.join("usr/lib/modules/driver.ko")).arg(work.join("good.c")).run().unwrap();
        std::fs::write(root.join("usr/bin/script"), "#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("good", root.join("usr/bin/link")).unwrap();
        let audit = audit_tree(&root).unwrap();
        let paths: Vec<(&str, ElfKind)> = audit.files.iter().map(|f| (f.path.as_str(), f.facts.kind)).collect();
        assert_eq!(paths, [("/etc/lazy.conf", ElfKind::PieExecutable), ("/usr/bin/good", ElfKind::PieExecutable), ("/usr/lib/klibc/bin/sh", ElfKind::Executable)]);
        assert_eq!(audit.skipped, [("/usr/lib/modules/driver.ko".to_string(), Skipped::Relocatable)]);
        assert_eq!(audit.fortifiable_from, None, "the tree has no libc");

        let spec = crate::profile::elf_audit::finish(Default::default());
        let report = report(&audit, &spec);
        assert_eq!(report["executables"]["bind-now"], json!({ "have": 1, "of": 2, "percent": 50.0 }));
        assert_eq!(report["executables"]["pie"], json!({ "have": 2, "of": 2, "percent": 100.0 }), "klibc is not counted");
        assert_eq!(report["weak-executables"], json!({ "/etc/lazy.conf": "bind-now" }));
        assert_eq!(report["allowed-weak-executables"], json!({ "/usr/lib/klibc/bin/sh": "pie" }));
        assert_eq!(report["skipped"]["relocatable (kernel modules, objects)"], json!(1));
        assert_eq!(report["kinds"]["pie-executable"], json!(2));
    }

    fn audited(files: &[(&str, ElfFacts)]) -> Audit {
        Audit { files: files.iter().map(|(path, facts)| AuditedFile { path: path.to_string(), facts: *facts }).collect(), ..Audit::default() }
    }

    fn spec(floors: &[(HardeningProperty, f64)], allow_weak: &[&str]) -> ElfAuditSpec {
        let mut spec = crate::profile::elf_audit::finish(Default::default());
        for (property, percent) in floors {
            let floor = spec.floors.iter_mut().find(|f| f.property == *property).unwrap();
            *floor = Floor { property: *property, percent: *percent, at: Some(format!("web.toml:9:{}", property.name().len())) };
        }
        spec.allow_weak = allow_weak.iter().map(|p| Sited { value: p.to_string(), at: "web.toml:12:15".into() }).collect();
        spec
    }

    #[test]
    fn floors_fail_naming_the_field_the_figure_and_the_files() {
        use ElfKind::*;
        use Fortify::{Fortified, NothingToFortify, Unfortified};
        use HardeningProperty::{BindNow, Pie};
        let strong = facts(PieExecutable, true, true, Some(true), Some(true), Fortified);
        let no_pie = facts(Executable, true, true, Some(true), Some(true), Fortified);
        let lazy = facts(PieExecutable, true, true, Some(false), Some(true), NothingToFortify);
        let library = facts(SharedLibrary, false, false, Some(false), Some(false), Unfortified);
        let audit = audited(&[("/usr/bin/a", strong), ("/usr/bin/b", no_pie), ("/usr/bin/c", lazy), ("/usr/lib/libx.so", library)]);
        let profile = Path::new("profiles/web.toml");
        let check = |spec: &ElfAuditSpec, expected: Result<(), &str>| {
            let result = check_floors(&audit, spec, profile).map_err(|e| e.to_string());
            assert_eq!(result.as_ref().map(|_| ()).map_err(String::as_str), expected);
        };
        let relaxed = [(Pie, 50.0), (BindNow, 50.0)];
        check(&spec(&relaxed, &[]), Ok(()));
        check(
            &spec(&[(Pie, 100.0), (BindNow, 50.0)], &[]),
            Err("web.toml:9:3: elf-audit.floor.pie: 66.6% of the image's executables have it (2 of 3), below the floor of 100%; without it: /usr/bin/b"),
        );
        check(
            &spec(&[(Pie, 66.7), (BindNow, 66.7)], &[]),
            Err("web.toml:9:3: elf-audit.floor.pie: 66.6% of the image's executables have it (2 of 3), below the floor of 66.7%; without it: /usr/bin/b\n\
                 web.toml:9:8: elf-audit.floor.bind-now: 66.6% of the image's executables have it (2 of 3), below the floor of 66.7%; without it: /usr/bin/c"),
        );
        // rampart's defaults are named as such, at the profile.
        check(
            &spec(&[], &[]),
            Err("profiles/web.toml: elf-audit.floor.pie: 66.6% of the image's executables have it (2 of 3), below rampart's default floor of 98%; without it: /usr/bin/b\n\
                 profiles/web.toml: elf-audit.floor.bind-now: 66.6% of the image's executables have it (2 of 3), below rampart's default floor of 70%; without it: /usr/bin/c"),
        );
        // An allowed executable is not counted; a pattern that matches
        // nothing is a stale entry.
        check(&spec(&[(Pie, 100.0), (BindNow, 100.0)], &["/usr/bin/b", "/usr/bin/[c]*"]), Err("web.toml:12:15: elf-audit.allow-weak: \"/usr/bin/[c]*\" matches no x86-64 ELF executable in the image"));
        check(&spec(&[(Pie, 100.0), (BindNow, 100.0)], &["/usr/bin/b", "/usr/bin/c*"]), Ok(()));
        check(&spec(&relaxed, &["/usr/lib/libx.so"]), Err("web.toml:12:15: elf-audit.allow-weak: \"/usr/lib/libx.so\" matches no x86-64 ELF executable in the image"));
    }

    #[test]
    fn many_files_below_a_floor_are_named_up_to_twenty() {
        let weak = facts(ElfKind::Executable, true, true, Some(true), Some(true), Fortify::Fortified);
        let names: Vec<String> = (0..25).map(|n| format!("/usr/bin/p{n:02}")).collect();
        let files: Vec<(&str, ElfFacts)> = names.iter().map(|n| (n.as_str(), weak)).collect();
        let error = check_floors(&audited(&files), &spec(&[], &[]), Path::new("web.toml")).unwrap_err().to_string();
        assert!(error.starts_with("web.toml: elf-audit.floor.pie: 0% of the image's executables have it (0 of 25), below rampart's default floor of 98%; without it: /usr/bin/p00, /usr/bin/p01,"), "{error}");
        assert!(error.ends_with("/usr/bin/p19 and 5 more"), "{error}");
    }

    #[test]
    fn tallies_round_down_and_an_empty_set_meets_any_floor() {
        let tally = |have, of| Tally { have, of };
        assert_eq!(tally(2, 3).percent(), 66.6);
        assert_eq!(tally(999, 1000).percent(), 99.9);
        assert!(!tally(999, 1000).meets(100.0));
        assert!(tally(98, 100).meets(98.0));
        assert!(tally(0, 0).meets(100.0));
        assert_eq!(tally(0, 0).percent(), 100.0);
    }
}
