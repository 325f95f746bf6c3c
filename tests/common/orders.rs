//! The table move of DESIGN §3.1 and docs/table-moves.md: `orders` → `orders_v2` (`total`
//! numeric → `total_cents` bigint, `note` dropped), behind a proxy that starts in planned and
//! whose phase a test moves with [`Proxy::set_phase`].
//!
//! Besides the real tables, the database holds plain copies `shape.orders` and
//! `shape.orders_v2` ([`Endpoint::reference`] reaches them first on its `search_path`): the same
//! statement run there shows what a client would get without pgshift. [`Endpoint`] runs a
//! statement in one [`Mode`] and reduces the reply to an [`Outcome`] the two sides can be
//! compared on: column names and types, rows, command tag.

use std::net::SocketAddr;

use futures_util::{TryStreamExt, pin_mut};
use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

use super::{
    Proxy, ProxyConfig, RawConn, TestDb, cluster, connect, control_toml, describe_error,
    fresh_database, frontend,
};

pub const MIGRATION: &str = "orders_v2";

/// Both tables (as in the issue), three orders in the old one only, the `adjust` table used by
/// `UPDATE … FROM` / `DELETE … USING`, and the reference copies.
const SCHEMA: &str = "
CREATE TABLE orders (id bigserial PRIMARY KEY, customer text NOT NULL,
    total numeric(12,2) NOT NULL, note text, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE orders_v2 (id bigint PRIMARY KEY DEFAULT nextval('orders_id_seq'),
    customer text NOT NULL, total_cents bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now());
INSERT INTO orders (customer, total, note, created_at) VALUES
    ('ann', 10.00, 'seed', '2024-06-01 12:00:00+00'),
    ('bob', 0.99, NULL, '2024-06-02 12:00:00+00'),
    ('O''Brien', 1234.56, 'it''s', '2024-06-03 12:00:00+00');
CREATE TABLE adjust (order_id bigint PRIMARY KEY, delta numeric(12,2) NOT NULL);
CREATE SCHEMA shape;
CREATE TABLE shape.orders (LIKE public.orders INCLUDING ALL);
CREATE TABLE shape.orders_v2 (LIKE public.orders_v2 INCLUDING ALL);
";

/// What the backfill job would copy, run directly.
const BACKFILL: &str = "INSERT INTO orders_v2 \
     SELECT id, customer, (total * 100)::bigint, created_at FROM orders \
     ON CONFLICT (id) DO NOTHING";

/// The `orders_v2` migration in planned.
pub fn migration_toml(db: &str) -> String {
    format!(
        r#"
[[migration]]
name = "{MIGRATION}"
database = "{db}"
kind = "table"
table = "public.orders"
new_table = "public.orders_v2"
key = ["id"]
phase = "planned"
[[migration.columns]]
old = "total"
new = "total_cents"
up = "(total * 100)::bigint"
down = "total_cents / 100.0"
[[migration.columns]]
old = "note"
"#
    )
}

/// One of the two tables, and the application version that names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// `orders`, written by the old app.
    Old,
    /// `orders_v2`, written by the new app.
    New,
}

impl Side {
    pub fn table(self) -> &'static str {
        match self {
            Side::Old => "orders",
            Side::New => "orders_v2",
        }
    }

    pub fn app(self) -> &'static str {
        match self {
            Side::Old => "old app",
            Side::New => "new app",
        }
    }

    /// `SELECT` of the columns of table `self`, computed from the rows of table `from` in
    /// `schema` with `up` / `down` (a dropped `note` is NULL), under `self`'s column names and
    /// types: what pgshift serves under `self`'s name when `from` is authoritative.
    pub fn select_from(self, from: Side, schema: &str) -> String {
        let list = match (self, from) {
            (Side::Old, Side::Old) => "id, customer, total, note, created_at",
            (Side::Old, Side::New) => {
                "id, customer, (total_cents / 100.0)::numeric(12,2) AS total, NULL::text AS note, \
                 created_at"
            }
            (Side::New, Side::Old) => {
                "id, customer, (total * 100)::bigint AS total_cents, created_at"
            }
            (Side::New, Side::New) => "id, customer, total_cents, created_at",
        };
        format!("SELECT {list} FROM {schema}.{}", from.table())
    }
}

/// A fresh database with both tables and a proxy in front of it (migration in planned).
pub struct Orders {
    pub proxy: Proxy,
    /// A direct superuser connection to the test database.
    pub direct: Client,
    pub db: TestDb,
}

impl Orders {
    pub async fn start(hint: &str) -> Orders {
        let db = fresh_database(hint).await;
        let direct = db.connect().await;
        direct
            .batch_execute(SCHEMA)
            .await
            .unwrap_or_else(|e| panic!("schema: {}", describe_error(&e)));
        let proxy = ProxyConfig::new(cluster())
            .extra(&control_toml())
            .extra(&migration_toml(&db.name))
            .spawn();
        Orders { proxy, direct, db }
    }

    /// A new client connection through the proxy.
    pub async fn app(&self) -> Client {
        connect(&self.proxy.db_url(&self.db)).await
    }

    /// Copies every row of `orders` missing from `orders_v2`, directly.
    pub async fn backfill(&self) {
        self.direct
            .batch_execute(BACKFILL)
            .await
            .unwrap_or_else(|e| panic!("backfill: {}", describe_error(&e)));
    }

    /// Every row of `public.<table>` as JSON text, ordered by id (to prove nothing changed).
    pub async fn dump(&self, table: &str) -> Vec<String> {
        self.direct
            .query(
                &format!("SELECT row_to_json(t)::text FROM public.{table} t ORDER BY id"),
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("dump {table}: {}", describe_error(&e)))
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// The physical columns of `public.<table>`, in order.
    pub async fn columns(&self, table: &str) -> Vec<String> {
        self.direct
            .query(
                "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::text::regclass \
                 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                &[&format!("public.{table}")],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// Every key on which the two tables disagree: present in one only, or with a customer,
    /// `total * 100` or `created_at` that differs from the other's.
    pub async fn differences(&self) -> Vec<String> {
        self.direct
            .query(
                "SELECT coalesce(o.id, n.id)::text || ': ' || CASE \
                     WHEN n.id IS NULL THEN 'only in orders' \
                     WHEN o.id IS NULL THEN 'only in orders_v2' \
                     ELSE format('orders (%s, %s, %s) vs orders_v2 (%s, %s, %s)', o.customer, \
                          o.total, o.created_at, n.customer, n.total_cents, n.created_at) END \
                 FROM orders o FULL JOIN orders_v2 n ON o.id = n.id \
                 WHERE o.id IS NULL OR n.id IS NULL OR o.customer IS DISTINCT FROM n.customer \
                    OR (o.total * 100)::bigint IS DISTINCT FROM n.total_cents \
                    OR o.created_at IS DISTINCT FROM n.created_at \
                 ORDER BY coalesce(o.id, n.id)",
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("differences: {}", describe_error(&e)))
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// Rows with ids in `lo..=hi`, as text cells, of `shape.select_from(from, schema)`.
    pub async fn rows(
        &self,
        shape: Side,
        from: Side,
        schema: &str,
        (lo, hi): (i64, i64),
    ) -> Vec<Vec<Option<String>>> {
        let sql = format!(
            "{} WHERE id BETWEEN {lo} AND {hi} ORDER BY id",
            shape.select_from(from, schema)
        );
        text_rows(&self.direct, &sql).await
    }
}

/// The rows of a simple query, as text cells.
pub async fn text_rows(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe_error(&e)))
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect()
}

/// How a statement is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// tokio-postgres `prepare` + `execute` / `query_raw` (binary results).
    Extended,
    /// tokio-postgres `simple_query`.
    Simple,
    /// A hand-driven simple Query: the exact command tag and RowDescription type modifiers.
    Raw,
}

impl Mode {
    /// Every mode the cluster allows ([`RawConn`] speaks trust authentication only).
    pub fn all() -> Vec<Mode> {
        if cluster().superuser_password().is_some() {
            println!("raw mode skipped: the raw client supports trust authentication only");
            vec![Mode::Extended, Mode::Simple]
        } else {
            vec![Mode::Extended, Mode::Simple, Mode::Raw]
        }
    }
}

/// A statement's reply, reduced to what a client can observe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `name type` (extended), `name` (simple) or `name oid(typmod) format` (raw).
    pub columns: Vec<String>,
    /// Cells as text (simple, raw) or as decoded binary values (extended).
    pub rows: Vec<Vec<Option<String>>>,
    /// The row count (tokio-postgres), or the whole command tag (raw).
    pub tag: String,
}

impl Outcome {
    /// The row count of the tag.
    pub fn count(&self) -> u64 {
        self.tag
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no row count in tag {:?}", self.tag))
    }
}

/// A cell in binary format, shown decoded where the type is simple and as hex otherwise (so
/// `numeric` compares with its display scale).
struct Cell(Option<String>);

impl<'a> FromSql<'a> for Cell {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let shown = match *ty {
            Type::INT8 => i64::from_sql(ty, raw)?.to_string(),
            Type::INT4 => i32::from_sql(ty, raw)?.to_string(),
            Type::TEXT | Type::VARCHAR => String::from_sql(ty, raw)?,
            _ => format!(
                "{ty} 0x{}",
                raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
            ),
        };
        Ok(Cell(Some(shown)))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Cell(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// A tokio-postgres client and, where supported, a raw connection to the same place: through
/// pgshift, or directly to the reference tables.
pub struct Endpoint {
    pub client: Client,
    raw: Option<RawConn>,
}

impl Endpoint {
    /// Through the proxy.
    pub async fn app(env: &Orders) -> Endpoint {
        let raw = raw_connect(env.proxy.addr(), &env.db.name).await;
        Endpoint {
            client: env.app().await,
            raw,
        }
    }

    /// Directly, with `shape` first on the `search_path`: unqualified `orders` and `orders_v2`
    /// are the plain reference copies, `adjust` is the real one.
    pub async fn reference(env: &Orders) -> Endpoint {
        const PATH: &str = "SET search_path = shape, public";
        let client = env.db.connect().await;
        client.batch_execute(PATH).await.unwrap();
        let addr: SocketAddr = cluster().upstream().parse().expect("upstream is host:port");
        let mut raw = raw_connect(addr, &env.db.name).await;
        if let Some(conn) = raw.as_mut() {
            conn.send(&frontend::query(PATH)).await;
            let replies = conn.read_until_ready(1).await;
            assert!(replies.iter().all(|m| m.tag != b'E'), "{replies:?}");
        }
        Endpoint { client, raw }
    }

    /// Runs `sql` in `mode`; `Err` is the server's `SQLSTATE: message`.
    pub async fn run(&mut self, mode: Mode, sql: &str) -> Result<Outcome, String> {
        match mode {
            Mode::Extended => self.extended(sql).await,
            Mode::Simple => self.simple(sql).await,
            Mode::Raw => self.raw(sql).await,
        }
    }

    /// Prepares `sql`: `(parameter types, "name type" columns)`.
    pub async fn describe(&self, sql: &str) -> Result<(Vec<Type>, Vec<String>), String> {
        let statement = self.client.prepare(sql).await.map_err(|e| error_text(&e))?;
        Ok((statement.params().to_vec(), typed_columns(&statement)))
    }

    async fn extended(&mut self, sql: &str) -> Result<Outcome, String> {
        let statement = self.client.prepare(sql).await.map_err(|e| error_text(&e))?;
        let columns = typed_columns(&statement);
        if columns.is_empty() {
            let n = self
                .client
                .execute(&statement, &[])
                .await
                .map_err(|e| error_text(&e))?;
            return Ok(Outcome {
                columns,
                rows: Vec::new(),
                tag: n.to_string(),
            });
        }
        let stream = self
            .client
            .query_raw(&statement, std::iter::empty::<&(dyn ToSql + Sync)>())
            .await
            .map_err(|e| error_text(&e))?;
        pin_mut!(stream);
        let mut rows = Vec::new();
        while let Some(row) = stream.try_next().await.map_err(|e| error_text(&e))? {
            rows.push((0..row.len()).map(|i| row.get::<_, Cell>(i).0).collect());
        }
        let tag = stream.rows_affected().expect("exhausted").to_string();
        Ok(Outcome { columns, rows, tag })
    }

    async fn simple(&mut self, sql: &str) -> Result<Outcome, String> {
        let messages = self
            .client
            .simple_query(sql)
            .await
            .map_err(|e| error_text(&e))?;
        let mut outcome = Outcome {
            columns: Vec::new(),
            rows: Vec::new(),
            tag: String::new(),
        };
        for message in messages {
            match message {
                SimpleQueryMessage::RowDescription(columns) => {
                    outcome.columns = columns.iter().map(|c| c.name().to_owned()).collect();
                }
                SimpleQueryMessage::Row(r) => outcome
                    .rows
                    .push((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect()),
                SimpleQueryMessage::CommandComplete(n) => outcome.tag = n.to_string(),
                _ => {}
            }
        }
        Ok(outcome)
    }

    async fn raw(&mut self, sql: &str) -> Result<Outcome, String> {
        let conn = self
            .raw
            .as_mut()
            .expect("raw mode needs trust authentication");
        conn.send(&frontend::query(sql)).await;
        let mut outcome = Outcome {
            columns: Vec::new(),
            rows: Vec::new(),
            tag: String::new(),
        };
        let mut error = None;
        loop {
            let message = conn.read_message().await.expect("connection closed");
            match message.tag {
                // A COPY FROM STDIN the test did not expect: abort it, the server answers with
                // an error and ReadyForQuery.
                b'G' => conn.send(&frontend::copy_fail("unexpected COPY")).await,
                b'T' => outcome.columns = row_description(&message.body),
                b'D' => outcome.rows.push(message.fields()),
                b'C' => {
                    outcome.tag = String::from_utf8_lossy(&message.body)
                        .trim_end_matches('\0')
                        .to_owned();
                }
                b'E' => {
                    error = Some(format!(
                        "{}: {}",
                        message.field(b'C').unwrap_or_default(),
                        message.field(b'M').unwrap_or_default()
                    ));
                }
                b'Z' => break,
                _ => {}
            }
        }
        error.map_or(Ok(outcome), Err)
    }
}

/// Connects the raw client unless the cluster wants a password.
async fn raw_connect(addr: SocketAddr, db: &str) -> Option<RawConn> {
    if cluster().superuser_password().is_some() {
        return None;
    }
    let (conn, startup) =
        RawConn::startup(addr, &[("user", cluster().superuser()), ("database", db)]).await;
    assert_eq!(startup.last().map(|m| m.tag), Some(b'Z'), "{startup:?}");
    Some(conn)
}

fn typed_columns(statement: &tokio_postgres::Statement) -> Vec<String> {
    statement
        .columns()
        .iter()
        .map(|c| format!("{} {}", c.name(), c.type_()))
        .collect()
}

/// `SQLSTATE: message` of a server error (or the client error).
pub fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => describe_error(e),
    }
}

/// A RowDescription's fields as `name oid(typmod) format`; the table OID and attribute number
/// are left out (they name the reference table, or nothing for a computed column).
fn row_description(body: &[u8]) -> Vec<String> {
    let count = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut pos = 2;
    let mut fields = Vec::with_capacity(count);
    for _ in 0..count {
        let end = pos + body[pos..].iter().position(|b| *b == 0).expect("name");
        let name = String::from_utf8_lossy(&body[pos..end]).into_owned();
        let f = &body[end + 1..end + 19];
        let type_oid = u32::from_be_bytes(f[6..10].try_into().unwrap());
        let typmod = i32::from_be_bytes(f[12..16].try_into().unwrap());
        let format = i16::from_be_bytes(f[16..18].try_into().unwrap());
        fields.push(format!("{name} {type_oid}({typmod}) {format}"));
        pos = end + 19;
    }
    fields
}
