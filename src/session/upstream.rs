//! The upstream side of startup: connect to PostgreSQL (TLS per `upstream_tls`), send the
//! client's StartupMessage as it came, and relay authentication until ReadyForQuery.
//!
//! Authentication is relayed, never performed: whatever the server asks (trust, cleartext,
//! MD5, SCRAM-SHA-256) goes to the client and the client's answer goes back. Two messages are
//! changed on the way: AuthenticationSASL loses its `-PLUS` mechanisms (channel binding cannot
//! cross a proxy) and BackendKeyData is replaced by a pgshift-issued key.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;

use super::SessionError;
use crate::cancel::Registration;
use crate::config::{UpstreamTls, split_host_port, upstream_socket};
use crate::net::Stream;
use crate::server::Proxy;
use crate::wire::{self, StartupMessage, tag};

/// Largest message accepted from the server during authentication.
const MAX_AUTH_MESSAGE: usize = 1 << 20;

/// Both connections after ReadyForQuery, with whatever was read past it.
pub struct Established {
    pub server: Stream,
    pub client_buf: BytesMut,
    pub server_buf: BytesMut,
    pub cancel: Registration,
}

/// Opens a connection to the upstream, negotiating TLS as configured (never over a Unix
/// socket, where PostgreSQL offers none).
pub async fn connect(proxy: &Proxy) -> Result<Stream, SessionError> {
    let addr = &proxy.config.upstream;
    let fail = |reason: String| SessionError::UpstreamConnect {
        addr: addr.clone(),
        reason,
    };
    if let Some(path) = upstream_socket(addr) {
        return UnixStream::connect(&path)
            .await
            .map(Stream::Unix)
            .map_err(|e| fail(format!("{}: {e}", path.display())));
    }
    let tcp = TcpStream::connect(addr.as_str())
        .await
        .map_err(|e| fail(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let mode = proxy.config.upstream_tls;
    if mode == UpstreamTls::Disable {
        return Ok(Stream::Plain(tcp));
    }
    let mut tcp = tcp;
    let mut ssl_request = [0u8; 8];
    ssl_request[..4].copy_from_slice(&8u32.to_be_bytes());
    ssl_request[4..].copy_from_slice(&wire::SSL_REQUEST_CODE.to_be_bytes());
    tcp.write_all(&ssl_request)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer)
        .await
        .map_err(|e| fail(e.to_string()))?;
    match (answer[0], mode) {
        (b'S', _) => {
            let (host, _) = split_host_port(addr).map_err(fail)?;
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| fail(e.to_string()))?;
            let connector = TlsConnector::from(proxy.upstream_tls.clone());
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| fail(format!("TLS handshake failed: {e}")))?;
            Ok(Stream::Tls(Box::new(tls)))
        }
        (b'N', UpstreamTls::Prefer) => Ok(Stream::Plain(tcp)),
        (b'N', _) => Err(fail(
            "server does not support SSL, but upstream_tls = \"require\"".into(),
        )),
        (other, _) => Err(fail(format!(
            "unexpected answer {:?} to SSLRequest",
            other as char
        ))),
    }
}

/// Connects upstream and relays startup and authentication until ReadyForQuery.
pub async fn establish(
    proxy: &Proxy,
    client: &mut Stream,
    startup: &StartupMessage,
) -> Result<Established, SessionError> {
    let mut server = connect(proxy).await?;
    server
        .write_all(&startup.raw)
        .await
        .map_err(SessionError::Upstream)?;
    let mut client_buf = BytesMut::with_capacity(8 * 1024);
    let mut server_buf = BytesMut::with_capacity(8 * 1024);
    let mut out = BytesMut::with_capacity(1024);
    let mut cancel = None;
    loop {
        if wire::frame_header(&server_buf, MAX_AUTH_MESSAGE)?
            .is_none_or(|h| server_buf.len() < h.frame_len)
        {
            // About to wait on the server: the client must have everything sent so far.
            flush(client, &mut out).await?;
        }
        let frame = read_frame(&mut server, &mut server_buf, MAX_AUTH_MESSAGE)
            .await
            .map_err(|e| e.upstream())?;
        match frame[0] {
            tag::AUTHENTICATION => {
                let code =
                    wire::auth_code(&frame).ok_or(wire::WireError::Malformed("Authentication"))?;
                match wire::strip_channel_binding(&frame) {
                    Some(stripped) => out.extend_from_slice(&stripped),
                    None => out.extend_from_slice(&frame),
                }
                // 0 = Ok and 12 = SASLFinal expect no answer; every other request does.
                if code != 0 && code != 12 {
                    flush(client, &mut out).await?;
                    let answer = read_frame(client, &mut client_buf, proxy.config.max_message_size)
                        .await
                        .map_err(|e| e.client())?;
                    if answer[0] != tag::PASSWORD {
                        return Err(wire::WireError::Malformed("authentication response").into());
                    }
                    server
                        .write_all(&answer)
                        .await
                        .map_err(SessionError::Upstream)?;
                }
            }
            tag::BACKEND_KEY_DATA => {
                let upstream_key = wire::parse_backend_key_data(&frame)?;
                let (issued, registration) = proxy.cancels.register(upstream_key);
                out.extend_from_slice(&wire::backend_key_data_frame(&issued));
                cancel = Some(registration);
            }
            tag::ERROR_RESPONSE => {
                out.extend_from_slice(&frame);
                flush(client, &mut out).await?;
                return Err(SessionError::UpstreamRefused);
            }
            tag::READY_FOR_QUERY => {
                out.extend_from_slice(&frame);
                flush(client, &mut out).await?;
                let cancel = cancel.ok_or(wire::WireError::Malformed(
                    "startup: ReadyForQuery without BackendKeyData",
                ))?;
                return Ok(Established {
                    server,
                    client_buf,
                    server_buf,
                    cancel,
                });
            }
            // ParameterStatus, NoticeResponse, NegotiateProtocolVersion: as they are.
            _ => out.extend_from_slice(&frame),
        }
    }
}

async fn flush(client: &mut Stream, out: &mut BytesMut) -> Result<(), SessionError> {
    if !out.is_empty() {
        client.write_all(out).await.map_err(SessionError::Client)?;
        client.flush().await.map_err(SessionError::Client)?;
        out.clear();
    }
    Ok(())
}

/// An error reading a frame, before it is known which side it is blamed on.
enum ReadError {
    Io(std::io::Error),
    Wire(wire::WireError),
}

impl ReadError {
    fn client(self) -> SessionError {
        match self {
            ReadError::Io(e) => SessionError::Client(e),
            ReadError::Wire(e) => SessionError::Protocol(e),
        }
    }
    fn upstream(self) -> SessionError {
        match self {
            ReadError::Io(e) => SessionError::Upstream(e),
            ReadError::Wire(e) => SessionError::Protocol(e),
        }
    }
}

async fn read_frame<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    max: usize,
) -> Result<BytesMut, ReadError> {
    loop {
        if let Some(frame) = wire::take_frame(buf, max).map_err(ReadError::Wire)? {
            return Ok(frame);
        }
        let n = stream.read_buf(buf).await.map_err(ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}
