//! The eBPF source: every TCP state change of a watched session, as it happens, with the
//! kernel's timestamp, who hung up, and the process that connected.
//!
//! Polling makes the kernel walk every socket of the host on every poll; this instead hooks
//! the `sock:inet_sock_set_state` tracepoint with a program generated here
//! (`program`, no compiler at build time) that keeps only the sockets of the targets and of
//! this network namespace **in the kernel**, and hands the few transitions that matter to user
//! space through a ring buffer (`ringbuf`). The cost therefore follows the targets' traffic,
//! not the size of the host.
//!
//! - `tracefs`: the tracepoint's id and record layout, read at load time;
//! - `btf`: offsets of `struct sock` and `struct net` members, from the kernel's BTF;
//! - `asm` and `program`: the program;
//! - [`loader`]: `bpf(2)` and `perf_event_open(2)`;
//! - `ringbuf`: the mmap'ed consumer;
//! - `source`: [`EbpfSource`], the set of matching sockets kept from the transitions and
//!   reconciled with full dumps.
//!
//! Needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN); without them [`EbpfEvents::open`] fails
//! with [`EbpfError::Capabilities`], which names them.

mod asm;
mod btf;
pub mod loader;
mod program;
mod ringbuf;
mod source;
mod tracefs;

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

pub use source::{EbpfSource, SourceStats};

use program::{event, Counter, CONNECT_VALUE, COUNTERS};

use crate::TcpState;
pub use crate::{ClosedBy, Process};
use fix_monitor_core::target::Targets;

/// Why the eBPF source could not start.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// The process lacks these capabilities.
    #[error("the eBPF source needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN, or root); this process lacks {}", .0.join(" and "))]
    Capabilities(Vec<&'static str>),
    /// The tracepoint's id or record layout could not be read.
    #[error(transparent)]
    Tracefs(#[from] tracefs::TracefsError),
    /// The kernel's BTF could not be read, or lacks a member the program reads.
    #[error("reading /sys/kernel/btf/vmlinux: {0}")]
    Btf(#[from] btf::BtfError),
    /// The targets do not fit in one program.
    #[error(transparent)]
    TooManyTargets(#[from] program::TooManyTargets),
    /// The verifier refused the program.
    #[error("the kernel refused the eBPF program: {0}")]
    Load(#[from] loader::LoadError),
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The system's error.
        #[source]
        source: io::Error,
    },
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> EbpfError {
    move |source| {
        if source.raw_os_error() == Some(libc::EPERM) {
            let missing = loader::missing_capabilities();
            if !missing.is_empty() {
                return EbpfError::Capabilities(missing);
            }
        }
        EbpfError::Io { what, source }
    }
}

/// How the source is set up.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Size of the ring buffer's data area: a power of two, at least one page. Each
    /// transition takes 120 bytes (its 112 and the ring's 8-byte header).
    pub ring_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        // About 2,180 transitions between two reads.
        Options {
            ring_bytes: 256 * 1024,
        }
    }
}

/// One state change of a watched socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// `CLOCK_MONOTONIC` nanoseconds (`bpf_ktime_get_ns`) when the state changed.
    pub ktime_ns: u64,
    /// The socket's kernel address: unique among live sockets, the identity of a session here.
    pub sock: u64,
    /// The socket cookie, where something has asked for it (0 otherwise: reading it in the
    /// program does not create one).
    pub cookie: u64,
    /// The local address and port.
    pub local: SocketAddr,
    /// The peer's address and port.
    pub remote: SocketAddr,
    /// The state the socket left.
    pub old: TcpState,
    /// The state it entered.
    pub new: TcpState,
    /// Who connected, on opens of outbound connections.
    pub process: Option<Process>,
    /// The socket's counters as the state changed: on a close, its final bytes and
    /// retransmits (what a last `tcp_info` would say).
    pub counters: SocketCounters,
}

/// A socket's `tcp_info` counters, read by the program from `struct tcp_sock`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketCounters {
    /// Data bytes sent, retransmissions included (`bytes_sent`).
    pub bytes_sent: u64,
    /// Data bytes received (`bytes_received`).
    pub bytes_received: u64,
    /// Segments retransmitted (`total_retrans`).
    pub retransmits: u32,
}

/// What a transition means for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The session reached ESTABLISHED.
    Opened,
    /// The session left ESTABLISHED, and who hung up.
    Closed(ClosedBy),
}

impl Transition {
    /// The event this transition is for the loop (`None`: not a session's open or close),
    /// stamped on the sidecar's clocks ([`timestamp_of`]). This mode knows sockets by their
    /// 4-tuple only (id 0), whole, and every record left ESTABLISHED or entered it; a close
    /// carries the counters the program read as the state changed.
    pub fn to_event(
        &self,
        now: fix_monitor_core::Timestamp,
        now_ktime_ns: u64,
    ) -> Option<fix_monitor_core::SocketEvent> {
        use fix_monitor_core::{SocketEventKind, TcpCounters};
        let (kind, closed_by) = match self.change()? {
            Change::Opened => (SocketEventKind::Opened, None),
            Change::Closed(by) => (SocketEventKind::Closed, Some(by)),
        };
        let c = self.counters;
        Some(fix_monitor_core::SocketEvent {
            at: timestamp_of(self.ktime_ns, now, now_ktime_ns),
            kind,
            id: 0,
            local: self.local,
            remote: self.remote,
            partial: false,
            established: Some(true),
            info: closed_by.map(|_| TcpCounters {
                bytes_acked: None,
                bytes_received: c.bytes_received,
                retransmits: c.retransmits,
                bytes_sent: Some(c.bytes_sent),
            }),
            closed_by,
            process: if closed_by.is_none() {
                self.process.clone()
            } else {
                None
            },
        })
    }

    /// What the transition means for a session, from the states it left and entered.
    pub fn change(&self) -> Option<Change> {
        match (self.old, self.new) {
            (_, TcpState::Established) => Some(Change::Opened),
            (TcpState::Established, TcpState::FinWait1) => Some(Change::Closed(ClosedBy::Local)),
            (TcpState::Established, TcpState::CloseWait) => Some(Change::Closed(ClosedBy::Remote)),
            (TcpState::Established, TcpState::Close) => Some(Change::Closed(ClosedBy::Reset)),
            (TcpState::Established, _) => Some(Change::Closed(ClosedBy::Unknown)),
            _ => None,
        }
    }

    /// Parses one ring-buffer record (`program::event`); `None` if it is too short.
    pub fn parse(b: &[u8]) -> Option<Transition> {
        if b.len() < event::LEN {
            return None;
        }
        let u64_at = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().unwrap());
        let u16_at = |o: usize| u16::from_ne_bytes(b[o..o + 2].try_into().unwrap());
        let addr = |o: usize, port: u16| {
            let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(&b[o..o + 16]).unwrap());
            if u16_at(event::FAMILY) == libc::AF_INET as u16 {
                let v4 = v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED);
                SocketAddr::from((v4, port))
            } else {
                SocketAddr::from((v6, port))
            }
        };
        let pid_tgid = u64_at(event::PID_TGID);
        let process = (pid_tgid != 0).then(|| {
            let comm = &b[event::COMM..event::COMM + 16];
            let end = comm.iter().position(|&c| c == 0).unwrap_or(16);
            Process {
                pid: (pid_tgid >> 32) as u32,
                comm: String::from_utf8_lossy(&comm[..end]).into_owned(),
            }
        });
        Some(Transition {
            ktime_ns: u64_at(event::KTIME_NS),
            sock: u64_at(event::SKADDR),
            cookie: u64_at(event::COOKIE),
            local: addr(event::SADDR, u16_at(event::SPORT)),
            remote: addr(event::DADDR, u16_at(event::DPORT)),
            old: TcpState::from_linux(b[event::OLDSTATE]),
            new: TcpState::from_linux(b[event::NEWSTATE]),
            process,
            counters: SocketCounters {
                bytes_sent: u64_at(event::BYTES_SENT),
                bytes_received: u64_at(event::BYTES_RECEIVED),
                retransmits: u64_at(event::TOTAL_RETRANS) as u32,
            },
        })
    }
}

/// The in-kernel counters, summed over CPUs (see `program::Counter`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Every hit of the tracepoint (all sockets, all namespaces, all protocols).
    pub seen: u64,
    /// Transitions into or out of ESTABLISHED that matched a target, in any namespace.
    pub matched: u64,
    /// Matching sockets (or connects) of other network namespaces, dropped.
    pub other_netns: u64,
    /// Records written to the ring buffer.
    pub emitted: u64,
    /// Records dropped because the ring buffer was full.
    pub lost: u64,
}

/// The loaded and attached program, its maps and the ring buffer's consumer. Dropping it
/// detaches the program.
pub struct EbpfEvents {
    ring: ringbuf::RingBuf,
    // Field order is drop order: detach before the program and maps go.
    _attachment: OwnedFd,
    _prog: OwnedFd,
    ring_map: loader::Map,
    counters: loader::Map,
    _connects: loader::Map,
    cpus: usize,
    insns: usize,
}

impl EbpfEvents {
    /// Generates, loads and attaches the program for `targets`, in the calling thread's
    /// network namespace.
    pub fn open(targets: &Targets, opts: Options) -> Result<EbpfEvents, EbpfError> {
        let missing = loader::missing_capabilities();
        if !missing.is_empty() {
            return Err(EbpfError::Capabilities(missing));
        }
        let dir = tracefs::event_dir()?;
        let mut layout = tracefs::layout(&dir)?;
        let id = tracefs::id(&dir)?;
        let raw = std::fs::read(btf::VMLINUX).map_err(io_err("reading /sys/kernel/btf/vmlinux"))?;
        let types = btf::Btf::parse(&raw)?;
        let off =
            |s: &str, p: &[&str]| -> Result<i32, EbpfError> { Ok(types.offset(s, p)? as i32) };
        layout.sk_net = off("sock", &["__sk_common", "skc_net", "net"])?;
        layout.sk_cookie = off("sock", &["__sk_common", "skc_cookie"])?;
        layout.net_cookie = off("net", &["net_cookie"])?;
        layout.tp_bytes_sent = off("tcp_sock", &["bytes_sent"])?;
        layout.tp_bytes_received = off("tcp_sock", &["bytes_received"])?;
        layout.tp_total_retrans = off("tcp_sock", &["total_retrans"])?;
        drop(types);
        let cookie = loader::netns_cookie().map_err(io_err("reading SO_NETNS_COOKIE"))?;
        let cpus = loader::possible_cpus().map_err(io_err("reading the possible CPUs"))?;

        let page = 4096;
        let ring_bytes = opts.ring_bytes.max(page).next_power_of_two();
        let ring_map =
            loader::Map::create(loader::MAP_RINGBUF, 0, 0, ring_bytes as u32, "fixm_ring")
                .map_err(io_err("creating the ring buffer"))?;
        let counters = loader::Map::create(
            loader::MAP_PERCPU_ARRAY,
            4,
            (COUNTERS * 8) as u32,
            1,
            "fixm_counters",
        )
        .map_err(io_err("creating the counters map"))?;
        let connects = loader::Map::create(
            loader::MAP_LRU_HASH,
            8,
            CONNECT_VALUE as u32,
            4096,
            "fixm_connects",
        )
        .map_err(io_err("creating the connect map"))?;
        let insns = program::build(
            &layout,
            targets,
            cookie,
            program::Maps {
                ring: ring_map.raw(),
                counters: counters.raw(),
                connects: connects.raw(),
            },
        )?;
        let prog = loader::load_tracepoint(&insns, "fixm_tcp_state")?;
        let attachment =
            loader::attach_tracepoint(id, &prog).map_err(io_err("attaching to the tracepoint"))?;
        let ring = ringbuf::RingBuf::map(ring_map.fd.as_fd(), ring_bytes)
            .map_err(io_err("mapping the ring buffer"))?;
        Ok(EbpfEvents {
            ring,
            _attachment: attachment,
            _prog: prog,
            ring_map,
            counters,
            _connects: connects,
            cpus,
            insns: insns.len(),
        })
    }

    /// The descriptor that becomes readable when records are waiting (for `poll`/epoll).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.ring_map.fd.as_fd()
    }

    /// Number of instructions of the loaded program.
    pub fn program_len(&self) -> usize {
        self.insns
    }

    /// Waits until records are waiting or `timeout` passes; true if there are records.
    pub fn wait(&self, timeout: Duration) -> io::Result<bool> {
        if self.ring.pending() > 0 {
            return Ok(true);
        }
        let mut p = libc::pollfd {
            fd: self.fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one live pollfd.
        let rc = unsafe { libc::poll(&mut p, 1, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            };
        }
        Ok(self.ring.pending() > 0)
    }

    /// Appends every waiting transition to `out`; returns how many records were read
    /// (records too short to parse are counted but dropped: they cannot come from our program).
    pub fn drain(&mut self, out: &mut Vec<Transition>) -> usize {
        self.ring.drain(|b| out.extend(Transition::parse(b)))
    }

    /// The in-kernel counters, summed over every CPU.
    pub fn counters(&self) -> io::Result<Counters> {
        let mut buf = vec![0u8; self.cpus * COUNTERS * 8];
        self.counters.lookup_u32(0, &mut buf)?;
        let mut sum = [0u64; COUNTERS];
        for cpu in buf.chunks(COUNTERS * 8) {
            for (i, s) in sum.iter_mut().enumerate() {
                *s += u64::from_ne_bytes(cpu[i * 8..i * 8 + 8].try_into().unwrap());
            }
        }
        let c = |k: Counter| sum[k as usize];
        Ok(Counters {
            seen: c(Counter::Seen),
            matched: c(Counter::Matched),
            other_netns: c(Counter::OtherNetns),
            emitted: c(Counter::Emitted),
            lost: c(Counter::Lost),
        })
    }
}

/// `CLOCK_MONOTONIC` now, in nanoseconds: the clock of [`Transition::ktime_ns`].
pub fn ktime_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// When a transition happened, on the sidecar's clocks: `now` is read together with
/// `now_ktime_ns` ([`ktime_now_ns`]); Rust's `Instant` is `CLOCK_MONOTONIC` on Linux, the clock
/// of `bpf_ktime_get_ns`, so the kernel's stamp maps to an `Instant` exactly.
pub fn timestamp_of(
    ktime_ns: u64,
    now: fix_monitor_core::Timestamp,
    now_ktime_ns: u64,
) -> fix_monitor_core::Timestamp {
    let ago = Duration::from_nanos(now_ktime_ns.saturating_sub(ktime_ns));
    fix_monitor_core::Timestamp {
        mono: now.mono.checked_sub(ago).unwrap_or(now.mono),
        wall: now.wall.checked_sub(ago).unwrap_or(now.wall),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fix_monitor_core::{SocketEventKind, Timestamp};

    fn transition(old: TcpState, new: TcpState) -> Transition {
        Transition {
            ktime_ns: 1_000_000_000,
            sock: 1,
            cookie: 0,
            local: "10.0.0.1:5000".parse().unwrap(),
            remote: "10.0.0.5:9876".parse().unwrap(),
            old,
            new,
            process: Some(Process {
                pid: 7,
                comm: "gw".into(),
            }),
            counters: SocketCounters {
                bytes_sent: 10,
                bytes_received: 20,
                retransmits: 3,
            },
        }
    }

    /// What the loop gets from each transition: the kernel's stamp on the loop's clock, who
    /// hung up from the state left for, the process on opens, the counters on closes.
    #[test]
    fn transitions_become_the_loops_events() {
        use TcpState::*;
        let now = Timestamp::now();
        // The loop's now is 250 ms after the transition, on the kernel's clock.
        let now_k = 1_250_000_000;
        let open = transition(SynSent, Established)
            .to_event(now, now_k)
            .unwrap();
        assert_eq!(open.kind, SocketEventKind::Opened);
        assert_eq!(now.mono - open.at.mono, Duration::from_millis(250));
        assert_eq!(
            (open.id, open.partial, open.established),
            (0, false, Some(true))
        );
        assert_eq!(open.process.as_ref().map(|p| p.pid), Some(7));
        assert_eq!((open.closed_by, open.info), (None, None));
        for (new, by) in [
            (FinWait1, ClosedBy::Local),
            (CloseWait, ClosedBy::Remote),
            (Close, ClosedBy::Reset),
            (LastAck, ClosedBy::Unknown),
        ] {
            let close = transition(Established, new).to_event(now, now_k).unwrap();
            assert_eq!(close.kind, SocketEventKind::Closed);
            assert_eq!(close.closed_by, Some(by));
            assert_eq!(close.process, None);
            let info = close.info.unwrap();
            assert_eq!(
                (
                    info.bytes_sent,
                    info.bytes_received,
                    info.retransmits,
                    info.bytes_acked
                ),
                (Some(10), 20, 3, None)
            );
        }
        assert_eq!(transition(FinWait1, FinWait2).to_event(now, now_k), None);
    }
}
