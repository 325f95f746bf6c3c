//! The scenario (SCENARIO.md) with libpq's own clients, `psql` and `pgbench`.
//!
//! **psql**: one long-lived `psql` process through pgshift (simple Query protocol), kept open
//! across the flips. It cannot hold protocol-level named statements (`\parse`/`\bind_named`
//! are psql 17), and `EXECUTE` of a SQL-level `PREPARE` is refused by design after a phase
//! change (docs/rewrite.md), so the scenario's statements are sent as SQL text with literal
//! values. Each is followed by `\echo SENTINEL :ROW_COUNT`; the lines before the sentinel are
//! the rows (`-A -t`: `old-a|7`), and `ROW_COUNT` is libpq's `PQcmdTuples`, i.e. what the
//! command tag says. On top, a multi-statement Query (`\;`) mixing old and new names.
//!
//! **pgbench**: while the psql session runs, three pgbench processes (`-M simple`,
//! `-M extended`, `-M prepared`: named statements prepared once per connection and reused
//! across the flips), 2 clients each, run a custom script for 4 s across the switch and
//! contract flips. Each transaction rewrites one row of its own id range in 1000–1999
//! entirely (DELETE, then INSERTs including both `ON CONFLICT … DO UPDATE` forms, UPDATEs and
//! SELECTs with old and new names), so the row it leaves is consistent with the phase it ran
//! in. pgbench must report no failed transaction and exit 0; then the rows are checked
//! directly and deleted, before the harness checks the table.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::Scenario;
use super::common;

/// libpq's warning about `PGPASSFILE=/dev/null` (`common::client_env`), printed at connect.
const PASSFILE_WARNING: &str = "password file \"/dev/null\" is not a plain file";

/// Ends every statement's output; followed by psql's `ROW_COUNT`.
const SENTINEL: &str = "__pgshift_driver_done__";

/// The pgbench script: `:base` is set per process with `-D`, each client owns 150 ids.
const PGBENCH_SCRIPT: &str = r"\set id :base + :client_id * 150 + random(0, 149)
\set age random(1, 120)
BEGIN;
DELETE FROM users WHERE id = :id;
INSERT INTO users (id, display_name, age_int) VALUES (:id, 'n' || :id, :age);
INSERT INTO users (id, user_name, age) VALUES (:id, 'o' || :id, :age + 1) ON CONFLICT (id) DO UPDATE SET user_name = EXCLUDED.user_name, age = EXCLUDED.age;
SELECT user_name, age, display_name, age_int FROM users WHERE id = :id;
UPDATE users SET user_name = 'p' || :id WHERE id = :id;
UPDATE users SET age_int = :age + 2 WHERE id = :id;
SELECT user_name, age FROM users WHERE id = :id;
INSERT INTO users (id, display_name, age_int) VALUES (:id, 'q' || :id, :age + 3) ON CONFLICT (id) DO UPDATE SET display_name = EXCLUDED.display_name, age_int = EXCLUDED.age_int;
SELECT display_name, age_int FROM users WHERE id = :id;
END;
";

/// pgbench's query modes, each with its own id range (`:base`).
const PGBENCH_MODES: [(&str, i32); 3] = [("simple", 1000), ("extended", 1300), ("prepared", 1600)];

pub async fn run(scenario: &Scenario) {
    let mut psql = Psql::start(&scenario.proxy_url());
    let script_dir = tempfile::tempdir().expect("a directory for the pgbench script");
    let script = script_dir.path().join("scenario.sql");
    std::fs::write(&script, PGBENCH_SCRIPT).expect("write the pgbench script");
    let mut pgbench = Vec::new();
    for (done, (phase, base)) in [("expand", 100), ("switch", 200), ("contract", 300)]
        .into_iter()
        .enumerate()
    {
        if phase == "expand" {
            steps(scenario, &mut psql, phase, done, base).await;
            for (mode, first_id) in PGBENCH_MODES {
                pgbench.push((mode, start_pgbench(scenario, &script, mode, first_id)));
            }
            // Let every pgbench client connect and run in expand first.
            tokio::time::sleep(Duration::from_millis(700)).await;
            continue;
        }
        assert_running(&pgbench, phase);
        scenario.flip(phase).await;
        assert_running(&pgbench, phase);
        steps(scenario, &mut psql, phase, done, base).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    for (mode, run) in pgbench {
        check_pgbench(mode, run.await.expect("the pgbench task"));
    }
    psql.finish().await;
    check_pgbench_rows(scenario).await;
}

/// SCENARIO.md steps 1–7 for one phase, through the psql session.
async fn steps(scenario: &Scenario, psql: &mut Psql, phase: &str, done: usize, base: i32) {
    let (a, b, c) = (base + 1, base + 2, base + 3);
    let ins_old = |id: i32, name: &str, age: &str| {
        format!("INSERT INTO users (id, user_name, age) VALUES ({id}, '{name}', '{age}')")
    };
    let sel_old = |id: i32| format!("SELECT user_name, age FROM users WHERE id = {id}");
    let sel_new = |id: i32| format!("SELECT display_name, age_int FROM users WHERE id = {id}");
    let none: &[&str] = &[];

    // 1.
    psql.expect(phase, &ins_old(a, "old-a", "7"), none, 1).await;
    psql.expect(
        phase,
        &format!("INSERT INTO users (id, display_name, age_int) VALUES ({b}, 'new-b', 8)"),
        none,
        1,
    )
    .await;
    // 2.
    psql.expect(phase, &sel_new(a), &["old-a|7"], 1).await;
    psql.expect(phase, &sel_old(b), &["new-b|8"], 1).await;
    // 3.
    psql.expect(
        phase,
        &format!("UPDATE users SET user_name = 'renamed' WHERE id = {b}"),
        none,
        1,
    )
    .await;
    psql.expect(phase, &sel_new(b), &["renamed|8"], 1).await;
    // 4.
    psql.expect(
        phase,
        &format!("UPDATE users SET age_int = 9 WHERE id = {a}"),
        none,
        1,
    )
    .await;
    psql.expect(phase, &sel_old(a), &["old-a|9"], 1).await;
    // 5.
    psql.expect(phase, &ins_old(c, "gone", "1"), none, 1).await;
    psql.expect(phase, &format!("DELETE FROM users WHERE id = {c}"), none, 1)
        .await;
    psql.expect(phase, &sel_old(c), none, 0).await;

    // On top: one Query message with three statements, old and new names mixed; psql 15
    // prints every result, ROW_COUNT is the last statement's.
    psql.expect(
        phase,
        &format!(
            "INSERT INTO users (id, display_name, age_int) VALUES ({c}, 'multi', 5) \\; \
             SELECT user_name, age FROM users WHERE id = {c} \\; \
             DELETE FROM users WHERE id = {c}"
        ),
        &["multi|5"],
        1,
    )
    .await;
    psql.expect(phase, &sel_new(c), none, 0).await;

    // 6. (pgbench's rows, 1000–1999, are left out.)
    let expected = (3 + 2 * (done + 1)).to_string();
    psql.expect(
        phase,
        "SELECT count(*) FROM users WHERE id < 1000",
        &[expected.as_str()],
        1,
    )
    .await;
    // 7.
    scenario.check_direct("psql", phase, a, b).await;
}

/// One `psql` process through pgshift, fed statements on stdin.
struct Psql {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Arc<Mutex<String>>,
    /// Everything sent, for failure messages.
    transcript: String,
}

impl Psql {
    fn start(url: &str) -> Psql {
        let mut cmd = common::psql_command(url, &["-q", "-v", "ON_ERROR_STOP=1", "-A", "-t"]);
        super::common::client_env(&mut cmd);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("psql: cannot start: {e}"));
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut pipe = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let collected = stderr.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(&mut pipe).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let mut text = collected.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        Psql {
            child,
            stdin,
            stdout,
            stderr,
            transcript: String::new(),
        }
    }

    /// Sends `statement`, returns the lines it printed and its `ROW_COUNT`.
    async fn run(&mut self, phase: &str, statement: &str) -> (Vec<String>, u64) {
        let input = format!("{statement};\n\\echo {SENTINEL} :ROW_COUNT\n");
        self.transcript.push_str(&input);
        self.stdin.write_all(input.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
        let mut lines = Vec::new();
        let read = async {
            loop {
                match self.stdout.next_line().await.unwrap() {
                    Some(line) => match line.strip_prefix(SENTINEL) {
                        Some(count) => return Some(count.trim().to_owned()),
                        None => lines.push(line),
                    },
                    None => return None,
                }
            }
        };
        let count = tokio::time::timeout(Duration::from_secs(60), read).await;
        match count {
            Ok(Some(count)) => {
                let count = count.parse().unwrap_or_else(|_| {
                    panic!("psql {phase}: ROW_COUNT after `{statement}` is {count:?}")
                });
                (lines, count)
            }
            Ok(None) => {
                let status = self.child.wait().await.unwrap();
                panic!(
                    "psql {phase}: exited ({status}) after `{statement}`\nstdout: {lines:?}\n\
                     stderr:\n{}\nsent:\n{}",
                    self.stderr.lock().unwrap(),
                    self.transcript
                )
            }
            Err(_) => panic!(
                "psql {phase}: no answer to `{statement}` within 60 s\nstdout: {lines:?}\n\
                 stderr:\n{}",
                self.stderr.lock().unwrap()
            ),
        }
    }

    /// Sends `statement` and checks the rows it printed and its row count.
    async fn expect(&mut self, phase: &str, statement: &str, rows: &[&str], count: u64) {
        let (printed, row_count) = self.run(phase, statement).await;
        assert_eq!(printed, rows, "psql {phase}: the rows of `{statement}`");
        assert_eq!(row_count, count, "psql {phase}: ROW_COUNT of `{statement}`");
        let stderr: String = self
            .stderr
            .lock()
            .unwrap()
            .lines()
            .filter(|l| !l.contains(PASSFILE_WARNING))
            .collect();
        assert!(
            stderr.is_empty(),
            "psql {phase}: stderr after `{statement}`:\n{stderr}"
        );
    }

    /// Ends the session (`\q`); psql must exit 0.
    async fn finish(mut self) {
        self.stdin.write_all(b"\\q\n").await.unwrap();
        self.stdin.flush().await.unwrap();
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("psql exits after \\q")
            .unwrap();
        assert!(
            status.success(),
            "psql: exit {status}\nstderr:\n{}",
            self.stderr.lock().unwrap()
        );
    }
}

/// Starts `pgbench -n -M MODE -c 2 -T 4 -f SCRIPT -D base=FIRST_ID` through pgshift.
fn start_pgbench(
    scenario: &Scenario,
    script: &std::path::Path,
    mode: &str,
    first_id: i32,
) -> tokio::task::JoinHandle<std::process::Output> {
    let mut cmd = tokio::process::Command::new(common::tool("pgbench"));
    cmd.args(["-n", "-M", mode, "-c", "2", "-T", "4", "-D"])
        .arg(format!("base={first_id}"))
        .arg("-f")
        .arg(script)
        .arg(scenario.proxy_url());
    tokio::spawn(common::run_client(cmd, None))
}

fn assert_running(pgbench: &[(&str, tokio::task::JoinHandle<std::process::Output>)], phase: &str) {
    for (mode, run) in pgbench {
        assert!(
            !run.is_finished(),
            "pgbench -M {mode} ended before the flip to {phase}; the flips must happen while it runs"
        );
    }
}

/// pgbench exited 0, processed transactions and reported none failed.
fn check_pgbench(mode: &str, out: std::process::Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let context = format!("pgbench -M {mode}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(out.status.success(), "{context}\nexit: {}", out.status);
    let number = |prefix: &str| -> u64 {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no `{prefix}` line\n{context}"))
    };
    assert!(
        number("number of transactions actually processed: ") > 0,
        "{context}"
    );
    assert_eq!(number("number of failed transactions: "), 0, "{context}");
    eprintln!(
        "libpq: pgbench -M {mode}: {}",
        stdout
            .lines()
            .filter(|l| l.starts_with("number of") || l.starts_with("tps"))
            .collect::<Vec<_>>()
            .join("; ")
    );
}

/// The rows pgbench left in 1000–1999, read directly: each was last rewritten by one whole
/// transaction, so the new side holds the script's last values, and each old column either
/// mirrors its new one (written before its migration's contract) or is NULL (written in
/// contract). Then they go, so
/// the harness sees exactly the scenario's table.
async fn check_pgbench_rows(scenario: &Scenario) {
    let direct = &scenario.env.direct;
    let rows = direct
        .query(
            "SELECT id, user_name, display_name, age, age_int FROM users \
             WHERE id BETWEEN 1000 AND 1999 ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert!(!rows.is_empty(), "pgbench left no row in 1000–1999");
    let (mut names_mirrored, mut ages_mirrored) = (0, 0);
    for row in &rows {
        let id: i32 = row.get(0);
        let user_name: Option<String> = row.get(1);
        let display_name: Option<String> = row.get(2);
        let age: Option<String> = row.get(3);
        let age_int: Option<i32> = row.get(4);
        let described =
            format!("pgbench row {id}: {user_name:?} {display_name:?} {age:?} {age_int:?}");
        assert_eq!(display_name, Some(format!("q{id}")), "{described}");
        assert!(
            matches!(age_int, Some(4..=123)),
            "{described}: age_int must be the script's last value"
        );
        // The harness moves the two migrations one after the other, so each pair is either
        // mirrored (its migration was before contract) or NULL on the old side.
        if user_name.is_some() {
            names_mirrored += 1;
            assert_eq!(user_name, display_name, "{described}: user_name");
        }
        if age.is_some() {
            ages_mirrored += 1;
            assert_eq!(age, age_int.map(|v| v.to_string()), "{described}: age");
        }
    }
    eprintln!(
        "libpq: pgbench left {} rows, user_name written in {names_mirrored}, age in \
         {ages_mirrored} (the others last written in contract)",
        rows.len()
    );
    direct
        .execute("DELETE FROM users WHERE id BETWEEN 1000 AND 1999", &[])
        .await
        .unwrap();
}
