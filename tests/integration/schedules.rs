//! Session schedules with the real binary and the real clock: `fix_target_expected_up` is 1
//! for a target inside its window and 0 for one outside it, and `/health` says when each
//! changes. The windows are computed from now and lie six hours or more from their edges, so
//! the test cannot straddle one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::harness::*;

const EXPECTED_UP: &str = "fix_target_expected_up";

/// `HH:MM` (UTC) of now plus `hours` (negative: before), on a 24-hour dial.
fn utc_time_in(hours: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let minute_of_day = (now + hours * 3600).rem_euclid(86_400) / 60;
    format!("{:02}:{:02}", minute_of_day / 60, minute_of_day % 60)
}

#[test]
fn expected_up_is_1_inside_the_window_0_outside_and_1_without_a_schedule() {
    // A venue for each scheduled target: a session that ends outside its window was planned.
    let venue_open = std::net::TcpListener::bind("127.0.121.2:0").unwrap();
    let venue_closed = std::net::TcpListener::bind("127.0.121.3:0").unwrap();
    let cfg = config_file(&format!(
        r#"
schedule_grace = "1m"

[[targets]]
name = "open-now"
address = "127.0.121.2"
port = {port_open}
schedule = "around-now"

[[targets]]
name = "closed-now"
address = "127.0.121.3"
port = {port_closed}
schedule = "later"

[[targets]]
name = "always"
address = "127.0.121.4"

[[schedules]]
name = "around-now"
start = "{open}"
end = "{close}"

[[schedules]]
name = "later"
timezone = "UTC"
start = "{later_open}"
end = "{later_close}"
"#,
        open = utc_time_in(-6),
        close = utc_time_in(6),
        later_open = utc_time_in(6),
        later_close = utc_time_in(12),
        port_open = venue_open.local_addr().unwrap().port(),
        port_closed = venue_closed.local_addr().unwrap().port(),
    ));
    let sc = Sidecar::start(&[
        "--config",
        cfg.path().to_str().unwrap(),
        "--interval",
        "100ms",
    ]);
    sc.wait_polls(2);
    let m = sc.metrics();
    assert_eq!(m.get(EXPECTED_UP, &[("target", "open-now")]), Some(1.0));
    assert_eq!(m.get(EXPECTED_UP, &[("target", "closed-now")]), Some(0.0));
    assert_eq!(m.get(EXPECTED_UP, &[("target", "always")]), Some(1.0));

    let health = sc.json("/health");
    let schedules = health["schedules"]
        .as_array()
        .expect("schedules in /health");
    assert_eq!(schedules.len(), 2, "{health:#}");
    let by_target = |name: &str| {
        schedules
            .iter()
            .find(|s| s["target"] == name)
            .unwrap_or_else(|| panic!("{name} in {schedules:?}"))
            .clone()
    };
    let open = by_target("open-now");
    assert_eq!(open["expected_up"], true);
    assert_eq!(open["schedule"], "around-now");
    assert_eq!(open["timezone"], "UTC");
    let closed = by_target("closed-now");
    assert_eq!(closed["expected_up"], false);
    // Both change about six hours from now (the window's end; the later one's opening).
    for s in [&open, &closed] {
        let next = s["next_change"].as_str().unwrap();
        let next = chrono::DateTime::parse_from_rfc3339(next).unwrap();
        let from_now = SystemTime::from(next)
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let six_hours = Duration::from_secs(6 * 3600);
        assert!(
            from_now > six_hours - Duration::from_secs(120) && from_now <= six_hours,
            "{s}: {from_now:?}"
        );
    }

    // One session ends inside its window, one outside: only the second was planned.
    for venue in [&venue_open, &venue_closed] {
        let gw = std::net::TcpStream::connect(venue.local_addr().unwrap()).unwrap();
        let (peer, _) = venue.accept().unwrap();
        sc.wait_for("the session listed", Duration::from_secs(10), |s| {
            s.json("/connections")["total"] == 1
        });
        drop(gw);
        drop(peer);
    }
    let ends = |s: &Sidecar, target: &str, cause: &str| {
        let l = [("target", target), ("cause", cause)];
        s.metrics().get("fix_session_ends_total", &l)
    };
    sc.wait_for("both ends judged", Duration::from_secs(10), |s| {
        ends(s, "closed-now", "scheduled_logout") == Some(1.0)
            && ends(s, "open-now", "unknown") == Some(1.0)
    });
    assert_eq!(ends(&sc, "open-now", "scheduled_logout"), Some(0.0));
    assert_eq!(ends(&sc, "closed-now", "unknown"), Some(0.0));
    // A target without a schedule is never judged to end on schedule.
    assert_eq!(ends(&sc, "always", "scheduled_logout"), Some(0.0));
    sc.terminate();
}
