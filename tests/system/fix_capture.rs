//! The FIX wire source on the real kernel (needs root, for `CAP_NET_RAW`): a packet socket with
//! the targets' BPF program watches real FIX sessions between the simulator's gateway and
//! venues on loopback, and (the real binary) across a veth link between two network namespaces;
//! every count is checked against what the simulator did, and the kernel's filter is checked to
//! let nothing else through and to drop loopback's second copy.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fix_monitor::fix::capture::Capture;
use fix_monitor::fix::reassembly::Limits as StreamLimits;
use fix_monitor::fix::sim::scripted_session;
use fix_monitor::fix::tracker::{Direction, Event, Limits, Tracker};
use fix_monitor::fix::wire::{Content, Wire};
use fix_monitor::target::{Target, Targets};

use crate::netns::{Lan, NetNs};

struct Watch {
    wire: Wire,
    tracker: Tracker,
    latencies: Vec<(&'static str, Duration)>,
}

fn target(name: &str, addr: std::net::SocketAddr) -> Target {
    Target {
        name: name.into(),
        net: ipnet::IpNet::from(addr.ip()),
        port: Some(addr.port()),
        local_ports: None,
        heartbeat: None,
        stale_after: None,
    }
}

#[test]
fn fix_sessions_captured_on_loopback_match_the_simulator() {
    let ack_delay = Duration::from_millis(20);
    let (venue, refusing) = crate::harness::fix_venues(
        [std::net::Ipv4Addr::LOCALHOST.into(); 2],
        ack_delay,
        4,
        (6, 3),
    );
    // A third target that carries no FIX (encrypted, as far as we can tell).
    let opaque = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let targets = Targets::new(vec![
        target("venue", venue.addr),
        target("refusing", refusing.addr),
        target("opaque", opaque.local_addr().unwrap()),
    ]);
    let mut cap = Capture::open(&targets, 8 << 20).expect("a packet socket (run as root)");
    let retransmitted_before = retransmitted_here();
    let watch = Arc::new(Mutex::new(Watch {
        wire: Wire::new(targets, StreamLimits::default()),
        tracker: Tracker::new(Limits::default()),
        latencies: Vec::new(),
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let (w, s) = (watch.clone(), stop.clone());
    let reader = std::thread::spawn(move || {
        while !s.load(Ordering::SeqCst) {
            cap.recv_batch(Duration::from_millis(20), 1024, |p, at| {
                let mut g = w.lock().unwrap();
                let Watch {
                    wire,
                    tracker,
                    latencies,
                } = &mut *g;
                for e in wire.packet(p, at, tracker) {
                    if let Event::OrderAnswered {
                        request, latency, ..
                    } = e
                    {
                        latencies.push((request.as_str(), latency));
                    }
                }
            })
            .unwrap();
        }
        cap.kernel_stats().unwrap()
    });

    // Traffic the filter must keep out: another loopback connection.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut noise = std::net::TcpStream::connect(other.local_addr().unwrap()).unwrap();
    noise.write_all(&[b'x'; 1000]).unwrap();
    // The opaque target: a TLS-looking record and more bytes, no FIX.
    let mut tls = std::net::TcpStream::connect(opaque.local_addr().unwrap()).unwrap();
    let mut hello = vec![0x16, 0x03, 0x01, 0x10, 0x00];
    hello.extend(vec![0x5a; 5000]);
    tls.write_all(&hello).unwrap();

    let truth = scripted_session(venue.addr, 12, Some((refusing.addr, 3)), None).unwrap();
    let venue_rec = venue.stop();
    refusing.stop();

    let total: u64 = truth.sent.values().sum::<u64>() + truth.received.values().sum::<u64>();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = watch.lock().unwrap().wire.stats.messages;
        if seen >= total || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::SeqCst);
    let kstats = reader.join().unwrap();
    let g = watch.lock().unwrap();
    assert_eq!(g.wire.stats.messages, total);
    assert_eq!(g.wire.stats.malformed, 0);
    // Nothing but the targets' packets came through the kernel's filter, each once.
    assert_eq!(g.wire.stats.unmatched, 0);
    assert_eq!(g.wire.stats.unparsed, 0);
    let st = g.wire.stream_stats();
    // Loopback's second copy of each packet never gets through the filter; a segment the
    // kernel really resent (a busy host drops on loopback too) is seen twice, and is counted.
    let resent = retransmitted_here() - retransmitted_before;
    assert!(
        st.retransmitted_segments <= resent,
        "loopback's second copy got through: {} segments seen twice, {resent} resent",
        st.retransmitted_segments
    );
    assert_eq!(st.gaps, 0);
    assert_eq!(kstats.drops, 0);
    assert_eq!(kstats.packets, g.wire.stats.packets);

    let s = g.tracker.by_label("GW->VENUE").unwrap();
    let by_dir = |d: Direction| -> BTreeMap<String, u64> { s.by_type[d.idx()].clone() };
    let mut sent = truth.sent.clone();
    let mut received = truth.received.clone();
    *sent.get_mut("Logon").unwrap() -= 3;
    *received.get_mut("Logout").unwrap() -= 3;
    assert_eq!(by_dir(Direction::Out), sent);
    assert_eq!(by_dir(Direction::In), received);
    assert_eq!(s.target.as_deref(), Some("venue"));
    assert_eq!(s.tcp.unwrap().local, truth.local.unwrap());
    assert_eq!(s.logons, 1);
    assert_eq!((s.logouts_us, s.logouts_them), (1, 0));
    assert_eq!(s.last_logout_text.as_deref(), Some("end of day"));
    assert!(!s.logged_on());
    assert_eq!(s.dir(Direction::In).sequence_gaps, 1);
    assert_eq!(
        s.dir(Direction::In).sequence_gap_messages,
        venue_rec.gap_messages
    );
    assert_eq!(s.dir(Direction::Out).resend_requests, 1);
    assert_eq!(
        s.dir(Direction::In).business_rejects,
        venue_rec.sent["BusinessMessageReject"]
    );
    // Kernel timestamps lie between the gateway's send and its receive.
    assert_eq!(g.latencies.len(), truth.round_trips.len());
    for ((kind, lat), (tkind, rt)) in g.latencies.iter().zip(&truth.round_trips) {
        assert_eq!(kind, tkind);
        assert!(*lat >= ack_delay, "{lat:?}");
        assert!(lat <= rt, "{lat:?} > {rt:?}");
    }
    let refused = g.tracker.by_label("GW->VENUE2").unwrap();
    assert_eq!(refused.count(Direction::Out, "Logon"), 3);
    assert_eq!(refused.logons, 0);
    assert_eq!(refused.target.as_deref(), Some("refusing"));
    let conns = g.wire.connections();
    let opaque_conn = conns.iter().find(|c| c.target == "opaque").unwrap();
    assert_eq!(opaque_conn.content, Content::Tls);
    assert_eq!(opaque_conn.bytes_out, hello.len() as u64);
    drop(noise);
}

/// Where the pieces of [`binary_with_capture_matches_the_simulator`] run: the venues in
/// `venue_ns` at `venue_ips` (the two targets), the gateway and the sidecar in `gateway_ns`
/// (`None`: the test's own namespace).
struct Placement<'a> {
    venue_ns: Option<&'a NetNs>,
    venue_ips: [IpAddr; 2],
    gateway_ns: Option<&'a NetNs>,
}

/// Runs `f` in `ns`, or here when `ns` is `None`.
fn within<T: Send>(ns: Option<&NetNs>, f: impl FnOnce() -> T + Send) -> T {
    match ns {
        Some(ns) => ns.run(f),
        None => f(),
    }
}

/// `[fix] capture = true` through the real binary (root): the simulator's sessions on loopback
/// show on `/sessions` and `/metrics` with the simulator's counts, kernel-timed latencies
/// between the venue's delay and the gateway's round trip, and no capture drop.
#[test]
fn the_binary_with_capture_on_reports_what_the_simulator_did() {
    // Their own loopback addresses, so that only these sessions match the targets.
    binary_with_capture_matches_the_simulator(Placement {
        venue_ns: None,
        venue_ips: ["127.0.0.45".parse().unwrap(), "127.0.0.46".parse().unwrap()],
        gateway_ns: None,
    });
}

/// The same across a real link: the venues listen in one namespace, the gateway connects from
/// another over a veth pair (into a bridge in the venues' namespace), and the sidecar captures
/// in the gateway's namespace, where each packet passes once (on `eth0`, not twice as on `lo`).
#[test]
fn the_binary_with_capture_on_across_a_veth_link_reports_what_the_simulator_did() {
    let venues = NetNs::create("fixvenue");
    let gateway = NetNs::create("fixgw");
    let mut lan = Lan::new(&venues, [10, 212, 12], 1);
    lan.attach(&gateway, 2);
    let venue_ip = IpAddr::V4(lan.addr(1));
    binary_with_capture_matches_the_simulator(Placement {
        venue_ns: Some(&venues),
        venue_ips: [venue_ip, venue_ip],
        gateway_ns: Some(&gateway),
    });
}

/// TCP segments the kernel retransmitted in `ns` (`RetransSegs`, counted per namespace).
fn retransmitted_by_kernel(ns: &NetNs) -> u64 {
    retransmits_in(&ns.run(|| std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap()))
}

/// The same in the test's own namespace (every test's traffic in it: an upper bound).
fn retransmitted_here() -> u64 {
    retransmits_in(&std::fs::read_to_string("/proc/net/snmp").unwrap())
}

fn retransmits_in(snmp: &str) -> u64 {
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RetransSegs")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap()
}

/// The check both placements share: a scripted session against a venue that delays, rejects
/// and skips sequence numbers, and refused logons against a second venue; every count on
/// `/sessions` and `/metrics` is the simulator's.
fn binary_with_capture_matches_the_simulator(at: Placement) {
    use crate::harness::*;
    let ack_delay = Duration::from_millis(15);
    let (venue, refusing) = within(at.venue_ns, || {
        fix_venues(at.venue_ips, ack_delay, 3, (5, 2))
    });
    let cfg = config_file(&format!(
        r#"
[[targets]]
name = "venue-a"
address = "{ia}"
port = {pa}

[[targets]]
name = "venue-b"
address = "{ib}"
port = {pb}

[fix]
capture = true
"#,
        ia = at.venue_ips[0],
        ib = at.venue_ips[1],
        pa = venue.addr.port(),
        pb = refusing.addr.port()
    ));
    let args = [
        "--config",
        cfg.path().to_str().unwrap(),
        "--interval",
        "200ms",
    ];
    let sc = match at.gateway_ns {
        None => Sidecar::start(&args),
        Some(ns) => {
            // `ip netns exec NS fix-monitor`, with `harness::command`'s clean environment.
            let mut cmd = ns.command(bin());
            for (k, v) in command().get_envs() {
                match v {
                    Some(v) => cmd.env(k, v),
                    None => cmd.env_remove(k),
                };
            }
            Sidecar::start_with(cmd, &args)
        }
    };
    // The endpoint listens on loopback in the sidecar's namespace: ask from there.
    let json = |path: &str| within(at.gateway_ns, || sc.json(path));
    let metrics = || within(at.gateway_ns, || sc.metrics());
    let sessions = json("/sessions");
    assert_eq!(sessions["enabled"], true);
    assert_eq!(sessions["capture"], true);
    assert!(sessions["capture_error"].is_null(), "{sessions}");

    let truth = within(at.gateway_ns, || {
        scripted_session(venue.addr, 14, Some((refusing.addr, 2)), None)
    })
    .unwrap();
    let venue_rec = venue.stop();
    refusing.stop();
    let mut sent = truth.sent.clone();
    let mut received = truth.received.clone();
    *sent.get_mut("Logon").unwrap() -= 2;
    *received.get_mut("Logout").unwrap() -= 2;

    let by_type = |v: &serde_json::Value| -> BTreeMap<String, u64> {
        v.as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let find = |s: &serde_json::Value, label: &str| -> serde_json::Value {
        s["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["session"] == label)
            .cloned()
            .unwrap_or(serde_json::Value::Null)
    };
    let refused_logons = BTreeMap::from([("Logon".to_string(), 2)]);
    // The FIX layer publishes every 250 ms and /metrics is cached per poll: wait for both, up
    // to the last message (the second refusal). The refusing venue's Logout comes after our
    // Logon, so a round published between the two shows both Logons and one refusal, and
    // /metrics can be a poll behind /sessions: the refusals are waited for on both (counters
    // only grow: reached here, checked exactly below, so that a miscount shows its number).
    let mut last = serde_json::Value::Null;
    sc.wait_for(
        "every message and refusal on /sessions and /metrics",
        Duration::from_secs(15),
        |_| {
            let s = json("/sessions");
            let a = find(&s, "GW->VENUE");
            let b = find(&s, "GW->VENUE2");
            last = s.clone();
            let m = metrics();
            by_type(&a["out"]["by_type"]) == sent
                && by_type(&a["in"]["by_type"]) == received
                && by_type(&b["out"]["by_type"]) == refused_logons
                && b["logons_refused"].as_u64() >= Some(truth.refused_logons)
                && m.sum("fix_messages_total", &[("target", "venue-a")])
                    == (sent.values().sum::<u64>() + received.values().sum::<u64>()) as f64
                && m.sum(
                    "fix_session_logons_refused_total",
                    &[("target", "venue-b"), ("session", "GW->VENUE2")],
                ) >= truth.refused_logons as f64
        },
    );
    let a = find(&last, "GW->VENUE");
    assert_eq!(a["target"], "venue-a", "{last}");
    assert_eq!(a["timed_by"], "wire");
    assert_eq!(
        a["tcp"]["local"].as_str().unwrap(),
        truth.local.unwrap().to_string()
    );
    assert_eq!(a["logons"], 1);
    assert_eq!(
        (a["logouts_us"].as_u64(), a["logouts_them"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(a["last_logout_text"], "end of day");
    assert_eq!(a["logged_on"], false);
    assert_eq!(a["heartbeat_interval_seconds"], 30);
    assert_eq!(a["in"]["sequence_gaps"], 1);
    assert_eq!(a["in"]["sequence_gap_messages"], venue_rec.gap_messages);
    assert_eq!(a["out"]["resend_requests"], 1);
    assert_eq!(
        a["in"]["business_rejects"],
        venue_rec.sent["BusinessMessageReject"]
    );
    assert_eq!(a["orders_answered"], truth.round_trips.len() as u64);
    let b = find(&last, "GW->VENUE2");
    assert_eq!(b["target"], "venue-b");
    assert_eq!(b["logons"], 0);
    assert_eq!(by_type(&b["out"]["by_type"]), refused_logons);
    assert_eq!(b["last_logout_text"], truth.refusal_text.as_str());
    assert_eq!(b["logons_refused"], truth.refused_logons);
    assert_eq!(b["last_refusal_text"], truth.refusal_text.as_str());
    assert_eq!(last["stats"]["capture_drops"], 0);
    // Every message of both sessions decoded once, and nothing else let through: a packet
    // seen twice (loopback's second copy, or a veth's) would count as a retransmission.
    let st = &last["stats"];
    assert_eq!(
        st["wire"]["messages"],
        truth.sent.values().sum::<u64>() + truth.received.values().sum::<u64>(),
        "{st}"
    );
    assert_eq!(st["wire"]["malformed"], 0, "{st}");
    assert_eq!(st["wire"]["unmatched"], 0, "{st}");
    // A second copy of a packet would count as a retransmitted segment. Only where the
    // namespaces are the test's own can the kernel's count of real retransmissions (a tail loss
    // probe on a loaded machine) bound it; loopback's counters are the whole host's.
    if let (Some(v), Some(g)) = (at.venue_ns, at.gateway_ns) {
        let kernel = retransmitted_by_kernel(v) + retransmitted_by_kernel(g);
        let seen = st["streams"]["retransmitted_segments"].as_u64().unwrap();
        assert!(seen <= kernel, "{seen} > {kernel} the kernel sent: {st}");
    }
    assert_eq!(st["streams"]["gaps"], 0, "{st}");
    assert!(last["stats"]["capture_packets"].as_u64().unwrap() > 0);

    let m = metrics();
    let l = [("target", "venue-a"), ("session", "GW->VENUE")];
    let n = truth.round_trips.len() as f64;
    assert_eq!(m.sum("fix_order_ack_latency_seconds_count", &l), n);
    let lat = m.sum("fix_order_ack_latency_seconds_sum", &l);
    let rt: f64 = truth.round_trips.iter().map(|(_, d)| d.as_secs_f64()).sum();
    assert!(
        lat >= ack_delay.as_secs_f64() * n && lat <= rt,
        "latency sum {lat} not within [{}, {rt}]",
        ack_delay.as_secs_f64() * n
    );
    for (kind, count) in [("new", "new"), ("cancel", "cancel"), ("replace", "replace")] {
        let want = truth.round_trips.iter().filter(|(k, _)| *k == kind).count() as f64;
        let mut lk = l.to_vec();
        lk.push(("request", count));
        assert_eq!(
            m.sum("fix_order_ack_latency_seconds_count", &lk),
            want,
            "{kind}"
        );
    }
    for (t, v) in &sent {
        assert_eq!(
            m.sum(
                "fix_messages_total",
                &[("target", "venue-a"), ("direction", "out"), ("msg_type", t)]
            ),
            *v as f64,
            "out {t}"
        );
    }
    assert_eq!(m.sum("fix_session_logons_total", &l), 1.0);
    let b = [("target", "venue-b"), ("session", "GW->VENUE2")];
    assert_eq!(
        m.sum("fix_session_logons_refused_total", &b),
        truth.refused_logons as f64
    );
    assert_eq!(m.sum("fix_session_logons_refused_total", &l), 0.0);
    assert_eq!(
        m.sum(
            "fix_session_logouts_total",
            &[("target", "venue-a"), ("initiator", "us")]
        ),
        1.0
    );
    assert_eq!(m.sum("fix_session_logged_on", &l), 0.0);
    assert_eq!(
        m.sum(
            "fix_session_sequence_gaps_total",
            &[("target", "venue-a"), ("direction", "in")]
        ),
        1.0
    );
    assert_eq!(m.sum("fix_monitor_capture_drops_total", &[]), 0.0);
    assert_eq!(m.sum("fix_monitor_fix_messages_malformed_total", &[]), 0.0);
    let (status, log) = sc.terminate();
    assert!(status.success(), "exit {status:?}\n{log}");
}

/// A reload in the middle of a captured FIX message: the target it belongs to stays (another
/// is removed, one added in front, so its id changes), and the message whose first half came
/// before the reload and second half after it is decoded once: the wire's stream goes on across
/// the reload (`Wire::retarget`). A stream picked up afresh would skip the second half.
#[test]
fn a_reload_mid_message_loses_no_captured_message() {
    use crate::harness::*;
    use fix_monitor::fix::codec;
    use std::io::Write as _;
    let (a, b, c) = (
        Downstream::listen("127.0.0.1:0"),
        Downstream::listen("127.0.0.1:0"),
        Downstream::listen("127.0.0.1:0"),
    );
    let stanza = |name: &str, d: &Downstream| {
        format!(
            "[[targets]]\nname = \"{name}\"\naddress = \"{}\"\nport = {}\n",
            d.addr.ip(),
            d.addr.port()
        )
    };
    let fix = "[fix]\ncapture = true\n";
    let first = format!("{}{}{fix}", stanza("venue-a", &a), stanza("venue-b", &b));
    let cfg = config_file(&first);
    let path = cfg.path().to_str().unwrap().to_owned();
    let sc = Sidecar::start(&["--config", &path, "--interval", "200ms"]);
    let msg = |seq: &str, fields: &[(u32, &[u8])]| {
        let mut all: Vec<(u32, &[u8])> = vec![(49, b"GW"), (56, b"VENUE"), (34, seq.as_bytes())];
        all.splice(0..0, fields[..1].iter().copied());
        all.extend_from_slice(&fields[1..]);
        codec::write("FIX.4.4", &all, codec::SOH)
    };
    let out_messages = |s: &Sidecar| {
        let j = s.json("/sessions");
        (j["sessions"][0]["out"]["messages"].as_u64(), j)
    };
    let mut gw = std::net::TcpStream::connect(a.addr).unwrap();
    gw.set_nodelay(true).unwrap();
    gw.write_all(&msg("1", &[(35, b"A"), (98, b"0"), (108, b"30")]))
        .unwrap();
    sc.wait_for("the Logon", Duration::from_secs(10), |s| {
        out_messages(s).0 == Some(1)
    });
    let order = msg("2", &[(35, b"D"), (11, b"ORD-1"), (55, b"XYZ"), (54, b"1")]);
    let (head, tail) = order.split_at(order.len() / 2);
    gw.write_all(head).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Reloaded between the two halves: venue-b removed, venue-c added in front of venue-a.
    std::fs::write(
        &path,
        format!("{}{}{fix}", stanza("venue-c", &c), stanza("venue-a", &a)),
    )
    .unwrap();
    // SAFETY: kill(2) on the child's pid, which this test owns.
    assert_eq!(unsafe { libc::kill(sc.pid() as i32, libc::SIGHUP) }, 0);
    sc.wait_for(
        "the FIX layer on the new targets",
        Duration::from_secs(10),
        |s| {
            s.log()
                .contains("FIX layer: running on the reloaded configuration")
        },
    );
    gw.write_all(tail).unwrap();
    gw.write_all(&msg("3", &[(35, b"0")])).unwrap();
    sc.wait_for("three messages", Duration::from_secs(10), |s| {
        out_messages(s).0 == Some(3)
    });
    let (_, j) = out_messages(&sc);
    let s = &j["sessions"][0];
    assert_eq!(s["target"], "venue-a", "{j:#}");
    assert_eq!(s["out"]["by_type"]["NewOrderSingle"], 1, "{j:#}");
    assert_eq!(s["out"]["sequence_gaps"], 0, "{j:#}");
    let m = sc.metrics();
    assert_eq!(m.sum("fix_messages_total", &[("target", "venue-a")]), 3.0);
}
