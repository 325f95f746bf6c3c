//! The snapshot: an immutable, epoch-numbered picture of the active migrations and the shapes
//! of their tables, which the rewrite engine reads and sessions hold for a whole transaction
//! (DESIGN §3.4).
//!
//! [`build`] turns the config's `[[migration]]` entries into a [`Snapshot`]: it resolves each
//! active column migration ([`ColumnsMigration`], defaults filled in), refuses overlapping ones,
//! reads the tables' shapes over one control connection per database ([`crate::catalog`]),
//! runs `expand_sql` when a migration enters expand and its new columns are missing, and checks
//! that every `up`/`down` expression compiles against the real table. [`SnapshotStore`] holds
//! the current snapshot behind an `ArcSwap`, so readers never lock; [`SnapshotStore::publish`]
//! swaps in a newer one and updates the epoch and phase gauges.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

use crate::catalog::{self, CatalogError, ControlConnection};
use crate::config::{Config, MigrationConfig};
use crate::migration::{
    ColumnPair, ColumnsMigration, MigratedTable, MigrationKind, Phase, QualifiedName, TableMove,
    TableShape, quote_ident,
};
use crate::rewrite::{Prefilter, Rewriter};

/// Gauge: the epoch of the snapshot in force.
pub const EPOCH_METRIC: &str = "pgshift_epoch";
/// Gauge per `migration`: its phase as a number, see [`phase_metric_value`].
pub const PHASE_METRIC: &str = "pgshift_phase";

/// `lock_timeout` and attempts for `expand_sql` run by [`build`].
const EXPAND_LOCK_TIMEOUT: Duration = Duration::from_secs(2);
const EXPAND_ATTEMPTS: u32 = 5;

/// Why a snapshot could not be built. Every variant names the migration(s) or database at fault.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The migration's definition or the table it names does not fit.
    #[error("migration {migration:?}: {message}")]
    Invalid { migration: String, message: String },
    /// The rewrite engine could not be compiled for the migrations (its message names them).
    #[error("{0}")]
    Rewrite(String),
    /// Two active migrations on one table share a column.
    #[error(
        "migrations {first:?} and {second:?} both map column {column:?} of table {table}; \
         migrations on the same table must not share columns"
    )]
    Overlap {
        first: String,
        second: String,
        table: QualifiedName,
        column: String,
    },
    /// No control connection to a database with active migrations.
    #[error("database {database:?}: {error}")]
    Connect {
        database: String,
        error: CatalogError,
    },
    /// A catalog read, `expand_sql` or an expression check failed on the server.
    #[error("migration {migration:?}: {error}")]
    Catalog {
        migration: String,
        error: CatalogError,
    },
}

impl SnapshotError {
    /// The migration the error is about (the first one for an overlap).
    pub fn migration(&self) -> Option<&str> {
        match self {
            SnapshotError::Invalid { migration, .. } | SnapshotError::Catalog { migration, .. } => {
                Some(migration)
            }
            SnapshotError::Overlap { first, .. } => Some(first),
            SnapshotError::Connect { .. } | SnapshotError::Rewrite(_) => None,
        }
    }

    fn invalid(migration: &str, message: impl Into<String>) -> SnapshotError {
        SnapshotError::Invalid {
            migration: migration.to_owned(),
            message: message.into(),
        }
    }

    fn catalog(migration: &str) -> impl FnOnce(CatalogError) -> SnapshotError {
        let migration = migration.to_owned();
        move |error| SnapshotError::Catalog { migration, error }
    }
}

/// The migrated tables of one database, and the rewrite engine compiled for them.
#[derive(Debug)]
pub struct DatabaseView {
    /// Sorted by table name.
    pub tables: Vec<MigratedTable>,
    /// Active table moves (`kind = "table"`).
    pub moves: Vec<Arc<TableMove>>,
    /// The engine for this database under this snapshot (its pre-filter matches the
    /// unqualified names of `tables`).
    pub rewriter: Arc<Rewriter>,
}

impl DatabaseView {
    /// A view of these tables with their rewrite plans; fails when a migration's new column
    /// is missing from its table's shape or an expression does not parse.
    pub fn new(tables: Vec<MigratedTable>) -> Result<DatabaseView, String> {
        DatabaseView::with_moves(tables, Vec::new())
    }

    /// [`Self::new`] with table moves too.
    pub fn with_moves(
        mut tables: Vec<MigratedTable>,
        moves: Vec<Arc<TableMove>>,
    ) -> Result<DatabaseView, String> {
        tables.sort_by(|a, b| a.shape.name.cmp(&b.shape.name));
        let rewriter = Arc::new(Rewriter::new(&tables, &moves)?);
        Ok(DatabaseView {
            tables,
            moves,
            rewriter,
        })
    }

    /// The migrated table with exactly this schema-qualified name.
    pub fn table(&self, name: &QualifiedName) -> Option<&MigratedTable> {
        self.tables.iter().find(|t| &t.shape.name == name)
    }

    /// The migrated tables a schema-less reference `unqualified` (as PostgreSQL stores it:
    /// unquoted identifiers already folded to lower case) may mean: the one in `public` first,
    /// then those of other schemas by schema name.
    ///
    /// This simplifies `search_path` resolution: pgshift does not know the session's
    /// search_path, nor whether a non-migrated table of the same name shadows the migrated one.
    pub fn tables_named<'a>(
        &'a self,
        unqualified: &'a str,
    ) -> impl Iterator<Item = &'a MigratedTable> + 'a {
        let named = move |t: &&MigratedTable| t.shape.name.name == unqualified;
        let public = self
            .tables
            .iter()
            .filter(named)
            .filter(|t| t.shape.name.schema == "public");
        let others = self
            .tables
            .iter()
            .filter(named)
            .filter(|t| t.shape.name.schema != "public");
        public.chain(others)
    }
}

/// The active migrations at one epoch. Never changed once built: a newer state is a new
/// snapshot with a higher epoch.
#[derive(Debug)]
pub struct Snapshot {
    pub epoch: u64,
    databases: HashMap<String, Arc<DatabaseView>>,
    /// Every configured migration's phase, planned and table migrations included (for the
    /// phase gauge and for telling which migrations just left planned).
    phases: BTreeMap<String, Phase>,
    /// Matches the tables of every configured migration, planned ones included: statements
    /// naming them are remembered by sessions even before a migration starts, so they can be
    /// re-prepared when it does.
    watched: Arc<Prefilter>,
}

impl Snapshot {
    /// No migrations at all.
    pub fn empty(epoch: u64) -> Snapshot {
        Snapshot::new(epoch, [])
    }

    /// A snapshot of these databases' views; the known phases are those of their migrations.
    /// [`build`] is the way from a config; this is for tests and tools.
    pub fn new(
        epoch: u64,
        databases: impl IntoIterator<Item = (String, DatabaseView)>,
    ) -> Snapshot {
        let databases: HashMap<String, Arc<DatabaseView>> = databases
            .into_iter()
            .map(|(name, view)| (name, Arc::new(view)))
            .collect();
        let phases = databases
            .values()
            .flat_map(|view| &view.tables)
            .flat_map(|table| &table.migrations)
            .map(|m| (m.name.clone(), m.phase))
            .collect();
        let watched = Arc::new(Prefilter::new(
            databases
                .values()
                .flat_map(|view| &view.tables)
                .map(|t| t.shape.name.name.as_str()),
        ));
        Snapshot {
            epoch,
            databases,
            phases,
            watched,
        }
    }

    /// The pre-filter over the tables of every configured migration.
    pub fn watched(&self) -> &Arc<Prefilter> {
        &self.watched
    }

    /// The migrated tables of `database`, if it has any.
    pub fn database(&self, name: &str) -> Option<&Arc<DatabaseView>> {
        self.databases.get(name)
    }

    /// Every active (not planned) column migration, in no particular order.
    pub fn migrations(&self) -> impl Iterator<Item = &Arc<ColumnsMigration>> {
        self.databases
            .values()
            .flat_map(|view| &view.tables)
            .flat_map(|table| &table.migrations)
    }

    /// The phase of a configured migration (any kind, planned included).
    pub fn phase(&self, migration: &str) -> Option<Phase> {
        self.phases.get(migration).copied()
    }

    /// Every configured migration with its phase, by name.
    pub fn phases(&self) -> impl Iterator<Item = (&str, Phase)> {
        self.phases
            .iter()
            .map(|(name, phase)| (name.as_str(), *phase))
    }
}

/// The value of `pgshift_phase{migration}`: 0 planned, 1 expand, 2 switch, 3 contract,
/// 4 complete (DESIGN §5).
pub fn phase_metric_value(phase: Phase) -> f64 {
    match phase {
        Phase::Planned => 0.0,
        Phase::Expand => 1.0,
        Phase::Switch => 2.0,
        Phase::Contract => 3.0,
        Phase::Complete => 4.0,
    }
}

/// The snapshot in force. Readers take it without locking; one writer (the control plane)
/// publishes newer ones.
pub struct SnapshotStore {
    current: ArcSwap<Snapshot>,
}

impl SnapshotStore {
    /// A store holding `initial`; the gauges are set from it.
    pub fn new(initial: Snapshot) -> SnapshotStore {
        metrics::describe_gauge!(EPOCH_METRIC, "Epoch of the migration snapshot in force.");
        metrics::describe_gauge!(
            PHASE_METRIC,
            "Phase of each migration: 0 planned, 1 expand, 2 switch, 3 contract, 4 complete."
        );
        record_metrics(&initial);
        SnapshotStore {
            current: ArcSwap::from_pointee(initial),
        }
    }

    /// The current snapshot; hold it for as long as it must stay consistent (a transaction).
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Makes `next` the current snapshot.
    ///
    /// # Panics
    /// When `next.epoch` is not greater than the current epoch: epochs only move forward, and
    /// instances acknowledge them by number.
    pub fn publish(&self, next: Snapshot) {
        let next = Arc::new(next);
        loop {
            let current = self.current.load();
            assert!(
                next.epoch > current.epoch,
                "snapshot epoch must increase: publishing {} over {}",
                next.epoch,
                current.epoch
            );
            let previous = self.current.compare_and_swap(&*current, next.clone());
            // Another publisher raced us: re-check the epoch against its snapshot.
            if Arc::ptr_eq(&previous, &current) {
                break;
            }
        }
        record_metrics(&next);
    }
}

fn record_metrics(snapshot: &Snapshot) {
    metrics::gauge!(EPOCH_METRIC).set(snapshot.epoch as f64);
    for (name, phase) in snapshot.phases() {
        metrics::gauge!(PHASE_METRIC, "migration" => name.to_owned())
            .set(phase_metric_value(phase));
    }
}

/// Builds the snapshot for `config` at `epoch`. `previous` is the snapshot in force, if any: a
/// migration's `expand_sql` runs only when it enters expand (it was planned or unknown in
/// `previous`, or there is no `previous`) and its new columns are missing.
///
/// Table migrations (`kind = "table"`) are not handled yet and are left out.
pub async fn build(
    config: &Config,
    epoch: u64,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, SnapshotError> {
    build_with(config, epoch, previous, Ddl::Run).await
}

/// Checks `config` against the databases without changing anything (`pgshift check
/// --connect`): like [`build`], but `expand_sql` is not run; a migration whose new column it
/// would add is reported as ready instead of checked.
pub async fn check(config: &Config) -> Result<Snapshot, SnapshotError> {
    build_with(config, 1, None, Ddl::Skip).await
}

/// Whether building may run `expand_sql`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ddl {
    Run,
    Skip,
}

async fn build_with(
    config: &Config,
    epoch: u64,
    previous: Option<&Snapshot>,
    ddl: Ddl,
) -> Result<Snapshot, SnapshotError> {
    let plan = plan(config)?;
    let mut databases = HashMap::new();
    let mut move_dbs: Vec<String> = plan.moves.iter().map(|m| m.database.clone()).collect();
    let grouped = group(plan.active);
    for (db, _) in &grouped {
        move_dbs.retain(|d| d != db);
    }
    move_dbs.dedup();
    let grouped = grouped
        .into_iter()
        .chain(move_dbs.into_iter().map(|db| (db, Vec::new())));
    for (database, tables) in grouped {
        let conn =
            catalog::connect(config, &database)
                .await
                .map_err(|error| SnapshotError::Connect {
                    database: database.clone(),
                    error,
                })?;
        let mut migrated = Vec::new();
        for (table, migrations) in tables {
            let (shape, deferred) =
                resolve_table(&conn, &table, &migrations, previous, ddl).await?;
            migrated.push(MigratedTable {
                shape,
                // Only when checking: migrations waiting for their expand_sql are left out.
                migrations: migrations
                    .into_iter()
                    .filter(|a| !deferred.contains(&a.migration.name))
                    .map(|a| Arc::new(a.migration))
                    .collect(),
            });
        }
        let mut moved = Vec::new();
        for m in plan.moves.iter().filter(|m| m.database == database) {
            let entering = previous
                .and_then(|p| p.phase(&m.name))
                .is_none_or(|phase| phase == Phase::Planned);
            if let Some(t) = moves::load(&conn, m, entering, ddl).await? {
                moved.push(Arc::new(t));
            }
        }
        let view = DatabaseView::with_moves(migrated, moved).map_err(SnapshotError::Rewrite)?;
        databases.insert(database, Arc::new(view));
    }
    let watched_tables: Vec<String> = config
        .migrations
        .iter()
        .flat_map(|m| [Some(&m.table), m.new_table.as_ref()])
        .flatten()
        .filter_map(|t| QualifiedName::parse(t).ok().map(|n| n.name))
        .collect();
    Ok(Snapshot {
        epoch,
        databases,
        phases: plan.phases,
        watched: Arc::new(Prefilter::new(watched_tables.iter().map(String::as_str))),
    })
}

/// An active column migration with the config entry it came from.
struct Active<'a> {
    config: &'a MigrationConfig,
    migration: ColumnsMigration,
}

/// What [`build`] must do, decided from the config alone.
struct Plan<'a> {
    phases: BTreeMap<String, Phase>,
    /// Column migrations not in planned, in config order.
    active: Vec<Active<'a>>,
    /// Table moves not in planned, in config order.
    moves: Vec<&'a MigrationConfig>,
}

fn plan(config: &Config) -> Result<Plan<'_>, SnapshotError> {
    let mut plan = Plan {
        phases: BTreeMap::new(),
        active: Vec::new(),
        moves: Vec::new(),
    };
    for m in &config.migrations {
        plan.phases.insert(m.name.clone(), m.phase);
        if m.phase == Phase::Planned {
            continue;
        }
        match m.kind {
            MigrationKind::Table => plan.moves.push(m),
            MigrationKind::Columns => plan.active.push(Active {
                config: m,
                migration: columns_migration(m)?,
            }),
        }
    }
    check_overlaps(plan.active.iter().map(|a| &a.migration))?;
    check_move_overlaps(&plan)?;
    Ok(plan)
}

/// Resolves one `kind = "columns"` entry: the table name parsed, `up` defaulting to the old
/// column and `down` to the new one, both checked to be one SQL expression each.
pub fn columns_migration(m: &MigrationConfig) -> Result<ColumnsMigration, SnapshotError> {
    let table = QualifiedName::parse(&m.table).map_err(|e| SnapshotError::invalid(&m.name, e))?;
    let mut pairs = Vec::with_capacity(m.columns.len());
    for c in &m.columns {
        let new = c.new.clone().unwrap_or_default();
        let up = c.up.clone().unwrap_or_else(|| quote_ident(&c.old));
        let down = c.down.clone().unwrap_or_else(|| quote_ident(&new));
        for (which, column, expr) in [("up", &new, &up), ("down", &c.old, &down)] {
            check_expression(expr).map_err(|e| {
                SnapshotError::invalid(
                    &m.name,
                    format!("{which} of column {column:?} is not one SQL expression: {e}"),
                )
            })?;
        }
        pairs.push(ColumnPair {
            old: c.old.clone(),
            new,
            up,
            down,
        });
    }
    Ok(ColumnsMigration {
        name: m.name.clone(),
        database: m.database.clone(),
        table,
        phase: m.phase,
        pairs,
    })
}

/// `expr` parses as exactly one expression (no trailing tokens such as `; DROP …`).
fn check_expression(expr: &str) -> Result<(), String> {
    let mut parser = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(expr)
        .map_err(|e| e.to_string())?;
    parser.parse_expr().map_err(|e| e.to_string())?;
    match parser.peek_token().token {
        Token::EOF => Ok(()),
        other => Err(format!("unexpected {other} after the expression")),
    }
}

/// Refuses two migrations on the same table of the same database that share a column name
/// (old or new).
pub fn check_overlaps<'a>(
    migrations: impl IntoIterator<Item = &'a ColumnsMigration>,
) -> Result<(), SnapshotError> {
    let migrations: Vec<&ColumnsMigration> = migrations.into_iter().collect();
    for (i, a) in migrations.iter().enumerate() {
        let names: HashSet<&str> = column_names(a).collect();
        for b in &migrations[i + 1..] {
            if a.database != b.database || a.table != b.table {
                continue;
            }
            if let Some(shared) = column_names(b).find(|n| names.contains(n)) {
                return Err(SnapshotError::Overlap {
                    first: a.name.clone(),
                    second: b.name.clone(),
                    table: a.table.clone(),
                    column: shared.to_owned(),
                });
            }
        }
    }
    Ok(())
}

/// A table may be under one active table move, or under column migrations, not both: both
/// would rewrite the same statements.
fn check_move_overlaps(plan: &Plan<'_>) -> Result<(), SnapshotError> {
    let names = |m: &MigrationConfig| {
        [Some(&m.table), m.new_table.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|t| QualifiedName::parse(t).ok())
            .map(|t| (m.database.clone(), t))
            .collect::<Vec<_>>()
    };
    for (i, a) in plan.moves.iter().enumerate() {
        let mine = names(a);
        let others = plan.moves[i + 1..]
            .iter()
            .map(|b| (b.name.clone(), names(b)))
            .chain(plan.active.iter().map(|c| {
                (
                    c.migration.name.clone(),
                    vec![(c.migration.database.clone(), c.migration.table.clone())],
                )
            }));
        for (other, tables) in others {
            if let Some((_, table)) = tables.iter().find(|t| mine.contains(t)) {
                return Err(SnapshotError::invalid(
                    &a.name,
                    format!(
                        "table {table} is also under migration {other:?}; a moved table cannot \
                         be under another active migration"
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn column_names(m: &ColumnsMigration) -> impl Iterator<Item = &str> {
    m.pairs
        .iter()
        .flat_map(|p| [p.old.as_str(), p.new.as_str()])
}

/// A table and the active migrations on it.
type TableGroup<'a> = (QualifiedName, Vec<Active<'a>>);

/// Groups active migrations by database, then table, keeping config order.
fn group(active: Vec<Active<'_>>) -> Vec<(String, Vec<TableGroup<'_>>)> {
    let mut databases: Vec<(String, Vec<TableGroup<'_>>)> = Vec::new();
    for a in active {
        let db = match databases
            .iter()
            .position(|(name, _)| *name == a.migration.database)
        {
            Some(i) => i,
            None => {
                databases.push((a.migration.database.clone(), Vec::new()));
                databases.len() - 1
            }
        };
        let tables = &mut databases[db].1;
        match tables.iter_mut().find(|(t, _)| *t == a.migration.table) {
            Some((_, list)) => list.push(a),
            None => tables.push((a.migration.table.clone(), vec![a])),
        }
    }
    databases
}

/// Reads `table`'s shape and checks the migrations on it against it, running `expand_sql`
/// where a migration entering expand lacks its new columns; returns the final shape.
async fn resolve_table(
    conn: &ControlConnection,
    table: &QualifiedName,
    migrations: &[Active<'_>],
    previous: Option<&Snapshot>,
    ddl: Ddl,
) -> Result<(TableShape, Vec<String>), SnapshotError> {
    let first = &migrations[0].migration.name;
    let mut shape = load_existing_shape(conn, table, first).await?;
    let mut deferred = Vec::new();
    for a in migrations {
        let m = &a.migration;
        check_old_columns(&shape, m)?;
        if missing_new_column(&shape, m).is_some()
            && let Some(sql) = entering_expand_sql(a, previous)
        {
            if ddl == Ddl::Skip {
                tracing::info!(migration = %m.name, %table, "expand_sql would add the new column");
                deferred.push(m.name.clone());
                continue;
            }
            tracing::info!(migration = %m.name, %table, "running expand_sql");
            catalog::run_ddl(conn, sql, EXPAND_LOCK_TIMEOUT, EXPAND_ATTEMPTS)
                .await
                .map_err(SnapshotError::catalog(&m.name))?;
            shape = load_existing_shape(conn, table, &m.name).await?;
        }
        if let Some(column) = missing_new_column(&shape, m) {
            let hint = if a.config.expand_sql.is_some() {
                ""
            } else {
                " (add it, or give the migration an expand_sql)"
            };
            return Err(SnapshotError::invalid(
                &m.name,
                format!("new column {column:?} does not exist in table {table}{hint}"),
            ));
        }
    }
    for a in migrations {
        if !deferred.contains(&a.migration.name) {
            check_expressions_compile(conn, &shape, &a.migration).await?;
        }
    }
    Ok((shape, deferred))
}

async fn load_existing_shape(
    conn: &ControlConnection,
    table: &QualifiedName,
    migration: &str,
) -> Result<TableShape, SnapshotError> {
    catalog::load_shape(conn, table)
        .await
        .map_err(SnapshotError::catalog(migration))?
        .ok_or_else(|| SnapshotError::invalid(migration, format!("table {table} does not exist")))
}

/// The old columns must exist until contract: after that, `complete_sql` may have dropped them.
fn check_old_columns(shape: &TableShape, m: &ColumnsMigration) -> Result<(), SnapshotError> {
    if m.phase >= Phase::Contract {
        return Ok(());
    }
    match m.pairs.iter().find(|p| shape.column(&p.old).is_none()) {
        Some(p) => Err(SnapshotError::invalid(
            &m.name,
            format!(
                "old column {:?} does not exist in table {}",
                p.old, shape.name
            ),
        )),
        None => Ok(()),
    }
}

fn missing_new_column<'a>(shape: &TableShape, m: &'a ColumnsMigration) -> Option<&'a str> {
    m.pairs
        .iter()
        .find(|p| shape.column(&p.new).is_none())
        .map(|p| p.new.as_str())
}

/// The migration's `expand_sql`, when it has one and is entering expand now.
fn entering_expand_sql<'a>(a: &Active<'a>, previous: Option<&Snapshot>) -> Option<&'a str> {
    let sql = a.config.expand_sql.as_deref()?;
    let was_planned = previous
        .and_then(|p| p.phase(&a.migration.name))
        .is_none_or(|phase| phase == Phase::Planned);
    (a.migration.phase == Phase::Expand && was_planned).then_some(sql)
}

/// Runs `SELECT (up)::new_type FROM table LIMIT 0` and `SELECT (down)::old_type …` for every
/// pair: the server parses, resolves and type-checks them without reading a row. A pair whose
/// old column is gone (contract and later) is skipped: `up` reads the old row, `down` yields
/// the old type, and neither is used any more.
async fn check_expressions_compile(
    conn: &ControlConnection,
    shape: &TableShape,
    m: &ColumnsMigration,
) -> Result<(), SnapshotError> {
    let table = shape.name.quoted();
    for p in &m.pairs {
        let (Some(old), Some(new)) = (shape.column(&p.old), shape.column(&p.new)) else {
            continue;
        };
        for (which, expr, target, column) in [
            ("up", &p.up, &new.type_sql, &p.new),
            ("down", &p.down, &old.type_sql, &p.old),
        ] {
            let sql = format!("SELECT ({expr})::{target} FROM {table} LIMIT 0");
            conn.batch_execute(&sql)
                .await
                .map_err(|error| CatalogError::Statement {
                    context: format!(
                        "{which} expression `{expr}` for column {column:?} ({target}) does not \
                         compile against table {}",
                        shape.name
                    ),
                    error,
                })
                .map_err(SnapshotError::catalog(&m.name))?;
        }
    }
    Ok(())
}

mod drift;
mod moves;

pub use drift::drifted;

#[cfg(test)]
mod tests;
