//! Real tests: they lock against the host's mirror, fetch, build images and
//! boot them. They need root, the network and QEMU, so they are #[ignore]d
//! for `cargo test` and run by scripts/test (the README's test command),
//! one at a time. Each works in its own copy of the repository's profiles,
//! overlays and scenarios, with its own TMPDIR for rampart (so its QEMUs are
//! told from another test's) and its own Chromium profile, so two can run at
//! once; .debs come from the shared cache (/var/cache/rampart), which they
//! fill if it is empty (its entries appear by rename only).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const SHARED_CACHE: &str = "/var/cache/rampart";

/// A scratch copy of the repository's profiles, overlays and vm-tests.
struct Workspace {
    dir: tempfile::TempDir,
    /// Every rampart this workspace ran: its lab namespaces are named
    /// `rampart-<pid>-<network>`.
    pids: std::cell::RefCell<Vec<u32>>,
}

impl Workspace {
    fn new() -> Workspace {
        let dir = tempfile::Builder::new().prefix("rampart-real-").tempdir_in("/var/tmp").unwrap();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for sub in ["profiles", "overlays", "vm-tests"] {
            let status = Command::new("cp").arg("-a").arg(repo.join(sub)).arg(dir.path()).status().unwrap();
            assert!(status.success());
        }
        for entry in std::fs::read_dir(dir.path().join("profiles")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "lock") {
                std::fs::remove_file(path).unwrap();
            }
        }
        Workspace { dir, pids: Default::default() }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    fn rampart(&self, args: &[&str]) -> Output {
        self.rampart_with_env(args, &[])
    }

    fn rampart_with_env(&self, args: &[&str], env: &[(&str, &Path)]) -> Output {
        let started = Instant::now();
        let mut command = Command::new(env!("CARGO_BIN_EXE_rampart"));
        command.args(args).current_dir(self.dir.path());
        // rampart's work directories (`rampart test`'s rampart-test-*, which
        // QEMU's command line names) are the workspace's own: a test tells
        // its QEMU from another test's.
        let tmp = self.path("rampart-tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        command.env("TMPDIR", &tmp);
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        self.pids.borrow_mut().push(child.id());
        let output = child.wait_with_output().unwrap();
        eprintln!(
            "$ rampart {} -> {:?} in {:.1} s\n{}",
            args.join(" "),
            output.status.code(),
            started.elapsed().as_secs_f64(),
            tail(&String::from_utf8_lossy(&output.stderr), 12)
        );
        output
    }

    fn rampart_ok(&self, args: &[&str]) -> Output {
        self.rampart_ok_with_env(args, &[])
    }

    fn rampart_ok_with_env(&self, args: &[&str], env: &[(&str, &Path)]) -> Output {
        let output = self.rampart_with_env(args, env);
        assert!(output.status.success(), "rampart {} failed:\n{}", args.join(" "), String::from_utf8_lossy(&output.stderr));
        output
    }

    /// Whether a process this workspace's rampart started (a QEMU, above
    /// all) still runs: its command line names a file in rampart's work
    /// directory (`rampart-test-*`, `rampart-audit-*`), which is in TMPDIR.
    fn left_running(&self) -> bool {
        Command::new("pgrep").arg("-f").arg(format!("{}/", self.path("rampart-tmp").display())).output().unwrap().status.success()
    }

    /// The network namespaces of this workspace's rampart runs that are
    /// still there (another test's, running beside this one, are not).
    fn namespaces_left(&self) -> Vec<String> {
        let listed = Command::new("ip").args(["netns", "list"]).output().unwrap();
        let pids = self.pids.borrow();
        String::from_utf8_lossy(&listed.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|name| pids.iter().any(|pid| name.starts_with(&format!("rampart-{pid}-"))))
            .map(String::from)
            .collect()
    }

    /// An empty directory of the workspace's own, to be rampart's TMPDIR.
    fn private_tmpdir(&self) -> PathBuf {
        let dir = self.path("tmp");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Files rampart left in `dir`.
    fn left_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    /// Locks and fetches the baseline into the shared cache.
    fn lock_and_fetch(&self) {
        self.rampart_ok(&["lock", "profiles/baseline.toml"]);
        self.rampart_ok(&["fetch", "profiles/baseline.toml"]);
    }

    /// A built baseline in out/baseline and a scenario `vm-tests/<name>.toml`
    /// for it: `extra` (top-level keys) and one check that never matters.
    fn built_baseline_with_scenario(name: &str, extra: &str) -> Workspace {
        let ws = Workspace::new();
        ws.lock_and_fetch();
        ws.rampart_ok(&["build", "profiles/baseline.toml", "--out", "out/baseline"]);
        let scenario = format!("profile = \"baseline\"\n{extra}[[check]]\nname = \"never_runs\"\nsucceed = \"true\"\n");
        std::fs::write(ws.path(&format!("vm-tests/{name}.toml")), scenario).unwrap();
        ws
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The `<failure>` elements of every JUnit report in `dir`, so that a CI
/// log shows what a failed check saw, not only its name.
fn failures_in_junit_reports(dir: &Path) -> String {
    let mut shown = String::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if !path.to_string_lossy().ends_with(".junit.xml") {
            continue;
        }
        let report = std::fs::read_to_string(&path).unwrap_or_default();
        for failure in report.split("<failure").skip(1) {
            let failure = failure.split("</failure>").next().unwrap_or_default();
            shown.push_str(&format!("--- {}: <failure{}\n", path.display(), tail(failure, 60)));
        }
    }
    shown
}

/// Runs `profiles/<name>.toml`'s scenario into `out/<name>` (locked and
/// fetched before); asserts it passed with no failure and returns its
/// JUnit report.
fn passing_scenario(ws: &Workspace, name: &str) -> String {
    passing_scenario_of(ws, name, name)
}

/// `rampart test` of profile `name` passes; the JUnit report of its scenario `scenario`.
fn passing_scenario_of(ws: &Workspace, name: &str, scenario: &str) -> String {
    let (profile, out) = (format!("profiles/{name}.toml"), format!("out/{name}"));
    let output = ws.rampart(&["test", &profile, "--out", &out]);
    eprintln!("{}", String::from_utf8_lossy(&output.stdout));
    assert!(output.status.success(), "the {name} scenario failed:\n{}\n{}", stderr(&output), failures_in_junit_reports(&ws.path(&out)));
    let junit = std::fs::read_to_string(ws.path(&format!("{out}/{scenario}.junit.xml"))).unwrap();
    assert!(junit.contains("failures=\"0\""));
    junit
}

/// The record of one stage in a build's report.
fn stage_record(ws: &Workspace, report: &str, stage: &str) -> serde_json::Value {
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(ws.path(report)).unwrap()).unwrap();
    report["stages"].as_array().unwrap().iter().find(|s| s["stage"] == stage).unwrap().clone()
}

/// A cache holding hard links to the shared cache's .debs (and, if asked,
/// package-stage trees), so a test can damage or drop entries of its own.
fn private_cache(with_package_stage: bool) -> tempfile::TempDir {
    let cache = tempfile::Builder::new().prefix("rampart-cache-").tempdir_in("/var/tmp").unwrap();
    let mut subs = vec!["debs"];
    if with_package_stage {
        subs.push("rootfs");
    }
    for sub in subs {
        std::fs::create_dir_all(cache.path().join(sub)).unwrap();
        for entry in std::fs::read_dir(Path::new(SHARED_CACHE).join(sub)).unwrap() {
            let entry = entry.unwrap();
            std::fs::hard_link(entry.path(), cache.path().join(sub).join(entry.file_name())).unwrap();
        }
    }
    cache
}

fn read_sums(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap()
}

/// `rampart build profiles/baseline.toml --offline --out out/baseline` in a
/// network namespace of its own: the whole build without a network.
fn offline_build_without_network(ws: &Workspace) -> Output {
    Command::new("unshare")
        .args(["--net", "--"])
        .arg(env!("CARGO_BIN_EXE_rampart"))
        .args(["build", "profiles/baseline.toml", "--offline", "--out", "out/baseline"])
        .current_dir(ws.path(""))
        .output()
        .unwrap()
}

#[test]
#[ignore = "needs root, the network and a Debian mirror: run by scripts/test"]
fn offline_build_of_baseline_in_a_network_namespace_makes_every_artifact() {
    let ws = Workspace::new();
    ws.lock_and_fetch();
    let lock = std::fs::read_to_string(ws.path("profiles/baseline.lock")).unwrap();
    assert!(lock.contains("suite = \"bookworm-security\""), "the lock records the security suite");
    // The whole build runs with the network cut, not just the package stage.
    let output = offline_build_without_network(&ws);
    assert!(output.status.success(), "offline build failed:\n{}", stderr(&output));
    let out = ws.path("out/baseline");
    for artifact in ["raw", "qcow2", "rootfs.tar.gz", "etc.tar.gz", "manifest.json", "spdx.json", "baseline", "report.json", "report.html"] {
        assert!(out.join(format!("baseline.{artifact}")).exists(), "missing baseline.{artifact}");
    }
    let check = Command::new("sha256sum").args(["--check", "--quiet", "SHA256SUMS"]).current_dir(&out).output().unwrap();
    assert!(check.status.success(), "SHA256SUMS does not verify: {}", String::from_utf8_lossy(&check.stdout));
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("baseline.manifest.json")).unwrap()).unwrap();
    let packages = manifest["packages"].as_array().unwrap();
    assert!(packages.iter().any(|p| p["name"] == "openssh-server" && p["sha256"].as_str().unwrap().len() == 64));
    assert!(packages.iter().any(|p| p["name"] == "linux-image-cloud-amd64"));
    let spdx: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("baseline.spdx.json")).unwrap()).unwrap();
    assert_eq!(spdx["spdxVersion"], "SPDX-2.3");
    assert_eq!(spdx["packages"].as_array().unwrap().len(), packages.len() + 1, "one SPDX package per .deb and one for the image");
    assert!(spdx["packages"].as_array().unwrap().iter().any(|p| p["SPDXID"] == "SPDXRef-Package-deb-openssh-server-amd64"));
    let baseline = std::fs::read_to_string(out.join("baseline.baseline")).unwrap();
    assert!(baseline.starts_with("# rampart-baseline v3 image=baseline"));
    assert!(baseline.lines().any(|l| l.starts_with("/etc/machine-id\tf\t0444\t0\t0\t0\t")), "machine-id is empty");
    assert!(!baseline.contains("/etc/ssh/ssh_host_"), "no SSH host keys in the image");
    assert!(!baseline.lines().any(|l| l.starts_with("/var/lib/apt/lists/") && !l.ends_with("\t-")), "apt lists are emptied");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("baseline.report.json")).unwrap()).unwrap();
    let stages: Vec<&str> = report["stages"].as_array().unwrap().iter().map(|s| s["stage"].as_str().unwrap()).collect();
    assert_eq!(
        stages,
        [
            "packages", "configure", "kernel", "wireless", "passwords", "users", "sessions", "firstboot", "encryption", "ssh", "time", "mail", "mail-gateway", "updates", "firewall", "gateway", "vpn", "logging", "accounting", "auditd", "integrity",
            "backups", "toolchain", "overlays", "services", "sandboxing", "patching", "seal", "elf-audit", "config-partition", "disk"
        ]
    );
    // The cloud kernel carries no radio at all, and the report says so.
    let wireless = &report["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "wireless").unwrap()["settings"];
    assert!(wireless["kernel-carries"].as_str().unwrap().starts_with("no Wi-Fi, Bluetooth, NFC or 802.15.4 modules"), "{wireless}");
    // The integrity baseline was made at build time, and lives on the
    // configuration partition, which the image's baseline covers at its
    // mount point, with the ESP's files and the partition table.
    let integrity = report["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "integrity").unwrap();
    assert!(integrity["settings"]["database-entries"].as_u64().unwrap() > 3000, "{integrity}");
    for record in ["/etc/rampart/aide/aide.db.gz\tf\t0600\t", "[esp]/EFI/Linux/rampart.efi\tf\t", "[esp]/EFI/BOOT/BOOTX64.EFI\tf\t", "[gpt]/1\tp\t"] {
        assert!(baseline.lines().any(|l| l.starts_with(record)), "the baseline has no {record:?} record");
    }
    let partition = report["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "config-partition").unwrap();
    let files = partition["settings"]["files"].to_string();
    assert!(files.contains("/etc/rampart/aide/aide.db.gz") && files.contains("/etc/rampart/rsyslog/rsyslog.conf"), "{files}");
    // The ELF hardening audit: figures per property over the executables,
    // and the weak ones with what they lack.
    let audit = &report["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "elf-audit").unwrap()["settings"];
    eprintln!("elf-audit: {} ELF files; executables: {}", audit["elf-files"], audit["executables"]);
    assert!(audit["elf-files"].as_u64().unwrap() > 500, "the audit found the image's programs and libraries");
    for property in ["pie", "nx", "relro", "bind-now", "stack-protector", "fortify"] {
        let figure = &audit["executables"][property];
        let (have, of) = (figure["have"].as_u64().unwrap(), figure["of"].as_u64().unwrap());
        assert!(of > 400 && have <= of, "{property}: {figure}");
    }
    assert_eq!(audit["executables"]["nx"]["percent"], 100.0, "no executable stack anywhere");
    assert_eq!(audit["executables"]["pie"]["percent"], 100.0, "every counted executable is PIE");
    let weak = audit["weak-executables"].as_object().unwrap();
    assert_eq!(weak.get("/usr/bin/cat").and_then(|v| v.as_str()), Some("bind-now"), "coreutils is built without -z now");
    assert!(!weak.contains_key("/usr/sbin/sshd"), "sshd is fully hardened");
    assert!(audit["allowed-weak-executables"].as_object().unwrap().contains_key("/usr/lib/klibc/bin/sh"));
    // binutils' readelf, on the image's own files, agrees.
    let extracted = ws.path("extracted");
    std::fs::create_dir_all(&extracted).unwrap();
    let tar = Command::new("tar").arg("-xzf").arg(out.join("baseline.rootfs.tar.gz")).arg("-C").arg(&extracted).args(["usr/sbin/sshd", "usr/bin/cat"]).status().unwrap();
    assert!(tar.success());
    for (file, bound_now) in [("usr/sbin/sshd", true), ("usr/bin/cat", false)] {
        let dynamic = Command::new("readelf").args(["--dynamic", "--wide"]).arg(extracted.join(file)).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&dynamic.stdout).contains("BIND_NOW"), bound_now, "readelf -d {file}");
    }
    let toolchain = report["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "toolchain").unwrap();
    assert_eq!(toolchain["applied"], false, "the baseline has no compiler to harden");
    assert_eq!(toolchain["settings"]["reason"], "no compiler in the image");
    // The admin's initial password: in a 0600 file next to the artifacts,
    // outside SHA256SUMS, and nowhere in the image, the report or the log.
    use std::os::unix::fs::PermissionsExt;
    let secrets_path = out.join("baseline.secrets");
    assert_eq!(std::fs::metadata(&secrets_path).unwrap().permissions().mode() & 0o777, 0o600);
    let secrets = std::fs::read_to_string(&secrets_path).unwrap();
    let password = secrets.lines().find_map(|l| l.strip_prefix("admin:")).expect("a password for admin").to_string();
    assert!(password.len() >= 20);
    assert!(!read_sums(&out).contains("secrets"));
    for file in ["baseline.raw", "baseline.report.json", "baseline.report.html", "baseline.manifest.json", "baseline.spdx.json", "baseline.baseline"] {
        let bytes = std::fs::read(out.join(file)).unwrap();
        assert!(!bytes.windows(password.len()).any(|w| w == password.as_bytes()), "the password is in {file}");
    }
    let log = std::fs::read_to_string(ws.path("out/baseline.build.log")).unwrap();
    assert!(!log.contains(&password), "the password is in the build log");
    // The site's Secure Boot keys: made on first use beside the artifacts,
    // root's alone, outside SHA256SUMS and the image; the private keys are
    // nowhere in what ships. The variable store with them enrolled ships.
    let keys = out.join("baseline.keys");
    assert_eq!(std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777, 0o700);
    assert!(!read_sums(&out).contains("baseline.keys"));
    assert!(read_sums(&out).contains("  baseline.ovmf-vars.fd\n"));
    let db_key = std::fs::read_to_string(keys.join("db.key")).unwrap();
    let db_key_body: String = db_key.lines().nth(1).unwrap().to_string();
    for file in ["baseline.raw", "baseline.rootfs.tar.gz", "baseline.etc.tar.gz", "baseline.report.json", "baseline.report.html"] {
        let bytes = std::fs::read(out.join(file)).unwrap();
        assert!(!bytes.windows(db_key_body.len()).any(|w| w == db_key_body.as_bytes()), "the db key is in {file}");
    }
    // A second build into the same place reuses them: the same signed boot
    // files and variable store (its accounts get new initial passwords, so
    // the root file system differs).
    let boot_records = |out: &Path| -> Vec<String> {
        let baseline = std::fs::read_to_string(out.join("baseline.baseline")).unwrap();
        baseline.lines().filter(|l| l.starts_with("[esp]/")).map(str::to_string).collect()
    };
    let (sums, boot) = (read_sums(&out), boot_records(&out));
    let again = offline_build_without_network(&ws);
    assert!(again.status.success(), "the second build failed:\n{}", stderr(&again));
    assert_eq!(std::fs::read_to_string(keys.join("db.key")).unwrap(), db_key, "the keys were made again");
    assert!(boot.len() >= 5 && boot == boot_records(&out), "a rebuild with the same keys signs other boot files");
    let vars = |sums: &str| sums.lines().find(|l| l.ends_with("  baseline.ovmf-vars.fd")).map(str::to_string);
    assert_eq!(vars(&sums), vars(&read_sums(&out)), "a rebuild with the same keys made another variable store");
    // Keys others can read are refused before anything is built.
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o755)).unwrap();
    let refused = ws.rampart(&["build", "profiles/baseline.toml", "--offline", "--out", "out/baseline"]);
    assert!(!refused.status.success() && stderr(&refused).contains("can be read by others (mode 755)"), "{}", stderr(&refused));
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o700)).unwrap();
    // No trace of the build host: its host name is nowhere in /etc.
    let host = std::fs::read_to_string("/etc/hostname").unwrap().trim().to_string();
    let listing = Command::new("tar").args(["-xzOf", "baseline.rootfs.tar.gz", "etc/hostname", "etc/hosts"]).current_dir(&out).output().unwrap();
    let etc = String::from_utf8_lossy(&listing.stdout);
    assert!(etc.contains("baseline") && (host.is_empty() || host == "baseline" || !etc.contains(&host)), "build host name leaked: {etc}");
    assert!(!ws.path("out").read_dir().unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with(".rampart-staging")));
}

#[test]
#[ignore = "needs root, the network and a Debian mirror: run by scripts/test"]
fn two_cold_builds_of_one_lock_are_byte_identical_the_second_from_a_bundle_with_the_network_cut() {
    let ws = Workspace::new();
    ws.lock_and_fetch();
    // The accounts' initial passwords are an input like the lock: both builds
    // read them from one secrets file (the first build makes it).
    let secrets = ws.path("shared.secrets");
    let secrets = secrets.to_str().unwrap();
    // The first: a connected build with its own cache without a package stage.
    let first_cache = private_cache(false);
    // Both also make the offline installer, which must be bit-identical too.
    // So are the site's Secure Boot keys.
    let keys = ws.path("shared.keys");
    let keys = keys.to_str().unwrap();
    ws.rampart_ok(&["build", "profiles/baseline.toml", "--installer", "--out", "out/one", "--cache", first_cache.path().to_str().unwrap(), "--secrets", secrets, "--keys", keys]);

    // Bundling is deterministic.
    let started = Instant::now();
    let bundled = ws.rampart_ok(&["bundle", "profiles/baseline.toml", "-o", "baseline.bundle"]);
    ws.rampart_ok(&["bundle", "profiles/baseline.toml", "-o", "again.bundle"]);
    eprintln!("two bundles in {:.1} s", started.elapsed().as_secs_f64());
    // The digest `rampart bundle` prints is what `build --bundle --sha256` takes.
    let printed = stderr(&bundled);
    let digest = printed.split("sha256 ").nth(1).map(|rest| rest[..64].to_string()).unwrap_or_else(|| panic!("no sha256 printed: {printed}"));
    let bundle = std::fs::read(ws.path("baseline.bundle")).unwrap();
    assert!(bundle == std::fs::read(ws.path("again.bundle")).unwrap(), "bundling twice gave different bytes");

    // A damaged .deb member is refused before anything is built, naming it.
    let mut archive = tar::Archive::new(&bundle[..]);
    let (member, offset) = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.path_bytes().starts_with(b"debs/openssh-server_"))
        .map(|e| (String::from_utf8_lossy(&e.path_bytes()).into_owned(), e.raw_file_position() + 100))
        .unwrap();
    let mut damaged = bundle.clone();
    damaged[offset as usize] ^= 0x20;
    std::fs::write(ws.path("damaged.bundle"), &damaged).unwrap();
    let empty_cache = tempfile::Builder::new().prefix("rampart-cache-").tempdir_in("/var/tmp").unwrap();
    let empty = empty_cache.path().to_str().unwrap();
    let output = ws.rampart(&["build", "--bundle", "damaged.bundle", "--out", "out/damaged", "--cache", empty]);
    let message = stderr(&output);
    assert!(!output.status.success(), "a damaged bundle was built");
    assert!(message.contains(&format!("member {member} is damaged")), "the error names the member: {message}");
    assert!(!ws.path("out/damaged").exists() && !ws.path("out/damaged.build.log").exists(), "a refused bundle left output");
    assert_eq!(std::fs::read_dir(empty_cache.path().join("debs")).unwrap().count(), 0, "a refused bundle filled the cache");

    // A profile given with the bundle must be the bundle's version of it.
    let profile = ws.path("profiles/baseline.toml");
    let original = std::fs::read_to_string(&profile).unwrap();
    std::fs::write(&profile, format!("{original}# edited after bundling\n")).unwrap();
    let output = ws.rampart(&["build", "--bundle", "baseline.bundle", "profiles/baseline.toml", "--out", "out/edited", "--cache", empty]);
    let message = stderr(&output);
    assert!(!output.status.success() && message.contains("a bundle built for another profile version"), "{message}");
    assert!(message.contains("inputs/profiles/baseline.toml differs"), "the error names the file: {message}");
    std::fs::write(&profile, original).unwrap();

    // A bundle that is not the one made is refused by its digest before it is read.
    let output = ws.rampart(&["build", "--bundle", "damaged.bundle", "--sha256", &digest, "--out", "out/damaged", "--cache", empty]);
    let message = stderr(&output);
    assert!(!output.status.success() && message.contains(&format!("but --sha256 says {digest}")), "{message}");
    assert!(!message.contains("is damaged"), "the digest is checked before any member: {message}");

    // The second signs as a site whose db key lives in an HSM does: the
    // keys directory holds the db certificate and a signing command, not
    // the key (the stand-in "HSM" is sbsign with the key kept elsewhere).
    // RSA signatures are deterministic, and the command signs at the time
    // rampart gives it, so the bytes are the same.
    let hsm = ws.path("hsm");
    std::fs::create_dir(&hsm).unwrap();
    std::fs::rename(Path::new(keys).join("db.key"), hsm.join("db.key")).unwrap();
    let command = Path::new(keys).join("db.sign");
    std::fs::write(&command, format!("#!/bin/sh\nset -eu\nexec faketime -f \"$RAMPART_SIGNING_TIME\" sbsign --key {} --cert \"$RAMPART_DB_CERT\" --output \"$2\" \"$1\"\n", hsm.join("db.key").display())).unwrap();
    std::fs::set_permissions(&command, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();

    // The second: from the bundle alone, checked by its digest, into an
    // empty cache, with the whole build's network cut.
    let output = Command::new("unshare")
        .args(["--net", "--"])
        .arg(env!("CARGO_BIN_EXE_rampart"))
        .args(["build", "--bundle", "baseline.bundle", "--sha256", &digest, "profiles/baseline.toml", "--installer", "--out", "out/two", "--cache", empty, "--secrets", secrets, "--keys", keys])
        .current_dir(ws.path(""))
        .output()
        .unwrap();
    assert!(output.status.success(), "build from the bundle failed:\n{}", stderr(&output));
    let one = read_sums(&ws.path("out/one"));
    let two = read_sums(&ws.path("out/two"));
    assert_eq!(one, two, "the two builds differ");
    for artifact in ["baseline.raw", "baseline.qcow2", "baseline.installer.raw", "baseline.ovmf-vars.fd", "baseline.rootfs.tar.gz", "baseline.etc.tar.gz", "baseline.baseline", "baseline.manifest.json", "baseline.spdx.json", "baseline.report.json", "baseline.report.html"] {
        assert!(one.contains(artifact), "SHA256SUMS lacks {artifact}");
    }
    let etc = Command::new("tar").args(["-tzf", "out/two/baseline.etc.tar.gz"]).current_dir(ws.path("")).output().unwrap();
    let etc = String::from_utf8_lossy(&etc.stdout);
    for path in ["etc/hostname", "etc/ssh/sshd_config", "etc/rampart/rsyslog/rsyslog.conf", "etc/rampart/aide/aide.db.gz"] {
        assert!(etc.lines().any(|l| l == path), "the /etc snapshot lacks {path}");
    }
}

/// A bundle unpacked into a directory, to be changed and packed again
/// consistently, as a forger with the file (but not the archive's key) can.
struct UnpackedBundle {
    dir: tempfile::TempDir,
    manifest: serde_json::Value,
}

impl UnpackedBundle {
    fn new(bundle: &Path) -> UnpackedBundle {
        let dir = tempfile::Builder::new().prefix("rampart-forged-").tempdir_in("/var/tmp").unwrap();
        let status = Command::new("tar").arg("-xf").arg(bundle).arg("-C").arg(dir.path()).status().unwrap();
        assert!(status.success());
        let manifest = serde_json::from_slice(&std::fs::read(dir.path().join("rampart-bundle.json")).unwrap()).unwrap();
        UnpackedBundle { dir, manifest }
    }

    fn path(&self, member: &str) -> PathBuf {
        self.dir.path().join(member)
    }

    /// Replaces a member's bytes and its manifest entry (and the inputs digest).
    fn replace(&mut self, member: &str, bytes: &[u8]) {
        use sha2::Digest;
        std::fs::write(self.path(member), bytes).unwrap();
        let entry = self.manifest["members"].as_array_mut().unwrap().iter_mut().find(|m| m["path"] == member).unwrap();
        entry["size"] = bytes.len().into();
        entry["sha256"] = hex::encode(sha2::Sha256::digest(bytes)).into();
        // As bundle::inputs_digest: one sorted line per input member.
        let mut lines: Vec<String> = self.manifest["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["path"].as_str().unwrap().starts_with("inputs/"))
            .map(|m| {
                let kind = if m["kind"] == "dir" { "Dir" } else { "File" };
                format!("{kind} {} {} {} {}\n", m["mode"].as_str().unwrap(), m["size"], m["sha256"].as_str().unwrap_or("-"), m["path"].as_str().unwrap())
            })
            .collect();
        lines.sort();
        self.manifest["profile-inputs-sha256"] = hex::encode(sha2::Sha256::digest(lines.concat().as_bytes())).into();
    }

    /// The manifest first, then every member in its order.
    fn pack(&self, to: &Path) {
        let mut builder = tar::Builder::new(std::fs::File::create(to).unwrap());
        let manifest = format!("{}\n", serde_json::to_string_pretty(&self.manifest).unwrap());
        let header = |kind: tar::EntryType, mode: u32, size: u64| {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(kind);
            header.set_mode(mode);
            header.set_size(size);
            header.set_mtime(0);
            header
        };
        builder.append_data(&mut header(tar::EntryType::Regular, 0o644, manifest.len() as u64), "rampart-bundle.json", manifest.as_bytes()).unwrap();
        for member in self.manifest["members"].as_array().unwrap() {
            let path = member["path"].as_str().unwrap();
            let mode = u32::from_str_radix(member["mode"].as_str().unwrap(), 8).unwrap();
            if member["kind"] == "dir" {
                builder.append_data(&mut header(tar::EntryType::Directory, mode, 0), path, std::io::empty()).unwrap();
            } else {
                let bytes = std::fs::read(self.path(path)).unwrap();
                builder.append_data(&mut header(tar::EntryType::Regular, mode, bytes.len() as u64), path, &bytes[..]).unwrap();
            }
        }
        builder.finish().unwrap();
    }
}

#[test]
#[ignore = "needs root, the network and a Debian mirror: run by scripts/test"]
fn bundle_rewritten_consistently_around_another_deb_or_index_is_refused_by_the_archive_signature() {
    let ws = Workspace::new();
    ws.lock_and_fetch();
    ws.rampart_ok(&["bundle", "profiles/baseline.toml", "-o", "baseline.bundle"]);
    let empty_cache = tempfile::Builder::new().prefix("rampart-cache-").tempdir_in("/var/tmp").unwrap();
    let empty = empty_cache.path().to_str().unwrap();
    let refused = |bundle: &str| -> String {
        let output = ws.rampart(&["build", "--bundle", bundle, "--out", "out/forged", "--cache", empty]);
        assert!(!output.status.success(), "{bundle} was built");
        assert!(!ws.path("out/forged").exists(), "a refused bundle left output");
        assert_eq!(std::fs::read_dir(empty_cache.path().join("debs")).unwrap().count(), 0, "a refused bundle filled the cache");
        stderr(&output)
    };

    // Another openssh-server .deb: the real one rebuilt with one more file.
    let mut forged = UnpackedBundle::new(&ws.path("baseline.bundle"));
    let lock_member = "inputs/profiles/baseline.lock";
    let mut lock: toml::Value = toml::from_str(&std::fs::read_to_string(forged.path(lock_member)).unwrap()).unwrap();
    let victim = lock["package"].as_array_mut().unwrap().iter_mut().find(|p| p["name"].as_str() == Some("openssh-server")).unwrap();
    let deb_member = format!("debs/openssh-server_{}_amd64.deb", victim["version"].as_str().unwrap().replace(':', "%3a"));
    let signed_index = format!("indices/{}/main/binary-amd64/Packages.gz", victim["suite"].as_str().unwrap());
    let tree = forged.dir.path().join("rebuilt");
    let status = Command::new("dpkg-deb").arg("--raw-extract").arg(forged.path(&deb_member)).arg(&tree).status().unwrap();
    assert!(status.success());
    std::fs::write(tree.join("usr/share/forged-by-the-test"), "not signed by the archive\n").unwrap();
    let rebuilt = forged.dir.path().join("rebuilt.deb");
    let status = Command::new("dpkg-deb").args(["-Zgzip", "--root-owner-group", "--build"]).arg(&tree).arg(&rebuilt).stdout(Stdio::null()).status().unwrap();
    assert!(status.success());
    std::fs::remove_dir_all(&tree).unwrap();
    let bytes = std::fs::read(&rebuilt).unwrap();
    std::fs::remove_file(&rebuilt).unwrap();
    {
        use sha2::Digest;
        victim["sha256"] = hex::encode(sha2::Sha256::digest(&bytes)).into();
        victim["size"] = (bytes.len() as i64).into();
    }
    forged.replace(&deb_member, &bytes);
    forged.replace(lock_member, toml::to_string(&lock).unwrap().as_bytes());
    forged.pack(&ws.path("forged-deb.bundle"));
    let message = refused("forged-deb.bundle");
    assert!(message.contains("package openssh-server") && message.contains(&format!("does not match its stanza in the signed index {signed_index}")), "{message}");
    assert!(message.contains("sha256 is") && !message.contains("is damaged"), "every member matched the forged manifest: {message}");

    // A signed index changed by one byte (and the manifest with it).
    let mut forged = UnpackedBundle::new(&ws.path("baseline.bundle"));
    let member = "indices/bookworm/InRelease";
    let mut bytes = std::fs::read(forged.path(member)).unwrap();
    let at = bytes.windows(14).position(|w| w == b"Origin: Debian").unwrap() + 13;
    bytes[at] = b'm';
    forged.replace(member, &bytes);
    forged.pack(&ws.path("forged-index.bundle"));
    let message = refused("forged-index.bundle");
    assert!(message.contains(&format!("member {member} is not signed by the Debian archive: the signature of")), "{message}");
    assert!(message.contains("does not verify against the archive keyring /usr/share/keyrings/debian-archive-keyring.gpg"), "the host's keyring: {message}");

    // A Packages index replaced by one that lists the forged .deb cannot be
    // signed either: the InRelease lists the real one's digest.
    let mut forged = UnpackedBundle::new(&ws.path("baseline.bundle"));
    let member = "indices/bookworm-security/main/binary-amd64/Packages.gz";
    let bytes = std::fs::read(forged.path(member)).unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut text).unwrap();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut encoder, text.replacen("SHA256: ", "SHA256: 0", 1).as_bytes()).unwrap();
    forged.replace(member, &encoder.finish().unwrap());
    forged.pack(&ws.path("forged-packages.bundle"));
    let message = refused("forged-packages.bundle");
    assert!(message.contains(&format!("member {member} is not the index the signed indices/bookworm-security/InRelease lists")), "{message}");
}

#[test]
#[ignore = "needs root, the network and a Debian mirror: run by scripts/test"]
fn access_settings_the_image_refuses_fail_the_build_naming_the_field() {
    // Each case is a profile extending the baseline; every build must fail
    // before the disk is assembled, naming the field at fault.
    let ws = Workspace::new();
    ws.lock_and_fetch();
    // A yescrypt hash of a common password, as a user might paste one.
    let weak_hash = Command::new("perl").args(["-e", "print crypt(q(Password123!), q($y$j9T$abcdefghijklmnopqrstu.))"]).output().unwrap();
    let weak_hash = String::from_utf8(weak_hash.stdout).unwrap();
    assert!(weak_hash.starts_with("$y$"), "the host's crypt() made no yescrypt hash");
    let admin = "[[users]]\nname = \"admin\"\ngroups = [\"adm\", \"sudo\"]\n";
    let weak_word = format!("{admin}password = \"Understanding1!\"\n");
    let weak_hash = format!("{admin}password-hash = \"{weak_hash}\"\n");
    let cases = [
        ("weak-word", weak_word.as_str(), "weak-word.toml:7:12: users.password of admin: too weak: the cracklib dictionary check says: it is based on a dictionary word"),
        ("weak-hash", weak_hash.as_str(), "weak-hash.toml:7:17: users.password-hash of admin: too weak: it is the hash of \"Password123!\", a common password"),
        ("bad-unit", "[services]\nenable = [\"ssh.service\", \"nginx.service\"]\n", "bad-unit.toml:5:26: services.enable: no installed package provides nginx.service"),
        ("bad-rule", "[firewall]\ninput-rules = [\"tcp dport 9100 acept\"]\n", "bad-rule.toml:5:16: firewall.input-rules: nft refuses the firewall rule made from it"),
        ("bad-sshd", "[ssh.options]\nCiphers = \"des-cbc@nowhere\"\n", "bad-sshd.toml:5:11: ssh.options.Ciphers: the image's sshd refuses the configuration made from it"),
        ("bad-aide", "[integrity]\nrules = [\"/srv/app Content\", \"/opt/app NoSuchGroup\"]\n", "bad-aide.toml:5:30: integrity.rules: aide refuses the rule made from it"),
        ("bad-schedule", "[integrity]\nschedule = \"every full moon\"\n", "bad-schedule.toml:5:12: integrity.schedule: \"every full moon\" is not a calendar expression systemd accepts"),
        ("elf-floor", "[elf-audit.floor]\nstack-protector = 100\n", "elf-floor.toml:5:19: elf-audit.floor.stack-protector: "),
        ("rc-local", "[overlays]\ntrees = [\"baseline\", \"rc-local\"]\n", "rc-local.toml: the image has /etc/rc.local, which would run commands off the allow-list"),
    ];
    // An overlay with an rc.local, which systemd would run at boot outside the allow-list.
    std::fs::create_dir_all(ws.path("overlays/rc-local/etc")).unwrap();
    std::fs::write(ws.path("overlays/rc-local/etc/rc.local"), "#!/bin/sh\ntouch /run/started-off-the-list\n").unwrap();
    for (name, section, expected) in cases {
        let profile = format!("name = \"{name}\"\nextends = \"baseline.toml\"\n\n{section}");
        std::fs::write(ws.path(&format!("profiles/{name}.toml")), profile).unwrap();
        // Same package selection as the baseline: its lock is this one's.
        std::fs::copy(ws.path("profiles/baseline.lock"), ws.path(&format!("profiles/{name}.lock"))).unwrap();
        let out = format!("out/{name}");
        let output = ws.rampart(&["build", &format!("profiles/{name}.toml"), "--offline", "--out", &out]);
        assert!(!output.status.success(), "{name} built");
        assert!(stderr(&output).contains(expected), "{name}: expected {expected:?} in:\n{}", stderr(&output));
        assert!(!ws.path(&out).exists(), "{name}: a failed build left {out}");
    }
}

#[test]
#[ignore = "needs root, the network and a Debian mirror: run by scripts/test"]
fn verify_passes_the_built_image_and_names_what_was_tampered_with() {
    let ws = Workspace::new();
    ws.lock_and_fetch();
    ws.rampart_ok(&["build", "profiles/baseline.toml", "--offline", "--out", "out/baseline"]);
    let output = ws.rampart_ok(&["verify", "out/baseline/baseline.qcow2", "--baseline", "out/baseline/baseline.baseline"]);
    assert!(stderr(&output).contains("matches"));
    // A copy of the raw disk with one binary replaced and one file added,
    // written with debugfs at the root partition's offset (no mount).
    let tampered = ws.path("tampered.raw");
    assert!(Command::new("cp").arg("--sparse=always").arg(ws.path("out/baseline/baseline.raw")).arg(&tampered).status().unwrap().success());
    let table = Command::new("sfdisk").arg("--json").arg(&tampered).output().unwrap();
    let table: serde_json::Value = serde_json::from_slice(&table.stdout).unwrap();
    let root = table["partitiontable"]["partitions"].as_array().unwrap().iter().find(|p| p["name"] == "root").expect("a root partition");
    let device = format!("{}?offset={}", tampered.display(), root["start"].as_u64().unwrap() * 512);
    std::fs::write(ws.path("evil"), "#!/bin/sh\n").unwrap();
    let script = format!("rm /usr/bin/passwd\nwrite {evil} /usr/bin/passwd\nwrite {evil} /usr/bin/evil\n", evil = ws.path("evil").display());
    std::fs::write(ws.path("tamper.debugfs"), script).unwrap();
    assert!(Command::new("debugfs").args(["-w", "-f"]).arg(ws.path("tamper.debugfs")).arg(&device).output().unwrap().status.success());
    let output = ws.rampart(&["verify", "tampered.raw", "--baseline", "out/baseline/baseline.baseline"]);
    assert!(!output.status.success(), "a tampered image passed");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("added    /usr/bin/evil"), "{stdout}");
    assert!(stdout.contains("changed  /usr/bin/passwd: mode 4755 -> "), "{stdout}");
    assert!(stderr(&output).contains("1 changed, 1 added, 0 removed"), "{}", stderr(&output));
    let output = ws.rampart(&["verify", "tampered.raw", "--baseline", "out/baseline/baseline.baseline", "--json"]);
    assert_eq!(output.status.code(), Some(1), "--json keeps the exit status");
    let found: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!((found["matches"].clone(), found["added"].clone()), (serde_json::json!(false), serde_json::json!(["/usr/bin/evil"])), "{found}");
    assert_eq!(found["changed"][0]["path"], "/usr/bin/passwd", "{found}");
    // The separate partitions are read at their mount points: a file changed
    // on /var is named, and one written on the root below the /var mount
    // point (which the mount would hide on a running machine) is reported.
    let tampered = ws.path("tampered-var.raw");
    assert!(Command::new("cp").arg("--sparse=always").arg(ws.path("out/baseline/baseline.raw")).arg(&tampered).status().unwrap().success());
    let device_of_partition = |name: &str| {
        let table = Command::new("sfdisk").arg("--json").arg(&tampered).output().unwrap();
        let table: serde_json::Value = serde_json::from_slice(&table.stdout).unwrap();
        let partition = table["partitiontable"]["partitions"].as_array().unwrap().iter().find(|p| p["name"] == name).cloned().unwrap_or_else(|| panic!("a {name} partition"));
        format!("{}?offset={}", tampered.display(), partition["start"].as_u64().unwrap() * 512)
    };
    debugfs_write(&device_of_partition("var"), "sif /lib/dpkg/status mode 0100666");
    debugfs_write(&device_of_partition("root"), &format!("write {} /var/hidden", ws.path("evil").display()));
    let output = ws.rampart(&["verify", "tampered-var.raw", "--baseline", "out/baseline/baseline.baseline"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("changed  /var/lib/dpkg/status: mode 0644 -> 0666"), "{stdout}");
    assert!(stdout.contains("added    /var/hidden (on the file system below, hidden under the /var partition)"), "{stdout}");
    assert!(stderr(&output).contains("1 changed, 1 added, 0 removed"), "{}", stderr(&output));
    // The whole disk: one byte of the signed boot image on the EFI system
    // partition, the AIDE database on the read-only configuration partition
    // and the type of a partition are each named.
    let tampered = ws.path("tampered-disk.raw");
    assert!(Command::new("cp").arg("--sparse=always").arg(ws.path("out/baseline/baseline.raw")).arg(&tampered).status().unwrap().success());
    let table = Command::new("sfdisk").arg("--json").arg(&tampered).output().unwrap();
    let table: serde_json::Value = serde_json::from_slice(&table.stdout).unwrap();
    let partitions = table["partitiontable"]["partitions"].as_array().unwrap().clone();
    let index_of = |name: &str| partitions.iter().position(|p| p["name"] == name).unwrap_or_else(|| panic!("a {name} partition"));
    let offset_of = |name: &str| partitions[index_of(name)]["start"].as_u64().unwrap() * 512;
    let esp = format!("{}@@{}", tampered.display(), offset_of("esp"));
    let uki = ws.path("uki.efi");
    let mtools = |args: &[&str]| assert!(Command::new(args[0]).env("MTOOLS_SKIP_CHECK", "1").args(&args[1..]).status().unwrap().success(), "{args:?}");
    mtools(&["mcopy", "-i", &esp, "::/EFI/Linux/rampart.efi", uki.to_str().unwrap()]);
    let mut bytes = std::fs::read(&uki).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&uki, &bytes).unwrap();
    mtools(&["mcopy", "-o", "-i", &esp, uki.to_str().unwrap(), "::/EFI/Linux/rampart.efi"]);
    let config = format!("{}?offset={}", tampered.display(), offset_of("rampart-config"));
    debugfs_write(&config, &format!("rm /aide/aide.db.gz\nwrite {} /aide/aide.db.gz", ws.path("evil").display()));
    let home = (index_of("home") + 1).to_string();
    assert!(Command::new("sfdisk").args(["--quiet", "--part-type"]).arg(&tampered).args([home.as_str(), "0FC63DAF-8483-4772-8E79-3D69D8477DE4"]).status().unwrap().success());
    let output = ws.rampart(&["verify", "tampered-disk.raw", "--baseline", "out/baseline/baseline.baseline"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "a tampered disk passed");
    assert!(stdout.contains("changed  [esp]/EFI/Linux/rampart.efi: sha256 "), "{stdout}");
    assert!(stdout.contains("changed  /etc/rampart/aide/aide.db.gz: "), "{stdout}");
    assert!(stdout.contains(&format!("changed  [gpt]/{home}: type=933ac7e1-2eb4-4f13-b844-0e14e2aef915 name=home ")) && stdout.contains("-> type=0fc63daf-8483-4772-8e79-3d69d8477de4 name=home "), "{stdout}");
    assert!(stderr(&output).contains("3 changed, 0 added, 0 removed"), "{}", stderr(&output));
    // A baseline of another image, and a file that is no image.
    let other = std::fs::read_to_string(ws.path("out/baseline/baseline.baseline")).unwrap().replacen("image=baseline", "image=web", 1);
    std::fs::write(ws.path("web.baseline"), other).unwrap();
    let output = ws.rampart(&["verify", "out/baseline/baseline.raw", "--baseline", "web.baseline"]);
    assert!(stderr(&output).contains("is the baseline of image web, but out/baseline/baseline.raw is another image"), "{}", stderr(&output));
    let output = ws.rampart(&["verify", "evil", "--baseline", "out/baseline/baseline.baseline"]);
    assert!(stderr(&output).contains("evil: no partition table; not a rampart disk image"), "{}", stderr(&output));
    verify_covers_xattrs_in_baseline_and_archive(&ws);
    verify_writes_nothing_the_image_names(&ws);
    verify_refuses_qcow2_that_names_other_files(&ws);
    verify_names_an_added_capability(&ws);
}

/// A sparse copy of the built raw disk, its root partition as a debugfs
/// device, and the partition's byte offset.
fn device_of(ws: &Workspace, name: &str) -> (PathBuf, String, u64) {
    let copy = ws.path(name);
    assert!(Command::new("cp").arg("--sparse=always").arg(ws.path("out/baseline/baseline.raw")).arg(&copy).status().unwrap().success());
    let table = Command::new("sfdisk").arg("--json").arg(&copy).output().unwrap();
    let table: serde_json::Value = serde_json::from_slice(&table.stdout).unwrap();
    let root = table["partitiontable"]["partitions"].as_array().unwrap().iter().find(|p| p["name"] == "root").expect("a root partition");
    let offset = root["start"].as_u64().unwrap() * 512;
    (copy.clone(), format!("{}?offset={offset}", copy.display()), offset)
}

/// Runs debugfs -w with `commands` (one a line) on its stdin.
fn debugfs_write(device: &str, commands: &str) {
    let mut child = Command::new("debugfs").args(["-w", "-f", "-", device]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), commands.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success() && !String::from_utf8_lossy(&output.stderr).lines().any(|l| !l.starts_with("debugfs ")), "debugfs {commands}: {}", String::from_utf8_lossy(&output.stderr));
}

/// What systemd-tmpfiles gives /var/log/journal (POSIX ACLs) is in the
/// baseline, in rootfs.tar.gz as PAX records GNU tar restores, and (the
/// first verify passed) read identically from the image.
fn verify_covers_xattrs_in_baseline_and_archive(ws: &Workspace) {
    let baseline = std::fs::read_to_string(ws.path("out/baseline/baseline.baseline")).unwrap();
    assert!(baseline.starts_with("# rampart-baseline v3 image=baseline\n"));
    let journal = baseline.lines().find(|l| l.starts_with("/var/log/journal\t")).expect("/var/log/journal in the baseline");
    let xattrs = journal.rsplit('\t').next().unwrap();
    assert!(xattrs.contains("system.posix_acl_access="), "{journal}");
    let unpacked = ws.path("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    let status = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "-xzf"])
        .arg(ws.path("out/baseline/baseline.rootfs.tar.gz"))
        .arg("-C")
        .arg(&unpacked)
        .arg("var/log/journal")
        .status()
        .unwrap();
    assert!(status.success());
    let restored: Vec<String> = xattrs_of(&unpacked.join("var/log/journal")).iter().map(|(n, v)| format!("{n}={}", hex::encode(v))).collect();
    assert_eq!(restored.join(","), xattrs, "rootfs.tar.gz restores the baseline's xattrs");
}

fn xattrs_of(path: &Path) -> Vec<(String, Vec<u8>)> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut names = vec![0u8; 4096];
    // SAFETY: buffers valid for their lengths, NUL-terminated strings.
    let n = unsafe { libc::llistxattr(c_path.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(n >= 0);
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let c_name = std::ffi::CString::new(name).unwrap();
        let mut value = vec![0u8; 4096];
        // SAFETY: as above.
        let n = unsafe { libc::lgetxattr(c_path.as_ptr(), c_name.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
        assert!(n >= 0);
        value.truncate(n as usize);
        out.push((String::from_utf8_lossy(name).into_owned(), value));
    }
    out.sort();
    out
}

/// A name that climbs out of its directory, patched into a copy's root
/// directory block, is refused; a symlink swapped in for /etc/ssh is a
/// changed type. Neither makes verify write where the image points.
fn verify_writes_nothing_the_image_names(ws: &Workspace) {
    let unique = format!("rampart-verify-escape-{}", std::process::id());
    let escaped_to = Path::new("/tmp").join(&unique);
    let _ = std::fs::remove_dir_all(&escaped_to);
    let climbing = format!("../../../../tmp/{unique}/pwn");
    let stand_in = format!("rampart-stand-in-{}", "q".repeat(climbing.len() - 17));
    assert_eq!(stand_in.len(), climbing.len());
    let (copy, device, offset) = device_of(ws, "climbing.raw");
    debugfs_write(&device, &format!("ln /etc/hostname /{stand_in}"));
    // Replace the stand-in's bytes where the root directory holds them.
    let mut bytes = std::fs::read(&copy).unwrap();
    let partition = &mut bytes[offset as usize..];
    let at: Vec<usize> = partition.windows(stand_in.len()).enumerate().filter(|(_, w)| *w == stand_in.as_bytes()).map(|(i, _)| i).collect();
    assert_eq!(at.len(), 1, "the stand-in name is in the image once");
    partition[at[0]..at[0] + climbing.len()].copy_from_slice(climbing.as_bytes());
    // Then fix the block's metadata_csum checksum, as a careful attacker
    // would, so it is the name check that refuses it.
    let uuid = partition[1024 + 0x68..1024 + 0x78].to_vec();
    let stat = Command::new("debugfs").args(["-R", "stat <2>", &device]).output().unwrap();
    let stat = String::from_utf8_lossy(&stat.stdout);
    let generation: u32 = stat.split("Generation: ").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|g| g.parse().ok()).expect("the root inode's generation");
    let block = at[0] / 4096 * 4096;
    let seed = crc32c(crc32c(crc32c(!0, &uuid), &2u32.to_le_bytes()), &generation.to_le_bytes());
    let sum = crc32c(seed, &partition[block..block + 4084]);
    assert_eq!(partition[block + 4084 + 7], 0xDE, "the root directory block ends in its checksum entry");
    partition[block + 4092..block + 4096].copy_from_slice(&sum.to_le_bytes());
    std::fs::write(&copy, &bytes).unwrap();
    drop(bytes);
    let output = ws.rampart(&["verify", "climbing.raw", "--baseline", "out/baseline/baseline.baseline"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains(&format!("directory inode 2 at / has an entry named {climbing:?}")), "{}", stderr(&output));
    assert!(stderr(&output).contains("a name with '/' or NUL, refused"), "{}", stderr(&output));
    assert!(!escaped_to.exists(), "verify wrote {}", escaped_to.display());
    std::fs::remove_file(&copy).unwrap();

    let target = Path::new("/tmp").join(format!("rampart-verify-target-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&target);
    std::fs::create_dir(&target).unwrap();
    let (copy, device, _) = device_of(ws, "symlinked.raw");
    debugfs_write(&device, &format!("unlink /etc/ssh\nsymlink /etc/ssh {}\n", target.display()));
    let output = ws.rampart(&["verify", "symlinked.raw", "--baseline", "out/baseline/baseline.baseline"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success());
    assert!(stdout.contains("changed  /etc/ssh: type d -> l"), "{stdout}");
    assert!(stdout.contains("removed  /etc/ssh/sshd_config"), "{stdout}");
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0, "verify wrote below the symlink's target");
    std::fs::remove_dir(&target).unwrap();
    std::fs::remove_file(&copy).unwrap();
}

/// CRC-32C as ext4 computes it (from `crc`, no final inversion).
fn crc32c(mut crc: u32, bytes: &[u8]) -> u32 {
    for byte in bytes {
        crc ^= *byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    crc
}

/// qcow2 images whose guest data or backing chain lives in another file are
/// refused, naming that file, before qemu-img opens it.
fn verify_refuses_qcow2_that_names_other_files(ws: &Workspace) {
    let raw = ws.path("out/baseline/baseline.raw");
    let output = Command::new("qemu-img").args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"]).arg(&raw).arg(ws.path("backed.qcow2")).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let output = ws.rampart(&["verify", "backed.qcow2", "--baseline", "out/baseline/baseline.baseline"]);
    assert!(stderr(&output).contains(&format!("backed.qcow2: a qcow2 with a backing file ({})", raw.display())), "{}", stderr(&output));
    let data = ws.path("data.raw");
    let output = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-o"])
        .arg(format!("data_file={}", data.display()))
        .arg(ws.path("external.qcow2"))
        .arg("64M")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let output = ws.rampart(&["verify", "external.qcow2", "--baseline", "out/baseline/baseline.baseline"]);
    assert!(stderr(&output).contains(&format!("external.qcow2: a qcow2 with an external data file ({})", data.display())), "{}", stderr(&output));
}

/// `setcap cap_setuid+ep` on the image's perl (the baseline image has no
/// python3.11) is named: the xattr, not only "something changed".
fn verify_names_an_added_capability(ws: &Workspace) {
    let scratch = ws.path("scratch-binary");
    std::fs::write(&scratch, "x").unwrap();
    let output = Command::new("setcap").arg("cap_setuid+ep").arg(&scratch).output().unwrap();
    assert!(output.status.success(), "setcap: {}", String::from_utf8_lossy(&output.stderr));
    let capability = xattrs_of(&scratch).into_iter().find(|(n, _)| n == "security.capability").expect("setcap wrote security.capability").1;
    std::fs::write(ws.path("capability.bin"), &capability).unwrap();
    let (copy, device, _) = device_of(ws, "capable.raw");
    debugfs_write(&device, &format!("ea_set -f {} /usr/bin/perl security.capability", ws.path("capability.bin").display()));
    let output = ws.rampart(&["verify", "capable.raw", "--baseline", "out/baseline/baseline.baseline"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "a setuid capability passed verify");
    assert!(stdout.contains("changed  /usr/bin/perl: xattr security.capability added"), "{stdout}");
    std::fs::remove_file(&copy).unwrap();
}

#[test]
#[ignore = "needs root, the network and a Debian mirror: run by scripts/test"]
fn outdated_lists_locked_versions_the_mirror_has_replaced() {
    let ws = Workspace::new();
    let tmp = ws.private_tmpdir();
    ws.rampart_ok_with_env(&["lock", "profiles/baseline.toml"], &[("TMPDIR", &tmp)]);
    let output = ws.rampart_ok_with_env(&["outdated", "profiles/baseline.toml"], &[("TMPDIR", &tmp)]);
    assert!(stderr(&output).contains("is up to date with the mirror"), "a fresh lock is current:\n{}", stderr(&output));
    assert_eq!(Workspace::left_in(&tmp), Vec::<String>::new(), "commands that succeed leave no log or scratch behind");
    // Pretend two packages were locked long ago.
    let path = ws.path("profiles/baseline.lock");
    let lock = std::fs::read_to_string(&path).unwrap();
    let old = lock
        .replacen("name = \"libssl3\"\nversion = \"", "name = \"libssl3\"\nversion = \"3.0.0-1\"\nold-version = \"", 1)
        .replacen("name = \"openssh-server\"\nversion = \"", "name = \"openssh-server\"\nversion = \"1:9.2p1-1\"\nold-version = \"", 1);
    // Drop the real versions that the replacement pushed into "old-version".
    let old: String = old.lines().filter(|l| !l.starts_with("old-version = ")).map(|l| format!("{l}\n")).collect();
    assert_ne!(old, lock);
    std::fs::write(&path, old).unwrap();
    let output = ws.rampart_ok(&["outdated", "profiles/baseline.toml"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("libssl3 3.0.0-1 -> "), "libssl3 is listed:\n{stdout}");
    assert!(stdout.contains("openssh-server 1:9.2p1-1 -> "), "openssh-server is listed:\n{stdout}");
    assert!(stderr(&output).contains("2 packages have newer versions"));
    // The same findings as JSON, for CI.
    let output = ws.rampart_ok(&["outdated", "profiles/baseline.toml", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let locked: Vec<(&str, &str)> = report["updates"].as_array().unwrap().iter().map(|u| (u["name"].as_str().unwrap(), u["locked"].as_str().unwrap())).collect();
    assert!(locked.contains(&("libssl3", "3.0.0-1")) && locked.contains(&("openssh-server", "1:9.2p1-1")), "{report}");
    assert_eq!(report["compared-with"], "mirror");
    assert!(std::fs::read_to_string(&path).unwrap().contains("version = \"1:9.2p1-1\""), "outdated leaves the lock alone");
}

#[test]
#[ignore = "needs root, the network and a Debian mirror: run by scripts/test"]
fn warm_rebuild_after_a_profile_edit_reuses_the_package_stage() {
    let ws = Workspace::new();
    ws.lock_and_fetch();
    // --quiet: warnings and errors only.
    let quiet = ws.rampart_ok(&["--quiet", "build", "profiles/baseline.toml", "--offline", "--out", "out/a"]);
    assert!(stderr(&quiet).lines().all(|l| l.contains(" rampart: warning: ")), "--quiet printed more than warnings:\n{}", stderr(&quiet));
    // The edit: a site profile as `rampart new` writes it, on top of the
    // baseline (the same packages), and its scenario, which passes as written.
    let new = ws.rampart_ok(&["new", "site", "--extends", "baseline"]);
    assert!(stderr(&new).contains("wrote ./profiles/site.toml (extends baseline) and ./vm-tests/site.toml"), "{}", stderr(&new));
    let again = ws.rampart(&["new", "site"]);
    assert!(!again.status.success() && stderr(&again).contains("./profiles/site.toml exists; rampart new replaces nothing"), "{}", stderr(&again));
    ws.rampart_ok(&["lock", "profiles/site.toml"]);
    // On a terminal (script(1) gives it one): spinners with the elapsed
    // time for the build's steps, the boot and each check; finished steps
    // as plain lines without a time stamp.
    let started = Instant::now();
    let command = format!("{} test profiles/site.toml --offline --out out/b", shell_words::quote(env!("CARGO_BIN_EXE_rampart")));
    let output = Command::new("script").args(["-qefc", &command, "/dev/null"]).current_dir(ws.path("")).output().unwrap();
    eprintln!("warm rebuild and the new profile's test took {:.1} s", started.elapsed().as_secs_f64());
    let terminal = String::from_utf8_lossy(&output.stdout);
    eprintln!("{}", tail(&terminal, 30));
    assert!(output.status.success(), "the new profile's test on a terminal failed:\n{terminal}");
    assert!(terminal.contains("reusing cached root tree"), "the package stage was not reused");
    for spinner in ["rampart: disk stage: assembling the UEFI disk (0s)", "rampart: first: booting (SSH within ", "rampart: first: check 1/4 system_reaches_running_with_no_failed_units ("] {
        assert!(terminal.contains(spinner), "no spinner {spinner:?}:\n{terminal:?}");
    }
    assert!(terminal.contains("\x1b[") && terminal.contains("rampart: disk stage: assembling the UEFI disk done in "), "{terminal:?}");
    assert!(!terminal.contains("Z rampart: "), "a terminal's lines carry no time stamp: {terminal:?}");
    assert!(terminal.contains("rampart: all 5 checks passed"), "{terminal}");
    // The HTML report, updated by the test: its checks shown, no audit yet.
    let dom = rendered_in_chromium(&ws.path("out/b/site.report.html"));
    assert!(dom.contains("<b class=\"pass\">5 of 5</b>checks passed in QEMU") && dom.contains("not audited yet"), "{dom}");
    let check = Command::new("sha256sum").args(["--check", "--quiet", "SHA256SUMS"]).current_dir(ws.path("out/b")).output().unwrap();
    assert!(check.status.success(), "SHA256SUMS does not verify after the test: {}", String::from_utf8_lossy(&check.stdout));
    let hostname = Command::new("tar").args(["-xzOf", "out/b/site.rootfs.tar.gz", "etc/hostname"]).current_dir(ws.path("")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&hostname.stdout), "site\n", "the new profile did not reach the image");

    // The cache is not a trust root: a stage tarball with a file added and
    // its stored digest rewritten to match is not used.
    let report = std::fs::read_to_string(ws.path("out/a/baseline.report.json")).unwrap();
    let key = serde_json::from_str::<serde_json::Value>(&report).unwrap()["stages"][0]["settings"]["stage-key"].as_str().unwrap().to_string();
    let forged_cache = private_cache(true);
    let tarball = forged_cache.path().join(format!("rootfs/{key}.tar"));
    let bytes = std::fs::read(&tarball).unwrap();
    std::fs::remove_file(&tarball).unwrap(); // the shared cache's entry stays intact
    std::fs::write(&tarball, bytes).unwrap();
    let planted = ws.path("planted");
    std::fs::create_dir_all(planted.join("etc")).unwrap();
    std::fs::write(planted.join("etc/planted-in-the-cache"), "not built by rampart\n").unwrap();
    let status = Command::new("tar").arg("-rf").arg(&tarball).arg("-C").arg(&planted).arg("./etc/planted-in-the-cache").status().unwrap();
    assert!(status.success());
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(&tarball).unwrap()))
    };
    for stored in ["tar.hmac", "tar.sha256"] {
        let path = tarball.with_extension(stored);
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, format!("{digest}\n")).unwrap();
    }
    let forged_arg = forged_cache.path().to_str().unwrap();
    let output = ws.rampart_ok(&["--verbose", "build", "profiles/baseline.toml", "--offline", "--out", "out/f", "--cache", forged_arg]);
    let message = stderr(&output);
    // In a log: each line stamped with the UTC time; --verbose names every command with its wall time.
    let stamped = |l: &&str| l.len() > 21 && l.as_bytes()[4] == b'-' && l.as_bytes()[10] == b'T' && &l[19..21] == "Z ";
    assert!(message.lines().all(|l| stamped(&l)), "a line without its time:\n{message}");
    assert!(message.lines().any(|l| l.contains(" rampart: timing: ") && l.contains(" mmdebstrap ")), "--verbose did not name mmdebstrap:\n{message}");
    assert!(message.contains(&format!("cached package stage {} does not match its HMAC", tarball.display())) && message.contains("building it again"), "{message}");
    assert!(!message.contains("reusing cached root tree"), "{message}");
    let listing = Command::new("tar").args(["-tzf", "out/f/baseline.rootfs.tar.gz"]).current_dir(ws.path("")).output().unwrap();
    assert!(!String::from_utf8_lossy(&listing.stdout).contains("planted-in-the-cache"), "the forged stage reached the image");

    // A cache directory anyone can write to is refused, naming it: the
    // cache itself, or one of its directories.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(forged_cache.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let output = ws.rampart(&["build", "profiles/baseline.toml", "--offline", "--out", "out/g", "--cache", forged_arg]);
    let message = stderr(&output);
    assert!(!output.status.success(), "a build used a world-writable cache");
    assert!(message.contains(&format!("refusing the cache {forged_arg}: it is writable by its group and others (mode 0777)")), "{message}");
    std::fs::set_permissions(forged_cache.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(forged_cache.path().join("debs"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let output = ws.rampart(&["build", "profiles/baseline.toml", "--offline", "--out", "out/g", "--cache", forged_arg]);
    let message = stderr(&output);
    assert!(!output.status.success(), "a build used a world-writable cache");
    assert!(message.contains(&format!("the cache directory {}/debs", forged_arg)) && message.contains("writable by its group and others (mode 0777)") && message.contains("chmod go-w"), "{message}");
    assert!(!ws.path("out/g").exists());
    // Changing what is installed invalidates the lock, and so the stage.
    let profile = ws.path("profiles/baseline.toml");
    let text = std::fs::read_to_string(&profile).unwrap().replace("drop-docs = true", "drop-docs = false");
    std::fs::write(&profile, text).unwrap();
    let report = std::fs::read_to_string(ws.path("out/a/baseline.report.json")).unwrap();
    let key_before = serde_json::from_str::<serde_json::Value>(&report).unwrap()["stages"][0]["settings"]["stage-key"].clone();
    let cache = private_cache(false);
    ws.rampart_ok(&["build", "profiles/baseline.toml", "--offline", "--out", "out/c", "--cache", cache.path().to_str().unwrap()]);
    let report = std::fs::read_to_string(ws.path("out/c/baseline.report.json")).unwrap();
    let key_after = serde_json::from_str::<serde_json::Value>(&report).unwrap()["stages"][0]["settings"]["stage-key"].clone();
    assert_ne!(key_before, key_after, "drop-docs must change the package stage key");
}

#[test]
#[ignore = "needs root, the network and a Debian mirror: run by scripts/test"]
fn corrupted_cached_deb_is_detected_refused_offline_and_refetched_online() {
    let ws = Workspace::new();
    ws.lock_and_fetch();
    let cache = private_cache(true);
    let lock = std::fs::read_to_string(ws.path("profiles/baseline.lock")).unwrap();
    let parsed: toml::Value = toml::from_str(&lock).unwrap();
    let victim = parsed["package"].as_array().unwrap().iter().find(|p| p["name"].as_str() == Some("openssh-server")).unwrap();
    let sha = victim["sha256"].as_str().unwrap();
    let deb = cache.path().join("debs").join(format!("{sha}.deb"));
    // Break the hard link first: the shared cache stays intact.
    let mut bytes = std::fs::read(&deb).unwrap();
    std::fs::remove_file(&deb).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&deb, &bytes).unwrap();
    let cache_arg = cache.path().to_str().unwrap();
    let output = ws.rampart(&["build", "profiles/baseline.toml", "--offline", "--out", "out/x", "--cache", cache_arg]);
    assert!(!output.status.success(), "an offline build with a damaged .deb must fail");
    let message = stderr(&output);
    assert!(message.contains("openssh-server"), "the error names the package: {message}");
    assert!(message.contains("rampart fetch"), "the error says what to do: {message}");
    assert!(!ws.path("out/x").exists(), "nothing is published by a failed build");
    let output = ws.rampart_ok(&["fetch", "profiles/baseline.toml", "--cache", cache_arg]);
    assert!(stderr(&output).contains("1 downloaded"), "{}", stderr(&output));
    ws.rampart_ok(&["build", "profiles/baseline.toml", "--offline", "--out", "out/x", "--cache", cache_arg]);
}

#[test]
#[ignore = "needs root, the network and a Debian mirror: run by scripts/test"]
fn corrupted_cached_deb_is_refetched_by_an_online_build() {
    let ws = Workspace::new();
    ws.lock_and_fetch();
    let cache = private_cache(true);
    let some_deb = std::fs::read_dir(cache.path().join("debs")).unwrap().next().unwrap().unwrap().path();
    std::fs::remove_file(&some_deb).unwrap();
    std::fs::write(&some_deb, b"truncated").unwrap();
    let output = ws.rampart_ok(&["build", "profiles/baseline.toml", "--out", "out/y", "--cache", cache.path().to_str().unwrap()]);
    assert!(stderr(&output).contains("was damaged"), "{}", stderr(&output));
}

/// `page` as headless Chromium (Debian's) renders it: a screenshot is
/// taken, the console must stay silent (a page that breaks its own
/// Content-Security-Policy is seen to fail), and its DOM is returned.
fn rendered_in_chromium(page: &Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    // A profile of its own: a Chromium of another test would otherwise be
    // handed the page (one browser per profile directory).
    let profile = format!("--user-data-dir={}", dir.path().join("profile").display());
    let chromium = |page: &Path, extra: &[&str]| {
        let output = Command::new("chromium")
            .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--log-level=0", "--v=0", "--window-size=1200,1600"])
            .arg(&profile)
            .args(extra)
            .arg(format!("file://{}", page.display()))
            .output()
            .unwrap();
        assert!(output.status.success(), "chromium failed: {}", String::from_utf8_lossy(&output.stderr));
        let console: Vec<String> = String::from_utf8_lossy(&output.stderr).lines().filter(|l| l.contains(":CONSOLE")).map(str::to_string).collect();
        (String::from_utf8_lossy(&output.stdout).into_owned(), console)
    };
    let broken = dir.path().join("broken.html");
    std::fs::write(&broken, "<!DOCTYPE html><html><head><meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'\"></head><body><script>1</script></body></html>").unwrap();
    assert!(!chromium(&broken, &["--dump-dom"]).1.is_empty(), "chromium's console messages are not seen");
    let shot = dir.path().join("report.png");
    let (_, console) = chromium(page, &[&format!("--screenshot={}", shot.display())]);
    assert!(console.is_empty(), "the page made console messages: {console:?}");
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "no screenshot of the page ({} bytes)", png.len());
    let (dom, console) = chromium(page, &["--dump-dom"]);
    assert!(console.is_empty(), "the page made console messages: {console:?}");
    dom
}

/// The host's own apt sources files (one-line and deb822), as mmdebstrap takes them.
fn host_apt_sources() -> Vec<PathBuf> {
    let mut sources: Vec<PathBuf> = std::fs::read_dir("/etc/apt/sources.list.d")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "list" || x == "sources"))
        .collect();
    if std::fs::metadata("/etc/apt/sources.list").is_ok_and(|m| m.len() > 0) {
        sources.push(PathBuf::from("/etc/apt/sources.list"));
    }
    sources.sort();
    sources
}

#[test]
#[ignore = "needs root, the network and a Debian mirror: run by scripts/test"]
fn debian_package_is_lintian_clean_reproducible_and_installs_into_a_fresh_debian_where_it_locks() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let package = |out: &Path| {
        let output = Command::new(repo.join("scripts/package")).arg(out).output().unwrap();
        let said = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "scripts/package failed (lintian's tags above the end):\n{said}");
        assert!(!said.contains("lintian is not installed") && !said.lines().any(|l| l.starts_with("E: ") || l.starts_with("W: ")), "{said}");
        PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
    };
    let deb = package(&dir.path().join("a"));
    assert_eq!(deb.file_name().unwrap().to_string_lossy(), format!("rampart_{}_amd64.deb", env!("CARGO_PKG_VERSION")));
    let again = package(&dir.path().join("b"));
    assert_eq!(std::fs::read(&deb).unwrap(), std::fs::read(&again).unwrap(), "two packages of one commit differ");

    let listing = Command::new("dpkg-deb").arg("--contents").arg(&deb).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    for file in [
        "./usr/bin/rampart",
        "./usr/share/man/man1/rampart.1.gz",
        "./usr/share/man/man1/rampart-build.1.gz",
        "./usr/share/man/man1/rampart-new.1.gz",
        "./usr/share/bash-completion/completions/rampart",
        "./usr/share/zsh/vendor-completions/_rampart",
        "./usr/share/fish/vendor_completions.d/rampart.fish",
        "./usr/share/rampart/profiles/baseline.toml",
        "./usr/share/rampart/overlays/baseline/etc/motd.tera",
        "./usr/share/doc/rampart/copyright",
    ] {
        assert!(listing.lines().any(|l| l.ends_with(file)), "the package lacks {file}:\n{listing}");
    }
    assert!(!listing.contains(".lock"), "a site's lock was packaged:\n{listing}");

    // `apt install ./rampart_*.deb` in a fresh Debian 12 (mmdebstrap, the
    // host's mirror) brings every host tool; there, rampart runs and locks
    // the packaged baseline against the mirror.
    let cache = Path::new("/var/cache/rampart/package-test");
    std::fs::create_dir_all(cache).unwrap();
    let name = deb.file_name().unwrap().to_string_lossy().into_owned();
    let in_chroot = "mkdir /tmp/site && cp -r /usr/share/rampart/profiles /usr/share/rampart/overlays /tmp/site/ && cd /tmp/site \
        && rampart lock profiles/baseline.toml && test -s profiles/baseline.lock \
        && for tool in mmdebstrap qemu-system-x86_64 qemu-img mkfs.ext4 mcopy sbsign faketime gpgv; do command -v $tool >/dev/null || { echo \"missing: $tool\"; exit 1; }; done \
        && test -f /usr/share/OVMF/OVMF_CODE_4M.secboot.fd && echo rampart-package-test-done";
    let mut command = Command::new("mmdebstrap");
    command
        .args(["--variant=apt", "--skip=essential/unlink", "--skip=download/empty"])
        .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives")
        .arg(format!("--setup-hook=sync-in {} /var/cache/apt/archives/", cache.display()))
        .arg(format!("--customize-hook=copy-in {} /tmp", deb.display()))
        .arg(format!("--customize-hook=chroot \"$1\" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends /tmp/{name}"))
        .arg("--customize-hook=chroot \"$1\" rampart --version")
        .arg(format!("--customize-hook=chroot \"$1\" sh -c {}", shell_words::quote(in_chroot)))
        .arg(format!("--customize-hook=sync-out /var/cache/apt/archives {}", cache.display()))
        .args(["bookworm", "/dev/null"])
        .args(host_apt_sources());
    let started = Instant::now();
    let output = command.output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    eprintln!("mmdebstrap with the package took {:.1} s\n{}", started.elapsed().as_secs_f64(), tail(&said, 15));
    assert!(output.status.success(), "{}", tail(&said, 60));
    assert!(said.contains(&format!("rampart {}", env!("CARGO_PKG_VERSION"))) && said.contains("rampart: wrote profiles/baseline.lock (") && said.contains("rampart-package-test-done"), "{}", tail(&said, 60));
}

#[test]
#[ignore = "needs root, the network and a Debian mirror: run by scripts/test"]
fn unknown_package_fails_the_lock_naming_it() {
    let ws = Workspace::new();
    std::fs::write(
        ws.path("profiles/broken.toml"),
        "name = \"broken\"\nextends = \"baseline.toml\"\n[packages]\ninclude = [\"rampart-no-such-package\"]\n",
    )
    .unwrap();
    let output = ws.rampart(&["lock", "profiles/broken.toml"]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("no package named rampart-no-such-package"), "{message}");
    assert!(message.contains("profiles/broken.toml"), "{message}");
    assert!(!ws.path("profiles/broken.lock").exists(), "no lock is written");
}

#[test]
#[ignore = "needs root, the network and a Debian mirror: run by scripts/test"]
fn build_stopped_or_killed_during_mmdebstrap_leaves_nothing_and_the_next_build_succeeds() {
    use std::os::unix::process::CommandExt;
    let ws = Workspace::new();
    ws.lock_and_fetch();
    let cache = private_cache(false);
    let cache_arg = cache.path().to_str().unwrap().to_string();
    let start = || {
        Command::new(env!("CARGO_BIN_EXE_rampart"))
            .args(["build", "profiles/baseline.toml", "--offline", "--out", "out/k", "--cache", &cache_arg])
            .current_dir(ws.path(""))
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap()
    };
    // Every process below `pid` (rampart runs each command in a process
    // group of its own, so the tree is walked by parent).
    let descendants = |pid: u32| -> Vec<u32> {
        let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|p| {
                let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
                let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
                Some((p, ppid))
            })
            .collect();
        let mut found = vec![pid];
        let mut i = 0;
        while i < found.len() {
            let parent = found[i];
            found.extend(parents.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
            i += 1;
        }
        found.remove(0);
        found
    };
    let command_line = |pid: u32| std::fs::read(format!("/proc/{pid}/cmdline")).map(|c| String::from_utf8_lossy(&c).replace('\0', " ")).unwrap_or_default();
    // Waits until mmdebstrap is at work (and has been for a while).
    let wait_for_mmdebstrap = |child: &mut std::process::Child| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if descendants(child.id()).iter().any(|p| command_line(*p).contains("mmdebstrap")) {
                std::thread::sleep(Duration::from_secs(8));
                return;
            }
            assert!(Instant::now() < deadline, "mmdebstrap never started");
            assert!(child.try_wait().unwrap().is_none(), "the build ended before mmdebstrap started");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // SIGTERM to rampart alone, as a service manager sends it: rampart stops
    // mmdebstrap and all it started (tee, tar, apt, dpkg), removes its work
    // directories and exits 130; nothing it started is left.
    let mut child = start();
    wait_for_mmdebstrap(&mut child);
    let started = descendants(child.id());
    assert!(started.len() > 3, "the package stage runs a process tree: {started:?}");
    // SAFETY: kill(2) on the child we started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let signalled = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(signalled.elapsed() < Duration::from_secs(30), "rampart did not stop within 30 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut said = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut said).unwrap();
    assert_eq!(status.code(), Some(130), "{said}");
    let left: Vec<String> = started.iter().filter(|p| Path::new(&format!("/proc/{p}")).exists()).map(|p| format!("{p}: {}", command_line(*p))).collect();
    assert!(left.is_empty(), "processes the build started outlived it: {left:?}");
    assert!(!ws.path("out/k").exists(), "no artifacts after a stopped build");
    let leftovers: Vec<String> = std::fs::read_dir(cache.path().join("tmp")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(leftovers.is_empty(), "a stopped build removes its scratch: {leftovers:?}");
    // SIGKILL to the whole process group, as a CI timeout would: nothing
    // can clean up, and the next build does.
    let mut child = start();
    wait_for_mmdebstrap(&mut child);
    // SAFETY: kill(2) on a process group we created.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    child.wait().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(!ws.path("out/k").exists(), "no artifacts after a killed build");
    let rootfs_entries = std::fs::read_dir(cache.path().join("rootfs")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(rootfs_entries, 0, "no partial package-stage entry in the cache");
    let output = ws.rampart_ok(&["build", "profiles/baseline.toml", "--offline", "--out", "out/k", "--cache", &cache_arg]);
    assert!(stderr(&output).contains("left behind by an interrupted run"), "leftovers are cleaned: {}", stderr(&output));
    assert!(ws.path("out/k/baseline.qcow2").exists());
    let leftovers: Vec<String> = std::fs::read_dir(cache.path().join("tmp")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(leftovers.is_empty(), "scratch left in the cache: {leftovers:?}");
    // The build tree and mmdebstrap's temporary root may live in memory:
    // neither the killed build's nor the finished one's is left there. A
    // directory a running build holds (another test's, beside this one) is
    // not left: only one whose owner lock nobody holds is.
    let in_memory: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|d| d.map(|e| e.unwrap().path()).filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(".rampart-") && rampart::fsutil::claim_abandoned(p).is_some()).map(|p| p.display().to_string()).collect())
        .unwrap_or_default();
    assert!(in_memory.is_empty(), "scratch left in /dev/shm: {in_memory:?}");
}

#[test]
#[ignore = "needs root, QEMU and a Debian mirror: run by scripts/test"]
fn baseline_scenario_passes_in_qemu() {
    let ws = Workspace::new();
    ws.lock_and_fetch();
    let junit = passing_scenario(&ws, "baseline");
    assert!(junit.contains("machine_ids_differ_between_machines"));
    // The second machine was installed by the offline installer, which the
    // test built because the scenario asks for it, and a too small disk
    // was refused.
    assert!(junit.contains("offline_installer_installs"));
    assert!(junit.contains("offline_installer_refuses_a_disk_too_small_and_writes_nothing"));
    let sums = std::fs::read_to_string(ws.path("out/baseline/SHA256SUMS")).unwrap();
    assert!(sums.contains("  baseline.installer.raw\n"), "the installer is in SHA256SUMS:\n{sums}");
    // The report names the bytes it tested: the qcow2 that SHA256SUMS lists.
    let qcow2_sum = sums.lines().find_map(|l| l.strip_suffix("  baseline.qcow2")).unwrap();
    assert!(junit.contains(&format!("<property name=\"image-sha256\" value=\"{qcow2_sum}\"/>")), "{junit}");
    let installer_log = std::fs::read_to_string(ws.path("out/baseline/baseline-second-installer.serial.log")).unwrap();
    assert!(installer_log.contains("rampart-install: done: baseline installed on /dev/vdb"), "{installer_log}");
    assert!(ws.path("out/baseline/baseline-first.serial.log").exists());
    // vm-tests/patch.toml ran in the same `rampart test`: a machine of the
    // point release's image, patched offline to the profile's lock.
    let patch = std::fs::read_to_string(ws.path("out/baseline/patch.junit.xml")).unwrap();
    assert!(patch.contains("failures=\"0\"") && patch.contains("the_patch_medium_brings_the_machine_to_the_profiles_lock"), "{patch}");
    assert!(ws.path("out/baseline.point-release/baseline.qcow2").exists() && ws.path("out/baseline.point-release.lock").exists());
    // What the machine reported before its patch, compared with the lock
    // offline: it lacked the new lock's kernel (a security update).
    let output = ws.rampart(&["outdated", "profiles/baseline.toml", "--installed", "out/baseline/patch-installed.installed.txt"]);
    assert!(output.status.success(), "rampart outdated --installed failed:\n{}", stderr(&output));
    let listed = String::from_utf8_lossy(&output.stdout).to_string();
    let lock = std::fs::read_to_string(ws.path("profiles/baseline.lock")).unwrap();
    let kernel = lock.split("[[package]]").find(|p| p.contains("name = \"linux-image-cloud-amd64\"")).unwrap();
    let kernel_version = kernel.lines().find_map(|l| l.strip_prefix("version = ")).unwrap().trim_matches('"');
    assert!(listed.starts_with("security updates the machine lacks (") && listed.contains("  linux-image-cloud-amd64 ") && listed.contains(&format!(" -> {kernel_version}\n")), "{listed}");
    // The same locks and keys make the same medium, its seal signed by the
    // site's archive key.
    let media: Vec<Vec<u8>> = ["a", "b"]
        .iter()
        .map(|n| {
            let medium = format!("patch-{n}.img");
            let output = ws.rampart(&["patch", "profiles/baseline.toml", "--from", "out/baseline.point-release.lock", "-o", &medium, "--out", "out/baseline"]);
            assert!(output.status.success(), "rampart patch failed:\n{}", stderr(&output));
            std::fs::read(ws.path(&medium)).unwrap()
        })
        .collect();
    assert!(media[0] == media[1], "two media of the same locks differ");
    let seal = String::from_utf8_lossy(&media[0][1 << 20..2 << 20]).trim_end_matches('\0').to_string();
    std::fs::write(ws.path("seal.asc"), &seal).unwrap();
    let verified = Command::new("gpgv").arg("--keyring").arg(ws.path("out/baseline/baseline.keys/archive.pgp")).arg(ws.path("seal.asc")).output().unwrap();
    assert!(verified.status.success() && seal.contains("Format: rampart-patch 1\n"), "{seal}\n{}", String::from_utf8_lossy(&verified.stderr));
    assert!(!ws.left_running(), "a QEMU outlived the test");

    // The HTML report a reviewer is handed shows both scenarios run
    // against these bytes; the audit is a test of its own.
    let dom = rendered_in_chromium(&ws.path("out/baseline/baseline.report.html"));
    assert!(dom.contains("scenario <b>baseline</b>") && dom.contains("scenario <b>patch</b>") && dom.contains("not audited yet"), "{dom}");
}

#[test]
#[ignore = "needs root, the network and QEMU: run by scripts/test"]
fn baseline_audited_by_lynis_meets_its_floor_with_every_finding_fixed_or_waived() {
    let ws = Workspace::new();
    ws.lock_and_fetch();
    ws.rampart_ok(&["build", "profiles/baseline.toml", "--out", "out/baseline"]);
    let sums = std::fs::read_to_string(ws.path("out/baseline/SHA256SUMS")).unwrap();
    let qcow2_sum = sums.lines().find_map(|l| l.strip_suffix("  baseline.qcow2")).unwrap();
    // The built bytes, audited from inside by Lynis from the lock, on a disk
    // of its own: the profile's audit.min-index holds, and the record names
    // the image it audited.
    let output = ws.rampart(&["audit", "profiles/baseline.toml", "--out", "out/baseline"]);
    eprintln!("{}", String::from_utf8_lossy(&output.stdout));
    assert!(output.status.success(), "rampart audit failed:\n{}", stderr(&output));
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(ws.path("out/baseline/baseline.audit.json")).unwrap()).unwrap();
    assert_eq!(record["image-sha256"].as_str(), Some(qcow2_sum), "{record}");
    assert_eq!(record["lynis-version"].as_str(), Some("3.0.8"), "{record}");
    // The profile's floor held (rampart audit exits 1 below it).
    assert!(record["hardening-index"].as_u64().unwrap() >= 90, "{record}");
    assert!(record["tests-performed"].as_u64().unwrap() > 150, "{record}");
    assert_eq!(record["warnings"].as_array().map(Vec::len), Some(0), "Lynis warns: {record}");
    // The HTML report a reviewer is handed shows the index and the findings.
    let dom = rendered_in_chromium(&ws.path("out/baseline/baseline.report.html"));
    let index = record["hardening-index"].as_u64().unwrap();
    assert!(dom.contains(&format!("id=\"hardening-index\"><b>{index}</b>Lynis 3.0.8 hardening index")), "{dom}");
    assert!(dom.contains("Open findings by group"), "{dom}");
    assert!(!ws.left_running(), "a QEMU outlived the audit");
    // Every suggestion left is waived in README, with the reason: a new
    // finding fails the suite until it is fixed or waived in the open.
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let waivers = audit_waivers(&std::fs::read_to_string(readme).unwrap());
    assert!(waivers.len() > 5, "README's waiver table was not found: {waivers:?}");
    let unwaived: Vec<&serde_json::Value> = record["suggestions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            let test = s["test"].as_str().unwrap_or_default();
            let said = format!("{} {}", s["text"].as_str().unwrap_or_default(), s["details"].as_str().unwrap_or_default());
            !waivers.iter().any(|(id, about)| id == test && said.contains(about.as_str()))
        })
        .collect();
    assert!(unwaived.is_empty(), "Lynis suggestions neither fixed nor waived in README (\"Audit findings we do not fix\"): {unwaived:#?}");
    let report = std::fs::read_to_string(ws.path("out/baseline/baseline.lynis-report.dat")).unwrap();
    assert!(report.contains("hardening_index="), "{report}");
    // KRNL-6000 is waived for one key only: Lynis's log names each sysctl
    // that differs from its scan profile.
    let log = std::fs::read_to_string(ws.path("out/baseline/baseline.lynis.log")).unwrap();
    let differing: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("has a different value than expected in scan profile"))
        .filter_map(|l| l.split("sysctl key ").nth(1)?.split_whitespace().next())
        .collect();
    assert_eq!(differing, ["kernel.modules_disabled"], "sysctls Lynis finds different from its scan profile");
}

#[test]
fn readmes_audit_waivers_name_a_test_and_the_words_of_its_finding() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let waivers = audit_waivers(&readme);
    assert!(waivers.len() >= 10, "{waivers:?}");
    assert!(waivers.iter().all(|(id, about)| !id.is_empty() && !id.contains(' ') && !about.is_empty()), "{waivers:?}");
    assert!(waivers.contains(&("SSH-7408".to_string(), "Port".to_string())), "{waivers:?}");
}

/// README's "Audit findings we do not fix": rows of `| \`TEST-ID\` words | why |`,
/// as (test id, words the finding's text or details must contain).
fn audit_waivers(readme: &str) -> Vec<(String, String)> {
    let Some(start) = readme.find("### Audit findings we do not fix") else { return Vec::new() };
    let section = &readme[start..];
    let section = &section[..section[4..].find("\n#").map(|end| end + 4).unwrap_or(section.len())];
    section
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| {
            let (id, rest) = rest.split_once('`')?;
            let about = rest.split('|').next()?.trim().to_string();
            Some((id.to_string(), about))
        })
        .collect()
}

#[test]
#[ignore = "needs root, the network and QEMU: run by scripts/test"]
fn lab_bastion_scenario_proves_source_ranges_from_two_addresses() {
    let ws = Workspace::new();
    ws.lock_and_fetch();
    let junit = passing_scenario(&ws, "lab-bastion");
    assert!(junit.contains("from_outside_the_ranges_no_tcp_port_answers"));
    // [backups] on the machine's second disk: restore, rotation, full and missing target.
    for case in [
        "backup_damage_restore_compare_gives_back_the_same_files",
        "rotation_keeps_three_daily_two_weekly_two_monthly_archives",
        "a_full_backup_disk_fails_the_unit_and_keeps_earlier_archives",
        "a_missing_backup_disk_fails_the_unit_with_a_clear_message",
        "the_system_disk_and_an_unmounted_directory_are_refused_as_targets",
        "aide_check_stays_clean_after_backups_and_restores",
    ] {
        assert!(junit.contains(case), "{case} did not run");
    }
}

#[test]
#[ignore = "needs root, the network and QEMU: run by scripts/test"]
fn gateway_scenario_forwards_filters_and_admits_only_the_enrolled_vpn_peer() {
    let ws = Workspace::new();
    ws.rampart_ok(&["lock", "profiles/lab-gateway.toml"]);
    ws.rampart_ok(&["fetch", "profiles/lab-gateway.toml"]);
    let junit = passing_scenario_of(&ws, "lab-gateway", "gateway");
    for case in [
        "lan_reaches_wan_through_nat",
        "the_port_forward_reaches_the_dmz_host",
        "from_wan_no_tcp_port_of_the_lan_host_answers",
        "border_port_drops_are_logged_on_the_gateway",
        "a_full_scan_of_the_gateway_from_wan_finds_only_the_forwards",
        "a_lan_source_arriving_on_wan_is_dropped_and_logged",
        "from_lan_ssh_and_dns_answer",
        "dhcp_answers_lan",
        "lan_hosts_take_ipv6_from_the_gateways_advertisements",
        "ssh_answers_an_enrolled_vpn_peer_only",
        "no_radio_module_loads_and_rfkill_blocks",
    ] {
        assert!(junit.contains(case), "{case} did not run");
    }
    let report = "out/lab-gateway/lab-gateway.report.json";
    let gateway = stage_record(&ws, report, "gateway");
    assert_eq!(gateway["settings"]["ssh-from"], serde_json::json!(["lan", "mgmt", "wg0"]));
    let wireless = stage_record(&ws, report, "wireless");
    assert!(wireless["settings"]["modules-refused"].as_u64().unwrap() > 100, "the generic kernel's radios: {wireless}");
    // Nothing of the lab outlives the run: its namespaces are gone.
    let left = ws.namespaces_left();
    assert!(left.is_empty(), "lab namespaces left: {left:?}");
}

#[test]
#[ignore = "needs root, the network and QEMU: run by scripts/test"]
fn mail_gateway_scenario_defangs_refuses_viruses_and_spam_and_relays_for_its_domains_only() {
    let ws = Workspace::new();
    // The test's own signature database, made with ClamAV's sigtool.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let made = Command::new(repo.join("scripts/lab-signatures")).arg(ws.path("profiles/lab-mail-gateway.signatures")).output().unwrap();
    assert!(made.status.success(), "scripts/lab-signatures: {}", stderr(&made));
    ws.rampart_ok(&["lock", "profiles/lab-mail-gateway.toml"]);
    ws.rampart_ok(&["fetch", "profiles/lab-mail-gateway.toml"]);
    let junit = passing_scenario_of(&ws, "lab-mail-gateway", "mail-gateway");
    for case in [
        "an_exe_attachment_arrives_renamed_txt_at_the_internal_host",
        "a_message_carrying_eicar_is_refused",
        "a_gtube_message_is_refused_as_spam",
        "mail_for_other_domains_and_for_the_gateways_own_users_is_refused",
        "with_a_filter_down_the_sender_is_told_to_try_later",
        "each_filter_runs_as_its_own_user_on_a_socket_only_postfix_may_use",
    ] {
        assert!(junit.contains(case), "{case} did not run");
    }
    // The signatures' digests, in the report and in the manifest.
    let digest = "8e0ed6eee188c34bceb801b5880b8604ab5d547e408c9728b4e44314b294866c";
    let gateway = stage_record(&ws, "out/lab-mail-gateway/lab-mail-gateway.report.json", "mail-gateway");
    assert_eq!(gateway["settings"]["virus-databases"]["files"][0]["sha256"], digest);
    assert_eq!(gateway["settings"]["virus-databases"]["signatures"], 1);
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(ws.path("out/lab-mail-gateway/lab-mail-gateway.manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["build-inputs"][0]["files"][0]["sha256"], digest, "{}", manifest["build-inputs"]);
    // The air-gapped site gets the signatures in the bundle, beside the profile.
    ws.rampart_ok(&["bundle", "profiles/lab-mail-gateway.toml", "-o", "gateway.bundle"]);
    let listing = Command::new("tar").args(["-tf"]).arg(ws.path("gateway.bundle")).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.lines().any(|l| l.ends_with("/lab-mail-gateway.signatures/lab-eicar.hdb")), "{listing}");

    // A corrupt database: the image's clamscan refuses it, the build fails
    // naming the field, and nothing is written.
    std::fs::create_dir_all(ws.path("profiles/corrupt.signatures")).unwrap();
    std::fs::write(ws.path("profiles/corrupt.signatures/site.ndb"), "Broken.Sig:0:*:zz-not-hex\n").unwrap();
    std::fs::write(ws.path("profiles/lab-mail-gateway-corrupt.toml"), "name = \"lab-mail-gateway-corrupt\"\nextends = \"lab-mail-gateway.toml\"\n\n[mail-gateway]\nvirus-databases = \"corrupt.signatures\"\n").unwrap();
    ws.rampart_ok(&["lock", "profiles/lab-mail-gateway-corrupt.toml"]);
    let output = ws.rampart(&["build", "profiles/lab-mail-gateway-corrupt.toml", "--out", "out/corrupt"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("lab-mail-gateway-corrupt.toml:5:19: mail-gateway.virus-databases: the image's clamscan refuses"), "{message}");
    assert!(!ws.path("out/corrupt").exists(), "a failed build left out/corrupt");
}

#[test]
#[ignore = "needs root, the network and QEMU: run by scripts/test"]
fn build_host_scenario_proves_the_hardened_toolchain_defaults_in_qemu() {
    let ws = Workspace::new();
    ws.rampart_ok(&["lock", "profiles/build-host.toml"]);
    ws.rampart_ok(&["fetch", "profiles/build-host.toml"]);
    let junit = passing_scenario(&ws, "build-host");
    assert!(junit.contains("stack_smash_is_stopped_at_run_time"));
    let toolchain = stage_record(&ws, "out/build-host/build-host.report.json", "toolchain");
    assert_eq!(toolchain["applied"], true);
    assert_eq!(toolchain["settings"]["specs"][0], "/usr/lib/gcc/x86_64-linux-gnu/12/specs");
    assert!(!ws.left_running(), "a QEMU outlived the test");
}

#[test]
#[ignore = "needs root, the network and QEMU: run by scripts/test"]
fn sealed_scenario_encrypts_the_data_to_the_machines_tpm() {
    let ws = Workspace::new();
    ws.rampart_ok(&["lock", "profiles/sealed.toml"]);
    ws.rampart_ok(&["fetch", "profiles/sealed.toml"]);
    let junit = passing_scenario(&ws, "sealed");
    assert!(junit.contains("the_data_is_sealed_to_this_machines_tpm"));
    assert_eq!(stage_record(&ws, "out/sealed/sealed.report.json", "encryption")["applied"], true);
}

#[test]
#[ignore = "needs root and QEMU: run by scripts/test"]
fn image_that_does_not_boot_fails_within_its_timeout_with_the_console_shown() {
    let ws = Workspace::built_baseline_with_scenario("noboot", "boot-timeout = 45\n");
    // Wipe the boot loader: the firmware finds nothing to boot.
    let raw = ws.path("out/baseline/baseline.raw");
    let status = Command::new("dd").args(["if=/dev/zero", "bs=1M", "seek=1", "count=128", "conv=notrunc", "status=none"]).arg(format!("of={}", raw.display())).status().unwrap();
    assert!(status.success());
    let qcow2 = ws.path("out/baseline/baseline.qcow2");
    let status = Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(&qcow2).status().unwrap();
    assert!(status.success());
    let started = Instant::now();
    let output = ws.rampart(&["test", "profiles/baseline.toml", "--scenario", "noboot", "--out", "out/baseline", "--accel", "tcg"]);
    assert!(!output.status.success());
    assert!(started.elapsed() < Duration::from_secs(150), "the failure came within the timeout");
    let junit = std::fs::read_to_string(ws.path("out/baseline/noboot.junit.xml")).unwrap();
    assert!(junit.contains("did not accept SSH logins within 45 s"), "{junit}");
    assert!(junit.contains("serial console"), "the console tail is shown: {junit}");
    // The console log the failure names is kept next to the artifacts.
    assert!(junit.contains("(out/baseline/noboot-machine.serial.log) ---"), "{junit}");
    let console = String::from_utf8_lossy(&std::fs::read(ws.path("out/baseline/noboot-machine.serial.log")).unwrap()).into_owned();
    assert!(console.contains("BdsDxe"), "the kept log is the firmware's console: {console}");
    assert!(!ws.left_running(), "a QEMU outlived the test");
}

#[test]
#[ignore = "needs root and QEMU: run by scripts/test"]
fn interrupted_test_run_stops_qemu_and_removes_its_network_and_work_directory() {
    let ws = Workspace::built_baseline_with_scenario("interrupted", "isolated-network = true\n");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["test", "profiles/baseline.toml", "--scenario", "interrupted", "--out", "out/baseline", "--accel", "tcg"])
        .current_dir(ws.path(""))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let namespaces = || String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).into_owned();
    let lab = format!("rampart-{pid}-lab");
    let outside = format!("rampart-{pid}-outside");
    let pids_in = |namespace: &str| -> Vec<u32> {
        let output = Command::new("ip").args(["netns", "pids", namespace]).output().unwrap();
        String::from_utf8_lossy(&output.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect()
    };
    let command_line = |pid: u32| std::fs::read(format!("/proc/{pid}/cmdline")).map(|c| String::from_utf8_lossy(&c).replace('\0', " ")).unwrap_or_default();
    // Interrupted while the machine boots: its QEMU runs in the run's own
    // lab namespace, dnsmasq in its second host's.
    let deadline = Instant::now() + Duration::from_secs(180);
    let (qemu, helpers) = loop {
        if namespaces().contains(&lab) {
            let qemu = pids_in(&lab).into_iter().find(|p| command_line(*p).starts_with("qemu-system-x86_64 "));
            let helpers = pids_in(&outside);
            if let (Some(qemu), false) = (qemu, helpers.is_empty()) {
                break (qemu, helpers);
            }
        }
        assert!(Instant::now() < deadline, "no QEMU started in {lab}");
        assert!(child.try_wait().unwrap().is_none(), "rampart ended before its machine booted");
        std::thread::sleep(Duration::from_millis(200));
    };
    // The run's work directory, from a path on QEMU's command line.
    let work = command_line(qemu)
        .split([' ', '=', ','])
        .find_map(|word| {
            let path = &word[word.find('/')?..];
            let end = path.find("rampart-test-")? + path[path.find("rampart-test-")?..].find('/')?;
            Some(path[..end].to_string())
        })
        .unwrap();
    assert!(Path::new(&work).is_dir(), "{work}");
    // Everything the run started in its namespaces: QEMU, its SSH probes, dnsmasq.
    let started: Vec<u32> = pids_in(&lab).into_iter().chain(helpers).chain([qemu]).collect();
    // SAFETY: kill(2) on the child we started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGINT) }, 0);
    let signalled = Instant::now();
    // Well under a boot: the waits end at the signal, not when the guest answers.
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if signalled.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            panic!("rampart did not stop within 5 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted by a signal"), "{stderr}");
    for process in started {
        assert!(!Path::new(&format!("/proc/{process}")).exists(), "process {process} outlived the interrupted run");
    }
    let left = namespaces();
    assert!(!left.contains(&lab) && !left.contains(&outside), "the test network is left: {left}");
    assert!(!Path::new(&work).exists(), "the work directory {work} is left");
    assert!(!ws.path("out/baseline/interrupted.junit.xml").exists(), "an interrupted run is no verdict");
}

#[test]
#[ignore = "needs root, the network and a Debian mirror: run by scripts/test"]
fn unreachable_mirror_fails_the_lock_with_apts_reason_and_keeps_the_log() {
    let ws = Workspace::new();
    let tmp = ws.private_tmpdir();
    // Port 9 on loopback: nothing listens there, so the connection is refused.
    let output = ws.rampart_with_env(&["lock", "profiles/baseline.toml", "--mirror", "http://127.0.0.1:9/debian"], &[("TMPDIR", &tmp)]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("while downloading the package indices from the mirror"), "{message}");
    assert!(message.contains("Could not connect to 127.0.0.1:9"), "apt's reason is shown:\n{message}");
    let kept = message
        .lines()
        .find_map(|l| l.split_once(" rampart: the log of `rampart lock` is kept in ").map(|(stamp, path)| {
            assert!(stamp.ends_with('Z') && stamp.len() == 20, "a log line starts with its UTC time: {l}");
            path
        }))
        .unwrap_or_else(|| panic!("the log is named:\n{message}"));
    assert!(Path::new(kept).starts_with(&tmp), "{kept}");
    assert!(std::fs::read_to_string(kept).unwrap().contains("Could not connect"), "the kept log holds apt's output");
    let log_name = Path::new(kept).file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(Workspace::left_in(&tmp), vec![log_name], "only the log is kept");
    assert!(!ws.path("profiles/baseline.lock").exists(), "no lock is written");
}
