//! A sample migrated table shared by the engine's unit tests and the criterion benches:
//! `public.users` with a rename (`user_name` → `display_name`) and a type change
//! (`age` text → `age_int` integer).

use std::sync::Arc;

use crate::migration::{
    ColumnInfo, ColumnPair, ColumnsMigration, MigratedTable, Phase, QualifiedName, TableShape,
};

fn col(name: &str, oid: u32, ty: &str) -> ColumnInfo {
    ColumnInfo {
        name: name.into(),
        type_oid: oid,
        type_sql: ty.into(),
        not_null: false,
        default: None,
    }
}

/// The sample table with each migration in the given phase.
pub fn users_table(rename: Phase, retype: Phase) -> MigratedTable {
    let shape = TableShape {
        name: QualifiedName::parse("public.users").unwrap(),
        columns: vec![
            col("id", 23, "integer"),
            col("user_name", 25, "text"),
            col("age", 25, "text"),
            col("display_name", 25, "text"),
            col("age_int", 23, "integer"),
        ],
        key: vec!["id".into()],
    };
    let m = |name: &str, phase, old: &str, new: &str, up: &str, down: &str| {
        Arc::new(ColumnsMigration {
            name: name.into(),
            database: "app".into(),
            table: shape.name.clone(),
            phase,
            pairs: vec![ColumnPair {
                old: old.into(),
                new: new.into(),
                up: up.into(),
                down: down.into(),
            }],
        })
    };
    MigratedTable {
        shape: shape.clone(),
        migrations: vec![
            m(
                "users_display_name",
                rename,
                "user_name",
                "display_name",
                "user_name",
                "display_name",
            ),
            m(
                "users_age_int",
                retype,
                "age",
                "age_int",
                "CASE WHEN age ~ '^[0-9]+$' THEN age::integer END",
                "age_int::text",
            ),
        ],
    }
}
