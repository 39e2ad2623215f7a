//! Initial passwords: the 0600 secrets file next to the artifacts (read back
//! by rebuilds and by `rampart test`) and random passwords that pass the
//! profile's policy. Secrets never go into argv, logs or the report.

use std::path::Path;

use anyhow::{Context, Result};

use crate::profile::controls::password_weakness;
use crate::profile::PasswordPolicy;

/// `user:password` lines of an earlier secrets file (comments skipped).
pub fn read(path: &Path) -> Result<Vec<(String, String)>> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else { return Ok(Vec::new()) };
    if meta.mode() & 0o077 != 0 {
        anyhow::bail!("{} can be read by others (mode {:o}); fix it (chmod 600) or remove it and rotate the passwords", path.display(), meta.mode() & 0o777);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("while reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_once(':').map(|(u, p)| (u.to_string(), p.to_string())))
        .collect())
}

/// A random password that passes the policy: letters, digits and symbols
/// without look-alikes, at least 20 characters.
pub fn random_password(user: &str, policy: &PasswordPolicy) -> Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789-_.!#%+=@";
    let length = policy.min_length.max(20) as usize;
    let mut urandom = std::fs::File::open("/dev/urandom").context("while opening /dev/urandom")?;
    // Bytes at or above the largest multiple of the alphabet's size are
    // drawn again, one by one, so every character is equally likely.
    let limit = 256 - 256 % ALPHABET.len();
    let mut next_char = || -> Result<char> {
        loop {
            let mut byte = [0u8; 1];
            std::io::Read::read_exact(&mut urandom, &mut byte)?;
            if (byte[0] as usize) < limit {
                return Ok(ALPHABET[byte[0] as usize % ALPHABET.len()] as char);
            }
        }
    };
    for _ in 0..1000 {
        let password: String = (0..length).map(|_| next_char()).collect::<Result<_>>()?;
        if crate::profile::controls::character_classes(&password) == 4 && password_weakness(&password, user, policy).is_none() {
            return Ok(password);
        }
    }
    anyhow::bail!("could not make a random password that passes the policy")
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_passwords_pass_the_policy_and_differ() {
        let policy = PasswordPolicy::default();
        let a = random_password("admin", &policy).unwrap();
        let b = random_password("admin", &policy).unwrap();
        assert_ne!(a, b);
        assert!(a.len() >= 20);
        assert_eq!(password_weakness(&a, "admin", &policy), None);
        let long = PasswordPolicy { min_length: 128, ..PasswordPolicy::default() };
        assert_eq!(random_password("admin", &long).unwrap().len(), 128, "long policies are met, not given up on");
    }
}
