use super::*;

fn file(path: &str, bytes: &[u8]) -> Planned {
    Planned {
        member: Member {
            path: path.into(),
            kind: MemberKind::File,
            mode: "0644".into(),
            size: bytes.len() as u64,
            sha256: Some(hex::encode(Sha256::digest(bytes))),
        },
        content: Content::Bytes(bytes.to_vec()),
    }
}

fn dir(path: &str) -> Planned {
    Planned { member: Member { path: path.into(), kind: MemberKind::Dir, mode: "0755".into(), size: 0, sha256: None }, content: Content::Dir }
}

fn sample() -> Vec<Planned> {
    vec![
        file("debs/zlib1g_1%3a1.2_amd64.deb", b"DEB-CONTENT-OF-ZLIB"),
        file("indices/bookworm/InRelease", b"SIGNED-INDEX"),
        dir("inputs/overlays/p"),
        dir("inputs/overlays/p/etc"),
        file("inputs/overlays/p/etc/motd", b"hello\n"),
        file("inputs/profiles/p.lock", b"lock-version = 1\n"),
        file("inputs/profiles/p.toml", b"name = \"p\"\n"),
    ]
}

fn manifest_for(planned: &[Planned]) -> BundleManifest {
    let members: Vec<Member> = planned.iter().map(|p| p.member.clone()).collect();
    BundleManifest {
        format: FORMAT.into(),
        profile_name: "p".into(),
        profile: "inputs/profiles/p.toml".into(),
        profile_inputs_sha256: inputs_digest(&members),
        mirror: Mirror {
            url: "http://mirror.example/debian".into(),
            security_url: Some("http://mirror.example/debian-security".into()),
            suite: "bookworm".into(),
            security_suite: Some("bookworm-security".into()),
            components: vec!["main".into()],
            snapshot: None,
        },
        members,
    }
}

fn tar_bytes(manifest: &BundleManifest, planned: &[Planned]) -> Vec<u8> {
    let mut bytes = Vec::new();
    write_tar(&mut bytes, manifest.render().as_bytes(), planned).unwrap();
    bytes
}

/// Unpacks `bytes` as a bundle; the error chain as one line on refusal.
/// Either way nothing may be left in the work parent but a finished unpack.
fn unpack_bytes(bytes: &[u8]) -> (tempfile::TempDir, Result<Unpacked, String>) {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("b.tar");
    std::fs::write(&bundle, bytes).unwrap();
    let result = unpack(&bundle, &dir.path().join("work"), None).map_err(|e| format!("{e:#}"));
    if result.is_err() {
        let left: Vec<_> = std::fs::read_dir(dir.path().join("work")).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
        assert!(left.is_empty(), "a refused bundle left {left:?}");
    }
    (dir, result)
}

fn check_refused(bytes: &[u8], expected: &str) {
    let (_dir, result) = unpack_bytes(bytes);
    let message = result.err().expect("the bundle is refused");
    assert!(message.contains(expected), "expected {expected:?} in: {message}");
    assert!(message.starts_with("bundle ") && message.contains("refused"), "{message}");
}

/// A tar member written with a raw name, as a hostile tool could.
fn append_raw(bytes: &mut Vec<u8>, name: &str, kind: tar::EntryType, data: &[u8]) {
    // Drop the two zero blocks that end the archive, add the member, end it again.
    bytes.truncate(bytes.len() - 1024);
    let mut header = tar::Header::new_gnu();
    header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_size(data.len() as u64);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, data).unwrap();
    bytes.extend(builder.into_inner().unwrap());
}

#[test]
fn manifest_round_trips_and_the_bundle_unpacks() {
    let planned = sample();
    let manifest = manifest_for(&planned);
    let text = manifest.render();
    let parsed = BundleManifest::parse(text.as_bytes()).unwrap();
    assert_eq!(parsed, manifest);
    assert_eq!(parsed.render(), text);
    let bytes = tar_bytes(&manifest, &planned);
    assert_eq!(bytes, tar_bytes(&manifest, &planned), "the same members give the same bytes");
    let (dir, result) = unpack_bytes(&bytes);
    let unpacked = result.unwrap();
    assert_eq!(unpacked.manifest, manifest);
    assert_eq!(std::fs::read(unpacked.profile_path()).unwrap(), b"name = \"p\"\n");
    assert_eq!(std::fs::read(unpacked.path("inputs/overlays/p/etc/motd")).unwrap(), b"hello\n");
    let mode = std::fs::metadata(unpacked.path("inputs/overlays/p/etc")).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o755);
    assert_eq!(read_manifest(&dir.path().join("b.tar")).unwrap(), manifest);
}

#[test]
fn manifest_is_the_first_member_with_fixed_owners_and_times() {
    let planned = sample();
    let bytes = tar_bytes(&manifest_for(&planned), &planned);
    let mut archive = tar::Archive::new(&bytes[..]);
    let headers: Vec<(String, u64, u64)> = archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (String::from_utf8_lossy(&e.path_bytes()).into_owned(), e.header().uid().unwrap(), e.header().mtime().unwrap())
        })
        .collect();
    assert_eq!(headers[0].0, MANIFEST_MEMBER);
    assert_eq!(headers.len(), planned.len() + 1);
    assert!(headers.iter().all(|(_, uid, mtime)| *uid == 0 && *mtime == 0));
}

#[test]
fn flipped_byte_is_refused_naming_the_member() {
    let planned = sample();
    let mut bytes = tar_bytes(&manifest_for(&planned), &planned);
    let at = bytes.windows(11).position(|w| w == b"DEB-CONTENT").unwrap();
    bytes[at + 3] ^= 0x01;
    check_refused(&bytes, "member debs/zlib1g_1%3a1.2_amd64.deb is damaged");
}

#[test]
fn missing_member_is_refused_naming_it() {
    let planned = sample();
    let manifest = manifest_for(&planned);
    let without: Vec<Planned> = sample().into_iter().filter(|p| p.member.path != "inputs/profiles/p.lock").collect();
    check_refused(&tar_bytes(&manifest, &without), "member inputs/profiles/p.lock is missing");
}

#[test]
fn unlisted_member_is_refused_naming_it() {
    let mut planned = sample();
    let manifest = manifest_for(&planned);
    planned.push(file("inputs/profiles/extra.toml", b"x"));
    check_refused(&tar_bytes(&manifest, &planned), "member inputs/profiles/extra.toml is not listed in the manifest");
}

#[test]
fn escaping_and_linked_members_are_refused_naming_them() {
    let planned = sample();
    let manifest = manifest_for(&planned);
    for name in ["../evil", "inputs/../../evil", "/etc/evil"] {
        let mut bytes = tar_bytes(&manifest, &planned);
        append_raw(&mut bytes, name, tar::EntryType::Regular, b"x");
        check_refused(&bytes, name);
    }
    // A manifest listing an escaping path is refused before anything is unpacked.
    let mut hostile = manifest.clone();
    hostile.members[0].path = "../debs/evil.deb".into();
    check_refused(&tar_bytes(&hostile, &planned), "member \"../debs/evil.deb\" has a path that escapes");
    // A link where the manifest lists a file.
    let mut listed = manifest.clone();
    listed.members.push(Member { path: "inputs/link".into(), kind: MemberKind::File, mode: "0644".into(), size: 0, sha256: Some("0".repeat(64)) });
    let mut bytes = tar_bytes(&listed, &planned);
    append_raw(&mut bytes, "inputs/link", tar::EntryType::Symlink, b"");
    check_refused(&bytes, "member inputs/link is a link");
}

#[test]
fn archive_without_a_manifest_first_is_refused() {
    let planned = sample();
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = fixed_header(tar::EntryType::Regular, 0o644, 1);
    builder.append_data(&mut header, "inputs/x", &b"x"[..]).unwrap();
    check_refused(&builder.into_inner().unwrap(), "not the manifest");
    let mut manifest = manifest_for(&planned);
    manifest.format = "rampart-bundle-v0".into();
    check_refused(&tar_bytes(&manifest, &planned), "rampart-bundle-v0");
}

#[test]
fn another_profile_version_is_refused_naming_what_differs() {
    let planned = sample();
    let manifest = manifest_for(&planned);
    let given: Vec<Member> = planned.iter().map(|p| p.member.clone()).filter(|m| m.path.starts_with("inputs/")).collect();
    check_same_profile(&manifest, "p", &given, Path::new("profiles/p.toml")).unwrap();

    let mut edited = given.clone();
    let toml = edited.iter_mut().find(|m| m.path == "inputs/profiles/p.toml").unwrap();
    toml.sha256 = Some("1".repeat(64));
    let message = format!("{:#}", check_same_profile(&manifest, "p", &edited, Path::new("profiles/p.toml")).unwrap_err());
    assert!(message.contains("a bundle built for another profile version"), "{message}");
    assert!(message.contains("inputs/profiles/p.toml differs"), "{message}");

    let mut fewer = given.clone();
    fewer.retain(|m| m.path != "inputs/overlays/p/etc/motd");
    let message = format!("{:#}", check_same_profile(&manifest, "p", &fewer, Path::new("profiles/p.toml")).unwrap_err());
    assert!(message.contains("inputs/overlays/p/etc/motd is only in the bundle"), "{message}");

    let message = format!("{:#}", check_same_profile(&manifest, "web", &given, Path::new("profiles/web.toml")).unwrap_err());
    assert!(message.contains("made for profile \"p\", not \"web\""), "{message}");
}

#[test]
fn member_paths_must_stay_inside_the_bundle() {
    for good in ["debs/a.deb", "inputs/profiles/p.toml"] {
        check_member_path(good).unwrap();
    }
    for bad in ["", "/abs", "a/../b", "./a", "a//b", "a/", "..", MANIFEST_MEMBER] {
        assert!(check_member_path(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn common_ancestor_keeps_the_relative_layout() {
    let paths = [Path::new("/r/profiles"), Path::new("/r/overlays/base"), Path::new("/r/profiles/site")];
    assert_eq!(common_ancestor(&paths), PathBuf::from("/r"));
    assert_eq!(common_ancestor(&[Path::new("/r/profiles")]), PathBuf::from("/r/profiles"));
}

fn locked(name: &str, version: &str, suite: &str) -> crate::lock::LockedPackage {
    crate::lock::LockedPackage {
        name: name.into(),
        version: version.into(),
        arch: "amd64".into(),
        suite: suite.into(),
        filename: format!("pool/main/{}/{name}/{name}_{version}_amd64.deb", &name[..1]),
        size: 1000,
        sha256: "a".repeat(64),
    }
}

fn lock_of(packages: Vec<crate::lock::LockedPackage>) -> Lock {
    Lock { lock_version: crate::lock::LOCK_VERSION, request_sha256: "r".into(), source_date_epoch: 0, sources: Vec::new(), packages, auditor: Vec::new() }
}

/// The signed index of one suite holding the stanzas of `packages` as locked.
fn index_of(suite: &str, packages: &[crate::lock::LockedPackage]) -> BTreeMap<String, signed::SuiteIndex> {
    let text: String = packages
        .iter()
        .map(|p| format!("Package: {}\nVersion: {}\nArchitecture: {}\nFilename: {}\nSize: {}\nSHA256: {}\n\n", p.name, p.version, p.arch, p.filename, p.size, p.sha256))
        .collect();
    let entries = crate::apt::parse_packages(&text).unwrap();
    let packages = entries.into_iter().map(|e| ((e.name.clone(), e.version.clone()), e)).collect();
    let members = vec![signed::packages_member(suite, "main")];
    BTreeMap::from([(suite.to_string(), signed::SuiteIndex { members, packages })])
}

fn check_lock_against_index(lock: &Lock, index: &BTreeMap<String, signed::SuiteIndex>, expected: Option<&str>) {
    let result = signed::check_locked_packages(lock, index).map_err(|e| format!("{e:#}"));
    match expected {
        None => assert_eq!(result, Ok(())),
        Some(part) => {
            let message = result.expect_err("the lock is refused");
            assert!(message.contains(part), "expected {part:?} in: {message}");
        }
    }
}

#[test]
fn a_lock_rewritten_for_another_deb_is_refused_naming_the_package_and_the_signed_index() {
    let signed_packages = vec![locked("hostname", "3.23+nmu1", "bookworm"), locked("openssh-server", "1:9.2p1-2+deb12u7", "bookworm-security")];
    let index = {
        let mut index = index_of("bookworm", &signed_packages[..1]);
        index.extend(index_of("bookworm-security", &signed_packages[1..]));
        index
    };
    check_lock_against_index(&lock_of(signed_packages.clone()), &index, None);

    // The attack: another .deb in the bundle, the lock rewritten to its digest and size.
    let mut forged = signed_packages.clone();
    forged[1].sha256 = "b".repeat(64);
    forged[1].size = 1234;
    check_lock_against_index(
        &lock_of(forged),
        &index,
        Some(&format!(
            "package openssh-server 1:9.2p1-2+deb12u7 does not match its stanza in the signed index indices/bookworm-security/main/binary-amd64/Packages.gz: size is 1234 in the lock, 1000 in the index; sha256 is {} in the lock, {} in the index",
            "b".repeat(64),
            "a".repeat(64)
        )),
    );
    let mut forged = signed_packages.clone();
    forged[0].filename = "pool/main/h/hostname/other.deb".into();
    check_lock_against_index(&lock_of(forged), &index, Some("filename is pool/main/h/hostname/other.deb in the lock"));
    let mut forged = signed_packages.clone();
    forged[0].arch = "all".into();
    check_lock_against_index(&lock_of(forged), &index, Some("arch is all in the lock, amd64 in the index"));
    // A version the archive never signed, and a package from a suite without an index.
    let mut forged = signed_packages.clone();
    forged[0].version = "3.23+evil".into();
    check_lock_against_index(&lock_of(forged), &index, Some("package hostname 3.23+evil (bookworm) is in no stanza of the signed index indices/bookworm/main/binary-amd64/Packages.gz"));
    let mut forged = signed_packages.clone();
    forged[0].suite = "bookworm-backports".into();
    check_lock_against_index(&lock_of(forged), &index, Some("locked from suite bookworm-backports, which has no signed index in the bundle"));
}

#[test]
fn a_version_1_bundle_is_refused_saying_to_make_it_again() {
    let planned = sample();
    let mut manifest: serde_json::Value = serde_json::from_str(&manifest_for(&planned).render()).unwrap();
    manifest["format"] = "rampart-bundle-v1".into();
    let message = format!("{:#}", BundleManifest::parse(manifest.to_string().as_bytes()).unwrap_err());
    assert!(message.contains("rampart-bundle-v1 bundle, made by an older rampart") && message.contains("make it again with `rampart bundle`"), "{message}");
    // Even with fields this version does not know: the format is read first.
    manifest["keyring"] = "x".into();
    let message = format!("{:#}", BundleManifest::parse(manifest.to_string().as_bytes()).unwrap_err());
    assert!(message.contains("older rampart"), "{message}");
}

#[test]
fn a_bundle_whose_sha256_is_not_the_given_one_is_refused_before_it_is_read() {
    let planned = sample();
    let bytes = tar_bytes(&manifest_for(&planned), &planned);
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("b.tar");
    std::fs::write(&bundle, &bytes).unwrap();
    let digest = hex::encode(Sha256::digest(&bytes));
    check_digest(&bundle, &digest).unwrap();
    check_digest(&bundle, &digest.to_uppercase()).unwrap();
    let message = format!("{:#}", check_digest(&bundle, &"0".repeat(64)).unwrap_err());
    assert!(message.contains(&format!("its sha256 is {digest}, but --sha256 says {}", "0".repeat(64))), "{message}");
    assert!(format!("{:#}", check_digest(&bundle, "abc").unwrap_err()).contains("is not a sha256"));
    // The bytes unpack reads are checked against the digest as well.
    assert!(unpack(&bundle, &dir.path().join("work"), Some(&digest)).is_ok());
    let message = format!("{:#}", unpack(&bundle, &dir.path().join("work2"), Some(&"1".repeat(64))).err().unwrap());
    assert!(message.contains("it changed while it was read"), "{message}");
}

#[test]
fn packages_indices_are_checked_against_the_signed_inrelease() {
    let signed = "Origin: Debian\nSuite: stable\nCodename: bookworm\nDate: Sat, 10 May 2025 09:22:01 UTC\nSHA256:\n abc 12 main/binary-amd64/Packages\n";
    let release = crate::apt::check_release(signed, "bookworm", "member indices/bookworm/InRelease").unwrap();
    assert_eq!(release.date, "Sat, 10 May 2025 09:22:01 UTC");
    crate::apt::check_packages_digest(&release, "bookworm", "main/binary-amd64/Packages", "abc").unwrap();
    let message = format!("{:#}", crate::apt::check_packages_digest(&release, "bookworm", "main/binary-amd64/Packages", "abd").unwrap_err());
    assert!(message.contains("does not match the signed InRelease (sha256 abd, the InRelease lists abc)"), "{message}");
    assert!(crate::apt::check_packages_digest(&release, "bookworm", "contrib/binary-amd64/Packages", "abc").is_err());
    let message = format!("{:#}", crate::apt::check_release(signed, "bookworm-security", "member indices/bookworm-security/InRelease").unwrap_err());
    assert!(message.contains("is for suite \"stable\""), "{message}");
}

#[test]
fn a_lock_claiming_another_clock_than_its_signed_indices_is_refused() {
    let mut lock = lock_of(Vec::new());
    lock.sources = vec![
        crate::lock::LockedSource { suite: "bookworm".into(), components: vec!["main".into()], inrelease_sha256: "a".into(), date: "Sat, 10 May 2025 09:22:01 UTC".into() },
        crate::lock::LockedSource { suite: "bookworm-security".into(), components: vec!["main".into()], inrelease_sha256: "b".into(), date: "Thu, 01 Jan 1970 00:00:00 UTC".into() },
    ];
    lock.source_date_epoch = 1746868921;
    signed::check_source_date_epoch(&lock).unwrap();
    lock.source_date_epoch = 1;
    let message = format!("{:#}", signed::check_source_date_epoch(&lock).unwrap_err());
    assert!(message.contains("source-date-epoch is 1, but its newest signed index is dated 1746868921"), "{message}");
}
