//! The demo's applications: an "old app" that knows only the old names (`users.user_name`,
//! `orders.total`) and a "new app" that knows only the new ones (`users.display_name`,
//! `orders_v2.total_cents`), each a few connections through pgshift running small read and
//! write transactions in a loop. Every failed transaction is counted and its error kept.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

/// Pause between two transactions of one connection, so the demo leaves the machine usable.
const THINK_TIME: Duration = Duration::from_millis(15);
/// Errors kept for the report.
const KEPT_ERRORS: usize = 5;

/// Which application version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum App {
    Old,
    New,
}

impl App {
    pub fn name(self) -> &'static str {
        match self {
            App::Old => "old app",
            App::New => "new app",
        }
    }
}

/// What the connections of one application did.
#[derive(Default)]
pub struct Counts {
    pub committed: AtomicU64,
    pub failed: AtomicU64,
    pub errors: std::sync::Mutex<Vec<String>>,
}

/// A running application: stop it with [`Workload::stop`].
pub struct Workload {
    pub app: App,
    pub counts: Arc<Counts>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl Workload {
    /// Starts `connections` connections of `app` on `url` (through pgshift).
    pub async fn start(
        app: App,
        url: &str,
        connections: usize,
        rows: u32,
    ) -> Result<Workload, String> {
        let counts = Arc::new(Counts::default());
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        for n in 0..connections {
            let (client, connection) = tokio_postgres::connect(url, NoTls)
                .await
                .map_err(|e| format!("{} cannot connect through pgshift: {e}", app.name()))?;
            tasks.spawn(async move {
                let _ = connection.await;
            });
            let (counts, stop) = (counts.clone(), stop.clone());
            tasks.spawn(async move {
                let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ ((n as u64 + 1) << 32) ^ app as u64;
                while !stop.is_cancelled() {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    match transaction(&client, app, seed, rows).await {
                        Ok(()) => counts.committed.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            let mut kept = counts.errors.lock().unwrap_or_else(|p| p.into_inner());
                            if kept.len() < KEPT_ERRORS {
                                kept.push(e);
                            }
                            counts.failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    tokio::time::sleep(THINK_TIME).await;
                }
            });
        }
        Ok(Workload {
            app,
            counts,
            stop,
            tasks,
        })
    }

    /// Stops every connection after its current transaction.
    pub async fn stop(mut self) -> Arc<Counts> {
        self.stop.cancel();
        // Connection tasks end once the loops ended and dropped their clients.
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
        self.counts
    }

    pub fn committed(&self) -> u64 {
        self.counts.committed.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.counts.failed.load(Ordering::Relaxed)
    }
}

/// One transaction of `app`, chosen by `seed`: a read, an update or an insert (and sometimes a
/// delete) on each table, by the names that application version knows.
async fn transaction(client: &Client, app: App, seed: u64, rows: u32) -> Result<(), String> {
    let user = 1 + (seed % u64::from(rows.max(1))) as i64;
    let order = 1 + ((seed >> 20) % u64::from(rows.max(1) * 2)) as i64;
    let cents = (seed >> 40) as i64 % 100_000;
    let statements: Vec<(String, Vec<i64>)> = match (app, seed % 8) {
        (App::Old, 0) => vec![(
            "INSERT INTO users (user_name, email) VALUES ('old ' || $1::int8, 'old' || $1::int8 || '@example.com')".into(),
            vec![user],
        )],
        (App::Old, 1 | 2) => vec![("UPDATE users SET user_name = 'renamed by old app ' || $1::int8 WHERE id = $1".into(), vec![user])],
        (App::Old, 3) => vec![(
            "INSERT INTO orders (user_id, total, note) VALUES ($1, $2::int8 / 100.0, 'old app')".into(),
            vec![user, cents],
        )],
        (App::Old, 4) => vec![("UPDATE orders SET total = $2::int8 / 100.0 WHERE id = $1".into(), vec![order, cents])],
        (App::Old, 5) => vec![("DELETE FROM orders WHERE id = $1 AND note = 'old app'".into(), vec![order])],
        (App::Old, _) => vec![
            ("SELECT user_name FROM users WHERE id = $1".into(), vec![user]),
            ("SELECT total FROM orders WHERE user_id = $1".into(), vec![user]),
        ],
        (App::New, 0) => vec![(
            "INSERT INTO users (display_name, email) VALUES ('new ' || $1::int8, 'new' || $1::int8 || '@example.com')".into(),
            vec![user],
        )],
        (App::New, 1 | 2) => vec![("UPDATE users SET display_name = 'renamed by new app ' || $1::int8 WHERE id = $1".into(), vec![user])],
        (App::New, 3) => vec![(
            "INSERT INTO orders_v2 (user_id, total_cents) VALUES ($1, $2)".into(),
            vec![user, cents],
        )],
        (App::New, 4) => vec![("UPDATE orders_v2 SET total_cents = $2 WHERE id = $1".into(), vec![order, cents])],
        (App::New, 5) => vec![("DELETE FROM orders_v2 WHERE id = $1 AND user_id = $2".into(), vec![order, user])],
        (App::New, _) => vec![
            ("SELECT display_name FROM users WHERE id = $1".into(), vec![user]),
            ("SELECT total_cents FROM orders_v2 WHERE user_id = $1".into(), vec![user]),
        ],
    };
    for (sql, values) in &statements {
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = values
            .iter()
            .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        client
            .query(sql.as_str(), &params)
            .await
            .map_err(|e| format!("{}: {sql}: {}", app.name(), crate::catalog::describe(&e)))?;
    }
    Ok(())
}
