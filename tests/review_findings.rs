//! Regression tests from a review of the statement-routing code: each test states the
//! behaviour the contract (DESIGN §2, §3) requires. Each doc comment describes the bug as the
//! review found it (all are fixed, or now refused where no safe rewrite exists); the tests
//! keep them from coming back. They run against the real PostgreSQL the harness starts.

mod common;

use bytes::Bytes;
use common::raw::{data_rows, error_codes, exchange, raw_unsupported, run, send_read, tags};
use common::users::{Users, bind_insert};
use common::{
    BackendMessage, ProxyConfig, RawConn, cluster, describe_error, fresh_database, frontend,
    sqlstate,
};
use futures_util::SinkExt;
use tokio_postgres::SimpleQueryMessage;

// ---- helpers ---------------------------------------------------------------------------------

/// First column of each row of a simple query.
fn first_column(messages: &[SimpleQueryMessage]) -> Vec<Option<String>> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_owned)),
            _ => None,
        })
        .collect()
}

// ---- rewrite engine: statements forwarded unrewritten or rewritten wrongly -----------------

/// `UPDATE ONLY users …` / `FROM ONLY users`: sqlparser reads `ONLY` as the table name and
/// `users` as its alias, so pgshift resolves no migrated table and forwards the statement
/// untouched: no dual-write, reads of the physical non-authoritative column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_keyword_bypasses_the_rewrite() {
    let env = Users::start("rf_only", "expand", "expand").await;
    let app = env.app().await;
    // Read: before the backfill the physical display_name is NULL; reads must come from
    // user_name, or the statement is refused (0A000). Never the stale side.
    match app
        .simple_query("SELECT display_name FROM ONLY users WHERE id = 2")
        .await
    {
        Ok(read) => assert_eq!(first_column(&read), [Some("bob".to_owned())]),
        Err(e) => assert_eq!(sqlstate(&e).as_deref(), Some("0A000")),
    }
    // Write: after the backfill both sides agree; UPDATE ONLY must keep them in sync or be
    // refused without writing.
    env.backfill().await;
    let update = app
        .simple_query("UPDATE ONLY users SET user_name = 'zed' WHERE id = 1")
        .await;
    let sides = env.both_sides(1).await;
    let want = match &update {
        Ok(_) => "zed",
        Err(e) => {
            assert_eq!(sqlstate(e).as_deref(), Some("0A000"));
            "ann"
        }
    };
    assert_eq!(
        &sides[..2],
        &[Some(want.to_owned()), Some(want.to_owned())][..],
        "FROM ONLY users must write like FROM users, or not at all"
    );
}

/// In a non-recursive WITH, a CTE's own body does not see its name: `users` inside it is the
/// real table. The walker pushes the CTE names before visiting the CTE bodies, so the inner
/// reference is taken for the CTE and left unrewritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cte_body_referencing_the_table_its_name_shadows_is_rewritten() {
    let env = Users::start("rf_cte", "expand", "expand").await;
    let app = env.app().await;
    let sql = "WITH users AS (SELECT * FROM users WHERE id = 1) SELECT display_name FROM users";
    let got = app.simple_query(sql).await.unwrap();
    assert_eq!(
        first_column(&got),
        [Some("ann".to_owned())],
        "{sql}: display_name must be served from user_name in expand"
    );
}

/// `schema.table.column` references to the UPDATE/DELETE target are not rewritten (only
/// 1- and 2-part names are), so they read the physical non-authoritative column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_qualified_target_column_is_rewritten() {
    let env = Users::start("rf_three_part", "expand", "expand").await;
    let app = env.app().await;
    let two_part = app
        .execute(
            "UPDATE users SET age = '32' WHERE users.display_name = 'ann'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(two_part, 1);
    let three_part = app
        .execute(
            "UPDATE users SET age = '33' WHERE public.users.display_name = 'ann'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        three_part, 1,
        "public.users.display_name must mean the same as users.display_name"
    );
}

/// RETURNING * / RETURNING t.* of UPDATE and DELETE return the physical non-authoritative
/// column instead of its computed value (what `SELECT *` returns).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returning_star_serves_the_authoritative_side() {
    let env = Users::start("rf_returning_star", "expand", "expand").await;
    let app = env.app().await;
    let updated = app
        .query_one("UPDATE users SET age = '32' WHERE id = 1 RETURNING *", &[])
        .await
        .unwrap();
    let deleted = app
        .query_one("DELETE FROM users WHERE id = 2 RETURNING users.*", &[])
        .await
        .unwrap();
    assert_eq!(
        (
            updated.get::<_, Option<String>>("display_name"),
            deleted.get::<_, Option<String>>("display_name")
        ),
        (Some("ann".to_owned()), Some("bob".to_owned())),
        "RETURNING * must agree with SELECT * (display_name = up(user_name) in expand)"
    );
}

/// INSERT … ON CONFLICT DO UPDATE RETURNING <new name>: `returning_refs` skips the rewrite in
/// expand/switch assuming "both sides were written by this very statement", which is false for
/// the conflicting row (only the SET list is written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_conflict_do_update_returning_serves_the_authoritative_side() {
    let env = Users::start("rf_upsert_returning", "expand", "expand").await;
    let app = env.app().await;
    let row = app
        .query_one(
            "INSERT INTO users (id, age) VALUES (3, '7') ON CONFLICT (id) DO UPDATE \
             SET age = EXCLUDED.age RETURNING display_name",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0), Some("cy".to_owned()));
}

/// An INSERT that names neither side lets the old column's DEFAULT fill it while the new column
/// stays NULL: the sides diverge and, after switch, the value is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_relying_on_the_old_columns_default_is_dual_written() {
    let env = Users::start("rf_default", "planned", "planned").await;
    env.direct
        .batch_execute("ALTER TABLE users ALTER COLUMN user_name SET DEFAULT 'anon'")
        .await
        .unwrap();
    env.set_phases("expand", "planned").await;
    env.backfill().await;
    let app = env.app().await;
    app.execute("INSERT INTO users (id, age) VALUES (10, '10')", &[])
        .await
        .unwrap();
    let in_expand: Option<String> = app
        .query_one("SELECT display_name FROM users WHERE id = 10", &[])
        .await
        .unwrap()
        .get(0);
    let row = env
        .direct
        .query_one(
            "SELECT user_name, display_name FROM users WHERE id = 10",
            &[],
        )
        .await
        .unwrap();
    let sides: [Option<String>; 2] = [row.get(0), row.get(1)];
    // Reads move to the new side: the value the client saw in expand is gone.
    env.set_phases("switch", "planned").await;
    let in_switch: Option<String> = app
        .query_one("SELECT user_name FROM users WHERE id = 10", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        (
            in_expand.as_deref(),
            sides[0].as_deref(),
            sides[1].as_deref(),
            in_switch.as_deref()
        ),
        (Some("anon"), Some("anon"), Some("anon"), Some("anon")),
        "user_name got its default; display_name must follow (or the INSERT be refused)"
    );
}

/// INSERT … SELECT with more source columns than target columns is an error in PostgreSQL;
/// through the derived row set `AS pgshift_v(c1, c2)` the extra column is silently dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_select_with_too_many_columns_still_fails() {
    let env = Users::start("rf_insert_select", "expand", "planned").await;
    env.direct
        .batch_execute(
            "CREATE TABLE people (id int, name text, extra text);
             INSERT INTO people VALUES (20, 'p20', 'x');",
        )
        .await
        .unwrap();
    let sql = "INSERT INTO users (id, user_name) SELECT id, name, extra FROM public.people";
    let reference = env.reference().await;
    let direct = reference.execute(sql, &[]).await.expect_err("direct");
    assert_eq!(sqlstate(&direct).as_deref(), Some("42601"));
    let app = env.app().await;
    let ours = app.execute(sql, &[]).await;
    assert_eq!(
        ours.as_ref().err().and_then(sqlstate).as_deref(),
        Some("42601"),
        "through pgshift: {ours:?}"
    );
}

/// A subquery's FROM item that reuses the UPDATE target's alias shadows it; pgshift still
/// rewrites `alias.column` as the target's column, turning a valid statement into another one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadowed_target_alias_in_a_subquery_is_left_alone() {
    let env = Users::start("rf_shadow", "expand", "planned").await;
    env.direct
        .batch_execute(
            "CREATE TABLE tags (id int, display_name text, user_name text);
             INSERT INTO tags VALUES (1, 'ann', 'zzz');",
        )
        .await
        .unwrap();
    let app = env.app().await;
    let result = app
        .execute(
            "UPDATE users u SET age = '40' WHERE u.id = 1 \
             AND EXISTS (SELECT 1 FROM tags u WHERE u.display_name = 'ann')",
            &[],
        )
        .await;
    match result {
        // The inner u is tags; tags.display_name = 'ann' holds.
        Ok(n) => assert_eq!(n, 1),
        // Or refused, writing nothing.
        Err(e) => {
            assert_eq!(sqlstate(&e).as_deref(), Some("0A000"));
            let age: String = env
                .direct
                .query_one("SELECT age FROM users WHERE id = 1", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(age, "31", "a refused statement writes nothing");
        }
    }
}

/// A data-modifying CTE is rewritten on its own (rewrite.rs, `Statement::Query` arm), without
/// the CTE names of its WITH: a sibling CTE named like the migrated table is taken for the
/// table and replaced by its derived table, so `FROM users` joins the real table instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_modifying_cte_sees_its_sibling_ctes() {
    let env = Users::start("rf_dml_cte_scope", "expand", "expand").await;
    let app = env.app().await;
    let sql = "WITH users AS (SELECT 2 AS id, '77' AS user_name), \
               w AS (UPDATE public.users t SET age = users.user_name FROM users \
               WHERE t.id = users.id RETURNING t.id) SELECT count(*) FROM w";
    let updated = app.simple_query(sql).await;
    let ages: Vec<String> = env
        .direct
        .query("SELECT age FROM users ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    match updated {
        Ok(updated) => assert_eq!(
            (first_column(&updated), ages),
            (
                vec![Some("1".to_owned())],
                vec!["31".to_owned(), "77".to_owned(), "n/a".to_owned()]
            ),
            "only row 2 matches the CTE users"
        ),
        Err(e) => {
            assert_eq!(sqlstate(&e).as_deref(), Some("0A000"));
            assert_eq!(
                ages,
                ["31", "42", "n/a"],
                "a refused statement writes nothing"
            );
        }
    }
}

/// `SELECT u FROM users u` (whole-row reference) answers with an anonymous `record` instead of
/// the table's row type: the RowDescription differs from a direct connection's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_row_reference_keeps_the_row_type() {
    let env = Users::start("rf_whole_row", "expand", "expand").await;
    let sql = "SELECT u FROM users u WHERE id = 1";
    let direct = env.direct.prepare(sql).await.unwrap();
    let app = env.app().await;
    // Either the same row type as directly, or a refusal: never a silently different type.
    match app.prepare(sql).await {
        Ok(ours) => assert_eq!(
            ours.columns()[0].type_().name(),
            direct.columns()[0].type_().name()
        ),
        Err(e) => assert_eq!(sqlstate(&e).as_deref(), Some("0A000")),
    }
}

// ---- session: statements executed under the wrong snapshot or text ---------------------------

/// tokio-postgres' `copy_in` sends Bind/Execute/Sync, then CopyData…/CopyDone/Sync. PostgreSQL
/// ignores a Sync received in COPY IN mode, so two Syncs get one ReadyForQuery; pgshift counts
/// two, never sees the session idle again, and never pins a newer snapshot: after the flip the
/// session keeps the planned-era rules (no dual-write). Idle timeout and graceful shutdown never
/// see it idle either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_copy_in_does_not_freeze_the_sessions_snapshot() {
    let env = Users::start("rf_copy_sync", "planned", "planned").await;
    env.direct
        .batch_execute("CREATE TABLE sink (id int)")
        .await
        .unwrap();
    let app = env.app().await;
    let sink = app.copy_in("COPY sink FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    sink.send(Bytes::from_static(b"1\n")).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 1);
    app.simple_query("SELECT 1").await.unwrap();

    env.set_phases("expand", "expand").await;
    app.simple_query("INSERT INTO users (id, user_name, age) VALUES (80, 'p80', '80')")
        .await
        .unwrap();
    env.assert_dual_written(80).await;
}

/// A Query or FunctionCall inside an extended-protocol batch that fails before it is discarded
/// by PostgreSQL (it skips everything until Sync), but pgshift already counted a ReadyForQuery
/// for it: the session is never idle again and keeps its old snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_discarded_in_a_failed_pipeline_does_not_freeze_the_snapshot() {
    if raw_unsupported() {
        return;
    }
    let env = Users::start("rf_discarded_query", "planned", "planned").await;
    let frames = [
        run("SELECT 1 / 0"),
        vec![frontend::query("SELECT 1"), frontend::sync()],
    ]
    .concat();
    let mut real = env.raw_direct().await;
    let want = send_read(&mut real, &frames, 1).await;
    assert_eq!(
        tags(&want),
        "1EZ",
        "PostgreSQL discards the Query: {want:?}"
    );
    let mut ours = env.raw_proxy().await;
    let got = send_read(&mut ours, &frames, 1).await;
    assert_eq!(tags(&got), "1EZ");

    env.set_phases("expand", "expand").await;
    let inserted = exchange(
        &mut ours,
        &[frontend::query(
            "INSERT INTO users (id, user_name, age) VALUES (93, 'p93', '93')",
        )],
    )
    .await;
    assert_eq!(tags(&inserted), "CZ", "{inserted:?}");
    env.assert_dual_written(93).await;
}

/// Without a Sync (Flush only) the implicit transaction stays open, but pgshift counts nothing
/// owed and status `I`, so it re-pins the snapshot on the next read: one transaction runs its
/// first statement under planned and its second under expand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_transaction_spanning_a_flush_keeps_one_snapshot() {
    if raw_unsupported() {
        return;
    }
    let env = Users::start("rf_flush_pin", "planned", "planned").await;
    // The new columns exist already, so entering expand takes no lock the open transaction holds.
    env.direct
        .batch_execute("ALTER TABLE users ADD COLUMN display_name text, ADD COLUMN age_int integer")
        .await
        .unwrap();
    let mut conn = env.raw_proxy().await;
    let sql = "SELECT txid_current()::text, current_query() FROM users WHERE id = 1";
    conn.send(&[run(sql), vec![frontend::flush()]].concat().concat())
        .await;
    let mut first = Vec::new();
    while first.last().map(|m: &BackendMessage| m.tag) != Some(b'C') {
        first.push(conn.read_message().await.expect("reply before Flush"));
    }
    env.set_phases("expand", "expand").await;
    let second = exchange(&mut conn, &[run(sql), vec![frontend::sync()]].concat()).await;
    let (a, b) = (data_rows(&first), data_rows(&second));
    assert_eq!(a[0][0], b[0][0], "both statements ran in one transaction");
    assert_eq!(
        b[0][1].as_deref(),
        Some(sql),
        "the transaction began under planned; its second statement must not be rewritten"
    );
}

/// In a failed transaction pgshift skips re-preparing (`aborted`), using the status seen when
/// the read began. A ROLLBACK earlier in the same read ends the failed transaction, so the Bind
/// that follows runs the planned-era text in expand: no dual-write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_and_bind_in_one_write_still_reprepare() {
    if raw_unsupported() {
        return;
    }
    let env = Users::start("rf_rollback_bind", "planned", "planned").await;
    let mut conn = env.raw_proxy_with_insert("ins").await;
    env.set_phases("expand", "expand").await;
    let begun = exchange(&mut conn, &[frontend::query("BEGIN")]).await;
    assert_eq!(tags(&begun), "CZ");
    let failed = exchange(
        &mut conn,
        &[run("SELECT 1 / 0"), vec![frontend::sync()]].concat(),
    )
    .await;
    assert_eq!(tags(&failed), "1EZ");
    let got = exchange(
        &mut conn,
        &[
            vec![frontend::query("ROLLBACK")],
            bind_insert(90),
            vec![frontend::sync()],
        ]
        .concat(),
    )
    .await;
    assert_eq!(tags(&got), "CZ2CZ", "{got:?}");
    env.assert_dual_written(90).await;
}

/// A Parse that PostgreSQL rejects with 42P05 (name in use) still replaces pgshift's record of
/// the statement; after the flip pgshift "re-prepares" the rejected text under that name, and
/// the client's Bind of its SELECT runs the UPDATE it never got prepared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_duplicate_parse_does_not_replace_the_statement() {
    if raw_unsupported() {
        return;
    }
    let env = Users::start("rf_dup_parse", "planned", "planned").await;
    let mut conn = env.raw_proxy().await;
    let first = exchange(
        &mut conn,
        &[
            frontend::parse("s", "SELECT user_name FROM users WHERE id = $1", &[]),
            frontend::sync(),
        ],
    )
    .await;
    assert_eq!(tags(&first), "1Z");
    let dup = exchange(
        &mut conn,
        &[
            frontend::parse(
                "s",
                "UPDATE users SET user_name = 'hijacked' WHERE id = $1",
                &[],
            ),
            frontend::sync(),
        ],
    )
    .await;
    assert_eq!(error_codes(&dup), ["42P05"], "{dup:?}");
    env.set_phases("expand", "expand").await;
    let got = exchange(
        &mut conn,
        &[
            frontend::bind("", "s", &[Some("2")], 0),
            frontend::execute("", 0),
            frontend::sync(),
        ],
    )
    .await;
    let name: String = env
        .direct
        .query_one("SELECT user_name FROM users WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        (tags(&got), data_rows(&got), name.as_str()),
        ("2DCZ".to_owned(), vec![vec![Some("bob".to_owned())]], "bob"),
        "statement s is still the SELECT"
    );
}

/// A Close discarded after an earlier error in the same Sync group leaves the statement in
/// place upstream, but pgshift forgot it: after the flip its Bind runs the planned-era text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_discarded_after_an_error_keeps_the_statement_tracked() {
    if raw_unsupported() {
        return;
    }
    let env = Users::start("rf_close_discarded", "planned", "planned").await;
    let mut conn = env.raw_proxy_with_insert("ins").await;
    let failed = exchange(
        &mut conn,
        &[
            run("SELECT 1 / 0"),
            vec![frontend::close(b'S', "ins"), frontend::sync()],
        ]
        .concat(),
    )
    .await;
    assert_eq!(tags(&failed), "1EZ", "the Close is discarded: {failed:?}");
    env.set_phases("expand", "expand").await;
    let got = exchange(
        &mut conn,
        &[bind_insert(91), vec![frontend::sync()]].concat(),
    )
    .await;
    assert_eq!(tags(&got), "2CZ", "ins still exists upstream: {got:?}");
    env.assert_dual_written(91).await;
}

/// A Query that is not valid UTF-8 (client_encoding LATIN1) is forwarded untouched
/// (`wire::query_text` fails, `Decision::Forward`), so a write to a migrated table in expand
/// is not dual-written. Nothing that mentions a migrated table may pass unrewritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_query_is_rewritten_or_refused() {
    if raw_unsupported() {
        return;
    }
    let env = Users::start("rf_latin1", "expand", "expand").await;
    let mut conn = RawConn::connect(
        env.proxy.addr(),
        &[
            ("user", cluster().superuser()),
            ("database", &env.db.name),
            ("client_encoding", "LATIN1"),
        ],
    )
    .await;
    let mut sql = b"INSERT INTO users (id, user_name, age) VALUES (92, 'Jos".to_vec();
    sql.extend_from_slice(b"\xe9', '92')\0");
    let mut frame = vec![b'Q'];
    frame.extend_from_slice(&((sql.len() + 4) as u32).to_be_bytes());
    frame.extend_from_slice(&sql);
    let got = send_read(&mut conn, &[frame], 1).await;
    if error_codes(&got) == ["0A000"] {
        let n: i64 = env
            .direct
            .query_one("SELECT count(*) FROM users WHERE id = 92", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "a refused statement wrote nothing");
    } else {
        let sides = env.both_sides(92).await;
        assert_eq!(
            sides[1].as_deref(),
            Some("José"),
            "neither refused nor dual-written: {got:?}"
        );
    }
}

/// SQL-level PREPARE made while planned is EXECUTEd after the flip without any rewrite (the
/// EXECUTE text names no table): a statement prepared in planned must dual-write in expand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_prepare_from_planned_dual_writes_when_executed_in_expand() {
    let env = Users::start("rf_sql_prepare", "planned", "planned").await;
    let app = env.app().await;
    app.batch_execute(
        "PREPARE p(int, text, text) AS INSERT INTO users (id, user_name, age) VALUES ($1, $2, $3)",
    )
    .await
    .unwrap();
    env.set_phases("expand", "expand").await;
    let executed = app.batch_execute("EXECUTE p(94, 'p94', '94')").await;
    if let Err(e) = &executed {
        // A refusal would be acceptable too.
        assert_eq!(
            sqlstate(e).as_deref(),
            Some("0A000"),
            "{}",
            describe_error(e)
        );
        return;
    }
    env.assert_dual_written(94).await;
}

/// Refusal markers are matched by substring: `pgshift_refused_1` is found inside
/// `pgshift_refused_10`, so while refusal 1 is still pending (discarded in an aborted
/// transaction) refusal 10 is answered with refusal 1's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_markers_do_not_match_by_prefix() {
    let env = Users::start("rf_marker", "expand", "expand").await;
    let app = env.app().await;
    app.batch_execute("BEGIN; SAVEPOINT s").await.unwrap();
    app.simple_query("SELECT 1 / 0").await.expect_err("22012");
    // Refusal 1, answered by 25P02 (the transaction is aborted): it stays pending.
    let aborted = app
        .simple_query("ALTER TABLE users ADD COLUMN note text")
        .await
        .expect_err("aborted");
    assert_eq!(sqlstate(&aborted).as_deref(), Some("25P02"));
    app.batch_execute("ROLLBACK TO SAVEPOINT s").await.unwrap();
    let merge = "MERGE INTO users u USING (VALUES (1)) AS v(id) ON u.id = v.id \
                 WHEN MATCHED THEN DELETE";
    for n in 2..=10 {
        let err = app.simple_query(merge).await.expect_err("refused");
        let message = err.as_db_error().map(|e| e.message().to_owned());
        assert!(
            message.as_deref().is_some_and(|m| m.contains("MERGE")),
            "refusal {n}: {message:?}"
        );
        app.batch_execute("ROLLBACK TO SAVEPOINT s").await.unwrap();
    }
    app.batch_execute("ROLLBACK").await.unwrap();
}

/// The same blind spot as above: an extended-protocol batch without Sync is an open (implicit)
/// transaction, but pgshift counts nothing owed and status `I`, so `idle_timeout` closes the
/// session in the middle of it (and a graceful shutdown would too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_does_not_close_an_unsynced_extended_batch() {
    if raw_unsupported() {
        return;
    }
    let db = fresh_database("rf_idle_batch").await;
    let proxy = ProxyConfig::new(cluster())
        .proxy_key("idle_timeout", "\"1s\"")
        .spawn();
    let mut conn = RawConn::connect(
        proxy.addr(),
        &[("user", cluster().superuser()), ("database", &db.name)],
    )
    .await;
    conn.send(
        &[run("CREATE TABLE kept (id int)"), vec![frontend::flush()]]
            .concat()
            .concat(),
    )
    .await;
    let mut first = Vec::new();
    while first.last().map(|m: &BackendMessage| m.tag) != Some(b'C') {
        first.push(conn.read_message().await.expect("reply before Flush"));
    }
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    conn.send(&frontend::sync()).await;
    let next = conn.read_message().await;
    assert_eq!(
        next.as_ref().map(|m| m.tag),
        Some(b'Z'),
        "the batch was still open when the session was closed: {next:?}"
    );
}
