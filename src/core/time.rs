//! Time as the layers hand it to each other.

use std::time::{Duration, Instant, SystemTime};

/// A point in time, on both clocks: `mono` for durations (immune to clock steps), `wall` for
/// what people read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp {
    /// The monotonic clock (`CLOCK_MONOTONIC` on Linux): what durations are measured on.
    pub mono: Instant,
    /// The wall clock, for people and exports.
    pub wall: SystemTime,
}

impl Timestamp {
    /// Both clocks, read now. Only the edges (the loop's clock, a source's reader thread) call
    /// it; the tracker is handed timestamps.
    pub fn now() -> Timestamp {
        Timestamp {
            mono: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// This timestamp moved forward by `d` on both clocks (for tests and simulations).
    pub fn after(&self, d: Duration) -> Timestamp {
        Timestamp {
            mono: self.mono + d,
            wall: self.wall + d,
        }
    }
}
