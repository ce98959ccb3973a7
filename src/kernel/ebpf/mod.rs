//! The eBPF source: every TCP state change of a watched session as it happens, with the
//! kernel's timestamp, who hung up, the process that connected, and each session's health read
//! in the kernel, at a cost that follows the watched sessions, not the host.
//!
//! The programs and their loader are the `fix-monitor-ebpf` crate (`src/ebpf`: restricted C
//! with CO-RE, loaded by libbpf-rs): the targets live in its maps (an LPM trie by address, port
//! rules beside it), a watched socket gets socket-local storage when it connects or becomes
//! ESTABLISHED, state changes reach user space through a ring buffer, and one health pass
//! walks the watched sessions only. This module turns that into the sources' vocabulary:
//! - [`EbpfSource`] (`source`): the set of matching ESTABLISHED sockets kept from the state
//!   changes, reconciled with netlink dumps, with each session's health from the pass;
//! - [`to_event`], [`to_health`]: one state change as the loop's [`SocketEvent`], one health
//!   record as core's [`TcpHealth`].
//!
//! Needs root, or CAP_BPF and CAP_PERFMON, and a kernel with BTF and the features
//! `fix_monitor_ebpf::FEATURES` lists (6.10 or later); otherwise [`EbpfSource::open`] fails
//! with an error that names what is missing, and `auto` takes netlink mode, saying why.

mod source;

use std::time::Duration;

pub use fix_monitor_ebpf::{
    Closer, Error as ProgramError, Health, HealthWalk, KernelCounters, Monitor, StateChange,
};
pub use source::{EbpfSource, SourceStats};

use crate::{ClosedBy, Process, SocketEvent, TcpHealth};
use fix_monitor_core::{KernelCause, SocketEventKind, TcpCounters, Timestamp};
use fix_monitor_ebpf::model::tcp_state::{CLOSE, CLOSE_WAIT, ESTABLISHED, FIN_WAIT1};

/// Capabilities the eBPF source needs that this process lacks (from `CapEff` in
/// `/proc/self/status`): CAP_BPF and CAP_PERFMON, either of which CAP_SYS_ADMIN stands in for.
pub fn missing_capabilities() -> Vec<&'static str> {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0);
    let has = |c: u32| eff & (1 << c) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    missing
}

/// What a state change means for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The session reached ESTABLISHED.
    Opened,
    /// The session left ESTABLISHED, and who hung up.
    Closed(ClosedBy),
}

/// What `c` means for a session, from the states it left and entered (`None`: neither an
/// open nor a close, such as FIN_WAIT1 -> FIN_WAIT2 after the close). Who hung up is the state
/// it left ESTABLISHED for: FIN_WAIT1 (we sent FIN first), CLOSE_WAIT (the peer did), CLOSE (a
/// reset either way, or a socket error such as a retransmission timeout).
pub fn change(c: &StateChange) -> Option<Change> {
    if c.new_state == ESTABLISHED {
        return Some(Change::Opened);
    }
    if c.old_state != ESTABLISHED {
        return None;
    }
    Some(Change::Closed(match c.new_state {
        FIN_WAIT1 => ClosedBy::Local,
        CLOSE_WAIT => ClosedBy::Remote,
        CLOSE => ClosedBy::Reset,
        _ => ClosedBy::Unknown,
    }))
}

/// The event `c` is for the loop (`None`: not a session's open or close), stamped on the
/// sidecar's clocks ([`timestamp_of`]). Sessions are known by their socket cookie; a close
/// carries the counters the program read as the state changed, an open the process that
/// connected (where the kernel saw the connect).
pub fn to_event(
    c: &StateChange,
    now: Timestamp,
    now_ktime_ns: u64,
    reasons: &[(u32, String)],
) -> Option<SocketEvent> {
    let (kind, closed_by) = match change(c)? {
        Change::Opened => (SocketEventKind::Opened, None),
        Change::Closed(by) => (SocketEventKind::Closed, Some(by)),
    };
    let k = c.counters;
    Some(SocketEvent {
        at: timestamp_of(c.ts_ns, now, now_ktime_ns),
        kind,
        id: c.sock_cookie,
        local: c.local,
        remote: c.remote,
        // A close the source could not match to its open has lost its local port.
        partial: c.local.port() == 0,
        established: Some(true),
        info: closed_by.map(|_| TcpCounters {
            bytes_acked: Some(k.bytes_acked),
            bytes_received: k.bytes_received,
            retransmits: k.total_retrans,
            bytes_sent: Some(k.bytes_sent),
        }),
        closed_by,
        process: match (closed_by, c.pid) {
            (None, Some(pid)) => Some(Process {
                pid,
                comm: c.comm.as_str().into(),
            }),
            _ => None,
        },
        cause: closed_by.and_then(|_| cause(c, reasons)),
    })
}

/// Why the kernel ended the session `c` closes, in words, where it says: the reason of a RST we
/// sent (its `enum sk_rst_reason` name from `reasons`, [`fix_monitor_ebpf::reset_reason_names`]),
/// a RST received, the socket error at the close (a retransmission or keep-alive timeout is
/// `Connection timed out`). `None` for a plain FIN either way.
pub fn cause(c: &StateChange, reasons: &[(u32, String)]) -> Option<KernelCause> {
    let reset_sent = c
        .reset_sent_reason
        .map(|r| match reasons.iter().find(|(v, _)| *v == r) {
            Some((_, name)) => name.clone(),
            None => format!("reason {r}"),
        });
    let k = KernelCause {
        reset_sent,
        reset_received: c.reset_received,
        socket_error: (c.sk_err != 0).then_some(c.sk_err),
    };
    (k != KernelCause::default()).then_some(k)
}

/// One health record as core's [`TcpHealth`]: the values `tcp_get_info()` would report, read by
/// the program from the kernel's `tcp_sock`.
pub fn to_health(h: &Health) -> TcpHealth {
    TcpHealth {
        rtt_us: h.srtt_us,
        rtt_var_us: h.rttvar_us,
        min_rtt_us: h.min_rtt_us,
        retransmits: h.total_retrans,
        lost: h.lost,
        send_queue: h.send_queue_bytes,
        not_sent: Some(h.notsent_bytes),
        recv_queue: h.rcv_queue,
        bytes_acked: Some(h.bytes_acked),
        bytes_received: Some(h.bytes_received),
        bytes_sent: Some(h.bytes_sent),
        bytes_retrans: Some(h.bytes_retrans),
        dsack_dups: Some(h.dsack_dups),
        last_data_recv_ms: h.last_data_recv_ms,
        last_data_sent_ms: h.last_data_sent_ms,
        last_ack_recv_ms: h.last_ack_recv_ms,
        delivery_rate: Some(h.delivery_rate),
        rwnd_limited_us: Some(h.rwnd_limited_us),
        sndbuf_limited_us: Some(h.sndbuf_limited_us),
    }
}

/// `CLOCK_MONOTONIC` now, in nanoseconds: the clock of [`StateChange::ts_ns`].
pub fn ktime_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// When a state change happened, on the sidecar's clocks: `now` is read together with
/// `now_ktime_ns` ([`ktime_now_ns`]); Rust's `Instant` is `CLOCK_MONOTONIC` on Linux, the clock
/// of `bpf_ktime_get_ns`, so the kernel's stamp maps to an `Instant` exactly.
pub fn timestamp_of(ktime_ns: u64, now: Timestamp, now_ktime_ns: u64) -> Timestamp {
    let ago = Duration::from_nanos(now_ktime_ns.saturating_sub(ktime_ns));
    Timestamp {
        mono: now.mono.checked_sub(ago).unwrap_or(now.mono),
        wall: now.wall.checked_sub(ago).unwrap_or(now.wall),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fix_monitor_ebpf::model::tcp_state::SYN_SENT;
    const LAST_ACK: u8 = 9;
    use fix_monitor_ebpf::Counters;

    fn state_change(old: u8, new: u8) -> StateChange {
        StateChange {
            ts_ns: 1_000_000_000,
            sock_cookie: 42,
            netns_cookie: 1,
            old_state: old,
            new_state: new,
            local: "10.0.0.1:5000".parse().unwrap(),
            remote: "10.0.0.5:9876".parse().unwrap(),
            target: 0,
            pid: Some(7),
            comm: "gw".into(),
            adopted: false,
            closer: Closer::Unknown,
            sk_err: 0,
            reset_received: false,
            reset_sent_reason: None,
            counters: Counters {
                bytes_acked: 11,
                bytes_received: 20,
                bytes_sent: 10,
                total_retrans: 3,
                retrans_events: 3,
                srtt_us: 50,
            },
        }
    }

    /// What the loop gets from each change: the kernel's stamp on the loop's clock, the
    /// cookie as the id, who hung up from the state left for, the process on opens, the
    /// counters on closes; changes after the close are not events.
    #[test]
    fn state_changes_become_the_loops_events() {
        let now = Timestamp::now();
        // The loop's now is 250 ms after the change, on the kernel's clock.
        let now_k = 1_250_000_000;
        let open = to_event(&state_change(SYN_SENT, ESTABLISHED), now, now_k, &[]).unwrap();
        assert_eq!(open.kind, SocketEventKind::Opened);
        assert_eq!(now.mono - open.at.mono, Duration::from_millis(250));
        assert_eq!(
            (open.id, open.partial, open.established),
            (42, false, Some(true))
        );
        assert_eq!(open.process.as_ref().map(|p| p.pid), Some(7));
        assert_eq!((open.closed_by, open.info), (None, None));
        for (new, by) in [
            (FIN_WAIT1, ClosedBy::Local),
            (CLOSE_WAIT, ClosedBy::Remote),
            (CLOSE, ClosedBy::Reset),
            (LAST_ACK, ClosedBy::Unknown),
        ] {
            let close = to_event(&state_change(ESTABLISHED, new), now, now_k, &[]).unwrap();
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
                (Some(10), 20, 3, Some(11))
            );
        }
        assert_eq!(
            to_event(&state_change(FIN_WAIT1, CLOSE), now, now_k, &[]),
            None
        );
        // A close whose local port the kernel had released, not matched to its open.
        let mut lost_port = state_change(ESTABLISHED, CLOSE);
        lost_port.local.set_port(0);
        assert!(to_event(&lost_port, now, now_k, &[]).unwrap().partial);
    }

    /// The cause of a close, in words: a RST we sent by its kernel name, one received, the
    /// socket error; nothing for a FIN.
    #[test]
    fn a_close_says_why_the_kernel_ended_it() {
        let reasons = [(11, "TCP_ABORT_ON_CLOSE".to_string())];
        let now = Timestamp::now();
        let of = |c: &StateChange| {
            (to_event(c, now, 2_000_000_000, &reasons).unwrap().cause).map(|k| k.to_string())
        };
        let mut c = state_change(ESTABLISHED, CLOSE);
        assert_eq!(of(&c), None);
        c.reset_sent_reason = Some(11);
        assert_eq!(of(&c).as_deref(), Some("reset sent (TCP_ABORT_ON_CLOSE)"));
        c.reset_sent_reason = Some(99);
        assert_eq!(of(&c).as_deref(), Some("reset sent (reason 99)"));
        let mut c = state_change(ESTABLISHED, CLOSE);
        c.reset_received = true;
        c.sk_err = libc::ECONNRESET;
        let cause = of(&c).unwrap();
        assert!(
            cause.starts_with("reset received; socket error: Connection reset by peer"),
            "{cause}"
        );
        let mut c = state_change(ESTABLISHED, CLOSE);
        c.sk_err = libc::ETIMEDOUT;
        assert!(of(&c).unwrap().contains("Connection timed out"));
        let timed_out = to_event(&c, now, 2_000_000_000, &reasons).unwrap().cause;
        assert!(timed_out.unwrap().timed_out());
        // An open says nothing.
        let mut o = state_change(SYN_SENT, ESTABLISHED);
        o.sk_err = libc::ETIMEDOUT;
        assert_eq!(
            to_event(&o, now, 2_000_000_000, &reasons).unwrap().cause,
            None
        );
    }
}
