//! The requests whose replies the server pump must recognise, in the order the client pump
//! forwarded them: Parse and Close (their outcome decides what the session remembers, and
//! pgshift's own are hidden), the other extended-protocol messages (an unsynced batch keeps
//! the session in a transaction), COPY ends, and the messages that end in ReadyForQuery
//! (Sync, Query, FunctionCall).
//!
//! After an error in the extended protocol Postgres discards messages until Sync, so their
//! replies never come; the record drops them the same way. During COPY IN Postgres ignores
//! Sync. The record also holds the transaction status and the session's closing flag, so both
//! pumps decide under one lock, taken once per read buffer.

use std::collections::VecDeque;

use bytes::BytesMut;

/// One forwarded request whose reply matters. Tickets report outcomes back to the client
/// pump ([`Replies::take_settled`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// A client's Parse.
    Parse { ticket: u64 },
    /// A Parse pgshift injected to re-prepare a statement; its ParseComplete is hidden.
    Reparse { ticket: u64 },
    /// A Close; `hidden` when pgshift injected it.
    Close { hidden: bool, ticket: u64 },
    /// Bind, Execute or Describe: answered before the Sync that ends their batch.
    Extended,
    /// CopyDone or CopyFail: the end of a COPY IN's data.
    CopyEnd,
    /// Sync: ends an extended-protocol batch with ReadyForQuery.
    Sync,
    /// Query or FunctionCall: answered and ended with ReadyForQuery on its own.
    Query,
}

impl Request {
    fn ends_batch(self) -> bool {
        matches!(self, Request::Sync | Request::Query)
    }

    fn ticket(self) -> Option<u64> {
        match self {
            Request::Parse { ticket }
            | Request::Reparse { ticket }
            | Request::Close { ticket, .. } => Some(ticket),
            _ => None,
        }
    }
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
    /// Outcomes of ticketed requests: (ticket, succeeded).
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
            if r.ends_batch() {
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

    /// Removes request `i`; `ok` settles its ticket.
    fn answer(&mut self, i: usize, ok: bool) -> Option<Request> {
        let r = self.requests.remove(i)?;
        if r.ends_batch() {
            self.owed = self.owed.saturating_sub(1);
        }
        if let Some(ticket) = r.ticket() {
            self.settled.push((ticket, ok));
        }
        Some(r)
    }

    /// ParseComplete or CloseComplete arrived: it answers the first Parse (or Close) of the
    /// current batch.
    pub fn on_complete(&mut self, parse: bool) -> Verdict {
        let position = self.requests.iter().position(|r| match r {
            Request::Parse { .. } | Request::Reparse { .. } => parse,
            Request::Close { .. } => !parse,
            r => r.ends_batch(),
        });
        let Some(i) = position.filter(|&i| !self.requests[i].ends_batch()) else {
            return Verdict::Forward;
        };
        match self.answer(i, true) {
            Some(Request::Reparse { .. } | Request::Close { hidden: true, .. }) => Verdict::Hide,
            _ => Verdict::Forward,
        }
    }

    /// An ErrorResponse arrived. An error of a simple Query ends only that Query (its
    /// ReadyForQuery follows); an extended-protocol error makes Postgres discard everything up
    /// to the next Sync, Queries included.
    pub fn on_error(&mut self) {
        if matches!(self.requests.front(), Some(Request::Query) | None) {
            return;
        }
        while let Some(&r) = self.requests.front() {
            if r == Request::Sync {
                break;
            }
            self.answer(0, false);
        }
    }

    /// CopyInResponse arrived: Syncs sent before the COPY's data ends are ignored by Postgres.
    pub fn on_copy_in(&mut self) {
        let end = self
            .requests
            .iter()
            .position(|r| *r == Request::CopyEnd)
            .unwrap_or(self.requests.len());
        let mut i = 0;
        let mut limit = end;
        while i < limit {
            if self.requests[i] == Request::Sync {
                self.answer(i, true);
                limit -= 1;
            } else {
                i += 1;
            }
        }
    }

    /// Outcomes of ticketed requests since the last call: (ticket, succeeded).
    pub fn take_settled(&mut self) -> Vec<(u64, bool)> {
        std::mem::take(&mut self.settled)
    }

    /// ReadyForQuery arrived. Returns true when the session is now idle.
    pub fn on_ready(&mut self, status: u8) -> bool {
        while let Some(&r) = self.requests.front() {
            self.answer(
                0,
                !matches!(
                    r,
                    Request::Parse { .. } | Request::Reparse { .. } | Request::Close { .. }
                ),
            );
            if r.ends_batch() {
                break;
            }
        }
        // A COPY's end is answered by the ReadyForQuery of the Query that started it.
        while self.requests.front() == Some(&Request::CopyEnd) {
            self.requests.pop_front();
        }
        self.status = status;
        if self.is_idle() {
            // Refusals the server never answered (discarded after an earlier error) are void.
            self.refusals.clear();
            true
        } else {
            false
        }
    }

    /// The transaction status of the last ReadyForQuery.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// Nothing owed, nothing unsynced and no transaction open.
    pub fn is_idle(&self) -> bool {
        self.owed == 0 && self.status == b'I' && self.requests.is_empty()
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
        r.push(&[
            Parse { ticket: 1 },
            Close {
                hidden: true,
                ticket: 0,
            },
            Reparse { ticket: 7 },
            Extended,
            Sync,
        ]);
        assert!(!r.is_idle());
        assert_eq!(r.on_complete(true), Verdict::Forward);
        assert_eq!(r.on_complete(false), Verdict::Hide);
        assert_eq!(r.on_complete(true), Verdict::Hide);
        assert_eq!(r.take_settled(), [(1, true), (0, true), (7, true)]);
        assert!(r.on_ready(b'I'));
        assert_eq!(
            r.on_complete(true),
            Verdict::Forward,
            "nothing left to hide"
        );
    }

    #[test]
    fn an_extended_error_discards_requests_until_sync_queries_included() {
        let mut r = Replies::default();
        r.push(&[
            Extended,
            Reparse { ticket: 1 },
            Query,
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
        // The second batch is intact.
        assert_eq!(r.on_complete(true), Verdict::Hide);
        assert_eq!(r.take_settled(), [(2, true)]);
        assert!(r.on_ready(b'I'));
    }

    #[test]
    fn a_simple_query_error_discards_nothing() {
        let mut r = Replies::default();
        r.push(&[Query, Parse { ticket: 3 }, Sync]);
        r.on_error();
        assert!(!r.on_ready(b'I'));
        assert_eq!(r.on_complete(true), Verdict::Forward);
        assert_eq!(r.take_settled(), [(3, true)]);
        assert!(r.on_ready(b'I'));
    }

    #[test]
    fn an_unsynced_batch_is_not_idle() {
        let mut r = Replies::default();
        r.push(&[Parse { ticket: 1 }, Extended, Extended]);
        assert_eq!(r.on_complete(true), Verdict::Forward);
        assert!(!r.is_idle(), "Bind/Execute sent, no Sync yet");
        r.push(&[Sync]);
        assert!(r.on_ready(b'I'));
    }

    #[test]
    fn syncs_during_copy_in_are_ignored() {
        let mut r = Replies::default();
        // tokio-postgres: Bind/Execute/Sync, then data, CopyDone, Sync.
        r.push(&[Extended, Extended, Sync]);
        r.on_copy_in();
        assert!(!r.is_idle());
        r.push(&[CopyEnd, Sync]);
        assert!(r.on_ready(b'I'), "one ReadyForQuery ends it all");

        // Simple COPY: Query, data, CopyDone.
        r.push(&[Query]);
        r.on_copy_in();
        r.push(&[CopyEnd]);
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
        r.add_refusal("\"pgshift_refused_1\"".into(), BytesMut::from(&b"mine"[..]));
        assert!(r.take_refusal(b"relation \"x\" does not exist").is_none());
        assert!(
            r.take_refusal(b"relation \"pgshift_refused_10\" does not exist")
                .is_none()
        );
        assert_eq!(
            r.take_refusal(b"relation \"pgshift_refused_1\" does not exist")
                .as_deref(),
            Some(&b"mine"[..])
        );
        r.add_refusal("\"pgshift_refused_2\"".into(), BytesMut::new());
        r.push(&[Query]);
        r.on_ready(b'I');
        assert!(!r.has_refusals());
    }
}
