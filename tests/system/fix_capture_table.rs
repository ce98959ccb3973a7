//! Issue 17: the wire capture's connection table on the real kernel, through the real binary.
//! Thousands of sessions to a watched target open and close, cleanly (a FIN each way, then the
//! last ACK), by RST, and while the capture is stopped and its socket's buffer overflows (their
//! ends never reach it): the table must end empty, every connection ended exactly once (by
//! the reason that applies), and a FIX session opened afterwards must still be decoded.
//! Before the fix, the last ACK of each clean close left an entry that nothing removed, and
//! after 4,096 of them no new session was followed.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::*;

/// A venue that reads each connection to its end, then closes its side: with a client that
/// shuts down its sending side first, every close is a FIN each way and the last ACK.
struct Sink {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sink {
    fn start() -> Sink {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        c.set_nonblocking(false).unwrap();
                        std::thread::Builder::new()
                            .stack_size(64 * 1024)
                            .spawn(move || {
                                let _ = c.set_read_timeout(Some(Duration::from_secs(120)));
                                let mut buf = [0u8; 4096];
                                while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
                            })
                            .unwrap();
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        Sink {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How a test connection ends.
#[derive(Clone, Copy)]
enum End {
    /// Shut down our side, read the venue's FIN, close: a FIN each way, then the last ACK.
    Clean,
    /// SO_LINGER 0, then close: an RST.
    Reset,
}

fn session(to: SocketAddr, payload: &[u8], end: End) {
    let mut c = TcpStream::connect(to).unwrap();
    c.write_all(payload).unwrap();
    match end {
        End::Clean => {
            c.shutdown(Shutdown::Write).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut rest = Vec::new();
            c.read_to_end(&mut rest).unwrap();
        }
        End::Reset => socket2::SockRef::from(&c)
            .set_linger(Some(Duration::ZERO))
            .unwrap(),
    }
}

/// `n` sessions over four threads.
fn sessions(to: SocketAddr, n: usize, end: End) {
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                for _ in (t..n).step_by(4) {
                    session(to, b"8=FIX.4.4\x01", end);
                }
            })
        })
        .collect();
    for t in threads {
        join_within("the sessions", Duration::from_secs(300), t);
    }
}

/// The wire table's counts from `/sessions`.
#[derive(Debug, Default, PartialEq)]
struct Table {
    followed: u64,
    not_followed: u64,
    fin: u64,
    reset: u64,
    tcp_closed: u64,
    idle: u64,
    drops: u64,
}

impl Table {
    fn read(sc: &Sidecar) -> Table {
        let s = sc.json("/sessions");
        let st = &s["stats"];
        let n = |v: &serde_json::Value| v.as_u64().unwrap_or_else(|| panic!("{s}"));
        Table {
            followed: n(&st["connections_followed"]),
            not_followed: n(&st["wire"]["not_followed"]),
            fin: n(&st["wire"]["ended"]["fin"]),
            reset: n(&st["wire"]["ended"]["reset"]),
            tcp_closed: n(&st["wire"]["ended"]["tcp_closed"]),
            idle: n(&st["wire"]["ended"]["idle"]),
            drops: st["capture_drops"].as_u64().unwrap_or(0),
        }
    }

    fn ended(&self) -> u64 {
        self.fin + self.reset + self.tcp_closed + self.idle
    }
}

/// A sidecar watching `sink` (and `venue`, when given) with capture on, polling every 200 ms.
fn sidecar(sink: SocketAddr, venue: Option<SocketAddr>) -> (Sidecar, tempfile::NamedTempFile) {
    let mut text = format!(
        "[[targets]]\nname = \"sink\"\naddress = \"127.0.0.1\"\nport = {}\n",
        sink.port()
    );
    if let Some(v) = venue {
        text += &format!(
            "[[targets]]\nname = \"venue\"\naddress = \"127.0.0.1\"\nport = {}\n",
            v.port()
        );
    }
    text += "[fix]\ncapture = true\n";
    let cfg = config_file(&text);
    let sc = Sidecar::start(&[
        "--config",
        cfg.path().to_str().unwrap(),
        "--interval",
        "200ms",
    ]);
    assert_eq!(sc.json("/sessions")["capture"], true);
    (sc, cfg)
}

fn wait_ended(sc: &Sidecar, total: u64) -> Table {
    let mut last = Table::default();
    sc.wait_for(
        &format!("{total} connections ended and an empty table"),
        Duration::from_secs(60),
        |sc| {
            last = Table::read(sc);
            last.followed == 0 && last.ended() == total
        },
    );
    // Nothing more ends afterwards (no entry ends twice).
    std::thread::sleep(Duration::from_millis(600));
    let again = Table::read(sc);
    assert_eq!(again, last, "counts moved after the table emptied");
    last
}

#[test]
fn thousands_of_closes_leave_the_capture_table_empty_and_fix_still_decoded() {
    let sink = Sink::start();
    let (venue, _refusing) = fix_venues(
        [std::net::Ipv4Addr::LOCALHOST.into(); 2],
        Duration::from_millis(5),
        1000,
        (1000, 1),
    );
    let (sc, _cfg) = sidecar(sink.addr, Some(venue.addr));

    // 5,000 clean closes: each ends by its FINs; the last ACKs open nothing.
    sessions(sink.addr, 5000, End::Clean);
    let t = wait_ended(&sc, 5000);
    assert_eq!(t.not_followed, 0, "{t:?}");
    if t.drops == 0 {
        assert_eq!(t.fin, 5000, "{t:?}");
    }

    // 1,000 closed by RST.
    sessions(sink.addr, 1000, End::Reset);
    let t = wait_ended(&sc, 6000);
    if t.drops == 0 {
        assert_eq!(t.reset, 1000, "{t:?}");
    }

    // 1,000 closed while the capture is behind: open and followed (the TCP layer lists them),
    // then, with the sidecar stopped, 64 KiB each and a close: the packet socket's buffer
    // overflows and most of their FINs never reach the capture. The TCP layer's view ends
    // them.
    let conns: Vec<TcpStream> = (0..1000)
        .map(|_| {
            let mut c = TcpStream::connect(sink.addr).unwrap();
            c.write_all(b"8=FIX.4.4\x01").unwrap();
            c
        })
        .collect();
    sc.wait_for(
        "1,000 open connections followed and listed by the TCP layer",
        Duration::from_secs(60),
        |sc| {
            let m = sc.metrics();
            Table::read(sc).followed == 1000
                && m.get("fix_connections_active", &[("target", "sink")]) == Some(1000.0)
        },
    );
    // The FIX thread reads the TCP layer's list once a round (250 ms): stopping the sidecar
    // before it has marked them listed would make them strangers, ended as idle.
    sc.wait_for(
        "the capture's 1,000 entries marked as listed by the TCP layer",
        Duration::from_secs(30),
        |sc| {
            let s = sc.json("/sessions");
            let listed = s["connections"]
                .as_array()
                .unwrap_or_else(|| panic!("{s}"))
                .iter()
                .filter(|c| c["target"] == "sink" && c["listed"] == true)
                .count();
            listed == 1000
        },
    );
    let before = Table::read(&sc);
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(sc.pid() as i32, libc::SIGSTOP) };
    let big = vec![b'x'; 64 * 1024];
    for mut c in conns {
        c.write_all(&big).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
    }
    // SAFETY: as above.
    unsafe { libc::kill(sc.pid() as i32, libc::SIGCONT) };
    let t = wait_ended(&sc, 7000);
    assert!(
        t.drops > before.drops,
        "the capture was meant to fall behind and drop packets: {t:?}"
    );
    assert!(
        t.tcp_closed > before.tcp_closed,
        "ends the capture missed are learnt from the TCP layer: {t:?}"
    );
    assert_eq!(
        t.idle, before.idle,
        "an entry the TCP layer had listed is never ended as idle: {t:?}"
    );
    assert_eq!(t.not_followed, 0, "{t:?}");

    // A FIX session opened afterwards is followed and decoded.
    let truth = fix_monitor::fix::sim::scripted_session(venue.addr, 3, None, None).unwrap();
    let sent: u64 = truth.sent.values().sum();
    let received: u64 = truth.received.values().sum();
    let mut last = serde_json::Value::Null;
    sc.wait_for(
        "the new FIX session decoded",
        Duration::from_secs(30),
        |sc| {
            let s = sc.json("/sessions");
            let found = s["sessions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["session"] == "GW->VENUE")
                .cloned();
            last = s;
            found.is_some_and(|x| {
                x["logons"] == 1
                    && x["out"]["messages"].as_u64() == Some(sent)
                    && x["in"]["messages"].as_u64() == Some(received)
            })
        },
    );
    // Its connection ended too; /metrics says what /sessions says.
    let t = wait_ended(&sc, 7001);
    let m = sc.metrics();
    assert_eq!(m.get("fix_monitor_capture_connections", &[]), Some(0.0));
    let ended = m.by("fix_monitor_capture_connections_ended_total", &[], "reason");
    assert_eq!(ended.get("fin"), Some(&(t.fin as f64)), "{ended:?}");
    assert_eq!(ended.get("reset"), Some(&(t.reset as f64)), "{ended:?}");
    assert_eq!(ended.get("tcp_closed"), Some(&(t.tcp_closed as f64)));
    assert_eq!(ended.get("idle"), Some(&(t.idle as f64)));
    assert_eq!(
        m.get("fix_monitor_capture_connections_not_followed_total", &[]),
        Some(0.0)
    );
    assert!(!sc.log().contains("table is full"), "{}", sc.log());
    drop(venue);
}

#[test]
fn a_full_capture_table_is_counted_warned_once_and_empties() {
    let sink = Sink::start();
    let (sc, _cfg) = sidecar(sink.addr, None);
    // 4,100 sessions held open: 4,096 followed, 4 not, each counted once however many
    // segments it sends.
    let n = fix_monitor::fix::wire::MAX_CONNECTIONS + 4;
    let mut conns: Vec<TcpStream> = (0..n)
        .map(|_| TcpStream::connect(sink.addr).unwrap())
        .collect();
    for c in conns.iter_mut().rev().take(4) {
        for _ in 0..3 {
            c.write_all(b"8=FIX.4.4\x01").unwrap();
        }
    }
    let mut last = Table::default();
    sc.wait_for(
        "a full table and 4 connections not followed",
        Duration::from_secs(60),
        |sc| {
            last = Table::read(sc);
            last.followed == n as u64 - 4 && last.not_followed == 4
        },
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(Table::read(&sc).not_followed, 4, "{last:?}");
    let m = sc.metrics();
    assert_eq!(
        m.get("fix_monitor_capture_connections", &[]),
        Some((n - 4) as f64)
    );
    assert_eq!(
        m.get("fix_monitor_capture_connections_not_followed_total", &[]),
        Some(4.0)
    );
    // Every session closes cleanly: the table empties; what was not followed stays counted.
    for c in conns.drain(..) {
        c.shutdown(Shutdown::Write).unwrap();
        let mut c = c;
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
    }
    let t = wait_ended(&sc, n as u64 - 4);
    assert_eq!(t.not_followed, 4, "{t:?}");
    // Said once in the log, naming the bound.
    let warned = sc
        .log()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("table is full"))
        .count();
    assert_eq!(warned, 1, "{}", sc.log());
}
