//! A reader that goes away (`fix-monitor snapshot --format json | head -c 300`) ends a command
//! quietly with exit 0, as it ends `ss` or `cat`; `print!` used to panic with "failed printing
//! to stdout: Broken pipe".
//!
//! Each command's stdout is a pipe whose read end is closed before the command starts, so its
//! first write fails every time (a reader closing "early" could lose the race to a short
//! output that fits in the pipe's buffer, and prove nothing).

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// The write end of a pipe nobody reads.
fn closed_pipe() -> Stdio {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe(2)");
    // SAFETY: pipe(2) just returned these two descriptors, owned by nothing else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    Stdio::from(write)
}

fn run_into_closed_pipe(args: &[&str]) -> Output {
    let mut child = command()
        .args(args)
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running fix-monitor");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{args:?} still running 30 s after its stdout was closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn assert_quiet_success(args: &[&str]) {
    let o = run_into_closed_pipe(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{args:?}: stderr:\n{err}");
    assert!(err.is_empty(), "{args:?} wrote to stderr:\n{err}");
}

#[test]
fn snapshot_config_and_generate_end_quietly_when_stdout_is_closed() {
    assert_quiet_success(&["snapshot", "--ip", "127.0.0.1", "--format", "json"]);
    assert_quiet_success(&["snapshot", "--ip", "127.0.0.1"]);
    assert_quiet_success(&["config", "--ip", "127.0.0.1"]);
    assert_quiet_success(&["generate", "man"]);
    assert_quiet_success(&["generate", "completions", "bash"]);
}

#[test]
fn watch_and_demo_stop_when_their_reader_goes_away() {
    // Piped, `watch` prints a start line at once: its failure ends watching as Ctrl+C would.
    assert_quiet_success(&["watch", "--ip", "127.0.0.1", "--no-report"]);
    // The demo winds down as after Ctrl+C (its sessions log out and close), long before the
    // 10 minutes it was asked to run. Its own log may say what its simulated venues do while
    // it winds down (venue-c goes silent on purpose: a "stale" warning under load), so only
    // the pipe's failure must leave no trace.
    let args = [
        "demo",
        "--duration",
        "600",
        "--listen",
        "127.0.0.1:0",
        "--fix-source",
        "log",
    ];
    let o = run_into_closed_pipe(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{args:?}: stderr:\n{err}");
    for trace in ["panicked", "Broken pipe", "failed printing", "cannot write"] {
        assert!(!err.contains(trace), "{args:?} wrote {trace:?}:\n{err}");
    }
}
