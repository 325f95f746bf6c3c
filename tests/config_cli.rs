//! The command line: `pgshift check --config FILE` accepts a valid file and rejects bad ones
//! naming the offending key; `pgshift serve` refuses to start on the same bad files.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const VALID: &str = r#"[proxy]
listen = "127.0.0.1:0"
upstream = "127.0.0.1:5432"
max_client_connections = 10
startup_timeout = "10s"
shutdown_grace = "5s"

[admin]
metrics_listen = "127.0.0.1:0"
"#;

fn pgshift(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgshift"));
    cmd.args(args).env("NO_COLOR", "1");
    cmd
}

/// Runs to completion, killing the process if it is still running after 20 s.
fn run(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pgshift");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "pgshift still running after 20 s; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collect output")
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("pgshift.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Both `check` and `serve` must fail on `text` with a message naming `key`.
fn assert_rejected(text: &str, key: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), text);
    for subcommand in ["check", "serve"] {
        let out = run(pgshift(&[subcommand, "--config", &path]));
        assert!(
            !out.status.success(),
            "`pgshift {subcommand}` accepted a config with a bad `{key}`"
        );
        assert!(
            stderr(&out).contains(key),
            "`pgshift {subcommand}` error does not name `{key}`: {}",
            stderr(&out)
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("\"ready\""),
            "`pgshift {subcommand}` reported ready"
        );
    }
}

#[test]
fn check_accepts_a_valid_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), VALID);

    let out = run(pgshift(&["check", "--config", &path]));

    assert!(out.status.success(), "check failed: {}", stderr(&out));
}

#[test]
fn unknown_key_is_rejected_by_name() {
    let text = VALID.replace(
        "listen = \"127.0.0.1:0\"\nupstream",
        "lisen = \"127.0.0.1:0\"\nupstream",
    );
    assert!(text.contains("lisen"));

    assert_rejected(&text, "lisen");
}

#[test]
fn unknown_key_in_admin_is_rejected_by_name() {
    assert_rejected(
        &format!("{VALID}metrics_lisen = \"127.0.0.1:0\"\n"),
        "metrics_lisen",
    );
}

#[test]
fn bad_listen_address_is_rejected_by_name() {
    let text = VALID.replace(
        "listen = \"127.0.0.1:0\"\nupstream",
        "listen = \"nope\"\nupstream",
    );
    assert!(text.contains("\"nope\""));

    assert_rejected(&text, "listen");
}

#[test]
fn bad_duration_is_rejected_by_name() {
    assert_rejected(
        &VALID.replace("shutdown_grace = \"5s\"", "shutdown_grace = \"soon\""),
        "shutdown_grace",
    );
}

#[test]
fn missing_required_key_is_named() {
    assert_rejected(
        &VALID.replace("upstream = \"127.0.0.1:5432\"\n", ""),
        "upstream",
    );
}

#[test]
fn tls_cert_without_key_is_rejected() {
    assert_rejected(
        &VALID.replace("[admin]", "tls_cert = \"/nonexistent/cert.pem\"\n\n[admin]"),
        "tls_key",
    );
}

#[test]
fn missing_file_is_named() {
    let out = run(pgshift(&["check", "--config", "/nonexistent/pgshift.toml"]));

    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/nonexistent/pgshift.toml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn serve_refuses_an_unreadable_tls_certificate() {
    let text = VALID.replace(
        "[admin]",
        "tls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"/nonexistent/key.pem\"\n\n[admin]",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &text);

    let out = run(pgshift(&["serve", "--config", &path]));

    assert!(
        !out.status.success(),
        "serve started without its certificate"
    );
    assert!(
        stderr(&out).contains("/nonexistent/cert.pem"),
        "{}",
        stderr(&out)
    );
}

mod common;

/// `check --connect` validates migrations against the real database and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_connect_validates_migrations_without_changing_anything() {
    let db = common::fresh_database("check_connect").await;
    let direct = db.connect().await;
    direct
        .batch_execute("CREATE TABLE users (id int PRIMARY KEY, user_name text)")
        .await
        .unwrap();
    let config = |phase: &str, new: &str, expand_sql: &str| {
        common::ProxyConfig::new(common::cluster())
            .extra(&format!(
                "[control]\nuser = \"postgres\"\n\n[[migration]]\nname = \"rename\"\ndatabase = \"{}\"\n\
                 table = \"users\"\nkind = \"columns\"\nphase = \"{phase}\"\n{expand_sql}\
                 [[migration.columns]]\nold = \"user_name\"\nnew = \"{new}\"\n",
                db.name
            ))
            .to_toml()
    };
    let dir = tempfile::tempdir().unwrap();
    let check = |text: String| {
        let path = write_config(dir.path(), &text);
        run(pgshift(&["check", "--connect", "--config", &path]))
    };

    let missing = check(config("expand", "display_name", ""));
    assert!(!missing.status.success());
    let message = stderr(&missing);
    assert!(
        message.contains("rename") && message.contains("display_name"),
        "{message}"
    );

    let with_ddl = check(config(
        "expand",
        "display_name",
        "expand_sql = \"ALTER TABLE users ADD COLUMN display_name text\"\n",
    ));
    assert!(with_ddl.status.success(), "{}", stderr(&with_ddl));
    let added: i64 = direct
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'display_name'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(added, 0, "check must not run expand_sql");

    direct
        .batch_execute("ALTER TABLE users ADD COLUMN display_name text")
        .await
        .unwrap();
    assert!(check(config("expand", "display_name", "")).status.success());
    let bad_up = check(config("expand", "display_name", "").replace(
        "new = \"display_name\"",
        "new = \"display_name\"\nup = \"no_such_column\"",
    ));
    assert!(!bad_up.status.success());
    assert!(
        stderr(&bad_up).contains("no_such_column"),
        "{}",
        stderr(&bad_up)
    );
}
