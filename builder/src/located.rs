//! Errors that point at a place in a TOML file (file:line:col), shared by
//! profiles and test scenarios. Pure: works on text already read.

use toml::Spanned;

/// An error that names the place at fault.
#[derive(Debug, thiserror::Error)]
#[error("{location}: {message}")]
pub struct LocatedError {
    pub location: String,
    pub message: String,
}

/// A TOML file's name and text, to turn byte offsets into file:line:col.
pub struct SourceText {
    pub file: std::path::PathBuf,
    pub text: String,
}

impl SourceText {
    pub fn location(&self, offset: usize) -> String {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
        format!("{}:{}:{}", self.file.display(), line, column)
    }

    pub fn error<T>(&self, value: &Spanned<T>, message: impl Into<String>) -> LocatedError {
        LocatedError { location: self.location(value.span().start), message: message.into() }
    }

    /// Parses the whole file; syntax and type errors carry their position.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, LocatedError> {
        toml::from_str(&self.text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            let message = e.message().trim().lines().map(str::trim).collect::<Vec<_>>().join(": ");
            LocatedError { location: self.location(offset), message }
        })
    }

    /// Validates one value with `parse`, prefixing errors with the field name.
    pub fn check<T, U, E: std::fmt::Display>(
        &self,
        value: &Spanned<T>,
        field: &str,
        parse: impl FnOnce(&T) -> Result<U, E>,
    ) -> Result<U, LocatedError> {
        parse(value.get_ref()).map_err(|e| self.error(value, format!("{field}: {e}")))
    }
}
