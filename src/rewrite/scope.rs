//! The walk over a statement: every table reference to a migrated table (FROM, JOIN,
//! subqueries, CTE bodies, `UPDATE … FROM`, `DELETE … USING`) becomes a derived table that
//! computes the non-authoritative columns from the authoritative side, under the original
//! alias or the table's own name; references to the DML target's non-authoritative columns
//! become their expressions. CTE names shadow tables within their query (scope is tracked).
//! Once `complete_sql` dropped an old column, the derived table still computes the old name
//! after the physical columns, so `*` and `t.*` over it are expanded to the physical columns.

use std::ops::ControlFlow;
use std::sync::Arc;

use sqlparser::ast::{
    Expr, Ident, JoinConstraint, JoinOperator, ObjectName, ObjectNamePart, Query, Select,
    SelectItem, SelectItemQualifiedWildcardKind, SetExpr, Spanned, Statement, TableAlias,
    TableFactor, TableWithJoins, Visit, Visitor, WildcardAdditionalOptions, visit_relations,
};

mod visit;

use super::splice::{Edits, LineIndex};
use super::{Refusal, Rewriter, TablePlan, normalize_ident};
use crate::migration::quote_ident;

/// The table an UPDATE or DELETE writes, whose columns are referenced directly (it cannot be
/// replaced by a derived table).
pub struct Target {
    pub plan: Arc<TablePlan>,
    /// Normalized alias or table name that qualifies its columns.
    pub qualifier: String,
    /// The qualifier as written, for generated references.
    pub qualifier_text: String,
    /// Byte offset where the target's name starts; that table factor is left alone.
    pub name_start: usize,
    /// Other tables are in scope (FROM/USING), so unqualified names may be theirs.
    pub has_other_tables: bool,
    /// Unqualified column names refer to this table (false for `EXCLUDED`).
    pub matches_unqualified: bool,
    /// Byte ranges of bare column references that are RETURNING items: replaced, they keep
    /// their output name with an alias (RowDescription must not change).
    pub outputs: Vec<std::ops::Range<usize>>,
}

impl Target {
    /// Records which RETURNING items are bare column references.
    pub fn with_outputs(
        mut self,
        returning: Option<&[sqlparser::ast::SelectItem]>,
        index: &LineIndex<'_>,
    ) -> Target {
        for item in returning.unwrap_or_default() {
            if let sqlparser::ast::SelectItem::UnnamedExpr(
                e @ (Expr::Identifier(_) | Expr::CompoundIdentifier(_)),
            ) = item
                && let Some(range) = index.range(e.span())
            {
                self.outputs.push(range);
            }
        }
        self
    }

    /// The expression for a non-authoritative column of the target, qualified.
    pub(super) fn computed(&self, column: &str) -> Option<String> {
        let pair = self.plan.non_authoritative(column)?;
        Some(pair.computed(|c| format!("{}.{}", self.qualifier_text, quote_ident(c))))
    }
}

/// The identifiers of an object name, or `None` when a part is not a plain identifier.
pub fn idents(name: &ObjectName) -> Option<Vec<Ident>> {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => Some(i.clone()),
            ObjectNamePart::Function(_) => None,
        })
        .collect()
}

/// Rewrites reads (and target column references) in `node`.
pub fn rewrite_reads<V: Visit>(
    rw: &Rewriter,
    node: &V,
    target: Option<&Target>,
    index: &LineIndex<'_>,
    edits: &mut Edits,
) -> Result<(), Refusal> {
    walk(Some(rw), node, target, index, edits, &[])
}

/// [`rewrite_reads`] of a query whose data-modifying CTE statements in `handled` were
/// rewritten on their own: their subtrees are left alone.
pub fn rewrite_reads_except(
    rw: &Rewriter,
    node: &Statement,
    handled: &[*const Statement],
    index: &LineIndex<'_>,
    edits: &mut Edits,
) -> Result<(), Refusal> {
    walk(Some(rw), node, None, index, edits, handled)
}

fn walk<V: Visit>(
    rw: Option<&Rewriter>,
    node: &V,
    target: Option<&Target>,
    index: &LineIndex<'_>,
    edits: &mut Edits,
    handled: &[*const Statement],
) -> Result<(), Refusal> {
    let mut walker = Walker {
        rw,
        index,
        edits,
        target,
        ctes: Vec::new(),
        depth: 0,
        statements: 0,
        handled,
        skipping: 0,
        root: None,
        root_query: false,
        top_is_dml: false,
        factors: 0,
        replaced: Vec::new(),
        bare: Vec::new(),
        error: None,
    };
    let _ = node.visit(&mut walker);
    if let Some(e) = walker.error {
        return Err(e);
    }
    // `SELECT u FROM users u`: a whole-row reference to a derived table would be a record,
    // not the table's row type.
    for name in &walker.bare {
        if let Some((_, plan)) = walker
            .replaced
            .iter()
            .find(|(alias, plan)| alias == name && !plan.answers_to(name))
        {
            return Err(plan.refuse(format!(
                "whole-row reference {name} to a table under migration is not supported"
            )));
        }
    }
    Ok(())
}

/// The migrated tables a statement mentions anywhere.
pub fn touched_tables(rw: &Rewriter, statement: &Statement) -> Vec<Arc<TablePlan>> {
    let mut found: Vec<Arc<TablePlan>> = Vec::new();
    let _ = visit_relations(statement, |name| {
        if let Some(plan) = idents(name).and_then(|i| rw.resolve(&i).cloned())
            && !found.iter().any(|f| Arc::ptr_eq(f, &plan))
        {
            found.push(plan);
        }
        ControlFlow::<()>::Continue(())
    });
    found
}

/// Every column name a statement uses: in expressions (last part of a qualified name), INSERT
/// column lists and SET targets, normalized.
pub fn column_names(statement: &Statement) -> Vec<String> {
    let mut names = Vec::new();
    let _ = sqlparser::ast::visit_expressions(statement, |e| {
        match e {
            Expr::Identifier(i) => names.push(normalize_ident(i)),
            Expr::CompoundIdentifier(parts) => names.extend(parts.last().map(normalize_ident)),
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    let mut push_object = |name: &ObjectName| {
        if let Some(last) = idents(name).and_then(|i| i.last().map(normalize_ident)) {
            names.push(last);
        }
    };
    match statement {
        Statement::Insert(insert) => insert.columns.iter().for_each(&mut push_object),
        Statement::Update(update) => {
            for a in &update.assignments {
                match &a.target {
                    sqlparser::ast::AssignmentTarget::ColumnName(c) => push_object(c),
                    sqlparser::ast::AssignmentTarget::Tuple(cs) => {
                        cs.iter().for_each(&mut push_object)
                    }
                }
            }
        }
        _ => {}
    }
    names
}

/// Whether a token starting with `b` is an identifier (a word or a quoted identifier).
fn identifier_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b == b'"'
}

/// A FROM item as `*` expands it.
struct FromItem {
    /// The name qualifying its columns: normalized, and as written.
    qualifier: Option<(String, String)>,
    /// A migrated table whose derived table also computes old names whose columns were
    /// dropped: `*` lists its physical columns only.
    dropped: Option<Arc<TablePlan>>,
    /// Such a table hidden where `*` cannot be expanded column by column (inside an aliased
    /// join, or under column aliases).
    opaque: Option<Arc<TablePlan>>,
}

/// True for a join that merges its join columns in `*` (`USING`, `NATURAL`).
fn merges_columns(op: &JoinOperator) -> bool {
    use JoinOperator as J;
    let constraint = match op {
        J::Join(c)
        | J::Inner(c)
        | J::Left(c)
        | J::LeftOuter(c)
        | J::Right(c)
        | J::RightOuter(c)
        | J::FullOuter(c)
        | J::CrossJoin(c)
        | J::Semi(c)
        | J::LeftSemi(c)
        | J::RightSemi(c)
        | J::Anti(c)
        | J::LeftAnti(c)
        | J::RightAnti(c)
        | J::StraightJoin(c) => c,
        J::AsOf { constraint, .. } => constraint,
        _ => return false,
    };
    matches!(
        constraint,
        JoinConstraint::Using(_) | JoinConstraint::Natural
    )
}

/// True when a wildcard carries options PostgreSQL does not have (`EXCLUDE`, `REPLACE`…).
fn has_wildcard_options(opts: &WildcardAdditionalOptions) -> bool {
    opts.opt_ilike.is_some()
        || opts.opt_exclude.is_some()
        || opts.opt_except.is_some()
        || opts.opt_replace.is_some()
        || opts.opt_rename.is_some()
        || opts.opt_alias.is_some()
}

struct Walker<'a, 'e> {
    /// `None` when only target column references are rewritten.
    rw: Option<&'a Rewriter>,
    index: &'a LineIndex<'a>,
    edits: &'e mut Edits,
    target: Option<&'a Target>,
    /// CTE names at each query nesting level, with the offset from which each is visible.
    ctes: Vec<Vec<(String, usize)>>,
    /// Query nesting depth (0 = the statement's own clauses).
    depth: usize,
    /// Statements entered (1 = the top-level one; more = data-modifying CTEs and the like).
    statements: usize,
    /// Nested statements already rewritten on their own (compared by address).
    handled: &'a [*const Statement],
    /// Depth inside a handled statement's subtree, where nothing is touched.
    skipping: usize,
    /// The walked statement's own unparenthesized query (a SELECT's, an INSERT's source),
    /// once the statement is entered.
    root: Option<*const Query>,
    /// The query at depth 1 is `root`.
    root_query: bool,
    /// The walked statement is an UPDATE or DELETE (whose FROM/USING has no query around it).
    top_is_dml: bool,
    /// Table factors being visited (the current one's enclosing factors, then itself).
    factors: usize,
    /// Names (alias or table name) of the table references replaced by derived tables.
    replaced: Vec<(String, Arc<TablePlan>)>,
    /// Unqualified identifiers seen in expressions.
    bare: Vec<String>,
    error: Option<Refusal>,
}

impl Walker<'_, '_> {
    fn refuse(&mut self, plan: &TablePlan, reason: String) -> ControlFlow<()> {
        self.error = Some(plan.refuse(reason));
        ControlFlow::Break(())
    }

    /// True when a one-part name at offset `at` refers to a CTE in scope.
    fn is_cte(&self, name: &[Ident], at: usize) -> bool {
        match name {
            [single] => {
                let n = normalize_ident(single);
                self.ctes
                    .iter()
                    .flatten()
                    .any(|(cte, from)| *cte == n && *from <= at)
            }
            _ => false,
        }
    }

    fn source(&self, ident: &Ident) -> Option<&str> {
        self.index.range(ident.span).map(|r| &self.index.text()[r])
    }

    /// Replaces a table name by the plan's derived table. `plain`: the name is a bare table
    /// reference directly in the walked top-level statement's own FROM/JOIN/USING list (no
    /// parenthesis around it, no table function arguments, hints, sample, …).
    ///
    /// Such an edit is parse-neutral (recorded with [`Edits::replace_neutral`]) when, in
    /// addition, the derived table was verified ([`super::splice::neutral_derived`]), the name
    /// starts with an identifier character or `"`, and the characters around it end and start
    /// tokens on their own. Then sqlparser (0.63, PostgreSQL dialect) reads `(derived) [AS
    /// name]` in `parse_table_factor` exactly where it read the name: the `(` takes the derived
    /// path, which parses the verified query, its `)`, and the same alias with the same
    /// `maybe_parse_table_alias`; the name path had consumed nothing else (no arguments,
    /// version, sample, hints), so both return at the same token, and no caller distinguishes
    /// a derived table from a table (only parenthesized factors do, and there are none around
    /// it). At that level the parser's recursion depth is at most three (statement, query,
    /// table factor), as where the derived table was verified. docs/rewrite.md, "Check".
    fn replace_table(
        &mut self,
        plan: &Arc<TablePlan>,
        name: &ObjectName,
        has_alias: bool,
        plain: bool,
    ) -> ControlFlow<()> {
        let Some(range) = self.index.range(name.span()) else {
            return self.refuse(plan, "cannot locate a table reference".into());
        };
        let visible = match (has_alias, name.0.last()) {
            (true, _) => None,
            (false, Some(ObjectNamePart::Identifier(i))) => Some(normalize_ident(i)),
            _ => None,
        };
        if let Some(v) = visible {
            self.replaced.push((v, plan.clone()));
        }
        let text = if has_alias {
            plan.derived.clone()
        } else {
            // Keep the name as written (quotes included) as the alias, so qualified column
            // references keep resolving.
            let last = name.0.last().and_then(|p| match p {
                ObjectNamePart::Identifier(i) => self.source(i).map(str::to_owned),
                ObjectNamePart::Function(_) => None,
            });
            match last {
                Some(alias) => format!("{} AS {alias}", plan.derived),
                None => return self.refuse(plan, "cannot locate a table reference".into()),
            }
        };
        if plain && plan.derived_neutral && self.neutral_name(name, &range) {
            self.edits.replace_neutral(range, text);
        } else {
            self.edits.replace(range, text);
        }
        ControlFlow::Continue(())
    }

    /// Whether the name at `range` is whole identifier tokens, each part located, that begin
    /// and end where nothing around them can join them (so the derived table's `(` and `)`,
    /// or the last part repeated as an alias, tokenize as they do alone).
    fn neutral_name(&self, name: &ObjectName, range: &std::ops::Range<usize>) -> bool {
        let bytes = self.index.text().as_bytes();
        let mut parts = Vec::with_capacity(name.0.len());
        for part in &name.0 {
            let ObjectNamePart::Identifier(i) = part else {
                return false;
            };
            match self.index.range(i.span) {
                Some(r) if !r.is_empty() && identifier_start(bytes[r.start]) => parts.push(r),
                _ => return false,
            }
        }
        let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
            return false;
        };
        first.start == range.start
            && last.end == range.end
            && super::splice::closes_token_before(range.start.checked_sub(1).map(|i| bytes[i]))
            && super::splice::opens_token_after(bytes.get(range.end).copied())
    }

    /// `*` and `t.*` over a migrated table whose old columns were dropped (complete) would
    /// list the old names the derived table still computes: they become the physical
    /// columns, qualified (`SELECT *` returns the physical columns in physical order).
    fn expand_wildcards(&mut self, body: &SetExpr) -> ControlFlow<()> {
        match body {
            SetExpr::Select(select) => self.select_wildcards(select),
            SetExpr::SetOperation { left, right, .. } => {
                self.expand_wildcards(left)?;
                self.expand_wildcards(right)
            }
            _ => ControlFlow::Continue(()),
        }
    }

    fn select_wildcards(&mut self, select: &Select) -> ControlFlow<()> {
        let has_wildcard = select.projection.iter().any(|i| {
            matches!(
                i,
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
            )
        });
        if !has_wildcard {
            return ControlFlow::Continue(());
        }
        let mut items = Vec::new();
        let mut merges = false;
        for from in &select.from {
            self.collect_from(from, &mut items, &mut merges);
        }
        let Some(plan) = items
            .iter()
            .find_map(|i| i.dropped.clone().or_else(|| i.opaque.clone()))
        else {
            return ControlFlow::Continue(());
        };
        let physical = |plan: &TablePlan, qualifier: &str| {
            plan.shape
                .columns
                .iter()
                .map(|c| format!("{qualifier}.{}", quote_ident(&c.name)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for item in &select.projection {
            match item {
                SelectItem::Wildcard(opts) => {
                    let why = if merges {
                        Some("SELECT * over a JOIN … USING or a NATURAL JOIN")
                    } else if items.iter().any(|i| i.opaque.is_some()) {
                        Some("SELECT * over an aliased join or a column alias list")
                    } else if items.iter().any(|i| i.qualifier.is_none()) {
                        Some("SELECT * with a FROM item that has no alias")
                    } else if has_wildcard_options(opts) {
                        Some("SELECT * with options")
                    } else {
                        None
                    };
                    if let Some(why) = why {
                        return self.refuse(
                            &plan,
                            format!(
                                "{why} naming {}, whose old column{} {} dropped (complete),                                  is not supported; name the columns",
                                plan.name(),
                                if plan.dropped.len() == 1 { "" } else { "s" },
                                if plan.dropped.len() == 1 { "was" } else { "were" },
                            ),
                        );
                    }
                    let list: Vec<String> = items
                        .iter()
                        .map(|i| {
                            let (_, q) = i.qualifier.as_ref().expect("checked above");
                            match &i.dropped {
                                Some(p) => physical(p, q),
                                None => format!("{q}.*"),
                            }
                        })
                        .collect();
                    let Some(range) = self.index.range(opts.wildcard_token.0.span) else {
                        return self.refuse(&plan, "cannot locate SELECT *".into());
                    };
                    self.edits.replace(range, list.join(", "));
                }
                SelectItem::QualifiedWildcard(
                    SelectItemQualifiedWildcardKind::ObjectName(name),
                    opts,
                ) => {
                    let parts = idents(name).unwrap_or_default();
                    let [q] = parts.as_slice() else {
                        continue;
                    };
                    let wanted = normalize_ident(q);
                    let Some(from) = items
                        .iter()
                        .find(|i| i.qualifier.as_ref().is_some_and(|(n, _)| *n == wanted))
                    else {
                        continue;
                    };
                    if let Some(p) = &from.opaque {
                        let p = p.clone();
                        return self.refuse(
                            &p,
                            format!(
                                "{wanted}.* over an aliased join or a column alias list naming                                  {}, whose old columns were dropped (complete), is not                                  supported; name the columns",
                                p.name()
                            ),
                        );
                    }
                    let Some(p) = from.dropped.clone() else {
                        continue;
                    };
                    let range = match (
                        self.index.range(name.span()),
                        self.index.range(opts.wildcard_token.0.span),
                    ) {
                        (Some(start), Some(end)) if !has_wildcard_options(opts) => {
                            start.start..end.end
                        }
                        _ => return self.refuse(&p, format!("cannot expand {wanted}.*")),
                    };
                    let Some(written) = self.source(q).map(str::to_owned) else {
                        return self.refuse(&p, format!("cannot expand {wanted}.*"));
                    };
                    self.edits.replace(range, physical(&p, &written));
                }
                _ => {}
            }
        }
        ControlFlow::Continue(())
    }

    /// The FROM items of `from` in the order `*` lists them; `merges` is set when a join
    /// merges columns.
    fn collect_from(&self, from: &TableWithJoins, items: &mut Vec<FromItem>, merges: &mut bool) {
        self.collect_factor(&from.relation, items, merges);
        for join in &from.joins {
            *merges |= merges_columns(&join.join_operator);
            self.collect_factor(&join.relation, items, merges);
        }
    }

    fn collect_factor(&self, factor: &TableFactor, items: &mut Vec<FromItem>, merges: &mut bool) {
        let aliased = |alias: &Option<TableAlias>| {
            alias.as_ref().map(|a| {
                let written = self
                    .source(&a.name)
                    .map_or_else(|| quote_ident(&a.name.value), str::to_owned);
                (normalize_ident(&a.name), written)
            })
        };
        let item = match factor {
            TableFactor::Table {
                name, alias, args, ..
            } => {
                let parts = idents(name).unwrap_or_default();
                let qualifier = aliased(alias).or_else(|| {
                    let last = parts.last()?;
                    let written = self
                        .source(last)
                        .map_or_else(|| quote_ident(&last.value), str::to_owned);
                    Some((normalize_ident(last), written))
                });
                let at = self.index.offset(name.span().start).unwrap_or(0);
                let plan = match (args, self.rw) {
                    (None, Some(rw)) if !parts.is_empty() && !self.is_cte(&parts, at) => rw
                        .resolve(&parts)
                        .filter(|p| !p.dropped.is_empty())
                        .cloned(),
                    _ => None,
                };
                let column_aliases = alias.as_ref().is_some_and(|a| !a.columns.is_empty());
                match plan {
                    Some(p) if column_aliases => FromItem {
                        qualifier,
                        dropped: None,
                        opaque: Some(p),
                    },
                    plan => FromItem {
                        qualifier,
                        dropped: plan,
                        opaque: None,
                    },
                }
            }
            TableFactor::NestedJoin {
                table_with_joins,
                alias: None,
            } => return self.collect_from(table_with_joins, items, merges),
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                let mut inner = Vec::new();
                let mut inner_merges = false;
                self.collect_from(table_with_joins, &mut inner, &mut inner_merges);
                FromItem {
                    qualifier: aliased(alias),
                    dropped: None,
                    opaque: inner.into_iter().find_map(|i| i.dropped.or(i.opaque)),
                }
            }
            TableFactor::Derived { alias, .. }
            | TableFactor::TableFunction { alias, .. }
            | TableFactor::Function { alias, .. }
            | TableFactor::UNNEST { alias, .. }
            | TableFactor::JsonTable { alias, .. } => FromItem {
                qualifier: aliased(alias),
                dropped: None,
                opaque: None,
            },
            _ => FromItem {
                qualifier: None,
                dropped: None,
                opaque: None,
            },
        };
        items.push(item);
    }

    fn replace_column(
        &mut self,
        target: &Target,
        span_expr: &Expr,
        column: &str,
    ) -> ControlFlow<()> {
        let Some(text) = target.computed(column) else {
            return ControlFlow::Continue(());
        };
        match self.index.range(span_expr.span()) {
            Some(range) => {
                let text = if target.outputs.contains(&range) {
                    let name = match span_expr {
                        Expr::CompoundIdentifier(parts) => parts.last(),
                        Expr::Identifier(ident) => Some(ident),
                        _ => None,
                    };
                    match name.and_then(|i| self.source(i)) {
                        Some(name) => format!("{text} AS {name}"),
                        None => text,
                    }
                } else {
                    text
                };
                self.edits.replace(range, text);
                ControlFlow::Continue(())
            }
            None => self.refuse(&target.plan, format!("cannot locate column {column}")),
        }
    }
}

/// Rewrites only `target`'s column references in `node` (no table resolution).
pub fn target_refs<V: Visit>(
    item: &V,
    target: &Target,
    index: &LineIndex<'_>,
    edits: &mut Edits,
) -> Result<(), Refusal> {
    // No table resolution: only the target's column references are touched.
    walk(None, item, Some(target), index, edits, &[])
}
