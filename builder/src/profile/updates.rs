//! `[updates]`: whether a deployed machine installs security updates on its
//! own (unattended-upgrades, from the image's own security suite). Off by
//! default: a golden image is rebuilt from a new lock and redeployed, and a
//! machine that upgrades itself drifts from its image and its integrity
//! baseline. Pure.

use super::raw::RawUpdates;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdatesSpec {
    pub automatic: bool,
}

#[derive(Debug, Default)]
pub struct UpdatesLayer {
    automatic: Option<bool>,
}

pub fn validate(raw: Option<RawUpdates>) -> UpdatesLayer {
    UpdatesLayer { automatic: raw.and_then(|r| r.automatic) }
}

pub fn merge(base: &mut UpdatesLayer, child: UpdatesLayer) {
    super::take(&mut base.automatic, child.automatic);
}

pub fn finish(layer: UpdatesLayer) -> UpdatesSpec {
    UpdatesSpec { automatic: layer.automatic.unwrap_or(false) }
}
