//! What the engine precomputes per migrated table: each column pair with its phase, types and
//! parsed `up`/`down` templates, and the text of the derived table that serves reads.

use std::sync::Arc;

use crate::migration::{MigratedTable, Phase, QualifiedName, TableShape, quote_ident};

use super::expr::ColumnExpr;

/// One column pair under an active migration.
#[derive(Debug, Clone)]
pub struct PairPlan {
    pub migration: Arc<str>,
    pub phase: Phase,
    pub old: String,
    pub new: String,
    /// `None` once the old column has been dropped (contract/complete).
    pub old_type: Option<String>,
    pub new_type: String,
    pub up: ColumnExpr,
    pub down: ColumnExpr,
}

impl PairPlan {
    /// Reads are served from the new side from switch on.
    pub fn reads_new(&self) -> bool {
        self.phase >= Phase::Switch
    }
    /// Both sides are written in expand and switch.
    pub fn dual_writes(&self) -> bool {
        matches!(self.phase, Phase::Expand | Phase::Switch)
    }
    /// The column that does not hold the truth for reads in this phase.
    pub fn non_authoritative(&self) -> &str {
        if self.reads_new() {
            &self.old
        } else {
            &self.new
        }
    }
    /// The expression computing the non-authoritative column from the authoritative side, with
    /// column references rendered by `col`, cast to the non-authoritative column's type.
    pub fn computed(&self, col: impl FnMut(&str) -> String) -> String {
        if self.reads_new() {
            let e = self.down.render(col);
            match &self.old_type {
                Some(t) => format!("{e}::{t}"),
                None => e,
            }
        } else {
            format!("{}::{}", self.up.render(col), self.new_type)
        }
    }
}

/// A migrated table ready for rewriting.
#[derive(Debug, Clone)]
pub struct TablePlan {
    pub shape: TableShape,
    pub pairs: Vec<PairPlan>,
    /// `(SELECT … FROM schema.table)`: every column of the referenced shape, computed from
    /// the authoritative side.
    pub derived: String,
    /// `derived` may replace a table name without a second parse of the statement
    /// ([`super::splice::neutral_derived`]).
    pub derived_neutral: bool,
    /// For a table of a table move whose reads are served from the other table: the move.
    pub moved: Option<Arc<crate::migration::TableMove>>,
    /// Old names the table still answers to although their columns were dropped (complete,
    /// after `complete_sql`), each once: the derived table computes them after the physical
    /// columns, so `*` over it must be expanded to the physical columns only.
    pub dropped: Vec<String>,
}

impl TablePlan {
    pub fn new(table: &MigratedTable) -> Result<TablePlan, String> {
        let shape = table.shape.clone();
        let mut pairs = Vec::new();
        for m in &table.migrations {
            if m.phase == Phase::Planned {
                continue;
            }
            for p in &m.pairs {
                let new_type = shape
                    .column(&p.new)
                    .ok_or_else(|| {
                        format!(
                            "migration {}: column {} does not exist in {}",
                            m.name, p.new, shape.name
                        )
                    })?
                    .type_sql
                    .clone();
                let old_type = shape.column(&p.old).map(|c| c.type_sql.clone());
                let parse = |what: &str, text: &str| {
                    ColumnExpr::parse(text)
                        .map_err(|e| format!("migration {}: {what} of {}: {e}", m.name, p.new))
                };
                pairs.push(PairPlan {
                    migration: Arc::from(m.name.as_str()),
                    phase: m.phase,
                    old: p.old.clone(),
                    new: p.new.clone(),
                    old_type,
                    new_type,
                    up: parse("up", &p.up)?,
                    down: parse("down", &p.down)?,
                });
            }
        }
        let mut dropped: Vec<String> = Vec::new();
        for p in &pairs {
            // A split maps several pairs to one old column: it answers once.
            if p.reads_new() && p.old_type.is_none() && !dropped.contains(&p.old) {
                dropped.push(p.old.clone());
            }
        }
        let derived = derived_table(&shape, &pairs, &dropped);
        Ok(TablePlan {
            shape,
            pairs,
            derived_neutral: super::splice::neutral_derived(&derived),
            derived,
            moved: None,
            dropped,
        })
    }

    /// The read plan of the non-authoritative table of a move: its name answers with a derived
    /// table computing its columns (its own types) from the authoritative table.
    pub fn for_move(moved: &Arc<crate::migration::TableMove>) -> Result<TablePlan, String> {
        let (shape, source, exprs) = if moved.reads_new() {
            (&moved.old, &moved.new, &moved.old_from_new)
        } else {
            (&moved.new, &moved.old, &moved.new_from_old)
        };
        let mut cols = Vec::with_capacity(exprs.len());
        for (column, expr) in exprs {
            let ty = &shape
                .column(column)
                .expect("resolved from the shape")
                .type_sql;
            let value = match expr {
                Some(e) => ColumnExpr::parse(e)
                    .map_err(|err| format!("migration {}: {column}: {err}", moved.name))?
                    .render(quote_ident),
                None => "NULL".to_owned(),
            };
            cols.push(format!("({value})::{ty} AS {}", quote_ident(column)));
        }
        let derived = format!("(SELECT {} FROM {})", cols.join(", "), source.name.quoted());
        Ok(TablePlan {
            shape: shape.clone(),
            pairs: Vec::new(),
            derived_neutral: super::splice::neutral_derived(&derived),
            derived,
            moved: Some(moved.clone()),
            dropped: Vec::new(),
        })
    }

    pub fn name(&self) -> &QualifiedName {
        &self.shape.name
    }

    /// The pair whose non-authoritative column is `column`, if any.
    pub fn non_authoritative(&self, column: &str) -> Option<&PairPlan> {
        self.pairs.iter().find(|p| p.non_authoritative() == column)
    }

    /// True when `column` is a name the table answers to (physical, or an old name kept alive
    /// after its column was dropped).
    pub fn answers_to(&self, column: &str) -> bool {
        self.shape.column(column).is_some() || self.pairs.iter().any(|p| p.old == column)
    }

    /// The SQL type of a column, for casts; `text` for a name the table does not have (an old
    /// column already dropped), which is what Postgres gives an untyped literal.
    pub fn type_of(&self, column: &str) -> String {
        self.shape
            .column(column)
            .map_or_else(|| "text".to_owned(), |c| c.type_sql.clone())
    }

    pub fn migrations(&self) -> impl Iterator<Item = &str> {
        self.pairs
            .iter()
            .map(|p| &*p.migration)
            .chain(self.moved.as_deref().map(|m| m.name.as_str()))
    }
}

fn derived_table(shape: &TableShape, pairs: &[PairPlan], dropped: &[String]) -> String {
    let mut cols: Vec<String> = Vec::with_capacity(shape.columns.len() + 1);
    for c in &shape.columns {
        let name = quote_ident(&c.name);
        match pairs.iter().find(|p| p.non_authoritative() == c.name) {
            Some(p) => cols.push(format!("{} AS {name}", p.computed(quote_ident))),
            None => cols.push(name),
        }
    }
    for old in dropped {
        let p = pairs
            .iter()
            .find(|p| p.old == *old)
            .expect("dropped names come from the pairs");
        cols.push(format!(
            "{} AS {}",
            p.computed(quote_ident),
            quote_ident(old)
        ));
    }
    format!("(SELECT {} FROM {})", cols.join(", "), shape.name.quoted())
}
