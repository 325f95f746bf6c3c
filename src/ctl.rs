//! `pgshift ctl`: sends one command over the admin socket and prints the reply as tables for
//! people, or as the raw JSON line with `--json`. The exit status is non-zero whenever the
//! reply is `"ok":false` (or no reply came).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Sends `command` to the socket at `path` and returns the reply line parsed.
pub async fn request(path: &Path, command: &str) -> Result<Value, String> {
    let stream = UnixStream::connect(path).await.map_err(|e| {
        format!(
            "cannot connect to the admin socket {}: {e} (is pgshift running with this \
             [admin].socket?)",
            path.display()
        )
    })?;
    let (rd, mut wr) = stream.into_split();
    wr.write_all(format!("{}\n", command.trim()).as_bytes())
        .await
        .map_err(|e| format!("cannot send the command: {e}"))?;
    let mut line = String::new();
    BufReader::new(rd)
        .read_line(&mut line)
        .await
        .map_err(|e| format!("cannot read the reply: {e}"))?;
    if line.is_empty() {
        return Err("pgshift closed the admin connection without replying".into());
    }
    serde_json::from_str(&line).map_err(|e| format!("unreadable reply {line:?}: {e}"))
}

/// The job `--wait` follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    Backfill,
    Verify,
}

impl Job {
    fn key(self) -> &'static str {
        match self {
            Job::Backfill => "backfill",
            Job::Verify => "verify",
        }
    }

    /// The job a command starts, if `--wait` can follow it.
    pub fn started_by(command: &str) -> Option<Job> {
        let words: Vec<&str> = command.split_whitespace().collect();
        match words.as_slice() {
            ["backfill", _, "start" | "resume", ..] => Some(Job::Backfill),
            ["verify", ..] => Some(Job::Verify),
            _ => None,
        }
    }

    /// Whether the job succeeded, once it ended (`None` while it runs).
    fn outcome(self, state: &str) -> Option<bool> {
        match (self, state) {
            (_, "starting" | "running") => None,
            (Job::Backfill, "done") | (Job::Verify, "clean") => Some(true),
            _ => Some(false),
        }
    }
}

/// How often `--wait` polls `status`.
const WAIT_POLL: Duration = Duration::from_millis(300);
/// Without a terminal, how often `--wait` prints a progress line.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Follows run `run` of `job` of migration `name` until it ends, drawing a progress bar on
/// stderr (a line every few seconds when stderr is not a terminal). Returns the job's last
/// record and whether it succeeded (backfill `done`, verify `clean`).
pub async fn wait(path: &Path, job: Job, name: &str, run: &str) -> Result<(Value, bool), String> {
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {percent:>3}% {human_pos}/{human_len} rows  {msg}",
        )
        .map_err(|e| e.to_string())?
        .progress_chars("=> "),
    );
    bar.set_prefix(format!("{} {name}", job.key()));
    let mut last_line = std::time::Instant::now();
    loop {
        let status = request(path, "status").await?;
        let record = status["migrations"]
            .as_array()
            .and_then(|all| all.iter().find(|m| m["name"] == name))
            .map(|m| m[job.key()].clone())
            .ok_or_else(|| format!("status no longer shows migration {name:?}"))?;
        if record["run"].as_str() != Some(run) {
            bar.finish_and_clear();
            return Err(format!(
                "the {} of {name:?} was replaced or forgotten (now: {})",
                job.key(),
                text(&record["state"])
            ));
        }
        let state = record["state"].as_str().unwrap_or("none").to_owned();
        let done_key = if job == Job::Backfill {
            "rows_done"
        } else {
            "rows_checked"
        };
        let done = record[done_key].as_u64().unwrap_or(0);
        let total = record["rows_total"].as_u64().unwrap_or(0).max(done);
        bar.set_length(total);
        bar.set_position(done);
        let msg = progress_message(job, &state, &record);
        bar.set_message(msg.clone());
        if let Some(ok) = job.outcome(&state) {
            bar.finish_and_clear();
            return Ok((record, ok));
        }
        if bar.is_hidden() && last_line.elapsed() >= PLAIN_PROGRESS_EVERY {
            eprintln!("{} {name}: {done}/{total} rows  {msg}", job.key());
            last_line = std::time::Instant::now();
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

fn progress_message(job: Job, state: &str, record: &Value) -> String {
    match job {
        Job::Backfill => {
            let mut msg = format!("{state}, {} rows/s", text(&record["rate"]));
            if let Some(eta) = record["eta_s"].as_f64() {
                msg.push_str(&format!(", ETA {}", humanize(Duration::from_secs_f64(eta))));
            }
            if let Some(why) = record["waiting"].as_str() {
                msg.push_str(&format!(" (waiting: {why})"));
            }
            msg
        }
        Job::Verify => format!(
            "{state}, {} chunks, {} mismatching keys",
            text(&record["chunks"]),
            text(&record["mismatches"])
        ),
    }
}

/// The last line `--wait` prints.
pub fn render_outcome(job: Job, name: &str, record: &Value) -> String {
    let state = text(&record["state"]);
    let seconds = match (
        record["started_at"].as_f64(),
        record["finished_at"].as_f64(),
    ) {
        (Some(a), Some(b)) if b >= a => format!(" in {}", humanize(Duration::from_secs_f64(b - a))),
        _ => String::new(),
    };
    let mut line = match job {
        Job::Backfill => format!(
            "backfill {name}: {state}, {} rows ({} written, {} deleted){seconds}, {} rows/s",
            text(&record["rows_done"]),
            text(&record["written"]),
            text(&record["deleted"]),
            text(&record["rate"])
        ),
        Job::Verify => format!(
            "verify {name}: {state}, {} rows checked in {} chunks{seconds}, {} mismatching keys",
            text(&record["rows_checked"]),
            text(&record["chunks"]),
            text(&record["mismatches"])
        ),
    };
    if let Some(keys) = record["first_keys"].as_array().filter(|k| !k.is_empty()) {
        let keys: Vec<String> = keys.iter().map(text).collect();
        line.push_str(&format!("; first: {}", keys.join(", ")));
    }
    if let Some(e) = record["error"].as_str() {
        line.push_str(&format!("; error: {e}"));
    }
    line.push('\n');
    line
}

/// Whether a reply says `"ok":true`.
pub fn is_ok(reply: &Value) -> bool {
    reply.get("ok").and_then(Value::as_bool) == Some(true)
}

/// The reply of `command` as text for people.
pub fn render(command: &str, reply: &Value) -> String {
    if !is_ok(reply) {
        return format!(
            "error: {}\n",
            reply
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("(no message)")
        );
    }
    match command.split_whitespace().next().unwrap_or("") {
        "status" => render_status(reply),
        "phase" | "rollback" | "complete" => render_transition(reply),
        "connections" => render_connections(reply),
        "events" => render_events(reply),
        "reload" => format!("reloaded ({})\n", text(&reply["reloaded"])),
        "backfill" => format!(
            "backfill {}: {}\n",
            text(&reply["migration"]),
            text(&reply["backfill"]["state"])
        ),
        "verify" => format!(
            "verify {}: {}\n",
            text(&reply["migration"]),
            text(&reply["verify"]["state"])
        ),
        "shutdown" => "pgshift is shutting down\n".into(),
        _ => format!("{reply}\n"),
    }
}

fn render_transition(reply: &Value) -> String {
    let name = text(&reply["migration"]);
    if reply["changed"] == Value::Bool(false) {
        return format!("{name}: already in {}\n", text(&reply["phase"]));
    }
    let forced = if reply["forced"] == Value::Bool(true) {
        " (forced)"
    } else {
        ""
    };
    format!(
        "{name}: {} → {}{forced}, epoch {}\n",
        text(&reply["from"]),
        text(&reply["phase"]),
        text(&reply["epoch"])
    )
}

fn render_status(reply: &Value) -> String {
    let mut out = format!(
        "instance {}  epoch {}\n",
        text(&reply["instance"]),
        text(&reply["epoch"])
    );
    for (key, label) in [
        ("config_error", "config error"),
        ("sync_error", "cannot follow the state"),
        ("control_error", "state database"),
    ] {
        if let Some(e) = reply[key].as_str() {
            out.push_str(&format!("{label}: {e}\n"));
        }
    }
    out.push('\n');
    let migrations = reply["migrations"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = migrations
        .iter()
        .map(|m| {
            vec![
                text(&m["name"]),
                text(&m["kind"]),
                text(&m["table"]),
                text(&m["phase"]),
                text(&m["epoch"]),
                backfill_cell(&m["backfill"]),
                verify_cell(&m["verify"]),
                text(&m["old_name_statements_5m"]),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "MIGRATION",
            "KIND",
            "TABLE",
            "PHASE",
            "SINCE EPOCH",
            "BACKFILL",
            "VERIFY",
            "OLD NAMES (5m)",
        ],
        &rows,
    ));
    out.push('\n');
    let instances = reply["instances"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = instances
        .iter()
        .map(|i| {
            vec![
                text(&i["id"]),
                text(&i["host"]),
                text(&i["epoch"]),
                text(&i["acked_epoch"]),
                format!("{:.1}s ago", i["last_seen_s"].as_f64().unwrap_or(0.0)),
                if i["live"] == Value::Bool(true) {
                    "live".into()
                } else {
                    "expired".into()
                },
            ]
        })
        .collect();
    out.push_str(&table(
        &["INSTANCE", "HOST", "EPOCH", "ACKED", "LAST SEEN", "LEASE"],
        &rows,
    ));
    out
}

fn backfill_cell(b: &Value) -> String {
    let reverse = if b["direction"] == "reverse" {
        " (reverse)"
    } else {
        ""
    };
    match b["state"].as_str() {
        None | Some("none") => "-".into(),
        Some(state @ "running") => {
            let mut cell = format!(
                "{state}{reverse} {}/{} {}/s",
                text(&b["rows_done"]),
                text(&b["rows_total"]),
                text(&b["rate"])
            );
            if let Some(eta) = b["eta_s"].as_f64() {
                cell.push_str(&format!(" ETA {}", humanize(Duration::from_secs_f64(eta))));
            }
            if b["waiting"].is_string() {
                cell.push_str(" (throttled)");
            }
            cell
        }
        Some(state) => format!(
            "{state}{reverse} {}/{}",
            text(&b["rows_done"]),
            text(&b["rows_total"])
        ),
    }
}

fn verify_cell(v: &Value) -> String {
    match v["state"].as_str() {
        None | Some("none") => "-".into(),
        Some("clean") => "clean".into(),
        Some(state) => format!("{state} ({} mismatches)", text(&v["mismatches"])),
    }
}

fn render_connections(reply: &Value) -> String {
    let sessions = reply["connections"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            vec![
                text(&s["id"]),
                text(&s["addr"]),
                text(&s["user"]),
                text(&s["database"]),
                text(&s["application_name"]),
                text(&s["state"]),
                text(&s["epoch"]),
                seconds(&s["age_s"]),
                seconds(&s["transaction_age_s"]),
            ]
        })
        .collect();
    let mut out = format!("epoch in force: {}\n", text(&reply["epoch"]));
    out.push_str(&table(
        &[
            "ID",
            "CLIENT",
            "USER",
            "DATABASE",
            "APPLICATION",
            "STATE",
            "EPOCH",
            "AGE",
            "TRANSACTION",
        ],
        &rows,
    ));
    out
}

fn render_events(reply: &Value) -> String {
    let events = reply["events"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                text(&e["at"]),
                text(&e["migration"]),
                text(&e["action"]),
                format!("{} → {}", text(&e["from"]), text(&e["to"])),
                text(&e["epoch"]),
                text(&e["actor"]),
                text(&e["detail"]),
            ]
        })
        .collect();
    table(
        &[
            "AT",
            "MIGRATION",
            "ACTION",
            "PHASES",
            "EPOCH",
            "BY",
            "DETAIL",
        ],
        &rows,
    )
}

/// A JSON value as a table cell: strings bare, null as `-`.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn seconds(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |s| {
        humanize(Duration::from_secs_f64(s.max(0.0)))
    })
}

fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Left-aligned columns separated by two spaces; "(none)" for no rows.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(&mut headers.iter().copied());
    if rows.is_empty() {
        out.push_str("(none)\n");
    }
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_columns() {
        let out = table(
            &["A", "LONGER"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "22".into()],
            ],
        );
        assert_eq!(out, "A    LONGER\nxyz  1\nq    22\n");
        assert_eq!(table(&["A"], &[]), "A\n(none)\n");
    }

    #[test]
    fn errors_and_transitions_render_in_one_line() {
        let refused = json!({"ok": false, "error": "expand → contract skips a phase"});
        assert_eq!(
            render("phase m contract", &refused),
            "error: expand → contract skips a phase\n"
        );
        let moved = json!({"ok": true, "migration": "m", "from": "expand", "phase": "switch",
                           "epoch": 7, "changed": true, "forced": true});
        assert_eq!(
            render("phase m switch force", &moved),
            "m: expand → switch (forced), epoch 7\n"
        );
        let same = json!({"ok": true, "migration": "m", "from": "expand", "phase": "expand",
                          "epoch": 7, "changed": false, "forced": false});
        assert_eq!(render("phase m expand", &same), "m: already in expand\n");
    }

    #[test]
    fn status_shows_migrations_and_instances() {
        let reply = json!({
            "ok": true, "instance": "h-1-abcd", "epoch": 4, "config_error": "bad file",
            "migrations": [{"name": "m", "kind": "columns", "table": "public.users",
                            "phase": "expand", "epoch": 3,
                            "backfill": {"state": "none"}, "verify": {"state": "none"},
                            "old_name_statements_5m": 12}],
            "instances": [{"id": "h-1-abcd", "host": "h", "epoch": 4, "acked_epoch": 4,
                           "last_seen_s": 0.25, "live": true}],
        });
        let out = render("status", &reply);
        assert!(out.starts_with("instance h-1-abcd  epoch 4\nconfig error: bad file\n"));
        assert!(
            out.contains("m          columns  public.users  expand"),
            "{out}"
        );
        assert!(
            out.contains("h-1-abcd  h     4      4      0.2s ago"),
            "{out}"
        );
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(humanize(Duration::from_millis(1500)), "1.5s");
        assert_eq!(humanize(Duration::from_secs(125)), "2m05s");
        assert_eq!(humanize(Duration::from_secs(7260)), "2h01m");
    }
}
