//! From packets to FIX messages: the pure half of the wire source.
//!
//! Packets (an IPv4 or IPv6 header first, as an `AF_PACKET` `SOCK_DGRAM` socket gives them)
//! with their kernel receive time go in; each is attributed to a target and a direction by the
//! same rules as the TCP layer ([`Targets::classify`]: the gateway is the local side), put in
//! order per direction ([`Stream`]), decoded ([`Decoder`]) and fed to the FIX [`Tracker`].
//! Each TCP connection also says whether FIX was found on it: an encrypted session (TLS, FIXS)
//! shows bytes flowing and no FIX, which is reported as such (the engine's log is the way to
//! see it). A FIN both ways, or an RST, ends the connection and logs its FIX sessions out.
//!
//! # The connections table
//! Only a segment that can start or carry a stream (a SYN, or payload) creates an entry: the
//! last ACK after both FINs, a retransmitted FIN or a keep-alive of a link not followed create
//! nothing (they are counted as `stray`). An entry ends, and is counted by why
//! ([`EndReason`]), at a FIN both ways, at an RST, or in [`Wire::reconcile`], which the running
//! FIX layer calls every round with the TCP layer's live sessions: an entry the TCP layer saw
//! ESTABLISHED and no longer lists is closed (its FIN or RST was missed, say because capture
//! fell behind), and an entry the TCP layer never listed that has been idle longer than a bound
//! is dropped. Connections are bounded ([`MAX_CONNECTIONS`]); a connection seen while the table
//! is full is not followed, and counted once (`not_followed`, remembered in a second table of
//! the same bound and the same ending rules) until it ends or there is room again.
//!
//! # Local TLS tunnels
//! A target may name a tunnel ([`Wire::with_tunnels`]): the plaintext leg from the gateway to
//! the tunnel's address is followed as that target's (its FIX sessions carry the target's
//! name), while the tunnel's outer session to the venue, which the TCP layer lists, carries
//! TLS. Once a leg is joined to its outer session ([`Wire::set_join`], decided by
//! [`crate::tunnel::decide`]), the leg lives as long as the TCP layer lists the outer session,
//! and its end is reported as the outer session's (the FIX account of that end); the outer
//! session's own end, which carries no FIX, is not reported apart. A leg not joined lives while
//! the host lists it ESTABLISHED ([`Wire::set_open_legs`]), else until idle.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime};

use crate::codec::{Decoded, Decoder, SOH};
use crate::reassembly::{Chunk, Limits, Stream, StreamStats};
use crate::tracker::{Direction, Event, Origin, TcpEndSeen, TcpLink, Tracker};
use crate::tunnel::{Side, Tunnel, TunnelJoin};
use fix_monitor_core::target::{TargetId, Targets};

/// Connections followed at once; packets of more are counted and dropped.
pub const MAX_CONNECTIONS: usize = 4096;

/// How long after its last segment an entry the TCP layer saw and no longer lists is closed:
/// the segments of its end may still be on their way through the capture.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Bytes seen one way with no FIX message before a connection is said to carry none.
pub const NO_FIX_AFTER: u64 = 4096;

/// TCP flags.
pub const FIN: u8 = 0x01;
/// TCP flags.
pub const SYN: u8 = 0x02;
/// TCP flags.
pub const RST: u8 = 0x04;

/// A TCP segment's fields that matter here, borrowed from the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment<'a> {
    /// Source address and port.
    src: SocketAddr,
    /// Destination address and port.
    dst: SocketAddr,
    /// The TCP sequence number.
    seq: u32,
    /// The TCP flags byte ([`FIN`], [`SYN`], [`RST`], ...).
    flags: u8,
    /// The TCP payload.
    payload: &'a [u8],
}

/// Parse an IPv4 or IPv6 packet carrying TCP; `None` for anything else (or truncated).
/// IPv6 extension headers are not followed; IPv4 fragments are not reassembled (FIX gateways
/// do not fragment: TCP segments fit the MTU).
fn parse_packet(p: &[u8]) -> Option<Segment<'_>> {
    let version = p.first()? >> 4;
    let (src, dst, l4) = match version {
        4 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            if ihl < 20 || p.len() < ihl || p[9] != 6 {
                return None;
            }
            let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
            let frag = u16::from_be_bytes([p[6], p[7]]);
            if frag & 0x3fff != 0 {
                return None; // a fragment
            }
            let end = total.clamp(ihl, p.len());
            let src = IpAddr::V4(Ipv4Addr::new(p[12], p[13], p[14], p[15]));
            let dst = IpAddr::V4(Ipv4Addr::new(p[16], p[17], p[18], p[19]));
            (src, dst, &p[ihl..end])
        }
        6 => {
            if p.len() < 40 || p[6] != 6 {
                return None;
            }
            let plen = usize::from(u16::from_be_bytes([p[4], p[5]]));
            let end = (40 + plen).min(p.len());
            let a: [u8; 16] = p[8..24].try_into().ok()?;
            let b: [u8; 16] = p[24..40].try_into().ok()?;
            (
                IpAddr::V6(Ipv6Addr::from(a)),
                IpAddr::V6(Ipv6Addr::from(b)),
                &p[40..end],
            )
        }
        _ => return None,
    };
    if l4.len() < 20 {
        return None;
    }
    let off = usize::from(l4[12] >> 4) * 4;
    if off < 20 || l4.len() < off {
        return None;
    }
    Some(Segment {
        src: SocketAddr::new(src, u16::from_be_bytes([l4[0], l4[1]])),
        dst: SocketAddr::new(dst, u16::from_be_bytes([l4[2], l4[3]])),
        seq: u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]),
        flags: l4[13],
        payload: &l4[off..],
    })
}

/// What a connection was found to carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Content {
    /// Not enough bytes yet to say.
    Unknown,
    /// FIX messages found.
    Fix,
    /// A TLS handshake was seen: encrypted, FIX cannot be read on the wire.
    Tls,
    /// Bytes flow, no FIX found (encrypted some other way, or not FIX).
    NoFixFound,
}

impl Content {
    /// How the content is shown (`/sessions`, the console).
    pub fn as_str(&self) -> &'static str {
        match self {
            Content::Unknown => "unknown",
            Content::Fix => "fix",
            Content::Tls => "tls: bytes flow, no FIX found (use the engine's log)",
            Content::NoFixFound => "bytes flow, no FIX found",
        }
    }
}

/// Why a followed connection left the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// A FIN each way was seen.
    Fin,
    /// An RST was seen.
    Reset,
    /// The TCP layer saw the session ESTABLISHED and no longer lists it: its end was not seen
    /// on the wire (capture fell behind, or the end was lost).
    TcpClosed,
    /// Idle longer than the bound and never listed by the TCP layer.
    Idle,
}

impl EndReason {
    /// Every reason, in a fixed order (to report each one's count).
    pub const ALL: [EndReason; 4] = [
        EndReason::Fin,
        EndReason::Reset,
        EndReason::TcpClosed,
        EndReason::Idle,
    ];

    /// The reason's name as reported: `fin`, `reset`, `tcp_closed` or `idle`.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Fin => "fin",
            EndReason::Reset => "reset",
            EndReason::TcpClosed => "tcp_closed",
            EndReason::Idle => "idle",
        }
    }
}

/// Connections that left the table, by [`EndReason`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Ended {
    /// Ended by a FIN each way ([`EndReason::Fin`]).
    pub fin: u64,
    /// Ended by an RST ([`EndReason::Reset`]).
    pub reset: u64,
    /// Let go once the TCP layer no longer listed them ([`EndReason::TcpClosed`]).
    pub tcp_closed: u64,
    /// Let go when idle ([`EndReason::Idle`]).
    pub idle: u64,
}

impl Ended {
    /// The count for reason `r`.
    pub fn get(&self, r: EndReason) -> u64 {
        match r {
            EndReason::Fin => self.fin,
            EndReason::Reset => self.reset,
            EndReason::TcpClosed => self.tcp_closed,
            EndReason::Idle => self.idle,
        }
    }

    fn add(&mut self, r: EndReason) {
        match r {
            EndReason::Fin => self.fin += 1,
            EndReason::Reset => self.reset += 1,
            EndReason::TcpClosed => self.tcp_closed += 1,
            EndReason::Idle => self.idle += 1,
        }
    }
}

/// Counts of the wire source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct WireStats {
    /// Packets received.
    pub packets: u64,
    /// Packets that parsed but belong to no target (the kernel filter is wider than the
    /// user-space rules, e.g. for local ports).
    pub unmatched: u64,
    /// Packets that are not TCP over IPv4/IPv6 or are truncated.
    pub unparsed: u64,
    /// Packets of connections not followed because the table was full.
    pub over_cap: u64,
    /// Connections not followed because the table was full (each counted once).
    pub not_followed: u64,
    /// Segments of a link not followed that cannot start one (no SYN, no payload): the last
    /// ACK after a close, a retransmitted FIN, a keep-alive.
    pub stray: u64,
    /// Connections that left the table, by why.
    pub ended: Ended,
    /// FIX messages decoded.
    pub messages: u64,
    /// Malformed FIX messages skipped.
    pub malformed: u64,
    /// Bytes skipped by the decoders looking for `8=FIX` (malformed messages included).
    pub bytes_skipped: u64,
    /// Both directions of every connection, summed (closed connections included).
    pub streams: StreamStats,
}

/// One followed TCP connection.
#[derive(Debug)]
struct Conn {
    target: TargetId,
    streams: [Stream; 2],
    decoders: [Decoder; 2],
    bytes: [u64; 2],
    messages: u64,
    content: Content,
    /// A FIN was seen this way; both ways closes the connection.
    fin: [bool; 2],
    /// Who sent the first FIN.
    first_fin: Option<Direction>,
    seen: Seen,
    /// The kernel time of its first SYN, when seen (the tunnel join's timing).
    opened: Option<SystemTime>,
    /// Its part in a tunnel: a plaintext leg's standing, or the leg an outer session carries.
    tunnel: Role,
}

/// A connection's part in a local TLS tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A target's own session, carrying no leg.
    Direct,
    /// A target's session that a plaintext leg was joined to.
    Outer(TcpLink),
    /// A plaintext leg to a tunnel.
    Leg(TunnelJoin),
}

/// What decides when an entry is let go without a FIN or RST ([`Wire::reconcile`]).
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// The kernel receive time of its first segment.
    first: SystemTime,
    /// The kernel receive time of its last segment.
    last: SystemTime,
    /// The TCP layer has listed the session ESTABLISHED.
    by_tcp: bool,
}

impl Seen {
    fn new(at: SystemTime) -> Seen {
        Seen {
            first: at,
            last: at,
            by_tcp: false,
        }
    }

    /// Whether to let the entry go, and why, given the TCP layer's view.
    fn expired(&mut self, live: bool, now: SystemTime, idle: Duration) -> Option<EndReason> {
        let quiet = now.duration_since(self.last).unwrap_or_default();
        if live {
            self.by_tcp = true;
            None
        } else if self.by_tcp {
            (quiet >= CLOSE_GRACE).then_some(EndReason::TcpClosed)
        } else {
            (quiet >= idle).then_some(EndReason::Idle)
        }
    }
}

/// A connection as reported (`/sessions`, the console).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConnView {
    /// The target's name.
    pub target: String,
    /// The gateway's address.
    pub local: SocketAddr,
    /// The other side's address.
    pub remote: SocketAddr,
    /// TCP payload bytes received by the gateway.
    pub bytes_in: u64,
    /// TCP payload bytes sent by the gateway.
    pub bytes_out: u64,
    /// FIX messages decoded, both ways.
    pub messages: u64,
    /// What the connection carries.
    pub content: Content,
    /// The TCP layer has listed the session as established (when it stops listing it, the
    /// entry ends as `tcp_closed`; an entry never listed ends as `idle` once quiet). For a
    /// tunnel's plaintext leg: its outer session is listed.
    pub listed: bool,
    /// A plaintext leg to a tunnel (`targets[].tls_tunnel`): its outer session, or why none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelJoin>,
}

/// A tunnel's plaintext leg as the join needs it ([`Wire::tunnel_legs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leg {
    /// The leg (local: the gateway's end; remote: the tunnel's address).
    pub link: TcpLink,
    /// The target of the tunnel.
    pub target: TargetId,
    /// The kernel time of its SYN, when seen.
    pub opened: Option<SystemTime>,
    /// The kernel time of its first segment seen.
    pub first_seen: SystemTime,
    /// Its standing now.
    pub join: TunnelJoin,
}

/// Every followed connection of the watched targets.
pub struct Wire {
    targets: Targets,
    limits: Limits,
    conns: rustc_hash::FxHashMap<TcpLink, Conn>,
    /// Connections not followed because the table was full, at most [`MAX_CONNECTIONS`].
    refused: HashMap<TcpLink, Seen>,
    /// Local TLS tunnels: their plaintext legs are their targets' ([`Wire::with_tunnels`]).
    tunnels: Vec<Tunnel>,
    /// Targets whose new sessions are news ([`Wire::take_tunnel_news`]): those with a tunnel,
    /// or one to be found ([`Wire::watch_for_tunnels`]).
    tunnel_targets: HashSet<TargetId>,
    /// A leg, or a session of a target with a tunnel, was added since [`Wire::take_tunnel_news`].
    tunnel_news: bool,
    /// The legs not joined that the host lists ESTABLISHED ([`Wire::set_open_legs`]); `None`
    /// until told.
    open_legs: Option<HashSet<TcpLink>>,
    /// What it has seen so far.
    pub stats: WireStats,
}

fn idx(d: Direction) -> usize {
    match d {
        Direction::In => 0,
        Direction::Out => 1,
    }
}

impl Wire {
    /// An empty table for the connections of `targets`, each stream bounded by `limits`.
    pub fn new(targets: Targets, limits: Limits) -> Wire {
        Wire {
            targets,
            limits,
            conns: Default::default(),
            refused: HashMap::new(),
            tunnels: Vec::new(),
            tunnel_targets: HashSet::new(),
            tunnel_news: false,
            open_legs: None,
            stats: WireStats::default(),
        }
    }

    /// The targets reloaded (`remap` maps the current ones onto `targets` by name): a
    /// followed connection the same target still holds goes on (its streams, its decoders and
    /// their partial messages kept, so that no message is lost or counted twice); the others
    /// are let go, as is a tunnel whose target was removed.
    pub fn retarget(&mut self, targets: Targets, remap: &fix_monitor_core::target::Remap) {
        self.targets = targets;
        let targets = &self.targets;
        let tunnels = &self.tunnels;
        self.conns.retain(|link, c| {
            let leg = tunnels
                .iter()
                .any(|t| t.target == c.target && t.address == link.remote);
            let new = if leg {
                // A tunnel's leg is its target's by the tunnel, not by its address.
                remap.old_to_new.get(c.target).copied().flatten()
            } else {
                remap.keep(c.target, targets, &link.local, &link.remote)
            };
            match new {
                Some(t) => {
                    c.target = t;
                    true
                }
                None => false,
            }
        });
        self.tunnels.retain_mut(
            |t| match remap.old_to_new.get(t.target).copied().flatten() {
                Some(new) => {
                    t.target = new;
                    true
                }
                None => false,
            },
        );
        self.tunnel_targets = (self.tunnel_targets.iter())
            .filter_map(|&t| remap.old_to_new.get(t).copied().flatten())
            .collect();
    }

    /// Follows the plaintext legs to these tunnels as their targets' sessions.
    pub fn with_tunnels(mut self, tunnels: Vec<Tunnel>) -> Wire {
        self.tunnel_targets.extend(tunnels.iter().map(|t| t.target));
        self.tunnels = tunnels;
        self
    }

    /// Counts the new sessions of `targets` as news ([`Wire::take_tunnel_news`]): their tunnels
    /// are to be found.
    pub fn watch_for_tunnels(mut self, targets: &[TargetId]) -> Wire {
        self.tunnel_targets.extend(targets);
        self
    }

    /// Follows the plaintext legs to one more tunnel from now on. `false` (and nothing done)
    /// when a tunnel already listens there, or when the address is inside a target's network
    /// and port (its legs would be taken for that target's own sessions).
    pub fn add_tunnel(&mut self, tunnel: Tunnel) -> bool {
        let a = tunnel.address;
        let inside = (self.targets.iter())
            .any(|t| t.net.contains(&a.ip()) && t.port.is_none_or(|p| p == a.port()));
        if inside || self.tunnel_at(&a).is_some() || tunnel.target >= self.targets.len() {
            return false;
        }
        self.tunnel_targets.insert(tunnel.target);
        self.tunnels.push(tunnel);
        true
    }

    /// The tunnels whose legs it follows.
    pub fn tunnels(&self) -> &[Tunnel] {
        &self.tunnels
    }

    /// The target whose tunnel listens at `addr`.
    fn tunnel_at(&self, addr: &SocketAddr) -> Option<TargetId> {
        let plain = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        (self.tunnels.iter())
            .find(|t| t.address == plain)
            .map(|t| t.target)
    }

    /// Which target and direction a segment belongs to, and its link (the gateway's end
    /// local). A tunnel's address is looked at first: its legs are no target's own sessions.
    fn classify(&self, seg: &Segment) -> Option<(TcpLink, Direction, TargetId, bool)> {
        let out = TcpLink {
            local: seg.src,
            remote: seg.dst,
        };
        let inbound = TcpLink {
            local: seg.dst,
            remote: seg.src,
        };
        if !self.tunnels.is_empty() {
            if let Some(t) = self.tunnel_at(&seg.dst) {
                return Some((out, Direction::Out, t, true));
            }
            if let Some(t) = self.tunnel_at(&seg.src) {
                return Some((inbound, Direction::In, t, true));
            }
        }
        if let Some(t) = self.targets.classify(&seg.src, &seg.dst) {
            Some((out, Direction::Out, t, false))
        } else {
            let t = self.targets.classify(&seg.dst, &seg.src)?;
            Some((inbound, Direction::In, t, false))
        }
    }

    /// The targets whose connections it follows.
    pub fn targets(&self) -> &Targets {
        &self.targets
    }

    /// One packet (IP header first) received at `at`.
    pub fn packet(&mut self, p: &[u8], at: SystemTime, tracker: &mut Tracker) -> Vec<Event> {
        self.stats.packets += 1;
        let Some(seg) = parse_packet(p) else {
            self.stats.unparsed += 1;
            return Vec::new();
        };
        self.segment(&seg, at, tracker)
    }

    /// One TCP segment seen at `at`.
    fn segment(&mut self, seg: &Segment, at: SystemTime, tracker: &mut Tracker) -> Vec<Event> {
        let mut events = Vec::new();
        // The gateway is the local side: outbound if src is local.
        let Some((link, dir, target, leg)) = self.classify(seg) else {
            self.stats.unmatched += 1;
            return events;
        };
        if seg.flags & RST != 0 {
            self.refused.remove(&link);
            let seen = TcpEndSeen {
                first_fin: self.conns.get(&link).and_then(|c| c.first_fin),
                reset_from: Some(dir),
            };
            events.extend(self.close(link, EndReason::Reset, at, seen, tracker));
            return events;
        }
        if !self.conns.contains_key(&link) {
            if seg.flags & SYN == 0 && seg.payload.is_empty() {
                self.stats.stray += 1;
                if let Some(r) = self.refused.get_mut(&link) {
                    r.last = at;
                }
                return events;
            }
            if self.conns.len() >= MAX_CONNECTIONS {
                self.refuse(link, at);
                return events;
            }
            self.refused.remove(&link);
            self.tunnel_news |= leg || self.tunnel_targets.contains(&target);
            let limits = self.limits;
            self.conns.insert(
                link,
                Conn {
                    target,
                    streams: [Stream::new(limits), Stream::new(limits)],
                    decoders: [Decoder::new(SOH), Decoder::new(SOH)],
                    bytes: [0; 2],
                    messages: 0,
                    content: Content::Unknown,
                    fin: [false; 2],
                    first_fin: None,
                    seen: Seen::new(at),
                    opened: (seg.flags & SYN != 0).then_some(at),
                    tunnel: match leg {
                        true => Role::Leg(TunnelJoin::Pending),
                        false => Role::Direct,
                    },
                },
            );
        }
        let conn = self.conns.get_mut(&link).expect("inserted above");
        conn.seen.last = conn.seen.last.max(at);
        let mut chunks = Vec::new();
        conn.streams[idx(dir)].push(seg.seq, seg.flags & SYN != 0, seg.payload, at, &mut chunks);
        let origin = Origin {
            target: Some(self.targets.get(conn.target).name.as_str()),
            tcp: Some(link),
        };
        feed(
            conn,
            dir,
            chunks,
            at,
            &origin,
            tracker,
            &mut self.stats,
            &mut events,
        );
        if seg.flags & FIN != 0 {
            conn.fin[idx(dir)] = true;
            conn.first_fin = conn.first_fin.or(Some(dir));
            if conn.fin == [true; 2] {
                let seen = TcpEndSeen {
                    first_fin: conn.first_fin,
                    reset_from: None,
                };
                events.extend(self.close(link, EndReason::Fin, at, seen, tracker));
            }
        }
        events
    }

    /// Declare gaps for holes older than the hold time.
    pub fn tick(&mut self, now: SystemTime, tracker: &mut Tracker) -> Vec<Event> {
        let mut events = Vec::new();
        for (link, conn) in self.conns.iter_mut() {
            for dir in [Direction::In, Direction::Out] {
                let mut chunks = Vec::new();
                conn.streams[idx(dir)].tick(now, &mut chunks);
                if chunks.is_empty() {
                    continue;
                }
                let origin = Origin {
                    target: Some(self.targets.get(conn.target).name.as_str()),
                    tcp: Some(*link),
                };
                feed(
                    conn,
                    dir,
                    chunks,
                    now,
                    &origin,
                    tracker,
                    &mut self.stats,
                    &mut events,
                );
            }
        }
        events
    }

    /// A link seen while the table is full: counted once, remembered while there is room in
    /// the second table (beyond that only its packets are counted).
    fn refuse(&mut self, link: TcpLink, at: SystemTime) {
        self.stats.over_cap += 1;
        if let Some(r) = self.refused.get_mut(&link) {
            r.last = at;
            return;
        }
        if self.refused.len() < MAX_CONNECTIONS {
            self.refused.insert(link, Seen::new(at));
            self.stats.not_followed += 1;
        }
    }

    /// Agree with the TCP layer: `live` holds the sessions of the targets it lists ESTABLISHED
    /// now (as `TcpLink`s, IPv4-mapped addresses made plain). An entry it saw and no longer
    /// lists is closed [`CLOSE_GRACE`] after its last segment; one it never listed is dropped
    /// after `idle` without a segment. Returns the ends ([`Event::LinkEnded`]).
    pub fn reconcile(
        &mut self,
        live: &HashSet<TcpLink>,
        now: SystemTime,
        idle: Duration,
        tracker: &mut Tracker,
    ) -> Vec<Event> {
        let mut gone = Vec::new();
        let open_legs = self.open_legs.as_ref();
        for (link, c) in self.conns.iter_mut() {
            // A joined leg lives as long as its outer session, another while the host lists it.
            let listed = match c.tunnel {
                Role::Leg(TunnelJoin::Joined { outer, .. }) => live.contains(&outer),
                Role::Leg(_) => open_legs.is_some_and(|o| o.contains(link)),
                _ => live.contains(link),
            };
            if let Some(why) = c.seen.expired(listed, now, idle) {
                gone.push((*link, why));
            }
        }
        self.refused
            .retain(|link, seen| seen.expired(live.contains(link), now, idle).is_none());
        let mut events = Vec::new();
        for (link, why) in gone {
            let first_fin = self.conns.get(&link).and_then(|c| c.first_fin);
            let seen = TcpEndSeen {
                first_fin,
                reset_from: None,
            };
            events.extend(self.close(link, why, now, seen, tracker));
        }
        events
    }

    /// End a followed connection: its FIX sessions are told, and the end is returned.
    fn close(
        &mut self,
        link: TcpLink,
        why: EndReason,
        at: SystemTime,
        seen: TcpEndSeen,
        tracker: &mut Tracker,
    ) -> Option<Event> {
        let c = self.conns.remove(&link)?;
        for s in &c.streams {
            add_stream_stats(&mut self.stats.streams, &s.stats);
        }
        self.stats.ended.add(why);
        let mut end = tracker.tcp_closed(link, at, seen);
        match c.tunnel {
            // Its leg's account stands for it.
            Role::Outer(_) => return None,
            // The FIX account of the outer session's end.
            Role::Leg(TunnelJoin::Joined { outer, .. }) => end.link = outer,
            Role::Leg(_) | Role::Direct => {}
        }
        Some(Event::LinkEnded(Box::new(end)))
    }

    /// Whether a plaintext leg, or a session of a target with a tunnel, was added since the
    /// last call: the moment to join them, while the tunnel's sockets are still open (a
    /// session may last less than a round).
    pub fn take_tunnel_news(&mut self) -> bool {
        std::mem::take(&mut self.tunnel_news)
    }

    /// The legs not joined that the host lists ESTABLISHED now (its socket table, read by the
    /// caller): they live while listed, and end [`CLOSE_GRACE`] after their last segment once
    /// no longer listed, as the TCP layer's sessions do; a leg never listed ends when idle.
    pub fn set_open_legs(&mut self, open: HashSet<TcpLink>) {
        self.open_legs = Some(open);
    }

    /// The tunnels' plaintext legs followed now, in no particular order.
    pub fn tunnel_legs(&self) -> Vec<Leg> {
        (self.conns.iter())
            .filter_map(|(link, c)| match c.tunnel {
                Role::Leg(join) => Some(Leg {
                    link: *link,
                    target: c.target,
                    opened: c.opened,
                    first_seen: c.seen.first,
                    join,
                }),
                _ => None,
            })
            .collect()
    }

    /// The sessions of `target` a leg may be joined to: its own sessions (no tunnel's leg),
    /// carrying no FIX, that no leg was joined to. `pid` is left unknown.
    pub fn outer_candidates(&self, target: TargetId) -> Vec<Side> {
        (self.conns.iter())
            .filter(|(_, c)| c.target == target && c.tunnel == Role::Direct)
            .filter(|(_, c)| c.content != Content::Fix)
            .map(|(link, c)| Side {
                link: *link,
                opened: c.opened,
                pid: None,
            })
            .collect()
    }

    /// Records a leg's standing; a join claims its outer session (which must be followed and
    /// unclaimed: otherwise nothing changes and `false` is returned).
    pub fn set_join(&mut self, leg: &TcpLink, join: TunnelJoin) -> bool {
        if !matches!(self.conns.get(leg).map(|c| c.tunnel), Some(Role::Leg(_))) {
            return false;
        }
        if let TunnelJoin::Joined { outer, .. } = join {
            match self.conns.get_mut(&outer) {
                Some(o) if o.tunnel == Role::Direct => o.tunnel = Role::Outer(*leg),
                _ => return false,
            }
        }
        if let Some(c) = self.conns.get_mut(leg) {
            c.tunnel = Role::Leg(join);
        }
        true
    }

    /// Whether the connection `link` is followed now.
    pub fn follows(&self, link: &TcpLink) -> bool {
        self.conns.contains_key(link)
    }

    /// How many connections are followed now.
    pub fn followed(&self) -> usize {
        self.conns.len()
    }

    /// How many connections not followed (the table was full) are remembered now.
    pub fn refused(&self) -> usize {
        self.refused.len()
    }

    /// The connections followed now.
    pub fn connections(&self) -> Vec<ConnView> {
        let mut v: Vec<_> = self
            .conns
            .iter()
            .map(|(l, c)| ConnView {
                target: self.targets.get(c.target).name.clone(),
                local: l.local,
                remote: l.remote,
                bytes_in: c.bytes[0],
                bytes_out: c.bytes[1],
                messages: c.messages,
                content: c.content,
                listed: c.seen.by_tcp,
                tunnel: match c.tunnel {
                    Role::Leg(join) => Some(join),
                    _ => None,
                },
            })
            .collect();
        v.sort_by_key(|c| (c.target.clone(), c.local, c.remote));
        v
    }

    /// Stream counts of open and closed connections together.
    pub fn stream_stats(&self) -> StreamStats {
        let mut s = self.stats.streams;
        for c in self.conns.values() {
            for st in &c.streams {
                add_stream_stats(&mut s, &st.stats);
            }
        }
        s
    }
}

fn add_stream_stats(to: &mut StreamStats, s: &StreamStats) {
    to.bytes += s.bytes;
    to.retransmitted_segments += s.retransmitted_segments;
    to.overlap_bytes += s.overlap_bytes;
    to.out_of_order_segments += s.out_of_order_segments;
    to.gaps += s.gaps;
    to.gap_bytes += s.gap_bytes;
}

#[allow(clippy::too_many_arguments)]
fn feed(
    conn: &mut Conn,
    dir: Direction,
    chunks: Vec<Chunk<'_>>,
    at: SystemTime,
    origin: &Origin,
    tracker: &mut Tracker,
    stats: &mut WireStats,
    events: &mut Vec<Event>,
) {
    let d = idx(dir);
    for chunk in chunks {
        let dec = &mut conn.decoders[d];
        let before = dec.stats;
        match chunk {
            Chunk::Gap(n) => {
                dec.reset();
                stats.bytes_skipped += n;
            }
            Chunk::Data(bytes) => {
                if conn.bytes[d] == 0 && conn.content == Content::Unknown && is_tls(&bytes) {
                    conn.content = Content::Tls;
                }
                conn.bytes[d] += bytes.len() as u64;
                dec.feed(&bytes);
                while let Some(x) = dec.next_message() {
                    if let Decoded::Message(m) = x {
                        conn.messages += 1;
                        conn.content = Content::Fix;
                        tracker.observe_into(&m, dir, at, origin, events);
                    }
                }
            }
        }
        let after = conn.decoders[d].stats;
        stats.messages += after.messages - before.messages;
        stats.malformed += after.malformed - before.malformed;
        stats.bytes_skipped += after.bytes_skipped - before.bytes_skipped;
    }
    if conn.content == Content::Unknown && conn.bytes[d] >= NO_FIX_AFTER {
        conn.content = Content::NoFixFound;
    }
}

/// A TLS record header starting a stream: handshake (22), version 3.x.
fn is_tls(b: &[u8]) -> bool {
    b.len() >= 3 && b[0] == 0x16 && b[1] == 0x03 && b[2] <= 0x04
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::write;
    use crate::sim::ipv4_tcp;
    use crate::tracker::Limits as TrackerLimits;
    use fix_monitor_core::Target;
    use std::time::Duration;

    fn targets() -> Targets {
        Targets::new(vec![Target {
            name: "venue".into(),
            net: "10.0.0.2/32".parse().unwrap(),
            port: Some(9878),
            local_ports: None,
            heartbeat: None,
            stale_after: None,
        }])
    }

    fn fixmsg(from: &str, to: &str, mt: &str, seq: u32, extra: &[(u32, &[u8])]) -> Vec<u8> {
        let s = seq.to_string();
        let mut f: Vec<(u32, &[u8])> = vec![
            (35, mt.as_bytes()),
            (49, from.as_bytes()),
            (56, to.as_bytes()),
            (34, s.as_bytes()),
        ];
        f.extend_from_slice(extra);
        write("FIX.4.4", &f, SOH)
    }

    #[test]
    fn messages_split_reordered_and_lost_on_the_wire() {
        let gw: SocketAddr = "10.0.0.1:40000".parse().unwrap();
        let venue: SocketAddr = "10.0.0.2:9878".parse().unwrap();
        let mut w = Wire::new(targets(), Limits::default());
        let mut tr = Tracker::new(TrackerLimits::default());
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // Our side: SYN, Logon split mid-message into 3 segments sent out of order, one
        // retransmitted.
        w.packet(&ipv4_tcp(gw, venue, 999, SYN, b""), ms(0), &mut tr);
        let logon = fixmsg("GW", "V", "A", 1, &[(108, b"30")]);
        let (a, rest) = logon.split_at(10);
        let (b, c) = rest.split_at(15);
        w.packet(&ipv4_tcp(gw, venue, 1000, 0, a), ms(1), &mut tr);
        w.packet(&ipv4_tcp(gw, venue, 1025, 0, c), ms(1), &mut tr);
        w.packet(&ipv4_tcp(gw, venue, 1000, 0, a), ms(1), &mut tr);
        assert_eq!(w.stats.messages, 0);
        w.packet(&ipv4_tcp(gw, venue, 1010, 0, b), ms(2), &mut tr);
        assert_eq!(w.stats.messages, 1);
        // Their side starts mid-stream (capture began late): junk, then a Logon.
        let mut theirs = b"=2\x0110=123\x01".to_vec();
        theirs.extend(fixmsg("V", "GW", "A", 1, &[(108, b"30")]));
        w.packet(&ipv4_tcp(venue, gw, 5000, 0, &theirs), ms(3), &mut tr);
        let s = tr.by_label("GW->V").unwrap();
        assert!(s.logged_on());
        assert_eq!(s.target.as_deref(), Some("venue"));
        // A lost segment: heartbeat 2 is lost, 3 arrives; after the hold time, a gap, the
        // decoder resynchronises and the tracker sees a sequence gap.
        let hb2 = fixmsg("V", "GW", "0", 2, &[]);
        let hb3 = fixmsg("V", "GW", "0", 3, &[]);
        let seq2 = 5000 + theirs.len() as u32;
        // Cut 5 bytes into hb2 so that the held data starts mid-message.
        let mut after = hb2[5..].to_vec();
        after.extend(&hb3);
        w.packet(&ipv4_tcp(venue, gw, seq2 + 5, 0, &after), ms(4), &mut tr);
        w.tick(ms(100), &mut tr);
        assert_eq!(w.stats.messages, 2);
        w.tick(ms(600), &mut tr);
        assert_eq!(w.stats.messages, 3);
        let s = tr.by_label("GW->V").unwrap();
        assert_eq!(s.dir(Direction::In).sequence_gaps, 1);
        assert_eq!(w.stream_stats().gaps, 1);
        assert_eq!(w.stream_stats().retransmitted_segments, 1);
        // 5 lost, plus the 10 leading junk bytes and hb2's remainder skipped.
        assert_eq!(w.stats.bytes_skipped, 5 + 10 + (hb2.len() as u64 - 5));
        let conns = w.connections();
        assert_eq!(conns.len(), 1);
        assert_eq!(conns[0].content, Content::Fix);
        // FIN both ways: the connection ends, its session is logged out.
        w.packet(
            &ipv4_tcp(gw, venue, 1000 + logon.len() as u32, FIN, b""),
            ms(700),
            &mut tr,
        );
        assert_eq!(w.connections().len(), 1);
        let end = seq2 + (hb2.len() + hb3.len()) as u32;
        let events = w.packet(&ipv4_tcp(venue, gw, end, FIN, b""), ms(701), &mut tr);
        assert!(w.connections().is_empty());
        assert!(!tr.by_label("GW->V").unwrap().logged_on());
        // The end, as the FIX layer reports it: we sent the first FIN, at the second's time.
        let [Event::LinkEnded(e)] = &events[..] else {
            panic!("one end expected: {events:?}")
        };
        assert_eq!((e.link.local, e.link.remote, e.at), (gw, venue, ms(701)));
        assert_eq!(e.seen.first_fin, Some(Direction::Out));
        assert_eq!(e.seen.reset_from, None);
        assert_eq!(e.fix.as_ref().unwrap().session.label(), "GW->V");
    }

    #[test]
    fn a_reset_names_the_side_that_sent_it() {
        let gw: SocketAddr = "10.0.0.1:40002".parse().unwrap();
        let venue: SocketAddr = "10.0.0.2:9878".parse().unwrap();
        let mut w = Wire::new(targets(), Limits::default());
        let mut tr = Tracker::new(TrackerLimits::default());
        let ms = |n: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(n);
        w.packet(&ipv4_tcp(gw, venue, 99, SYN, b""), ms(0), &mut tr);
        w.packet(&ipv4_tcp(venue, gw, 500, FIN, b""), ms(1), &mut tr);
        let events = w.packet(&ipv4_tcp(venue, gw, 501, RST, b""), ms(2), &mut tr);
        let [Event::LinkEnded(e)] = &events[..] else {
            panic!("one end expected: {events:?}")
        };
        assert_eq!(e.seen.reset_from, Some(Direction::In));
        assert_eq!(e.seen.first_fin, Some(Direction::In));
        assert_eq!(e.fix, None);
        // A reset of a link no longer followed ends nothing.
        assert!(w
            .packet(&ipv4_tcp(gw, venue, 100, RST, b""), ms(3), &mut tr)
            .is_empty());
    }

    #[test]
    fn tls_and_unknown_bytes_say_no_fix_found() {
        let gw: SocketAddr = "10.0.0.1:40001".parse().unwrap();
        let venue: SocketAddr = "10.0.0.2:9878".parse().unwrap();
        let other: SocketAddr = "10.0.0.3:9878".parse().unwrap();
        let mut w = Wire::new(targets(), Limits::default());
        let mut tr = Tracker::new(TrackerLimits::default());
        let t = SystemTime::UNIX_EPOCH;
        let mut hello = vec![0x16, 0x03, 0x01, 0x02, 0x00];
        hello.extend(vec![0xab; 512]);
        w.packet(&ipv4_tcp(gw, venue, 1, 0, &hello), t, &mut tr);
        assert_eq!(w.connections()[0].content, Content::Tls);
        let gw2: SocketAddr = "10.0.0.1:40002".parse().unwrap();
        for i in 0..5u32 {
            w.packet(
                &ipv4_tcp(gw2, venue, 1 + i * 1000, 0, &[0x42; 1000]),
                t,
                &mut tr,
            );
        }
        let c = w.connections();
        assert_eq!(c[1].content, Content::NoFixFound);
        assert_eq!(c[1].bytes_out, 5000);
        w.packet(&ipv4_tcp(gw, other, 1, 0, b"x"), t, &mut tr);
        w.packet(&[0x45, 0], t, &mut tr);
        assert_eq!(w.stats.unmatched, 1);
        assert_eq!(w.stats.unparsed, 1);
        assert_eq!(tr.sessions().count(), 0);
    }

    const ACK: u8 = 0;

    /// A whole TCP session on the wire, as a clean close leaves it: SYN, SYN-ACK, a Logon
    /// each way, FIN each way, then the last ACK.
    fn clean_session(w: &mut Wire, tr: &mut Tracker, gw: SocketAddr, at: SystemTime) {
        let venue: SocketAddr = "10.0.0.2:9878".parse().unwrap();
        let out = fixmsg("GW", "V", "A", 1, &[(108, b"30")]);
        let inb = fixmsg("V", "GW", "A", 1, &[(108, b"30")]);
        w.packet(&ipv4_tcp(gw, venue, 99, SYN, b""), at, tr);
        w.packet(&ipv4_tcp(venue, gw, 499, SYN, b""), at, tr);
        w.packet(&ipv4_tcp(gw, venue, 100, ACK, &out), at, tr);
        w.packet(&ipv4_tcp(venue, gw, 500, ACK, &inb), at, tr);
        w.packet(
            &ipv4_tcp(gw, venue, 100 + out.len() as u32, FIN, b""),
            at,
            tr,
        );
        w.packet(
            &ipv4_tcp(venue, gw, 500 + inb.len() as u32, FIN, b""),
            at,
            tr,
        );
        // The last ACK, after both FINs: it must not bring the connection back.
        w.packet(
            &ipv4_tcp(gw, venue, 101 + out.len() as u32, ACK, b""),
            at,
            tr,
        );
    }

    #[test]
    fn clean_closes_leave_no_ghost_connections() {
        // Issue 17: the last ACK of every clean close made a new entry that nothing removed.
        let mut w = Wire::new(targets(), Limits::default());
        let mut tr = Tracker::new(TrackerLimits::default());
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        for port in 0..6000u16 {
            let gw = SocketAddr::from(([10, 0, 0, 1], 20000 + port));
            clean_session(&mut w, &mut tr, gw, t);
        }
        assert_eq!(w.followed(), 0);
        assert_eq!(w.stats.ended.fin, 6000);
        assert_eq!(w.stats.stray, 6000);
        assert_eq!((w.stats.over_cap, w.stats.not_followed), (0, 0));
        assert_eq!(tr.by_label("GW->V").unwrap().logons, 6000);
        // A session opened afterwards is followed and decoded.
        let before = w.stats.messages;
        clean_session(&mut w, &mut tr, "10.0.0.1:40000".parse().unwrap(), t);
        assert_eq!(w.stats.messages, before + 2);
    }

    #[test]
    fn bare_segments_of_a_link_not_followed_create_nothing() {
        let gw: SocketAddr = "10.0.0.1:40000".parse().unwrap();
        let venue: SocketAddr = "10.0.0.2:9878".parse().unwrap();
        let mut w = Wire::new(targets(), Limits::default());
        let mut tr = Tracker::new(TrackerLimits::default());
        let t = SystemTime::UNIX_EPOCH;
        // A keep-alive, a retransmitted FIN, a bare ACK, an RST: nothing to follow.
        w.packet(&ipv4_tcp(gw, venue, 7, ACK, b""), t, &mut tr);
        w.packet(&ipv4_tcp(venue, gw, 9, FIN, b""), t, &mut tr);
        w.packet(&ipv4_tcp(venue, gw, 9, ACK, b""), t, &mut tr);
        w.packet(&ipv4_tcp(venue, gw, 9, RST, b""), t, &mut tr);
        assert_eq!(w.followed(), 0);
        assert_eq!(w.stats.stray, 3);
        assert_eq!(w.stats.ended, Ended::default());
        // Payload (capture started mid-session) or a SYN does start one.
        w.packet(&ipv4_tcp(venue, gw, 9, ACK, b"x"), t, &mut tr);
        assert_eq!(w.followed(), 1);
        w.packet(&ipv4_tcp(venue, gw, 10, RST, b""), t, &mut tr);
        assert_eq!((w.followed(), w.stats.ended.reset), (0, 1));
    }

    #[test]
    fn reconcile_ends_what_the_tcp_layer_saw_close_and_drops_idle_strangers() {
        let venue: SocketAddr = "10.0.0.2:9878".parse().unwrap();
        let (a, b, c) = (
            SocketAddr::from(([10, 0, 0, 1], 40001)),
            SocketAddr::from(([10, 0, 0, 1], 40002)),
            SocketAddr::from(([10, 0, 0, 1], 40003)),
        );
        let link = |local| TcpLink {
            local,
            remote: venue,
        };
        let mut w = Wire::new(targets(), Limits::default());
        let mut tr = Tracker::new(TrackerLimits::default());
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let s = |n: u64| t0 + Duration::from_secs(n);
        let idle = Duration::from_secs(10);
        // a: logged on, listed by the TCP layer; its FINs are never seen (capture behind).
        let logon_out = fixmsg("GW", "V", "A", 1, &[(108, b"30")]);
        let logon_in = fixmsg("V", "GW", "A", 1, &[(108, b"30")]);
        w.packet(&ipv4_tcp(a, venue, 1, ACK, &logon_out), s(0), &mut tr);
        w.packet(&ipv4_tcp(venue, a, 1, ACK, &logon_in), s(0), &mut tr);
        // b: listed, and stays. c: never listed (a stranger, or newer than the last poll).
        w.packet(&ipv4_tcp(b, venue, 1, SYN, b""), s(0), &mut tr);
        w.packet(&ipv4_tcp(c, venue, 1, SYN, b""), s(0), &mut tr);
        let both: HashSet<_> = [link(a), link(b)].into();
        assert_eq!(w.reconcile(&both, s(0), idle, &mut tr).len(), 0);
        assert!(tr.by_label("GW->V").unwrap().logged_on());
        // a leaves the TCP layer's list: ended once its grace after the last segment is over.
        let only_b: HashSet<_> = [link(b)].into();
        w.packet(&ipv4_tcp(a, venue, 1, ACK, b"late"), s(5), &mut tr);
        assert_eq!(w.reconcile(&only_b, s(5), idle, &mut tr).len(), 0);
        assert_eq!(w.reconcile(&only_b, s(6), idle, &mut tr).len(), 1);
        assert_eq!(w.stats.ended.tcp_closed, 1);
        let sess = tr.by_label("GW->V").unwrap();
        assert!(!sess.logged_on());
        assert_eq!(sess.disconnects, 1);
        // c: idle for less than the bound stays, then goes; b, listed, stays however idle.
        assert_eq!(w.reconcile(&only_b, s(9), idle, &mut tr).len(), 0);
        assert_eq!(w.reconcile(&only_b, s(10), idle, &mut tr).len(), 1);
        assert_eq!(w.stats.ended.idle, 1);
        assert_eq!(w.reconcile(&only_b, s(10_000), idle, &mut tr).len(), 0);
        let left: Vec<_> = w.connections().iter().map(|c| c.local).collect();
        assert_eq!(left, vec![b]);
    }

    /// A tunnel's plaintext leg (gateway -> 127.0.0.2:7001) is its target's: its FIX session
    /// carries the target's name; the outer TLS session is a join candidate until claimed;
    /// the joined leg lives while the TCP layer lists the outer session, and its end is
    /// reported once, as the outer session's, with the FIX account; the outer's own end is not.
    #[test]
    fn a_tunnels_plaintext_leg_is_its_targets_and_ends_as_its_outer_session() {
        use crate::tunnel::{JoinBasis, Tunnel};
        let tunnel: SocketAddr = "127.0.0.2:7001".parse().unwrap();
        let gw: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let (stunnel, venue): (SocketAddr, SocketAddr) = (
            "10.0.0.1:50000".parse().unwrap(),
            "10.0.0.2:9878".parse().unwrap(),
        );
        let leg = TcpLink {
            local: gw,
            remote: tunnel,
        };
        let outer = TcpLink {
            local: stunnel,
            remote: venue,
        };
        let mut w = Wire::new(targets(), Limits::default()).with_tunnels(vec![Tunnel {
            address: tunnel,
            target: 0,
        }]);
        let mut tr = Tracker::new(TrackerLimits::default());
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ms = |n: u64| t0 + Duration::from_millis(n);
        w.packet(&ipv4_tcp(gw, tunnel, 0, SYN, b""), ms(0), &mut tr);
        w.packet(&ipv4_tcp(stunnel, venue, 0, SYN, b""), ms(2), &mut tr);
        let tls = [0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5];
        w.packet(&ipv4_tcp(stunnel, venue, 1, ACK, &tls), ms(3), &mut tr);
        let logon_out = fixmsg("GW", "V", "A", 1, &[(108, b"30")]);
        let logon_in = fixmsg("V", "GW", "A", 1, &[(108, b"30")]);
        w.packet(&ipv4_tcp(gw, tunnel, 1, ACK, &logon_out), ms(4), &mut tr);
        w.packet(&ipv4_tcp(tunnel, gw, 1, ACK, &logon_in), ms(20), &mut tr);
        let s = tr.by_label("GW->V").unwrap();
        assert!(s.logged_on());
        assert_eq!((s.target.as_deref(), s.tcp), (Some("venue"), Some(leg)));
        let legs = w.tunnel_legs();
        assert_eq!(legs.len(), 1);
        assert_eq!(
            (legs[0].link, legs[0].opened, legs[0].join),
            (leg, Some(ms(0)), TunnelJoin::Pending)
        );
        let cands = w.outer_candidates(0);
        assert_eq!(
            (cands.len(), cands[0].link, cands[0].opened),
            (1, outer, Some(ms(2)))
        );
        let join = TunnelJoin::Joined {
            outer,
            basis: JoinBasis::Process,
        };
        assert!(!w.set_join(&outer, join), "only a leg takes a join");
        assert!(w.set_join(&leg, join));
        assert!(w.outer_candidates(0).is_empty(), "claimed");
        let views = w.connections();
        let leg_view = views.iter().find(|c| c.remote == tunnel).unwrap();
        assert_eq!(
            (leg_view.tunnel, leg_view.target.as_str()),
            (Some(join), "venue")
        );
        // Listed while the outer session is; the outer's end (a FIN each way) says nothing.
        let idle = Duration::from_secs(10);
        let live: HashSet<_> = [outer].into();
        assert!(w.reconcile(&live, ms(60_000), idle, &mut tr).is_empty());
        assert!(w.connections().iter().all(|c| c.listed));
        assert!(w
            .packet(
                &ipv4_tcp(venue, stunnel, 9, FIN | ACK, b""),
                ms(60_001),
                &mut tr
            )
            .is_empty());
        assert!(w
            .packet(
                &ipv4_tcp(stunnel, venue, 99, FIN | ACK, b""),
                ms(60_002),
                &mut tr
            )
            .is_empty());
        // The leg goes once the outer session is gone from the list (and it has been quiet
        // for the grace): one end, the outer's.
        let none = HashSet::new();
        let ends = w.reconcile(&none, ms(61_100), idle, &mut tr);
        let [Event::LinkEnded(e)] = &ends[..] else {
            panic!("{ends:?}")
        };
        assert_eq!(e.link, outer);
        assert_eq!(
            e.fix.as_ref().map(|f| f.session.label()),
            Some("GW->V".into())
        );
        assert_eq!(w.followed(), 0);
    }

    /// A leg not joined (pending, ambiguous) is not the TCP layer's: it lives while the host
    /// lists it ESTABLISHED, however quiet (a FIX heartbeat is longer than the idle bound), and
    /// ends once no longer listed, with its FIX account under its own addresses.
    #[test]
    fn an_unjoined_leg_lives_while_the_host_lists_it() {
        use crate::tunnel::Tunnel;
        let tunnel: SocketAddr = "127.0.0.2:7001".parse().unwrap();
        let gw: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let leg = TcpLink {
            local: gw,
            remote: tunnel,
        };
        let mut w = Wire::new(targets(), Limits::default()).with_tunnels(vec![Tunnel {
            address: tunnel,
            target: 0,
        }]);
        let mut tr = Tracker::new(TrackerLimits::default());
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let s = |n: u64| t0 + Duration::from_secs(n);
        let logon = fixmsg("GW", "V", "A", 1, &[(108, b"30")]);
        w.packet(&ipv4_tcp(gw, tunnel, 1, ACK, &logon), s(0), &mut tr);
        assert!(w.take_tunnel_news());
        assert!(!w.take_tunnel_news(), "told once");
        let (idle, none) = (Duration::from_secs(10), HashSet::new());
        w.set_open_legs([leg].into());
        assert!(w.reconcile(&none, s(25), idle, &mut tr).is_empty());
        assert_eq!(w.followed(), 1, "quiet for 25 s, still listed by the host");
        w.set_open_legs(HashSet::new());
        let ends = w.reconcile(&none, s(26), idle, &mut tr);
        let [Event::LinkEnded(e)] = &ends[..] else {
            panic!("{ends:?}")
        };
        assert_eq!(e.link, leg);
        assert_eq!(w.stats.ended.tcp_closed, 1);
    }

    #[test]
    fn a_full_table_counts_each_connection_not_followed_once_and_takes_it_when_room_frees() {
        let venue: SocketAddr = "10.0.0.2:9878".parse().unwrap();
        let gw = |i: usize| SocketAddr::from(([10, 0, 0, 1], 10000 + i as u16));
        let mut w = Wire::new(targets(), Limits::default());
        let mut tr = Tracker::new(TrackerLimits::default());
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        for i in 0..MAX_CONNECTIONS {
            w.packet(&ipv4_tcp(gw(i), venue, 1, SYN, b""), t, &mut tr);
        }
        assert_eq!(w.followed(), MAX_CONNECTIONS);
        // Three more connections, five segments each: three not followed, 15 packets.
        for i in MAX_CONNECTIONS..MAX_CONNECTIONS + 3 {
            w.packet(&ipv4_tcp(gw(i), venue, 1, SYN, b""), t, &mut tr);
            for n in 0..4u32 {
                w.packet(&ipv4_tcp(gw(i), venue, 2 + n, ACK, b"x"), t, &mut tr);
            }
        }
        assert_eq!((w.stats.not_followed, w.stats.over_cap), (3, 15));
        assert_eq!(w.refused(), 3);
        // One followed connection resets: the next data of a waiting one is followed.
        w.packet(&ipv4_tcp(gw(0), venue, 2, RST, b""), t, &mut tr);
        let hb = fixmsg("GW", "V", "0", 7, &[]);
        w.packet(
            &ipv4_tcp(gw(MAX_CONNECTIONS), venue, 6, ACK, &hb),
            t,
            &mut tr,
        );
        assert_eq!((w.followed(), w.refused()), (MAX_CONNECTIONS, 2));
        assert_eq!(w.stats.messages, 1);
        // The waiting ones end as followed ones do: by the TCP layer's view, or idle.
        let live: HashSet<TcpLink> = HashSet::new();
        w.reconcile(
            &live,
            t + Duration::from_secs(60),
            Duration::from_secs(10),
            &mut tr,
        );
        assert_eq!((w.followed(), w.refused()), (0, 0));
        assert_eq!(w.stats.not_followed, 3);
    }

    proptest::proptest! {
        #[test]
        fn any_packet_never_panics(p in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120)) {
            let mut w = Wire::new(targets(), Limits::default());
            let mut tr = Tracker::new(TrackerLimits::default());
            w.packet(&p, SystemTime::UNIX_EPOCH, &mut tr);
        }
    }
}
