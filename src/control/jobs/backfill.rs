//! The backfill runner: key-ordered batches from the record's checkpoint, each one short
//! transaction under `lock_timeout` that locks its source rows and writes the other side
//! ([`Mapping::batch_sql`]), retried with backoff when a lock, a deadlock or the connection
//! gets in the way; the checkpoint and progress are merged into the record after every batch.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::sql::{BatchResult, Direction, Kind, Mapping};
use super::{BACKFILL_ROWS_TOTAL, ControlPlane};
use crate::catalog::{self, ControlConnection, describe};
use crate::config::{Config, JobsConfig};
use crate::control::store::{self, Job};
use crate::migration::Phase;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the throttle re-checks replication lag and lock waits while paused by them.
const THROTTLE_RECHECK: Duration = Duration::from_secs(1);
/// How long the orphan sweep waits for transactions older than the last batch.
const SWEEP_WAIT: Duration = Duration::from_secs(60);
/// The transactions the orphan sweep waits for, as (count, list): sessions whose transaction
/// began before `$1` (epoch seconds), and prepared (two-phase) transactions prepared before
/// then or holding a transaction id older than `$2` (32-bit, as text). A prepared DELETE of a
/// source row is invisible to the sweep until COMMIT PREPARED, so its orphan would stay.
const OLDER_TRANSACTIONS_SQL: &str = "\
    WITH older AS ( \
        SELECT 1 AS kind, lpad(pid::text, 10) AS ord, 'backend pid ' || pid AS what \
        FROM pg_stat_activity WHERE datname = current_database() \
        AND backend_type = 'client backend' AND pid <> pg_backend_pid() \
        AND xact_start < to_timestamp($1) \
        UNION ALL \
        SELECT 2, gid, 'prepared transaction ' || quote_literal(gid) \
        FROM pg_prepared_xacts WHERE database = current_database() \
        AND (prepared < to_timestamp($1) OR age(transaction) > age($2::text::xid)) \
    ) \
    SELECT count(*)::int8, string_agg(what, ', ' ORDER BY kind, ord) FROM older";
/// Sweep chunks are this many batches (they mostly read).
const SWEEP_CHUNK_FACTOR: u32 = 10;

/// How a run ended.
enum Ended {
    Done,
    /// Paused, cancelled, replaced, or this instance is stopping.
    Stopped(String),
}

/// Runs the backfill of `name` from its record until it is done, stopped or failed. `lock`
/// is the runner lock's connection when the caller took it; otherwise it is taken here and
/// the run gives up quietly when someone else has it.
pub async fn run(
    plane: &Arc<ControlPlane>,
    name: &str,
    lock: Option<ControlConnection>,
    token: CancellationToken,
) {
    let conn = match lock {
        Some(c) => c,
        None => match plane.job_lock(name, Job::Backfill, Duration::ZERO).await {
            Ok(c) => c,
            Err(_) => return,
        },
    };
    let row = match plane.row(name).await {
        Ok(r) => r,
        Err(e) => {
            warn!(migration = name, error = %e, "backfill cannot read its record");
            return;
        }
    };
    let Some(record) = row.backfill.clone() else {
        return;
    };
    let run_id = record["run"].as_str().unwrap_or_default().to_owned();
    if record["state"] != "running" {
        return;
    }
    let result = copy(plane, name, &conn, &record, &run_id, &token).await;
    match result {
        Ok(Ended::Done) => info!(migration = name, "backfill done"),
        Ok(Ended::Stopped(why)) => info!(migration = name, why, "backfill stopped"),
        Err(e) => {
            warn!(migration = name, error = %e, "backfill failed");
            let patch = json!({"state": "failed", "error": e, "waiting": null});
            let _ = store::update_job(&conn, name, Job::Backfill, &run_id, &patch, false).await;
        }
    }
}

/// The phases a backfill of `direction` may write in.
fn allowed(direction: Direction, phase: Phase) -> bool {
    match direction {
        Direction::Forward => phase == Phase::Expand,
        Direction::Reverse => phase == Phase::Contract,
    }
}

async fn copy(
    plane: &Arc<ControlPlane>,
    name: &str,
    state: &ControlConnection,
    record: &Value,
    run_id: &str,
    token: &CancellationToken,
) -> Result<Ended, String> {
    let config = plane.config_now().await;
    let m = ControlPlane::migration_config(&config, name)?;
    let direction = Direction::parse(record["direction"].as_str().unwrap_or("forward"));
    let mapping = Mapping::resolve(&plane.snapshots.load(), &m.database, name, direction)?;
    let batch = record["batch_size"]
        .as_u64()
        .unwrap_or(u64::from(config.jobs.batch_size))
        .clamp(1, u64::from(u32::MAX)) as u32;
    let rate_limit = record["rate_limit"].as_u64().unwrap_or(0);
    let mut last_key: Option<Vec<String>> = record["last_key"].as_array().map(|a| {
        a.iter()
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .collect()
    });
    let mut rows_done = record["rows_done"].as_i64().unwrap_or(0);
    let mut written = record["written"].as_i64().unwrap_or(0);
    let mut deleted = record["deleted"].as_i64().unwrap_or(0);

    let mut db = Batcher::connect(&config, &m.database, &mapping, batch).await?;
    let mut rows_total = record["rows_total"].as_i64().unwrap_or(0);
    if rows_total <= 0 {
        rows_total = db.estimate(&mapping).await?;
    }
    let start = json!({"runner": plane.instance, "rows_total": rows_total, "error": null});
    if store::update_job(state, name, Job::Backfill, run_id, &start, false)
        .await
        .map_err(|e| e.to_string())?
        .is_none()
    {
        return Ok(Ended::Stopped("the record changed".into()));
    }
    let counter = metrics::counter!(BACKFILL_ROWS_TOTAL, "migration" => name.to_owned());
    let began = Instant::now();
    let mut run_rows: i64 = 0;
    info!(migration = name, direction = direction.name(), batch, rate_limit, from = ?last_key, "backfill running");
    loop {
        if token.is_cancelled() {
            return Ok(Ended::Stopped("this instance is stopping".into()));
        }
        if let Some(why) = db.throttled(&config.jobs).await {
            let patch = json!({"waiting": why});
            store::update_job(state, name, Job::Backfill, run_id, &patch, false)
                .await
                .map_err(|e| e.to_string())?;
            tokio::select! {
                _ = token.cancelled() => {}
                _ = tokio::time::sleep(THROTTLE_RECHECK) => {}
            }
            continue;
        }
        let result = db.copy(&config, last_key.as_deref(), token).await?;
        rows_done += result.rows;
        run_rows += result.rows;
        written += result.written;
        deleted += result.deleted;
        counter.increment(result.rows as u64);
        if result.last_key.is_some() {
            last_key = result.last_key.clone();
        }
        // A throttled run sleeps after this batch until `due`: count that time already, so
        // the rate shown is the one the run keeps.
        let due = if rate_limit > 0 {
            run_rows as f64 / rate_limit as f64
        } else {
            0.0
        };
        let elapsed = began.elapsed().as_secs_f64().max(due).max(0.001);
        let rate = run_rows as f64 / elapsed;
        rows_total = rows_total.max(rows_done);
        // A short or even empty batch is not the end: FOR UPDATE skips rows deleted while it
        // waited for their locks. The end is an empty batch with nothing after its key.
        let finished = result.last_key.is_none();
        if finished && mapping.kind == Kind::Table {
            match sweep(name, state, run_id, &mut db, &config, token).await? {
                Some(n) => deleted += n,
                None => return Ok(Ended::Stopped("the record changed".into())),
            }
        }
        let eta = if finished {
            json!(0)
        } else if rate > 0.0 {
            json!(((rows_total - rows_done) as f64 / rate).ceil() as i64)
        } else {
            Value::Null
        };
        let mut patch = json!({
            "rows_done": rows_done,
            "rows_total": rows_total,
            "written": written,
            "deleted": deleted,
            "last_key": last_key,
            "rate": rate.round() as i64,
            "eta_s": eta,
            "waiting": null,
        });
        if finished {
            patch["state"] = json!("done");
        }
        let update = store::update_job(state, name, Job::Backfill, run_id, &patch, finished)
            .await
            .map_err(|e| e.to_string())?;
        let Some(update) = update else {
            return Ok(Ended::Stopped("the record changed".into()));
        };
        if !allowed(direction, update.phase) {
            return Err(format!(
                "the migration moved to {} while a {} backfill ran",
                update.phase,
                direction.name()
            ));
        }
        if finished {
            return Ok(Ended::Done);
        }
        if update.state != "running" {
            return Ok(Ended::Stopped(update.state));
        }
        if rate_limit > 0 {
            let due = Duration::from_secs_f64(run_rows as f64 / rate_limit as f64);
            if let Some(wait) = due.checked_sub(began.elapsed()) {
                tokio::select! {
                    _ = token.cancelled() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Waits (up to [`SWEEP_WAIT`]) until no transaction that began before the last batch is
/// open, then deletes the target rows without a source row ([`Mapping::sweep_sql`]).
/// Returns the rows deleted; `None` when the record changed meanwhile.
async fn sweep(
    name: &str,
    state: &ControlConnection,
    run_id: &str,
    db: &mut Batcher,
    config: &Config,
    token: &CancellationToken,
) -> Result<Option<i64>, String> {
    // The time, and the first transaction id not yet assigned: a prepared transaction with an
    // older id began before now, whenever it was prepared.
    let since = db
        .conn
        .query_one(
            "SELECT extract(epoch FROM clock_timestamp())::float8, \
             (pg_snapshot_xmax(pg_current_snapshot())::text::int8 % 4294967296)::text",
            &[],
        )
        .await
        .map_err(|e| describe(&e))?;
    let (since, next_xid): (f64, String) = (since.get(0), since.get(1));
    let deadline = Instant::now() + SWEEP_WAIT;
    loop {
        let row = db
            .conn
            .query_one(OLDER_TRANSACTIONS_SQL, &[&since, &next_xid])
            .await
            .map_err(|e| describe(&e))?;
        let (open, which): (i64, Option<String>) = (row.get(0), row.get(1));
        if open == 0 {
            break;
        }
        if token.is_cancelled() {
            return Ok(None);
        }
        if Instant::now() >= deadline {
            warn!(
                migration = name,
                open,
                which,
                "sweeping although transactions older than \
                  the last batch are still open; verify will show what they leave behind"
            );
            break;
        }
        let patch = json!({"waiting": format!(
            "{open} transaction(s) older than the last batch still open ({}); the orphan \
             sweep waits for them",
            which.unwrap_or_default()
        )});
        if store::update_job(state, name, Job::Backfill, run_id, &patch, false)
            .await
            .map_err(|e| e.to_string())?
            .is_none()
        {
            return Ok(None);
        }
        sleep_or_stop(THROTTLE_RECHECK, token).await;
    }
    let patch = json!({"waiting": null, "step": "sweep"});
    match store::update_job(state, name, Job::Backfill, run_id, &patch, false)
        .await
        .map_err(|e| e.to_string())?
    {
        Some(update) if update.state == "running" => {}
        _ => return Ok(None),
    }
    let mut after: Option<Vec<String>> = None;
    let mut deleted = 0;
    let chunk = db.batch.saturating_mul(SWEEP_CHUNK_FACTOR);
    loop {
        let lower = after.clone().unwrap_or_default();
        let end_sql = db.mapping.sweep_end_sql(chunk, after.is_some());
        let end: Option<Vec<String>> = db
            .with_retries(config, &end_sql, &lower, token)
            .await?
            .map(|row| row.get(0));
        let mut bounds = lower;
        bounds.extend(end.clone().unwrap_or_default());
        let work = Work::Sweep {
            after: after.is_some(),
            upto: end.is_some(),
        };
        match db.attempts(config, &work, &bounds, token).await? {
            Done::Deleted(n) => deleted += n,
            Done::Row(_) => return Err("the sweep returned a row".into()),
        }
        if token.is_cancelled() {
            return Ok(None);
        }
        match end {
            Some(end) => after = Some(end),
            None => return Ok(Some(deleted)),
        }
    }
}

/// The connection batches run on, with their statements prepared.
struct Batcher {
    conn: ControlConnection,
    database: String,
    mapping: Mapping,
    batch: u32,
    /// The batch's SQL from the first key, and after a key.
    copy_sql: (String, String),
    prepared: HashMap<String, Statement>,
}

impl Batcher {
    async fn connect(
        config: &Config,
        database: &str,
        mapping: &Mapping,
        batch: u32,
    ) -> Result<Batcher, String> {
        let conn = catalog::connect(config, database)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Batcher {
            conn,
            database: database.to_owned(),
            mapping: mapping.clone(),
            batch,
            copy_sql: (
                mapping.batch_sql(batch, false),
                mapping.batch_sql(batch, true),
            ),
            prepared: HashMap::new(),
        })
    }

    async fn estimate(&self, mapping: &Mapping) -> Result<i64, String> {
        let estimate: f64 = self
            .conn
            .query_one(&mapping.estimate_sql(), &[])
            .await
            .map_err(|e| describe(&e))?
            .get(0);
        if estimate >= 0.0 {
            return Ok(estimate as i64);
        }
        Ok(self
            .conn
            .query_one(&mapping.count_sql(), &[])
            .await
            .map_err(|e| describe(&e))?
            .get(0))
    }

    /// Why batches should wait now, if they should.
    async fn throttled(&self, jobs: &JobsConfig) -> Option<String> {
        if !jobs.max_replication_lag.is_zero() {
            let lag: Option<f64> = self
                .conn
                .query_one(
                    "SELECT max(extract(epoch FROM replay_lag))::float8 FROM pg_stat_replication",
                    &[],
                )
                .await
                .ok()
                .and_then(|r| r.get(0));
            if let Some(lag) = lag.filter(|l| *l > jobs.max_replication_lag.as_secs_f64()) {
                return Some(format!(
                    "replication lag {lag:.1}s exceeds max_replication_lag {:?}",
                    jobs.max_replication_lag
                ));
            }
        }
        if jobs.max_lock_waiters > 0 {
            let waiters: i64 = self
                .conn
                .query_one(
                    "SELECT count(*)::int8 FROM pg_stat_activity \
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .map_or(0, |r| r.get(0));
            if waiters > i64::from(jobs.max_lock_waiters) {
                return Some(format!(
                    "{waiters} sessions wait for a lock (max_lock_waiters {})",
                    jobs.max_lock_waiters
                ));
            }
        }
        None
    }

    /// One batch from the key after `after`.
    async fn copy(
        &mut self,
        config: &Config,
        after: Option<&[String]>,
        token: &CancellationToken,
    ) -> Result<BatchResult, String> {
        let sql = match after {
            None => self.copy_sql.0.clone(),
            Some(_) => self.copy_sql.1.clone(),
        };
        let row = self
            .with_retries(config, &sql, after.unwrap_or_default(), token)
            .await?
            .ok_or("a batch returned no row")?;
        Ok(BatchResult {
            rows: row.get(0),
            written: row.get(1),
            deleted: row.get(2),
            last_key: row.get(3),
        })
    }

    /// Runs `sql` with text parameters `params` in its own short transaction under
    /// `lock_timeout`, retrying conflicts and lost connections with backoff.
    async fn with_retries(
        &mut self,
        config: &Config,
        sql: &str,
        params: &[String],
        token: &CancellationToken,
    ) -> Result<Option<Row>, String> {
        match self
            .attempts(config, &Work::Statement(sql.to_owned()), params, token)
            .await?
        {
            Done::Row(row) => Ok(row),
            Done::Deleted(_) => Err("a statement deleted instead of answering".into()),
        }
    }

    /// Does `work` in its own short transaction under `lock_timeout`, retrying conflicts and
    /// lost connections with backoff.
    async fn attempts(
        &mut self,
        config: &Config,
        work: &Work,
        params: &[String],
        token: &CancellationToken,
    ) -> Result<Done, String> {
        let jobs = &config.jobs;
        let mut backoff = FIRST_BACKOFF;
        let attempts = jobs.max_attempts.max(1);
        for attempt in 1..=attempts {
            if self.conn.client.is_closed() {
                match catalog::connect(config, &self.database).await {
                    Ok(c) => {
                        self.conn = c;
                        self.prepared.clear();
                    }
                    Err(e) if attempt < attempts => {
                        warn!(error = %e, attempt, "backfill cannot reconnect; retrying");
                        sleep_or_stop(backoff, token).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
            match self.run(work, params, jobs.lock_timeout).await {
                Ok(r) => return Ok(r),
                Err(e) if retryable(&e) && attempt < attempts => {
                    warn!(error = %describe(&e), attempt, attempts, "backfill statement failed; retrying");
                    if e.code().is_none() {
                        self.prepared.clear();
                    }
                    sleep_or_stop(backoff, token).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => {
                    return Err(format!(
                        "batch after key {params:?} failed{}: {}",
                        if retryable(&e) {
                            format!(" {attempts} times")
                        } else {
                            String::new()
                        },
                        describe(&e)
                    ));
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    /// `BEGIN; SET LOCAL lock_timeout; <work>; COMMIT`, statements prepared once.
    async fn run(
        &mut self,
        work: &Work,
        params: &[String],
        lock_timeout: Duration,
    ) -> Result<Done, tokio_postgres::Error> {
        let (first, second) = match work {
            Work::Statement(sql) => (sql.clone(), None),
            Work::Sweep { after, upto } => (
                self.mapping.sweep_candidates_sql(*after, *upto),
                Some(self.mapping.sweep_delete_sql(*after, *upto)),
            ),
        };
        for sql in std::iter::once(&first).chain(second.as_ref()) {
            if !self.prepared.contains_key(sql) {
                let statement = self.conn.client.prepare(sql).await?;
                self.prepared.insert(sql.clone(), statement);
            }
        }
        let first = self.prepared[&first].clone();
        let second = second.map(|sql| self.prepared[&sql].clone());
        let client: &mut Client = &mut self.conn.client;
        let tx = client.transaction().await?;
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = '{}ms'",
            lock_timeout.as_millis().max(1)
        ))
        .await?;
        let done = match second {
            None => Done::Row(tx.query_opt(&first, &texts(params)).await?),
            Some(delete) => {
                let orphans: Vec<String> = tx
                    .query(&first, &texts(params))
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                if orphans.is_empty() {
                    Done::Deleted(0)
                } else {
                    let mut all = texts(params);
                    all.push(&orphans);
                    Done::Deleted(tx.query_one(&delete, &all).await?.get(0))
                }
            }
        };
        tx.commit().await?;
        Ok(done)
    }
}

/// What one transaction of the backfill does.
enum Work {
    /// One statement (a batch, or finding a sweep range).
    Statement(String),
    /// A sweep range: lock the orphans, then delete those still orphaned.
    Sweep { after: bool, upto: bool },
}

/// What it produced.
enum Done {
    Row(Option<Row>),
    Deleted(i64),
}

fn texts(values: &[String]) -> Vec<&(dyn ToSql + Sync)> {
    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

async fn sleep_or_stop(pause: Duration, token: &CancellationToken) {
    tokio::select! {
        _ = token.cancelled() => {}
        _ = tokio::time::sleep(pause) => {}
    }
}

/// Errors a later attempt may not meet: lock and serialization conflicts, a server shutting
/// down, and lost connections.
fn retryable(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => true,
        Some(code) => [
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
        ]
        .contains(code),
    }
}
