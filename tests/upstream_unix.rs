//! `upstream` naming a Unix-socket directory (libpq's `host=/dir`): sessions, control
//! connections (a column migration's expand_sql and dual writes) and cancel requests all reach
//! PostgreSQL over its local socket.

mod common;

use std::time::Duration;

use common::users::rename_toml;
use common::{
    ProxyConfig, cluster, connect, control_toml, fresh_database_with, sqlstate, wait_until_active,
};
use tokio_postgres::NoTls;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_control_and_cancel_go_over_the_unix_socket() {
    let Some(pg) = cluster().managed() else {
        eprintln!("skipped: needs the harness's own server for its socket directory");
        return;
    };
    let (db, direct) = fresh_database_with(
        "upstream_unix",
        "CREATE TABLE users (id int PRIMARY KEY, user_name text);
         INSERT INTO users VALUES (1, 'ann');",
    )
    .await;
    let proxy = ProxyConfig::new(cluster())
        .upstream_unix(pg.socket_dir(), pg.port())
        .extra(&control_toml())
        .extra(&rename_toml(&db.name, "expand"))
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
    wait_until_active(&direct, &db.name, "SELECT pg_sleep(30)").await;
    token.cancel_query(NoTls).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the cancelled query returns")
        .unwrap()
        .expect_err("pg_sleep(30) must be cancelled");
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err:?}");
}
