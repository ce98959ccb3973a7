//! The FIX layer's session events (`session_events`), derived from the published state: after
//! each round the worker compares every FIX session's counters with the round before, and
//! each count that grew is an event (`fix.session.logon`, `.logon_refused`, `.logout`,
//! `.sequence_gap`, `.reject`). The tracker (`fix-monitor-protocol`) is left as it is; when it
//! emits these events itself, they can be built here from them instead, with the same
//! [`SessionEvent::fix`].
//!
//! A round is 250 ms: several logons of one session within a round are one event (the
//! count-type attributes say how many where it matters: gaps, rejects).

use std::collections::HashMap;
use std::time::SystemTime;

use super::monitor::FixSessionJson;
use crate::session_events::{attrs, EventName, SessionEvent, SessionEvents};

/// The counters of one session that events are made of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub logons: u64,
    pub logons_refused: u64,
    pub logouts_us: u64,
    pub logouts_them: u64,
    /// Per direction, `[in, out]`.
    pub gaps: [u64; 2],
    pub gap_messages: [u64; 2],
    pub session_rejects: [u64; 2],
    pub business_rejects: [u64; 2],
}

impl Counts {
    pub fn of(s: &FixSessionJson) -> Counts {
        let (i, o) = (&s.inbound, &s.outbound);
        Counts {
            logons: s.logons,
            logons_refused: s.logons_refused,
            logouts_us: s.logouts_us,
            logouts_them: s.logouts_them,
            gaps: [i.sequence_gaps, o.sequence_gaps],
            gap_messages: [i.sequence_gap_messages, o.sequence_gap_messages],
            session_rejects: [i.session_rejects, o.session_rejects],
            business_rejects: [i.business_rejects, o.business_rejects],
        }
    }
}

/// What the events of one session carry besides the counts.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub at: SystemTime,
    pub target: &'a str,
    pub sockets: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
    pub comp_ids: (Option<&'a str>, Option<&'a str>),
    pub logout_text: Option<&'a str>,
    pub refusal_text: Option<&'a str>,
}

const DIRECTIONS: [&str; 2] = ["in", "out"];

/// The events between `before` and `after` of one session (a session first seen starts from
/// zero counts).
pub fn diff(before: &Counts, after: &Counts, cx: &Context<'_>) -> Vec<SessionEvent> {
    let grew = |a: u64, b: u64| b.saturating_sub(a);
    let event =
        |name, message| SessionEvent::fix(name, message, cx.at, cx.target, cx.sockets, cx.comp_ids);
    let mut out = Vec::new();
    if grew(before.logons, after.logons) > 0 {
        out.push(event(EventName::Logon, "FIX logon"));
    }
    if grew(before.logons_refused, after.logons_refused) > 0 {
        out.push(
            event(EventName::LogonRefused, "FIX logon refused")
                .with_opt(attrs::LOGOUT_TEXT, cx.refusal_text)
                .warning(),
        );
    }
    for (initiator, a, b) in [
        ("us", before.logouts_us, after.logouts_us),
        ("them", before.logouts_them, after.logouts_them),
    ] {
        if grew(a, b) > 0 {
            out.push(
                event(EventName::Logout, "FIX logout")
                    .with(attrs::LOGOUT_INITIATOR, initiator)
                    .with_opt(attrs::LOGOUT_TEXT, cx.logout_text),
            );
        }
    }
    for (d, direction) in DIRECTIONS.iter().enumerate() {
        if grew(before.gaps[d], after.gaps[d]) > 0 {
            let missing = grew(before.gap_messages[d], after.gap_messages[d]);
            out.push(
                event(EventName::SequenceGap, "FIX sequence gap")
                    .with(attrs::DIRECTION, *direction)
                    .with(attrs::GAPS, missing)
                    .warning(),
            );
        }
        for (kind, a, b) in [
            (
                "session",
                before.session_rejects[d],
                after.session_rejects[d],
            ),
            (
                "business",
                before.business_rejects[d],
                after.business_rejects[d],
            ),
        ] {
            if grew(a, b) > 0 {
                out.push(
                    event(EventName::Reject, "FIX reject")
                        .with(attrs::DIRECTION, *direction)
                        .with(attrs::REJECT_KIND, kind)
                        .with(attrs::REJECTS, grew(a, b))
                        .warning(),
                );
            }
        }
    }
    out
}

/// Each round's sessions against the round before's: the worker's memory of the counts (only
/// the sessions still published are kept, so it is as bounded as they are).
#[derive(Debug, Default)]
pub struct Announcer {
    seen: HashMap<String, Counts>,
}

impl Announcer {
    pub fn round(&mut self, sessions: &[FixSessionJson], at: SystemTime, sink: &SessionEvents) {
        let mut next = HashMap::with_capacity(sessions.len());
        for s in sessions {
            let after = Counts::of(s);
            let before = self.seen.get(&s.session).copied().unwrap_or_default();
            if before != after {
                let mut ids = s.session.splitn(2, "->");
                let cx = Context {
                    at,
                    target: s.target.as_deref().unwrap_or_default(),
                    sockets: s.tcp.map(|t| (t.local, t.remote)),
                    comp_ids: (ids.next(), ids.next()),
                    logout_text: s.last_logout_text.as_deref(),
                    refusal_text: s.last_refusal_text.as_deref(),
                };
                for e in diff(&before, &after, &cx) {
                    sink.emit(&e);
                }
            }
            next.insert(s.session.clone(), after);
        }
        self.seen = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx() -> Context<'static> {
        Context {
            at: SystemTime::UNIX_EPOCH,
            target: "venue",
            sockets: Some((
                "10.0.0.1:5001".parse().unwrap(),
                "10.0.0.5:9876".parse().unwrap(),
            )),
            comp_ids: (Some("GW"), Some("VENUE")),
            logout_text: Some("bye"),
            refusal_text: None,
        }
    }

    #[test]
    fn each_count_that_grew_is_one_event_with_the_comp_ids() {
        let before = Counts {
            logons: 1,
            ..Counts::default()
        };
        let after = Counts {
            logons: 1,
            logouts_them: 1,
            gaps: [1, 0],
            gap_messages: [5, 0],
            business_rejects: [0, 2],
            ..Counts::default()
        };
        let events = diff(&before, &after, &cx());
        let names: Vec<_> = events.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "fix.session.logout",
                "fix.session.sequence_gap",
                "fix.session.reject"
            ]
        );
        let logout = &events[0];
        assert_eq!(logout.get(attrs::LOGOUT_INITIATOR), Some(&"them".into()));
        assert_eq!(logout.get(attrs::LOGOUT_TEXT), Some(&"bye".into()));
        assert_eq!(logout.get(attrs::SENDER_COMP_ID), Some(&"GW".into()));
        assert_eq!(logout.get(attrs::TARGET_COMP_ID), Some(&"VENUE".into()));
        assert_eq!(logout.get(attrs::PEER_PORT), Some(&9876u16.into()));
        assert_eq!(events[1].get(attrs::GAPS), Some(&5u64.into()));
        assert_eq!(events[2].get(attrs::REJECT_KIND), Some(&"business".into()));
        assert_eq!(events[2].get(attrs::DIRECTION), Some(&"out".into()));
        assert!(diff(&after, &after, &cx()).is_empty());
    }
}
