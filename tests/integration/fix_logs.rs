//! The FIX log source end to end on loopback: real FIX sessions between the simulator's gateway
//! and venues, the gateway writing a QuickFIX-style message log, followed by the log source and
//! tracked; every count is checked against what the simulator did.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use fix_monitor::fix::logs::LogFollower;
use fix_monitor::fix::sim::{scripted_session, Venue, VenueBehaviour};
use fix_monitor::fix::tracker::{Direction, Event, Limits, Origin, Tracker};

fn run(pipe: bool) {
    let ack_delay = Duration::from_millis(25);
    let (venue, refusing) = crate::harness::fix_venues(
        [std::net::Ipv4Addr::LOCALHOST.into(); 2],
        ack_delay,
        4,
        (6, 2),
    );
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("FIX.4.4-GW-VENUE.messages.log");
    // An older line already there is not read: the follower starts at the end.
    std::fs::write(
        &log,
        b"20260101-00:00:00.000 : 8=FIX.4.4\x019=5\x0135=0\x0110=000\x01\n",
    )
    .unwrap();
    let mut follower = LogFollower::new(
        vec![dir.path().join("*.messages.log").display().to_string()],
        ["GW".to_string()],
    );
    let mut tracker = Tracker::new(Limits::default());
    assert!(follower.poll(SystemTime::now()).is_empty());

    let truth =
        scripted_session(venue.addr, 12, Some((refusing.addr, 3)), Some((log, pipe))).unwrap();
    let venue_rec = venue.stop();
    refusing.stop();

    // Follow until every message the gateway logged has been read.
    let logged: u64 = truth.sent.values().sum::<u64>() + truth.received.values().sum::<u64>();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut latencies = Vec::new();
    let mut read = 0u64;
    while read < logged && Instant::now() < deadline {
        for r in follower.poll(SystemTime::now()) {
            read += 1;
            assert!(r.timed_by_log);
            for e in tracker.observe(&r.msg, r.dir, r.at, &Origin::default()) {
                if let Event::OrderAnswered {
                    request, latency, ..
                } = e
                {
                    latencies.push((request.as_str(), latency));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(read, logged);
    assert_eq!(follower.stats.malformed, 0);

    let s = tracker.by_label("GW->VENUE").unwrap();
    let by_dir = |d: Direction| -> BTreeMap<String, u64> { s.by_type[d.idx()].clone() };
    let mut sent = truth.sent.clone();
    let mut received = truth.received.clone();
    // The refused logons were with VENUE2: another session.
    *sent.get_mut("Logon").unwrap() -= 3;
    *received.get_mut("Logout").unwrap() -= 3;
    assert_eq!(by_dir(Direction::Out), sent);
    assert_eq!(by_dir(Direction::In), received);
    assert_eq!(s.logons, 1);
    assert_eq!((s.logouts_us, s.logouts_them), (1, 0));
    assert!(!s.logged_on());
    assert_eq!(s.last_logout_text.as_deref(), Some("end of day"));
    assert_eq!(s.heartbeat_interval, Some(30));
    let inbound = s.dir(Direction::In);
    assert_eq!(inbound.sequence_gaps, 1);
    assert_eq!(inbound.sequence_gap_messages, venue_rec.gap_messages);
    assert_eq!(inbound.seq_too_low, 0);
    assert_eq!(
        inbound.business_rejects,
        venue_rec.sent["BusinessMessageReject"]
    );
    assert_eq!(inbound.sequence_resets, 1);
    assert_eq!(s.dir(Direction::Out).resend_requests, 1);
    assert_eq!(s.dir(Direction::Out).test_requests, 1);
    assert_eq!(s.dir(Direction::Out).sequence_gaps, 0);
    // Rejected orders are never answered by an ExecutionReport: they stay pending.
    assert_eq!(s.orders_answered, truth.round_trips.len() as u64);
    assert_eq!(
        s.pending_orders() as u64,
        venue_rec.sent["BusinessMessageReject"]
    );
    // Each latency lies between the venue's delay and the round trip the gateway measured
    // around the same send and receive (the log's timestamps are taken in between).
    assert_eq!(latencies.len(), truth.round_trips.len());
    for ((kind, lat), (tkind, rt)) in latencies.iter().zip(&truth.round_trips) {
        assert_eq!(kind, tkind);
        assert!(*lat >= ack_delay, "{lat:?} < {ack_delay:?}");
        assert!(lat <= rt, "{lat:?} > measured {rt:?}");
    }
    let refused = tracker.by_label("GW->VENUE2").unwrap();
    assert_eq!(refused.count(Direction::Out, "Logon"), truth.refused_logons);
    assert_eq!(refused.logons, 0);
    assert_eq!(
        refused.last_logout_text.as_deref(),
        Some(truth.refusal_text.as_str())
    );
}

#[test]
fn fix_sessions_read_from_a_soh_log_match_the_simulator() {
    run(false);
}

#[test]
fn fix_sessions_read_from_a_pipe_log_match_the_simulator() {
    run(true);
}

/// The real binary with `[[fix.logs]]`: `/sessions` and `/metrics` carry the simulator's counts.
#[test]
fn the_sidecar_reports_logged_fix_sessions_on_sessions_and_metrics() {
    use crate::harness::{config_file, Sidecar};
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
        r#"
        [[targets]]
        name = "venue"
        address = "127.0.0.1"
        port = {port}
        comp_ids = ["VENUE"]
        [poll]
        interval = "200ms"
        [fix]
        our_comp_ids = ["GW"]
        [[fix.logs]]
        path = "{glob}"
        "#,
        port = venue.addr.port(),
        glob = dir.path().join("*.messages.log").display()
    ));
    let sidecar = Sidecar::start(&["--config", cfg.path().to_str().unwrap()]);
    // The follower has found the file (at its end) before the session starts.
    let file = log.display().to_string();
    sidecar.wait_for("the log followed", Duration::from_secs(10), |s| {
        s.json("/sessions")["log_files"][0] == file.as_str()
    });
    let truth = scripted_session(venue.addr, 6, None, Some((log, false))).unwrap();
    let venue_rec = venue.stop();
    let logged: u64 = truth.sent.values().sum::<u64>() + truth.received.values().sum::<u64>();
    sidecar.wait_for("every logged message", Duration::from_secs(10), |s| {
        s.json("/sessions")["stats"]["logs"]["messages"].as_u64() == Some(logged)
    });
    let j = sidecar.json("/sessions");
    let s = &j["sessions"][0];
    assert_eq!(s["session"], "GW->VENUE");
    assert_eq!(s["target"], "venue");
    assert_eq!(s["logons"], 1);
    assert_eq!(s["logouts_us"], 1);
    assert_eq!(s["last_logout_text"], "end of day");
    assert_eq!(s["heartbeat_interval_seconds"], 30);
    assert_eq!(s["in"]["sequence_gaps"], 1);
    assert_eq!(s["in"]["sequence_gap_messages"], venue_rec.gap_messages);
    assert_eq!(s["out"]["resend_requests"], 1);
    assert_eq!(s["timed_by"], "log");
    for (name, n) in &truth.sent {
        assert_eq!(s["out"]["by_type"][name], *n, "{name}");
    }
    // /metrics is encoded once per poll: wait for one that carries the final counts.
    let labels = [("target", "venue"), ("session", "GW->VENUE")];
    sidecar.wait_for("the FIX metrics", Duration::from_secs(10), |s| {
        s.metrics().get(
            "fix_session_logouts_total",
            &[labels[0], labels[1], ("initiator", "us")],
        ) == Some(1.0)
    });
    let m = sidecar.metrics();
    assert_eq!(m.get("fix_session_logged_on", &labels), Some(0.0));
    assert_eq!(m.get("fix_session_logons_total", &labels), Some(1.0));
    assert_eq!(
        m.get(
            "fix_messages_total",
            &[
                labels[0],
                labels[1],
                ("direction", "out"),
                ("msg_type", "NewOrderSingle")
            ]
        ),
        Some(truth.sent["NewOrderSingle"] as f64)
    );
    assert_eq!(
        m.get(
            "fix_session_sequence_gaps_total",
            &[labels[0], labels[1], ("direction", "in")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m.get(
            "fix_order_ack_latency_seconds_count",
            &[labels[0], labels[1], ("request", "new")]
        ),
        Some(truth.round_trips.iter().filter(|r| r.0 == "new").count() as f64)
    );
    assert_eq!(
        m.get(
            "fix_monitor_fix_messages_decoded_total",
            &[("source", "log")]
        ),
        Some(logged as f64)
    );
    let (status, _) = sidecar.terminate();
    assert!(status.success());
}
