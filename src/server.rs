//! The process: binds the proxy and metrics listeners, accepts clients (one task per session,
//! all owned by a tracker, each pinned to one of the session loops in `workers`), enforces the
//! connection limit, and shuts down gracefully: stop accepting, let sessions finish their
//! transactions within `shutdown_grace`, then exit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::cancel::CancelRegistry;
use crate::config::{Config, ProxyConfig};
use crate::metrics::{self, Metrics, Readiness};
use crate::sessions::Sessions;
use crate::snapshot::SnapshotStore;
use crate::workers::Workers;
use crate::{session, tls};
use metrics_exporter_prometheus::PrometheusHandle;

/// Process-wide state every session shares.
pub struct Proxy {
    pub config: ProxyConfig,
    pub tls_acceptor: Option<TlsAcceptor>,
    pub upstream_tls: Arc<rustls::ClientConfig>,
    pub cancels: Arc<CancelRegistry>,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
    /// The migrations in effect; sessions pin one per transaction.
    pub snapshots: Arc<SnapshotStore>,
    /// Every client session, for `ctl connections` and acknowledgments.
    pub sessions: Arc<Sessions>,
    connections: AtomicUsize,
}

/// A client connection counted against `max_client_connections`; released on drop.
pub struct ConnectionSlot {
    proxy: Arc<Proxy>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.proxy.connections.fetch_sub(1, Ordering::AcqRel);
        self.proxy.metrics.client_connections.decrement(1.0);
    }
}

impl Proxy {
    pub fn new(
        config: &Config,
        shutdown: CancellationToken,
        shared: Shared,
    ) -> Result<Arc<Proxy>, StartError> {
        let p = &config.proxy;
        let tls_acceptor = match (&p.tls_cert, &p.tls_key) {
            (Some(cert), Some(key)) => Some(TlsAcceptor::from(tls::server_config(cert, key)?)),
            _ => None,
        };
        Ok(Arc::new(Proxy {
            config: p.clone(),
            tls_acceptor,
            upstream_tls: tls::upstream_config(),
            cancels: Arc::new(CancelRegistry::default()),
            metrics: shared.metrics,
            shutdown,
            snapshots: shared.snapshots,
            sessions: shared.sessions,
            connections: AtomicUsize::new(0),
        }))
    }

    /// Takes a connection slot unless the limit is reached.
    pub fn try_acquire_slot(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let max = self.config.max_client_connections;
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        self.metrics.client_connections.increment(1.0);
        Some(ConnectionSlot {
            proxy: self.clone(),
        })
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }
}

/// What the proxy shares with the control plane.
pub struct Shared {
    pub snapshots: Arc<SnapshotStore>,
    pub sessions: Arc<Sessions>,
    pub metrics: Metrics,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot start the session threads: {0}")]
    Workers(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A started server: its bound addresses and the task to await.
pub struct Running {
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub proxy: Arc<Proxy>,
    /// What `/readyz` answers; the control plane clears it while its database is unreachable.
    pub readiness: Arc<Readiness>,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Waits until the server has shut down completely.
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// Binds everything and starts serving; returns once listening. The metrics recorder must be
/// installed already (`handle` renders it).
pub async fn start(
    config: &Config,
    shutdown: CancellationToken,
    handle: PrometheusHandle,
    shared: Shared,
) -> Result<Running, StartError> {
    let proxy = Proxy::new(config, shutdown.clone(), shared)?;
    let listener = TcpListener::bind(config.proxy.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.proxy.listen,
            source,
        })?;
    let metrics_listener = metrics::bind(config.admin.metrics_listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.admin.metrics_listen,
            source,
        })?;
    let listen = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.proxy.listen,
        source,
    })?;
    let metrics_listen = metrics_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: config.admin.metrics_listen,
            source,
        })?;
    let workers = match config.proxy.worker_threads {
        // One thread in all: sessions share the caller's single-threaded runtime.
        1 => None,
        0 => Some(std::thread::available_parallelism().map_or(1, |n| n.get())),
        n => Some(n),
    }
    .map(Workers::start)
    .transpose()
    .map_err(StartError::Workers)?;
    let readiness = Arc::new(Readiness::default());
    readiness.set(true);

    let http_shutdown = CancellationToken::new();
    let http = tokio::spawn(metrics::serve_http(
        metrics_listener,
        handle,
        readiness.clone(),
        http_shutdown.clone(),
    ));
    let ready = readiness.clone();
    let accept_proxy = proxy.clone();
    // 0: sessions share the caller's thread.
    let session_threads = workers.as_ref().map_or(0, Workers::count);
    let done = tokio::spawn(async move {
        accept_loop(accept_proxy.clone(), listener, workers).await;
        ready.set(false);
        info!(
            sessions = accept_proxy.connection_count(),
            "stopped accepting; waiting for sessions"
        );
        http_shutdown.cancel();
        let _ = http.await;
    });
    info!(
        %listen,
        %metrics_listen,
        upstream = %config.proxy.upstream,
        session_threads,
        "pgshift listening"
    );
    Ok(Running {
        listen,
        metrics_listen,
        proxy,
        readiness,
        done,
    })
}

/// Accepts until shutdown, then waits for the sessions; `workers` (None: run sessions on the
/// current runtime) are stopped once the sessions are done or the hard deadline has passed.
async fn accept_loop(proxy: Arc<Proxy>, listener: TcpListener, workers: Option<Workers>) {
    let sessions = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = proxy.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let Some(workers) = &workers else {
                    sessions.spawn(session::serve(proxy.clone(), tcp, peer));
                    continue;
                };
                // Leaves this runtime's reactor; registered with the chosen loop's there.
                let tcp = match tcp.into_std() {
                    Ok(tcp) => tcp,
                    Err(e) => {
                        warn!(%peer, error = %e, "cannot hand over the connection");
                        continue;
                    }
                };
                let proxy = proxy.clone();
                workers.spawn(&sessions, async move {
                    match TcpStream::from_std(tcp) {
                        Ok(tcp) => session::serve(proxy, tcp, peer).await,
                        Err(e) => warn!(%peer, error = %e, "cannot register the connection"),
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    sessions.close();
    // Sessions end themselves within shutdown_grace; the margin covers the final writes.
    let hard_deadline = proxy.config.shutdown_grace + Duration::from_secs(5);
    if tokio::time::timeout(hard_deadline, sessions.wait())
        .await
        .is_err()
    {
        warn!(
            remaining = sessions.len(),
            "sessions still open after the grace period"
        );
    }
    // Joins the loops' threads; whatever still runs there is cancelled.
    drop(workers);
}
