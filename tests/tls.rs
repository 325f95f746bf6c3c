//! Client-side TLS: with `tls_cert`/`tls_key` pgshift accepts SSLRequest and terminates TLS
//! (psql `sslmode=require`/`verify-full` work, plain connections too); without them it answers
//! `N`, so `require` fails the way libpq reports it and `prefer` falls back to plain.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;

/// A self-signed certificate for `localhost` and `127.0.0.1`: `(cert.pem, key.pem)`.
fn self_signed_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("generate a certificate");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

/// A libpq connection string to the proxy, plus extra `key=value` options.
fn conninfo(proxy: &Proxy, db: &str, user: &str, options: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={user} dbname={db} {options}",
        proxy.port()
    )
}

async fn psql_as(conninfo: &str, password: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = psql_command(conninfo, args);
    if let Some(pw) = password {
        cmd.env("PGPASSWORD", pw);
    }
    run_client(cmd, None).await
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_offered_when_configured() {
    let db = fresh_database("tls").await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed_cert(dir.path());
    let proxy = ProxyConfig::new(cluster()).tls(&cert, &key).spawn();
    let c = cluster();
    let password = c.superuser_password();
    let user = c.superuser();

    let required = psql_as(
        &conninfo(&proxy, &db.name, user, "sslmode=require"),
        password,
        &["-c", "\\conninfo", "-At", "-c", "SELECT 1"],
    )
    .await;
    assert!(required.status.success(), "{}", text(&required));
    let stdout = String::from_utf8_lossy(&required.stdout);
    assert!(
        stdout.contains("SSL connection (protocol: TLS"),
        "{}",
        text(&required)
    );
    assert!(stdout.ends_with("\n1\n"), "{}", text(&required));

    let verified = psql_as(
        &conninfo(
            &proxy,
            &db.name,
            user,
            &format!("sslmode=verify-full sslrootcert={}", cert.display()),
        ),
        password,
        &["-At", "-c", "SELECT 2"],
    )
    .await;
    assert!(verified.status.success(), "{}", text(&verified));
    assert_eq!(String::from_utf8_lossy(&verified.stdout), "2\n");

    let plain = psql_as(
        &conninfo(&proxy, &db.name, user, "sslmode=disable"),
        password,
        &["-c", "\\conninfo", "-At", "-c", "SELECT 3"],
    )
    .await;
    assert!(plain.status.success(), "{}", text(&plain));
    let stdout = String::from_utf8_lossy(&plain.stdout);
    assert!(!stdout.contains("SSL connection"), "{}", text(&plain));
    assert!(stdout.ends_with("\n3\n"), "{}", text(&plain));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_an_untrusted_root_is_rejected_by_the_client() {
    let db = fresh_database("tls_untrusted").await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed_cert(dir.path());
    let other_dir = tempfile::tempdir().unwrap();
    let (other_cert, _) = self_signed_cert(other_dir.path());
    let proxy = ProxyConfig::new(cluster()).tls(&cert, &key).spawn();

    let out = psql_as(
        &conninfo(
            &proxy,
            &db.name,
            cluster().superuser(),
            &format!("sslmode=verify-ca sslrootcert={}", other_cert.display()),
        ),
        cluster().superuser_password(),
        &["-c", "SELECT 1"],
    )
    .await;

    // The proxy really serves the configured certificate: another root does not verify it.
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("certificate verify failed"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_over_tls_never_negotiates_channel_binding() {
    if skip_unless_managed("needs the harness' SCRAM role") {
        return;
    }
    let db = fresh_database("tls_scram").await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed_cert(dir.path());
    let proxy = ProxyConfig::new(cluster()).tls(&cert, &key).spawn();

    // libpq would pick SCRAM-SHA-256-PLUS if offered; binding to pgshift's TLS channel could
    // never verify upstream, so it must not be offered and plain SCRAM must succeed.
    let ok = psql_as(
        &conninfo(&proxy, &db.name, "pgshift_scram", "sslmode=require"),
        Some("scram-secret"),
        &["-At", "-c", "SELECT current_user"],
    )
    .await;
    assert!(ok.status.success(), "{}", text(&ok));
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "pgshift_scram\n");

    let required = psql_as(
        &conninfo(
            &proxy,
            &db.name,
            "pgshift_scram",
            "sslmode=require channel_binding=require",
        ),
        Some("scram-secret"),
        &["-c", "SELECT 1"],
    )
    .await;
    assert!(!required.status.success(), "{}", text(&required));
    assert!(
        String::from_utf8_lossy(&required.stderr).contains("channel binding"),
        "{}",
        text(&required)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tls_sslmode_require_fails_and_prefer_falls_back() {
    let db = fresh_database("no_tls").await;
    let proxy = Proxy::start();
    let c = cluster();

    let required = psql_as(
        &conninfo(&proxy, &db.name, c.superuser(), "sslmode=require"),
        c.superuser_password(),
        &["-c", "SELECT 1"],
    )
    .await;
    assert!(!required.status.success(), "{}", text(&required));
    assert!(
        String::from_utf8_lossy(&required.stderr)
            .contains("server does not support SSL, but SSL was required"),
        "{}",
        text(&required)
    );

    let preferred = psql_as(
        &conninfo(&proxy, &db.name, c.superuser(), "sslmode=prefer"),
        c.superuser_password(),
        &["-c", "\\conninfo", "-At", "-c", "SELECT 1"],
    )
    .await;
    assert!(preferred.status.success(), "{}", text(&preferred));
    let stdout = String::from_utf8_lossy(&preferred.stdout);
    assert!(!stdout.contains("SSL connection"), "{}", text(&preferred));
    assert!(stdout.ends_with("\n1\n"), "{}", text(&preferred));
}

/// A protocol 3.0 StartupMessage.
fn startup_message(user: &str, db: &str) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (key, value) in [("user", user), ("database", db)] {
        body.extend_from_slice(key.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut message = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    message.extend(body);
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gssenc_and_ssl_requests_are_declined_then_startup_continues() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = fresh_database("gssenc").await;
    let proxy = Proxy::start();

    for (name, code) in [("GSSENCRequest", 80_877_104u32), ("SSLRequest", 80_877_103)] {
        let mut stream = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
        let mut request = 8u32.to_be_bytes().to_vec();
        request.extend_from_slice(&code.to_be_bytes());
        stream.write_all(&request).await.unwrap();
        let mut answer = [0u8; 1];
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stream.read_exact(&mut answer),
        )
        .await;
        assert!(matches!(read, Ok(Ok(_))), "{name}: no answer ({read:?})");
        assert_eq!(answer[0], b'N', "{name} must be declined");

        // The same connection goes on with a normal startup: an Authentication message follows.
        stream
            .write_all(&startup_message(cluster().superuser(), &db.name))
            .await
            .unwrap();
        let mut tag = [0u8; 1];
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stream.read_exact(&mut tag),
        )
        .await
        .unwrap_or_else(|_| panic!("{name}: no reply to the startup"))
        .unwrap();
        assert_eq!(tag[0], b'R', "{name}: expected an Authentication message");
    }
}

/// Whether the session serving `client` reached PostgreSQL over TLS.
async fn upstream_ssl(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_modes_against_a_server_with_ssl() {
    use pgshift::ephemeral::{EphemeralOptions, EphemeralPostgres};
    if skip_unless_managed("starts its own PostgreSQL from the local binaries") {
        return;
    }
    let pg = tokio::task::block_in_place(|| EphemeralPostgres::start(EphemeralOptions::default()))
        .expect("dedicated PostgreSQL");
    // The server's default ssl_cert_file/ssl_key_file, owned like the data directory.
    let (cert, key) = self_signed_cert(pg.data_dir());
    std::fs::rename(&cert, pg.data_dir().join("server.crt")).unwrap();
    std::fs::rename(&key, pg.data_dir().join("server.key")).unwrap();
    let chown = std::process::Command::new("chown")
        .arg(format!("--reference={}", pg.data_dir().display()))
        .arg(pg.data_dir().join("server.crt"))
        .arg(pg.data_dir().join("server.key"))
        .status()
        .unwrap();
    assert!(chown.success());
    let chmod = std::process::Command::new("chmod")
        .arg("600")
        .arg(pg.data_dir().join("server.key"))
        .status()
        .unwrap();
    assert!(chmod.success());
    pg.psql("postgres", "ALTER SYSTEM SET ssl = on").unwrap();
    pg.psql("postgres", "SELECT pg_reload_conf()").unwrap();
    let direct = connect(&pg.url("postgres")).await;
    eventually(
        std::time::Duration::from_secs(10),
        "ssl to be on",
        || async {
            let ssl: String = direct.query_one("SHOW ssl", &[]).await.unwrap().get(0);
            (ssl == "on").then_some(())
        },
    )
    .await;

    direct
        .batch_execute("CREATE TABLE tls_users (id int PRIMARY KEY, user_name text)")
        .await
        .unwrap();
    for (mode, expect_ssl) in [("require", true), ("prefer", true), ("disable", false)] {
        // A migration, so pgshift's control plane (state, LISTEN) connects too.
        let proxy = ProxyConfig::new(cluster())
            .upstream_port(pg.port())
            .upstream_tls(mode)
            .extra(
                r#"
[control]
user = "postgres"

[[migration]]
name = "tls_users_display_name"
database = "postgres"
table = "public.tls_users"
kind = "columns"
phase = "planned"
[[migration.columns]]
old = "user_name"
new = "display_name"
"#,
            )
            .spawn();
        let client = connect(&proxy.url("postgres", "postgres")).await;
        assert_eq!(
            upstream_ssl(&client).await,
            expect_ssl,
            "upstream_tls = {mode}"
        );
        // The control connections follow upstream_tls too.
        let control: Vec<(String, bool)> = direct
            .query(
                "SELECT a.application_name, s.ssl FROM pg_stat_activity a \
                 JOIN pg_stat_ssl s USING (pid) WHERE a.application_name LIKE 'pgshift%'",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert!(
            control.iter().any(|(app, _)| app == "pgshift listen"),
            "the control plane's connections should be open: {control:?}"
        );
        assert!(
            control.iter().all(|(_, ssl)| *ssl == expect_ssl),
            "control connections with upstream_tls = {mode}: {control:?}"
        );
        drop(client);
        proxy.kill();
    }

    // TLS on both legs with SCRAM: the server offers SCRAM-SHA-256-PLUS to pgshift, which must
    // not reach the client.
    let dir = tempfile::tempdir().unwrap();
    let (client_cert, client_key) = self_signed_cert(dir.path());
    let proxy = ProxyConfig::new(cluster())
        .upstream_port(pg.port())
        .upstream_tls("require")
        .tls(&client_cert, &client_key)
        .spawn();
    let query = [
        "-At",
        "-c",
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    ];
    for options in ["sslmode=disable", "sslmode=require channel_binding=disable"] {
        let out = psql_as(
            &conninfo(&proxy, "postgres", "pgshift_scram", options),
            Some("scram-secret"),
            &query,
        )
        .await;
        assert!(
            out.status.success(),
            "SCRAM with {options} and upstream TLS: {}",
            text(&out)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "t\n",
            "{}",
            text(&out)
        );
    }
    // Known limitation, not asserted: libpq on TLS without -PLUS on offer sends the gs2 flag `y`
    // ("I could bind, the server cannot"); the upstream, itself on TLS, rejects that as a
    // downgrade, and the flag is covered by the client's proof so pgshift cannot rewrite it.
    let out = psql_as(
        &conninfo(&proxy, "postgres", "pgshift_scram", "sslmode=require"),
        Some("scram-secret"),
        &query,
    )
    .await;
    println!(
        "SCRAM, TLS on both legs, default channel_binding: {}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_against_a_server_without_ssl() {
    if skip_unless_managed("needs a server without SSL") {
        return;
    }
    let db = fresh_database("upstream_no_ssl").await;

    let required = ProxyConfig::new(cluster()).upstream_tls("require").spawn();
    let refused = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        try_connect(&required.db_url(&db)),
    )
    .await
    .expect("connecting must fail, not hang");
    let err = refused.expect_err("upstream_tls = require connected without TLS");
    println!(
        "upstream_tls = require without server SSL: {}",
        describe_error(&err)
    );

    let preferred = ProxyConfig::new(cluster()).upstream_tls("prefer").spawn();
    let client = connect(&preferred.db_url(&db)).await;
    assert!(!upstream_ssl(&client).await);
}
