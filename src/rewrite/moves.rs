//! Writes naming a table of a table move (docs/table-moves.md). Reads are not here: the
//! non-authoritative name has an ordinary read plan ([`TablePlan::for_move`]) that the scope walk
//! substitutes like any derived table.
//!
//! In expand and switch a write naming either table runs on that table and is mirrored, in the
//! same statement, onto the other one by key, with upsert semantics:
//! - INSERT: `WITH pgshift_w AS (<client INSERT> RETURNING *) INSERT INTO other … SELECT … FROM
//!   pgshift_w ON CONFLICT (key) DO UPDATE …` — the top-level statement counts the same rows,
//!   and RETURNING items are evaluated over `pgshift_w`;
//! - UPDATE / DELETE: a CTE locks the target rows (`FOR UPDATE`) and computes each SET value
//!   once; the other table is upserted from (or loses) those rows, and the top-level statement
//!   is the client's own kind on its own table, restricted to those rows, with its RETURNING.
//!
//! In contract a write naming the old table becomes the write on the new table, old names
//! translated through `up` and RETURNING computed back through `down`.

use std::ops::Range;
use std::sync::Arc;

use sqlparser::ast::{
    Delete, FromTable, ObjectName, SetExpr, Statement, TableFactor, TableObject, Visit,
    visit_relations,
};
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, Tokenizer};

use super::expr::ColumnExpr;
use super::scope::idents;
use super::splice::{Edits, LineIndex};
use super::{Refusal, Rewriter};
use crate::migration::{TableMove, TableShape, quote_ident};

/// Which table of a move a statement names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Old,
    New,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Old => Side::New,
            Side::New => Side::Old,
        }
    }
}

/// A table move compiled for writes.
#[derive(Debug)]
pub struct MovePlan {
    pub moved: Arc<TableMove>,
    new_from_old: Vec<(String, Option<ColumnExpr>)>,
    old_from_new: Vec<(String, Option<ColumnExpr>)>,
    /// The mirror of an INSERT onto each side (old, new): the same for every statement.
    mirrors: [Mirror; 2],
}

/// `INSERT INTO side … SELECT … FROM pgshift_w [ON CONFLICT (key) DO UPDATE …]`: the
/// statement after the client's INSERT in `WITH pgshift_w AS (<INSERT> RETURNING *) …`.
#[derive(Debug, Default)]
pub(super) struct Mirror {
    /// With the upsert's ON CONFLICT clause.
    pub(super) upsert: String,
    /// Without it (a plain INSERT).
    pub(super) plain: String,
    /// Each verified as a whole top-level statement ([`verified_mirror`]).
    pub(super) upsert_verified: bool,
    pub(super) plain_verified: bool,
}

/// What the check parses in place of a verified mirror: any INSERT ends the statement as well.
pub(super) const MIRROR_STAND_IN: &str = "INSERT INTO pgshift_check SELECT 1";

/// Whether `mirror` parses as the whole body of `WITH pgshift_w AS (…) <mirror>`, with some
/// recursion depth to spare, and ends with a token of its own (not a comment): then, followed
/// by nothing but whitespace, comments and `;` or the end, it parses wherever
/// [`MIRROR_STAND_IN`] does (docs/rewrite.md, "Check").
fn verified_mirror(mirror: &str) -> bool {
    let dialect = sqlparser::dialect::PostgreSqlDialect {};
    let ends_with_token = Tokenizer::new(&dialect, mirror)
        .tokenize()
        .ok()
        .and_then(|t| t.last().cloned())
        .is_some_and(|t| !matches!(t, Token::Whitespace(_)));
    if !ends_with_token || !mirror.starts_with("INSERT INTO ") {
        return false;
    }
    let sql = format!("WITH pgshift_w AS (SELECT 1) {mirror}");
    (47..=50).all(|limit| {
        sqlparser::parser::Parser::new(&dialect)
            .with_recursion_limit(limit)
            .try_with_sql(&sql)
            .and_then(|mut p| p.parse_statements())
            .is_ok_and(|s| {
                matches!(s.as_slice(), [Statement::Query(q)]
                    if matches!(q.body.as_ref(), SetExpr::Insert(_)))
            })
    })
}

impl MovePlan {
    pub fn new(moved: &Arc<TableMove>) -> Result<MovePlan, String> {
        let compile = |list: &[(String, Option<String>)]| {
            list.iter()
                .map(|(c, e)| {
                    let e = e
                        .as_deref()
                        .map(ColumnExpr::parse)
                        .transpose()
                        .map_err(|err| format!("migration {}: {c}: {err}", moved.name))?;
                    Ok((c.clone(), e))
                })
                .collect::<Result<Vec<_>, String>>()
        };
        let mut plan = MovePlan {
            moved: moved.clone(),
            new_from_old: compile(&moved.new_from_old)?,
            old_from_new: compile(&moved.old_from_new)?,
            mirrors: Default::default(),
        };
        plan.mirrors = [Side::Old, Side::New].map(|side| {
            let upsert = plan.upsert(side, "pgshift_w", |c| {
                format!("pgshift_w.{}", quote_ident(c))
            });
            let mut plain = upsert.clone();
            if let Some(at) = plain.find(" ON CONFLICT (") {
                plain.truncate(at);
            }
            Mirror {
                upsert_verified: verified_mirror(&upsert),
                plain_verified: verified_mirror(&plain),
                upsert,
                plain,
            }
        });
        Ok(plan)
    }

    /// The mirror of an INSERT onto `side`.
    pub(super) fn mirror(&self, side: Side) -> &Mirror {
        match side {
            Side::Old => &self.mirrors[0],
            Side::New => &self.mirrors[1],
        }
    }

    pub fn shape(&self, side: Side) -> &TableShape {
        match side {
            Side::Old => &self.moved.old,
            Side::New => &self.moved.new,
        }
    }

    /// The columns of `side`, each computed from a row of the other side (or `None`).
    fn fed(&self, side: Side) -> &[(String, Option<ColumnExpr>)] {
        match side {
            Side::Old => &self.old_from_new,
            Side::New => &self.new_from_old,
        }
    }

    /// [`Self::fed`] for writing `side`: generated columns are PostgreSQL's to compute.
    fn written(&self, side: Side) -> impl Iterator<Item = (&String, &ColumnExpr)> {
        let shape = self.shape(side);
        self.fed(side).iter().filter_map(move |(c, e)| {
            let generated = shape.column(c).is_some_and(|info| info.generated);
            e.as_ref().filter(|_| !generated).map(|e| (c, e))
        })
    }

    pub fn refuse(&self, reason: impl Into<String>) -> Refusal {
        Refusal {
            migration: self.moved.name.clone(),
            reason: reason.into(),
            prefix: String::new(),
        }
    }

    fn type_of(&self, side: Side, column: &str) -> &str {
        self.shape(side)
            .column(column)
            .map_or("text", |c| c.type_sql.as_str())
    }

    /// `(a.k1, a.k2) = (b.k1, b.k2)` (without parentheses for one column).
    fn key_match(&self, a: &str, b: &str) -> String {
        let cols = |q: &str| {
            self.moved
                .key
                .iter()
                .map(|k| format!("{q}.{}", quote_ident(k)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if self.moved.key.len() == 1 {
            format!("{} = {}", cols(a), cols(b))
        } else {
            format!("({}) = ({})", cols(a), cols(b))
        }
    }

    /// `INSERT INTO side (cols) SELECT <fed from a row of the other side, columns rendered by
    /// `col`> FROM source ON CONFLICT (key) DO UPDATE SET …`: the upsert mirroring rows.
    fn upsert(&self, side: Side, source: &str, mut col: impl FnMut(&str) -> String) -> String {
        let mut names = Vec::new();
        let mut values = Vec::new();
        for (column, expr) in self.written(side) {
            names.push(quote_ident(column));
            values.push(format!(
                "{}::{}",
                expr.render(&mut col),
                self.type_of(side, column)
            ));
        }
        let shape = self.shape(side);
        let conflict: Vec<String> = shape.key.iter().map(|k| quote_ident(k)).collect();
        let sets: Vec<String> = names
            .iter()
            .map(|n| format!("{n} = EXCLUDED.{n}"))
            .collect();
        format!(
            "INSERT INTO {} ({}) {}SELECT {} FROM {source} ON CONFLICT ({}) DO UPDATE SET {}",
            shape.name.quoted(),
            names.join(", "),
            overriding(shape, &names),
            values.join(", "),
            conflict.join(", "),
            sets.join(", ")
        )
    }

    /// `INSERT INTO side (names) SELECT values FROM source ON CONFLICT (key) DO UPDATE SET …`.
    fn upsert_columns(
        &self,
        side: Side,
        names: &[String],
        values: &[String],
        source: &str,
    ) -> String {
        let shape = self.shape(side);
        let conflict: Vec<String> = shape.key.iter().map(|k| quote_ident(k)).collect();
        let sets: Vec<String> = names
            .iter()
            .map(|n| format!("{n} = EXCLUDED.{n}"))
            .collect();
        format!(
            "INSERT INTO {} ({}) {}SELECT {} FROM {source} ON CONFLICT ({}) DO UPDATE SET {}",
            shape.name.quoted(),
            names.join(", "),
            overriding(shape, names),
            values.join(", "),
            conflict.join(", "),
            sets.join(", ")
        )
    }

    /// `(SELECT <every column of side, computed from a row of the other side named `row`>)`:
    /// the row of `side` as a derived table (for RETURNING in contract).
    fn row_as(&self, side: Side, row: &str) -> String {
        let mut cols = Vec::new();
        for (column, expr) in self.fed(side) {
            let value = match expr {
                Some(e) => e.render(|c| format!("{row}.{}", quote_ident(c))),
                None => "NULL".to_owned(),
            };
            cols.push(format!(
                "{value}::{} AS {}",
                self.type_of(side, column),
                quote_ident(column)
            ));
        }
        format!("(SELECT {})", cols.join(", "))
    }
}

/// Rewrites `statement` when it writes (or must be refused because it touches) a table of a
/// table move; `None` leaves it to the column-migration engine and the scope walk (reads).
pub fn rewrite(
    rw: &Rewriter,
    statement: &Statement,
    index: &LineIndex<'_>,
    edits: &mut Edits,
) -> Option<Result<(), Refusal>> {
    if !matches!(
        statement,
        Statement::Query(_) | Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_)
    ) {
        // COPY, TRUNCATE, DDL, …: the visitor does not see every table name they hold, so any
        // mention of either table (as a word) in the statement refuses it. The printed form is
        // only searched, never sent (transaction control and the like name no table).
        let text = statement.to_string();
        let named = rw.moves.iter().find(|m| {
            mentions(&text, &m.moved.old.name.name) || mentions(&text, &m.moved.new.name.name)
        })?;
        return Some(Err(named.refuse(format!(
            "{} on a table of a table move is not supported",
            super::statement_kind(statement)
        ))));
    }
    let (touched, migrated) = touched_with_migrated(rw, statement);
    let (first, _) = touched.first()?;
    if let Some(t) = migrated {
        return Some(Err(first.refuse(format!(
            "this statement names tables of a table move and of a column migration ({}); \
             split it",
            t.name()
        ))));
    }
    let (plan, side) = match statement {
        Statement::Query(query) => {
            let writes_move = |s: &SetExpr| match s {
                SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) => {
                    !touched_by(rw, s).is_empty()
                }
                _ => false,
            };
            let ctes = query.with.iter().flat_map(|w| &w.cte_tables);
            if writes_move(&query.body) || ctes.clone().any(|c| writes_move(&c.query.body)) {
                return Some(Err(first.refuse(
                    "a data-modifying WITH on a table of a table move is not supported",
                )));
            }
            return None;
        }
        Statement::Insert(insert) => match &insert.table {
            TableObject::TableName(name) => resolve(rw, name)?,
            _ => return None,
        },
        Statement::Update(update) => match &update.table.relation {
            TableFactor::Table { name, .. } => resolve(rw, name)?,
            _ => return None,
        },
        Statement::Delete(delete) => match delete_target(delete) {
            Some(name) => resolve(rw, name)?,
            None => return None,
        },
        other => {
            return Some(Err(first.refuse(format!(
                "{} on a table of a table move is not supported",
                super::statement_kind(other)
            ))));
        }
    };
    if touched
        .iter()
        .any(|(p, s)| Arc::ptr_eq(p, &plan) && *s != side)
    {
        return Some(Err(plan.refuse(
            "a write naming both tables of a table move is not supported",
        )));
    }
    let moved = &plan.moved;
    if !moved.dual_writes() && side == Side::New {
        // Contract: the new table is the only one written; its reads of the old name are
        // substituted by the scope walk.
        return None;
    }
    let auth = if moved.reads_new() {
        Side::New
    } else {
        Side::Old
    };
    let result = Writer::new(rw, &plan, side, statement, index).and_then(|w| {
        let text = match statement {
            Statement::Insert(i) if side == auth => w.dual_insert(i, true),
            Statement::Update(u) if side == auth => w.dual_update(u).map(Written::from),
            Statement::Delete(d) if side == auth => w.dual_delete(d).map(Written::from),
            // Every write takes the authoritative table's locks first (UPDATE/DELETE lock its
            // rows in their CTE), so concurrent writers naming either table cannot deadlock on
            // opposite orders. In expand an INSERT naming the new table therefore goes to the
            // old table first — which also decides a conflict where the rows are, since the
            // backfill may not have copied them yet — unless it writes a column the old table
            // has no counterpart for.
            Statement::Insert(i) if !moved.reads_new() && w.translatable(i, auth) => {
                w.translated_insert(i, auth).map(Written::from)
            }
            Statement::Insert(i)
                if moved.dual_writes() && (i.on.is_none() || moved.reads_new()) =>
            {
                // The client's rows go to the named table; a key the authoritative table
                // already has fails there, as the client's own error.
                w.dual_insert(i, i.on.is_some())
            }
            Statement::Insert(i) => w.translated_insert(i, auth).map(Written::from),
            Statement::Update(u) => w.translated_update(u, auth).map(Written::from),
            Statement::Delete(d) => w.translated_delete(d, auth).map(Written::from),
            _ => unreachable!("matched above"),
        }?;
        match text.stand_in {
            Some(stand_in) => edits.replace_with_stand_in(w.range.clone(), text.text, stand_in),
            None => edits.replace(w.range.clone(), text.text),
        }
        Ok(())
    });
    Some(result)
}

/// The text of a rewritten write, and what the check may parse in its place.
pub(super) struct Written {
    pub(super) text: String,
    /// `text` with a verified mirror replaced by [`MIRROR_STAND_IN`].
    pub(super) stand_in: Option<String>,
}

impl From<String> for Written {
    fn from(text: String) -> Written {
        Written {
            text,
            stand_in: None,
        }
    }
}

/// Whether `text` has `name` as a whole word (identifiers compared case-insensitively, as
/// unquoted ones fold; a quoted mention counts too).
fn mentions(text: &str, name: &str) -> bool {
    let Ok(tokens) = Tokenizer::new(&sqlparser::dialect::PostgreSqlDialect {}, text).tokenize()
    else {
        return true;
    };
    tokens.iter().any(|t| match t {
        Token::Word(w) => w.value.eq_ignore_ascii_case(name),
        _ => false,
    })
}

/// The move tables a statement names, with the side each name is.
type Touched = Vec<(Arc<MovePlan>, Side)>;

/// The move tables a statement names anywhere, with the side each name is, and the first
/// table under a column migration it names (one walk).
fn touched_with_migrated(
    rw: &Rewriter,
    statement: &Statement,
) -> (Touched, Option<Arc<super::TablePlan>>) {
    let mut found: Touched = Vec::new();
    let mut migrated = None;
    let _ = visit_relations(statement, |name| {
        let Some(parts) = idents(name) else {
            return std::ops::ControlFlow::<()>::Continue(());
        };
        if let Some((plan, side)) = rw.resolve_move(&parts)
            && !found
                .iter()
                .any(|(p, s)| Arc::ptr_eq(p, &plan) && *s == side)
        {
            found.push((plan, side));
        }
        if migrated.is_none()
            && let Some(plan) = rw.resolve(&parts).filter(|p| !p.pairs.is_empty())
        {
            migrated = Some(plan.clone());
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    (found, migrated)
}

fn touched_by<V: Visit>(rw: &Rewriter, node: &V) -> Vec<(Arc<MovePlan>, Side)> {
    let mut found: Vec<(Arc<MovePlan>, Side)> = Vec::new();
    let _ = visit_relations(node, |name| {
        if let Some((plan, side)) = resolve(rw, name)
            && !found
                .iter()
                .any(|(p, s)| Arc::ptr_eq(p, &plan) && *s == side)
        {
            found.push((plan, side));
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    found
}

fn resolve(rw: &Rewriter, name: &ObjectName) -> Option<(Arc<MovePlan>, Side)> {
    let parts = idents(name)?;
    rw.resolve_move(&parts)
}

fn delete_target(delete: &Delete) -> Option<&ObjectName> {
    let (FromTable::WithFromKeyword(tables) | FromTable::WithoutKeyword(tables)) = &delete.from;
    match tables.as_slice() {
        [t] if t.joins.is_empty() && delete.tables.is_empty() => match &t.relation {
            TableFactor::Table { name, .. } => Some(name),
            _ => None,
        },
        _ => None,
    }
}

/// One statement's tokens from its start to its end (a top-level `;` or the end of the text),
/// whitespace and comments left out, with their byte ranges: tokenized once per statement.
pub(super) struct StatementTokens(Vec<(Token, Range<usize>)>);

impl StatementTokens {
    fn scan(text: &str, start: usize) -> Option<StatementTokens> {
        let slice = &text[start..];
        let tokens = Tokenizer::new(&sqlparser::dialect::PostgreSqlDialect {}, slice)
            .tokenize_with_location()
            .ok()?;
        let index = LineIndex::new(slice);
        let mut list = Vec::new();
        let mut depth = 0i32;
        for t in tokens {
            let r = match &t.token {
                Token::Whitespace(_) => continue,
                Token::EOF => break,
                Token::SemiColon if depth == 0 => break,
                _ => index.range(t.span)?,
            };
            match &t.token {
                Token::LParen | Token::LBracket => depth += 1,
                Token::RParen | Token::RBracket => depth -= 1,
                _ => {}
            }
            list.push((t.token, start + r.start..start + r.end));
        }
        Some(StatementTokens(list))
    }
}

/// The top-level clauses of one statement, found by tokens: `(keyword, start of the keyword,
/// body range)`.
struct Clauses {
    list: Vec<(Keyword, usize, Range<usize>)>,
    end: usize,
}

impl Clauses {
    /// Tokenizes from `start` to the statement's end (a top-level `;` or the end of text).
    #[cfg(test)]
    fn scan(text: &str, start: usize, keywords: &[Keyword]) -> Option<Clauses> {
        StatementTokens::scan(text, start).map(|t| Clauses::of(&t, start, keywords))
    }

    /// The clauses of the statement starting at `start` whose tokens are `tokens`.
    fn of(tokens: &StatementTokens, start: usize, keywords: &[Keyword]) -> Clauses {
        let mut list: Vec<(Keyword, usize, Range<usize>)> = Vec::new();
        let mut depth = 0i32;
        let mut end = start;
        // `IS [NOT] DISTINCT FROM` is an operator, not a FROM clause.
        let mut after_distinct = false;
        for (token, r) in &tokens.0 {
            let (s, e) = (r.start, r.end);
            match token {
                Token::LParen | Token::LBracket => depth += 1,
                Token::RParen | Token::RBracket => depth -= 1,
                // The first occurrence of each clause keyword starts it (a second FROM in a
                // DELETE's WHERE is inside parentheses or a sub-clause).
                Token::Word(w)
                    if depth == 0
                        && keywords.contains(&w.keyword)
                        && !(w.keyword == Keyword::FROM && after_distinct)
                        && !list.iter().any(|(k, _, _)| *k == w.keyword) =>
                {
                    if let Some(last) = list.last_mut() {
                        last.2.end = end;
                    }
                    list.push((w.keyword, s, e..e));
                    end = e;
                    continue;
                }
                _ => {}
            }
            after_distinct = matches!(token, Token::Word(w) if w.keyword == Keyword::DISTINCT);
            if let Some(last) = list.last_mut() {
                if last.2.is_empty() {
                    last.2.start = s;
                }
                last.2.end = e;
            }
            end = e;
        }
        Clauses { list, end }
    }

    fn body(&self, keyword: Keyword) -> Option<Range<usize>> {
        self.list
            .iter()
            .find(|(k, _, _)| *k == keyword)
            .map(|(_, _, r)| r.clone())
    }

    fn keyword_start(&self, keyword: Keyword) -> Option<usize> {
        self.list
            .iter()
            .find(|(k, _, _)| *k == keyword)
            .map(|(_, s, _)| *s)
    }
}

mod insert;
mod writer;

use writer::Writer;

/// `OVERRIDING SYSTEM VALUE ` when one of the (quoted) `names` is a `GENERATED ALWAYS AS
/// IDENTITY` column of `shape`: the mirror copies the other table's value into it.
pub(crate) fn overriding(shape: &crate::migration::TableShape, names: &[String]) -> &'static str {
    let identity = shape
        .columns
        .iter()
        .filter(|c| c.identity_always)
        .any(|c| names.contains(&quote_ident(&c.name)));
    if identity {
        "OVERRIDING SYSTEM VALUE "
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clauses_split_at_top_level_keywords_only() {
        let text = "UPDATE t SET a = (SELECT x FROM s WHERE y), b = 2 FROM u WHERE t.id = u.id \
                    RETURNING a; SELECT 1";
        let c = Clauses::scan(
            text,
            0,
            &[
                Keyword::SET,
                Keyword::FROM,
                Keyword::WHERE,
                Keyword::RETURNING,
            ],
        )
        .unwrap();
        let body = |k| c.body(k).map(|r| &text[r]);
        assert_eq!(
            body(Keyword::SET),
            Some("a = (SELECT x FROM s WHERE y), b = 2")
        );
        assert_eq!(body(Keyword::FROM), Some("u"));
        assert_eq!(body(Keyword::WHERE), Some("t.id = u.id"));
        assert_eq!(body(Keyword::RETURNING), Some("a"));
        assert_eq!(&text[..c.end], &text[..text.find(';').unwrap()]);
        let text = "UPDATE t SET a = 1 WHERE a IS DISTINCT FROM 2";
        let c = Clauses::scan(text, 0, &[Keyword::SET, Keyword::FROM, Keyword::WHERE]).unwrap();
        assert_eq!(c.body(Keyword::FROM), None);
        assert_eq!(
            c.body(Keyword::WHERE).map(|r| &text[r]),
            Some("a IS DISTINCT FROM 2")
        );
    }

    #[test]
    fn only_whole_insert_statements_are_verified_mirrors() {
        assert!(verified_mirror(
            "INSERT INTO t (a) SELECT pgshift_w.a FROM pgshift_w ON CONFLICT (a) DO UPDATE SET a = EXCLUDED.a"
        ));
        for text in [
            "INSERT INTO t (a) SELECT 1 FROM pgshift_w -- c",
            "INSERT INTO t (a) SELECT 1; SELECT 2",
            "INSERT INTO t (a) SELECT (1",
            "UPDATE t SET a = 1",
            "INSERT INTO t () SELECT  FROM pgshift_w",
        ] {
            assert!(!verified_mirror(text), "{text}");
        }
    }

    #[test]
    fn mentions_are_whole_words() {
        assert!(mentions("TRUNCATE Orders", "orders"));
        assert!(mentions("COPY \"orders\" FROM STDIN", "orders"));
        assert!(!mentions("TRUNCATE orders_archive", "orders"));
        assert!(!mentions("SELECT 'orders'", "orders"));
    }
}
