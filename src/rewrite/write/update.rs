//! UPDATE of a migrated table (and the SET list of ON CONFLICT DO UPDATE): counterpart
//! assignments, contract renames, and values evaluated once per row.

use sqlparser::ast::{AssignmentTarget, Expr, Spanned, Statement, Update};

use super::{Change, copyable, dml_target, duplicable, feeds, is_default, plan_changes};
use crate::migration::quote_ident;
use crate::rewrite::scope::{self, Target, idents};
use crate::rewrite::splice::{self, Edits, LineIndex};
use crate::rewrite::{Refusal, Rewriter, TablePlan, normalize_ident};

/// One `SET column = value` of an UPDATE, with exact source ranges.
struct Assignment<'a> {
    column: String,
    value: &'a Expr,
    target: std::ops::Range<usize>,
    value_range: std::ops::Range<usize>,
    /// Part of `(a, b) = (x, y)`.
    in_tuple: bool,
    /// The value's text with the statement's other rewrites applied.
    source: String,
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
    let target = target.with_outputs(update.returning.as_deref(), index);
    super::returning_wildcards(&target, update.returning.as_deref(), index, edits)?;
    // Reads first: copies of SET values are taken from their rewritten text.
    scope::rewrite_reads(rw, statement, Some(&target), index, edits)?;
    assignment_edits(&plan, &target, &update.assignments, index, edits)
}

/// The single-column assignments of a SET list, with exact source ranges; `(a, b) = (x, y)`
/// counts as `a = x, b = y`.
fn assignments<'a>(
    plan: &TablePlan,
    list: &'a [sqlparser::ast::Assignment],
    index: &LineIndex<'_>,
) -> Result<Vec<Assignment<'a>>, Refusal> {
    let refuse = |reason: &str| plan.refuse(reason.to_owned());
    let column_of = |col: &sqlparser::ast::ObjectName| {
        let column = idents(col)
            .and_then(|i| i.last().map(normalize_ident))
            .ok_or_else(|| refuse("a SET target must be a column name"))?;
        let range = index
            .range(col.span())
            .ok_or_else(|| refuse("cannot locate an assignment"))?;
        Ok::<_, Refusal>((column, range))
    };
    let mut out = Vec::new();
    for a in list {
        match &a.target {
            AssignmentTarget::ColumnName(col) => {
                let (column, target) = column_of(col)?;
                let value_range = splice::assignment_value(index.text(), target.end)
                    .ok_or_else(|| refuse("cannot locate an assignment's value"))?;
                out.push(Assignment {
                    column,
                    value: &a.value,
                    target,
                    value_range,
                    in_tuple: false,
                    source: String::new(),
                });
            }
            AssignmentTarget::Tuple(cols) => {
                let Expr::Tuple(values) = &a.value else {
                    return Err(refuse(
                        "UPDATE … SET (a, b) = (SELECT …) on a table under migration is not supported yet",
                    ));
                };
                let last = cols.last().ok_or_else(|| refuse("empty SET tuple"))?;
                let (_, last_range) = column_of(last)?;
                // After the target list's `)` comes `= (…)`.
                let close = index.text()[last_range.end..]
                    .find(')')
                    .map(|i| last_range.end + i + 1)
                    .ok_or_else(|| refuse("cannot locate an assignment"))?;
                let row = splice::assignment_value(index.text(), close)
                    .filter(|r| {
                        index.text()[r.clone()].starts_with('(')
                            && index.text()[r.clone()].ends_with(')')
                    })
                    .ok_or_else(|| refuse("cannot locate an assignment's values"))?;
                let items = splice::list_items(index.text(), row.start + 1..row.end - 1)
                    .filter(|items| items.len() == cols.len() && values.len() == cols.len())
                    .ok_or_else(|| refuse("cannot split an assignment's values"))?;
                for ((col, value), value_range) in cols.iter().zip(values).zip(items) {
                    let (column, target) = column_of(col)?;
                    out.push(Assignment {
                        column,
                        value,
                        target,
                        value_range,
                        in_tuple: true,
                        source: String::new(),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Edits a SET list (of UPDATE or ON CONFLICT DO UPDATE) so the counterpart columns are
/// written too, or instead in contract.
pub(super) fn assignment_edits(
    plan: &TablePlan,
    target: &Target,
    list: &[sqlparser::ast::Assignment],
    index: &LineIndex<'_>,
    edits: &mut Edits,
) -> Result<(), Refusal> {
    let refuse = |reason: &str| plan.refuse(reason.to_owned());
    let mut assignments = assignments(plan, list, index)?;
    for a in &mut assignments {
        // The value as it will be sent: references to non-authoritative columns rewritten.
        a.source = edits
            .apply_within(index.text(), a.value_range.clone())
            .ok_or_else(|| refuse("overlapping rewrites in a SET value"))?;
    }
    let assignments = assignments;
    let written: Vec<String> = assignments.iter().map(|a| a.column.clone()).collect();
    let changes = plan_changes(plan, &written, false)?;
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
                let text = render_update(plan, target, change, &by_column, None)?;
                if change.added {
                    added.push(format!("{} = {text}", quote_ident(&change.column)));
                } else {
                    let a = by_column(&change.pair.old).expect("old is written");
                    edits.replace(a.target.clone(), quote_ident(&change.column));
                    edits.replace_covering(a.value_range.clone(), text);
                }
            }
            [first, rest @ ..]
                if !first.in_tuple && rest.iter().all(|a| a.column == first.column) =>
            {
                match once.iter_mut().find(|(a, _)| a.column == first.column) {
                    Some((_, group)) => group.push(change),
                    None => once.push((first, vec![change])),
                }
            }
            _ => {
                return Err(refuse(&format!(
                    "{} is fed by computed values pgshift cannot evaluate once here yet",
                    change.column
                )));
            }
        }
    }
    for (assignment, group) in &once {
        evaluate_once(plan, target, assignment, group, &by_column, edits)?;
    }
    if !added.is_empty() {
        // New assignments go first: a SET target's position is exact (for a tuple, the
        // assignment starts at its parenthesis, before the first name).
        let first = list.first().expect("SET lists are non-empty");
        let start = match &first.target {
            AssignmentTarget::ColumnName(_) => assignments[0].target.start,
            AssignmentTarget::Tuple(_) => index.text()[..assignments[0].target.start]
                .rfind('(')
                .ok_or_else(|| refuse("cannot locate the SET list"))?,
        };
        edits.insert(start, format!("{}, ", added.join(", ")));
    }
    Ok(())
}

/// The template of `change` rendered for an UPDATE: columns set by the statement take their
/// value (`computed` is the placeholder for the one evaluated once), others the target row's
/// value as the client reads it. A column the statement leaves alone keeps that value, so a
/// non-authoritative one is computed from the authoritative side, not read as stored: in
/// expand, `SET last_name = …` of a split rebuilds the old column from `up(old)` of the
/// other new columns (still NULL in rows the backfill has not copied); in switch the stored
/// new columns are the truth and are read as they are.
fn render_update<'a>(
    plan: &TablePlan,
    target: &Target,
    change: &Change<'_>,
    by_column: &dyn Fn(&str) -> Option<&'a Assignment<'a>>,
    computed: Option<(&str, &str)>,
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
            Some(a) => copyable(a.value, &a.source, &plan.type_of(col)).unwrap_or_else(|e| {
                failure = Some(e);
                String::new()
            }),
            None => target
                .computed(col)
                .unwrap_or_else(|| format!("{}.{}", target.qualifier_text, quote_ident(col))),
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
        Some(c) => render_update(plan, target, c, by_column, computed)?,
        None => placeholder.to_owned(),
    }];
    for change in group.iter().filter(|c| c.added) {
        columns.push(quote_ident(&change.column));
        values.push(render_update(plan, target, change, by_column, computed)?);
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
