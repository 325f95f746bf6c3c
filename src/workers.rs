//! Session event loops: `worker_threads` threads, each running a single-threaded tokio
//! runtime of its own, with every session pinned to one loop for its whole life.
//!
//! A session is one task relaying between two sockets, and a round trip is a handful of µs of
//! work around four syscalls. On tokio's work-stealing runtime, every readiness event may wake
//! another worker to steal the task, move it between threads and touch shared queues; measured
//! here, that cost 10–15 % more CPU per round trip than a single-threaded loop. Pinned loops
//! keep that efficiency and still use every core: the accept loop hands each new connection to
//! the loop with the fewest live sessions, as proxies built thread-per-core do.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

/// The session loops; dropping this stops them (cancelling what still runs on them).
pub struct Workers {
    loops: Vec<Loop>,
    /// Where the next search for the least busy loop starts, so that ties rotate.
    next: AtomicUsize,
}

struct Loop {
    handle: Handle,
    live: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Workers {
    /// Starts `n` loops (at least one).
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let mut loops = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("pgshift-loop-{i}"))
                .spawn(move || {
                    // Tasks spawned through the handle run while this blocks; a dropped
                    // sender ends it as well as a sent stop.
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                    drop(runtime);
                })?;
            loops.push(Loop {
                handle,
                live: Arc::new(AtomicUsize::new(0)),
                stop: Some(stop),
                thread: Some(thread),
            });
        }
        Ok(Workers {
            loops,
            next: AtomicUsize::new(0),
        })
    }

    /// How many loops there are.
    pub fn count(&self) -> usize {
        self.loops.len()
    }

    /// Runs `session` on the loop with the fewest live sessions, tracked by `tracker`.
    pub fn spawn<F>(&self, tracker: &TaskTracker, session: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.loops.len();
        let chosen = (0..n)
            .map(|k| &self.loops[(start + k) % n])
            .min_by_key(|l| l.live.load(Ordering::Relaxed))
            .expect("at least one loop");
        let live = LiveGuard::new(chosen.live.clone());
        chosen.handle.spawn(tracker.track_future(async move {
            let _live = live;
            session.await;
        }));
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for l in &mut self.loops {
            if let Some(stop) = l.stop.take() {
                let _ = stop.send(());
            }
        }
        for l in &mut self.loops {
            if let Some(thread) = l.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// Counts a session on its loop from the hand-over until the session's task ends.
struct LiveGuard(Arc<AtomicUsize>);

impl LiveGuard {
    fn new(live: Arc<AtomicUsize>) -> LiveGuard {
        live.fetch_add(1, Ordering::Relaxed);
        LiveGuard(live)
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_go_to_the_least_busy_loop_and_run_there() {
        let workers = Workers::start(3).unwrap();
        assert_eq!(workers.count(), 3);
        let tracker = TaskTracker::new();
        let (release, released) = tokio::sync::watch::channel(false);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..6 {
            let tx = tx.clone();
            let mut released = released.clone();
            workers.spawn(&tracker, async move {
                let name = std::thread::current().name().unwrap_or("").to_string();
                tx.send(name).unwrap();
                let _ = released.wait_for(|r| *r).await;
            });
        }
        let mut names = Vec::new();
        for _ in 0..6 {
            names.push(rx.blocking_recv().unwrap());
        }
        names.sort();
        assert_eq!(
            names,
            [0, 0, 1, 1, 2, 2]
                .iter()
                .map(|i| format!("pgshift-loop-{i}"))
                .collect::<Vec<_>>()
        );
        let live: Vec<usize> = workers
            .loops
            .iter()
            .map(|l| l.live.load(Ordering::Relaxed))
            .collect();
        assert_eq!(live, [2, 2, 2]);
        release.send(true).unwrap();
        tracker.close();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(tracker.wait());
        assert!(
            workers
                .loops
                .iter()
                .all(|l| l.live.load(Ordering::Relaxed) == 0)
        );
    }

    #[test]
    fn dropping_the_workers_cancels_what_still_runs() {
        let workers = Workers::start(2).unwrap();
        let tracker = TaskTracker::new();
        workers.spawn(&tracker, std::future::pending());
        drop(workers);
        assert!(tracker.is_empty());
    }
}
