//! The signed boot path: a unified kernel image (systemd-stub from the
//! image's own systemd-boot-efi, with the kernel, the initrd, the command
//! line and os-release as PE sections, joined by the host's objcopy) and
//! systemd-boot, both signed with the site's db key (sbsigntool); the signed
//! enrolment files systemd-boot offers a machine in setup mode (efitools);
//! the OVMF variable store with the keys enrolled. Every output depends on
//! its inputs alone: the same keys and files give the same bytes.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

use super::keys::{Signer, SiteKeys};
use crate::process::Cmd;

/// Where the sections go: after the stub's own, and the initrd after the
/// kernel, each at a boundary of this size.
const SECTION_ALIGN: u64 = 0x10000;
const BIG_SECTION_ALIGN: u64 = 0x100000;

fn round_up(value: u64, to: u64) -> u64 {
    value.div_ceil(to) * to
}

/// The first address after the sections of a PE file (ImageBase included).
pub fn pe_end(pe: &[u8]) -> Result<u64> {
    let u16_at = |at: usize| -> Result<u16> { Ok(u16::from_le_bytes(pe.get(at..at + 2).context("cut short")?.try_into()?)) };
    let u32_at = |at: usize| -> Result<u32> { Ok(u32::from_le_bytes(pe.get(at..at + 4).context("cut short")?.try_into()?)) };
    ensure!(pe.get(0..2) == Some(b"MZ"), "not a PE file (no MZ header)");
    let header = usize::try_from(u32_at(0x3c)?)?;
    ensure!(pe.get(header..header + 4) == Some(b"PE\0\0"), "not a PE file (no PE signature)");
    let sections = usize::from(u16_at(header + 6)?);
    let optional_size = usize::from(u16_at(header + 20)?);
    let optional = header + 24;
    let image_base = match u16_at(optional)? {
        0x20b => u64::from_le_bytes(pe.get(optional + 24..optional + 32).context("cut short")?.try_into()?),
        0x10b => u64::from(u32_at(optional + 28)?),
        magic => bail!("unknown PE optional header {magic:#x}"),
    };
    let table = optional + optional_size;
    let mut end = 0u64;
    for i in 0..sections {
        let entry = table + 40 * i;
        let size = u64::from(u32_at(entry + 8)?);
        let address = u64::from(u32_at(entry + 12)?);
        end = end.max(address + size);
    }
    Ok(image_base + end)
}

/// What goes into one unified kernel image.
pub struct Uki<'a> {
    pub stub: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub cmdline: &'a str,
    pub os_release: &'a str,
}

/// Joins the UKI's parts into `output` (unsigned), in `work`. objcopy
/// writes the time into the PE header: it runs with the clock stopped at
/// `epoch`, as sbsign does.
pub fn make_uki(uki: &Uki, work: &Path, output: &Path, epoch: i64) -> Result<()> {
    let stub = std::fs::read(uki.stub).with_context(|| format!("while reading the systemd stub {}", uki.stub.display()))?;
    let stub_end = pe_end(&stub).with_context(|| format!("the systemd stub {}", uki.stub.display()))?;
    std::fs::create_dir_all(work)?;
    let osrel = work.join("os-release");
    let cmdline = work.join("cmdline");
    std::fs::write(&osrel, uki.os_release)?;
    std::fs::write(&cmdline, uki.cmdline)?;
    let kernel_size = std::fs::metadata(uki.kernel)?.len();
    let osrel_at = round_up(stub_end, SECTION_ALIGN);
    let cmdline_at = round_up(osrel_at + uki.os_release.len() as u64, SECTION_ALIGN);
    let linux_at = round_up(cmdline_at + uki.cmdline.len() as u64, BIG_SECTION_ALIGN);
    let initrd_at = round_up(linux_at + kernel_size, BIG_SECTION_ALIGN);
    let mut objcopy = Cmd::new("faketime").env("TZ", "UTC").arg("-f").arg(stamp(epoch)).arg("objcopy");
    for (section, file, at) in [(".osrel", osrel.as_path(), osrel_at), (".cmdline", cmdline.as_path(), cmdline_at), (".linux", uki.kernel, linux_at), (".initrd", uki.initrd, initrd_at)] {
        let mut add = std::ffi::OsString::from(format!("{section}="));
        add.push(file);
        objcopy = objcopy.arg("--add-section").arg(add).arg("--change-section-vma").arg(format!("{section}={at:#x}"));
    }
    objcopy.arg(uki.stub).arg(output).run().context("while joining the unified kernel image (objcopy)")?;
    Ok(())
}

/// The time a signature says it was made, `YYYY-MM-DD hh:mm:ss` (UTC).
/// Given to `faketime -f`, which stops the clock there; without `-f` the
/// clock starts there and runs, and a signature made a second later than
/// the last build's differs from it.
fn stamp(epoch: i64) -> String {
    let (year, month, day, hour, minute, second) = super::efivars::civil_time(epoch);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02}")
}

/// Signs a PE file with the db key (sbsign, or the site's own signing
/// command): firmware with the site's db runs it. Either way the signature
/// must verify with the db certificate. An Authenticode signature carries
/// its signing time: sbsign runs with the clock stopped at `epoch` (the
/// lock's date, through faketime), so the same inputs sign the same bytes;
/// a signing command gets that time too (`RAMPART_SIGNING_TIME`, UTC, and
/// `SOURCE_DATE_EPOCH`).
pub fn sign(keys: &SiteKeys, input: &Path, output: &Path, epoch: i64) -> Result<()> {
    let time = stamp(epoch);
    match &keys.db.signer {
        Signer::Key(key) => Cmd::new("faketime")
            .env("TZ", "UTC")
            .arg("-f")
            .arg(&time)
            .arg("sbsign")
            .arg("--key")
            .arg(key)
            .arg("--cert")
            .arg(&keys.db.cert)
            .arg("--output")
            .arg(output)
            .arg(input)
            .run()
            .with_context(|| format!("while signing {} with the db key (sbsign)", input.display()))?,
        Signer::Command(command) => Cmd::new(&command.to_string_lossy())
            .arg(input)
            .arg(output)
            .env("RAMPART_DB_CERT", &keys.db.cert)
            .env("RAMPART_SIGNING_TIME", &time)
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .env("TZ", "UTC")
            .run()
            .with_context(|| format!("while signing {} with the site's signing command {}", input.display(), command.display()))?,
    };
    Cmd::new("sbverify")
        .arg("--cert")
        .arg(&keys.db.cert)
        .arg(output)
        .run()
        .with_context(|| format!("the signature of {} does not verify with the db certificate {}", output.display(), keys.db.cert.display()))?;
    Ok(())
}

/// `PK.auth`, `KEK.auth` and `db.auth` in `dir`: each signature list signed
/// by the key above it (the PK by itself), time-stamped `epoch`, for
/// systemd-boot to enrol on a machine in setup mode.
pub fn enrolment_files(keys: &SiteKeys, dir: &Path, epoch: i64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let stamp = stamp(epoch);
    for (role, cert, signer) in [("PK", &keys.pk.cert, &keys.pk), ("KEK", &keys.kek.cert, &keys.pk), ("db", &keys.db.cert, &keys.kek)] {
        let list = dir.join(format!("{role}.esl"));
        Cmd::new("cert-to-efi-sig-list").args(["-g", &keys.owner]).arg(cert).arg(&list).run().with_context(|| format!("while making the {role} signature list"))?;
        Cmd::new("sign-efi-sig-list")
            .args(["-t", &stamp, "-g", &keys.owner, "-k"])
            .arg(&signer.key)
            .arg("-c")
            .arg(&signer.cert)
            .arg(role)
            .arg(&list)
            .arg(dir.join(format!("{role}.auth")))
            .run()
            .with_context(|| format!("while signing the {role} enrolment file"))?;
        std::fs::remove_file(&list)?;
    }
    Ok(())
}

/// `template` (OVMF's blank store) with the keys enrolled and Secure Boot on.
pub fn variable_store(keys: &SiteKeys, template: &Path, epoch: i64) -> Result<Vec<u8>> {
    let blank = std::fs::read(template).with_context(|| format!("while reading OVMF's variable store {}", template.display()))?;
    let enrolment = super::efivars::Enrolment { pk: &keys.pk.der, kek: &keys.kek.der, db: &keys.db.der, owner: &keys.owner, time: epoch };
    super::efivars::enrolled_store(&blank, &enrolment).with_context(|| format!("while enrolling the site's keys into {}", template.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pe_files_end_is_its_last_sections_end_plus_the_image_base() {
        let mut pe = vec![0u8; 0x200];
        pe[0..2].copy_from_slice(b"MZ");
        pe[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        pe[0x86..0x88].copy_from_slice(&2u16.to_le_bytes());
        pe[0x94..0x96].copy_from_slice(&0xf0u16.to_le_bytes());
        let optional = 0x98;
        pe[optional..optional + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        pe[optional + 24..optional + 32].copy_from_slice(&0x1000u64.to_le_bytes());
        let table = optional + 0xf0;
        for (i, (size, address)) in [(0x500u32, 0x4000u32), (0x34u32, 0x19100u32)].iter().enumerate() {
            pe[table + 40 * i + 8..table + 40 * i + 12].copy_from_slice(&size.to_le_bytes());
            pe[table + 40 * i + 12..table + 40 * i + 16].copy_from_slice(&address.to_le_bytes());
        }
        assert_eq!(pe_end(&pe).unwrap(), 0x1000 + 0x19134);
        assert!(pe_end(b"not a PE file").is_err());
        assert_eq!(round_up(0x1a134, SECTION_ALIGN), 0x20000);
    }
}
