//! Table moves (`kind = "table"`) in the snapshot: both tables' shapes read from the catalog,
//! `expand_sql` run when the new table is missing on entering expand, every column of each
//! table resolved to the expression feeding it from the other one, and the checks of
//! docs/table-moves.md.

use std::collections::HashSet;

use super::{Ddl, EXPAND_ATTEMPTS, EXPAND_LOCK_TIMEOUT, SnapshotError};
use crate::catalog::{self, CatalogError, ControlConnection};
use crate::config::MigrationConfig;
use crate::migration::{Phase, QualifiedName, TableMove, TableShape, quote_ident};

/// Reads both tables and resolves the move. `entering_expand`: the migration was planned (or
/// unknown) in the snapshot in force, so `expand_sql` may run.
pub(super) async fn load(
    conn: &ControlConnection,
    m: &MigrationConfig,
    entering_expand: bool,
    ddl: Ddl,
) -> Result<Option<TableMove>, SnapshotError> {
    let old_name =
        QualifiedName::parse(&m.table).map_err(|e| SnapshotError::invalid(&m.name, e))?;
    let new_name = QualifiedName::parse(m.new_table.as_deref().unwrap_or_default())
        .map_err(|e| SnapshotError::invalid(&m.name, e))?;
    let shape = |name: QualifiedName| async move {
        catalog::load_shape(conn, &name)
            .await
            .map_err(SnapshotError::catalog(&m.name))
    };
    let Some(old) = shape(old_name.clone()).await? else {
        if m.phase == Phase::Complete {
            // complete_sql dropped or renamed it: the move is over, nothing left to rewrite.
            return Ok(None);
        }
        return Err(SnapshotError::invalid(
            &m.name,
            format!("table {old_name} does not exist"),
        ));
    };
    let mut new = shape(new_name.clone()).await?;
    if new.is_none()
        && entering_expand
        && m.phase == Phase::Expand
        && let Some(sql) = &m.expand_sql
    {
        if ddl == Ddl::Skip {
            tracing::info!(migration = %m.name, "expand_sql would create the new table");
            return Ok(None);
        }
        tracing::info!(migration = %m.name, table = %new_name, "running expand_sql");
        catalog::run_ddl(conn, sql, EXPAND_LOCK_TIMEOUT, EXPAND_ATTEMPTS)
            .await
            .map_err(SnapshotError::catalog(&m.name))?;
        new = shape(new_name.clone()).await?;
    }
    let Some(new) = new else {
        let hint = if m.expand_sql.is_some() {
            ""
        } else {
            " (create it, or give the migration an expand_sql)"
        };
        return Err(SnapshotError::invalid(
            &m.name,
            format!("new table {new_name} does not exist{hint}"),
        ));
    };
    let moved = resolve(m, old, new).map_err(|e| SnapshotError::invalid(&m.name, e))?;
    check_compiles(conn, &moved).await?;
    Ok(Some(moved))
}

/// Resolves every column of each table to its source in the other (docs/table-moves.md).
pub fn resolve(m: &MigrationConfig, old: TableShape, new: TableShape) -> Result<TableMove, String> {
    if old.name == new.name {
        return Err("table and new_table are the same table".into());
    }
    for k in &m.key {
        for shape in [&old, &new] {
            match shape.column(k) {
                None => {
                    return Err(format!(
                        "key column {k:?} does not exist in table {}",
                        shape.name
                    ));
                }
                // NULL never matches a key, so such rows could not be mirrored.
                Some(c) if !c.not_null => {
                    return Err(format!(
                        "key column {k:?} of table {} must be NOT NULL",
                        shape.name
                    ));
                }
                Some(_) => {}
            }
        }
    }
    let key: HashSet<&str> = m.key.iter().map(String::as_str).collect();
    for shape in [&old, &new] {
        if shape.key.is_empty() || !shape.key.iter().all(|c| key.contains(c.as_str())) {
            return Err(format!(
                "table {} needs a primary key (or unique key) made of key columns {:?}, so rows \
                 can be matched and upserted; it has {:?}",
                shape.name, m.key, shape.key
            ));
        }
    }
    let entry_for_new = |n: &str| m.columns.iter().find(|c| c.new.as_deref() == Some(n));
    let entry_for_old = |o: &str| m.columns.iter().find(|c| c.old == o);
    for c in &m.columns {
        if old.column(&c.old).is_none() {
            return Err(format!(
                "old column {:?} does not exist in table {}",
                c.old, old.name
            ));
        }
        if let Some(n) = &c.new
            && new.column(n).is_none()
        {
            return Err(format!(
                "new column {n:?} does not exist in table {}",
                new.name
            ));
        }
        if key.contains(c.old.as_str()) || c.new.as_deref().is_some_and(|n| key.contains(n)) {
            return Err(format!(
                "key column {:?} must map 1:1 (same name, same value) in both tables",
                c.old
            ));
        }
    }
    let mut new_from_old = Vec::new();
    for col in &new.columns {
        let source = match entry_for_new(&col.name) {
            Some(e) => Some(e.up.clone().unwrap_or_else(|| quote_ident(&e.old))),
            None if old.column(&col.name).is_some() && entry_for_old(&col.name).is_none() => {
                Some(quote_ident(&col.name))
            }
            None => None,
        };
        if source.is_none() && col.not_null && col.default.is_none() && !col.generated {
            return Err(format!(
                "NOT NULL column {:?} of {} has no default and nothing feeds it; map it with a \
                 [[migration.columns]] entry",
                col.name, new.name
            ));
        }
        new_from_old.push((col.name.clone(), source));
    }
    let mut old_from_new = Vec::new();
    for col in &old.columns {
        let source = match entry_for_old(&col.name) {
            Some(e) => match (&e.new, &e.down) {
                (_, Some(down)) => Some(down.clone()),
                (Some(n), None) => Some(quote_ident(n)),
                (None, None) => None,
            },
            None if new.column(&col.name).is_some() => Some(quote_ident(&col.name)),
            None => {
                return Err(format!(
                    "column {:?} of {} is missing from {}; map it with a [[migration.columns]] \
                     entry, or declare it dropped (an entry with old = {:?} and no new)",
                    col.name, old.name, new.name, col.name
                ));
            }
        };
        if source.is_none() && col.not_null && col.default.is_none() {
            return Err(format!(
                "NOT NULL column {:?} of {} is dropped without a default; give its entry a down \
                 (its value when a write naming {} adds a row)",
                col.name, old.name, new.name
            ));
        }
        old_from_new.push((col.name.clone(), source));
    }
    Ok(TableMove {
        name: m.name.clone(),
        database: m.database.clone(),
        phase: m.phase,
        old,
        new,
        key: m.key.clone(),
        new_from_old,
        old_from_new,
    })
}

/// The server parses, resolves and type-checks every expression against the real tables
/// without reading a row.
async fn check_compiles(conn: &ControlConnection, moved: &TableMove) -> Result<(), SnapshotError> {
    for (from, to, exprs) in [
        (&moved.old, &moved.new, &moved.new_from_old),
        (&moved.new, &moved.old, &moved.old_from_new),
    ] {
        for (column, expr) in exprs {
            let Some(expr) = expr else { continue };
            let target = &to.column(column).expect("resolved from the shape").type_sql;
            let sql = format!(
                "SELECT ({expr})::{target} FROM {} LIMIT 0",
                from.name.quoted()
            );
            conn.batch_execute(&sql)
                .await
                .map_err(|error| CatalogError::Statement {
                    context: format!(
                        "expression `{expr}` for column {column:?} of {} ({target}) does not \
                         compile against table {}",
                        to.name, from.name
                    ),
                    error,
                })
                .map_err(SnapshotError::catalog(&moved.name))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::migration::ColumnInfo;

    fn shape(name: &str, cols: &[(&str, bool, bool)], key: &[&str]) -> TableShape {
        TableShape {
            name: QualifiedName::parse(name).unwrap(),
            columns: cols
                .iter()
                .map(|(n, not_null, has_default)| ColumnInfo {
                    name: (*n).into(),
                    type_oid: 25,
                    type_sql: "text".into(),
                    not_null: *not_null,
                    default: has_default.then(|| "x".into()),
                    generated: false,
                    identity_always: false,
                })
                .collect(),
            key: key.iter().map(|k| (*k).into()).collect(),
        }
    }

    fn migration(columns: &str) -> MigrationConfig {
        let text = format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\nupstream = \"db:5432\"\n\
             [[migration]]\nname = \"m\"\ndatabase = \"app\"\nkind = \"table\"\n\
             table = \"orders\"\nnew_table = \"orders_v2\"\nkey = [\"id\"]\n{columns}"
        );
        Config::parse(&text).unwrap().migrations.remove(0)
    }

    const MAPPED: &str = "[[migration.columns]]\nold = \"total\"\nnew = \"total_cents\"\n\
                          up = \"total * 100\"\ndown = \"total_cents / 100.0\"\n\
                          [[migration.columns]]\nold = \"note\"\n";

    fn orders() -> TableShape {
        shape(
            "orders",
            &[
                ("id", true, true),
                ("total", true, false),
                ("note", false, false),
            ],
            &["id"],
        )
    }

    fn orders_v2() -> TableShape {
        shape(
            "orders_v2",
            &[("id", true, true), ("total_cents", true, false)],
            &["id"],
        )
    }

    #[test]
    fn columns_map_by_name_by_entry_or_not_at_all() {
        let moved = resolve(&migration(MAPPED), orders(), orders_v2()).unwrap();
        assert_eq!(
            moved.new_from_old,
            [
                ("id".to_owned(), Some("id".to_owned())),
                ("total_cents".to_owned(), Some("total * 100".to_owned())),
            ]
        );
        assert_eq!(
            moved.old_from_new,
            [
                ("id".to_owned(), Some("id".to_owned())),
                ("total".to_owned(), Some("total_cents / 100.0".to_owned())),
                ("note".to_owned(), None),
            ]
        );
    }

    #[test]
    fn unmapped_and_unfed_columns_are_load_errors() {
        let only_total = "[[migration.columns]]\nold = \"total\"\nnew = \"total_cents\"\n";
        let err = resolve(&migration(only_total), orders(), orders_v2()).unwrap_err();
        assert!(
            err.contains("\"note\"") && err.contains("declare it dropped"),
            "{err}"
        );

        let mut v2 = orders_v2();
        v2.columns.push(ColumnInfo {
            name: "currency".into(),
            type_oid: 25,
            type_sql: "text".into(),
            not_null: true,
            default: None,
            generated: false,
            identity_always: false,
        });
        let err = resolve(&migration(MAPPED), orders(), v2).unwrap_err();
        assert!(
            err.contains("\"currency\"") && err.contains("NOT NULL"),
            "{err}"
        );

        let mut strict = orders();
        strict.columns[2].not_null = true;
        let err = resolve(&migration(MAPPED), strict, orders_v2()).unwrap_err();
        assert!(err.contains("\"note\"") && err.contains("down"), "{err}");
    }

    #[test]
    fn each_table_needs_a_key_made_of_key_columns() {
        let mut keyless = orders_v2();
        keyless.key.clear();
        let err = resolve(&migration(MAPPED), orders(), keyless).unwrap_err();
        assert!(err.contains("primary key"), "{err}");
        let mut other = orders_v2();
        other.key = vec!["total_cents".into()];
        assert!(resolve(&migration(MAPPED), orders(), other).is_err());
        let renamed_key = "[[migration.columns]]\nold = \"id\"\nnew = \"total_cents\"\n";
        let err = resolve(&migration(renamed_key), orders(), orders_v2()).unwrap_err();
        assert!(err.contains("1:1"), "{err}");
    }
}
