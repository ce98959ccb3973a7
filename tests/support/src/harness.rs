//! Running the real binary, and the connections that are the tests' ground truth.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The `fix-monitor` binary that cargo built for the test run: beside the test executable's
/// `deps/` folder (`target/<profile>/fix-monitor`), as cargo lays out a test build.
/// As `&str` (the path is made of cargo's target folder names: UTF-8, as cargo needs).
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test executable's path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("a test executable under target/<profile>/deps");
        let bin = dir.join(format!("fix-monitor{}", std::env::consts::EXE_SUFFIX));
        assert!(
            bin.exists(),
            "{} is missing: the integration tests build it (cargo test --tests)",
            bin.display()
        );
        bin.into_os_string()
            .into_string()
            .expect("a UTF-8 target folder")
    })
}

/// A free loopback port (bound, then released: a test binds it again at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A command line refused before anything started: exit 64 (EX_USAGE), stderr naming each of
/// `needles`, and no sign of a start.
pub fn assert_usage_error(o: &std::process::Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(64), "exit code; stderr:\n{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
    assert!(
        !err.contains("listening on"),
        "started despite a bad config:\n{err}"
    );
}

/// A command for the binary with a clean environment: no FIX_MONITOR_* or DOWNSTREAM_*
/// variables leak in from the developer's shell, and no OTEL_* either.
pub fn command() -> Command {
    let mut c = Command::new(bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("FIX_MONITOR_") || k.starts_with("DOWNSTREAM_") || k.starts_with("OTEL_") {
            c.env_remove(k);
        }
    }
    c.env("NO_COLOR", "1");
    c
}

/// A running sidecar. Killed on drop; `terminate` stops it the way an operator would.
pub struct Sidecar {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    /// The thread reading stderr into `log`: done once the child's stderr is closed.
    reader: Option<thread::JoinHandle<()>>,
}

impl Sidecar {
    /// Starts `fix-monitor run ARGS` listening on an ephemeral loopback port, and waits until
    /// it says where it listens.
    pub fn start(args: &[&str]) -> Sidecar {
        Sidecar::start_with(command(), args)
    }

    pub fn start_with(mut cmd: Command, args: &[&str]) -> Sidecar {
        cmd.arg("run").args(args);
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        // The sidecar dies with the test thread that started it, even if the test process
        // is killed (a crashed run must not leave sidecars behind).
        // SAFETY: prctl(2) is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning fix-monitor");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = {
            let log = log.clone();
            let stderr = child.stderr.take().unwrap();
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let rest = line.split("listening on http://").nth(1);
                    if let Some(rest) = rest.or_else(|| line.split("listening on https://").nth(1))
                    {
                        let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                        let _ = tx.send(addr);
                    }
                    log.lock().unwrap().push(line);
                }
            })
        };
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a.parse().expect("listen address"),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "fix-monitor did not start; its log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        Sidecar {
            child,
            addr,
            log,
            reader: Some(reader),
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// GET `path`, returning status and body.
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path)
    }

    pub fn json(&self, path: &str) -> serde_json::Value {
        let (code, body) = self.get(path);
        assert!(code == 200 || code == 503, "{path}: {code} {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    }

    pub fn metrics(&self) -> Metrics {
        let (code, body) = self.get("/metrics");
        assert_eq!(code, 200, "{body}");
        Metrics::parse(&body)
    }

    /// Waits (bounded) until `f` holds, then returns; panics with the log otherwise.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut f: impl FnMut(&Sidecar) -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if f(self) {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("timed out waiting for {what}; log:\n{}", self.log());
    }

    /// Waits until the sidecar has completed `n` more polls than now.
    pub fn wait_polls(&self, n: u64) {
        let start = self.json("/health")["polls"].as_u64().unwrap();
        self.wait_for("polls", Duration::from_secs(20), |s| {
            s.json("/health")["polls"].as_u64().unwrap() >= start + n
        });
    }

    /// SIGTERM, then waits (bounded) for the exit.
    pub fn terminate(mut self) -> (ExitStatus, String) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // Its last lines: the reader ends when the closed pipe is drained.
                if let Some(reader) = self.reader.take() {
                    join_within(
                        "the end of the sidecar's log",
                        Duration::from_secs(5),
                        reader,
                    );
                }
                return (st, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "no exit after SIGTERM:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (bounded) until `f` holds, checking every 50 ms; panics naming `what` otherwise.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (bounded) for `handle`'s thread to end (a reader thread reaching the end of a pipe),
/// then joins it, passing on its panic.
pub fn join_within<T>(what: &str, timeout: Duration, handle: thread::JoinHandle<T>) -> T {
    wait_until(what, timeout, || handle.is_finished());
    handle
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// A run of consecutive local ports on 127.0.0.1, free when chosen and held for one test, for
/// the tests of `local_ports` filtering (which need ports they pick themselves, not port 0).
///
/// Chosen at run time below the kernel's ephemeral range (`ip_local_port_range`), so that
/// neither port-0 binds nor outgoing connections land in it, and reserved while the value
/// lives: every port has a socket bound to it with `SO_REUSEADDR` and not listening. That
/// lets `connect_from` (also `SO_REUSEADDR`) use the ports, while any other test's `reserve`,
/// whose probe bind has no `SO_REUSEADDR`, finds them taken and picks another run.
pub struct PortRange {
    pub first: u16,
    pub last: u16,
    _held: Vec<socket2::Socket>,
}

impl PortRange {
    /// `len` free consecutive ports (bounded search; panics when none are found).
    pub fn reserve(len: u16) -> PortRange {
        use socket2::{Domain, Socket, Type};
        assert!(len > 0);
        let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
            .unwrap_or(32768);
        let (low, high) = (10_000u32, ephemeral_low.saturating_sub(u32::from(len)));
        assert!(
            high > low,
            "no room below the ephemeral port range ({ephemeral_low}) for {len} ports"
        );
        // A pseudo-random start (process id, clock, a counter), then the following runs.
        static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let seed = std::process::id()
            .wrapping_mul(2_654_435_761)
            .wrapping_add(nanos)
            .wrapping_add(
                CALLS
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    .wrapping_mul(40_503),
            );
        let span = high - low;
        let mut tried = Vec::new();
        for attempt in 0..200u32 {
            let first = low + (seed.wrapping_add(attempt.wrapping_mul(7_919))) % span;
            let mut held = Vec::with_capacity(usize::from(len));
            let free = (first..first + u32::from(len)).all(|p| {
                let addr: SocketAddr = ([127, 0, 0, 1], p as u16).into();
                // Free: a plain bind succeeds (no socket at all on it, not even TIME_WAIT or
                // another test's reservation). Then held with SO_REUSEADDR.
                // (std's TcpListener::bind sets SO_REUSEADDR, so the probe is a bare socket.)
                let probe = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
                if probe.bind(&addr.into()).is_err() {
                    return false;
                }
                drop(probe);
                let hold = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
                hold.set_reuse_address(true).unwrap();
                if hold.bind(&addr.into()).is_err() {
                    return false;
                }
                held.push(hold);
                true
            });
            if free {
                return PortRange {
                    first: first as u16,
                    last: (first + u32::from(len) - 1) as u16,
                    _held: held,
                };
            }
            tried.push(first);
        }
        panic!("no {len} free consecutive ports below {ephemeral_low}; tried runs from {tried:?}");
    }

    /// The `i`th port of the run.
    pub fn port(&self, i: u16) -> u16 {
        assert!(
            i <= self.last - self.first,
            "port {i} of {}-{}",
            self.first,
            self.last
        );
        self.first + i
    }

    /// `127.0.0.1:PORT` for the `i`th port, for `connect_from`.
    pub fn local(&self, i: u16) -> String {
        format!("127.0.0.1:{}", self.port(i))
    }
}

/// A minimal HTTP/1.0 GET, so the tests see exactly what the server sends.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

/// Parsed Prometheus text exposition: series (name and sorted labels) to value.
#[derive(Debug, Default)]
pub struct Metrics {
    pub series: Vec<(String, BTreeMap<String, String>, f64)>,
    pub text: String,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut series = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (lhs, value) = line.rsplit_once(' ').expect("sample line");
            let (name, labels) = match lhs.split_once('{') {
                Some((n, rest)) => (n, parse_labels(rest.trim_end_matches('}'))),
                None => (lhs, BTreeMap::new()),
            };
            let v = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("value in {line}")),
            };
            series.push((name.to_string(), labels, v));
        }
        Metrics {
            series,
            text: text.to_string(),
        }
    }

    /// The value of the one series named `name` whose labels include `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<f64> = self
            .series
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(v))
            })
            .map(|(_, _, v)| *v)
            .collect();
        assert!(
            found.len() <= 1,
            "{name} {labels:?} is ambiguous: {found:?}"
        );
        found.first().copied()
    }

    /// Like `get`, but 0 for a missing series (a counter never incremented).
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// The sum of every series named `name` whose labels include `labels` (0 for none): a
    /// total over the labels left out, such as `fix_connections_closed_total`'s `by`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|(_, v)| v).sum()
    }

    /// The series named `name` whose labels include `labels`, by the value of label `by`
    /// (`fix_connections_closed_total` by who hung up).
    pub fn by(&self, name: &str, labels: &[(&str, &str)], by: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (l, v) in self.matching(name, labels) {
            let key = l.get(by).cloned().unwrap_or_default();
            *out.entry(key).or_insert(0.0) += v;
        }
        out
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = (&'a BTreeMap<String, String>, f64)> + 'a {
        self.series.iter().filter_map(move |(n, l, v)| {
            (n == name
                && labels
                    .iter()
                    .all(|(k, want)| l.get(*k).map(String::as_str) == Some(want)))
            .then_some((l, *v))
        })
    }
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some((k, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(k.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    out
}

/// A downstream: a listener that accepts and holds every connection until dropped.
pub struct Downstream {
    pub addr: SocketAddr,
    held: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Downstream {
    pub fn listen(addr: &str) -> Downstream {
        let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let addr = l.local_addr().unwrap();
        l.set_nonblocking(true).unwrap();
        let held = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let (held, stop) = (held.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match l.accept() {
                        Ok((s, _)) => held.lock().unwrap().push(s),
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
        }
        Downstream { addr, held, stop }
    }
}

impl Drop for Downstream {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.held.lock().unwrap().clear();
    }
}

/// Connects to `remote` from `local` (port 0: any), as a gateway's FIX session does.
pub fn connect_from(local: &str, remote: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let local: SocketAddr = local.parse().unwrap();
    let s = Socket::new(Domain::for_address(remote), Type::STREAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&local.into())
        .unwrap_or_else(|e| panic!("bind {local}: {e}"));
    s.connect_timeout(&remote.into(), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {local} -> {remote}: {e}"));
    s.into()
}

/// Writes `text` to a fresh temporary config file.
pub fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

/// Runs `promtool check metrics` on `text`; a missing promtool fails the test.
pub fn promtool_check_metrics(text: &str) {
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is required (scripts/fetch-tools.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{said}\n---\n{text}"
    );
}

pub fn promtool() -> String {
    std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into())
}

pub fn read_all(mut r: impl Read) -> String {
    let mut s = String::new();
    r.read_to_string(&mut s).unwrap();
    s
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

/// A config with two targets: venue-a (`a`, local ports `range`) and venue-b (`b`).
pub fn two_targets(a: SocketAddr, b: SocketAddr, range: (u16, u16)) -> tempfile::NamedTempFile {
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

/// The source `auto` takes in this process's circumstances: eBPF where the program may load
/// (root, or CAP_BPF and CAP_PERFMON), netlink otherwise (config/README.md, "eBPF mode").
pub fn auto_source() -> &'static str {
    if fix_monitor::source::ebpf::missing_capabilities().is_empty() {
        "ebpf"
    } else {
        "netlink"
    }
}

/// The two simulated venues the FIX tests drive: one that acks after `ack_delay`, rejects every
/// `reject_every`-th order and skips sequence numbers (`gap`: after which message, how many),
/// and one (`VENUE2`) that refuses every logon.
pub fn fix_venues(
    ips: [std::net::IpAddr; 2],
    ack_delay: Duration,
    reject_every: u64,
    gap: (u64, u64),
) -> (fix_monitor::fix::sim::Venue, fix_monitor::fix::sim::Venue) {
    use fix_monitor::fix::sim::{Venue, VenueBehaviour};
    let venue = Venue::start(
        SocketAddr::new(ips[0], 0),
        VenueBehaviour {
            ack_delay,
            business_reject_every: Some(reject_every),
            gap_after: Some(gap),
            ..VenueBehaviour::default()
        },
    )
    .unwrap();
    let refusing = Venue::start(
        SocketAddr::new(ips[1], 0),
        VenueBehaviour {
            comp_id: "VENUE2".into(),
            refuse_logons: Some("not authorised".into()),
            ..VenueBehaviour::default()
        },
    )
    .unwrap();
    (venue, refusing)
}
