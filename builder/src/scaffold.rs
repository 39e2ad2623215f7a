//! `rampart new NAME --extends BASE`: a site profile on top of an existing
//! one and a vm-tests scenario for it, both passing `rampart test` as
//! written. The texts are made here (pure); `create` checks the names,
//! refuses to replace anything, writes both files or neither, and reads
//! them back with the profile and scenario loaders.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::fsutil::write_atomic;
use crate::profile::ProfileName;

/// What `create` wrote.
pub struct Created {
    pub profile: PathBuf,
    pub scenario: PathBuf,
}

/// The new profile: only what makes it a profile of its own, and each
/// section a site usually sets, commented out, with the README section
/// that documents it.
pub fn profile_text(name: &str, base: &str) -> String {
    format!(
        r#"# {name}: a site profile on top of {base}.toml. Everything {base} sets holds
# unless this file says otherwise; the merge rules are in README.md,
# "Profiles" ("extends merge rules"), and every field with its default in
# "Profiles" and the "Profile reference" sections after it.
#
# Lock it, then build and prove it in QEMU (vm-tests/{name}.toml):
#   rampart lock profiles/{name}.toml
#   rampart test profiles/{name}.toml
name = "{name}"
extends = "{base}.toml"
description = "{name}: a site server on top of {base}"

# The machine's host name; default: the profile's name.
# [image]
# hostname = "{name}"

# More Debian packages (locked by `rampart lock`, fetched and verified).
# [packages]
# include = ["nginx-light"]

# Services that may run besides the base's; everything else is masked.
# README: "Profiles" ([services]) and "Profile reference: access controls".
# [services]
# enable = ["ssh.service", "systemd-networkd.service", "systemd-resolved.service", "nginx.service"]

# A port the firewall opens (the SSH port is ssh.allow-from's, not this).
# README: "Profiles" ([firewall]).
# [[firewall.allow]]
# port = 443
# protocol = "tcp"
# from = ["192.0.2.0/24"]
# service = "nginx.service"

# Who may reach SSH: your management ranges.
# README: "Profile reference: access controls".
# [ssh]
# allow-from = ["192.0.2.0/24"]

# Logs to the site's log host as well (host:port, TCP).
# README: "Profile reference: logging and integrity".
# [logging]
# remote = "192.0.2.10:514"

# Alerts and root's mail through the site's smarthost.
# README: "Profile reference: mail and alerts".
# [mail]
# smarthost = "smtp.example.org:587"
# to = ["ops@example.org"]

# Admin accounts (merged by name with the base's).
# [[users]]
# name = "admin"
# groups = ["adm", "systemd-journal", "sudo"]
# ssh-authorized-keys = ["ssh-ed25519 AAAA... you@laptop"]

# Free values for the overlays' *.tera templates (the login banner and motd).
# [variables]
# organisation = "Example Ltd"
"#
    )
}

/// The new profile's scenario: the machine settles with nothing failed,
/// runs and listens for what the profile declares, and answers on SSH
/// only, from outside.
pub fn scenario_text(name: &str) -> String {
    format!(
        r#"# {name}'s proof in QEMU: `rampart test profiles/{name}.toml`. The checks
# (succeed, wait-until-succeeds, open-tcp-ports, smarthost-receives, ...)
# are listed in README.md, "Scenarios"; vm-tests/baseline.toml uses most.
description = "{name}: settles with nothing failed, runs and listens for what it declares, SSH only from outside"
profile = "{name}"
# A network of the test's own, with a second host that scans from outside.
isolated-network = true

[[machine]]
name = "first"

[[check]]
name = "system_reaches_running_with_no_failed_units"
wait-until-succeeds = "systemctl is-system-running --wait; systemctl --failed --no-legend --plain"
expect = "running"
timeout = 300

[[check]]
name = "running_services_are_the_profiles"
running-services-match-profile = true

[[check]]
name = "listening_sockets_are_the_declared_ones"
listening-sockets-match-profile = true

[[check]]
# Add each port of firewall.allow here.
name = "from_outside_only_the_declared_ports_answer"
open-tcp-ports = [22]
timeout = 300

# A check of your own: a command run as root in the guest and what it prints.
# [[check]]
# name = "nginx_answers_on_localhost"
# as-root = true
# succeed = "curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1/"
# expect = "200"
"#
    )
}

/// Writes `profiles/NAME.toml` and `vm-tests/NAME.toml` under `dir`, the
/// profile extending `profiles/BASE.toml`; nothing when either exists.
pub fn create(dir: &Path, name: &str, base: &str) -> Result<Created> {
    ProfileName::parse(name).map_err(|e| anyhow::anyhow!("NAME: {e}"))?;
    ProfileName::parse(base).map_err(|e| anyhow::anyhow!("--extends: {e}; give the base profile's name, as in profiles/NAME.toml"))?;
    let base_path = dir.join("profiles").join(format!("{base}.toml"));
    if !base_path.is_file() {
        bail!("--extends {base}: there is no {}", base_path.display());
    }
    crate::profile::load(&base_path).with_context(|| format!("--extends {base}: {} does not load", base_path.display()))?;
    let profile = dir.join("profiles").join(format!("{name}.toml"));
    let scenario = dir.join("vm-tests").join(format!("{name}.toml"));
    for path in [&profile, &scenario] {
        if path.symlink_metadata().is_ok() {
            bail!("{} exists; rampart new replaces nothing", path.display());
        }
    }
    std::fs::create_dir_all(dir.join("vm-tests")).with_context(|| format!("while making {}", dir.join("vm-tests").display()))?;
    write_atomic(&profile, profile_text(name, base).as_bytes())?;
    let written = write_atomic(&scenario, scenario_text(name).as_bytes()).and_then(|()| {
        crate::profile::load(&profile).with_context(|| format!("the new {} does not load", profile.display()))?;
        crate::vmtest::scenario::load(&scenario).with_context(|| format!("the new {} does not load", scenario.display()))?;
        Ok(())
    });
    if let Err(error) = written {
        let _ = std::fs::remove_file(&profile);
        let _ = std::fs::remove_file(&scenario);
        return Err(error);
    }
    Ok(Created { profile, scenario })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` with every commented-out setting and section header taken in
    /// (prose comments stay comments).
    fn uncommented(text: &str) -> String {
        text.lines().map(|l| format!("{}\n", l.strip_prefix("# ").filter(|r| r.starts_with('[') || r.contains(" = ")).unwrap_or(l))).collect()
    }

    /// Each commented-out section, uncommented, is valid TOML: a user who
    /// removes the `# ` gets a profile that parses.
    #[test]
    fn every_commented_section_is_valid_toml_once_uncommented() {
        for text in [profile_text("web", "baseline"), scenario_text("web")] {
            let uncommented = uncommented(&text);
            let parsed: toml::Table = toml::from_str(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
            assert!(parsed.contains_key("description"));
        }
    }

    /// The profile with every section uncommented loads on top of the
    /// repository's baseline.
    #[test]
    fn the_profile_uncommented_loads_on_top_of_the_baseline() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        std::fs::create_dir(dir.path().join("profiles")).unwrap();
        std::fs::copy(repo.join("profiles/baseline.toml"), dir.path().join("profiles/baseline.toml")).unwrap();
        std::os::unix::fs::symlink(repo.join("overlays"), dir.path().join("overlays")).unwrap();
        // The example key line stands for the user's own key: given one.
        let uncommented = uncommented(&profile_text("web", "baseline")).replace("ssh-ed25519 AAAA... you@laptop", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx you@laptop");
        std::fs::write(dir.path().join("profiles/web.toml"), uncommented).unwrap();
        let profile = crate::profile::load(&dir.path().join("profiles/web.toml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(profile.name.to_string(), "web");
        assert_eq!(profile.users.len(), 1);
    }

    #[test]
    fn the_texts_name_the_profile_and_its_base() {
        let profile = profile_text("web", "baseline");
        assert!(profile.contains("name = \"web\"\nextends = \"baseline.toml\"\n"));
        assert!(scenario_text("web").contains("profile = \"web\"\n"));
        assert!(scenario_text("web").contains("%{http_code}"));
    }
}
