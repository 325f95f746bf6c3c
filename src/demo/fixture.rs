//! The demo's sample database and pgshift config: `users` whose `user_name` column is renamed
//! to `display_name`, and `orders` moved to `orders_v2` with `total` (numeric, in units)
//! becoming `total_cents` (bigint) and `note` dropped.

/// The database the demo creates.
pub const DATABASE: &str = "demo";
pub const RENAME: &str = "users_display_name";
pub const MOVE: &str = "orders_v2";

/// The schema and `rows` users with `2 × rows` orders.
pub fn schema(rows: u32) -> String {
    format!(
        "CREATE TABLE users (
             id bigserial PRIMARY KEY,
             user_name text,
             email text NOT NULL,
             created_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO users (user_name, email)
             SELECT 'user ' || g, 'user' || g || '@example.com' FROM generate_series(1, {rows}) g;
         CREATE TABLE orders (
             id bigserial PRIMARY KEY,
             user_id bigint NOT NULL,
             total numeric(12,2) NOT NULL,
             note text,
             created_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO orders (user_id, total, note)
             SELECT 1 + g % {rows}, (g % 10000) / 100.0, 'seed'
             FROM generate_series(1, 2 * {rows}) g;
         ANALYZE users, orders;"
    )
}

/// The config pgshift runs with: both migrations planned, listening on free ports.
pub fn config(upstream: &str, admin_socket: &str) -> String {
    format!(
        r#"[proxy]
listen = "127.0.0.1:0"
upstream = "{upstream}"

[admin]
socket = "{admin_socket}"
metrics_listen = "127.0.0.1:0"

[control]
user = "postgres"

# Rename users.user_name to display_name.
[[migration]]
name = "{RENAME}"
database = "{DATABASE}"
table = "public.users"
kind = "columns"
phase = "planned"
expand_sql = "ALTER TABLE users ADD COLUMN display_name text"
complete_sql = "ALTER TABLE users DROP COLUMN user_name"
[[migration.columns]]
old = "user_name"
new = "display_name"

# Move orders to orders_v2: total (numeric units) becomes total_cents (bigint), note goes.
[[migration]]
name = "{MOVE}"
database = "{DATABASE}"
kind = "table"
table = "public.orders"
new_table = "public.orders_v2"
key = ["id"]
phase = "planned"
expand_sql = """
CREATE TABLE orders_v2 (
    id bigint PRIMARY KEY DEFAULT nextval('orders_id_seq'),
    user_id bigint NOT NULL,
    total_cents bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now())"""
complete_sql = "ALTER SEQUENCE orders_id_seq OWNED BY orders_v2.id; DROP TABLE orders"
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

/// Rows on which the two sides disagree, in one statement (one snapshot): users whose
/// `display_name` is not their `user_name`, and orders missing on one side or different.
pub const DIVERGENT: &str = "SELECT
    (SELECT count(*) FROM users WHERE display_name IS DISTINCT FROM user_name)::int8,
    (SELECT count(*) FROM orders o FULL JOIN orders_v2 n ON o.id = n.id
     WHERE o.id IS NULL OR n.id IS NULL OR o.user_id IS DISTINCT FROM n.user_id
        OR (o.total * 100)::bigint IS DISTINCT FROM n.total_cents
        OR o.created_at IS DISTINCT FROM n.created_at)::int8";
