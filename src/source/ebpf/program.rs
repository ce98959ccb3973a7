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
use crate::target::{Target, Targets};

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
    pub const LEN: usize = 88;
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
