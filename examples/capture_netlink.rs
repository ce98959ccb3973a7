//! Captures the `sock_diag` dumps that `src/kernel/netlink.rs` tests parse, from loopback
//! connections this program opens, and prints what the dumps must contain. Run it as
//! `cargo run --example capture_netlink -- tests/fixtures/netlink`, then copy the printed
//! values into the fixture tests.
//!
//! A fixture file is the reply's datagrams as received, each behind its length (`u32`,
//! little-endian).

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("sock_diag is Linux only");
}

#[cfg(target_os = "linux")]
fn main() -> anyhow::Result<()> {
    capture::run()
}

#[cfg(target_os = "linux")]
mod capture {
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::path::{Path, PathBuf};

    use anyhow::Context;
    use fix_monitor::source::netlink::{Family, NetlinkSource};
    use fix_monitor::target::{PortRange, Target, Targets};

    pub fn run() -> anyhow::Result<()> {
        let dir = PathBuf::from(
            std::env::args()
                .nth(1)
                .unwrap_or_else(|| "tests/fixtures/netlink".into()),
        );
        std::fs::create_dir_all(&dir)?;
        small(&dir)?;
        large(&dir)
    }

    fn target(net: &str, port: Option<u16>, local: Option<u16>) -> Target {
        let net = net.parse().unwrap();
        Target {
            name: Target::default_name(&net, port),
            net,
            port,
            local_ports: local.map(|p| PortRange { start: p, end: p }),
            heartbeat: None,
            stale_after: None,
        }
    }

    fn listen(addr: &str) -> anyhow::Result<(TcpListener, u16)> {
        let l = TcpListener::bind(addr)?;
        let port = l.local_addr()?.port();
        Ok((l, port))
    }

    /// A connection from `from` (port 0: any) to `to`, and its accepted end.
    fn connect(from: &str, to: SocketAddr, l: &TcpListener) -> anyhow::Result<[TcpStream; 2]> {
        let from: SocketAddr = from.parse()?;
        let s = socket2::Socket::new(
            socket2::Domain::for_address(to),
            socket2::Type::STREAM,
            None,
        )?;
        // Close with a reset: 600 bound ports left in TIME_WAIT would keep them from every
        // connect() on the host for a minute.
        s.set_linger(Some(std::time::Duration::ZERO))?;
        s.bind(&from.into())?;
        s.connect(&to.into())?;
        let client = TcpStream::from(s);
        let (server, _) = l.accept()?;
        Ok([client, server])
    }

    fn capture(source: &mut NetlinkSource, family: Family, path: &Path) -> anyhow::Result<()> {
        let mut file = Vec::new();
        let mut datagrams = 0;
        source.dump_raw(family, |d| {
            file.extend_from_slice(&(d.len() as u32).to_le_bytes());
            file.extend_from_slice(d);
            datagrams += 1;
        })?;
        std::fs::write(path, &file).with_context(|| path.display().to_string())?;
        println!(
            "{}: {datagrams} datagrams, {} bytes",
            path.display(),
            file.len()
        );
        Ok(())
    }

    /// A few connections of each kind: IPv4, IPv6, and IPv4 to a dual-stack listener (whose
    /// accepted end is an AF_INET6 socket with IPv4-mapped addresses); and one unrelated.
    fn small(dir: &Path) -> anyhow::Result<()> {
        let (l1, p1) = listen("127.0.0.66:0")?;
        let (l2, p2) = listen("[::1]:0")?;
        let (l3, p3) = listen("[::]:0")?;
        let (l4, p4) = listen("127.0.0.66:0")?;
        let to = |port: u16| SocketAddr::from(([127, 0, 0, 66], port));
        let conns = [
            connect("127.0.0.67:0", to(p1), &l1)?,
            connect("127.0.0.67:0", to(p1), &l1)?,
            connect(
                "[::1]:0",
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, p2)),
                &l2,
            )?,
            connect("127.0.0.68:0", to(p3), &l3)?,
            connect("127.0.0.69:0", to(p4), &l4)?, // unrelated
        ];
        let targets = Targets::new(vec![
            target("127.0.0.66/32", Some(p1), None),
            target("127.0.0.67/32", None, None),
            target("::1/128", Some(p2), None),
            target("::1/128", None, Some(p2)),
            target("127.0.0.66/32", Some(p3), None),
            target("127.0.0.68/32", None, None),
        ]);
        let mut source = NetlinkSource::open(&targets)?;
        capture(&mut source, Family::Inet, &dir.join("small-inet.bin"))?;
        capture(&mut source, Family::Inet6, &dir.join("small-inet6.bin"))?;
        println!("opened (client, then server end: local -> remote):");
        for [c, s] in &conns {
            for x in [c, s] {
                println!("  {} -> {}", x.local_addr()?, x.peer_addr()?);
            }
        }
        Ok(())
    }

    const LARGE: usize = 600;

    /// Enough connections that the reply takes several datagrams.
    fn large(dir: &Path) -> anyhow::Result<()> {
        let (l, p) = listen("127.0.0.77:0")?;
        let conns = (0..LARGE)
            .map(|_| connect("127.0.0.78:0", SocketAddr::from(([127, 0, 0, 77], p)), &l))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let targets = Targets::new(vec![
            target("127.0.0.77/32", Some(p), None),
            target("127.0.0.78/32", None, None),
        ]);
        let mut source = NetlinkSource::open(&targets)?;
        capture(&mut source, Family::Inet, &dir.join("large-inet.bin"))?;
        println!(
            "{} connections from 127.0.0.78 to 127.0.0.77:{p}",
            conns.len()
        );
        Ok(())
    }
}
