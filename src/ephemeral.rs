//! A throw-away PostgreSQL cluster started from the installed server binaries.
//!
//! Used by the integration tests (one cluster per test binary) and by `pgshift demo`.
//!
//! Flow: [`find_bindir`] locates `initdb`/`postgres` → a fresh base directory under the system
//! temp dir holds `data/` (the cluster), the Unix socket and `server.log` → `initdb` (trust auth)
//! → a `pg_hba.conf` that forces password methods for the three test roles → `postgres` on a free
//! 127.0.0.1 port → wait until it answers → create the test roles.
//!
//! Cleanup must also happen when the owning process exits without running destructors (a value in
//! a `static` is never dropped). So every cluster has a *janitor*: a tiny `sh` script whose stdin
//! is a pipe held by this process. It blocks in `read`; when the pipe closes (drop, or the process
//! dies for any reason) it stops the postmaster named in `postmaster.pid` (SIGINT, fast shutdown)
//! and removes the base directory. The postmaster itself is a plain child, so [`stop`] and
//! [`start_again`] can restart it on the same port and data directory.
//!
//! When running as root (initdb refuses root) every server-side program runs as the `postgres` OS
//! user and the base directory is chowned to it.
//!
//! [`stop`]: EphemeralPostgres::stop
//! [`start_again`]: EphemeralPostgres::start_again

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The superuser created by `initdb`.
pub const SUPERUSER: &str = "postgres";
/// The only address the server listens on.
pub const HOST: &str = "127.0.0.1";

/// Login roles created after start, with the password and the `pg_hba.conf` method forced for
/// them over TCP: `(role, password, method)`.
pub const TEST_ROLES: [(&str, &str, &str); 3] = [
    ("pgshift_scram", "scram-secret", "scram-sha-256"),
    ("pgshift_md5", "md5-secret", "md5"),
    ("pgshift_password", "clear-secret", "password"),
];

const HBA_CONF: &str = "\
local all all trust
host all pgshift_scram 127.0.0.1/32 scram-sha-256
host all pgshift_md5 127.0.0.1/32 md5
host all pgshift_password 127.0.0.1/32 password
host all all 127.0.0.1/32 trust
host all all ::1/128 trust
";

/// Stops the postmaster and removes the base directory once stdin reaches EOF. Runs as the same
/// OS user as the server. Arguments: `$1` base dir, `$2` data dir.
const JANITOR_SCRIPT: &str = r#"
trap '' INT HUP
while read -r _; do :; done
if [ -f "$2/postmaster.pid" ]; then
  pid=$(head -n 1 "$2/postmaster.pid")
  if [ -n "$pid" ] && kill -INT "$pid" 2>/dev/null; then
    i=0
    while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    kill -KILL "$pid" 2>/dev/null
  fi
fi
rm -rf "$1"
"#;

/// How many times a start is retried on a new port when the chosen one was taken meanwhile.
const PORT_ATTEMPTS: usize = 5;

/// Errors while starting or controlling an ephemeral cluster.
#[derive(Debug, thiserror::Error)]
pub enum EphemeralError {
    /// No usable PostgreSQL server binaries.
    #[error(
        "no PostgreSQL server binaries found (looked in: {searched}); install the PostgreSQL \
         server package (Debian/Ubuntu: `apt-get install postgresql`; Fedora/RHEL: `dnf install \
         postgresql-server`; Arch: `pacman -S postgresql`; macOS: `brew install postgresql@15`) \
         or set PGSHIFT_TEST_PG_BINDIR to the directory holding `initdb` and `postgres`"
    )]
    NoBinaries { searched: String },
    /// An I/O error with what was being done.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A helper program exited unsuccessfully.
    #[error("`{command}` failed ({status}):\n{output}")]
    Command {
        command: String,
        status: ExitStatus,
        output: String,
    },
    /// The server did not accept connections in time, or exited.
    #[error(
        "PostgreSQL on port {port} did not become ready: {reason}\n--- server.log (tail) ---\n{log_tail}"
    )]
    NotReady {
        port: u16,
        reason: String,
        log_tail: String,
    },
    /// The operating-system user to run the server as could not be determined.
    #[error("cannot run PostgreSQL as root and could not look up the `postgres` OS user: {0}")]
    NoServerUser(String),
}

/// Options for [`EphemeralPostgres::start`].
#[derive(Debug, Clone)]
pub struct EphemeralOptions {
    /// `max_connections` of the server.
    pub max_connections: u32,
    /// Extra `-c name=value` settings.
    pub settings: Vec<(String, String)>,
    /// Create the [`TEST_ROLES`] after start.
    pub create_test_roles: bool,
    /// How long to wait for the server to accept connections.
    pub startup_timeout: Duration,
}

impl Default for EphemeralOptions {
    fn default() -> Self {
        Self {
            max_connections: 200,
            settings: Vec::new(),
            create_test_roles: true,
            startup_timeout: Duration::from_secs(60),
        }
    }
}

impl EphemeralOptions {
    /// Adds a `-c name=value` server setting.
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }
}

/// The OS user the server-side programs run as (only set when we are root).
#[derive(Debug, Clone, Copy)]
struct ServerUser {
    uid: u32,
    gid: u32,
}

/// A running throw-away PostgreSQL cluster; stopped and deleted on drop.
#[derive(Debug)]
pub struct EphemeralPostgres {
    bindir: PathBuf,
    base: PathBuf,
    data: PathBuf,
    port: u16,
    opts: EphemeralOptions,
    run_as: Option<ServerUser>,
    postmaster: Option<Child>,
    /// Dropping this closes the janitor's stdin, which makes it clean up.
    janitor_stdin: Option<ChildStdin>,
    janitor: Option<Child>,
}

impl EphemeralPostgres {
    /// Creates, starts and prepares a cluster. Blocking.
    pub fn start(opts: EphemeralOptions) -> Result<Self, EphemeralError> {
        let bindir = find_bindir()?;
        let run_as = server_user()?;
        let base = create_base_dir()?;
        let data = base.join("data");
        let mut pg = Self {
            bindir,
            base,
            data,
            port: 0,
            opts,
            run_as,
            postmaster: None,
            janitor_stdin: None,
            janitor: None,
        };
        if let Some(user) = run_as {
            run_checked(
                Command::new("chown")
                    .arg(format!("{}:{}", user.uid, user.gid))
                    .arg(&pg.base),
            )?;
        }
        pg.spawn_janitor()?;
        pg.initdb()?;
        pg.start_on_free_port()?;
        if pg.opts.create_test_roles {
            pg.create_test_roles()?;
        }
        tracing::debug!(port = pg.port, dir = %pg.base.display(), "ephemeral PostgreSQL ready");
        Ok(pg)
    }

    /// The TCP port the server listens on (on [`HOST`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address the server listens on: always `127.0.0.1`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The directory of the server's Unix socket (`.s.PGSQL.<port>`), trusted like TCP.
    pub fn socket_dir(&self) -> &Path {
        &self.base
    }

    /// The superuser (trust auth): `postgres`.
    pub fn superuser(&self) -> &str {
        SUPERUSER
    }

    /// `postgres://postgres@127.0.0.1:PORT/db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{SUPERUSER}@{HOST}:{}/{db}", self.port)
    }

    /// The directory holding the server binaries in use.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The server's log file (its stderr).
    pub fn log_path(&self) -> PathBuf {
        self.base.join("server.log")
    }

    /// The last lines of the server log, for error messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log_path(), 40)
    }

    /// Whether the postmaster process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(
            self.postmaster.as_mut().map(Child::try_wait),
            Some(Ok(None))
        )
    }

    /// Runs SQL as the superuser with `psql -X -v ON_ERROR_STOP=1` and returns its output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<Output, EphemeralError> {
        let mut cmd = Command::new(psql_path(&self.bindir));
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.url(db))
            .args(["-c", sql]);
        run_checked(&mut cmd)
    }

    /// Stops the server (fast shutdown) and waits for it; the data directory is kept so
    /// [`start_again`](Self::start_again) can bring it back on the same port.
    pub fn stop(&mut self) {
        let Some(mut child) = self.postmaster.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            // SIGINT = fast shutdown: abort transactions, disconnect clients, checkpoint.
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let _ = child.wait();
    }

    /// Starts the stopped server again on the same port and data directory.
    pub fn start_again(&mut self) -> Result<(), EphemeralError> {
        self.stop();
        self.spawn_postmaster()?;
        self.wait_ready()
    }

    fn spawn_janitor(&mut self) -> Result<(), EphemeralError> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(JANITOR_SCRIPT)
            .arg("pgshift-ephemeral-janitor")
            .arg(&self.base)
            .arg(&self.data)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.server_side(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| io_err("spawn janitor `sh`", e))?;
        self.janitor_stdin = child.stdin.take();
        self.janitor = Some(child);
        Ok(())
    }

    fn initdb(&self) -> Result<(), EphemeralError> {
        let mut cmd = Command::new(self.bindir.join("initdb"));
        cmd.arg("-D").arg(&self.data).args([
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ]);
        self.server_side(&mut cmd);
        run_checked(&mut cmd)?;
        let hba = self.data.join("pg_hba.conf");
        std::fs::write(&hba, HBA_CONF).map_err(|e| io_err(&format!("write {}", hba.display()), e))
    }

    fn start_on_free_port(&mut self) -> Result<(), EphemeralError> {
        let mut last_err = None;
        for _ in 0..PORT_ATTEMPTS {
            self.port = free_port()?;
            self.spawn_postmaster()?;
            match self.wait_ready() {
                Ok(()) => return Ok(()),
                // Someone took the port between our probe and the server's bind: try another.
                Err(e) if self.log_tail().contains("could not bind") => {
                    self.stop();
                    last_err = Some(e);
                }
                Err(e) => {
                    self.stop();
                    return Err(e);
                }
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    fn spawn_postmaster(&mut self) -> Result<(), EphemeralError> {
        let log_path = self.log_path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| io_err(&format!("open {}", log_path.display()), e))?;
        let log_err = log.try_clone().map_err(|e| io_err("clone log handle", e))?;
        let mut cmd = Command::new(self.bindir.join("postgres"));
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-p")
            .arg(self.port.to_string());
        let mut settings = vec![
            ("listen_addresses".to_string(), HOST.to_string()),
            (
                "unix_socket_directories".to_string(),
                self.base.display().to_string(),
            ),
            ("fsync".to_string(), "off".to_string()),
            ("synchronous_commit".to_string(), "off".to_string()),
            ("full_page_writes".to_string(), "off".to_string()),
            ("logging_collector".to_string(), "off".to_string()),
            (
                "max_connections".to_string(),
                self.opts.max_connections.to_string(),
            ),
        ];
        settings.extend(self.opts.settings.iter().cloned());
        for (name, value) in settings {
            cmd.arg("-c").arg(format!("{name}={value}"));
        }
        cmd.stdin(Stdio::null()).stdout(log).stderr(log_err);
        self.server_side(&mut cmd);
        let child = cmd.spawn().map_err(|e| io_err("spawn postgres", e))?;
        self.postmaster = Some(child);
        Ok(())
    }

    /// Polls until a TCP connect and `pg_isready` succeed, the server exits, or the timeout.
    fn wait_ready(&mut self) -> Result<(), EphemeralError> {
        let deadline = Instant::now() + self.opts.startup_timeout;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let isready = tool_path(&self.bindir, "pg_isready");
        loop {
            if let Some(Ok(Some(status))) = self.postmaster.as_mut().map(Child::try_wait) {
                return Err(self.not_ready(format!("the server exited ({status})")));
            }
            let accepting = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                && Command::new(&isready)
                    .args([
                        "-q",
                        "-h",
                        HOST,
                        "-p",
                        &self.port.to_string(),
                        "-U",
                        SUPERUSER,
                    ])
                    .args(["-d", "postgres"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
            if accepting {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.not_ready(format!(
                    "not accepting connections after {:?}",
                    self.opts.startup_timeout
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn not_ready(&self, reason: String) -> EphemeralError {
        EphemeralError::NotReady {
            port: self.port,
            reason,
            log_tail: self.log_tail(),
        }
    }

    fn create_test_roles(&self) -> Result<(), EphemeralError> {
        let mut sql = String::new();
        for (role, password, method) in TEST_ROLES {
            // The stored verifier must match the method: md5 auth needs an MD5 hash; `password`
            // (cleartext) works against a SCRAM verifier.
            let encryption = if method == "md5" {
                "md5"
            } else {
                "scram-sha-256"
            };
            sql.push_str(&format!(
                "SET password_encryption = '{encryption}';\n\
                 CREATE ROLE {role} LOGIN PASSWORD '{password}';\n"
            ));
        }
        self.psql("postgres", &sql).map(drop)
    }

    /// Makes `cmd` run as the server's OS user, in the base directory, in its own process group
    /// (so a terminal's Ctrl-C reaches only us; the janitor then cleans up).
    fn server_side(&self, cmd: &mut Command) {
        cmd.current_dir(&self.base).process_group(0);
        if let Some(user) = self.run_as {
            cmd.uid(user.uid).gid(user.gid);
        }
    }
}

impl Drop for EphemeralPostgres {
    fn drop(&mut self) {
        self.stop();
        // EOF on the janitor's stdin: it removes the base directory.
        drop(self.janitor_stdin.take());
        if let Some(mut janitor) = self.janitor.take() {
            let _ = janitor.wait();
        }
    }
}

/// Finds the directory with `initdb` and `postgres`: `PGSHIFT_TEST_PG_BINDIR`, else
/// `pg_config --bindir`, else the highest `/usr/lib/postgresql/*/bin` (Debian), else the first
/// `PATH` directory holding both (Fedora, Arch and Homebrew install them there).
pub fn find_bindir() -> Result<PathBuf, EphemeralError> {
    let mut searched = Vec::new();
    if let Some(dir) = std::env::var_os("PGSHIFT_TEST_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        if has_server_binaries(&dir) {
            return Ok(dir);
        }
        searched.push(format!("PGSHIFT_TEST_PG_BINDIR={}", dir.display()));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_server_binaries(&dir) {
            return Ok(dir);
        }
        searched.push(format!("pg_config --bindir ({})", dir.display()));
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            Some((parse_version(&name)?, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_server_binaries(dir))
        .collect();
    versions.sort();
    searched.push("/usr/lib/postgresql/*/bin".to_string());
    if let Some((_, dir)) = versions.pop() {
        return Ok(dir);
    }
    searched.push("PATH".to_string());
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|dir| has_server_binaries(dir))
        .ok_or_else(|| EphemeralError::NoBinaries {
            searched: searched.join(", "),
        })
}

fn has_server_binaries(dir: &Path) -> bool {
    dir.join("postgres").is_file() && dir.join("initdb").is_file()
}

/// `"15"` → `[15]`, `"9.6"` → `[9, 6]`; anything else is not a version directory.
fn parse_version(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

/// A client tool (`psql`, `pg_isready`) from the server's bindir, else from `/usr/bin`.
pub fn tool_path(bindir: &Path, tool: &str) -> PathBuf {
    let candidate = bindir.join(tool);
    if candidate.is_file() {
        candidate
    } else {
        Path::new("/usr/bin").join(tool)
    }
}

fn psql_path(bindir: &Path) -> PathBuf {
    tool_path(bindir, "psql")
}

/// `None` when not root; else the `postgres` OS user's ids.
fn server_user() -> Result<Option<ServerUser>, EphemeralError> {
    let euid = id_output(&["-u"]).map_err(EphemeralError::NoServerUser)?;
    if euid != 0 {
        return Ok(None);
    }
    let uid = id_output(&["-u", SUPERUSER]).map_err(EphemeralError::NoServerUser)?;
    let gid = id_output(&["-g", SUPERUSER]).map_err(EphemeralError::NoServerUser)?;
    Ok(Some(ServerUser { uid, gid }))
}

fn id_output(args: &[&str]) -> Result<u32, String> {
    let out = Command::new("id")
        .args(args)
        .output()
        .map_err(|e| format!("`id {}`: {e}", args.join(" ")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "`id {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    text.trim()
        .parse()
        .map_err(|_| format!("`id {}` printed {text:?}", args.join(" ")))
}

/// A new, empty, uniquely named directory under the system temp dir.
fn create_base_dir() -> Result<PathBuf, EphemeralError> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("pgshift-pg-{}-{nanos:09}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err(&format!("create {}", dir.display()), e)),
        }
    }
}

/// A port that was free a moment ago (bind to port 0, read it, release it).
fn free_port() -> Result<u16, EphemeralError> {
    let listener = TcpListener::bind((HOST, 0))
        .map_err(|e| io_err("bind 127.0.0.1:0 to find a free port", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| io_err("read a free port", e))
}

/// Runs a command to completion; a non-zero exit is an error carrying its output.
fn run_checked(cmd: &mut Command) -> Result<Output, EphemeralError> {
    let command = format!("{cmd:?}");
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io_err(&format!("run {command}"), e))?;
    if output.status.success() {
        return Ok(output);
    }
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Err(EphemeralError::Command {
        command,
        status: output.status,
        output: text,
    })
}

fn io_err(context: &str, source: std::io::Error) -> EphemeralError {
    EphemeralError::Io {
        context: context.to_string(),
        source,
    }
}

/// The last `lines` lines of a file (empty when unreadable).
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_directories_parse() {
        let cases: [(&str, Option<Vec<u32>>); 4] = [
            ("15", Some(vec![15])),
            ("9.6", Some(vec![9, 6])),
            ("16beta", None),
            ("", None),
        ];
        for (name, expected) in cases {
            assert_eq!(parse_version(name), expected, "{name:?}");
        }
    }

    #[test]
    fn hba_forces_password_methods_for_test_roles() {
        for (role, _, method) in TEST_ROLES {
            let line = format!("host all {role} 127.0.0.1/32 {method}");
            assert!(HBA_CONF.contains(&line), "missing {line:?}");
        }
        // The role-specific lines must precede the catch-all trust line.
        let trust = HBA_CONF.find("host all all 127.0.0.1/32 trust").unwrap();
        assert!(HBA_CONF.find("pgshift_password").unwrap() < trust);
    }
}
