//! Text rampart renders for a tool to check (an sshd drop-in, an nftables
//! ruleset), remembering which profile field each line came from, so that a
//! line the tool refuses is reported at its field. Pure: no IO.

/// Lines and, per line, the profile field behind it (if any).
#[derive(Debug, Default)]
pub struct TracedText {
    pub text: String,
    origins: Vec<Option<String>>,
}

impl TracedText {
    /// Appends one line (without its newline) and where it came from.
    pub fn line(&mut self, line: &str, origin: Option<String>) {
        self.text.push_str(line);
        self.text.push('\n');
        self.origins.push(origin);
    }

    /// The field behind line `number` (1-based), if the line has one.
    pub fn origin(&self, number: usize) -> Option<String> {
        self.origins.get(number.checked_sub(1)?).cloned().flatten()
    }
}

/// The line number a tool names right after `file` in its complaint:
/// "FILE:23:5-10: ...", "FILE line 3: ..." or "FILE: line 3: ...".
pub fn line_named_after(message: &str, file: &str) -> Option<usize> {
    let rest = message.split(file).nth(1)?;
    let rest = rest.strip_prefix(':').unwrap_or(rest).trim_start();
    let rest = rest.strip_prefix("line ").unwrap_or(rest);
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_complaints_are_traced_to_the_line_and_its_field() {
        let mut text = TracedText::default();
        text.line("table inet rampart {", None);
        text.line("\t\ttcp dport 9 acept", Some("web.toml:7:3: firewall.input-rules".into()));
        assert_eq!(text.text, "table inet rampart {\n\t\ttcp dport 9 acept\n");
        let nft = "/etc/nftables.conf:2:20-20: Error: syntax error, unexpected newline";
        assert_eq!(line_named_after(nft, "/etc/nftables.conf"), Some(2));
        assert_eq!(text.origin(2).as_deref(), Some("web.toml:7:3: firewall.input-rules"));
        assert_eq!(text.origin(1), None);
        let sshd = "/etc/ssh/sshd_config.d/20-rampart.conf line 3: Bad SSH2 cipher spec 'des'.";
        assert_eq!(line_named_after(sshd, "20-rampart.conf"), Some(3));
        let unknown = "/etc/ssh/sshd_config.d/20-rampart.conf: line 4: Bad configuration option: Chiphers";
        assert_eq!(line_named_after(unknown, "20-rampart.conf"), Some(4));
        assert_eq!(line_named_after("something else", "20-rampart.conf"), None);
    }
}
