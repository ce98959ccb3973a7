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
