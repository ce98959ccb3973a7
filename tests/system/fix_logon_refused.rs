//! Refused logons through the real binary with `[fix] capture = true` (root, for
//! `CAP_NET_RAW`): the test logs on to a simulated venue that refuses every logon, one attempt
//! at a time, and after each `/metrics` shows exactly that many refused logons and attempts in
//! the window, with the target's `logon_lockout` threshold beside them: the lockout alert's
//! condition (attempts >= threshold - 1) holds from the attempt before the threshold.

use std::net::SocketAddr;
use std::time::Duration;

use fix_monitor::fix::sim::{LogonAnswer, Peer, Venue, VenueBehaviour};

use crate::harness::*;

#[test]
fn refused_logons_are_counted_and_attempts_reach_the_lockout_threshold() {
    // Its own loopback address, so that only these sessions match the target.
    let venue = Venue::start(
        "127.0.0.49:0".parse::<SocketAddr>().unwrap(),
        VenueBehaviour {
            comp_id: "VENUE2".into(),
            refuse_logons: Some("Invalid password".into()),
            ..VenueBehaviour::default()
        },
    )
    .unwrap();
    let cfg = config_file(&format!(
        r#"
[[targets]]
name = "refusing"
address = "127.0.0.49"
port = {port}
logon_lockout = {{ attempts = 3, within = "60s" }}

[fix]
capture = true
"#,
        port = venue.addr.port()
    ));
    let sc = Sidecar::start(&[
        "--config",
        cfg.path().to_str().unwrap(),
        "--interval",
        "200ms",
    ]);
    let sessions = sc.json("/sessions");
    assert_eq!(sessions["capture"], true);
    assert!(sessions["capture_error"].is_null(), "{sessions}");
    // The threshold is there before any session.
    sc.wait_for(
        "the lockout threshold on /metrics",
        Duration::from_secs(10),
        |s| {
            s.metrics().get(
                "fix_target_logon_lockout_attempts",
                &[("target", "refusing")],
            ) == Some(3.0)
        },
    );

    let l = [("target", "refusing"), ("session", "GW->VENUE2")];
    for n in 1..=3u64 {
        let mut p = Peer::connect(venue.addr, "FIX.4.4", "GW", "VENUE2").unwrap();
        let answer = p.log_on(Duration::from_secs(5)).unwrap();
        assert_eq!(answer, LogonAnswer::Refused("Invalid password".into()));
        p.close();
        let mut last = None;
        sc.wait_for(
            &format!("{n} refused logon(s) on /metrics"),
            Duration::from_secs(15),
            |s| {
                let m = s.metrics();
                let got = (
                    m.get("fix_session_logons_refused_total", &l),
                    m.get("fix_session_logon_attempts_in_window", &l),
                );
                last = Some(got);
                got == (Some(n as f64), Some(n as f64))
            },
        );
        let m = sc.metrics();
        let threshold = m
            .get(
                "fix_target_logon_lockout_attempts",
                &[("target", "refusing")],
            )
            .unwrap();
        // FixLogonLockoutRisk's condition: from the attempt before the lockout.
        assert_eq!(n as f64 >= threshold - 1.0, n >= 2, "{last:?}");
    }
    let m = sc.metrics();
    // A refused logon is neither a logon nor a logout.
    assert_eq!(m.sum("fix_session_logons_total", &l), 0.0);
    assert_eq!(m.sum("fix_session_logouts_total", &l), 0.0);
    assert_eq!(m.sum("fix_session_logged_on", &l), 0.0);
    let s = sc.json("/sessions");
    let b = s["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["session"] == "GW->VENUE2")
        .cloned()
        .unwrap();
    assert_eq!(b["logons_refused"], 3, "{b}");
    assert_eq!(b["last_refusal_text"], "Invalid password", "{b}");
    assert!(
        b["last_refusal_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{b}"
    );
    assert_eq!(b["logon_attempts_in_window"], 3, "{b}");
    assert_eq!(b["logon_window_seconds"], 60.0, "{b}");
    assert_eq!(s["logon_lockouts"][0]["attempts"], 3, "{s}");
    venue.stop();
    let (status, log) = sc.terminate();
    assert!(status.success(), "exit {status:?}\n{log}");
}
