//! Every setting of fix-monitor, in one place: defaults, the standard OpenTelemetry variables,
//! the config file, fix-monitor's own environment variables and the command line, layered with
//! figment and validated once into [`Settings`]. Configuration is data: this module parses and
//! checks values and does no other I/O than reading the config file (and, in
//! [`load_checked`], the process environment). What the values name on the file system (the
//! web config file, the state directory, TLS files) is read and checked by the start-up step,
//! [`crate::startup::prepare`], whose problems read the same way.
//!
//! # Layers, lowest to highest
//! 1. Built-in defaults: each section's `Default` (and [`defaults`]).
//! 2. The standard OpenTelemetry variables for OTLP (see below), so that an operator's own
//!    settings beat what a platform injects everywhere.
//! 3. The TOML file: `--config PATH`, else `FIX_MONITOR_CONFIG`, else
//!    [`DEFAULT_CONFIG_PATH`]. Only the default path may be absent.
//! 4. The environment: `FIX_MONITOR_` + the key path in upper case, sections joined by `__`
//!    (`FIX_MONITOR_POLL__INTERVAL=5s`, `FIX_MONITOR_PROMETHEUS__LISTEN=0.0.0.0:9464`,
//!    `FIX_MONITOR_TARGETS='[{address="10.0.0.5", port=9876}]'`). A `[..]` or `{..}` value is
//!    parsed as figment does; anything else is text that the key's check reads (so `5` is
//!    five seconds to an interval). An empty variable counts as unset; an unknown
//!    `FIX_MONITOR_*` variable is an error. The original exporter's `DOWNSTREAM_IP` (with
//!    optional `DOWNSTREAM_PORT`) defines one target.
//! 5. Command-line flags ([`ConfigArgs`]); `--ip` (alias `--target-ip`) defines one target,
//!    narrowed by `--target-port` and the original monitor's `--min-port`/`--max-port`. The
//!    originals' `--port` and `--log-file` are rejected with their replacements.
//!
//! Tables merge key by key, but a list replaces the list below it: `FIX_MONITOR_TARGETS`,
//! `DOWNSTREAM_IP` and `--ip` each *replace* the file's `[[targets]]` rather than add to them,
//! so that the one target the original tools were given is exactly what gets watched.
//! `DOWNSTREAM_IP` together with `FIX_MONITOR_TARGETS` is an error (two environment settings
//! that each claim the target list); `--ip` beats both. Every value keeps its origin (the
//! default, the file's path, the variable or the flag): errors name it, and so does
//! `fix-monitor config` ([`Loaded::explain`]), whose output is itself a valid config file.
//!
//! # File schema
//! ```toml
//! schedule_grace = "5m"       # an end this close to its window's end is planned
//! [[targets]]                 # one table per downstream; at least one target is required
//! name = "venue-a"            # optional; default "ADDRESS:PORT" (or "ADDRESS"); unique
//! address = "10.0.0.5"        # IP address or CIDR block ("10.0.0.0/24")
//! port = 9876                 # optional remote port; default any
//! local_ports = [5000, 6000]  # optional inclusive local port range; default any
//! heartbeat = "30s"           # optional FIX HeartBtInt of its sessions
//! stale_after = "60s"         # optional; default twice heartbeat; neither: not judged
//! comp_ids = ["VENUE"]        # optional: the FIX log sessions that belong to it
//! logon_lockout = { attempts = 5, within = "60s" }  # optional: the venue's logon lockout
//! schedule = "ldn-daily"      # optional: a [[schedules]] name; none: always expected up
//! [[schedules]]               # planned session windows (see `crate::schedule`)
//! name = "ldn-daily"
//! timezone = "Europe/London"  # IANA name; default UTC
//! start = "07:00"             # HH:MM[:SS] daily, or "Sun 17:00" weekly (end likewise)
//! end = "17:30"
//! days = ["Mon", "Tue", "Wed", "Thu", "Fri"]  # daily only: the days it opens; default all
//! holidays = ["2026-12-25"]   # local dates it does not open
//! [poll]
//! interval = "1s"             # humantime string, or an integer number of seconds
//! source = "auto"             # auto | ebpf | netlink | procfs | netstat
//! reconcile_interval = "60s"  # eBPF: time between two reconciles of its view
//! process_lookup = false      # netlink/procfs: pid and command of each session from /proc
//! health_interval = "5s"      # eBPF: time between health passes; default every poll
//! [prometheus]
//! enabled = true
//! listen = "127.0.0.1:9464"   # IP:PORT; fleets set 0.0.0.0:PORT
//! web_config = "/etc/fix-monitor/web.yml"  # exporter-toolkit file: TLS, basic auth, headers
//! expose_connections = true   # /connections and per-session addresses
//! reload_endpoint = false     # serve POST /-/reload (re-reads the config, as SIGHUP does)
//! [log]
//! format = "text"             # text | json
//! level = "info"              # a tracing EnvFilter directive
//! [otlp]                      # OTLP push; off unless enabled (or an endpoint is given)
//! enabled = true
//! endpoint = "http://127.0.0.1:4317"  # base URL; for http/protobuf /v1/metrics is appended
//! protocol = "grpc"           # grpc | http/protobuf
//! interval = "10s"            # export interval
//! timeout = "5s"              # one export, retries included
//! temporality = "cumulative"  # cumulative | delta | lowmemory
//! logs = true                 # session events as OTLP log records (false: metrics only)
//! headers = { "x-tenant" = "desk-1" }
//! [otlp.tls]                  # PEM files; the endpoint must be https://
//! ca_file = "/etc/fix-monitor/ca.pem"
//! cert_file = "/etc/fix-monitor/client.pem"
//! key_file = "/etc/fix-monitor/client.key"
//! [state]
//! dir = "/var/lib/fix-monitor"  # keeps active sessions' starts across restarts; default none
//! [fix]                       # the FIX session layer; off unless capture or a log is given
//! capture = false             # read FIX off the wire (CAP_NET_RAW)
//! our_comp_ids = ["GW"]       # the gateway's CompIDs; needed with [[fix.logs]]
//! [[fix.logs]]
//! path = "/var/log/quickfix/*.messages.log"  # a file or glob pattern
//! ```
//!
//! # The standard OpenTelemetry variables
//! Below the file (so fix-monitor's own file, variables and flags win where both are set) lies
//! a layer of the standard variables: `OTEL_EXPORTER_OTLP_ENDPOINT`, `..._PROTOCOL`,
//! `..._HEADERS`, `..._TIMEOUT` (milliseconds), `..._CERTIFICATE`, `..._CLIENT_CERTIFICATE`,
//! `..._CLIENT_KEY`, each also as `OTEL_EXPORTER_OTLP_METRICS_*` (which beats the generic one),
//! `OTEL_METRIC_EXPORT_INTERVAL` (milliseconds) and
//! `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`. `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` is
//! the full URL (used as is); the generic one is a base URL. Their values carry their variable's
//! name as origin. The exporter libraries never see these variables themselves
//! ([`crate::startup::withhold_library_env`]).
//!
//! An endpoint turns push on at its layer unless that layer sets `enabled` itself:
//! `--otlp-endpoint URL` always does (there is no flag to set `enabled`), and so do
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (which a file's `enabled = false` still overrides), a file's
//! `[otlp] endpoint` and `FIX_MONITOR_OTLP__ENDPOINT`.
//!
//! # Shape (after ripgrep's low/high args)
//! - `args`: the flags as typed ([`ConfigArgs`], strings).
//! - `layers`: turns the file text, the environment and the flags into figment providers, one
//!   per variable or flag, whose figment metadata records each value's [`Origin`]. I/O-free.
//! - `raw`: deserializes the merged tree into [`Settings`] (the section structs here are the
//!   tree: a key is a field, its default and its check), collecting *every* problem, and
//!   validates what spans keys. Pure.
//! - `explain`: renders [`Loaded::explain`] from the serialized settings, generically.
//! - `error`: [`ConfigError`] (key, value, origin, what is wrong and what is allowed) and
//!   [`ConfigErrors`], all of them, one per line; the binary exits with [`EXIT_USAGE`].
//!
//! Only [`load_checked`] touches the process environment and only [`load_from`] reads the file;
//! the pure [`parse_toml_str`] takes the file's content directly.

mod args;
mod error;
mod explain;
mod layers;
mod raw;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use args::ConfigArgs;
pub use error::{ConfigError, ConfigErrors, ErrorKind, Origin};
pub use raw::parse_duration;
pub(crate) use raw::{ALLOWED_PEM, ALLOWED_STATE_DIR};

use serde::{Deserialize, Serialize};
use strum::{Display, VariantNames};

use crate::schedule::{Schedule, ScheduleConfig};
use crate::source::SourceKind;
use crate::target::Targets;

/// Exit code for a bad configuration or command line: EX_USAGE from BSD `sysexits.h`, as
/// linkerd2-proxy uses, so that supervisors can tell "fix the config" from "crashed".
pub const EXIT_USAGE: i32 = 64;

/// The configuration file read when neither `--config` nor `FIX_MONITOR_CONFIG` names one.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/fix-monitor/config.toml";

/// The built-in defaults that other code names too, or that need a word of why; the lowest layer
/// is each section's `Default` (what `explain()` marks `# default`), which uses these.
pub mod defaults {
    use std::time::Duration;

    /// Netlink with a kernel-side filter makes a poll cheap, so poll often enough to see short
    /// sessions (the original tools used 5 s and 10 s).
    pub const INTERVAL: Duration = Duration::from_secs(1);
    /// The eBPF source's reconcile: often enough that a missed transition cannot stay wrong
    /// for long, rarely enough that its cost (one pass over the watched sessions) stays
    /// negligible.
    pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(60);
    /// The original monitor's `--min-port` default; used when only `--max-port` is given.
    pub const MIN_PORT: u16 = 5000;
    /// The original monitor's `--max-port` default; used when only `--min-port` is given.
    pub const MAX_PORT: u16 = 6000;
    /// Longest accepted poll interval. Far beyond any useful value, and keeps timer arithmetic
    /// (`Instant + interval`) away from overflow.
    pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);
    /// The OTLP specification's defaults, by protocol.
    pub const OTLP_GRPC_ENDPOINT: &str = "http://localhost:4317";
    pub const OTLP_HTTP_ENDPOINT: &str = "http://localhost:4318";
    /// The specification says 60 s; a desk wants to see a reconnect storm sooner, and one
    /// export of a few dozen series every 10 s costs nothing.
    pub const OTLP_INTERVAL: Duration = Duration::from_secs(10);
    /// One export, retries included. The shutdown waits this plus a second (at least 5 s) for
    /// the final export.
    pub const OTLP_TIMEOUT: Duration = Duration::from_secs(5);
}

/// A section of the tree: its fields with their checks and, after `=`, their defaults (the
/// type's own default where none is given), which make the section's `Default`.
macro_rules! section {
    ($(#[$doc:meta])* pub struct $name:ident {
        $($(#[$attr:meta])* pub $field:ident: $ty:ty $(= $default:expr)?,)*
    }) => {
        #[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
        #[serde(deny_unknown_fields, default)]
        $(#[$doc])*
        pub struct $name {
            $($(#[$attr])* pub $field: $ty,)*
        }

        impl Default for $name {
            fn default() -> Self {
                $name {
                    $($field: section!(@default $($default)?),)*
                }
            }
        }
    };
    (@default) => {
        Default::default()
    };
    (@default $default:expr) => {
        $default
    };
}

section! {
    /// The configuration tree: what the file, the variables and the flags are deserialized into
    /// and, validated, what the sidecar runs on. A key is one field below with its check (`with =
    /// "raw::check::NAME"`, which also prints it in `fix-monitor config`) and its default (after
    /// `=`, else its type's).
    pub struct Settings {
        /// What to watch, from `tables` (filled by `raw::validate`); never empty, names unique.
        #[serde(skip)]
        pub targets: Targets,
        /// The `[[targets]]` tables: as given and, once validated, as `fix-monitor config` shows
        /// them (each with its name and staleness filled in).
        #[serde(rename = "targets")]
        pub tables: Option<Vec<raw::RawTarget>>,
        pub poll: PollSettings,
        pub prometheus: PrometheusSettings,
        pub log: LogSettings,
        pub otlp: OtlpSettings,
        pub state: StateSettings,
        pub fix: FixSettings,
        /// `[[schedules]]`: the targets' planned session windows, as written (checked by
        /// [`crate::schedule`]; `targets[].schedule` names one).
        pub schedules: Vec<ScheduleConfig>,
        /// An end in the last `schedule_grace` of its target's window, or outside it, is
        /// planned ([`Schedule::planned_end`]); one for all schedules.
        #[serde(with = "raw::check::grace")]
        pub schedule_grace: Duration = crate::schedule::DEFAULT_GRACE,
        /// `targets[i].schedule`, resolved, by target id (filled by `raw::validate`); `None`:
        /// the target is always expected up.
        #[serde(skip)]
        pub target_schedules: Vec<Option<Arc<Schedule>>>,
    }
}

section! {
    /// `[fix]`: the FIX session layer (opt-in: off unless `capture` or a log is given).
    pub struct FixSettings {
        /// Read FIX off the wire (a packet socket; needs `CAP_NET_RAW`).
        #[serde(with = "raw::check::boolean")]
        pub capture: bool,
        /// The gateway's CompIDs: a log line's direction comes from them.
        #[serde(with = "raw::check::comp_ids")]
        pub our_comp_ids: Vec<String>,
        /// Engine message logs to follow: `[[fix.logs]] path = "GLOB"` (a path is required; checked
        /// in `raw::validate`).
        pub logs: Vec<FixLog>,
        /// `targets[i].comp_ids`, by target id: which target a log's session belongs to (filled
        /// from the targets by `raw::validate`).
        #[serde(skip)]
        pub target_comp_ids: Vec<Vec<String>>,
        /// `targets[i].logon_lockout`, by target id (filled from the targets by `raw::validate`).
        #[serde(skip)]
        pub target_logon_lockout: Vec<Option<LogonLockout>>,
        /// `targets[i].message_limit`, by target id (filled from the targets by `raw::validate`).
        #[serde(skip)]
        pub target_message_limit: Vec<Option<MessageLimit>>,
        /// `targets[i].tls_tunnel`, by target id: the local tunnel whose plaintext leg carries the
        /// target's FIX sessions (filled from the targets by `raw::validate`).
        #[serde(skip)]
        pub target_tls_tunnel: Vec<Option<TlsTunnel>>,
    }
}

/// `targets[].tls_tunnel`: the gateway reaches the target through a local TLS tunnel, and
/// speaks plaintext FIX to it.
/// Displayed as the value is written: the address, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Display)]
pub enum TlsTunnel {
    /// The address the gateway connects to (the tunnel's accepting socket), on loopback.
    #[strum(transparent)]
    At(std::net::SocketAddr),
    /// `"auto"`: found at run time, as the one loopback listener of the stunnel process that
    /// owns the target's sessions (`fix::tunnels`).
    #[strum(serialize = "auto")]
    Auto,
}

/// `targets[].message_limit`: the venue's throttle, `count` messages per `per` (one of the
/// measured windows: 1ms, 10ms, 100ms, 1s). The FIX layer reports our peak in that window
/// against it (`fix_session_throttle_utilization_ratio`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageLimit {
    /// Messages allowed per `per`; at least 1.
    pub count: u32,
    /// The throttle's window: index into `bursts::WINDOW_NAMES`.
    pub window: usize,
}

/// `targets[].logon_lockout`: the venue locks a FIX session out after `attempts` logons within
/// `within` (CME: 5 invalid logons within 60 s). The FIX layer counts our logon attempts in that
/// window and exports the threshold, so an alert can fire at the attempt before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogonLockout {
    /// Logon attempts within `within` that lock the session out; 2 to
    /// `tracker::MAX_LOGON_ATTEMPTS`.
    pub attempts: u32,
    /// The sliding window; above zero, at most 24h.
    pub within: Duration,
}

impl LogonLockout {
    /// The window logon attempts are counted over for a target without `logon_lockout`.
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
}

section! {
    /// One `[[fix.logs]]` table.
    pub struct FixLog {
        /// A file or glob pattern.
        #[serde(with = "raw::check::glob")]
        pub path: Option<String>,
    }
}

impl FixSettings {
    /// The log patterns to follow.
    pub fn log_paths(&self) -> Vec<String> {
        self.logs.iter().filter_map(|l| l.path.clone()).collect()
    }

    pub fn enabled(&self) -> bool {
        self.capture || !self.logs.is_empty()
    }
}

section! {
    pub struct StateSettings {
        /// Where the active sessions' starts are kept so that a restart keeps their lifetimes
        /// (`persist`); checked writable by `startup::prepare`. None: nothing is kept.
        #[serde(with = "raw::check::state_dir")]
        pub dir: Option<PathBuf>,
    }
}

section! {
    pub struct PollSettings {
        /// Time between two polls of the connection source; > 0.
        #[serde(with = "raw::check::interval")]
        pub interval: Duration = defaults::INTERVAL,
        /// Which connection source to use.
        #[serde(with = "raw::check::source")]
        pub source: SourceKind = SourceKind::Auto,
        /// eBPF source only: time between two reconciles of its view (from its programs' table of
        /// watched sessions; a full dump at start); > 0.
        #[serde(with = "raw::check::interval")]
        pub reconcile_interval: Duration = defaults::RECONCILE_INTERVAL,
        /// netlink and procfs sources: name the process owning each new session (pid, command)
        /// from the socket inodes in `/proc/*/fd` (eBPF mode names it by itself).
        #[serde(with = "raw::check::boolean")]
        // Off: walking every process's open files costs CPU that grows with the host, and
        // reading other users' needs privilege (see README, "Which process").
        pub process_lookup: bool = false,
        /// eBPF source only: time between two in-kernel health passes over every watched session
        /// (session health); not set: every poll. The netlink source reads it in every poll's dump.
        #[serde(with = "raw::check::interval")]
        pub health_interval: Option<Duration>,
    }
}

section! {
    pub struct PrometheusSettings {
        /// Whether to serve the Prometheus pull endpoint.
        #[serde(with = "raw::check::boolean")]
        pub enabled: bool = true,
        /// Where to serve it. Port 0 is allowed (the OS picks a free port), which tests rely on.
        #[serde(with = "raw::check::listen")]
        // Loopback: exposing metrics beyond the host is a deliberate choice (0.0.0.0:9464).
        pub listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 9464)),
        /// The exporter toolkit's web configuration file (TLS, client certificates, basic auth,
        /// extra headers); `None`: plain HTTP, no auth. Read and checked by `startup::prepare`.
        #[serde(with = "raw::check::path")]
        pub web_config: Option<PathBuf>,
        /// Serve `/connections` and the sessions' (and venues') addresses on `/` and `/health`.
        #[serde(with = "raw::check::boolean")]
        // `/connections` and the page's per-session details are served unless a site
        // turns them off (venue addresses can be sensitive).
        pub expose_connections: bool = true,
        /// Serve `POST /-/reload` (re-read the configuration, as SIGHUP does), behind the web
        /// config's auth; off unless asked for, as Prometheus's `--web.enable-lifecycle`.
        #[serde(with = "raw::check::boolean")]
        pub reload_endpoint: bool = false,
    }
}

section! {
    pub struct LogSettings {
        #[serde(with = "raw::check::log_format")]
        pub format: LogFormat = LogFormat::Text,
        /// A tracing `EnvFilter` directive, already checked to parse.
        #[serde(with = "raw::check::log_level")]
        pub level: String = "info".to_owned(),
    }
}

impl LogSettings {
    /// The filter directive to install: `level`, with the OpenTelemetry crates' own logs off
    /// unless `level` names them. Their export errors would otherwise repeat on every failed
    /// export; fix-monitor reports an outage once itself (`export::otlp`). Ask for them with,
    /// e.g., `--log-level info,opentelemetry_sdk=debug`.
    pub fn filter_directive(&self) -> String {
        match self.level.contains("opentelemetry") {
            true => self.level.clone(),
            false => format!("{},opentelemetry=off", self.level),
        }
    }
}

section! {
    /// OTLP push. Its `endpoint` and the export URL are both kept: the first is what was
    /// configured (and what `explain` prints), the second what the exporter posts to.
    pub struct OtlpSettings {
        /// Whether to push.
        #[serde(with = "raw::check::boolean")]
        // Push is opt-in: a sidecar must not start sending data somewhere by surprise.
        pub enabled: bool = false,
        /// As configured: a base URL (`http://collector:4318`), or, from
        /// `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`, the full URL. Unset: the protocol's default,
        /// filled in by validation.
        #[serde(with = "raw::check::text")]
        pub endpoint: String,
        /// Where the exporter sends: `endpoint` for gRPC; for HTTP the base URL with `/v1/metrics`
        /// appended (unless it already ends so, or came from the signal-specific variable).
        #[serde(skip)]
        pub url: String,
        #[serde(with = "raw::check::protocol")]
        pub protocol: OtlpProtocol = OtlpProtocol::Grpc,
        /// Time between two exports; > 0.
        #[serde(with = "raw::check::interval")]
        pub interval: Duration = defaults::OTLP_INTERVAL,
        /// Deadline of one export, its retries included; > 0.
        #[serde(with = "raw::check::interval")]
        pub timeout: Duration = defaults::OTLP_TIMEOUT,
        /// Sent with every export (gRPC metadata or HTTP headers). Names are lower case (`layers`
        /// lower-cases them); values are checked in validation.
        pub headers: BTreeMap<String, String>,
        #[serde(with = "raw::check::temporality")]
        // What Prometheus-style backends expect; `delta` is for backends that want it.
        pub temporality: OtlpTemporality = OtlpTemporality::Cumulative,
        /// Session events as OTLP log records beside the metrics (`session_events`).
        #[serde(with = "raw::check::boolean")]
        pub logs: bool = true,
        pub tls: TlsFiles,
    }
}

section! {
    /// PEM files for a TLS collector, checked readable by `startup::prepare` when push is on; they
    /// are read when the exporter is built.
    pub struct TlsFiles {
        /// Trust these CAs (instead of the system's roots, which are used without it).
        #[serde(with = "raw::check::path")]
        pub ca_file: Option<PathBuf>,
        /// Client certificate for mutual TLS; given together with `key_file`.
        #[serde(with = "raw::check::path")]
        pub cert_file: Option<PathBuf>,
        #[serde(with = "raw::check::path")]
        pub key_file: Option<PathBuf>,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Display, VariantNames)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (port 4317 by convention).
    #[serde(rename = "grpc")]
    #[strum(serialize = "grpc")]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318 by convention).
    #[serde(rename = "http/protobuf")]
    #[strum(serialize = "http/protobuf")]
    HttpProtobuf,
}

/// How sums and histograms are reported (the OTLP temporality preference).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Display, VariantNames)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum OtlpTemporality {
    /// Totals since start: what Prometheus-style backends expect, and what survives a lost
    /// export (the next one carries the total).
    Cumulative,
    /// Changes since the previous export.
    Delta,
    /// Delta for counters and histograms, cumulative for up-down counters.
    LowMemory,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Display, VariantNames)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Which configuration file took part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigFile {
    /// This file was read.
    Read(PathBuf),
    /// The default path was looked for and does not exist (not an error).
    Absent(PathBuf),
}

/// The validated settings, and where each value came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub settings: Settings,
    pub config_file: ConfigFile,
    /// Origin of every value some layer set, by key (`poll.interval`, `targets[0].port`).
    origins: BTreeMap<String, Origin>,
    /// `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` as set: the SDK reads them itself.
    resource_vars: Vec<(String, String)>,
}

impl Loaded {
    /// Where the value at `key` came from: `poll.interval`, `prometheus.listen`,
    /// `targets[0].address`, ...; [`Origin::Default`] for a key no layer set.
    pub fn origin(&self, key: &str) -> Option<&Origin> {
        Some(self.origins.get(key).unwrap_or(&Origin::Default))
    }

    /// The effective configuration as TOML (it parses back to the same settings), with each
    /// value's origin in a trailing comment. This is what `fix-monitor config` prints.
    pub fn explain(&self) -> String {
        explain::explain(self)
    }
}

/// Loads the configuration from the process environment (`FIX_MONITOR_*`, `DOWNSTREAM_*` and
/// the standard `OTEL_*` variables listed above), `--config` or the default file, and the
/// flags; then runs `check` on what loaded, even where some values were bad (those keep their
/// defaults), so that its problems are reported together with the configuration's. The binary
/// passes the start-up step, [`crate::startup::prepare`], whose I/O stays out of this module.
pub fn load_checked<T>(
    args: &ConfigArgs,
    check: impl FnOnce(&Loaded) -> Result<T, ConfigErrors>,
) -> Result<(Loaded, T), ConfigErrors> {
    load_checked_with(args, &[], check)
}

/// [`load_checked`] with `withheld` variables added to the process environment: a reload passes
/// those the start withheld from the exporter libraries (`startup::withhold_library_env`), so
/// that it reads what the start read.
pub fn load_checked_with<T>(
    args: &ConfigArgs,
    withheld: &[(String, String)],
    check: impl FnOnce(&Loaded) -> Result<T, ConfigErrors>,
) -> Result<(Loaded, T), ConfigErrors> {
    // A non-UTF-8 value becomes a string with U+FFFD in it, which validation then rejects
    // while naming the variable.
    let env = std::env::vars_os().filter_map(|(name, value)| {
        let value = value.to_string_lossy().into_owned();
        Some((name.into_string().ok()?, value))
    });
    let env = env.chain(withheld.iter().cloned());
    load_from_checked(args, env, DEFAULT_CONFIG_PATH, check)
}

/// [`load_checked`] with the environment and the default file path given and no check, for
/// tests and embedding. Variables other than `FIX_MONITOR_*`, `DOWNSTREAM_IP`,
/// `DOWNSTREAM_PORT` and the `OTEL_*` variables above are ignored.
pub fn load_from(
    args: &ConfigArgs,
    env: impl IntoIterator<Item = (impl Into<String>, impl Into<String>)>,
    default_path: impl AsRef<Path>,
) -> Result<Loaded, ConfigErrors> {
    load_from_checked(args, env, default_path, |_| Ok(())).map(|(loaded, ())| loaded)
}

/// [`load_from`], then `check`, as [`load_checked`].
pub(crate) fn load_from_checked<T>(
    args: &ConfigArgs,
    env: impl IntoIterator<Item = (impl Into<String>, impl Into<String>)>,
    default_path: impl AsRef<Path>,
    check: impl FnOnce(&Loaded) -> Result<T, ConfigErrors>,
) -> Result<(Loaded, T), ConfigErrors> {
    let env: BTreeMap<String, String> = env
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .filter(|(k, v)| layers::is_ours(k) && !v.is_empty())
        .collect();

    // A file somebody named must exist; the default one is optional, so that a sidecar can be
    // configured by flags or environment alone.
    let (path, named_by) = match (&args.config, env.get(layers::ENV_CONFIG)) {
        (Some(path), _) => (path.clone(), Some(Origin::Flag("--config".into()))),
        (None, Some(path)) => (path.into(), Some(Origin::Env(layers::ENV_CONFIG.into()))),
        (None, None) => (default_path.as_ref().to_path_buf(), None),
    };
    let text = match std::fs::read_to_string(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && named_by.is_none() => Ok(None),
        Ok(text) => Ok(Some(text)),
        Err(e) => Err(read_error(&path, e).origin(named_by)),
    };
    assemble(args, &env, &path, text, check)
}

/// Parses and validates a configuration file's content alone (defaults below it, no
/// environment, no flags). `path` is only used to name the file in errors and origins.
pub fn parse_toml_str(text: &str, path: impl AsRef<Path>) -> Result<Loaded, ConfigErrors> {
    let (args, text) = (ConfigArgs::default(), Ok(Some(text.to_owned())));
    assemble(&args, &BTreeMap::new(), path.as_ref(), text, |_| Ok(())).map(|(loaded, ())| loaded)
}

fn read_error(path: &Path, error: std::io::Error) -> ConfigError {
    let message = format!("cannot read the config file: {error}");
    ConfigError::new(ErrorKind::File, path.display().to_string(), message)
}

/// The pure core: file content, environment and flags in; settings (with defaults where values
/// were bad) checked by `check`, or every problem of both out. The file's `text` is `Ok(None)`
/// when the default file does not exist, `Err` when it could not be read.
fn assemble<T>(
    args: &ConfigArgs,
    env: &BTreeMap<String, String>,
    path: &Path,
    text: Result<Option<String>, ConfigError>,
    check: impl FnOnce(&Loaded) -> Result<T, ConfigErrors>,
) -> Result<(Loaded, T), ConfigErrors> {
    let config_file = match &text {
        Ok(Some(_)) => ConfigFile::Read(path.to_path_buf()),
        _ => ConfigFile::Absent(path.to_path_buf()),
    };
    let mut errors = Vec::new();
    let dict = text.and_then(|text| text.map(|text| layers::parse_toml(path, &text)).transpose());
    let file = dict.map_err(|error| errors.push(error)).ok().flatten();
    // A broken file may well have held the targets: saying "no targets" would mislead.
    let file_failed = !errors.is_empty();
    let figment = layers::build(file.map(|dict| (path, dict)), env, args, &mut errors);
    let (raw, tree, failed) = raw::extract(&figment, &mut errors);
    let origins = raw::origins(&figment, &tree);
    let mut context = raw::Context {
        config_path: path,
        file_failed,
        origins: &origins,
        failed: &failed,
        errors: &mut errors,
    };
    let settings = raw::validate(raw, &mut context);
    let resource_vars = layers::RESOURCE_VARS.iter();
    let resource_vars = resource_vars.filter_map(|&n| Some((n.to_owned(), env.get(n)?.clone())));
    let resource_vars = resource_vars.collect();
    let loaded = Loaded {
        settings,
        config_file,
        origins,
        resource_vars,
    };
    let checked = check(&loaded).map_err(|e| errors.extend(e.iter().cloned()));
    match checked {
        Ok(t) if errors.is_empty() => Ok((loaded, t)),
        _ => Err(ConfigErrors::new(errors)),
    }
}
