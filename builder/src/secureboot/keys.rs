//! The site's Secure Boot keys: PK, KEK and db, each an RSA key and its
//! self-signed certificate, and the GUID that owns their entries. A build
//! input like the secrets file: kept in a directory only root can read
//! (`build --keys DIR`, by default `<out>/<name>.keys/`), made on first use
//! with the host's openssl and reused after, so the same inputs give the
//! same bytes. Never in the image and never in SHA256SUMS.
//!
//! A site whose db key never leaves a hardware security module gives the
//! db certificate and, instead of `db.key`, its own signing command
//! `db.sign` (run as `db.sign UNSIGNED SIGNED`, the certificate's path in
//! `RAMPART_DB_CERT`); what it returns is verified against the certificate
//! like sbsign's output.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::process::Cmd;

/// The three roles, in the order firmware trusts them.
pub const ROLES: [&str; 3] = ["PK", "KEK", "db"];
/// The pair machines seal their disk recovery keys to (`[encryption]`):
/// only its certificate goes into an image. Made on first use, in a keys
/// directory made before it existed too.
pub const RECOVERY: &str = "recovery";
const OWNER_FILE: &str = "owner.guid";
/// The site's signing command, in place of `db.key`.
pub const SIGN_COMMAND: &str = "db.sign";

pub struct KeyPair {
    pub key: PathBuf,
    pub cert: PathBuf,
    /// The certificate, DER.
    pub der: Vec<u8>,
}

/// What signs with the db key.
pub enum Signer {
    /// The key file, read by sbsign.
    Key(PathBuf),
    /// The site's signing command (`db.sign`).
    Command(PathBuf),
}

/// The db certificate and what signs for it.
pub struct DbKey {
    pub signer: Signer,
    pub cert: PathBuf,
    /// The certificate, DER.
    pub der: Vec<u8>,
}

pub struct SiteKeys {
    pub dir: PathBuf,
    pub pk: KeyPair,
    pub kek: KeyPair,
    pub db: DbKey,
    pub recovery: Recovery,
    /// The OpenPGP pair that signs patch media; made on first use too.
    pub archive: super::archive::ArchiveKey,
    pub owner: String,
    /// Whether this build made them.
    pub made: bool,
}

/// The certificate machines seal their recovery keys to; its key may be
/// in the directory or kept offline.
#[derive(Debug, Clone)]
pub struct Recovery {
    pub cert: PathBuf,
}

fn pair_paths(dir: &Path, role: &str) -> (PathBuf, PathBuf) {
    (dir.join(format!("{role}.key")), dir.join(format!("{role}.crt")))
}

/// Keys and certificates must be readable by their owner alone.
fn check_private(path: &Path, what: &str) -> Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("{what} {} is missing", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        bail!(
            "{what} {} can be read by others (mode {:o}); fix it (chmod go= on the directory and its keys) or remove the directory and let rampart make new keys",
            path.display(),
            meta.mode() & 0o777
        );
    }
    Ok(())
}

fn is_guid(text: &str) -> bool {
    text.len() == 36 && text.chars().enumerate().all(|(i, c)| if [8, 13, 18, 23].contains(&i) { c == '-' } else { c.is_ascii_hexdigit() })
}

/// Reads the keys in `dir`, or makes them there if it does not exist.
/// `name` goes into the certificates' subjects.
pub fn load_or_make(dir: &Path, name: &str) -> Result<SiteKeys> {
    let made = !dir.exists();
    if made {
        make(dir, name)?;
    }
    check_private(dir, "the Secure Boot keys directory")?;
    let owner = std::fs::read_to_string(dir.join(OWNER_FILE)).with_context(|| format!("{} has no {OWNER_FILE}", dir.display()))?;
    let owner = owner.trim().to_ascii_lowercase();
    if !is_guid(&owner) {
        bail!("{}: {owner:?} is not a GUID", dir.join(OWNER_FILE).display());
    }
    let pair = |role: &str| -> Result<KeyPair> {
        let (key, cert) = pair_paths(dir, role);
        check_private(&key, &format!("the {role} key"))?;
        load_pair(role, key, cert)
    };
    let (pk, kek) = (pair("PK")?, pair("KEK")?);
    let (recovery_key, recovery_cert) = pair_paths(dir, RECOVERY);
    if !recovery_key.exists() && !recovery_cert.exists() {
        make_pair(dir, RECOVERY, name)?;
    }
    // Only the certificate goes into images: the key opens every machine's
    // escrowed recovery key, and a site keeps it offline.
    let recovery = if recovery_key.exists() {
        Recovery { cert: pair(RECOVERY)?.cert }
    } else {
        load_certificate(RECOVERY, &recovery_cert)?;
        Recovery { cert: recovery_cert }
    };
    // Machines seal to it with RSA-OAEP.
    let text = Cmd::new("openssl").args(["x509", "-noout", "-text", "-in"]).arg(&recovery.cert).run()?.stdout_text();
    if !text.contains("Public Key Algorithm: rsaEncryption") {
        bail!("the recovery certificate {} does not hold an RSA key: machines seal their recovery keys to it with RSA-OAEP", recovery.cert.display());
    }
    super::archive::make_if_missing(dir, name)?;
    if dir.join(super::archive::SECRET).exists() {
        check_private(&dir.join(super::archive::SECRET), "the archive signing key")?;
    }
    let archive = super::archive::load(dir)?;
    let (key, cert) = pair_paths(dir, "db");
    let command = dir.join(SIGN_COMMAND);
    let db = match (key.exists(), command.exists()) {
        (true, true) => bail!("{} holds both db.key and {SIGN_COMMAND}: keep the one that signs", dir.display()),
        (true, false) => {
            let pair = pair("db")?;
            DbKey { signer: Signer::Key(pair.key), cert: pair.cert, der: pair.der }
        }
        (false, true) => {
            check_private(&command, "the signing command")?;
            if std::fs::metadata(&command)?.mode() & 0o100 == 0 {
                bail!("the signing command {} is not executable (chmod 0700 it)", command.display());
            }
            let der = load_certificate("db", &cert)?;
            DbKey { signer: Signer::Command(command), cert, der }
        }
        (false, false) => bail!("{} has neither db.key nor a signing command {SIGN_COMMAND}", dir.display()),
    };
    Ok(SiteKeys { dir: dir.to_path_buf(), pk, kek, db, recovery, archive, owner, made })
}

/// Copies a keys directory (its keys, certificates and owner GUID) to `to`,
/// private from the first byte.
pub fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    check_private(from, "the Secure Boot keys directory")?;
    std::fs::create_dir(to).with_context(|| format!("while creating {}", to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700))?;
    let mut names = vec![OWNER_FILE.to_string(), super::archive::SECRET.to_string(), super::archive::PUBLIC.to_string()];
    for role in ROLES.iter().chain(&[RECOVERY]) {
        names.push(format!("{role}.key"));
        names.push(format!("{role}.crt"));
    }
    // A site that signs with its own command has no db.key.
    if from.join(SIGN_COMMAND).exists() {
        names.retain(|name| name != "db.key");
        names.push(SIGN_COMMAND.to_string());
    }
    // A site that keeps the recovery key offline has its certificate alone.
    // So may the archive key, whose public half alone goes into images.
    for kept_offline in [format!("{RECOVERY}.key"), super::archive::SECRET.to_string()] {
        if !from.join(&kept_offline).exists() {
            names.retain(|name| *name != kept_offline);
        }
    }
    for name in names {
        let bytes = std::fs::read(from.join(&name)).with_context(|| format!("{} has no {name}", from.display()))?;
        crate::fsutil::write_atomic_private(&to.join(&name), &bytes)?;
    }
    if from.join(SIGN_COMMAND).exists() {
        std::fs::set_permissions(to.join(SIGN_COMMAND), std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// A certificate that parses and is valid now, as DER.
fn load_certificate(role: &str, cert: &Path) -> Result<Vec<u8>> {
    let der = Cmd::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(cert)
        .run()
        .with_context(|| format!("the {role} certificate {} is not an X.509 certificate", cert.display()))?
        .stdout;
    let expired = Cmd::new("openssl").args(["x509", "-noout", "-checkend", "0", "-in"]).arg(cert).run_unchecked()?;
    if !expired.status.success() {
        bail!("the {role} certificate {} has expired (or is not valid yet); replace the pair", cert.display());
    }
    Ok(der)
}

/// A key and its certificate: the certificate parses, is valid now, and
/// holds the key's public half.
fn load_pair(role: &str, key: PathBuf, cert: PathBuf) -> Result<KeyPair> {
    let der = load_certificate(role, &cert)?;
    let from_cert = Cmd::new("openssl").args(["x509", "-noout", "-pubkey", "-in"]).arg(&cert).run()?.stdout;
    let from_key = Cmd::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .run()
        .with_context(|| format!("the {role} key {} is not a private key openssl reads", key.display()))?
        .stdout;
    if from_cert != from_key {
        bail!("the {role} key {} and certificate {} do not match: the certificate holds another key", key.display(), cert.display());
    }
    Ok(KeyPair { key, cert, der })
}

/// Makes the three pairs and the owner GUID in a fresh directory, and moves
/// it into place whole: an interrupted run leaves no half set.
fn make(dir: &Path, name: &str) -> Result<()> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("while creating {}", parent.display()))?;
    let staging = tempfile::Builder::new().prefix(".rampart-keys-").tempdir_in(parent).with_context(|| format!("while making a directory in {}", parent.display()))?;
    let work = staging.path();
    std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o700))?;
    for role in ROLES.iter().chain(&[RECOVERY]) {
        make_pair(work, role, name)?;
    }
    super::archive::make_if_missing(work, name)?;
    let owner = uuid_v4()?;
    crate::fsutil::write_atomic_private(&work.join(OWNER_FILE), format!("{owner}\n").as_bytes())?;
    std::fs::rename(work, dir).with_context(|| format!("while moving the new keys to {}", dir.display()))?;
    Ok(())
}

/// A self-signed RSA pair for `role` in `dir`: the key is written under a
/// temporary name and moved last, so a pair is whole or absent.
fn make_pair(dir: &Path, role: &str, name: &str) -> Result<()> {
    let (key, cert) = pair_paths(dir, role);
    let partial = dir.join(format!(".{role}.key.partial"));
    Cmd::new("openssl")
        .args(["req", "-new", "-x509", "-newkey", "rsa:3072", "-nodes", "-sha256", "-days", "7300"])
        .arg("-subj")
        .arg(format!("/CN=rampart {name} {role}/"))
        .arg("-keyout")
        .arg(&partial)
        .arg("-out")
        .arg(&cert)
        .run()
        .with_context(|| format!("while making the {role} key pair"))?;
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o600))?;
    std::fs::set_permissions(&cert, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&partial, &key)?;
    Ok(())
}

fn uuid_v4() -> Result<String> {
    let mut b = [0u8; 16];
    let mut urandom = std::fs::File::open("/dev/urandom").context("while opening /dev/urandom")?;
    std::io::Read::read_exact(&mut urandom, &mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_made_once_then_reused_and_bad_ones_are_refused() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().join("site.keys");
        let made = load_or_make(&dir, "web").unwrap();
        assert!(made.made);
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(dir.join("db.key")).unwrap().mode() & 0o777, 0o600);
        let again = load_or_make(&dir, "web").unwrap();
        assert!(!again.made);
        assert_eq!((again.owner.clone(), again.db.der.clone()), (made.owner.clone(), made.db.der.clone()), "reused, not made again");

        let copy = scratch.path().join("copy.keys");
        copy_dir(&dir, &copy).unwrap();
        assert_eq!(load_or_make(&copy, "web").unwrap().pk.der, made.pk.der);
        assert_eq!(std::fs::read(load_or_make(&copy, "web").unwrap().recovery.cert).unwrap(), std::fs::read(&made.recovery.cert).unwrap());

        // A directory made before the recovery pair existed gets one.
        std::fs::remove_file(copy.join("recovery.key")).unwrap();
        std::fs::remove_file(copy.join("recovery.crt")).unwrap();
        let grown = load_or_make(&copy, "web").unwrap();
        let grown_cert = std::fs::read(&grown.recovery.cert).unwrap();
        assert!(grown_cert != std::fs::read(&made.recovery.cert).unwrap() && !grown.made);
        // The recovery key kept offline: the certificate alone does, and is still checked.
        std::fs::remove_file(copy.join("recovery.key")).unwrap();
        assert_eq!(std::fs::read(load_or_make(&copy, "web").unwrap().recovery.cert).unwrap(), grown_cert);
        let offline = scratch.path().join("offline.keys");
        copy_dir(&copy, &offline).unwrap();
        assert!(!offline.join("recovery.key").exists() && offline.join("recovery.crt").exists());
        // An EC certificate: machines could not seal to it.
        Cmd::new("openssl")
            .args(["req", "-new", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "30", "-subj", "/CN=ec/", "-keyout"])
            .arg(scratch.path().join("ec.key"))
            .arg("-out")
            .arg(copy.join("recovery.crt"))
            .run()
            .unwrap();
        let error = format!("{:#}", load_or_make(&copy, "web").err().unwrap());
        assert!(error.contains("does not hold an RSA key"), "{error}");
        std::fs::write(copy.join("recovery.crt"), "not a certificate\n").unwrap();
        let error = format!("{:#}", load_or_make(&copy, "web").err().unwrap());
        assert!(error.contains("the recovery certificate") && error.contains("is not an X.509 certificate"), "{error}");

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let error = format!("{:#}", load_or_make(&dir, "web").err().unwrap());
        assert!(error.contains("can be read by others (mode 755)"), "{error}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();

        std::fs::copy(dir.join("KEK.crt"), dir.join("db.crt")).unwrap();
        let error = format!("{:#}", load_or_make(&dir, "web").err().unwrap());
        assert!(error.contains("the db key") && error.contains("do not match"), "{error}");

        std::fs::write(dir.join("db.crt"), "not a certificate\n").unwrap();
        let error = format!("{:#}", load_or_make(&dir, "web").err().unwrap());
        assert!(error.contains("is not an X.509 certificate"), "{error}");
    }

    #[test]
    fn a_signing_command_stands_in_for_the_db_key_and_is_checked() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().join("site.keys");
        load_or_make(&dir, "web").unwrap();
        let command = dir.join(SIGN_COMMAND);
        std::fs::write(&command, "#!/bin/sh\nexit 1\n").unwrap();
        std::fs::set_permissions(&command, std::fs::Permissions::from_mode(0o700)).unwrap();
        let error = format!("{:#}", load_or_make(&dir, "web").err().unwrap());
        assert!(error.contains("holds both db.key and db.sign"), "{error}");

        std::fs::rename(dir.join("db.key"), scratch.path().join("db.key")).unwrap();
        let keys = load_or_make(&dir, "web").unwrap();
        assert!(matches!(&keys.db.signer, Signer::Command(path) if *path == command));
        let copy = scratch.path().join("copy.keys");
        copy_dir(&dir, &copy).unwrap();
        assert!(!copy.join("db.key").exists());
        assert_eq!(std::fs::metadata(copy.join(SIGN_COMMAND)).unwrap().mode() & 0o777, 0o700);
        assert!(matches!(load_or_make(&copy, "web").unwrap().db.signer, Signer::Command(_)));

        std::fs::set_permissions(&command, std::fs::Permissions::from_mode(0o600)).unwrap();
        let error = format!("{:#}", load_or_make(&dir, "web").err().unwrap());
        assert!(error.contains("is not executable"), "{error}");
        std::fs::set_permissions(&command, std::fs::Permissions::from_mode(0o755)).unwrap();
        let error = format!("{:#}", load_or_make(&dir, "web").err().unwrap());
        assert!(error.contains("the signing command") && error.contains("can be read by others"), "{error}");

        std::fs::remove_file(&command).unwrap();
        let error = format!("{:#}", load_or_make(&dir, "web").err().unwrap());
        assert!(error.contains("has neither db.key nor a signing command db.sign"), "{error}");
    }

    #[test]
    fn owner_guids_are_checked() {
        assert!(is_guid("11111111-2222-3333-4444-555555555555"));
        assert!(!is_guid("11111111-2222-3333-4444-55555555555"));
        assert!(!is_guid("1111111122223333444455555555555555555"));
        assert!(is_guid(&uuid_v4().unwrap()));
    }
}
