//! What a source can do, as a value it reports: the layers above ask this, never which source
//! runs, so that a new source changes no branch outside itself.

/// What a source can do. Each source states its own (`Source::capabilities` in the kernel
/// crate); the sidecar decides from it which instruments to make, what to subscribe to and
/// what `/health` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// How opens and closes are learnt besides the polls' snapshots.
    pub events: EventFeed,
    /// Whether each session's `tcp_info` comes with the sockets, and how.
    pub health: HealthFeed,
    /// How the process that made a session is found.
    pub process: ProcessFeed,
    /// Whether closes say who hung up ([`crate::ClosedBy`] other than `Unknown`).
    pub closed_by: bool,
    /// How a socket missing from a poll is confirmed before it is closed.
    pub confirm: Confirmation,
    /// Whether the source takes full dumps to reconcile a view it keeps from events (counted
    /// as reconciles).
    pub reconciles: bool,
}

impl Capabilities {
    /// Snapshots only: no events, no health, no process, unconfirmed closes (a source that
    /// can do nothing more than list sockets, such as netstat).
    pub const SNAPSHOTS_ONLY: Capabilities = Capabilities {
        events: EventFeed::None,
        health: HealthFeed::None,
        process: ProcessFeed::None,
        closed_by: false,
        confirm: Confirmation::None,
        reconciles: false,
    };
}

/// How a source learns of opens and closes besides its snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventFeed {
    /// It does not: a close is known to within one poll.
    None,
    /// The source sees them itself and hands them over after each poll (`take_events`), each
    /// stamped with when it happened.
    FromSource,
    /// The kernel's socket-destroy notifications can be subscribed to beside it: they agree
    /// with its snapshots on socket identity (the cookie).
    DestroyNotifications,
}

/// Whether and how a source reads each session's `tcp_info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthFeed {
    /// It cannot ([`crate::SocketEntry::health`] is always `None`).
    None,
    /// With every poll (in the same dump).
    InPoll,
    /// By lookups apart from the poll, which may be spaced out (`poll.health_interval`).
    ByLookup,
}

impl HealthFeed {
    /// Whether the source gives session health at all.
    pub fn available(self) -> bool {
        self != HealthFeed::None
    }
}

/// How the process that made a session is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessFeed {
    /// It is not.
    None,
    /// The source knows each socket's inode, which a walk of `/proc/*/fd` turns into its owner
    /// (`poll.process_lookup`).
    ByInode,
    /// The source's own open events name it.
    FromEvents,
}

/// How a socket missing from a poll is confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmation {
    /// It is not: missing is closed.
    None,
    /// An exact `sock_diag` lookup by the socket's cookie (its id).
    ByCookie,
    /// An exact `sock_diag` lookup by the socket's inode (its id).
    ByInode,
}
