//! What `ctl status` and `ctl events` show: the config's migrations with their recorded phase
//! and job records, every instance with its acknowledged epoch, and the event log.

use std::time::Instant;

use serde_json::{Value, json};

use super::store::{self, MigrationRow};
use super::{ControlPlane, lock};
use crate::config::MigrationConfig;
use crate::migration::Phase;

impl ControlPlane {
    /// The `status` reply (DESIGN §4).
    pub async fn status(&self) -> Value {
        let config = self.inner.lock().await.config.clone();
        let mut control_error = None;
        let state = match self.control_db {
            Some(_) => match self.state().await {
                Ok(state) => Some(state),
                Err(e) => {
                    control_error = Some(e.to_string());
                    None
                }
            },
            None => None,
        };
        // Taken after the state: the epoch in force is then never older than the phases shown
        // unless this instance has not caught up yet.
        let snapshot = self.snapshots.load();
        let instances = match self.control_db {
            Some(_) => match self.instances(self.base.control.instance_lease).await {
                Ok(list) => serde_json::to_value(list).unwrap_or(Value::Null),
                Err(e) => {
                    control_error.get_or_insert(e.to_string());
                    json!([])
                }
            },
            None => json!([{"id": self.instance, "host": self.host, "epoch": snapshot.epoch,
                            "acked_epoch": self.sessions.acknowledged(snapshot.epoch).0,
                            "last_seen_s": 0.0, "live": true}]),
        };
        let now = Instant::now();
        let migrations: Vec<Value> = config
            .migrations
            .iter()
            .map(|m| {
                let row = state.as_ref().and_then(|s| s.migrations.get(&m.name));
                migration_status(m, row, snapshot.phase(&m.name), |name| {
                    self.metrics.old_names.recent(name, now)
                })
            })
            .collect();
        json!({
            "ok": true,
            "instance": self.instance,
            "epoch": snapshot.epoch,
            "config_file": self.path.as_ref().map(|p| p.display().to_string()),
            "config_error": *lock(&self.config_error),
            "sync_error": *lock(&self.sync_error),
            "control_error": control_error,
            "state_database": self.control_db,
            "migrations": migrations,
            "instances": instances,
        })
    }

    /// The event log (latest `limit`, optionally of one migration).
    pub async fn events(&self, migration: Option<&str>, limit: i64) -> Result<Value, String> {
        let db = self
            .control_db
            .clone()
            .ok_or_else(|| "no migrations are configured".to_owned())?;
        let mut inner = self.inner.lock().await;
        let client = inner.client(&db).await.map_err(|e| e.to_string())?;
        let events = store::events(client, migration, limit)
            .await
            .map_err(|e| e.to_string())?;
        Ok(serde_json::to_value(events).unwrap_or(Value::Null))
    }
}

/// One migration's entry of the `status` reply.
fn migration_status(
    m: &MigrationConfig,
    row: Option<&MigrationRow>,
    local_phase: Option<Phase>,
    old_names: impl Fn(&str) -> u64,
) -> Value {
    let mut backfill = json!({"state": "none", "rows_done": 0, "rows_total": 0, "rate": 0,
                              "eta_s": null});
    let mut verify = json!({"state": "none", "mismatches": 0, "first_keys": []});
    if let Some(r) = row {
        overlay(&mut backfill, r.backfill.as_ref());
        overlay(&mut verify, r.verify.as_ref());
    }
    json!({
        "name": m.name,
        "kind": match m.kind { crate::config::MigrationKind::Columns => "columns",
                               crate::config::MigrationKind::Table => "table" },
        "database": m.database,
        "table": m.table,
        "phase": row.map(|r| r.phase).or(local_phase).map(Phase::name),
        "epoch": row.map(|r| r.epoch),
        "file_phase": m.phase.name(),
        "backfill": backfill,
        "verify": verify,
        "old_name_statements_5m": old_names(&m.name),
    })
}

fn overlay(base: &mut Value, extra: Option<&Value>) {
    if let (Some(base), Some(Value::Object(extra))) = (base.as_object_mut(), extra) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
}

pub(super) fn describe_lagging(i: &store::InstanceRow, epoch: u64) -> String {
    let mut s = format!(
        "instance {} on {} has acknowledged epoch {} (needs {epoch}; serving {})",
        i.id, i.host, i.acked_epoch, i.epoch
    );
    if let Some(e) = &i.sync_error {
        s.push_str(&format!(", cannot follow: {e}"));
    }
    if let Some(sessions) = i.holdouts.as_array().filter(|a| !a.is_empty()) {
        let list: Vec<String> = sessions
            .iter()
            .map(|v| {
                format!(
                    "{} (user {}, application_name {:?}, epoch {}, transaction open {:.1}s)",
                    v["addr"].as_str().unwrap_or("?"),
                    v["user"].as_str().unwrap_or("?"),
                    v["application_name"].as_str().unwrap_or(""),
                    v["epoch"],
                    v["transaction_age_s"].as_f64().unwrap_or(0.0)
                )
            })
            .collect();
        s.push_str(&format!(", held back by session(s) {}", list.join(", ")));
    }
    s
}
