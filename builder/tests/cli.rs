//! The command line's exact error messages for bad profiles. Each case is a
//! profile file in tests/cases/ with the message it must produce beside it
//! (`NAME.stderr`). Set RAMPART_BLESS=1 to rewrite the expected messages.

use std::path::Path;
use std::process::Command;

fn check(case: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let profile = format!("tests/cases/{case}.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["lock", &profile])
        .current_dir(dir)
        .output()
        .expect("rampart runs");
    assert_eq!(output.status.code(), Some(1), "{case}: a bad profile exits 1");
    let stderr = String::from_utf8(output.stderr).unwrap();
    let expected_path = dir.join(format!("tests/cases/{case}.stderr"));
    if std::env::var_os("RAMPART_BLESS").is_some() {
        std::fs::write(&expected_path, &stderr).unwrap();
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
    assert_eq!(stderr, expected, "{case}: stderr differs from {}", expected_path.display());
}

#[test]
fn bad_toml_is_refused_with_its_position() {
    check("bad-toml");
}

#[test]
fn unknown_field_is_refused_with_the_expected_fields() {
    check("unknown-field");
}

#[test]
fn wrong_type_is_refused() {
    check("wrong-type");
}

#[test]
fn missing_extends_target_is_refused() {
    check("missing-extends");
}

#[test]
fn extends_cycle_is_refused() {
    check("cycle-a");
}

#[test]
fn port_out_of_range_is_refused() {
    check("bad-port");
}

#[test]
fn malformed_cidr_is_refused() {
    check("bad-cidr");
}

#[test]
fn bad_username_is_refused() {
    check("bad-username");
}

#[test]
fn help_documents_every_command() {
    let output = Command::new(env!("CARGO_BIN_EXE_rampart")).arg("--help").output().unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    for command in ["lock", "fetch", "build", "test"] {
        assert!(text.contains(&format!("  {command} ")), "--help lacks {command}:\n{text}");
    }
}

#[test]
fn build_refuses_to_replace_a_directory_that_is_not_its_output_before_any_work() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = tempfile::tempdir().unwrap();
    std::fs::write(out.path().join("precious.txt"), "keep me").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["build", "profiles/baseline.toml", "--offline", "--mirror", "http://mirror.invalid/debian", "--out"])
        .arg(out.path())
        .current_dir(&repo)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("refusing to replace") && stderr.contains("not a rampart output directory"), "{stderr}");
    assert_eq!(std::fs::read_to_string(out.path().join("precious.txt")).unwrap(), "keep me");
}

#[test]
fn log_host_without_port_is_refused() {
    check("bad-log-host");
}

#[test]
fn journal_cap_out_of_range_is_refused_naming_the_field() {
    check("journal-cap-too-small");
}

#[test]
fn integrity_rule_that_is_not_a_selection_line_is_refused() {
    check("bad-integrity-rule");
}

#[test]
fn unknown_elf_audit_property_is_refused_with_the_known_ones() {
    check("elf-audit-unknown-property");
}

#[test]
fn unknown_sysctl_key_is_refused_with_the_closest_known_one() {
    check("unknown-sysctl");
}

#[test]
fn sysctl_value_out_of_the_kernels_range_is_refused() {
    check("sysctl-out-of-range");
}

#[test]
fn text_for_a_numeric_sysctl_is_refused() {
    check("sysctl-not-integers");
}

#[test]
fn file_that_is_not_a_bundle_is_refused_before_anything_is_built() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let scratch = tempfile::tempdir().unwrap();
    let cache = scratch.path().join("cache");
    let out = scratch.path().join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["build", "--bundle", "tests/cases/bad-port.toml", "--cache"])
        .arg(&cache)
        .arg("--out")
        .arg(&out)
        .current_dir(dir)
        .output()
        .expect("rampart runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.starts_with("rampart: error: bundle tests/cases/bad-port.toml refused: "), "{stderr}");
    assert!(!out.exists() && !cache.exists(), "nothing is made for a file that is not a bundle");
}

#[test]
fn bundle_with_another_sha256_is_refused_before_it_is_read() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let scratch = tempfile::tempdir().unwrap();
    let cache = scratch.path().join("cache");
    let zeros = "0".repeat(64);
    let output = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["build", "--bundle", "tests/cases/bad-port.toml", "--sha256", &zeros, "--cache"])
        .arg(&cache)
        .current_dir(dir)
        .output()
        .expect("rampart runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("refused: its sha256 is ") && stderr.contains(&format!("but --sha256 says {zeros}")), "{stderr}");
    assert!(!stderr.contains("not a tar archive") && !cache.exists(), "nothing was read or made: {stderr}");
    let output = Command::new(env!("CARGO_BIN_EXE_rampart")).args(["build", "profiles/baseline.toml", "--sha256", &zeros]).current_dir(dir).output().unwrap();
    assert_eq!(output.status.code(), Some(2), "--sha256 needs --bundle");
}

#[test]
fn backups_take_a_device_or_a_directory_not_both() {
    check("backups-device-and-directory");
}

#[test]
fn backups_without_a_target_are_refused() {
    check("backups-without-target");
}

#[test]
fn banner_with_an_os_name_escape_is_refused() {
    check("banner-with-os-escape");
}

#[test]
fn audit_rule_auditctl_would_refuse_is_refused_naming_the_rule() {
    check("audit-rule-auditctl-refuses");
}

#[test]
fn su_group_that_already_grants_other_rights_is_refused() {
    check("su-group-too-wide");
}

#[test]
fn audit_partition_smaller_than_auditds_logs_is_refused() {
    check("audit-partition-too-small");
}

#[test]
fn partition_for_a_mount_point_cis_does_not_name_is_refused() {
    check("partition-not-cis");
}

#[test]
fn ntp_server_with_a_port_is_refused() {
    check("ntp-server-with-port");
}

#[test]
fn unknown_sandboxing_directive_is_refused_naming_the_field_and_nothing_is_written() {
    check("unknown-sandboxing-directive");
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases/unknown-sandboxing-directive.lock");
    assert!(!lock.exists(), "a refused profile gets no lock");
}

fn rampart(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rampart")).args(args).current_dir(Path::new(env!("CARGO_MANIFEST_DIR"))).output().expect("rampart runs")
}

#[test]
fn patch_from_a_file_that_is_not_a_lock_is_refused_naming_it_and_writes_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    let from = scratch.path().join("old.lock");
    std::fs::write(&from, "lock-version = 1\nnot a lock\n").unwrap();
    let medium = scratch.path().join("medium.img");
    let out = scratch.path().join("out");
    let output = rampart(&["patch", "../profiles/baseline.toml", "--from", from.to_str().unwrap(), "-o", medium.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains(&format!("--from {}", from.display())) && stderr.contains("is not a valid rampart lock"), "{stderr}");
    assert!(!medium.exists() && !out.exists(), "nothing is written");
}

#[test]
fn a_machines_package_report_with_a_bad_line_is_refused_naming_file_and_line() {
    let scratch = tempfile::tempdir().unwrap();
    let report = scratch.path().join("m1.txt");
    std::fs::write(&report, "bash\t5.2.15-2+b8\nopenssl 3.0.2\n").unwrap();
    let output = rampart(&["outdated", "../profiles/baseline.toml", "--installed", report.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains(&format!("{}:2: \"openssl 3.0.2\" is not a line of `dpkg-query -W`", report.display())), "{stderr}");
}

#[test]
fn an_interface_role_given_twice_is_refused() {
    check("gateway-role-twice");
}

#[test]
fn a_port_forward_outside_the_dmz_is_refused() {
    check("gateway-forward-outside-dmz");
}

#[test]
fn overlapping_zone_prefixes_are_refused() {
    check("gateway-zones-overlap");
}

#[test]
fn a_wireguard_key_that_is_not_32_bytes_is_refused() {
    check("vpn-key-not-32-bytes");
}

#[test]
fn a_peer_covering_the_whole_internet_is_refused_without_allow_default_route() {
    check("vpn-peer-whole-internet");
}

#[test]
fn mail_errors_name_their_field() {
    check("mail-to-without-smarthost");
    check("mail-smarthost-not-host-port");
    check("mail-to-not-an-address");
    check("password-audit-minutes-out-of-range");
}

#[test]
fn completions_name_every_command_and_bash_reads_its_script() {
    for shell in ["bash", "zsh", "fish"] {
        let output = Command::new(env!("CARGO_BIN_EXE_rampart")).args(["completions", shell]).output().expect("rampart runs");
        assert!(output.status.success(), "{shell}: {}", String::from_utf8_lossy(&output.stderr));
        let text = String::from_utf8(output.stdout).unwrap();
        for command in ["lock", "fetch", "outdated", "build", "bundle", "patch", "verify", "test", "audit", "completions", "man", "scenario", "installer", "min-index"] {
            assert!(text.contains(command), "the {shell} completions lack {command}");
        }
        if shell == "bash" {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("rampart.bash"), &text).unwrap();
            let checked = Command::new("bash").arg("-n").arg(dir.path().join("rampart.bash")).output().unwrap();
            assert!(checked.status.success(), "bash -n: {}", String::from_utf8_lossy(&checked.stderr));
        }
    }
    let refused = Command::new(env!("CARGO_BIN_EXE_rampart")).args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(refused.status.code(), Some(2), "clap refuses an unknown shell");
}

#[test]
fn man_writes_a_page_for_rampart_and_each_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    let output = Command::new(env!("CARGO_BIN_EXE_rampart")).arg("man").arg(&out).output().expect("rampart runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let mut names: Vec<String> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(
        names,
        ["rampart-audit.1", "rampart-build.1", "rampart-bundle.1", "rampart-completions.1", "rampart-fetch.1", "rampart-lock.1", "rampart-man.1", "rampart-new.1", "rampart-outdated.1", "rampart-patch.1", "rampart-test.1", "rampart-verify.1", "rampart.1"]
    );
    let build = std::fs::read_to_string(out.join("rampart-build.1")).unwrap();
    assert!(build.starts_with(".ie ") && build.contains(".TH rampart-build 1") && build.contains("\\-\\-offline"), "{build}");
}

/// Every string of a YAML document.
fn yaml_strings(node: &yaml_rust2::Yaml, out: &mut Vec<String>) {
    use yaml_rust2::Yaml;
    match node {
        Yaml::String(s) => out.push(s.clone()),
        Yaml::Array(items) => items.iter().for_each(|i| yaml_strings(i, out)),
        Yaml::Hash(map) => map.iter().for_each(|(k, v)| {
            yaml_strings(k, out);
            yaml_strings(v, out);
        }),
        _ => {}
    }
}

#[test]
fn the_ci_examples_parse_and_every_rampart_command_in_them_is_one_rampart_takes() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for example in ["github-actions.yml", "gitlab-ci.yml"] {
        let text = std::fs::read_to_string(repo.join("ci-examples").join(example)).unwrap();
        let docs = yaml_rust2::YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{example}: {e}"));
        let mut strings = Vec::new();
        docs.iter().for_each(|d| yaml_strings(d, &mut strings));
        let mut commands = Vec::new();
        for line in strings.iter().flat_map(|s| s.lines()) {
            for (at, _) in line.match_indices("bin/rampart ") {
                let rest = &line[at + "bin/rampart ".len()..];
                let end = rest.find(|c| ";|&)".contains(c)).unwrap_or(rest.len());
                let command = rest[..end]
                    .replace("${{ matrix.shard }}", "1")
                    .replace("$CI_NODE_INDEX", "1")
                    .replace("$CI_NODE_TOTAL", "3")
                    .replace("$profile", "profiles/baseline.toml");
                commands.push(shell_words::split(&command).unwrap_or_else(|e| panic!("{example}: {command}: {e}")));
            }
        }
        for wanted in [["lock"], ["fetch"], ["test"]] {
            assert!(commands.iter().any(|c| c.first().map(String::as_str) == Some(wanted[0])), "{example} has no rampart {}", wanted[0]);
        }
        assert!(commands.iter().any(|c| c.contains(&"--shard".to_string()) && c.contains(&"--offline".to_string())), "{example}: the test jobs run a share offline");
        for command in &commands {
            // clap reads every option and value before it gets to --help: an
            // option rampart does not take, or a bad value, fails here
            let output = Command::new(env!("CARGO_BIN_EXE_rampart")).args(command).arg("--help").current_dir(&repo).output().expect("rampart runs");
            assert!(output.status.success(), "{example}: rampart {}: {}", command.join(" "), String::from_utf8_lossy(&output.stderr));
        }
    }
}

#[test]
fn test_list_and_shard_share_the_scenarios_out() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let list = |args: &[&str]| -> Vec<serde_json::Value> {
        let output = Command::new(env!("CARGO_BIN_EXE_rampart")).args(["test", "--list", "--json"]).args(args).current_dir(&repo).output().expect("rampart runs");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap().as_array().unwrap().clone()
    };
    let all = list(&[]);
    assert!(all.iter().any(|p| p["profile"] == "profiles/baseline.toml" && p["scenario"] == "patch"), "{all:?}");
    let mut shared: Vec<serde_json::Value> = (1..=3).flat_map(|i| list(&["--shard", &format!("{i}/3")])).collect();
    let key = |p: &serde_json::Value| format!("{} {}", p["profile"], p["scenario"]);
    shared.sort_by_key(key);
    let mut everything = all.clone();
    everything.sort_by_key(key);
    assert_eq!(shared, everything, "the three shares hold every pair once");
    let only = list(&["profiles/lab-bastion.toml"]);
    assert_eq!(only.len(), 1, "{only:?}");
    let refused = Command::new(env!("CARGO_BIN_EXE_rampart")).args(["test", "--shard", "4/3", "--list"]).current_dir(&repo).output().unwrap();
    assert_eq!(refused.status.code(), Some(2), "clap refuses a share that does not exist");
}

#[test]
fn mail_gateway_errors_name_their_field() {
    check("mail-gateway-relay-domain-not-a-domain");
    check("mail-gateway-unknown-attachment-action");
    check("mail-gateway-without-port-25");
    check("mail-gateway-without-databases");
}

/// A directory with the repository's baseline profile and its overlays.
fn site_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::create_dir(dir.path().join("profiles")).unwrap();
    std::fs::copy(repo.join("profiles/baseline.toml"), dir.path().join("profiles/baseline.toml")).unwrap();
    std::os::unix::fs::symlink(repo.join("overlays"), dir.path().join("overlays")).unwrap();
    dir
}

#[test]
fn new_writes_a_profile_and_its_scenario_and_replaces_nothing() {
    let dir = site_dir();
    let at = dir.path().to_str().unwrap();
    let output = rampart(&["new", "web", "--dir", at]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let profile = std::fs::read_to_string(dir.path().join("profiles/web.toml")).unwrap();
    assert!(profile.contains("extends = \"baseline.toml\"") && profile.contains("README.md"), "{profile}");
    assert!(std::fs::read_to_string(dir.path().join("vm-tests/web.toml")).unwrap().contains("profile = \"web\""));

    // An existing scenario of that name: refused, and no profile written either.
    std::fs::write(dir.path().join("vm-tests/api.toml"), "mine\n").unwrap();
    let output = rampart(&["new", "api", "--dir", at]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("vm-tests/api.toml exists; rampart new replaces nothing"), "{stderr}");
    assert!(!dir.path().join("profiles/api.toml").exists());
    assert_eq!(std::fs::read_to_string(dir.path().join("vm-tests/api.toml")).unwrap(), "mine\n");

    for (args, said) in [
        (vec!["new", "Web"], "NAME: \"Web\" is not a valid profile name"),
        (vec!["new", "db", "--extends", "nope"], "--extends nope: there is no "),
        (vec!["new", "db", "--extends", "../etc/passwd"], "--extends: \"../etc/passwd\" is not a valid profile name"),
    ] {
        let output = rampart(&[&args[..], &["--dir", at]].concat());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.code() == Some(1) && stderr.contains(said), "{args:?}: {stderr}");
    }
    assert!(!dir.path().join("profiles/db.toml").exists() && !dir.path().join("vm-tests/db.toml").exists());
}
