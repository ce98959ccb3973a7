//! What the sidecar knows right now, shared between the poll loop (the only writer) and the
//! readers (HTTP endpoints, console, report), and the JSON shapes people read it in.
//!
//! The poll loop holds the lock only to apply a snapshot; readers hold it only to copy out a
//! view. No reader ever polls.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::source::{SourceKind, TcpState};
use crate::target::Targets;
use crate::tracker::{Connection, Event, TargetStats, Timestamp, Tracker};

/// How many closed connections are kept for display (the original report kept 10).
pub const RECENT_CLOSED: usize = 20;

/// Polling is unhealthy once no poll has succeeded for this many intervals.
pub const UNHEALTHY_AFTER_INTERVALS: u32 = 3;

/// A closed connection, kept for display only.
#[derive(Debug, Clone)]
pub struct Closed {
    pub conn: Connection,
    pub at: Timestamp,
    pub duration: Duration,
}

/// The outcome of recent polls.
#[derive(Debug, Clone, Default)]
pub struct PollHealth {
    pub last_success: Option<Timestamp>,
    pub last_error: Option<String>,
    pub consecutive_failures: u64,
    pub polls: u64,
}

#[derive(Debug)]
pub struct Monitor {
    pub tracker: Tracker,
    pub recent_closed: VecDeque<Closed>,
    pub health: PollHealth,
    pub started: Timestamp,
    pub source: SourceKind,
    pub interval: Duration,
    pub host: String,
}

/// The handle everyone shares.
#[derive(Debug, Clone)]
pub struct Shared(Arc<Mutex<Monitor>>);

impl Shared {
    pub fn new(
        targets: Targets,
        source: SourceKind,
        interval: Duration,
        host: String,
        started: Timestamp,
    ) -> Shared {
        Shared(Arc::new(Mutex::new(Monitor {
            tracker: Tracker::new(targets),
            recent_closed: VecDeque::with_capacity(RECENT_CLOSED),
            health: PollHealth::default(),
            started,
            source,
            interval,
            host,
        })))
    }

    pub fn lock(&self) -> MutexGuard<'_, Monitor> {
        // A panic elsewhere must not take the endpoints down with it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Monitor {
    /// Keeps the closed connections among `events` for display, the newest last.
    pub fn remember_closed(&mut self, events: &[Event]) {
        for e in events {
            if let Event::Closed {
                conn, at, duration, ..
            } = e
            {
                if self.recent_closed.len() == RECENT_CLOSED {
                    self.recent_closed.pop_front();
                }
                self.recent_closed.push_back(Closed {
                    conn: conn.clone(),
                    at: *at,
                    duration: *duration,
                });
            }
        }
    }

    pub fn is_healthy(&self, now: Timestamp) -> bool {
        let limit = self.interval * UNHEALTHY_AFTER_INTERVALS;
        let since = self.health.last_success.unwrap_or(self.started);
        now.mono.saturating_duration_since(since.mono) <= limit
    }

    pub fn connections(&self, now: Timestamp) -> Vec<ConnectionView> {
        let mut v: Vec<ConnectionView> = self
            .tracker
            .active()
            .map(|c| ConnectionView::new(c, self.tracker.targets(), now))
            .collect();
        v.sort_by(|a, b| {
            (&a.socket.target, &a.socket.local_addr).cmp(&(&b.socket.target, &b.socket.local_addr))
        });
        v
    }

    pub fn closed(&self) -> Vec<ClosedView> {
        self.recent_closed
            .iter()
            .map(|c| ClosedView {
                connection: ConnectionView::new(&c.conn, self.tracker.targets(), c.at),
                end_time: rfc3339(c.at.wall),
                duration_seconds: c.duration.as_secs_f64(),
                duration: hms(c.duration),
            })
            .collect()
    }

    pub fn targets(&self) -> Vec<TargetView> {
        self.tracker
            .targets()
            .iter()
            .zip(self.tracker.stats())
            .map(|(t, s)| TargetView {
                name: t.name.clone(),
                address: t.net.to_string(),
                port: t.port,
                local_ports: t.local_ports.map(|r| r.to_string()),
                stats: *s,
            })
            .collect()
    }

    pub fn health_view(&self, now: Timestamp) -> HealthView {
        let healthy = self.is_healthy(now);
        HealthView {
            status: if healthy { "healthy" } else { "unhealthy" },
            timestamp: rfc3339(now.wall),
            hostname: self.host.clone(),
            source: self.source.as_str(),
            poll_interval_seconds: self.interval.as_secs_f64(),
            active_connections: self.tracker.active_count(),
            targets: self.targets(),
            last_successful_poll: self.health.last_success.map(|t| rfc3339(t.wall)),
            consecutive_failures: self.health.consecutive_failures,
            last_error: self.health.last_error.clone(),
            polls: self.health.polls,
            started: rfc3339(self.started.wall),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetView {
    pub name: String,
    pub address: String,
    pub port: Option<u16>,
    pub local_ports: Option<String>,
    #[serde(flatten)]
    pub stats: TargetStats,
}

/// A socket as people read it, with the keys of the original `/connections` (`id`,
/// `local_addr`, `remote_addr`, `local_port`, `remote_port`) and the target it belongs to.
#[derive(Debug, Clone, Serialize)]
pub struct SocketView {
    pub id: String,
    pub target: String,
    pub local_addr: String,
    pub remote_addr: String,
    pub local_port: u16,
    pub remote_port: u16,
    pub state: &'static str,
}

impl SocketView {
    pub fn new(target: &str, local: SocketAddr, remote: SocketAddr, state: TcpState) -> Self {
        SocketView {
            id: format!("{local}-{remote}"),
            target: target.to_owned(),
            local_addr: local.to_string(),
            remote_addr: remote.to_string(),
            local_port: local.port(),
            remote_port: remote.port(),
            state: state.as_str(),
        }
    }
}

/// One active connection: the socket, and how long it has been seen (the original's
/// `duration_seconds` key is kept).
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionView {
    #[serde(flatten)]
    pub socket: SocketView,
    /// When the connection was first seen (RFC 3339, UTC).
    pub start_time: String,
    /// Seconds since `start_time`, up to `at`.
    pub duration_seconds: f64,
    /// The same, as hh:mm:ss.
    pub age: String,
    /// Already open when the monitor started: the real start is earlier.
    pub preexisting: bool,
}

impl ConnectionView {
    pub fn new(c: &Connection, targets: &Targets, at: Timestamp) -> ConnectionView {
        let age = c.age(at);
        ConnectionView {
            socket: SocketView::new(
                &targets.get(c.target).name,
                c.key.local,
                c.key.remote,
                c.state,
            ),
            start_time: rfc3339(c.since.wall),
            duration_seconds: age.as_secs_f64(),
            age: hms(age),
            preexisting: c.preexisting,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ClosedView {
    #[serde(flatten)]
    pub connection: ConnectionView,
    pub end_time: String,
    pub duration_seconds: f64,
    pub duration: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct HealthView {
    pub status: &'static str,
    pub timestamp: String,
    pub hostname: String,
    pub source: &'static str,
    pub poll_interval_seconds: f64,
    pub active_connections: usize,
    pub targets: Vec<TargetView>,
    pub last_successful_poll: Option<String>,
    pub consecutive_failures: u64,
    pub last_error: Option<String>,
    pub polls: u64,
    pub started: String,
}

/// RFC 3339 in UTC, to the millisecond.
pub fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&fmt).unwrap_or_else(|_| "invalid time".into())
}

/// hh:mm:ss, hours unbounded (a week-long session reads 168:00:00).
pub fn hms(d: Duration) -> String {
    let s = d.as_secs();
    format!("{:02}:{:02}:{:02}", s / 3600, (s % 3600) / 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hms_counts_hours_past_a_day() {
        assert_eq!(hms(Duration::from_secs(0)), "00:00:00");
        assert_eq!(hms(Duration::from_secs(3661)), "01:01:01");
        assert_eq!(hms(Duration::from_secs(7 * 86400)), "168:00:00");
    }

    #[test]
    fn rfc3339_is_utc_with_millis() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn health_turns_unhealthy_after_three_silent_intervals() {
        let t0 = Timestamp::now();
        let s = Shared::new(
            Targets::default(),
            SourceKind::Procfs,
            Duration::from_secs(1),
            "h".into(),
            t0,
        );
        let m = s.lock();
        assert!(m.is_healthy(t0.after(Duration::from_secs(3))));
        assert!(!m.is_healthy(t0.after(Duration::from_millis(3001))));
    }
}
