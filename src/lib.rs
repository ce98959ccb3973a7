//! fix-monitor: a sidecar that watches a FIX gateway's TCP sessions to its downstream targets
//! and reports them through the OpenTelemetry metrics SDK.
//!
//! # Layout
//! Data flows one way: `source` -> `tracker` -> `instruments` -> `export`. The workspace's
//! crates hold its lower floors, so that a wrong-way import does not compile:
//! `fix-monitor-core` (`src/core`: the vocabulary every layer shares: sockets, events,
//! timestamps, health fields, targets, capabilities) <- `fix-monitor-kernel` (`src/kernel`: the
//! sources) and `fix-monitor-protocol` (`src/protocol`: the FIX codec, session tracker, engine
//! logs, reassembly, the wire's table, the simulator) <- this crate (the sidecar) <-
//! `fix-monitor-test-support` (`tests/support`: what both test tiers share).
//! `scripts/check-layers.sh` shows it with `cargo tree`; `tests/integration/layers.rs` fails on a
//! dependency that points up. `cargo doc --workspace --no-deps --open` is the module map.
//! - [`config`]: every setting, layered with figment (defaults < file < environment < flags),
//!   validated once into [`config::Settings`]. It is the one reader of the environment, but for
//!   `TERM` (the console's dumb-terminal check) and `OTEL_SERVICE_NAME` /
//!   `OTEL_RESOURCE_ATTRIBUTES` (the SDK's resource detectors, `instruments::resource`); the
//!   exporter libraries' own `OTEL_EXPORTER_OTLP_*` variables are withheld from them after
//!   loading ([`startup::withhold_library_env`]). `RUST_LOG` is not read.
//! - [`target`]: what a downstream target is and which target a socket belongs to
//!   (re-exported from `fix-monitor-core`).
//! - [`source`]: plain snapshots of matching ESTABLISHED sockets (netlink `sock_diag` with a
//!   kernel-side filter; `/proc/net/tcp*`; netstat2 elsewhere), kernel events and eBPF: the
//!   `fix-monitor-kernel` crate, re-exported with the openers that take the configuration's
//!   defaults.
//! - [`tracker`]: a pure state machine; snapshots with timestamps in, opened/closed events out.
//! - [`ends`]: why each session ended: the TCP layer's end, the FIX layer's account of it and
//!   the target's schedule joined into one cause.
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
//! - [`schedule`]: session schedules (daily, overnight and weekly windows in a time zone, with
//!   holidays): whether a target is expected up at an instant, and whether an end was planned.
//! - [`startup`]: the I/O the configuration names (the web config file, the state dir, TLS
//!   files), read and checked before start, its problems reported like the configuration's.
//! - [`reload`]: the configuration re-read on SIGHUP (or `POST /-/reload`): what a reload may
//!   change, what only a restart applies, and how the last one went.
//! - [`app`]: start (open the source, bind the endpoint, spawn the loop) and the one shutdown
//!   path.
//! - [`console`]: the sidecar for a person at a terminal: `watch` (a live view, a report at
//!   Ctrl+C) and `snapshot` (one poll, printed).
//! - [`fix`]: the FIX layer as the sidecar runs it (capture, the running layer, its metrics,
//!   `/sessions`), the protocol crate's modules re-exported.
//! - [`demo`]: a simulated gateway and venues on loopback, watched by the real sidecar.

// `missing_docs` (a workspace lint) is for the library crates below the sidecar; this crate is
// the sidecar, not an API for others.
#![allow(missing_docs)]

pub mod app;
pub mod config;
pub mod console;
pub mod demo;
pub mod ends;
pub mod export;
pub mod fix;
pub mod health;
pub mod instruments;
pub mod persist;
pub mod poller;
pub mod process;
pub mod reload;
pub mod schedule;
pub mod session;
pub mod session_events;
/// The sources live in their own crate, [`fix_monitor_kernel`]; this facade keeps the
/// `fix_monitor::source::...` paths (the tests, the fuzz harness) and adds [`source::open`],
/// which takes its defaults from the configuration.
pub mod source {
    pub use fix_monitor_kernel::*;

    /// [`open_with`] with the configuration's default reconcile interval.
    pub fn open(
        kind: SourceKind,
        targets: &fix_monitor_core::Targets,
    ) -> Result<Box<dyn Source>, SourceError> {
        open_with(kind, targets, crate::config::defaults::RECONCILE_INTERVAL)
    }
}
pub mod startup;
pub mod state;
/// Targets live on the ground floor; re-exported here so that `crate::target` paths (the FIX
/// layer) keep compiling.
pub use fix_monitor_core::target;
pub mod tracker;
