//! The connection lifecycle: a pure state machine.
//!
//! Snapshots of matching sockets go in, each with the time it was taken; `Opened` and `Closed`
//! events come out, and per-target counts are kept. The tracker never reads a clock and does no
//! I/O, so tests drive it with made-up timestamps.
//!
//! Identity: a connection is its 4-tuple plus the socket's id (kernel cookie or inode), so a
//! 4-tuple that a new socket reuses between two polls is a close and an open, not one long
//! connection. A connection "starts" when it is first seen: with polling, the true start lies
//! up to one poll interval earlier, and the true end up to one interval after the last poll that
//! saw it, so a duration is accurate to within one interval. Connections that were already open
//! when tracking began have no known start: they are counted, but their lifetime is not put in
//! the duration histogram (it would be a lower bound passed off as a measurement).
//!
//! Event-driven sources (kernel socket-destroy notifications, an eBPF tracepoint) can feed the
//! same tracker through [`Tracker::open`] and [`Tracker::close`]; [`Tracker::apply`] is the
//! snapshot-diffing path built on the same two steps.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use crate::source::{SocketEntry, TcpState};
use crate::target::{TargetId, Targets};

/// A point in time, on both clocks: `mono` for durations (immune to clock steps), `wall` for
/// what people read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp {
    pub mono: Instant,
    pub wall: SystemTime,
}

impl Timestamp {
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

/// What identifies one connection across polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub id: u64,
}

impl From<&SocketEntry> for ConnKey {
    fn from(e: &SocketEntry) -> Self {
        ConnKey {
            local: e.local,
            remote: e.remote,
            id: e.id,
        }
    }
}

/// A connection the tracker holds as active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub key: ConnKey,
    pub target: TargetId,
    pub state: TcpState,
    /// When it was first seen (see the module docs for the precision).
    pub since: Timestamp,
    /// Already open when tracking began: its real start is unknown.
    pub preexisting: bool,
    /// The snapshot generation that last saw it.
    seen: u64,
}

impl Connection {
    pub fn age(&self, now: Timestamp) -> Duration {
        now.mono.saturating_duration_since(self.since.mono)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Opened(Connection),
    Closed {
        conn: Connection,
        at: Timestamp,
        /// From first seen to the first snapshot that no longer saw it.
        duration: Duration,
    },
}

/// Counts for one target since tracking began.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TargetStats {
    pub active: u64,
    pub opened: u64,
    pub closed: u64,
    /// Highest `active` at the end of any snapshot (or after any event-driven open).
    pub peak: u64,
}

#[derive(Debug)]
pub struct Tracker {
    targets: Targets,
    active: HashMap<ConnKey, Connection>,
    stats: Vec<TargetStats>,
    /// Highest number of active connections over all targets together; not the sum of the
    /// per-target peaks, which need not have happened at the same time.
    peak: u64,
    generation: u64,
    closed_scratch: Vec<ConnKey>,
}

impl Tracker {
    pub fn new(targets: Targets) -> Tracker {
        let stats = vec![TargetStats::default(); targets.len()];
        Tracker {
            targets,
            active: HashMap::new(),
            stats,
            peak: 0,
            generation: 0,
            closed_scratch: Vec::new(),
        }
    }

    pub fn targets(&self) -> &Targets {
        &self.targets
    }

    pub fn stats(&self) -> &[TargetStats] {
        &self.stats
    }

    /// Highest number of connections active at once, over all targets together.
    pub fn peak(&self) -> u64 {
        self.peak
    }

    pub fn active(&self) -> impl Iterator<Item = &Connection> {
        self.active.values()
    }

    pub fn active_count(&self) -> usize {
        self.active.len()
    }

    /// Takes a full snapshot of the matching ESTABLISHED sockets taken at `at`, and appends to
    /// `events` what changed since the previous one. The first snapshot's connections are
    /// marked `preexisting`.
    pub fn apply(&mut self, at: Timestamp, sockets: &[SocketEntry], events: &mut Vec<Event>) {
        let preexisting = self.generation == 0;
        self.generation += 1;
        let generation = self.generation;
        for s in sockets {
            let key = ConnKey::from(s);
            match self.active.get_mut(&key) {
                Some(c) => c.seen = generation,
                None => {
                    if let Some(c) = self.insert(key, s.state, at, preexisting) {
                        events.push(Event::Opened(c));
                    }
                }
            }
        }
        self.closed_scratch.clear();
        self.closed_scratch.extend(
            self.active
                .values()
                .filter(|c| c.seen != generation)
                .map(|c| c.key),
        );
        let gone = std::mem::take(&mut self.closed_scratch);
        for key in &gone {
            if let Some(e) = self.close(at, key) {
                events.push(e);
            }
        }
        self.closed_scratch = gone;
        // The peak is taken once the snapshot is fully applied: a socket that replaced another
        // within one poll must not count as two at once.
        for s in &mut self.stats {
            s.peak = s.peak.max(s.active);
        }
        self.peak = self.peak.max(self.active.len() as u64);
    }

    /// Records a connection opened at `at` (the event-driven path). Returns the `Opened` event,
    /// or `None` when it matches no target or is already tracked.
    pub fn open(&mut self, at: Timestamp, socket: &SocketEntry) -> Option<Event> {
        let key = ConnKey::from(socket);
        if self.active.contains_key(&key) {
            return None;
        }
        let conn = self.insert(key, socket.state, at, false)?;
        let s = &mut self.stats[conn.target];
        s.peak = s.peak.max(s.active);
        self.peak = self.peak.max(self.active.len() as u64);
        Some(Event::Opened(conn))
    }

    /// Records that a connection ended at `at`. Returns the `Closed` event, or `None` when it
    /// was not tracked; the tracker forgets it either way.
    pub fn close(&mut self, at: Timestamp, key: &ConnKey) -> Option<Event> {
        let conn = self.active.remove(key)?;
        let s = &mut self.stats[conn.target];
        s.active -= 1;
        s.closed += 1;
        let duration = at.mono.saturating_duration_since(conn.since.mono);
        Some(Event::Closed { conn, at, duration })
    }

    fn insert(
        &mut self,
        key: ConnKey,
        state: TcpState,
        at: Timestamp,
        preexisting: bool,
    ) -> Option<Connection> {
        let target = self.targets.classify(&key.local, &key.remote)?;
        let conn = Connection {
            key,
            target,
            state,
            since: at,
            preexisting,
            seen: self.generation,
        };
        self.active.insert(key, conn.clone());
        let s = &mut self.stats[target];
        s.active += 1;
        s.opened += 1;
        Some(conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::Target;

    fn targets() -> Targets {
        let mk = |net: &str, port| Target::test(net, port, None);
        Targets::new(vec![mk("10.0.0.1/32", Some(9000)), mk("10.0.0.2/32", None)])
    }

    fn sock(local_port: u16, remote: &str, id: u64) -> SocketEntry {
        SocketEntry {
            local: SocketAddr::from(([192, 168, 1, 1], local_port)),
            remote: remote.parse().unwrap(),
            state: TcpState::Established,
            id,
            health: None,
        }
    }

    fn kinds(events: &[Event]) -> Vec<(&'static str, u16)> {
        events
            .iter()
            .map(|e| match e {
                Event::Opened(c) => ("open", c.key.local.port()),
                Event::Closed { conn, .. } => ("close", conn.key.local.port()),
            })
            .collect()
    }

    #[test]
    fn first_snapshot_opens_preexisting_connections() {
        let mut t = Tracker::new(targets());
        let t0 = Timestamp::now();
        let mut ev = Vec::new();
        t.apply(t0, &[sock(5000, "10.0.0.1:9000", 1)], &mut ev);
        assert_eq!(kinds(&ev), vec![("open", 5000)]);
        assert!(matches!(&ev[0], Event::Opened(c) if c.preexisting));
        // A later open is a real one.
        ev.clear();
        let s = [
            sock(5000, "10.0.0.1:9000", 1),
            sock(5001, "10.0.0.1:9000", 2),
        ];
        t.apply(t0.after(Duration::from_secs(1)), &s, &mut ev);
        assert_eq!(kinds(&ev), vec![("open", 5001)]);
        assert!(matches!(&ev[0], Event::Opened(c) if !c.preexisting));
    }

    #[test]
    fn close_reports_duration_from_first_seen_to_first_missing() {
        let mut t = Tracker::new(targets());
        let t0 = Timestamp::now();
        let mut ev = Vec::new();
        t.apply(t0, &[], &mut ev);
        t.apply(
            t0.after(Duration::from_secs(1)),
            &[sock(5000, "10.0.0.1:9000", 7)],
            &mut ev,
        );
        t.apply(
            t0.after(Duration::from_secs(5)),
            &[sock(5000, "10.0.0.1:9000", 7)],
            &mut ev,
        );
        ev.clear();
        t.apply(t0.after(Duration::from_secs(61)), &[], &mut ev);
        match &ev[..] {
            [Event::Closed { duration, conn, .. }] => {
                assert_eq!(*duration, Duration::from_secs(60));
                assert_eq!(conn.target, 0);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(t.active_count(), 0, "closed connections are forgotten");
    }

    #[test]
    fn reused_four_tuple_with_new_socket_id_is_close_then_open() {
        let mut t = Tracker::new(targets());
        let t0 = Timestamp::now();
        let mut ev = Vec::new();
        t.apply(t0, &[], &mut ev);
        t.apply(
            t0.after(Duration::from_secs(1)),
            &[sock(5000, "10.0.0.1:9000", 1)],
            &mut ev,
        );
        ev.clear();
        t.apply(
            t0.after(Duration::from_secs(2)),
            &[sock(5000, "10.0.0.1:9000", 2)],
            &mut ev,
        );
        let mut k = kinds(&ev);
        k.sort();
        assert_eq!(k, vec![("close", 5000), ("open", 5000)]);
        assert_eq!(
            t.stats()[0],
            TargetStats {
                active: 1,
                opened: 2,
                closed: 1,
                peak: 1
            }
        );
    }

    #[test]
    fn stats_are_per_target_and_peak_is_kept() {
        let mut t = Tracker::new(targets());
        let t0 = Timestamp::now();
        let mut ev = Vec::new();
        let a = sock(5000, "10.0.0.1:9000", 1);
        let b = sock(5001, "10.0.0.1:9000", 2);
        let c = sock(5002, "10.0.0.2:1234", 3);
        let unrelated = sock(5003, "10.0.0.3:9000", 4);
        t.apply(t0, &[a, b, c, unrelated], &mut ev);
        t.apply(t0.after(Duration::from_secs(1)), &[c], &mut ev);
        assert_eq!(
            t.stats()[0],
            TargetStats {
                active: 0,
                opened: 2,
                closed: 2,
                peak: 2
            }
        );
        assert_eq!(
            t.stats()[1],
            TargetStats {
                active: 1,
                opened: 1,
                closed: 0,
                peak: 1
            }
        );
        assert_eq!(t.active_count(), 1);
    }

    #[test]
    fn overall_peak_is_what_was_active_at_once() {
        let mut t = Tracker::new(targets());
        let t0 = Timestamp::now();
        let mut ev = Vec::new();
        let a = sock(5000, "10.0.0.1:9000", 1);
        let b = sock(5001, "10.0.0.1:9000", 2);
        let c = sock(5002, "10.0.0.2:1234", 3);
        t.apply(t0, &[a, b], &mut ev);
        t.apply(t0.after(Duration::from_secs(1)), &[c], &mut ev);
        // Per-target peaks 2 and 1 never happened together.
        assert_eq!((t.stats()[0].peak, t.stats()[1].peak), (2, 1));
        assert_eq!(t.peak(), 2);
        t.apply(t0.after(Duration::from_secs(2)), &[a, b, c], &mut ev);
        assert_eq!(t.peak(), 3);
    }

    #[test]
    fn event_driven_open_and_close_use_the_same_books() {
        let mut t = Tracker::new(targets());
        let t0 = Timestamp::now();
        let a = sock(5000, "10.0.0.2:1", 1);
        assert!(matches!(t.open(t0, &a), Some(Event::Opened(_))));
        assert!(t.open(t0, &a).is_none(), "an open is counted once");
        let ev = t.close(t0.after(Duration::from_millis(1500)), &ConnKey::from(&a));
        assert!(
            matches!(ev, Some(Event::Closed { duration, .. }) if duration == Duration::from_millis(1500))
        );
        assert!(
            t.close(t0, &ConnKey::from(&a)).is_none(),
            "a close is counted once"
        );
        assert_eq!(
            t.stats()[1],
            TargetStats {
                active: 0,
                opened: 1,
                closed: 1,
                peak: 1
            }
        );
    }
}
