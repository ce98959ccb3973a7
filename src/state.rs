//! What the sidecar knows, published: after each change the loop (the only writer) builds an
//! immutable [`State`] and swaps it into a `tokio::sync::watch` channel; readers (HTTP
//! endpoints, console, report, demo) take the latest with [`StateReader::get`], an `Arc` clone.
//! No reader holds anything the loop waits for, and no one logs while holding a lock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::ends::Cause;
use crate::schedule::Schedule;
use crate::session::{rfc3339, Session, SessionJson};
use crate::source::events::Mode;
use crate::source::{Capabilities, SourceKind};
use crate::target::Targets;
use crate::tracker::{TargetStats, Timestamp};

/// How many closed sessions are kept for display (the original report kept 10).
pub const RECENT_CLOSED: usize = 20;

/// Polling is unhealthy once no poll has succeeded for this many intervals.
pub const UNHEALTHY_AFTER_INTERVALS: u32 = 3;

/// Facts fixed at start.
#[derive(Debug, Clone)]
pub struct Meta {
    pub host: String,
    pub source: SourceKind,
    /// Why that source runs (configured, or what `auto` passed over), and how it works here.
    pub source_reason: Option<String>,
    /// What the source can do (what `/health` says it measures).
    pub capabilities: Capabilities,
    pub interval: Duration,
    pub started: Timestamp,
    pub targets: Targets,
    /// How closes are learnt: kernel events and polls, or polls alone (and why).
    pub events: Mode,
    /// `targets[i].schedule`, by target id (empty or `None`: always expected up).
    pub schedules: Vec<Option<Arc<Schedule>>>,
}

/// The outcome of recent polls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollHealth {
    pub last_success: Option<Timestamp>,
    pub last_error: Option<String>,
    pub consecutive_failures: u64,
    pub polls: u64,
    /// `poll.process_lookup`, when it is on: how far it can see.
    pub process_lookup: Option<ProcessLookupHealth>,
}

/// How the process lookup (`poll.process_lookup`) fares, for `/health`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProcessLookupHealth {
    /// Whether the source in use takes it (netlink, procfs); eBPF mode names processes by
    /// itself, netstat cannot.
    pub available: bool,
    /// Walks of `/proc/*/fd` so far (one per poll that found new sessions, at most).
    pub scans: u64,
    /// Processes whose open files the last walk could not read (permission denied): their
    /// sessions have no pid or command.
    pub unreadable_processes: u64,
    /// Why it is unavailable or sees less than everything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One published view of the sidecar: everything a reader may show, as of one change.
#[derive(Debug, Clone)]
pub struct State {
    pub meta: Arc<Meta>,
    /// Bumped at every publication, after the instruments carry this state's values: a
    /// `/metrics` body encoded at generation N is never older than this state.
    pub generation: u64,
    /// Indexed by target id.
    pub stats: Vec<TargetStats>,
    /// Highest number active at once over all targets together.
    pub peak: u64,
    /// Active sessions by target (configuration order), then local and remote address. Shared
    /// between states that have the same sessions (a poll that changed nothing copies no list).
    pub active: Arc<Vec<Session>>,
    /// The most recently closed sessions, oldest first, at most [`RECENT_CLOSED`].
    pub closed: Vec<Session>,
    /// The last end of each FIX session the FIX layer gave an account of, by its label
    /// (`SENDER->TARGET`): `/sessions` shows it beside the session. Bounded by the FIX
    /// layer's session cap.
    pub fix_ends: Arc<std::collections::BTreeMap<String, crate::ends::LastEnd>>,
    /// Ends judged so far by cause, indexed by target id: what `fix_session_ends_total` counts,
    /// for readers that outlive the closed list (the console's report).
    pub ends: Vec<EndCounts>,
    pub health: PollHealth,
}

/// One target's ends judged so far, by cause.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndCounts(BTreeMap<Cause, u64>);

impl EndCounts {
    pub fn add(&mut self, cause: Cause) {
        *self.0.entry(cause).or_default() += 1;
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// The causes seen, most ends first (ties in the order of [`Cause`]).
    pub fn by_count(&self) -> Vec<(Cause, u64)> {
        let mut v: Vec<(Cause, u64)> = self.0.iter().map(|(c, n)| (*c, *n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }
}

/// Health as a type, not a string: `/health`'s status code and the index page read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Healthy,
    Unhealthy,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Healthy => "healthy",
            Status::Unhealthy => "unhealthy",
        }
    }
}

impl State {
    /// The state before the first poll.
    pub fn initial(meta: Meta) -> State {
        State {
            stats: vec![TargetStats::default(); meta.targets.len()],
            ends: vec![EndCounts::default(); meta.targets.len()],
            meta: Arc::new(meta),
            generation: 0,
            peak: 0,
            active: Arc::default(),
            closed: Vec::new(),
            fix_ends: Arc::default(),
            health: PollHealth::default(),
        }
    }

    pub fn status(&self, now: Timestamp) -> Status {
        let limit = self.meta.interval * UNHEALTHY_AFTER_INTERVALS;
        let since = self.health.last_success.unwrap_or(self.meta.started);
        if now.mono.saturating_duration_since(since.mono) <= limit {
            Status::Healthy
        } else {
            Status::Unhealthy
        }
    }

    pub fn active_count(&self) -> usize {
        self.active.len()
    }

    pub fn connections(&self, now: Timestamp) -> Vec<SessionJson> {
        self.active.iter().map(|s| s.json(now)).collect()
    }

    pub fn closed_json(&self, now: Timestamp) -> Vec<SessionJson> {
        self.closed.iter().map(|s| s.json(now)).collect()
    }

    pub fn targets(&self) -> Vec<TargetView> {
        self.meta
            .targets
            .iter()
            .zip(&self.stats)
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
        HealthView {
            status: self.status(now),
            timestamp: rfc3339(now.wall),
            hostname: self.meta.host.clone(),
            source: self.meta.source.as_str(),
            source_reason: self.meta.source_reason.clone(),
            events: self.meta.events.clone(),
            poll_interval_seconds: self.meta.interval.as_secs_f64(),
            active_connections: self.active_count(),
            targets: self.targets(),
            last_successful_poll: self.health.last_success.map(|t| rfc3339(t.wall)),
            consecutive_failures: self.health.consecutive_failures,
            last_error: self.health.last_error.clone(),
            polls: self.health.polls,
            started: rfc3339(self.meta.started.wall),
            session_health: SessionHealthView::of(self.meta.source, self.meta.capabilities),
            process_lookup: self.health.process_lookup.clone(),
            schedules: self.schedules_view(now),
        }
    }

    /// Each scheduled target's window at `now` (targets without a schedule are left out).
    pub fn schedules_view(&self, now: Timestamp) -> Vec<ScheduleView> {
        let targets = self.meta.targets.iter().zip(&self.meta.schedules);
        targets
            .filter_map(|(t, s)| {
                let s = s.as_ref()?;
                Some(ScheduleView {
                    target: t.name.clone(),
                    schedule: s.name().to_owned(),
                    timezone: s.timezone(),
                    expected_up: s.expected_up(now.wall),
                    next_change: rfc3339(s.next_change(now.wall)),
                })
            })
            .collect()
    }
}

/// A scheduled target's window as `/health` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleView {
    pub target: String,
    pub schedule: String,
    pub timezone: &'static str,
    /// Inside the window now (`fix_target_expected_up`).
    pub expected_up: bool,
    /// When the window ends (inside) or next opens (outside), RFC 3339 UTC.
    pub next_change: String,
}

/// The readers' handle: cheap to clone, never blocks the loop.
#[derive(Debug, Clone)]
pub struct StateReader(watch::Receiver<Arc<State>>);

impl StateReader {
    /// The latest published state.
    pub fn get(&self) -> Arc<State> {
        self.0.borrow().clone()
    }

    /// Waits for the next publication (for the console); false once the loop is gone.
    pub async fn changed(&mut self) -> bool {
        self.0.changed().await.is_ok()
    }
}

/// Where the loop hands each new state. [`Publisher`] is the real one; tests observe the
/// moment of publication through their own.
pub trait Publish: Send {
    fn publish(&mut self, state: Arc<State>);
}

impl Publish for Publisher {
    fn publish(&mut self, state: Arc<State>) {
        Publisher::publish(self, state)
    }
}

/// The writer's handle (the loop's).
#[derive(Debug)]
pub struct Publisher(watch::Sender<Arc<State>>);

impl Publisher {
    pub fn new(initial: State) -> (Publisher, StateReader) {
        let (tx, rx) = watch::channel(Arc::new(initial));
        (Publisher(tx), StateReader(rx))
    }

    /// Replaces the published state (no waiting for readers: a pointer swap).
    pub fn publish(&self, state: Arc<State>) {
        self.0.send_replace(state);
    }

    pub fn reader(&self) -> StateReader {
        StateReader(self.0.subscribe())
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

#[derive(Debug, Clone, Serialize)]
pub struct HealthView {
    pub status: Status,
    pub timestamp: String,
    pub hostname: String,
    pub source: &'static str,
    /// Why that source runs: configured, or what `auto` passed over and why; for eBPF mode,
    /// how its health pass walks the sessions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_reason: Option<String>,
    /// `{"mode": "kernel_events"}`, or `{"mode": "polling", "reason": "..."}`.
    pub events: Mode,
    pub poll_interval_seconds: f64,
    pub active_connections: usize,
    pub targets: Vec<TargetView>,
    pub last_successful_poll: Option<String>,
    pub consecutive_failures: u64,
    pub last_error: Option<String>,
    pub polls: u64,
    pub started: String,
    /// Whether per-session TCP health (tcp_info) is measured, and if not, why.
    pub session_health: SessionHealthView,
    /// `poll.process_lookup`'s reach (absent when it is off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_lookup: Option<ProcessLookupHealth>,
    /// The scheduled targets' windows now (absent when no target has a schedule).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<ScheduleView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionHealthView {
    pub available: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl SessionHealthView {
    fn of(source: SourceKind, caps: Capabilities) -> SessionHealthView {
        let reason = (!caps.health.available()).then(|| {
            format!(
                "the {} source has no tcp_info: RTT, retransmits, queues and silence are \
                 not measured and their series are left out",
                source.as_str()
            )
        });
        SessionHealthView {
            available: reason.is_none(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_turns_unhealthy_after_three_silent_intervals() {
        let t0 = Timestamp::now();
        let s = State::initial(Meta {
            host: "h".into(),
            source: SourceKind::Procfs,
            source_reason: None,
            capabilities: crate::source::procfs::ProcfsSource::CAPABILITIES,
            interval: Duration::from_secs(1),
            started: t0,
            targets: Targets::default(),
            events: Mode::KernelEvents,
            schedules: Vec::new(),
        });
        assert_eq!(s.status(t0.after(Duration::from_secs(3))), Status::Healthy);
        assert_eq!(
            s.status(t0.after(Duration::from_millis(3001))),
            Status::Unhealthy
        );
    }
}
