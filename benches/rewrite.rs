//! Rewrite-engine costs: the pre-filter on passthrough statements, a cached rewrite, and cold
//! parse+rewrite of typical statements (DESIGN §7). Run with `cargo bench --bench rewrite`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use pgshift::migration::{
    ColumnInfo, ColumnPair, ColumnsMigration, MigratedTable, Phase, QualifiedName, TableShape,
};
use pgshift::rewrite::{RewriteCache, Rewriter};

fn rewriter() -> Rewriter {
    let col = |name: &str, ty: &str| ColumnInfo {
        name: name.into(),
        type_oid: 0,
        type_sql: ty.into(),
        not_null: false,
        default: None,
    };
    let shape = TableShape {
        name: QualifiedName::parse("public.users").unwrap(),
        columns: vec![
            col("id", "integer"),
            col("user_name", "text"),
            col("age", "text"),
            col("display_name", "text"),
            col("age_int", "integer"),
        ],
        key: vec!["id".into()],
    };
    let migration = |name: &str, old: &str, new: &str, up: &str, down: &str| {
        Arc::new(ColumnsMigration {
            name: name.into(),
            database: "app".into(),
            table: shape.name.clone(),
            phase: Phase::Expand,
            pairs: vec![ColumnPair {
                old: old.into(),
                new: new.into(),
                up: up.into(),
                down: down.into(),
            }],
        })
    };
    let table = MigratedTable {
        shape: shape.clone(),
        migrations: vec![
            migration(
                "rename",
                "user_name",
                "display_name",
                "user_name",
                "display_name",
            ),
            migration(
                "retype",
                "age",
                "age_int",
                "CASE WHEN age ~ '^[0-9]+$' THEN age::integer END",
                "age_int::text",
            ),
        ],
    };
    Rewriter::new(&[table]).unwrap()
}

fn benches(c: &mut Criterion) {
    let rw = rewriter();
    let short = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
    let long = format!(
        "SELECT {} FROM pgbench_accounts WHERE aid = $1",
        (0..800)
            .map(|i| format!("col{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(long.len() >= 4096);
    c.bench_function("prefilter/passthrough_short", |b| {
        b.iter(|| rw.may_touch(black_box(short)))
    });
    c.bench_function("prefilter/passthrough_4k", |b| {
        b.iter(|| rw.may_touch(black_box(&long)))
    });

    let insert = "INSERT INTO users (id, user_name, age) VALUES ($1, $2, $3)";
    let update = "UPDATE users SET user_name = $1 WHERE id = $2 AND display_name IS NOT NULL";
    let join = "SELECT u.id, u.display_name, o.total FROM users u JOIN orders o ON o.user_id = u.id WHERE u.age_int > $1 ORDER BY o.total DESC LIMIT 10";
    for (name, sql) in [
        ("insert", insert),
        ("update", update),
        ("select_join", join),
    ] {
        c.bench_function(&format!("rewrite_cold/{name}"), |b| {
            b.iter(|| rw.rewrite(black_box(sql)))
        });
    }
    let cache = RewriteCache::new(10_000);
    c.bench_function("rewrite_cached/update", |b| {
        b.iter(|| cache.get_or_insert(1, black_box(update), &[], || rw.rewrite(update)))
    });
}

criterion_group!(rewrite_benches, benches);
criterion_main!(rewrite_benches);
