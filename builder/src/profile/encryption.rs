//! `[encryption]`: whether a machine encrypts its data partitions (every
//! separate partition of `image.partitions`) on its first boot, with LUKS2,
//! bound to its own TPM 2.0 (PCR 7: Secure Boot with the site's keys) and a
//! recovery key escrowed to the site. Off by default. Pure.

use super::raw::RawEncryption;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptionSpec {
    pub data: bool,
}

#[derive(Debug, Default)]
pub struct EncryptionLayer {
    data: Option<bool>,
}

pub fn validate(raw: Option<RawEncryption>) -> EncryptionLayer {
    EncryptionLayer { data: raw.and_then(|r| r.data) }
}

pub fn merge(base: &mut EncryptionLayer, child: EncryptionLayer) {
    super::take(&mut base.data, child.data);
}

pub fn finish(layer: EncryptionLayer) -> EncryptionSpec {
    EncryptionSpec { data: layer.data.unwrap_or(false) }
}
