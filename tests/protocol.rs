//! The wire protocol through the real proxy against the real server: simple and extended query,
//! prepared statements, pipelining, portals, transactions, COPY, LISTEN/NOTIFY, notices, cancel.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{AsyncMessage, Client, NoTls, SimpleQueryMessage};

/// Connects and forwards the connection's asynchronous messages (notifications, notices) to a
/// channel.
async fn connect_with_messages(url: &str) -> (Client, UnboundedReceiver<AsyncMessage>) {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {}", describe_error(&e)));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            let _ = tx.send(message);
        }
    });
    (client, rx)
}

/// One line per simple-query message: `columns a,b`, `row 1|NULL`, `complete 3`.
fn render_simple(messages: &[SimpleQueryMessage]) -> Vec<String> {
    messages
        .iter()
        .map(|m| match m {
            SimpleQueryMessage::RowDescription(cols) => {
                let names: Vec<&str> = cols.iter().map(|c| c.name()).collect();
                format!("columns {}", names.join(","))
            }
            SimpleQueryMessage::Row(row) => {
                let values: Vec<&str> = (0..row.len())
                    .map(|i| row.get(i).unwrap_or("NULL"))
                    .collect();
                format!("row {}", values.join("|"))
            }
            SimpleQueryMessage::CommandComplete(n) => format!("complete {n}"),
            other => format!("other {other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_query_runs_multi_statement_strings() {
    let db = fresh_database("simple_multi").await;
    let proxy = Proxy::start();
    let client = connect(&proxy.db_url(&db)).await;

    let messages = client
        .simple_query(
            "CREATE TABLE t (id int PRIMARY KEY, name text);\
             INSERT INTO t VALUES (1, 'a'), (2, NULL), (3, 'c');\
             SELECT id, name FROM t ORDER BY id;\
             UPDATE t SET name = 'b' WHERE id = 2;\
             DELETE FROM t WHERE id = 3",
        )
        .await
        .unwrap();

    assert_eq!(
        render_simple(&messages),
        [
            "complete 0",
            "complete 3",
            "columns id,name",
            "row 1|a",
            "row 2|NULL",
            "row 3|c",
            "complete 3",
            "complete 1",
            "complete 1",
        ]
    );
    let direct = db.connect().await;
    let rows = direct
        .query("SELECT id, name FROM t ORDER BY id", &[])
        .await
        .unwrap();
    let rows: Vec<(i32, Option<String>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(rows, [(1, Some("a".into())), (2, Some("b".into()))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_query_error_stops_the_rest_of_the_string() {
    let db = fresh_database("simple_error").await;
    let proxy = Proxy::start();
    let client = connect(&proxy.db_url(&db)).await;

    let err = client
        .simple_query("CREATE TABLE t (id int); SELECT * FROM missing; CREATE TABLE u (id int)")
        .await
        .unwrap_err();

    assert_eq!(sqlstate(&err).as_deref(), Some("42P01"), "{err:?}");
    // The string ran as one implicit transaction: nothing of it remains.
    let direct = db.connect().await;
    let tables = common::count(
        &direct,
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
    )
    .await;
    assert_eq!(tables, 0);
    let rows = client.simple_query("SELECT 'still usable'").await.unwrap();
    assert_eq!(render_simple(&rows)[1], "row still usable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_query_with_named_and_unnamed_statements() {
    let db = fresh_database("extended").await;
    let proxy = Proxy::start();
    let client = connect(&proxy.db_url(&db)).await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, name text, score numeric);\
             INSERT INTO t SELECT g, 'name' || g, g * 1.5 FROM generate_series(1, 20) g",
        )
        .await
        .unwrap();

    // Named statement, described once, executed many times.
    let stmt = client
        .prepare("SELECT name, score::float8 FROM t WHERE id = $1")
        .await
        .unwrap();
    assert_eq!(stmt.params(), [Type::INT4]);
    let columns: Vec<(&str, Type)> = stmt
        .columns()
        .iter()
        .map(|c| (c.name(), c.type_().clone()))
        .collect();
    assert_eq!(columns, [("name", Type::TEXT), ("score", Type::FLOAT8)]);
    for id in [1i32, 7, 20] {
        let row = client.query_one(&stmt, &[&id]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), format!("name{id}"));
        assert_eq!(row.get::<_, f64>(1), f64::from(id) * 1.5);
    }

    // Unnamed statement: Parse/Bind/Describe/Execute/Sync in one round trip.
    let rows = client
        .query_typed(
            "SELECT id FROM t WHERE id > $1 AND name <> $2 ORDER BY id",
            &[(&17i32, Type::INT4), (&"name19", Type::TEXT)],
        )
        .await
        .unwrap();
    let ids: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, [18, 20]);

    // DML with parameters returns the row count.
    let updated = client
        .execute("UPDATE t SET name = $1 WHERE id <= $2", &[&"low", &3i32])
        .await
        .unwrap();
    assert_eq!(updated, 3);
    let direct = db.connect().await;
    let low = common::count(&direct, "SELECT count(*) FROM t WHERE name = 'low'").await;
    assert_eq!(low, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_queries_complete_in_order_even_with_an_error_among_them() {
    let db = fresh_database("pipeline").await;
    let proxy = Proxy::start();
    let client = connect(&proxy.db_url(&db)).await;
    let stmt = client.prepare("SELECT $1::int * 10").await.unwrap();

    // tokio-postgres writes every request before reading any reply when futures are joined.
    let values: Vec<i32> = (0..50).collect();
    let params: Vec<[&(dyn ToSql + Sync); 1]> = values.iter().map(|v| [v as _]).collect();
    let queries = params.iter().map(|p| client.query_one(&stmt, p));
    let failing = client.query_one("SELECT 1 / 0", &[]);
    let after = client.query_one("SELECT 'after'::text", &[]);
    let (results, failing, after) =
        tokio::join!(futures_util::future::join_all(queries), failing, after);

    let got: Vec<i32> = results.into_iter().map(|r| r.unwrap().get(0)).collect();
    assert_eq!(got, values.iter().map(|v| v * 10).collect::<Vec<_>>());
    assert_eq!(sqlstate(&failing.unwrap_err()).as_deref(), Some("22012"));
    assert_eq!(after.unwrap().get::<_, String>(0), "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_is_fetched_in_chunks() {
    let db = fresh_database("portal").await;
    let proxy = Proxy::start();
    let mut client = connect(&proxy.db_url(&db)).await;

    let tx = client.transaction().await.unwrap();
    let stmt = tx
        .prepare("SELECT g, repeat('x', g) FROM generate_series(1, 95) g")
        .await
        .unwrap();
    let portal = tx.bind(&stmt, &[]).await.unwrap();
    let mut chunk_sizes = Vec::new();
    let mut values = Vec::new();
    loop {
        let rows = tx.query_portal(&portal, 10).await.unwrap();
        if rows.is_empty() {
            break;
        }
        chunk_sizes.push(rows.len());
        values.extend(
            rows.iter()
                .map(|r| (r.get::<_, i32>(0), r.get::<_, String>(1))),
        );
    }
    tx.commit().await.unwrap();

    assert_eq!(chunk_sizes, [10, 10, 10, 10, 10, 10, 10, 10, 10, 5]);
    let expected: Vec<(i32, String)> = (1..=95).map(|g| (g, "x".repeat(g as usize))).collect();
    assert_eq!(values, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_transaction_rolls_back_and_connection_stays_usable() {
    let db = fresh_database("tx_error").await;
    let proxy = Proxy::start();
    let mut client = connect(&proxy.db_url(&db)).await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();

    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
    let duplicate = tx
        .execute("INSERT INTO t VALUES (1)", &[])
        .await
        .unwrap_err();
    let aborted = tx.execute("SELECT 1", &[]).await.unwrap_err();
    tx.rollback().await.unwrap();

    assert_eq!(sqlstate(&duplicate).as_deref(), Some("23505"));
    assert_eq!(sqlstate(&aborted).as_deref(), Some("25P02"));
    let count = common::count(&client, "SELECT count(*) FROM t").await;
    assert_eq!(count, 0);
    let direct = db.connect().await;
    let count = common::count(&direct, "SELECT count(*) FROM t").await;
    assert_eq!(count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_copy_out_round_trip_bytes() {
    let db = fresh_database("copy").await;
    let proxy = Proxy::start();
    let client = connect(&proxy.db_url(&db)).await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, note text, data bytea)")
        .await
        .unwrap();
    // Enough rows to span many CopyData frames and socket reads.
    let mut input = String::new();
    for i in 1..=20_000 {
        let note = if i % 7 == 0 {
            "\\N".to_string()
        } else {
            format!("note\\t{i} ü")
        };
        input.push_str(&format!("{i}\t{note}\t\\\\x{i:08x}\n"));
    }

    let sink = client
        .copy_in("COPY t (id, note, data) FROM STDIN")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    for chunk in input.as_bytes().chunks(8191) {
        sink.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    let copied = sink.finish().await.unwrap();
    assert_eq!(copied, 20_000);

    let out_sql = "COPY (SELECT id, note, data FROM t ORDER BY id) TO STDOUT";
    let through_proxy: Vec<Bytes> = client
        .copy_out(out_sql)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let through_proxy = through_proxy.concat();
    assert_eq!(String::from_utf8(through_proxy.clone()).unwrap(), input);
    let direct = db.connect().await;
    let direct_out: Vec<Bytes> = direct
        .copy_out(out_sql)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(direct_out.concat(), through_proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_error_is_reported_and_nothing_is_written() {
    let db = fresh_database("copy_error").await;
    let proxy = Proxy::start();
    let client = connect(&proxy.db_url(&db)).await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();

    let sink = client.copy_in("COPY t FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    sink.send(Bytes::from_static(b"1\n2\nnot-a-number\n"))
        .await
        .unwrap();
    let err = sink.finish().await.unwrap_err();

    assert_eq!(sqlstate(&err).as_deref(), Some("22P02"), "{err:?}");
    let count = common::count(&client, "SELECT count(*) FROM t").await;
    assert_eq!(count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_between_two_clients() {
    let db = fresh_database("notify").await;
    let proxy = Proxy::start();
    let (listener, mut messages) = connect_with_messages(&proxy.db_url(&db)).await;
    listener.batch_execute("LISTEN jobs").await.unwrap();
    let notifier = connect(&proxy.db_url(&db)).await;

    notifier
        .batch_execute("NOTIFY jobs, 'first'; SELECT pg_notify('jobs', 'second')")
        .await
        .unwrap();

    // The listener is idle: the notifications must be pushed to it without a query.
    let mut payloads = Vec::new();
    while payloads.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(5), messages.recv())
            .await
            .expect("notification within 5 s")
            .expect("connection open");
        if let AsyncMessage::Notification(n) = message {
            assert_eq!(n.channel(), "jobs");
            payloads.push(n.payload().to_string());
        }
    }
    assert_eq!(payloads, ["first", "second"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notice_from_a_do_block_reaches_the_client() {
    let db = fresh_database("notice").await;
    let proxy = Proxy::start();
    let (client, mut messages) = connect_with_messages(&proxy.db_url(&db)).await;

    client
        .batch_execute("DO $$ BEGIN RAISE NOTICE 'hello %', 42; RAISE WARNING 'careful'; END $$")
        .await
        .unwrap();

    let mut notices = Vec::new();
    while notices.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(5), messages.recv())
            .await
            .expect("notice within 5 s")
            .expect("connection open");
        if let AsyncMessage::Notice(notice) = message {
            notices.push((
                notice.severity().to_string(),
                notice.code().code().to_string(),
                notice.message().to_string(),
            ));
        }
    }
    assert_eq!(
        notices,
        [
            (
                "NOTICE".to_string(),
                "00000".to_string(),
                "hello 42".to_string()
            ),
            (
                "WARNING".to_string(),
                "01000".to_string(),
                "careful".to_string()
            ),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_cross_the_proxy_intact() {
    let db = fresh_database("large").await;
    let proxy = Proxy::start();
    let client = connect(&proxy.db_url(&db)).await;
    let big: String = (0..4 * 1024 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();

    let row = client
        .query_one("SELECT length($1::text), md5($1::text), $1::text", &[&big])
        .await
        .unwrap();

    assert_eq!(row.get::<_, i32>(0), big.len() as i32);
    let direct = db.connect().await;
    let expected_md5: String = direct
        .query_one("SELECT md5($1::text)", &[&big])
        .await
        .unwrap()
        .get(0);
    assert_eq!(row.get::<_, String>(1), expected_md5);
    assert!(row.get::<_, String>(2) == big, "echoed value differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_through_the_proxy_stops_a_running_query() {
    let db = fresh_database("cancel").await;
    let proxy = Proxy::start();
    let client = connect(&proxy.db_url(&db)).await;
    let token = client.cancel_token();
    let started = Instant::now();
    let running = tokio::spawn(async move {
        let result = client.simple_query("SELECT pg_sleep(30)").await.map(drop);
        (result, client)
    });

    // Cancel only once the server is really executing it (a cancel for an idle backend is a no-op).
    let direct = db.connect().await;
    wait_until_active(&direct, &db.name, "SELECT pg_sleep(30)").await;
    token.cancel_query(NoTls).await.unwrap();
    let (result, client) = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the cancelled query returns")
        .unwrap();

    let err = result.expect_err("pg_sleep(30) must be cancelled");
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cancel took {:?}",
        started.elapsed()
    );
    let rows = client.simple_query("SELECT 1").await.unwrap();
    assert_eq!(render_simple(&rows)[1], "row 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_with_a_wrong_secret_is_ignored() {
    let db = fresh_database("cancel_wrong").await;
    let proxy = Proxy::start();
    let client = connect(&proxy.db_url(&db)).await;

    // A CancelRequest (length 16, code 80877102) for a key pgshift never handed out.
    let mut packet = Vec::new();
    packet.extend_from_slice(&16u32.to_be_bytes());
    packet.extend_from_slice(&80_877_102u32.to_be_bytes());
    packet.extend_from_slice(&1u32.to_be_bytes());
    packet.extend_from_slice(&0xdead_beefu32.to_be_bytes());
    let cancel = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
        stream.write_all(&packet).await.unwrap();
        let mut rest = Vec::new();
        // The server side closes a cancel connection without replying.
        let _ = stream.read_to_end(&mut rest).await;
        rest
    };
    let (rows, reply) = tokio::join!(client.simple_query("SELECT pg_sleep(0.5), 'done'"), cancel);

    assert!(reply.is_empty(), "cancel connection got a reply: {reply:?}");
    assert_eq!(render_simple(&rows.unwrap())[1], "row |done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_options_and_application_name_reach_the_server() {
    let db = fresh_database("startup_options").await;
    let proxy = Proxy::start();
    let url = format!(
        "{}?application_name=story-app&options=-c%20search_path%3Delsewhere%20-c%20work_mem%3D7MB",
        proxy.db_url(&db)
    );
    let client = connect(&url).await;

    let row = client
        .query_one(
            "SELECT current_setting('search_path'), current_setting('work_mem'), \
             current_setting('application_name')",
            &[],
        )
        .await
        .unwrap();

    assert_eq!(row.get::<_, String>(0), "elsewhere");
    assert_eq!(row.get::<_, String>(1), "7MB");
    assert_eq!(row.get::<_, String>(2), "story-app");
    let direct = db.connect().await;
    let apps = common::count(
        &direct,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'story-app'",
    )
    .await;
    assert_eq!(apps, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_without_sync_delivers_replies() {
    if cluster().superuser_password().is_some() {
        println!("skipped: the raw client supports trust authentication only");
        return;
    }
    let db = fresh_database("flush").await;
    let proxy = Proxy::start();
    let (mut conn, startup) = RawConn::startup(
        proxy.addr(),
        &[("user", cluster().superuser()), ("database", &db.name)],
    )
    .await;
    assert_eq!(startup.last().map(|m| m.tag), Some(b'Z'), "{startup:?}");

    // No Sync: only Flush makes the server (and so pgshift) send what it has.
    conn.send(
        &[
            frontend::parse("s", "SELECT $1::int AS n", &[]),
            frontend::describe(b'S', "s"),
            frontend::flush(),
        ]
        .concat(),
    )
    .await;
    let mut tags = Vec::new();
    for _ in 0..3 {
        tags.push(
            conn.read_message()
                .await
                .expect("a reply before any Sync")
                .tag,
        );
    }

    assert_eq!(
        tags, b"1tT",
        "ParseComplete, ParameterDescription, RowDescription"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_connections_are_refused_clearly() {
    let db = fresh_database("replication").await;
    let proxy = Proxy::start();

    let (_, replies) = RawConn::startup(
        proxy.addr(),
        &[
            ("user", cluster().superuser()),
            ("database", &db.name),
            ("replication", "database"),
        ],
    )
    .await;

    let error = replies.first().expect("a reply to the startup");
    assert_eq!(error.tag, b'E', "{replies:?}");
    let message = error.field(b'M').unwrap_or_default();
    assert!(message.contains("replication"), "{replies:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_only_the_session_it_belongs_to() {
    let db = fresh_database("cancel_isolation").await;
    let proxy = Proxy::start();
    let target = connect(&proxy.db_url(&db)).await;
    let bystander = connect(&proxy.db_url(&db)).await;
    let token = target.cancel_token();

    let direct = db.connect().await;
    let cancel = async {
        // Cancel once both sleeps are running on the server.
        eventually(Duration::from_secs(10), "both sleeps to run", || async {
            let sleeping = common::count(
                &direct,
                "SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = current_database() AND state = 'active' \
                     AND query LIKE 'SELECT pg_sleep(%'",
            )
            .await;
            (sleeping == 2).then_some(())
        })
        .await;
        token.cancel_query(NoTls).await.unwrap();
    };
    let (cancelled, finished, ()) = tokio::join!(
        target.simple_query("SELECT pg_sleep(30)"),
        bystander.simple_query("SELECT pg_sleep(2), 'bystander done'"),
        cancel
    );

    assert_eq!(
        sqlstate(&cancelled.expect_err("the target is cancelled")).as_deref(),
        Some("57014")
    );
    assert_eq!(render_simple(&finished.unwrap())[1], "row |bystander done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_pipelining_in_both_directions_does_not_stall() {
    let db = fresh_database("duplex").await;
    let proxy = Proxy::start();
    let client = connect(&proxy.db_url(&db)).await;
    let stmt = client
        .prepare("SELECT $1::text || repeat('r', 8192), $2::int")
        .await
        .unwrap();
    let payload = "p".repeat(8192);

    // ~16 MiB each way, written before the replies are read: a proxy that stops reading the
    // server while blocked writing to it would deadlock here.
    let ids: Vec<i32> = (0..2000).collect();
    let params: Vec<[&(dyn ToSql + Sync); 2]> =
        ids.iter().map(|id| [&payload as _, id as _]).collect();
    let queries = params.iter().map(|p| client.query_one(&stmt, p));
    let results = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(queries),
    )
    .await
    .expect("2000 pipelined queries finish within 60 s");

    for (id, row) in ids.iter().zip(results) {
        let row = row.unwrap();
        assert_eq!(row.get::<_, i32>(1), *id);
        assert_eq!(row.get::<_, &str>(0).len(), 2 * 8192);
    }
}
