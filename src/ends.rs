//! Why each session ended: one cause per end, judged from all the evidence at hand.
//!
//! The TCP layer (the poll loop) knows that a session ended, and, where its source saw it, who
//! hung up, the kernel's reason (a reset, a timeout) and the process that made the connection.
//! The FIX layer, when it follows the session on the wire, knows what was said on it: a Logout
//! and who sent it first, a refused Logon, an unanswered TestRequest, a complaint about sequence
//! numbers, and who sent the first FIN or the RST. The target's schedule knows whether the end was
//! planned. [`Ends`] joins them by the session's addresses: an end waits for the FIX layer's
//! account of it at most [`SETTLE`] (not at all when the FIX layer is off), then [`judge`] picks
//! one [`Cause`] by the first rule that holds, in the order of the enum (dashboards/README.md,
//! "Why a session ended", lists the rules).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use strum::{EnumIter, IntoStaticStr, VariantNames};

use crate::fix::tracker::{Direction, Initiator, LinkEnd, TcpLink};
use crate::source::{ClosedBy, KernelCause, Process};
use crate::tracker::Timestamp;

/// How long an end waits for the FIX layer's account of it: the wire closes a link at its
/// FIN or RST, or `CLOSE_GRACE` (1 s) after the TCP layer stops listing it, and publishes
/// every 250 ms; the TCP layer sees a close at the next poll.
pub const SETTLE: Duration = Duration::from_secs(3);

/// How long the FIX layer's account of an end is kept for the TCP layer's.
pub const KEEP: Duration = Duration::from_secs(60);

/// Most FIX accounts kept at once (a storm of closes of links the TCP layer does not watch).
pub const MAX_KEPT: usize = 4096;

/// Why a session ended. The first rule that holds, in this order, picks it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, IntoStaticStr, VariantNames, EnumIter, PartialOrd, Ord,
)]
#[strum(serialize_all = "snake_case")]
pub enum Cause {
    /// Our Logon was answered by a Logout, and the session never logged on.
    LogonRefused,
    /// It ended outside its target's schedule window, or in the window's last
    /// `schedule_grace`.
    ScheduledLogout,
    /// A Logout or a Reject cited sequence numbers (`MsgSeqNum too low`, RefTagID 34).
    SequenceError,
    /// A TestRequest was left unanswered, or nothing came from them for two heartbeat
    /// intervals while logged on, and no Logout was exchanged; or, without a Logout, the TCP
    /// layer had judged the session stale at its last poll (no data for its target's
    /// `stale_after`).
    HeartbeatTimeout,
    /// We sent the first Logout.
    LogoutByUs,
    /// They sent the first Logout.
    LogoutByThem,
    /// The process that made the connection had exited, and the other side did not hang up.
    ProcessExited,
    /// The kernel gave up on the connection (`ETIMEDOUT`: retransmissions or keep-alives
    /// unanswered, or `TCP_USER_TIMEOUT`).
    NetworkTimeout,
    /// They sent a RST.
    ResetByThem,
    /// We sent a RST.
    ResetByUs,
    /// FIX traffic was seen on it and it closed (FIN) without a Logout.
    ClosedWithoutLogout,
    /// None of the above: no evidence says why (a FIN without the FIX layer, say).
    Unknown,
}

impl Cause {
    /// The cause's name, as the `cause` attribute and the JSON say it.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Every cause's name.
    pub fn names() -> &'static [&'static str] {
        Cause::VARIANTS
    }
}

/// The causes a sidecar can tell: with the FIX layer, all; without it, those the TCP layer's
/// evidence can pick (`kernel`: the source says who reset and why, as eBPF does; `process`: it
/// names the connecting process; `scheduled`: a target has a schedule).
pub fn possible(fix_on: bool, kernel: bool, process: bool, scheduled: bool) -> Vec<Cause> {
    use strum::IntoEnumIterator;
    Cause::iter()
        .filter(|c| match c {
            Cause::ScheduledLogout => scheduled,
            Cause::ProcessExited => process,
            Cause::NetworkTimeout => kernel,
            Cause::ResetByThem | Cause::ResetByUs => kernel || fix_on,
            Cause::Unknown => true,
            _ => fix_on,
        })
        .collect()
}

/// What the TCP layer knows of one end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpEnd {
    /// The target's id.
    pub target: usize,
    /// The session's addresses (as the TCP layer lists them).
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The socket's id (its cookie, or its inode), for the published closed session.
    pub id: u64,
    /// When it ended (or was seen gone).
    pub at: Timestamp,
    /// Who hung up, where the source saw it.
    pub closed_by: Option<ClosedBy>,
    /// The kernel's reason, where the source said.
    pub kernel: Option<KernelCause>,
    /// The process that made the connection, where known.
    pub process: Option<Process>,
    /// Its lifetime (`None`: opened and closed between two polls, no lifetime known).
    pub duration: Option<Duration>,
    /// Its final counters, where a close event carried them.
    pub info: Option<crate::tracker::TcpCounters>,
    /// At the last poll that saw it: the time since data was last received, and whether its
    /// target judged it stale (no data for `stale_after`); `None` without a health sample.
    pub silence: Option<(Duration, bool)>,
}

impl TcpEnd {
    /// The addresses as the wire keys them (IPv4-mapped addresses made plain).
    pub fn link(&self) -> TcpLink {
        let plain = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        TcpLink {
            local: plain(self.local),
            remote: plain(self.remote),
        }
    }
}

/// Everything known of one end, for [`judge`].
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    /// The TCP layer's.
    pub tcp: &'a TcpEnd,
    /// The FIX layer's, when it followed the session.
    pub fix: Option<&'a LinkEnd>,
    /// Whether the end was planned by the target's schedule (`None`: it has none).
    pub planned: Option<bool>,
    /// Whether the process that made the connection had exited (`false` when unknown).
    pub process_exited: bool,
}

/// A cause, and the evidence that picked it, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The cause.
    pub cause: Cause,
    /// What picked it (a Logout's Text, who sent the RST, ...).
    pub evidence: String,
}

fn verdict(cause: Cause, evidence: String) -> Verdict {
    Verdict { cause, evidence }
}

fn quoted(text: &Option<String>) -> String {
    match text {
        Some(t) => format!(" \"{t}\""),
        None => String::new(),
    }
}

fn side(i: Initiator) -> &'static str {
    match i {
        Initiator::Us => "us",
        Initiator::Them => "them",
    }
}

/// Who hung up, in words, from what the TCP layer and the wire saw (the wire's RST and first
/// FIN, else the source's `closed_by`).
fn tcp_words(e: &Evidence) -> String {
    let seen = e.fix.map(|f| f.seen).unwrap_or_default();
    let dir = |d: Direction| if d == Direction::In { "them" } else { "us" };
    if let Some(d) = seen.reset_from {
        return format!("RST from {}", dir(d));
    }
    if let Some(k) = &e.tcp.kernel {
        return k.to_string();
    }
    if let Some(d) = seen.first_fin {
        return format!("FIN from {} first", dir(d));
    }
    match e.tcp.closed_by {
        Some(ClosedBy::Local) => "FIN from us first".into(),
        Some(ClosedBy::Remote) => "FIN from them first".into(),
        Some(ClosedBy::Reset) => "reset (side not known)".into(),
        Some(ClosedBy::Unknown) | None => "who hung up is not known".into(),
    }
}

/// Which side reset the connection, where the kernel or the wire says.
fn reset_by(e: &Evidence) -> Option<Initiator> {
    let wire = e.fix.and_then(|f| f.seen.reset_from);
    let kernel = e.tcp.kernel.as_ref();
    if wire == Some(Direction::In) || kernel.is_some_and(|k| k.reset_received) {
        Some(Initiator::Them)
    } else if wire == Some(Direction::Out) || kernel.is_some_and(|k| k.reset_sent.is_some()) {
        Some(Initiator::Us)
    } else {
        None
    }
}

/// Whether the other side hung up first, as far as anything says.
fn they_hung_up(e: &Evidence) -> bool {
    let seen = e.fix.map(|f| f.seen).unwrap_or_default();
    reset_by(e) == Some(Initiator::Them)
        || seen.first_fin == Some(Direction::In)
        || e.tcp.closed_by == Some(ClosedBy::Remote)
}

/// The heartbeat rule: a TestRequest left open, or no message from them for two heartbeat
/// intervals at the end while logged on (only when no Logout was exchanged).
fn heartbeat_words(fix: &LinkEnd, tcp: &TcpEnd) -> Option<String> {
    // The earlier of the two layers' times: the wire's is late when the TCP layer ended the
    // link, the poll's when it saw the close at the next poll.
    let end = fix.at.min(tcp.at.wall);
    let f = fix.fix.as_ref()?;
    let e = &f.evidence;
    if let Some(t) = &e.test_request_open {
        let after = end.duration_since(t.at).unwrap_or_default();
        let id = t.id.as_deref().unwrap_or("-");
        return Some(format!(
            "TestRequest {id} from {} unanswered for {:.1} s",
            side(t.by),
            after.as_secs_f64()
        ));
    }
    let interval = Duration::from_secs(f.heartbeat_interval?);
    if !e.logged_on || e.logout.is_some() || interval.is_zero() {
        return None;
    }
    let last = e.last_seen[0]?;
    let silence = end.duration_since(last).unwrap_or_default();
    (silence >= 2 * interval).then(|| {
        format!(
            "nothing from them for {:.1} s (HeartBtInt {} s)",
            silence.as_secs_f64(),
            interval.as_secs()
        )
    })
}

/// One cause for one end: the first rule that holds, in the order of [`Cause`].
pub fn judge(e: &Evidence) -> Verdict {
    let tcp = tcp_words(e);
    let fix = e.fix.and_then(|f| f.fix.as_ref());
    if let Some(r) = fix.and_then(|f| f.evidence.refused.as_ref()) {
        if !fix.is_some_and(|f| f.evidence.logged_on) {
            return verdict(
                Cause::LogonRefused,
                format!("our Logon answered by a Logout{}; {tcp}", quoted(&r.text)),
            );
        }
    }
    if e.planned == Some(true) {
        return verdict(
            Cause::ScheduledLogout,
            format!("outside its schedule's window or in its last minutes; {tcp}"),
        );
    }
    if let Some(text) = fix.and_then(|f| f.evidence.sequence_complaint.as_ref()) {
        return verdict(Cause::SequenceError, format!("\"{text}\"; {tcp}"));
    }
    if let Some(words) = e.fix.and_then(|f| heartbeat_words(f, e.tcp)) {
        return verdict(Cause::HeartbeatTimeout, format!("{words}; {tcp}"));
    }
    let logout = fix.and_then(|f| f.evidence.logout.as_ref());
    if let (Some((silence, true)), None) = (e.tcp.silence, logout) {
        let words = format!(
            "stale at the last poll: no data received for {:.1} s",
            silence.as_secs_f64()
        );
        return verdict(Cause::HeartbeatTimeout, format!("{words}; {tcp}"));
    }
    if let Some(l) = fix.and_then(|f| f.evidence.logout.as_ref()) {
        let cause = match l.by {
            Initiator::Us => Cause::LogoutByUs,
            Initiator::Them => Cause::LogoutByThem,
        };
        let words = format!("Logout from {} first{}; {tcp}", side(l.by), quoted(&l.text));
        return verdict(cause, words);
    }
    if e.process_exited && !they_hung_up(e) {
        let p = e.tcp.process.as_ref();
        let who = p
            .map(|p| format!("{} ({})", p.pid, p.comm))
            .unwrap_or_default();
        return verdict(
            Cause::ProcessExited,
            format!("process {who} had exited; {tcp}"),
        );
    }
    if e.tcp.kernel.as_ref().is_some_and(KernelCause::timed_out) {
        return verdict(Cause::NetworkTimeout, tcp);
    }
    match reset_by(e) {
        Some(Initiator::Them) => return verdict(Cause::ResetByThem, tcp),
        Some(Initiator::Us) => return verdict(Cause::ResetByUs, tcp),
        None => {}
    }
    if fix.is_some() {
        return verdict(
            Cause::ClosedWithoutLogout,
            format!("FIX traffic seen, no Logout; {tcp}"),
        );
    }
    let no_fix = match e.fix {
        Some(_) => "no FIX message seen on it",
        None => "no FIX layer account of it",
    };
    verdict(Cause::Unknown, format!("{tcp}; {no_fix}"))
}

/// One judged end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    /// The TCP layer's end.
    pub end: TcpEnd,
    /// Its cause.
    pub verdict: Verdict,
    /// The FIX session the FIX layer's account named, if any.
    pub session: Option<crate::fix::tracker::SessionKey>,
}

/// A FIX session's last end, as `/sessions` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LastEnd {
    /// The cause's name.
    pub cause: &'static str,
    /// The evidence, in words.
    pub evidence: String,
    /// When it ended (RFC 3339, UTC).
    pub at: String,
    /// The same, to keep the latest of ends judged out of order.
    #[serde(skip)]
    pub ended: std::time::Instant,
}

/// What the judge asks beyond the two layers: the schedules, and whether a process lives.
pub trait Context {
    /// Whether an end of target `target` at `at` was planned (`None`: it has no schedule).
    fn planned(&self, target: usize, at: SystemTime) -> Option<bool>;
    /// Whether `p` had exited (a zombie has).
    fn exited(&self, p: &Process) -> bool;
}

/// The targets' schedules (by target id) and their grace; processes looked up in `/proc`.
#[derive(Debug, Clone, Default)]
pub struct Scheduled {
    /// `settings.target_schedules`.
    pub schedules: Vec<Option<std::sync::Arc<crate::schedule::Schedule>>>,
    /// `settings.schedule_grace`.
    pub grace: Duration,
}

impl Context for Scheduled {
    fn planned(&self, target: usize, at: SystemTime) -> Option<bool> {
        let s = self.schedules.get(target)?.as_ref()?;
        Some(s.planned_end(at, self.grace))
    }
    fn exited(&self, p: &Process) -> bool {
        exited_in_proc(std::path::Path::new("/proc"), p)
    }
}

/// No schedules; processes looked up in `/proc`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unscheduled;

impl Context for Unscheduled {
    fn planned(&self, _: usize, _: SystemTime) -> Option<bool> {
        None
    }
    fn exited(&self, p: &Process) -> bool {
        exited_in_proc(std::path::Path::new("/proc"), p)
    }
}

/// Whether `p` had exited, by `proc`: no such pid, or a zombie (`Z`) or dead (`X`) task. Its
/// command is not compared: the one a source saw is the connecting thread's, which may differ
/// from the process's and may have ended while the process lives. A pid reused within the
/// seconds before the judgement would pass for the process (pids wrap at `pid_max`, 4 million
/// on 64-bit systems).
pub fn exited_in_proc(proc: &std::path::Path, p: &Process) -> bool {
    let Ok(stat) = std::fs::read_to_string(proc.join(p.pid.to_string()).join("stat")) else {
        return true;
    };
    // pid (comm) state ...: comm may hold spaces and parentheses, so split at the last ')'.
    let Some((_, tail)) = stat.rsplit_once(')') else {
        return true;
    };
    let state = tail.split_whitespace().next().unwrap_or("X");
    matches!(state, "Z" | "X" | "x")
}

/// Ends waiting to be judged, and the FIX layer's accounts waiting for their ends.
#[derive(Debug)]
pub struct Ends {
    /// Whether the FIX layer runs (else nothing waits).
    fix_on: bool,
    pending: Vec<(TcpEnd, Instant)>,
    accounts: HashMap<TcpLink, (LinkEnd, Instant)>,
}

impl Ends {
    /// Ends judged at once (`fix_on` false) or after the FIX layer's account, at most
    /// [`SETTLE`] later.
    pub fn new(fix_on: bool) -> Ends {
        Ends {
            fix_on,
            pending: Vec::new(),
            accounts: HashMap::new(),
        }
    }

    /// The TCP layer saw `end` at `now`.
    pub fn tcp(&mut self, end: TcpEnd, now: Instant) {
        self.pending.push((end, now));
    }

    /// The FIX layer's account of a link's end, received at `now`.
    pub fn fix(&mut self, end: LinkEnd, now: Instant) {
        if self.accounts.len() >= MAX_KEPT {
            self.accounts
                .retain(|_, (_, t)| now.saturating_duration_since(*t) < KEEP);
            if self.accounts.len() >= MAX_KEPT {
                return;
            }
        }
        self.accounts.insert(end.link, (end, now));
    }

    /// Ends waiting now.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }

    /// Judge the ends whose evidence is in (or that waited [`SETTLE`]; all of them when
    /// `all`, at shutdown), at `now`.
    pub fn settle(&mut self, now: Instant, all: bool, ctx: &dyn Context) -> Vec<Judged> {
        let mut out = Vec::new();
        // Every poll comes here: nothing waiting, nothing to do.
        if self.pending.is_empty() && self.accounts.is_empty() {
            return out;
        }
        let mut i = 0;
        while i < self.pending.len() {
            let (end, seen) = &self.pending[i];
            let link = end.link();
            let ready = !self.fix_on
                || all
                || self.accounts.contains_key(&link)
                || now.saturating_duration_since(*seen) >= SETTLE;
            if !ready {
                i += 1;
                continue;
            }
            let (end, _) = self.pending.swap_remove(i);
            let account = self.accounts.remove(&link).map(|(a, _)| a);
            let evidence = Evidence {
                tcp: &end,
                fix: account.as_ref(),
                planned: ctx.planned(end.target, end.at.wall),
                process_exited: end.process.as_ref().is_some_and(|p| ctx.exited(p)),
            };
            let verdict = judge(&evidence);
            let session = account.and_then(|a| a.fix).map(|f| f.session);
            out.push(Judged {
                end,
                verdict,
                session,
            });
        }
        self.accounts
            .retain(|_, (_, t)| now.saturating_duration_since(*t) < KEEP);
        // In the order they happened (the last end of a FIX session is the last one).
        out.sort_by_key(|j| j.end.at.mono);
        out
    }
}

#[cfg(test)]
mod tests;
