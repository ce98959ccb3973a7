//! OTLP/gRPC push against a real receiver (`otlp_receiver`): what fix-monitor actually sent,
//! decoded, checked against the connections the test made and against its own `/metrics`;
//! delta temporality; the final export on SIGTERM; a hung collector; an outage. The sidecars
//! are pinned to netlink: the closes they expect are `by = "unknown"`, what polling sees (in
//! eBPF mode, which `auto` takes as root, a close says who hung up).

use std::time::{Duration, Instant};

use fix_monitor::instruments::{names, DURATION_BUCKETS};

use crate::harness::*;
use crate::otlp_receiver::*;

const WAIT: Duration = Duration::from_secs(15);

/// `(active, opened, closed)` of `target` in the latest points the receiver got.
fn pushed(rx: &Receiver, target: &str) -> (Option<f64>, Option<f64>, Option<f64>) {
    let v = |m: &str| rx.latest(m, target).map(|p| p.value);
    // Polling: every close is `by="unknown"` (the only `by` series; checked below).
    let closed = rx
        .latest_with(names::CLOSED, &[("target", target), ("by", "unknown")])
        .map(|p| p.value);
    (v(names::ACTIVE), v(names::OPENED), closed)
}

/// The same three from a scrape of `/metrics`.
fn scraped(m: &Metrics, target: &str) -> (Option<f64>, Option<f64>, Option<f64>) {
    let l = [("target", target)];
    (
        m.get("fix_connections_active", &l),
        m.get("fix_connections_total", &l),
        m.get(
            "fix_connections_closed_total",
            &[("target", target), ("by", "unknown")],
        ),
    )
}

fn truth(active: usize, opened: usize, closed: usize) -> (Option<f64>, Option<f64>, Option<f64>) {
    (
        Some(active as f64),
        Some(opened as f64),
        Some(closed as f64),
    )
}

/// Two targets, connections opened before and while watched, one closed: every instrument
/// arrives with the right kind, attributes and values, the resource says who sent it, the
/// configured header rides along, and the numbers are the ones `/metrics` shows.
#[test]
fn grpc_push_carries_the_ground_truth_resource_and_headers() {
    let rx = Receiver::start();
    let a = Downstream::listen("127.0.0.50:0");
    let b = Downstream::listen("127.0.0.51:0");
    let ports = PortRange::reserve(100);
    let cfg = config_file(&format!(
        r#"
[[targets]]
name = "venue-a"
address = "127.0.0.50"
port = {pa}
local_ports = [{first}, {last}]

[[targets]]
name = "venue-b"
address = "127.0.0.51"
port = {pb}

[otlp]
endpoint = "{endpoint}"
interval = "300ms"
headers = {{ "X-Tenant" = "desk-1" }}
"#,
        pa = a.addr.port(),
        pb = b.addr.port(),
        endpoint = rx.endpoint(),
        first = ports.first,
        last = ports.last,
    ));
    let mut held_a = vec![
        connect_from(&ports.local(0), a.addr),
        connect_from(&ports.local(1), a.addr),
    ];
    // The standard variable is a lower layer: the file's x-tenant wins, its other header stays.
    let mut cmd = command();
    cmd.env("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=env,x-extra=env");
    let sc = Sidecar::start_with(
        cmd,
        &[
            "--config",
            cfg.path().to_str().unwrap(),
            "--source",
            "netlink",
            "--interval",
            "100ms",
        ],
    );
    rx.wait_for("the preexisting connections", WAIT, |r| {
        pushed(r, "venue-a") == truth(2, 2, 0)
    });

    held_a.push(connect_from(&ports.local(2), a.addr));
    let mut held_b: Vec<_> = (0..3)
        .map(|_| connect_from("127.0.0.1:0", b.addr))
        .collect();
    sc.wait_polls(2);
    drop(held_b.pop());
    rx.wait_for("opens and the close", WAIT, |r| {
        pushed(r, "venue-a") == truth(3, 3, 0) && pushed(r, "venue-b") == truth(2, 3, 1)
    });
    // Settled: one more export, then compare with a scrape of the same provider.
    let n = rx.count();
    rx.wait_for("another export", WAIT, |r| r.count() > n + 1);
    let m = sc.metrics();
    for t in ["venue-a", "venue-b"] {
        assert_eq!(
            pushed(&rx, t),
            scraped(&m, t),
            "{t}: push and pull disagree"
        );
    }

    let last = rx.received().pop().unwrap();
    let points = points(&last.request);
    let find = |metric: &str, target: &str| {
        points
            .iter()
            .find(|p| p.metric == metric && p.target() == Some(target))
            .unwrap_or_else(|| panic!("no {metric} for {target} in:\n{}", summary(&points)))
    };

    // Who sent it.
    let host = sc.json("/health")["hostname"].as_str().unwrap().to_string();
    let resource = &points[0].resource;
    assert_eq!(resource["service.name"], "fix-monitor");
    assert_eq!(resource["host.name"], host);
    assert!(!resource["service.instance.id"].is_empty(), "{resource:?}");
    assert_eq!(resource["service.version"], env!("CARGO_PKG_VERSION"));
    assert!(points.iter().all(|p| p.resource == *resource));
    // The headers, lower-cased as HTTP/2 requires; the file's value over the variable's.
    assert_eq!(
        last.metadata.get("x-tenant").map(String::as_str),
        Some("desk-1")
    );
    assert_eq!(
        last.metadata.get("x-extra").map(String::as_str),
        Some("env")
    );
    assert_eq!(last.transport, "grpc");

    // Kinds, temporality, attributes.
    let cumulative_counter = Kind::Sum {
        monotonic: true,
        temporality: CUMULATIVE,
    };
    for t in ["venue-a", "venue-b"] {
        assert_eq!(find(names::ACTIVE, t).kind, Kind::Gauge);
        assert_eq!(find(names::PEAK, t).kind, Kind::Gauge);
        assert_eq!(find(names::OPENED, t).kind, cumulative_counter);
        assert_eq!(find(names::CLOSED, t).kind, cumulative_counter);
        assert_eq!(find(names::OPENED, t).attrs.len(), 1, "only `target`");
        // Who hung up rides along as `by`; polling only ever knows `unknown`.
        let closed: Vec<_> = points
            .iter()
            .filter(|p| p.metric == names::CLOSED && p.target() == Some(t))
            .map(|p| p.attrs.clone())
            .collect();
        assert_eq!(
            closed,
            [std::collections::BTreeMap::from(
                [("by", "unknown"), ("target", t)].map(|(k, v)| (k.to_string(), v.to_string()))
            )],
            "{t}"
        );
    }
    assert_eq!(find(names::PEAK, "venue-b").value, 3.0);
    let duration = find(names::DURATION, "venue-b");
    assert_eq!(
        duration.kind,
        Kind::Histogram {
            temporality: CUMULATIVE
        }
    );
    assert_eq!(duration.unit, "s");
    assert_eq!(duration.count, 1, "one connection closed while watched");
    assert_eq!(duration.bounds, DURATION_BUCKETS);
    assert_eq!(duration.bucket_counts.iter().sum::<u64>(), 1);
    // No lifetime recorded for venue-a, so no histogram series for it (as on /metrics).
    assert!(!points
        .iter()
        .any(|p| p.metric == names::DURATION && p.target() == Some("venue-a")));
    let mut by_port: Vec<(String, f64)> = points
        .iter()
        .filter(|p| p.metric == names::BY_PORT)
        .map(|p| {
            assert_eq!(p.target(), Some("venue-a"));
            (p.attrs["port"].clone(), p.value)
        })
        .collect();
    by_port.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        by_port,
        [
            (ports.port(0).to_string(), 1.0),
            (ports.port(1).to_string(), 1.0),
            (ports.port(2).to_string(), 1.0)
        ]
    );
    // One series per exporter: the metrics' and (`[otlp] logs`, on by default) the logs'.
    let errors: std::collections::BTreeMap<_, _> = points
        .iter()
        .filter(|p| p.metric == names::EXPORT_ERRORS)
        .map(|p| (p.attrs["exporter"].as_str(), p.value))
        .collect();
    assert_eq!(
        errors,
        std::collections::BTreeMap::from([("otlp", 0.0), ("otlp_logs", 0.0)])
    );
    assert_eq!(
        m.get("fix_monitor_export_errors_total", &[("exporter", "otlp")]),
        Some(0.0)
    );
    let polls = points
        .iter()
        .find(|p| p.metric == names::POLL_DURATION)
        .expect("poll duration");
    assert!(polls.count >= 5, "{polls:?}");

    let (status, log) = sc.terminate();
    assert!(status.success(), "{log}");
    assert!(!log.contains("OTLP export failed"), "{log}");
    drop((a, b, held_a, held_b));
}

/// Delta temporality, configured through the standard variables alone (endpoint, interval,
/// temporality, headers): each export carries the changes since the one before, so the
/// points add up to the totals, which `/metrics` (always cumulative) shows at the same time.
#[test]
fn delta_temporality_from_the_standard_variables_sends_changes_that_add_up() {
    let rx = Receiver::start();
    let d = Downstream::listen("127.0.0.52:0");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint()),
        (
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
            "delta".to_string(),
        ),
        ("OTEL_METRIC_EXPORT_INTERVAL", "250".to_string()),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "x-desk=fx%20options".to_string(),
        ),
    ];
    let args = [
        "--ip",
        "127.0.0.52",
        "--source",
        "netlink",
        "--interval",
        "100ms",
    ];

    // `fix-monitor config` says where each value came from.
    let mut cmd = command();
    cmd.arg("config").args(args).envs(env.iter().cloned());
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let otlp = &text[text.find("[otlp]").expect("an [otlp] section")..];
    for (setting, origin) in [
        ("enabled = true", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ("interval = \"250ms\"", "OTEL_METRIC_EXPORT_INTERVAL"),
        (
            "temporality = \"delta\"",
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
        ),
        ("\"x-desk\" = \"fx options\"", "OTEL_EXPORTER_OTLP_HEADERS"),
    ] {
        let line = otlp.lines().find(|l| l.starts_with(setting));
        assert!(
            line.is_some_and(|l| l.ends_with(&format!("# from env {origin}"))),
            "no `{setting}  # from env {origin}` in:\n{text}"
        );
    }

    let mut cmd = command();
    cmd.envs(env.iter().cloned());
    let sc = Sidecar::start_with(cmd, &args);
    let total = |metric: &str| -> f64 {
        rx.points()
            .iter()
            .filter(|p| p.metric == metric && p.target() == Some("127.0.0.52"))
            .map(|p| {
                assert_eq!(
                    p.kind,
                    Kind::Sum {
                        monotonic: true,
                        temporality: DELTA
                    },
                    "{p:?}"
                );
                p.value
            })
            .sum()
    };

    // Opened while watched, so that the one closed has a lifetime.
    sc.wait_polls(1);
    let mut held = vec![
        connect_from("127.0.0.1:0", d.addr),
        connect_from("127.0.0.1:0", d.addr),
    ];
    rx.wait_for("two opens", WAIT, |_| total(names::OPENED) == 2.0);
    held.push(connect_from("127.0.0.1:0", d.addr));
    sc.wait_polls(2);
    drop(held.remove(0));
    rx.wait_for("three opens and a close", WAIT, |_| {
        total(names::OPENED) == 3.0 && total(names::CLOSED) == 1.0
    });
    // Quiet exports add nothing: no double counting.
    let n = rx.count();
    rx.wait_for("three more exports", WAIT, |r| r.count() >= n + 3);
    assert_eq!(total(names::OPENED), 3.0);
    assert_eq!(total(names::CLOSED), 1.0);
    // Gauges stay absolute; histograms are delta too.
    assert_eq!(rx.latest(names::ACTIVE, "127.0.0.52").unwrap().value, 2.0);
    let hist: u64 = rx
        .points()
        .iter()
        .filter(|p| p.metric == names::DURATION && p.target() == Some("127.0.0.52"))
        .map(|p| {
            assert_eq!(p.kind, Kind::Histogram { temporality: DELTA });
            p.count
        })
        .sum();
    assert_eq!(hist, 1, "one lifetime, reported once");
    let m = sc.metrics();
    assert_eq!(scraped(&m, "127.0.0.52"), truth(2, 3, 1));
    let last = rx.received().pop().unwrap();
    assert_eq!(
        last.metadata.get("x-desk").map(String::as_str),
        Some("fx options")
    );
    drop((sc, held, d));
}

/// With an export interval of an hour nothing is pushed while running; SIGTERM stops polling,
/// flushes, and the receiver has the final values before the process exits.
#[test]
fn sigterm_delivers_the_final_values_despite_a_long_interval() {
    let rx = Receiver::start();
    let d = Downstream::listen("127.0.0.53:0");
    let cfg = config_file(&format!(
        "[[targets]]\nname = \"venue\"\naddress = \"127.0.0.53\"\n\
         [otlp]\nendpoint = \"{}\"\ninterval = \"1h\"\n",
        rx.endpoint()
    ));
    let mut held: Vec<_> = (0..3)
        .map(|_| connect_from("127.0.0.1:0", d.addr))
        .collect();
    let sc = Sidecar::start(&[
        "--config",
        cfg.path().to_str().unwrap(),
        "--source",
        "netlink",
        "--interval",
        "100ms",
    ]);
    held.push(connect_from("127.0.0.1:0", d.addr));
    held.push(connect_from("127.0.0.1:0", d.addr));
    sc.wait_polls(2);
    drop(held.remove(0));
    sc.wait_for("the close", WAIT, |s| {
        scraped(&s.metrics(), "venue") == truth(4, 5, 1)
    });
    assert_eq!(rx.count(), 0, "nothing is exported before the hour is up");

    let began = Instant::now();
    let (status, log) = sc.terminate();
    let took = began.elapsed();
    assert!(status.success(), "{log}");
    assert!(took < Duration::from_secs(5), "exit took {took:?}\n{log}");
    assert_eq!(pushed(&rx, "venue"), truth(4, 5, 1), "{log}");
    assert!(log.contains("final OTLP export delivered"), "{log}");
    // Polling stopped before the final export.
    let stop = log.find("stopping the poll loop").unwrap();
    let flush = log.find("flushing metrics").unwrap();
    assert!(stop < flush, "{log}");
    drop((held, d));
}

/// A collector that accepts connections and never answers: the final export gives up within
/// the grace period instead of holding the exit.
#[test]
fn a_hung_collector_does_not_hold_up_the_exit() {
    // Accepts and holds every connection, reading nothing: a collector that hangs.
    let hung = Downstream::listen("127.0.0.1:0");
    let d = Downstream::listen("127.0.0.55:0");
    let cfg = config_file(&format!(
        "[[targets]]\naddress = \"127.0.0.55\"\n\
         [otlp]\nendpoint = \"http://{}\"\ninterval = \"1h\"\ntimeout = \"1s\"\n",
        hung.addr
    ));
    let sc = Sidecar::start(&[
        "--config",
        cfg.path().to_str().unwrap(),
        "--source",
        "netlink",
    ]);
    let _c = connect_from("127.0.0.1:0", d.addr);
    sc.wait_polls(1);
    let began = Instant::now();
    let (status, log) = sc.terminate();
    let took = began.elapsed();
    assert!(status.success(), "{log}");
    // Grace: 5 s, or the export timeout plus a second if longer.
    assert!(took < Duration::from_secs(8), "exit took {took:?}\n{log}");
    assert!(
        log.contains("final OTLP export failed")
            || log.contains("did not finish within the grace period"),
        "{log}"
    );
    drop((hung, d));
}

/// The collector goes away while connections change, and comes back on the same port:
/// polling goes on, failed exports are counted (and retried every interval), exactly one
/// warning is logged for the outage and one note for the recovery, the SDK's own per-attempt
/// logs stay quiet, and the first export after the return carries the right totals. A
/// collector that refuses (gRPC UNAVAILABLE) is a second outage, reported the same way.
#[test]
fn an_outage_is_logged_once_counted_and_the_totals_are_right_after_recovery() {
    let rx = Receiver::start();
    let d = Downstream::listen("127.0.0.54:0");
    let cfg = config_file(&format!(
        "[[targets]]\nname = \"venue\"\naddress = \"127.0.0.54\"\n\
         [otlp]\nendpoint = \"{}\"\ninterval = \"200ms\"\ntimeout = \"500ms\"\n",
        rx.endpoint()
    ));
    let sc = Sidecar::start(&[
        "--config",
        cfg.path().to_str().unwrap(),
        "--source",
        "netlink",
        "--interval",
        "100ms",
    ]);
    let mut held = vec![
        connect_from("127.0.0.1:0", d.addr),
        connect_from("127.0.0.1:0", d.addr),
    ];
    rx.wait_for("two connections", WAIT, |r| {
        pushed(r, "venue") == truth(2, 2, 0)
    });

    // The collector goes away; the connections change meanwhile.
    let addr = rx.addr;
    drop(rx.stop());
    for _ in 0..3 {
        held.push(connect_from("127.0.0.1:0", d.addr));
    }
    sc.wait_polls(2);
    drop(held.remove(0));
    let errors = |s: &Sidecar| {
        s.metrics()
            .count("fix_monitor_export_errors_total", &[("exporter", "otlp")])
    };
    sc.wait_for("failed exports, polling on", WAIT, |s| {
        errors(s) >= 3.0 && scraped(&s.metrics(), "venue") == truth(4, 5, 1)
    });

    // It comes back on the same port: the totals are right at once.
    let rx = Receiver::start_on(addr);
    rx.wait_for("the totals after the outage", WAIT, |r| {
        pushed(r, "venue") == truth(4, 5, 1)
    });
    let first = rx.received().remove(0);
    let first_points = points(&first.request);
    let value = |metric: &str| {
        first_points
            .iter()
            .find(|p| p.metric == metric && p.target() == Some("venue"))
            .map(|p| p.value)
    };
    assert_eq!(
        (
            value(names::ACTIVE),
            value(names::OPENED),
            value(names::CLOSED)
        ),
        truth(4, 5, 1),
        "the first export after the outage"
    );
    // The failures are counted, and the count reaches the collector too.
    let failed = errors(&sc);
    assert!(failed >= 3.0);
    rx.wait_for("the error count", WAIT, |r| {
        r.latest_with(names::EXPORT_ERRORS, &[("exporter", "otlp")])
            .map(|p| p.value)
            == Some(failed)
    });
    sc.wait_for("the recovery note", WAIT, |s| {
        s.log().contains("OTLP export recovered")
    });
    let log = sc.log();
    assert_eq!(log.matches("OTLP export failed;").count(), 1, "{log}");
    assert_eq!(log.matches("OTLP export recovered").count(), 1, "{log}");
    assert!(log.contains("failed_exports="), "{log}");

    // A refusing collector is an outage too; the next success ends it.
    rx.refuse(Some(tonic::Code::Unavailable));
    sc.wait_for("a refused export", WAIT, |s| errors(s) > failed);
    held.push(connect_from("127.0.0.1:0", d.addr));
    rx.refuse(None);
    rx.wait_for("the totals after the refusals", WAIT, |r| {
        pushed(r, "venue") == truth(5, 6, 1)
    });
    sc.wait_for("the second recovery note", WAIT, |s| {
        s.log().matches("OTLP export recovered").count() == 2
    });

    let (status, log) = sc.terminate();
    assert!(status.success(), "{log}");
    assert_eq!(log.matches("OTLP export failed;").count(), 2, "{log}");
    // The SDK's and the exporter's own logs (one per failed attempt) are filtered out.
    for noisy in [
        "opentelemetry_sdk",
        "opentelemetry-otlp",
        "opentelemetry_otlp",
    ] {
        assert!(!log.contains(noisy), "{noisy} logged:\n{log}");
    }
    drop((held, d));
}

/// A collector that requires TLS with client certificates: with the CA and the client
/// certificate configured, exports arrive; without the client certificate the handshake fails,
/// which is an outage like any other (one warning, counted), never a crash.
#[test]
fn grpc_over_tls_with_a_client_certificate() {
    let pki = Pki::new();
    let rx = Receiver::start_tls(&pki);
    let d = Downstream::listen("127.0.0.56:0");
    let _c = connect_from("127.0.0.1:0", d.addr);
    let cfg = |client: bool| {
        let mut text = format!(
            "[[targets]]\nname = \"venue\"\naddress = \"127.0.0.56\"\n\
             [otlp]\nendpoint = \"{}\"\ninterval = \"200ms\"\ntimeout = \"1s\"\n\
             [otlp.tls]\nca_file = \"{}\"\n",
            rx.tls_endpoint(),
            pki.ca.display()
        );
        if client {
            text += &format!(
                "cert_file = \"{}\"\nkey_file = \"{}\"\n",
                pki.client_cert.display(),
                pki.client_key.display()
            );
        }
        config_file(&text)
    };

    let with_cert = cfg(true);
    let sc = Sidecar::start(&["--config", with_cert.path().to_str().unwrap()]);
    rx.wait_for("an export over TLS", WAIT, |r| {
        pushed(r, "venue") == truth(1, 1, 0)
    });
    let (status, log) = sc.terminate();
    assert!(status.success(), "{log}");
    assert!(!log.contains("OTLP export failed"), "{log}");

    let without = cfg(false);
    let n = rx.count();
    let sc = Sidecar::start(&["--config", without.path().to_str().unwrap()]);
    sc.wait_for("refused handshakes, counted", WAIT, |s| {
        s.metrics()
            .count("fix_monitor_export_errors_total", &[("exporter", "otlp")])
            >= 2.0
    });
    assert_eq!(
        rx.count(),
        n,
        "nothing gets through without a client certificate"
    );
    let log = sc.log();
    assert_eq!(log.matches("OTLP export failed;").count(), 1, "{log}");
    drop(d);
}

/// The collector's certificate expired: every handshake fails, which is an outage like any
/// other (one warning that says why, counted) while polling goes on; the collector back with a
/// renewed certificate on the same port gets the right totals at once.
#[test]
fn an_expired_collector_certificate_is_an_outage_until_it_is_renewed() {
    let pki = Pki::new();
    let (expired, expired_key) = pki.expired_server();
    let rx = Receiver::start_tls_on("127.0.0.1:0".parse().unwrap(), &pki, &expired, &expired_key);
    let d = Downstream::listen("127.0.0.57:0");
    let mut held = vec![connect_from("127.0.0.1:0", d.addr)];
    let cfg = config_file(&format!(
        "[[targets]]\nname = \"venue\"\naddress = \"127.0.0.57\"\n\
         [otlp]\nendpoint = \"{}\"\ninterval = \"200ms\"\ntimeout = \"1s\"\n\
         [otlp.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        rx.tls_endpoint(),
        pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    ));
    let sc = Sidecar::start(&[
        "--config",
        cfg.path().to_str().unwrap(),
        "--source",
        "netlink",
        "--interval",
        "100ms",
    ]);
    let errors = |s: &Sidecar| {
        s.metrics()
            .count("fix_monitor_export_errors_total", &[("exporter", "otlp")])
    };
    held.push(connect_from("127.0.0.1:0", d.addr));
    sc.wait_for("refused handshakes, polling on", WAIT, |s| {
        errors(s) >= 2.0 && scraped(&s.metrics(), "venue") == truth(2, 2, 0)
    });
    assert_eq!(rx.count(), 0, "nothing gets through an expired certificate");
    let log = sc.log();
    assert_eq!(log.matches("OTLP export failed;").count(), 1, "{log}");
    assert!(
        log.to_lowercase().contains("expired"),
        "the warning says why:\n{log}"
    );

    // Renewed: the same CA, a valid certificate, the same port.
    let addr = rx.addr;
    drop(rx.stop());
    let rx = Receiver::start_tls_on(addr, &pki, &pki.server_cert, &pki.server_key);
    rx.wait_for("the totals after the renewal", WAIT, |r| {
        pushed(r, "venue") == truth(2, 2, 0)
    });
    sc.wait_for("the recovery note", WAIT, |s| {
        s.log().contains("OTLP export recovered")
    });
    let (status, log) = sc.terminate();
    assert!(status.success(), "{log}");
    drop((held, d));
}
