//! Real client programs through the proxy: psql (multi-statement `-c`, `\copy` in both
//! directions) and pgbench in simple, extended and prepared mode.

mod common;

use common::*;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_success(what: &str, out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(out),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_runs_a_multi_statement_command_string() {
    let db = fresh_database("psql_multi").await;
    let reference_db = fresh_database("psql_multi_direct").await;
    let proxy = Proxy::start();
    let args = [
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, NULL); \
         UPDATE t SET v = 'c' WHERE v IS NULL; \
         SELECT string_agg(v, ',' ORDER BY id) FROM t",
    ];

    let out = psql(&proxy.db_url(&db), &args, None).await;

    assert_success("psql -c", &out);
    let reference = psql(&reference_db.url, &args, None).await;
    assert_eq!(stdout(&out), stdout(&reference));
    // psql 15+ prints every statement's result; older ones only the last.
    assert!(stdout(&out).ends_with("a,b,c\n"), "{}", stdout(&out));
    let direct = db.connect().await;
    let count: i64 = direct
        .query_one("SELECT count(*) FROM t WHERE v IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_copy_from_stdin_and_to_stdout() {
    let db = fresh_database("psql_copy").await;
    let proxy = Proxy::start();
    let url = proxy.db_url(&db);
    let direct = db.connect().await;
    direct
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text, n numeric)")
        .await
        .unwrap();
    let mut data = String::new();
    for i in 1..=5000 {
        let v = if i % 10 == 0 {
            "\\N".to_string()
        } else {
            format!("v{i}\\tü")
        };
        data.push_str(&format!("{i}\t{v}\t{}.{:02}\n", i / 7, i % 100));
    }

    let copy_in = psql(
        &url,
        &["-v", "ON_ERROR_STOP=1", "-c", "\\copy t FROM STDIN"],
        Some(&data),
    )
    .await;
    assert_success("\\copy FROM STDIN", &copy_in);
    assert_eq!(stdout(&copy_in), "COPY 5000\n");

    let copy_out = psql(
        &url,
        &[
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "\\copy (SELECT * FROM t ORDER BY id) TO STDOUT",
        ],
        None,
    )
    .await;
    assert_success("\\copy TO STDOUT", &copy_out);
    assert_eq!(stdout(&copy_out), data);

    let sum: i64 = direct
        .query_one("SELECT sum(id)::int8 FROM t WHERE v IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sum, (10..=5000).step_by(10).sum::<i64>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_copy_through_files() {
    let db = fresh_database("psql_copy_file").await;
    let proxy = Proxy::start();
    let url = proxy.db_url(&db);
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("in.csv");
    let target = dir.path().join("out.csv");
    let csv = "id,name\n1,\"a, b\"\n2,\"quote \"\" inside\"\n3,\n";
    std::fs::write(&source, csv).unwrap();

    let out = psql(
        &url,
        &[
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "CREATE TABLE t (id int, name text)",
            "-c",
            &format!(
                "\\copy t FROM '{}' WITH (FORMAT csv, HEADER)",
                source.display()
            ),
            "-c",
            &format!(
                "\\copy t TO '{}' WITH (FORMAT csv, HEADER)",
                target.display()
            ),
        ],
        None,
    )
    .await;

    assert_success("\\copy with files", &out);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), csv);
}

/// `pgbench -i -s 1` directly, then a 3-second run through the proxy in `mode`.
async fn pgbench_through_proxy(mode: &str) {
    let db = fresh_database(&format!("pgbench_{mode}")).await;
    let proxy = Proxy::start();
    let c = cluster();
    let mut init = tokio::process::Command::new(tool("pgbench"));
    init.args(["-i", "-s", "1", "-q", "-h", "127.0.0.1", "-p"])
        .arg(c.port().to_string())
        .args(["-U", c.superuser()])
        .arg(&db.name);
    if let Some(pw) = c.superuser_password() {
        init.env("PGPASSWORD", pw);
    }
    assert_success("pgbench -i", &run_client(init, None).await);

    let mut bench = tokio::process::Command::new(tool("pgbench"));
    bench
        .args([
            "-n",
            "-M",
            mode,
            "-c",
            "8",
            "-j",
            "2",
            "-T",
            "3",
            "-h",
            "127.0.0.1",
            "-p",
        ])
        .arg(proxy.port().to_string())
        .args(["-U", c.superuser()])
        .arg(&db.name);
    if let Some(pw) = c.superuser_password() {
        bench.env("PGPASSWORD", pw);
    }
    let out = run_client(bench, None).await;

    assert_success(&format!("pgbench -M {mode}"), &out);
    let report = stdout(&out);
    assert!(
        report.contains("number of failed transactions: 0 "),
        "pgbench -M {mode} reported failures:\n{report}"
    );
    let processed: u64 = report
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no transaction count in:\n{report}"));
    assert!(
        processed > 0,
        "pgbench -M {mode} processed nothing:\n{report}"
    );
    // Every counted transaction inserted one history row; up to one per client may have
    // committed while pgbench was stopping without being counted.
    let direct = db.connect().await;
    let history: i64 = direct
        .query_one("SELECT count(*) FROM pgbench_history", &[])
        .await
        .unwrap()
        .get(0);
    let history = history as u64;
    assert!(
        (processed..=processed + 8).contains(&history),
        "{history} history rows for {processed} transactions:\n{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_simple_protocol() {
    pgbench_through_proxy("simple").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_extended_protocol() {
    pgbench_through_proxy("extended").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_statements() {
    pgbench_through_proxy("prepared").await;
}
