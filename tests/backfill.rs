//! The backfill and verify jobs (docs/jobs.md, DESIGN §3.6) on 200 000 rows through the real
//! binary: a column migration (`items.qty` text → `qty_int` integer) and the `orders` →
//! `orders_v2` table move are backfilled while eight clients keep inserting, updating (through
//! the old and the new names) and deleting through pgshift; afterwards the writers saw no
//! error, verify is clean, a direct comparison of both sides finds no difference, no deleted
//! row came back, the rows counter covers every row and `phase … switch` passes its gate.
//! A backfill whose instance is killed is taken over by a freshly started one from its
//! checkpoint (not from the first key) and ends with both tables equal; pause, resume and
//! cancel work through another instance, which cannot start a second runner, and a start after
//! cancel copies from the first key again; outside dual-writing backfill and verify are
//! refused.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::ctl::{accepted, entry, record, refused};
use common::items::{ITEMS, UP, items_config};
use common::orders::{self, MIGRATION as ORDERS, Orders};
use common::{Proxy, ProxyConfig, TestDb, cluster, connect, count, describe_error, eventually};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

/// Rows created before expand in the load tests.
const ROWS: i64 = 200_000;
/// Concurrent writers through pgshift.
const WRITERS: usize = 8;
/// Generous: a job on 200 000 rows in a debug build, next to the file's other tests.
const JOB_TIMEOUT: Duration = Duration::from_secs(240);
/// A statement taking longer than this means pgshift (or a lock) hangs.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Fixtures

/// `items` with `rows` rows: a seventh of the quantities are not numbers (`up` gives NULL),
/// an eleventh are NULL, the rest numeric text.
async fn create_items(direct: &Client, rows: i64) {
    let sql = format!(
        "CREATE TABLE items (id bigint PRIMARY KEY, qty text, label text NOT NULL);
         INSERT INTO items (id, qty, label)
             SELECT i, CASE WHEN i % 7 = 0 THEN 'n/a ' || i WHEN i % 11 = 0 THEN NULL
                            ELSE (i * 3)::text END,
                    'item ' || i
             FROM generate_series(1, {rows}) i;"
    );
    direct
        .batch_execute(&sql)
        .await
        .unwrap_or_else(|e| panic!("create items: {}", describe_error(&e)));
}

/// The config [`Orders::start`] starts its proxy with (the migration in planned).
fn orders_config(db: &str) -> ProxyConfig {
    ProxyConfig::new(cluster())
        .extra(&common::control_toml())
        .extra(&orders::migration_toml(db))
}

/// `rows` more orders in `orders` only (ids from the sequence, after the fixture's three).
async fn insert_orders(direct: &Client, rows: i64) {
    let sql = format!(
        "INSERT INTO orders (customer, total, note, created_at)
             SELECT 'customer ' || i, (i % 100000) * 0.01,
                    CASE WHEN i % 5 = 0 THEN NULL ELSE 'note ' || i END,
                    timestamptz '2024-01-01 00:00:00+00' + i * interval '1 second'
             FROM generate_series(1, {rows}) i"
    );
    direct
        .batch_execute(&sql)
        .await
        .unwrap_or_else(|e| panic!("insert orders: {}", describe_error(&e)));
}

/// `(count, first ten ids)` of the rows whose `qty_int` is not `up(qty)`, read directly.
async fn items_out_of_sync(direct: &Client) -> (i64, String) {
    let row = direct
        .query_one(
            &format!(
                "SELECT count(*), coalesce(((array_agg(id ORDER BY id))[1:10])::text, '') \
                 FROM items WHERE qty_int IS DISTINCT FROM ({UP})"
            ),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("compare items: {}", describe_error(&e)));
    (row.get(0), row.get(1))
}

// ---------------------------------------------------------------------------------------------
// Status, metrics, commands

async fn instance_id(proxy: &Proxy) -> String {
    let status = proxy.ctl(&["status"]).await;
    status["instance"]
        .as_str()
        .unwrap_or_else(|| panic!("no instance id in {status}"))
        .to_owned()
}

/// The backfill record of `name` as `proxy`'s `status` shows it.
async fn backfill_record(proxy: &Proxy, name: &str) -> Value {
    record(proxy, name, "backfill").await
}

async fn verify_record(proxy: &Proxy, name: &str) -> Value {
    record(proxy, name, "verify").await
}

fn rows_done(record: &Value) -> u64 {
    record["rows_done"]
        .as_u64()
        .unwrap_or_else(|| panic!("no rows_done in {record}"))
}

/// The first component of `last_key` as an integer (the tests' keys are single bigints).
fn last_key(record: &Value) -> Option<i64> {
    record["last_key"]
        .as_array()
        .and_then(|k| k.first())
        .and_then(Value::as_str)
        .map(|k| {
            k.parse()
                .unwrap_or_else(|_| panic!("last_key is not an integer: {record}"))
        })
}

/// Polls `proxy`'s backfill record of `name` (every 200 ms) until `wanted` holds; panics when
/// it ends `failed` (with the error) or `timeout` passes.
async fn await_backfill(
    proxy: &Proxy,
    name: &str,
    what: &str,
    timeout: Duration,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    let wanted = &wanted;
    eventually(timeout, what, || async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let record = backfill_record(proxy, name).await;
        if wanted(&record) {
            return Some(record);
        }
        assert_ne!(
            record["state"],
            "failed",
            "the backfill failed while waiting for {what}: {record}\nlog:\n{}",
            proxy.log()
        );
        None
    })
    .await
}

fn state_is(state: &'static str) -> impl Fn(&Value) -> bool {
    move |record| record["state"] == state
}

/// Waits for the backfill of `name` to end `done`; a cancelled one fails the test.
async fn await_done(proxy: &Proxy, name: &str) -> Value {
    let record = await_backfill(proxy, name, "backfill done", JOB_TIMEOUT, |r| {
        assert_ne!(r["state"], "cancelled", "backfill cancelled: {r}");
        r["state"] == "done"
    })
    .await;
    assert_eq!(record["error"], Value::Null, "{record}");
    record
}

/// Starts a verify run of `name` and waits for its result (`clean`, `mismatch` or `failed`).
async fn run_verify(proxy: &Proxy, name: &str) -> Value {
    let reply = proxy.ctl(&["verify", name]).await;
    assert_eq!(reply["ok"], true, "verify {name}: {reply}\n{}", proxy.log());
    eventually(JOB_TIMEOUT, "verify result", || async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let record = verify_record(proxy, name).await;
        matches!(
            record["state"].as_str(),
            Some("clean" | "mismatch" | "failed")
        )
        .then_some(record)
    })
    .await
}

/// `pgshift_backfill_rows_total{migration="name"}` (0 when absent).
async fn backfill_rows_metric(proxy: &Proxy, name: &str) -> f64 {
    let label = format!("migration=\"{name}\"");
    proxy
        .metrics_text()
        .await
        .lines()
        .filter(|l| l.starts_with("pgshift_backfill_rows_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---------------------------------------------------------------------------------------------
// Writers

/// SplitMix64, seeded per writer.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    }
}

#[derive(Clone, Copy, Debug)]
enum Workload {
    /// `items` under [`ITEMS`]: writes naming `qty` and `qty_int`.
    Items,
    /// `orders` under [`ORDERS`]: writes naming `orders` and `orders_v2`.
    Orders,
}

/// One random statement with `$1` the key, and whether it is a DELETE.
fn statement(workload: Workload, rng: &mut Rng, worker: usize) -> (String, bool) {
    let v = rng.below(1_000_000);
    let (dollars, cents) = (v / 100, v % 100);
    let pick = rng.below(100);
    let sql = match (workload, pick) {
        (Workload::Items, 0..35) if v.is_multiple_of(5) => {
            format!("UPDATE items SET qty = 'x{v}' WHERE id = $1")
        }
        (Workload::Items, 0..35) => format!("UPDATE items SET qty = '{v}' WHERE id = $1"),
        (Workload::Items, 35..65) if v.is_multiple_of(9) => {
            "UPDATE items SET qty_int = NULL WHERE id = $1".to_owned()
        }
        (Workload::Items, 35..65) => {
            format!("UPDATE items SET qty_int = {v}, label = 'w{worker}' WHERE id = $1")
        }
        (Workload::Items, 65..80) => "DELETE FROM items WHERE id = $1".to_owned(),
        (Workload::Items, 80..90) => {
            format!("INSERT INTO items (id, qty, label) VALUES ($1, '{v}', 'new {worker}')")
        }
        (Workload::Items, _) => {
            format!("INSERT INTO items (id, qty_int, label) VALUES ($1, {v}, 'new {worker}')")
        }
        (Workload::Orders, 0..35) => format!(
            "UPDATE orders SET total = {dollars}.{cents:02}, customer = 'old {worker}' \
             WHERE id = $1"
        ),
        (Workload::Orders, 35..65) => format!(
            "UPDATE orders_v2 SET total_cents = {v}, customer = 'new {worker}' WHERE id = $1"
        ),
        (Workload::Orders, 65..72) => "DELETE FROM orders WHERE id = $1".to_owned(),
        (Workload::Orders, 72..80) => "DELETE FROM orders_v2 WHERE id = $1".to_owned(),
        (Workload::Orders, 80..90) => format!(
            "INSERT INTO orders (id, customer, total, note) \
             VALUES ($1, 'old {worker}', {dollars}.{cents:02}, 'n')"
        ),
        (Workload::Orders, _) => format!(
            "INSERT INTO orders_v2 (id, customer, total_cents) VALUES ($1, 'new {worker}', {v})"
        ),
    };
    let is_delete = sql.starts_with("DELETE");
    (sql, is_delete)
}

/// What one writer saw.
#[derive(Default)]
struct WriterReport {
    ok: u64,
    errors: Vec<String>,
    /// Keys a DELETE of this writer removed.
    deleted: Vec<i64>,
}

/// [`WRITERS`] clients writing through pgshift until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    writers: Vec<JoinHandle<WriterReport>>,
}

impl Load {
    async fn start(proxy: &Proxy, db: &TestDb, workload: Workload) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let mut writers = Vec::new();
        for worker in 0..WRITERS {
            let client = connect(&proxy.db_url(db)).await;
            writers.push(tokio::spawn(write_loop(
                client,
                workload,
                worker,
                stop.clone(),
                ops.clone(),
            )));
        }
        Load { stop, ops, writers }
    }

    /// Statements that succeeded so far.
    fn ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    async fn wait_for_ops(&self, n: u64) {
        eventually(
            Duration::from_secs(60),
            "the writers to get going",
            || async { (self.ops() >= n).then_some(()) },
        )
        .await;
    }

    async fn stop(self) -> WriterReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = WriterReport::default();
        for writer in self.writers {
            let report = writer.await.expect("a writer panicked");
            total.ok += report.ok;
            total.errors.extend(report.errors);
            total.deleted.extend(report.deleted);
        }
        total
    }
}

async fn write_loop(
    client: Client,
    workload: Workload,
    worker: usize,
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
) -> WriterReport {
    let mut rng = Rng(0x5eed + worker as u64);
    let mut report = WriterReport::default();
    // Inserted keys are this writer's own, above every existing key: no duplicate key errors.
    let mut next_new_key = 10_000_000 * (worker as i64 + 1);
    while !stop.load(Ordering::Relaxed) {
        let (sql, is_delete) = statement(workload, &mut rng, worker);
        let id = if sql.starts_with("INSERT") {
            next_new_key += 1;
            next_new_key
        } else {
            // `items` ids are 1..=ROWS, `orders` ids 1..=ROWS + 3.
            1 + rng.below(ROWS as u64 + 3) as i64
        };
        match tokio::time::timeout(STATEMENT_TIMEOUT, client.execute(&sql, &[&id])).await {
            Ok(Ok(n)) => {
                report.ok += 1;
                ops.fetch_add(1, Ordering::Relaxed);
                if is_delete && n == 1 {
                    report.deleted.push(id);
                }
            }
            Ok(Err(e)) => report.errors.push(format!(
                "writer {worker}: {sql} [id {id}]: {}",
                describe_error(&e)
            )),
            Err(_) => report.errors.push(format!(
                "writer {worker}: {sql} [id {id}] did not finish within {STATEMENT_TIMEOUT:?}"
            )),
        }
        if client.is_closed() {
            report
                .errors
                .push(format!("writer {worker}: connection closed"));
            break;
        }
    }
    report
}

fn assert_no_writer_errors(report: &WriterReport) {
    assert!(
        report.errors.is_empty(),
        "{} of {} writer statements failed; the first ones:\n{}",
        report.errors.len(),
        report.ok + report.errors.len() as u64,
        report.errors[..report.errors.len().min(10)].join("\n")
    );
}

/// What [`backfill_under_load`] saw: the backfill's final record, the writers' report, and
/// how many of their statements completed while the backfill ran.
struct LoadedBackfill {
    done: Value,
    writes: WriterReport,
    ops_during: u64,
}

/// Starts the writers of `workload` and, once they are going, the backfill of `name` (batches
/// of 1000); waits for it to end `done`, then stops the writers. None of their statements may
/// have failed, some must have completed while the backfill ran, and it ran forward.
async fn backfill_under_load(
    proxy: &Proxy,
    db: &TestDb,
    workload: Workload,
    name: &str,
) -> LoadedBackfill {
    let load = Load::start(proxy, db, workload).await;
    load.wait_for_ops(100).await;
    let ops_before = load.ops();
    accepted(proxy, &["backfill", name, "start", "batch=1000"]).await;
    let done = await_done(proxy, name).await;
    let ops_during = load.ops() - ops_before;
    let writes = load.stop().await;
    assert_no_writer_errors(&writes);
    assert!(
        ops_during > 0,
        "no write through pgshift completed while the backfill ran"
    );
    assert_eq!(done["direction"], "forward", "{done}");
    LoadedBackfill {
        done,
        writes,
        ops_during,
    }
}

/// The end of a load test: the rows counter of `name` covers the `originals` rows still
/// there, `phase … switch` passes its gate, and what the writers did is printed.
async fn counted_then_switch(
    proxy: &Proxy,
    name: &str,
    originals: i64,
    run: &LoadedBackfill,
    started: Instant,
) {
    let metric = backfill_rows_metric(proxy, name).await;
    assert!(
        metric >= originals as f64,
        "pgshift_backfill_rows_total is {metric}, below the {originals} original rows left"
    );

    accepted(proxy, &["phase", name, "switch"]).await;
    assert_eq!(proxy.phase(name).await, "switch");
    println!(
        "{} writes ({} while the backfill ran), {} deletes; rows counter {metric}; {:?}",
        run.writes.ok,
        run.ops_during,
        run.writes.deleted.len(),
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_under_write_load_columns() {
    let started = Instant::now();
    let db = common::fresh_database("backfill_columns").await;
    let direct = db.connect().await;
    create_items(&direct, ROWS).await;
    let proxy = items_config(&db.name).spawn();
    accepted(&proxy, &["phase", ITEMS, "expand"]).await;

    // Before the backfill only dual-written rows are in sync: the numeric quantities are not.
    let (stale, _) = items_out_of_sync(&direct).await;
    assert!(stale > ROWS / 2, "only {stale} rows out of sync before");
    let why = refused(&proxy, &["phase", ITEMS, "switch"]).await;
    println!("switch before the backfill refused: {why}");

    let run = backfill_under_load(&proxy, &db, Workload::Items, ITEMS).await;

    // A backfill alone does not open the gate: a clean verify after it is needed.
    refused(&proxy, &["phase", ITEMS, "switch"]).await;
    let verify = run_verify(&proxy, ITEMS).await;
    assert_eq!(verify["state"], "clean", "{verify}\nlog:\n{}", proxy.log());
    assert_eq!(verify["mismatches"], 0, "{verify}");

    let (differing, first) = items_out_of_sync(&direct).await;
    assert_eq!(
        differing, 0,
        "rows whose qty_int is not up(qty), first ids {first}"
    );

    // Every original row still there was processed (deleted ones may not have been).
    let originals = count(
        &direct,
        &format!("SELECT count(*) FROM items WHERE id <= {ROWS}"),
    )
    .await;
    assert!(rows_done(&run.done) >= originals as u64, "{}", run.done);
    counted_then_switch(&proxy, ITEMS, originals, &run, started).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_under_write_load_table_move() {
    let started = Instant::now();
    let env = Orders::start("backfill_move").await;
    insert_orders(&env.direct, ROWS).await;
    accepted(&env.proxy, &["phase", ORDERS, "expand"]).await;
    assert_eq!(
        count(&env.direct, "SELECT count(*) FROM orders_v2").await,
        0
    );

    let run = backfill_under_load(&env.proxy, &env.db, Workload::Orders, ORDERS).await;

    // `verify --wait` exits 0 on clean.
    let out = env
        .proxy
        .ctl_output(&[], &["verify", ORDERS, "--wait"])
        .await;
    let verify = verify_record(&env.proxy, ORDERS).await;
    assert!(
        out.status.success(),
        "verify --wait: {:?}\nstdout: {}\nstderr: {}\nrecord: {verify}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(verify["state"], "clean", "{verify}");

    let differences = env.differences().await;
    assert!(
        differences.is_empty(),
        "{} keys differ between orders and orders_v2:\n{}",
        differences.len(),
        differences[..differences.len().min(20)].join("\n")
    );
    // No deleted order came back on either side.
    let resurrected: Vec<i64> = env
        .direct
        .query(
            "SELECT id FROM orders WHERE id = ANY($1) UNION SELECT id FROM orders_v2 \
             WHERE id = ANY($1) ORDER BY 1",
            &[&run.writes.deleted],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(resurrected, Vec::<i64>::new(), "deleted orders are back");

    let originals = count(
        &env.direct,
        &format!("SELECT count(*) FROM orders WHERE id <= {}", ROWS + 3),
    )
    .await;
    counted_then_switch(&env.proxy, ORDERS, originals, &run, started).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_instance_resumes_from_checkpoint() {
    const BATCH: u64 = 1000;
    let total = ROWS as u64 + 3;
    let env = Orders::start("backfill_takeover").await;
    insert_orders(&env.direct, ROWS).await;
    accepted(&env.proxy, &["phase", ORDERS, "expand"]).await;
    let a_id = instance_id(&env.proxy).await;

    accepted(
        &env.proxy,
        &["backfill", ORDERS, "start", "batch=1000", "rate=20000"],
    )
    .await;
    let before = await_backfill(
        &env.proxy,
        ORDERS,
        "a fifth of the rows done",
        JOB_TIMEOUT,
        |r| r["state"] == "running" && rows_done(r) > total / 5,
    )
    .await;
    assert_eq!(before["runner"], a_id.as_str(), "{before}");
    let (done_before, key_before) = (rows_done(&before), last_key(&before));
    let key_before = key_before.unwrap_or_else(|| panic!("no last_key while running: {before}"));
    assert!(
        rows_done(&before) < total,
        "the throttled backfill is already through: {before}"
    );

    env.proxy.kill();
    let killed_at = Instant::now();
    let b = orders_config(&env.db.name).spawn();
    let b_id = instance_id(&b).await;
    assert_ne!(a_id, b_id);
    // B takes the backfill over by itself, from the checkpoint.
    let taken = await_backfill(&b, ORDERS, "B to take over", Duration::from_secs(60), |r| {
        r["runner"] == b_id.as_str() && matches!(r["state"].as_str(), Some("running" | "done"))
    })
    .await;
    println!(
        "taken over {:?} after the kill: {taken}",
        killed_at.elapsed()
    );
    assert!(rows_done(&taken) >= done_before, "{before} -> {taken}");
    let key_taken = last_key(&taken).unwrap_or_else(|| panic!("no last_key: {taken}"));
    assert!(key_taken >= key_before, "{before} -> {taken}");

    let done = await_done(&b, ORDERS).await;
    assert_eq!(done["runner"], b_id.as_str(), "{done}");
    assert!(
        rows_done(&done) >= total,
        "rows_done restarted after the takeover: {before} -> {done}"
    );
    // B processed what was left after A's checkpoint (plus at most the batch in flight), not
    // the whole table.
    let by_b = backfill_rows_metric(&b, ORDERS).await;
    assert!(by_b > 0.0, "B's rows counter is 0");
    assert!(
        by_b <= (total - done_before + 2 * BATCH) as f64,
        "B processed {by_b} rows: more than the {} left after A's checkpoint {before}",
        total - done_before
    );

    let verify = run_verify(&b, ORDERS).await;
    assert_eq!(verify["state"], "clean", "{verify}\nlog:\n{}", b.log());
    let differences = env.differences().await;
    assert!(
        differences.is_empty(),
        "{} keys differ between orders and orders_v2:\n{}",
        differences.len(),
        differences[..differences.len().min(20)].join("\n")
    );
    let row = env
        .direct
        .query_one(
            "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM orders_v2), \
                    (SELECT count(DISTINCT id) FROM orders_v2)",
            &[],
        )
        .await
        .unwrap();
    let (old, new, distinct): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (old, new, distinct),
        (total as i64, total as i64, total as i64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_cancel_and_single_runner() {
    const SMALL: i64 = 40_000;
    let db = common::fresh_database("backfill_control").await;
    let direct = db.connect().await;
    create_items(&direct, SMALL).await;
    let a = items_config(&db.name).spawn();
    let b = items_config(&db.name).spawn();
    accepted(&a, &["phase", ITEMS, "expand"]).await;
    let a_id = instance_id(&a).await;
    let in_sync = format!("SELECT count(*) FROM items WHERE qty_int IS NOT DISTINCT FROM ({UP})");

    accepted(&a, &["backfill", ITEMS, "start", "batch=200", "rate=2000"]).await;
    let running = await_backfill(&b, ITEMS, "running, seen by B", JOB_TIMEOUT, |r| {
        r["state"] == "running" && rows_done(r) > 0
    })
    .await;
    assert_eq!(running["runner"], a_id.as_str(), "{running}");

    // A second runner is refused.
    let why = refused(&b, &["backfill", ITEMS, "start"]).await;
    assert!(
        why.contains(ITEMS) && why.contains("running"),
        "the refusal does not name the running backfill: {why}"
    );

    // Pause through B: no progress while paused.
    accepted(&b, &["backfill", ITEMS, "pause"]).await;
    let paused = await_backfill(&b, ITEMS, "paused", JOB_TIMEOUT, state_is("paused")).await;
    let synced = count(&direct, &in_sync).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = backfill_record(&a, ITEMS).await;
    assert_eq!(still["state"], "paused", "{still}");
    assert_eq!(rows_done(&still), rows_done(&paused), "{paused} -> {still}");
    assert_eq!(
        count(&direct, &in_sync).await,
        synced,
        "rows copied while paused"
    );
    assert!(
        rows_done(&paused) < SMALL as u64,
        "the throttled backfill is already through: {paused}"
    );

    // Resume through B: progress again, from where it stopped.
    accepted(&b, &["backfill", ITEMS, "resume"]).await;
    let resumed = await_backfill(&b, ITEMS, "progress after resume", JOB_TIMEOUT, |r| {
        r["state"] == "running" && rows_done(r) > rows_done(&paused) + 2000
    })
    .await;
    assert!(count(&direct, &in_sync).await > synced);
    assert!(
        last_key(&resumed) > last_key(&paused),
        "{paused} -> {resumed}"
    );

    // Cancel: it stops.
    accepted(&b, &["backfill", ITEMS, "cancel"]).await;
    let cancelled =
        await_backfill(&a, ITEMS, "cancelled", JOB_TIMEOUT, state_is("cancelled")).await;
    let synced = count(&direct, &in_sync).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        count(&direct, &in_sync).await,
        synced,
        "rows copied after cancel"
    );
    let cancelled_done = rows_done(&cancelled);
    assert!(cancelled_done < SMALL as u64, "{cancelled}");

    // Undo the copy of some rows the cancelled run went through (directly, behind pgshift's
    // back): only a start from the first key brings them back in sync.
    let undone = direct
        .execute(
            &format!(
                "UPDATE items SET qty_int = NULL WHERE id <= 200 AND qty_int IS NOT NULL \
                 AND qty_int IS NOT DISTINCT FROM ({UP})"
            ),
            &[],
        )
        .await
        .unwrap();
    assert!(undone > 100, "only {undone} of the first rows were copied");

    // Start again: from the first key (rows_done restarts), to the end.
    let wait = b.ctl_output(
        &[],
        &[
            "backfill",
            ITEMS,
            "start",
            "batch=200",
            "rate=4000",
            "--wait",
        ],
    );
    let restart = await_backfill(&a, ITEMS, "the restarted run", JOB_TIMEOUT, |r| {
        matches!(r["state"].as_str(), Some("starting" | "running")) && rows_done(r) < cancelled_done
    });
    let (out, restarted) = tokio::join!(wait, restart);
    assert!(
        out.status.success(),
        "backfill start --wait: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("restarted: {restarted}");
    let done = backfill_record(&a, ITEMS).await;
    assert_eq!(done["state"], "done", "{done}");
    assert!(rows_done(&done) >= SMALL as u64, "{done}");

    let verify = run_verify(&b, ITEMS).await;
    assert_eq!(verify["state"], "clean", "{verify}");
    let (differing, first) = items_out_of_sync(&direct).await;
    assert_eq!(
        differing, 0,
        "rows whose qty_int is not up(qty), first ids {first}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_refused_outside_dual_writing() {
    let db = common::fresh_database("backfill_planned").await;
    let direct = db.connect().await;
    create_items(&direct, 1000).await;
    let proxy = items_config(&db.name).spawn();
    assert_eq!(proxy.phase(ITEMS).await, "planned");

    let why = refused(&proxy, &["backfill", ITEMS, "start"]).await;
    assert!(why.contains("planned"), "the refusal names no phase: {why}");
    let why = refused(&proxy, &["verify", ITEMS]).await;
    assert!(why.contains("planned"), "the refusal names no phase: {why}");

    let status = proxy.ctl(&["status"]).await;
    let migration = entry(&status, ITEMS);
    assert_eq!(migration["phase"], "planned", "{migration}");
    assert_eq!(migration["backfill"]["state"], "none", "{migration}");
    assert_eq!(migration["verify"]["state"], "none", "{migration}");
    // Nothing was written: no new column, no rows touched.
    assert_eq!(
        count(
            &direct,
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'items'::regclass \
             AND attname = 'qty_int'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &direct,
            "SELECT count(*) FROM items WHERE label <> 'item ' || id"
        )
        .await,
        0
    );
}

/// `jobs.max_lock_waiters`: while more sessions of the database wait for a lock than allowed,
/// the backfill copies nothing and says why; once they stop waiting it carries on to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_pauses_while_sessions_wait_for_locks() {
    let db = common::fresh_database("backfill_lock_waiters").await;
    let direct = db.connect().await;
    create_items(&direct, 20_000).await;
    direct
        .batch_execute("CREATE TABLE unrelated (id int)")
        .await
        .unwrap();
    let proxy = items_config(&db.name)
        .extra("\n[jobs]\nmax_lock_waiters = 1\n")
        .spawn();
    accepted(&proxy, &["phase", ITEMS, "expand"]).await;

    // One session holds a lock on an unrelated table; two more queue behind it.
    let holder = db.connect().await;
    holder
        .batch_execute("BEGIN; LOCK TABLE unrelated IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let mut waiters = Vec::new();
    for _ in 0..2 {
        let c = db.connect().await;
        waiters.push(tokio::spawn(async move {
            c.batch_execute("BEGIN; LOCK TABLE unrelated; COMMIT").await
        }));
    }
    eventually(
        Duration::from_secs(20),
        "two sessions waiting for a lock",
        || async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let n = count(
                &direct,
                "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .await;
            (n >= 2).then_some(())
        },
    )
    .await;

    accepted(&proxy, &["backfill", ITEMS, "start", "batch=500"]).await;
    let record = await_backfill(
        &proxy,
        ITEMS,
        "the backfill waiting for the lock queue",
        Duration::from_secs(30),
        |r| r["waiting"].is_string(),
    )
    .await;
    let why = record["waiting"].as_str().unwrap();
    assert!(why.contains("wait for a lock"), "{why}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let record = backfill_record(&proxy, ITEMS).await;
    assert_eq!(rows_done(&record), 0, "copied while throttled: {record}");
    assert_eq!(record["state"], "running", "{record}");
    let copied = count(
        &direct,
        "SELECT count(*) FROM items WHERE qty_int IS NOT NULL",
    )
    .await;
    assert_eq!(copied, 0, "rows were copied while throttled");

    holder.batch_execute("COMMIT").await.unwrap();
    for w in waiters {
        w.await.unwrap().unwrap();
    }
    let record = await_done(&proxy, ITEMS).await;
    assert_eq!(record["waiting"], Value::Null, "{record}");
    assert_eq!(items_out_of_sync(&direct).await.0, 0);
}

/// The race the orphan sweep exists for, made deterministic: a client DELETE through pgshift
/// takes its snapshot, then waits for the lock a batch holds on the source row; the batch
/// copies the row and commits; the DELETE removes the source row but cannot see the copy.
/// Only the sweep at the end of the backfill removes it (a batch only copies source rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_a_concurrent_delete_could_not_see_is_swept() {
    let env = Orders::start("backfill_sweep").await;
    accepted(&env.proxy, &["phase", ORDERS, "expand"]).await;

    // What a batch does, by hand: lock the source row, copy it, commit later.
    let batch = env.db.connect().await;
    batch
        .batch_execute("BEGIN; SELECT * FROM orders WHERE id = 2 FOR UPDATE")
        .await
        .unwrap();
    let app = env.app().await;
    let delete =
        tokio::spawn(async move { app.execute("DELETE FROM orders WHERE id = 2", &[]).await });
    eventually(
        Duration::from_secs(20),
        "the DELETE waiting for the row lock",
        || async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let waiting = count(
                &env.direct,
                "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .await;
            (waiting > 0).then_some(())
        },
    )
    .await;
    batch
        .batch_execute(
            "INSERT INTO orders_v2 (id, customer, total_cents, created_at) \
             SELECT id, customer, (total * 100)::bigint, created_at FROM orders WHERE id = 2; \
             COMMIT",
        )
        .await
        .unwrap();
    assert_eq!(
        delete.await.unwrap().unwrap(),
        1,
        "the client's DELETE count"
    );
    // Orders 1 and 3 are not copied yet; 2 is the copy the DELETE could not see.
    assert_eq!(
        env.differences().await,
        [
            "1: only in orders",
            "2: only in orders_v2",
            "3: only in orders"
        ],
    );
    // A row only the new table ever had is an orphan just the same.
    env.direct
        .batch_execute(
            "INSERT INTO orders_v2 (id, customer, total_cents) VALUES (1000000, 'stray', 1)",
        )
        .await
        .unwrap();

    let out = env
        .proxy
        .ctl_output(&[], &["backfill", ORDERS, "start", "--wait"])
        .await;
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        env.proxy.log()
    );
    let done = backfill_record(&env.proxy, ORDERS).await;
    assert_eq!(done["deleted"], 2, "{done}");
    assert!(
        env.differences().await.is_empty(),
        "{:?}",
        env.differences().await
    );
    assert_eq!(run_verify(&env.proxy, ORDERS).await["state"], "clean");
}
