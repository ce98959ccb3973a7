//! Session health over time: a pure state machine beside the tracker.
//!
//! Each poll's sockets go in (with the kernel's `tcp_info`: netlink and eBPF only) and the time of the
//! poll; out come, per target (and per local port for targets with `local_ports`), what the
//! metrics report: sessions stale now, the longest silence, the fullest send queue, RTT samples,
//! and the growth of the kernel's per-session counters (retransmits, bytes); plus an event when
//! a session turns stale and when it recovers.
//!
//! # Stale
//! A session is stale while no data has been received for longer than its target's
//! `stale_after`; it recovers as soon as data arrives. Targets without one are not judged.
//!
//! # Counters: once, and nothing lost
//! The kernel's counters are per socket and only grow. A session's growth is what its totals
//! gained since the last poll; a session seen for the first time counts its totals from zero
//! (it opened since the last poll, so all of it happened while monitored), except at the first
//! poll, whose sessions predate the monitor: their totals so far are the baseline, not growth.
//! A session that ends between two polls takes the growth since its last poll with it, unless
//! its last `tcp_info` is handed in ([`HealthBook::closed`], from the kernel's destroy
//! notification), which is then counted exactly once: against what its last poll counted, also
//! when a poll saw it leave ESTABLISHED first (such sessions are remembered, up to
//! [`GONE_MEMORY`] of them, for their destroy notification to come). A notification for a
//! session no longer remembered counts nothing: growth can be lost past that bound, never
//! counted twice.
//!
//! Time is an input: the book never reads a clock.

use std::collections::{BTreeMap, VecDeque};

// Keyed by sockets this host made to its own targets: a fast hash, not a DoS-resistant one.
use rustc_hash::FxHashMap as HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::source::{SocketEntry, TcpHealth};
use crate::target::{Remap, TargetId, Targets};

/// Growth of the per-session counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Growth {
    /// Segments retransmitted.
    pub retransmits: u64,
    /// Data bytes sent (retransmissions included, as the kernel counts them).
    pub bytes_sent: u64,
    /// Data bytes received.
    pub bytes_received: u64,
}

impl Growth {
    /// The totals of a final `tcp_info` (a field the kernel did not give counts as 0).
    pub fn of(retransmits: u32, bytes_sent: Option<u64>, bytes_received: Option<u64>) -> Growth {
        Growth {
            retransmits: retransmits.into(),
            bytes_sent: bytes_sent.unwrap_or(0),
            bytes_received: bytes_received.unwrap_or(0),
        }
    }

    fn add(&mut self, o: Growth) {
        self.retransmits += o.retransmits;
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
    }

    /// The counters' totals in `h` (a field the kernel does not give counts as 0 growth).
    fn totals(h: &TcpHealth) -> Growth {
        Growth {
            retransmits: h.retransmits.into(),
            bytes_sent: h.bytes_sent.unwrap_or(0),
            bytes_received: h.bytes_received.unwrap_or(0),
        }
    }

    /// What `now` gained over `before` (counters never shrink on one socket; saturating
    /// anyway, so that a surprise is a zero, never a wrap).
    fn since(now: Growth, before: Growth) -> Growth {
        Growth {
            retransmits: now.retransmits.saturating_sub(before.retransmits),
            bytes_sent: now.bytes_sent.saturating_sub(before.bytes_sent),
            bytes_received: now.bytes_received.saturating_sub(before.bytes_received),
        }
    }
}

/// What one poll says about a group of sessions (a target, or one local port of it).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct GroupHealth {
    /// Active sessions with health (netlink): the rest are not measured.
    pub measured: u64,
    /// Sessions stale now; `None` where the target judges no staleness.
    pub stale: Option<u64>,
    /// The longest time since data was received, among the measured sessions.
    pub max_silence: Option<Duration>,
    /// The fullest send queue (bytes not yet acknowledged), among the measured sessions.
    pub max_send_queue: Option<u64>,
    /// The highest smoothed RTT among the measured sessions that have one.
    pub max_rtt: Option<Duration>,
    /// Counter growth since the previous poll, closed sessions' last values included.
    pub growth: Growth,
}

impl GroupHealth {
    fn add(&mut self, h: &TcpHealth, stale: Option<bool>, growth: Growth) {
        self.measured += 1;
        if let Some(s) = stale {
            *self.stale.get_or_insert(0) += u64::from(s);
        }
        let silence = h.receive_silence();
        self.max_silence = self.max_silence.max(Some(silence));
        self.max_send_queue = self.max_send_queue.max(Some(h.send_queue.into()));
        self.max_rtt = self.max_rtt.max(h.rtt());
        self.growth.add(growth);
    }
}

/// A [`HealthEvent`] as the loop hands it to its subscribers (shared, as [`crate::tracker::SharedEvent`]).
pub type SharedHealthEvent = std::sync::Arc<HealthEvent>;

/// A session turning stale or recovering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthEvent {
    /// No data received for longer than the target's `stale_after`.
    Stale {
        target: TargetId,
        local: SocketAddr,
        remote: SocketAddr,
        /// Time since data was last received, now.
        silence: Duration,
    },
    /// Data arrived again after the session was stale.
    Recovered {
        target: TargetId,
        local: SocketAddr,
        remote: SocketAddr,
        /// How long the silence that ended lasted.
        silence: Duration,
    },
}

/// What [`HealthBook::observe`] reports for one poll. Reused across polls.
#[derive(Debug, Default)]
pub struct HealthPoll {
    /// Per target, in [`TargetId`] order.
    pub targets: Vec<GroupHealth>,
    /// Per (target, local port), for targets with `local_ports` only.
    pub ports: BTreeMap<(TargetId, u16), GroupHealth>,
    /// One smoothed RTT per measured session that has one: (target, RTT).
    pub rtt_samples: Vec<(TargetId, Duration)>,
    pub events: Vec<HealthEvent>,
}

impl HealthPoll {
    /// Adds one measured session to its target's group, and to its local port's where the
    /// target has `local_ports`.
    fn add(&mut self, r: &Reading, h: &TcpHealth, growth: Growth, per_port: bool) {
        self.targets[r.target].add(h, r.stale_now, growth);
        if let Some(rtt) = h.rtt() {
            self.rtt_samples.push((r.target, rtt));
        }
        if per_port {
            let g = self
                .ports
                .entry((r.target, r.local().port()))
                .or_insert_with(|| GroupHealth {
                    // A judged target's port counts its stale sessions from 0.
                    stale: r.stale_now.map(|_| 0),
                    ..GroupHealth::default()
                });
            g.add(h, r.stale_now, growth);
        }
    }
}

/// One session as the book remembers it.
#[derive(Debug, Clone, Copy)]
struct Session {
    /// The totals already counted.
    counted: Growth,
    stale: bool,
    /// When the current silence began (the poll's time less the kernel's silence).
    silent_since: Instant,
    seen: u64,
}

/// How the book tells sessions apart: socket id, local and remote address.
type SessionKey = (u64, SocketAddr, SocketAddr);

/// One measured session as a poll reads it.
struct Reading {
    key: SessionKey,
    target: TargetId,
    /// The kernel's counters' totals now.
    totals: Growth,
    /// Time since data was last received.
    silence: Duration,
    /// When the current silence began (the poll's time less the kernel's silence).
    silent_since: Instant,
    /// Whether the session is stale now; `None` where its target judges no staleness.
    stale_now: Option<bool>,
}

impl Reading {
    fn new(
        at: Instant,
        s: &SocketEntry,
        target: TargetId,
        h: &TcpHealth,
        stale_after: Option<Duration>,
    ) -> Reading {
        let silence = h.receive_silence();
        Reading {
            key: (s.id, s.local, s.remote),
            target,
            totals: Growth::totals(h),
            silence,
            silent_since: at.checked_sub(silence).unwrap_or(at),
            stale_now: stale_after.map(|t| silence > t),
        }
    }

    fn local(&self) -> SocketAddr {
        self.key.1
    }

    fn remote(&self) -> SocketAddr {
        self.key.2
    }

    fn stale_event(&self) -> HealthEvent {
        HealthEvent::Stale {
            target: self.target,
            local: self.local(),
            remote: self.remote(),
            silence: self.silence,
        }
    }

    /// The session recovers from the silence that began at `since`.
    fn recovered_event(&self, since: Instant) -> HealthEvent {
        HealthEvent::Recovered {
            target: self.target,
            local: self.local(),
            remote: self.remote(),
            // From the start of the silence that ended to the data that ended it (which
            // arrived `silence` ago).
            silence: self.silent_since.saturating_duration_since(since),
        }
    }
}

impl Session {
    /// A known session read again at poll `generation`: what it grew since last counted, and
    /// whether it turned stale or recovered.
    fn update(&mut self, r: &Reading, generation: u64) -> (Growth, Option<HealthEvent>) {
        let growth = Growth::since(r.totals, self.counted);
        let event = match (self.stale, r.stale_now) {
            (false, Some(true)) => Some(r.stale_event()),
            (true, Some(false)) => Some(r.recovered_event(self.silent_since)),
            _ => None,
        };
        self.counted = r.totals;
        self.stale = r.stale_now.unwrap_or(false);
        self.silent_since = r.silent_since;
        self.seen = generation;
        (growth, event)
    }
}

/// Sessions a poll saw leave (not listed any more) kept for their destroy notification.
pub const GONE_MEMORY: usize = 65_536;

/// A session a poll no longer lists: what was counted of it, until its destroy notification.
#[derive(Debug, Clone, Copy)]
struct Gone {
    counted: Growth,
    stale: bool,
}

/// The health state machine. See the module docs.
#[derive(Debug)]
pub struct HealthBook {
    targets: Targets,
    /// Per target: after how much silence a session is stale; `None`: not judged.
    stale_after: Vec<Option<Duration>>,
    /// By socket id (the kernel's cookie, or the inode; 0 where a source has neither) and
    /// 4-tuple. In key order: a poll's sockets come in the same order (by socket id, then 4-tuple), so
    /// a poll reads the book in one walk beside them instead of a lookup per session.
    sessions: BTreeMap<SessionKey, Session>,
    /// Growth of sessions that closed since the last poll, per target and (target, port).
    closed: Vec<Growth>,
    closed_ports: BTreeMap<(TargetId, u16), Growth>,
    /// Sessions that left the polls (oldest first in `gone_order`), by socket id.
    gone: HashMap<SessionKey, Gone>,
    gone_order: VecDeque<SessionKey>,
    /// Whether destroy notifications will come to settle the `gone` sessions; without them
    /// (eBPF, procfs, netstat, events refused) nothing would ever take those entries out, so
    /// none are kept.
    keep_gone: bool,
    generation: u64,
    /// After a reload, until the next poll: by target id, whether the reload added or widened
    /// it; a session of such a target the book does not know yet counts only what comes next,
    /// as at the first poll (it was open before). Empty otherwise.
    widened: Vec<bool>,
}

impl HealthBook {
    /// `stale_after[i]` is target `i`'s threshold (`None`: no staleness judged).
    pub fn new(targets: Targets, stale_after: Vec<Option<Duration>>) -> HealthBook {
        assert_eq!(targets.len(), stale_after.len(), "one threshold per target");
        HealthBook {
            closed: vec![Growth::default(); targets.len()],
            targets,
            stale_after,
            sessions: BTreeMap::new(),
            closed_ports: BTreeMap::new(),
            gone: HashMap::default(),
            gone_order: VecDeque::new(),
            keep_gone: true,
            generation: 0,
            widened: Vec::new(),
        }
    }

    /// The targets reloaded (`remap` maps the current ones onto `targets` by name, with the
    /// new thresholds): what sessions closed since the last poll grew goes to the same target
    /// under its new id (nowhere for a removed one); sessions no target holds any more are
    /// forgotten, the others keep what was counted of them, whichever target holds them now.
    pub fn retarget(
        &mut self,
        targets: Targets,
        stale_after: Vec<Option<Duration>>,
        remap: &Remap,
    ) {
        assert_eq!(targets.len(), stale_after.len(), "one threshold per target");
        let mut closed = vec![Growth::default(); targets.len()];
        for (old, g) in self.closed.iter().enumerate() {
            if let Some(new) = remap.old_to_new[old] {
                closed[new] = *g;
            }
        }
        let ports = std::mem::take(&mut self.closed_ports).into_iter();
        self.closed_ports = ports
            .filter_map(|((old, port), g)| Some(((remap.old_to_new[old]?, port), g)))
            .collect();
        let held = |&(_, local, remote): &SessionKey| targets.classify(&local, &remote).is_some();
        self.sessions.retain(|k, _| held(k));
        self.gone.retain(|k, _| held(k));
        self.gone_order.retain(|k| held(k));
        self.closed = closed;
        self.targets = targets;
        self.stale_after = stale_after;
        self.widened = remap.widened.clone();
    }

    /// Whether sessions of `target` are judged stale at all.
    pub fn judges(&self, target: TargetId) -> bool {
        self.stale_after[target].is_some()
    }

    /// Sessions known now.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Whether the session with socket id `id` and this 4-tuple is stale now.
    pub fn is_stale(&self, id: u64, local: SocketAddr, remote: SocketAddr) -> bool {
        self.sessions
            .get(&(id, local, remote))
            .is_some_and(|s| s.stale)
    }

    /// Takes one poll's sockets (those without health are skipped: not measured) taken at
    /// `at`, and writes what the metrics report into `out`.
    pub fn observe(&mut self, at: Instant, sockets: &[SocketEntry], out: &mut HealthPoll) {
        let first = self.generation == 0;
        let widened = std::mem::take(&mut self.widened);
        self.generation += 1;
        // The poll starts from the growth of the sessions closed since the last one.
        self.take_closed(out);
        for (i, g) in out.targets.iter_mut().enumerate() {
            if self.judges(i) {
                g.stale = Some(0);
            }
        }
        // Sessions the book knows are updated in one walk of it beside the sockets, where
        // they come in its order; the others after, one by one.
        let in_order = sockets.is_sorted_by_key(|s| (s.id, s.local, s.remote));
        let mut book = self.sessions.iter_mut().peekable();
        let mut unknown = Vec::new();
        for (i, s) in sockets.iter().enumerate() {
            let Some(h) = s.health else { continue };
            let Some(target) = self.targets.classify(&s.local, &s.remote) else {
                continue;
            };
            let reading = Reading::new(at, s, target, &h, self.stale_after[target]);
            let known = if in_order {
                while book.next_if(|(k, _)| **k < reading.key).is_some() {}
                book.next_if(|(k, _)| **k == reading.key).map(|(_, v)| v)
            } else {
                None
            };
            let Some(known) = known else {
                unknown.push(i);
                continue;
            };
            let (growth, event) = known.update(&reading, self.generation);
            out.events.extend(event);
            let per_port = self.targets.get(target).local_ports.is_some();
            out.add(&reading, &h, growth, per_port);
        }
        for i in unknown {
            let s = &sockets[i];
            let (Some(h), Some(target)) = (s.health, self.targets.classify(&s.local, &s.remote))
            else {
                continue;
            };
            let reading = Reading::new(at, s, target, &h, self.stale_after[target]);
            let baseline = first || widened.get(target).copied().unwrap_or(false);
            let (growth, event) = self.update(&reading, baseline);
            out.events.extend(event);
            let per_port = self.targets.get(target).local_ports.is_some();
            out.add(&reading, &h, growth, per_port);
        }
        self.leave_unseen();
    }

    /// Brings the session `r` reads up to date; returns what it grew since it was last counted,
    /// and whether it turned stale or recovered.
    fn update(&mut self, r: &Reading, first: bool) -> (Growth, Option<HealthEvent>) {
        let generation = self.generation;
        if let Some(known) = self.sessions.get_mut(&r.key) {
            return known.update(r, generation);
        }
        let (growth, was_stale) = match self.gone.remove(&r.key) {
            // Missing from a poll (a dump that skipped it) and listed again: counted against
            // what was counted before, never from zero.
            Some(g) => (Growth::since(r.totals, g.counted), g.stale),
            // New since the last poll: everything counts. At the first poll: only what comes
            // next.
            None if first => (Growth::default(), false),
            None => (r.totals, false),
        };
        let stale = r.stale_now.unwrap_or(false);
        self.sessions.insert(
            r.key,
            Session {
                counted: r.totals,
                stale,
                silent_since: r.silent_since,
                seen: generation,
            },
        );
        (growth, (stale && !was_stale).then(|| r.stale_event()))
    }

    /// Sessions not seen this poll have left ESTABLISHED (or ended): what they gain until
    /// their end is known only from their destroy notification (`closed`), so what was
    /// counted of them is kept until then, for a bounded number of them.
    fn leave_unseen(&mut self) {
        let generation = self.generation;
        let gone = &mut self.gone;
        let order = &mut self.gone_order;
        let keep_gone = self.keep_gone;
        self.sessions.retain(|&key, s| {
            if s.seen == generation {
                return true;
            }
            if !keep_gone {
                return false;
            }
            gone.insert(
                key,
                Gone {
                    counted: s.counted,
                    stale: s.stale,
                },
            );
            order.push_back(key);
            false
        });
        while self.gone.len() > GONE_MEMORY {
            match self.gone_order.pop_front() {
                Some(key) => {
                    self.gone.remove(&key);
                }
                None => break,
            }
        }
        // Ids taken out of `gone` (closed, or listed again) leave stale entries in the order.
        if self.gone_order.len() > 2 * GONE_MEMORY.max(self.gone.len()) {
            let gone = &self.gone;
            self.gone_order.retain(|id| gone.contains_key(id));
        }
    }

    /// Whether destroy notifications follow the sessions that leave the polls (the default):
    /// only then is what was counted of them kept, to count their last growth once.
    pub fn expect_destroy_notifications(&mut self, yes: bool) {
        self.keep_gone = yes;
        if !yes {
            self.gone.clear();
            self.gone_order.clear();
        }
    }

    /// Sessions that left the polls and whose destroy notification has not come (yet).
    pub fn gone_len(&self) -> usize {
        self.gone.len()
    }

    /// A session ended, with the kernel's last `tcp_info` for it (the socket-destroy
    /// notification's): its growth since the last poll is counted at the next
    /// [`HealthBook::observe`] (or [`HealthBook::take_closed`]), and the session forgotten. A
    /// session the book never saw (it opened and closed between two polls) counts all of its
    /// totals. Returns whether the session was counted (false for a socket of no target, or
    /// without health).
    pub fn closed(&mut self, socket: &SocketEntry) -> bool {
        let Some(h) = socket.health else { return false };
        self.closed_with(socket.id, socket.local, socket.remote, Growth::totals(&h))
    }

    /// [`HealthBook::closed`] with the final totals only (retransmits, bytes sent, bytes
    /// received), as a destroy notification carries them.
    pub fn closed_with(
        &mut self,
        id: u64,
        local: SocketAddr,
        remote: SocketAddr,
        totals: Growth,
    ) -> bool {
        let Some(target) = self.targets.classify(&local, &remote) else {
            return false;
        };
        let growth = match self.sessions.remove(&(id, local, remote)) {
            Some(known) => Growth::since(totals, known.counted),
            None => match self.gone.remove(&(id, local, remote)) {
                Some(g) => Growth::since(totals, g.counted),
                // Before the first poll: the baseline, as for the first poll's sessions.
                None if self.generation == 0 => Growth::default(),
                None => totals,
            },
        };
        self.closed[target].add(growth);
        if self.targets.get(target).local_ports.is_some() {
            self.closed_ports
                .entry((target, local.port()))
                .or_default()
                .add(growth);
        }
        true
    }

    /// Hands over the growth of the sessions closed since the last poll (or the last call), so
    /// that it reaches the counters now rather than at the next poll: `out` gets one entry per
    /// target (growth only) and per (target, port) that grew, no RTT samples and no events.
    pub fn take_closed(&mut self, out: &mut HealthPoll) {
        out.targets.clear();
        out.targets
            .extend(self.closed.iter_mut().map(|g| GroupHealth {
                growth: std::mem::take(g),
                ..GroupHealth::default()
            }));
        out.ports.clear();
        for (k, g) in std::mem::take(&mut self.closed_ports) {
            out.ports.entry(k).or_default().growth = g;
        }
        out.rtt_samples.clear();
        out.events.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::TcpState;
    use crate::target::{PortRange, Target};

    fn targets() -> Targets {
        let t = |net: &str, ports: Option<(u16, u16)>| {
            let net = net.parse().unwrap();
            Target {
                name: Target::default_name(&net, None),
                net,
                port: None,
                local_ports: ports.map(|(start, end)| PortRange { start, end }),
                heartbeat: None,
                stale_after: None,
            }
        };
        Targets::new(vec![
            t("10.0.0.1/32", None),
            t("10.0.0.2/32", Some((5000, 5999))),
            t("10.0.0.3/32", None),
        ])
    }

    /// Target 0 and 1 stale after 2 s; target 2 not judged.
    fn book() -> HealthBook {
        let two = Some(Duration::from_secs(2));
        HealthBook::new(targets(), vec![two, two, None])
    }

    fn health(silence_ms: u32, retrans: u32, sent: u64, received: u64) -> TcpHealth {
        TcpHealth {
            rtt_us: 100,
            last_data_recv_ms: silence_ms,
            retransmits: retrans,
            bytes_sent: Some(sent),
            bytes_received: Some(received),
            send_queue: 10,
            ..TcpHealth::default()
        }
    }

    fn sock(remote: u8, port: u16, id: u64, h: Option<TcpHealth>) -> SocketEntry {
        SocketEntry {
            local: format!("192.168.0.1:{port}").parse().unwrap(),
            remote: format!("10.0.0.{remote}:9876").parse().unwrap(),
            state: TcpState::Established,
            id,
            health: h,
        }
    }

    #[test]
    fn sessions_without_ids_are_told_apart_by_their_4_tuple() {
        // The eBPF source lists every socket with id 0.
        let mut b = book();
        let mut out = HealthPoll::default();
        let t0 = Instant::now();
        let quiet = sock(1, 5000, 0, Some(health(2500, 0, 100, 0)));
        let talk = sock(1, 5001, 0, Some(health(100, 0, 100, 0)));
        b.observe(t0, &[quiet, talk], &mut out);
        assert_eq!(b.len(), 2);
        assert_eq!(out.targets[0].stale, Some(1));
        assert!(b.is_stale(0, quiet.local, quiet.remote));
        assert!(!b.is_stale(0, talk.local, talk.remote));
        // Growth per session: 10 bytes more each, 20 in all.
        let more = |s: SocketEntry| SocketEntry {
            health: s.health.map(|h| TcpHealth {
                bytes_sent: Some(110),
                ..h
            }),
            ..s
        };
        b.observe(
            t0 + Duration::from_secs(1),
            &[more(quiet), more(talk)],
            &mut out,
        );
        assert_eq!(out.targets[0].growth.bytes_sent, 20);
    }

    /// A poll's sockets in the book's order are read in one walk beside it, in any other order
    /// one by one: both give the same growth, staleness and events, with sessions coming,
    /// going, turning stale and recovering.
    #[test]
    fn sockets_in_the_books_order_or_not_are_read_alike() {
        let (mut sorted, mut shuffled) = (book(), book());
        let t0 = Instant::now();
        let polls: Vec<Vec<SocketEntry>> = (0..6u32)
            .map(|p| {
                (1..=6u64)
                    // Session k is listed from poll k - 1 on, except session 3 at poll 3.
                    .filter(|&k| u64::from(p) + 1 >= k && !(k == 3 && p == 3))
                    .map(|k| {
                        let silence = if k % 2 == 0 { 500 * p } else { 100 };
                        let h = health(silence, p, 100 * u64::from(p) + k, 7 * k);
                        sock(1 + (k % 2) as u8, 5000 + k as u16, k, Some(h))
                    })
                    .collect()
            })
            .collect();
        for (p, sockets) in polls.iter().enumerate() {
            let at = t0 + Duration::from_millis(500 * p as u64);
            let (mut a, mut b) = (HealthPoll::default(), HealthPoll::default());
            sorted.observe(at, sockets, &mut a);
            let reversed: Vec<SocketEntry> = sockets.iter().rev().copied().collect();
            shuffled.observe(at, &reversed, &mut b);
            assert_eq!(a.targets, b.targets, "poll {p}");
            assert_eq!(a.ports, b.ports, "poll {p}");
            let mut events = (a.events.clone(), b.events.clone());
            let key = |e: &HealthEvent| format!("{e:?}");
            events.0.sort_by_key(key);
            events.1.sort_by_key(key);
            assert_eq!(events.0, events.1, "poll {p}");
            for s in sockets {
                assert_eq!(
                    sorted.is_stale(s.id, s.local, s.remote),
                    shuffled.is_stale(s.id, s.local, s.remote)
                );
            }
            if p == 5 {
                assert!(
                    !a.events.is_empty(),
                    "sessions turned stale: {:?}",
                    a.events
                );
                assert!(a.targets[1].growth.bytes_sent > 0, "{:?}", a.targets);
            }
        }
    }

    #[test]
    fn a_silent_session_turns_stale_and_recovers_when_data_arrives() {
        let mut b = book();
        let mut out = HealthPoll::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Quiet since 1.5 s before the first poll; the talking one hears something each poll.
        let quiet = |ms: u32| sock(1, 5000, 1, Some(health(ms, 0, 0, 0)));
        let talk = sock(1, 5001, 2, Some(health(100, 0, 0, 0)));
        b.observe(at(0), &[quiet(1500), talk], &mut out);
        assert_eq!(out.targets[0].stale, Some(0));
        assert!(out.events.is_empty());
        b.observe(at(500), &[quiet(2000), talk], &mut out);
        assert_eq!(out.targets[0].stale, Some(0), "2 s is not longer than 2 s");
        b.observe(at(1000), &[quiet(2500), talk], &mut out);
        assert_eq!(out.targets[0].stale, Some(1));
        assert_eq!(
            out.targets[0].max_silence,
            Some(Duration::from_millis(2500))
        );
        let (local, remote) = (quiet(0).local, quiet(0).remote);
        assert!(b.is_stale(1, local, remote) && !b.is_stale(2, talk.local, talk.remote));
        assert_eq!(
            out.events,
            [HealthEvent::Stale {
                target: 0,
                local,
                remote,
                silence: Duration::from_millis(2500)
            }]
        );
        b.observe(at(1500), &[quiet(3000), talk], &mut out);
        assert_eq!(out.targets[0].stale, Some(1));
        assert!(out.events.is_empty(), "one event per turn");
        // Data arrived 200 ms ago: the silence ran from t0 - 1.5 s to t0 + 1.8 s.
        b.observe(at(2000), &[quiet(200), talk], &mut out);
        assert_eq!(out.targets[0].stale, Some(0));
        assert_eq!(
            out.events,
            [HealthEvent::Recovered {
                target: 0,
                local,
                remote,
                silence: Duration::from_millis(3300)
            }]
        );
    }

    #[test]
    fn targets_without_a_threshold_are_not_judged_and_unmeasured_sockets_are_left_out() {
        let mut b = book();
        let mut out = HealthPoll::default();
        let long = Some(health(60_000, 0, 0, 0));
        b.observe(
            Instant::now(),
            &[sock(3, 1, 1, long), sock(1, 2, 2, None)],
            &mut out,
        );
        assert_eq!(out.targets[2].stale, None, "not judged: no count at all");
        assert_eq!(out.targets[2].measured, 1);
        assert_eq!(out.targets[2].max_silence, Some(Duration::from_secs(60)));
        assert!(out.events.is_empty());
        // A socket without tcp_info (procfs) is not measured: no zeros for it.
        assert_eq!(out.targets[0].measured, 0);
        assert_eq!(out.targets[0].max_silence, None);
        assert_eq!(out.targets[0].max_send_queue, None);
        assert!(!b.judges(2) && b.judges(0));
    }

    #[test]
    fn counters_count_growth_once_across_polls_and_closes() {
        let mut b = book();
        let mut out = HealthPoll::default();
        let t0 = Instant::now();
        let s = |id, r, tx, rx| sock(1, 5000 + id as u16, id, Some(health(0, r, tx, rx)));
        // At the first poll, sessions predate the monitor: their totals are the baseline.
        b.observe(t0, &[s(1, 5, 1000, 2000)], &mut out);
        assert_eq!(out.targets[0].growth, Growth::default());
        b.observe(t0, &[s(1, 7, 1500, 2100)], &mut out);
        assert_eq!(
            out.targets[0].growth,
            Growth {
                retransmits: 2,
                bytes_sent: 500,
                bytes_received: 100
            }
        );
        // A session new since the last poll counts everything.
        b.observe(t0, &[s(1, 7, 1500, 2100), s(2, 1, 300, 40)], &mut out);
        assert_eq!(
            out.targets[0].growth,
            Growth {
                retransmits: 1,
                bytes_sent: 300,
                bytes_received: 40
            }
        );
        // Session 1 closes with its final values reported; session 3 opens and closes
        // between two polls; a report for an unknown target is refused.
        assert!(b.closed(&s(1, 9, 1800, 2100)));
        assert!(b.closed(&s(3, 0, 50, 60)));
        assert!(!b.closed(&sock(9, 1, 4, Some(health(0, 1, 1, 1)))));
        assert!(!b.closed(&sock(1, 1, 5, None)));
        b.observe(t0, &[s(2, 1, 300, 40)], &mut out);
        assert_eq!(
            out.targets[0].growth,
            Growth {
                retransmits: 2,
                bytes_sent: 350,
                bytes_received: 60
            }
        );
        // Nothing counted twice: a quiet poll grows nothing.
        b.observe(t0, &[s(2, 1, 300, 40)], &mut out);
        assert_eq!(out.targets[0].growth, Growth::default());
        // Gone without a final report: forgotten, its last growth unknown.
        b.observe(t0, &[], &mut out);
        assert!(b.is_empty());
        assert_eq!(out.targets[0].growth, Growth::default());
        // The sum of all growth is the sum of what the sessions did while watched:
        // 1: 5 -> 9, 1000 -> 1800, 2000 -> 2100; 2: all; 3: all.
    }

    #[test]
    fn a_close_seen_by_a_poll_then_by_its_destroy_notification_counts_once() {
        let mut b = book();
        let mut out = HealthPoll::default();
        let t0 = Instant::now();
        let s = |id, r, tx, rx| sock(1, 5000 + id as u16, id, Some(health(0, r, tx, rx)));
        b.observe(t0, &[], &mut out);
        b.observe(t0, &[s(1, 1, 100, 10), s(2, 0, 5, 5)], &mut out);
        assert_eq!(out.targets[0].growth, Growth::of(1, Some(105), Some(15)));
        // Session 1 leaves ESTABLISHED (a poll no longer lists it), then sends 50 more bytes
        // and is destroyed: the notification counts what came after the last poll only.
        b.observe(t0, &[s(2, 0, 5, 5)], &mut out);
        assert_eq!(out.targets[0].growth, Growth::default());
        assert_eq!(b.gone_len(), 1);
        let (local, remote) = (s(1, 0, 0, 0).local, s(1, 0, 0, 0).remote);
        assert!(b.closed_with(1, local, remote, Growth::of(2, Some(150), Some(10))));
        assert_eq!(b.gone_len(), 0);
        // Handed over at once, without waiting for a poll.
        b.take_closed(&mut out);
        assert_eq!(out.targets[0].growth, Growth::of(1, Some(50), Some(0)));
        assert!(out.rtt_samples.is_empty());
        b.take_closed(&mut out);
        assert_eq!(out.targets[0].growth, Growth::default());
        // The next poll has nothing more of it.
        b.observe(t0, &[s(2, 0, 5, 5)], &mut out);
        assert_eq!(out.targets[0].growth, Growth::default());
        // A dump that skipped session 2 once: listed again, it is not new.
        b.observe(t0, &[], &mut out);
        b.observe(t0, &[s(2, 0, 8, 5)], &mut out);
        assert_eq!(out.targets[0].growth, Growth::of(0, Some(3), Some(0)));
        assert_eq!(b.gone_len(), 0);
    }

    #[test]
    fn without_destroy_notifications_sessions_that_leave_are_not_kept() {
        let mut b = book();
        b.expect_destroy_notifications(false);
        let t0 = Instant::now();
        let mut out = HealthPoll::default();
        b.observe(
            t0,
            &[sock(1, 5001, 11, Some(health(0, 0, 10, 10)))],
            &mut out,
        );
        b.observe(t0 + Duration::from_secs(1), &[], &mut out);
        assert_eq!(b.gone_len(), 0, "nothing will ever settle it");
        assert!(b.is_empty());
        let mut b = book();
        b.observe(
            t0,
            &[sock(1, 5001, 11, Some(health(0, 0, 10, 10)))],
            &mut out,
        );
        b.observe(t0 + Duration::from_secs(1), &[], &mut out);
        assert_eq!(b.gone_len(), 1, "kept for its destroy notification");
    }

    #[test]
    fn per_port_health_only_for_targets_with_local_ports() {
        let mut b = book();
        let mut out = HealthPoll::default();
        let t0 = Instant::now();
        b.observe(
            t0,
            &[
                sock(2, 5000, 1, Some(health(100, 0, 0, 0))),
                sock(2, 5001, 2, Some(health(2500, 0, 0, 0))),
                sock(1, 5002, 3, Some(health(2500, 0, 0, 0))),
            ],
            &mut out,
        );
        assert_eq!(out.ports.len(), 2);
        assert_eq!(out.ports[&(1, 5000)].stale, Some(0));
        assert_eq!(out.ports[&(1, 5001)].stale, Some(1));
        assert_eq!(out.targets[1].stale, Some(1));
        assert_eq!(out.targets[1].measured, 2);
        assert_eq!(out.rtt_samples.len(), 3);
        // A closed session's growth lands on its port too.
        assert!(b.closed(&sock(2, 5000, 1, Some(health(0, 4, 0, 0)))));
        b.observe(
            t0,
            &[sock(2, 5001, 2, Some(health(2600, 0, 0, 0)))],
            &mut out,
        );
        assert_eq!(out.ports[&(1, 5000)].growth.retransmits, 4);
        assert_eq!(out.ports[&(1, 5000)].measured, 0);
        assert_eq!(out.targets[1].growth.retransmits, 4);
    }

    #[test]
    fn a_reload_counts_an_added_targets_open_sessions_from_now_and_keeps_the_others() {
        let mut b = book();
        let mut out = HealthPoll::default();
        let t0 = Instant::now();
        let kept = |sent| sock(1, 5000, 1, Some(health(100, 0, sent, 0)));
        b.observe(t0, &[], &mut out);
        b.observe(t0 + Duration::from_secs(1), &[kept(100)], &mut out);
        assert_eq!(
            out.targets[0].growth.bytes_sent, 100,
            "new since the last poll"
        );
        // Reloaded: 10.0.0.1 stays (now id 1), 10.0.0.4 is added (id 0) with a session that
        // sent 5,000 bytes before anyone watched it.
        let mut added = Target::test("10.0.0.4/32", None, None);
        added.name = "added".into();
        let new = Targets::new(vec![added, targets().get(0).clone()]);
        let remap = b.targets.remap(&new);
        b.retarget(new, vec![None, None], &remap);
        let old = sock(4, 5001, 2, Some(health(100, 0, 5_000, 0)));
        b.observe(t0 + Duration::from_secs(2), &[kept(150), old], &mut out);
        assert_eq!(
            out.targets[1].growth.bytes_sent, 50,
            "the kept session goes on"
        );
        assert_eq!(out.targets[0].growth.bytes_sent, 0, "counted from now");
        let more = sock(4, 5001, 2, Some(health(100, 0, 5_070, 0)));
        b.observe(t0 + Duration::from_secs(3), &[kept(150), more], &mut out);
        assert_eq!(out.targets[0].growth.bytes_sent, 70);
    }
}
