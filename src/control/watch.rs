//! Reloads the config file when it changes on disk.
//!
//! Editors save by writing a new file and renaming it over the old one, and Kubernetes swaps a
//! ConfigMap by re-pointing a `..data` symlink; in both cases a watch on the file itself would
//! follow the old inode and go quiet. So the directory holding the path is watched (and the
//! directory of the file it resolves to, when that is elsewhere), every event there triggers a
//! debounced check, and the file is reloaded only when its text differs from the last load.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::warn;

use super::ControlPlane;

/// Events closer together than this are one change (an editor's write + rename).
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Watches `path` until shutdown, reloading through `plane` on change. The watch is in place
/// when this returns; an edit made between the startup read and now is caught by
/// [`ControlPlane::reload_if_changed`] right after.
pub async fn start(plane: Arc<ControlPlane>, path: PathBuf) -> tokio::task::JoinHandle<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            warn!(error = %e, "cannot watch the config file; reload with SIGHUP or `pgshift ctl reload`");
            return tokio::spawn(async {});
        }
    };
    let mut watched = Vec::new();
    rewatch(&mut watcher, &path, &mut watched);
    let _ = plane.reload_if_changed().await;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = plane.shutdown.cancelled() => return,
                event = rx.recv() => if event.is_none() { return },
            }
            // Let the burst of events of one save settle.
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            rewatch(&mut watcher, &path, &mut watched);
            let _ = plane.reload_if_changed().await;
        }
    })
}

/// Watches the directories `path` lives in (as named, and as resolved through symlinks).
fn rewatch(watcher: &mut RecommendedWatcher, path: &Path, watched: &mut Vec<PathBuf>) {
    let mut wanted = Vec::new();
    if let Some(dir) = parent(path) {
        wanted.push(dir);
    }
    if let Some(dir) = std::fs::canonicalize(path).ok().as_deref().and_then(parent)
        && !wanted.contains(&dir)
    {
        wanted.push(dir);
    }
    for dir in watched.iter() {
        if !wanted.contains(dir) {
            let _ = watcher.unwatch(dir);
        }
    }
    watched.retain(|d| wanted.contains(d));
    for dir in wanted {
        if watched.contains(&dir) {
            continue;
        }
        match watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => watched.push(dir),
            Err(e) => warn!(dir = %dir.display(), error = %e, "cannot watch the config directory"),
        }
    }
}

fn parent(path: &Path) -> Option<PathBuf> {
    let dir = path.parent()?;
    Some(if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir.to_owned()
    })
}
