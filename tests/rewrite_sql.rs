//! The rewrite engine's output run on a real PostgreSQL (directly, no proxy): rewritten writes
//! leave both sides equal, volatile values land identically on both, reads answer under both
//! names, and prepared rewritten statements keep the client's parameter types.

mod common;

use common::fresh_database;
use pgshift::migration::Phase;
use pgshift::rewrite::{Outcome, Rewriter, fixtures};
use tokio_postgres::Client;

const SCHEMA: &str = "CREATE TABLE users (id integer PRIMARY KEY, user_name text, age text, display_name text, age_int integer)";

fn rewrite(rw: &Rewriter, sql: &str) -> String {
    match rw.rewrite(sql) {
        Outcome::Rewritten(s) => s,
        Outcome::Unchanged => sql.to_owned(),
        Outcome::Refused(r) => panic!("{sql}: refused: {}", r.message()),
    }
}

async fn sides(
    client: &Client,
) -> Vec<(
    i32,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i32>,
)> {
    client
        .query(
            "SELECT id, user_name, display_name, age, age_int FROM users ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expand_writes_keep_both_sides_equal_on_real_postgres() {
    let db = fresh_database("rewrite_expand").await;
    let client = db.connect().await;
    client.batch_execute(SCHEMA).await.unwrap();
    let rw = Rewriter::new(&[fixtures::users_table(Phase::Expand, Phase::Expand)], &[]).unwrap();

    let old_app = rewrite(
        &rw,
        "INSERT INTO users (id, user_name, age) VALUES (1, 'ann', '42'), (2, gen_random_uuid()::text, 'x')",
    );
    client.batch_execute(&old_app).await.unwrap();
    let new_app = rewrite(
        &rw,
        "INSERT INTO users (id, display_name, age_int) VALUES ($1, $2, $3)",
    );
    client
        .execute(&new_app, &[&3i32, &"bob", &7i32])
        .await
        .unwrap();
    let update = rewrite(&rw, "UPDATE users SET age = $1 WHERE display_name = $2");
    let n = client.execute(&update, &[&"50", &"ann"]).await.unwrap();
    assert_eq!(n, 1, "row count of the rewritten UPDATE");

    let rows = sides(&client).await;
    assert_eq!(
        rows[0],
        (
            1,
            Some("ann".into()),
            Some("ann".into()),
            Some("50".into()),
            Some(50)
        )
    );
    // The volatile value was evaluated once: both sides hold the same uuid.
    assert!(rows[1].1.is_some() && rows[1].1 == rows[1].2, "{rows:?}");
    assert_eq!((rows[1].3.as_deref(), rows[1].4), (Some("x"), None));
    assert_eq!(
        rows[2],
        (
            3,
            Some("bob".into()),
            Some("bob".into()),
            Some("7".into()),
            Some(7)
        )
    );

    // Reads answer under both names from the old side, new names with the new types.
    client
        .batch_execute("UPDATE users SET display_name = 'stale', age_int = -1 WHERE id = 1")
        .await
        .unwrap();
    let read = rewrite(
        &rw,
        "SELECT u.display_name, u.age_int, u.user_name FROM users u WHERE u.id = 1",
    );
    let row = client.query_one(&read, &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "ann");
    assert_eq!(row.get::<_, i32>(1), 50);
    assert_eq!(row.columns()[1].type_(), &tokio_postgres::types::Type::INT4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewritten_statements_keep_the_clients_parameter_types() {
    let db = fresh_database("rewrite_params").await;
    let client = db.connect().await;
    client.batch_execute(SCHEMA).await.unwrap();
    let rw = Rewriter::new(&[fixtures::users_table(Phase::Expand, Phase::Expand)], &[]).unwrap();
    for sql in [
        "INSERT INTO users (id, user_name, age) VALUES ($1, $2, $3)",
        "INSERT INTO users (id, user_name, age) VALUES ($1, upper($2), $3)",
        "UPDATE users SET age = $1 WHERE id = $2",
        "INSERT INTO users (id, display_name, age_int) VALUES ($1, $2, $3)",
        "SELECT id FROM users WHERE age_int = $1 AND display_name = $2",
    ] {
        let original = client.prepare(sql).await.unwrap();
        let rewritten = client.prepare(&rewrite(&rw, sql)).await.unwrap();
        assert_eq!(original.params(), rewritten.params(), "{sql}");
        let names = |s: &tokio_postgres::Statement| {
            s.columns()
                .iter()
                .map(|c| (c.name().to_owned(), c.type_().clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&original), names(&rewritten), "{sql}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_reads_the_new_side_under_old_names_with_old_types() {
    let db = fresh_database("rewrite_switch").await;
    let client = db.connect().await;
    client.batch_execute(SCHEMA).await.unwrap();
    client
        .batch_execute("INSERT INTO users VALUES (1, 'old', '1', 'new', 2)")
        .await
        .unwrap();
    let rw = Rewriter::new(&[fixtures::users_table(Phase::Switch, Phase::Switch)], &[]).unwrap();
    let row = client
        .query_one(&rewrite(&rw, "SELECT user_name, age FROM users"), &[])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("new".into(), "2".into())
    );
    assert_eq!(row.columns()[1].type_(), &tokio_postgres::types::Type::TEXT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn computed_update_values_are_evaluated_once_per_row_on_real_postgres() {
    let db = fresh_database("rewrite_update_once").await;
    let client = db.connect().await;
    client.batch_execute(SCHEMA).await.unwrap();
    client
        .batch_execute("INSERT INTO users (id, user_name, age) SELECT g, 'u' || g, '-1' FROM generate_series(1, 50) g")
        .await
        .unwrap();
    let rw = Rewriter::new(&[fixtures::users_table(Phase::Expand, Phase::Expand)], &[]).unwrap();
    let n = client
        .execute(
            &rewrite(
                &rw,
                "UPDATE users SET user_name = md5(random()::text), age = '7' WHERE id > 0",
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(n, 50);
    let rows = sides(&client).await;
    for (id, old, new, age, age_int) in &rows {
        assert_eq!(old, new, "row {id}: both sides hold the same value");
        assert_eq!((age.as_deref(), *age_int), (Some("7"), Some(7)), "row {id}");
    }
    let distinct: i64 = client
        .query_one("SELECT count(DISTINCT user_name) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(distinct, 50, "random() is still evaluated per row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upserts_and_tuple_updates_keep_both_sides_equal_on_real_postgres() {
    let db = fresh_database("rewrite_upsert").await;
    let client = db.connect().await;
    client.batch_execute(SCHEMA).await.unwrap();
    let expand =
        Rewriter::new(&[fixtures::users_table(Phase::Expand, Phase::Expand)], &[]).unwrap();
    let upsert = rewrite(
        &expand,
        "INSERT INTO users AS u (id, user_name, age) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET user_name = EXCLUDED.user_name || '!', age = EXCLUDED.age",
    );
    client
        .execute(&upsert, &[&1i32, &"ann", &"30"])
        .await
        .unwrap();
    client
        .execute(&upsert, &[&1i32, &"ann", &"31"])
        .await
        .unwrap();
    let tuple = rewrite(
        &expand,
        "UPDATE users SET (user_name, age) = (display_name || '?', '5') WHERE id = 1",
    );
    client.batch_execute(&tuple).await.unwrap();
    let rows = sides(&client).await;
    assert_eq!(
        rows,
        [(
            1,
            Some("ann!?".into()),
            Some("ann!?".into()),
            Some("5".into()),
            Some(5)
        )]
    );

    // Contract: the upsert writes only the new side, EXCLUDED's old name translated.
    let contract = Rewriter::new(
        &[fixtures::users_table(Phase::Contract, Phase::Contract)],
        &[],
    )
    .unwrap();
    let upsert = rewrite(
        &contract,
        "INSERT INTO users (id, user_name, age) VALUES (1, 'zed', '9') ON CONFLICT (id) DO UPDATE SET user_name = excluded.user_name, age = excluded.age",
    );
    client.batch_execute(&upsert).await.unwrap();
    let rows = sides(&client).await;
    assert_eq!(rows[0].2.as_deref(), Some("zed"));
    assert_eq!(rows[0].4, Some(9));
    assert_eq!(
        rows[0].1.as_deref(),
        Some("ann!?"),
        "the old side is no longer written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_select_copies_rows_to_both_sides_on_real_postgres() {
    let db = fresh_database("rewrite_insert_select").await;
    let client = db.connect().await;
    client.batch_execute(SCHEMA).await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE people (id int, name text); INSERT INTO people VALUES (1, 'a'), (2, 'b')",
        )
        .await
        .unwrap();
    let rw = Rewriter::new(&[fixtures::users_table(Phase::Expand, Phase::Expand)], &[]).unwrap();
    let n = client
        .execute(
            &rewrite(&rw, "INSERT INTO users (id, user_name, age) SELECT id, name || md5(random()::text), '4' FROM people"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(n, 2, "row count of the rewritten INSERT … SELECT");
    let n = client
        .execute(
            &rewrite(
                &rw,
                "INSERT INTO users (id, user_name) SELECT id + 10, display_name FROM users",
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(n, 2);
    for (id, old, new, age, age_int) in sides(&client).await {
        assert!(old.is_some() && old == new, "row {id}: {old:?} vs {new:?}");
        if id < 10 {
            assert_eq!((age.as_deref(), age_int), (Some("4"), Some(4)));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_modifying_ctes_dual_write_on_real_postgres() {
    let db = fresh_database("rewrite_cte").await;
    let client = db.connect().await;
    client.batch_execute(SCHEMA).await.unwrap();
    client
        .batch_execute("INSERT INTO users (id, user_name) VALUES (1, 'a'), (2, 'b')")
        .await
        .unwrap();
    let rw = Rewriter::new(&[fixtures::users_table(Phase::Expand, Phase::Expand)], &[]).unwrap();
    let rows = client
        .query(
            &rewrite(
                &rw,
                "WITH w AS (UPDATE users SET user_name = upper(user_name) WHERE display_name = 'a' RETURNING id, display_name), \
                 n AS (INSERT INTO users (id, user_name) VALUES (3, 'c') RETURNING id) \
                 SELECT w.id, w.display_name FROM w UNION ALL SELECT n.id, NULL FROM n ORDER BY 1",
            ),
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(i32, Option<String>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, [(1, Some("A".into())), (3, None)]);
    let sides = sides(&client).await;
    assert_eq!(sides[0].1, sides[0].2);
    assert_eq!(sides[0].2.as_deref(), Some("A"));
    assert_eq!(sides[2].1.as_deref(), Some("c"));
    assert_eq!(sides[2].2.as_deref(), Some("c"));
}
