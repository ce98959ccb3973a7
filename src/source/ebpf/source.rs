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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{ktime_now_ns, Change, EbpfError, EbpfEvents, Options, Transition};
use crate::source::netlink::NetlinkSource;
use crate::source::{SocketEntry, Source, SourceError, SourceKind, TcpState};
use crate::target::Targets;

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

pub struct EbpfSource {
    events: EbpfEvents,
    dump: NetlinkSource,
    active: HashMap<(SocketAddr, SocketAddr), ()>,
    reconcile_every: Duration,
    next_reconcile: Option<Instant>,
    stats: SourceStats,
    read: Vec<Transition>,
    scratch: Vec<SocketEntry>,
    /// Every transition read since the last `take_transitions`, in order.
    pending: Vec<Transition>,
}

impl EbpfSource {
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
        Ok(EbpfSource {
            events,
            dump,
            active: HashMap::new(),
            reconcile_every,
            next_reconcile: None,
            stats: SourceStats::default(),
            read: Vec::new(),
            scratch: Vec::new(),
            pending: Vec::new(),
        })
    }

    pub fn stats(&self) -> SourceStats {
        self.stats
    }

    pub fn events(&self) -> &EbpfEvents {
        &self.events
    }

    fn drain(&mut self, after_ns: u64) {
        self.read.clear();
        self.events.drain(&mut self.read);
        self.stats.transitions += self.read.len() as u64;
        for t in self.read.drain(..) {
            if t.ktime_ns >= after_ns {
                match t.change() {
                    Some(Change::Opened) => {
                        self.active.insert((t.local, t.remote), ());
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
        self.active
            .extend(self.scratch.iter().map(|s| ((s.local, s.remote), ())));
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

    /// Exact times, who hung up, the process.
    fn take_transitions(&mut self) -> Vec<Transition> {
        std::mem::take(&mut self.pending)
    }

    fn poll(&mut self, out: &mut Vec<SocketEntry>) -> Result<(), SourceError> {
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
        out.clear();
        out.extend(self.active.keys().map(|&(local, remote)| SocketEntry {
            local,
            remote,
            state: TcpState::Established,
            id: 0,
            health: None,
        }));
        Ok(())
    }
}
