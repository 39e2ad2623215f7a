//! Secure Boot: the site's keys, the signed boot path and the firmware's
//! variable store with the keys enrolled.

pub mod archive;
pub mod boot;
pub mod efivars;
pub mod keys;

/// OVMF's blank variable store, the template of `<name>.ovmf-vars.fd`.
pub const OVMF_VARS_BLANK: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// The OVMF build that enforces Secure Boot (SMM on), for that store.
pub const OVMF_CODE_SECURE: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
/// `<name>.ovmf-vars.fd`: OVMF's store with the site's keys, Secure Boot on.
pub const VARS_SUFFIX: &str = "ovmf-vars.fd";

/// The host tools the signed boot path needs, checked before a build starts.
pub fn require_host_tools() -> anyhow::Result<()> {
    crate::process::require_programs(&[
        ("openssl", "openssl"),
        ("objcopy", "binutils"),
        ("sbsign", "sbsigntool"),
        ("sbverify", "sbsigntool"),
        ("faketime", "faketime"),
        ("gpg", "gnupg"),
        ("cert-to-efi-sig-list", "efitools"),
        ("sign-efi-sig-list", "efitools"),
    ])?;
    if !std::path::Path::new(OVMF_VARS_BLANK).exists() {
        anyhow::bail!("UEFI firmware {OVMF_VARS_BLANK} is missing (package ovmf); {}", crate::process::INSTALL_HINT);
    }
    Ok(())
}
