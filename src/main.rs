//! The `pgshift` command: `serve` runs the proxy, `check` validates a config file.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pgshift::config::Config;
use pgshift::server;
use tokio::signal::unix::{SignalKind, signal};
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
        Command::Check { config, connect } => check(config, connect),
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

fn serve(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut builder = match config.proxy.worker_threads {
        // One thread: no cross-thread wake-ups or work stealing between a session's pumps.
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let running = server::start(&config, shutdown.clone()).await?;
        // One machine-readable line on stdout says where pgshift listens (ports may be 0).
        let ready = serde_json::json!({
            "event": "ready",
            "listen": running.listen.to_string(),
            "metrics_listen": running.metrics_listen.to_string(),
        });
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{ready}")?;
        stdout.flush()?;
        drop(stdout);
        let signals = tokio::spawn(wait_for_signals(shutdown.clone()));
        let running = std::sync::Arc::new(running);
        let reloads = tokio::spawn(reload_on_sighup(running.clone(), path.clone()));
        shutdown.cancelled().await;
        reloads.abort();
        let _ = reloads.await;
        let running = std::sync::Arc::into_inner(running).expect("the reload task has ended");
        running.wait().await;
        signals.abort();
        info!("pgshift stopped");
        Ok(())
    })
}

/// SIGHUP re-reads the migrations of the config file.
async fn reload_on_sighup(running: std::sync::Arc<server::Running>, path: PathBuf) {
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        warn!("cannot install the SIGHUP handler");
        return;
    };
    while hup.recv().await.is_some() {
        match running.reload(&path).await {
            Ok(epoch) => info!(epoch, "configuration reloaded"),
            Err(e) => {
                warn!(error = %e, "configuration reload failed; the previous one stays in force")
            }
        }
    }
}

/// SIGTERM or SIGINT starts a graceful shutdown; a second one exits at once.
async fn wait_for_signals(shutdown: CancellationToken) {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
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
