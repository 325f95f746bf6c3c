//! Server → client: walks the frames of each read buffer against the [`Replies`] record:
//! ReadyForQuery updates the transaction status, ParseComplete/CloseComplete of pgshift's own
//! injected messages are hidden, ErrorResponses drop the requests Postgres discards, and the
//! error answering a refusal is replaced by pgshift's own. Everything else passes as it is.

use bytes::{BufMut, BytesMut};

use crate::session::replies::{Replies, Verdict};
use crate::wire::{FrameCursor, Step, tag};

/// Server messages are trusted; this only guards the length arithmetic.
const MAX_SERVER_MESSAGE: usize = i32::MAX as usize;

/// What one scan of the server's buffer produced.
#[derive(Debug, Default)]
pub struct ServerScan {
    pub consumed: usize,
    /// The output when a frame was hidden or replaced; else the first `consumed` bytes go.
    pub spliced: Option<BytesMut>,
    /// The session became idle (ReadyForQuery `I` with nothing owed).
    pub became_idle: bool,
    /// A ReadyForQuery was seen.
    pub saw_ready: bool,
    /// The last whole frame was an ErrorResponse (a FATAL before the server closes).
    pub last_was_error: bool,
}

pub fn scan(buf: &[u8], cursor: &mut FrameCursor, replies: &mut Replies) -> ServerScan {
    let mut scan = ServerScan::default();
    let mut copied_to = 0;
    let mut spliced: Option<BytesMut> = None;
    let mut pos = 0;
    while pos < buf.len() {
        // A length beyond MAX_SERVER_MESSAGE is a broken server; let the client judge it.
        let step = cursor
            .step(buf, pos, MAX_SERVER_MESSAGE)
            .unwrap_or(Step::NeedHeader);
        let (tag, len) = match step {
            Step::NeedHeader => break,
            Step::Continuation(n) => {
                cursor.continued(n);
                pos += n;
                continue;
            }
            Step::Frame { tag, len } => (tag, len),
            Step::Partial { tag, .. }
                if tag == tag::READY_FOR_QUERY
                    || (tag == tag::ERROR_RESPONSE && replies.has_refusals()) =>
            {
                break; // read these whole
            }
            Step::Partial { tag, len, buffered } => {
                if tag == tag::ERROR_RESPONSE {
                    replies.on_error();
                }
                cursor.start_partial(len, buffered);
                scan.last_was_error = false;
                pos += buffered;
                continue;
            }
        };
        let frame = &buf[pos..pos + len];
        let mut replacement: Option<&[u8]> = None;
        let substitute;
        match tag {
            tag::READY_FOR_QUERY if len >= 6 => {
                scan.saw_ready = true;
                scan.became_idle = replies.on_ready(frame[5]);
            }
            tag::PARSE_COMPLETE | tag::CLOSE_COMPLETE
                if replies.on_complete(tag == tag::PARSE_COMPLETE) == Verdict::Hide =>
            {
                replacement = Some(&[]);
            }
            tag::COPY_IN_RESPONSE => replies.on_copy_in(),
            tag::ERROR_RESPONSE => {
                substitute = replies.take_refusal(frame);
                if let Some(s) = &substitute {
                    replacement = Some(s);
                }
                replies.on_error();
            }
            _ => {}
        }
        if let Some(bytes) = replacement {
            let out = spliced.get_or_insert_with(|| BytesMut::with_capacity(buf.len()));
            out.put_slice(&buf[copied_to..pos]);
            out.put_slice(bytes);
            copied_to = pos + len;
        }
        scan.last_was_error = tag == tag::ERROR_RESPONSE;
        pos += len;
    }
    if let Some(out) = &mut spliced {
        out.put_slice(&buf[copied_to..pos]);
    }
    scan.consumed = pos;
    scan.spliced = spliced;
    scan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::replies::Request;

    use crate::wire::test_frame as frame;

    #[test]
    fn tracks_ready_for_query_and_forwards_untouched() {
        let mut replies = Replies::default();
        replies.push(&[Request::Query, Request::Query]);
        let mut buf = frame(b'C', b"SELECT 1\0");
        buf.extend(frame(b'Z', b"T"));
        buf.extend(frame(b'E', b"SERROR\0\0"));
        buf.extend(frame(b'Z', b"I"));
        let out = scan(&buf, &mut FrameCursor::default(), &mut replies);
        assert_eq!(out.consumed, buf.len());
        assert!(out.spliced.is_none());
        assert!(out.became_idle && out.saw_ready);
    }

    #[test]
    fn ready_for_query_is_read_whole() {
        let mut replies = Replies::default();
        let mut buf = frame(b'C', b"BEGIN\0");
        buf.extend(&frame(b'Z', b"I")[..5]);
        let out = scan(&buf, &mut FrameCursor::default(), &mut replies);
        assert_eq!(out.consumed, buf.len() - 5);
        assert!(!out.saw_ready);
    }

    #[test]
    fn hidden_replies_are_cut_and_refusals_substituted() {
        let mut replies = Replies::default();
        replies.push(&[
            Request::Close {
                hidden: true,
                ticket: 0,
            },
            Request::Reparse { ticket: 1 },
            Request::Sync,
            Request::Query,
        ]);
        replies.add_refusal("\"pgshift_refused_1\"".into(), BytesMut::from(&b"MINE"[..]));
        let mut buf = frame(b'3', b"");
        buf.extend(frame(b'1', b""));
        buf.extend(frame(b'2', b""));
        buf.extend(frame(b'Z', b"I"));
        buf.extend(frame(
            b'E',
            b"Mrelation \"pgshift_refused_1\" does not exist\0\0",
        ));
        buf.extend(frame(b'Z', b"I"));
        let out = scan(&buf, &mut FrameCursor::default(), &mut replies);
        let mut want = frame(b'2', b"");
        want.extend(frame(b'Z', b"I"));
        want.extend(b"MINE");
        want.extend(frame(b'Z', b"I"));
        assert_eq!(out.spliced.as_deref(), Some(&want[..]));
        assert_eq!(out.consumed, buf.len());
    }
}
