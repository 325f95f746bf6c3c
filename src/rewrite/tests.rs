//! Table-driven tests of the engine: input SQL and phase → expected SQL (which must re-parse),
//! or a refusal.

use super::*;
use crate::migration::Phase;

mod check;

fn users(rename: Phase, retype: Phase) -> Rewriter {
    Rewriter::new(&[fixtures::users_table(rename, retype)], &[]).unwrap()
}

const EXPAND_DERIVED: &str = "(SELECT id, user_name, age, (user_name)::text AS display_name, (CASE WHEN age ~ '^[0-9]+$' THEN age::integer END)::integer AS age_int FROM public.users)";
const RENAME_DERIVED: &str =
    "(SELECT id, user_name, age, (user_name)::text AS display_name, age_int FROM public.users)";
const SWITCH_DERIVED: &str = "(SELECT id, (display_name)::text AS user_name, (age_int::text)::text AS age, display_name, age_int FROM public.users)";

fn rewritten(rw: &Rewriter, sql: &str) -> String {
    match rw.rewrite(sql) {
        Outcome::Rewritten(s) => s,
        other => panic!("{sql}: expected a rewrite, got {other:?}"),
    }
}

fn refused(rw: &Rewriter, sql: &str) -> Refusal {
    match rw.rewrite(sql) {
        Outcome::Refused(r) => r,
        other => panic!("{sql}: expected a refusal, got {other:?}"),
    }
}

#[test]
fn untouched_statements_pass_unchanged() {
    let rw = users(Phase::Expand, Phase::Expand);
    for sql in [
        "SELECT 1",
        "SELECT * FROM orders WHERE note = 'users'",
        "WITH users AS (SELECT 1 AS id) SELECT id FROM users",
        "INSERT INTO orders (id) VALUES (1)",
    ] {
        assert_eq!(rw.rewrite(sql), Outcome::Unchanged, "{sql}");
    }
    let planned = users(Phase::Planned, Phase::Planned);
    assert!(planned.is_empty());
    assert_eq!(planned.rewrite("SELECT * FROM users"), Outcome::Unchanged);
}

#[test]
fn reads_become_derived_tables_under_the_original_alias() {
    let rw = users(Phase::Expand, Phase::Expand);
    let cases = [
        (
            "SELECT display_name FROM users WHERE id = 1",
            format!("SELECT display_name FROM {EXPAND_DERIVED} AS users WHERE id = 1"),
        ),
        (
            "SELECT u.display_name FROM public.users u JOIN orders o ON o.uid = u.id",
            format!("SELECT u.display_name FROM {EXPAND_DERIVED} u JOIN orders o ON o.uid = u.id"),
        ),
        (
            "select * from \"users\" as x for update",
            format!("select * from {EXPAND_DERIVED} as x for update"),
        ),
        (
            "SELECT a.id FROM users a, users b WHERE a.id = b.id",
            format!("SELECT a.id FROM {EXPAND_DERIVED} a, {EXPAND_DERIVED} b WHERE a.id = b.id"),
        ),
        (
            "SELECT 1 WHERE EXISTS (SELECT 1 FROM users WHERE age_int > 3)",
            format!(
                "SELECT 1 WHERE EXISTS (SELECT 1 FROM {EXPAND_DERIVED} AS users WHERE age_int > 3)"
            ),
        ),
    ];
    for (sql, want) in cases {
        assert_eq!(rewritten(&rw, sql), want, "{sql}");
    }
    let rw = users(Phase::Switch, Phase::Switch);
    assert_eq!(
        rewritten(&rw, "SELECT user_name FROM users"),
        format!("SELECT user_name FROM {SWITCH_DERIVED} AS users")
    );
}

#[test]
fn literals_comments_and_negative_numbers_survive_a_rewrite() {
    let rw = users(Phase::Expand, Phase::Planned);
    let sql = "SELECT 'O''''Brien', - -1, $$users$$ /* users */ FROM users -- users\n WHERE user_name = E'\\'x'";
    let out = rewritten(&rw, sql);
    assert!(
        out.starts_with("SELECT 'O''''Brien', - -1, $$users$$ /* users */ FROM (SELECT"),
        "{out}"
    );
    assert!(
        out.ends_with(") AS users -- users\n WHERE user_name = E'\\'x'"),
        "{out}"
    );
}

#[test]
fn inserts_dual_write_in_expand_and_switch() {
    let rw = users(Phase::Expand, Phase::Expand);
    let cases = [
        (
            "INSERT INTO users (id, user_name) VALUES (1, 'a'), (2, 'b')",
            "INSERT INTO users (id, user_name, display_name) VALUES (1, 'a', (('a')::text)), (2, 'b', (('b')::text))",
        ),
        (
            "INSERT INTO users (id, display_name) VALUES ($1, $2)",
            "INSERT INTO users (id, display_name, user_name) VALUES ($1, $2, (($2)::text))",
        ),
        (
            "INSERT INTO users (id, age) VALUES (1, $1) RETURNING id",
            "INSERT INTO users (id, age, age_int) VALUES (1, $1, (CASE WHEN ($1)::text ~ '^[0-9]+$' THEN ($1)::text::integer END)) RETURNING id",
        ),
        (
            "INSERT INTO users VALUES (1, 'a')",
            "INSERT INTO users (id, user_name, display_name) VALUES (1, 'a', (('a')::text))",
        ),
        (
            "INSERT INTO users (id) VALUES (1)",
            "INSERT INTO users (id) VALUES (1)",
        ),
    ];
    for (sql, want) in cases {
        let got = match rw.rewrite(sql) {
            Outcome::Rewritten(s) => s,
            Outcome::Unchanged => sql.to_owned(),
            other => panic!("{sql}: {other:?}"),
        };
        assert_eq!(got, want, "{sql}");
    }
}

#[test]
fn computed_values_are_evaluated_once_through_a_derived_row() {
    let rw = users(Phase::Expand, Phase::Planned);
    assert_eq!(
        rewritten(
            &rw,
            "INSERT INTO users (id, user_name) VALUES ($1, gen_random_uuid()::text), (2, lower( 'A' )) ON CONFLICT DO NOTHING RETURNING id"
        ),
        "INSERT INTO users (id, user_name, display_name) SELECT pgshift_v.c1, pgshift_v.c2, (pgshift_v.c2) FROM (VALUES (CAST($1 AS integer), CAST(gen_random_uuid()::text AS text)), (CAST(2 AS integer), CAST(lower( 'A' ) AS text))) AS pgshift_v(c1, c2) ON CONFLICT DO NOTHING RETURNING id"
    );
    let rw = users(Phase::Contract, Phase::Planned);
    assert_eq!(
        rewritten(
            &rw,
            "INSERT INTO users (id, user_name) VALUES (1, md5(random()::text))"
        ),
        "INSERT INTO users (id, display_name) SELECT pgshift_v.c1, (pgshift_v.c2) FROM (VALUES (CAST(1 AS integer), CAST(md5(random()::text) AS text))) AS pgshift_v(c1, c2)"
    );
    let rw = users(Phase::Expand, Phase::Planned);
    refused(
        &rw,
        "INSERT INTO users (id, user_name) VALUES (DEFAULT, now()::text)",
    );
}

#[test]
fn copied_values_keep_their_signs_and_casts() {
    // Parser spans of `-3` and `'7'::text` leave out the minus and the cast; copies must not.
    let rw = users(Phase::Planned, Phase::Expand);
    assert_eq!(
        rewritten(
            &rw,
            "INSERT INTO users (id, age_int) VALUES (1, -3), (2, '7'::int)"
        ),
        "INSERT INTO users (id, age_int, age) VALUES (1, -3, ((-3)::integer::text)), (2, '7'::int, (('7'::int)::integer::text))"
    );
    assert_eq!(
        rewritten(&rw, "UPDATE users SET age_int = - 4, id = 2 WHERE id = 1"),
        "UPDATE users SET age = ((- 4)::integer::text), age_int = - 4, id = 2 WHERE id = 1"
    );
}

#[test]
fn computed_update_values_are_evaluated_once_per_row() {
    let rw = users(Phase::Expand, Phase::Planned);
    assert_eq!(
        rewritten(
            &rw,
            "UPDATE users u SET user_name = md5(random()::text) WHERE id > 1"
        ),
        "UPDATE users u SET (user_name, display_name) = (SELECT pgshift_v.c1, (pgshift_v.c1) FROM (SELECT md5(random()::text) AS c1) AS pgshift_v WHERE u.ctid IS NOT NULL) WHERE id > 1"
    );
    let rw = users(Phase::Contract, Phase::Planned);
    assert_eq!(
        rewritten(&rw, "UPDATE users SET user_name = now()::text"),
        "UPDATE users SET display_name = (SELECT (pgshift_v.c1) FROM (SELECT now()::text AS c1) AS pgshift_v WHERE users.ctid IS NOT NULL)"
    );
}

#[test]
fn on_conflict_do_update_writes_both_sides_of_the_existing_row() {
    let rw = users(Phase::Expand, Phase::Planned);
    assert_eq!(
        rewritten(
            &rw,
            "INSERT INTO users AS u (id, user_name) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET user_name = EXCLUDED.user_name WHERE u.display_name <> EXCLUDED.display_name"
        ),
        "INSERT INTO users AS u (id, user_name, display_name) VALUES ($1, $2, (($2)::text)) ON CONFLICT (id) DO UPDATE SET display_name = ((EXCLUDED.user_name)::text), user_name = EXCLUDED.user_name WHERE (u.user_name)::text <> (excluded.user_name)::text"
    );
    let rw = users(Phase::Contract, Phase::Planned);
    assert_eq!(
        rewritten(
            &rw,
            "INSERT INTO users (id, user_name) VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET user_name = excluded.user_name"
        ),
        "INSERT INTO users (id, display_name) VALUES (1, (('a')::text)) ON CONFLICT (id) DO UPDATE SET display_name = (((excluded.display_name)::text)::text)"
    );
}

#[test]
fn tuple_assignments_are_split_per_column() {
    let rw = users(Phase::Expand, Phase::Planned);
    assert_eq!(
        rewritten(
            &rw,
            "UPDATE users SET (id, user_name) = (2, -1::text) WHERE id = 1"
        ),
        "UPDATE users SET display_name = ((-1::text)::text), (id, user_name) = (2, -1::text) WHERE id = 1"
    );
    refused(&rw, "UPDATE users SET (id, user_name) = (SELECT 1, 'x')");
    // A copied value carries the statement's own rewrites (display_name is computed here).
    assert_eq!(
        rewritten(&rw, "UPDATE users SET user_name = display_name || 'x'"),
        "UPDATE users SET display_name = (((users.user_name)::text || 'x')::text), user_name = (users.user_name)::text || 'x'"
    );
}

#[test]
fn insert_select_goes_through_a_derived_row_set() {
    let rw = users(Phase::Expand, Phase::Planned);
    assert_eq!(
        rewritten(
            &rw,
            "INSERT INTO users (id, user_name) SELECT p.id, p.name FROM people p JOIN x ON x.id = p.id ON CONFLICT DO NOTHING"
        ),
        "INSERT INTO users (id, user_name, display_name) SELECT CAST(pgshift_v.c1 AS integer), CAST(pgshift_v.c2 AS text), (CAST(pgshift_v.c2 AS text)) FROM (SELECT p.id, p.name FROM people p JOIN x ON x.id = p.id) AS pgshift_v(c1, c2) ON CONFLICT DO NOTHING"
    );
    // Reads inside the source are rewritten too.
    let out = rewritten(
        &rw,
        "INSERT INTO users (id, user_name) SELECT id + 100, display_name FROM users",
    );
    assert!(
        out.contains("FROM (SELECT id + 100, display_name FROM (SELECT id, user_name"),
        "{out}"
    );
}

#[test]
fn statements_before_a_refused_one_are_kept_rewritten() {
    let rw = users(Phase::Expand, Phase::Planned);
    let r = refused(
        &rw,
        "INSERT INTO users (id, user_name) VALUES (1, 'a'); COMMIT; ALTER TABLE users ADD x int; SELECT 1",
    );
    assert_eq!(
        r.prefix,
        "INSERT INTO users (id, user_name, display_name) VALUES (1, 'a', (('a')::text)); COMMIT; "
    );
    assert_eq!(
        refused(&rw, "ALTER TABLE users ADD x int; SELECT 1").prefix,
        ""
    );
}

#[test]
fn data_modifying_ctes_are_rewritten_as_writes() {
    let rw = users(Phase::Expand, Phase::Planned);
    assert_eq!(
        rewritten(
            &rw,
            "WITH w AS (UPDATE users SET user_name = 'a' WHERE display_name = 'b' RETURNING id), \
             n AS (INSERT INTO users (id, user_name) VALUES (9, 'c') RETURNING id) \
             SELECT w.id, u.display_name FROM w JOIN users u USING (id)"
        ),
        format!(
            "WITH w AS (UPDATE users SET display_name = (('a')::text), user_name = 'a' WHERE (users.user_name)::text = 'b' RETURNING id), \
             n AS (INSERT INTO users (id, user_name, display_name) VALUES (9, 'c', (('c')::text)) RETURNING id) \
             SELECT w.id, u.display_name FROM w JOIN {RENAME_DERIVED} u USING (id)"
        )
    );
}

#[test]
fn a_split_writes_the_old_column_once() {
    use crate::migration::{ColumnPair, ColumnsMigration, MigratedTable};
    let mut table = fixtures::users_table(Phase::Planned, Phase::Planned);
    table.shape.columns.push(table.shape.columns[1].clone());
    table.shape.columns.last_mut().unwrap().name = "last_name".into();
    table.migrations = vec![std::sync::Arc::new(ColumnsMigration {
        name: "split".into(),
        database: "app".into(),
        table: table.shape.name.clone(),
        phase: Phase::Expand,
        pairs: ["display_name", "last_name"]
            .iter()
            .map(|new| ColumnPair {
                old: "user_name".into(),
                new: (*new).into(),
                up: format!(
                    "split_part(user_name, ' ', {})",
                    if *new == "last_name" { 2 } else { 1 }
                ),
                down: "display_name || ' ' || last_name".into(),
            })
            .collect(),
    })];
    let rw = Rewriter::new(&[table as MigratedTable], &[]).unwrap();
    assert_eq!(
        rewritten(
            &rw,
            "INSERT INTO users (id, display_name, last_name) VALUES (1, 'a', 'b')"
        ),
        "INSERT INTO users (id, display_name, last_name, user_name) VALUES (1, 'a', 'b', (('a')::text || ' ' || ('b')::text))"
    );
    assert_eq!(
        rewritten(&rw, "INSERT INTO users (id, user_name) VALUES (1, 'a b')"),
        "INSERT INTO users (id, user_name, display_name, last_name) VALUES (1, 'a b', (split_part(('a b')::text, ' ', 1)), (split_part(('a b')::text, ' ', 2)))"
    );
}

#[test]
fn contract_writes_only_the_new_side() {
    let rw = users(Phase::Contract, Phase::Planned);
    assert_eq!(
        rewritten(&rw, "INSERT INTO users (id, user_name) VALUES (1, 'a')"),
        "INSERT INTO users (id, display_name) VALUES (1, (('a')::text))"
    );
    assert_eq!(
        rewritten(&rw, "UPDATE users SET user_name = $1 WHERE id = 2"),
        "UPDATE users SET display_name = (($1)::text) WHERE id = 2"
    );
}

#[test]
fn updates_set_the_counterpart_and_read_the_authoritative_side() {
    let rw = users(Phase::Expand, Phase::Planned);
    assert_eq!(
        rewritten(
            &rw,
            "UPDATE users SET user_name = 'x' WHERE display_name = 'y'"
        ),
        "UPDATE users SET display_name = (('x')::text), user_name = 'x' WHERE (users.user_name)::text = 'y'"
    );
    assert_eq!(
        rewritten(
            &rw,
            "UPDATE users u SET display_name = $1 WHERE u.id = $2 RETURNING u.display_name"
        ),
        "UPDATE users u SET user_name = (($1)::text), display_name = $1 WHERE u.id = $2 RETURNING (u.user_name)::text AS display_name"
    );
    let rw = users(Phase::Switch, Phase::Planned);
    assert_eq!(
        rewritten(&rw, "DELETE FROM users WHERE user_name = 'gone'"),
        "DELETE FROM users WHERE (users.display_name)::text = 'gone'"
    );
}

#[test]
fn unsafe_statements_are_refused_naming_the_migration() {
    let rw = users(Phase::Expand, Phase::Expand);
    for sql in [
        "ALTER TABLE users ADD COLUMN x int",
        "COPY users FROM STDIN",
        "SELEC * FROM users",
        "UPDATE users SET user_name = 'a' FROM orders WHERE display_name = orders.x",
        "SELECT * FROM (SELECT 1) x WHERE EXISTS (WITH w AS (DELETE FROM users RETURNING id) SELECT 1)",
        "INSERT INTO users (id, user_name) SELECT $1, name FROM people",
        "INSERT INTO users SELECT * FROM people",
    ] {
        let r = refused(&rw, sql);
        assert!(r.message().starts_with("pgshift:"), "{sql}");
        assert!(r.migration.contains("users_"), "{sql}: {r:?}");
    }
}

/// Random statements over the test schema: the engine never panics, and whatever it returns
/// as a rewrite parses into the same number of statements.
#[test]
fn random_statements_never_panic_and_rewrites_reparse() {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let tables = ["users", "public.users", "\"users\"", "orders", "users u"];
    let columns = [
        "id",
        "user_name",
        "display_name",
        "age",
        "age_int",
        "u.id",
        "u.display_name",
        "*",
    ];
    let values = [
        "1",
        "'x'",
        "$1",
        "NULL",
        "-1",
        "'O''Brien'",
        "now()",
        "DEFAULT",
        "(1 + 2)",
    ];
    let phases = [
        Phase::Planned,
        Phase::Expand,
        Phase::Switch,
        Phase::Contract,
    ];
    let pick =
        |rng: &mut rand::rngs::StdRng, xs: &[&'static str]| xs[rng.random_range(0..xs.len())];
    for _ in 0..3000 {
        let rw = users(pick_phase(&mut rng, &phases), pick_phase(&mut rng, &phases));
        let t = pick(&mut rng, &tables);
        let c = pick(&mut rng, &columns);
        let c2 = pick(&mut rng, &columns[..5]);
        let v = pick(&mut rng, &values);
        let sql = match rng.random_range(0..8) {
            0 => format!("SELECT {c} FROM {t} WHERE {c2} = {v}"),
            1 => format!("SELECT {c} FROM {t} JOIN orders o ON o.id = {c2} ORDER BY 1"),
            2 => format!(
                "INSERT INTO {} ({c2}) VALUES ({v}) RETURNING {c}",
                t.split(' ').next().unwrap()
            ),
            3 => format!("UPDATE {t} SET {c2} = {v} WHERE {c2} IS NOT NULL RETURNING {c}"),
            4 => format!("DELETE FROM {t} WHERE {c2} IN (SELECT {c2} FROM {t})"),
            5 => {
                format!("WITH x AS (SELECT {c} FROM {t}) SELECT * FROM x UNION SELECT {c} FROM {t}")
            }
            6 => format!("SELECT ({v}); UPDATE {t} SET {c2} = {v}; SELECT {c} FROM {t}"),
            _ => format!("INSERT INTO users VALUES ({v}, {v}) ON CONFLICT DO NOTHING"),
        };
        match rw.rewrite(&sql) {
            Outcome::Rewritten(out) => {
                let before = Parser::parse_sql(&PostgreSqlDialect {}, &sql)
                    .unwrap()
                    .len();
                let after = Parser::parse_sql(&PostgreSqlDialect {}, &out)
                    .unwrap_or_else(|e| panic!("{sql} → {out}: {e}"));
                assert_eq!(before, after.len(), "{sql} → {out}");
            }
            Outcome::Refused(r) => assert!(r.message().starts_with("pgshift:")),
            Outcome::Unchanged => {}
        }
    }
}

fn pick_phase(rng: &mut rand::rngs::StdRng, phases: &[Phase]) -> Phase {
    use rand::RngExt;
    phases[rng.random_range(0..phases.len())]
}

fn moves(phase: Phase) -> Rewriter {
    Rewriter::new(&[], &[fixtures::orders_move(phase)]).unwrap()
}

#[test]
fn table_move_reads_come_from_the_authoritative_table() {
    let expand = moves(Phase::Expand);
    assert_eq!(expand.rewrite("SELECT * FROM orders"), Outcome::Unchanged);
    let read_new = rewritten(&expand, "SELECT total_cents FROM orders_v2 WHERE id = $1");
    assert!(
        read_new.contains("(((total * 100)::bigint))::bigint AS total_cents")
            && read_new.contains("FROM public.orders) AS orders_v2"),
        "{read_new}"
    );
    let switch = moves(Phase::Switch);
    assert_eq!(
        switch.rewrite("SELECT * FROM orders_v2"),
        Outcome::Unchanged
    );
    let read_old = rewritten(&switch, "SELECT o.note FROM orders o");
    assert!(
        read_old.contains("(NULL)::text AS note") && read_old.contains("FROM public.orders_v2) o"),
        "{read_old}"
    );
}

#[test]
fn table_move_writes_mirror_onto_the_other_table_in_one_statement() {
    let expand = moves(Phase::Expand);
    let insert = rewritten(
        &expand,
        "INSERT INTO orders (id, customer, total) VALUES ($1, $2, $3)",
    );
    assert!(
        insert.starts_with(
            "WITH pgshift_w AS (INSERT INTO orders (id, customer, total) VALUES ($1, $2, $3) RETURNING *) \
             INSERT INTO public.orders_v2 (id, customer, total_cents) SELECT"
        ) && insert.ends_with("ON CONFLICT (id) DO UPDATE SET id = EXCLUDED.id, customer = EXCLUDED.customer, total_cents = EXCLUDED.total_cents"),
        "{insert}"
    );
    let update = rewritten(
        &expand,
        "UPDATE orders SET total = $1 WHERE id = $2 RETURNING *",
    );
    assert!(
        update.starts_with("WITH pgshift_u AS MATERIALIZED (SELECT orders.id AS pgshift_c1")
            && update.contains("($1)::numeric(12,2) AS pgshift_s1")
            && update.contains("FOR UPDATE OF orders")
            && update.ends_with("RETURNING orders.*"),
        "{update}"
    );
    let contract = moves(Phase::Contract);
    let delete = rewritten(&contract, "DELETE FROM orders WHERE customer = $1");
    assert!(
        delete.contains("DELETE FROM public.orders_v2 AS pgshift_t USING pgshift_d")
            && !delete.contains("pgshift_m"),
        "contract writes the new table only: {delete}"
    );
    assert_eq!(
        contract.rewrite("DELETE FROM orders_v2 WHERE id = 1"),
        Outcome::Unchanged
    );
}

#[test]
fn table_move_refusals_name_the_migration() {
    let expand = moves(Phase::Expand);
    for sql in [
        "TRUNCATE orders",
        "COPY orders_v2 FROM STDIN",
        "ALTER TABLE orders ADD COLUMN x int",
        "UPDATE orders SET id = 2 WHERE id = 1",
        "WITH w AS (DELETE FROM orders RETURNING id) SELECT * FROM w",
    ] {
        match expand.rewrite(sql) {
            Outcome::Refused(r) => assert_eq!(r.migration, "orders_v2", "{sql}"),
            other => panic!("{sql}: {other:?}"),
        }
    }
}

#[test]
fn transaction_control_beside_a_table_move_passes() {
    let expand = moves(Phase::Expand);
    for sql in [
        "BEGIN; UPDATE orders SET note = 'tx' WHERE id = 1; COMMIT",
        "SET statement_timeout = '5s'; SELECT * FROM orders",
        "START TRANSACTION; SAVEPOINT s; DELETE FROM orders_v2 WHERE id = 1; RELEASE SAVEPOINT s; COMMIT",
    ] {
        assert!(
            !matches!(expand.rewrite(sql), Outcome::Refused(_)),
            "{sql}: {:?}",
            expand.rewrite(sql)
        );
    }
}

/// `full_name` split into `first_name` + `last_name` (config/examples/column-split.toml) in
/// `phase`; `dropped`: `complete_sql` dropped `full_name`.
fn split(phase: Phase, dropped: bool) -> Rewriter {
    use crate::migration::{ColumnInfo, ColumnPair, ColumnsMigration, MigratedTable, TableShape};
    let col = |name: &str, oid: u32, ty: &str| ColumnInfo {
        name: name.into(),
        type_oid: oid,
        type_sql: ty.into(),
        not_null: false,
        default: None,
        generated: false,
        identity_always: false,
    };
    let mut columns = vec![col("id", 23, "integer")];
    if !dropped {
        columns.push(col("full_name", 25, "text"));
    }
    columns.extend([
        col("email", 25, "text"),
        col("first_name", 25, "text"),
        col("last_name", 25, "text"),
    ]);
    let shape = TableShape {
        name: QualifiedName::parse("public.users").unwrap(),
        columns,
        key: vec!["id".into()],
    };
    let pair = |new: &str, up: &str| ColumnPair {
        old: "full_name".into(),
        new: new.into(),
        up: up.into(),
        down: "concat_ws(' ', first_name, last_name)".into(),
    };
    let table = MigratedTable {
        migrations: vec![std::sync::Arc::new(ColumnsMigration {
            name: "split".into(),
            database: "app".into(),
            table: shape.name.clone(),
            phase,
            pairs: vec![
                pair("first_name", "split_part(full_name, ' ', 1)"),
                pair("last_name", "split_part(full_name, ' ', 2)"),
            ],
        })],
        shape,
    };
    Rewriter::new(&[table], &[]).unwrap()
}

#[test]
fn a_split_update_of_one_part_keeps_the_others_as_read() {
    // Expand: the other part is up(old) of the row, not its stored (maybe NULL) value.
    assert_eq!(
        rewritten(
            &split(Phase::Expand, false),
            "UPDATE users SET last_name = 'X' WHERE id = 1"
        ),
        "UPDATE users SET full_name = (concat_ws(' ', (split_part(users.full_name, ' ', 1))::text, ('X')::text)), last_name = 'X' WHERE id = 1"
    );
    // Switch: the stored new columns are the truth.
    assert_eq!(
        rewritten(
            &split(Phase::Switch, false),
            "UPDATE users u SET last_name = 'X' WHERE id = 1"
        ),
        "UPDATE users u SET full_name = (concat_ws(' ', u.first_name, ('X')::text)), last_name = 'X' WHERE id = 1"
    );
}

#[test]
fn a_split_old_column_written_in_contract_writes_every_part() {
    for dropped in [false, true] {
        let rw = split(Phase::Contract, dropped);
        assert_eq!(
            rewritten(&rw, "INSERT INTO users (id, full_name) VALUES (1, 'a b')"),
            "INSERT INTO users (id, first_name, last_name) VALUES (1, (split_part(('a b')::text, ' ', 1)), (split_part(('a b')::text, ' ', 2)))"
        );
        assert_eq!(
            rewritten(&rw, "UPDATE users SET full_name = $1 WHERE id = 2"),
            "UPDATE users SET last_name = (split_part(($1)::text, ' ', 2)), first_name = (split_part(($1)::text, ' ', 1)) WHERE id = 2"
        );
        let r = refused(&rw, "UPDATE users SET full_name = 'a', first_name = 'b'");
        assert!(r.reason.contains("both full_name and first_name"), "{r:?}");
    }
}

#[test]
fn after_complete_star_lists_the_physical_columns_and_old_names_answer_once() {
    let rw = split(Phase::Complete, true);
    let derived = "(SELECT id, email, first_name, last_name, (concat_ws(' ', first_name, last_name)) AS full_name FROM public.users)";
    assert_eq!(
        rewritten(&rw, "SELECT full_name FROM users"),
        format!("SELECT full_name FROM {derived} AS users")
    );
    assert_eq!(
        rewritten(&rw, "SELECT * FROM users u JOIN orders o ON o.uid = u.id"),
        format!(
            "SELECT u.id, u.email, u.first_name, u.last_name, o.* FROM {derived} u JOIN orders o ON o.uid = u.id"
        )
    );
    assert_eq!(
        rewritten(&rw, "SELECT \"Users\".*, 1 FROM users AS \"Users\""),
        format!(
            "SELECT \"Users\".id, \"Users\".email, \"Users\".first_name, \"Users\".last_name, 1 FROM {derived} AS \"Users\""
        )
    );
    // `*` of other tables and of a contract table (whose old column still exists) is kept.
    assert_eq!(
        rewritten(&rw, "SELECT o.* FROM orders o JOIN users u ON o.uid = u.id"),
        format!("SELECT o.* FROM orders o JOIN {derived} u ON o.uid = u.id")
    );
    let contract = split(Phase::Contract, false);
    assert!(rewritten(&contract, "SELECT * FROM users").starts_with("SELECT * FROM"));
    for sql in [
        "SELECT * FROM users JOIN orders USING (id)",
        "SELECT * FROM users NATURAL JOIN orders",
        "SELECT j.* FROM (users JOIN orders ON true) AS j",
        "SELECT * FROM users AS u(a, b)",
    ] {
        let r = refused(&rw, sql);
        assert!(r.reason.contains("name the columns"), "{sql}: {r:?}");
    }
}
