//! `proxy.worker_threads`: sessions pinned to per-thread event loops (src/workers.rs), or all
//! on one thread with the control plane. Either way, concurrent sessions each keep their own
//! transaction, dual-write through a migration, cancel one another's queries (the cancel
//! request arrives on a connection of its own, likely handled on another loop), and drain on
//! SIGTERM.

mod common;

use std::time::Duration;

use common::users::rename_toml;
use common::{
    ProxyConfig, cluster, connect, control_toml, fresh_database_with, sqlstate, wait_until_active,
    wait_until_refused,
};
use tokio_postgres::NoTls;

/// Threads of process `pid` whose name starts with `prefix`.
fn threads_named(pid: u32, prefix: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("read /proc/PID/task")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

async fn sessions_work_with(worker_threads: usize, loops: usize) {
    let (db, direct) = fresh_database_with(
        &format!("session_threads_{worker_threads}"),
        "CREATE TABLE users (id int PRIMARY KEY, user_name text)",
    )
    .await;
    let proxy = ProxyConfig::new(cluster())
        .proxy_key("worker_threads", &worker_threads.to_string())
        .shutdown_grace("10s")
        .extra(&control_toml())
        .extra(&rename_toml(&db.name, "expand"))
        .spawn();
    assert_eq!(
        threads_named(proxy.pid(), "pgshift-loop"),
        loops,
        "session loop threads for worker_threads = {worker_threads}"
    );
    let url = proxy.db_url(&db);

    // Six sessions, each inside its own open transaction at the same time.
    let mut apps = Vec::new();
    for id in 0..6i32 {
        let app = connect(&url).await;
        app.batch_execute("BEGIN").await.unwrap();
        app.execute(
            "INSERT INTO users (id, user_name) VALUES ($1, $2)",
            &[&id, &format!("user{id}")],
        )
        .await
        .unwrap();
        apps.push(app);
    }
    for (id, app) in apps.iter().enumerate() {
        let seen = common::count(app, "SELECT count(*) FROM users").await;
        assert_eq!(seen, 1, "session {id} sees only its own uncommitted row");
    }
    for app in &apps {
        app.batch_execute("COMMIT").await.unwrap();
    }
    let dual = common::count(
        &direct,
        "SELECT count(*) FROM users WHERE display_name = user_name",
    )
    .await;
    assert_eq!(dual, 6, "every session's old-name insert is dual-written");

    // A cancel request on a connection of its own reaches the session it names.
    let sleeper = apps.pop().unwrap();
    let token = sleeper.cancel_token();
    let running = tokio::spawn(async move {
        let r = sleeper.simple_query("SELECT pg_sleep(30)").await;
        (sleeper, r)
    });
    wait_until_active(&direct, &db.name, "SELECT pg_sleep(30)").await;
    token.cancel_query(NoTls).await.unwrap();
    let (sleeper, cancelled) = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the cancelled query returns")
        .unwrap();
    let err = cancelled.expect_err("pg_sleep(30) must be cancelled");
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err:?}");
    sleeper.simple_query("SELECT 1").await.unwrap();

    // SIGTERM: a transaction open on one loop may still commit; then pgshift exits cleanly.
    let open = &apps[0];
    open.batch_execute("BEGIN; INSERT INTO users (id, user_name) VALUES (100, 'late')")
        .await
        .unwrap();
    proxy.sigterm();
    wait_until_refused(&url).await;
    open.batch_execute("COMMIT")
        .await
        .expect("the open transaction may finish within the grace period");
    let status = tokio::task::block_in_place(|| proxy.wait_exit(Duration::from_secs(20)))
        .expect("pgshift exits once its sessions are done");
    assert!(status.success(), "pgshift exited with {status}");
    let late: Option<String> = direct
        .query_one("SELECT display_name FROM users WHERE id = 100", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(late.as_deref(), Some("late"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_pinned_to_three_loops() {
    sessions_work_with(3, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_on_the_single_thread() {
    sessions_work_with(1, 0).await;
}
