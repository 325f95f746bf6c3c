//! The configuration file (DESIGN §3.1): parsed with serde from TOML, every section rejects
//! unknown keys, and [`Config::validate`] checks what types alone cannot (ranges, file pairs,
//! migration names). Durations are humantime strings (`"30s"`, `"500ms"`).
//!
//! `[[migration]]` entries are parsed and validated here; acting on them belongs to the
//! migration and rewrite modules.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Postgres' own limit for a protocol message (`PQ_LARGE_MESSAGE_LIMIT`, 1 GiB - 1).
pub const POSTGRES_MAX_MESSAGE_SIZE: usize = 0x3fff_ffff;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub control: ControlConfig,
    #[serde(default)]
    pub jobs: JobsConfig,
    #[serde(default, rename = "migration")]
    pub migrations: Vec<MigrationConfig>,
}

/// `[proxy]`: the client-facing listener and the upstream PostgreSQL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    /// `host:port` of PostgreSQL; the host may be a name, resolved at each connect, or, as in
    /// libpq, a directory (starting with `/`) holding the server's Unix socket
    /// `.s.PGSQL.<port>` (see [`upstream_socket`]).
    pub upstream: String,
    #[serde(default = "default_max_client_connections")]
    pub max_client_connections: usize,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    #[serde(default)]
    pub upstream_tls: UpstreamTls,
    /// Time a new connection has to finish startup and authentication.
    #[serde(default = "default_startup_timeout", with = "humantime_serde")]
    pub startup_timeout: Duration,
    /// Close client connections idle (outside a transaction) this long; `0s` = never.
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// On SIGTERM, how long in-flight transactions may take before connections are closed.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Session event loops (src/workers.rs), a thread each; 0 = one per core, 1 = sessions
    /// share the control plane's single thread.
    #[serde(default)]
    pub worker_threads: usize,
    /// Largest client message accepted, in bytes (length field included).
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
}

/// TLS between pgshift and PostgreSQL, with libpq's `sslmode` meaning of the same words.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTls {
    #[default]
    Disable,
    Prefer,
    Require,
}

/// `[admin]`: the admin socket and the metrics/health HTTP endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_socket")]
    pub socket: PathBuf,
    #[serde(default = "default_metrics_listen")]
    pub metrics_listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            socket: default_admin_socket(),
            metrics_listen: default_metrics_listen(),
        }
    }
}

/// `[control]`: how pgshift's own connections (state, catalog, jobs) log in, where the shared
/// state lives, and the timing of the control plane (DESIGN §3.5).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    #[serde(default = "default_control_user")]
    pub user: String,
    pub password: Option<String>,
    pub password_env: Option<String>,
    /// The database holding the `pgshift` state schema. Defaults to the migrations' database
    /// when they all use one; required when they span several.
    pub database: Option<String>,
    /// How often an instance records its heartbeat and acknowledged epoch.
    #[serde(default = "default_heartbeat_interval", with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// An instance whose last heartbeat is older than this no longer counts as live.
    #[serde(default = "default_instance_lease", with = "humantime_serde")]
    pub instance_lease: Duration,
    /// How long a transition waits for every live instance to acknowledge before giving up.
    #[serde(default = "default_ack_timeout", with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// How often the state is polled besides `LISTEN pgshift`.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            user: default_control_user(),
            password: None,
            password_env: None,
            database: None,
            heartbeat_interval: default_heartbeat_interval(),
            instance_lease: default_instance_lease(),
            ack_timeout: default_ack_timeout(),
            poll_interval: default_poll_interval(),
        }
    }
}

/// `[jobs]`: defaults of the backfill and verify jobs (docs/jobs.md). Read when a job
/// starts, so a reload applies to the next job.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    /// Rows per backfill batch (`backfill NAME start batch=N` overrides).
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// Rows per second, 0 = unthrottled (`start rate=N` overrides).
    #[serde(default)]
    pub rate: u32,
    /// `lock_timeout` of each batch.
    #[serde(default = "default_job_lock_timeout", with = "humantime_serde")]
    pub lock_timeout: Duration,
    /// Failed attempts of one batch in a row before the backfill fails.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Pause while a standby's replay lag exceeds this; `0s` = not checked.
    #[serde(default, with = "humantime_serde")]
    pub max_replication_lag: Duration,
    /// Pause while more sessions of the database wait for a lock; 0 = not checked.
    #[serde(default)]
    pub max_lock_waiters: u32,
    /// Keys per verify chunk.
    #[serde(default = "default_verify_chunk")]
    pub verify_chunk: u32,
    /// Mismatching keys a verify lists.
    #[serde(default = "default_verify_first_keys")]
    pub verify_first_keys: u32,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            batch_size: default_batch_size(),
            rate: 0,
            lock_timeout: default_job_lock_timeout(),
            max_attempts: default_max_attempts(),
            max_replication_lag: Duration::ZERO,
            max_lock_waiters: 0,
            verify_chunk: default_verify_chunk(),
            verify_first_keys: default_verify_first_keys(),
        }
    }
}

fn default_batch_size() -> u32 {
    1000
}
fn default_job_lock_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_max_attempts() -> u32 {
    10
}
fn default_verify_chunk() -> u32 {
    10_000
}
fn default_verify_first_keys() -> u32 {
    10
}

impl Config {
    /// The database holding pgshift's state: `[control].database`, else the one database all
    /// migrations use; `None` when there are no migrations (nothing to coordinate).
    pub fn control_database(&self) -> Option<&str> {
        self.control
            .database
            .as_deref()
            .or_else(|| self.migrations.first().map(|m| m.database.as_str()))
    }
}

/// One `[[migration]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationConfig {
    pub name: String,
    pub database: String,
    pub table: String,
    pub kind: MigrationKind,
    #[serde(default)]
    pub phase: Phase,
    pub new_table: Option<String>,
    #[serde(default)]
    pub key: Vec<String>,
    pub expand_sql: Option<String>,
    pub complete_sql: Option<String>,
    #[serde(default)]
    pub columns: Vec<ColumnMapping>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationKind {
    Columns,
    Table,
}

/// The phases of DESIGN §3.2, in order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    #[default]
    Planned,
    Expand,
    Switch,
    Contract,
    Complete,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Planned,
        Phase::Expand,
        Phase::Switch,
        Phase::Contract,
        Phase::Complete,
    ];

    /// The stable name, as in the config file and the admin interface.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Planned => "planned",
            Phase::Expand => "expand",
            Phase::Switch => "switch",
            Phase::Contract => "contract",
            Phase::Complete => "complete",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Phase {
    type Err = String;
    fn from_str(s: &str) -> Result<Phase, String> {
        Phase::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown phase {s:?}; phases are planned, expand, switch, contract, complete"
                )
            })
    }
}

/// One `[[migration.columns]]`: `up` defaults to the old column, `down` to the new one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnMapping {
    pub old: String,
    /// Required for `kind = "columns"`; in a table move, absent for an old column the new
    /// table does not have.
    pub new: Option<String>,
    pub up: Option<String>,
    pub down: Option<String>,
}

fn default_max_client_connections() -> usize {
    1000
}
fn default_startup_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_max_message_size() -> usize {
    POSTGRES_MAX_MESSAGE_SIZE
}
fn default_admin_socket() -> PathBuf {
    PathBuf::from("/tmp/pgshift.sock")
}
fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9187))
}
fn default_control_user() -> String {
    "postgres".to_owned()
}
fn default_heartbeat_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_instance_lease() -> Duration {
    Duration::from_secs(10)
}
fn default_ack_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(1)
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_text(path).map(|(config, _)| config)
    }

    /// [`Config::load`], also returning the text it was read from (one read, so the text and
    /// the config always agree).
    pub fn load_with_text(path: &Path) -> Result<(Config, String), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })?;
        Ok((config, text))
    }

    /// Parses and validates config text (the path in errors is left empty).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: describe_toml_error(&e),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: ranges, pairs of keys, names.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let p = &self.proxy;
        split_host_port(&p.upstream).map_err(|m| invalid("proxy.upstream", m))?;
        if upstream_socket(&p.upstream).is_some() && p.upstream_tls == UpstreamTls::Require {
            return Err(invalid(
                "proxy.upstream_tls",
                "\"require\" cannot apply to a Unix-socket upstream (PostgreSQL offers no TLS \
                 there); use a host:port upstream, or \"disable\"",
            ));
        }
        if p.max_client_connections == 0 {
            return Err(invalid(
                "proxy.max_client_connections",
                "must be at least 1",
            ));
        }
        if p.tls_cert.is_some() != p.tls_key.is_some() {
            return Err(invalid(
                "proxy.tls_cert",
                "tls_cert and tls_key must be given together",
            ));
        }
        if p.startup_timeout.is_zero() {
            return Err(invalid("proxy.startup_timeout", "must be greater than 0"));
        }
        if !(1024..=POSTGRES_MAX_MESSAGE_SIZE).contains(&p.max_message_size) {
            return Err(invalid(
                "proxy.max_message_size",
                format!("must be between 1024 and {POSTGRES_MAX_MESSAGE_SIZE} bytes"),
            ));
        }
        self.validate_control()?;
        self.validate_jobs()?;
        self.validate_migrations()
    }

    fn validate_control(&self) -> Result<(), ConfigError> {
        let c = &self.control;
        for (key, value) in [
            ("control.heartbeat_interval", c.heartbeat_interval),
            ("control.poll_interval", c.poll_interval),
            ("control.instance_lease", c.instance_lease),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if c.instance_lease <= c.heartbeat_interval {
            return Err(invalid(
                "control.instance_lease",
                "must be longer than control.heartbeat_interval",
            ));
        }
        if c.database.is_none()
            && let Some(first) = self.migrations.first()
            && let Some(other) = self
                .migrations
                .iter()
                .find(|m| m.database != first.database)
        {
            return Err(invalid(
                "control.database",
                format!(
                    "migrations use databases {:?} and {:?}; say which one holds pgshift's state",
                    first.database, other.database
                ),
            ));
        }
        Ok(())
    }

    fn validate_jobs(&self) -> Result<(), ConfigError> {
        let j = &self.jobs;
        for (key, value) in [
            ("jobs.batch_size", j.batch_size),
            ("jobs.max_attempts", j.max_attempts),
            ("jobs.verify_chunk", j.verify_chunk),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if j.lock_timeout.is_zero() {
            return Err(invalid("jobs.lock_timeout", "must be greater than 0"));
        }
        Ok(())
    }

    fn validate_migrations(&self) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        for (i, m) in self.migrations.iter().enumerate() {
            let key = format!("migration[{i}]");
            if m.name.is_empty()
                || !m
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("{:?} must match [a-z0-9_]+", m.name),
                ));
            }
            if !names.insert(m.name.as_str()) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("migration {:?} is defined twice", m.name),
                ));
            }
            let key = format!("migration {:?}", m.name);
            match m.kind {
                MigrationKind::Columns => {
                    if m.columns.is_empty() {
                        return Err(invalid(
                            format!("{key}.columns"),
                            "a columns migration needs at least one [[migration.columns]]",
                        ));
                    }
                    if m.new_table.is_some() {
                        return Err(invalid(
                            format!("{key}.new_table"),
                            "only for kind = \"table\"",
                        ));
                    }
                }
                MigrationKind::Table => {
                    if m.new_table.is_none() {
                        return Err(invalid(
                            format!("{key}.new_table"),
                            "required for kind = \"table\"",
                        ));
                    }
                    if m.key.is_empty() {
                        return Err(invalid(
                            format!("{key}.key"),
                            "required for kind = \"table\"",
                        ));
                    }
                }
            }
            validate_columns(&key, m.kind, &m.columns)?;
        }
        Ok(())
    }
}

/// A migration's `[[migration.columns]]`: each new column is produced once; one old column may
/// be split into several new ones, and then every entry naming it must give the same `down`,
/// since the old column can only be computed back one way.
fn validate_columns(
    key: &str,
    kind: MigrationKind,
    columns: &[ColumnMapping],
) -> Result<(), ConfigError> {
    let mut news = HashSet::new();
    for c in columns {
        let Some(new) = &c.new else {
            if kind == MigrationKind::Columns {
                return Err(invalid(
                    format!("{key}.columns"),
                    format!("old column {:?} needs a new column", c.old),
                ));
            }
            if c.up.is_some() {
                return Err(invalid(
                    format!("{key}.columns"),
                    format!(
                        "old column {:?} has no new column, so it cannot have an up",
                        c.old
                    ),
                ));
            }
            if columns.iter().filter(|o| o.old == c.old).count() > 1 {
                return Err(invalid(
                    format!("{key}.columns"),
                    format!("old column {:?} is both dropped and mapped", c.old),
                ));
            }
            continue;
        };
        if c.old.is_empty() || new.is_empty() {
            return Err(invalid(
                format!("{key}.columns"),
                "old and new must be non-empty",
            ));
        }
        if !news.insert(new.as_str()) {
            return Err(invalid(
                format!("{key}.columns"),
                format!("new column {new:?} is mapped twice"),
            ));
        }
    }
    for (i, c) in columns.iter().enumerate() {
        let split: Vec<&ColumnMapping> = columns.iter().filter(|o| o.old == c.old).collect();
        // Check each old column once, at its first entry.
        if split.len() < 2 || columns[..i].iter().any(|o| o.old == c.old) {
            continue;
        }
        let downs: Vec<Option<&str>> = split.iter().map(|o| o.down.as_deref()).collect();
        if downs.iter().any(Option::is_none) || downs.windows(2).any(|w| w[0] != w[1]) {
            return Err(invalid(
                format!("{key}.columns"),
                format!(
                    "old column {:?} is split into several new columns, so every entry for it \
                     needs the same explicit down",
                    c.old
                ),
            ));
        }
    }
    Ok(())
}

/// Splits `host:port` (IPv6 hosts in brackets) and checks the port.
pub fn split_host_port(s: &str) -> Result<(&str, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not host:port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{s:?} has no host"));
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("{s:?} has an invalid port"))?;
    Ok((host, port))
}

/// The Unix socket path for an `upstream` whose host is a directory (`/run/postgresql:5432` →
/// `/run/postgresql/.s.PGSQL.5432`, libpq's convention); `None` for a TCP upstream.
pub fn upstream_socket(upstream: &str) -> Option<PathBuf> {
    let (host, port) = split_host_port(upstream).ok()?;
    host.starts_with('/')
        .then(|| Path::new(host).join(format!(".s.PGSQL.{port}")))
}

/// toml's own messages already quote the offending line and name unknown keys; keep them whole.
fn describe_toml_error(e: &toml::de::Error) -> String {
    e.to_string().trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[proxy]\nlisten = \"127.0.0.1:6432\"\nupstream = \"db:5432\"\n";

    #[test]
    fn a_directory_upstream_is_a_unix_socket_without_tls() {
        assert_eq!(upstream_socket("db:5432"), None);
        assert_eq!(
            upstream_socket("/run/postgresql:5433"),
            Some(PathBuf::from("/run/postgresql/.s.PGSQL.5433"))
        );
        let text = "[proxy]\nlisten = \"127.0.0.1:6432\"\nupstream = \"/run/postgresql:5432\"\n\
                    upstream_tls = \"require\"\n";
        let err = Config::parse(text).unwrap_err().to_string();
        assert!(
            err.contains("proxy.upstream_tls") && err.contains("Unix"),
            "{err}"
        );
        Config::parse(&text.replace("require", "prefer")).unwrap();
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.proxy.max_client_connections, 1000);
        assert_eq!(c.proxy.upstream_tls, UpstreamTls::Disable);
        assert_eq!(c.admin.metrics_listen.port(), 9187);
        assert!(c.migrations.is_empty());
    }

    #[test]
    fn rejections_name_the_key() {
        let cases = [
            (
                "[proxy]\nlisten = \"127.0.0.1:1\"\nupstream = \"h:1\"\nlisen = 1\n",
                "lisen",
            ),
            ("[proxy]\nlisten = \"nope\"\nupstream = \"h:1\"\n", "listen"),
            (
                "[proxy]\nlisten = \"127.0.0.1:1\"\nupstream = \"h\"\n",
                "proxy.upstream",
            ),
            (
                "[proxy]\nlisten = \"127.0.0.1:1\"\nupstream = \"h:1\"\nmax_client_connections = 0\n",
                "max_client_connections",
            ),
            (
                "[proxy]\nlisten = \"127.0.0.1:1\"\nupstream = \"h:1\"\ntls_cert = \"a.pem\"\n",
                "tls_cert",
            ),
            (
                "[proxy]\nlisten = \"127.0.0.1:1\"\nupstream = \"h:1\"\nupstream_tls = \"maybe\"\n",
                "upstream_tls",
            ),
            (
                "[proxy]\nlisten = \"127.0.0.1:1\"\nupstream = \"h:1\"\nstartup_timeout = \"soon\"\n",
                "startup_timeout",
            ),
            (
                "[proxy]\nlisten = \"127.0.0.1:1\"\nupstream = \"h:1\"\n[admin]\nsockt = \"x\"\n",
                "sockt",
            ),
        ];
        for (text, key) in cases {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(
                err.contains(key),
                "error for {key:?} does not name it: {err}"
            );
        }
    }

    #[test]
    fn migrations_are_validated() {
        let base = format!(
            "{MINIMAL}[[migration]]\nname = \"users_rename\"\ndatabase = \"app\"\ntable = \"public.users\"\nkind = \"columns\"\n"
        );
        let ok = format!("{base}[[migration.columns]]\nold = \"a\"\nnew = \"b\"\n");
        let c = Config::parse(&ok).unwrap();
        assert_eq!(c.migrations[0].phase, Phase::Planned);
        assert_eq!(c.migrations[0].columns[0].up, None);

        let no_columns = Config::parse(&base).unwrap_err().to_string();
        assert!(no_columns.contains("users_rename"), "{no_columns}");

        let bad_name = ok.replace("users_rename", "Users-Rename");
        assert!(
            Config::parse(&bad_name)
                .unwrap_err()
                .to_string()
                .contains("name")
        );

        let twice = format!("{ok}{}", ok.trim_start_matches(MINIMAL));
        assert!(
            Config::parse(&twice)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );

        let bad_phase = ok.replace(
            "kind = \"columns\"",
            "kind = \"columns\"\nphase = \"sideways\"",
        );
        assert!(
            Config::parse(&bad_phase)
                .unwrap_err()
                .to_string()
                .contains("phase")
        );
    }

    #[test]
    fn one_old_column_may_split_but_new_columns_are_produced_once() {
        let base = format!(
            "{MINIMAL}[[migration]]\nname = \"split_name\"\ndatabase = \"app\"\ntable = \"users\"\nkind = \"columns\"\n"
        );
        let entry = |old: &str, new: &str, down: Option<&str>| {
            let down = down.map(|d| format!("down = {d:?}\n")).unwrap_or_default();
            format!("[[migration.columns]]\nold = {old:?}\nnew = {new:?}\n{down}")
        };
        let down = "first || ' ' || last";
        let split = format!(
            "{base}{}{}",
            entry("name", "first", Some(down)),
            entry("name", "last", Some(down))
        );
        let c = Config::parse(&split).unwrap();
        assert_eq!(c.migrations[0].columns.len(), 2);

        let cases = [
            (
                format!("{base}{}{}", entry("a", "x", None), entry("b", "x", None)),
                "new column \"x\" is mapped twice",
            ),
            (
                format!(
                    "{base}{}{}",
                    entry("name", "first", Some(down)),
                    entry("name", "last", None)
                ),
                "same explicit down",
            ),
            (
                format!(
                    "{base}{}{}",
                    entry("name", "first", Some(down)),
                    entry("name", "last", Some("last"))
                ),
                "same explicit down",
            ),
        ];
        for (text, expected) in cases {
            let err = Config::parse(&text).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
            assert!(
                err.contains("split_name"),
                "error must name the migration: {err}"
            );
        }
    }

    #[test]
    fn host_port() {
        assert_eq!(split_host_port("db:5432").unwrap(), ("db", 5432));
        assert_eq!(split_host_port("[::1]:5432").unwrap(), ("::1", 5432));
        assert!(split_host_port("db").is_err());
        assert!(split_host_port("db:x").is_err());
    }
}
