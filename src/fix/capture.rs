//! The wire source's I/O: a Linux packet socket (`AF_PACKET`, `SOCK_DGRAM`, every interface)
//! with the targets' classic BPF program ([`super::filter`]) and kernel receive timestamps
//! (`SO_TIMESTAMPNS`). Needs `CAP_NET_RAW`, nothing else.
//!
//! The socket is opened with protocol 0 (it receives nothing), the filter attached, and only
//! then bound to `ETH_P_ALL`, so that no packet that the filter would refuse is ever queued.
//! Drops are read from `PACKET_STATISTICS` (the kernel resets the counts on every read; they
//! are summed here).

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, SystemTime};

use fix_monitor_kernel::cbpf::{self, Insn};

use super::filter::compile;
use crate::target::Targets;

/// Counts read from the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CaptureStats {
    /// Packets the filter accepted (`tp_packets`).
    pub packets: u64,
    /// Packets dropped because the socket's receive buffer was full (`tp_drops`).
    pub drops: u64,
}

/// One open packet socket.
pub struct Capture {
    fd: OwnedFd,
    pub stats: CaptureStats,
    buf: Vec<u8>,
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: `v` is a live value of the size passed.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// The loopback interface's index (1 in every namespace Linux creates, asked anyway).
pub fn loopback_index() -> u32 {
    // SAFETY: a NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    if i == 0 {
        1
    } else {
        i
    }
}

/// Whether this process may open a packet socket (`CAP_NET_RAW`): one is opened and closed.
pub fn permitted() -> bool {
    // SAFETY: plain socket(2); the fd is owned at once and closed on drop.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return false;
    }
    // SAFETY: `raw` is a new fd nobody else owns.
    drop(unsafe { OwnedFd::from_raw_fd(raw) });
    true
}

impl Capture {
    /// Open a socket for `targets`. `rcvbuf` is the receive buffer asked for (bytes); the
    /// kernel may cap it (`net.core.rmem_max`; `SO_RCVBUFFORCE` is tried first, which
    /// `CAP_NET_ADMIN` allows).
    pub fn open(targets: &Targets, rcvbuf: usize) -> io::Result<Capture> {
        let prog = compile(targets, loopback_index()).map_err(|e| {
            let what = format!("the packet filter for {} targets: {e}", targets.len());
            io::Error::new(io::ErrorKind::InvalidInput, what)
        })?;
        Self::open_with(&prog, rcvbuf)
    }

    /// Replace the filter with the program for `targets` (a tunnel found at run time): the
    /// kernel swaps it at once (`sk_attach_filter`); packets already queued stay.
    pub fn set_filter(&mut self, targets: &Targets) -> io::Result<()> {
        let prog = compile(targets, loopback_index()).map_err(|e| {
            let what = format!("the packet filter for {} targets: {e}", targets.len());
            io::Error::new(io::ErrorKind::InvalidInput, what)
        })?;
        cbpf::attach(self.fd.as_fd(), &prog)
    }

    /// Open a socket with a given program (the tests check the kernel accepts ours).
    pub fn open_with(prog: &[Insn], rcvbuf: usize) -> io::Result<Capture> {
        // SAFETY: plain socket(2); the fd is owned at once.
        let raw = check(unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        })?;
        // SAFETY: `raw` is a new fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        cbpf::attach(fd.as_fd(), prog)?;
        let one: libc::c_int = 1;
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, &one)?;
        let size = rcvbuf.min(i32::MAX as usize) as libc::c_int;
        if setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &size).is_err() {
            setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &size)?;
        }
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = 0;
        // SAFETY: `sll` is a valid sockaddr_ll of the size passed.
        check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        let mut c = Capture {
            fd,
            stats: CaptureStats::default(),
            buf: vec![0; super::filter::ACCEPT as usize],
        };
        // Whatever the socket counted before the filter (nothing, by construction) is not ours.
        let _ = c.kernel_stats();
        c.stats = CaptureStats::default();
        Ok(c)
    }

    /// Wait up to `timeout` for packets, then hand each waiting one (bytes from the IP
    /// header, kernel receive time) to `f`, at most `max` of them. Returns how many.
    pub fn recv_batch(
        &mut self,
        timeout: Duration,
        max: usize,
        mut f: impl FnMut(&[u8], SystemTime),
    ) -> io::Result<usize> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            };
        }
        let mut n = 0;
        while n < max {
            match self.recv_one() {
                Ok(Some((len, at))) => {
                    f(&self.buf[..len], at);
                    n += 1;
                }
                Ok(None) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    fn recv_one(&mut self) -> io::Result<Option<(usize, SystemTime)>> {
        let mut iov = libc::iovec {
            iov_base: self.buf.as_mut_ptr().cast(),
            iov_len: self.buf.len(),
        };
        let mut cmsg = [0u64; 16];
        // SAFETY: zeroed msghdr is valid; pointers set to live buffers below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cmsg) as _;
        // SAFETY: msg points at live buffers of the sizes given.
        let r = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(None),
                io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        let mut at = None;
        // SAFETY: walking the control messages the kernel wrote into `cmsg`.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                    let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    at = Some(
                        SystemTime::UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32),
                    );
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        // A packet without a timestamp (never seen with SO_TIMESTAMPNS) is timed now.
        Ok(Some((r as usize, at.unwrap_or_else(SystemTime::now))))
    }

    /// Read and sum the kernel's counts (`PACKET_STATISTICS`).
    pub fn kernel_stats(&mut self) -> io::Result<CaptureStats> {
        let mut st = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: `st` is a tpacket_stats of the size passed.
        check(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        })?;
        self.stats.packets += u64::from(st.tp_packets);
        self.stats.drops += u64::from(st.tp_drops);
        Ok(self.stats)
    }
}
