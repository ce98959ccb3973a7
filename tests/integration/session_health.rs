//! Session health through the real binary: a session whose venue sends a byte every 200 ms and
//! one whose venue sends nothing, with `heartbeat = "1s"`: the silent one turns stale after
//! 2 s (and only then), the other never; it recovers when data arrives; `/metrics`,
//! `/connections` and the log say so, with silences within one poll interval of the truth. Run
//! with netlink (dumps with `tcp_info`) and with `auto`, which is the eBPF source (its in-kernel health pass)
//! where the program may load (root, as CI runs this tier) and netlink otherwise.

use std::io::Write;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::*;

const INTERVAL: Duration = Duration::from_millis(200);

fn session(conns: &serde_json::Value, local_port: u16) -> &serde_json::Value {
    conns["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["local_port"].as_u64() == Some(local_port.into()))
        .unwrap_or_else(|| panic!("no session from port {local_port}: {conns}"))
}

#[test]
fn a_silent_session_turns_stale_after_twice_the_heartbeat_and_recovers_when_data_arrives() {
    stale_and_recovered("netlink", "127.0.0.46");
}

#[test]
fn with_auto_a_silent_session_turns_stale_and_recovers_too() {
    stale_and_recovered("auto", "127.0.0.47");
}

fn stale_and_recovered(source: &str, ip: &str) {
    let l = TcpListener::bind(format!("{ip}:0")).unwrap();
    let at = l.local_addr().unwrap();
    let cfg = config_file(&format!(
        r#"
[[targets]]
name = "venue-h"
address = "{ip}"
port = {}
heartbeat = "1s"

[poll]
source = "{source}"
interval = "200ms"
"#,
        at.port()
    ));
    let talk = connect_from("127.0.0.1:0", at);
    let (mut talk_peer, _) = l.accept().unwrap();
    let quiet = connect_from("127.0.0.1:0", at);
    let (mut quiet_peer, _) = l.accept().unwrap();
    let quiet_since = Instant::now();
    let (talk_port, quiet_port) = (
        talk.local_addr().unwrap().port(),
        quiet.local_addr().unwrap().port(),
    );
    // The talking venue sends a byte every 200 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let last_talk = Arc::new(Mutex::new(Instant::now()));
    let talker = {
        let (stop, last_talk) = (stop.clone(), last_talk.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                talk_peer.write_all(b"0").unwrap();
                *last_talk.lock().unwrap() = Instant::now();
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };

    let path = cfg.path().to_str().unwrap();
    let sc = Sidecar::start(&["--config", path]);
    let want = if source == "auto" {
        auto_source()
    } else {
        source
    };
    let health = sc.json("/health");
    assert_eq!(health["source"], want, "{health}");
    assert_eq!(health["session_health"]["available"], true, "{health}");
    let venue = [("target", "venue-h")];
    // Until the silent session turns stale: never before 2 s of silence, and never the other.
    let stale_seen = loop {
        let m = sc.metrics();
        let stale = m.get("fix_connections_stale", &venue);
        let now = quiet_since.elapsed();
        match stale {
            Some(1.0) => break now,
            Some(0.0) | None => {}
            other => panic!("stale = {other:?}"),
        }
        assert!(
            now < Duration::from_secs(8),
            "never stale; log:\n{}",
            sc.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        stale_seen > Duration::from_secs(2),
        "stale after {stale_seen:?} of silence"
    );
    // Judged at the first poll after 2 s, seen at the first scrape after it.
    assert!(
        stale_seen < Duration::from_secs(2) + INTERVAL + Duration::from_millis(300),
        "stale only after {stale_seen:?}"
    );

    // The endpoints say which session, and how long it has been silent.
    let before = quiet_since.elapsed();
    let conns = sc.json("/connections");
    let after = quiet_since.elapsed();
    let q = &session(&conns, quiet_port)["health"];
    assert_eq!(q["stale"], true, "{conns}");
    let silence = q["last_data_received_seconds"].as_f64().unwrap();
    // The state is as of the last poll: up to one interval old.
    let slack = 0.02;
    assert!(
        silence >= (before.saturating_sub(INTERVAL)).as_secs_f64() - slack
            && silence <= after.as_secs_f64() + slack,
        "silence {silence} s, truth {before:?}..{after:?}"
    );
    let t = &session(&conns, talk_port)["health"];
    assert_eq!(t["stale"], false, "{conns}");
    assert!(
        t["last_data_received_seconds"].as_f64().unwrap()
            < (Duration::from_millis(200) + INTERVAL).as_secs_f64() + slack
    );
    for h in [q, t] {
        assert_eq!(h["retransmits"], 0);
        assert_eq!(h["send_queue_bytes"], 0);
        assert!(h["rtt_seconds"].as_f64().unwrap() > 0.0, "{h}");
    }
    let m = sc.metrics();
    let longest = m
        .get("fix_connection_receive_silence_seconds", &venue)
        .unwrap();
    let truth = quiet_since.elapsed().as_secs_f64();
    assert!(
        longest <= truth && longest >= truth - INTERVAL.as_secs_f64() - 0.3,
        "longest silence {longest} s, truth {truth} s"
    );
    assert_eq!(m.get("fix_connection_send_queue_bytes", &venue), Some(0.0));
    assert_eq!(m.get("fix_connection_retransmits_total", &venue), Some(0.0));
    assert!(m.get("fix_connection_rtt_seconds_count", &venue).unwrap() >= 2.0);
    // The talker's bytes arrived since the monitor started (both sessions predate it: only
    // what came after counts).
    let received = m
        .get("fix_connection_received_bytes_total", &venue)
        .unwrap();
    assert!(received >= 1.0, "{received}");
    assert!(received <= (quiet_since.elapsed().as_millis() / 200 + 1) as f64);

    // Data arrives: the session recovers at the next poll.
    quiet_peer.write_all(b"1").unwrap();
    let sent = Instant::now();
    sc.wait_for("recovery", Duration::from_secs(5), |s| {
        s.metrics().get("fix_connections_stale", &venue) == Some(0.0)
    });
    assert!(sent.elapsed() < INTERVAL + Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    talker.join().unwrap();
    let _ = *last_talk.lock().unwrap();

    let log = sc.log();
    let lines = |what: &str| {
        log.lines()
            .filter(|l| l.contains(what) && l.contains(&format!(":{quiet_port}")))
            .count()
    };
    assert_eq!(lines("session stale"), 1, "{log}");
    assert_eq!(lines("session recovered"), 1, "{log}");
    assert!(
        !log.lines()
            .any(|l| l.contains("session stale") && l.contains(&format!(":{talk_port}"))),
        "{log}"
    );
    // Why each ended: the talking one (its venue hung up, never stale) for no known reason; the
    // quiet one, left to turn stale again, by a heartbeat timeout judged from its silence.
    drop(talk);
    sc.wait_for("stale again", Duration::from_secs(10), |s| {
        s.metrics().get("fix_connections_stale", &venue) == Some(1.0)
    });
    drop((quiet, quiet_peer));
    let ends = |s: &Sidecar, cause: &str| {
        let l = [("target", "venue-h"), ("cause", cause)];
        s.metrics().get("fix_session_ends_total", &l)
    };
    sc.wait_for("both ends judged", Duration::from_secs(10), |s| {
        ends(s, "heartbeat_timeout") == Some(1.0) && ends(s, "unknown") == Some(1.0)
    });
    let m = sc.metrics();
    assert_eq!(
        m.sum("fix_session_ends_total", &[("target", "venue-h")]),
        2.0
    );
}

/// With procfs as the source, no health is measured: `/health` says so and no health series
/// appear (no zeros as if measured).
#[test]
fn procfs_says_session_health_is_unavailable_and_leaves_the_series_out() {
    let d = Downstream::listen("127.0.0.47:0");
    let _c = connect_from("127.0.0.1:0", d.addr);
    let sc = Sidecar::start(&[
        "--ip",
        "127.0.0.47",
        "--target-port",
        &d.addr.port().to_string(),
        "--source",
        "procfs",
        "--interval",
        "200ms",
    ]);
    sc.wait_polls(2);
    let h = sc.json("/health");
    assert_eq!(h["session_health"]["available"], false, "{h}");
    assert!(h["session_health"]["reason"]
        .as_str()
        .unwrap()
        .contains("procfs"));
    let (_, body) = sc.get("/metrics");
    for name in [
        "fix_connections_stale",
        "fix_connection_receive_silence",
        "fix_connection_rtt",
        "fix_connection_retransmits",
        "fix_connection_send_queue",
        "fix_connection_received",
        "fix_connection_sent",
    ] {
        assert!(
            !body.contains(name),
            "{name} on /metrics with procfs:\n{body}"
        );
    }
    let conns = sc.json("/connections");
    assert_eq!(conns["total"], 1);
    assert!(conns["connections"][0].get("health").is_none(), "{conns}");
}
