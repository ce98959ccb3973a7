//! The FIX session layer (opt-in), as the sidecar runs it: FIX messages read off the wire or
//! from the engine's log, tracked per FIX session, reported.
//!
//! # Layout
//! The protocol itself (codec, session tracker, engine logs, reassembly, the wire's connection
//! table, the simulator) is the `fix-monitor-protocol` crate, re-exported here. What is the
//! sidecar's:
//! - [`capture`]: the wire source's I/O (Linux `AF_PACKET`) and [`filter`], its classic BPF
//!   program compiled from the targets.
//! - [`monitor`]: the FIX layer running: one thread owns the sources and the tracker, keeps
//!   the wire's table in step with the TCP layer's sessions, publishes a [`monitor::FixState`].
//! - [`metrics`]: its OpenTelemetry instruments; [`http`]: `/sessions`.
//! - [`tunnels`]: sessions behind a local TLS tunnel: the plaintext leg joined to its outer
//!   session by the tunnel process's sockets and their timing.
//! - [`events`]: its session events (logons, logouts, gaps, rejects), from the counters'
//!   growth per round.

#[cfg(target_os = "linux")]
pub mod capture;
pub mod filter;

// The protocol layer is its own crate (`fix-monitor-protocol`); its modules keep their
// `fix_monitor::fix::...` paths.
pub use fix_monitor_protocol::{
    bursts, codec, forensics, logs, pair, reassembly, sim, skew, tracker, tunnel, wire,
};

#[cfg(test)]
mod config_tests;
pub mod events;
pub mod http;
pub mod metrics;
pub mod monitor;
pub mod tunnels;
