//! The final check of a rewrite (docs/rewrite.md, "Check"): which edits need no second parse,
//! which are checked through a stand-in, and that the shortcuts agree with parsing the output.

use super::*;

/// What the final check of `sql`'s rewrite parses (docs/rewrite.md, "Check").
fn check_of(rw: &Rewriter, sql: &str) -> splice::CheckText {
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
    let index = splice::LineIndex::new(sql);
    let mut edits = splice::Edits::default();
    for statement in &statements {
        rw.rewrite_statement(statement, &index, &mut edits)
            .unwrap_or_else(|r| panic!("{sql}: {r:?}"));
    }
    assert!(!edits.is_empty(), "{sql}: nothing rewritten");
    edits.check_text(sql).unwrap()
}

#[test]
fn top_level_reads_need_no_second_parse_and_others_are_parsed() {
    use splice::CheckText;
    let rw = users(Phase::Expand, Phase::Expand);
    for sql in [
        "SELECT u.id, u.display_name FROM users u JOIN orders o ON o.user_id = u.id",
        "SELECT * FROM public.users WHERE id = $1",
        "select * from \"users\" as x for update",
        "SELECT 1 FROM orders,users",
        "SELECT * FROM users;\nSELECT 2 FROM orders JOIN users ON true",
        "UPDATE orders SET total = 1 FROM users WHERE users.id = orders.user_id",
        "DELETE FROM orders USING users u WHERE u.id = orders.user_id",
        "INSERT INTO orders (id) SELECT id FROM users",
        "SELECT * FROM users UNION SELECT * FROM users",
    ] {
        assert_eq!(check_of(&rw, sql), CheckText::Neutral, "{sql}");
    }
    for sql in [
        // Inside parentheses: subqueries, derived tables, nested joins, CTE bodies.
        "SELECT * FROM orders WHERE user_id IN (SELECT id FROM users)",
        "SELECT * FROM (SELECT * FROM users) s",
        "SELECT * FROM (users u JOIN orders o ON true)",
        "WITH c AS (SELECT * FROM users) SELECT * FROM c",
        "(SELECT * FROM users)",
        "COPY (SELECT * FROM users) TO STDOUT",
        "WITH w AS (UPDATE orders SET total = 1 FROM users RETURNING orders.id) SELECT 1",
        // Other edits, or a name whose surroundings the argument does not cover.
        "SELECT * FROM users WHERE display_name = 'x'; INSERT INTO users (id, age) VALUES (1, '2')",
        "SELECT * FROM\"users\"",
        "SELECT * FROM users/* c */",
        "SELECT * FROM users TABLESAMPLE SYSTEM (1)",
        "UPDATE users SET user_name = $1 WHERE id = $2",
    ] {
        assert_eq!(check_of(&rw, sql), CheckText::Output, "{sql}");
    }
}

#[test]
fn a_table_move_insert_is_checked_with_a_stand_in_for_its_mirror() {
    use splice::CheckText;
    let rw = moves(Phase::Expand);
    let sql = "INSERT INTO orders (id, customer, total) VALUES ($1, $2, $3)";
    assert_eq!(
        check_of(&rw, sql),
        CheckText::StandIns(
            "WITH pgshift_w AS (INSERT INTO orders (id, customer, total) VALUES ($1, $2, $3) \
             RETURNING *) INSERT INTO pgshift_check SELECT 1"
                .into()
        )
    );
    assert!(matches!(
        check_of(&rw, "INSERT INTO orders (id) VALUES (1);\nSELECT 1"),
        CheckText::StandIns(_)
    ));
    for sql in [
        "INSERT INTO orders (id, customer, total) VALUES ($1, $2, $3) RETURNING id",
        "INSERT INTO orders (id, customer, total) VALUES ($1, $2, $3)-- c",
    ] {
        assert_eq!(check_of(&rw, sql), CheckText::Output, "{sql}");
    }
}

/// Table references in many contexts and spellings: whatever shortcut the check takes, it
/// agrees with parsing the whole output (asserted inside the engine in debug builds), and a
/// rewrite parses into as many statements.
#[test]
fn check_shortcuts_agree_with_parsing_the_output() {
    let tables = [
        "users",
        "public.users",
        "\"users\"",
        "PUBLIC.USERS",
        "users u",
        "users AS u",
        "users AS u (a, b, c, d, e)",
        "users\n",
        "users/*c*/",
        "users--c\n",
        "public . users",
        "\"public\".\"users\" x",
        "users\"u\"",
        "users é",
        "orders_v2",
        "orders_v2 v",
        "public.orders_v2",
    ];
    let contexts = [
        "SELECT * FROM {t}",
        "SELECT u.id FROM {t} JOIN orders o ON o.user_id = u.id WHERE u.age_int > $1",
        "SELECT 1 FROM orders,{t}",
        "SELECT 1 FROM orders CROSS JOIN {t} NATURAL JOIN orders",
        "SELECT 1 FROM ({t} JOIN orders ON true)",
        "SELECT 1 WHERE EXISTS (SELECT 1 FROM {t})",
        "UPDATE orders SET total = 1 FROM {t}",
        "DELETE FROM orders USING {t}",
        "INSERT INTO orders SELECT * FROM {t} ON CONFLICT DO NOTHING",
        "WITH c AS (SELECT 1) SELECT * FROM {t} ORDER BY 1 LIMIT 1",
        "SELECT * FROM {t};SELECT 2",
        "SELECT * FROM {t} UNION SELECT * FROM {t} FOR UPDATE",
        "SELECT * FROM {t} WHERE ((((((((((((((((((((((((1 = 1))))))))))))))))))))))))",
        "SELECT 1 WHERE NOT NOT NOT NOT NOT NOT NOT NOT NOT NOT NOT NOT NOT NOT NOT NOT NOT \
         NOT NOT NOT NOT NOT NOT NOT NOT NOT NOT NOT NOT NOT NOT NOT NOT EXISTS (SELECT 1 FROM {t})",
    ];
    let rws = [
        users(Phase::Expand, Phase::Expand),
        users(Phase::Switch, Phase::Contract),
        moves(Phase::Expand),
        moves(Phase::Switch),
    ];
    let mut neutral = 0;
    for context in contexts {
        for t in tables {
            let sql = context.replace("{t}", t);
            for rw in &rws {
                if let Outcome::Rewritten(out) = rw.rewrite(&sql) {
                    let before = Parser::parse_sql(&PostgreSqlDialect {}, &sql).unwrap();
                    let after = Parser::parse_sql(&PostgreSqlDialect {}, &out)
                        .unwrap_or_else(|e| panic!("{sql} → {out}: {e}"));
                    assert_eq!(before.len(), after.len(), "{sql} → {out}");
                    neutral += usize::from(check_of(rw, &sql) == splice::CheckText::Neutral);
                }
            }
        }
    }
    assert!(neutral > 50, "{neutral}");
}

#[test]
fn mirrors_of_table_move_inserts_are_verified() {
    for phase in [Phase::Expand, Phase::Switch] {
        let rw = moves(phase);
        let plan = &rw.moves[0];
        for side in [moves::Side::Old, moves::Side::New] {
            let m = plan.mirror(side);
            assert!(
                m.upsert_verified && m.plain_verified,
                "{phase:?} {side:?}: {m:?}"
            );
        }
    }
}
