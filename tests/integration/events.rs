//! Kernel close events through the real binary (issue 9): sessions shorter than a poll, closes
//! counted exactly once whoever sees them first, unrelated closes never counted, lifetimes that
//! survive a restart. The destroy notifications need no privileges, so this is first-tier.
//!
//! Each test listens on 127.0.97.x addresses of its own (or `::1` on a port from the kernel) and
//! names that listener as its target, so no other test's connections can reach its counts.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::harness::{config_file, Sidecar};

/// A venue that accepts a session, holds it `hold`, then closes it: with FIN, or with RST
/// (`SO_LINGER` 0) when `reset`. The gateway side sees the close and closes its end.
fn session(l: &TcpListener, hold: Duration, reset: bool) -> std::thread::JoinHandle<()> {
    let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (server, _) = l.accept().unwrap();
    std::thread::spawn(move || {
        let mut client = client;
        let _ = client.write_all(b"8=FIX.4.4|35=A|");
        std::thread::sleep(hold);
        if reset {
            socket2::SockRef::from(&server)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
        drop(server);
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 64];
        while let Ok(n) = client.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    })
}

/// `n` sessions to `l`, one every `every`, each held `hold`, alternately FIN and RST.
fn storm(l: &TcpListener, n: usize, every: Duration, hold: Duration) {
    let start = Instant::now();
    let mut sessions = Vec::new();
    for i in 0..n {
        let due = start + every * i as u32;
        if let Some(w) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(w);
        }
        sessions.push(session(l, hold, i % 2 == 1));
    }
    for s in sessions {
        s.join().unwrap();
    }
}

fn target(name: &str, l: &TcpListener) -> String {
    let a = l.local_addr().unwrap();
    format!(
        "[[targets]]\nname = \"{name}\"\naddress = \"{}\"\nport = {}\n",
        a.ip(),
        a.port()
    )
}

/// The connection counts of `name`: (opened, closed, short-lived, histogram count, active).
fn counts(s: &Sidecar, name: &str) -> (f64, f64, f64, f64, f64) {
    let m = s.metrics();
    let t = [("target", name)];
    (
        m.get("fix_connections_total", &t).unwrap_or(-1.0),
        // Summed over `by` (who hung up).
        m.sum("fix_connections_closed_total", &t),
        m.get("fix_connections_short_lived_total", &t)
            .unwrap_or(-1.0),
        // No histogram series until a first lifetime is recorded.
        m.get("fix_connection_duration_seconds_count", &t)
            .unwrap_or(0.0),
        m.get("fix_connections_active", &t).unwrap_or(-1.0),
    )
}

fn wait_counts(s: &Sidecar, name: &str, made: f64) -> (f64, f64, f64, f64, f64) {
    s.wait_for(
        &format!("{name}: {made} opened and closed"),
        Duration::from_secs(20),
        |s| {
            let c = counts(s, name);
            c.0 >= made && c.1 >= made
        },
    );
    // Nothing more comes (a double count would show up now).
    s.wait_polls(2);
    counts(s, name)
}

#[test]
fn a_storm_of_sessions_shorter_than_a_poll_is_counted_exactly() {
    let v4 = TcpListener::bind("127.0.97.1:0").unwrap();
    let v6 = TcpListener::bind("[::1]:0").unwrap();
    let fast = TcpListener::bind("127.0.97.2:0").unwrap();
    // Unrelated: the same address on another port, another address.
    let other_port = TcpListener::bind("127.0.97.1:0").unwrap();
    let other_addr = TcpListener::bind("127.0.97.3:0").unwrap();
    let cfg = config_file(&format!(
        "{}{}{}[poll]\nsource = \"netlink\"\ninterval = \"1s\"\n",
        target("v4", &v4),
        target("v6", &v6),
        target("fast", &fast)
    ));
    let s = Sidecar::start(&["--config", cfg.path().to_str().unwrap()]);
    s.wait_polls(1);
    assert_eq!(
        s.json("/health")["events"]["mode"],
        "kernel_events",
        "{}",
        s.log()
    );

    let n = 40;
    std::thread::scope(|scope| {
        scope.spawn(|| {
            storm(
                &v4,
                n,
                Duration::from_millis(250),
                Duration::from_millis(150),
            )
        });
        scope.spawn(|| {
            storm(
                &v6,
                n,
                Duration::from_millis(250),
                Duration::from_millis(150),
            )
        });
        scope.spawn(|| {
            storm(
                &fast,
                n,
                Duration::from_millis(50),
                Duration::from_millis(20),
            )
        });
        scope.spawn(|| {
            storm(
                &other_port,
                n,
                Duration::from_millis(50),
                Duration::from_millis(20),
            );
            storm(
                &other_addr,
                n,
                Duration::from_millis(50),
                Duration::from_millis(20),
            );
        });
    });
    for name in ["v4", "v6", "fast"] {
        let (opened, closed, short, hist, active) = wait_counts(&s, name, n as f64);
        assert_eq!(
            (opened, closed, active),
            (n as f64, n as f64, 0.0),
            "{name}\n{}",
            s.log()
        );
        // A session a poll saw has a lifetime (to within the interval); the others are the
        // short-lived ones. Together: every session, once.
        assert_eq!(
            short + hist,
            n as f64,
            "{name}: short {short}, with a duration {hist}"
        );
        // At 150 ms (20 ms) per session and a 1 s poll, most are seen by no poll.
        assert!(short >= n as f64 / 2.0, "{name}: only {short} short-lived");
    }
    // The unrelated closes reached no target.
    let m = s.metrics();
    let all: f64 = ["v4", "v6", "fast"]
        .iter()
        .map(|t| m.get("fix_connections_total", &[("target", t)]).unwrap())
        .sum();
    assert_eq!(all, 3.0 * n as f64);
    assert_eq!(m.get("fix_monitor_events_lost_total", &[]), Some(0.0));
}

#[test]
fn fin_rst_and_a_close_wait_left_open_are_each_counted_once() {
    let l = TcpListener::bind("127.0.97.4:0").unwrap();
    let cfg = config_file(&format!(
        "{}[poll]\nsource = \"netlink\"\ninterval = \"1s\"\n",
        target("venue", &l)
    ));
    let s = Sidecar::start(&["--config", cfg.path().to_str().unwrap()]);
    s.wait_polls(1);
    let mut conns: Vec<(TcpStream, TcpStream)> = (0..3)
        .map(|_| {
            let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            (c, l.accept().unwrap().0)
        })
        .collect();
    s.wait_for("3 active", Duration::from_secs(10), |s| {
        counts(s, "venue").4 == 3.0
    });
    let (wait_c, wait_s) = conns.pop().unwrap();
    let (rst_c, rst_s) = conns.pop().unwrap();
    let (fin_c, fin_s) = conns.pop().unwrap();
    // FIN from our side; RST from the venue; the venue's FIN that we never answer (CLOSE_WAIT:
    // the socket lives on, its destroy event comes only when we close it, much later).
    drop(fin_c);
    drop(fin_s);
    socket2::SockRef::from(&rst_s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(rst_s);
    drop(wait_s);
    let (opened, closed, short, hist, active) = wait_counts(&s, "venue", 3.0);
    assert_eq!(
        (opened, closed, short, hist, active),
        (3.0, 3.0, 0.0, 3.0, 0.0),
        "{}",
        s.log()
    );
    // Netlink polling and destroy events cannot tell who hung up (FIN ours, RST, FIN theirs
    // here): every close is `by="unknown"`, and no other `by` series is made up.
    let by = s
        .metrics()
        .by("fix_connections_closed_total", &[("target", "venue")], "by");
    assert_eq!(
        by,
        [("unknown".to_string(), 3.0)].into(),
        "{}",
        s.metrics().text
    );
    drop(rst_c);
    drop(wait_c);
    s.wait_polls(2);
    assert_eq!(
        counts(&s, "venue"),
        (3.0, 3.0, 0.0, 3.0, 0.0),
        "{}",
        s.log()
    );
}

#[test]
fn a_restart_with_the_same_state_dir_keeps_lifetimes() {
    let l = TcpListener::bind("127.0.97.5:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(&format!(
        "{}[poll]\nsource = \"netlink\"\ninterval = \"1s\"\n",
        target("venue", &l)
    ));
    let args = [
        "--config",
        cfg.path().to_str().unwrap(),
        "--state-dir",
        dir.path().to_str().unwrap(),
    ];
    // One session older than the first start: its start is unknown, before and after.
    let old = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let _old_peer = l.accept().unwrap();
    let first = Sidecar::start(&args);
    first.wait_polls(1);
    let opened_at = Instant::now();
    let conns: Vec<(TcpStream, TcpStream)> = (0..3)
        .map(|_| {
            let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            (c, l.accept().unwrap().0)
        })
        .collect();
    first.wait_for("3 active", Duration::from_secs(10), |s| {
        counts(s, "venue").4 == 4.0
    });
    std::thread::sleep(Duration::from_secs(2));
    let (status, log) = first.terminate();
    assert!(status.success(), "{log}");

    let second = Sidecar::start(&args);
    second.wait_for("4 active", Duration::from_secs(10), |s| {
        counts(s, "venue").4 == 4.0
    });
    // /connections shows their true age, not the time since this start; the old one is still
    // of unknown start.
    let conns_json = second.json("/connections");
    let listed = conns_json["connections"].as_array().unwrap();
    assert_eq!(listed.len(), 4, "{conns_json}");
    let old_port = old.local_addr().unwrap().port();
    for c in listed {
        let is_old = c["local_port"].as_u64() == Some(u64::from(old_port));
        assert_eq!(c["preexisting"], is_old, "{c}");
        if !is_old {
            let age = c["duration_seconds"].as_f64().unwrap();
            assert!(age >= 2.0, "{c}");
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let truth = opened_at.elapsed().as_secs_f64();
    drop(conns);
    second.wait_for("3 closed", Duration::from_secs(10), |s| {
        counts(s, "venue").1 == 3.0
    });
    let m = second.metrics();
    let t = [("target", "venue")];
    let count = m.get("fix_connection_duration_seconds_count", &t).unwrap();
    let sum = m.get("fix_connection_duration_seconds_sum", &t).unwrap();
    assert_eq!(count, 3.0, "{}", second.log());
    // Each lifetime is exact to within one interval (a session is first seen by the next
    // poll), plus how late that poll may start on a busy machine (100 ms allowed: one CI run
    // saw each session 1.0004 s after it opened).
    assert!(
        (sum - 3.0 * truth).abs() <= 3.0 * 1.1,
        "sum {sum}, truth 3 x {truth}"
    );
}

#[test]
fn state_from_another_boot_or_a_corrupt_file_is_ignored_with_a_warning() {
    let l = TcpListener::bind("127.0.97.6:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(&format!(
        "{}[poll]\nsource = \"netlink\"\ninterval = \"1s\"\n",
        target("venue", &l)
    ));
    let args = [
        "--config",
        cfg.path().to_str().unwrap(),
        "--state-dir",
        dir.path().to_str().unwrap(),
    ];
    for (bytes, says) in [
        (&b"{ not json"[..], "does not parse"),
        (
            &br#"{"version":1,"boot_id":"00000000-0000-0000-0000-000000000000","host":"x","written_unix_ms":0,"sessions":[]}"#[..],
            "another",
        ),
    ] {
        std::fs::write(dir.path().join("sessions.json"), bytes).unwrap();
        let s = Sidecar::start(&args);
        s.wait_polls(1);
        let (status, log) = s.terminate();
        assert!(status.success(), "{log}");
        assert!(log.contains("state file ignored") && log.contains(says), "{log}");
    }
}

#[test]
fn a_state_dir_that_cannot_be_written_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let out = crate::harness::command()
        .args(["run", "--ip", "127.0.97.7", "--state-dir"])
        .arg(file.join("state"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("state.dir"), "{err}");
}
