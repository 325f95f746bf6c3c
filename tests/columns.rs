//! Column migrations through the real proxy: a rename (`user_name` → `display_name`) taken
//! through its phases by config reloads, with an old-app and a new-app client, the table
//! inspected directly after each step.

mod common;

use common::users::rename_toml;
use common::{ProxyConfig, cluster, connect, control_toml, fresh_database, sqlstate};

/// `[control]` and the rename `users_display_name` in `phase`.
fn migration(db: &str, phase: &str) -> String {
    format!("{}{}", control_toml(), rename_toml(db, phase))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_through_expand_switch_contract() {
    let db = fresh_database("columns_rename").await;
    let direct = db.connect().await;
    direct
        .batch_execute(
            "CREATE TABLE users (id int PRIMARY KEY, user_name text);
             INSERT INTO users VALUES (1, 'ann'), (2, 'bob');",
        )
        .await
        .unwrap();
    let base = ProxyConfig::new(cluster());
    let proxy = base.clone().extra(&migration(&db.name, "planned")).spawn();
    let app = connect(&proxy.db_url(&db)).await;
    // Prepared in planned, executed after the flip: must dual-write.
    let insert_old = app
        .prepare("INSERT INTO users (id, user_name) VALUES ($1, $2)")
        .await
        .unwrap();

    proxy
        .reload(&base.clone().extra(&migration(&db.name, "expand")))
        .await;
    // expand_sql ran on entering expand.
    let cols: i64 = direct
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'display_name'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(cols, 1);

    assert_eq!(app.execute(&insert_old, &[&3i32, &"cy"]).await.unwrap(), 1);
    app.execute(
        "INSERT INTO users (id, display_name) VALUES ($1, $2)",
        &[&4i32, &"dee"],
    )
    .await
    .unwrap();
    let rows = direct
        .query(
            "SELECT id, user_name, display_name FROM users WHERE id >= 3 ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(i32, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        got,
        [
            (3, "cy".into(), "cy".into()),
            (4, "dee".into(), "dee".into())
        ]
    );

    // Rows from before expand have no display_name yet, but the new name answers from the
    // old side.
    let names: Vec<String> = app
        .query(
            "SELECT display_name FROM users WHERE id <= 2 ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, ["ann", "bob"]);
    let updated = app
        .execute(
            "UPDATE users SET display_name = 'ann2' WHERE display_name = 'ann'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(updated, 1);
    let row = direct
        .query_one(
            "SELECT user_name, display_name FROM users WHERE id = 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("ann2".into(), "ann2".into())
    );

    // A refused statement changes nothing and names the migration.
    let err = app
        .simple_query(
            "INSERT INTO users (id, user_name) VALUES (9, 'x'); ALTER TABLE users ADD COLUMN z int",
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("0A000"));
    let message = common::describe_error(&err);
    assert!(
        message.contains("pgshift:") && message.contains("users_display_name"),
        "{message}"
    );
    // Like any failing statement in a simple-query string, it aborts the implicit
    // transaction: the INSERT before it is rolled back.
    let nine: i64 = direct
        .query_one("SELECT count(*) FROM users WHERE id = 9", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(nine, 0);

    // The migration's metrics: phase, epoch, rewritten/refused statements, old names in use.
    let epoch = proxy.ctl(&["status"]).await["epoch"].clone();
    let metrics = proxy.metrics_text().await;
    for line in [
        "pgshift_phase{migration=\"users_display_name\"} 1".to_owned(),
        format!("pgshift_epoch {epoch}"),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in:\n{metrics}"
        );
    }
    let value = |prefix: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(
        value("pgshift_statements_total{action=\"rewritten\"} ") >= 3.0,
        "{metrics}"
    );
    assert!(
        value("pgshift_statements_total{action=\"refused\"} ") >= 1.0,
        "{metrics}"
    );
    assert!(
        value("pgshift_old_name_statements_total{migration=\"users_display_name\"} ") >= 1.0,
        "{metrics}"
    );
    assert!(
        metrics.contains("pgshift_rewrite_seconds_bucket"),
        "{metrics}"
    );

    // switch: reads come from the new side, under the old name too.
    direct
        .batch_execute("UPDATE users SET display_name = user_name WHERE display_name IS NULL")
        .await
        .unwrap();
    // Without a verify job run, switch is reached with `force`.
    proxy.set_phase("users_display_name", "switch").await;
    direct
        .batch_execute("UPDATE users SET user_name = 'stale' WHERE id = 2")
        .await
        .unwrap();
    let row = app
        .query_one("SELECT user_name FROM users WHERE id = 2", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "bob");

    // contract: only the new side is written.
    proxy.set_phase("users_display_name", "contract").await;
    app.execute(&insert_old, &[&5i32, &"eve"]).await.unwrap();
    let row = direct
        .query_one(
            "SELECT user_name, display_name FROM users WHERE id = 5",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0), None);
    assert_eq!(row.get::<_, String>(1), "eve");
}

/// Simple-protocol statements that inline their values share one cached rewrite per shape
/// (src/rewrite/literals.rs): each execution must still write its own constants, on both
/// sides, including quotes, signs and typed constants that stay in the text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inlined_constants_of_one_shape_each_write_their_own_values() {
    let db = fresh_database("columns_inlined").await;
    let direct = db.connect().await;
    direct
        .batch_execute("CREATE TABLE users (id int PRIMARY KEY, user_name text, born date)")
        .await
        .unwrap();
    let proxy = ProxyConfig::new(cluster())
        .extra(&migration(&db.name, "expand"))
        .spawn();
    let app = connect(&proxy.db_url(&db)).await;
    for i in 1..=40 {
        let name = format!("o''brien {i}");
        app.batch_execute(&format!(
            "INSERT INTO users (id, user_name, born) VALUES ({i}, '{name}', date '2000-01-{:02}')",
            i % 28 + 1
        ))
        .await
        .unwrap();
    }
    for i in (2..=40).step_by(2) {
        app.batch_execute(&format!(
            "UPDATE users SET user_name = 'even ' || {i} * -1 WHERE id = {i}"
        ))
        .await
        .unwrap();
    }
    let rows = direct
        .query(
            "SELECT id, user_name, display_name FROM users ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 40);
    for row in rows {
        let (id, old, new): (i32, Option<String>, Option<String>) =
            (row.get(0), row.get(1), row.get(2));
        let want = if id % 2 == 0 {
            format!("even -{id}")
        } else {
            format!("o'brien {id}")
        };
        assert_eq!(
            (old.as_deref(), new.as_deref()),
            (Some(&*want), Some(&*want)),
            "id {id}"
        );
    }
    let bad: i64 = direct
        .query_one(
            "SELECT count(*) FROM users WHERE born <> date '2000-01-01' + (id % 28)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(bad, 0);
}
