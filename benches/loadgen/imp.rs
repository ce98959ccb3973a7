//! The Linux implementation of `fix-loadgen` (see `fix_loadgen.rs`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

const USAGE: &str = "\
fix-loadgen: open matching and unrelated TCP connections on loopback and hold them

Usage: fix-loadgen [OPTIONS]

  --matching M           connections LOCAL_IP:PORT -> TARGET, PORT from --min-port up [1000]
  --unrelated N          connections 127.0.1.k:PORT -> UNRELATED_IP:7100+j [0]
  --target ADDR:PORT     where the matching connections go [127.0.0.2:7001]
  --local-ip IP          source address of the matching connections [127.0.0.1]
  --min-port PORT        first local port of the matching connections [20000]
  --unrelated-ip IP      where the unrelated connections go [127.0.0.9]
  --per-process K        at most K connections per child process [18000]
  --churn R              close and reopen R matching connections per second [0]
  --unrelated-churn R    close and reopen R unrelated connections per second, spread over
                         the unrelated client processes [0]
  --ready-file PATH      also write the ground-truth JSON line here once everything is up
  --timeout SECS         give up if setting up takes longer [120]

Prints one JSON line (the ground truth: counts, addresses, pids) when every connection is up,
then holds until SIGINT, SIGTERM or SIGHUP, and closes everything (RST, no TIME_WAIT).
";

/// Connections per connect/read-ack round; well under the accept backlog.
const BATCH: usize = 1000;
const BACKLOG: i32 = 4096;
const UNRELATED_PORT_BASE: u16 = 7100;
const UNRELATED_LOCAL_PORT_BASE: u16 = 10000;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub fn main() -> i32 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("listen") => child_listen(&args[1..]),
        Some("connect") => child_connect(&args[1..]),
        Some("-h") | Some("--help") => {
            print!("{USAGE}");
            return 0;
        }
        _ => parent(&args),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("fix-loadgen: {e}");
            1
        }
    }
}

type Res<T> = Result<T, String>;

fn err<E: std::fmt::Display>(what: impl std::fmt::Display) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e}")
}

/// Raises the soft open-files limit to the hard one; returns the new soft limit.
fn raise_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a stack struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        }
    }
    r.rlim_cur
}

/// A child exits as soon as its parent goes away: its stdin is a pipe from the parent, which
/// reaches EOF however the parent ends. The kernel's death signal covers a parent that is
/// SIGKILLed while the child is blocked somewhere the stdin thread cannot help.
fn exit_with_parent() {
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    std::thread::spawn(|| {
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => std::process::exit(0),
                Ok(_) => {}
            }
        }
    });
}

fn opt<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn parse<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Res<T>
where
    T::Err: std::fmt::Display,
{
    match opt(args, name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(err(format!("{name} {v}"))),
    }
}

// ------------------------------------------------------------------------------------------
// Children
// ------------------------------------------------------------------------------------------

/// `listen ADDR:PORT`: accepts, acknowledges each connection with one byte, holds the sockets,
/// and closes those the client closed (churn). Prints `READY` once listening.
fn child_listen(args: &[String]) -> Res<()> {
    exit_with_parent();
    raise_nofile();
    let addr: SocketAddr = args
        .first()
        .ok_or("listen: address missing")?
        .parse()
        .map_err(err("listen address"))?;
    let listener = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(err("socket"))?;
    listener
        .set_reuse_address(true)
        .map_err(err("SO_REUSEADDR"))?;
    listener
        .bind(&addr.into())
        .map_err(err(format!("bind {addr}")))?;
    listener.listen(BACKLOG).map_err(err("listen"))?;
    listener.set_nonblocking(true).map_err(err("nonblocking"))?;

    // SAFETY: epoll syscalls on descriptors this function owns.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(format!(
            "epoll_create1: {}",
            std::io::Error::last_os_error()
        ));
    }
    let add = |fd: RawFd, events: u32| -> Res<()> {
        let mut ev = libc::epoll_event {
            events,
            u64: fd as u64,
        };
        // SAFETY: ep and fd are open descriptors; ev lives across the call.
        if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            return Err(format!("epoll_ctl: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    };
    let lfd = listener.as_raw_fd();
    add(lfd, libc::EPOLLIN as u32)?;
    println!("READY {}", std::process::id());
    std::io::stdout().flush().ok();

    let mut held: HashMap<RawFd, Socket> = HashMap::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    loop {
        // SAFETY: events is a valid buffer of the given length.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 1000) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("epoll_wait: {e}"));
        }
        for ev in &events[..n as usize] {
            let fd = ev.u64 as RawFd;
            if fd == lfd {
                loop {
                    match listener.accept() {
                        Ok((s, _)) => {
                            let _ = s.set_linger(Some(Duration::ZERO));
                            // The client waits for this byte before its next batch.
                            let _ = (&s).write(b"A");
                            let sfd = s.as_raw_fd();
                            add(sfd, (libc::EPOLLIN | libc::EPOLLRDHUP) as u32)?;
                            held.insert(sfd, s);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) if e.raw_os_error() == Some(libc::EMFILE) => {
                            eprintln!("fix-loadgen listen {addr}: out of file descriptors");
                            std::thread::sleep(Duration::from_millis(100));
                            break;
                        }
                        Err(e) => return Err(format!("accept: {e}")),
                    }
                }
            } else {
                // Clients never send: any event on an accepted socket is its close.
                held.remove(&fd);
            }
        }
    }
}

/// Opens `count` connections `from_ip:first_port+i -> to`, in batches of `BATCH`; each is
/// counted once the listener's one-byte acknowledgement arrives.
fn connect_one(from: SocketAddrV4, to: &SockAddr) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_linger(Some(Duration::ZERO))?;
    s.bind(&SocketAddr::V4(from).into())?;
    s.connect(to)?;
    Ok(s)
}

fn read_ack(s: &Socket) -> std::io::Result<()> {
    let mut b = [0u8; 1];
    match (&*s).read(&mut b)? {
        1 => Ok(()),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed before the acknowledgement",
        )),
    }
}

/// `connect FROM_IP FIRST_PORT COUNT TO [CHURN_PER_S]`: prints `READY <pid> <count>` once all
/// are up, then (with churn) closes and reopens one connection at a time, round robin, and
/// prints `CHURNED <total>` about once a second.
fn child_connect(args: &[String]) -> Res<()> {
    exit_with_parent();
    let limit = raise_nofile();
    if args.len() < 4 {
        return Err("connect: FROM_IP FIRST_PORT COUNT TO [CHURN]".into());
    }
    let from_ip: Ipv4Addr = args[0].parse().map_err(err("from ip"))?;
    let first: u16 = args[1].parse().map_err(err("first port"))?;
    let count: usize = args[2].parse().map_err(err("count"))?;
    let to: SocketAddr = args[3].parse().map_err(err("to"))?;
    let churn: f64 = args
        .get(4)
        .map(|c| c.parse())
        .transpose()
        .map_err(err("churn"))?
        .unwrap_or(0.0);
    if count as u64 + 16 > limit {
        return Err(format!(
            "{count} connections need more than the {limit} open files allowed"
        ));
    }
    if usize::from(first) + count > 65536 {
        return Err(format!("local ports {first}+{count} run past 65535"));
    }
    let to_sa: SockAddr = to.into();
    let mut socks: Vec<Socket> = Vec::with_capacity(count);
    let mut i = 0;
    while i < count {
        let end = (i + BATCH).min(count);
        let start = socks.len();
        for k in i..end {
            let from = SocketAddrV4::new(from_ip, first + k as u16);
            socks.push(connect_one(from, &to_sa).map_err(err(format!("connect {from} -> {to}")))?);
        }
        for s in &socks[start..] {
            read_ack(s).map_err(err(format!("acknowledgement from {to}")))?;
        }
        i = end;
    }
    println!("READY {} {}", std::process::id(), socks.len());
    std::io::stdout().flush().ok();

    if churn <= 0.0 || count == 0 {
        loop {
            std::thread::park();
        }
    }
    let mut slots: Vec<Option<Socket>> = socks.into_iter().map(Some).collect();
    let period = Duration::from_secs_f64(1.0 / churn);
    let mut next = Instant::now() + period;
    let mut last_report = Instant::now();
    let mut total: u64 = 0;
    let mut k = 0usize;
    loop {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        next += period;
        if next + Duration::from_secs(1) < Instant::now() {
            next = Instant::now() + period; // fell behind: do not burst
        }
        let from = SocketAddrV4::new(from_ip, first + k as u16);
        // Dropping sends RST (SO_LINGER 0): the port is free again at once.
        slots[k] = None;
        let s = connect_one(from, &to_sa).map_err(err(format!("reconnect {from} -> {to}")))?;
        read_ack(&s).map_err(err("acknowledgement"))?;
        slots[k] = Some(s);
        total += 1;
        k = (k + 1) % count;
        if last_report.elapsed() >= Duration::from_secs(1) {
            println!("CHURNED {total}");
            std::io::stdout().flush().ok();
            last_report = Instant::now();
        }
    }
}

// ------------------------------------------------------------------------------------------
// Parent
// ------------------------------------------------------------------------------------------

struct Kid {
    role: String,
    child: Child,
    stdin: Option<ChildStdin>,
}

struct Kids(Vec<Kid>);

impl Drop for Kids {
    /// Closing a child's stdin makes it exit; whatever is still there after 2 s is killed.
    fn drop(&mut self) {
        for k in &mut self.0 {
            k.stdin.take();
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        for k in &mut self.0 {
            loop {
                match k.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Ok(None) => {
                        let _ = k.child.kill();
                        let _ = k.child.wait();
                        break;
                    }
                }
            }
        }
    }
}

enum Line {
    Ready { role: usize, fields: Vec<String> },
    Churned(u64),
    Other(usize, String),
    Eof(usize),
}

/// Starts a child, with a thread forwarding its stdout lines to `tx`.
fn spawn(kids: &mut Kids, tx: &mpsc::Sender<Line>, role: String, args: &[String]) -> Res<usize> {
    let exe = std::env::current_exe().map_err(err("current_exe"))?;
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(err(format!("spawning {role}")))?;
    let idx = kids.0.len();
    let out = child.stdout.take().expect("piped stdout");
    let stdin = child.stdin.take();
    let tx = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let mut f = line.split_whitespace().map(String::from);
            let msg = match f.next().as_deref() {
                Some("READY") => Line::Ready {
                    role: idx,
                    fields: f.collect(),
                },
                Some("CHURNED") => {
                    Line::Churned(f.next().and_then(|n| n.parse().ok()).unwrap_or(0))
                }
                _ => Line::Other(idx, line),
            };
            if tx.send(msg).is_err() {
                return;
            }
        }
        let _ = tx.send(Line::Eof(idx));
    });
    kids.0.push(Kid { role, child, stdin });
    Ok(idx)
}

/// Waits until every child in `want` has said READY; returns their READY fields by index.
fn wait_ready(
    rx: &mpsc::Receiver<Line>,
    kids: &Kids,
    want: &[usize],
    deadline: Instant,
) -> Res<HashMap<usize, Vec<String>>> {
    let mut got = HashMap::new();
    while got.len() < want.len() {
        if STOP.load(Ordering::SeqCst) {
            return Err("interrupted while setting up".into());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "setting up timed out ({} of {} children ready)",
                got.len(),
                want.len()
            ));
        }
        match rx.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(Line::Ready { role, fields }) => {
                got.insert(role, fields);
            }
            Ok(Line::Eof(i)) => return Err(format!("{} exited during setup", kids.0[i].role)),
            Ok(Line::Other(i, l)) => eprintln!("fix-loadgen: {}: {l}", kids.0[i].role),
            Ok(Line::Churned(_)) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err("children gone".into()),
        }
    }
    Ok(got)
}

fn parent(args: &[String]) -> Res<()> {
    let matching: usize = parse(args, "--matching", 1000)?;
    let unrelated: usize = parse(args, "--unrelated", 0)?;
    let target: SocketAddrV4 = parse(
        args,
        "--target",
        SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 2), 7001),
    )?;
    let local_ip: Ipv4Addr = parse(args, "--local-ip", Ipv4Addr::new(127, 0, 0, 1))?;
    let min_port: u16 = parse(args, "--min-port", 20000)?;
    let unrelated_ip: Ipv4Addr = parse(args, "--unrelated-ip", Ipv4Addr::new(127, 0, 0, 9))?;
    let per: usize = parse(args, "--per-process", 18000)?;
    let churn: f64 = parse(args, "--churn", 0.0)?;
    let unrelated_churn: f64 = parse(args, "--unrelated-churn", 0.0)?;
    let timeout: f64 = parse(args, "--timeout", 120.0)?;
    let ready_file = opt(args, "--ready-file").map(String::from);
    let known = [
        "--matching",
        "--unrelated",
        "--target",
        "--local-ip",
        "--min-port",
        "--unrelated-ip",
        "--per-process",
        "--churn",
        "--unrelated-churn",
        "--timeout",
        "--ready-file",
    ];
    for (i, a) in args.iter().enumerate() {
        if a.starts_with("--") && !known.contains(&a.as_str()) {
            return Err(format!("unknown option {a}\n\n{USAGE}"));
        }
        if known.contains(&a.as_str()) && args.get(i + 1).is_none() {
            return Err(format!("{a} needs a value"));
        }
    }
    if per == 0 || per > 19000 {
        return Err("--per-process must be 1..=19000".into());
    }
    if matching > per {
        return Err(format!(
            "--matching {matching} exceeds --per-process {per} (one target port, one process)"
        ));
    }
    if usize::from(min_port) + matching > 65536 {
        return Err("--min-port + --matching runs past port 65535".into());
    }
    // Unrelated: chunk j connects from 127.0.1.(j+1):10000.. to unrelated_ip:7100+j.
    let chunks = unrelated.div_ceil(per);
    if chunks > 200 {
        return Err("--unrelated too large".into());
    }
    if usize::from(UNRELATED_LOCAL_PORT_BASE) + per.min(unrelated) > 65536 {
        return Err("--per-process too large for the unrelated local port range".into());
    }

    // SAFETY: installing an async-signal-safe handler that only stores to an atomic.
    unsafe {
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(timeout);
    let (tx, rx) = mpsc::channel();
    let mut kids = Kids(Vec::new());

    // Listeners first, then clients.
    let mut listeners = Vec::new();
    let mut plan = Vec::new(); // (role, from_ip, first_port, count, to, churn)
    if matching > 0 {
        let to = SocketAddr::V4(target);
        listeners.push(spawn(
            &mut kids,
            &tx,
            format!("listener {to}"),
            &["listen".into(), to.to_string()],
        )?);
        plan.push((
            "matching".to_string(),
            local_ip,
            min_port,
            matching,
            to,
            churn,
        ));
    }
    let mut left = unrelated;
    for j in 0..chunks {
        let n = left.min(per);
        left -= n;
        let to = SocketAddr::V4(SocketAddrV4::new(
            unrelated_ip,
            UNRELATED_PORT_BASE + j as u16,
        ));
        listeners.push(spawn(
            &mut kids,
            &tx,
            format!("listener {to}"),
            &["listen".into(), to.to_string()],
        )?);
        let from_ip = Ipv4Addr::new(127, 0, 1, (j + 1) as u8);
        plan.push((
            format!("unrelated {j}"),
            from_ip,
            UNRELATED_LOCAL_PORT_BASE,
            n,
            to,
            unrelated_churn / chunks as f64,
        ));
    }
    let lready = wait_ready(&rx, &kids, &listeners, deadline)?;

    let mut clients = Vec::new();
    for (role, from_ip, first, n, to, churn) in &plan {
        let mut a = vec![
            "connect".to_string(),
            from_ip.to_string(),
            first.to_string(),
            n.to_string(),
            to.to_string(),
        ];
        if *churn > 0.0 {
            a.push(churn.to_string());
        }
        clients.push(spawn(
            &mut kids,
            &tx,
            format!("{role} client {from_ip}:{first}+{n} -> {to}"),
            &a,
        )?);
    }
    let cready = wait_ready(&rx, &kids, &clients, deadline)?;
    let setup = started.elapsed().as_secs_f64();

    let pid_list = |ids: &[usize], got: &HashMap<usize, Vec<String>>| -> String {
        ids.iter()
            .map(|i| got[i].first().cloned().unwrap_or_default())
            .collect::<Vec<_>>()
            .join(",")
    };
    let up: usize = clients
        .iter()
        .map(|i| {
            cready[i]
                .get(1)
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(0)
        })
        .sum();
    let max_port = if matching > 0 {
        usize::from(min_port) + matching - 1
    } else {
        usize::from(min_port)
    };
    let truth = format!(
        concat!(
            "{{\"matching\":{},\"unrelated\":{},\"connections_up\":{},",
            "\"established_sockets_opened\":{},\"target\":\"{}\",\"local_ip\":\"{}\",",
            "\"local_ports\":\"{}-{}\",\"unrelated_ip\":\"{}\",\"churn_per_s\":{},",
            "\"setup_seconds\":{:.3},\"pid\":{},\"listener_pids\":[{}],\"client_pids\":[{}]}}"
        ),
        matching,
        unrelated,
        up,
        2 * up,
        target,
        local_ip,
        min_port,
        max_port,
        unrelated_ip,
        churn,
        setup,
        std::process::id(),
        pid_list(&listeners, &lready),
        pid_list(&clients, &cready),
    );
    if up != matching + unrelated {
        return Err(format!(
            "only {up} of {} connections came up",
            matching + unrelated
        ));
    }
    println!("{truth}");
    std::io::stdout().flush().ok();
    if let Some(path) = &ready_file {
        let tmp = format!("{path}.tmp");
        std::fs::write(&tmp, format!("{truth}\n")).map_err(err(format!("writing {tmp}")))?;
        std::fs::rename(&tmp, path).map_err(err(format!("renaming to {path}")))?;
    }

    // Hold until a signal, or until a child dies (then fail: the load is no longer what the
    // ground truth says).
    let churned = AtomicU64::new(0);
    let result = loop {
        if STOP.load(Ordering::SeqCst) {
            break Ok(());
        }
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Line::Churned(n)) => churned.store(n, Ordering::Relaxed),
            Ok(Line::Eof(i)) => break Err(format!("{} exited", kids.0[i].role)),
            Ok(Line::Other(i, l)) => eprintln!("fix-loadgen: {}: {l}", kids.0[i].role),
            Ok(Line::Ready { .. }) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break Err("children gone".into()),
        }
    };
    if churn > 0.0 {
        eprintln!(
            "fix-loadgen: churned {} matching connections",
            churned.load(Ordering::Relaxed)
        );
    }
    if let Some(path) = &ready_file {
        let _ = std::fs::remove_file(path);
    }
    drop(kids);
    result
}
