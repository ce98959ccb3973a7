//! A source that fails mid-run: the failure is logged once, counted, shown in /health (503),
//! loses nothing, and polling recovers by itself.
//!
//! The failure is real: the sidecar runs in a private mount namespace (`unshare -m`) with the
//! procfs source, and the test hides its `/proc/PID/net` under an empty directory, so reading
//! `/proc/net/tcp` fails the way it would on a host where procfs went away; unmounting it heals.

use std::process::Command;
use std::time::Duration;

use crate::harness::*;

fn nsenter_mount(pid: u32, args: &[&str]) {
    let st = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m"])
        .args(args)
        .status()
        .expect("nsenter (util-linux) is required");
    assert!(st.success(), "nsenter {args:?} failed");
}

#[test]
fn a_failing_source_is_counted_reported_and_recovers_without_false_closes() {
    let d = Downstream::listen("127.0.0.7:0");
    let _held = [
        connect_from("127.0.0.1:0", d.addr),
        connect_from("127.0.0.1:0", d.addr),
    ];
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", bin()]);
    for (k, _) in std::env::vars() {
        if k.starts_with("FIX_MONITOR_") || k.starts_with("DOWNSTREAM_") || k.starts_with("OTEL_") {
            cmd.env_remove(k);
        }
    }
    let sc = Sidecar::start_with(
        cmd,
        &[
            "--ip",
            "127.0.0.7",
            "--source",
            "procfs",
            "--interval",
            "100ms",
        ],
    );
    sc.wait_for("2 active", Duration::from_secs(10), |s| {
        s.metrics().get("fix_connections_active", &[]) == Some(2.0)
    });

    // `unshare` execs the sidecar, so the child's pid is the sidecar's.
    let pid = sc.pid();
    let empty = tempfile::tempdir().unwrap();
    let net = format!("/proc/{pid}/net");
    nsenter_mount(
        pid,
        &["mount", "--bind", empty.path().to_str().unwrap(), &net],
    );
    // Unhealthy is a matter of time (no success for three intervals), so on a busy machine a
    // late poll can make it 503 after only two failures: wait for both.
    sc.wait_for(
        "unhealthy after 3 failed polls",
        Duration::from_secs(10),
        |s| {
            let h = s.json("/health");
            h["status"] == "unhealthy" && h["consecutive_failures"].as_u64() >= Some(3)
        },
    );
    let h = sc.json("/health");
    assert_eq!(h["status"], "unhealthy");
    assert!(h["consecutive_failures"].as_u64().unwrap() >= 3, "{h:#}");
    assert!(
        h["last_error"].as_str().unwrap().contains("/proc/net/tcp"),
        "{h:#}"
    );
    let m = sc.metrics();
    assert!(
        m.get("fix_monitor_poll_errors_total", &[("source", "procfs")])
            .unwrap()
            >= 3.0
    );
    // A failed poll is not a close.
    assert_eq!(m.get("fix_connections_active", &[]), Some(2.0));
    assert_eq!(
        m.by("fix_connections_closed_total", &[], "by"),
        [("unknown".to_string(), 0.0)].into()
    );

    nsenter_mount(pid, &["umount", &net]);
    sc.wait_for("healthy again", Duration::from_secs(10), |s| {
        s.get("/health").0 == 200
    });
    let m = sc.metrics();
    assert_eq!(m.get("fix_connections_active", &[]), Some(2.0));
    assert_eq!(m.get("fix_connections_total", &[]), Some(2.0));
    assert_eq!(
        m.by("fix_connections_closed_total", &[], "by"),
        [("unknown".to_string(), 0.0)].into()
    );

    let (st, log) = sc.terminate();
    assert!(st.success(), "{log}");
    assert_eq!(
        log.matches("poll failed").count(),
        1,
        "one warning per outage:\n{log}"
    );
    assert_eq!(log.matches("polling recovered").count(), 1, "{log}");
    drop(d);
}
