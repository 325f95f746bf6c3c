use std::sync::Mutex;

use metrics::{
    Counter, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};

use super::*;
use crate::migration::ColumnInfo;
use crate::rewrite::Prefilter;

const PROXY: &str = "[proxy]\nlisten = \"127.0.0.1:0\"\nupstream = \"db:5432\"\n";

fn config(migrations: &str) -> Config {
    Config::parse(&format!("{PROXY}{migrations}")).unwrap()
}

fn migration(name: &str, table: &str, phase: &str, columns: &[(&str, &str)]) -> String {
    let mut s = format!(
        "[[migration]]\nname = {name:?}\ndatabase = \"app\"\ntable = {table:?}\n\
         kind = \"columns\"\nphase = {phase:?}\n"
    );
    for (old, new) in columns {
        s.push_str(&format!(
            "[[migration.columns]]\nold = {old:?}\nnew = {new:?}\n"
        ));
    }
    s
}

fn shape(schema: &str, name: &str, columns: &[&str]) -> TableShape {
    TableShape {
        name: QualifiedName {
            schema: schema.into(),
            name: name.into(),
        },
        columns: columns
            .iter()
            .map(|c| ColumnInfo {
                name: (*c).into(),
                type_oid: 25,
                type_sql: "text".into(),
                not_null: false,
                default: None,
                generated: false,
                identity_always: false,
            })
            .collect(),
        key: vec![],
    }
}

fn migrated(shape: TableShape, migrations: &[&ColumnsMigration]) -> MigratedTable {
    MigratedTable {
        shape,
        migrations: migrations.iter().map(|m| Arc::new((*m).clone())).collect(),
    }
}

fn columns_of(config: &Config, i: usize) -> ColumnsMigration {
    columns_migration(&config.migrations[i]).unwrap()
}

#[test]
fn up_defaults_to_the_old_column_and_down_to_the_new_one() {
    let c = config(&migration(
        "rename",
        "Public.Users",
        "expand",
        &[("user_name", "display_name"), ("Weird Name", "select")],
    ));
    let m = columns_of(&c, 0);
    assert_eq!(
        m.table,
        QualifiedName {
            schema: "public".into(),
            name: "users".into()
        }
    );
    assert_eq!(m.phase, Phase::Expand);
    let got: Vec<(&str, &str)> = m
        .pairs
        .iter()
        .map(|p| (p.up.as_str(), p.down.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("user_name", "display_name"),
            ("\"Weird Name\"", "\"select\"")
        ]
    );
}

#[test]
fn given_expressions_are_kept_as_written() {
    let text = format!(
        "{}up = \"CASE WHEN age ~ '^[0-9]+$' THEN age::integer END\"\ndown = \"age_int::text\"\n",
        migration("age", "users", "expand", &[("age", "age_int")])
    );
    let m = columns_of(&config(&text), 0);
    assert_eq!(
        m.pairs[0].up,
        "CASE WHEN age ~ '^[0-9]+$' THEN age::integer END"
    );
    assert_eq!(m.pairs[0].down, "age_int::text");
}

#[test]
fn expressions_must_be_exactly_one_expression() {
    for bad in ["a; DROP TABLE users", "a b", "", "(a", "1 +"] {
        let text = format!(
            "{}up = {bad:?}\n",
            migration("bad_up", "users", "expand", &[("a", "b")])
        );
        let err = columns_migration(&config(&text).migrations[0]).unwrap_err();
        assert_eq!(err.migration(), Some("bad_up"), "{bad:?}");
        let message = err.to_string();
        assert!(message.contains("up of column \"b\""), "{bad:?}: {message}");
    }
    let bad_table = config(&migration("t", "a.b.c", "expand", &[("a", "b")]));
    assert!(
        columns_migration(&bad_table.migrations[0])
            .unwrap_err()
            .to_string()
            .contains("\"t\"")
    );
}

#[test]
fn overlapping_active_migrations_on_one_table_are_refused() {
    let c = config(&format!(
        "{}{}{}{}",
        migration("first", "users", "expand", &[("a", "b")]),
        migration("disjoint", "users", "switch", &[("c", "d")]),
        migration("other_table", "public.orders", "expand", &[("a", "b")]),
        migration("clash", "public.users", "expand", &[("e", "b")]),
    ));
    let err = plan(&c).err().expect("overlap is refused");
    match &err {
        SnapshotError::Overlap {
            first,
            second,
            column,
            ..
        } => {
            assert_eq!((first.as_str(), second.as_str()), ("first", "clash"));
            assert_eq!(column, "b");
        }
        other => panic!("unexpected {other}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("first") && message.contains("clash"),
        "{message}"
    );
}

#[test]
fn planned_migrations_do_not_count_as_active() {
    let c = config(&format!(
        "{}{}",
        migration("active", "users", "expand", &[("a", "b")]),
        migration("later", "users", "planned", &[("a", "b")]),
    ));
    let plan = plan(&c).unwrap();
    let active: Vec<&str> = plan
        .active
        .iter()
        .map(|a| a.migration.name.as_str())
        .collect();
    assert_eq!(active, ["active"]);
    let phases: Vec<(&str, Phase)> = plan.phases.iter().map(|(n, p)| (n.as_str(), *p)).collect();
    assert_eq!(
        phases,
        [("active", Phase::Expand), ("later", Phase::Planned)]
    );
}

/// A table move leaves planned as a move of its own, and a moved table cannot also be under
/// a column migration (both would rewrite the same statements).
#[test]
fn table_moves_are_planned_apart_and_do_not_overlap() {
    let table_migration = |phase: &str| {
        format!(
            "[[migration]]\nname = \"orders_v2\"\ndatabase = \"app\"\n\
             kind = \"table\"\ntable = \"orders\"\nnew_table = \"orders_v2\"\n\
             key = [\"id\"]\nphase = \"{phase}\"\n"
        )
    };
    let planned = config(&table_migration("planned"));
    let p = plan(&planned).unwrap();
    assert!(p.active.is_empty() && p.moves.is_empty());
    let expand = config(&table_migration("expand"));
    let p = plan(&expand).unwrap();
    assert!(p.active.is_empty());
    assert_eq!(p.moves.len(), 1);
    let both = config(&format!(
        "{}{}",
        table_migration("expand"),
        migration("rename", "orders_v2", "expand", &[("a", "b")])
    ));
    let err = plan(&both).err().unwrap().to_string();
    assert!(
        err.contains("orders_v2") && err.contains("rename") && err.contains("another active"),
        "{err}"
    );
}

#[test]
fn a_split_old_column_is_one_migration_not_an_overlap() {
    let text = format!(
        "{}down = \"first || ' ' || last\"\n[[migration.columns]]\nold = \"name\"\nnew = \"last\"\n\
         down = \"first || ' ' || last\"\n",
        migration("split", "users", "expand", &[("name", "first")])
    );
    let c = config(&text);
    let plan = plan(&c).unwrap();
    assert_eq!(plan.active[0].migration.pairs.len(), 2);
}

#[test]
fn migrations_are_grouped_by_database_and_table() {
    let c = config(&format!(
        "[control]\ndatabase = \"app\"\n{}{}{}{}",
        migration("a", "users", "expand", &[("a", "b")]),
        migration("b", "orders", "expand", &[("a", "b")]),
        migration("c", "users", "switch", &[("c", "d")]),
        migration("d", "users", "expand", &[("e", "f")]).replace("\"app\"", "\"other\""),
    ));
    let grouped = group(plan(&c).unwrap().active);
    let mut summary = Vec::new();
    for (db, tables) in grouped {
        for (table, migrations) in tables {
            for a in migrations {
                summary.push(format!("{db} {table} {}", a.migration.name));
            }
        }
    }
    assert_eq!(
        summary,
        [
            "app public.users a",
            "app public.users c",
            "app public.orders b",
            "other public.users d"
        ]
    );
}

#[test]
fn a_database_view_finds_tables_and_prefers_public_for_unqualified_names() {
    let c = config(&format!(
        "{}{}{}",
        migration("a", "users", "expand", &[("a", "b")]),
        migration("b", "audit.users", "expand", &[("a", "b")]),
        migration("c", "zzz.orders", "expand", &[("a", "b")]),
    ));
    let (a, b, m3) = (columns_of(&c, 0), columns_of(&c, 1), columns_of(&c, 2));
    let view = DatabaseView::new(vec![
        migrated(shape("zzz", "orders", &["a", "b"]), &[&m3]),
        migrated(shape("audit", "users", &["a", "b"]), &[&b]),
        migrated(shape("public", "users", &["a", "b"]), &[&a]),
    ])
    .unwrap();
    let schemas: Vec<&str> = view
        .tables_named("users")
        .map(|t| t.shape.name.schema.as_str())
        .collect();
    assert_eq!(schemas, ["public", "audit"]);
    assert_eq!(view.tables_named("Users").count(), 0);
    assert_eq!(view.table(&b.table).unwrap().migrations[0].name, "b");
    assert!(
        view.table(&QualifiedName::parse("public.orders").unwrap())
            .is_none()
    );
    assert!(view.rewriter.may_touch("SELECT * FROM ORDERS"));
    assert!(!view.rewriter.may_touch("SELECT * FROM accounts"));

    let snapshot = Snapshot::new(7, [("app".to_string(), view)]);
    assert_eq!(snapshot.epoch, 7);
    assert_eq!(snapshot.migrations().count(), 3);
    assert_eq!(snapshot.phase("c"), Some(Phase::Expand));
    assert!(snapshot.database("app").is_some());
    assert!(snapshot.database("other").is_none());
    assert_eq!(Snapshot::empty(0).migrations().count(), 0);
}

#[test]
fn expand_sql_runs_only_when_entering_expand() {
    // `expand_sql` belongs to the migration's table, before its columns.
    let text = migration("m", "users", "expand", &[("a", "b")]).replace(
        "phase = \"expand\"\n",
        "phase = \"expand\"\nexpand_sql = \"ALTER TABLE users ADD COLUMN b text\"\n",
    );
    let c = config(&text);
    let plan = plan(&c).unwrap();
    let active = &plan.active[0];
    let with_phase = |phase: Phase| {
        let mut m = active.migration.clone();
        m.phase = phase;
        Snapshot::new(
            1,
            [(
                "app".to_string(),
                DatabaseView::new(vec![migrated(shape("public", "users", &["a", "b"]), &[&m])])
                    .unwrap(),
            )],
        )
    };
    assert!(entering_expand_sql(active, None).is_some());
    assert!(entering_expand_sql(active, Some(&Snapshot::empty(1))).is_some());
    assert!(entering_expand_sql(active, Some(&with_phase(Phase::Planned))).is_some());
    assert!(entering_expand_sql(active, Some(&with_phase(Phase::Expand))).is_none());
    assert!(entering_expand_sql(active, Some(&with_phase(Phase::Switch))).is_none());
}

#[test]
fn old_columns_may_only_be_missing_from_contract_on() {
    let c = config(&migration("m", "users", "expand", &[("a", "b")]));
    let mut m = columns_of(&c, 0);
    let without_old = shape("public", "users", &["b"]);
    assert!(check_old_columns(&shape("public", "users", &["a", "b"]), &m).is_ok());
    for phase in [Phase::Expand, Phase::Switch] {
        m.phase = phase;
        let err = check_old_columns(&without_old, &m).unwrap_err().to_string();
        assert!(
            err.contains("\"m\"") && err.contains("old column \"a\""),
            "{err}"
        );
    }
    for phase in [Phase::Contract, Phase::Complete] {
        m.phase = phase;
        assert!(check_old_columns(&without_old, &m).is_ok());
    }
    assert_eq!(
        missing_new_column(&shape("public", "users", &["a"]), &m),
        Some("b")
    );
}

#[test]
fn epochs_only_move_forward() {
    let store = SnapshotStore::new(Snapshot::empty(1));
    store.publish(Snapshot::empty(2));
    let held = store.load();
    store.publish(Snapshot::empty(5));
    assert_eq!(held.epoch, 2, "a loaded snapshot never changes");
    assert_eq!(store.load().epoch, 5);
    for stale in [5, 3] {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            store.publish(Snapshot::empty(stale))
        }));
        assert!(result.is_err(), "epoch {stale} over 5 must be refused");
        assert_eq!(store.load().epoch, 5);
    }
}

#[test]
fn phases_are_numbered_for_the_gauge() {
    let numbers: Vec<f64> = [
        Phase::Planned,
        Phase::Expand,
        Phase::Switch,
        Phase::Contract,
        Phase::Complete,
    ]
    .into_iter()
    .map(phase_metric_value)
    .collect();
    assert_eq!(numbers, [0.0, 1.0, 2.0, 3.0, 4.0]);
}

/// Records the last value of every gauge, keyed `name{label=value,…}`.
#[derive(Default)]
struct GaugeRecorder {
    values: Arc<Mutex<BTreeMap<String, f64>>>,
}

struct RecordedGauge {
    key: String,
    values: Arc<Mutex<BTreeMap<String, f64>>>,
}

impl GaugeFn for RecordedGauge {
    fn increment(&self, value: f64) {
        *self
            .values
            .lock()
            .unwrap()
            .entry(self.key.clone())
            .or_default() += value;
    }
    fn decrement(&self, value: f64) {
        self.increment(-value);
    }
    fn set(&self, value: f64) {
        self.values.lock().unwrap().insert(self.key.clone(), value);
    }
}

impl Recorder for GaugeRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        Gauge::from_arc(Arc::new(RecordedGauge {
            key: format!("{}{{{}}}", key.name(), labels.join(",")),
            values: self.values.clone(),
        }))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[test]
fn publishing_sets_the_epoch_and_every_configured_phase() {
    let recorder = GaugeRecorder::default();
    let c = config(&format!(
        "{}{}",
        migration("renamed", "users", "switch", &[("a", "b")]),
        migration("later", "users", "planned", &[("c", "d")]),
    ));
    let snapshot = Snapshot {
        epoch: 9,
        databases: HashMap::new(),
        phases: plan(&c).unwrap().phases,
        watched: Arc::new(Prefilter::new([])),
    };
    metrics::with_local_recorder(&recorder, || {
        let store = SnapshotStore::new(Snapshot::empty(3));
        store.publish(snapshot);
    });
    let values = recorder.values.lock().unwrap().clone();
    let expected: BTreeMap<String, f64> = [
        ("pgshift_epoch{}", 9.0),
        ("pgshift_phase{migration=later}", 0.0),
        ("pgshift_phase{migration=renamed}", 2.0),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(values, expected);
}
