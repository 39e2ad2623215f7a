//! Disk stage (being written).
use anyhow::Result;
use crate::build::context::BuildContext;
pub fn run(_ctx: &mut BuildContext) -> Result<()> {
    Ok(())
}
