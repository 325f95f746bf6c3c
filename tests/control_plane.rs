//! The control plane through the real binary (DESIGN §3.2, §3.4, §3.5, §4): `pgshift ctl`
//! flips a phase and a connected client's next transaction sees it while a transaction already
//! open keeps the old phase to its end; every flip is in `pgshift.events`; refused transitions
//! say why, exit non-zero and change nothing; phases set with `ctl` survive a restart on an
//! unchanged config file; the admin socket (mode 0600, one JSON line per command, a bad
//! command leaves the connection usable); `ctl`'s tables, `--config` and its errors; the
//! old-name statement count in `status`; and `complete` running `complete_sql`, after which
//! nothing rolls back.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Output;
use std::time::{Duration, Instant};

use common::ctl::{entry, refused};
use common::users::{RENAME, TYPE_CHANGE, Users, rename_in_contract};
use common::{Proxy, connect, fresh_database_with};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio_postgres::Client;

/// `(user_name, display_name)` of one row, read directly.
async fn names(direct: &Client, id: i32) -> (Option<String>, Option<String>) {
    let row = direct
        .query_one(
            "SELECT user_name, display_name FROM users WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Everything a transition could change, as `ctl status` and the state tables show it.
#[derive(Debug, PartialEq)]
struct Recorded {
    status_epoch: u64,
    status_phases: Vec<(String, String)>,
    /// `pgshift.migrations`: name, phase, epoch, file_phase.
    rows: Vec<(String, String, i64, Option<String>)>,
    cluster_epoch: i64,
    /// `count(*)` and `max(id)` of `pgshift.events`.
    events: (i64, Option<i64>),
}

async fn recorded(proxy: &Proxy, direct: &Client) -> Recorded {
    let status = proxy.ctl(&["status"]).await;
    let status_phases = status["migrations"]
        .as_array()
        .expect("migrations in status")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or("?").to_owned(),
                m["phase"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect();
    let rows = direct
        .query(
            "SELECT name, phase, epoch, file_phase FROM pgshift.migrations ORDER BY name",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let cluster_epoch = direct
        .query_one("SELECT epoch FROM pgshift.cluster", &[])
        .await
        .unwrap()
        .get(0);
    let events = direct
        .query_one("SELECT count(*), max(id) FROM pgshift.events", &[])
        .await
        .unwrap();
    Recorded {
        status_epoch: status["epoch"].as_u64().expect("status epoch"),
        status_phases,
        rows,
        cluster_epoch,
        events: (events.get(0), events.get(1)),
    }
}

/// Runs `pgshift ctl ARGS…` as given (no `--socket` added).
async fn pgshift_ctl(args: &[&std::ffi::OsStr]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgshift"));
    cmd.arg("ctl").args(args);
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("pgshift ctl finished within 60 s")
        .expect("run pgshift ctl")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ctl_flip_reaches_the_next_transaction_and_is_logged() {
    let users = Users::start("cp_flip", "planned", "planned").await;
    let proxy = &users.proxy;
    let app = users.app().await;
    let open = users.app().await;
    app.simple_query("SELECT user_name FROM users WHERE id = 1")
        .await
        .unwrap();
    // A transaction begun in planned; BEGIN alone takes no lock, so expand_sql can run.
    open.batch_execute("BEGIN").await.unwrap();

    let reply = proxy.ctl(&["phase", RENAME, "expand"]).await;
    assert_eq!(
        (
            &reply["ok"],
            &reply["from"],
            &reply["phase"],
            &reply["changed"]
        ),
        (
            &true.into(),
            &"planned".into(),
            &"expand".into(),
            &true.into()
        ),
        "{reply}"
    );
    let flip_epoch = reply["epoch"].as_u64().expect("the new epoch");
    assert!(users.columns().await.contains(&"display_name".to_owned()));

    // The idle client's next statement is rewritten: it dual-writes without reconnecting.
    app.execute(
        "INSERT INTO users (id, user_name) VALUES ($1, $2)",
        &[&10i32, &"ada"],
    )
    .await
    .unwrap();
    assert_eq!(
        names(&users.direct, 10).await,
        (Some("ada".into()), Some("ada".into()))
    );

    // The open transaction still runs under planned: untouched statements.
    open.execute(
        "INSERT INTO users (id, user_name) VALUES ($1, $2)",
        &[&11i32, &"old"],
    )
    .await
    .unwrap();
    let unrewritten: Option<String> = open
        .query_one("SELECT display_name FROM users WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(unrewritten, None, "a planned read of the bare new column");
    let connections = proxy.ctl(&["connections"]).await;
    let held = connections["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .find(|c| c["state"] == "idle in transaction")
        .unwrap_or_else(|| panic!("no session in a transaction: {connections}"));
    let held_epoch = held["epoch"]
        .as_u64()
        .expect("the open transaction's epoch");
    assert!(
        held_epoch < flip_epoch,
        "the open transaction runs under the old epoch: {connections}"
    );
    open.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        names(&users.direct, 11).await,
        (Some("old".into()), None),
        "the transaction open across the flip was not dual-written"
    );

    // Its next transaction is under expand.
    open.execute(
        "INSERT INTO users (id, user_name) VALUES ($1, $2)",
        &[&12i32, &"new"],
    )
    .await
    .unwrap();
    assert_eq!(
        names(&users.direct, 12).await,
        (Some("new".into()), Some("new".into()))
    );
    let served: String = open
        .query_one("SELECT display_name FROM users WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        served, "ann",
        "expand serves the new name from the old side"
    );

    // The flip in the event log, read directly…
    let status = proxy.ctl(&["status"]).await;
    assert_eq!(status["epoch"].as_u64(), Some(flip_epoch), "{status}");
    let instance = status["instance"].as_str().expect("instance id");
    let flips = users
        .direct
        .query(
            "SELECT id, actor, from_phase, to_phase, epoch, detail FROM pgshift.events \
             WHERE migration = $1 AND action = 'phase' ORDER BY id",
            &[&RENAME],
        )
        .await
        .unwrap();
    assert_eq!(flips.len(), 1, "one phase event for {RENAME}");
    let flip = &flips[0];
    let actor: String = flip.get(1);
    assert!(actor.starts_with("ctl@"), "{actor}");
    assert_eq!(actor, format!("ctl@{instance}"));
    assert_eq!(
        (
            flip.get::<_, String>(2),
            flip.get::<_, String>(3),
            flip.get::<_, i64>(4),
            flip.get::<_, Option<String>>(5),
        ),
        ("planned".into(), "expand".into(), flip_epoch as i64, None)
    );
    let cluster_epoch: i64 = users
        .direct
        .query_one("SELECT epoch FROM pgshift.cluster", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(cluster_epoch, flip_epoch as i64);

    // …and through `ctl events`.
    let events = proxy.ctl(&["events", RENAME]).await;
    let list = events["events"].as_array().expect("events");
    assert!(list.iter().all(|e| e["migration"] == RENAME), "{events}");
    let last = list.last().expect("at least the flip");
    assert_eq!(last["id"].as_i64(), Some(flip.get::<_, i64>(0)), "{events}");
    assert_eq!(
        (
            &last["actor"],
            &last["action"],
            &last["from"],
            &last["to"],
            &last["epoch"]
        ),
        (
            &Value::from(actor.clone()),
            &"phase".into(),
            &"planned".into(),
            &"expand".into(),
            &flip_epoch.into()
        ),
        "{events}"
    );
    let latest = proxy.ctl(&["events", "limit=1"]).await;
    assert_eq!(
        latest["events"].as_array().map(Vec::len),
        Some(1),
        "{latest}"
    );
    assert_eq!(latest["events"][0]["id"], last["id"], "{latest}");
    let other = proxy.ctl(&["events", TYPE_CHANGE]).await;
    assert!(
        other["events"]
            .as_array()
            .expect("events")
            .iter()
            .all(|e| e["migration"] == TYPE_CHANGE && e["action"] != "phase"),
        "{other}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_transitions_say_why_and_change_nothing() {
    let users = Users::start("cp_refusals", "expand", "planned").await;
    let proxy = &users.proxy;
    let before = recorded(proxy, &users.direct).await;
    assert_eq!(
        before.status_phases,
        [
            (RENAME.to_owned(), "expand".to_owned()),
            (TYPE_CHANGE.to_owned(), "planned".to_owned())
        ]
    );
    let cases: [(&[&str], &[&str]); 7] = [
        (&["phase", RENAME, "contract"], &["skips a phase"]),
        // force passes the verify gate only.
        (&["phase", RENAME, "contract", "force"], &["skips a phase"]),
        (&["phase", RENAME, "switch"], &["verify"]),
        (
            &["phase", "no_such_migration", "expand"],
            &["no_such_migration", RENAME, TYPE_CHANGE],
        ),
        (
            &["phase", RENAME, "sideways"],
            &["unknown phase", "sideways"],
        ),
        (&["rollback", TYPE_CHANGE], &["roll back"]),
        (&["complete", RENAME], &["expand", "complete"]),
    ];
    for (args, reasons) in cases {
        let error = refused(proxy, args).await;
        for reason in reasons {
            assert!(
                error.contains(reason),
                "ctl {args:?}: {error:?} lacks {reason:?}"
            );
        }
        assert_eq!(
            recorded(proxy, &users.direct).await,
            before,
            "the refused ctl {args:?} changed something"
        );
    }

    // Asking for the phase it is in is no transition: no event, no new epoch.
    let same = proxy.ctl(&["phase", RENAME, "expand"]).await;
    assert_eq!(
        (&same["ok"], &same["changed"]),
        (&true.into(), &false.into()),
        "{same}"
    );
    assert_eq!(recorded(proxy, &users.direct).await, before);

    // The verify gate yields to force, and the log says it was forced.
    let reply = proxy.ctl(&["phase", RENAME, "switch", "force"]).await;
    assert_eq!(
        (&reply["ok"], &reply["phase"], &reply["forced"]),
        (&true.into(), &"switch".into(), &true.into()),
        "{reply}"
    );
    let after = recorded(proxy, &users.direct).await;
    assert_eq!(after.status_phases[0], (RENAME.into(), "switch".into()));
    let row = after.rows.iter().find(|r| r.0 == RENAME).expect("its row");
    assert_eq!(row.1, "switch");
    assert!(after.cluster_epoch > before.cluster_epoch);
    let detail: Option<String> = users
        .direct
        .query_one(
            "SELECT detail FROM pgshift.events WHERE migration = $1 AND to_phase = 'switch'",
            &[&RENAME],
        )
        .await
        .unwrap()
        .get(0);
    let detail = detail.unwrap_or_default();
    assert!(detail.contains("force"), "event detail {detail:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_phases_set_with_ctl() {
    let users = Users::start("cp_restart", "expand", "planned").await;
    users.backfill().await;
    users.proxy.set_phase(RENAME, "switch").await;
    let before = recorded(&users.proxy, &users.direct).await;
    let events: Vec<i64> = users
        .direct
        .query("SELECT id FROM pgshift.events ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(events.len() >= 3, "define, expand, switch: {events:?}");
    // The same config text: the file still says expand / planned.
    let config = users.config("expand", "planned");
    assert!(config.to_toml().contains("phase = \"expand\""));
    let Users {
        proxy, direct, db, ..
    } = users;
    drop(proxy); // SIGKILL: no graceful anything.

    let proxy = config.spawn();
    let status = proxy.ctl(&["status"]).await;
    assert_eq!(entry(&status, RENAME)["phase"], "switch", "{status}");
    assert_eq!(entry(&status, TYPE_CHANGE)["phase"], "planned", "{status}");
    assert!(
        status["epoch"].as_u64() >= Some(before.status_epoch),
        "{status}"
    );
    assert_eq!(status["config_error"], Value::Null, "{status}");
    let phases: Vec<(String, String)> = direct
        .query(
            "SELECT name, phase FROM pgshift.migrations ORDER BY name",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        phases,
        [
            (TYPE_CHANGE.to_owned(), "planned".to_owned()),
            (RENAME.to_owned(), "switch".to_owned())
        ]
    );

    // Reads behave as switch: the old name is served from the new side.
    direct
        .batch_execute("UPDATE users SET display_name = 'from the new side' WHERE id = 1")
        .await
        .unwrap();
    let app = connect(&proxy.db_url(&db)).await;
    let name: String = app
        .query_one("SELECT user_name FROM users WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "from the new side");

    // The history survived, and nothing moved the migration away from switch.
    let ids: Vec<i64> = direct
        .query("SELECT id FROM pgshift.events ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        events.iter().all(|id| ids.contains(id)),
        "{events:?} ⊄ {ids:?}"
    );
    let last_to: Option<String> = direct
        .query_one(
            "SELECT to_phase FROM pgshift.events WHERE migration = $1 ORDER BY id DESC LIMIT 1",
            &[&RENAME],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(last_to.as_deref(), Some("switch"));
}

type ReplyLines = tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>;

/// The next reply line, which must be one JSON object.
async fn next_reply(lines: &mut ReplyLines) -> Value {
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("a reply within 30 s")
        .expect("read the admin socket")
        .expect("a reply line, not the end of the connection");
    let reply: Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("a reply line is not JSON ({e}): {line:?}"));
    assert!(reply.is_object(), "{line}");
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_socket_answers_each_line_and_survives_bad_commands() {
    let users = Users::start("cp_socket", "expand", "planned").await;
    let socket = users.proxy.admin_socket();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "mode of {}: {mode:o}", socket.display());

    let (rd, mut wr) = UnixStream::connect(&socket).await.unwrap().into_split();
    let mut lines = BufReader::new(rd).lines();
    wr.write_all(b"frobnicate\nphase x\nstatus\n")
        .await
        .unwrap();
    for bad in ["frobnicate", "phase"] {
        let reply = next_reply(&mut lines).await;
        assert_eq!(reply["ok"], false, "{bad}: {reply}");
        let error = reply["error"].as_str().unwrap_or_default();
        assert!(error.contains(bad), "{bad}: {reply}");
    }
    let mut status = next_reply(&mut lines).await;
    // Ask again on the same connection until this instance's heartbeat is recorded.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert_eq!(status["ok"], true, "{status}");
        let me = status["instance"].as_str().expect("instance").to_owned();
        let listed = status["instances"]
            .as_array()
            .expect("instances")
            .iter()
            .any(|i| i["id"] == me.as_str());
        if listed {
            break;
        }
        assert!(Instant::now() < deadline, "{me} never listed: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        wr.write_all(b"status\n").await.unwrap();
        status = next_reply(&mut lines).await;
    }
    assert!(!status["instance"].as_str().unwrap().is_empty());
    let epoch = status["epoch"].as_u64().expect("epoch");
    assert!(status.get("config_error") == Some(&Value::Null), "{status}");
    let migrations = status["migrations"].as_array().expect("migrations");
    let listed: Vec<&str> = migrations
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(listed, [RENAME, TYPE_CHANGE]);
    for (m, phase) in migrations.iter().zip(["expand", "planned"]) {
        assert_eq!(m["phase"], phase, "{m}");
        assert!(m["epoch"].as_u64().is_some_and(|e| e <= epoch), "{m}");
        assert!(m["backfill"]["state"].is_string(), "{m}");
        assert!(m["verify"]["state"].is_string(), "{m}");
        assert!(m["old_name_statements_5m"].is_u64(), "{m}");
    }
    for i in status["instances"].as_array().unwrap() {
        assert!(i["id"].is_string(), "{i}");
        assert!(i["acked_epoch"].is_u64(), "{i}");
        assert!(i["last_seen_s"].is_number(), "{i}");
    }

    // Nothing more was sent than one line per command: end the connection and read to EOF.
    wr.shutdown().await.unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("the server ends the connection")
        .expect("read the admin socket");
    assert_eq!(rest, None, "an extra reply line");

    // A line longer than 4096 bytes gets an error, then the connection is closed.
    let (rd, mut wr) = UnixStream::connect(&socket).await.unwrap().into_split();
    let mut lines = BufReader::new(rd).lines();
    wr.write_all(&[b'x'; 5000]).await.unwrap();
    let reply = next_reply(&mut lines).await;
    assert_eq!(reply["ok"], false, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap_or_default()
            .contains("longer")
    );
    let rest = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("the server ends the connection");
    assert!(matches!(rest, Ok(None) | Err(_)), "{rest:?}");
}

/// `ctl connections` as a table: `(epoch in force, EPOCH cell of application_name's row)`.
async fn connections_table(proxy: &Proxy, application_name: &str) -> (String, String) {
    let out = proxy.ctl_output(&[], &["connections"]).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let in_force = stdout
        .lines()
        .find_map(|l| l.strip_prefix("epoch in force: "))
        .unwrap_or_else(|| panic!("no epoch in force:\n{stdout}"))
        .trim()
        .to_owned();
    let header = stdout
        .lines()
        .find(|l| l.starts_with("ID "))
        .unwrap_or_else(|| panic!("no header:\n{stdout}"));
    let column = header
        .find(" EPOCH ")
        .unwrap_or_else(|| panic!("no EPOCH column:\n{stdout}"))
        + 1;
    let row = stdout
        .lines()
        .find(|l| l.contains(application_name))
        .unwrap_or_else(|| panic!("no session of {application_name}:\n{stdout}"));
    let cell = row
        .get(column..)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no EPOCH cell in {row:?}:\n{stdout}"))
        .to_owned();
    (in_force, cell)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_prints_tables_and_reports_errors() {
    let users = Users::start("cp_human", "expand", "planned").await;
    let proxy = &users.proxy;

    let out = proxy.ctl_output(&[], &["status"]).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.lines().any(|l| l.starts_with("MIGRATION ")),
        "{stdout}"
    );
    for (name, phase) in [(RENAME, "expand"), (TYPE_CHANGE, "planned")] {
        let shown = stdout.lines().any(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.first() == Some(&name) && words.contains(&phase)
        });
        assert!(shown, "no row {name} … {phase}:\n{stdout}");
    }

    // A client's session and the epoch its last transaction used.
    let app = connect(&format!(
        "{}?application_name=cp_human_app",
        users.app_url()
    ))
    .await;
    app.simple_query("SELECT display_name FROM users WHERE id = 1")
        .await
        .unwrap();
    let epoch = proxy.ctl(&["status"]).await["epoch"].to_string();
    assert_eq!(
        connections_table(proxy, "cp_human_app").await,
        (epoch.clone(), epoch.clone())
    );
    let reply = proxy.ctl(&["phase", TYPE_CHANGE, "expand"]).await;
    assert_eq!(reply["ok"], true, "{reply}");
    let flipped = reply["epoch"].to_string();
    assert_ne!(flipped, epoch);
    assert_eq!(
        connections_table(proxy, "cp_human_app").await,
        (flipped.clone(), epoch),
        "an idle session shows the epoch of its last transaction"
    );
    app.simple_query("SELECT 1").await.unwrap();
    assert_eq!(
        connections_table(proxy, "cp_human_app").await,
        (flipped.clone(), flipped)
    );

    // --config finds the socket in the file.
    let config = proxy.config_path();
    let out = pgshift_ctl(&["--config".as_ref(), config.as_os_str(), "status".as_ref()]).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("MIGRATION"), "{stdout}");
    assert!(stdout.contains(RENAME), "{stdout}");

    // A refusal: the reason on stderr, exit status 1.
    let out = proxy.ctl_output(&[], &["phase", RENAME, "contract"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(text(&out.stdout), "");
    assert!(text(&out.stderr).contains("skips a phase"), "{out:?}");

    // Nobody listening: a missing socket, and a stale socket file.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sock");
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    for socket in [&missing, &stale] {
        let out = pgshift_ctl(&["--socket".as_ref(), socket.as_os_str(), "status".as_ref()]).await;
        assert!(!out.status.success(), "{out:?}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(&socket.display().to_string()),
            "the error names {}: {stderr}",
            socket.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_statements_using_old_names() {
    let users = Users::start("cp_old_names", "expand", "planned").await;
    let proxy = &users.proxy;
    let count = |status: &Value| {
        entry(status, RENAME)["old_name_statements_5m"]
            .as_u64()
            .unwrap_or_else(|| panic!("no count in {status}"))
    };
    let before = count(&proxy.ctl(&["status"]).await);
    let app = users.app().await;
    for id in 1..=4 {
        app.simple_query(&format!("SELECT user_name FROM users WHERE id = {id}"))
            .await
            .unwrap();
    }
    let after = count(&proxy.ctl(&["status"]).await);
    assert!(after >= before + 4, "{before} → {after}");

    // Statements using only the new names are not counted.
    for id in 1..=3 {
        app.simple_query(&format!("SELECT display_name FROM users WHERE id = {id}"))
            .await
            .unwrap();
    }
    assert_eq!(count(&proxy.ctl(&["status"]).await), after);
}

/// An old application version typically prepares its statements once per connection and
/// executes them for hours; those executions are what tells an operator it is still running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_executions_of_prepared_statements_using_old_names() {
    let users = Users::start("cp_old_prepared", "expand", "planned").await;
    let proxy = &users.proxy;
    let app = users.app().await;
    let statement = app
        .prepare("SELECT user_name FROM users WHERE id = $1")
        .await
        .unwrap();
    let count = |status: &Value| entry(status, RENAME)["old_name_statements_5m"].as_u64();
    let before = count(&proxy.ctl(&["status"]).await).expect("a count");
    for id in 1..=5 {
        app.query(&statement, &[&id]).await.unwrap();
    }
    let after = count(&proxy.ctl(&["status"]).await).expect("a count");
    assert!(after >= before + 5, "5 executions: {before} → {after}");
}

async fn has_column(direct: &Client, column: &str) -> bool {
    direct
        .query_one(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'public.users'::regclass \
             AND attname = $1 AND attnum > 0 AND NOT attisdropped",
            &[&column],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_runs_complete_sql_and_is_final() {
    let (db, direct) = fresh_database_with(
        "cp_complete",
        "CREATE TABLE users (id int PRIMARY KEY, user_name text);
         INSERT INTO users VALUES (1, 'ann'), (2, 'bob');",
    )
    .await;
    let proxy = rename_in_contract(&db, &direct).await;
    assert!(has_column(&direct, "user_name").await);

    let reply = proxy.ctl(&["complete", RENAME]).await;
    assert_eq!(
        (&reply["ok"], &reply["from"], &reply["phase"]),
        (&true.into(), &"contract".into(), &"complete".into()),
        "{reply}\nlog:\n{}",
        proxy.log()
    );
    assert!(!has_column(&direct, "user_name").await, "complete_sql ran");
    assert!(has_column(&direct, "display_name").await);
    assert_eq!(proxy.phase(RENAME).await, "complete");
    let phase: String = direct
        .query_one(
            "SELECT phase FROM pgshift.migrations WHERE name = $1",
            &[&RENAME],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(phase, "complete");

    // Served as in contract: either name reads the new side, old-name writes land there.
    let app = connect(&proxy.db_url(&db)).await;
    let row = app
        .query_one(
            "SELECT user_name, display_name FROM users WHERE id = 1",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{}", common::describe_error(&e)));
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("ann".into(), "ann".into())
    );
    app.execute(
        "INSERT INTO users (id, user_name) VALUES ($1, $2)",
        &[&3i32, &"cy"],
    )
    .await
    .unwrap_or_else(|e| panic!("{}", common::describe_error(&e)));
    let written: String = direct
        .query_one("SELECT display_name FROM users WHERE id = 3", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(written, "cy");

    // Final: neither rollback nor any phase moves it, and the refusals change nothing.
    let before = recorded(&proxy, &direct).await;
    for args in [
        &["rollback", RENAME][..],
        &["phase", RENAME, "contract"][..],
    ] {
        let error = refused(&proxy, args).await;
        assert!(error.contains("final"), "ctl {args:?}: {error}");
        assert_eq!(recorded(&proxy, &direct).await, before, "ctl {args:?}");
    }
}
