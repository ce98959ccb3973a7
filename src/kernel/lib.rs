//! fix-monitor's sources: the kernel's view of this host's TCP sockets, and nothing of what
//! is done with it.
//!
//! It depends on `fix-monitor-core` only (the shared vocabulary: [`SocketEntry`],
//! [`SocketEvent`], [`Capabilities`], targets); the sidecar (`fix-monitor`: loop, tracker,
//! instruments, export) sits above it and cannot be imported from here.
//!
//! A [`Source`] answers one question per poll: which ESTABLISHED TCP sockets on this host match
//! at least one configured target right now? Sources that see more (opens and closes as they
//! happen, who hung up, the process) hand it over in the same vocabulary
//! ([`Source::take_events`]), and every source says what it can do
//! ([`Source::capabilities`]): the layers above ask that, never which source runs.
//!
//! # Public API
//! - [`Source`], [`open_with`] and [`open_oneshot`] (by [`SourceKind`], `Auto` taking the first
//!   that works), [`SourceError`], [`PollNews`], [`EventCounts`].
//! - [`netlink`]: `sock_diag` (`inet_diag`) dumps, filtered in the kernel by the bytecode that
//!   [`bytecode`] compiles from the targets (with [`bytecode::mirror`], the kernel's audit and
//!   interpreter in user space, for tests). The fast path, and the default where it works.
//! - [`procfs`]: `/proc/net/tcp` and `/proc/net/tcp6`, matched in user space. The fallback when
//!   netlink is unavailable (some sandboxes forbid it). Parsed by hand into reused buffers (the
//!   procfs crate allocates per row and rejects a whole table on a state number it does not
//!   know, such as newer kernels' TCP_BOUND_INACTIVE); the crate is the tests' reference parser.
//! - the netstat source: the netstat2 crate, for macOS and Windows, where the original tool
//!   also ran (opened through [`open_with`]).
//! - [`ebpf`]: the programs of `fix-monitor-ebpf` (C with CO-RE, loaded by libbpf-rs): exact
//!   opens and closes from the kernel's state changes, who hung up, the process, and each
//!   watched session's health read in the kernel.
//! - [`destroy`]: the kernel's socket-destroy notifications (a netlink subscription with a
//!   classic-BPF filter), read on a thread of their own into [`events::EventBatch`]es.
//! - [`cbpf`]: classic BPF (instruction, opcodes, an assembler with labels, an interpreter for
//!   tests, attaching to a socket): the toolkit of the destroy filter and of the sidecar's
//!   packet-capture filter.
//! - [`confirm`]: exact `sock_diag` lookups of a socket a poll no longer lists.
//! - [`proc_owner`]: the process owning a socket inode, from `/proc/*/fd`.
//! - [`events`]: what an event reader hands the loop, and the sidecar's [`events::Mode`].
//!
//! Private: the `tcp_info` reader (its value is core's [`TcpHealth`]) and the destroy filter's
//! compiler.
//!
//! Each source is split into I/O (fetching bytes) and pure parsing, tested on fixtures
//! (`tests/fixtures` at the top of the repository).

use fix_monitor_core::target::Targets;
pub use fix_monitor_core::{
    Capabilities, Confirmation, EventFeed, HealthFeed, ProcessFeed, SocketEvent, Timestamp,
};

#[cfg(target_os = "linux")]
pub mod bytecode;
pub mod cbpf;
#[cfg(target_os = "linux")]
pub mod confirm;
#[cfg(target_os = "linux")]
pub mod destroy;
#[cfg(target_os = "linux")]
mod destroy_filter;
#[cfg(target_os = "linux")]
pub mod ebpf;
pub mod events;
#[cfg(target_os = "linux")]
pub mod netlink;
mod netstat;
#[cfg(target_os = "linux")]
pub mod proc_owner;
#[cfg(target_os = "linux")]
pub mod procfs;
mod tcp_info;

pub use fix_monitor_core::{ClosedBy, KernelCause, Process, SocketEntry, TcpHealth, TcpState};

/// What a poll brought, for the loop to skip what did not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollNews {
    /// The set of sessions may differ from the last poll's (or transitions were read).
    pub sessions_changed: bool,
    /// [`SocketEntry::health`] was read in this poll (not handed on from an earlier one): its
    /// counters and RTT are new samples.
    pub health_fresh: bool,
}

impl PollNews {
    /// Everything may have changed: what a polling source always says.
    pub const EVERYTHING: PollNews = PollNews {
        sessions_changed: true,
        health_fresh: true,
    };
}

/// Totals an event-seeing source keeps (see [`Source::event_counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventCounts {
    /// Records the kernel dropped before the source read them (a full ring buffer).
    pub lost: u64,
    /// Full dumps taken to reconcile (the first included).
    pub reconciles: u64,
}

/// Which source to use; `Auto` tries eBPF, then netlink, then procfs, then netstat2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// The first that works, in the order eBPF, netlink, procfs, netstat.
    Auto,
    /// Linux `sock_diag` dumps, filtered in the kernel.
    Netlink,
    /// `/proc/net/tcp` and `/proc/net/tcp6`.
    Procfs,
    /// The netstat2 crate (macOS, Windows).
    Netstat,
    /// The `sock:inet_sock_set_state` tracepoint (`ebpf`), reconciled with netlink dumps.
    Ebpf,
}

impl SourceKind {
    /// The values the configuration takes, for its error messages.
    pub const ALLOWED: &'static str = "auto, ebpf, netlink, procfs, netstat";

    /// The name as the configuration and the metrics write it.
    pub fn as_str(&self) -> &'static str {
        match self {
            SourceKind::Auto => "auto",
            SourceKind::Netlink => "netlink",
            SourceKind::Procfs => "procfs",
            SourceKind::Netstat => "netstat",
            SourceKind::Ebpf => "ebpf",
        }
    }
}

/// Why a source could not be opened or polled.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A system call failed; `context` says what it was doing.
    #[error("{context}: {source}")]
    Io {
        /// What was being done ("sending a sock_diag lookup").
        context: &'static str,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel's answer did not parse.
    #[error("malformed {what}: {detail}")]
    Parse {
        /// What was being read.
        what: &'static str,
        /// What was wrong with it.
        detail: String,
    },
    /// The eBPF source could not start or read its programs (a capability, a kernel feature,
    /// the verifier), named in the message.
    #[cfg(target_os = "linux")]
    #[error(transparent)]
    Ebpf(#[from] fix_monitor_ebpf::Error),
    /// The process lacks the capabilities the eBPF programs need (checked before loading).
    #[error("the eBPF source needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN, or root); this process lacks {}", .0.join(" and "))]
    EbpfCapabilities(Vec<&'static str>),
    /// The source does not exist on this platform.
    #[error("the {0} source is not available on this platform")]
    Unsupported(&'static str),
}

impl SourceError {
    /// Wraps an I/O error with what was being done (for `map_err`).
    pub fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> SourceError {
        move |source| SourceError::Io { context, source }
    }
}

/// A way to list this host's matching ESTABLISHED TCP sockets.
///
/// Every source [`open_with`] hands out is wrapped in `Chosen` (which adds why it was chosen):
/// a method added here must be forwarded there too, or the wrapper's default answers instead.
pub trait Source: Send {
    /// The kind actually in use (never `Auto`): a name, for display and logs. What the source
    /// can do is [`Source::capabilities`]; the layers above ask that, not the kind.
    fn kind(&self) -> SourceKind;

    /// What this source can do.
    fn capabilities(&self) -> Capabilities;

    /// Replaces `out` with the ESTABLISHED sockets that match at least one target. `out` is
    /// reused across polls so that a steady state allocates nothing.
    fn poll(&mut self, out: &mut Vec<SocketEntry>) -> Result<(), SourceError>;

    /// Appends to `out` the opens and closes the source saw since the last call, in the order
    /// they happened, for sources that see them (eBPF); polling sources see none. Read after
    /// [`Source::poll`], whose snapshot already reflects them. `now` is the loop's clock as it
    /// calls: the source stamps each event on it (the loop's clock is the one time base).
    fn take_events(&mut self, _now: Timestamp, _out: &mut Vec<SocketEvent>) {}

    /// What the last successful poll brought. Polling sources read everything every time;
    /// the eBPF source can tell when nothing changed, and the loop then skips the work.
    fn news(&self) -> PollNews {
        PollNews::EVERYTHING
    }

    /// What an event-seeing source (eBPF) counted so far: transitions its ring buffer dropped,
    /// and full dumps it took to reconcile. Polling sources count none.
    fn event_counts(&self) -> EventCounts {
        EventCounts::default()
    }

    /// `poll.health_interval`: sources that read `tcp_info` apart from the poll (eBPF) look
    /// every session up at most this often and hand the last answers on in between (`None`:
    /// every poll). Sources that read it with the poll (netlink) ignore it.
    fn set_health_interval(&mut self, _every: Option<std::time::Duration>) {}

    /// Asks the source to keep each polled socket's inode, for [`Source::inode`]
    /// (`poll.process_lookup`); sources that always know it, or never do, ignore it.
    fn keep_inodes(&mut self) {}

    /// The socket inode of the socket that `id` (a [`SocketEntry::id`]) names in the last
    /// poll, where the source knows it: netlink after [`Source::keep_inodes`], procfs.
    fn inode(&self, _id: u64) -> Option<u64> {
        None
    }

    /// Why this source runs: configured, or what `auto` passed over and why; for the eBPF
    /// source also how its health pass walks the sessions. `/health` and the log say it.
    fn why_chosen(&self) -> Option<String> {
        None
    }

    /// What the source can say about how it works here beyond its kind (the eBPF source: its
    /// health pass), for [`Source::why_chosen`].
    fn detail(&self) -> Option<String> {
        None
    }

    /// Takes new targets in place (a reload), keeping what it knows of the sessions of the
    /// targets that stay: `Ok(true)`. `Ok(false)` where it cannot; the caller then opens a new
    /// source for them. An error leaves the source on the targets it had.
    fn retarget(&mut self, _targets: &Targets) -> Result<bool, SourceError> {
        Ok(false)
    }
}

/// A source as [`open_with`] hands it out: the source itself, and why it was chosen.
struct Chosen {
    inner: Box<dyn Source>,
    why: String,
}

impl Chosen {
    fn boxed(inner: Box<dyn Source>, why: String) -> Box<dyn Source> {
        let why = match inner.detail() {
            Some(detail) => format!("{why}; {detail}"),
            None => why,
        };
        Box::new(Chosen { inner, why })
    }
}

impl Source for Chosen {
    fn kind(&self) -> SourceKind {
        self.inner.kind()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn poll(&mut self, out: &mut Vec<SocketEntry>) -> Result<(), SourceError> {
        self.inner.poll(out)
    }
    fn take_events(&mut self, now: Timestamp, out: &mut Vec<SocketEvent>) {
        self.inner.take_events(now, out)
    }
    fn news(&self) -> PollNews {
        self.inner.news()
    }
    fn event_counts(&self) -> EventCounts {
        self.inner.event_counts()
    }
    fn set_health_interval(&mut self, every: Option<std::time::Duration>) {
        self.inner.set_health_interval(every)
    }
    fn keep_inodes(&mut self) {
        self.inner.keep_inodes()
    }
    fn inode(&self, id: u64) -> Option<u64> {
        self.inner.inode(id)
    }
    fn why_chosen(&self) -> Option<String> {
        Some(self.why.clone())
    }
    fn detail(&self) -> Option<String> {
        self.inner.detail()
    }
    fn retarget(&mut self, targets: &Targets) -> Result<bool, SourceError> {
        self.inner.retarget(targets)
    }
}

/// [`open_with`] for one poll (`fix-monitor snapshot`): `Auto` does not try eBPF there, since
/// loading a program to take one dump would only add to its cost (the eBPF source's first
/// poll is that same netlink dump).
pub fn open_oneshot(
    kind: SourceKind,
    targets: &Targets,
    reconcile_interval: std::time::Duration,
) -> Result<Box<dyn Source>, SourceError> {
    match kind {
        SourceKind::Auto => open_auto(targets, false, reconcile_interval),
        k => open_with(k, targets, reconcile_interval),
    }
}

/// Opens the source `kind` asks for. `Auto` takes the first that works, in the order eBPF
/// (where the program loads: root, or CAP_BPF and CAP_PERFMON), netlink, procfs, netstat, and
/// says in the log which one it took and why it passed over the others (never an error while
/// one works): see README, "eBPF mode". `reconcile_interval` is the eBPF source's time between
/// two reconciles.
pub fn open_with(
    kind: SourceKind,
    targets: &Targets,
    reconcile_interval: std::time::Duration,
) -> Result<Box<dyn Source>, SourceError> {
    match kind {
        SourceKind::Auto => open_auto(targets, true, reconcile_interval),
        k => Ok(Chosen::boxed(
            open_kind(k, targets, reconcile_interval)?,
            format!("configured (poll.source = \"{}\")", k.as_str()),
        )),
    }
}

/// One source by its kind, unwrapped (`Auto` resolved by [`open_auto`]).
fn open_kind(
    kind: SourceKind,
    targets: &Targets,
    reconcile_interval: std::time::Duration,
) -> Result<Box<dyn Source>, SourceError> {
    let _ = reconcile_interval; // only the eBPF source (Linux) uses it
    match kind {
        #[cfg(target_os = "linux")]
        SourceKind::Netlink => Ok(Box::new(netlink::NetlinkSource::open(targets)?)),
        #[cfg(target_os = "linux")]
        SourceKind::Procfs => Ok(Box::new(procfs::ProcfsSource::new(targets)?)),
        #[cfg(not(target_os = "linux"))]
        SourceKind::Netlink => Err(SourceError::Unsupported("netlink")),
        #[cfg(not(target_os = "linux"))]
        SourceKind::Procfs => Err(SourceError::Unsupported("procfs")),
        SourceKind::Netstat => Ok(Box::new(netstat::NetstatSource::new(targets))),
        #[cfg(target_os = "linux")]
        SourceKind::Ebpf => Ok(Box::new(ebpf::EbpfSource::open(
            targets,
            reconcile_interval,
        )?)),
        #[cfg(not(target_os = "linux"))]
        SourceKind::Ebpf => Err(SourceError::Unsupported("ebpf")),
        SourceKind::Auto => open_auto(targets, true, reconcile_interval),
    }
}

/// `Auto`: eBPF first if `with_ebpf`, then netlink, procfs, netstat.
fn open_auto(
    targets: &Targets,
    with_ebpf: bool,
    reconcile_interval: std::time::Duration,
) -> Result<Box<dyn Source>, SourceError> {
    let mut last = None;
    // Why the sources before the one taken were passed over, for its log line.
    let mut passed_over: Vec<String> = Vec::new();
    let order = [
        SourceKind::Ebpf,
        SourceKind::Netlink,
        SourceKind::Procfs,
        SourceKind::Netstat,
    ];
    for k in order {
        if k == SourceKind::Ebpf && !(with_ebpf && cfg!(target_os = "linux")) {
            continue;
        }
        match open_kind(k, targets, reconcile_interval).and_then(|mut s| {
            // A source that opens but cannot answer is no use: try one poll.
            s.poll(&mut Vec::new()).map(|_| s)
        }) {
            Ok(s) => {
                let reason = if k == SourceKind::Ebpf {
                    "the eBPF programs loaded (root, or CAP_BPF and CAP_PERFMON): exact opens \
                     and closes from the kernel, session health read in the kernel"
                        .to_string()
                } else if passed_over.is_empty() {
                    "the first that works".to_string()
                } else {
                    passed_over.join("; ")
                };
                let s = Chosen::boxed(s, format!("auto: {reason}"));
                tracing::info!(
                    source = k.as_str(),
                    reason = s.why_chosen().unwrap_or_default(),
                    "connection source selected: {}",
                    k.as_str()
                );
                return Ok(s);
            }
            Err(e) => {
                if k == SourceKind::Ebpf {
                    // Expected without the capabilities: not a warning.
                    tracing::info!(source = k.as_str(), reason = %e, "eBPF source not used, trying netlink");
                } else {
                    tracing::warn!(source = k.as_str(), error = %e, "connection source unavailable, trying the next");
                }
                passed_over.push(format!("{} not used: {e}", k.as_str()));
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or(SourceError::Unsupported("auto")))
}
