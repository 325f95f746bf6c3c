//! The scenario (SCENARIO.md) with sqlx: one `PgConnection` (no pool) kept open, plain
//! `sqlx::query(…).bind(…)`. sqlx prepares each statement on first use as a named server-side
//! statement (Parse with the bound values' type OIDs, then Describe), caches it per connection
//! by SQL text with the described column types, and from then on only sends Bind/Execute
//! with binary parameters and binary results; every statement of the scenario is first used
//! in expand, so the cached statements are the ones reused after the flips.
//!
//! On top: a transaction (`Connection::begin`) whose insert is rolled back, in every phase.

use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{Connection, Row};

use super::Scenario;

const INS_OLD: &str = "INSERT INTO users (id, user_name, age) VALUES ($1, $2, $3)";
const INS_NEW: &str = "INSERT INTO users (id, display_name, age_int) VALUES ($1, $2, $3)";
const SEL_OLD: &str = "SELECT user_name, age FROM users WHERE id = $1";
const SEL_NEW: &str = "SELECT display_name, age_int FROM users WHERE id = $1";
const UPD_OLD: &str = "UPDATE users SET user_name = $1 WHERE id = $2";
const UPD_NEW: &str = "UPDATE users SET age_int = $1 WHERE id = $2";
const DEL: &str = "DELETE FROM users WHERE id = $1";
const COUNT: &str = "SELECT count(*) FROM users";

pub async fn run(scenario: &Scenario) {
    let mut app = PgConnection::connect(&scenario.proxy_url())
        .await
        .unwrap_or_else(|e| panic!("sqlx: connect through pgshift: {e}"));
    let mut direct = PgConnection::connect(&scenario.direct_url())
        .await
        .unwrap_or_else(|e| panic!("sqlx: connect directly: {e}"));
    for (done, (phase, base)) in [("expand", 100), ("switch", 200), ("contract", 300)]
        .into_iter()
        .enumerate()
    {
        if phase != "expand" {
            scenario.flip(phase).await;
        }
        let app = &mut app;
        let (a, b, c) = (base + 1, base + 2, base + 3);
        let ins_old = |id: i32, name: &'static str, age: &'static str| {
            sqlx::query(INS_OLD).bind(id).bind(name).bind(age)
        };

        // 1.
        assert_eq!(
            affected(app, ins_old(a, "old-a", "7"), phase).await,
            1,
            "{phase}"
        );
        let ins_new = sqlx::query(INS_NEW).bind(b).bind("new-b").bind(8i32);
        assert_eq!(affected(app, ins_new, phase).await, 1, "{phase}");
        // 2.
        assert_eq!(
            sel_new(app, a, phase).await,
            Some(("old-a".into(), 7)),
            "{phase}"
        );
        assert_eq!(
            sel_old(app, b, phase).await,
            Some(("new-b".into(), "8".into())),
            "{phase}"
        );
        // 3.
        let upd_old = sqlx::query(UPD_OLD).bind("renamed").bind(b);
        assert_eq!(affected(app, upd_old, phase).await, 1, "{phase}");
        assert_eq!(
            sel_new(app, b, phase).await,
            Some(("renamed".into(), 8)),
            "{phase}"
        );
        // 4.
        let upd_new = sqlx::query(UPD_NEW).bind(9i32).bind(a);
        assert_eq!(affected(app, upd_new, phase).await, 1, "{phase}");
        assert_eq!(
            sel_old(app, a, phase).await,
            Some(("old-a".into(), "9".into())),
            "{phase}"
        );
        // 5.
        assert_eq!(
            affected(app, ins_old(c, "gone", "1"), phase).await,
            1,
            "{phase}"
        );
        let del = sqlx::query(DEL).bind(c);
        assert_eq!(affected(app, del, phase).await, 1, "{phase}");
        assert_eq!(sel_old(app, c, phase).await, None, "{phase}");

        // On top: the cached statements inside a transaction that is rolled back.
        let mut tx = app
            .begin()
            .await
            .unwrap_or_else(|e| panic!("sqlx {phase}: BEGIN: {e}"));
        let inserted = ins_old(c, "rolled-back", "5")
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("sqlx {phase}: ins_old in a transaction: {e}"))
            .rows_affected();
        assert_eq!(inserted, 1, "{phase}: ins_old in a transaction");
        assert_eq!(
            sel_new(&mut tx, c, phase).await,
            Some(("rolled-back".into(), 5)),
            "{phase}: sel_new in a transaction"
        );
        tx.rollback()
            .await
            .unwrap_or_else(|e| panic!("sqlx {phase}: ROLLBACK: {e}"));
        assert_eq!(
            sel_new(app, c, phase).await,
            None,
            "{phase}: after ROLLBACK"
        );

        // 6.
        let count: i64 = sqlx::query(COUNT)
            .fetch_one(&mut *app)
            .await
            .unwrap_or_else(|e| panic!("sqlx {phase}: count: {e}"))
            .try_get(0)
            .unwrap_or_else(|e| panic!("sqlx {phase}: count as int8: {e}"));
        assert_eq!(count, 3 + 2 * (done as i64 + 1), "{phase}: count(*)");
        // Every statement was prepared once, in expand, and is still the cached one.
        assert_eq!(
            app.cached_statements_size(),
            8,
            "{phase}: cached statements"
        );
        // 7.
        check_direct(&mut direct, phase, a, b).await;
    }
    app.close()
        .await
        .unwrap_or_else(|e| panic!("sqlx: closing the connection through pgshift: {e}"));
    direct.close().await.unwrap();
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

async fn affected(conn: &mut PgConnection, query: Query<'_>, phase: &str) -> u64 {
    query
        .execute(conn)
        .await
        .unwrap_or_else(|e| panic!("sqlx {phase}: {e}"))
        .rows_affected()
}

async fn fetch(conn: &mut PgConnection, sql: &str, id: i32, phase: &str) -> Option<PgRow> {
    let mut rows = sqlx::query(sql)
        .bind(id)
        .fetch_all(conn)
        .await
        .unwrap_or_else(|e| panic!("sqlx {phase}: {sql} ({id}): {e}"));
    assert!(
        rows.len() <= 1,
        "{phase}: {sql} ({id}): {} rows",
        rows.len()
    );
    rows.pop()
}

/// `sel_new(id)`: `display_name` as a string, `age_int` as `i32`.
async fn sel_new(conn: &mut PgConnection, id: i32, phase: &str) -> Option<(String, i32)> {
    let row = fetch(conn, SEL_NEW, id, phase).await?;
    Some((
        row.try_get::<String, _>(0)
            .unwrap_or_else(|e| panic!("sqlx {phase}: sel_new({id}).display_name: {e}")),
        row.try_get::<i32, _>(1)
            .unwrap_or_else(|e| panic!("sqlx {phase}: sel_new({id}).age_int: {e}")),
    ))
}

/// `sel_old(id)`: `user_name` and `age`, both strings.
async fn sel_old(conn: &mut PgConnection, id: i32, phase: &str) -> Option<(String, String)> {
    let row = fetch(conn, SEL_OLD, id, phase).await?;
    Some((
        row.try_get::<String, _>(0)
            .unwrap_or_else(|e| panic!("sqlx {phase}: sel_old({id}).user_name: {e}")),
        row.try_get::<String, _>(1)
            .unwrap_or_else(|e| panic!("sqlx {phase}: sel_old({id}).age: {e}")),
    ))
}

/// SCENARIO.md step 7.
async fn check_direct(direct: &mut PgConnection, phase: &str, a: i32, b: i32) {
    let rows: Vec<super::Sides> = sqlx::query(
        "SELECT user_name, display_name, age, age_int FROM users WHERE id IN ($1, $2) ORDER BY id",
    )
    .bind(a)
    .bind(b)
    .fetch_all(direct)
    .await
    .unwrap_or_else(|e| panic!("sqlx {phase}: the direct check: {e}"))
    .iter()
    .map(|r| {
        (
            r.try_get(0).unwrap(),
            r.try_get(1).unwrap(),
            r.try_get(2).unwrap(),
            r.try_get(3).unwrap(),
        )
    })
    .collect();
    assert_eq!(
        rows,
        super::expected_sides(phase),
        "sqlx {phase}: the table, read directly"
    );
}
