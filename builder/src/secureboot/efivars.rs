//! An OVMF variable store with Secure Boot on: the site's PK, KEK and db
//! enrolled into a copy of OVMF's empty store (`OVMF_VARS_4M.fd`), offline
//! and byte for byte the same for the same certificates and time. The
//! layout is edk2's: a firmware volume (`NvData`) holding an authenticated
//! variable store, each variable a 60-byte header, its UCS-2 name and its
//! data, 4-byte aligned, the free space 0xff. Pure: bytes in, bytes out.

use anyhow::{bail, ensure, Result};

const NV_DATA_FV: &str = "fff12b8d-7696-4c8b-a985-2747075b4f50";
const AUTHENTICATED_VARIABLES: &str = "aaf32c78-947b-439a-a180-2e144ec37792";
pub const GLOBAL_VARIABLE: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
pub const IMAGE_SECURITY_DATABASE: &str = "d719b2cb-3d3a-4596-a3bc-dad00e67656f";
const SECURE_BOOT_ENABLE: &str = "f0a30bc7-af08-4556-99c4-001009c93a44";
const CUSTOM_MODE: &str = "c076ec0c-7028-4399-a072-71ee5c448b9f";
const CERT_X509: &str = "a5c059a1-94e4-4aa7-87b5-ab155c2bf072";
const CERT_SHA256: &str = "c1c41626-504c-4092-aca9-41f936934328";
/// OVMF's owner of its own default entries (the dbx entry that revokes nothing).
const OVMF_ENROLL_DEFAULT_KEYS: &str = "a0baa8a3-041d-48a8-bc87-c36d121b5e3d";

const NON_VOLATILE: u32 = 0x1;
const BOOTSERVICE_ACCESS: u32 = 0x2;
const RUNTIME_ACCESS: u32 = 0x4;
const TIME_BASED_AUTHENTICATED_WRITE_ACCESS: u32 = 0x20;
/// PK, KEK, db and dbx.
const SIGNATURE_DATABASE: u32 = NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS | TIME_BASED_AUTHENTICATED_WRITE_ACCESS;
/// OVMF's own switches.
const PLATFORM_SETTING: u32 = NON_VOLATILE | BOOTSERVICE_ACCESS;

/// A GUID in its on-disk (mixed-endian) form.
pub fn guid_bytes(text: &str) -> Result<[u8; 16]> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    ensure!(hex.len() == 32 && text.len() == 36 && hex.chars().all(|c| c.is_ascii_hexdigit()), "{text:?} is not a GUID");
    let mut raw = [0u8; 16];
    for (i, byte) in raw.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)?;
    }
    raw[0..4].reverse();
    raw[4..6].reverse();
    raw[6..8].reverse();
    Ok(raw)
}

/// An EFI_SIGNATURE_LIST holding one entry of `kind`, owned by `owner`.
pub fn signature_list(kind: &str, owner: &str, data: &[u8]) -> Result<Vec<u8>> {
    let entry_size = 16 + data.len();
    let mut list = guid_bytes(kind)?.to_vec();
    list.extend(u32::try_from(28 + entry_size)?.to_le_bytes());
    list.extend(0u32.to_le_bytes());
    list.extend(u32::try_from(entry_size)?.to_le_bytes());
    list.extend(guid_bytes(owner)?);
    list.extend(data);
    Ok(list)
}

/// A moment in UTC, seconds since 1970, as (year, month, day, hour,
/// minute, second).
pub fn civil_time(seconds: i64) -> (i64, u8, u8, u8, u8, u8) {
    let (year, month, day) = crate::lock::civil_from_days(seconds.div_euclid(86_400));
    let of_day = seconds.rem_euclid(86_400);
    (year, month as u8, day as u8, (of_day / 3600) as u8, (of_day / 60 % 60) as u8, (of_day % 60) as u8)
}

/// EFI_TIME of a moment in UTC, from seconds since 1970.
fn efi_time(seconds: i64) -> [u8; 16] {
    let (year, month, day, hour, minute, second) = civil_time(seconds);
    let mut time = [0u8; 16];
    time[0..2].copy_from_slice(&(year as u16).to_le_bytes());
    time[2..7].copy_from_slice(&[month, day, hour, minute, second]);
    time
}

struct Variable {
    name: &'static str,
    guid: &'static str,
    attributes: u32,
    time: Option<i64>,
    data: Vec<u8>,
}

fn variable_bytes(v: &Variable) -> Result<Vec<u8>> {
    let name: Vec<u8> = v.name.encode_utf16().chain([0]).flat_map(u16::to_le_bytes).collect();
    let mut bytes = Vec::new();
    bytes.extend(0x55aau16.to_le_bytes());
    bytes.push(0x3f); // VAR_ADDED
    bytes.push(0);
    bytes.extend(v.attributes.to_le_bytes());
    bytes.extend(0u64.to_le_bytes()); // monotonic count
    bytes.extend(v.time.map(efi_time).unwrap_or([0; 16]));
    bytes.extend(0u32.to_le_bytes()); // public key index
    bytes.extend(u32::try_from(name.len())?.to_le_bytes());
    bytes.extend(u32::try_from(v.data.len())?.to_le_bytes());
    bytes.extend(guid_bytes(v.guid)?);
    bytes.extend(name);
    bytes.extend(&v.data);
    while bytes.len() % 4 != 0 {
        bytes.push(0xff);
    }
    Ok(bytes)
}

fn read_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Where the variables of an empty OVMF store go: (first byte, end).
fn variable_area(store: &[u8]) -> Result<(usize, usize)> {
    ensure!(store.len() >= 0x100, "the OVMF variable store is {} bytes: too small", store.len());
    ensure!(store[16..32] == guid_bytes(NV_DATA_FV)?, "the OVMF variable store does not start with edk2's NvData firmware volume");
    ensure!(&store[40..44] == b"_FVH", "the OVMF variable store has no firmware volume signature");
    let header = usize::from(read_u16(store, 48));
    ensure!(header + 28 <= store.len(), "the OVMF variable store's volume header is cut short");
    ensure!(store[header..header + 16] == guid_bytes(AUTHENTICATED_VARIABLES)?, "the OVMF variable store is not an authenticated one");
    ensure!(store[header + 20] == 0x5a && store[header + 21] == 0xfe, "the OVMF variable store is not formatted and healthy");
    let end = header + usize::try_from(read_u32(store, header + 16))?;
    ensure!(end <= store.len(), "the OVMF variable store claims more bytes than it has");
    let start = header + 28;
    if store[start..end].iter().any(|b| *b != 0xff) {
        bail!("the OVMF variable store template is not empty: give OVMF's blank OVMF_VARS_4M.fd");
    }
    Ok((start, end))
}

/// The DER certificates to enrol.
pub struct Enrolment<'a> {
    pub pk: &'a [u8],
    pub kek: &'a [u8],
    pub db: &'a [u8],
    /// The GUID the site's entries are owned by.
    pub owner: &'a str,
    /// When the signature databases were written (seconds since 1970).
    pub time: i64,
}

/// A copy of the empty store `template` with the site's keys enrolled and
/// Secure Boot on (SecureBootEnable 1, CustomMode 0: user mode, enforcing).
pub fn enrolled_store(template: &[u8], keys: &Enrolment) -> Result<Vec<u8>> {
    let (start, end) = variable_area(template)?;
    let database = |name, guid, data| Variable { name, guid, attributes: SIGNATURE_DATABASE, time: Some(keys.time), data };
    let mut variables = vec![
        Variable { name: "CustomMode", guid: CUSTOM_MODE, attributes: PLATFORM_SETTING, time: None, data: vec![0] },
        database("KEK", GLOBAL_VARIABLE, signature_list(CERT_X509, keys.owner, keys.kek)?),
        database("PK", GLOBAL_VARIABLE, signature_list(CERT_X509, keys.owner, keys.pk)?),
        Variable { name: "SecureBootEnable", guid: SECURE_BOOT_ENABLE, attributes: PLATFORM_SETTING, time: None, data: vec![1] },
        database("db", IMAGE_SECURITY_DATABASE, signature_list(CERT_X509, keys.owner, keys.db)?),
        // dbx holds one entry, the SHA-256 of nothing (revokes no real image): OVMF wants a dbx
        database("dbx", IMAGE_SECURITY_DATABASE, signature_list(CERT_SHA256, OVMF_ENROLL_DEFAULT_KEYS, &EMPTY_SHA256)?),
    ];
    variables.sort_by(|a, b| a.name.cmp(b.name));
    let mut area = Vec::new();
    for variable in &variables {
        area.extend(variable_bytes(variable)?);
    }
    ensure!(area.len() <= end - start, "the site's certificates take {} bytes, more than the OVMF variable store holds ({})", area.len(), end - start);
    let mut store = template.to_vec();
    store[start..start + area.len()].copy_from_slice(&area);
    Ok(store)
}

/// SHA-256 of the empty string.
const EMPTY_SHA256: [u8; 32] = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24, 0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4,
    0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty store shaped like OVMF's: volume header of 0x48 bytes, then
    /// the authenticated store header.
    fn blank_store(size: usize) -> Vec<u8> {
        let mut s = vec![0xffu8; size];
        s[..0x48].fill(0);
        s[16..32].copy_from_slice(&guid_bytes(NV_DATA_FV).unwrap());
        s[40..44].copy_from_slice(b"_FVH");
        s[48..50].copy_from_slice(&0x48u16.to_le_bytes());
        s[0x48..0x58].copy_from_slice(&guid_bytes(AUTHENTICATED_VARIABLES).unwrap());
        s[0x58..0x5c].copy_from_slice(&((size / 2 - 0x48) as u32).to_le_bytes());
        s[0x5c] = 0x5a;
        s[0x5d] = 0xfe;
        s[0x5e..0x64].fill(0);
        s
    }

    #[test]
    fn guids_are_written_mixed_endian() {
        assert_eq!(guid_bytes(GLOBAL_VARIABLE).unwrap(), [0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c]);
        assert!(guid_bytes("not-a-guid").is_err());
    }

    #[test]
    fn times_are_utc_calendar_dates() {
        // 2026-12-05 04:30:15 UTC
        let t = efi_time(1_796_445_015);
        assert_eq!((u16::from_le_bytes([t[0], t[1]]), t[2], t[3], t[4], t[5], t[6]), (2026, 12, 5, 4, 30, 15));
        let t = efi_time(951_782_400); // 2000-02-29
        assert_eq!((u16::from_le_bytes([t[0], t[1]]), t[2], t[3]), (2000, 2, 29));
    }

    #[test]
    fn the_keys_go_into_the_free_space_sorted_and_nothing_else_changes() {
        let template = blank_store(0x1000);
        let keys = Enrolment { pk: b"PK-DER", kek: b"KEK-DER", db: b"db-DER", owner: "11111111-2222-3333-4444-555555555555", time: 1_796_445_015 };
        let store = enrolled_store(&template, &keys).unwrap();
        assert_eq!(store.len(), template.len());
        assert_eq!(store[..0x64], template[..0x64]);
        assert_eq!(store[0x800..], template[0x800..]);
        let mut at = 0x64;
        let mut names = Vec::new();
        while read_u16(&store, at) == 0x55aa {
            let (name_size, data_size) = (read_u32(&store, at + 36) as usize, read_u32(&store, at + 40) as usize);
            let name: Vec<u16> = store[at + 60..at + 60 + name_size - 2].chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
            names.push(String::from_utf16(&name).unwrap());
            let data = &store[at + 60 + name_size..at + 60 + name_size + data_size];
            if names.last().unwrap() == "db" {
                assert_eq!(&data[..16], guid_bytes(CERT_X509).unwrap());
                assert_eq!(&data[44..], b"db-DER");
                assert_eq!(read_u32(&store, at + 4), SIGNATURE_DATABASE);
            }
            if names.last().unwrap() == "SecureBootEnable" {
                assert_eq!(data, [1]);
            }
            at = (at + 60 + name_size + data_size + 3) & !3;
        }
        assert_eq!(names, ["CustomMode", "KEK", "PK", "SecureBootEnable", "db", "dbx"]);
        assert!(store[at..0x800].iter().all(|b| *b == 0xff));
        assert_eq!(enrolled_store(&template, &keys).unwrap(), store, "the same inputs give the same bytes");
    }

    #[test]
    fn a_store_that_is_not_blank_or_not_ovmfs_is_refused() {
        let keys = Enrolment { pk: b"a", kek: b"b", db: b"c", owner: "11111111-2222-3333-4444-555555555555", time: 0 };
        let mut used = blank_store(0x1000);
        used[0x64] = 0xaa;
        assert!(format!("{:#}", enrolled_store(&used, &keys).unwrap_err()).contains("not empty"));
        assert!(format!("{:#}", enrolled_store(&vec![0u8; 0x1000], &keys).unwrap_err()).contains("NvData"));
        let big = vec![0u8; 0x1000];
        let keys = Enrolment { pk: &big, kek: &big, db: &big, ..keys };
        assert!(format!("{:#}", enrolled_store(&blank_store(0x1000), &keys).unwrap_err()).contains("more than"));
    }
}

