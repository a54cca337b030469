//! Reload triggers: SIGHUP, and changes to the config file or the secret/TLS files it names.
//! Directories are watched (not the files), so a Kubernetes ConfigMap or Secret update, which
//! swaps a `..data` symlink, is seen; a change is reported only when a watched file's content
//! actually changed. The watcher only reports: the app's reload loop loads and applies.
#![warn(missing_docs)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::signals::Hangup;

/// Editors and Kubernetes write in several steps; act once things settle.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// Why a reload is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// SIGHUP.
    Hangup,
    /// A watched file's content changed.
    Changed,
}

/// Watches `files` (the list is replaced after each reload, which may name new files; a new
/// file gets its fingerprint then) and SIGHUP,
/// and sends a [`Trigger`] for each. A trigger is dropped while another one waits: the reload
/// it asks for reads the files after this change anyway. Ends when `stop` fires or the
/// receiver is gone.
pub(crate) async fn run(
    mut files: watch::Receiver<Vec<PathBuf>>,
    triggers: mpsc::Sender<Trigger>,
    mut hup: Hangup,
    stop: CancellationToken,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watched = files.borrow_and_update().clone();
    let mut watcher = watch(&watched, tx.clone());
    let mut fingerprint = fingerprint_off_runtime(&watched).await;
    loop {
        let trigger = tokio::select! {
            _ = stop.cancelled() => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                Trigger::Hangup
            }
            Some(()) = rx.recv() => {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(DEBOUNCE) => {}
                }
                while rx.try_recv().is_ok() {}
                let now = fingerprint_off_runtime(&watched).await;
                if now == fingerprint {
                    continue;
                }
                fingerprint = now;
                Trigger::Changed
            }
            changed = files.changed() => {
                if changed.is_err() {
                    break;
                }
                // The fingerprint stays the one taken before the reload was asked for: a file
                // that changed while the reload ran still differs from it, so that change is
                // acted on next instead of being folded in unseen. Only new files need one.
                let now_watched = files.borrow_and_update().clone();
                if now_watched != watched {
                    watched = now_watched;
                    watcher = watch(&watched, tx.clone());
                    fingerprint = fingerprint_off_runtime(&watched).await;
                }
                continue;
            }
        };
        match triggers.try_send(trigger) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => break,
        }
    }
    drop(watcher);
}

fn watch(files: &[PathBuf], tx: mpsc::UnboundedSender<()>) -> Option<notify::RecommendedWatcher> {
    // The names that matter in the watched directories: the files themselves, and Kubernetes'
    // `..data`-style entries whose swap replaces them. Other files there (a log written next to
    // the config) must not wake us.
    let names: BTreeSet<std::ffi::OsString> =
        files.iter().filter_map(|f| f.file_name().map(|n| n.to_os_string())).collect();
    let mut watcher = match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Only changes count: reading the files (ours included) raises access events.
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return;
        }
        let relevant = event
            .paths
            .iter()
            .any(|p| p.file_name().is_some_and(|n| names.contains(n) || n.to_string_lossy().starts_with("..")));
        if relevant {
            let _ = tx.send(());
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config for changes; SIGHUP still reloads");
            return None;
        }
    };
    let dirs: BTreeSet<&Path> = files.iter().filter_map(|f| f.parent()).collect();
    for dir in dirs {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory");
        }
    }
    Some(watcher)
}

/// [`fingerprint_of`] on the blocking pool.
async fn fingerprint_off_runtime(files: &[PathBuf]) -> Vec<u8> {
    let files = files.to_vec();
    tokio::task::spawn_blocking(move || fingerprint_of(&files)).await.unwrap_or_default()
}

/// A hash of every watched file's content, read as the config loader reads it (regular files,
/// bounded): a file that cannot be read hashes as its error, so a FIFO or an oversized file
/// put in place still counts as a change, and the reload names the problem.
fn fingerprint_of(files: &[PathBuf]) -> Vec<u8> {
    let mut h = Sha256::new();
    for f in files {
        h.update(f.as_os_str().as_encoded_bytes());
        match crate::config::read_bounded(f, crate::config::MAX_FILE_BYTES) {
            Ok(text) => h.update(text.as_bytes()),
            Err(e) => h.update(format!("\0error: {e}").as_bytes()),
        }
    }
    h.finalize().to_vec()
}
