//! Session events as OTLP log records (`[otlp] logs`), against the real receiver: the records
//! the test's own connections should make, one by one (event names, peer and local ports,
//! target), over gRPC and HTTP; none with `logs = false`; a collector down at first keeps
//! nothing from arriving later; SIGTERM delivers the records of the last events. Pinned to
//! netlink, as the other OTLP tests are.

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::time::Duration;

use crate::harness::*;
use crate::otlp_receiver::*;

const WAIT: Duration = Duration::from_secs(20);
const OPENED: &str = "fix.session.opened";
const CLOSED: &str = "fix.session.closed";

fn config(ip: &str, endpoint: &str, extra: &str) -> tempfile::NamedTempFile {
    config_file(&format!(
        "[[targets]]\nname = \"venue\"\naddress = \"{ip}\"\n\
         [otlp]\nendpoint = \"{endpoint}\"\n{extra}\n"
    ))
}

fn start(cfg: &tempfile::NamedTempFile, more: &[&str]) -> Sidecar {
    let path = cfg.path().to_str().unwrap();
    let mut args = vec![
        "--config",
        path,
        "--source",
        "netlink",
        "--interval",
        "100ms",
    ];
    args.extend_from_slice(more);
    Sidecar::start(&args)
}

/// `n` connections to `d`, made once the sidecar has polled (so none is preexisting).
fn connect(d: &Downstream, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| connect_from("127.0.0.1:0", d.addr))
        .collect()
}

fn local_ports(held: &[TcpStream]) -> BTreeSet<String> {
    held.iter()
        .map(|c| c.local_addr().unwrap().port().to_string())
        .collect()
}

/// The records of `name`: exactly the sessions `ports` (local ports), each once, each with
/// the target, the peer's address and port.
fn assert_records(rx: &Receiver, name: &str, ports: &BTreeSet<String>, d: &Downstream) {
    let records = rx.events(name);
    let seen: Vec<String> = records
        .iter()
        .map(|r| r.attr("network.local.port").unwrap_or("?").to_owned())
        .collect();
    assert_eq!(seen.len(), ports.len(), "{name}: {records:#?}");
    assert_eq!(
        &seen.iter().cloned().collect::<BTreeSet<_>>(),
        ports,
        "{name}"
    );
    let peer_port = d.addr.port().to_string();
    for r in &records {
        assert_eq!(r.attr("fix.target"), Some("venue"), "{r:?}");
        assert_eq!(
            r.attr("network.peer.address"),
            Some(d.addr.ip().to_string().as_str())
        );
        assert_eq!(r.attr("network.peer.port"), Some(peer_port.as_str()));
        assert_eq!(r.attr("network.local.address"), Some("127.0.0.1"));
        assert_eq!(r.scope, "fix-monitor.session");
        assert_eq!(r.resource["service.name"], "fix-monitor");
    }
}

/// Three sessions opened and closed while watched: three `fix.session.opened` and three
/// `fix.session.closed` records over gRPC, one per session, with its ports, a lifetime on
/// each close, and the same events as JSON lines on stderr (`--log-format json`).
#[test]
fn grpc_log_records_match_the_sessions_one_by_one() {
    let rx = Receiver::start();
    let d = Downstream::listen("127.0.0.70:0");
    let cfg = config("127.0.0.70", &rx.endpoint(), "interval = \"300ms\"");
    let sc = start(&cfg, &["--log-format", "json"]);
    sc.wait_polls(1);
    let held = connect(&d, 3);
    let ports = local_ports(&held);
    rx.wait_for("three opens", WAIT, |r| r.events(OPENED).len() == 3);
    drop(held);
    rx.wait_for("three closes", WAIT, |r| r.events(CLOSED).len() == 3);
    // Nothing more comes: one record per event.
    sc.wait_polls(5);
    std::thread::sleep(Duration::from_millis(1500));
    assert_records(&rx, OPENED, &ports, &d);
    assert_records(&rx, CLOSED, &ports, &d);
    for r in rx.events(OPENED) {
        assert_eq!(r.attr("fix.session.preexisting"), Some("false"));
        assert_eq!(
            (r.severity_text.as_str(), r.body.as_str()),
            ("INFO", "connection opened")
        );
        assert_eq!(r.transport, "grpc");
    }
    for r in rx.events(CLOSED) {
        let lifetime: f64 = r.attr("fix.session.duration").unwrap().parse().unwrap();
        assert!(lifetime > 0.0, "{r:?}");
    }
    assert_eq!(rx.records().len(), 6, "{:#?}", rx.records());

    let (status, log) = sc.terminate();
    assert!(status.success(), "{log}");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let json_ports = |name: &str| -> BTreeSet<String> {
        let events: Vec<_> = lines.iter().filter(|l| l["event.name"] == name).collect();
        assert_eq!(events.len(), 3, "{name}\n{log}");
        events
            .iter()
            .map(|l| {
                assert_eq!(l["fix.target"], "venue");
                assert_eq!(l["network.peer.port"], d.addr.port());
                l["network.local.port"].to_string()
            })
            .collect()
    };
    assert_eq!(json_ports(OPENED), ports);
    assert_eq!(json_ports(CLOSED), ports);
    assert!(!log.contains("OTLP log export failed"), "{log}");
}

/// OTLP/HTTP: the records go to `/v1/logs` beside `/v1/metrics`.
#[test]
fn http_log_records_arrive_on_v1_logs() {
    let rx = Receiver::start();
    let d = Downstream::listen("127.0.0.71:0");
    let cfg = config(
        "127.0.0.71",
        &rx.endpoint(),
        "protocol = \"http/protobuf\"\ninterval = \"300ms\"",
    );
    let sc = start(&cfg, &[]);
    sc.wait_polls(1);
    let held = connect(&d, 2);
    let ports = local_ports(&held);
    rx.wait_for("two opens", WAIT, |r| r.events(OPENED).len() == 2);
    drop(held);
    rx.wait_for("two closes", WAIT, |r| r.events(CLOSED).len() == 2);
    assert_records(&rx, OPENED, &ports, &d);
    assert_records(&rx, CLOSED, &ports, &d);
    assert!(rx.records().iter().all(|r| r.transport == "http"));
    assert!(rx.count() > 0, "metrics too");
    let (status, log) = sc.terminate();
    assert!(status.success(), "{log}");
    // The text log keeps its human lines.
    assert_eq!(log.matches("connection opened").count(), 2, "{log}");
}

/// `[otlp] logs = false`: metrics are pushed, no log record is.
#[test]
fn logs_false_sends_no_records() {
    let rx = Receiver::start();
    let d = Downstream::listen("127.0.0.72:0");
    let cfg = config(
        "127.0.0.72",
        &rx.endpoint(),
        "interval = \"200ms\"\nlogs = false",
    );
    let sc = start(&cfg, &[]);
    sc.wait_polls(1);
    let held = connect(&d, 2);
    sc.wait_polls(2);
    drop(held);
    rx.wait_for("the closes in the metrics", WAIT, |r| {
        r.latest_with("fix_connections_closed", &[("target", "venue")])
            .map(|p| p.value)
            == Some(2.0)
    });
    std::thread::sleep(Duration::from_millis(1500));
    let (status, log) = sc.terminate();
    assert!(status.success(), "{log}");
    assert_eq!(rx.log_exports(), 0, "{:#?}", rx.records());
    assert!(!log.contains("pushing session events"), "{log}");
}

/// The collector is down when the events happen: the failed exports are counted, the records
/// kept, and they arrive, each once, when it comes up on the same port; nothing is dropped.
#[test]
fn records_made_while_the_collector_is_down_arrive_when_it_comes_up() {
    let down = Receiver::start();
    let addr = down.addr;
    drop(down.stop());
    let d = Downstream::listen("127.0.0.73:0");
    let cfg = config(
        "127.0.0.73",
        &format!("http://{addr}"),
        "interval = \"300ms\"\ntimeout = \"500ms\"",
    );
    let sc = start(&cfg, &[]);
    sc.wait_polls(1);
    let mut held = connect(&d, 3);
    let ports = local_ports(&held);
    sc.wait_polls(2);
    let gone = held.remove(0);
    let gone_port = BTreeSet::from([gone.local_addr().unwrap().port().to_string()]);
    drop(gone);
    let errors = |s: &Sidecar| {
        s.metrics().count(
            "fix_monitor_export_errors_total",
            &[("exporter", "otlp_logs")],
        )
    };
    sc.wait_for("failed log exports", WAIT, |s| errors(s) >= 2.0);

    let rx = Receiver::start_on(addr);
    rx.wait_for("the kept records", WAIT, |r| {
        r.events(OPENED).len() == 3 && r.events(CLOSED).len() == 1
    });
    sc.wait_for("the recovery note", WAIT, |s| {
        s.log().contains("OTLP log export recovered")
    });
    assert_records(&rx, OPENED, &ports, &d);
    assert_records(&rx, CLOSED, &gone_port, &d);
    let m = sc.metrics();
    assert_eq!(
        m.get("fix_monitor_log_records_dropped_total", &[]),
        Some(0.0)
    );
    let (status, log) = sc.terminate();
    assert!(status.success(), "{log}");
    assert_eq!(log.matches("OTLP log export failed;").count(), 1, "{log}");
    // The metrics' own outage lines are theirs.
    assert_eq!(log.matches("OTLP export failed;").count(), 1, "{log}");
    assert_eq!(rx.records().len(), 4, "{:#?}", rx.records());
    drop((held, d));
}

/// SIGTERM right after the last events, with a collector that refused every export until
/// then and a retry interval of an hour: the final flush delivers the records of every event.
#[test]
fn sigterm_delivers_the_records_of_the_last_events() {
    let rx = Receiver::start();
    rx.refuse(Some(tonic::Code::Unavailable));
    let d = Downstream::listen("127.0.0.74:0");
    let cfg = config(
        "127.0.0.74",
        &rx.endpoint(),
        "interval = \"1h\"\ntimeout = \"1s\"",
    );
    let sc = start(&cfg, &[]);
    sc.wait_polls(1);
    let mut held = connect(&d, 2);
    let ports = local_ports(&held);
    sc.wait_polls(2);
    drop(held.pop());
    sc.wait_for("the close", WAIT, |s| {
        s.metrics().sum("fix_connections_closed_total", &[]) == 1.0
    });
    sc.wait_for("a refused log export", WAIT, |s| {
        s.log().contains("OTLP log export failed;")
    });
    rx.refuse(None);
    let (status, log) = sc.terminate();
    assert!(status.success(), "{log}");
    assert!(log.contains("final OTLP log export delivered"), "{log}");
    assert_records(&rx, OPENED, &ports, &d);
    assert_eq!(rx.events(CLOSED).len(), 1, "{:#?}", rx.records());
    drop((held, d));
}

/// The FIX layer's events, against the simulator's ground truth: a session read from the
/// gateway's engine log logs on, meets one sequence gap and logs out ("end of day"); the
/// receiver gets one `fix.session.logon`, one `fix.session.sequence_gap` with the venue's gap
/// size, one `fix.session.logout` initiated by us with its text, each with the comp ids.
#[test]
fn fix_logon_gap_and_logout_from_the_simulator_arrive_as_records() {
    use fix_monitor::fix::sim::{scripted_session, Venue, VenueBehaviour};
    let rx = Receiver::start();
    let venue = Venue::start(
        "127.0.0.1:0".parse().unwrap(),
        VenueBehaviour {
            ack_delay: Duration::from_millis(5),
            gap_after: Some((4, 1)),
            ..VenueBehaviour::default()
        },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("gw.messages.log");
    std::fs::write(&log, b"").unwrap();
    let cfg = config_file(&format!(
        "[[targets]]\nname = \"venue\"\naddress = \"127.0.0.1\"\nport = {port}\n\
         comp_ids = [\"VENUE\"]\n[poll]\ninterval = \"200ms\"\n\
         [fix]\nour_comp_ids = [\"GW\"]\n[[fix.logs]]\npath = \"{glob}\"\n\
         [otlp]\nendpoint = \"{endpoint}\"\ninterval = \"300ms\"\n",
        port = venue.addr.port(),
        glob = dir.path().join("*.messages.log").display(),
        endpoint = rx.endpoint(),
    ));
    let sc = Sidecar::start(&["--config", cfg.path().to_str().unwrap()]);
    let file = log.display().to_string();
    sc.wait_for("the log followed", WAIT, |s| {
        s.json("/sessions")["log_files"][0] == file.as_str()
    });
    scripted_session(venue.addr, 6, None, Some((log, false))).unwrap();
    let truth = venue.stop();
    rx.wait_for("the logout", WAIT, |r| {
        !r.events("fix.session.logout").is_empty()
    });
    std::thread::sleep(Duration::from_millis(1500));
    let one = |name: &str| {
        let records = rx.events(name);
        assert_eq!(records.len(), 1, "{name}: {:#?}", rx.records());
        let r = records.into_iter().next().unwrap();
        assert_eq!(r.attr("fix.target"), Some("venue"), "{r:?}");
        assert_eq!(r.attr("fix.sender_comp_id"), Some("GW"), "{r:?}");
        assert_eq!(r.attr("fix.target_comp_id"), Some("VENUE"), "{r:?}");
        r
    };
    one("fix.session.logon");
    let gap = one("fix.session.sequence_gap");
    assert_eq!(gap.attr("fix.direction"), Some("in"));
    assert_eq!(
        gap.attr("fix.sequence_gap.count"),
        Some(truth.gap_messages.to_string().as_str())
    );
    assert_eq!(gap.severity_text, "WARN");
    let logout = one("fix.session.logout");
    assert_eq!(logout.attr("fix.logout.initiator"), Some("us"));
    assert_eq!(logout.attr("fix.logout.text"), Some("end of day"));
    assert!(rx.events("fix.session.logon_refused").is_empty());
    // The close, with why it ended: the engine log's one session of the target is joined to
    // the TCP session the TCP layer saw end.
    rx.wait_for("the close", WAIT, |r| {
        !r.events("fix.session.closed").is_empty()
    });
    let closed = rx.events("fix.session.closed");
    assert_eq!(closed.len(), 1, "{closed:#?}");
    assert_eq!(
        closed[0].attr("fix.end.cause"),
        Some("logout_by_us"),
        "{closed:#?}"
    );
    let evidence = closed[0].attr("fix.end.evidence").unwrap_or_default();
    assert!(evidence.contains("end of day"), "{evidence}");
    let l = [("target", "venue"), ("cause", "logout_by_us")];
    assert_eq!(sc.metrics().get("fix_session_ends_total", &l), Some(1.0));
    let (status, log) = sc.terminate();
    assert!(status.success(), "{log}");
}
