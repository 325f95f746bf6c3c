//! The admin HTTP endpoint: `/metrics` in Prometheus text with the stable metric names, and the
//! `/healthz` and `/readyz` probes.

mod common;

use std::time::Duration;

use common::*;

/// The value of the sample `series` (name plus labels exactly as printed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        (key == series).then(|| value.parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_the_stable_names() {
    let db = fresh_database("metrics").await;
    let proxy = Proxy::start();
    let client = connect(&proxy.db_url(&db)).await;
    client.simple_query("SELECT 1").await.unwrap();

    let text = proxy.metrics_text().await;

    for series in [
        "pgshift_client_connections",
        "pgshift_statements_total{action=\"passthrough\"}",
        "pgshift_upstream_errors_total",
    ] {
        assert!(
            sample(&text, series).is_some(),
            "no sample {series} in:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_connections_gauge_follows_connects_and_disconnects() {
    let db = fresh_database("metrics_gauge").await;
    let proxy = Proxy::start();
    let url = proxy.db_url(&db);

    let first = connect(&url).await;
    let second = connect(&url).await;
    first.simple_query("SELECT 1").await.unwrap();
    second.simple_query("SELECT 1").await.unwrap();

    let gauge = || async {
        sample(&proxy.metrics_text().await, "pgshift_client_connections").unwrap_or(-1.0)
    };
    eventually(
        Duration::from_secs(5),
        "the gauge to show 2 clients",
        || async { (gauge().await == 2.0).then_some(()) },
    )
    .await;
    drop(first);
    drop(second);
    eventually(Duration::from_secs(5), "the gauge to drop to 0", || async {
        (gauge().await == 0.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_statements_are_counted() {
    let db = fresh_database("metrics_count").await;
    let proxy = Proxy::start();
    let client = connect(&proxy.db_url(&db)).await;
    let series = "pgshift_statements_total{action=\"passthrough\"}";
    client.simple_query("SELECT 1").await.unwrap();
    let before = sample(&proxy.metrics_text().await, series).unwrap_or(0.0);

    client.simple_query("SELECT 2").await.unwrap();
    client.query("SELECT $1::int", &[&3i32]).await.unwrap();
    client.simple_query("SELECT 4").await.unwrap();

    eventually(
        Duration::from_secs(5),
        "three more passthrough statements",
        || async {
            let now = sample(&proxy.metrics_text().await, series).unwrap_or(0.0);
            (now >= before + 3.0).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_probes_answer_200() {
    let proxy = Proxy::start();

    let (health, _) = proxy.http_get("/healthz").await;
    let (ready, _) = proxy.http_get("/readyz").await;
    let (missing, _) = proxy.http_get("/no-such-page").await;

    assert_eq!(health, 200);
    assert_eq!(ready, 200);
    assert_eq!(missing, 404);
}
