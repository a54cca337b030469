//! Reload triggers: SIGHUP, and changes to the config file or the secret/TLS files it names.
//! Directories are watched (not the files), so a Kubernetes ConfigMap or Secret update, which
//! swaps a `..data` symlink, is seen; a change is acted on only when a watched file's content
//! actually changed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::app::RunningGateway;
use crate::config::Environment;

/// Editors and Kubernetes write in several steps; act once things settle.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// Starts the reload task; it ends when `stop` fires.
pub fn spawn(
    gateway: Arc<RunningGateway>,
    path: PathBuf,
    env: Arc<dyn Environment>,
    watched: Vec<PathBuf>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let mut watched = watched;
        let mut watcher = watch(&watched, tx.clone());
        let mut fingerprint = fingerprint_off_runtime(&watched).await;
        let mut hup = hangup();
        loop {
            let by_signal = tokio::select! {
                _ = stop.cancelled() => break,
                _ = next_hup(&mut hup) => true,
                Some(()) = rx.recv() => false,
            };
            if by_signal {
                tracing::info!("SIGHUP: reloading the config");
            } else {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(DEBOUNCE) => {}
                }
                while rx.try_recv().is_ok() {}
            }
            // The fingerprint of what this reload will read (or older), taken before it: a file
            // that changes while the reload runs then still differs from it, so that change is
            // acted on next round instead of being folded into the fingerprint unseen.
            let before = fingerprint_off_runtime(&watched).await;
            if !by_signal && before == fingerprint {
                continue;
            }
            // Reading and validating files (and building TLS configs) blocks: keep it off the
            // threads that serve requests.
            let (g, p, e) = (gateway.clone(), path.clone(), env.clone());
            let _ = tokio::task::spawn_blocking(move || g.reload(&p, &*e)).await;
            // The new config may name other files (a new secret file): watch those too.
            let now_watched = gateway.runtime().load().config.watched_files(&path);
            fingerprint = before;
            if now_watched != watched {
                watched = now_watched;
                watcher = watch(&watched, tx.clone());
                fingerprint = fingerprint_off_runtime(&watched).await;
            }
        }
        drop(watcher);
    })
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

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

#[cfg(unix)]
fn hangup() -> Hangup {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}
#[cfg(not(unix))]
fn hangup() -> Hangup {}

#[cfg(unix)]
async fn next_hup(h: &mut Hangup) {
    match h {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}
#[cfg(not(unix))]
async fn next_hup(_: &mut Hangup) {
    std::future::pending().await
}
