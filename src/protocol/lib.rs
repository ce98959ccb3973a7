//! fix-monitor's FIX protocol layer: FIX messages from bytes, and FIX sessions from messages.
//! It does no I/O of its own but reading files (the engine's logs) and, in the simulator, TCP
//! on loopback; it never reads a clock (time is an input), so every part is tested on made-up
//! bytes and timestamps. It depends on `fix-monitor-core` alone (targets).
//!
//! # Public API
//! - [`codec`]: the tag=value codec (framing, BodyLength and CheckSum checks, a writer).
//! - [`tracker`]: the FIX session state machine, keyed by (BeginString, our CompID, their
//!   CompID): logons, logouts, sequence numbers, orders and their round trips.
//! - [`bursts`]: the most messages in any 1 ms, 10 ms, 100 ms and 1 s over the last minute,
//!   per direction (what a venue's throttle sees), and which rejects say "throttled".
//! - [`forensics`]: sequence-number events classified, resend requests answered or open, and
//!   our orders' outcomes (ExecutionReports by ExecType, rejects by reason).
//! - [`skew`]: clock skew sampled per session and direction: SendingTime (tag 52) against the
//!   time a message was seen (at most one sample per 100 ms), and the UTCTimestamp parser.
//! - [`logs`]: the engine-log source (QuickFIX/J, QuickFIX, QuickFIX/n message logs): a pure
//!   line parser and a follower of glob-matched files across rotation and truncation.
//! - [`reassembly`]: per-direction TCP stream reassembly for the wire source.
//! - [`wire`]: from packets to FIX messages: the wire source's connection table (bounded,
//!   kept in step with the TCP layer's sessions), reassembly, decoding, the tracker.
//! - [`tunnel`]: sessions behind a local TLS tunnel: which outer TCP session carries a
//!   plaintext leg the wire reads (by the tunnel process and timing).
//! - [`sim`]: a small FIX engine that drives real sessions on loopback, for the tests and the
//!   demo; [`pair`]: one session driven from both ends by one thread (the demo, benchmarks).
//!
//! The packet socket that feeds [`wire`] and its classic BPF filter are the sidecar's
//! (`fix_monitor::fix::capture`); the FIX layer running, its metrics and `/sessions` too.

pub mod bursts;
pub mod codec;
pub mod forensics;
pub mod logs;
pub mod pair;
pub mod reassembly;
pub mod sim;
pub mod skew;
pub mod tracker;
pub mod tunnel;
pub mod wire;
