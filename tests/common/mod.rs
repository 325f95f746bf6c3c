//! Shared harness for the integration tests: one PostgreSQL per test binary, a fresh database
//! per test, and the real `pgshift` binary started with a generated config.
//!
//! [`cluster`] starts an [`EphemeralPostgres`] once per test binary (or points at
//! `PGSHIFT_TEST_DATABASE_URL`); [`fresh_database`] gives each test its own database so tests run
//! in parallel; [`ProxyConfig`] writes a TOML config and [`Proxy`] runs `pgshift serve` on it,
//! waiting for its `{"event":"ready",…}` line on stdout. Clients: [`connect`] (tokio-postgres)
//! and [`psql`]; [`raw`] drives the protocol by hand. [`users`] is the `users` table under two
//! column migrations, for the migration tests; [`orders`] the `orders` → `orders_v2` table move;
//! [`items`] the column migration of the job tests; [`ctl`] checks `pgshift ctl` replies.

#![allow(dead_code, unused_imports)] // each test binary uses a different part of the harness

pub mod ctl;
pub mod db;
pub mod items;
pub mod orders;
pub mod proxy;
pub mod raw;
pub mod users;

pub use db::{count, physical_columns, wait_until_active};
pub use proxy::{Proxy, ProxyConfig, control_toml, http_get, toml_str, wait_until_refused};

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use pgshift::ephemeral::{EphemeralOptions, EphemeralPostgres, find_bindir, tool_path};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::{Client, NoTls};

pub use raw::{BackendMessage, RawConn, frontend};

/// How long the proxy may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The PostgreSQL server the tests run against.
pub struct Cluster {
    /// `Some` when the harness started (and owns) the server.
    managed: Option<EphemeralPostgres>,
    host: String,
    port: u16,
    superuser: String,
    password: Option<String>,
}

impl Cluster {
    fn from_env() -> Self {
        if let Ok(url) = std::env::var("PGSHIFT_TEST_DATABASE_URL") {
            return Self::external(&url);
        }
        // Two-phase commit on, for the tests of prepared transactions.
        let options = EphemeralOptions::default().setting("max_prepared_transactions", "10");
        let pg = EphemeralPostgres::start(options)
            .unwrap_or_else(|e| panic!("starting the test PostgreSQL failed: {e}"));
        Self {
            host: pg.host().to_string(),
            port: pg.port(),
            superuser: pg.superuser().to_string(),
            password: None,
            managed: Some(pg),
        }
    }

    fn external(url: &str) -> Self {
        let config: tokio_postgres::Config = url
            .parse()
            .unwrap_or_else(|e| panic!("PGSHIFT_TEST_DATABASE_URL is not a valid URL: {e}"));
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            _ => panic!("PGSHIFT_TEST_DATABASE_URL must name a TCP host"),
        };
        Self {
            managed: None,
            host,
            port: config.get_ports().first().copied().unwrap_or(5432),
            superuser: config.get_user().unwrap_or("postgres").to_string(),
            password: config
                .get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
        }
    }

    /// The harness-started server, or `None` for an external one (whose `pg_hba.conf` and roles
    /// are unknown; tests relying on them skip).
    pub fn managed(&self) -> Option<&EphemeralPostgres> {
        self.managed.as_ref()
    }

    /// `host:port` of the server, as the proxy's `upstream`.
    pub fn upstream(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn superuser(&self) -> &str {
        &self.superuser
    }

    pub fn superuser_password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// A direct superuser URL for `db`.
    pub fn url(&self, db: &str) -> String {
        pg_url(
            &self.host,
            self.port,
            &self.superuser,
            self.password.as_deref(),
            db,
        )
    }
}

/// The shared server of this test binary, started on first use.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(Cluster::from_env)
}

/// Prints why a test is skipped when the server is external; returns whether to skip.
pub fn skip_unless_managed(why: &str) -> bool {
    if cluster().managed().is_some() {
        return false;
    }
    println!("skipped: {why} (PGSHIFT_TEST_DATABASE_URL points at an external server)");
    true
}

/// `postgres://user[:password]@host:port/db`.
pub fn pg_url(host: &str, port: u16, user: &str, password: Option<&str>, db: &str) -> String {
    match password {
        Some(pw) => format!("postgres://{user}:{pw}@{host}:{port}/{db}"),
        None => format!("postgres://{user}@{host}:{port}/{db}"),
    }
}

/// A database created for one test.
pub struct TestDb {
    pub name: String,
    /// Direct superuser URL.
    pub url: String,
}

impl TestDb {
    /// A direct superuser connection.
    pub async fn connect(&self) -> Client {
        connect(&self.url).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // The managed cluster is deleted as a whole; only clean up an external server.
        if cluster().managed().is_none() {
            let _ = std::process::Command::new(psql_path())
                .args(["-X", "-q", "-d", &cluster().url("postgres"), "-c"])
                .arg(format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    self.name
                ))
                .output();
        }
    }
}

/// Creates a uniquely named database (`t_<hint>_<pid>_<n>`) on the shared cluster.
pub async fn fresh_database(hint: &str) -> TestDb {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let hint: String = hint
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(30)
        .collect();
    let name = format!(
        "t_{hint}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let admin = connect(&cluster().url("postgres")).await;
    admin
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {}", describe_error(&e)));
    TestDb {
        url: cluster().url(&name),
        name,
    }
}

/// A fresh database (see [`fresh_database`]) set up by running `schema` directly, with the
/// direct superuser connection that ran it.
pub async fn fresh_database_with(hint: &str, schema: &str) -> (TestDb, Client) {
    let db = fresh_database(hint).await;
    let direct = db.connect().await;
    direct
        .batch_execute(schema)
        .await
        .unwrap_or_else(|e| panic!("schema of {}: {}", db.name, describe_error(&e)));
    (db, direct)
}

/// Connects with tokio-postgres (no TLS) and drives the connection on a spawned task.
pub async fn connect(url: &str) -> Client {
    try_connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {}", describe_error(&e)))
}

/// Like [`connect`], returning the error instead of panicking.
pub async fn try_connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The SQLSTATE of a server error, if the error is one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.as_db_error().map(|db| db.code().code().to_string())
}

/// An error with its server fields spelled out, for assertion messages.
pub fn describe_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => format!("{e} ({e:?})"),
    }
}

/// `psql` from the server's bindir, else `/usr/bin/psql`.
pub fn psql_path() -> PathBuf {
    tool("psql")
}

/// A PostgreSQL client tool (`psql`, `pgbench`) from the server's bindir, else `/usr/bin`.
pub fn tool(name: &str) -> PathBuf {
    let bindir = match cluster().managed() {
        Some(pg) => pg.bindir().to_path_buf(),
        None => find_bindir().unwrap_or_else(|_| PathBuf::from("/usr/bin")),
    };
    tool_path(&bindir, name)
}

/// Runs `psql -X -d URL ARGS…`, feeding `stdin` if given. Never reads a psqlrc or a password file.
pub async fn psql(url: &str, args: &[&str], stdin: Option<&str>) -> Output {
    run_client(psql_command(url, args), stdin).await
}

/// `psql -X -d CONNINFO ARGS…`, to add environment variables before [`run_client`].
/// `conninfo` is a URL or a `key=value` string.
pub fn psql_command(conninfo: &str, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(psql_path());
    cmd.arg("-X").arg("-d").arg(conninfo).args(args);
    cmd
}

/// A clean libpq environment for a client tool: no inherited `PG*` variables (those set on
/// `cmd` are kept), no password file and a connect timeout unless set, the C locale.
pub fn client_env(cmd: &mut tokio::process::Command) {
    let explicit: Vec<std::ffi::OsString> =
        cmd.as_std().get_envs().map(|(k, _)| k.to_owned()).collect();
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") && !explicit.contains(&key) {
            cmd.env_remove(key);
        }
    }
    for (key, value) in [("PGPASSFILE", "/dev/null"), ("PGCONNECT_TIMEOUT", "10")] {
        if !explicit.iter().any(|k| k == key) {
            cmd.env(key, value);
        }
    }
    cmd.env("LC_ALL", "C");
}

/// Runs a client tool to completion with a clean libpq environment (no inherited `PG*`
/// variables, no password file; variables set on `cmd` are kept) and a 120 s safety timeout.
pub async fn run_client(mut cmd: tokio::process::Command, stdin: Option<&str>) -> Output {
    client_env(&mut cmd);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let description = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {description}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        let input = input.to_string();
        tokio::spawn(async move {
            let _ = pipe.write_all(input.as_bytes()).await;
        });
    }
    tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{description} did not finish within 120 s"))
        .unwrap_or_else(|e| panic!("{description}: {e}"))
}

/// Polls `probe` every 20 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
