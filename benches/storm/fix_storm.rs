//! `fix-storm`: the kernel-events benchmark's load (Linux, loopback only).
//!
//! ```text
//! fix-storm storm --addr 127.0.95.1 [--sessions 40] [--every-ms 250] [--hold-ms 150]
//! fix-storm churn --addr 127.0.96.1 --rate 2000 --seconds 30
//! ```
//!
//! `storm` is a venue rejecting a gateway's logon in a loop: it listens on ADDR (port from the
//! kernel), and a client connects every `--every-ms`, holds the session `--hold-ms`, and then the
//! venue closes it, with FIN for even sessions and RST (`SO_LINGER` 0) for odd ones; the client
//! then closes its end. It prints its ground truth as one JSON line when done:
//! `{"made": 40, "fin": 20, "rst": 20, "listen": "127.0.95.1:PORT"}`.
//!
//! `churn` opens and closes unrelated connections to ADDR at `--rate` per second (each reset by
//! the client, so no TIME_WAIT piles up) for `--seconds`, and prints how many it made.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

fn num(args: &[String], name: &str, default: u64) -> u64 {
    arg(args, name, &default.to_string())
        .parse()
        .unwrap_or_else(|_| panic!("{name}: a number"))
}

fn connect(to: SocketAddr, abort: bool) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        None,
    )?;
    if abort {
        s.set_linger(Some(Duration::ZERO))?;
    }
    s.connect(&to.into())?;
    Ok(s.into())
}

fn storm(args: &[String]) {
    let addr = arg(args, "--addr", "127.0.95.1");
    let sessions = num(args, "--sessions", 40);
    let every = Duration::from_millis(num(args, "--every-ms", 250));
    let hold = Duration::from_millis(num(args, "--hold-ms", 150));
    let ip: std::net::IpAddr = addr.parse().expect("--addr: an IP address");
    let l = TcpListener::bind(SocketAddr::new(ip, 0)).expect("bind");
    let at = l.local_addr().unwrap();
    eprintln!("fix-storm: listening on {at}");
    let start = Instant::now();
    let mut workers = Vec::new();
    let (mut fin, mut rst) = (0, 0);
    for i in 0..sessions {
        let due = start + every * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let client = connect(at, false).expect("connect");
        let (server, _) = l.accept().expect("accept");
        let reset = i % 2 == 1;
        if reset {
            rst += 1;
        } else {
            fin += 1;
        }
        workers.push(std::thread::spawn(move || {
            let mut client = client;
            let _ = client.write_all(b"8=FIX.4.4|35=A|");
            std::thread::sleep(hold);
            if reset {
                socket2::SockRef::from(&server)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            }
            drop(server);
            // The gateway sees the close (EOF or reset) and closes its end.
            let mut buf = [0u8; 64];
            let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
            while let Ok(n) = client.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
            drop(client);
        }));
    }
    for w in workers {
        w.join().unwrap();
    }
    println!(r#"{{"made": {sessions}, "fin": {fin}, "rst": {rst}, "listen": "{at}"}}"#);
}

fn churn(args: &[String]) {
    let addr = arg(args, "--addr", "127.0.96.1");
    let rate = num(args, "--rate", 2000).max(1);
    let seconds = num(args, "--seconds", 30);
    let ip: std::net::IpAddr = addr.parse().expect("--addr: an IP address");
    let l = TcpListener::bind(SocketAddr::new(ip, 0)).expect("bind");
    let at = l.local_addr().unwrap();
    let start = Instant::now();
    let total = rate * seconds;
    let gap = Duration::from_secs_f64(1.0 / rate as f64);
    let mut made = 0u64;
    while made < total {
        let due = start + gap * made as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let c = connect(at, true).expect("connect");
        let (s, _) = l.accept().expect("accept");
        drop(c);
        drop(s);
        made += 1;
    }
    let took = start.elapsed().as_secs_f64();
    println!(
        r#"{{"made": {made}, "seconds": {took:.3}, "rate": {:.1}, "listen": "{at}"}}"#,
        made as f64 / took
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("storm") => storm(&args),
        Some("churn") => churn(&args),
        _ => {
            eprintln!("usage: fix-storm storm|churn [options] (see the source's docs)");
            std::process::exit(64);
        }
    }
}
