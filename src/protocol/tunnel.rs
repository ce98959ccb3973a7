//! Sessions behind a local TLS tunnel: which outer TCP session carries a plaintext leg.
//!
//! The gateway speaks plaintext FIX to a local tunnel (stunnel: `targets[].tls_tunnel`), which
//! holds the TLS session to the venue. The wire reads FIX on the plaintext leg (gateway ->
//! tunnel, on loopback); the TCP layer watches the outer leg (tunnel -> venue). The tunnel
//! process owns two sockets per session: the one it accepted (the plaintext leg's other end)
//! and the one it connected (the outer leg). [`decide`] joins a leg to an outer session from
//! what is known of each side: the process owning it (`/proc/PID/fd`, looked up by the
//! sidecar) and when it opened (the kernel timestamp of its SYN, when the capture saw it).
//!
//! # What is certain
//! - **One leg and one outer session owned by the tunnel process**: the tunnel relays between
//!   them, nothing else is possible ([`JoinBasis::Process`]).
//! - **Several**: a tunnel opens its outer session after it accepted the plaintext one (stunnel
//!   connects when a client arrives), so an outer session opened at `t` belongs to a leg
//!   opened before `t`. When exactly one leg of that process opened before `t` (within
//!   [`WINDOW`]) and is not joined yet, the join is [`JoinBasis::ProcessAndTiming`]: certain as
//!   long as the tunnel connects after it accepts, which a tunnel that pre-opens outer
//!   sessions would break. Two accepts before either outer session opened cannot be told
//!   apart: [`TunnelJoin::Ambiguous`], never a guess.
//! - **No process known** (the lookup cannot read the tunnel's `/proc/PID/fd`): timing alone
//!   among every outer session of the target ([`JoinBasis::Timing`]); another program
//!   connecting to the venue at that moment could be taken for the tunnel. Without timing
//!   either (sessions open before the sidecar started) it stays ambiguous.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use crate::tracker::TcpLink;

/// The longest time from a plaintext accept to the outer session's SYN that is taken for
/// the tunnel connecting on behalf of that accept (stunnel connects at once; a DNS lookup or
/// a slow connect retry may take seconds).
pub const WINDOW: Duration = Duration::from_secs(5);

/// What joined a plaintext leg to its outer session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinBasis {
    /// The only outer session and the only plaintext leg of the tunnel process.
    Process,
    /// Among several of the tunnel process, the only leg that opened before it.
    ProcessAndTiming,
    /// No process known: the only leg of the target that opened before it.
    Timing,
}

/// Where a plaintext leg stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "join")]
pub enum TunnelJoin {
    /// No outer session found for it yet (the tunnel may still be connecting).
    Pending,
    /// Joined to its outer session.
    Joined {
        /// The outer session (tunnel -> venue), as the TCP layer lists it.
        outer: TcpLink,
        /// What joined them.
        basis: JoinBasis,
    },
    /// Several outer sessions could be its own, and nothing tells which.
    Ambiguous {
        /// How many could.
        candidates: usize,
    },
}

/// One side as [`decide`] sees it: a plaintext leg or an outer session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Side {
    /// The connection, as the wire keys it (the gateway's or the tunnel's end local).
    pub link: TcpLink,
    /// The kernel time of its SYN, when the capture saw it.
    pub opened: Option<SystemTime>,
    /// The process owning the tunnel's socket of it: for a leg the accepted socket, for an
    /// outer session the connected one. `None` when the lookup could not tell.
    pub pid: Option<u32>,
}

/// Joins each leg of `legs` (the plaintext legs of one target not joined yet) to one of
/// `outers` (the target's sessions that carry no FIX and no leg claimed), by the rules of the
/// module docs. Legs are taken in the order they opened; an outer session joined to one is
/// not offered to the next. Returns each leg's standing, in the order of `legs`.
pub fn decide(legs: &[Side], outers: &[Side]) -> Vec<TunnelJoin> {
    let mut order: Vec<usize> = (0..legs.len()).collect();
    order.sort_by_key(|&i| (legs[i].opened.is_none(), legs[i].opened));
    let mut claimed = vec![false; outers.len()];
    let mut joined = vec![false; legs.len()];
    let mut out = vec![TunnelJoin::Pending; legs.len()];
    for i in order {
        let leg = &legs[i];
        // The tunnel's own sessions when its process is known, else every one of the target.
        let same = |s: &Side| leg.pid.is_none() || s.pid == leg.pid;
        let count = |sides: &[Side]| sides.iter().filter(|s| same(s)).count();
        // The process has one of each, before anything was joined in this round.
        let single = leg.pid.is_some() && count(outers) == 1 && count(legs) == 1;
        let candidates: Vec<usize> = (0..outers.len())
            .filter(|&o| !claimed[o] && same(&outers[o]))
            .collect();
        let peers: Vec<usize> = (0..legs.len())
            .filter(|&l| !joined[l] && same(&legs[l]))
            .collect();
        let pick = match &candidates[..] {
            [] => continue,
            [o] if single => Some((*o, JoinBasis::Process)),
            _ => by_timing(leg, legs, outers, &candidates, &peers).map(|o| {
                let basis = match leg.pid {
                    Some(_) => JoinBasis::ProcessAndTiming,
                    None => JoinBasis::Timing,
                };
                (o, basis)
            }),
        };
        out[i] = match pick {
            Some((o, basis)) => {
                claimed[o] = true;
                joined[i] = true;
                TunnelJoin::Joined {
                    outer: outers[o].link,
                    basis,
                }
            }
            None => TunnelJoin::Ambiguous {
                candidates: candidates.len(),
            },
        };
    }
    out
}

/// The first candidate opened after `leg` (within [`WINDOW`]), if `leg` is the only one of
/// `peers` that could have opened it: no other unjoined leg opened before it within the
/// window, nor one whose opening is unknown.
fn by_timing(
    leg: &Side,
    legs: &[Side],
    outers: &[Side],
    candidates: &[usize],
    peers: &[usize],
) -> Option<usize> {
    let t = leg.opened?;
    let after = |o: &usize| {
        let at = outers[*o].opened?;
        let gap = at.duration_since(t).ok()?;
        (gap <= WINDOW).then_some(at)
    };
    let (o, at) = candidates
        .iter()
        .filter_map(|o| after(o).map(|at| (*o, at)))
        .min_by_key(|(_, at)| *at)?;
    let openers = peers
        .iter()
        .filter(|&&l| match legs[l].opened {
            Some(tl) => tl <= at && at.duration_since(tl).is_ok_and(|g| g <= WINDOW),
            None => true,
        })
        .count();
    (openers == 1).then_some(o)
}

/// A tunnel's plaintext address and the target its sessions belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunnel {
    /// The address the gateway connects to (the tunnel's accepting socket).
    pub address: SocketAddr,
    /// The target (`fix_monitor_core::target::TargetId`).
    pub target: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(local: u16, remote: &str) -> TcpLink {
        TcpLink {
            local: SocketAddr::from(([127, 0, 0, 1], local)),
            remote: remote.parse().unwrap(),
        }
    }

    fn at(ms: u64) -> Option<SystemTime> {
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000) + ms_(ms))
    }

    fn ms_(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn leg(port: u16, opened: Option<SystemTime>, pid: Option<u32>) -> Side {
        Side {
            link: link(port, "127.0.0.2:7001"),
            opened,
            pid,
        }
    }

    fn outer(port: u16, opened: Option<SystemTime>, pid: Option<u32>) -> Side {
        Side {
            link: link(port, "10.0.0.5:443"),
            opened,
            pid,
        }
    }

    fn joined(o: &Side, basis: JoinBasis) -> TunnelJoin {
        TunnelJoin::Joined {
            outer: o.link,
            basis,
        }
    }

    /// One leg, one outer session, same process: joined whatever the times (even unknown:
    /// both open before the sidecar started); another process's session is not offered.
    #[test]
    fn one_leg_one_outer_of_the_process_join_without_timing() {
        let l = leg(40000, None, Some(7));
        let mine = outer(50000, None, Some(7));
        let other = outer(50001, at(0), Some(8));
        let got = decide(&[l], &[other, mine]);
        assert_eq!(got, [joined(&mine, JoinBasis::Process)]);
    }

    /// No outer session of the process yet: pending (the tunnel is still connecting).
    #[test]
    fn no_outer_session_yet_is_pending() {
        let got = decide(&[leg(40000, at(0), Some(7))], &[outer(1, at(1), Some(8))]);
        assert_eq!(got, [TunnelJoin::Pending]);
    }

    /// Two legs accepted and connected in turn: each outer session has one possible opener.
    #[test]
    fn interleaved_accepts_and_connects_join_by_timing() {
        let (l1, l2) = (leg(40000, at(0), Some(7)), leg(40001, at(100), Some(7)));
        let (o1, o2) = (outer(50000, at(2), Some(7)), outer(50001, at(103), Some(7)));
        let got = decide(&[l2, l1], &[o2, o1]);
        assert_eq!(
            got,
            [
                joined(&o2, JoinBasis::ProcessAndTiming),
                joined(&o1, JoinBasis::ProcessAndTiming)
            ]
        );
    }

    /// Two accepts before either connect: which outer session is whose is not known.
    #[test]
    fn two_accepts_before_the_connects_are_ambiguous() {
        let (l1, l2) = (leg(40000, at(0), Some(7)), leg(40001, at(1), Some(7)));
        let (o1, o2) = (outer(50000, at(2), Some(7)), outer(50001, at(3), Some(7)));
        let got = decide(&[l1, l2], &[o1, o2]);
        let amb = TunnelJoin::Ambiguous { candidates: 2 };
        assert_eq!(got, [amb, amb]);
    }

    /// Several of the process with unknown times (open before the sidecar): ambiguous.
    #[test]
    fn several_without_times_are_ambiguous() {
        let (l1, l2) = (leg(40000, None, Some(7)), leg(40001, None, Some(7)));
        let (o1, o2) = (outer(50000, None, Some(7)), outer(50001, None, Some(7)));
        let amb = TunnelJoin::Ambiguous { candidates: 2 };
        assert_eq!(decide(&[l1, l2], &[o1, o2]), [amb, amb]);
    }

    /// No process known: timing alone, across the target's sessions; a lone pair without
    /// times is not guessed.
    #[test]
    fn without_the_process_timing_alone_or_ambiguous() {
        let l = leg(40000, at(0), None);
        let early = outer(50000, at(0).map(|t| t - ms_(10)), Some(9));
        let o = outer(50001, at(4), None);
        assert_eq!(decide(&[l], &[early, o]), [joined(&o, JoinBasis::Timing)]);
        let late = outer(50002, at(6000), None);
        let amb = TunnelJoin::Ambiguous { candidates: 1 };
        assert_eq!(decide(&[l], &[late]), [amb]);
        let (l, o) = (leg(40000, None, None), outer(50000, None, None));
        assert_eq!(decide(&[l], &[o]), [amb]);
    }
}
