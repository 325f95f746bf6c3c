//! Column splits (`full_name` → `first_name` + `last_name`, config/examples/column-split.toml)
//! and what clients see after `complete_sql` dropped an old column, through the real proxy:
//!
//! - expand, before the backfill: an UPDATE setting only some of the new columns keeps the
//!   others as the client reads them (`up` of the old column), so `full_name` is rebuilt from
//!   them and not from the still NULL stored new columns; in switch the stored new columns
//!   are the truth and are used as they are;
//! - contract and complete: writes naming the old column write every new column;
//! - after complete (old column dropped): the old name still reads, once, and `SELECT *`
//!   returns the physical columns only, for a split and for a rename.
//!
//! Expected values come from a plain table of the shape the new app believes in (run
//! directly), or from a direct `SELECT *` of the real table.

mod common;

use common::ctl::record;
use common::users::{RENAME, rename_in_contract};
use common::{
    Proxy, ProxyConfig, TestDb, cluster, connect, control_toml, describe_error,
    fresh_database_with, physical_columns, sqlstate,
};
use tokio_postgres::{Client, SimpleQueryMessage};

const SPLIT: &str = "users_split_name";

const UP_FIRST: &str = "split_part(full_name, ' ', 1)";
const UP_LAST: &str =
    "CASE WHEN strpos(full_name, ' ') > 0 THEN substr(full_name, strpos(full_name, ' ') + 1) END";
const DOWN: &str = "concat_ws(' ', first_name, last_name)";

fn split_toml(db: &str) -> String {
    format!(
        r#"{control}
[[migration]]
name = "{SPLIT}"
database = "{db}"
table = "public.users"
kind = "columns"
phase = "planned"
expand_sql = "ALTER TABLE users ADD COLUMN first_name text, ADD COLUMN last_name text"
complete_sql = "ALTER TABLE users DROP COLUMN full_name"
[[migration.columns]]
old = "full_name"
new = "first_name"
up = "{UP_FIRST}"
down = "{DOWN}"
[[migration.columns]]
old = "full_name"
new = "last_name"
up = "{UP_LAST}"
down = "{DOWN}"
"#,
        control = control_toml()
    )
}

const SPLIT_SCHEMA: &str = "CREATE TABLE users (id int PRIMARY KEY, full_name text, email text);
     INSERT INTO users VALUES (1, 'Ann Lee', 'ann@x'), (2, 'Bob Stone Jr', 'bob@x'),
         (3, 'Cy', 'cy@x'), (4, 'Dee Ray', 'dee@x');
     CREATE TABLE orders (order_id int PRIMARY KEY, user_id int, item text);
     INSERT INTO orders VALUES (10, 1, 'pen'), (11, 2, 'ink');";

/// A result as text: column names, then rows (simple query protocol, as a client sees it).
async fn table(
    client: &Client,
    sql: &str,
) -> Result<(Vec<String>, Vec<Vec<Option<String>>>), String> {
    let messages = client
        .simple_query(sql)
        .await
        .map_err(|e| format!("{sql}: {}", describe_error(&e)))?;
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    for m in messages {
        match m {
            SimpleQueryMessage::RowDescription(desc) => {
                columns = desc.iter().map(|c| c.name().to_owned()).collect();
            }
            SimpleQueryMessage::Row(row) => {
                columns = row.columns().iter().map(|c| c.name().to_owned()).collect();
                rows.push(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_owned))
                        .collect(),
                );
            }
            _ => {}
        }
    }
    Ok((columns, rows))
}

/// Column names and type OIDs of a prepared statement (extended protocol).
async fn described(client: &Client, sql: &str) -> Vec<(String, u32)> {
    client
        .prepare(sql)
        .await
        .unwrap_or_else(|e| panic!("prepare {sql}: {}", describe_error(&e)))
        .columns()
        .iter()
        .map(|c| (c.name().to_owned(), c.type_().oid()))
        .collect()
}

async fn exec(client: &Client, sql: &str) -> u64 {
    client
        .execute(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe_error(&e)))
}

/// `(full_name, first_name, last_name)` of row `id`, read directly.
async fn stored(direct: &Client, id: i32) -> (Option<String>, Option<String>, Option<String>) {
    let row = direct
        .query_one(
            "SELECT full_name, first_name, last_name FROM users WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// `(first_name, last_name)` of row `id` after complete (no `full_name` any more), direct.
async fn stored_parts(direct: &Client, id: i32) -> (Option<String>, Option<String>) {
    let row = direct
        .query_one(
            "SELECT first_name, last_name FROM users WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

fn some(s: &str) -> Option<String> {
    Some(s.to_owned())
}

/// `ctl ARGS… --wait` (backfill/verify), which must succeed; the job's status record.
async fn job(proxy: &Proxy, args: &[&str], job: &str) -> serde_json::Value {
    let out = proxy.ctl_output(&[], args).await;
    assert!(
        out.status.success(),
        "pgshift ctl {args:?}: {}\n{}\nlog:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        proxy.log()
    );
    record(proxy, SPLIT, job).await
}

/// A fresh database with [`SPLIT_SCHEMA`] and a proxy with the split in expand, not
/// backfilled.
async fn split_in_expand(hint: &str) -> (TestDb, Client, Proxy) {
    let (db, direct) = fresh_database_with(hint, SPLIT_SCHEMA).await;
    let proxy = ProxyConfig::new(cluster())
        .extra(&split_toml(&db.name))
        .spawn();
    proxy.set_phase(SPLIT, "expand").await;
    (db, direct, proxy)
}

/// [`split_in_expand`], then backfilled and moved on to contract.
async fn split_in_contract(hint: &str) -> (TestDb, Client, Proxy) {
    let (db, direct, proxy) = split_in_expand(hint).await;
    job(&proxy, &["backfill", SPLIT, "start", "--wait"], "backfill").await;
    proxy.set_phase(SPLIT, "contract").await;
    (db, direct, proxy)
}

/// The split's new-app view without pgshift: a plain `shape.users` holding `up` of every row
/// (what the table would hold after the backfill), reached through `search_path`.
async fn new_app_reference(direct: &Client, db: &TestDb) -> Client {
    direct
        .batch_execute(&format!(
            "CREATE SCHEMA shape;
             CREATE TABLE shape.users AS
                 SELECT id, email, {UP_FIRST} AS first_name, {UP_LAST} AS last_name
                 FROM public.users;
             ALTER TABLE shape.users ADD PRIMARY KEY (id);"
        ))
        .await
        .unwrap();
    let reference = db.connect().await;
    reference
        .batch_execute("SET search_path = shape")
        .await
        .unwrap();
    reference
}

/// Bug: in expand, before the backfill, `SET last_name = …` computed `full_name` from the
/// stored `first_name`, still NULL: `'Ann Lee'` became `'Lee-Smith'`, and verify was clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_expand_update_of_some_parts_keeps_the_others() {
    let (db, direct, proxy) = split_in_expand("split_expand_parts").await;
    let reference = new_app_reference(&direct, &db).await;
    let app = connect(&proxy.db_url(&db)).await;

    // Not backfilled: the stored new columns are NULL.
    assert_eq!(stored(&direct, 1).await, (some("Ann Lee"), None, None));

    let update_first = "UPDATE users SET first_name = $1 WHERE id = $2";
    let statements = [
        "UPDATE users SET last_name = 'Lee-Smith' WHERE id = 1",
        // A computed value, evaluated once per row.
        "UPDATE users SET last_name = upper('ray') WHERE id = 4",
        // ON CONFLICT DO UPDATE: the existing row's parts.
        "INSERT INTO users (id, first_name) VALUES (3, 'x') \
         ON CONFLICT (id) DO UPDATE SET last_name = 'Smith'",
    ];
    for sql in statements {
        assert_eq!(exec(&app, sql).await, exec(&reference, sql).await, "{sql}");
    }
    for client in [&app, &reference] {
        let n = client
            .execute(update_first, &[&"Robert", &2i32])
            .await
            .unwrap();
        assert_eq!(n, 1);
    }

    // What the new app reads equals the plain table's, and full_name is down() of it.
    let read = "SELECT id, first_name, last_name FROM users ORDER BY id";
    let expected = table(&reference, read).await.unwrap();
    assert_eq!(table(&app, read).await.unwrap(), expected);
    let full = format!("SELECT id, {DOWN} AS full_name FROM users ORDER BY id");
    let expected_full = table(&reference, &full).await.unwrap().1;
    let got_full = table(&direct, "SELECT id, full_name FROM users ORDER BY id")
        .await
        .unwrap()
        .1;
    assert_eq!(got_full, expected_full);
    assert_eq!(stored(&direct, 1).await.0, some("Ann Lee-Smith"));
    assert_eq!(stored(&direct, 2).await.0, some("Robert Stone Jr"));
    assert_eq!(stored(&direct, 3).await.0, some("Cy Smith"));
    assert_eq!(stored(&direct, 4).await.0, some("Dee RAY"));

    // The backfill and verify agree with the table.
    let backfill = job(&proxy, &["backfill", SPLIT, "start", "--wait"], "backfill").await;
    assert_eq!(backfill["state"], "done", "{backfill}");
    let verify = job(&proxy, &["verify", SPLIT, "--wait"], "verify").await;
    assert_eq!(verify["state"], "clean", "{verify}");
    assert_eq!(
        table(&direct, read).await.unwrap(),
        expected,
        "the backfilled new columns"
    );

    // Switch: the stored new columns are the truth. A first name `up` would not reproduce
    // (`'Mary Ann'`) is kept when only the last name changes.
    proxy.set_phase(SPLIT, "switch").await;
    direct
        .batch_execute(
            "UPDATE users SET first_name = 'Mary Ann', last_name = 'Lee', \
             full_name = 'Mary Ann Lee' WHERE id = 1",
        )
        .await
        .unwrap();
    exec(
        &app,
        "UPDATE users SET last_name = 'Lee-Smith' WHERE id = 1",
    )
    .await;
    assert_eq!(
        stored(&direct, 1).await,
        (
            some("Mary Ann Lee-Smith"),
            some("Mary Ann"),
            some("Lee-Smith")
        )
    );
    exec(&app, "UPDATE users SET first_name = 'Bo' WHERE id = 2").await;
    assert_eq!(
        stored(&direct, 2).await,
        (some("Bo Stone Jr"), some("Bo"), some("Stone Jr"))
    );
}

/// Bug: in contract and complete every write naming the split's old column was refused with
/// "overlapping rewrites". It writes each new column with its `up`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_old_name_writes_in_contract_and_complete() {
    let (db, direct, proxy) = split_in_contract("split_contract_writes").await;
    let app = connect(&proxy.db_url(&db)).await;

    let writes = |round: i32| {
        let id = |n: i32| 100 * round + n;
        vec![
            (
                format!(
                    "INSERT INTO users (id, full_name, email) VALUES ({}, 'Dee Dee Ramone', 'd@x')",
                    id(1)
                ),
                id(1),
                (some("Dee"), some("Dee Ramone")),
            ),
            // Without a column list: the physical columns in order (round 1 only: after
            // complete they are id, email, first_name, last_name).
            (
                if round == 1 {
                    format!("INSERT INTO users VALUES ({}, 'Gus Grant', 'g@x')", id(2))
                } else {
                    format!(
                        "INSERT INTO users VALUES ({}, 'g@x', 'Gus', 'Grant')",
                        id(2)
                    )
                },
                id(2),
                (some("Gus"), some("Grant")),
            ),
            (
                format!(
                    "INSERT INTO users (id, full_name) VALUES ({}, lower('FAY WRAY'))",
                    id(3)
                ),
                id(3),
                (some("fay"), some("wray")),
            ),
            (
                format!(
                    "INSERT INTO users (id, full_name) SELECT {}, 'Ned Kelly'",
                    id(5)
                ),
                id(5),
                (some("Ned"), some("Kelly")),
            ),
            (
                format!(
                    "INSERT INTO users (id, full_name) VALUES ({}, 'Hal') \
                     ON CONFLICT (id) DO UPDATE SET full_name = EXCLUDED.full_name || ' Jr'",
                    id(1)
                ),
                id(1),
                (some("Hal"), some("Jr")),
            ),
            (
                format!(
                    "UPDATE users SET full_name = 'Ivy Lee-Smith' WHERE id = {}",
                    id(2)
                ),
                id(2),
                (some("Ivy"), some("Lee-Smith")),
            ),
            (
                format!(
                    "UPDATE users SET full_name = upper(full_name), email = 'u@x' WHERE id = {}",
                    id(3)
                ),
                id(3),
                (some("FAY"), some("WRAY")),
            ),
        ]
    };

    for round in [1, 2] {
        for (sql, id, parts) in writes(round) {
            exec(&app, &sql).await;
            if round == 1 {
                // Contract: the old column is no longer written.
                let (full, first, last) = stored(&direct, id).await;
                assert_eq!((first, last), parts, "{sql}");
                assert_eq!(full, None, "{sql}");
            } else {
                assert_eq!(stored_parts(&direct, id).await, parts, "{sql}");
            }
        }
        // Parameters keep the old column's type; the old name reads back.
        let insert = app
            .prepare("INSERT INTO users (id, full_name) VALUES ($1, $2)")
            .await
            .unwrap_or_else(|e| panic!("{}", describe_error(&e)));
        app.execute(&insert, &[&(100 * round + 4), &"Jo Ann Doe"])
            .await
            .unwrap();
        app.execute(
            "UPDATE users SET full_name = $1 WHERE id = $2",
            &[&"Kim Park", &(100 * round + 4)],
        )
        .await
        .unwrap_or_else(|e| panic!("{}", describe_error(&e)));
        let row = app
            .query_one(
                "SELECT full_name, first_name, last_name FROM users WHERE id = $1",
                &[&(100 * round + 4)],
            )
            .await
            .unwrap_or_else(|e| panic!("{}", describe_error(&e)));
        assert_eq!(
            (
                row.get::<_, String>(0),
                row.get::<_, String>(1),
                row.get::<_, String>(2)
            ),
            ("Kim Park".into(), "Kim".into(), "Park".into())
        );
        // RETURNING the old name: computed from the row as written.
        let row = app
            .query_one(
                "UPDATE users SET full_name = 'Lu Chen' WHERE id = 1 RETURNING full_name",
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("{}", describe_error(&e)));
        assert_eq!(row.get::<_, String>(0), "Lu Chen");

        // Naming both the old column and one of its new columns is still refused.
        let err = app
            .execute(
                "UPDATE users SET full_name = 'a b', last_name = 'c' WHERE id = 1",
                &[],
            )
            .await
            .unwrap_err();
        assert_eq!(
            sqlstate(&err).as_deref(),
            Some("0A000"),
            "{}",
            describe_error(&err)
        );
        assert!(
            describe_error(&err).contains(SPLIT),
            "{}",
            describe_error(&err)
        );

        if round == 1 {
            let reply = proxy.ctl(&["complete", SPLIT]).await;
            assert_eq!(reply["ok"], true, "{reply}\nlog:\n{}", proxy.log());
            let gone = common::count(
                &direct,
                "SELECT count(*) FROM information_schema.columns \
                     WHERE table_name = 'users' AND column_name = 'full_name'",
            )
            .await;
            assert_eq!(gone, 0, "complete_sql dropped full_name");
        }
    }
}

/// Bugs: once `complete_sql` dropped the split's old column, the derived table listed it
/// twice (`SELECT full_name` failed with 42702, `SELECT *` returned it twice); for any column
/// migration `SELECT *` returned the dropped old names as extra columns. `SELECT *` returns
/// the physical columns, exactly as a direct one; old names still read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_after_complete_reads_old_name_once_and_star_is_physical() {
    let (db, direct, proxy) = split_in_contract("split_complete_reads").await;
    let reply = proxy.ctl(&["complete", SPLIT]).await;
    assert_eq!(reply["ok"], true, "{reply}\nlog:\n{}", proxy.log());
    let app = connect(&proxy.db_url(&db)).await;

    let (columns, rows) = table(&app, "SELECT full_name FROM users ORDER BY id")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(columns, ["full_name"]);
    let names: Vec<Option<String>> = rows.into_iter().map(|mut r| r.remove(0)).collect();
    assert_eq!(
        names,
        [
            some("Ann Lee"),
            some("Bob Stone Jr"),
            some("Cy"),
            some("Dee Ray")
        ]
    );
    let row = app
        .query_one(
            "SELECT u.full_name, first_name FROM users u WHERE full_name = $1",
            &[&"Bob Stone Jr"],
        )
        .await
        .unwrap_or_else(|e| panic!("{}", describe_error(&e)));
    assert_eq!(row.get::<_, String>(1), "Bob");

    assert_star_is_physical(&app, &direct).await;

    // A `*` pgshift cannot expand column by column is refused, not answered with the old name.
    let err = app
        .simple_query("SELECT * FROM users NATURAL JOIN orders")
        .await
        .unwrap_err();
    assert_eq!(
        sqlstate(&err).as_deref(),
        Some("0A000"),
        "{}",
        describe_error(&err)
    );
    assert!(
        describe_error(&err).contains(SPLIT) && describe_error(&err).contains("name the columns"),
        "{}",
        describe_error(&err)
    );
}

/// The same for a rename: after complete, `SELECT *` lists `id, display_name` only, the old
/// name `user_name` still reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_after_complete_star_is_physical() {
    let (db, direct) = fresh_database_with(
        "rename_complete_star",
        "CREATE TABLE users (id int PRIMARY KEY, user_name text, email text);
         INSERT INTO users VALUES (1, 'ann', 'ann@x'), (2, 'bob', 'bob@x'),
             (3, 'cy', 'cy@x'), (4, 'dee', 'dee@x');
         CREATE TABLE orders (order_id int PRIMARY KEY, user_id int, item text);
         INSERT INTO orders VALUES (10, 1, 'pen'), (11, 2, 'ink');",
    )
    .await;
    let proxy = rename_in_contract(&db, &direct).await;
    let reply = proxy.ctl(&["complete", RENAME]).await;
    assert_eq!(reply["ok"], true, "{reply}\nlog:\n{}", proxy.log());
    let app = connect(&proxy.db_url(&db)).await;

    let (columns, rows) = table(&app, "SELECT user_name FROM users WHERE id = 2")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (columns, rows),
        (vec!["user_name".to_owned()], vec![vec![some("bob")]])
    );

    assert_star_is_physical(&app, &direct).await;
}

/// `SELECT *` in its common forms answers through the proxy exactly as directly: the same
/// column names and types (described), the same rows.
async fn assert_star_is_physical(app: &Client, direct: &Client) {
    let physical = physical_columns(direct, "public.users").await;
    let star = table(app, "SELECT * FROM users ORDER BY id")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(star.0, physical, "SELECT * lists the physical columns");
    for sql in [
        "SELECT * FROM users ORDER BY id",
        "SELECT * FROM public.users ORDER BY 1",
        "SELECT u.* FROM users u ORDER BY u.id",
        "SELECT users.*, 1 AS one FROM users ORDER BY id",
        "SELECT DISTINCT * FROM users ORDER BY 1",
        "SELECT * FROM users u JOIN orders o ON o.user_id = u.id ORDER BY o.order_id",
        "SELECT * FROM orders o, users ORDER BY o.order_id, users.id",
        "SELECT o.*, u.* FROM orders o LEFT JOIN users u ON u.id = o.user_id ORDER BY 1",
        "SELECT * FROM (SELECT * FROM users WHERE id > 1) s ORDER BY 1",
        "WITH c AS (SELECT * FROM users) SELECT * FROM c ORDER BY 1",
        "SELECT * FROM users WHERE id = 1 UNION ALL SELECT * FROM users WHERE id = 2 ORDER BY 1",
        "SELECT * FROM users WHERE EXISTS (SELECT * FROM users u2 WHERE u2.id = users.id) \
         ORDER BY id",
    ] {
        let through = table(app, sql).await.unwrap_or_else(|e| panic!("{e}"));
        let plain = table(direct, sql).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(through, plain, "{sql}");
        assert_eq!(
            described(app, sql).await,
            described(direct, sql).await,
            "{sql}"
        );
    }
}
