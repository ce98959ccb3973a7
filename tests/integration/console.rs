//! `watch` and `snapshot` as a person and a script use them: `watch` in a real terminal (tmux)
//! and through a pipe, `snapshot` as a table and as JSON, all against connections the test
//! opens and closes itself.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::*;

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
        let mut cmd = format!("env -i PATH=\"$PATH\" TERM=xterm-256color {}", quote(BIN));
        for a in args {
            cmd.push(' ');
            cmd.push_str(&quote(a));
        }
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

/// The whitespace-separated cells of the first line that starts with `name` and mentions
/// `addr`.
pub fn row(screen: &str, name: &str, addr: &str) -> Option<Vec<String>> {
    screen
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")) && l.contains(addr))
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
}

/// The counts of a target row: the cells from `skip` on, as numbers.
pub fn counts(screen: &str, name: &str, addr: &str, skip: usize) -> Option<Vec<u64>> {
    row(screen, name, addr)?
        .iter()
        .skip(skip)
        .map(|c| c.parse().ok())
        .collect()
}

fn two_targets(a: SocketAddr, b: SocketAddr, range: (u16, u16)) -> tempfile::NamedTempFile {
    config_file(&format!(
        r#"
[[targets]]
name = "venue-a"
address = "{}"
port = {}
local_ports = [{}, {}]

[[targets]]
name = "venue-b"
address = "{}"
port = {}
"#,
        a.ip(),
        a.port(),
        range.0,
        range.1,
        b.ip(),
        b.port()
    ))
}

/// The live view in a real terminal: the connection already open, then opens and a close the
/// test makes, with counts, addresses, ages and event lines; Ctrl+C writes the report (checked
/// against what the test did) and prints the totals.
#[test]
fn watch_in_a_terminal_shows_the_connections_and_ctrl_c_writes_the_report() {
    let a = Downstream::listen("127.0.0.2:0");
    let b = Downstream::listen("127.0.0.3:0");
    let cfg = two_targets(a.addr, b.addr, (23000, 23099));
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let (aa, ba) = (a.addr.to_string(), b.addr.to_string());

    let _pre = connect_from("127.0.0.1:23000", a.addr);
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
    let pre_row = row(&s, "venue-a", "127.0.0.1:23000").expect(&s);
    assert_eq!(pre_row[2], aa, "{s}");
    assert!(
        pre_row[3].ends_with('*'),
        "already open: a lower bound\n{s}"
    );
    assert_eq!(counts(&s, "venue-b", &ba, 3), Some(vec![0, 0, 0, 0]), "{s}");

    let a1 = connect_from("127.0.0.1:23001", a.addr);
    let held_from = Instant::now();
    let _a2 = connect_from("127.0.0.1:23002", a.addr);
    let b1 = connect_from("127.0.0.1:0", b.addr);
    let b1_local = b1.local_addr().unwrap().to_string();
    let s = tmux.wait_for("three opens", Duration::from_secs(20), |s| {
        s.contains(&format!("] opened venue-a 127.0.0.1:23001 -> {aa}"))
            && s.contains(&format!("] opened venue-a 127.0.0.1:23002 -> {aa}"))
            && s.contains(&format!("] opened venue-b {b1_local} -> {ba}"))
            && counts(s, "venue-a", &aa, 3) == Some(vec![3, 3, 0, 3])
            && counts(s, "venue-b", &ba, 3) == Some(vec![1, 1, 0, 1])
    });
    assert!(s.contains("ACTIVE CONNECTIONS (4)"), "{s}");
    for local in ["127.0.0.1:23001", "127.0.0.1:23002", &b1_local] {
        let r = row(
            &s,
            if local == b1_local {
                "venue-b"
            } else {
                "venue-a"
            },
            local,
        )
        .unwrap_or_else(|| panic!("{local} not listed:\n{s}"));
        assert!(is_hms(&r[3]), "age {:?}\n{s}", r[3]);
    }

    thread::sleep(Duration::from_millis(1500));
    drop(a1);
    let held = held_from.elapsed();
    let s = tmux.wait_for("the close", Duration::from_secs(20), |s| {
        s.contains(&format!(
            "] closed venue-a 127.0.0.1:23001 -> {aa} after 00:00:0"
        )) && counts(s, "venue-a", &aa, 3) == Some(vec![2, 3, 1, 3])
    });
    assert!(s.contains("RECENTLY CLOSED (last 1 of 1)"), "{s}");
    let closed_section = s.split("RECENTLY CLOSED").nth(1).unwrap();
    assert!(closed_section.contains("127.0.0.1:23001"), "{s}");

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
        ("127.0.0.1:23000".to_owned(), aa.clone(), true),
        ("127.0.0.1:23002".to_owned(), aa.clone(), false),
        (b1_local.clone(), ba.clone(), false),
    ]
    .into();
    assert_eq!(active, expected);
    let gone = r["recent_disconnected"].as_array().unwrap();
    assert_eq!(gone.len(), 1, "{r:#}");
    assert_eq!(gone[0]["local_addr"], "127.0.0.1:23001");
    assert_eq!(gone[0]["target"], "venue-a");
    let lasted = gone[0]["duration_seconds"].as_f64().unwrap();
    let held = held.as_secs_f64();
    // Accurate to a poll interval (200ms) either way; some slack for a busy machine.
    assert!(
        lasted > held - 0.5 && lasted < held + 1.0,
        "lasted {lasted}, held {held}"
    );
}

fn hms_secs(s: &str) -> u64 {
    let p: Vec<u64> = s.split(':').map(|x| x.parse().unwrap()).collect();
    p[0] * 3600 + p[1] * 60 + p[2]
}

fn is_hms(s: &str) -> bool {
    let p: Vec<&str> = s.trim_end_matches('*').split(':').collect();
    p.len() == 3 && p.iter().all(|x| x.len() == 2 && x.parse::<u8>().is_ok())
}

/// `watch` with its output piped, reading it line by line; killed on drop.
struct Piped {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    raw: Arc<Mutex<String>>,
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
        {
            let (lines, raw) = (lines.clone(), raw.clone());
            thread::spawn(move || {
                for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                    raw.lock().unwrap().push_str(&l);
                    lines.lock().unwrap().push(l);
                }
            });
        }
        Piped { child, lines, raw }
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
                thread::sleep(Duration::from_millis(200));
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
    let cfg = two_targets(a.addr, b.addr, (23100, 23199));
    let dir = tempfile::tempdir().unwrap();
    let aa = a.addr.to_string();
    let _pre = connect_from("127.0.0.1:23100", a.addr);
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
            .any(|l| l.ends_with(&format!("] already open venue-a 127.0.0.1:23100 -> {aa}")))
    });
    let first = w.lines.lock().unwrap()[0].clone();
    assert!(first.contains("fix-monitor watch: host "), "{first}");
    assert!(first.contains(&format!("venue-a ({aa})")), "{first}");

    let c = connect_from("127.0.0.1:23101", a.addr);
    w.wait_for("the open", |l| {
        l.iter()
            .any(|l| l.ends_with(&format!("] opened venue-a 127.0.0.1:23101 -> {aa}")))
    });
    thread::sleep(Duration::from_millis(1200));
    drop(c);
    let closed = format!("] closed venue-a 127.0.0.1:23101 -> {aa} after ");
    w.wait_for("the close", |l| l.iter().any(|l| l.contains(&closed)));
    let text = w.text();
    let lasted = text
        .lines()
        .find_map(|l| l.split_once(&closed))
        .map(|(_, hms)| hms_secs(hms))
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
    assert_eq!(
        r["recent_disconnected"][0]["local_addr"], "127.0.0.1:23101",
        "{r:#}"
    );
    assert!(text.contains("total connections: 2"), "{text}");
    assert!(text.contains("peak connections: 2"), "{text}");
}

#[test]
fn watch_with_no_report_writes_none() {
    let a = Downstream::listen("127.0.0.2:0");
    let b = Downstream::listen("127.0.0.3:0");
    let cfg = two_targets(a.addr, b.addr, (23150, 23199));
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
    let cfg = config_file(&format!(
        r#"
[[targets]]
name = "venue-x"
address = "127.0.0.2"
port = {}
local_ports = [23200, 23299]

[[targets]]
name = "venue-y"
address = "::1"
port = {}
"#,
        x.addr.port(),
        y.addr.port()
    ));
    let held: Vec<(TcpStream, &str)> = vec![
        (connect_from("127.0.0.1:23200", x.addr), "venue-x"),
        (connect_from("127.0.0.1:23201", x.addr), "venue-x"),
        (connect_from("[::1]:0", y.addr), "venue-y"),
        (connect_from("[::1]:0", y.addr), "venue-y"),
    ];
    let _outside_range = connect_from("127.0.0.1:23300", x.addr);
    let _unrelated = connect_from("127.0.0.1:23202", unrelated.addr);
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
        ["TARGET", "LOCAL", "REMOTE", "STATE"]
    );
    let listed: BTreeSet<(String, String, String, String)> = lines
        .map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(c.len(), 4, "{l}");
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
    assert_eq!(v["targets"][0]["local_ports"], "23200-23299");
    assert_eq!(v["targets"][1]["active"], 2);
}
