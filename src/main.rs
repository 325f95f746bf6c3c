//! The `pgshift` command: `serve` runs the proxy, `ctl` talks to a running one over its admin
//! socket, `check` validates a config file.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pgshift::config::Config;
use pgshift::control::{ControlPlane, watch};
use pgshift::{admin, ctl, metrics, server};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Parser)]
#[command(
    name = "pgshift",
    version,
    about = "Zero-downtime schema changes at the PostgreSQL wire"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// Path of the TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Send a command to a running pgshift over its admin socket (`status`, `phase NAME
    /// PHASE [force]`, `rollback NAME`, `complete NAME`, `backfill NAME start|pause|resume|
    /// cancel`, `verify NAME`, `reload`, `connections`, `events [NAME]`, `shutdown`). With
    /// `--wait`, `backfill NAME start` and `verify NAME` follow the job with a progress bar and
    /// exit non-zero unless it succeeds.
    Ctl {
        /// The admin socket (default: `[admin].socket` of --config, else /tmp/pgshift.sock).
        #[arg(long, conflicts_with = "config")]
        socket: Option<PathBuf>,
        /// Take the admin socket path from this config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the raw JSON reply.
        #[arg(long)]
        json: bool,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Watch pgshift rename a column and move a table on a live throw-away database
    /// (needs only the PostgreSQL server binaries).
    Demo {
        /// No prompts or pauses; exit status 0 only when the run ends with zero failed
        /// transactions and zero divergent rows.
        #[arg(long)]
        unattended: bool,
        /// Leave PostgreSQL and pgshift running at the end (until Ctrl-C) and print how to
        /// reach them.
        #[arg(long)]
        keep: bool,
        /// Users in the sample database (twice as many orders).
        #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
        rows: u32,
    },
    /// Validate a configuration file without serving.
    Check {
        #[arg(long, short)]
        config: PathBuf,
        /// Also check the migrations against the databases (tables, columns, up/down),
        /// changing nothing.
        #[arg(long)]
        connect: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(config),
        Command::Ctl {
            socket,
            config,
            json,
            command,
        } => return ctl(socket, config, json, command.join(" ")),
        Command::Check { config, connect } => check(config, connect),
        Command::Demo {
            unattended,
            keep,
            rows,
        } => {
            return match pgshift::demo::run(pgshift::demo::Options {
                unattended,
                keep,
                rows,
            }) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("pgshift demo: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgshift: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: PathBuf, connect: bool) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    if connect {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        runtime.block_on(pgshift::snapshot::check(&config))?;
    }
    println!(
        "{}: ok ({} migration{})",
        path.display(),
        config.migrations.len(),
        if config.migrations.len() == 1 {
            ""
        } else {
            "s"
        }
    );
    Ok(())
}

/// `ctl … --wait`: follows the job the command started until it ends; the exit status says
/// whether it succeeded.
fn ctl_wait(
    runtime: &tokio::runtime::Runtime,
    socket: &std::path::Path,
    json: bool,
    command: &str,
    job: ctl::Job,
    reply: &serde_json::Value,
) -> ExitCode {
    let name = command.split_whitespace().nth(1).unwrap_or_default();
    let key = match job {
        ctl::Job::Backfill => "backfill",
        ctl::Job::Verify => "verify",
    };
    let run = reply[key]["run"].as_str().unwrap_or_default();
    match runtime.block_on(ctl::wait(socket, job, name, run)) {
        Ok((record, ok)) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ok": ok, "migration": name, key: record})
                );
            } else if ok {
                print!("{}", ctl::render_outcome(job, name, &record));
            } else {
                eprint!("pgshift ctl: {}", ctl::render_outcome(job, name, &record));
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("pgshift ctl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn ctl(socket: Option<PathBuf>, config: Option<PathBuf>, json: bool, command: String) -> ExitCode {
    let wait = command.split_whitespace().any(|w| w == "--wait");
    let command: String = command
        .split_whitespace()
        .filter(|w| *w != "--wait")
        .collect::<Vec<_>>()
        .join(" ");
    let socket = match (socket, config) {
        (Some(socket), _) => socket,
        (None, Some(path)) => match Config::load(&path) {
            Ok(config) => config.admin.socket,
            Err(e) => {
                eprintln!("pgshift ctl: {e}");
                return ExitCode::FAILURE;
            }
        },
        (None, None) => pgshift::config::AdminConfig::default().socket,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pgshift ctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let reply = match runtime.block_on(ctl::request(&socket, &command)) {
        Ok(reply) => reply,
        Err(e) => {
            eprintln!("pgshift ctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ok = ctl::is_ok(&reply);
    let follow = wait.then(|| ctl::Job::started_by(&command)).flatten();
    if let (true, Some(job)) = (ok, follow) {
        return ctl_wait(&runtime, &socket, json, &command, job, &reply);
    }
    if json {
        println!("{reply}");
    } else if ok {
        print!("{}", ctl::render(&command, &reply));
    } else {
        eprint!("pgshift ctl: {}", ctl::render(&command, &reply));
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn serve(path: PathBuf) -> anyhow::Result<()> {
    let (config, text) = Config::load_with_text(&path)?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal: log files and collectors get plain text.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .init();
    // The control plane, the admin socket, the metrics endpoint and the accept loop share one
    // thread; sessions run on `proxy.worker_threads` loops of their own (src/workers.rs), or
    // on this one too when that is 1.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let handle = metrics::install_recorder()
            .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
        let shutdown = CancellationToken::new();
        let plane =
            ControlPlane::start(config.clone(), Some((path.clone(), text)), shutdown.clone())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        let admin_listener = admin::bind(&config.admin.socket)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let shared = server::Shared {
            snapshots: plane.snapshots.clone(),
            sessions: plane.sessions.clone(),
            metrics: plane.metrics.clone(),
        };
        let running = server::start(&config, shutdown.clone(), handle, shared).await?;
        // Signal handlers and the file watch are in place before "ready": a SIGHUP's default
        // action would end the process, and an edit made now must not be missed.
        let signals = Signals::install()?;
        let watcher = watch::start(plane.clone(), path.clone()).await;
        // One machine-readable line on stdout says where pgshift listens (ports may be 0).
        let ready = serde_json::json!({
            "event": "ready",
            "listen": running.listen.to_string(),
            "metrics_listen": running.metrics_listen.to_string(),
            "admin_socket": config.admin.socket.display().to_string(),
            "instance": plane.instance,
            "epoch": plane.snapshots.load().epoch,
        });
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{ready}")?;
        stdout.flush()?;
        drop(stdout);
        // The background tasks outlive the drain: the heartbeat keeps reporting the sessions
        // still finishing old transactions until they are gone.
        let drained = CancellationToken::new();
        let tasks = plane.spawn_tasks(running.readiness.clone(), drained.clone());
        let admin = tokio::spawn(admin::serve(
            admin_listener,
            config.admin.socket.clone(),
            plane.clone(),
        ));
        let reloads = tokio::spawn(reload_on_sighup(plane.clone(), signals.hangup));
        let signals = tokio::spawn(wait_for_signals(
            shutdown.clone(),
            signals.terminate,
            signals.interrupt,
        ));
        shutdown.cancelled().await;
        reloads.abort();
        running.wait().await;
        drained.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), tasks).await;
        let _ = admin.await;
        let _ = watcher.await;
        signals.abort();
        info!("pgshift stopped");
        Ok(())
    })
}

/// The signals `serve` handles, installed together.
struct Signals {
    hangup: Signal,
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        Ok(Signals {
            hangup: signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?,
            terminate: signal(SignalKind::terminate())
                .context("cannot install the SIGTERM handler")?,
            interrupt: signal(SignalKind::interrupt())
                .context("cannot install the SIGINT handler")?,
        })
    }
}

/// SIGHUP re-reads the config file.
async fn reload_on_sighup(plane: std::sync::Arc<ControlPlane>, mut hup: Signal) {
    while hup.recv().await.is_some() {
        let _ = plane.reload().await;
    }
}

/// SIGTERM or SIGINT starts a graceful shutdown; a second one exits at once.
async fn wait_for_signals(shutdown: CancellationToken, mut term: Signal, mut int: Signal) {
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = shutdown.cancelled() => {}
    }
    info!("shutdown requested; finishing in-flight transactions");
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    warn!("second shutdown signal; exiting now");
    std::process::exit(1);
}
