//! The PostgreSQL wire format, without I/O: the 5-byte frame header, startup-phase packets
//! (SSLRequest, GSSENCRequest, CancelRequest, StartupMessage), the frame cursor that walks a
//! read buffer to find frame boundaries without decoding bodies, and the few messages pgshift
//! writes itself (ErrorResponse, BackendKeyData), encoded with pgwire's message types.

use bytes::{Buf, BufMut, BytesMut};
use pgwire::messages::Message;
use pgwire::messages::response::ErrorResponse;

/// Postgres' limit on a startup-phase packet (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET: usize = 10_000;
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// Frame tags pgshift looks at. Everything else is forwarded without a glance.
pub mod tag {
    // frontend
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const SYNC: u8 = b'S';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const TERMINATE: u8 = b'X';
    pub const PASSWORD: u8 = b'p';
    pub const BIND: u8 = b'B';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const CLOSE: u8 = b'C';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    // backend
    pub const COPY_IN_RESPONSE: u8 = b'G';
    // backend replies pgshift follows
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const CLOSE_COMPLETE: u8 = b'3';
    // backend
    pub const AUTHENTICATION: u8 = b'R';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ERROR_RESPONSE: u8 = b'E';
}

/// A problem with bytes a peer sent; the connection cannot continue after one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("invalid length of startup packet: {0}")]
    StartupLength(usize),
    #[error("invalid message length {len} for message type {tag:?}")]
    MessageLength { tag: char, len: usize },
    #[error("message of {len} bytes exceeds max_message_size ({max})")]
    MessageTooLarge { len: usize, max: usize },
    #[error("malformed {0} message")]
    Malformed(&'static str),
}

/// A packet of the startup phase, before any tagged message.
#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel(CancelKey),
    Startup(StartupMessage),
}

/// The key a client presents in a CancelRequest (secret is 4 bytes in protocol 3.0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelKey {
    pub pid: i32,
    pub secret: Vec<u8>,
}

/// A StartupMessage: its raw bytes (forwarded upstream as they came) and the parameters
/// pgshift reads.
#[derive(Debug, PartialEq, Eq)]
pub struct StartupMessage {
    pub raw: Vec<u8>,
    pub major: u16,
    pub minor: u16,
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn user(&self) -> Option<&str> {
        self.param("user")
    }
    /// The database, which Postgres defaults to the user name.
    pub fn database(&self) -> Option<&str> {
        self.param("database").or(self.user())
    }
}

/// Validates the length word of a startup-phase packet.
pub fn startup_packet_len(header: [u8; 4]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header) as usize;
    if !(8..=MAX_STARTUP_PACKET).contains(&len) {
        return Err(WireError::StartupLength(len));
    }
    Ok(len)
}

/// Parses a whole startup-phase packet (`raw` includes the length word).
pub fn parse_startup_packet(raw: &[u8]) -> Result<StartupPacket, WireError> {
    let code = u32::from_be_bytes(raw[4..8].try_into().expect("len checked"));
    match code {
        SSL_REQUEST_CODE => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE => {
            if raw.len() < 16 {
                return Err(WireError::Malformed("CancelRequest"));
            }
            let pid = i32::from_be_bytes(raw[8..12].try_into().expect("len checked"));
            Ok(StartupPacket::Cancel(CancelKey {
                pid,
                secret: raw[12..].to_vec(),
            }))
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            let params = parse_cstring_pairs(&raw[8..])?;
            Ok(StartupPacket::Startup(StartupMessage {
                raw: raw.to_vec(),
                major,
                minor,
                params,
            }))
        }
    }
}

fn parse_cstring_pairs(mut body: &[u8]) -> Result<Vec<(String, String)>, WireError> {
    let mut out = Vec::new();
    loop {
        let name = take_cstring(&mut body).ok_or(WireError::Malformed("StartupMessage"))?;
        if name.is_empty() {
            return Ok(out);
        }
        let value = take_cstring(&mut body).ok_or(WireError::Malformed("StartupMessage"))?;
        out.push((name, value));
    }
}

fn take_cstring(body: &mut &[u8]) -> Option<String> {
    let end = body.iter().position(|&b| b == 0)?;
    let s = String::from_utf8_lossy(&body[..end]).into_owned();
    *body = &body[end + 1..];
    Some(s)
}

/// Encodes a CancelRequest packet.
pub fn encode_cancel_request(key: &CancelKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + key.secret.len());
    out.put_u32((12 + key.secret.len()) as u32);
    out.put_u32(CANCEL_REQUEST_CODE);
    out.put_i32(key.pid);
    out.put_slice(&key.secret);
    out
}

/// The header of a tagged frame: tag byte and total frame size (tag + length word + body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub tag: u8,
    pub frame_len: usize,
}

/// Reads a frame header at the start of `buf`, if five bytes are there.
pub fn frame_header(buf: &[u8], max_len: usize) -> Result<Option<FrameHeader>, WireError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len < 4 {
        return Err(WireError::MessageLength {
            tag: tag as char,
            len,
        });
    }
    if len > max_len {
        return Err(WireError::MessageTooLarge { len, max: max_len });
    }
    Ok(Some(FrameHeader {
        tag,
        frame_len: len + 1,
    }))
}

/// Splits a complete frame at the front of `buf`, if there is one.
pub fn take_frame(buf: &mut BytesMut, max_len: usize) -> Result<Option<BytesMut>, WireError> {
    match frame_header(buf, max_len)? {
        Some(h) if buf.len() >= h.frame_len => Ok(Some(buf.split_to(h.frame_len))),
        _ => Ok(None),
    }
}

/// What the cursor found at the next position of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// A whole frame of `len` bytes starts here and is in the buffer.
    Frame { tag: u8, len: usize },
    /// A frame starts here but only its first bytes are buffered; `buffered` bytes are here.
    Partial {
        tag: u8,
        len: usize,
        buffered: usize,
    },
    /// Fewer than five bytes: wait for more input.
    NeedHeader,
    /// This many bytes belong to a frame whose header was seen in an earlier buffer.
    Continuation(usize),
}

/// Walks frame boundaries across reads without decoding bodies. A frame larger than one read
/// can be forwarded piece by piece: the cursor remembers how much of it is still to come.
#[derive(Debug, Default)]
pub struct FrameCursor {
    remaining: usize,
}

impl FrameCursor {
    /// True when the next byte of the stream starts a new frame.
    pub fn at_boundary(&self) -> bool {
        self.remaining == 0
    }

    /// Looks at `buf[pos..]` and reports what is there; call [`Self::consume`] to move on.
    pub fn step(&self, buf: &[u8], pos: usize, max_len: usize) -> Result<Step, WireError> {
        let rest = &buf[pos..];
        if self.remaining > 0 {
            return Ok(Step::Continuation(self.remaining.min(rest.len())));
        }
        match frame_header(rest, max_len)? {
            None => Ok(Step::NeedHeader),
            Some(h) if rest.len() >= h.frame_len => Ok(Step::Frame {
                tag: h.tag,
                len: h.frame_len,
            }),
            Some(h) => Ok(Step::Partial {
                tag: h.tag,
                len: h.frame_len,
                buffered: rest.len(),
            }),
        }
    }

    /// Records that a partial frame of `len` bytes was forwarded up to `buffered` bytes.
    pub fn start_partial(&mut self, len: usize, buffered: usize) {
        self.remaining = len - buffered;
    }

    /// Records that `n` continuation bytes were forwarded.
    pub fn continued(&mut self, n: usize) {
        self.remaining -= n;
    }
}

/// A Parse message's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseMessage<'a> {
    pub name: &'a str,
    pub query: &'a str,
    pub param_types: Vec<u32>,
}

/// Decodes a whole Parse frame; `None` when malformed or not UTF-8 (see [`parse_raw`]).
pub fn parse_message(frame: &[u8]) -> Option<ParseMessage<'_>> {
    let (name, query, param_types) = parse_raw(frame)?;
    Some(ParseMessage {
        name: std::str::from_utf8(name).ok()?,
        query: std::str::from_utf8(query).ok()?,
        param_types,
    })
}

/// A Parse frame's statement name, query bytes and parameter types, whatever the encoding.
pub fn parse_raw(frame: &[u8]) -> Option<(&[u8], &[u8], Vec<u32>)> {
    let mut body = frame.get(5..)?;
    let name = take_bytes(&mut body)?;
    let query = take_bytes(&mut body)?;
    if body.len() < 2 {
        return None;
    }
    let n = u16::from_be_bytes([body[0], body[1]]) as usize;
    let types = body.get(2..2 + 4 * n)?;
    let param_types = types
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Some((name, query, param_types))
}

fn take_bytes<'a>(body: &mut &'a [u8]) -> Option<&'a [u8]> {
    let end = body.iter().position(|&b| b == 0)?;
    let s = &body[..end];
    *body = &body[end + 1..];
    Some(s)
}

/// Appends a Parse frame whose name is given as bytes.
pub fn put_parse_bytes(buf: &mut BytesMut, name: &[u8], query: &str, param_types: &[u32]) {
    buf.put_u8(tag::PARSE);
    let len = 4 + name.len() + 1 + query.len() + 1 + 2 + 4 * param_types.len();
    buf.put_u32(len as u32);
    buf.put_slice(name);
    buf.put_u8(0);
    put_cstr(buf, query);
    buf.put_u16(param_types.len() as u16);
    for t in param_types {
        buf.put_u32(*t);
    }
}

/// The query text of a whole Query frame.
pub fn query_text(frame: &[u8]) -> Option<&str> {
    let mut body = frame.get(5..)?;
    take_str(&mut body)
}

/// The statement a Bind refers to: its second string. Works on a frame prefix.
pub fn bind_statement(frame: &[u8]) -> Option<&str> {
    let mut body = frame.get(5..)?;
    take_str(&mut body)?; // portal
    take_str(&mut body)
}

/// The kind (`S` statement or `P` portal) and name a Describe or Close refers to.
pub fn describe_target(frame: &[u8]) -> Option<(u8, &str)> {
    let kind = *frame.get(5)?;
    let mut body = frame.get(6..)?;
    Some((kind, take_str(&mut body)?))
}

fn take_str<'a>(body: &mut &'a [u8]) -> Option<&'a str> {
    let end = body.iter().position(|&b| b == 0)?;
    let s = std::str::from_utf8(&body[..end]).ok()?;
    *body = &body[end + 1..];
    Some(s)
}

/// Appends a Parse frame.
pub fn put_parse(buf: &mut BytesMut, name: &str, query: &str, param_types: &[u32]) {
    put_parse_bytes(buf, name.as_bytes(), query, param_types);
}

/// Appends a Query frame.
pub fn put_query(buf: &mut BytesMut, query: &str) {
    buf.put_u8(tag::QUERY);
    buf.put_u32((4 + query.len() + 1) as u32);
    put_cstr(buf, query);
}

/// Appends a Close frame for a prepared statement.
pub fn put_close_statement(buf: &mut BytesMut, name: &str) {
    buf.put_u8(tag::CLOSE);
    buf.put_u32((4 + 1 + name.len() + 1) as u32);
    buf.put_u8(b'S');
    put_cstr(buf, name);
}

fn put_cstr(buf: &mut BytesMut, s: &str) {
    buf.put_slice(s.as_bytes());
    buf.put_u8(0);
}

/// A tagged frame with `body`, for tests of code that walks frames.
#[cfg(test)]
pub(crate) fn test_frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![tag];
    f.extend(((body.len() + 4) as u32).to_be_bytes());
    f.extend(body);
    f
}

/// Severity of a pgshift-made error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

/// Appends an ErrorResponse with the given SQLSTATE and message.
pub fn put_error(buf: &mut BytesMut, severity: Severity, code: &str, message: &str) {
    let sev = match severity {
        Severity::Error => "ERROR",
        Severity::Fatal => "FATAL",
    };
    let fields = vec![
        (b'S', sev.to_owned()),
        (b'V', sev.to_owned()),
        (b'C', code.to_owned()),
        (b'M', message.to_owned()),
    ];
    ErrorResponse::new(fields)
        .encode(buf)
        .expect("ErrorResponse encoding cannot fail");
}

/// An ErrorResponse as bytes.
pub fn error_frame(severity: Severity, code: &str, message: &str) -> BytesMut {
    let mut buf = BytesMut::with_capacity(64 + message.len());
    put_error(&mut buf, severity, code, message);
    buf
}

/// A BackendKeyData body: the backend's pid and its secret (4 bytes in 3.0, up to 256 in 3.2).
pub fn parse_backend_key_data(frame: &[u8]) -> Result<CancelKey, WireError> {
    if frame.len() < 5 + 8 {
        return Err(WireError::Malformed("BackendKeyData"));
    }
    let mut body = &frame[5..];
    let pid = body.get_i32();
    Ok(CancelKey {
        pid,
        secret: body.to_vec(),
    })
}

/// Encodes a BackendKeyData frame.
pub fn backend_key_data_frame(key: &CancelKey) -> BytesMut {
    let mut buf = BytesMut::with_capacity(13 + key.secret.len());
    buf.put_u8(tag::BACKEND_KEY_DATA);
    buf.put_u32((8 + key.secret.len()) as u32);
    buf.put_i32(key.pid);
    buf.put_slice(&key.secret);
    buf
}

/// Rewrites an AuthenticationSASL frame without `-PLUS` mechanisms: channel binding binds to
/// the TLS connection pgshift terminates, so it can never verify across the proxy.
/// Returns `None` when the frame is not AuthenticationSASL.
pub fn strip_channel_binding(frame: &[u8]) -> Option<BytesMut> {
    if frame.len() < 9 || frame[0] != tag::AUTHENTICATION || frame[5..9] != 10u32.to_be_bytes() {
        return None;
    }
    let mut out = BytesMut::with_capacity(frame.len());
    out.put_u8(tag::AUTHENTICATION);
    out.put_u32(0); // patched below
    out.put_u32(10);
    for mech in frame[9..].split(|&b| b == 0).filter(|m| !m.is_empty()) {
        if !mech.ends_with(b"-PLUS") {
            out.put_slice(mech);
            out.put_u8(0);
        }
    }
    out.put_u8(0);
    let len = (out.len() - 1) as u32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    Some(out)
}

/// The authentication request code of an 'R' frame.
pub fn auth_code(frame: &[u8]) -> Option<u32> {
    (frame.len() >= 9).then(|| u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup_bytes(params: &[(&str, &str)]) -> Vec<u8> {
        let mut body = Vec::new();
        body.put_u32(196_608);
        for (k, v) in params {
            body.put_slice(k.as_bytes());
            body.put_u8(0);
            body.put_slice(v.as_bytes());
            body.put_u8(0);
        }
        body.put_u8(0);
        let mut out = Vec::new();
        out.put_u32(body.len() as u32 + 4);
        out.extend(body);
        out
    }

    #[test]
    fn parses_startup_parameters() {
        let raw = startup_bytes(&[("user", "alice"), ("application_name", "x y")]);
        let StartupPacket::Startup(m) = parse_startup_packet(&raw).unwrap() else {
            panic!("not a startup message");
        };
        assert_eq!((m.major, m.minor), (3, 0));
        assert_eq!(m.user(), Some("alice"));
        assert_eq!(m.database(), Some("alice"));
        assert_eq!(m.param("application_name"), Some("x y"));
        assert_eq!(m.raw, raw);
    }

    #[test]
    fn startup_packet_lengths_are_bounded() {
        assert_eq!(startup_packet_len(8u32.to_be_bytes()), Ok(8));
        assert!(startup_packet_len(7u32.to_be_bytes()).is_err());
        assert!(startup_packet_len(0x7fff_ffffu32.to_be_bytes()).is_err());
        let mut truncated = startup_bytes(&[("user", "a")]);
        truncated.truncate(truncated.len() - 3);
        assert!(parse_startup_packet(&truncated).is_err());
    }

    #[test]
    fn cancel_request_round_trips() {
        let key = CancelKey {
            pid: 4242,
            secret: vec![1, 2, 3, 4],
        };
        let raw = encode_cancel_request(&key);
        assert_eq!(raw.len(), 16);
        assert_eq!(parse_startup_packet(&raw), Ok(StartupPacket::Cancel(key)));
        let ssl = [0, 0, 0, 8, 4, 210, 22, 47];
        assert_eq!(parse_startup_packet(&ssl), Ok(StartupPacket::SslRequest));
    }

    #[test]
    fn cursor_walks_whole_partial_and_continued_frames() {
        // Z(5 bytes body) then a D frame of 10 bytes of which 4 are buffered.
        let mut buf = vec![b'Z', 0, 0, 0, 5, b'I'];
        buf.extend([b'D', 0, 0, 0, 13, 0, 1, 0, 0]);
        let mut c = FrameCursor::default();
        assert_eq!(
            c.step(&buf, 0, 1 << 20),
            Ok(Step::Frame { tag: b'Z', len: 6 })
        );
        assert_eq!(
            c.step(&buf, 6, 1 << 20),
            Ok(Step::Partial {
                tag: b'D',
                len: 14,
                buffered: 9
            })
        );
        c.start_partial(14, 9);
        assert!(!c.at_boundary());
        assert_eq!(c.step(&[0; 3], 0, 1 << 20), Ok(Step::Continuation(3)));
        c.continued(3);
        assert_eq!(c.step(&[0; 8], 0, 1 << 20), Ok(Step::Continuation(2)));
        c.continued(2);
        assert!(c.at_boundary());
        assert_eq!(c.step(&[b'Z', 0], 0, 1 << 20), Ok(Step::NeedHeader));
    }

    #[test]
    fn frame_lengths_are_checked() {
        assert!(matches!(
            frame_header(&[b'Q', 0, 0, 0, 3], 100),
            Err(WireError::MessageLength { .. })
        ));
        assert!(matches!(
            frame_header(&[b'Q', 0, 0, 1, 0], 100),
            Err(WireError::MessageTooLarge { len: 256, max: 100 })
        ));
    }

    #[test]
    fn sasl_plus_mechanisms_are_removed() {
        let mut frame = vec![b'R', 0, 0, 0, 0, 0, 0, 0, 10];
        frame.extend(b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        let len = (frame.len() - 1) as u32;
        frame[1..5].copy_from_slice(&len.to_be_bytes());
        let out = strip_channel_binding(&frame).unwrap();
        assert_eq!(&out[9..], b"SCRAM-SHA-256\0\0");
        assert_eq!(
            u32::from_be_bytes(out[1..5].try_into().unwrap()) as usize,
            out.len() - 1
        );
        assert!(strip_channel_binding(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0]).is_none());
    }

    #[test]
    fn extended_messages_round_trip() {
        let mut buf = BytesMut::new();
        put_parse(&mut buf, "s1", "select $1", &[23]);
        assert_eq!(
            parse_message(&buf),
            Some(ParseMessage {
                name: "s1",
                query: "select $1",
                param_types: vec![23]
            })
        );
        let mut q = BytesMut::new();
        put_query(&mut q, "select 1");
        assert_eq!(query_text(&q), Some("select 1"));
        let mut c = BytesMut::new();
        put_close_statement(&mut c, "s1");
        assert_eq!(describe_target(&c), Some((b'S', "s1")));
        let bind = [b'B', 0, 0, 0, 20, b'p', 0, b's', b'1', 0, 0, 0];
        assert_eq!(bind_statement(&bind), Some("s1"));
        assert_eq!(bind_statement(&bind[..7]), None);
        assert_eq!(parse_message(&[b'P', 0, 0, 0, 4]), None);
    }

    #[test]
    fn backend_key_data_round_trips() {
        let key = CancelKey {
            pid: 7,
            secret: vec![9, 9, 9, 9],
        };
        let frame = backend_key_data_frame(&key);
        assert_eq!(parse_backend_key_data(&frame).unwrap(), key);
    }

    #[test]
    fn error_frames_carry_code_and_message() {
        let f = error_frame(Severity::Fatal, "53300", "sorry, too many clients already");
        assert_eq!(f[0], b'E');
        let text = String::from_utf8_lossy(&f);
        assert!(text.contains("FATAL") && text.contains("53300") && text.contains("too many"));
    }
}
