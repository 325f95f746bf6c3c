//! The client sessions of this instance, as the control plane sees them: who is connected, which
//! snapshot epoch each session's current transaction runs under, and since when.
//!
//! From that follows the instance's **acknowledged epoch** (DESIGN §3.4): the current epoch,
//! unless some session is still inside a transaction begun under an older one; then the oldest
//! such epoch. Sessions update their entry with a few atomic stores per transaction; the
//! control plane reads all entries a few times a second.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde::Serialize;

/// Stored as a session's epoch between "a transaction starts" and "its snapshot is known".
const PINNING: u64 = u64::MAX;

/// One client session's entry.
#[derive(Debug)]
pub struct SessionEntry {
    pub id: u64,
    pub addr: SocketAddr,
    pub user: String,
    pub database: String,
    pub application_name: String,
    pub connected: Instant,
    /// Epoch of the snapshot the current (or last) transaction runs under; [`PINNING`] while
    /// it is being taken.
    epoch: AtomicU64,
    /// Microseconds after `connected` at which the current transaction began, plus one;
    /// 0 while idle.
    busy_since: AtomicU64,
    /// The last ReadyForQuery status byte (`I`, `T`, `E`).
    status: AtomicU8,
}

impl SessionEntry {
    /// A transaction starts now: call before taking the snapshot, then [`Self::pinned`].
    pub fn begin(&self) {
        if self.busy_since.load(Ordering::Relaxed) == 0 {
            self.epoch.store(PINNING, Ordering::SeqCst);
            let micros = self.connected.elapsed().as_micros() as u64 + 1;
            self.busy_since.store(micros, Ordering::SeqCst);
        }
    }

    /// The transaction runs under `epoch`.
    pub fn pinned(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::SeqCst);
    }

    /// The session is idle again; `status` is the ReadyForQuery byte.
    pub fn idle(&self, status: u8) {
        self.status.store(status, Ordering::Relaxed);
        self.busy_since.store(0, Ordering::SeqCst);
    }

    /// The ReadyForQuery status seen last, while still busy.
    pub fn set_status(&self, status: u8) {
        self.status.store(status, Ordering::Relaxed);
    }

    /// `(epoch, transaction age)` while a transaction is open.
    fn busy(&self) -> Option<(u64, Duration)> {
        let since = self.busy_since.load(Ordering::SeqCst);
        if since == 0 {
            return None;
        }
        let epoch = self.epoch.load(Ordering::SeqCst);
        let age = self
            .connected
            .elapsed()
            .saturating_sub(Duration::from_micros(since - 1));
        Some((epoch, age))
    }

    pub fn view(&self) -> SessionView {
        let busy = self.busy();
        let epoch = self.epoch.load(Ordering::SeqCst);
        let state = match (busy, self.status.load(Ordering::Relaxed)) {
            (None, _) => "idle",
            (Some(_), b'T') => "idle in transaction",
            (Some(_), b'E') => "idle in transaction (aborted)",
            (Some(_), _) => "active",
        };
        SessionView {
            id: self.id,
            addr: self.addr.to_string(),
            user: self.user.clone(),
            database: self.database.clone(),
            application_name: self.application_name.clone(),
            state,
            epoch: (epoch != PINNING).then_some(epoch),
            age_s: self.connected.elapsed().as_secs_f64(),
            transaction_age_s: busy.map(|(_, age)| age.as_secs_f64()),
        }
    }
}

/// A session as shown by `ctl connections` and in acknowledgment reports.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct SessionView {
    pub id: u64,
    pub addr: String,
    pub user: String,
    pub database: String,
    pub application_name: String,
    pub state: &'static str,
    /// Epoch of the snapshot its current or last transaction used (none before the first).
    pub epoch: Option<u64>,
    pub age_s: f64,
    /// How long the open transaction has been running, when one is.
    pub transaction_age_s: Option<f64>,
}

/// Every session of this instance.
#[derive(Debug, Default)]
pub struct Sessions {
    entries: DashMap<u64, Arc<SessionEntry>>,
    next_id: AtomicU64,
}

/// Removes the session's entry when dropped.
pub struct Registration {
    sessions: Arc<Sessions>,
    pub entry: Arc<SessionEntry>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.sessions.entries.remove(&self.entry.id);
    }
}

impl Sessions {
    pub fn register(
        self: &Arc<Self>,
        addr: SocketAddr,
        user: &str,
        database: &str,
        application_name: &str,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Arc::new(SessionEntry {
            id,
            addr,
            user: user.to_owned(),
            database: database.to_owned(),
            application_name: application_name.to_owned(),
            connected: Instant::now(),
            epoch: AtomicU64::new(0),
            busy_since: AtomicU64::new(0),
            status: AtomicU8::new(b'I'),
        });
        self.entries.insert(id, entry.clone());
        Registration {
            sessions: self.clone(),
            entry,
        }
    }

    /// Every session, by id.
    pub fn list(&self) -> Vec<SessionView> {
        let mut all: Vec<SessionView> = self.entries.iter().map(|e| e.view()).collect();
        all.sort_by_key(|s| s.id);
        all
    }

    /// The acknowledged epoch given the epoch in force, and the sessions holding it back
    /// (inside a transaction begun under an older epoch).
    ///
    /// A session caught between starting a transaction and knowing its snapshot counts as
    /// one epoch behind: it may have taken the previous snapshot.
    pub fn acknowledged(&self, current: u64) -> (u64, Vec<SessionView>) {
        let mut acked = current;
        let mut holdouts = Vec::new();
        for entry in self.entries.iter() {
            let Some((epoch, _)) = entry.busy() else {
                continue;
            };
            let epoch = if epoch == PINNING {
                current.saturating_sub(1)
            } else {
                epoch
            };
            if epoch < current {
                acked = acked.min(epoch);
                holdouts.push(entry.view());
            }
        }
        holdouts.sort_by_key(|s| s.id);
        (acked, holdouts)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:5000".parse().unwrap()
    }

    #[test]
    fn idle_sessions_acknowledge_everything() {
        let sessions = Arc::new(Sessions::default());
        let a = sessions.register(addr(), "u", "db", "app");
        a.entry.begin();
        a.entry.pinned(3);
        a.entry.idle(b'I');
        assert_eq!(sessions.acknowledged(7), (7, vec![]));
    }

    #[test]
    fn a_transaction_under_an_older_epoch_holds_the_acknowledgment_back() {
        let sessions = Arc::new(Sessions::default());
        let old = sessions.register(addr(), "u", "db", "old");
        let new = sessions.register(addr(), "u", "db", "new");
        old.entry.begin();
        old.entry.pinned(4);
        old.entry.set_status(b'T');
        new.entry.begin();
        new.entry.pinned(5);
        let (acked, holdouts) = sessions.acknowledged(5);
        assert_eq!(acked, 4);
        assert_eq!(holdouts.len(), 1);
        assert_eq!(holdouts[0].application_name, "old");
        assert_eq!(holdouts[0].state, "idle in transaction");
        assert!(holdouts[0].transaction_age_s.is_some());
        old.entry.idle(b'I');
        assert_eq!(sessions.acknowledged(5).0, 5);
    }

    #[test]
    fn a_session_taking_its_snapshot_counts_as_one_behind() {
        let sessions = Arc::new(Sessions::default());
        let s = sessions.register(addr(), "u", "db", "app");
        s.entry.begin();
        assert_eq!(sessions.acknowledged(9).0, 8);
        s.entry.pinned(9);
        assert_eq!(sessions.acknowledged(9).0, 9);
    }

    #[test]
    fn dropping_the_registration_forgets_the_session() {
        let sessions = Arc::new(Sessions::default());
        let s = sessions.register(addr(), "u", "db", "app");
        assert_eq!(sessions.len(), 1);
        drop(s);
        assert!(sessions.is_empty());
    }
}
