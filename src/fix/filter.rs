//! The classic BPF program that the wire source attaches to its packet socket, compiled from
//! the targets, so that only the watched sessions' segments reach user space. Written with the
//! kernel crate's classic-BPF toolkit ([`fix_monitor_kernel::cbpf`]), which the socket-destroy
//! filter uses too.
//!
//! The socket is `AF_PACKET`/`SOCK_DGRAM`, so the program sees each packet from its network
//! header (`packet_rcv` in net/packet/af_packet.c pulls the link-layer header off before
//! `run_filter` for `SOCK_DGRAM`). It accepts TCP over IPv4 (not fragments) or IPv6 (no
//! extension headers) whose destination is in a target's network and port (our segments) or
//! whose source is (theirs). Local port ranges are left to user space ([`Targets::classify`]
//! decides exactly; the program only has to let through a superset).
//!
//! Loopback shows every packet twice: once leaving (`PACKET_OUTGOING`, from
//! `dev_queue_xmit_nit`) and once arriving. The program drops the outgoing copy on the loopback
//! interface, read through the kernel's ancillary loads (`SKF_AD_PKTTYPE`, `SKF_AD_IFINDEX`).
//!
//! Every conditional jump is local (they have 8-bit offsets): accept and reject are inline
//! `ret` instructions, and the one long jump (to the IPv6 part) is an unconditional `ja`.

use ipnet::IpNet;

use fix_monitor_kernel::cbpf::{
    self, Asm, Insn, To, BPF_B, BPF_H, BPF_JEQ, BPF_JSET, BPF_W, SKF_AD_IFINDEX, SKF_AD_OFF,
    SKF_AD_PKTTYPE, SKF_AD_PROTOCOL,
};

use crate::target::Targets;

/// `skb->pkt_type` of a packet this host sends (include/uapi/linux/if_packet.h).
pub const PACKET_OUTGOING: u32 = 4;

/// What an accepted packet keeps: all of it (the largest GSO/GRO packet is 64 KiB; more
/// than that with BIG TCP, which a FIX session does not reach).
pub const ACCEPT: u32 = 262_144;

const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86dd;

/// The program for `targets`; `lo_ifindex` is the loopback interface's index. An error when it
/// would be longer than the kernel takes (several hundred targets).
pub fn compile(targets: &Targets, lo_ifindex: u32) -> Result<Vec<Insn>, cbpf::Error> {
    let mut a = Asm::new();
    // Drop loopback's outgoing copy.
    let proto = a.label();
    a.load(BPF_W, SKF_AD_OFF + SKF_AD_PKTTYPE);
    a.jeq(PACKET_OUTGOING, To::Next, proto);
    a.load(BPF_W, SKF_AD_OFF + SKF_AD_IFINDEX);
    a.jeq(lo_ifindex, To::Next, proto);
    a.ret(0);
    a.place(proto);
    a.load(BPF_W, SKF_AD_OFF + SKF_AD_PROTOCOL);
    let (v4, not_v4) = (a.label(), a.label());
    // The IPv6 part is far: a conditional jump over `ja`.
    a.jeq(ETH_P_IP, v4, To::Next);
    a.ja(not_v4);
    a.place(v4);
    // IPv4
    a.load(BPF_B, 9);
    drop_unless(&mut a, BPF_JEQ, 6);
    a.load(BPF_H, 6);
    drop_if(&mut a, BPF_JSET, 0x3fff);
    a.load_x_header_len(0);
    for t in targets.iter() {
        let IpNet::V4(net) = t.net else { continue };
        let mask = u32::from(net.netmask());
        let addr = u32::from(net.network());
        let inbound = a.label();
        let next = a.label();
        for (addr_off, port_off, miss) in [(16, 2, inbound), (12, 0, next)] {
            a.load(BPF_W, addr_off);
            a.and(mask);
            a.jeq(addr & mask, To::Next, miss);
            if let Some(p) = t.port {
                a.load_indirect(BPF_H, port_off);
                a.jeq(u32::from(p), To::Next, miss);
            }
            a.ret(ACCEPT);
            a.place(miss);
        }
    }
    a.ret(0);
    a.place(not_v4);
    drop_unless(&mut a, BPF_JEQ, ETH_P_IPV6);
    a.load(BPF_B, 6);
    drop_unless(&mut a, BPF_JEQ, 6);
    for t in targets.iter() {
        let IpNet::V6(net) = t.net else { continue };
        let mask = net.netmask().octets();
        let addr = net.network().octets();
        let inbound = a.label();
        let next = a.label();
        for (addr_off, port_off, miss) in [(24u32, 42u32, inbound), (8, 40, next)] {
            for w in 0..4 {
                let m = u32::from_be_bytes(mask[w * 4..w * 4 + 4].try_into().expect("4 bytes"));
                if m == 0 {
                    continue;
                }
                let v = u32::from_be_bytes(addr[w * 4..w * 4 + 4].try_into().expect("4 bytes"));
                a.load(BPF_W, addr_off + 4 * w as u32);
                if m != u32::MAX {
                    a.and(m);
                }
                a.jeq(v & m, To::Next, miss);
            }
            if let Some(p) = t.port {
                a.load(BPF_H, port_off);
                a.jeq(u32::from(p), To::Next, miss);
            }
            a.ret(ACCEPT);
            a.place(miss);
        }
    }
    a.ret(0);
    a.finish()
}

/// Goes on when A compares to `k` by `cmp`, else drops the packet (an inline `ret 0`).
fn drop_unless(a: &mut Asm, cmp: u16, k: u32) {
    let ok = a.label();
    a.jump(cmp, k, ok, To::Next);
    a.ret(0);
    a.place(ok);
}

/// Drops the packet when A compares to `k` by `cmp`, else goes on.
fn drop_if(a: &mut Asm, cmp: u16, k: u32) {
    let ok = a.label();
    a.jump(cmp, k, To::Next, ok);
    a.ret(0);
    a.place(ok);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fix::sim::ipv4_tcp;
    use crate::target::Target;

    /// Runs `prog` as the kernel would on a packet of this type, interface and protocol.
    fn run(prog: &[Insn], pkt: &[u8], pkttype: u32, ifindex: u32, protocol: u32) -> u32 {
        let ancillary = cbpf::Ancillary {
            protocol,
            pkttype,
            ifindex,
        };
        cbpf::run(prog, pkt, ancillary)
    }

    fn targets() -> Targets {
        Targets::new(vec![
            Target {
                name: "a".into(),
                net: "10.0.0.2/32".parse().unwrap(),
                port: Some(9878),
                local_ports: None,
                heartbeat: None,
                stale_after: None,
            },
            Target {
                name: "b".into(),
                net: "192.168.0.0/16".parse().unwrap(),
                port: None,
                local_ports: None,
                heartbeat: None,
                stale_after: None,
            },
            Target {
                name: "c".into(),
                net: "fd00::/64".parse().unwrap(),
                port: Some(443),
                local_ports: None,
                heartbeat: None,
                stale_after: None,
            },
        ])
    }

    fn ipv6_tcp(src: &str, sp: u16, dst: &str, dp: u16) -> Vec<u8> {
        let s: std::net::Ipv6Addr = src.parse().unwrap();
        let d: std::net::Ipv6Addr = dst.parse().unwrap();
        let mut p = vec![0x60, 0, 0, 0, 0, 20, 6, 64];
        p.extend(s.octets());
        p.extend(d.octets());
        p.extend(sp.to_be_bytes());
        p.extend(dp.to_be_bytes());
        p.extend([0u8; 16]);
        p[13 + 40] = 0x50;
        p
    }

    #[test]
    fn accepts_exactly_the_targets_both_ways() {
        let prog = compile(&targets(), 1).unwrap();
        let v4 = |s: &str, d: &str| {
            let p = ipv4_tcp(s.parse().unwrap(), d.parse().unwrap(), 1, 0, b"x");
            run(&prog, &p, 0, 2, 0x0800) != 0
        };
        assert!(v4("10.0.0.1:5000", "10.0.0.2:9878"));
        assert!(v4("10.0.0.2:9878", "10.0.0.1:5000"));
        assert!(!v4("10.0.0.1:5000", "10.0.0.2:9879"));
        assert!(!v4("10.0.0.1:9878", "10.0.0.3:5000"));
        assert!(v4("10.0.0.1:1", "192.168.4.5:2"));
        assert!(v4("192.168.4.5:2", "10.0.0.1:1"));
        assert!(!v4("10.0.0.1:1", "192.169.4.5:2"));
        let v6 = |s, sp, d, dp| run(&prog, &ipv6_tcp(s, sp, d, dp), 0, 2, 0x86dd) != 0;
        assert!(v6("fd01::1", 5000, "fd00::9", 443));
        assert!(v6("fd00::9", 443, "fd01::1", 5000));
        assert!(!v6("fd01::1", 5000, "fd00:0:0:1::9", 443));
        assert!(!v6("fd01::1", 5000, "fd00::9", 80));
        // Not TCP, a fragment, another protocol, truncated.
        let mut udp = ipv4_tcp(
            "10.0.0.1:5000".parse().unwrap(),
            "10.0.0.2:9878".parse().unwrap(),
            1,
            0,
            b"",
        );
        udp[9] = 17;
        assert_eq!(run(&prog, &udp, 0, 2, 0x0800), 0);
        let mut frag = ipv4_tcp(
            "10.0.0.1:5000".parse().unwrap(),
            "10.0.0.2:9878".parse().unwrap(),
            1,
            0,
            b"",
        );
        frag[6] = 0x20; // more fragments
        assert_eq!(run(&prog, &frag, 0, 2, 0x0800), 0);
        assert_eq!(run(&prog, &[0x45], 0, 2, 0x0800), 0);
        assert_eq!(run(&prog, &[], 0, 2, 0x0806), 0);
    }

    #[test]
    fn loopback_outgoing_copy_is_dropped() {
        let prog = compile(&targets(), 1).unwrap();
        let p = ipv4_tcp(
            "10.0.0.1:5000".parse().unwrap(),
            "10.0.0.2:9878".parse().unwrap(),
            1,
            0,
            b"x",
        );
        assert_eq!(run(&prog, &p, PACKET_OUTGOING, 1, 0x0800), 0);
        assert_eq!(run(&prog, &p, 0, 1, 0x0800), ACCEPT);
        assert_eq!(run(&prog, &p, PACKET_OUTGOING, 3, 0x0800), ACCEPT);
    }

    #[test]
    fn many_targets_fit_or_are_refused() {
        let many = |n: u32| {
            Targets::new(
                (0..n)
                    .map(|i| Target {
                        name: i.to_string(),
                        net: IpNet::from(std::net::IpAddr::from(std::net::Ipv4Addr::from(
                            0x0a00_0000 + i,
                        ))),
                        port: Some(9000),
                        local_ports: None,
                        heartbeat: None,
                        stale_after: None,
                    })
                    .collect(),
            )
        };
        let prog = compile(&many(200), 1).unwrap();
        let p = ipv4_tcp(
            "10.0.0.199:9000".parse().unwrap(),
            "1.1.1.1:5".parse().unwrap(),
            1,
            0,
            b"",
        );
        assert_eq!(run(&prog, &p, 0, 2, 0x0800), ACCEPT);
        assert!(matches!(
            compile(&many(1000), 1),
            Err(cbpf::Error::TooLong { .. })
        ));
    }
}
