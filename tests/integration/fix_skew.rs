//! Clock skew from engine logs, end to end (issue 21, item 2): the real binary follows the
//! gateway's QuickFIX-style message log while the simulator's gateway talks to two venues, one
//! whose clock is 250 ms ahead and one 250 ms behind. The test paces every message 300 ms
//! apart, so every one of them is sampled (one sample per session and direction per 100 ms):
//! the counts are the messages it sent and received, exactly.
//!
//! Bounds, from how the simulator stamps: a venue's SendingTime is its clock (ours plus the
//! offset) truncated to the millisecond, and the gateway logs a received message after it
//! arrived, so an inbound sample is at most the offset and at least the offset less 1 ms and
//! the delivery (allowed 50 ms here, on a loaded machine); the gateway stamps SendingTime and
//! its log line from one clock reading, so an outbound sample lies in (-1 ms, 0].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use fix_monitor::fix::sim::{MessageLog, Peer, Venue, VenueBehaviour};

use crate::harness::{config_file, Metrics, Sidecar};

/// TestRequests each session sends between its Logon and its Logout.
const TEST_REQUESTS: u64 = 4;
/// The pause before each message the gateway sends.
const PACE: Duration = Duration::from_millis(300);

/// One session: Logon, TestRequests, Logout, each answered, each `PACE` after the last answer.
/// Returns the messages sent (= received).
fn paced_session(venue: SocketAddr, comp_id: &str, log: &std::path::Path) -> u64 {
    let t = Duration::from_secs(5);
    let mut gw = Peer::connect(venue, "FIX.4.4", "GW", comp_id)
        .unwrap()
        .with_log(MessageLog::create(&log.to_path_buf(), false).unwrap());
    gw.send("A", &[(98, "0"), (108, "30")]).unwrap();
    gw.expect("A", t).unwrap();
    for i in 0..TEST_REQUESTS {
        std::thread::sleep(PACE);
        gw.send("1", &[(112, &format!("t{i}"))]).unwrap();
        gw.expect("0", t).unwrap();
    }
    std::thread::sleep(PACE);
    gw.send("5", &[]).unwrap();
    gw.expect("5", t).unwrap();
    gw.close();
    TEST_REQUESTS + 2
}

/// The histogram's cumulative bucket counts for a target and direction, by boundary.
fn buckets(m: &Metrics, target: &str, dir: &str) -> BTreeMap<String, f64> {
    let labels = [("target", target), ("direction", dir)];
    m.by("fix_clock_skew_seconds_bucket", &labels, "le")
}

/// The cumulative count at boundary `le` (the exporter's spelling of it is not assumed).
fn at_most(b: &BTreeMap<String, f64>, le: f64) -> f64 {
    let (_, n) = b
        .iter()
        .find(|(k, _)| k.parse::<f64>().ok() == Some(le))
        .unwrap_or_else(|| panic!("no bucket le={le}: {b:?}"));
    *n
}

#[test]
fn venue_clock_offsets_read_from_engine_logs_land_in_their_buckets() {
    let offset = 0.250;
    let start = |comp_id: &str, sign: f64| {
        Venue::start(
            "127.0.0.1:0".parse().unwrap(),
            VenueBehaviour {
                comp_id: comp_id.into(),
                clock_offset_ns: (sign * offset * 1e9) as i64,
                ..VenueBehaviour::default()
            },
        )
        .unwrap()
    };
    let (ahead, behind) = (start("AHEAD", 1.0), start("BEHIND", -1.0));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("gw.messages.log");
    std::fs::write(&log, b"").unwrap();
    let cfg = config_file(&format!(
        r#"
        [[targets]]
        name = "ahead"
        address = "127.0.0.1"
        port = {pa}
        comp_ids = ["AHEAD"]
        [[targets]]
        name = "behind"
        address = "127.0.0.1"
        port = {pb}
        comp_ids = ["BEHIND"]
        [poll]
        interval = "200ms"
        [fix]
        our_comp_ids = ["GW"]
        [[fix.logs]]
        path = "{glob}"
        "#,
        pa = ahead.addr.port(),
        pb = behind.addr.port(),
        glob = dir.path().join("*.messages.log").display()
    ));
    let sidecar = Sidecar::start(&["--config", cfg.path().to_str().unwrap()]);
    let file = log.display().to_string();
    sidecar.wait_for("the log followed", Duration::from_secs(10), |s| {
        s.json("/sessions")["log_files"][0] == file.as_str()
    });
    let n_ahead = paced_session(ahead.addr, "AHEAD", &log);
    let n_behind = paced_session(behind.addr, "BEHIND", &log);
    ahead.stop();
    behind.stop();
    let n = n_ahead as f64;
    assert_eq!(n_ahead, n_behind);

    sidecar.wait_for("every sample on /metrics", Duration::from_secs(10), |s| {
        let m = s.metrics();
        ["ahead", "behind"].iter().all(|t| {
            ["in", "out"].iter().all(|d| {
                m.get(
                    "fix_clock_skew_seconds_count",
                    &[("target", t), ("direction", d)],
                ) == Some(n)
            })
        })
    });
    check_metrics(&sidecar.metrics(), n, offset);
    check_sessions(&sidecar.json("/sessions"), n_ahead, offset);
    let (status, _) = sidecar.terminate();
    assert!(status.success());
}

/// `/metrics`: `n` samples each way per target, inbound in the offset's bucket with a sum
/// within its bound, outbound within (-1 ms, 0].
fn check_metrics(m: &Metrics, n: f64, offset: f64) {
    for (target, sign) in [("ahead", 1.0), ("behind", -1.0)] {
        let b = buckets(m, target, "in");
        let theta = sign * offset;
        // Every inbound sample in [θ - 51 ms, θ]: for +250 ms the bucket (0.1, 0.3], for
        // -250 ms the bucket (-0.3, -0.1].
        let (lo, hi) = if sign > 0.0 { (0.1, 0.3) } else { (-0.3, -0.1) };
        assert_eq!(at_most(&b, lo), 0.0, "{target}: {b:?}");
        assert_eq!(at_most(&b, hi), n, "{target}: {b:?}");
        let sum = m
            .get(
                "fix_clock_skew_seconds_sum",
                &[("target", target), ("direction", "in")],
            )
            .unwrap();
        assert!(
            sum <= n * theta + 1e-9 && sum >= n * (theta - 0.051),
            "{target}: sum {sum} not within [{}, {}]",
            n * (theta - 0.051),
            n * theta
        );
        // Outbound: our engine's SendingTime (ms) against its own log line: (-1 ms, 0].
        let b = buckets(m, target, "out");
        assert_eq!(at_most(&b, -0.001), 0.0, "{target}: {b:?}");
        assert_eq!(at_most(&b, 0.0), n, "{target}: {b:?}");
    }
}

/// `/sessions`: `n` samples each way per session, none unusable, the latest inbound one within
/// the offset's bound and uncorrected (a log sample), the latest outbound within (-1 ms, 0].
fn check_sessions(j: &serde_json::Value, n: u64, offset: f64) {
    for (label, sign) in [("GW->AHEAD", 1.0), ("GW->BEHIND", -1.0)] {
        let s = (j["sessions"].as_array().unwrap().iter())
            .find(|s| s["session"] == label)
            .unwrap_or_else(|| panic!("{label}: {j}"));
        let k = &s["clock_skew"];
        assert_eq!(k["samples"]["in"], n, "{k}");
        assert_eq!(k["samples"]["out"], n, "{k}");
        assert_eq!(k["unusable_sending_times"]["in"], 0, "{k}");
        assert_eq!(k["not_recorded_without_rtt"], 0, "{k}");
        // A log sample is recorded as read: no RTT correction.
        let latest = &k["in"];
        assert!(latest["rtt_correction_seconds"].is_null(), "{k}");
        assert_eq!(latest["seconds"], latest["raw_seconds"], "{k}");
        let v = latest["seconds"].as_f64().unwrap();
        let theta = sign * offset;
        assert!(v <= theta + 1e-9 && v >= theta - 0.051, "{label}: {v}");
        let out = k["out"]["seconds"].as_f64().unwrap();
        assert!(out > -0.001 && out <= 0.0, "{label}: {out}");
    }
}
