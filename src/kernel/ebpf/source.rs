//! The eBPF source as a [`Source`]: the set of matching ESTABLISHED sockets, kept up to date
//! from the tracepoint's transitions instead of a walk of the host's sockets on every poll.
//!
//! A poll drains the ring buffer and applies each open and close to the set; it costs what the
//! targets' own traffic costs, whatever the number of other sockets on the host. A full
//! `sock_diag` dump (the netlink source, with its kernel filter) seeds the set at start and
//! reconciles it every `reconcile_interval` and after any record the ring buffer dropped, so
//! that a missed transition cannot stay wrong for long. A dump replaces the set; transitions
//! read after it are applied only if the kernel stamped them after the dump began (the ring is
//! read in order), so a close that raced the dump is neither lost nor applied twice.
//!
//! Sockets are identified by their 4-tuple only (`SocketEntry::id` is 0): the tracepoint can
//! read a socket's cookie but not create one, so most new sockets have none yet when they open.
//!
//! **Session health**: after the set is up to date, each poll looks every session up by an
//! exact `sock_diag` request with `INET_DIAG_INFO` ([`crate::lookup`]), in batches, and
//! hands its `tcp_info` over in [`SocketEntry::health`], as the netlink source's dump does. The
//! lookups cost one kernel hash lookup per watched session (M), not a walk of the host's
//! sockets (N). The first lookup learns the socket's cookie (the kernel makes one when it
//! answers); later ones name it, so that a 4-tuple reused by another socket is not read as the
//! same session.
//!
//! With `poll.health_interval` the lookups happen at most that often; the polls in between
//! hand each session's last answer on (a session opened since has none yet), and say so in
//! [`PollNews`]: the loop then takes no new health samples, and when no transition was read
//! either, it skips the poll's work altogether. A quiet poll then costs a ring-buffer check.

use fix_monitor_core::{Capabilities, Confirmation, EventFeed, HealthFeed, ProcessFeed};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{ktime_now_ns, Change, EbpfError, EbpfEvents, Options, Transition};
use crate::lookup::{Answer, HealthLookups, LookupStats, Wanted};
use crate::netlink::NetlinkSource;
use fix_monitor_core::{SocketEvent, Timestamp};

use crate::{
    EventCounts, PollNews, SocketEntry, Source, SourceError, SourceKind, TcpHealth, TcpState,
};
use fix_monitor_core::target::Targets;

/// Counts of what the source did, for self-metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// Full dumps taken (the first included).
    pub reconciles: u64,
    /// Times the ring buffer was found to have dropped records.
    pub overflows: u64,
    /// Records the ring buffer dropped, in all.
    pub lost: u64,
    /// Transitions read from the ring buffer.
    pub transitions: u64,
}

/// What the source knows of a session between polls.
#[derive(Debug, Clone, Copy, Default)]
struct Known {
    /// The socket's cookie where known (0 otherwise).
    cookie: u64,
    /// Its `tcp_info` as of the last lookup (or dump).
    health: Option<TcpHealth>,
}

/// The eBPF source: the matching sockets kept from the tracepoint's transitions (see the
/// module docs).
pub struct EbpfSource {
    events: EbpfEvents,
    dump: NetlinkSource,
    /// The sessions, by 4-tuple (so that polls list them in order).
    active: BTreeMap<(SocketAddr, SocketAddr), Known>,
    /// The per-session `tcp_info` lookups; `None` when turned off.
    lookups: Option<HealthLookups>,
    /// Reused per poll: what to look up, and the cookies the answers carried.
    wanted: Vec<Wanted>,
    learned: Vec<u64>,
    /// Whether the last poll's lookups failed (to log the change, not every poll).
    lookups_failing: bool,
    /// `poll.health_interval` (`None`: every poll), and when the next lookups are due.
    health_every: Option<Duration>,
    next_health: Option<Instant>,
    news: PollNews,
    /// The last list handed out (valid once a poll succeeded): a poll that changed nothing
    /// copies it instead of building it again.
    listed: Vec<SocketEntry>,
    listed_valid: bool,
    reconcile_every: Duration,
    next_reconcile: Option<Instant>,
    stats: SourceStats,
    read: Vec<Transition>,
    scratch: Vec<SocketEntry>,
    /// Every transition read since the last `take_transitions`, in order.
    pending: Vec<Transition>,
}

impl EbpfSource {
    /// Its own events (exact opens and closes, who hung up, the process), health by
    /// lookups, and reconciling dumps; sockets are known by 4-tuple (id 0), so misses are not
    /// confirmed.
    pub const CAPABILITIES: Capabilities = Capabilities {
        events: EventFeed::FromSource,
        health: HealthFeed::ByLookup,
        process: ProcessFeed::FromEvents,
        closed_by: true,
        confirm: Confirmation::None,
        reconciles: true,
    };

    /// Every transition read since the last call (or [`Source::take_events`]), in order, as
    /// the program reported them.
    pub fn take_transitions(&mut self) -> Vec<Transition> {
        std::mem::take(&mut self.pending)
    }

    /// Loads the program for `targets` and seeds the set with a first dump; `reconcile_every`
    /// is the time between two reconciling dumps.
    pub fn open(
        targets: &Targets,
        opts: Options,
        reconcile_every: Duration,
    ) -> Result<EbpfSource, EbpfError> {
        // The dump socket first: if netlink is refused there is nothing to reconcile with.
        let dump = NetlinkSource::open(targets).map_err(|e| EbpfError::Io {
            what: "opening the netlink source for reconciling dumps",
            source: std::io::Error::other(e.to_string()),
        })?;
        let events = EbpfEvents::open(targets, opts)?;
        let lookups = HealthLookups::open().map_err(|e| EbpfError::Io {
            what: "opening the netlink socket for session-health lookups",
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok(EbpfSource {
            events,
            dump,
            active: BTreeMap::new(),
            lookups: Some(lookups),
            wanted: Vec::new(),
            learned: Vec::new(),
            lookups_failing: false,
            health_every: None,
            next_health: None,
            news: PollNews::EVERYTHING,
            listed: Vec::new(),
            listed_valid: false,
            reconcile_every,
            next_reconcile: None,
            stats: SourceStats::default(),
            read: Vec::new(),
            scratch: Vec::new(),
            pending: Vec::new(),
        })
    }

    /// What the source did so far.
    pub fn stats(&self) -> SourceStats {
        self.stats
    }

    /// The loaded program and its ring buffer.
    pub fn events(&self) -> &EbpfEvents {
        &self.events
    }

    /// Whether polls look each session's `tcp_info` up (on unless turned off; off, every
    /// [`SocketEntry::health`] is `None`). For measuring what the lookups cost.
    pub fn set_session_health(&mut self, on: bool) -> Result<(), SourceError> {
        match (on, self.lookups.is_some()) {
            (true, false) => self.lookups = Some(HealthLookups::open()?),
            (false, true) => self.lookups = None,
            _ => {}
        }
        Ok(())
    }

    /// What the health lookups did so far (`None` when they are off).
    pub fn lookup_stats(&self) -> Option<LookupStats> {
        self.lookups.as_ref().map(|l| l.stats())
    }

    /// Fills `out[i].health` for every session by exact lookups, and remembers the cookies the
    /// answers carry. A failure of the lookup socket leaves the rest without health (logged
    /// once); the poll itself stands.
    fn look_up(&mut self, out: &mut [SocketEntry]) {
        let Some(lookups) = self.lookups.as_mut() else {
            return;
        };
        self.learned.clear();
        self.learned.resize(self.wanted.len(), 0);
        let learned = &mut self.learned;
        let result = lookups.lookup(&self.wanted, |i, answer| {
            if let Answer::Found { cookie, health, .. } = answer {
                out[i].health = health;
                learned[i] = cookie;
            }
            // Gone: it closed after the drain; its close is in the ring for the next poll.
        });
        for ((known, entry), &cookie) in self.active.values_mut().zip(out.iter()).zip(&self.learned)
        {
            if cookie != 0 {
                known.cookie = cookie;
            }
            known.health = entry.health;
        }
        match result {
            Err(error) if !self.lookups_failing => {
                self.lookups_failing = true;
                tracing::warn!(%error, "session-health lookups failed; sessions without tcp_info this poll");
            }
            Ok(()) if self.lookups_failing => {
                self.lookups_failing = false;
                tracing::info!("session-health lookups work again");
            }
            _ => {}
        }
    }

    fn drain(&mut self, after_ns: u64) {
        self.read.clear();
        self.events.drain(&mut self.read);
        self.stats.transitions += self.read.len() as u64;
        for t in self.read.drain(..) {
            if t.ktime_ns >= after_ns {
                match t.change() {
                    Some(Change::Opened) => {
                        let known = Known {
                            cookie: t.cookie,
                            health: None,
                        };
                        self.active.insert((t.local, t.remote), known);
                    }
                    Some(Change::Closed(_)) => {
                        self.active.remove(&(t.local, t.remote));
                    }
                    None => {}
                }
            }
            self.pending.push(t);
        }
        // Nobody may be taking them (a plain poll loop): keep a bounded backlog.
        if self.pending.len() > 100_000 {
            let excess = self.pending.len() - 100_000;
            self.pending.drain(..excess);
        }
    }

    fn reconcile(&mut self) -> Result<(), SourceError> {
        let start = ktime_now_ns();
        self.dump.poll(&mut self.scratch)?;
        self.active.clear();
        self.active.extend(self.scratch.iter().map(|s| {
            let known = Known {
                cookie: s.id,
                health: s.health,
            };
            ((s.local, s.remote), known)
        }));
        self.stats.reconciles += 1;
        // What the kernel stamped before the dump began is in the dump already.
        self.drain(start);
        Ok(())
    }
}

impl Source for EbpfSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Ebpf
    }

    fn capabilities(&self) -> Capabilities {
        EbpfSource::CAPABILITIES
    }

    /// Exact times, who hung up, the process, the final counters.
    fn take_events(&mut self, now: Timestamp, out: &mut Vec<SocketEvent>) {
        if self.pending.is_empty() {
            return;
        }
        let now_k = ktime_now_ns();
        out.extend(
            self.pending
                .drain(..)
                .filter_map(|t| t.to_event(now, now_k)),
        );
    }

    fn event_counts(&self) -> EventCounts {
        EventCounts {
            lost: self.stats.lost,
            reconciles: self.stats.reconciles,
        }
    }

    fn news(&self) -> PollNews {
        self.news
    }

    fn set_health_interval(&mut self, every: Option<Duration>) {
        self.health_every = every;
        self.next_health = None;
    }

    fn poll(&mut self, out: &mut Vec<SocketEntry>) -> Result<(), SourceError> {
        // Until this poll has worked, the loop must assume anything changed.
        self.news = PollNews::EVERYTHING;
        // Nor is the last list valid if this poll fails half-way (the set may have moved).
        let listed_valid = std::mem::replace(&mut self.listed_valid, false);
        let (transitions, reconciles) = (self.stats.transitions, self.stats.reconciles);
        self.drain(0);
        let lost = self
            .events
            .counters()
            .map_err(SourceError::io("reading the eBPF program's counters"))?
            .lost;
        let overflowed = lost > self.stats.lost;
        if overflowed {
            tracing::warn!(
                dropped = lost - self.stats.lost,
                "the eBPF ring buffer was full and dropped transitions; reconciling with a full dump"
            );
            self.stats.overflows += 1;
            self.stats.lost = lost;
        }
        let now = Instant::now();
        if overflowed || self.next_reconcile.is_none_or(|t| now >= t) {
            self.reconcile()?;
            self.next_reconcile = Some(now + self.reconcile_every);
        }
        // Due a tenth early, so that polls on their own schedule do not push each lookup
        // one poll later than asked.
        let health_due = self.lookups.is_some()
            && match self.health_every {
                None => true,
                Some(every) if self.next_health.is_some_and(|t| now + every / 10 < t) => false,
                Some(every) => {
                    self.next_health = Some(now + every);
                    true
                }
            };
        let sessions_changed =
            self.stats.transitions != transitions || self.stats.reconciles != reconciles;
        if !sessions_changed && !health_due && listed_valid {
            out.clone_from(&self.listed);
            self.listed_valid = true;
            self.news = PollNews {
                sessions_changed,
                health_fresh: false,
            };
            return Ok(());
        }
        // In 4-tuple order (the map's): with every id 0, sorted as the poller looks them up.
        out.clear();
        self.wanted.clear();
        for (&(local, remote), known) in &self.active {
            out.push(SocketEntry {
                local,
                remote,
                state: TcpState::Established,
                id: 0,
                // Handed on from the last lookup unless this poll looks it up again.
                health: if health_due { None } else { known.health },
            });
            self.wanted.push(Wanted {
                local,
                remote,
                cookie: known.cookie,
            });
        }
        if health_due {
            self.look_up(out);
        }
        self.listed.clone_from(out);
        self.listed_valid = true;
        self.news = PollNews {
            sessions_changed,
            health_fresh: health_due,
        };
        Ok(())
    }
}
