//! What a FIX session's messages say beyond its state: every sequence-number event classified
//! ([`SeqKind`]), resend requests answered or left open, and the outcomes of our orders
//! (ExecutionReports by ExecType, order and cancel rejects by reason, the first fill).
//!
//! Names are the FIX 4.4/5.0 dictionaries' value names in snake case; values outside the
//! tables below are counted as `other` (the label sets stay bounded).

use std::collections::{BTreeMap, VecDeque};
use std::time::SystemTime;

use crate::codec::{tag, Message};
use crate::tracker::Direction;

/// How many messages replayed for one ResendRequest make a resend storm.
pub const RESEND_STORM: u64 = 100;

/// How many recent sequence events a session keeps (`/sessions`).
pub const RECENT_SEQUENCE_EVENTS: usize = 16;

/// A sequence-number event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SeqKind {
    /// A Logon with ResetSeqNumFlag (141=Y): both sides start again at 1.
    ResetAtLogon,
    /// A SequenceReset in reset mode (35=4 without GapFillFlag 123=Y): the next number is set,
    /// messages in between are not sent.
    Reset,
    /// A SequenceReset-GapFill (35=4, 123=Y): administrative messages of a resend skipped.
    GapFill,
    /// A MsgSeqNum below the one expected, not a PossDup (an engine disconnects on it).
    TooLow,
    /// A message sent again (PossDupFlag 43=Y).
    PossDup,
    /// A message that may have been sent before under another number (PossResend 97=Y).
    PossResend,
    /// A resend that replayed [`RESEND_STORM`] messages or more for one ResendRequest
    /// (counted once per request, in the direction of the replay).
    ResendStorm,
}

impl SeqKind {
    /// Every kind, in the order the metrics list them.
    pub const ALL: [SeqKind; 7] = [
        SeqKind::ResetAtLogon,
        SeqKind::Reset,
        SeqKind::GapFill,
        SeqKind::TooLow,
        SeqKind::PossDup,
        SeqKind::PossResend,
        SeqKind::ResendStorm,
    ];

    /// The `kind` attribute.
    pub fn as_str(self) -> &'static str {
        match self {
            SeqKind::ResetAtLogon => "reset_at_logon",
            SeqKind::Reset => "reset",
            SeqKind::GapFill => "gap_fill",
            SeqKind::TooLow => "too_low",
            SeqKind::PossDup => "poss_dup",
            SeqKind::PossResend => "poss_resend",
            SeqKind::ResendStorm => "resend_storm",
        }
    }

    fn idx(self) -> usize {
        self as usize
    }
}

/// One sequence event, as `/sessions` shows the last ones.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SeqEvent {
    /// What it was.
    pub kind: SeqKind,
    /// Which way the message went.
    pub direction: Direction,
    /// Its MsgSeqNum.
    pub seq: Option<u64>,
    /// The number expected then (too low), the NewSeqNo (resets, gap fills) or the messages
    /// replayed (a storm).
    pub other: Option<u64>,
    /// When it was seen.
    pub at: SystemTime,
}

/// A ResendRequest awaiting its replay.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ResendRequest {
    /// Who asked: the replay comes the other way.
    pub asked_by: Direction,
    /// BeginSeqNo (tag 7).
    pub begin: u64,
    /// EndSeqNo (tag 16; 0: up to the latest).
    pub end: u64,
    /// When it was seen.
    pub at: SystemTime,
    /// Whether a replayed message (PossDup or a GapFill) has come since.
    pub answered: bool,
    /// Messages replayed so far.
    pub replayed: u64,
}

/// The fields sequence numbers are judged on, read once per message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqFields {
    /// MsgSeqNum (34).
    pub seq: Option<u64>,
    /// PossDupFlag (43) = Y.
    pub poss_dup: bool,
    /// PossResend (97) = Y.
    pub poss_resend: bool,
    /// GapFillFlag (123) = Y.
    pub gap_fill: bool,
    /// NewSeqNo (36).
    pub new_seq: Option<u64>,
    /// ResetSeqNumFlag (141) = Y.
    pub reset: bool,
}

impl SeqFields {
    /// The fields of `msg` (the first of each tag; the codec answers these tags from an index).
    pub fn of(msg: &Message) -> SeqFields {
        SeqFields {
            seq: msg.get_u64(tag::MSG_SEQ_NUM),
            poss_dup: msg.get_flag(tag::POSS_DUP_FLAG),
            poss_resend: msg.get_flag(tag::POSS_RESEND),
            gap_fill: msg.get_flag(tag::GAP_FILL_FLAG),
            new_seq: msg.get_u64(tag::NEW_SEQ_NO),
            reset: msg.get_flag(tag::RESET_SEQ_NUM_FLAG),
        }
    }
}

/// A session's sequence forensics.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Sequence {
    /// Counts by direction (in, out) and kind ([`SeqKind::ALL`] order).
    pub counts: [[u64; 7]; 2],
    /// The last events, oldest first (at most [`RECENT_SEQUENCE_EVENTS`]).
    pub recent: VecDeque<SeqEvent>,
    /// The last ResendRequest each way was asked (in: they asked us, out: we asked), with
    /// whether it was answered.
    pub resend: [Option<ResendRequest>; 2],
    /// ResendRequests never answered before the next one or the end of the TCP session.
    pub resends_unanswered: u64,
}

impl Sequence {
    /// Count of `kind` one way.
    pub fn count(&self, dir: Direction, kind: SeqKind) -> u64 {
        self.counts[dir_idx(dir)][kind.idx()]
    }

    fn push(&mut self, e: SeqEvent) {
        self.counts[dir_idx(e.direction)][e.kind.idx()] += 1;
        if self.recent.len() == RECENT_SEQUENCE_EVENTS {
            self.recent.pop_front();
        }
        self.recent.push_back(e);
    }

    /// One message going `dir`; `expected` is the MsgSeqNum expected before it.
    pub fn observe(
        &mut self,
        msg: &Message,
        (dir, at): (Direction, SystemTime),
        f: &SeqFields,
        expected: Option<u64>,
    ) {
        let seq = f.seq;
        let ev = |kind, other| SeqEvent {
            kind,
            direction: dir,
            seq,
            other,
            at,
        };
        let mt = msg.msg_type();
        let poss_dup = f.poss_dup;
        let gap_fill = mt == b"4" && f.gap_fill;
        if mt == b"A" && f.reset {
            self.push(ev(SeqKind::ResetAtLogon, None));
        }
        if mt == b"4" {
            let kind = if gap_fill {
                SeqKind::GapFill
            } else {
                SeqKind::Reset
            };
            self.push(ev(kind, f.new_seq));
        }
        if poss_dup {
            self.push(ev(SeqKind::PossDup, None));
        } else if let (Some(s), Some(e)) = (seq, expected) {
            if s < e && mt != b"4" {
                self.push(ev(SeqKind::TooLow, Some(e)));
            }
        }
        if f.poss_resend {
            self.push(ev(SeqKind::PossResend, None));
        }
        if mt == b"2" {
            self.asked(msg, dir, at);
        }
        if poss_dup || gap_fill {
            self.replayed(dir, seq, at);
        }
    }

    /// A ResendRequest going `dir`: the one before it, never answered, counts as unanswered.
    fn asked(&mut self, msg: &Message, dir: Direction, at: SystemTime) {
        let slot = &mut self.resend[dir_idx(dir)];
        if slot.as_ref().is_some_and(|r| !r.answered) {
            self.resends_unanswered += 1;
        }
        *slot = Some(ResendRequest {
            asked_by: dir,
            begin: msg.get_u64(tag::BEGIN_SEQ_NO).unwrap_or(0),
            end: msg.get_u64(tag::END_SEQ_NO).unwrap_or(0),
            at,
            answered: false,
            replayed: 0,
        });
    }

    /// A replayed message going `dir` answers the other side's request.
    fn replayed(&mut self, dir: Direction, seq: Option<u64>, at: SystemTime) {
        let asked_by = match dir {
            Direction::In => Direction::Out,
            Direction::Out => Direction::In,
        };
        let Some(r) = self.resend[dir_idx(asked_by)].as_mut() else {
            return;
        };
        r.answered = true;
        r.replayed += 1;
        if r.replayed == RESEND_STORM {
            let replayed = r.replayed;
            self.push(SeqEvent {
                kind: SeqKind::ResendStorm,
                direction: dir,
                seq,
                other: Some(replayed),
                at,
            });
        }
    }

    /// The TCP session ended: a request left open is unanswered.
    pub fn link_ended(&mut self) {
        for slot in &mut self.resend {
            if slot.take().is_some_and(|r| !r.answered) {
                self.resends_unanswered += 1;
            }
        }
    }
}

fn dir_idx(d: Direction) -> usize {
    match d {
        Direction::In => 0,
        Direction::Out => 1,
    }
}

/// ExecType (150) names, FIX 4.4/5.0 (1 and 2 are FIX 4.2's fills).
const EXEC_TYPES: &[(&[u8], &str)] = &[
    (b"0", "new"),
    (b"1", "partial_fill"),
    (b"2", "fill"),
    (b"3", "done_for_day"),
    (b"4", "canceled"),
    (b"5", "replaced"),
    (b"6", "pending_cancel"),
    (b"7", "stopped"),
    (b"8", "rejected"),
    (b"9", "suspended"),
    (b"A", "pending_new"),
    (b"B", "calculated"),
    (b"C", "expired"),
    (b"D", "restated"),
    (b"E", "pending_replace"),
    (b"F", "trade"),
    (b"G", "trade_correct"),
    (b"H", "trade_cancel"),
    (b"I", "order_status"),
];

/// OrdRejReason (103) names.
const ORD_REJ_REASONS: &[(&[u8], &str)] = &[
    (b"0", "broker_exchange_option"),
    (b"1", "unknown_symbol"),
    (b"2", "exchange_closed"),
    (b"3", "order_exceeds_limit"),
    (b"4", "too_late_to_enter"),
    (b"5", "unknown_order"),
    (b"6", "duplicate_order"),
    (b"7", "duplicate_of_a_verbally_communicated_order"),
    (b"8", "stale_order"),
    (b"9", "trade_along_required"),
    (b"10", "invalid_investor_id"),
    (b"11", "unsupported_order_characteristic"),
    (b"12", "surveillance_option"),
    (b"13", "incorrect_quantity"),
    (b"14", "incorrect_allocated_quantity"),
    (b"15", "unknown_account"),
    (b"16", "price_exceeds_current_price_band"),
    (b"18", "invalid_price_increment"),
    (b"99", "other"),
];

/// CxlRejReason (102) names.
const CXL_REJ_REASONS: &[(&[u8], &str)] = &[
    (b"0", "too_late_to_cancel"),
    (b"1", "unknown_order"),
    (b"2", "broker_exchange_option"),
    (b"3", "order_already_in_pending_status"),
    (b"4", "unable_to_process_order_mass_cancel_request"),
    (b"5", "orig_ord_mod_time_mismatch"),
    (b"6", "duplicate_cl_ord_id"),
    (b"7", "price_exceeds_current_price"),
    (b"8", "price_exceeds_current_price_band"),
    (b"18", "invalid_price_increment"),
    (b"99", "other"),
];

fn name_in(table: &[(&[u8], &'static str)], v: Option<&[u8]>) -> &'static str {
    match v {
        None => "none",
        Some(v) => (table.iter().find(|(k, _)| *k == v))
            .map(|(_, n)| *n)
            .unwrap_or("other"),
    }
}

/// The name of an ExecutionReport's ExecType; a FIX 4.4 Trade (F) is a `partial_fill` or a
/// `fill` by its OrdStatus (39: 1 or 2), as FIX 4.2's ExecTypes 1 and 2 were.
pub fn exec_type_name(msg: &Message) -> &'static str {
    let name = name_in(EXEC_TYPES, msg.get(tag::EXEC_TYPE));
    match (name, msg.get(tag::ORD_STATUS)) {
        ("trade", Some(b"1")) => "partial_fill",
        ("trade", Some(b"2")) => "fill",
        _ => name,
    }
}

/// The outcomes of our orders on one session.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Outcomes {
    /// ExecutionReports received, by ExecType name.
    pub exec_reports: BTreeMap<&'static str, u64>,
    /// Orders rejected (ExecType 8), by OrdRejReason name (`none` without one).
    pub order_rejects: BTreeMap<&'static str, u64>,
    /// OrderCancelRejects, by CxlRejReason name.
    pub cancel_rejects: BTreeMap<&'static str, u64>,
}

impl Outcomes {
    /// One message received: an ExecutionReport or an OrderCancelReject is counted. Returns
    /// whether it reports a fill (partial or full).
    pub fn observe(&mut self, msg: &Message) -> bool {
        match msg.msg_type() {
            b"8" => {
                let name = exec_type_name(msg);
                *self.exec_reports.entry(name).or_default() += 1;
                if name == "rejected" {
                    let reason = name_in(ORD_REJ_REASONS, msg.get(tag::ORD_REJ_REASON));
                    *self.order_rejects.entry(reason).or_default() += 1;
                }
                matches!(name, "partial_fill" | "fill")
            }
            b"9" => {
                let reason = name_in(CXL_REJ_REASONS, msg.get(tag::CXL_REJ_REASON));
                *self.cancel_rejects.entry(reason).or_default() += 1;
                false
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests;
