//! Secret values and where they come from: environment variables and files, never the TOML itself.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

/// A secret string (API key, password, token). `Debug` prints `[redacted]`; there is no
/// `Display` or `Serialize`, so a secret reaches a log line only through a deliberate `expose()`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Secret(value.into())
    }

    /// The raw value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

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
    /// The file's contents: a regular file of at most [`MAX_FILE_BYTES`] (see [`read_bounded`]).
    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        read_bounded(path, MAX_FILE_BYTES)
    }
}

/// The largest file the gateway reads (config, certificates, secrets).
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// The largest secret value (API key, password, email) a file or variable may hold.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// Reads a UTF-8 regular file of at most `limit` bytes. Anything else (a FIFO, a device such as
/// `/dev/zero`, a directory) is refused before a byte is read, so a misplaced path gives a clear
/// error instead of a hang or an endless read. The file is opened non-blocking (opening a FIFO
/// would otherwise wait for a writer) and checked on the opened handle, so a swap between the
/// check and the read cannot slip a FIFO in.
pub fn read_bounded(path: &Path, limit: u64) -> io::Result<String> {
    use std::io::Read as _;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a directory, FIFO, socket or device); give the path of a plain file",
        ));
    }
    if meta.len() > limit {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("larger than {limit} bytes")));
    }
    let mut bytes = Vec::new();
    // `take`: a file that grows while it is read still stops at the bound.
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("larger than {limit} bytes")));
    }
    String::from_utf8(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

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
