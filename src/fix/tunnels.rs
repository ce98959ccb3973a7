//! Sessions behind a local TLS tunnel, as the running FIX layer joins them: the wire follows
//! each plaintext leg to a tunnel (`targets[].tls_tunnel`) as its target's; this module finds,
//! for the legs not joined yet, which process owns the tunnel's end of each leg and of each of
//! the target's other sessions, and hands that and the SYN times to
//! [`fix_monitor_protocol::tunnel::decide`] (whose docs say what is certain and what is not).
//!
//! The owners come the way `poll.process_lookup` finds them: the sockets' inodes from
//! `/proc/net/tcp` and `/proc/net/tcp6` (the tunnel's accepted socket is the leg seen from the
//! other end: local the tunnel's address, remote the gateway's), then one walk of
//! `/proc/PID/fd` ([`ProcOwners`]) for all of them. A walk happens only when there is a leg
//! to join: at once when a leg or a session of its target appears (right after its first
//! segment is read, while the tunnel's sockets are open: a session may last less than a
//! round), else at most once a second per leg, and for [`TRY_FOR`] after the leg appeared; a
//! leg still pending or ambiguous by then keeps that standing. A leg that ends before it was
//! joined (its tunnel's sockets gone before any walk) keeps its own link: its end's FIX
//! account names the plaintext leg, and the outer session's end is judged without it. Without the privilege to read the
//! tunnel's fds (`CAP_SYS_PTRACE`, `CAP_DAC_READ_SEARCH`, or the tunnel running as our user)
//! the owners are unknown and the join falls back to timing alone.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use fix_monitor_kernel::proc_owner::ProcOwners;
use serde::Serialize;

use super::monitor::FixSessionJson;
use super::tracker::TcpLink;
use super::tunnel::{decide, Side, Tunnel, TunnelJoin};
use super::wire::{Leg, Wire};
use crate::source::Process;
use crate::target::{Target, Targets};

/// How long after a leg appeared a join is still tried.
pub const TRY_FOR: Duration = Duration::from_secs(30);

/// How often a leg not joined is tried again.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);

/// A FIX session's tunnel, in `/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TunnelJson {
    /// The tunnel's plaintext address (`targets[].tls_tunnel`).
    pub address: SocketAddr,
    /// The plaintext leg the FIX session was read on (the gateway's end local).
    pub plaintext: TcpLink,
    /// The process owning the tunnel's end of the leg, when the lookup found it.
    pub process: Option<Process>,
    /// The outer session (the session's `tcp` then names it too), or why none.
    #[serde(flatten)]
    pub join: TunnelJoin,
}

/// The joins of the running FIX layer.
pub struct Joiner {
    /// The `/proc` root (a fake tree in tests).
    root: PathBuf,
    owners: ProcOwners,
    /// When each leg not joined was last tried.
    tried: HashMap<TcpLink, SystemTime>,
    /// What is known of each leg, kept while a FIX session names it.
    known: HashMap<TcpLink, TunnelJson>,
}

impl Joiner {
    /// Looks under the real `/proc`.
    pub fn new() -> Joiner {
        Joiner::at("/proc")
    }

    /// Looks under `root`.
    pub fn at(root: impl Into<PathBuf>) -> Joiner {
        let root = root.into();
        Joiner {
            owners: ProcOwners::at(root.clone()),
            root,
            tried: HashMap::new(),
            known: HashMap::new(),
        }
    }

    /// Tries the legs due and records their standing in `wire`: every leg not joined yet when
    /// `news` (a leg or a session of its target just appeared: [`Wire::take_tunnel_news`]),
    /// else those not tried for [`RETRY_EVERY`] (see the module docs).
    pub fn round(&mut self, wire: &mut Wire, now: SystemTime, news: bool) {
        let legs = wire.tunnel_legs();
        let open: HashSet<TcpLink> = legs.iter().map(|l| l.link).collect();
        self.tried.retain(|l, _| open.contains(l));
        let young = |l: &Leg| now.duration_since(l.first_seen).unwrap_or_default() < TRY_FOR;
        let due: Vec<&Leg> = (legs.iter())
            .filter(|l| !matches!(l.join, TunnelJoin::Joined { .. }) && young(l))
            .filter(|l| {
                news || (self.tried.get(&l.link))
                    .is_none_or(|t| now.duration_since(*t).unwrap_or_default() >= RETRY_EVERY)
            })
            .collect();
        if !due.is_empty() {
            let targets: BTreeSet<usize> = due.iter().map(|l| l.target).collect();
            for l in &due {
                self.tried.insert(l.link, now);
            }
            self.join(wire, &legs, &targets);
        }
        for l in wire.tunnel_legs() {
            let entry = self.known.entry(l.link).or_insert_with(|| TunnelJson {
                address: l.link.remote,
                plaintext: l.link,
                process: None,
                join: l.join,
            });
            entry.join = l.join;
        }
    }

    /// Joins the unjoined legs of `targets`, with their owners looked up in one walk.
    fn join(&mut self, wire: &mut Wire, legs: &[Leg], targets: &BTreeSet<usize>) {
        let inodes = self.inodes();
        let inode = |local: SocketAddr, remote: SocketAddr| {
            inodes.get(&(plain(local), plain(remote))).copied()
        };
        let mut plans = Vec::new();
        for &t in targets {
            let legs: Vec<Side> = (legs.iter())
                .filter(|l| l.target == t && !matches!(l.join, TunnelJoin::Joined { .. }))
                .map(|l| side(l.link, l.opened))
                .collect();
            plans.push((legs, wire.outer_candidates(t)));
        }
        // The tunnel's end of a leg is the leg seen from the other side.
        let leg_inode = |s: &Side| inode(s.link.remote, s.link.local);
        let outer_inode = |s: &Side| inode(s.link.local, s.link.remote);
        let wanted: HashSet<u64> = (plans.iter())
            .flat_map(|(l, o)| {
                let legs = l.iter().filter_map(leg_inode);
                legs.chain(o.iter().filter_map(outer_inode))
                    .collect::<Vec<_>>()
            })
            .collect();
        let owners = self.owners.find(&wanted);
        let pid_of = |i: Option<u64>| i.and_then(|i| owners.get(&i)).map(|p| p.pid);
        for (mut legs, mut outers) in plans {
            for l in &mut legs {
                l.pid = pid_of(leg_inode(l));
                let process = leg_inode(l).and_then(|i| owners.get(&i)).cloned();
                if let Some(k) = self.known.get_mut(&l.link) {
                    k.process = process.or(k.process.take());
                } else {
                    self.known.insert(
                        l.link,
                        TunnelJson {
                            address: l.link.remote,
                            plaintext: l.link,
                            process,
                            join: TunnelJoin::Pending,
                        },
                    );
                }
            }
            for o in &mut outers {
                o.pid = pid_of(outer_inode(o));
            }
            for (l, join) in legs.iter().zip(decide(&legs, &outers)) {
                wire.set_join(&l.link, join);
            }
        }
    }

    /// Every TCP socket's inode by (local, remote), IPv4-mapped addresses made plain; what
    /// cannot be read is left out (the join then knows no owner).
    fn inodes(&self) -> HashMap<(SocketAddr, SocketAddr), u64> {
        let mut out = HashMap::new();
        for table in ["net/tcp", "net/tcp6"] {
            let Ok(text) = std::fs::read(self.root.join(table)) else {
                continue;
            };
            for row in fix_monitor_kernel::procfs::rows(&text).flatten() {
                if row.id != 0 {
                    out.insert((plain(row.local), plain(row.remote)), row.id);
                }
            }
        }
        out
    }

    /// Names the tunnel of each FIX session read on a leg, and for a joined one, the outer
    /// session as its `tcp` (where the TCP layer's health and end of it are). What is kept of
    /// legs no session names any more is let go.
    pub fn annotate(&mut self, sessions: &mut [FixSessionJson]) {
        let mut named = HashSet::new();
        for s in sessions.iter_mut() {
            let Some(t) = s.tcp.and_then(|l| self.known.get(&l)) else {
                continue;
            };
            named.insert(t.plaintext);
            if let TunnelJoin::Joined { outer, .. } = t.join {
                s.tcp = Some(outer);
            }
            s.tunnel = Some(t.clone());
        }
        self.known
            .retain(|l, _| named.contains(l) || self.tried.contains_key(l));
    }
}

impl Default for Joiner {
    fn default() -> Self {
        Joiner::new()
    }
}

/// The tunnels of `[fix]`'s `target_tls_tunnel` (by target id).
pub fn tunnels(by_target: &[Option<SocketAddr>]) -> Vec<Tunnel> {
    (by_target.iter().enumerate())
        .filter_map(|(target, a)| a.map(|address| Tunnel { address, target }))
        .collect()
}

/// What the packet filter lets through: the targets' sessions, and each tunnel's plaintext
/// leg (its address as one more remote, which the filter matches either way).
pub fn capture_targets(targets: &Targets, tunnels: &[Tunnel]) -> Targets {
    let legs = tunnels.iter().map(|t| Target {
        name: format!("{} (tunnel)", targets.get(t.target).name),
        net: t.address.ip().into(),
        port: Some(t.address.port()),
        local_ports: None,
        heartbeat: None,
        stale_after: None,
    });
    Targets::new(targets.iter().cloned().chain(legs).collect())
}

fn side(link: TcpLink, opened: Option<SystemTime>) -> Side {
    Side {
        link,
        opened,
        pid: None,
    }
}

fn plain(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}
