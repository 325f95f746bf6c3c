//! Faults and limits: the upstream going away and coming back, garbage and oversized startup
//! packets, the client connection limit, and graceful shutdown on SIGTERM.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pgshift::ephemeral::{EphemeralOptions, EphemeralPostgres};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_postgres::{Client, NoTls};

/// Connects and reports how the connection ended: `Ok(())` when the client closed it, else the
/// error (a server `FATAL`, or "connection closed").
async fn connect_watched(
    url: &str,
) -> (Client, oneshot::Receiver<Result<(), tokio_postgres::Error>>) {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {}", describe_error(&e)));
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let _ = tx.send(connection.await);
    });
    (client, rx)
}

/// Waits for a watched connection to end; panics if it is still open after `within`.
async fn ended_within(
    ended: oneshot::Receiver<Result<(), tokio_postgres::Error>>,
    within: Duration,
) -> Result<(), tokio_postgres::Error> {
    tokio::time::timeout(within, ended)
        .await
        .unwrap_or_else(|_| panic!("connection still open after {within:?}"))
        .expect("connection task reports")
}

/// Asserts the server side ended the connection: a `57P01 admin_shutdown` error or a close.
fn assert_shutdown_close(outcome: Result<(), tokio_postgres::Error>) {
    let err = outcome.expect_err("the connection must be ended by pgshift, not by the client");
    println!("connection ended: {}", describe_error(&err));
    if let Some(code) = sqlstate(&err) {
        assert_eq!(code, "57P01", "{}", describe_error(&err));
    }
}

/// Reads until the peer closes; returns what it sent. Panics if it stays open after `within`.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "connection still open after {within:?}; received {received:?}"
    );
    received
}

/// Nothing, or an ErrorResponse: what a server may say before closing a bad connection.
fn assert_nothing_or_error_response(received: &[u8]) {
    if let Some(&tag) = received.first() {
        assert_eq!(
            tag,
            b'E',
            "expected an ErrorResponse or nothing, got {:?}",
            String::from_utf8_lossy(received)
        );
    }
}

/// A deterministic byte stream (xorshift), so a failure reproduces.
fn pseudo_random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

async fn assert_normal_client_works(proxy: &Proxy, db: &TestDb) {
    let client = connect(&proxy.db_url(db)).await;
    let row = client.query_one("SELECT 1 + 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_restart_fails_clients_cleanly_and_recovers() {
    if skip_unless_managed("starts its own PostgreSQL from the local binaries") {
        return;
    }
    let mut pg =
        tokio::task::block_in_place(|| EphemeralPostgres::start(EphemeralOptions::default()))
            .expect("dedicated PostgreSQL");
    let proxy = ProxyConfig::new(cluster()).upstream_port(pg.port()).spawn();
    let url = proxy.url("postgres", "postgres");
    let (client, ended) = connect_watched(&url).await;
    client.simple_query("SELECT 1").await.unwrap();

    tokio::task::block_in_place(|| pg.stop());

    // The server's own FATAL (57P01 on fast shutdown) is forwarded, or the connection closes.
    let ending = ended_within(ended, Duration::from_secs(10))
        .await
        .expect_err("the connection must end when the upstream stops");
    println!("connection ended: {}", describe_error(&ending));
    if let Some(code) = sqlstate(&ending) {
        assert_eq!(code, "57P01", "{}", describe_error(&ending));
    }

    let next = tokio::time::timeout(Duration::from_secs(10), client.simple_query("SELECT 1"))
        .await
        .expect("a query after the upstream stopped must fail, not hang");
    let next = next.expect_err("query succeeded with the upstream stopped");
    println!("query while upstream down: {}", describe_error(&next));
    assert!(
        proxy.try_exit().is_none(),
        "pgshift exited when the upstream went away"
    );
    let refused = tokio::time::timeout(Duration::from_secs(10), try_connect(&url))
        .await
        .expect("connecting while the upstream is down must fail, not hang");
    let err = refused.expect_err("connected although the upstream is down");
    println!("connect while upstream down: {}", describe_error(&err));
    if let Some(code) = sqlstate(&err) {
        assert!(
            ["08006", "08001", "57P01", "57P03"].contains(&code.as_str()),
            "{}",
            describe_error(&err)
        );
    }
    let upstream_errors =
        metric_value(&proxy.metrics_text().await, "pgshift_upstream_errors_total");
    assert!(
        upstream_errors >= 1.0,
        "upstream errors not counted: {upstream_errors}"
    );

    tokio::task::block_in_place(|| pg.start_again()).expect("restart PostgreSQL");

    let client = eventually(
        Duration::from_secs(10),
        "a connection after restart",
        || {
            let url = url.clone();
            async move { try_connect(&url).await.ok() }
        },
    )
    .await;
    let row = client.query_one("SELECT 40 + 2", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
}

/// The value of an unlabelled metric in Prometheus text (0 when absent).
fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            (key == name).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_a_startup_packet_is_closed() {
    let db = fresh_database("garbage").await;
    let proxy = Proxy::start();

    // A length that matches what is sent, followed by a random "protocol version" and body.
    let mut packet = 1000u32.to_be_bytes().to_vec();
    packet.extend(pseudo_random_bytes(996, 0x5eed));
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream.write_all(&packet).await.unwrap();
    let received = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert_nothing_or_error_response(&received);

    // Pure noise, then end of input.
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let _ = stream.write_all(&pseudo_random_bytes(64 * 1024, 42)).await;
    let _ = stream.shutdown().await;
    let received = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert_nothing_or_error_response(&received);

    assert!(proxy.try_exit().is_none(), "pgshift exited");
    assert_normal_client_works(&proxy, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_startup_packet_is_refused_at_once() {
    let db = fresh_database("oversized").await;
    let proxy = Proxy::start();
    let started = Instant::now();

    // Length 0x7fffffff, protocol 3.0; the body never comes. Must not wait for startup_timeout.
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream
        .write_all(&[0x7f, 0xff, 0xff, 0xff, 0x00, 0x03, 0x00, 0x00])
        .await
        .unwrap();
    let received = read_until_closed(&mut stream, Duration::from_secs(5)).await;

    assert_nothing_or_error_response(&received);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_normal_client_works(&proxy, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_after_startup_is_refused() {
    let db = fresh_database("oversized_msg").await;
    let proxy = ProxyConfig::new(cluster())
        .max_message_size(64 * 1024)
        .spawn();
    let client = connect(&proxy.db_url(&db)).await;

    let big = "x".repeat(200 * 1024);
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        client.query_one("SELECT length($1::text)", &[&big]),
    )
    .await
    .expect("an oversized message must be refused, not hang")
    .expect_err("a 200 KiB message passed a 64 KiB limit");

    println!("oversized message: {}", describe_error(&err));
    assert!(proxy.try_exit().is_none(), "pgshift exited");
    assert_normal_client_works(&proxy, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_connection_limit_refuses_with_53300() {
    let db = fresh_database("limit").await;
    let proxy = ProxyConfig::new(cluster())
        .max_client_connections(2)
        .spawn();
    let url = proxy.db_url(&db);
    let first = connect(&url).await;
    let second = connect(&url).await;
    first.simple_query("SELECT 1").await.unwrap();
    second.simple_query("SELECT 1").await.unwrap();

    let refused = try_connect(&url)
        .await
        .expect_err("a third connection was accepted with max_client_connections = 2");
    assert_eq!(sqlstate(&refused).as_deref(), Some("53300"), "{refused:?}");

    drop(first);
    let third = eventually(Duration::from_secs(5), "a free connection slot", || {
        let url = url.clone();
        async move { try_connect(&url).await.ok() }
    })
    .await;
    third.simple_query("SELECT 1").await.unwrap();
    second.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_open_transaction_commit_then_closes() {
    let db = fresh_database("graceful").await;
    let direct = db.connect().await;
    direct
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let proxy = ProxyConfig::new(cluster()).shutdown_grace("5s").spawn();
    let url = proxy.db_url(&db);
    let (client, ended) = connect_watched(&url).await;
    client
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();

    proxy.sigterm();

    // New connections are refused once the signal is handled.
    wait_until_refused(&url).await;
    client
        .batch_execute("INSERT INTO t VALUES (2); COMMIT")
        .await
        .expect("the open transaction may finish within the grace period");
    assert_shutdown_close(ended_within(ended, Duration::from_secs(8)).await);
    let status = tokio::task::block_in_place(|| proxy.wait_exit(Duration::from_secs(10)))
        .expect("pgshift exits after the grace period");
    assert!(status.success(), "pgshift exited with {status}");
    let committed = common::count(&direct, "SELECT count(*) FROM t").await;
    assert_eq!(committed, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_an_idle_connection_promptly() {
    let db = fresh_database("graceful_idle").await;
    let proxy = ProxyConfig::new(cluster()).shutdown_grace("30s").spawn();
    let (client, ended) = connect_watched(&proxy.db_url(&db)).await;
    client.simple_query("SELECT 1").await.unwrap();
    let started = Instant::now();

    proxy.sigterm();

    // Idle sessions have nothing to finish: no waiting for the 30 s grace period.
    assert_shutdown_close(ended_within(ended, Duration::from_secs(5)).await);
    let status = tokio::task::block_in_place(|| proxy.wait_exit(Duration::from_secs(5)))
        .expect("pgshift exits once no session is left");
    assert!(status.success(), "pgshift exited with {status}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_grace_period_ends_a_transaction_that_does_not_finish() {
    let db = fresh_database("graceful_expired").await;
    let direct = db.connect().await;
    direct
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let proxy = ProxyConfig::new(cluster()).shutdown_grace("1s").spawn();
    let (client, ended) = connect_watched(&proxy.db_url(&db)).await;
    client
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();

    proxy.sigterm();

    assert_shutdown_close(ended_within(ended, Duration::from_secs(6)).await);
    assert!(client.batch_execute("COMMIT").await.is_err());
    let status = tokio::task::block_in_place(|| proxy.wait_exit(Duration::from_secs(10)))
        .expect("pgshift exits after the grace period");
    assert!(status.success(), "pgshift exited with {status}");
    // The upstream session is gone, so its transaction was rolled back.
    eventually(
        Duration::from_secs(5),
        "the upstream session to end",
        || async { (other_backends(&direct, &db.name).await == 0).then_some(()) },
    )
    .await;
    let rows = common::count(&direct, "SELECT count(*) FROM t").await;
    assert_eq!(rows, 0);
}

/// Connections of this test's database other than `direct`'s own.
async fn other_backends(direct: &Client, db: &str) -> i64 {
    direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&db],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abrupt_client_disconnect_releases_the_upstream_connection() {
    if cluster().superuser_password().is_some() {
        println!("skipped: the raw client supports trust authentication only");
        return;
    }
    let db = fresh_database("abrupt").await;
    let direct = db.connect().await;
    let proxy = Proxy::start();
    let (conn, startup) = RawConn::startup(
        proxy.addr(),
        &[("user", cluster().superuser()), ("database", &db.name)],
    )
    .await;
    assert_eq!(startup.last().map(|m| m.tag), Some(b'Z'), "{startup:?}");
    assert_eq!(other_backends(&direct, &db.name).await, 1);

    // Gone without a Terminate message.
    drop(conn);

    eventually(
        Duration::from_secs(5),
        "the upstream backend to exit",
        || async { (other_backends(&direct, &db.name).await == 0).then_some(()) },
    )
    .await;
    assert!(proxy.try_exit().is_none(), "pgshift exited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_is_closed_after_startup_timeout() {
    let db = fresh_database("startup_timeout").await;
    let proxy = ProxyConfig::new(cluster()).startup_timeout("1s").spawn();
    let started = Instant::now();

    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let received = read_until_closed(&mut stream, Duration::from_secs(5)).await;

    assert_nothing_or_error_response(&received);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before the startup timeout: {:?}",
        started.elapsed()
    );
    assert_normal_client_works(&proxy, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_idle_sessions_but_not_open_transactions() {
    let db = fresh_database("idle_timeout").await;
    let proxy = ProxyConfig::new(cluster())
        .proxy_key("idle_timeout", "\"1s\"")
        .spawn();
    let url = proxy.db_url(&db);
    let (_fresh, fresh_ended) = connect_watched(&url).await;
    let (used, used_ended) = connect_watched(&url).await;
    used.simple_query("SELECT 1").await.unwrap();
    let (busy, _busy_ended) = connect_watched(&url).await;
    busy.batch_execute("BEGIN; SELECT 1").await.unwrap();

    // Both are idle: one never ran a statement, the other finished one.
    for (what, ended) in [("fresh", fresh_ended), ("used", used_ended)] {
        let outcome = tokio::time::timeout(Duration::from_secs(5), ended).await;
        let outcome = outcome
            .unwrap_or_else(|_| {
                panic!("the {what} idle session is still open 5 s after a 1 s idle_timeout")
            })
            .unwrap();
        let err = outcome.expect_err("the idle session is closed by pgshift");
        println!("{what} idle session ended: {}", describe_error(&err));
    }
    // Idle inside a transaction is not idle: the open transaction may still finish.
    busy.batch_execute("COMMIT")
        .await
        .expect("a session inside a transaction is not closed by idle_timeout");
}
