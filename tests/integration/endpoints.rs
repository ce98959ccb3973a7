//! The sidecar's endpoints against connections whose numbers the test itself created.

use std::time::{Duration, Instant};

use crate::harness::*;

const ACTIVE: &str = "fix_connections_active";
const OPENED: &str = "fix_connections_total";
const CLOSED: &str = "fix_connections_closed_total";
const PEAK: &str = "fix_connections_peak";

/// v4 and v6 targets, a local port range, unrelated connections; opens and closes while the
/// sidecar watches, and checks every endpoint against what the test did.
#[test]
fn endpoints_report_the_connections_the_test_made() {
    let v4 = Downstream::listen("127.0.0.2:0");
    let v6 = Downstream::listen("[::1]:0");
    let unrelated = Downstream::listen("127.0.0.3:0");
    // 100 local ports for venue-v4's `local_ports`, and the one after them (outside it).
    let ports = PortRange::reserve(101);
    let cfg = config_file(&format!(
        r#"
[[targets]]
name = "venue-v4"
address = "127.0.0.2"
port = {p4}
local_ports = [{first}, {last}]

[[targets]]
name = "venue-v6"
address = "::1"
port = {p6}
"#,
        p4 = v4.addr.port(),
        p6 = v6.addr.port(),
        first = ports.port(0),
        last = ports.port(99),
    ));

    // Open before the sidecar starts: counted as opened, lifetimes unknown.
    let mut a = vec![
        connect_from(&ports.local(0), v4.addr),
        connect_from(&ports.local(1), v4.addr),
    ];
    let _outside_range = connect_from(&ports.local(100), v4.addr);
    let _unrelated = [
        connect_from("127.0.0.1:0", unrelated.addr),
        connect_from(&ports.local(2), unrelated.addr),
    ];
    let mut b = vec![connect_from("[::1]:0", v6.addr)];

    let sc = Sidecar::start(&[
        "--config",
        cfg.path().to_str().unwrap(),
        "--interval",
        "100ms",
    ]);
    sc.wait_for("first connections", Duration::from_secs(10), |s| {
        let m = s.metrics();
        m.get(ACTIVE, &[("target", "venue-v4")]) == Some(2.0)
            && m.get(ACTIVE, &[("target", "venue-v6")]) == Some(1.0)
    });

    // Open more while watched, hold them a known time, then close them.
    let opened_at = Instant::now();
    a.push(connect_from(&ports.local(50), v4.addr));
    b.push(connect_from("[::1]:0", v6.addr));
    b.push(connect_from("[::1]:0", v6.addr));
    sc.wait_polls(2);
    let m = sc.metrics();
    assert_eq!(m.get(ACTIVE, &[("target", "venue-v4")]), Some(3.0));
    assert_eq!(m.get(ACTIVE, &[("target", "venue-v6")]), Some(3.0));
    assert_eq!(m.get(OPENED, &[("target", "venue-v4")]), Some(3.0));
    assert_eq!(m.get(OPENED, &[("target", "venue-v6")]), Some(3.0));

    // /connections lists exactly the matching sockets, with their real addresses.
    let conns = sc.json("/connections");
    assert_eq!(conns["total"], 6, "{conns:#}");
    let mut locals: Vec<String> = conns["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["target"] == "venue-v4")
        .map(|c| {
            assert_eq!(c["remote_addr"], v4.addr.to_string());
            assert_eq!(c["state"], "ESTABLISHED");
            c["local_addr"].as_str().unwrap().to_string()
        })
        .collect();
    locals.sort();
    assert_eq!(locals, [ports.local(0), ports.local(1), ports.local(50)]);
    let v6_locals: Vec<String> = b
        .iter()
        .map(|s| s.local_addr().unwrap().to_string())
        .collect();
    for c in conns["connections"].as_array().unwrap() {
        if c["target"] == "venue-v6" {
            assert!(v6_locals.contains(&c["local_addr"].as_str().unwrap().to_string()));
        }
    }

    // A deliberate hold, not a wait: the sessions opened while watched must live a known time
    // longer than 1 s (the histogram's le="1" bucket stays empty; the sum is compared below).
    std::thread::sleep(Duration::from_millis(1200));
    let held = opened_at.elapsed();
    drop(a.pop()); // ports.local(50), opened while watched
    drop(b.pop()); // one v6, opened while watched
    let closed_at = Instant::now();
    drop(a.remove(0)); // ports.local(0), preexisting
    sc.wait_for("closes", Duration::from_secs(10), |s| {
        let m = s.metrics();
        m.sum(CLOSED, &[("target", "venue-v4")]) == 2.0
            && m.sum(CLOSED, &[("target", "venue-v6")]) == 1.0
    });
    let m = sc.metrics();
    assert_eq!(m.get(ACTIVE, &[("target", "venue-v4")]), Some(1.0));
    assert_eq!(m.get(ACTIVE, &[("target", "venue-v6")]), Some(2.0));
    assert_eq!(m.get(PEAK, &[("target", "venue-v4")]), Some(3.0));
    assert_eq!(m.get(PEAK, &[("target", "venue-v6")]), Some(3.0));
    assert_eq!(m.get(OPENED, &[("target", "venue-v4")]), Some(3.0));

    // Durations: only connections opened while watched; each within the poll interval of the
    // time the test held it (plus the time it took to close them all).
    let h = "fix_connection_duration_seconds";
    assert_eq!(
        m.get(&format!("{h}_count"), &[("target", "venue-v4")]),
        Some(1.0)
    );
    assert_eq!(
        m.get(&format!("{h}_count"), &[("target", "venue-v6")]),
        Some(1.0)
    );
    let slack = 0.1 + closed_at.elapsed().as_secs_f64() + 0.15;
    for t in ["venue-v4", "venue-v6"] {
        let sum = m.get(&format!("{h}_sum"), &[("target", t)]).unwrap();
        let truth = held.as_secs_f64();
        assert!(
            (sum - truth).abs() <= slack + 0.25,
            "{t}: measured {sum}s, held {truth}s (slack {slack})"
        );
    }
    assert_eq!(
        m.get(
            &format!("{h}_bucket"),
            &[("target", "venue-v4"), ("le", "1")]
        ),
        Some(0.0)
    );
    assert_eq!(
        m.get(
            &format!("{h}_bucket"),
            &[("target", "venue-v4"), ("le", "5")]
        ),
        Some(1.0)
    );

    // by_port: only the target with a local_ports range, one series per port in use.
    assert_eq!(
        m.get(
            "fix_connections_by_port",
            &[("target", "venue-v4"), ("port", &ports.port(1).to_string())]
        ),
        Some(1.0)
    );
    assert_eq!(
        m.get(
            "fix_connections_by_port",
            &[("target", "venue-v4"), ("port", &ports.port(0).to_string())]
        ),
        None
    );
    assert!(m
        .series
        .iter()
        .all(|(n, l, _)| n != "fix_connections_by_port" || l["target"] == "venue-v4"));

    // Every series says which host it came from; the resource says who we are.
    let host = sc.json("/health")["hostname"].as_str().unwrap().to_string();
    for (n, l, _) in &m.series {
        assert_eq!(l.get("host"), Some(&host), "{n} {l:?}");
    }
    let ti = m
        .series
        .iter()
        .find(|(n, _, _)| n == "target_info")
        .expect("target_info");
    assert_eq!(ti.1["service_name"], "fix-monitor");
    assert_eq!(ti.1["host_name"], host);
    assert!(ti.1.contains_key("service_instance_id"));
    assert!(
        m.get("fix_monitor_poll_duration_seconds_count", &[])
            .unwrap()
            >= 3.0
    );
    // Its own footprint, as /proc says it (a sanity range, not a benchmark).
    let rss = m
        .get("process_memory_usage_bytes", &[])
        .expect("rss series");
    let status = std::fs::read_to_string(format!("/proc/{}/status", sc.pid())).unwrap();
    let vm_rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(
        (rss - vm_rss_kb * 1024.0).abs() < 8.0 * 1024.0 * 1024.0,
        "rss {rss} vs VmRSS {vm_rss_kb} kB"
    );
    assert!(m
        .get("process_cpu_time_seconds_total", &[("cpu_mode", "user")])
        .is_some());
    // promtool accepting this text is a system test (tests/system/promtool.rs).

    // /health and / agree.
    let health = sc.json("/health");
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["active_connections"], 3);
    // `auto`: eBPF as root (CI), netlink as a normal user.
    assert_eq!(health["source"], crate::harness::auto_source(), "{health}");
    assert_eq!(health["session_health"]["available"], true, "{health}");
    let (code, page) = sc.get("/");
    assert_eq!(code, 200);
    assert!(page.contains("venue-v4") && page.contains("/connections"));

    let (status, log) = sc.terminate();
    assert!(status.success(), "exit {status:?}\n{log}");
    assert!(log.contains("connection opened"), "{log}");
    assert!(log.contains("connection closed"), "{log}");
    drop((v4, v6, unrelated));
}

/// Scrapes do not poll: the poll count follows the interval, not the scrape rate.
#[test]
fn scraping_does_not_trigger_polls() {
    let d = Downstream::listen("127.0.0.4:0");
    let sc = Sidecar::start(&["--ip", "127.0.0.4", "--interval", "2s"]);
    sc.wait_polls(1);
    let before = sc.json("/health")["polls"].as_u64().unwrap();
    for _ in 0..100 {
        let _ = sc.get("/metrics");
    }
    let after = sc.json("/health")["polls"].as_u64().unwrap();
    assert!(
        after - before <= 1,
        "100 scrapes caused {} polls",
        after - before
    );
    // Between two polls every scrape sees the same numbers; the next poll brings new ones.
    sc.wait_polls(1);
    let (a, b) = (sc.get("/metrics").1, sc.get("/metrics").1);
    let polls = |t: &str| Metrics::parse(t).get("fix_monitor_poll_duration_seconds_count", &[]);
    if polls(&a) == polls(&b) {
        assert_eq!(a, b);
    }
    sc.wait_polls(1);
    assert!(polls(&sc.get("/metrics").1) > polls(&b));
    drop(d);
}

/// OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME are honoured, and the `host` label on every
/// series follows `host.name`, so a fleet can name its hosts the way its inventory does.
#[test]
fn resource_comes_from_the_standard_otel_variables() {
    let d = Downstream::listen("127.0.0.6:0");
    let mut cmd = command();
    cmd.env(
        "OTEL_RESOURCE_ATTRIBUTES",
        "host.name=gw-ny4-7,deployment.environment=uat",
    )
    .env("OTEL_SERVICE_NAME", "fix-monitor-uat");
    let sc = Sidecar::start_with(cmd, &["--ip", "127.0.0.6", "--interval", "100ms"]);
    sc.wait_polls(1);
    let m = sc.metrics();
    let ti = m
        .series
        .iter()
        .find(|(n, _, _)| n == "target_info")
        .unwrap();
    assert_eq!(ti.1["service_name"], "fix-monitor-uat");
    assert_eq!(ti.1["host_name"], "gw-ny4-7");
    assert_eq!(ti.1["deployment_environment"], "uat");
    assert_eq!(
        m.get("fix_connections_active", &[("host", "gw-ny4-7")]),
        Some(0.0)
    );
    assert_eq!(sc.json("/health")["hostname"], "gw-ny4-7");
    drop(d);
}

/// Every source, chosen explicitly, reports the same truth through the binary.
#[test]
fn each_source_reports_the_same_connections() {
    for (i, source) in ["netlink", "procfs", "netstat"].iter().enumerate() {
        let addr = format!("127.0.1.{}", 10 + i);
        let d = Downstream::listen(&format!("{addr}:0"));
        let mut held = vec![
            connect_from("127.0.0.1:0", d.addr),
            connect_from("127.0.0.1:0", d.addr),
            connect_from(
                "[::ffff:127.0.0.1]:0",
                format!("[::ffff:{addr}]:{}", d.addr.port())
                    .parse()
                    .unwrap(),
            ),
        ];
        let sc = Sidecar::start(&["--ip", &addr, "--source", source, "--interval", "100ms"]);
        sc.wait_for("3 active", std::time::Duration::from_secs(10), |s| {
            s.metrics().get("fix_connections_active", &[]) == Some(3.0)
        });
        assert_eq!(sc.json("/health")["source"], *source);
        held.pop();
        sc.wait_for("1 closed", std::time::Duration::from_secs(10), |s| {
            let m = s.metrics();
            m.sum("fix_connections_closed_total", &[]) == 1.0
                && m.get("fix_connections_active", &[]) == Some(2.0)
        });
        // Polling cannot tell who hung up: `unknown`, and no other `by` series.
        assert_eq!(
            sc.metrics().by("fix_connections_closed_total", &[], "by"),
            [("unknown".to_string(), 1.0)].into(),
            "{source}"
        );
        assert_eq!(
            sc.metrics().get("fix_connections_total", &[]),
            Some(3.0),
            "{source}"
        );
        let (st, log) = sc.terminate();
        assert!(st.success(), "{source}: {log}");
    }
}

/// The HTML page escapes what it shows: a target name is configuration, not markup.
#[test]
fn index_page_escapes_target_names() {
    let cfg = config_file(
        "[[targets]]\nname = \"<script>alert('x')</script>&\"\naddress = \"127.0.0.8\"\n",
    );
    let sc = Sidecar::start(&["--config", cfg.path().to_str().unwrap()]);
    let (code, page) = sc.get("/");
    assert_eq!(code, 200);
    assert!(!page.contains("<script>"), "{page}");
    assert!(
        page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;"),
        "{page}"
    );
}

/// `--log-format json`: every log line is a JSON object, and opens/closes are among them, as
/// session events (`event.name` and the OTel-style attributes, `session_events`).
#[test]
fn json_logs_are_one_object_per_line() {
    let d = Downstream::listen("127.0.2.9:0");
    let sc = Sidecar::start(&[
        "--ip",
        "127.0.2.9",
        "--interval",
        "100ms",
        "--log-format",
        "json",
    ]);
    sc.wait_polls(1);
    let c = connect_from("127.0.0.1:0", d.addr);
    sc.wait_for("open", Duration::from_secs(10), |s| {
        s.metrics().get("fix_connections_total", &[]) == Some(1.0)
    });
    drop(c);
    sc.wait_for("close", Duration::from_secs(10), |s| {
        s.metrics().sum("fix_connections_closed_total", &[]) == 1.0
    });
    let (st, log) = sc.terminate();
    assert!(st.success());
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let opened = lines
        .iter()
        .find(|l| l["message"] == "connection opened")
        .expect("open line");
    assert_eq!(opened["event.name"], "fix.session.opened");
    assert_eq!(opened["network.peer.address"], d.addr.ip().to_string());
    assert_eq!(opened["network.peer.port"], d.addr.port());
    assert_eq!(opened["fix.target"], "127.0.2.9");
    let closed = lines
        .iter()
        .find(|l| l["message"] == "connection closed")
        .expect("close line");
    assert_eq!(closed["event.name"], "fix.session.closed");
    assert!(closed["fix.session.duration"].as_f64().unwrap() > 0.0);
}
