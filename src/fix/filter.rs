//! The classic BPF program that the wire source attaches to its packet socket, compiled from
//! the targets, so that only the watched sessions' segments reach user space.
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

use crate::target::Targets;

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

// Opcodes (linux/filter.h, linux/bpf_common.h).
pub const LD_W_ABS: u16 = 0x20;
pub const LD_H_ABS: u16 = 0x28;
pub const LD_B_ABS: u16 = 0x30;
pub const LD_H_IND: u16 = 0x48;
pub const LDX_B_MSH: u16 = 0xb1;
pub const ALU_AND_K: u16 = 0x54;
pub const JMP_JA: u16 = 0x05;
pub const JMP_JEQ_K: u16 = 0x15;
pub const JMP_JSET_K: u16 = 0x45;
pub const RET_K: u16 = 0x06;

/// Ancillary data offsets (`SKF_AD_OFF + ...`).
pub const SKF_AD_OFF: u32 = (-0x1000i32) as u32;
pub const SKF_AD_PROTOCOL: u32 = 0;
pub const SKF_AD_PKTTYPE: u32 = 4;
pub const SKF_AD_IFINDEX: u32 = 8;
pub const PACKET_OUTGOING: u32 = 4;

/// What an accepted packet keeps: all of it (the largest GSO/GRO packet is 64 KiB; more
/// than that with BIG TCP, which a FIX session does not reach).
pub const ACCEPT: u32 = 262_144;

const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86dd;

struct Asm {
    code: Vec<Insn>,
    /// (instruction, label) for conditional false-branch fixups.
    jf_fix: Vec<(usize, usize)>,
    /// (instruction, label) for `ja` fixups.
    ja_fix: Vec<(usize, usize)>,
    labels: Vec<Option<usize>>,
}

impl Asm {
    fn new() -> Asm {
        Asm {
            code: Vec::new(),
            jf_fix: Vec::new(),
            ja_fix: Vec::new(),
            labels: Vec::new(),
        }
    }
    fn op(&mut self, code: u16, k: u32) {
        self.code.push(Insn {
            code,
            jt: 0,
            jf: 0,
            k,
        });
    }
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }
    fn here(&mut self, l: usize) {
        self.labels[l] = Some(self.code.len());
    }
    /// `if A == k` fall through, else go to `l`.
    fn jeq_else(&mut self, k: u32, l: usize) {
        self.jf_fix.push((self.code.len(), l));
        self.op(JMP_JEQ_K, k);
    }
    /// `if A == k` fall through, else `ret 0`.
    fn require(&mut self, k: u32) {
        self.code.push(Insn {
            code: JMP_JEQ_K,
            jt: 1,
            jf: 0,
            k,
        });
        self.op(RET_K, 0);
    }
    /// `if A == k` fall through, else go to `l` however far (through a `ja`).
    fn jeq_else_far(&mut self, k: u32, l: usize) {
        self.code.push(Insn {
            code: JMP_JEQ_K,
            jt: 1,
            jf: 0,
            k,
        });
        self.ja_fix.push((self.code.len(), l));
        self.op(JMP_JA, 0);
    }
    fn finish(mut self) -> Result<Vec<Insn>, String> {
        for (at, l) in self.ja_fix {
            let to = self.labels[l].ok_or("unplaced label")?;
            self.code[at].k = (to - at - 1) as u32;
        }
        for (at, l) in self.jf_fix {
            let to = self.labels[l].ok_or("unplaced label")?;
            let off = to - at - 1;
            self.code[at].jf = u8::try_from(off).map_err(|_| "jump too long".to_string())?;
        }
        Ok(self.code)
    }
}

/// The program for `targets`; `lo_ifindex` is the loopback interface's index.
pub fn compile(targets: &Targets, lo_ifindex: u32) -> Result<Vec<Insn>, String> {
    let mut a = Asm::new();
    // Drop loopback's outgoing copy.
    let proto = a.label();
    a.op(LD_W_ABS, SKF_AD_OFF + SKF_AD_PKTTYPE);
    a.jeq_else(PACKET_OUTGOING, proto);
    a.op(LD_W_ABS, SKF_AD_OFF + SKF_AD_IFINDEX);
    a.code.push(Insn {
        code: JMP_JEQ_K,
        jt: 0,
        jf: 1,
        k: lo_ifindex,
    });
    a.op(RET_K, 0);
    a.here(proto);
    a.op(LD_W_ABS, SKF_AD_OFF + SKF_AD_PROTOCOL);
    let not_v4 = a.label();
    a.jeq_else_far(ETH_P_IP, not_v4);
    // IPv4
    a.op(LD_B_ABS, 9);
    a.require(6);
    a.op(LD_H_ABS, 6);
    a.code.push(Insn {
        code: JMP_JSET_K,
        jt: 0,
        jf: 1,
        k: 0x3fff,
    });
    a.op(RET_K, 0);
    a.op(LDX_B_MSH, 0);
    for t in targets.iter() {
        let IpNet::V4(net) = t.net else { continue };
        let mask = u32::from(net.netmask());
        let addr = u32::from(net.network());
        let inbound = a.label();
        let next = a.label();
        for (addr_off, port_off, miss) in [(16, 2, inbound), (12, 0, next)] {
            a.op(LD_W_ABS, addr_off);
            a.op(ALU_AND_K, mask);
            a.jeq_else(addr & mask, miss);
            if let Some(p) = t.port {
                a.op(LD_H_IND, port_off);
                a.jeq_else(u32::from(p), miss);
            }
            a.op(RET_K, ACCEPT);
            a.here(miss);
        }
    }
    a.op(RET_K, 0);
    a.here(not_v4);
    a.require(ETH_P_IPV6);
    a.op(LD_B_ABS, 6);
    a.require(6);
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
                a.op(LD_W_ABS, addr_off + 4 * w as u32);
                if m != u32::MAX {
                    a.op(ALU_AND_K, m);
                }
                a.jeq_else(v & m, miss);
            }
            if let Some(p) = t.port {
                a.op(LD_H_ABS, port_off);
                a.jeq_else(u32::from(p), miss);
            }
            a.op(RET_K, ACCEPT);
            a.here(miss);
        }
    }
    a.op(RET_K, 0);
    let code = a.finish()?;
    if code.len() > 4096 {
        return Err(format!(
            "{} targets need {} BPF instructions, more than the kernel's 4096",
            targets.len(),
            code.len()
        ));
    }
    Ok(code)
}

/// A classic BPF interpreter for the instructions [`compile`] emits, following the kernel's
/// semantics (a load beyond the packet returns 0 from the program). The tests run programs
/// through it; the system tests run them in the kernel.
pub fn run(prog: &[Insn], pkt: &[u8], pkttype: u32, ifindex: u32, protocol: u32) -> u32 {
    let (mut a, mut x) = (0u32, 0u32);
    let mut pc = 0usize;
    let load = |off: u32, n: usize| -> Option<u32> {
        if off >= SKF_AD_OFF {
            return match off - SKF_AD_OFF {
                SKF_AD_PROTOCOL => Some(protocol),
                SKF_AD_PKTTYPE => Some(pkttype),
                SKF_AD_IFINDEX => Some(ifindex),
                _ => None,
            };
        }
        let off = off as usize;
        let b = pkt.get(off..off.checked_add(n)?)?;
        Some(b.iter().fold(0u32, |v, c| (v << 8) | u32::from(*c)))
    };
    while let Some(i) = prog.get(pc) {
        pc += 1;
        match i.code {
            LD_W_ABS => match load(i.k, 4) {
                Some(v) => a = v,
                None => return 0,
            },
            LD_H_ABS => match load(i.k, 2) {
                Some(v) => a = v,
                None => return 0,
            },
            LD_B_ABS => match load(i.k, 1) {
                Some(v) => a = v,
                None => return 0,
            },
            LD_H_IND => match load(x.wrapping_add(i.k), 2) {
                Some(v) => a = v,
                None => return 0,
            },
            LDX_B_MSH => match load(i.k, 1) {
                Some(v) => x = 4 * (v & 0xf),
                None => return 0,
            },
            ALU_AND_K => a &= i.k,
            JMP_JA => pc += i.k as usize,
            JMP_JEQ_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
            JMP_JSET_K => pc += usize::from(if a & i.k != 0 { i.jt } else { i.jf }),
            RET_K => return i.k,
            _ => return 0,
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fix::sim::ipv4_tcp;
    use crate::target::Target;

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
        assert!(compile(&many(1000), 1).unwrap_err().contains("4096"));
    }
}
