//! fix-monitor: a sidecar that watches a FIX gateway's TCP sessions to its downstream targets
//! and reports them through the OpenTelemetry metrics SDK.
//!
//! # Layout
//! Data flows one way: `source` -> `tracker` -> `instruments` -> `export`.
//! - [`config`]: every setting, layered with figment (defaults < file < environment < flags),
//!   validated once into [`config::Settings`]. It is the one reader of the environment, but for
//!   `TERM` (the console's dumb-terminal check) and `OTEL_SERVICE_NAME` /
//!   `OTEL_RESOURCE_ATTRIBUTES` (the SDK's resource detectors, `instruments::resource`); the
//!   exporter libraries' own `OTEL_EXPORTER_OTLP_*` variables are withheld from them after
//!   loading ([`startup::withhold_library_env`]). `RUST_LOG` is not read.
//! - [`target`]: what a downstream target is and which target a socket belongs to.
//! - [`source`]: plain snapshots of matching ESTABLISHED sockets (netlink `sock_diag` with a
//!   kernel-side filter; `/proc/net/tcp*`; netstat2 elsewhere).
//! - [`tracker`]: a pure state machine; snapshots with timestamps in, opened/closed events out.
//! - [`instruments`]: the OpenTelemetry instruments, fed by tracker events and state.
//! - [`export`]: the meter provider's readers (Prometheus pull, OTLP push) and the HTTP
//!   endpoints.
//! - [`session`]: what one session is, for every reader (endpoints, console, report,
//!   snapshot); their JSON and tables are presentations of it.
//! - [`state`]: the immutable view the loop publishes after each change (a watch channel);
//!   readers take the latest without ever waiting for the loop.
//! - [`poller`]: the loop: a source, a clock and an input channel passed in; tick -> tracker ->
//!   instruments -> published state -> logs. Tested with a manual clock and a scripted source.
//! - [`persist`]: the state file (`[state] dir`): active sessions' starts, tagged with the boot
//!   id, so that a restart keeps their lifetimes.
//! - [`startup`]: the I/O the configuration names (the web config file, the state dir, TLS
//!   files), read and checked before start, its problems reported like the configuration's.
//! - [`app`]: start (open the source, bind the endpoint, spawn the loop) and the one shutdown
//!   path.
//! - [`console`]: the sidecar for a person at a terminal: `watch` (a live view, a report at
//!   Ctrl+C) and `snapshot` (one poll, printed).
//! - [`demo`]: a simulated gateway and venues on loopback, watched by the real sidecar.

pub mod app;
pub mod config;
pub mod console;
pub mod demo;
pub mod export;
pub mod fix;
pub mod health;
pub mod instruments;
pub mod persist;
pub mod poller;
pub mod process;
pub mod session;
pub mod source;
pub mod startup;
pub mod state;
pub mod target;
pub mod tracker;
