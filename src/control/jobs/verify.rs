//! The verify runner: chunks of keys in order; per chunk, the count and md5 of both sides in
//! one statement ([`Mapping::compare_sql`]); a chunk that differs is compared again once, and
//! if it still differs its mismatching keys are listed row by row. Progress is merged into
//! the record after every chunk, the result at the end.

use std::sync::Arc;

use serde_json::json;
use tokio_postgres::types::ToSql;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::sql::{Direction, Mapping};
use super::{ControlPlane, VERIFY_MISMATCHES};
use crate::catalog::{self, ControlConnection, describe};
use crate::control::store::{self, Job};

/// Runs the verify recorded for `name`, holding the runner lock `lock`.
pub async fn run(
    plane: &Arc<ControlPlane>,
    name: &str,
    lock: ControlConnection,
    token: CancellationToken,
) {
    let record = match plane.row(name).await {
        Ok(row) => row.verify.unwrap_or_default(),
        Err(e) => {
            warn!(migration = name, error = %e, "verify cannot read its record");
            return;
        }
    };
    let run_id = record["run"].as_str().unwrap_or_default().to_owned();
    let direction = Direction::parse(record["direction"].as_str().unwrap_or("forward"));
    let chunk = record["chunk"]
        .as_u64()
        .unwrap_or(10_000)
        .clamp(1, u64::from(u32::MAX)) as u32;
    match compare(plane, name, &lock, &run_id, direction, chunk, &token).await {
        Ok(Some((mismatches, first_keys))) => {
            metrics::gauge!(VERIFY_MISMATCHES, "migration" => name.to_owned())
                .set(mismatches as f64);
            let state = if mismatches == 0 { "clean" } else { "mismatch" };
            let patch = json!({"state": state, "mismatches": mismatches,
                               "first_keys": first_keys});
            let _ = store::update_job(&lock, name, Job::Verify, &run_id, &patch, true).await;
            info!(migration = name, state, mismatches, "verify finished");
        }
        Ok(None) => info!(migration = name, "verify stopped"),
        Err(e) => {
            warn!(migration = name, error = %e, "verify failed");
            let patch = json!({"state": "failed", "error": e});
            let _ = store::update_job(&lock, name, Job::Verify, &run_id, &patch, true).await;
        }
    }
}

/// Compares every chunk; `None` when the run was stopped or replaced.
async fn compare(
    plane: &Arc<ControlPlane>,
    name: &str,
    state: &ControlConnection,
    run_id: &str,
    direction: Direction,
    chunk: u32,
    token: &CancellationToken,
) -> Result<Option<(u64, Vec<String>)>, String> {
    let config = plane.config_now().await;
    let m = ControlPlane::migration_config(&config, name)?;
    let mapping = Mapping::resolve(&plane.snapshots.load(), &m.database, name, direction)?;
    let db = catalog::connect(&config, &m.database)
        .await
        .map_err(|e| e.to_string())?;
    let first_n = config.jobs.verify_first_keys as usize;
    let estimate: f64 = db
        .query_one(&mapping.estimate_sql(), &[])
        .await
        .map_err(|e| describe(&e))?
        .get(0);
    let start = json!({"rows_total": estimate.max(0.0) as i64, "runner": plane.instance});
    if store::update_job(state, name, Job::Verify, run_id, &start, false)
        .await
        .map_err(|e| e.to_string())?
        .is_none()
    {
        return Ok(None);
    }
    let (end_first, end_next) = (
        mapping.chunk_end_sql(chunk, false),
        mapping.chunk_end_sql(chunk, true),
    );
    let mut lower: Option<Vec<String>> = None;
    let mut rows_checked: i64 = 0;
    let mut chunks: i64 = 0;
    let mut mismatches: u64 = 0;
    let mut first_keys: Vec<String> = Vec::new();
    loop {
        if token.is_cancelled() {
            return Ok(None);
        }
        let upper: Option<Vec<String>> = {
            let sql = if lower.is_some() {
                &end_next
            } else {
                &end_first
            };
            let params = texts(lower.as_deref().unwrap_or_default());
            db.query_opt(sql.as_str(), &params)
                .await
                .map_err(|e| describe(&e))?
                .map(|r| r.get(0))
        };
        let mut bounds: Vec<String> = lower.clone().unwrap_or_default();
        bounds.extend(upper.clone().unwrap_or_default());
        let params = texts(&bounds);
        let compare_sql = mapping.compare_sql(lower.is_some(), upper.is_some());
        let mut equal = false;
        let mut source_rows = 0;
        for _ in 0..2 {
            let row = db
                .query_one(compare_sql.as_str(), &params)
                .await
                .map_err(|e| describe(&e))?;
            let (sc, sh, tc, th): (i64, String, i64, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            source_rows = sc;
            if sc == tc && sh == th {
                equal = true;
                break;
            }
        }
        if !equal {
            let rows = db
                .query(
                    mapping
                        .mismatches_sql(lower.is_some(), upper.is_some())
                        .as_str(),
                    &params,
                )
                .await
                .map_err(|e| describe(&e))?;
            mismatches += rows.len() as u64;
            for r in rows {
                if first_keys.len() < first_n {
                    first_keys.push(r.get(0));
                }
            }
        }
        rows_checked += source_rows;
        chunks += 1;
        let patch = json!({"rows_checked": rows_checked, "chunks": chunks,
                           "mismatches": mismatches, "first_keys": first_keys});
        match store::update_job(state, name, Job::Verify, run_id, &patch, false)
            .await
            .map_err(|e| e.to_string())?
        {
            Some(u) if u.state == "running" => {}
            _ => return Ok(None),
        }
        match upper {
            Some(u) => lower = Some(u),
            None => return Ok(Some((mismatches, first_keys))),
        }
    }
}

fn texts(values: &[String]) -> Vec<&(dyn ToSql + Sync)> {
    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}
