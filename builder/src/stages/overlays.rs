//! Overlay stage: lays the profile's trees from `overlays/` onto the image.
//! `*.tera` files are rendered with the profile's values (an undefined
//! variable is an error); every destination is resolved inside the image and
//! refused if it would leave it; modes and owners are set, never inherited
//! from the checkout.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::build::context::BuildContext;
use crate::fsutil::{resolve_in_root, resolve_in_root_following};
use crate::profile::{FileMode, Profile};

/// One file an overlay puts into the image.
#[derive(Debug, PartialEq, Eq)]
pub enum Planned {
    Dir,
    File { contents: Vec<u8>, mode: u32 },
    Symlink { target: PathBuf },
}

/// The template context: the profile's variables plus `profile.*`.
pub fn template_context(profile: &Profile) -> tera::Context {
    let mut context = tera::Context::new();
    for (key, value) in &profile.variables {
        context.insert(key.as_str(), value);
    }
    context.insert(
        "profile",
        &json!({
            "name": profile.name.as_str(),
            "description": profile.description,
            "hostname": profile.image.hostname.as_str(),
        }),
    );
    context
}

/// Renders one template; errors name the template file.
pub fn render(source_name: &str, template: &str, context: &tera::Context) -> Result<String> {
    let mut tera = tera::Tera::default();
    tera.autoescape_on(vec![]);
    // Templates see the profile only: the build host's environment must not
    // leak into an image (nor make it differ between hosts).
    tera.register_function("get_env", |_: &std::collections::HashMap<String, tera::Value>| -> tera::Result<tera::Value> {
        Err(tera::Error::msg("get_env is disabled: templates see only the profile's variables"))
    });
    tera.add_raw_template(source_name, template)
        .map_err(|e| anyhow::anyhow!("{}", error_chain(&e)))
        .with_context(|| format!("while parsing template {source_name}"))?;
    tera.render(source_name, context)
        .map_err(|e| anyhow::anyhow!("{}", error_chain(&e)))
        .with_context(|| format!("while rendering template {source_name}"))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// Walks an overlay tree and says what it would install, image path first.
pub fn plan_tree(tree: &Path, context: &tera::Context) -> Result<BTreeMap<String, Planned>> {
    let mut planned = BTreeMap::new();
    let mut stack = vec![tree.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("while reading overlay {}", dir.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for path in entries {
            let relative = path.strip_prefix(tree)?.to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&path)?;
            let shown = path.display().to_string();
            if meta.file_type().is_symlink() {
                planned.insert(format!("/{relative}"), Planned::Symlink { target: std::fs::read_link(&path)? });
            } else if meta.is_dir() {
                planned.insert(format!("/{relative}"), Planned::Dir);
                stack.push(path);
            } else if meta.is_file() {
                let mode = if meta.mode() & 0o111 != 0 { 0o755 } else { 0o644 };
                let bytes = std::fs::read(&path)?;
                match relative.strip_suffix(".tera") {
                    Some(stripped) => {
                        let text = String::from_utf8(bytes).with_context(|| format!("template {shown} is not UTF-8"))?;
                        let rendered = render(&shown, &text, context)?;
                        planned.insert(format!("/{stripped}"), Planned::File { contents: rendered.into_bytes(), mode });
                    }
                    None => {
                        planned.insert(format!("/{relative}"), Planned::File { contents: bytes, mode });
                    }
                }
            } else {
                bail!("overlay {shown} is not a file, directory or symlink");
            }
        }
    }
    Ok(planned)
}

/// Checks every overlay and template before any work starts.
pub fn validate(profile: &Profile) -> Result<()> {
    let context = template_context(profile);
    let mut provided = std::collections::BTreeSet::new();
    let mount = crate::layout::CONFIG_MOUNT;
    for tree in &profile.overlays {
        for path in plan_tree(&tree.dir, &context)?.into_keys() {
            // What the logging and integrity controls checked must ship as checked.
            if path.starts_with(&format!("{mount}/")) || path == "/etc/rsyslog.conf" {
                bail!(
                    "overlay {} provides {path}: {mount} is the read-only configuration partition, written by the logging and integrity controls only (use [logging] and [integrity])",
                    tree.name
                );
            }
            provided.insert(path);
        }
    }
    for path in profile.overlay_modes.keys() {
        if !provided.contains(path) {
            bail!("{}: overlays.modes names {path}, which no overlay tree of the profile provides", profile.path.display());
        }
    }
    Ok(())
}

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    if ctx.profile.overlays.is_empty() {
        ctx.record("overlays", false, json!({}));
        return Ok(());
    }
    let context = template_context(&ctx.profile);
    let mut installed = Vec::new();
    for tree in ctx.profile.overlays.clone() {
        let planned = plan_tree(&tree.dir, &context)?;
        for (image_path, item) in &planned {
            let destination = resolve_in_root(&ctx.root(), Path::new(image_path))
                .with_context(|| format!("overlay {} puts {image_path} outside the image", tree.name))?;
            let wanted = ctx.profile.overlay_modes.get(image_path).cloned();
            install(ctx, &destination, item, wanted.as_ref())
                .with_context(|| format!("while installing {image_path} from overlay {}", tree.name))?;
            if !matches!(item, Planned::Dir) {
                installed.push(format!("{image_path} ({})", tree.name));
            }
        }
    }
    ctx.record("overlays", true, json!({
        "trees": ctx.profile.overlays.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
        "files": installed,
    }));
    Ok(())
}

fn install(ctx: &BuildContext, destination: &Path, item: &Planned, wanted: Option<&FileMode>) -> Result<()> {
    let existing = std::fs::symlink_metadata(destination).ok();
    let mut destination = destination.to_path_buf();
    match item {
        Planned::Dir => {
            if existing.as_ref().is_some_and(|m| m.file_type().is_symlink()) {
                // A directory the image already has under another name: follow
                // the link inside the image, never on the host.
                let relative = destination.strip_prefix(ctx.root())?.to_path_buf();
                destination = resolve_in_root_following(&ctx.root(), &relative)?;
                if !destination.is_dir() {
                    bail!("the image has a symlink there that does not lead to a directory");
                }
            } else if existing.is_none() {
                std::fs::create_dir_all(&destination)?;
                std::fs::set_permissions(&destination, std::fs::Permissions::from_mode(0o755))?;
            } else if !existing.as_ref().is_some_and(|m| m.is_dir()) {
                bail!("the image has a file there, not a directory");
            }
            // Existing directories keep their mode and owner unless the profile says otherwise.
            let Some(wanted) = wanted else { return Ok(()) };
            std::fs::set_permissions(&destination, std::fs::Permissions::from_mode(wanted.mode))?;
        }
        Planned::File { contents, mode } => {
            if existing.as_ref().is_some_and(|m| m.is_dir()) {
                bail!("the image has a directory there");
            }
            if existing.is_some() {
                std::fs::remove_file(&destination)?;
            }
            std::fs::write(&destination, contents)?;
            let mode = wanted.map(|w| w.mode).unwrap_or(*mode);
            std::fs::set_permissions(&destination, std::fs::Permissions::from_mode(mode))?;
        }
        Planned::Symlink { target } => {
            if existing.as_ref().is_some_and(|m| m.is_dir()) {
                bail!("the image has a directory there");
            }
            if existing.is_some() {
                std::fs::remove_file(&destination)?;
            }
            std::os::unix::fs::symlink(target, &destination)?;
        }
    }
    let (uid, gid) = match wanted {
        Some(w) => (crate::stages::users::ids_of(ctx, &w.owner)?.0, crate::stages::users::gid_of(ctx, &w.group)?),
        None => (0, 0),
    };
    std::os::unix::fs::lchown(&destination, Some(uid), Some(gid))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> tera::Context {
        let mut context = tera::Context::new();
        context.insert("motd", "hello");
        context
    }

    #[test]
    fn templates_render_profile_values() {
        assert_eq!(render("t", "say {{ motd }}", &context()).unwrap(), "say hello");
    }

    #[test]
    fn undefined_variables_are_errors_naming_the_template() {
        let error = render("overlays/x/etc/motd.tera", "{{ nope }}", &context()).unwrap_err();
        let text = format!("{error:#}");
        assert!(text.starts_with("while rendering template overlays/x/etc/motd.tera"), "{text}");
        assert!(text.contains("nope"), "{text}");
    }

    #[test]
    fn templates_cannot_read_the_host_environment() {
        let error = render("t", "{{ get_env(name=\"HOME\") }}", &context()).unwrap_err();
        assert!(format!("{error:#}").contains("get_env is disabled"), "{error:#}");
    }

    #[test]
    fn tree_plan_strips_tera_and_normalises_modes() {
        let tree = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tree.path().join("etc")).unwrap();
        std::fs::write(tree.path().join("etc/motd.tera"), "{{ motd }}\n").unwrap();
        std::fs::write(tree.path().join("etc/run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(tree.path().join("etc/run.sh"), std::fs::Permissions::from_mode(0o777)).unwrap();
        let planned = plan_tree(tree.path(), &context()).unwrap();
        assert_eq!(planned["/etc/motd"], Planned::File { contents: b"hello\n".to_vec(), mode: 0o644 });
        assert!(matches!(planned["/etc/run.sh"], Planned::File { mode: 0o755, .. }));
        assert_eq!(planned["/etc"], Planned::Dir);
    }
}
