//! The backfill and verify jobs (docs/jobs.md, DESIGN §3.2, §3.6) driving whole migrations
//! through the real binary, with the database inspected directly at every step:
//!
//! - a row changed or deleted behind pgshift's back on the new side is found by verify (its key
//!   listed, the metric set, `verify --wait` failing), blocks expand → switch, and a second
//!   backfill repairs it, after which verify is clean and switch is allowed (a table move and a
//!   column migration);
//! - switch → expand is immediate and the sides stay in sync, switch again needs no new jobs;
//!   writes in contract leave the old side stale, so rollback is refused until a reverse
//!   backfill rebuilt it (old = down(new)); from then on writes keep the old side current,
//!   `complete` is refused until the reverse backfill is cancelled, and after a clean verify
//!   `rollback` returns to switch with every row in sync (a column migration with a rename and a
//!   type change, and a table move);
//! - a whole lifecycle (expand, backfill, verify, switch, contract, complete) driven only by
//!   `pgshift ctl` while pgbench runs an old and a new application version through pgshift:
//!   no failed transaction, no lost or doubled update, the old columns dropped at the end;
//! - `ctl backfill … start --wait` and `ctl verify … --wait`: their last line and exit status.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::ctl::{accepted, record, refused};
use common::orders::{self, Orders};
use common::users::{TYPE_CHANGE, Users};
use common::{
    Proxy, ProxyConfig, TestDb, cluster, connect, count, describe_error, fresh_database,
    physical_columns, run_client, tool,
};
use serde_json::Value;
use tokio_postgres::Client;

/// The column migration of these tests: a rename and a type change in one migration.
const ACCOUNTS: &str = "accounts_v2";

/// `CASE … END`: the `up` of `balance` → `balance_int`.
const BALANCE_UP: &str = "CASE WHEN balance ~ '^-?[0-9]+$' THEN balance::integer END";

/// `accounts(id, owner, balance text)` → `holder`, `balance_int integer`, in planned.
fn accounts_toml(db: &str) -> String {
    format!(
        r#"
[[migration]]
name = "{ACCOUNTS}"
database = "{db}"
table = "public.accounts"
kind = "columns"
phase = "planned"
expand_sql = "ALTER TABLE accounts ADD COLUMN holder text, ADD COLUMN balance_int integer"
complete_sql = "ALTER TABLE accounts DROP COLUMN owner, DROP COLUMN balance"
[[migration.columns]]
old = "owner"
new = "holder"
[[migration.columns]]
old = "balance"
new = "balance_int"
up = "{BALANCE_UP}"
down = "balance_int::text"
"#
    )
}

/// A fresh database with `accounts` holding `rows` rows (`owner <id>`, balance `id % 1000`)
/// and a proxy with the [`ACCOUNTS`] migration in planned.
struct Accounts {
    proxy: Proxy,
    direct: Client,
    db: TestDb,
}

impl Accounts {
    async fn start(hint: &str, rows: i32) -> Accounts {
        let db = fresh_database(hint).await;
        let direct = db.connect().await;
        direct
            .batch_execute(&format!(
                "CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance text);
                 INSERT INTO accounts SELECT g, 'owner ' || g, (g % 1000)::text
                     FROM generate_series(1, {rows}) g;
                 ANALYZE accounts;"
            ))
            .await
            .unwrap_or_else(|e| panic!("accounts schema: {}", describe_error(&e)));
        let proxy = ProxyConfig::new(cluster())
            .extra(&common::control_toml())
            .extra(&accounts_toml(&db.name))
            .spawn();
        Accounts { proxy, direct, db }
    }
}

/// The orders → orders_v2 fixture with `extra` more orders (ids 4 …), integral cents.
async fn orders_with(hint: &str, extra: i32) -> Orders {
    let env = Orders::start(hint).await;
    env.direct
        .batch_execute(&format!(
            "INSERT INTO orders (customer, total, note, created_at)
                 SELECT 'c' || g, (g % 5000) / 4.0, 'n' || g,
                        '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 minute'
                 FROM generate_series(1, {extra}) g;
             ANALYZE orders;"
        ))
        .await
        .unwrap_or_else(|e| panic!("more orders: {}", describe_error(&e)));
    env
}

// --- ctl helpers ---------------------------------------------------------------------------

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `pgshift ctl ARGS…` (tables for people), which must exit 0; its stdout.
async fn ctl_ok(proxy: &Proxy, args: &[&str]) -> String {
    let out = proxy.ctl_output(&[], args).await;
    assert!(
        out.status.success(),
        "pgshift ctl {args:?} exited {:?}\nstdout: {}\nstderr: {}\nlog:\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr),
        proxy.log()
    );
    text(&out.stdout)
}

/// Runs `pgshift ctl ARGS…`, which must exit non-zero; its output.
async fn ctl_fails(proxy: &Proxy, args: &[&str]) -> Output {
    let out = proxy.ctl_output(&[], args).await;
    assert!(
        !out.status.success(),
        "pgshift ctl {args:?} exited 0\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// `backfill NAME start --wait`, which must exit 0 with the backfill `done`; the record.
async fn backfill_done(proxy: &Proxy, migration: &str) -> Value {
    ctl_ok(proxy, &["backfill", migration, "start", "--wait"]).await;
    let backfill = record(proxy, migration, "backfill").await;
    assert_eq!(backfill["state"], "done", "{backfill}");
    assert_eq!(backfill["error"], Value::Null, "{backfill}");
    backfill
}

/// `verify NAME --wait`, which must exit 0 with the verify `clean`; the record.
async fn verify_clean(proxy: &Proxy, migration: &str) -> Value {
    ctl_ok(proxy, &["verify", migration, "--wait"]).await;
    let verify = record(proxy, migration, "verify").await;
    assert_eq!(
        (&verify["state"], &verify["mismatches"]),
        (&"clean".into(), &0.into()),
        "{verify}"
    );
    verify
}

/// The value of `name{migration="…"}` on the metrics endpoint.
async fn metric(proxy: &Proxy, name: &str, migration: &str) -> Option<f64> {
    let prefix = format!("{name}{{migration=\"{migration}\"}} ");
    proxy
        .metrics_text()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// The keys in a verify record's `first_keys`, sorted.
fn first_keys(verify: &Value) -> Vec<String> {
    let mut keys: Vec<String> = verify["first_keys"]
        .as_array()
        .unwrap_or_else(|| panic!("no first_keys in {verify}"))
        .iter()
        .map(|k| {
            k.as_str()
                .unwrap_or_else(|| panic!("key {k} is not text"))
                .to_owned()
        })
        .collect();
    keys.sort();
    keys
}

/// Runs `sql` through pgshift; the row count.
async fn exec(app: &Client, sql: &str) -> u64 {
    app.execute(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe_error(&e)))
}

/// The single text cell of `sql`, run directly (`None`: no row or NULL).
async fn cell(direct: &Client, sql: &str) -> Option<String> {
    direct
        .query_opt(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe_error(&e)))
        .and_then(|r| r.get(0))
}

fn keys(ids: impl IntoIterator<Item = i64>) -> BTreeSet<String> {
    ids.into_iter().map(|i| i.to_string()).collect()
}

// --- 1. a corrupted row ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_row_is_reported_and_blocks_switch() {
    let env = orders_with("jl_corrupt", 3000).await;
    let (proxy, direct, name) = (&env.proxy, &env.direct, orders::MIGRATION);
    accepted(proxy, &["phase", name, "expand"]).await;

    let backfill = backfill_done(proxy, name).await;
    assert_eq!(backfill["direction"], "forward", "{backfill}");
    assert_eq!(backfill["rows_done"], 3003, "{backfill}");
    assert_eq!(
        env.differences().await,
        Vec::<String>::new(),
        "after backfill"
    );
    let copied = metric(proxy, "pgshift_backfill_rows_total", name).await;
    assert!(copied >= Some(3003.0), "rows counted: {copied:?}");

    // Behind pgshift's back: one value changed, one row gone from the new side.
    let (changed, missing) = (1234, 2500);
    direct
        .batch_execute(&format!(
            "UPDATE orders_v2 SET total_cents = total_cents + 1 WHERE id = {changed};
             DELETE FROM orders_v2 WHERE id = {missing};"
        ))
        .await
        .unwrap();
    assert_eq!(env.differences().await.len(), 2);

    accepted(proxy, &["verify", name]).await;
    let verify = common::eventually(Duration::from_secs(60), "a verify result", || async {
        let verify = record(proxy, name, "verify").await;
        matches!(
            verify["state"].as_str(),
            Some("clean" | "mismatch" | "failed")
        )
        .then_some(verify)
    })
    .await;
    assert_eq!(
        (&verify["state"], &verify["mismatches"]),
        (&"mismatch".into(), &2.into()),
        "{verify}"
    );
    assert_eq!(first_keys(&verify), ["1234", "2500"], "{verify}");
    ctl_fails(proxy, &["verify", name, "--wait"]).await;
    assert_eq!(
        metric(proxy, "pgshift_verify_mismatches", name).await,
        Some(2.0)
    );

    refused(proxy, &["phase", name, "switch"]).await;
    assert_eq!(proxy.phase(name).await, "expand");

    // A second backfill puts both rows right.
    backfill_done(proxy, name).await;
    assert_eq!(
        env.differences().await,
        Vec::<String>::new(),
        "the backfill repairs a changed and a missing row"
    );
    verify_clean(proxy, name).await;
    assert_eq!(
        metric(proxy, "pgshift_verify_mismatches", name).await,
        Some(0.0)
    );
    let reply = accepted(proxy, &["phase", name, "switch"]).await;
    assert_eq!(reply["forced"], false, "{reply}");
    assert_eq!(proxy.phase(name).await, "switch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_column_value_is_reported() {
    let users = Users::start("jl_corrupt_cols", "planned", "planned").await;
    let (proxy, direct) = (&users.proxy, &users.direct);
    // Row 3 keeps its age `n/a`, which `up` maps to NULL: a NULL on both sides is equal.
    direct
        .batch_execute(
            "INSERT INTO users SELECT g, 'u' || g, (g % 90)::text FROM generate_series(4, 2000) g",
        )
        .await
        .unwrap();
    accepted(proxy, &["phase", TYPE_CHANGE, "expand"]).await;
    backfill_done(proxy, TYPE_CHANGE).await;
    verify_clean(proxy, TYPE_CHANGE).await;

    direct
        .batch_execute("UPDATE users SET age_int = age_int + 1 WHERE id = 777")
        .await
        .unwrap();
    ctl_fails(proxy, &["verify", TYPE_CHANGE, "--wait"]).await;
    let verify = record(proxy, TYPE_CHANGE, "verify").await;
    assert_eq!(
        (&verify["state"], &verify["mismatches"]),
        (&"mismatch".into(), &1.into()),
        "{verify}"
    );
    assert_eq!(first_keys(&verify), ["777"], "{verify}");
    refused(proxy, &["phase", TYPE_CHANGE, "switch"]).await;
}

// --- 2. rollbacks ----------------------------------------------------------------------------

/// A migration under the rollback story, with what the story needs to know about its tables.
struct Story<'a> {
    proxy: &'a Proxy,
    direct: &'a Client,
    app: Client,
    name: &'static str,
    table_move: bool,
}

impl Story<'_> {
    /// Keys whose old and new sides disagree, read directly: present on one side only, or
    /// old ≠ down(new), or new ≠ up(old).
    async fn out_of_sync(&self) -> BTreeSet<String> {
        let sql = if self.table_move {
            "SELECT coalesce(o.id, n.id)::text FROM orders o FULL JOIN orders_v2 n ON o.id = n.id \
             WHERE o.id IS NULL OR n.id IS NULL OR o.customer IS DISTINCT FROM n.customer \
                OR o.total IS DISTINCT FROM (n.total_cents / 100.0)::numeric(12,2) \
                OR n.total_cents IS DISTINCT FROM (o.total * 100)::bigint \
                OR o.created_at IS DISTINCT FROM n.created_at"
                .to_owned()
        } else {
            format!(
                "SELECT id::text FROM accounts WHERE owner IS DISTINCT FROM holder \
                 OR balance IS DISTINCT FROM balance_int::text \
                 OR balance_int IS DISTINCT FROM ({BALANCE_UP})"
            )
        };
        self.direct
            .query(&sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", describe_error(&e)))
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// The old side of row `id`, read directly: `name amount` (`None`: no row).
    async fn old_row(&self, id: i64) -> Option<String> {
        let sql = if self.table_move {
            format!("SELECT customer || ' ' || total FROM orders WHERE id = {id}")
        } else {
            format!("SELECT owner || ' ' || balance FROM accounts WHERE id = {id}")
        };
        cell(self.direct, &sql).await
    }

    /// Whether the new side has row `id`, read directly.
    async fn new_has(&self, id: i64) -> bool {
        let table = if self.table_move {
            "orders_v2"
        } else {
            "accounts"
        };
        count(
            self.direct,
            &format!("SELECT count(*) FROM {table} WHERE id = {id}"),
        )
        .await
            == 1
    }

    /// An amount of `cents` as the old side shows it.
    fn old_amount(&self, cents: i64) -> String {
        if self.table_move {
            format!("{}.{:02}", cents / 100, cents % 100)
        } else {
            cents.to_string()
        }
    }

    /// Updates `id` through pgshift by the old names: name `who`, amount `cents`.
    async fn update_old(&self, id: i64, who: &str, cents: i64) {
        let sql = if self.table_move {
            format!(
                "UPDATE orders SET customer = '{who}', total = {} WHERE id = {id}",
                self.old_amount(cents)
            )
        } else {
            format!("UPDATE accounts SET owner = '{who}', balance = '{cents}' WHERE id = {id}")
        };
        assert_eq!(exec(&self.app, &sql).await, 1, "{sql}");
    }

    /// Updates `id` through pgshift by the new names.
    async fn update_new(&self, id: i64, who: &str, cents: i64) {
        let sql = if self.table_move {
            format!(
                "UPDATE orders_v2 SET customer = '{who}', total_cents = {cents} WHERE id = {id}"
            )
        } else {
            format!("UPDATE accounts SET holder = '{who}', balance_int = {cents} WHERE id = {id}")
        };
        assert_eq!(exec(&self.app, &sql).await, 1, "{sql}");
    }

    /// Adds `amount` to the rows `lo..=hi` through pgshift by the new names.
    async fn add_new(&self, lo: i64, hi: i64, cents: i64) {
        let sql = if self.table_move {
            format!(
                "UPDATE orders_v2 SET total_cents = total_cents + {cents} \
                 WHERE id BETWEEN {lo} AND {hi}"
            )
        } else {
            format!(
                "UPDATE accounts SET balance_int = balance_int + {cents} \
                 WHERE id BETWEEN {lo} AND {hi}"
            )
        };
        assert_eq!(exec(&self.app, &sql).await, (hi - lo + 1) as u64, "{sql}");
    }

    /// Inserts `id` through pgshift by the new names.
    async fn insert_new(&self, id: i64, who: &str, cents: i64) {
        let sql = if self.table_move {
            format!(
                "INSERT INTO orders_v2 (id, customer, total_cents) VALUES ({id}, '{who}', {cents})"
            )
        } else {
            format!(
                "INSERT INTO accounts (id, holder, balance_int) VALUES ({id}, '{who}', {cents})"
            )
        };
        assert_eq!(exec(&self.app, &sql).await, 1, "{sql}");
    }

    /// Inserts `id` through pgshift by the old names.
    async fn insert_old(&self, id: i64, who: &str, cents: i64) {
        let sql = if self.table_move {
            format!(
                "INSERT INTO orders (id, customer, total) VALUES ({id}, '{who}', {})",
                self.old_amount(cents)
            )
        } else {
            format!("INSERT INTO accounts (id, owner, balance) VALUES ({id}, '{who}', '{cents}')")
        };
        assert_eq!(exec(&self.app, &sql).await, 1, "{sql}");
    }

    /// Deletes `id` through pgshift by the new names.
    async fn delete_new(&self, id: i64) {
        let table = if self.table_move {
            "orders_v2"
        } else {
            "accounts"
        };
        let sql = format!("DELETE FROM {table} WHERE id = {id}");
        assert_eq!(exec(&self.app, &sql).await, 1, "{sql}");
    }

    async fn assert_in_sync(&self, when: &str) {
        assert_eq!(self.out_of_sync().await, BTreeSet::new(), "{when}");
    }

    /// The whole story; see the module doc.
    async fn run(&self) {
        let (proxy, name) = (self.proxy, self.name);
        accepted(proxy, &["phase", name, "expand"]).await;
        backfill_done(proxy, name).await;
        verify_clean(proxy, name).await;
        accepted(proxy, &["phase", name, "switch"]).await;

        // Switch: writes by either name reach both sides.
        self.update_old(60, "sw old", 123).await;
        self.update_new(61, "sw new", 321).await;
        self.insert_old(100_003, "sw ins", 900).await;
        self.assert_in_sync("switch").await;

        // switch → expand at once: the old side never stopped being written.
        let reply = accepted(proxy, &["rollback", name]).await;
        assert_eq!(reply["phase"], "expand", "{reply}");
        self.assert_in_sync("back in expand").await;
        assert_eq!(
            self.old_row(61).await,
            Some(format!("sw new {}", self.old_amount(321)))
        );
        // The forward backfill and verify still hold: no new jobs, no force.
        let reply = accepted(proxy, &["phase", name, "switch"]).await;
        assert_eq!(reply["forced"], false, "{reply}");
        accepted(proxy, &["phase", name, "contract"]).await;

        // Contract: only the new side is written.
        self.add_new(10, 19, 5).await;
        self.insert_new(100_001, "contract", 4242).await;
        self.delete_new(30).await;
        let mut stale = keys(10..=19);
        stale.insert("100001".into());
        if self.table_move {
            // The old table still has the deleted order.
            stale.insert("30".into());
        }
        assert_eq!(
            self.out_of_sync().await,
            stale,
            "contract writes the new side only"
        );
        assert!(!self.new_has(30).await);

        let error = refused(proxy, &["rollback", name]).await;
        assert!(error.contains("reverse backfill"), "{error}");
        assert_eq!(proxy.phase(name).await, "contract");

        // The reverse backfill rebuilds the old side: old = down(new).
        let backfill = backfill_done(proxy, name).await;
        assert_eq!(backfill["direction"], "reverse", "{backfill}");
        self.assert_in_sync("after the reverse backfill").await;
        assert_eq!(proxy.phase(name).await, "contract");

        // From now on writes keep the old side current again.
        self.update_new(40, "rev", 77_700).await;
        self.insert_new(100_002, "rev ins", 55_500).await;
        self.delete_new(50).await;
        assert_eq!(
            self.old_row(40).await,
            Some(format!("rev {}", self.old_amount(77_700)))
        );
        assert_eq!(
            self.old_row(100_002).await,
            Some(format!("rev ins {}", self.old_amount(55_500)))
        );
        assert_eq!(self.old_row(50).await, None, "deleted on the old side too");
        self.assert_in_sync("writes during the reverse backfill record")
            .await;

        let error = refused(proxy, &["complete", name]).await;
        assert!(error.contains("cancel"), "{error}");
        assert_eq!(proxy.phase(name).await, "contract");

        let verify = verify_clean(proxy, name).await;
        assert_eq!(verify["direction"], "reverse", "{verify}");
        let reply = accepted(proxy, &["rollback", name]).await;
        assert_eq!(reply["phase"], "switch", "{reply}");
        assert_eq!(proxy.phase(name).await, "switch");
        self.assert_in_sync("back in switch").await;

        // Switch writes both sides again.
        self.update_new(41, "sw again", 4_100).await;
        assert_eq!(
            self.old_row(41).await,
            Some(format!("sw again {}", self.old_amount(4_100)))
        );
        self.assert_in_sync("switch after the rollback").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_switch_to_expand_and_contract_back_to_switch() {
    let env = Accounts::start("jl_rollback_cols", 5000).await;
    let story = Story {
        proxy: &env.proxy,
        direct: &env.direct,
        app: connect(&env.proxy.db_url(&env.db)).await,
        name: ACCOUNTS,
        table_move: false,
    };
    story.run().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_switch_to_expand_and_contract_back_to_switch_table_move() {
    let env = orders_with("jl_rollback_move", 5000).await;
    let story = Story {
        proxy: &env.proxy,
        direct: &env.direct,
        app: env.app().await,
        name: orders::MIGRATION,
        table_move: true,
    };
    story.run().await;
}

/// Contract with a reverse backfill: `complete` waits for its cancellation, then runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_is_refused_until_the_reverse_backfill_is_cancelled() {
    let env = Accounts::start("jl_cancel_reverse", 2000).await;
    let (proxy, direct) = (&env.proxy, &env.direct);
    accepted(proxy, &["phase", ACCOUNTS, "expand"]).await;
    backfill_done(proxy, ACCOUNTS).await;
    verify_clean(proxy, ACCOUNTS).await;
    accepted(proxy, &["phase", ACCOUNTS, "switch"]).await;
    accepted(proxy, &["phase", ACCOUNTS, "contract"]).await;
    let backfill = backfill_done(proxy, ACCOUNTS).await;
    assert_eq!(backfill["direction"], "reverse", "{backfill}");

    let error = refused(proxy, &["complete", ACCOUNTS]).await;
    assert!(error.contains("cancel"), "{error}");
    let columns = "SELECT count(*) FROM pg_attribute WHERE attrelid = 'accounts'::regclass \
                   AND attnum > 0 AND NOT attisdropped";
    assert_eq!(count(direct, columns).await, 5, "complete_sql did not run");

    accepted(proxy, &["backfill", ACCOUNTS, "cancel"]).await;
    assert_eq!(
        record(proxy, ACCOUNTS, "backfill").await["state"],
        "cancelled"
    );
    // Contract writes again: the new side only.
    let app = connect(&proxy.db_url(&env.db)).await;
    exec(&app, "UPDATE accounts SET balance_int = 9999 WHERE id = 7").await;
    assert_eq!(
        cell(direct, "SELECT balance FROM accounts WHERE id = 7").await,
        Some("7".into()),
        "after the cancel, contract leaves the old side alone"
    );
    let reply = accepted(proxy, &["complete", ACCOUNTS]).await;
    assert_eq!(reply["phase"], "complete", "{reply}");
    assert_eq!(
        count(direct, columns).await,
        3,
        "complete_sql dropped two columns"
    );
}

// --- 3. a lifecycle under pgbench ------------------------------------------------------------

const PGBENCH_ROWS: i32 = 50_000;
/// Ids of rows the new application inserts.
const NEW_IDS_FROM: i64 = 1_000_000;

/// The old application: reads and writes by the old names.
const OLD_APP: &str = "\\set id random(1, 50000)
BEGIN;
SELECT owner, balance FROM accounts WHERE id = :id;
UPDATE accounts SET balance = (balance::integer + 1)::text WHERE id = :id;
COMMIT;
";

/// The new application: by the new names, and an insert.
const NEW_APP: &str = "\\set id random(1, 50000)
BEGIN;
SELECT holder, balance_int FROM accounts WHERE id = :id;
UPDATE accounts SET balance_int = balance_int + 1 WHERE id = :id;
INSERT INTO accounts (id, holder, balance_int) VALUES (nextval('new_ids'), 'new app', 0);
COMMIT;
";

/// Runs pgbench with `script` through the proxy in the background, in the extended protocol.
fn pgbench(
    proxy: &Proxy,
    db: &TestDb,
    script: &Path,
    clients: u32,
    seconds: u32,
) -> tokio::task::JoinHandle<Output> {
    let c = cluster();
    let mut bench = tokio::process::Command::new(tool("pgbench"));
    bench
        .args(["-n", "--protocol=extended", "-j", "2", "-R", "100"])
        .args(["-c", &clients.to_string(), "-T", &seconds.to_string()])
        .arg("-f")
        .arg(script)
        .args(["-h", "127.0.0.1", "-p", &proxy.port().to_string()])
        .args(["-U", c.superuser()])
        .arg(&db.name);
    if let Some(pw) = c.superuser_password() {
        bench.env("PGPASSWORD", pw);
    }
    tokio::spawn(run_client(bench, None))
}

/// Asserts pgbench ran without an aborted client or a failed transaction; the transactions
/// it processed.
fn pgbench_report(who: &str, out: &Output) -> u64 {
    let report = text(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench ({who}) exited {:?}\nstdout: {report}\nstderr: {}",
        out.status.code(),
        text(&out.stderr)
    );
    assert!(
        report.contains("number of failed transactions: 0 "),
        "pgbench ({who}) reported failures:\n{report}\nstderr: {}",
        text(&out.stderr)
    );
    let processed: u64 = report
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no transaction count in:\n{report}"));
    assert!(
        processed > 0,
        "pgbench ({who}) processed nothing:\n{report}"
    );
    processed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_driven_by_ctl_under_pgbench() {
    const OLD_CLIENTS: u32 = 4;
    const NEW_CLIENTS: u32 = 2;
    let env = Accounts::start("jl_pgbench", PGBENCH_ROWS).await;
    let (proxy, direct) = (&env.proxy, &env.direct);
    direct
        .batch_execute(&format!("CREATE SEQUENCE new_ids START {NEW_IDS_FROM}"))
        .await
        .unwrap();
    let initial_sum = count(direct, "SELECT sum(balance::bigint)::bigint FROM accounts").await;
    let scripts = tempfile::tempdir().unwrap();
    let (old_script, new_script) = (
        scripts.path().join("old.sql"),
        scripts.path().join("new.sql"),
    );
    std::fs::write(&old_script, OLD_APP).unwrap();
    std::fs::write(&new_script, NEW_APP).unwrap();

    // The old application runs throughout; the new one is deployed once expand began.
    let started = Instant::now();
    let old_app = pgbench(proxy, &env.db, &old_script, OLD_CLIENTS, 30);
    ctl_ok(proxy, &["phase", ACCOUNTS, "expand"]).await;
    let new_app = pgbench(proxy, &env.db, &new_script, NEW_CLIENTS, 25);
    ctl_ok(proxy, &["backfill", ACCOUNTS, "start", "--wait"]).await;
    ctl_ok(proxy, &["verify", ACCOUNTS, "--wait"]).await;
    ctl_ok(proxy, &["phase", ACCOUNTS, "switch"]).await;
    ctl_ok(proxy, &["phase", ACCOUNTS, "contract"]).await;
    ctl_ok(proxy, &["complete", ACCOUNTS]).await;
    let lifecycle = started.elapsed();
    let under_load = !old_app.is_finished() && !new_app.is_finished();
    println!("lifecycle took {lifecycle:?}, pgbench still running: {under_load}");

    let old_processed = pgbench_report("old app", &old_app.await.unwrap());
    let new_processed = pgbench_report("new app", &new_app.await.unwrap());
    assert!(
        under_load,
        "the lifecycle took {lifecycle:?}, longer than the pgbench runs: not tested under load"
    );

    // The old columns are gone, every row is there, no update was lost or doubled.
    assert_eq!(
        physical_columns(direct, "accounts").await,
        ["id", "holder", "balance_int"]
    );
    assert_eq!(proxy.phase(ACCOUNTS).await, "complete");
    let issued: i64 = direct
        .query_one(
            "SELECT CASE WHEN is_called THEN last_value - $1 + 1 ELSE 0 END FROM new_ids",
            &[&NEW_IDS_FROM],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        issued as u64 >= new_processed,
        "{issued} ids for {new_processed} inserts"
    );
    assert_eq!(
        count(direct, "SELECT count(*) FROM accounts").await,
        i64::from(PGBENCH_ROWS) + issued,
        "every original row and every inserted one"
    );
    assert_eq!(
        count(
            direct,
            "SELECT count(*) FROM accounts WHERE id <= 50000 \
             AND holder IS NOT DISTINCT FROM 'owner ' || id AND balance_int IS NOT NULL"
        )
        .await,
        i64::from(PGBENCH_ROWS),
        "every original row kept its owner and a balance"
    );
    let final_sum = count(direct, "SELECT sum(balance_int)::bigint FROM accounts").await;
    let updates = (final_sum - initial_sum) as u64;
    let processed = old_processed + new_processed;
    let slack = u64::from(OLD_CLIENTS + NEW_CLIENTS);
    assert!(
        (processed..=processed + slack).contains(&updates),
        "{processed} transactions each added 1, the balances grew by {updates}"
    );
}

// --- 4. --wait ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_wait_shows_progress_and_exit_status() {
    let env = Accounts::start("jl_wait", 5000).await;
    let (proxy, direct) = (&env.proxy, &env.direct);
    accepted(proxy, &["phase", ACCOUNTS, "expand"]).await;

    // About two seconds at 2500 rows/s.
    let out = ctl_ok(
        proxy,
        &[
            "backfill",
            ACCOUNTS,
            "start",
            "batch=250",
            "rate=2500",
            "--wait",
        ],
    )
    .await;
    let last = out
        .split(['\n', '\r'])
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or_else(|| panic!("backfill --wait printed nothing"));
    let lower = last.to_lowercase();
    assert!(
        lower.contains("done") && lower.contains("row"),
        "last line: {last:?}\n{out}"
    );
    let digits: String = last
        .chars()
        .filter(|c| !matches!(c, ',' | '_' | ' ' | '\u{a0}' | '\u{202f}'))
        .collect();
    assert!(digits.contains("5000"), "the rows copied in {last:?}");
    let backfill = record(proxy, ACCOUNTS, "backfill").await;
    assert_eq!(
        (&backfill["state"], &backfill["rows_done"]),
        (&"done".into(), &5000.into()),
        "{backfill}"
    );
    assert_eq!(
        count(
            direct,
            "SELECT count(*) FROM accounts WHERE holder = owner AND balance_int::text = balance"
        )
        .await,
        5000
    );

    direct
        .batch_execute("UPDATE accounts SET balance_int = -1 WHERE id IN (3131, 4242)")
        .await
        .unwrap();
    let out = proxy.ctl_output(&[], &["verify", ACCOUNTS, "--wait"]).await;
    let printed = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "verify --wait:\n{printed}");
    assert!(
        printed.contains("3131") && printed.contains("4242"),
        "the mismatching keys are printed:\n{printed}"
    );
}
