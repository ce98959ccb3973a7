//! Compiles [`Targets`] into the kernel-side socket filter of a `sock_diag` dump: the program of
//! an `INET_DIAG_REQ_BYTECODE` attribute, the same language iproute2's `ss` compiles its filter
//! expressions into (no crate builds it).
//!
//! # The language (`net/ipv4/inet_diag.c`, `inet_diag_bc_run`)
//! A program is a sequence of 4-byte ops `{ code: u8, yes: u8, no: u16 }`, some followed by an
//! operand. Each op tests the socket and moves forward by `yes` or `no` bytes; the socket is
//! accepted when the program counter lands exactly on the end, rejected when it lands 4 bytes
//! past it. There is no backward jump, so every program terminates.
//!
//! # What we emit
//! One conjunct per target, tried in order (a disjunction); brackets mark optional parts:
//! ```text
//! D_COND(remote net, remote port)  [NOT D_COND(::ffff:0:0/96)]  [S_GE lo  S_LE hi]  [JMP]
//! ```
//! - a failing test jumps to the start of the next conjunct, or rejects after the last one;
//! - a conjunct that passes falls through to a `JMP` that goes to the end (accept); the last
//!   conjunct needs none, it falls through to the end by itself.
//!
//! The kernel filter must accept exactly what [`Targets::classify`] accepts: the tests below run
//! both over the same cases through [`mirror`], a small interpreter of the kernel's semantics.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::{IpNet, Ipv6Net};

use fix_monitor_core::target::{Target, Targets};

pub mod mirror;

// Op codes, from include/uapi/linux/inet_diag.h.
const BC_JMP: u8 = 1;
const BC_S_GE: u8 = 2;
const BC_S_LE: u8 = 3;
const BC_D_COND: u8 = 8;

const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;

/// Size of one `struct inet_diag_bc_op`.
const OP: usize = 4;
/// Size of `struct inet_diag_hostcond` without its address: family, prefix_len, 2 bytes of
/// padding, `int port`.
const HOSTCOND: usize = 8;

/// The longest program a request can carry. The attribute length is a `u16` that counts its own
/// 4-byte header, and a rejecting jump (`no`, also a `u16`) must be able to reach 4 bytes past
/// the end of the program.
pub const MAX_LEN: usize = (u16::MAX as usize - 4) & !3;

/// The program would not fit in a netlink attribute (roughly 800 targets or more).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the kernel filter for these targets would take {len} bytes, more than the {MAX_LEN} a request can carry")]
pub struct ProgramTooLong {
    /// The program's length, in bytes.
    pub len: usize,
}

/// One test of a conjunct.
#[derive(Debug, Clone, Copy)]
enum Cond {
    /// The remote address is in `net` and, unless `port` is -1, the remote port is `port`.
    Remote { net: IpNet, port: i32 },
    /// The remote address is not IPv4-mapped. IPv6 targets need it when their block overlaps
    /// `::ffff:0:0/96`: the kernel would match a mapped peer against the block as it stands,
    /// while `Targets::classify` sees the peer as the IPv4 address it carries.
    NotMapped,
    /// The local port is at least this.
    LocalGe(u16),
    /// The local port is at most this.
    LocalLe(u16),
}

fn mapped_block() -> Ipv6Net {
    Ipv6Net::new(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96).expect("96 <= 128")
}

impl Cond {
    /// Bytes this test takes in the program.
    fn len(&self) -> usize {
        match self {
            Cond::Remote { net, .. } => OP + HOSTCOND + addr_len(net),
            // A D_COND whose `yes` lands on a JMP to the failure target, and whose `no` skips
            // that JMP: the negation has to be spelt this way because the kernel's audit walks
            // the program along `yes` and only allows jumps to ops it meets on that walk.
            Cond::NotMapped => OP + HOSTCOND + 16 + OP,
            Cond::LocalGe(_) | Cond::LocalLe(_) => 2 * OP,
        }
    }

    /// Appends this test; `fail` is the absolute offset a failing socket goes to.
    fn emit(&self, out: &mut Vec<u8>, fail: usize) {
        let at = out.len();
        match *self {
            Cond::Remote { net, port } => {
                op(out, BC_D_COND, self.len(), fail - at);
                hostcond(out, net, port);
            }
            Cond::NotMapped => {
                let test = OP + HOSTCOND + 16;
                op(out, BC_D_COND, test, test + OP);
                hostcond(out, IpNet::V6(mapped_block()), -1);
                op(out, BC_JMP, OP, fail - (at + test));
            }
            Cond::LocalGe(port) => port_test(out, BC_S_GE, port, fail - at),
            Cond::LocalLe(port) => port_test(out, BC_S_LE, port, fail - at),
        }
    }
}

fn addr_len(net: &IpNet) -> usize {
    match net {
        IpNet::V4(_) => 4,
        IpNet::V6(_) => 16,
    }
}

fn port_test(out: &mut Vec<u8>, code: u8, port: u16, no: usize) {
    op(out, code, 2 * OP, no);
    // The operand is a second op whose `no` carries the port.
    op(out, 0, 0, usize::from(port));
}

fn op(out: &mut Vec<u8>, code: u8, yes: usize, no: usize) {
    out.push(code);
    out.push(u8::try_from(yes).expect("op sizes fit in a u8"));
    out.extend_from_slice(&u16::try_from(no).expect("bounded by MAX_LEN").to_ne_bytes());
}

fn hostcond(out: &mut Vec<u8>, net: IpNet, port: i32) {
    let family = match net {
        IpNet::V4(_) => AF_INET,
        IpNet::V6(_) => AF_INET6,
    };
    out.extend_from_slice(&[family, net.prefix_len(), 0, 0]);
    out.extend_from_slice(&port.to_ne_bytes());
    // Host bits would be ignored anyway (only `prefix_len` bits are compared); keep them out.
    match net.network() {
        IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
    }
}

fn conjunct(t: &Target) -> Vec<Cond> {
    let mut conds = vec![Cond::Remote {
        net: t.net,
        port: t.port.map_or(-1, i32::from),
    }];
    if let IpNet::V6(net) = t.net {
        let mapped = mapped_block();
        if net.contains(&mapped) || mapped.contains(&net) {
            conds.push(Cond::NotMapped);
        }
    }
    if let Some(r) = t.local_ports {
        conds.push(Cond::LocalGe(r.start));
        conds.push(Cond::LocalLe(r.end));
    }
    conds
}

/// The filter program that accepts a socket exactly when some target matches it. With no
/// targets it rejects everything.
pub fn compile(targets: &Targets) -> Result<Vec<u8>, ProgramTooLong> {
    if targets.is_empty() {
        // One JMP straight to "reject": the kernel wants at least one op.
        let mut out = Vec::with_capacity(OP);
        op(&mut out, BC_JMP, OP, 2 * OP);
        return Ok(out);
    }
    let conjuncts: Vec<Vec<Cond>> = targets.iter().map(conjunct).collect();
    let last = conjuncts.len() - 1;
    let size = |i: usize, conds: &[Cond]| {
        conds.iter().map(Cond::len).sum::<usize>() + if i < last { OP } else { 0 }
    };
    let len: usize = conjuncts.iter().enumerate().map(|(i, c)| size(i, c)).sum();
    if len > MAX_LEN {
        return Err(ProgramTooLong { len });
    }

    let mut out = Vec::with_capacity(len);
    for (i, conds) in conjuncts.iter().enumerate() {
        let next = out.len() + size(i, conds);
        let fail = if i < last { next } else { len + OP };
        for c in conds {
            c.emit(&mut out, fail);
        }
        if i < last {
            let at = out.len();
            op(&mut out, BC_JMP, OP, len - at);
        }
    }
    debug_assert_eq!(out.len(), len);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::mirror::{audit, run, Entry};
    use super::*;
    use std::net::{Ipv4Addr, SocketAddr};

    fn target(net: &str, port: Option<u16>, local: Option<(u16, u16)>) -> Target {
        Target::test(net, port, local)
    }

    /// Remote addresses on both sides of every block in NETS, as the socket tables show them:
    /// IPv4 (AF_INET sockets), IPv6, and IPv4 mapped into or compatible with IPv6 (AF_INET6).
    fn remote_addrs() -> Vec<IpAddr> {
        let v4: Vec<Ipv4Addr> = [
            "10.0.0.5",
            "10.0.0.4",
            "10.0.0.6",
            "10.0.0.0",
            "10.0.0.127",
            "10.0.0.128",
            "10.0.0.255",
            "10.0.1.0",
            "9.255.255.255",
            "10.255.255.255",
            "11.0.0.0",
            "127.0.0.2",
            "0.0.0.0",
            "255.255.255.255",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let v6 = [
            "::1",
            "::",
            "::2",
            "2001:db8::1",
            "2001:db8::2",
            "2001:db8:0:1::1",
            "2001:db8:ffff::1",
            "2001:db9::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "::fffe:0:1",
            "::fffe:ffff:ffff",
            "0:0:0:1::1",
        ];
        let mut all: Vec<IpAddr> = v4.iter().map(|&a| IpAddr::V4(a)).collect();
        all.extend(v6.iter().map(|s| s.parse::<IpAddr>().unwrap()));
        all.extend(v4.iter().map(|a| IpAddr::V6(a.to_ipv6_mapped())));
        all.extend(v4.iter().map(|a| IpAddr::V6(a.to_ipv6_compatible())));
        all
    }

    const NETS: &[&str] = &[
        "10.0.0.5/32",
        "10.0.0.4/31",
        "10.0.0.0/24",
        "10.0.0.128/25",
        "10.0.0.0/8",
        "0.0.0.0/0",
        "127.0.0.2/32",
        "::1/128",
        "2001:db8::1/128",
        "2001:db8::/32",
        "2001:db8:0:1::/64",
        "fe80::/10",
        "::/0",
        "::/64",
        "::ffff:0:0/96",
        "::ffff:10.0.0.0/104",
        "::fffe:0:0/95",
        "::/96",
    ];
    const PORTS: &[u16] = &[0, 1, 4999, 5000, 5001, 6000, 6001, 9876, 65535];
    const TARGET_PORTS: &[Option<u16>] = &[None, Some(5000), Some(9876), Some(0), Some(65535)];
    const LOCAL_RANGES: &[Option<(u16, u16)>] = &[
        None,
        Some((5000, 6000)),
        Some((6000, 6000)),
        Some((1, 4999)),
        Some((0, 0)),
        Some((65535, 65535)),
        Some((0, 65535)),
    ];

    /// Compiles `targets`, audits the program, and checks that it accepts exactly the sockets
    /// `classify` attributes to a target, over every remote address and port pair above.
    /// Returns how many sockets matched, so that callers can see the cases are not all alike.
    fn check(targets: &Targets, remotes: &[IpAddr]) -> usize {
        let bc = compile(targets).unwrap();
        audit(&bc).unwrap_or_else(|e| panic!("{targets:?}: audit fails: {e}\n{bc:?}"));
        let mut matched = 0;
        for &ip in remotes {
            for &rport in PORTS {
                for &lport in PORTS {
                    let local_ip = if ip.is_ipv4() {
                        IpAddr::V4(Ipv4Addr::LOCALHOST)
                    } else {
                        IpAddr::V6(Ipv6Addr::LOCALHOST)
                    };
                    let (local, remote) =
                        (SocketAddr::new(local_ip, lport), SocketAddr::new(ip, rport));
                    let want = targets.classify(&local, &remote).is_some();
                    let got = run(&bc, &Entry::new(&local, &remote));
                    assert_eq!(got, want, "{local} -> {remote} with {targets:?}\n{bc:?}");
                    matched += usize::from(got);
                }
            }
        }
        matched
    }

    #[test]
    fn layout_of_one_target_with_a_local_range() {
        let ts = Targets::new(vec![target("10.0.0.5/32", Some(9876), Some((5000, 6000)))]);
        let mut want = Vec::new();
        // 32 bytes in all, so "reject" is 36 bytes from the start.
        op(&mut want, BC_D_COND, 16, 36);
        want.extend_from_slice(&[AF_INET, 32, 0, 0]);
        want.extend_from_slice(&9876i32.to_ne_bytes());
        want.extend_from_slice(&[10, 0, 0, 5]);
        op(&mut want, BC_S_GE, 8, 36 - 16);
        op(&mut want, 0, 0, 5000);
        op(&mut want, BC_S_LE, 8, 36 - 24);
        op(&mut want, 0, 0, 6000);
        assert_eq!(compile(&ts).unwrap(), want);
    }

    #[test]
    fn no_targets_reject_everything() {
        let ts = Targets::default();
        assert_eq!(check(&ts, &remote_addrs()), 0);
    }

    #[test]
    fn every_single_target_agrees_with_classify() {
        let remotes = remote_addrs();
        let all = remotes.len() * PORTS.len() * PORTS.len();
        for net in NETS {
            for &port in TARGET_PORTS {
                for &local in LOCAL_RANGES {
                    let ts = Targets::new(vec![target(net, port, local)]);
                    let matched = check(&ts, &remotes);
                    // Both answers must occur, or agreeing proves little. Blocks inside the
                    // mapped range match nothing: such peers count as IPv4.
                    let mapped_only = net.starts_with("::ffff:");
                    assert!(matched < all, "{ts:?} matches everything");
                    assert_eq!(matched == 0, mapped_only, "{ts:?} matches {matched}");
                }
            }
        }
    }

    #[test]
    fn mapped_peers_match_ipv4_targets_only() {
        let remotes = remote_addrs();
        let v4 = Targets::new(vec![target("10.0.0.0/24", None, None)]);
        let mapped: SocketAddr = "[::ffff:10.0.0.5]:1".parse().unwrap();
        let compatible: SocketAddr = "[::10.0.0.5]:1".parse().unwrap();
        let local: SocketAddr = "[::1]:1".parse().unwrap();
        let bc = compile(&v4).unwrap();
        assert!(run(&bc, &Entry::new(&local, &mapped)));
        assert!(!run(&bc, &Entry::new(&local, &compatible)));
        check(&v4, &remotes);
        // An IPv6 block around the mapped range must not take the mapped peer.
        let v6 = Targets::new(vec![target("::/0", None, None)]);
        let bc = compile(&v6).unwrap();
        assert!(!run(&bc, &Entry::new(&local, &mapped)));
        assert!(run(&bc, &Entry::new(&local, &compatible)));
        check(&v6, &remotes);
    }

    /// A xorshift generator: the cases are random but the same on every run.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    #[test]
    fn several_targets_agree_with_classify() {
        let remotes = remote_addrs();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..300 {
            let n = 2 + rng.below(5);
            let ts = Targets::new(
                (0..n)
                    .map(|_| {
                        target(
                            NETS[rng.below(NETS.len())],
                            TARGET_PORTS[rng.below(TARGET_PORTS.len())],
                            LOCAL_RANGES[rng.below(LOCAL_RANGES.len())],
                        )
                    })
                    .collect(),
            );
            check(&ts, &remotes);
        }
    }

    #[test]
    fn the_longest_program_still_fits_and_longer_ones_are_refused() {
        // 80 bytes per IPv6 target with the mapped exclusion and a local range.
        let t = target("::/0", Some(1), Some((1, 2)));
        let fits = MAX_LEN / 80;
        let bc = compile(&Targets::new(vec![t.clone(); fits])).unwrap();
        assert!(bc.len() > MAX_LEN - 80);
        audit(&bc).unwrap();
        let remote: SocketAddr = "[2001:db8::1]:1".parse().unwrap();
        let local: SocketAddr = "[::1]:2".parse().unwrap();
        assert!(run(&bc, &Entry::new(&local, &remote)));
        let local: SocketAddr = "[::1]:3".parse().unwrap();
        assert!(!run(&bc, &Entry::new(&local, &remote)));
        let err = compile(&Targets::new(vec![t; fits + 1])).unwrap_err();
        assert!(err.len > MAX_LEN);
    }

    /// The audit mirror must itself refuse what the kernel refuses, or passing it means nothing.
    #[test]
    fn the_audit_refuses_malformed_programs() {
        let ts = Targets::new(vec![
            target("10.0.0.0/8", Some(1), Some((1, 2))),
            target("::1/128", None, None),
        ]);
        let good = compile(&ts).unwrap();
        audit(&good).unwrap();
        let set_no = |at: usize, no: u16| {
            let mut bc = good.clone();
            bc[at + 2..at + 4].copy_from_slice(&no.to_ne_bytes());
            bc
        };
        // The first D_COND is 16 bytes long; its `no` points at the next conjunct.
        assert!(audit(&set_no(0, 18)).is_err(), "not a multiple of 4");
        assert!(audit(&set_no(0, 12)).is_err(), "shorter than the op");
        assert!(audit(&set_no(0, 20)).is_err(), "into the S_GE operand");
        assert!(
            audit(&set_no(0, good.len() as u16 + 8)).is_err(),
            "past reject"
        );
        audit(&set_no(0, good.len() as u16 + 4)).unwrap(); // reject itself is fine
        let mut bad_family = good.clone();
        bad_family[OP] = 3;
        assert!(audit(&bad_family).is_err());
        let mut bad_prefix = good.clone();
        bad_prefix[OP + 1] = 33;
        assert!(audit(&bad_prefix).is_err());
        assert!(audit(&good[..good.len() - 4]).is_err(), "cut short");
    }
}
