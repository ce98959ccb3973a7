//! What the programs report, in Rust terms: state changes of watched sessions and their
//! health. Built from the raw records of `types`; no I/O here.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::types::{PassClock, RawEvent, RawHealth};

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`).
pub mod tcp_state {
    /// `TCP_ESTABLISHED`: the handshake is done; a watched session starts here.
    pub const ESTABLISHED: u8 = 1;
    /// `TCP_SYN_SENT`: `connect()` sent the SYN. The programs record the connecting process
    /// here but emit no event for it.
    pub const SYN_SENT: u8 = 2;
    /// `TCP_FIN_WAIT1`: we sent a FIN; from ESTABLISHED it means we closed first.
    pub const FIN_WAIT1: u8 = 4;
    /// `TCP_CLOSE`: the socket is closed (a close event; also the state of a socket that never
    /// connected).
    pub const CLOSE: u8 = 7;
    /// `TCP_CLOSE_WAIT`: the peer's FIN arrived; from ESTABLISHED it means the peer closed
    /// first.
    pub const CLOSE_WAIT: u8 = 8;
}

/// Who ended a session, as far as the kernel shows it (`enum closer` in the header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closer {
    /// Not known (`CLOSER_UNKNOWN`): no FIN, RST or socket error seen yet (always so on the
    /// change to ESTABLISHED), or a close without any of them.
    Unknown,
    /// We sent the first FIN.
    Local,
    /// The peer sent the first FIN.
    Remote,
    /// We sent a RST.
    LocalReset,
    /// The peer sent a RST.
    RemoteReset,
    /// Closed on a socket error without a RST (e.g. a retransmission timeout).
    Error,
}

impl Closer {
    fn from_raw(raw: u8) -> Self {
        match raw {
            1 => Self::Local,
            2 => Self::Remote,
            3 => Self::LocalReset,
            4 => Self::RemoteReset,
            5 => Self::Error,
            _ => Self::Unknown,
        }
    }
}

/// The counters of a session at the change (final counters on a close).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Bytes of ours the peer acknowledged (`tcp_sock.bytes_acked`: the sum of the advances of
    /// `snd_una`, RFC 4898 tcpEStatsAppHCThruOctetsAcked; ss: `bytes_acked`).
    pub bytes_acked: u64,
    /// Bytes received in sequence (`tcp_sock.bytes_received`: the sum of the advances of
    /// `rcv_nxt`, RFC 4898 tcpEStatsAppHCThruOctetsReceived; ss: `bytes_received`).
    pub bytes_received: u64,
    /// Data bytes sent, retransmissions included (`tcp_sock.bytes_sent`, RFC 4898
    /// tcpEStatsPerfHCDataOctetsOut; ss: `bytes_sent`).
    pub bytes_sent: u64,
    /// Segments retransmitted over the connection's life (`tcp_sock.total_retrans`, the
    /// kernel's count, which includes a retransmission whose transmit then failed; ss: the
    /// total in `retrans:cur/total`).
    pub total_retrans: u32,
    /// Retransmissions counted by `tcp:tcp_retransmit_skb` while watched, one per
    /// retransmitted skb (which may carry several segments); on kernels whose tracepoint
    /// carries the result (6.12+), only those that went out.
    pub retrans_events: u32,
    /// Smoothed RTT at the change, µs (`tcp_sock.srtt_us >> 3`; the kernel keeps it times 8;
    /// ss: the first number of `rtt:`); 0 before the first RTT sample.
    pub srtt_us: u32,
}

/// A state change of a watched session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    /// `bpf_ktime_get_ns()`, i.e. CLOCK_MONOTONIC.
    pub ts_ns: u64,
    /// The kernel's socket cookie: one session's identity across events and health records.
    pub sock_cookie: u64,
    /// Cookie of the socket's network namespace (`sk->__sk_common.skc_net.net->net_cookie`,
    /// the value `SO_NETNS_COOKIE` returns in that namespace).
    pub netns_cookie: u64,
    /// The state before the change, numbered as in [`tcp_state`] (the tracepoint's
    /// `oldstate`).
    pub old_state: u8,
    /// The state after the change: [`tcp_state::ESTABLISHED`], [`tcp_state::FIN_WAIT1`],
    /// [`tcp_state::CLOSE_WAIT`] or [`tcp_state::CLOSE`], the only changes reported.
    pub new_state: u8,
    /// Our address and port (`skc_rcv_saddr`/`skc_v6_rcv_saddr` and `skc_num`). An IPv4
    /// socket's address is IPv4; an IPv6 socket's stays IPv6, IPv4-mapped included.
    pub local: SocketAddr,
    /// The peer's address and port (`skc_daddr`/`skc_v6_daddr` and `skc_dport`), as `local`.
    pub remote: SocketAddr,
    /// Index of the target in the list last given to `set_targets` when the socket began to
    /// be watched (the first target, in list order, whose block and ports match it).
    pub target: u32,
    /// The process that called `connect()` (its thread-group id, as the initial PID namespace
    /// numbers it, from `bpf_get_current_pid_tgid()` at the change to SYN_SENT); `None` for a
    /// session not seen connecting (accepted or adopted).
    pub pid: Option<u32>,
    /// The name of the thread that called `connect()` (`task_struct.comm` from
    /// `bpf_get_current_comm()`, at most 15 bytes, non-UTF-8 bytes replaced); empty when
    /// `pid` is `None`.
    pub comm: String,
    /// Found by the initial scan rather than seen connecting.
    pub adopted: bool,
    /// Who ended the session, as far as the kernel showed it up to this change.
    pub closer: Closer,
    /// `sk_err` at the change (ECONNRESET, ETIMEDOUT, ...), 0 for none.
    pub sk_err: i32,
    /// A RST was received on the socket (`tcp:tcp_receive_reset`) while it was watched.
    pub reset_received: bool,
    /// The `enum sk_rst_reason` of the RST we sent, when we sent one.
    pub reset_sent_reason: Option<u32>,
    /// The session's counters at the change (final counters on a close).
    pub counters: Counters,
}

/// One raw ring-buffer record, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    State(StateChange),
    /// A RST sent after the close event went out (the kernel closes, then resets).
    ResetSent {
        sock_cookie: u64,
        reason: u32,
        closer: Closer,
    },
}

fn addr(family: u8, raw: [u8; 16], port: u16) -> SocketAddr {
    let v6 = Ipv6Addr::from(raw);
    let ip = match (family, v6.to_ipv4_mapped()) {
        (2, Some(v4)) => IpAddr::V4(v4),
        _ => IpAddr::V6(v6),
    };
    SocketAddr::new(ip, port)
}

fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

const RST_RECEIVED: u8 = 1;
const RST_SENT: u8 = 2;

impl Record {
    pub(crate) fn from_raw(e: &RawEvent) -> Option<Self> {
        match e.kind {
            1 => Some(Self::State(StateChange {
                ts_ns: e.ts_ns,
                sock_cookie: e.sock_cookie,
                netns_cookie: e.netns_cookie,
                old_state: e.oldstate,
                new_state: e.newstate,
                local: addr(e.family, e.saddr, e.sport),
                remote: addr(e.family, e.daddr, e.dport),
                target: e.target,
                pid: (e.pid != 0).then_some(e.pid),
                comm: comm(&e.comm),
                adopted: e.adopted != 0,
                closer: Closer::from_raw(e.closer),
                sk_err: e.sk_err,
                reset_received: e.rst & RST_RECEIVED != 0,
                reset_sent_reason: (e.rst & RST_SENT != 0).then_some(e.rst_reason),
                counters: Counters {
                    bytes_acked: e.bytes_acked,
                    bytes_received: e.bytes_received,
                    bytes_sent: e.bytes_sent,
                    total_retrans: e.total_retrans,
                    retrans_events: e.retrans_events,
                    srtt_us: e.srtt_us,
                },
            })),
            2 => Some(Self::ResetSent {
                sock_cookie: e.sock_cookie,
                reason: e.rst_reason,
                closer: Closer::from_raw(e.closer),
            }),
            _ => None,
        }
    }
}

/// Joins a RST sent after a close to that close event.
///
/// The kernel moves a socket to CLOSE before it sends the RST (`tcp_disconnect()`,
/// `__tcp_close()` with unread data), both in the same system call, so a close event is held
/// for `hold_ns` of kernel time before it is released, and a reset record arriving meanwhile is
/// folded into it. Time is an input: `release` takes the current CLOCK_MONOTONIC time.
#[derive(Debug, Default)]
pub(crate) struct CloseJoiner {
    ready: Vec<StateChange>,
    held: Vec<StateChange>,
}

impl CloseJoiner {
    pub fn push(&mut self, record: Record) {
        match record {
            Record::State(change) if change.new_state == tcp_state::CLOSE => self.held.push(change),
            Record::State(change) => self.ready.push(change),
            Record::ResetSent {
                sock_cookie,
                reason,
                closer,
            } => {
                if let Some(close) = self.held.iter_mut().find(|c| c.sock_cookie == sock_cookie) {
                    close.reset_sent_reason = Some(reason);
                    close.closer = closer;
                }
            }
        }
    }

    /// The closes held for at least `hold_ns` and every change before the oldest close still
    /// held, in kernel-time order: a change is never released before an earlier one, so a
    /// reader that applies each release in order sees the changes in the order they happened
    /// (an open after a held close would otherwise count both sessions at once).
    pub fn release(&mut self, now_ns: u64, hold_ns: u64) -> Vec<StateChange> {
        let (mut out, keep): (Vec<_>, Vec<_>) = self
            .held
            .drain(..)
            .partition(|c| now_ns.saturating_sub(c.ts_ns) >= hold_ns);
        self.held = keep;
        let oldest_held = self.held.iter().map(|c| c.ts_ns).min();
        let (ready, later): (Vec<_>, Vec<_>) = self
            .ready
            .drain(..)
            .partition(|c| oldest_held.is_none_or(|t| c.ts_ns < t));
        self.ready = later;
        out.extend(ready);
        out.sort_by_key(|c| c.ts_ns);
        out
    }
}

/// One watched session's health, as `tcp_get_info()` would report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The kernel's socket cookie, as in [`StateChange::sock_cookie`].
    pub sock_cookie: u64,
    /// Our address and port, as in [`StateChange::local`].
    pub local: SocketAddr,
    /// The peer's address and port, as in [`StateChange::remote`].
    pub remote: SocketAddr,
    /// The target index, as in [`StateChange::target`].
    pub target: u32,
    /// The process that called `connect()`, as in [`StateChange::pid`].
    pub pid: Option<u32>,
    /// Found by the initial scan rather than seen connecting.
    pub adopted: bool,
    /// The socket's state at the pass (`sk_state`, numbered as in [`tcp_state`]):
    /// ESTABLISHED, or a later state before CLOSE (FIN_WAIT1, CLOSE_WAIT, ...) while the
    /// session is closing.
    pub state: u8,
    /// CLOCK_MONOTONIC (`bpf_ktime_get_ns()`), ns, when it became ESTABLISHED (when it was
    /// found, if adopted).
    pub established_ns: u64,
    /// Smoothed RTT, µs (`tcp_sock.srtt_us >> 3`; `tcpi_rtt`; ss: the first number of
    /// `rtt:srtt/rttvar`).
    pub srtt_us: u32,
    /// Mean deviation of the RTT, µs (`tcp_sock.mdev_us >> 2`; `tcpi_rttvar`; ss: the second
    /// number of `rtt:srtt/rttvar`).
    pub rttvar_us: u32,
    /// The lowest RTT over the kernel's window (`tcp_min_rtt()`, ss: `minrtt`), µs; `None`
    /// before the first sample (the kernel's ~0U).
    pub min_rtt_us: Option<u32>,
    /// Segments retransmitted over the connection's life (`tcp_sock.total_retrans`;
    /// `tcpi_total_retrans`), as in [`Counters::total_retrans`].
    pub total_retrans: u32,
    /// Retransmissions counted by `tcp:tcp_retransmit_skb` while watched, as in
    /// [`Counters::retrans_events`].
    pub retrans_events: u32,
    /// Segments the kernel currently counts as lost (`lost_out`, ss: `lost`): a level, not a
    /// total.
    pub lost: u32,
    /// Bytes of ours the peer acknowledged (`tcp_sock.bytes_acked`), as in
    /// [`Counters::bytes_acked`].
    pub bytes_acked: u64,
    /// Bytes received in sequence (`tcp_sock.bytes_received`), as in
    /// [`Counters::bytes_received`].
    pub bytes_received: u64,
    /// Data bytes sent, retransmissions included (`tcp_sock.bytes_sent`), as in
    /// [`Counters::bytes_sent`].
    pub bytes_sent: u64,
    /// Of `bytes_sent`, the bytes sent again (`tcp_sock.bytes_retrans`, RFC 4898
    /// tcpEStatsPerfOctetsRetrans; ss: `bytes_retrans`); 0 on a kernel without the field
    /// (before 4.19).
    pub bytes_retrans: u64,
    /// Segments the peer reported receiving twice (`tcp_sock.dsack_dups`: each D-SACK block's
    /// length in MSS, rounded up; ss: `dsack_dups`); 0 on a kernel without the field (before
    /// 4.19).
    pub dsack_dups: u32,
    /// Segments sent and not acknowledged (`packets_out`, ss: `unacked`).
    pub unacked: u32,
    /// Bytes written and not yet acknowledged, sent or not (`write_seq - snd_una`, ss: Send-Q).
    pub send_queue_bytes: u32,
    /// Of those, the bytes not yet sent (ss: `notsent`).
    pub notsent_bytes: u32,
    /// Bytes received and not yet read (`rcv_nxt - copied_seq`, 0 if negative, as
    /// `tcp_diag_get_info()`'s `idiag_rqueue`; ss: Recv-Q).
    pub rcv_queue: u32,
    /// Milliseconds since data last arrived (`now - icsk_ack.lrcvtime`; `tcpi_last_data_recv`;
    /// ss: `lastrcv`). Like the two below, measured in jiffies and converted with the kernel's
    /// `CONFIG_HZ`, so its resolution is one jiffy (1 ms at HZ=1000, 4 ms at 250, 10 ms at 100).
    pub last_data_recv_ms: u32,
    /// Milliseconds since data was last sent (`now - tcp_sock.lsndtime`;
    /// `tcpi_last_data_sent`; ss: `lastsnd`), in whole jiffies.
    pub last_data_sent_ms: u32,
    /// Milliseconds since an ACK last arrived (`now - tcp_sock.rcv_tstamp`;
    /// `tcpi_last_ack_recv`; ss: `lastack`), in whole jiffies.
    pub last_ack_recv_ms: u32,
    /// The latest delivery-rate sample, bytes per second (`tcp_compute_delivery_rate()`; ss
    /// prints it in bits per second); 0 before the first sample, as `tcp_info` says.
    pub delivery_rate: u64,
    /// Time the connection has spent with data to send, µs: the sum of the three chrono
    /// stats (`tcp_sock.chrono_stat[]` plus the running period, as
    /// `tcp_get_info_chrono_stats()`), so it includes the two limited times below
    /// (`tcpi_busy_time`; ss: `busy`). Counted in jiffies, so in steps of one jiffy.
    pub busy_us: u64,
    /// Of `busy_us`, the time limited by the peer's receive window, µs (the
    /// `TCP_CHRONO_RWND_LIMITED` stat; `tcpi_rwnd_limited`; ss: `rwnd_limited`).
    pub rwnd_limited_us: u64,
    /// Of `busy_us`, the time limited by our send buffer, µs (the
    /// `TCP_CHRONO_SNDBUF_LIMITED` stat; `tcpi_sndbuf_limited`; ss: `sndbuf_limited`).
    pub sndbuf_limited_us: u64,
    /// Congestion window, segments (`tcp_sock.snd_cwnd`; `tcpi_snd_cwnd`; ss: `cwnd`).
    pub snd_cwnd: u32,
    /// The peer's advertised receive window, bytes, scale applied (`tcp_sock.snd_wnd`;
    /// `tcpi_snd_wnd`; ss: `snd_wnd`).
    pub snd_wnd: u32,
}

impl Health {
    /// A record as `tcp_get_info()` would report it at the pass whose clock is `clock`: the
    /// "ms since" fields are `jiffies_to_msecs(now - stamp)` and the chrono times
    /// `jiffies * (USEC_PER_SEC / HZ)`, as there. With no `CONFIG_HZ` known they are 0, as
    /// the kernel-side conversion gave before.
    pub(crate) fn from_raw(h: &RawHealth, clock: PassClock) -> Self {
        let hz = u64::from(clock.hz);
        let since_ms = |stamp: u32| match hz {
            0 => 0,
            hz => (u64::from(clock.jiffies.wrapping_sub(stamp)) * 1000).div_ceil(hz) as u32,
        };
        // tcp_get_info_chrono_stats(): the running span counts up to the pass.
        let chrono = |i: usize| {
            let mut j = u64::from(h.chrono_stat[i]);
            if usize::from(h.chrono_type) == i + 1 {
                j += u64::from(clock.jiffies.wrapping_sub(h.chrono_start));
            }
            j * 1_000_000u64.checked_div(hz).unwrap_or(0)
        };
        Self {
            sock_cookie: h.sock_cookie,
            local: addr(h.family, h.saddr, h.sport),
            remote: addr(h.family, h.daddr, h.dport),
            target: h.target,
            pid: (h.pid != 0).then_some(h.pid),
            adopted: h.adopted != 0,
            state: h.state,
            established_ns: h.established_ns,
            srtt_us: h.srtt_us,
            rttvar_us: h.rttvar_us,
            min_rtt_us: (h.min_rtt_us != u32::MAX).then_some(h.min_rtt_us),
            total_retrans: h.total_retrans,
            retrans_events: h.retrans_events,
            lost: h.lost,
            bytes_acked: h.bytes_acked,
            bytes_received: h.bytes_received,
            bytes_sent: h.bytes_sent,
            bytes_retrans: h.bytes_retrans,
            dsack_dups: h.dsack_dups,
            unacked: h.unacked,
            send_queue_bytes: h.send_queue_bytes,
            notsent_bytes: h.notsent_bytes,
            rcv_queue: h.rcv_queue,
            last_data_recv_ms: since_ms(h.lrcvtime),
            last_data_sent_ms: since_ms(h.lsndtime),
            last_ack_recv_ms: since_ms(h.rcv_tstamp),
            delivery_rate: h.delivery_rate,
            busy_us: chrono(0) + chrono(1) + chrono(2),
            rwnd_limited_us: chrono(1),
            sndbuf_limited_us: chrono(2),
            snd_cwnd: h.snd_cwnd,
            snd_wnd: h.snd_wnd,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(cookie: u64, ts_ns: u64) -> StateChange {
        let any: SocketAddr = "127.0.0.1:1".parse().unwrap();
        StateChange {
            ts_ns,
            sock_cookie: cookie,
            netns_cookie: 1,
            old_state: tcp_state::ESTABLISHED,
            new_state: tcp_state::CLOSE,
            local: any,
            remote: any,
            target: 0,
            pid: None,
            comm: String::new(),
            adopted: false,
            closer: Closer::Unknown,
            sk_err: 0,
            reset_received: false,
            reset_sent_reason: None,
            counters: Counters::default(),
        }
    }

    #[test]
    fn a_reset_sent_after_the_close_joins_it() {
        let mut j = CloseJoiner::default();
        j.push(Record::State(close(7, 1_000)));
        j.push(Record::State(close(8, 1_000)));
        j.push(Record::ResetSent {
            sock_cookie: 7,
            reason: 12,
            closer: Closer::LocalReset,
        });
        assert!(
            j.release(1_500, 1_000).is_empty(),
            "held until hold_ns passed"
        );
        let out = j.release(2_000, 1_000);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].reset_sent_reason, Some(12));
        assert_eq!(out[0].closer, Closer::LocalReset);
        assert_eq!(out[1].reset_sent_reason, None);
    }

    #[test]
    fn no_min_rtt_sample_is_none_and_the_new_fields_come_through() {
        let mut raw = RawHealth {
            min_rtt_us: u32::MAX,
            lost: 3,
            dsack_dups: 4,
            send_queue_bytes: 5,
            bytes_retrans: 7,
            delivery_rate: 8,
            ..RawHealth::default()
        };
        let clock = PassClock {
            jiffies: 0,
            hz: 250,
        };
        let h = Health::from_raw(&raw, clock);
        assert_eq!(h.min_rtt_us, None);
        assert_eq!(
            (
                h.lost,
                h.dsack_dups,
                h.send_queue_bytes,
                h.bytes_retrans,
                h.delivery_rate
            ),
            (3, 4, 5, 7, 8)
        );
        raw.min_rtt_us = 11;
        assert_eq!(Health::from_raw(&raw, clock).min_rtt_us, Some(11));
    }

    /// The times as tcp_get_info() computes them from the same jiffies: "since" fields in ms
    /// (rounded up where HZ does not divide 1000, as jiffies_to_msecs()), the running chrono
    /// span counted up to the pass, a wrapped jiffies counter included.
    #[test]
    fn jiffies_become_times_as_the_kernel_computes_them() {
        let raw = RawHealth {
            lrcvtime: 1_000,
            lsndtime: 1_100,
            rcv_tstamp: u32::MAX - 9, // 10 jiffies before the counter wrapped
            chrono_stat: [100, 20, 3],
            chrono_type: 2, // rwnd-limited, running since 1_150
            chrono_start: 1_150,
            ..RawHealth::default()
        };
        let at = |jiffies, hz| Health::from_raw(&raw, PassClock { jiffies, hz });
        let h = at(1_250, 250);
        assert_eq!(
            (h.last_data_recv_ms, h.last_data_sent_ms),
            (250 * 4, 150 * 4)
        );
        assert_eq!(at(5, 250).last_ack_recv_ms, 15 * 4);
        assert_eq!(h.rwnd_limited_us, (20 + 100) * 4_000);
        assert_eq!(h.sndbuf_limited_us, 3 * 4_000);
        assert_eq!(h.busy_us, (100 + 120 + 3) * 4_000);
        // HZ = 300: jiffies_to_msecs() rounds up; the chrono times use USEC_PER_SEC / HZ.
        let h = at(1_001, 300);
        assert_eq!(h.last_data_recv_ms, 4); // 1 jiffy = 3.33 ms
        assert_eq!(h.sndbuf_limited_us, 3 * 3_333);
        // No CONFIG_HZ known: no times, as before.
        let h = at(1_250, 0);
        assert_eq!((h.last_data_recv_ms, h.busy_us), (0, 0));
    }

    #[test]
    fn nothing_is_released_before_an_earlier_close_still_held() {
        let mut j = CloseJoiner::default();
        let open = |cookie, ts_ns| StateChange {
            old_state: tcp_state::SYN_SENT,
            new_state: tcp_state::ESTABLISHED,
            ..close(cookie, ts_ns)
        };
        j.push(Record::State(open(1, 900)));
        j.push(Record::State(close(2, 1_000)));
        j.push(Record::State(open(3, 1_100)));
        let first = j.release(1_200, 1_000);
        assert_eq!(
            first.iter().map(|c| c.sock_cookie).collect::<Vec<_>>(),
            [1],
            "the open after the held close waits for it"
        );
        let rest = j.release(2_000, 1_000);
        assert_eq!(
            rest.iter().map(|c| c.sock_cookie).collect::<Vec<_>>(),
            [2, 3]
        );
    }

    #[test]
    fn ipv4_addresses_come_back_as_ipv4() {
        let raw: [u8; 16] = Ipv6Addr::from([0, 0, 0, 0, 0, 0xffff, 0x7f00, 1]).octets();
        assert_eq!(addr(2, raw, 80).to_string(), "127.0.0.1:80");
        assert_eq!(addr(10, raw, 80).to_string(), "[::ffff:127.0.0.1]:80");
    }
}
