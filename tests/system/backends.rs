//! Real metrics backends as test processes: Prometheus (scrapes fix-monitor) and VictoriaMetrics
//! (takes OTLP pushes), each on a free port, with a temporary data directory, a bounded wait
//! until it is ready, and a kill on drop. Both answer PromQL on `/api/v1/query`, so one
//! [`Backend`] wrapper and one [`Backend::query`] serve both.
//!
//! ```ignore
//! let prom = Backend::prometheus(None, &scrape_config("fix-monitor", &[sidecar.addr]));
//! prom.wait_value("up", r#"up{job="fix-monitor"}"#, 1.0, Duration::from_secs(20));
//! let rows = prom.query("sum by (target) (fix_connections_active)"); // Vec<(Labels, f64)>
//!
//! let vm = Backend::victoria_metrics(None, &["-opentelemetry.usePrometheusNaming"]);
//! let otlp = format!("{}/opentelemetry/v1/metrics", vm.url()); // where a sidecar pushes
//! vm.force_flush();                                   // make just-ingested samples queryable
//! ```
//!
//! A backend can also run inside a test network namespace (pass `Some(&ns)`): it is then started
//! with `ip netns exec` and every request to it is made from a thread inside that namespace.
//!
//! Binaries: `$PROMETHEUS` or `prometheus` on PATH (Debian's package; scripts/fetch-tools.sh
//! installs it); `$VICTORIA_METRICS`, else `victoria-metrics` on PATH, else
//! `.tools/bin/victoria-metrics` (fetch-tools.sh puts trixie's package there). A missing binary
//! fails the test: these tests exist to run against the real thing.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::netns::{in_netns, NetNs};

/// A series' labels, `__name__` included when the backend returns it.
pub type Labels = BTreeMap<String, String>;

/// One row of an instant query: the series' labels and its value (`NaN`, `±Inf` as such).
pub type Sample = (Labels, f64);

/// How long a backend may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running backend process. Killed on drop (with the tail of its log printed if the test is
/// failing); its data directory goes with it.
pub struct Backend {
    /// `prometheus`, `victoria-metrics`, ...: used in messages.
    pub kind: &'static str,
    /// Where requests go: 127.0.0.1:PORT (inside `netns`, when there is one).
    pub addr: SocketAddr,
    netns: Option<String>,
    child: Child,
    log_path: PathBuf,
    // Dropped after `child` is killed (Drop runs before fields drop).
    dir: tempfile::TempDir,
}

/// How to start one kind of backend.
pub struct Spec<'a> {
    pub kind: &'static str,
    pub program: PathBuf,
    /// Arguments, given the address to listen on (127.0.0.1:PORT, or 0.0.0.0:PORT inside a
    /// namespace) and the data directory (`data/` in it is empty).
    pub args: &'a dyn Fn(SocketAddr, &Path) -> Vec<String>,
    /// A path that answers 200 once the backend serves queries.
    pub ready_path: &'a str,
    /// Run inside this namespace (via `ip netns exec`); `None`: this process' namespace.
    pub netns: Option<&'a NetNs>,
    /// Files to write into the data directory before start (name, content): configs.
    pub files: &'a [(&'a str, String)],
}

impl Backend {
    /// Starts a backend and waits (bounded) until `ready_path` answers 200. A port taken between
    /// choosing it and the process binding it is retried with another port (three attempts).
    pub fn start(spec: Spec<'_>) -> Backend {
        assert!(
            spec.program.exists() || which(&spec.program).is_some(),
            "{} is required but {} was not found (scripts/fetch-tools.sh installs it)",
            spec.kind,
            spec.program.display()
        );
        let mut last_log = String::new();
        for _attempt in 0..3 {
            STALE_DIRS.call_once(delete_stale_dirs);
            let dir = tempfile::Builder::new()
                .prefix(&format!(
                    "{DIR_PREFIX}{}-{}-",
                    std::process::id(),
                    spec.kind
                ))
                .tempdir()
                .expect("temp dir");
            for (name, content) in spec.files {
                std::fs::write(dir.path().join(name), content).expect("writing backend file");
            }
            let data = dir.path().join("data");
            std::fs::create_dir(&data).unwrap();
            let ns_name = spec.netns.map(|n| n.name.clone());
            let port = match &ns_name {
                Some(ns) => in_netns(ns, free_port),
                None => free_port(),
            };
            // Requests go to loopback. Inside a test namespace the backend also listens on the
            // namespace's other addresses (nothing outside the namespaces can reach them), so
            // that sidecars in other namespaces can push to it.
            let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
            let bind = match spec.netns {
                Some(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
                None => addr,
            };
            let log_path = dir.path().join("backend.log");
            let log = File::create(&log_path).unwrap();
            let mut cmd = match spec.netns {
                Some(ns) => ns.command(&spec.program),
                None => Command::new(&spec.program),
            };
            cmd.args((spec.args)(bind, dir.path()))
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log));
            die_with_parent(&mut cmd);
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("spawning {}: {e}", spec.program.display()));
            let mut backend = Backend {
                kind: spec.kind,
                addr,
                netns: ns_name,
                child,
                log_path,
                dir,
            };
            match backend.wait_ready(spec.ready_path) {
                Ok(()) => return backend,
                Err(why) => {
                    last_log = backend.log();
                    let port_taken = last_log.contains("address already in use");
                    drop(backend);
                    if !port_taken {
                        panic!(
                            "{} did not become ready: {why}\n--- its log ---\n{last_log}",
                            spec.kind
                        );
                    }
                }
            }
        }
        panic!(
            "{}: no free port after 3 attempts\n--- its log ---\n{last_log}",
            spec.kind
        );
    }

    /// A Prometheus with `config` (YAML) as its configuration file, in `netns` or on loopback.
    pub fn prometheus(netns: Option<&NetNs>, config: &str) -> Backend {
        let program = tool("PROMETHEUS", "prometheus");
        let args = |addr: SocketAddr, dir: &Path| {
            vec![
                format!("--config.file={}", dir.join("prometheus.yml").display()),
                format!("--storage.tsdb.path={}", dir.join("data").display()),
                format!("--web.listen-address={addr}"),
                "--storage.tsdb.retention.time=1d".into(),
                "--log.level=warn".into(),
            ]
        };
        let files = [("prometheus.yml", config.to_string())];
        Backend::start(Spec {
            kind: "prometheus",
            program,
            args: &args,
            ready_path: "/-/ready",
            netns,
            files: &files,
        })
    }

    /// A single-node VictoriaMetrics, in `netns` or on loopback. It takes OTLP/HTTP on
    /// `{url}/opentelemetry/v1/metrics` and Prometheus remote write on `{url}/api/v1/write`.
    /// Set up for tests: no query latency offset and no result cache, so that what was just
    /// ingested (after [`Backend::force_flush`]) is what a query sees. `extra` is appended,
    /// e.g. `-opentelemetry.usePrometheusNaming`.
    pub fn victoria_metrics(netns: Option<&NetNs>, extra: &[&str]) -> Backend {
        let program = tool_or_local("VICTORIA_METRICS", "victoria-metrics");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let args = move |addr: SocketAddr, dir: &Path| {
            let mut a = vec![
                format!("-httpListenAddr={addr}"),
                format!("-storageDataPath={}", dir.join("data").display()),
                "-retentionPeriod=1d".into(),
                "-search.latencyOffset=0s".into(),
                "-search.disableCache".into(),
                "-loggerLevel=WARN".into(),
            ];
            a.extend(extra.iter().cloned());
            a
        };
        Backend::start(Spec {
            kind: "victoria-metrics",
            program,
            args: &args,
            ready_path: "/health",
            netns,
            files: &[],
        })
    }

    /// `http://ADDR` (reachable from inside the backend's namespace only, if it has one).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://IP:PORT`: the URL under which processes in other namespaces of the same test LAN
    /// reach it (`ip` is its namespace's LAN address). Only for backends in a namespace.
    pub fn url_at(&self, ip: IpAddr) -> String {
        assert!(
            self.netns.is_some(),
            "a loopback backend is reachable on loopback only"
        );
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// The namespace it runs in, if any.
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// Its stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// One HTTP request to the backend (from inside its namespace): status and body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> std::io::Result<(u16, String)> {
        let addr = self.addr;
        match &self.netns {
            Some(ns) => in_netns(ns, || http(addr, method, path, body)),
            None => http(addr, method, path, body),
        }
    }

    /// Runs an instant query now; `Err` with the backend's error text if it rejects it.
    pub fn try_query(&self, promql: &str) -> Result<Vec<Sample>, String> {
        let form = format!("query={}", urlencode(promql));
        let (code, body) = self
            .request(
                "POST",
                "/api/v1/query",
                Some(("application/x-www-form-urlencoded", form.as_bytes())),
            )
            .map_err(|e| format!("{}: request failed: {e}", self.kind))?;
        parse_query_response(&body).map_err(|e| format!("HTTP {code}: {e}"))
    }

    /// Runs an instant query now; panics (with the query and the error) if it fails.
    pub fn query(&self, promql: &str) -> Vec<Sample> {
        self.try_query(promql)
            .unwrap_or_else(|e| panic!("{} query `{promql}` failed: {e}", self.kind))
    }

    /// The value of a query that returns at most one series (`None`: no series).
    pub fn value(&self, promql: &str) -> Option<f64> {
        let rows = self.query(promql);
        assert!(
            rows.len() <= 1,
            "`{promql}` returned {} series, expected at most one: {rows:?}",
            rows.len()
        );
        rows.first().map(|(_, v)| *v)
    }

    /// Waits (bounded) until `f` holds; panics with `what` and the last thing `f` said.
    /// `f` returns `Ok(())` when satisfied, `Err(description)` otherwise.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&Backend) -> Result<(), String>,
    ) {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            match f(self) {
                Ok(()) => return,
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "{}: timed out after {timeout:?} waiting for {what}; last: {last}",
            self.kind
        );
    }

    /// Waits (bounded) until the single-series `promql` equals `want`.
    pub fn wait_value(&self, what: &str, promql: &str, want: f64, timeout: Duration) {
        self.wait_for(what, timeout, |b| match b.try_query(promql) {
            Ok(rows) if rows.len() == 1 && rows[0].1 == want => Ok(()),
            Ok(rows) => Err(format!("`{promql}` = {rows:?}, want {want}")),
            Err(e) => Err(e),
        });
    }

    /// VictoriaMetrics only: makes recently ingested samples visible to queries at once.
    pub fn force_flush(&self) {
        assert_eq!(
            self.kind, "victoria-metrics",
            "force_flush is a VictoriaMetrics call"
        );
        let (code, body) = self
            .request("GET", "/internal/force_flush", None)
            .expect("force_flush request");
        assert_eq!(code, 200, "force_flush: {body}");
    }

    fn wait_ready(&mut self, path: &str) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("exited with {status}"));
            }
            match self.request("GET", path, None) {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => last = format!("{path}: HTTP {code} {}", body.trim()),
                Err(e) => last = format!("{path}: {e}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("not ready after {READY_TIMEOUT:?} ({last})"))
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!(
                "--- last lines of the {} log ({}) ---",
                self.kind,
                self.log_path.display()
            );
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// Makes the child get SIGKILL when the thread that spawned it exits, so that a test process
/// that is killed (no `Drop`) leaves no backend running. The signal survives `exec`, so it
/// also covers `ip netns exec ...`, `unshare ... sh -c 'exec ...'` chains. Spawn from the thread
/// that owns the process (the test's own thread), not from a short-lived helper thread.
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl(2) is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Temporary directories are `DIR_PREFIX<pid>-<kind>-XXXXXX`.
const DIR_PREFIX: &str = "fixmon-backend-";
static STALE_DIRS: std::sync::Once = std::sync::Once::new();

/// Removes the data directories of test processes that are gone (killed before their `Drop`).
fn delete_stale_dirs() {
    let tmp = std::env::temp_dir();
    let Ok(entries) = std::fs::read_dir(&tmp) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if crate::netns::owner_is_gone(&name, DIR_PREFIX) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// A Prometheus configuration that scrapes `targets` every second as job `job`.
pub fn scrape_config(job: &str, targets: &[SocketAddr]) -> String {
    let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: '{job}'\n    static_configs:\n      - targets: [{}]\n",
        list.join(", ")
    )
}

pub use crate::harness::free_port;

/// `$ENV` if set, else `name` (looked up on PATH when run).
pub fn tool(env: &str, name: &str) -> PathBuf {
    match std::env::var_os(env) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => which(Path::new(name)).unwrap_or_else(|| PathBuf::from(name)),
    }
}

/// Like [`tool`], falling back to the repository's `.tools/bin/NAME`.
pub fn tool_or_local(env: &str, name: &str) -> PathBuf {
    let t = tool(env, name);
    if t.is_absolute() {
        return t;
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".tools/bin")
        .join(name)
}

/// `program` found on PATH (or as given, if it is a path).
pub fn which(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Parses a `/api/v1/query` answer (Prometheus and VictoriaMetrics speak the same JSON).
pub fn parse_query_response(body: &str) -> Result<Vec<Sample>, String> {
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("not JSON ({e}): {body}"))?;
    if v["status"] != "success" {
        return Err(format!(
            "{}: {}",
            v["errorType"].as_str().unwrap_or("error"),
            v["error"].as_str().unwrap_or(body)
        ));
    }
    let data = &v["data"];
    let number = |p: &serde_json::Value| -> Result<f64, String> {
        let s = p[1].as_str().ok_or_else(|| format!("bad sample {p}"))?;
        parse_value(s).ok_or_else(|| format!("bad value {s:?}"))
    };
    match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .ok_or("no result array")?
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                Ok((labels, number(&r["value"])?))
            })
            .collect(),
        Some("scalar") => Ok(vec![(Labels::new(), number(&data["result"])?)]),
        other => Err(format!("unsupported resultType {other:?}: {body}")),
    }
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        s => s.parse().ok(),
    }
}

/// application/x-www-form-urlencoded.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A minimal HTTP/1.0 client (so that it works on a thread inside a network namespace, where
/// a client with its own runtime threads would connect from the wrong namespace). Handles
/// `Content-Length`, close-delimited and chunked bodies.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some((ctype, b)) = body {
        req.push_str(&format!(
            "Content-Type: {ctype}\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    let mut raw = req.into_bytes();
    if let Some((_, b)) = body {
        raw.extend_from_slice(b);
    }
    s.write_all(&raw)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of HTTP headers"))?;
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let mut payload = resp[split + 4..].to_vec();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    if head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    }) {
        payload = dechunk(&payload);
    }
    Ok((code, String::from_utf8_lossy(&payload).into_owned()))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        b = &b[eol + 2..];
        if size == 0 || size > b.len() {
            break;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[(size + 2).min(b.len())..];
    }
    out
}

/// The backend module itself against the real VictoriaMetrics (what the OTLP tests reuse):
/// starts on loopback, ingests one sample through its Prometheus import API, and answers a
/// PromQL query with it; stops on drop.
#[test]
fn victoria_metrics_backend_starts_ingests_and_answers_queries() {
    let vm = Backend::victoria_metrics(None, &[]);
    let (code, body) = vm
        .request(
            "POST",
            "/api/v1/import/prometheus",
            Some((
                "text/plain",
                b"fix_backend_selftest{target=\"venue-a\",host=\"gw-1\"} 7\n",
            )),
        )
        .unwrap();
    assert!(code == 204 || code == 200, "import: {code} {body}");
    vm.force_flush();
    vm.wait_value(
        "the imported sample",
        r#"sum(fix_backend_selftest{host="gw-1"})"#,
        7.0,
        Duration::from_secs(15),
    );
    let rows = vm.query("fix_backend_selftest");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0.get("target").map(String::as_str), Some("venue-a"));
    let err = vm.try_query("sum(").unwrap_err();
    assert!(!err.is_empty());
}
