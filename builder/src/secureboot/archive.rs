//! The site's archive signing key: an OpenPGP Ed25519 pair in the keys
//! directory (`archive.key`, the secret, armored; `archive.pgp`, the public
//! key). It signs patch media (`rampart patch`): their seal and their apt
//! repository's InRelease. Images carry only the public key, which is the
//! only key `rampart-patch` and apt trust for a medium.
//!
//! The pair is made with the host's gpg under a stopped clock at
//! 2000-01-01, so every signature, each stamped with its lock's date, is
//! younger than its key; Ed25519 signatures are deterministic, so a medium
//! is reproducible. gpg runs in a throwaway home, its agent stopped after.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::process::Cmd;

pub const SECRET: &str = "archive.key";
pub const PUBLIC: &str = "archive.pgp";
/// When every archive key was made: before any lock's date.
const KEY_TIME: &str = "20000101T000000!";

#[derive(Debug, Clone)]
pub struct ArchiveKey {
    pub secret: PathBuf,
    pub public: PathBuf,
}

/// A gpg home of its own, its agent stopped when dropped.
struct GpgHome(tempfile::TempDir);

impl GpgHome {
    fn new() -> Result<GpgHome> {
        let dir = tempfile::Builder::new().prefix("rampart-gpg-").tempdir().context("while making a gpg home")?;
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        Ok(GpgHome(dir))
    }

    fn gpg(&self) -> Cmd {
        Cmd::new("gpg").arg("--homedir").arg(self.0.path()).args(["--batch", "--no-tty", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""])
    }
}

impl Drop for GpgHome {
    fn drop(&mut self) {
        let _ = Cmd::new("gpgconf").arg("--homedir").arg(self.0.path()).args(["--kill", "all"]).run_unchecked();
    }
}

/// Makes the pair in `dir` when neither half is there.
pub fn make_if_missing(dir: &Path, name: &str) -> Result<()> {
    let (secret, public) = (dir.join(SECRET), dir.join(PUBLIC));
    if secret.exists() || public.exists() {
        return Ok(());
    }
    let home = GpgHome::new()?;
    home.gpg()
        .args(["--faked-system-time", KEY_TIME, "--quick-generate-key"])
        .arg(format!("rampart archive signing key ({name})"))
        .args(["ed25519", "sign", "never"])
        .run()
        .context("while making the archive signing key")?;
    let secret_bytes = home.gpg().args(["--armor", "--export-secret-keys"]).run()?.stdout;
    let public_bytes = home.gpg().arg("--export").run()?.stdout;
    crate::fsutil::write_atomic_private(&public, &public_bytes)?;
    crate::fsutil::write_atomic_private(&secret, &secret_bytes)?;
    Ok(())
}

/// The pair in `dir`: the public key is one key that gpg reads, and the
/// secret key is its own.
pub fn load(dir: &Path) -> Result<ArchiveKey> {
    let key = ArchiveKey { secret: dir.join(SECRET), public: dir.join(PUBLIC) };
    let public_fpr = fingerprints(&key.public).with_context(|| format!("the archive public key {} does not read", key.public.display()))?;
    if public_fpr.len() != 1 {
        bail!("{} holds {} keys; it must hold the one archive key", key.public.display(), public_fpr.len());
    }
    if key.secret.exists() {
        let secret_fpr = fingerprints(&key.secret).with_context(|| format!("the archive key {} does not read", key.secret.display()))?;
        if secret_fpr != public_fpr {
            bail!("the archive key {} and its public key {} do not match", key.secret.display(), key.public.display());
        }
    }
    Ok(key)
}

/// The primary keys' fingerprints in a key file, read without importing it.
fn fingerprints(path: &Path) -> Result<Vec<String>> {
    let home = GpgHome::new()?;
    let out = home.gpg().args(["--with-colons", "--import-options", "show-only", "--import"]).arg(path).run()?.stdout_text();
    // A primary key's fingerprint is the first fpr line after its pub/sec line.
    let mut found = Vec::new();
    let mut want = false;
    for line in out.lines() {
        let field: Vec<&str> = line.split(':').collect();
        match field[0] {
            "pub" | "sec" => want = true,
            "fpr" if want => {
                found.push(field.get(9).unwrap_or(&"").to_string());
                want = false;
            }
            _ => {}
        }
    }
    Ok(found)
}

impl ArchiveKey {
    /// `text` clear-signed (SHA512) at `epoch`, as gpg writes it.
    pub fn clearsign(&self, text: &[u8], epoch: i64) -> Result<Vec<u8>> {
        if !self.secret.exists() {
            bail!("the archive key {} is not here: a patch medium is signed with it (a site keeping it elsewhere signs on that host)", self.secret.display());
        }
        let home = GpgHome::new()?;
        home.gpg().arg("--import").arg(&self.secret).run().context("while reading the archive key")?;
        let signed = home
            .gpg()
            .arg("--faked-system-time")
            .arg(format!("{epoch}!"))
            .args(["--digest-algo", "SHA512", "--clearsign"])
            .stdin_bytes(text.to_vec())
            .run()
            .context("while signing with the archive key")?
            .stdout;
        Ok(signed)
    }

    /// The text of a clear-signed message, if the public key made its signature.
    pub fn verify(&self, signed: &[u8]) -> Result<Vec<u8>> {
        let scratch = tempfile::tempdir()?;
        let message = scratch.path().join("signed");
        std::fs::write(&message, signed)?;
        let out = Cmd::new("gpgv")
            .arg("--keyring")
            .arg(std::fs::canonicalize(&self.public)?)
            .args(["--output", "-"])
            .arg(&message)
            .run()
            .context("the archive key did not make this signature")?;
        Ok(out.stdout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pair_is_made_once_signs_reproducibly_and_verifies() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path();
        make_if_missing(dir, "web").unwrap();
        let public = std::fs::read(dir.join(PUBLIC)).unwrap();
        make_if_missing(dir, "web").unwrap();
        assert_eq!(std::fs::read(dir.join(PUBLIC)).unwrap(), public, "made once");
        let key = load(dir).unwrap();
        let signed = key.clearsign(b"Origin: rampart\n", 1_796_253_223).unwrap();
        assert_eq!(key.clearsign(b"Origin: rampart\n", 1_796_253_223).unwrap(), signed, "reproducible");
        assert_eq!(key.verify(&signed).unwrap(), b"Origin: rampart\n");
        let text = String::from_utf8(signed.clone()).unwrap();
        let forged = text.replace("Origin: rampart", "Origin: rampert");
        assert!(key.verify(forged.as_bytes()).is_err());

        // Another site's key neither loads beside this one nor verifies.
        let other = scratch.path().join("other");
        std::fs::create_dir(&other).unwrap();
        make_if_missing(&other, "web").unwrap();
        let other_key = load(&other).unwrap();
        assert!(other_key.verify(&signed).is_err());
        std::fs::copy(other.join(SECRET), dir.join(SECRET)).unwrap();
        let error = format!("{:#}", load(dir).err().unwrap());
        assert!(error.contains("do not match"), "{error}");
    }
}
