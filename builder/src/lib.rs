//! rampart: hardened, bootable Debian 12 images built offline from TOML
//! profiles, proven by booting them in QEMU. See ARCHITECTURE.md for the map.

pub mod apt;
pub mod archive;
pub mod baseline;
pub mod build;
pub mod bundle;
pub mod cache;
pub mod cli;
pub mod ext4;
pub mod fetch;
pub mod fsutil;
pub mod layout;
pub mod located;
pub mod lock;
pub mod lynis;
pub mod manifest;
pub mod manual;
pub mod mirror;
pub mod patch;
pub mod process;
pub mod profile;
pub mod report_html;
pub mod scaffold;
pub mod secrets;
pub mod secureboot;
pub mod spdx;
pub mod stages;
pub mod traced;
pub mod tree;
pub mod ui;
pub mod verify;
pub mod vmtest;
