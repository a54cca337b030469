//! What validation collects as it walks the file: every problem, and every file read on the way.

use std::path::{Path, PathBuf};

use super::{Environment, Problem};

/// Collects problems as validation walks the file, and the files it reads.
pub(super) struct Problems {
    /// Every problem, in the order found.
    pub(super) found: Vec<Problem>,
    /// Every file the config read (secrets, certificates), also those that failed: they become
    /// [`Config::files`](super::Config::files), which the watcher watches and a reload re-reads.
    pub(super) files_read: Vec<PathBuf>,
}

impl Problems {
    pub(super) fn new() -> Self {
        Problems { found: Vec::new(), files_read: Vec::new() }
    }

    pub(super) fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.found.push(Problem { field: field.into(), message: message.into() });
    }

    /// How many problems so far: a section compares before and after to see whether it added one.
    pub(super) fn count(&self) -> usize {
        self.found.len()
    }

    /// Reads a file the config names (relative to `base`), recording it for the watcher; a file
    /// that cannot be read is a problem of `field`.
    pub(super) fn read_file(&mut self, env: &dyn Environment, base: &Path, path: &Path, field: &str) -> Option<String> {
        let full = resolve(base, path);
        self.files_read.push(full.clone());
        match env.read_to_string(&full) {
            Ok(s) => Some(s),
            Err(e) => {
                self.add(field, format!("cannot read {}: {e}", full.display()));
                None
            }
        }
    }
}

/// A path from the config: relative paths are relative to the config file's directory.
pub(super) fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}
