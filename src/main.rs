//! The `fix-monitor` binary: parses the command line, loads the configuration, starts logging,
//! and hands over to the library. Exit codes: 0 on a clean stop, 64 (EX_USAGE) for a bad
//! configuration, 1 when the sidecar cannot start or fails.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fix_monitor::config::{self, ConfigArgs, LogFormat, LogSettings};

#[derive(Parser)]
#[command(
    name = "fix-monitor",
    version,
    about = "Watch a FIX gateway's TCP sessions to its downstreams and report them through OpenTelemetry",
    long_about = "fix-monitor watches this host's ESTABLISHED TCP connections to the configured \
downstream targets and reports how many are active, how many opened and closed, the peak, and \
how long each lasted, on a Prometheus endpoint.\n\nConfiguration is layered: built-in defaults < \
/etc/fix-monitor/config.toml (or --config) < environment (FIX_MONITOR_*, DOWNSTREAM_IP) < flags. \
`fix-monitor config` shows the result and where each value came from."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar: poll the connections, serve /metrics, /health and /connections.
    Run(ConfigArgs),
    /// Print the effective configuration, and where each value came from, then exit.
    Config(ConfigArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let loaded = match config::load(&args) {
                Ok(l) => l,
                Err(e) => return usage_error(e),
            };
            init_tracing(&loaded.settings.log);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("fix-monitor: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(fix_monitor::app::run(loaded.settings, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("fix-monitor: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Config(args) => match config::load(&args) {
            Ok(l) => {
                print!("{}", l.explain());
                ExitCode::SUCCESS
            }
            Err(e) => usage_error(e),
        },
    }
}

fn usage_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("fix-monitor: invalid configuration:\n{e}");
    ExitCode::from(config::EXIT_USAGE as u8)
}

fn init_tracing(log: &LogSettings) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&log.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// Resolves on SIGINT (Ctrl+C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}
