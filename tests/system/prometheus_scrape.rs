//! A real Prometheus scraping a real fix-monitor while the test opens and closes loopback
//! connections whose numbers it knows: what Prometheus stores must be that ground truth, and
//! every PromQL expression of the Grafana dashboard must work against it.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::backends::{scrape_config, Backend, Sample};
use crate::harness::*;

const JOB: &str = "fix-monitor";
/// The series the ground-truth test compares, by (metric, target).
const COMPARED: &[&str] = &[
    "fix_connections_active",
    "fix_connections_total",
    "fix_connections_closed_total",
    "fix_connections_peak",
    "fix_connection_duration_seconds_count",
    "fix_session_ends_total",
    "fix_target_expected_up",
];

fn connect_n(n: usize, to: &Downstream) -> Vec<TcpStream> {
    (0..n)
        .map(|_| connect_from("127.0.0.1:0", to.addr))
        .collect()
}

/// (metric, target) -> value, for the [`COMPARED`] metrics of job `fix-monitor`, as Prometheus
/// has them now, summed over other labels (the closed counter's `by`, the ends' `cause`).
fn stored(prom: &Backend) -> BTreeMap<(String, String), f64> {
    let q = format!(r#"{{job="{JOB}", __name__=~"{}"}}"#, COMPARED.join("|"));
    let mut out = BTreeMap::new();
    for (l, v) in prom.query(&q) {
        *out.entry((l["__name__"].clone(), l["target"].clone()))
            .or_insert(0.0) += v;
    }
    out
}

fn expect(rows: &[(&str, &str, f64)]) -> BTreeMap<(String, String), f64> {
    rows.iter()
        .map(|(m, t, v)| ((m.to_string(), t.to_string()), *v))
        .collect()
}

/// Waits (bounded) until Prometheus stores exactly `want` for the compared metrics.
fn wait_stored(prom: &Backend, what: &str, want: &BTreeMap<(String, String), f64>) {
    prom.wait_for(what, Duration::from_secs(20), |p| {
        let got = stored(p);
        let relevant: BTreeMap<_, _> = got
            .into_iter()
            .filter(|(k, _)| want.contains_key(k))
            .collect();
        if &relevant == want {
            Ok(())
        } else {
            Err(format!("stored {relevant:?}\n want {want:?}"))
        }
    });
}

/// Waits (bounded) until Prometheus has scraped job `fix-monitor` `n` more times: the time of
/// its last `up` sample has moved on `n` times.
fn wait_scrapes(prom: &Backend, n: usize) {
    let last_scrape = |p: &Backend| p.value(&format!(r#"timestamp(up{{job="{JOB}"}})"#));
    let start = last_scrape(prom);
    let mut seen: Vec<f64> = Vec::new();
    prom.wait_for(&format!("{n} more scrapes"), Duration::from_secs(20), |p| {
        match last_scrape(p) {
            Some(t) if Some(t) > start && !seen.contains(&t) => seen.push(t),
            _ => {}
        }
        if seen.len() >= n {
            Ok(())
        } else {
            Err(format!(
                "{} new scrapes after {start:?}: {seen:?}",
                seen.len()
            ))
        }
    });
}

fn by_label(rows: &[Sample], label: &str) -> BTreeMap<String, f64> {
    rows.iter()
        .map(|(l, v)| (l.get(label).cloned().unwrap_or_default(), *v))
        .collect()
}

/// Prometheus (job "fix-monitor", 1 s scrapes) against known loopback connections: active,
/// opened, closed, peak, lifetime histogram, ends by cause and the schedule gauge per target,
/// `up`, the `host`/`instance` labels, and agreement with the sidecar's own /metrics.
#[test]
fn prometheus_stores_the_connections_the_test_made() {
    let started = Instant::now();
    let a = Downstream::listen("127.0.0.31:0");
    let b = Downstream::listen("127.0.0.32:0");
    let unrelated = Downstream::listen("127.0.0.33:0");
    let cfg = config_file(&format!(
        r#"
[[targets]]
name = "venue-a"
address = "127.0.0.31"
port = {pa}

[[targets]]
name = "venue-b"
address = "127.0.0.32"
port = {pb}
"#,
        pa = a.addr.port(),
        pb = b.addr.port()
    ));

    // Two sessions before the sidecar starts: opened (first seen), lifetime unknown.
    let mut pre_a = connect_n(2, &a);
    let sc = Sidecar::start(&[
        "--config",
        cfg.path().to_str().unwrap(),
        // Netlink: the closes expected are `by = "unknown"` (eBPF mode says who hung up).
        "--source",
        "netlink",
        "--interval",
        "200ms",
    ]);
    let host = sc.json("/health")["hostname"]
        .as_str()
        .expect("hostname in /health")
        .to_string();
    let prom = Backend::prometheus(None, &scrape_config(JOB, &[sc.addr]));
    prom.wait_value(
        "the first successful scrape",
        &format!(r#"up{{job="{JOB}"}}"#),
        1.0,
        Duration::from_secs(20),
    );
    wait_stored(
        &prom,
        "the preexisting sessions",
        &expect(&[
            ("fix_connections_active", "venue-a", 2.0),
            ("fix_connections_active", "venue-b", 0.0),
            ("fix_connections_total", "venue-a", 2.0),
            ("fix_connections_total", "venue-b", 0.0),
            ("fix_connections_closed_total", "venue-a", 0.0),
            ("fix_connections_closed_total", "venue-b", 0.0),
            ("fix_session_ends_total", "venue-a", 0.0),
            ("fix_session_ends_total", "venue-b", 0.0),
            ("fix_target_expected_up", "venue-a", 1.0),
            ("fix_target_expected_up", "venue-b", 1.0),
        ]),
    );

    // Sessions opened while watched, and traffic to a downstream nobody configured.
    let mut new_a = connect_n(3, &a);
    let mut new_b = connect_n(4, &b);
    let _noise = connect_n(2, &unrelated);
    let opened_at = Instant::now();
    wait_stored(
        &prom,
        "the new sessions",
        &expect(&[
            ("fix_connections_active", "venue-a", 5.0),
            ("fix_connections_active", "venue-b", 4.0),
            ("fix_connections_total", "venue-a", 5.0),
            ("fix_connections_total", "venue-b", 4.0),
            ("fix_connections_peak", "venue-a", 5.0),
            ("fix_connections_peak", "venue-b", 4.0),
        ]),
    );

    // Hold them a known time (> 1 s, so the le="1" bucket stays empty), then close some. A
    // deliberate hold, not a wait for a condition.
    let hold = Duration::from_secs(2);
    std::thread::sleep(hold.saturating_sub(opened_at.elapsed()));
    let close_started = Instant::now();
    new_a.truncate(1); // 2 closed
    new_b.truncate(1); // 3 closed
    pre_a.truncate(1); // 1 preexisting closed: counted, no lifetime
    let closing = close_started.elapsed();
    let held = opened_at.elapsed();

    let truth = expect(&[
        ("fix_connections_active", "venue-a", 2.0),
        ("fix_connections_active", "venue-b", 1.0),
        ("fix_connections_total", "venue-a", 5.0),
        ("fix_connections_total", "venue-b", 4.0),
        ("fix_connections_closed_total", "venue-a", 3.0),
        ("fix_connections_closed_total", "venue-b", 3.0),
        ("fix_connections_peak", "venue-a", 5.0),
        ("fix_connections_peak", "venue-b", 4.0),
        ("fix_connection_duration_seconds_count", "venue-a", 2.0),
        ("fix_connection_duration_seconds_count", "venue-b", 3.0),
        // Every end judged (no FIX layer: at once), and no schedule: always expected up.
        ("fix_session_ends_total", "venue-a", 3.0),
        ("fix_session_ends_total", "venue-b", 3.0),
        ("fix_target_expected_up", "venue-a", 1.0),
        ("fix_target_expected_up", "venue-b", 1.0),
    ]);
    wait_stored(&prom, "the closes", &truth);
    // Exactly these series: nothing for the unrelated downstream.
    assert_eq!(stored(&prom), truth);
    // Who hung up: polling knows only `unknown`, and no other `by` series exists.
    let by = |t: &str| {
        by_label(
            &prom.query(&format!(
                r#"fix_connections_closed_total{{job="{JOB}", target="{t}"}}"#
            )),
            "by",
        )
    };
    assert_eq!(by("venue-a"), [("unknown".to_string(), 3.0)].into());
    assert_eq!(by("venue-b"), [("unknown".to_string(), 3.0)].into());
    // Why they ended: netlink polling without the FIX layer, the process or a schedule can
    // tell no cause, so `unknown` is the only series.
    let causes = |t: &str| {
        by_label(
            &prom.query(&format!(
                r#"fix_session_ends_total{{job="{JOB}", target="{t}"}}"#
            )),
            "cause",
        )
    };
    assert_eq!(causes("venue-a"), [("unknown".to_string(), 3.0)].into());
    assert_eq!(causes("venue-b"), [("unknown".to_string(), 3.0)].into());

    // The histogram's buckets and sum, as Prometheus stores them.
    let buckets = |le: &str| {
        by_label(
            &prom.query(&format!(
                r#"fix_connection_duration_seconds_bucket{{job="{JOB}", le="{le}"}}"#
            )),
            "target",
        )
    };
    let counts = BTreeMap::from([("venue-a".to_string(), 2.0), ("venue-b".to_string(), 3.0)]);
    let zeros = BTreeMap::from([("venue-a".to_string(), 0.0), ("venue-b".to_string(), 0.0)]);
    assert_eq!(buckets("1"), zeros, "nothing lasted under 1 s");
    assert_eq!(buckets("5"), counts, "everything lasted under 5 s");
    assert_eq!(buckets("+Inf"), counts);
    let sums = by_label(
        &prom.query(&format!(
            r#"fix_connection_duration_seconds_sum{{job="{JOB}"}}"#
        )),
        "target",
    );
    // Each lifetime is measured first seen -> first missed: within a poll interval (200 ms)
    // plus scheduling of what the test held it.
    for (t, n) in &counts {
        let mean = sums[t] / n;
        let lo = held.as_secs_f64() - closing.as_secs_f64() - 0.5;
        let hi = held.as_secs_f64() + closing.as_secs_f64() + 0.5;
        assert!(
            (lo..=hi).contains(&mean),
            "{t}: mean lifetime {mean:.3}s, held {held:?} (closing took {closing:?})"
        );
    }

    // The scrape itself: up, the job/instance/host labels, no poll errors.
    let up = prom.query(&format!(r#"up{{job="{JOB}"}}"#));
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0].1, 1.0);
    assert_eq!(up[0].0["instance"], sc.addr.to_string());
    let errors = prom.query(&format!(r#"fix_monitor_poll_errors_total{{job="{JOB}"}}"#));
    assert_eq!(
        errors.len(),
        1,
        "the error counter exists from the start: {errors:?}"
    );
    assert_eq!(errors[0].1, 0.0);
    for (labels, _) in prom.query(&format!(r#"{{job="{JOB}", __name__=~"fix_.*"}}"#)) {
        assert_eq!(labels.get("host"), Some(&host), "{labels:?}");
        assert_eq!(labels["instance"], sc.addr.to_string(), "{labels:?}");
    }
    let info = prom.query(&format!(r#"target_info{{job="{JOB}"}}"#));
    assert_eq!(info.len(), 1, "{info:?}");
    assert_eq!(info[0].0.get("host_name"), Some(&host));
    assert_eq!(info[0].0["service_name"], "fix-monitor");

    // What Prometheus stored is what the sidecar serves (nothing changes any more).
    let m = sc.metrics();
    for ((metric, target), v) in &truth {
        assert_eq!(
            m.get(metric, &[("target", target)]),
            Some(*v),
            "{metric}{{target={target}}} on /metrics"
        );
    }
    drop((new_a, new_b, pre_a));
    println!(
        "prometheus_stores_the_connections_the_test_made: {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// One dashboard expression and what the real Prometheus said to it.
struct Outcome {
    panel: String,
    ref_id: String,
    expr: String,
    result: Result<Vec<Sample>, String>,
}

impl Outcome {
    fn verdict(&self) -> &'static str {
        match &self.result {
            Err(_) => "ERROR",
            Ok(rows) if rows.is_empty() => "EMPTY",
            Ok(rows) if rows.iter().all(|(_, v)| v.is_nan()) => "NaN",
            Ok(_) => "ok",
        }
    }
}

/// `scripts/dashboard-exprs.sh --tsv`: (panel title, refId, expr) with variables substituted.
fn dashboard_exprs() -> Vec<(String, String, String)> {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("bash")
        .arg(format!("{root}/scripts/dashboard-exprs.sh"))
        .arg("--tsv")
        .output()
        .expect("running scripts/dashboard-exprs.sh (needs bash and jq)");
    assert!(
        out.status.success(),
        "dashboard-exprs.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<(String, String, String)> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut parts = l.splitn(3, '\t');
            let (p, r, e) = (parts.next(), parts.next(), parts.next());
            (
                p.unwrap_or_default().to_string(),
                r.unwrap_or_default().to_string(),
                e.unwrap_or_else(|| panic!("no expression in {l:?}"))
                    .to_string(),
            )
        })
        .collect();
    assert!(rows.len() >= 10, "too few dashboard expressions: {rows:?}");
    rows
}

/// Runs every expression against `p` now.
fn run_all(p: &Backend, exprs: &[(String, String, String)]) -> Vec<Outcome> {
    exprs
        .iter()
        .map(|(panel, ref_id, expr)| Outcome {
            panel: panel.clone(),
            ref_id: ref_id.clone(),
            expr: expr.clone(),
            result: p.try_query(expr),
        })
        .collect()
}

/// One block per expression: verdict, panel [refId], the query, and what came back.
fn render(outcomes: &[Outcome]) -> String {
    let mut table = String::new();
    for o in outcomes {
        let detail = match &o.result {
            Ok(rows) => format!(
                "{} series: {}",
                rows.len(),
                rows.iter()
                    .take(4)
                    .map(|(l, v)| {
                        let l: Vec<String> = l
                            .iter()
                            .filter(|(k, _)| {
                                !matches!(k.as_str(), "job" | "instance" | "service_instance_id")
                            })
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect();
                        format!("{{{}}} {v}", l.join(","))
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            Err(e) => e.clone(),
        };
        table.push_str(&format!(
            "{:<5} {} [{}]\n      {}\n      {}\n",
            o.verdict(),
            o.panel,
            o.ref_id,
            o.expr,
            detail
        ));
    }
    table
}

/// Every PromQL expression of dashboards/fix-monitor.json, against a Prometheus that has scraped
/// fix-monitor: on a fresh sidecar (nothing closed yet) every expression must work except the
/// lifetime-histogram ones (no series before the first close); after two waves of opened and
/// closed sessions each must parse and return at least one series with a number (not NaN).
#[test]
fn dashboard_expressions_return_data_from_a_real_scrape() {
    let started = Instant::now();
    let exprs = dashboard_exprs();
    let a = Downstream::listen("127.0.0.41:0");
    let b = Downstream::listen("127.0.0.42:0");
    // venue-a declares a local port range (all unprivileged ports), so that
    // fix_connections_by_port has series for the port panels, and a heartbeat, so that the
    // session-health panels have stale counts (by target and by port).
    // The FIX row: the sidecar follows the message log of a simulated gateway whose sessions
    // (orders acked, rejects, a sequence gap) run against a simulated venue; venue-a's
    // comp_ids link them to it. Capture is on too (the test runs as root), so that the capture's
    // table has series for its panels (it sees the targets' connections, which carry no FIX).
    let fix_logs = tempfile::tempdir().unwrap();
    let fix_venue = fix_monitor::fix::sim::Venue::start(
        "127.0.0.1:0".parse().unwrap(),
        fix_monitor::fix::sim::VenueBehaviour {
            ack_delay: Duration::from_millis(2),
            business_reject_every: Some(4),
            gap_after: Some((5, 2)),
            // Orders 1-8: 4 and 8 business-rejected, 5 a cancel, 7 a replace, 3 and 6 rejected,
            // 2 filled.
            fill_every: Some(2),
            order_reject_every: Some(3),
            ..Default::default()
        },
    )
    .unwrap();
    let fix_session = || {
        let log = fix_logs.path().join("GW-VENUE.messages.log");
        fix_monitor::fix::sim::scripted_session(fix_venue.addr, 8, None, Some((log, false)))
            .expect("a simulated FIX session")
    };
    let cfg = config_file(&format!(
        r#"
[[targets]]
name = "venue-a"
address = "127.0.0.41"
port = {pa}
local_ports = [1024, 65535]
heartbeat = "30s"
comp_ids = ["VENUE"]
logon_lockout = {{ attempts = 5, within = "60s" }}
message_limit = {{ count = 50, per = "1s" }}

[[targets]]
name = "venue-b"
address = "127.0.0.42"
port = {pb}

[fix]
our_comp_ids = ["GW"]
capture = true
[[fix.logs]]
path = "{logs}/*.messages.log"
"#,
        pa = a.addr.port(),
        pb = b.addr.port(),
        logs = fix_logs.path().display()
    ));
    let _held = [connect_n(3, &a), connect_n(2, &b)];
    let sc = Sidecar::start(&[
        "--config",
        cfg.path().to_str().unwrap(),
        "--interval",
        "200ms",
    ]);
    let prom = Backend::prometheus(None, &scrape_config(JOB, &[sc.addr]));
    prom.wait_value(
        "the first scrape",
        &format!(r#"up{{job="{JOB}"}}"#),
        1.0,
        Duration::from_secs(20),
    );
    fix_session();

    // A fresh sidecar, before any session closed: every expression must already work, except
    // those over the lifetime histogram, whose series only exist after the first close (the
    // sidecar initialises counters at 0, but a histogram has no observation to show).
    prom.wait_for(
        "three scrapes (for rate())",
        Duration::from_secs(20),
        |p| match p.value(&format!(r#"count_over_time(up{{job="{JOB}"}}[1m])"#)) {
            Some(n) if n >= 3.0 => Ok(()),
            other => Err(format!("{other:?} scrapes")),
        },
    );
    let fresh = run_all(&prom, &exprs);
    println!("fresh sidecar, nothing closed yet:\n{}", render(&fresh));
    for o in &fresh {
        let histogram = o.expr.contains("fix_connection_duration_seconds");
        // One FIX session so far: its latencies' and clock samples' rates may still be 0
        // (NaN quantiles).
        let latency = [
            "fix_order_ack_latency",
            "fix_order_fill_latency",
            "fix_clock_skew_seconds",
        ];
        if latency.iter().any(|l| o.expr.contains(l)) && o.verdict() == "NaN" {
            continue;
        }
        let want = if histogram { "EMPTY" } else { "ok" };
        assert_eq!(
            o.verdict(),
            want,
            "before any close: {} [{}] `{}`: {:?}",
            o.panel,
            o.ref_id,
            o.expr,
            o.result
        );
    }

    // Two waves of short sessions a few scrapes apart: the first creates the lifetime
    // histogram's series, the second makes their rate() non-zero, so quantiles are numbers.
    let closed = |p: &Backend| {
        by_label(
            &p.query(&format!(
                r#"sum by (target) (fix_connections_closed_total{{job="{JOB}"}})"#
            )),
            "target",
        )
    };
    for (wave, (na, nb)) in [(2usize, 1usize), (2, 2)].into_iter().enumerate() {
        let before = closed(&prom);
        fix_session();
        let short = [connect_n(na, &a), connect_n(nb, &b)];
        // A deliberate hold: the short sessions live a known time (> 1 s) before they close.
        std::thread::sleep(Duration::from_millis(1200));
        drop(short);
        prom.wait_for(
            &format!("wave {} of closes", wave + 1),
            Duration::from_secs(20),
            |p| {
                let now = closed(p);
                let grew = |t: &str, n: usize| {
                    now.get(t).copied().unwrap_or(0.0)
                        == before.get(t).copied().unwrap_or(0.0) + n as f64
                };
                if grew("venue-a", na) && grew("venue-b", nb) {
                    Ok(())
                } else {
                    Err(format!("closed {now:?}, before {before:?}"))
                }
            },
        );
        // A few more scrapes so that each series has samples on both sides of the change.
        wait_scrapes(&prom, 3);
    }

    // Bounded retry: a rate() may need one more scrape.
    let deadline = Instant::now() + Duration::from_secs(15);
    let outcomes = loop {
        let o = run_all(&prom, &exprs);
        if o.iter().all(|o| o.verdict() == "ok") || Instant::now() > deadline {
            break o;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let table = render(&outcomes);
    println!("after two waves of closes:\n{table}");
    let bad: Vec<&Outcome> = outcomes.iter().filter(|o| o.verdict() != "ok").collect();
    assert!(
        bad.is_empty(),
        "{} of {} dashboard expressions failed or returned no data:\n{table}",
        bad.len(),
        outcomes.len()
    );
    println!(
        "dashboard_expressions_return_data_from_a_real_scrape: {} expressions ok, {:.1}s",
        outcomes.len(),
        started.elapsed().as_secs_f64()
    );
}
