//! Reading the database under test directly: counts, stored columns, and waiting for a
//! statement to be running (before a cancel).

use std::time::Duration;

use tokio_postgres::Client;

use super::{describe_error, eventually};

/// The `bigint` that `sql` (a `SELECT count(*) …`) returns; panics naming the statement.
pub async fn count(client: &Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe_error(&e)))
        .get(0)
}

/// The columns of `table` as stored (dropped ones left out), in order, read over `client`.
pub async fn physical_columns(client: &Client, table: &str) -> Vec<String> {
    client
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::text::regclass \
             AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&table],
        )
        .await
        .unwrap_or_else(|e| panic!("columns of {table}: {}", describe_error(&e)))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Waits (up to 10 s) until a session of database `db` is active running exactly `query`, as
/// `pg_stat_activity` seen over `direct` shows it: a cancel request must wait for this, since
/// cancelling a backend that is not running the query yet does nothing.
pub async fn wait_until_active(direct: &Client, db: &str, query: &str) {
    eventually(
        Duration::from_secs(10),
        &format!("`{query}` to be running"),
        || async move {
            let active: i64 = direct
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = $1 AND state = 'active' AND query = $2",
                    &[&db, &query],
                )
                .await
                .unwrap_or_else(|e| panic!("pg_stat_activity: {}", describe_error(&e)))
                .get(0);
            (active == 1).then_some(())
        },
    )
    .await;
}
