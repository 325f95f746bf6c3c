//! The backfill and verify jobs (DESIGN §3.6, docs/jobs.md): the admin commands that start
//! and steer them, the rules they add to transitions, and taking over a job whose runner died.
//!
//! A job's record (`pgshift.migrations.backfill` / `.verify`, jsonb) is the truth every
//! instance reads: commands change its `state` under the state lock, and the runner (in
//! [`backfill`] / [`verify`]) merges its progress into it after every batch or chunk, stopping
//! as soon as the state it reads back is no longer `running` or the record belongs to another
//! run. The runner holds a session advisory lock per migration and job on its own connection
//! to the state database, so at most one runs anywhere, and a dead runner's lock vanishes with
//! its connection: [`ControlPlane::adopt_jobs`] then restarts a `running` backfill from its
//! checkpoint in whichever instance sees it first.

pub mod backfill;
pub mod sql;
pub mod verify;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::sql::Direction;
use super::store::{self, Event, Job, MigrationRow, Txn};
use super::{ControlPlane, effective, lock};
use crate::catalog::{self, ControlConnection};
use crate::config::{Config, MigrationConfig};
use crate::migration::Phase;
use crate::snapshot;

/// Gauge per migration: mismatching keys found by the last verify.
pub const VERIFY_MISMATCHES: &str = "pgshift_verify_mismatches";
/// Counter per migration: source rows processed by backfill batches.
pub const BACKFILL_ROWS_TOTAL: &str = "pgshift_backfill_rows_total";

/// The runners of this instance, each stoppable (at shutdown).
#[derive(Default)]
pub struct Local {
    running: Mutex<HashMap<(String, Job), CancellationToken>>,
}

impl Local {
    /// Registers a runner; `None` when this instance already runs that job.
    fn claim(&self, name: &str, job: Job) -> Option<CancellationToken> {
        let mut running = lock(&self.running);
        let key = (name.to_owned(), job);
        if running.contains_key(&key) {
            return None;
        }
        let token = CancellationToken::new();
        running.insert(key, token.clone());
        Some(token)
    }

    fn release(&self, name: &str, job: Job) {
        lock(&self.running).remove(&(name.to_owned(), job));
    }

    /// Stops this instance's runner of the job now (pause, cancel), if it has one.
    fn stop(&self, name: &str, job: Job) {
        if let Some(token) = lock(&self.running).get(&(name.to_owned(), job)) {
            token.cancel();
        }
    }

    fn is_running(&self, name: &str, job: Job) -> bool {
        lock(&self.running).contains_key(&(name.to_owned(), job))
    }

    /// Stops every runner (shutdown); their records stay `running` for another instance.
    pub fn stop_all(&self) {
        for token in lock(&self.running).values() {
            token.cancel();
        }
    }
}

/// How long a command waits for a stopping runner to let go of the job's lock.
const LOCK_PATIENCE: Duration = Duration::from_secs(10);
const LOCK_RETRY: Duration = Duration::from_millis(100);

/// Options of `backfill NAME start`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StartOptions {
    pub batch: Option<u32>,
    pub rate: Option<u32>,
}

/// What `backfill NAME …` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackfillAction {
    Start(StartOptions),
    Pause,
    Resume,
    Cancel,
}

/// Transitions a job in progress forbids: only planned (which abandons the new side) may be
/// entered while a backfill has not ended; complete needs the old side unwritten.
pub fn check_transition(row: &MigrationRow, to: Phase) -> Result<(), String> {
    if to != Phase::Planned && row.backfill_in_progress() {
        return Err(format!(
            "a {} backfill of {:?} is {}; let it finish or `backfill {} cancel` it first",
            row.backfill_direction(),
            row.name,
            row.backfill_state().unwrap_or("?"),
            row.name
        ));
    }
    if to == Phase::Complete && row.serving_phase() != Phase::Contract {
        return Err(format!(
            "{:?} has a reverse backfill, so the old side is written again; \
             `backfill {} cancel` it before complete",
            row.name, row.name
        ));
    }
    Ok(())
}

/// The in-memory twin of the records [`Txn::set_phase`] forgets.
pub fn forget_on_entering(row: &mut MigrationRow) {
    if matches!(row.phase, Phase::Planned | Phase::Contract) {
        row.backfill = None;
        row.verify = None;
    }
}

/// Which way a job of `kind` runs in `phase`. A backfill runs forward in expand only: in
/// switch reads come from the new side, clients lock it first, and a batch locking the old
/// side first would deadlock with them (both sides were written all along since expand, so
/// a backfill there has nothing to add). Verify only reads, so it may run in switch too.
fn direction_for(name: &str, phase: Phase, kind: Job) -> Result<Direction, String> {
    match (phase, kind) {
        (Phase::Expand, _) | (Phase::Switch, Job::Verify) => Ok(Direction::Forward),
        (Phase::Contract, _) => Ok(Direction::Reverse),
        (Phase::Switch, Job::Backfill) => Err(format!(
            "the backfill of {name:?} runs in expand (forward) or contract (reverse, to roll \
             back); in switch both sides have been written since expand — roll back to expand \
             to backfill again"
        )),
        (p, _) => Err(format!(
            "the {} of {name:?} runs in expand or contract (and verify also in switch); the \
             migration is in {p}",
            kind.column()
        )),
    }
}

fn field<'a>(record: &'a Option<Value>, key: &str) -> Option<&'a Value> {
    record.as_ref()?.get(key)
}

fn new_run() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl ControlPlane {
    async fn config_now(&self) -> Config {
        self.inner.lock().await.config.clone()
    }

    fn migration_config(config: &Config, name: &str) -> Result<MigrationConfig, String> {
        config
            .migrations
            .iter()
            .find(|m| m.name == name)
            .cloned()
            .ok_or_else(|| {
                let known: Vec<&str> = config.migrations.iter().map(|m| m.name.as_str()).collect();
                format!(
                    "unknown migration {name:?}; configured: {}",
                    known.join(", ")
                )
            })
    }

    async fn row(&self, name: &str) -> Result<MigrationRow, String> {
        let state = self.state().await.map_err(|e| e.to_string())?;
        state
            .migrations
            .get(name)
            .cloned()
            .ok_or_else(|| format!("migration {name:?} is not recorded yet; reload the config"))
    }

    /// A connection to the state database holding `job`'s runner lock for `name`, waiting up
    /// to `patience` for a runner that is stopping (after a pause or cancel, it finishes its
    /// batch first); an error says who runs it when the lock stays taken.
    async fn job_lock(
        &self,
        name: &str,
        job: Job,
        patience: Duration,
    ) -> Result<ControlConnection, String> {
        let db = self
            .control_db
            .clone()
            .ok_or("no migrations are configured")?;
        let conn = catalog::connect(&self.base, &db)
            .await
            .map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if store::try_lock_job(&conn, job, name)
                .await
                .map_err(|e| e.to_string())?
            {
                return Ok(conn);
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(LOCK_RETRY).await;
        }
        {
            let row = self.row(name).await.ok();
            let record = match job {
                Job::Backfill => row.and_then(|r| r.backfill),
                Job::Verify => row.and_then(|r| r.verify),
            };
            let runner = field(&record, "runner")
                .and_then(Value::as_str)
                .unwrap_or("another instance")
                .to_owned();
            Err(format!(
                "the {} of {name:?} is already running on {runner}",
                job.column()
            ))
        }
    }

    /// Runs `change` on the migration's row in one state transaction; when `bump`, the epoch
    /// moves and the snapshot of the new state is published (the serving phase changed).
    async fn change_job<F>(&self, name: &str, bump: bool, change: F) -> Result<Value, String>
    where
        F: FnOnce(&MigrationRow, f64) -> Result<(Job, Value), String>,
    {
        let db = self
            .control_db
            .clone()
            .ok_or("no migrations are configured")?;
        let mut inner = self.inner.lock().await;
        let config = inner.config.clone();
        let client = inner.client(&db).await.map_err(|e| e.to_string())?;
        let mut txn = Txn::begin(client).await.map_err(|e| e.to_string())?;
        let state = txn.state().await.map_err(|e| e.to_string())?;
        let row = state
            .migrations
            .get(name)
            .ok_or_else(|| format!("migration {name:?} is not recorded yet; reload the config"))?;
        let now = txn.now().await.map_err(|e| e.to_string())?;
        let (job, mut record) = change(row, now)?;
        let mut snapshot = None;
        let epoch = if bump {
            Some(txn.bump_epoch().await.map_err(|e| e.to_string())?)
        } else {
            None
        };
        if let (Some(epoch), Job::Backfill) = (epoch, job) {
            // The epoch from which every instance writes the side this change concerns: a
            // resumed reverse backfill waits for its acknowledgments.
            record["acks_epoch"] = json!(epoch);
        }
        txn.set_job(name, job, &record)
            .await
            .map_err(|e| e.to_string())?;
        let mut detail = format!(
            "{} {}",
            record["direction"].as_str().unwrap_or("forward"),
            record["state"].as_str().unwrap_or("?")
        );
        if bump {
            detail.push_str(if record["state"] == "cancelled" {
                "; the old side is no longer written"
            } else {
                "; the old side is written again"
            });
        }
        txn.event(Event {
            migration: Some(name),
            actor: &self.actor(super::Source::Ctl),
            action: job.column(),
            from: Some(row.phase),
            to: Some(row.phase),
            detail: Some(&detail),
        })
        .await
        .map_err(|e| e.to_string())?;
        if let Some(epoch) = epoch {
            let mut next = state.clone();
            next.epoch = epoch;
            if let Some(r) = next.migrations.get_mut(name) {
                match job {
                    Job::Backfill => r.backfill = Some(record.clone()),
                    Job::Verify => r.verify = Some(record.clone()),
                }
            }
            let current = self.snapshots.load();
            snapshot = Some(
                snapshot::build(&effective(&config, &next), epoch, Some(&current))
                    .await
                    .map_err(|e| {
                        format!("cannot serve the reverse backfill: {e}; nothing changed")
                    })?,
            );
        }
        txn.commit().await.map_err(|e| e.to_string())?;
        if let Some(s) = snapshot {
            self.publish(s);
        }
        Ok(record)
    }

    /// `backfill NAME start|pause|resume|cancel`.
    pub async fn backfill_command(
        self: &Arc<Self>,
        name: &str,
        action: BackfillAction,
    ) -> Result<Value, String> {
        let config = self.config_now().await;
        Self::migration_config(&config, name)?;
        match action {
            BackfillAction::Start(options) => {
                self.backfill_start(&config, name, options, false).await
            }
            BackfillAction::Resume => {
                self.backfill_start(&config, name, StartOptions::default(), true)
                    .await
            }
            BackfillAction::Pause => {
                let paused = self
                    .change_job(name, false, |row, _| match row.backfill_state() {
                        Some("running") => {
                            let mut b = row.backfill.clone().unwrap_or_default();
                            b["state"] = json!("paused");
                            Ok((Job::Backfill, b))
                        }
                        other => Err(format!(
                            "the backfill of {name:?} is {}; only a running backfill can be paused",
                            other.unwrap_or("not started")
                        )),
                    })
                    .await;
                if paused.is_ok() {
                    self.jobs.stop(name, Job::Backfill);
                }
                paused
            }
            BackfillAction::Cancel => {
                let row = self.row(name).await?;
                let reverse =
                    row.backfill_direction() == "reverse" && row.serving_phase() == Phase::Switch;
                let cancelled = self
                    .change_job(name, reverse, |row, _| {
                        // A finished reverse backfill still has the old side written; cancelling
                        // it is how an operator gives up the rollback and goes on to complete.
                        let rewriting_old = row.backfill_direction() == "reverse"
                            && row.serving_phase() == Phase::Switch;
                        if rewriting_old != reverse {
                            return Err(format!("the backfill of {name:?} changed meanwhile"));
                        }
                        if !row.backfill_in_progress() && !rewriting_old {
                            return Err(format!(
                                "the backfill of {name:?} is {}; nothing to cancel",
                                row.backfill_state().unwrap_or("not started")
                            ));
                        }
                        let mut b = row.backfill.clone().unwrap_or_default();
                        b["state"] = json!("cancelled");
                        Ok((Job::Backfill, b))
                    })
                    .await;
                if cancelled.is_ok() {
                    self.jobs.stop(name, Job::Backfill);
                }
                cancelled
            }
        }
    }

    /// Starts (or, with `resume` or from a paused/failed record, continues) the backfill:
    /// waits for the acknowledgments its direction needs, records it `running` and spawns the
    /// runner here.
    async fn backfill_start(
        self: &Arc<Self>,
        config: &Config,
        name: &str,
        options: StartOptions,
        resume: bool,
    ) -> Result<Value, String> {
        let row = self.row(name).await?;
        let direction = direction_for(name, row.phase, Job::Backfill)?;
        let state = row.backfill_state();
        let same_direction = row.backfill_direction() == direction.name();
        let continuing = same_direction && matches!(state, Some("paused" | "failed" | "starting"));
        if resume && !continuing {
            return Err(format!(
                "the backfill of {name:?} is {}; only a paused or failed backfill resumes",
                state.unwrap_or("not started")
            ));
        }
        if state == Some("running") {
            return Err(format!(
                "the backfill of {name:?} is already running on {}; pause or cancel it first",
                field(&row.backfill, "runner")
                    .and_then(Value::as_str)
                    .unwrap_or("another instance")
            ));
        }
        let lock = self.job_lock(name, Job::Backfill, LOCK_PATIENCE).await?;
        let jobs_config = &config.jobs;
        let mut record = if continuing {
            row.backfill.clone().unwrap_or_default()
        } else {
            json!({
                "run": new_run(),
                "direction": direction.name(),
                "rows_done": 0,
                "rows_total": 0,
                "written": 0,
                "deleted": 0,
                "last_key": null,
            })
        };
        if !continuing || options.batch.is_some() {
            record["batch_size"] = json!(options.batch.unwrap_or(jobs_config.batch_size).max(1));
        }
        if !continuing || options.rate.is_some() {
            record["rate_limit"] = json!(options.rate.unwrap_or(jobs_config.rate));
        }
        record["error"] = Value::Null;
        record["runner"] = json!(self.instance);
        // A reverse backfill first has every instance write the old side again.
        let acks_epoch = match direction {
            Direction::Forward => row.epoch,
            Direction::Reverse if row.serving_phase() == Phase::Switch && continuing => record
                .get("acks_epoch")
                .and_then(Value::as_u64)
                .unwrap_or(row.epoch),
            Direction::Reverse => {
                record["state"] = json!("starting");
                let expected = row.phase;
                let starting = record.clone();
                let recorded = self
                    .change_job(name, true, move |now, at| {
                        if now.phase != expected {
                            return Err(format!("{name:?} moved to {} meanwhile", now.phase));
                        }
                        let mut r = starting;
                        r["started_at"] = json!(at);
                        Ok((Job::Backfill, r))
                    })
                    .await?;
                recorded["acks_epoch"]
                    .as_u64()
                    .unwrap_or_else(|| self.snapshots.load().epoch)
            }
        };
        record["acks_epoch"] = json!(acks_epoch);
        if let Err(e) = self
            .wait_for_acks(acks_epoch, &format!("the {} backfill", direction.name()))
            .await
        {
            if direction == Direction::Reverse {
                record["state"] = json!("failed");
                record["error"] = json!(e);
                let failed = record.clone();
                let _ = self
                    .change_job(name, false, move |_, _| Ok((Job::Backfill, failed)))
                    .await;
            }
            return Err(e);
        }
        let run = record["run"].as_str().unwrap_or_default().to_owned();
        let expected = row.phase;
        let started = self
            .change_job(name, false, move |now, at| {
                if now.phase != expected {
                    return Err(format!("{name:?} moved to {} meanwhile", now.phase));
                }
                if continuing || direction == Direction::Reverse {
                    let current = field(&now.backfill, "run").and_then(Value::as_str);
                    if current != Some(run.as_str()) {
                        return Err(format!("the backfill of {name:?} changed meanwhile"));
                    }
                }
                let mut r = record;
                r["state"] = json!("running");
                if !continuing {
                    r["started_at"] = json!(at);
                }
                Ok((Job::Backfill, r))
            })
            .await?;
        info!(
            migration = name,
            direction = direction.name(),
            "backfill started"
        );
        self.spawn_backfill(name, Some(lock));
        Ok(started)
    }

    /// Starts the backfill runner here unless one already runs here; `lock` is the runner
    /// lock when the caller took it.
    fn spawn_backfill(self: &Arc<Self>, name: &str, lock: Option<ControlConnection>) {
        let Some(token) = self.jobs.claim(name, Job::Backfill) else {
            return;
        };
        let plane = self.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            backfill::run(&plane, &name, lock, token).await;
            plane.jobs.release(&name, Job::Backfill);
        });
    }

    /// `verify NAME [chunk=N]`: records a verify run and starts it here.
    pub async fn verify_command(
        self: &Arc<Self>,
        name: &str,
        chunk: Option<u32>,
    ) -> Result<Value, String> {
        let config = self.config_now().await;
        Self::migration_config(&config, name)?;
        let row = self.row(name).await?;
        let direction = direction_for(name, row.phase, Job::Verify)?;
        if row.backfill_in_progress() {
            return Err(format!(
                "the backfill of {name:?} is {}; verify once it is done",
                row.backfill_state().unwrap_or("?")
            ));
        }
        let lock = self.job_lock(name, Job::Verify, LOCK_PATIENCE).await?;
        let chunk = chunk.unwrap_or(config.jobs.verify_chunk).max(1);
        let instance = self.instance.clone();
        let expected = row.phase;
        let record = self
            .change_job(name, false, move |now, at| {
                if now.phase != expected {
                    return Err(format!("{name:?} moved to {} meanwhile", now.phase));
                }
                Ok((
                    Job::Verify,
                    json!({
                        "state": "running",
                        "run": new_run(),
                        "direction": direction.name(),
                        "chunk": chunk,
                        "started_at": at,
                        "rows_checked": 0,
                        "rows_total": 0,
                        "chunks": 0,
                        "mismatches": 0,
                        "first_keys": [],
                        "runner": instance,
                        "error": null,
                    }),
                ))
            })
            .await?;
        let Some(token) = self.jobs.claim(name, Job::Verify) else {
            return Err(format!(
                "a verify of {name:?} already runs in this instance"
            ));
        };
        let plane = self.clone();
        let owned = name.to_owned();
        tokio::spawn(async move {
            verify::run(&plane, &owned, lock, token).await;
            plane.jobs.release(&owned, Job::Verify);
        });
        info!(
            migration = name,
            direction = direction.name(),
            "verify started"
        );
        Ok(record)
    }

    /// Takes over jobs recorded as running whose runner is gone: a backfill continues here
    /// from its checkpoint; a verify is recorded as failed (it is cheap to start again).
    pub(super) async fn adopt_jobs(self: &Arc<Self>) {
        let Some(db) = self.control_db.clone() else {
            return;
        };
        let running = {
            let mut inner = self.inner.lock().await;
            let Ok(client) = inner.client(&db).await else {
                return;
            };
            match store::orphaned_jobs(client).await {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "cannot read the running jobs");
                    return;
                }
            }
        };
        for (name, job, run) in running {
            let configured = self
                .config_now()
                .await
                .migrations
                .iter()
                .any(|m| m.name == name);
            if !configured || self.jobs.is_running(&name, job) {
                continue;
            }
            let Ok(conn) = self.job_lock(&name, job, Duration::ZERO).await else {
                continue;
            };
            match job {
                Job::Backfill => {
                    info!(
                        migration = name,
                        "taking over a backfill whose runner stopped"
                    );
                    self.spawn_backfill(&name, Some(conn));
                }
                Job::Verify => {
                    let patch = json!({"state": "failed",
                                       "error": "the instance running it stopped"});
                    let _ = store::update_job(&conn, &name, Job::Verify, &run, &patch, true).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(phase: Phase, backfill: Option<Value>) -> MigrationRow {
        MigrationRow {
            name: "m".into(),
            definition_hash: "h".into(),
            phase,
            epoch: 3,
            file_phase: None,
            backfill,
            verify: Some(json!({"state": "clean", "direction": "reverse"})),
        }
    }

    #[test]
    fn a_backfill_in_progress_blocks_every_transition_but_planned() {
        for state in ["starting", "running", "paused", "failed"] {
            let r = row(Phase::Expand, Some(json!({"state": state})));
            let refusal = check_transition(&r, Phase::Switch).unwrap_err();
            assert!(refusal.contains("backfill m cancel"), "{refusal}");
            assert!(check_transition(&r, Phase::Planned).is_ok());
        }
        for state in ["done", "cancelled"] {
            let r = row(Phase::Expand, Some(json!({"state": state})));
            assert!(check_transition(&r, Phase::Switch).is_ok());
        }
        assert!(check_transition(&row(Phase::Expand, None), Phase::Switch).is_ok());
    }

    #[test]
    fn a_reverse_backfill_has_contract_served_as_switch_until_cancelled() {
        let reverse = |state: &str| Some(json!({"state": state, "direction": "reverse"}));
        for state in ["starting", "running", "paused", "failed", "done"] {
            let r = row(Phase::Contract, reverse(state));
            assert_eq!(r.serving_phase(), Phase::Switch, "{state}");
            assert!(check_transition(&r, Phase::Complete).is_err(), "{state}");
        }
        let cancelled = row(Phase::Contract, reverse("cancelled"));
        assert_eq!(cancelled.serving_phase(), Phase::Contract);
        assert!(check_transition(&cancelled, Phase::Complete).is_ok());
        // A forward record never changes what contract serves.
        let forward = row(Phase::Contract, Some(json!({"state": "done"})));
        assert_eq!(forward.serving_phase(), Phase::Contract);
        // Out of contract the recorded phase is served.
        assert_eq!(
            row(Phase::Switch, reverse("done")).serving_phase(),
            Phase::Switch
        );
    }

    #[test]
    fn entering_planned_or_contract_forgets_what_stopped_being_true() {
        for phase in [Phase::Planned, Phase::Contract] {
            let mut r = row(phase, Some(json!({"state": "done"})));
            forget_on_entering(&mut r);
            assert_eq!((r.backfill, r.verify), (None, None), "{phase}");
        }
        for phase in [Phase::Expand, Phase::Switch] {
            let mut r = row(phase, Some(json!({"state": "done"})));
            forget_on_entering(&mut r);
            assert!(r.backfill.is_some() && r.verify.is_some(), "{phase}");
        }
    }

    #[test]
    fn jobs_run_only_where_a_side_is_written() {
        let f = |phase, job| direction_for("m", phase, job);
        assert_eq!(f(Phase::Expand, Job::Backfill), Ok(Direction::Forward));
        assert_eq!(f(Phase::Expand, Job::Verify), Ok(Direction::Forward));
        assert_eq!(f(Phase::Switch, Job::Verify), Ok(Direction::Forward));
        assert!(
            f(Phase::Switch, Job::Backfill)
                .unwrap_err()
                .contains("roll back to expand")
        );
        assert_eq!(f(Phase::Contract, Job::Backfill), Ok(Direction::Reverse));
        assert_eq!(f(Phase::Contract, Job::Verify), Ok(Direction::Reverse));
        assert!(
            f(Phase::Planned, Job::Backfill)
                .unwrap_err()
                .contains("planned")
        );
        assert!(f(Phase::Complete, Job::Verify).is_err());
    }
}
