//! The ground floor of fix-monitor: the vocabulary every layer shares, and nothing else.
//!
//! Data flows one way, each layer a crate that can only import the ones below it:
//!
//! ```text
//! fix-monitor-core      (this crate: types only, no I/O, nothing of the project)
//!   ^                         ^
//! fix-monitor-kernel    fix-monitor-protocol
//!   (the sources: sock_diag,    (FIX: codec, session tracker, engine logs,
//!   destroy events, procfs,     reassembly, the wire's table, simulator)
//!   netstat, eBPF)
//!   ^                         ^
//! fix-monitor           (the sidecar: config, loop, tracker, health, instruments, export)
//! ```
//!
//! Sources produce these types, the tracker and everything above consume them; a type that
//! only one layer needs lives in that layer, not here.
//!
//! # Public API
//! - [`target`]: what a downstream target is ([`Target`], [`Targets`]) and which one a socket
//!   belongs to.
//! - [`SocketEntry`] and [`TcpState`]: one socket as a source saw it in a snapshot.
//! - [`SocketEvent`]: one socket's transition (opened, closed) as an event-seeing source saw
//!   it, with who closed it ([`ClosedBy`]), its [`Process`] and its final [`TcpCounters`].
//! - [`Timestamp`]: a point in time on the monotonic and the wall clock; the layers above never
//!   read a clock themselves, they are handed timestamps.
//! - [`TcpHealth`]: the fields of a socket's `tcp_info` that fix-monitor keeps.
//! - [`Capabilities`]: what a source can do (events, health, process, who hung up, how a
//!   miss is confirmed), which the layers above ask instead of which source runs.

mod capabilities;
mod event;
mod health;
mod socket;
pub mod target;
mod time;

pub use capabilities::{Capabilities, Confirmation, EventFeed, HealthFeed, ProcessFeed};
pub use event::{KernelCause, SocketEvent, SocketEventKind, TcpCounters};
pub use health::TcpHealth;
pub use socket::{ClosedBy, Process, SocketEntry, TcpState};
pub use target::{PortRange, Remap, Target, TargetId, Targets};
pub use time::Timestamp;
