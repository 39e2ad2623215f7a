//! A throwaway apt root on the host: apt's own resolver and downloader, and
//! rampart's own check of what apt fetched (InRelease signature against the
//! archive keyring, then the Packages digest listed in it). Never touches the
//! host's apt state.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::mirror::{AptSource, Mirror};
use crate::process::Cmd;
use crate::ui;

pub const ARCH: &str = "amd64";
pub const ARCHIVE_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// A binary package as the signed index describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub filename: String,
    pub size: u64,
    pub sha256: String,
    pub essential: bool,
}

/// One suite's index, verified: signature, then digests.
#[derive(Debug)]
pub struct VerifiedIndex {
    pub source: AptSource,
    pub inrelease_sha256: String,
    pub date: String,
    pub packages: HashMap<(String, String), IndexEntry>,
    /// The verified files themselves, for the cache and for bundles.
    pub inrelease_path: PathBuf,
    pub packages_files: Vec<IndexFile>,
}

/// A Packages index file checked against its suite's signed InRelease.
#[derive(Debug, Clone)]
pub struct IndexFile {
    /// As the InRelease lists it: `main/binary-amd64/Packages`.
    pub relative: String,
    pub path: PathBuf,
    pub sha256: String,
}

/// What rampart reads from a verified InRelease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub date: String,
    /// Relative path -> sha256, from its SHA256 field.
    pub sha256: HashMap<String, String>,
}

/// The Packages index of `component` as an InRelease lists it.
pub fn packages_relative(component: &str) -> String {
    format!("{component}/binary-{ARCH}/Packages")
}

/// Reads the signed text of an InRelease (what its signature covers) and
/// checks that it is the index of `suite`.
pub fn check_release(signed: &str, suite: &str, origin: &str) -> Result<Release> {
    let release = parse_stanza(signed);
    let names_suite = [release.get("Suite"), release.get("Codename")].into_iter().flatten().any(|s| s == suite);
    if !names_suite {
        bail!(
            "the signed index at {origin} is for suite {:?} (codename {:?}), not {suite}: it is another suite's index",
            release.get("Suite").map(String::as_str).unwrap_or("?"),
            release.get("Codename").map(String::as_str).unwrap_or("?"),
        );
    }
    Ok(Release {
        date: release.get("Date").cloned().unwrap_or_default(),
        sha256: release_sha256_list(release.get("SHA256").map(String::as_str).unwrap_or("")),
    })
}

/// Checks a Packages index's digest against the one its signed InRelease lists.
pub fn check_packages_digest(release: &Release, suite: &str, relative: &str, actual_sha256: &str) -> Result<()> {
    let expected = release
        .sha256
        .get(relative)
        .ok_or_else(|| anyhow!("the signed InRelease of {suite} lists no digest for {relative}"))?;
    if actual_sha256 != expected {
        bail!("Packages index {relative} of {suite} does not match the signed InRelease (sha256 {actual_sha256}, the InRelease lists {expected})");
    }
    Ok(())
}

pub struct AptRoot {
    dir: crate::fsutil::OwnedTempDir,
    sources: Vec<AptSource>,
}

impl AptRoot {
    /// Creates an empty apt root for the mirror and downloads its indices.
    pub fn update(mirror: &Mirror, log: &Path) -> Result<AptRoot> {
        let dir = crate::fsutil::owned_tempdir(&std::env::temp_dir(), "rampart-apt-")?;
        let root = dir.path();
        for sub in ["etc/apt/apt.conf.d", "etc/apt/preferences.d", "etc/apt/sources.list.d", "var/lib/apt/lists/partial", "var/cache/apt/archives/partial", "var/lib/dpkg"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        std::fs::write(root.join("var/lib/dpkg/status"), "")?;
        let options = if mirror.snapshot.is_some() { " check-valid-until=no" } else { "" };
        let sources = mirror.sources();
        let mut list = String::new();
        for source in &sources {
            list.push_str(&format!(
                "deb [signed-by={ARCHIVE_KEYRING}{options}] {} {} {}\n",
                source.url,
                source.suite,
                source.components.join(" ")
            ));
        }
        std::fs::write(root.join("etc/apt/sources.list"), list)?;
        let config = format!(
            "Dir \"{r}/\";\nDir::State::status \"{r}/var/lib/dpkg/status\";\nDir::Etc::TrustedParts \"/nonexistent\";\nDir::Etc::Trusted \"/nonexistent\";\nAPT::Architecture \"{ARCH}\";\nAPT::Architectures \"{ARCH}\";\nAcquire::Languages \"none\";\nAcquire::IndexTargets::deb::Contents-deb::DefaultEnabled \"false\";\nAPT::Install-Recommends \"false\";\nAPT::Install-Suggests \"false\";\nDebug::NoLocking \"true\";\nAcquire::Retries \"3\";\n",
            r = root.display()
        );
        std::fs::write(root.join("apt.conf"), config)?;
        let apt = AptRoot { dir, sources };
        // An index that cannot be fetched fails here, with apt's reason,
        // rather than later as a missing file.
        apt.apt_get()
            .args(["update", "-q", "--error-on=any"])
            .run_logged(log)
            .context("while downloading the package indices from the mirror")?;
        Ok(apt)
    }

    fn apt_get(&self) -> Cmd {
        Cmd::new("apt-get").env("APT_CONFIG", self.dir.path().join("apt.conf"))
    }

    fn lists(&self) -> PathBuf {
        self.dir.path().join("var/lib/apt/lists")
    }

    /// Verifies every suite's InRelease and Packages, and parses them.
    pub fn verified_indices(&self) -> Result<Vec<VerifiedIndex>> {
        let mut indices = Vec::new();
        for source in &self.sources {
            let prefix = format!("{}_dists_{}_", uri_to_filename(&source.url), source.suite);
            let inrelease = self.lists().join(format!("{prefix}InRelease"));
            let (signed, inrelease_sha256) = verify_inrelease(&inrelease)
                .with_context(|| format!("while verifying the index of {} {}", source.url, source.suite))?;
            let release = check_release(&signed, &source.suite, &source.url)?;
            let mut packages = HashMap::new();
            let mut packages_files = Vec::new();
            for component in &source.components {
                let relative = packages_relative(component);
                let path = self.lists().join(format!("{prefix}{}", relative.replace('/', "_")));
                let bytes = std::fs::read(&path).with_context(|| format!("while reading {}", path.display()))?;
                let actual = hex::encode(Sha256::digest(&bytes));
                check_packages_digest(&release, &source.suite, &relative, &actual)?;
                for entry in parse_packages(&String::from_utf8_lossy(&bytes))? {
                    packages.insert((entry.name.clone(), entry.version.clone()), entry);
                }
                packages_files.push(IndexFile { relative, path, sha256: actual });
            }
            indices.push(VerifiedIndex {
                source: source.clone(),
                inrelease_sha256,
                date: release.date,
                packages,
                inrelease_path: inrelease,
                packages_files,
            });
        }
        Ok(indices)
    }

    /// Keeps the verified indices in the cache by digest, so that a bundle
    /// made later carries the very indices a lock was resolved from.
    pub fn keep_indices(indices: &[VerifiedIndex], cache: &crate::cache::Cache) -> Result<()> {
        // The Packages indices first: a kept InRelease means its indices are kept.
        for index in indices {
            for file in &index.packages_files {
                cache.keep_index(&file.path, &file.sha256)?;
            }
            cache.keep_index(&index.inrelease_path, &index.inrelease_sha256)?;
        }
        Ok(())
    }

    /// Asks apt which packages an install of `names` into an empty system
    /// would bring in: (name, version, arch), in apt's order.
    pub fn resolve(&self, names: &[String]) -> Result<Vec<(String, String, String)>> {
        let output = self
            .apt_get()
            .args(["install", "--simulate", "-q=2", "--no-install-recommends"])
            .args(names)
            .run_unchecked()?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let missing: Vec<&str> = stderr
                .lines()
                .filter_map(|l| l.strip_prefix("E: Unable to locate package "))
                .collect();
            if !missing.is_empty() {
                bail!("no package named {} in the mirror's indices", missing.join(", "));
            }
            let stdout = output.stdout_text();
            let detail: Vec<&str> = stdout.lines().chain(stderr.lines()).filter(|l| !l.trim().is_empty()).collect();
            bail!("apt could not resolve the package set:\n  {}", detail.join("\n  "));
        }
        let mut resolved = Vec::new();
        for line in output.stdout_text().lines() {
            let Some(rest) = line.strip_prefix("Inst ") else { continue };
            // Inst NAME (VERSION SUITES [ARCH]) [...]
            let name = rest.split_whitespace().next().unwrap_or("").to_string();
            let inner = rest
                .split_once('(')
                .and_then(|(_, r)| r.split_once(')'))
                .map(|(inside, _)| inside)
                .unwrap_or("");
            let version = inner.split_whitespace().next().unwrap_or("").to_string();
            let arch = inner
                .rsplit_once('[')
                .and_then(|(_, r)| r.split_once(']'))
                .map(|(a, _)| a.to_string())
                .unwrap_or_default();
            if name.is_empty() || version.is_empty() || arch.is_empty() {
                bail!("unexpected line from apt-get --simulate: {line}");
            }
            resolved.push((name, version, arch));
        }
        Ok(resolved)
    }

    /// Downloads `name=version` packages into `into` (apt checks the index
    /// digests; the caller checks them again against the lock).
    /// apt downloads them in parallel, pipelined; a progress line follows
    /// its "Get:" lines. Its output goes to the log.
    pub fn download(&self, wanted: &[String], into: &Path, log: &Path) -> Result<()> {
        let command = self.apt_get().args(["download", "-q"]).args(wanted).cwd(into);
        let mut dialogue = command.spawn_dialogue()?;
        let mut progress = ui::Progress::new("downloading", wanted.len());
        let status = loop {
            if let Some(status) = dialogue.wait(std::time::Duration::from_millis(250))? {
                break status;
            }
            progress.show(dialogue.transcript_text().matches("Get:").count());
        };
        progress.finish();
        let transcript = dialogue.transcript_text();
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        std::io::Write::write_all(&mut file, transcript.as_bytes())?;
        if !status.success() {
            let tail: Vec<&str> = transcript.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
            bail!(
                "while downloading packages from the mirror: `{}` failed ({})\n{}\n(full log: {})",
                command.display(),
                crate::process::describe_status(status),
                tail.join("\n"),
                log.display()
            );
        }
        Ok(())
    }
}

/// apt's name for a downloaded index: the URI without scheme, '/' as '_'.
fn uri_to_filename(url: &str) -> String {
    let without_scheme = url.split_once("://").map(|(_, rest)| rest).unwrap_or(url);
    let without_user = without_scheme.rsplit_once('@').map(|(_, r)| r).unwrap_or(without_scheme);
    // apt quotes these characters as %xx before turning '/' into '_'.
    let mut quoted = String::new();
    for c in without_user.trim_end_matches('/').chars() {
        if "\\|{}[]<>\"^~_=!@#$%&*".contains(c) || c == ' ' || !c.is_ascii_graphic() {
            quoted.push_str(&format!("%{:02x}", c as u32));
        } else {
            quoted.push(c);
        }
    }
    quoted.replace('/', "_")
}

/// Checks an InRelease file's signature with the archive keyring and returns
/// the signed text (only what the signature covers) and the file's sha256.
/// Always the host's keyring (debian-archive-keyring, installed by
/// scripts/install-host-tools), never one that came with the input.
pub fn verify_inrelease(path: &Path) -> Result<(String, String)> {
    let bytes = std::fs::read(path).with_context(|| format!("while reading {}", path.display()))?;
    if !Path::new(ARCHIVE_KEYRING).is_file() {
        bail!("the archive keyring {ARCHIVE_KEYRING} is not installed; run scripts/install-host-tools (it installs debian-archive-keyring)");
    }
    let output = Cmd::new("gpgv")
        .args(["--quiet", "--keyring", ARCHIVE_KEYRING, "--output", "-"])
        .arg(path)
        .run()
        .with_context(|| format!("the signature of {} does not verify against the archive keyring {ARCHIVE_KEYRING}", path.display()))?;
    Ok((output.stdout_text(), hex::encode(Sha256::digest(&bytes))))
}

/// Parses one deb822 stanza into fields; continuation lines are kept.
pub fn parse_stanza(text: &str) -> HashMap<String, String> {
    let mut fields = HashMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(key) = &current {
                let value: &mut String = fields.entry(key.clone()).or_default();
                value.push('\n');
                value.push_str(line.trim());
            }
        } else if let Some((key, value)) = line.split_once(':') {
            current = Some(key.to_string());
            fields.insert(key.to_string(), value.trim().to_string());
        }
    }
    fields
}

/// The "SHA256:" field of a Release file: relative path -> digest.
fn release_sha256_list(field: &str) -> HashMap<String, String> {
    field
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            (words.len() == 3).then(|| (words[2].to_string(), words[0].to_string()))
        })
        .collect()
}

/// Parses a Packages index.
pub fn parse_packages(text: &str) -> Result<Vec<IndexEntry>> {
    let mut entries = Vec::new();
    for stanza in text.split("\n\n").filter(|s| !s.trim().is_empty()) {
        let mut name = "";
        let mut version = "";
        let mut arch = "";
        let mut filename = "";
        let mut size = "";
        let mut sha256 = "";
        let mut essential = false;
        for line in stanza.lines() {
            let Some((key, value)) = line.split_once(": ") else { continue };
            match key {
                "Package" => name = value,
                "Version" => version = value,
                "Architecture" => arch = value,
                "Filename" => filename = value,
                "Size" => size = value,
                "SHA256" => sha256 = value,
                "Essential" => essential = value == "yes",
                _ => {}
            }
        }
        if name.is_empty() || sha256.is_empty() || filename.is_empty() {
            bail!("Packages stanza without Package, Filename or SHA256: {}", stanza.lines().next().unwrap_or(""));
        }
        entries.push(IndexEntry {
            name: name.to_string(),
            version: version.to_string(),
            arch: arch.to_string(),
            filename: filename.to_string(),
            size: size.parse().with_context(|| format!("bad Size in the stanza of {name}"))?,
            sha256: sha256.to_string(),
            essential,
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_list_names_drop_scheme_and_slashes() {
        assert_eq!(uri_to_filename("http://mirror.example/debian"), "mirror.example_debian");
        assert_eq!(uri_to_filename("http://user@mirror.example:8080/a/b/"), "mirror.example:8080_a_b");
        assert_eq!(uri_to_filename("http://mirror.example/~me/deb_ian"), "mirror.example_%7eme_deb%5fian");
    }

    #[test]
    fn packages_stanzas_parse() {
        let text = "Package: dash\nVersion: 0.5.12-2\nArchitecture: amd64\nEssential: yes\nDescription: POSIX shell\n continued\nFilename: pool/main/d/dash/dash_0.5.12-2_amd64.deb\nSize: 93000\nSHA256: ab12\n\nPackage: hello\nVersion: 2.10-3\nArchitecture: amd64\nFilename: pool/main/h/hello/hello_2.10-3_amd64.deb\nSize: 5\nSHA256: cd34\n";
        let entries = parse_packages(text).unwrap();
        assert_eq!(entries.len(), 2);
        assert!(entries[0].essential);
        assert_eq!(entries[1].filename, "pool/main/h/hello/hello_2.10-3_amd64.deb");
        assert_eq!(entries[1].size, 5);
    }

    #[test]
    fn release_digests_map_paths() {
        let list = release_sha256_list("\nabc 12 main/binary-amd64/Packages\ndef 3 main/binary-amd64/Packages.xz");
        assert_eq!(list["main/binary-amd64/Packages"], "abc");
    }
}
