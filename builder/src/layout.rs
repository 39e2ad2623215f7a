//! The disk layout every rampart image shares, and the fixed identifiers of
//! its partitions and file systems, derived from the profile name so that
//! two builds of one profile are bit-identical. Pure functions, no IO.

use sha2::{Digest, Sha256};

pub const ESP_LABEL: &str = "RAMPART-ESP";
pub const ROOT_LABEL: &str = "rampart-root";
pub const CONFIG_LABEL: &str = "rampart-cfg";
pub const ESP_SIZE_MIB: u64 = 128;
pub const CONFIG_SIZE_MIB: u64 = 16;
/// Where the configuration partition is mounted, read-only.
pub const CONFIG_MOUNT: &str = "/etc/rampart";
/// The GPT names of the root and configuration partitions: fstab finds them
/// by these names on the boot disk.
pub const ROOT_PARTITION: &str = "root";
/// The GPT name of the EFI system partition.
pub const ESP_PARTITION: &str = "esp";
pub const CONFIG_PARTITION: &str = "rampart-config";
/// Where udev links the partitions of the disk the machine booted from, by
/// their GPT names (a rule the initramfs writes, each boot).
pub const BOOT_DISK_LINKS: &str = "/dev/disk/rampart";
/// Partitions start at 1 MiB, aligned.
pub const FIRST_LBA_MIB: u64 = 1;

/// GPT partition types (the Discoverable Partitions Specification's where
/// one exists, so systemd-repart and systemd-dissect know them).
pub const TYPE_ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
pub const TYPE_LINUX_DATA: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
pub const TYPE_VAR: &str = "4D21B016-B534-45C2-A9FB-5C16E091FD2D";

/// The separate partition that, when the profile has it, is last on the disk
/// and grows to fill it (else the root does).
pub const GROWS_WHEN_SEPARATE: &str = "/var";

/// A file system of its own at a mount point below the root (CIS Debian 12
/// 1.1.2), mounted by its GPT name on the boot disk.
#[derive(Debug, PartialEq, Eq)]
pub struct DataPartition {
    pub mount: &'static str,
    /// The GPT partition name, and the file system's label after "rampart-".
    pub name: &'static str,
    pub type_guid: &'static str,
    /// The mount options CIS asks for this mount point.
    pub options: &'static str,
    pub cis: &'static str,
}

/// Every partition rampart can separate, parents before children (fstab's
/// order). /var, when separate, is last on the disk and grows to fill it.
pub const DATA_PARTITIONS: &[DataPartition] = &[
    DataPartition { mount: "/home", name: "home", type_guid: "933AC7E1-2EB4-4F13-B844-0E14E2AEF915", options: "nodev,nosuid", cis: "1.1.2.3" },
    DataPartition { mount: "/var", name: "var", type_guid: TYPE_VAR, options: "nodev,nosuid", cis: "1.1.2.4" },
    DataPartition { mount: "/var/tmp", name: "var-tmp", type_guid: "7EC6F557-3BC5-4ACA-B293-16EF5DF639D1", options: "nodev,nosuid,noexec", cis: "1.1.2.5" },
    DataPartition { mount: "/var/log", name: "var-log", type_guid: TYPE_LINUX_DATA, options: "nodev,nosuid,noexec", cis: "1.1.2.6" },
    DataPartition { mount: "/var/log/audit", name: "var-log-audit", type_guid: TYPE_LINUX_DATA, options: "nodev,nosuid,noexec", cis: "1.1.2.7" },
];

/// The fixed identifiers of one separate partition of a profile's image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataIdentifiers {
    pub partuuid: String,
    pub fs_uuid: String,
    pub hash_seed: String,
}

impl DataIdentifiers {
    pub fn for_partition(profile_name: &str, partition: &DataPartition) -> DataIdentifiers {
        let uuid = |what: &str| derived_uuid(profile_name, &format!("{}-{what}", partition.name));
        DataIdentifiers { partuuid: uuid("partition"), fs_uuid: uuid("filesystem"), hash_seed: uuid("hash-seed") }
    }
}

/// The fixed identifiers of one profile's image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identifiers {
    pub disk_guid: String,
    pub esp_partuuid: String,
    pub root_partuuid: String,
    pub config_partuuid: String,
    pub root_fs_uuid: String,
    pub root_hash_seed: String,
    pub config_fs_uuid: String,
    pub config_hash_seed: String,
    /// FAT volume id, 8 hex digits.
    pub esp_volume_id: String,
    /// Those of each partition `DATA_PARTITIONS` names, by its name.
    pub data: Vec<(&'static str, DataIdentifiers)>,
}

impl Identifiers {
    pub fn for_profile(name: &str) -> Identifiers {
        let uuid = |what: &str| derived_uuid(name, what);
        let volume = hex::encode(&Sha256::digest(format!("rampart:{name}:esp-volume-id").as_bytes())[..4]);
        Identifiers {
            disk_guid: uuid("disk"),
            esp_partuuid: uuid("esp-partition"),
            root_partuuid: uuid("root-partition"),
            config_partuuid: uuid("config-partition"),
            root_fs_uuid: uuid("root-filesystem"),
            root_hash_seed: uuid("root-hash-seed"),
            config_fs_uuid: uuid("config-filesystem"),
            config_hash_seed: uuid("config-hash-seed"),
            esp_volume_id: volume,
            data: DATA_PARTITIONS.iter().map(|p| (p.name, DataIdentifiers::for_partition(name, p))).collect(),
        }
    }
}

/// A version-4-shaped UUID from a digest of the profile name and a purpose.
fn derived_uuid(name: &str, what: &str) -> String {
    let digest = Sha256::digest(format!("rampart:{name}:{what}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let h = hex::encode(bytes);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_stable_and_distinct() {
        let a = Identifiers::for_profile("baseline");
        assert_eq!(a, Identifiers::for_profile("baseline"));
        assert_ne!(a.root_partuuid, a.esp_partuuid);
        assert_ne!(a.root_fs_uuid, Identifiers::for_profile("web").root_fs_uuid);
        assert_eq!(a.root_partuuid.len(), 36);
        assert_eq!(&a.root_partuuid[14..15], "4");
        assert_eq!(a.esp_volume_id.len(), 8);
        let var = DataIdentifiers::for_partition("baseline", &DATA_PARTITIONS[1]);
        assert_ne!(var, DataIdentifiers::for_partition("baseline", &DATA_PARTITIONS[0]));
        assert!(![&a.root_partuuid, &a.root_fs_uuid, &a.root_hash_seed].contains(&&var.partuuid));
    }
}
