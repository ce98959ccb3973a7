//! The `fix-monitor` binary: parses the command line, loads the configuration, starts logging,
//! and hands over to the library. Exit codes: 0 on a clean stop, 64 (EX_USAGE) for a bad
//! configuration, 1 when the sidecar cannot start or fails.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};
use fix_monitor::config::{self, ConfigArgs, LogFormat, LogSettings, Origin};
use fix_monitor::console::{self, snapshot, Mode, ReportTo, WatchOptions};
use fix_monitor::demo::{self, DemoOptions};
use fix_monitor::startup::{self, prepare, Resources};

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
    /// Watch the connections live in the terminal, like the original monitor; Ctrl+C writes a
    /// JSON report and prints the totals.
    ///
    /// On a terminal the view is redrawn in place: per target the active, opened and closed
    /// counts and the peak, the active connections with their age, the last closed ones with
    /// how long they lasted, and a log of each open and close. Piped or redirected, it prints a
    /// line per open or close and a summary line every poll interval instead. No HTTP endpoint
    /// is served. Takes the same configuration as `run`.
    Watch(WatchArgs),
    /// Print the matching connections once (a table, or JSON) and exit; for scripts.
    ///
    /// One look: everything shown is established now, with no age or history. Takes the same
    /// configuration as `run`.
    Snapshot(SnapshotArgs),
    /// A self-contained demo on loopback: simulated venues and a simulated gateway whose FIX
    /// sessions come and go, watched live by the real sidecar, whose endpoint it serves.
    ///
    /// Needs no configuration and no privileges. Serves on 127.0.0.1:9464, or the next free
    /// port; the URL is shown. Ctrl+C ends it, closing every simulated session.
    Demo(DemoArgs),
    /// Print the effective configuration, and where each value came from, then exit.
    Config(ConfigArgs),
    /// Print the man page or shell completions, generated from these very flag definitions.
    #[command(subcommand)]
    Generate(Generate),
}

#[derive(Subcommand)]
enum Generate {
    /// The man page (roff): every command with its flags. `fix-monitor generate man >
    /// /usr/local/share/man/man1/fix-monitor.1`
    Man,
    /// Completions for a shell. `fix-monitor generate completions bash >
    /// /etc/bash_completion.d/fix-monitor`
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Args)]
struct WatchArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Where to write the JSON report at the end
    /// [default: fix_connections_YYYYmmdd_HHMMSS.json in the current directory].
    #[arg(long, value_name = "PATH", help_heading = "Report")]
    report: Option<PathBuf>,
    /// Write no report at the end.
    #[arg(long, conflicts_with = "report", help_heading = "Report")]
    no_report: bool,
}

#[derive(Args)]
struct SnapshotArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "table", help_heading = "Output")]
    format: snapshot::Format,
}

#[derive(Args)]
struct DemoArgs {
    /// End by itself after this long: whole seconds (30) or a duration (90s, 2m)
    /// [default: run until Ctrl+C].
    #[arg(long, value_name = "SECS")]
    duration: Option<String>,
    /// How often the sidecar polls: whole seconds or a duration (500ms) [default: 1s].
    #[arg(long, value_name = "DURATION")]
    interval: Option<String>,
    /// Address of the endpoint, IP:PORT [default: 127.0.0.1:9464, or the next free port].
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<String>,
    /// Also write the JSON report (as `watch` does) here at the end.
    #[arg(long, value_name = "PATH")]
    report: Option<PathBuf>,
    /// How fix-monitor reads the simulated FIX: `capture` (the wire; needs CAP_NET_RAW), `log`
    /// (the gateway's message log) or `auto` (capture when permitted, else the log).
    #[arg(long, value_name = "SOURCE", default_value = "auto")]
    fix_source: demo::FixSource,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // A usage error exits 64 like every other; --help and --version print to stdout, 0.
        Err(e) => {
            let _ = e.print();
            let code = if e.use_stderr() {
                config::EXIT_USAGE
            } else {
                0
            };
            return ExitCode::from(code as u8);
        }
    };
    match cli.command {
        Command::Run(args) => run_sidecar(&args),
        Command::Watch(args) => watch(args),
        Command::Snapshot(args) => take_snapshot(&args),
        Command::Demo(args) => run_demo(args),
        Command::Config(args) => match config::load_checked(&args, prepare) {
            Ok((l, _)) => emit(|out| out.write_all(l.explain().as_bytes())),
            Err(e) => usage_error(e),
        },
        Command::Generate(Generate::Man) => emit(man_page),
        Command::Generate(Generate::Completions { shell }) => {
            // Into memory first: clap_complete panics on a failed write (a closed stdout).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "fix-monitor", &mut script);
            emit(|out| out.write_all(&script))
        }
    }
}

/// `fix-monitor run`: the sidecar with its endpoint, until SIGINT or SIGTERM.
fn run_sidecar(args: &ConfigArgs) -> ExitCode {
    let (loaded, resources) = match config::load_checked(args, prepare) {
        Ok(l) => l,
        Err(e) => return usage_error(e),
    };
    let withheld = startup::withhold_library_env();
    let log_filter = init_tracing(&loaded.settings.log);
    let Some((runtime, shutdown)) = runtime_with_shutdown(1) else {
        return ExitCode::FAILURE;
    };
    let reloader = reloader(args.clone(), withheld, log_filter);
    let run = fix_monitor::app::run(loaded.settings, resources, shutdown, Some(reloader));
    let result = runtime.block_on(run);
    // `run` bounds every wait of its own; a blocking task it left behind must not hold
    // the exit either (dropping a runtime waits for those without limit).
    runtime.shutdown_timeout(Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("fix-monitor: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `fix-monitor watch`: the live console view, then the report.
fn watch(args: WatchArgs) -> ExitCode {
    let (loaded, _) = match load(&args.config) {
        Ok(l) => l,
        Err(e) => return usage_error(e),
    };
    let _ = init_tracing(&quiet_unless_asked(&loaded));
    let options = WatchOptions {
        report: match (args.report, args.no_report) {
            (_, true) => ReportTo::Nowhere,
            (Some(p), false) => ReportTo::Path(p),
            (None, false) => ReportTo::Default,
        },
        mode: Mode::detect(),
    };
    let Some((runtime, shutdown)) = runtime_with_shutdown(1) else {
        return ExitCode::FAILURE;
    };
    let watched = console::watch(&loaded.settings, options, shutdown);
    match runtime.block_on(watched) {
        // The reader went away: the end of watching, not a failure.
        Err(console::ConsoleError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        r => exit(r),
    }
}

/// `fix-monitor snapshot`: the matching connections once.
fn take_snapshot(args: &SnapshotArgs) -> ExitCode {
    let (loaded, _) = match load(&args.config) {
        Ok(l) => l,
        Err(e) => return usage_error(e),
    };
    let _ = init_tracing(&quiet_unless_asked(&loaded));
    match snapshot::take(&loaded.settings) {
        Ok(s) => {
            let text = match args.format {
                snapshot::Format::Table => s.table(&loaded.settings.targets),
                snapshot::Format::Json => s.json(),
            };
            emit(|out| out.write_all(text.as_bytes()))
        }
        Err(e) => exit::<()>(Err(e)),
    }
}

/// `fix-monitor demo`: the self-contained demo on loopback.
fn run_demo(args: DemoArgs) -> ExitCode {
    let options = match demo_options(args) {
        Ok(o) => o,
        Err(e) => return usage_error(e),
    };
    let _ = init_tracing(&LogSettings {
        format: LogFormat::Text,
        level: "warn".into(),
    });
    let Some((runtime, shutdown)) = runtime_with_shutdown(2) else {
        return ExitCode::FAILURE;
    };
    exit(runtime.block_on(demo::run(options, shutdown)))
}

/// Writes a command's output to stdout. A reader that went away (`| head`) ends the command
/// quietly, as it ends `ss` or `cat`: exit 0, nothing on stderr. (`print!` would panic.)
fn emit(write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> ExitCode {
    let mut out = io::stdout().lock();
    match write(&mut out).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fix-monitor: cannot write the output: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One man page for the whole tool: clap_mangen's page for `fix-monitor`, then a section per
/// command (`FIX-MONITOR RUN`, ...) holding that command's synopsis, description and flags,
/// their own sections demoted to subsections. (clap_mangen alone would point at a page per
/// command, which one printed page cannot hold.)
fn man_page(out: &mut dyn Write) -> io::Result<()> {
    let mut cli = Cli::command();
    cli.build();
    let top = clap_mangen::Man::new(cli.clone());
    top.render_title(out)?;
    top.render_name_section(out)?;
    top.render_synopsis_section(out)?;
    top.render_description_section(out)?;
    top.render_options_section(out)?;
    man_commands(&cli, out)?;
    top.render_version_section(out)
}

fn man_commands(parent: &clap::Command, out: &mut dyn Write) -> io::Result<()> {
    for cmd in parent.get_subcommands().filter(|c| !c.is_hide_set()) {
        if cmd.get_name() == "help" {
            continue;
        }
        let name = cmd.get_bin_name().unwrap_or(cmd.get_name());
        writeln!(out, ".SH \"{}\"", name.to_uppercase())?;
        let man = clap_mangen::Man::new(cmd.clone());
        let mut page = Vec::new();
        man.render_synopsis_section(&mut page)?;
        man.render_description_section(&mut page)?;
        man.render_options_section(&mut page)?;
        for line in String::from_utf8_lossy(&page).lines() {
            match line.strip_prefix(".SH ") {
                Some(heading) => writeln!(out, ".SS {heading}")?,
                None => writeln!(out, "{line}")?,
            }
        }
        man_commands(cmd, out)?;
    }
    Ok(())
}

/// The configuration and what the start-up step read for it (their problems reported
/// together), after which the exporter libraries' own variables are withheld from them (see
/// [`startup::withhold_library_env`]); still single-threaded here.
fn load(args: &ConfigArgs) -> Result<(config::Loaded, Resources), config::ConfigErrors> {
    let (loaded, resources) = config::load_checked(args, prepare)?;
    startup::withhold_library_env();
    Ok((loaded, resources))
}

/// A runtime with `workers` threads, and the shutdown signal, its handlers installed in it.
fn runtime_with_shutdown(
    workers: usize,
) -> Option<(
    tokio::runtime::Runtime,
    impl std::future::Future<Output = ()> + Send + 'static,
)> {
    let runtime = runtime(workers)?;
    let shutdown = {
        let _in_runtime = runtime.enter();
        shutdown_signal()
    };
    Some((runtime, shutdown))
}

fn runtime(workers: usize) -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("fix-monitor: cannot start the runtime: {e}");
            None
        }
    }
}

fn exit<T>(result: Result<T, impl std::fmt::Display>) -> ExitCode {
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fix-monitor: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The console commands log warnings only, unless a log level was asked for: their output is
/// the view, and the sidecar's info lines would say the same again.
fn quiet_unless_asked(loaded: &config::Loaded) -> LogSettings {
    let mut log = loaded.settings.log.clone();
    if matches!(loaded.origin("log.level"), None | Some(Origin::Default)) {
        log.level = "warn".into();
    }
    log
}

fn demo_options(args: DemoArgs) -> Result<DemoOptions, String> {
    let duration = |flag: &str, v: Option<String>| -> Result<Option<Duration>, String> {
        v.map(|text| match config::parse_duration(&text) {
            Ok(d) if !d.is_zero() => Ok(d),
            Ok(_) => Err(format!("{flag} {text}: must be above zero")),
            Err(e) => Err(format!("{flag} {text}: {e}")),
        })
        .transpose()
    };
    let listen = args
        .listen
        .map(|text| {
            text.parse()
                .map_err(|_| format!("--listen {text}: expected IP:PORT, such as 127.0.0.1:9464"))
        })
        .transpose()?;
    Ok(DemoOptions {
        duration: duration("--duration", args.duration)?,
        interval: duration("--interval", args.interval)?.unwrap_or(config::defaults::INTERVAL),
        listen,
        report: args.report,
        fix_source: args.fix_source,
        mode: Mode::detect(),
    })
}

fn usage_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("fix-monitor: invalid configuration:\n{e}");
    ExitCode::from(config::EXIT_USAGE as u8)
}

/// Sets the running subscriber's filter (a reload's `log.level`).
type LogFilter = fix_monitor::reload::SetLogLevel;

/// Starts logging to stderr; returns what changes its level later.
fn init_tracing(log: &LogSettings) -> LogFilter {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_new(log.filter_directive()).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let parse =
        |log: &LogSettings| EnvFilter::try_new(log.filter_directive()).map_err(|e| e.to_string());
    match log.format {
        LogFormat::Json => {
            let builder = builder.json().flatten_event(true).with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            Box::new(move |log| handle.reload(parse(log)?).map_err(|e| e.to_string()))
        }
        LogFormat::Text => {
            let builder = builder.with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            Box::new(move |log| handle.reload(parse(log)?).map_err(|e| e.to_string()))
        }
    }
}

/// How `run` reloads: the configuration read as at start (the same flags, the environment with
/// the variables withheld from the exporter libraries put back, the file again, the start-up
/// step's files), and the log level set on the running subscriber.
fn reloader(
    args: ConfigArgs,
    withheld: Vec<(String, String)>,
    log_level: LogFilter,
) -> fix_monitor::reload::Reloader {
    fix_monitor::reload::Reloader {
        load: Box::new(move || {
            let (loaded, resources) = config::load_checked_with(&args, &withheld, prepare)?;
            Ok((loaded.settings, resources))
        }),
        log_level,
    }
}

/// Resolves on SIGINT (Ctrl+C) or SIGTERM. The handlers are installed when this is called
/// (inside the runtime), not when the future is first polled: a signal that arrives while the
/// sidecar is still starting is a request to stop, not death by the signal's default action.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let (mut int, mut term) = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::terminate()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        let (ctrl_c, term) = (
            async {
                match int.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            },
            async {
                match term.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            },
        );
        #[cfg(not(unix))]
        let (ctrl_c, term) = (
            async {
                let _ = tokio::signal::ctrl_c().await;
            },
            std::future::pending::<()>(),
        );
        tokio::select! {
            _ = ctrl_c => tracing::info!("SIGINT received"),
            _ = term => tracing::info!("SIGTERM received"),
        }
        after_first_signal();
    }
}

fn after_first_signal() {
    // From now on the shutdown runs with its deadlines; an operator who will not wait for
    // them says so with a second SIGINT or SIGTERM, and the process exits at once, with the
    // shell's code for death by that signal (130, 143).
    tokio::spawn(async {
        let code = second_signal().await;
        tracing::warn!("second signal: exiting at once, without the final export");
        eprintln!("fix-monitor: second signal: exiting at once, without the final export");
        std::process::exit(code);
    });
}

/// Waits for another SIGINT or SIGTERM; returns the exit code for it.
async fn second_signal() -> i32 {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => tokio::select! {
                _ = int.recv() => 130,
                _ = term.recv() => 143,
            },
            _ => std::future::pending().await,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        130
    }
}
