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
use crate::rewrite::{Outcome, Prefilter, Rewrite, Rewriter};
use crate::snapshot::Snapshot;
use crate::wire::{self, Severity};

/// Why a statement in another client_encoding is refused.
const ENCODING_REFUSAL: &str = "pgshift: statement refused: its text is not UTF-8, so pgshift cannot \
     rewrite it for the migrations in progress; connect with client_encoding=UTF8";

/// A prepared statement as the client defined it and as it is prepared upstream.
#[derive(Debug)]
struct Prepared {
    query: String,
    param_types: Vec<u32>,
    /// Epoch of the snapshot `sent` is known to be right for.
    epoch: u64,
    /// The text prepared upstream; empty when unknown (a re-prepare failed after its Close).
    sent: Arc<str>,
    /// A re-prepare in flight, until the server answers it.
    reparse: Option<Reparse>,
    /// Migrations whose old names the statement uses: each execution counts.
    old_names: Vec<Arc<str>>,
}

/// An injected Close + Parse awaiting its ParseComplete.
#[derive(Debug)]
struct Reparse {
    ticket: u64,
    text: Arc<str>,
    epoch: u64,
    /// The Sync group it was sent in: a Bind later in the same group follows it (and shares
    /// its fate), one in a later group must not trust it until it is answered.
    group: u64,
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
    /// The pinned snapshot's pre-filter over every configured migration's tables.
    watched: Option<Arc<Prefilter>>,
    statements: HashMap<String, Prepared>,
    refusals: u64,
    /// Sync groups (Sync, Query, FunctionCall) forwarded so far.
    group: u64,
    tickets: u64,
    /// Client Parse and Close messages awaiting the server's answer, by ticket: what the
    /// statement map becomes if they succeed (a rejected Parse must not replace a statement,
    /// a discarded Close must not forget one).
    pending: HashMap<u64, Pending>,
    /// Statements prepared with SQL `PREPARE` naming a configured migration's table, with the
    /// epoch they were prepared under: pgshift cannot re-prepare those, so an `EXECUTE` under
    /// a later snapshot is refused.
    sql_prepared: HashMap<String, u64>,
    /// Statement names parsed since the last Sync/Query (their Bind is not counted again).
    parsed_in_group: Vec<String>,
}

fn count_old_names(migrations: &[Arc<str>], metrics: &Metrics) {
    for migration in migrations {
        metrics.old_name_statement(migration);
    }
}

/// A change to the statement map that waits for the server.
#[derive(Debug)]
enum Pending {
    Define(String, Prepared),
    Forget(String),
}

impl Interceptor {
    pub fn new(database: &str) -> Interceptor {
        Interceptor {
            database: database.to_owned(),
            epoch: 0,
            rewriter: None,
            watched: None,
            statements: HashMap::new(),
            refusals: 0,
            group: 0,
            tickets: 0,
            pending: HashMap::new(),
            sql_prepared: HashMap::new(),
            parsed_in_group: Vec::new(),
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
        self.watched = Some(snapshot.watched().clone());
    }

    /// A Sync, Query or FunctionCall was forwarded: later messages are in a new group.
    pub fn next_group(&mut self) {
        self.group += 1;
        self.parsed_in_group.clear();
    }

    /// A Bind of statement `name` executes it: its old-name use counts again, unless it was
    /// parsed in this group (counted then).
    pub fn on_bind(&self, name: &str, metrics: &Metrics) {
        if self.rewriter.is_none() || self.parsed_in_group.iter().any(|n| n == name) {
            return;
        }
        if let Some(stmt) = self.statements.get(name) {
            count_old_names(&stmt.old_names, metrics);
        }
    }

    /// The server answered re-prepare `ticket`: `ok` when its ParseComplete came, false when
    /// it failed or was discarded after an earlier error.
    pub fn settle(&mut self, ticket: u64, ok: bool) {
        if let Some(pending) = self.pending.remove(&ticket) {
            match pending {
                Pending::Define(name, prepared) if ok => {
                    self.statements.insert(name, prepared);
                }
                Pending::Forget(name) if ok => {
                    self.statements.remove(&name);
                }
                Pending::Define(..) | Pending::Forget(_) => {}
            }
            return;
        }
        let Some(stmt) = self
            .statements
            .values_mut()
            .find(|s| s.reparse.as_ref().is_some_and(|r| r.ticket == ticket))
        else {
            return;
        };
        let reparse = stmt.reparse.take().expect("found by its ticket");
        if ok {
            stmt.sent = reparse.text;
            stmt.epoch = reparse.epoch;
        } else {
            // Its Close may have run: the upstream statement is gone or stale.
            stmt.sent = Arc::from("");
        }
    }

    fn ticket(&mut self) -> u64 {
        self.tickets += 1;
        self.tickets
    }

    /// True when `bytes` may name a table of a configured migration.
    fn watched(&self, bytes: &[u8]) -> bool {
        self.watched.as_ref().is_some_and(|w| w.may_touch(bytes))
    }

    /// Query frames must be read whole only while something is migrating.
    pub fn rewriting(&self) -> bool {
        self.rewriter.is_some()
    }

    fn outcome(&self, query: &str, param_types: &[u32], metrics: &Metrics) -> Arc<Rewrite> {
        match &self.rewriter {
            Some(rw) if rw.may_touch(query) => {
                let started = Instant::now();
                let rewrite = rw.rewrite_cached(query, param_types);
                metrics
                    .rewrite_seconds
                    .record(started.elapsed().as_secs_f64());
                rewrite
            }
            _ => Rewrite::unchanged_shared(),
        }
    }

    fn refusal(&mut self, message: &str) -> (String, PendingRefusal) {
        self.refusals += 1;
        let name = format!("pgshift_refused_{}", self.refusals);
        let frame = wire::error_frame(Severity::Error, "0A000", message);
        let failing = format!("SELECT * FROM \"{name}\"");
        // With its quotes, so `pgshift_refused_1` never matches `pgshift_refused_10`.
        let marker = format!("\"{name}\"");
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
            return self.refuse_undecodable_query(frame, metrics, refusals);
        };
        let mut out = BytesMut::new();
        if let Some(message) = self.note_sql_prepare(query) {
            metrics.statements_refused.increment(1);
            let (failing, refusal) = self.refusal(&message);
            wire::put_query(&mut out, &failing);
            refusals.push(refusal);
            return Decision::Replace(out);
        }
        let rewrite = self.outcome(query, &[], metrics);
        count_old_names(&rewrite.old_name_migrations, metrics);
        match &rewrite.outcome {
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
                // Statements before the refused one run, as before any failing statement.
                wire::put_query(&mut out, &format!("{}{failing}", r.prefix));
                refusals.push(refusal);
            }
        }
        Decision::Replace(out)
    }

    /// [`Self::note_sql_prepare`] for a Query frame, cheap for every other statement: only a
    /// text starting with P, E or D is decoded.
    pub fn note_sql_prepare_frame(&mut self, frame: &[u8]) {
        let first = frame
            .get(5..)
            .and_then(|b| b.iter().find(|c| !c.is_ascii_whitespace()));
        if matches!(first, Some(b'p' | b'P' | b'e' | b'E' | b'd' | b'D'))
            && let Some(query) = wire::query_text(frame)
        {
            self.note_sql_prepare(query);
        }
    }

    /// Follows SQL-level `PREPARE`/`EXECUTE`/`DEALLOCATE` (the first statement of a Query);
    /// returns a refusal message for an `EXECUTE` of a statement prepared under an earlier
    /// snapshot.
    pub fn note_sql_prepare(&mut self, query: &str) -> Option<String> {
        let mut words = query
            .trim_start()
            .split(|c: char| c.is_whitespace() || c == '(' || c == ';')
            .filter(|w| !w.is_empty());
        let verb = words.next()?;
        let name = || {
            words
                .clone()
                .next()
                .map(|n| n.trim_matches('"').to_lowercase())
        };
        if verb.eq_ignore_ascii_case("prepare") {
            if self.watched(query.as_bytes())
                && let Some(name) = name()
            {
                self.sql_prepared.insert(name, self.epoch);
            }
        } else if verb.eq_ignore_ascii_case("execute") && !self.sql_prepared.is_empty() {
            let name = name()?;
            if self
                .sql_prepared
                .get(&name)
                .is_some_and(|&e| e != self.epoch)
            {
                return Some(format!(
                    "pgshift: statement refused: {name} was prepared with PREPARE before a migration \
                     on its table changed phase, and pgshift cannot re-prepare it; DEALLOCATE and \
                     PREPARE it again"
                ));
            }
        } else if verb.eq_ignore_ascii_case("deallocate") {
            match name().as_deref() {
                Some("all") | Some("prepare") => self.sql_prepared.clear(),
                Some(n) => {
                    self.sql_prepared.remove(n);
                }
                None => {}
            }
        }
        None
    }

    /// A Query whose text is not UTF-8 (another client_encoding) cannot be parsed; when it
    /// may touch a migrated table it is refused rather than forwarded unrewritten.
    fn refuse_undecodable_query(
        &mut self,
        frame: &[u8],
        metrics: &Metrics,
        refusals: &mut Vec<PendingRefusal>,
    ) -> Decision {
        if !self.rewriting() || !self.watched(frame) {
            return Decision::Forward;
        }
        metrics.statements_refused.increment(1);
        let (failing, refusal) = self.refusal(ENCODING_REFUSAL);
        refusals.push(refusal);
        let mut out = BytesMut::new();
        wire::put_query(&mut out, &failing);
        Decision::Replace(out)
    }

    /// A whole Parse frame, and the request recording it (settled when the server answers).
    pub fn on_parse(
        &mut self,
        frame: &[u8],
        metrics: &Metrics,
        refusals: &mut Vec<PendingRefusal>,
    ) -> (Decision, Request) {
        let ticket = self.ticket();
        let request = Request::Parse { ticket };
        let Some(parse) = wire::parse_message(frame) else {
            // Not UTF-8: it cannot be rewritten now nor re-prepared later, so a statement that
            // may touch a configured migration's table is refused.
            return match wire::parse_raw(frame) {
                Some((name, _, types)) if self.watched(frame) => {
                    metrics.statements_refused.increment(1);
                    let (failing, refusal) = self.refusal(ENCODING_REFUSAL);
                    refusals.push(refusal);
                    let mut out = BytesMut::new();
                    wire::put_parse_bytes(&mut out, name, &failing, &types);
                    (Decision::Replace(out), request)
                }
                _ => (Decision::Forward, request),
            };
        };
        let outcome = self.outcome(parse.query, &parse.param_types, metrics);
        if !outcome.old_name_migrations.is_empty() {
            count_old_names(&outcome.old_name_migrations, metrics);
            self.parsed_in_group.push(parse.name.to_owned());
        }
        let (decision, sent): (Decision, Arc<str>) = match &outcome.outcome {
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
        // Remember every named statement, and the unnamed one when it names a table of any
        // configured migration (it is re-parsed per use, so this keeps the hot path free of
        // copies), so a later phase change can re-prepare it. Postgres drops the old unnamed
        // statement whatever becomes of the new one.
        if parse.name.is_empty() {
            self.statements.remove("");
        }
        if !parse.name.is_empty() || self.watched(parse.query.as_bytes()) {
            let prepared = Prepared {
                query: parse.query.to_owned(),
                param_types: parse.param_types.clone(),
                epoch: self.epoch,
                sent,
                reparse: None,
                old_names: outcome.old_name_migrations.clone(),
            };
            self.pending
                .insert(ticket, Pending::Define(parse.name.to_owned(), prepared));
        }
        (decision, request)
    }

    /// Before a Bind or Describe of statement `name`: if the statement was prepared under
    /// another snapshot and its text under the current one differs, the messages to inject
    /// (Close and Parse of the same name, replies hidden). The new text is trusted only once
    /// the server answered the Parse ([`Self::settle`]); until then every new Sync group
    /// re-prepares again, so a re-prepare discarded after an error is never mistaken for done.
    pub fn reprepare(
        &mut self,
        name: &str,
        metrics: &Metrics,
        out: &mut BytesMut,
        requests: &mut Vec<Request>,
        refusals: &mut Vec<PendingRefusal>,
    ) {
        let (epoch, group) = (self.epoch, self.group);
        let Some(stmt) = self.statements.get(name) else {
            return;
        };
        if stmt.epoch == epoch && stmt.reparse.is_none() {
            return;
        }
        if stmt.reparse.as_ref().is_some_and(|r| r.group == group) {
            // Already re-preparing in this group: this Bind follows it and shares its fate.
            return;
        }
        let outcome = match &self.rewriter {
            Some(_) => self.outcome(&stmt.query, &stmt.param_types, metrics),
            None => Rewrite::unchanged_shared(),
        };
        let text: String = match &outcome.outcome {
            Outcome::Unchanged => stmt.query.clone(),
            Outcome::Rewritten(t) => t.clone(),
            Outcome::Refused(r) => {
                let (failing, refusal) = self.refusal(&r.message());
                refusals.push(refusal);
                failing
            }
        };
        let ticket = self.ticket();
        let stmt = self.statements.get_mut(name).expect("looked up above");
        stmt.old_names = outcome.old_name_migrations.clone();
        if *stmt.sent == *text && stmt.reparse.is_none() {
            stmt.epoch = epoch;
            return;
        }
        wire::put_close_statement(out, name);
        wire::put_parse(out, name, &text, &stmt.param_types);
        requests.push(Request::Close {
            hidden: true,
            ticket: 0,
        });
        requests.push(Request::Reparse { ticket });
        stmt.reparse = Some(Reparse {
            ticket,
            text: Arc::from(text.as_str()),
            epoch,
            group,
        });
    }

    /// A client's Close frame, and the request recording it: a statement is forgotten only
    /// once the server closed it.
    pub fn on_close(&mut self, frame: &[u8]) -> Request {
        let ticket = self.ticket();
        if let Some((b'S', name)) = wire::describe_target(frame) {
            self.pending
                .insert(ticket, Pending::Forget(name.to_owned()));
        }
        Request::Close {
            hidden: false,
            ticket,
        }
    }
}
