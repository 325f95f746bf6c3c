//! Samples shared by the engine's unit tests and the criterion benches: `public.users` with a
//! rename (`user_name` → `display_name`) and a type change (`age` text → `age_int` integer),
//! and the table move `public.orders` → `public.orders_v2` (`total` numeric → `total_cents`
//! bigint, `note` dropped).

use std::sync::Arc;

use crate::migration::{
    ColumnInfo, ColumnPair, ColumnsMigration, MigratedTable, Phase, QualifiedName, TableMove,
    TableShape,
};

fn col(name: &str, oid: u32, ty: &str) -> ColumnInfo {
    ColumnInfo {
        name: name.into(),
        type_oid: oid,
        type_sql: ty.into(),
        not_null: false,
        default: None,
        generated: false,
        identity_always: false,
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

/// The sample table move in `phase`.
pub fn orders_move(phase: Phase) -> Arc<TableMove> {
    let shape = |name: &str, columns: Vec<ColumnInfo>| TableShape {
        name: QualifiedName::parse(name).unwrap(),
        columns,
        key: vec!["id".into()],
    };
    let some = |s: &str| Some(s.to_owned());
    Arc::new(TableMove {
        name: "orders_v2".into(),
        database: "app".into(),
        phase,
        old: shape(
            "public.orders",
            vec![
                col("id", 20, "bigint"),
                col("customer", 25, "text"),
                col("total", 1700, "numeric(12,2)"),
                col("note", 25, "text"),
            ],
        ),
        new: shape(
            "public.orders_v2",
            vec![
                col("id", 20, "bigint"),
                col("customer", 25, "text"),
                col("total_cents", 20, "bigint"),
            ],
        ),
        key: vec!["id".into()],
        new_from_old: vec![
            ("id".into(), some("id")),
            ("customer".into(), some("customer")),
            ("total_cents".into(), some("(total * 100)::bigint")),
        ],
        old_from_new: vec![
            ("id".into(), some("id")),
            ("customer".into(), some("customer")),
            ("total".into(), some("total_cents / 100.0")),
            ("note".into(), None),
        ],
    })
}
