//! Column migrations at the protocol's edges, through the real proxy (issue 3): statements that
//! touch no migrated table are forwarded byte-identical; statements pgshift cannot rewrite are
//! refused with 0A000 in simple and extended mode, in transactions and in pipelines, exactly
//! where and how a real error would occur, leaving the table unchanged; and the bookkeeping of
//! statements re-prepared after a phase flip (hidden replies, Close, Describe, errors).
//!
//! The raw-protocol tests drive pgshift and, for comparison, PostgreSQL directly with the same
//! message sequence, where a real error stands in for the refusal.

mod common;

use common::raw::{error_codes, exchange, raw_unsupported, run, tags};
use common::users::{INS, RENAME, TYPE_CHANGE, Users, bind_insert};
use common::{BackendMessage, describe_error, frontend, psql, sqlstate};
use tokio_postgres::{Client, SimpleQueryMessage};

/// The first column of the last row of a simple-query reply, and how many rows came.
fn last_row_value(messages: &[SimpleQueryMessage]) -> (Option<String>, usize) {
    let rows: Vec<_> = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_owned)),
            _ => None,
        })
        .collect();
    (rows.last().cloned().flatten(), rows.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_touching_no_migrated_table_are_forwarded_byte_identical() {
    let env = Users::start("passthrough", "expand", "expand").await;
    env.direct
        .batch_execute(
            "CREATE TABLE other (id int, users text); INSERT INTO other VALUES (1, 'x');
             CREATE TABLE users_archive (id int, user_name text);
             CREATE SCHEMA archive; CREATE TABLE archive.users (id int, user_name text);",
        )
        .await
        .unwrap();
    let app = env.app().await;

    // current_query() is the text exactly as the server received it.
    for sql in [
        "SELECT current_query() AS q, 'users' AS t",
        "/* users */ SELECT   current_query() -- users, display_name\n , 'O''''Brien' AS users, - -1 AS n",
        "SELECT current_query(), o.users FROM other o WHERE o.users <> 'users'",
        "SELECT current_query(), count(*) FROM users_archive",
        "SELECT current_query(), count(*) FROM archive.users",
        "WITH users AS (SELECT 1 AS user_name) SELECT current_query(), user_name FROM users",
        "INSERT INTO users_archive (id, user_name) VALUES (1, 'x') RETURNING current_query()",
    ] {
        let simple = app
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", describe_error(&e)));
        assert_eq!(
            last_row_value(&simple),
            (Some(sql.to_owned()), 1),
            "simple: {sql}"
        );
        let extended = app
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", describe_error(&e)));
        assert_eq!(extended.get::<_, String>(0), sql, "extended: {sql}");
    }
    let multi = "SELECT 1 AS users; SELECT current_query()";
    let replies = app.simple_query(multi).await.unwrap();
    assert_eq!(last_row_value(&replies), (Some(multi.to_owned()), 2));

    // The probe does see rewrites: a statement reading a migrated column arrives changed.
    let rewritten = "SELECT current_query(), display_name FROM users WHERE id = 1";
    let row = app.query_one(rewritten, &[]).await.unwrap();
    assert_ne!(row.get::<_, String>(0), rewritten);
    assert_eq!(row.get::<_, String>(1), "ann");
}

/// Statements over `users` that pgshift cannot rewrite today (docs/rewrite.md): each would
/// change the table or its definition if it were forwarded.
/// The first one stands for any refusal in the tests that follow.
const REFUSED: &[&str] = &[
    "MERGE INTO users u USING (VALUES (1, 'x')) AS v(id, n) ON u.id = v.id \
     WHEN MATCHED THEN UPDATE SET user_name = v.n",
    "TRUNCATE users",
    "ALTER TABLE users ADD COLUMN note text",
    "CREATE INDEX users_age ON users (age)",
    "COPY users TO STDOUT",
    // sqlparser cannot parse these.
    "SELECT * FROM users WHERE id = 1 FOR NO KEY UPDATE",
    "INSERT INTO users (id, user_name) OVERRIDING SYSTEM VALUE VALUES (9, 'x')",
    "INSERT INTO users (id, user_name) VALUES (9, 'x') ON CONFLICT (id) WHERE id > 0 DO NOTHING",
    "SELEC user_name FROM users",
];

/// A refusal: SQLSTATE 0A000, a message starting `pgshift:` that names a migration of `users`.
fn assert_refusal(err: &tokio_postgres::Error, sql: &str) {
    assert_eq!(
        sqlstate(err).as_deref(),
        Some("0A000"),
        "{sql}: {}",
        describe_error(err)
    );
    let message = err.as_db_error().map(|e| e.message()).unwrap_or_default();
    assert!(
        message.starts_with("pgshift:")
            && (message.contains(RENAME) || message.contains(TYPE_CHANGE))
            && !message.contains("pgshift_refused"),
        "{sql}: {message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_statements_are_refused_in_simple_and_extended_mode() {
    let env = Users::start("refused_modes", "expand", "expand").await;
    let app = env.app().await;
    let (rows, columns) = (env.dump().await, env.columns().await);
    for sql in REFUSED {
        let simple = app.simple_query(sql).await;
        assert_refusal(&simple.expect_err(sql), sql);
        let prepared = app.prepare(sql).await;
        assert_refusal(&prepared.expect_err(sql), sql);
        assert_eq!(env.dump().await, rows, "{sql} changed the table");
        assert_eq!(
            env.columns().await,
            columns,
            "{sql} changed the table's columns"
        );
        let alive = app.query_one("SELECT 1", &[]).await;
        assert!(alive.is_ok(), "after {sql}: {alive:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_prepared_before_the_flip_is_refused_when_executed() {
    let env = Users::start("refused_execute", "planned", "planned").await;
    let app = env.app().await;
    let merge = app
        .prepare(
            "MERGE INTO users u USING (SELECT $1::int AS id, $2::text AS n) v ON u.id = v.id \
             WHEN MATCHED THEN UPDATE SET user_name = v.n",
        )
        .await
        .expect("MERGE is plain PostgreSQL while the migrations are planned");
    let read = app
        .prepare("SELECT user_name FROM users WHERE id = $1")
        .await
        .unwrap();
    env.set_phases("expand", "expand").await;
    let rows = env.dump().await;

    for attempt in 1..=2 {
        let err = app.execute(&merge, &[&1i32, &"x"]).await;
        assert_refusal(
            &err.expect_err("MERGE after the flip"),
            &format!("MERGE, execution {attempt}"),
        );
    }
    assert_eq!(env.dump().await, rows);
    let row = app.query_one(&read, &[&1i32]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "ann");
}

async fn count_ids(direct: &Client, ids: &[i32]) -> i64 {
    direct
        .query_one("SELECT count(*) FROM users WHERE id = ANY($1)", &[&ids])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_inside_a_transaction_aborts_it_like_any_error() {
    let env = Users::start("refused_tx", "expand", "expand").await;
    let mut app = env.app().await;
    let refused = REFUSED[0];

    // Extended protocol.
    let tx = app.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO users (id, user_name, age) VALUES (40, 'tx', '40')",
        &[],
    )
    .await
    .unwrap();
    assert_refusal(&tx.execute(refused, &[]).await.expect_err(refused), refused);
    let next = tx
        .execute("SELECT 1", &[])
        .await
        .expect_err("aborted transaction");
    assert_eq!(
        sqlstate(&next).as_deref(),
        Some("25P02"),
        "{}",
        describe_error(&next)
    );
    tx.rollback().await.unwrap();
    assert_eq!(count_ids(&env.direct, &[40]).await, 0);

    // Simple protocol.
    app.simple_query("BEGIN; INSERT INTO users (id, user_name, age) VALUES (41, 'tx', '41')")
        .await
        .unwrap();
    assert_refusal(
        &app.simple_query(refused).await.expect_err(refused),
        refused,
    );
    let next = app
        .simple_query("SELECT 1")
        .await
        .expect_err("aborted transaction");
    assert_eq!(
        sqlstate(&next).as_deref(),
        Some("25P02"),
        "{}",
        describe_error(&next)
    );
    app.simple_query("ROLLBACK").await.unwrap();
    assert_eq!(count_ids(&env.direct, &[41]).await, 0);

    // A savepoint contains it, like any error.
    app.simple_query(
        "BEGIN; INSERT INTO users (id, user_name, age) VALUES (42, 'kept', '42'); SAVEPOINT s",
    )
    .await
    .unwrap();
    assert_refusal(
        &app.simple_query(refused).await.expect_err(refused),
        refused,
    );
    app.simple_query(
        "ROLLBACK TO SAVEPOINT s; INSERT INTO users (id, display_name, age_int) VALUES (43, 'kept', 43); COMMIT",
    )
    .await
    .unwrap();
    let kept: Vec<(i32, String, String, String, i32)> = env
        .direct
        .query(
            "SELECT id, user_name, display_name, age, age_int FROM users WHERE id IN (42, 43) ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(
        kept,
        [
            (42, "kept".into(), "kept".into(), "42".into(), 42),
            (43, "kept".into(), "kept".into(), "43".into(), 43)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_multi_statement_string_with_a_refusal_fails_where_a_real_error_would() {
    let env = Users::start("refused_psql", "expand", "expand").await;
    // Statements before an explicit COMMIT in a multi-statement string are committed even when
    // a later one fails; those after it roll back with the failing one.
    let script = |id: i32, failing: &str| {
        format!(
            "INSERT INTO users (id, user_name, age) VALUES ({id}, 'p', '1'); COMMIT; \
             INSERT INTO users (id, user_name, age) VALUES ({}, 'p', '1'); {failing}; \
             SELECT 1 AS after",
            id + 1
        )
    };
    let ours = psql(
        &env.app_url(),
        &["-v", "ON_ERROR_STOP=1", "-c", &script(51, REFUSED[0])],
        None,
    )
    .await;
    let real = psql(
        &env.db.url,
        &[
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            &script(53, "INSERT INTO no_such_table VALUES (1)"),
        ],
        None,
    )
    .await;
    let stderr = String::from_utf8_lossy(&ours.stderr);
    assert!(stderr.contains("ERROR:  pgshift:"), "{stderr}");
    assert_eq!(ours.status.code(), real.status.code());
    assert_eq!(
        String::from_utf8_lossy(&ours.stdout),
        String::from_utf8_lossy(&real.stdout),
        "psql output through pgshift vs a real error directly"
    );
    assert_eq!(
        count_ids(&env.direct, &[53, 54]).await,
        1,
        "directly: the first INSERT committed"
    );
    assert_eq!(
        count_ids(&env.direct, &[51, 52]).await,
        1,
        "through pgshift: the same"
    );
    env.assert_dual_written_as(51, "p", "1").await;
}

// ---- raw protocol ----------------------------------------------------------------------------

fn assert_raw_refusal(messages: &[BackendMessage]) {
    let error = messages.iter().find(|m| m.tag == b'E').expect("an error");
    assert_eq!(error.field(b'C').as_deref(), Some("0A000"), "{error:?}");
    let message = error.field(b'M').unwrap_or_default();
    assert!(
        message.starts_with("pgshift:") && message.contains("users_"),
        "{message}"
    );
}

fn insert(id: i32) -> String {
    format!("INSERT INTO users (id, user_name, age) VALUES ({id}, 'p{id}', '{id}')")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_in_a_pipeline_behaves_like_a_real_error() {
    if raw_unsupported() {
        return;
    }
    let env = Users::start("refused_pipeline", "planned", "planned").await;
    let mut ours = env.raw_proxy().await;
    let mut real = env.raw_direct().await;
    let merge = "MERGE INTO users u USING (VALUES (1, 'x')) AS v(id, n) ON u.id = v.id \
                 WHEN MATCHED THEN UPDATE SET user_name = v.n";
    let prepared = exchange(
        &mut ours,
        &[
            frontend::parse("ins", INS, &[]),
            frontend::parse("m", merge, &[]),
            frontend::sync(),
        ],
    )
    .await;
    assert_eq!(tags(&prepared), "11Z");
    let direct_prepared = exchange(
        &mut real,
        &[frontend::parse("ins", INS, &[]), frontend::sync()],
    )
    .await;
    assert_eq!(tags(&direct_prepared), "1Z");
    env.set_phases("expand", "expand").await;
    let before = env.dump().await;

    // One Sync: the refused Parse fails like a Parse of a missing table; the rest is
    // discarded and the implicit transaction rolls back.
    let pipeline = |first: i32, failing: &str| {
        [
            run(&insert(first)),
            run(failing),
            run(&insert(first + 1)),
            vec![frontend::sync()],
        ]
        .concat()
    };
    let got = exchange(&mut ours, &pipeline(44, REFUSED[0])).await;
    let want = exchange(
        &mut real,
        &pipeline(144, "INSERT INTO no_such_table VALUES (1)"),
    )
    .await;
    assert_eq!(tags(&got), tags(&want), "{got:?}");
    assert_eq!(tags(&got), "12CEZ");
    assert_raw_refusal(&got);
    assert_eq!(env.dump().await, before, "nothing of the pipeline stayed");

    // A Sync after each: the others commit.
    let synced = |first: i32, failing: &str| {
        [
            run(&insert(first)),
            vec![frontend::sync()],
            run(failing),
            vec![frontend::sync()],
            run(&insert(first + 1)),
            vec![frontend::sync()],
        ]
        .concat()
    };
    let got = exchange(&mut ours, &synced(46, REFUSED[0])).await;
    let want = exchange(
        &mut real,
        &synced(146, "INSERT INTO no_such_table VALUES (1)"),
    )
    .await;
    assert_eq!(tags(&got), tags(&want), "{got:?}");
    assert_raw_refusal(&got);
    env.assert_dual_written(46).await;
    env.assert_dual_written(47).await;

    // A statement prepared in planned and refused when bound after the flip fails at Bind,
    // like binding a statement that does not exist; every time it is bound.
    let bound = |first: i32, statement: &str| {
        [
            bind_insert(first),
            vec![
                frontend::bind("", statement, &[], 0),
                frontend::execute("", 0),
            ],
            bind_insert(first + 1),
            vec![frontend::sync()],
        ]
        .concat()
    };
    let got = exchange(&mut ours, &bound(48, "m")).await;
    let want = exchange(&mut real, &bound(148, "no_such_statement")).await;
    assert_eq!(tags(&got), tags(&want), "{got:?}");
    assert_eq!(tags(&got), "2CEZ");
    assert_raw_refusal(&got);
    assert_eq!(count_ids(&env.direct, &[48, 49, 148, 149]).await, 0);
    let after = exchange(
        &mut ours,
        &[bind_insert(50), vec![frontend::sync()]].concat(),
    )
    .await;
    assert_eq!(tags(&after), "2CZ", "{after:?}");
    env.assert_dual_written(50).await;
    // Bound again: refused again.
    let again = exchange(
        &mut ours,
        &[
            frontend::bind("", "m", &[], 0),
            frontend::execute("", 0),
            frontend::sync(),
        ],
    )
    .await;
    assert_eq!(tags(&again), "EZ");
    assert_raw_refusal(&again);
}

/// `(parameter type OIDs, (column name, type OID) of each result column)` from the
/// ParameterDescription and RowDescription/NoData answering a Describe of a statement.
fn description(messages: &[BackendMessage]) -> (Vec<u32>, Vec<(String, u32)>) {
    let t = messages
        .iter()
        .find(|m| m.tag == b't')
        .expect("ParameterDescription");
    let n = u16::from_be_bytes([t.body[0], t.body[1]]) as usize;
    let params = (0..n)
        .map(|i| u32::from_be_bytes(t.body[2 + 4 * i..6 + 4 * i].try_into().unwrap()))
        .collect();
    let Some(row) = messages.iter().find(|m| m.tag == b'T') else {
        return (params, Vec::new());
    };
    let b = &row.body;
    let mut pos = 2;
    let mut columns = Vec::new();
    for _ in 0..u16::from_be_bytes([b[0], b[1]]) {
        let end = pos + b[pos..].iter().position(|&c| c == 0).unwrap();
        let name = String::from_utf8_lossy(&b[pos..end]).into_owned();
        // table OID (4), attnum (2), then the type OID.
        let oid = u32::from_be_bytes(b[end + 7..end + 11].try_into().unwrap());
        columns.push((name, oid));
        pos = end + 1 + 18;
    }
    (params, columns)
}

/// The text fields of the first DataRow.
fn data_row(messages: &[BackendMessage]) -> Vec<Option<String>> {
    messages
        .iter()
        .find(|m| m.tag == b'D')
        .expect("a DataRow")
        .fields()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reprepared_statements_keep_their_descriptions_and_survive_close() {
    if raw_unsupported() {
        return;
    }
    let env = Users::start("reprepare", "planned", "planned").await;
    let mut conn = env.raw_proxy().await;
    const SEL: &str = "SELECT id, user_name, age FROM users WHERE id = $1";
    let describe_both = || {
        vec![
            frontend::describe(b'S', "ins"),
            frontend::describe(b'S', "sel"),
            frontend::sync(),
        ]
    };
    let planned = exchange(
        &mut conn,
        &[
            vec![
                frontend::parse("ins", INS, &[]),
                frontend::parse("sel", SEL, &[]),
            ],
            describe_both(),
        ]
        .concat(),
    )
    .await;
    assert_eq!(tags(&planned), "11tntTZ");
    let ins_planned = description(&planned[..4]);
    let sel_planned = description(&planned[4..]);
    assert_eq!(ins_planned, (vec![23, 25, 25], vec![]));
    assert_eq!(
        sel_planned,
        (
            vec![23],
            vec![
                ("id".into(), 23),
                ("user_name".into(), 25),
                ("age".into(), 25)
            ]
        )
    );

    // Executed in expand: re-prepared upstream, the extra replies hidden, dual-written.
    env.set_phases("expand", "expand").await;
    let executed = exchange(
        &mut conn,
        &[bind_insert(20), vec![frontend::sync()]].concat(),
    )
    .await;
    assert_eq!(tags(&executed), "2CZ", "{executed:?}");
    assert_eq!(executed[1].body, b"INSERT 0 1\0");
    env.assert_dual_written(20).await;
    let described = exchange(&mut conn, &describe_both()).await;
    assert_eq!(tags(&described), "tntTZ");
    assert_eq!(description(&described[..2]), ins_planned);
    assert_eq!(description(&described[2..]), sel_planned);

    // Closed and parsed again under the same name: still dual-writes, same description.
    let reparsed = exchange(
        &mut conn,
        &[
            vec![
                frontend::close(b'S', "ins"),
                frontend::parse("ins", INS, &[]),
            ],
            bind_insert(21),
            vec![frontend::describe(b'S', "ins"), frontend::sync()],
        ]
        .concat(),
    )
    .await;
    assert_eq!(tags(&reparsed), "312CtnZ", "{reparsed:?}");
    assert_eq!(description(&reparsed[4..]), ins_planned);
    env.assert_dual_written(21).await;

    // In switch the planned-era SELECT reads the new side, still answering with text.
    env.backfill().await;
    env.set_phases("switch", "switch").await;
    env.direct
        .batch_execute("UPDATE users SET user_name = 'stale', age = '-1' WHERE id = 20")
        .await
        .unwrap();
    let read = exchange(
        &mut conn,
        &[
            frontend::describe(b'S', "sel"),
            frontend::bind("", "sel", &[Some("20")], 0),
            frontend::execute("", 0),
            frontend::sync(),
        ],
    )
    .await;
    assert_eq!(tags(&read), "tT2DCZ", "{read:?}");
    assert_eq!(description(&read[..2]), sel_planned);
    assert_eq!(
        data_row(&read),
        [Some("20".into()), Some("p20".into()), Some("20".into())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reprepare_discarded_after_an_earlier_error_is_done_again() {
    if raw_unsupported() {
        return;
    }
    let env = Users::start("reprepare_discarded", "planned", "planned").await;
    let mut conn = env.raw_proxy_with_insert("ins").await;
    env.set_phases("expand", "expand").await;

    // The error makes the server discard everything up to Sync, pgshift's injected re-Parse
    // of `ins` included.
    let failed = exchange(
        &mut conn,
        &[run("SELECT 1 / 0"), bind_insert(60), vec![frontend::sync()]].concat(),
    )
    .await;
    assert_eq!(
        tags(&failed),
        "1EZ",
        "the constant division fails at Bind: {failed:?}"
    );
    assert_eq!(error_codes(&failed), ["22012"]);

    let executed = exchange(
        &mut conn,
        &[bind_insert(61), vec![frontend::sync()]].concat(),
    )
    .await;
    assert_eq!(tags(&executed), "2CZ", "{executed:?}");
    env.assert_dual_written(61).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reprepare_in_an_aborted_transaction_is_done_again_after_rollback() {
    let env = Users::start("reprepare_aborted", "planned", "planned").await;
    let app = env.app().await;
    let insert = app.prepare(INS).await.unwrap();
    env.set_phases("expand", "expand").await;

    app.batch_execute("BEGIN").await.unwrap();
    let err = app
        .execute("SELECT 1 / 0", &[])
        .await
        .expect_err("division by zero");
    assert_eq!(sqlstate(&err).as_deref(), Some("22012"));
    let err = app
        .execute(&insert, &[&62i32, &"p62", &"62"])
        .await
        .expect_err("the transaction is aborted");
    assert_eq!(
        sqlstate(&err).as_deref(),
        Some("25P02"),
        "{}",
        describe_error(&err)
    );
    app.batch_execute("ROLLBACK").await.unwrap();

    let n = app
        .execute(&insert, &[&63i32, &"p63", &"63"])
        .await
        .unwrap_or_else(|e| panic!("after ROLLBACK: {}", describe_error(&e)));
    assert_eq!(n, 1);
    env.assert_dual_written(63).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_statement_parsed_in_planned_dual_writes_after_the_flip() {
    if raw_unsupported() {
        return;
    }
    let env = Users::start("reprepare_unnamed", "planned", "planned").await;
    // The unnamed statement lives until the next Parse of it, across Sync.
    let mut conn = env.raw_proxy_with_insert("").await;
    env.set_phases("expand", "expand").await;

    let executed = exchange(
        &mut conn,
        &[
            frontend::bind("", "", &[Some("64"), Some("p64"), Some("64")], 0),
            frontend::execute("", 0),
            frontend::sync(),
        ],
    )
    .await;
    assert_eq!(tags(&executed), "2CZ", "{executed:?}");
    env.assert_dual_written(64).await;
}
