//! An INSERT naming the table reads are not served from, run on the authoritative one: in
//! contract (the old table named; only the new one is written) and for `INSERT … ON CONFLICT`
//! naming the new table in expand, where the conflict must be decided where the rows are.
//!
//! The client's rows (cast to the named table's column types) feed the authoritative table's
//! columns through `up`/`down`; an `ON CONFLICT (key) DO UPDATE SET …` is translated: the
//! named table's columns of the existing row and of `EXCLUDED` become their expressions over
//! the authoritative row, and the authoritative columns fed by the SET columns are recomputed
//! from the updated row. In expand the named table is then upserted from the rows the
//! authoritative INSERT produced, and that is the statement whose tag and RETURNING the client
//! reads.

use std::ops::ControlFlow;

use sqlparser::ast::{
    AssignmentTarget, ConflictTarget, Expr, Insert, OnConflictAction, OnInsert, Spanned,
    visit_expressions,
};
use sqlparser::keywords::Keyword;

use super::super::Refusal;
use super::super::normalize_ident;
use super::super::scope::idents;
use super::super::splice::{self, Edits, LineIndex};
use super::Side;
use super::writer::{Writer, insert_qualifier};
use crate::migration::quote_ident;

impl Writer<'_> {
    /// Whether every column this INSERT writes has a counterpart in `auth` (so its value
    /// survives going there first).
    pub(super) fn translatable(&self, insert: &Insert, auth: Side) -> bool {
        let plan = self.plan;
        let listed: Vec<String> = if insert.columns.is_empty() {
            plan.shape(self.side)
                .columns
                .iter()
                .map(|c| c.name.clone())
                .collect()
        } else {
            match insert
                .columns
                .iter()
                .map(|c| idents(c).and_then(|i| i.last().map(normalize_ident)))
                .collect::<Option<Vec<_>>>()
            {
                Some(l) => l,
                None => return false,
            }
        };
        listed.iter().all(|c| {
            plan.fed(auth)
                .iter()
                .any(|(_, e)| e.as_ref().is_some_and(|e| e.columns().any(|u| u == *c)))
        })
    }

    pub(super) fn translated_insert(&self, insert: &Insert, auth: Side) -> Result<String, Refusal> {
        let named = self.side;
        let plan = self.plan;
        let source = insert
            .source
            .as_ref()
            .ok_or_else(|| plan.refuse("INSERT without a source"))?;
        let clauses = self.clauses(&[Keyword::RETURNING])?;
        let listed: Vec<String> = if insert.columns.is_empty() {
            // Without a column list the rows fill the leading columns; the rest default.
            let width = match source.body.as_ref() {
                sqlparser::ast::SetExpr::Values(v) => v.rows.first().map_or(0, |r| r.len()),
                _ => plan.shape(named).columns.len(),
            };
            plan.shape(named)
                .columns
                .iter()
                .take(width)
                .map(|c| c.name.clone())
                .collect()
        } else {
            insert
                .columns
                .iter()
                .map(|c| idents(c).and_then(|i| i.last().map(normalize_ident)))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| plan.refuse("cannot read the INSERT column list"))?
        };
        let mirror = plan.moved.dual_writes();
        if mirror
            && let Some(lost) = listed.iter().find(|c| {
                !plan
                    .fed(auth)
                    .iter()
                    .any(|(_, e)| e.as_ref().is_some_and(|e| e.columns().any(|u| u == *c)))
            })
        {
            return Err(plan.refuse(format!(
                "column {lost} has no counterpart in {}, so its value would not survive this \
                 INSERT … ON CONFLICT; write it with a plain INSERT",
                plan.shape(auth).name
            )));
        }
        let source_start = self.source_start(source)?;
        let source_end = splice::insert_source_end(self.text, source_start)
            .ok_or_else(|| plan.refuse("cannot locate the INSERT source"))?;
        let source_text =
            self.source_with_types(source, source_start..source_end, &listed, named)?;
        let mut names = Vec::new();
        let mut values = Vec::new();
        for (column, expr) in plan.written(auth) {
            let uses: Vec<&str> = expr.columns().collect();
            if uses.is_empty() || !uses.iter().any(|u| listed.iter().any(|l| l == u)) {
                continue; // the authoritative table's default applies
            }
            if let Some(missing) = uses.iter().find(|u| !listed.iter().any(|l| l == *u)) {
                return Err(plan.refuse(format!(
                    "column {column} of {} is computed from {missing}, which this INSERT does \
                     not write; list it",
                    plan.shape(auth).name
                )));
            }
            names.push(quote_ident(column));
            // Each source column as the named table's type, as the client's INSERT would have
            // coerced it (untyped literals of an INSERT … SELECT included).
            values.push(format!(
                "{}::{}",
                expr.render(|c| format!(
                    "CAST(pgshift_v.{} AS {})",
                    quote_ident(c),
                    plan.type_of(named, c)
                )),
                plan.type_of(auth, column)
            ));
        }
        let cols: Vec<String> = listed.iter().map(|c| quote_ident(c)).collect();
        let target = plan.shape(auth).name.quoted();
        let qualifier = insert_qualifier(insert, self.text)
            .ok_or_else(|| plan.refuse("cannot locate the INSERT target"))?;
        let mut out = format!(
            "INSERT INTO {target} AS pgshift_q ({}) SELECT {} FROM ({source_text}) AS pgshift_v({})",
            names.join(", "),
            values.join(", "),
            cols.join(", ")
        );
        if let Some(on) = &insert.on {
            out.push_str(&self.translated_conflict(on, auth, &qualifier)?);
        }
        let items = match (&insert.returning, clauses.body(Keyword::RETURNING)) {
            (Some(items), Some(body)) => Some(self.returning_items(items, body)?),
            _ => None,
        };
        if mirror {
            // The named table gets the rows the authoritative INSERT produced; the client
            // reads that statement's tag and RETURNING (its own table, its own shape).
            let upsert = plan.upsert(named, "pgshift_w", |c| {
                format!("pgshift_w.{}", quote_ident(c))
            });
            let upsert = upsert.replacen(
                &format!("INSERT INTO {} ", plan.shape(named).name.quoted()),
                &format!(
                    "INSERT INTO {} AS {qualifier} ",
                    plan.shape(named).name.quoted()
                ),
                1,
            );
            let mut text = format!("WITH pgshift_w AS ({out} RETURNING *) {upsert}");
            if let Some(items) = items {
                let list: Vec<String> = items
                    .iter()
                    .map(|(expr, name)| format!("{expr} AS {}", quote_ident(name)))
                    .collect();
                text.push_str(&format!(" RETURNING {}", list.join(", ")));
            }
            return Ok(text);
        }
        if let Some(items) = items {
            out.push_str(&self.returning_via(
                &items,
                &plan.row_as(named, "pgshift_q"),
                &qualifier,
                "",
            ));
        }
        Ok(out)
    }

    /// ` ON CONFLICT (auth key) DO NOTHING | DO UPDATE SET … [WHERE …]`, translated from the
    /// client's clause on the named table.
    fn translated_conflict(
        &self,
        on: &OnInsert,
        auth: Side,
        qualifier: &str,
    ) -> Result<String, Refusal> {
        let named = self.side;
        let plan = self.plan;
        let OnInsert::OnConflict(conflict) = on else {
            return Err(plan.refuse("ON DUPLICATE KEY is not PostgreSQL"));
        };
        let key: Vec<String> = match &conflict.conflict_target {
            Some(ConflictTarget::Columns(cols)) => cols.iter().map(normalize_ident).collect(),
            _ => {
                return Err(plan.refuse(
                    "ON CONFLICT on a table of a table move needs its key columns as the \
                     conflict target",
                ));
            }
        };
        let mut wanted = plan.shape(named).key.clone();
        let mut given = key.clone();
        wanted.sort();
        given.sort();
        if wanted != given {
            return Err(plan.refuse(format!(
                "ON CONFLICT on a table of a table move must name the key {:?}",
                plan.shape(named).key
            )));
        }
        let auth_key: Vec<String> = plan
            .shape(auth)
            .key
            .iter()
            .map(|k| quote_ident(k))
            .collect();
        let head = format!(" ON CONFLICT ({})", auth_key.join(", "));
        let update = match &conflict.action {
            OnConflictAction::DoNothing => return Ok(format!("{head} DO NOTHING")),
            OnConflictAction::DoUpdate(update) => update,
        };
        let index = LineIndex::new(self.text);
        // The named table's columns as seen from the authoritative row (`pgshift_q`) and from
        // its proposed row (`EXCLUDED`).
        let named_col = |row: &str, c: &str| -> Option<String> {
            plan.fed(named)
                .iter()
                .find(|(n, _)| n == c)
                .map(|(n, e)| match e {
                    Some(e) => format!(
                        "{}::{}",
                        e.render(|a| format!("{row}.{}", quote_ident(a))),
                        plan.type_of(named, n)
                    ),
                    None => format!("NULL::{}", plan.type_of(named, n)),
                })
        };
        let translate = |expr: &Expr| -> Result<String, Refusal> {
            let range = index
                .range(expr.span())
                .ok_or_else(|| plan.refuse("cannot locate an ON CONFLICT expression"))?;
            let mut edits = Edits::default();
            let mut bad = None;
            let _ = visit_expressions(expr, |e| {
                let (row, column) = match e {
                    Expr::Identifier(i) => ("pgshift_q", normalize_ident(i)),
                    Expr::CompoundIdentifier(parts) if parts.len() == 2 => {
                        let q = normalize_ident(&parts[0]);
                        let row = if q == "excluded" {
                            "EXCLUDED"
                        } else if q == normalize_ident(&sqlparser::ast::Ident::new(qualifier))
                            || q == plan.shape(named).name.name
                        {
                            "pgshift_q"
                        } else {
                            return ControlFlow::<()>::Continue(());
                        };
                        (row, normalize_ident(&parts[1]))
                    }
                    Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => {
                        bad = Some("a subquery in ON CONFLICT DO UPDATE");
                        return ControlFlow::Break(());
                    }
                    _ => return ControlFlow::Continue(()),
                };
                match (named_col(row, &column), index.range(e.span())) {
                    (Some(text), Some(r)) => edits.replace(r, format!("({text})")),
                    (None, _) => {} // not a column of the named table (a function name, …)
                    (_, None) => bad = Some("an expression pgshift cannot locate"),
                }
                ControlFlow::Continue(())
            });
            if let Some(what) = bad {
                return Err(plan.refuse(format!(
                    "{what} on a table of a table move is not supported"
                )));
            }
            edits
                .apply_within(self.text, range)
                .ok_or_else(|| plan.refuse("overlapping rewrites"))
        };
        let mut sets: Vec<(String, String)> = Vec::new();
        for a in &update.assignments {
            let AssignmentTarget::ColumnName(name) = &a.target else {
                return Err(plan.refuse("tuple assignments in ON CONFLICT DO UPDATE"));
            };
            let column = idents(name)
                .and_then(|i| i.last().map(normalize_ident))
                .ok_or_else(|| plan.refuse("cannot read a SET target"))?;
            if plan.moved.key.contains(&column) {
                return Err(plan.refuse(format!(
                    "UPDATE of key column {column} of a table move is not supported"
                )));
            }
            sets.push((
                column.clone(),
                format!(
                    "({})::{}",
                    translate(&a.value)?,
                    plan.type_of(named, &column)
                ),
            ));
        }
        let final_col = |c: &str| match sets.iter().find(|(s, _)| s == c) {
            Some((_, v)) => format!("({v})"),
            None => {
                named_col("pgshift_q", c).map_or_else(|| "NULL".to_owned(), |t| format!("({t})"))
            }
        };
        let mut list = Vec::new();
        for (column, expr) in plan.written(auth) {
            if !expr.columns().any(|c| sets.iter().any(|(s, _)| s == c)) {
                continue;
            }
            list.push(format!(
                "{} = {}::{}",
                quote_ident(column),
                expr.render(final_col),
                plan.type_of(auth, column)
            ));
        }
        if list.is_empty() {
            let k = quote_ident(&plan.moved.key[0]);
            list.push(format!("{k} = pgshift_q.{k}"));
        }
        let mut out = format!("{head} DO UPDATE SET {}", list.join(", "));
        if let Some(w) = &update.selection {
            out.push_str(&format!(" WHERE {}", translate(w)?));
        }
        Ok(out)
    }
}
