//! `pgshift demo --unattended` (issue 9): the whole walk-through on a throw-away PostgreSQL —
//! a column rename and a table move from planned to complete under a live old-app and new-app
//! workload — exits 0 only when it ends with zero failed transactions and zero divergent rows,
//! and leaves nothing running behind.

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_unattended_and_ends_clean() {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgshift"));
    cmd.args(["demo", "--unattended", "--rows", "3000"])
        .env("NO_COLOR", "1")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .expect("the demo finished within 5 minutes")
        .expect("run pgshift demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pgshift demo exited {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("\n0 failed transactions, 0 divergent rows"),
        "{stdout}"
    );
    // Every step ran, each proven by a direct query.
    for step in ["expand:", "backfill:", "verify:", "switch:", "contract:", "complete:"] {
        assert!(stdout.contains(step), "no {step} step in:\n{stdout}");
    }
    assert!(stdout.contains("backfill orders_v2: done"), "{stdout}");
    assert!(stdout.contains("verify users_display_name: clean"), "{stdout}");
    assert!(
        stdout.contains("id, email, created_at, display_name  t"),
        "the final direct query shows user_name and orders gone:\n{stdout}"
    );
    // Both applications really ran: "old app: N transactions committed, 0 failed; new app:
    // M committed, 0 failed".
    let result = stdout
        .lines()
        .find(|l| l.contains("transactions committed"))
        .unwrap_or_else(|| panic!("no result line in:\n{stdout}"));
    let numbers: Vec<u64> = result
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    assert_eq!(numbers.len(), 4, "{result}");
    assert!(numbers[0] > 0 && numbers[2] > 0, "{result}");
    assert_eq!((numbers[1], numbers[3]), (0, 0), "{result}");
}
