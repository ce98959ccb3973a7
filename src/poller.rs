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
//! Inputs other than the timer arrive on the same channel: today only [`Input::Stop`]; kernel
//! socket-destroy events become one more variant handled by [`Poller::handle`], between ticks.

use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::instruments::{GaugeValues, Instruments};
use crate::session::{target_names, Ended, Session};
use crate::source::Source;
use crate::source::{ClosedBy, Process};
use crate::state::{Publish, State, RECENT_CLOSED};
use crate::tracker::{ConnKey, Event, Timestamp, Tracker};
use std::collections::HashMap;

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
    // Issue 9 adds `Destroyed(..)`: a kernel socket-destroy notification with its timestamp,
    // sent by the thread that reads the destroy multicast group, applied through
    // `Tracker::close` by `Poller::handle` without waiting for the next tick.
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
    state: State,
    names: Vec<Arc<str>>,
    events_out: tokio::sync::broadcast::Sender<Event>,
    sockets: Vec<crate::source::SocketEntry>,
    events: Vec<Event>,
    /// What an event-seeing source (eBPF) told of the sessions: the process that made each
    /// active one, and who hung up for this tick's closes.
    processes: HashMap<ConnKey, Process>,
    closed_by: HashMap<ConnKey, ClosedBy>,
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
        events_out: tokio::sync::broadcast::Sender<Event>,
    ) -> Poller {
        let targets = initial.meta.targets.clone();
        Poller {
            source,
            names: target_names(&targets),
            tracker: Tracker::new(targets),
            instruments,
            publisher,
            state: initial,
            events_out,
            sockets: Vec::new(),
            events: Vec::new(),
            processes: HashMap::new(),
            closed_by: HashMap::new(),
        }
    }

    /// One poll: source -> tracker -> instruments -> published state -> logs and subscribers.
    /// A failed poll is logged and counted, and the sessions it could not see stay as they
    /// were: a failed poll is not a close.
    pub fn tick(&mut self, clock: &dyn Clock) {
        let kind = self.source.kind();
        let began = clock.now();
        let result = self.source.poll(&mut self.sockets);
        let at = clock.now();
        self.instruments.record_poll(
            kind,
            at.mono.saturating_duration_since(began.mono),
            result.is_ok(),
        );
        self.events.clear();
        self.closed_by.clear();
        let mut next = self.state.clone();
        next.health.polls += 1;
        let recovered_after = next.health.consecutive_failures;
        let mut capped = false;
        match &result {
            Ok(()) => {
                // Exact opens and closes first (each at its kernel timestamp), then the
                // snapshot, which already reflects them and only corrects what they missed.
                #[cfg(target_os = "linux")]
                self.apply_transitions(clock);
                self.tracker.apply(at, &self.sockets, &mut self.events);
                next.health.last_success = Some(at);
                next.health.consecutive_failures = 0;
                let (gauges, cut) = GaugeValues::from_tracker(&self.tracker);
                capped = cut;
                // The instruments first, then the state: a `/metrics` body cached under the
                // new generation can only hold this poll's values or later ones.
                self.instruments.record_events(&self.events);
                self.instruments.set_gauges(gauges);
                self.fill(&mut next);
            }
            Err(e) => {
                next.health.consecutive_failures += 1;
                next.health.last_error = Some(e.to_string());
            }
        }
        next.generation += 1;
        self.state = next.clone();
        self.publisher.publish(next);

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
        log_events(&self.events, &self.names, &self.processes, &self.closed_by);
        for e in &self.events {
            if let Event::Closed { conn, .. } = e {
                self.processes.remove(&conn.key);
            }
        }
        for e in self.events.drain(..) {
            // No subscriber is fine: nobody is watching.
            let _ = self.events_out.send(e);
        }
    }

    /// Reacts to an input that is not the timer.
    pub fn handle(&mut self, input: Input, _clock: &dyn Clock) -> Flow {
        match input {
            Input::Stop => Flow::Stop,
        }
    }

    /// Applies the state changes an event-seeing source read since the last tick, in order,
    /// each at the moment the kernel stamped it: sessions shorter than a poll get their real
    /// lifetime, and closes say who hung up.
    #[cfg(target_os = "linux")]
    fn apply_transitions(&mut self, clock: &dyn Clock) {
        use crate::source::ebpf::{self, Change};
        use crate::source::{SocketEntry, TcpState};
        let transitions = self.source.take_transitions();
        if transitions.is_empty() {
            return;
        }
        let (now, now_k) = (clock.now(), ebpf::ktime_now_ns());
        for t in transitions {
            let at = ebpf::timestamp_of(t.ktime_ns, now, now_k);
            let entry = SocketEntry {
                local: t.local,
                remote: t.remote,
                state: TcpState::Established,
                id: 0,
            };
            let key = ConnKey::from(&entry);
            match t.change() {
                Some(Change::Opened) => {
                    if let Some(e) = self.tracker.open(at, &entry) {
                        self.events.push(e);
                    }
                    if let Some(p) = t.process {
                        self.processes.insert(key, p);
                    }
                }
                Some(Change::Closed(by)) => {
                    if let Some(e) = self.tracker.close(at, &key) {
                        self.events.push(e);
                        self.closed_by.insert(key, by);
                    }
                }
                None => {}
            }
        }
    }

    /// The tracker's view of the sessions, into `next`.
    fn fill(&self, next: &mut State) {
        next.stats = self.tracker.stats().to_vec();
        next.peak = self.tracker.peak();
        let mut active: Vec<(usize, Session)> = self
            .tracker
            .active()
            .map(|c| {
                let mut s = Session::tracked(c, &self.names, None);
                s.process = self.processes.get(&c.key).cloned();
                (c.target, s)
            })
            .collect();
        active.sort_by(|(ta, a), (tb, b)| (ta, a.local, a.remote).cmp(&(tb, b.local, b.remote)));
        next.active = active.into_iter().map(|(_, s)| s).collect();
        for e in &self.events {
            if let Event::Closed { conn, at, duration } = e {
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
                next.closed.push(s);
            }
        }
    }
}

fn log_events(
    events: &[Event],
    names: &[Arc<str>],
    processes: &HashMap<ConnKey, Process>,
    closed_by: &HashMap<ConnKey, ClosedBy>,
) {
    for e in events {
        match e {
            Event::Opened(c) => match processes.get(&c.key) {
                Some(p) => tracing::info!(
                    target_name = %names[c.target],
                    local = %c.key.local,
                    remote = %c.key.remote,
                    preexisting = c.preexisting,
                    pid = p.pid,
                    comm = %p.comm,
                    "connection opened"
                ),
                None => tracing::info!(
                    target_name = %names[c.target],
                    local = %c.key.local,
                    remote = %c.key.remote,
                    preexisting = c.preexisting,
                    "connection opened"
                ),
            },
            Event::Closed { conn, duration, .. } => {
                let by = closed_by
                    .get(&conn.key)
                    .copied()
                    .unwrap_or(ClosedBy::Unknown);
                match processes.get(&conn.key) {
                    Some(p) => tracing::info!(
                        target_name = %names[conn.target],
                        local = %conn.key.local,
                        remote = %conn.key.remote,
                        duration = %crate::session::hms(*duration),
                        duration_seconds = duration.as_secs_f64(),
                        by = by.as_str(),
                        pid = p.pid,
                        comm = %p.comm,
                        "connection closed"
                    ),
                    None => tracing::info!(
                        target_name = %names[conn.target],
                        local = %conn.key.local,
                        remote = %conn.key.remote,
                        duration = %crate::session::hms(*duration),
                        duration_seconds = duration.as_secs_f64(),
                        by = by.as_str(),
                        "connection closed"
                    ),
                }
            }
        }
    }
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
            Wait::Closed => return,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
