//! CPU of one health pass at 1,000 watched sessions, with 0 and with 10,000 unrelated TCP
//! sockets on the host (5,000 loopback connections to a port that is not a target).
//!
//!   cargo run --release --example health_cost        # as root
//!
//! The pass's kernel work runs inside read(2) on the calling thread, so the thread's CPU time
//! (user + system, getrusage(RUSAGE_THREAD)) is the whole cost. Prints one line per N and the
//! ratio; the cost should not depend on N with the storage-map walk, and does with the
//! fallback TCP-socket walk (see `HealthWalk`).

use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use fix_monitor_ebpf::{Monitor, Options, TargetSpec};

const WATCHED: usize = 1_000;
const UNRELATED_CONNECTIONS: usize = 5_000;
const PASSES: u32 = 200;

/// The calling thread's (user, system) CPU time.
fn thread_cpu_split() -> (Duration, Duration) {
    // SAFETY: an all-zero rusage is a valid value for getrusage to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_THREAD with a valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (tv(usage.ru_utime), tv(usage.ru_stime))
}

fn thread_cpu() -> Duration {
    let (user, system) = thread_cpu_split();
    user + system
}

/// A listener accepting in the background; connections are kept open while the process runs.
fn listener() -> (u16, thread::JoinHandle<Vec<TcpStream>>, usize) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (
        port,
        thread::spawn(move || l.incoming().map_while(Result::ok).collect()),
        0,
    )
}

fn open(port: u16, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect()
}

fn measure(m: &mut Monitor, label: &str) -> Duration {
    m.health().unwrap(); // warm
    let (split0, wall0) = (thread_cpu_split(), Instant::now());
    let cpu0 = split0.0 + split0.1;
    let (mut seen, mut written) = (0, 0);
    for _ in 0..PASSES {
        seen = m.health().unwrap().len();
        written += m.last_pass_written();
    }
    let split1 = thread_cpu_split();
    let wall = wall0.elapsed() / PASSES;
    let per_pass = (split1.0 + split1.1 - cpu0) / PASSES;
    println!(
        "  (user {:?}, system {:?} per pass; {} records written per pass)",
        (split1.0 - split0.0) / PASSES,
        (split1.1 - split0.1) / PASSES,
        written / PASSES as usize
    );
    let cpu1 = thread_cpu();
    for _ in 0..PASSES {
        m.scan_existing().unwrap();
    }
    println!(
        "  (the adoption scan, 8 bytes per session: {:?} CPU per pass)",
        (thread_cpu() - cpu1) / PASSES
    );
    println!(
        "{label}: {seen} watched, {per_pass:?} CPU per pass ({:?} wall), {:.3} ms CPU per second at one pass a second",
        wall,
        per_pass.as_secs_f64() * 1000.0
    );
    per_pass
}

fn main() {
    let mut m = Monitor::load(&Options::default()).unwrap_or_else(|e| panic!("load: {e}"));
    println!("health walk: {:?}", m.health_walk());
    let (venue, _accepting, _) = listener();
    let (other, _accepting_other, _) = listener();
    let target = TargetSpec {
        addr: "127.0.0.1".parse().unwrap(),
        prefix_len: 32,
        port: Some(venue),
        local_ports: None,
    };
    m.set_targets(&[target]).unwrap();
    let _watched = open(venue, WATCHED);
    thread::sleep(Duration::from_millis(200));
    let none = measure(&mut m, "N = 0 unrelated sockets");
    let _unrelated = open(other, UNRELATED_CONNECTIONS);
    thread::sleep(Duration::from_millis(200));
    let many = measure(&mut m, "N = 10,000 unrelated sockets");
    println!(
        "ratio N=10k / N=0: {:.2}",
        many.as_secs_f64() / none.as_secs_f64()
    );
}
