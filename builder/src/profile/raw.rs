//! Plain serde types for one profile file, exactly as written. No logic, no
//! defaults beyond "absent": validation and merging live in `profile/mod.rs`.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawProfile {
    pub name: Option<Spanned<String>>,
    pub description: Option<String>,
    pub extends: Option<Spanned<String>>,
    pub mirror: Option<RawMirror>,
    pub packages: Option<RawPackages>,
    pub kernel: Option<RawKernel>,
    pub image: Option<RawImage>,
    pub ssh: Option<RawSsh>,
    #[serde(default)]
    pub users: Vec<RawUser>,
    pub overlays: Option<RawOverlays>,
    #[serde(default)]
    pub variables: BTreeMap<String, Spanned<toml::Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawMirror {
    pub url: Option<Spanned<String>>,
    pub security_url: Option<Spanned<String>>,
    pub suite: Option<Spanned<String>>,
    pub security_suite: Option<Spanned<String>>,
    pub components: Option<Vec<Spanned<String>>>,
    pub snapshot: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawPackages {
    #[serde(default)]
    pub include: Vec<Spanned<String>>,
    #[serde(default)]
    pub exclude: Vec<Spanned<String>>,
    pub drop_docs: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawKernel {
    pub package: Option<Spanned<String>>,
    pub cmdline: Option<Spanned<String>>,
    /// Kernel modules the initramfs carries; "most" for initramfs-tools' default.
    pub initramfs_modules: Option<Spanned<toml::Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawImage {
    pub hostname: Option<Spanned<String>>,
    pub size: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawSsh {
    pub port: Option<Spanned<i64>>,
    pub allow_from: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawUser {
    pub name: Spanned<String>,
    #[serde(default)]
    pub groups: Vec<Spanned<String>>,
    #[serde(default)]
    pub ssh_authorized_keys: Vec<Spanned<String>>,
    pub shell: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawOverlays {
    #[serde(default)]
    pub trees: Vec<Spanned<String>>,
    /// Per image path: "0640" or "0640 root:adm".
    #[serde(default)]
    pub modes: BTreeMap<String, Spanned<String>>,
}
