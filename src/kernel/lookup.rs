//! Session health for sources that do not dump: each watched socket's `tcp_info` by an exact
//! `sock_diag` lookup.
//!
//! The eBPF source knows its sessions from the kernel's state changes and never walks the
//! host's sockets between reconciles, so it has no dump to carry `INET_DIAG_INFO`. Instead,
//! each poll asks for every watched session by its whole 4-tuple (and its cookie, once known):
//! a `SOCK_DIAG_BY_FAMILY` request *without* `NLM_F_DUMP`, with the `INET_DIAG_INFO` bit in its
//! `ext` byte, is answered by `inet_diag_dump_one_icsk` from a hash lookup of that one socket
//! (see [`super::confirm`]), so a poll costs one lookup per watched session (M), whatever the
//! number of other sockets on the host (N).
//!
//! Requests go out in batches of [`BATCH`], several requests in one `send` (the kernel's
//! `netlink_rcv_skb` answers each message of a datagram in turn, in the sender's call, so every
//! answer is queued when `send` returns), and the answers come back through one `recvmmsg`
//! into fixed slots. One socket, one request buffer and one receive area are reused: a poll
//! allocates nothing. A session that vanished between the poll's drain and its lookup gets
//! `ENOENT`: no health for it, not an error (its close is already in the ring buffer).

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use netlink_sys::Socket;

use super::{netlink, SourceError, TcpHealth, TcpState};

const NLMSG_HDR: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x01;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const REQ_V2: usize = 56;
/// One request: header and `inet_diag_req_v2`.
pub const REQUEST: usize = NLMSG_HDR + REQ_V2;
/// `INET_DIAG_NOCOOKIE`: any cookie.
pub const NO_COOKIE: u64 = u64::MAX;
/// The `ext` bit asking for `INET_DIAG_INFO` (attribute 2).
const EXT_INFO: u8 = 1 << 1;
/// Requests per `send`. Each answer is its own datagram of well under 1 KiB (an
/// `inet_diag_msg`, `tcp_info` and a few small attributes), about 2 KiB of receive buffer once
/// the kernel's overhead is counted: 32 of them fit the default 208 KiB buffer many times over,
/// so no answer is dropped for want of room.
pub const BATCH: usize = 32;
/// Receive room per answer (an answer that does not fit is `MSG_TRUNC`: counted as failed).
const SLOT: usize = 2048;

/// One socket to look up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The socket's cookie, or 0 where it is not known yet (any socket with this 4-tuple).
    pub cookie: u64,
}

/// What the kernel said about one socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// It exists: its state, its cookie, its `tcp_info` (`None` for a socket without one, such
    /// as one in TIME_WAIT).
    Found {
        state: TcpState,
        cookie: u64,
        health: Option<TcpHealth>,
    },
    /// No such socket (any more): `ENOENT`.
    Gone,
    /// No answer: the kernel's error, a dropped or truncated answer.
    Failed,
}

/// Counts of what the lookups did, for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LookupStats {
    /// Sockets asked about (each one hash lookup in the kernel).
    pub requests: u64,
    /// `send` calls (batches).
    pub sends: u64,
    /// Sockets found.
    pub found: u64,
    /// Sockets gone (`ENOENT`).
    pub gone: u64,
    /// Sockets without an answer.
    pub failed: u64,
}

/// A netlink socket for batched exact lookups with `tcp_info`.
pub struct HealthLookups {
    /// `None` after an error, so that a stale answer is never read as a new one's.
    socket: Option<Socket>,
    requests: Vec<u8>,
    slots: Vec<u8>,
    seq: u32,
    stats: LookupStats,
}

impl HealthLookups {
    pub fn open() -> Result<HealthLookups, SourceError> {
        Ok(HealthLookups {
            socket: Some(netlink::open_socket()?),
            requests: Vec::with_capacity(BATCH * REQUEST),
            slots: vec![0; BATCH * SLOT],
            seq: 0,
            stats: LookupStats::default(),
        })
    }

    pub fn stats(&self) -> LookupStats {
        self.stats
    }

    /// Looks up every socket of `wanted`, calling `answer(i, what)` once for each `wanted[i]`,
    /// in batches. Fails only when the netlink socket itself fails (the answers not yet given
    /// are then `Failed`); a socket that is not found is [`Answer::Gone`].
    pub fn lookup(
        &mut self,
        wanted: &[Wanted],
        mut answer: impl FnMut(usize, Answer),
    ) -> Result<(), SourceError> {
        let mut result = Ok(());
        for (b, batch) in wanted.chunks(BATCH).enumerate() {
            let base = b * BATCH;
            let mut given = [false; BATCH];
            if result.is_ok() {
                result = self.batch(batch, |j, a| {
                    if !given[j] {
                        given[j] = true;
                        answer(base + j, a);
                    }
                });
            }
            for (j, done) in given.iter().enumerate().take(batch.len()) {
                if !done {
                    self.stats.failed += 1;
                    answer(base + j, Answer::Failed);
                }
            }
        }
        result
    }

    /// One batch: at most [`BATCH`] requests in one `send`, then every answer that is queued.
    fn batch(
        &mut self,
        batch: &[Wanted],
        mut answer: impl FnMut(usize, Answer),
    ) -> Result<(), SourceError> {
        let socket = match self.socket.take() {
            Some(s) => s,
            None => netlink::open_socket()?,
        };
        let first = self.seq.wrapping_add(1);
        self.requests.clear();
        for w in batch {
            self.seq = self.seq.wrapping_add(1);
            put_request(&mut self.requests, w, self.seq, EXT_INFO);
        }
        self.stats.requests += batch.len() as u64;
        self.stats.sends += 1;
        let sent = netlink::retry(|| socket.send(&self.requests, 0))
            .map_err(SourceError::io("sending sock_diag lookups"))?;
        if sent != self.requests.len() {
            return Err(SourceError::Io {
                context: "sending sock_diag lookups",
                source: std::io::Error::new(std::io::ErrorKind::WriteZero, "requests sent in part"),
            });
        }
        // The kernel answered while `send` ran: read what is queued, without waiting.
        let mut left = batch.len();
        while left > 0 {
            let n = match recv_many(&socket, &mut self.slots) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // ENOBUFS: some answer did not fit; what did is still queued. Read on.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => continue,
                Err(e) => {
                    return Err(SourceError::Io {
                        context: "reading sock_diag lookup answers",
                        source: e,
                    })
                }
            };
            if n.count == 0 {
                break;
            }
            for (slot, len, truncated) in n.iter().take(n.count) {
                let bytes = &self.slots[slot * SLOT..slot * SLOT + len.min(SLOT)];
                let Some(seq) = seq_of(bytes) else { continue };
                let j = seq.wrapping_sub(first) as usize;
                if j >= batch.len() {
                    continue; // a late answer to an earlier batch that failed part way
                }
                let a = if truncated {
                    Answer::Failed
                } else {
                    parse_answer(bytes).unwrap_or(Answer::Failed)
                };
                match a {
                    Answer::Found { .. } => self.stats.found += 1,
                    Answer::Gone => self.stats.gone += 1,
                    Answer::Failed => self.stats.failed += 1,
                }
                answer(j, a);
                left -= 1;
            }
        }
        self.socket = Some(socket);
        Ok(())
    }
}

/// What one `recvmmsg` read: per message, its slot, length and whether it was cut.
struct Received {
    count: usize,
    msgs: [(usize, usize, bool); BATCH],
}

impl Received {
    fn iter(&self) -> impl Iterator<Item = (usize, usize, bool)> + '_ {
        self.msgs.iter().copied()
    }
}

/// Reads up to [`BATCH`] queued datagrams into `slots`, one per slot, without waiting.
fn recv_many(socket: &Socket, slots: &mut [u8]) -> std::io::Result<Received> {
    // SAFETY: zeroed iovec/mmsghdr are valid "empty" values; they are filled below.
    let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (i, (v, m)) in iov.iter_mut().zip(msgs.iter_mut()).enumerate() {
        v.iov_base = slots[i * SLOT..].as_mut_ptr().cast();
        v.iov_len = SLOT;
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    loop {
        // SAFETY: BATCH headers, each pointing at its own SLOT bytes of `slots`, all alive for
        // the call.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut r = Received {
            count: n as usize,
            msgs: [(0, 0, false); BATCH],
        };
        for (i, m) in msgs.iter().enumerate().take(n as usize) {
            r.msgs[i] = (
                i,
                m.msg_len as usize,
                m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            );
        }
        return Ok(r);
    }
}

/// The sequence number of an answer, if it has a whole header.
fn seq_of(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(8..12)?.try_into().unwrap()))
}

/// Reads one answer (one message: a lookup's answer is a datagram of its own).
pub fn parse_answer(bytes: &[u8]) -> Result<Answer, SourceError> {
    let malformed = |detail: String| SourceError::Parse {
        what: "sock_diag lookup answer",
        detail,
    };
    if bytes.len() < NLMSG_HDR {
        return Err(malformed(format!("{} bytes", bytes.len())));
    }
    let len = u32::from_ne_bytes(bytes[..4].try_into().unwrap()) as usize;
    if len < NLMSG_HDR || len > bytes.len() {
        return Err(malformed(format!(
            "message length {len} in {} bytes",
            bytes.len()
        )));
    }
    let payload = &bytes[NLMSG_HDR..len];
    match u16::from_ne_bytes([bytes[4], bytes[5]]) {
        SOCK_DIAG_BY_FAMILY => {
            let s = netlink::parse_socket(payload)?;
            Ok(Answer::Found {
                state: s.state,
                cookie: s.id,
                health: s.health,
            })
        }
        NLMSG_ERROR => {
            let err = payload
                .get(..4)
                .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                .ok_or_else(|| malformed("NLMSG_ERROR without an error code".into()))?;
            match -err {
                libc::ENOENT => Ok(Answer::Gone),
                0 => Err(malformed("an acknowledgement instead of an answer".into())),
                e => Err(SourceError::Io {
                    context: "sock_diag lookup",
                    source: std::io::Error::from_raw_os_error(e),
                }),
            }
        }
        other => Err(malformed(format!("unexpected message type {other}"))),
    }
}

/// Appends the exact-lookup request for `w` to `r`: the family the socket is listed in (IPv6
/// if either address is), the 4-tuple as listed (local as source), the cookie or none, the
/// extensions `ext` asks for.
pub fn put_request(r: &mut Vec<u8>, w: &Wanted, seq: u32, ext: u8) {
    r.extend_from_slice(&(REQUEST as u32).to_ne_bytes());
    r.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    r.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    r.extend_from_slice(&seq.to_ne_bytes());
    r.extend_from_slice(&0u32.to_ne_bytes());
    let v6 = w.local.is_ipv6() || w.remote.is_ipv6();
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET } as u8;
    r.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, ext, 0]);
    r.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state: an exact lookup ignores them
    r.extend_from_slice(&w.local.port().to_be_bytes());
    r.extend_from_slice(&w.remote.port().to_be_bytes());
    put_addr(r, &w.local, v6);
    put_addr(r, &w.remote, v6);
    r.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    let cookie = if w.cookie == 0 { NO_COOKIE } else { w.cookie };
    r.extend_from_slice(&(cookie as u32).to_ne_bytes());
    r.extend_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
}

fn put_addr(r: &mut Vec<u8>, a: &SocketAddr, v6: bool) {
    let mut bytes = [0u8; 16];
    match (a.ip(), v6) {
        (IpAddr::V4(ip), false) => bytes[..4].copy_from_slice(&ip.octets()),
        (IpAddr::V4(ip), true) => bytes = ip.to_ipv6_mapped().octets(),
        (IpAddr::V6(ip), _) => bytes = ip.octets(),
    }
    r.extend_from_slice(&bytes);
}

#[cfg(test)]
mod tests {
    //! Live tests on sockets of their own (127.0.95.x, ports from the kernel).

    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    fn cookie(s: &impl AsRawFd) -> u64 {
        crate::destroy::tests::cookie(s)
    }

    fn want(s: &TcpStream, cookie: u64) -> Wanted {
        Wanted {
            local: s.local_addr().unwrap(),
            remote: s.peer_addr().unwrap(),
            cookie,
        }
    }

    #[test]
    fn live_many_sockets_in_batches_each_with_its_own_tcp_info() {
        let l = TcpListener::bind("127.0.95.1:0").unwrap();
        let (mut clients, mut servers) = (Vec::new(), Vec::new());
        // More than two batches, with a part batch at the end.
        for i in 0..(2 * BATCH + 5) {
            let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (mut s, _) = l.accept().unwrap();
            // Each client sends a different number of bytes: the answers cannot be swapped.
            c.write_all(&vec![7u8; i + 1]).unwrap();
            let mut got = vec![0u8; i + 1];
            s.read_exact(&mut got).unwrap();
            clients.push(c);
            servers.push(s);
        }
        let mut wanted: Vec<Wanted> = clients.iter().map(|c| want(c, 0)).collect();
        // A stranger (nobody listens on 127.0.95.9:1) and a known socket under a wrong cookie.
        wanted.push(Wanted {
            local: "127.0.95.9:40000".parse().unwrap(),
            remote: "127.0.95.9:1".parse().unwrap(),
            cookie: 0,
        });
        wanted.push(Wanted {
            cookie: cookie(&clients[0]) + 1,
            ..wanted[0]
        });
        let mut lookups = HealthLookups::open().unwrap();
        let mut answers = vec![None; wanted.len()];
        lookups
            .lookup(&wanted, |i, a| {
                assert!(answers[i].is_none(), "one answer per socket");
                answers[i] = Some(a);
            })
            .unwrap();
        for (i, c) in clients.iter().enumerate() {
            match answers[i] {
                Some(Answer::Found {
                    state: TcpState::Established,
                    cookie: k,
                    health: Some(h),
                }) => {
                    assert_eq!(k, cookie(c));
                    assert_eq!(h.bytes_sent, Some(i as u64 + 1), "socket {i}");
                }
                ref other => panic!("socket {i}: {other:?}"),
            }
        }
        let n = clients.len();
        assert_eq!(answers[n], Some(Answer::Gone));
        assert_eq!(answers[n + 1], Some(Answer::Gone));
        let stats = lookups.stats();
        assert_eq!(stats.requests, wanted.len() as u64);
        assert_eq!(stats.sends, wanted.len().div_ceil(BATCH) as u64);
        assert_eq!((stats.found, stats.gone, stats.failed), (n as u64, 2, 0));
        // By cookie now: the same answers; the steady state allocates nothing new.
        let by_cookie: Vec<Wanted> = clients.iter().map(|c| want(c, cookie(c))).collect();
        let mut found = 0;
        lookups
            .lookup(&by_cookie, |_, a| {
                found += usize::from(matches!(a, Answer::Found { .. }));
            })
            .unwrap();
        assert_eq!(found, n);
        drop(servers);
    }

    #[test]
    fn live_ipv6_and_mapped_sockets_are_found() {
        let l = TcpListener::bind("[::]:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let c6 = TcpStream::connect(("::1", port)).unwrap();
        let (s6, _) = l.accept().unwrap();
        let _c4 = TcpStream::connect(("127.0.95.2", port)).unwrap();
        let (mapped, _) = l.accept().unwrap();
        assert!(mapped.local_addr().unwrap().is_ipv6());
        let mut lookups = HealthLookups::open().unwrap();
        let want = [want(&c6, 0), want(&s6, 0), want(&mapped, 0)];
        let mut found = 0;
        lookups
            .lookup(&want, |_, a| {
                found += usize::from(matches!(
                    a,
                    Answer::Found {
                        health: Some(_),
                        ..
                    }
                ));
            })
            .unwrap();
        assert_eq!(found, 3);
    }

    #[test]
    fn hostile_answers_are_errors_not_panics() {
        let mut m = vec![0u8; NLMSG_HDR + 4];
        let n = m.len() as u32;
        m[..4].copy_from_slice(&n.to_ne_bytes());
        m[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        assert_eq!(parse_answer(&m).unwrap(), Answer::Gone);
        m[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert!(parse_answer(&m).is_err());
        for cut in 0..m.len() {
            let _ = parse_answer(&m[..cut]);
        }
        m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        assert!(parse_answer(&m).is_err());
    }
}
