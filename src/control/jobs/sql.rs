//! The SQL of the jobs, built from a migration as the snapshot resolved it: a [`Mapping`] says
//! which rows (`source`) feed which columns of which table (`target`), by which expressions,
//! matched on which key. A backfill batch copies a key range through it; a verify chunk
//! compares a key range through it. Pure text building, unit tested here; run by the job
//! runners against the real database.
//!
//! Key values travel as text (`$n::text` cast to the key column's type, and back with
//! `::text`), so one code path serves every key type and the checkpoint is plain JSON.
//! Expressions (`up`, `down`) are SQL over unqualified column names of the source row; every
//! statement gives them exactly one relation with those columns in scope.

use crate::migration::{QualifiedName, TableShape, quote_ident};
use crate::snapshot::Snapshot;

/// Which way data flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// new = up(old): expand and switch.
    Forward,
    /// old = down(new): rolling back from contract.
    Reverse,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Reverse => "reverse",
        }
    }

    pub fn parse(s: &str) -> Direction {
        if s == "reverse" {
            Direction::Reverse
        } else {
            Direction::Forward
        }
    }
}

/// How the target is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A column migration: source and target are the same table, rows are updated in place.
    InPlace,
    /// A table move: target rows are upserted from source rows by key.
    Table,
}

/// One written column: `column` (of type `type_sql`) = `expr` over the source row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub column: String,
    pub expr: String,
    pub type_sql: String,
}

/// What a job copies or compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub kind: Kind,
    pub source: QualifiedName,
    pub target: QualifiedName,
    /// Key columns (same names in both tables) and their type in the source.
    pub key: Vec<(String, String)>,
    pub columns: Vec<Target>,
    /// The target has a `GENERATED ALWAYS AS IDENTITY` column among `columns`: inserts
    /// need `OVERRIDING SYSTEM VALUE` to write the source's value into it.
    pub overriding: bool,
    /// Table moves: the target's own unique key, the upsert's conflict target (it may be
    /// narrower than the migration's `key`, e.g. a plain table moved into a partitioned one).
    pub conflict: Vec<String>,
}

/// What one backfill batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchResult {
    /// Source rows in the batch (locked and copied).
    pub rows: i64,
    /// Target rows written because they differed.
    pub written: i64,
    /// Target rows deleted because no source row has their key (table moves).
    pub deleted: i64,
    /// The batch's last key, as text; `None` when the batch was empty.
    pub last_key: Option<Vec<String>>,
}

impl Mapping {
    /// The mapping of migration `name` in `snapshot` (which must have it active), for
    /// `direction`.
    pub fn resolve(
        snapshot: &Snapshot,
        database: &str,
        name: &str,
        direction: Direction,
    ) -> Result<Mapping, String> {
        let view = snapshot
            .database(database)
            .ok_or_else(|| format!("migration {name:?} is not active in this instance"))?;
        if let Some(moved) = view.moves.iter().find(|m| m.name == name) {
            let (source, target, fed) = match direction {
                Direction::Forward => (&moved.old, &moved.new, &moved.new_from_old),
                Direction::Reverse => (&moved.new, &moved.old, &moved.old_from_new),
            };
            let columns: Vec<Target> = fed
                .iter()
                .filter(|(c, _)| target.column(c).is_some_and(|info| !info.generated))
                .filter_map(|(c, e)| {
                    e.as_ref().map(|e| Target {
                        column: c.clone(),
                        expr: e.clone(),
                        type_sql: type_of(target, c),
                    })
                })
                .collect();
            let names: Vec<String> = columns.iter().map(|t| quote_ident(&t.column)).collect();
            if target.key.is_empty() {
                return Err(format!(
                    "migration {name:?}: table {} has no primary key or unique index for the \
                     backfill's upsert",
                    target.name
                ));
            }
            return Ok(Mapping {
                kind: Kind::Table,
                source: source.name.clone(),
                target: target.name.clone(),
                key: key_of(name, source, &moved.key)?,
                overriding: !crate::rewrite::moves_overriding(target, &names).is_empty(),
                conflict: target.key.clone(),
                columns,
            });
        }
        for table in &view.tables {
            let Some(m) = table.migrations.iter().find(|m| m.name == name) else {
                continue;
            };
            let shape = &table.shape;
            let mut columns: Vec<Target> = Vec::new();
            for p in &m.pairs {
                let (column, expr) = match direction {
                    Direction::Forward => (&p.new, &p.up),
                    Direction::Reverse => (&p.old, &p.down),
                };
                // A split column is computed back once (every entry has the same `down`).
                if columns.iter().any(|t| &t.column == column) {
                    continue;
                }
                columns.push(Target {
                    column: column.clone(),
                    expr: expr.clone(),
                    type_sql: type_of(shape, column),
                });
            }
            return Ok(Mapping {
                kind: Kind::InPlace,
                source: shape.name.clone(),
                target: shape.name.clone(),
                key: key_of(name, shape, &shape.key)?,
                columns,
                overriding: false,
                conflict: Vec::new(),
            });
        }
        Err(format!("migration {name:?} is not active in this instance"))
    }

    fn key_names(&self, q: &str) -> String {
        self.key
            .iter()
            .map(|(k, _)| format!("{q}{}", quote_ident(k)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `(q.k1, …) op (CAST($n::text AS t1), …)`, parameters from `first`.
    fn bound(&self, q: &str, op: &str, first: usize) -> String {
        let values: Vec<String> = self
            .key
            .iter()
            .enumerate()
            .map(|(i, (_, ty))| format!("CAST(${}::text AS {ty})", first + i))
            .collect();
        format!("({}) {op} ({})", self.key_names(q), values.join(", "))
    }

    /// `ARRAY[k1::text, …]` over unqualified key names `prefix` + column.
    fn key_text_array(&self, q: &str) -> String {
        let items: Vec<String> = self
            .key
            .iter()
            .map(|(k, _)| format!("{q}{}::text", quote_ident(k)))
            .collect();
        format!("ARRAY[{}]", items.join(", "))
    }

    /// One key as people read it: the value's text, or `(a,b)` for a composite key.
    fn key_display(&self, q: &str) -> String {
        match self.key.as_slice() {
            [(k, _)] => format!("{q}{}::text", quote_ident(k)),
            _ => format!("ROW({})::text", self.key_names(q)),
        }
    }

    /// The SQL of one backfill batch: the next `batch` source keys after `$1…$k` (from the
    /// first key when `after` is false) make the batch's key range, whose rows are then locked
    /// and copied. Returns one row: rows copied, rows written, 0, and the range's last key
    /// (text[]; NULL when no key is left, which ends the backfill).
    ///
    /// The range is fixed before locking, and the locking scan re-checks both of its bounds:
    /// under READ COMMITTED a row updated while the batch waited for its lock is re-checked
    /// against the WHERE clause only (not ORDER BY or LIMIT), so a row whose key moved far away
    /// must not end up in the batch and become its checkpoint. Values are computed in the
    /// locking scan, for locked rows only, from their latest version.
    pub fn batch_sql(&self, batch: u32, after: bool) -> String {
        let src = self.source.quoted();
        let tgt = self.target.quoted();
        let lower = if after {
            format!("{} AND ", self.bound("pgshift_s.", ">", 1))
        } else {
            String::new()
        };
        let n = self.key.len();
        let numbered = |f: &dyn Fn(usize, &str) -> String| -> Vec<String> {
            self.key
                .iter()
                .enumerate()
                .map(|(i, (k, _))| f(i + 1, &quote_ident(k)))
                .collect()
        };
        let k_names: Vec<String> = (1..=n).map(|i| format!("pgshift_k{i}")).collect();
        let k_desc: Vec<String> = (1..=n).map(|i| format!("pgshift_k{i} DESC")).collect();
        let k_text: Vec<String> = (1..=n).map(|i| format!("pgshift_k{i}::text")).collect();
        let order = self.key_names("pgshift_s.");
        let range = format!(
            "pgshift_r AS (SELECT {} FROM {src} AS pgshift_s{} ORDER BY {order} LIMIT {batch}), \
             pgshift_e AS (SELECT {} FROM pgshift_r ORDER BY {} LIMIT 1)",
            numbered(&|i, k| format!("pgshift_s.{k} AS pgshift_k{i}")).join(", "),
            if after {
                format!(" WHERE {}", self.bound("pgshift_s.", ">", 1))
            } else {
                String::new()
            },
            k_names.join(", "),
            k_desc.join(", "),
        );
        let within = format!(
            "{lower}({order}) <= (SELECT {} FROM pgshift_e)",
            k_names.join(", ")
        );
        let last = format!("(SELECT ARRAY[{}] FROM pgshift_e)", k_text.join(", "));
        let values: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("CAST(({}) AS {})", c.expr, c.type_sql))
            .collect();
        let names: Vec<String> = self
            .columns
            .iter()
            .map(|c| quote_ident(&c.column))
            .collect();
        match self.kind {
            Kind::InPlace => {
                let computed: Vec<String> = values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| format!("{v} AS pgshift_v{}", i + 1))
                    .collect();
                let sets: Vec<String> = names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| format!("{n} = pgshift_b.pgshift_v{}", i + 1))
                    .collect();
                let current: Vec<String> = names.iter().map(|n| format!("pgshift_t.{n}")).collect();
                let new: Vec<String> = (1..=names.len())
                    .map(|i| format!("pgshift_b.pgshift_v{i}"))
                    .collect();
                let join = numbered(&|i, k| format!("pgshift_t.{k} = pgshift_b.pgshift_k{i}"));
                format!(
                    "WITH {range}, \
                     pgshift_b AS (SELECT {}, {} FROM {src} AS pgshift_s WHERE {within} \
                     ORDER BY {order} FOR UPDATE), \
                     pgshift_w AS (UPDATE {tgt} AS pgshift_t SET {} FROM pgshift_b WHERE {} \
                     AND ROW({})::text IS DISTINCT FROM ROW({})::text RETURNING 1) \
                     SELECT (SELECT count(*) FROM pgshift_b)::int8, \
                     (SELECT count(*) FROM pgshift_w)::int8, 0::int8, {last}",
                    numbered(&|i, k| format!("pgshift_s.{k} AS pgshift_k{i}")).join(", "),
                    computed.join(", "),
                    sets.join(", "),
                    join.join(" AND "),
                    current.join(", "),
                    new.join(", "),
                )
            }
            Kind::Table => {
                let key_cols: Vec<String> = self.conflict.iter().map(|k| quote_ident(k)).collect();
                let updatable: Vec<&String> =
                    names.iter().filter(|n| !key_cols.contains(n)).collect();
                let action = if updatable.is_empty() {
                    "DO NOTHING".to_owned()
                } else {
                    let sets: Vec<String> = updatable
                        .iter()
                        .map(|n| format!("{n} = EXCLUDED.{n}"))
                        .collect();
                    let now: Vec<String> =
                        updatable.iter().map(|n| format!("pgshift_t.{n}")).collect();
                    let new: Vec<String> =
                        updatable.iter().map(|n| format!("EXCLUDED.{n}")).collect();
                    format!(
                        "DO UPDATE SET {} WHERE ROW({})::text IS DISTINCT FROM ROW({})::text",
                        sets.join(", "),
                        now.join(", "),
                        new.join(", ")
                    )
                };
                let overriding = if self.overriding {
                    "OVERRIDING SYSTEM VALUE "
                } else {
                    ""
                };
                format!(
                    "WITH {range}, \
                     pgshift_b AS (SELECT * FROM {src} AS pgshift_s WHERE {within} \
                     ORDER BY {order} FOR UPDATE), \
                     pgshift_w AS (INSERT INTO {tgt} AS pgshift_t ({}) {overriding}SELECT {} \
                     FROM pgshift_b ON CONFLICT ({}) {action} RETURNING 1) \
                     SELECT (SELECT count(*) FROM pgshift_b)::int8, \
                     (SELECT count(*) FROM pgshift_w)::int8, 0::int8, {last}",
                    names.join(", "),
                    values.join(", "),
                    key_cols.join(", "),
                )
            }
        }
    }

    /// Table moves, after the last batch, step one of a sweep range: locks the target rows
    /// in the key range (`$1…$k`, `$k+1…$2k`] (bounds present as `after` and `upto` say) that
    /// have no source row, and returns their keys as text. Step two,
    /// [`Self::sweep_delete_sql`], is a new statement of the same transaction: its fresh
    /// snapshot sees a source row a client committed while step one waited for a lock (a
    /// re-checked locked row keeps its first "no source row" verdict), and the rows it deletes
    /// are locked, so nobody writes them in between. [`Self::sweep_end_sql`] finds the ranges.
    ///
    /// Batches cannot do this themselves: a client DELETE whose snapshot predates a batch's
    /// commit, and which waited for the batch's lock on the source row, removes the source row
    /// but cannot see (so cannot remove) the copy the batch committed. The sweep runs once no
    /// transaction older than the last batch is left, so every such copy is visible to it.
    pub fn sweep_candidates_sql(&self, after: bool, upto: bool) -> String {
        format!(
            "SELECT {} FROM {} AS pgshift_t{} AND NOT EXISTS ({}) ORDER BY {} FOR UPDATE",
            self.key_display("pgshift_t."),
            self.target.quoted(),
            self.range_or_all("pgshift_t.", after, upto),
            self.source_row_exists(),
            self.key_names("pgshift_t."),
        )
    }

    /// Step two of a sweep range: deletes the rows step one locked (keys as text in the last
    /// parameter) that still have no source row; returns how many.
    pub fn sweep_delete_sql(&self, after: bool, upto: bool) -> String {
        let k = self.key.len();
        let keys_param = 1 + if after { k } else { 0 } + if upto { k } else { 0 };
        format!(
            "WITH pgshift_d AS (DELETE FROM {} AS pgshift_t{} AND {} = ANY(${keys_param}::text[]) \
             AND NOT EXISTS ({}) RETURNING 1) SELECT count(*)::int8 FROM pgshift_d",
            self.target.quoted(),
            self.range_or_all("pgshift_t.", after, upto),
            self.key_display("pgshift_t."),
            self.source_row_exists(),
        )
    }

    /// `SELECT 1 FROM source AS pgshift_s WHERE <same key as pgshift_t>`.
    fn source_row_exists(&self) -> String {
        let same: Vec<String> = self
            .key
            .iter()
            .map(|(k, _)| format!("pgshift_s.{0} = pgshift_t.{0}", quote_ident(k)))
            .collect();
        format!(
            "SELECT 1 FROM {} AS pgshift_s WHERE {}",
            self.source.quoted(),
            same.join(" AND ")
        )
    }

    /// The key ending a sweep range of `chunk` target keys after `$1…$k`: one row with a
    /// text[], or no row when fewer keys are left.
    pub fn sweep_end_sql(&self, chunk: u32, after: bool) -> String {
        self.nth_key_sql(&self.target, chunk, after)
    }

    /// The key ending a verify chunk of `chunk` source keys after `$1…$k` (from the first key
    /// when `after` is false): one row with a text[], or no row when fewer keys are left.
    pub fn chunk_end_sql(&self, chunk: u32, after: bool) -> String {
        self.nth_key_sql(&self.source, chunk, after)
    }

    fn nth_key_sql(&self, table: &QualifiedName, chunk: u32, after: bool) -> String {
        let lower = if after {
            format!(" WHERE {}", self.bound("pgshift_x.", ">", 1))
        } else {
            String::new()
        };
        format!(
            "SELECT {} FROM {} AS pgshift_x{lower} ORDER BY {} OFFSET {} LIMIT 1",
            self.key_text_array("pgshift_x."),
            table.quoted(),
            self.key_names("pgshift_x."),
            chunk.saturating_sub(1)
        )
    }

    /// [`Self::range`], but always a `WHERE` clause (`WHERE true` without bounds).
    fn range_or_all(&self, q: &str, after: bool, upto: bool) -> String {
        match self.range(q, after, upto) {
            r if r.is_empty() => " WHERE true".to_owned(),
            r => r,
        }
    }

    /// Parameters: the lower bound `$1…$k` when `after`, then the upper bound when `upto`.
    fn range(&self, q: &str, after: bool, upto: bool) -> String {
        let k = self.key.len();
        let mut parts = Vec::new();
        if after {
            parts.push(self.bound(q, ">", 1));
        }
        if upto {
            parts.push(self.bound(q, "<=", if after { k + 1 } else { 1 }));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", parts.join(" AND "))
        }
    }

    /// `pgshift_s` (source rows mapped) and `pgshift_t` (target rows) over one key range, each
    /// with the key (`pgshift_kN`), its display text (`pgshift_kt`) and the row as text
    /// (`pgshift_r`).
    fn compared(&self, after: bool, upto: bool) -> String {
        let keys = |q: &str| -> String {
            self.key
                .iter()
                .enumerate()
                .map(|(i, (k, _))| format!("{q}{} AS pgshift_k{}", quote_ident(k), i + 1))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mapped: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("CAST(({}) AS {})", c.expr, c.type_sql))
            .collect();
        let stored: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("pgshift_x.{}", quote_ident(&c.column)))
            .collect();
        format!(
            "pgshift_s AS (SELECT {}, {} AS pgshift_kt, ROW({})::text AS pgshift_r \
             FROM {} AS pgshift_x{}), \
             pgshift_t AS (SELECT {}, {} AS pgshift_kt, ROW({})::text AS pgshift_r \
             FROM {} AS pgshift_x{})",
            keys("pgshift_x."),
            self.key_display("pgshift_x."),
            mapped.join(", "),
            self.source.quoted(),
            self.range("pgshift_x.", after, upto),
            keys("pgshift_x."),
            self.key_display("pgshift_x."),
            stored.join(", "),
            self.target.quoted(),
            self.range("pgshift_x.", after, upto),
        )
    }

    fn k_order(&self, q: &str) -> String {
        (1..=self.key.len())
            .map(|i| format!("{q}pgshift_k{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Count and md5 of both sides of one chunk, in one statement (one snapshot): returns
    /// source count, source hash, target count, target hash.
    pub fn compare_sql(&self, after: bool, upto: bool) -> String {
        let agg = |cte: &str| {
            format!(
                "(SELECT count(*) FROM {cte})::int8, (SELECT md5(coalesce(string_agg(pgshift_r, \
                 E'\\n' ORDER BY {}), '')) FROM {cte})",
                self.k_order("")
            )
        };
        format!(
            "WITH {} SELECT {}, {}",
            self.compared(after, upto),
            agg("pgshift_s"),
            agg("pgshift_t")
        )
    }

    /// The keys of one chunk whose rows differ (or exist on one side only), in key order.
    pub fn mismatches_sql(&self, after: bool, upto: bool) -> String {
        let join: Vec<String> = (1..=self.key.len())
            .map(|i| format!("pgshift_s.pgshift_k{i} = pgshift_t.pgshift_k{i}"))
            .collect();
        let order: Vec<String> = (1..=self.key.len())
            .map(|i| format!("coalesce(pgshift_s.pgshift_k{i}, pgshift_t.pgshift_k{i})"))
            .collect();
        format!(
            "WITH {} SELECT coalesce(pgshift_s.pgshift_kt, pgshift_t.pgshift_kt) \
             FROM pgshift_s FULL JOIN pgshift_t ON {} \
             WHERE pgshift_s.pgshift_r IS DISTINCT FROM pgshift_t.pgshift_r ORDER BY {}",
            self.compared(after, upto),
            join.join(" AND "),
            order.join(", ")
        )
    }

    /// The planner's row estimate of the source (negative: never analysed).
    pub fn estimate_sql(&self) -> String {
        format!(
            "SELECT reltuples::float8 FROM pg_class WHERE oid = '{}'::regclass",
            self.source.quoted().replace('\'', "''")
        )
    }

    pub fn count_sql(&self) -> String {
        format!("SELECT count(*)::int8 FROM {}", self.source.quoted())
    }
}

fn type_of(shape: &TableShape, column: &str) -> String {
    shape
        .column(column)
        .map_or_else(|| "text".to_owned(), |c| c.type_sql.clone())
}

/// The key columns with their types in `shape`; every one must exist and be NOT NULL (a key
/// range scan never sees NULL keys).
fn key_of(name: &str, shape: &TableShape, key: &[String]) -> Result<Vec<(String, String)>, String> {
    if key.is_empty() {
        return Err(format!(
            "migration {name:?}: table {} has no primary key or unique index to order the \
             jobs by",
            shape.name
        ));
    }
    key.iter()
        .map(|k| match shape.column(k) {
            Some(c) if c.not_null => Ok((k.clone(), c.type_sql.clone())),
            Some(_) => Err(format!(
                "migration {name:?}: key column {k} of {} allows NULL; the jobs need a NOT NULL \
                 key",
                shape.name
            )),
            None => Err(format!(
                "migration {name:?}: table {} has no key column {k}",
                shape.name
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    fn in_place() -> Mapping {
        Mapping {
            kind: Kind::InPlace,
            source: QualifiedName::parse("public.users").unwrap(),
            target: QualifiedName::parse("public.users").unwrap(),
            key: vec![("id".into(), "integer".into())],
            columns: vec![Target {
                column: "age_int".into(),
                expr: "CASE WHEN age ~ '^[0-9]+$' THEN age::integer END".into(),
                type_sql: "integer".into(),
            }],
            overriding: false,
            conflict: Vec::new(),
        }
    }

    fn moved() -> Mapping {
        Mapping {
            kind: Kind::Table,
            source: QualifiedName::parse("public.orders").unwrap(),
            target: QualifiedName::parse("public.orders_v2").unwrap(),
            key: vec![
                ("id".into(), "bigint".into()),
                ("region".into(), "text".into()),
            ],
            columns: vec![
                Target {
                    column: "id".into(),
                    expr: "id".into(),
                    type_sql: "bigint".into(),
                },
                Target {
                    column: "region".into(),
                    expr: "region".into(),
                    type_sql: "text".into(),
                },
                Target {
                    column: "total_cents".into(),
                    expr: "(total * 100)::bigint".into(),
                    type_sql: "bigint".into(),
                },
            ],
            overriding: false,
            conflict: vec!["id".into(), "region".into()],
        }
    }

    fn parses(sql: &str) {
        Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap_or_else(|e| panic!("{e}: {sql}"));
    }

    #[test]
    fn every_statement_parses() {
        for m in [in_place(), moved()] {
            for after in [false, true] {
                parses(&m.batch_sql(500, after));
                parses(&m.sweep_end_sql(500, after));
                parses(&m.chunk_end_sql(100, after));
                for upto in [false, true] {
                    parses(&m.sweep_candidates_sql(after, upto));
                    parses(&m.sweep_delete_sql(after, upto));
                    parses(&m.compare_sql(after, upto));
                    parses(&m.mismatches_sql(after, upto));
                }
            }
            parses(&m.estimate_sql());
        }
    }

    #[test]
    fn batches_fix_their_key_range_before_locking_it() {
        let sql = in_place().batch_sql(500, true);
        assert!(
            sql.contains(
                "pgshift_r AS (SELECT pgshift_s.id AS pgshift_k1 FROM public.users AS pgshift_s \
                 WHERE (pgshift_s.id) > (CAST($1::text AS integer)) ORDER BY pgshift_s.id \
                 LIMIT 500)"
            ),
            "{sql}"
        );
        // The locking scan re-checks both bounds; values come from the locked rows.
        assert!(
            sql.contains(
                "WHERE (pgshift_s.id) > (CAST($1::text AS integer)) AND (pgshift_s.id) <= \
                 (SELECT pgshift_k1 FROM pgshift_e) ORDER BY pgshift_s.id FOR UPDATE"
            ),
            "{sql}"
        );
        assert!(sql.contains("AS pgshift_v1 FROM public.users"), "{sql}");
        assert!(sql.contains("SET age_int = pgshift_b.pgshift_v1"), "{sql}");
        // Rows already equal are not rewritten.
        assert!(sql.contains("IS DISTINCT FROM"), "{sql}");
        assert!(!in_place().batch_sql(500, false).contains("$1"));
    }

    #[test]
    fn table_batches_upsert_and_the_sweep_deletes_orphans() {
        let sql = moved().batch_sql(100, true);
        assert!(
            sql.contains(
                "ON CONFLICT (id, region) DO UPDATE SET total_cents = EXCLUDED.total_cents"
            ),
            "{sql}"
        );
        assert!(!sql.contains("DELETE"), "{sql}");
        let sweep = moved().sweep_candidates_sql(true, true);
        assert!(
            sweep.contains(
                "(pgshift_t.id, pgshift_t.region) > (CAST($1::text AS bigint), \
                 CAST($2::text AS text)) AND (pgshift_t.id, pgshift_t.region) <= \
                 (CAST($3::text AS bigint), CAST($4::text AS text))"
            ),
            "{sweep}"
        );
        assert!(
            sweep.contains(
                "NOT EXISTS (SELECT 1 FROM public.orders AS pgshift_s WHERE \
                 pgshift_s.id = pgshift_t.id AND pgshift_s.region = pgshift_t.region)"
            ),
            "{sweep}"
        );
        assert!(sweep.ends_with("FOR UPDATE"), "{sweep}");
        let delete = moved().sweep_delete_sql(true, false);
        assert!(
            delete.contains("ROW(pgshift_t.id, pgshift_t.region)::text = ANY($3::text[])"),
            "{delete}"
        );
        assert!(
            moved()
                .sweep_delete_sql(false, false)
                .contains("WHERE true AND")
        );
    }

    #[test]
    fn compare_ranges_number_their_parameters() {
        let sql = moved().compare_sql(true, true);
        assert!(
            sql.contains("> (CAST($1::text AS bigint), CAST($2::text AS text))"),
            "{sql}"
        );
        assert!(
            sql.contains("<= (CAST($3::text AS bigint), CAST($4::text AS text))"),
            "{sql}"
        );
        let sql = moved().compare_sql(false, true);
        assert!(sql.contains("<= (CAST($1::text AS bigint)"), "{sql}");
        assert!(
            sql.contains("ROW(pgshift_x.id, pgshift_x.region)::text AS pgshift_kt"),
            "{sql}"
        );
    }
}
