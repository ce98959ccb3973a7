//! Asking the kernel about one socket: is it still there, and in which state?
//!
//! A dump that runs while sockets come and go can skip one (it resumes each datagram by
//! position in a hash bucket), and with procfs an inbound socket not yet accepted has no inode.
//! A socket missing from one poll, with no destroy event for it, is therefore confirmed before
//! it is counted as closed: a `SOCK_DIAG_BY_FAMILY` request *without* `NLM_F_DUMP`, naming the
//! exact 4-tuple and cookie, is answered by `inet_diag_dump_one_icsk` (`net/ipv4/inet_diag.c`)
//! from a hash lookup of that one socket (`inet_diag_find_one_icsk`), not a walk: one
//! `inet_diag_msg` if the socket exists and its cookie matches (`sock_diag_check_cookie`),
//! `ENOENT` if not. A socket in TIME_WAIT is found too (its cookie is the full socket's), with
//! its state.

use netlink_sys::Socket;

use super::{netlink, SocketEntry, SourceError, TcpState};

const NLMSG_HDR: usize = 16;
const NLMSG_ERROR: u16 = 2;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `idiag_inode`'s offset in an `inet_diag_msg`.
const INODE: usize = 68;

/// How the socket is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// By the kernel's socket cookie (the netlink source, destroy events).
    Cookie(u64),
    /// By inode (the procfs source): the request names no cookie and the answer's inode must
    /// match.
    Inode(u64),
}

/// What the kernel says about one socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// It exists and is ESTABLISHED: the poll missed it.
    Established,
    /// It exists, in another state: it has left ESTABLISHED.
    Elsewhere(TcpState),
    /// No such socket.
    Gone,
}

/// A netlink socket for exact requests.
pub struct Confirmer {
    /// `None` after an error, so that a stale reply is never read as the next one's.
    socket: Option<Socket>,
    buf: Vec<u8>,
    seq: u32,
    /// Requests made: each is one lookup in the kernel.
    pub requests: u64,
}

impl Confirmer {
    /// A confirmer; its netlink socket is opened on the first lookup (and again after one fails).
    pub fn open() -> Result<Self, SourceError> {
        Ok(Confirmer {
            socket: Some(netlink::open_socket()?),
            buf: Vec::with_capacity(4096),
            seq: 0,
            requests: 0,
        })
    }

    /// Looks `socket` up, by `id`.
    pub fn confirm(&mut self, socket: &SocketEntry, id: Identity) -> Result<Presence, SourceError> {
        let s = match self.socket.take() {
            Some(s) => s,
            None => netlink::open_socket()?,
        };
        self.seq = self.seq.wrapping_add(1);
        self.requests += 1;
        let request = request(socket, id, self.seq);
        let result = exchange(&s, &request, &mut self.buf, self.seq, id);
        if result.is_ok() {
            self.socket = Some(s);
        }
        result
    }
}

/// Confirmation of a socket a poll no longer lists, through exact lookups, by cookie (the
/// netlink source) or by inode (procfs); the sidecar's tracker asks it
/// ([`Lookup::still_established`]).
pub struct Lookup {
    confirmer: Confirmer,
    by_inode: bool,
    /// Lookups that failed.
    pub errors: u64,
}

impl Lookup {
    /// Lookups by inode if `by_inode` (procfs's ids), by cookie otherwise (netlink's).
    pub fn new(confirmer: Confirmer, by_inode: bool) -> Lookup {
        Lookup {
            confirmer,
            by_inode,
            errors: 0,
        }
    }
}

impl Lookup {
    /// Whether the socket `local` -> `remote` that `id` names (a [`SocketEntry::id`]) is still
    /// ESTABLISHED: `Some(false)` when it is gone or in another state, `None` when the lookup
    /// failed (counted in [`Lookup::errors`]): closed as the snapshot says, but not for certain.
    pub fn still_established(
        &mut self,
        local: std::net::SocketAddr,
        remote: std::net::SocketAddr,
        id: u64,
    ) -> Option<bool> {
        let entry = SocketEntry {
            local,
            remote,
            state: TcpState::Established,
            id,
            health: None,
        };
        let id = if self.by_inode {
            Identity::Inode(id)
        } else {
            Identity::Cookie(id)
        };
        match self.confirmer.confirm(&entry, id) {
            Ok(Presence::Established) => Some(true),
            Ok(Presence::Elsewhere(_) | Presence::Gone) => Some(false),
            Err(_) => {
                self.errors += 1;
                None
            }
        }
    }
}

fn exchange(
    socket: &Socket,
    request: &[u8],
    buf: &mut Vec<u8>,
    seq: u32,
    id: Identity,
) -> Result<Presence, SourceError> {
    let sent = netlink::retry(|| socket.send(request, 0))
        .map_err(SourceError::io("sending a sock_diag lookup"))?;
    if sent != request.len() {
        return Err(SourceError::Io {
            context: "sending a sock_diag lookup",
            source: std::io::Error::new(std::io::ErrorKind::WriteZero, "request sent in part"),
        });
    }
    loop {
        let datagram = netlink::recv_reply(socket, buf)
            .map_err(SourceError::io("reading a sock_diag lookup's answer"))?;
        match parse_answer(datagram, seq, id)? {
            Some(p) => return Ok(p),
            None => continue,
        }
    }
}

/// Reads the answer to request `seq`; `None` for a datagram that answers another request (a
/// late reply to one that failed part way is skipped).
pub fn parse_answer(bytes: &[u8], seq: u32, id: Identity) -> Result<Option<Presence>, SourceError> {
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
    if u32::from_ne_bytes(bytes[8..12].try_into().unwrap()) != seq {
        return Ok(None);
    }
    let payload = &bytes[NLMSG_HDR..len];
    match u16::from_ne_bytes([bytes[4], bytes[5]]) {
        SOCK_DIAG_BY_FAMILY => {
            let found = netlink::parse_socket(payload)?;
            if let Identity::Inode(inode) = id {
                let got = payload
                    .get(INODE..INODE + 4)
                    .map(|b| u64::from(u32::from_ne_bytes(b.try_into().unwrap())));
                // An inode of 0 is a socket not yet accepted: the same socket as far as procfs
                // can tell.
                if got != Some(inode) && got != Some(0) && inode != 0 {
                    return Ok(Some(Presence::Gone));
                }
            }
            Ok(Some(match found.state {
                TcpState::Established => Presence::Established,
                other => Presence::Elsewhere(other),
            }))
        }
        NLMSG_ERROR => {
            let err = payload
                .get(..4)
                .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                .ok_or_else(|| malformed("NLMSG_ERROR without an error code".into()))?;
            match -err {
                0 => Err(malformed("an acknowledgement instead of an answer".into())),
                libc::ENOENT => Ok(Some(Presence::Gone)),
                e => Err(SourceError::Io {
                    context: "sock_diag lookup",
                    source: std::io::Error::from_raw_os_error(e),
                }),
            }
        }
        other => Err(malformed(format!("unexpected message type {other}"))),
    }
}

/// The request for one socket: header and `inet_diag_req_v2` for the family it was listed in
/// (IPv6 if either address is), the 4-tuple as listed (local as source), the cookie or none
/// (`INET_DIAG_NOCOOKIE`), no extensions.
fn request(socket: &SocketEntry, id: Identity, seq: u32) -> Vec<u8> {
    const NLM_F_REQUEST: u16 = 0x01;
    const REQUEST: usize = NLMSG_HDR + 56;
    let cookie = match id {
        Identity::Cookie(c) if c != 0 => c,
        _ => u64::MAX,
    };
    let v6 = socket.local.is_ipv6() || socket.remote.is_ipv6();
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET } as u8;
    let mut r = Vec::with_capacity(REQUEST);
    r.extend_from_slice(&(REQUEST as u32).to_ne_bytes());
    r.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    r.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    r.extend_from_slice(&seq.to_ne_bytes());
    r.extend_from_slice(&0u32.to_ne_bytes());
    r.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    r.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state: an exact lookup ignores them
    r.extend_from_slice(&socket.local.port().to_be_bytes());
    r.extend_from_slice(&socket.remote.port().to_be_bytes());
    for a in [socket.local, socket.remote] {
        let bytes = match (a.ip(), v6) {
            (std::net::IpAddr::V4(ip), false) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&ip.octets());
                b
            }
            (std::net::IpAddr::V4(ip), true) => ip.to_ipv6_mapped().octets(),
            (std::net::IpAddr::V6(ip), _) => ip.octets(),
        };
        r.extend_from_slice(&bytes);
    }
    r.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    r.extend_from_slice(&(cookie as u32).to_ne_bytes());
    r.extend_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
    r
}

#[cfg(test)]
mod tests {
    //! Live tests on sockets of their own (127.0.94.x, ports from the kernel).

    use super::*;
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    fn cookie(s: &impl AsRawFd) -> u64 {
        crate::destroy::tests::cookie(s)
    }

    fn inode(s: &impl AsRawFd) -> u64 {
        // SAFETY: a zeroed `stat` is a valid value (integers only), filled by fstat below.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat into a live `stat`, on a descriptor the caller keeps open.
        assert_eq!(unsafe { libc::fstat(s.as_raw_fd(), &mut st) }, 0);
        st.st_ino
    }

    fn entry(s: &TcpStream) -> SocketEntry {
        SocketEntry {
            local: s.local_addr().unwrap(),
            remote: s.peer_addr().unwrap(),
            state: TcpState::Established,
            id: cookie(s),
            health: None,
        }
    }

    fn pair(listen: &str, from: &str) -> (TcpListener, TcpStream, TcpStream) {
        let l = TcpListener::bind(listen).unwrap();
        let s = socket2::Socket::new(
            socket2::Domain::for_address(l.local_addr().unwrap()),
            socket2::Type::STREAM,
            None,
        )
        .unwrap();
        s.bind(&from.parse::<std::net::SocketAddr>().unwrap().into())
            .unwrap();
        s.connect(&l.local_addr().unwrap().into()).unwrap();
        let (server, _) = l.accept().unwrap();
        (l, s.into(), server)
    }

    /// Asks until the answer is `want` (the far end of a close moves on asynchronously).
    fn until(c: &mut Confirmer, e: &SocketEntry, id: Identity, want: Presence) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got = c.confirm(e, id).unwrap();
            if got == want || Instant::now() > deadline {
                assert_eq!(got, want, "{e:?}");
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn live_an_established_socket_is_found_by_cookie_and_a_stranger_is_not() {
        let mut c = Confirmer::open().unwrap();
        for (listen, from) in [("127.0.94.1:0", "127.0.94.2:0"), ("[::1]:0", "[::1]:0")] {
            let (_l, client, server) = pair(listen, from);
            let (ce, se) = (entry(&client), entry(&server));
            assert_eq!(
                c.confirm(&ce, Identity::Cookie(ce.id)).unwrap(),
                Presence::Established
            );
            assert_eq!(
                c.confirm(&se, Identity::Cookie(se.id)).unwrap(),
                Presence::Established
            );
            // The same 4-tuple with another cookie: another socket, so not this one.
            assert_eq!(
                c.confirm(&ce, Identity::Cookie(ce.id + 1)).unwrap(),
                Presence::Gone
            );
            // By inode, as procfs knows it.
            let ino = inode(&client);
            assert_eq!(
                c.confirm(&ce, Identity::Inode(ino)).unwrap(),
                Presence::Established
            );
            assert_eq!(
                c.confirm(&ce, Identity::Inode(ino + 1)).unwrap(),
                Presence::Gone
            );
        }
        assert_eq!(c.requests, 10);
    }

    #[test]
    fn live_a_dual_stack_socket_with_mapped_addresses_is_found() {
        let mut c = Confirmer::open().unwrap();
        let l = TcpListener::bind("[::]:0").unwrap();
        let client = TcpStream::connect(("127.0.94.3", l.local_addr().unwrap().port())).unwrap();
        let (server, _) = l.accept().unwrap();
        let se = entry(&server);
        assert!(
            se.local.is_ipv6(),
            "an AF_INET6 socket with IPv4-mapped addresses"
        );
        assert_eq!(
            c.confirm(&se, Identity::Cookie(se.id)).unwrap(),
            Presence::Established
        );
        drop(client);
    }

    #[test]
    fn live_closed_sockets_are_elsewhere_or_gone() {
        let mut c = Confirmer::open().unwrap();
        // The peer closed: ours is in CLOSE_WAIT, still there but no longer ESTABLISHED.
        let (_l, client, server) = pair("127.0.94.4:0", "127.0.94.5:0");
        let (ce, se) = (entry(&client), entry(&server));
        drop(server);
        until(
            &mut c,
            &ce,
            Identity::Cookie(ce.id),
            Presence::Elsewhere(TcpState::CloseWait),
        );
        // Then we close too: ours is gone once the peer's FIN_WAIT2 sees our FIN (no TIME_WAIT
        // for the side that closes second), the peer's is in TIME_WAIT, under its cookie.
        client.shutdown(Shutdown::Both).unwrap();
        drop(client);
        until(&mut c, &ce, Identity::Cookie(ce.id), Presence::Gone);
        until(
            &mut c,
            &se,
            Identity::Cookie(se.id),
            Presence::Elsewhere(TcpState::TimeWait),
        );
        // After a reset nothing is left to look up, on either side: the peer's socket still
        // has its file, but a CLOSE socket is out of the hash tables.
        let (_l, client, server) = pair("127.0.94.6:0", "127.0.94.7:0");
        let (ce, se) = (entry(&client), entry(&server));
        socket2::SockRef::from(&client)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(client);
        until(&mut c, &ce, Identity::Cookie(ce.id), Presence::Gone);
        until(&mut c, &se, Identity::Cookie(se.id), Presence::Gone);
        drop(server);
    }

    #[test]
    fn answers_for_other_requests_are_skipped_and_hostile_bytes_are_errors() {
        let mut m = vec![0u8; NLMSG_HDR + 4];
        let n = m.len() as u32;
        m[..4].copy_from_slice(&n.to_ne_bytes());
        m[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m[8..12].copy_from_slice(&7u32.to_ne_bytes());
        m[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        assert_eq!(
            parse_answer(&m, 7, Identity::Cookie(1)).unwrap(),
            Some(Presence::Gone)
        );
        assert_eq!(parse_answer(&m, 8, Identity::Cookie(1)).unwrap(), None);
        m[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert!(parse_answer(&m, 7, Identity::Cookie(1)).is_err());
        for cut in 0..m.len() {
            let _ = parse_answer(&m[..cut], 7, Identity::Cookie(1));
        }
        let mut short = m.clone();
        short[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        assert!(parse_answer(&short, 7, Identity::Cookie(1)).is_err());
    }
}
