//! What each fuzz target does with one input. Shared by the AFL++ binaries (`fuzz/src/bin/`)
//! and by the first-tier test that replays every saved case (`tests/integration/
//! fuzz_regressions.rs`), so a case the fuzzer found is checked by `cargo test` ever after.
//!
//! A target panics exactly when it finds a bug: a parser that panics, or an answer that breaks
//! a property the parser promises (the same properties as `tests/integration/properties.rs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, UNIX_EPOCH};

use fix_monitor::source::bytecode::{self, mirror};
use fix_monitor::source::netlink::parse_dump;
use fix_monitor::source::procfs;
use fix_monitor::target::{PortRange, Target, Targets};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The targets every socket matches, IPv4 and IPv6.
fn everything() -> Targets {
    Targets::new(vec![
        Target {
            name: "v4".into(),
            net: "0.0.0.0/0".parse().unwrap(),
            port: None,
            local_ports: None,
            heartbeat: None,
            stale_after: None,
        },
        Target {
            name: "v6".into(),
            net: "::/0".parse().unwrap(),
            port: None,
            local_ports: None,
            heartbeat: None,
            stale_after: None,
        },
    ])
}

/// One datagram of a `sock_diag` reply: an answer, never a panic, and no more sockets than the
/// bytes can hold (a header and an `inet_diag_msg` each).
pub fn netlink_dump(data: &[u8]) {
    let mut out = Vec::new();
    let _ = parse_dump(data, &mut out);
    assert!(out.len() <= data.len() / (16 + 72), "{} sockets", out.len());
}

/// A `/proc/net/tcp` or `/proc/net/tcp6` text: rows or errors, never a panic. A row that
/// parses is printed back the kernel's way and must parse to the same socket.
pub fn procfs_table(data: &[u8]) {
    let _ = procfs::parse_table(data, &everything(), &mut Vec::new());
    for row in procfs::rows(data).flatten() {
        let words = |b: &[u8]| -> String {
            b.chunks(4)
                .map(|w| format!("{:08X}", u32::from_ne_bytes(w.try_into().unwrap())))
                .collect()
        };
        let addr = |a: &SocketAddr| {
            let ip = match a.ip() {
                IpAddr::V4(ip) => words(&ip.octets()),
                IpAddr::V6(ip) => words(&ip.octets()),
            };
            format!("{ip}:{:04X}", a.port())
        };
        let state = (0..=255u8)
            .find(|&n| fix_monitor::source::TcpState::from_linux(n) == row.state)
            .unwrap();
        let line = format!(
            "   0: {} {} {state:02X} 00000000:00000000 00:00000000 00000000     0        0 {} 1",
            addr(&row.local),
            addr(&row.remote),
            row.id
        );
        let again = procfs::rows(line.as_bytes()).next().unwrap().unwrap();
        // A state number the parser maps to Unknown comes back as another unknown number.
        assert_eq!(
            (again.local, again.remote, again.id),
            (row.local, row.remote, row.id)
        );
        assert_eq!(again.state, row.state);
    }
}

/// Reads the input as a little program of targets and sockets.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }
    fn bytes<const N: usize>(&mut self) -> Option<[u8; N]> {
        let mut b = [0; N];
        for x in &mut b {
            *x = self.u8()?;
        }
        Some(b)
    }
    fn ip(&mut self, flags: u8) -> Option<IpAddr> {
        Some(match flags % 4 {
            0 => IpAddr::V4(Ipv4Addr::from(self.bytes::<4>()?)),
            1 => IpAddr::V6(Ipv4Addr::from(self.bytes::<4>()?).to_ipv6_mapped()),
            2 => IpAddr::V6(Ipv4Addr::from(self.bytes::<4>()?).to_ipv6_compatible()),
            _ => IpAddr::V6(Ipv6Addr::from(self.bytes::<16>()?)),
        })
    }
}

fn decode_target(c: &mut Cursor) -> Option<Target> {
    let flags = c.u8()?;
    let ip = c.ip(flags)?;
    let prefix = c.u8()?;
    let net = match ip {
        IpAddr::V4(a) => IpNet::V4(Ipv4Net::new(a, prefix % 33).unwrap()),
        IpAddr::V6(a) => IpNet::V6(Ipv6Net::new(a, prefix % 129).unwrap()),
    };
    let port = if flags & 0x10 != 0 {
        Some(c.u16()?)
    } else {
        None
    };
    let local_ports = if flags & 0x20 != 0 {
        let (a, b) = (c.u16()?, c.u16()?);
        Some(PortRange {
            start: a.min(b),
            end: a.max(b),
        })
    } else {
        None
    };
    Some(Target {
        name: Target::default_name(&net, port),
        net,
        port,
        local_ports,
        heartbeat: None,
        stale_after: None,
    })
}

/// The kernel-filter compiler: the input names up to 8 targets (or, with the first byte's top
/// bit, that many copies of them, up to past the program's limit) and then sockets. The
/// program must pass the mirror of the kernel's audit and accept exactly the sockets
/// `Targets::classify` attributes, the given ones and every target's own first address.
pub fn bytecode(data: &[u8]) {
    let mut c = Cursor(data);
    let Some(head) = c.u8() else { return };
    let mut targets = Vec::new();
    for _ in 0..head % 8 {
        match decode_target(&mut c) {
            Some(t) => targets.push(t),
            None => break,
        }
    }
    if head & 0x80 != 0 && !targets.is_empty() {
        let copies = 1 + 1000 / targets.len();
        targets = targets
            .iter()
            .cycle()
            .take(copies * targets.len())
            .cloned()
            .collect();
    }
    let targets = Targets::new(targets);
    let bc = match bytecode::compile(&targets) {
        Ok(bc) => bc,
        Err(e) => {
            assert!(e.len > bytecode::MAX_LEN, "refused at {} bytes", e.len);
            return;
        }
    };
    assert!(bc.len() <= bytecode::MAX_LEN);
    if let Err(e) = mirror::audit(&bc) {
        panic!("the kernel's audit would refuse the program: {e}");
    }
    let mut probes = Vec::new();
    for t in targets.iter().take(8) {
        let local_port = t.local_ports.map_or(1, |r| r.start);
        probes.push((t.net.network(), t.port.unwrap_or(1), local_port));
        probes.push((t.net.broadcast(), t.port.unwrap_or(1), local_port));
    }
    while let Some(flags) = c.u8() {
        let (Some(ip), Some(port), Some(local_port)) = (c.ip(flags), c.u16(), c.u16()) else {
            break;
        };
        probes.push((ip, port, local_port));
    }
    for (ip, port, local_port) in probes {
        let local_ip = match ip {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        let (local, remote) = (
            SocketAddr::new(local_ip, local_port),
            SocketAddr::new(ip, port),
        );
        let want = targets.classify(&local, &remote).is_some();
        let got = mirror::run(&bc, &mirror::Entry::new(&local, &remote));
        assert_eq!(got, want, "{local} -> {remote} with {targets:?}");
    }
}

/// FIX tag=value bytes: the streaming decoder fed in two pieces (split where the first byte
/// says) and the whole-message parser, with both separators: messages or errors, never a
/// panic, and the decoder never holds more than it was fed.
pub fn fix_codec(data: &[u8]) {
    use fix_monitor::fix::codec::{parse, Decoder};
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    for sep in [0x01u8, b'|'] {
        let mut d = Decoder::new(sep);
        d.feed(&data[..split]);
        for _ in d.by_ref() {}
        d.feed(&data[split..]);
        for _ in d.by_ref() {}
        assert!(d.buffered() <= data.len(), "{} buffered", d.buffered());
        let _ = parse(data, sep);
    }
}

/// A configuration file's text: a configuration or errors, never a panic; a configuration
/// prints (`fix-monitor config`) to a text that loads back to the same settings, and errors
/// say something.
pub fn config_toml(data: &[u8]) {
    use fix_monitor::config;
    let text = String::from_utf8_lossy(data);
    match config::parse_toml_str(&text, "fuzz.toml") {
        Ok(loaded) => {
            let printed = loaded.explain();
            let again = config::parse_toml_str(&printed, "explained.toml")
                .unwrap_or_else(|e| panic!("explain() does not load back: {e}\n{printed}"));
            assert_eq!(again.settings, loaded.settings, "{printed}");
        }
        Err(errors) => assert!(!errors.to_string().trim().is_empty(), "an empty error"),
    }
}

/// The OpenTelemetry header variables' values (`key=value,...`, percent-encoded), as the
/// environment gives them: a configuration or errors, never a panic.
pub fn otel_headers(data: &[u8]) {
    use fix_monitor::config::{self, ConfigArgs};
    let text = String::from_utf8_lossy(data).into_owned();
    let (all, metrics) = text.split_once('\n').unwrap_or((&text, ""));
    let mut env = std::collections::BTreeMap::new();
    env.insert("DOWNSTREAM_IP".to_owned(), "10.0.0.5".to_owned());
    env.insert("OTEL_EXPORTER_OTLP_HEADERS".to_owned(), all.to_owned());
    if !metrics.is_empty() {
        env.insert(
            "OTEL_EXPORTER_OTLP_METRICS_HEADERS".to_owned(),
            metrics.to_owned(),
        );
    }
    let _ = config::load_from(
        &ConfigArgs::default(),
        env,
        "/nonexistent/fix-monitor/config.toml",
    );
}

/// A socket-destroy notification (the `sock_diag` destroy multicast groups' message): a
/// socket, nothing, or an error, never a panic; a socket's final counters are its own.
pub fn destroy_message(data: &[u8]) {
    let _ = fix_monitor::source::destroy::parse(data);
}

/// One line of an engine's message log (QuickFIX/J, QuickFIX, QuickFIX/n): a message or why
/// not, never a panic; a message is timed by the line's own timestamp or, without one, by the
/// time it was read.
pub fn fix_log_line(data: &[u8]) {
    use fix_monitor::fix::logs::{parse_line, parse_timestamp};
    let ours: std::collections::HashSet<String> = ["GW".to_string()].into();
    let read_at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    if let Ok(r) = parse_line(data, &ours, read_at) {
        if !r.timed_by_log {
            assert_eq!(r.at, read_at);
        }
    }
    let _ = parse_timestamp(data);
}

/// The endpoint's web configuration file (node_exporter's format): a configuration or
/// problems that say something, never a panic. Files it names are looked for where none are.
pub fn web_config_yaml(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let dir = std::path::Path::new("/nonexistent/fix-monitor");
    if let Err(problems) = fix_monitor::export::web_config::parse(&text, dir) {
        assert!(!problems.is_empty(), "refused without a reason");
    }
}

/// The user and password of the endpoint the `http_request` target talks to, and the
/// `Authorization` value that carries them (`base64("fuzz:fuzz")`); the seeds use it.
pub const HTTP_USER: &str = "fuzz";
pub const HTTP_PASSWORD: &str = "fuzz";
pub const HTTP_TOKEN: &str = "ZnV6ejpmdXp6";

/// The lowest bcrypt cost the web configuration accepts: the fuzzer's time goes to the
/// endpoint, not to bcrypt (about a millisecond a check instead of tens).
const BCRYPT_COST: u32 = 4;

/// What an answer of the `http_request` target may take: every input's exchange, and the
/// `/health` request after it, must end (answered, and closed once the client is done) within
/// it. The endpoint's own deadlines are far longer (10 s), but none of them is needed here: the
/// client closes its side once it has its answers.
const HTTP_LIMIT: Duration = Duration::from_secs(3);

/// How long the client waits, once the input is sent, for an answer it expects before closing
/// its side anyway: the endpoint read the input otherwise than `expected_answers` did and waits
/// for more (or answers that slowly: the answer is then lost, which the checks allow). Not for
/// the `/health` request after each input, which waits its answer up to `HTTP_LIMIT`.
const HTTP_QUIET: Duration = Duration::from_millis(50);

/// Bytes of an input sent: more than the endpoint's read buffer, so a head past its limit is
/// sent whole, and few enough that pipelined requests with bad passwords (a bcrypt check each)
/// stay well within `HTTP_LIMIT`.
const HTTP_MAX_INPUT: usize = 16 * 1024;

/// Set by a panic on one of the endpoint's threads (a connection's task: tokio would catch it
/// and go on, so the endpoint would seem to survive).
static ENDPOINT_PANICKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The threads of the endpoint's runtime are named so, for the panic hook.
const ENDPOINT_THREADS: &str = "fuzz-endpoint";

/// Arbitrary bytes as a client's request stream to the sidecar's endpoint, the one
/// `fix-monitor run` serves (started once per process by [`endpoint`]: the same config loading,
/// web configuration with basic auth, router and server): no panic, answers that are well-formed
/// HTTP responses (or none, the connection closed), all within [`HTTP_LIMIT`]; no 2xx answer
/// without the right credentials (at most one per copy of them in the input); the configured
/// extra header on every 2xx and 401 answer, and a 401 that asks for Basic auth; and the
/// endpoint still answers `GET /health` afterwards.
pub fn http_request(data: &[u8]) {
    let data = &data[..data.len().min(HTTP_MAX_INPUT)];
    let addr = endpoint();
    let expected = expected_answers(data);
    let answers = exchange(addr, data, &expected, HTTP_QUIET);
    let tokens = data
        .windows(HTTP_TOKEN.len())
        .filter(|w| *w == HTTP_TOKEN.as_bytes())
        .count();
    let ok = answers
        .iter()
        .filter(|a| (200..300).contains(&a.code))
        .count();
    assert!(
        ok <= tokens,
        "{ok} answers 2xx, {tokens} copies of the credentials: {answers:?}"
    );
    for a in &answers {
        if (200..300).contains(&a.code) || a.code == 401 {
            assert!(a.nosniff, "the configured header missing: {a:?}");
        }
        if a.code == 401 {
            assert!(a.basic, "a 401 without WWW-Authenticate: Basic: {a:?}");
        }
    }
    let health = format!(
        "GET /health HTTP/1.1\r\nHost: fuzz\r\nAuthorization: Basic {HTTP_TOKEN}\r\n\
         Connection: close\r\n\r\n"
    );
    let after = exchange(addr, health.as_bytes(), &[false], HTTP_LIMIT);
    assert!(
        matches!(after.as_slice(), [a] if a.code == 200 || a.code == 503),
        "GET /health after the input: {after:?}"
    );
    let panicked = ENDPOINT_PANICKED.load(std::sync::atomic::Ordering::SeqCst);
    assert!(!panicked, "the endpoint panicked on a connection (above)");
}

/// The endpoint's address: on first use, a sidecar is started as `fix-monitor run` starts one
/// (config file text through `config::parse_toml_str`, the web configuration file read by
/// `startup::prepare`, `app::start` on a one-worker runtime), on loopback, polling procfs once a
/// day (so that no poll runs beside the inputs). It lives as long as the process.
fn endpoint() -> std::net::SocketAddr {
    static ADDR: std::sync::OnceLock<std::net::SocketAddr> = std::sync::OnceLock::new();
    *ADDR.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some(ENDPOINT_THREADS) {
                ENDPOINT_PANICKED.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            previous(info);
        }));
        start_endpoint()
    })
}

fn start_endpoint() -> std::net::SocketAddr {
    use fix_monitor::{app, config, startup};
    let dir = std::env::temp_dir().join(format!("fix-monitor-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hash = bcrypt::hash_with_salt(HTTP_PASSWORD, BCRYPT_COST, [42; 16])
        .unwrap()
        .format_for_version(bcrypt::Version::TwoY);
    let web = dir.join("web-config.yml");
    std::fs::write(
        &web,
        format!(
            "basic_auth_users:\n  {HTTP_USER}: {hash}\n\
             http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n"
        ),
    )
    .unwrap();
    let text = format!(
        "[[targets]]\nname = \"venue\"\naddress = \"127.0.0.2\"\nport = 9\n\
         [poll]\nsource = \"procfs\"\ninterval = \"24h\"\n\
         [prometheus]\nlisten = \"127.0.0.1:0\"\nexpose_connections = true\nweb_config = {:?}\n",
        web.display().to_string()
    );
    let loaded = config::parse_toml_str(&text, dir.join("config.toml"))
        .unwrap_or_else(|e| panic!("the fuzz endpoint's config: {e}"));
    let resources =
        startup::prepare(&loaded).unwrap_or_else(|e| panic!("the fuzz endpoint's web config: {e}"));
    let _ = std::fs::remove_dir_all(&dir);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(ENDPOINT_THREADS.into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name(ENDPOINT_THREADS)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let options = app::StartOptions {
                    serve_http: true,
                    resources,
                    ..Default::default()
                };
                let sidecar = app::start(&loaded.settings, options)
                    .await
                    .unwrap_or_else(|e| panic!("the fuzz endpoint did not start: {e}"));
                tx.send(sidecar.local_addr().unwrap()).unwrap();
                std::future::pending::<()>().await
            })
        })
        .unwrap();
    rx.recv().expect("the fuzz endpoint started")
}

/// The final answers a client can count on for `data` read as pipelined requests the way the
/// endpoint's parser (hyper, on httparse, within `Limits::default()`) reads them, each `true`
/// for a HEAD request (its answer has no body). Up to the first request after which the
/// endpoint closes (an error, a refused body, `Connection: close`, HTTP/1.0) or one it answers
/// before it has all of it (its body, which no route reads). Where this is wrong the client
/// only waits [`HTTP_QUIET`] more.
fn expected_answers(mut data: &[u8]) -> Vec<bool> {
    let limits = fix_monitor::export::server::Limits::default();
    let mut out = Vec::new();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        let n = match req.parse(data) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if data.len() > limits.max_header_bytes {
                    out.push(false); // 431, and closed
                }
                return out;
            }
            Err(_) => {
                out.push(false); // 400 or 431, and closed
                return out;
            }
        };
        out.push(req.method == Some("HEAD"));
        if n > limits.max_header_bytes || req.headers.len() > limits.max_headers {
            return out;
        }
        if req.version != Some(1) {
            return out;
        }
        let mut length = 0;
        for h in req.headers.iter() {
            let value = std::str::from_utf8(h.value).unwrap_or("").trim();
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                return out;
            }
            if h.name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
                return out;
            }
            if h.name.eq_ignore_ascii_case("content-length") {
                match value.parse::<u64>() {
                    Ok(v) if v <= limits.max_body_bytes => length = v as usize,
                    _ => return out,
                }
            }
        }
        if data.len() - n < length {
            return out;
        }
        data = &data[n + length..];
    }
}

/// One answer's head, as the client read it.
#[derive(Debug)]
struct Answer {
    code: u16,
    /// `X-Content-Type-Options: nosniff`, the web configuration's extra header.
    nosniff: bool,
    /// `WWW-Authenticate: Basic`.
    basic: bool,
}

/// The answers read so far, from `bytes[at..]` on.
#[derive(Default)]
struct Answers {
    bytes: Vec<u8>,
    at: usize,
    heads: Vec<Answer>,
    /// An answer whose body runs to the end of the connection has been read.
    open_ended: bool,
}

impl Answers {
    /// Reads every complete answer in the bytes so far; `head_requests[i]` says whether the
    /// `i`th final answer is to a HEAD request. Panics at bytes that are no HTTP response.
    fn parse(&mut self, head_requests: &[bool]) {
        while !self.open_ended {
            let rest = &self.bytes[self.at..];
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            let n = match resp.parse(rest) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => return,
                Err(e) => panic!(
                    "not an HTTP answer ({e}): {:?}",
                    String::from_utf8_lossy(rest)
                ),
            };
            let code = resp.code.unwrap();
            assert!((100..600).contains(&code), "status {code}");
            let header = |name: &str| {
                resp.headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
                    .collect::<Vec<_>>()
            };
            let length = header("content-length").first().map(|v| {
                v.parse::<usize>()
                    .unwrap_or_else(|_| panic!("answer's Content-Length {v:?}"))
            });
            let head = head_requests
                .get(self.heads.len())
                .copied()
                .unwrap_or(false);
            let body = match (code, length) {
                (100..=199 | 204 | 304, _) => 0,
                _ if head => 0,
                (_, Some(length)) => length,
                (_, None) => {
                    self.open_ended = true;
                    0
                }
            };
            if rest.len() < n + body {
                return;
            }
            self.at += n + body;
            if code >= 200 {
                let nosniff = header("x-content-type-options") == ["nosniff"];
                let basic = header("www-authenticate")
                    .iter()
                    .any(|v| v.starts_with("basic"));
                self.heads.push(Answer {
                    code,
                    nosniff,
                    basic,
                });
            }
        }
    }

    /// At the end of the connection: nothing cut short.
    fn finish(self) -> Vec<Answer> {
        let rest = &self.bytes[self.at..];
        assert!(
            self.open_ended || rest.is_empty(),
            "an answer cut short: {:?}",
            String::from_utf8_lossy(&rest[..rest.len().min(500)])
        );
        self.heads
    }
}

/// Sends `input` on a new connection to `addr` and reads the answers until the endpoint
/// closes. The client's side is closed once it has the answers `expected` (see
/// [`expected_answers`]), or `quiet` after the last byte moved; all within [`HTTP_LIMIT`].
fn exchange(
    addr: std::net::SocketAddr,
    input: &[u8],
    expected: &[bool],
    quiet: Duration,
) -> Vec<Answer> {
    use std::io::{ErrorKind, Read, Write};
    use std::os::fd::AsRawFd;
    let mut s = std::net::TcpStream::connect(addr).expect("connecting to the endpoint");
    s.set_nonblocking(true).unwrap();
    let started = std::time::Instant::now();
    let (mut written, mut shut, mut moved) = (0, false, started);
    let mut answers = Answers::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let sent = written == input.len();
        if !shut && sent && (answers.heads.len() >= expected.len() || answers.open_ended) {
            let _ = s.shutdown(std::net::Shutdown::Write);
            shut = true;
        }
        let left = HTTP_LIMIT
            .checked_sub(started.elapsed())
            .unwrap_or_else(|| {
                panic!(
                    "no end within {HTTP_LIMIT:?}: {} of {} bytes sent, {} answers",
                    written,
                    input.len(),
                    answers.heads.len()
                )
            });
        let wait = if !shut && sent {
            quiet.saturating_sub(moved.elapsed()).min(left)
        } else {
            left
        };
        let mut fd = libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN | if sent { 0 } else { libc::POLLOUT },
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        let n = unsafe { libc::poll(&mut fd, 1, wait.as_millis().max(1) as libc::c_int) };
        if n == 0 && !shut && sent && moved.elapsed() >= quiet {
            let _ = s.shutdown(std::net::Shutdown::Write);
            shut = true;
        }
        if !sent && fd.revents & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) != 0 {
            match s.write(&input[written..]) {
                Ok(n) => (written, moved) = (written + n, std::time::Instant::now()),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => written = input.len(), // the endpoint closed: nothing more goes
            }
        }
        if fd.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0 {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    answers.bytes.extend_from_slice(&buf[..n]);
                    answers.parse(expected);
                    moved = std::time::Instant::now();
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => break, // reset: what was read before it stands
            }
        }
    }
    answers.parse(expected);
    answers.finish()
}
