//! Process accounting control (seed step 8, "consider what events are
//! critical"; CIS names it among the audit tools): the kernel records every
//! process that ends (Debian's acct: `accton`, read with `lastcomm` and `sa`)
//! in /var/log/account/pacct, rotated by logrotate (the image runs no cron,
//! so Debian's cron.daily script never would), checked with the image's own
//! `logrotate --debug`. After a rotation acct.service itself reopens the file:
//! the kernel writes to a file on the mount it was opened on, and a
//! sandboxed logrotate's mounts go away with it.

use anyhow::{bail, Result};
use serde_json::json;

use crate::build::context::BuildContext;

pub const SERVICE: &str = "acct.service";
const LOGROTATE: &str = "etc/logrotate.d/rampart-acct";
/// The unit starts only when /var/log/account exists; the seal empties /var/log.
const TMPFILES: &str = "etc/tmpfiles.d/rampart-acct.conf";

fn logrotate_text(kept: u32) -> String {
    format!(
        "# rampart: [accounting] process accounting, rotated daily, {kept} days kept\n\
         /var/log/account/pacct {{\n    daily\n    rotate {kept}\n    compress\n    delaycompress\n    missingok\n    notifempty\n    create 0640 root adm\n    postrotate\n        systemctl restart acct.service\n    endscript\n}}\n"
    )
}

pub fn run(ctx: &mut BuildContext) -> Result<()> {
    let accounting = ctx.profile.accounting.clone();
    if !accounting.processes {
        ctx.record("accounting", false, json!({ "reason": "accounting.processes = false" }));
        return Ok(());
    }
    if !ctx.root().join("lib/systemd/system").join(SERVICE).exists() {
        bail!("[accounting] of {}: the image has no {SERVICE}; is acct excluded?", ctx.profile.path.display());
    }
    ctx.install_file(TMPFILES, b"# rampart: [accounting]\nd /var/log/account 0750 root adm -\nf /var/log/account/pacct 0640 root adm -\n", 0o644)?;
    ctx.install_file(LOGROTATE, logrotate_text(accounting.days_kept).as_bytes(), 0o644)?;
    let output = ctx.in_root("logrotate").args(["--debug", &format!("/{LOGROTATE}")]).run_unchecked()?;
    if !output.status.success() {
        bail!("the image's logrotate refuses the process accounting rotation:\n{}", String::from_utf8_lossy(&output.stderr).trim());
    }
    ctx.record(
        "accounting",
        true,
        json!({
            "processes": format!("{SERVICE}: accton /var/log/account/pacct (0640 root:adm)"),
            "rotation": format!("/{LOGROTATE}: daily, {} kept, checked with logrotate --debug", accounting.days_kept),
        }),
    );
    Ok(())
}
