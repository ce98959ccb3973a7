//! The FIX session tracker: a pure state machine.
//!
//! Messages go in, each with its direction (we sent it, or they did), the time it was seen and,
//! where the source knows it, the TCP session and target it travelled on; per-session state and
//! counts are kept, and order round trips come out as events. It never reads a clock and does
//! no I/O: the wire source passes kernel receive timestamps, the log source the log's own
//! timestamps, and tests made-up ones.
//!
//! A FIX session is (BeginString, our CompID, their CompID): an outbound message's
//! SenderCompID is ours, an inbound one's TargetCompID is ours. Sessions are bounded
//! ([`Limits::max_sessions`]); messages of sessions beyond the cap are counted, not tracked.
//!
//! Sequence numbers: each direction expects the next MsgSeqNum. A message above it, not a
//! PossDup resend and not a SequenceReset, is a gap (counted once, with the number of messages
//! missing). A SequenceReset (GapFill or Reset) moves the expected number to its NewSeqNo; a
//! Logon with ResetSeqNumFlag=Y restarts at 1. A message below the expected number that is not a
//! PossDup is counted as `seq_too_low` (an engine would disconnect).
//!
//! Orders: a NewOrderSingle (D), OrderCancelRequest (F) or OrderCancelReplaceRequest (G) we send
//! waits, by ClOrdID, for the first ExecutionReport (8) or OrderCancelReject (9) that carries the
//! same ClOrdID. Pending orders are bounded per session by a cap (the oldest is given up) and an
//! expiry ([`Tracker::expire`]); both are counted as unanswered.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use crate::bursts::{is_throttle_reject, Bursts};
use crate::codec::{msg_type_name, tag, Message};
use crate::forensics::{Outcomes, SeqFields, Sequence};
use crate::skew::SkewSampler;

/// Which way a message went, from the gateway's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Received by us (from the venue).
    In,
    /// Sent by us.
    Out,
}

impl Direction {
    /// The direction's name as reported: `in` or `out`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }

    /// Its index in a session's per-direction arrays: in 0, out 1.
    pub fn idx(self) -> usize {
        match self {
            Direction::In => 0,
            Direction::Out => 1,
        }
    }
}

/// Who ended a session with a Logout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Initiator {
    /// We sent the first Logout.
    Us,
    /// The other side sent the first Logout.
    Them,
}

impl Initiator {
    /// The initiator's name as reported: `us` or `them`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Initiator::Us => "us",
            Initiator::Them => "them",
        }
    }
}

/// The kind of request an order round trip answers (the `request` attribute).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Request {
    /// NewOrderSingle (35=D).
    New,
    /// OrderCancelRequest (35=F).
    Cancel,
    /// OrderCancelReplaceRequest (35=G).
    Replace,
}

impl Request {
    /// The request's name as reported: `new`, `cancel` or `replace`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Request::New => "new",
            Request::Cancel => "cancel",
            Request::Replace => "replace",
        }
    }
    fn from_msg_type(t: &[u8]) -> Option<Request> {
        match t {
            b"D" => Some(Request::New),
            b"F" => Some(Request::Cancel),
            b"G" => Some(Request::Replace),
            _ => None,
        }
    }
}

/// A FIX session's identity, from our side.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct SessionKey {
    /// BeginString (tag 8).
    pub begin_string: String,
    /// Our CompID: SenderCompID (tag 49) of what we send.
    pub ours: String,
    /// Their CompID: TargetCompID (tag 56) of what we send.
    pub theirs: String,
}

impl SessionKey {
    /// The `session` attribute: `SENDER->TARGET` as we send.
    pub fn label(&self) -> String {
        format!("{}->{}", self.ours, self.theirs)
    }

    /// The key of a message seen going `dir`; `None` without both CompIDs.
    pub fn of(msg: &Message, dir: Direction) -> Option<SessionKey> {
        let sender = msg.get_str(tag::SENDER_COMP_ID)?;
        let target = msg.get_str(tag::TARGET_COMP_ID)?;
        let (ours, theirs) = match dir {
            Direction::Out => (sender, target),
            Direction::In => (target, sender),
        };
        Some(SessionKey {
            begin_string: String::from_utf8_lossy(msg.begin_string()).into_owned(),
            ours: ours.into_owned(),
            theirs: theirs.into_owned(),
        })
    }

    /// Whether this is the key of the raw fields `[BeginString, ours, theirs]` ([`raw_key`]).
    fn is(&self, raw: [&[u8]; 3]) -> bool {
        raw == [
            self.begin_string.as_bytes(),
            self.ours.as_bytes(),
            self.theirs.as_bytes(),
        ]
    }
}

/// A message's session fields as they are, `[BeginString, ours, theirs]`, and their hash: how
/// the tracker finds a known session without building its key. `None` without both CompIDs.
fn raw_key(msg: &Message, dir: Direction) -> Option<([&[u8]; 3], u64)> {
    use std::hash::{BuildHasher, Hasher};
    let sender = msg.get(tag::SENDER_COMP_ID)?;
    let target = msg.get(tag::TARGET_COMP_ID)?;
    let (ours, theirs) = match dir {
        Direction::Out => (sender, target),
        Direction::In => (target, sender),
    };
    let raw = [msg.begin_string(), ours, theirs];
    let mut h = rustc_hash::FxBuildHasher.build_hasher();
    for part in raw {
        h.write(part);
        h.write_u8(SOH_BYTE);
    }
    Some((raw, h.finish()))
}

/// A separator between the key's parts in [`raw_key`]'s hash (never inside a FIX value).
const SOH_BYTE: u8 = 0x01;

/// The TCP session a FIX session was seen on (the wire source always knows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct TcpLink {
    /// The gateway's address.
    pub local: SocketAddr,
    /// The other side's address.
    pub remote: SocketAddr,
}

/// Where a message was seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Origin<'a> {
    /// The target's name, when the source attributed the message to one.
    pub target: Option<&'a str>,
    /// The TCP session, when the source knows it.
    pub tcp: Option<TcpLink>,
}

/// The logon state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogonState {
    /// No Logon seen (or the session ended).
    LoggedOut,
    /// One side sent a Logon, the other has not answered yet.
    LogonSent {
        /// Who sent it.
        by: Initiator,
    },
    /// Both Logons seen.
    LoggedOn,
    /// A Logout was sent, the answer is awaited.
    LogoutSent {
        /// Who sent it.
        by: Initiator,
    },
}

/// Counts for one direction of a session.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DirectionCounts {
    /// Messages seen this way.
    pub messages: u64,
    /// Gaps seen (each jump counts once).
    pub sequence_gaps: u64,
    /// Messages missing across all gaps.
    pub sequence_gap_messages: u64,
    /// MsgSeqNum below the expected one, not a PossDup.
    pub seq_too_low: u64,
    /// TestRequests (35=1).
    pub test_requests: u64,
    /// ResendRequests (35=2).
    pub resend_requests: u64,
    /// SequenceResets (35=4), gap fills included.
    pub sequence_resets: u64,
    /// Reject (35=3).
    pub session_rejects: u64,
    /// BusinessMessageReject (35=j).
    pub business_rejects: u64,
    /// The next MsgSeqNum expected; `None` before the first message.
    pub next_seq: Option<u64>,
    /// When the last message this way was seen.
    #[serde(skip)]
    pub last_seen: Option<SystemTime>,
}

/// One FIX session's state.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Session {
    /// The session's identity.
    pub key: SessionKey,
    /// The same, as events carry it (no copy of its strings per event).
    #[serde(skip)]
    shared_key: std::sync::Arc<SessionKey>,
    /// The target it was last attributed to.
    pub target: Option<String>,
    /// The TCP session it was last seen on.
    pub tcp: Option<TcpLink>,
    /// Where the logon state machine is.
    pub state: LogonState,
    /// Logons completed (a Logon answered by a Logon).
    pub logons: u64,
    /// Sessions ended by a Logout we sent first.
    pub logouts_us: u64,
    /// Sessions ended by a Logout they sent first.
    pub logouts_them: u64,
    /// Logouts without a Logout message: the TCP session closed while logged on.
    pub disconnects: u64,
    /// The Text (tag 58) of the last Logout seen either way.
    pub last_logout_text: Option<String>,
    /// Logons we sent answered by a Logout from the other side (a refused logon: neither a
    /// logon nor a logout).
    pub logons_refused: u64,
    /// The last refusal: when its Logout was seen, and its Text (tag 58), if any.
    pub last_refusal: Option<Refusal>,
    /// When the last Logons we sent to open the session were seen (at most
    /// [`MAX_LOGON_ATTEMPTS`], oldest first): a Logon we answer is not an attempt.
    #[serde(skip)]
    pub logon_attempts: VecDeque<SystemTime>,
    /// HeartBtInt from the last Logon, seconds.
    pub heartbeat_interval: Option<u64>,
    /// What it showed on its current TCP session (see [`LinkEvidence`]).
    pub evidence: LinkEvidence,
    /// What it showed on the one before, for an end told after the next began (engine logs,
    /// and the wire when the end of the one before is seen after the next's first message).
    pub previous_evidence: Option<LinkEvidence>,
    /// The TCP session before [`tcp`](Self::tcp), while its end is not told: the one
    /// [`previous_evidence`](Self::previous_evidence) was shown on (wire).
    #[serde(skip)]
    previous_tcp: Option<TcpLink>,
    /// [in, out]
    pub dirs: [DirectionCounts; 2],
    /// Messages by MsgType name, [in, out], each bounded by [`Limits::max_msg_types`].
    pub by_type: [BTreeMap<String, u64>; 2],
    /// Orders we sent answered by an ExecutionReport or an OrderCancelReject (35=8 or 9, by
    /// ClOrdID): their round trips are timed.
    pub orders_answered: u64,
    /// Orders given up: unanswered past [`Limits::order_expiry`], or over
    /// [`Limits::max_pending_orders`].
    pub orders_unanswered: u64,
    /// Orders settled by a BusinessMessageReject naming their ClOrdID (tag 379): answered, but
    /// not with an ExecutionReport, so not timed.
    pub orders_rejected: u64,
    /// Sequence-number events, resend requests ([`Sequence`]).
    pub sequence: Sequence,
    /// Bursts each way, [in, out] ([`Bursts`]).
    #[serde(skip)]
    pub bursts: [Bursts; 2],
    /// Rejects received that say the venue throttled us ([`is_throttle_reject`]).
    pub throttle_rejects: u64,
    /// What our orders came to ([`Outcomes`]).
    pub outcomes: Outcomes,
    /// Clock skew sampled each way, [in, out] ([`SkewSampler`]).
    pub skew: [SkewSampler; 2],
    /// Orders we sent awaiting their first fill, by ClOrdID (a replace carries its order's
    /// time over to the new ClOrdID), oldest first; at most [`Limits::max_pending_orders`].
    #[serde(skip)]
    awaiting_fill: rustc_hash::FxHashMap<u64, SystemTime>,
    #[serde(skip)]
    fill_order: VecDeque<u64>,
    /// The last order round trips (at most [`RECENT_LATENCIES`]), oldest first: the console's
    /// p50 and last.
    #[serde(skip)]
    pub recent_latencies: VecDeque<Duration>,
    /// Orders awaiting their answer, by the hash of their ClOrdID ([`id_hash`]), oldest first.
    /// Two pending orders of a session whose ClOrdIDs collide (about 1 in 10^11 with 10,000
    /// pending) would have one's answer time the other.
    #[serde(skip)]
    pending: rustc_hash::FxHashMap<u64, (Request, SystemTime)>,
    #[serde(skip)]
    pending_order: VecDeque<u64>,
}

impl Session {
    fn new(key: SessionKey) -> Session {
        Session {
            shared_key: std::sync::Arc::new(key.clone()),
            key,
            target: None,
            tcp: None,
            state: LogonState::LoggedOut,
            logons: 0,
            logouts_us: 0,
            logouts_them: 0,
            disconnects: 0,
            last_logout_text: None,
            logons_refused: 0,
            last_refusal: None,
            logon_attempts: VecDeque::new(),
            heartbeat_interval: None,
            evidence: LinkEvidence::default(),
            previous_evidence: None,
            previous_tcp: None,
            dirs: Default::default(),
            by_type: Default::default(),
            orders_answered: 0,
            orders_unanswered: 0,
            orders_rejected: 0,
            sequence: Sequence::default(),
            bursts: Default::default(),
            throttle_rejects: 0,
            outcomes: Outcomes::default(),
            skew: Default::default(),
            awaiting_fill: Default::default(),
            fill_order: VecDeque::new(),
            recent_latencies: VecDeque::new(),
            pending: Default::default(),
            pending_order: VecDeque::new(),
        }
    }

    /// The counts of direction `d`.
    pub fn dir(&self, d: Direction) -> &DirectionCounts {
        &self.dirs[d.idx()]
    }

    /// Whether the session is logged on (a Logout sent but not answered still counts).
    pub fn logged_on(&self) -> bool {
        matches!(
            self.state,
            LogonState::LoggedOn | LogonState::LogoutSent { .. }
        )
    }

    /// Logons we sent seen in the `window` up to `now` (counted back to at most
    /// [`MAX_LOGON_ATTEMPTS`]); one seen exactly `window` before `now` has slid out.
    pub fn logon_attempts_within(&self, now: SystemTime, window: Duration) -> usize {
        self.logon_attempts
            .iter()
            .filter(|&&t| now.duration_since(t).unwrap_or_default() < window)
            .count()
    }

    /// Orders awaiting an answer.
    pub fn pending_orders(&self) -> usize {
        self.pending.len()
    }

    /// Time since the last message received, at `now`; `None` before any.
    pub fn inbound_silence(&self, now: SystemTime) -> Option<Duration> {
        let last = self.dir(Direction::In).last_seen?;
        Some(now.duration_since(last).unwrap_or_default())
    }

    /// Messages of one type one way (`msg_type` is the name, or the raw value).
    pub fn count(&self, d: Direction, msg_type: &str) -> u64 {
        self.by_type[d.idx()].get(msg_type).copied().unwrap_or(0)
    }
}

/// What one message did to a session's orders.
#[derive(Debug, Default)]
struct OrderOutcome {
    /// An order answered by this message: its request and round trip.
    answered: Option<(Request, Duration)>,
    /// Orders given up because the pending cap was reached.
    given_up: u64,
}

impl Session {
    /// Count a message by type; false when it was counted under `other` (the session had
    /// `max_types` types that way already).
    fn count_type(&mut self, mt: &[u8], dir: Direction, max_types: usize) -> bool {
        let types = &mut self.by_type[dir.idx()];
        let raw;
        let name = match msg_type_name(mt) {
            Some(name) => name,
            None => {
                raw = String::from_utf8_lossy(mt);
                &*raw
            }
        };
        // The common case, a type counted before: no allocation.
        if let Some(n) = types.get_mut(name) {
            *n += 1;
            return true;
        }
        let fits = types.len() < max_types;
        let key = if fits { name } else { "other" };
        *types.entry(key.to_string()).or_default() += 1;
        fits
    }

    /// Logon and Logout: the session's state, its logons, logouts, refused logons and logon
    /// attempts, HeartBtInt.
    fn session_level(&mut self, msg: &Message, dir: Direction, at: SystemTime) {
        let who = match dir {
            Direction::Out => Initiator::Us,
            Direction::In => Initiator::Them,
        };
        match msg.msg_type() {
            b"A" => {
                if msg.get_flag(tag::RESET_SEQ_NUM_FLAG) {
                    for d in &mut self.dirs {
                        d.next_seq = None;
                    }
                }
                if let Some(hb) = msg.get_u64(tag::HEART_BT_INT) {
                    self.heartbeat_interval = Some(hb);
                }
                self.state = match self.state {
                    LogonState::LogonSent { by } if by != who => {
                        self.logons += 1;
                        self.evidence.logged_on = true;
                        self.evidence.refused = None;
                        LogonState::LoggedOn
                    }
                    LogonState::LoggedOn => LogonState::LoggedOn,
                    _ => {
                        if who == Initiator::Us {
                            if self.logon_attempts.len() == MAX_LOGON_ATTEMPTS {
                                self.logon_attempts.pop_front();
                            }
                            self.logon_attempts.push_back(at);
                        }
                        LogonState::LogonSent { by: who }
                    }
                };
            }
            b"5" => {
                if let Some(t) = msg.get_str(tag::TEXT) {
                    self.last_logout_text = Some(t.into_owned());
                }
                self.state = match self.state {
                    LogonState::LoggedOn => LogonState::LogoutSent { by: who },
                    LogonState::LogoutSent { by } if by != who => {
                        match by {
                            Initiator::Us => self.logouts_us += 1,
                            Initiator::Them => self.logouts_them += 1,
                        }
                        LogonState::LoggedOut
                    }
                    // A Logout answering a Logon: the logon was refused. Counted when it refuses
                    // ours (a Logout we send after our own Logon is giving up, not a refusal).
                    LogonState::LogonSent { by } => {
                        if by == Initiator::Us && who == Initiator::Them {
                            self.logons_refused += 1;
                            let refusal = Refusal {
                                at,
                                text: msg.get_str(tag::TEXT).map(|t| t.into_owned()),
                            };
                            self.evidence.refused = Some(refusal.clone());
                            self.last_refusal = Some(refusal);
                        }
                        LogonState::LoggedOut
                    }
                    other => other,
                };
            }
            _ => {}
        }
    }

    /// The evidence of the current TCP session ([`LinkEvidence`]), before the message changes
    /// the session's state: `new_link` when it travelled on another TCP session than the last.
    fn gather(&mut self, msg: &Message, dir: Direction, at: SystemTime, new_link: bool) {
        let who = match dir {
            Direction::Out => Initiator::Us,
            Direction::In => Initiator::Them,
        };
        let mt = msg.msg_type();
        let relogon = mt == b"A" && self.state == LogonState::LoggedOut && self.tcp.is_none();
        if new_link || relogon {
            self.previous_evidence = Some(std::mem::take(&mut self.evidence));
            self.previous_tcp = self.tcp;
        }
        let e = &mut self.evidence;
        e.since.get_or_insert(at);
        e.last_seen[dir.idx()] = Some(at);
        let text = || msg.get_str(tag::TEXT).map(|t| t.into_owned());
        match mt {
            b"5" => {
                let text = text();
                if let Some(t) = text.as_deref().filter(|t| cites_sequence(t)) {
                    e.sequence_complaint = Some(t.to_string());
                }
                if e.logout.is_none() {
                    e.logout = Some(LogoutSeen { by: who, text, at });
                }
            }
            b"3" => {
                let cites_34 = msg.get_u64(tag::REF_TAG_ID) == Some(u64::from(tag::MSG_SEQ_NUM));
                let text = text();
                if cites_34 || text.as_deref().is_some_and(cites_sequence) {
                    e.sequence_complaint =
                        Some(text.unwrap_or_else(|| "Reject of MsgSeqNum (371=34)".into()));
                }
            }
            b"1" => {
                e.test_request_open = Some(OpenTestRequest {
                    by: who,
                    at,
                    id: msg.get_str(tag::TEST_REQ_ID).map(|t| t.into_owned()),
                });
            }
            b"0" => {
                let answers = |o: &OpenTestRequest| {
                    o.by != who && o.id.as_deref() == msg.get_str(tag::TEST_REQ_ID).as_deref()
                };
                if e.test_request_open.as_ref().is_some_and(answers) {
                    e.test_request_open = None;
                }
            }
            _ => {}
        }
    }

    /// Our orders' outcomes and first fills: a NewOrderSingle we send waits for its first fill
    /// (a replace moves its wait to the new ClOrdID); an ExecutionReport or OrderCancelReject
    /// received is counted by type and reason. Returns the order-to-first-fill time of a fill.
    fn fills(
        &mut self,
        msg: &Message,
        dir: Direction,
        at: SystemTime,
        max_pending: usize,
    ) -> Option<Duration> {
        // ClOrdIDs by a 64-bit hash: two live orders of a session colliding (about 1 in 10^11
        // with 10,000 awaiting) would time one fill from the other's order.
        let id = msg.get(tag::CL_ORD_ID).map(id_hash);
        match (dir, msg.msg_type(), id) {
            (Direction::Out, b"D", Some(id)) => self.await_fill(id, at, max_pending),
            (Direction::Out, b"G", Some(id)) => {
                let orig = msg.get(tag::ORIG_CL_ORD_ID).map(id_hash);
                if let Some(sent) = orig.and_then(|o| self.awaiting_fill.remove(&o)) {
                    self.await_fill(id, sent, max_pending);
                }
            }
            (Direction::In, _, _) if self.outcomes.observe(msg) => {
                let sent = self.awaiting_fill.remove(&id?)?;
                return Some(at.duration_since(sent).unwrap_or_default());
            }
            _ => {}
        }
        None
    }

    fn await_fill(&mut self, id: u64, at: SystemTime, max_pending: usize) {
        if self.awaiting_fill.insert(id, at).is_none() {
            self.fill_order.push_back(id);
        }
        while self.awaiting_fill.len() > max_pending {
            let Some(old) = self.fill_order.pop_front() else {
                break;
            };
            self.awaiting_fill.remove(&old);
        }
        if self.fill_order.len() > 2 * self.awaiting_fill.len() + 64 {
            let waiting = &self.awaiting_fill;
            self.fill_order.retain(|id| waiting.contains_key(id));
        }
    }

    /// Orders: one we send waits for its answer; an answer settles it (timed), a
    /// BusinessMessageReject naming it settles it (not timed).
    fn orders(
        &mut self,
        msg: &Message,
        dir: Direction,
        at: SystemTime,
        max_pending: usize,
    ) -> OrderOutcome {
        let mut out = OrderOutcome::default();
        let mt = msg.msg_type();
        if let Some(req) = Request::from_msg_type(mt) {
            if let (Direction::Out, Some(id)) = (dir, msg.get(tag::CL_ORD_ID)) {
                let id = id_hash(id);
                if self.pending.insert(id, (req, at)).is_none() {
                    self.pending_order.push_back(id);
                }
                while self.pending.len() > max_pending {
                    let Some(old) = self.pending_order.pop_front() else {
                        break;
                    };
                    if self.pending.remove(&old).is_some() {
                        self.orders_unanswered += 1;
                        out.given_up += 1;
                    }
                }
            }
        } else if (mt == b"8" || mt == b"9") && dir == Direction::In {
            if let Some((request, sent)) = msg
                .get(tag::CL_ORD_ID)
                .and_then(|id| self.pending.remove(&id_hash(id)))
            {
                self.orders_answered += 1;
                let latency = at.duration_since(sent).unwrap_or_default();
                if self.recent_latencies.len() == RECENT_LATENCIES {
                    self.recent_latencies.pop_front();
                }
                self.recent_latencies.push_back(latency);
                out.answered = Some((request, latency));
            }
        } else if mt == b"j" && dir == Direction::In {
            let id = msg.get(tag::BUSINESS_REJECT_REF_ID);
            if id.is_some_and(|id| self.pending.remove(&id_hash(id)).is_some()) {
                self.orders_rejected += 1;
            }
        }
        // Keep the FIFO from growing with answered orders.
        if self.pending_order.len() > 2 * self.pending.len() + 64 {
            let pending = &self.pending;
            self.pending_order.retain(|id| pending.contains_key(id));
        }
        out
    }
}

impl DirectionCounts {
    /// One message this way: counts by kind, and sequence numbers (see the module doc).
    fn observe(&mut self, msg: &Message, at: SystemTime, f: &SeqFields) {
        let mt = msg.msg_type();
        self.messages += 1;
        self.last_seen = Some(at);
        match mt {
            b"1" => self.test_requests += 1,
            b"2" => self.resend_requests += 1,
            b"3" => self.session_rejects += 1,
            b"j" => self.business_rejects += 1,
            _ => {}
        }
        let (seq, poss_dup) = (f.seq, f.poss_dup);
        if mt == b"4" {
            self.sequence_resets += 1;
            // A GapFill (part of a resend) never moves the expected number back; a Reset sets it.
            if let Some(new) = f.new_seq {
                self.next_seq = if f.gap_fill {
                    Some(self.next_seq.map_or(new, |n| n.max(new)))
                } else {
                    Some(new)
                };
            }
        } else if let Some(seq) = seq {
            match self.next_seq {
                Some(expect) if seq > expect && !poss_dup => {
                    self.sequence_gaps += 1;
                    self.sequence_gap_messages += seq - expect;
                    self.next_seq = Some(seq + 1);
                }
                Some(expect) if seq < expect => {
                    if !poss_dup {
                        self.seq_too_low += 1;
                    }
                }
                _ => self.next_seq = Some(seq.saturating_add(1)),
            }
        }
    }
}

/// A ClOrdID's hash, as orders awaiting a fill are keyed.
fn id_hash(id: &[u8]) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = rustc_hash::FxBuildHasher.build_hasher();
    h.write(id);
    h.finish()
}

/// How many recent order latencies a session keeps for the console.
pub const RECENT_LATENCIES: usize = 64;

/// How many of its last logon attempts a session keeps the times of: the most a lockout
/// threshold (`targets[].logon_lockout.attempts`) may be.
pub const MAX_LOGON_ATTEMPTS: usize = 64;

/// A refused logon: the Logout that answered our Logon.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Refusal {
    /// When the Logout was seen.
    pub at: SystemTime,
    /// Its Text (tag 58), if it had one.
    pub text: Option<String>,
}

/// What a FIX session showed on its current TCP session: the evidence an end's cause is judged
/// on (the sidecar's `ends` module). It starts afresh when the session is seen on another TCP
/// session, or, where the source knows no TCP session (engine logs), at a Logon while logged
/// out.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LinkEvidence {
    /// A logon completed (a Logon answered by a Logon).
    pub logged_on: bool,
    /// The first Logout: who sent it, its Text, when.
    pub logout: Option<LogoutSeen>,
    /// Our Logon answered by a Logout, and no logon completed after it.
    pub refused: Option<Refusal>,
    /// A TestRequest not answered by a Heartbeat carrying its TestReqID (tag 112). An answer
    /// clears it.
    pub test_request_open: Option<OpenTestRequest>,
    /// The last message citing sequence numbers: a Reject (35=3) of tag 34 (RefTagID 371=34)
    /// or a Logout whose Text speaks of sequence numbers; its Text (or a description).
    pub sequence_complaint: Option<String>,
    /// The last message seen each way, [in, out].
    pub last_seen: [Option<SystemTime>; 2],
    /// When it started: the first message on the TCP session, or the Logon that restarted it.
    pub since: Option<SystemTime>,
}

/// A TestRequest awaiting its Heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OpenTestRequest {
    /// Who sent it.
    pub by: Initiator,
    /// When it was seen.
    pub at: SystemTime,
    /// Its TestReqID (tag 112), which the Heartbeat answering it echoes.
    pub id: Option<String>,
}

/// A Logout, as evidence.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogoutSeen {
    /// Who sent the first Logout.
    pub by: Initiator,
    /// Its Text (tag 58), if any.
    pub text: Option<String>,
    /// When it was seen.
    pub at: SystemTime,
}

/// How a TCP session ended as the packets showed it (the wire source), from the gateway's side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TcpEndSeen {
    /// Who sent the first FIN, if one was seen.
    pub first_fin: Option<Direction>,
    /// Who sent an RST, if one was seen.
    pub reset_from: Option<Direction>,
}

/// One TCP session a FIX session was seen on ended: what the FIX layer can say about it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LinkEnd {
    /// The TCP session.
    pub link: TcpLink,
    /// When its end was seen (the FIN, the RST, or when the TCP layer stopped listing it).
    pub at: SystemTime,
    /// What the packets showed of its end (nothing when the TCP layer ended it).
    pub seen: TcpEndSeen,
    /// The FIX session last seen on it, with its evidence, if any.
    pub fix: Option<FixEnd>,
}

/// A FIX session's part in a TCP session's end.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FixEnd {
    /// The session.
    pub session: SessionKey,
    /// What it showed on the TCP session.
    pub evidence: LinkEvidence,
    /// HeartBtInt from its last Logon, seconds.
    pub heartbeat_interval: Option<u64>,
}

/// Whether a Text (tag 58) speaks of sequence numbers ("MsgSeqNum too low, expecting 12",
/// "Sequence number gap"): the words engines use.
pub fn cites_sequence(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    ["msgseqnum", "seqnum", "seq num", "sequence", "seqno"]
        .iter()
        .any(|w| t.contains(w))
}

/// Bounds on what the tracker keeps.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// FIX sessions kept; messages of more are counted in [`Tracker::over_cap`].
    pub max_sessions: usize,
    /// Distinct MsgTypes kept per session; more are counted under `other`.
    pub max_msg_types: usize,
    /// Orders awaiting an answer per session; the oldest is given up beyond it.
    pub max_pending_orders: usize,
    /// An order unanswered for this long is given up.
    pub order_expiry: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_sessions: 256,
            max_msg_types: 64,
            max_pending_orders: 10_000,
            order_expiry: Duration::from_secs(60),
        }
    }
}

/// What the tracker reports as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// An order we sent was answered.
    OrderAnswered {
        /// The session it belongs to.
        session: std::sync::Arc<SessionKey>,
        /// The target the session is attributed to.
        target: Option<String>,
        /// What kind of order it was.
        request: Request,
        /// From our order to its answer (ExecutionReport or OrderCancelReject), by the times the
        /// two messages were seen at.
        latency: Duration,
    },
    /// A TCP session the wire source followed ended.
    LinkEnded(Box<LinkEnd>),
    /// An order we sent got its first fill (partial or full).
    OrderFilled {
        /// The session it belongs to.
        session: std::sync::Arc<SessionKey>,
        /// The target the session is attributed to.
        target: Option<String>,
        /// From our NewOrderSingle to the first ExecutionReport that fills it.
        latency: Duration,
    },
    /// A clock-skew sample ([`crate::skew`]): the message's SendingTime minus the time it was
    /// seen, uncorrected (the FIX thread knows the link's RTT, the tracker does not).
    ClockSkew {
        /// The session it belongs to.
        session: std::sync::Arc<SessionKey>,
        /// The target the session is attributed to.
        target: Option<String>,
        /// Which way the message went.
        direction: Direction,
        /// SendingTime minus the time seen, nanoseconds.
        skew_ns: i64,
        /// When the message was seen.
        at: SystemTime,
        /// The TCP session it travelled on, when the source knows it (the wire).
        tcp: Option<TcpLink>,
    },
}

/// Every FIX session seen.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    limits: Limits,
    sessions: BTreeMap<SessionKey, Session>,
    /// The sessions' keys by the hash of their raw fields ([`raw_key`]), checked on use.
    keys: rustc_hash::FxHashMap<u64, std::sync::Arc<SessionKey>>,
    /// Messages without SenderCompID and TargetCompID.
    pub unkeyed: u64,
    /// Messages of sessions beyond the cap ([`Limits::max_sessions`]). A FIX session is kept
    /// for the life of the process: its identity outlives TCP sessions and days, and its
    /// counters are cumulative.
    pub over_cap: u64,
    /// Messages counted under `other` because their session had
    /// [`Limits::max_msg_types`] types that way already.
    pub msg_types_folded: u64,
    /// Orders given up because their session had [`Limits::max_pending_orders`] pending
    /// (also in the session's `orders_unanswered`).
    pub orders_over_cap: u64,
}

impl Tracker {
    /// An empty tracker bounded by `limits`.
    pub fn new(limits: Limits) -> Tracker {
        Tracker {
            limits,
            ..Tracker::default()
        }
    }

    /// Every session, in key order.
    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values()
    }

    /// The session with `key`, if seen.
    pub fn session(&self, key: &SessionKey) -> Option<&Session> {
        self.sessions.get(key)
    }

    /// Find a session by its `ours->theirs` label (for tests and views).
    pub fn by_label(&self, label: &str) -> Option<&Session> {
        self.sessions.values().find(|s| s.key.label() == label)
    }

    /// One message seen going `dir` at `at`.
    pub fn observe(
        &mut self,
        msg: &Message,
        dir: Direction,
        at: SystemTime,
        origin: &Origin,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        self.observe_into(msg, dir, at, origin, &mut events);
        events
    }

    /// [`Tracker::observe`], its events added to `events` (no vector of its own per message).
    pub fn observe_into(
        &mut self,
        msg: &Message,
        dir: Direction,
        at: SystemTime,
        origin: &Origin,
        events: &mut Vec<Event>,
    ) {
        let Some(key) = self.key_of(msg, dir) else {
            return;
        };
        let limits = self.limits;
        let s = self.sessions.get_mut(&*key).expect("found or inserted");
        if let Some(t) = origin.target.filter(|t| s.target.as_deref() != Some(*t)) {
            s.target = Some(t.to_string());
        }
        s.gather(msg, dir, at, origin.tcp.is_some() && origin.tcp != s.tcp);
        if origin.tcp.is_some() {
            s.tcp = origin.tcp;
        }
        if !s.count_type(msg.msg_type(), dir, limits.max_msg_types) {
            self.msg_types_folded += 1;
        }
        s.session_level(msg, dir, at);
        let expected = s.dirs[dir.idx()].next_seq;
        let f = SeqFields::of(msg);
        s.sequence.observe(msg, (dir, at), &f, expected);
        s.bursts[dir.idx()].message(at);
        if let Some(skew_ns) = s.skew[dir.idx()].offer(msg, at) {
            events.push(Event::ClockSkew {
                session: key.clone(),
                target: s.target.clone(),
                direction: dir,
                skew_ns,
                at,
                tcp: s.tcp,
            });
        }
        if dir == Direction::In && is_throttle_reject(msg) {
            s.throttle_rejects += 1;
        }
        s.dirs[dir.idx()].observe(msg, at, &f);
        if let Some(latency) = s.fills(msg, dir, at, limits.max_pending_orders) {
            events.push(Event::OrderFilled {
                session: key.clone(),
                target: s.target.clone(),
                latency,
            });
        }
        let orders = s.orders(msg, dir, at, limits.max_pending_orders);
        self.orders_over_cap += orders.given_up;
        if let Some((request, latency)) = orders.answered {
            events.push(Event::OrderAnswered {
                session: key,
                target: s.target.clone(),
                request,
                latency,
            });
        }
    }

    /// The key of the session `msg` going `dir` belongs to, the session added if new; `None`
    /// (counted) without both CompIDs or beyond the sessions' cap.
    fn key_of(&mut self, msg: &Message, dir: Direction) -> Option<std::sync::Arc<SessionKey>> {
        let Some((raw, hash)) = raw_key(msg, dir) else {
            self.unkeyed += 1;
            return None;
        };
        if let Some(k) = self.keys.get(&hash).filter(|k| k.is(raw)) {
            return Some(k.clone());
        }
        let key = SessionKey::of(msg, dir).expect("both CompIDs are there");
        let shared = match self.sessions.get(&key) {
            Some(s) => s.shared_key.clone(),
            None if self.sessions.len() >= self.limits.max_sessions => {
                self.over_cap += 1;
                return None;
            }
            None => {
                let s = Session::new(key.clone());
                let shared = s.shared_key.clone();
                self.sessions.insert(key, s);
                shared
            }
        };
        // One entry per hash: a key whose raw bytes are not its text (invalid UTF-8) or a
        // colliding one takes this path each time, and stays correct.
        self.keys.insert(hash, shared.clone());
        Some(shared)
    }

    /// The TCP session `tcp` closed at `at` (the wire source saw FIN or RST, or the TCP layer
    /// stopped listing it): a session still logged on is logged out without a Logout. Returns
    /// the end, with the FIX session last seen on it and its evidence. A session that has
    /// already moved on to its next TCP session (a gateway that retries its logon at once,
    /// before the venue's FIN) gives the evidence it had on this one, and stays as it is.
    pub fn tcp_closed(&mut self, tcp: TcpLink, at: SystemTime, seen: TcpEndSeen) -> LinkEnd {
        let mut fix: Option<(SystemTime, FixEnd)> = None;
        for s in self.sessions.values_mut() {
            let evidence = if s.tcp == Some(tcp) {
                if s.logged_on() {
                    s.disconnects += 1;
                }
                s.state = LogonState::LoggedOut;
                s.sequence.link_ended();
                &s.evidence
            } else if s.previous_tcp == Some(tcp) {
                s.previous_tcp = None;
                match &s.previous_evidence {
                    Some(e) => e,
                    None => continue,
                }
            } else {
                continue;
            };
            let last = evidence.last_seen.iter().flatten().max().copied();
            let last = last.unwrap_or(SystemTime::UNIX_EPOCH);
            if fix.as_ref().is_none_or(|(t, _)| last > *t) {
                let end = FixEnd {
                    session: s.key.clone(),
                    evidence: evidence.clone(),
                    heartbeat_interval: s.heartbeat_interval,
                };
                fix = Some((last, end));
            }
        }
        LinkEnd {
            link: tcp,
            at,
            seen,
            fix: fix.map(|(_, f)| f),
        }
    }

    /// A TCP session ended at `at` that the source cannot see the FIX session of (engine logs
    /// carry no TCP session): when `key` is the one session that can have run on it, the
    /// evidence it had at `at` is the end's account (the previous evidence when a Logon after
    /// `at` already started the next). Its state and counts are left as the log says them.
    /// `None` for a session not seen.
    pub fn log_link_closed(
        &self,
        key: &SessionKey,
        link: TcpLink,
        at: SystemTime,
    ) -> Option<LinkEnd> {
        let s = self.sessions.get(key)?;
        let current = &s.evidence;
        let evidence = match (&s.previous_evidence, current.since) {
            (Some(previous), Some(since)) if since > at => previous.clone(),
            _ => current.clone(),
        };
        let fix = FixEnd {
            session: s.key.clone(),
            evidence,
            heartbeat_interval: s.heartbeat_interval,
        };
        Some(LinkEnd {
            link,
            at,
            seen: TcpEndSeen::default(),
            fix: Some(fix),
        })
    }

    /// Give up orders pending longer than the expiry, at `now`; returns how many.
    pub fn expire(&mut self, now: SystemTime) -> u64 {
        let expiry = self.limits.order_expiry;
        let mut n = 0;
        for s in self.sessions.values_mut() {
            let before = s.pending.len();
            s.pending
                .retain(|_, (_, sent)| now.duration_since(*sent).unwrap_or_default() < expiry);
            let gone = (before - s.pending.len()) as u64;
            s.orders_unanswered += gone;
            n += gone;
            if gone > 0 {
                let pending = &s.pending;
                s.pending_order.retain(|id| pending.contains_key(id));
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{parse, write, SOH};

    const T0: Duration = Duration::from_secs(1_800_000_000);

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + T0 + Duration::from_millis(ms)
    }

    /// A message from `from` to `to` with MsgSeqNum `seq` and extra fields.
    fn msg(from: &str, to: &str, mt: &str, seq: u64, extra: &[(u32, &str)]) -> Message {
        let seq = seq.to_string();
        let mut f: Vec<(u32, &[u8])> = vec![
            (35, mt.as_bytes()),
            (49, from.as_bytes()),
            (56, to.as_bytes()),
            (34, seq.as_bytes()),
        ];
        f.extend(extra.iter().map(|(t, v)| (*t, v.as_bytes())));
        parse(&write("FIX.4.4", &f, SOH), SOH).unwrap()
    }

    struct Sim {
        t: Tracker,
        seq: [u64; 2],
        now: u64,
        events: Vec<Event>,
    }

    impl Sim {
        fn new() -> Sim {
            Sim {
                t: Tracker::new(Limits::default()),
                seq: [1, 1],
                now: 0,
                events: vec![],
            }
        }
        fn send(&mut self, dir: Direction, mt: &str, extra: &[(u32, &str)]) {
            let (from, to) = match dir {
                Direction::Out => ("GW", "VENUE"),
                Direction::In => ("VENUE", "GW"),
            };
            let seq = self.seq[dir.idx()];
            self.seq[dir.idx()] += 1;
            let m = msg(from, to, mt, seq, extra);
            self.now += 1;
            let origin = Origin {
                target: Some("venue"),
                tcp: None,
            };
            self.events
                .extend(self.t.observe(&m, dir, at(self.now), &origin));
        }
        fn s(&self) -> &Session {
            self.t.by_label("GW->VENUE").unwrap()
        }
    }

    use Direction::{In, Out};

    #[test]
    fn sessions_are_found_by_their_fields_whatever_the_key_cache_holds() {
        let mut t = Tracker::new(Limits::default());
        let o = Origin::default();
        let a = msg("GW", "VENUE", "0", 1, &[]);
        let b = msg("GW", "OTHER", "0", 1, &[]);
        t.observe(&a, Out, at(1), &o);
        t.observe(&b, Out, at(2), &o);
        // A hash that collides: A's hash now names B's key. A's messages still go to A.
        let (_, hash_a) = raw_key(&a, Out).unwrap();
        let key_b = t
            .keys
            .values()
            .find(|k| k.theirs == "OTHER")
            .unwrap()
            .clone();
        t.keys.insert(hash_a, key_b);
        t.observe(&a, Out, at(3), &o);
        t.observe(&msg("VENUE", "GW", "0", 1, &[]), In, at(4), &o);
        // Not UTF-8: the key's text is not its bytes, so the cache never matches; still one
        // session.
        let odd = parse(
            &write("FIX.4.4", &[(35, b"0"), (49, b"GW"), (56, b"V\xffN")], SOH),
            SOH,
        )
        .unwrap();
        for i in 0..3 {
            t.observe(&odd, Out, at(5 + i), &o);
        }
        let count = |label: &str| {
            let s = t.by_label(label).unwrap();
            (s.dir(Out).messages, s.dir(In).messages)
        };
        assert_eq!(count("GW->VENUE"), (2, 1));
        assert_eq!(count("GW->OTHER"), (1, 0));
        assert_eq!(count("GW->V\u{fffd}N"), (3, 0));
        assert_eq!(t.sessions().count(), 3);
        assert!(
            t.keys.len() <= 3,
            "one cache entry per hash: {}",
            t.keys.len()
        );
    }

    #[test]
    fn logon_heartbeat_logout_by_them() {
        let mut sim = Sim::new();
        sim.send(Out, "A", &[(108, "30")]);
        assert_eq!(sim.s().state, LogonState::LogonSent { by: Initiator::Us });
        assert!(!sim.s().logged_on());
        sim.send(In, "A", &[(108, "30")]);
        assert!(sim.s().logged_on());
        assert_eq!(sim.s().logons, 1);
        assert_eq!(sim.s().heartbeat_interval, Some(30));
        sim.send(Out, "0", &[]);
        sim.send(In, "0", &[]);
        sim.send(In, "1", &[(112, "T1")]);
        sim.send(Out, "0", &[(112, "T1")]);
        sim.send(In, "5", &[(58, "end of day")]);
        sim.send(Out, "5", &[]);
        let s = sim.s();
        assert_eq!(s.state, LogonState::LoggedOut);
        assert_eq!((s.logouts_us, s.logouts_them), (0, 1));
        assert_eq!(s.last_logout_text.as_deref(), Some("end of day"));
        assert_eq!(s.count(Out, "Heartbeat"), 2);
        assert_eq!(s.count(In, "TestRequest"), 1);
        assert_eq!(s.dir(In).test_requests, 1);
        assert_eq!(s.dir(In).messages, 4);
        assert_eq!(s.dir(Out).messages, 4);
        assert_eq!(s.dir(In).sequence_gaps, 0);
        assert_eq!(s.target.as_deref(), Some("venue"));
        assert_eq!(
            // The last inbound message (their Logout) came 1 ms before our answer.
            s.inbound_silence(at(sim.now + 2500)),
            Some(Duration::from_millis(2501))
        );
    }

    /// Skew samples: SendingTime minus the time seen, at most one per 100 ms each way, carried
    /// with the session, its target and the TCP session.
    #[test]
    fn clock_skew_samples_each_way() {
        let mut t = Tracker::new(Limits::default());
        let link = TcpLink {
            local: "127.0.0.1:5001".parse().unwrap(),
            remote: "127.0.0.2:9876".parse().unwrap(),
        };
        let origin = Origin {
            target: Some("venue"),
            tcp: Some(link),
        };
        // at(0) is 2027-01-15 08:00:00 UTC.
        let inbound = |ts: &str| msg("VENUE", "GW", "0", 1, &[(52, ts)]);
        let ev = t.observe(&inbound("20270115-08:00:00.250"), In, at(0), &origin);
        let [Event::ClockSkew {
            session,
            target,
            direction: In,
            skew_ns: 250_000_000,
            at: seen,
            tcp: Some(l),
        }] = &ev[..]
        else {
            panic!("{ev:?}");
        };
        assert_eq!(session.label(), "GW->VENUE");
        assert_eq!((target.as_deref(), *l, *seen), (Some("venue"), link, at(0)));
        // 99 ms later: not sampled; 100 ms later: sampled.
        let m = inbound("20270115-08:00:00.349");
        assert!(t.observe(&m, In, at(99), &origin).is_empty());
        let ev = t.observe(&m, In, at(100), &origin);
        assert!(matches!(
            ev[..],
            [Event::ClockSkew {
                skew_ns: 249_000_000,
                ..
            }]
        ));
        // Outbound on its own clock: stamped 08:00:00.100, seen leaving at .103.
        let out = msg("GW", "VENUE", "0", 1, &[(52, "20270115-08:00:00.100")]);
        let ev = t.observe(&out, Out, at(103), &origin);
        assert!(matches!(
            ev[..],
            [Event::ClockSkew {
                direction: Out,
                skew_ns: -3_000_000,
                ..
            }]
        ));
        let s = t.by_label("GW->VENUE").unwrap();
        assert_eq!((s.skew[0].samples, s.skew[1].samples), (2, 1));
    }

    #[test]
    fn refused_logon_is_not_a_logon() {
        let mut sim = Sim::new();
        for _ in 0..3 {
            sim.send(Out, "A", &[(108, "30")]);
            sim.send(In, "5", &[(58, "unknown CompID")]);
        }
        let s = sim.s();
        assert_eq!(s.logons, 0);
        assert_eq!(s.state, LogonState::LoggedOut);
        assert_eq!(s.count(Out, "Logon"), 3);
        assert_eq!(s.last_logout_text.as_deref(), Some("unknown CompID"));
        assert_eq!((s.logouts_us, s.logouts_them), (0, 0));
        assert_eq!(s.logons_refused, 3);
        assert_eq!(s.logon_attempts.len(), 3);
        // The sixth message: the third refusal.
        let refusal = s.last_refusal.as_ref().unwrap();
        assert_eq!(
            (refusal.at, refusal.text.as_deref()),
            (at(6), Some("unknown CompID"))
        );
    }

    #[test]
    fn refusals_are_counted_exactly() {
        let mut sim = Sim::new();
        // Refused twice, the second time without a Text.
        sim.send(Out, "A", &[]);
        sim.send(In, "5", &[(58, "Invalid password")]);
        sim.send(Out, "A", &[]);
        sim.send(In, "5", &[]);
        assert_eq!(sim.s().logons_refused, 2);
        assert_eq!(sim.s().last_refusal.as_ref().unwrap().text, None);
        // We give up on our own Logon: not a refusal.
        sim.send(Out, "A", &[]);
        sim.send(Out, "5", &[]);
        // They log on to us and we refuse them: not a refusal of ours.
        sim.send(In, "A", &[]);
        sim.send(Out, "5", &[(58, "go away")]);
        // Accepted, then an ordinary logout: not a refusal.
        sim.send(Out, "A", &[]);
        sim.send(In, "A", &[]);
        sim.send(In, "5", &[]);
        sim.send(Out, "5", &[]);
        let s = sim.s();
        assert_eq!(s.logons_refused, 2);
        assert_eq!(s.logons, 1);
        assert_eq!(s.logouts_them, 1);
        // Our Logons that opened a session: 4 (our answer to theirs was not one).
        assert_eq!(s.logon_attempts.len(), 4);
        assert_eq!(s.last_refusal.as_ref().unwrap().at, at(4));
    }

    #[test]
    fn logon_attempts_slide_out_of_the_window() {
        let mut sim = Sim::new();
        let minute = Duration::from_secs(60);
        // Attempts at 1, 3, 5 ms, then one 30 s later (the Sim's clock is one ms a message).
        for _ in 0..3 {
            sim.send(Out, "A", &[]);
            sim.send(In, "5", &[(58, "Invalid password")]);
        }
        sim.now = 30_000;
        sim.send(Out, "A", &[]); // at 30_001
        let s = sim.s();
        assert_eq!(s.logon_attempts_within(at(30_001), minute), 4);
        // 60 s after the first attempt it has slid out; the others stay.
        assert_eq!(s.logon_attempts_within(at(60_000), minute), 4);
        assert_eq!(s.logon_attempts_within(at(60_001), minute), 3);
        assert_eq!(s.logon_attempts_within(at(60_005), minute), 1);
        assert_eq!(s.logon_attempts_within(at(90_001), minute), 0);
        // A shorter window.
        assert_eq!(
            s.logon_attempts_within(at(30_001), Duration::from_secs(10)),
            1
        );
        // Kept bounded: only the last MAX_LOGON_ATTEMPTS times.
        for _ in 0..(MAX_LOGON_ATTEMPTS + 10) {
            sim.send(In, "5", &[]);
            sim.send(Out, "A", &[]);
        }
        let s = sim.s();
        assert_eq!(s.logon_attempts.len(), MAX_LOGON_ATTEMPTS);
        assert_eq!(s.logons_refused, 3 + MAX_LOGON_ATTEMPTS as u64 + 10);
        assert_eq!(
            s.logon_attempts_within(at(sim.now), minute),
            MAX_LOGON_ATTEMPTS
        );
    }

    #[test]
    fn gaps_count_but_not_possdup_or_gapfill() {
        let mut sim = Sim::new();
        sim.send(Out, "A", &[]);
        sim.send(In, "A", &[]);
        sim.seq[0] += 3; // three inbound messages lost: 2, 3, 4
        sim.send(In, "0", &[]); // 5: a gap of 3
        sim.send(Out, "2", &[(7, "2"), (16, "4")]);
        // The venue answers: a gap fill for 2..4, then nothing else out of order.
        let m = msg("VENUE", "GW", "4", 2, &[(123, "Y"), (36, "5"), (43, "Y")]);
        sim.t.observe(&m, In, at(100), &Origin::default());
        // A PossDup resend of an old message is not a gap and not "too low".
        let m = msg("VENUE", "GW", "8", 3, &[(43, "Y")]);
        sim.t.observe(&m, In, at(101), &Origin::default());
        sim.send(In, "0", &[]); // 6
                                // A message too low without PossDup.
        let m = msg("VENUE", "GW", "0", 2, &[]);
        sim.t.observe(&m, In, at(102), &Origin::default());
        let s = sim.s();
        let d = s.dir(In);
        assert_eq!(d.sequence_gaps, 1);
        assert_eq!(d.sequence_gap_messages, 3);
        assert_eq!(d.sequence_resets, 1);
        assert_eq!(d.seq_too_low, 1);
        assert_eq!(d.next_seq, Some(7));
        assert_eq!(s.dir(Out).resend_requests, 1);
        assert_eq!(s.dir(Out).sequence_gaps, 0);
    }

    #[test]
    fn reset_seq_num_flag_restarts_at_one() {
        let mut sim = Sim::new();
        sim.send(Out, "A", &[]);
        sim.send(In, "A", &[]);
        sim.send(In, "0", &[]);
        sim.seq = [1, 1];
        sim.send(Out, "A", &[(141, "Y")]);
        sim.send(In, "A", &[(141, "Y")]);
        assert_eq!(sim.s().dir(In).sequence_gaps, 0);
        assert_eq!(sim.s().dir(In).seq_too_low, 0);
    }

    #[test]
    fn orders_are_matched_by_clordid() {
        let mut sim = Sim::new();
        sim.send(Out, "A", &[]);
        sim.send(In, "A", &[]);
        sim.send(Out, "D", &[(11, "o1")]);
        sim.send(Out, "D", &[(11, "o2")]);
        sim.send(In, "8", &[(11, "o2"), (150, "0")]);
        sim.send(In, "8", &[(11, "o1"), (150, "0")]);
        // A second report for o1 is not a second answer.
        sim.send(In, "8", &[(11, "o1"), (150, "F")]);
        sim.send(Out, "F", &[(11, "c1"), (41, "o1")]);
        sim.send(In, "9", &[(11, "c1")]);
        sim.send(Out, "G", &[(11, "r1"), (41, "o2")]);
        let lat: Vec<_> = sim
            .events
            .iter()
            .filter_map(|e| match e {
                Event::OrderAnswered {
                    request, latency, ..
                } => Some((*request, latency.as_millis())),
                Event::LinkEnded(_) | Event::OrderFilled { .. } | Event::ClockSkew { .. } => None,
            })
            .collect();
        assert_eq!(
            lat,
            // One millisecond per message: o2 answered 1 ms after it was sent, o1 3 ms after.
            [(Request::New, 1), (Request::New, 3), (Request::Cancel, 1)]
        );
        assert_eq!(sim.s().orders_answered, 3);
        assert_eq!(sim.s().pending_orders(), 1);
        let gone = sim.t.expire(at(sim.now + 59_999));
        assert_eq!(gone, 0);
        assert_eq!(sim.t.expire(at(sim.now + 60_000)), 1);
        assert_eq!(sim.s().orders_unanswered, 1);
        assert_eq!(sim.s().pending_orders(), 0);
    }

    #[test]
    fn pending_orders_are_capped() {
        let mut sim = Sim::new();
        sim.t.limits.max_pending_orders = 10;
        for i in 0..25 {
            sim.send(Out, "D", &[(11, &format!("o{i}"))]);
        }
        assert_eq!(sim.s().pending_orders(), 10);
        assert_eq!(sim.s().orders_unanswered, 15);
        assert_eq!(sim.t.orders_over_cap, 15);
        // The newest are kept.
        sim.send(In, "8", &[(11, "o24")]);
        sim.send(In, "8", &[(11, "o0")]);
        assert_eq!(sim.s().orders_answered, 1);
    }

    #[test]
    fn sessions_and_types_are_capped() {
        let mut t = Tracker::new(Limits {
            max_sessions: 2,
            max_msg_types: 3,
            ..Limits::default()
        });
        for i in 0..4 {
            let m = msg("GW", &format!("V{i}"), "0", 1, &[]);
            t.observe(&m, Out, at(0), &Origin::default());
        }
        assert_eq!(t.sessions().count(), 2);
        assert_eq!(t.over_cap, 2);
        for (n, mt) in ["0", "U1", "U2", "U3", "U4", "U1"].iter().enumerate() {
            let m = msg("GW", "V0", mt, n as u64 + 2, &[]);
            t.observe(&m, Out, at(0), &Origin::default());
        }
        let s = t.by_label("GW->V0").unwrap();
        assert_eq!(s.count(Out, "Heartbeat"), 2);
        assert_eq!(s.count(Out, "U1"), 2);
        assert_eq!(s.count(Out, "other"), 2);
        assert_eq!(t.msg_types_folded, 2);
        let m = parse(&write("FIX.4.4", &[(35, b"0")], SOH), SOH).unwrap();
        t.observe(&m, Out, at(0), &Origin::default());
        assert_eq!(t.unkeyed, 1);
    }

    fn link(port: u16) -> TcpLink {
        TcpLink {
            local: format!("127.0.0.1:{port}").parse().unwrap(),
            remote: "127.0.0.1:9878".parse().unwrap(),
        }
    }

    /// Messages on one TCP session, then its end: the evidence of the FIX session on it.
    /// A message of a test script: its direction, MsgType and fields.
    type Scripted<'a> = (Direction, &'a str, &'a [(u32, &'a str)]);

    fn ended_after(on: TcpLink, msgs: &[Scripted]) -> LinkEnd {
        let mut t = Tracker::new(Limits::default());
        let o = Origin {
            target: None,
            tcp: Some(on),
        };
        let mut seq = [1, 1];
        for (i, (dir, mt, extra)) in msgs.iter().enumerate() {
            let (from, to) = match dir {
                Out => ("GW", "VENUE"),
                In => ("VENUE", "GW"),
            };
            seq[dir.idx()] += 1;
            let m = msg(from, to, mt, seq[dir.idx()] - 1, extra);
            t.observe(&m, *dir, at(i as u64), &o);
        }
        t.tcp_closed(on, at(100), TcpEndSeen::default())
    }

    #[test]
    fn evidence_of_a_logout_names_who_sent_it_first_and_its_text() {
        let end = ended_after(
            link(1),
            &[
                (Out, "A", &[(108, "30")]),
                (In, "A", &[]),
                (In, "5", &[(58, "End of day")]),
                (Out, "5", &[(58, "bye")]),
            ],
        );
        let fix = end.fix.unwrap();
        let e = &fix.evidence;
        assert!(e.logged_on);
        let logout = e.logout.as_ref().unwrap();
        assert_eq!(logout.by, Initiator::Them);
        assert_eq!(logout.text.as_deref(), Some("End of day"));
        assert_eq!(e.refused, None);
        assert_eq!(e.sequence_complaint, None);
        assert_eq!(fix.heartbeat_interval, Some(30));
        assert_eq!(end.at, at(100));
    }

    /// A gateway retries its logon on a new TCP session before the venue's FIN ended the
    /// refused one: each end still carries its own refusal, and the retry's session is left
    /// as it is by the first one's end.
    #[test]
    fn an_end_told_after_the_next_session_began_keeps_its_evidence() {
        let mut t = Tracker::new(Limits::default());
        let on = |l: TcpLink| Origin {
            target: None,
            tcp: Some(l),
        };
        t.observe(&msg("GW", "VENUE", "A", 1, &[]), Out, at(1), &on(link(1)));
        let refusal = [(58, "Invalid password")];
        t.observe(
            &msg("VENUE", "GW", "5", 1, &refusal),
            In,
            at(2),
            &on(link(1)),
        );
        t.observe(&msg("GW", "VENUE", "A", 1, &[]), Out, at(3), &on(link(2)));
        t.observe(&msg("VENUE", "GW", "A", 1, &[]), In, at(4), &on(link(2)));
        let first = t.tcp_closed(link(1), at(5), TcpEndSeen::default());
        let e = first.fix.unwrap().evidence;
        assert_eq!(e.refused.unwrap().text.as_deref(), Some("Invalid password"));
        assert!(!e.logged_on);
        // The retry was accepted and is still logged on; its end is its own.
        let s = t.by_label("GW->VENUE").unwrap();
        assert_eq!(
            (s.state, s.logons, s.logons_refused),
            (LogonState::LoggedOn, 1, 1)
        );
        let second = t.tcp_closed(link(2), at(6), TcpEndSeen::default());
        let e = second.fix.unwrap().evidence;
        assert!(e.logged_on && e.refused.is_none());
        // Told once: the first session's end again finds nothing.
        assert_eq!(
            t.tcp_closed(link(1), at(7), TcpEndSeen::default()).fix,
            None
        );
    }

    #[test]
    fn evidence_of_a_refused_logon_and_of_sequence_complaints() {
        let refused = ended_after(link(1), &[(Out, "A", &[]), (In, "5", &[(58, "Bad pw")])]);
        let e = refused.fix.unwrap().evidence;
        assert!(!e.logged_on);
        assert_eq!(e.refused.unwrap().text.as_deref(), Some("Bad pw"));

        // A Logout citing MsgSeqNum, a Reject of tag 34: both complain of sequence numbers.
        let text = "MsgSeqNum too low, expecting 12 but received 7";
        let logout = ended_after(
            link(1),
            &[(Out, "A", &[]), (In, "A", &[]), (In, "5", &[(58, text)])],
        );
        assert_eq!(
            logout.fix.unwrap().evidence.sequence_complaint.as_deref(),
            Some(text)
        );
        let reject = ended_after(
            link(1),
            &[(Out, "A", &[]), (In, "A", &[]), (In, "3", &[(371, "34")])],
        );
        assert!(reject.fix.unwrap().evidence.sequence_complaint.is_some());
        // A Reject of another tag, a Logout with other words: no complaint.
        let other = ended_after(
            link(1),
            &[
                (Out, "A", &[]),
                (In, "A", &[]),
                (In, "3", &[(371, "55")]),
                (In, "5", &[(58, "Closing for the day")]),
            ],
        );
        assert_eq!(other.fix.unwrap().evidence.sequence_complaint, None);
    }

    #[test]
    fn a_test_request_stays_open_until_a_heartbeat_echoes_its_id() {
        let open = ended_after(
            link(1),
            &[
                (Out, "A", &[]),
                (In, "A", &[]),
                (Out, "1", &[(112, "T1")]),
                (In, "0", &[(112, "OTHER")]),
                (In, "0", &[]),
            ],
        );
        let o = open.fix.unwrap().evidence.test_request_open.unwrap();
        assert_eq!((o.by, o.id.as_deref()), (Initiator::Us, Some("T1")));
        let answered = ended_after(
            link(1),
            &[
                (Out, "A", &[]),
                (In, "A", &[]),
                (Out, "1", &[(112, "T1")]),
                (In, "0", &[(112, "T1")]),
            ],
        );
        assert_eq!(answered.fix.unwrap().evidence.test_request_open, None);
        // Their TestRequest we never answered is open too, on their side.
        let theirs = ended_after(
            link(1),
            &[(Out, "A", &[]), (In, "A", &[]), (In, "1", &[(112, "X")])],
        );
        let o = theirs.fix.unwrap().evidence.test_request_open.unwrap();
        assert_eq!(o.by, Initiator::Them);
    }

    #[test]
    fn evidence_starts_afresh_on_a_new_tcp_session() {
        let mut t = Tracker::new(Limits::default());
        let on = |l| Origin {
            target: None,
            tcp: Some(l),
        };
        t.observe(&msg("GW", "VENUE", "A", 1, &[]), Out, at(1), &on(link(1)));
        t.observe(&msg("VENUE", "GW", "5", 1, &[]), In, at(2), &on(link(1)));
        let first = t.tcp_closed(link(1), at(3), TcpEndSeen::default());
        assert!(first.fix.unwrap().evidence.refused.is_some());
        t.observe(&msg("GW", "VENUE", "A", 2, &[]), Out, at(4), &on(link(2)));
        t.observe(&msg("VENUE", "GW", "A", 2, &[]), In, at(5), &on(link(2)));
        let second = t.tcp_closed(link(2), at(6), TcpEndSeen::default());
        let e = second.fix.unwrap().evidence;
        assert!(e.logged_on);
        assert_eq!((e.refused, e.logout), (None, None));
        // A link no FIX session was seen on ends with no FIX part.
        assert_eq!(
            t.tcp_closed(link(3), at(7), TcpEndSeen::default()).fix,
            None
        );
    }

    #[test]
    fn an_engine_log_end_takes_the_evidence_it_had_at_the_close() {
        let mut t = Tracker::new(Limits::default());
        let none = Origin::default();
        t.observe(&msg("GW", "VENUE", "A", 1, &[]), Out, at(1), &none);
        t.observe(
            &msg("VENUE", "GW", "5", 1, &[(58, "Bad pw")]),
            In,
            at(2),
            &none,
        );
        let key = t.by_label("GW->VENUE").unwrap().key.clone();
        // The next attempt's Logon was read before the TCP layer told of the first close (at 3).
        t.observe(&msg("GW", "VENUE", "A", 2, &[]), Out, at(4), &none);
        let end = t.log_link_closed(&key, link(1), at(3)).unwrap();
        let e = end.fix.unwrap().evidence;
        assert_eq!(e.refused.unwrap().text.as_deref(), Some("Bad pw"));
        // An end after the new attempt began gets the new attempt's evidence.
        let later = t.log_link_closed(&key, link(2), at(5)).unwrap();
        let e = later.fix.unwrap().evidence;
        assert_eq!((e.refused, e.since), (None, Some(at(4))));
        assert!(t
            .log_link_closed(
                &SessionKey {
                    ours: "X".into(),
                    ..key
                },
                link(3),
                at(5)
            )
            .is_none());
    }

    #[test]
    fn tcp_close_logs_out_without_a_logout() {
        let mut sim = Sim::new();
        let link = TcpLink {
            local: "127.0.0.1:40000".parse().unwrap(),
            remote: "127.0.0.1:9878".parse().unwrap(),
        };
        let o = Origin {
            target: None,
            tcp: Some(link),
        };
        sim.t
            .observe(&msg("GW", "VENUE", "A", 1, &[]), Out, at(1), &o);
        sim.t
            .observe(&msg("VENUE", "GW", "A", 1, &[]), In, at(2), &o);
        assert!(sim.s().logged_on());
        sim.t
            .tcp_closed(link, SystemTime::UNIX_EPOCH, TcpEndSeen::default());
        assert!(!sim.s().logged_on());
        assert_eq!(sim.s().disconnects, 1);
        assert_eq!(sim.s().logouts_us + sim.s().logouts_them, 0);
    }
}
