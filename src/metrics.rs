//! Metric names (DESIGN §5, stable) and the HTTP endpoint serving `/metrics` (Prometheus text),
//! `/healthz` (the process is up) and `/readyz` (listening and not shutting down).
//!
//! Handles are resolved once at start-up so the per-statement path only bumps atomics.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub const CLIENT_CONNECTIONS: &str = "pgshift_client_connections";
pub const STATEMENTS_TOTAL: &str = "pgshift_statements_total";
pub const UPSTREAM_ERRORS_TOTAL: &str = "pgshift_upstream_errors_total";
pub const REWRITE_SECONDS: &str = "pgshift_rewrite_seconds";
pub const OLD_NAME_STATEMENTS_TOTAL: &str = "pgshift_old_name_statements_total";
pub const CONFIG_RELOADS_TOTAL: &str = "pgshift_config_reloads_total";

/// The process's metric handles.
#[derive(Clone)]
pub struct Metrics {
    pub client_connections: Gauge,
    pub statements_passthrough: Counter,
    pub statements_rewritten: Counter,
    pub statements_refused: Counter,
    pub rewrite_seconds: Histogram,
    pub upstream_errors: Counter,
    /// Old-name statements per migration over the last minutes, for `ctl status`.
    pub old_names: Arc<RecentCounts>,
}

impl Metrics {
    /// Handles registered with whatever recorder is installed (none in unit tests: no-ops).
    pub fn new() -> Metrics {
        metrics::describe_gauge!(CLIENT_CONNECTIONS, "Client connections currently open.");
        metrics::describe_counter!(
            STATEMENTS_TOTAL,
            "Statements (Query and Parse messages) by what pgshift did with them."
        );
        metrics::describe_counter!(
            UPSTREAM_ERRORS_TOTAL,
            "Failures to connect to, or lost connections with, the upstream PostgreSQL."
        );
        metrics::describe_counter!(
            OLD_NAME_STATEMENTS_TOTAL,
            "Statements using a migration's old column names (old application versions)."
        );
        metrics::describe_counter!(
            CONFIG_RELOADS_TOTAL,
            "Config file reloads by result (error: invalid file or a refused phase)."
        );
        metrics::describe_counter!(
            crate::control::jobs::BACKFILL_ROWS_TOTAL,
            "Source rows processed by backfill batches, per migration."
        );
        metrics::describe_gauge!(
            crate::control::jobs::VERIFY_MISMATCHES,
            "Mismatching keys found by the last verify run, per migration."
        );
        metrics::describe_histogram!(
            REWRITE_SECONDS,
            metrics::Unit::Seconds,
            "Time to rewrite a statement that may touch a migrated table (cache hits included)."
        );
        Metrics {
            client_connections: gauge!(CLIENT_CONNECTIONS),
            statements_passthrough: counter!(STATEMENTS_TOTAL, "action" => "passthrough"),
            statements_rewritten: counter!(STATEMENTS_TOTAL, "action" => "rewritten"),
            statements_refused: counter!(STATEMENTS_TOTAL, "action" => "refused"),
            rewrite_seconds: histogram!(REWRITE_SECONDS),
            upstream_errors: counter!(UPSTREAM_ERRORS_TOTAL),
            old_names: Arc::new(RecentCounts::default()),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Counts an old-name statement of `migration` (the counter and the recent window).
impl Metrics {
    pub fn old_name_statement(&self, migration: &str) {
        metrics::counter!(OLD_NAME_STATEMENTS_TOTAL, "migration" => migration.to_owned())
            .increment(1);
        self.old_names.record(migration, Instant::now());
    }
}

/// Per-key event counts in one-minute buckets over the last [`RecentCounts::MINUTES`] minutes.
#[derive(Debug)]
pub struct RecentCounts {
    start: Instant,
    /// key → (minute index since `start`, count) per bucket, indexed by minute modulo the size.
    buckets: Mutex<HashMap<String, [(u64, u64); RecentCounts::MINUTES]>>,
}

impl Default for RecentCounts {
    fn default() -> Self {
        RecentCounts {
            start: Instant::now(),
            buckets: Mutex::new(HashMap::new()),
        }
    }
}

impl RecentCounts {
    pub const MINUTES: usize = 5;

    fn minute(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start).as_secs() / 60
    }

    pub fn record(&self, key: &str, at: Instant) {
        let minute = self.minute(at);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let slots = match buckets.get_mut(key) {
            Some(slots) => slots,
            None => buckets
                .entry(key.to_owned())
                .or_insert([(0, 0); Self::MINUTES]),
        };
        let slot = &mut slots[minute as usize % Self::MINUTES];
        if slot.0 != minute {
            *slot = (minute, 0);
        }
        slot.1 += 1;
    }

    /// Events of `key` in the current minute and the previous `MINUTES - 1`.
    pub fn recent(&self, key: &str, now: Instant) -> u64 {
        let minute = self.minute(now);
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets.get(key).map_or(0, |slots| {
            slots
                .iter()
                .filter(|(m, _)| *m + (Self::MINUTES as u64) > minute && *m <= minute)
                .map(|(_, n)| n)
                .sum()
        })
    }
}

/// `pgshift_config_reloads_total{result}`.
pub fn count_reload(ok: bool) {
    metrics::counter!(CONFIG_RELOADS_TOTAL, "result" => if ok { "ok" } else { "error" })
        .increment(1);
}

/// Installs the global Prometheus recorder. Call once, before [`Metrics::new`].
pub fn install_recorder() -> Result<PrometheusHandle, String> {
    PrometheusBuilder::new()
        // A histogram, not a summary: from a cache hit (~100 ns) to a cold parse (~100 µs).
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(REWRITE_SECONDS.to_owned()),
            &[1e-6, 5e-6, 2.5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2],
        )
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())
}

/// Readiness as seen by `/readyz`.
#[derive(Debug, Default)]
pub struct Readiness {
    ready: AtomicBool,
}

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
    pub fn get(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// Serves the endpoint on an already bound listener until `shutdown`.
pub async fn serve_http(
    listener: TcpListener,
    handle: PrometheusHandle,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    continue;
                }
            },
        };
        let handle = handle.clone();
        let readiness = readiness.clone();
        tracker.spawn(async move {
            let service = service_fn(move |req| {
                let reply = respond(&req, &handle, &readiness);
                async move { Ok::<_, Infallible>(reply) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    tracker.close();
}

fn respond(
    req: &Request<Incoming>,
    handle: &PrometheusHandle,
    readiness: &Readiness,
) -> Response<Full<Bytes>> {
    let (status, body) = match req.uri().path() {
        "/metrics" => (StatusCode::OK, handle.render()),
        "/healthz" => (StatusCode::OK, "ok\n".to_owned()),
        "/readyz" if readiness.get() => (StatusCode::OK, "ready\n".to_owned()),
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_owned()),
        _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
    };
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; version=0.0.4")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// Binds the metrics listener (separately, so `serve` can report the bound address).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn recent_counts_forget_events_older_than_the_window() {
        let counts = RecentCounts::default();
        let t0 = counts.start;
        counts.record("m", t0);
        counts.record("m", t0 + Duration::from_secs(61));
        counts.record("other", t0);
        assert_eq!(counts.recent("m", t0 + Duration::from_secs(62)), 2);
        assert_eq!(counts.recent("m", t0 + Duration::from_secs(5 * 60 + 1)), 1);
        assert_eq!(counts.recent("m", t0 + Duration::from_secs(6 * 60 + 1)), 0);
        assert_eq!(counts.recent("none", t0), 0);
        // A bucket reused for a later minute starts from zero.
        counts.record("m", t0 + Duration::from_secs(10 * 60));
        assert_eq!(counts.recent("m", t0 + Duration::from_secs(10 * 60)), 1);
    }
}
