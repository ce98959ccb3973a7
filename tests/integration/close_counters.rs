//! Issue 10's counters across a close, through the real binary: the kernel's socket-destroy
//! notification carries the session's final `tcp_info`, and the byte counters get what the
//! session did after its last poll: nothing lost, nothing counted twice. The destroy
//! notifications need no privileges, so this is first-tier.
//!
//! Ground truth is what the test itself wrote and read. `tcpi_bytes_sent` counts data only
//! (a FIN is no data); `tcpi_bytes_received` counts sequence space, so a FIN the session
//! received counts one byte in the final value (dashboards/README.md says so).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;

use crate::harness::{config_file, Sidecar};

fn config(l: &TcpListener, interval: &str) -> tempfile::NamedTempFile {
    let a = l.local_addr().unwrap();
    config_file(&format!(
        "[[targets]]\nname = \"venue\"\naddress = \"{}\"\nport = {}\n\n[poll]\ninterval = \"{interval}\"\n",
        a.ip(),
        a.port()
    ))
}

/// (bytes sent, bytes received) of target `venue` on `/metrics`; -1 where the series is absent.
fn bytes(s: &Sidecar) -> (f64, f64) {
    let m = s.metrics();
    let t = [("target", "venue")];
    (
        m.get("fix_connection_sent_bytes_total", &t).unwrap_or(-1.0),
        m.get("fix_connection_received_bytes_total", &t)
            .unwrap_or(-1.0),
    )
}

fn exchange(ours: &mut TcpStream, theirs: &mut TcpStream, sent: usize, received: usize) {
    ours.write_all(&vec![b's'; sent]).unwrap();
    let mut buf = vec![0u8; sent];
    theirs.read_exact(&mut buf).unwrap();
    theirs.write_all(&vec![b'r'; received]).unwrap();
    let mut buf = vec![0u8; received];
    ours.read_exact(&mut buf).unwrap();
}

fn start(cfg: &tempfile::NamedTempFile) -> Sidecar {
    let s = Sidecar::start(&[
        "--config",
        cfg.path().to_str().unwrap(),
        "--source",
        "netlink",
    ]);
    s.wait_for("the first poll", Duration::from_secs(20), |s| {
        s.json("/health")["polls"].as_u64().unwrap() >= 1
    });
    assert_eq!(
        s.json("/health")["events"]["mode"],
        "kernel_events",
        "{}",
        s.log()
    );
    s
}

#[test]
fn what_a_session_does_after_its_last_poll_is_counted_at_its_close() {
    let l = TcpListener::bind("127.0.98.1:0").unwrap();
    l.set_nonblocking(false).unwrap();
    // A session older than the sidecar: what it did before the first poll is its baseline.
    let mut ours = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut theirs, _) = l.accept().unwrap();
    ours.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    theirs
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    exchange(&mut ours, &mut theirs, 1000, 2000);

    // One poll, and the next an hour away.
    let cfg = config(&l, "1h");
    let s = start(&cfg);
    assert_eq!(bytes(&s), (0.0, 0.0), "the baseline is not growth");

    // After the only poll: a known exchange, then the session ends (ours first, then the
    // venue with a FIN: the session receives that FIN).
    let (sent, received) = (70_000, 30_000);
    exchange(&mut ours, &mut theirs, sent, received);
    ours.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    theirs.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    drop(theirs);
    let mut rest = Vec::new();
    ours.read_to_end(&mut rest).unwrap();
    drop(ours);

    let want = (sent as f64, received as f64 + 1.0);
    s.wait_for(
        "the destroy notification's bytes on /metrics",
        Duration::from_secs(10),
        |s| bytes(s) == want,
    );
    // Still the one poll: the notification brought the growth, no poll did.
    assert_eq!(s.json("/health")["polls"].as_u64(), Some(1), "{}", s.log());
    let m = s.metrics();
    assert_eq!(
        m.get("fix_connections_closed_total", &[("target", "venue")]),
        Some(1.0)
    );
    assert_eq!(bytes(&s), want);
}

#[test]
fn a_close_seen_by_a_poll_and_then_by_its_destroy_notification_counts_once() {
    let l = TcpListener::bind("127.0.98.2:0").unwrap();
    let cfg = config(&l, "200ms");
    let s = start(&cfg);

    // A session new since the first poll: everything it does counts.
    let mut ours = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut theirs, _) = l.accept().unwrap();
    ours.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    theirs
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (first, received) = (40_000, 25_000);
    exchange(&mut ours, &mut theirs, first, received);
    s.wait_for(
        "a poll counting the exchange",
        Duration::from_secs(10),
        |s| bytes(s) == (first as f64, received as f64),
    );

    // The venue half-closes: our side is in CLOSE_WAIT, which polls no longer list (closed
    // by a poll), but it can still send.
    theirs.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    ours.read_to_end(&mut rest).unwrap();
    s.wait_for("the close seen by a poll", Duration::from_secs(10), |s| {
        s.metrics()
            .get("fix_connections_closed_total", &[("target", "venue")])
            == Some(1.0)
    });
    let more = 12_345;
    ours.write_all(&vec![b'm'; more]).unwrap();
    let mut buf = vec![0u8; more];
    theirs.read_exact(&mut buf).unwrap();
    drop(ours);
    let mut rest = Vec::new();
    theirs.read_to_end(&mut rest).unwrap();
    drop(theirs);

    // The bytes sent after the poll's close come with the destroy notification; what the
    // polls counted is not counted again. Received: the data and the venue's FIN.
    let want = ((first + more) as f64, received as f64 + 1.0);
    s.wait_for(
        "the destroy notification's bytes on /metrics",
        Duration::from_secs(10),
        |s| bytes(s) == want,
    );
    s.wait_polls(3);
    assert_eq!(bytes(&s), want, "{}", s.log());
    assert_eq!(
        s.metrics()
            .get("fix_connections_closed_total", &[("target", "venue")]),
        Some(1.0)
    );
}
