//! Why each session ended, through the real binary with `[fix] capture = true` (root, for
//! `CAP_NET_RAW`): the test plays both the gateway and the venue on loopback, ends one session
//! in each way a desk sees (a Logout either way, a refused Logon, an unanswered TestRequest
//! followed by a reset, a Logout citing sequence numbers, a reset either way, a close without a
//! Logout), and checks that each ends with exactly the expected cause: on
//! `fix_session_ends_total`, in `/connections` and in the log, and that the causes add up to the
//! closes.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use fix_monitor::fix::sim::Peer;

use crate::harness::*;

const VENUE_IP: &str = "127.0.0.53";

/// The gateway and the venue ends of one FIX session, logged on unless `logon` is false.
fn pair(listener: &TcpListener, logon: bool) -> (Peer, Peer) {
    let gw_stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (venue_stream, _) = listener.accept().unwrap();
    let mut gw = Peer::new(gw_stream, "FIX.4.4", "GW", "VENUE");
    let mut venue = Peer::new(venue_stream, "FIX.4.4", "VENUE", "GW");
    if logon {
        gw.send("A", &[(98, "0"), (108, "30")]).unwrap();
        venue.expect("A", Duration::from_secs(5)).unwrap();
        venue.send("A", &[(98, "0"), (108, "30")]).unwrap();
        gw.expect("A", Duration::from_secs(5)).unwrap();
    }
    (gw, venue)
}

fn local_port(p: &Peer) -> u16 {
    p.stream().local_addr().unwrap().port()
}

/// Close with a RST (SO_LINGER 0).
fn reset(p: Peer) {
    socket2::SockRef::from(p.stream())
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(p);
}

/// A Logout from `first` (with `text`), answered by `second`; `first` closes first.
fn logout_and_close(mut first: Peer, mut second: Peer, text: &str) {
    let wait = Duration::from_secs(5);
    first.send("5", &[(58, text)]).unwrap();
    second.expect("5", wait).unwrap();
    second.send("5", &[]).unwrap();
    first.expect("5", wait).unwrap();
    first.close();
    second.close();
}

/// One session per way of ending; returns the gateway's local port of each, with the cause
/// expected.
fn end_sessions(listener: &TcpListener) -> BTreeMap<u16, &'static str> {
    let wait = Duration::from_secs(5);
    let mut expected = BTreeMap::new();

    // The venue ends the day with a Logout; the gateway answers; the venue closes.
    let (gw, venue) = pair(listener, true);
    expected.insert(local_port(&gw), "logout_by_them");
    logout_and_close(venue, gw, "End of day");
    // We log out first.
    let (gw, venue) = pair(listener, true);
    expected.insert(local_port(&gw), "logout_by_us");
    logout_and_close(gw, venue, "bye");

    // Our Logon refused.
    let (mut gw, mut venue) = pair(listener, false);
    expected.insert(local_port(&gw), "logon_refused");
    gw.send("A", &[(98, "0"), (108, "30")]).unwrap();
    venue.expect("A", wait).unwrap();
    venue.send("5", &[(58, "Invalid password")]).unwrap();
    gw.expect("5", wait).unwrap();
    venue.close();
    gw.close();

    // Their TestRequest left unanswered: they reset us.
    let (mut gw, mut venue) = pair(listener, true);
    expected.insert(local_port(&gw), "heartbeat_timeout");
    venue.send("1", &[(112, "TR1")]).unwrap();
    gw.expect("1", wait).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    reset(venue);
    drop(gw);

    // A Logout citing sequence numbers.
    let (mut gw, mut venue) = pair(listener, true);
    expected.insert(local_port(&gw), "sequence_error");
    let text = "MsgSeqNum too low, expecting 10 but received 5";
    venue.send("5", &[(58, text)]).unwrap();
    gw.expect("5", wait).unwrap();
    venue.close();
    gw.close();

    // A reset from them, one from us, with nothing else said.
    let (gw, venue) = pair(listener, true);
    expected.insert(local_port(&gw), "reset_by_them");
    reset(venue);
    drop(gw);
    let (gw, venue) = pair(listener, true);
    expected.insert(local_port(&gw), "reset_by_us");
    reset(gw);
    drop(venue);

    // We close without a Logout.
    let (gw, venue) = pair(listener, true);
    expected.insert(local_port(&gw), "closed_without_logout");
    gw.close();
    venue.close();
    expected
}

#[test]
fn each_way_of_ending_gets_its_cause() {
    let listener = TcpListener::bind(format!("{VENUE_IP}:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let cfg = config_file(&format!(
        r#"
[[targets]]
name = "venue"
address = "{VENUE_IP}"
port = {port}

[fix]
capture = true
"#
    ));
    let sc = Sidecar::start(&[
        "--config",
        cfg.path().to_str().unwrap(),
        "--interval",
        "200ms",
    ]);
    let sessions = sc.json("/sessions");
    assert!(sessions["capture_error"].is_null(), "{sessions}");
    // Causes the configuration can tell start at 0; all of them with the FIX layer on.
    let m = sc.metrics();
    for cause in ["logout_by_them", "heartbeat_timeout", "unknown"] {
        let l = [("target", "venue"), ("cause", cause)];
        assert_eq!(m.get("fix_session_ends_total", &l), Some(0.0), "{cause}");
    }

    let mut expected = BTreeMap::new();
    for (port, cause) in end_sessions(&listener) {
        expected.insert(port, cause);
        // One at a time: each end's packets and close are seen before the next session.
        std::thread::sleep(Duration::from_millis(100));
    }
    let n = expected.len();
    let mut last = String::new();
    sc.wait_for("every end judged", Duration::from_secs(30), |s| {
        let c = s.json("/connections");
        let judged = c["closed"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["end_cause"].is_string())
            .count();
        last = c.to_string();
        judged == n
    });
    let c = sc.json("/connections");
    let mut got = BTreeMap::new();
    for s in c["closed"].as_array().unwrap() {
        let port = s["local_port"].as_u64().unwrap() as u16;
        got.insert(port, s["end_cause"].as_str().unwrap().to_string());
        assert!(s["end_evidence"].is_string(), "{s}");
    }
    let want: BTreeMap<u16, String> = expected.iter().map(|(p, c)| (*p, c.to_string())).collect();
    assert_eq!(got, want, "{last}");

    // The counter: exactly one per cause, the sum equal to the closes.
    let m = sc.metrics();
    for cause in expected.values() {
        let l = [("target", "venue"), ("cause", *cause)];
        assert_eq!(m.get("fix_session_ends_total", &l), Some(1.0), "{cause}");
    }
    assert_eq!(
        m.sum("fix_session_ends_total", &[("target", "venue")]),
        n as f64
    );
    assert_eq!(
        m.sum("fix_connections_closed_total", &[("target", "venue")]),
        n as f64
    );
    let by_port = |port: u16| {
        c["closed"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["local_port"] == port)
            .cloned()
            .unwrap()
    };
    let refused = expected.iter().find(|e| *e.1 == "logon_refused").unwrap();
    let ev = by_port(*refused.0)["end_evidence"].to_string();
    assert!(ev.contains("Invalid password"), "{ev}");
    // /sessions: the FIX session's last end is the last one made (we closed without a Logout).
    let s = sc.json("/sessions");
    let gw = s["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["session"] == "GW->VENUE")
        .cloned()
        .unwrap();
    assert_eq!(gw["last_end"]["cause"], "closed_without_logout", "{gw}");
    assert!(
        gw["last_end"]["at"].as_str().unwrap().ends_with('Z'),
        "{gw}"
    );
    let (status, log) = sc.terminate();
    assert!(status.success(), "exit {status:?}\n{log}");
    let lines = log.lines().filter(|l| l.contains("session ended")).count();
    assert_eq!(lines, n, "{log}");
    assert!(log.contains("cause=\"sequence_error\""), "{log}");
}

/// A venue listening on `ip` and a sidecar watching it as target `name` with `source`, no FIX
/// layer, polling every 200 ms (the config file is kept while the sidecar runs).
fn tcp_only(name: &str, ip: &str, source: &str) -> (TcpListener, tempfile::NamedTempFile, Sidecar) {
    let listener = TcpListener::bind(format!("{ip}:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let cfg = config_file(&format!(
        "[[targets]]\nname = \"{name}\"\naddress = \"{ip}\"\nport = {port}\n"
    ));
    let path = cfg.path().to_str().unwrap().to_owned();
    let sc = Sidecar::start(&["--config", &path, "--interval", "200ms", "--source", source]);
    (listener, cfg, sc)
}

/// Without the FIX layer, a close says what the TCP layer knows: ends are still counted, one
/// each, as `unknown` when nothing says why (netlink polling sees no side).
#[test]
fn without_the_fix_layer_every_end_is_counted() {
    let (listener, _cfg, sc) = tcp_only("plain", "127.0.0.54", "netlink");
    let addr: SocketAddr = listener.local_addr().unwrap();
    let m = sc.metrics();
    let l = [("target", "plain"), ("cause", "logout_by_us")];
    assert_eq!(
        m.get("fix_session_ends_total", &l),
        None,
        "no FIX layer: no FIX causes"
    );
    for _ in 0..3 {
        let c = TcpStream::connect(addr).unwrap();
        let (s, _) = listener.accept().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        drop(c);
        drop(s);
    }
    sc.wait_for("three ends counted", Duration::from_secs(15), |s| {
        s.metrics()
            .sum("fix_session_ends_total", &[("target", "plain")])
            == 3.0
    });
    let m = sc.metrics();
    let total = m.sum("fix_session_ends_total", &[("target", "plain")]);
    let closed = m.sum("fix_connections_closed_total", &[("target", "plain")]);
    assert_eq!((total, closed), (3.0, 3.0));
    let l = [("target", "plain"), ("cause", "unknown")];
    assert_eq!(m.get("fix_session_ends_total", &l), Some(3.0));
    let (status, _) = sc.terminate();
    assert!(status.success());
}

/// In eBPF mode the TCP layer knows the connecting process and the kernel's reason: a gateway
/// killed with its session open ends as `process_exited`; a session whose packets stop being
/// acknowledged (an nftables drop) ends as `network_timeout` when the kernel gives up
/// (`TCP_USER_TIMEOUT`, `ETIMEDOUT`).
#[test]
fn a_killed_gateway_and_a_dead_network_get_their_causes() {
    let (listener, _cfg, sc) = tcp_only("tcp-only", "127.0.0.56", "ebpf");
    let addr = listener.local_addr().unwrap();
    let active = |s: &Sidecar| s.json("/connections")["total"].as_u64().unwrap();

    // A gateway process (bash holding the connection, then exec'ing sleep in the same pid).
    let script = format!("exec 3<>/dev/tcp/127.0.0.56/{}; exec sleep 60", addr.port());
    let mut gateway = std::process::Command::new("bash")
        .args(["-c", &script])
        .spawn()
        .unwrap();
    let (_venue_side, _) = listener.accept().unwrap();
    sc.wait_for("the gateway's session", Duration::from_secs(10), |s| {
        active(s) == 1
    });
    gateway.kill().unwrap();
    gateway.wait().unwrap();

    // A session the network stops answering.
    let gw = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    gw.set_tcp_user_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    gw.connect(&addr.into()).unwrap();
    let mut gw: TcpStream = gw.into();
    let (_venue_side2, _) = listener.accept().unwrap();
    let timeout_port = gw.local_addr().unwrap().port();
    sc.wait_for("the second session", Duration::from_secs(10), |s| {
        active(s) == 1
    });
    let drop_all = crate::nft::NftTable::drop_all(addr.port());
    std::io::Write::write_all(&mut gw, b"8=FIX.4.4\x01").unwrap();
    sc.wait_for("both ends judged", Duration::from_secs(30), |s| {
        let m = s.metrics();
        m.sum("fix_session_ends_total", &[("target", "tcp-only")]) == 2.0
    });
    assert!(drop_all.dropped().0 > 0, "the rule dropped nothing");
    drop(drop_all);
    let m = sc.metrics();
    for cause in ["process_exited", "network_timeout"] {
        let l = [("target", "tcp-only"), ("cause", cause)];
        assert_eq!(m.get("fix_session_ends_total", &l), Some(1.0), "{cause}");
    }
    let c = sc.json("/connections");
    let timed_out = c["closed"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["local_port"] == timeout_port)
        .cloned()
        .unwrap();
    assert_eq!(timed_out["end_cause"], "network_timeout", "{c}");
    let (status, log) = sc.terminate();
    assert!(status.success(), "{log}");
}
