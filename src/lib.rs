//! fix-monitor: a sidecar that watches a FIX gateway's TCP sessions to its downstream targets
//! and reports them through the OpenTelemetry metrics SDK.
//!
//! # Layout
//! Data flows one way: `source` -> `tracker` -> `instruments` -> `export`.
//! - [`config`]: every setting, layered with figment (defaults < file < environment < flags),
//!   validated once into [`config::Settings`]; nothing else reads files or the environment.
//! - [`target`]: what a downstream target is and which target a socket belongs to.
//! - [`source`]: plain snapshots of matching ESTABLISHED sockets (netlink `sock_diag` with a
//!   kernel-side filter; `/proc/net/tcp*`; netstat2 elsewhere).
//! - [`tracker`]: a pure state machine; snapshots with timestamps in, opened/closed events out.
//! - [`instruments`]: the OpenTelemetry instruments, fed by tracker events and state.
//! - [`export`]: the meter provider's readers (Prometheus pull, OTLP push) and the HTTP
//!   endpoints.
//! - [`app`]: the poll loop, the shared status the endpoints read, and the one shutdown path.
//! - [`console`]: the sidecar for a person at a terminal: `watch` (a live view, a report at
//!   Ctrl+C) and `snapshot` (one poll, printed).
//! - [`demo`]: a simulated gateway and venues on loopback, watched by the real sidecar.

pub mod app;
pub mod config;
pub mod console;
pub mod demo;
pub mod export;
pub mod fix;
pub mod instruments;
pub mod process;
pub mod source;
pub mod status;
pub mod target;
pub mod tracker;
