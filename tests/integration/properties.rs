//! Property tests of everything that reads bytes it does not control, and of the kernel-filter
//! compiler: generated inputs, fixed case budgets (the run stays in seconds), the same cases on
//! every run (proptest's seed is derived from the test name unless `PROPTEST_RNG_SEED` says
//! otherwise; a failure prints the minimal case). Coverage-guided fuzzing of the same functions
//! is `fuzz/` (`scripts/fuzz.sh`); the crashes it found are replayed by `fuzz_regressions`.
//!
//! - the netlink dump parser: any bytes give an answer, never a panic; a dump built from
//!   sockets, in the kernel's layout, parses back to exactly those sockets;
//! - the bytecode compiler: for any targets, the program passes the mirror of the kernel's audit
//!   and accepts exactly the sockets the user-space matcher attributes to a target (the live
//!   kernel's side is the second tier's `kernel_filter` test);
//! - the `/proc/net/tcp` parser: the same two properties.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use fix_monitor::source::bytecode::{self, mirror};
use fix_monitor::source::netlink::{parse_dump, DumpProgress};
use fix_monitor::source::procfs;
use fix_monitor::source::{SocketEntry, TcpState};
use fix_monitor::target::{PortRange, Target, Targets};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;
use proptest::test_runner::Config;

fn cases(n: u32) -> Config {
    Config {
        cases: n,
        // Shrinking stops after this many steps, so that a failure reports quickly too.
        max_shrink_iters: 2_000,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Sockets
// ---------------------------------------------------------------------------------------------

fn any_v6() -> impl Strategy<Value = Ipv6Addr> {
    prop_oneof![
        any::<u128>().prop_map(Ipv6Addr::from),
        any::<[u8; 4]>().prop_map(|a| Ipv4Addr::from(a).to_ipv6_mapped()),
        any::<[u8; 4]>().prop_map(|a| Ipv4Addr::from(a).to_ipv6_compatible()),
        Just(Ipv6Addr::LOCALHOST),
        Just(Ipv6Addr::UNSPECIFIED),
    ]
}

/// A socket as a source reports it: both ends of one family (an IPv6 socket may show IPv4
/// peers mapped), any state number the kernel might send, any cookie or inode.
fn socket() -> impl Strategy<Value = (SocketEntry, u8)> {
    let ends = prop_oneof![
        (
            any::<[u8; 4]>(),
            any::<u16>(),
            any::<[u8; 4]>(),
            any::<u16>()
        )
            .prop_map(|(l, lp, r, rp)| {
                (
                    SocketAddr::new(IpAddr::from(l), lp),
                    SocketAddr::new(IpAddr::from(r), rp),
                )
            }),
        (any_v6(), any::<u16>(), any_v6(), any::<u16>()).prop_map(|(l, lp, r, rp)| {
            (
                SocketAddr::new(IpAddr::V6(l), lp),
                SocketAddr::new(IpAddr::V6(r), rp),
            )
        }),
    ];
    (ends, any::<u8>(), any::<u64>()).prop_map(|((local, remote), state, id)| {
        (
            SocketEntry {
                local,
                remote,
                state: TcpState::from_linux(state),
                id,
                health: None,
            },
            state,
        )
    })
}

// ---------------------------------------------------------------------------------------------
// The netlink dump parser
// ---------------------------------------------------------------------------------------------

const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const TCPDIAG_GETSOCK: u16 = 18;
const SOCK_DIAG_BY_FAMILY: u16 = 20;

/// One netlink message: header, payload, and the padding to 4 bytes unless `pad` is false
/// (the kernel pads every message; the parser must not need the last one's padding).
fn nlmsg(out: &mut Vec<u8>, kind: u16, payload: &[u8], pad: bool) {
    let len = 16 + payload.len();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&0x2u16.to_ne_bytes()); // NLM_F_MULTI
    out.extend_from_slice(&[0; 8]); // seq, pid
    out.extend_from_slice(payload);
    if pad {
        out.resize(out.len() + (4 - len % 4) % 4, 0);
    }
}

/// `struct inet_diag_msg` for `e`, with `state` as the raw state number, followed by `extra`
/// bytes (attributes the parser must step over).
fn diag_msg(e: &SocketEntry, state: u8, extra: &[u8]) -> Vec<u8> {
    fn addr(a: &SocketAddr) -> [u8; 16] {
        let mut b = [0; 16];
        match a.ip() {
            IpAddr::V4(ip) => b[..4].copy_from_slice(&ip.octets()),
            IpAddr::V6(ip) => b.copy_from_slice(&ip.octets()),
        }
        b
    }
    let family = if e.local.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    } as u8;
    let mut m = vec![family, state, 0, 0];
    m.extend_from_slice(&e.local.port().to_be_bytes());
    m.extend_from_slice(&e.remote.port().to_be_bytes());
    m.extend_from_slice(&addr(&e.local));
    m.extend_from_slice(&addr(&e.remote));
    m.extend_from_slice(&7u32.to_ne_bytes()); // interface
    m.extend_from_slice(&(e.id as u32).to_ne_bytes()); // cookie, low word first
    m.extend_from_slice(&((e.id >> 32) as u32).to_ne_bytes());
    m.extend_from_slice(&[0xa5; 20]); // expires, rqueue, wqueue, uid, inode
    assert_eq!(m.len(), 72);
    m.extend_from_slice(extra);
    m
}

/// What goes into a generated dump besides the sockets.
#[derive(Debug, Clone)]
struct DumpShape {
    /// Per socket: the message type (either request's) and how many attribute bytes follow.
    per_socket: Vec<(bool, usize)>,
    /// NOOP messages after these socket indices.
    noops: Vec<usize>,
    /// Datagram boundaries after these socket indices.
    splits: Vec<usize>,
    /// Whether `NLMSG_DONE` carries its 4-byte status (0).
    done_status: bool,
    /// Whether the last message of each datagram is padded.
    pad_last: bool,
}

fn dump_case() -> impl Strategy<Value = (Vec<(SocketEntry, u8)>, DumpShape)> {
    prop::collection::vec(socket(), 0..40).prop_flat_map(|sockets| {
        let n = sockets.len();
        let shape = (
            prop::collection::vec((any::<bool>(), 0usize..40), n),
            prop::collection::vec(0..=n, 0..4),
            prop::collection::vec(0..=n, 0..4),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                |(per_socket, noops, splits, done_status, pad_last)| DumpShape {
                    per_socket,
                    noops,
                    splits,
                    done_status,
                    pad_last,
                },
            );
        (Just(sockets), shape)
    })
}

/// The datagrams of a dump of `sockets`, shaped by `shape`, ending with `NLMSG_DONE`.
fn build_dump(sockets: &[(SocketEntry, u8)], shape: &DumpShape) -> Vec<Vec<u8>> {
    let mut datagrams = vec![Vec::new()];
    let mut messages_in_last = Vec::new();
    let mut push = |datagrams: &mut Vec<Vec<u8>>, kind: u16, payload: &[u8]| {
        let d = datagrams.last_mut().unwrap();
        let at = d.len();
        nlmsg(d, kind, payload, true);
        messages_in_last.push(at);
    };
    for i in 0..=sockets.len() {
        if shape.splits.contains(&i) && !datagrams.last().unwrap().is_empty() {
            datagrams.push(Vec::new());
        }
        for _ in shape.noops.iter().filter(|&&k| k == i) {
            push(&mut datagrams, NLMSG_NOOP, &[]);
        }
        if let Some((e, state)) = sockets.get(i) {
            let (legacy, extra) = shape.per_socket[i];
            let kind = if legacy {
                TCPDIAG_GETSOCK
            } else {
                SOCK_DIAG_BY_FAMILY
            };
            let extra: Vec<u8> = (0..extra).map(|b| b as u8).collect();
            push(&mut datagrams, kind, &diag_msg(e, *state, &extra));
        }
    }
    let done: &[u8] = if shape.done_status { &[0; 4] } else { &[] };
    push(&mut datagrams, NLMSG_DONE, done);
    if !shape.pad_last {
        // Strip each datagram's trailing padding: the parser must not rely on it.
        for d in &mut datagrams {
            let mut at = 0;
            let mut last = 0;
            while at < d.len() {
                last = at;
                let len = u32::from_ne_bytes(d[at..at + 4].try_into().unwrap()) as usize;
                at += (len + 3) & !3;
            }
            let len = u32::from_ne_bytes(d[last..last + 4].try_into().unwrap()) as usize;
            d.truncate(last + len);
        }
    }
    datagrams
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn a_dump_built_from_sockets_parses_back_to_them((sockets, shape) in dump_case()) {
        let datagrams = build_dump(&sockets, &shape);
        let mut out = Vec::new();
        for (i, d) in datagrams.iter().enumerate() {
            let progress = parse_dump(d, &mut out).unwrap();
            let last = i == datagrams.len() - 1;
            prop_assert_eq!(progress, if last { DumpProgress::Done } else { DumpProgress::More });
        }
        let want: Vec<SocketEntry> = sockets.iter().map(|(e, _)| *e).collect();
        prop_assert_eq!(out, want);
    }

    /// Any bytes: an answer, never a panic, and never more sockets than the bytes can hold.
    #[test]
    fn any_bytes_are_an_answer_not_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut out = Vec::new();
        let _ = parse_dump(&bytes, &mut out);
        prop_assert!(out.len() <= bytes.len() / (16 + 72));
    }

    /// Hostile bytes that look like a dump: a real one, with bytes overwritten, cut short or
    /// lengths changed, reach the parser's deeper paths that random bytes rarely do.
    #[test]
    fn a_damaged_dump_is_an_answer_not_a_panic(
        (sockets, shape) in dump_case(),
        damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        for mut d in build_dump(&sockets, &shape) {
            for (at, byte) in &damage {
                let i = at.index(d.len());
                d[i] = *byte;
            }
            let mut out = Vec::new();
            let _ = parse_dump(&d, &mut out);
            let cut = cut.index(d.len() + 1);
            let _ = parse_dump(&d[..cut], &mut out);
        }
    }

    /// Error messages in a dump: a negative status is an error (the errno the kernel sent),
    /// zero an acknowledgement that is stepped over.
    #[test]
    fn errors_in_a_dump_are_reported_with_their_errno(err in -4095i32..=0, in_done in any::<bool>()) {
        let mut d = Vec::new();
        let kind = if in_done { NLMSG_DONE } else { NLMSG_ERROR };
        nlmsg(&mut d, kind, &err.to_ne_bytes(), true);
        let mut out = Vec::new();
        let r = parse_dump(&d, &mut out);
        match (err, in_done) {
            (0, true) => prop_assert_eq!(r.unwrap(), DumpProgress::Done),
            (0, false) => prop_assert_eq!(r.unwrap(), DumpProgress::More),
            _ => match r {
                Err(fix_monitor::source::SourceError::Io { source, .. }) => {
                    prop_assert_eq!(source.raw_os_error(), Some(-err))
                }
                other => prop_assert!(false, "{:?}", other),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The bytecode compiler
// ---------------------------------------------------------------------------------------------

/// Addresses that put blocks where the filter has edges: loopback, private space, the
/// IPv4-mapped and -compatible ranges, and anything at all.
fn v4_addr() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(Ipv4Addr::from),
        (0u8..4, any::<u8>()).prop_map(|(c, d)| Ipv4Addr::new(10, 0, c, d)),
        Just(Ipv4Addr::new(127, 0, 0, 2)),
        Just(Ipv4Addr::UNSPECIFIED),
        Just(Ipv4Addr::BROADCAST),
    ]
}

fn v6_addr() -> impl Strategy<Value = Ipv6Addr> {
    prop_oneof![
        any_v6(),
        v4_addr().prop_map(|a| a.to_ipv6_mapped()),
        v4_addr().prop_map(|a| a.to_ipv6_compatible()),
        (any::<u16>(), any::<u16>()).prop_map(|(a, b)| Ipv6Addr::new(0, 0, 0, 0, 0, 0xfffe, a, b)),
        any::<u16>().prop_map(|a| Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, a)),
    ]
}

fn net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (v4_addr(), 0u8..=32).prop_map(|(a, p)| IpNet::V4(Ipv4Net::new(a, p).unwrap())),
        (v6_addr(), 0u8..=128).prop_map(|(a, p)| IpNet::V6(Ipv6Net::new(a, p).unwrap())),
        // Prefixes around the mapped block's /96, where the filter needs its extra test.
        (v6_addr(), 80u8..=104).prop_map(|(a, p)| IpNet::V6(Ipv6Net::new(a, p).unwrap())),
    ]
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![
        any::<u16>(),
        Just(0u16),
        Just(1),
        Just(5000),
        Just(9876),
        Just(65535)
    ]
}

fn target() -> impl Strategy<Value = Target> {
    (
        net(),
        prop::option::of(port()),
        prop::option::of((port(), port())),
    )
        .prop_map(|(net, port, local)| Target {
            name: Target::default_name(&net, port),
            net,
            port,
            local_ports: local.map(|(a, b)| PortRange {
                start: a.min(b),
                end: a.max(b),
            }),
            heartbeat: None,
            stale_after: None,
        })
}

/// Sockets worth asking about for `targets`: peers inside and just outside every block (its
/// first and last address, one past each end), as IPv4, mapped and compatible IPv6, at the
/// targets' ports and next to them, plus arbitrary ones.
fn probes(targets: &Targets, seed: &[(u128, u16, u16)]) -> Vec<(SocketAddr, SocketAddr)> {
    let mut ips: Vec<IpAddr> = Vec::new();
    let mut ports: Vec<u16> = vec![0, 1, 65535];
    let mut local_ports: Vec<u16> = vec![0, 65535];
    for t in targets.iter() {
        let (first, last) = (t.net.network(), t.net.broadcast());
        for ip in [first, last, t.net.addr()] {
            ips.push(ip);
            match ip {
                IpAddr::V4(a) => {
                    let n = u32::from(a);
                    ips.push(IpAddr::V4(n.wrapping_add(1).into()));
                    ips.push(IpAddr::V4(n.wrapping_sub(1).into()));
                    ips.push(IpAddr::V6(a.to_ipv6_mapped()));
                    ips.push(IpAddr::V6(a.to_ipv6_compatible()));
                }
                IpAddr::V6(a) => {
                    let n = u128::from(a);
                    ips.push(IpAddr::V6(n.wrapping_add(1).into()));
                    ips.push(IpAddr::V6(n.wrapping_sub(1).into()));
                    if let Some(v4) = a.to_ipv4_mapped() {
                        ips.push(IpAddr::V4(v4));
                    }
                }
            }
        }
        if let Some(p) = t.port {
            ports.extend([p, p.wrapping_add(1), p.wrapping_sub(1)]);
        }
        if let Some(r) = t.local_ports {
            local_ports.extend([
                r.start,
                r.end,
                r.start.wrapping_sub(1),
                r.end.wrapping_add(1),
            ]);
        }
    }
    for &(ip, p, lp) in seed {
        ips.push(IpAddr::V6(ip.into()));
        ips.push(IpAddr::V4((ip as u32).into()));
        ports.push(p);
        local_ports.push(lp);
    }
    let mut out = Vec::new();
    for &ip in &ips {
        let local_ip = match ip {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        for &p in &ports {
            for &lp in &local_ports {
                out.push((SocketAddr::new(local_ip, lp), SocketAddr::new(ip, p)));
            }
        }
    }
    out
}

/// Compiles `targets` and checks the program against the mirror of the kernel: it passes the
/// audit, and over `probes` accepts exactly what `Targets::classify` accepts. Returns how many
/// probes matched.
fn check_program(
    targets: &Targets,
    probes: &[(SocketAddr, SocketAddr)],
) -> Result<usize, TestCaseError> {
    let bc = bytecode::compile(targets).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(bc.len() <= bytecode::MAX_LEN);
    mirror::audit(&bc).map_err(|e| TestCaseError::fail(format!("audit refuses: {e}")))?;
    let mut matched = 0;
    for (local, remote) in probes {
        let want = targets.classify(local, remote).is_some();
        let got = mirror::run(&bc, &mirror::Entry::new(local, remote));
        prop_assert_eq!(got, want, "{} -> {}", local, remote);
        matched += usize::from(got);
    }
    Ok(matched)
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn the_filter_passes_the_audit_and_matches_what_classify_matches(
        targets in prop::collection::vec(target(), 0..6),
        seed in prop::collection::vec((any::<u128>(), port(), port()), 0..3),
    ) {
        let targets = Targets::new(targets);
        let probes = probes(&targets, &seed);
        let matched = check_program(&targets, &probes)?;
        // Agreeing proves little if nothing matched: every target's own first address, at its
        // port and first local port, is a probe, and it matches unless the block lies in the
        // IPv4-mapped range (such peers count as the IPv4 addresses they carry).
        let mapped: Ipv6Net = "::ffff:0:0/96".parse().unwrap();
        let reachable = targets.iter().any(|t| match t.net {
            IpNet::V4(_) => true,
            IpNet::V6(n) => !mapped.contains(&n),
        });
        prop_assert_eq!(matched > 0, reachable, "{} matched", matched);
    }
}

proptest! {
    // Long programs: few cases, each compiled and audited whole (the audit is quadratic, as
    // the kernel's is).
    #![proptest_config(cases(4))]

    /// Any number of targets: a program up to the attribute's limit, an error past it, never a
    /// program the kernel would refuse.
    #[test]
    fn long_programs_fit_or_are_refused(targets in prop::collection::vec(target(), 600..1000)) {
        let targets = Targets::new(targets);
        match bytecode::compile(&targets) {
            Ok(bc) => {
                prop_assert!(bc.len() <= bytecode::MAX_LEN);
                mirror::audit(&bc).map_err(|e| TestCaseError::fail(format!("audit refuses: {e}")))?;
                // The last target is reachable: its own first address matches through it,
                // unless an earlier target already takes it (then classify says so too).
                let last = targets.iter().last().unwrap();
                let probe = (
                    SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), last.local_ports.map_or(1, |r| r.start)),
                    SocketAddr::new(last.net.network(), last.port.unwrap_or(1)),
                );
                check_program(&targets, &[probe])?;
            }
            Err(e) => prop_assert!(e.len > bytecode::MAX_LEN),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The /proc/net/tcp parser
// ---------------------------------------------------------------------------------------------

const HEADER_V4: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";
const HEADER_V6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";

/// An address as `tcp4_seq_show`/`tcp6_seq_show` print it: each 32-bit word of the address in
/// memory order, printed as a host-order number.
fn proc_addr(a: &SocketAddr) -> String {
    let words = |b: &[u8]| -> String {
        b.chunks(4)
            .map(|w| format!("{:08X}", u32::from_ne_bytes(w.try_into().unwrap())))
            .collect()
    };
    let ip = match a.ip() {
        IpAddr::V4(ip) => words(&ip.octets()),
        IpAddr::V6(ip) => words(&ip.octets()),
    };
    format!("{ip}:{:04X}", a.port())
}

/// A table as the kernel prints it: a header, then one row per socket (state numbers the
/// kernel uses, 1 to 12; inodes as unsigned decimal).
fn proc_table(v6: bool, sockets: &[(SocketEntry, u8)]) -> String {
    let mut t = String::from(if v6 { HEADER_V6 } else { HEADER_V4 });
    t.push('\n');
    for (i, (e, state)) in sockets.iter().enumerate() {
        t.push_str(&format!(
            "{i:4}: {} {} {state:02X} 00000000:00000000 00:00000000 00000000  1000        0 {} 1 0000000000000000 20 4 30 10 -1\n",
            proc_addr(&e.local),
            proc_addr(&e.remote),
            e.id,
        ));
    }
    t
}

fn proc_socket(v6: bool) -> impl Strategy<Value = (SocketEntry, u8)> {
    let ip = move || -> BoxedStrategy<IpAddr> {
        if v6 {
            any_v6().prop_map(IpAddr::V6).boxed()
        } else {
            any::<[u8; 4]>().prop_map(IpAddr::from).boxed()
        }
    };
    (
        ip(),
        any::<u16>(),
        ip(),
        any::<u16>(),
        1u8..=12,
        any::<u64>(),
    )
        .prop_map(|(l, lp, r, rp, state, id)| {
            (
                SocketEntry {
                    local: SocketAddr::new(l, lp),
                    remote: SocketAddr::new(r, rp),
                    state: TcpState::from_linux(state),
                    id,
                    health: None,
                },
                state,
            )
        })
}

fn table_case() -> impl Strategy<Value = (bool, Vec<(SocketEntry, u8)>)> {
    any::<bool>().prop_flat_map(|v6| (Just(v6), prop::collection::vec(proc_socket(v6), 0..30)))
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn a_table_built_from_sockets_parses_back_to_them((v6, sockets) in table_case()) {
        let text = proc_table(v6, &sockets);
        let got: Vec<SocketEntry> = procfs::rows(text.as_bytes()).collect::<Result<_, _>>().unwrap();
        let want: Vec<SocketEntry> = sockets.iter().map(|(e, _)| *e).collect();
        prop_assert_eq!(&got, &want);
        // And parse_table keeps exactly the ESTABLISHED ones a target claims.
        let everything = Targets::new(vec![
            Target { name: "v4".into(), net: "0.0.0.0/0".parse().unwrap(), port: None, local_ports: None, heartbeat: None, stale_after: None },
            Target { name: "v6".into(), net: "::/0".parse().unwrap(), port: None, local_ports: None, heartbeat: None, stale_after: None },
        ]);
        let mut kept = Vec::new();
        procfs::parse_table(text.as_bytes(), &everything, &mut kept).unwrap();
        let established: Vec<SocketEntry> =
            want.into_iter().filter(|e| e.state == TcpState::Established).collect();
        prop_assert_eq!(kept, established);
    }

    #[test]
    fn any_bytes_are_rows_or_errors_not_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        for row in procfs::rows(&bytes) {
            let _ = row;
        }
    }

    /// A real table with bytes overwritten or cut short: a row parses or is an error.
    #[test]
    fn a_damaged_table_is_rows_or_errors_not_a_panic(
        (v6, sockets) in table_case(),
        damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut text = proc_table(v6, &sockets).into_bytes();
        for (at, byte) in &damage {
            let i = at.index(text.len());
            text[i] = *byte;
        }
        let cut = cut.index(text.len() + 1);
        let everything = Targets::new(vec![
            Target { name: "all".into(), net: "::/0".parse().unwrap(), port: None, local_ports: None, heartbeat: None, stale_after: None },
        ]);
        let _ = procfs::parse_table(&text[..cut], &everything, &mut Vec::new());
        let _ = procfs::rows(&text).count();
    }
}
