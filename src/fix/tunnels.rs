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
//! account names the plaintext leg, and the outer session's end is judged without it.
//!
//! A joined leg lives as long as the TCP layer lists its outer session. One not joined (pending
//! or ambiguous) lives while the host lists it ESTABLISHED (the tables are read at most once a
//! second while such a leg exists): the TCP layer does not watch it, and the idle bound for
//! sessions it never listed is shorter than a FIX heartbeat interval. Without the privilege to
//! read the tunnel's fds (`CAP_SYS_PTRACE`, `CAP_DAC_READ_SEARCH`, or the tunnel running as our
//! user) the owners are unknown and the join falls back to timing alone.
//!
//! `tls_tunnel = "auto"` ([`Joiner::with_auto`]): each session of such a target is looked at
//! once, the same way; a stunnel ([`TUNNEL_PROGRAMS`]) owning it with exactly one loopback
//! listener makes that listener the target's tunnel, followed from then on (the caller widens
//! the packet filter).

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
use crate::config::TlsTunnel;
use crate::source::{Process, TcpState};
use crate::target::{Target, Targets};

/// How long after a leg appeared a join is still tried.
pub const TRY_FOR: Duration = Duration::from_secs(30);

/// How often a leg not joined is tried again.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);

/// How often the sessions of `tls_tunnel = "auto"` targets are looked at without news (a
/// session whose socket was not readable when it appeared).
pub const DISCOVER_EVERY: Duration = Duration::from_secs(5);

/// The programs (`/proc/PID/comm`) taken for a TLS tunnel by `tls_tunnel = "auto"`: Debian's
/// stunnel4 and stunnel as built from source. An engine that holds TLS itself may listen on
/// loopback too (an admin port): that must not be taken for a tunnel.
pub const TUNNEL_PROGRAMS: &[&str] = &["stunnel4", "stunnel", "stunnel3"];

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

/// The host's TCP sockets as `/proc/net/tcp` and `tcp6` list them, IPv4-mapped addresses made
/// plain; rows that do not parse are left out (the join then knows no owner).
#[derive(Debug, Default)]
struct Sockets {
    /// Inode by (local, remote), for the sockets a file refers to.
    inodes: HashMap<(SocketAddr, SocketAddr), u64>,
    /// The ESTABLISHED ones.
    established: HashSet<(SocketAddr, SocketAddr)>,
    /// Listening sockets a loopback client reaches (bound to loopback, or to every address,
    /// then as `127.0.0.1:PORT`), with their inodes.
    listening: Vec<(SocketAddr, u64)>,
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
    /// When the socket tables were last read.
    last_read: Option<SystemTime>,
    /// The targets with `tls_tunnel = "auto"`, by id.
    auto: Vec<usize>,
    /// Their sessions whose owner was looked at (the socket inodes), and when discovery last
    /// ran.
    examined: HashSet<u64>,
    last_discovery: Option<SystemTime>,
    /// (target, pid) of tunnels with several listeners, said once.
    warned: HashSet<(usize, u32)>,
    /// Tunnels found and not yet announced: said once the packet filter lets their legs
    /// through ([`Joiner::announce`]), not before.
    unannounced: Vec<(Tunnel, Process)>,
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
            last_read: None,
            auto: Vec::new(),
            examined: HashSet::new(),
            last_discovery: None,
            warned: HashSet::new(),
            unannounced: Vec::new(),
        }
    }

    /// Finds the tunnels of these targets (`tls_tunnel = "auto"`) at run time.
    pub fn with_auto(mut self, targets: Vec<usize>) -> Joiner {
        self.auto = targets;
        self
    }

    /// One round: finds the tunnels of `auto` targets when due (at `news`, else every
    /// [`DISCOVER_EVERY`]), then joins the legs due ([`Joiner::join_round`]). Returns whether a
    /// tunnel was found: the packet filter must then let its legs through.
    pub fn round(&mut self, wire: &mut Wire, now: SystemTime, news: bool) -> bool {
        let since = |t: SystemTime| now.duration_since(t).unwrap_or_default();
        let due = news
            || self
                .last_discovery
                .is_none_or(|t| since(t) >= DISCOVER_EVERY);
        let mut found = false;
        if !self.auto.is_empty() && due {
            self.last_discovery = Some(now);
            if let Some(sockets) = self.sockets() {
                found = self.discover(wire, &sockets);
            }
        }
        self.join_round(wire, now, news || found);
        found
    }

    /// Looks at the sessions of `auto` targets not looked at yet (nothing to read otherwise):
    /// a session owned by a tunnel program ([`TUNNEL_PROGRAMS`]) with exactly one loopback
    /// listener makes that listener its target's tunnel. Several listeners (one stunnel
    /// serving several venues) say nothing of which is this target's: said once, not guessed.
    fn discover(&mut self, wire: &mut Wire, sockets: &Sockets) -> bool {
        let mut outers = Vec::new();
        for &t in &self.auto {
            for o in wire.outer_candidates(t) {
                let key = (plain(o.link.local), plain(o.link.remote));
                if let Some(&inode) = sockets.inodes.get(&key) {
                    outers.push((t, inode));
                }
            }
        }
        let present: HashSet<u64> = outers.iter().map(|o| o.1).collect();
        self.examined.retain(|i| present.contains(i));
        outers.retain(|o| self.examined.insert(o.1));
        if outers.is_empty() {
            return false;
        }
        let listeners = sockets.listening.iter().map(|l| l.1);
        let wanted: HashSet<u64> = outers.iter().map(|o| o.1).chain(listeners).collect();
        let owners = self.owners.find(&wanted);
        let mut found = false;
        for (target, inode) in outers {
            let Some(p) = owners.get(&inode) else {
                continue;
            };
            if !TUNNEL_PROGRAMS.contains(&&*p.comm) {
                continue;
            }
            let listens: Vec<SocketAddr> = (sockets.listening.iter())
                .filter(|(_, i)| owners.get(i).is_some_and(|q| q.pid == p.pid))
                .map(|(a, _)| *a)
                .collect();
            match listens[..] {
                [address] => {
                    let tunnel = Tunnel { address, target };
                    if wire.add_tunnel(tunnel) {
                        self.unannounced.push((tunnel, p.clone()));
                        found = true;
                    }
                }
                _ if self.warned.insert((target, p.pid)) => tracing::warn!(
                    target_name = %wire.targets().get(target).name,
                    pid = p.pid,
                    listeners = listens.len(),
                    "tls_tunnel = \"auto\": the tunnel process owning a session of the \
                     target has not exactly one loopback listener; name the tunnel \
                     (targets[].tls_tunnel = \"IP:PORT\")"
                ),
                _ => {}
            }
        }
        found
    }

    /// Tries the legs due and records their standing in `wire`: every leg not joined yet when
    /// `news` (a leg or a session of its target just appeared: [`Wire::take_tunnel_news`]),
    /// else those not tried for [`RETRY_EVERY`] (see the module docs).
    fn join_round(&mut self, wire: &mut Wire, now: SystemTime, news: bool) {
        let legs = wire.tunnel_legs();
        let open: HashSet<TcpLink> = legs.iter().map(|l| l.link).collect();
        self.tried.retain(|l, _| open.contains(l));
        let young = |l: &Leg| now.duration_since(l.first_seen).unwrap_or_default() < TRY_FOR;
        let joined = |l: &Leg| matches!(l.join, TunnelJoin::Joined { .. });
        let due: Vec<&Leg> = (legs.iter())
            .filter(|l| !joined(l) && young(l))
            .filter(|l| {
                news || (self.tried.get(&l.link))
                    .is_none_or(|t| now.duration_since(*t).unwrap_or_default() >= RETRY_EVERY)
            })
            .collect();
        // The sockets are read for a join, and at most once a second while a leg is not
        // joined: such a leg lives while the host lists it ESTABLISHED.
        let unjoined = legs.iter().any(|l| !joined(l));
        let since = |t: &SystemTime| now.duration_since(*t).unwrap_or_default();
        let read = !due.is_empty()
            || (unjoined && self.last_read.is_none_or(|t| since(&t) >= RETRY_EVERY));
        let sockets = read.then(|| self.sockets()).flatten();
        if read {
            self.last_read = Some(now);
        }
        if let (false, Some(sockets)) = (due.is_empty(), &sockets) {
            let targets: BTreeSet<usize> = due.iter().map(|l| l.target).collect();
            for l in &due {
                self.tried.insert(l.link, now);
            }
            self.join(wire, &legs, &targets, sockets);
        }
        if let Some(sockets) = &sockets {
            let established = |l: &&Leg| {
                let key = (plain(l.link.local), plain(l.link.remote));
                sockets.established.contains(&key)
            };
            wire.set_open_legs(legs.iter().filter(established).map(|l| l.link).collect());
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
    fn join(
        &mut self,
        wire: &mut Wire,
        legs: &[Leg],
        targets: &BTreeSet<usize>,
        sockets: &Sockets,
    ) {
        let inode = |local: SocketAddr, remote: SocketAddr| {
            sockets.inodes.get(&(plain(local), plain(remote))).copied()
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

    /// The host's TCP sockets (`None` when neither table can be read).
    fn sockets(&self) -> Option<Sockets> {
        let mut out = Sockets::default();
        let mut read = false;
        for table in ["net/tcp", "net/tcp6"] {
            let Ok(text) = std::fs::read(self.root.join(table)) else {
                continue;
            };
            read = true;
            for row in fix_monitor_kernel::procfs::rows(&text).flatten() {
                let key = (plain(row.local), plain(row.remote));
                if row.id != 0 {
                    out.inodes.insert(key, row.id);
                }
                if row.state == TcpState::Established {
                    out.established.insert(key);
                }
                if row.state == TcpState::Listen && row.id != 0 {
                    let ip = row.local.ip().to_canonical();
                    let port = row.local.port();
                    if ip.is_loopback() {
                        out.listening.push((SocketAddr::new(ip, port), row.id));
                    } else if ip.is_unspecified() {
                        out.listening
                            .push((SocketAddr::from(([127, 0, 0, 1], port)), row.id));
                    }
                }
            }
        }
        read.then_some(out)
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

/// The tunnels of `[fix]`'s `target_tls_tunnel` (by target id) given as addresses.
pub fn tunnels(by_target: &[Option<TlsTunnel>]) -> Vec<Tunnel> {
    (by_target.iter().enumerate())
        .filter_map(|(target, t)| match t {
            Some(TlsTunnel::At(address)) => Some(Tunnel {
                address: *address,
                target,
            }),
            _ => None,
        })
        .collect()
}

/// The targets of `[fix]`'s `target_tls_tunnel` whose tunnel is to be found (`"auto"`).
pub fn auto_targets(by_target: &[Option<TlsTunnel>]) -> Vec<usize> {
    (by_target.iter().enumerate())
        .filter(|(_, t)| **t == Some(TlsTunnel::Auto))
        .map(|(target, _)| target)
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

impl Joiner {
    /// Says which tunnels were found since the last call (each once: a tunnel already
    /// followed is not added again). Called once the packet filter lets their legs through,
    /// so that "read from now on" is true when it is said.
    pub fn announce(&mut self, targets: &Targets) {
        for (tunnel, p) in self.unannounced.drain(..) {
            tracing::info!(
                target_name = %targets.get(tunnel.target).name,
                address = %tunnel.address,
                pid = p.pid,
                comm = %p.comm,
                "TLS tunnel found: its plaintext leg is read from now on"
            );
        }
    }
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;
    use std::path::Path;

    use super::*;
    use crate::fix::reassembly::Limits as StreamLimits;
    use crate::fix::sim::ipv4_tcp;
    use crate::fix::tracker::{Limits, Tracker};
    use crate::fix::tunnel::JoinBasis;
    use crate::fix::wire::SYN;

    /// A `/proc/net/tcp` row: `local` and `remote` as the kernel writes them (little-endian
    /// IPv4 on x86), ESTABLISHED, with `inode`.
    fn row(local: &str, remote: &str, inode: u64) -> String {
        row_in("01", local, remote, inode)
    }

    /// A row in `state` (hex: 01 ESTABLISHED, 0A LISTEN).
    fn row_in(state: &str, local: &str, remote: &str, inode: u64) -> String {
        format!(
            "   0: {local} {remote} {state} 00000000:00000000 00:00000000 00000000     0        0 \
             {inode} 1 0000000000000000 20 4 30 10 -1\n"
        )
    }

    /// The one target of these tests: a venue at 10.0.0.2:9878.
    fn venue_target() -> Targets {
        Targets::new(vec![Target {
            name: "venue".into(),
            net: "10.0.0.2/32".parse().unwrap(),
            port: Some(9878),
            local_ports: None,
            heartbeat: None,
            stale_after: None,
        }])
    }

    fn process(root: &Path, pid: u32, comm: &str, inodes: &[u64]) {
        let fd = root.join(pid.to_string()).join("fd");
        std::fs::create_dir_all(&fd).unwrap();
        std::fs::write(root.join(pid.to_string()).join("comm"), format!("{comm}\n")).unwrap();
        for (i, inode) in inodes.iter().enumerate() {
            symlink(format!("socket:[{inode}]"), fd.join(i.to_string())).unwrap();
        }
    }

    /// On a fake `/proc`: the tunnel process (77) owns the accepted end of the leg and the
    /// outer session; the gateway (88) its end of the leg. The leg is joined by the process,
    /// and the FIX session read on it names the outer session, the tunnel and its process.
    #[test]
    fn a_leg_is_joined_by_the_process_owning_both_sockets() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("net")).unwrap();
        let gw: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let tunnel: SocketAddr = "127.0.0.2:7001".parse().unwrap();
        let (stunnel, venue): (SocketAddr, SocketAddr) = (
            "10.0.0.1:50000".parse().unwrap(),
            "10.0.0.2:9878".parse().unwrap(),
        );
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when \
                      retrnsmt   uid  timeout inode\n";
        let table = [
            header.to_owned(),
            row("0200007F:1B59", "0100007F:9C40", 111), // the tunnel's accepted socket
            row("0100000A:C350", "0200000A:2696", 222), // the tunnel's outer session
            row("0100007F:9C40", "0200007F:1B59", 333), // the gateway's end
        ]
        .concat();
        std::fs::write(root.path().join("net/tcp"), table).unwrap();
        process(root.path(), 77, "stunnel4", &[111, 222]);
        process(root.path(), 88, "gateway", &[333]);

        let targets = venue_target();
        let tunnels = tunnels(&[Some(TlsTunnel::At(tunnel))]);
        let mut wire = Wire::new(targets.clone(), StreamLimits::default()).with_tunnels(tunnels);
        let mut tracker = Tracker::new(Limits::default());
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        wire.packet(&ipv4_tcp(gw, tunnel, 0, SYN, b""), t0, &mut tracker);
        let logon = crate::fix::codec::write(
            "FIX.4.4",
            &[
                (35, b"A"),
                (49, b"GW"),
                (56, b"V"),
                (34, b"1"),
                (108, b"30"),
            ],
            crate::fix::codec::SOH,
        );
        wire.packet(&ipv4_tcp(gw, tunnel, 1, 0, &logon), t0, &mut tracker);
        let mut joiner = Joiner::at(root.path());
        let news = wire.take_tunnel_news();
        assert!(news, "a new leg");
        joiner.round(&mut wire, t0, news);
        assert_eq!(
            wire.tunnel_legs()[0].join,
            TunnelJoin::Pending,
            "no outer yet"
        );
        wire.packet(&ipv4_tcp(stunnel, venue, 0, SYN, b""), t0, &mut tracker);
        assert!(wire.take_tunnel_news());
        joiner.round(&mut wire, t0, true);
        let outer = TcpLink {
            local: stunnel,
            remote: venue,
        };
        let joined = TunnelJoin::Joined {
            outer,
            basis: JoinBasis::Process,
        };
        assert_eq!(wire.tunnel_legs()[0].join, joined);

        let no: &[Option<crate::config::LogonLockout>] = &[];
        let none: &[Option<crate::config::MessageLimit>] = &[];
        let lists = (no, none);
        let mut sessions =
            super::super::monitor::sessions_json(&tracker, &targets, &[], lists, "log", t0);
        joiner.annotate(&mut sessions);
        let s = &sessions[0];
        assert_eq!((s.target.as_deref(), s.tcp), (Some("venue"), Some(outer)));
        let t = s.tunnel.as_ref().unwrap();
        assert_eq!((t.address, t.join), (tunnel, joined));
        assert_eq!(t.plaintext.local, gw);
        let p = t.process.as_ref().unwrap();
        assert_eq!((p.pid, &*p.comm), (77, "stunnel4"));
    }

    /// `tls_tunnel = "auto"` on a fake `/proc`: a session of the target owned by a stunnel
    /// with one loopback listener makes that listener the target's tunnel; the same owned by
    /// another program (an engine holding TLS itself, with an admin port) does not.
    #[test]
    fn an_auto_tunnel_is_the_one_loopback_listener_of_the_stunnel_owning_a_session() {
        for (comm, found) in [("stunnel4", true), ("gateway", false)] {
            let root = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(root.path().join("net")).unwrap();
            let table = [
                row_in("0A", "0200007F:1B59", "00000000:0000", 444), // 127.0.0.2:7001
                row_in("0A", "0100000A:0016", "00000000:0000", 555), // 10.0.0.1:22
                row("0100000A:C350", "0200000A:2696", 222),          // the session
            ]
            .concat();
            std::fs::write(root.path().join("net/tcp"), table).unwrap();
            process(root.path(), 77, comm, &[222, 444, 555]);
            let targets = venue_target();
            let mut wire = Wire::new(targets, StreamLimits::default()).watch_for_tunnels(&[0]);
            let mut tracker = Tracker::new(Limits::default());
            let (stunnel, venue): (SocketAddr, SocketAddr) = (
                "10.0.0.1:50000".parse().unwrap(),
                "10.0.0.2:9878".parse().unwrap(),
            );
            let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
            wire.packet(&ipv4_tcp(stunnel, venue, 0, SYN, b""), t0, &mut tracker);
            assert!(wire.take_tunnel_news());
            let mut joiner = Joiner::at(root.path()).with_auto(vec![0]);
            assert_eq!(joiner.round(&mut wire, t0, true), found, "{comm}");
            let want = match found {
                true => vec![Tunnel {
                    address: "127.0.0.2:7001".parse().unwrap(),
                    target: 0,
                }],
                false => vec![],
            };
            assert_eq!(wire.tunnels(), want, "{comm}");
            // Looked at once: the next round reads nothing new and finds nothing more.
            assert!(!joiner.round(&mut wire, t0, true));
        }
    }

    /// The filter's targets: the targets, then one per tunnel (its address and port).
    #[test]
    fn capture_lets_each_tunnels_address_through() {
        let targets = Targets::new(vec![Target {
            name: "venue".into(),
            net: "10.0.0.2/32".parse().unwrap(),
            port: Some(443),
            local_ports: None,
            heartbeat: None,
            stale_after: None,
        }]);
        let tunnel: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        let all = capture_targets(&targets, &tunnels(&[Some(TlsTunnel::At(tunnel))]));
        let gw: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all.classify(&gw, &tunnel), Some(1));
        assert_eq!(all.get(1).name, "venue (tunnel)");
    }
}
