//! The configuration flags, kept close to what the user typed (ripgrep's "low-level args").
//!
//! Values stay strings here: parsing and validation happen once, in `resolve`, for flags, the
//! environment and the file alike, so that a bad flag is reported together with every other
//! problem and in the same words (and the binary exits with EX_USAGE, not clap's 2).

use std::path::PathBuf;

/// Configuration flags, shared by the `run` and `config` subcommands (`#[command(flatten)]` or
/// as the subcommand's own args). A flag overrides the environment, which overrides the file.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Configuration")]
pub struct ConfigArgs {
    /// Configuration file (TOML).
    ///
    /// Overrides FIX_MONITOR_CONFIG. Without either, /etc/fix-monitor/config.toml is read if it
    /// exists; a file named here or in FIX_MONITOR_CONFIG must exist.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Downstream address or CIDR block to watch (10.0.0.5, 10.0.0.0/24, fd00::5).
    ///
    /// Defines the one target, replacing the file's [[targets]], FIX_MONITOR_TARGETS and
    /// DOWNSTREAM_IP. --target-ip is the original exporter's name for it.
    #[arg(long, visible_alias = "target-ip", value_name = "ADDR")]
    pub ip: Option<String>,

    /// Remote port of the --ip target (the downstream's FIX port); default: any port.
    ///
    /// The original monitor called this --port. Needs --ip.
    #[arg(long, value_name = "PORT", allow_negative_numbers = true)]
    pub target_port: Option<String>,

    /// Lowest local port of the --ip target's FIX sessions (default 5000 when only --max-port is
    /// given).
    ///
    /// Without --min-port and --max-port any local port matches. Needs --ip.
    #[arg(long, value_name = "PORT", allow_negative_numbers = true)]
    pub min_port: Option<String>,

    /// Highest local port of the --ip target's FIX sessions (default 6000 when only --min-port is
    /// given).
    ///
    /// Without --min-port and --max-port any local port matches. Needs --ip.
    #[arg(long, value_name = "PORT", allow_negative_numbers = true)]
    pub max_port: Option<String>,

    /// How often to poll the connections: whole seconds (5, as the original tools) or a duration
    /// (500ms, 2s, 1m) [default: 1s].
    ///
    /// Overrides FIX_MONITOR_POLL__INTERVAL and `[poll] interval`.
    #[arg(long, value_name = "DURATION", allow_negative_numbers = true)]
    pub interval: Option<String>,

    /// Address of the Prometheus /metrics endpoint, IP:PORT [default: 127.0.0.1:9464].
    ///
    /// Use 0.0.0.0:PORT or [::]:PORT to let other hosts scrape it. Overrides
    /// FIX_MONITOR_PROMETHEUS__LISTEN and `[prometheus] listen`.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,

    /// The endpoint's web configuration file: TLS, client certificates, basic auth, extra
    /// headers, in the Prometheus exporter toolkit's format (node_exporter's file works as is).
    ///
    /// Overrides FIX_MONITOR_PROMETHEUS__WEB_CONFIG and `[prometheus] web_config`.
    #[arg(long = "web.config.file", value_name = "PATH")]
    pub web_config_file: Option<String>,

    /// Where to read connections from: auto, ebpf, netlink, procfs or netstat [default: auto].
    ///
    /// auto tries ebpf (where its program loads: root, or CAP_BPF and CAP_PERFMON), then
    /// netlink, procfs and netstat. Overrides FIX_MONITOR_POLL__SOURCE and `[poll] source`.
    #[arg(long, value_name = "SOURCE")]
    pub source: Option<String>,

    /// Keep the active sessions' start times in this directory, so that a restart keeps their
    /// lifetimes (systemd: StateDirectory=; Kubernetes: an emptyDir) [default: none].
    ///
    /// Overrides FIX_MONITOR_STATE__DIR and `[state] dir`.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<String>,

    /// Log format on stderr: text or json [default: text].
    ///
    /// Overrides FIX_MONITOR_LOG__FORMAT and `[log] format`.
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,

    /// Log filter, a tracing EnvFilter directive (info, debug, warn,fix_monitor=debug)
    /// [default: info].
    ///
    /// Overrides FIX_MONITOR_LOG__LEVEL and `[log] level`.
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Push metrics over OTLP to this collector (a base URL such as http://collector:4317);
    /// implies `[otlp] enabled = true`.
    ///
    /// For http/protobuf, /v1/metrics is appended. Overrides FIX_MONITOR_OTLP__ENDPOINT,
    /// `[otlp] endpoint` and OTEL_EXPORTER_OTLP_ENDPOINT.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// OTLP transport: grpc or http/protobuf [default: grpc].
    ///
    /// Overrides FIX_MONITOR_OTLP__PROTOCOL, `[otlp] protocol` and OTEL_EXPORTER_OTLP_PROTOCOL.
    #[arg(long, value_name = "PROTOCOL")]
    pub otlp_protocol: Option<String>,

    /// The originals' --port meant the downstream port in one tool and the HTTP port in the
    /// other; it is accepted only to be rejected with a pointer to --target-port / --listen.
    #[arg(long = "port", hide = true, num_args = 0..=1, value_name = "PORT")]
    pub rejected_port: Option<Option<String>>,

    /// The original monitor's --log-file; fix-monitor logs to stderr only, so it is rejected
    /// with a pointer to the replacement.
    #[arg(long = "log-file", hide = true, num_args = 0..=1, value_name = "PATH")]
    pub rejected_log_file: Option<Option<String>>,
}
