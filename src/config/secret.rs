//! Secret values and where they come from: environment variables and files, never the TOML itself.
//! Resolving one (exactly one source, BOM and whitespace trimmed, bounded, one line) is here too.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

use super::problems::{resolve, Problems};

/// A secret string (API key, password, token). `Debug` prints `[redacted]`; there is no
/// `Display` or `Serialize`, so a secret reaches a log line only through a deliberate `expose()`.
#[derive(Clone)]
pub struct Secret(Arc<Held>);

/// The value, and a searcher for it made once: every answer's headers are searched for each
/// secret the exchange sent, and building a searcher costs more than searching a short header
/// with one (issue 14: `memmem::find` builds one on every call).
struct Held {
    value: Box<str>,
    finder: memchr::memmem::Finder<'static>,
}

impl Secret {
    /// Wraps a secret value.
    pub(crate) fn new(value: impl Into<String>) -> Self {
        let value = value.into().into_boxed_str();
        let finder = memchr::memmem::Finder::new(value.as_bytes()).into_owned();
        Secret(Arc::new(Held { value, finder }))
    }

    /// The raw value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0.value
    }

    /// Whether `haystack` holds the value (an empty secret is in nothing).
    pub fn is_in(&self, haystack: &[u8]) -> bool {
        !self.0.value.is_empty() && self.0.finder.find(haystack).is_some()
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.0.value == other.0.value
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where the config loader reads environment variables and secret files. A trait so that
/// tests and `--demo` supply their own values without touching the process environment.
pub trait Environment: Send + Sync {
    /// The variable's value, if set.
    fn var(&self, name: &str) -> Option<String>;
    /// The file's contents: a regular file of at most 1 MiB (see `config::read`).
    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        super::read::read_bounded(path, super::read::MAX_FILE_BYTES)
    }
}

/// The largest secret value (API key, password, email) a file or variable may hold.
pub(crate) const MAX_SECRET_BYTES: usize = 64 * 1024;

/// The real process environment and file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// Variables from a map (files still come from the file system): for tests and `--demo`.
#[derive(Debug, Default, Clone)]
pub struct MapEnv {
    vars: HashMap<String, String>,
}

impl MapEnv {
    /// An empty environment.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a variable.
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.vars.insert(name.into(), value.into());
        self
    }
}

impl Environment for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }
}

/// Reads one secret given as exactly one of `NAME_env` / `NAME_file` (or a plain value, for the
/// non-secret `email`).
pub(super) fn resolve_secret(
    field: &str,
    plain: Option<&str>,
    env_var: Option<&str>,
    file: Option<&Path>,
    base: &Path,
    env: &dyn Environment,
    p: &mut Problems,
) -> Option<Secret> {
    let given = usize::from(plain.is_some()) + usize::from(env_var.is_some()) + usize::from(file.is_some());
    if given > 1 {
        let names = if plain.is_some() {
            format!("{field}, {field}_env, {field}_file")
        } else {
            format!("{field}_env, {field}_file")
        };
        p.add(field, format!("give only one of {names}"));
        return None;
    }
    if let Some(v) = plain {
        return Some(Secret::new(v));
    }
    if let Some(var) = env_var {
        return match env.var(var) {
            Some(v) if !secret_text(&v).is_empty() => {
                secret_value(secret_text(&v), &format!("{field}_env"), &format!("environment variable {var}"), p)
            }
            Some(_) => {
                p.add(format!("{field}_env"), format!("environment variable {var} is empty"));
                None
            }
            None => {
                p.add(format!("{field}_env"), format!("environment variable {var} is not set"));
                None
            }
        };
    }
    if let Some(f) = file {
        let text = p.read_file(env, base, f, &format!("{field}_file"))?;
        let v = secret_text(&text);
        if v.is_empty() {
            p.add(format!("{field}_file"), format!("{} is empty", resolve(base, f).display()));
            return None;
        }
        return secret_value(v, &format!("{field}_file"), &resolve(base, f).display().to_string(), p);
    }
    None
}

/// A secret as written: without a leading UTF-8 byte-order mark (some editors add one, and it
/// would be sent upstream as part of the key), then trimmed.
fn secret_text(raw: &str) -> &str {
    raw.strip_prefix('\u{feff}').unwrap_or(raw).trim()
}

/// A trimmed secret value, refused when it cannot be one: too long, or with a control character
/// inside (a second line, a NUL) that would break the header or body it is sent in.
fn secret_value(v: &str, field: &str, source: &str, p: &mut Problems) -> Option<Secret> {
    if v.len() > MAX_SECRET_BYTES {
        p.add(field, format!("{source} holds more than {} bytes: not a secret", MAX_SECRET_BYTES));
        return None;
    }
    if v.chars().any(char::is_control) {
        p.add(
            field,
            format!("{source} has a control character (a newline, NUL or tab) inside the value: a secret is one line"),
        );
        return None;
    }
    Some(Secret::new(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some([redacted])");
        assert_eq!(s.expose(), "hunter2");
    }
}
