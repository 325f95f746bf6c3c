//! `pgshift ctl --json` as the control-plane and job tests use it: a command that must be
//! accepted or refused, and a migration's entry and job records in the `status` reply.

use serde_json::Value;

use super::Proxy;

/// `name`'s entry in a `status` reply.
pub fn entry<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["migrations"]
        .as_array()
        .and_then(|all| all.iter().find(|m| m["name"] == name))
        .unwrap_or_else(|| panic!("no migration {name} in {status}"))
}

/// `name`'s `job` record (`"backfill"` or `"verify"`) as `proxy`'s `status` shows it.
pub async fn record(proxy: &Proxy, name: &str, job: &str) -> Value {
    entry(&proxy.ctl(&["status"]).await, name)[job].clone()
}

/// Runs `ctl --json ARGS…`, which must answer ok; the reply.
pub async fn accepted(proxy: &Proxy, args: &[&str]) -> Value {
    let reply = proxy.ctl(args).await;
    assert_eq!(
        reply["ok"],
        true,
        "ctl {args:?}: {reply}\nlog:\n{}",
        proxy.log()
    );
    reply
}

/// Runs `ctl --json ARGS…`, which must be refused with a non-zero exit status ([`Proxy::ctl`]
/// checks that the exit status follows `ok`); the error, which must say why.
pub async fn refused(proxy: &Proxy, args: &[&str]) -> String {
    let reply = proxy.ctl(args).await;
    assert_eq!(reply["ok"], false, "ctl {args:?} was not refused: {reply}");
    reply["error"]
        .as_str()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| panic!("ctl {args:?}: a refusal without a reason: {reply}"))
        .to_owned()
}
