//! Faults a host really has, made for real: a state directory that fills up or turns read-only
//! mid-run (a small tmpfs the test mounts and fills, then remounts read-only), a `kill -9`
//! that lands while the state file is being written, the wall clock stepped an hour forward
//! and back under the running binary (libfaketime, the monotonic clock left alone), and the
//! process's file-descriptor limit reached (`prlimit`, idle clients holding the endpoint). Each is
//! logged once per episode, counted, and loses nothing that can be kept: the sessions' starts
//! stay in memory and reach the file when it can be written again; a half-written file never
//! replaces a whole one; ages and lifetimes follow the monotonic clock.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::*;

/// A tmpfs of `size` the test mounts (and unmounts on drop).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        mount(&[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "fix-monitor-test",
            dir.path().to_str().unwrap(),
        ]);
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount(&self, how: &str) {
        mount(&[
            "-o",
            &format!("remount,{how}"),
            self.path().to_str().unwrap(),
        ]);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn mount(args: &[&str]) {
    let st = Command::new("mount")
        .args(args)
        .status()
        .expect("mount (util-linux) is required");
    assert!(st.success(), "mount {args:?} failed");
}

/// The sessions the state file lists, or `None` without a whole file.
fn sessions_in(file: &Path) -> Option<usize> {
    let bytes = std::fs::read(file).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some(v["sessions"].as_array()?.len())
}

/// Temporary state files in `dir` (a write in progress, or one a kill interrupted).
fn temporaries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(".sessions.json.tmp."))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn write_errors(sc: &Sidecar) -> f64 {
    sc.metrics()
        .get("fix_monitor_state_write_errors_total", &[])
        .unwrap_or(-1.0)
}

/// Writes zeros to `path` until the file system says it is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 4096];
    for _ in 0..100_000 {
        if let Err(e) = f.write_all(&chunk).and_then(|_| f.sync_all()) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            return;
        }
    }
    panic!("the tmpfs never filled");
}

#[test]
fn a_full_then_read_only_state_dir_is_retried_counted_and_loses_no_start() {
    let fs = Tmpfs::mount("256k");
    let state = fs.path().join("state");
    let file = state.join("sessions.json");
    let d = Downstream::listen("127.0.0.71:0");
    let sc = Sidecar::start(&[
        "--ip",
        "127.0.0.71",
        "--source",
        "netlink",
        "--interval",
        "200ms",
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    // Sessions opened after the start: their starts are known, and written.
    sc.wait_polls(1);
    let mut held: Vec<_> = (0..3)
        .map(|_| connect_from("127.0.0.1:0", d.addr))
        .collect();
    wait_until("the file lists 3", Duration::from_secs(15), || {
        sessions_in(&file) == Some(3)
    });
    assert_eq!(write_errors(&sc), 0.0, "the series starts at 0");

    // Full: two more sessions cannot be written; the last whole file stays.
    let filler = fs.path().join("filler");
    fill(&filler);
    held.extend((0..2).map(|_| connect_from("127.0.0.1:0", d.addr)));
    sc.wait_for("two failed writes", Duration::from_secs(20), |s| {
        write_errors(s) >= 2.0
    });
    assert_eq!(sessions_in(&file), Some(3), "the whole file kept");
    assert!(temporaries(&state).is_empty(), "no half-written file left");
    let warnings = |sc: &Sidecar| sc.log().matches("cannot write the state file").count();
    assert_eq!(warnings(&sc), 1, "one warning per episode:\n{}", sc.log());

    // Space again: the next save writes all five, and says so.
    std::fs::remove_file(&filler).unwrap();
    wait_until("the file lists 5", Duration::from_secs(15), || {
        sessions_in(&file) == Some(5)
    });
    sc.wait_for("the recovery said", Duration::from_secs(5), |s| {
        s.log().contains("the state file is written again")
    });

    // Read-only: a second episode, the same way.
    fs.remount("ro");
    let errors = write_errors(&sc);
    held.push(connect_from("127.0.0.1:0", d.addr));
    sc.wait_for(
        "a failed write on a read-only fs",
        Duration::from_secs(20),
        |s| write_errors(s) > errors,
    );
    assert_eq!(sessions_in(&file), Some(5));
    assert_eq!(warnings(&sc), 2, "{}", sc.log());
    fs.remount("rw");
    wait_until("the file lists 6", Duration::from_secs(15), || {
        sessions_in(&file) == Some(6)
    });
    let (status, log) = sc.terminate();
    assert!(status.success(), "{log}");
    assert_eq!(sessions_in(&file), Some(6), "{log}");
    drop(held);
}

#[test]
fn a_kill_9_while_the_state_file_is_written_leaves_the_last_whole_one() {
    const SESSIONS: usize = 1500;
    const ATTEMPTS: usize = 12;
    // On disk (the target directory), where a write and its fsync take a while.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let file = dir.path().join("sessions.json");
    let d = Downstream::listen("127.0.0.72:0");
    let args = [
        "--ip",
        "127.0.0.72",
        "--source",
        "netlink",
        "--interval",
        "200ms",
        "--state-dir",
        dir.path().to_str().unwrap(),
    ];
    // The sessions open after a first start: their starts are known, and so written.
    let first = Sidecar::start(&args);
    first.wait_polls(1);
    let held: Vec<_> = (0..SESSIONS)
        .map(|_| connect_from("127.0.0.1:0", d.addr))
        .collect();
    wait_until("the file lists them all", Duration::from_secs(20), || {
        sessions_in(&file) == Some(SESSIONS)
    });
    let (status, log) = first.terminate();
    assert!(status.success(), "{log}");
    let mut mid_write = 0;
    for attempt in 0..ATTEMPTS {
        let sc = Sidecar::start(&args);
        let log = sc.log();
        assert!(
            !log.contains("state file ignored"),
            "attempt {attempt}:\n{log}"
        );
        if attempt > 0 {
            assert!(temporaries(dir.path()).is_empty(), "removed at start");
        }
        // Each start writes the file once its first poll is in: kill it the moment a
        // temporary file shows (a write in progress), or after 10 s.
        let deadline = Instant::now() + Duration::from_secs(10);
        while temporaries(dir.path()).is_empty() && Instant::now() < deadline {
            std::hint::spin_loop();
        }
        // SAFETY: kill(2) on the child's pid.
        unsafe { libc::kill(sc.pid() as i32, libc::SIGKILL) };
        drop(sc);
        if !temporaries(dir.path()).is_empty() {
            mid_write += 1;
        }
        // The last whole file is there, listing all.
        assert_eq!(sessions_in(&file), Some(SESSIONS), "attempt {attempt}");
    }
    eprintln!("{mid_write} of {ATTEMPTS} kills landed while the file was being written");
    assert!(
        mid_write > 0,
        "no kill landed mid-write: the test proved nothing"
    );
    // A last start reads the whole file: every session restored, none counted as preexisting.
    let sc = Sidecar::start(&args);
    sc.wait_for("all restored", Duration::from_secs(20), |s| {
        let c = s.json("/connections");
        let listed = c["connections"].as_array().map_or(0, |l| {
            l.iter().filter(|c| c["preexisting"] == false).count()
        });
        listed == SESSIONS
    });
    assert!(temporaries(dir.path()).is_empty());
    let (status, log) = sc.terminate();
    assert!(status.success(), "{log}");
    drop(held);
}

/// Debian's `faketime`: a preloaded library that moves what the process reads as the wall
/// clock (here from a file it re-reads on every call), and leaves the monotonic clock alone.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// Every session's age in `/connections`, seconds.
fn ages(sc: &Sidecar) -> Vec<f64> {
    let c = sc.json("/connections");
    c["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["duration_seconds"].as_f64().unwrap())
        .collect()
}

#[test]
fn the_wall_clock_stepped_forward_and_back_leaves_ages_and_lifetimes_right() {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is required (Debian's faketime; scripts/fetch-tools.sh installs it)"
    );
    for (source, ip) in [("netlink", "127.0.0.74"), ("ebpf", "127.0.0.75")] {
        let spec = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(spec.path(), "+0").unwrap();
        let mut cmd = command();
        cmd.env("LD_PRELOAD", LIBFAKETIME)
            .env("FAKETIME_TIMESTAMP_FILE", spec.path())
            .env("FAKETIME_NO_CACHE", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        let sc = Sidecar::start_with(
            cmd,
            &["--ip", ip, "--source", source, "--interval", "200ms"],
        );
        sc.wait_polls(1);
        let l = std::net::TcpListener::bind(format!("{ip}:0")).unwrap();
        let opened = Instant::now();
        let conns: Vec<_> = (0..3)
            .map(|_| {
                let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
                (c, l.accept().unwrap().0)
            })
            .collect();
        sc.wait_for("3 active", Duration::from_secs(10), |s| ages(s).len() == 3);
        // An hour forward, then two back: the ages follow the real time throughout.
        for step in ["+3600", "-3600"] {
            std::fs::write(spec.path(), step).unwrap();
            std::thread::sleep(Duration::from_millis(1500));
            let truth = opened.elapsed().as_secs_f64();
            for age in ages(&sc) {
                assert!(
                    (age - truth).abs() < 0.5,
                    "{source}, wall clock {step} s: age {age}, truly {truth}"
                );
            }
            let h = sc.json("/health");
            assert_eq!(h["status"], "healthy", "{source}, {step}: {h:#}");
        }
        let truth = opened.elapsed().as_secs_f64();
        drop(conns);
        let t = [("target", ip)];
        sc.wait_for("3 closed", Duration::from_secs(10), |s| {
            s.metrics().sum("fix_connections_closed_total", &t) == 3.0
        });
        let m = sc.metrics();
        assert_eq!(
            m.get("fix_connection_duration_seconds_count", &t),
            Some(3.0)
        );
        let sum = m.get("fix_connection_duration_seconds_sum", &t).unwrap();
        assert!(
            (sum - 3.0 * truth).abs() < 3.0 * 0.5,
            "{source}: lifetimes sum {sum}, truly 3 x {truth}"
        );
        let (status, log) = sc.terminate();
        assert!(status.success(), "{log}");
        assert!(!log.contains("panicked"), "{log}");
    }
}

/// Sends `GET path` on a connection the endpoint already accepted; the body of the answer.
fn ask(stream: &mut std::net::TcpStream, path: &str) -> String {
    use std::io::{Read, Write};
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

#[test]
fn at_its_file_descriptor_limit_it_says_so_counts_and_loses_no_session() {
    const LIMIT: u64 = 64;
    let d = Downstream::listen("127.0.0.76:0");
    // `prlimit` execs the sidecar with the limit: the child's pid is the sidecar's.
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={LIMIT}:{LIMIT}")).arg(bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("FIX_MONITOR_") || k.starts_with("DOWNSTREAM_") || k.starts_with("OTEL_") {
            cmd.env_remove(k);
        }
    }
    let sc = Sidecar::start_with(
        cmd,
        &[
            "--ip",
            "127.0.0.76",
            "--source",
            "procfs",
            "--interval",
            "200ms",
        ],
    );
    sc.wait_polls(1);
    let _held: Vec<_> = (0..3)
        .map(|_| connect_from("127.0.0.1:0", d.addr))
        .collect();
    let t = [("target", "127.0.0.76")];
    sc.wait_for("3 active", Duration::from_secs(10), |s| {
        s.metrics().get("fix_connections_active", &t) == Some(3.0)
    });
    let m = sc.metrics();
    assert_eq!(m.get("process_max_fds", &[]), Some(LIMIT as f64));
    let open = m.get("process_open_fds", &[]).unwrap();
    assert!(open > 0.0 && open < LIMIT as f64, "{open}");

    // Twice the limit in idle connections to the endpoint: each one it accepts costs it a
    // file, until none is left for the endpoint nor for the poll's /proc/net/tcp.
    let mut clients: Vec<_> = (0..2 * LIMIT)
        .map(|_| std::net::TcpStream::connect(sc.addr).unwrap())
        .collect();
    // Asked on a connection accepted before the limit (the first ones are).
    let mut health = serde_json::Value::Null;
    for client in clients.iter_mut().take(5) {
        std::thread::sleep(Duration::from_millis(600));
        health = serde_json::from_str(&ask(client, "/health")).unwrap();
        if health["status"] == "unhealthy" {
            break;
        }
    }
    assert_eq!(health["status"], "unhealthy", "{health:#}");
    assert!(
        health["last_error"]
            .as_str()
            .unwrap()
            .contains("Too many open files"),
        "{health:#}"
    );
    // Room again: everything recovers by itself, and no session was lost or counted closed.
    clients.clear();
    sc.wait_for("healthy again", Duration::from_secs(20), |s| {
        s.json("/health")["status"] == "healthy"
    });
    let m = sc.metrics();
    assert_eq!(m.get("fix_connections_active", &t), Some(3.0));
    assert_eq!(m.sum("fix_connections_closed_total", &t), 0.0);
    assert!(
        m.get("fix_monitor_poll_errors_total", &[("source", "procfs")])
            .unwrap()
            >= 1.0
    );
    assert!(
        m.get("fix_monitor_endpoint_accept_errors_total", &[])
            .unwrap()
            >= 1.0
    );
    let log = sc.log();
    assert!(
        log.contains("endpoint: accepting a connection failed"),
        "{log}"
    );
    assert!(log.contains("Too many open files"), "{log}");
    let (status, log) = sc.terminate();
    assert!(status.success(), "{log}");
}
