//! Who hung up, through the real binary in eBPF mode (root): `fix_connections_closed_total`'s
//! `by` label says `local` for a FIN we sent first, `remote` for the peer's FIN, `reset` for an
//! RST from either side, each against sessions the test made and closed itself.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use crate::harness::{command, Sidecar};

const CLOSED: &str = "fix_connections_closed_total";

/// One session to `l`: (our side, the venue's side).
fn session(l: &TcpListener) -> (TcpStream, TcpStream) {
    let ours = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let theirs = l.accept().unwrap().0;
    (ours, theirs)
}

fn linger_zero(s: &TcpStream) {
    socket2::SockRef::from(s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
}

#[test]
fn fin_ours_fin_theirs_and_resets_are_counted_by_who_hung_up() {
    // The venue listens on an address of its own: the sessions' venue-side sockets (whose
    // remote is 127.0.0.1) do not match the target.
    let l = TcpListener::bind("127.0.98.1:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    let mut cmd = command();
    cmd.env("FIX_MONITOR_POLL__SOURCE", "ebpf");
    let sc = Sidecar::start_with(
        cmd,
        &[
            "--ip",
            "127.0.98.1",
            "--target-port",
            &port,
            "--interval",
            "200ms",
        ],
    );
    assert_eq!(sc.json("/health")["source"], "ebpf");
    sc.wait_polls(1);
    let by = |sc: &Sidecar| sc.metrics().by(CLOSED, &[], "by");
    let want = |local: f64, remote: f64, reset: f64| {
        [
            ("local", local),
            ("remote", remote),
            ("reset", reset),
            ("unknown", 0.0),
        ]
        .map(|(k, v)| (k.to_string(), v))
        .into()
    };
    // Before any close: the four series, at 0.
    assert_eq!(by(&sc), want(0.0, 0.0, 0.0));

    // One at a time, each close seen before the next session is made.
    // 1. We send FIN first (ESTABLISHED -> FIN_WAIT1).
    let (ours, mut theirs) = session(&l);
    drop(ours);
    sc.wait_for("a local close", Duration::from_secs(10), |sc| {
        by(sc) == want(1.0, 0.0, 0.0)
    });
    // The venue sees our FIN (end of stream), then closes too.
    assert_eq!(theirs.read(&mut [0u8; 1]).unwrap(), 0);
    drop(theirs);

    // 2. The venue sends FIN first (ESTABLISHED -> CLOSE_WAIT on our side).
    let (mut ours, theirs) = session(&l);
    drop(theirs);
    sc.wait_for("a remote close", Duration::from_secs(10), |sc| {
        by(sc) == want(1.0, 1.0, 0.0)
    });
    assert_eq!(ours.read(&mut [0u8; 1]).unwrap(), 0);
    drop(ours);

    // 3. The venue resets the session (SO_LINGER 0: RST, our side ESTABLISHED -> CLOSE).
    let (ours, theirs) = session(&l);
    linger_zero(&theirs);
    drop(theirs);
    sc.wait_for("a reset by the venue", Duration::from_secs(10), |sc| {
        by(sc) == want(1.0, 1.0, 1.0)
    });
    drop(ours);

    // 4. We reset it.
    let (ours, theirs) = session(&l);
    linger_zero(&ours);
    drop(ours);
    sc.wait_for("a reset by us", Duration::from_secs(10), |sc| {
        by(sc) == want(1.0, 1.0, 2.0)
    });
    drop(theirs);

    // Nothing more comes: the second halves of the closes above are not closes again.
    sc.wait_polls(3);
    assert_eq!(by(&sc), want(1.0, 1.0, 2.0));
    let m = sc.metrics();
    assert_eq!(m.count("fix_connections_total", &[]), 4.0);
    assert_eq!(m.count("fix_connection_duration_seconds_count", &[]), 4.0);
    let (status, log) = sc.terminate();
    assert!(status.success(), "{log}");
    for (by, n) in [("local", 1), ("remote", 1), ("reset", 2)] {
        let lines =
            log.matches(&format!("by=\"{by}\"")).count() + log.matches(&format!("by={by}")).count();
        assert_eq!(lines, n, "{by}: {log}");
    }
    // Why the kernel ended the two reset sessions, in their close lines: the RST received (and
    // the socket error it set), the RST we sent by the kernel's name of its reason; nothing for
    // the FINs.
    let closes: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("connection closed"))
        .collect();
    assert_eq!(closes.len(), 4, "{log}");
    let causes: Vec<&str> = closes
        .iter()
        .filter_map(|l| l.split_once("kernel_cause=").map(|(_, c)| c))
        .collect();
    assert_eq!(causes.len(), 2, "{log}");
    assert!(
        causes[0].starts_with("reset received; socket error: Connection reset by peer"),
        "{log}"
    );
    let sent = causes[1]
        .strip_prefix("reset sent (")
        .and_then(|c| c.split_once(')'))
        .map(|(name, _)| name)
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        !sent.is_empty() && sent.chars().all(|c| c.is_ascii_uppercase() || c == '_'),
        "the kernel's name of the reason: {log}"
    );
}
