//! Reload triggers: SIGHUP, and changes to the config file or the secret/TLS files it names.
//! Directories are watched (not the files), so a Kubernetes ConfigMap or Secret update, which
//! swaps a `..data` symlink, is seen; a change is reported only when a watched file's content
//! actually changed. The watcher only reports: the app's reload loop loads and applies.

use std::collections::{BTreeMap, BTreeSet};
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
    let mut fingerprint = fingerprint_off_runtime(&watched, Fingerprint::new()).await;
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
                let now = fingerprint_off_runtime(&watched, Fingerprint::new()).await;
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
                // The fingerprints stay the ones taken before the reload was asked for: a file
                // that changed while the reload ran still differs from its own, so that change
                // is acted on next instead of being folded in unseen. Only new files get one.
                let now_watched = files.borrow_and_update().clone();
                if now_watched != watched {
                    watched = now_watched;
                    watcher = watch(&watched, tx.clone());
                    fingerprint.retain(|f, _| watched.contains(f));
                    fingerprint = fingerprint_off_runtime(&watched, fingerprint).await;
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

/// A hash of each watched file's content, by file.
type Fingerprint = BTreeMap<PathBuf, Vec<u8>>;

/// `known`, plus [`fingerprint_of`] each file of `files` it lacks, on the blocking pool.
async fn fingerprint_off_runtime(files: &[PathBuf], mut known: Fingerprint) -> Fingerprint {
    let files = files.to_vec();
    tokio::task::spawn_blocking(move || {
        for f in files {
            known.entry(f).or_insert_with_key(|f| fingerprint_of(f));
        }
        known
    })
    .await
    .unwrap_or_default()
}

/// A hash of a watched file's content, read as the config loader reads it (regular files,
/// bounded): a file that cannot be read hashes as its error, so a FIFO or an oversized file
/// put in place still counts as a change, and the reload names the problem.
fn fingerprint_of(file: &Path) -> Vec<u8> {
    let mut h = Sha256::new();
    match crate::config::read_bounded(file, crate::config::MAX_FILE_BYTES) {
        Ok(text) => h.update(text.as_bytes()),
        Err(e) => h.update(format!("\0error: {e}").as_bytes()),
    }
    h.finalize().to_vec()
}

/// The watcher alone, on a temporary directory: what it reports for each kind of file change.
#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::task::JoinHandle;

    /// A fresh directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("pg-watch-{name}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn file(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    struct Running {
        files: watch::Sender<Vec<PathBuf>>,
        triggers: mpsc::Receiver<Trigger>,
        stop: CancellationToken,
        task: JoinHandle<()>,
    }

    /// Starts the watcher on `files` with a trigger channel of one, as the app does, and gives
    /// it time to set up its watches.
    async fn start(files: Vec<PathBuf>) -> Running {
        let (files, files_rx) = watch::channel(files);
        let (tx, triggers) = mpsc::channel(1);
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(files_rx, tx, Hangup::never(), stop.clone()));
        tokio::time::sleep(Duration::from_millis(200)).await;
        Running { files, triggers, stop, task }
    }

    async fn expect_changed(r: &mut Running) {
        let got = tokio::time::timeout(Duration::from_secs(5), r.triggers.recv()).await;
        assert_eq!(got, Ok(Some(Trigger::Changed)), "a trigger within 5s");
    }

    /// Nothing for well past the debounce.
    async fn expect_nothing(r: &mut Running) {
        let got = tokio::time::timeout(DEBOUNCE * 4, r.triggers.recv()).await;
        assert!(got.is_err(), "no trigger, got {got:?}");
    }

    #[tokio::test]
    async fn a_content_change_sends_changed() {
        let dir = TempDir::new("change");
        let config = dir.file("gateway.toml", "v1");
        let mut r = start(vec![config.clone()]).await;
        std::fs::write(&config, "v2").unwrap();
        expect_changed(&mut r).await;
        expect_nothing(&mut r).await;
    }

    #[tokio::test]
    async fn an_unchanged_rewrite_sends_nothing() {
        let dir = TempDir::new("same");
        let config = dir.file("gateway.toml", "v1");
        let mut r = start(vec![config.clone()]).await;
        std::fs::write(&config, "v1").unwrap();
        expect_nothing(&mut r).await;
        // Still watching.
        std::fs::write(&config, "v2").unwrap();
        expect_changed(&mut r).await;
    }

    #[tokio::test]
    async fn another_file_in_the_same_directory_sends_nothing() {
        let dir = TempDir::new("other");
        let config = dir.file("gateway.toml", "v1");
        let mut r = start(vec![config]).await;
        dir.file("gateway.log", "a line");
        std::fs::write(dir.0.join("gateway.log"), "another line").unwrap();
        expect_nothing(&mut r).await;
    }

    #[tokio::test]
    async fn a_change_while_a_trigger_waits_is_covered_by_it() {
        let dir = TempDir::new("waits");
        let config = dir.file("gateway.toml", "v1");
        let mut r = start(vec![config.clone()]).await;
        std::fs::write(&config, "v2").unwrap();
        // The trigger waits in the channel (the reload loop is busy)...
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while r.triggers.is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "no trigger for v2");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // ...when the next change lands: no second trigger queues, and the reload the waiting
        // one asks for reads the file after this change.
        std::fs::write(&config, "v3").unwrap();
        tokio::time::sleep(DEBOUNCE * 4).await;
        assert_eq!(r.triggers.len(), 1);
        expect_changed(&mut r).await;
        assert_eq!(std::fs::read_to_string(&config).unwrap(), "v3");
        r.files.send_replace(vec![config]);
        expect_nothing(&mut r).await;
    }

    /// A change that lands while a reload runs (after it read the files, before it hands the
    /// watcher the new file list) is reloaded next, even when the list changed.
    #[tokio::test]
    async fn a_change_during_a_reload_is_not_lost_when_the_file_list_changes() {
        let dir = TempDir::new("during");
        let config = dir.file("gateway.toml", "v0");
        // New files the reloaded configs name, in turn.
        let secrets = [dir.file("a.key", "a"), dir.file("b.key", "b")];
        let mut r = start(vec![config.clone()]).await;
        // The watcher may take the new list or the change first: a few rounds try both orders.
        for round in 1..=6 {
            std::fs::write(&config, format!("v{round}")).unwrap();
            // Let the change's event reach the watcher's queue before the list does.
            std::thread::sleep(Duration::from_millis(50));
            r.files.send_replace(vec![config.clone(), secrets[round % 2].clone()]);
            expect_changed(&mut r).await;
        }
    }

    #[tokio::test]
    async fn stop_ends_the_watcher() {
        let dir = TempDir::new("stop");
        let r = start(vec![dir.file("gateway.toml", "v1")]).await;
        r.stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), r.task).await.expect("stopped").unwrap();
    }
}
