//! The manual pages, made from the command line's own definitions (clap):
//! rampart(1), and rampart-COMMAND(1) for each command. No date goes in:
//! the same rampart makes the same pages.

use anyhow::{Context, Result};
use clap::CommandFactory;

/// Each page's file name (`rampart.1`, `rampart-build.1`, ...) and its roff text.
pub fn pages() -> Result<Vec<(String, Vec<u8>)>> {
    let mut command = crate::cli::Cli::command();
    command.build();
    let mut pages = vec![("rampart.1".to_string(), render(command.clone())?)];
    // clap's own "help" command is rampart(1)'s business
    for sub in command.get_subcommands().filter(|c| c.get_name() != "help") {
        let name = format!("rampart-{}", sub.get_name());
        let page = sub.clone().name(name.clone()).version(env!("CARGO_PKG_VERSION"));
        pages.push((format!("{name}.1"), render(page)?));
    }
    Ok(pages)
}

fn render(command: clap::Command) -> Result<Vec<u8>> {
    let mut text = Vec::new();
    clap_mangen::Man::new(command).render(&mut text).context("while writing a manual page")?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page's text as a reader sees it (roff's escaped hyphens plain).
    fn plain(pages: &[(String, Vec<u8>)], name: &str) -> String {
        let (_, page) = pages.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no page {name}"));
        String::from_utf8(page.clone()).unwrap().replace("\\-", "-").replace("\\*(Aq", "'")
    }

    #[test]
    fn every_command_and_option_is_in_its_manual_page() {
        let pages = pages().unwrap();
        let main = plain(&pages, "rampart.1");
        let command = crate::cli::Cli::command();
        let names: Vec<&str> = command.get_subcommands().map(|c| c.get_name()).collect();
        assert_eq!(names, ["lock", "fetch", "outdated", "build", "bundle", "patch", "verify", "test", "audit", "new", "completions", "man"]);
        for sub in command.get_subcommands() {
            let name = sub.get_name();
            assert!(main.contains(&format!("rampart-{name}(1)")) || main.contains(name), "rampart(1) does not name {name}");
            let page = plain(&pages, &format!("rampart-{name}.1"));
            assert!(page.contains(&format!("rampart-{name}")), "{name}'s page does not name itself");
            if let Some(about) = sub.get_about() {
                let first = about.to_string();
                let words: String = first.split_whitespace().take(4).collect::<Vec<_>>().join(" ");
                assert!(page.contains(&words), "{name}'s page lacks its description {words:?}");
            }
            for arg in sub.get_arguments() {
                if arg.is_hide_set() {
                    continue;
                }
                let shown = match arg.get_long() {
                    Some(long) => format!("--{long}"),
                    None => arg.get_value_names().and_then(|v| v.first()).map(|v| v.to_string()).unwrap_or_else(|| arg.get_id().as_str().to_uppercase()),
                };
                assert!(page.contains(&shown), "rampart-{name}(1) lacks {shown}");
            }
        }
    }

    #[test]
    fn no_page_for_clap_help() {
        assert!(pages().unwrap().iter().all(|(name, _)| name != "rampart-help.1"));
    }

    #[test]
    fn the_pages_are_the_same_each_time() {
        assert_eq!(pages().unwrap(), pages().unwrap());
    }
}
