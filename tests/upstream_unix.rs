//! `upstream` naming a Unix-socket directory (libpq's `host=/dir`): sessions, control
//! connections (a column migration's expand_sql and dual writes) and cancel requests all reach
//! PostgreSQL over its local socket.

mod common;

use std::time::Duration;

use common::{ProxyConfig, cluster, connect, eventually, fresh_database, sqlstate};
use tokio_postgres::NoTls;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_control_and_cancel_go_over_the_unix_socket() {
    let Some(pg) = cluster().managed() else {
        eprintln!("skipped: needs the harness's own server for its socket directory");
        return;
    };
    let db = fresh_database("upstream_unix").await;
    let direct = db.connect().await;
    direct
        .batch_execute(
            "CREATE TABLE users (id int PRIMARY KEY, user_name text);
             INSERT INTO users VALUES (1, 'ann');",
        )
        .await
        .unwrap();
    let proxy = ProxyConfig::new(cluster())
        .upstream_unix(pg.socket_dir(), pg.port())
        .extra(&format!(
            r#"
[control]
user = "postgres"

[[migration]]
name = "users_display_name"
database = "{}"
table = "public.users"
kind = "columns"
phase = "expand"
expand_sql = "ALTER TABLE users ADD COLUMN display_name text"
[[migration.columns]]
old = "user_name"
new = "display_name"
"#,
            db.name
        ))
        .spawn();
    let app = connect(&proxy.db_url(&db)).await;

    // The session's server connection is a local socket: PostgreSQL sees no client address.
    let addr: Option<String> = app
        .query_one("SELECT inet_client_addr()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        addr, None,
        "the upstream connection should be the Unix socket"
    );

    // The control plane ran expand_sql over the socket; the app's old-name write dual-writes.
    app.execute(
        "INSERT INTO users (id, user_name) VALUES ($1, $2)",
        &[&2i32, &"bob"],
    )
    .await
    .unwrap();
    let row = direct
        .query_one(
            "SELECT user_name, display_name FROM users WHERE id = 2",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("bob".into(), "bob".into())
    );

    // A cancel request is forwarded over the socket too.
    let token = app.cancel_token();
    let running = tokio::spawn(async move { app.simple_query("SELECT pg_sleep(30)").await });
    let name = db.name.clone();
    eventually(Duration::from_secs(10), "pg_sleep to be running", || {
        let direct = &direct;
        let name = name.clone();
        async move {
            let n: i64 = direct
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
                     AND state = 'active' AND query = 'SELECT pg_sleep(30)'",
                    &[&name],
                )
                .await
                .unwrap()
                .get(0);
            (n == 1).then_some(())
        }
    })
    .await;
    token.cancel_query(NoTls).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the cancelled query returns")
        .unwrap()
        .expect_err("pg_sleep(30) must be cancelled");
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err:?}");
}
