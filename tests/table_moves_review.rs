//! Review probes for table moves (docs/table-moves.md): statements a client may send while
//! `orders` → `orders_v2` is in expand, switch or contract, each run through the real proxy and
//! compared with the same statement on a plain copy of the table it names (or with what
//! PostgreSQL does directly), after which both real tables are read directly and must agree.
//!
//! A failing probe documents a bug; its message includes the text pgshift sends (computed with
//! the library's rewriter from the real tables' shapes) where that helps.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::orders::{Endpoint, MIGRATION, Mode, Orders, error_text, text_rows};
use common::{ProxyConfig, cluster, connect, control_toml, describe_error, fresh_database};
use pgshift::migration::{Phase, QualifiedName, TableMove};
use pgshift::rewrite::{Outcome, Rewriter};
use tokio_postgres::types::Type;

/// The text pgshift forwards for `sql` in `phase` (for failure messages): the same rewriter the
/// proxy builds, from the shapes of the real tables.
async fn rewritten(env: &Orders, phase: Phase, sql: &str) -> String {
    let shape = |name: &str| {
        let name = QualifiedName::parse(name).unwrap();
        async move {
            pgshift::catalog::load_shape(&env.direct, &name)
                .await
                .unwrap()
                .unwrap()
        }
    };
    let s = |x: &str| x.to_owned();
    let moved = TableMove {
        name: MIGRATION.into(),
        database: env.db.name.clone(),
        phase,
        old: shape("public.orders").await,
        new: shape("public.orders_v2").await,
        key: vec![s("id")],
        new_from_old: vec![
            (s("id"), Some(s("id"))),
            (s("customer"), Some(s("customer"))),
            (s("total_cents"), Some(s("(total * 100)::bigint"))),
            (s("created_at"), Some(s("created_at"))),
        ],
        old_from_new: vec![
            (s("id"), Some(s("id"))),
            (s("customer"), Some(s("customer"))),
            (s("total"), Some(s("total_cents / 100.0"))),
            (s("note"), None),
            (s("created_at"), Some(s("created_at"))),
        ],
    };
    let rw = Rewriter::new(&[], &[Arc::new(moved)]).unwrap();
    match rw.rewrite(sql) {
        Outcome::Unchanged => format!("(unchanged) {sql}"),
        Outcome::Rewritten(t) => t,
        Outcome::Refused(r) => format!("(refused) {}", r.message()),
    }
}

fn phase_of(name: &str) -> Phase {
    match name {
        "expand" => Phase::Expand,
        "switch" => Phase::Switch,
        "contract" => Phase::Contract,
        _ => Phase::Planned,
    }
}

/// A fresh `orders` database in `phase`, backfilled, the reference copies holding the same rows.
async fn orders_in(hint: &str, phase: &str) -> Orders {
    let env = Orders::start(hint).await;
    env.backfill().await;
    env.direct
        .batch_execute(
            "INSERT INTO shape.orders SELECT * FROM public.orders;
             INSERT INTO shape.orders_v2 SELECT * FROM public.orders_v2;",
        )
        .await
        .unwrap();
    env.proxy.set_phase(MIGRATION, phase).await;
    env
}

/// Runs `sql` through pgshift and on the reference copy in `mode`: the replies must be equal,
/// and afterwards the two real tables must agree. `Err` describes the first difference.
async fn compare(env: &Orders, phase: &str, mode: Mode, sql: &str) -> Result<(), String> {
    let mut app = Endpoint::app(env).await;
    let mut reference = Endpoint::reference(env).await;
    let theirs = reference.run(mode, sql).await;
    assert!(theirs.is_ok(), "{sql}: directly: {theirs:?}");
    let ours = app.run(mode, sql).await;
    let sent = rewritten(env, phase_of(phase), sql).await;
    if ours != theirs {
        return Err(format!(
            "{phase}, {mode:?}: {sql}\n  through pgshift: {ours:?}\n  directly:        \
             {theirs:?}\n  pgshift sends: {sent}"
        ));
    }
    let differences = env.differences().await;
    if !differences.is_empty() {
        return Err(format!(
            "{phase}: {sql}: the tables disagree afterwards: {differences:?}\n  pgshift sends: \
             {sent}"
        ));
    }
    Ok(())
}

/// [`compare`] for each statement in turn; fails listing every statement that differed.
async fn same_as_direct(env: &Orders, phase: &str, mode: Mode, statements: &[&str]) {
    let mut failures = Vec::new();
    for sql in statements {
        if let Err(e) = compare(env, phase, mode, sql).await {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

// ---- statements that fail through pgshift but succeed directly ----------------------------

/// `IS [NOT] DISTINCT FROM` at the top level of an UPDATE's WHERE (the "only if changed" idiom):
/// the clause scanner takes its FROM for the start of an `UPDATE … FROM` list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_where_is_distinct_from() {
    let env = orders_in("review_distinct", "expand").await;
    let statements = [
        "UPDATE orders SET note = 'changed' WHERE id = 1 AND note IS DISTINCT FROM 'changed'",
        "UPDATE orders_v2 SET customer = 'zed' WHERE id = 2 AND customer IS DISTINCT FROM 'zed'",
        "UPDATE orders SET note = 'x' WHERE id = 3 AND note IS NOT DISTINCT FROM 'it''s' \
         RETURNING id, note",
        "DELETE FROM orders_v2 WHERE id = 2 AND customer IS DISTINCT FROM 'nobody'",
    ];
    same_as_direct(&env, "expand", Mode::Simple, &statements).await;
}

/// In contract, `INSERT INTO orders VALUES (…)` with fewer values than the table has columns is
/// valid PostgreSQL (the rest take their defaults), but the translated INSERT refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_insert_without_column_list_and_short_values() {
    let env = orders_in("review_short_values", "contract").await;
    let app = env.app().await;
    let sql = "INSERT INTO orders VALUES (100, 'short', 1.50)";
    let sent = rewritten(&env, Phase::Contract, sql).await;
    let n = app
        .execute(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}\npgshift sends: {sent}", describe_error(&e)));
    assert_eq!(n, 1);
    let rows = text_rows(
        &env.direct,
        "SELECT id::text, customer, total_cents::text FROM orders_v2 WHERE id = 100",
    )
    .await;
    assert_eq!(
        rows,
        [[Some("100".into()), Some("short".into()), Some("150".into())]]
    );
}

/// `INSERT … SELECT` translated onto the other table (contract, or an `ON CONFLICT` naming the
/// new table in expand): untyped literals take the target columns' types; parameters would be
/// typed text inside the wrapped SELECT, so that form is refused (docs/table-moves.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn translated_insert_select_keeps_target_column_types() {
    let env = orders_in("review_insert_select", "contract").await;
    let app = Endpoint::app(&env).await;
    let sql = "INSERT INTO orders (id, customer, total) SELECT $1, $2, $3";
    let refused = app.describe(sql).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.starts_with("0A000: pgshift:") && e.contains("parameters")),
        "contract: {sql}: {refused:?}"
    );
    let literal = "INSERT INTO orders (id, customer, total) SELECT 200, 'lit', '2.50'";
    let sent = rewritten(&env, Phase::Contract, literal).await;
    let n = app
        .client
        .execute(literal, &[])
        .await
        .map_err(|e| error_text(&e));
    assert_eq!(n, Ok(1), "contract: {literal}; pgshift sends:\n{sent}");
}

/// Transaction control and session statements in the same simple Query as a statement naming a
/// moved table (`BEGIN; UPDATE orders …; COMMIT`): their span cannot be located, and the
/// "does the text mention a moved table" test treats an unknown span as a mention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_control_beside_a_moved_table() {
    let env = orders_in("review_begin", "expand").await;
    let app = env.app().await;
    for sql in [
        "BEGIN; UPDATE orders SET note = 'tx' WHERE id = 1; COMMIT",
        "BEGIN; SELECT id FROM orders_v2 WHERE id = 1; COMMIT",
        "SET statement_timeout = '5s'; SELECT id FROM orders WHERE id = 1",
        "START TRANSACTION; SAVEPOINT s; DELETE FROM orders_v2 WHERE id = 2; \
         RELEASE SAVEPOINT s; COMMIT",
    ] {
        let sent = rewritten(&env, Phase::Expand, sql).await;
        let got = app
            .simple_query(sql)
            .await
            .map(|_| ())
            .map_err(|e| error_text(&e));
        assert_eq!(got, Ok(()), "{sql}; pgshift sends:\n{sent}");
    }
    assert_eq!(env.differences().await, Vec::<String>::new());
}

// ---- data that diverges between the two tables -----------------------------------------------

/// `INSERT … ON CONFLICT (id) DO UPDATE SET id = …` on the authoritative table changes the key:
/// an UPDATE of a key column is refused, but this one goes through and the other table keeps
/// the old key (and gains the new one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_changing_the_key_on_the_authoritative_table() {
    let env = orders_in("review_upsert_key", "expand").await;
    let app = env.app().await;
    let sql = "INSERT INTO orders (id, customer, total) VALUES (1, 'ann', 1.00) \
               ON CONFLICT (id) DO UPDATE SET id = 5000";
    let sent = rewritten(&env, Phase::Expand, sql).await;
    match app.execute(sql, &[]).await {
        Err(e) if common::sqlstate(&e).as_deref() == Some("0A000") => {}
        Err(e) => panic!("{sql}: {}", describe_error(&e)),
        Ok(n) => {
            assert_eq!(n, 1);
            assert_eq!(
                env.differences().await,
                Vec::<String>::new(),
                "{sql}: the key changed in orders only; pgshift sends:\n{sent}"
            );
        }
    }
}

/// A key made of a nullable UNIQUE column: NULL never matches a key nor conflicts, so rows
/// with a NULL key could not be mirrored; entering expand is refused and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nullable_unique_key() {
    let db = fresh_database("review_null_key").await;
    let direct = db.connect().await;
    direct
        .batch_execute(
            "CREATE TABLE items (sku text UNIQUE, qty int NOT NULL);
             CREATE TABLE items_v2 (sku text UNIQUE, qty int NOT NULL);",
        )
        .await
        .unwrap();
    let migration = format!(
        "\n[[migration]]\nname = \"items_v2\"\ndatabase = \"{}\"\nkind = \"table\"\n\
         table = \"public.items\"\nnew_table = \"public.items_v2\"\nkey = [\"sku\"]\n\
         phase = \"planned\"\n",
        db.name
    );
    let proxy = ProxyConfig::new(cluster())
        .extra(&control_toml())
        .extra(&migration)
        .spawn();
    let reply = proxy.ctl(&["phase", "items_v2", "expand"]).await;
    assert_eq!(reply["ok"], false, "{reply}");
    let error = reply["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("\"sku\"") && error.contains("NOT NULL"),
        "{error}"
    );
    assert_eq!(proxy.phase("items_v2").await, "planned");
    let app = connect(&proxy.db_url(&db)).await;
    app.execute("INSERT INTO items VALUES (NULL, 1)", &[])
        .await
        .unwrap();
    let mirrored: i64 = direct
        .query_one("SELECT count(*) FROM items_v2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(mirrored, 0, "planned writes one table only");
}

/// A stored generated column present in both tables under the same name (it maps 1:1 by the
/// rules): the mirror INSERT / upsert writes it explicitly, which PostgreSQL rejects, so every
/// write fails in expand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_column_in_both_tables() {
    let env = Orders::start("review_generated").await;
    env.direct
        .batch_execute(
            "ALTER TABLE orders ADD COLUMN label text GENERATED ALWAYS AS (upper(customer)) STORED;
             ALTER TABLE orders_v2 ADD COLUMN label text \
                 GENERATED ALWAYS AS (upper(customer)) STORED;",
        )
        .await
        .unwrap();
    env.backfill_generated().await;
    env.proxy.set_phase(MIGRATION, "expand").await;
    let app = env.app().await;
    for sql in [
        "INSERT INTO orders (id, customer, total) VALUES (40, 'gen', 1.00)",
        "UPDATE orders SET total = 2.00 WHERE id = 1",
        "UPDATE orders_v2 SET customer = 'newgen' WHERE id = 2",
    ] {
        assert_eq!(
            app.execute(sql, &[]).await.map_err(|e| error_text(&e)),
            Ok(1),
            "{sql}"
        );
    }
    assert_eq!(env.differences().await, Vec::<String>::new());
}

trait BackfillGenerated {
    async fn backfill_generated(&self);
}

impl BackfillGenerated for Orders {
    /// The backfill, naming the columns (the generated one computes itself).
    async fn backfill_generated(&self) {
        self.direct
            .batch_execute(
                "INSERT INTO orders_v2 (id, customer, total_cents, created_at) \
                 SELECT id, customer, (total * 100)::bigint, created_at FROM orders",
            )
            .await
            .unwrap();
    }
}

// ---- statements passed through untouched although they write a moved table ------------------

/// A name qualified with the (current) database, `db.public.orders`, is valid PostgreSQL but is
/// not recognised as a moved table: the write reaches `orders` only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_qualified_names() {
    let env = orders_in("review_three_part", "expand").await;
    let app = env.app().await;
    let db = &env.db.name;
    let sql = format!(
        "INSERT INTO \"{db}\".public.orders (id, customer, total) VALUES (60, 'three', 6.00)"
    );
    let sent = rewritten(&env, Phase::Expand, &sql).await;
    match app.execute(&sql, &[]).await {
        Err(e) if common::sqlstate(&e).as_deref() == Some("0A000") => {}
        Err(e) => panic!("{sql}: {}", describe_error(&e)),
        Ok(n) => {
            assert_eq!(n, 1);
            assert_eq!(
                env.differences().await,
                Vec::<String>::new(),
                "{sql}: pgshift sends:\n{sent}"
            );
        }
    }
    let update = format!("UPDATE \"{db}\".public.orders_v2 SET total_cents = 1 WHERE id = 1");
    let sent = rewritten(&env, Phase::Expand, &update).await;
    match app.execute(&update, &[]).await {
        Err(e) if common::sqlstate(&e).as_deref() == Some("0A000") => {}
        Err(e) => panic!("{update}: {}", describe_error(&e)),
        Ok(_) => assert_eq!(
            env.differences().await,
            Vec::<String>::new(),
            "{update}: pgshift sends:\n{sent}"
        ),
    }
}

// ---- RETURNING and RowDescription ---------------------------------------------------------

/// Unaliased RETURNING items get PostgreSQL's names (`case`, `int8`, `numeric`) when the
/// RETURNING is evaluated over the CTE's rows; a whole-row reference there would be a
/// `record`, not the table's row type, so it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returning_names_and_row_types() {
    let env = orders_in("review_returning_names", "expand").await;
    let statements = ["INSERT INTO orders (id, customer, total, created_at) \
         VALUES (70, 'r', 7.00, '2025-01-01 00:00:00+00') \
         RETURNING CASE WHEN total > 5 THEN 'big' ELSE 'small' END, 1::bigint, \
         total::numeric(10,1)"];
    same_as_direct(&env, "expand", Mode::Extended, &statements).await;
    let app = env.app().await;
    let whole_row = "INSERT INTO orders_v2 (id, customer, total_cents, created_at) \
                     VALUES (71, 'r', 700, '2025-01-01 00:00:00+00') RETURNING orders_v2";
    let refused = app
        .execute(whole_row, &[])
        .await
        .map_err(|e| error_text(&e));
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.starts_with("0A000: pgshift:") && e.contains("whole-row")),
        "{refused:?}"
    );
}

/// Schema-qualified column references (`public.orders_v2.id`) in a write naming the table reads
/// are not served from: the target becomes a derived table aliased `orders_v2`, which a
/// schema-qualified reference cannot reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_qualified_column_references() {
    let env = orders_in("review_qualified_columns", "expand").await;
    let app = env.app().await;
    for sql in [
        "UPDATE public.orders_v2 SET customer = 'q' WHERE public.orders_v2.id = 1",
        "DELETE FROM public.orders_v2 WHERE public.orders_v2.id = 2",
        "UPDATE public.orders SET customer = 'p' WHERE public.orders.id = 3",
    ] {
        let sent = rewritten(&env, Phase::Expand, sql).await;
        assert_eq!(
            app.execute(sql, &[]).await.map_err(|e| error_text(&e)),
            Ok(1),
            "{sql}; pgshift sends:\n{sent}"
        );
    }
    assert_eq!(env.differences().await, Vec::<String>::new());
}

// ---- covered and correct (kept as regression probes) --------------------------------------

/// Aliases, quoted and schema-qualified names, `RETURNING` through an alias, in expand and
/// switch, for both apps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_quoting_and_qualified_targets() {
    for phase in ["expand", "switch"] {
        let env = orders_in(&format!("review_alias_{phase}"), phase).await;
        // Each table's rows are written through its own name only, so the two reference copies
        // stay comparable: orders ids 1 and 3, orders_v2 id 2.
        let statements = [
            "INSERT INTO orders AS o (id, customer, total, created_at) \
             VALUES (1, 'ann', 2.00, '2025-01-01 00:00:00+00') \
             ON CONFLICT (id) DO UPDATE SET total = o.total + EXCLUDED.total \
             RETURNING o.id, o.total AS t",
            "INSERT INTO orders_v2 AS n (id, customer, total_cents, created_at) \
             VALUES (2, 'bob', 5, '2025-01-01 00:00:00+00') \
             ON CONFLICT (id) DO UPDATE SET total_cents = n.total_cents + EXCLUDED.total_cents \
             RETURNING n.*",
            "UPDATE \"orders\" AS \"O\" SET \"total\" = \"O\".total * 2 WHERE \"O\".id = 3 \
             RETURNING \"O\".total",
            "UPDATE orders_v2 n SET total_cents = n.total_cents + 1 WHERE n.id = 2 \
             RETURNING n.total_cents, n.customer AS who",
            "UPDATE \"orders_v2\" SET customer = customer || '!' WHERE \"orders_v2\".id = 2",
            "DELETE FROM orders AS o WHERE o.id = 1 RETURNING o.id, o.total",
            "DELETE FROM \"orders_v2\" WHERE id = 2 RETURNING *",
        ];
        same_as_direct(&env, phase, Mode::Extended, &statements).await;
    }
}

/// Parameters in SET, WHERE, VALUES, ON CONFLICT and RETURNING: the same ParameterDescription
/// and RowDescription types as directly, in expand and switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameter_types_in_every_position() {
    for phase in ["expand", "switch", "contract"] {
        let env = orders_in(&format!("review_params_{phase}"), phase).await;
        let app = Endpoint::app(&env).await;
        let reference = Endpoint::reference(&env).await;
        for sql in [
            "UPDATE orders SET total = total + $1, note = $2 || 'x' WHERE id = $3 \
             AND customer <> $4 RETURNING total * $5",
            "UPDATE orders_v2 SET total_cents = total_cents * $1 WHERE id = ANY($2) \
             RETURNING total_cents + $3",
            "INSERT INTO orders_v2 (id, customer, total_cents) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET total_cents = EXCLUDED.total_cents + $4 \
             RETURNING id, $5::text AS tag",
            "INSERT INTO orders (id, customer, total) VALUES ($1, $2, $3), ($4, $5, $6) \
             RETURNING total + $7",
            "DELETE FROM orders_v2 WHERE id = $1 AND total_cents > $2 RETURNING customer",
        ] {
            let sent = rewritten(&env, phase_of(phase), sql).await;
            assert_eq!(
                app.describe(sql).await,
                reference.describe(sql).await,
                "{phase}: {sql}: (parameter types, columns); pgshift sends:\n{sent}"
            );
        }
    }
}

/// Several writes in one simple Query, in expand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_statement_simple_query() {
    let env = orders_in("review_multi", "expand").await;
    let app = env.app().await;
    let sql = "UPDATE orders SET note = 'a' WHERE id = 1; \
               INSERT INTO orders_v2 (id, customer, total_cents) VALUES (80, 'm', 5); \
               DELETE FROM orders WHERE id = 3; UPDATE orders_v2 SET total_cents = 7 WHERE id = 80";
    app.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{}", describe_error(&e)));
    assert_eq!(env.differences().await, Vec::<String>::new());
    let rows = text_rows(
        &env.direct,
        "SELECT id::text, total::text FROM orders WHERE id IN (3, 80) ORDER BY id",
    )
    .await;
    assert_eq!(rows, [[Some("80".into()), Some("0.07".into())]]);
}

/// A statement prepared in planned and executed after the move entered expand writes both
/// tables (pgshift re-prepares it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_before_expand_executed_after() {
    let env = Orders::start("review_prepared_flip").await;
    env.backfill().await;
    let app = env.app().await;
    let insert = app
        .prepare("INSERT INTO orders (id, customer, total) VALUES ($1, $2, $3)")
        .await
        .unwrap();
    let update = app
        .prepare("UPDATE orders_v2 SET total_cents = $1 WHERE id = $2")
        .await
        .unwrap();
    env.proxy.set_phase(MIGRATION, "expand").await;
    let total = RawNumeric;
    app.execute(&insert, &[&90i64, &"prep", &total])
        .await
        .unwrap_or_else(|e| panic!("{}", describe_error(&e)));
    app.execute(&update, &[&4321i64, &1i64])
        .await
        .unwrap_or_else(|e| panic!("{}", describe_error(&e)));
    assert_eq!(env.differences().await, Vec::<String>::new());
    let rows = text_rows(
        &env.direct,
        "SELECT id::text, total::text FROM orders WHERE id IN (1, 90) ORDER BY id",
    )
    .await;
    assert_eq!(
        rows,
        [
            [Some("1".into()), Some("43.21".into())],
            [Some("90".into()), Some("3.00".into())]
        ]
    );
}

/// `3` as a binary numeric parameter (no decimal crate needed).
#[derive(Debug)]
struct RawNumeric;

impl tokio_postgres::types::ToSql for RawNumeric {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        // ndigits 1, weight 0, sign +, dscale 0, digit 3.
        for v in [1i16, 0, 0, 0, 3] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }

    tokio_postgres::types::to_sql_checked!();
}

/// Two sessions updating the same row in READ COMMITTED, one through each name: the second
/// waits for the first, then re-checks its WHERE on the committed row and computes its SET from
/// it, as it would on one plain table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_of_one_row_recheck_the_committed_row() {
    for phase in ["expand", "switch"] {
        let env = orders_in(&format!("review_concurrent_{phase}"), phase).await;
        let a = env.app().await;
        let b = Arc::new(env.app().await);
        // (second statement, its row count once the first committed, total afterwards)
        let rounds = [
            (
                "UPDATE orders_v2 SET total_cents = total_cents + 100 WHERE id = 1",
                1,
                "12.00",
            ),
            (
                "UPDATE orders_v2 SET total_cents = total_cents + 100 WHERE id = 1 \
                 AND total_cents < 1250",
                0,
                "13.00",
            ),
        ];
        for (sql, count, total) in rounds {
            a.batch_execute("BEGIN").await.unwrap();
            a.batch_execute("UPDATE orders SET total = total + 1 WHERE id = 1")
                .await
                .unwrap_or_else(|e| panic!("{}", describe_error(&e)));
            let b = b.clone();
            let second =
                tokio::spawn(async move { b.execute(sql, &[]).await.map_err(|e| error_text(&e)) });
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(!second.is_finished(), "{phase}: {sql} must wait");
            a.batch_execute("COMMIT").await.unwrap();
            assert_eq!(second.await.unwrap(), Ok(count), "{phase}: {sql}");
            assert_eq!(
                env.differences().await,
                Vec::<String>::new(),
                "{phase}: {sql}"
            );
            let rows = text_rows(&env.direct, "SELECT total::text FROM orders WHERE id = 1").await;
            assert_eq!(rows, [[Some(total.into())]], "{phase}: {sql}");
        }
    }
}
