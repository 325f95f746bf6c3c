//! A table move under concurrent load (docs/table-moves.md): in expand, eight clients, half
//! of them an old app writing `orders` and half a new app writing `orders_v2`, run random
//! inserts, upserts, updates and deletes through pgshift for 20 s on a small range of ids, so
//! that they collide. Afterwards the two tables are compared directly: every key is in both or
//! in neither, with equal mapped values.
//!
//! Errors a client would also get without pgshift are allowed and counted (a duplicate key
//! from its own plain INSERT, decided on its own table or on the authoritative one, `orders` in
//! expand: the new app's INSERT goes there first, so both apps take locks in one order). Deadlocks are counted and allowed too, unless they break the
//! rule below: these single-key statements cannot deadlock without pgshift, so their count is
//! printed for whoever tunes the rewrite's lock order. A failure is a unique violation on the
//! table the client did not name, any old-app error that mentions `orders_v2` (message, detail,
//! hint, context, table or constraint), or any other error.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::orders::{MIGRATION, Orders, Side};
use tokio_postgres::Client;

const CLIENTS: usize = 8;
const RUN_FOR: Duration = Duration::from_secs(20);
/// Ids are drawn from `1..=KEYS`, so clients keep colliding.
const KEYS: u64 = 30;
/// A statement taking longer than this means pgshift (or a lock) hangs.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// SplitMix64: seeded per client, no dependency (the interleaving is random anyway).
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Insert,
    Upsert,
    Update,
    /// Three consecutive ids in one UPDATE.
    RangeUpdate,
    Delete,
    /// An UPDATE sent with the simple protocol.
    SimpleUpdate,
}

impl Op {
    fn pick(rng: &mut Rng) -> Op {
        match rng.below(100) {
            0..30 => Op::Insert,
            30..45 => Op::Upsert,
            45..70 => Op::Update,
            70..75 => Op::RangeUpdate,
            75..95 => Op::Delete,
            _ => Op::SimpleUpdate,
        }
    }

    /// The statement for `side`, with `id` as its key (`$1` or a literal) and `cents` as the
    /// amount written.
    fn sql(self, side: Side, worker: usize, id: &str, cents: i64) -> String {
        let total = format!("{}.{:02}", cents / 100, cents % 100);
        match (side, self) {
            (Side::Old, Op::Insert) => format!(
                "INSERT INTO orders (id, customer, total, note) \
                 VALUES ({id}, 'old {worker}', {total}, 'n {worker}')"
            ),
            (Side::Old, Op::Upsert) => format!(
                "INSERT INTO orders (id, customer, total) VALUES ({id}, 'old {worker}', {total}) \
                 ON CONFLICT (id) DO UPDATE SET total = EXCLUDED.total, customer = EXCLUDED.customer"
            ),
            (Side::Old, Op::Update) => format!(
                "UPDATE orders SET total = {total}, customer = 'old {worker} upd' WHERE id = {id}"
            ),
            (Side::Old, Op::RangeUpdate) => {
                format!("UPDATE orders SET total = total + 0.01 WHERE id BETWEEN {id} AND {id} + 2")
            }
            (Side::Old, Op::Delete) => format!("DELETE FROM orders WHERE id = {id}"),
            (Side::Old, Op::SimpleUpdate) => format!(
                "UPDATE orders SET note = 'simple {worker}', total = {total} WHERE id = {id}"
            ),
            (Side::New, Op::Insert) => format!(
                "INSERT INTO orders_v2 (id, customer, total_cents) \
                 VALUES ({id}, 'new {worker}', {cents})"
            ),
            (Side::New, Op::Upsert) => format!(
                "INSERT INTO orders_v2 (id, customer, total_cents) \
                 VALUES ({id}, 'new {worker}', {cents}) ON CONFLICT (id) DO UPDATE \
                 SET total_cents = EXCLUDED.total_cents, customer = EXCLUDED.customer"
            ),
            (Side::New, Op::Update) => format!(
                "UPDATE orders_v2 SET total_cents = {cents}, customer = 'new {worker} upd' \
                 WHERE id = {id}"
            ),
            (Side::New, Op::RangeUpdate) => format!(
                "UPDATE orders_v2 SET total_cents = total_cents + 1 \
                 WHERE id BETWEEN {id} AND {id} + 2"
            ),
            (Side::New, Op::Delete) => format!("DELETE FROM orders_v2 WHERE id = {id}"),
            (Side::New, Op::SimpleUpdate) => {
                format!("UPDATE orders_v2 SET total_cents = {cents} WHERE id = {id}")
            }
        }
    }
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    ok: u64,
    /// Allowed errors, by app and kind.
    allowed: BTreeMap<String, u64>,
    /// Errors that show a fault in pgshift, by kind: how many, and the first one in full.
    failures: BTreeMap<String, (u64, String)>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        for (kind, n) in other.allowed {
            *self.allowed.entry(kind).or_default() += n;
        }
        for (kind, (n, example)) in other.failures {
            self.failures.entry(kind).or_insert((0, example)).0 += n;
        }
    }

    fn fail(&mut self, kind: String, example: String) {
        self.failures.entry(kind).or_insert((0, example)).0 += 1;
    }

    fn failure_count(&self) -> u64 {
        self.failures.values().map(|(n, _)| n).sum()
    }

    /// One line per kind of failure: how many, and the first occurrence.
    fn failure_report(&self) -> String {
        let lines: Vec<String> = self
            .failures
            .values()
            .map(|(n, example)| format!("{n} x {example}"))
            .collect();
        lines.join("\n")
    }
}

/// A fault: `(kind, the error in full)`.
type Fault = (String, String);

/// `Ok(kind)` for an error the client could get without pgshift (or a counted deadlock),
/// `Err` for one that shows a fault.
fn classify(side: Side, op: Op, e: &tokio_postgres::Error) -> Result<&'static str, Fault> {
    let Some(db) = e.as_db_error() else {
        let what = format!("{} {op:?}: client error {e}", side.app());
        return Err((what.clone(), what));
    };
    let code = db.code().code();
    let fields = [
        Some(db.message()),
        db.detail(),
        db.hint(),
        db.where_(),
        db.table(),
        db.constraint(),
    ];
    let text = fields.into_iter().flatten().collect::<Vec<_>>().join(" | ");
    let fault = |why: &str| -> Result<&'static str, Fault> {
        let kind = format!("{why} {} {op:?} {code} {}", side.app(), db.message());
        Err((kind, format!("{why}: {} {op:?}: {code} {text}", side.app())))
    };
    if side == Side::Old && text.contains("orders_v2") {
        return fault("an old-app error mentions orders_v2");
    }
    let own_key = format!("{}_pkey", side.table());
    // In expand reads, and so duplicate keys, are decided on the authoritative `orders`.
    let authoritative_key = "orders_pkey";
    match code {
        "23505"
            if op == Op::Insert
                && (db.constraint() == Some(own_key.as_str())
                    || db.constraint() == Some(authoritative_key)) =>
        {
            Ok("duplicate key (own INSERT)")
        }
        "23505" => fault("unique violation not from the client's own INSERT"),
        "40P01" => Ok("deadlock"),
        _ => fault("unexpected error"),
    }
}

async fn run_one(client: &Client, op: Op, side: Side, worker: usize, rng: &mut Rng) -> Tally {
    let mut tally = Tally::default();
    let id = 1 + rng.below(KEYS) as i64;
    let cents = 1 + rng.below(99_999) as i64;
    let work = async {
        if op == Op::SimpleUpdate {
            let sql = op.sql(side, worker, &id.to_string(), cents);
            client.simple_query(&sql).await.map(drop)
        } else {
            let sql = op.sql(side, worker, "$1", cents);
            client.execute(&sql, &[&id]).await.map(drop)
        }
    };
    match tokio::time::timeout(STATEMENT_TIMEOUT, work).await {
        Err(_) => tally.fail(
            format!("{} {op:?} timeout", side.app()),
            format!(
                "{} {op:?} on id {id} did not finish within {STATEMENT_TIMEOUT:?}",
                side.app()
            ),
        ),
        Ok(Ok(())) => tally.ok += 1,
        Ok(Err(e)) => match classify(side, op, &e) {
            Ok(kind) => {
                *tally
                    .allowed
                    .entry(format!("{}: {kind}", side.app()))
                    .or_default() += 1
            }
            Err((kind, why)) => tally.fail(kind, why),
        },
    }
    tally
}

/// One client's loop until `deadline` (or until its connection is gone).
async fn client_loop(client: Client, side: Side, worker: usize, deadline: Instant) -> Tally {
    let mut rng = Rng(worker as u64 + 1);
    let mut tally = Tally::default();
    while Instant::now() < deadline {
        let op = Op::pick(&mut rng);
        tally.merge(run_one(&client, op, side, worker, &mut rng).await);
        if client.is_closed() {
            let why = format!("{} {worker}: connection closed", side.app());
            tally.fail(why.clone(), why);
            break;
        }
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_old_and_new_app_writes_keep_both_tables_equal() {
    let env = Orders::start("moves_concurrency").await;
    env.proxy.set_phase(MIGRATION, "expand").await;
    env.backfill().await;
    assert_eq!(env.differences().await, Vec::<String>::new(), "before");

    let deadline = Instant::now() + RUN_FOR;
    let mut clients = Vec::with_capacity(CLIENTS);
    for worker in 0..CLIENTS {
        let side = if worker % 2 == 0 {
            Side::Old
        } else {
            Side::New
        };
        let client = env.app().await;
        clients.push(tokio::spawn(client_loop(client, side, worker, deadline)));
    }
    let mut total = Tally::default();
    for client in clients {
        total.merge(client.await.expect("a client task panicked"));
    }

    let differences = env.differences().await;
    println!(
        "{} statements succeeded; allowed errors: {:?}; failures: {}; differing keys: {}",
        total.ok,
        total.allowed,
        total.failure_count(),
        differences.len()
    );
    assert!(
        total.failures.is_empty() && differences.is_empty(),
        "{} failing statements (allowed: {:?}), by kind:\n{}\n\
         {} keys differ between orders and orders_v2:\n{}",
        total.failure_count(),
        total.allowed,
        total.failure_report(),
        differences.len(),
        differences.join("\n")
    );
    assert!(total.ok >= 200, "only {} statements succeeded", total.ok);
    assert_eq!(env.proxy.phase(MIGRATION).await, "expand");
}
