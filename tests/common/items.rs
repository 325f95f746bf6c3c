//! The column migration of the job tests: `items.qty` text → `qty_int` integer, whose `up`
//! leaves non-numeric quantities NULL. The tests create `items` themselves (row counts and
//! values differ); this module holds the migration's config.

use super::{ProxyConfig, cluster, control_toml};

/// The migration's name.
pub const ITEMS: &str = "items_qty_int";
/// `up` of [`ITEMS`].
pub const UP: &str = "CASE WHEN qty ~ '^[0-9]+$' THEN qty::integer END";

/// `[control]` and the [`ITEMS`] migration, in planned (its `expand_sql` adds `qty_int`).
pub fn items_toml(db: &str) -> String {
    format!(
        r#"{control}
[[migration]]
name = "{ITEMS}"
database = "{db}"
table = "public.items"
kind = "columns"
phase = "planned"
expand_sql = "ALTER TABLE items ADD COLUMN qty_int integer"
[[migration.columns]]
old = "qty"
new = "qty_int"
up = "{UP}"
down = "qty_int::text"
"#,
        control = control_toml()
    )
}

/// A config proxying to the test cluster with the [`ITEMS`] migration in planned.
pub fn items_config(db: &str) -> ProxyConfig {
    ProxyConfig::new(cluster()).extra(&items_toml(db))
}
