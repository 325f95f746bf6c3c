//! Authentication is relayed: whatever method the server asks for (SCRAM-SHA-256, MD5,
//! cleartext) passes between client and server, and the server's own errors reach the client.
//! Needs the harness' `pg_hba.conf` and roles, so it skips against an external server.

mod common;

use common::*;

/// `(role, password)` per method, as created by the harness.
const ROLES: [(&str, &str); 3] = [
    ("pgshift_scram", "scram-secret"),
    ("pgshift_md5", "md5-secret"),
    ("pgshift_password", "clear-secret"),
];

fn url_with_password(port: u16, role: &str, password: &str, db: &str) -> String {
    pg_url("127.0.0.1", port, role, Some(password), db)
}

/// Right password: logs in as the role. Wrong one: the server's 28P01, identical to a direct
/// connection's error.
async fn check_role(role: &str, password: &str) {
    let db = fresh_database(&format!("auth_{role}")).await;
    let proxy = Proxy::start();

    let client = connect(&url_with_password(proxy.port(), role, password, &db.name)).await;
    let user: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(user, role);

    let wrong = "not-the-password";
    let through_proxy = try_connect(&url_with_password(proxy.port(), role, wrong, &db.name))
        .await
        .err()
        .unwrap_or_else(|| panic!("{role} logged in through the proxy with a wrong password"));
    assert_eq!(
        sqlstate(&through_proxy).as_deref(),
        Some("28P01"),
        "{through_proxy:?}"
    );
    let direct = try_connect(&url_with_password(cluster().port(), role, wrong, &db.name))
        .await
        .err()
        .unwrap_or_else(|| panic!("{role} logged in directly with a wrong password"));
    assert_eq!(describe_error(&through_proxy), describe_error(&direct));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_256_is_relayed() {
    if skip_unless_managed("needs the harness' pg_hba.conf") {
        return;
    }
    check_role(ROLES[0].0, ROLES[0].1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_is_relayed() {
    if skip_unless_managed("needs the harness' pg_hba.conf") {
        return;
    }
    check_role(ROLES[1].0, ROLES[1].1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_password_is_relayed() {
    if skip_unless_managed("needs the harness' pg_hba.conf") {
        return;
    }
    check_role(ROLES[2].0, ROLES[2].1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_logs_in_with_scram_via_pgpassword() {
    if skip_unless_managed("needs the harness' pg_hba.conf") {
        return;
    }
    let db = fresh_database("auth_psql").await;
    let proxy = Proxy::start();
    let conninfo = format!(
        "host=127.0.0.1 port={} user=pgshift_scram dbname={}",
        proxy.port(),
        db.name
    );

    let mut ok = psql_command(&conninfo, &["-At", "-c", "SELECT current_user"]);
    ok.env("PGPASSWORD", "scram-secret");
    let ok = run_client(ok, None).await;
    let mut bad = psql_command(&conninfo, &["-At", "-c", "SELECT current_user"]);
    bad.env("PGPASSWORD", "wrong");
    let bad = run_client(bad, None).await;

    assert!(
        ok.status.success(),
        "psql with the right password failed: {ok:?}"
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "pgshift_scram\n");
    assert!(
        !bad.status.success(),
        "psql with a wrong password succeeded"
    );
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("password authentication failed for user \"pgshift_scram\""),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_roles_authenticate_concurrently() {
    if skip_unless_managed("needs the harness' pg_hba.conf") {
        return;
    }
    let db = fresh_database("auth_concurrent").await;
    let proxy = Proxy::start();

    // Interleaved handshakes of every method must not mix up their relayed exchanges.
    let logins = (0..30).map(|i| {
        let (role, password) = ROLES[i % ROLES.len()];
        let url = url_with_password(proxy.port(), role, password, &db.name);
        async move {
            let client = connect(&url).await;
            let user: String = client
                .query_one("SELECT current_user::text", &[])
                .await
                .unwrap()
                .get(0);
            (role, user)
        }
    });
    let results = futures_util::future::join_all(logins).await;

    for (role, user) in results {
        assert_eq!(user, role);
    }
}
