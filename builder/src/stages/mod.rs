//! One module per stage and per hardening control. Stages read the validated
//! profile from the context and never parse TOML.

pub mod backups;
pub mod config_partition;
pub mod configure;
pub mod disk;
pub mod elf_audit;
pub mod firewall;
pub mod firstboot;
pub mod installer;
pub mod integrity;
pub mod kernel;
pub mod logging;
pub mod overlays;
pub mod packages;
pub mod passwords;
pub mod seal;
pub mod services;
pub mod ssh;
pub mod toolchain;
pub mod users;
