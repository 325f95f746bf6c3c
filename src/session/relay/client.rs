//! Client → server: walks the frames of each read buffer, records the requests whose replies
//! matter, lets the [`Interceptor`] rewrite Query and Parse and re-prepare statements before
//! Bind/Describe, and produces what to write upstream: the buffer as it is when nothing
//! changed (the hot path), or a spliced copy.

use bytes::{BufMut, BytesMut};

use crate::metrics::Metrics;
use crate::session::intercept::{Decision, Interceptor, PendingRefusal};
use crate::session::replies::Request;
use crate::wire::{self, FrameCursor, Step, WireError, tag};

/// What one scan of the client's buffer produced.
#[derive(Debug, Default)]
pub struct ClientScan {
    /// Bytes of the read buffer consumed (forwarded or replaced).
    pub consumed: usize,
    /// When anything was replaced or injected, the whole output; else `None` and the first
    /// `consumed` bytes of the buffer are forwarded as they are.
    pub spliced: Option<BytesMut>,
    /// Requests whose replies the server pump must recognise, in order.
    pub requests: Vec<Request>,
    pub refusals: Vec<PendingRefusal>,
    pub terminate: bool,
}

/// Splices replacements into the output while keeping untouched runs as they are.
struct Output<'a> {
    buf: &'a [u8],
    /// Start of the buffer run not yet copied into `spliced`.
    copied_to: usize,
    spliced: Option<BytesMut>,
}

impl Output<'_> {
    /// Emits `bytes` in place of `buf[at..at + replaced]`.
    fn splice(&mut self, at: usize, replaced: usize, bytes: &[u8]) {
        let out = self
            .spliced
            .get_or_insert_with(|| BytesMut::with_capacity(self.buf.len() + bytes.len()));
        out.put_slice(&self.buf[self.copied_to..at]);
        out.put_slice(bytes);
        self.copied_to = at + replaced;
    }

    fn finish(mut self, consumed: usize) -> Option<BytesMut> {
        if let Some(out) = &mut self.spliced {
            out.put_slice(&self.buf[self.copied_to..consumed]);
        }
        self.spliced
    }
}

/// Scans `buf`; stops before a Query or Parse that is not whole yet (it must be read whole to
/// be rewritten) and before a Bind/Describe whose names are not there yet. `requests` is an
/// empty vector to fill (the caller's, reused so a round trip allocates nothing).
pub fn scan(
    buf: &[u8],
    cursor: &mut FrameCursor,
    max_message: usize,
    intercept: &mut Interceptor,
    metrics: &Metrics,
    requests: Vec<Request>,
) -> Result<ClientScan, WireError> {
    debug_assert!(requests.is_empty());
    let mut scan = ClientScan {
        requests,
        ..ClientScan::default()
    };
    let mut out = Output {
        buf,
        copied_to: 0,
        spliced: None,
    };
    let mut inject = BytesMut::new();
    let mut pos = 0;
    while pos < buf.len() {
        let (tag, len, buffered) = match cursor.step(buf, pos, max_message)? {
            Step::NeedHeader => break,
            Step::Continuation(n) => {
                cursor.continued(n);
                pos += n;
                continue;
            }
            Step::Frame { tag, len } => (tag, len, len),
            Step::Partial { tag, len, buffered } => (tag, len, buffered),
        };
        let whole = buffered == len;
        let frame = &buf[pos..pos + buffered];
        match tag {
            tag::QUERY => {
                if intercept.rewriting() && !whole {
                    break;
                }
                scan.requests.push(Request::Query);
                intercept.next_group();
                if intercept.rewriting() {
                    if let Decision::Replace(bytes) =
                        intercept.on_query(frame, metrics, &mut scan.refusals)
                    {
                        out.splice(pos, len, &bytes);
                    }
                } else {
                    metrics.statements_passthrough.increment(1);
                    if whole {
                        // Nothing migrates here now, but a SQL PREPARE may outlive that.
                        intercept.note_sql_prepare_frame(frame);
                    }
                }
            }
            tag::PARSE => {
                if !whole {
                    break;
                }
                let (decision, request) = intercept.on_parse(frame, metrics, &mut scan.refusals);
                scan.requests.push(request);
                if let Decision::Replace(bytes) = decision {
                    out.splice(pos, len, &bytes);
                }
            }
            tag::BIND | tag::DESCRIBE => {
                let statement = if tag == tag::BIND {
                    wire::bind_statement(frame)
                } else {
                    wire::describe_target(frame)
                        .and_then(|(kind, name)| (kind == b'S').then_some(name))
                };
                let names_complete = statement.is_some() || whole;
                if !names_complete {
                    break;
                }
                if let Some(name) = statement {
                    inject.clear();
                    intercept.reprepare(
                        name,
                        metrics,
                        &mut inject,
                        &mut scan.requests,
                        &mut scan.refusals,
                    );
                    if !inject.is_empty() {
                        out.splice(pos, 0, &inject);
                    }
                    if tag == tag::BIND {
                        intercept.on_bind(name, metrics);
                    }
                }
                scan.requests.push(Request::Extended);
            }
            tag::EXECUTE => scan.requests.push(Request::Extended),
            tag::COPY_DONE | tag::COPY_FAIL => scan.requests.push(Request::CopyEnd),
            tag::CLOSE => {
                if !whole {
                    break;
                }
                scan.requests.push(intercept.on_close(frame));
            }
            tag::SYNC => {
                scan.requests.push(Request::Sync);
                intercept.next_group();
            }
            tag::FUNCTION_CALL => {
                scan.requests.push(Request::Query);
                intercept.next_group();
            }
            _ => {}
        }
        if whole {
            pos += len;
        } else {
            cursor.start_partial(len, buffered);
            pos += buffered;
        }
        if tag == tag::TERMINATE {
            scan.terminate = true;
            break;
        }
    }
    scan.consumed = pos;
    scan.spliced = out.finish(pos);
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::wire::test_frame as frame;

    fn scan_all(buf: &[u8], cursor: &mut FrameCursor) -> ClientScan {
        let mut intercept = Interceptor::new("app");
        scan(
            buf,
            cursor,
            1 << 20,
            &mut intercept,
            &Metrics::default(),
            Vec::new(),
        )
        .unwrap()
    }

    #[test]
    fn records_requests_and_forwards_untouched() {
        let mut buf = frame(b'Q', b"select 1\0");
        buf.extend(frame(b'P', b"\0select $1\0\0\0"));
        buf.extend(frame(b'B', b"\0\0\0\0\0\0\0\0"));
        buf.extend(frame(b'C', b"Ss1\0"));
        buf.extend(frame(b'S', b""));
        let scan = scan_all(&buf, &mut FrameCursor::default());
        assert_eq!(scan.consumed, buf.len());
        assert!(scan.spliced.is_none());
        assert_eq!(
            scan.requests,
            [
                Request::Query,
                Request::Parse { ticket: 1 },
                Request::Extended,
                Request::Close {
                    hidden: false,
                    ticket: 2
                },
                Request::Sync
            ]
        );
    }

    #[test]
    fn large_frames_pass_in_pieces_but_parse_waits_until_whole() {
        let big = frame(b'd', &[7u8; 100]);
        let mut cursor = FrameCursor::default();
        assert_eq!(scan_all(&big[..40], &mut cursor).consumed, 40);
        assert_eq!(scan_all(&big[40..], &mut cursor).consumed, big.len() - 40);
        assert!(cursor.at_boundary());

        let mut buf = frame(b'S', b"");
        let parse = frame(b'P', b"\0select 1\0\0\0");
        buf.extend(&parse[..8]);
        let scan = scan_all(&buf, &mut FrameCursor::default());
        assert_eq!(scan.consumed, 5, "only the Sync goes");
    }

    #[test]
    fn stops_at_terminate_and_refuses_oversized_messages() {
        let mut buf = frame(b'X', b"");
        buf.extend(frame(b'Q', b"select 1\0"));
        let terminated = scan_all(&buf, &mut FrameCursor::default());
        assert!(terminated.terminate);
        assert_eq!(terminated.consumed, 5);

        let buf = frame(b'Q', &[b'x'; 2000]);
        let mut intercept = Interceptor::new("app");
        let err = scan(
            &buf,
            &mut FrameCursor::default(),
            1024,
            &mut intercept,
            &Metrics::default(),
            Vec::new(),
        );
        assert!(matches!(err, Err(WireError::MessageTooLarge { .. })));
    }
}
