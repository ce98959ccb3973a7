//! `/metrics` as Prometheus's own checker sees it: `promtool check metrics` accepts the text a
//! sidecar serves while it watches real connections (opened, held, some closed). Needs promtool.

use std::time::Duration;

use crate::harness::*;

#[test]
fn metrics_pass_promtool_check_metrics() {
    let d = Downstream::listen("127.0.0.2:0");
    let cfg = config_file(&format!(
        "[[targets]]\nname = \"venue-a\"\naddress = \"127.0.0.2\"\nport = {}\n",
        d.addr.port()
    ));
    let keep = connect_from("127.0.0.1:0", d.addr);
    let sc = Sidecar::start(&[
        "--config",
        cfg.path().to_str().unwrap(),
        "--interval",
        "100ms",
    ]);
    sc.wait_for("the first poll", Duration::from_secs(10), |s| {
        s.metrics()
            .get("fix_connections_active", &[("target", "venue-a")])
            == Some(1.0)
    });
    // Opened while watched, so its lifetime is known and goes into the histogram.
    let closing = connect_from("127.0.0.1:0", d.addr);
    sc.wait_for("two active", Duration::from_secs(10), |s| {
        s.metrics()
            .get("fix_connections_active", &[("target", "venue-a")])
            == Some(2.0)
    });
    drop(closing);
    sc.wait_for("a close", Duration::from_secs(10), |s| {
        s.metrics()
            .sum("fix_connections_closed_total", &[("target", "venue-a")])
            == 1.0
    });
    let m = sc.metrics();
    assert!(
        m.text.contains("fix_connection_duration_seconds_bucket"),
        "{}",
        m.text
    );
    promtool_check_metrics(&m.text);
    drop(keep);
    let (status, log) = sc.terminate();
    assert!(status.success(), "exit {status:?}\n{log}");
}
