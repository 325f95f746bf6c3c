//! The requests whose replies the server pump must recognise, in the order the client pump
//! forwarded them: Parse and Close (their ParseComplete/CloseComplete may be pgshift's own,
//! to hide) and the messages that end in ReadyForQuery (Sync, Query, FunctionCall).
//!
//! After an error in the extended protocol Postgres discards messages until Sync, so their
//! replies never come; the record drops them the same way. It also holds the transaction
//! status and the session's closing flag, so both pumps decide under one lock, taken once per
//! read buffer.

use std::collections::VecDeque;

use bytes::BytesMut;

/// One forwarded request whose reply matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// A client's Parse.
    Parse,
    /// A Parse pgshift injected to re-prepare a statement (its ParseComplete is hidden); its
    /// outcome is reported back under `ticket`.
    Reparse { ticket: u64 },
    /// A Close; `hidden` likewise.
    Close { hidden: bool },
    /// Sync: ends an extended-protocol sequence with ReadyForQuery.
    Sync,
    /// Query or FunctionCall: answered and ended with ReadyForQuery on its own.
    Query,
}

/// What the server pump does with a reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    Hide,
}

/// The record shared by the two pumps.
#[derive(Debug)]
pub struct Replies {
    requests: VecDeque<Request>,
    /// ReadyForQuery replies owed (Sync and Query entries in `requests`).
    owed: u64,
    /// Status byte of the last ReadyForQuery: `I`, `T` or `E`.
    status: u8,
    /// Set once the session decided to close; nothing is forwarded after it.
    closing: bool,
    /// ErrorResponses to substitute, by the marker their text contains (see
    /// [`crate::session`]'s refusal mechanism).
    refusals: Vec<(String, BytesMut)>,
    /// Outcomes of re-prepares: (ticket, succeeded).
    settled: Vec<(u64, bool)>,
}

impl Default for Replies {
    fn default() -> Self {
        Replies {
            requests: VecDeque::new(),
            owed: 0,
            status: b'I',
            closing: false,
            refusals: Vec::new(),
            settled: Vec::new(),
        }
    }
}

impl Replies {
    /// Records forwarded requests; false (and nothing recorded) once the session is closing.
    pub fn push(&mut self, requests: &[Request]) -> bool {
        if self.closing {
            return false;
        }
        for r in requests {
            if matches!(r, Request::Sync | Request::Query) {
                self.owed += 1;
            }
            self.requests.push_back(*r);
        }
        true
    }

    /// Registers a refusal's ErrorResponse, substituted for the server error naming `marker`.
    pub fn add_refusal(&mut self, marker: String, frame: BytesMut) {
        self.refusals.push((marker, frame));
    }

    /// The substitute for an ErrorResponse, if it answers a refusal.
    pub fn take_refusal(&mut self, error_frame: &[u8]) -> Option<BytesMut> {
        if self.refusals.is_empty() {
            return None;
        }
        let pos = self.refusals.iter().position(|(marker, _)| {
            error_frame
                .windows(marker.len())
                .any(|w| w == marker.as_bytes())
        })?;
        Some(self.refusals.swap_remove(pos).1)
    }

    pub fn has_refusals(&self) -> bool {
        !self.refusals.is_empty()
    }

    /// ParseComplete or CloseComplete arrived.
    pub fn on_complete(&mut self, parse: bool) -> Verdict {
        let position = self.requests.iter().position(|r| match r {
            Request::Parse | Request::Reparse { .. } => parse,
            Request::Close { .. } => !parse,
            Request::Sync | Request::Query => true,
        });
        let Some(i) = position else {
            return Verdict::Forward;
        };
        match self.requests[i] {
            Request::Parse => {
                self.requests.remove(i);
                Verdict::Forward
            }
            Request::Reparse { ticket } => {
                self.requests.remove(i);
                self.settled.push((ticket, true));
                Verdict::Hide
            }
            Request::Close { hidden } => {
                self.requests.remove(i);
                if hidden {
                    Verdict::Hide
                } else {
                    Verdict::Forward
                }
            }
            Request::Sync | Request::Query => Verdict::Forward,
        }
    }

    /// An ErrorResponse arrived: the requests up to the next Sync are discarded by the server.
    pub fn on_error(&mut self) {
        while let Some(r) = self.requests.front().copied() {
            if matches!(r, Request::Sync | Request::Query) {
                break;
            }
            self.drop_front();
        }
    }

    /// Removes the first request unanswered; a re-prepare among them failed.
    fn drop_front(&mut self) {
        if let Some(Request::Reparse { ticket }) = self.requests.pop_front() {
            self.settled.push((ticket, false));
        }
    }

    /// Re-prepare outcomes since the last call: (ticket, succeeded).
    pub fn take_settled(&mut self) -> Vec<(u64, bool)> {
        std::mem::take(&mut self.settled)
    }

    /// The transaction status of the last ReadyForQuery.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// ReadyForQuery arrived. Returns true when the session is now idle.
    pub fn on_ready(&mut self, status: u8) -> bool {
        while let Some(r) = self.requests.front().copied() {
            if matches!(r, Request::Sync | Request::Query) {
                self.requests.pop_front();
                break;
            }
            self.drop_front();
        }
        self.owed = self.owed.saturating_sub(1);
        self.status = status;
        if self.is_idle() {
            // Refusals the server never answered (discarded after an earlier error) are void.
            self.refusals.clear();
            true
        } else {
            false
        }
    }

    /// No reply owed and no transaction open.
    pub fn is_idle(&self) -> bool {
        self.owed == 0 && self.status == b'I'
    }

    /// Marks the session closing if it is idle; true when it is (now) closing.
    pub fn try_close(&mut self) -> bool {
        if self.is_idle() {
            self.closing = true;
        }
        self.closing
    }

    pub fn close_now(&mut self) {
        self.closing = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Request::*;

    #[test]
    fn hidden_replies_are_matched_in_order() {
        let mut r = Replies::default();
        // Client Parse(a); pgshift injects Close+Parse before a Bind; Sync.
        r.push(&[Parse, Close { hidden: true }, Reparse { ticket: 7 }, Sync]);
        assert!(!r.is_idle());
        assert_eq!(r.on_complete(true), Verdict::Forward);
        assert_eq!(r.on_complete(false), Verdict::Hide);
        assert_eq!(r.on_complete(true), Verdict::Hide);
        assert_eq!(r.take_settled(), [(7, true)]);
        assert!(r.on_ready(b'I'));
        assert_eq!(
            r.on_complete(true),
            Verdict::Forward,
            "nothing left to hide"
        );
    }

    #[test]
    fn an_error_discards_requests_until_sync() {
        let mut r = Replies::default();
        r.push(&[
            Parse,
            Reparse { ticket: 1 },
            Sync,
            Reparse { ticket: 2 },
            Sync,
        ]);
        r.on_error();
        assert_eq!(
            r.take_settled(),
            [(1, false)],
            "a discarded re-prepare failed"
        );
        assert!(!r.on_ready(b'I'));
        // The second sequence is intact.
        assert_eq!(r.on_complete(true), Verdict::Hide);
        assert_eq!(r.take_settled(), [(2, true)]);
        assert!(r.on_ready(b'I'));
    }

    #[test]
    fn simple_queries_and_transactions_decide_idleness() {
        let mut r = Replies::default();
        r.push(&[Query, Query]);
        assert!(!r.on_ready(b'T'));
        assert!(!r.try_close());
        assert!(!r.on_ready(b'T'));
        assert!(!r.is_idle());
        r.push(&[Query]);
        assert!(r.on_ready(b'I'));
        assert!(r.try_close());
        assert!(!r.push(&[Query]), "nothing is forwarded once closing");
    }

    #[test]
    fn refusals_are_substituted_by_marker_and_void_when_idle() {
        let mut r = Replies::default();
        r.add_refusal("pgshift_refused_1".into(), BytesMut::from(&b"mine"[..]));
        assert!(r.take_refusal(b"relation \"x\" does not exist").is_none());
        assert_eq!(
            r.take_refusal(b"relation \"pgshift_refused_1\" does not exist")
                .as_deref(),
            Some(&b"mine"[..])
        );
        r.add_refusal("pgshift_refused_2".into(), BytesMut::new());
        r.push(&[Query]);
        r.on_ready(b'I');
        assert!(!r.has_refusals());
    }
}
