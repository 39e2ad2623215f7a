//! The `disk-is-its-own` check: two disks from one image are two disks.
//! The guest lists its block devices (lsblk), its root and configuration
//! partition (findmnt) and the partition the boot loader was loaded from
//! (LoaderDevicePartUUID); `judge` decides, with no IO.

use crate::layout::Identifiers;

/// The virtio serial of the disk a machine boots (and of the installer's target).
pub const SYSTEM_SERIAL: &str = "system";
/// The virtio serial of a never-booted copy of the image attached beside it.
pub const COPY_SERIAL: &str = "image-copy";

/// Run as root in the guest: the lsblk listing, then one line each for the
/// root's device, the configuration partition's and the boot loader's
/// partition UUID.
pub const COMMAND: &str = "lsblk -J -l -o NAME,PKNAME,TYPE,PTUUID,PARTUUID,UUID,SERIAL; \
echo '=='; findmnt -no SOURCE /; findmnt -no SOURCE /etc/rampart; \
dd if=/sys/firmware/efi/efivars/LoaderDevicePartUUID-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f bs=4 skip=1 status=none | tr -d '\\000'; echo";

#[derive(Debug, serde::Deserialize)]
struct Listing {
    blockdevices: Vec<Device>,
}

#[derive(Debug, serde::Deserialize)]
struct Device {
    name: String,
    pkname: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    ptuuid: Option<String>,
    partuuid: Option<String>,
    uuid: Option<String>,
    serial: Option<String>,
}

/// Judges the guest's answer to `COMMAND`: `Ok` with a one-line summary, or
/// what is wrong.
pub fn judge(output: &str, ids: &Identifiers, copy_attached: bool) -> Result<String, String> {
    let (json, rest) = output.split_once("\n==\n").ok_or("the guest's answer has no '==' line")?;
    let listing: Listing = serde_json::from_str(json).map_err(|e| format!("lsblk's JSON does not parse: {e}"))?;
    let mut lines = rest.lines().map(str::trim);
    let (Some(root), Some(config), Some(loader)) = (lines.next(), lines.next(), lines.next()) else {
        return Err("the guest did not name its root, its /etc/rampart and the boot loader's partition".into());
    };
    let find = |name: &str| listing.blockdevices.iter().find(|d| format!("/dev/{}", d.name) == name || d.name == name);
    let disk_of = |what: &str, device: Option<&Device>| -> Result<String, String> {
        device.and_then(|d| d.pkname.clone()).ok_or_else(|| format!("{what} is on no partition lsblk lists"))
    };
    let root_disk = disk_of(&format!("the root ({root})"), find(root))?;
    let config_disk = disk_of(&format!("/etc/rampart ({config})"), find(config))?;
    let esp = listing.blockdevices.iter().find(|d| d.partuuid.as_deref().is_some_and(|u| u.eq_ignore_ascii_case(loader)));
    let esp_disk = match esp {
        // On the first boot of a copy the boot loader named the image's ESP,
        // which the initramfs then gave a new UUID: no disk holds it any
        // more, so the one that did is the disk that boots.
        None if loader.eq_ignore_ascii_case(&ids.esp_partuuid) => root_disk.clone(),
        _ => disk_of(&format!("the boot loader's partition ({loader})"), esp)?,
    };
    if root_disk != config_disk || root_disk != esp_disk {
        return Err(format!("the root is on {root_disk}, /etc/rampart on {config_disk}, and the boot loader came from {esp_disk}: not one disk"));
    }
    let boot = listing.blockdevices.iter().find(|d| d.name == root_disk && d.kind == "disk").ok_or(format!("lsblk lists no disk {root_disk}"))?;
    if boot.serial.as_deref() != Some(SYSTEM_SERIAL) {
        return Err(format!("the machine booted its root from {root_disk} (serial {:?}), not from its own disk (serial {SYSTEM_SERIAL})", boot.serial));
    }
    let image_ids = image_identifiers(ids);
    let mut kept = Vec::new();
    for device in listing.blockdevices.iter().filter(|d| d.name == root_disk || d.pkname.as_deref() == Some(root_disk.as_str())) {
        for value in [&device.ptuuid, &device.partuuid, &device.uuid].into_iter().flatten() {
            if let Some((what, _)) = image_ids.iter().find(|(_, id)| id.eq_ignore_ascii_case(value)) {
                kept.push(format!("{} {what} {value}", device.name));
            }
        }
    }
    kept.dedup();
    if !kept.is_empty() {
        return Err(format!("{root_disk} still carries the image's identifiers: {}", kept.join(", ")));
    }
    if copy_attached {
        let copy = listing.blockdevices.iter().find(|d| d.kind == "disk" && d.serial.as_deref() == Some(COPY_SERIAL)).ok_or("the copy of the image is not attached")?;
        if !copy.ptuuid.as_deref().is_some_and(|u| u.eq_ignore_ascii_case(&ids.disk_guid)) {
            return Err(format!("the copy of the image beside it ({}) no longer carries the image's disk GUID: something changed a disk it did not boot", copy.name));
        }
    }
    Ok(format!("booted from {root_disk}, disk GUID {}", boot.ptuuid.as_deref().unwrap_or("?")))
}

/// Every identifier an image's disk starts with, by what it is.
fn image_identifiers(ids: &Identifiers) -> Vec<(String, String)> {
    let volume = ids.esp_volume_id.to_uppercase();
    let mut all: Vec<(String, String)> = [
        ("disk GUID", ids.disk_guid.clone()),
        ("ESP partition UUID", ids.esp_partuuid.clone()),
        ("root partition UUID", ids.root_partuuid.clone()),
        ("configuration partition UUID", ids.config_partuuid.clone()),
        ("root file-system UUID", ids.root_fs_uuid.clone()),
        ("configuration file-system UUID", ids.config_fs_uuid.clone()),
        ("ESP volume ID", format!("{}-{}", &volume[..4], &volume[4..])),
    ]
    .into_iter()
    .map(|(what, id)| (what.to_string(), id))
    .collect();
    for (name, data) in &ids.data {
        all.push((format!("{name} partition UUID"), data.partuuid.clone()));
        all.push((format!("{name} file-system UUID"), data.fs_uuid.clone()));
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(ids: &Identifiers, root_uuid: &str, copy_guid: &str) -> String {
        format!(
            r#"{{"blockdevices": [
  {{"name":"vda","pkname":null,"type":"disk","ptuuid":"{copy_guid}","partuuid":null,"uuid":null,"serial":"image-copy"}},
  {{"name":"vda1","pkname":"vda","type":"part","ptuuid":"{copy_guid}","partuuid":"{esp}","uuid":"ABCD-0001","serial":null}},
  {{"name":"vdb","pkname":null,"type":"disk","ptuuid":"11111111-2222-4333-8444-555555555555","partuuid":null,"uuid":null,"serial":"system"}},
  {{"name":"vdb1","pkname":"vdb","type":"part","ptuuid":"11111111-2222-4333-8444-555555555555","partuuid":"aaaaaaaa-2222-4333-8444-555555555555","uuid":"1234-5678","serial":null}},
  {{"name":"vdb2","pkname":"vdb","type":"part","ptuuid":"11111111-2222-4333-8444-555555555555","partuuid":"bbbbbbbb-2222-4333-8444-555555555555","uuid":"cccccccc-2222-4333-8444-555555555555","serial":null}},
  {{"name":"vdb3","pkname":"vdb","type":"part","ptuuid":"11111111-2222-4333-8444-555555555555","partuuid":"dddddddd-2222-4333-8444-555555555555","uuid":"{root_uuid}","serial":null}}
]}}
==
/dev/vdb3
/dev/vdb2
AAAAAAAA-2222-4333-8444-555555555555
"#,
            esp = ids.esp_partuuid
        )
    }

    #[test]
    fn a_disk_with_identifiers_of_its_own_passes() {
        let ids = Identifiers::for_profile("baseline");
        let ok = judge(&answer(&ids, "eeeeeeee-2222-4333-8444-555555555555", &ids.disk_guid), &ids, true).unwrap();
        assert!(ok.contains("booted from vdb"), "{ok}");
    }

    #[test]
    fn an_identifier_kept_from_the_image_is_named() {
        let ids = Identifiers::for_profile("baseline");
        let error = judge(&answer(&ids, &ids.root_fs_uuid, &ids.disk_guid), &ids, true).unwrap_err();
        assert!(error.contains("vdb3 root file-system UUID"), "{error}");
    }

    #[test]
    fn a_copy_that_was_changed_or_a_root_from_another_disk_fails() {
        let ids = Identifiers::for_profile("baseline");
        let error = judge(&answer(&ids, "eeeeeeee-2222-4333-8444-555555555555", "99999999-2222-4333-8444-555555555555"), &ids, true).unwrap_err();
        assert!(error.contains("no longer carries the image's disk GUID"), "{error}");
        let first_boot = answer(&ids, "eeeeeeee-2222-4333-8444-555555555555", &ids.disk_guid).replace("AAAAAAAA-2222-4333-8444-555555555555", &ids.esp_partuuid.to_uppercase());
        let error = judge(&first_boot, &ids, true).unwrap_err();
        assert!(error.contains("not one disk"), "the copy still holds the image's ESP: {error}");
        let alone = first_boot.replace(&format!("\"partuuid\":\"{}\"", ids.esp_partuuid), "\"partuuid\":\"ffffffff-2222-4333-8444-555555555555\"");
        assert!(judge(&alone, &ids, false).is_ok(), "a first boot whose ESP got a new UUID");
        let elsewhere = answer(&ids, "eeeeeeee-2222-4333-8444-555555555555", &ids.disk_guid).replace("/dev/vdb3\n", "/dev/vda1\n");
        let error = judge(&elsewhere, &ids, true).unwrap_err();
        assert!(error.contains("not one disk"), "{error}");
    }
}
