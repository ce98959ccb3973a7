//! The Linux `sock_diag` source: ESTABLISHED TCP sockets, dumped through `NETLINK_SOCK_DIAG` and
//! filtered in the kernel by the program [`super::bytecode`] compiles from the targets, so that
//! only the matching sockets reach user space.
//!
//! # One walk of the socket table per poll
//! Whatever the filter lets through, every dump walks the kernel's whole ESTABLISHED hash table
//! (`inet_diag_dump_icsk`), which holds the IPv4 and the IPv6 sockets alike; on a busy host that
//! walk is most of the cost of a poll. A `SOCK_DIAG_BY_FAMILY` request names one family, so it
//! takes two dumps, and two walks, to read both. The legacy request, `TCPDIAG_GETSOCK` with a
//! `struct inet_diag_req`, is served by the same code: `inet_diag_rcv_msg_compat` audits its
//! `INET_DIAG_REQ_BYTECODE` attribute as for the other, and its reply is the same
//! `inet_diag_msg` records (typed `TCPDIAG_GETSOCK`). But `inet_diag_dump_compat` turns it into
//! a request for family `AF_UNSPEC`, whatever family it names, and `inet_diag_dump_icsk` skips a
//! socket for its family only when one is named: one dump, one walk, both families.
//!
//! [`NetlinkSource::open`] therefore sends that request once, for no socket state so that it
//! walks nothing, and polls with it ([`DumpMode::OneWalk`]) when the kernel answers; a kernel
//! that refuses it gets one `SOCK_DIAG_BY_FAMILY` dump per family instead
//! ([`DumpMode::PerFamily`]), as do targets that need one family only (IPv6 targets alone: one
//! dump, one walk already). The log says which and why.
//!
//! I/O and parsing are apart: [`NetlinkSource`] sends the requests and receives the datagrams of
//! each reply; [`parse_dump`] is a pure function of one datagram's bytes.
//!
//! Layouts, from `include/uapi/linux/netlink.h`, `sock_diag.h` and `inet_diag.h` (integers in
//! host byte order unless marked big-endian):
//! ```text
//! nlmsghdr        len u32, type u16, flags u16, seq u32, pid u32                    16 bytes
//! inet_diag_req_v2  family u8, protocol u8, ext u8, pad u8, states u32, sockid      56 bytes
//! inet_diag_req     family u8, src_len u8, dst_len u8, ext u8, sockid,
//!   (legacy)        states u32, dbs u32                                             60 bytes
//! inet_diag_msg     family u8, state u8, timer u8, retrans u8, sockid,
//!                   expires, rqueue, wqueue, uid, inode (u32 each)                  72 bytes
//!   then attributes nlattr: len u16, type u16, payload; each padded to 4 bytes
//! inet_diag_sockid  sport be16, dport be16, src [u8; 16], dst [u8; 16], if u32,
//!                   cookie [u32; 2] (low word first)                                48 bytes
//! ```
//!
//! # TCP health
//! A request's `ext` byte asks for extensions; with the `INET_DIAG_INFO` bit the kernel adds
//! each socket's `struct tcp_info` as an attribute (for the sockets the filter passed only),
//! which `tcp_info` reads into [`SocketEntry::health`]. The legacy request carries the
//! byte too (`inet_diag_dump_compat` copies `idiag_ext`). It costs a `tcp_get_info` per
//! matching socket and some 250 bytes more per record; [`NetlinkSource::set_tcp_info`] turns it
//! off, for measurements.

use fix_monitor_core::{Capabilities, Confirmation, EventFeed, HealthFeed, ProcessFeed};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr as NetlinkAddr};

use super::{bytecode, tcp_info, SocketEntry, Source, SourceError, SourceKind, TcpState};
use fix_monitor_core::target::Targets;

const NLMSG_HDR: usize = 16;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_DUMP: u16 = 0x300;
const TCPDIAG_GETSOCK: u16 = 18;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const INET_DIAG_REQ_BYTECODE: u16 = 1;
/// The reply attribute holding `struct tcp_info`, and its bit in a request's `ext` byte.
const INET_DIAG_INFO: u16 = 2;
const EXT_INFO: u8 = 1 << (INET_DIAG_INFO - 1);
/// An attribute's type bits, without the nested and byte-order flags.
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLA_HDR: usize = 4;
const REQ_V1: usize = 60;
const REQ_V2: usize = 56;
const DIAG_MSG: usize = 72;
/// The TCP states a poll asks for, as a bit set: ESTABLISHED (state 1).
const ESTABLISHED: u32 = 1 << 1;

/// Receive buffer to start with. The kernel fills dump datagrams up to the larger of about a
/// page and the biggest buffer recvmsg was given, capped near 32 KiB, and makes one bigger
/// only when a single socket does not fit: a bigger datagram still arrives whole, the buffer
/// grows for it.
const RECV_BUFFER: usize = 64 * 1024;

/// How long one receive waits for the kernel's next datagram on the dump and lookup sockets
/// (`SO_RCVTIMEO`). The kernel answers a dump within milliseconds, even of 50,000 sockets; a
/// reply that does not come is a stuck kernel or a lost request, and must not hang the poll
/// thread (nor its shutdown): the receive fails with [`io::ErrorKind::TimedOut`], the poll (or
/// lookup) fails like any other, and the next one starts on a fresh socket, so a late reply is
/// never read as the answer to a later request.
pub const RECV_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The sockets one dump asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `AF_INET`, with a `SOCK_DIAG_BY_FAMILY` request.
    Inet,
    /// `AF_INET6`, with a `SOCK_DIAG_BY_FAMILY` request.
    Inet6,
    /// Both, in one walk: a `TCPDIAG_GETSOCK` request (see the module docs).
    Both,
}

impl Family {
    fn af(self) -> u8 {
        match self {
            Family::Inet => libc::AF_INET as u8,
            Family::Inet6 => libc::AF_INET6 as u8,
            Family::Both => libc::AF_UNSPEC as u8,
        }
    }
}

/// How a poll reads the sockets of both families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpMode {
    /// One [`Family::Both`] dump: one walk of the socket table.
    OneWalk,
    /// One dump per family the targets need.
    PerFamily,
}

impl DumpMode {
    /// The mode's name, for logs and benchmarks.
    pub fn as_str(self) -> &'static str {
        match self {
            DumpMode::OneWalk => "one-walk",
            DumpMode::PerFamily => "per-family",
        }
    }
}

/// Where a dump stands after one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpProgress {
    /// More datagrams follow.
    More,
    /// The datagram ended with `NLMSG_DONE`.
    Done,
}

/// Reads ESTABLISHED TCP sockets through `NETLINK_SOCK_DIAG`.
pub struct NetlinkSource {
    targets: Targets,
    /// `None` after an error, so that the next poll starts on a fresh socket rather than on the
    /// unread rest of a broken dump (the kernel refuses a new dump while one is running).
    socket: Option<Socket>,
    mode: DumpMode,
    /// One ready-made request per dump a poll makes; a poll only rewrites the sequence number.
    requests: Vec<(Family, Vec<u8>)>,
    /// The kernel filter; `None` when the targets need too long a program.
    program: Option<Vec<u8>>,
    /// Whether polls ask for each socket's `tcp_info` (on unless turned off).
    tcp_info: bool,
    buf: Vec<u8>,
    seq: u32,
    stats: PollStats,
    /// See [`RECV_TIMEOUT`].
    recv_timeout: std::time::Duration,
    /// (cookie, socket inode) of the last poll's sockets, sorted, once `keep_inodes` asked for
    /// them (`poll.process_lookup`); `None` otherwise.
    inodes: Option<Vec<(u64, u64)>>,
}

/// What the last poll cost; the tests read it to see the filter and the multi-part reads work.
#[derive(Debug, Default, Clone, Copy)]
struct PollStats {
    /// Requests sent: walks of the socket table.
    dumps: usize,
    datagrams: usize,
    /// Sockets the kernel sent, before the user-space check.
    received: usize,
}

impl NetlinkSource {
    /// Health in every dump; process by inode (after `keep_inodes`); misses confirmed by
    /// cookie; the kernel's destroy notifications pair with it.
    pub const CAPABILITIES: Capabilities = Capabilities {
        events: EventFeed::DestroyNotifications,
        health: HealthFeed::InPoll,
        process: ProcessFeed::ByInode,
        closed_by: false,
        confirm: Confirmation::ByCookie,
        reconciles: false,
    };

    /// Opens the netlink socket, compiles the targets into the kernel filter and settles how
    /// polls dump ([`DumpMode`]): where the targets need both families, a probe finds out
    /// whether the kernel serves the one-walk request. Fails where `AF_NETLINK` is unavailable.
    pub fn open(targets: &Targets) -> Result<Self, SourceError> {
        let program = compile(targets);
        if !(targets.wants_ipv4() && targets.wants_ipv6()) {
            let reason = if targets.is_empty() {
                "no targets, no dumps"
            } else {
                "IPv6 targets only: one dump per poll already"
            };
            tracing::info!(
                mode = DumpMode::PerFamily.as_str(),
                reason,
                "sock_diag dump mode selected"
            );
            return Self::with_mode(targets, program, RECV_BUFFER, DumpMode::PerFamily);
        }
        let probe = request(Family::Both, program.as_deref(), 0, 0);
        let mut source = Self::with_mode(targets, program, RECV_BUFFER, DumpMode::OneWalk)?;
        source.probe_one_walk(probe);
        Ok(source)
    }

    /// Opens the source in `mode` without asking whether the kernel serves it, for tests and
    /// measurements that need a given mode; [`NetlinkSource::open`] is what the monitor uses.
    pub fn open_in(targets: &Targets, mode: DumpMode) -> Result<Self, SourceError> {
        Self::with_mode(targets, compile(targets), RECV_BUFFER, mode)
    }

    /// How polls dump.
    pub fn mode(&self) -> DumpMode {
        self.mode
    }

    /// Whether polls ask the kernel for each matching socket's `tcp_info` (they do unless told
    /// otherwise; without it every [`SocketEntry::health`] is `None`). For measuring its cost.
    pub fn set_tcp_info(&mut self, on: bool) {
        self.tcp_info = on;
        self.set_mode(self.mode);
    }

    /// Bounds each receive of a dump's reply at `timeout` (default [`RECV_TIMEOUT`]).
    pub fn set_recv_timeout(&mut self, timeout: std::time::Duration) -> Result<(), SourceError> {
        self.recv_timeout = timeout;
        if let Some(s) = &self.socket {
            set_recv_timeout(s, timeout)
                .map_err(SourceError::io("bounding the sock_diag socket's receives"))?;
        }
        Ok(())
    }

    /// See [`NetlinkSource::set_tcp_info`].
    pub fn tcp_info(&self) -> bool {
        self.tcp_info
    }

    fn with_mode(
        targets: &Targets,
        program: Option<Vec<u8>>,
        recv_buffer: usize,
        mode: DumpMode,
    ) -> Result<Self, SourceError> {
        let mut source = NetlinkSource {
            targets: targets.clone(),
            socket: Some(open_socket()?),
            recv_timeout: RECV_TIMEOUT,
            mode,
            requests: Vec::new(),
            program,
            tcp_info: true,
            buf: Vec::with_capacity(recv_buffer),
            seq: 0,
            stats: PollStats::default(),
            inodes: None,
        };
        source.set_mode(mode);
        Ok(source)
    }

    fn set_mode(&mut self, mode: DumpMode) {
        let families = match mode {
            _ if self.targets.is_empty() => vec![],
            DumpMode::OneWalk => vec![Family::Both],
            DumpMode::PerFamily => [
                (Family::Inet, self.targets.wants_ipv4()),
                (Family::Inet6, self.targets.wants_ipv6()),
            ]
            .into_iter()
            .filter_map(|(f, wanted)| wanted.then_some(f))
            .collect(),
        };
        self.mode = mode;
        let ext = if self.tcp_info { EXT_INFO } else { 0 };
        self.requests = families
            .into_iter()
            .map(|f| (f, request(f, self.program.as_deref(), ESTABLISHED, ext)))
            .collect();
    }

    /// Sends `probe`, the one-walk request of a poll but for no TCP state at all: the kernel
    /// parses, audits and answers it like the real one, but walks no table
    /// (`inet_diag_dump_icsk` walks the listening, bound and established tables only for the
    /// states they hold), so the probe costs a round trip, not a walk. If the kernel refuses it
    /// (whatever the error: the per-family dumps are the known-good way), falls back to those
    /// for good.
    fn probe_one_walk(&mut self, probe: Vec<u8>) {
        let mut scratch = Vec::new();
        let result = self.dump_extra(Family::Both, probe, |datagram| {
            parse_dump(datagram, &mut scratch)
        });
        match result {
            Ok(()) => tracing::info!(
                mode = self.mode.as_str(),
                reason = "the kernel serves TCPDIAG_GETSOCK dumps for AF_UNSPEC: \
                          IPv4 and IPv6 in one walk of the socket table",
                "sock_diag dump mode selected"
            ),
            Err(error) => {
                self.set_mode(DumpMode::PerFamily);
                tracing::info!(
                    mode = self.mode.as_str(),
                    reason = "the kernel refused the one-walk TCPDIAG_GETSOCK dump",
                    %error,
                    "sock_diag dump mode selected"
                );
            }
        }
    }

    /// Runs one filtered dump of `family` and hands each datagram of the reply to `each`, as
    /// received. For captures and diagnostics (see `examples/capture_netlink.rs`).
    pub fn dump_raw(
        &mut self,
        family: Family,
        mut each: impl FnMut(&[u8]),
    ) -> Result<(), SourceError> {
        let mut scratch = Vec::new();
        let on_datagram = |datagram: &[u8]| {
            each(datagram);
            parse_dump(datagram, &mut scratch)
        };
        match self.requests.iter().position(|(f, _)| *f == family) {
            Some(i) => self.dump(i, on_datagram),
            None => {
                let ext = if self.tcp_info { EXT_INFO } else { 0 };
                let r = request(family, self.program.as_deref(), ESTABLISHED, ext);
                self.dump_extra(family, r, on_datagram)
            }
        }
    }

    /// Sends `request`, for a dump polls do not make, and feeds the reply to `on_datagram`;
    /// leaves the polls' requests as they were.
    fn dump_extra(
        &mut self,
        family: Family,
        request: Vec<u8>,
        on_datagram: impl FnMut(&[u8]) -> Result<DumpProgress, SourceError>,
    ) -> Result<(), SourceError> {
        self.requests.push((family, request));
        let result = self.dump(self.requests.len() - 1, on_datagram);
        self.requests.pop();
        result
    }

    /// Sends request `i` and feeds the reply to `on_datagram` until it says `Done`.
    fn dump(
        &mut self,
        i: usize,
        on_datagram: impl FnMut(&[u8]) -> Result<DumpProgress, SourceError>,
    ) -> Result<(), SourceError> {
        let socket = match self.socket.take() {
            Some(s) => s,
            None => {
                let s = open_socket()?;
                if self.recv_timeout != RECV_TIMEOUT {
                    set_recv_timeout(&s, self.recv_timeout)
                        .map_err(SourceError::io("bounding the sock_diag socket's receives"))?;
                }
                s
            }
        };
        self.seq = self.seq.wrapping_add(1);
        self.stats.dumps += 1;
        let request = &mut self.requests[i].1;
        request[8..12].copy_from_slice(&self.seq.to_ne_bytes());
        let result = exchange(
            &socket,
            request,
            &mut self.buf,
            &mut self.stats,
            on_datagram,
        );
        if result.is_ok() {
            self.socket = Some(socket);
        }
        result
    }
}

/// The kernel filter for `targets`, or `None` (and a warning) when it would be too long.
fn compile(targets: &Targets) -> Option<Vec<u8>> {
    match bytecode::compile(targets) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(error = %e, "dumping every ESTABLISHED socket and matching in user space");
            None
        }
    }
}

impl Source for NetlinkSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Netlink
    }

    fn capabilities(&self) -> Capabilities {
        NetlinkSource::CAPABILITIES
    }

    fn poll(&mut self, out: &mut Vec<SocketEntry>) -> Result<(), SourceError> {
        out.clear();
        self.stats = PollStats::default();
        let mut inodes = self.inodes.take();
        if let Some(v) = &mut inodes {
            v.clear();
        }
        for i in 0..self.requests.len() {
            let result = self.dump(i, |datagram| {
                if let Some(v) = &mut inodes {
                    socket_inodes(datagram, v);
                }
                parse_dump(datagram, out)
            });
            if let Err(e) = result {
                out.clear();
                self.inodes = inodes.map(|_| Vec::new());
                return Err(e);
            }
        }
        if let Some(v) = &mut inodes {
            v.sort_unstable();
            v.dedup_by_key(|e| e.0);
        }
        self.inodes = inodes;
        self.stats.received = out.len();
        // The kernel filter already did this; the check costs little on the few sockets left
        // and keeps the answer exact if the filter could not be used.
        let targets = &self.targets;
        out.retain(|e| {
            e.state == TcpState::Established && targets.classify(&e.local, &e.remote).is_some()
        });
        dedup(out);
        Ok(())
    }

    fn keep_inodes(&mut self) {
        self.inodes.get_or_insert_with(Vec::new);
    }

    fn inode(&self, id: u64) -> Option<u64> {
        let v = self.inodes.as_ref()?;
        let i = v.binary_search_by_key(&id, |e| e.0).ok()?;
        Some(v[i].1).filter(|i| *i != 0)
    }
}

/// Appends (cookie, `idiag_inode`) of each socket message of a dump datagram to `out`; what
/// is malformed is left to [`parse_dump`] to report.
fn socket_inodes(bytes: &[u8], out: &mut Vec<(u64, u64)>) {
    let mut rest = bytes;
    while rest.len() >= NLMSG_HDR {
        let len = u32_at(rest, 0) as usize;
        if len < NLMSG_HDR || len > rest.len() {
            return;
        }
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        let m = &rest[NLMSG_HDR..len];
        if matches!(kind, SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK) && m.len() >= DIAG_MSG {
            let cookie = u64::from(u32_at(m, 44)) | u64::from(u32_at(m, 48)) << 32;
            out.push((cookie, u64::from(u32_at(m, 68))));
        }
        rest = &rest[((len + 3) & !3).min(rest.len())..];
    }
}

/// The kernel dumps a datagram at a time and resumes each by position in a hash bucket; a
/// socket inserted or removed in between can shift another into the next datagram, which then
/// lists it again. Every socket is reported once: the cookie tells sockets apart.
fn dedup(out: &mut Vec<SocketEntry>) {
    out.sort_unstable_by_key(|e| e.id);
    out.dedup_by_key(|e| e.id);
}

pub(super) fn open_socket() -> Result<Socket, SourceError> {
    let socket = Socket::new(NETLINK_SOCK_DIAG)
        .map_err(SourceError::io("opening a NETLINK_SOCK_DIAG socket"))?;
    // Connected to the kernel, the socket takes datagrams from nobody else.
    socket
        .connect(&NetlinkAddr::new(0, 0))
        .map_err(SourceError::io("connecting the sock_diag socket"))?;
    set_recv_timeout(&socket, RECV_TIMEOUT)
        .map_err(SourceError::io("bounding the sock_diag socket's receives"))?;
    Ok(socket)
}

/// Sets `SO_RCVTIMEO`: a blocking receive on `socket` fails after `timeout` without data.
pub(super) fn set_recv_timeout(socket: &Socket, timeout: std::time::Duration) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a timeval for SO_RCVTIMEO, read by the kernel during the call.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// [`recv_whole`] on a blocking socket whose receives are bounded ([`RECV_TIMEOUT`]): a receive
/// that timed out is [`io::ErrorKind::TimedOut`], saying so.
pub(super) fn recv_reply<'b>(socket: &Socket, buf: &'b mut Vec<u8>) -> io::Result<&'b [u8]> {
    recv_whole(socket, buf).map_err(|e| {
        if e.kind() == io::ErrorKind::WouldBlock {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "no reply from the kernel within the receive timeout (SO_RCVTIMEO)",
            )
        } else {
            e
        }
    })
}

/// A dump request for the TCP sockets of `family` in `states` (a bit per state), filtered by
/// `program` if given, with the extensions `ext` asks for (a bit per attribute): a
/// `SOCK_DIAG_BY_FAMILY` one for a single family, a `TCPDIAG_GETSOCK` one for both. The
/// sequence number (bytes 8..12) is filled in per dump.
fn request(family: Family, program: Option<&[u8]>, states: u32, ext: u8) -> Vec<u8> {
    let (kind, body) = match family {
        Family::Inet | Family::Inet6 => (SOCK_DIAG_BY_FAMILY, REQ_V2),
        Family::Both => (TCPDIAG_GETSOCK, REQ_V1),
    };
    let attr = program.map_or(0, |p| 4 + p.len());
    let len = NLMSG_HDR + body + attr;
    let mut r = Vec::with_capacity(len);
    r.extend_from_slice(&(len as u32).to_ne_bytes());
    r.extend_from_slice(&kind.to_ne_bytes());
    r.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    r.extend_from_slice(&[0; 8]); // seq, pid
    match family {
        Family::Inet | Family::Inet6 => {
            r.extend_from_slice(&[family.af(), libc::IPPROTO_TCP as u8, ext, 0]);
            r.extend_from_slice(&states.to_ne_bytes());
            r.extend_from_slice(&[0; 48]); // inet_diag_sockid: zero ports match any
        }
        Family::Both => {
            // The message type says TCP. A dump reads neither the family (AF_UNSPEC anyway) nor
            // the address lengths.
            r.extend_from_slice(&[family.af(), 0, 0, ext]);
            r.extend_from_slice(&[0; 48]); // inet_diag_sockid: zero ports match any
            r.extend_from_slice(&states.to_ne_bytes());
            r.extend_from_slice(&[0; 4]); // idiag_dbs, unused
        }
    }
    debug_assert_eq!(r.len(), NLMSG_HDR + body);
    if let Some(p) = program {
        r.extend_from_slice(&(attr as u16).to_ne_bytes());
        r.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        r.extend_from_slice(p); // a multiple of 4 long: no padding
    }
    r
}

/// Sends `request` and reads the reply, datagram after datagram, until `on_datagram` has seen
/// the end of the dump.
fn exchange(
    socket: &Socket,
    request: &[u8],
    buf: &mut Vec<u8>,
    stats: &mut PollStats,
    mut on_datagram: impl FnMut(&[u8]) -> Result<DumpProgress, SourceError>,
) -> Result<(), SourceError> {
    let sent = retry(|| socket.send(request, 0))
        .map_err(SourceError::io("sending a sock_diag request"))?;
    if sent != request.len() {
        return Err(SourceError::Io {
            context: "sending a sock_diag request",
            source: io::Error::new(io::ErrorKind::WriteZero, "request sent in part"),
        });
    }
    loop {
        let datagram =
            recv_reply(socket, buf).map_err(SourceError::io("reading a sock_diag reply"))?;
        stats.datagrams += 1;
        if on_datagram(datagram)? == DumpProgress::Done {
            return Ok(());
        }
    }
}

/// Receives one datagram whole, growing `buf` when it is too small. A datagram read into too
/// small a buffer loses its tail for good, so it is peeked first: `MSG_TRUNC` makes the peek
/// return the real length (what libnl does too).
pub(super) fn recv_whole<'b>(socket: &Socket, buf: &'b mut Vec<u8>) -> io::Result<&'b [u8]> {
    loop {
        buf.clear();
        let len = retry(|| socket.recv(buf, libc::MSG_PEEK | libc::MSG_TRUNC))?;
        if len > buf.capacity() {
            buf.clear();
            buf.reserve(len.next_power_of_two());
            continue;
        }
        // Now the copy in `buf` is whole; drop the datagram from the socket. A zero-length
        // read does that without copying it again.
        let mut nothing: &mut [u8] = &mut [];
        retry(|| socket.recv(&mut nothing, 0))?;
        return Ok(&buf[..len]);
    }
}

pub(super) fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Parses one datagram of a dump reply, appending one entry per socket message to `out`
/// (unfiltered), and says whether the dump is over.
pub fn parse_dump(bytes: &[u8], out: &mut Vec<SocketEntry>) -> Result<DumpProgress, SourceError> {
    // Sequence and port numbers go unchecked: the socket is connected to the kernel, carries
    // one dump at a time, and is replaced after any error, so every message answers the
    // current request.
    let mut rest = bytes;
    while !rest.is_empty() {
        if rest.len() < NLMSG_HDR {
            return Err(malformed(format!(
                "{} bytes left, less than a header",
                rest.len()
            )));
        }
        let len = u32_at(rest, 0) as usize;
        if len < NLMSG_HDR || len > rest.len() {
            return Err(malformed(format!(
                "message length {len} with {} bytes left",
                rest.len()
            )));
        }
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        let payload = &rest[NLMSG_HDR..len];
        match kind {
            // The records of either request, typed as the request was.
            SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK => out.push(parse_socket(payload)?),
            NLMSG_DONE => {
                // The payload carries the dump's error, if it failed part way.
                return match payload
                    .get(..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                {
                    Some(err) if err < 0 => Err(kernel_error(err)),
                    _ => Ok(DumpProgress::Done),
                };
            }
            NLMSG_ERROR => {
                let err = payload
                    .get(..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                    .ok_or_else(|| malformed("NLMSG_ERROR without an error code".into()))?;
                // 0 is an acknowledgement, which a dump does not ask for; harmless.
                if err != 0 {
                    return Err(kernel_error(err));
                }
            }
            NLMSG_NOOP => {}
            other => return Err(malformed(format!("unexpected message type {other}"))),
        }
        // Messages are 4-byte aligned; the last one may lack its padding.
        rest = &rest[((len + 3) & !3).min(rest.len())..];
    }
    Ok(DumpProgress::More)
}

/// Parses one socket record: the payload of a dump's socket message, or of the message
/// `sock_diag` multicasts when a socket is destroyed (the same `inet_diag_msg`, whose
/// `tcp_info` is then the connection's last), attributes included.
pub fn parse_socket(m: &[u8]) -> Result<SocketEntry, SourceError> {
    if m.len() < DIAG_MSG {
        return Err(malformed(format!("inet_diag_msg of {} bytes", m.len())));
    }
    let (sport, dport) = (
        u16::from_be_bytes([m[4], m[5]]),
        u16::from_be_bytes([m[6], m[7]]),
    );
    let (src, dst) = (&m[8..24], &m[24..40]);
    let (local, remote) = match i32::from(m[0]) {
        libc::AF_INET => (v4(src, sport), v4(dst, dport)),
        libc::AF_INET6 => (v6(src, sport), v6(dst, dport)),
        f => return Err(malformed(format!("address family {f}"))),
    };
    let cookie = u64::from(u32_at(m, 44)) | u64::from(u32_at(m, 48)) << 32;
    let (rqueue, wqueue) = (u32_at(m, 56), u32_at(m, 60));
    let mut health = None;
    let mut attrs = &m[DIAG_MSG..];
    while !attrs.is_empty() {
        if attrs.len() < NLA_HDR {
            return Err(malformed(format!(
                "{} bytes left, less than an attribute",
                attrs.len()
            )));
        }
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        if len < NLA_HDR || len > attrs.len() {
            return Err(malformed(format!(
                "attribute length {len} with {} bytes left",
                attrs.len()
            )));
        }
        if u16::from_ne_bytes([attrs[2], attrs[3]]) & NLA_TYPE_MASK == INET_DIAG_INFO {
            health = tcp_info::parse(&attrs[NLA_HDR..len], rqueue, wqueue);
        }
        attrs = &attrs[((len + 3) & !3).min(attrs.len())..];
    }
    Ok(SocketEntry {
        local,
        remote,
        state: TcpState::from_linux(m[1]),
        id: cookie,
        health,
    })
}

fn v4(a: &[u8], port: u16) -> SocketAddr {
    let a: [u8; 4] = a[..4].try_into().unwrap();
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(a), port))
}

fn v6(a: &[u8], port: u16) -> SocketAddr {
    let a: [u8; 16] = a.try_into().unwrap();
    SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(a), port, 0, 0))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
}

fn malformed(detail: String) -> SourceError {
    SourceError::Parse {
        what: "sock_diag reply",
        detail,
    }
}

fn kernel_error(err: i32) -> SourceError {
    SourceError::Io {
        context: "sock_diag dump",
        // Saturating: a hostile reply can say i32::MIN, whose negation overflows.
        source: io::Error::from_raw_os_error(err.saturating_neg()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fix_monitor_core::target::Target;
    use std::collections::BTreeSet;
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    type Pair = (SocketAddr, SocketAddr);

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// The datagrams of a fixture file (each behind its length, `u32` little-endian).
    fn fixture(name: &str) -> Vec<Vec<u8>> {
        let path = format!(
            "{}/../../tests/fixtures/netlink/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut rest = &bytes[..];
        let mut out = Vec::new();
        while !rest.is_empty() {
            let n = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
            out.push(rest[4..4 + n].to_vec());
            rest = &rest[4 + n..];
        }
        out
    }

    /// Parses a whole dump: every datagram but the last must leave it open.
    fn parse_all(datagrams: &[Vec<u8>]) -> Vec<SocketEntry> {
        let mut out = Vec::new();
        for (i, d) in datagrams.iter().enumerate() {
            let want = if i + 1 == datagrams.len() {
                DumpProgress::Done
            } else {
                DumpProgress::More
            };
            assert_eq!(parse_dump(d, &mut out).unwrap(), want, "datagram {i}");
        }
        out
    }

    /// The (local, remote) pairs of `entries`, checked to be ESTABLISHED and distinct sockets.
    fn pairs(entries: &[SocketEntry]) -> BTreeSet<Pair> {
        assert!(entries.iter().all(|e| e.state == TcpState::Established));
        let cookies: BTreeSet<u64> = entries.iter().map(|e| e.id).collect();
        assert_eq!(cookies.len(), entries.len(), "socket cookies repeat");
        assert!(!cookies.contains(&0));
        let set: BTreeSet<Pair> = entries.iter().map(|e| (e.local, e.remote)).collect();
        assert_eq!(set.len(), entries.len(), "4-tuples repeat");
        set
    }

    fn set(list: &[(&str, &str)]) -> BTreeSet<Pair> {
        list.iter().map(|(l, r)| (sa(l), sa(r))).collect()
    }

    /// `poll.process_lookup`'s inodes: one (cookie, inode) per socket message, in the order
    /// parse_dump lists them, every inode distinct and none 0; nothing for other messages.
    #[test]
    fn socket_inodes_pair_each_record_cookie_with_its_inode() {
        for name in ["small-inet.bin", "small-inet6.bin", "large-inet.bin"] {
            let datagrams = fixture(name);
            let entries = parse_all(&datagrams);
            let mut inodes = Vec::new();
            for d in &datagrams {
                socket_inodes(d, &mut inodes);
            }
            let cookies: Vec<u64> = inodes.iter().map(|(c, _)| *c).collect();
            assert_eq!(
                cookies,
                entries.iter().map(|e| e.id).collect::<Vec<_>>(),
                "{name}"
            );
            let distinct: BTreeSet<u64> = inodes.iter().map(|(_, i)| *i).collect();
            assert_eq!(distinct.len(), inodes.len(), "{name}");
            assert!(!distinct.contains(&0), "{name}");
        }
        // A message cut short yields nothing, and no panic.
        let d = &fixture("small-inet.bin")[0];
        let mut inodes = Vec::new();
        socket_inodes(&d[..NLMSG_HDR + 20], &mut inodes);
        assert!(inodes.is_empty());
    }

    // What examples/capture_netlink.rs opened when it captured the fixtures.
    #[test]
    fn small_fixture_holds_ipv4_ipv6_and_mapped_sockets() {
        let inet = fixture("small-inet.bin");
        let inet = parse_all(&inet);
        assert_eq!(
            pairs(&inet),
            set(&[
                ("127.0.0.67:56631", "127.0.0.66:33285"),
                ("127.0.0.66:33285", "127.0.0.67:56631"),
                ("127.0.0.67:37055", "127.0.0.66:33285"),
                ("127.0.0.66:33285", "127.0.0.67:37055"),
                ("127.0.0.68:41807", "127.0.0.66:45659"),
            ])
        );
        let inet6 = parse_all(&fixture("small-inet6.bin"));
        assert_eq!(
            pairs(&inet6),
            set(&[
                ("[::1]:34285", "[::1]:33073"),
                ("[::1]:33073", "[::1]:34285"),
                ("[::ffff:127.0.0.66]:45659", "[::ffff:127.0.0.68]:41807"),
            ])
        );
    }

    /// `datagram` with every socket message retyped as `kind`.
    fn retyped(datagram: &[u8], kind: u16) -> Vec<u8> {
        let mut d = datagram.to_vec();
        let mut at = 0;
        while at < d.len() {
            let len = u32_at(&d, at) as usize;
            if u16::from_ne_bytes([d[at + 4], d[at + 5]]) == SOCK_DIAG_BY_FAMILY {
                d[at + 4..at + 6].copy_from_slice(&kind.to_ne_bytes());
            }
            at += (len + 3) & !3;
        }
        d
    }

    #[test]
    fn a_one_walk_reply_mixes_both_families() {
        // What a TCPDIAG_GETSOCK dump of the same sockets sends (compare a live one in
        // `live_one_walk_poll_returns_exactly_the_matching_sockets`): the same records, typed
        // TCPDIAG_GETSOCK, both families in one reply.
        let (inet, inet6) = (fixture("small-inet.bin"), fixture("small-inet6.bin"));
        let mut mixed = retyped(&inet[0], TCPDIAG_GETSOCK);
        mixed.extend_from_slice(&retyped(&inet6[0], TCPDIAG_GETSOCK));
        let one_walk = parse_all(&[mixed, inet[1].clone()]);
        assert_eq!(one_walk.len(), 8);
        let mut per_family = parse_all(&inet);
        per_family.extend(parse_all(&inet6));
        assert_eq!(one_walk, per_family);
    }

    #[test]
    fn requests_have_the_kernels_layouts() {
        let program = [1, 4, 8, 0];
        let r = request(Family::Inet6, Some(&program), ESTABLISHED, EXT_INFO);
        assert_eq!(r.len(), NLMSG_HDR + REQ_V2 + 8);
        assert_eq!(u32_at(&r, 0) as usize, r.len());
        assert_eq!(r[4..6], SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        assert_eq!(r[6..8], (NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        // inet_diag_req_v2: family, protocol, ext, pad, states, then the sockid.
        assert_eq!(
            r[16..20],
            [libc::AF_INET6 as u8, libc::IPPROTO_TCP as u8, EXT_INFO, 0]
        );
        assert_eq!(u32_at(&r, 20), 1 << 1);
        assert!(r[24..72].iter().all(|&b| b == 0));
        assert_eq!(r[72..74], 8u16.to_ne_bytes());
        assert_eq!(r[74..76], INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        assert_eq!(r[76..], program);

        let r = request(Family::Both, Some(&program), ESTABLISHED, EXT_INFO);
        assert_eq!(r.len(), NLMSG_HDR + REQ_V1 + 8);
        assert_eq!(u32_at(&r, 0) as usize, r.len());
        assert_eq!(r[4..6], TCPDIAG_GETSOCK.to_ne_bytes());
        assert_eq!(r[6..8], (NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        // inet_diag_req: family, src_len, dst_len, ext, the sockid, states, dbs.
        assert_eq!(r[16..20], [libc::AF_UNSPEC as u8, 0, 0, EXT_INFO]);
        assert!(r[20..68].iter().all(|&b| b == 0));
        assert_eq!(u32_at(&r, 68), 1 << 1);
        assert_eq!(u32_at(&r, 72), 0);
        assert_eq!(r[76..78], 8u16.to_ne_bytes());
        assert_eq!(r[78..80], INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        assert_eq!(r[80..], program);

        // The probe: no program, no states.
        let r = request(Family::Both, None, 0, 0);
        assert_eq!(r.len(), NLMSG_HDR + REQ_V1);
        assert_eq!(u32_at(&r, 68), 0);
        assert_eq!(r[19], 0, "no extensions");
    }

    #[test]
    fn large_fixture_spans_several_datagrams() {
        let datagrams = fixture("large-inet.bin");
        assert_eq!(datagrams.len(), 7);
        let entries = parse_all(&datagrams);
        assert_eq!(pairs(&entries).len(), 1200);
        let (server, client) = (sa("127.0.0.77:35955"), [127, 0, 0, 78].into());
        let mut client_ports = BTreeSet::new();
        let mut server_peers = BTreeSet::new();
        for e in &entries {
            if e.remote == server {
                assert_eq!(e.local.ip(), client);
                client_ports.insert(e.local.port());
            } else {
                assert_eq!((e.local, e.remote.ip()), (server, client), "{e:?}");
                server_peers.insert(e.remote.port());
            }
        }
        assert_eq!(client_ports.len(), 600);
        assert_eq!(client_ports, server_peers);
    }

    #[test]
    fn a_socket_listed_twice_is_reported_once() {
        let datagrams = fixture("large-inet.bin");
        let once = parse_all(&datagrams);
        // The same datagram twice, as a dump disturbed between two datagrams can do in part.
        let mut twice = once.clone();
        parse_dump(&datagrams[1], &mut twice).unwrap();
        assert_eq!(twice.len(), once.len() + 261);
        dedup(&mut twice);
        assert_eq!(pairs(&twice), pairs(&once));
    }

    fn message(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut m = ((NLMSG_HDR + payload.len()) as u32).to_ne_bytes().to_vec();
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(payload);
        m
    }

    fn os_error(r: Result<DumpProgress, SourceError>) -> Option<i32> {
        match r {
            Err(SourceError::Io { source, .. }) => source.raw_os_error(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_in_the_reply_are_reported() {
        let mut out = Vec::new();
        let einval = message(NLMSG_ERROR, &(-libc::EINVAL).to_ne_bytes());
        assert_eq!(os_error(parse_dump(&einval, &mut out)), Some(libc::EINVAL));
        let failed = message(NLMSG_DONE, &(-libc::ENOBUFS).to_ne_bytes());
        assert_eq!(os_error(parse_dump(&failed, &mut out)), Some(libc::ENOBUFS));
        let done = message(NLMSG_DONE, &0i32.to_ne_bytes());
        assert_eq!(parse_dump(&done, &mut out).unwrap(), DumpProgress::Done);

        let good = &fixture("small-inet.bin")[0];
        for cut in [10, 100, good.len() - 1] {
            let r = parse_dump(&good[..cut], &mut out);
            assert!(
                matches!(r, Err(SourceError::Parse { .. })),
                "cut at {cut}: {r:?}"
            );
        }
        let mut bad_family = good.clone();
        bad_family[NLMSG_HDR] = 1; // AF_UNIX
        assert!(matches!(
            parse_dump(&bad_family, &mut out),
            Err(SourceError::Parse { .. })
        ));
        let short = message(SOCK_DIAG_BY_FAMILY, &[0; DIAG_MSG - 1]);
        assert!(matches!(
            parse_dump(&short, &mut out),
            Err(SourceError::Parse { .. })
        ));
        out.clear();
        let mut noop_first = message(NLMSG_NOOP, &[]);
        noop_first.extend_from_slice(good);
        assert_eq!(
            parse_dump(&noop_first, &mut out).unwrap(),
            DumpProgress::More
        );
        assert_eq!(out.len(), 5);
    }

    /// A socket record: an IPv4 `inet_diag_msg` with queues (2, 3) and the attributes
    /// `attrs` (type, payload), each padded as the kernel pads them.
    fn record(attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut m = vec![0u8; DIAG_MSG];
        m[0] = libc::AF_INET as u8;
        m[1] = 1;
        m[56..60].copy_from_slice(&2u32.to_ne_bytes());
        m[60..64].copy_from_slice(&3u32.to_ne_bytes());
        for (kind, payload) in attrs {
            m.extend_from_slice(&((NLA_HDR + payload.len()) as u16).to_ne_bytes());
            m.extend_from_slice(&kind.to_ne_bytes());
            m.extend_from_slice(payload);
            m.resize((m.len() + 3) & !3, 0);
        }
        m
    }

    #[test]
    fn tcp_info_is_read_from_its_attribute_among_others() {
        let mut info = vec![0u8; 248];
        info[68..72].copy_from_slice(&250u32.to_ne_bytes()); // tcpi_rtt
        info[100..104].copy_from_slice(&9u32.to_ne_bytes()); // tcpi_total_retrans
                                                             // As the kernel lays them out: INET_DIAG_SHUTDOWN (8, one byte), the padding
                                                             // attribute (14) that aligns the next payload to 8 bytes, INET_DIAG_INFO.
        let m = record(&[(8, &[0]), (14, &[]), (INET_DIAG_INFO, &info)]);
        let e = parse_socket(&m).unwrap();
        let h = e.health.unwrap();
        assert_eq!((h.rtt_us, h.retransmits), (250, 9));
        assert_eq!((h.recv_queue, h.send_queue), (2, 3));
        // Without the attribute, or with one too short to be a tcp_info: no health.
        assert_eq!(parse_socket(&record(&[(8, &[0])])).unwrap().health, None);
        let short = record(&[(INET_DIAG_INFO, &info[..100])]);
        assert_eq!(parse_socket(&short).unwrap().health, None);
        // The attribute type's flag bits do not hide it.
        let flagged = record(&[(INET_DIAG_INFO | 0x8000, &info)]);
        assert!(parse_socket(&flagged).unwrap().health.is_some());
    }

    #[test]
    fn malformed_attributes_are_errors_not_panics() {
        let good = record(&[(INET_DIAG_INFO, &[0u8; 248])]);
        for bad_len in [0u16, 3, 253, 1000] {
            let mut m = good.clone();
            m[DIAG_MSG..DIAG_MSG + 2].copy_from_slice(&bad_len.to_ne_bytes());
            assert!(
                matches!(parse_socket(&m), Err(SourceError::Parse { .. })),
                "attribute length {bad_len}"
            );
        }
        for cut in DIAG_MSG + 1..DIAG_MSG + NLA_HDR {
            assert!(matches!(
                parse_socket(&good[..cut]),
                Err(SourceError::Parse { .. })
            ));
        }
        // A last attribute without its padding is fine.
        let m = record(&[(8, &[0])]);
        assert!(parse_socket(&m[..m.len() - 3]).is_ok());
    }

    // Live tests. Each uses its own 127.0.42.x addresses and ports from the kernel, and
    // targets that name them, so that tests running side by side cannot see each other.

    fn listen(addr: &str) -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind(addr).unwrap();
        let a = l.local_addr().unwrap();
        (l, a)
    }

    /// A connection from `from` (port 0: any) to `to`, accepted by `l`: (client, server) ends.
    fn connect(from: &str, to: SocketAddr, l: &TcpListener) -> (TcpStream, TcpStream) {
        connect_with(from, to, l, false)
    }

    /// With `reset`, closing the client resets the connection instead of leaving it in
    /// TIME_WAIT. Tests that open thousands of connections need that: a port a client took
    /// with bind() stays out of every connect()'s reach while its TIME_WAIT lasts (a minute),
    /// and a few runs would starve the other tests of ephemeral ports.
    fn connect_with(
        from: &str,
        to: SocketAddr,
        l: &TcpListener,
        reset: bool,
    ) -> (TcpStream, TcpStream) {
        let from = sa(from);
        let s = socket2::Socket::new(
            socket2::Domain::for_address(to),
            socket2::Type::STREAM,
            None,
        )
        .unwrap();
        if reset {
            s.set_linger(Some(Duration::ZERO)).unwrap();
        }
        s.bind(&from.into()).unwrap();
        s.connect(&to.into()).unwrap();
        let (server, _) = l.accept().unwrap();
        (s.into(), server)
    }

    /// The socket a stream is, as the kernel lists it.
    fn ends(s: &TcpStream) -> Pair {
        (s.local_addr().unwrap(), s.peer_addr().unwrap())
    }

    fn poll(source: &mut NetlinkSource) -> BTreeSet<Pair> {
        let mut out = Vec::new();
        source.poll(&mut out).unwrap();
        pairs(&out)
    }

    /// Closing is asynchronous for the far end: wait for the kernel to move it on.
    fn poll_until(source: &mut NetlinkSource, want: &BTreeSet<Pair>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got = poll(source);
            if &got == want || Instant::now() > deadline {
                assert_eq!(&got, want);
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn live_one_walk_poll_returns_exactly_the_matching_sockets() {
        live_poll_returns_exactly_the_matching_sockets(DumpMode::OneWalk, 1);
    }

    #[test]
    fn live_per_family_poll_returns_exactly_the_matching_sockets() {
        live_poll_returns_exactly_the_matching_sockets(DumpMode::PerFamily, 5);
    }

    /// Opens the source as the monitor does for `DumpMode::OneWalk` (which the kernel must then
    /// have taken), in per-family mode otherwise, on sockets from 127.0.42.`x`..`x + 3`.
    fn live_poll_returns_exactly_the_matching_sockets(mode: DumpMode, x: u8) {
        let ip = |i: u8| format!("127.0.42.{}", x + i);
        let (la, a) = listen("127.0.0.2:0");
        let mut conns: Vec<_> = (0..3)
            .map(|_| connect(&format!("{}:0", ip(0)), a, &la))
            .collect();
        conns.sort_by_key(|(c, _)| c.local_addr().unwrap().port());
        let ports: Vec<u16> = conns
            .iter()
            .map(|(c, _)| c.local_addr().unwrap().port())
            .collect();
        let (a_lo, a_mid, _a_hi) = (conns.remove(0), conns.remove(0), conns.remove(0));

        let (lu, u) = listen("127.0.0.2:0");
        let _unrelated = connect(&format!("{}:0", ip(0)), u, &lu);
        let (lb, b) = listen("[::1]:0");
        let b0 = connect("[::1]:0", b, &lb);
        let b1 = connect("[::1]:0", b, &lb);
        let (lu6, u6) = listen("[::1]:0");
        let _unrelated6 = connect("[::1]:0", u6, &lu6);
        // A dual-stack listener: its accepted ends of IPv4 connections are AF_INET6 sockets
        // with IPv4-mapped addresses.
        let (lc, c) = listen("[::]:0");
        let c_at = SocketAddr::from(([127, 0, 42, x + 2], c.port()));
        let c0 = connect(&format!("{}:0", ip(1)), c_at, &lc);
        let c1 = connect(&format!("{}:0", ip(1)), c_at, &lc);
        let d = connect(&format!("{}:0", ip(3)), c_at, &lc);
        assert!(
            ends(&c0.1).0.is_ipv6(),
            "the dual-stack listener is not dual-stack"
        );

        let targets = Targets::new(vec![
            Target::test("127.0.0.2/32", Some(a.port()), Some((ports[0], ports[1]))),
            Target::test("::1/128", Some(b.port()), None),
            Target::test(&format!("{}/32", ip(1)), None, None),
            Target::test(&format!("{}/32", ip(2)), Some(c.port()), None),
        ]);
        let mut source = match mode {
            DumpMode::OneWalk => NetlinkSource::open(&targets).unwrap(),
            DumpMode::PerFamily => NetlinkSource::open_in(&targets, mode).unwrap(),
        };
        assert_eq!(source.mode(), mode);
        let mut want: BTreeSet<Pair> = [
            ends(&a_lo.0),
            ends(&a_mid.0),
            ends(&b0.0),
            ends(&b1.0),
            ends(&c0.1),
            ends(&c1.1),
            ends(&c0.0),
            ends(&c1.0),
            ends(&d.0),
        ]
        .into();
        assert_eq!(poll(&mut source), want);
        // The kernel sent nothing else: the filter, not only the user-space check, did the work
        // (the unrelated sockets, the far ends of most connections, a_hi all exist).
        assert_eq!(source.stats.received, want.len());
        let walks = match mode {
            DumpMode::OneWalk => 1,
            DumpMode::PerFamily => 2,
        };
        assert_eq!(source.stats.dumps, walks);
        // Either source can still dump the other way, and finds the same.
        let mut datagrams = Vec::new();
        let other = match mode {
            DumpMode::OneWalk => [Family::Inet, Family::Inet6].as_slice(),
            DumpMode::PerFamily => &[Family::Both],
        };
        for &family in other {
            source
                .dump_raw(family, |d| datagrams.push(d.to_vec()))
                .unwrap();
        }
        let mut raw: Vec<_> = datagrams
            .iter()
            .flat_map(|d| {
                let mut out = Vec::new();
                parse_dump(d, &mut out).unwrap();
                out
            })
            .collect();
        dedup(&mut raw);
        assert_eq!(pairs(&raw), want);
        assert_eq!(source.requests.len(), walks, "dump_raw left polls alone");

        let gone = ends(&a_lo.0);
        drop(a_lo);
        want.remove(&gone);
        poll_until(&mut source, &want);

        // Closing one end takes both out of ESTABLISHED.
        let gone = [ends(&c0.0), ends(&c0.1)];
        drop(c0.1);
        want.retain(|p| !gone.contains(p));
        poll_until(&mut source, &want);

        let gone = ends(&b0.0);
        drop(b0);
        want.remove(&gone);
        poll_until(&mut source, &want);
        assert_eq!(want.len(), 5);
        assert_eq!(source.stats.dumps, walks);
    }

    /// Lets this test process hold `fds` more open files than it does now. A normal user's
    /// soft limit is often 1024 (the hard limit higher), and `many` holds thousands of sockets:
    /// the soft limit is raised towards the hard one (at most 20,000); a hard limit too low for
    /// the test fails it by name rather than with EMFILE half-way.
    fn allow_open_files(fds: libc::rlim_t) {
        let headroom: libc::rlim_t = 1024;
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit(2) writes into the struct we own.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        let need = fds + headroom;
        if lim.rlim_cur >= need {
            return;
        }
        assert!(
            lim.rlim_max >= need,
            "this test holds {fds} sockets; RLIMIT_NOFILE's hard limit is {}",
            lim.rlim_max
        );
        lim.rlim_cur = lim.rlim_max.min(20_000).max(need);
        // SAFETY: setrlimit(2) reads the struct we own; raising the soft limit up to the hard
        // one needs no privilege.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    }

    /// `n` connections from 127.0.42.`from` to a listener on 127.0.42.`to`, and targets that
    /// match both ends of each: 2n sockets.
    fn many(n: usize, to: u8, from: u8) -> (Targets, Vec<(TcpStream, TcpStream)>, BTreeSet<Pair>) {
        allow_open_files(2 * n as libc::rlim_t);
        let (l, at) = listen(&format!("127.0.42.{to}:0"));
        let conns: Vec<_> = (0..n)
            .map(|_| connect_with(&format!("127.0.42.{from}:0"), at, &l, true))
            .collect();
        let targets = Targets::new(vec![
            Target::test(&format!("127.0.42.{to}/32"), Some(at.port()), None),
            Target::test(&format!("127.0.42.{from}/32"), None, None),
        ]);
        let want = conns.iter().flat_map(|(c, s)| [ends(c), ends(s)]).collect();
        (targets, conns, want)
    }

    #[test]
    fn live_multi_part_dump_is_read_whole() {
        let (targets, _conns, want) = many(2100, 10, 11);
        let mut source = NetlinkSource::open(&targets).unwrap();
        assert_eq!(source.mode(), DumpMode::OneWalk);
        // The probe: one dump, answered with NLMSG_DONE alone although 4200 sockets match.
        assert_eq!((source.stats.dumps, source.stats.datagrams), (1, 1));
        assert_eq!(poll(&mut source), want);
        assert_eq!(want.len(), 4200);
        assert_eq!(source.stats.dumps, 1);
        // Some 124 bytes a socket, in datagrams of at most ~32 KiB.
        assert!(source.stats.datagrams > 10, "{:?}", source.stats);
        assert_eq!(poll(&mut source), want, "a second poll on the same socket");
        assert_eq!(
            source.buf.capacity(),
            RECV_BUFFER,
            "no datagram outgrew the buffer"
        );
    }

    #[test]
    fn a_small_receive_buffer_grows_and_loses_nothing() {
        for (mode, x) in [(DumpMode::OneWalk, 20), (DumpMode::PerFamily, 22)] {
            let (targets, _conns, want) = many(300, x, x + 1);
            let program = bytecode::compile(&targets).unwrap();
            let mut source = NetlinkSource::with_mode(&targets, Some(program), 256, mode).unwrap();
            assert_eq!(poll(&mut source), want, "{mode:?}");
            assert!(source.buf.capacity() > 256);
            assert!(source.stats.datagrams > 2, "{mode:?}: {:?}", source.stats);
        }
    }

    /// A JMP whose `no` is not a multiple of 4: inet_diag_bc_audit answers EINVAL, to either
    /// request.
    const MALFORMED: [u8; 4] = [1, 4, 6, 0];

    #[test]
    fn the_kernel_refuses_a_malformed_program_and_the_source_recovers() {
        let (targets, _conns, want) = many(1, 30, 31);
        for (mode, family) in [
            (DumpMode::OneWalk, Family::Both),
            (DumpMode::PerFamily, Family::Inet),
        ] {
            let mut source = NetlinkSource::open_in(&targets, mode).unwrap();
            let good = std::mem::take(&mut source.requests);
            source.requests = vec![(family, request(family, Some(&MALFORMED), ESTABLISHED, 0))];
            let mut out = vec![SocketEntry {
                local: sa("1.1.1.1:1"),
                remote: sa("1.1.1.1:1"),
                state: TcpState::Established,
                id: 1,
                health: None,
            }];
            match source.poll(&mut out) {
                Err(SourceError::Io { source, .. }) => {
                    assert_eq!(source.raw_os_error(), Some(libc::EINVAL), "{mode:?}")
                }
                other => panic!("{mode:?}: {other:?}"),
            }
            assert!(out.is_empty(), "a failed poll leaves no stale entries");
            assert!(source.socket.is_none());
            source.requests = good;
            assert_eq!(poll(&mut source), want, "{mode:?}");
        }
    }

    #[test]
    fn a_kernel_that_refuses_the_one_walk_dump_gets_one_dump_per_family() {
        let (targets, _conns, want) = many(2, 32, 33);
        let program = bytecode::compile(&targets).unwrap();
        let mut source =
            NetlinkSource::with_mode(&targets, Some(program), RECV_BUFFER, DumpMode::OneWalk)
                .unwrap();
        // The probe `open` makes, answered with an error as by a kernel without the legacy
        // request.
        source.probe_one_walk(request(Family::Both, Some(&MALFORMED), 0, 0));
        assert_eq!(source.mode(), DumpMode::PerFamily);
        let families: Vec<Family> = source.requests.iter().map(|(f, _)| *f).collect();
        assert_eq!(families, [Family::Inet, Family::Inet6]);
        assert_eq!(poll(&mut source), want);
        assert_eq!(source.stats.dumps, 2);
        assert_eq!(
            source.stats.received,
            want.len(),
            "with the targets' filter"
        );
    }

    #[test]
    fn ipv6_targets_alone_take_one_per_family_dump_without_a_probe() {
        let (l, at) = listen("[::1]:0");
        let (client, _server) = connect("[::1]:0", at, &l);
        let targets = Targets::new(vec![Target::test("::1/128", Some(at.port()), None)]);
        let mut source = NetlinkSource::open(&targets).unwrap();
        assert_eq!(source.mode(), DumpMode::PerFamily);
        assert_eq!(source.stats.dumps, 0, "no probe");
        assert_eq!(poll(&mut source), [ends(&client)].into());
        assert_eq!(source.stats.dumps, 1);
    }

    #[test]
    fn the_longest_program_is_accepted_and_run_to_its_last_target() {
        let (targets, _conns, want) = many(1, 40, 41);
        // Fill the program with IPv6 targets that match nothing here (80 bytes each), and put
        // the real ones last.
        let filler = Target::test("::/0", Some(1), Some((1, 2)));
        let mut all = vec![filler; bytecode::MAX_LEN / 80 - 1];
        all.extend(targets.iter().cloned());
        let targets = Targets::new(all);
        let program = bytecode::compile(&targets).unwrap();
        assert!(program.len() > bytecode::MAX_LEN - 100, "{}", program.len());
        let mut source = NetlinkSource::open(&targets).unwrap();
        assert_eq!(poll(&mut source), want);
        assert_eq!(source.stats.received, want.len());
    }

    /// A receive whose reply never comes is bounded: nothing is sent on a fresh socket, and
    /// the receive fails as a timeout, not a hang.
    #[test]
    fn a_reply_that_never_comes_times_out() {
        let socket = open_socket().unwrap();
        set_recv_timeout(&socket, Duration::from_millis(300)).unwrap();
        let mut buf = Vec::with_capacity(4096);
        let started = Instant::now();
        let e = recv_reply(&socket, &mut buf).unwrap_err();
        let waited = started.elapsed();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(
            waited >= Duration::from_millis(290) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
        // The default bound is set on every socket the source and the lookups open.
        let fresh = open_socket().unwrap();
        let mut tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        };
        let mut len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
        // SAFETY: reads a timeval into `tv`.
        let r = unsafe {
            libc::getsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&fresh),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&mut tv as *mut libc::timeval).cast(),
                &mut len,
            )
        };
        assert_eq!(r, 0);
        assert_eq!(tv.tv_sec as u64, RECV_TIMEOUT.as_secs());
    }

    /// A dump the kernel never answers (its request lacks `NLM_F_REQUEST`, which the kernel
    /// ignores without a word) fails the poll after the timeout, and the next poll, on a fresh
    /// socket, lists the sockets again.
    #[test]
    fn a_poll_whose_reply_never_comes_fails_in_time_and_the_next_one_works() {
        let (l, at) = listen("127.0.42.31:0");
        let (client, _server) = connect("127.0.0.1:0", at, &l);
        let targets = Targets::new(vec![Target::test("127.0.42.31/32", Some(at.port()), None)]);
        let mut source = NetlinkSource::open(&targets).unwrap();
        source.set_recv_timeout(Duration::from_millis(300)).unwrap();
        let want: BTreeSet<Pair> = [ends(&client)].into();
        assert_eq!(poll(&mut source), want);
        for (_, r) in &mut source.requests {
            r[6..8].copy_from_slice(&0u16.to_ne_bytes());
        }
        let mut out = Vec::new();
        let started = Instant::now();
        let e = source.poll(&mut out).unwrap_err();
        let waited = started.elapsed();
        assert!(
            matches!(&e, SourceError::Io { source, .. } if source.kind() == io::ErrorKind::TimedOut),
            "{e}"
        );
        assert!(e.to_string().contains("no reply from the kernel"), "{e}");
        assert!(out.is_empty());
        assert!(
            waited >= Duration::from_millis(290) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
        source.set_mode(source.mode);
        assert_eq!(poll(&mut source), want);
    }

    #[test]
    fn no_targets_means_no_dumps() {
        let mut source = NetlinkSource::open(&Targets::default()).unwrap();
        assert_eq!(source.kind(), SourceKind::Netlink);
        assert_eq!(source.stats.dumps, 0, "no probe");
        assert!(poll(&mut source).is_empty());
        assert_eq!(source.stats.datagrams, 0);
        // A raw dump the polls do not make works, and leaves polls alone.
        for family in [Family::Inet, Family::Both] {
            let mut datagrams = Vec::new();
            source
                .dump_raw(family, |d| datagrams.push(d.to_vec()))
                .unwrap();
            assert!(parse_all(&datagrams).is_empty(), "the filter rejects all");
            assert!(source.requests.is_empty());
        }
        assert!(poll(&mut source).is_empty());
        assert_eq!(source.stats.datagrams, 0);
    }
}
