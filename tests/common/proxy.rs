//! A pgshift under test: [`ProxyConfig`] writes its TOML config, [`Proxy`] runs `pgshift
//! serve` on it (waiting for the `{"event":"ready",…}` line), drives `pgshift ctl`, signals
//! and reloads; [`http_get`] reads its metrics endpoint.

use super::*;

/// Waits (up to 5 s) until a new connection to `url` fails, as it does once a proxy has
/// handled SIGTERM.
pub async fn wait_until_refused(url: &str) {
    eventually(
        Duration::from_secs(5),
        "new connections to be refused",
        || async move { try_connect(url).await.is_err().then_some(()) },
    )
    .await;
}

/// `[control]` with the cluster's superuser (and its password, if any): the control
/// connections of a proxy whose config declares migrations.
pub fn control_toml() -> String {
    let password = cluster()
        .superuser_password()
        .map(|p| format!("password = {}\n", toml_str(p)))
        .unwrap_or_default();
    format!(
        "\n[control]\nuser = {}\n{password}",
        toml_str(cluster().superuser())
    )
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
pub fn read_first_line(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
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
