//! The rewrite engine: a pure function of (statement text, migrated tables) with no I/O.
//!
//! Flow: the [`Prefilter`] skips statements that name no migrated table → sqlparser parses the
//! text → per statement, [`scope`] walks every query to replace reads of migrated tables with
//! derived tables and to compute references to non-authoritative columns of a DML target, and
//! [`write`] adds the counterpart columns to INSERT and UPDATE → the edits are spliced into the
//! original text ([`splice`]) and the result is checked to parse into as many statements
//! (parsed again, except for edits shown parse-neutral or checked through a stand-in:
//! docs/rewrite.md, "Check"). Anything that cannot be rewritten safely is a [`Refusal`], never
//! a half-migrated statement.

mod cache;
mod expr;
#[doc(hidden)]
pub mod fixtures;
mod literals;
mod moves;
mod plan;
mod prefilter;
mod scope;
mod splice;
mod write;

use std::sync::Arc;

use sqlparser::ast::{CopySource, Ident, SetExpr, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::migration::{MigratedTable, QualifiedName, TableMove};

pub use cache::RewriteCache;
pub use plan::{PairPlan, TablePlan};
pub use prefilter::Prefilter;

/// What to do with a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Forward the original bytes.
    Unchanged,
    /// Forward this text instead.
    Rewritten(String),
    /// Answer with SQLSTATE 0A000 and forward nothing.
    Refused(Refusal),
}

/// A statement's outcome, and the migrations whose old column names it uses (for
/// `pgshift_old_name_statements_total`: old application versions still running).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    pub outcome: Outcome,
    pub old_name_migrations: Vec<Arc<str>>,
}

impl Rewrite {
    pub fn unchanged() -> Rewrite {
        Rewrite {
            outcome: Outcome::Unchanged,
            old_name_migrations: Vec::new(),
        }
    }

    /// One shared [`Rewrite::unchanged`], so a pass-through statement allocates nothing.
    pub fn unchanged_shared() -> Arc<Rewrite> {
        static UNCHANGED: std::sync::LazyLock<Arc<Rewrite>> =
            std::sync::LazyLock::new(|| Arc::new(Rewrite::unchanged()));
        UNCHANGED.clone()
    }
}

/// Why a statement touching a migrated table is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The migrations involved (comma-separated names).
    pub migration: String,
    pub reason: String,
    /// In a string of several statements, the (rewritten) statements before the refused one,
    /// which run as they would before any failing statement; empty otherwise.
    pub prefix: String,
}

impl Refusal {
    /// The client-facing message; always starts with `pgshift:`.
    pub fn message(&self) -> String {
        format!(
            "pgshift: statement refused (migration {}): {}",
            self.migration, self.reason
        )
    }
}

/// Everything needed to rewrite statements for one database under one snapshot, with the
/// cache of its outcomes (a new snapshot brings a new rewriter, so the epoch is implicit in
/// the cache key).
#[derive(Debug)]
pub struct Rewriter {
    tables: Vec<Arc<TablePlan>>,
    /// Active table moves (writes); their reads are ordinary entries of `tables`.
    moves: Vec<Arc<moves::MovePlan>>,
    prefilter: Prefilter,
    /// Outcomes by exact text.
    cache: RewriteCache<Rewrite>,
    /// Outcomes by literal-lifted text, for statements that inline their values.
    shapes: RewriteCache<Shape>,
    /// Some table's old columns were dropped (complete): only then may `*` need expanding.
    any_dropped: bool,
}

/// What statements of one literal-lifted shape become.
#[derive(Debug)]
enum Shape {
    /// The same for every one: unchanged (with the old names it uses).
    Same(Arc<Rewrite>),
    /// This template with each statement's constants in it.
    Template {
        template: literals::Template,
        old_name_migrations: Vec<Arc<str>>,
    },
    /// Rewritten from each statement's own text.
    Unusable,
}

/// Rewrites remembered per database and snapshot.
const CACHE_CAPACITY: usize = 10_000;

impl Rewriter {
    /// Compiles the plans of the migrated tables (phase `planned` migrations contribute
    /// nothing) and of the active table moves.
    pub fn new(tables: &[MigratedTable], moved: &[Arc<TableMove>]) -> Result<Rewriter, String> {
        let mut plans = Vec::new();
        for t in tables {
            let plan = TablePlan::new(t)?;
            if !plan.pairs.is_empty() {
                plans.push(Arc::new(plan));
            }
        }
        let mut moves = Vec::new();
        for m in moved {
            plans.push(Arc::new(TablePlan::for_move(m)?));
            moves.push(Arc::new(moves::MovePlan::new(m)?));
        }
        let names: Vec<&str> = plans
            .iter()
            .map(|p| p.name().name.as_str())
            .chain(moves.iter().flat_map(|m| {
                [
                    m.moved.old.name.name.as_str(),
                    m.moved.new.name.name.as_str(),
                ]
            }))
            .collect();
        let prefilter = Prefilter::new(names);
        let any_dropped = plans.iter().any(|p| !p.dropped.is_empty());
        Ok(Rewriter {
            tables: plans,
            moves,
            prefilter,
            cache: RewriteCache::new(CACHE_CAPACITY),
            shapes: RewriteCache::new(CACHE_CAPACITY),
            any_dropped,
        })
    }

    /// Whether some table's old columns were dropped, so `*` over it must be expanded.
    pub(crate) fn any_dropped(&self) -> bool {
        self.any_dropped
    }

    /// True when no migration is active: every statement passes untouched.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty() && self.moves.is_empty()
    }

    /// Cheap check: may this statement text touch a migrated table?
    #[inline]
    pub fn may_touch(&self, sql: &str) -> bool {
        self.prefilter.may_touch(sql.as_bytes())
    }

    /// [`Self::analyze`] through the caches, keyed by the text and the parameter types: the
    /// exact text first (parameterised statements), then the text with its constants lifted
    /// out (statements that inline their values share one rewrite; see [`literals`]).
    pub fn rewrite_cached(&self, sql: &str, param_types: &[u32]) -> Arc<Rewrite> {
        if let Some(hit) = self.cache.get(sql, param_types) {
            return hit;
        }
        if let Some(lifted) = literals::lift(sql, param_types.len()) {
            let shape = self
                .shapes
                .get_or_insert(&lifted.text, param_types, || self.shape(&lifted));
            match &*shape {
                Shape::Same(rewrite) => return rewrite.clone(),
                Shape::Template {
                    template,
                    old_name_migrations,
                } => {
                    return Arc::new(Rewrite {
                        outcome: Outcome::Rewritten(template.fill(&lifted.literals)),
                        old_name_migrations: old_name_migrations.clone(),
                    });
                }
                Shape::Unusable => {}
            }
        }
        self.cache
            .get_or_insert(sql, param_types, || self.analyze(sql))
    }

    /// The rewrite of a literal-lifted text, as a template for every statement of its shape.
    fn shape(&self, lifted: &literals::Lifted<'_>) -> Shape {
        let rewrite = self.analyze(&lifted.text);
        match rewrite.outcome {
            Outcome::Unchanged => Shape::Same(Arc::new(rewrite)),
            Outcome::Rewritten(text) => {
                match literals::Template::new(&text, lifted.base, lifted.literals.len()) {
                    Some(template) => Shape::Template {
                        template,
                        old_name_migrations: rewrite.old_name_migrations,
                    },
                    None => Shape::Unusable,
                }
            }
            // The lifted form may be refused where the statement is not (INSERT … SELECT with
            // parameters), and a refusal's message should quote the statement's own text.
            Outcome::Refused(_) => Shape::Unusable,
        }
    }

    /// Rewrites one Query or Parse text (which may hold several statements).
    pub fn rewrite(&self, sql: &str) -> Outcome {
        self.analyze(sql).outcome
    }

    /// The rewrite of `sql` and the migrations whose old names it uses.
    pub fn analyze(&self, sql: &str) -> Rewrite {
        if !self.may_touch(sql) {
            return Rewrite::unchanged();
        }
        let statements = match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
            Ok(s) => s,
            Err(e) => {
                return Rewrite {
                    outcome: Outcome::Refused(self.refusal_for_text(
                        sql,
                        format!(
                            "pgshift cannot parse this statement ({e}), so it cannot rewrite it"
                        ),
                    )),
                    old_name_migrations: Vec::new(),
                };
            }
        };
        Rewrite {
            outcome: self.rewrite_parsed(sql, &statements),
            old_name_migrations: self.old_name_migrations(&statements),
        }
    }

    fn rewrite_parsed(&self, sql: &str, statements: &[Statement]) -> Outcome {
        let index = splice::LineIndex::new(sql);
        let mut edits = splice::Edits::default();
        for (i, statement) in statements.iter().enumerate() {
            if let Err(mut refusal) = self.rewrite_statement(statement, &index, &mut edits) {
                refusal.prefix = Self::prefix_before(sql, statements, i, &edits);
                return Outcome::Refused(refusal);
            }
        }
        if edits.is_empty() {
            return Outcome::Unchanged;
        }
        let check = edits.check_text(sql);
        let Some(text) = edits.apply(sql) else {
            return Outcome::Refused(self.refusal_for_text(sql, "overlapping rewrites".into()));
        };
        // The splice must yield exactly as many statements that parse (docs/rewrite.md,
        // "Check"): parse-neutral edits need no second parse, stand-ins shorten it.
        let parses = |t: &str| {
            Parser::parse_sql(&PostgreSqlDialect {}, t).is_ok_and(|s| s.len() == statements.len())
        };
        let ok = match &check {
            Some(splice::CheckText::Neutral) => true,
            Some(splice::CheckText::StandIns(t)) => parses(t),
            Some(splice::CheckText::Output) | None => parses(&text),
        };
        // The shortcuts must agree with the full check they replace.
        debug_assert!(
            matches!(check, Some(splice::CheckText::Output) | None) || ok == parses(&text),
            "the check of {sql:?} → {text:?} ({check:?}) disagrees with parsing the output"
        );
        if ok {
            Outcome::Rewritten(text)
        } else {
            tracing::warn!(original = sql, rewritten = %text, "a rewrite does not parse");
            Outcome::Refused(self.refusal_for_text(
                sql,
                "the rewritten statement does not parse (a pgshift bug; please report it)".into(),
            ))
        }
    }

    /// The rewritten text of the statements before statement `i`, ending with the separator
    /// that precedes it; empty when there are none or they cannot be told apart exactly.
    fn prefix_before(
        sql: &str,
        statements: &[Statement],
        i: usize,
        edits: &splice::Edits,
    ) -> String {
        if i == 0 {
            return String::new();
        }
        let Some(starts) = splice::statement_starts(sql).filter(|s| s.len() == statements.len())
        else {
            return String::new();
        };
        let prefix = match edits.apply_within(sql, 0..starts[i]) {
            Some(p) => p,
            None => return String::new(),
        };
        match Parser::parse_sql(&PostgreSqlDialect {}, &prefix) {
            Ok(again) if again.len() == i => prefix,
            _ => String::new(),
        }
    }

    /// Migrations one of whose old column names appears as a column in `statements` (in an
    /// expression, an INSERT column list or a SET target) of a statement naming its table.
    fn old_name_migrations(&self, statements: &[Statement]) -> Vec<Arc<str>> {
        let mut found: Vec<Arc<str>> = Vec::new();
        for statement in statements {
            // The move tables and the migrated tables it names, in one walk.
            let mut moved: Vec<(Arc<moves::MovePlan>, moves::Side)> = Vec::new();
            let mut touched: Vec<&Arc<TablePlan>> = Vec::new();
            let _ = sqlparser::ast::visit_relations(statement, |name| {
                if let Some(parts) = scope::idents(name) {
                    if !self.moves.is_empty()
                        && let Some((plan, side)) = self.resolve_move(&parts)
                        && !moved
                            .iter()
                            .any(|(p, s)| Arc::ptr_eq(p, &plan) && *s == side)
                    {
                        moved.push((plan, side));
                    }
                    if let Some(plan) = self.resolve(&parts)
                        && !touched.iter().any(|f| Arc::ptr_eq(f, plan))
                    {
                        touched.push(plan);
                    }
                }
                std::ops::ControlFlow::<()>::Continue(())
            });
            for (plan, side) in moved {
                let name: Arc<str> = Arc::from(plan.moved.name.as_str());
                if side == moves::Side::Old && !found.contains(&name) {
                    found.push(name);
                }
            }
            // Only column migrations have old names (a move's read plan has no pairs).
            if touched.iter().all(|t| t.pairs.is_empty()) {
                continue;
            }
            let names = scope::column_names(statement);
            for pair in touched.iter().flat_map(|t| &t.pairs) {
                if names.contains(&pair.old) && !found.contains(&pair.migration) {
                    found.push(pair.migration.clone());
                }
            }
        }
        found
    }

    fn rewrite_statement(
        &self,
        statement: &Statement,
        index: &splice::LineIndex<'_>,
        edits: &mut splice::Edits,
    ) -> Result<(), Refusal> {
        if !self.moves.is_empty()
            && let Some(result) = moves::rewrite(self, statement, index, edits)
        {
            return result;
        }
        match statement {
            Statement::Query(query) => {
                // Data-modifying CTEs are writes of their own (`WITH w AS (UPDATE …) …`).
                let mut handled: Vec<*const Statement> = Vec::new();
                let ctes: Vec<&sqlparser::ast::Cte> =
                    query.with.iter().flat_map(|w| &w.cte_tables).collect();
                let writes = ctes.iter().any(|c| {
                    matches!(
                        c.query.body.as_ref(),
                        SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_)
                    )
                });
                if writes
                    && let Some(shadowed) = ctes
                        .iter()
                        .find_map(|c| self.resolve(std::slice::from_ref(&c.alias.name)))
                {
                    // The write would be rewritten without knowing that its sibling CTE hides
                    // the table of the same name.
                    return Err(shadowed.refuse(format!(
                        "a CTE named {} beside a data-modifying CTE; rename the CTE",
                        shadowed.name().name
                    )));
                }
                for cte in ctes {
                    if let SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) =
                        cte.query.body.as_ref()
                    {
                        edits.enter_nested();
                        let result = self.rewrite_statement(s, index, edits);
                        edits.leave_nested();
                        result?;
                        handled.push(s);
                    }
                }
                scope::rewrite_reads_except(self, statement, &handled, index, edits)
            }
            Statement::Insert(insert) => write::insert(self, statement, insert, index, edits),
            Statement::Update(update) => write::update(self, statement, update, index, edits),
            Statement::Delete(delete) => write::delete(self, statement, delete, index, edits),
            Statement::Copy {
                source: CopySource::Table { table_name, .. },
                to,
                ..
            } => match scope::idents(table_name).and_then(|i| self.resolve(&i).cloned()) {
                // COPY reads or writes the physical table, bypassing both read and write rules.
                Some(t) => Err(t.refuse(format!(
                    "COPY {} a table under migration is not supported yet; use SELECT/INSERT",
                    if *to { "from" } else { "into" }
                ))),
                None => Ok(()),
            },
            Statement::Copy { .. } => scope::rewrite_reads(self, statement, None, index, edits),
            other => {
                let touched = scope::touched_tables(self, other);
                match touched.first() {
                    None => Ok(()),
                    Some(t) => Err(t.refuse(format!(
                        "{} on a table under migration is not supported",
                        statement_kind(other)
                    ))),
                }
            }
        }
    }

    /// Resolves a table reference as written (1 or 2 parts) to a migrated table.
    fn resolve(&self, name: &[Ident]) -> Option<&Arc<TablePlan>> {
        // `database.schema.table`: PostgreSQL accepts only the current database there.
        let name = match name {
            [_, rest @ ..] if rest.len() == 2 => rest,
            other => other,
        };
        match name {
            [table] => {
                let table = normalize_ident(table);
                // Unqualified: resolved like the default search_path, `public` first.
                self.tables
                    .iter()
                    .filter(|t| t.name().name == table)
                    .min_by_key(|t| t.name().schema != "public")
            }
            [schema, table] => {
                let wanted = QualifiedName {
                    schema: normalize_ident(schema),
                    name: normalize_ident(table),
                };
                self.tables.iter().find(|t| *t.name() == wanted)
            }
            _ => None,
        }
    }

    /// Resolves a table reference (1 or 2 parts) to a table of an active move, and which of
    /// its two tables it names.
    fn resolve_move(&self, name: &[Ident]) -> Option<(Arc<moves::MovePlan>, moves::Side)> {
        fn sides(
            m: &Arc<moves::MovePlan>,
        ) -> [(&Arc<moves::MovePlan>, moves::Side, &QualifiedName); 2] {
            [
                (m, moves::Side::Old, &m.moved.old.name),
                (m, moves::Side::New, &m.moved.new.name),
            ]
        }
        let all = self.moves.iter().flat_map(sides);
        // `database.schema.table`: PostgreSQL accepts only the current database there.
        let name = match name {
            [_, rest @ ..] if rest.len() == 2 => rest,
            other => other,
        };
        match name {
            [table] => {
                let table = normalize_ident(table);
                all.filter(|(_, _, n)| n.name == table)
                    .min_by_key(|(_, _, n)| n.schema != "public")
                    .map(|(m, s, _)| (m.clone(), s))
            }
            [schema, table] => {
                let (schema, table) = (normalize_ident(schema), normalize_ident(table));
                all.filter(|(_, _, n)| n.schema == schema && n.name == table)
                    .map(|(m, s, _)| (m.clone(), s))
                    .next()
            }
            _ => None,
        }
    }

    /// A refusal naming the migrations of every table the text mentions.
    fn refusal_for_text(&self, sql: &str, reason: String) -> Refusal {
        let lower = sql.to_lowercase();
        let mut names: Vec<&str> = self
            .tables
            .iter()
            .filter(|t| lower.contains(&t.name().name.to_lowercase()))
            .flat_map(|t| t.migrations())
            .chain(
                self.moves
                    .iter()
                    .filter(|m| {
                        [&m.moved.old.name, &m.moved.new.name]
                            .iter()
                            .any(|n| lower.contains(&n.name.to_lowercase()))
                    })
                    .map(|m| m.moved.name.as_str()),
            )
            .collect();
        names.dedup();
        Refusal {
            migration: names.join(", "),
            reason,
            prefix: String::new(),
        }
    }
}

impl TablePlan {
    fn refuse(&self, reason: String) -> Refusal {
        let mut names: Vec<&str> = self.migrations().collect();
        names.dedup();
        Refusal {
            migration: names.join(", "),
            reason,
            prefix: String::new(),
        }
    }
}

/// An identifier as PostgreSQL resolves it: unquoted ones fold to lower case.
pub(crate) fn normalize_ident(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_lowercase(),
    }
}

pub(crate) fn statement_kind(statement: &Statement) -> String {
    let text = statement.to_string();
    let words: Vec<&str> = text.split_whitespace().take(2).collect();
    words.join(" ").to_uppercase()
}

#[cfg(test)]
mod tests;

/// `OVERRIDING SYSTEM VALUE ` when an INSERT into `shape` writing the (quoted) columns `names`
/// gives a value to a `GENERATED ALWAYS AS IDENTITY` column, else empty.
pub fn moves_overriding(shape: &crate::migration::TableShape, names: &[String]) -> &'static str {
    moves::overriding(shape, names)
}
