//! The control plane (DESIGN §3.4, §3.5): where each migration's phase comes from, how it
//! changes, and how several pgshift instances agree on it.
//!
//! The phases live in the upstream database ([`store`], schema `pgshift`), not in memory or
//! in the config file. The file declares the migrations and a *requested* phase: a load applies
//! a migration's phase only when the file's value differs from the one the last load applied
//! (recorded per migration in the database), so a phase set with `pgshift ctl` is not undone by
//! an unrelated edit, and a restart keeps every phase.
//!
//! Every change goes through [`ControlPlane::transition`]: the rules of [`machine`], the
//! acknowledgment gate (every live instance has no transaction left from before the phase
//! being left), then one transaction under an advisory lock that bumps the cluster epoch and
//! notifies every instance. The snapshot for the new epoch is built (running `expand_sql`
//! when entering expand) before that transaction commits, so a phase that cannot be served is
//! never recorded. Other instances pick the change up through `LISTEN pgshift`, with a poll as
//! fallback ([`ControlPlane::run`]), and report their acknowledged epoch with each heartbeat.

pub mod jobs;
pub mod machine;
mod reshape;
pub mod status;
pub mod store;
pub mod watch;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::machine::{Refusal, Request};
use self::store::{Event, Heartbeat, MigrationRow, State, Txn};
use crate::catalog::{self, CatalogError, ControlConnection};
use crate::config::{Config, MigrationConfig};
use crate::metrics::{self, Metrics, Readiness};
use crate::migration::Phase;
use crate::sessions::Sessions;
use crate::snapshot::{self, Snapshot, SnapshotStore};

/// `lock_timeout` and attempts for `complete_sql`.
const COMPLETE_LOCK_TIMEOUT: Duration = Duration::from_secs(2);
const COMPLETE_ATTEMPTS: u32 = 5;
/// How often the heartbeat task recomputes the acknowledged epoch.
const ACK_TICK: Duration = Duration::from_millis(100);
/// How often a gate re-reads the instances while waiting for acknowledgments.
const ACK_POLL: Duration = Duration::from_millis(100);
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(5);

/// Who asked for a change, for the event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `pgshift ctl` over the admin socket.
    Ctl,
    /// A config file load.
    Config,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Ctl => "ctl",
            Source::Config => "config",
        }
    }
}

/// A transition that happened (or found nothing to do).
#[derive(Debug, Clone)]
pub struct Transitioned {
    pub migration: String,
    pub from: Phase,
    pub to: Phase,
    /// The epoch now in force (unchanged for a no-op).
    pub epoch: u64,
    pub changed: bool,
    pub forced: bool,
}

/// The control plane of one pgshift instance.
pub struct ControlPlane {
    pub instance: String,
    host: String,
    path: Option<PathBuf>,
    pub snapshots: Arc<SnapshotStore>,
    pub sessions: Arc<Sessions>,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
    /// The database holding the state; `None` without migrations (nothing to coordinate).
    control_db: Option<String>,
    /// The config pgshift started with: connection settings and `[control]` timings are
    /// taken from it (they change at a restart), so the background tasks never wait for a
    /// transition holding `inner`.
    base: Config,
    /// The config in force and the state connection; one state change at a time.
    inner: tokio::sync::Mutex<Inner>,
    /// The last reload's problem (invalid file, refused phase), for `status`.
    config_error: Mutex<Option<String>>,
    /// Why the newest epoch could not be served here, if it could not.
    sync_error: Mutex<Option<String>>,
    /// The file text of the last load, so file-watch events without a change are ignored.
    loaded_text: Mutex<Option<String>>,
    /// One reload at a time (watch, SIGHUP and `ctl reload` may coincide).
    reloading: tokio::sync::Mutex<()>,
    /// The job runners running in this instance.
    jobs: jobs::Local,
}

struct Inner {
    config: Config,
    conn: Option<ControlConnection>,
}

impl Inner {
    /// The state connection, reopened when it was lost.
    async fn client(
        &mut self,
        database: &str,
    ) -> Result<&mut tokio_postgres::Client, CatalogError> {
        if self.conn.as_ref().is_none_or(|c| c.client.is_closed()) {
            self.conn = Some(catalog::connect(&self.config, database).await?);
        }
        Ok(&mut self.conn.as_mut().expect("just connected").client)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ControlPlane {
    /// Connects to the state database (creating schema `pgshift` on first use), applies the
    /// config file's migrations, and publishes the snapshot of the current epoch. `file` is
    /// the path reloads re-read and the text `config` was parsed from.
    pub async fn start(
        config: Config,
        file: Option<(PathBuf, String)>,
        shutdown: CancellationToken,
    ) -> Result<Arc<ControlPlane>, String> {
        let host = hostname();
        let instance = format!(
            "{host}-{}-{:04x}",
            std::process::id(),
            rand::random::<u16>()
        );
        let control_db = config.control_database().map(str::to_owned);
        let (path, loaded_text) = match file {
            Some((path, text)) => (Some(path), Some(text)),
            None => (None, None),
        };
        let plane = Arc::new(ControlPlane {
            instance,
            host,
            path,
            snapshots: Arc::new(SnapshotStore::new(Snapshot::empty(0))),
            sessions: Arc::new(Sessions::default()),
            metrics: Metrics::new(),
            shutdown,
            control_db,
            base: config.clone(),
            inner: tokio::sync::Mutex::new(Inner {
                config: config.clone(),
                conn: None,
            }),
            config_error: Mutex::new(None),
            sync_error: Mutex::new(None),
            loaded_text: Mutex::new(loaded_text),
            reloading: tokio::sync::Mutex::new(()),
            jobs: jobs::Local::default(),
        });
        match plane.control_db.clone() {
            None => plane.snapshots.publish(Snapshot::empty(1)),
            Some(db) => {
                {
                    let mut inner = plane.inner.lock().await;
                    let client = inner.client(&db).await.map_err(|e| e.to_string())?;
                    store::ensure_schema(client)
                        .await
                        .map_err(|e| format!("database {db:?}: {e}"))?;
                }
                let refusals = plane.apply(config).await?;
                plane.sync().await?;
                plane.set_config_error(refusals);
            }
        }
        Ok(plane)
    }

    /// The database holding pgshift's state, if any.
    pub fn control_database(&self) -> Option<&str> {
        self.control_db.as_deref()
    }

    /// Re-reads the config file (file watch, SIGHUP, `ctl reload`). An invalid file changes
    /// nothing; its error is kept for `status` and counted. Returns a summary.
    pub async fn reload(&self) -> Result<String, String> {
        let Some(path) = self.path.clone() else {
            return Err("pgshift was started without a config file".into());
        };
        let _one = self.reloading.lock().await;
        self.reload_locked(&path).await
    }

    async fn reload_locked(&self, path: &Path) -> Result<String, String> {
        let result = self.reload_from(path).await;
        metrics::count_reload(result.is_ok());
        match &result {
            Ok(summary) => info!(%summary, "configuration reloaded"),
            Err(e) => warn!(error = %e, "configuration reload failed"),
        }
        result
    }

    /// Like [`Self::reload`], but only when the file's text changed since the last load.
    pub async fn reload_if_changed(&self) -> Option<Result<String, String>> {
        let path = self.path.as_deref()?;
        let _one = self.reloading.lock().await;
        let text = std::fs::read_to_string(path).ok();
        if text.is_some() && *lock(&self.loaded_text) == text {
            return None;
        }
        Some(self.reload_locked(path).await)
    }

    async fn reload_from(&self, path: &Path) -> Result<String, String> {
        let (config, text) = match Config::load_with_text(path) {
            Ok(loaded) => loaded,
            Err(e) => {
                *lock(&self.loaded_text) = std::fs::read_to_string(path).ok();
                let message = e.to_string();
                *lock(&self.config_error) = Some(message.clone());
                return Err(message);
            }
        };
        *lock(&self.loaded_text) = Some(text);
        if config.control_database() != self.control_db.as_deref()
            && !(self.control_db.is_some() && config.migrations.is_empty())
        {
            let message = format!(
                "the state database would change from {:?} to {:?}; that needs a restart",
                self.control_db,
                config.control_database()
            );
            *lock(&self.config_error) = Some(message.clone());
            return Err(message);
        }
        if self.control_db.is_none() {
            self.inner.lock().await.config = config;
            *lock(&self.config_error) = None;
            return Ok("no migrations".into());
        }
        let refusals = match self.apply(config).await {
            Ok(refusals) => refusals,
            Err(e) => {
                *lock(&self.config_error) = Some(e.clone());
                return Err(e);
            }
        };
        // The file is in force by now: a failed re-read is reported, not a failed load.
        let reshaped = self.reshape().await;
        self.sync().await?;
        let mut summary = format!("epoch {}", self.snapshots.load().epoch);
        match reshaped {
            Ok(tables) if !tables.is_empty() => summary.push_str(&format!(
                "; columns re-read from the catalog: {}",
                tables.join(", ")
            )),
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "cannot check the migrated tables for changes");
                summary.push_str(&format!("; {e}"));
            }
        }
        if refusals.is_empty() {
            self.set_config_error(refusals);
            Ok(summary)
        } else {
            let message = refusals.join("; ");
            self.set_config_error(refusals);
            Err(message)
        }
    }

    fn set_config_error(&self, refusals: Vec<String>) {
        *lock(&self.config_error) = (!refusals.is_empty()).then(|| refusals.join("; "));
    }

    /// Records the file's migrations in the state (new ones in planned, changed definitions
    /// where allowed) with the phase the file says, makes the file the config in force, then
    /// requests each migration's phase where the file's value changed since the previous load
    /// (DESIGN §3.5). Returns the requests that were refused: each is asked for once, by the
    /// load that saw the file's value change; asking again takes `ctl phase` or a new edit.
    async fn apply(&self, config: Config) -> Result<Vec<String>, String> {
        let db = self
            .control_db
            .clone()
            .expect("apply needs a state database");
        let mut requested = Vec::new();
        {
            let mut inner = self.inner.lock().await;
            let client = inner.client(&db).await.map_err(|e| e.to_string())?;
            let mut txn = Txn::begin(client).await.map_err(|e| e.to_string())?;
            let state = txn.state().await.map_err(|e| e.to_string())?;
            check_definitions(&config, &state)?;
            let actor = self.actor(Source::Config);
            for m in &config.migrations {
                let hash = definition_hash(m);
                let row = state.migrations.get(&m.name);
                if row.is_none_or(|r| r.file_phase != Some(m.phase)) {
                    requested.push((m.name.clone(), m.phase));
                }
                if row.is_some_and(|r| r.definition_hash == hash) {
                    continue;
                }
                txn.define(&m.name, &hash)
                    .await
                    .map_err(|e| e.to_string())?;
                txn.event(Event {
                    migration: Some(&m.name),
                    actor: &actor,
                    action: if row.is_some() { "redefine" } else { "define" },
                    from: row.map(|r| r.phase),
                    to: Some(row.map_or(Phase::Planned, |r| r.phase)),
                    detail: None,
                })
                .await
                .map_err(|e| e.to_string())?;
            }
            for (name, phase) in &requested {
                txn.set_file_phase(name, *phase)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            // A migration the file no longer declares (planned or complete: check_definitions
            // refused the others) must leave the snapshot: a new epoch makes every session's
            // next transaction stop translating its names.
            let current = self.snapshots.load();
            let removed: Vec<String> = current
                .phases()
                .map(|(name, _)| name.to_owned())
                .filter(|name| !config.migrations.iter().any(|m| &m.name == name))
                .collect();
            for name in &removed {
                txn.bump_epoch().await.map_err(|e| e.to_string())?;
                txn.event(Event {
                    migration: Some(name),
                    actor: &actor,
                    action: "forget",
                    from: current.phase(name),
                    to: current.phase(name),
                    detail: Some("removed from the config file"),
                })
                .await
                .map_err(|e| e.to_string())?;
            }
            txn.commit().await.map_err(|e| e.to_string())?;
            inner.config = config.clone();
        }
        let mut refusals = Vec::new();
        for (name, phase) in requested {
            let request = Request::Phase {
                to: phase,
                force: false,
            };
            if let Err(e) = self.transition(&name, request, Source::Config).await {
                refusals.push(format!(
                    "migration {name:?}: phase {phase} from the config file not applied: {e}"
                ));
            }
        }
        Ok(refusals)
    }

    /// The shared state now.
    pub async fn state(&self) -> Result<State, CatalogError> {
        let db = self
            .control_db
            .as_deref()
            .ok_or_else(|| CatalogError::Upstream("no state database".into()))?;
        let mut inner = self.inner.lock().await;
        store::load(inner.client(db).await?).await
    }

    fn actor(&self, source: Source) -> String {
        format!("{}@{}", source.name(), self.instance)
    }

    /// Moves migration `name` as `request` asks, through the rules and gates: refused with a
    /// reason, or done (the new snapshot published here, the others notified).
    pub async fn transition(
        &self,
        name: &str,
        request: Request,
        source: Source,
    ) -> Result<Transitioned, String> {
        let db = self
            .control_db
            .clone()
            .ok_or_else(|| "no migrations are configured".to_owned())?;
        let config = self.inner.lock().await.config.clone();
        if !config.migrations.iter().any(|m| m.name == name) {
            let known: Vec<&str> = config.migrations.iter().map(|m| m.name.as_str()).collect();
            return Err(format!(
                "unknown migration {name:?}; configured: {}",
                known.join(", ")
            ));
        }
        let state = self.state().await.map_err(|e| e.to_string())?;
        let row = state
            .migrations
            .get(name)
            .ok_or_else(|| format!("migration {name:?} is not recorded yet; reload the config"))?;
        let step = machine::decide(row.phase, request, row.facts()).map_err(|Refusal(r)| r)?;
        if step.needs_acks && !step.is_noop() {
            self.wait_for_acks(row.epoch, &format!("{} → {}", step.from, step.to))
                .await?;
        }
        let mut inner = self.inner.lock().await;
        let config = inner.config.clone();
        let client = inner.client(&db).await.map_err(|e| e.to_string())?;
        let mut txn = Txn::begin(client).await.map_err(|e| e.to_string())?;
        let state = txn.state().await.map_err(|e| e.to_string())?;
        let row = state
            .migrations
            .get(name)
            .ok_or_else(|| format!("migration {name:?} disappeared from the state"))?;
        if row.phase != step.from && row.phase == step.to {
            // Someone else made the same move meanwhile.
            return Ok(Transitioned {
                migration: name.to_owned(),
                from: step.to,
                to: step.to,
                epoch: self.snapshots.load().epoch,
                changed: false,
                forced: false,
            });
        }
        if row.phase != step.from {
            return Err(format!(
                "migration {name:?} moved to {} meanwhile; nothing changed",
                row.phase
            ));
        }
        if step.is_noop() {
            return Ok(Transitioned {
                migration: name.to_owned(),
                from: step.from,
                to: step.to,
                epoch: self.snapshots.load().epoch,
                changed: false,
                forced: false,
            });
        }
        jobs::check_transition(row, step.to)?;
        if step.runs_complete_sql {
            run_complete_sql(&config, name).await?;
        }
        let epoch = txn
            .set_phase(name, step.to)
            .await
            .map_err(|e| e.to_string())?;
        txn.event(Event {
            migration: Some(name),
            actor: &self.actor(source),
            action: match request {
                Request::Rollback => "rollback",
                Request::Phase { .. } if step.to < step.from => "rollback",
                Request::Phase { .. } => "phase",
            },
            from: Some(step.from),
            to: Some(step.to),
            detail: step.forced.then_some("forced past the verify gate"),
        })
        .await
        .map_err(|e| e.to_string())?;
        let mut next = state.clone();
        if let Some(r) = next.migrations.get_mut(name) {
            r.phase = step.to;
            jobs::forget_on_entering(r);
        }
        next.epoch = epoch;
        let current = self.snapshots.load();
        let snapshot = snapshot::build(&effective(&config, &next), epoch, Some(&current))
            .await
            .map_err(|e| format!("cannot enter {}: {e}; nothing changed", step.to))?;
        txn.commit().await.map_err(|e| e.to_string())?;
        self.publish(snapshot);
        info!(migration = name, from = %step.from, to = %step.to, epoch, source = source.name(), "phase changed");
        Ok(Transitioned {
            migration: name.to_owned(),
            from: step.from,
            to: step.to,
            epoch,
            changed: true,
            forced: step.forced,
        })
    }

    fn publish(&self, snapshot: Snapshot) {
        if snapshot.epoch > self.snapshots.load().epoch {
            self.snapshots.publish(snapshot);
        }
        *lock(&self.sync_error) = None;
    }

    /// Waits until every live instance acknowledged `epoch`, up to `[control].ack_timeout`;
    /// on timeout, says who holds the transition back.
    async fn wait_for_acks(&self, epoch: u64, what: &str) -> Result<(), String> {
        let (timeout, lease) = (
            self.base.control.ack_timeout,
            self.base.control.instance_lease,
        );
        let deadline = Instant::now() + timeout;
        loop {
            let instances = self.instances(lease).await.map_err(|e| e.to_string())?;
            let lagging: Vec<&store::InstanceRow> = instances
                .iter()
                .filter(|i| i.live && i.acked_epoch < epoch)
                .collect();
            if lagging.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let who: Vec<String> = lagging
                    .iter()
                    .map(|i| status::describe_lagging(i, epoch))
                    .collect();
                return Err(format!(
                    "{what} waits for every live instance to acknowledge epoch {epoch} \
                     (no transaction begun before it still open); gave up after {}: {}",
                    format_args!("{timeout:?}"),
                    who.join("; ")
                ));
            }
            tokio::time::sleep(ACK_POLL).await;
        }
    }

    async fn instances(&self, lease: Duration) -> Result<Vec<store::InstanceRow>, CatalogError> {
        let db = self
            .control_db
            .as_deref()
            .ok_or_else(|| CatalogError::Upstream("no state database".into()))?;
        let mut inner = self.inner.lock().await;
        store::instances(inner.client(db).await?, lease).await
    }

    /// Publishes the snapshot of the newest epoch when the state moved past the one in force.
    /// An instance that cannot serve the new state (its config lacks or differs from an active
    /// migration, or the build failed) keeps the old snapshot and reports why: it then does
    /// not acknowledge, and gates wait for it.
    pub async fn sync(&self) -> Result<(), String> {
        let Some(db) = self.control_db.clone() else {
            return Ok(());
        };
        let mut inner = self.inner.lock().await;
        let result = async {
            let client = inner.client(&db).await.map_err(|e| e.to_string())?;
            let current = self.snapshots.load();
            let epoch = store::epoch(client).await.map_err(|e| e.to_string())?;
            if epoch <= current.epoch {
                if epoch < current.epoch {
                    return Err(format!(
                        "the state database's epoch ({epoch}) is behind this instance's \
                         ({}); was schema pgshift reset? restart pgshift",
                        current.epoch
                    ));
                }
                return Ok(None);
            }
            let state = store::load(client).await.map_err(|e| e.to_string())?;
            check_definitions(&inner.config, &state)?;
            let snapshot = snapshot::build(
                &effective(&inner.config, &state),
                state.epoch,
                Some(&current),
            )
            .await
            .map_err(|e| format!("cannot serve epoch {}: {e}", state.epoch))?;
            Ok(Some(snapshot))
        }
        .await;
        drop(inner);
        match result {
            Ok(Some(snapshot)) => {
                info!(epoch = snapshot.epoch, "new epoch from the state database");
                self.publish(snapshot);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                warn!(error = %e, "cannot follow the state database");
                *lock(&self.sync_error) = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Runs the background tasks until shutdown: following the state (LISTEN + poll), the
    /// heartbeat with the acknowledged epoch, and readiness.
    /// Runs until `until` is cancelled; the caller cancels it once the sessions have drained.
    pub fn spawn_tasks(
        self: &Arc<Self>,
        readiness: Arc<Readiness>,
        until: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let plane = self.clone();
        tokio::spawn(async move {
            if plane.control_db.is_none() {
                return;
            }
            tokio::join!(plane.follow(&until), plane.heartbeats(readiness, &until));
            plane.jobs.stop_all();
        })
    }

    /// LISTEN on its own connection (reopened when lost), plus a poll.
    async fn follow(self: &Arc<Self>, until: &CancellationToken) {
        let db = self
            .control_db
            .clone()
            .expect("follow needs a state database");
        let mut backoff = Duration::from_millis(100);
        loop {
            let poll = self.base.control.poll_interval;
            let (tx, mut rx) = mpsc::unbounded_channel();
            let listener = listen(&self.base, &db, tx).await;
            match &listener {
                Ok(_) => backoff = Duration::from_millis(100),
                Err(e) => warn!(error = %e, "cannot LISTEN for state changes; polling"),
            }
            let _ = self.sync().await;
            let mut ticker = tokio::time::interval(poll);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = until.cancelled() => return,
                    _ = ticker.tick() => {
                        let _ = self.sync().await;
                        self.adopt_jobs().await;
                    }
                    notified = rx.recv(), if listener.is_ok() => match notified {
                        Some(()) => { let _ = self.sync().await; }
                        None => break,
                    },
                    _ = tokio::time::sleep(backoff), if listener.is_err() => break,
                }
            }
            backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF);
        }
    }

    /// Records this instance's heartbeat every `heartbeat_interval`, and at once when its
    /// acknowledged epoch changes. On shutdown the instance removes itself.
    async fn heartbeats(&self, readiness: Arc<Readiness>, until: &CancellationToken) {
        let db = self
            .control_db
            .clone()
            .expect("heartbeats need a state database");
        let mut conn: Option<ControlConnection> = None;
        let mut last: Option<(Instant, u64, u64, Vec<u64>)> = None;
        let mut ticker = tokio::time::interval(ACK_TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = until.cancelled() => break,
                _ = ticker.tick() => {}
            }
            let interval = self.base.control.heartbeat_interval;
            let epoch = self.snapshots.load().epoch;
            let (acked, holdouts) = self.sessions.acknowledged(epoch);
            let ids: Vec<u64> = holdouts.iter().map(|s| s.id).collect();
            let due = last.as_ref().is_none_or(|(at, e, a, h)| {
                at.elapsed() >= interval || *e != epoch || *a != acked || *h != ids
            });
            if !due {
                continue;
            }
            if conn.as_ref().is_none_or(|c| c.client.is_closed()) {
                conn = catalog::connect(&self.base, &db).await.ok();
            }
            let Some(c) = &conn else {
                readiness.set(false);
                continue;
            };
            let sync_error = lock(&self.sync_error).clone();
            let beat = Heartbeat {
                id: &self.instance,
                host: &self.host,
                pid: std::process::id() as i32,
                epoch,
                acked_epoch: acked,
                holdouts: serde_json::to_value(&holdouts).unwrap_or(Value::Null),
                sync_error: sync_error.as_deref(),
            };
            match store::heartbeat(c, &beat).await {
                Ok(()) => {
                    readiness.set(!self.shutdown.is_cancelled());
                    last = Some((Instant::now(), epoch, acked, ids));
                }
                Err(e) => {
                    warn!(error = %e, "heartbeat failed");
                    readiness.set(false);
                    conn = None;
                }
            }
        }
        if let Some(c) = &conn {
            let _ = store::remove_instance(c, &self.instance).await;
        }
    }
}

/// The file's definitions must match the state for every migration that is dual-writing or
/// reading the new side: changing `up`, a column, or the table under a running migration
/// would leave the two sides inconsistent; and every such migration must be in the file.
fn check_definitions(config: &Config, state: &State) -> Result<(), String> {
    let active = |p: Phase| matches!(p, Phase::Expand | Phase::Switch | Phase::Contract);
    for row in state.migrations.values().filter(|r| active(r.phase)) {
        match config.migrations.iter().find(|m| m.name == row.name) {
            None => {
                return Err(format!(
                    "migration {:?} is in {} but missing from the config file; keep it until \
                     it is rolled back to planned or completed",
                    row.name, row.phase
                ));
            }
            Some(m) if definition_hash(m) != row.definition_hash => {
                return Err(format!(
                    "migration {:?} is in {}; its definition (database, table, kind, key, \
                     columns, up, down) cannot change until it is rolled back to planned",
                    row.name, row.phase
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The file's migrations in the phases the instances serve, as the state records them
/// (planned when not recorded; see [`MigrationRow::serving_phase`]).
fn effective(config: &Config, state: &State) -> Config {
    let mut config = config.clone();
    for m in &mut config.migrations {
        m.phase = state
            .migrations
            .get(&m.name)
            .map_or(Phase::Planned, MigrationRow::serving_phase);
    }
    config
}

/// A stable hash (FNV-1a, 64 bits) of what a migration does; `phase`, `expand_sql` and
/// `complete_sql` are not part of it.
pub fn definition_hash(m: &MigrationConfig) -> String {
    let columns: Vec<Value> = m
        .columns
        .iter()
        .map(|c| json!([c.old, c.new, c.up, c.down]))
        .collect();
    let kind = match m.kind {
        crate::config::MigrationKind::Columns => "columns",
        crate::config::MigrationKind::Table => "table",
    };
    let canonical = json!([m.database, m.table, kind, m.new_table, m.key, columns]).to_string();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in canonical.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

async fn run_complete_sql(config: &Config, name: &str) -> Result<(), String> {
    let Some(m) = config.migrations.iter().find(|m| m.name == name) else {
        return Ok(());
    };
    let Some(sql) = &m.complete_sql else {
        return Ok(());
    };
    let conn = catalog::connect(config, &m.database)
        .await
        .map_err(|e| e.to_string())?;
    catalog::run_ddl(&conn, sql, COMPLETE_LOCK_TIMEOUT, COMPLETE_ATTEMPTS)
        .await
        .map_err(|e| format!("complete_sql failed: {e}; the migration stays in contract"))
}

/// Opens a connection that LISTENs on [`store::CHANNEL`] and sends `()` for each
/// notification; the channel closes when the connection ends.
async fn listen(
    config: &Config,
    database: &str,
    notify: mpsc::UnboundedSender<()>,
) -> Result<ControlConnection, String> {
    let (client, mut connection) = catalog::pg_config(config, database)
        .map_err(|e| e.to_string())?
        .application_name("pgshift listen")
        .connect(catalog::tls_connector())
        .await
        .map_err(|e| e.to_string())?;
    let task = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => {
                    if notify.send(()).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    });
    let conn = ControlConnection { client, task };
    conn.batch_execute(&format!("LISTEN {}", store::CHANNEL))
        .await
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}
