//! Catalog drift: DDL run outside pgshift on a migrated table (an old column dropped by hand
//! after complete, a column added) changes what `SELECT *` and an INSERT without a column list
//! mean, but the snapshot keeps the columns it was built with. [`drifted`] reads each table
//! again and names those whose shape changed; the control plane then moves the epoch, so every
//! instance builds its snapshot from the catalog again.

use super::Snapshot;
use crate::catalog::{self, CatalogError};
use crate::config::Config;
use crate::migration::TableShape;

/// The migrated tables of `snapshot` (column migrations' tables, both tables of each move)
/// whose live shape differs from the one the snapshot holds, as `schema.table`.
pub async fn drifted(config: &Config, snapshot: &Snapshot) -> Result<Vec<String>, CatalogError> {
    let mut changed = Vec::new();
    let mut databases: Vec<_> = snapshot.databases.iter().collect();
    databases.sort_by(|a, b| a.0.cmp(b.0));
    for (database, view) in databases {
        let shapes: Vec<&TableShape> = view
            .tables
            .iter()
            .map(|t| &t.shape)
            .chain(view.moves.iter().flat_map(|m| [&m.old, &m.new]))
            .collect();
        if shapes.is_empty() {
            continue;
        }
        let conn = catalog::connect(config, database).await?;
        for shape in shapes {
            let now = catalog::load_shape(&conn.client, &shape.name).await?;
            if now.as_ref() != Some(shape) {
                changed.push(shape.name.to_string());
            }
        }
    }
    Ok(changed)
}
