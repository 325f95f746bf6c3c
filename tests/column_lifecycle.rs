//! Column migrations end to end through the real proxy (issue 3): the rename `user_name` →
//! `display_name` and the type change `age` text → `age_int` integer, each taken planned →
//! expand → switch → contract by config reloads while an "old app" (old names) and a "new app"
//! (new names) keep their connections. After every step the table is inspected directly, and
//! each statement is also prepared and run directly against a plain table of the shape the
//! client believes in, so types, row counts and errors are compared with the unrewritten
//! statement's. Further tests: values evaluated once, parameter types, prepared statements and
//! transactions across phase flips, and psql's multi-statement strings.

mod common;

use common::users::{RENAME, TYPE_CHANGE, Users};
use common::{describe_error, psql};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row};

const PHASES: [&str; 4] = ["planned", "expand", "switch", "contract"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Old,
    New,
}

/// One column pair of the fixture, as the lifecycle scenario needs it.
struct Pair {
    migration: &'static str,
    old: &'static str,
    new: &'static str,
    old_type: Type,
    new_type: Type,
    /// The type change: old values are digit strings, new ones integers.
    numeric: bool,
}

const RENAME_PAIR: Pair = Pair {
    migration: RENAME,
    old: "user_name",
    new: "display_name",
    old_type: Type::TEXT,
    new_type: Type::TEXT,
    numeric: false,
};

const TYPE_CHANGE_PAIR: Pair = Pair {
    migration: TYPE_CHANGE,
    old: "age",
    new: "age_int",
    old_type: Type::TEXT,
    new_type: Type::INT4,
    numeric: true,
};

impl Pair {
    fn column(&self, side: Side) -> &'static str {
        match side {
            Side::Old => self.old,
            Side::New => self.new,
        }
    }

    fn type_of(&self, side: Side) -> &Type {
        match side {
            Side::Old => &self.old_type,
            Side::New => &self.new_type,
        }
    }

    /// The SQL literal of value `v` for a column of `side`. Rename values carry a doubled
    /// quote, so the splicing of rewritten statements is exercised on every write.
    fn lit(&self, side: Side, v: i32) -> String {
        match (self.numeric, side) {
            (true, Side::Old) => format!("'{v}'"),
            (true, Side::New) => v.to_string(),
            (false, _) => format!("'o''{v}'"),
        }
    }

    /// Value `v` as `column::text` shows it, on either side.
    fn text(&self, v: i32) -> String {
        if self.numeric {
            v.to_string()
        } else {
            format!("o'{v}")
        }
    }

    /// (rename phase, type change phase) with this pair in `phase` and the other planned.
    fn phases(&self, phase: &'static str) -> (&'static str, &'static str) {
        if self.migration == RENAME {
            (phase, "planned")
        } else {
            ("planned", phase)
        }
    }
}

struct App {
    name: &'static str,
    side: Side,
    client: Client,
}

/// The value, or a panic naming `what` and the server error.
fn must<T>(result: Result<T, tokio_postgres::Error>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {}", describe_error(&e)))
}

/// A text or integer cell as text.
fn cell(row: &Row, i: usize) -> Option<String> {
    let ty = row.columns()[i].type_();
    if *ty == Type::TEXT {
        row.get(i)
    } else if *ty == Type::INT4 {
        row.get::<_, Option<i32>>(i).map(|v| v.to_string())
    } else {
        panic!("unexpected column type {ty} in {row:?}")
    }
}

fn cells(rows: &[Row]) -> Vec<Vec<Option<String>>> {
    rows.iter()
        .map(|r| (0..r.len()).map(|i| cell(r, i)).collect())
        .collect()
}

/// Prepares `sql` through pgshift (`app`) and directly on the plain reference table: same
/// parameter types, same column names and types, or the same error. Statements without
/// parameters are then run on both: same row count (writes) or same cells (reads). Returns
/// the row count or number of rows, `None` when both refused the statement.
async fn same_as_reference(app: &Client, reference: &Client, sql: &str, ctx: &str) -> Option<u64> {
    let ours = app.prepare(sql).await;
    let theirs = reference.prepare(sql).await;
    let (ours, theirs) = match (ours, theirs) {
        (Ok(o), Ok(t)) => (o, t),
        (Err(o), Err(t)) => {
            assert_eq!(
                describe_error(&o),
                describe_error(&t),
                "{ctx}: {sql}: error differs from the direct one"
            );
            return None;
        }
        (o, t) => panic!(
            "{ctx}: {sql}: through pgshift {:?}, directly {:?}",
            o.map_err(|e| describe_error(&e)).err(),
            t.map_err(|e| describe_error(&e)).err()
        ),
    };
    assert_eq!(
        ours.params(),
        theirs.params(),
        "{ctx}: {sql}: parameter types"
    );
    let columns = |s: &tokio_postgres::Statement| -> Vec<(String, Type)> {
        s.columns()
            .iter()
            .map(|c| (c.name().to_owned(), c.type_().clone()))
            .collect()
    };
    assert_eq!(columns(&ours), columns(&theirs), "{ctx}: {sql}: columns");
    if !ours.params().is_empty() {
        return Some(0);
    }
    let what = format!("{ctx}: {sql}");
    if ours.columns().is_empty() {
        let n = must(app.execute(&ours, &[]).await, &what);
        let m = must(reference.execute(&theirs, &[]).await, &what);
        assert_eq!(n, m, "{ctx}: {sql}: row count");
        Some(n)
    } else {
        let got = cells(&must(app.query(&ours, &[]).await, &what));
        let want = cells(&must(reference.query(&theirs, &[]).await, &what));
        assert_eq!(got, want, "{ctx}: {sql}: rows");
        Some(got.len() as u64)
    }
}

/// `(id, old::text, new::text)` of these rows, read directly (`new` is `None` while the new
/// column does not exist).
async fn sides(
    env: &Users,
    pair: &Pair,
    ids: &[i32],
) -> Vec<(i32, Option<String>, Option<String>)> {
    let has_new = env.columns().await.iter().any(|c| c == pair.new);
    let new = if has_new {
        format!("{}::text", pair.new)
    } else {
        "NULL::text".into()
    };
    let sql = format!(
        "SELECT id, {}::text, {new} FROM users WHERE id = ANY($1) ORDER BY id",
        pair.old
    );
    env.direct
        .query(&sql, &[&ids])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// Both apps run the same story in `phase` on ids `base + 1` (old app) and `base + 2` (new
/// app); the table is inspected directly after each part.
async fn scenario(env: &Users, pair: &Pair, phase: &str, apps: &[App], base: i32) {
    let reference = env.reference().await;
    for app in apps {
        let ctx = format!("{} in {phase}", app.name);
        same_as_reference(
            &app.client,
            &reference,
            "SELECT * FROM users WHERE id = $1",
            &ctx,
        )
        .await;
    }

    // Write, read back, and the parameterised forms (types only).
    for (i, app) in apps.iter().enumerate() {
        let (id, col, side) = (base + 1 + i as i32, pair.column(app.side), app.side);
        let ctx = format!("{} in {phase}", app.name);
        let statements = [
            format!(
                "INSERT INTO users (id, {col}) VALUES ({id}, {})",
                pair.lit(side, 5)
            ),
            format!(
                "UPDATE users SET {col} = {} WHERE id = {id}",
                pair.lit(side, 6)
            ),
            format!("SELECT id, {col} FROM users WHERE id = {id}"),
            format!("UPDATE users SET {col} = $1 WHERE id = $2"),
            format!("SELECT {col}, id FROM users WHERE {col} = $1"),
        ];
        let mut counts = Vec::new();
        for sql in &statements {
            counts.push(same_as_reference(&app.client, &reference, sql, &ctx).await);
        }
        if phase == "planned" && side == Side::New {
            assert_eq!(
                counts, [None; 5],
                "{ctx}: the new column does not exist yet"
            );
        } else {
            assert_eq!(counts[..3], [Some(1); 3], "{ctx}: INSERT, UPDATE, SELECT");
        }
    }
    let expected: Vec<_> = match phase {
        "planned" => vec![(base + 1, Some(pair.text(6)), None)],
        "expand" | "switch" => (1..=2)
            .map(|i| (base + i, Some(pair.text(6)), Some(pair.text(6))))
            .collect(),
        _ => (1..=2)
            .map(|i| (base + i, None, Some(pair.text(6))))
            .collect(),
    };
    assert_eq!(
        sides(env, pair, &[base + 1, base + 2]).await,
        expected,
        "{phase}: (id, old, new) as written by the apps"
    );

    // The authoritative side is served to both apps: a row whose sides differ.
    if phase != "planned" {
        let id = base + 3;
        env.direct
            .execute(
                &format!(
                    "INSERT INTO users (id, {}, {}) VALUES ({id}, {}, {})",
                    pair.old,
                    pair.new,
                    pair.lit(Side::Old, 7),
                    pair.lit(Side::New, 8)
                ),
                &[],
            )
            .await
            .unwrap();
        let served = pair.text(if phase == "expand" { 7 } else { 8 });
        for app in apps {
            let sql = format!(
                "SELECT {} FROM users WHERE id = {id}",
                pair.column(app.side)
            );
            let row = app.client.query_one(&sql, &[]).await.unwrap_or_else(|e| {
                panic!("{} in {phase}: {sql}: {}", app.name, describe_error(&e))
            });
            assert_eq!(
                row.columns()[0].type_(),
                pair.type_of(app.side),
                "{sql} in {phase}"
            );
            assert_eq!(
                cell(&row, 0),
                Some(served.clone()),
                "{} in {phase}: {sql}",
                app.name
            );
        }
    }

    // DELETE by each app's own name, and the tags psql prints.
    for (i, app) in apps.iter().enumerate() {
        let (id, col) = (base + 1 + i as i32, pair.column(app.side));
        let sql = format!(
            "DELETE FROM users WHERE id = {id} AND {col} = {}",
            pair.lit(app.side, 6)
        );
        let ctx = format!("{} in {phase}", app.name);
        let n = same_as_reference(&app.client, &reference, &sql, &ctx).await;
        if !(phase == "planned" && app.side == Side::New) {
            assert_eq!(n, Some(1), "{ctx}: {sql}");
            let id = base + 4 + i as i32;
            let lit = pair.lit(app.side, 9);
            let script = format!(
                "INSERT INTO users (id, {col}) VALUES ({id}, {lit}); \
                 UPDATE users SET {col} = {lit} WHERE id = {id}; \
                 DELETE FROM users WHERE {col} = {lit} AND id = {id}"
            );
            let out = psql(
                &env.app_url(),
                &["-v", "ON_ERROR_STOP=1", "-c", &script],
                None,
            )
            .await;
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "INSERT 0 1\nUPDATE 1\nDELETE 1\n",
                "{ctx}: psql {script}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let left: Vec<i32> = sides(env, pair, &[base + 1, base + 2, base + 4, base + 5])
        .await
        .iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(
        left,
        Vec::<i32>::new(),
        "{phase}: rows deleted through pgshift"
    );
}

async fn lifecycle(pair: &Pair, hint: &str) {
    let env = Users::start(hint, "planned", "planned").await;
    let apps = [
        App {
            name: "old app",
            side: Side::Old,
            client: env.app().await,
        },
        App {
            name: "new app",
            side: Side::New,
            client: env.app().await,
        },
    ];
    for (i, phase) in PHASES.into_iter().enumerate() {
        if phase == "switch" {
            env.backfill().await;
        }
        if i > 0 {
            let (rename, type_change) = pair.phases(phase);
            env.set_phases(rename, type_change).await;
        }
        let columns = env.columns().await;
        assert_eq!(
            columns.iter().any(|c| c == pair.new),
            phase != "planned",
            "{phase}: expand_sql adds {} on entering expand; columns {columns:?}",
            pair.new
        );
        scenario(&env, pair, phase, &apps, (i as i32 + 1) * 10).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_through_every_phase_for_old_and_new_apps() {
    lifecycle(&RENAME_PAIR, "life_rename").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_change_through_every_phase_for_old_and_new_apps() {
    lifecycle(&TYPE_CHANGE_PAIR, "life_type").await;
}

/// `(id, user_name, display_name, age, age_int)` read directly.
type Sides = (
    i32,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i32>,
);

async fn both_sides(env: &Users, ids: &[i32]) -> Vec<Sides> {
    env.direct
        .query(
            "SELECT id, user_name, display_name, age, age_int FROM users WHERE id = ANY($1) ORDER BY id",
            &[&ids],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

/// Both sides of every row hold the same value (`age` as the integer's text).
fn assert_sides_equal(rows: &[Sides], what: &str) {
    for (id, user_name, display_name, age, age_int) in rows {
        assert!(
            user_name.is_some(),
            "{what}: row {id} has no value: {rows:?}"
        );
        assert_eq!(user_name, display_name, "{what}: row {id}: {rows:?}");
        assert_eq!(
            *age,
            age_int.map(|v| v.to_string()),
            "{what}: row {id}: {rows:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volatile_insert_values_are_evaluated_once() {
    let env = Users::start("volatile_insert", "expand", "expand").await;
    env.direct.batch_execute("CREATE SEQUENCE s").await.unwrap();
    let app = env.app().await;

    for phase in ["expand", "switch"] {
        let base = if phase == "expand" { 10 } else { 20 };
        env.set_phases(phase, phase).await;
        let old_names = format!(
            "INSERT INTO users (id, user_name, age) VALUES \
             ({}, gen_random_uuid()::text, (floor(random() * 1000000))::int::text), \
             ({}, 'seq ' || nextval('s'), '7')",
            base + 1,
            base + 2
        );
        let new_names = format!(
            "INSERT INTO users (id, display_name, age_int) VALUES \
             ({}, md5(random()::text), (random() * 1000000)::int)",
            base + 3
        );
        assert_eq!(
            app.execute(&old_names, &[])
                .await
                .map_err(|e| describe_error(&e)),
            Ok(2)
        );
        assert_eq!(
            app.execute(&new_names, &[])
                .await
                .map_err(|e| describe_error(&e)),
            Ok(1)
        );
        let rows = both_sides(&env, &[base + 1, base + 2, base + 3]).await;
        assert_sides_equal(&rows, phase);
        assert_eq!(rows.len(), 3, "{rows:?}");
    }
    // nextval ran once per row written, not once per side.
    let last: i64 = env
        .direct
        .query_one("SELECT last_value FROM s", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(last, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volatile_update_values_are_evaluated_once() {
    let env = Users::start("volatile_update", "expand", "expand").await;
    let app = env.app().await;
    for phase in ["expand", "switch"] {
        env.set_phases(phase, phase).await;
        for sql in [
            "UPDATE users SET user_name = random()::text, age = (floor(random() * 1000))::int::text \
             WHERE id IN (1, 2)",
            "UPDATE users SET display_name = gen_random_uuid()::text, \
             age_int = (random() * 1000)::int WHERE id IN (1, 2)",
        ] {
            let n = app
                .execute(sql, &[])
                .await
                .unwrap_or_else(|e| panic!("{phase}: {sql}: {}", describe_error(&e)));
            assert_eq!(n, 2, "{phase}: {sql}");
            assert_sides_equal(&both_sides(&env, &[1, 2]).await, sql);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unspecified_parameters_copied_into_up_keep_their_types() {
    let env = Users::start("params", "expand", "expand").await;
    env.backfill().await;
    let app = env.app().await;
    for phase in ["expand", "switch"] {
        env.set_phases(phase, phase).await;
        let reference = env.reference().await;
        let base = if phase == "expand" { 30 } else { 40 };
        for sql in [
            "INSERT INTO users (id, age) VALUES ($1, $2)",
            "INSERT INTO users (id, age_int) VALUES ($1, $2)",
            "INSERT INTO users (id, user_name, age) VALUES ($1, $2, $3)",
            "UPDATE users SET age = $1 WHERE id = $2",
            "UPDATE users SET age_int = $2 WHERE id = $1",
            "SELECT id FROM users WHERE age = $1 OR age_int = $2",
        ] {
            same_as_reference(&app, &reference, sql, phase).await;
        }
        // Ids and values of this phase only: age `base * 10 + k`.
        let (a, b, c) = (base + 1, base + 2, base + 3);
        let int = |k: i32| base * 10 + k;
        let text = |k: i32| int(k).to_string();
        let (t1, t3, t5) = (text(1), text(3), text(5));
        let (t1, t3, t5) = (t1.as_str(), t3.as_str(), t5.as_str());
        let steps: [(&str, &[&(dyn ToSql + Sync)]); 5] = [
            ("INSERT INTO users (id, age) VALUES ($1, $2)", &[&a, &t1]),
            (
                "INSERT INTO users (id, age_int) VALUES ($1, $2)",
                &[&b, &int(2)],
            ),
            ("UPDATE users SET age = $1 WHERE id = $2", &[&t3, &a]),
            (
                "UPDATE users SET age_int = $2 WHERE id = $1",
                &[&b, &int(4)],
            ),
            (
                "INSERT INTO users (id, user_name, age) VALUES ($1, $2, $3)",
                &[&c, &"pat", &t5],
            ),
        ];
        for (sql, params) in steps {
            let n = app
                .execute(sql, params)
                .await
                .unwrap_or_else(|e| panic!("{phase}: {sql}: {}", describe_error(&e)));
            assert_eq!(n, 1, "{phase}: {sql}");
        }
        let ages: Vec<(Option<String>, Option<i32>)> = both_sides(&env, &[a, b, c])
            .await
            .into_iter()
            .map(|r| (r.3, r.4))
            .collect();
        assert_eq!(
            ages,
            [3, 4, 5].map(|k| (Some(text(k)), Some(int(k)))),
            "{phase}: age and age_int written through parameters"
        );
        let found = app
            .query(
                "SELECT id FROM users WHERE age = $1 OR age_int = $2",
                &[&t3, &int(4)],
            )
            .await
            .unwrap_or_else(|e| panic!("{phase}: {}", describe_error(&e)));
        let ids: Vec<i32> = found.iter().map(|r| r.get(0)).collect();
        assert_eq!(ids, [a, b], "{phase}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_follow_the_phase_they_are_executed_in() {
    let env = Users::start("prepared_flips", "planned", "planned").await;
    let app = env.app().await;
    let insert = app
        .prepare("INSERT INTO users (id, user_name, age) VALUES ($1, $2, $3)")
        .await
        .unwrap();
    let read_old = app
        .prepare("SELECT user_name, age FROM users WHERE id = $1")
        .await
        .unwrap();

    // Prepared in planned, executed in expand: dual-writes.
    env.set_phases("expand", "expand").await;
    assert_eq!(
        app.execute(&insert, &[&10i32, &"ten", &"10"])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        both_sides(&env, &[10]).await,
        [(
            10,
            Some("ten".into()),
            Some("ten".into()),
            Some("10".into()),
            Some(10)
        )],
        "a statement prepared in planned dual-writes in expand"
    );
    let read_new = app
        .prepare("SELECT display_name, age_int FROM users WHERE id = $1")
        .await
        .unwrap();
    let insert_new = app
        .prepare("INSERT INTO users (id, display_name, age_int) VALUES ($1, $2, $3)")
        .await
        .unwrap();

    // Prepared in expand, executed in switch: reads come from the new side, shown by making
    // the old side stale behind pgshift's back.
    env.backfill().await;
    env.set_phases("switch", "switch").await;
    env.direct
        .batch_execute("UPDATE users SET user_name = 'stale', age = '-1' WHERE id = 10")
        .await
        .unwrap();
    let row = app.query_one(&read_new, &[&10i32]).await.unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, i32>(1)),
        ("ten".into(), 10)
    );
    let row = app.query_one(&read_old, &[&10i32]).await.unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("ten".into(), "10".into()),
        "old names served from the new side, as text"
    );
    assert_eq!(
        app.execute(&insert_new, &[&11i32, &"eleven", &11i32])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        both_sides(&env, &[11]).await,
        [(
            11,
            Some("eleven".into()),
            Some("eleven".into()),
            Some("11".into()),
            Some(11)
        )]
    );

    // Contract: the planned-era statement now writes the new side only.
    env.set_phases("contract", "contract").await;
    assert_eq!(
        app.execute(&insert, &[&12i32, &"twelve", &"12"])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        both_sides(&env, &[12]).await,
        [(12, None, Some("twelve".into()), None, Some(12))]
    );
    let row = app.query_one(&read_old, &[&12i32]).await.unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("twelve".into(), "12".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_keeps_its_phase_across_a_flip() {
    let env = Users::start("tx_flip", "expand", "expand").await;
    env.backfill().await;
    let mut app = env.app().await;
    const READ: &str = "SELECT user_name, display_name, age, age_int FROM users WHERE id = $1";
    let read = |row: Row| -> (String, String, String, i32) {
        (row.get(0), row.get(1), row.get(2), row.get(3))
    };

    let tx = app.transaction().await.unwrap();
    let first = tx.query_one(READ, &[&1i32]).await.unwrap();
    assert_eq!(read(first), ("ann".into(), "ann".into(), "31".into(), 31));

    env.set_phases("switch", "switch").await;
    // Row 2's new side changes behind the transaction's back (it holds no lock on row 2).
    env.direct
        .batch_execute("UPDATE users SET display_name = 'bob-new', age_int = 43 WHERE id = 2")
        .await
        .unwrap();
    let row = tx.query_one(READ, &[&2i32]).await.unwrap();
    assert_eq!(
        read(row),
        ("bob".into(), "bob".into(), "42".into(), 42),
        "the transaction began in expand, so it still reads the old side"
    );
    let simple = tx
        .simple_query("SELECT display_name, age_int FROM users WHERE id = 2")
        .await
        .unwrap();
    let values: Vec<Option<String>> = simple
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .expect("a row");
    assert_eq!(values, [Some("bob".into()), Some("42".into())]);
    tx.commit().await.unwrap();

    let row = app.query_one(READ, &[&2i32]).await.unwrap();
    assert_eq!(
        read(row),
        ("bob-new".into(), "bob-new".into(), "43".into(), 43),
        "a new transaction runs under switch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_multi_statement_string_mixes_rewritten_writes_and_reads() {
    let env = Users::start("psql_multi", "expand", "expand").await;
    let script = "INSERT INTO users (id, user_name, age) VALUES (70, 'O''Brien', '7'); \
                  SELECT id, display_name, age_int FROM users WHERE id = 70; \
                  UPDATE users SET age_int = 8 WHERE display_name = 'O''Brien'; \
                  SELECT user_name, age, age_int FROM users WHERE id >= 3 ORDER BY id";
    let out = psql(
        &env.app_url(),
        &["-A", "-v", "ON_ERROR_STOP=1", "-c", script],
        None,
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "INSERT 0 1\n\
         id|display_name|age_int\n70|O'Brien|7\n(1 row)\n\
         UPDATE 1\n\
         user_name|age|age_int\ncy|n/a|\nO'Brien|8|8\n(2 rows)\n",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        both_sides(&env, &[70]).await,
        [(
            70,
            Some("O'Brien".into()),
            Some("O'Brien".into()),
            Some("8".into()),
            Some(8)
        )]
    );
}
