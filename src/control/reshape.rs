//! `ctl reload` (and SIGHUP) also re-read the migrated tables: DDL run outside pgshift (an old
//! column dropped by hand after complete, a column added) moves the epoch, so that every
//! instance builds its snapshot from the catalog again (see [`snapshot::drifted`]).

use tracing::info;

use super::store::{Event, Txn};
use super::{ControlPlane, Source};
use crate::snapshot;

impl ControlPlane {
    /// Compares the snapshot in force with the catalog; when a migrated table's columns
    /// changed, bumps the epoch (unless another change already did) with a `reshape` event.
    /// Returns the tables that changed.
    pub(super) async fn reshape(&self) -> Result<Vec<String>, String> {
        let Some(db) = self.control_db.clone() else {
            return Ok(Vec::new());
        };
        let current = self.snapshots.load();
        let config = self.inner.lock().await.config.clone();
        let changed = snapshot::drifted(&config, &current)
            .await
            .map_err(|e| format!("cannot re-read the migrated tables: {e}"))?;
        if changed.is_empty() {
            return Ok(changed);
        }
        let detail = format!("columns changed outside pgshift: {}", changed.join(", "));
        let mut inner = self.inner.lock().await;
        let client = inner.client(&db).await.map_err(|e| e.to_string())?;
        let mut txn = Txn::begin(client).await.map_err(|e| e.to_string())?;
        let state = txn.state().await.map_err(|e| e.to_string())?;
        // A newer epoch (another instance's reshape, a phase change) rebuilds from the catalog
        // anyway.
        if state.epoch == current.epoch {
            txn.bump_epoch().await.map_err(|e| e.to_string())?;
            txn.event(Event {
                migration: None,
                actor: &self.actor(Source::Config),
                action: "reshape",
                from: None,
                to: None,
                detail: Some(&detail),
            })
            .await
            .map_err(|e| e.to_string())?;
        }
        txn.commit().await.map_err(|e| e.to_string())?;
        info!(tables = %changed.join(", "), "migrated tables changed outside pgshift; new epoch");
        Ok(changed)
    }
}
