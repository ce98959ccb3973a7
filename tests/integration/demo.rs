//! `fix-monitor demo`, as the README's first command: it starts by itself, says where its
//! endpoint is, serves real numbers there, and ends by itself (or at Ctrl+C) with a summary in
//! which fix-monitor's counts agree with the simulator's, the endpoint's and the report's.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::*;

const VENUES: [&str; 3] = ["venue-a", "venue-b", "venue-c"];

/// (opened, closed, active) per venue, from /metrics.
type VenueCounts = BTreeMap<String, (f64, f64, f64)>;

fn venue_counts(m: &Metrics) -> VenueCounts {
    VENUES
        .iter()
        .map(|v| {
            let l = [("target", *v)];
            (
                v.to_string(),
                (
                    m.count("fix_connections_total", &l),
                    m.sum("fix_connections_closed_total", &l),
                    m.count("fix_connections_active", &l),
                ),
            )
        })
        .collect()
}

/// Piped, with the default endpoint address (the next free port when 9464 is taken, which the
/// test makes sure of when it can) and `--duration`: scraped while it runs; exits 0 by itself;
/// fix-monitor's final counts equal the simulator's, the report's, and the endpoint's last
/// scrape.
#[test]
fn demo_runs_by_itself_serves_metrics_and_its_numbers_agree() {
    // Hold 9464 if it is free, so the demo must move on to the next port. (The one fixed port
    // in the tests, on purpose: 9464 is the demo's documented default.)
    let held = std::net::TcpListener::bind("127.0.0.1:9464").ok();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("demo.json");
    let mut child = command()
        .args(["demo", "--duration", "8", "--interval", "250ms", "--report"])
        .arg(&report)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let reader = {
        let lines = lines.clone();
        let stdout = child.stdout.take().unwrap();
        thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(l);
            }
        })
    };
    let text = || lines.lock().unwrap().join("\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    let url = loop {
        if let Some(u) = lines.lock().unwrap().iter().find_map(|l| {
            l.strip_prefix("metrics: http://")
                .and_then(|r| r.split("/metrics").next())
                .map(str::to_owned)
        }) {
            break u;
        }
        assert!(Instant::now() < deadline, "no URL:\n{}", text());
        thread::sleep(Duration::from_millis(50));
    };
    let addr: SocketAddr = url.parse().unwrap();
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert!(
        (9464..9484).contains(&addr.port()),
        "the default port or one of the next: {addr}"
    );
    if held.is_some() {
        assert_ne!(addr.port(), 9464, "9464 is taken by the test");
    }

    // Scrape until the endpoint goes away; note which scrapes came after the demo said every
    // close was seen.
    let mut scrapes: Vec<(bool, VenueCounts)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "no exit:\n{}", text());
        let after_end = text().contains("fix-monitor has seen every session close");
        if let Ok((200, body)) = std::panic::catch_unwind(|| http_get(addr, "/metrics")) {
            scrapes.push((after_end, venue_counts(&Metrics::parse(&body))));
        }
        thread::sleep(Duration::from_millis(100));
    };
    // Its last lines: the reader ends when the closed pipe is drained.
    join_within(
        "the end of the demo's output",
        Duration::from_secs(5),
        reader,
    );
    let out = text();
    assert!(status.success(), "{status:?}\n{out}");
    assert!(out.contains("demo ended as planned after 00:00:0"), "{out}");
    assert!(
        out.contains("fix-monitor counted every session the gateway opened and closed"),
        "{out}"
    );

    // The simulator's counts, and fix-monitor's final table.
    let sim_line = out
        .lines()
        .find_map(|l| l.strip_prefix("simulated gateway sessions: "))
        .unwrap_or_else(|| panic!("no simulator line:\n{out}"));
    let mut sim: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for part in sim_line.split("; ") {
        let f: Vec<&str> = part.split_whitespace().collect();
        let n = |kv: &str| kv.split_once('=').unwrap().1.parse::<u64>().unwrap();
        sim.insert(f[0].to_owned(), (n(f[1]), n(f[2])));
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let last_after_end = scrapes
        .iter()
        .rev()
        .find(|(after, _)| *after)
        .map(|(_, c)| c.clone())
        .unwrap_or_else(|| panic!("no scrape after the last close was seen:\n{out}"));
    let (mut opened_total, mut closed_total) = (0, 0);
    for (i, v) in VENUES.iter().enumerate() {
        let (opened, closed) = sim[*v];
        assert!(opened > 0, "{v}: {out}");
        assert_eq!(
            opened, closed,
            "{v}: every session closed at the end\n{out}"
        );
        assert_eq!(
            counts(&out, v, "127.0.0.", 2),
            Some(vec![
                opened,
                closed,
                0,
                report["targets"][i]["peak"].as_u64().unwrap()
            ]),
            "{v}: the summary table\n{out}"
        );
        let t = &report["targets"][i];
        assert_eq!(t["name"], *v);
        assert_eq!(
            (t["opened"].as_u64(), t["closed"].as_u64()),
            (Some(opened), Some(closed))
        );
        assert_eq!(
            last_after_end[*v],
            (opened as f64, closed as f64, 0.0),
            "{v}: /metrics at the end"
        );
        for (_, c) in &scrapes {
            assert!(c[*v].0 <= opened as f64 && c[*v].1 <= closed as f64);
        }
        opened_total += opened;
        closed_total += closed;
    }
    assert!(
        scrapes
            .iter()
            .any(|(after, c)| !after && c.values().any(|(o, cl, _)| *o > 0.0 && *cl > 0.0)),
        "/metrics showed opens and closes while the demo ran"
    );
    assert_eq!(report["stats"]["total_connections"], opened_total);
    assert_eq!(report["stats"]["closed_connections"], closed_total);
    assert_eq!(report["active_connections"].as_array().unwrap().len(), 0);
    assert!(
        out.contains(&format!("total connections: {opened_total}")),
        "{out}"
    );
    drop(held);
}
