//! The `users` table under the two column migrations of DESIGN §3.1, a rename (`user_name` →
//! `display_name`) and a type change (`age` text → `age_int` integer), behind a proxy whose
//! phases a test moves by rewriting its config ([`Users::set_phases`]).
//!
//! Besides the real table, [`Users::reference`] gives a direct connection whose `search_path`
//! finds a plain `shape.users` copied from the real table's columns: the same statement text
//! prepared there shows what a client would get without pgshift (parameter and column types,
//! row counts, errors).

use tokio_postgres::Client;

use super::{Proxy, ProxyConfig, TestDb, cluster, connect, describe_error, fresh_database};

pub const RENAME: &str = "users_display_name";
pub const TYPE_CHANGE: &str = "users_age_int";

/// The table before any migration, with one age `up` cannot convert (id 3).
const SCHEMA: &str = "CREATE TABLE users (id int PRIMARY KEY, user_name text, age text);
     INSERT INTO users VALUES (1, 'ann', '31'), (2, 'bob', '42'), (3, 'cy', 'n/a');
     CREATE SCHEMA shape;";

/// The `[control]` table and both migrations, in the given phases.
pub fn migrations_toml(db: &str, rename: &str, type_change: &str) -> String {
    format!(
        r#"
[control]
user = "postgres"

[[migration]]
name = "{RENAME}"
database = "{db}"
table = "public.users"
kind = "columns"
phase = "{rename}"
expand_sql = "ALTER TABLE users ADD COLUMN display_name text"
[[migration.columns]]
old = "user_name"
new = "display_name"

[[migration]]
name = "{TYPE_CHANGE}"
database = "{db}"
table = "public.users"
kind = "columns"
phase = "{type_change}"
expand_sql = "ALTER TABLE users ADD COLUMN age_int integer"
[[migration.columns]]
old = "age"
new = "age_int"
up = "CASE WHEN age ~ '^[0-9]+$' THEN age::integer END"
down = "age_int::text"
"#
    )
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
        self.direct
            .query(
                "SELECT attname::text FROM pg_attribute WHERE attrelid = 'public.users'::regclass \
                 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
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
