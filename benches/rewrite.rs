//! Rewrite-engine costs: the pre-filter on passthrough statements, a cached rewrite (the same
//! text, and the same shape with other inlined constants), and cold parse+rewrite of typical
//! statements and of a table-move INSERT (DESIGN §7). Run with `cargo bench --bench rewrite`.

use criterion::{Criterion, criterion_group, criterion_main};
use pgshift::migration::Phase;
use pgshift::rewrite::{Rewriter, fixtures};
use std::hint::black_box;

fn rewriter() -> Rewriter {
    Rewriter::new(&[fixtures::users_table(Phase::Expand, Phase::Expand)], &[]).unwrap()
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
    let moves = Rewriter::new(&[], &[fixtures::orders_move(Phase::Expand)]).unwrap();
    let move_insert = "INSERT INTO orders (id, customer, total) VALUES ($1, $2, $3)";
    assert!(matches!(
        moves.rewrite(move_insert),
        pgshift::rewrite::Outcome::Rewritten(_)
    ));
    c.bench_function("rewrite_cold/table_move_insert", |b| {
        b.iter(|| moves.rewrite(black_box(move_insert)))
    });
    rw.rewrite_cached(update, &[]);
    c.bench_function("rewrite_cached/update", |b| {
        b.iter(|| rw.rewrite_cached(black_box(update), &[]))
    });
    // A simple-protocol client inlining its values: every text is new, the shape is cached.
    let inlined: Vec<String> = (0..1000)
        .map(|i| format!("UPDATE users SET user_name = 'user {i}' WHERE id = {i}"))
        .collect();
    let mut next = 0;
    c.bench_function("rewrite_cached/update_inlined_constants", |b| {
        b.iter(|| {
            next = (next + 1) % inlined.len();
            rw.rewrite_cached(black_box(&inlined[next]), &[])
        })
    });
}

criterion_group!(rewrite_benches, benches);
criterion_main!(rewrite_benches);
