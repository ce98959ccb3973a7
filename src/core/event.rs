//! A socket's transition, as an event-seeing source hands it to the loop: every source, eBPF
//! included, speaks this one vocabulary, so the loop knows no source's internals.

use std::net::SocketAddr;

use crate::{ClosedBy, Process, Timestamp};

/// Counters from a socket's final `tcp_info`, as a close event reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpCounters {
    /// Sequence space sent and acknowledged (`tcpi_bytes_acked`: data, SYN and FIN), where
    /// the source reads it (the destroy notification does; the eBPF program does not).
    pub bytes_acked: Option<u64>,
    /// Sequence space received (`tcpi_bytes_received`: data and FIN).
    pub bytes_received: u64,
    /// Segments retransmitted (`tcpi_total_retrans`).
    pub retransmits: u32,
    /// Data bytes sent, retransmissions included (`tcpi_bytes_sent`; Linux 4.19+).
    pub bytes_sent: Option<u64>,
}

/// A socket's transition, from an event-driven source (kernel socket-destroy notifications, an
/// eBPF program).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketEvent {
    /// When it happened (or, where the source cannot tell, when it was read).
    pub at: Timestamp,
    /// Opened or closed.
    pub kind: SocketEventKind,
    /// The kernel's socket cookie: what snapshots and events agree on.
    pub id: u64,
    /// The local address and port.
    pub local: SocketAddr,
    /// The peer's address and port.
    pub remote: SocketAddr,
    /// The 4-tuple is incomplete: the remote port (0 here) and perhaps the local address were
    /// cleared before the event was sent (a socket our side aborted). Only the cookie, the
    /// remote address and the local port can be relied on.
    pub partial: bool,
    /// Whether the socket ever reached ESTABLISHED, where the source can tell (`None`: it
    /// cannot, and a close of an unknown socket counts as a session).
    pub established: Option<bool>,
    /// The socket's final counters, when a close event carried them.
    pub info: Option<TcpCounters>,
    /// Who hung up, on a close, where the source saw the state the socket left ESTABLISHED
    /// for (`None`: it cannot tell).
    pub closed_by: Option<ClosedBy>,
    /// The process that made the connection, on an open, where the source saw it.
    pub process: Option<Process>,
    /// Why the kernel ended it, on a close, where the source can tell (eBPF mode: the reason
    /// of a RST we sent, a RST received, the socket error such as a retransmission timeout;
    /// `None`: nothing beyond who hung up).
    pub cause: Option<KernelCause>,
}

/// Why the kernel ended a socket, as far as it says: a RST we sent (and the kernel's reason for
/// it), a RST received, the socket's error at the close. Shown in words (`Display`): `reset sent
/// (TCP_ABORT_ON_CLOSE)`, `reset received; socket error: Connection reset by peer`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelCause {
    /// We sent a RST: the kernel's reason, by its `enum sk_rst_reason` name (or `reason N`).
    pub reset_sent: Option<String>,
    /// A RST was received.
    pub reset_received: bool,
    /// The socket's error at the close (`errno`: `ETIMEDOUT` for a retransmission or keep-alive
    /// timeout, `ECONNRESET` for a reset).
    pub socket_error: Option<i32>,
}

impl KernelCause {
    /// Whether the socket timed out (`ETIMEDOUT`: retransmissions, keep-alives or
    /// `TCP_USER_TIMEOUT` gave up).
    pub fn timed_out(&self) -> bool {
        self.socket_error == Some(ETIMEDOUT)
    }
}

/// `ETIMEDOUT` on Linux.
const ETIMEDOUT: i32 = 110;

impl std::fmt::Display for KernelCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut sep = "";
        if let Some(r) = &self.reset_sent {
            write!(f, "reset sent ({r})")?;
            sep = "; ";
        }
        if self.reset_received {
            write!(f, "{sep}reset received")?;
            sep = "; ";
        }
        if let Some(e) = self.socket_error {
            let err = std::io::Error::from_raw_os_error(e);
            write!(f, "{sep}socket error: {err}")?;
        }
        Ok(())
    }
}

/// What happened to the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketEventKind {
    /// The socket reached ESTABLISHED.
    Opened,
    /// The socket is gone.
    Closed,
}
