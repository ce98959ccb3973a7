//! Compiles [`Targets`] into a classic BPF socket filter for the socket-destroy subscription
//! ([`super::destroy`]), written with the crate's toolkit ([`crate::cbpf`]): the kernel runs it on every destroy notification before queueing it, so
//! the closes of unrelated sockets (every TCP socket of the namespace is announced) are dropped
//! in the kernel and cost the sidecar no wake-up, copy or parse.
//!
//! # What the program sees
//! A netlink multicast `sk_buff` starts at the `nlmsghdr` (`do_one_broadcast` runs `sk_filter`
//! on it), so absolute loads read, from byte 16, the `inet_diag_msg` that
//! `inet_diag_handler_get_info` fills (`net/ipv4/inet_diag.c`): family at 16, local port (big
//! endian) at 20, remote port at 22, local address at 24..40, remote address at 40..56 (an IPv4
//! address in the first 4 bytes). Classic BPF's word and half-word loads read big-endian, so
//! ports and addresses compare as their natural numbers.
//!
//! # What it accepts
//! One block per target, tried in order; a block that matches returns "keep the whole message",
//! a failing test jumps to the next block (every jump stays inside its block, so the 8-bit jump
//! offsets never overflow however many targets there are), and after the last block the
//! message is dropped. A block accepts a socket when:
//! - its remote address is in the target's network: for IPv4 targets an `AF_INET` socket's
//!   address, or an `AF_INET6` socket's IPv4-mapped one (`::ffff:a.b.c.d`, a dual-stack
//!   socket); for IPv6 targets an `AF_INET6` address that is not IPv4-mapped where the block
//!   overlaps `::ffff:0:0/96` (as [`Targets::classify`] sees a mapped peer as IPv4);
//! - its remote port is the target's, **or 0**: when our side aborts a socket (`SO_LINGER` 0,
//!   `tcp_disconnect`) the kernel clears the remote port (and an unbound local address) before
//!   the notification goes out, and such a socket must still reach user space, which knows it by
//!   its cookie or decides whether the rest identifies a target;
//! - its local port is in the target's range.
//!
//! So the filter lets through a superset of what `classify` accepts (the port-0 case); user space
//! decides. The tests below run an interpreter of these semantics against `classify`.

use std::net::IpAddr;

use ipnet::IpNet;

use fix_monitor_core::target::{Target, Targets};

use crate::cbpf::{self, Asm, Insn, Label, To, BPF_B, BPF_H, BPF_JGE, BPF_JGT, BPF_W};

/// Keep the whole message (the filter's return value is the number of bytes kept).
pub const ACCEPT: u32 = u32::MAX;
/// Drop it.
pub const DROP: u32 = 0;

/// Offsets of the fields the program reads, from the start of the netlink message.
pub mod offset {
    pub const FAMILY: u32 = 16;
    pub const LOCAL_PORT: u32 = 20;
    pub const REMOTE_PORT: u32 = 22;
    pub const REMOTE_ADDR: u32 = 40;
}

const V4: u32 = libc::AF_INET as u32;
const V6: u32 = libc::AF_INET6 as u32;

/// The filter that keeps a destroy notification exactly when some target's block accepts it
/// (see the module docs); with no targets it drops everything. An error when it would be
/// longer than the kernel takes (a few hundred targets).
pub fn compile(targets: &Targets) -> Result<Vec<Insn>, cbpf::Error> {
    let mut a = Asm::new();
    for t in targets.iter() {
        block(t, &mut a);
    }
    a.ret(DROP);
    a.finish()
}

/// One target's block: falls through to the next block (`fail`, placed at its end) when the
/// target does not match.
fn block(t: &Target, a: &mut Asm) {
    let (fail, ports) = (a.label(), a.label());
    a.load(BPF_B, offset::FAMILY);
    match t.net {
        IpNet::V4(net) => {
            let (addr, mask) = (u32::from(net.network()), u32::from(net.netmask()));
            let v6_path = a.label();
            // AF_INET: the address is the first word.
            a.jeq(V4, To::Next, v6_path);
            word_in(a, offset::REMOTE_ADDR, addr, mask, ports.into(), fail);
            // AF_INET6: an IPv4-mapped address, ::ffff:a.b.c.d.
            a.place(v6_path);
            a.jeq(V6, To::Next, fail);
            mapped_prefix(a, To::Next, fail);
            word_in(a, offset::REMOTE_ADDR + 12, addr, mask, ports.into(), fail);
        }
        IpNet::V6(net) => {
            a.jeq(V6, To::Next, fail);
            let mapped: ipnet::Ipv6Net = "::ffff:0:0/96".parse().expect("a valid block");
            if net.contains(&mapped) || mapped.contains(&net) {
                // The peer must not be IPv4-mapped: if the first three words are those of
                // ::ffff:0:0/96, fail; otherwise go on.
                let not_mapped = a.label();
                mapped_prefix(a, fail.into(), not_mapped);
                a.place(not_mapped);
            }
            let (addr, mask) = (net.network().octets(), net.netmask().octets());
            for w in 0..4 {
                let word =
                    |b: [u8; 16]| u32::from_be_bytes(b[w * 4..w * 4 + 4].try_into().unwrap());
                if word(mask) == 0 {
                    continue;
                }
                let at = offset::REMOTE_ADDR + 4 * w as u32;
                word_in(a, at, word(addr), word(mask), To::Next, fail);
            }
        }
    }
    a.place(ports);
    if let Some(p) = t.port {
        let port_ok = a.label();
        a.load(BPF_H, offset::REMOTE_PORT);
        a.jeq(u32::from(p), port_ok, To::Next);
        // A port cleared by an abort (see the module docs).
        a.jeq(0, To::Next, fail);
        a.place(port_ok);
    }
    if let Some(r) = t.local_ports {
        a.load(BPF_H, offset::LOCAL_PORT);
        a.jump(BPF_JGE, u32::from(r.start), To::Next, fail);
        a.jump(BPF_JGT, u32::from(r.end), fail, To::Next);
    }
    a.ret(ACCEPT);
    a.place(fail);
}

/// Goes to `yes` when the word at `at`, masked, is `addr`, else to `fail`; a zero mask always
/// passes.
fn word_in(a: &mut Asm, at: u32, addr: u32, mask: u32, yes: To, fail: Label) {
    if mask == 0 {
        a.jeq(0, yes, yes);
        return;
    }
    a.load(BPF_W, at);
    if mask != u32::MAX {
        a.and(mask);
    }
    a.jeq(addr & mask, yes, fail);
}

/// Tests that the remote address's first three words are those of `::ffff:0:0/96`: to `yes`
/// when they are, `no` at the first that is not.
fn mapped_prefix(a: &mut Asm, yes: To, no: Label) {
    for (w, want) in [0u32, 0, 0xffff].into_iter().enumerate() {
        a.load(BPF_W, offset::REMOTE_ADDR + 4 * w as u32);
        let pass = if w == 2 { yes } else { To::Next };
        a.jeq(want, pass, no);
    }
}

/// What the program accepts, for a message about a socket from `local` to `remote` (an
/// `AF_INET6` socket when either is IPv6): [`Targets::classify`], widened to a cleared remote
/// port. The user-space side of the filter, for tests and for sources that cannot attach it.
pub fn accepts(
    targets: &Targets,
    local: &std::net::SocketAddr,
    remote: &std::net::SocketAddr,
) -> bool {
    targets.iter().any(|t| {
        let port_ok = match t.port {
            Some(p) => remote.port() == p || remote.port() == 0,
            None => true,
        };
        let local_ok = t.local_ports.is_none_or(|r| r.contains(local.port()));
        let ip: IpAddr = remote.ip().to_canonical();
        port_ok && local_ok && t.net.contains(&ip)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv6Addr, SocketAddr};

    /// Runs `program` on `msg` as the kernel would.
    fn run(program: &[Insn], msg: &[u8]) -> u32 {
        cbpf::run(program, msg, cbpf::Ancillary::default())
    }

    /// A destroy notification's first bytes for a socket from `local` to `remote`, as
    /// `inet_diag_msg_common_fill` lays them out.
    pub(crate) fn message(local: &SocketAddr, remote: &SocketAddr) -> Vec<u8> {
        let mut m = vec![0u8; 16 + 72];
        let v6 = local.is_ipv6() || remote.is_ipv6();
        m[16] = if v6 { V6 as u8 } else { V4 as u8 };
        m[20..22].copy_from_slice(&local.port().to_be_bytes());
        m[22..24].copy_from_slice(&remote.port().to_be_bytes());
        let put = |m: &mut [u8], at: usize, ip: IpAddr| match (ip, v6) {
            (IpAddr::V4(a), false) => m[at..at + 4].copy_from_slice(&a.octets()),
            (IpAddr::V4(a), true) => m[at..at + 16].copy_from_slice(&a.to_ipv6_mapped().octets()),
            (IpAddr::V6(a), _) => m[at..at + 16].copy_from_slice(&a.octets()),
        };
        put(&mut m, 24, local.ip());
        put(&mut m, 40, remote.ip());
        m
    }

    fn t(net: &str, port: Option<u16>, local: Option<(u16, u16)>) -> Target {
        Target::test(net, port, local)
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn cases() -> Vec<(SocketAddr, SocketAddr)> {
        let locals = [
            "10.1.1.1:4999",
            "10.1.1.1:5000",
            "10.1.1.1:6000",
            "10.1.1.1:6001",
            "[fd00::1]:5500",
        ];
        let remotes = [
            "10.0.0.5:9876",
            "10.0.0.5:9877",
            "10.0.0.5:0",
            "10.0.0.200:9876",
            "10.0.1.5:9876",
            "11.0.0.5:9876",
            "0.0.0.0:0",
            "[::ffff:10.0.0.5]:9876",
            "[::ffff:10.0.0.5]:0",
            "[::ffff:11.0.0.5]:9876",
            "[fd00::5]:9876",
            "[fd00::5]:0",
            "[fd00:0:0:1::5]:9876",
            "[fe80::5]:9876",
            "[::]:0",
            "[::1]:9876",
            "[::ffff:0:1]:1",
        ];
        let mut out = Vec::new();
        for l in locals {
            for r in remotes {
                let (l, r) = (sa(l), sa(r));
                // An AF_INET6 socket shows both ends as IPv6; an AF_INET one both as IPv4.
                let l = match (l, r.is_ipv6()) {
                    (SocketAddr::V4(a), true) => {
                        SocketAddr::new(a.ip().to_ipv6_mapped().into(), a.port())
                    }
                    (SocketAddr::V6(_), false) => continue,
                    (l, _) => l,
                };
                out.push((l, r));
            }
        }
        out
    }

    fn target_sets() -> Vec<Targets> {
        vec![
            Targets::new(vec![t("10.0.0.5/32", Some(9876), Some((5000, 6000)))]),
            Targets::new(vec![t("10.0.0.0/24", None, None)]),
            Targets::new(vec![t("0.0.0.0/0", Some(9876), None)]),
            Targets::new(vec![
                t("fd00::/64", Some(9876), None),
                t("10.0.0.5/32", None, Some((5000, 5000))),
            ]),
            Targets::new(vec![t("::/0", None, None)]),
            Targets::new(vec![
                t("::/0", Some(9876), None),
                t("::ffff:0:0/96", None, None),
            ]),
            Targets::new(vec![t("::ffff:10.0.0.0/120", None, None)]),
            Targets::new(vec![
                t("fd00::5/128", None, Some((5500, 5500))),
                t("10.0.0.0/8", Some(1), None),
            ]),
            Targets::default(),
        ]
    }

    #[test]
    fn the_program_accepts_exactly_what_user_space_accepts() {
        for targets in target_sets() {
            let program = compile(&targets).unwrap();
            for (l, r) in cases() {
                let want = accepts(&targets, &l, &r);
                let got = run(&program, &message(&l, &r)) == ACCEPT;
                assert_eq!(got, want, "{targets:?}: {l} -> {r}");
            }
        }
    }

    #[test]
    fn user_space_acceptance_is_classify_widened_to_a_cleared_port_only() {
        for targets in target_sets() {
            for (l, r) in cases() {
                if r.port() != 0 {
                    assert_eq!(
                        accepts(&targets, &l, &r),
                        targets.classify(&l, &r).is_some(),
                        "{l} -> {r}"
                    );
                } else if targets.classify(&l, &r).is_some() {
                    assert!(accepts(&targets, &l, &r));
                }
            }
        }
    }

    #[test]
    fn every_jump_stays_inside_the_program_and_short_messages_are_dropped() {
        let targets = Targets::new(vec![t("fd00::/64", Some(9876), Some((1, 2))); 200]);
        let program = compile(&targets).unwrap();
        for (pc, i) in program.iter().enumerate() {
            if i.code & 0x07 == cbpf::BPF_JMP {
                assert!(pc + 1 + usize::from(i.jt.max(i.jf)) < program.len());
            }
        }
        assert_eq!(
            program.last(),
            Some(&Insn::stmt(cbpf::BPF_RET | cbpf::BPF_K, DROP))
        );
        let full = message(&sa("[fd00::1]:1"), &sa("[fd00::5]:9876"));
        assert_eq!(run(&program, &full), ACCEPT);
        for cut in [0, 17, 30, 43] {
            assert_eq!(run(&program, &full[..cut]), DROP, "cut at {cut}");
        }
    }

    #[test]
    fn too_many_targets_is_an_error_not_a_truncated_program() {
        let targets = Targets::new(vec![t("fd00::/64", Some(9876), Some((1, 2))); 400]);
        let err = compile(&targets).unwrap_err();
        assert!(
            matches!(err, cbpf::Error::TooLong { len } if len > cbpf::MAX_INSNS),
            "{err}"
        );
    }

    #[test]
    fn host_bits_of_a_block_are_ignored() {
        let net: IpNet = "10.0.0.77/24".parse().unwrap();
        let targets = Targets::new(vec![Target {
            name: "x".into(),
            net,
            port: None,
            local_ports: None,
            heartbeat: None,
            stale_after: None,
        }]);
        let program = compile(&targets).unwrap();
        let m = message(&sa("1.1.1.1:1"), &sa("10.0.0.1:1"));
        assert_eq!(run(&program, &m), ACCEPT);
        let _ = Ipv6Addr::LOCALHOST;
    }
}
