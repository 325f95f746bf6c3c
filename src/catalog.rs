//! The catalog: pgshift's own ("control") connections to PostgreSQL, the introspected shape of
//! migrated tables, and the DDL runner.
//!
//! [`connect`] opens a control connection as `[control].user`; [`load_shape`] reads a table's
//! live columns (physical order, types, defaults, NOT NULL) and its key from `pg_catalog`;
//! [`run_ddl`] runs `expand_sql`/`complete_sql` under a short `lock_timeout`, retrying with
//! backoff so a DDL never waits in a lock queue for long (every query behind it would wait too).
//! [`crate::snapshot`] turns what is read here into the snapshot the rewrite engine works from.

use std::time::Duration;

use rand::RngExt;
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::UpstreamTls;

use crate::config::{Config, split_host_port};
use crate::migration::{ColumnInfo, QualifiedName, TableShape};

/// How long opening a control connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// First pause between DDL attempts; doubled after each, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A failure on a control connection. Server errors keep their SQLSTATE and message.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// `[proxy].upstream` is not `host:port` (only for a config that skipped validation).
    #[error("invalid upstream address: {0}")]
    Upstream(String),
    /// The control connection could not be opened.
    #[error("cannot open a control connection to {target}: {}", describe(.error))]
    Connect {
        /// `user@host:port/database`.
        target: String,
        error: tokio_postgres::Error,
    },
    /// A statement on a control connection failed.
    #[error("{context}: {}", describe(.error))]
    Statement {
        context: String,
        error: tokio_postgres::Error,
    },
    /// Every attempt of a DDL found a lock it needed taken (SQLSTATE 55P03).
    #[error("{context}: lock not available after {attempts} attempts: {}", describe(.error))]
    LockNotAvailable {
        context: String,
        attempts: u32,
        error: tokio_postgres::Error,
    },
}

impl CatalogError {
    /// The underlying client error, if there is one.
    pub fn pg_error(&self) -> Option<&tokio_postgres::Error> {
        match self {
            CatalogError::Upstream(_) => None,
            CatalogError::Connect { error, .. }
            | CatalogError::Statement { error, .. }
            | CatalogError::LockNotAvailable { error, .. } => Some(error),
        }
    }

    /// The server's SQLSTATE, when the server reported the error.
    pub fn sqlstate(&self) -> Option<&str> {
        Some(self.pg_error()?.as_db_error()?.code().code())
    }

    /// The server's message, when the server reported the error.
    pub fn server_message(&self) -> Option<&str> {
        Some(self.pg_error()?.as_db_error()?.message())
    }

    fn statement(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> CatalogError {
        let context = context.into();
        move |error| CatalogError::Statement { context, error }
    }
}

/// A server error as `message (SQLSTATE code)` plus its detail and hint; any other error with
/// its causes (tokio-postgres' own `Display` says only "db error" / "error communicating…").
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            s.push_str(&format!("; DETAIL: {detail}"));
        }
        if let Some(hint) = db.hint() {
            s.push_str(&format!("; HINT: {hint}"));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    s
}

/// A control connection: the client and the task driving its socket. Dropping it aborts the
/// task, which closes the connection.
pub struct ControlConnection {
    pub client: Client,
    pub task: JoinHandle<()>,
}

impl Drop for ControlConnection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::ops::Deref for ControlConnection {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

/// The connection settings of a control connection to `database` (see [`connect`]).
pub fn pg_config(config: &Config, database: &str) -> Result<tokio_postgres::Config, CatalogError> {
    let (host, port) = split_host_port(&config.proxy.upstream).map_err(CatalogError::Upstream)?;
    let control = &config.control;
    let password = control
        .password_env
        .as_deref()
        .and_then(|var| std::env::var(var).ok())
        .or_else(|| control.password.clone());
    let mut pg = tokio_postgres::Config::new();
    pg.host(host)
        .port(port)
        .user(&control.user)
        .dbname(database)
        .application_name("pgshift")
        .connect_timeout(CONNECT_TIMEOUT)
        // As for sessions; PostgreSQL declines TLS on a Unix socket, and `require` is refused
        // with one at load.
        .ssl_mode(match config.proxy.upstream_tls {
            UpstreamTls::Disable => SslMode::Disable,
            UpstreamTls::Prefer => SslMode::Prefer,
            UpstreamTls::Require => SslMode::Require,
        });
    if let Some(password) = password {
        pg.password(password);
    }
    Ok(pg)
}

/// TLS for control connections, with the sessions' upstream settings: encryption without
/// certificate verification, like libpq's `sslmode=require` (see `tls::upstream_config`).
/// Used only when [`pg_config`]'s `ssl_mode` asks for it.
pub fn tls_connector() -> MakeRustlsConnect {
    static CONNECTOR: std::sync::OnceLock<MakeRustlsConnect> = std::sync::OnceLock::new();
    CONNECTOR
        .get_or_init(|| MakeRustlsConnect::new((*crate::tls::upstream_config()).clone()))
        .clone()
}

/// Opens a control connection to `database` on `[proxy].upstream` as `[control].user`.
///
/// The password is taken from the environment variable named by `[control].password_env` when
/// that is set and the variable exists, else from `[control].password`, else none is sent.
/// TLS follows `[proxy].upstream_tls`, as for client sessions ([`tls_connector`]).
pub async fn connect(config: &Config, database: &str) -> Result<ControlConnection, CatalogError> {
    let control = &config.control;
    let pg = pg_config(config, database)?;
    let (client, connection) =
        pg.connect(tls_connector())
            .await
            .map_err(|error| CatalogError::Connect {
                target: format!("{}@{}/{database}", control.user, config.proxy.upstream),
                error,
            })?;
    let database = database.to_owned();
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(%database, error = %describe(&e), "control connection lost");
        }
    });
    Ok(ControlConnection { client, task })
}

/// The live columns of table `table` (physical order) and its key: the primary key, else the
/// first valid unique index without predicate or expressions (by creation order), else none.
/// `Ok(None)` when no ordinary or partitioned table has that name.
pub async fn load_shape(
    client: &Client,
    table: &QualifiedName,
) -> Result<Option<TableShape>, CatalogError> {
    let context = || format!("reading the catalog for table {table}");
    let row = client
        .query_opt(
            "SELECT c.oid FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(CatalogError::statement(context()))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let oid: u32 = row.get(0);
    let columns = client
        .query(
            "SELECT a.attname::text, a.atttypid, format_type(a.atttypid, a.atttypmod), \
                    a.attnotnull, pg_catalog.pg_get_expr(d.adbin, d.adrelid), \
                    a.attgenerated <> '', a.attidentity = 'a' \
             FROM pg_catalog.pg_attribute a \
             LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .map_err(CatalogError::statement(context()))?
        .iter()
        .map(|r| ColumnInfo {
            name: r.get(0),
            type_oid: r.get(1),
            type_sql: r.get(2),
            not_null: r.get(3),
            default: r.get(4),
            generated: r.get(5),
            identity_always: r.get(6),
        })
        .collect();
    // Only key columns (`indnkeyatts`), not INCLUDE ones; `indexprs IS NULL` excludes
    // expression columns (attnum 0).
    let key: Option<Vec<String>> = client
        .query_opt(
            "SELECT (SELECT array_agg(a.attname::text ORDER BY k.ord) \
                     FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                     JOIN pg_catalog.pg_attribute a \
                       ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                     WHERE k.ord <= i.indnkeyatts) \
             FROM pg_catalog.pg_index i \
             WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid \
               AND i.indpred IS NULL AND i.indexprs IS NULL \
             ORDER BY i.indisprimary DESC, i.indexrelid \
             LIMIT 1",
            &[&oid],
        )
        .await
        .map_err(CatalogError::statement(context()))?
        .and_then(|r| r.get(0));
    Ok(Some(TableShape {
        name: table.clone(),
        columns,
        key: key.unwrap_or_default(),
    }))
}

/// Runs `sql` (one or more statements, simple-query protocol) in one transaction under
/// `lock_timeout`. When a lock is not available in time (SQLSTATE 55P03) the transaction is
/// rolled back and retried after an exponential backoff with jitter, up to `attempts` attempts
/// in all; any other error is returned at once. Statements that cannot run inside a
/// transaction block (`CREATE INDEX CONCURRENTLY`, …) are refused by the server.
pub async fn run_ddl(
    client: &Client,
    sql: &str,
    lock_timeout: Duration,
    attempts: u32,
) -> Result<(), CatalogError> {
    let attempts = attempts.max(1);
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=attempts {
        let error = match try_ddl(client, sql, lock_timeout).await {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        if error.code() != Some(&SqlState::LOCK_NOT_AVAILABLE) {
            return Err(CatalogError::Statement {
                context: "running DDL".into(),
                error,
            });
        }
        if attempt == attempts {
            return Err(CatalogError::LockNotAvailable {
                context: "running DDL".into(),
                attempts,
                error,
            });
        }
        let pause = backoff + jitter(backoff);
        tracing::warn!(
            attempt,
            attempts,
            pause_ms = pause.as_millis() as u64,
            error = %describe(&error),
            "DDL could not take its lock in time; retrying"
        );
        tokio::time::sleep(pause).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    unreachable!("the last attempt returns")
}

/// Up to half of `backoff`, so that instances retrying the same DDL spread out.
fn jitter(backoff: Duration) -> Duration {
    let max = (backoff.as_millis() as u64 / 2).max(1);
    Duration::from_millis(rand::rng().random_range(0..max))
}

/// One attempt: `BEGIN; SET LOCAL lock_timeout; <sql>; COMMIT`, rolled back on error. The
/// statements are sent separately so a trailing comment in `sql` cannot swallow the COMMIT,
/// and `SET LOCAL` keeps the timeout from outliving the transaction on a reused connection.
async fn try_ddl(
    client: &Client,
    sql: &str,
    lock_timeout: Duration,
) -> Result<(), tokio_postgres::Error> {
    client.batch_execute("BEGIN").await?;
    let result = async {
        client
            .batch_execute(&format!(
                "SET LOCAL lock_timeout = '{}ms'",
                lock_timeout.as_millis().max(1)
            ))
            .await?;
        client.batch_execute(sql).await?;
        client.batch_execute("COMMIT").await
    }
    .await;
    if result.is_err() {
        // The connection may be gone; the original error is the one worth reporting.
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_below_half_the_backoff() {
        for ms in [1, 2, 100, 5000] {
            let backoff = Duration::from_millis(ms);
            for _ in 0..100 {
                assert!(jitter(backoff) <= backoff / 2 + Duration::from_millis(1));
            }
        }
    }
}
