//! One module per stage and per hardening control. Stages read the validated
//! profile from the context and never parse TOML.

pub mod configure;
pub mod disk;
pub mod firewall;
pub mod firstboot;
pub mod kernel;
pub mod overlays;
pub mod packages;
pub mod passwords;
pub mod seal;
pub mod services;
pub mod ssh;
pub mod users;
