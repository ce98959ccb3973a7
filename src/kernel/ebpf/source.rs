//! The eBPF source as a [`Source`]: the set of matching ESTABLISHED sockets, kept up to date
//! from the programs' state changes instead of a walk of the host's sockets on every poll, and
//! each session's health from one pass over the watched sessions in the kernel.
//!
//! A poll reads the ring buffer and applies each open and close to the set; it costs what the
//! targets' own traffic costs, whatever the number of other sockets on the host. A full
//! `sock_diag` dump (the netlink source, with its kernel filter) seeds the set at start. Every
//! `reconcile_interval`, and after any record the ring buffer dropped, the set is reconciled
//! with the programs' own table of watched, established sessions (the health pass, which
//! returns every one of them with its state): a missed change cannot stay wrong for long, and
//! the reconcile costs per watched session, not per socket of the host. Only when the kernel
//! counted a session it had no room for (its live table or socket storage full) does a
//! reconcile take a full dump again. A reconcile replaces the set; changes read after it are
//! applied only if the kernel stamped them after it began (the ring is read in order), so a
//! close that raced it is neither lost nor applied twice.
//!
//! Sessions are known by their socket cookie (the program reads it when it starts watching a
//! socket; the dump carries the same cookie), so a 4-tuple reused by a new socket is a new
//! session.
//!
//! **Session health**: the programs give every watched socket storage; the health pass
//! (`fix_monitor_ebpf::Monitor::health`) reads each watched, established session's `tcp_sock`
//! in the kernel and returns one record per session, the same values `tcp_info` has. Its cost
//! grows with the watched sessions only. Sessions that existed before the load are adopted
//! once at start by a TCP iterator. A session the pass does not return (it opened after the
//! pass, or the kernel could not give it storage) has no health this poll, never zeros.
//!
//! With `poll.health_interval` the pass runs at most that often; the polls in between hand
//! each session's last record on (a session opened since has none yet), and say so in
//! [`PollNews`]: the loop then takes no new health samples, and when no change was read
//! either, it skips the poll's work altogether. A quiet poll then costs a ring-buffer check.

use fix_monitor_core::{Capabilities, Confirmation, EventFeed, HealthFeed, ProcessFeed};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{change, ktime_now_ns, to_event, to_health, Change, HealthWalk, StateChange};
use crate::netlink::NetlinkSource;
use crate::{
    EventCounts, PollNews, SocketEntry, SocketEvent, Source, SourceError, SourceKind, TcpHealth,
    TcpState, Timestamp,
};
use fix_monitor_core::target::Targets;
use fix_monitor_ebpf::model::tcp_state::ESTABLISHED;
use fix_monitor_ebpf::{Monitor, TargetSpec};

/// Counts of what the source did, for self-metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// Reconciles of the set, by either way (the first, a dump, included).
    pub reconciles: u64,
    /// Of those, full netlink dumps: the first, and any taken because the kernel's tables of
    /// watched sessions had run out of room (the others read the programs' own table).
    pub dump_reconciles: u64,
    /// Times the ring buffer was found to have dropped records.
    pub overflows: u64,
    /// Records the ring buffer dropped, in all.
    pub lost: u64,
    /// State changes read from the ring buffer.
    pub changes: u64,
    /// Health passes run.
    pub health_passes: u64,
}

/// The eBPF source (see the module docs).
pub struct EbpfSource {
    monitor: Monitor,
    dump: NetlinkSource,
    /// The targets the programs watch now. After a reload ([`Source::retarget`]) the sessions
    /// of a removed target keep their storage until they close: their changes are not the
    /// loop's, and are kept out of the set and the events.
    targets: Targets,
    /// The sessions by (cookie, local, remote), the order the loop looks sockets up in, so
    /// that polls list them in order without sorting; each with its health as of the last
    /// pass (or dump).
    active: BTreeMap<(u64, SocketAddr, SocketAddr), Option<TcpHealth>>,
    /// The same sessions' 4-tuples by cookie: the kernel has released a socket's local port by
    /// the time it reports a reset or the last close, so a close's record may carry port 0;
    /// the close is matched by its cookie and reported with the 4-tuple the session had.
    tuples: HashMap<u64, (SocketAddr, SocketAddr)>,
    /// Whether polls run the health pass (on unless turned off, for measuring its cost).
    health_on: bool,
    /// Whether the last pass failed (to log the change, not every poll).
    health_failing: bool,
    /// `poll.health_interval` (`None`: every poll), and when the next pass is due.
    health_every: Option<Duration>,
    next_health: Option<Instant>,
    news: PollNews,
    /// The last list handed out (valid once a poll succeeded): a poll that changed nothing
    /// copies it instead of building it again.
    listed: Vec<SocketEntry>,
    listed_valid: bool,
    reconcile_every: Duration,
    next_reconcile: Option<Instant>,
    /// The programs' `live_full` + `no_storage` at the last poll: when they grow, a session
    /// may be missing from the live table and a reconcile takes a full dump instead.
    kernel_full: u64,
    /// The programs' runs the kernel skipped (re-entered on one CPU), as of the last reconcile:
    /// checked there, not every poll (a system call per program).
    recursion_misses: u64,
    stats: SourceStats,
    scratch: Vec<SocketEntry>,
    /// Every state change read since the last `take_events`, in order.
    pending: Vec<StateChange>,
    /// The kernel's reset-reason names, for the close events' causes.
    reasons: Vec<(u32, String)>,
}

/// The targets as the kernel filter takes them, in configuration order (the index is the
/// target id the programs report).
fn specs(targets: &Targets) -> Vec<TargetSpec> {
    targets
        .iter()
        .map(|t| TargetSpec {
            addr: t.net.addr(),
            prefix_len: t.net.prefix_len(),
            port: t.port,
            local_ports: t.local_ports.map(|r| (r.start, r.end)),
        })
        .collect()
}

impl EbpfSource {
    /// Its own events (exact opens and closes, who hung up, the process), health from the
    /// in-kernel pass, and reconciles; sessions are known by cookie, and the events are
    /// exact, so a miss needs no confirmation.
    pub const CAPABILITIES: Capabilities = Capabilities {
        events: EventFeed::FromSource,
        health: HealthFeed::ByLookup,
        process: ProcessFeed::FromEvents,
        closed_by: true,
        confirm: Confirmation::None,
        reconciles: true,
    };

    /// Loads the programs for `targets` in this thread's network namespace, adopts the
    /// sessions that already exist, and opens the netlink socket of the seeding dump;
    /// `reconcile_every` is the time between two of them. The error names the missing
    /// capability or kernel feature.
    pub fn open(targets: &Targets, reconcile_every: Duration) -> Result<EbpfSource, SourceError> {
        let missing = super::missing_capabilities();
        if !missing.is_empty() {
            return Err(SourceError::EbpfCapabilities(missing));
        }
        // The dump socket first: if netlink is refused there is nothing to reconcile with.
        let dump = NetlinkSource::open(targets)?;
        let mut monitor = Monitor::load(&fix_monitor_ebpf::Options::default())?;
        monitor.set_targets(&specs(targets))?;
        monitor.scan_existing()?;
        let reasons = fix_monitor_ebpf::reset_reason_names();
        // Loading parsed the kernel's BTF (several MiB) on the heap and freed it; hand those
        // pages back (glibc keeps freed memory below the top of the heap otherwise: about
        // 3 MiB of RSS for nothing).
        #[cfg(target_env = "gnu")]
        {
            // SAFETY: malloc_trim only releases free heap memory; no pointer is involved.
            unsafe { libc::malloc_trim(0) };
        }
        Ok(EbpfSource {
            monitor,
            dump,
            targets: targets.clone(),
            active: BTreeMap::new(),
            tuples: HashMap::new(),
            health_on: true,
            health_failing: false,
            health_every: None,
            next_health: None,
            news: PollNews::EVERYTHING,
            listed: Vec::new(),
            listed_valid: false,
            reconcile_every,
            next_reconcile: None,
            kernel_full: 0,
            recursion_misses: 0,
            stats: SourceStats::default(),
            scratch: Vec::new(),
            pending: Vec::new(),
            reasons,
        })
    }

    /// What the source did so far.
    pub fn stats(&self) -> SourceStats {
        self.stats
    }

    /// How the health pass walks the sessions on this kernel, and why.
    pub fn health_walk(&self) -> &HealthWalk {
        self.monitor.health_walk()
    }

    /// The loaded programs (their counters, storage and live-table sizes).
    pub fn monitor(&mut self) -> &mut Monitor {
        &mut self.monitor
    }

    /// Whether polls run the health pass (on unless turned off; off, every
    /// [`SocketEntry::health`] is `None`). For measuring what the pass costs.
    pub fn set_session_health(&mut self, on: bool) {
        self.health_on = on;
    }

    /// Every state change read since the last call (or [`Source::take_events`]), in order, as
    /// the programs reported them.
    pub fn take_changes(&mut self) -> Vec<StateChange> {
        std::mem::take(&mut self.pending)
    }

    /// Fills `out[i].health` for every session the pass found (matched by cookie). A failed
    /// pass leaves every session without health this poll (logged once); the poll stands.
    fn read_health(&mut self, out: &mut [SocketEntry]) {
        let pass = self.monitor.pass();
        self.stats.health_passes += 1;
        match pass {
            Ok(()) => {
                if self.health_failing {
                    self.health_failing = false;
                    tracing::info!("the eBPF health pass works again");
                }
                // Both in cookie order: one walk of each, no lookup per session.
                let mut kept = self.monitor.sessions_health().peekable();
                for (known, entry) in self.active.values_mut().zip(out.iter_mut()) {
                    while kept.next_if(|(cookie, _)| *cookie < entry.id).is_some() {}
                    let health = kept.next_if(|(cookie, _)| *cookie == entry.id);
                    entry.health = health.map(|(_, h)| to_health(&h));
                    *known = entry.health;
                }
            }
            Err(error) => {
                for known in self.active.values_mut() {
                    *known = None;
                }
                if !self.health_failing {
                    self.health_failing = true;
                    tracing::warn!(%error, "the eBPF health pass failed; sessions without health this poll");
                }
            }
        }
    }

    /// Reads the ring buffer and applies every change the kernel stamped at or after
    /// `after_ns` to the set; every change read is kept for the events.
    fn drain(&mut self, after_ns: u64) -> Result<(), SourceError> {
        let read = self.monitor.poll_events(Duration::ZERO)?;
        self.stats.changes += read.len() as u64;
        for mut c in read {
            let what = change(&c);
            if matches!(what, Some(Change::Closed(_))) {
                if let Some(&(local, remote)) = self.tuples.get(&c.sock_cookie) {
                    (c.local, c.remote) = (local, remote);
                }
            }
            // A session of a target a reload removed (its tuple known): no longer watched.
            let complete = c.local.port() != 0;
            if complete && self.targets.classify(&c.local, &c.remote).is_none() {
                if matches!(what, Some(Change::Closed(_))) {
                    self.tuples.remove(&c.sock_cookie);
                }
                continue;
            }
            if c.ts_ns >= after_ns {
                let key = (c.local, c.remote);
                match what {
                    Some(Change::Opened) => {
                        self.active.insert((c.sock_cookie, c.local, c.remote), None);
                        self.tuples.insert(c.sock_cookie, key);
                    }
                    Some(Change::Closed(_)) => {
                        self.tuples.remove(&c.sock_cookie);
                        // Only the socket that opened (the cookie is in the key): a reused
                        // 4-tuple's older close does not end the new session.
                        self.active.remove(&(c.sock_cookie, c.local, c.remote));
                    }
                    None => {}
                }
            }
            self.pending.push(c);
        }
        // Nobody may be taking them (a plain poll loop): keep a bounded backlog.
        if self.pending.len() > 100_000 {
            let excess = self.pending.len() - 100_000;
            self.pending.drain(..excess);
        }
        Ok(())
    }

    /// Replaces the set with a full dump (the start, or the kernel's tables ran out of room).
    fn reconcile_by_dump(&mut self) -> Result<(), SourceError> {
        let start = ktime_now_ns();
        let mut listed = std::mem::take(&mut self.scratch);
        self.dump.poll(&mut listed)?;
        self.replace_set(listed.iter().map(|s| (s.local, s.remote, s.id, s.health)));
        self.scratch = listed;
        self.stats.dump_reconciles += 1;
        // What the kernel stamped before the dump began is in the dump already.
        self.drain(start)
    }

    /// Replaces the set with the health pass's sessions (each watched one, with its state),
    /// and hands their health on: one pass per watched session, whatever else the host holds.
    fn reconcile_by_pass(&mut self) -> Result<(), SourceError> {
        let start = ktime_now_ns();
        // Every session written afresh: a kept record may be of a session that closed since
        // its last change, whose close this poll has not read yet.
        let records = self.monitor.whole_health()?;
        self.stats.health_passes += 1;
        if !self.monitor.last_pass_whole() {
            // The live table changed between the runs of a pass over more sessions than its
            // ring holds at once: a session may be missing, which must not end it.
            tracing::debug!("the health pass was not whole; reconciling with a full dump");
            return self.reconcile_by_dump();
        }
        let sessions = records
            .iter()
            .filter(|h| h.state == ESTABLISHED)
            .map(|h| (h.local, h.remote, h.sock_cookie, Some(to_health(h))));
        self.replace_set(sessions);
        self.drain(start)
    }

    /// Says in the log when the kernel skipped runs of the programs since the last check (a
    /// system call per program: at each reconcile, not every poll).
    fn check_recursion(&mut self) {
        let misses = self.monitor.recursion_misses();
        if misses > self.recursion_misses {
            tracing::warn!(
                skipped = misses - self.recursion_misses,
                "the kernel skipped runs of the eBPF programs (one re-entered on the same \
                 CPU): state changes, resets or retransmissions may be missing from the \
                 events and counts; the set of sessions is reconciled"
            );
            self.recursion_misses = misses;
        }
    }

    fn replace_set(
        &mut self,
        sessions: impl Iterator<Item = (SocketAddr, SocketAddr, u64, Option<TcpHealth>)>,
    ) {
        self.active.clear();
        self.tuples.clear();
        for (local, remote, cookie, health) in sessions {
            // Every session's tuple, for its close (whose record may have lost its port); in
            // the set only those a target holds (a removed target's sessions are still in the
            // programs' table until they close).
            self.tuples.insert(cookie, (local, remote));
            if self.targets.classify(&local, &remote).is_some() {
                self.active.insert((cookie, local, remote), health);
            }
        }
        self.stats.reconciles += 1;
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
                .filter_map(|c| to_event(&c, now, now_k, &self.reasons)),
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

    fn detail(&self) -> Option<String> {
        Some(match self.monitor.health_walk() {
            HealthWalk::StorageMap => "health pass: the socket-storage iterator \
                (iter/bpf_sk_storage_map), one record per watched session"
                .to_string(),
            HealthWalk::LiveTable { why } => format!(
                "health pass: the table of watched sessions, run with BPF_PROG_TEST_RUN, one \
                 record per watched session (this kernel refused the socket-storage iterator: \
                 {why})"
            ),
        })
    }

    /// The new targets into the programs' maps, without reloading them (no gap in what they
    /// see): the sessions of targets that stay keep their storage and health; sessions that
    /// were ESTABLISHED before a target was added or widened are adopted by the TCP iterator,
    /// and the next poll reconciles the set from the programs' table (not a dump).
    fn retarget(&mut self, targets: &Targets) -> Result<bool, SourceError> {
        // What can fail without side effects first: the reconciling dump's socket and filter.
        let dump = NetlinkSource::open(targets)?;
        let old = specs(&self.targets);
        let applied = (self.monitor.set_targets(&specs(targets)))
            .and_then(|()| self.monitor.scan_existing().map(drop));
        if let Err(e) = applied {
            // Back to the blocks it had (each written whole), so the source stays on them.
            if let Err(again) = self.monitor.set_targets(&old) {
                tracing::error!(error = %again, "the eBPF programs' old targets could not be restored");
            }
            return Err(e.into());
        }
        self.dump = dump;
        self.targets = targets.clone();
        let targets = &self.targets;
        self.active
            .retain(|(_, local, remote), _| targets.classify(local, remote).is_some());
        self.next_reconcile = None;
        self.listed_valid = false;
        Ok(true)
    }

    fn poll(&mut self, out: &mut Vec<SocketEntry>) -> Result<(), SourceError> {
        // Until this poll has worked, the loop must assume anything changed.
        self.news = PollNews::EVERYTHING;
        // Nor is the last list valid if this poll fails half-way (the set may have moved).
        let listed_valid = std::mem::replace(&mut self.listed_valid, false);
        let (changes, reconciles) = (self.stats.changes, self.stats.reconciles);
        self.drain(0)?;
        let counters = self.monitor.counters()?;
        let overflowed = counters.lost > self.stats.lost;
        if overflowed {
            tracing::warn!(
                dropped = counters.lost - self.stats.lost,
                "the eBPF ring buffer was full and dropped state changes; reconciling with the \
                 programs' table of watched sessions"
            );
            self.stats.overflows += 1;
            self.stats.lost = counters.lost;
        }
        let full = counters.live_full + counters.no_storage;
        let tables_full = full > self.kernel_full;
        if tables_full {
            tracing::warn!(
                live_full = counters.live_full,
                no_storage = counters.no_storage,
                "the eBPF programs had no room for some sessions; reconciling with a full dump"
            );
            self.kernel_full = full;
        }
        let now = Instant::now();
        let mut passed = false;
        if overflowed || tables_full || self.next_reconcile.is_none_or(|t| now >= t) {
            if self.stats.reconciles == 0 || tables_full {
                self.reconcile_by_dump()?;
            } else if let Err(error) = self.reconcile_by_pass() {
                tracing::warn!(%error, "the eBPF health pass failed; reconciling with a full dump");
                self.reconcile_by_dump()?;
            } else {
                passed = true;
            }
            self.next_reconcile = Some(now + self.reconcile_every);
            self.check_recursion();
        }
        // Due a tenth early, so that polls on their own schedule do not push each pass one
        // poll later than asked.
        let health_due = !passed
            && self.health_on
            && match self.health_every {
                None => true,
                Some(every) if self.next_health.is_some_and(|t| now + every / 10 < t) => false,
                Some(every) => {
                    self.next_health = Some(now + every);
                    true
                }
            };
        let sessions_changed = self.stats.changes != changes || self.stats.reconciles != reconciles;
        if !sessions_changed && !health_due && !passed && listed_valid {
            out.clone_from(&self.listed);
            self.listed_valid = true;
            self.news = PollNews {
                sessions_changed,
                health_fresh: false,
            };
            return Ok(());
        }
        // In the map's order, (cookie, local, remote): the order the loop finds a session's
        // socket in (as netlink's come), and the one `read_health` pairs them in.
        out.clear();
        for (&(id, local, remote), known) in &self.active {
            out.push(SocketEntry {
                local,
                remote,
                state: TcpState::Established,
                id,
                // Handed on from the last pass (or the reconcile's, this poll) unless this
                // poll runs one.
                health: if health_due { None } else { *known },
            });
        }
        if health_due {
            self.read_health(out);
        }
        // Handed on as it is by a poll with nothing new, which happens only where health is
        // not read every poll: otherwise the copy would be made for nothing.
        if self.health_every.is_some() || !self.health_on {
            self.listed.clone_from(out);
            self.listed_valid = true;
        }
        self.news = PollNews {
            sessions_changed,
            health_fresh: health_due || passed,
        };
        Ok(())
    }
}
