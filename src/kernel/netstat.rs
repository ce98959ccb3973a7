//! The netstat2 source: for macOS and Windows, where the original tool also ran, and usable on
//! Linux too (netstat2 reads Linux sockets through `sock_diag`, like the netlink source but
//! without a kernel-side filter, so every socket on the host crosses into user space).
//!
//! netstat2 offers one call per platform with the same shape; this module picks the cheapest
//! that still covers both families:
//! - Linux: `iterate_sockets_info_without_pids`. The variant with pids walks every
//!   `/proc/<pid>/fd` on each call (and panics when `/proc` cannot be listed); pids are not
//!   needed here.
//! - Windows: `iterate_sockets_info`. Its `_without_pids` variant reads only the IPv4 table.
//! - macOS: `iterate_sockets_info`, the only one. It walks the file descriptors of every
//!   process this one may inspect, so it sees only those processes' sockets (run as the
//!   gateway's user or as root), and a socket shared by several processes once per process.

use fix_monitor_core::Capabilities;
use std::net::SocketAddr;

use netstat2::{AddressFamilyFlags, ProtocolFlags, ProtocolSocketInfo, SocketInfo};

use super::{SocketEntry, Source, SourceError, SourceKind, TcpState};
use fix_monitor_core::target::Targets;

#[cfg(not(any(target_os = "linux", target_os = "android")))]
use netstat2::iterate_sockets_info as iterate_sockets;
#[cfg(any(target_os = "linux", target_os = "android"))]
use netstat2::iterate_sockets_info_without_pids as iterate_sockets;

/// Lists TCP sockets with netstat2 and keeps the ESTABLISHED sockets of the targets.
#[derive(Debug)]
pub struct NetstatSource {
    targets: Targets,
    /// Only the families some target can match (see [`Targets::wants_ipv4`]).
    families: AddressFamilyFlags,
}

impl NetstatSource {
    /// Snapshots only.
    pub const CAPABILITIES: Capabilities = Capabilities::SNAPSHOTS_ONLY;

    pub fn new(targets: &Targets) -> Self {
        let mut families = AddressFamilyFlags::empty();
        if targets.wants_ipv4() {
            families |= AddressFamilyFlags::IPV4;
        }
        if targets.wants_ipv6() {
            families |= AddressFamilyFlags::IPV6;
        }
        NetstatSource {
            targets: targets.clone(),
            families,
        }
    }
}

impl Source for NetstatSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Netstat
    }

    fn capabilities(&self) -> Capabilities {
        NetstatSource::CAPABILITIES
    }

    fn poll(&mut self, out: &mut Vec<SocketEntry>) -> Result<(), SourceError> {
        out.clear();
        if self.families.is_empty() {
            return Ok(());
        }
        for info in iterate_sockets(self.families, ProtocolFlags::TCP).map_err(io_error)? {
            let info = info.map_err(io_error)?;
            let ProtocolSocketInfo::Tcp(tcp) = &info.protocol_socket_info else {
                continue;
            };
            if map_state(tcp.state) != TcpState::Established {
                continue;
            }
            let local = SocketAddr::new(tcp.local_addr, tcp.local_port);
            let remote = SocketAddr::new(tcp.remote_addr, tcp.remote_port);
            if self.targets.classify(&local, &remote).is_some() {
                out.push(SocketEntry {
                    local,
                    remote,
                    state: TcpState::Established,
                    id: socket_id(&info),
                    health: None,
                });
            }
        }
        // macOS lists a socket once per process holding it; an ESTABLISHED 4-tuple is unique
        // on a host, so equal entries are one socket.
        out.sort_unstable_by_key(|e| (e.id, e.local, e.remote));
        out.dedup();
        Ok(())
    }
}

/// The inode, which netstat2 reports on Linux only.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn socket_id(info: &SocketInfo) -> u64 {
    u64::from(info.inode)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn socket_id(_: &SocketInfo) -> u64 {
    0
}

/// netstat2's states, which follow the BSD and Windows names, in Linux terms.
pub fn map_state(state: netstat2::TcpState) -> TcpState {
    use netstat2::TcpState as N;
    match state {
        N::Established => TcpState::Established,
        N::SynSent => TcpState::SynSent,
        N::SynReceived => TcpState::SynRecv,
        N::FinWait1 => TcpState::FinWait1,
        N::FinWait2 => TcpState::FinWait2,
        N::TimeWait => TcpState::TimeWait,
        N::Closed => TcpState::Close,
        N::CloseWait => TcpState::CloseWait,
        N::LastAck => TcpState::LastAck,
        N::Listen => TcpState::Listen,
        N::Closing => TcpState::Closing,
        // Windows: the connection's control block is being deleted, i.e. it is gone.
        N::DeleteTcb => TcpState::Close,
        N::Unknown => TcpState::Unknown,
    }
}

// netstat2's errors are OS errors (kept as they are) or its own (wrapped, message intact).
fn io_error(e: netstat2::error::Error) -> SourceError {
    let source = match e {
        netstat2::error::Error::OsError(e) => e,
        other => std::io::Error::other(other),
    };
    SourceError::Io {
        context: "listing TCP sockets with netstat2",
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fix_monitor_core::target::Target;
    use ipnet::IpNet;
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    #[test]
    fn states_map_to_their_linux_names() {
        use netstat2::TcpState as N;
        let pairs = [
            (N::Established, "ESTABLISHED"),
            (N::SynSent, "SYN_SENT"),
            (N::SynReceived, "SYN_RECV"),
            (N::FinWait1, "FIN_WAIT1"),
            (N::FinWait2, "FIN_WAIT2"),
            (N::TimeWait, "TIME_WAIT"),
            (N::Closed, "CLOSE"),
            (N::CloseWait, "CLOSE_WAIT"),
            (N::LastAck, "LAST_ACK"),
            (N::Listen, "LISTEN"),
            (N::Closing, "CLOSING"),
            (N::DeleteTcb, "CLOSE"),
            (N::Unknown, "UNKNOWN"),
        ];
        for (theirs, ours) in pairs {
            assert_eq!(map_state(theirs).as_str(), ours, "{theirs:?}");
        }
    }

    #[test]
    fn no_targets_means_no_families_and_no_sockets() {
        let mut source = NetstatSource::new(&Targets::default());
        assert!(source.families.is_empty());
        let mut out = vec![SocketEntry {
            local: "10.0.0.1:1".parse().unwrap(),
            remote: "10.0.0.2:2".parse().unwrap(),
            state: TcpState::Established,
            id: 1,
            health: None,
        }];
        source.poll(&mut out).unwrap();
        assert!(out.is_empty());
    }

    fn target(net: &str, port: u16) -> Target {
        let net: IpNet = net.parse().unwrap();
        Target {
            name: Target::default_name(&net, Some(port)),
            net,
            port: Some(port),
            local_ports: None,
            heartbeat: None,
            stale_after: None,
        }
    }

    fn connect(listener: &TcpListener, to: SocketAddr) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(to).unwrap();
        (client, listener.accept().unwrap().0)
    }

    fn tuples(streams: &[&TcpStream]) -> Vec<(SocketAddr, SocketAddr)> {
        let mut v: Vec<_> = streams
            .iter()
            .map(|s| (s.local_addr().unwrap(), s.peer_addr().unwrap()))
            .collect();
        v.sort();
        v
    }

    /// Polls until the source reports exactly the sockets `want` (closing is asynchronous on
    /// the peer's side), failing with the last answer after two seconds.
    fn assert_reports(source: &mut NetstatSource, want: &[&TcpStream]) -> Vec<SocketEntry> {
        let want = tuples(want);
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut out = Vec::new();
        loop {
            source.poll(&mut out).unwrap();
            let mut got: Vec<_> = out.iter().map(|e| (e.local, e.remote)).collect();
            got.sort();
            if got == want || Instant::now() > deadline {
                assert_eq!(got, want);
                assert!(out.iter().all(|e| e.state == TcpState::Established));
                return out;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // 127.0.0.1 only: macOS has no other loopback address unless configured.
    #[test]
    fn live_connections_are_reported_exactly() {
        let l4 = TcpListener::bind("127.0.0.1:0").unwrap();
        let l6 = TcpListener::bind("[::1]:0").unwrap();
        let unrelated = TcpListener::bind("127.0.0.1:0").unwrap();
        let (a4, a6) = (l4.local_addr().unwrap(), l6.local_addr().unwrap());
        let (c1, s1) = connect(&l4, a4);
        let (c2, _s2) = connect(&l4, a4);
        let (c3, _s3) = connect(&l6, a6);
        let (_u, _us) = connect(&unrelated, unrelated.local_addr().unwrap());

        let targets = Targets::new(vec![
            target("127.0.0.1/32", a4.port()),
            target("::1/128", a6.port()),
        ]);
        let mut source = NetstatSource::new(&targets);
        assert_eq!(source.kind(), SourceKind::Netstat);
        let out = assert_reports(&mut source, &[&c1, &c2, &c3]);

        #[cfg(target_os = "linux")]
        {
            // The id is the socket's inode, as /proc/self/fd shows it.
            use std::os::fd::AsRawFd;
            let link = std::fs::read_link(format!("/proc/self/fd/{}", c3.as_raw_fd())).unwrap();
            let c3_entry = out
                .iter()
                .find(|e| e.local == c3.local_addr().unwrap())
                .unwrap();
            assert_eq!(link.to_str().unwrap(), format!("socket:[{}]", c3_entry.id));
            assert!(out.iter().all(|e| e.id != 0));
        }
        #[cfg(not(target_os = "linux"))]
        let _ = out;

        drop(s1); // the server closes: c1 goes CLOSE_WAIT
        drop(c3); // the client closes: c3 goes FIN_WAIT1
        assert_reports(&mut source, &[&c2]);
    }

    // Linux only: elsewhere an AF_INET6 socket may be IPv6-only by default (Windows).
    #[cfg(target_os = "linux")]
    #[test]
    fn live_ipv4_mapped_clients_match_ipv4_targets() {
        let l = TcpListener::bind("127.0.0.8:0").unwrap();
        let p = l.local_addr().unwrap().port();
        let (c, _s) = connect(&l, SocketAddr::new("::ffff:127.0.0.8".parse().unwrap(), p));
        assert!(c.local_addr().unwrap().is_ipv6());
        let mut source = NetstatSource::new(&Targets::new(vec![target("127.0.0.8/32", p)]));
        assert_reports(&mut source, &[&c]);
    }
}
