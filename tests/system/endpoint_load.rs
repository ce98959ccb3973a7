//! 3,000 idle connections and 500 that send their request head one byte a second, against the
//! real sidecar's endpoint: polling keeps its interval, `/health` answers a new client
//! throughout, the sidecar's open files stay under the connection cap plus a fixed margin, and
//! they are released when the clients go. Loopback only; the clients are this test's threads
//! (about 3,500 sockets, well under the 20,000 files a process may hold).

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::*;

const IDLE: usize = 3000;
const DRIBBLERS: usize = 500;
const DRIBBLER_THREADS: usize = 5;
/// Files the sidecar may hold beyond its connection cap: the one connection being accepted
/// while room is made, and slack for a thread or timer the runtime opens meanwhile.
const MARGIN: usize = 8;

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The test holds thousands of sockets: raise its own soft limit (never above 20,000).
fn raise_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on this process with a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        let want = (IDLE + DRIBBLERS + 1000) as libc::rlim_t;
        assert!(
            lim.rlim_max >= want,
            "the hard file limit {} is below {want}",
            lim.rlim_max
        );
        lim.rlim_cur = lim.rlim_cur.max(want).min(20_000);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let mut last = None;
    for _ in 0..5 {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => return s,
            Err(e) => {
                last = Some(e);
                thread::sleep(Duration::from_millis(200));
            }
        }
    }
    panic!("cannot connect to {addr}: {last:?}");
}

fn polls(sc: &Sidecar) -> u64 {
    sc.json("/health")["polls"].as_u64().unwrap()
}

#[test]
fn idle_and_dribbling_clients_cannot_stop_polling_or_health_or_exhaust_files() {
    raise_file_limit();
    let cap = fix_monitor::export::server::Limits::default().max_connections;
    let interval = Duration::from_millis(200);
    let sc = Sidecar::start(&["--ip", "127.0.0.9", "--interval", "200ms"]);
    sc.wait_polls(2);
    let pid = sc.pid();
    let baseline = open_files(pid);
    let bound = baseline + cap + MARGIN;

    // The dribblers: each sends the next byte of a request head every second, and connects
    // again when the sidecar closes it (as a slow-loris attacker would).
    let stop = Arc::new(AtomicBool::new(false));
    let reconnects = Arc::new(AtomicUsize::new(0));
    let head =
        b"GET /health HTTP/1.1\r\nHost: fix-monitor\r\nUser-Agent: dribbler\r\nAccept: */*\r\n\r\n";
    let mut dribblers = Vec::new();
    for _ in 0..DRIBBLER_THREADS {
        let (stop, reconnects, addr) = (stop.clone(), reconnects.clone(), sc.addr);
        dribblers.push(thread::spawn(move || {
            let mut socks: Vec<(TcpStream, usize)> = (0..DRIBBLERS / DRIBBLER_THREADS)
                .map(|_| (connect(addr), 0))
                .collect();
            while !stop.load(Ordering::Relaxed) {
                for (s, sent) in socks.iter_mut() {
                    let byte = head[*sent % (head.len() - 4)];
                    if s.write_all(&[byte]).is_err() {
                        *s = connect(addr);
                        *sent = 0;
                        reconnects.fetch_add(1, Ordering::Relaxed);
                    } else {
                        *sent += 1;
                    }
                }
                let tick = Instant::now();
                while tick.elapsed() < Duration::from_secs(1) && !stop.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }));
    }
    // The idle ones: connect and never send a byte.
    let mut idle = Vec::with_capacity(IDLE);
    let mut max_files = 0;
    for i in 0..IDLE {
        idle.push(connect(sc.addr));
        if i % 100 == 0 {
            max_files = max_files.max(open_files(pid));
        }
    }

    // Under that load, for a while: polling keeps its rhythm, a new client gets /health, and
    // the open files stay bounded.
    let window = Duration::from_secs(10);
    let began = Instant::now();
    let polls_before = polls(&sc);
    let mut slowest_health = Duration::ZERO;
    let mut answers = 0;
    while began.elapsed() < window {
        let asked = Instant::now();
        let (code, body) = http_get(sc.addr, "/health");
        assert_eq!(code, 200, "{body}");
        slowest_health = slowest_health.max(asked.elapsed());
        answers += 1;
        for _ in 0..4 {
            max_files = max_files.max(open_files(pid));
            thread::sleep(Duration::from_millis(50));
        }
    }
    let elapsed = began.elapsed();
    let polled = polls(&sc) - polls_before;
    let expected = (elapsed.as_secs_f64() / interval.as_secs_f64()) as u64;
    assert!(
        polled + 2 >= expected * 9 / 10,
        "{polled} polls in {elapsed:?}, expected about {expected}"
    );
    assert!(
        slowest_health < Duration::from_secs(2),
        "slowest /health: {slowest_health:?}"
    );
    assert!(answers >= 10, "{answers}");
    assert!(max_files <= bound, "the sidecar held {max_files} files; bound {bound} (baseline {baseline} + cap {cap} + {MARGIN})");
    assert!(
        reconnects.load(Ordering::Relaxed) > 0,
        "the sidecar never closed a dribbler"
    );
    eprintln!(
        "endpoint load: {polled} polls in {elapsed:?} (expected {expected}), slowest /health {slowest_health:?}, at most {max_files} open files (baseline {baseline}, bound {bound}), {} dribbler reconnects",
        reconnects.load(Ordering::Relaxed)
    );

    // The clients go: the files come back.
    stop.store(true, Ordering::Relaxed);
    for t in dribblers {
        t.join().unwrap();
    }
    drop(idle);
    sc.wait_for(
        "open files back to the baseline",
        Duration::from_secs(15),
        |_| open_files(pid) <= baseline + 1,
    );
    // And the endpoint still serves.
    assert_eq!(sc.get("/health").0, 200);
}
