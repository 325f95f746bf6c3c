//! One client connection, from the first byte to the last: the startup handshake
//! ([`handshake`]), the upstream connection and relayed authentication ([`upstream`]), then the
//! two concurrent relay pumps ([`relay`]) until either side ends or pgshift shuts down.
//!
//! Whatever ends a session, the client is told why with a real SQLSTATE when pgshift can still
//! write a whole message to it (it never writes into the middle of a forwarded frame).

mod handshake;
mod intercept;
mod relay;
mod replies;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{Instrument, debug, info_span};

use crate::net::Stream;
use crate::server::{ConnectionSlot, Proxy};
use crate::wire::{self, Severity, WireError};

pub use relay::SessionEnd;

/// The server → client frame scan every forwarded read buffer goes through, from a fresh
/// session state: returns how many bytes of `buf` it forwards as they are (benches/forward.rs).
#[doc(hidden)]
pub fn scan_server_buffer(buf: &[u8]) -> usize {
    relay::scan_server_buffer(buf)
}

/// Why a session could not be established or continue.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client i/o: {0}")]
    Client(std::io::Error),
    #[error("upstream i/o: {0}")]
    Upstream(std::io::Error),
    #[error("could not connect to upstream server {addr}: {reason}")]
    UpstreamConnect { addr: String, reason: String },
    #[error("protocol violation: {0}")]
    Protocol(#[from] WireError),
    #[error("{message}")]
    Refused { code: &'static str, message: String },
    /// The upstream refused the login; its ErrorResponse was already forwarded.
    #[error("upstream refused the connection")]
    UpstreamRefused,
    #[error("startup did not finish within startup_timeout")]
    StartupTimeout,
}

impl SessionError {
    /// The SQLSTATE and message to send the client, if any is due.
    fn client_error(&self) -> Option<(&'static str, String)> {
        match self {
            SessionError::Client(_) | SessionError::UpstreamRefused => None,
            SessionError::Upstream(e) => Some((
                "08006",
                format!("pgshift: lost connection to upstream server: {e}"),
            )),
            SessionError::UpstreamConnect { .. } => Some(("08006", format!("pgshift: {self}"))),
            SessionError::Protocol(e) => Some(("08P01", format!("pgshift: {e}"))),
            SessionError::Refused { code, message } => Some((code, message.clone())),
            SessionError::StartupTimeout => Some(("08P01", format!("pgshift: {self}"))),
        }
    }
}

/// Serves one accepted TCP connection to its end.
pub async fn serve(proxy: Arc<Proxy>, tcp: TcpStream, peer: SocketAddr) {
    let span = info_span!("session", %peer);
    let Some((client, established, database, registration, slot)) =
        start(&proxy, tcp, peer).instrument(span).await
    else {
        return;
    };
    // The relay runs outside the span: it logs nothing, and entering a span on every poll
    // costs more than the pumps' own work per round trip.
    let end = relay::run(&proxy, client, established, &database, &registration.entry).await;
    drop(registration);
    debug!(%peer, ?end, "session ended");
    drop(slot);
}

/// Startup, the upstream connection and authentication, and registration: everything before
/// the relay; `None` when the session ends before it (the client was told why when due).
async fn start(
    proxy: &Arc<Proxy>,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<(
    Stream,
    upstream::Established,
    String,
    crate::sessions::Registration,
    ConnectionSlot,
)> {
    let _ = tcp.set_nodelay(true);
    let deadline = tokio::time::Instant::now() + proxy.config.startup_timeout;
    let hello = match tokio::time::timeout_at(deadline, handshake::accept(proxy, tcp)).await {
        Ok(Ok(Some(hello))) => hello,
        Ok(Ok(None)) => {
            debug!("cancel request handled");
            return None;
        }
        Ok(Err(e)) => {
            debug!(error = %e, "startup refused");
            return None;
        }
        Err(_) => {
            debug!("startup timed out before the startup message");
            return None;
        }
    };
    let handshake::Hello {
        mut client,
        startup,
        slot,
    } = hello;
    let established =
        tokio::time::timeout_at(deadline, upstream::establish(proxy, &mut client, &startup))
            .await
            .unwrap_or(Err(SessionError::StartupTimeout));
    let established = match established {
        Ok(e) => e,
        Err(e) => {
            if matches!(
                e,
                SessionError::Upstream(_) | SessionError::UpstreamConnect { .. }
            ) {
                proxy.metrics.upstream_errors.increment(1);
            }
            debug!(error = %e, "session not established");
            if let Some((code, message)) = e.client_error() {
                let _ = write_fatal(&mut client, code, &message).await;
            }
            return None;
        }
    };
    let database = startup.database().unwrap_or_default().to_owned();
    let registration = proxy.sessions.register(
        peer,
        startup.user().unwrap_or_default(),
        &database,
        startup.param("application_name").unwrap_or_default(),
    );
    Some((client, established, database, registration, slot))
}

/// Writes a FATAL ErrorResponse and flushes; used before closing a connection.
async fn write_fatal(stream: &mut Stream, code: &str, message: &str) -> std::io::Result<()> {
    let frame = wire::error_frame(Severity::Fatal, code, message);
    stream.write_all(&frame).await?;
    stream.flush().await
}
