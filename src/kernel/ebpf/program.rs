//! The eBPF program on the `sock:inet_sock_set_state` tracepoint, generated from the targets.
//!
//! # What it does, per TCP state change on the host
//! 1. counts the hit (`Counter::Seen`); leaves unless the protocol is TCP and the change enters
//!    or leaves ESTABLISHED, or is a `connect()` (CLOSE -> SYN_SENT);
//! 2. keeps only sockets that match a target: the remote address (a CIDR block), the remote
//!    port and the local port range, compiled from the targets into straight-line tests like
//!    `bytecode` compiles the dump filter. IPv4-mapped IPv6 peers (`::ffff:a.b.c.d`) are tested
//!    against the IPv4 targets, as `Targets::classify` does;
//! 3. keeps only sockets of the sidecar's own network namespace: the tracepoint fires for every
//!    namespace on the host, so the program reads `sk->__sk_common.skc_net.net->net_cookie`
//!    (offsets from the kernel's BTF, `btf`) with `bpf_probe_read_kernel` and compares it with
//!    the cookie of the sidecar's namespace (`SO_NETNS_COOKIE`). Tracepoint programs may not
//!    call `bpf_get_netns_cookie`, and the current task's namespace means nothing in softirq;
//! 4. on `connect()`, which runs in the calling process, it remembers that process (pid, comm)
//!    by socket address in an LRU hash; when that socket reaches ESTABLISHED (usually in
//!    softirq, where the current task is whoever was interrupted), the event carries the
//!    remembered process. Accepted connections carry none (pid 0);
//! 5. writes one [`event`] record with `bpf_ktime_get_ns()` into the ring buffer, counting
//!    what crossed (`Emitted`) and what the full ring dropped (`Lost`).
//!
//! The tracepoint's record layout is read from its `format` file at load time (`tracefs`).

use std::net::IpAddr;

use ipnet::IpNet;

use super::asm::*;
use fix_monitor_core::target::{Target, Targets};

/// Helper function ids (`enum bpf_func_id`, include/uapi/linux/bpf.h).
mod helper {
    pub const MAP_LOOKUP_ELEM: i32 = 1;
    pub const MAP_UPDATE_ELEM: i32 = 2;
    pub const MAP_DELETE_ELEM: i32 = 3;
    pub const KTIME_GET_NS: i32 = 5;
    pub const GET_CURRENT_PID_TGID: i32 = 14;
    pub const GET_CURRENT_COMM: i32 = 16;
    pub const PROBE_READ_KERNEL: i32 = 113;
    pub const RINGBUF_OUTPUT: i32 = 130;
}

/// Linux TCP states (`include/net/tcp_states.h`).
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;
const IPPROTO_TCP: i32 = 6;

/// The in-kernel counters, one `u64` each in a per-CPU array's single value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// Every hit of the tracepoint (all sockets, all namespaces, all protocols).
    Seen = 0,
    /// Transitions into or out of ESTABLISHED that matched a target, in any namespace.
    Matched = 1,
    /// Matching sockets (or connects) of other network namespaces, dropped.
    OtherNetns = 2,
    /// Records written to the ring buffer: what crossed to user space.
    Emitted = 3,
    /// Records the ring buffer had no room for.
    Lost = 4,
}

pub const COUNTERS: usize = 5;

/// The record the program writes per transition. All integers native-endian except the
/// addresses (network order, as in the tracepoint).
pub mod event {
    pub const KTIME_NS: usize = 0;
    pub const SKADDR: usize = 8;
    pub const COOKIE: usize = 16;
    pub const PID_TGID: usize = 24;
    pub const COMM: usize = 32;
    pub const OLDSTATE: usize = 48;
    pub const NEWSTATE: usize = 49;
    pub const FAMILY: usize = 50;
    pub const SPORT: usize = 52;
    pub const DPORT: usize = 54;
    /// 16 bytes; an IPv4 socket's addresses are in IPv4-mapped form.
    pub const SADDR: usize = 56;
    pub const DADDR: usize = 72;
    /// The socket's counters at the transition (`struct tcp_sock`, what `tcp_info` reports as
    /// `tcpi_bytes_sent`, `tcpi_bytes_received`, `tcpi_total_retrans`); 0 where unreadable.
    /// `TOTAL_RETRANS` is a u32 in the low half of its 8 bytes.
    pub const BYTES_SENT: usize = 88;
    pub const BYTES_RECEIVED: usize = 96;
    pub const TOTAL_RETRANS: usize = 104;
    pub const LEN: usize = 112;
}

/// Value of the connect map: `pid_tgid` then `comm`.
pub const CONNECT_VALUE: usize = 24;

/// Where the program finds what it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Offsets in the tracepoint's record (its `format` file).
    pub skaddr: i16,
    pub oldstate: i16,
    pub newstate: i16,
    pub sport: i16,
    pub dport: i16,
    pub family: i16,
    pub protocol: i16,
    pub saddr_v6: i16,
    pub daddr_v6: i16,
    /// Offset of `struct net *` in `struct sock` (`__sk_common.skc_net.net`).
    pub sk_net: i32,
    /// Offset of `skc_cookie` in `struct sock` (0 until something asks for the cookie).
    pub sk_cookie: i32,
    /// Offset of `net_cookie` in `struct net`.
    pub net_cookie: i32,
    /// Offsets of `bytes_sent`, `bytes_received` and `total_retrans` in `struct tcp_sock`.
    pub tp_bytes_sent: i32,
    pub tp_bytes_received: i32,
    pub tp_total_retrans: i32,
}

/// The file descriptors of the maps the program uses.
#[derive(Debug, Clone, Copy)]
pub struct Maps {
    pub ring: i32,
    pub counters: i32,
    pub connects: i32,
}

/// Most targets one program takes: each costs at most about 20 instructions, and jumps are
/// 16-bit. Far above any gateway's downstream list.
pub const MAX_TARGETS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} targets are more than the {MAX_TARGETS} the eBPF program can hold")]
pub struct TooManyTargets(pub usize);

// Stack slots (offsets from R10).
const TMP: i16 = -8;
const CONNECT: i16 = -32;
const EV: i16 = -(8 + CONNECT_VALUE as i16 + event::LEN as i16);

/// Generates the program.
pub fn build(
    l: &Layout,
    targets: &Targets,
    netns_cookie: u64,
    maps: Maps,
) -> Result<Vec<Insn>, TooManyTargets> {
    if targets.len() > MAX_TARGETS {
        return Err(TooManyTargets(targets.len()));
    }
    let mut a = Asm::new();
    let out = a.label();
    let other_netns = a.label();
    let transition = a.label();

    a.mov(R6, R1);
    // R9 = the counters (per-CPU array, key 0), for the whole program.
    a.st_imm(W, R10, TMP, 0);
    a.ld_map_fd(R1, maps.counters);
    a.mov(R2, R10);
    a.add_imm(R2, TMP.into());
    a.call(helper::MAP_LOOKUP_ELEM);
    a.jmp_imm(JEQ, R0, 0, out);
    a.mov(R9, R0);
    count(&mut a, Counter::Seen);
    if targets.is_empty() {
        // Nothing can match; the verifier refuses code that cannot be reached.
        a.bind(out);
        a.mov_imm(R0, 0);
        a.exit();
        return Ok(a.finish());
    }

    a.ldx(H, R1, R6, l.protocol);
    a.jmp_imm(JNE, R1, IPPROTO_TCP, out);
    a.ldx(W, R7, R6, l.oldstate);
    a.ldx(W, R8, R6, l.newstate);
    a.jmp_imm(JEQ, R8, TCP_ESTABLISHED, transition);
    a.jmp_imm(JEQ, R7, TCP_ESTABLISHED, transition);
    a.jmp_imm(JNE, R7, TCP_CLOSE, out);
    a.jmp_imm(JNE, R8, TCP_SYN_SENT, out);

    // connect(): in the calling process. The local port is not chosen yet, so only the remote
    // side is tested; the LRU map forgets what never becomes a session.
    let connect_match = a.label();
    filter(&mut a, l, targets, true, connect_match, out);
    a.bind(connect_match);
    netns(&mut a, l, netns_cookie, other_netns);
    a.call(helper::GET_CURRENT_PID_TGID);
    a.stx(DW, R10, CONNECT, R0);
    a.mov(R1, R10);
    a.add_imm(R1, i32::from(CONNECT) + 8);
    a.mov_imm(R2, 16);
    a.call(helper::GET_CURRENT_COMM);
    a.ldx(DW, R1, R6, l.skaddr);
    a.stx(DW, R10, TMP, R1);
    a.ld_map_fd(R1, maps.connects);
    a.mov(R2, R10);
    a.add_imm(R2, TMP.into());
    a.mov(R3, R10);
    a.add_imm(R3, CONNECT.into());
    a.mov_imm(R4, 0); // BPF_ANY
    a.call(helper::MAP_UPDATE_ELEM);
    a.ja(out);

    // Into or out of ESTABLISHED.
    a.bind(transition);
    let matched = a.label();
    filter(&mut a, l, targets, false, matched, out);
    a.bind(matched);
    count(&mut a, Counter::Matched);
    netns(&mut a, l, netns_cookie, other_netns);
    emit(&mut a, l, maps);
    a.ja(out);

    a.bind(other_netns);
    count(&mut a, Counter::OtherNetns);
    a.bind(out);
    a.mov_imm(R0, 0);
    a.exit();
    Ok(a.finish())
}

/// `counters[c] += 1` (per-CPU, so no atomic needed).
fn count(a: &mut Asm, c: Counter) {
    let off = (c as i16) * 8;
    a.ldx(DW, R1, R9, off);
    a.add_imm(R1, 1);
    a.stx(DW, R9, off, R1);
}

/// Falls through when the socket's namespace is ours, else jumps to `other`.
fn netns(a: &mut Asm, l: &Layout, cookie: u64, other: Label) {
    a.ldx(DW, R3, R6, l.skaddr);
    a.add_imm(R3, l.sk_net);
    a.mov(R1, R10);
    a.add_imm(R1, TMP.into());
    a.mov_imm(R2, 8);
    a.call(helper::PROBE_READ_KERNEL);
    a.jmp_imm(JNE, R0, 0, other);
    a.ldx(DW, R3, R10, TMP);
    a.jmp_imm(JEQ, R3, 0, other);
    a.add_imm(R3, l.net_cookie);
    a.mov(R1, R10);
    a.add_imm(R1, TMP.into());
    a.mov_imm(R2, 8);
    a.call(helper::PROBE_READ_KERNEL);
    a.jmp_imm(JNE, R0, 0, other);
    a.ldx(DW, R1, R10, TMP);
    a.ld_imm64(R2, cookie);
    a.jmp_reg(JNE, R1, R2, other);
}

/// Builds the record on the stack and writes it to the ring buffer.
fn emit(a: &mut Asm, l: &Layout, maps: Maps) {
    let ev = |off: usize| EV + off as i16;
    a.call(helper::KTIME_GET_NS);
    a.stx(DW, R10, ev(event::KTIME_NS), R0);
    a.ldx(DW, R1, R6, l.skaddr);
    a.stx(DW, R10, ev(event::SKADDR), R1);
    a.ldx(DW, R3, R6, l.skaddr);
    a.add_imm(R3, l.sk_cookie);
    a.mov(R1, R10);
    a.add_imm(R1, ev(event::COOKIE).into());
    a.mov_imm(R2, 8);
    a.call(helper::PROBE_READ_KERNEL); // zeroes the slot on failure
    for (from, to) in [
        (l.tp_bytes_sent, event::BYTES_SENT),
        (l.tp_bytes_received, event::BYTES_RECEIVED),
        (l.tp_total_retrans, event::TOTAL_RETRANS),
    ] {
        a.ldx(DW, R3, R6, l.skaddr);
        a.add_imm(R3, from);
        a.mov(R1, R10);
        a.add_imm(R1, ev(to).into());
        a.mov_imm(R2, 8);
        a.call(helper::PROBE_READ_KERNEL);
    }
    a.st_imm(DW, R10, ev(event::PID_TGID), 0);
    a.st_imm(DW, R10, ev(event::COMM), 0);
    a.st_imm(DW, R10, ev(event::COMM + 8), 0);

    // SYN_SENT -> ESTABLISHED: our connect(); the process was remembered then.
    let no_pid = a.label();
    a.jmp_imm(JNE, R7, TCP_SYN_SENT, no_pid);
    a.ldx(DW, R1, R6, l.skaddr);
    a.stx(DW, R10, TMP, R1);
    a.ld_map_fd(R1, maps.connects);
    a.mov(R2, R10);
    a.add_imm(R2, TMP.into());
    a.call(helper::MAP_LOOKUP_ELEM);
    a.jmp_imm(JEQ, R0, 0, no_pid);
    for i in 0..3 {
        a.ldx(DW, R1, R0, i * 8);
        a.stx(DW, R10, ev(event::PID_TGID) + i * 8, R1);
    }
    a.ld_map_fd(R1, maps.connects);
    a.mov(R2, R10);
    a.add_imm(R2, TMP.into());
    a.call(helper::MAP_DELETE_ELEM);
    a.bind(no_pid);

    a.stx(B, R10, ev(event::OLDSTATE), R7);
    a.stx(B, R10, ev(event::NEWSTATE), R8);
    for (from, to) in [
        (l.family, event::FAMILY),
        (l.sport, event::SPORT),
        (l.dport, event::DPORT),
    ] {
        a.ldx(H, R1, R6, from);
        a.stx(H, R10, ev(to), R1);
    }
    for (from, to) in [(l.saddr_v6, event::SADDR), (l.daddr_v6, event::DADDR)] {
        for i in 0..4 {
            a.ldx(W, R1, R6, from + 4 * i);
            a.stx(W, R10, ev(to) + 4 * i, R1);
        }
    }
    let lost = a.label();
    let done = a.label();
    a.ld_map_fd(R1, maps.ring);
    a.mov(R2, R10);
    a.add_imm(R2, EV.into());
    a.mov_imm(R3, event::LEN as i32);
    a.mov_imm(R4, 0);
    a.call(helper::RINGBUF_OUTPUT);
    a.jmp_imm(JNE, R0, 0, lost);
    count(a, Counter::Emitted);
    a.ja(done);
    a.bind(lost);
    count(a, Counter::Lost);
    a.bind(done);
}

/// Jumps to `matched` when some target matches the socket, else to `nomatch`. With
/// `remote_only`, local port ranges are not tested (a `connect()` has no local port yet).
///
/// The remote address is read from the record's IPv6 field, which the tracepoint fills with
/// the IPv4-mapped form for IPv4 sockets (`TP_STORE_V4MAPPED`): a mapped address (IPv4
/// socket, or dual-stack socket with an IPv4 peer) goes through the IPv4 targets, any other
/// through the IPv6 targets.
fn filter(
    a: &mut Asm,
    l: &Layout,
    targets: &Targets,
    remote_only: bool,
    matched: Label,
    nomatch: Label,
) {
    let v6 = a.label();
    a.ldx(H, R3, R6, l.dport);
    a.ldx(H, R4, R6, l.sport);
    a.ldx(W, R1, R6, l.daddr_v6);
    a.jmp32_imm(JNE, R1, 0, v6);
    a.ldx(W, R1, R6, l.daddr_v6 + 4);
    a.jmp32_imm(JNE, R1, 0, v6);
    a.ldx(W, R1, R6, l.daddr_v6 + 8);
    a.jmp32_imm(JNE, R1, u32::from_ne_bytes([0, 0, 0xff, 0xff]), v6);
    a.ldx(W, R2, R6, l.daddr_v6 + 12);
    for t in targets.iter().filter(|t| t.net.addr().is_ipv4()) {
        let next = a.label();
        ports(a, t, remote_only, next);
        if let IpNet::V4(net) = t.net {
            if net.prefix_len() > 0 {
                a.mov(R1, R2);
                a.and32_imm(R1, u32::from_ne_bytes(net.netmask().octets()));
                a.jmp32_imm(JNE, R1, u32::from_ne_bytes(net.network().octets()), next);
            }
        }
        a.ja(matched);
        a.bind(next);
    }
    a.ja(nomatch);

    a.bind(v6);
    for t in targets.iter().filter(|t| t.net.addr().is_ipv6()) {
        let next = a.label();
        ports(a, t, remote_only, next);
        let (IpAddr::V6(mask), IpAddr::V6(network)) = (t.net.netmask(), t.net.network()) else {
            unreachable!("filtered to IPv6 targets")
        };
        let (mask, network) = (mask.octets(), network.octets());
        for i in 0..4 {
            let word = |b: &[u8; 16]| u32::from_ne_bytes(b[4 * i..4 * i + 4].try_into().unwrap());
            let m = word(&mask);
            if m == 0 {
                continue;
            }
            a.ldx(W, R1, R6, l.daddr_v6 + 4 * i as i16);
            if m != u32::MAX {
                a.and32_imm(R1, m);
            }
            a.jmp32_imm(JNE, R1, word(&network), next);
        }
        a.ja(matched);
        a.bind(next);
    }
    a.ja(nomatch);
}

/// The port tests of one target (R3 = remote port, R4 = local port); failing goes to `next`.
fn ports(a: &mut Asm, t: &Target, remote_only: bool, next: Label) {
    if let Some(p) = t.port {
        a.jmp_imm(JNE, R3, p.into(), next);
    }
    if let (Some(r), false) = (t.local_ports, remote_only) {
        a.jmp_imm(JLT, R4, r.start.into(), next);
        a.jmp_imm(JGT, R4, r.end.into(), next);
    }
}

#[cfg(test)]
mod tests {
    //! The program run through a small interpreter of the instructions it uses, with the
    //! helpers simulated: the filter must accept exactly what `Targets::classify` accepts, over
    //! the same cases as the dump filter's tests, and the namespace test must hold. The real
    //! kernel's verifier and tracepoint are exercised by `tests/system/ebpf.rs`.

    use std::collections::HashMap;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    use super::*;

    const FORMAT: Layout = Layout {
        skaddr: 8,
        oldstate: 16,
        newstate: 20,
        sport: 24,
        dport: 26,
        family: 28,
        protocol: 30,
        saddr_v6: 40,
        daddr_v6: 56,
        sk_net: 48,
        sk_cookie: 88,
        net_cookie: 120,
        tp_bytes_sent: 1600,
        tp_bytes_received: 1608,
        tp_total_retrans: 1700,
    };
    const MAPS: Maps = Maps {
        ring: 10,
        counters: 11,
        connects: 12,
    };
    const OUR_NETNS: u64 = 0x1234_5678_9abc;
    const SK: u64 = 0xffff_8880_0000_1000;
    const NET_OURS: u64 = 0xffff_8880_0000_9000;
    const NET_OTHER: u64 = 0xffff_8880_0000_a000;

    // Tagged pointers of the simulated address spaces.
    const CTX: u64 = 1 << 40;
    const STACK: u64 = 2 << 40;
    const COUNTERS_VAL: u64 = 3 << 40;
    const CONNECT_VAL: u64 = 4 << 40;
    const MAP: u64 = 5 << 40;
    const REGION: u64 = !((1 << 40) - 1);

    struct Vm {
        ctx: Vec<u8>,
        stack: [u8; 512],
        counters: [u8; COUNTERS * 8],
        connects: HashMap<u64, [u8; CONNECT_VALUE]>,
        connect_val: [u8; CONNECT_VALUE],
        /// Kernel memory for bpf_probe_read_kernel: address -> 8 bytes.
        kernel: HashMap<u64, u64>,
        ring: Vec<Vec<u8>>,
    }

    impl Vm {
        fn new(ctx: Vec<u8>, net: u64) -> Vm {
            let mut kernel = HashMap::new();
            kernel.insert(SK + FORMAT.sk_net as u64, net);
            kernel.insert(SK + FORMAT.sk_cookie as u64, 77);
            kernel.insert(SK + FORMAT.tp_bytes_sent as u64, 5000);
            kernel.insert(SK + FORMAT.tp_bytes_received as u64, 700);
            // total_retrans (u32) and what follows it in the same 8 bytes.
            kernel.insert(SK + FORMAT.tp_total_retrans as u64, 0xdead_0000_0003);
            kernel.insert(NET_OURS + FORMAT.net_cookie as u64, OUR_NETNS);
            kernel.insert(NET_OTHER + FORMAT.net_cookie as u64, OUR_NETNS + 1);
            Vm {
                ctx,
                stack: [0; 512],
                counters: [0; COUNTERS * 8],
                connects: HashMap::new(),
                connect_val: [0; CONNECT_VALUE],
                kernel,
                ring: Vec::new(),
            }
        }

        fn mem(&mut self, addr: u64, len: usize) -> &mut [u8] {
            let off = (addr & !REGION) as usize;
            let region: &mut [u8] = match addr & REGION {
                CTX => &mut self.ctx,
                STACK => &mut self.stack,
                COUNTERS_VAL => &mut self.counters,
                CONNECT_VAL => &mut self.connect_val,
                _ => panic!("access to {addr:#x}"),
            };
            &mut region[off..off + len]
        }

        fn load(&mut self, addr: u64, len: usize) -> u64 {
            let mut b = [0u8; 8];
            b[..len].copy_from_slice(self.mem(addr, len));
            u64::from_le_bytes(b)
        }

        fn store(&mut self, addr: u64, len: usize, v: u64) {
            self.mem(addr, len).copy_from_slice(&v.to_le_bytes()[..len]);
        }

        fn helper(&mut self, id: i32, r: &[u64; 11]) -> u64 {
            match id {
                helper::MAP_LOOKUP_ELEM => match r[1] {
                    m if m == MAP | MAPS.counters as u64 => COUNTERS_VAL,
                    m if m == MAP | MAPS.connects as u64 => {
                        let key = self.load(r[2], 8);
                        match self.connects.get(&key) {
                            Some(v) => {
                                self.connect_val = *v;
                                CONNECT_VAL
                            }
                            None => 0,
                        }
                    }
                    m => panic!("lookup in {m:#x}"),
                },
                helper::MAP_UPDATE_ELEM => {
                    let key = self.load(r[2], 8);
                    let v = self.mem(r[3], CONNECT_VALUE).try_into().unwrap();
                    self.connects.insert(key, v);
                    0
                }
                helper::MAP_DELETE_ELEM => {
                    let key = self.load(r[2], 8);
                    self.connects.remove(&key);
                    0
                }
                helper::KTIME_GET_NS => 1_000,
                helper::GET_CURRENT_PID_TGID => (42 << 32) | 43,
                helper::GET_CURRENT_COMM => {
                    self.mem(r[1], 16).fill(0);
                    self.mem(r[1], 4).copy_from_slice(b"gwfx");
                    0
                }
                helper::PROBE_READ_KERNEL => {
                    assert_eq!(r[2], 8);
                    match self.kernel.get(&r[3]).copied() {
                        Some(v) => {
                            self.store(r[1], 8, v);
                            0
                        }
                        None => {
                            self.store(r[1], 8, 0);
                            u64::MAX - 13 // -EFAULT
                        }
                    }
                }
                helper::RINGBUF_OUTPUT => {
                    assert_eq!(r[1], MAP | MAPS.ring as u64);
                    let rec = self.mem(r[2], r[3] as usize).to_vec();
                    self.ring.push(rec);
                    0
                }
                _ => panic!("helper {id}"),
            }
        }

        fn run(&mut self, prog: &[Insn]) {
            let mut r = [0u64; 11];
            r[1] = CTX;
            r[10] = STACK + 512;
            let mut pc = 0usize;
            let mut steps = 0;
            loop {
                steps += 1;
                assert!(steps < 100_000, "runaway program");
                let i = prog[pc];
                pc += 1;
                let (d, s) = (i.dst() as usize, i.src() as usize);
                let class = i.code & 0x07;
                let size = |c: u8| match c & 0x18 {
                    W => 4,
                    H => 2,
                    B => 1,
                    _ => 8,
                };
                match class {
                    LD => {
                        let hi = prog[pc].imm as u32 as u64;
                        pc += 1;
                        r[d] = if s == PSEUDO_MAP_FD as usize {
                            MAP | i.imm as u64
                        } else {
                            (hi << 32) | i.imm as u32 as u64
                        };
                    }
                    LDX => r[d] = self.load(r[s].wrapping_add(i.off as i64 as u64), size(i.code)),
                    STX => self.store(r[d].wrapping_add(i.off as i64 as u64), size(i.code), r[s]),
                    ST => self.store(
                        r[d].wrapping_add(i.off as i64 as u64),
                        size(i.code),
                        i.imm as i64 as u64,
                    ),
                    ALU | ALU64 => {
                        let v = if i.code & X != 0 {
                            r[s]
                        } else {
                            i.imm as i64 as u64
                        };
                        let res = match i.code & 0xf0 {
                            ADD => r[d].wrapping_add(v),
                            AND => r[d] & v,
                            MOV => v,
                            op => panic!("alu op {op:#x}"),
                        };
                        r[d] = if class == ALU { res as u32 as u64 } else { res };
                    }
                    JMP | JMP32 => {
                        let op = i.code & 0xf0;
                        if op == EXIT {
                            return;
                        }
                        if op == CALL {
                            r[0] = self.helper(i.imm, &r);
                            continue;
                        }
                        let (a, b) = if class == JMP32 {
                            (
                                r[d] as u32 as u64,
                                if i.code & X != 0 {
                                    r[s] as u32 as u64
                                } else {
                                    i.imm as u32 as u64
                                },
                            )
                        } else {
                            (
                                r[d],
                                if i.code & X != 0 {
                                    r[s]
                                } else {
                                    i.imm as i64 as u64
                                },
                            )
                        };
                        let jump = match op {
                            JA => true,
                            JEQ => a == b,
                            JNE => a != b,
                            JGT => a > b,
                            JLT => a < b,
                            op => panic!("jump op {op:#x}"),
                        };
                        if jump {
                            pc = (pc as i64 + i.off as i64) as usize;
                        }
                    }
                    _ => panic!("class {class}"),
                }
            }
        }

        fn counter(&self, c: Counter) -> u64 {
            let o = c as usize * 8;
            u64::from_le_bytes(self.counters[o..o + 8].try_into().unwrap())
        }
    }

    /// A tracepoint record as `TP_STORE_ADDRS` fills it.
    fn record(local: &SocketAddr, remote: &SocketAddr, old: i32, new: i32) -> Vec<u8> {
        let mut b = vec![0u8; 72];
        b[8..16].copy_from_slice(&SK.to_le_bytes());
        b[16..20].copy_from_slice(&old.to_le_bytes());
        b[20..24].copy_from_slice(&new.to_le_bytes());
        b[24..26].copy_from_slice(&local.port().to_le_bytes());
        b[26..28].copy_from_slice(&remote.port().to_le_bytes());
        let v6 = |ip: IpAddr| match ip {
            IpAddr::V4(a) => a.to_ipv6_mapped(),
            IpAddr::V6(a) => a,
        };
        let family: u16 = if local.is_ipv4() { 2 } else { 10 };
        b[28..30].copy_from_slice(&family.to_le_bytes());
        b[30..32].copy_from_slice(&6u16.to_le_bytes());
        b[40..56].copy_from_slice(&v6(local.ip()).octets());
        b[56..72].copy_from_slice(&v6(remote.ip()).octets());
        b
    }

    fn emits(prog: &[Insn], local: &SocketAddr, remote: &SocketAddr) -> bool {
        let mut vm = Vm::new(record(local, remote, TCP_ESTABLISHED, 4), NET_OURS);
        vm.run(prog);
        vm.ring.len() == 1
    }

    fn target(net: &str, port: Option<u16>, local: Option<(u16, u16)>) -> Target {
        Target::test(net, port, local)
    }

    fn remote_addrs() -> Vec<IpAddr> {
        let v4: Vec<Ipv4Addr> = [
            "10.0.0.5",
            "10.0.0.4",
            "10.0.0.200",
            "10.0.1.1",
            "11.0.0.5",
            "127.0.0.2",
            "0.0.0.0",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let v6 = [
            "::1",
            "2001:db8::1",
            "2001:db8:0:1::9",
            "2001:db9::1",
            "fe80::1",
            "::",
        ];
        let mut all: Vec<IpAddr> = v4.iter().map(|a| IpAddr::V4(*a)).collect();
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
        "0.0.0.0/0",
        "::1/128",
        "2001:db8::/32",
        "2001:db8:0:1::/64",
        "::/0",
        "::ffff:0:0/96",
        "::fffe:0:0/95",
    ];
    const PORTS: &[u16] = &[0, 4999, 5000, 6000, 6001, 9876, 65535];
    const TARGET_PORTS: &[Option<u16>] = &[None, Some(5000), Some(9876)];
    const LOCAL_RANGES: &[Option<(u16, u16)>] = &[None, Some((5000, 6000)), Some((0, 0))];

    /// Runs every socket of the grid through the program; it must emit exactly the sockets
    /// `classify` attributes to a target. Returns how many matched.
    fn check(targets: &Targets) -> usize {
        let prog = build(&FORMAT, targets, OUR_NETNS, MAPS).unwrap();
        let mut matched = 0;
        for ip in remote_addrs() {
            for &rport in PORTS {
                for &lport in PORTS {
                    // A socket's family follows its addresses: a mapped peer means an
                    // AF_INET6 socket, as does any IPv6 address.
                    let local_ip = if ip.is_ipv4() {
                        IpAddr::V4(Ipv4Addr::LOCALHOST)
                    } else {
                        IpAddr::V6(Ipv6Addr::LOCALHOST)
                    };
                    let (local, remote) =
                        (SocketAddr::new(local_ip, lport), SocketAddr::new(ip, rport));
                    let want = targets.classify(&local, &remote).is_some();
                    assert_eq!(
                        emits(&prog, &local, &remote),
                        want,
                        "{local} -> {remote} with {targets:?}"
                    );
                    matched += usize::from(want);
                }
            }
        }
        matched
    }

    #[test]
    fn every_single_target_agrees_with_classify() {
        for net in NETS {
            for &port in TARGET_PORTS {
                for &local in LOCAL_RANGES {
                    let ts = Targets::new(vec![target(net, port, local)]);
                    let m = check(&ts);
                    // Blocks inside or beside the mapped range hold no address of the grid.
                    if !net.starts_with("::ff") && local != Some((0, 0)) {
                        assert!(m > 0, "{ts:?} matches nothing");
                    }
                }
            }
        }
    }

    #[test]
    fn several_targets_agree_with_classify() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut below = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        for _ in 0..40 {
            let n = 2 + below(4);
            let ts = Targets::new(
                (0..n)
                    .map(|_| {
                        target(
                            NETS[below(NETS.len())],
                            TARGET_PORTS[below(TARGET_PORTS.len())],
                            LOCAL_RANGES[below(LOCAL_RANGES.len())],
                        )
                    })
                    .collect(),
            );
            check(&ts);
        }
    }

    #[test]
    fn other_namespaces_are_counted_and_dropped() {
        let ts = Targets::new(vec![target("10.0.0.0/24", Some(9876), None)]);
        let prog = build(&FORMAT, &ts, OUR_NETNS, MAPS).unwrap();
        let (l, r) = (
            "10.1.1.1:5000".parse().unwrap(),
            "10.0.0.5:9876".parse().unwrap(),
        );
        let mut vm = Vm::new(record(&l, &r, TCP_ESTABLISHED, 8), NET_OTHER);
        vm.run(&prog);
        assert!(vm.ring.is_empty());
        assert_eq!(vm.counter(Counter::Matched), 1);
        assert_eq!(vm.counter(Counter::OtherNetns), 1);
        assert_eq!(vm.counter(Counter::Emitted), 0);
        let mut vm = Vm::new(record(&l, &r, TCP_ESTABLISHED, 8), NET_OURS);
        vm.run(&prog);
        assert_eq!(vm.ring.len(), 1);
        assert_eq!(vm.counter(Counter::Emitted), 1);
        // Not TCP: seen, nothing else.
        let mut rec = record(&l, &r, TCP_ESTABLISHED, 8);
        rec[30] = 132;
        let mut vm = Vm::new(rec, NET_OURS);
        vm.run(&prog);
        assert_eq!(
            (vm.counter(Counter::Seen), vm.counter(Counter::Matched)),
            (1, 0)
        );
    }

    #[test]
    fn the_connecting_process_is_carried_to_the_open() {
        let ts = Targets::new(vec![target("10.0.0.0/24", Some(9876), Some((5000, 5000)))]);
        let prog = build(&FORMAT, &ts, OUR_NETNS, MAPS).unwrap();
        let r: SocketAddr = "10.0.0.5:9876".parse().unwrap();
        // connect(): no local port yet.
        let mut vm = Vm::new(
            record(&"0.0.0.0:0".parse().unwrap(), &r, TCP_CLOSE, TCP_SYN_SENT),
            NET_OURS,
        );
        vm.run(&prog);
        assert!(vm.ring.is_empty());
        assert_eq!(vm.connects.len(), 1);
        // SYN_SENT -> ESTABLISHED (in softirq: the current task is someone else).
        vm.ctx = record(
            &"10.1.1.1:5000".parse().unwrap(),
            &r,
            TCP_SYN_SENT,
            TCP_ESTABLISHED,
        );
        vm.run(&prog);
        assert_eq!(vm.ring.len(), 1);
        assert!(vm.connects.is_empty(), "forgotten once used");
        let t = super::super::Transition::parse(&vm.ring[0]).unwrap();
        // The socket's counters as the state changed, total_retrans from the low 4 bytes.
        assert_eq!(
            t.counters,
            super::super::SocketCounters {
                bytes_sent: 5000,
                bytes_received: 700,
                retransmits: 3
            }
        );
        assert_eq!(t.local, "10.1.1.1:5000".parse().unwrap());
        assert_eq!(t.remote, r);
        assert_eq!(t.cookie, 77);
        assert_eq!(t.sock, SK);
        assert_eq!(t.ktime_ns, 1_000);
        assert_eq!(t.old, crate::TcpState::SynSent);
        assert_eq!(t.new, crate::TcpState::Established);
        let p = t.process.unwrap();
        assert_eq!((p.pid, p.comm.as_str()), (42, "gwfx"));
    }

    #[test]
    fn too_many_targets_are_refused() {
        let ts = Targets::new(vec![target("10.0.0.5/32", None, None); MAX_TARGETS + 1]);
        assert_eq!(
            build(&FORMAT, &ts, 1, MAPS).unwrap_err(),
            TooManyTargets(MAX_TARGETS + 1)
        );
        let ts = Targets::new(vec![target("::/0", Some(1), Some((1, 2))); MAX_TARGETS]);
        build(&FORMAT, &ts, 1, MAPS).unwrap();
    }
}
