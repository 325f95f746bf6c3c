//! The client side of startup: SSLRequest (TLS when configured, else `N`), GSSENCRequest
//! (always `N`), CancelRequest (mapped to the upstream backend, then the connection closes),
//! and the StartupMessage, checked against the connection limit and shutdown.
//!
//! Packets are read with exact lengths and no read-ahead: after `S` the next bytes on the
//! socket belong to the TLS handshake.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use super::{SessionError, write_fatal};
use crate::net::Stream;
use crate::server::{ConnectionSlot, Proxy};
use crate::wire::{self, StartupMessage, StartupPacket};

/// A client that sent a StartupMessage pgshift accepts.
pub struct Hello {
    pub client: Stream,
    pub startup: StartupMessage,
    pub slot: ConnectionSlot,
}

/// Runs the startup phase. `Ok(None)` means the connection was a CancelRequest, now served.
pub async fn accept(proxy: &Arc<Proxy>, tcp: TcpStream) -> Result<Option<Hello>, SessionError> {
    let mut client = Stream::Plain(tcp);
    loop {
        let packet = match read_startup_packet(&mut client).await {
            Ok(p) => p,
            Err(e) => {
                if let SessionError::Protocol(w) = &e {
                    let _ = write_fatal(&mut client, "08P01", &format!("pgshift: {w}")).await;
                }
                return Err(e);
            }
        };
        match packet {
            StartupPacket::SslRequest => client = negotiate_tls(proxy, client).await?,
            StartupPacket::GssEncRequest => {
                client.write_all(b"N").await.map_err(SessionError::Client)?;
            }
            StartupPacket::Cancel(key) => {
                forward_cancel(proxy, &key).await;
                return Ok(None);
            }
            StartupPacket::Startup(startup) => {
                return match check_startup(proxy, &startup) {
                    Ok(slot) => Ok(Some(Hello {
                        client,
                        startup,
                        slot,
                    })),
                    Err(e) => {
                        if let Some((code, message)) = e.client_error() {
                            let _ = write_fatal(&mut client, code, &message).await;
                        }
                        Err(e)
                    }
                };
            }
        }
    }
}

async fn read_startup_packet(client: &mut Stream) -> Result<StartupPacket, SessionError> {
    let mut len = [0u8; 4];
    client
        .read_exact(&mut len)
        .await
        .map_err(SessionError::Client)?;
    let len = wire::startup_packet_len(len)?;
    let mut raw = vec![0u8; len];
    raw[..4].copy_from_slice(&(len as u32).to_be_bytes());
    client
        .read_exact(&mut raw[4..])
        .await
        .map_err(SessionError::Client)?;
    Ok(wire::parse_startup_packet(&raw)?)
}

async fn negotiate_tls(proxy: &Proxy, mut client: Stream) -> Result<Stream, SessionError> {
    let acceptor = match (&proxy.tls_acceptor, &client) {
        (Some(acceptor), Stream::Plain(_)) => acceptor.clone(),
        // No TLS configured, or a second SSLRequest inside TLS: decline like Postgres does.
        _ => {
            client.write_all(b"N").await.map_err(SessionError::Client)?;
            return Ok(client);
        }
    };
    client.write_all(b"S").await.map_err(SessionError::Client)?;
    let Stream::Plain(tcp) = client else {
        unreachable!("matched above")
    };
    let tls = acceptor.accept(tcp).await.map_err(SessionError::Client)?;
    Ok(Stream::Tls(Box::new(tls)))
}

/// Checks the StartupMessage and takes a connection slot.
fn check_startup(
    proxy: &Arc<Proxy>,
    startup: &StartupMessage,
) -> Result<ConnectionSlot, SessionError> {
    if startup.major != 3 {
        return Err(SessionError::Refused {
            code: "0A000",
            message: format!(
                "unsupported frontend protocol {}.{}: server supports 3.0 to 3.x",
                startup.major, startup.minor
            ),
        });
    }
    if startup.user().is_none_or(str::is_empty) {
        return Err(SessionError::Refused {
            code: "28000",
            message: "no PostgreSQL user name specified in startup packet".into(),
        });
    }
    if let Some(mode) = startup.param("replication")
        && !matches!(mode, "false" | "off" | "no" | "0")
    {
        return Err(SessionError::Refused {
            code: "0A000",
            message:
                "pgshift: replication connections are not supported; connect to PostgreSQL directly"
                    .into(),
        });
    }
    if proxy.shutdown.is_cancelled() {
        return Err(SessionError::Refused {
            code: "57P03",
            message: "pgshift is shutting down".into(),
        });
    }
    proxy.try_acquire_slot().ok_or(SessionError::Refused {
        code: "53300",
        message: "sorry, too many clients already".into(),
    })
}

/// Sends a CancelRequest to the upstream backend behind a pgshift-issued key. Like Postgres,
/// nothing is ever answered to the requester, whether or not the key matched.
async fn forward_cancel(proxy: &Proxy, key: &wire::CancelKey) {
    let Some(upstream_key) = proxy.cancels.lookup(key) else {
        debug!(pid = key.pid, "cancel request with an unknown key ignored");
        return;
    };
    let packet = wire::encode_cancel_request(&upstream_key);
    let result = async {
        let mut stream = super::upstream::connect(proxy).await?;
        stream
            .write_all(&packet)
            .await
            .map_err(SessionError::Upstream)?;
        stream.flush().await.map_err(SessionError::Upstream)?;
        // Wait for the server to close its side so the cancel is processed before we return.
        let mut sink = [0u8; 1];
        let _ = stream.read(&mut sink).await;
        Ok::<_, SessionError>(())
    }
    .await;
    if let Err(e) = result {
        proxy.metrics.upstream_errors.increment(1);
        debug!(error = %e, "cancel request not delivered");
    }
}
