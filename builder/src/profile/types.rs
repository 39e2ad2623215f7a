//! Value types that carry a guarantee once parsed: a `Port` is in range, a
//! `Cidr` has no host bits set, a `UserName` is one useradd accepts. Pure
//! functions, no IO.

use std::fmt;
use std::net::IpAddr;

use super::{FileMode, InitramfsModules};

macro_rules! string_type {
    ($name:ident) => {
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_type!(ProfileName);
string_type!(Hostname);
string_type!(UserName);
string_type!(PackageName);

impl ProfileName {
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(format!("{s:?} is not a valid profile name (lower-case letters, digits and '-', at most 63)"))
        }
    }
}

impl Hostname {
    pub fn parse(s: &str) -> Result<Self, String> {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        if s.len() <= 253 && s.split('.').all(label_ok) {
            Ok(Self(s.to_ascii_lowercase()))
        } else {
            Err(format!("{s:?} is not a valid host name (RFC 1123 labels of letters, digits and '-')"))
        }
    }
}

impl UserName {
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 32
            && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(format!(
                "{s:?} is not a valid user or group name (start with a-z or _, then a-z, 0-9, _ or -, at most 32)"
            ))
        }
    }
}

impl PackageName {
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = s.len() >= 2
            && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(format!("{s:?} is not a valid Debian package name"))
        }
    }
}

/// A TCP or UDP port, 1 to 65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Port(u16);

impl Port {
    pub const SSH: Port = Port(22);

    pub fn from_i64(value: i64) -> Result<Self, String> {
        match u16::try_from(value) {
            Ok(port) if port != 0 => Ok(Port(port)),
            _ => Err(format!("{value} is not a port (1 to 65535)")),
        }
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An address as a number of its family (IPv4 in the low 32 bits).
pub fn address_value(address: IpAddr) -> u128 {
    match address {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The host part of a `bits`-bit address under a /`prefix`.
pub fn host_mask(bits: u8, prefix: u8) -> u128 {
    match bits - prefix {
        0 => 0,
        128 => u128::MAX,
        n => (1u128 << n) - 1,
    }
}

/// An address range in CIDR form whose host bits are zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    pub address: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an address range in CIDR form (e.g. 192.0.2.0/24 or 2001:db8::/32)");
        let (address, prefix) = s.split_once('/').ok_or_else(bad)?;
        let address: IpAddr = address.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        if prefix > bits {
            return Err(format!("{s:?}: prefix /{prefix} is longer than {bits} bits"));
        }
        if address_value(address) & host_mask(bits, prefix) != 0 {
            return Err(format!("{s:?} has host bits set; did you mean the network address?"));
        }
        Ok(Cidr { address, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// A disk size in bytes, given as "2G", "1536M", ...
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSize(u64);

impl ImageSize {
    pub fn from_bytes(bytes: u64) -> Self {
        ImageSize(bytes)
    }

    /// An image size: at least 512M, at most 2048G.
    pub fn parse(s: &str) -> Result<Self, String> {
        let size = Self::parse_any(s)?;
        if size.0 < (512 << 20) {
            return Err(format!("{s:?} is too small; an image needs at least 512M"));
        }
        Ok(size)
    }

    /// Any disk size up to 2048G (a test's deliberately small disk, say).
    pub fn parse_any(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a size (a whole number with K, M or G, e.g. \"2G\")");
        let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
        let number: u64 = digits.parse().map_err(|_| bad())?;
        let factor: u64 = match unit {
            "K" | "KiB" => 1 << 10,
            "M" | "MiB" => 1 << 20,
            "G" | "GiB" => 1 << 30,
            _ => return Err(bad()),
        };
        let bytes = number.checked_mul(factor).ok_or_else(bad)?;
        if bytes == 0 {
            return Err(bad());
        }
        if bytes > (2 << 40) {
            return Err(format!("{s:?} is too large (at most 2048G)"));
        }
        Ok(ImageSize(bytes))
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

pub fn parse_url(s: &str) -> Result<String, String> {
    let ok = ["http://", "https://", "file:///"].iter().any(|p| s.starts_with(p))
        && !s.chars().any(|c| c.is_whitespace());
    if ok {
        Ok(s.trim_end_matches('/').to_string())
    } else {
        Err(format!("{s:?} is not a mirror url (http://, https:// or file:///, no spaces)"))
    }
}

pub fn parse_suite(s: &str) -> Result<String, String> {
    let ok = !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not a suite or component name"))
    }
}

pub fn parse_snapshot(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let ok = b.len() == 16
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z';
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not a snapshot date (YYYYMMDDTHHMMSSZ, e.g. 20250520T000000Z)"))
    }
}

/// A block device path under /dev, e.g. "/dev/sda" or "/dev/disk/by-id/...".
pub fn parse_device_path(s: &str) -> Result<String, String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "/-_.:+@".contains(c);
    let parts_ok = s.strip_prefix("/dev/").is_some_and(|rest| !rest.is_empty() && rest.split('/').all(|p| !matches!(p, "" | "." | "..")));
    if !parts_ok || !s.chars().all(allowed) {
        return Err(format!("{s:?} is not a device path (e.g. \"/dev/sda\" or \"/dev/disk/by-id/ata-SAMSUNG_MZ7LH480_S45N\"); letters, digits and /-_.:+@ only"));
    }
    Ok(s.to_string())
}

pub fn parse_cmdline(s: &str) -> Result<String, String> {
    if s.chars().all(|c| c.is_ascii_graphic() || c == ' ') && s.len() < 2048 {
        Ok(s.split_whitespace().collect::<Vec<_>>().join(" "))
    } else {
        Err("the kernel command line must be printable ASCII on one line, under 2048 characters".into())
    }
}

const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

pub fn parse_ssh_public_key(s: &str) -> Result<String, String> {
    let mut words = s.split_whitespace();
    let kind = words.next().unwrap_or("");
    let blob = words.next().unwrap_or("");
    let blob_ok = blob.len() >= 16 && blob.chars().all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c));
    if !SSH_KEY_TYPES.contains(&kind) {
        return Err(format!("{kind:?} is not an SSH public key type (expected one of {})", SSH_KEY_TYPES.join(", ")));
    }
    if !blob_ok || s.contains('\n') {
        return Err("not an SSH public key line (type, base64 key, optional comment)".into());
    }
    Ok(s.trim().to_string())
}

pub fn parse_absolute_path(s: &str) -> Result<String, String> {
    let ok = s.starts_with('/')
        && !s.split('/').any(|c| c == ".." || c == ".")
        && !s.contains("//")
        && !s.contains('\0');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not a normalised absolute path"))
    }
}

pub fn parse_tree_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not an overlay tree name (a directory directly under overlays/)"))
    }
}

/// "0640" or "0640 root:adm".
pub fn parse_file_mode(s: &str) -> Result<FileMode, String> {
    let bad = || format!("{s:?} is not a mode (octal, e.g. \"0640\", optionally followed by owner:group)");
    let mut words = s.split_whitespace();
    let mode = words.next().ok_or_else(bad)?;
    if mode.len() != 4 || !mode.chars().all(|c| ('0'..='7').contains(&c)) {
        return Err(bad());
    }
    let mode = u32::from_str_radix(mode, 8).map_err(|_| bad())?;
    let (owner, group) = match words.next() {
        Some(pair) => {
            let (owner, group) = pair.split_once(':').ok_or_else(bad)?;
            UserName::parse(owner)?;
            UserName::parse(group)?;
            (owner.to_string(), group.to_string())
        }
        None => ("root".to_string(), "root".to_string()),
    };
    if words.next().is_some() {
        return Err(bad());
    }
    Ok(FileMode { mode, owner, group })
}

pub fn is_identifier(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// "most", or a list of kernel module names.
pub fn parse_initramfs_modules(value: &toml::Value) -> Result<InitramfsModules, String> {
    match value {
        toml::Value::String(s) if s == "most" => Ok(InitramfsModules::Most),
        toml::Value::Array(items) => {
            let mut modules = Vec::new();
            for item in items {
                let name = item.as_str().ok_or("expected module names (strings)")?;
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                    return Err(format!("{name:?} is not a kernel module name"));
                }
                modules.push(name.to_string());
            }
            Ok(InitramfsModules::List(modules))
        }
        _ => Err("expected \"most\" or a list of kernel module names".into()),
    }
}

/// A crypt(3) password hash of a method that is still strong: yescrypt,
/// sha512crypt, sha256crypt or bcrypt.
pub fn parse_password_hash(s: &str) -> Result<String, String> {
    let strong = ["$y$", "$gy$", "$7$", "$6$", "$5$", "$2b$", "$2y$"];
    if !strong.iter().any(|p| s.starts_with(p)) {
        return Err("not a strong crypt(3) hash (yescrypt \"$y$...\", sha512crypt \"$6$...\", or bcrypt); md5 and DES hashes are refused".into());
    }
    if s.split('$').count() < 4 || s.chars().any(|c| c.is_whitespace() || c == ':') {
        return Err("not a complete crypt(3) hash ($method$[params$]salt$hash)".into());
    }
    Ok(s.to_string())
}
