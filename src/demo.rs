//! `pgshift demo`: pgshift doing its job on a throw-away database, end to end, in a minute.
//!
//! It starts PostgreSQL from the installed server binaries ([`crate::ephemeral`]), creates
//! `users` and `orders` with data ([`fixture`]), starts `pgshift serve` in front of it (this
//! same binary, as a child process), and runs an "old app" through pgshift ([`workload`]).
//! Then it walks two migrations together — renaming `users.user_name` to `display_name`, and
//! moving `orders` to `orders_v2` — through expand, backfill, verify, switch, contract and
//! complete, driving pgshift only through its admin socket like `pgshift ctl`, and after each
//! step proves what changed with a query on a direct connection. A "new app" joins once
//! expand has begun; the old app is retired before complete. The run ends with the number of
//! failed transactions and of divergent rows (measured directly while both sides are
//! written), and succeeds only when both are zero. Everything is removed on exit, Ctrl-C
//! included; `--keep` leaves it running until Ctrl-C.

pub mod fixture;
pub mod workload;

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use tokio_postgres::{Client, NoTls};

use self::fixture::{DATABASE, MOVE, RENAME};
use self::workload::{App, Workload};
use crate::ctl;
use crate::ephemeral::{EphemeralOptions, EphemeralPostgres};

/// How `pgshift demo` runs.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// No prompts and no pauses for a reader; exit status 0 only for a clean run.
    pub unattended: bool,
    /// Leave PostgreSQL and pgshift running at the end, until Ctrl-C.
    pub keep: bool,
    /// Users in the sample database (twice as many orders).
    pub rows: u32,
}

/// How long the workload runs in each phase when nobody is reading along.
const UNATTENDED_DWELL: Duration = Duration::from_millis(1500);
/// Connections per application.
const CONNECTIONS: usize = 2;
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the demo; `Ok(true)` when it ended with zero failed transactions and zero divergent
/// rows.
pub fn run(options: Options) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        tokio::select! {
            result = demo(options) => result,
            _ = tokio::signal::ctrl_c() => {
                println!("\ninterrupted: stopping pgshift and PostgreSQL, removing their files");
                Ok(false)
            }
        }
    })
}

/// pgshift running as a child process; killed on drop.
struct Pgshift {
    child: Child,
    listen: String,
    metrics: String,
    socket: PathBuf,
    log: PathBuf,
}

impl Drop for Pgshift {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn demo(options: Options) -> anyhow::Result<bool> {
    let mut say = Narrator::new(options.unattended);
    say.title("pgshift demo: two zero-downtime schema changes on a live database");

    say.step("Starting a throw-away PostgreSQL from the installed server binaries");
    let pg = tokio::task::spawn_blocking(|| {
        EphemeralPostgres::start(EphemeralOptions {
            create_test_roles: false,
            ..EphemeralOptions::default()
        })
    })
    .await?
    .context("cannot start PostgreSQL")?;
    say.line(&format!(
        "PostgreSQL from {} on port {}",
        pg.bindir().display(),
        pg.port()
    ));
    let admin = connect(&pg.url("postgres")).await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
        .await
        .context("CREATE DATABASE")?;
    let direct = connect(&pg.url(DATABASE)).await?;
    direct
        .batch_execute(&fixture::schema(options.rows))
        .await
        .context("creating the sample schema")?;
    say.line(&format!(
        "database {DATABASE}: users ({} rows: id, user_name, email, created_at) and orders ({} \
         rows: id, user_id, total numeric, note, created_at)",
        options.rows,
        2 * options.rows
    ));

    let dir = tempfile::Builder::new().prefix("pgshift-demo-").tempdir()?;
    let pgshift = start_pgshift(dir.path(), &format!("127.0.0.1:{}", pg.port()))?;
    let through = format!(
        "postgresql://postgres@{}/{DATABASE}?application_name=demo",
        pgshift.listen
    );
    say.step("Starting pgshift in front of it, and the old application through pgshift");
    say.line(&format!(
        "pgshift listens on {} (admin socket {}); applications connect there instead of to \
         PostgreSQL, nothing else changes",
        pgshift.listen,
        pgshift.socket.display()
    ));
    let old_app = Workload::start(App::Old, &through, CONNECTIONS, options.rows)
        .await
        .map_err(anyhow::Error::msg)?;
    say.line(
        "old app: reads and writes users.user_name and orders.total (the only names it knows)",
    );
    say.dwell().await;
    let mut apps = vec![old_app];

    // expand
    say.step(
        "expand: both sides are written by every statement, reads still come from the old side",
    );
    for name in [RENAME, MOVE] {
        admin_ok(&pgshift.socket, &format!("phase {name} expand")).await?;
    }
    say.line("pgshift ran expand_sql (ADD COLUMN display_name; CREATE TABLE orders_v2)");
    let new_app = Workload::start(App::New, &through, CONNECTIONS, options.rows)
        .await
        .map_err(anyhow::Error::msg)?;
    apps.push(new_app);
    say.line("new app deployed: it uses users.display_name and orders_v2.total_cents, already now");
    say.dwell().await;
    say.query(
        &direct,
        "rows written since expand have both columns; older ones wait for the backfill",
        "(SELECT id, user_name, display_name FROM users ORDER BY id LIMIT 2) \
         UNION ALL (SELECT id, user_name, display_name FROM users ORDER BY id DESC LIMIT 2)",
    )
    .await?;
    say.query(
        &direct,
        "orders_v2 holds only the orders written since expand",
        "SELECT (SELECT count(*) FROM orders) AS orders, (SELECT count(*) FROM orders_v2) AS orders_v2",
    )
    .await?;

    // backfill
    say.step("backfill: existing rows are copied in key-ordered batches, under the live workload");
    for name in [RENAME, MOVE] {
        run_job(
            &pgshift.socket,
            ctl::Job::Backfill,
            name,
            &format!("backfill {name} start"),
        )
        .await?;
    }
    say.query(
        &direct,
        "every user has display_name now, and every order is in orders_v2",
        "SELECT (SELECT count(*) FROM users WHERE display_name IS NULL AND user_name IS NOT NULL) \
         AS users_missing, (SELECT count(*) FROM orders) AS orders, \
         (SELECT count(*) FROM orders_v2) AS orders_v2",
    )
    .await?;

    // verify
    say.step("verify: both sides are compared chunk by chunk (count and hash per key range)");
    for name in [RENAME, MOVE] {
        run_job(
            &pgshift.socket,
            ctl::Job::Verify,
            name,
            &format!("verify {name}"),
        )
        .await?;
    }

    // switch
    say.step("switch: reads come from the new side; both sides are still written, so rollback is one command");
    for name in [RENAME, MOVE] {
        admin_ok(&pgshift.socket, &format!("phase {name} switch")).await?;
    }
    say.dwell().await;
    let divergent = divergent_rows(&direct).await?;
    say.line(&format!(
        "checked directly while both applications write: {divergent} divergent rows"
    ));
    say.query(
        &direct,
        "the old app's user_name and the new app's display_name stay equal",
        "SELECT id, user_name, display_name FROM users ORDER BY id DESC LIMIT 3",
    )
    .await?;

    // contract
    say.step("contract: only the new side is written; the old app keeps working through pgshift");
    let divergent = divergent.max(divergent_rows(&direct).await?);
    for name in [RENAME, MOVE] {
        admin_ok(&pgshift.socket, &format!("phase {name} contract")).await?;
    }
    say.dwell().await;
    say.query(
        &direct,
        "new orders now land in orders_v2 only (the old table is left behind)",
        "SELECT (SELECT count(*) FROM orders) AS orders, (SELECT count(*) FROM orders_v2) AS orders_v2",
    )
    .await?;

    // retire the old app, complete
    say.step("complete: the old app is retired, then complete_sql drops the old column and table");
    let old = apps.remove(0);
    let old_counts = old.stop().await;
    let status = admin_ok(&pgshift.socket, "status").await?;
    for m in status["migrations"].as_array().into_iter().flatten() {
        say.line(&format!(
            "{}: {} statements used old names in the last 5 minutes (the old app has just \
             stopped; in production, wait until no statement uses them before complete)",
            m["name"].as_str().unwrap_or("?"),
            m["old_name_statements_5m"]
        ));
    }
    for name in [RENAME, MOVE] {
        admin_ok(&pgshift.socket, &format!("complete {name}")).await?;
    }
    say.dwell().await;
    say.query(
        &direct,
        "users has lost user_name, orders is gone; the new app never noticed",
        "SELECT string_agg(attname::text, ', ' ORDER BY attnum) AS users_columns, \
         to_regclass('public.orders') IS NULL AS orders_dropped \
         FROM pg_attribute WHERE attrelid = 'users'::regclass AND attnum > 0 AND NOT attisdropped",
    )
    .await?;

    // the figures
    let new = apps.remove(0);
    let new_counts = new.stop().await;
    let load = |c: &workload::Counts| {
        (
            c.committed.load(std::sync::atomic::Ordering::Relaxed),
            c.failed.load(std::sync::atomic::Ordering::Relaxed),
        )
    };
    let (old_ok, old_failed) = load(&old_counts);
    let (new_ok, new_failed) = load(&new_counts);
    let failed = old_failed + new_failed;
    say.step("Result");
    say.line(&format!(
        "old app: {old_ok} transactions committed, {old_failed} failed; new app: {new_ok} \
         committed, {new_failed} failed"
    ));
    for e in old_counts
        .errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .chain(
            new_counts
                .errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter(),
        )
    {
        say.line(&format!("  error: {e}"));
    }
    println!("\n{failed} failed transactions, {divergent} divergent rows");
    let clean = failed == 0 && divergent == 0 && old_ok > 0 && new_ok > 0;

    if options.keep {
        let metrics = &pgshift.metrics;
        println!(
            "\nStill running (Ctrl-C stops both and removes their files):\n  \
             direct:        {}\n  \
             through pgshift: postgresql://postgres@{}/{DATABASE}\n  \
             metrics:       http://{metrics}/metrics\n  \
             pgshift log:   {}\n\
             Try:\n  \
             pgshift ctl --socket {sock} status\n  \
             pgshift ctl --socket {sock} events\n  \
             pgshift ctl --socket {sock} connections\n  \
             psql 'postgresql://postgres@{}/{DATABASE}' -c 'SELECT id, display_name FROM users LIMIT 3'",
            pg.url(DATABASE),
            pgshift.listen,
            pgshift.log.display(),
            pgshift.listen,
            sock = pgshift.socket.display(),
        );
        tokio::signal::ctrl_c().await?;
    }
    drop(pgshift);
    drop(pg);
    Ok(clean)
}

fn start_pgshift(dir: &Path, upstream: &str) -> anyhow::Result<Pgshift> {
    let socket = dir.join("admin.sock");
    let config = dir.join("pgshift.toml");
    std::fs::write(
        &config,
        fixture::config(upstream, &socket.display().to_string()),
    )?;
    let log = dir.join("pgshift.log");
    let exe = std::env::current_exe().context("cannot find the pgshift executable")?;
    let mut child = Command::new(exe)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("cannot start pgshift serve")?;
    let stdout = child.stdout.take().context("pgshift's stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let mut pgshift = Pgshift {
        child,
        listen: String::new(),
        metrics: String::new(),
        socket,
        log,
    };
    let line = rx.recv_timeout(READY_TIMEOUT).unwrap_or_default();
    let ready: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
    if ready["event"] != "ready" {
        bail!(
            "pgshift did not start; its log ({}):\n{}",
            pgshift.log.display(),
            std::fs::read_to_string(&pgshift.log).unwrap_or_default()
        );
    }
    pgshift.listen = ready["listen"].as_str().unwrap_or_default().to_owned();
    pgshift.metrics = ready["metrics_listen"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    Ok(pgshift)
}

async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Sends `command` over the admin socket (as `pgshift ctl` does) and prints it like a shell
/// session; a refusal ends the demo.
async fn admin_ok(socket: &Path, command: &str) -> anyhow::Result<Value> {
    let reply = ctl::request(socket, command)
        .await
        .map_err(anyhow::Error::msg)?;
    if command != "status" {
        print!(
            "  $ pgshift ctl {command}\n  {}",
            ctl::render(command, &reply)
        );
    }
    if !ctl::is_ok(&reply) {
        bail!("pgshift refused `{command}`");
    }
    Ok(reply)
}

/// Starts a job and follows it like `pgshift ctl … --wait`.
async fn run_job(socket: &Path, job: ctl::Job, name: &str, command: &str) -> anyhow::Result<()> {
    println!("  $ pgshift ctl {command} --wait");
    let reply = ctl::request(socket, command)
        .await
        .map_err(anyhow::Error::msg)?;
    if !ctl::is_ok(&reply) {
        bail!(
            "pgshift refused `{command}`: {}",
            ctl::render(command, &reply)
        );
    }
    let key = if job == ctl::Job::Backfill {
        "backfill"
    } else {
        "verify"
    };
    let run = reply[key]["run"].as_str().unwrap_or_default().to_owned();
    let (record, ok) = ctl::wait(socket, job, name, &run)
        .await
        .map_err(anyhow::Error::msg)?;
    print!("  {}", ctl::render_outcome(job, name, &record));
    if !ok {
        bail!("the {key} of {name} did not succeed");
    }
    Ok(())
}

async fn divergent_rows(direct: &Client) -> anyhow::Result<i64> {
    let row = direct
        .query_one(fixture::DIVERGENT, &[])
        .await
        .context("comparing both sides")?;
    Ok(row.get::<_, i64>(0) + row.get::<_, i64>(1))
}

/// Prints the walk-through; pauses for a reader unless unattended.
struct Narrator {
    interactive: bool,
    steps: usize,
}

impl Narrator {
    fn new(unattended: bool) -> Narrator {
        Narrator {
            interactive: !unattended && std::io::stdin().is_terminal(),
            steps: 0,
        }
    }

    fn title(&mut self, text: &str) {
        println!("{text}\n{}", "=".repeat(text.chars().count()));
    }

    fn step(&mut self, text: &str) {
        self.steps += 1;
        println!("\n{}. {text}", self.steps);
    }

    fn line(&mut self, text: &str) {
        println!("  {text}");
    }

    /// Lets the workload run in the current phase: until Enter for a reader, briefly otherwise.
    async fn dwell(&mut self) {
        if self.interactive {
            print!("  [Enter to continue, Ctrl-C to stop] ");
            let _ = std::io::stdout().flush();
            let _ = tokio::task::spawn_blocking(|| {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)
            })
            .await;
        } else {
            tokio::time::sleep(UNATTENDED_DWELL).await;
        }
    }

    /// Runs `sql` on the direct connection and prints its rows as a table, under `caption`.
    async fn query(&mut self, direct: &Client, caption: &str, sql: &str) -> anyhow::Result<()> {
        let rows = direct
            .simple_query(sql)
            .await
            .with_context(|| format!("direct query {sql}"))?;
        let mut headers: Vec<String> = Vec::new();
        let mut cells: Vec<Vec<String>> = Vec::new();
        for message in rows {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
                if headers.is_empty() {
                    headers = row.columns().iter().map(|c| c.name().to_owned()).collect();
                }
                cells.push(
                    (0..row.len())
                        .map(|i| row.get(i).unwrap_or("NULL").to_owned())
                        .collect(),
                );
            }
        }
        println!("  {caption} (directly in PostgreSQL):");
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        for line in ctl::table(&headers, &cells).lines() {
            println!("    {line}");
        }
        Ok(())
    }
}
