//! The `data-is-sealed-to-the-tpm` check of `[encryption] data`: what the
//! machine writes to its data partitions is not on its disk in the clear;
//! each partition is a LUKS2 volume with a TPM token that the recovery key,
//! unsealed with the site's recovery key, opens; the machine switched on
//! again opens them with its TPM alone; the same disk in a machine with
//! another TPM stops at the recovery key prompt; and a never-booted copy
//! of the image in a machine without a TPM says so and encrypts nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::qemu::Machine;
use super::scenario::Check;
use super::{copy_config, failed, CheckEnv, CheckFailure};
use crate::process::Cmd;
use crate::stages::encryption::{CONSOLE_MARKER, ESCROW, SERVICE};

/// The LUKS2 header and key slots: everything `--test-passphrase` reads
/// (cryptsetup's default data offset with `--reduce-device-size 32M`).
const HEADER_BYTES: usize = 16 << 20;
/// What systemd-cryptsetup asks on the console when the TPM does not unseal.
/// Every volume carries systemd's recovery token, so every prompt names it.
const RECOVERY_PROMPT: &str = "Please enter recovery key for disk ";
const POWER_OFF: Duration = Duration::from_secs(180);
/// What the check types at the first prompt, and what systemd-cryptsetup
/// says of it.
const WRONG_KEY: &str = "not-the-recovery-key";
const WRONG_KEY_REFUSED: &str = "Passphrase incorrect";
/// What the console shows once every volume is open and the boot went on.
const LOGIN_PROMPT: &str = " login: ";

fn root(machine: &Machine, env: &CheckEnv, command: &str) -> Result<String, CheckFailure> {
    let password = env.session.sudo_password.as_deref().ok_or_else(|| failed("the check needs the admin's password for sudo, and the secrets file has none", String::new()))?;
    match machine.ssh_as_root(command, password, Duration::from_secs(120)) {
        Ok(Some(output)) if output.status.success() => Ok(output.stdout_text()),
        Ok(Some(output)) => Err(failed(format!("`{command}` failed as root"), super::show(command, &output))),
        Ok(None) => Err(failed(format!("`{command}` timed out"), String::new())),
        Err(error) => Err(failed("could not run ssh", format!("{error:#}"))),
    }
}

fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut buffer = vec![0u8; bytes];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut buffer)?;
    Ok(hex::encode(buffer))
}

/// `printf` octal escapes for `text`: the command line (which the audit log
/// and the journal may keep) never holds the text itself.
fn printf_escaped(text: &str) -> String {
    text.bytes().map(|b| format!("\\{b:03o}")).collect()
}

/// Whether the file holds the bytes `needle` anywhere (grep reads a sparse
/// disk's holes quickly; each byte given as `\xHH`, in the C locale).
fn file_holds(file: &Path, needle: &[u8]) -> anyhow::Result<bool> {
    let pattern: String = needle.iter().map(|b| format!("\\x{b:02x}")).collect();
    let output = Cmd::new("grep").env("LC_ALL", "C").args(["-c", "-a", "-P", "--", &pattern]).arg(file).run_unchecked()?;
    match output.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => anyhow::bail!("grep could not read {}: {}", file.display(), String::from_utf8_lossy(&output.stderr).trim()),
    }
}

/// The first bytes of each data partition of a raw disk, by GPT name.
fn partition_headers(raw: &Path, names: &[&str], work: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    use std::io::{Read, Seek};
    let table = Cmd::new("sfdisk").arg("--json").arg(raw).run()?;
    let table: serde_json::Value = serde_json::from_slice(&table.stdout)?;
    let partitions = table["partitiontable"]["partitions"].as_array().cloned().unwrap_or_default();
    let mut headers = Vec::new();
    for name in names {
        let start = partitions
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["start"].as_u64())
            .ok_or_else(|| anyhow::anyhow!("the disk has no partition named {name}"))?;
        let mut file = std::fs::File::open(raw)?;
        file.seek(std::io::SeekFrom::Start(start * 512))?;
        let mut header = vec![0u8; HEADER_BYTES];
        file.read_exact(&mut header)?;
        let path = work.join(format!("sealed-{name}.luks-header"));
        std::fs::write(&path, &header)?;
        headers.push((name.to_string(), path));
    }
    Ok(headers)
}

/// The machine's recovery key: its escrow, opened with the site's recovery key.
fn unseal_recovery_key(escrow: &str, keys: &Path) -> anyhow::Result<Vec<u8>> {
    let sealed = Cmd::new("base64").arg("-d").stdin_bytes(escrow.trim().as_bytes().to_vec()).run()?.stdout;
    let output = Cmd::new("openssl")
        .args(["pkeyutl", "-decrypt", "-inkey"])
        .arg(keys.join("recovery.key"))
        .args(["-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256"])
        .stdin_bytes(sealed)
        .run()?;
    Ok(output.stdout)
}

fn opens(header: &Path, key: &[u8]) -> anyhow::Result<bool> {
    let output = Cmd::new("cryptsetup").args(["open", "--test-passphrase", "--disable-external-tokens", "--key-file", "-"]).arg(header).stdin_bytes(key.to_vec()).run_unchecked()?;
    Ok(output.status.success())
}

pub(super) fn data_is_sealed_to_the_tpm(machine: &mut Machine, check: &Check, env: &CheckEnv) -> Result<(), CheckFailure> {
    if !env.profile.encryption.data || !machine.has_tpm() {
        let missing = if machine.has_tpm() { format!("profile {} has no [encryption] data", env.profile.name) } else { format!("machine {} has no tpm = true", machine.name) };
        return Err(failed(format!("data-is-sealed-to-the-tpm needs a profile with [encryption] data = true and a machine with tpm = true: {missing}"), String::new()));
    }
    let names: Vec<&str> = env.profile.image.partitions.iter().map(|p| p.partition.name).collect();
    let error = |what: &str| {
        let what = what.to_string();
        move |e: anyhow::Error| failed(what.clone(), format!("{e:#}"))
    };
    let marker = format!("rampart-sealed-{}", random_hex(12).map_err(|e| failed("could not read /dev/urandom", e.to_string()))?);
    let in_clear = format!("rampart-in-the-clear-{}", random_hex(12).map_err(|e| failed("could not read /dev/urandom", e.to_string()))?);
    // Into /var and /home (encrypted), and a control into /root (the root
    // file system, in the clear): the scan must find that one.
    let home = format!("/home/{}", env.admin);
    let written = root(
        machine,
        env,
        &format!(
            "umask 077; printf '{0}' >/var/lib/rampart-test-marker; printf '{0}' >{home}/.rampart-test-marker; printf '{1}' >/root/rampart-test-control; sync; cat {ESCROW}; for n in {2}; do blkid -s UUID -o value /dev/mapper/rampart-$n; done",
            printf_escaped(&marker),
            printf_escaped(&in_clear),
            names.join(" ")
        ),
    )?;
    let mut lines = written.lines();
    let escrow = lines.next().unwrap_or_default().trim().to_string();
    // Each volume's file system UUID, as its superblock holds it: found in
    // the clear, it would be metadata cryptsetup moved and left behind.
    let uuids: Vec<(String, Vec<u8>)> = lines.map(|l| (l.trim().to_string(), hex::decode(l.trim().replace('-', "")).unwrap_or_default())).collect();
    if uuids.len() != names.len() || uuids.iter().any(|(_, bytes)| bytes.len() != 16) {
        return Err(failed("could not read the UUID of every volume's file system", written));
    }
    // Off, as a disk taken out of the machine is.
    let _ = root(machine, env, "systemctl poweroff");
    machine.wait_for_power_off(POWER_OFF).map_err(error("the machine did not power off"))?;
    let raw = env.work.join(format!("{}-sealed.raw", machine.name));
    Cmd::new("qemu-img").args(["convert", "-f", "qcow2", "-O", "raw"]).arg(&machine.disk).arg(&raw).run().map_err(error("could not read the machine's disk"))?;
    if !file_holds(&raw, in_clear.as_bytes()).map_err(error("could not scan the disk"))? {
        return Err(failed("the file written to the root file system is not on the disk in the clear: the scan proves nothing", String::new()));
    }
    if file_holds(&raw, marker.as_bytes()).map_err(error("could not scan the disk"))? {
        return Err(failed("what the machine wrote to /var and /home is on its disk in the clear", format!("marker {marker} found in {}", raw.display())));
    }
    for (uuid, bytes) in &uuids {
        if file_holds(&raw, bytes).map_err(error("could not scan the disk"))? {
            return Err(failed(format!("the superblock of file system {uuid}, inside a volume, is on the disk in the clear: cryptsetup's moved copy was not overwritten"), String::new()));
        }
    }
    let recovery = unseal_recovery_key(&escrow, &env.out.join(format!("{}.{}", env.profile.name, crate::build::KEYS_SUFFIX)))
        .map_err(error(&format!("the escrow in {ESCROW} does not open with the site's recovery key")))?;
    // The recovery key itself was never written to the disk (only sealed).
    if file_holds(&raw, &recovery).map_err(error("could not scan the disk"))? {
        return Err(failed("the machine's recovery key is on its disk in the clear", String::new()));
    }
    let headers = partition_headers(&raw, &names, env.work).map_err(error("could not read the partitions' headers"))?;
    for (name, header) in &headers {
        let dump = Cmd::new("cryptsetup").arg("luksDump").arg(header).run().map_err(error(&format!("{name} is not a LUKS volume")))?.stdout_text();
        let luks2 = dump.lines().any(|l| l.starts_with("Version:") && l.trim_end().ends_with('2'));
        if !luks2 || !dump.contains("systemd-tpm2") {
            return Err(failed(format!("{name} is not a LUKS2 volume with a TPM token"), dump));
        }
        if !opens(header, &recovery).map_err(error("could not run cryptsetup"))? {
            return Err(failed(format!("the machine's recovery key does not open {name}"), dump));
        }
        if opens(header, b"not-the-recovery-key").map_err(error("could not run cryptsetup"))? {
            return Err(failed(format!("a wrong key opens {name}"), dump));
        }
    }
    std::fs::remove_file(&raw).ok();

    // Switched on again: its own TPM opens every volume, unattended.
    machine.restart().map_err(error("could not start the machine again"))?;
    machine.wait_for_ssh(check.timeout).map_err(error("the machine did not come back with its TPM"))?;
    // The first-boot unit runs at every boot, and finds nothing left to do.
    let read = root(machine, env, &format!("cat /var/lib/rampart-test-marker; echo; cat {home}/.rampart-test-marker; echo; systemctl is-active {SERVICE}"))?;
    if read.trim_end() != format!("{marker}\n{marker}\nactive") {
        return Err(failed("after a restart the data partitions do not hold what was written, or the encryption unit failed", read));
    }

    let _ = root(machine, env, "systemctl poweroff");
    machine.wait_for_power_off(POWER_OFF).map_err(error("the machine did not power off"))?;

    // The same disk in another machine, with a TPM of its own: the boot
    // stops at the recovery key prompt; a wrong key is refused; the
    // machine's recovery key, typed at the console, opens every volume.
    let name = format!("{}-other-tpm", machine.name);
    let other_disk = env.work.join(format!("{name}.qcow2"));
    Cmd::new("qemu-img").args(["convert", "-f", "qcow2", "-O", "qcow2"]).arg(&machine.disk).arg(&other_disk).run().map_err(error("could not copy the disk"))?;
    let mut config = copy_config(&name, other_disk, env);
    config.tpm = Some(env.work.join(format!("{name}.tpm")));
    config.console_input = true;
    // The admin logs in to it (the first machine's disk, the same host).
    config.key = env.admin_key;
    let mut other = Machine::boot(&config, env.work).map_err(error("could not boot the disk in another machine"))?;
    let recovered = recover_at_the_console(&mut other, machine, env, check, &recovery, &marker, &home);
    other.shut_down();
    recovered?;

    // A never-booted copy of the image in a machine without a TPM: the
    // first boot says so and encrypts nothing.
    let name = format!("{}-no-tpm", machine.name);
    let fresh = env.work.join(format!("{name}.qcow2"));
    let image = std::fs::canonicalize(env.image).map_err(|e| failed("could not find the image", e.to_string()))?;
    Cmd::new("qemu-img").args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"]).arg(&image).arg(&fresh).run().map_err(error("could not make a copy of the image"))?;
    let config = copy_config(&name, fresh, env);
    let mut bare = Machine::boot(&config, env.work).map_err(error("could not boot the copy without a TPM"))?;
    let said = bare.wait_for_console(&format!("{CONSOLE_MARKER}this machine has no TPM"), check.timeout);
    let tail = bare.serial_tail(30);
    bare.shut_down();
    said.map_err(|e| failed("a machine without a TPM did not say that it encrypts nothing", format!("{e:#}\n{tail}")))?;
    Ok(())
}

/// On a machine whose TPM does not open the volumes: answers the first
/// prompt with a wrong key and every later one with the recovery key, then
/// reads what the first machine wrote and finds the refusal in the journal.
fn recover_at_the_console(other: &mut Machine, first: &Machine, env: &CheckEnv, check: &Check, recovery: &[u8], marker: &str, home: &str) -> Result<(), CheckFailure> {
    let recovery = String::from_utf8_lossy(recovery).trim().to_string();
    let (_, mut seen) = other
        .wait_for_console_text(&[RECOVERY_PROMPT], 0, check.timeout)
        .map_err(|e| failed("the disk in a machine with another TPM did not ask for the recovery key", format!("{e:#}")))?;
    other.type_on_console(WRONG_KEY).map_err(|e| failed("could not type on the console", format!("{e:#}")))?;
    // Each volume asks until a key opens it; a key that worked is tried on
    // the next volumes before they ask.
    for _ in 0..2 * env.profile.image.partitions.len() {
        match other.wait_for_console_text(&[RECOVERY_PROMPT, LOGIN_PROMPT], seen, check.timeout) {
            Ok((0, end)) => {
                seen = end;
                other.type_on_console(&recovery).map_err(|e| failed("could not type on the console", format!("{e:#}")))?;
            }
            Ok(_) => break,
            Err(e) => return Err(failed("the machine neither asked again nor came to its login prompt", format!("{e:#}"))),
        }
    }
    other.pin_host_key_of(first).map_err(|e| failed("could not pin the host key", format!("{e:#}")))?;
    other.wait_for_ssh(check.timeout).map_err(|e| failed("the recovery key typed at the console did not open the volumes", format!("{e:#}")))?;
    let read = root(other, env, &format!("cat /var/lib/rampart-test-marker; echo; cat {home}/.rampart-test-marker"))?;
    if read != format!("{marker}\n{marker}") {
        return Err(failed("opened with the recovery key, the data partitions do not hold what was written", read));
    }
    let journal = root(other, env, "journalctl -b -o cat -u 'systemd-cryptsetup@*'")?;
    if !journal.contains(WRONG_KEY_REFUSED) {
        return Err(failed(format!("the journal does not say the wrong key was refused ({WRONG_KEY_REFUSED:?})"), journal));
    }
    Ok(())
}

