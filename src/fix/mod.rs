//! The FIX session layer (opt-in): FIX messages read off the wire or from the engine's log,
//! tracked per FIX session.
//!
//! # Layout
//! Data flows one way, as in the TCP layer: a source yields messages with a direction and a
//! timestamp, the tracker (pure, time as an input) keeps the per-session state and counts.
//! - [`codec`]: the tag=value codec (framing, BodyLength and CheckSum checks, writer).
//! - [`tracker`]: the FIX session state machine, keyed by (BeginString, SenderCompID,
//!   TargetCompID).
//! - [`logs`]: the engine-log source (QuickFIX/J, QuickFIX, QuickFIX/n message logs).
//! - [`reassembly`]: per-direction TCP stream reassembly for the wire source.
//! - [`capture`]: the wire source (Linux `AF_PACKET` with a classic BPF filter).
//! - [`sim`]: a small FIX engine that drives real sessions, for the tests and the demo.
//! - [`pair`]: one session driven from both ends by one thread (the demo, the benchmarks).

#[cfg(target_os = "linux")]
pub mod capture;
pub mod codec;
pub mod filter;
pub mod logs;
pub mod pair;
pub mod reassembly;
pub mod sim;
pub mod tracker;
pub mod wire;

#[cfg(test)]
mod config_tests;
pub mod http;
pub mod metrics;
pub mod monitor;
