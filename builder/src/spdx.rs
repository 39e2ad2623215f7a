//! `<name>.spdx.json`: the image's SBOM as an SPDX 2.3 JSON document, one
//! package per locked .deb, contained in one package for the image itself.
//! Pure rendering: no IO, no clock, no randomness; the same lock and digest
//! give the same bytes.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::lock::{Lock, LockedPackage};

/// Everything the document says besides the lock.
pub struct SbomInputs<'a> {
    /// The profile name: the image package's name and the document's.
    pub image_name: &'a str,
    /// A digest of what decides the image's content (see
    /// `build::content_digest`): it names the document and versions the image.
    pub content_sha256: &'a str,
}

pub fn render(inputs: &SbomInputs, lock: &Lock) -> String {
    format!("{:#}\n", document(inputs, lock))
}

fn document(inputs: &SbomInputs, lock: &Lock) -> Value {
    let image_id = format!("SPDXRef-Image-{}", sanitise_id(inputs.image_name));
    let created = rfc3339_utc(lock.source_date_epoch);
    let mut debs: Vec<&LockedPackage> = lock.packages.iter().collect();
    debs.sort_by(|a, b| (&a.name, &a.arch, &a.version).cmp(&(&b.name, &b.arch, &b.version)));
    let ids = package_ids(&debs);

    let mut packages = vec![json!({
        "SPDXID": image_id,
        "name": inputs.image_name,
        "versionInfo": inputs.content_sha256,
        "supplier": "NOASSERTION",
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "builtDate": created,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
    })];
    packages.extend(debs.iter().zip(&ids).map(|(deb, id)| deb_package(deb, id)));

    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": image_id,
    })];
    relationships.extend(ids.iter().map(|id| {
        json!({
            "spdxElementId": image_id,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        })
    }));

    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": inputs.image_name,
        // Unique per content, never per run: the digest takes a UUID's place.
        // `.invalid` (RFC 2606) because the namespace names, it does not locate.
        "documentNamespace": format!("https://rampart.invalid/spdx/{}-{}", inputs.image_name, inputs.content_sha256),
        "creationInfo": {
            "created": created,
            "creators": [format!("Tool: rampart-{}", env!("CARGO_PKG_VERSION"))],
        },
        "documentDescribes": [image_id],
        "packages": packages,
        "relationships": relationships,
    })
}

fn deb_package(deb: &LockedPackage, id: &str) -> Value {
    let file_name = deb.filename.rsplit('/').next().unwrap_or(&deb.filename);
    json!({
        "SPDXID": id,
        "name": deb.name,
        "versionInfo": deb.version,
        "packageFileName": file_name,
        "supplier": "Organization: Debian",
        // The lock records the pool path but deliberately not the mirror (a
        // lock is valid against any mirror serving the same signed indices),
        // so there is no URL to assert without naming the build host's mirror.
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "checksums": [{ "algorithm": "SHA256", "checksumValue": deb.sha256 }],
        "externalRefs": [{
            "referenceCategory": "PACKAGE-MANAGER",
            "referenceType": "purl",
            "referenceLocator": purl(&deb.name, &deb.version, &deb.arch),
        }],
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
    })
}

/// One SPDXID per package, in the order given. Sanitising maps `+` to `-`, so
/// `a+b` and `a-b` would share an id; every package of such a group gets the
/// first 8 hex digits of its .deb's sha256 appended, whatever the others are.
fn package_ids(debs: &[&LockedPackage]) -> Vec<String> {
    let plain: Vec<String> = debs.iter().map(|deb| package_id(&deb.name, &deb.arch)).collect();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for id in &plain {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    plain
        .iter()
        .zip(debs)
        .map(|(id, deb)| match counts[id.as_str()] {
            1 => id.clone(),
            _ => format!("{id}-{}", sanitise_id(deb.sha256.get(..8).unwrap_or(&deb.sha256))),
        })
        .collect()
}

fn package_id(name: &str, arch: &str) -> String {
    format!("SPDXRef-Package-deb-{}-{}", sanitise_id(name), sanitise_id(arch))
}

/// SPDX's idstring allows only `[A-Za-z0-9.-]`; anything else becomes `-`.
fn sanitise_id(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' }).collect()
}

/// `pkg:deb/debian/NAME@VERSION?arch=ARCH&distro=debian-12`, name and version
/// percent-encoded (an epoch's `:` and a `+` are, `~` is unreserved).
pub fn purl(name: &str, version: &str, arch: &str) -> String {
    format!("pkg:deb/debian/{}@{}?arch={}&distro=debian-12", percent_encode(name), percent_encode(version), percent_encode(arch))
}

/// Everything but RFC 3986's unreserved characters, as `%XX`.
fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// Seconds since the epoch as `YYYY-MM-DDThh:mm:ssZ`.
fn rfc3339_utc(epoch: i64) -> String {
    let (year, month, day) = crate::lock::civil_from_days(epoch.div_euclid(86400));
    let seconds = epoch.rem_euclid(86400);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", seconds / 3600, seconds % 3600 / 60, seconds % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::{LockedSource, LOCK_VERSION};

    const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn deb(name: &str, version: &str, arch: &str, sha256: &str) -> LockedPackage {
        LockedPackage {
            name: name.into(),
            version: version.into(),
            arch: arch.into(),
            suite: "bookworm-security".into(),
            filename: format!("pool/updates/main/u/{name}/{name}_{}_{arch}.deb", version.rsplit(':').next().unwrap()),
            size: 1,
            sha256: sha256.into(),
        }
    }

    fn lock(packages: Vec<LockedPackage>) -> Lock {
        Lock {
            lock_version: LOCK_VERSION,
            request_sha256: "aa".into(),
            source_date_epoch: 1795645992,
            sources: vec![LockedSource {
                suite: "bookworm-security".into(),
                components: vec!["main".into()],
                inrelease_sha256: "bb".into(),
                date: "Wed, 25 Nov 2026 22:33:12 UTC".into(),
            }],
            packages,
            auditor: Vec::new(),
        }
    }

    fn sample() -> Lock {
        lock(vec![
            deb("util-linux", "2.38.1-5+deb12u3", "amd64", &"c".repeat(64)),
            deb("adduser", "3.134", "all", &"d".repeat(64)),
            deb("libstdc++6", "12.2.0-14+deb12u1", "amd64", &"e".repeat(64)),
        ])
    }

    fn rendered(lock: &Lock) -> Value {
        let text = render(&SbomInputs { image_name: "baseline", content_sha256: DIGEST }, lock);
        serde_json::from_str(&text).unwrap()
    }

    /// The SPDXID and purl a package gets in a rendered document.
    fn check(name: &str, version: &str, arch: &str, expected_id: &str, expected_purl: &str) {
        let document = rendered(&lock(vec![deb(name, version, arch, &"f".repeat(64))]));
        let package = &document["packages"][1];
        assert_eq!(package["SPDXID"], expected_id, "SPDXID of {name} {version} {arch}");
        assert_eq!(package["externalRefs"][0]["referenceLocator"], expected_purl, "purl of {name} {version} {arch}");
    }

    #[test]
    fn spdx_ids_are_sanitised_and_purl_versions_are_percent_encoded() {
        check("util-linux", "2.38.1-5+deb12u3", "amd64", "SPDXRef-Package-deb-util-linux-amd64", "pkg:deb/debian/util-linux@2.38.1-5%2Bdeb12u3?arch=amd64&distro=debian-12");
        check("util-linux", "1:2.38.1-5+deb12u3", "amd64", "SPDXRef-Package-deb-util-linux-amd64", "pkg:deb/debian/util-linux@1%3A2.38.1-5%2Bdeb12u3?arch=amd64&distro=debian-12");
        check("libstdc++6", "12.2.0-14+deb12u1", "amd64", "SPDXRef-Package-deb-libstdc--6-amd64", "pkg:deb/debian/libstdc%2B%2B6@12.2.0-14%2Bdeb12u1?arch=amd64&distro=debian-12");
        check("sudo", "1.9.13p3-1+deb12u1~bpo1", "amd64", "SPDXRef-Package-deb-sudo-amd64", "pkg:deb/debian/sudo@1.9.13p3-1%2Bdeb12u1~bpo1?arch=amd64&distro=debian-12");
        check("adduser", "3.134", "all", "SPDXRef-Package-deb-adduser-all", "pkg:deb/debian/adduser@3.134?arch=all&distro=debian-12");
    }

    #[test]
    fn names_that_sanitise_alike_get_distinct_ids() {
        let document = rendered(&lock(vec![deb("a+b", "1", "amd64", &"1".repeat(64)), deb("a-b", "1", "amd64", &"2".repeat(64)), deb("c", "1", "amd64", &"3".repeat(64))]));
        let ids: Vec<&str> = document["packages"].as_array().unwrap().iter().map(|p| p["SPDXID"].as_str().unwrap()).collect();
        assert_eq!(
            ids,
            ["SPDXRef-Image-baseline", "SPDXRef-Package-deb-a-b-amd64-11111111", "SPDXRef-Package-deb-a-b-amd64-22222222", "SPDXRef-Package-deb-c-amd64"]
        );
    }

    #[test]
    fn one_package_entry_is_pinned_exactly() {
        let document = rendered(&sample());
        let util_linux = document["packages"].as_array().unwrap().iter().find(|p| p["name"] == "util-linux").unwrap();
        assert_eq!(
            *util_linux,
            json!({
                "SPDXID": "SPDXRef-Package-deb-util-linux-amd64",
                "name": "util-linux",
                "versionInfo": "2.38.1-5+deb12u3",
                "packageFileName": "util-linux_2.38.1-5+deb12u3_amd64.deb",
                "supplier": "Organization: Debian",
                "downloadLocation": "NOASSERTION",
                "filesAnalyzed": false,
                "checksums": [{ "algorithm": "SHA256", "checksumValue": "c".repeat(64) }],
                "externalRefs": [{
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": "pkg:deb/debian/util-linux@2.38.1-5%2Bdeb12u3?arch=amd64&distro=debian-12",
                }],
                "licenseConcluded": "NOASSERTION",
                "licenseDeclared": "NOASSERTION",
                "copyrightText": "NOASSERTION",
            })
        );
    }

    #[test]
    fn the_document_describes_the_image_which_contains_every_package_in_name_order() {
        let document = rendered(&sample());
        assert_eq!(document["spdxVersion"], "SPDX-2.3");
        assert_eq!(document["documentNamespace"], format!("https://rampart.invalid/spdx/baseline-{DIGEST}"));
        assert_eq!(document["creationInfo"], json!({ "created": "2026-11-25T22:33:12Z", "creators": [format!("Tool: rampart-{}", env!("CARGO_PKG_VERSION"))] }));
        assert_eq!(document["documentDescribes"], json!(["SPDXRef-Image-baseline"]));
        let image = &document["packages"][0];
        assert_eq!((&image["name"], &image["versionInfo"], &image["builtDate"]), (&json!("baseline"), &json!(DIGEST), &json!("2026-11-25T22:33:12Z")));
        let relationships: Vec<String> = document["relationships"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| format!("{} {} {}", r["spdxElementId"].as_str().unwrap(), r["relationshipType"].as_str().unwrap(), r["relatedSpdxElement"].as_str().unwrap()))
            .collect();
        assert_eq!(
            relationships,
            [
                "SPDXRef-DOCUMENT DESCRIBES SPDXRef-Image-baseline",
                "SPDXRef-Image-baseline CONTAINS SPDXRef-Package-deb-adduser-all",
                "SPDXRef-Image-baseline CONTAINS SPDXRef-Package-deb-libstdc--6-amd64",
                "SPDXRef-Image-baseline CONTAINS SPDXRef-Package-deb-util-linux-amd64",
            ]
        );
    }

    #[test]
    fn the_same_lock_renders_the_same_bytes_whatever_its_package_order() {
        let inputs = SbomInputs { image_name: "baseline", content_sha256: DIGEST };
        let first = render(&inputs, &sample());
        let mut reordered = sample();
        reordered.packages.reverse();
        assert_eq!(render(&inputs, &reordered), first);
        assert_eq!(render(&inputs, &sample()), first);
        let other = render(&SbomInputs { image_name: "baseline", content_sha256: &"9".repeat(64) }, &sample());
        assert_ne!(other, first, "another content digest names another document");
    }

    fn check_created(epoch: i64, expected: &str) {
        assert_eq!(rfc3339_utc(epoch), expected, "epoch {epoch}");
    }

    #[test]
    fn created_is_the_lock_epoch_in_utc() {
        check_created(0, "1970-01-01T00:00:00Z");
        check_created(951782400, "2000-02-29T00:00:00Z");
        check_created(1746868921, "2025-05-10T09:22:01Z");
        check_created(1795645992, "2026-11-25T22:33:12Z");
        check_created(-1, "1969-12-31T23:59:59Z");
    }
}
