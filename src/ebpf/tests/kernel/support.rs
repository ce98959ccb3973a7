//! What the kernel tests share: a loaded monitor watching one loopback port, sessions to it,
//! socket cookies, waiting on conditions, and `ss -tin` parsed for comparison.

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use fix_monitor_ebpf::{Monitor, Options, StateChange, TargetSpec};

/// Loads the programs, failing loudly with the loader's error.
pub fn load() -> Monitor {
    Monitor::load(&Options::default()).unwrap_or_else(|e| panic!("loading the eBPF programs: {e}"))
}

/// A target for one loopback port.
pub fn target(port: u16) -> TargetSpec {
    TargetSpec {
        addr: "127.0.0.1".parse().unwrap(),
        prefix_len: 32,
        port: Some(port),
        local_ports: None,
    }
}

/// A loopback listener whose accepted streams are handed over on a channel.
pub struct Venue {
    pub port: u16,
    pub addr: SocketAddr,
    accepted: mpsc::Receiver<TcpStream>,
}

impl Venue {
    pub fn start() -> Self {
        Self::start_on("127.0.0.1")
    }

    /// A venue on another loopback address (e.g. "::1").
    pub fn start_on(ip: &str) -> Self {
        let listener = TcpListener::bind((ip, 0)).expect("bind");
        let addr = listener.local_addr().unwrap();
        let port = addr.port();
        let (tx, accepted) = mpsc::channel();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                if tx.send(stream).is_err() {
                    return;
                }
            }
        });
        Self {
            port,
            addr,
            accepted,
        }
    }

    /// Opens `n` sessions; returns (our end, the venue's end) pairs.
    pub fn open(&self, n: usize) -> Vec<(TcpStream, TcpStream)> {
        (0..n)
            .map(|_| {
                let ours = TcpStream::connect(self.addr).expect("connect");
                let theirs = self
                    .accepted
                    .recv_timeout(Duration::from_secs(10))
                    .expect("accept");
                (ours, theirs)
            })
            .collect()
    }
}

/// The kernel's cookie of a socket (SO_COOKIE), the identity events and health carry.
pub fn cookie(stream: &TcpStream) -> u64 {
    const SO_COOKIE: libc::c_int = 57;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a live socket fd, and `cookie`/`len` valid for writes of the size given.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "SO_COOKIE: {}", std::io::Error::last_os_error());
    cookie
}

/// SO_LINGER {on, 0}: close() sends a RST.
pub fn linger_zero(stream: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a live socket fd and a valid linger struct of the size given.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

/// Polls until `done` holds, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut done: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = done() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Collects state changes until `done` holds for the collection.
pub fn events_until(
    m: &mut Monitor,
    what: &str,
    done: impl Fn(&[StateChange]) -> bool,
) -> Vec<StateChange> {
    let mut all = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done(&all) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; got {all:#?}"
        );
        all.extend(
            m.poll_events(Duration::from_millis(50))
                .expect("poll events"),
        );
    }
    all
}

/// Writes `bytes` bytes without blocking past what the socket takes.
pub fn write_some(stream: &mut TcpStream, bytes: usize) {
    stream.set_nonblocking(true).unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        match stream.write(&chunk[..left.min(chunk.len())]) {
            Ok(n) => left -= n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("write: {e}"),
        }
    }
    stream.set_nonblocking(false).unwrap();
}

/// One socket's line of `ss -tinH`: the Recv-Q and Send-Q columns and every `key:value` field
/// (and `send`, `pacing_rate`, `delivery_rate`, whose value follows a space).
#[derive(Debug, Default)]
pub struct SsInfo {
    pub recv_q: u64,
    pub send_q: u64,
    pub fields: HashMap<String, String>,
}

impl SsInfo {
    /// A numeric field (the text before any unit or `(`), or 0 when ss omitted it (it omits
    /// zero counters).
    pub fn num(&self, key: &str) -> f64 {
        self.fields
            .get(key)
            .map(|v| {
                let end = v
                    .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                    .unwrap_or(v.len());
                v[..end]
                    .parse()
                    .unwrap_or_else(|_| panic!("ss field {key}:{v}"))
            })
            .unwrap_or(0.0)
    }
}

/// `ss -tinH state established '( dport = :PORT )'`, by local address.
pub fn ss(port: u16) -> HashMap<SocketAddr, SsInfo> {
    let out = Command::new("ss")
        .args([
            "-tinH",
            "state",
            "established",
            &format!("( dport = :{port} )"),
        ])
        .output()
        .expect("running ss (iproute2) failed: it is required");
    assert!(
        out.status.success(),
        "ss: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_ss(&String::from_utf8_lossy(&out.stdout))
}

/// Parses `ss -tinH state ...` output: a socket line (Recv-Q Send-Q Local Peer), then an
/// indented line of fields.
pub fn parse_ss(text: &str) -> HashMap<SocketAddr, SsInfo> {
    let mut out = HashMap::new();
    let mut current: Option<(SocketAddr, SsInfo)> = None;
    for line in text.lines() {
        if line.starts_with(|c: char| c.is_whitespace()) {
            if let Some((_, info)) = current.as_mut() {
                let mut words = line.split_whitespace().peekable();
                while let Some(w) = words.next() {
                    if let Some((k, v)) = w.split_once(':') {
                        info.fields.insert(k.to_string(), v.to_string());
                    } else if matches!(w, "send" | "pacing_rate" | "delivery_rate") {
                        if let Some(v) = words.next() {
                            info.fields.insert(w.to_string(), v.to_string());
                        }
                    }
                }
            }
        } else {
            if let Some((addr, info)) = current.take() {
                out.insert(addr, info);
            }
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() >= 4 {
                let local: SocketAddr = cols[2]
                    .parse()
                    .unwrap_or_else(|_| panic!("ss local address {}", cols[2]));
                current = Some((
                    local,
                    SsInfo {
                        recv_q: cols[0].parse().unwrap_or(0),
                        send_q: cols[1].parse().unwrap_or(0),
                        fields: HashMap::new(),
                    },
                ));
            }
        }
    }
    if let Some((addr, info)) = current {
        out.insert(addr, info);
    }
    out
}

/// Drops what reaches `port` on input while it lives (nftables), so our segments leave and
/// are retransmitted, and never arrive.
pub struct InputDrop(String);

impl InputDrop {
    pub fn new(port: u16) -> Self {
        Self::matching(
            &format!("fm_ebpf_drop_{port}"),
            &format!("tcp dport {port}"),
        )
    }

    /// Drops what the loopback socket on port `from` sends to the one on port `to` (e.g. a
    /// venue's ACKs to us), so the sender's data arrives and its acknowledgements do not.
    pub fn segments(from: u16, to: u16) -> Self {
        Self::matching(
            &format!("fm_ebpf_drop_{from}_{to}"),
            &format!("tcp sport {from} tcp dport {to}"),
        )
    }

    fn matching(table: &str, rule: &str) -> Self {
        let rules = format!(
            "table inet {table} {{ chain input {{ type filter hook input priority 0; {rule} drop; }}; }}"
        );
        let status = std::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write as _;
                child.stdin.take().unwrap().write_all(rules.as_bytes())?;
                child.wait()
            })
            .expect("running nft (nftables) failed: it is required");
        assert!(status.success(), "nft -f: {rules}");
        Self(table.to_string())
    }
}

impl Drop for InputDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "inet", &self.0])
            .status();
    }
}

/// Loopback connections held by child processes (python3), `per_child` each, so that the host
/// holds many more sockets than one process may open (each connection is two sockets: 20,000
/// descriptors per process at most here). Each child listens on a port of its own (none a
/// target), connects `per_child` clients to itself, accepts them, says so, and holds them
/// until its stdin closes (when the returned handles drop).
pub struct Unrelated(Vec<std::process::Child>);

const HOLD_CONNECTIONS: &str = r#"
import resource, socket, sys
n = int(sys.argv[1])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 2 * n + 64), hard))
l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen(4096)
held = []
for _ in range(n):
    c = socket.create_connection(l.getsockname())
    s, _ = l.accept()
    held += [c, s]
print(len(held), flush=True)
sys.stdin.read()
"#;

impl Unrelated {
    pub fn hold(children: usize, per_child: usize) -> Unrelated {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let mut held = Vec::new();
        for _ in 0..children {
            let mut child = Command::new("python3")
                .args(["-c", HOLD_CONNECTIONS, &per_child.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("python3 is required (scripts/fetch-tools.sh installs it)");
            let mut line = String::new();
            std::io::BufReader::new(child.stdout.as_mut().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert_eq!(
                line.trim().parse::<usize>().ok(),
                Some(2 * per_child),
                "a child holding {per_child} connections said {line:?}"
            );
            held.push(child);
        }
        Unrelated(held)
    }
}

impl Drop for Unrelated {
    fn drop(&mut self) {
        for child in &mut self.0 {
            drop(child.stdin.take());
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
    }
}
