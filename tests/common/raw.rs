//! A hand-driven protocol connection ([`RawConn`]) and frontend message builders
//! ([`frontend`]), for message sequences and malformed input no client library sends.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One backend message as received: type byte and body (length word stripped).
#[derive(Clone, PartialEq, Eq)]
pub struct BackendMessage {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl BackendMessage {
    /// The text-format fields of a DataRow (`None` for NULL).
    pub fn fields(&self) -> Vec<Option<String>> {
        let b = &self.body;
        let mut pos = 2;
        let mut fields = Vec::new();
        for _ in 0..u16::from_be_bytes([b[0], b[1]]) {
            let len = i32::from_be_bytes(b[pos..pos + 4].try_into().unwrap());
            pos += 4;
            if len < 0 {
                fields.push(None);
            } else {
                fields.push(Some(
                    String::from_utf8_lossy(&b[pos..pos + len as usize]).into_owned(),
                ));
                pos += len as usize;
            }
        }
        fields
    }
}

impl std::fmt::Debug for BackendMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}{:?}",
            self.tag as char,
            String::from_utf8_lossy(&self.body)
        )
    }
}

impl BackendMessage {
    /// The ErrorResponse/NoticeResponse field with this code (`b'C'` = SQLSTATE, `b'M'` = message).
    pub fn field(&self, code: u8) -> Option<String> {
        self.body
            .split(|b| *b == 0)
            .find(|f| f.first() == Some(&code))
            .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
    }
}

/// A hand-driven protocol connection, for message sequences no client library sends.
pub struct RawConn {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    /// Connects and sends a protocol 3.0 StartupMessage with `params` (no SSL); returns the
    /// connection and the messages up to and including the first ReadyForQuery (or the first
    /// ErrorResponse). Only trust authentication is supported.
    pub async fn startup(
        addr: SocketAddr,
        params: &[(&str, &str)],
    ) -> (RawConn, Vec<BackendMessage>) {
        RawConn::startup_with_version(addr, 196_608, params).await
    }

    /// Like [`startup`](Self::startup) with an explicit protocol version word.
    pub async fn startup_with_version(
        addr: SocketAddr,
        version: u32,
        params: &[(&str, &str)],
    ) -> (RawConn, Vec<BackendMessage>) {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let mut conn = RawConn {
            stream,
            buf: Vec::new(),
        };
        let mut body = version.to_be_bytes().to_vec();
        for (key, value) in params {
            body.extend_from_slice(key.as_bytes());
            body.push(0);
            body.extend_from_slice(value.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        packet.extend(body);
        conn.send(&packet).await;
        let mut messages = Vec::new();
        loop {
            let Some(message) = conn.read_message().await else {
                break;
            };
            let done = matches!(message.tag, b'Z' | b'E');
            messages.push(message);
            if done {
                break;
            }
        }
        (conn, messages)
    }

    /// Like [`startup`](Self::startup), for a startup that must succeed: the connection, ready
    /// for queries.
    pub async fn connect(addr: SocketAddr, params: &[(&str, &str)]) -> RawConn {
        let (conn, startup) = RawConn::startup(addr, params).await;
        assert_eq!(startup.last().map(|m| m.tag), Some(b'Z'), "{startup:?}");
        conn
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write to server");
    }

    /// The next message, or `None` at EOF. Panics after 10 s without one.
    pub async fn read_message(&mut self) -> Option<BackendMessage> {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if self.buf.len() >= 5 {
                    let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                    if self.buf.len() > len {
                        let message = BackendMessage {
                            tag: self.buf[0],
                            body: self.buf[5..len + 1].to_vec(),
                        };
                        self.buf.drain(..len + 1);
                        return Some(message);
                    }
                }
                let mut chunk = [0u8; 8192];
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no complete message within 10 s (buffered {:?})", self.buf))
    }

    /// Messages until `count` ReadyForQuery messages have arrived (or EOF).
    pub async fn read_until_ready(&mut self, count: usize) -> Vec<BackendMessage> {
        let mut messages = Vec::new();
        let mut ready = 0;
        while ready < count {
            let Some(message) = self.read_message().await else {
                break;
            };
            ready += usize::from(message.tag == b'Z');
            messages.push(message);
        }
        messages
    }
}

/// Skips when the raw client cannot log in (it speaks trust authentication only); returns
/// whether to skip.
pub fn raw_unsupported() -> bool {
    let skip = super::cluster().superuser_password().is_some();
    if skip {
        println!("skipped: the raw client supports trust authentication only");
    }
    skip
}

/// Sends `frames` in one write and reads until `readies` ReadyForQuery messages arrived.
pub async fn send_read(
    conn: &mut RawConn,
    frames: &[Vec<u8>],
    readies: usize,
) -> Vec<BackendMessage> {
    conn.send(&frames.concat()).await;
    conn.read_until_ready(readies).await
}

/// Like [`send_read`], counting one ReadyForQuery per Sync and per Query frame.
pub async fn exchange(conn: &mut RawConn, frames: &[Vec<u8>]) -> Vec<BackendMessage> {
    let readies = frames
        .iter()
        .filter(|f| matches!(f[0], b'S' | b'Q'))
        .count();
    send_read(conn, frames, readies).await
}

/// The type bytes of `messages` as a string, e.g. `"12CZ"`.
pub fn tags(messages: &[BackendMessage]) -> String {
    messages.iter().map(|m| m.tag as char).collect()
}

/// SQLSTATEs of the ErrorResponses, in order.
pub fn error_codes(messages: &[BackendMessage]) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m.tag == b'E')
        .map(|m| m.field(b'C').unwrap_or_default())
        .collect()
}

/// The text fields of every DataRow.
pub fn data_rows(messages: &[BackendMessage]) -> Vec<Vec<Option<String>>> {
    messages
        .iter()
        .filter(|m| m.tag == b'D')
        .map(BackendMessage::fields)
        .collect()
}

/// Parse (unnamed), Bind, Execute of `sql` without parameters.
pub fn run(sql: &str) -> Vec<Vec<u8>> {
    vec![
        frontend::parse("", sql, &[]),
        frontend::bind("", "", &[], 0),
        frontend::execute("", 0),
    ]
}

/// Frontend message builders (protocol 3.0), each returning the complete frame.
pub mod frontend {
    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    pub fn query(sql: &str) -> Vec<u8> {
        let mut body = Vec::new();
        cstr(&mut body, sql);
        frame(b'Q', &body)
    }

    pub fn parse(name: &str, sql: &str, param_types: &[u32]) -> Vec<u8> {
        let mut body = Vec::new();
        cstr(&mut body, name);
        cstr(&mut body, sql);
        body.extend_from_slice(&(param_types.len() as i16).to_be_bytes());
        for oid in param_types {
            body.extend_from_slice(&oid.to_be_bytes());
        }
        frame(b'P', &body)
    }

    /// Text-format parameters; `result_format` 0 = text, 1 = binary for all columns.
    pub fn bind(
        portal: &str,
        statement: &str,
        params: &[Option<&str>],
        result_format: i16,
    ) -> Vec<u8> {
        let mut body = Vec::new();
        cstr(&mut body, portal);
        cstr(&mut body, statement);
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&(params.len() as i16).to_be_bytes());
        for param in params {
            match param {
                Some(value) => {
                    body.extend_from_slice(&(value.len() as i32).to_be_bytes());
                    body.extend_from_slice(value.as_bytes());
                }
                None => body.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&result_format.to_be_bytes());
        frame(b'B', &body)
    }

    /// `kind` is `b'S'` (statement) or `b'P'` (portal).
    pub fn describe(kind: u8, name: &str) -> Vec<u8> {
        let mut body = vec![kind];
        cstr(&mut body, name);
        frame(b'D', &body)
    }

    pub fn execute(portal: &str, max_rows: i32) -> Vec<u8> {
        let mut body = Vec::new();
        cstr(&mut body, portal);
        body.extend_from_slice(&max_rows.to_be_bytes());
        frame(b'E', &body)
    }

    pub fn close(kind: u8, name: &str) -> Vec<u8> {
        let mut body = vec![kind];
        cstr(&mut body, name);
        frame(b'C', &body)
    }

    pub fn sync() -> Vec<u8> {
        frame(b'S', &[])
    }

    pub fn flush() -> Vec<u8> {
        frame(b'H', &[])
    }

    pub fn terminate() -> Vec<u8> {
        frame(b'X', &[])
    }

    /// FunctionCall with text-format arguments and a text result.
    pub fn function_call(oid: u32, args: &[Option<&str>]) -> Vec<u8> {
        let mut body = oid.to_be_bytes().to_vec();
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&(args.len() as i16).to_be_bytes());
        for arg in args {
            match arg {
                Some(value) => {
                    body.extend_from_slice(&(value.len() as i32).to_be_bytes());
                    body.extend_from_slice(value.as_bytes());
                }
                None => body.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        body.extend_from_slice(&0i16.to_be_bytes());
        frame(b'F', &body)
    }

    pub fn copy_data(data: &[u8]) -> Vec<u8> {
        frame(b'd', data)
    }

    pub fn copy_done() -> Vec<u8> {
        frame(b'c', &[])
    }

    pub fn copy_fail(reason: &str) -> Vec<u8> {
        let mut body = Vec::new();
        cstr(&mut body, reason);
        frame(b'f', &body)
    }
}
