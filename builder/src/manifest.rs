//! `<name>.manifest.json`: every package in the image with version, arch,
//! suite and the sha256 of the .deb it came from: the image's SBOM.

use serde_json::{json, Value};

use crate::lock::Lock;
use crate::profile::Profile;

/// `build_inputs`: the files stages took in besides the profile's (virus
/// databases, say), with their digests.
pub fn render(profile: &Profile, lock: &Lock, build_inputs: &[Value]) -> Value {
    let packages: Vec<Value> = lock
        .packages
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "version": p.version,
                "arch": p.arch,
                "suite": p.suite,
                "filename": p.filename,
                "size": p.size,
                "sha256": p.sha256,
                "purl": crate::spdx::purl(&p.name, &p.version, &p.arch),
            })
        })
        .collect();
    json!({
        "format": "rampart-manifest-v1",
        "image": profile.name.as_str(),
        "description": profile.description,
        "source-date-epoch": lock.source_date_epoch,
        "lock-request-sha256": lock.request_sha256,
        "sources": lock.sources.iter().map(|s| json!({
            "suite": s.suite,
            "components": s.components,
            "inrelease-sha256": s.inrelease_sha256,
            "date": s.date,
        })).collect::<Vec<_>>(),
        "build-inputs": build_inputs,
        "n-packages": packages.len(),
        "packages": packages,
    })
}
