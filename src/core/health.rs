//! A session's TCP health: the fields of the kernel's `struct tcp_info` that fix-monitor keeps.
//! Reading them is the kernel crate's job (`fix_monitor_kernel::tcp_info`); this is the value.

use std::time::Duration;

/// The fields of one `tcp_info` that fix-monitor keeps, in the kernel's units (integers, so
/// that the type stays `Copy`, `Eq` and small inside every [`crate::SocketEntry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpHealth {
    /// Smoothed round-trip time, µs; 0 until the kernel has a sample.
    pub rtt_us: u32,
    /// Its mean deviation, µs.
    pub rtt_var_us: u32,
    /// The lowest RTT seen (over the kernel's window), µs: the path's floor, against which a
    /// high `rtt_us` means queueing. Linux 4.6+, and only after a sample.
    pub min_rtt_us: Option<u32>,
    /// Segments retransmitted over the connection's life (`tcpi_total_retrans`).
    pub retransmits: u32,
    /// Segments the kernel currently counts as lost (a level, not a total).
    pub lost: u32,
    /// Bytes written by the application and not yet acknowledged by the peer, sent or not:
    /// the send queue (`ss`'s Send-Q).
    pub send_queue: u32,
    /// Of `send_queue`, the bytes not yet sent (Linux 4.6+). A peer that stops reading closes
    /// its window and this part grows.
    pub not_sent: Option<u32>,
    /// Bytes received and not yet read by the application (`ss`'s Recv-Q).
    pub recv_queue: u32,
    /// Bytes the peer acknowledged (Linux 4.1+; on the connecting side the SYN counts one).
    pub bytes_acked: Option<u64>,
    /// Data bytes received (Linux 4.1+).
    pub bytes_received: Option<u64>,
    /// Data bytes sent, retransmissions included (Linux 4.19+).
    pub bytes_sent: Option<u64>,
    /// Of `bytes_sent`, the bytes sent again (Linux 4.19+).
    pub bytes_retrans: Option<u64>,
    /// Segments the peer reported receiving twice (D-SACK, Linux 4.19+): retransmissions that
    /// were not needed, such as a tail-loss probe sent while the ACK was only late.
    pub dsack_dups: Option<u32>,
    /// Time since data last arrived, ms (from the connection's start if none ever did).
    pub last_data_recv_ms: u32,
    /// Time since data was last sent, ms.
    pub last_data_sent_ms: u32,
    /// Time since an ACK last arrived, ms.
    pub last_ack_recv_ms: u32,
    /// The kernel's latest delivery-rate sample, bytes per second (Linux 4.9+).
    pub delivery_rate: Option<u64>,
    /// Time the connection spent limited by the peer's receive window, µs (Linux 4.10+).
    pub rwnd_limited_us: Option<u64>,
    /// Time it spent limited by our send buffer, µs (Linux 4.10+).
    pub sndbuf_limited_us: Option<u64>,
}

impl TcpHealth {
    /// The smoothed RTT, or `None` before the first sample.
    pub fn rtt(&self) -> Option<Duration> {
        (self.rtt_us != 0).then(|| Duration::from_micros(self.rtt_us.into()))
    }

    /// Time since data was last received.
    pub fn receive_silence(&self) -> Duration {
        Duration::from_millis(self.last_data_recv_ms.into())
    }

    /// Bytes sent and not yet acknowledged: the send queue less its unsent part, where the
    /// kernel tells that part.
    pub fn unacked_bytes(&self) -> Option<u32> {
        self.not_sent.map(|n| self.send_queue.saturating_sub(n))
    }
}
