//! The driver matrix: the scenario of `tests/drivers/SCENARIO.md` run by each driver
//! applications really use, through pgshift, across expand → switch → contract with one
//! connection and its prepared statements kept open across the flips.
//!
//! Programs in other languages run as child processes and ask for phase flips over a
//! line protocol (`flip PHASE` on stdout, `ok` on stdin). A driver whose toolchain is missing
//! is reported as skipped with the reason; under CI (`CI=true`) that is a failure instead,
//! because `.ci/run` installs every toolchain.

mod common;
#[path = "drivers/libpq.rs"]
mod libpq;
#[path = "drivers/rust_sqlx.rs"]
mod rust_sqlx;
#[path = "drivers/rust_tokio_postgres.rs"]
mod rust_tokio_postgres;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::users::Users;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The environment of a scenario run: a fresh database with `users`, pgshift in front with both
/// migrations in expand and existing rows backfilled.
pub struct Scenario {
    pub env: Users,
}

impl Scenario {
    pub async fn start(hint: &str) -> Scenario {
        let env = Users::start(hint, "expand", "expand").await;
        env.backfill().await;
        Scenario { env }
    }

    /// Moves both migrations to `phase`.
    pub async fn flip(&self, phase: &str) {
        self.env.set_phases(phase, phase).await;
    }

    pub fn proxy_url(&self) -> String {
        self.env.app_url()
    }

    pub fn direct_url(&self) -> String {
        self.env.db.url.clone()
    }

    /// Variables every driver program gets (SCENARIO.md).
    fn variables(&self) -> Vec<(&'static str, String)> {
        let cluster = common::cluster();
        vec![
            ("PGSHIFT_URL", self.proxy_url()),
            ("DIRECT_URL", self.direct_url()),
            ("PGSHIFT_HOST", "127.0.0.1".into()),
            ("PGSHIFT_PORT", self.env.proxy.port().to_string()),
            ("DIRECT_PORT", cluster.port().to_string()),
            ("PGDB", self.env.db.name.clone()),
            ("PGUSER_NAME", cluster.superuser().to_owned()),
            (
                "PGPASSWORD_VALUE",
                cluster.superuser_password().unwrap_or_default().to_owned(),
            ),
        ]
    }

    /// After the program: the whole table, checked directly (SCENARIO.md step 7 for every
    /// phase, the deleted rows gone, the original rows untouched).
    pub async fn check_table(&self, driver: &str) {
        let rows: Vec<Row> = self
            .env
            .direct
            .query(
                "SELECT id, user_name, display_name, age, age_int FROM users ORDER BY id",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect();
        assert_eq!(
            rows,
            expected_table(),
            "{driver}: the table after the scenario"
        );
    }
}

/// `(user_name, display_name, age, age_int)` of one row, read directly.
pub type Sides = (Option<String>, Option<String>, Option<String>, Option<i32>);

/// SCENARIO.md step 7: rows `a` and `b` of `phase`, both sides written in expand and switch,
/// only the new side in contract.
pub fn expected_sides(phase: &str) -> Vec<Sides> {
    let s = |v: &str| Some(v.to_owned());
    if phase == "contract" {
        vec![
            (None, s("old-a"), None, Some(9)),
            (None, s("renamed"), None, Some(8)),
        ]
    } else {
        vec![
            (s("old-a"), s("old-a"), s("9"), Some(9)),
            (s("renamed"), s("renamed"), s("8"), Some(8)),
        ]
    }
}

impl Scenario {
    /// SCENARIO.md step 7 on the harness's direct connection.
    pub async fn check_direct(&self, driver: &str, phase: &str, a: i32, b: i32) {
        let rows: Vec<Sides> = self
            .env
            .direct
            .query(
                "SELECT user_name, display_name, age, age_int FROM users WHERE id IN ($1, $2) ORDER BY id",
                &[&a, &b],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        assert_eq!(
            rows,
            expected_sides(phase),
            "{driver} {phase}: the table, read directly"
        );
    }
}

type Row = (
    i32,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i32>,
);

fn expected_table() -> Vec<Row> {
    let s = |v: &str| Some(v.to_owned());
    let mut rows = vec![
        (1, s("ann"), s("ann"), s("31"), Some(31)),
        (2, s("bob"), s("bob"), s("42"), Some(42)),
        (3, s("cy"), s("cy"), s("n/a"), None),
    ];
    for base in [100, 200] {
        rows.push((base + 1, s("old-a"), s("old-a"), s("9"), Some(9)));
        rows.push((base + 2, s("renamed"), s("renamed"), s("8"), Some(8)));
    }
    rows.push((301, None, s("old-a"), None, Some(9)));
    rows.push((302, None, s("renamed"), None, Some(8)));
    rows
}

/// Whether a driver can run here: `Err(reason)` when its toolchain is missing.
type Availability = Result<(), String>;

/// Skips (printing why) when `availability` says the toolchain is missing, except under CI,
/// where every toolchain is installed and a missing one is a failure.
fn skip(driver: &str, availability: Availability) -> bool {
    match availability {
        Ok(()) => false,
        Err(reason) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{driver}: toolchain missing under CI: {reason}"
            );
            eprintln!("SKIPPED driver {driver}: {reason}");
            true
        }
    }
}

/// `program args…` exits 0 (`true` when it does).
async fn succeeds(program: &str, args: &[&str], dir: Option<&Path>) -> bool {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::null());
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    matches!(cmd.status().await, Ok(s) if s.success())
}

fn drivers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drivers")
}

/// Runs a driver program to its end, answering its flip requests; panics with its output
/// when it fails.
async fn run_program(scenario: &Scenario, driver: &str, mut cmd: tokio::process::Command) {
    for (key, value) in scenario.variables() {
        cmd.env(key, value);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{driver}: cannot start: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = child.stderr.take().unwrap();
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await;
        text
    });
    let mut transcript = Vec::new();
    let run = async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            transcript.push(line.clone());
            if let Some(phase) = line.strip_prefix("flip ") {
                scenario.flip(phase.trim()).await;
                stdin.write_all(b"ok\n").await.unwrap();
                stdin.flush().await.unwrap();
            }
        }
        child.wait().await.unwrap()
    };
    let status = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .unwrap_or_else(|_| panic!("{driver}: the program did not finish within 180 s"));
    let errors = errors.await.unwrap();
    assert!(
        status.success(),
        "{driver}: the scenario failed ({status})\nstdout:\n{}\nstderr:\n{errors}\npgshift log:\n{}",
        transcript.join("\n"),
        scenario.env.proxy.log()
    );
    let flips: Vec<&String> = transcript
        .iter()
        .filter(|l| l.starts_with("flip "))
        .collect();
    assert_eq!(flips.len(), 2, "{driver}: flips requested: {flips:?}");
}

async fn python_module(module: &str) -> Availability {
    if !succeeds("python3", &["--version"], None).await {
        return Err("python3 is not installed".into());
    }
    if !succeeds("python3", &["-c", &format!("import {module}")], None).await {
        return Err(format!(
            "Python module {module} is missing (pip install -r tests/drivers/python/requirements.txt)"
        ));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3() {
    if skip("psycopg 3", python_module("psycopg").await) {
        return;
    }
    let scenario = Scenario::start("drv_psycopg").await;
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(drivers_dir().join("python/psycopg_scenario.py"));
    run_program(&scenario, "psycopg 3", cmd).await;
    scenario.check_table("psycopg 3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg() {
    if skip("asyncpg", python_module("asyncpg").await) {
        return;
    }
    let scenario = Scenario::start("drv_asyncpg").await;
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(drivers_dir().join("python/asyncpg_scenario.py"));
    run_program(&scenario, "asyncpg", cmd).await;
    scenario.check_table("asyncpg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres() {
    let dir = drivers_dir().join("node");
    let availability = if !succeeds("node", &["--version"], None).await {
        Err("node is not installed".into())
    } else if !dir.join("node_modules/pg").exists() {
        Err("node_modules/pg is missing (cd tests/drivers/node && npm ci)".into())
    } else {
        Ok(())
    };
    if skip("node-postgres", availability) {
        return;
    }
    let scenario = Scenario::start("drv_node").await;
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(dir.join("scenario.js")).current_dir(&dir);
    run_program(&scenario, "node-postgres", cmd).await;
    scenario.check_table("node-postgres").await;
}

/// The PostgreSQL JDBC driver from Debian's `libpostgresql-jdbc-java`.
const JDBC_JAR: &str = "/usr/share/java/postgresql.jar";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc() {
    let availability = if !succeeds("java", &["-version"], None).await {
        Err("java is not installed (apt-get install default-jdk-headless)".into())
    } else if !Path::new(JDBC_JAR).exists() {
        Err(format!(
            "{JDBC_JAR} is missing (apt-get install libpostgresql-jdbc-java)"
        ))
    } else {
        Ok(())
    };
    if skip("JDBC", availability) {
        return;
    }
    let scenario = Scenario::start("drv_jdbc").await;
    let mut cmd = tokio::process::Command::new("java");
    cmd.arg("-cp")
        .arg(JDBC_JAR)
        .arg(drivers_dir().join("java/Scenario.java"));
    run_program(&scenario, "JDBC", cmd).await;
    scenario.check_table("JDBC").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres() {
    let scenario = Scenario::start("drv_tokio_pg").await;
    rust_tokio_postgres::run(&scenario).await;
    scenario.check_table("tokio-postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx() {
    let scenario = Scenario::start("drv_sqlx").await;
    rust_sqlx::run(&scenario).await;
    scenario.check_table("sqlx").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libpq_psql_and_pgbench() {
    let scenario = Scenario::start("drv_libpq").await;
    libpq::run(&scenario).await;
    scenario.check_table("libpq (psql, pgbench)").await;
}
