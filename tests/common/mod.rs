//! Shared harness for the integration tests: one PostgreSQL per test binary, a fresh database
//! per test, and the real `pgshift` binary started with a generated config.
//!
//! [`cluster`] starts an [`EphemeralPostgres`] once per test binary (or points at
//! `PGSHIFT_TEST_DATABASE_URL`); [`fresh_database`] gives each test its own database so tests run
//! in parallel; [`ProxyConfig`] writes a TOML config and [`Proxy`] runs `pgshift serve` on it,
//! waiting for its `{"event":"ready",…}` line on stdout. Clients: [`connect`] (tokio-postgres)
//! and [`psql`]; [`raw`] drives the protocol by hand. [`users`] is the `users` table under two
//! column migrations, for the migration tests.

#![allow(dead_code, unused_imports)] // each test binary uses a different part of the harness

pub mod orders;
pub mod raw;
pub mod users;

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
        let pg = EphemeralPostgres::start(EphemeralOptions::default())
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

/// The proxy's config file, built key by key. Values are written as given where the type is raw
/// TOML (`proxy_key`, `extra`).
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    upstream: String,
    superuser: String,
    superuser_password: Option<String>,
    max_client_connections: u32,
    startup_timeout: String,
    shutdown_grace: String,
    tls: Option<(PathBuf, PathBuf)>,
    upstream_tls: Option<String>,
    max_message_size: Option<u64>,
    proxy_keys: Vec<(String, String)>,
    admin_socket: Option<PathBuf>,
    extra: String,
}

impl ProxyConfig {
    /// A config proxying to `cluster`, with the harness defaults.
    pub fn new(cluster: &Cluster) -> Self {
        Self {
            upstream: cluster.upstream(),
            superuser: cluster.superuser().to_string(),
            superuser_password: cluster.superuser_password().map(str::to_string),
            max_client_connections: 100,
            startup_timeout: "10s".into(),
            shutdown_grace: "5s".into(),
            tls: None,
            upstream_tls: None,
            max_message_size: None,
            proxy_keys: Vec::new(),
            admin_socket: None,
            extra: String::new(),
        }
    }

    /// Proxies to another server on 127.0.0.1 (e.g. a dedicated [`EphemeralPostgres`]).
    pub fn upstream_port(mut self, port: u16) -> Self {
        self.upstream = format!("127.0.0.1:{port}");
        self
    }

    pub fn max_client_connections(mut self, n: u32) -> Self {
        self.max_client_connections = n;
        self
    }

    /// A humantime duration such as `"5s"`.
    pub fn shutdown_grace(mut self, grace: &str) -> Self {
        self.shutdown_grace = grace.into();
        self
    }

    pub fn startup_timeout(mut self, timeout: &str) -> Self {
        self.startup_timeout = timeout.into();
        self
    }

    /// Client-side TLS with these PEM files.
    pub fn tls(mut self, cert: &Path, key: &Path) -> Self {
        self.tls = Some((cert.to_path_buf(), key.to_path_buf()));
        self
    }

    /// `disable`, `prefer` or `require`.
    /// Proxies to PostgreSQL's Unix socket in `dir` (libpq's `host=/dir port=N` form).
    pub fn upstream_unix(mut self, dir: &Path, port: u16) -> Self {
        self.upstream = format!("{}:{port}", dir.display());
        self
    }

    pub fn upstream_tls(mut self, mode: &str) -> Self {
        self.upstream_tls = Some(mode.into());
        self
    }

    pub fn max_message_size(mut self, bytes: u64) -> Self {
        self.max_message_size = Some(bytes);
        self
    }

    /// Another `[proxy]` key with a raw TOML value, e.g. `("idle_timeout", "\"1s\"")`.
    pub fn proxy_key(mut self, key: &str, raw_value: &str) -> Self {
        self.proxy_keys.push((key.into(), raw_value.into()));
        self
    }

    /// Raw TOML appended after the `[admin]` table (further tables).
    pub fn extra(mut self, raw_toml: &str) -> Self {
        self.extra.push_str(raw_toml);
        self.extra.push('\n');
        self
    }

    /// The config file's text.
    pub fn to_toml(&self) -> String {
        let mut proxy = vec![
            ("listen".to_string(), toml_str("127.0.0.1:0")),
            ("upstream".to_string(), toml_str(&self.upstream)),
            (
                "max_client_connections".to_string(),
                self.max_client_connections.to_string(),
            ),
            (
                "startup_timeout".to_string(),
                toml_str(&self.startup_timeout),
            ),
            ("shutdown_grace".to_string(), toml_str(&self.shutdown_grace)),
        ];
        if let Some((cert, key)) = &self.tls {
            proxy.push(("tls_cert".into(), toml_str(&cert.display().to_string())));
            proxy.push(("tls_key".into(), toml_str(&key.display().to_string())));
        }
        if let Some(mode) = &self.upstream_tls {
            proxy.push(("upstream_tls".into(), toml_str(mode)));
        }
        if let Some(bytes) = self.max_message_size {
            proxy.push(("max_message_size".into(), bytes.to_string()));
        }
        proxy.extend(self.proxy_keys.iter().cloned());
        let mut text = String::from("[proxy]\n");
        for (key, value) in proxy {
            text.push_str(&format!("{key} = {value}\n"));
        }
        text.push_str("\n[admin]\nmetrics_listen = \"127.0.0.1:0\"\n");
        if let Some(socket) = &self.admin_socket {
            text.push_str(&format!(
                "socket = {}\n",
                toml_str(&socket.display().to_string())
            ));
        }
        text.push('\n');
        text.push_str(&self.extra);
        text
    }

    /// Starts `pgshift serve` with this config and waits for it to be ready.
    pub fn spawn(self) -> Proxy {
        Proxy::spawn(self)
    }
}

/// A TOML basic string.
pub fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A running `pgshift serve` process; killed on drop.
pub struct Proxy {
    child: Mutex<Child>,
    pid: u32,
    listen: SocketAddr,
    metrics_listen: SocketAddr,
    superuser: String,
    superuser_password: Option<String>,
    /// The config it was started with (with its admin socket), for reloads.
    config: ProxyConfig,
    /// Holds the config file and the log.
    dir: tempfile::TempDir,
}

impl Proxy {
    /// A proxy to the shared cluster with the default config.
    pub fn start() -> Self {
        ProxyConfig::new(cluster()).spawn()
    }

    fn spawn(mut config: ProxyConfig) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for the proxy");
        // Parallel proxies must not share the default admin socket path.
        config
            .admin_socket
            .get_or_insert_with(|| dir.path().join("admin.sock"));
        let config_path = dir.path().join("pgshift.toml");
        std::fs::write(&config_path, config.to_toml()).expect("write proxy config");
        let log_path = dir.path().join("pgshift.log");
        let log = std::fs::File::create(&log_path).expect("create proxy log");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pgshift"))
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn pgshift serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let ready = read_first_line(stdout);
        let line = match ready.recv_timeout(READY_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                panic!(
                    "pgshift did not print its ready line within {READY_TIMEOUT:?} \
                     (exit: {status:?})\nconfig:\n{}\nlog:\n{}",
                    config.to_toml(),
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
        };
        let (listen, metrics_listen) = parse_ready_line(&line);
        Self {
            pid: child.id(),
            child: Mutex::new(child),
            listen,
            metrics_listen,
            superuser: config.superuser.clone(),
            superuser_password: config.superuser_password.clone(),
            config,
            dir,
        }
    }

    /// The config the proxy was started with.
    pub fn config(&self) -> ProxyConfig {
        self.config.clone()
    }

    /// Writes `config` over the proxy's config file and has it reloaded (`pgshift ctl
    /// reload`, which answers once the reload is done); panics when the reload fails.
    pub async fn reload(&self, config: &ProxyConfig) {
        self.write_config(config);
        let reply = self.ctl(&["reload"]).await;
        assert_eq!(
            reply["ok"],
            true,
            "reload failed: {reply}\nlog:\n{}",
            self.log()
        );
    }

    /// Writes `config` (with this proxy's admin socket) over the proxy's config file, in
    /// place; reloading is up to the caller (or the file watch).
    pub fn write_config(&self, config: &ProxyConfig) {
        let mut config = config.clone();
        config.admin_socket = self.config.admin_socket.clone();
        std::fs::write(self.config_path(), config.to_toml()).expect("rewrite proxy config");
    }

    /// The proxy's config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("pgshift.toml")
    }

    /// The proxy's admin socket.
    pub fn admin_socket(&self) -> PathBuf {
        self.config
            .admin_socket
            .clone()
            .expect("spawn sets the admin socket")
    }

    /// Runs `pgshift ctl --json ARGS…` against this proxy and returns the parsed reply.
    pub async fn ctl(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ctl_output(&["--json"], args).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let reply: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "pgshift ctl {args:?} printed no JSON ({e}): {stdout}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert_eq!(
            out.status.success(),
            reply["ok"] == true,
            "the exit status follows \"ok\": {reply}"
        );
        reply
    }

    /// Runs `pgshift ctl --socket … FLAGS… ARGS…` and returns its output.
    pub async fn ctl_output(&self, flags: &[&str], args: &[&str]) -> Output {
        let socket = self.admin_socket();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgshift"));
        cmd.arg("ctl")
            .arg("--socket")
            .arg(&socket)
            .args(flags)
            .args(args);
        tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .expect("pgshift ctl answered within 60 s")
            .expect("run pgshift ctl")
    }

    /// The phase of `migration` as `ctl status` reports it.
    pub async fn phase(&self, migration: &str) -> String {
        let status = self.ctl(&["status"]).await;
        status["migrations"]
            .as_array()
            .and_then(|all| all.iter().find(|m| m["name"] == migration))
            .and_then(|m| m["phase"].as_str())
            .unwrap_or_else(|| panic!("no migration {migration} in {status}"))
            .to_owned()
    }

    /// Moves `migration` to `target` one step at a time with `ctl phase … force` (tests
    /// stand in for the backfill and verify jobs themselves).
    pub async fn set_phase(&self, migration: &str, target: &str) {
        const ORDER: [&str; 5] = ["planned", "expand", "switch", "contract", "complete"];
        let index = |p: &str| ORDER.iter().position(|o| *o == p).expect("a phase name");
        loop {
            let current = self.phase(migration).await;
            let (from, to) = (index(&current), index(target));
            if from == to {
                return;
            }
            let step = if to > from {
                ORDER[from + 1]
            } else {
                ORDER[from - 1]
            };
            let reply = self.ctl(&["phase", migration, step, "force"]).await;
            assert_eq!(
                reply["ok"],
                true,
                "phase {migration} {step}: {reply}\nlog:\n{}",
                self.log()
            );
        }
    }

    /// The `pgshift_epoch` gauge.
    pub async fn epoch(&self) -> u64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|l| l.strip_prefix("pgshift_epoch "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }

    /// The client listener.
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    pub fn port(&self) -> u16 {
        self.listen.port()
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_listen
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A URL through the proxy; the cluster's superuser gets its password (if any) added.
    pub fn url(&self, db: &str, user: &str) -> String {
        let password = if user == self.superuser {
            self.superuser_password.as_deref()
        } else {
            None
        };
        pg_url("127.0.0.1", self.port(), user, password, db)
    }

    /// A superuser URL for `db` through the proxy.
    pub fn db_url(&self, db: &TestDb) -> String {
        self.url(&db.name, &self.superuser)
    }

    /// The proxy's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgshift.log")).unwrap_or_default()
    }

    /// Sends SIGTERM (graceful shutdown).
    pub fn sigterm(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid);
    }

    /// Kills the process with SIGKILL (no graceful anything) and waits for it to be gone.
    pub fn kill(&self) {
        let mut child = self.child.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The exit status if the process is gone.
    pub fn try_exit(&self) -> Option<ExitStatus> {
        self.child
            .lock()
            .unwrap()
            .try_wait()
            .expect("try_wait pgshift")
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET /metrics` body.
    pub async fn metrics_text(&self) -> String {
        let (status, body) = self.http_get("/metrics").await;
        assert_eq!(status, 200, "GET /metrics answered {status}: {body}");
        body
    }

    /// A plain HTTP/1.1 GET against the metrics listener: `(status code, body)`.
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.metrics_listen, path).await
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Ok(mut child) = self.child.lock() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- pgshift log ---\n{}", self.log());
        }
    }
}

/// Sends the first stdout line over a channel, then keeps draining stdout so the proxy never
/// blocks on a full pipe.
fn read_first_line(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    rx
}

fn parse_ready_line(line: &str) -> (SocketAddr, SocketAddr) {
    let value: serde_json::Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("pgshift's first stdout line is not JSON ({e}): {line:?}"));
    assert_eq!(value["event"], "ready", "unexpected first line: {line}");
    let addr = |key: &str| -> SocketAddr {
        value[key]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("ready line lacks a socket address `{key}`: {line}"))
    };
    (addr("listen"), addr("metrics_listen"))
}

/// A minimal HTTP/1.1 GET (`Connection: close`, read to EOF): `(status code, body)`.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let response = tokio::time::timeout(Duration::from_secs(10), async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        std::io::Result::Ok(response)
    })
    .await
    .unwrap_or_else(|_| panic!("GET {path} on {addr} timed out"))
    .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"));
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("malformed HTTP response: {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status code in {head:?}"));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

/// Decodes a `Transfer-Encoding: chunked` body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}
