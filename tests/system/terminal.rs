//! `watch` and `demo` in a real terminal (tmux): the live view drawn in place, Ctrl+C ending it
//! cleanly with the report and the totals. Needs tmux (scripts/fetch-tools.sh installs it).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::*;

const VENUES: [&str; 3] = ["venue-a", "venue-b", "venue-c"];

/// A detached tmux session on its own server (`tmux -L`), running one command in a 200x50
/// terminal; the whole server is killed on drop. The command runs with an empty environment
/// (no FIX_MONITOR_* or OTEL_* from the developer's shell) and, when it exits, the pane shows
/// `EXIT=<status>` and stays.
pub struct Tmux {
    socket: String,
    /// The server's socket file, removed on drop (tmux leaves it behind).
    path: Option<PathBuf>,
}

impl Tmux {
    pub fn start(args: &[&str], cwd: &Path) -> Tmux {
        static N: AtomicU32 = AtomicU32::new(0);
        let socket = format!(
            "fix-monitor-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut cmd = format!("env -i PATH=\"$PATH\" TERM=xterm-256color {}", quote(bin()));
        for a in args {
            cmd.push(' ');
            cmd.push_str(&quote(a));
        }
        // A deliberate hold: the shell outlives the command so that the pane (and EXIT=) stays
        // readable; the tmux server, and the sleep with it, is killed on drop.
        cmd.push_str("; echo EXIT=$?; sleep 600");
        let mut tmux = Tmux { socket, path: None };
        let out = tmux
            .command()
            .args([
                "new-session",
                "-d",
                "-s",
                "main",
                "-x",
                "200",
                "-y",
                "50",
                "-c",
            ])
            .arg(cwd)
            .arg(cmd)
            .output()
            .expect("tmux is required (scripts/fetch-tools.sh installs it)");
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = tmux
            .command()
            .args(["display-message", "-p", "#{socket_path}"])
            .output()
            .unwrap();
        tmux.path = Some(String::from_utf8_lossy(&path.stdout).trim().into());
        tmux
    }

    fn command(&self) -> Command {
        let mut c = Command::new("tmux");
        // Our own server and no user configuration, even when the tests run inside tmux.
        c.env_remove("TMUX")
            .args(["-L", &self.socket, "-f", "/dev/null"]);
        c
    }

    /// What the terminal shows now.
    pub fn screen(&self) -> String {
        let out = self
            .command()
            .args(["capture-pane", "-p", "-t", "main"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Everything the terminal printed, its scrollback included (a long final report scrolls
    /// its first lines off the screen).
    pub fn history(&self) -> String {
        let out = self
            .command()
            .args(["capture-pane", "-p", "-S", "-", "-t", "main"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn send_keys(&self, keys: &str) {
        let st = self
            .command()
            .args(["send-keys", "-t", "main", keys])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Waits (bounded) until the screen satisfies `f`; returns that screen.
    pub fn wait_for(&self, what: &str, timeout: Duration, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.screen();
            if f(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the screen:\n{s}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self
            .command()
            .arg("kill-server")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The live view in a real terminal: the connection already open, then opens and a close the
/// test makes, with counts, addresses, ages and event lines; Ctrl+C writes the report (checked
/// against what the test did) and prints the totals.
#[test]
fn watch_in_a_terminal_shows_the_connections_and_ctrl_c_writes_the_report() {
    let a = Downstream::listen("127.0.0.2:0");
    let b = Downstream::listen("127.0.0.3:0");
    let ports = PortRange::reserve(100);
    let cfg = two_targets(a.addr, b.addr, (ports.first, ports.last));
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let (aa, ba) = (a.addr.to_string(), b.addr.to_string());
    let (pre_local, a1_local, a2_local) = (ports.local(0), ports.local(1), ports.local(2));

    let _pre = connect_from(&pre_local, a.addr);
    let tmux = Tmux::start(
        &[
            "watch",
            "--config",
            cfg.path().to_str().unwrap(),
            "--interval",
            "200ms",
            "--report",
            report.to_str().unwrap(),
        ],
        dir.path(),
    );
    let s = tmux.wait_for("the first poll", Duration::from_secs(20), |s| {
        s.contains("1 connection was already open when watching began")
            && counts(s, "venue-a", &aa, 3) == Some(vec![1, 1, 0, 1])
    });
    let first = s.lines().next().unwrap();
    assert!(
        first.starts_with("fix-monitor watch | host ") && first.contains(" | every 200ms | "),
        "{s}"
    );
    assert!(s.contains("ACTIVE CONNECTIONS (1)"), "{s}");
    let pre_row = row(&s, "venue-a", &pre_local).expect(&s);
    assert_eq!(pre_row[2], aa, "{s}");
    assert!(
        pre_row[3].ends_with('*'),
        "already open: a lower bound\n{s}"
    );
    assert_eq!(counts(&s, "venue-b", &ba, 3), Some(vec![0, 0, 0, 0]), "{s}");

    let a1 = connect_from(&a1_local, a.addr);
    let held_from = Instant::now();
    let _a2 = connect_from(&a2_local, a.addr);
    let b1 = connect_from("127.0.0.1:0", b.addr);
    let b1_local = b1.local_addr().unwrap().to_string();
    let s = tmux.wait_for("three opens", Duration::from_secs(20), |s| {
        s.contains(&format!("] opened venue-a {a1_local} -> {aa}"))
            && s.contains(&format!("] opened venue-a {a2_local} -> {aa}"))
            && s.contains(&format!("] opened venue-b {b1_local} -> {ba}"))
            && counts(s, "venue-a", &aa, 3) == Some(vec![3, 3, 0, 3])
            && counts(s, "venue-b", &ba, 3) == Some(vec![1, 1, 0, 1])
    });
    assert!(s.contains("ACTIVE CONNECTIONS (4)"), "{s}");
    for local in [&a1_local, &a2_local, &b1_local] {
        let r = row(
            &s,
            if *local == b1_local {
                "venue-b"
            } else {
                "venue-a"
            },
            local,
        )
        .unwrap_or_else(|| panic!("{local} not listed:\n{s}"));
        assert!(is_hms(&r[3]), "age {:?}\n{s}", r[3]);
    }

    // A deliberate hold, not a wait: a1 lives a known time, compared with the report below.
    thread::sleep(Duration::from_millis(1500));
    drop(a1);
    let held = held_from.elapsed();
    let s = tmux.wait_for("the close", Duration::from_secs(20), |s| {
        s.contains(&format!(
            "] closed venue-a {a1_local} -> {aa} after 00:00:0"
        )) && counts(s, "venue-a", &aa, 3) == Some(vec![2, 3, 1, 3])
    });
    assert!(s.contains("RECENTLY CLOSED (last 1 of 1)"), "{s}");
    let closed_section = s.split("RECENTLY CLOSED").nth(1).unwrap();
    assert!(closed_section.contains(&a1_local), "{s}");
    // Why it ended: judged at once (no FIX layer), with no evidence under polling.
    let s = tmux.wait_for("the close's cause", Duration::from_secs(20), |s| {
        s.split("RECENTLY CLOSED")
            .nth(1)
            .and_then(|c| c.lines().find(|l| l.contains(&a1_local)))
            .is_some_and(|l| l.split_whitespace().nth(6) == Some("unknown"))
    });
    assert!(s.contains(" CAUSE "), "{s}");

    tmux.send_keys("C-c");
    let s = tmux.wait_for("the exit", Duration::from_secs(20), |s| s.contains("EXIT="));
    assert!(s.contains("EXIT=0"), "{s}");
    assert!(
        s.contains(&format!("report written to {}", report.display())),
        "{s}"
    );
    assert_eq!(counts(&s, "venue-a", &aa, 2), Some(vec![3, 1, 2, 3]), "{s}");
    assert_eq!(counts(&s, "venue-b", &ba, 2), Some(vec![1, 0, 1, 1]), "{s}");
    assert!(s.contains("total connections: 4"), "{s}");
    assert!(s.contains("SESSION ENDS BY CAUSE"), "{s}");
    let ends = |words: &[&str]| {
        s.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == words)
    };
    assert!(ends(&["venue-a", "1", "unknown", "1"]), "{s}");
    assert!(ends(&["venue-b", "0", "-"]), "{s}");
    assert!(s.contains("peak connections: 4"), "{s}");

    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(
        r["stats"],
        serde_json::json!({"total_connections": 4, "current_connections": 3,
            "closed_connections": 1, "peak_connections": 4}),
        "{r:#}"
    );
    assert!(r["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(!r["host"].as_str().unwrap().is_empty());
    let t = &r["targets"];
    assert_eq!(
        (
            &t[0]["name"],
            &t[0]["opened"],
            &t[0]["closed"],
            &t[0]["active"],
            &t[0]["peak"]
        ),
        (
            &"venue-a".into(),
            &3.into(),
            &1.into(),
            &2.into(),
            &3.into()
        ),
        "{r:#}"
    );
    assert_eq!((&t[1]["opened"], &t[1]["active"]), (&1.into(), &1.into()));
    assert_eq!(
        r["ends_by_cause"],
        serde_json::json!([
            {"target": "venue-a", "total": 1, "causes": {"unknown": 1}},
            {"target": "venue-b", "total": 0, "causes": {}},
        ]),
        "{r:#}"
    );
    let active: BTreeSet<(String, String, bool)> = r["active_connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["local_addr"].as_str().unwrap().to_owned(),
                c["remote_addr"].as_str().unwrap().to_owned(),
                c["preexisting"].as_bool().unwrap(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String, bool)> = [
        (pre_local.clone(), aa.clone(), true),
        (a2_local.clone(), aa.clone(), false),
        (b1_local.clone(), ba.clone(), false),
    ]
    .into();
    assert_eq!(active, expected);
    let gone = r["recent_disconnected"].as_array().unwrap();
    assert_eq!(gone.len(), 1, "{r:#}");
    assert_eq!(gone[0]["local_addr"], a1_local);
    assert_eq!(gone[0]["target"], "venue-a");
    let lasted = gone[0]["duration_seconds"].as_f64().unwrap();
    let held = held.as_secs_f64();
    // Accurate to a poll interval (200ms) either way; some slack for a busy machine.
    assert!(
        lasted > held - 0.5 && lasted < held + 1.0,
        "lasted {lasted}, held {held}"
    );
}

/// In a terminal: the same live view as `watch`, with the endpoint's URL; Ctrl+C ends it with
/// every session closed and counted.
#[test]
fn demo_in_a_terminal_shows_the_view_and_ends_cleanly_at_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let tmux = Tmux::start(
        &[
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--interval",
            "250ms",
            "--duration",
            "120",
        ],
        dir.path(),
    );
    let s = tmux.wait_for(
        "sessions opening and closing",
        Duration::from_secs(30),
        |s| s.contains("] opened venue-") && s.contains("] closed venue-"),
    );
    assert!(
        s.lines()
            .next()
            .unwrap()
            .starts_with("fix-monitor demo | host "),
        "{s}"
    );
    let url = s
        .lines()
        .find_map(|l| l.strip_prefix("metrics: http://"))
        .and_then(|r| r.split("/metrics").next())
        .unwrap_or_else(|| panic!("no URL:\n{s}"));
    let addr: SocketAddr = url.parse().unwrap();
    let (code, body) = http_get(addr, "/health");
    assert_eq!(code, 200, "{body}");
    for v in VENUES {
        let c = counts(&s, v, "127.0.0.", 3).unwrap_or_else(|| panic!("{v}:\n{s}"));
        assert_eq!(c.len(), 4, "{s}");
    }
    assert!(s.contains("ACTIVE CONNECTIONS ("), "{s}");
    assert!(s.contains("RECENTLY CLOSED ("), "{s}");

    // The FIX sessions panel: the demo's sessions log on with HeartBtInt 1 s, and an order
    // answered shows its latency; each row's numbers are the panel's unit test's business, the
    // totals are checked against the simulator at the end (below).
    let s = tmux.wait_for(
        "a logged-on FIX session with an answered order",
        Duration::from_secs(30),
        |s| {
            s.contains("FIX SESSIONS (")
                && s.lines().any(|l| {
                    let c: Vec<&str> = l.split_whitespace().collect();
                    // SESSION TARGET logged on HB SILENCE SEQ-IN SEQ-OUT GAPS REJECTS P50 ...
                    c.len() >= 13
                        && c[0].starts_with("GWA")
                        && c[1] == "venue-a"
                        && c[2..4] == ["logged", "on"]
                        && c[4] == "1s"
                        && c[10].ends_with('s')
                        && c[10] != "-"
                })
        },
    );
    assert!(
        s.lines()
            .any(|l| l.starts_with("SESSION ") && l.contains("ACK P50")),
        "{s}"
    );

    tmux.send_keys("C-c");
    tmux.wait_for("the exit", Duration::from_secs(20), |s| s.contains("EXIT="));
    let s = tmux.history();
    assert!(s.contains("EXIT=0"), "{s}");
    assert!(s.contains("demo ended on request"), "{s}");
    assert!(
        s.contains("fix-monitor counted every session the gateway opened and closed"),
        "{s}"
    );
    assert!(
        s.contains("fix-monitor's FIX counts equal the simulator's"),
        "{s}"
    );
    for v in VENUES {
        let c = counts(&s, v, "127.0.0.", 2).unwrap_or_else(|| panic!("{v}:\n{s}"));
        assert_eq!(c[2], 0, "{v}: nothing left open\n{s}");
        assert_eq!(c[0], c[1], "{v}: every open closed\n{s}");
    }
}

fn is_hms(s: &str) -> bool {
    let p: Vec<&str> = s.trim_end_matches('*').split(':').collect();
    p.len() == 3 && p.iter().all(|x| x.len() == 2 && x.parse::<u8>().is_ok())
}
