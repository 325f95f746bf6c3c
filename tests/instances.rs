//! Several pgshift instances on one database (DESIGN §3.4, §3.5): a phase changed through one
//! is in force on the other within two seconds (by `NOTIFY`, also after the listening
//! connection was killed); a gate that needs every instance's acknowledgment waits for an
//! instance whose client is still inside a transaction begun under the old epoch, names that
//! session when it gives up, and passes once the transaction ends; an instance that stops
//! heart-beating stops counting once its lease expires.

mod common;

use std::time::Duration;

use common::users::{RENAME, TYPE_CHANGE};
use common::{Proxy, ProxyConfig, TestDb, cluster, connect, eventually, fresh_database};
use tokio_postgres::Client;

/// The users table of the column tests, both migrations planned, and `[control]` timings
/// short enough for a test: heartbeats every 100 ms, a 2 s lease, gates give up after 2 s.
fn config(db: &str, poll: &str) -> ProxyConfig {
    let toml = common::users::migrations_toml(db, "planned", "planned").replace(
        "[control]\nuser = \"postgres\"\n",
        &format!(
            "[control]\nuser = \"postgres\"\nheartbeat_interval = \"100ms\"\n\
             instance_lease = \"2s\"\nack_timeout = \"2s\"\npoll_interval = \"{poll}\"\n"
        ),
    );
    assert!(
        toml.contains("ack_timeout"),
        "the [control] table was found"
    );
    ProxyConfig::new(cluster()).extra(&toml)
}

async fn users_table(hint: &str) -> (TestDb, Client) {
    let db = fresh_database(hint).await;
    let direct = db.connect().await;
    direct
        .batch_execute(
            "CREATE TABLE users (id int PRIMARY KEY, user_name text, age text);
             INSERT INTO users VALUES (1, 'ann', '31');",
        )
        .await
        .unwrap();
    (db, direct)
}

async fn epoch(proxy: &Proxy) -> u64 {
    proxy.ctl(&["status"]).await["epoch"].as_u64().unwrap()
}

/// Waits (up to `limit`) until `proxy` serves `epoch`.
async fn serves(proxy: &Proxy, epoch: u64, limit: Duration) {
    eventually(
        limit,
        &format!("the instance serves epoch {epoch}"),
        || async { (self::epoch(proxy).await >= epoch).then_some(()) },
    )
    .await;
}

async fn display_name(direct: &Client, id: i32) -> Option<String> {
    direct
        .query_one("SELECT display_name FROM users WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0)
}

fn signal(proxy: &Proxy, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &proxy.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flip_through_one_instance_is_in_force_on_the_other_within_two_seconds() {
    let (db, direct) = users_table("inst_flip").await;
    // A long poll: only the notification can be this fast.
    let a = config(&db.name, "60s").spawn();
    let b = config(&db.name, "60s").spawn();
    let on_b = connect(&b.db_url(&db)).await;

    let reply = a.ctl(&["phase", RENAME, "expand"]).await;
    assert_eq!(reply["ok"], true, "{reply}");
    let flipped = reply["epoch"].as_u64().unwrap();
    serves(&b, flipped, Duration::from_secs(2)).await;
    on_b.execute("INSERT INTO users (id, user_name) VALUES (2, 'bob')", &[])
        .await
        .unwrap();
    assert_eq!(display_name(&direct, 2).await.as_deref(), Some("bob"));

    // Both instances are recorded, each acknowledging the epoch it serves (the heartbeat
    // follows within a tick).
    eventually(
        Duration::from_secs(1),
        "both instances acknowledge",
        || async {
            let status = b.ctl(&["status"]).await;
            let instances = status["instances"].as_array().unwrap().clone();
            (instances.len() == 2
                && instances
                    .iter()
                    .all(|i| i["live"] == true && i["acked_epoch"].as_u64() == Some(flipped)))
            .then_some(())
        },
    )
    .await;

    // The listening connection is killed: the instance listens again and still follows.
    direct
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'pgshift listen' AND datname = current_database()",
        )
        .await
        .unwrap();
    let reply = a.ctl(&["phase", TYPE_CHANGE, "expand"]).await;
    assert_eq!(reply["ok"], true, "{reply}");
    serves(&b, reply["epoch"].as_u64().unwrap(), Duration::from_secs(2)).await;
    on_b.execute("INSERT INTO users (id, age) VALUES (3, '7')", &[])
        .await
        .unwrap();
    let age_int: Option<i32> = direct
        .query_one("SELECT age_int FROM users WHERE id = 3", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(age_int, Some(7));
}

/// Two instances with the rename in switch on both, and a client of B inside a transaction it
/// began while the rename was still in expand.
struct Holdout {
    db: TestDb,
    a: Proxy,
    b: Proxy,
    client: Client,
    switch_epoch: u64,
}

async fn holdout(hint: &str) -> Holdout {
    let (db, _direct) = users_table(hint).await;
    let a = config(&db.name, "1s").spawn();
    let b = config(&db.name, "1s").spawn();
    a.set_phase(RENAME, "expand").await;
    serves(&b, epoch(&a).await, Duration::from_secs(2)).await;
    let url = format!("{}?application_name=old-tx-app", b.db_url(&db));
    let client = connect(&url).await;
    client
        .batch_execute("BEGIN; SELECT user_name FROM users")
        .await
        .unwrap();
    a.set_phase(RENAME, "switch").await;
    let switch_epoch = epoch(&a).await;
    serves(&b, switch_epoch, Duration::from_secs(2)).await;
    Holdout {
        db,
        a,
        b,
        client,
        switch_epoch,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_waits_for_an_instance_with_a_transaction_from_before_switch() {
    let h = holdout("inst_ack").await;
    let b_id = h.b.ctl(&["status"]).await["instance"]
        .as_str()
        .unwrap()
        .to_owned();

    // B's session shows the epoch its transaction runs under.
    let connections = h.b.ctl(&["connections"]).await;
    let session = connections["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["application_name"] == "old-tx-app")
        .cloned()
        .unwrap_or_else(|| panic!("no old-tx-app session: {connections}"));
    assert!(
        session["epoch"].as_u64().unwrap() < h.switch_epoch,
        "{session}"
    );
    assert_eq!(session["state"], "idle in transaction", "{session}");

    let refused = h.a.ctl(&["phase", RENAME, "contract"]).await;
    assert_eq!(refused["ok"], false, "{refused}");
    let message = refused["error"].as_str().unwrap();
    for part in [
        b_id.as_str(),
        "old-tx-app",
        "127.0.0.1:",
        "transaction open",
    ] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
    assert_eq!(h.a.phase(RENAME).await, "switch");

    // The gate passes once the transaction ends, while the request is waiting.
    let waiting = {
        let socket = h.a.admin_socket();
        tokio::spawn(async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_pgshift"))
                .arg("ctl")
                .arg("--socket")
                .arg(socket)
                .args(["--json", "phase", RENAME, "contract"])
                .output()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.client.batch_execute("COMMIT").await.unwrap();
    let out = waiting.await.unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(h.b.phase(RENAME).await, "contract");
    drop(h.db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_stops_heart_beating_stops_counting_after_its_lease() {
    let h = holdout("inst_lease").await;
    signal(&h.b, "-STOP");
    // A frozen instance still counts until its lease (2 s) runs out; the 2 s gate may or
    // may not outlast it, but a request made after the lease passes.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let status = h.a.ctl(&["status"]).await;
    let expired = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["live"] == false)
        .count();
    let reply = h.a.ctl(&["phase", RENAME, "contract"]).await;
    signal(&h.b, "-CONT");
    assert_eq!(expired, 1, "{status}");
    assert_eq!(reply["ok"], true, "{reply}");
    drop(h.client);
}
