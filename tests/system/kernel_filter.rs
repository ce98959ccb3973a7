//! The bytecode compiler against the live kernel, property-tested: for generated targets around
//! this test's own loopback sockets, the kernel accepts the program (no EINVAL from
//! `inet_diag_bc_audit`) for either request, and what it lets through is exactly what
//! `Targets::classify` attributes: every socket of the test's own appears in the dump if and
//! only if a target claims it, and every socket in the dump (other processes' too) is claimed.
//! The first tier checks the same compiler against the mirror of the kernel
//! (`tests/integration/properties.rs`); this keeps the mirror honest.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};

use fix_monitor::source::netlink::{parse_dump, DumpMode, Family, NetlinkSource};
use fix_monitor::target::{PortRange, Target, Targets};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

type Pair = (SocketAddr, SocketAddr);

/// The test's sockets: connections among its own 127.X.Y.* addresses, over IPv4, IPv6 and a
/// dual-stack listener (whose accepted ends are IPv6 sockets with IPv4-mapped addresses).
struct Sockets {
    _held: Vec<(TcpStream, TcpStream)>,
    _listeners: Vec<TcpListener>,
    /// Every socket, both ends of every connection, as the kernel lists it.
    pairs: Vec<Pair>,
    base: Ipv4Addr,
}

fn ends(s: &TcpStream) -> Pair {
    (s.local_addr().unwrap(), s.peer_addr().unwrap())
}

impl Sockets {
    fn open() -> Sockets {
        let pid = std::process::id();
        let base = Ipv4Addr::new(127, 150 + (pid % 50) as u8, (pid / 50 % 256) as u8, 0);
        let at = |last: u8| {
            let o = base.octets();
            Ipv4Addr::new(o[0], o[1], o[2], last)
        };
        let mut held = Vec::new();
        let mut listeners = Vec::new();
        let mut connect = |from: IpAddr, l: &TcpListener, to: SocketAddr| {
            let s = socket2::Socket::new(
                socket2::Domain::for_address(to),
                socket2::Type::STREAM,
                None,
            )
            .unwrap();
            s.set_linger(Some(std::time::Duration::ZERO)).unwrap();
            s.bind(&SocketAddr::new(from, 0).into()).unwrap();
            s.connect(&to.into()).unwrap();
            let (server, _) = l.accept().unwrap();
            held.push((TcpStream::from(s), server));
        };
        for last in [2, 3] {
            let l = TcpListener::bind((at(last), 0)).unwrap();
            let to = l.local_addr().unwrap();
            for _ in 0..3 {
                connect(IpAddr::V4(at(1)), &l, to);
            }
            listeners.push(l);
        }
        let l6 = TcpListener::bind("[::1]:0").unwrap();
        let to = l6.local_addr().unwrap();
        for _ in 0..2 {
            connect(IpAddr::V6(Ipv6Addr::LOCALHOST), &l6, to);
        }
        listeners.push(l6);
        let dual = TcpListener::bind("[::]:0").unwrap();
        let to = SocketAddr::new(IpAddr::V4(at(5)), dual.local_addr().unwrap().port());
        for _ in 0..2 {
            connect(IpAddr::V4(at(4)), &dual, to);
        }
        listeners.push(dual);
        let pairs = held
            .iter()
            .flat_map(|(c, s)| [ends(c), ends(s)])
            .collect::<Vec<_>>();
        assert!(
            pairs
                .iter()
                .any(|(l, _)| matches!(l.ip(), IpAddr::V6(a) if a.to_ipv4_mapped().is_some())),
            "the dual-stack listener is not dual-stack"
        );
        Sockets {
            _held: held,
            _listeners: listeners,
            pairs,
            base,
        }
    }
}

/// Targets made of the test's own addresses and ports, at every kind of prefix, so that a
/// good share of cases match some of its sockets and miss others.
fn targets(s: &Sockets) -> impl Strategy<Value = Vec<Target>> {
    let mut ips: Vec<IpAddr> = s.pairs.iter().flat_map(|(l, r)| [l.ip(), r.ip()]).collect();
    ips.push(IpAddr::V4(s.base));
    ips.push(IpAddr::V6(s.base.to_ipv6_mapped()));
    ips.push(IpAddr::V6(s.base.to_ipv6_compatible()));
    ips.sort();
    ips.dedup();
    let mut ports: Vec<u16> = s
        .pairs
        .iter()
        .flat_map(|(l, r)| [l.port(), r.port()])
        .collect();
    ports.sort();
    ports.dedup();
    let net = (prop::sample::select(ips), any::<u8>()).prop_map(|(ip, p)| match ip {
        // Prefixes: the whole address half the time, anything the rest.
        IpAddr::V4(a) => IpNet::V4(Ipv4Net::new(a, if p < 128 { 32 } else { p % 33 }).unwrap()),
        IpAddr::V6(a) => IpNet::V6(Ipv6Net::new(a, if p < 128 { 128 } else { p % 129 }).unwrap()),
    });
    let port = prop_oneof![prop::sample::select(ports.clone()), any::<u16>()];
    let local =
        (prop::sample::select(ports), any::<u16>(), any::<bool>()).prop_map(|(p, width, below)| {
            let w = width % 64;
            if below {
                PortRange {
                    start: p.saturating_sub(w),
                    end: p,
                }
            } else {
                PortRange {
                    start: p,
                    end: p.saturating_add(w),
                }
            }
        });
    let target = (net, prop::option::of(port), prop::option::of(local)).prop_map(
        |(net, port, local_ports)| Target {
            name: Target::default_name(&net, port),
            net,
            port,
            local_ports,
            heartbeat: None,
            stale_after: None,
        },
    );
    prop::collection::vec(target, 1..6)
}

#[test]
fn the_live_kernel_accepts_the_filter_and_matches_exactly_what_classify_matches() {
    let sockets = Sockets::open();
    let mut runner = TestRunner::new(Config {
        cases: 96,
        max_shrink_iters: 500,
        failure_persistence: None,
        ..Config::default()
    });
    let own: BTreeSet<Pair> = sockets.pairs.iter().copied().collect();
    let (matched_some, missed_some) = (Cell::new(0), Cell::new(0));
    runner
        .run(&targets(&sockets), |targets| {
            let targets = Targets::new(targets);
            let mut source = NetlinkSource::open_in(&targets, DumpMode::PerFamily)
                .map_err(|e| TestCaseError::fail(format!("open: {e}")))?;
            for family in [Family::Both, Family::Inet, Family::Inet6] {
                let mut datagrams = Vec::new();
                source
                    .dump_raw(family, |d| datagrams.push(d.to_vec()))
                    .map_err(|e| {
                        TestCaseError::fail(format!(
                            "the kernel refused the program ({family:?}): {e}"
                        ))
                    })?;
                let mut got = Vec::new();
                for d in &datagrams {
                    parse_dump(d, &mut got).map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
                let got: BTreeSet<Pair> = got.iter().map(|e| (e.local, e.remote)).collect();
                // Nothing the user-space matcher would not claim, whoever's socket it is.
                for (l, r) in &got {
                    prop_assert!(
                        targets.classify(l, r).is_some(),
                        "{family:?}: the kernel let {l} -> {r} through"
                    );
                }
                // Every own socket the matcher claims, in the family the dump asked for.
                for &(l, r) in &own {
                    let in_family = match family {
                        Family::Both => true,
                        Family::Inet => l.is_ipv4(),
                        Family::Inet6 => l.is_ipv6(),
                    };
                    let want = in_family && targets.classify(&l, &r).is_some();
                    prop_assert_eq!(got.contains(&(l, r)), want, "{:?}: {} -> {}", family, l, r);
                }
            }
            if own.iter().any(|(l, r)| targets.classify(l, r).is_some()) {
                matched_some.set(matched_some.get() + 1);
            }
            if own.iter().any(|(l, r)| targets.classify(l, r).is_none()) {
                missed_some.set(missed_some.get() + 1);
            }
            Ok(())
        })
        .unwrap();
    // The cases are not all alike: many match some of the test's sockets, many miss some.
    let (matched_some, missed_some) = (matched_some.get(), missed_some.get());
    assert!(matched_some >= 20, "{matched_some} cases matched a socket");
    assert!(missed_some >= 20, "{missed_some} cases missed a socket");
}
