//! Table moves (`kind = "table"`, docs/table-moves.md) end to end through the real proxy:
//! `orders` → `orders_v2` taken planned → expand → switch → contract while an old app (writes
//! and reads `orders` with `total` and `note`) and a new app (`orders_v2` with `total_cents`)
//! keep their connections; `users` moved into a range-partitioned `users_p`; and the statements
//! a table move refuses.
//!
//! Every write is run through pgshift and, directly, on a plain copy of the table the client
//! names (`shape.orders`, `shape.orders_v2`): the replies (columns and types, RETURNING rows,
//! command tags) must be the same, and afterwards both real tables are read directly and
//! compared with the copy, mapped through `up`/`down`, or proven untouched.

mod common;

use common::orders::{Endpoint, MIGRATION, Mode, Orders, Side, text_rows};
use common::{
    ProxyConfig, cluster, connect, control_toml, describe_error, fresh_database, sqlstate,
};
use tokio_postgres::Client;

const PHASES: [&str; 4] = ["planned", "expand", "switch", "contract"];

/// The `created_at` of every row the apps write, so RETURNING rows compare exactly.
const TS: &str = "'2025-03-01 10:00:00+00'";

/// The old app's writes on ids `b + 1 ..= b + 29`, with the row count each must have. Quoted
/// quotes, `--` inside a literal, `- -0.50` and a comment exercise the splicing of rewrites.
fn old_writes(b: i64) -> Vec<(String, u64)> {
    let cols = "(id, customer, total, note, created_at)";
    let range = format!("BETWEEN {} AND {}", b + 1, b + 29);
    vec![
        (
            format!(
                "INSERT /* old app */ INTO orders {cols} VALUES ({}, 'ann', 12.50, 'first', {TS})",
                b + 1
            ),
            1,
        ),
        (
            format!(
                "INSERT INTO orders {cols} VALUES ({}, 'bob', 3.99, NULL, {TS}), \
                 ({}, 'O''Brien', 100.00, 'gift -- wrap', {TS})",
                b + 2,
                b + 3
            ),
            2,
        ),
        (
            format!(
                "INSERT INTO orders VALUES ({}, 'cy', 7.25, NULL, {TS}) RETURNING *",
                b + 4
            ),
            1,
        ),
        (
            format!(
                "INSERT INTO orders (id, customer, total, created_at) VALUES ({}, 'dee', 0.01, {TS}) \
                 RETURNING id, total, total * 2 AS doubled, note",
                b + 5
            ),
            1,
        ),
        (
            format!(
                "INSERT INTO orders (id, customer, total, created_at) \
                 SELECT id + 10, customer || ' copy', total + 1, created_at FROM orders \
                 WHERE id BETWEEN {} AND {}",
                b + 1,
                b + 3
            ),
            3,
        ),
        (
            format!(
                "INSERT INTO orders {cols} VALUES ({}, 'ann', 20.00, 'again', {TS}), \
                 ({}, 'eve', 5.00, NULL, {TS}) ON CONFLICT (id) DO UPDATE \
                 SET total = orders.total + EXCLUDED.total, note = EXCLUDED.note \
                 RETURNING id, total",
                b + 1,
                b + 6
            ),
            2,
        ),
        (
            format!(
                "UPDATE orders SET total = total - -0.50, note = 'upd' WHERE id IN ({}, {})",
                b + 2,
                b + 3
            ),
            2,
        ),
        (
            format!(
                "UPDATE orders SET total = total * 2 WHERE id = {} RETURNING id, customer, total",
                b + 4
            ),
            1,
        ),
        (
            format!(
                "UPDATE orders SET total = orders.total + a.delta FROM adjust a \
                 WHERE a.order_id = orders.id AND orders.id {range}"
            ),
            2,
        ),
        (format!("DELETE FROM orders WHERE id = {}", b + 2), 1),
        (
            format!("DELETE FROM orders WHERE id = {} RETURNING *", b + 12),
            1,
        ),
        (
            format!(
                "DELETE FROM orders USING adjust a WHERE a.order_id = orders.id \
                 AND a.delta > 1.50 AND orders.id {range}"
            ),
            1,
        ),
    ]
}

/// The new app's counterpart of [`old_writes`].
fn new_writes(b: i64) -> Vec<(String, u64)> {
    let cols = "(id, customer, total_cents, created_at)";
    let range = format!("BETWEEN {} AND {}", b + 1, b + 29);
    vec![
        (
            format!(
                "INSERT /* new app */ INTO orders_v2 {cols} VALUES ({}, 'ann', 1250, {TS})",
                b + 1
            ),
            1,
        ),
        (
            format!(
                "INSERT INTO orders_v2 {cols} VALUES ({}, 'bob', 399, {TS}), \
                 ({}, 'O''Brien -- x', 10000, {TS})",
                b + 2,
                b + 3
            ),
            2,
        ),
        (
            format!(
                "INSERT INTO orders_v2 VALUES ({}, 'cy', 725, {TS}) RETURNING *",
                b + 4
            ),
            1,
        ),
        (
            format!(
                "INSERT INTO orders_v2 {cols} VALUES ({}, 'dee', 1, {TS}) \
                 RETURNING id, total_cents, total_cents * 2 AS doubled",
                b + 5
            ),
            1,
        ),
        (
            format!(
                "INSERT INTO orders_v2 {cols} \
                 SELECT id + 10, customer || ' copy', total_cents + 100, created_at \
                 FROM orders_v2 WHERE id BETWEEN {} AND {}",
                b + 1,
                b + 3
            ),
            3,
        ),
        (
            format!(
                "INSERT INTO orders_v2 {cols} VALUES ({}, 'ann', 2000, {TS}), \
                 ({}, 'eve', 500, {TS}) ON CONFLICT (id) DO UPDATE \
                 SET total_cents = orders_v2.total_cents + EXCLUDED.total_cents \
                 RETURNING id, total_cents",
                b + 1,
                b + 6
            ),
            2,
        ),
        (
            format!(
                "UPDATE orders_v2 SET total_cents = total_cents - -50, customer = upper(customer) \
                 WHERE id IN ({}, {})",
                b + 2,
                b + 3
            ),
            2,
        ),
        (
            format!(
                "UPDATE orders_v2 SET total_cents = total_cents * 2 WHERE id = {} \
                 RETURNING id, customer, total_cents",
                b + 4
            ),
            1,
        ),
        (
            format!(
                "UPDATE orders_v2 o SET total_cents = o.total_cents + (a.delta * 100)::bigint \
                 FROM adjust a WHERE a.order_id = o.id AND o.id {range}"
            ),
            2,
        ),
        (format!("DELETE FROM orders_v2 WHERE id = {}", b + 2), 1),
        (
            format!("DELETE FROM orders_v2 WHERE id = {} RETURNING *", b + 12),
            1,
        ),
        (
            format!(
                "DELETE FROM orders_v2 USING adjust a WHERE a.order_id = orders_v2.id \
                 AND a.delta > 1.50 AND orders_v2.id {range}"
            ),
            1,
        ),
    ]
}

/// Parameterised statements, only prepared: their parameter and column types are compared.
fn parameterised(side: Side) -> [&'static str; 4] {
    match side {
        Side::Old => [
            "INSERT INTO orders (id, customer, total, note) VALUES ($1, $2, $3, $4)",
            "UPDATE orders SET total = $1, note = $2 WHERE id = $3 RETURNING total, note",
            "SELECT id, total, note FROM orders WHERE total > $1 AND id = $2",
            "DELETE FROM orders WHERE id = $1 RETURNING total",
        ],
        Side::New => [
            "INSERT INTO orders_v2 (id, customer, total_cents) VALUES ($1, $2, $3)",
            "UPDATE orders_v2 SET total_cents = $1 WHERE id = $2 RETURNING total_cents",
            "SELECT id, total_cents FROM orders_v2 WHERE total_cents > $1 AND id = $2",
            "DELETE FROM orders_v2 WHERE id = $1 RETURNING total_cents",
        ],
    }
}

/// Whether a write naming `client`'s table in `phase` must change physical table `table`.
fn writes_to(phase: &str, client: Side, table: Side) -> bool {
    match phase {
        "planned" => table == client,
        "expand" | "switch" => true,
        "contract" => table == Side::New,
        _ => unreachable!("{phase}"),
    }
}

/// The table reads of `named` are served from in `phase`.
fn served_from(phase: &str, named: Side) -> Side {
    match phase {
        "planned" => named,
        "expand" => Side::Old,
        _ => Side::New,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_move_through_every_phase_for_old_and_new_apps() {
    let env = Orders::start("moves_lifecycle").await;
    let modes = Mode::all();
    let mut apps = [Endpoint::app(&env).await, Endpoint::app(&env).await];
    let mut reference = Endpoint::reference(&env).await;
    for (p, phase) in PHASES.into_iter().enumerate() {
        if phase == "switch" {
            env.backfill().await;
        }
        env.proxy.set_phase(MIGRATION, phase).await;
        assert_eq!(env.proxy.phase(MIGRATION).await, phase);
        let block = 1000 * (p as i64 + 1);
        for (s, side) in [Side::Old, Side::New].into_iter().enumerate() {
            let app = &mut apps[s];
            same_types(app, &reference, side, phase).await;
            for (m, mode) in modes.iter().enumerate() {
                let base = block + 300 * s as i64 + 100 * m as i64;
                write_story(&env, phase, side, *mode, base, app, &mut reference).await;
            }
        }
        reads_story(&env, phase, block + 900, &mut apps, &mut reference, &modes).await;
    }
}

/// Parameter and column types of the parameterised statements, through pgshift and directly.
async fn same_types(app: &Endpoint, reference: &Endpoint, side: Side, phase: &str) {
    for sql in parameterised(side) {
        assert_eq!(
            app.describe(sql).await,
            reference.describe(sql).await,
            "{} in {phase}: {sql}: (parameter types, columns)",
            side.app()
        );
    }
}

/// Runs `side`'s writes on ids `base + 1 ..= base + 29` through pgshift and on the reference
/// copy; after each, both real tables are checked against the copy.
async fn write_story(
    env: &Orders,
    phase: &str,
    side: Side,
    mode: Mode,
    base: i64,
    app: &mut Endpoint,
    reference: &mut Endpoint,
) {
    let range = (base + 1, base + 29);
    env.direct
        .batch_execute(&format!(
            "INSERT INTO adjust VALUES ({}, 1.25), ({}, 2.00)",
            base + 1,
            base + 5
        ))
        .await
        .unwrap();
    let writes = match side {
        Side::Old => old_writes(base),
        Side::New => new_writes(base),
    };
    for (sql, count) in writes {
        let ctx = format!("{} in {phase}, {mode:?}: {sql}", side.app());
        let before = [env.dump("orders").await, env.dump("orders_v2").await];
        let theirs = reference
            .run(mode, &sql)
            .await
            .unwrap_or_else(|e| panic!("{ctx}: directly: {e}"));
        assert_eq!(theirs.count(), count, "{ctx}: row count directly");
        let ours = app.run(mode, &sql).await;
        assert_eq!(ours, Ok(theirs), "{ctx}: through pgshift vs directly");
        for (table, before) in [Side::Old, Side::New].into_iter().zip(before) {
            if writes_to(phase, side, table) {
                assert_eq!(
                    env.rows(table, table, "public", range).await,
                    env.rows(table, side, "shape", range).await,
                    "{ctx}: public.{} (ids {range:?}) vs the reference's rows{}",
                    table.table(),
                    if table == side { "" } else { " mapped" }
                );
            } else {
                assert_eq!(
                    env.dump(table.table()).await,
                    before,
                    "{ctx}: public.{} must be untouched in {phase}",
                    table.table()
                );
            }
        }
    }
}

/// `SELECT * FROM orders` and `SELECT * FROM orders_v2`, from both apps in every mode: the
/// columns of a plain table of that name, the rows of the table served in `phase` mapped to
/// that shape. Rows at `d ..= d + 2` differ between the tables, to show which one is served.
async fn reads_story(
    env: &Orders,
    phase: &str,
    d: i64,
    apps: &mut [Endpoint; 2],
    reference: &mut Endpoint,
    modes: &[Mode],
) {
    env.direct
        .batch_execute(&format!(
            "INSERT INTO orders VALUES ({d}, 'only old', 9.00, 'x', {TS}), \
                 ({}, 'both', 1.00, 'old side', {TS});
             INSERT INTO orders_v2 VALUES ({}, 'only new', 901, {TS}), ({}, 'both', 9999, {TS});",
            d + 2,
            d + 1,
            d + 2
        ))
        .await
        .unwrap();
    for (app, client) in apps.iter_mut().zip([Side::Old, Side::New]) {
        for named in [Side::Old, Side::New] {
            let sql = format!("SELECT * FROM {} ORDER BY id", named.table());
            let served = format!(
                "{} ORDER BY id",
                named.select_from(served_from(phase, named), "public")
            );
            for mode in modes {
                let ctx = format!("{} in {phase}, {mode:?}: {sql}", client.app());
                let ours = app
                    .run(*mode, &sql)
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                let shape = reference.run(*mode, &sql).await.unwrap();
                let want = reference.run(*mode, &served).await.unwrap();
                assert_eq!(ours.columns, shape.columns, "{ctx}: columns");
                assert!(want.rows.len() > 3, "{ctx}: {served} found {want:?}");
                assert_eq!(ours.rows, want.rows, "{ctx}: rows, as {served}");
                assert_eq!(ours.tag, want.tag, "{ctx}: tag");
            }
        }
    }
}

// ---- users → range-partitioned users_p ------------------------------------------------------

const USERS_SCHEMA: &str = "
CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL, created_at timestamptz NOT NULL);
CREATE TABLE users_p (id int, email text NOT NULL, created_at timestamptz NOT NULL,
    PRIMARY KEY (id, created_at)) PARTITION BY RANGE (created_at);
CREATE TABLE users_p_2025 PARTITION OF users_p
    FOR VALUES FROM ('2025-01-01 00:00:00+00') TO ('2026-01-01 00:00:00+00');
CREATE TABLE users_p_2026 PARTITION OF users_p
    FOR VALUES FROM ('2026-01-01 00:00:00+00') TO ('2027-01-01 00:00:00+00');
CREATE TABLE users_p_default PARTITION OF users_p DEFAULT;
INSERT INTO users VALUES (1, 'ann@example.com', '2025-05-01 12:00:00+00'),
    (2, 'bob@example.com', '2026-02-01 12:00:00+00'), (3, 'cy@example.com', '2024-12-31 12:00:00+00');
";

fn users_migration(db: &str) -> String {
    format!(
        r#"
[[migration]]
name = "users_p"
database = "{db}"
kind = "table"
table = "public.users"
new_table = "public.users_p"
key = ["id", "created_at"]
phase = "planned"
"#
    )
}

/// `(id, email, created_at)` of these ids in `table`, and for `users_p` the partition.
async fn users_rows(direct: &Client, table: &str, ids: &[i32]) -> Vec<Vec<Option<String>>> {
    let partition = if table == "users_p" {
        "tableoid::regclass::text"
    } else {
        "NULL::text"
    };
    direct
        .query(
            &format!(
                "SELECT id::text, email, created_at::text, {partition} FROM {table} \
                 WHERE id = ANY($1) ORDER BY id"
            ),
            &[&ids],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (0..4).map(|i| r.get(i)).collect())
        .collect()
}

/// Both tables hold exactly `want` (`id`, email, partition) for `ids`, with equal `created_at`.
async fn users_both(direct: &Client, ids: &[i32], want: &[(i32, &str, &str)], what: &str) {
    let plain = users_rows(direct, "users", ids).await;
    let parted = users_rows(direct, "users_p", ids).await;
    let strip = |rows: &[Vec<Option<String>>]| -> Vec<Vec<Option<String>>> {
        rows.iter().map(|r| r[..3].to_vec()).collect()
    };
    assert_eq!(strip(&plain), strip(&parted), "{what}: users vs users_p");
    let got: Vec<(i32, String, String)> = parted
        .iter()
        .map(|r| {
            let cell = |i: usize| r[i].clone().unwrap_or_default();
            (cell(0).parse().unwrap(), cell(1), cell(3))
        })
        .collect();
    let want: Vec<(i32, String, String)> = want
        .iter()
        .map(|(id, email, part)| (*id, email.to_string(), part.to_string()))
        .collect();
    assert_eq!(got, want, "{what}: (id, email, partition) in users_p");
}

async fn write(app: &Client, sql: &str, count: u64) {
    let n = app
        .execute(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe_error(&e)));
    assert_eq!(n, count, "{sql}: row count");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_move_into_a_range_partitioned_table() {
    let db = fresh_database("moves_partitioned").await;
    let direct = db.connect().await;
    direct.batch_execute(USERS_SCHEMA).await.unwrap();
    let proxy = ProxyConfig::new(cluster())
        .extra(&control_toml())
        .extra(&users_migration(&db.name))
        .spawn();
    proxy.set_phase("users_p", "expand").await;
    let app = connect(&proxy.db_url(&db)).await;
    let ids = [10, 11, 12, 20, 21, 22];

    // Expand: writes naming either table land in both, and in the partition of created_at.
    write(
        &app,
        "INSERT INTO users (id, email, created_at) VALUES \
         (10, 'a10', '2025-03-01 12:00:00+00'), (11, 'a11', '2026-07-01 12:00:00+00'), \
         (12, 'a12', '2030-01-01 12:00:00+00')",
        3,
    )
    .await;
    let (p25, p26, pdef) = ("users_p_2025", "users_p_2026", "users_p_default");
    let mut want = vec![(10, "a10", p25), (11, "a11", p26), (12, "a12", pdef)];
    users_both(&direct, &ids, &want, "INSERT INTO users").await;
    write(
        &app,
        "UPDATE users SET email = upper(email) WHERE id IN (10, 11)",
        2,
    )
    .await;
    write(
        &app,
        "INSERT INTO users (id, email, created_at) VALUES (10, 'again', '2025-03-01 12:00:00+00') \
         ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email",
        1,
    )
    .await;
    write(&app, "DELETE FROM users WHERE id = 12", 1).await;
    want = vec![(10, "again", p25), (11, "A11", p26)];
    users_both(&direct, &ids, &want, "UPDATE, upsert, DELETE on users").await;

    write(
        &app,
        "INSERT INTO users_p (id, email, created_at) VALUES \
         (20, 'n20', '2025-08-01 12:00:00+00'), (21, 'n21', '2026-08-01 12:00:00+00'), \
         (22, 'n22', '1999-01-01 12:00:00+00')",
        3,
    )
    .await;
    write(&app, "UPDATE users_p SET email = 'n20!' WHERE id = 20", 1).await;
    write(&app, "DELETE FROM users_p WHERE id = 21", 1).await;
    want.extend([(20, "n20!", p25), (22, "n22", pdef)]);
    users_both(&direct, &ids, &want, "writes on users_p").await;

    // Switch: reads of `users` come from users_p, shown by making the sides differ directly.
    direct
        .batch_execute(
            "INSERT INTO users_p SELECT id, email, created_at FROM users ON CONFLICT DO NOTHING",
        )
        .await
        .unwrap();
    proxy.set_phase("users_p", "switch").await;
    direct
        .batch_execute(
            "UPDATE users_p SET email = 'from users_p' WHERE id = 1;
             INSERT INTO users VALUES (50, 'only in users', '2025-01-02 00:00:00+00');
             INSERT INTO users_p VALUES (51, 'only in users_p', '2026-03-03 00:00:00+00');",
        )
        .await
        .unwrap();
    let served = text_rows(&app, "SELECT * FROM users ORDER BY id").await;
    let partitioned = text_rows(
        &direct,
        "SELECT id, email, created_at FROM users_p ORDER BY id",
    )
    .await;
    assert_eq!(served, partitioned, "switch: SELECT * FROM users");
    let rows = app
        .query(
            "SELECT id, email FROM users WHERE id = ANY($1) ORDER BY id",
            &[&vec![1i32, 50, 51]],
        )
        .await
        .unwrap_or_else(|e| panic!("{}", describe_error(&e)));
    let got: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        [(1, "from users_p".into()), (51, "only in users_p".into())]
    );
    let columns = |s: &tokio_postgres::Statement| -> Vec<(String, String)> {
        s.columns()
            .iter()
            .map(|c| (c.name().to_owned(), c.type_().to_string()))
            .collect()
    };
    assert_eq!(
        columns(&app.prepare("SELECT * FROM users").await.unwrap()),
        columns(&direct.prepare("SELECT * FROM public.users").await.unwrap()),
        "switch: the columns of users"
    );
    write(
        &app,
        "INSERT INTO users (id, email, created_at) VALUES (30, 'a30', '2026-10-01 12:00:00+00')",
        1,
    )
    .await;
    users_both(
        &direct,
        &[30],
        &[(30, "a30", p26)],
        "switch: INSERT INTO users",
    )
    .await;
}

// ---- refusals --------------------------------------------------------------------------------

/// Statements a table move refuses (docs/table-moves.md), each of which would change a table or
/// its definition if forwarded. The first four are the ones the issue names.
const REFUSED: &[&str] = &[
    "TRUNCATE orders",
    "ALTER TABLE orders_v2 ADD COLUMN x int",
    "UPDATE orders SET id = id + 1000 WHERE id = 1",
    "TRUNCATE orders_v2",
    "UPDATE orders_v2 SET id = id + 1000 WHERE id = 1",
    "INSERT INTO orders_v2 (id, customer, total_cents) SELECT id + 100, customer, 1 FROM orders",
    "WITH d AS (DELETE FROM orders WHERE id = 1 RETURNING id) SELECT id FROM d",
];

const REFUSED_COPY: &[&str] = &["COPY orders FROM STDIN", "COPY orders_v2 FROM STDIN"];

/// SQLSTATE 0A000 and a message starting `pgshift:` that names the migration.
fn assert_refusal(err: &tokio_postgres::Error, sql: &str) {
    assert_eq!(
        sqlstate(err).as_deref(),
        Some("0A000"),
        "{sql}: {}",
        describe_error(err)
    );
    let message = err.as_db_error().map(|e| e.message()).unwrap_or_default();
    assert!(
        message.starts_with("pgshift:") && message.contains(MIGRATION),
        "{sql}: {message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_statements_on_either_table_are_refused_in_expand() {
    let env = Orders::start("moves_refused").await;
    env.proxy.set_phase(MIGRATION, "expand").await;
    env.backfill().await;
    let app = env.app().await;
    let state = async || {
        (
            env.dump("orders").await,
            env.dump("orders_v2").await,
            env.columns("orders").await,
            env.columns("orders_v2").await,
        )
    };
    let before = state().await;
    assert_eq!(before.0.len(), 3, "seed rows: {before:?}");
    for sql in REFUSED {
        let simple = app.simple_query(sql).await;
        assert_refusal(&simple.expect_err(sql), sql);
        let prepared = app.prepare(sql).await;
        assert_refusal(&prepared.expect_err(sql), sql);
        assert_eq!(state().await, before, "{sql} changed a table");
        let alive = app.query_one("SELECT 1", &[]).await;
        assert!(alive.is_ok(), "after {sql}: {alive:?}");
    }
    let mut raw = Endpoint::app(&env).await;
    let simple_copy = Mode::all().contains(&Mode::Raw);
    for sql in REFUSED_COPY {
        if simple_copy {
            let simple = raw.run(Mode::Raw, sql).await.map(|o| o.tag);
            assert!(
                simple
                    .as_ref()
                    .is_err_and(|e| e.starts_with("0A000: pgshift:") && e.contains(MIGRATION)),
                "{sql} (simple protocol): {simple:?}"
            );
            assert_eq!(state().await, before, "{sql} changed a table");
        }
        match app.copy_in::<_, bytes::Bytes>(*sql).await {
            Ok(_) => panic!("{sql}: pgshift started the COPY"),
            Err(e) => assert_refusal(&e, sql),
        }
        assert_eq!(state().await, before, "{sql} changed a table");
        let alive = app.query_one("SELECT 1", &[]).await;
        assert!(alive.is_ok(), "after {sql}: {alive:?}");
    }
    assert_eq!(
        env.differences().await,
        Vec::<String>::new(),
        "the tables still agree"
    );
}
