//! Writes to a migrated table. In expand and switch a write naming one side also sets the
//! other (`new = up(…)`, `old = down(…)`); in contract only the new side is written, old names
//! translated. Values feeding `up`/`down` are substituted into the template; a value is copied
//! only when evaluating it twice cannot differ (literals, parameters, column references and
//! operators over them), and parameters are pinned with a cast to the column they were written
//! to, so Postgres deduces the same parameter types as for the client's statement.
//!
//! [`insert`] handles INSERT (VALUES, rows evaluated once, ON CONFLICT), [`update`] the SET
//! lists of UPDATE and of ON CONFLICT DO UPDATE; DELETE only needs its target's reads.

mod insert;
mod update;

use std::sync::Arc;

use sqlparser::ast::{Delete, Expr, FromTable, Spanned, Statement, TableFactor};

use super::scope::{self, Target, idents};
use super::splice::{Edits, LineIndex};
use super::{PairPlan, Refusal, Rewriter, TablePlan, normalize_ident};
use crate::migration::quote_ident;

pub use insert::insert;
pub use update::update;

/// A column added to (or renamed in) a write: `column = template(values)`.
pub(super) struct Change<'p> {
    pub(super) pair: &'p PairPlan,
    /// The column written by pgshift.
    pub(super) column: String,
    /// Whether it is added (`true`) or replaces the written old column (contract; for a
    /// split, the first new column replaces it and the others are added).
    pub(super) added: bool,
    /// Its type, for pinning parameters copied into the template.
    pub(super) writes_new: bool,
}

/// Decides what a write naming `written` columns must also (or instead) write.
/// `insert`: columns not written take their defaults, so a pair neither side of which is
/// written still needs its non-authoritative side computed when either side has a default.
pub(super) fn plan_changes<'p>(
    plan: &'p TablePlan,
    written: &[String],
    insert: bool,
) -> Result<Vec<Change<'p>>, Refusal> {
    let mut changes = Vec::new();
    for pair in &plan.pairs {
        let has_old = written.contains(&pair.old);
        let has_new = written.contains(&pair.new);
        let feeds_up = pair.up.columns().any(|c| written.iter().any(|w| w == c));
        let feeds_down = pair.down.columns().any(|c| written.iter().any(|w| w == c));
        if pair.dual_writes() {
            if (has_old || feeds_up) && !has_new {
                changes.push(Change {
                    pair,
                    column: pair.new.clone(),
                    added: true,
                    writes_new: true,
                });
            } else if (has_new || feeds_down) && !has_old && pair.old_type.is_some() {
                changes.push(Change {
                    pair,
                    column: pair.old.clone(),
                    added: true,
                    writes_new: false,
                });
            } else if insert
                && !has_old
                && !has_new
                && pair.old_type.is_some()
                && [&pair.old, &pair.new]
                    .iter()
                    .any(|c| plan.shape.column(c).is_some_and(|c| c.default.is_some()))
            {
                // Both sides default: the non-authoritative one follows the authoritative one's.
                changes.push(Change {
                    pair,
                    column: pair.non_authoritative().to_owned(),
                    added: true,
                    writes_new: !pair.reads_new(),
                });
            }
        } else if has_old {
            if has_new {
                return Err(plan.refuse(format!(
                    "both {} and {} are written; in phase {:?} only {} may be",
                    pair.old, pair.new, pair.phase, pair.new
                )));
            }
            // A split: the first new column takes the old one's place, the others are added
            // beside it, each with its own `up` of the value written to the old column.
            let renamed = changes.iter().any(|c| !c.added && c.pair.old == pair.old);
            changes.push(Change {
                pair,
                column: pair.new.clone(),
                added: renamed,
                writes_new: true,
            });
        }
    }
    // A split (one old column, several new ones) maps back to the old column once.
    let mut seen = Vec::new();
    changes.retain(|c| {
        let first = !seen.contains(&c.column);
        seen.push(c.column.clone());
        first
    });
    Ok(changes)
}

/// Text of a value that may be copied into a template, or why not. The copy is cast to the
/// type of the column it was written to, as the statement's own assignment coerces it: an
/// integer literal written to a numeric column must divide like a numeric in `up`, and a
/// parameter must be deduced with the column's type. `text` is the value's exact source text
/// with the statement's other rewrites applied (never an expression span, which may leave out
/// a cast or a minus sign).
pub(super) fn copyable(value: &Expr, text: &str, column_type: &str) -> Result<String, String> {
    if !duplicable(value) {
        return Err(
            "a value feeding a migrated column is computed (e.g. a function call); pgshift cannot \
             evaluate it once on both sides yet"
                .into(),
        );
    }
    Ok(format!("({text})::{column_type}"))
}

/// The value a column not written by an INSERT takes, as text to substitute into a
/// template: its default when that is a constant, NULL without one.
pub(super) fn default_value(plan: &TablePlan, column: &str) -> Result<String, String> {
    let Some(default) = plan.shape.column(column).and_then(|c| c.default.as_deref()) else {
        return Ok("NULL".into());
    };
    let dialect = sqlparser::dialect::PostgreSqlDialect {};
    let constant = sqlparser::parser::Parser::new(&dialect)
        .try_with_sql(default)
        .and_then(|mut p| p.parse_expr())
        .is_ok_and(|e| {
            duplicable(&e) && !matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_))
        });
    if constant {
        Ok(format!("({default})"))
    } else {
        Err(format!(
            "column {column} is not written and its default ({default}) is computed; pgshift \
             cannot evaluate it once on both sides: list the column with its value"
        ))
    }
}

/// True for expressions that give the same value however often they are evaluated.
pub(super) fn duplicable(e: &Expr) -> bool {
    match e {
        Expr::Value(_) | Expr::Identifier(_) | Expr::CompoundIdentifier(_) => true,
        Expr::Cast { expr, .. } => duplicable(expr),
        Expr::UnaryOp { expr, .. } => duplicable(expr),
        Expr::BinaryOp { left, right, .. } => duplicable(left) && duplicable(right),
        Expr::Nested(inner) => duplicable(inner),
        Expr::TypedString { .. } => true,
        _ => false,
    }
}

pub(super) fn is_default(e: &Expr) -> bool {
    matches!(e, Expr::Identifier(i) if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default"))
}

/// The columns whose written values a change reads.
pub(super) fn feeds<'c>(change: &'c Change<'_>) -> Box<dyn Iterator<Item = &'c str> + 'c> {
    if change.added {
        let template = if change.writes_new {
            &change.pair.up
        } else {
            &change.pair.down
        };
        Box::new(template.columns())
    } else {
        Box::new(std::iter::once(change.pair.old.as_str()))
    }
}

pub fn delete(
    rw: &Rewriter,
    statement: &Statement,
    delete: &Delete,
    index: &LineIndex<'_>,
    edits: &mut Edits,
) -> Result<(), Refusal> {
    let tables = match &delete.from {
        FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
    };
    let [table] = tables.as_slice() else {
        return scope::rewrite_reads(rw, statement, None, index, edits);
    };
    let others = delete.using.is_some() || !table.joins.is_empty();
    match dml_target(rw, &table.relation, index, others)? {
        Some((_, target)) => {
            let target = target.with_outputs(delete.returning.as_deref(), index);
            returning_wildcards(&target, delete.returning.as_deref(), index, edits)?;
            scope::rewrite_reads(rw, statement, Some(&target), index, edits)
        }
        None => scope::rewrite_reads(rw, statement, None, index, edits),
    }
}

/// `RETURNING *` (or `t.*`) of a DML target returns physical columns, one of which is not
/// authoritative: it becomes the explicit column list with that one computed.
pub(super) fn returning_wildcards(
    target: &Target,
    returning: Option<&[sqlparser::ast::SelectItem]>,
    index: &LineIndex<'_>,
    edits: &mut Edits,
) -> Result<(), Refusal> {
    use sqlparser::ast::{SelectItem, SelectItemQualifiedWildcardKind};
    let plan = &target.plan;
    for item in returning.unwrap_or_default() {
        let range = match item {
            SelectItem::Wildcard(opts) => {
                if target.has_other_tables {
                    return Err(plan.refuse(
                        "RETURNING * with other tables in the statement; name the columns".into(),
                    ));
                }
                index.range(opts.wildcard_token.0.span)
            }
            SelectItem::QualifiedWildcard(
                SelectItemQualifiedWildcardKind::ObjectName(name),
                opts,
            ) => {
                let parts = idents(name).unwrap_or_default();
                let refers = match parts.as_slice() {
                    [q] => normalize_ident(q) == target.qualifier,
                    [schema, table] => {
                        normalize_ident(schema) == plan.name().schema
                            && normalize_ident(table) == plan.name().name
                            && target.qualifier == plan.name().name
                    }
                    _ => false,
                };
                if !refers {
                    continue;
                }
                match (
                    index.range(name.span()),
                    index.range(opts.wildcard_token.0.span),
                ) {
                    (Some(start), Some(end)) => Some(start.start..end.end),
                    _ => None,
                }
            }
            _ => continue,
        };
        let range = range.ok_or_else(|| plan.refuse("cannot locate RETURNING *".into()))?;
        let columns: Vec<String> = plan
            .shape
            .columns
            .iter()
            .map(|c| match plan.non_authoritative(&c.name) {
                Some(pair) => format!(
                    "{} AS {}",
                    pair.computed(|col| format!("{}.{}", target.qualifier_text, quote_ident(col))),
                    quote_ident(&c.name)
                ),
                None => format!("{}.{}", target.qualifier_text, quote_ident(&c.name)),
            })
            .collect();
        edits.replace(range, columns.join(", "));
    }
    Ok(())
}

/// The migrated table an UPDATE/DELETE writes, if it is one.
pub(super) fn dml_target(
    rw: &Rewriter,
    relation: &TableFactor,
    index: &LineIndex<'_>,
    has_other_tables: bool,
) -> Result<Option<(Arc<TablePlan>, Target)>, Refusal> {
    let TableFactor::Table { name, alias, .. } = relation else {
        return Ok(None);
    };
    let Some(parts) = idents(name) else {
        return Ok(None);
    };
    let Some(plan) = rw.resolve(&parts).cloned() else {
        return Ok(None);
    };
    let name_start = index
        .range(name.span())
        .ok_or_else(|| plan.refuse("cannot locate the table name".into()))?
        .start;
    let (qualifier, qualifier_text) = match alias {
        Some(a) => (
            normalize_ident(&a.name),
            index
                .range(a.name.span)
                .map(|r| index.text()[r].to_owned())
                .unwrap_or_else(|| quote_ident(&a.name.value)),
        ),
        None => {
            let last = parts.last().expect("resolved names have parts");
            (
                normalize_ident(last),
                index
                    .range(last.span)
                    .map(|r| index.text()[r].to_owned())
                    .unwrap_or_else(|| quote_ident(&last.value)),
            )
        }
    };
    let target = Target {
        plan: plan.clone(),
        qualifier,
        qualifier_text,
        name_start,
        has_other_tables,
        matches_unqualified: true,
        outputs: Vec::new(),
    };
    Ok(Some((plan, target)))
}
