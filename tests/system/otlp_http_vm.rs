//! OTLP/HTTP (protobuf) push into a real VictoriaMetrics (`backends`), with Prometheus pull on
//! at the same time: what VictoriaMetrics stored equals the connections the test made, and
//! equals what `/metrics` shows. VictoriaMetrics runs with `-opentelemetry.usePrometheusNaming`,
//! so the names it gives the pushed series are the ones the scrape has.

use std::time::Duration;

use crate::backends::Backend;
use crate::harness::*;

const WAIT: Duration = Duration::from_secs(20);

/// The pushed value of `metric` for `target`, summed over its other labels (the closed
/// counter's `by`): `None` while VictoriaMetrics has no such series.
fn stored(vm: &Backend, metric: &str, target: &str) -> Option<f64> {
    vm.value(&format!("sum({metric}{{target=\"{target}\"}})"))
}

/// The same from a scrape: `None` without a series.
fn scraped(m: &Metrics, metric: &str, target: &str) -> Option<f64> {
    m.by(metric, &[("target", target)], "by")
        .into_values()
        .reduce(|a, b| a + b)
}

/// The series the test compares: per target, active / opened / closed, and the lifetime
/// histogram's count.
const SERIES: &[&str] = &[
    "fix_connections_active",
    "fix_connections_total",
    "fix_connections_closed_total",
    "fix_connection_duration_seconds_count",
];

/// Waits until VictoriaMetrics holds `want` (metric, target, value) for every entry.
fn wait_stored(vm: &Backend, what: &str, want: &[(&str, &str, f64)]) {
    vm.wait_for(what, WAIT, |vm| {
        vm.force_flush();
        for (metric, target, value) in want {
            let got = vm
                .try_query(&format!("{metric}{{target=\"{target}\"}}"))
                .map_err(|e| e.to_string())?;
            if got.len() != 1 || got[0].1 != *value {
                return Err(format!(
                    "{metric}{{target={target}}} = {got:?}, want {value}"
                ));
            }
        }
        Ok(())
    });
}

#[test]
fn http_push_into_victoria_metrics_equals_the_ground_truth_and_the_scrape() {
    let vm = Backend::victoria_metrics(None, &["-opentelemetry.usePrometheusNaming"]);
    let a = Downstream::listen("127.0.0.60:0");
    let b = Downstream::listen("127.0.0.61:0");
    let cfg = config_file(&format!(
        r#"
[[targets]]
name = "venue-a"
address = "127.0.0.60"
port = {pa}

[[targets]]
name = "venue-b"
address = "127.0.0.61"
port = {pb}

[otlp]
endpoint = "{vm}/opentelemetry"
protocol = "http/protobuf"
interval = "300ms"
"#,
        pa = a.addr.port(),
        pb = b.addr.port(),
        vm = vm.url(),
    ));
    let mut held_a = vec![
        connect_from("127.0.0.1:0", a.addr),
        connect_from("127.0.0.1:0", a.addr),
    ];
    let sc = Sidecar::start(&[
        "--config",
        cfg.path().to_str().unwrap(),
        // Netlink: the closes expected are `by = "unknown"` (eBPF mode says who hung up).
        "--source",
        "netlink",
        "--interval",
        "100ms",
    ]);
    sc.wait_polls(1);
    held_a.push(connect_from("127.0.0.1:0", a.addr));
    let mut held_b: Vec<_> = (0..3)
        .map(|_| connect_from("127.0.0.1:0", b.addr))
        .collect();
    sc.wait_polls(2);
    drop(held_b.pop());
    drop(held_a.remove(0)); // preexisting: closed, but no lifetime
    let truth = [
        ("fix_connections_active", "venue-a", 2.0),
        ("fix_connections_total", "venue-a", 3.0),
        ("fix_connections_closed_total", "venue-a", 1.0),
        ("fix_connections_active", "venue-b", 2.0),
        ("fix_connections_total", "venue-b", 3.0),
        ("fix_connections_closed_total", "venue-b", 1.0),
        ("fix_connection_duration_seconds_count", "venue-b", 1.0),
    ];
    sc.wait_for("the closes", WAIT, |s| {
        let m = s.metrics();
        truth
            .iter()
            .all(|(metric, t, v)| scraped(&m, metric, t) == Some(*v))
    });
    wait_stored(&vm, "the pushed ground truth", &truth);

    // Push and pull agree series by series (venue-a has no lifetime histogram in either: its
    // one close was of a connection open before the sidecar started).
    let m = sc.metrics();
    for t in ["venue-a", "venue-b"] {
        for metric in SERIES {
            assert_eq!(
                stored(&vm, metric, t),
                scraped(&m, metric, t),
                "{metric}{{target={t}}}"
            );
        }
    }
    // Who hung up travels as the `by` label: polling knows only `unknown`.
    for t in ["venue-a", "venue-b"] {
        let rows = vm.query(&format!(r#"fix_connections_closed_total{{target="{t}"}}"#));
        let by: Vec<_> = rows
            .iter()
            .map(|(l, v)| (l.get("by").cloned(), *v))
            .collect();
        assert_eq!(by, [(Some("unknown".to_string()), 1.0)], "{t}: {rows:?}");
    }
    // The resource travels as labels; the sidecar reported no export errors.
    let rows = vm.query(r#"fix_connections_active{target="venue-a"}"#);
    assert_eq!(
        rows[0].0.get("service_name").map(String::as_str),
        Some("fix-monitor"),
        "{rows:?}"
    );
    assert_eq!(
        m.get("fix_monitor_export_errors_total", &[("exporter", "otlp")]),
        Some(0.0)
    );
    let (status, log) = sc.terminate();
    assert!(status.success(), "{log}");
    assert!(!log.contains("OTLP export failed"), "{log}");
    drop((a, b, held_a, held_b));
}

/// The final export on SIGTERM goes through the HTTP client too (it runs on the runtime that
/// is shutting down): with an hour's interval, only that export can have put the values there.
#[test]
fn http_final_export_on_sigterm_reaches_victoria_metrics() {
    let vm = Backend::victoria_metrics(None, &["-opentelemetry.usePrometheusNaming"]);
    let d = Downstream::listen("127.0.0.62:0");
    let mut cmd = command();
    cmd.env("FIX_MONITOR_OTLP__INTERVAL", "1h");
    let sc = Sidecar::start_with(
        cmd,
        &[
            "--ip",
            "127.0.0.62",
            // Netlink: the closes expected are `by = "unknown"` (eBPF mode says who hung up).
            "--source",
            "netlink",
            "--interval",
            "100ms",
            "--otlp-protocol",
            "http/protobuf",
            "--otlp-endpoint",
            &format!("{}/opentelemetry", vm.url()),
        ],
    );
    let held: Vec<_> = (0..2)
        .map(|_| connect_from("127.0.0.1:0", d.addr))
        .collect();
    sc.wait_for("two connections", WAIT, |s| {
        scraped(&s.metrics(), "fix_connections_active", "127.0.0.62") == Some(2.0)
    });
    vm.force_flush();
    assert_eq!(
        vm.query("fix_connections_active").len(),
        0,
        "nothing pushed before the interval"
    );
    let (status, log) = sc.terminate();
    assert!(status.success(), "{log}");
    assert!(log.contains("final OTLP export delivered"), "{log}");
    wait_stored(
        &vm,
        "the final values",
        &[
            ("fix_connections_active", "127.0.0.62", 2.0),
            ("fix_connections_total", "127.0.0.62", 2.0),
        ],
    );
    drop((held, d));
}
