//! One socket as a source saw it: its identity, state and health.

use std::net::SocketAddr;

use crate::TcpHealth;

/// One TCP socket as a source saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketEntry {
    /// The local address and port.
    pub local: SocketAddr,
    /// The peer's address and port.
    pub remote: SocketAddr,
    /// The socket's TCP state.
    pub state: TcpState,
    /// What tells two sockets with the same 4-tuple apart: the kernel's socket cookie (netlink)
    /// or the socket inode (procfs); 0 where the platform gives neither. A 4-tuple that is
    /// reused by a new socket therefore shows up as a new connection.
    pub id: u64,
    /// The kernel's `tcp_info` for the socket: netlink (in its dump) and eBPF (its in-kernel
    /// health pass) only (procfs and netstat cannot tell; `None` there, never zeros).
    pub health: Option<TcpHealth>,
}

/// TCP states as Linux numbers them (`include/net/tcp_states.h`). Only `Established` counts as
/// an active connection; sources ask for nothing else, the others exist to name what they see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TcpState {
    /// `TCP_ESTABLISHED` (1): a session.
    Established,
    /// `TCP_SYN_SENT` (2): connecting.
    SynSent,
    /// `TCP_SYN_RECV` (3): a connection being accepted.
    SynRecv,
    /// `TCP_FIN_WAIT1` (4): we closed first.
    FinWait1,
    /// `TCP_FIN_WAIT2` (5): our FIN acknowledged, waiting for the peer's.
    FinWait2,
    /// `TCP_TIME_WAIT` (6).
    TimeWait,
    /// `TCP_CLOSE` (7): closed (a reset, or the end of a close).
    Close,
    /// `TCP_CLOSE_WAIT` (8): the peer closed first.
    CloseWait,
    /// `TCP_LAST_ACK` (9).
    LastAck,
    /// `TCP_LISTEN` (10).
    Listen,
    /// `TCP_CLOSING` (11): both sides closed at once.
    Closing,
    /// `TCP_NEW_SYN_RECV` (12): a request socket.
    NewSynRecv,
    /// A number this list does not know (a newer kernel's state).
    Unknown,
}

impl TcpState {
    /// The state Linux numbers `n`; [`TcpState::Unknown`] for a number not listed.
    pub fn from_linux(n: u8) -> TcpState {
        match n {
            1 => TcpState::Established,
            2 => TcpState::SynSent,
            3 => TcpState::SynRecv,
            4 => TcpState::FinWait1,
            5 => TcpState::FinWait2,
            6 => TcpState::TimeWait,
            7 => TcpState::Close,
            8 => TcpState::CloseWait,
            9 => TcpState::LastAck,
            10 => TcpState::Listen,
            11 => TcpState::Closing,
            12 => TcpState::NewSynRecv,
            _ => TcpState::Unknown,
        }
    }

    /// The state's name as `ss` and the kernel's headers write it (`ESTABLISHED`).
    pub fn as_str(&self) -> &'static str {
        match self {
            TcpState::Established => "ESTABLISHED",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::FinWait1 => "FIN_WAIT1",
            TcpState::FinWait2 => "FIN_WAIT2",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
            TcpState::NewSynRecv => "NEW_SYN_RECV",
            TcpState::Unknown => "UNKNOWN",
        }
    }
}

/// Who ended a session, from the state it left ESTABLISHED for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClosedBy {
    /// We sent FIN first (ESTABLISHED -> FIN_WAIT1).
    Local,
    /// The peer did (ESTABLISHED -> CLOSE_WAIT).
    Remote,
    /// Reset, from either side (ESTABLISHED -> CLOSE).
    Reset,
    /// Not known (what polling alone sees).
    Unknown,
}

impl ClosedBy {
    /// Every value, in the order the metrics list them.
    pub const ALL: [ClosedBy; 4] = [
        ClosedBy::Local,
        ClosedBy::Remote,
        ClosedBy::Reset,
        ClosedBy::Unknown,
    ];

    /// The value of the `by` attribute.
    pub fn as_str(&self) -> &'static str {
        match self {
            ClosedBy::Local => "local",
            ClosedBy::Remote => "remote",
            ClosedBy::Reset => "reset",
            ClosedBy::Unknown => "unknown",
        }
    }
}

/// The process that made a connection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Process {
    /// Its process id (the thread group id).
    pub pid: u32,
    /// The command (the calling thread's name, at most 15 bytes). Shared: the loop hands a
    /// session's process to its published state every poll, and a clone must not allocate.
    pub comm: std::sync::Arc<str>,
}
