//! The catalog and snapshot builder against a real PostgreSQL: table shapes read from
//! `pg_catalog`, snapshots built from a config (with `expand_sql`, expression checks and their
//! refusals), and the DDL runner's retries while a lock is held.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pgshift::catalog::{self, CatalogError};
use pgshift::config::Config;
use pgshift::migration::{ColumnInfo, Phase, QualifiedName};
use pgshift::snapshot::{self, SnapshotError};

/// A config whose control connections go to the test cluster as its superuser.
fn config(migrations: &str) -> Config {
    let cluster = cluster();
    let password = cluster
        .superuser_password()
        .map(|p| format!("password = {}\n", toml_str(p)))
        .unwrap_or_default();
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nupstream = {}\n\n[control]\nuser = {}\n{password}\n{migrations}",
        toml_str(&cluster.upstream()),
        toml_str(cluster.superuser()),
    );
    Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// A `[[migration]]` of kind columns; `extra` is raw TOML for the migration's own keys.
fn migration(db: &TestDb, name: &str, phase: &str, extra: &str, columns: &str) -> String {
    format!(
        "[[migration]]\nname = {name:?}\ndatabase = {:?}\ntable = \"public.users\"\n\
         kind = \"columns\"\nphase = {phase:?}\n{extra}\n{columns}\n",
        db.name
    )
}

const RENAME: &str = "[[migration.columns]]\nold = \"user_name\"\nnew = \"display_name\"\n";

fn users() -> QualifiedName {
    QualifiedName::parse("public.users").unwrap()
}

async fn column_names(client: &tokio_postgres::Client, table: &str) -> Vec<String> {
    client
        .query(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn load_shape_reads_columns_in_order_with_types_defaults_and_the_key() {
    let (db, _) = fresh_database_with(
        "shape",
        "CREATE SCHEMA shop;
         CREATE TABLE shop.\"Order Lines\" (
             tenant int NOT NULL,
             gone int,
             id bigint NOT NULL,
             name varchar(20),
             price numeric(10,2) NOT NULL DEFAULT 0,
             PRIMARY KEY (id, tenant));
         ALTER TABLE shop.\"Order Lines\" DROP COLUMN gone;
         CREATE VIEW shop.v AS SELECT 1 AS x;",
    )
    .await;
    let config = config("");
    let conn = catalog::connect(&config, &db.name).await.unwrap();
    let name = QualifiedName::parse("shop.\"Order Lines\"").unwrap();

    let shape = catalog::load_shape(&conn, &name).await.unwrap().unwrap();

    let column =
        |name: &str, type_oid: u32, type_sql: &str, not_null: bool, default: Option<&str>| {
            ColumnInfo {
                name: name.into(),
                type_oid,
                type_sql: type_sql.into(),
                not_null,
                default: default.map(Into::into),
                generated: false,
                identity_always: false,
            }
        };
    assert_eq!(shape.name, name);
    assert_eq!(
        shape.columns,
        [
            column("tenant", 23, "integer", true, None),
            column("id", 20, "bigint", true, None),
            column("name", 1043, "character varying(20)", false, None),
            column("price", 1700, "numeric(10,2)", true, Some("0")),
        ]
    );
    assert_eq!(
        shape.key,
        ["id", "tenant"],
        "primary key columns in key order"
    );

    for missing in ["shop.v", "shop.nothing", "public.\"Order Lines\""] {
        let name = QualifiedName::parse(missing).unwrap();
        assert_eq!(
            catalog::load_shape(&conn, &name).await.unwrap(),
            None,
            "{missing}"
        );
    }
}

#[tokio::test]
async fn without_a_primary_key_the_first_plain_unique_index_is_the_key() {
    let (db, _) = fresh_database_with(
        "shape_unique",
        "CREATE TABLE t (a int, b int, c int, d int);
         CREATE UNIQUE INDEX t_partial ON t (a) WHERE a > 0;
         CREATE UNIQUE INDEX t_expr ON t ((a + b));
         CREATE UNIQUE INDEX t_cb ON t (c, b) INCLUDE (d);
         CREATE UNIQUE INDEX t_d ON t (d);
         CREATE TABLE bare (a int);",
    )
    .await;
    let conn = catalog::connect(&config(""), &db.name).await.unwrap();
    let t = QualifiedName::parse("t").unwrap();
    let shape = catalog::load_shape(&conn, &t).await.unwrap().unwrap();
    assert_eq!(shape.key, ["c", "b"]);
    let bare = QualifiedName::parse("bare").unwrap();
    let shape = catalog::load_shape(&conn, &bare).await.unwrap().unwrap();
    assert!(shape.key.is_empty());
}

#[tokio::test]
async fn build_resolves_a_rename_in_expand_with_the_table_shape() {
    let (db, _) = fresh_database_with(
        "build_rename",
        "CREATE TABLE users (id int PRIMARY KEY, user_name text NOT NULL, display_name text)",
    )
    .await;
    // A planned migration is not checked at all: its table does not even exist.
    let planned = migration(&db, "later", "planned", "", RENAME).replace("users", "nothing_yet");
    let config = config(&format!(
        "{}{planned}",
        migration(&db, "users_display_name", "expand", "", RENAME)
    ));

    let snapshot = snapshot::build(&config, 1, None).await.unwrap();

    assert_eq!(snapshot.epoch, 1);
    let view = snapshot
        .database(&db.name)
        .expect("the database has migrations");
    let table = view.table(&users()).expect("users is migrated");
    let columns: Vec<&str> = table
        .shape
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(columns, ["id", "user_name", "display_name"]);
    assert_eq!(table.shape.key, ["id"]);
    let m = &table.migrations[0];
    assert_eq!(
        (m.name.as_str(), m.phase),
        ("users_display_name", Phase::Expand)
    );
    assert_eq!(
        (m.pairs[0].up.as_str(), m.pairs[0].down.as_str()),
        ("user_name", "display_name")
    );
    assert_eq!(snapshot.migrations().count(), 1);
    assert_eq!(snapshot.phase("later"), Some(Phase::Planned));
    assert!(view.rewriter.may_touch("select * from Users"));
    assert_eq!(view.tables_named("users").count(), 1);
}

#[tokio::test]
async fn a_missing_new_column_is_refused_naming_the_migration() {
    let (db, _) = fresh_database_with(
        "build_missing",
        "CREATE TABLE users (id int PRIMARY KEY, user_name text)",
    )
    .await;
    let config = config(&migration(&db, "users_display_name", "expand", "", RENAME));

    let err = snapshot::build(&config, 1, None).await.unwrap_err();

    assert_eq!(err.migration(), Some("users_display_name"));
    let message = err.to_string();
    assert!(
        message.contains("new column \"display_name\" does not exist"),
        "{message}"
    );
}

#[tokio::test]
async fn a_missing_table_or_old_column_is_refused_until_contract() {
    let db = fresh_database("build_old").await;
    let direct = db.connect().await;
    let config_in = |phase: &str| config(&migration(&db, "users_display_name", phase, "", RENAME));

    let err = snapshot::build(&config_in("expand"), 1, None)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("table public.users does not exist"),
        "{err}"
    );

    direct
        .batch_execute("CREATE TABLE users (id int PRIMARY KEY, display_name text)")
        .await
        .unwrap();
    for phase in ["expand", "switch"] {
        let err = snapshot::build(&config_in(phase), 1, None)
            .await
            .unwrap_err();
        assert_eq!(err.migration(), Some("users_display_name"));
        assert!(
            err.to_string().contains("old column \"user_name\""),
            "{err}"
        );
    }
    // complete_sql may have dropped the old column.
    for phase in ["contract", "complete"] {
        let snapshot = snapshot::build(&config_in(phase), 1, None).await.unwrap();
        let view = snapshot.database(&db.name).unwrap();
        let shape = &view.table(&users()).unwrap().shape;
        assert!(shape.column("user_name").is_none());
    }
}

#[tokio::test]
async fn expand_sql_adds_the_new_column_when_entering_expand() {
    let (db, direct) = fresh_database_with(
        "build_expand_sql",
        "CREATE TABLE users (id int PRIMARY KEY, user_name text)",
    )
    .await;
    let expand_sql = "expand_sql = \"ALTER TABLE users ADD COLUMN display_name varchar(50)\"";
    let config = config(&migration(
        &db,
        "users_display_name",
        "expand",
        expand_sql,
        RENAME,
    ));

    let first = snapshot::build(&config, 1, None).await.unwrap();

    assert_eq!(
        column_names(&direct, "users").await,
        ["id", "user_name", "display_name"]
    );
    let shape = &first
        .database(&db.name)
        .unwrap()
        .table(&users())
        .unwrap()
        .shape;
    assert_eq!(
        shape.column("display_name").unwrap().type_sql,
        "character varying(50)"
    );

    // Already in expand in the previous snapshot: expand_sql is not run again, so a column
    // dropped behind pgshift's back is reported instead of silently re-created.
    direct
        .batch_execute("ALTER TABLE users DROP COLUMN display_name")
        .await
        .unwrap();
    let err = snapshot::build(&config, 2, Some(&first)).await.unwrap_err();
    assert!(err.to_string().contains("display_name"), "{err}");
    assert_eq!(column_names(&direct, "users").await, ["id", "user_name"]);
}

#[tokio::test]
async fn expressions_that_do_not_compile_against_the_table_are_refused_with_the_server_message() {
    let (db, _) = fresh_database_with(
        "build_bad_up",
        "CREATE TABLE users (id int PRIMARY KEY, user_name text, display_name text, age int)",
    )
    .await;
    let cases = [
        (
            "up = \"user_nme\"\n",
            "42703",
            "column \"user_nme\" does not exist",
        ),
        (
            "down = \"display_name + 1\"\n",
            "42883",
            "operator does not exist: text + integer",
        ),
    ];
    for (expressions, sqlstate, server_message) in cases {
        let config = config(&migration(
            &db,
            "users_display_name",
            "expand",
            "",
            &format!("{RENAME}{expressions}"),
        ));

        let err = snapshot::build(&config, 1, None).await.unwrap_err();

        let message = err.to_string();
        assert!(message.contains("users_display_name"), "{message}");
        assert!(message.contains(server_message), "{message}");
        match &err {
            SnapshotError::Catalog { error, .. } => {
                assert_eq!(error.sqlstate(), Some(sqlstate));
                assert!(error.server_message().unwrap().contains(server_message));
            }
            other => panic!("unexpected error {other:?}"),
        }
    }
}

#[tokio::test]
async fn overlapping_migrations_on_one_table_are_refused() {
    let (db, _) = fresh_database_with(
        "build_overlap",
        "CREATE TABLE users (id int, user_name text, display_name text, nick text)",
    )
    .await;
    let second = "[[migration.columns]]\nold = \"nick\"\nnew = \"display_name\"\n";
    let config = config(&format!(
        "{}{}",
        migration(&db, "users_display_name", "expand", "", RENAME),
        migration(&db, "users_nick", "switch", "", second),
    ));

    let err = snapshot::build(&config, 1, None).await.unwrap_err();

    let message = err.to_string();
    assert!(
        matches!(err, SnapshotError::Overlap { .. })
            && message.contains("users_display_name")
            && message.contains("users_nick"),
        "{message}"
    );
}

/// A database with an empty table `t`, pgshift's control connection to it, and another
/// session holding `t`'s ACCESS EXCLUSIVE lock in an open transaction (commit to release).
struct LockedTable {
    db: TestDb,
    direct: tokio_postgres::Client,
    conn: catalog::ControlConnection,
    holder: tokio_postgres::Client,
}

impl LockedTable {
    async fn new(hint: &str) -> LockedTable {
        let (db, direct) = fresh_database_with(hint, "CREATE TABLE t (id int)").await;
        let conn = catalog::connect(&config(""), &db.name).await.unwrap();
        let holder = db.connect().await;
        holder
            .batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        LockedTable {
            db,
            direct,
            conn,
            holder,
        }
    }
}

#[tokio::test]
async fn run_ddl_retries_while_another_session_holds_the_lock() {
    let LockedTable {
        db: _db,
        direct,
        conn,
        holder,
    } = LockedTable::new("ddl_retry").await;
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        holder.batch_execute("COMMIT").await.unwrap();
    });

    let started = Instant::now();
    catalog::run_ddl(
        &conn,
        "ALTER TABLE t ADD COLUMN a int; ALTER TABLE t ADD COLUMN b int",
        Duration::from_millis(100),
        10,
    )
    .await
    .unwrap();

    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the DDL cannot have run while the lock was held"
    );
    release.await.unwrap();
    assert_eq!(column_names(&direct, "t").await, ["id", "a", "b"]);
    // The lock_timeout was local to the DDL's transaction.
    let timeout: String = conn
        .query_one("SHOW lock_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(timeout, "0");
}

#[tokio::test]
async fn run_ddl_gives_up_after_its_attempts_and_fails_fast_on_other_errors() {
    let LockedTable {
        db: _db,
        direct,
        conn,
        holder,
    } = LockedTable::new("ddl_fail").await;

    let err = catalog::run_ddl(&conn, "DROP TABLE t", Duration::from_millis(50), 2)
        .await
        .unwrap_err();
    assert!(
        matches!(err, CatalogError::LockNotAvailable { attempts: 2, .. }),
        "{err}"
    );
    assert_eq!(err.sqlstate(), Some("55P03"));
    holder.batch_execute("COMMIT").await.unwrap();

    let started = Instant::now();
    let err = catalog::run_ddl(
        &conn,
        "CREATE TABLE made (id int); ALTER TABLE missing ADD COLUMN x int",
        Duration::from_millis(50),
        5,
    )
    .await
    .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "no retry for other errors"
    );
    assert_eq!(err.sqlstate(), Some("42P01"));
    assert!(
        err.to_string()
            .contains("relation \"missing\" does not exist"),
        "{err}"
    );
    assert!(
        column_names(&direct, "made").await.is_empty(),
        "the failed DDL was rolled back as a whole"
    );
    // The control connection is usable afterwards (not left in an aborted transaction).
    catalog::run_ddl(
        &conn,
        "CREATE TABLE made (id int)",
        Duration::from_secs(1),
        1,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn connection_failures_carry_the_server_error() {
    let err = catalog::connect(&config(""), "no_such_database_here")
        .await
        .err()
        .expect("the database does not exist");
    assert!(matches!(err, CatalogError::Connect { .. }), "{err}");
    assert_eq!(err.sqlstate(), Some("3D000"));
    assert!(err.to_string().contains("no_such_database_here"), "{err}");
}
