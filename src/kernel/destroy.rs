//! Kernel close events: the `sock_diag` socket-destroy notifications, what `ss -E` listens to.
//!
//! When the last reference to a TCP socket goes, `__sk_free` hands it to
//! `sock_diag_broadcast_destroy` (`net/core/sock_diag.c`) if anyone listens, which multicasts one
//! `SOCK_DIAG_BY_FAMILY` message to the group of its family, `SKNLGRP_INET_TCP_DESTROY` or
//! `SKNLGRP_INET6_TCP_DESTROY`: an `inet_diag_msg` (4-tuple, state, cookie, inode) with
//! `INET_DIAG_PROTOCOL` and the final `tcp_info` in `INET_DIAG_INFO`
//! (`inet_diag_handler_get_info`). Joining those groups needs no capability: the
//! `NETLINK_SOCK_DIAG` family is created with `NL_CFG_F_NONROOT_RECV`.
//!
//! Every TCP socket of the network namespace is announced. A classic BPF filter compiled from
//! the targets (`destroy_filter`, written with the [`cbpf`] toolkit) is attached before the
//! groups are joined, so the kernel drops the others before they are queued.
//!
//! What a notification can and cannot say:
//! - it comes when the socket is freed, which may be long after it left ESTABLISHED (a
//!   FIN_WAIT2, a CLOSE_WAIT the application never closes); the socket then usually shows
//!   `CLOSE`. Sockets that become TIME_WAIT are announced as they are replaced by the
//!   lightweight TIME_WAIT socket, which is itself never announced;
//! - when our side aborts (`SO_LINGER` 0, `tcp_disconnect`) the kernel has cleared the remote
//!   port, and the local address unless it was bound explicitly, before the message is built:
//!   only the cookie, the remote address and the local port are left ([`Destroyed::partial`]);
//! - a connection attempt that never succeeded is announced too: the final `tcp_info` tells the
//!   two apart ([`FinalInfo::was_established`]).
//!
//! A burst can fill the receive buffer: the kernel then drops notifications, counts them in the
//! socket's `sk_drops` (read back with `SO_MEMINFO`) and reports `ENOBUFS` once on the next
//! read. [`DestroySubscriber::drain`] returns how many were lost, so the caller can count them
//! and reconcile with a full poll.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};

use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr as NetlinkAddr};

use super::{cbpf, destroy_filter, netlink, SocketEntry, SourceError};
use fix_monitor_core::target::Targets;
use fix_monitor_core::{SocketEvent, Timestamp};

/// `SKNLGRP_INET_TCP_DESTROY` and `SKNLGRP_INET6_TCP_DESTROY` (`include/uapi/linux/sock_diag.h`).
const GROUP_INET_TCP_DESTROY: u32 = 1;
const GROUP_INET6_TCP_DESTROY: u32 = 3;

const NLMSG_HDR: usize = 16;
const DIAG_MSG: usize = 72;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const INET_DIAG_INFO: u16 = 2;

/// The receive buffer asked for. One notification takes about 1 KiB of buffer (a 400-byte
/// message in its `sk_buff`), so 8 MiB holds a burst of several thousand closes. Without
/// `CAP_NET_ADMIN` the kernel caps it at `net.core.rmem_max`.
pub const RECV_BUFFER: usize = 8 << 20;

/// Offsets in `struct tcp_info` (`include/uapi/linux/tcp.h`).
mod tcpi {
    pub const STATE: usize = 0;
    pub const TOTAL_RETRANS: usize = 100;
    pub const BYTES_ACKED: usize = 120;
    pub const BYTES_RECEIVED: usize = 128;
    pub const SEGS_OUT: usize = 136;
    pub const SEGS_IN: usize = 140;
    pub const DELIVERED: usize = 192;
    pub const BYTES_SENT: usize = 200;
}

/// What the final `tcp_info` says, where the kernel sent enough of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FinalInfo {
    /// Sequence space we sent that the peer acknowledged (`tcpi_bytes_acked`): the data, plus
    /// one for the SYN and one for an acknowledged FIN.
    pub bytes_acked: u64,
    /// Sequence space received (`tcpi_bytes_received`): the data, plus one for a FIN.
    pub bytes_received: u64,
    /// Segments retransmitted over the connection's life (`tcpi_total_retrans`).
    pub total_retrans: u32,
    /// Segments sent (`tcpi_segs_out`).
    pub segs_out: u32,
    /// Segments received (`tcpi_segs_in`).
    pub segs_in: u32,
    /// Segments delivered to the peer, the SYN or SYN-ACK included (`tcpi_delivered`).
    pub delivered: u32,
    /// Data bytes sent, retransmissions included (`tcpi_bytes_sent`, Linux 4.19+).
    pub bytes_sent: Option<u64>,
}

impl FinalInfo {
    /// The socket reached ESTABLISHED at some point. A connection is established on our side
    /// once our SYN (client) or SYN-ACK (server child) was acknowledged, and that is when
    /// `tcp_ack` counts it delivered: a refused or timed-out attempt has delivered nothing.
    pub fn was_established(&self) -> bool {
        self.delivered > 0
    }

    fn parse(info: &[u8]) -> Option<FinalInfo> {
        let u32_at = |at: usize| {
            info.get(at..at + 4)
                .map(|b| u32::from_ne_bytes(b.try_into().unwrap()))
        };
        let u64_at = |at: usize| {
            info.get(at..at + 8)
                .map(|b| u64::from_ne_bytes(b.try_into().unwrap()))
        };
        let _ = info.get(tcpi::STATE)?;
        Some(FinalInfo {
            bytes_acked: u64_at(tcpi::BYTES_ACKED)?,
            bytes_received: u64_at(tcpi::BYTES_RECEIVED)?,
            total_retrans: u32_at(tcpi::TOTAL_RETRANS)?,
            segs_out: u32_at(tcpi::SEGS_OUT)?,
            segs_in: u32_at(tcpi::SEGS_IN)?,
            delivered: u32_at(tcpi::DELIVERED)?,
            bytes_sent: u64_at(tcpi::BYTES_SENT),
        })
    }
}

/// One socket-destroy notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destroyed {
    /// The socket as the kernel last described it: 4-tuple, final state, cookie in `id`.
    pub socket: SocketEntry,
    /// The remote port was cleared (an abort on our side, see the module docs): only the cookie,
    /// the remote address and the local port identify the socket.
    pub partial: bool,
    /// The final `tcp_info`, if the message carried one.
    pub info: Option<FinalInfo>,
}

impl Destroyed {
    /// The tracker's view of this notification, received at `at`.
    pub fn to_event(&self, at: Timestamp) -> SocketEvent {
        use fix_monitor_core::{SocketEventKind, TcpCounters};
        // An abort zeroes the counters with the tuple (`tcp_disconnect`): they say nothing then.
        let info = self.info.filter(|_| !self.partial);
        SocketEvent {
            at,
            kind: SocketEventKind::Closed,
            id: self.socket.id,
            local: self.socket.local,
            remote: self.socket.remote,
            partial: self.partial,
            established: info.map(|i| i.was_established()),
            info: info.map(|i| TcpCounters {
                bytes_acked: Some(i.bytes_acked),
                bytes_received: i.bytes_received,
                retransmits: i.total_retrans,
                bytes_sent: i.bytes_sent,
            }),
            // A destroy notification says neither who closed nor who connected.
            closed_by: None,
            process: None,
            cause: None,
        }
    }
}

/// Parses one notification. `Ok(None)` for a message that is not one (a notification of another
/// type would be a kernel change; it is skipped, not fatal).
pub fn parse(bytes: &[u8]) -> Result<Option<Destroyed>, SourceError> {
    let malformed = |detail: String| SourceError::Parse {
        what: "socket-destroy notification",
        detail,
    };
    if bytes.len() < NLMSG_HDR {
        return Err(malformed(format!(
            "{} bytes, less than a header",
            bytes.len()
        )));
    }
    let len = u32::from_ne_bytes(bytes[..4].try_into().unwrap()) as usize;
    if len < NLMSG_HDR || len > bytes.len() {
        return Err(malformed(format!(
            "message length {len} in {} bytes",
            bytes.len()
        )));
    }
    if u16::from_ne_bytes([bytes[4], bytes[5]]) != SOCK_DIAG_BY_FAMILY {
        return Ok(None);
    }
    let payload = &bytes[NLMSG_HDR..len];
    let socket = netlink::parse_socket(payload)?;
    let mut info = None;
    let mut attrs = payload.get(DIAG_MSG..).unwrap_or_default();
    while attrs.len() >= 4 {
        let alen = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if alen < 4 || alen > attrs.len() {
            return Err(malformed(format!(
                "attribute length {alen} with {} bytes left",
                attrs.len()
            )));
        }
        if kind == INET_DIAG_INFO {
            info = FinalInfo::parse(&attrs[4..alen]);
        }
        attrs = &attrs[((alen + 3) & !3).min(attrs.len())..];
    }
    Ok(Some(Destroyed {
        partial: socket.remote.port() == 0,
        socket,
        info,
    }))
}

/// What one [`DestroySubscriber::drain`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    /// Notifications read (those the filter let through).
    pub received: usize,
    /// Notifications the kernel dropped since the previous drain, because the receive buffer was
    /// full. Not zero means the events are incomplete: reconcile with a full poll.
    pub lost: u64,
}

/// A netlink socket subscribed to the TCP socket-destroy groups the targets need, with the
/// targets' filter attached.
pub struct DestroySubscriber {
    socket: Socket,
    buf: Vec<u8>,
    /// `sk_drops` as last read.
    drops: u32,
    /// Whether the kernel filter is attached (it is not when the targets need too long a
    /// program: everything then reaches user space, which checks).
    filtered: bool,
    targets: Targets,
}

impl DestroySubscriber {
    /// Subscribes with a receive buffer of [`RECV_BUFFER`].
    pub fn open(targets: &Targets) -> Result<Self, SourceError> {
        Self::with_buffer(targets, RECV_BUFFER)
    }

    /// Subscribes with a receive buffer of about `recv_buffer` bytes (the kernel doubles what it
    /// is asked for and bounds it: below by about 2 KiB, above by `rmem_max` unless forced).
    pub fn with_buffer(targets: &Targets, recv_buffer: usize) -> Result<Self, SourceError> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)
            .map_err(SourceError::io("opening a NETLINK_SOCK_DIAG socket"))?;
        socket
            .bind(&NetlinkAddr::new(0, 0))
            .map_err(SourceError::io("binding the sock_diag event socket"))?;
        let filtered = match destroy_filter::compile(targets) {
            Ok(program) => {
                cbpf::attach(socket.as_fd(), &program)
                    .map_err(SourceError::io("attaching the destroy-event filter"))?;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "no destroy-event filter: every TCP close of the host reaches the sidecar, which checks them");
                false
            }
        };
        set_recv_buffer(socket.as_raw_fd(), recv_buffer).map_err(SourceError::io(
            "sizing the sock_diag event socket's buffer",
        ))?;
        socket.set_non_blocking(true).map_err(SourceError::io(
            "making the sock_diag event socket non-blocking",
        ))?;
        // The filter is attached first: nothing unfiltered is ever queued.
        let groups = [
            (GROUP_INET_TCP_DESTROY, targets.wants_ipv4()),
            (GROUP_INET6_TCP_DESTROY, targets.wants_ipv6()),
        ];
        for (group, wanted) in groups {
            if wanted {
                socket
                    .add_membership(group)
                    .map_err(SourceError::io("joining a sock_diag destroy group"))?;
            }
        }
        let drops = meminfo_drops(socket.as_raw_fd()).unwrap_or(0);
        Ok(DestroySubscriber {
            socket,
            buf: Vec::with_capacity(4096),
            drops,
            filtered,
            targets: targets.clone(),
        })
    }

    /// Whether the kernel filter is attached.
    pub fn filtered(&self) -> bool {
        self.filtered
    }

    /// The receive buffer the kernel granted, in bytes.
    pub fn recv_buffer(&self) -> usize {
        self.socket.get_rx_buf_sz().unwrap_or(0)
    }

    /// Reads every queued notification, without blocking, appending the ones that concern the
    /// targets to `out`.
    pub fn drain(&mut self, out: &mut Vec<Destroyed>) -> Result<Drained, SourceError> {
        let mut drained = Drained::default();
        let mut overflowed = false;
        loop {
            match recv(&self.socket, &mut self.buf) {
                Ok(datagram) => {
                    drained.received += 1;
                    if let Some(d) = parse(datagram)? {
                        if self.filtered
                            || destroy_filter::accepts(
                                &self.targets,
                                &d.socket.local,
                                &d.socket.remote,
                            )
                        {
                            out.push(d);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // Reported once per overflow; what is still queued is intact.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => overflowed = true,
                Err(e) => {
                    return Err(SourceError::Io {
                        context: "reading socket-destroy notifications",
                        source: e,
                    })
                }
            }
        }
        let drops = meminfo_drops(self.socket.as_raw_fd())
            .map_err(SourceError::io("reading the event socket's drop count"))?;
        drained.lost = u64::from(drops.wrapping_sub(self.drops));
        self.drops = drops;
        if overflowed && drained.lost == 0 {
            // ENOBUFS without a counted drop cannot happen on the kernels this was written
            // against; count one so that the caller still reconciles.
            drained.lost = 1;
        }
        Ok(drained)
    }
}

impl AsRawFd for DestroySubscriber {
    /// The socket to wait on (readable when notifications are queued, or an overflow is to be
    /// reported).
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

pub use super::events::EventBatch as Batch;

/// How long the reader waits for a notification before it asks whether to stop.
const READER_WAKE: std::time::Duration = std::time::Duration::from_millis(200);

/// Runs `sub` on a thread of its own: it sleeps in `poll(2)` until notifications are queued,
/// reads them all, and hands them to `deliver`, until `stopped` says so (asked at least every
/// [`READER_WAKE`]) or `deliver` returns false (its receiver is gone). `stopped` is the
/// caller's own stop signal (the sidecar's cancellation token), so that this crate needs none.
pub fn spawn_reader(
    mut sub: DestroySubscriber,
    stopped: impl Fn() -> bool + Send + 'static,
    mut deliver: impl FnMut(Batch) -> bool + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("fix-monitor-events".into())
        .spawn(move || {
            let mut raw = Vec::new();
            while !stopped() {
                match wait_readable(sub.as_raw_fd(), READER_WAKE) {
                    Ok(false) => continue,
                    Ok(true) => {}
                    Err(e) => {
                        if !deliver(Batch {
                            error: Some(SourceError::Io {
                                context: "waiting for socket-destroy notifications",
                                source: e,
                            }),
                            ..Batch::default()
                        }) {
                            return;
                        }
                        std::thread::sleep(READER_WAKE);
                        continue;
                    }
                }
                raw.clear();
                let result = sub.drain(&mut raw);
                let at = Timestamp::now();
                let mut batch = Batch {
                    events: raw.iter().map(|d| d.to_event(at)).collect(),
                    ..Batch::default()
                };
                match result {
                    Ok(d) => batch.lost = d.lost,
                    Err(e) => batch.error = Some(e),
                }
                if (!batch.events.is_empty() || batch.lost > 0 || batch.error.is_some())
                    && !deliver(batch)
                {
                    return;
                }
            }
        })
        .expect("spawning the event reader thread")
}

/// Waits up to `timeout` for `fd` to be readable (or in error: an overflow is reported as one).
fn wait_readable(fd: RawFd, timeout: std::time::Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
    match n {
        -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => Ok(false),
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(false),
        _ => Ok(true),
    }
}

/// Receives one datagram whole (peeked first, as the dump reader does).
fn recv<'b>(socket: &Socket, buf: &'b mut Vec<u8>) -> io::Result<&'b [u8]> {
    netlink::recv_whole(socket, buf)
}

/// Asks for `size` bytes of receive buffer: beyond `rmem_max` where the process may
/// (`SO_RCVBUFFORCE`, `CAP_NET_ADMIN`), else up to it.
fn set_recv_buffer(fd: RawFd, size: usize) -> io::Result<()> {
    let size = libc::c_int::try_from(size / 2).unwrap_or(libc::c_int::MAX);
    let set = |opt| {
        // SAFETY: an int option, passed by pointer with its size.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    if set(libc::SO_RCVBUFFORCE) == 0 || set(libc::SO_RCVBUF) == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The socket's `sk_drops`: notifications the kernel could not queue.
fn meminfo_drops(fd: RawFd) -> io::Result<u32> {
    let mut info = [0u32; 9];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: `info` is writable for `len` bytes; the kernel writes at most that.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info[libc::SK_MEMINFO_DROPS as usize])
}

#[cfg(test)]
pub(crate) mod tests {
    //! Live tests on the real kernel. Each uses its own 127.0.93.x addresses and listeners on
    //! ports from the kernel, and targets that name them, so that tests running side by side
    //! (and other processes' connections) cannot reach their filters.

    use super::*;
    use crate::TcpState;
    use fix_monitor_core::target::Target;
    use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    type Spec<'a> = (&'a str, Option<u16>, Option<(u16, u16)>);

    fn targets(list: &[Spec]) -> Targets {
        Targets::new(
            list.iter()
                .map(|&(n, p, l)| Target::test(n, p, l))
                .collect(),
        )
    }

    /// The kernel's cookie of one of our sockets (`SO_COOKIE`).
    pub(crate) fn cookie(s: &impl AsRawFd) -> u64 {
        let mut c = 0u64;
        let mut len = 8 as libc::socklen_t;
        // SAFETY: a u64 option into a u64.
        let r = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_COOKIE,
                (&mut c as *mut u64).cast(),
                &mut len,
            )
        };
        assert_eq!(r, 0, "{}", io::Error::last_os_error());
        c
    }

    /// A connection from `from` to `l`, with `SO_LINGER` 0 on the client if `abort`.
    fn connect(from: &str, l: &TcpListener, abort: bool) -> (TcpStream, TcpStream) {
        let to = l.local_addr().unwrap();
        let s = socket2::Socket::new(
            socket2::Domain::for_address(to),
            socket2::Type::STREAM,
            None,
        )
        .unwrap();
        if abort {
            s.set_linger(Some(Duration::ZERO)).unwrap();
        }
        s.bind(&sa(from).into()).unwrap();
        s.connect(&to.into()).unwrap();
        let (server, _) = l.accept().unwrap();
        (s.into(), server)
    }

    /// Drains `sub` until `want` notifications have come (or 5 s have passed).
    fn wait_for(sub: &mut DestroySubscriber, want: usize) -> (Vec<Destroyed>, Drained) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut out = Vec::new();
        let mut total = Drained::default();
        while out.len() < want && Instant::now() < deadline {
            let d = sub.drain(&mut out).unwrap();
            total.received += d.received;
            total.lost += d.lost;
            std::thread::sleep(Duration::from_millis(5));
        }
        (out, total)
    }

    /// Nothing more arrives for a while (notifications go out from a workqueue, promptly).
    fn assert_quiet(sub: &mut DestroySubscriber) {
        std::thread::sleep(Duration::from_millis(200));
        let mut out = Vec::new();
        let d = sub.drain(&mut out).unwrap();
        assert_eq!((d.received, out.len()), (0, 0), "unexpected: {out:?}");
    }

    #[test]
    fn live_fin_closes_from_either_side_keep_the_whole_tuple() {
        let l = TcpListener::bind("127.0.93.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let ts = targets(&[("127.0.93.1/32", Some(port), None)]);
        let mut sub = DestroySubscriber::open(&ts).unwrap();
        assert!(sub.filtered());

        // We close first (FIN): our socket goes to TIME_WAIT and the full socket is freed.
        let (client, server) = connect("127.0.93.2:0", &l, false);
        let (local, c) = (client.local_addr().unwrap(), cookie(&client));
        client.shutdown(Shutdown::Both).unwrap();
        drop(client);
        drop(server);
        let (got, _) = wait_for(&mut sub, 1);
        assert_eq!(got.len(), 1, "{got:?}");
        let d = got[0];
        assert_eq!(
            (d.socket.id, d.socket.local, d.socket.remote),
            (c, local, l.local_addr().unwrap())
        );
        assert!(!d.partial);
        let info = d.info.expect("the final tcp_info");
        assert!(info.was_established(), "{info:?}");
        assert_quiet(&mut sub);

        // The peer closes first (FIN): ours sits in CLOSE_WAIT, announced only when we close.
        let (mut client, mut server) = connect("127.0.93.2:0", &l, false);
        let c = cookie(&client);
        std::io::Write::write_all(&mut client.try_clone().unwrap(), b"hello").unwrap();
        let mut got = [0u8; 5];
        std::io::Read::read_exact(&mut server, &mut got).unwrap();
        drop(server);
        let mut b = [0u8; 1];
        assert_eq!(
            std::io::Read::read(&mut client, &mut b).unwrap(),
            0,
            "peer's FIN"
        );
        assert_quiet(&mut sub);
        drop(client);
        let (got, _) = wait_for(&mut sub, 1);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].socket.id, c);
        assert!(!got[0].partial);
        let info = got[0].info.unwrap();
        // The kernel counts sequence space: the 5 bytes, our SYN and our FIN; the peer's FIN.
        assert_eq!((info.bytes_acked, info.bytes_received), (7, 1), "{info:?}");
        // Bytes sent count data only: the 5 bytes.
        assert_eq!(info.bytes_sent, Some(5), "{info:?}");
        assert!(info.was_established());
    }

    #[test]
    fn live_resets_from_the_peer_keep_the_tuple_and_our_aborts_clear_the_remote_port() {
        let l = TcpListener::bind("127.0.93.3:0").unwrap();
        let at = l.local_addr().unwrap();
        let ts = targets(&[("127.0.93.3/32", Some(at.port()), None)]);
        let mut sub = DestroySubscriber::open(&ts).unwrap();

        // The peer resets.
        let (client, server) = connect("127.0.93.4:0", &l, false);
        let (local, c) = (client.local_addr().unwrap(), cookie(&client));
        socket2::SockRef::from(&server)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(server);
        assert_quiet(&mut sub);
        drop(client);
        let (got, _) = wait_for(&mut sub, 1);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            (got[0].socket.id, got[0].socket.local, got[0].socket.remote),
            (c, local, at)
        );
        assert!(!got[0].partial);

        // We abort (SO_LINGER 0), from an address chosen by the kernel (not bound): the remote
        // port and the local address are gone from the notification; the cookie, the remote
        // address and the local port are left.
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_linger(Some(Duration::ZERO)).unwrap();
        s.connect(&at.into()).unwrap();
        let client: TcpStream = s.into();
        let (_server, _) = l.accept().unwrap();
        let (local, c) = (client.local_addr().unwrap(), cookie(&client));
        drop(client);
        let (got, _) = wait_for(&mut sub, 1);
        assert_eq!(got.len(), 1, "{got:?}");
        let d = got[0];
        assert_eq!(d.socket.id, c);
        assert!(d.partial);
        assert_eq!(d.socket.remote, SocketAddr::new(at.ip(), 0));
        assert_eq!(d.socket.local.port(), local.port());
        assert!(d.socket.local.ip().is_unspecified(), "{d:?}");
        assert_eq!(d.socket.state, TcpState::Close);
        // `tcp_disconnect` zeroes the counters too: an abort's final tcp_info says nothing.
        assert_eq!(
            d.info,
            Some(FinalInfo {
                bytes_sent: Some(0),
                ..FinalInfo::default()
            })
        );
    }

    #[test]
    fn live_refused_attempts_are_told_apart_by_their_final_tcp_info() {
        // A port with no listener: bind one and close it.
        let port = TcpListener::bind("127.0.93.5:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let ts = targets(&[("127.0.93.5/32", Some(port), None)]);
        let mut sub = DestroySubscriber::open(&ts).unwrap();
        let err = TcpStream::connect(("127.0.93.5", port)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        let (got, _) = wait_for(&mut sub, 1);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(!got[0].info.unwrap().was_established(), "{got:?}");

        // The accepted (server) end of a connection that carried nothing was established.
        let l = TcpListener::bind("127.0.93.12:0").unwrap();
        let ts = targets(&[("127.0.93.13/32", None, None)]);
        let mut sub = DestroySubscriber::open(&ts).unwrap();
        let (client, server) = connect("127.0.93.13:0", &l, false);
        let c = cookie(&server);
        drop(client);
        drop(server);
        let (got, _) = wait_for(&mut sub, 1);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].socket.id, c);
        assert!(got[0].info.unwrap().was_established(), "{got:?}");
    }

    #[test]
    fn live_unrelated_closes_never_pass_the_filter() {
        let l = TcpListener::bind("127.0.93.6:0").unwrap();
        let other = TcpListener::bind("127.0.93.6:0").unwrap();
        let l6 = TcpListener::bind("[::1]:0").unwrap();
        let at = l.local_addr().unwrap();
        let ts = targets(&[
            ("127.0.93.6/32", Some(at.port()), Some((1024, 65535))),
            ("::1/128", Some(l6.local_addr().unwrap().port()), None),
        ]);
        let mut sub = DestroySubscriber::open(&ts).unwrap();
        assert!(sub.filtered());
        // Same addresses, another remote port, closed with FIN from either side and reset by
        // the peer; IPv6 to another port.
        for _ in 0..20 {
            drop(connect("127.0.93.7:0", &other, false));
            let (c, s) = connect("127.0.93.7:0", &other, false);
            drop(s);
            drop(c);
            let (c, s) = connect("127.0.93.7:0", &other, false);
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(s);
            drop(c);
        }
        let l6other = TcpListener::bind("[::1]:0").unwrap();
        for _ in 0..20 {
            drop(connect("[::1]:0", &l6other, false));
        }
        assert_quiet(&mut sub);
        // Our own aborts to the same address but another port do pass, without their remote
        // port (the filter cannot tell them from the target's; see the module docs). User
        // space gets them as partial, to be matched by cookie or left unattributed.
        let (c, _s) = connect("127.0.93.7:0", &other, true);
        drop(c);
        let (got, _) = wait_for(&mut sub, 1);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].partial);
        assert_quiet(&mut sub);
        // The targets' own closes do pass, IPv4 and IPv6.
        drop(connect("127.0.93.7:0", &l, false));
        drop(connect("[::1]:0", &l6, false));
        let (got, d) = wait_for(&mut sub, 2);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(d.received, 2, "nothing else reached user space");
        assert_eq!(d.lost, 0);
    }

    #[test]
    fn live_an_overflow_is_counted_exactly() {
        let l = TcpListener::bind("127.0.93.8:0").unwrap();
        let at = l.local_addr().unwrap();
        let ts = targets(&[("127.0.93.8/32", Some(at.port()), None)]);
        // The smallest buffer the kernel allows.
        let mut sub = DestroySubscriber::with_buffer(&ts, 0).unwrap();
        let n = 200;
        for _ in 0..n {
            drop(connect("127.0.93.9:0", &l, true));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let (mut out, mut lost) = (Vec::new(), 0);
        while (out.len() as u64 + lost) < n && Instant::now() < deadline {
            let d = sub.drain(&mut out).unwrap();
            lost += d.lost;
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            lost > 0,
            "the buffer of {} bytes overflowed",
            sub.recv_buffer()
        );
        assert_eq!(
            out.len() as u64 + lost,
            n,
            "every close is either read or counted lost"
        );
        // After the overflow, notifications flow again.
        drop(connect("127.0.93.9:0", &l, true));
        let (got, d) = wait_for(&mut sub, 1);
        assert_eq!((got.len(), d.lost), (1, 0));
    }

    #[test]
    fn hostile_bytes_are_errors_not_panics() {
        let l = TcpListener::bind("127.0.93.10:0").unwrap();
        let ts = targets(&[("127.0.93.10/32", None, None)]);
        let mut sub = DestroySubscriber::open(&ts).unwrap();
        drop(connect("127.0.93.11:0", &l, false));
        let mut raw = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while raw.is_empty() && Instant::now() < deadline {
            if let Ok(d) = recv(&sub.socket, &mut sub.buf) {
                raw = d.to_vec();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(parse(&raw).unwrap().is_some());
        for cut in 0..raw.len() {
            let _ = parse(&raw[..cut]);
        }
        let mut bad = raw.clone();
        bad[16 + 72] = 0xff; // an attribute length beyond the message
        bad[16 + 72 + 1] = 0xff;
        assert!(parse(&bad).is_err());
        let mut other = raw.clone();
        other[4] = 99;
        assert_eq!(parse(&other).unwrap(), None);
    }

    #[test]
    fn live_the_reader_thread_delivers_events_and_stops() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{mpsc, Arc};
        let l = TcpListener::bind("127.0.93.14:0").unwrap();
        let ts = targets(&[("127.0.93.14/32", Some(l.local_addr().unwrap().port()), None)]);
        let sub = DestroySubscriber::open(&ts).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let stopped = stop.clone();
        let reader = spawn_reader(
            sub,
            move || stopped.load(Ordering::Relaxed),
            move |b| tx.send(b).is_ok(),
        );
        let (client, server) = connect("127.0.93.15:0", &l, false);
        let c = cookie(&client);
        drop(client);
        drop(server);
        let batch = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(batch.events.len(), 1, "{batch:?}");
        let e = &batch.events[0];
        assert_eq!((e.id, e.partial, e.established), (c, false, Some(true)));
        assert_eq!(e.kind, fix_monitor_core::SocketEventKind::Closed);
        stop.store(true, Ordering::Relaxed);
        reader.join().unwrap();
    }
}
