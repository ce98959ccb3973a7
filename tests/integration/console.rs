//! `watch` and `snapshot` as a person and a script use them: `watch` through a pipe (the
//! terminal view is in tests/system/terminal.rs), `snapshot` as a table and as JSON, all against connections the test
//! opens and closes itself.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::*;

fn hms_secs(s: &str) -> u64 {
    let p: Vec<u64> = s.split(':').map(|x| x.parse().unwrap()).collect();
    p[0] * 3600 + p[1] * 60 + p[2]
}

/// `watch` with its output piped, reading it line by line; killed on drop.
struct Piped {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    raw: Arc<Mutex<String>>,
    /// The thread reading stdout: done once the child's stdout is closed.
    reader: Option<thread::JoinHandle<()>>,
}

impl Piped {
    fn start(args: &[&str], cwd: &Path) -> Piped {
        let mut child = command()
            .args(args)
            .current_dir(cwd)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let raw = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().unwrap();
        let reader = {
            let (lines, raw) = (lines.clone(), raw.clone());
            thread::spawn(move || {
                for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                    raw.lock().unwrap().push_str(&l);
                    lines.lock().unwrap().push(l);
                }
            })
        };
        Piped {
            child,
            lines,
            raw,
            reader: Some(reader),
        }
    }

    fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    fn wait_for(&self, what: &str, f: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f(&self.lines.lock().unwrap()) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; output:\n{}",
                self.text()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM; waits (bounded) for the exit and the last output.
    fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // Its last lines: the reader ends when the closed pipe is drained.
                if let Some(reader) = self.reader.take() {
                    join_within("the end of the output", Duration::from_secs(5), reader);
                }
                return st;
            }
            assert!(Instant::now() < deadline, "no exit:\n{}", self.text());
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Piped {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Through a pipe: a line per open and close, a summary per interval, no escape codes; SIGTERM
/// writes the report under the original's file name in the current directory.
#[test]
fn watch_through_a_pipe_prints_lines_and_writes_the_report_in_the_current_directory() {
    let a = Downstream::listen("127.0.0.2:0");
    let b = Downstream::listen("127.0.0.3:0");
    let ports = PortRange::reserve(100);
    let cfg = two_targets(a.addr, b.addr, (ports.first, ports.last));
    let dir = tempfile::tempdir().unwrap();
    let aa = a.addr.to_string();
    let (pre_local, c_local) = (ports.local(0), ports.local(1));
    let _pre = connect_from(&pre_local, a.addr);
    let mut w = Piped::start(
        &[
            "watch",
            "--config",
            cfg.path().to_str().unwrap(),
            "--interval",
            "200ms",
        ],
        dir.path(),
    );
    w.wait_for("the already open connection", |l| {
        l.iter()
            .any(|l| l.ends_with(&format!("] already open venue-a {pre_local} -> {aa}")))
    });
    let first = w.lines.lock().unwrap()[0].clone();
    assert!(first.contains("fix-monitor watch: host "), "{first}");
    assert!(first.contains(&format!("venue-a ({aa})")), "{first}");

    let c = connect_from(&c_local, a.addr);
    w.wait_for("the open", |l| {
        l.iter()
            .any(|l| l.ends_with(&format!("] opened venue-a {c_local} -> {aa}")))
    });
    // A deliberate hold, not a wait: the session lives a known time, checked below.
    thread::sleep(Duration::from_millis(1200));
    drop(c);
    let closed = format!("] closed venue-a {c_local} -> {aa} after ");
    w.wait_for("the close", |l| l.iter().any(|l| l.contains(&closed)));
    let text = w.text();
    let lasted = text
        .lines()
        .find_map(|l| l.split_once(&closed))
        // The lifetime, then the cause where it was judged already (`, cause unknown (...)`).
        .map(|(_, rest)| hms_secs(rest.split(',').next().unwrap()))
        .unwrap();
    // Held 1.2 s after it was seen; accurate to a poll interval, slack for a busy machine.
    assert!((1..=4).contains(&lasted), "{text}");
    let summary = "] summary venue-a active=1 opened=2 closed=1 peak=2; venue-b active=0 opened=0 closed=0 peak=0";
    w.wait_for("two summaries after the close", |l| {
        l.iter().filter(|l| l.ends_with(summary)).count() >= 2
    });

    let st = w.terminate();
    let text = w.text();
    assert!(st.success(), "{st:?}\n{text}");
    assert!(
        !w.raw.lock().unwrap().contains('\x1b'),
        "escape codes:\n{text}"
    );
    let written: PathBuf = text
        .lines()
        .find_map(|l| l.strip_prefix("report written to "))
        .unwrap_or_else(|| panic!("no report line:\n{text}"))
        .into();
    let name = written.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with("fix_connections_")
            && name.ends_with(".json")
            && name.len() == "fix_connections_20240101_120000.json".len(),
        "{name}"
    );
    assert_eq!(
        written.parent().unwrap().canonicalize().unwrap(),
        dir.path().canonicalize().unwrap()
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&written).unwrap()).unwrap();
    assert_eq!(r["stats"]["total_connections"], 2, "{r:#}");
    assert_eq!(r["stats"]["closed_connections"], 1, "{r:#}");
    assert_eq!(r["stats"]["peak_connections"], 2, "{r:#}");
    assert_eq!(r["recent_disconnected"][0]["local_addr"], c_local, "{r:#}");
    assert!(text.contains("total connections: 2"), "{text}");
    assert!(text.contains("peak connections: 2"), "{text}");
}

#[test]
fn watch_with_no_report_writes_none() {
    let a = Downstream::listen("127.0.0.2:0");
    let b = Downstream::listen("127.0.0.3:0");
    let ports = PortRange::reserve(50);
    let cfg = two_targets(a.addr, b.addr, (ports.first, ports.last));
    let dir = tempfile::tempdir().unwrap();
    let mut w = Piped::start(
        &[
            "watch",
            "--config",
            cfg.path().to_str().unwrap(),
            "--interval",
            "200ms",
            "--no-report",
        ],
        dir.path(),
    );
    w.wait_for("a summary", |l| {
        l.iter().any(|l| l.contains("] summary venue-a"))
    });
    let st = w.terminate();
    let text = w.text();
    assert!(st.success(), "{text}");
    assert!(text.contains("total connections: 0"), "{text}");
    assert!(!text.contains("report written"), "{text}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// `snapshot`: exactly the matching connections, as a table and as JSON.
#[test]
fn snapshot_prints_exactly_the_matching_connections() {
    let x = Downstream::listen("127.0.0.2:0");
    let y = Downstream::listen("[::1]:0");
    let unrelated = Downstream::listen("127.0.0.3:0");
    // 100 local ports for venue-x's `local_ports`, and the one after them (outside it).
    let ports = PortRange::reserve(101);
    let cfg = config_file(&format!(
        r#"
[[targets]]
name = "venue-x"
address = "127.0.0.2"
port = {}
local_ports = [{}, {}]

[[targets]]
name = "venue-y"
address = "::1"
port = {}
"#,
        x.addr.port(),
        ports.port(0),
        ports.port(99),
        y.addr.port()
    ));
    let held: Vec<(TcpStream, &str)> = vec![
        (connect_from(&ports.local(0), x.addr), "venue-x"),
        (connect_from(&ports.local(1), x.addr), "venue-x"),
        (connect_from("[::1]:0", y.addr), "venue-y"),
        (connect_from("[::1]:0", y.addr), "venue-y"),
    ];
    let _outside_range = connect_from(&ports.local(100), x.addr);
    let _unrelated = connect_from(&ports.local(2), unrelated.addr);
    let expected: BTreeSet<(String, String, String, String)> = held
        .iter()
        .map(|(s, t)| {
            (
                t.to_string(),
                s.local_addr().unwrap().to_string(),
                s.peer_addr().unwrap().to_string(),
                "ESTABLISHED".to_owned(),
            )
        })
        .collect();

    let out = command()
        .args(["snapshot", "--config", cfg.path().to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}{}", read_all(&out.stderr[..]));
    let (conns, counts) = text.split_once("\n\n").expect(&text);
    let mut lines = conns.lines();
    assert_eq!(
        lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
        [
            "TARGET", "LOCAL", "REMOTE", "STATE", "RTT", "SILENCE", "RETRANS", "SEND-Q", "PID",
            "COMMAND"
        ]
    );
    let listed: BTreeSet<(String, String, String, String)> = lines
        .map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(c.len(), 10, "{l}");
            // No process without poll.process_lookup: a dash, not a guess.
            assert_eq!((c[8], c[9]), ("-", "-"), "{l}");
            // The health columns, from the kernel's tcp_info (netlink): an RTT, a silence,
            // no retransmits and an empty send queue on these idle loopback sessions.
            assert!(c[4].ends_with("us") || c[4].ends_with("ms"), "{l}");
            assert!(c[5].ends_with('s'), "{l}");
            assert_eq!((c[6], c[7]), ("0", "0"), "{l}");
            (c[0].into(), c[1].into(), c[2].into(), c[3].into())
        })
        .collect();
    assert_eq!(listed, expected, "{text}");
    let count = |name: &str| {
        counts
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .and_then(|l| l.split_whitespace().last())
            .map(|n| n.to_owned())
    };
    assert_eq!(count("venue-x").as_deref(), Some("2"), "{text}");
    assert_eq!(count("venue-y").as_deref(), Some("2"), "{text}");
    assert_eq!(count("total").as_deref(), Some("4"), "{text}");

    let out = command()
        .args([
            "snapshot",
            "--config",
            cfg.path().to_str().unwrap(),
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["total"], 4, "{v:#}");
    let listed: BTreeSet<(String, String, String, String)> = v["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["target"].as_str().unwrap().into(),
                c["local_addr"].as_str().unwrap().into(),
                c["remote_addr"].as_str().unwrap().into(),
                c["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(listed, expected, "{v:#}");
    assert_eq!(v["targets"][0]["name"], "venue-x");
    assert_eq!(v["targets"][0]["active"], 2);
    assert_eq!(
        v["targets"][0]["local_ports"],
        format!("{}-{}", ports.port(0), ports.port(99))
    );
    assert_eq!(v["targets"][1]["active"], 2);

    // With poll.process_lookup: this test process holds all four, so the table names it.
    let out = command()
        .args(["snapshot", "--config", cfg.path().to_str().unwrap()])
        .env("FIX_MONITOR_POLL__PROCESS_LOOKUP", "true")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}{}", read_all(&out.stderr[..]));
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", std::process::id())).unwrap();
    let (conns, _) = text.split_once("\n\n").expect(&text);
    let owners: Vec<(String, String)> = conns
        .lines()
        .skip(1)
        .map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            (c[8].to_string(), c[9].to_string())
        })
        .collect();
    let me = (std::process::id().to_string(), comm.trim_end().to_string());
    assert_eq!(owners, vec![me; 4], "{text}");
}

/// Through a pipe, issue 10's stale sessions: a line when a silent session turns stale (after
/// twice the heartbeat) and one when it recovers, with its silence, as the log has them.
#[test]
fn watch_through_a_pipe_prints_a_line_when_a_session_turns_stale_and_when_it_recovers() {
    use std::io::Write;
    let l = std::net::TcpListener::bind("127.0.0.48:0").unwrap();
    let at = l.local_addr().unwrap();
    let cfg = config_file(&format!(
        "[[targets]]\nname = \"venue-s\"\naddress = \"127.0.0.48\"\nport = {}\nheartbeat = \"1s\"\n",
        at.port()
    ));
    let dir = tempfile::tempdir().unwrap();
    let quiet = connect_from("127.0.0.1:0", at);
    let quiet_since = Instant::now();
    let (mut peer, _) = l.accept().unwrap();
    let local = quiet.local_addr().unwrap();
    let mut w = Piped::start(
        &[
            "watch",
            "--config",
            cfg.path().to_str().unwrap(),
            "--interval",
            "200ms",
            "--source",
            "netlink",
            "--no-report",
        ],
        dir.path(),
    );
    let stale = format!("] stale venue-s {local} -> {at}: nothing received for ");
    w.wait_for("the stale line", |l| l.iter().any(|l| l.contains(&stale)));
    let text = w.text();
    let silence: f64 = text
        .lines()
        .find_map(|l| l.split_once(&stale))
        .and_then(|(_, s)| s.strip_suffix('s'))
        .unwrap()
        .parse()
        .unwrap();
    // Stale strictly after 2 s of silence, and seen within a poll (plus slack for a busy host).
    assert!(silence > 2.0 && silence < 3.5, "{text}");
    assert!(!text.contains("] recovered venue-s"), "{text}");

    peer.write_all(b"0").unwrap();
    let truth = quiet_since.elapsed().as_secs_f64();
    let recovered = format!("] recovered venue-s {local} -> {at} after ");
    w.wait_for("the recovered line", |l| {
        l.iter().any(|l| l.contains(&recovered))
    });
    let text = w.text();
    let lasted: f64 = text
        .lines()
        .find_map(|l| l.split_once(&recovered))
        .and_then(|(_, s)| s.strip_suffix("s of silence"))
        .unwrap()
        .parse()
        .unwrap();
    // From the connect to the byte, by the kernel's clock (ms), judged at polls 200 ms apart.
    assert!((lasted - truth).abs() <= 0.3, "{lasted} vs {truth}\n{text}");
    assert_eq!(text.matches("] stale venue-s").count(), 1, "{text}");
    assert_eq!(text.matches("] recovered venue-s").count(), 1, "{text}");
    assert!(w.terminate().success(), "{}", w.text());
    drop(quiet);
}
