//! pgshift's shared state in the upstream database, schema `pgshift` (DESIGN §3.5): the
//! cluster-wide epoch, each migration's phase and definition hash, the instances with their
//! heartbeats and acknowledged epochs, and the event log of transitions.
//!
//! The schema is created on first use and versioned: [`ensure_schema`] applies the steps of
//! [`SCHEMA_STEPS`] the database has not seen yet, under an advisory lock so instances starting
//! together do not race. Every change of phase or definition is one transaction under another
//! advisory lock ([`Txn`]) that bumps the epoch and sends `NOTIFY pgshift` on commit.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use tokio_postgres::{Client, Transaction};

use super::machine::Facts;
use crate::catalog::CatalogError;
use crate::migration::Phase;

/// The notification channel every instance listens on; the payload is the new epoch.
pub const CHANNEL: &str = "pgshift";

/// Advisory lock keys (first argument: "pgshift" in ASCII folded into 32 bits).
const LOCK_CLASS: i32 = 0x7067_7368;
const SCHEMA_LOCK: i32 = 1;
const STATE_LOCK: i32 = 2;

/// The schema, one step per version; step `i` brings the schema to version `i + 1`.
/// Released steps never change: a later release appends a step.
pub const SCHEMA_STEPS: &[&str] = &[r#"
CREATE TABLE pgshift.cluster (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    epoch bigint NOT NULL
);
INSERT INTO pgshift.cluster (epoch) VALUES (1);
CREATE TABLE pgshift.migrations (
    name text PRIMARY KEY,
    definition_hash text NOT NULL,
    phase text NOT NULL,
    epoch bigint NOT NULL,
    file_phase text,
    backfill jsonb,
    verify jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE pgshift.instances (
    id text PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    version text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    epoch bigint NOT NULL,
    acked_epoch bigint NOT NULL,
    holdouts jsonb NOT NULL DEFAULT '[]',
    sync_error text
);
CREATE TABLE pgshift.events (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    migration text,
    actor text NOT NULL,
    action text NOT NULL,
    from_phase text,
    to_phase text,
    epoch bigint NOT NULL,
    detail text
);
CREATE INDEX ON pgshift.events (migration, id);
"#];

/// A statement failure, with what pgshift was doing.
fn err(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> CatalogError {
    move |error| CatalogError::Statement {
        context: context.into(),
        error,
    }
}

/// Creates or upgrades schema `pgshift`; fails when the database holds a newer version than
/// this build knows.
pub async fn ensure_schema(client: &mut Client) -> Result<(), CatalogError> {
    let tx = client
        .transaction()
        .await
        .map_err(err("opening the schema transaction"))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&LOCK_CLASS, &SCHEMA_LOCK],
    )
    .await
    .map_err(err("locking the pgshift schema"))?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS pgshift;
         CREATE TABLE IF NOT EXISTS pgshift.schema_version (version integer NOT NULL);",
    )
    .await
    .map_err(err("creating schema pgshift"))?;
    let version: i32 = tx
        .query_opt("SELECT version FROM pgshift.schema_version", &[])
        .await
        .map_err(err("reading the pgshift schema version"))?
        .map_or(0, |row| row.get(0));
    let known = SCHEMA_STEPS.len() as i32;
    if version > known {
        return Err(CatalogError::Upstream(format!(
            "schema pgshift is at version {version}, newer than this pgshift understands \
             ({known}); upgrade pgshift"
        )));
    }
    for step in &SCHEMA_STEPS[version as usize..] {
        tx.batch_execute(step)
            .await
            .map_err(err("upgrading schema pgshift"))?;
    }
    if version < known {
        tx.execute("DELETE FROM pgshift.schema_version", &[])
            .await
            .map_err(err("recording the pgshift schema version"))?;
        tx.execute(
            "INSERT INTO pgshift.schema_version (version) VALUES ($1)",
            &[&known],
        )
        .await
        .map_err(err("recording the pgshift schema version"))?;
    }
    tx.commit()
        .await
        .map_err(err("committing the pgshift schema"))
}

/// One migration's row.
#[derive(Debug, Clone, PartialEq)]
pub struct MigrationRow {
    pub name: String,
    pub definition_hash: String,
    pub phase: Phase,
    /// The epoch at which `phase` was entered.
    pub epoch: u64,
    /// The config file's phase at the last load that applied it.
    pub file_phase: Option<Phase>,
    /// Backfill job state (written by the jobs).
    pub backfill: Option<Value>,
    /// Last verify result (written by the jobs).
    pub verify: Option<Value>,
}

impl MigrationRow {
    /// The facts the transition rules need, from the jobs' records: a verify counts when it
    /// found both sides equal and started after the last backfill in that direction finished.
    pub fn facts(&self) -> Facts {
        let finished = |direction: &str| -> Option<f64> {
            let b = self.backfill.as_ref()?;
            let dir = b
                .get("direction")
                .and_then(Value::as_str)
                .unwrap_or("forward");
            (b.get("state")?.as_str()? == "done" && dir == direction)
                .then(|| b.get("finished_at")?.as_f64())?
        };
        let clean_since = |direction: &str, t: f64| -> bool {
            self.verify.as_ref().is_some_and(|v| {
                v.get("state").and_then(Value::as_str) == Some("clean")
                    && v.get("direction")
                        .and_then(Value::as_str)
                        .unwrap_or("forward")
                        == direction
                    && v.get("started_at").and_then(Value::as_f64) >= Some(t)
            })
        };
        Facts {
            verified: finished("forward").is_some_and(|t| clean_since("forward", t)),
            reverse_verified: finished("reverse").is_some_and(|t| clean_since("reverse", t)),
        }
    }

    /// The backfill's state (`running`, `done`, …), if one was ever started.
    pub fn backfill_state(&self) -> Option<&str> {
        self.backfill.as_ref()?.get("state")?.as_str()
    }

    /// The backfill's direction (`forward` unless recorded otherwise).
    pub fn backfill_direction(&self) -> &str {
        self.backfill
            .as_ref()
            .and_then(|b| b.get("direction"))
            .and_then(Value::as_str)
            .unwrap_or("forward")
    }

    /// A backfill that has not ended: it may still copy rows.
    pub fn backfill_in_progress(&self) -> bool {
        matches!(
            self.backfill_state(),
            Some("starting" | "running" | "paused" | "failed")
        )
    }

    /// The phase whose rewrites the instances serve: the recorded phase, except that a
    /// migration in contract with a reverse backfill (not cancelled) writes both sides again,
    /// as in switch, so the rebuilt old side stays current (docs/jobs.md).
    pub fn serving_phase(&self) -> Phase {
        if self.phase == Phase::Contract
            && self.backfill_direction() == "reverse"
            && self.backfill_state().is_some_and(|s| s != "cancelled")
        {
            Phase::Switch
        } else {
            self.phase
        }
    }
}

/// The whole shared state.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub epoch: u64,
    pub migrations: BTreeMap<String, MigrationRow>,
}

fn parse_phase(s: &str) -> Result<Phase, CatalogError> {
    s.parse()
        .map_err(|e: String| CatalogError::Upstream(format!("schema pgshift: {e}")))
}

async fn read_state(client: &impl tokio_postgres::GenericClient) -> Result<State, CatalogError> {
    let epoch: i64 = client
        .query_one("SELECT epoch FROM pgshift.cluster", &[])
        .await
        .map_err(err("reading the pgshift epoch"))?
        .get(0);
    let rows = client
        .query(
            "SELECT name, definition_hash, phase, epoch, file_phase, backfill, verify
             FROM pgshift.migrations",
            &[],
        )
        .await
        .map_err(err("reading pgshift.migrations"))?;
    let mut migrations = BTreeMap::new();
    for row in rows {
        let file_phase: Option<String> = row.get(4);
        let m = MigrationRow {
            name: row.get(0),
            definition_hash: row.get(1),
            phase: parse_phase(row.get(2))?,
            epoch: row.get::<_, i64>(3) as u64,
            file_phase: file_phase.as_deref().map(parse_phase).transpose()?,
            backfill: row.get(5),
            verify: row.get(6),
        };
        migrations.insert(m.name.clone(), m);
    }
    Ok(State {
        epoch: epoch as u64,
        migrations,
    })
}

/// The state as it is now (no lock).
pub async fn load(client: &Client) -> Result<State, CatalogError> {
    read_state(client).await
}

/// The cluster epoch alone (the cheap poll).
pub async fn epoch(client: &Client) -> Result<u64, CatalogError> {
    let epoch: i64 = client
        .query_one("SELECT epoch FROM pgshift.cluster", &[])
        .await
        .map_err(err("reading the pgshift epoch"))?
        .get(0);
    Ok(epoch as u64)
}

/// A state-changing transaction: holds the state advisory lock until commit or drop.
pub struct Txn<'a> {
    tx: Transaction<'a>,
    bumped: Option<u64>,
}

/// One entry of the event log.
pub struct Event<'a> {
    pub migration: Option<&'a str>,
    pub actor: &'a str,
    pub action: &'a str,
    pub from: Option<Phase>,
    pub to: Option<Phase>,
    pub detail: Option<&'a str>,
}

impl<'a> Txn<'a> {
    pub async fn begin(client: &'a mut Client) -> Result<Txn<'a>, CatalogError> {
        let tx = client
            .transaction()
            .await
            .map_err(err("opening a state transaction"))?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, $2)",
            &[&LOCK_CLASS, &STATE_LOCK],
        )
        .await
        .map_err(err("locking the pgshift state"))?;
        Ok(Txn { tx, bumped: None })
    }

    /// The state as seen under the lock.
    pub async fn state(&self) -> Result<State, CatalogError> {
        read_state(&self.tx).await
    }

    /// The next epoch (bumped once per transaction).
    pub async fn bump_epoch(&mut self) -> Result<u64, CatalogError> {
        if let Some(epoch) = self.bumped {
            return Ok(epoch);
        }
        let epoch: i64 = self
            .tx
            .query_one(
                "UPDATE pgshift.cluster SET epoch = epoch + 1 RETURNING epoch",
                &[],
            )
            .await
            .map_err(err("bumping the pgshift epoch"))?
            .get(0);
        self.bumped = Some(epoch as u64);
        Ok(epoch as u64)
    }

    /// Adds a migration (in planned) or records its new definition.
    pub async fn define(&mut self, name: &str, hash: &str) -> Result<(), CatalogError> {
        let epoch = self.bump_epoch().await? as i64;
        self.tx
            .execute(
                "INSERT INTO pgshift.migrations (name, definition_hash, phase, epoch)
                 VALUES ($1, $2, 'planned', $3)
                 ON CONFLICT (name) DO UPDATE
                 SET definition_hash = excluded.definition_hash, updated_at = now()",
                &[&name, &hash, &epoch],
            )
            .await
            .map_err(err("recording a migration definition"))?;
        Ok(())
    }

    /// Moves a migration to `phase` at the bumped epoch. Job records that no longer say
    /// anything true are forgotten on entering planned (the new side stops being written) and
    /// contract (the old side stops being written): a backfill or verify from before cannot
    /// vouch for a side that was not written since.
    pub async fn set_phase(&mut self, name: &str, phase: Phase) -> Result<u64, CatalogError> {
        let epoch = self.bump_epoch().await?;
        let forget = matches!(phase, Phase::Planned | Phase::Contract);
        self.tx
            .execute(
                "UPDATE pgshift.migrations SET phase = $2, epoch = $3, updated_at = now(),
                     backfill = CASE WHEN $4 THEN NULL ELSE backfill END,
                     verify = CASE WHEN $4 THEN NULL ELSE verify END
                 WHERE name = $1",
                &[&name, &phase.name(), &(epoch as i64), &forget],
            )
            .await
            .map_err(err("recording a phase"))?;
        Ok(epoch)
    }

    /// Replaces a migration's backfill or verify record (`job` is one of those two words).
    pub async fn set_job(
        &mut self,
        name: &str,
        job: Job,
        record: &Value,
    ) -> Result<(), CatalogError> {
        self.tx
            .execute(
                &format!(
                    "UPDATE pgshift.migrations SET {0} = $2::jsonb, updated_at = now() WHERE name = $1",
                    job.column()
                ),
                &[&name, record],
            )
            .await
            .map_err(err("recording a job"))?;
        Ok(())
    }

    /// The database's clock, as Unix seconds: job timestamps are compared with each other
    /// across instances, so they all come from one clock.
    pub async fn now(&self) -> Result<f64, CatalogError> {
        Ok(self
            .tx
            .query_one("SELECT extract(epoch FROM clock_timestamp())::float8", &[])
            .await
            .map_err(err("reading the clock"))?
            .get(0))
    }

    /// Records the config file's phase as applied.
    pub async fn set_file_phase(&mut self, name: &str, phase: Phase) -> Result<(), CatalogError> {
        self.tx
            .execute(
                "UPDATE pgshift.migrations SET file_phase = $2 WHERE name = $1",
                &[&name, &phase.name()],
            )
            .await
            .map_err(err("recording the config file's phase"))?;
        Ok(())
    }

    pub async fn event(&mut self, event: Event<'_>) -> Result<(), CatalogError> {
        let epoch = match self.bumped {
            Some(e) => e,
            None => self.state().await?.epoch,
        } as i64;
        self.tx
            .execute(
                "INSERT INTO pgshift.events
                     (migration, actor, action, from_phase, to_phase, epoch, detail)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &event.migration,
                    &event.actor,
                    &event.action,
                    &event.from.map(Phase::name),
                    &event.to.map(Phase::name),
                    &epoch,
                    &event.detail,
                ],
            )
            .await
            .map_err(err("writing the event log"))?;
        Ok(())
    }

    /// The epoch this transaction will publish, if it bumped one.
    pub fn bumped(&self) -> Option<u64> {
        self.bumped
    }

    /// Commits; when the epoch moved, every instance is notified.
    pub async fn commit(self) -> Result<(), CatalogError> {
        if let Some(epoch) = self.bumped {
            self.tx
                .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &epoch.to_string()])
                .await
                .map_err(err("notifying the other instances"))?;
        }
        self.tx
            .commit()
            .await
            .map_err(err("committing the state change"))
    }
}

/// The two jobs a migration has a record of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Job {
    Backfill,
    Verify,
}

impl Job {
    pub fn column(self) -> &'static str {
        match self {
            Job::Backfill => "backfill",
            Job::Verify => "verify",
        }
    }

    /// The session advisory lock a job's runner holds: (class, key text hashed by the server).
    pub fn lock_key(self, migration: &str) -> (i32, String) {
        (JOB_LOCK_CLASS, format!("{}:{migration}", self.column()))
    }
}

/// Advisory lock class of the job runners (one lock per migration and job).
const JOB_LOCK_CLASS: i32 = 0x7067_6a62;

/// Takes the runner lock of `job` on `client`'s session; false when another session has it.
pub async fn try_lock_job(
    client: &Client,
    job: Job,
    migration: &str,
) -> Result<bool, CatalogError> {
    let (class, key) = job.lock_key(migration);
    Ok(client
        .query_one(
            "SELECT pg_try_advisory_lock($1, hashtext($2))",
            &[&class, &key],
        )
        .await
        .map_err(err("taking the job lock"))?
        .get(0))
}

/// What a runner's progress update found: the record's state now and the phase.
pub struct JobUpdate {
    pub state: String,
    pub phase: Phase,
}

/// Merges `patch` into the job record of run `run` (stamping `updated_at`, and `finished_at`
/// when `finished`); `None` when the record belongs to another run or is gone, or, for a
/// finishing update, when the job is no longer running (a pause or cancel won the race).
pub async fn update_job(
    client: &Client,
    name: &str,
    job: Job,
    run: &str,
    patch: &Value,
    finished: bool,
) -> Result<Option<JobUpdate>, CatalogError> {
    let row = client
        .query_opt(
            &format!(
                "UPDATE pgshift.migrations SET {0} = {0} || $3::jsonb
                     || jsonb_build_object('updated_at', extract(epoch FROM clock_timestamp()))
                     || CASE WHEN $4 THEN jsonb_build_object('finished_at',
                            extract(epoch FROM clock_timestamp())) ELSE '{{}}'::jsonb END
                 WHERE name = $1 AND {0}->>'run' = $2
                   AND (NOT $4 OR {0}->>'state' = 'running')
                 RETURNING {0}->>'state', phase",
                job.column()
            ),
            &[&name, &run, patch, &finished],
        )
        .await
        .map_err(err("recording job progress"))?;
    row.map(|r| {
        Ok(JobUpdate {
            state: r.get::<_, Option<String>>(0).unwrap_or_default(),
            phase: parse_phase(r.get(1))?,
        })
    })
    .transpose()
}

/// Jobs recorded as running whose runner lock nobody holds (name, job, run id): their
/// runner died. Read from `pg_locks`, so checking costs no extra connection.
pub async fn orphaned_jobs(client: &Client) -> Result<Vec<(String, Job, String)>, CatalogError> {
    let rows = client
        .query(
            "SELECT j.name, j.job, j.run FROM (
                 SELECT name, 'backfill' AS job, backfill->>'run' AS run
                 FROM pgshift.migrations WHERE backfill->>'state' = 'running'
                 UNION ALL
                 SELECT name, 'verify', verify->>'run'
                 FROM pgshift.migrations WHERE verify->>'state' = 'running') j
             WHERE NOT EXISTS (
                 SELECT 1 FROM pg_locks l
                 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                   AND l.database = (SELECT oid FROM pg_database
                                     WHERE datname = current_database())
                   AND l.classid = $1::int4::oid
                   AND l.objid = hashtext(j.job || ':' || j.name)::oid)",
            &[&JOB_LOCK_CLASS],
        )
        .await
        .map_err(err("reading the running jobs"))?;
    Ok(rows
        .iter()
        .map(|r| {
            let job = if r.get::<_, &str>(1) == "verify" {
                Job::Verify
            } else {
                Job::Backfill
            };
            (
                r.get(0),
                job,
                r.get::<_, Option<String>>(2).unwrap_or_default(),
            )
        })
        .collect())
}

/// One instance as recorded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstanceRow {
    pub id: String,
    pub host: String,
    pub pid: i32,
    pub epoch: u64,
    pub acked_epoch: u64,
    pub last_seen_s: f64,
    pub live: bool,
    /// Sessions inside a transaction begun under an older epoch, as the instance reported.
    pub holdouts: Value,
    pub sync_error: Option<String>,
}

/// What an instance reports with each heartbeat.
pub struct Heartbeat<'a> {
    pub id: &'a str,
    pub host: &'a str,
    pub pid: i32,
    pub epoch: u64,
    pub acked_epoch: u64,
    pub holdouts: Value,
    pub sync_error: Option<&'a str>,
}

pub async fn heartbeat(client: &Client, beat: &Heartbeat<'_>) -> Result<(), CatalogError> {
    client
        .execute(
            "INSERT INTO pgshift.instances
                 (id, host, pid, version, epoch, acked_epoch, holdouts, sync_error)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (id) DO UPDATE
             SET heartbeat_at = now(), epoch = excluded.epoch,
                 acked_epoch = excluded.acked_epoch, holdouts = excluded.holdouts,
                 sync_error = excluded.sync_error",
            &[
                &beat.id,
                &beat.host,
                &beat.pid,
                &env!("CARGO_PKG_VERSION"),
                &(beat.epoch as i64),
                &(beat.acked_epoch as i64),
                &beat.holdouts,
                &beat.sync_error,
            ],
        )
        .await
        .map_err(err("recording the heartbeat"))?;
    Ok(())
}

/// Every recorded instance, live ones first; rows silent for a day are removed.
pub async fn instances(client: &Client, lease: Duration) -> Result<Vec<InstanceRow>, CatalogError> {
    client
        .execute(
            "DELETE FROM pgshift.instances WHERE heartbeat_at < now() - interval '1 day'",
            &[],
        )
        .await
        .map_err(err("pruning pgshift.instances"))?;
    let rows = client
        .query(
            "SELECT id, host, pid, epoch, acked_epoch,
                    extract(epoch FROM now() - heartbeat_at)::float8, holdouts, sync_error
             FROM pgshift.instances ORDER BY heartbeat_at DESC, id",
            &[],
        )
        .await
        .map_err(err("reading pgshift.instances"))?;
    let lease = lease.as_secs_f64();
    let mut all: Vec<InstanceRow> = rows
        .iter()
        .map(|row| {
            let last_seen_s: f64 = row.get(5);
            InstanceRow {
                id: row.get(0),
                host: row.get(1),
                pid: row.get(2),
                epoch: row.get::<_, i64>(3) as u64,
                acked_epoch: row.get::<_, i64>(4) as u64,
                last_seen_s,
                live: last_seen_s < lease,
                holdouts: row.get(6),
                sync_error: row.get(7),
            }
        })
        .collect();
    all.sort_by_key(|i| !i.live);
    Ok(all)
}

/// Forgets an instance (graceful shutdown: it stops counting at once).
pub async fn remove_instance(client: &Client, id: &str) -> Result<(), CatalogError> {
    client
        .execute("DELETE FROM pgshift.instances WHERE id = $1", &[&id])
        .await
        .map_err(err("removing the instance"))?;
    Ok(())
}

/// One row of the event log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EventRow {
    pub id: i64,
    pub at: String,
    pub migration: Option<String>,
    pub actor: String,
    pub action: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub epoch: i64,
    pub detail: Option<String>,
}

/// The latest `limit` events (of one migration, when given), oldest first.
pub async fn events(
    client: &Client,
    migration: Option<&str>,
    limit: i64,
) -> Result<Vec<EventRow>, CatalogError> {
    let rows = client
        .query(
            "SELECT * FROM (
                 SELECT id, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
                        migration, actor, action, from_phase, to_phase, epoch, detail
                 FROM pgshift.events
                 WHERE $1::text IS NULL OR migration = $1
                 ORDER BY id DESC LIMIT $2) e
             ORDER BY id",
            &[&migration, &limit],
        )
        .await
        .map_err(err("reading pgshift.events"))?;
    Ok(rows
        .iter()
        .map(|row| EventRow {
            id: row.get(0),
            at: row.get(1),
            migration: row.get(2),
            actor: row.get(3),
            action: row.get(4),
            from: row.get(5),
            to: row.get(6),
            epoch: row.get(7),
            detail: row.get(8),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(backfill: Option<Value>, verify: Option<Value>) -> MigrationRow {
        MigrationRow {
            name: "m".into(),
            definition_hash: "h".into(),
            phase: Phase::Expand,
            epoch: 1,
            file_phase: None,
            backfill,
            verify,
        }
    }

    #[test]
    fn a_verify_counts_only_when_clean_and_after_the_backfill() {
        let done = json!({"state": "done", "finished_at": 100.0});
        assert_eq!(row(None, None).facts(), Facts::default());
        let clean_after = json!({"state": "clean", "started_at": 101.0});
        assert!(row(Some(done.clone()), Some(clean_after)).facts().verified);
        let clean_before = json!({"state": "clean", "started_at": 99.0});
        assert!(!row(Some(done.clone()), Some(clean_before)).facts().verified);
        let mismatched = json!({"state": "mismatch", "started_at": 101.0});
        assert!(!row(Some(done), Some(mismatched)).facts().verified);
        let running = json!({"state": "running", "finished_at": 100.0});
        let clean = json!({"state": "clean", "started_at": 101.0});
        assert!(!row(Some(running), Some(clean.clone())).facts().verified);
        let reverse = json!({"state": "done", "direction": "reverse", "finished_at": 100.0});
        // A forward verify says nothing about the old side.
        assert_eq!(
            row(Some(reverse.clone()), Some(clean)).facts(),
            Facts::default()
        );
        let clean_reverse = json!({"state": "clean", "direction": "reverse", "started_at": 101.0});
        let facts = row(Some(reverse), Some(clean_reverse)).facts();
        assert!(facts.reverse_verified && !facts.verified);
    }
}
