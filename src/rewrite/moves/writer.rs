//! The text of one rewritten write naming a table of a table move (see the parent module).

use std::ops::Range;

use sqlparser::ast::{
    AssignmentTarget, Delete, Expr, FromTable, Insert, SelectItem, SetExpr, Spanned, Statement,
    TableFactor, TableObject, Update, Visit,
};
use sqlparser::keywords::Keyword;

use super::super::scope::{self, idents};
use super::super::splice::{self, Edits, LineIndex};
use super::super::{Refusal, Rewriter, normalize_ident};
use super::{Clauses, MIRROR_STAND_IN, MovePlan, Side, StatementTokens, Written};
use crate::migration::quote_ident;

mod translated;

/// Builds the rewritten text of one write.
pub(super) struct Writer<'a> {
    pub(super) plan: &'a MovePlan,
    pub(super) side: Side,
    pub(super) text: &'a str,
    /// The whole statement.
    pub(super) range: Range<usize>,
    /// Reads inside the statement's clauses, substituted (applied piecewise).
    reads: Edits,
    /// The statement's tokens, for [`Self::clauses`].
    tokens: StatementTokens,
}

impl<'a> Writer<'a> {
    pub(super) fn new(
        rw: &Rewriter,
        plan: &'a MovePlan,
        side: Side,
        statement: &Statement,
        index: &'a LineIndex<'a>,
    ) -> Result<Writer<'a>, Refusal> {
        let text = index.text();
        let start = index
            .range(statement.span())
            .map(|r| r.start)
            .ok_or_else(|| plan.refuse("cannot locate the statement"))?;
        let tokens = StatementTokens::scan(text, start)
            .ok_or_else(|| plan.refuse("cannot tokenize the statement"))?;
        let clauses = Clauses::of(&tokens, start, &[]);
        let mut reads = Edits::default();
        let mut walk = |node: &dyn WalkNode| node.walk(rw, index, &mut reads);
        match statement {
            Statement::Insert(i) => {
                if let Some(source) = &i.source {
                    walk(&**source)?;
                }
                if let Some(on) = &i.on {
                    walk(on)?;
                }
            }
            Statement::Update(u) => {
                for a in &u.assignments {
                    walk(&a.value)?;
                }
                if let Some(from) = &u.from {
                    walk(from)?;
                }
                for j in &u.table.joins {
                    walk(j)?;
                }
                if let Some(w) = &u.selection {
                    walk(w)?;
                }
            }
            Statement::Delete(d) => {
                if let Some(using) = &d.using {
                    walk(using)?;
                }
                if let Some(w) = &d.selection {
                    walk(w)?;
                }
            }
            _ => {}
        }
        // `schema.table.column` naming the target: the target may become a derived table,
        // which only a `table.column` reference reaches.
        let named = plan.shape(side).name.clone();
        let mut bad = false;
        let _ = sqlparser::ast::visit_expressions(statement, |e| {
            if let Expr::CompoundIdentifier(parts) = e
                && let [schema, table, column] = parts.as_slice()
                && normalize_ident(schema) == named.schema
                && normalize_ident(table) == named.name
            {
                match index.range(e.span()) {
                    Some(r) => reads.replace(r, format!("{table}.{column}")),
                    None => bad = true,
                }
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
        if bad {
            return Err(plan.refuse("cannot locate a schema-qualified column reference"));
        }
        Ok(Writer {
            plan,
            side,
            text,
            range: start..clauses.end,
            reads,
            tokens,
        })
    }

    /// The statement's text in `range`, reads substituted.
    pub(super) fn piece(&self, range: Range<usize>) -> Result<String, Refusal> {
        self.reads
            .apply_within(self.text, range)
            .ok_or_else(|| self.plan.refuse("overlapping rewrites"))
    }

    pub(super) fn clauses(&self, keywords: &[Keyword]) -> Result<Clauses, Refusal> {
        Ok(Clauses::of(&self.tokens, self.range.start, keywords))
    }

    /// The RETURNING items as `(expression text, output name)`, `*` and `q.*` expanded to the
    /// named table's columns.
    pub(super) fn returning_items(
        &self,
        items: &[SelectItem],
        body: Range<usize>,
    ) -> Result<Vec<(String, String)>, Refusal> {
        let ranges = splice::list_items(self.text, body)
            .filter(|r| r.len() == items.len())
            .ok_or_else(|| self.plan.refuse("cannot split the RETURNING list"))?;
        let mut out = Vec::new();
        for (item, range) in items.iter().zip(ranges) {
            match item {
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                    for c in &self.plan.shape(self.side).columns {
                        out.push((quote_ident(&c.name), c.name.clone()));
                    }
                }
                SelectItem::UnnamedExpr(e) => {
                    if let Expr::Identifier(i) = e
                        && self
                            .plan
                            .shape(self.side)
                            .column(&normalize_ident(i))
                            .is_none()
                    {
                        return Err(self.plan.refuse(format!(
                            "RETURNING {} (a whole-row reference) on a table of a table move is \
                             not supported; list the columns",
                            i.value
                        )));
                    }
                    out.push((self.piece(range)?, output_name(e)));
                }
                SelectItem::ExprWithAlias { alias, .. } => {
                    let alias_start = LineIndex::new(self.text)
                        .range(alias.span)
                        .map(|r| r.start)
                        .ok_or_else(|| self.plan.refuse("cannot locate a RETURNING alias"))?;
                    let expr_end = expression_end(self.text, range.start, alias_start);
                    out.push((self.piece(range.start..expr_end)?, normalize_ident(alias)));
                }
                _ => return Err(self.plan.refuse("this RETURNING item is not supported")),
            }
        }
        Ok(out)
    }

    /// `RETURNING (SELECT <item> FROM <rows> AS <qualifier> WHERE <correlation>) AS name, …`.
    pub(super) fn returning_via(
        &self,
        items: &[(String, String)],
        rows: &str,
        qualifier: &str,
        correlation: &str,
    ) -> String {
        let list: Vec<String> = items
            .iter()
            .map(|(expr, name)| {
                format!(
                    "(SELECT {expr} FROM {rows} AS {qualifier}{correlation}) AS {}",
                    quote_ident(name)
                )
            })
            .collect();
        format!(" RETURNING {}", list.join(", "))
    }

    /// `conflict`: the other table's rows are upserted (the named table is authoritative, so
    /// a row the backfill already copied is overwritten with the client's); otherwise a plain
    /// INSERT, whose unique violation on the authoritative table is the client's error.
    ///
    /// Without RETURNING, and when the statement is followed by nothing but whitespace, `;` or
    /// the end, the check parses [`MIRROR_STAND_IN`] in place of the (verified) mirror.
    pub(super) fn dual_insert(&self, insert: &Insert, conflict: bool) -> Result<Written, Refusal> {
        if let Some(sqlparser::ast::OnInsert::OnConflict(c)) = &insert.on
            && let sqlparser::ast::OnConflictAction::DoUpdate(update) = &c.action
            && let Some(key) = update.assignments.iter().find_map(|a| match &a.target {
                AssignmentTarget::ColumnName(n) => idents(n)
                    .and_then(|i| i.last().map(normalize_ident))
                    .filter(|c| self.plan.moved.key.contains(c)),
                AssignmentTarget::Tuple(_) => Some("(…)".to_owned()),
            })
        {
            return Err(self.plan.refuse(format!(
                "ON CONFLICT DO UPDATE of key column {key} of a table move is not supported"
            )));
        }
        let clauses = self.clauses(&[Keyword::RETURNING])?;
        let body_end = clauses
            .keyword_start(Keyword::RETURNING)
            .unwrap_or(clauses.end);
        let client = self.piece(self.range.start..body_end)?;
        let other = self.side.other();
        let mirrors = self.plan.mirror(other);
        let (mirror, verified) = if conflict {
            (&mirrors.upsert, mirrors.upsert_verified)
        } else {
            (&mirrors.plain, mirrors.plain_verified)
        };
        let head = format!("WITH pgshift_w AS ({} RETURNING *) ", client.trim_end());
        let mut out = format!("{head}{mirror}");
        let returning = (&insert.returning, clauses.body(Keyword::RETURNING));
        let ends = matches!(
            self.text.as_bytes().get(self.range.end),
            None | Some(b' ' | b'\t' | b'\n' | b'\r' | b';')
        );
        let stand_in = (verified && ends && !matches!(returning, (Some(_), Some(_))))
            .then(|| format!("{head}{MIRROR_STAND_IN}"));
        if let (Some(items), Some(body)) = returning {
            let items = self.returning_items(items, body)?;
            let qualifier = insert_qualifier(insert, self.text)
                .ok_or_else(|| self.plan.refuse("cannot locate the INSERT target"))?;
            let target = self.plan.shape(other).name.quoted();
            let correlation = format!(" WHERE {}", self.plan.key_match(&qualifier, &target));
            out.push_str(&self.returning_via(&items, "pgshift_w", &qualifier, &correlation));
        }
        Ok(Written {
            text: out,
            stand_in,
        })
    }

    /// `q.k1 AS pgshift_k1, …`: the key columns under pgshift names.
    fn key_select(&self, q: &str) -> String {
        self.plan
            .moved
            .key
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{q}.{} AS pgshift_k{}", quote_ident(k), i + 1))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `a.k1 = pgshift_d.pgshift_k1 AND …` against [`Self::key_select`]'s names.
    fn key_match_keys(&self, a: &str) -> String {
        self.plan
            .moved
            .key
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{a}.{} = pgshift_d.pgshift_k{}", quote_ident(k), i + 1))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// `a.k1 = cte.pgshift_cN AND …` where `cte` holds every column of `side` as `pgshift_cN`.
    fn key_match_prefixed(&self, a: &str, cte: &str, side: Side) -> String {
        let columns = &self.plan.shape(side).columns;
        self.plan
            .moved
            .key
            .iter()
            .map(|k| {
                let i = columns.iter().position(|c| &c.name == k).unwrap_or(0) + 1;
                format!("{a}.{} = {cte}.pgshift_c{i}", quote_ident(k))
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// The target (`table [AS alias]` text) and its qualifier of an UPDATE or DELETE.
    fn target(&self, factor: &TableFactor) -> Result<(String, String), Refusal> {
        let TableFactor::Table { name, alias, .. } = factor else {
            return Err(self.plan.refuse("cannot locate the target table"));
        };
        let index = LineIndex::new(self.text);
        let start = index.range(name.span()).map(|r| r.start);
        let end = match alias {
            Some(a) => index.range(a.name.span).map(|r| r.end),
            None => index.range(name.span()).map(|r| r.end),
        };
        let (Some(start), Some(end)) = (start, end) else {
            return Err(self.plan.refuse("cannot locate the target table"));
        };
        let qualifier = match alias {
            Some(a) => a.name.to_string(),
            None => match name.0.last() {
                Some(sqlparser::ast::ObjectNamePart::Identifier(i)) => i.to_string(),
                _ => return Err(self.plan.refuse("cannot locate the target table")),
            },
        };
        Ok((self.text[start..end].to_owned(), qualifier))
    }

    /// `SET col = value` pairs: column, value text (reads substituted), cast to its type.
    fn assignments(&self, update: &Update, side: Side) -> Result<Vec<(String, String)>, Refusal> {
        let index = LineIndex::new(self.text);
        let mut out = Vec::new();
        for a in &update.assignments {
            let AssignmentTarget::ColumnName(name) = &a.target else {
                return Err(self.plan.refuse(
                    "a tuple assignment SET (a, b) = … on a table of a table move is not supported",
                ));
            };
            let column = idents(name)
                .and_then(|i| i.last().map(normalize_ident))
                .ok_or_else(|| self.plan.refuse("cannot read a SET target"))?;
            if self.plan.moved.key.contains(&column) {
                return Err(self.plan.refuse(format!(
                    "UPDATE of key column {column} of a table move is not supported"
                )));
            }
            if matches!(&a.value, Expr::Identifier(i) if i.value.eq_ignore_ascii_case("default") && i.quote_style.is_none())
            {
                return Err(self
                    .plan
                    .refuse("SET … = DEFAULT on a table of a table move is not supported"));
            }
            if self.plan.shape(side).column(&column).is_none() {
                return Err(self.plan.refuse(format!(
                    "column {column} does not exist in {}",
                    self.plan.shape(side).name
                )));
            }
            let target_end = index
                .range(name.span())
                .map(|r| r.end)
                .ok_or_else(|| self.plan.refuse("cannot locate a SET target"))?;
            let value = splice::assignment_value(self.text, target_end)
                .ok_or_else(|| self.plan.refuse("cannot locate a SET value"))?;
            let value = self.piece(value)?;
            out.push((
                column.clone(),
                format!("({value})::{}", self.plan.type_of(side, &column)),
            ));
        }
        Ok(out)
    }

    /// An UPDATE's clauses, refusing the forms neither kind of UPDATE rewrite supports.
    fn update_clauses(&self, update: &Update) -> Result<Clauses, Refusal> {
        let clauses = self.clauses(&[
            Keyword::SET,
            Keyword::FROM,
            Keyword::WHERE,
            Keyword::RETURNING,
        ])?;
        if !update.table.joins.is_empty() {
            return Err(self
                .plan
                .refuse("joins in an UPDATE target are not supported"));
        }
        if clauses.body(Keyword::FROM).is_some() && update.returning.is_some() {
            return Err(self.plan.refuse(
                "RETURNING in an UPDATE … FROM on a table of a table move is not supported",
            ));
        }
        Ok(clauses)
    }

    /// The select list of an UPDATE's row CTE: every column of `side`'s shape seen as `q`,
    /// then each SET value, all under pgshift names (`pgshift_cN`, `pgshift_sN`): the
    /// top-level UPDATE joins the CTE, and the client's unqualified RETURNING names must stay
    /// unambiguous.
    fn update_select(&self, q: &str, side: Side, sets: &[(String, String)]) -> Vec<String> {
        let columns = &self.plan.shape(side).columns;
        let mut select: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{q}.{} AS pgshift_c{}", quote_ident(&c.name), i + 1))
            .collect();
        for (i, (_, value)) in sets.iter().enumerate() {
            select.push(format!("{value} AS pgshift_s{}", i + 1));
        }
        select
    }

    pub(super) fn dual_update(&self, update: &Update) -> Result<String, Refusal> {
        let clauses = self.update_clauses(update)?;
        let (target, q) = self.target(&update.table.relation)?;
        let sets = self.assignments(update, self.side)?;
        let select = self.update_select(&q, self.side, &sets);
        let columns = &self.plan.shape(self.side).columns;
        let mut cte = format!("SELECT {} FROM {target}", select.join(", "));
        if let Some(from) = clauses.body(Keyword::FROM) {
            cte.push_str(&format!(", {}", self.piece(from)?));
        }
        if let Some(w) = clauses.body(Keyword::WHERE) {
            cte.push_str(&format!(" WHERE {}", self.piece(w)?));
        }
        cte.push_str(&format!(" FOR UPDATE OF {q}"));
        let final_col = |c: &str| match sets.iter().position(|(s, _)| s == c) {
            Some(i) => format!("pgshift_u.pgshift_s{}", i + 1),
            None => match columns.iter().position(|col| col.name == c) {
                Some(i) => format!("pgshift_u.pgshift_c{}", i + 1),
                None => format!("pgshift_u.{}", quote_ident(c)),
            },
        };
        let upsert = self.plan.upsert(self.side.other(), "pgshift_u", final_col);
        let key_match = self.key_match_prefixed(&q, "pgshift_u", self.side);
        let set_list: Vec<String> = sets
            .iter()
            .enumerate()
            .map(|(i, (c, _))| format!("{} = pgshift_u.pgshift_s{}", quote_ident(c), i + 1))
            .collect();
        let mut out = format!(
            "WITH pgshift_u AS MATERIALIZED ({cte}), pgshift_m AS ({upsert}) \
             UPDATE {target} SET {} FROM pgshift_u WHERE {key_match}",
            set_list.join(", "),
        );
        self.direct_returning(&mut out, update.returning.as_deref(), &clauses, &q)?;
        Ok(out)
    }

    /// The client's RETURNING on its own table, joined with a pgshift CTE: `*` must not pick
    /// up the CTE's columns, so it becomes `q.*`.
    fn direct_returning(
        &self,
        out: &mut String,
        returning: Option<&[SelectItem]>,
        clauses: &Clauses,
        q: &str,
    ) -> Result<(), Refusal> {
        let (Some(items), Some(body)) = (returning, clauses.body(Keyword::RETURNING)) else {
            return Ok(());
        };
        let ranges = splice::list_items(self.text, body)
            .filter(|r| r.len() == items.len())
            .ok_or_else(|| self.plan.refuse("cannot split the RETURNING list"))?;
        let mut list = Vec::new();
        for (item, range) in items.iter().zip(ranges) {
            list.push(match item {
                SelectItem::Wildcard(_) => format!("{q}.*"),
                _ => self.piece(range)?,
            });
        }
        out.push_str(&format!(" RETURNING {}", list.join(", ")));
        Ok(())
    }

    /// A DELETE's clauses and its target (quoted name, alias), refusing the forms neither kind
    /// of DELETE rewrite supports.
    fn delete_clauses(&self, delete: &Delete) -> Result<(Clauses, String, String), Refusal> {
        let clauses = self.clauses(&[
            Keyword::FROM,
            Keyword::USING,
            Keyword::WHERE,
            Keyword::RETURNING,
        ])?;
        if clauses.body(Keyword::USING).is_some() && delete.returning.is_some() {
            return Err(self.plan.refuse(
                "RETURNING in a DELETE … USING on a table of a table move is not supported",
            ));
        }
        let factor =
            delete_factor(delete).ok_or_else(|| self.plan.refuse("cannot locate the target"))?;
        let (target, q) = self.target(factor)?;
        Ok((clauses, target, q))
    }

    /// The keys of the rows a DELETE removes, locked: `SELECT keys FROM {from}`, with the
    /// client's USING and WHERE, `FOR UPDATE OF {q}`.
    fn delete_keys(&self, clauses: &Clauses, from: &str, q: &str) -> Result<String, Refusal> {
        let keys = self.key_select(q);
        let mut cte = format!("SELECT {keys} FROM {from}");
        if let Some(using) = clauses.body(Keyword::USING) {
            cte.push_str(&format!(", {}", self.piece(using)?));
        }
        if let Some(w) = clauses.body(Keyword::WHERE) {
            cte.push_str(&format!(" WHERE {}", self.piece(w)?));
        }
        cte.push_str(&format!(" FOR UPDATE OF {q}"));
        Ok(cte)
    }

    pub(super) fn dual_delete(&self, delete: &Delete) -> Result<String, Refusal> {
        let (clauses, target, q) = self.delete_clauses(delete)?;
        let cte = self.delete_keys(&clauses, &target, &q)?;
        let other = self.plan.shape(self.side.other()).name.quoted();
        let mut out = format!(
            "WITH pgshift_d AS MATERIALIZED ({cte}), pgshift_m AS (DELETE FROM {other} AS pgshift_o \
             USING pgshift_d WHERE {}) DELETE FROM {target} USING pgshift_d WHERE {}",
            self.key_match_keys("pgshift_o"),
            self.key_match_keys(&q)
        );
        self.direct_returning(&mut out, delete.returning.as_deref(), &clauses, &q)?;
        Ok(out)
    }

    /// Where an INSERT's source starts: its `VALUES` keyword (a VALUES query's span starts at
    /// its first row), else the query's own span.
    pub(super) fn source_start(&self, source: &sqlparser::ast::Query) -> Result<usize, Refusal> {
        let index = LineIndex::new(self.text);
        let span_start = index
            .range(source.span())
            .map(|r| r.start)
            .ok_or_else(|| self.plan.refuse("cannot locate the INSERT source"))?;
        if !matches!(source.body.as_ref(), SetExpr::Values(_)) || source.with.is_some() {
            return Ok(span_start);
        }
        let clauses = self.clauses(&[Keyword::VALUES])?;
        clauses
            .keyword_start(Keyword::VALUES)
            .filter(|&v| v <= span_start)
            .ok_or_else(|| self.plan.refuse("cannot locate the INSERT source"))
    }

    /// An INSERT source for the translated INSERT: VALUES rows get each item cast to the old
    /// column's type (so parameters keep the types the client's statement gives them).
    pub(super) fn source_with_types(
        &self,
        source: &sqlparser::ast::Query,
        range: Range<usize>,
        listed: &[String],
        side: Side,
    ) -> Result<String, Refusal> {
        let SetExpr::Values(values) = source.body.as_ref() else {
            // A parameter inside the wrapped SELECT would be typed text there, not as the
            // column it is inserted into.
            let mut has_param = false;
            let _ = sqlparser::ast::visit_expressions(source, |e| {
                if matches!(e, Expr::Value(v) if matches!(v.value, sqlparser::ast::Value::Placeholder(_)))
                {
                    has_param = true;
                }
                std::ops::ControlFlow::<()>::Continue(())
            });
            if has_param {
                return Err(self.plan.refuse(
                    "INSERT … SELECT with parameters on a table of a table move, in this \
                     phase, is not supported; use VALUES",
                ));
            }
            let text = self.piece(range)?;
            return Ok(format!("SELECT * FROM ({text}) AS pgshift_s"));
        };
        let index = LineIndex::new(self.text);
        let mut edits = Edits::default();
        for row in &values.rows {
            let Some(row_range) = index.range(row.span()) else {
                return Err(self.plan.refuse("cannot locate a VALUES row"));
            };
            // The row's span covers its parentheses.
            let inner = row_range.start + 1..row_range.end - 1;
            let items = splice::list_items(self.text, inner)
                .filter(|i| i.len() == listed.len())
                .ok_or_else(|| self.plan.refuse("VALUES rows must match the column list"))?;
            for (item, column) in items.into_iter().zip(listed) {
                let text = self.piece(item.clone())?;
                if text.trim().eq_ignore_ascii_case("default") {
                    return Err(self.plan.refuse(
                        "DEFAULT in this INSERT on a table of a table move is not supported; \
                         leave the column out",
                    ));
                }
                edits.replace(
                    item,
                    format!("CAST({text} AS {})", self.plan.type_of(side, column)),
                );
            }
        }
        edits
            .apply_within(self.text, range)
            .ok_or_else(|| self.plan.refuse("overlapping rewrites"))
    }
}

fn delete_factor(delete: &Delete) -> Option<&TableFactor> {
    let (FromTable::WithFromKeyword(tables) | FromTable::WithoutKeyword(tables)) = &delete.from;
    tables.first().map(|t| &t.relation)
}

/// The name RETURNING items qualify the INSERT's rows with: its alias, else the table name as
/// written (last part).
pub(super) fn insert_qualifier(insert: &Insert, text: &str) -> Option<String> {
    if let Some(alias) = &insert.table_alias {
        return Some(alias.alias.to_string());
    }
    let TableObject::TableName(name) = &insert.table else {
        return None;
    };
    let last = name.0.last()?;
    let range = LineIndex::new(text).range(last.span())?;
    Some(text[range].to_owned())
}

/// Where an expression ends before its alias: before the `AS` keyword preceding `alias_start`
/// (if any) and the whitespace around it.
fn expression_end(text: &str, start: usize, alias_start: usize) -> usize {
    let before = text[start..alias_start].trim_end();
    let lower = before.to_ascii_lowercase();
    let cut = if lower.ends_with(" as") || lower.ends_with("\tas") || lower.ends_with("\nas") {
        before.len() - 2
    } else {
        before.len()
    };
    start + text[start..start + cut].trim_end().len()
}

/// The column name PostgreSQL gives an unaliased output expression (its FigureColname rules,
/// for the expressions that matter here).
fn output_name(expr: &Expr) -> String {
    match expr {
        Expr::Identifier(i) => normalize_ident(i),
        Expr::CompoundIdentifier(parts) => parts.last().map(normalize_ident).unwrap_or_default(),
        Expr::Function(f) => match f.name.0.last() {
            Some(sqlparser::ast::ObjectNamePart::Identifier(i)) => normalize_ident(i),
            _ => "?column?".into(),
        },
        Expr::Nested(e) => output_name(e),
        Expr::Cast {
            expr, data_type, ..
        } => match output_name(expr).as_str() {
            "?column?" => internal_type_name(&data_type.to_string().to_lowercase()),
            name => name.to_owned(),
        },
        Expr::Case { .. } => "case".into(),
        Expr::Exists { .. } => "exists".into(),
        Expr::Array(_) => "array".into(),
        _ => "?column?".into(),
    }
}

/// The name PostgreSQL gives a cast's output column: the type's internal name.
fn internal_type_name(sql: &str) -> String {
    let base = sql.split('(').next().unwrap_or(sql).trim();
    match base {
        "bigint" | "int8" => "int8",
        "integer" | "int" | "int4" => "int4",
        "smallint" | "int2" => "int2",
        "boolean" | "bool" => "bool",
        "double precision" | "float8" => "float8",
        "real" | "float4" => "float4",
        "character varying" | "varchar" => "varchar",
        "character" | "char" => "bpchar",
        "decimal" | "numeric" => "numeric",
        "timestamp with time zone" | "timestamptz" => "timestamptz",
        "timestamp" | "timestamp without time zone" => "timestamp",
        "time with time zone" | "timetz" => "timetz",
        "time" | "time without time zone" => "time",
        other => other,
    }
    .to_owned()
}

/// A node whose reads the scope walk substitutes.
trait WalkNode {
    fn walk(&self, rw: &Rewriter, index: &LineIndex<'_>, edits: &mut Edits) -> Result<(), Refusal>;
}

impl<T: Visit> WalkNode for T {
    fn walk(&self, rw: &Rewriter, index: &LineIndex<'_>, edits: &mut Edits) -> Result<(), Refusal> {
        scope::rewrite_reads(rw, self, None, index, edits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    fn expr(sql: &str) -> Expr {
        Parser::new(&PostgreSqlDialect {})
            .try_with_sql(sql)
            .unwrap()
            .parse_expr()
            .unwrap()
    }

    #[test]
    fn output_names_follow_postgres() {
        assert_eq!(output_name(&expr("o.total")), "total");
        assert_eq!(output_name(&expr("\"Total\"")), "Total");
        assert_eq!(output_name(&expr("lower(customer)")), "lower");
        assert_eq!(output_name(&expr("total::text")), "total");
        assert_eq!(output_name(&expr("1::text")), "text");
        assert_eq!(output_name(&expr("1::bigint")), "int8");
        assert_eq!(output_name(&expr("CASE WHEN a THEN 1 END")), "case");
        assert_eq!(output_name(&expr("total + 1")), "?column?");
    }

    #[test]
    fn expressions_end_before_their_alias() {
        let text = "RETURNING total * 2 AS t2";
        let alias = text.find("t2").unwrap();
        assert_eq!(&text[10..expression_end(text, 10, alias)], "total * 2");
        let text = "RETURNING total t";
        assert_eq!(&text[10..expression_end(text, 10, 16)], "total");
    }
}
