//! Config hot reload (DESIGN §3.5) through the real binary: the file watch (in-place writes,
//! editors' write-then-rename, Kubernetes ConfigMap `..data` symlink swaps), SIGHUP and
//! `pgshift ctl reload`. An invalid file changes nothing and shows in `ctl status`; a reload
//! applies a migration's phase only when the file's value changed, through the same gates as
//! `ctl phase`.
//!
//! Each watch test gives the proxy [`PICKUP`] to notice a change, with no signal or command,
//! and asks `ctl status` once before editing (pgshift prints its ready line before the watch
//! and the SIGHUP handler are in place; the last two tests are about that window).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use common::users::{RENAME, TYPE_CHANGE, Users, migrations_toml, rename_toml};
use common::{
    Proxy, ProxyConfig, cluster, connect, control_toml, eventually, fresh_database,
    fresh_database_with, toml_str,
};
use serde_json::Value;

/// How long a file change may take to be in force.
const PICKUP: Duration = Duration::from_secs(2);

/// `config`'s text with `socket` as the admin socket (what `Proxy::write_config` writes), for
/// tests that put the file in place themselves.
fn text_with_socket(config: &ProxyConfig, socket: &Path) -> String {
    let socket = toml_str(&socket.display().to_string());
    config
        .to_toml()
        .replacen("[admin]\n", &format!("[admin]\nsocket = {socket}\n"), 1)
}

/// `pgshift_config_reloads_total{result="…"}` (0 before the first such reload).
fn reloads(metrics: &str, result: &str) -> u64 {
    let prefix = format!("pgshift_config_reloads_total{{result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// `migration`'s entry of a `status` reply.
fn migration<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["migrations"]
        .as_array()
        .and_then(|all| all.iter().find(|m| m["name"] == name))
        .unwrap_or_else(|| panic!("no migration {name} in {status}"))
}

/// Polls `status` (from `ask`) until `done` holds, for at most [`PICKUP`]. A reply may be
/// taken while a reload is under way, so callers wait for every field they check.
async fn await_status<F, Fut>(ask: F, what: &str, done: impl Fn(&Value) -> bool) -> Value
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Value>,
{
    eventually(PICKUP, what, || async {
        let status = ask().await;
        done(&status).then_some(status)
    })
    .await
}

/// Polls until migration `name` is in `phase` with no config error shown.
async fn await_phase<F, Fut>(ask: F, name: &str, phase: &str) -> Value
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Value>,
{
    await_status(ask, &format!("{name} in {phase}"), |status| {
        migration(status, name)["phase"] == phase && status["config_error"].is_null()
    })
    .await
}

/// Polls until `config_error` contains `needle`.
async fn await_config_error<F, Fut>(ask: F, needle: &str) -> Value
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Value>,
{
    await_status(ask, &format!("a config_error with {needle:?}"), |status| {
        let error = status["config_error"].as_str().unwrap_or_default();
        error.contains(needle)
    })
    .await
}

/// Polls until `pgshift_config_reloads_total{result}` is above `before` (it is counted just
/// after the reload's effects show in `status`).
async fn await_reloads(proxy: &Proxy, result: &str, before: u64) -> u64 {
    let what = format!("pgshift_config_reloads_total{{result={result:?}}} above {before}");
    eventually(PICKUP, &what, || async {
        let now = reloads(&proxy.metrics_text().await, result);
        (now > before).then_some(now)
    })
    .await
}

fn sighup(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -HUP {pid} failed");
}

/// An INSERT under the old name through the proxy; returns `(user_name, display_name)` as
/// stored.
async fn insert_old_name(users: &Users, id: i32) -> (Option<String>, Option<String>) {
    let app = users.app().await;
    app.execute(
        "INSERT INTO users (id, user_name) VALUES ($1, 'zed')",
        &[&id],
    )
    .await
    .unwrap();
    let row = users
        .direct
        .query_one(
            "SELECT user_name, display_name FROM users WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

fn dual_written() -> (Option<String>, Option<String>) {
    (Some("zed".into()), Some("zed".into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_place_edit_of_the_phase_is_picked_up() {
    let users = Users::start("hot_reload_in_place", "planned", "planned").await;
    let proxy = &users.proxy;
    let epoch = proxy.ctl(&["status"]).await["epoch"].as_u64().unwrap();

    proxy.write_config(&users.config("expand", "planned"));
    let status = await_phase(|| proxy.ctl(&["status"]), RENAME, "expand").await;

    let moved_at = migration(&status, RENAME)["epoch"].as_u64().unwrap();
    assert!(moved_at > epoch, "{status}");
    assert_eq!(proxy.try_exit(), None, "no restart");
    assert_eq!(await_reloads(proxy, "ok", 0).await, 1);
    assert_eq!(
        insert_old_name(&users, 10).await,
        dual_written(),
        "an INSERT dual-writes after the reload"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_editors_write_then_rename_is_picked_up() {
    let users = Users::start("hot_reload_rename", "planned", "planned").await;
    let proxy = &users.proxy;
    assert_eq!(proxy.phase(RENAME).await, "planned");
    let path = proxy.config_path();
    let temp = path.with_file_name(".pgshift.toml.swp");

    let text = text_with_socket(&users.config("expand", "planned"), &proxy.admin_socket());
    std::fs::write(&temp, text).unwrap();
    std::fs::rename(&temp, &path).unwrap();
    await_phase(|| proxy.ctl(&["status"]), RENAME, "expand").await;

    assert_eq!(insert_old_name(&users, 11).await, dual_written());
}

/// `pgshift serve` started by hand (the harness always starts it on a plain file); killed on
/// drop.
struct Served {
    child: Child,
    admin_socket: PathBuf,
    log: PathBuf,
}

impl Served {
    /// Starts `pgshift serve --config config` and waits for its ready line.
    fn start(config: &Path, log: PathBuf) -> Served {
        let stderr = std::fs::File::create(&log).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pgshift"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn pgshift serve");
        let rx = common::proxy::read_first_line(child.stdout.take().unwrap());
        let mut served = Served {
            child,
            admin_socket: PathBuf::new(),
            log,
        };
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no ready line; log:\n{}", served.log()));
        let ready: Value = serde_json::from_str(&line).unwrap();
        for key in ["listen", "metrics_listen", "admin_socket"] {
            assert!(ready[key].is_string(), "ready line lacks {key}: {line}");
        }
        served.admin_socket = PathBuf::from(ready["admin_socket"].as_str().unwrap());
        served
    }

    /// `pgshift ctl --socket … --json status`.
    async fn status(&self) -> Value {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgshift"))
            .arg("ctl")
            .arg("--socket")
            .arg(&self.admin_socket)
            .args(["--json", "status"])
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("ctl status: {e}: {stderr}"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- pgshift log ---\n{}", self.log());
        }
    }
}

/// What the kubelet does on a ConfigMap update: the new file in a new timestamped directory,
/// a new symlink renamed over `..data`, the old directory removed.
fn swap_configmap(mount: &Path, old: &str, new: &str, text: &str) {
    std::fs::create_dir(mount.join(new)).unwrap();
    std::fs::write(mount.join(new).join("pgshift.toml"), text).unwrap();
    std::os::unix::fs::symlink(new, mount.join("..data_tmp")).unwrap();
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    std::fs::remove_dir_all(mount.join(old)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_symlink_swap_is_picked_up() {
    let db = fresh_database("hot_reload_configmap").await;
    let direct = db.connect().await;
    direct
        .batch_execute("CREATE TABLE users (id int PRIMARY KEY, user_name text, age text)")
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let mount = tempfile::tempdir().unwrap();
    let m = mount.path();
    let socket = work.path().join("admin.sock");
    let config = |rename: &str| {
        let toml = migrations_toml(&db.name, rename, "planned");
        text_with_socket(&ProxyConfig::new(cluster()).extra(&toml), &socket)
    };
    // The kubelet's layout: pgshift.toml -> ..data/pgshift.toml, ..data -> ..2026_01.
    std::fs::create_dir(m.join("..2026_01")).unwrap();
    std::fs::write(m.join("..2026_01/pgshift.toml"), config("planned")).unwrap();
    std::os::unix::fs::symlink("..2026_01", m.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/pgshift.toml", m.join("pgshift.toml")).unwrap();
    let served = Served::start(&m.join("pgshift.toml"), work.path().join("pgshift.log"));
    let before = served.status().await;
    assert_eq!(migration(&before, RENAME)["phase"], "planned", "{before}");

    swap_configmap(m, "..2026_01", "..2026_02", &config("expand"));
    let after = await_phase(|| served.status(), RENAME, "expand").await;
    let moved_at = migration(&after, RENAME)["epoch"].as_u64().unwrap();
    assert!(moved_at > before["epoch"].as_u64().unwrap(), "{after}");
    let columns: i64 = direct
        .query_one(
            "SELECT count(*) FROM information_schema.columns \
             WHERE table_name = 'users' AND column_name = 'display_name'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(columns, 1, "expand_sql ran");

    // The next update is followed too (the first target directory is gone by now).
    swap_configmap(m, "..2026_02", "..2026_03", &config("planned"));
    await_phase(|| served.status(), RENAME, "planned").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_changes_nothing_until_it_is_fixed() {
    let users = Users::start("hot_reload_invalid", "planned", "planned").await;
    let proxy = &users.proxy;
    let app = users.app().await;
    let epoch = proxy.ctl(&["status"]).await["epoch"].clone();
    let socket = proxy.admin_socket();
    // The broken files also ask for expand: none of them may get it.
    let asks_expand = users.config("expand", "planned");
    let zero_connections = asks_expand.clone().max_client_connections(0);
    let unknown_key = asks_expand.clone().proxy_key("listen_bakclog", "5");
    let broken = [
        ("[proxy\nlisten = ".to_owned(), "invalid config file"),
        (
            text_with_socket(&zero_connections, &socket),
            "max_client_connections",
        ),
        (text_with_socket(&unknown_key, &socket), "listen_bakclog"),
    ];

    for (text, problem) in broken {
        let errors = reloads(&proxy.metrics_text().await, "error");
        std::fs::write(proxy.config_path(), &text).unwrap();
        let status = await_config_error(|| proxy.ctl(&["status"]), problem).await;

        assert_eq!(status["epoch"], epoch, "{problem}: {status}");
        assert_eq!(migration(&status, RENAME)["phase"], "planned", "{status}");
        await_reloads(proxy, "error", errors).await;
        let reply = proxy.ctl(&["reload"]).await;
        assert_eq!(reply["ok"], false, "{reply}");
        let error = reply["error"].as_str().unwrap_or_default();
        assert!(error.contains(problem), "{reply}");
        // Old and new clients are served as before.
        app.simple_query("SELECT user_name FROM users")
            .await
            .unwrap();
        let fresh = connect(&proxy.db_url(&users.db)).await;
        fresh.simple_query("SELECT 1").await.unwrap();
        let status = proxy.ctl(&["status"]).await;
        assert_eq!(status["epoch"], epoch, "{problem}: {status}");
        assert_eq!(migration(&status, RENAME)["phase"], "planned", "{status}");
    }

    let ok = reloads(&proxy.metrics_text().await, "ok");
    proxy.write_config(&asks_expand);
    await_phase(|| proxy.ctl(&["status"]), RENAME, "expand").await;
    await_reloads(proxy, "ok", ok).await;
    assert_eq!(insert_old_name(&users, 12).await, dual_written());
    app.simple_query("SELECT display_name FROM users")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_only_the_phases_the_file_changed() {
    let users = Users::start("hot_reload_changed_only", "expand", "planned").await;
    let proxy = &users.proxy;
    let reply = proxy.ctl(&["phase", RENAME, "switch", "force"]).await;
    assert_eq!(reply["ok"], true, "{reply}");

    // A comment: the file still says expand, so the switch set with ctl stays.
    let text = text_with_socket(&users.config("expand", "planned"), &proxy.admin_socket());
    std::fs::write(proxy.config_path(), text + "# reviewed\n").unwrap();
    let reply = proxy.ctl(&["reload"]).await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(proxy.phase(RENAME).await, "switch");

    // The other migration's value changed: only that one moves.
    proxy.write_config(&users.config("expand", "expand"));
    let status = await_phase(|| proxy.ctl(&["status"]), TYPE_CHANGE, "expand").await;
    assert_eq!(migration(&status, RENAME)["phase"], "switch", "{status}");

    // expand → planned in the file is a real request; from switch it skips a phase.
    let errors = reloads(&proxy.metrics_text().await, "error");
    proxy.write_config(&users.config("planned", "expand"));
    let status = await_config_error(|| proxy.ctl(&["status"]), "switch → planned").await;
    let error = status["config_error"].as_str().unwrap();
    assert!(error.contains(RENAME), "{error}");
    assert_eq!(migration(&status, RENAME)["phase"], "switch", "{status}");
    let other = &migration(&status, TYPE_CHANGE)["phase"];
    assert_eq!(other, "expand", "{status}");
    await_reloads(proxy, "error", errors).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads() {
    let users = Users::start("hot_reload_sighup", "planned", "planned").await;
    let proxy = &users.proxy;
    assert_eq!(proxy.phase(RENAME).await, "planned");

    // With the file unchanged the watch has nothing to do: only the signal reloads.
    sighup(proxy.pid());
    assert_eq!(await_reloads(proxy, "ok", 0).await, 1);
    assert_eq!(proxy.try_exit(), None, "SIGHUP must not end pgshift");
    assert_eq!(proxy.phase(RENAME).await, "planned");

    proxy.write_config(&users.config("expand", "planned"));
    sighup(proxy.pid());
    await_phase(|| proxy.ctl(&["status"]), RENAME, "expand").await;
    assert_eq!(proxy.try_exit(), None);
    assert_eq!(insert_old_name(&users, 13).await, dual_written());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_requested_switch_without_verify_is_refused() {
    let users = Users::start("hot_reload_gate", "expand", "planned").await;
    let proxy = &users.proxy;
    let before = proxy.ctl(&["status"]).await;
    let errors = reloads(&proxy.metrics_text().await, "error");

    proxy.write_config(&users.config("switch", "planned"));
    let status = await_config_error(|| proxy.ctl(&["status"]), "verify").await;
    let error = status["config_error"].as_str().unwrap();
    assert!(error.contains(RENAME), "{error}");
    assert!(error.contains("expand → switch"), "{error}");
    assert_eq!(migration(&status, RENAME)["phase"], "expand", "{status}");
    assert_eq!(status["epoch"], before["epoch"], "{status}");
    await_reloads(proxy, "error", errors).await;
    // The request was made by the load that saw the file's value change (DESIGN §3.5): a
    // reload of the same file does not ask again, and the file's value stays visible.
    let reply = proxy.ctl(&["reload"]).await;
    assert_eq!(reply["ok"], true, "{reply}");
    let status = proxy.ctl(&["status"]).await;
    assert_eq!(migration(&status, RENAME)["phase"], "expand", "{status}");
    assert_eq!(
        migration(&status, RENAME)["file_phase"],
        "switch",
        "{status}"
    );

    // Once the operator forces the move, the file asks for what is in force: no error left.
    let reply = proxy.ctl(&["phase", RENAME, "switch", "force"]).await;
    assert_eq!(reply["ok"], true, "{reply}");
    let reply = proxy.ctl(&["reload"]).await;
    assert_eq!(reply["ok"], true, "{reply}");
    let status = proxy.ctl(&["status"]).await;
    assert_eq!(status["config_error"], Value::Null, "{status}");
    assert_eq!(migration(&status, RENAME)["phase"], "switch", "{status}");
}

/// How many fresh proxies the start-up races below try (each loses only now and then).
const START_RACE_TRIES: usize = 10;

/// The ready line is printed before the file watch is installed: an edit made right after it
/// must still be picked up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_right_after_the_ready_line_is_picked_up() {
    for attempt in 0..START_RACE_TRIES {
        let proxy = Proxy::start();
        let text = std::fs::read_to_string(proxy.config_path()).unwrap();
        std::fs::write(proxy.config_path(), text + "# edited\n").unwrap();
        let what = format!("attempt {attempt}: the edit reloaded");
        eventually(PICKUP, &what, || async {
            (reloads(&proxy.metrics_text().await, "ok") == 1).then_some(())
        })
        .await;
    }
}

/// The ready line is printed before the SIGHUP handler is installed: a SIGHUP right after it
/// must reload, not end the process (SIGHUP's default action).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_right_after_the_ready_line_reloads() {
    for attempt in 0..START_RACE_TRIES {
        let proxy = Proxy::start();
        sighup(proxy.pid());
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(status) = proxy.try_exit() {
            panic!("attempt {attempt}: SIGHUP ended pgshift: {status}");
        }
        let what = format!("attempt {attempt}: SIGHUP reloaded");
        eventually(PICKUP, &what, || async {
            (reloads(&proxy.metrics_text().await, "ok") == 1).then_some(())
        })
        .await;
    }
}

/// Removing a completed migration from the file takes effect at the reload, not at the next
/// restart: the reload moves the epoch, so the next transaction of an already connected
/// session stops translating the old name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_completed_migration_stops_its_translation_at_the_reload() {
    let users = Users::start("reload_forget", "planned", "planned").await;
    users.set_phases("complete", "planned").await;
    let app = users.app().await;
    app.batch_execute("UPDATE users SET display_name = 'renamed' WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(
        user_name_of_1(&app).await.as_deref(),
        Some("renamed"),
        "translated in complete"
    );
    let epoch = users.proxy.epoch().await;

    let without = ProxyConfig::new(cluster()).extra("\n[control]\nuser = \"postgres\"\n");
    users.proxy.reload(&without).await;
    assert!(
        users.proxy.epoch().await > epoch,
        "the reload moved the epoch"
    );
    // The physical, no longer written user_name answers now, as it would directly.
    assert_eq!(user_name_of_1(&app).await.as_deref(), Some("ann"));
    let events = users.proxy.ctl(&["events", RENAME]).await;
    assert!(
        events["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["action"] == "forget")),
        "{events}"
    );
}

async fn user_name_of_1(app: &tokio_postgres::Client) -> Option<String> {
    app.query_one("SELECT user_name FROM users WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0)
}

/// DDL run outside pgshift on a migrated table (here, after complete: the old column dropped
/// by hand instead of by `complete_sql`, and a column added) is picked up by `ctl reload`:
/// the epoch moves and `SELECT *` through pgshift lists the table's columns as PostgreSQL
/// does, while the old name still answers. A reload with nothing changed keeps the epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rereads_a_table_changed_outside_pgshift() {
    let (db, direct) = fresh_database_with(
        "reload_reshape",
        "CREATE TABLE users (id int PRIMARY KEY, user_name text);
         INSERT INTO users VALUES (1, 'ann');",
    )
    .await;
    let proxy = ProxyConfig::new(cluster())
        .extra(&control_toml())
        .extra(&rename_toml(&db.name, "planned"))
        .spawn();
    proxy.set_phase(RENAME, "expand").await;
    direct
        .batch_execute("UPDATE users SET display_name = user_name")
        .await
        .unwrap();
    proxy.set_phase(RENAME, "complete").await;
    let app = connect(&proxy.db_url(&db)).await;
    assert_eq!(star(&app).await, ["id", "user_name", "display_name"]);

    direct
        .batch_execute(
            "ALTER TABLE users DROP COLUMN user_name; ALTER TABLE users ADD COLUMN email text",
        )
        .await
        .unwrap();
    let before = proxy.epoch().await;
    let reply = proxy.ctl(&["reload"]).await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert!(
        reply.to_string().contains("public.users"),
        "the reload should name the table it re-read: {reply}"
    );
    assert!(proxy.epoch().await > before, "{reply}");

    assert_eq!(star(&app).await, star(&direct).await);
    assert_eq!(star(&app).await, ["id", "display_name", "email"]);
    let old: String = app
        .query_one("SELECT user_name FROM users WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(old, "ann");

    let settled = proxy.epoch().await;
    let reply = proxy.ctl(&["reload"]).await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(proxy.epoch().await, settled, "nothing changed: {reply}");
}

/// The columns `SELECT * FROM users` describes over `client`.
async fn star(client: &tokio_postgres::Client) -> Vec<String> {
    let statement = client.prepare("SELECT * FROM users").await.unwrap();
    statement
        .columns()
        .iter()
        .map(|c| c.name().to_owned())
        .collect()
}
