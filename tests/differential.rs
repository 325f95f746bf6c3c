//! Differential tests: the same statements run on a direct connection and through the proxy,
//! each side in its own fresh database, must give identical results: rows (raw binary values),
//! column names and types, row counts, and errors (every field of the ErrorResponse). The psql
//! part compares psql's whole echoed output (command tags, errors, notices).

mod common;

use std::error::Error;

use common::*;
use futures_util::TryStreamExt;
use tokio_postgres::error::DbError;
use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

/// Statements run in order; `true` marks the ones the server must reject (checked on the direct
/// side, so the script keeps meaning what it says).
const STATEMENTS: &[(&str, bool)] = &[
    ("SET TimeZone = 'UTC'", false),
    ("SET extra_float_digits = 1", false),
    ("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')", false),
    ("CREATE TYPE pair AS (a int, b text)", false),
    (
        "CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, price numeric(10,2), \
         tags text[], attrs jsonb, doc json, created timestamptz, day date, at_time time, \
         span interval, blob bytea, uid uuid, feeling mood, flag boolean, pt pair, \
         CONSTRAINT price_not_negative CHECK (price >= 0))",
        false,
    ),
    ("CREATE UNIQUE INDEX items_name ON items (name)", false),
    ("CREATE TABLE items (id int)", true),
    (
        "INSERT INTO items (name, price, tags, attrs, doc, created, day, at_time, span, blob, \
         uid, feeling, flag, pt) VALUES ('apple', 1.25, ARRAY['fruit', 'red'], \
         '{\"color\": \"red\", \"n\": 1}', '{\"a\": [1, 2]}', '2024-02-29 12:34:56.789+02', \
         '2024-02-29', '23:59:59.999999', '1 year 2 mons 3 days 04:05:06', '\\xdeadbeef', \
         'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'happy', true, ROW(1, 'x')) RETURNING id, name",
        false,
    ),
    (
        "INSERT INTO items (name, price, tags, feeling, flag) VALUES \
         ('pear', NULL, '{}', 'sad', false), ('plum', 3, ARRAY[NULL, 'b'], NULL, NULL), \
         ('kiwi', 0.5, NULL, 'ok', true) RETURNING *",
        false,
    ),
    ("INSERT INTO items (name, price) VALUES ('apple', 1)", true),
    (
        "INSERT INTO items (name, price) VALUES ('negative', -1)",
        true,
    ),
    ("INSERT INTO items (price) VALUES (1)", true),
    (
        "INSERT INTO items (name, feeling) VALUES ('x', 'angry')",
        true,
    ),
    (
        "UPDATE items SET price = price * 2 WHERE price IS NOT NULL RETURNING id, price",
        false,
    ),
    ("UPDATE items SET feeling = 'ok' WHERE id > 100", false),
    (
        "DELETE FROM items WHERE name = 'pear' RETURNING id, tags",
        false,
    ),
    ("SELECT * FROM items ORDER BY id", false),
    (
        "SELECT id, tags[1], attrs -> 'color', attrs ->> 'n', doc -> 'a' -> 1, pt, (pt).b \
         FROM items ORDER BY id",
        false,
    ),
    ("SELECT NULL, NULL::int, ''::text, ' '::text", false),
    ("SELECT 1 / 0", true),
    ("SELECT * FROM no_such_table", true),
    ("SELECT no_such_column FROM items", true),
    ("SELEC 1", true),
    ("SELECT 'abc'::int", true),
    ("SELECT 9223372036854775807::int8 + 1", true),
    (
        "SELECT ARRAY[1, 2, NULL, 4], ARRAY[[1, 2], [3, 4]], '{}'::int[], ARRAY['a b', 'c\"d']",
        false,
    ),
    (
        "SELECT 12345678901234567890.123456789::numeric, 'NaN'::numeric, -0.0001::numeric, \
         1e-20::numeric, 0::numeric(10,3)",
        false,
    ),
    (
        "SELECT 1.5::float4, 'Infinity'::float8, '-0'::float8, (2 ^ 62)::int8, 32767::int2, \
         0.1::float8 + 0.2::float8",
        false,
    ),
    (
        "SELECT '2024-01-01 00:00:00'::timestamp, '2024-06-01 12:00:00+05:30'::timestamptz, \
         'infinity'::timestamp, '-infinity'::timestamptz, '1 day -02:00:00'::interval, \
         '4713-01-01 BC'::date, '10:00:00+03'::timetz",
        false,
    ),
    (
        "SELECT '\\x00ff10'::bytea, ''::bytea, decode('68656c6c6f', 'hex')",
        false,
    ),
    (
        "SELECT 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, \
         '00000000-0000-0000-0000-000000000000'::uuid",
        false,
    ),
    (
        "SELECT '{\"b\": 1, \"a\": [true, null, 1.5e3]}'::jsonb, '{\"b\":1,  \"a\":2}'::json, \
         jsonb_build_object('k', ARRAY[1, 2]), '[]'::jsonb",
        false,
    ),
    (
        "SELECT 'sad'::mood < 'happy'::mood, 'ok'::mood, enum_range(NULL::mood)::text",
        false,
    ),
    ("SELECT ROW(1, 'x')::pair, (ROW(2, NULL)::pair).b", false),
    (
        "SELECT g, g * g AS square FROM generate_series(1, 100) g",
        false,
    ),
    (
        "SELECT count(*), sum(price), avg(price), max(name), \
         string_agg(name, ',' ORDER BY name) FROM items",
        false,
    ),
    ("", false),
    ("-- only a comment", false),
    (
        "SELECT 1 AS a, 2 AS a, 3 AS \"Mixed Case\", 4 AS \"with space\", 5",
        false,
    ),
    (
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) \
         SELECT n FROM r",
        false,
    ),
    (
        "CREATE VIEW cheap AS SELECT id, name FROM items WHERE price < 5",
        false,
    ),
    ("SELECT * FROM cheap ORDER BY id", false),
    (
        "CREATE FUNCTION add1(int) RETURNS int LANGUAGE sql AS 'SELECT $1 + 1'",
        false,
    ),
    ("SELECT add1(41), add1(NULL)", false),
    (
        "CREATE FUNCTION boom() RETURNS void LANGUAGE plpgsql AS $$ BEGIN \
         RAISE EXCEPTION USING ERRCODE = 'P0001', MESSAGE = 'boom', DETAIL = 'some detail', \
         HINT = 'a hint'; END $$",
        false,
    ),
    ("SELECT boom()", true),
    ("BEGIN", false),
    ("INSERT INTO items (name) VALUES ('in tx')", false),
    ("SAVEPOINT s", false),
    ("SELECT 1 / 0", true),
    ("SELECT 1", true),
    ("ROLLBACK TO s", false),
    ("INSERT INTO items (name) VALUES ('after savepoint')", false),
    ("COMMIT", false),
    ("SELECT name FROM items ORDER BY id", false),
    (
        "CREATE TABLE t2 AS SELECT g FROM generate_series(1, 10) g",
        false,
    ),
    ("ALTER TABLE t2 ADD COLUMN x int DEFAULT 7", false),
    ("SELECT * FROM t2 WHERE g > 8", false),
    ("DROP TABLE t2", false),
    ("DROP TABLE t2", true),
    (
        "SELECT 'x' || repeat('é', 3), length('日本語'), upper('straße')",
        false,
    ),
    (
        "SELECT $$dollar 'quoted'$$, E'tab\\there', U&'\\0041', 'it''s'",
        false,
    ),
    ("SELECT * FROM items WHERE false", false),
    ("VALUES (1, 'a'), (2, NULL)", false),
    ("SELECT pg_typeof(1.5), format('%s-%L', 'a', 'b''c')", false),
    ("SELECT id FROM items ORDER BY id LIMIT 2 OFFSET 1", false),
    ("SELECT 1; SELECT 2", false),
    (
        "SELECT point(1, 2), '[1,5)'::int4range, '192.168.0.1/24'::inet, 'a & b'::tsquery",
        false,
    ),
    ("DO $$ BEGIN RAISE NOTICE 'a notice'; END $$", false),
    ("SHOW TimeZone", false),
    (
        "EXPLAIN (COSTS OFF) SELECT * FROM items WHERE id = 1",
        false,
    ),
    ("TRUNCATE items", false),
    ("SELECT count(*) FROM items", false),
];

/// A column value's raw bytes, whatever its type.
#[derive(Debug, PartialEq)]
struct Raw(Option<Vec<u8>>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(Raw(Some(raw.to_vec())))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(Raw(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// What one statement produced.
#[derive(Debug, PartialEq)]
enum Outcome {
    Rows {
        /// Name and type; user-defined types (OID ≥ 16384) by name, as OIDs differ per database.
        columns: Vec<(String, String)>,
        rows: Vec<Vec<Raw>>,
        affected: Option<u64>,
    },
    Text(Vec<String>),
    Error(String),
}

impl Outcome {
    fn is_error(&self) -> bool {
        matches!(self, Outcome::Error(_))
    }
}

fn type_key(ty: &Type) -> String {
    if ty.oid() < 16384 {
        format!("oid {}", ty.oid())
    } else {
        format!("{}.{}", ty.schema(), ty.name())
    }
}

/// Every field of the server's error, or the client-side error when there is none.
fn error_key(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db_error_key(db),
        None => format!("client error: {e}"),
    }
}

fn db_error_key(db: &DbError) -> String {
    format!(
        "{} {} {:?} detail={:?} hint={:?} position={:?} where={:?} schema={:?} table={:?} \
         column={:?} datatype={:?} constraint={:?} routine={:?}",
        db.severity(),
        db.code().code(),
        db.message(),
        db.detail(),
        db.hint(),
        db.position(),
        db.where_(),
        db.schema(),
        db.table(),
        db.column(),
        db.datatype(),
        db.constraint(),
        db.routine(),
    )
}

/// Extended protocol: prepare, describe, execute with binary results.
async fn run_extended(client: &Client, sql: &str) -> Outcome {
    let stmt = match client.prepare(sql).await {
        Ok(stmt) => stmt,
        Err(e) => return Outcome::Error(error_key(&e)),
    };
    let columns = stmt
        .columns()
        .iter()
        .map(|c| (c.name().to_string(), type_key(c.type_())))
        .collect();
    let no_params: [&(dyn ToSql + Sync); 0] = [];
    let stream = match client.query_raw(&stmt, no_params).await {
        Ok(stream) => stream,
        Err(e) => return Outcome::Error(error_key(&e)),
    };
    futures_util::pin_mut!(stream);
    let mut rows = Vec::new();
    loop {
        match stream.try_next().await {
            Ok(Some(row)) => rows.push(
                (0..row.len())
                    .map(|i| row.try_get::<_, Raw>(i).expect("raw value"))
                    .collect(),
            ),
            Ok(None) => break,
            Err(e) => return Outcome::Error(error_key(&e)),
        }
    }
    Outcome::Rows {
        columns,
        rows,
        affected: stream.rows_affected(),
    }
}

/// Simple protocol: text rows, one line per message.
async fn run_simple(client: &Client, sql: &str) -> Outcome {
    match client.simple_query(sql).await {
        Ok(messages) => Outcome::Text(messages.iter().map(render_message).collect()),
        Err(e) => Outcome::Error(error_key(&e)),
    }
}

fn render_message(message: &SimpleQueryMessage) -> String {
    match message {
        SimpleQueryMessage::RowDescription(cols) => {
            let names: Vec<&str> = cols.iter().map(|c| c.name()).collect();
            format!("columns {names:?}")
        }
        SimpleQueryMessage::Row(row) => {
            let values: Vec<Option<&str>> = (0..row.len()).map(|i| row.get(i)).collect();
            format!("row {values:?}")
        }
        SimpleQueryMessage::CommandComplete(n) => format!("complete {n}"),
        other => format!("{other:?}"),
    }
}

/// Two fresh databases: one used directly, one through the proxy.
async fn direct_and_proxied(hint: &str, proxy: &Proxy) -> (Client, Client) {
    let direct_db = fresh_database(&format!("{hint}_direct")).await;
    let proxied_db = fresh_database(&format!("{hint}_proxied")).await;
    let direct = connect(&direct_db.url).await;
    let proxied = connect(&proxy.db_url(&proxied_db)).await;
    (direct, proxied)
}

/// Runs every statement on both sides and checks the outcomes match and the expected ones failed.
async fn compare_all<F>(direct: &Client, proxied: &Client, run: F)
where
    F: AsyncFn(&Client, &str) -> Outcome,
{
    let mut mismatches = Vec::new();
    for (i, (sql, must_fail)) in STATEMENTS.iter().enumerate() {
        let expected = run(direct, sql).await;
        let got = run(proxied, sql).await;
        if got != expected {
            mismatches.push(format!(
                "#{i} {sql}\n  direct:  {expected:?}\n  proxied: {got:?}"
            ));
        }
        // Multi-statement strings cannot be prepared; in simple mode they succeed.
        if !sql.contains("; ") {
            assert_eq!(
                expected.is_error(),
                *must_fail,
                "#{i} {sql}: direct outcome {expected:?}"
            );
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} statements differ through the proxy:\n{}",
        mismatches.len(),
        STATEMENTS.len(),
        mismatches.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_results_match_a_direct_connection() {
    let proxy = Proxy::start();
    let (direct, proxied) = direct_and_proxied("diff_ext", &proxy).await;

    compare_all(&direct, &proxied, run_extended).await;

    assert!(STATEMENTS.len() >= 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_protocol_results_match_a_direct_connection() {
    let proxy = Proxy::start();
    let (direct, proxied) = direct_and_proxied("diff_simple", &proxy).await;

    compare_all(&direct, &proxied, run_simple).await;
}

const PSQL_SCRIPT: &str = r#"SET TimeZone = 'UTC';
CREATE TABLE t (id int PRIMARY KEY, v text, n numeric);
INSERT INTO t VALUES (1, 'a', 1.5), (2, 'b', NULL), (3, NULL, -2);
UPDATE t SET v = 'z' WHERE id >= 2;
DELETE FROM t WHERE id = 3;
SELECT * FROM t ORDER BY id;
SELECT * FROM missing;
INSERT INTO t VALUES (1, 'dup', 0);
SELECT 1 / 0;
SELEC 1;
BEGIN;
INSERT INTO t VALUES (10, 'tx', 1);
SELECT oops;
COMMIT;
COPY t TO STDOUT;
\d t
SELECT 41 + 1 AS answer \gset
\echo answer is :answer
\x on
SELECT 1 AS a, 'two' AS b;
\x off
CREATE TABLE t2 AS SELECT g FROM generate_series(1, 3) g;
DROP TABLE t2;
DO $$ BEGIN RAISE NOTICE 'notice here'; END $$;
PREPARE p (int) AS SELECT v FROM t WHERE id = $1;
EXECUTE p(2);
SELECT 'done';
"#;

async fn run_psql_script(url: &str, db_name: &str, port: u16, script: &std::path::Path) -> String {
    let script = script.to_str().unwrap();
    let out = psql(url, &["-a", "-v", "VERBOSITY=verbose", "-f", script], None).await;
    assert!(out.status.success(), "psql failed: {out:?}");
    let text = format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.replace(db_name, "<db>")
        .replace(&port.to_string(), "<port>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_output_matches_a_direct_connection() {
    let proxy = Proxy::start();
    let direct_db = fresh_database("psql_direct").await;
    let proxied_db = fresh_database("psql_proxied").await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.sql");
    std::fs::write(&script, PSQL_SCRIPT).unwrap();

    let direct = run_psql_script(&direct_db.url, &direct_db.name, cluster().port(), &script).await;
    let proxied = run_psql_script(
        &proxy.db_url(&proxied_db),
        &proxied_db.name,
        proxy.port(),
        &script,
    )
    .await;

    // The script must really have produced tags and verbose errors, or the comparison is empty.
    for expected in [
        "INSERT 0 3",
        "UPDATE 2",
        "DELETE 1",
        "ERROR:  42P01: relation \"missing\" does not exist",
        "ERROR:  23505",
        "ROLLBACK",
        "answer is 42",
        "NOTICE:  00000: notice here",
        "SELECT 3",
    ] {
        assert!(
            direct.contains(expected),
            "direct psql output lacks {expected:?}:\n{direct}"
        );
    }
    assert_eq!(proxied, direct, "psql output differs through the proxy");
}

/// A message sequence sent in one write, and how many ReadyForQuery messages end its replies.
struct Scenario {
    name: &'static str,
    frames: Vec<Vec<u8>>,
    ready_count: usize,
}

fn scenario(name: &'static str, frames: Vec<Vec<u8>>, ready_count: usize) -> Scenario {
    Scenario {
        name,
        frames,
        ready_count,
    }
}

/// Sequences that exercise the corners of the protocol: errors mid-pipeline, row limits,
/// Describe/Close, FunctionCall, COPY in both directions and CopyFail, Flush.
fn raw_scenarios(abs_oid: u32) -> Vec<Scenario> {
    use frontend::*;
    vec![
        scenario(
            "error mid-pipeline discards until Sync",
            vec![
                parse("", "SELECT 1 / 0", &[]),
                bind("", "", &[], 0),
                execute("", 0),
                parse("", "SELECT 2", &[]),
                bind("", "", &[], 0),
                execute("", 0),
                sync(),
                parse("", "SELECT 3", &[]),
                bind("", "", &[], 0),
                execute("", 0),
                sync(),
            ],
            2,
        ),
        scenario(
            "portal with a row limit",
            vec![
                parse("s1", "SELECT g FROM generate_series(1, 5) g", &[]),
                bind("p1", "s1", &[], 0),
                describe(b'P', "p1"),
                execute("p1", 2),
                execute("p1", 2),
                execute("p1", 0),
                sync(),
            ],
            1,
        ),
        scenario(
            "describe a statement with parameters",
            vec![
                parse("s2", "SELECT $1::int + $2, $3::text", &[0, 23, 0]),
                describe(b'S', "s2"),
                sync(),
            ],
            1,
        ),
        scenario(
            "close statements and a missing portal",
            vec![
                close(b'S', "s1"),
                close(b'S', "s2"),
                close(b'P', "nope"),
                sync(),
            ],
            1,
        ),
        scenario(
            "re-parse an existing name",
            vec![
                parse("s3", "SELECT 1", &[]),
                parse("s3", "SELECT 2", &[]),
                sync(),
            ],
            1,
        ),
        scenario(
            "empty queries",
            vec![
                parse("", "", &[]),
                bind("", "", &[], 0),
                execute("", 0),
                sync(),
                query(""),
                query(";"),
            ],
            3,
        ),
        scenario(
            "binary results and NULL parameters",
            vec![
                parse("", "SELECT 1::int8, 'x'::text, $1::int, $2::text", &[]),
                bind("", "", &[None, Some("é")], 1),
                execute("", 0),
                sync(),
            ],
            1,
        ),
        scenario(
            "bind with a wrong parameter count",
            vec![
                parse("s4", "SELECT $1::int", &[]),
                bind("", "s4", &[], 0),
                sync(),
            ],
            1,
        ),
        scenario(
            "bad parameter value",
            vec![
                parse("s6", "SELECT $1::int", &[]),
                bind("", "s6", &[Some("abc")], 0),
                execute("", 0),
                sync(),
            ],
            1,
        ),
        scenario(
            "function call",
            vec![
                function_call(abs_oid, &[Some("-5")]),
                function_call(abs_oid, &[None]),
            ],
            2,
        ),
        scenario(
            "copy in through the extended protocol",
            vec![
                parse("", "COPY t FROM STDIN", &[]),
                bind("", "", &[], 0),
                execute("", 0),
                copy_data(b"10\tten\n"),
                copy_data(b"11\televen\n"),
                copy_done(),
                sync(),
            ],
            1,
        ),
        scenario(
            "copy fail",
            vec![
                query("COPY t FROM STDIN"),
                copy_data(b"12\tx\n"),
                copy_fail("client gave up"),
            ],
            1,
        ),
        scenario(
            "copy out through the extended protocol",
            vec![
                parse("", "COPY (SELECT * FROM t ORDER BY id) TO STDOUT", &[]),
                bind("", "", &[], 0),
                execute("", 0),
                sync(),
                query("COPY (SELECT 1) TO STDOUT; SELECT 2"),
            ],
            2,
        ),
        scenario(
            "error inside a transaction block",
            vec![
                query("BEGIN; SELECT 1 / 0; SELECT 2"),
                query("SELECT 1"),
                query("ROLLBACK"),
            ],
            3,
        ),
        scenario(
            "parameter status and notices",
            vec![
                query("SET application_name = 'raw'"),
                query("SET DateStyle = 'German'"),
                query("DO $$ BEGIN RAISE NOTICE 'n1'; RAISE WARNING 'w1'; END $$"),
                query("RESET ALL"),
            ],
            4,
        ),
        scenario(
            "flush in the middle",
            vec![
                parse("s5", "SELECT 5", &[]),
                flush(),
                bind("", "s5", &[], 0),
                execute("", 0),
                flush(),
                sync(),
            ],
            1,
        ),
        scenario(
            "execute a missing portal, then sync alone",
            vec![execute("nope", 0), sync(), sync()],
            2,
        ),
    ]
}

/// Startup replies without BackendKeyData (pgshift hands out its own keys).
fn without_key_data(messages: Vec<BackendMessage>) -> Vec<BackendMessage> {
    messages.into_iter().filter(|m| m.tag != b'K').collect()
}

async fn raw_session(
    addr: std::net::SocketAddr,
    db: &str,
    abs_oid: u32,
) -> Vec<(String, Vec<BackendMessage>)> {
    let (mut conn, startup) =
        RawConn::startup(addr, &[("user", cluster().superuser()), ("database", db)]).await;
    let mut transcript = vec![("startup".to_string(), without_key_data(startup))];
    conn.send(&frontend::query(
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'one'), (2, NULL)",
    ))
    .await;
    transcript.push(("setup".to_string(), conn.read_until_ready(1).await));
    for s in raw_scenarios(abs_oid) {
        conn.send(&s.frames.concat()).await;
        transcript.push((
            s.name.to_string(),
            conn.read_until_ready(s.ready_count).await,
        ));
    }
    conn.send(&frontend::terminate()).await;
    transcript
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_message_sequences_match_a_direct_connection() {
    if cluster().superuser_password().is_some() {
        println!("skipped: the raw client supports trust authentication only");
        return;
    }
    let proxy = Proxy::start();
    let direct_db = fresh_database("raw_direct").await;
    let proxied_db = fresh_database("raw_proxied").await;
    let abs_oid: u32 = direct_db
        .connect()
        .await
        .query_one("SELECT 'abs(int4)'::regprocedure::oid", &[])
        .await
        .unwrap()
        .get(0);
    let direct_addr = std::net::SocketAddr::from(([127, 0, 0, 1], cluster().port()));

    let direct = raw_session(direct_addr, &direct_db.name, abs_oid).await;
    let proxied = raw_session(proxy.addr(), &proxied_db.name, abs_oid).await;

    assert_eq!(direct.len(), proxied.len());
    for ((name, expected), (_, got)) in direct.iter().zip(&proxied) {
        assert!(!expected.is_empty(), "{name}: no reply on the direct side");
        assert_eq!(got, expected, "{name}: replies differ through the proxy");
    }
}

/// (description, protocol version word, startup parameters)
type StartupVariant<'a> = (&'a str, u32, Vec<(&'a str, &'a str)>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_variants_match_a_direct_connection() {
    if cluster().superuser_password().is_some() {
        println!("skipped: the raw client supports trust authentication only");
        return;
    }
    let proxy = Proxy::start();
    let db = fresh_database("raw_startup").await;
    let direct_addr = std::net::SocketAddr::from(([127, 0, 0, 1], cluster().port()));
    let user = cluster().superuser();
    let variants: [StartupVariant; 4] = [
        (
            "plain",
            196_608,
            vec![("user", user), ("database", &db.name)],
        ),
        (
            "options and application_name",
            196_608,
            vec![
                ("user", user),
                ("database", &db.name),
                ("application_name", "raw-app"),
                ("options", "-c search_path=elsewhere -c DateStyle=SQL"),
            ],
        ),
        (
            "newer minor version and an unknown protocol option",
            196_608 + 5,
            vec![
                ("user", user),
                ("database", &db.name),
                ("_pq_.unknown", "1"),
            ],
        ),
        (
            "unknown database",
            196_608,
            vec![("user", user), ("database", "no_such_db")],
        ),
    ];

    for (what, version, params) in &variants {
        let (_, direct) = RawConn::startup_with_version(direct_addr, *version, params).await;
        let (_, proxied) = RawConn::startup_with_version(proxy.addr(), *version, params).await;
        assert_eq!(
            without_key_data(proxied),
            without_key_data(direct),
            "startup {what}: replies differ through the proxy"
        );
    }
}
