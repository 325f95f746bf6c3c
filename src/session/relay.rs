//! The steady state of a session: two pumps run concurrently, client → server and
//! server → client, each forwarding whole read buffers in one write. They walk frame headers
//! (never bodies) to keep three facts: how many ReadyForQuery replies are still owed
//! (`pending`: one per Query, Sync and FunctionCall forwarded), the transaction status of the
//! last ReadyForQuery, and whether each output stream sits at a frame boundary.
//!
//! Those facts decide how a session may end: on shutdown it closes only when idle (nothing
//! owed, status `I`) or when the grace period runs out, and a final ErrorResponse is written
//! only at a frame boundary.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::Instant;

mod client;
mod server;

/// The server → client scan over `buf` from a fresh session state (no requests owed):
/// the bytes it lets through unchanged. For the forwarding benchmark.
pub(crate) fn scan_server_buffer(buf: &[u8]) -> usize {
    let mut cursor = crate::wire::FrameCursor::default();
    let mut replies = crate::session::replies::Replies::default();
    server::scan(buf, &mut cursor, &mut replies).consumed
}

use super::intercept::Interceptor;
use super::replies::Replies;
use super::upstream::Established;
use crate::net::{ReadHalf, Stream, WriteHalf};
use crate::server::Proxy;
use crate::sessions::SessionEntry;
use crate::wire::{self, FrameCursor, Severity, WireError, tag};

/// Read buffers keep at least this much room so a read is never tiny.
const READ_RESERVE: usize = 16 * 1024;

/// How a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// The client closed its connection without Terminate.
    ClientClosed,
    /// The client sent Terminate.
    ClientTerminated,
    ClientError(std::io::Error),
    /// The server closed; `announced` when its last message was an ErrorResponse (e.g. FATAL).
    ServerClosed {
        announced: bool,
    },
    ServerError(std::io::Error),
    /// pgshift is shutting down.
    Shutdown,
    IdleTimeout,
    Protocol(WireError),
}

impl SessionEnd {
    /// The FATAL error the client should read before the connection closes, if any.
    fn client_error(&self) -> Option<(&'static str, String)> {
        match self {
            SessionEnd::ClientClosed
            | SessionEnd::ClientTerminated
            | SessionEnd::ClientError(_)
            | SessionEnd::ServerClosed { announced: true } => None,
            SessionEnd::ServerClosed { announced: false } => Some((
                "08006",
                "pgshift: upstream server closed the connection unexpectedly".into(),
            )),
            SessionEnd::ServerError(e) => Some((
                "08006",
                format!("pgshift: lost connection to upstream server: {e}"),
            )),
            SessionEnd::Shutdown => Some((
                "57P01",
                "terminating connection due to administrator command (pgshift is shutting down)"
                    .into(),
            )),
            SessionEnd::IdleTimeout => Some((
                "57P05",
                "terminating connection due to idle-session timeout (pgshift idle_timeout)".into(),
            )),
            SessionEnd::Protocol(e) => Some(("08P01", format!("pgshift: {e}"))),
        }
    }

    fn upstream_failed(&self) -> bool {
        matches!(
            self,
            SessionEnd::ServerError(_) | SessionEnd::ServerClosed { announced: false }
        )
    }
}

/// State shared by the two pumps.
struct Shared {
    /// Requests awaiting replies, transaction status, closing flag; locked once per read
    /// buffer, never per frame, and never across an await.
    replies: Mutex<Replies>,
    /// The client's output stream is at a frame boundary (safe to append an ErrorResponse).
    client_at_boundary: AtomicBool,
    /// Likewise for the server's (safe to append Terminate).
    server_at_boundary: AtomicBool,
    /// Signalled (with a stored permit, so no wake-up is lost) when the session turns idle.
    became_idle: Notify,
}

impl Shared {
    fn replies(&self) -> std::sync::MutexGuard<'_, Replies> {
        self.replies.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_idle(&self) -> bool {
        self.replies().is_idle()
    }

    fn try_close(&self) -> bool {
        self.replies().try_close()
    }
}

/// Relays between client and server until one side ends, then says goodbye to both.
pub async fn run(
    proxy: &Proxy,
    client: Stream,
    established: Established,
    database: &str,
    entry: &SessionEntry,
) -> SessionEnd {
    let Established {
        server,
        client_buf,
        server_buf,
        cancel,
    } = established;
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, mut server_wr) = server.into_split();
    let shared = Shared {
        replies: Mutex::new(Replies::default()),
        client_at_boundary: AtomicBool::new(true),
        server_at_boundary: AtomicBool::new(true),
        became_idle: Notify::new(),
    };
    let end = {
        let intercept = Interceptor::new(database);
        let up = client_to_server(
            proxy,
            &mut client_rd,
            client_buf,
            &mut server_wr,
            &shared,
            intercept,
            entry,
        );
        let down = server_to_client(
            proxy,
            &mut server_rd,
            server_buf,
            &mut client_wr,
            &shared,
            entry,
        );
        tokio::select! {
            end = up => end,
            end = down => end,
        }
    };
    if end.upstream_failed() {
        proxy.metrics.upstream_errors.increment(1);
    }
    if let Some((code, message)) = end.client_error()
        && shared.client_at_boundary.load(Ordering::Acquire)
    {
        let frame = wire::error_frame(Severity::Fatal, code, &message);
        let _ = client_wr.write_all(&frame).await;
        let _ = client_wr.flush().await;
    }
    let _ = client_wr.shutdown().await;
    let server_open = !matches!(
        end,
        SessionEnd::ClientTerminated | SessionEnd::ServerClosed { .. } | SessionEnd::ServerError(_)
    );
    if server_open && shared.server_at_boundary.load(Ordering::Acquire) {
        // A clean goodbye, so the server logs no "unexpected EOF" and rolls back at once.
        let _ = server_wr.write_all(&[tag::TERMINATE, 0, 0, 0, 4]).await;
        let _ = server_wr.flush().await;
    }
    drop(cancel);
    end
}

async fn client_to_server(
    proxy: &Proxy,
    client: &mut ReadHalf,
    mut buf: BytesMut,
    server: &mut WriteHalf,
    shared: &Shared,
    mut intercept: Interceptor,
    entry: &SessionEntry,
) -> SessionEnd {
    let mut cursor = FrameCursor::default();
    let mut requests = Vec::new();
    let idle_timeout = proxy.config.idle_timeout;
    let max_message = proxy.config.max_message_size;
    loop {
        buf.reserve(READ_RESERVE);
        let read = if idle_timeout.is_zero() {
            client.read_buf(&mut buf).await
        } else {
            match read_unless_idle_too_long(client, &mut buf, shared, idle_timeout).await {
                Some(read) => read,
                None => return SessionEnd::IdleTimeout,
            }
        };
        match read {
            Ok(0) => return SessionEnd::ClientClosed,
            Ok(_) => {}
            Err(e) => return SessionEnd::ClientError(e),
        }
        {
            let mut replies = shared.replies();
            for (ticket, ok) in replies.take_settled() {
                intercept.settle(ticket, ok);
            }
            // A transaction starting now runs under the current snapshot until it ends.
            // Marked busy under the lock, so the server pump's "idle" cannot overtake it.
            if replies.is_idle() {
                entry.begin();
                drop(replies);
                let snapshot = proxy.snapshots.load();
                intercept.pin(&snapshot);
                entry.pinned(snapshot.epoch);
            }
        }
        let mut scan = match client::scan(
            &buf,
            &mut cursor,
            max_message,
            &mut intercept,
            &proxy.metrics,
            std::mem::take(&mut requests),
        ) {
            Ok(scan) => scan,
            Err(e) => return SessionEnd::Protocol(e),
        };
        if scan.consumed == 0 {
            requests = scan.requests;
            continue;
        }
        {
            let mut replies = shared.replies();
            if !replies.push(&scan.requests) {
                return SessionEnd::Shutdown;
            }
            for r in scan.refusals.drain(..) {
                replies.add_refusal(r.marker, r.frame);
            }
        }
        requests = std::mem::take(&mut scan.requests);
        requests.clear();
        shared.server_at_boundary.store(false, Ordering::Release);
        let out = scan.spliced.as_deref().unwrap_or(&buf[..scan.consumed]);
        if let Err(e) = write_flush(server, out).await {
            return SessionEnd::ServerError(e);
        }
        shared
            .server_at_boundary
            .store(cursor.at_boundary(), Ordering::Release);
        buf.advance(scan.consumed);
        if scan.terminate {
            return SessionEnd::ClientTerminated;
        }
    }
}

/// Reads from the client; `None` once the session has been idle (nothing owed, no open
/// transaction) for `limit`. Idleness begins when the server's ReadyForQuery arrives, which
/// may be after this read started, so the server pump wakes it through `became_idle`.
async fn read_unless_idle_too_long(
    client: &mut ReadHalf,
    buf: &mut BytesMut,
    shared: &Shared,
    limit: Duration,
) -> Option<std::io::Result<usize>> {
    loop {
        if shared.is_idle() {
            return tokio::select! {
                read = client.read_buf(buf) => Some(read),
                _ = tokio::time::sleep(limit) => None,
            };
        }
        tokio::select! {
            read = client.read_buf(buf) => return Some(read),
            _ = shared.became_idle.notified() => {}
        }
    }
}

async fn server_to_client(
    proxy: &Proxy,
    server: &mut ReadHalf,
    mut buf: BytesMut,
    client: &mut WriteHalf,
    shared: &Shared,
    entry: &SessionEntry,
) -> SessionEnd {
    let mut cursor = FrameCursor::default();
    let mut drain_deadline: Option<Instant> = None;
    let mut last_was_error = false;
    // A child token of the session's own: polling a `cancelled()` future locks its token's
    // state and waiter list on every read, and those of the proxy-wide token are shared by
    // every session (contended across worker threads). Registered once, not per read.
    let session_token = proxy.shutdown.child_token();
    let shutdown = session_token.cancelled();
    tokio::pin!(shutdown);
    loop {
        buf.reserve(READ_RESERVE);
        let read = tokio::select! {
            biased;
            _ = &mut shutdown, if drain_deadline.is_none() => {
                drain_deadline = Some(Instant::now() + proxy.config.shutdown_grace);
                if shared.try_close() {
                    return SessionEnd::Shutdown;
                }
                continue;
            }
            _ = sleep_until_opt(drain_deadline), if drain_deadline.is_some() => {
                shared.replies().close_now();
                return SessionEnd::Shutdown;
            }
            read = server.read_buf(&mut buf) => read,
        };
        match read {
            Ok(0) => {
                return SessionEnd::ServerClosed {
                    announced: last_was_error,
                };
            }
            Ok(_) => {}
            Err(e) => return SessionEnd::ServerError(e),
        }
        let scan = {
            let mut replies = shared.replies();
            let scan = server::scan(&buf, &mut cursor, &mut replies);
            if scan.became_idle {
                entry.idle(b'I');
            } else if scan.saw_ready {
                entry.set_status(replies.status());
            }
            scan
        };
        if scan.consumed > 0 {
            shared.client_at_boundary.store(false, Ordering::Release);
            let out = scan.spliced.as_deref().unwrap_or(&buf[..scan.consumed]);
            if !out.is_empty()
                && let Err(e) = write_flush(client, out).await
            {
                return SessionEnd::ClientError(e);
            }
            shared
                .client_at_boundary
                .store(cursor.at_boundary(), Ordering::Release);
            buf.advance(scan.consumed);
            last_was_error = scan.last_was_error;
        }
        if scan.became_idle {
            shared.became_idle.notify_one();
        }
        if scan.saw_ready && drain_deadline.is_some() && shared.try_close() {
            return SessionEnd::Shutdown;
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn write_flush(out: &mut WriteHalf, bytes: &[u8]) -> std::io::Result<()> {
    out.write_all(bytes).await?;
    out.flush().await
}
