//! The scenario (SCENARIO.md) with tokio-postgres: statements prepared once (named, extended
//! protocol), parameters and results in binary format, reused across the phase flips.

use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use super::Scenario;
use super::common::connect;

const INS_OLD: &str = "INSERT INTO users (id, user_name, age) VALUES ($1, $2, $3)";
const INS_NEW: &str = "INSERT INTO users (id, display_name, age_int) VALUES ($1, $2, $3)";
const SEL_OLD: &str = "SELECT user_name, age FROM users WHERE id = $1";
const SEL_NEW: &str = "SELECT display_name, age_int FROM users WHERE id = $1";
const UPD_OLD: &str = "UPDATE users SET user_name = $1 WHERE id = $2";
const UPD_NEW: &str = "UPDATE users SET age_int = $1 WHERE id = $2";
const DEL: &str = "DELETE FROM users WHERE id = $1";

pub async fn run(scenario: &Scenario) {
    let app = connect(&scenario.proxy_url()).await;
    let mut prepared = Vec::new();
    for sql in [INS_OLD, INS_NEW, SEL_OLD, SEL_NEW, UPD_OLD, UPD_NEW, DEL] {
        prepared.push(app.prepare(sql).await.unwrap());
    }
    let [ins_old, ins_new, sel_old, sel_new, upd_old, upd_new, del] = &prepared[..] else {
        unreachable!()
    };
    for (done, (phase, base)) in [("expand", 100), ("switch", 200), ("contract", 300)]
        .into_iter()
        .enumerate()
    {
        if phase != "expand" {
            scenario.flip(phase).await;
        }
        let (a, b, c) = (base + 1, base + 2, base + 3);
        assert_eq!(
            exec(&app, ins_old, &[&a, &"old-a", &"7"]).await,
            1,
            "{phase}"
        );
        assert_eq!(
            exec(&app, ins_new, &[&b, &"new-b", &8i32]).await,
            1,
            "{phase}"
        );
        assert_eq!(
            one::<String, i32>(&app, sel_new, a).await,
            Some(("old-a".into(), 7)),
            "{phase}"
        );
        assert_eq!(
            one::<String, String>(&app, sel_old, b).await,
            Some(("new-b".into(), "8".into())),
            "{phase}"
        );
        assert_eq!(exec(&app, upd_old, &[&"renamed", &b]).await, 1, "{phase}");
        assert_eq!(
            one::<String, i32>(&app, sel_new, b).await,
            Some(("renamed".into(), 8)),
            "{phase}"
        );
        assert_eq!(exec(&app, upd_new, &[&9i32, &a]).await, 1, "{phase}");
        assert_eq!(
            one::<String, String>(&app, sel_old, a).await,
            Some(("old-a".into(), "9".into())),
            "{phase}"
        );
        assert_eq!(
            exec(&app, ins_old, &[&c, &"gone", &"1"]).await,
            1,
            "{phase}"
        );
        assert_eq!(exec(&app, del, &[&c]).await, 1, "{phase}");
        assert_eq!(
            one::<String, String>(&app, sel_old, c).await,
            None,
            "{phase}"
        );
        let count: i64 = app
            .query_one("SELECT count(*) FROM users", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(count, 3 + 2 * (done as i64 + 1), "{phase}");
        scenario.check_direct("tokio-postgres", phase, a, b).await;
    }
}

async fn exec(
    app: &Client,
    stmt: &tokio_postgres::Statement,
    params: &[&(dyn ToSql + Sync)],
) -> u64 {
    app.execute(stmt, params).await.unwrap()
}

async fn one<A, B>(app: &Client, stmt: &tokio_postgres::Statement, id: i32) -> Option<(A, B)>
where
    A: for<'a> tokio_postgres::types::FromSql<'a>,
    B: for<'a> tokio_postgres::types::FromSql<'a>,
{
    let rows = app.query(stmt, &[&id]).await.unwrap();
    assert!(rows.len() <= 1);
    rows.first().map(|r| (r.get(0), r.get(1)))
}
