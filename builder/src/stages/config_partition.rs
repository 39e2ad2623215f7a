//! The read-only configuration partition: controls write their files under
//! `layout::CONFIG_MOUNT` in the image root, where the image's own tools can
//! check them; this stage moves them to the partition's own tree, leaving an
//! empty mount point, so the root file system, its baseline and its archive
//! hold only the mount point. The disk stage makes the partition from the tree.

use anyhow::{Context, Result};
use serde_json::json;

use crate::build::context::BuildContext;
use crate::fsutil::sha256_file;
use crate::layout::CONFIG_MOUNT;
use crate::stages::seal::{clamp_times, set_times};
use crate::tree::{walk, Kind};

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    let mount_point = ctx.root().join(&CONFIG_MOUNT[1..]);
    let tree = ctx.config_tree();
    std::fs::create_dir_all(&mount_point)?;
    std::fs::create_dir_all(&tree)?;
    for entry in std::fs::read_dir(&mount_point)? {
        let entry = entry?;
        std::fs::rename(entry.path(), tree.join(entry.file_name()))
            .with_context(|| format!("while moving {} to the configuration partition", entry.path().display()))?;
    }
    // Emptying the mount point changed its time; the tree's files are new.
    set_times(&mount_point, ctx.source_date_epoch)?;
    clamp_times(&tree, ctx.source_date_epoch)?;
    let mut files = Vec::new();
    for entry in walk(&tree)? {
        if entry.kind == Kind::File {
            files.push(json!({ "path": format!("{CONFIG_MOUNT}{}", entry.image_path), "sha256": sha256_file(&entry.host_path)? }));
        }
    }
    ctx.record("config-partition", true, json!({ "mount": CONFIG_MOUNT, "options": "ro,nodev,nosuid,noexec", "files": files }));
    Ok(())
}
