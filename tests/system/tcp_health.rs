//! TCP health on the real kernel, against the kernel's own tools: what the netlink source (from
//! its dumps) and the eBPF source (from its in-kernel health pass) read from `tcp_info` agrees with `ss -tin`
//! for the same sockets at the same moment, and packets dropped by an nftables rule show as
//! retransmits (none without it). Needs `ss` (iproute2), `nft` (nftables) and root for the rule
//! and the eBPF program; each test runs once per source.
//!
//! Each test uses its own 127.0.45.x addresses and ports from the kernel; the nftables table is
//! named after the process and deleted at the end, whatever happens.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use fix_monitor::source::{SocketEntry, Source, SourceKind, TcpHealth};
use fix_monitor::target::{Target, Targets};

fn target(ip: &str) -> Target {
    let net = format!("{ip}/32").parse().unwrap();
    Target {
        name: Target::default_name(&net, None),
        net,
        port: None,
        local_ports: None,
        heartbeat: None,
        stale_after: None,
    }
}

/// Both sources that give `tcp_info`.
const KINDS: [SourceKind; 2] = [SourceKind::Netlink, SourceKind::Ebpf];

fn source(kind: SourceKind, ips: &[&str]) -> Box<dyn Source> {
    let targets = Targets::new(ips.iter().map(|ip| target(ip)).collect());
    let s = fix_monitor::source::open(kind, &targets).unwrap();
    assert_eq!(s.kind(), kind);
    s
}

fn connect(from: &str, l: &TcpListener) -> (TcpStream, TcpStream) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{from}:0").parse().unwrap();
    s.bind(&from.into()).unwrap();
    s.connect(&l.local_addr().unwrap().into()).unwrap();
    (s.into(), l.accept().unwrap().0)
}

type Pair = (SocketAddr, SocketAddr);

fn pair(s: &TcpStream) -> Pair {
    (s.local_addr().unwrap(), s.peer_addr().unwrap())
}

fn poll(source: &mut dyn Source) -> HashMap<Pair, TcpHealth> {
    let mut out: Vec<SocketEntry> = Vec::new();
    source.poll(&mut out).unwrap();
    out.iter()
        .map(|e| {
            (
                (e.local, e.remote),
                e.health
                    .unwrap_or_else(|| panic!("{}: no tcp_info for {e:?}", source.kind().as_str())),
            )
        })
        .collect()
}

/// Polls until `done` holds for the health of `socks` (10 s at most).
fn poll_until(
    source: &mut dyn Source,
    socks: &[&TcpStream],
    done: impl Fn(&[TcpHealth]) -> bool,
) -> Vec<TcpHealth> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = poll(source);
        let h: Vec<TcpHealth> = socks.iter().map(|s| all[&pair(s)]).collect();
        if done(&h) {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "{}: never settled: {h:#?}",
            source.kind().as_str()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One socket as `ss -tin` prints it.
#[derive(Debug)]
struct Ss {
    recv_q: u64,
    send_q: u64,
    /// `key:value` tokens, and `key value` for the rates (`delivery_rate 123bps`).
    fields: HashMap<String, String>,
}

impl Ss {
    fn field(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// A counter `ss` prints only when it is not zero.
    fn count(&self, key: &str) -> u64 {
        self.field(key).map_or(0, |v| v.parse().unwrap())
    }

    /// `rtt:0.039/0.013`, in ms, as µs.
    fn rtt_us(&self) -> (f64, f64) {
        let (a, b) = self.field("rtt").unwrap().split_once('/').unwrap();
        (
            a.parse::<f64>().unwrap() * 1e3,
            b.parse::<f64>().unwrap() * 1e3,
        )
    }

    /// `rwnd_limited:12ms(3.4%)`, in ms; absent when zero.
    fn limited_ms(&self, key: &str) -> u64 {
        self.field(key)
            .map_or(0, |v| v.split_once("ms").unwrap().0.parse().unwrap())
    }
}

/// `ss -tin` for the ESTABLISHED sockets whose source address is one of `ips`.
fn ss(ips: &[&str]) -> HashMap<Pair, Ss> {
    let filter = ips
        .iter()
        .map(|ip| format!("src {ip}"))
        .collect::<Vec<_>>()
        .join(" or ");
    let out = Command::new("ss")
        .args(["-tinH", "state", "established", &format!("( {filter} )")])
        .output()
        .expect("ss (iproute2) is required: scripts/fetch-tools.sh installs it");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut all = HashMap::new();
    let mut lines = text.lines();
    while let Some(head) = lines.next() {
        // Recv-Q Send-Q Local Peer (one state asked for: no state column), then the details.
        let h: Vec<&str> = head.split_whitespace().collect();
        assert_eq!(h.len(), 4, "{head:?} in {text}");
        let detail = lines
            .next()
            .unwrap_or_else(|| panic!("no details in {text}"));
        let mut fields = HashMap::new();
        let mut tokens = detail.split_whitespace().peekable();
        while let Some(t) = tokens.next() {
            match t.split_once(':') {
                Some((k, v)) => fields.insert(k.to_string(), v.to_string()),
                None => {
                    let v = match tokens.peek() {
                        Some(v) if v.ends_with("bps") => tokens.next().unwrap().to_string(),
                        _ => String::new(),
                    };
                    fields.insert(t.to_string(), v)
                }
            };
        }
        all.insert(
            (h[2].parse().unwrap(), h[3].parse().unwrap()),
            Ss {
                recv_q: h[0].parse().unwrap(),
                send_q: h[1].parse().unwrap(),
                fields,
            },
        );
    }
    all
}

/// `ss` at `got` lies between our readings `a` (before) and `b` (after), give or take `tol`.
#[track_caller]
fn between(what: &str, got: f64, a: f64, b: f64, tol: f64) {
    let (lo, hi) = (a.min(b) - tol, a.max(b) + tol);
    assert!(
        lo <= got && got <= hi,
        "{what}: ss says {got}, fix-monitor read {a} before and {b} after"
    );
}

/// Compares one socket. `idle`: no packet moves on it, so the times since the last ACK can be
/// compared too (a socket facing a zero window sends probes, whose ACKs reset it at any time).
fn agree(who: &str, s: &Ss, a: &TcpHealth, b: &TcpHealth, idle: bool) {
    let w = |f: &str| format!("{who} {f}");
    let n = |v: u64| v as f64;
    between(
        &w("Recv-Q"),
        n(s.recv_q),
        n(a.recv_queue.into()),
        n(b.recv_queue.into()),
        0.0,
    );
    between(
        &w("Send-Q"),
        n(s.send_q),
        n(a.send_queue.into()),
        n(b.send_queue.into()),
        0.0,
    );
    // ss prints RTTs in ms with %g: to the µs here.
    let (rtt, var) = s.rtt_us();
    between(&w("rtt"), rtt, n(a.rtt_us.into()), n(b.rtt_us.into()), 0.5);
    between(
        &w("rttvar"),
        var,
        n(a.rtt_var_us.into()),
        n(b.rtt_var_us.into()),
        0.5,
    );
    let min = s.field("minrtt").unwrap().parse::<f64>().unwrap() * 1e3;
    let (ma, mb) = (a.min_rtt_us.unwrap(), b.min_rtt_us.unwrap());
    between(&w("minrtt"), min, n(ma.into()), n(mb.into()), 0.5);
    let total = s
        .field("retrans")
        .map_or(0, |v| v.split_once('/').unwrap().1.parse().unwrap());
    between(
        &w("retrans"),
        n(total),
        n(a.retransmits.into()),
        n(b.retransmits.into()),
        0.0,
    );
    between(
        &w("lost"),
        n(s.count("lost")),
        n(a.lost.into()),
        n(b.lost.into()),
        0.0,
    );
    let opt = |v: Option<u64>| n(v.unwrap());
    for (key, x, y) in [
        ("bytes_acked", a.bytes_acked, b.bytes_acked),
        ("bytes_received", a.bytes_received, b.bytes_received),
        ("bytes_sent", a.bytes_sent, b.bytes_sent),
        (
            "notsent",
            a.not_sent.map(u64::from),
            b.not_sent.map(u64::from),
        ),
    ] {
        between(&w(key), n(s.count(key)), opt(x), opt(y), 0.0);
    }
    // delivery_rate in bits per second (printed raw under -n... as "%.0fbps").
    let rate = s
        .field("delivery_rate")
        .map_or(0, |v| v.trim_end_matches("bps").parse().unwrap());
    between(
        &w("delivery_rate"),
        n(rate),
        opt(a.delivery_rate) * 8.0,
        opt(b.delivery_rate) * 8.0,
        0.0,
    );
    let ms = |v: Option<u64>| n(v.unwrap() / 1000);
    for (key, x, y) in [
        ("rwnd_limited", a.rwnd_limited_us, b.rwnd_limited_us),
        ("sndbuf_limited", a.sndbuf_limited_us, b.sndbuf_limited_us),
    ] {
        between(&w(key), n(s.limited_ms(key)), ms(x), ms(y), 0.0);
    }
    let mut times = vec![("lastrcv", a.last_data_recv_ms, b.last_data_recv_ms)];
    if idle {
        // A blocked writer's times restart at any moment: zero-window probes reset lastack,
        // and the peer's receive buffer growing lets a little data out, which resets lastsnd
        // (seen: 76 ms before, `ss` 56, 68 after).
        times.push(("lastsnd", a.last_data_sent_ms, b.last_data_sent_ms));
        times.push(("lastack", a.last_ack_recv_ms, b.last_ack_recv_ms));
    }
    for (key, x, y) in times {
        let got = n(s.count(key));
        if y < x {
            // The time restarted between the two reads (data or an ACK arrived: a blocked
            // reader's window opening lets a little data in): `ss` read it before the restart
            // (at least the first read) or after (at most the second).
            assert!(
                got >= n(x.into()) || got <= n(y.into()),
                "{}: ss says {got}, fix-monitor read {x} before and {y} after (restarted)",
                w(key)
            );
        } else {
            between(&w(key), got, n(x.into()), n(y.into()), 0.0);
        }
    }
}

/// Writes into `client` until the kernel takes no more (the peer is not reading); returns the
/// bytes written.
fn fill(client: &mut TcpStream) -> u64 {
    client.set_nonblocking(true).unwrap();
    let mut written = 0u64;
    let chunk = [1u8; 64 * 1024];
    loop {
        match client.write(&chunk) {
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return written,
            Err(e) => panic!("{e}"),
        }
    }
}

/// Tolerance: queues, byte and segment counts and the delivery rate exactly; RTTs to the µs
/// (`ss` prints them in ms with `%g`); the times since the last send/receive/ACK and the
/// limited times (ms) between the readings just before and just after `ss` ran.
#[test]
fn tcp_info_agrees_with_ss_for_the_same_sockets_at_the_same_moment() {
    let (client_ip, server_ip) = ("127.0.45.1", "127.0.45.2");
    let l = TcpListener::bind(format!("{server_ip}:0")).unwrap();
    // An idle connection with data both ways, some left unread by the server.
    let (mut a_client, mut a_server) = connect(client_ip, &l);
    a_client.write_all(&[7; 100_000]).unwrap();
    a_server.read_exact(&mut vec![0; 60_000]).unwrap();
    a_server.write_all(&[8; 5_000]).unwrap();
    a_client.read_exact(&mut [0; 5_000]).unwrap();
    // A connection whose server stopped reading: a full send queue, a closed window.
    let (mut b_client, b_server) = connect(client_ip, &l);
    let written = fill(&mut b_client);

    for kind in KINDS {
        let mut source = source(kind, &[client_ip, server_ip]);
        let source = source.as_mut();
        poll_until(source, &[&a_client, &a_server, &b_client, &b_server], |h| {
            h[0].send_queue == 0
                && h[1].recv_queue == 40_000
                && h[1].send_queue == 0
                && u64::from(h[2].send_queue) + u64::from(h[3].recv_queue) == written
        });
        // Let the last ACKs' times move off zero, so that the times compare as times.
        std::thread::sleep(Duration::from_millis(20));

        let before = poll(source);
        let seen = ss(&[client_ip, server_ip]);
        let after = poll(source);
        for (name, s, idle) in [
            ("idle client", &a_client, true),
            ("idle server", &a_server, true),
            ("blocked client", &b_client, false),
            ("blocked server", &b_server, false),
        ] {
            let p = pair(s);
            let got = seen
                .get(&p)
                .unwrap_or_else(|| panic!("ss did not list {p:?}: {seen:?}"));
            agree(
                &format!("{} {name}", kind.as_str()),
                got,
                &before[&p],
                &after[&p],
                idle,
            );
        }
        // What the test did, as both tell it.
        assert_eq!(seen[&pair(&a_server)].recv_q, 40_000);
        assert!(seen[&pair(&b_client)].send_q > 0);
        assert!(before[&pair(&b_client)].rwnd_limited_us.unwrap() > 0);
    }
}

/// Packets the kernel dropped on its own so far: every CPU's backlog queue (the way loopback
/// delivers) and TCP's receive-side drops. The TCP counters are this namespace's.
fn kernel_drops() -> u64 {
    let softnet: u64 = std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap()
        .lines()
        .map(|l| u64::from_str_radix(l.split_whitespace().nth(1).unwrap(), 16).unwrap())
        .sum();
    let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap();
    let mut tcp = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let drops: u64 = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .filter(|(name, _)| {
            [
                "RcvPruned",
                "OfoPruned",
                "TCPBacklogDrop",
                "PFMemallocDrop",
                "TCPOFODrop",
                "TCPZeroWindowDrop",
                "TCPRcvQDrop",
            ]
            .contains(name)
        })
        .map(|(_, v)| v.parse::<u64>().unwrap())
        .sum();
    softnet + drops
}

/// Sends `n` bytes over a fresh connection from `from` to `l` while a thread reads them all;
/// returns the client's health once everything is acknowledged.
fn transfer(source: &mut dyn Source, from: &str, l: &TcpListener, n: usize) -> TcpHealth {
    let (mut client, mut server) = connect(from, l);
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0;
        while got < n {
            got += server.read(&mut buf).unwrap();
        }
        server
    });
    client.write_all(&vec![3u8; n]).unwrap();
    let _server = reader.join().unwrap();
    let mut h = poll_until(source, &[&client], |h| {
        h[0].bytes_acked == Some(n as u64 + 1)
    })[0];
    // A needless retransmit's D-SACK rides on the ACK of the duplicate, which may come after
    // the ACK of the last byte: give the count a moment to catch up (a real loss never does).
    let deadline = Instant::now() + Duration::from_secs(1);
    while Some(h.retransmits) != h.dsack_dups && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        h = poll_until(source, &[&client], |_| true)[0];
    }
    h
}

#[test]
fn packets_dropped_on_the_way_in_are_retransmits_and_none_without() {
    let (client_ip, lossy_ip, clean_ip) = ("127.0.45.3", "127.0.45.4", "127.0.45.5");
    let lossy = TcpListener::bind(format!("{lossy_ip}:0")).unwrap();
    let clean = TcpListener::bind(format!("{clean_ip}:0")).unwrap();
    const N: usize = 4 << 20;
    for kind in KINDS {
        // Targets match the remote end: the client sockets.
        let mut source = source(kind, &[lossy_ip, clean_ip]);
        let source = source.as_mut();

        // Without loss nothing needs resending. On a busy host the kernel may still resend a
        // segment whose ACK is only late (a tail-loss probe fires after two RTTs, some 50 µs on
        // loopback): the receiver then gets it twice and says so (D-SACK). Every retransmit must
        // be such a needless one.
        // "Without loss" is what the kernel says: on a busy host loopback itself drops packets
        // (a CPU's backlog queue past `netdev_max_backlog`, a receive queue over its budget),
        // and a segment lost that way is resent for real, with no D-SACK. Such a run checks the
        // byte accounting only.
        let drops_before = kernel_drops();
        let h = transfer(source, client_ip, &clean, N);
        let kernel_dropped = kernel_drops() - drops_before;
        eprintln!(
            "{}: no rule: {} segments retransmitted, {:?} of them needlessly; \
             the kernel dropped {kernel_dropped} packets meanwhile",
            kind.as_str(),
            h.retransmits,
            h.dsack_dups
        );
        assert_eq!(h.lost, 0, "{h:?}");
        if kernel_dropped == 0 {
            assert_eq!(
                Some(h.retransmits),
                h.dsack_dups,
                "no loss: every retransmit was a duplicate: {h:?}"
            );
        }
        assert_eq!(
            h.bytes_sent,
            Some(N as u64 + h.bytes_retrans.unwrap()),
            "each byte sent once, and the needless copies: {h:?}"
        );

        let table = crate::nft::NftTable::drop_one_in_ten(lossy.local_addr().unwrap().port());
        let h = transfer(source, client_ip, &lossy, N);
        let (dropped, dropped_bytes) = table.dropped();
        drop(table);
        assert!(dropped > 0, "the rule dropped nothing");
        eprintln!(
        "{}: {dropped} packets dropped, {} segments retransmitted ({:?} needlessly), {} bytes sent for {N}",
        kind.as_str(),
        h.retransmits,
        h.dsack_dups,
        h.bytes_sent.unwrap()
    );
        assert!(h.retransmits > 0, "{h:?}");
        // Every byte of data the rule dropped had to be sent again for the transfer to finish.
        // (Not every drop is a retransmitted segment: the kernel may merge small lost segments
        // into one when it resends them, and a dropped window probe carries no data.) An IPv4
        // packet's headers take at most 20 + 60 bytes.
        let dropped_data = dropped_bytes.saturating_sub(dropped * 80);
        assert!(
            h.bytes_retrans.unwrap() >= dropped_data,
            "{dropped_data} bytes of data dropped, {:?} sent again",
            h.bytes_retrans
        );
        assert_eq!(
            h.bytes_sent,
            Some(N as u64 + h.bytes_retrans.unwrap()),
            "retransmitted bytes are sent twice: {h:?}"
        );
        assert!(h.bytes_retrans.unwrap() > 0);
    }
}
