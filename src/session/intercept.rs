//! The statement side of a session: which snapshot the current transaction uses, what each
//! Query and Parse becomes under it, and which prepared statements must be re-prepared
//! because the phase changed since they were parsed.
//!
//! Refusals travel through the server so that ordering and transaction state stay exactly
//! Postgres': a refused statement is replaced by one that fails at parse analysis with an
//! undefined relation whose name carries a marker (`pgshift_refused_N`); the server pump
//! swaps that ErrorResponse for pgshift's 0A000 one. Postgres then aborts the transaction and
//! discards until Sync as it would for any error, and nothing of the statement runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;

use super::replies::Request;
use crate::metrics::Metrics;
use crate::rewrite::{Outcome, Rewriter};
use crate::snapshot::Snapshot;
use crate::wire::{self, Severity};

/// A prepared statement as the client defined it and as it was sent upstream.
#[derive(Debug)]
struct Prepared {
    query: String,
    param_types: Vec<u32>,
    /// Epoch of the snapshot its upstream text was computed under.
    epoch: u64,
    /// The text sent upstream.
    sent: Arc<str>,
}

/// What to forward for one client frame.
#[derive(Debug)]
pub enum Decision {
    /// The frame as it is.
    Forward,
    /// These bytes instead.
    Replace(BytesMut),
}

/// A refusal's ErrorResponse, to substitute for the server's error naming `marker`.
#[derive(Debug)]
pub struct PendingRefusal {
    pub marker: String,
    pub frame: BytesMut,
}

/// Per-session statement state, owned by the client pump.
#[derive(Debug)]
pub struct Interceptor {
    database: String,
    epoch: u64,
    /// The pinned snapshot's rewriter for this database; `None` when nothing is migrating.
    rewriter: Option<Arc<Rewriter>>,
    statements: HashMap<String, Prepared>,
    refusals: u64,
}

impl Interceptor {
    pub fn new(database: &str) -> Interceptor {
        Interceptor {
            database: database.to_owned(),
            epoch: 0,
            rewriter: None,
            statements: HashMap::new(),
            refusals: 0,
        }
    }

    /// Pins `snapshot` for the transaction that starts now.
    pub fn pin(&mut self, snapshot: &Snapshot) {
        if snapshot.epoch == self.epoch {
            return;
        }
        self.epoch = snapshot.epoch;
        self.rewriter = snapshot
            .database(&self.database)
            .map(|view| view.rewriter.clone())
            .filter(|r| !r.is_empty());
    }

    /// Query frames must be read whole only while something is migrating.
    pub fn rewriting(&self) -> bool {
        self.rewriter.is_some()
    }

    fn outcome(&self, query: &str, param_types: &[u32], metrics: &Metrics) -> Arc<Outcome> {
        match &self.rewriter {
            Some(rw) if rw.may_touch(query) => {
                let started = Instant::now();
                let outcome = rw.rewrite_cached(query, param_types);
                metrics
                    .rewrite_seconds
                    .record(started.elapsed().as_secs_f64());
                outcome
            }
            _ => Arc::new(Outcome::Unchanged),
        }
    }

    fn refusal(&mut self, message: &str) -> (String, PendingRefusal) {
        self.refusals += 1;
        let marker = format!("pgshift_refused_{}", self.refusals);
        let frame = wire::error_frame(Severity::Error, "0A000", message);
        let failing = format!("SELECT * FROM \"{marker}\"");
        (failing, PendingRefusal { marker, frame })
    }

    /// A whole Query frame.
    pub fn on_query(
        &mut self,
        frame: &[u8],
        metrics: &Metrics,
        refusals: &mut Vec<PendingRefusal>,
    ) -> Decision {
        let Some(query) = wire::query_text(frame) else {
            return Decision::Forward;
        };
        let mut out = BytesMut::new();
        match self.outcome(query, &[], metrics).as_ref() {
            Outcome::Unchanged => {
                metrics.statements_passthrough.increment(1);
                return Decision::Forward;
            }
            Outcome::Rewritten(text) => {
                metrics.statements_rewritten.increment(1);
                wire::put_query(&mut out, text);
            }
            Outcome::Refused(r) => {
                metrics.statements_refused.increment(1);
                let (failing, refusal) = self.refusal(&r.message());
                wire::put_query(&mut out, &failing);
                refusals.push(refusal);
            }
        }
        Decision::Replace(out)
    }

    /// A whole Parse frame.
    pub fn on_parse(
        &mut self,
        frame: &[u8],
        metrics: &Metrics,
        refusals: &mut Vec<PendingRefusal>,
    ) -> Decision {
        let Some(parse) = wire::parse_message(frame) else {
            return Decision::Forward;
        };
        let outcome = self.outcome(parse.query, &parse.param_types, metrics);
        let (decision, sent): (Decision, Arc<str>) = match outcome.as_ref() {
            Outcome::Unchanged => {
                metrics.statements_passthrough.increment(1);
                (Decision::Forward, Arc::from(parse.query))
            }
            Outcome::Rewritten(text) => {
                metrics.statements_rewritten.increment(1);
                let mut out = BytesMut::new();
                wire::put_parse(&mut out, parse.name, text, &parse.param_types);
                (Decision::Replace(out), Arc::from(text.as_str()))
            }
            Outcome::Refused(r) => {
                metrics.statements_refused.increment(1);
                let (failing, refusal) = self.refusal(&r.message());
                refusals.push(refusal);
                let mut out = BytesMut::new();
                wire::put_parse(&mut out, parse.name, &failing, &parse.param_types);
                (Decision::Replace(out), Arc::from(failing.as_str()))
            }
        };
        // Remember every named statement (and the unnamed one while something migrates), so
        // a later phase change can re-prepare it.
        if !parse.name.is_empty() || self.rewriter.is_some() {
            self.statements.insert(
                parse.name.to_owned(),
                Prepared {
                    query: parse.query.to_owned(),
                    param_types: parse.param_types.clone(),
                    epoch: self.epoch,
                    sent,
                },
            );
        } else {
            self.statements.remove("");
        }
        decision
    }

    /// Before a Bind or Describe of statement `name`: if the statement was prepared under
    /// another snapshot and its text under the current one differs, the messages to inject
    /// (Close and Parse of the same name, replies hidden).
    pub fn reprepare(
        &mut self,
        name: &str,
        metrics: &Metrics,
        out: &mut BytesMut,
        requests: &mut Vec<Request>,
        refusals: &mut Vec<PendingRefusal>,
    ) {
        let epoch = self.epoch;
        let Some(stmt) = self.statements.get(name) else {
            return;
        };
        if stmt.epoch == epoch {
            return;
        }
        let outcome = match &self.rewriter {
            Some(_) => self.outcome(&stmt.query, &stmt.param_types, metrics),
            None => Arc::new(Outcome::Unchanged),
        };
        let text: String = match outcome.as_ref() {
            Outcome::Unchanged => stmt.query.clone(),
            Outcome::Rewritten(t) => t.clone(),
            Outcome::Refused(r) => {
                let message = r.message();
                let (failing, refusal) = self.refusal(&message);
                refusals.push(refusal);
                failing
            }
        };
        let stmt = self.statements.get_mut(name).expect("looked up above");
        stmt.epoch = epoch;
        if *stmt.sent == *text {
            return;
        }
        wire::put_close_statement(out, name);
        wire::put_parse(out, name, &text, &stmt.param_types);
        requests.push(Request::Close { hidden: true });
        requests.push(Request::Parse { hidden: true });
        stmt.sent = Arc::from(text.as_str());
    }

    /// The client closed statement `name`.
    pub fn on_close_statement(&mut self, name: &str) {
        self.statements.remove(name);
    }
}
