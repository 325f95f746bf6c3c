//! The `users` table under the two column migrations of DESIGN §3.1, a rename (`user_name` →
//! `display_name`) and a type change (`age` text → `age_int` integer), behind a proxy whose
//! phases a test moves by rewriting its config ([`Users::set_phases`]).
//!
//! Besides the real table, [`Users::reference`] gives a direct connection whose `search_path`
//! finds a plain `shape.users` copied from the real table's columns: the same statement text
//! prepared there shows what a client would get without pgshift (parameter and column types,
//! row counts, errors).
//!
//! The raw-protocol tests reach the table through [`Users::raw_proxy`] (or directly, for
//! comparison, through [`Users::raw_direct`]), write with the prepared [`INS`] and
//! [`bind_insert`], and check both sides with [`Users::assert_dual_written`]. Tests with a
//! table of their own take the rename's config from [`rename_toml`].

use std::net::SocketAddr;

use tokio_postgres::Client;

use super::raw::{exchange, tags};
use super::{
    Proxy, ProxyConfig, RawConn, TestDb, cluster, connect, control_toml, describe_error,
    fresh_database, frontend, physical_columns,
};

pub const RENAME: &str = "users_display_name";
pub const TYPE_CHANGE: &str = "users_age_int";

/// The table before any migration, with one age `up` cannot convert (id 3).
const SCHEMA: &str = "CREATE TABLE users (id int PRIMARY KEY, user_name text, age text);
     INSERT INTO users VALUES (1, 'ann', '31'), (2, 'bob', '42'), (3, 'cy', 'n/a');
     CREATE SCHEMA shape;";

/// The `[control]` table and both migrations, in the given phases.
pub fn migrations_toml(db: &str, rename: &str, type_change: &str) -> String {
    format!(
        "{}{}{}",
        control_toml(),
        rename_toml(db, rename),
        type_change_toml(db, type_change)
    )
}

/// The rename [`RENAME`] (`user_name` → `display_name`) in `phase`; its `expand_sql` adds
/// `display_name`.
pub fn rename_toml(db: &str, phase: &str) -> String {
    rename_migration(db, phase, "")
}

/// [`rename_toml`] with a `complete_sql` that drops the old column `user_name`.
pub fn rename_dropping_old_toml(db: &str, phase: &str) -> String {
    rename_migration(
        db,
        phase,
        "complete_sql = \"ALTER TABLE users DROP COLUMN user_name\"\n",
    )
}

/// A proxy to `db` (whose `users` has `id` and `user_name`) with the rename of
/// [`rename_dropping_old_toml`] taken to contract, `display_name` backfilled over `direct` in
/// expand: ready for `complete`.
pub async fn rename_in_contract(db: &TestDb, direct: &Client) -> Proxy {
    let proxy = ProxyConfig::new(cluster())
        .extra(&control_toml())
        .extra(&rename_dropping_old_toml(&db.name, "planned"))
        .spawn();
    proxy.set_phase(RENAME, "expand").await;
    direct
        .batch_execute("UPDATE users SET display_name = user_name")
        .await
        .unwrap_or_else(|e| panic!("backfill display_name: {}", describe_error(&e)));
    proxy.set_phase(RENAME, "contract").await;
    proxy
}

/// The [`RENAME`] migration table; `keys` are further raw TOML keys of the migration.
fn rename_migration(db: &str, phase: &str, keys: &str) -> String {
    format!(
        r#"
[[migration]]
name = "{RENAME}"
database = "{db}"
table = "public.users"
kind = "columns"
phase = "{phase}"
expand_sql = "ALTER TABLE users ADD COLUMN display_name text"
{keys}[[migration.columns]]
old = "user_name"
new = "display_name"
"#
    )
}

/// The type change [`TYPE_CHANGE`] (`age` text → `age_int` integer) in `phase`.
fn type_change_toml(db: &str, phase: &str) -> String {
    format!(
        r#"
[[migration]]
name = "{TYPE_CHANGE}"
database = "{db}"
table = "public.users"
kind = "columns"
phase = "{phase}"
expand_sql = "ALTER TABLE users ADD COLUMN age_int integer"
[[migration.columns]]
old = "age"
new = "age_int"
up = "CASE WHEN age ~ '^[0-9]+$' THEN age::integer END"
down = "age_int::text"
"#
    )
}

/// The insert the raw-protocol tests prepare (as statement `ins`), parameters id, name, age.
pub const INS: &str = "INSERT INTO users (id, user_name, age) VALUES ($1, $2, $3)";

/// Bind and Execute of the named statement `ins` ([`INS`]) with id `id`, name `p{id}` and
/// age `{id}`.
pub fn bind_insert(id: i32) -> Vec<Vec<u8>> {
    let (id, name, age) = (id.to_string(), format!("p{id}"), id.to_string());
    vec![
        frontend::bind("", "ins", &[Some(&id), Some(&name), Some(&age)], 0),
        frontend::execute("", 0),
    ]
}

/// A fresh database with the `users` table and a proxy in front of it.
pub struct Users {
    pub proxy: Proxy,
    /// A direct superuser connection to the test database.
    pub direct: Client,
    pub db: TestDb,
    base: ProxyConfig,
}

impl Users {
    /// Creates the table and starts the proxy with the migrations in these phases.
    pub async fn start(hint: &str, rename: &str, type_change: &str) -> Users {
        let db = fresh_database(hint).await;
        let direct = db.connect().await;
        direct.batch_execute(SCHEMA).await.unwrap();
        let base = ProxyConfig::new(cluster());
        let proxy = base
            .clone()
            .extra(&migrations_toml(&db.name, rename, type_change))
            .spawn();
        Users {
            proxy,
            direct,
            db,
            base,
        }
    }

    /// Moves the migrations to these phases with `pgshift ctl phase … force`, one step at a
    /// time (the tests do the backfill themselves, see [`Users::backfill`]).
    pub async fn set_phases(&self, rename: &str, type_change: &str) {
        self.proxy.set_phase(RENAME, rename).await;
        self.proxy.set_phase(TYPE_CHANGE, type_change).await;
    }

    /// The config this fixture started with, in other phases.
    pub fn config(&self, rename: &str, type_change: &str) -> ProxyConfig {
        self.base
            .clone()
            .extra(&migrations_toml(&self.db.name, rename, type_change))
    }

    /// A new client connection through the proxy.
    pub async fn app(&self) -> Client {
        connect(&self.proxy.db_url(&self.db)).await
    }

    /// The proxy URL of the test database (for psql).
    pub fn app_url(&self) -> String {
        self.proxy.db_url(&self.db)
    }

    /// A raw-protocol connection to the test database through the proxy.
    pub async fn raw_proxy(&self) -> RawConn {
        self.raw_connect(self.proxy.addr()).await
    }

    /// A raw-protocol connection to the test database directly, for comparison.
    pub async fn raw_direct(&self) -> RawConn {
        let addr: SocketAddr = cluster().upstream().parse().expect("upstream is host:port");
        self.raw_connect(addr).await
    }

    /// [`Users::raw_proxy`] on which [`INS`] was parsed (and synced) as prepared statement
    /// `statement` (`""`: the unnamed one).
    pub async fn raw_proxy_with_insert(&self, statement: &str) -> RawConn {
        let mut conn = self.raw_proxy().await;
        let parsed = exchange(
            &mut conn,
            &[frontend::parse(statement, INS, &[]), frontend::sync()],
        )
        .await;
        assert_eq!(tags(&parsed), "1Z", "Parse of {INS:?}: {parsed:?}");
        conn
    }

    async fn raw_connect(&self, addr: SocketAddr) -> RawConn {
        RawConn::connect(
            addr,
            &[("user", cluster().superuser()), ("database", &self.db.name)],
        )
        .await
    }

    /// `[user_name, display_name, age, age_int]` of row `id`, read directly.
    pub async fn both_sides(&self, id: i32) -> [Option<String>; 4] {
        let row = self
            .direct
            .query_one(
                "SELECT user_name, display_name, age, age_int::text FROM users WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap_or_else(|e| panic!("row {id}: {}", describe_error(&e)));
        [row.get(0), row.get(1), row.get(2), row.get(3)]
    }

    /// Row `id` was written as [`bind_insert`] writes it (name `p{id}`, age `{id}`) on both
    /// sides.
    pub async fn assert_dual_written(&self, id: i32) {
        self.assert_dual_written_as(id, &format!("p{id}"), &id.to_string())
            .await;
    }

    /// Row `id` holds `name` under both names and `age` as both text and integer.
    pub async fn assert_dual_written_as(&self, id: i32, name: &str, age: &str) {
        let want = [name, name, age, age].map(|v| Some(v.to_owned()));
        assert_eq!(
            self.both_sides(id).await,
            want,
            "row {id}: user_name, display_name, age, age_int (both sides must be written)"
        );
    }

    /// What the backfill job would do, run directly: every existing new column set from `up`.
    pub async fn backfill(&self) {
        let columns = self.columns().await;
        let mut sets = Vec::new();
        if columns.iter().any(|c| c == "display_name") {
            sets.push("display_name = user_name");
        }
        if columns.iter().any(|c| c == "age_int") {
            sets.push("age_int = CASE WHEN age ~ '^[0-9]+$' THEN age::integer END");
        }
        if !sets.is_empty() {
            self.direct
                .batch_execute(&format!("UPDATE users SET {}", sets.join(", ")))
                .await
                .unwrap();
        }
    }

    /// The physical columns of `public.users`, in order.
    pub async fn columns(&self) -> Vec<String> {
        physical_columns(&self.direct, "public.users").await
    }

    /// Every row of `public.users` as JSON text, ordered by id (to prove nothing changed).
    pub async fn dump(&self) -> Vec<String> {
        self.direct
            .query("SELECT row_to_json(u)::text FROM users u ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// A direct connection whose unqualified `users` is a plain, empty `shape.users` with the
    /// real table's current columns (recreated on every call).
    pub async fn reference(&self) -> Client {
        self.direct
            .batch_execute(
                "DROP TABLE IF EXISTS shape.users;
                 CREATE TABLE shape.users (LIKE public.users INCLUDING ALL);",
            )
            .await
            .unwrap_or_else(|e| panic!("create shape.users: {}", describe_error(&e)));
        let reference = self.db.connect().await;
        reference
            .batch_execute("SET search_path = shape")
            .await
            .unwrap();
        reference
    }
}
