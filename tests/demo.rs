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
    for step in [
        "expand:",
        "backfill:",
        "verify:",
        "switch:",
        "contract:",
        "complete:",
    ] {
        assert!(stdout.contains(step), "no {step} step in:\n{stdout}");
    }
    assert!(stdout.contains("backfill orders_v2: done"), "{stdout}");
    assert!(
        stdout.contains("verify users_display_name: clean"),
        "{stdout}"
    );
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

/// Ctrl-C (SIGINT) in the middle of the walk stops pgshift and PostgreSQL and exits non-zero:
/// neither port answers afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_everything() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgshift"))
        .args(["demo", "--unattended", "--rows", "2000"])
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn pgshift demo");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut pg_port, mut pgshift_addr) = (None, None);
    let read = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split(" on port ").nth(1) {
                pg_port = rest.trim().parse::<u16>().ok();
            }
            if let Some(rest) = line.split("pgshift listens on ").nth(1) {
                pgshift_addr = rest.split_whitespace().next().map(str::to_owned);
            }
            if line.contains("expand:") {
                return;
            }
        }
    })
    .await;
    read.expect("the demo reached expand within 2 minutes");
    let pg_port = pg_port.expect("the demo printed PostgreSQL's port");
    let pgshift_addr = pgshift_addr.expect("the demo printed pgshift's address");
    let answers = |addr: String| std::net::TcpStream::connect(addr).is_ok();
    assert!(answers(format!("127.0.0.1:{pg_port}")));
    assert!(answers(pgshift_addr.clone()));

    let pid = child.id().expect("the demo runs").to_string();
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    // Drain stdout so the demo never blocks on a full pipe while stopping.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let exit = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the demo stopped within 60 s of SIGINT")
        .unwrap();
    assert!(!exit.success(), "an interrupted demo exits non-zero");
    // PostgreSQL's janitor stops it shortly after the demo is gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while answers(format!("127.0.0.1:{pg_port}")) || answers(pgshift_addr.clone()) {
        assert!(
            std::time::Instant::now() < deadline,
            "PostgreSQL or pgshift still answers 30 s after the demo stopped"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
