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

use super::upstream::Established;
use crate::net::{ReadHalf, Stream, WriteHalf};
use crate::server::Proxy;
use crate::wire::{self, FrameCursor, Severity, Step, WireError, tag};

/// Read buffers keep at least this much room so a read is never tiny.
const READ_RESERVE: usize = 16 * 1024;
/// Server messages are trusted; this only guards the length arithmetic.
const MAX_SERVER_MESSAGE: usize = i32::MAX as usize;

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

/// Transaction bookkeeping shared by the two pumps. Locked once per read buffer, never per
/// frame, and never across an await.
#[derive(Debug)]
struct TxState {
    /// ReadyForQuery replies owed by the server.
    pending: u64,
    /// Status byte of the last ReadyForQuery: `I` idle, `T` in a transaction, `E` failed.
    status: u8,
    /// Set once the session decided to close; the client pump forwards nothing after it.
    closing: bool,
}

struct Shared {
    tx: Mutex<TxState>,
    /// The client's output stream is at a frame boundary (safe to append an ErrorResponse).
    client_at_boundary: AtomicBool,
    /// Likewise for the server's (safe to append Terminate).
    server_at_boundary: AtomicBool,
    /// Signalled (with a stored permit, so no wake-up is lost) when the session turns idle.
    became_idle: Notify,
}

impl Shared {
    fn tx(&self) -> std::sync::MutexGuard<'_, TxState> {
        self.tx.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `n` requests that each owe a ReadyForQuery; false once the session is closing.
    fn begin(&self, n: u64) -> bool {
        let mut tx = self.tx();
        if tx.closing {
            return false;
        }
        tx.pending += n;
        true
    }

    fn ready(&self, n: u64, status: u8) {
        let idle = {
            let mut tx = self.tx();
            tx.pending = tx.pending.saturating_sub(n);
            tx.status = status;
            tx.pending == 0 && status == b'I'
        };
        if idle {
            self.became_idle.notify_one();
        }
    }

    fn is_idle(&self) -> bool {
        let tx = self.tx();
        tx.pending == 0 && tx.status == b'I'
    }

    /// Marks the session closing if it is idle.
    fn try_close(&self) -> bool {
        let mut tx = self.tx();
        if tx.pending == 0 && tx.status == b'I' {
            tx.closing = true;
        }
        tx.closing
    }
}

/// Relays between client and server until one side ends, then says goodbye to both.
pub async fn run(proxy: &Proxy, client: Stream, established: Established) -> SessionEnd {
    let Established {
        server,
        client_buf,
        server_buf,
        cancel,
    } = established;
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, mut server_wr) = server.into_split();
    let shared = Shared {
        tx: Mutex::new(TxState {
            pending: 0,
            status: b'I',
            closing: false,
        }),
        client_at_boundary: AtomicBool::new(true),
        server_at_boundary: AtomicBool::new(true),
        became_idle: Notify::new(),
    };
    let end = {
        let up = client_to_server(proxy, &mut client_rd, client_buf, &mut server_wr, &shared);
        let down = server_to_client(proxy, &mut server_rd, server_buf, &mut client_wr, &shared);
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

/// What one scan of the client's buffer found.
#[derive(Default)]
struct ClientScan {
    /// Bytes that can be forwarded now.
    forward: usize,
    /// Query and Parse messages (the statements the metrics count).
    statements: u64,
    /// Messages that owe a ReadyForQuery: Query, Sync, FunctionCall.
    syncs: u64,
    terminate: bool,
}

fn scan_client(
    buf: &[u8],
    cursor: &mut FrameCursor,
    max_message: usize,
) -> Result<ClientScan, WireError> {
    let mut scan = ClientScan::default();
    let mut pos = 0;
    while pos < buf.len() {
        let (tag, advance) = match cursor.step(buf, pos, max_message)? {
            Step::NeedHeader => break,
            Step::Continuation(n) => {
                cursor.continued(n);
                pos += n;
                continue;
            }
            Step::Frame { tag, len } => (tag, len),
            Step::Partial { tag, len, buffered } => {
                cursor.start_partial(len, buffered);
                (tag, buffered)
            }
        };
        pos += advance;
        match tag {
            tag::QUERY => {
                scan.statements += 1;
                scan.syncs += 1;
            }
            tag::PARSE => scan.statements += 1,
            tag::SYNC | tag::FUNCTION_CALL => scan.syncs += 1,
            tag::TERMINATE => {
                scan.terminate = true;
                break;
            }
            _ => {}
        }
    }
    scan.forward = pos;
    Ok(scan)
}

async fn client_to_server(
    proxy: &Proxy,
    client: &mut ReadHalf,
    mut buf: BytesMut,
    server: &mut WriteHalf,
    shared: &Shared,
) -> SessionEnd {
    let mut cursor = FrameCursor::default();
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
        let scan = match scan_client(&buf, &mut cursor, max_message) {
            Ok(scan) => scan,
            Err(e) => return SessionEnd::Protocol(e),
        };
        if scan.forward == 0 {
            continue;
        }
        if scan.syncs > 0 && !shared.begin(scan.syncs) {
            return SessionEnd::Shutdown;
        }
        shared.server_at_boundary.store(false, Ordering::Release);
        if let Err(e) = write_flush(server, &buf[..scan.forward]).await {
            return SessionEnd::ServerError(e);
        }
        shared
            .server_at_boundary
            .store(cursor.at_boundary(), Ordering::Release);
        buf.advance(scan.forward);
        if scan.statements > 0 {
            proxy
                .metrics
                .statements_passthrough
                .increment(scan.statements);
        }
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

/// What one scan of the server's buffer found.
#[derive(Default)]
struct ServerScan {
    forward: usize,
    /// ReadyForQuery messages seen, and the status byte of the last one.
    ready: u64,
    status: u8,
    /// The last whole frame forwarded was an ErrorResponse.
    last_was_error: bool,
}

fn scan_server(buf: &[u8], cursor: &mut FrameCursor) -> ServerScan {
    let mut scan = ServerScan::default();
    let mut pos = 0;
    while pos < buf.len() {
        // Server lengths are bounded by MAX_SERVER_MESSAGE; a longer one is a broken server
        // and is forwarded for the client to judge, like any other frame.
        let step = cursor
            .step(buf, pos, MAX_SERVER_MESSAGE)
            .unwrap_or(Step::NeedHeader);
        match step {
            Step::NeedHeader => break,
            Step::Continuation(n) => {
                cursor.continued(n);
                pos += n;
            }
            Step::Frame { tag, len } => {
                if tag == tag::READY_FOR_QUERY && len >= 6 {
                    scan.ready += 1;
                    scan.status = buf[pos + 5];
                }
                scan.last_was_error = tag == tag::ERROR_RESPONSE;
                pos += len;
            }
            // ReadyForQuery is read whole, so its status byte is known.
            Step::Partial { tag, .. } if tag == tag::READY_FOR_QUERY => break,
            Step::Partial { len, buffered, .. } => {
                cursor.start_partial(len, buffered);
                scan.last_was_error = false;
                pos += buffered;
            }
        }
    }
    scan.forward = pos;
    scan
}

async fn server_to_client(
    proxy: &Proxy,
    server: &mut ReadHalf,
    mut buf: BytesMut,
    client: &mut WriteHalf,
    shared: &Shared,
) -> SessionEnd {
    let mut cursor = FrameCursor::default();
    let mut drain_deadline: Option<Instant> = None;
    let mut last_was_error = false;
    // Registered once: a fresh `cancelled()` per read would lock the token's waiter list twice
    // per round trip, shared by every session.
    let shutdown = proxy.shutdown.cancelled();
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
                shared.tx().closing = true;
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
        let scan = scan_server(&buf, &mut cursor);
        if scan.forward > 0 {
            shared.client_at_boundary.store(false, Ordering::Release);
            if let Err(e) = write_flush(client, &buf[..scan.forward]).await {
                return SessionEnd::ClientError(e);
            }
            shared
                .client_at_boundary
                .store(cursor.at_boundary(), Ordering::Release);
            buf.advance(scan.forward);
            last_was_error = scan.last_was_error;
        }
        if scan.ready > 0 {
            shared.ready(scan.ready, scan.status);
            if drain_deadline.is_some() && shared.try_close() {
                return SessionEnd::Shutdown;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut f = vec![tag];
        f.extend(((body.len() + 4) as u32).to_be_bytes());
        f.extend(body);
        f
    }

    #[test]
    fn client_scan_counts_statements_and_syncs() {
        let mut buf = frame(b'Q', b"select 1\0");
        buf.extend(frame(b'P', b"\0select $1\0\0\0"));
        buf.extend(frame(b'B', b"\0\0\0\0\0\0\0\0"));
        buf.extend(frame(b'S', b""));
        let mut cursor = FrameCursor::default();
        let scan = scan_client(&buf, &mut cursor, 1 << 20).unwrap();
        assert_eq!(scan.forward, buf.len());
        assert_eq!((scan.statements, scan.syncs, scan.terminate), (2, 2, false));
    }

    #[test]
    fn client_scan_forwards_large_frames_in_pieces() {
        let big = frame(b'd', &[7u8; 100]);
        let mut cursor = FrameCursor::default();
        let first = scan_client(&big[..40], &mut cursor, 1 << 20).unwrap();
        assert_eq!(first.forward, 40);
        let rest = scan_client(&big[40..], &mut cursor, 1 << 20).unwrap();
        assert_eq!(rest.forward, big.len() - 40);
        assert!(cursor.at_boundary());
    }

    #[test]
    fn client_scan_keeps_a_split_header_and_stops_at_terminate() {
        let mut buf = frame(b'S', b"");
        buf.extend(&[b'Q', 0]);
        let mut cursor = FrameCursor::default();
        let scan = scan_client(&buf, &mut cursor, 1 << 20).unwrap();
        assert_eq!(scan.forward, 5);

        let mut buf = frame(b'X', b"");
        buf.extend(frame(b'Q', b"select 1\0"));
        let scan = scan_client(&buf, &mut FrameCursor::default(), 1 << 20).unwrap();
        assert!(scan.terminate);
        assert_eq!(scan.forward, 5);
    }

    #[test]
    fn client_scan_refuses_oversized_messages() {
        let buf = frame(b'Q', &[b'x'; 2000]);
        let err = scan_client(&buf, &mut FrameCursor::default(), 1024).err();
        assert!(matches!(err, Some(WireError::MessageTooLarge { .. })));
    }

    #[test]
    fn server_scan_tracks_ready_for_query_whole() {
        let mut buf = frame(b'C', b"SELECT 1\0");
        buf.extend(frame(b'Z', b"T"));
        buf.extend(frame(b'E', b"SERROR\0\0"));
        buf.extend(frame(b'Z', b"E"));
        let mut cursor = FrameCursor::default();
        let scan = scan_server(&buf, &mut cursor);
        assert_eq!(
            (scan.forward, scan.ready, scan.status),
            (buf.len(), 2, b'E')
        );
        assert!(!scan.last_was_error);

        // A ReadyForQuery cut after its header waits for its status byte.
        let mut buf = frame(b'C', b"BEGIN\0");
        let z = frame(b'Z', b"I");
        buf.extend(&z[..5]);
        let scan = scan_server(&buf, &mut FrameCursor::default());
        assert_eq!((scan.forward, scan.ready), (buf.len() - 5, 0));
    }
}
