//! Toolchain control (seed step 7, "Buffer Overflows"): anything compiled on
//! the image gets today's StackGuard and Libsafe by default. gcc reads a
//! `specs` file from its library directory that adds the hardening flags to
//! every C, C++ and `cc`/`c99` invocation, and dpkg package builds get
//! `hardening=+all`. Applies only to an image with a C compiler; checked with
//! the image's own gcc, readelf and objdump on a probe. Never edits a file a
//! package owns.

use std::path::Path;

use anyhow::{bail, Context as _, Result};
use serde_json::json;

use crate::build::context::BuildContext;

/// Appended to gcc's built-in specs (`+`), so a gcc update keeps its own
/// defaults and ours still follow. Each flag steps aside when the command
/// line says otherwise; the linker sees `-Wl,...` after these, so
/// `-Wl,-z,lazy` or `-Wl,-z,norelro` win too.
pub const SPECS: &str = "\
# rampart: [toolchain] hardened. gcc reads this file from its library
# directory after its built-in specs; each line adds to one of them.
# _FORTIFY_SOURCE=3 only when optimising (glibc needs -O), and not over an
# explicit -D_FORTIFY_SOURCE or -U_FORTIFY_SOURCE.
*cpp_unique_options:
+ %{O*:%{!O0:%{!D_FORTIFY_SOURCE*:%{!U_FORTIFY_SOURCE*:-D_FORTIFY_SOURCE=3}}}}

# Stack protector (unless another -fstack-protector* or -fno-stack-protector
# is given), stack clash protection and Intel CET instrumentation.
*cc1_options:
+ %{!fno-stack-protector*:%{!fstack-protector*:-fstack-protector-strong}} %{!fno-stack-clash-protection:-fstack-clash-protection} %{!fcf-protection*:-fcf-protection}

# Read-only relocations, resolved at load time (PIE is gcc's own default).
*link:
+ %{!r:-z relro -z now}

";

/// The flags the specs add, as the compiler proper and the linker see them.
const COMPILER_FLAGS: &[&str] = &["-fstack-protector-strong", "-fstack-clash-protection", "-fcf-protection"];
const FORTIFY_FLAG: &str = "-D_FORTIFY_SOURCE=3";

const DPKG_VARIABLE: &str = "DEB_BUILD_MAINT_OPTIONS";
const DPKG_VALUE: &str = "hardening=+all";
const PROFILE_SCRIPT: &str = "etc/profile.d/rampart-toolchain.sh";
const SUDOERS: &str = "etc/sudoers.d/20-rampart-toolchain";

/// sudo's PAM stack in bookworm has no pam_env, and env_reset drops the
/// variable: keep the one the session has.
const SUDOERS_TEXT: &str = "\
# rampart: [toolchain] hardened: package builds under sudo keep dpkg's
# hardening=+all from the session's environment (/etc/environment).
Defaults env_keep += \"DEB_BUILD_MAINT_OPTIONS\"
";

const PROFILE_TEXT: &str = "\
# rampart: [toolchain] hardened. dpkg-buildflags turns on every hardening
# feature for package builds (a package's debian/rules may still opt out).
# The same line is in /etc/environment for sessions that go through PAM.
: \"${DEB_BUILD_MAINT_OPTIONS:=hardening=+all}\"
export DEB_BUILD_MAINT_OPTIONS
";

/// Built and linked at build time: each construct gives one default
/// something to show in the program (valid C and C++).
const PROBE: &str = r#"/* rampart's toolchain probe */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A local array (stack protector) and a variable-length one (stack clash
   protection probes each page of it). */
__attribute__((noinline)) static size_t on_the_stack(const char *text, size_t n) {
    char local[64];
    char pages[n];
    snprintf(local, sizeof local, "%s", text);
    memset(pages, 0, n);
    return strlen(local) + (size_t)pages[n / 2];
}

int main(int argc, char **argv) {
    size_t n = (size_t)argc * 8192;
    /* Its size is known only at run time: _FORTIFY_SOURCE=3 checks the
       copy (__strcpy_chk), level 2 cannot. */
    char *heap = (char *)malloc(n);
    if (heap == NULL)
        return 1;
    strcpy(heap, argv[0]);
    printf("%s %zu\n", heap, on_the_stack(argv[0], n));
    free(heap);
    return 0;
}
"#;

const PROBE_DIR: &str = "/tmp/rampart-toolchain-probe";

/// One installed gcc: `/usr/lib/gcc/<triplet>/<version>/` holds its cc1,
/// `/usr/bin/<triplet>-gcc-<version>` is its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Compiler {
    triplet: String,
    version: String,
}

impl Compiler {
    fn libdir(&self) -> String {
        format!("/usr/lib/gcc/{}/{}", self.triplet, self.version)
    }

    fn specs(&self) -> String {
        format!("{}/specs", self.libdir())
    }

    fn driver(&self) -> String {
        format!("{}-gcc-{}", self.triplet, self.version)
    }

    fn cxx_driver(&self) -> String {
        format!("{}-g++-{}", self.triplet, self.version)
    }
}

/// The image's gcc installations (a library directory with cc1 and a driver).
fn find_compilers(root: &Path) -> Result<Vec<Compiler>> {
    let mut found = Vec::new();
    let base = root.join("usr/lib/gcc");
    let Ok(triplets) = std::fs::read_dir(&base) else { return Ok(found) };
    for triplet in triplets {
        let triplet = triplet?;
        if !triplet.file_type()?.is_dir() {
            continue;
        }
        for version in std::fs::read_dir(triplet.path())? {
            let version = version?;
            let compiler = Compiler {
                triplet: triplet.file_name().to_string_lossy().into_owned(),
                version: version.file_name().to_string_lossy().into_owned(),
            };
            let has_cc1 = version.path().join("cc1").is_file();
            let has_driver = in_image(root, &format!("usr/bin/{}", compiler.driver()));
            if has_cc1 && has_driver {
                found.push(compiler);
            }
        }
    }
    found.sort_by(|a, b| (&a.triplet, &a.version).cmp(&(&b.triplet, &b.version)));
    Ok(found)
}

/// Whether the image has an entry at `path` (a symlink counts: its target
/// lies inside the image and is resolved when the chroot runs it).
fn in_image(root: &Path, path: &str) -> bool {
    std::fs::symlink_metadata(root.join(path)).is_ok()
}

/// The arguments of the command in `gcc -###` output whose program ends in
/// one of `programs` (cc1, cc1plus, collect2), unquoted.
fn command_args(output: &str, programs: &[&str]) -> Option<Vec<String>> {
    output.lines().filter(|l| l.starts_with(' ')).find_map(|line| {
        let words: Vec<String> = line.split_whitespace().map(|w| w.trim_matches('"').to_string()).collect();
        let program = words.first()?;
        programs.iter().any(|p| program.ends_with(&format!("/{p}"))).then_some(words)
    })
}

/// What a `-###` run at `-O2` lacks of the hardened defaults, by flag.
fn missing_driver_flags(output: &str) -> Vec<String> {
    let mut missing = Vec::new();
    match command_args(output, &["cc1", "cc1plus"]) {
        None => missing.push("a cc1 or cc1plus command".to_string()),
        Some(args) => {
            for flag in COMPILER_FLAGS.iter().chain([&FORTIFY_FLAG]) {
                if !args.iter().any(|a| a == flag) {
                    missing.push(flag.to_string());
                }
            }
        }
    }
    match command_args(output, &["collect2"]) {
        None => missing.push("a collect2 (link) command".to_string()),
        Some(args) => {
            let joined = args.join(" ");
            for flag in ["-pie", "-z relro", "-z now"] {
                if !joined.contains(flag) {
                    missing.push(flag.to_string());
                }
            }
        }
    }
    missing
}

/// What readelf and objdump show of a linked probe.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct ProgramFindings {
    pie: bool,
    relro: bool,
    bind_now: bool,
    stack_protector: bool,
    fortify_level_3: bool,
    stack_clash: bool,
    cet_marked: bool,
}

impl ProgramFindings {
    /// `readelf -lW`, `readelf -dW`, `readelf --dyn-syms -W`, `readelf -nW`
    /// and `objdump -d` of one program.
    fn read(program_headers: &str, dynamic: &str, symbols: &str, notes: &str, disassembly: &str) -> ProgramFindings {
        let dynamic_flag = |tag: &str, word: &str| {
            dynamic.lines().any(|l| l.contains(&format!("({tag})")) && l.split_whitespace().any(|w| w == word))
        };
        ProgramFindings {
            pie: program_headers.contains("Elf file type is DYN") && program_headers.lines().any(|l| l.trim_start().starts_with("PHDR")),
            relro: program_headers.lines().any(|l| l.trim_start().starts_with("GNU_RELRO")),
            bind_now: dynamic.contains("(BIND_NOW)") || dynamic_flag("FLAGS", "BIND_NOW") || dynamic_flag("FLAGS_1", "NOW"),
            stack_protector: symbols.contains("__stack_chk_fail"),
            // Only level 3 checks a copy into malloc(n) (__builtin_dynamic_object_size).
            fortify_level_3: symbols.contains("__strcpy_chk"),
            stack_clash: disassembly.lines().any(is_stack_probe),
            cet_marked: has_cet_property(notes),
        }
    }

    fn missing(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        for (ok, what) in [
            (self.pie, "PIE (ELF type DYN with PHDR)"),
            (self.relro, "RELRO (GNU_RELRO segment)"),
            (self.bind_now, "immediate binding (BIND_NOW)"),
            (self.stack_protector, "stack protector (__stack_chk_fail)"),
            (self.fortify_level_3, "_FORTIFY_SOURCE=3 (__strcpy_chk on a malloc(n) buffer)"),
            (self.stack_clash, "stack clash protection (page probes of a variable-length array)"),
        ] {
            if !ok {
                missing.push(what);
            }
        }
        missing
    }
}

/// A stack clash probe as gcc emits it: `orq $0x0,OFFSET(%rsp)`.
fn is_stack_probe(line: &str) -> bool {
    let Some(instruction) = line.split('\t').nth(1).or_else(|| line.split(':').nth(1)) else { return false };
    let words: Vec<&str> = instruction.split_whitespace().collect();
    words.len() == 2 && words[0].starts_with("or") && words[1].starts_with("$0x0,") && words[1].ends_with("(%rsp)")
}

/// `readelf -n` shows the x86 IBT and SHSTK property (-fcf-protection).
fn has_cet_property(notes: &str) -> bool {
    notes.lines().any(|l| l.contains("x86 feature:") && l.contains("IBT") && l.contains("SHSTK"))
}

/// `/etc/environment` with the dpkg line set (any earlier one replaced).
fn with_environment_line(existing: &str) -> String {
    let mut text: String = existing
        .lines()
        .filter(|l| !l.trim_start().starts_with(&format!("{DPKG_VARIABLE}=")))
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&format!("{DPKG_VARIABLE}={DPKG_VALUE}\n"));
    text
}

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    if !ctx.profile.toolchain.hardened {
        ctx.record("toolchain", false, json!({ "reason": "toolchain.hardened = false" }));
        return Ok(());
    }
    let compilers = find_compilers(&ctx.root())?;
    if compilers.is_empty() {
        ctx.record("toolchain", false, json!({ "reason": "no compiler in the image" }));
        return Ok(());
    }
    for compiler in &compilers {
        ctx.install_file(&compiler.specs(), SPECS.as_bytes(), 0o644)?;
    }
    ctx.install_file(PROFILE_SCRIPT, PROFILE_TEXT.as_bytes(), 0o644)?;
    let environment = std::fs::read_to_string(ctx.root().join("etc/environment")).unwrap_or_default();
    ctx.install_file("etc/environment", with_environment_line(&environment).as_bytes(), 0o644)?;
    let with_sudo = in_image(&ctx.root(), "usr/sbin/visudo");
    if with_sudo {
        ctx.install_file(SUDOERS, SUDOERS_TEXT.as_bytes(), 0o440)?;
        ctx.in_root("visudo").args(["--check", "--strict", "--quiet"]).run().context("the image's visudo refuses the toolchain's sudoers drop-in")?;
    }

    let probe_dir = ctx.root().join(&PROBE_DIR[1..]);
    let _ = std::fs::remove_dir_all(&probe_dir);
    std::fs::create_dir_all(&probe_dir)?;
    std::fs::write(probe_dir.join("probe.c"), PROBE)?;
    let checked = check_compilers(ctx, &compilers);
    let _ = std::fs::remove_dir_all(&probe_dir);
    let (front_ends, findings) = checked.with_context(|| format!("while checking the hardened defaults of the image's compiler ({})", compilers[0].specs()))?;
    let dpkg = check_dpkg_buildflags(ctx)?;

    ctx.record(
        "toolchain",
        true,
        json!({
            "compilers": compilers.iter().map(Compiler::driver).collect::<Vec<_>>(),
            "specs": compilers.iter().map(Compiler::specs).collect::<Vec<_>>(),
            "compile-defaults": [
                "-D_FORTIFY_SOURCE=3 when optimising (not at -O0, not over -U_FORTIFY_SOURCE or an explicit -D_FORTIFY_SOURCE)",
                "-fstack-protector-strong (unless -fstack-protector* or -fno-stack-protector is given)",
                "-fstack-clash-protection (unless -fno-stack-clash-protection)",
                "-fcf-protection (unless -fcf-protection=...)",
                "-fPIE (gcc's own default, kept)",
            ],
            "link-defaults": ["-pie (gcc's own default, kept)", "-z relro", "-z now"],
            "front-ends-checked": front_ends,
            "probe": {
                "pie": findings.pie,
                "relro": findings.relro,
                "bind-now": findings.bind_now,
                "stack-protector": findings.stack_protector,
                "fortify-level-3": findings.fortify_level_3,
                "stack-clash-protection": findings.stack_clash,
                "cf-protection-in-objects": true,
                "cf-protection-marked-in-executables": findings.cet_marked,
            },
            "cf-protection-note": if findings.cet_marked { "" } else {
                "every object compiled on the image carries the IBT/SHSTK property, but the linker keeps it only when all inputs have it, and bookworm's glibc start files (Scrt1.o, crti.o, crtn.o) do not"
            },
            "dpkg-buildflags": dpkg,
            "checked-with": "the image's gcc (-### of every front end, and a probe compiled and linked), readelf and objdump",
        }),
    );
    Ok(())
}

/// Runs the image's compilers on the probe; returns the front ends checked
/// and what the linked probe shows.
fn check_compilers(ctx: &BuildContext, compilers: &[Compiler]) -> Result<(Vec<String>, ProgramFindings)> {
    let root = ctx.root();
    let source = format!("{PROBE_DIR}/probe.c");
    for compiler in compilers {
        let output = ctx.in_root(&compiler.driver()).args(["-print-file-name=specs"]).run()?;
        let found = output.stdout_text().trim().to_string();
        if Path::new(&found) != Path::new(&compiler.specs()) {
            bail!("{} reads its specs from {found:?}, not from {}", compiler.driver(), compiler.specs());
        }
    }
    // Every name a user may call the compiler by, C first.
    let mut front_ends: Vec<String> = ["cc", "gcc", "c89", "c99"].iter().map(|n| n.to_string()).collect();
    front_ends.extend(compilers.iter().map(Compiler::driver));
    front_ends.extend(["c++", "g++"].iter().map(|n| n.to_string()));
    front_ends.extend(compilers.iter().map(Compiler::cxx_driver));
    front_ends.retain(|name| in_image(&root, &format!("usr/bin/{name}")));
    for front_end in &front_ends {
        // c89 would refuse the probe's C99; -### only prints the commands.
        let output = ctx.in_root(front_end).args(["-###", "-O2", &source, "-o", &format!("{PROBE_DIR}/probe")]).run()?;
        let missing = missing_driver_flags(&String::from_utf8_lossy(&output.stderr));
        if !missing.is_empty() {
            bail!("`{front_end} -O2` does not pass {} (gcc -### shows what it runs)", missing.join(", "));
        }
    }
    // The defaults step aside: no FORTIFY at -O0 (glibc would warn), and the
    // user's own choices win.
    let main = &front_ends[0];
    let unoptimised = ctx.in_root(main).args(["-###", "-O0", &source]).run()?;
    if String::from_utf8_lossy(&unoptimised.stderr).contains("_FORTIFY_SOURCE") {
        bail!("`{main} -O0` defines _FORTIFY_SOURCE, which glibc warns about without optimisation");
    }
    let opted_out = ctx.in_root(main).args(["-###", "-O2", "-D_FORTIFY_SOURCE=2", "-fno-stack-protector", &source]).run()?;
    let args = command_args(&String::from_utf8_lossy(&opted_out.stderr), &["cc1", "cc1plus"]).unwrap_or_default();
    if args.iter().any(|a| a == FORTIFY_FLAG || a == "-fstack-protector-strong") {
        bail!("`{main} -D_FORTIFY_SOURCE=2 -fno-stack-protector` still gets the hardened defaults over the user's choice: {}", args.join(" "));
    }

    // The real thing: compile, link and look at the program.
    let mut programs = vec![(main.clone(), format!("{PROBE_DIR}/probe"))];
    if let Some(cxx) = front_ends.iter().find(|f| *f == "g++" || f.contains("-g++-")) {
        programs.push((cxx.clone(), format!("{PROBE_DIR}/probe-cxx")));
    }
    let mut first = None;
    for (front_end, program) in &programs {
        ctx.in_root(front_end).args(["-O2", &source, "-o", program]).run()?;
        let readelf = |args: &[&str]| -> Result<String> { Ok(ctx.in_root("readelf").args(args).arg(program).run()?.stdout_text()) };
        let findings = ProgramFindings::read(
            &readelf(&["-lW"])?,
            &readelf(&["-dW"])?,
            &readelf(&["--dyn-syms", "-W"])?,
            &readelf(&["-nW"])?,
            &ctx.in_root("objdump").args(["-d", "--no-show-raw-insn"]).arg(program).run()?.stdout_text(),
        );
        let missing = findings.missing();
        if !missing.is_empty() {
            bail!("a probe built with `{front_end} -O2` lacks {}", missing.join(", "));
        }
        first.get_or_insert(findings);
    }
    let object = format!("{PROBE_DIR}/probe.o");
    ctx.in_root(main).args(["-O2", "-c", &source, "-o", &object]).run()?;
    let notes = ctx.in_root("readelf").args(["-nW", &object]).run()?.stdout_text();
    if !has_cet_property(&notes) {
        bail!("an object built with `{main} -O2 -c` lacks the x86 IBT and SHSTK property (-fcf-protection)");
    }
    Ok((front_ends, first.expect("at least one program")))
}

/// dpkg-buildflags as a login shell sees it: every hardening feature on
/// (`-z now` is the one hardening=+all adds over bookworm's defaults).
fn check_dpkg_buildflags(ctx: &BuildContext) -> Result<serde_json::Value> {
    let setting = format!("{DPKG_VARIABLE}={DPKG_VALUE} in /etc/environment (pam_env: ssh, console, su, cron), /{PROFILE_SCRIPT} (login shells) and, with sudo, env_keep in /{SUDOERS}");
    if !in_image(&ctx.root(), "usr/bin/dpkg-buildflags") {
        return Ok(json!({ "setting": setting, "checked": "no: dpkg-buildflags (dpkg-dev) is not in the image" }));
    }
    let output = ctx.in_root("/usr/bin/env").args(["-i", "/bin/sh", "-l", "-c", "dpkg-buildflags --get LDFLAGS"]).run()?;
    let ldflags = output.stdout_text().trim().to_string();
    if !ldflags.contains("-Wl,-z,now") {
        bail!("dpkg-buildflags in a login shell of the image gives LDFLAGS {ldflags:?}, without hardening=+all's -Wl,-z,now");
    }
    Ok(json!({ "setting": setting, "checked": format!("dpkg-buildflags --get LDFLAGS in a login shell: {ldflags}") }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH_HASH_HASH: &str = r#"Reading specs from /usr/lib/gcc/x86_64-linux-gnu/12/specs
COLLECT_GCC=gcc
Target: x86_64-linux-gnu
 /usr/lib/gcc/x86_64-linux-gnu/12/cc1 -quiet -imultiarch x86_64-linux-gnu prog.c "-D_FORTIFY_SOURCE=3" -quiet -dumpbase prog.c "-mtune=generic" "-march=x86-64" -O2 -fstack-protector-strong -fstack-clash-protection -fcf-protection -fasynchronous-unwind-tables -o /tmp/ccw.s
COLLECT_GCC_OPTIONS='-O2' '-o' 'prog' '-fstack-protector-strong'
 as --64 -o /tmp/ccX.o /tmp/ccw.s
 /usr/lib/gcc/x86_64-linux-gnu/12/collect2 -plugin /usr/lib/gcc/x86_64-linux-gnu/12/liblto_plugin.so -m elf_x86_64 "--hash-style=gnu" --as-needed -dynamic-linker /lib64/ld-linux-x86-64.so.2 -z relro -z now -pie -o prog /tmp/ccX.o -lc
"#;

    #[test]
    fn driver_output_with_every_default_lacks_nothing() {
        assert_eq!(missing_driver_flags(HASH_HASH_HASH), Vec::<String>::new());
    }

    #[test]
    fn driver_output_names_each_missing_default() {
        let plain = HASH_HASH_HASH.replace(" -fstack-clash-protection", "").replace("\"-D_FORTIFY_SOURCE=3\" ", "").replace(" -z now", "");
        assert_eq!(missing_driver_flags(&plain), vec!["-fstack-clash-protection", "-D_FORTIFY_SOURCE=3", "-z now"]);
        // COLLECT_GCC_OPTIONS names the flags too, but it is not the command.
        let no_compiler: String = HASH_HASH_HASH.lines().filter(|l| !l.contains("/cc1 ")).map(|l| format!("{l}\n")).collect();
        assert_eq!(missing_driver_flags(&no_compiler), vec!["a cc1 or cc1plus command"]);
    }

    #[test]
    fn probe_findings_are_read_from_readelf_and_objdump() {
        let headers = "\nElf file type is DYN (Position-Independent Executable file)\n  PHDR           0x000040\n  GNU_RELRO      0x002d80\n";
        let dynamic = " 0x000000000000001e (FLAGS)              BIND_NOW\n 0x000000006ffffffb (FLAGS_1)            Flags: NOW PIE\n";
        let symbols = "     5: 0000000000000000     0 FUNC    GLOBAL DEFAULT  UND __stack_chk_fail@GLIBC_2.4 (3)\n     6: 0000000000000000     0 FUNC    GLOBAL DEFAULT  UND __strcpy_chk@GLIBC_2.3.4 (4)\n";
        let notes = "      Properties: x86 ISA needed: x86-64-baseline\n";
        let disassembly = "    1259:\tsub    $0x1000,%rsp\n    1260:\torq    $0x0,0xff8(%rsp)\n    1269:\tcmp    %rcx,%rsp\n";
        let findings = ProgramFindings::read(headers, dynamic, symbols, notes, disassembly);
        assert_eq!(findings.missing(), Vec::<&str>::new());
        assert!(!findings.cet_marked);
        let plain = ProgramFindings::read(
            "Elf file type is EXEC (Executable file)\n",
            " 0x000000006ffffffb (FLAGS_1)            Flags: PIE\n",
            "__printf_chk",
            "",
            "    1260:\tor     $0x1,%eax\n",
        );
        assert_eq!(plain.missing().len(), 6, "{:?}", plain.missing());
        assert!(has_cet_property("      Properties: x86 feature: IBT, SHSTK\n"));
    }

    #[test]
    fn environment_gets_one_dpkg_line() {
        assert_eq!(with_environment_line(""), "DEB_BUILD_MAINT_OPTIONS=hardening=+all\n");
        assert_eq!(
            with_environment_line("LANG=C.UTF-8\nDEB_BUILD_MAINT_OPTIONS=hardening=-all\n"),
            "LANG=C.UTF-8\nDEB_BUILD_MAINT_OPTIONS=hardening=+all\n"
        );
    }

    #[test]
    fn every_specs_directive_appends_to_gccs_own() {
        let directives: Vec<&str> = SPECS.lines().filter(|l| l.starts_with('*')).collect();
        assert_eq!(directives, vec!["*cpp_unique_options:", "*cc1_options:", "*link:"]);
        let mut lines = SPECS.lines().peekable();
        while let Some(line) = lines.next() {
            if line.starts_with('*') {
                assert!(lines.peek().is_some_and(|next| next.starts_with("+ ")), "{line} replaces gcc's spec instead of adding to it");
            }
        }
    }
}
