//! The admin socket (DESIGN §4): a Unix socket, mode 0600, one command per line and one JSON
//! object per reply line, `{"ok":true,…}` or `{"ok":false,"error":"…"}`. A bad command gets an
//! error reply and the connection stays usable. `pgshift ctl` ([`crate::ctl`]) is its client.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::control::jobs::{BackfillAction, StartOptions};
use crate::control::machine::Request;
use crate::control::{ControlPlane, Source};
use crate::migration::Phase;

/// Longest command line accepted.
const MAX_LINE: usize = 4096;

/// A parsed admin command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Status,
    Phase {
        name: String,
        phase: Phase,
        force: bool,
    },
    Rollback {
        name: String,
    },
    Complete {
        name: String,
    },
    Reload,
    Connections,
    Events {
        name: Option<String>,
        limit: i64,
    },
    Backfill {
        name: String,
        action: BackfillAction,
    },
    Verify {
        name: String,
        chunk: Option<u32>,
    },
    Shutdown,
}

const USAGE: &str = "commands: status | phase NAME PHASE [force] | rollback NAME | complete NAME \
                     | backfill NAME start [batch=N] [rate=N] | backfill NAME pause|resume|cancel \
                     | verify NAME [chunk=N] | reload | connections | events [NAME] [limit=N] \
                     | shutdown";

/// `key=N` with N a positive number (`rate` may be 0).
fn number(arg: &str, key: &str, zero_ok: bool) -> Result<Option<u32>, String> {
    let Some(value) = arg.strip_prefix(key).and_then(|r| r.strip_prefix('=')) else {
        return Ok(None);
    };
    value
        .parse::<u32>()
        .ok()
        .filter(|n| zero_ok || *n > 0)
        .map(Some)
        .ok_or_else(|| {
            format!(
                "{key} must be a {} number: {value:?}",
                if zero_ok { "non-negative" } else { "positive" }
            )
        })
}

impl Command {
    pub fn parse(line: &str) -> Result<Command, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some((&verb, args)) = words.split_first() else {
            return Err(format!("empty command; {USAGE}"));
        };
        let no_args = |c: Command| {
            if args.is_empty() {
                Ok(c)
            } else {
                Err(format!("{verb} takes no arguments"))
            }
        };
        let one_name = |make: fn(String) -> Command| match args {
            [name] => Ok(make((*name).to_owned())),
            _ => Err(format!("usage: {verb} NAME")),
        };
        match verb {
            "status" => no_args(Command::Status),
            "reload" => no_args(Command::Reload),
            "connections" => no_args(Command::Connections),
            "shutdown" => no_args(Command::Shutdown),
            "rollback" => one_name(|name| Command::Rollback { name }),
            "complete" => one_name(|name| Command::Complete { name }),
            "phase" => match args {
                [name, phase] | [name, phase, "force"] => Ok(Command::Phase {
                    name: (*name).to_owned(),
                    phase: phase.parse()?,
                    force: args.len() == 3,
                }),
                _ => Err("usage: phase NAME PHASE [force]".into()),
            },
            "events" => {
                let mut name = None;
                let mut limit = 20;
                for arg in args {
                    match arg.strip_prefix("limit=") {
                        Some(n) => {
                            limit =
                                n.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                                    format!("limit must be a positive number: {n:?}")
                                })?
                        }
                        None if name.is_none() => name = Some((*arg).to_owned()),
                        None => return Err("usage: events [NAME] [limit=N]".into()),
                    }
                }
                Ok(Command::Events { name, limit })
            }
            "backfill" => {
                const BACKFILL_USAGE: &str = "usage: backfill NAME start [batch=N] [rate=N] | backfill NAME pause|resume|cancel";
                let [name, action, options @ ..] = args else {
                    return Err(BACKFILL_USAGE.into());
                };
                let action = match (*action, options) {
                    ("start", options) => {
                        let mut start = StartOptions::default();
                        for option in options {
                            if let Some(n) = number(option, "batch", false)? {
                                start.batch = Some(n);
                            } else if let Some(n) = number(option, "rate", true)? {
                                start.rate = Some(n);
                            } else {
                                return Err(format!("unknown option {option:?}; {BACKFILL_USAGE}"));
                            }
                        }
                        BackfillAction::Start(start)
                    }
                    ("pause", []) => BackfillAction::Pause,
                    ("resume", []) => BackfillAction::Resume,
                    ("cancel", []) => BackfillAction::Cancel,
                    _ => return Err(BACKFILL_USAGE.into()),
                };
                Ok(Command::Backfill {
                    name: (*name).to_owned(),
                    action,
                })
            }
            "verify" => match args {
                [name] => Ok(Command::Verify {
                    name: (*name).to_owned(),
                    chunk: None,
                }),
                [name, option] => match number(option, "chunk", false)? {
                    Some(n) => Ok(Command::Verify {
                        name: (*name).to_owned(),
                        chunk: Some(n),
                    }),
                    None => Err("usage: verify NAME [chunk=N]".into()),
                },
                _ => Err("usage: verify NAME [chunk=N]".into()),
            },
            _ => Err(format!("unknown command {verb:?}; {USAGE}")),
        }
    }
}

/// Binds the socket with mode 0600, replacing a stale socket file left by a dead process but
/// refusing to steal one that still answers. The socket is created inside a private (0700)
/// directory, restricted, then renamed into place, so it is never reachable with the
/// process umask's wider mode.
pub async fn bind(path: &Path) -> Result<UnixListener, String> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(format!(
                "admin socket {} is in use by another process",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove stale admin socket {}: {e}", path.display()))?;
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let private = dir.join(format!(".pgshift-admin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|e| format!("cannot create {}: {e}", private.display()))?;
    let staged = private.join("socket");
    let result = (|| {
        let listener = UnixListener::bind(&staged)
            .map_err(|e| format!("cannot bind admin socket {}: {e}", path.display()))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot restrict admin socket {}: {e}", path.display()))?;
        std::fs::rename(&staged, path)
            .map_err(|e| format!("cannot create admin socket {}: {e}", path.display()))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    result
}

/// Serves the socket until shutdown, then removes it.
pub async fn serve(listener: UnixListener, path: PathBuf, plane: Arc<ControlPlane>) {
    let tracker = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = plane.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        tracker.spawn(connection(stream, plane.clone()));
    }
    drop(listener);
    let _ = std::fs::remove_file(&path);
}

async fn connection(stream: UnixStream, plane: Arc<ControlPlane>) {
    let (rd, mut wr) = stream.into_split();
    let mut lines = BufReader::new(rd);
    let mut line = String::new();
    loop {
        line.clear();
        let mut limited = (&mut lines).take(MAX_LINE as u64 + 1);
        let read = tokio::select! {
            _ = plane.shutdown.cancelled() => return,
            read = limited.read_line(&mut line) => read,
        };
        let reply = match read {
            Ok(0) => return,
            Ok(_) if line.len() > MAX_LINE && !line.ends_with('\n') => {
                let reply = error(format!("command longer than {MAX_LINE} bytes"));
                let _ = write_reply(&mut wr, &reply).await;
                return;
            }
            Ok(_) => match Command::parse(&line) {
                Ok(command) => execute(&plane, command).await,
                Err(e) => error(e),
            },
            Err(e) => error(format!("unreadable command: {e}")),
        };
        if write_reply(&mut wr, &reply).await.is_err() {
            return;
        }
    }
}

async fn write_reply(
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    reply: &Value,
) -> std::io::Result<()> {
    let mut text = reply.to_string();
    text.push('\n');
    wr.write_all(text.as_bytes()).await?;
    wr.flush().await
}

fn error(message: impl Into<String>) -> Value {
    json!({"ok": false, "error": message.into()})
}

/// Runs one command and returns its reply.
pub async fn execute(plane: &Arc<ControlPlane>, command: Command) -> Value {
    match command {
        Command::Status => plane.status().await,
        Command::Phase { name, phase, force } => {
            let request = Request::Phase { to: phase, force };
            transition_reply(plane.transition(&name, request, Source::Ctl).await)
        }
        Command::Rollback { name } => transition_reply(
            plane
                .transition(&name, Request::Rollback, Source::Ctl)
                .await,
        ),
        Command::Complete { name } => {
            let request = Request::Phase {
                to: Phase::Complete,
                force: false,
            };
            transition_reply(plane.transition(&name, request, Source::Ctl).await)
        }
        Command::Reload => match plane.reload().await {
            Ok(summary) => json!({"ok": true, "reloaded": summary,
                                  "epoch": plane.snapshots.load().epoch}),
            Err(e) => error(e),
        },
        Command::Connections => json!({
            "ok": true,
            "epoch": plane.snapshots.load().epoch,
            "connections": plane.sessions.list(),
        }),
        Command::Events { name, limit } => match plane.events(name.as_deref(), limit).await {
            Ok(events) => json!({"ok": true, "events": events}),
            Err(e) => error(e),
        },
        Command::Backfill { name, action } => match plane.backfill_command(&name, action).await {
            Ok(record) => json!({"ok": true, "migration": name, "backfill": record}),
            Err(e) => error(e),
        },
        Command::Verify { name, chunk } => match plane.verify_command(&name, chunk).await {
            Ok(record) => json!({"ok": true, "migration": name, "verify": record}),
            Err(e) => error(e),
        },
        Command::Shutdown => {
            info!("shutdown requested over the admin socket");
            plane.shutdown.cancel();
            json!({"ok": true, "shutting_down": true})
        }
    }
}

fn transition_reply(result: Result<crate::control::Transitioned, String>) -> Value {
    match result {
        Ok(t) => json!({
            "ok": true,
            "migration": t.migration,
            "from": t.from.name(),
            "phase": t.to.name(),
            "epoch": t.epoch,
            "changed": t.changed,
            "forced": t.forced,
        }),
        Err(e) => error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(Command::parse("status\n"), Ok(Command::Status));
        assert_eq!(
            Command::parse("  phase users_x switch force "),
            Ok(Command::Phase {
                name: "users_x".into(),
                phase: Phase::Switch,
                force: true
            })
        );
        assert_eq!(
            Command::parse("phase m expand"),
            Ok(Command::Phase {
                name: "m".into(),
                phase: Phase::Expand,
                force: false
            })
        );
        assert_eq!(
            Command::parse("rollback m"),
            Ok(Command::Rollback { name: "m".into() })
        );
        assert_eq!(
            Command::parse("complete m"),
            Ok(Command::Complete { name: "m".into() })
        );
        assert_eq!(
            Command::parse("events m limit=5"),
            Ok(Command::Events {
                name: Some("m".into()),
                limit: 5
            })
        );
        assert_eq!(
            Command::parse("backfill m start batch=500 rate=0"),
            Ok(Command::Backfill {
                name: "m".into(),
                action: BackfillAction::Start(StartOptions {
                    batch: Some(500),
                    rate: Some(0)
                })
            })
        );
        assert_eq!(
            Command::parse("backfill m cancel"),
            Ok(Command::Backfill {
                name: "m".into(),
                action: BackfillAction::Cancel
            })
        );
        assert_eq!(
            Command::parse("verify m chunk=100"),
            Ok(Command::Verify {
                name: "m".into(),
                chunk: Some(100)
            })
        );
        assert_eq!(
            Command::parse("events"),
            Ok(Command::Events {
                name: None,
                limit: 20
            })
        );
    }

    #[test]
    fn bad_commands_say_what_is_wrong() {
        let cases = [
            ("", "empty command"),
            ("frobnicate", "unknown command \"frobnicate\""),
            ("phase m", "usage: phase NAME PHASE [force]"),
            ("phase m sideways", "unknown phase \"sideways\""),
            ("phase m switch please", "usage: phase NAME PHASE [force]"),
            ("status now", "status takes no arguments"),
            ("rollback", "usage: rollback NAME"),
            ("events limit=0", "limit must be a positive number"),
            ("backfill m", "usage: backfill NAME start"),
            (
                "backfill m start batch=0",
                "batch must be a positive number",
            ),
            ("backfill m start speed=9", "unknown option \"speed=9\""),
            ("backfill m pause now", "usage: backfill NAME start"),
            ("verify", "usage: verify NAME [chunk=N]"),
            ("verify m chunk=x", "chunk must be a positive number"),
        ];
        for (line, expected) in cases {
            let err = Command::parse(line).unwrap_err();
            assert!(err.contains(expected), "{line:?}: {err}");
        }
    }
}
