use std::time::{Duration, SystemTime};

use crate::codec::{parse, write, SOH};
use crate::tracker::{Direction::*, Limits, Origin, Tracker};

use super::*;

fn at(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

/// A session driven message by message, with the numbers each side sends.
struct S {
    t: Tracker,
    now: u64,
    events: Vec<crate::tracker::Event>,
}

impl S {
    fn new() -> S {
        S {
            t: Tracker::new(Limits::default()),
            now: 0,
            events: Vec::new(),
        }
    }

    fn send(&mut self, dir: Direction, mt: &str, seq: u64, extra: &[(u32, &str)]) {
        let (from, to) = match dir {
            Out => ("GW", "VENUE"),
            In => ("VENUE", "GW"),
        };
        let seq = seq.to_string();
        let mut fields: Vec<(u32, &[u8])> = vec![
            (35, mt.as_bytes()),
            (49, from.as_bytes()),
            (56, to.as_bytes()),
            (34, seq.as_bytes()),
        ];
        fields.extend(extra.iter().map(|(t, v)| (*t, v.as_bytes())));
        let m = parse(&write("FIX.4.4", &fields, SOH), SOH).unwrap();
        self.now += 1;
        let e = self.t.observe(&m, dir, at(self.now), &Origin::default());
        self.events.extend(e);
    }

    fn seq(&self) -> &Sequence {
        &self.t.by_label("GW->VENUE").unwrap().sequence
    }

    fn outcomes(&self) -> &Outcomes {
        &self.t.by_label("GW->VENUE").unwrap().outcomes
    }
}

#[test]
fn each_sequence_event_is_classified_once() {
    let mut s = S::new();
    s.send(Out, "A", 1, &[(141, "Y"), (108, "30")]);
    s.send(In, "A", 1, &[(141, "Y")]);
    s.send(In, "0", 2, &[]);
    // A reset, a gap fill, a number too low, a PossDup, a PossResend.
    s.send(In, "4", 3, &[(36, "10")]);
    s.send(In, "4", 10, &[(123, "Y"), (36, "12")]);
    s.send(In, "0", 5, &[]);
    s.send(In, "0", 6, &[(43, "Y")]);
    s.send(Out, "D", 2, &[(11, "o1"), (97, "Y")]);
    let q = s.seq();
    let n = |d, k| q.count(d, k);
    assert_eq!(n(Out, SeqKind::ResetAtLogon), 1);
    assert_eq!(n(In, SeqKind::ResetAtLogon), 1);
    assert_eq!(n(In, SeqKind::Reset), 1);
    assert_eq!(n(In, SeqKind::GapFill), 1);
    assert_eq!(n(In, SeqKind::TooLow), 1);
    assert_eq!(n(In, SeqKind::PossDup), 1);
    assert_eq!(n(Out, SeqKind::PossResend), 1);
    let total: u64 = q.counts.iter().flatten().sum();
    assert_eq!(total, 7);
    // The last events, with their numbers: too low says what was expected.
    let low = q.recent.iter().find(|e| e.kind == SeqKind::TooLow).unwrap();
    assert_eq!((low.seq, low.other), (Some(5), Some(12)));
    let reset = q.recent.iter().find(|e| e.kind == SeqKind::Reset).unwrap();
    assert_eq!(reset.other, Some(10));
    // A Logon resetting to 1 is not "too low".
    s.send(In, "A", 1, &[(141, "Y")]);
    assert_eq!(s.seq().count(In, SeqKind::TooLow), 1);
}

#[test]
fn a_resend_request_is_answered_or_left_open_and_a_big_replay_is_a_storm() {
    let mut s = S::new();
    s.send(Out, "A", 1, &[]);
    s.send(In, "A", 1, &[]);
    // We ask for 2..0; they replay 150 messages: one storm, counted at the 100th.
    s.send(Out, "2", 2, &[(7, "2"), (16, "0")]);
    for seq in 2..152 {
        s.send(In, "8", seq, &[(43, "Y"), (150, "0"), (11, "x")]);
    }
    let q = s.seq();
    assert_eq!(q.count(In, SeqKind::ResendStorm), 1);
    assert_eq!(q.count(In, SeqKind::PossDup), 150);
    let r = q.resend[1].as_ref().unwrap();
    assert!(r.answered);
    assert_eq!((r.begin, r.end, r.replayed), (2, 0, 150));
    // They ask, nobody answers, they ask again: one unanswered; the end of the TCP session
    // leaves the second unanswered too.
    s.send(In, "2", 152, &[(7, "1"), (16, "2")]);
    s.send(In, "2", 153, &[(7, "1"), (16, "2")]);
    assert_eq!(s.seq().resends_unanswered, 1);
    let mut q = s.seq().clone();
    q.link_ended();
    assert_eq!(q.resends_unanswered, 2);
}

#[test]
fn order_outcomes_by_exec_type_and_reason_and_the_first_fill() {
    let mut s = S::new();
    s.send(Out, "A", 1, &[]);
    s.send(In, "A", 1, &[]);
    s.send(Out, "D", 2, &[(11, "o1")]);
    s.send(In, "8", 2, &[(11, "o1"), (150, "0"), (39, "0")]);
    // A FIX 4.4 Trade: partial fill, then fill, by OrdStatus.
    s.send(In, "8", 3, &[(11, "o1"), (150, "F"), (39, "1")]);
    s.send(In, "8", 4, &[(11, "o1"), (150, "F"), (39, "2")]);
    // A rejected order with its reason, one without, an unknown reason.
    s.send(Out, "D", 3, &[(11, "o2")]);
    s.send(In, "8", 5, &[(11, "o2"), (150, "8"), (103, "3")]);
    s.send(In, "8", 6, &[(11, "o3"), (150, "8")]);
    s.send(In, "8", 7, &[(11, "o4"), (150, "8"), (103, "77")]);
    // A cancel reject; an expired order; a replace carries the wait to the new ClOrdID.
    s.send(In, "9", 8, &[(11, "c1"), (102, "0")]);
    s.send(In, "8", 9, &[(11, "o5"), (150, "C")]);
    s.send(Out, "D", 4, &[(11, "o6")]);
    s.send(Out, "G", 5, &[(11, "o7"), (41, "o6")]);
    s.send(In, "8", 10, &[(11, "o7"), (150, "2")]);
    let o = s.outcomes();
    let want: BTreeMap<&str, u64> = [
        ("new", 1),
        ("partial_fill", 1),
        ("fill", 2),
        ("rejected", 3),
        ("expired", 1),
    ]
    .into();
    assert_eq!(o.exec_reports, want);
    let rejects: BTreeMap<&str, u64> =
        [("order_exceeds_limit", 1), ("none", 1), ("other", 1)].into();
    assert_eq!(o.order_rejects, rejects);
    assert_eq!(o.cancel_rejects, [("too_late_to_cancel", 1)].into());
    // First fills: o1 sent at 3 ms, first filled at 5 ms (the second fill is not a first);
    // o6 sent at 13 ms, replaced as o7, filled at 15 ms.
    let fills: Vec<u128> = (s.events.iter())
        .filter_map(|e| match e {
            crate::tracker::Event::OrderFilled { latency, .. } => Some(latency.as_millis()),
            _ => None,
        })
        .collect();
    assert_eq!(fills, [2, 2]);
}

#[test]
fn the_sequence_fields_are_read_in_one_pass_first_of_each() {
    let m = parse(
        &write(
            "FIX.4.4",
            &[
                (35, b"4"),
                (34, b"12"),
                (43, b"Y"),
                (123, b"Y"),
                (36, b"20"),
                (34, b"99"),
                (43, b"N"),
            ],
            SOH,
        ),
        SOH,
    )
    .unwrap();
    let f = SeqFields::of(&m);
    let want = SeqFields {
        seq: Some(12),
        poss_dup: true,
        poss_resend: false,
        gap_fill: true,
        new_seq: Some(20),
        reset: false,
    };
    assert_eq!(f, want);
    assert_eq!(f.seq, m.get_u64(34));
}
