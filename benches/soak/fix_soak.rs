//! `fix-soak`: runs the real sidecar for a bounded time under churn and checks, at the end,
//! that it lost no count, did not grow, and did not flood its log (`scripts/soak.sh` builds and
//! runs it; Linux, loopback only).
//!
//! What runs meanwhile, all started and stopped here:
//! - the sidecar (`--bin`), polling every 500 ms, its endpoint on an ephemeral loopback port,
//!   pushing OTLP/HTTP every 2 s to VictoriaMetrics (`--vm`);
//! - churn on target `venue-a`: `--rate` sessions a second open, each lives `--lifetime` and is
//!   closed (with RST, so that no TIME_WAIT piles up);
//! - a flapping target `venue-b`: 5 sessions that live 12 s, then the venue goes away
//!   (its listener closes, its ends of the sessions reset) for 8 s, while the clients retry once
//!   a second and are refused, then comes back and the clients reconnect;
//! - VictoriaMetrics going down for 20 s of every minute;
//! - 4 scrapers, each fetching `/metrics`, `/health` and `/connections` in turn, 10 times a
//!   second between them;
//! - the FIX layer, with wire capture on (needs CAP_NET_RAW: run as root): a simulated FIX
//!   venue (`venue-f`) and a gateway that logs on, sends orders, logs out and closes, over and
//!   over, and after every fifth session has a logon refused by a second venue on the same
//!   address (`fix_load.rs`);
//! - a sampler: the sidecar's RSS and open files, and the capture's table, every 5 s;
//! - reloads (`--reload-every SECS`): the config file rewritten, a target that no session goes
//!   to (`venue-idle`) added and removed in turn and the log level changed, then SIGHUP; each
//!   must apply (one "configuration reloaded" line each, none refused, the reload gauge at 1)
//!   while every count of the targets that stay goes on exact.
//!
//! At the end the churn stops with every session of `venue-a` closed and `venue-b` up with its 5
//! sessions; then the sidecar's counts must equal the ground truth counted here (opened,
//! closed, active, closed lifetimes, poll errors 0), VictoriaMetrics must get the same totals
//! by OTLP, RSS and open files must be flat after the warm-up (least-squares slopes reported;
//! fails past 1 MiB/min of RSS or 1 file/min), the log must hold exactly one line per open and
//! close and few others, the FIX layer's counts must equal the FIX gateway's and its capture
//! table must hold exactly the connections still open (every other one ended once), and
//! SIGTERM must end the sidecar cleanly. The report is JSON
//! (`--out DIR`/summary.json) and text on stdout; the exit code is 0 only if every check held.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};

#[path = "fix_load.rs"]
mod fix_load;

const POLL_INTERVAL: &str = "500ms";
const FLAP_SESSIONS: u64 = 5;
const FLAP_UP: Duration = Duration::from_secs(12);
const FLAP_DOWN: Duration = Duration::from_secs(8);
const OUTAGE_PERIOD: Duration = Duration::from_secs(60);
const OUTAGE_START: Duration = Duration::from_secs(30);
const OUTAGE_LEN: Duration = Duration::from_secs(20);
const SCRAPERS: usize = 4;
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// How long after a reload no RSS or open-files sample is taken (see the main loop).
const RELOAD_SETTLE: Duration = Duration::from_secs(3);
/// A clear leak: RSS growing faster than this after the warm-up.
const RSS_SLOPE_LIMIT_KIB_PER_MIN: f64 = 1024.0;
/// Open files growing faster than this after the warm-up.
const FD_SLOPE_LIMIT_PER_MIN: f64 = 1.0;

struct Opts {
    bin: PathBuf,
    vm: PathBuf,
    duration: Duration,
    warmup: Duration,
    rate: u32,
    lifetime: Duration,
    out: PathBuf,
    /// Time between two reloads (`None`: none).
    reload_every: Option<Duration>,
}

fn usage() -> ! {
    eprintln!(
        "usage: fix-soak --bin FIX_MONITOR --vm VICTORIA_METRICS --out DIR \
         [--duration SECS (600)] [--warmup SECS (duration/5)] [--rate N (50)] [--lifetime SECS (3)] \
         [--reload-every SECS (0: none)]"
    );
    std::process::exit(2)
}

fn parse_opts() -> Opts {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |name: &str| -> Option<String> {
        args.iter()
            .position(|a| a == name)
            .map(|i| args.get(i + 1).cloned().unwrap_or_else(|| usage()))
    };
    let secs = |name: &str, default: u64| -> u64 {
        get(name).map_or(default, |v| v.parse().unwrap_or_else(|_| usage()))
    };
    let duration = Duration::from_secs(secs("--duration", 600));
    Opts {
        bin: get("--bin").unwrap_or_else(|| usage()).into(),
        vm: get("--vm").unwrap_or_else(|| usage()).into(),
        duration,
        warmup: Duration::from_secs(secs("--warmup", duration.as_secs() / 5)),
        rate: secs("--rate", 50) as u32,
        lifetime: Duration::from_secs(secs("--lifetime", 3)),
        out: get("--out").unwrap_or_else(|| usage()).into(),
        reload_every: Some(Duration::from_secs(secs("--reload-every", 0))).filter(|d| !d.is_zero()),
    }
}

/// The soak's own loopback addresses, 127.X.Y.{1,2,3,4} (gateway, venue-a, venue-b, venue-f),
/// from the process id, so that tests and other soaks running at the same time never share a
/// target.
fn addresses() -> [Ipv4Addr; 4] {
    let pid = std::process::id();
    let (x, y) = (200 + (pid % 50) as u8, ((pid / 50) % 256) as u8);
    [1, 2, 3, 4].map(|h| Ipv4Addr::new(127, x, y, h))
}

/// A client session from `from` (any port) to `to`; its close resets (SO_LINGER 0).
fn connect(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.set_linger(Some(Duration::ZERO))?;
    s.bind(&SockAddr::from(SocketAddrV4::new(from, 0)))?;
    s.connect_timeout(&SockAddr::from(to), Duration::from_secs(2))?;
    Ok(s.into())
}

fn listen(at: SocketAddr) -> std::io::Result<TcpListener> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&SockAddr::from(at))?;
    s.listen(1024)?;
    Ok(s.into())
}

/// Accepts forever on `l`; each accepted end is held until its peer goes, then dropped.
fn serve_forever(l: TcpListener) {
    thread::spawn(move || {
        for s in l.incoming().map_while(Result::ok) {
            thread::spawn(move || {
                let mut s = s;
                let mut b = [0u8; 64];
                while matches!(s.read(&mut b), Ok(n) if n > 0) {}
            });
        }
    });
}

/// Ground truth, per target.
#[derive(Default)]
struct Truth {
    opened: AtomicU64,
    closed: AtomicU64,
    /// Connects that failed when they should not have (churn) or were refused (flap, expected).
    failed: AtomicU64,
    /// The most sessions open at once.
    max_open: AtomicU64,
}

impl Truth {
    fn active(&self) -> u64 {
        self.opened.load(SeqCst) - self.closed.load(SeqCst)
    }
}

fn churn(
    gw: Ipv4Addr,
    to: SocketAddr,
    rate: u32,
    lifetime: Duration,
    stop: Arc<AtomicBool>,
    truth: Arc<Truth>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let tick = Duration::from_secs(1) / rate;
        let start = Instant::now();
        let mut open: VecDeque<(Instant, TcpStream)> = VecDeque::new();
        let mut k: u32 = 0;
        while !stop.load(SeqCst) {
            let now = Instant::now();
            while open.front().is_some_and(|(until, _)| *until <= now) {
                open.pop_front();
                truth.closed.fetch_add(1, SeqCst);
            }
            match connect(gw, to) {
                Ok(s) => {
                    open.push_back((now + lifetime, s));
                    truth.opened.fetch_add(1, SeqCst);
                    truth.max_open.fetch_max(open.len() as u64, SeqCst);
                }
                Err(_) => {
                    truth.failed.fetch_add(1, SeqCst);
                }
            }
            k += 1;
            let next = start + tick * k;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
        }
        // Every session lives its full lifetime, the last ones too: a session closed right
        // after it opened could fall between two polls, and no monitor could count it.
        while let Some((until, s)) = open.pop_front() {
            if let Some(wait) = until.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            drop(s);
            truth.closed.fetch_add(1, SeqCst);
        }
    })
}

/// The flapping venue: up with its sessions for FLAP_UP, then gone for FLAP_DOWN. Ends (when
/// `stop` is set) in the up state, its sessions held until `release` is set.
fn flap(
    gw: Ipv4Addr,
    at: SocketAddr,
    stop: Arc<AtomicBool>,
    release: Arc<AtomicBool>,
    truth: Arc<Truth>,
    flaps: Arc<AtomicU64>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || loop {
        let l = listen(at).expect("re-binding the flapping venue");
        let mut clients = Vec::new();
        let mut servers = Vec::new();
        for _ in 0..FLAP_SESSIONS {
            let c = connect(gw, at).expect("connecting to the flapping venue");
            let (s, _) = l.accept().expect("accepting at the flapping venue");
            clients.push(c);
            servers.push(s);
            truth.opened.fetch_add(1, SeqCst);
        }
        truth.max_open.store(FLAP_SESSIONS, SeqCst);
        let up = Instant::now();
        while up.elapsed() < FLAP_UP && !stop.load(SeqCst) {
            thread::sleep(Duration::from_millis(50));
        }
        if stop.load(SeqCst) {
            while !release.load(SeqCst) {
                thread::sleep(Duration::from_millis(50));
            }
            drop(clients);
            truth.closed.fetch_add(FLAP_SESSIONS, SeqCst);
            return;
        }
        // The venue goes: listener closed, its ends reset; the clients see the reset.
        drop(l);
        for s in servers.drain(..) {
            let _ = Socket::from(s).set_linger(Some(Duration::ZERO));
        }
        truth.closed.fetch_add(FLAP_SESSIONS, SeqCst);
        flaps.fetch_add(1, SeqCst);
        let mut b = [0u8; 1];
        for c in &mut clients {
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = c.read(&mut b); // 0 or ECONNRESET
        }
        drop(clients);
        let down = Instant::now();
        while down.elapsed() < FLAP_DOWN {
            // The gateway retries, and is refused.
            if connect(gw, at).is_ok() {
                panic!("the flapping venue accepted while down");
            }
            truth.failed.fetch_add(1, SeqCst);
            thread::sleep(Duration::from_secs(1));
        }
    })
}

/// GET `path` over a fresh connection: status and body.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((code, body))
}

fn dechunk(mut b: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = b.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        b = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The value of `name{target="target"}` in a Prometheus text body (0 if absent).
fn metric(body: &str, name: &str, target: &str) -> f64 {
    let want = format!("target=\"{target}\"");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(lhs, _)| {
            lhs.split('{').next() == Some(name) && (target.is_empty() || lhs.contains(&want))
        })
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

#[derive(Default)]
struct ScrapeStats {
    ok: AtomicU64,
    failed: AtomicU64,
    max_ms: AtomicU64,
}

fn scraper(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    stats: Arc<ScrapeStats>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let paths = ["/metrics", "/health", "/connections"];
        let mut i = 0;
        while !stop.load(SeqCst) {
            let t = Instant::now();
            match http_get(addr, paths[i % 3]) {
                Ok((200, _)) => stats.ok.fetch_add(1, SeqCst),
                _ => stats.failed.fetch_add(1, SeqCst),
            };
            stats
                .max_ms
                .fetch_max(t.elapsed().as_millis() as u64, SeqCst);
            i += 1;
            thread::sleep(Duration::from_millis(100 * SCRAPERS as u64));
        }
    })
}

/// VictoriaMetrics, restartable on the same port and data directory.
struct Vm {
    bin: PathBuf,
    addr: SocketAddr,
    dir: PathBuf,
    child: Option<Child>,
}

impl Vm {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("vm.log"))
            .unwrap();
        let child = Command::new(&self.bin)
            .args([
                format!("-httpListenAddr={}", self.addr),
                format!("-storageDataPath={}", self.dir.join("data").display()),
                "-retentionPeriod=1d".into(),
                "-search.latencyOffset=0s".into(),
                "-search.disableCache".into(),
                "-loggerLevel=WARN".into(),
                "-opentelemetry.usePrometheusNaming".into(),
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting victoria-metrics");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if matches!(http_get(self.addr, "/health"), Ok((200, _))) {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!("victoria-metrics did not come up at {}", self.addr);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if c.try_wait().unwrap().is_some() {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn value(&self, promql: &str) -> Option<f64> {
        let _ = http_get(self.addr, "/internal/force_flush");
        let q: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (code, body) = http_get(self.addr, &format!("/api/v1/query?query={q}")).ok()?;
        if code != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let rows = v["data"]["result"].as_array()?;
        if rows.len() != 1 {
            return None;
        }
        rows[0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// (seconds since start, RSS KiB, open files)
type Sample = (f64, f64, f64);

fn sample(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as f64;
    Some((rss, fds))
}

/// Least-squares slope of y over x.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

fn main() {
    let o = parse_opts();
    std::fs::create_dir_all(&o.out).unwrap();
    let mut failures: Vec<String> = Vec::new();
    let [gw, a_ip, b_ip, f_ip] = addresses();

    // The venues.
    let a_listener = listen(SocketAddr::from((a_ip, 0))).expect("venue-a listener");
    let a = a_listener.local_addr().unwrap();
    serve_forever(a_listener);
    let b = SocketAddr::from((b_ip, free_port_on(b_ip)));

    // VictoriaMetrics.
    let vm_dir = o.out.join("vm");
    let _ = std::fs::remove_dir_all(&vm_dir);
    std::fs::create_dir_all(&vm_dir).unwrap();
    let mut vm = Vm {
        bin: o.vm.clone(),
        addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
        dir: vm_dir,
        child: None,
    };
    vm.start();

    // The sidecar.
    let config = o.out.join("config.toml");
    let text = format!(
        r#"[[targets]]
name = "venue-a"
address = "{a_ip}"
port = {ap}

[[targets]]
name = "venue-b"
address = "{b_ip}"
port = {bp}

[[targets]]
name = "venue-f"
address = "{f_ip}"

[fix]
capture = true

[poll]
interval = "{POLL_INTERVAL}"

[prometheus]
listen = "127.0.0.1:0"

[otlp]
enabled = true
endpoint = "http://{vm}/opentelemetry"
protocol = "http/protobuf"
interval = "2s"
timeout = "1s"
# VictoriaMetrics takes OTLP metrics, not logs: the session events stay in the log.
logs = false
"#,
        ap = a.port(),
        bp = b.port(),
        vm = vm.addr,
    );
    std::fs::write(&config, &text).unwrap();
    // What each reload writes in turn: a target no session goes to, added and removed again
    // (a documentation address: nothing connects there), and the log level.
    let reloaded = [
        format!(
            "{text}\n[[targets]]\nname = \"venue-idle\"\naddress = \"192.0.2.1\"\nport = 1\n\n\
             [log]\nlevel = \"info,fix_monitor_kernel=warn\"\n"
        ),
        text.clone(),
    ];
    let log_path = o.out.join("fix-monitor.log");
    let mut cmd = Command::new(&o.bin);
    for (k, _) in std::env::vars() {
        if k.starts_with("FIX_MONITOR_") || k.starts_with("DOWNSTREAM_") || k.starts_with("OTEL_") {
            cmd.env_remove(k);
        }
    }
    // Reaped by the try_wait loop after SIGTERM (or waited on after a kill), which the lint
    // cannot follow through the soak's main loop.
    #[allow(clippy::zombie_processes)]
    let mut sidecar = cmd
        .args(["run", "--config"])
        .arg(&config)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting fix-monitor");
    let pid = sidecar.id();
    let (tx, rx) = mpsc::channel();
    let log_lines = Arc::new(Mutex::new((0u64, 0u64, Vec::<String>::new(), 0u64)));
    {
        let stderr = sidecar.stderr.take().unwrap();
        let mut file = std::fs::File::create(&log_path).unwrap();
        let log_lines = log_lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(file, "{line}");
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                }
                let mut l = log_lines.lock().unwrap();
                if line.contains("connection opened") {
                    l.0 += 1;
                } else if line.contains("connection closed") {
                    l.1 += 1;
                } else if line.contains("session ended") {
                    l.3 += 1;
                } else {
                    l.2.push(line);
                }
            }
        });
    }
    let endpoint: SocketAddr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the sidecar did not say where it listens")
        .parse()
        .unwrap();
    println!(
        "fix-soak: sidecar pid {pid} at http://{endpoint}, venue-a {a}, venue-b {b}, \
         VictoriaMetrics {}, {} s ({} s warm-up), {} sessions/s living {} s",
        vm.addr,
        o.duration.as_secs(),
        o.warmup.as_secs(),
        o.rate,
        o.lifetime.as_secs()
    );

    // The load starts after the sidecar's first poll, so that every session is one it sees
    // open (sessions open before the first poll count as opened, with no known lifetime).
    let polls_now = || {
        http_get(endpoint, "/health")
            .ok()
            .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
            .and_then(|h| h["polls"].as_u64())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while polls_now() < 1 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let release = Arc::new(AtomicBool::new(false));
    let truth_a = Arc::new(Truth::default());
    let truth_b = Arc::new(Truth::default());
    let flaps = Arc::new(AtomicU64::new(0));
    let scrapes = Arc::new(ScrapeStats::default());
    let churner = churn(gw, a, o.rate, o.lifetime, stop.clone(), truth_a.clone());
    let fix = fix_load::start(f_ip, stop.clone());
    let mut fix_followed_max = 0;
    let flapper = flap(
        gw,
        b,
        stop.clone(),
        release.clone(),
        truth_b.clone(),
        flaps.clone(),
    );
    let scrapers: Vec<_> = (0..SCRAPERS)
        .map(|_| scraper(endpoint, stop.clone(), scrapes.clone()))
        .collect();

    // The main loop: samples, and the collector's outages.
    let mut samples: Vec<Sample> = Vec::new();
    let mut outages = 0;
    let mut reloads = 0u64;
    let mut reloaded_at: Option<Duration> = None;
    let mut next_sample = Duration::ZERO;
    while start.elapsed() < o.duration {
        let t = start.elapsed();
        if let Some(every) = o.reload_every {
            if t.as_secs() / every.as_secs().max(1) > reloads {
                std::fs::write(&config, &reloaded[reloads as usize % 2]).unwrap();
                // SAFETY: kill(2) on our own child.
                unsafe { libc::kill(pid as i32, libc::SIGHUP) };
                reloads += 1;
                reloaded_at = Some(t);
            }
        }
        let in_period = Duration::from_secs(t.as_secs() % OUTAGE_PERIOD.as_secs());
        let should_be_down = in_period >= OUTAGE_START && in_period < OUTAGE_START + OUTAGE_LEN;
        if should_be_down && vm.child.is_some() {
            vm.stop();
            outages += 1;
        } else if !should_be_down && vm.child.is_none() {
            vm.start();
        }
        if t >= next_sample {
            // A reload that opens a new source (netlink's; eBPF mode retargets its programs in
            // place) holds the old one beside it for a moment (files, buffers), which is no
            // growth. No sample is taken in the seconds after one.
            let reloading = reloaded_at.is_some_and(|r| t < r + RELOAD_SETTLE);
            if let Some((rss, fds)) = sample(pid).filter(|_| !reloading) {
                samples.push((t.as_secs_f64(), rss, fds));
            }
            if let Some(seen) = fix_seen(endpoint) {
                fix_followed_max = fix_followed_max.max(seen.followed);
            }
            next_sample += SAMPLE_EVERY;
        }
        if let Ok(Some(status)) = sidecar.try_wait() {
            failures.push(format!("the sidecar exited during the soak: {status}"));
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    let soaked = start.elapsed();

    // Quiesce: churn stops (all venue-a sessions closed), venue-b stays up with its sessions.
    stop.store(true, SeqCst);
    churner.join().unwrap();
    let fix_truth = fix.thread.join().unwrap();
    for s in scrapers {
        s.join().unwrap();
    }
    let deadline = Instant::now() + FLAP_DOWN + Duration::from_secs(10);
    while truth_b.active() != FLAP_SESSIONS && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    if vm.child.is_none() {
        vm.start();
    }

    // Counts against the ground truth, waited for (bounded): the last sessions closed less than
    // a poll ago.
    let want = |t: &Truth| {
        (
            t.opened.load(SeqCst) as f64,
            t.closed.load(SeqCst) as f64,
            t.active() as f64,
        )
    };
    let (ta, tb) = (want(&truth_a), want(&truth_b));
    let got = |body: &str, target: &str| {
        (
            metric(body, "fix_connections_total", target),
            metric(body, "fix_connections_closed_total", target),
            metric(body, "fix_connections_active", target),
        )
    };
    let mut body = String::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok((200, b)) = http_get(endpoint, "/metrics") {
            body = b;
            if got(&body, "venue-a") == ta && got(&body, "venue-b") == tb {
                break;
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
    let (ga, gb) = (got(&body, "venue-a"), got(&body, "venue-b"));
    for (name, g, t) in [("venue-a", ga, ta), ("venue-b", gb, tb)] {
        if g != t {
            failures.push(format!(
                "{name}: (opened, closed, active) = {g:?} on /metrics, ground truth {t:?}"
            ));
        }
        let lifetimes = metric(&body, "fix_connection_duration_seconds_count", name);
        if lifetimes != t.1 {
            failures.push(format!(
                "{name}: {lifetimes} lifetimes in the histogram, {} closes",
                t.1
            ));
        }
    }
    let peak_a = metric(&body, "fix_connections_peak", "venue-a");
    let max_a = truth_a.max_open.load(SeqCst) as f64;
    if peak_a > max_a || peak_a == 0.0 {
        failures.push(format!(
            "venue-a: peak {peak_a}, at most {max_a} were ever open"
        ));
    }
    let poll_errors = metric(&body, "fix_monitor_poll_errors_total", "");
    if poll_errors != 0.0 {
        failures.push(format!("{poll_errors} poll errors"));
    }
    let polls = polls_now();
    let expected_polls = soaked.as_secs_f64() / 0.5;
    if (polls as f64) < 0.9 * expected_polls {
        failures.push(format!(
            "{polls} polls in {:.0} s at 500 ms: polling fell behind",
            soaked.as_secs_f64()
        ));
    }
    if truth_a.failed.load(SeqCst) != 0 {
        failures.push(format!(
            "{} churn connects failed",
            truth_a.failed.load(SeqCst)
        ));
    }

    // The same totals by OTLP, once VictoriaMetrics has the next push.
    let mut vm_a = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        vm_a = vm.value(r#"max(last_over_time(fix_connections_total{target="venue-a"}[1m]))"#);
        if vm_a == Some(ta.0) {
            break;
        }
        thread::sleep(Duration::from_millis(500));
    }
    if vm_a != Some(ta.0) {
        failures.push(format!(
            "VictoriaMetrics has fix_connections_total{{target=\"venue-a\"}} = {vm_a:?}, want {}",
            ta.0
        ));
    }
    let export_errors = metric(&body, "fix_monitor_export_errors_total", "");

    // The FIX layer: its counts are the gateway's; the capture's table holds what is still
    // open (venue-b's sessions), every other connection of every target having ended once
    // (exact when the capture dropped no packet); it stayed bounded meanwhile.
    // Each FIX session and each refused logon is a TCP session of venue-f.
    let fix_connections = fix_truth.sessions + fix_truth.refused;
    let fix_tcp = metric(&body, "fix_connections_total", "venue-f");
    if fix_tcp != fix_connections as f64 {
        failures.push(format!(
            "venue-f: {fix_tcp} TCP sessions opened on /metrics, {} FIX sessions and {} refused \
             logons made",
            fix_truth.sessions, fix_truth.refused
        ));
    }
    let refused = metric(&body, "fix_session_logons_refused_total", "venue-f");
    if refused != fix_truth.refused as f64 {
        failures.push(format!(
            "venue-f: {refused} logons refused on /metrics, {} refused",
            fix_truth.refused
        ));
    }
    let connections_made = truth_a.opened.load(SeqCst)
        + truth_a.failed.load(SeqCst)
        + truth_b.opened.load(SeqCst)
        + truth_b.failed.load(SeqCst)
        + fix_connections;
    let fix_seen = check_fix(
        endpoint,
        fix_truth,
        truth_b.active(),
        connections_made,
        &mut failures,
    );
    drop((fix.venue, fix.refusing));

    // Growth after the warm-up.
    let warm: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.0 >= o.warmup.as_secs_f64())
        .collect();
    let rss_slope = slope(&warm.iter().map(|s| (s.0 / 60.0, s.1)).collect::<Vec<_>>());
    let fd_slope = slope(&warm.iter().map(|s| (s.0 / 60.0, s.2)).collect::<Vec<_>>());
    let (rss_first, rss_last) = (
        warm.first().map_or(0.0, |s| s.1),
        warm.last().map_or(0.0, |s| s.1),
    );
    let rss_max = samples.iter().map(|s| s.1).fold(0.0, f64::max);
    let (fd_min, fd_max) = (
        warm.iter().map(|s| s.2).fold(f64::INFINITY, f64::min),
        warm.iter().map(|s| s.2).fold(0.0, f64::max),
    );
    if warm.len() < 3 {
        failures.push(format!("only {} samples after the warm-up", warm.len()));
    }
    if rss_slope > RSS_SLOPE_LIMIT_KIB_PER_MIN {
        failures.push(format!(
            "RSS grows {rss_slope:.0} KiB/min after the warm-up (limit {RSS_SLOPE_LIMIT_KIB_PER_MIN})"
        ));
    }
    if fd_slope > FD_SLOPE_LIMIT_PER_MIN {
        failures.push(format!(
            "open files grow {fd_slope:.2}/min after the warm-up (limit {FD_SLOPE_LIMIT_PER_MIN})"
        ));
    }

    // Stop the sidecar as an operator would.
    release.store(true, SeqCst);
    flapper.join().unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut exit = None;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = sidecar.try_wait() {
            exit = Some(s);
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    match exit {
        Some(s) if s.success() => {}
        Some(s) => failures.push(format!("the sidecar exited with {s} on SIGTERM")),
        None => {
            let _ = sidecar.kill();
            let _ = sidecar.wait();
            failures.push("the sidecar did not exit within 15 s of SIGTERM".into());
        }
    }
    thread::sleep(Duration::from_millis(200)); // the log reader drains the pipe
    drop(vm);

    // The log: one line per open and close, and little else.
    let (opened_lines, closed_lines, others, ended_lines) = {
        let l = log_lines.lock().unwrap();
        (l.0, l.1, l.2.clone(), l.3)
    };
    // Every close is judged once ("session ended"), short-lived ones too (logged as opened).
    if ended_lines < closed_lines || ended_lines > opened_lines {
        failures.push(format!(
            "{ended_lines} 'session ended' lines for {closed_lines} closes, {opened_lines} opens"
        ));
    }
    let all_opened = (ta.0 + tb.0) as u64 + fix_connections;
    let all_closed_at_stop = (ta.1 + tb.1) as u64 + fix_connections;
    if opened_lines != all_opened {
        failures.push(format!(
            "{opened_lines} 'connection opened' lines for {all_opened} opens"
        ));
    }
    // The last venue-b sessions close at the very end: the sidecar logs those only if a poll
    // saw them go before SIGTERM.
    if closed_lines < all_closed_at_stop || closed_lines > all_closed_at_stop + FLAP_SESSIONS {
        failures.push(format!(
            "{closed_lines} 'connection closed' lines for {all_closed_at_stop} closes"
        ));
    }
    let warnings = others
        .iter()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .count();
    // Each reload: the signal, the outcome and the FIX layer's line.
    let reload_lines = |what: &str| others.iter().filter(|l| l.contains(what)).count() as u64;
    let (applied, refused) = (
        reload_lines("configuration reloaded"),
        reload_lines("configuration reload refused"),
    );
    if applied != reloads || refused != 0 {
        failures.push(format!(
            "{reloads} reloads asked for: {applied} applied, {refused} refused"
        ));
    }
    let reload_ok = metric(&body, "fix_monitor_config_last_reload_successful", "");
    if reload_ok != 1.0 {
        failures.push(format!(
            "fix_monitor_config_last_reload_successful is {reload_ok}"
        ));
    }
    let other_limit = 30 + 4 * outages + 3 * reloads as usize;
    if others.len() > other_limit {
        failures.push(format!(
            "{} log lines besides opens and closes (limit {other_limit}); first: {:?}",
            others.len(),
            others.iter().take(5).collect::<Vec<_>>()
        ));
    }

    let summary = serde_json::json!({
        "duration_s": soaked.as_secs_f64().round(),
        "warmup_s": o.warmup.as_secs(),
        "rate_per_s": o.rate,
        "lifetime_s": o.lifetime.as_secs(),
        "venue_a": { "opened": ta.0, "closed": ta.1, "active": ta.2, "max_open": max_a,
                     "metrics": [ga.0, ga.1, ga.2], "peak": peak_a },
        "venue_b": { "opened": tb.0, "closed": tb.1, "active": tb.2, "flaps": flaps.load(SeqCst),
                     "refused_retries": truth_b.failed.load(SeqCst), "metrics": [gb.0, gb.1, gb.2] },
        "reloads": reloads,
        "victoria_metrics": { "outages": outages, "venue_a_total": vm_a, "export_errors": export_errors },
        "fix": { "sessions": fix_truth.sessions, "sent": fix_truth.sent, "received": fix_truth.received,
                 "refused": fix_truth.refused, "failed": fix_truth.failed, "seen": fix_seen, "connections_made": connections_made,
                 "table_max": fix_followed_max },
        "scrapes": { "ok": scrapes.ok.load(SeqCst), "failed": scrapes.failed.load(SeqCst),
                     "max_ms": scrapes.max_ms.load(SeqCst) },
        "polls": polls,
        "rss_kib": { "max": rss_max, "after_warmup_first": rss_first, "last": rss_last,
                     "slope_kib_per_min": (rss_slope * 10.0).round() / 10.0 },
        "open_files": { "after_warmup_min": fd_min, "after_warmup_max": fd_max,
                        "slope_per_min": (fd_slope * 100.0).round() / 100.0 },
        "log": { "opened_lines": opened_lines, "closed_lines": closed_lines,
                 "other_lines": others.len(), "warnings": warnings },
        "samples": samples.iter().map(|s| [s.0.round(), s.1, s.2]).collect::<Vec<_>>(),
        "failures": failures,
    });
    std::fs::write(
        o.out.join("summary.json"),
        serde_json::to_string_pretty(&summary).unwrap(),
    )
    .unwrap();
    println!(
        "fix-soak: {:.0} s; venue-a opened {} closed {} (metrics {:?}); venue-b opened {} closed {} active {} over {} flaps (metrics {:?}); \
         VictoriaMetrics down {} times, has {:?}; {} scrapes ok, {} failed, slowest {} ms; {} polls; \
         RSS {:.0} -> {:.0} KiB after warm-up (max {:.0}), slope {:.1} KiB/min; open files {}-{}, slope {:.2}/min; \
         log: {} opened, {} closed, {} ended, {} other lines ({} warnings); {} reloads applied; \
         FIX: {} sessions, {} messages sent, {} received, {} logons refused, capture table at \
         most {}",
        soaked.as_secs_f64(), ta.0, ta.1, ga, tb.0, tb.1, tb.2, flaps.load(SeqCst), gb,
        outages, vm_a, scrapes.ok.load(SeqCst), scrapes.failed.load(SeqCst), scrapes.max_ms.load(SeqCst), polls,
        rss_first, rss_last, rss_max, rss_slope, fd_min, fd_max, fd_slope,
        opened_lines, closed_lines, ended_lines, others.len(), warnings, reloads,
        fix_truth.sessions, fix_truth.sent, fix_truth.received, fix_truth.refused,
        fix_followed_max
    );
    if failures.is_empty() {
        println!("fix-soak: PASS");
    } else {
        for f in &failures {
            println!("fix-soak: FAIL: {f}");
        }
        std::process::exit(1);
    }
}

/// A free port on `ip`, for a listener that must come back on the same address.
fn free_port_on(ip: Ipv4Addr) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The FIX layer's view now, from `/sessions`.
fn fix_seen(endpoint: SocketAddr) -> Option<fix_load::FixSeen> {
    let (_, body) = http_get(endpoint, "/sessions").ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some(fix_load::FixSeen::parse(&v))
}

/// Waits (bounded) for the FIX layer to agree with the gateway, then checks it: logons and
/// messages each way, one FIX session, the capture table holding only the `open` sessions and
/// every other connection ended once, none refused for room. Returns what it saw.
fn check_fix(
    endpoint: SocketAddr,
    truth: fix_load::FixTruth,
    open: u64,
    made: u64,
    failures: &mut Vec<String>,
) -> fix_load::FixSeen {
    let agrees = |s: &fix_load::FixSeen| {
        (s.logons, s.sent, s.received) == (truth.sessions, truth.sent, truth.received)
            && s.refused == truth.refused
            && s.followed == open
            && (s.capture_drops > 0 || s.ended + s.followed == made)
    };
    let mut seen = fix_load::FixSeen::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(s) = fix_seen(endpoint) {
            seen = s;
            if agrees(&s) {
                break;
            }
        }
        thread::sleep(Duration::from_millis(250));
    }
    if truth.sessions == 0 || truth.failed > 0 {
        failures.push(format!(
            "FIX gateway: {truth:?} (sessions made, none failed)"
        ));
    }
    if (seen.logons, seen.sent, seen.received) != (truth.sessions, truth.sent, truth.received) {
        failures.push(format!(
            "FIX: (logons, sent, received) = {:?} on /sessions, the gateway's {:?}",
            (seen.logons, seen.sent, seen.received),
            (truth.sessions, truth.sent, truth.received)
        ));
    }
    if seen.refused != truth.refused {
        failures.push(format!(
            "FIX: {} logons refused on /sessions, the gateway had {}",
            seen.refused, truth.refused
        ));
    }
    let made_sessions = 1 + u64::from(truth.refused > 0);
    if seen.sessions != made_sessions {
        failures.push(format!(
            "FIX: {} sessions tracked, {made_sessions} made",
            seen.sessions
        ));
    }
    if seen.followed != open {
        failures.push(format!(
            "FIX capture: {} connections in the table, {open} open",
            seen.followed
        ));
    }
    if seen.not_followed != 0 {
        failures.push(format!("FIX capture: {} not followed", seen.not_followed));
    }
    if seen.capture_drops == 0 && seen.ended + seen.followed != made {
        failures.push(format!(
            "FIX capture: {} ended + {} followed, {made} connections made",
            seen.ended, seen.followed
        ));
    }
    seen
}
