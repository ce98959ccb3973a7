//! The loop that carries the tracker: it waits on a clock and an input channel, polls the
//! source at a fixed rate, feeds the tracker, records the instruments, publishes the state and
//! then logs (no lock is held anywhere while logging).
//!
//! Everything it touches is passed in, as mini-redis's `server::run(listener, shutdown)` is
//! driven: a [`Source`] (the real one, or a scripted one in tests), a [`Clock`] (the system's,
//! or a [`ManualClock`] that jumps to each deadline), and a receiver of [`Input`]s. So its rules
//! (a failed poll is not a close, the state is published only after the instruments, the rate
//! is kept, a late poll does not cause a burst) are unit tests that need no root.
//!
//! Inputs other than the timer arrive on the same channel: [`Input::Stop`], and
//! [`Input::Events`], socket transitions from an event-driven source (the kernel's
//! socket-destroy notifications, read on a thread of their own by `source::destroy`), applied
//! through [`Tracker::event`] as they come, between ticks. A batch that reports lost events is
//! followed at once by a full poll, so that every session a poll had seen is closed exactly.
//!
//! A poll's missing sockets are confirmed before they are closed ([`Confirm`], an exact kernel
//! lookup where the source allows it), and with a state directory the active sessions' starts
//! are saved every [`SAVE_EVERY`] when something changed, and at the end.

use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ends::{Context as EndContext, Ends, TcpEnd, Unscheduled};
use crate::health::{HealthBook, HealthEvent, HealthPoll, SharedHealthEvent};
use crate::instruments::{GaugeValues, Instruments};
use crate::persist::{MonoClock, Record, StateDir};
use crate::session::{target_names, Ended, Session};
use crate::session_events::{self as se, Close, SessionEvents};
use crate::source::events::EventBatch;
use crate::source::Source;
use crate::source::{ClosedBy, KernelCause, Process};
use crate::state::{EndCounts, Meta, Publish, State, RECENT_CLOSED};
use crate::tracker::{
    Confirm, ConnKey, Event, SharedEvent, SocketEvent, SocketEventKind, Timestamp, Tracker,
    Unconfirmed,
};
// Keyed by sockets this host made to its own targets: a fast hash, not a DoS-resistant one.
use rustc_hash::FxHashMap as HashMap;

/// How often, at most, the state file is rewritten (only when something changed).
pub const SAVE_EVERY: Duration = Duration::from_secs(5);

/// Time, as the loop sees it.
pub trait Clock: Send {
    fn now(&self) -> Timestamp;
    /// Waits for the next input, at most until `deadline`.
    fn wait(&self, inputs: &Receiver<Input>, deadline: Instant) -> Wait;
}

/// What ended a [`Clock::wait`].
#[derive(Debug)]
pub enum Wait {
    Input(Input),
    /// The deadline passed: time to poll.
    Deadline,
    /// Every sender is gone: stop.
    Closed,
}

/// What the loop reacts to besides its timer.
#[derive(Debug)]
pub enum Input {
    /// Stop after the current step.
    Stop,
    /// Socket transitions from an event-driven source, with what it lost.
    Events(EventBatch),
    /// The FIX layer's account of a TCP session's end (its Logout, who sent the FIN or RST),
    /// for the end's cause.
    FixEnded(Box<crate::fix::tracker::LinkEnd>),
    /// A reloaded configuration: new targets, their source and schedules ([`Reconfigure`]).
    Reconfigure(Box<Reconfigure>),
}

/// Opens a source for a reload's targets, where the running one cannot take them in place.
pub type OpenSource = Box<dyn FnOnce() -> Result<Box<dyn Source>, String> + Send>;

/// What a reload changes in the loop. Its source is settled first: the running one takes the
/// new targets in place where it can ([`Source::retarget`]: the eBPF programs' maps), else
/// `open` opens one for them. If neither can, the whole reload is refused, and the loop runs
/// on as it was.
pub struct Reconfigure {
    pub open: OpenSource,
    pub targets: crate::target::Targets,
    /// By target id of `targets`.
    pub schedules: Vec<Option<Arc<crate::schedule::Schedule>>>,
    /// Answers what the judge of ends asks beyond the two layers (the new schedules).
    pub ends: Box<dyn EndContext + Send>,
    /// The causes of ends the sidecar can tell now (a first schedule adds the planned ones):
    /// their series start at 0 for every target.
    pub end_causes: Vec<crate::ends::Cause>,
    /// Told, once the loop runs on the new targets, how many sessions are no longer watched;
    /// or why none of it was applied (no source could take the new targets).
    pub done: std::sync::mpsc::Sender<Result<usize, String>>,
}

impl std::fmt::Debug for Reconfigure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconfigure")
            .field("targets", &self.targets)
            .finish_non_exhaustive()
    }
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn wait(&self, inputs: &Receiver<Input>, deadline: Instant) -> Wait {
        match inputs.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(i) => Wait::Input(i),
            Err(RecvTimeoutError::Timeout) => Wait::Deadline,
            Err(RecvTimeoutError::Disconnected) => Wait::Closed,
        }
    }
}

/// A clock that only moves when told to, or when the loop waits on it: a wait with nothing
/// queued jumps straight to its deadline. Tests run hours of polling in microseconds.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<Timestamp>>);

impl ManualClock {
    pub fn new(start: Timestamp) -> ManualClock {
        ManualClock(Arc::new(Mutex::new(start)))
    }

    pub fn advance(&self, d: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *t = t.after(d);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait(&self, inputs: &Receiver<Input>, deadline: Instant) -> Wait {
        match inputs.try_recv() {
            Ok(i) => Wait::Input(i),
            Err(TryRecvError::Disconnected) => Wait::Closed,
            Err(TryRecvError::Empty) => {
                let now = self.now();
                if deadline > now.mono {
                    self.advance(deadline - now.mono);
                }
                Wait::Deadline
            }
        }
    }
}

/// The loop's state and rules: one [`Poller::tick`] per poll.
pub struct Poller {
    source: Box<dyn Source>,
    tracker: Tracker,
    instruments: Instruments,
    publisher: Box<dyn Publish>,
    /// The last published state, the base of the next.
    state: Arc<State>,
    names: Vec<Arc<str>>,
    events_out: tokio::sync::broadcast::Sender<SharedEvent>,
    sockets: Vec<crate::source::SocketEntry>,
    events: Vec<Event>,
    /// Reused per tick: the events the source saw since the last one.
    source_events: Vec<SocketEvent>,
    /// What an event-seeing source (eBPF) told of the sessions: the process that made each
    /// active one, and who hung up for this tick's closes.
    processes: HashMap<ConnKey, Process>,
    closed_by: HashMap<ConnKey, ClosedBy>,
    /// Why the kernel ended each session closed this poll, where the source said (eBPF).
    causes: HashMap<ConnKey, KernelCause>,
    /// Session health: staleness and counter growth (see `crate::health`).
    health: HealthBook,
    health_poll: HealthPoll,
    /// Where each event goes as a session event (an OTel log record, a JSON line).
    session_events: SessionEvents,
    /// Where stale/recovered transitions go besides the log (the console), if anywhere.
    health_out: Option<tokio::sync::broadcast::Sender<SharedHealthEvent>>,
    /// Asks about sockets a poll no longer lists before they are closed.
    confirm: Box<dyn Confirm + Send>,
    /// The state file, if configured.
    persist: Option<Persist>,
    /// Inside an episode of lost events (one warning per episode).
    losing: bool,
    /// The tracker's self-check counts already recorded (false closes avoided, unattributed).
    checks_seen: (u64, u64),
    /// The source's [`crate::source::EventCounts`] as of the last poll.
    counts_seen: crate::source::EventCounts,
    /// `poll.process_lookup`: names the process of each new session from `/proc/*/fd`.
    #[cfg(target_os = "linux")]
    owners: Option<crate::source::proc_owner::ProcOwners>,
    /// Ends waiting for their cause (see `crate::ends`), and what the judge asks beyond the
    /// two layers (schedules, processes).
    ends: Ends,
    end_context: Box<dyn EndContext + Send>,
    /// The active sessions as published before this step: a closed session's last health.
    ended_from: Arc<Vec<Session>>,
    /// The tracker's version right after it last took a snapshot (`None`: the next snapshot
    /// must be taken, as at the start). A source that says no session changed since its last
    /// poll lists what the tracker already holds then, and the snapshot is skipped.
    synced: Option<u64>,
    /// What the published sessions were last built from (see [`Filled`]).
    filled: Filled,
}

/// What [`Poller::fill`] last built the published sessions from, so that a poll that changed
/// no session copies them and only brings their health up to date, instead of building each
/// again from the tracker (a walk of its map, a sort and a search of the poll's list for each).
#[derive(Debug, Default)]
struct Filled {
    /// The tracker's version they were built at; `None`: build them afresh.
    version: Option<u64>,
    /// Each published session's key, target and socket's place in the poll's list
    /// ([`NOT_LISTED`]: the poll did not list it), in the published order.
    sessions: Vec<(ConnKey, crate::target::TargetId, u32)>,
}

/// The place in the poll's list ([`Filled::sessions`]) of a session the poll did not list.
const NOT_LISTED: u32 = u32::MAX;

/// The state file and when it was last written.
pub struct Persist {
    pub dir: StateDir,
    last: Option<Instant>,
    dirty: bool,
    /// Writes failed in a row (one warning per episode, and a line when it ends).
    failing: u64,
}

impl Persist {
    pub fn new(dir: StateDir) -> Persist {
        Persist {
            dir,
            last: None,
            dirty: true,
            failing: 0,
        }
    }
}

/// Whether the loop goes on after an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

impl Poller {
    /// `initial` is the state already published through `publisher`.
    pub fn new(
        source: Box<dyn Source>,
        instruments: Instruments,
        publisher: Box<dyn Publish>,
        initial: State,
        events_out: tokio::sync::broadcast::Sender<SharedEvent>,
    ) -> Poller {
        let targets = initial.meta.targets.clone();
        instruments.set_expected_up(&initial.meta.schedules, initial.meta.started.wall);
        Poller {
            source,
            names: target_names(&targets),
            health: HealthBook::new(
                targets.clone(),
                targets.iter().map(|t| t.stale_after).collect(),
            ),
            health_poll: HealthPoll::default(),
            health_out: None,
            session_events: SessionEvents::default(),
            tracker: Tracker::new(targets),
            instruments,
            publisher,
            state: Arc::new(initial),
            events_out,
            sockets: Vec::new(),
            events: Vec::new(),
            source_events: Vec::new(),
            processes: HashMap::default(),
            closed_by: HashMap::default(),
            causes: HashMap::default(),
            confirm: Box::new(Unconfirmed),
            persist: None,
            losing: false,
            checks_seen: (0, 0),
            counts_seen: Default::default(),
            #[cfg(target_os = "linux")]
            owners: None,
            ends: Ends::new(false),
            end_context: Box::new(Unscheduled),
            ended_from: Arc::default(),
            synced: None,
            filled: Filled::default(),
        }
    }

    /// Ends wait for the FIX layer's account of them ([`Input::FixEnded`]) before their cause
    /// is judged (at most [`crate::ends::SETTLE`]); `context` answers the rest (schedules,
    /// processes).
    pub fn with_ends(mut self, fix_accounts: bool, context: Box<dyn EndContext + Send>) -> Poller {
        self.ends = Ends::new(fix_accounts);
        self.end_context = context;
        self
    }

    /// `poll.process_lookup`: names the process owning each new session (netlink and procfs
    /// sources, from `/proc/*/fd` under `proc_root`); says in the log and in `/health` where it
    /// cannot.
    pub fn with_process_lookup(mut self, proc_root: &std::path::Path) -> Poller {
        use crate::source::ProcessFeed;
        let kind = self.source.kind();
        let reason = match self.source.capabilities().process {
            ProcessFeed::ByInode if cfg!(target_os = "linux") => None,
            ProcessFeed::FromEvents => Some(format!(
                "the {} source names the process that connected by itself; \
                 poll.process_lookup is not used",
                kind.as_str()
            )),
            _ => Some("poll.process_lookup needs the netlink or procfs source (Linux)".to_owned()),
        };
        match reason {
            None => {
                #[cfg(target_os = "linux")]
                {
                    self.source.keep_inodes();
                    self.owners = Some(crate::source::proc_owner::ProcOwners::at(proc_root));
                }
                tracing::info!(
                    source = kind.as_str(),
                    "process lookup on: each new session's pid and command from /proc/*/fd"
                );
            }
            Some(ref reason) => {
                tracing::warn!(source = kind.as_str(), reason, "process lookup off")
            }
        }
        let _ = proc_root;
        Arc::make_mut(&mut self.state).health.process_lookup =
            Some(crate::state::ProcessLookupHealth {
                available: reason.is_none(),
                reason,
                ..Default::default()
            });
        self
    }

    /// Confirms missing sockets through `confirm` (an exact kernel lookup) before closing them.
    /// Whether kernel destroy notifications (`Input::Events`) will follow closes (default yes):
    /// without them the health book keeps nothing of sessions that left the polls.
    pub fn with_destroy_notifications(mut self, yes: bool) -> Poller {
        self.health.expect_destroy_notifications(yes);
        self
    }

    pub fn with_confirm(mut self, confirm: Box<dyn Confirm + Send>) -> Poller {
        self.confirm = confirm;
        self
    }

    /// Hands every stale/recovered transition to `out` too (after the poll that found it).
    pub fn with_health_events(
        mut self,
        out: tokio::sync::broadcast::Sender<SharedHealthEvent>,
    ) -> Poller {
        self.health_out = Some(out);
        self
    }

    /// Hands every opened, closed, stale and recovered event to `sink` (`session_events`).
    pub fn with_session_events(mut self, sink: SessionEvents) -> Poller {
        self.session_events = sink;
        self
    }

    /// Keeps the active sessions' starts in `persist`, and restores those of `restored` (the
    /// file as loaded at start) that the first poll still finds.
    pub fn with_persist(mut self, persist: Persist, restored: &[Record]) -> Poller {
        let clock = MonoClock::now();
        let by_name: std::collections::HashMap<&str, usize> = self
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| (&**n, i))
            .collect();
        self.tracker.restore(restored.iter().filter_map(|r| {
            let target = *by_name.get(r.target.as_str())?;
            let key = ConnKey {
                local: r.local,
                remote: r.remote,
                id: r.id,
            };
            Some((key, target, r.since(&clock)))
        }));
        self.persist = Some(persist);
        self.instruments.record_state_write_errors(0);
        self
    }

    /// Writes the state file if it is due (or `now`), and something changed.
    fn save(&mut self, force: bool) {
        let Some(p) = self.persist.as_mut() else {
            return;
        };
        let due = p.last.is_none_or(|t| t.elapsed() >= SAVE_EVERY);
        if !(p.dirty && (due || force)) {
            return;
        }
        let clock = MonoClock::now();
        // A session open before the first start has no known start: it is not written, and
        // the next start counts it as already open again (never a made-up lifetime).
        let records: Vec<Record> = self
            .tracker
            .active()
            .filter(|c| !c.preexisting)
            .map(|c| {
                Record::new(
                    c.key.id,
                    c.key.local,
                    c.key.remote,
                    &self.names[c.target],
                    c.since,
                    &clock,
                )
            })
            .collect();
        p.last = Some(Instant::now());
        match p.dir.save(&records) {
            Ok(()) => {
                p.dirty = false;
                if p.failing > 0 {
                    tracing::info!(
                        path = %p.dir.path().display(),
                        failed = p.failing,
                        sessions = records.len(),
                        "the state file is written again"
                    );
                }
                p.failing = 0;
            }
            Err(e) => {
                // Still dirty: the next save tries again with what is known then.
                self.instruments.record_state_write_errors(1);
                if p.failing == 0 {
                    tracing::warn!(
                        path = %p.dir.path().display(),
                        error = %e,
                        retry_every = %humantime::format_duration(SAVE_EVERY),
                        "cannot write the state file (the state directory full or read-only?); \
                         the sessions' starts are kept in memory and the write is retried; a \
                         restart before it succeeds counts the active sessions as already open"
                    );
                }
                p.failing += 1;
            }
        }
    }

    /// One poll: source -> tracker -> instruments -> published state -> logs and subscribers.
    /// A failed poll is logged and counted, and the sessions it could not see stay as they
    /// were: a failed poll is not a close.
    pub fn tick(&mut self, clock: &dyn Clock) {
        let kind = self.source.kind();
        self.ended_from = Arc::clone(&self.state.active);
        let began = clock.now();
        let result = self.source.poll(&mut self.sockets);
        let at = clock.now();
        // Every tick, the poll failed or not: the window is a matter of the clock alone.
        self.instruments
            .set_expected_up(&self.state.meta.schedules, at.wall);
        self.instruments.record_poll(
            kind,
            at.mono.saturating_duration_since(began.mono),
            result.is_ok(),
        );
        self.events.clear();
        self.closed_by.clear();
        self.causes.clear();
        let mut next = State::clone(&self.state);
        next.health.polls += 1;
        let recovered_after = next.health.consecutive_failures;
        let mut capped = false;
        let news = self.source.news();
        // The source's own losses and reconciles (eBPF), as counter growth.
        let counts = self.source.event_counts();
        if counts != self.counts_seen {
            let seen = std::mem::replace(&mut self.counts_seen, counts);
            self.instruments
                .record_events_lost(counts.lost.saturating_sub(seen.lost));
            self.instruments
                .record_reconciles(counts.reconciles.saturating_sub(seen.reconciles));
        }
        match &result {
            Ok(()) if !news.sessions_changed && !news.health_fresh => {
                // Nothing new (an eBPF poll without transitions or lookups): the sessions,
                // their health and every instrument stand as they were; only the poll counts.
                next.health.last_success = Some(at);
                next.health.consecutive_failures = 0;
            }
            Ok(()) => {
                // Exact opens and closes first (each at its kernel timestamp), then the
                // snapshot, which already reflects them and only corrects what they missed.
                let final_counts = self.apply_source_events(clock);
                self.apply_snapshot(at, news.sessions_changed);
                #[cfg(target_os = "linux")]
                self.look_up_processes(&mut next);
                if news.health_fresh {
                    self.health
                        .observe(at.mono, &self.sockets, &mut self.health_poll);
                    // The health counters grow once per lookup (RTT samples, retransmits,
                    // bytes): health handed on from an earlier poll is not a new sample.
                    capped = self.instruments.record_health(&self.health_poll);
                } else if final_counts {
                    // No lookup this poll: the closed sessions' last growth (from their final
                    // counters) is counted now all the same, once.
                    let mut closed = HealthPoll::default();
                    self.health.take_closed(&mut closed);
                    capped = self.instruments.record_health(&closed);
                }
                next.health.last_success = Some(at);
                next.health.consecutive_failures = 0;
                capped |= self.record(&mut next);
            }
            Err(e) => {
                next.health.consecutive_failures += 1;
                next.health.last_error = Some(e.to_string());
            }
        }
        next.generation += 1;
        // One copy per change: the loop keeps the published state itself.
        self.state = Arc::new(next);
        self.publisher.publish(Arc::clone(&self.state));

        // Logs and subscribers last, with nothing held.
        match &result {
            Ok(()) if recovered_after > 0 => {
                tracing::info!(failed_polls = recovered_after, "polling recovered")
            }
            Ok(()) => {}
            Err(e) => {
                // One warning when an outage starts, then one a minute's worth of polls.
                let n = self.state.health.consecutive_failures;
                if n == 1 || n % 60 == 0 {
                    tracing::warn!(source = kind.as_str(), error = %e, failed_polls = n, "poll failed");
                }
            }
        }
        if capped {
            tracing::warn!(
                limit = crate::instruments::BY_PORT_LIMIT,
                "fix_connections_by_port: too many local ports, some left out"
            );
        }
        self.announce();
        self.settle_ends(clock.now().mono, false);
    }

    /// The poll's list into the tracker (see [`Tracker::apply_confirmed`]), unless nothing
    /// moved in the source's set since it last listed it (`changed` false) and the tracker
    /// took that list and has not changed since: the snapshot would find what it holds.
    fn apply_snapshot(&mut self, at: Timestamp, changed: bool) {
        if !changed && self.synced == Some(self.tracker.version()) {
            return;
        }
        self.tracker
            .apply_confirmed(at, &self.sockets, &mut self.events, &mut *self.confirm);
        self.synced = Some(self.tracker.version());
    }

    /// Judges the ends whose evidence is in (all of them when `all`), counts them by cause,
    /// writes the cause into the published closed session, and logs it.
    fn settle_ends(&mut self, now: Instant, all: bool) {
        let judged = self.ends.settle(now, all, &*self.end_context);
        if judged.is_empty() {
            return;
        }
        let mut next = State::clone(&self.state);
        for j in &judged {
            self.instruments.record_end(j.end.target, j.verdict.cause);
            next.ends[j.end.target].add(j.verdict.cause);
            let same =
                |s: &Session| s.local == j.end.local && s.remote == j.end.remote && s.end.is_none();
            if let Some(s) = next.closed.iter_mut().rev().find(|s| same(s)) {
                s.end = Some(j.verdict.clone());
            }
            if let Some(key) = &j.session {
                let last = crate::ends::LastEnd {
                    cause: j.verdict.cause.as_str(),
                    evidence: j.verdict.evidence.clone(),
                    at: crate::session::rfc3339(j.end.at.wall),
                    ended: j.end.at.mono,
                };
                let ends = Arc::make_mut(&mut next.fix_ends);
                if ends.get(&key.label()).is_none_or(|e| e.ended <= last.ended) {
                    ends.insert(key.label(), last);
                }
            }
        }
        next.generation += 1;
        self.state = Arc::new(next);
        self.publisher.publish(Arc::clone(&self.state));
        for j in &judged {
            self.emit_closed(j);
            tracing::info!(
                target_name = %self.names[j.end.target],
                local = %j.end.local,
                remote = %j.end.remote,
                cause = j.verdict.cause.as_str(),
                evidence = %j.verdict.evidence,
                "session ended"
            );
        }
    }

    /// `fix.session.closed` (and, for a session no poll saw, its `fix.session.opened`), with
    /// why it ended.
    fn emit_closed(&self, j: &crate::ends::Judged) {
        let e = &j.end;
        let close = Close {
            at: Some(e.at.wall),
            duration: e.duration,
            info: e.info.as_ref(),
            by: e.closed_by,
            kernel_cause: e.kernel.as_ref(),
            process: e.process.as_ref(),
            end: Some(&j.verdict),
        };
        let (addrs, target) = ((e.local, e.remote), &self.names[e.target]);
        if e.duration.is_some() {
            self.session_events.emit(&se::closed(addrs, target, close));
        } else {
            for event in se::short_lived(addrs, target, e.at.wall, close) {
                self.session_events.emit(&event);
            }
        }
    }

    /// A closed session's silence at the last poll that saw it (its `tcp_info`'s time since
    /// data was received) and whether it was stale then, from the state published before.
    fn last_silence(&self, c: &crate::tracker::Connection) -> Option<(Duration, bool)> {
        let key = (c.target, c.key.local, c.key.remote);
        let before = &self.ended_from;
        let i = before
            .binary_search_by_key(&key, |s| (target_id(&self.names, s), s.local, s.remote))
            .ok()?;
        let (h, stale) = before[i].health?;
        let silence = Duration::from_millis(h.last_data_recv_ms.into());
        Some((silence, stale == Some(true)))
    }

    /// The ends of this step's closes, handed to the judge with what the source said of them.
    fn queue_ends(&mut self) {
        for e in &self.events {
            let (conn, at, duration, info) = match e {
                Event::Closed {
                    conn,
                    at,
                    duration,
                    info,
                } => (conn, at, Some(*duration), info),
                Event::ShortLived { conn, at, info } => (conn, at, None, info),
                Event::Opened(_) => continue,
            };
            let end = TcpEnd {
                target: conn.target,
                local: conn.key.local,
                remote: conn.key.remote,
                id: conn.key.id,
                at: *at,
                closed_by: self.closed_by.get(&conn.key).copied(),
                kernel: self.causes.get(&conn.key).cloned(),
                process: self.processes.get(&conn.key).cloned(),
                duration,
                info: *info,
                silence: self.last_silence(conn),
            };
            self.ends.tcp(end, at.mono);
        }
    }

    /// After the tracker changed: the instruments first, then the state (a `/metrics` body
    /// cached under the new generation can only hold these values or later ones). Returns
    /// whether the port cap cut series.
    fn record(&mut self, next: &mut State) -> bool {
        let (mut gauges, mut capped) = GaugeValues::from_tracker(&self.tracker);
        if self.source.capabilities().health.available() {
            // The health gauges as of the last poll (events between polls carry none).
            capped |= gauges.with_health(&self.health_poll);
        }
        // Who hung up: what the source saw (eBPF), unknown otherwise.
        let closed_by = &self.closed_by;
        self.instruments.record_events(&self.events, |k| {
            closed_by.get(k).copied().unwrap_or(ClosedBy::Unknown)
        });
        let checks = (
            self.tracker.saved_false_closes(),
            self.tracker.unattributed(),
        );
        self.instruments
            .record_checks(checks.0 - self.checks_seen.0, checks.1 - self.checks_seen.1);
        self.checks_seen = checks;
        self.instruments.set_gauges(gauges);
        self.fill(next);
        if !self.events.is_empty() {
            if let Some(p) = self.persist.as_mut() {
                p.dirty = true;
            }
        }
        capped
    }

    /// Logs and hands on this step's events (nothing held), and saves the state if due.
    fn announce(&mut self) {
        log_events(
            &self.events,
            &self.names,
            &self.processes,
            (&self.closed_by, &self.causes),
            &self.session_events,
        );
        self.queue_ends();
        for e in &self.events {
            if let Event::Closed { conn, .. } = e {
                self.processes.remove(&conn.key);
            }
        }
        // Stale/recovered lines once, after the poll that found them.
        log_health(&self.health_poll.events, &self.names, &self.session_events);
        for e in self.health_poll.events.drain(..) {
            if let Some(out) = &self.health_out {
                // No subscriber is fine: nobody is watching.
                let _ = out.send(SharedHealthEvent::new(e));
            }
        }
        for e in self.events.drain(..) {
            // No subscriber is fine: nobody is watching.
            let _ = self.events_out.send(SharedEvent::new(e));
        }
        self.save(false);
    }

    /// Reacts to an input that is not the timer.
    pub fn handle(&mut self, input: Input, clock: &dyn Clock) -> Flow {
        match input {
            Input::Stop => {
                self.finish();
                Flow::Stop
            }
            Input::FixEnded(end) => {
                self.ends.fix(*end, clock.now().mono);
                self.settle_ends(clock.now().mono, false);
                Flow::Continue
            }
            Input::Reconfigure(r) => {
                let Reconfigure { done, .. } = &*r;
                let done = done.clone();
                let dropped = self.reconfigure(*r, clock);
                if let Err(why) = &dropped {
                    // Said here too: the reloader may have given up waiting.
                    tracing::error!(
                        "configuration reload not applied, the running configuration stays: {why}"
                    );
                }
                // The reloader gone (it gave up waiting): nothing to tell.
                let _ = done.send(dropped);
                Flow::Continue
            }
            Input::Events(batch) => {
                self.events.clear();
                self.ended_from = Arc::clone(&self.state.active);
                let mut final_counts = false;
                for e in &batch.events {
                    final_counts |= self.apply_event(e);
                }
                if final_counts {
                    // The growth since each session's last poll, counted now (a poll may be
                    // an hour away), once: the book forgets the session.
                    let mut closed = HealthPoll::default();
                    self.health.take_closed(&mut closed);
                    self.instruments.record_health(&closed);
                }
                if batch.lost > 0 {
                    self.instruments.record_events_lost(batch.lost);
                }
                if !self.events.is_empty() {
                    let mut next = State::clone(&self.state);
                    self.record(&mut next);
                    next.generation += 1;
                    self.state = Arc::new(next);
                    self.publisher.publish(Arc::clone(&self.state));
                }
                self.announce();
                self.settle_ends(clock.now().mono, false);
                if let Some(error) = &batch.error {
                    tracing::warn!(%error, "reading kernel close events failed");
                }
                if batch.lost > 0 {
                    if !self.losing {
                        tracing::warn!(
                            lost = batch.lost,
                            "kernel close events lost (the receive buffer was full): \
                             counted in fix_monitor_events_lost_total; polling at once to reconcile"
                        );
                        self.losing = true;
                    }
                    self.tick(clock);
                } else if self.losing && !batch.events.is_empty() {
                    tracing::info!("kernel close events flowing again");
                    self.losing = false;
                }
                Flow::Continue
            }
        }
    }

    /// Applies one socket event (from the source's poll or from an event reader) through
    /// [`Tracker::event`], and keeps what it says beyond the tracker's view: the process that
    /// made a session it opened, and who hung up on one it closed (where the source saw them).
    /// A close's final counters go to the health book as the session's last ones. Returns
    /// whether they were counted.
    fn apply_event(&mut self, e: &SocketEvent) -> bool {
        let before = self.events.len();
        self.tracker.event(e, &mut self.events);
        let key = ConnKey {
            local: e.local,
            remote: e.remote,
            id: e.id,
        };
        match (e.kind, self.events.get(before)) {
            (SocketEventKind::Opened, Some(Event::Opened(_))) => {
                if let Some(p) = &e.process {
                    self.processes.insert(key, p.clone());
                }
            }
            // A close whose open no event or poll saw is short-lived: who hung up is known
            // all the same.
            (SocketEventKind::Closed, Some(Event::Closed { .. } | Event::ShortLived { .. })) => {
                if let Some(by) = e.closed_by {
                    self.closed_by.insert(key, by);
                }
                if let Some(cause) = &e.cause {
                    self.causes.insert(key, cause.clone());
                }
            }
            _ => {}
        }
        let Some(info) = e.info else { return false };
        if e.kind != SocketEventKind::Closed || e.partial || e.established == Some(false) {
            return false;
        }
        let totals =
            crate::health::Growth::of(info.retransmits, info.bytes_sent, Some(info.bytes_received));
        self.health.closed_with(e.id, e.local, e.remote, totals)
    }

    /// Applies the opens and closes the source saw since the last tick (an event-seeing
    /// source), in order, each at the moment it happened: sessions shorter than a poll get
    /// their real lifetime, and closes say who hung up. Returns whether any close's final
    /// counters were counted.
    fn apply_source_events(&mut self, clock: &dyn Clock) -> bool {
        let mut seen = std::mem::take(&mut self.source_events);
        seen.clear();
        self.source.take_events(clock.now(), &mut seen);
        // In the order they happened by the kernel's clock: records from different CPUs can
        // reach the ring buffer out of that order (an open stamped after a close read before
        // it), which would count both at once and lift the peak above the truth. Stable, so
        // records with one timestamp keep their order.
        seen.sort_by_key(|e| e.at.mono);
        let mut final_counts = false;
        for e in &seen {
            final_counts |= self.apply_event(e);
        }
        self.source_events = seen;
        final_counts
    }

    /// `poll.process_lookup`: the owners of this poll's new sessions, in one walk of
    /// `/proc/*/fd` (none when nothing opened). Kept with the session until it closes.
    #[cfg(target_os = "linux")]
    fn look_up_processes(&mut self, next: &mut State) {
        let Some(owners) = self.owners.as_mut() else {
            return;
        };
        let mut wanted: HashMap<u64, ConnKey> = HashMap::default();
        for e in &self.events {
            if let Event::Opened(c) = e {
                if let Some(inode) = self.source.inode(c.key.id) {
                    wanted.insert(inode, c.key);
                }
            }
        }
        if wanted.is_empty() {
            return;
        }
        let found = owners.find(&wanted.keys().copied().collect());
        for (inode, p) in found {
            self.processes.insert(wanted[&inode], p);
        }
        let unreadable = owners.last.unreadable;
        // Said once in the log; `/health` says it as of the last walk.
        let first_short = unreadable > 0 && !std::mem::replace(&mut owners.warned, true);
        let health = next
            .health
            .process_lookup
            .get_or_insert_with(Default::default);
        health.scans = owners.scans;
        health.unreadable_processes = unreadable;
        health.reason = (unreadable > 0).then(|| {
            format!(
                "cannot read the open files of {unreadable} processes (/proc/PID/fd: permission \
                 denied): their sessions have no pid or command; reading every process's needs \
                 CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (or root)"
            )
        });
        if first_short {
            tracing::warn!(
                unreadable_processes = unreadable,
                "process lookup: cannot read other processes' /proc/PID/fd (permission denied); \
                 the sessions they own show no pid or command; give the sidecar CAP_SYS_PTRACE \
                 and CAP_DAC_READ_SEARCH (or run it as root) to name them all"
            );
        }
    }

    /// Runs on `r`'s targets and source from now on (see [`Tracker::retarget`]): the ends
    /// waiting are judged first, under the targets they happened to; a target that stays keeps
    /// its sessions (with their starts), counts and series. Returns how many sessions are no
    /// longer watched.
    pub fn reconfigure(&mut self, r: Reconfigure, clock: &dyn Clock) -> Result<usize, String> {
        // A last poll of the old source (or of the running one on its old targets): the events
        // it holds are not lost with it (a new one has been watching since it was opened, so
        // none falls between the two).
        self.tick(clock);
        let replacement = match self.source.retarget(&r.targets) {
            Ok(true) => {
                tracing::info!(
                    source = self.source.kind().as_str(),
                    "the source took the new targets in place"
                );
                None
            }
            Ok(false) => Some((r.open)()?),
            Err(e) => {
                tracing::warn!(error = %e, "the source could not take the new targets in place; opening a new one");
                Some((r.open)()?)
            }
        };
        let now = clock.now();
        self.settle_ends(now.mono, true);
        let remap = self.tracker.targets().remap(&r.targets);
        self.events.clear();
        self.ended_from = Arc::clone(&self.state.active);
        let dropped = self
            .tracker
            .retarget(r.targets.clone(), &remap, &mut self.events);
        let stale_after = r.targets.iter().map(|t| t.stale_after).collect();
        self.health.retarget(r.targets.clone(), stale_after, &remap);
        self.instruments.retarget(&r.targets, &remap);
        self.instruments.start_ends_at_zero(&r.end_causes);
        let tracker = &self.tracker;
        self.processes.retain(|k, _| tracker.is_active(k));
        self.synced = None;
        if let Some(source) = replacement {
            self.source = source;
            #[cfg(target_os = "linux")]
            if self.owners.is_some() {
                self.source.keep_inodes();
            }
            // A new source counts its losses and reconciles from 0.
            self.counts_seen = Default::default();
        }
        self.sockets.clear();
        self.names = target_names(&r.targets);
        self.end_context = r.ends;
        self.instruments.set_expected_up(&r.schedules, now.wall);
        let mut next = State::clone(&self.state);
        let mut meta = Meta::clone(&next.meta);
        meta.targets = r.targets;
        meta.schedules = r.schedules;
        next.meta = Arc::new(meta);
        let mut ends = vec![Default::default(); next.meta.targets.len()];
        for (old, counts) in next.ends.iter().enumerate() {
            if let Some(new) = remap.old_to_new.get(old).copied().flatten() {
                ends[new] = EndCounts::clone(counts);
            }
        }
        next.ends = ends;
        self.record(&mut next);
        next.generation += 1;
        self.state = Arc::new(next);
        self.publisher.publish(Arc::clone(&self.state));
        if let Some(p) = self.persist.as_mut() {
            p.dirty = true;
        }
        self.announce();
        self.save(true);
        Ok(dropped)
    }

    /// The end of the loop: every end waiting is judged, the state file written one last time.
    pub fn finish(&mut self) {
        self.settle_ends(Instant::now(), true);
        self.save(true);
    }

    /// The tracker's view of the sessions, into `next`.
    fn fill(&mut self, next: &mut State) {
        next.stats = self.tracker.stats().to_vec();
        next.peak = self.tracker.peak();
        let active = match self.refill(&next.active) {
            Some(active) => active,
            None => self.fill_afresh(),
        };
        next.active = Arc::new(active);
        for e in &self.events {
            if let Event::Closed {
                conn, at, duration, ..
            } = e
            {
                if next.closed.len() == RECENT_CLOSED {
                    next.closed.remove(0);
                }
                let ended = Ended {
                    at: *at,
                    duration: *duration,
                };
                let mut s = Session::tracked(conn, &self.names, Some(ended));
                s.process = self.processes.get(&conn.key).cloned();
                s.closed_by = self.closed_by.get(&conn.key).copied();
                s.kernel_cause = self.causes.get(&conn.key).cloned();
                next.closed.push(s);
            }
        }
    }

    /// The published sessions built from the tracker: sorted by small keys first, then built
    /// in order (moving whole sessions in a sort topped a 1,000-session poll's profile). Kept
    /// in [`Filled`] for the next polls.
    fn fill_afresh(&mut self) -> Vec<Session> {
        let mut order: Vec<_> = self
            .tracker
            .active()
            .map(|c| (c.target, c.key.local, c.key.remote, c))
            .collect();
        order.sort_unstable_by_key(|&(t, l, r, _)| (t, l, r));
        let mut filled = std::mem::take(&mut self.filled.sessions);
        filled.clear();
        let active = order
            .into_iter()
            .map(|(_, _, _, c)| {
                let mut s = Session::tracked(c, &self.names, None);
                s.process = self.processes.get(&c.key).cloned();
                // This poll's health of the session, and whether it is stale. Sockets with
                // health come sorted by (id, local, remote): the cookie first, then the 4-tuple
                // (sources without cookies give id 0).
                let (id, local, remote) = (c.key.id, c.key.local, c.key.remote);
                let at = self
                    .sockets
                    .binary_search_by_key(&(id, local, remote), |e| (e.id, e.local, e.remote))
                    .ok();
                s.health = self.health_of(at, &c.key, c.target);
                let at = at.map_or(NOT_LISTED, |i| i as u32);
                filled.push((c.key, c.target, at));
                s
            })
            .collect();
        self.filled = Filled {
            version: Some(self.tracker.version()),
            sessions: filled,
        };
        active
    }

    /// The published sessions copied from the last ones with this poll's health, where no
    /// session was added, closed or changed since they were built and the poll lists their
    /// sockets where it did then; `None` otherwise.
    fn refill(&self, published: &[Session]) -> Option<Vec<Session>> {
        let f = &self.filled;
        if f.version != Some(self.tracker.version()) || f.sessions.len() != published.len() {
            return None;
        }
        let sockets = &self.sockets;
        let same_place = |&(k, _, at): &(ConnKey, _, u32)| match sockets.get(at as usize) {
            Some(e) => (e.id, e.local, e.remote) == (k.id, k.local, k.remote),
            None => {
                at == NOT_LISTED
                    && (sockets.binary_search_by_key(&(k.id, k.local, k.remote), |e| {
                        (e.id, e.local, e.remote)
                    }))
                    .is_err()
            }
        };
        if !f.sessions.iter().all(same_place) {
            return None;
        }
        Some(
            (published.iter().zip(&f.sessions))
                .map(|(s, (key, target, at))| {
                    let at = (*at != NOT_LISTED).then_some(*at as usize);
                    Session {
                        health: self.health_of(at, key, *target),
                        ..s.clone()
                    }
                })
                .collect(),
        )
    }

    /// The health of the session `key` of `target` whose socket is `sockets[at]`, and whether
    /// it is stale (`None` where its target judges no staleness).
    fn health_of(
        &self,
        at: Option<usize>,
        key: &ConnKey,
        target: crate::target::TargetId,
    ) -> Option<(crate::source::TcpHealth, Option<bool>)> {
        let h = self.sockets[at?].health?;
        let judged = self.health.judges(target);
        Some((
            h,
            judged.then(|| self.health.is_stale(key.id, key.local, key.remote)),
        ))
    }
}

/// Each event as a session event (`session_events`), and, in text format, as the human line.
fn log_events(
    events: &[Event],
    names: &[Arc<str>],
    processes: &HashMap<ConnKey, Process>,
    (closed_by, causes): (&HashMap<ConnKey, ClosedBy>, &HashMap<ConnKey, KernelCause>),
    sink: &SessionEvents,
) {
    for e in events {
        match e {
            Event::Opened(c) => {
                let process = processes.get(&c.key);
                sink.emit(&se::opened(c, &names[c.target], process));
                if sink.json() {
                    continue;
                }
                tracing::info!(
                    target_name = %names[c.target],
                    local = %c.key.local,
                    remote = %c.key.remote,
                    preexisting = c.preexisting,
                    pid = process.map(|p| p.pid),
                    comm = process.map(|p| tracing::field::display(&p.comm)),
                    "connection opened"
                )
            }
            // A close's session event (`fix.session.closed`, with its cause) is emitted when
            // the end is judged (`Poller::settle_ends`); here only the text line.
            _ if sink.json() => {}
            Event::Closed {
                conn,
                duration,
                info,
                ..
            } => {
                // Who hung up and the process: only where the source saw them (eBPF).
                let by = closed_by.get(&conn.key).map(ClosedBy::as_str);
                let kernel_cause = causes.get(&conn.key).map(tracing::field::display);
                let process = processes.get(&conn.key);
                tracing::info!(
                    target_name = %names[conn.target],
                    local = %conn.key.local,
                    remote = %conn.key.remote,
                    duration = %crate::session::hms(*duration),
                    duration_seconds = duration.as_secs_f64(),
                    bytes_acked = info.and_then(|i| i.bytes_acked),
                    bytes_received = info.map(|i| i.bytes_received),
                    retransmits = info.map(|i| i.retransmits),
                    by,
                    kernel_cause,
                    pid = process.map(|p| p.pid),
                    comm = process.map(|p| tracing::field::display(&p.comm)),
                    "connection closed"
                )
            }
            Event::ShortLived { conn, info, .. } => tracing::info!(
                target_name = %names[conn.target],
                local = %conn.key.local,
                remote = %conn.key.remote,
                bytes_acked = info.and_then(|i| i.bytes_acked),
                bytes_received = info.map(|i| i.bytes_received),
                retransmits = info.map(|i| i.retransmits),
                "connection opened and closed between two polls (short-lived; lifetime under one interval)"
            ),
        }
    }
}

/// Stale and recovered transitions, as session events and (text format) lines.
fn log_health(events: &[HealthEvent], names: &[Arc<str>], sink: &SessionEvents) {
    for e in events {
        sink.emit(&se::health(e, names));
        if sink.json() {
            continue;
        }
        match e {
            HealthEvent::Stale {
                target,
                local,
                remote,
                silence,
            } => tracing::warn!(
                target_name = %names[*target],
                local = %local,
                remote = %remote,
                silence = %crate::session::hms(*silence),
                silence_seconds = silence.as_secs_f64(),
                "session stale: no data received"
            ),
            HealthEvent::Recovered {
                target,
                local,
                remote,
                silence,
            } => tracing::info!(
                target_name = %names[*target],
                local = %local,
                remote = %remote,
                silence = %crate::session::hms(*silence),
                silence_seconds = silence.as_secs_f64(),
                "session recovered: data received again"
            ),
        }
    }
}

/// A published session's target id (its name is one of `names`, shared).
fn target_id(names: &[Arc<str>], s: &Session) -> usize {
    (names.iter())
        .position(|n| Arc::ptr_eq(n, &s.target) || **n == *s.target)
        .unwrap_or(usize::MAX)
}

/// Runs `poller` until [`Input::Stop`] or until every input sender is gone: a poll at once,
/// then one every `interval` on `clock`. A poll that ends late (a slow source, a suspended
/// host) restarts the schedule rather than bursting to catch up.
pub fn run(mut poller: Poller, clock: &dyn Clock, interval: Duration, inputs: Receiver<Input>) {
    let mut next = clock.now().mono;
    loop {
        match clock.wait(&inputs, next) {
            Wait::Deadline => {
                poller.tick(clock);
                next += interval;
                let now = clock.now().mono;
                if next < now {
                    next = now + interval;
                }
            }
            Wait::Input(input) => {
                if poller.handle(input, clock) == Flow::Stop {
                    return;
                }
            }
            Wait::Closed => {
                poller.finish();
                return;
            }
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod events_tests;
#[cfg(test)]
pub(crate) mod tests;
