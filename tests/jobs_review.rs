//! Adversarial review of the backfill / verify jobs (docs/jobs.md): each test drives the real
//! binary against a real PostgreSQL and pins a bug the review found ("Was a bug", fixed since)
//! or an important behaviour that was untested (marked "PIN" in its doc comment).
//!
//! Run: `cargo test --locked --test jobs_review`.

mod common;

use std::time::Duration;

use common::ctl::{accepted, record};
use common::items::{ITEMS, UP, items_config};
use common::orders::{MIGRATION as ORDERS, Orders};
use common::{Proxy, ProxyConfig, cluster, connect, count, describe_error, eventually};
use serde_json::Value;
use tokio_postgres::Client;

// --- helpers -----------------------------------------------------------------------------------

/// `backfill NAME start --wait`; the record, which must be `done`.
async fn backfill_done(proxy: &Proxy, name: &str) -> Value {
    let out = proxy
        .ctl_output(&[], &["backfill", name, "start", "--wait"])
        .await;
    let rec = record(proxy, name, "backfill").await;
    assert!(
        out.status.success() && rec["state"] == "done",
        "backfill start --wait: {:?} {}\nrecord {rec}\nlog:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        proxy.log()
    );
    rec
}

/// `verify NAME --wait`; the record (any result).
async fn verify(proxy: &Proxy, name: &str) -> Value {
    let _ = proxy.ctl_output(&[], &["verify", name, "--wait"]).await;
    record(proxy, name, "verify").await
}

async fn await_record(
    proxy: &Proxy,
    name: &str,
    job: &str,
    what: &str,
    timeout: Duration,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    let wanted = &wanted;
    eventually(timeout, what, || async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = record(proxy, name, job).await;
        wanted(&r).then_some(r)
    })
    .await
}

/// Waits (up to 60 s) until the backfill of `name` has ended, and asserts it ended `done`;
/// the record.
async fn backfill_ended_done(proxy: &Proxy, name: &str) -> Value {
    let done = await_record(
        proxy,
        name,
        "backfill",
        "the backfill to end",
        Duration::from_secs(60),
        |r| matches!(r["state"].as_str(), Some("done" | "failed")),
    )
    .await;
    assert_eq!(done["state"], "done", "{done}");
    done
}

/// Waits until some backend of the database waits for a lock while running a statement whose
/// text contains `needle`.
async fn lock_waiter(direct: &Client, needle: &str, what: &str) {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND wait_event_type = 'Lock' AND query LIKE '%{needle}%'"
    );
    eventually(Duration::from_secs(30), what, || {
        let sql = sql.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            (count(direct, &sql).await > 0).then_some(())
        }
    })
    .await;
}

/// Holds a transaction open (older than any batch), starts the backfill of [`ORDERS`] and
/// waits (naming `what`) until its orphan sweep waits for that transaction; the session
/// holding it, for the test to commit when it wants the sweep to go on.
async fn backfill_held_at_the_sweep(env: &Orders, what: &str) -> Client {
    let blocker = env.db.connect().await;
    blocker
        .batch_execute("BEGIN; SELECT txid_current()")
        .await
        .unwrap();
    accepted(&env.proxy, &["backfill", ORDERS, "start"]).await;
    sweep_waiting(&env.proxy, what).await;
    blocker
}

/// Waits (naming `what`) until the backfill of [`ORDERS`] says its orphan sweep waits for
/// older transactions; the record.
async fn sweep_waiting(proxy: &Proxy, what: &str) -> Value {
    await_record(
        proxy,
        ORDERS,
        "backfill",
        what,
        Duration::from_secs(30),
        |r| {
            r["waiting"]
                .as_str()
                .is_some_and(|w| w.contains("orphan sweep"))
        },
    )
    .await
}

/// The orders fixture taken to contract the regular way: expand, a backfill, a clean verify,
/// switch.
async fn orders_in_contract(hint: &str) -> Orders {
    let env = Orders::start(hint).await;
    let proxy = &env.proxy;
    accepted(proxy, &["phase", ORDERS, "expand"]).await;
    backfill_done(proxy, ORDERS).await;
    assert_eq!(verify(proxy, ORDERS).await["state"], "clean");
    accepted(proxy, &["phase", ORDERS, "switch"]).await;
    accepted(proxy, &["phase", ORDERS, "contract"]).await;
    env
}

/// The orders fixture, its proxy reloaded with `[jobs]` settings.
async fn orders_with_jobs(hint: &str, jobs: &str) -> Orders {
    let env = Orders::start(hint).await;
    let config = env.proxy.config().extra(&format!("\n[jobs]\n{jobs}\n"));
    env.proxy.reload(&config).await;
    env
}

// --- column migration fixture (items.qty text -> qty_int integer) -------------------------------

async fn items_out_of_sync(direct: &Client) -> i64 {
    count(
        direct,
        &format!("SELECT count(*) FROM items WHERE qty_int IS DISTINCT FROM ({UP})"),
    )
    .await
}

// --- findings ----------------------------------------------------------------------------------

/// Was a bug (finish detection / checkpoint): a batch's last key is the largest key among the rows
/// its `FOR UPDATE` returned, but in READ COMMITTED a row whose key a concurrent (pgshift-
/// allowed) UPDATE changed while the batch waited for its lock comes back with its NEW key
/// (EvalPlanQual rechecks `key > $last`, not the ORDER BY / LIMIT). Moving one row's key far
/// ahead makes the checkpoint jump past every key in between: the next batch is empty, nothing
/// follows the (bogus) last key, and the backfill ends `done` with most rows never copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_moved_during_a_batch_makes_the_checkpoint_skip_rows() {
    let db = common::fresh_database("review_key_jump").await;
    let direct = db.connect().await;
    direct
        .batch_execute(
            "CREATE TABLE items (id bigint PRIMARY KEY, qty text, label text NOT NULL);
             INSERT INTO items SELECT i, (i * 3)::text, 'item ' || i
                 FROM generate_series(1, 50) i;",
        )
        .await
        .unwrap();
    let proxy = items_config(&db.name)
        .extra("\n[jobs]\nlock_timeout = \"30s\"\n")
        .spawn();
    accepted(&proxy, &["phase", ITEMS, "expand"]).await;

    // A client (through pgshift) moves row 5 to a key far after the others, and holds it.
    let app = connect(&proxy.db_url(&db)).await;
    app.batch_execute("BEGIN").await.unwrap();
    let n = app
        .execute("UPDATE items SET id = 1000000 WHERE id = 5", &[])
        .await
        .unwrap_or_else(|e| panic!("key update through pgshift: {}", describe_error(&e)));
    assert_eq!(n, 1);

    // The first batch (keys 1..10) waits for row 5's lock.
    accepted(&proxy, &["backfill", ITEMS, "start", "batch=10"]).await;
    lock_waiter(&direct, "pgshift_b", "the first batch waiting for row 5").await;
    app.batch_execute("COMMIT").await.unwrap();

    let done = backfill_ended_done(&proxy, ITEMS).await;
    let stale = items_out_of_sync(&direct).await;
    assert_eq!(
        stale, 0,
        "the backfill ended `done` with {stale} rows never copied (record {done})"
    );
}

/// Was a bug (orphan sweep vs concurrent writes): the sweep deletes a target row when its snapshot
/// sees no source row, and `DELETE … USING … NOT EXISTS (…)` keeps that verdict through
/// EvalPlanQual. A client that re-creates the key through pgshift (INSERT on the old table,
/// upsert of the new one) after the sweep's snapshot holds the new row's lock; when it commits,
/// the sweep's DELETE goes ahead and removes the row the client just wrote: the key is in
/// `orders` but not in `orders_v2`, and the backfill says `done`.
///
/// Reproduced with an orphan the docs say the sweep is for (a row only the new table had).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_deletes_a_row_a_client_wrote_meanwhile() {
    let env = orders_with_jobs("review_sweep_reinsert", "lock_timeout = \"30s\"").await;
    let (proxy, direct) = (&env.proxy, &env.direct);
    accepted(proxy, &["phase", ORDERS, "expand"]).await;
    direct
        .batch_execute("INSERT INTO orders_v2 (id, customer, total_cents) VALUES (100, 'stray', 1)")
        .await
        .unwrap();

    // A transaction older than the last batch holds the sweep in its wait.
    let blocker = backfill_held_at_the_sweep(&env, "the sweep waiting").await;

    // The client writes key 100 through pgshift (old table, then upsert of the new one).
    let app = env.app().await;
    app.batch_execute("BEGIN").await.unwrap();
    app.execute(
        "INSERT INTO orders (id, customer, total, note) VALUES (100, 'real', 5.00, 'n')",
        &[],
    )
    .await
    .unwrap_or_else(|e| panic!("insert through pgshift: {}", describe_error(&e)));
    // Let the sweep go; its DELETE waits for the client's lock on orders_v2 row 100.
    blocker.batch_execute("COMMIT").await.unwrap();
    lock_waiter(direct, "NOT EXISTS", "the sweep waiting for row 100").await;
    app.batch_execute("COMMIT").await.unwrap();

    let done = backfill_ended_done(proxy, ORDERS).await;
    assert_eq!(
        env.differences().await,
        Vec::<String>::new(),
        "the sweep removed a row a client committed (record {done})"
    );
}

/// The orphan sweep waits for prepared (two-phase) transactions as for open ones: a prepared
/// DELETE of a source row stays invisible to the sweep until COMMIT PREPARED, so sweeping
/// before it would leave that row's copy behind. A prepared transaction older than the last
/// batch holds the sweep, named in `waiting`, until it is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_waits_for_a_prepared_transaction() {
    let env = Orders::start("review_sweep_2pc").await;
    let (proxy, direct) = (&env.proxy, &env.direct);
    let slots: String = direct
        .query_one("SHOW max_prepared_transactions", &[])
        .await
        .unwrap()
        .get(0);
    if slots == "0" {
        eprintln!("skipped: the server has max_prepared_transactions = 0");
        return;
    }
    accepted(proxy, &["phase", ORDERS, "expand"]).await;
    direct
        .batch_execute("CREATE TABLE side (id int)")
        .await
        .unwrap();
    let gid = format!("{}_sweep", env.db.name);
    let app = env.app().await;
    app.batch_execute(&format!(
        "BEGIN; INSERT INTO side VALUES (1); PREPARE TRANSACTION '{gid}'"
    ))
    .await
    .unwrap_or_else(|e| {
        panic!(
            "PREPARE TRANSACTION through pgshift: {}",
            describe_error(&e)
        )
    });

    accepted(proxy, &["backfill", ORDERS, "start"]).await;
    let waiting = sweep_waiting(proxy, "the sweep waiting for the prepared transaction").await;
    assert!(
        waiting["waiting"]
            .as_str()
            .is_some_and(|w| w.contains(&format!("prepared transaction '{gid}'"))),
        "{waiting}"
    );
    // Held there, not swept on regardless.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let still = record(proxy, ORDERS, "backfill").await;
    assert_eq!(still["state"], "running", "{still}");

    direct
        .batch_execute(&format!("COMMIT PREPARED '{gid}'"))
        .await
        .unwrap();
    backfill_ended_done(proxy, ORDERS).await;
    assert_eq!(env.differences().await, Vec::<String>::new());
}

/// Was a bug (cancel ignored at the end): `backfill cancel` during the orphan sweep's wait answers
/// ok and records `cancelled`, but cancelling the runner's token makes the sweep stop waiting
/// for the old transactions (it sweeps at once, exactly what the wait is there to avoid) and
/// the final progress update (`WHERE run = …`, no state check) overwrites `cancelled` with
/// `done`. For a reverse backfill this silently re-enables "serving as switch" in the record
/// (serving_phase) without an epoch bump — the instances keep serving contract, while
/// `complete` is refused again as if the rollback were still going on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_during_the_sweep_is_overwritten_with_done() {
    let env = orders_in_contract("review_cancel_sweep").await;
    let proxy = &env.proxy;

    let blocker = backfill_held_at_the_sweep(&env, "the reverse sweep waiting").await;
    let reply = accepted(proxy, &["backfill", ORDERS, "cancel"]).await;
    println!("cancel: {reply}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = record(proxy, ORDERS, "backfill").await;
    blocker.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        after["state"], "cancelled",
        "the cancelled reverse backfill is recorded as {after}"
    );
    // Having cancelled the rollback, the operator may complete.
    accepted(proxy, &["phase", ORDERS, "complete"]).await;
}

/// Was a bug (state machine): forward job records survive contract. After a forced contract →
/// switch (the old side was not written in contract) and switch → expand, expand → switch
/// passes its gate WITHOUT force on the strength of a backfill + verify from before contract,
/// although the two sides differ (a row written in contract is missing from the old side,
/// which expand serves). Entering contract (or leaving it by force) should forget the forward
/// records, as entering planned does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verify_from_before_contract_still_opens_the_switch_gate() {
    let env = orders_in_contract("review_stale_gate").await;
    let proxy = &env.proxy;

    // In contract only the new table is written.
    let app = env.app().await;
    app.execute(
        "INSERT INTO orders_v2 (id, customer, total_cents) VALUES (500, 'contract', 700)",
        &[],
    )
    .await
    .unwrap_or_else(|e| panic!("insert in contract: {}", describe_error(&e)));
    assert_eq!(env.differences().await, ["500: only in orders_v2"]);

    // The operator forces the rollback (accepting the risk for that one step) and goes on back.
    let forced = accepted(proxy, &["phase", ORDERS, "switch", "force"]).await;
    assert_eq!(forced["forced"], true, "{forced}");
    accepted(proxy, &["phase", ORDERS, "expand"]).await;
    assert_eq!(env.differences().await, ["500: only in orders_v2"]);

    // Now the sides differ, yet the old records open the gate without force.
    let reply = proxy.ctl(&["phase", ORDERS, "switch"]).await;
    assert_eq!(
        reply["ok"],
        false,
        "expand -> switch passed its gate with a verify from before contract while the sides \
         differ: {reply}\ndifferences: {:?}",
        env.differences().await
    );
}

/// Lock order in switch: there the authoritative table is the NEW one, so every client write
/// locks the new row first, then writes the old one; a forward batch would lock OLD rows first
/// (`FOR UPDATE` on the source), then upsert the new ones, and deadlock with clients doing
/// `SELECT … FOR UPDATE; UPDATE …` (the client could be the victim, 40P01). Both sides have
/// been written since expand, so a forward backfill is refused in switch; a verify (read only)
/// is still allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_backfill_is_refused_in_switch() {
    let env = Orders::start("review_switch_deadlock").await;
    let proxy = &env.proxy;
    accepted(proxy, &["phase", ORDERS, "expand"]).await;
    backfill_done(proxy, ORDERS).await;
    assert_eq!(verify(proxy, ORDERS).await["state"], "clean");
    accepted(proxy, &["phase", ORDERS, "switch"]).await;
    let reply = proxy.ctl(&["backfill", ORDERS, "start"]).await;
    assert_eq!(reply["ok"], false, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap_or_default()
            .contains("roll back to expand"),
        "{reply}"
    );
    assert_eq!(verify(proxy, ORDERS).await["state"], "clean");
}

// --- pins ----------------------------------------------------------------------------------------

/// Starts a proxy over a fresh database holding `schema`, with `migration` (TOML, `{db}`
/// replaced by the database name) in planned, and moves it to expand.
async fn fixture(hint: &str, schema: &str, migration: &str) -> (Proxy, Client, common::TestDb) {
    let db = common::fresh_database(hint).await;
    let direct = db.connect().await;
    direct
        .batch_execute(schema)
        .await
        .unwrap_or_else(|e| panic!("schema: {}", describe_error(&e)));
    let proxy = ProxyConfig::new(cluster())
        .extra(&common::control_toml())
        .extra(&migration.replace("{db}", &db.name))
        .spawn();
    (proxy, direct, db)
}

/// PIN (SQL generation): a table move between quoted, mixed-case names with spaces, keyed on
/// a composite (text, timestamptz with microseconds, uuid) key, an `up` over a quoted column
/// and NULL values: batches of 7 resume from text checkpoints of every key type, the backfill
/// copies every row, verify is clean, and a NULL-vs-value difference made behind pgshift's
/// back is found and named by its composite key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quoted_names_and_a_composite_typed_key() {
    let schema = r#"
        CREATE SCHEMA "Sales";
        CREATE TABLE "Sales"."Order Lines" ("Region" text NOT NULL, "Placed At" timestamptz NOT NULL,
            "Id" uuid NOT NULL, "Amount" numeric(12,2), PRIMARY KEY ("Region", "Placed At", "Id"));
        CREATE TABLE "Sales"."Order Lines v2" ("Region" text NOT NULL,
            "Placed At" timestamptz NOT NULL, "Id" uuid NOT NULL, "Amount Cents" bigint,
            PRIMARY KEY ("Region", "Placed At", "Id"));
        INSERT INTO "Sales"."Order Lines"
            SELECT (ARRAY['EU', 'us', 'Ünï code', 'a,b'])[1 + g % 4],
                   timestamptz '2024-03-31 01:59:59.123456+00' + (g / 3) * interval '37 minutes 0.000001 s',
                   md5(g::text)::uuid, CASE WHEN g % 5 = 0 THEN NULL ELSE g * 1.25 END
            FROM generate_series(1, 200) g;
    "#;
    let migration = r#"
[[migration]]
name = "lines"
database = "{db}"
kind = "table"
table = '"Sales"."Order Lines"'
new_table = '"Sales"."Order Lines v2"'
key = ["Region", "Placed At", "Id"]
phase = "planned"
[[migration.columns]]
old = "Amount"
new = "Amount Cents"
up = '("Amount" * 100)::bigint'
down = '"Amount Cents" / 100.0'
"#;
    let (proxy, direct, _db) = fixture("review_quoted", schema, migration).await;
    accepted(&proxy, &["phase", "lines", "expand"]).await;
    let out = proxy
        .ctl_output(&[], &["backfill", "lines", "start", "batch=7", "--wait"])
        .await;
    let rec = record(&proxy, "lines", "backfill").await;
    assert!(out.status.success(), "{rec}\n{}", proxy.log());
    assert_eq!(rec["rows_done"], 200, "{rec}");
    let differ = "SELECT count(*) FROM \"Sales\".\"Order Lines\" o FULL JOIN \
                  \"Sales\".\"Order Lines v2\" n USING (\"Region\", \"Placed At\", \"Id\") \
                  WHERE o.\"Region\" IS NULL OR n.\"Region\" IS NULL \
                     OR (o.\"Amount\" * 100)::bigint IS DISTINCT FROM n.\"Amount Cents\"";
    assert_eq!(count(&direct, differ).await, 0);
    let v = verify(&proxy, "lines").await;
    assert_eq!(v["state"], "clean", "{v}");

    // A NULL where a value belongs (and the reverse) is a mismatch, named by the whole key.
    direct
        .batch_execute(
            "UPDATE \"Sales\".\"Order Lines v2\" SET \"Amount Cents\" = NULL \
                 WHERE \"Id\" = md5('7')::uuid;
             UPDATE \"Sales\".\"Order Lines v2\" SET \"Amount Cents\" = 0 \
                 WHERE \"Id\" = md5('10')::uuid;",
        )
        .await
        .unwrap();
    let v = verify(&proxy, "lines").await;
    assert_eq!(
        (&v["state"], &v["mismatches"]),
        (&"mismatch".into(), &2.into()),
        "{v}"
    );
    let keys = v["first_keys"].to_string();
    assert!(
        keys.contains(&"8f14e45f-ceea-167a-5a36-dedd4bea2543".to_string()),
        "{keys}"
    );
}

/// PIN (SQL generation): a range-partitioned new table (the key includes the partition key):
/// batches upsert through the partitioned parent, the sweep and verify work across partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_target() {
    let schema = "
        CREATE TABLE ev (id bigint PRIMARY KEY, kind text NOT NULL, payload text);
        CREATE TABLE ev_v2 (id bigint NOT NULL, kind text NOT NULL, payload text,
            PRIMARY KEY (id)) PARTITION BY RANGE (id);
        CREATE TABLE ev_v2_a PARTITION OF ev_v2 FOR VALUES FROM (MINVALUE) TO (500);
        CREATE TABLE ev_v2_b PARTITION OF ev_v2 FOR VALUES FROM (500) TO (MAXVALUE);
        INSERT INTO ev SELECT g, 'k' || (g % 3), CASE WHEN g % 4 = 0 THEN NULL ELSE 'p' || g END
            FROM generate_series(1, 1000) g;
        INSERT INTO ev_v2 VALUES (5000, 'stray', NULL);
    ";
    let migration = r#"
[[migration]]
name = "ev"
database = "{db}"
kind = "table"
table = "public.ev"
new_table = "public.ev_v2"
key = ["id"]
phase = "planned"
"#;
    let (proxy, direct, _db) = fixture("review_partitioned", schema, migration).await;
    accepted(&proxy, &["phase", "ev", "expand"]).await;
    let rec = {
        let out = proxy
            .ctl_output(&[], &["backfill", "ev", "start", "batch=97", "--wait"])
            .await;
        let rec = record(&proxy, "ev", "backfill").await;
        assert!(out.status.success(), "{rec}\n{}", proxy.log());
        rec
    };
    assert_eq!(
        (&rec["rows_done"], &rec["deleted"]),
        (&1000.into(), &1.into()),
        "{rec}"
    );
    assert_eq!(
        count(
            &direct,
            "SELECT count(*) FROM (SELECT * FROM ev EXCEPT SELECT * FROM ev_v2 \
                        UNION ALL SELECT * FROM ev_v2 EXCEPT SELECT * FROM ev) d"
        )
        .await,
        0
    );
    assert_eq!(verify(&proxy, "ev").await["state"], "clean");
}

/// BUG, low (error handling / SQL generation): an `up` that compiles but fails on one row at
/// runtime (row 35: `'n/a'::integer`) should fail the batch holding that row, leaving the
/// batches before it copied and the checkpoint at 30, with an error a person can act on. In
/// the column-migration batch, `up(old)` also appears in the UPDATE's `WHERE … IS DISTINCT
/// FROM up(old)`, a filter on the target table alone, which the planner may push down to a
/// scan of the WHOLE table (here: a small, never analysed one): the very first batch (keys
/// 1..10) fails on row 35, nothing is copied, and the error says "batch after key []". (On a
/// big table with a hash join, the same push-down evaluates `up` on every row per batch.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_up_failing_at_runtime_fails_the_backfill() {
    let schema = "
        CREATE TABLE items (id bigint PRIMARY KEY, qty text, label text NOT NULL);
        INSERT INTO items SELECT i, CASE WHEN i = 35 THEN 'n/a' ELSE (i * 3)::text END, 'x'
            FROM generate_series(1, 50) i;
    ";
    let migration = r#"
[[migration]]
name = "items_strict"
database = "{db}"
table = "public.items"
kind = "columns"
phase = "planned"
expand_sql = "ALTER TABLE items ADD COLUMN qty_int integer"
[[migration.columns]]
old = "qty"
new = "qty_int"
up = "qty::integer"
down = "qty_int::text"
"#;
    let (proxy, direct, _db) = fixture("review_bad_up", schema, migration).await;
    accepted(&proxy, &["phase", "items_strict", "expand"]).await;
    accepted(&proxy, &["backfill", "items_strict", "start", "batch=10"]).await;
    let rec = await_record(
        &proxy,
        "items_strict",
        "backfill",
        "the backfill failing",
        Duration::from_secs(30),
        |r| matches!(r["state"].as_str(), Some("failed" | "done")),
    )
    .await;
    assert_eq!(rec["state"], "failed", "{rec}");
    assert!(
        rec["error"].as_str().unwrap_or_default().contains("22P02")
            || rec["error"]
                .as_str()
                .unwrap_or_default()
                .contains("invalid input syntax"),
        "{rec}"
    );
    assert_eq!(rec["last_key"], serde_json::json!(["30"]), "{rec}");
    assert_eq!(
        count(
            &direct,
            "SELECT count(*) FROM items WHERE qty_int IS NOT NULL"
        )
        .await,
        30
    );
    accepted(&proxy, &["backfill", "items_strict", "resume"]).await;
    let rec = await_record(
        &proxy,
        "items_strict",
        "backfill",
        "failing again",
        Duration::from_secs(30),
        |r| r["state"] == "failed",
    )
    .await;
    assert_eq!(rec["last_key"], serde_json::json!(["30"]), "{rec}");
    // And switch stays closed.
    assert_eq!(
        proxy.ctl(&["phase", "items_strict", "switch"]).await["ok"],
        false
    );
}

/// BUG, medium (SQL generation; the dual-write has the same gap): the new table of a move has
/// `id … GENERATED ALWAYS AS IDENTITY` (a common shape for a new table). The migration enters
/// expand without complaint, then every batch fails with 428C9 "cannot insert a non-DEFAULT
/// value into column id" (the INSERT lacks OVERRIDING SYSTEM VALUE), as does every client write
/// through pgshift. Either the batch (and the mirror INSERTs) say OVERRIDING SYSTEM VALUE, or
/// leaving planned refuses such a target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_always_key_on_the_target() {
    let schema = "
        CREATE TABLE acc (id bigint PRIMARY KEY, name text NOT NULL);
        CREATE TABLE acc_v2 (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL);
        INSERT INTO acc SELECT g, 'n' || g FROM generate_series(1, 20) g;
    ";
    let migration = r#"
[[migration]]
name = "acc"
database = "{db}"
kind = "table"
table = "public.acc"
new_table = "public.acc_v2"
key = ["id"]
phase = "planned"
"#;
    let (proxy, direct, db) = fixture("review_identity", schema, migration).await;
    accepted(&proxy, &["phase", "acc", "expand"]).await;
    // Does dual-writing work at all?
    let app = connect(&proxy.db_url(&db)).await;
    let write = app
        .execute("UPDATE acc SET name = 'changed' WHERE id = 3", &[])
        .await
        .map_err(|e| describe_error(&e));
    println!("client write in expand: {write:?}");
    let out = proxy
        .ctl_output(&[], &["backfill", "acc", "start", "--wait"])
        .await;
    let rec = record(&proxy, "acc", "backfill").await;
    println!("backfill: {:?} {rec}", out.status);
    assert_eq!(rec["state"], "done", "{rec}");
    assert_eq!(count(&direct, "SELECT count(*) FROM acc_v2").await, 20);
}
