//! The FIX layer's benchmark tool (scripts/bench.sh, "FIX" section). Two modes, each printing
//! one JSON line:
//!
//! - `decode [--messages N]`: how many FIX messages per second one core takes from bytes to the
//!   session tracker, from the wire path (IPv4/TCP packets, one message per segment, through
//!   reassembly, the decoder and the tracker) and from the log path (QuickFIX-style lines in a
//!   file, through the log follower's reading and parsing and the tracker). The messages are an
//!   order flow: NewOrderSingle out, ExecutionReport in, every order matched by ClOrdID.
//! - `drive --fm BIN --rate R --seconds S`: starts `BIN run` with `[fix] capture = true` (root),
//!   drives R FIX messages per second (orders and their acknowledgements, half each way) through
//!   one loopback session for S seconds, and reports the sidecar's CPU (utime+stime from
//!   /proc) over that window, and the packets the capture read and the kernel dropped
//!   (`PACKET_STATISTICS`, from `/sessions`), and the messages it decoded against those sent.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use fix_monitor::fix::codec::{write, SOH};
use fix_monitor::fix::logs::LogFollower;
use fix_monitor::fix::reassembly::Limits as StreamLimits;
use fix_monitor::fix::tracker::{Event, Limits, Origin, Tracker};
use fix_monitor::fix::wire::Wire;
use fix_monitor::target::{Target, Targets};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("decode") => {
            let n = arg(&args, "--messages").map_or(200_000, |v| v.parse().expect("--messages"));
            decode(n);
        }
        Some("drive") => {
            let fm = arg(&args, "--fm").expect("--fm BIN");
            let rate: u64 = arg(&args, "--rate").map_or(5000, |v| v.parse().expect("--rate"));
            let secs: u64 = arg(&args, "--seconds").map_or(10, |v| v.parse().expect("--seconds"));
            drive(&fm, rate, secs);
        }
        _ => {
            eprintln!(
                "usage: fix-fixbench decode [--messages N] | drive --fm BIN [--rate R] [--seconds S]"
            );
            std::process::exit(64);
        }
    }
}

/// The i-th message of the flow: even ones an order from the gateway, odd ones its ack.
fn message(i: u64) -> Vec<u8> {
    let n = i / 2;
    let id = format!("ord{n}");
    let seq = (n + 1).to_string();
    let ts = "20261130-12:00:00.123456";
    if i % 2 == 0 {
        write(
            "FIX.4.4",
            &[
                (35, b"D"),
                (49, b"GW"),
                (56, b"VENUE"),
                (34, seq.as_bytes()),
                (52, ts.as_bytes()),
                (11, id.as_bytes()),
                (55, b"XYZ"),
                (54, b"1"),
                (38, b"100"),
                (40, b"2"),
                (44, b"101.25"),
            ],
            SOH,
        )
    } else {
        let exec = format!("E{n}");
        write(
            "FIX.4.4",
            &[
                (35, b"8"),
                (49, b"VENUE"),
                (56, b"GW"),
                (34, seq.as_bytes()),
                (52, ts.as_bytes()),
                (11, id.as_bytes()),
                (37, id.as_bytes()),
                (17, exec.as_bytes()),
                (150, b"0"),
                (39, b"0"),
                (55, b"XYZ"),
                (54, b"1"),
            ],
            SOH,
        )
    }
}

/// An IPv4 TCP packet with `payload`, PSH and ACK set (the simulator's packet builder).
fn ipv4_tcp(src: SocketAddr, dst: SocketAddr, seq: u32, payload: &[u8]) -> Vec<u8> {
    const PSH: u8 = 0x08;
    fix_monitor::fix::sim::ipv4_tcp(src, dst, seq, PSH, payload)
}

fn decode(n: u64) {
    let gw: SocketAddr = "10.0.0.1:5001".parse().unwrap();
    let venue: SocketAddr = "10.0.0.5:9876".parse().unwrap();
    let targets = Targets::new(vec![Target {
        name: "venue".into(),
        net: ipnet::IpNet::from(venue.ip()),
        port: Some(venue.port()),
        local_ports: None,
        heartbeat: None,
        stale_after: None,
    }]);

    // The wire path: every packet built first, then timed through Wire + Tracker.
    let (mut seq_out, mut seq_in) = (1u32, 1u32);
    let mut packets = Vec::with_capacity(n as usize);
    let mut bytes = 0usize;
    for i in 0..n {
        let m = message(i);
        bytes += m.len();
        let p = if i % 2 == 0 {
            let p = ipv4_tcp(gw, venue, seq_out, &m);
            seq_out = seq_out.wrapping_add(m.len() as u32);
            p
        } else {
            let p = ipv4_tcp(venue, gw, seq_in, &m);
            seq_in = seq_in.wrapping_add(m.len() as u32);
            p
        };
        packets.push(p);
    }
    let mut wire = Wire::new(targets, StreamLimits::default());
    let mut tracker = Tracker::new(Limits::default());
    let at = SystemTime::now();
    let t = Instant::now();
    let mut answered = 0usize;
    // Order round trips only: a clock-skew sample is an event too (here one each way, as
    // every packet has one time).
    let is_answer = |e: &Event| matches!(e, Event::OrderAnswered { .. });
    for p in &packets {
        answered += wire
            .packet(p, at, &mut tracker)
            .iter()
            .filter(|e| is_answer(e))
            .count();
    }
    let wire_secs = t.elapsed().as_secs_f64();
    let wire_msgs = wire.stats.messages;
    assert_eq!(wire_msgs, n, "every message decoded on the wire path");
    assert_eq!(answered as u64, n / 2, "every order matched");
    drop(packets);

    // The log path: lines in a file the follower starts following before they are written.
    let dir = std::env::temp_dir().join(format!("fix-fixbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pattern = dir.join("*.messages.log").display().to_string();
    let mut follower = LogFollower::new(vec![pattern], ["GW".to_string()]);
    let _ = follower.poll(SystemTime::now());
    {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(dir.join("GW-VENUE.messages.log")).unwrap(),
        );
        for i in 0..n {
            f.write_all(b"20261130-12:00:00.123456789 : ").unwrap();
            f.write_all(&message(i)).unwrap();
            f.write_all(b"\n").unwrap();
        }
    }
    let mut tracker = Tracker::new(Limits::default());
    let t = Instant::now();
    let (mut read, mut answered) = (0u64, 0usize);
    let deadline = Instant::now() + Duration::from_secs(300);
    while read < n && Instant::now() < deadline {
        for r in follower.poll(SystemTime::now()) {
            read += 1;
            answered += (tracker
                .observe(&r.msg, r.dir, r.at, &Origin::default())
                .iter())
            .filter(|e| is_answer(e))
            .count();
        }
    }
    let log_secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(read, n, "every line read on the log path");
    assert_eq!(answered as u64, n / 2, "every order matched");
    println!(
        "{{\"mode\": \"decode\", \"messages\": {n}, \"bytes\": {bytes}, \
         \"wire_seconds\": {wire_secs:.6}, \"wire_msgs_per_s\": {:.0}, \
         \"log_seconds\": {log_secs:.6}, \"log_msgs_per_s\": {:.0}}}",
        n as f64 / wire_secs,
        n as f64 / log_secs
    );
}

/// utime + stime of `pid`, seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').expect("stat") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / hz
}

/// The body of `GET path`; `None` while nothing listens (the sidecar starting).
fn try_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn drive(fm: &str, rate: u64, secs: u64) {
    let venue_ip = Ipv4Addr::new(127, 0, 0, 48);
    let listener = TcpListener::bind((venue_ip, 0)).expect("bind the venue on 127.0.0.48");
    let venue = listener.local_addr().unwrap();
    let listen = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dir = std::env::temp_dir().join(format!("fix-fixbench-drive-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[targets]]\nname = \"venue\"\naddress = \"{}\"\nport = {}\n\n[fix]\ncapture = true\n",
            venue.ip(),
            venue.port()
        ),
    )
    .unwrap();
    let child = Command::new(fm)
        .args(["run", "--config"])
        .arg(&cfg)
        .args(["--listen", &listen.to_string(), "--interval", "1s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start fix-monitor");
    let child = Kill(child);
    let pid = child.0.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    let state = loop {
        if let Some(s) = try_get(listen, "/sessions") {
            if s.contains("\"enabled\":true") {
                break s;
            }
        }
        assert!(Instant::now() < deadline, "fix-monitor did not start");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        state.contains("\"capture_error\":null"),
        "capture did not open (run as root): {state}"
    );

    // The venue: acknowledges every order at once.
    let venue_thread = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut p = fix_monitor::fix::sim::Peer::new(s, "FIX.4.4", "VENUE", "GW");
        let mut acks = 0u64;
        loop {
            match p.recv(Instant::now() + Duration::from_secs(5)) {
                Ok(Some(m)) => match m.msg_type() {
                    b"A" => p.send("A", &[(98, "0"), (108, "30")]).unwrap(),
                    b"D" => {
                        let id = m.get_str(11).unwrap_or_default().into_owned();
                        p.send("8", &[(11, &id), (150, "0"), (39, "0")]).unwrap();
                        acks += 1;
                    }
                    b"5" => {
                        let _ = p.send("5", &[]);
                        break acks;
                    }
                    _ => {}
                },
                _ => break acks,
            }
        }
    });
    let mut gw = fix_monitor::fix::sim::Peer::connect(venue, "FIX.4.4", "GW", "VENUE").unwrap();
    gw.send("A", &[(98, "0"), (108, "30")]).unwrap();
    gw.expect("A", Duration::from_secs(5)).unwrap();
    // Let the capture settle, then the timed window: orders at rate/2 (acks make the rest).
    std::thread::sleep(Duration::from_millis(500));
    let orders_per_s = (rate / 2).max(1);
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let mut sent = 0u64;
    let end = t0 + Duration::from_secs(secs);
    while Instant::now() < end {
        let due = (t0.elapsed().as_secs_f64() * orders_per_s as f64) as u64;
        while sent < due {
            sent += 1;
            gw.send(
                "D",
                &[
                    (11, &format!("o{sent}")),
                    (55, "XYZ"),
                    (54, "1"),
                    (38, "100"),
                ],
            )
            .unwrap();
        }
        // Drain the acks as they come (the gateway reads its socket).
        while let Ok(m) = gw.try_recv() {
            if m.is_empty() {
                break;
            }
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let window = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    gw.send("5", &[]).unwrap();
    let _ = gw.expect("5", Duration::from_secs(5));
    gw.close();
    let acks = venue_thread.join().unwrap();
    // The FIX layer publishes every 250 ms: wait until it has read all (bounded).
    let total = 2 + 2 * sent + 2; // Logons, orders, acks, Logouts
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut state = String::new();
    while Instant::now() < deadline {
        state = try_get(listen, "/sessions").unwrap_or_default();
        if num(&state, "\"messages\":").unwrap_or(0) >= total {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let decoded = num(&state, "\"messages\":").unwrap_or(0);
    let packets = num(&state, "\"capture_packets\":").unwrap_or(0);
    let drops = num(&state, "\"capture_drops\":").unwrap_or(0);
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{{\"mode\": \"drive\", \"rate\": {rate}, \"seconds\": {window:.3}, \"orders\": {sent}, \
         \"acks\": {acks}, \"messages_sent\": {total}, \"messages_decoded\": {decoded}, \
         \"achieved_msgs_per_s\": {:.0}, \"cpu_seconds\": {cpu:.3}, \"cpu_percent\": {:.2}, \
         \"capture_packets\": {packets}, \"capture_drops\": {drops}}}",
        (2 * sent) as f64 / window,
        100.0 * cpu / window
    );
}

/// The first number after `key` in a JSON text (the wire stats' `messages` comes first in
/// `stats`; good enough for this tool's one document).
fn num(text: &str, key: &str) -> Option<u64> {
    let stats = text.find("\"stats\":").map_or(text, |i| &text[i..]);
    let i = stats.find(key)? + key.len();
    stats[i..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}
