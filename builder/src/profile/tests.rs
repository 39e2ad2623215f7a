//! Profile parsing, merging and the exact error messages users see.

use super::*;

/// Writes `files` into a fresh `profiles/` directory and loads the first one.
fn load_files(files: &[(&str, &str)]) -> (tempfile::TempDir, Result<Profile, ProfileError>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("profiles")).unwrap();
    std::fs::create_dir_all(dir.path().join("overlays/base")).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join("profiles").join(name), text).unwrap();
    }
    let path = dir.path().join("profiles").join(files[0].0);
    let result = load(&path);
    (dir, result)
}

/// Loads `files` and checks the error message, with the temp dir shown as `$DIR`.
fn check_error(files: &[(&str, &str)], expected: &str) {
    let (dir, result) = load_files(files);
    let error = result.expect_err("the profile should be refused").to_string();
    let shown = error.replace(&dir.path().display().to_string(), "$DIR");
    assert_eq!(shown, expected);
}

fn check_ok(files: &[(&str, &str)]) -> Profile {
    let (_dir, result) = load_files(files);
    result.unwrap()
}

#[test]
fn bad_toml_names_file_line_and_column() {
    check_error(
        &[("web.toml", "name = \"web\"\n[image\nhostname = \"x\"\n")],
        "$DIR/profiles/web.toml:2:7: invalid table header: expected `.`, `]`",
    );
}

#[test]
fn unknown_field_lists_the_expected_ones() {
    check_error(
        &[("web.toml", "name = \"web\"\n\n[image]\n  hostnme = \"x\"\n")],
        "$DIR/profiles/web.toml:4:3: unknown field `hostnme`, expected one of `hostname`, `size`, `partitions`",
    );
}

#[test]
fn wrong_type_names_the_field() {
    check_error(
        &[("web.toml", "name = \"web\"\n[ssh]\nport = \"22\"\n")],
        "$DIR/profiles/web.toml:3:8: invalid type: string \"22\", expected i64",
    );
}

#[test]
fn missing_extends_target_points_at_extends() {
    check_error(
        &[("web.toml", "name = \"web\"\nextends = \"nope.toml\"\n")],
        "$DIR/profiles/web.toml:2:11: cannot read profile $DIR/profiles/nope.toml: no such file",
    );
}

#[test]
fn extends_cycle_is_shown_in_full() {
    check_error(
        &[("a.toml", "name = \"a\"\nextends = \"b.toml\"\n"), ("b.toml", "extends = \"a.toml\"\n")],
        "$DIR/profiles/b.toml:1:11: extends forms a cycle: $DIR/profiles/a.toml -> $DIR/profiles/b.toml -> $DIR/profiles/a.toml",
    );
}

#[test]
fn port_out_of_range_is_refused() {
    check_error(
        &[("web.toml", "name = \"web\"\n[ssh]\nport = 70000\n")],
        "$DIR/profiles/web.toml:3:8: ssh.port: 70000 is not a port (1 to 65535)",
    );
}

#[test]
fn malformed_cidr_is_refused() {
    check_error(
        &[("web.toml", "name = \"web\"\n[ssh]\nallow-from = [\"10.0.0.0/8\", \"10.1.2.3/16\"]\n")],
        "$DIR/profiles/web.toml:3:29: ssh.allow-from: \"10.1.2.3/16\" has host bits set; did you mean the network address?",
    );
    check_error(
        &[("web.toml", "name = \"web\"\n[ssh]\nallow-from = [\"10.0.0/8\"]\n")],
        "$DIR/profiles/web.toml:3:15: ssh.allow-from: \"10.0.0/8\" is not an address range in CIDR form (e.g. 192.0.2.0/24 or 2001:db8::/32)",
    );
}

#[test]
fn bad_username_is_refused() {
    check_error(
        &[("web.toml", "name = \"web\"\n[[users]]\nname = \"Admin\"\n")],
        "$DIR/profiles/web.toml:3:8: users.name: \"Admin\" is not a valid user or group name (start with a-z or _, then a-z, 0-9, _ or -, at most 32)",
    );
}

#[test]
fn root_cannot_be_an_admin_account() {
    check_error(
        &[("web.toml", "name = \"web\"\n[[users]]\nname = \"root\"\n")],
        "$DIR/profiles/web.toml:3:8: users.name: root cannot be an admin account; root login stays locked",
    );
}

#[test]
fn missing_name_is_refused() {
    check_error(&[("web.toml", "description = \"x\"\n")], "$DIR/profiles/web.toml: missing field `name` (every profile names itself)");
}

#[test]
fn snapshot_needs_a_placeholder() {
    check_error(
        &[("web.toml", "name = \"web\"\n[mirror]\nurl = \"http://mirror.example/debian\"\nsnapshot = \"20250520T000000Z\"\n")],
        "$DIR/profiles/web.toml:4:12: mirror.snapshot: snapshot 20250520T000000Z needs mirror urls with a {snapshot} placeholder, and http://mirror.example/debian has none",
    );
}

#[test]
fn unknown_overlay_tree_is_refused() {
    check_error(
        &[("web.toml", "name = \"web\"\n[overlays]\ntrees = [\"nope\"]\n")],
        "$DIR/profiles/web.toml:3:10: overlays.trees: no overlay tree nope (looked for $DIR/profiles/../overlays/nope)",
    );
}

#[test]
fn defaults_make_a_bootable_server() {
    let profile = check_ok(&[("web.toml", "name = \"web\"\n")]);
    assert_eq!(profile.kernel.package.as_str(), "linux-image-cloud-amd64");
    assert_eq!(profile.image.hostname.as_str(), "web");
    assert_eq!(profile.mirror.suite, "bookworm");
    assert_eq!(profile.mirror.security_suite.as_deref(), Some("bookworm-security"));
    assert_eq!(profile.ssh.port, Port::SSH);
    assert!(profile.packages.drop_docs);
}

#[test]
fn extends_merges_base_then_child() {
    let profile = check_ok(&[
        (
            "web.toml",
            "name = \"web\"\nextends = \"base.toml\"\n[packages]\ninclude = [\"nginx\"]\nexclude = [\"vim\"]\n[image]\nhostname = \"web1\"\n[[users]]\nname = \"ops\"\ngroups = [\"adm\"]\n[variables]\ncolour = \"red\"\n",
        ),
        (
            "base.toml",
            "name = \"base\"\ndescription = \"the base\"\n[packages]\ninclude = [\"openssh-server\", \"vim\"]\n[image]\nhostname = \"base\"\nsize = \"4G\"\n[[users]]\nname = \"ops\"\n[[users]]\nname = \"audit\"\n[overlays]\ntrees = [\"base\"]\n[variables]\ncolour = \"blue\"\nshape = \"round\"\n",
        ),
    ]);
    assert_eq!(profile.name.as_str(), "web", "the asked-for file names the profile");
    assert_eq!(profile.description, "the base");
    let include: Vec<&str> = profile.packages.include.iter().map(|p| p.as_str()).collect();
    // The password (and its audit), firewall, logging, integrity, kernel, time, mail, accounting, auditd and sessions controls bring their packages.
    assert_eq!(include, vec!["acct", "aide", "apparmor", "auditd", "cracklib-runtime", "debsums", "e2fsprogs", "fdisk", "john", "libpam-pwquality", "libpam-tmpdir", "logrotate", "nftables", "nginx", "openssh-server", "postfix", "rsyslog", "systemd-boot-efi", "systemd-timesyncd"]);
    assert_eq!(profile.image.hostname.as_str(), "web1");
    assert_eq!(profile.image.size.map(|s| s.bytes()), Some(4 << 30));
    let users: Vec<(&str, usize)> = profile.users.iter().map(|u| (u.name.as_str(), u.groups.len())).collect();
    assert_eq!(users, vec![("audit", 0), ("ops", 1)]);
    assert_eq!(profile.overlays.len(), 1);
    assert_eq!(profile.variables["colour"], "red");
    assert_eq!(profile.variables["shape"], "round");
    assert_eq!(profile.files.len(), 2);
}

#[test]
fn value_types_check_their_guarantees() {
    assert!(Cidr::parse("2001:db8::/32").is_ok());
    assert!(Cidr::parse("10.0.0.0/33").is_err());
    assert_eq!(ImageSize::parse("1536M").unwrap().bytes(), 1536 << 20);
    assert!(ImageSize::parse("100M").is_err());
    assert!(Hostname::parse("-bad").is_err());
    assert!(PackageName::parse("libc6").is_ok());
    assert!(PackageName::parse("Libc6").is_err());
    assert!(types::parse_ssh_public_key("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx test@host").is_ok());
    assert!(types::parse_ssh_public_key("ssh-dss AAAAB3NzaC1kc3MAAACBAK").is_err());
    assert_eq!(types::parse_file_mode("0640 root:adm").unwrap().group, "adm");
}

#[test]
fn access_controls_merge_field_by_field_over_strong_defaults() {
    let profile = check_ok(&[
        (
            "web.toml",
            "name = \"web\"\nextends = \"base.toml\"\n[passwords]\nmin-length = 16\n[[firewall.allow]]\nport = 443\nfrom = [\"10.0.0.0/8\"]\n[ssh]\nforwarding = true\n[ssh.options]\nClientAliveInterval = \"300\"\n",
        ),
        (
            "base.toml",
            "name = \"base\"\n[services]\nenable = [\"ssh.service\"]\n[passwords]\nremember = 5\n[[firewall.allow]]\nport = 443\n[[firewall.allow]]\nport = 53\nprotocol = \"udp\"\n",
        ),
    ]);
    assert_eq!(profile.passwords.min_length, 16);
    assert_eq!(profile.passwords.remember, 5);
    assert_eq!(profile.passwords.lockout_attempts, 5, "CIS default");
    assert_eq!(profile.passwords.umask, 0o027);
    let services: Vec<&str> = profile.services.enable.iter().map(|s| s.value.as_str()).collect();
    assert_eq!(services, vec!["ssh.service"]);
    assert_eq!(profile.services.gettys, vec!["ttyS0"]);
    let ports: Vec<(u16, &str, usize)> =
        profile.firewall.allow.iter().map(|a| (a.port.get(), a.protocol.as_str(), a.from.len())).collect();
    assert_eq!(ports, vec![(53, "udp", 2), (443, "tcp", 1)], "the child's 443 replaces the base's");
    assert!(profile.firewall.enable);
    assert!(profile.ssh.forwarding);
    assert_eq!(profile.ssh.max_auth_tries, 3);
    assert_eq!(profile.ssh.options["ClientAliveInterval"].value, "300");
}

#[test]
fn bad_firewall_port_is_refused_where_written() {
    check_error(
        &[("web.toml", "name = \"web\"\n[[firewall.allow]]\nport = 70000\n")],
        "$DIR/profiles/web.toml:3:8: firewall.allow.port: 70000 is not a port (1 to 65535)",
    );
}

#[test]
fn bad_firewall_range_is_refused_where_written() {
    check_error(
        &[("web.toml", "name = \"web\"\n[[firewall.allow]]\nport = 80\nfrom = [\"10.1.2.3/8\"]\n")],
        "$DIR/profiles/web.toml:4:9: firewall.allow.from: \"10.1.2.3/8\" has host bits set; did you mean the network address?",
    );
}

#[test]
fn unknown_service_kind_is_refused() {
    check_error(
        &[("web.toml", "name = \"web\"\n[services]\nenable = [\"nginx\"]\n")],
        "$DIR/profiles/web.toml:3:11: services.enable: \"nginx\" is not a unit name (e.g. \"nginx.service\"; kinds: .service, .socket, .timer, .path; templates need an instance)",
    );
}

#[test]
fn weak_given_password_is_refused_before_any_work() {
    check_error(
        &[("web.toml", "name = \"web\"\n[[users]]\nname = \"ops\"\npassword = \"Password123!\"\n")],
        "$DIR/profiles/web.toml:4:12: users.password of ops: too weak: it is 12 characters long; the policy asks for at least 14",
    );
    check_error(
        &[("web.toml", "name = \"web\"\n[passwords]\nmin-length = 8\n[[users]]\nname = \"ops\"\npassword = \"Password123!\"\n")],
        "$DIR/profiles/web.toml:6:12: users.password of ops: too weak: it is on the list of common passwords",
    );
}

#[test]
fn md5_password_hash_is_refused() {
    check_error(
        &[("web.toml", "name = \"web\"\n[[users]]\nname = \"ops\"\npassword-hash = \"$1$abc$def\"\n")],
        "$DIR/profiles/web.toml:4:17: users.password-hash: not a strong crypt(3) hash (yescrypt \"$y$...\", sha512crypt \"$6$...\", or bcrypt); md5 and DES hashes are refused",
    );
}

#[test]
fn sshd_option_that_rampart_sets_is_refused() {
    check_error(
        &[("web.toml", "name = \"web\"\n[ssh.options]\nPermitRootLogin = \"yes\"\n")],
        "$DIR/profiles/web.toml:3:19: ssh.options.PermitRootLogin: PermitRootLogin is set by rampart's SSH control; use the [ssh] field for it, where there is one",
    );
}

#[test]
fn ssh_port_in_firewall_allow_is_refused() {
    check_error(
        &[("web.toml", "name = \"web\"\n[[firewall.allow]]\nport = 22\nfrom = [\"10.0.0.0/8\"]\n")],
        "$DIR/profiles/web.toml:3:8: firewall.allow: port 22/tcp is SSH's; set who may reach it with ssh.allow-from",
    );
}

#[test]
fn match_blocks_are_refused_in_sshd_options() {
    check_error(
        &[("web.toml", "name = \"web\"\n[ssh.options]\nMatch = \"User x\"\n")],
        "$DIR/profiles/web.toml:3:9: ssh.options.Match: Match cannot be used in ssh.options (it would change what the lines after it mean)",
    );
}

#[test]
fn elf_audit_floors_merge_field_by_field_over_the_defaults() {
    let profile = check_ok(&[
        ("web.toml", "name = \"web\"\nextends = \"base.toml\"\n[elf-audit]\nallow-weak = [\"/opt/tool/bin/*\"]\n[elf-audit.floor]\nbind-now = 97.5\n"),
        ("base.toml", "name = \"base\"\n[elf-audit]\nenable = false\nallow-weak = [\"/usr/bin/legacy\"]\nfloor = { pie = 90, bind-now = 50 }\n"),
    ]);
    let floors: Vec<(&str, f64, Option<String>)> = profile
        .elf_audit
        .floors
        .iter()
        .map(|f| (f.property.name(), f.percent, f.at.as_ref().map(|at| at.rsplit('/').next().unwrap().to_string())))
        .collect();
    assert_eq!(
        floors,
        [
            ("pie", 90.0, Some("base.toml:5:17".into())),
            ("nx", 100.0, None),
            ("relro", 98.0, None),
            ("bind-now", 97.5, Some("web.toml:6:12".into())),
            ("stack-protector", 90.0, None),
            ("fortify", 85.0, None),
        ]
    );
    assert!(!profile.elf_audit.enable, "the base's enable = false is kept");
    let allowed: Vec<&str> = profile.elf_audit.allow_weak.iter().map(|a| a.value.as_str()).collect();
    assert_eq!(allowed, ["/opt/tool/bin/*", "/usr/bin/legacy"], "allowed paths add up");
    let defaults = check_ok(&[("web.toml", "name = \"web\"\n")]);
    assert!(defaults.elf_audit.enable);
    assert!(defaults.elf_audit.allow_weak.is_empty());
}

#[test]
fn elf_audit_floor_outside_0_to_100_is_refused() {
    check_error(
        &[("web.toml", "name = \"web\"\n[elf-audit.floor]\npie = 101\n")],
        "$DIR/profiles/web.toml:3:7: elf-audit.floor.pie: 101 is not a percentage (0 to 100)",
    );
    check_error(
        &[("web.toml", "name = \"web\"\n[elf-audit.floor]\nstack-protector = -0.5\n")],
        "$DIR/profiles/web.toml:3:19: elf-audit.floor.stack-protector: -0.5 is not a percentage (0 to 100)",
    );
}

#[test]
fn elf_audit_unknown_property_is_refused_with_the_known_ones() {
    check_error(
        &[("web.toml", "name = \"web\"\n[elf-audit.floor]\ncanary = 90\n")],
        "$DIR/profiles/web.toml:3:1: unknown field `canary`, expected one of `pie`, `nx`, `relro`, `bind-now`, `stack-protector`, `fortify`",
    );
}

#[test]
fn elf_audit_allow_weak_takes_absolute_image_paths() {
    check_error(
        &[("web.toml", "name = \"web\"\n[elf-audit]\nallow-weak = [\"usr/bin/tool\"]\n")],
        "$DIR/profiles/web.toml:3:15: elf-audit.allow-weak: \"usr/bin/tool\" is not an absolute path of a file in the image (e.g. \"/usr/bin/tool\"; * matches within one name)",
    );
    check_error(
        &[("web.toml", "name = \"web\"\n[elf-audit]\nallow-weak = [\"/usr/bin/../sbin/x\"]\n")],
        "$DIR/profiles/web.toml:3:15: elf-audit.allow-weak: \"/usr/bin/../sbin/x\" is not an absolute path of a file in the image (e.g. \"/usr/bin/tool\"; * matches within one name)",
    );
}

#[test]
fn toolchain_is_hardened_unless_a_profile_says_otherwise() {
    assert!(check_ok(&[("web.toml", "name = \"web\"\n")]).toolchain.hardened);
    let base = ("base.toml", "name = \"base\"\n[toolchain]\nhardened = false\n");
    assert!(!check_ok(&[("web.toml", "name = \"web\"\nextends = \"base.toml\"\n"), base]).toolchain.hardened, "inherited");
    assert!(check_ok(&[("web.toml", "name = \"web\"\nextends = \"base.toml\"\n[toolchain]\nhardened = true\n"), base]).toolchain.hardened);
    check_error(
        &[("web.toml", "name = \"web\"\n[toolchain]\nfortify = 3\n")],
        "$DIR/profiles/web.toml:3:1: unknown field `fortify`, expected `hardened`",
    );
}

#[test]
fn unknown_sysctl_key_names_the_place_and_the_closest_key() {
    check_error(
        &[("web.toml", "name = \"web\"\n\n[kernel.sysctl]\nkernel.kptr_restirct = 2\n")],
        "$DIR/profiles/web.toml:4:24: kernel.sysctl: unknown key \"kernel.kptr_restirct\": Debian 12's kernel (6.1) has no such sysctl (did you mean kernel.kptr_restrict?)",
    );
}

#[test]
fn out_of_range_sysctl_value_says_what_is_allowed() {
    check_error(
        &[("web.toml", "name = \"web\"\n[kernel]\nsysctl = { \"kernel.yama.ptrace_scope\" = 4 }\n")],
        "$DIR/profiles/web.toml:3:41: kernel.sysctl: kernel.yama.ptrace_scope = 4 is out of range: the kernel takes one integer from 0 to 3",
    );
}

#[test]
fn sysctls_merge_by_key_and_blacklists_add_up() {
    let profile = check_ok(&[
        ("web.toml", "name = \"web\"\nextends = \"base.toml\"\n[kernel]\nmodule-blacklist = [\"thunderbolt\"]\n[kernel.sysctl]\nkernel.sysrq = 176\n\"net.ipv4.conf.eth0.rp_filter\" = \"2\"\n"),
        ("base.toml", "name = \"base\"\n[kernel]\napparmor = false\nmodule-blacklist = [\"bluetooth\"]\n[kernel.sysctl]\nkernel.sysrq = 1\nvm.swappiness = 10\n"),
    ]);
    let hardening = &profile.kernel.hardening;
    let set: Vec<(&str, &str)> = hardening.sysctl.iter().map(|(k, v)| (k.as_str(), v.value.as_str())).collect();
    assert_eq!(set, [("kernel.sysrq", "176"), ("net.ipv4.conf.eth0.rp_filter", "2"), ("vm.swappiness", "10")]);
    assert!(hardening.sysctl["kernel.sysrq"].at.ends_with("web.toml:6:16"));
    assert!(!hardening.apparmor);
    assert!(!profile.packages.include.contains(&PackageName::parse("apparmor").unwrap()));
    let modules = hardening.blacklisted_modules();
    assert_eq!(&modules[modules.len() - 2..], ["bluetooth", "thunderbolt"]);
}

#[test]
fn apparmor_brings_its_package_unless_excluded() {
    let profile = check_ok(&[("web.toml", "name = \"web\"\n")]);
    assert!(profile.packages.include.contains(&PackageName::parse("apparmor").unwrap()));
    check_error(
        &[("web.toml", "name = \"web\"\n[packages]\nexclude = [\"apparmor\"]\n")],
        "$DIR/profiles/web.toml: packages.exclude: the kernel.apparmor control needs apparmor",
    );
}

#[test]
fn installer_target_is_a_device_path_and_merges_field_by_field() {
    let profile = check_ok(&[("web.toml", "name = \"web\"\n")]);
    assert_eq!(profile.installer, InstallerSpec { target: None, overwrite: false }, "by default: the only empty disk, never overwrite");
    let profile = check_ok(&[
        ("web.toml", "name = \"web\"\nextends = \"base.toml\"\n[installer]\noverwrite = true\n"),
        ("base.toml", "name = \"base\"\n[installer]\ntarget = \"/dev/disk/by-id/ata-SAMSUNG_MZ7LH480_S45N:0\"\n"),
    ]);
    assert_eq!(profile.installer.target.as_deref(), Some("/dev/disk/by-id/ata-SAMSUNG_MZ7LH480_S45N:0"));
    assert!(profile.installer.overwrite);
    let cleared = check_ok(&[
        ("web.toml", "name = \"web\"\nextends = \"base.toml\"\n[installer]\ntarget = \"\"\n"),
        ("base.toml", "name = \"base\"\n[installer]\ntarget = \"/dev/sda\"\n"),
    ]);
    assert_eq!(cleared.installer.target, None, "an empty target in the child goes back to the only empty disk");
    check_error(
        &[("web.toml", "name = \"web\"\n[installer]\ntarget = \"/dev/../etc/passwd\"\n")],
        "$DIR/profiles/web.toml:3:10: installer.target: \"/dev/../etc/passwd\" is not a device path (e.g. \"/dev/sda\" or \"/dev/disk/by-id/ata-SAMSUNG_MZ7LH480_S45N\"); letters, digits and /-_.:+@ only",
    );
    check_error(
        &[("web.toml", "name = \"web\"\n[installer]\ntarget = \"sda'; rm -rf /\"\n")],
        "$DIR/profiles/web.toml:3:10: installer.target: \"sda'; rm -rf /\" is not a device path (e.g. \"/dev/sda\" or \"/dev/disk/by-id/ata-SAMSUNG_MZ7LH480_S45N\"); letters, digits and /-_.:+@ only",
    );
}

#[test]
fn backups_are_off_by_default_with_rampart_s_paths_and_counts() {
    let profile = check_ok(&[("web.toml", "name = \"web\"\n")]);
    let backups = &profile.backups;
    assert!(!backups.enable);
    assert_eq!(backups.paths, vec!["/etc", "/home", "/root", "/var/lib", "/var/log"]);
    assert_eq!(backups.target, None);
    assert_eq!(backups.schedule.value, "daily");
    assert_eq!((backups.keep_daily, backups.keep_weekly, backups.keep_monthly), (7, 4, 6));
    assert!(!profile.packages.include.contains(&PackageName::parse("borgbackup").unwrap()));
    assert!(profile.elf_audit.control_allowed_weak.is_empty());
}

#[test]
fn backups_bring_borg_and_name_python_as_allowed_weak() {
    let profile = check_ok(&[("web.toml", "name = \"web\"\n[backups]\nenable = true\ndevice = \"/dev/vdb\"\n")]);
    assert!(profile.packages.include.contains(&PackageName::parse("borgbackup").unwrap()));
    let allowed: Vec<&str> = profile.elf_audit.control_allowed_weak.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(allowed, vec!["/usr/bin/python3.11"]);
    assert_eq!(profile.backups.target.as_ref().map(|t| (t.value.clone(), t.at.ends_with("web.toml:4:10"))), Some((BackupTarget::Device("/dev/vdb".into()), true)));
    check_error(
        &[("web.toml", "name = \"web\"\n[packages]\nexclude = [\"borgbackup\"]\n[backups]\nenable = true\ndevice = \"/dev/vdb\"\n")],
        "$DIR/profiles/web.toml: packages.exclude: the backups control needs borgbackup",
    );
}

#[test]
fn backups_merge_field_by_field_and_a_child_s_target_replaces_the_base_s() {
    let profile = check_ok(&[
        ("web.toml", "name = \"web\"\nextends = \"base.toml\"\n[backups]\ndevice = \"/dev/vdb\"\nkeep-weekly = 2\npaths = [\"/srv\"]\n"),
        ("base.toml", "name = \"base\"\n[backups]\nenable = true\ndirectory = \"/srv/backup\"\nschedule = \"*-*-* 03:00\"\nkeep-daily = 3\n"),
    ]);
    let backups = &profile.backups;
    assert!(backups.enable);
    assert_eq!(backups.target.as_ref().map(|t| t.value.clone()), Some(BackupTarget::Device("/dev/vdb".into())));
    assert_eq!(backups.paths, vec!["/srv"]);
    assert_eq!(backups.schedule.value, "*-*-* 03:00");
    assert_eq!((backups.keep_daily, backups.keep_weekly, backups.keep_monthly), (3, 2, 6));
    // A child may turn a base's backups off without naming a target.
    let off = check_ok(&[
        ("web.toml", "name = \"web\"\nextends = \"base.toml\"\n[backups]\nenable = false\n"),
        ("base.toml", "name = \"base\"\n[backups]\nenable = true\ndevice = \"/dev/vdb\"\n"),
    ]);
    assert!(!off.backups.enable);
}

#[test]
fn bad_backups_settings_are_refused_where_written() {
    let check = |section: &str, expected: &str| {
        check_error(&[("web.toml", &format!("name = \"web\"\n[backups]\n{section}"))], expected);
    };
    check(
        "enable = true\n",
        "$DIR/profiles/web.toml:3:10: backups.enable: backups need a separate target: set backups.device (a whole disk) or backups.directory (a mounted file system)",
    );
    check(
        "enable = true\ndevice = \"/dev/vdb\"\ndirectory = \"/srv/backup\"\n",
        "$DIR/profiles/web.toml:5:13: backups.directory: give device or directory, not both",
    );
    check(
        "device = \"vdb\"\n",
        "$DIR/profiles/web.toml:3:10: backups.device: \"vdb\" is not an absolute path below / of letters, digits and ._-+@: (no \"..\", \"//\", spaces or wildcards; e.g. \"/dev/disk/by-id/virtio-backup\")",
    );
    check(
        "device = \"/srv/disk.img\"\n",
        "$DIR/profiles/web.toml:3:10: backups.device: \"/srv/disk.img\" is not a block device path under /dev (e.g. \"/dev/disk/by-id/virtio-backup\")",
    );
    check(
        "directory = \"/var\"\n",
        "$DIR/profiles/web.toml:3:13: backups.directory: \"/var\" is a system directory, not the mount point of a separate file system (e.g. \"/srv/backup\")",
    );
    check(
        "enable = true\ndirectory = \"/var/lib/backup\"\n",
        "$DIR/profiles/web.toml:4:13: backups.directory: /var/lib/backup is inside /var/lib, which is backed up; the target must be a separate file system outside backups.paths",
    );
    check(
        "paths = [\"/etc\", \"/srv/../root\"]\n",
        "$DIR/profiles/web.toml:3:18: backups.paths: \"/srv/../root\" is not an absolute path below / of letters, digits and ._-+@: (no \"..\", \"//\", spaces or wildcards; e.g. \"/srv/data\")",
    );
    check(
        "paths = [\"/var\", \"/var/log\"]\n",
        "$DIR/profiles/web.toml:3:18: backups.paths: /var/log overlaps /var (given at $DIR/profiles/web.toml:3:10)",
    );
    check("paths = []\n", "$DIR/profiles/web.toml: backups.paths: name at least one path (or leave the field out for rampart's list)");
    check("keep-daily = -1\n", "$DIR/profiles/web.toml:3:14: backups.keep-daily: -1 is out of range (0 to 1000)");
    check("keep-monthly = 1001\n", "$DIR/profiles/web.toml:3:16: backups.keep-monthly: 1001 is out of range (0 to 1000)");
    check(
        "enable = true\ndevice = \"/dev/vdb\"\nkeep-daily = 0\nkeep-weekly = 0\nkeep-monthly = 0\n",
        "$DIR/profiles/web.toml:3:10: backups: keep-daily, keep-weekly and keep-monthly are all 0, so every archive would be pruned",
    );
    check("schedule = \"\"\n", "$DIR/profiles/web.toml:3:12: backups.schedule: \"\" is not a systemd calendar expression (e.g. \"daily\" or \"*-*-* 03:30\")");
    check(
        "enable = true\ndevice = \"/dev/vdb\"\nretention = 3\n",
        "$DIR/profiles/web.toml:5:1: unknown field `retention`, expected one of `enable`, `paths`, `device`, `directory`, `schedule`, `keep-daily`, `keep-weekly`, `keep-monthly`",
    );
}

/// A profile that runs nginx, with `sandbox` as its nginx sandbox table.
fn nginx_profile(sandbox: &str) -> String {
    format!("name = \"web\"\n[services]\nenable = [\"ssh.service\", \"nginx.service\"]\n[services.sandboxes.\"nginx.service\"]\n{sandbox}")
}

#[test]
fn unknown_sandboxing_directive_names_the_place_and_the_closest_one() {
    check_error(
        &[("web.toml", &nginx_profile("ProtectSystm = \"strict\"\n"))],
        "$DIR/profiles/web.toml:5:1: services.sandboxes.\"nginx.service\": unknown directive \"ProtectSystm\": not one of systemd 252's sandboxing directives that rampart takes (did you mean ProtectSystem?); README's profile reference lists them",
    );
    check_error(
        &[("web.toml", &nginx_profile("ExecStartPre = \"/bin/true\"\n"))],
        "$DIR/profiles/web.toml:5:1: services.sandboxes.\"nginx.service\": unknown directive \"ExecStartPre\": not one of systemd 252's sandboxing directives that rampart takes; README's profile reference lists them",
    );
}

#[test]
fn sandboxing_values_are_single_lines_of_the_right_shape() {
    check_error(
        &[("web.toml", &nginx_profile("ProtectSystem = [\"strict\"]\n"))],
        "$DIR/profiles/web.toml:5:17: services.sandboxes.\"nginx.service\".ProtectSystem: takes one value, not a list",
    );
    check_error(
        &[("web.toml", &nginx_profile("ReadWritePaths = \"/srv\\nExecStartPre=/bin/sh -c id\"\n"))],
        "$DIR/profiles/web.toml:5:18: services.sandboxes.\"nginx.service\".ReadWritePaths: a value is one line of printable text (it becomes one line of a systemd drop-in)",
    );
    check_error(
        &[("web.toml", &nginx_profile("UMask = 77\n"))],
        "$DIR/profiles/web.toml:5:9: services.sandboxes.\"nginx.service\".UMask: give the value as a string, as systemd reads it (e.g. UMask = \"0077\", not 0077)",
    );
    check_error(
        &[("web.toml", "name = \"web\"\n[services.sandboxes.\"nginx.socket\"]\nPrivateTmp = true\n")],
        "$DIR/profiles/web.toml:2:21: services.sandboxes: nginx.socket: sandboxing directives belong to a .service unit",
    );
}

#[test]
fn sandbox_for_a_service_the_profile_does_not_run_is_refused() {
    check_error(
        &[("web.toml", "name = \"web\"\n[services]\nenable = [\"ssh.service\"]\n[services.sandboxes.\"nginx.service\"]\nPrivateTmp = true\n")],
        "$DIR/profiles/web.toml:4:21: services.sandboxes.\"nginx.service\": the profile does not run nginx.service: list it (or its .socket, .timer or .path) in services.enable",
    );
    // rampart runs rsyslog only with [logging] on
    check_error(
        &[("web.toml", "name = \"web\"\n[logging]\nenable = false\n[services.sandboxes.\"rsyslog.service\"]\nPrivateTmp = true\n")],
        "$DIR/profiles/web.toml:4:21: services.sandboxes.\"rsyslog.service\": the profile does not run rsyslog.service: list it (or its .socket, .timer or .path) in services.enable",
    );
    check_error(
        &[("web.toml", "name = \"web\"\n[services]\nenable = [\"ssh.service\"]\n[services.sandboxes.\"ssh.service\"]\nPrivateTmp = true\n")],
        "$DIR/profiles/web.toml:4:21: services.sandboxes.\"ssh.service\": rampart leaves ssh.service unsandboxed on purpose: sshd starts the users' sessions: every restriction of its unit would be theirs too (its own privilege separation and AppArmor confine it instead)",
    );
}

#[test]
fn sandboxes_are_allowed_for_rampart_s_services_and_those_the_allow_list_starts() {
    let profile = check_ok(&[(
        "web.toml",
        "name = \"web\"\n[services]\nenable = [\"report.timer\"]\n[services.sandboxes.\"report.service\"]\nPrivateNetwork = true\n[services.sandboxes.\"rsyslog.service\"]\nReadWritePaths = [\"/var/log\", \"/srv/log\"]\n",
    )]);
    assert_eq!(profile.services.sandboxes.keys().collect::<Vec<_>>(), ["report.service", "rsyslog.service"]);
    assert_eq!(profile.services.sandboxes["rsyslog.service"].directives["ReadWritePaths"].value, ["/var/log", "/srv/log"]);
    assert_eq!(profile.services.sandboxes["report.service"].directives["PrivateNetwork"].value, ["yes"]);
}

#[test]
fn sandboxes_merge_by_unit_then_by_directive() {
    let profile = check_ok(&[
        (
            "web.toml",
            "name = \"web\"\nextends = \"base.toml\"\n[services.sandboxes.\"nginx.service\"]\nReadWritePaths = [\"/var/cache/nginx\", \"/var/log/nginx\"]\n[services.sandboxes.\"rsyslog.service\"]\nUMask = \"0027\"\n",
        ),
        (
            "base.toml",
            "name = \"base\"\n[services]\nenable = [\"ssh.service\", \"nginx.service\"]\n[services.sandboxes.\"nginx.service\"]\nCapabilityBoundingSet = \"CAP_NET_BIND_SERVICE\"\nReadWritePaths = \"/var/log/nginx\"\n",
        ),
    ]);
    let nginx = &profile.services.sandboxes["nginx.service"];
    let directives: Vec<(&str, Vec<&str>)> =
        nginx.directives.iter().map(|(k, v)| (k.as_str(), v.value.iter().map(String::as_str).collect())).collect();
    assert_eq!(directives, [("CapabilityBoundingSet", vec!["CAP_NET_BIND_SERVICE"]), ("ReadWritePaths", vec!["/var/cache/nginx", "/var/log/nginx"])]);
    assert!(nginx.directives["CapabilityBoundingSet"].at.ends_with("base.toml:5:1"));
    assert!(nginx.directives["ReadWritePaths"].at.ends_with("web.toml:4:1"));
    assert!(nginx.at.ends_with("web.toml:3:21"), "the unit's place is where the child names it");
    assert!(profile.services.sandboxes.contains_key("rsyslog.service"));
}

#[test]
fn the_lab_gateway_replaces_the_gateways_interfaces_by_role_and_keeps_its_forward() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
    let gateway = load(&root.join("gateway.toml")).unwrap();
    assert_eq!(gateway.kernel.package.as_str(), "linux-image-amd64");
    assert!(gateway.gateway.enable && !gateway.vpn.enable && !gateway.wireless.enable);
    let lab = load(&root.join("lab-gateway.toml")).unwrap();
    let roles: Vec<&str> = lab.gateway.interfaces.iter().map(|i| i.role.name()).collect();
    assert_eq!(roles, ["wan", "lan", "dmz", "mgmt"]);
    assert!(lab.gateway.interfaces.iter().all(|i| matches!(i.link, network::LinkMatch::Mac(_))));
    let forwards: Vec<(u16, String)> = lab.gateway.forwards.iter().map(|f| (f.port.get(), format!("{}:{}", f.to, f.to_port))).collect();
    assert_eq!(forwards, [(8080, "10.79.0.2:80".to_string()), (443, "10.79.0.2:443".to_string())]);
    assert!(lab.vpn.enable && lab.packages.include.iter().any(|p| p.as_str() == "wireguard-tools"));
    assert!(lab.packages.include.iter().any(|p| p.as_str() == "dnsmasq"));
}

#[test]
fn gateway_zones_and_vpn_peers_are_checked_whole() {
    let wan_lan = "[[gateway.interface]]\nrole = \"wan\"\nmac = \"52:54:00:00:00:01\"\ndhcp = true\n[[gateway.interface]]\nrole = \"lan\"\nmac = \"52:54:00:00:00:02\"\naddresses = [\"10.1.0.1/24\"]\n";
    check_error(&[("g.toml", "name = \"g\"\n[[gateway.interface]]\nrole = \"lan\"\nmac = \"52:54:00:00:00:02\"\naddresses = [\"10.1.0.1/24\"]\n")], "$DIR/profiles/g.toml:3:8: gateway: a gateway needs a wan interface ([[gateway.interface]] role = \"wan\")");
    check_error(
        &[("g.toml", &format!("name = \"g\"\n{wan_lan}[[gateway.interface]]\nrole = \"dmz\"\nmac = \"52:54:00:00:00:02\"\naddresses = [\"10.2.0.1/24\"]\n"))],
        "$DIR/profiles/g.toml:11:8: gateway.interface: lan and dmz match the same NIC",
    );
    check_error(&[("g.toml", &format!("name = \"g\"\n{wan_lan}[gateway.dhcp]\nrange = [\"10.1.0.1\", \"10.1.0.9\"]\n"))], "$DIR/profiles/g.toml:11:10: gateway.dhcp.range: it holds the gateway's own lan address 10.1.0.1");
    check_error(
        &[("g.toml", &format!("name = \"g\"\n{wan_lan}[[gateway.forward]]\nport = 139\nto = \"10.1.0.5\"\n"))],
        "$DIR/profiles/g.toml:11:8: gateway.forward: port 139 is one of the seed's border ports (111, 137-139, 445, 515), dropped at the border and never forwarded",
    );
    check_error(
        &[("g.toml", &format!("name = \"g\"\n{wan_lan}[vpn]\naddresses = [\"10.1.0.200/24\"]\n[[vpn.peer]]\nname = \"a\"\npublic-key = \"SvWXT97e+NlIR9lVm0otSbOUbjflGUMw51gDXG4OJ3I=\"\nallowed-ips = [\"10.9.0.2/32\"]\n"))],
        "$DIR/profiles/g.toml:11:14: vpn.addresses: 10.1.0.0/24 overlaps the gateway's lan zone 10.1.0.0/24",
    );
    let allowed = check_ok(&[("g.toml", &format!("name = \"g\"\n{wan_lan}[vpn]\naddresses = [\"10.9.0.1/24\"]\nallow-default-route = true\n[[vpn.peer]]\nname = \"a\"\npublic-key = \"SvWXT97e+NlIR9lVm0otSbOUbjflGUMw51gDXG4OJ3I=\"\nallowed-ips = [\"0.0.0.0/0\"]\n"))]);
    assert!(allowed.vpn.enable);
}

#[test]
fn a_gateway_refuses_a_sysctl_that_turns_forwarding_off() {
    let gateway = "[[gateway.interface]]\nrole = \"wan\"\nmac = \"52:54:00:00:00:01\"\ndhcp = true\n[[gateway.interface]]\nrole = \"lan\"\nmac = \"52:54:00:00:00:02\"\naddresses = [\"10.1.0.1/24\"]\n";
    check_error(
        &[("g.toml", &format!("name = \"g\"\n{gateway}[kernel.sysctl]\n\"net.ipv4.ip_forward\" = 0\n"))],
        "$DIR/profiles/g.toml:11:25: kernel.sysctl: net.ipv4.ip_forward = 0 would stop the gateway forwarding; [gateway] forwards only what its default-drop forward chain lets through",
    );
    // Without a gateway the same setting is CIS's own.
    check_ok(&[("h.toml", "name = \"h\"\n[kernel.sysctl]\n\"net.ipv4.ip_forward\" = 0\n")]);
}
