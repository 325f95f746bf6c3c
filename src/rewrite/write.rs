//! Writes to a migrated table. In expand and switch a write naming one side also sets the
//! other (`new = up(…)`, `old = down(…)`); in contract only the new side is written, old names
//! translated. Values feeding `up`/`down` are substituted into the template; a value is copied
//! only when evaluating it twice cannot differ (literals, parameters, column references and
//! operators over them), and parameters are pinned with a cast to the column they were written
//! to, so Postgres deduces the same parameter types as for the client's statement.

use std::collections::HashMap;
use std::sync::Arc;

use sqlparser::ast::{
    AssignmentTarget, Delete, Expr, FromTable, Insert, OnInsert, Parens, SetExpr, Spanned,
    Statement, TableFactor, TableObject, Update,
};

use super::scope::{self, Target, idents};
use super::splice::{Edits, LineIndex};
use super::{PairPlan, Refusal, Rewriter, TablePlan, normalize_ident};
use crate::migration::quote_ident;

pub fn insert(
    rw: &Rewriter,
    statement: &Statement,
    insert: &Insert,
    index: &LineIndex<'_>,
    edits: &mut Edits,
) -> Result<(), Refusal> {
    let TableObject::TableName(name) = &insert.table else {
        return scope::rewrite_reads(rw, statement, None, index, edits);
    };
    let Some(plan) = idents(name).and_then(|i| rw.resolve(&i).cloned()) else {
        return scope::rewrite_reads(rw, statement, None, index, edits);
    };
    let refuse = |reason: &str| Err(plan.refuse(reason.to_owned()));
    if let Some(OnInsert::OnConflict(c)) = &insert.on
        && !matches!(c.action, sqlparser::ast::OnConflictAction::DoNothing)
    {
        return refuse("INSERT … ON CONFLICT DO UPDATE is not supported yet");
    }
    let Some(source) = &insert.source else {
        return refuse("INSERT without VALUES or SELECT is not supported");
    };
    let SetExpr::Values(values) = source.body.as_ref() else {
        return refuse("INSERT … SELECT into a table under migration is not supported yet");
    };
    if source.with.is_some() || source.order_by.is_some() || source.limit_clause.is_some() {
        return refuse("this INSERT form is not supported yet");
    }
    let width = values.rows.first().map_or(0, |r| r.content.len());
    // The columns written, as the client named them or in physical order.
    let columns: Vec<String> = if insert.columns.is_empty() {
        if width > plan.shape.columns.len() {
            return refuse("INSERT has more values than the table has columns");
        }
        plan.shape.columns[..width]
            .iter()
            .map(|c| c.name.clone())
            .collect()
    } else {
        let mut cols = Vec::new();
        for c in &insert.columns {
            match idents(c).as_deref() {
                Some([one]) => cols.push(normalize_ident(one)),
                _ => return refuse("INSERT column names must be plain identifiers"),
            }
        }
        cols
    };
    let changes = plan_changes(&plan, &columns, |_| false)?;
    if !changes.is_empty() {
        let Some(rows_ok) = values
            .rows
            .iter()
            .map(|r| r.content.len() == columns.len())
            .reduce(|a, b| a && b)
        else {
            return refuse("INSERT without rows");
        };
        if !rows_ok {
            return refuse("VALUES rows differ in length from the column list");
        }
        let evaluate_once = values.rows.iter().any(|row| {
            changes.iter().any(|ch| {
                feeds(ch).any(|c| {
                    columns.iter().position(|w| w == c).is_some_and(|i| {
                        !duplicable(&row.content[i]) && !is_default(&row.content[i])
                    })
                })
            })
        });
        let apply = if evaluate_once {
            apply_insert_derived
        } else {
            apply_insert_changes
        };
        apply(
            &plan,
            insert,
            name,
            &columns,
            &values.rows,
            &changes,
            index,
            edits,
        )?;
    }
    // RETURNING and the VALUES' own subqueries see the table through the usual read rules.
    scope::rewrite_reads(rw, statement, None, index, edits)?;
    if let Some(returning) = &insert.returning {
        returning_refs(&plan, returning, name, index, edits)?;
    }
    Ok(())
}

/// A column added to (or renamed in) a write: `column = template(values)`.
struct Change<'p> {
    pair: &'p PairPlan,
    /// The column written by pgshift.
    column: String,
    /// Whether it is added (`true`) or replaces the written old column (contract).
    added: bool,
    /// Its type, for pinning parameters copied into the template.
    writes_new: bool,
}

/// Decides what a write naming `written` columns must also (or instead) write.
fn plan_changes<'p>(
    plan: &'p TablePlan,
    written: &[String],
    _reserved: impl Fn(&str) -> bool,
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
            }
        } else if has_old {
            if has_new {
                return Err(plan.refuse(format!(
                    "both {} and {} are written; in phase {:?} only {} may be",
                    pair.old, pair.new, pair.phase, pair.new
                )));
            }
            changes.push(Change {
                pair,
                column: pair.new.clone(),
                added: false,
                writes_new: true,
            });
        }
    }
    Ok(changes)
}

/// Text of a value that may be copied into a template, or why not. The copy is cast to the
/// type of the column it was written to, as the statement's own assignment coerces it: an
/// integer literal written to a numeric column must divide like a numeric in `up`, and a
/// parameter must be deduced with the column's type. `text` is the value's exact source text
/// (never an expression span, which may leave out a cast or a minus sign).
fn copyable(value: &Expr, text: &str, column_type: &str) -> Result<String, String> {
    if !duplicable(value) {
        return Err(
            "a value feeding a migrated column is computed (e.g. a function call); pgshift cannot \
             evaluate it once on both sides yet"
                .into(),
        );
    }
    Ok(format!("({text})::{column_type}"))
}

/// True for expressions that give the same value however often they are evaluated.
fn duplicable(e: &Expr) -> bool {
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

fn is_default(e: &Expr) -> bool {
    matches!(e, Expr::Identifier(i) if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default"))
}

/// The column list of a rewritten INSERT: added names go after the last column (or a whole
/// list is inserted after the table name); in contract the old name is replaced.
fn column_list_edits(
    plan: &TablePlan,
    insert: &Insert,
    name: &sqlparser::ast::ObjectName,
    columns: &[String],
    changes: &[Change<'_>],
    index: &LineIndex<'_>,
    edits: &mut Edits,
) -> Result<(), Refusal> {
    let refuse = |reason: String| plan.refuse(reason);
    let added: Vec<&Change<'_>> = changes.iter().filter(|c| c.added).collect();
    if insert.columns.is_empty() {
        let mut list: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
        for c in changes {
            if c.added {
                list.push(quote_ident(&c.column));
            } else if let Some(pos) = columns.iter().position(|w| *w == c.pair.old) {
                list[pos] = quote_ident(&c.column);
            }
        }
        let end = index
            .range(name.span())
            .ok_or_else(|| refuse("cannot locate the table name".into()))?
            .end;
        edits.insert(end, format!(" ({})", list.join(", ")));
    } else {
        for c in changes.iter().filter(|c| !c.added) {
            let pos = columns
                .iter()
                .position(|w| *w == c.pair.old)
                .expect("old is written");
            let range = index
                .range(insert.columns[pos].span())
                .ok_or_else(|| refuse("cannot locate a column name".into()))?;
            edits.replace(range, quote_ident(&c.column));
        }
        if !added.is_empty() {
            let last = insert.columns.last().expect("non-empty list");
            let end = closing_point(index, last.span())
                .ok_or_else(|| refuse("cannot locate the end of the column list".into()))?;
            let names: Vec<String> = added.iter().map(|c| quote_ident(&c.column)).collect();
            edits.insert(end, format!(", {}", names.join(", ")));
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn apply_insert_changes(
    plan: &TablePlan,
    insert: &Insert,
    name: &sqlparser::ast::ObjectName,
    columns: &[String],
    rows: &[Parens<Vec<Expr>>],
    changes: &[Change<'_>],
    index: &LineIndex<'_>,
    edits: &mut Edits,
) -> Result<(), Refusal> {
    let refuse = |reason: String| plan.refuse(reason);
    column_list_edits(plan, insert, name, columns, changes, index, edits)?;
    for parens in rows {
        let row = &parens.content;
        let items = row_items(index, parens, columns.len())
            .ok_or_else(|| refuse("cannot split a VALUES row".into()))?;
        let mut by_column: HashMap<&str, (&Expr, &str)> = HashMap::new();
        for ((col, value), item) in columns.iter().zip(row).zip(&items) {
            by_column.insert(col.as_str(), (value, &index.text()[item.clone()]));
        }
        let render = |change: &Change<'_>| -> Result<String, Refusal> {
            let template = if change.writes_new {
                &change.pair.up
            } else {
                &change.pair.down
            };
            let mut failure = None;
            let text = template.render(|col| match by_column.get(col) {
                Some((v, _)) if is_default(v) => {
                    failure = Some(format!("DEFAULT given for column {col}, which feeds {}", change.column));
                    String::new()
                }
                Some((v, source)) => copyable(v, source, &plan.type_of(col)).unwrap_or_else(|e| {
                    failure = Some(e);
                    String::new()
                }),
                None => match plan.shape.column(col).and_then(|c| c.default.as_ref()) {
                    None => "NULL".into(),
                    Some(_) => {
                        failure = Some(format!(
                            "column {col} feeds {} but is not written and has a default; list it explicitly",
                            change.column
                        ));
                        String::new()
                    }
                },
            });
            match failure {
                Some(reason) => Err(plan.refuse(reason)),
                None => Ok(text),
            }
        };
        let mut appended = Vec::new();
        for change in changes {
            let text = render(change)?;
            if change.added {
                appended.push(text);
            } else {
                let pos = columns
                    .iter()
                    .position(|w| *w == change.pair.old)
                    .expect("old is written");
                if is_default(&row[pos]) {
                    continue; // DEFAULT for the renamed column: the new column's default applies
                }
                edits.replace(items[pos].clone(), text);
            }
        }
        if !appended.is_empty() {
            // The row's closing parenthesis is a token with an exact position.
            let end = index
                .offset(parens.closing_token.0.span.start)
                .ok_or_else(|| refuse("cannot locate the end of a VALUES row".into()))?;
            edits.insert(end, format!(", {}", appended.join(", ")));
        }
    }
    Ok(())
}

/// The columns whose written values a change reads.
fn feeds<'c>(change: &'c Change<'_>) -> Box<dyn Iterator<Item = &'c str> + 'c> {
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

/// INSERT … VALUES whose values must be evaluated once (volatile functions and the like):
/// the rows become a derived row set, `INSERT INTO t (a, b, new) SELECT pgshift_v.c1,
/// pgshift_v.c2, up(pgshift_v.…) FROM (VALUES (CAST(… AS type_a), …)) AS pgshift_v(c1, c2)`.
/// Each value is cast to the type of the column it was written to, so literals and
/// parameters keep the types Postgres would have given them.
#[allow(clippy::too_many_arguments)]
fn apply_insert_derived(
    plan: &TablePlan,
    insert: &Insert,
    name: &sqlparser::ast::ObjectName,
    columns: &[String],
    rows: &[Parens<Vec<Expr>>],
    changes: &[Change<'_>],
    index: &LineIndex<'_>,
    edits: &mut Edits,
) -> Result<(), Refusal> {
    let refuse = |reason: &str| plan.refuse(reason.to_owned());
    if rows.iter().any(|r| r.content.iter().any(is_default)) {
        return Err(refuse(
            "DEFAULT in a row whose values pgshift must evaluate once is not supported yet",
        ));
    }
    column_list_edits(plan, insert, name, columns, changes, index, edits)?;
    let text = index.text();
    let first_open = index
        .offset(rows[0].opening_token.0.span.start)
        .ok_or_else(|| refuse("cannot locate VALUES"))?;
    let before = text[..first_open].trim_end();
    if !before.to_ascii_lowercase().ends_with("values") {
        return Err(refuse("cannot locate the VALUES keyword"));
    }
    let values_start = before.len() - "values".len();
    let v = |col: &str| -> Result<String, Refusal> {
        match columns.iter().position(|w| w == col) {
            Some(i) => Ok(format!("pgshift_v.c{}", i + 1)),
            None => match plan.shape.column(col).and_then(|c| c.default.as_ref()) {
                None => Ok("NULL".into()),
                Some(_) => Err(refuse(&format!(
                    "column {col} is read by a migration but not written and has a default; list it explicitly"
                ))),
            },
        }
    };
    let render = |template: &super::expr::ColumnExpr| -> Result<String, Refusal> {
        let mut failure = None;
        let out = template.render(|col| {
            v(col).unwrap_or_else(|e| {
                failure = Some(e);
                String::new()
            })
        });
        failure.map_or(Ok(out), Err)
    };
    let mut select = Vec::new();
    for (i, col) in columns.iter().enumerate() {
        match changes.iter().find(|c| !c.added && c.pair.old == *col) {
            Some(renamed) => select.push(render(&renamed.pair.up)?),
            None => select.push(format!("pgshift_v.c{}", i + 1)),
        }
    }
    for change in changes.iter().filter(|c| c.added) {
        let template = if change.writes_new {
            &change.pair.up
        } else {
            &change.pair.down
        };
        select.push(render(template)?);
    }
    edits.insert(values_start, format!("SELECT {} FROM (", select.join(", ")));
    for row in rows {
        let items = row_items(index, row, columns.len())
            .ok_or_else(|| refuse("cannot split a VALUES row"))?;
        for (item, col) in items.iter().zip(columns) {
            edits.insert(item.start, "CAST(");
            edits.insert(item.end, format!(" AS {})", plan.type_of(col)));
        }
    }
    let last_close = index
        .offset(rows[rows.len() - 1].closing_token.0.span.end)
        .ok_or_else(|| refuse("cannot locate the end of VALUES"))?;
    let names: Vec<String> = (1..=columns.len()).map(|i| format!("c{i}")).collect();
    edits.insert(last_close, format!(") AS pgshift_v({})", names.join(", ")));
    Ok(())
}

/// The exact ranges of a VALUES row's items, found from its parenthesis tokens.
fn row_items(
    index: &LineIndex<'_>,
    row: &Parens<Vec<Expr>>,
    expected: usize,
) -> Option<Vec<std::ops::Range<usize>>> {
    let open = index.offset(row.opening_token.0.span.end)?;
    let close = index.offset(row.closing_token.0.span.start)?;
    super::splice::list_items(index.text(), open..close).filter(|items| items.len() == expected)
}

/// The offset right after a list's last element, provided the next token is its closing
/// parenthesis (guards against spans that stop short of a nested expression's end).
fn closing_point(index: &LineIndex<'_>, span: sqlparser::tokenizer::Span) -> Option<usize> {
    let end = index.range(span)?.end;
    let rest = &index.text()[end..];
    rest.trim_start().starts_with(')').then_some(end)
}

/// RETURNING of INSERT in contract: old names are not written any more, so they answer with
/// `down(new)` computed from the row.
fn returning_refs(
    plan: &Arc<TablePlan>,
    returning: &[sqlparser::ast::SelectItem],
    name: &sqlparser::ast::ObjectName,
    index: &LineIndex<'_>,
    edits: &mut Edits,
) -> Result<(), Refusal> {
    if plan.pairs.iter().all(|p| p.dual_writes()) {
        return Ok(()); // both sides were written by this very statement
    }
    let parts = idents(name).unwrap_or_default();
    let qualifier = parts.last().map(normalize_ident).unwrap_or_default();
    let target = Target {
        plan: plan.clone(),
        qualifier_text: quote_ident(&qualifier),
        qualifier,
        name_start: usize::MAX,
        has_other_tables: false,
    };
    for item in returning {
        scope::rewrite_reads_expr_items(item, &target, index, edits)?;
    }
    Ok(())
}

/// One `SET column = value` of an UPDATE, with exact source ranges.
struct Assignment<'a> {
    column: String,
    value: &'a Expr,
    target: std::ops::Range<usize>,
    value_range: std::ops::Range<usize>,
}

impl Assignment<'_> {
    fn computed(&self) -> bool {
        !duplicable(self.value) && !is_default(self.value)
    }
}

pub fn update(
    rw: &Rewriter,
    statement: &Statement,
    update: &Update,
    index: &LineIndex<'_>,
    edits: &mut Edits,
) -> Result<(), Refusal> {
    let Some((plan, target)) = dml_target(
        rw,
        &update.table.relation,
        index,
        update.from.is_some() || !update.table.joins.is_empty(),
    )?
    else {
        return scope::rewrite_reads(rw, statement, None, index, edits);
    };
    let refuse = |reason: &str| plan.refuse(reason.to_owned());
    let mut assignments = Vec::new();
    for a in &update.assignments {
        let AssignmentTarget::ColumnName(col) = &a.target else {
            return Err(refuse("UPDATE … SET (a, b) = (…) is not supported yet"));
        };
        let Some(column) = idents(col).and_then(|i| i.last().map(normalize_ident)) else {
            return Err(refuse("UPDATE SET target must be a column name"));
        };
        let target = index
            .range(col.span())
            .ok_or_else(|| refuse("cannot locate an assignment"))?;
        let value_range = super::splice::assignment_value(index.text(), target.end)
            .ok_or_else(|| refuse("cannot locate an assignment's value"))?;
        assignments.push(Assignment {
            column,
            value: &a.value,
            target,
            value_range,
        });
    }
    let written: Vec<String> = assignments.iter().map(|a| a.column.clone()).collect();
    let changes = plan_changes(&plan, &written, |_| false)?;
    let by_column = |col: &str| assignments.iter().find(|a| a.column == col);
    // Changes fed by a computed value are evaluated together with it, once per row.
    let mut once: Vec<(&Assignment<'_>, Vec<&Change<'_>>)> = Vec::new();
    let mut added = Vec::new();
    for change in &changes {
        let computed: Vec<&Assignment<'_>> = feeds(change)
            .filter_map(by_column)
            .filter(|a| a.computed())
            .collect();
        match computed.as_slice() {
            [] => {
                let text = render_update(&plan, &target, change, &by_column, None, index)?;
                if change.added {
                    added.push(format!("{} = {text}", quote_ident(&change.column)));
                } else {
                    let a = by_column(&change.pair.old).expect("old is written");
                    edits.replace(a.target.clone(), quote_ident(&change.column));
                    edits.replace(a.value_range.clone(), text);
                }
            }
            [first, rest @ ..] if rest.iter().all(|a| a.column == first.column) => {
                match once.iter_mut().find(|(a, _)| a.column == first.column) {
                    Some((_, group)) => group.push(change),
                    None => once.push((first, vec![change])),
                }
            }
            _ => {
                return Err(refuse(&format!(
                    "{} is fed by several computed values; pgshift cannot evaluate them once yet",
                    change.column
                )));
            }
        }
    }
    for (assignment, group) in &once {
        evaluate_once(&plan, &target, assignment, group, &by_column, index, edits)?;
    }
    if !added.is_empty() {
        // New assignments go first: a SET target's position is exact.
        let first = assignments.first().expect("UPDATE has assignments");
        edits.insert(first.target.start, format!("{}, ", added.join(", ")));
    }
    scope::rewrite_reads(rw, statement, Some(&target), index, edits)
}

/// The template of `change` rendered for an UPDATE: columns set by the statement take their
/// value (`computed` is the placeholder for the one evaluated once), others the target row's.
fn render_update<'a>(
    plan: &TablePlan,
    target: &Target,
    change: &Change<'_>,
    by_column: &dyn Fn(&str) -> Option<&'a Assignment<'a>>,
    computed: Option<(&str, &str)>,
    index: &LineIndex<'_>,
) -> Result<String, Refusal> {
    let template = if !change.added || change.writes_new {
        &change.pair.up
    } else {
        &change.pair.down
    };
    let mut failure = None;
    let text = template.render(|col| {
        if let Some((name, placeholder)) = computed
            && name == col
        {
            return placeholder.to_owned();
        }
        match by_column(col) {
            Some(a) if is_default(a.value) => {
                failure = Some(format!("SET {col} = DEFAULT feeds {}", change.column));
                String::new()
            }
            Some(a) => copyable(
                a.value,
                &index.text()[a.value_range.clone()],
                &plan.type_of(col),
            )
            .unwrap_or_else(|e| {
                failure = Some(e);
                String::new()
            }),
            None => format!("{}.{}", target.qualifier_text, quote_ident(col)),
        }
    });
    failure.map_or(Ok(text), |reason| Err(plan.refuse(reason)))
}

/// `SET k = f()` whose value feeds other columns becomes
/// `SET (k, new) = (SELECT pgshift_v.c1, up(pgshift_v.c1) FROM (SELECT f() AS c1) AS pgshift_v
/// WHERE t.ctid IS NOT NULL)`: one evaluation per row (the reference to the target row keeps
/// the subquery correlated, so it is not computed once for the whole statement).
fn evaluate_once<'a>(
    plan: &TablePlan,
    target: &Target,
    assignment: &Assignment<'_>,
    group: &[&Change<'_>],
    by_column: &dyn Fn(&str) -> Option<&'a Assignment<'a>>,
    index: &LineIndex<'_>,
    edits: &mut Edits,
) -> Result<(), Refusal> {
    let placeholder = "pgshift_v.c1";
    let computed = Some((assignment.column.as_str(), placeholder));
    // In contract the written old column itself becomes the new one, with `up` applied.
    let renamed = group.iter().find(|c| !c.added);
    let mut columns = vec![match renamed {
        Some(c) => quote_ident(&c.column),
        None => quote_ident(&assignment.column),
    }];
    let mut values = vec![match renamed {
        Some(c) => render_update(plan, target, c, by_column, computed, index)?,
        None => placeholder.to_owned(),
    }];
    for change in group.iter().filter(|c| c.added) {
        columns.push(quote_ident(&change.column));
        values.push(render_update(
            plan, target, change, by_column, computed, index,
        )?);
    }
    let targets = if columns.len() == 1 {
        columns.remove(0)
    } else {
        format!("({})", columns.join(", "))
    };
    edits.replace(assignment.target.clone(), targets);
    edits.insert(
        assignment.value_range.start,
        format!("(SELECT {} FROM (SELECT ", values.join(", ")),
    );
    edits.insert(
        assignment.value_range.end,
        format!(
            " AS c1) AS pgshift_v WHERE {}.ctid IS NOT NULL)",
            target.qualifier_text
        ),
    );
    Ok(())
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
        Some((_, target)) => scope::rewrite_reads(rw, statement, Some(&target), index, edits),
        None => scope::rewrite_reads(rw, statement, None, index, edits),
    }
}

/// The migrated table an UPDATE/DELETE writes, if it is one.
fn dml_target(
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
    };
    Ok(Some((plan, target)))
}
