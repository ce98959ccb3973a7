//! What an event-driven source (kernel socket-destroy notifications today, an eBPF program
//! later) hands the loop: socket transitions as they happen, between polls. Polls remain the
//! reference; events make closes exact and early, and show sessions no poll saw.

use fix_monitor_core::SocketEvent;

use crate::SourceError;

/// One wake-up's worth of events.
#[derive(Debug, Default)]
pub struct EventBatch {
    /// The transitions read, stamped with the time they were read.
    pub events: Vec<SocketEvent>,
    /// Events the kernel dropped since the last batch (a full buffer): the loop counts them
    /// and reconciles at once with a full poll.
    pub lost: u64,
    /// A read that failed (the source goes on).
    pub error: Option<SourceError>,
}

/// Which way the sidecar learns of closes; `/health` and the start-up log say which.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum Mode {
    /// Kernel socket-destroy notifications and polls together: every close exactly, sessions
    /// shorter than a poll included.
    KernelEvents,
    /// The eBPF source's tracepoint: every open and close as it happens, with its kernel
    /// timestamp and who hung up; polls only reconcile and read health.
    Tracepoint,
    /// Polls only: closes are known to within one interval, sessions shorter than a poll are
    /// not seen. `reason` says why events are not in use.
    Polling {
        /// Why events are not in use.
        reason: String,
    },
}

impl Mode {
    /// The mode's name, as `/health` and the log say it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::KernelEvents => "kernel-events",
            Mode::Tracepoint => "tracepoint",
            Mode::Polling { .. } => "polling",
        }
    }
}
