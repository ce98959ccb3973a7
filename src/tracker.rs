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
//! Event-driven sources (kernel socket-destroy notifications, an eBPF tracepoint) feed the same
//! tracker through [`Tracker::event`]: a [`SocketEvent`] (opened or closed, with a timestamp, the
//! socket's cookie, its 4-tuple and, for a close, what its final `tcp_info` said). Events and
//! snapshots agree on identity through the cookie, and the rules that make a close count
//! exactly once, at its earliest sign, are these (each is a unit test below):
//! - a close event for a tracked socket closes it at the event's time, even when the event's
//!   4-tuple is incomplete (found by cookie);
//! - a socket closed by an event, or by a poll, is remembered: a later event for it is a
//!   duplicate, and a snapshot taken before its close but applied after it cannot bring it back;
//! - a close event for a socket no snapshot saw is a session shorter than a poll: one opened and
//!   one closed, counted in [`TargetStats::short_lived`], with no duration (it is only known to
//!   be under one interval); one that never reached ESTABLISHED is no session at all;
//! - a socket missing from a snapshot is confirmed before it is closed (see [`Confirm`]): still
//!   ESTABLISHED, it stays, and [`Tracker::saved_false_closes`] counts it;
//! - procfs lists a socket not yet accepted with inode 0: the same 4-tuple seen later with its
//!   real inode is the same connection, not a close and an open.

use std::collections::VecDeque;

// Keyed by sockets this host made to its own targets: a fast hash, not a DoS-resistant one.
use rustc_hash::FxHashMap as HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::target::{Remap, TargetId, Targets};
use fix_monitor_core::{SocketEntry, TcpState};
pub use fix_monitor_core::{SocketEvent, SocketEventKind, TcpCounters, Timestamp};

/// How many closed socket ids are remembered, to recognise a late or duplicate event and a
/// stale snapshot. A close event can come long after the poll that saw the socket leave
/// ESTABLISHED (a FIN_WAIT2 lasts up to a minute, a CLOSE_WAIT as long as the application keeps
/// it); past this many closes in between, such an event would be taken for a short session.
pub const CLOSED_MEMORY: usize = 65_536;

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

/// An [`Event`] as the loop hands it to its subscribers (the FIX layer, the console): shared,
/// so that a subscriber channel's slots hold a pointer, not an event each.
pub type SharedEvent = std::sync::Arc<Event>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Opened(Connection),
    Closed {
        conn: Connection,
        at: Timestamp,
        /// From first seen to the close event, or to the first snapshot that no longer saw it.
        duration: Duration,
        /// What the socket's final `tcp_info` said, when a close event carried it.
        info: Option<TcpCounters>,
    },
    /// A session no snapshot saw: opened and closed between two polls. Its lifetime is only
    /// known to be under one interval, so it has none here.
    ShortLived {
        conn: Connection,
        at: Timestamp,
        info: Option<TcpCounters>,
    },
}

/// What the kernel says about a socket that a snapshot no longer lists (the answer of an exact
/// lookup, `source::confirm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Still ESTABLISHED: the snapshot missed it.
    Established,
    /// Gone, or in another state: it has closed.
    Closed,
    /// The question could not be answered, or was not asked: closed, as the snapshot says,
    /// but not for certain, so a later snapshot that lists it again reopens it.
    Unknown,
}

/// Confirms sockets a snapshot no longer lists, before they are closed.
pub trait Confirm {
    fn confirm(&mut self, conn: &Connection) -> Presence;
}

/// No confirmation: a socket missing from a snapshot is closed (sources without exact lookups).
pub struct Unconfirmed;

impl Confirm for Unconfirmed {
    fn confirm(&mut self, _conn: &Connection) -> Presence {
        Presence::Unknown
    }
}

impl<F: FnMut(&Connection) -> Presence> Confirm for F {
    fn confirm(&mut self, conn: &Connection) -> Presence {
        self(conn)
    }
}

/// Counts for one target since tracking began.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TargetStats {
    pub active: u64,
    pub opened: u64,
    pub closed: u64,
    /// Of `opened` and `closed`: sessions that opened and closed between two polls, known from
    /// their close event alone.
    pub short_lived: u64,
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
    /// Active connections by socket id (ids other than 0), for events whose 4-tuple is
    /// incomplete.
    by_id: HashMap<u64, ConnKey>,
    /// Ids of recently closed sockets (see [`CLOSED_MEMORY`]), oldest first in `closed_order`;
    /// `true` where the close is certain (an event, a confirmed poll), so that no snapshot may
    /// bring the socket back.
    closed: HashMap<u64, bool>,
    closed_order: VecDeque<u64>,
    saved_false_closes: u64,
    unattributed: u64,
    /// Starts of sessions a previous run of the sidecar saw (from the state file), by key and
    /// target; used by the first snapshot, then dropped.
    restored: HashMap<ConnKey, (TargetId, Timestamp)>,
    /// After a reload, until the next snapshot: by target id, whether the reload added or
    /// widened it (its unknown sockets then are preexisting). Empty otherwise.
    /// While it is not empty, the peak is not raised either (see [`Tracker::apply_confirmed`]).
    widened: Vec<bool>,
    /// Grows with every change to the set of active sessions or to what is kept of one (see
    /// [`Tracker::version`]).
    version: u64,
}

impl Tracker {
    pub fn new(targets: Targets) -> Tracker {
        let stats = vec![TargetStats::default(); targets.len()];
        Tracker {
            targets,
            active: HashMap::default(),
            stats,
            peak: 0,
            generation: 0,
            closed_scratch: Vec::new(),
            by_id: HashMap::default(),
            closed: HashMap::default(),
            closed_order: VecDeque::new(),
            saved_false_closes: 0,
            unattributed: 0,
            restored: HashMap::default(),
            widened: Vec::new(),
            version: 0,
        }
    }

    /// A number that changes whenever a session is added, closed, dropped, re-keyed or moved
    /// to another target: while it stands, [`Tracker::active`] lists the same sessions with
    /// the same data, so what was built from them can be kept.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The targets reloaded: `remap` maps the current ones onto `targets` by name. A session
    /// the same target still holds keeps its start and counts; one that now belongs to another
    /// target moves there as a session of unknown start (an `Opened` event in `events`, as a
    /// session open at start); one no target holds any more is no longer watched: dropped,
    /// without a close (it did not end). The counts of targets that stay are kept, new targets
    /// start at 0. Until the next snapshot, the sockets of added or widened targets that it
    /// lists are taken as open before the reload, and neither opens nor that snapshot raise the
    /// peak (the new source's first view is not one instant). Returns how many sessions were
    /// dropped.
    pub fn retarget(&mut self, targets: Targets, remap: &Remap, events: &mut Vec<Event>) -> usize {
        self.version += 1;
        let mut stats = vec![TargetStats::default(); targets.len()];
        for (old, new) in remap.old_to_new.iter().enumerate() {
            if let Some(new) = *new {
                stats[new] = TargetStats {
                    active: 0,
                    ..self.stats[old]
                };
            }
        }
        let (mut dropped, mut moved) = (Vec::new(), Vec::new());
        for c in self.active.values_mut() {
            let (local, remote) = (&c.key.local, &c.key.remote);
            match remap.keep(c.target, &targets, local, remote) {
                Some(new) => c.target = new,
                None if targets.classify(local, remote).is_some() => moved.push(c.key),
                None => dropped.push(c.key),
            }
        }
        for key in &dropped {
            self.active.remove(key);
            if key.id != 0 {
                self.by_id.remove(&key.id);
                // Its close event, if one comes, is not a session of any target.
                self.remember_closed(key.id, true);
            }
        }
        self.targets = targets;
        self.stats = stats;
        for key in &moved {
            let old = self.active.remove(key).expect("listed above");
            let since = old.since;
            events.extend(self.insert(*key, old.state, since, true).map(Event::Opened));
        }
        self.stats.iter_mut().for_each(|s| s.active = 0);
        for c in self.active.values() {
            self.stats[c.target].active += 1;
        }
        for s in &mut self.stats {
            s.peak = s.peak.max(s.active);
        }
        self.widened = remap.widened.clone();
        dropped.len()
    }

    /// Sessions a previous run saw, with the target they belonged to and when they started.
    /// The first snapshot gives those it still lists their recorded start instead of marking
    /// them `preexisting`: their lifetime is known. A session whose target now classifies it
    /// differently is not restored (the configuration changed under it).
    pub fn restore(&mut self, sessions: impl IntoIterator<Item = (ConnKey, TargetId, Timestamp)>) {
        if self.generation == 0 {
            self.restored = sessions
                .into_iter()
                .map(|(k, t, at)| (k, (t, at)))
                .collect();
        }
    }

    /// Sockets a snapshot missed that an exact lookup found still ESTABLISHED: closes (and
    /// reconnects) that would have been false.
    pub fn saved_false_closes(&self) -> u64 {
        self.saved_false_closes
    }

    /// Close events for sockets no snapshot saw whose incomplete 4-tuple could not be
    /// attributed to one target without doubt; not counted as sessions.
    pub fn unattributed(&self) -> u64 {
        self.unattributed
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

    /// Whether the session `key` is active.
    pub fn is_active(&self, key: &ConnKey) -> bool {
        self.active.contains_key(key)
    }

    pub fn active_count(&self) -> usize {
        self.active.len()
    }

    /// Takes a full snapshot of the matching ESTABLISHED sockets taken at `at`, and appends to
    /// `events` what changed since the previous one. The first snapshot's connections are
    /// marked `preexisting`. Sockets it no longer lists are closed without confirmation (see
    /// [`Tracker::apply_confirmed`]).
    pub fn apply(&mut self, at: Timestamp, sockets: &[SocketEntry], events: &mut Vec<Event>) {
        self.apply_confirmed(at, sockets, events, &mut Unconfirmed)
    }

    /// [`Tracker::apply`], asking `confirm` about each socket the snapshot no longer lists
    /// before closing it: one still ESTABLISHED is kept, with no event.
    pub fn apply_confirmed(
        &mut self,
        at: Timestamp,
        sockets: &[SocketEntry],
        events: &mut Vec<Event>,
        confirm: &mut dyn Confirm,
    ) {
        let first = self.generation == 0;
        let widened = std::mem::take(&mut self.widened);
        // The first snapshot after a reload is the new source's first view: a walk of the
        // kernel's sockets that is not one instant (a session that closed after the walk
        // passed it and one that opened before the walk reached it are both listed), joined
        // with events the old source had applied already. It does not raise the peak; the
        // next poll's does. Found by the soak: 152 at once where 151 were ever open.
        let hold_peak = !widened.is_empty();
        self.generation += 1;
        let generation = self.generation;
        for s in sockets {
            let key = ConnKey::from(s);
            if let Some(c) = self.active.get_mut(&key) {
                c.seen = generation;
                continue;
            }
            // Closed already (by an event this snapshot predates, or by a poll): a socket never
            // comes back, its id is never reused.
            if key.id != 0 {
                match self.closed.get(&key.id).copied() {
                    Some(true) => continue,
                    // A poll closed it without certainty, and it is back: it was missed.
                    Some(false) => {
                        self.closed.remove(&key.id);
                    }
                    None if self.rekey_accepted(key, generation) => continue,
                    None => {}
                }
            }
            // At start, and for a target a reload added or widened: its sessions' starts are
            // not known.
            let preexisting = first
                || (!widened.is_empty()
                    && (self.targets.classify(&key.local, &key.remote))
                        .is_some_and(|t| widened[t]));
            let (since, preexisting) = match self.restored.get(&key) {
                Some(&(target, started))
                    if first
                        && self.targets.classify(&key.local, &key.remote) == Some(target)
                        && started.mono <= at.mono =>
                {
                    (started, false)
                }
                _ => (at, preexisting),
            };
            if let Some(c) = self.insert(key, s.state, since, preexisting) {
                events.push(Event::Opened(c));
            }
        }
        if generation == 1 {
            self.restored = HashMap::default();
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
            let presence = confirm.confirm(&self.active[key]);
            if presence == Presence::Established {
                self.saved_false_closes += 1;
                self.active.get_mut(key).expect("listed above").seen = generation;
                continue;
            }
            let certain = presence == Presence::Closed;
            if let Some(e) = self.close_with(at, key, None, certain) {
                events.push(e);
            }
        }
        self.closed_scratch = gone;
        if hold_peak {
            return;
        }
        // The peak is taken once the snapshot is fully applied: a socket that replaced another
        // within one poll must not count as two at once.
        for s in &mut self.stats {
            s.peak = s.peak.max(s.active);
        }
        self.peak = self.peak.max(self.active.len() as u64);
    }

    /// procfs lists an inbound socket that is not yet accepted with inode 0; once accepted it
    /// has its real inode. If `key`'s 4-tuple is tracked with id 0, it takes `key`'s id.
    fn rekey_accepted(&mut self, key: ConnKey, generation: u64) -> bool {
        let zero = ConnKey { id: 0, ..key };
        let Some(mut conn) = self.active.remove(&zero) else {
            return false;
        };
        conn.key = key;
        conn.seen = generation;
        self.version += 1;
        self.by_id.insert(key.id, key);
        self.active.insert(key, conn);
        true
    }

    /// Records a connection opened at `at` (the event-driven path). Returns the `Opened` event,
    /// or `None` when it matches no target, is already tracked or was closed already.
    pub fn open(&mut self, at: Timestamp, socket: &SocketEntry) -> Option<Event> {
        let key = ConnKey::from(socket);
        if self.active.contains_key(&key)
            || (key.id != 0 && self.closed.get(&key.id) == Some(&true))
        {
            return None;
        }
        let conn = self.insert(key, socket.state, at, false)?;
        // Right after a reload the sessions that closed while the sources were swapped are
        // still counted until the next snapshot: the peak waits for it.
        if self.widened.is_empty() {
            let s = &mut self.stats[conn.target];
            s.peak = s.peak.max(s.active);
            self.peak = self.peak.max(self.active.len() as u64);
        }
        Some(Event::Opened(conn))
    }

    /// Records that a connection ended at `at`. Returns the `Closed` event, or `None` when it
    /// was not tracked; the tracker forgets it either way.
    pub fn close(&mut self, at: Timestamp, key: &ConnKey) -> Option<Event> {
        self.close_with(at, key, None, true)
    }

    fn close_with(
        &mut self,
        at: Timestamp,
        key: &ConnKey,
        info: Option<TcpCounters>,
        certain: bool,
    ) -> Option<Event> {
        let conn = self.active.remove(key)?;
        self.version += 1;
        if key.id != 0 {
            self.by_id.remove(&key.id);
            self.remember_closed(key.id, certain);
        }
        let s = &mut self.stats[conn.target];
        s.active -= 1;
        s.closed += 1;
        let duration = at.mono.saturating_duration_since(conn.since.mono);
        Some(Event::Closed {
            conn,
            at,
            duration,
            info,
        })
    }

    fn remember_closed(&mut self, id: u64, certain: bool) {
        if self.closed.insert(id, certain).is_none() {
            self.closed_order.push_back(id);
            while self.closed_order.len() > CLOSED_MEMORY {
                if let Some(old) = self.closed_order.pop_front() {
                    self.closed.remove(&old);
                }
            }
        }
    }

    /// Applies an event from an event-driven source (see the module docs for the rules), and
    /// appends what it changed to `events`.
    pub fn event(&mut self, e: &SocketEvent, events: &mut Vec<Event>) {
        match e.kind {
            SocketEventKind::Opened => {
                if e.partial {
                    return;
                }
                let socket = SocketEntry {
                    local: e.local,
                    remote: e.remote,
                    state: TcpState::Established,
                    id: e.id,
                    health: None,
                };
                events.extend(self.open(e.at, &socket));
            }
            SocketEventKind::Closed => {
                let key = self.by_id.get(&e.id).copied().or_else(|| {
                    let key = ConnKey {
                        local: e.local,
                        remote: e.remote,
                        id: e.id,
                    };
                    self.active.contains_key(&key).then_some(key)
                });
                if let Some(key) = key {
                    events.extend(self.close_with(e.at, &key, e.info, true));
                    return;
                }
                if e.id != 0 && self.closed.contains_key(&e.id) {
                    // A duplicate, or the late event of a socket a poll closed: certain now.
                    self.closed.insert(e.id, true);
                    return;
                }
                if e.established == Some(false) {
                    return; // an attempt that never connected
                }
                let target = if e.partial {
                    self.unique_target(e)
                } else {
                    self.targets.classify(&e.local, &e.remote)
                };
                let Some(target) = target else {
                    if e.partial
                        && self
                            .targets
                            .iter()
                            .any(|t| t.net.contains(&e.remote.ip().to_canonical()))
                    {
                        self.unattributed += 1;
                    }
                    return;
                };
                if e.id != 0 {
                    self.remember_closed(e.id, true);
                }
                let s = &mut self.stats[target];
                s.opened += 1;
                s.closed += 1;
                s.short_lived += 1;
                let conn = Connection {
                    key: ConnKey {
                        local: e.local,
                        remote: e.remote,
                        id: e.id,
                    },
                    target,
                    state: TcpState::Close,
                    since: e.at,
                    preexisting: false,
                    seen: self.generation,
                };
                events.push(Event::ShortLived {
                    conn,
                    at: e.at,
                    info: e.info,
                });
            }
        }
    }

    /// The target of a socket known only by remote address and local port, if that settles it:
    /// the first target that could match it for some remote port must match it for every one
    /// (and so takes it, as `classify` would). Otherwise the remote port could have sent it
    /// elsewhere, or nowhere.
    fn unique_target(&self, e: &SocketEvent) -> Option<TargetId> {
        let remote = e.remote.ip().to_canonical();
        let (id, t) = self.targets.iter().enumerate().find(|(_, t)| {
            t.net.contains(&remote) && t.local_ports.is_none_or(|r| r.contains(e.local.port()))
        })?;
        t.port.is_none().then_some(id)
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
        self.version += 1;
        if key.id != 0 {
            self.by_id.insert(key.id, key);
        }
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
                Event::ShortLived { conn, .. } => ("short", conn.key.local.port()),
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
                short_lived: 0,
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
                short_lived: 0,
                peak: 2
            }
        );
        assert_eq!(
            t.stats()[1],
            TargetStats {
                active: 1,
                opened: 1,
                closed: 0,
                short_lived: 0,
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
                short_lived: 0,
                peak: 1
            }
        );
    }

    fn closed_event(at: Timestamp, s: &SocketEntry) -> SocketEvent {
        SocketEvent {
            at,
            kind: SocketEventKind::Closed,
            id: s.id,
            local: s.local,
            remote: s.remote,
            partial: false,
            established: Some(true),
            info: None,
            closed_by: None,
            process: None,
            cause: None,
        }
    }

    /// The event of a socket our side aborted: remote port and local address cleared.
    fn aborted(at: Timestamp, s: &SocketEntry) -> SocketEvent {
        SocketEvent {
            local: SocketAddr::new([0, 0, 0, 0].into(), s.local.port()),
            remote: SocketAddr::new(s.remote.ip(), 0),
            partial: true,
            established: None,
            ..closed_event(at, s)
        }
    }

    fn secs(t0: Timestamp, s: f64) -> Timestamp {
        t0.after(Duration::from_secs_f64(s))
    }

    fn stats(active: u64, opened: u64, closed: u64, short_lived: u64, peak: u64) -> TargetStats {
        TargetStats {
            active,
            opened,
            closed,
            short_lived,
            peak,
        }
    }

    #[test]
    fn event_before_snapshot_a_stale_snapshot_does_not_bring_the_socket_back() {
        let mut t = Tracker::new(targets());
        let t0 = Timestamp::now();
        let a = sock(5000, "10.0.0.1:9000", 11);
        let mut ev = Vec::new();
        t.apply(t0, &[], &mut ev);
        t.apply(secs(t0, 1.0), &[a], &mut ev);
        ev.clear();
        t.event(&closed_event(secs(t0, 1.4), &a), &mut ev);
        assert!(
            matches!(&ev[..], [Event::Closed { duration, .. }] if *duration == Duration::from_millis(400)),
            "closed at the event's time: {ev:?}"
        );
        // A snapshot taken at 1.3 s (before the close), applied now.
        ev.clear();
        t.apply(secs(t0, 1.3), &[a], &mut ev);
        assert!(ev.is_empty(), "{ev:?}");
        assert_eq!(t.active_count(), 0);
        // And the next, which no longer lists it, closes nothing.
        t.apply(secs(t0, 2.0), &[], &mut ev);
        assert!(ev.is_empty(), "{ev:?}");
        assert_eq!(t.stats()[0], stats(0, 1, 1, 0, 1));
    }

    #[test]
    fn snapshot_before_event_the_late_event_is_not_a_second_close() {
        let mut t = Tracker::new(targets());
        let t0 = Timestamp::now();
        let a = sock(5000, "10.0.0.1:9000", 12);
        let mut ev = Vec::new();
        t.apply(t0, &[], &mut ev);
        t.apply(secs(t0, 1.0), &[a], &mut ev);
        ev.clear();
        // The poll no longer sees it (it sits in FIN_WAIT2): closed as of that poll.
        t.apply_confirmed(secs(t0, 2.0), &[], &mut ev, &mut |_: &Connection| {
            Presence::Closed
        });
        assert!(
            matches!(&ev[..], [Event::Closed { duration, .. }] if *duration == Duration::from_secs(1))
        );
        // Its destroy event comes a minute later.
        ev.clear();
        t.event(&closed_event(secs(t0, 62.0), &a), &mut ev);
        assert!(ev.is_empty(), "{ev:?}");
        assert_eq!(t.stats()[0], stats(0, 1, 1, 0, 1));
    }

    #[test]
    fn an_event_for_a_socket_no_snapshot_saw_is_a_short_session() {
        let mut t = Tracker::new(targets());
        let t0 = Timestamp::now();
        let b = sock(5001, "10.0.0.1:9000", 13);
        let mut ev = Vec::new();
        t.apply(t0, &[], &mut ev);
        t.event(&closed_event(secs(t0, 0.5), &b), &mut ev);
        assert_eq!(kinds(&ev), vec![("short", 5001)]);
        assert_eq!(t.stats()[0], stats(0, 1, 1, 1, 0));
        // A snapshot taken before the close, applied after: still one session.
        ev.clear();
        t.apply(secs(t0, 0.4), &[b], &mut ev);
        assert!(ev.is_empty(), "{ev:?}");
        assert_eq!(t.stats()[0], stats(0, 1, 1, 1, 0));
        // Not for a target: nothing. An attempt that never connected: nothing.
        let unrelated = sock(5002, "10.0.0.9:9000", 14);
        t.event(&closed_event(secs(t0, 0.6), &unrelated), &mut ev);
        let refused = SocketEvent {
            established: Some(false),
            ..closed_event(secs(t0, 0.7), &sock(5003, "10.0.0.1:9000", 15))
        };
        t.event(&refused, &mut ev);
        assert!(ev.is_empty(), "{ev:?}");
        assert_eq!(t.stats()[0], stats(0, 1, 1, 1, 0));
        assert_eq!(t.stats()[1], stats(0, 0, 0, 0, 0));
    }

    #[test]
    fn duplicate_events_count_once() {
        let mut t = Tracker::new(targets());
        let t0 = Timestamp::now();
        let a = sock(5000, "10.0.0.1:9000", 16);
        let b = sock(5001, "10.0.0.2:1", 17);
        let mut ev = Vec::new();
        t.apply(t0, &[], &mut ev);
        t.apply(secs(t0, 1.0), &[a], &mut ev);
        ev.clear();
        for _ in 0..3 {
            t.event(&closed_event(secs(t0, 1.5), &a), &mut ev);
            t.event(&closed_event(secs(t0, 1.5), &b), &mut ev);
        }
        assert_eq!(kinds(&ev), vec![("close", 5000), ("short", 5001)]);
        assert_eq!(t.stats()[0], stats(0, 1, 1, 0, 1));
        assert_eq!(t.stats()[1], stats(0, 1, 1, 1, 0));
    }

    #[test]
    fn an_aborted_socket_is_found_by_cookie_or_attributed_only_without_doubt() {
        let mut t = Tracker::new(targets());
        let t0 = Timestamp::now();
        let a = sock(5000, "10.0.0.1:9000", 18);
        let mut ev = Vec::new();
        t.apply(t0, &[], &mut ev);
        t.apply(secs(t0, 1.0), &[a], &mut ev);
        ev.clear();
        // Tracked: its cookie finds it whatever the tuple says.
        t.event(&aborted(secs(t0, 1.2), &a), &mut ev);
        assert!(matches!(&ev[..], [Event::Closed { conn, .. }] if conn.key == ConnKey::from(&a)));
        ev.clear();
        // Unseen, to target 0 (10.0.0.1, port 9000): the port is gone, and any other port of
        // 10.0.0.1 would match no target or another one: not counted.
        t.event(
            &aborted(secs(t0, 1.3), &sock(5001, "10.0.0.1:9000", 19)),
            &mut ev,
        );
        assert!(ev.is_empty(), "{ev:?}");
        assert_eq!(t.unattributed(), 1);
        // Unseen, to target 1 (10.0.0.2, any port): no doubt.
        t.event(
            &aborted(secs(t0, 1.4), &sock(5002, "10.0.0.2:4321", 20)),
            &mut ev,
        );
        assert_eq!(kinds(&ev), vec![("short", 5002)]);
        assert_eq!(t.stats()[0], stats(0, 1, 1, 0, 1));
        assert_eq!(t.stats()[1], stats(0, 1, 1, 1, 0));
        // A partial event for an address no target has: neither counted nor unattributed.
        ev.clear();
        t.event(
            &aborted(secs(t0, 1.5), &sock(5003, "10.9.9.9:1", 21)),
            &mut ev,
        );
        assert!(ev.is_empty());
        assert_eq!(t.unattributed(), 1);
    }

    #[test]
    fn an_earlier_target_that_may_match_makes_an_aborted_socket_doubtful() {
        let mk = |net: &str, port, local| Target::test(net, port, local);
        // 10.0.0.2:9000 from local ports 5000-5010 first, then all of 10.0.0.0/24.
        let targets = Targets::new(vec![
            mk("10.0.0.2/32", Some(9000), Some((5000, 5010))),
            mk("10.0.0.0/24", None, None),
        ]);
        let mut t = Tracker::new(targets);
        let t0 = Timestamp::now();
        let mut ev = Vec::new();
        t.apply(t0, &[], &mut ev);
        t.event(&aborted(t0, &sock(5005, "10.0.0.2:1", 30)), &mut ev);
        assert!(
            ev.is_empty(),
            "local port in the first target's range: could be either"
        );
        t.event(&aborted(t0, &sock(6000, "10.0.0.2:1", 31)), &mut ev);
        assert_eq!(
            kinds(&ev),
            vec![("short", 6000)],
            "outside it: only the second"
        );
        assert_eq!(t.stats()[1].short_lived, 1);
    }

    #[test]
    fn a_socket_a_snapshot_missed_but_still_established_is_kept() {
        let mut t = Tracker::new(targets());
        let t0 = Timestamp::now();
        let a = sock(5000, "10.0.0.1:9000", 22);
        let b = sock(5001, "10.0.0.1:9000", 23);
        let mut ev = Vec::new();
        t.apply(t0, &[], &mut ev);
        t.apply(secs(t0, 1.0), &[a, b], &mut ev);
        ev.clear();
        let mut asked = Vec::new();
        t.apply_confirmed(secs(t0, 2.0), &[], &mut ev, &mut |c: &Connection| {
            asked.push(c.key.id);
            if c.key.id == 22 {
                Presence::Established
            } else {
                Presence::Closed
            }
        });
        asked.sort();
        assert_eq!(asked, [22, 23], "only the missing ones are asked about");
        assert_eq!(kinds(&ev), vec![("close", 5001)]);
        assert_eq!(t.saved_false_closes(), 1);
        ev.clear();
        t.apply_confirmed(secs(t0, 3.0), &[a], &mut ev, &mut |_: &Connection| {
            panic!("nothing is missing")
        });
        assert!(ev.is_empty());
        assert_eq!(t.stats()[0], stats(1, 2, 1, 0, 2));
    }

    #[test]
    fn a_procfs_socket_listed_before_accept_keeps_its_session_when_its_inode_appears() {
        let mut t = Tracker::new(targets());
        let t0 = Timestamp::now();
        let mut ev = Vec::new();
        t.apply(t0, &[], &mut ev);
        t.apply(secs(t0, 1.0), &[sock(5000, "10.0.0.1:9000", 0)], &mut ev);
        assert_eq!(kinds(&ev), vec![("open", 5000)]);
        ev.clear();
        t.apply(secs(t0, 2.0), &[sock(5000, "10.0.0.1:9000", 4242)], &mut ev);
        assert!(ev.is_empty(), "{ev:?}");
        let c = t.active().next().unwrap();
        assert_eq!((c.key.id, c.since), (4242, secs(t0, 1.0)));
        t.apply(secs(t0, 5.0), &[], &mut ev);
        assert!(
            matches!(&ev[..], [Event::Closed { duration, .. }] if *duration == Duration::from_secs(4))
        );
        assert_eq!(t.stats()[0], stats(0, 1, 1, 0, 1));
    }

    #[test]
    fn open_events_and_close_events_make_a_session_with_a_duration() {
        let mut t = Tracker::new(targets());
        let t0 = Timestamp::now();
        let a = sock(5000, "10.0.0.1:9000", 40);
        let mut ev = Vec::new();
        t.apply(t0, &[], &mut ev);
        let open = SocketEvent {
            kind: SocketEventKind::Opened,
            ..closed_event(secs(t0, 0.1), &a)
        };
        t.event(&open, &mut ev);
        t.event(&open, &mut ev);
        // A snapshot that lists it changes nothing.
        t.apply(secs(t0, 0.5), &[a], &mut ev);
        t.event(&closed_event(secs(t0, 0.3 + 0.5), &a), &mut ev);
        assert_eq!(kinds(&ev), vec![("open", 5000), ("close", 5000)]);
        assert!(
            matches!(&ev[1], Event::Closed { duration, .. } if *duration == Duration::from_millis(700))
        );
        // An open event after its close (out of order) does not reopen it.
        ev.clear();
        t.event(&open, &mut ev);
        assert!(ev.is_empty());
    }

    #[test]
    fn the_memory_of_closed_sockets_is_bounded() {
        let mut t = Tracker::new(targets());
        let t0 = Timestamp::now();
        let mut ev = Vec::new();
        for id in 1..=(CLOSED_MEMORY as u64 + 1000) {
            let s = sock((id % 60000) as u16, "10.0.0.2:1", id);
            t.event(&closed_event(t0, &s), &mut ev);
        }
        assert_eq!(t.closed.len(), CLOSED_MEMORY);
        assert_eq!(t.closed_order.len(), CLOSED_MEMORY);
        assert_eq!(t.stats()[1].short_lived, CLOSED_MEMORY as u64 + 1000);
    }

    #[test]
    fn restored_sessions_keep_their_start_and_get_a_duration() {
        let mut t = Tracker::new(targets());
        let t0 = Timestamp::now();
        let a = sock(5000, "10.0.0.1:9000", 50);
        let b = sock(5001, "10.0.0.1:9000", 51);
        let moved = sock(5002, "10.0.0.2:1", 52);
        t.restore([
            (ConnKey::from(&a), 0, t0),
            // Recorded under target 0, now target 1's: the config changed, not restored.
            (ConnKey::from(&moved), 0, t0),
            // Not listed by the first snapshot: gone while the sidecar was down; forgotten.
            (ConnKey::from(&sock(5003, "10.0.0.1:9000", 53)), 0, t0),
        ]);
        let mut ev = Vec::new();
        t.apply(secs(t0, 100.0), &[a, b, moved], &mut ev);
        let opened: Vec<(u64, bool, Timestamp)> = ev
            .iter()
            .map(|e| match e {
                Event::Opened(c) => (c.key.id, c.preexisting, c.since),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            opened.iter().find(|o| o.0 == 50),
            Some(&(50, false, t0)),
            "restored"
        );
        assert!(opened.iter().find(|o| o.0 == 51).unwrap().1);
        assert!(opened.iter().find(|o| o.0 == 52).unwrap().1);
        ev.clear();
        t.apply(secs(t0, 130.0), &[b, moved], &mut ev);
        assert!(
            matches!(&ev[..], [Event::Closed { duration, conn, .. }] if *duration == Duration::from_secs(130) && !conn.preexisting)
        );
        // Restoring after the first snapshot does nothing.
        t.restore([(ConnKey::from(&b), 0, t0)]);
        assert!(t.restored.is_empty());
    }

    #[test]
    fn a_reload_keeps_sessions_of_targets_that_stay_and_drops_the_others_without_a_close() {
        let named = |name: &str, net: &str, port| Target {
            name: name.into(),
            ..Target::test(net, port, None)
        };
        let a = named("a", "10.0.0.1/32", Some(9000));
        let mut t = Tracker::new(Targets::new(vec![
            a.clone(),
            named("b", "10.0.0.2/32", None),
        ]));
        let t0 = Timestamp::now();
        let mut ev = Vec::new();
        t.apply(t0, &[], &mut ev);
        let before = [
            sock(5000, "10.0.0.1:9000", 1),
            sock(5001, "10.0.0.2:9000", 2),
            sock(5002, "10.0.0.3:9000", 3),
        ];
        t.apply(t0.after(Duration::from_secs(1)), &before, &mut ev);
        assert_eq!(kinds(&ev), [("open", 5000), ("open", 5001)]);
        // Reloaded: b removed, c added in front (its session was there already), a stays.
        let new = Targets::new(vec![named("c", "10.0.0.3/32", None), a]);
        let remap = t.targets().remap(&new);
        ev.clear();
        assert_eq!(t.retarget(new, &remap, &mut ev), 1, "b's session dropped");
        assert!(ev.is_empty(), "no close, no open: {ev:?}");
        let a_stats = t.stats()[1];
        assert_eq!((a_stats.active, a_stats.opened, a_stats.closed), (1, 1, 0));
        assert_eq!(t.stats()[0], TargetStats::default());
        // The next snapshot: c's session is one of unknown start, a's new one a real open, b's
        // is nobody's.
        let mut after = before.to_vec();
        after.push(sock(5003, "10.0.0.1:9000", 4));
        t.apply(t0.after(Duration::from_secs(2)), &after, &mut ev);
        let opened: Vec<_> = (ev.iter())
            .map(|e| match e {
                Event::Opened(c) => (c.key.local.port(), c.target, c.preexisting),
                e => panic!("{e:?}"),
            })
            .collect();
        assert_eq!(opened, [(5002, 0, true), (5003, 1, false)]);
        // A later snapshot opens c's sessions as real ones again.
        ev.clear();
        after.push(sock(5004, "10.0.0.3:9000", 5));
        t.apply(t0.after(Duration::from_secs(3)), &after, &mut ev);
        assert!(matches!(&ev[..], [Event::Opened(c)] if !c.preexisting && c.target == 0));
        // a's first session keeps its start across the reload.
        ev.clear();
        t.apply(t0.after(Duration::from_secs(11)), &after[1..], &mut ev);
        assert!(
            matches!(&ev[..], [Event::Closed { conn, duration, .. }] if conn.target == 1 && *duration == Duration::from_secs(10)),
            "{ev:?}"
        );
        // b's dropped session closing is no session of anyone.
        ev.clear();
        let gone = closed_event(t0, &sock(5001, "10.0.0.2:9000", 2));
        t.event(&gone, &mut ev);
        assert!(ev.is_empty(), "{ev:?}");
    }

    #[test]
    fn after_a_reload_the_peak_waits_for_the_first_snapshot() {
        let mut t = Tracker::new(targets());
        let t0 = Timestamp::now();
        let mut ev = Vec::new();
        t.apply(t0, &[], &mut ev);
        t.apply(t0, &[sock(5000, "10.0.0.1:9000", 1)], &mut ev);
        assert_eq!(t.stats()[0].peak, 1);
        let same = targets();
        let remap = t.targets().remap(&same);
        t.retarget(same, &remap, &mut ev);
        // The session closed while the sources were swapped; its successor's open comes as an
        // event before the snapshot that no longer lists the first.
        let next = sock(5001, "10.0.0.1:9000", 2);
        assert!(t.open(t0, &next).is_some());
        assert_eq!(t.stats()[0].peak, 1, "two were never open at once");
        // The new source's first view, a walk that is not one instant, lists the first session
        // (passed before it closed), its successor and a third that opened after the first
        // closed: three at once, which never were.
        let third = sock(5002, "10.0.0.1:9000", 3);
        t.apply(t0, &[sock(5000, "10.0.0.1:9000", 1), next, third], &mut ev);
        assert_eq!(t.stats()[0].active, 3);
        assert_eq!(
            (t.stats()[0].peak, t.peak()),
            (1, 1),
            "the first view raises no peak"
        );
        // The first session's close arrives with the next poll, before its snapshot.
        t.close(t0, &ConnKey::from(&sock(5000, "10.0.0.1:9000", 1)));
        t.apply(t0, &[next, third], &mut ev);
        assert_eq!((t.stats()[0].active, t.stats()[0].peak), (2, 2));
        // Past that snapshot, opens raise the peak at once again.
        t.open(t0, &sock(5003, "10.0.0.1:9000", 4));
        assert_eq!((t.stats()[0].peak, t.peak()), (3, 3));
    }
}
