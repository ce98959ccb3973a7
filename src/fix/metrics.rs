//! The FIX layer's OpenTelemetry instruments: observed at collection time from the latest
//! published [`FixState`] (a collection only reads numbers), except the order latency histogram,
//! which the FIX thread records as round trips complete (see `monitor`).
//!
//! Attributes are bounded: `target` (configured names; the only attribute of
//! `fix_target_logon_lockout_attempts`, one series per target with a `logon_lockout`), `session` (`SENDER->TARGET`, only
//! sessions seen on watched connections or in configured logs, capped by the tracker's
//! `max_sessions`), `direction`, `initiator`, `kind`, `request` (fixed sets) and `msg_type`
//! (standard names, capped per session by the tracker's `max_msg_types`).

use opentelemetry::metrics::{Meter, ObservableCounter, ObservableGauge};
use opentelemetry::KeyValue;

use super::monitor::{DirectionJson, FixReader, FixSessionJson, FixState};
use super::wire::EndReason;

/// Instrument names (Prometheus adds `_total` to counters and `_seconds` to the unit `s`).
pub mod names {
    pub const LOGGED_ON: &str = "fix_session_logged_on";
    pub const LOGONS: &str = "fix_session_logons";
    pub const LOGOUTS: &str = "fix_session_logouts";
    pub const LOGONS_REFUSED: &str = "fix_session_logons_refused";
    pub const LOGON_ATTEMPTS_IN_WINDOW: &str = "fix_session_logon_attempts_in_window";
    pub const LOGON_LOCKOUT_ATTEMPTS: &str = "fix_target_logon_lockout_attempts";
    pub const MESSAGES: &str = "fix_messages";
    pub const HEARTBEAT_INTERVAL: &str = "fix_session_heartbeat_interval";
    pub const INBOUND_SILENCE: &str = "fix_session_inbound_silence";
    pub const SEQUENCE_GAPS: &str = "fix_session_sequence_gaps";
    pub const RESEND_REQUESTS: &str = "fix_session_resend_requests";
    pub const TEST_REQUESTS: &str = "fix_session_test_requests";
    pub const REJECTS: &str = "fix_session_rejects";
    pub const ORDER_ACK_LATENCY: &str = "fix_order_ack_latency";
    pub const ORDERS_UNANSWERED: &str = "fix_orders_unanswered";
    pub const DECODED: &str = "fix_monitor_fix_messages_decoded";
    pub const MALFORMED: &str = "fix_monitor_fix_messages_malformed";
    pub const BYTES_SKIPPED: &str = "fix_monitor_fix_bytes_skipped";
    pub const CAPTURE_DROPS: &str = "fix_monitor_capture_drops";
    pub const CAPTURE_CONNECTIONS: &str = "fix_monitor_capture_connections";
    pub const CAPTURE_NOT_FOLLOWED: &str = "fix_monitor_capture_connections_not_followed";
    pub const CAPTURE_ENDED: &str = "fix_monitor_capture_connections_ended";
    pub const LIMIT_HITS: &str = "fix_monitor_fix_limit_hits";
    pub const LOG_FILES: &str = "fix_monitor_fix_log_files";
    pub const SEQUENCE_EVENTS: &str = "fix_session_sequence_events";
    pub const EXECUTION_REPORTS: &str = "fix_execution_reports";
    pub const ORDER_REJECTS: &str = "fix_order_rejects";
    pub const CANCEL_REJECTS: &str = "fix_cancel_rejects";
    pub const ORDER_FILL_LATENCY: &str = "fix_order_fill_latency";
    pub const PEAK_MESSAGES: &str = "fix_session_peak_messages";
    pub const THROTTLE_UTILIZATION: &str = "fix_session_throttle_utilization_ratio";
    pub const THROTTLE_REJECTS: &str = "fix_session_throttle_rejects";
    pub const CLOCK_SKEW: &str = "fix_clock_skew";

    /// Every name above (the docs' metric tables are checked against it).
    pub const ALL: &[&str] = &[
        LOGGED_ON,
        LOGONS,
        LOGOUTS,
        LOGONS_REFUSED,
        LOGON_ATTEMPTS_IN_WINDOW,
        LOGON_LOCKOUT_ATTEMPTS,
        MESSAGES,
        HEARTBEAT_INTERVAL,
        INBOUND_SILENCE,
        SEQUENCE_GAPS,
        RESEND_REQUESTS,
        TEST_REQUESTS,
        REJECTS,
        ORDER_ACK_LATENCY,
        ORDERS_UNANSWERED,
        DECODED,
        MALFORMED,
        BYTES_SKIPPED,
        CAPTURE_DROPS,
        CAPTURE_CONNECTIONS,
        CAPTURE_NOT_FOLLOWED,
        CAPTURE_ENDED,
        LIMIT_HITS,
        LOG_FILES,
        SEQUENCE_EVENTS,
        EXECUTION_REPORTS,
        ORDER_REJECTS,
        CANCEL_REJECTS,
        ORDER_FILL_LATENCY,
        PEAK_MESSAGES,
        THROTTLE_UTILIZATION,
        THROTTLE_REJECTS,
        CLOCK_SKEW,
    ];
}

/// Attribute keys.
pub mod attrs {
    pub const TARGET: &str = "target";
    pub const SESSION: &str = "session";
    pub const DIRECTION: &str = "direction";
    pub const MSG_TYPE: &str = "msg_type";
    pub const INITIATOR: &str = "initiator";
    pub const KIND: &str = "kind";
    pub const REQUEST: &str = "request";
    pub const SOURCE: &str = "source";
    pub const REASON: &str = "reason";
    pub const LIMIT: &str = "limit";
    pub const STATE: &str = "state";
    pub const EXEC_TYPE: &str = "exec_type";
    pub const WINDOW: &str = "window";
}

/// Keeps the observable instruments registered.
pub struct FixInstruments {
    _gauges: Vec<ObservableGauge<f64>>,
    _counters: Vec<ObservableCounter<u64>>,
}

fn base(s: &FixSessionJson) -> Vec<KeyValue> {
    vec![
        KeyValue::new(attrs::TARGET, s.target.clone().unwrap_or_default()),
        KeyValue::new(attrs::SESSION, s.session.clone()),
    ]
}

fn with(
    mut v: Vec<KeyValue>,
    k: &'static str,
    val: impl Into<opentelemetry::Value>,
) -> Vec<KeyValue> {
    v.push(KeyValue::new(k, val));
    v
}

fn per_direction(s: &FixSessionJson, f: fn(&DirectionJson) -> u64) -> Vec<(u64, Vec<KeyValue>)> {
    vec![
        (f(&s.inbound), with(base(s), attrs::DIRECTION, "in")),
        (f(&s.outbound), with(base(s), attrs::DIRECTION, "out")),
    ]
}

/// The values one callback observes: a number and its attributes each.
type Points<T> = Vec<(T, Vec<KeyValue>)>;

/// Registers observable instruments that read the latest [`FixState`] and keeps them.
struct Registrar<'a> {
    meter: &'a Meter,
    reader: FixReader,
    gauges: Vec<ObservableGauge<f64>>,
    counters: Vec<ObservableCounter<u64>>,
}

impl Registrar<'_> {
    fn gauge(
        &mut self,
        name: &'static str,
        unit: Option<&'static str>,
        desc: &'static str,
        f: fn(&FixState) -> Points<f64>,
    ) {
        let r = self.reader.clone();
        let b = self.meter.f64_observable_gauge(name).with_description(desc);
        let b = match unit {
            Some(u) => b.with_unit(u),
            None => b,
        };
        let g = b
            .with_callback(move |obs| {
                for (v, a) in f(&r.get()) {
                    obs.observe(v, &a);
                }
            })
            .build();
        self.gauges.push(g);
    }

    fn counter(&mut self, name: &'static str, desc: &'static str, f: fn(&FixState) -> Points<u64>) {
        let r = self.reader.clone();
        let c = self
            .meter
            .u64_observable_counter(name)
            .with_description(desc)
            .with_callback(move |obs| {
                for (v, a) in f(&r.get()) {
                    obs.observe(v, &a);
                }
            })
            .build();
        self.counters.push(c);
    }
}

/// Every session's points of a per-session function.
fn each_session<T>(s: &FixState, f: impl Fn(&FixSessionJson) -> Points<T>) -> Points<T> {
    s.sessions.iter().flat_map(f).collect()
}

/// Points of the layer's own counts with one attribute (`key` = the label given).
fn labelled<T>(
    key: &'static str,
    points: impl IntoIterator<Item = (T, &'static str)>,
) -> Points<T> {
    points
        .into_iter()
        .map(|(v, l)| (v, vec![KeyValue::new(key, l)]))
        .collect()
}

impl FixInstruments {
    pub fn new(meter: &Meter, reader: FixReader) -> FixInstruments {
        let mut r = Registrar {
            meter,
            reader,
            gauges: Vec::new(),
            counters: Vec::new(),
        };
        session_gauges(&mut r);
        session_counters(&mut r);
        outcome_counters(&mut r);
        burst_instruments(&mut r);
        layer_counters(&mut r);
        table_instruments(&mut r);
        FixInstruments {
            _gauges: r.gauges,
            _counters: r.counters,
        }
    }
}

/// Sequence events per session, and our orders' outcomes per target (summed over its
/// sessions: no session, order or symbol attributes).
fn outcome_counters(r: &mut Registrar) {
    r.counter(
        names::SEQUENCE_EVENTS,
        "Sequence-number events by direction and kind: reset_at_logon (141=Y), reset \
         (SequenceReset), gap_fill, too_low (not PossDup), poss_dup, poss_resend, resend_storm",
        |st| {
            each_session(st, |s| {
                let mut v = Vec::new();
                for (dir, kinds) in &s.sequence.events {
                    for (kind, n) in kinds {
                        let a = with(base(s), attrs::DIRECTION, *dir);
                        v.push((*n, with(a, attrs::KIND, *kind)));
                    }
                }
                v
            })
        },
    );
    r.counter(
        names::EXECUTION_REPORTS,
        "ExecutionReports received, by ExecType (FIX dictionary names; a 4.4 Trade is a \
         partial_fill or fill by OrdStatus)",
        |st| per_target(st, attrs::EXEC_TYPE, |o| &o.exec_reports),
    );
    r.counter(
        names::ORDER_REJECTS,
        "Orders rejected (ExecType 8), by OrdRejReason (none: without one; other: a value \
         outside the dictionary)",
        |st| per_target(st, attrs::REASON, |o| &o.order_rejects),
    );
    r.counter(
        names::CANCEL_REJECTS,
        "OrderCancelRejects received, by CxlRejReason",
        |st| per_target(st, attrs::REASON, |o| &o.cancel_rejects),
    );
}

/// Bursts: peaks per window each way, the throttle's utilization, throttle rejects.
fn burst_instruments(r: &mut Registrar) {
    r.gauge(
        names::PEAK_MESSAGES,
        None,
        "The most messages in any window of 1ms, 10ms, 100ms or 1s (window) over the last \
         minute, by direction",
        |st| {
            each_session(st, |s| {
                let mut v = Vec::new();
                for (dir, windows) in &s.bursts.peaks {
                    for (w, n) in windows {
                        let a = with(base(s), attrs::DIRECTION, *dir);
                        v.push((*n as f64, with(a, attrs::WINDOW, *w)));
                    }
                }
                v
            })
        },
    );
    r.gauge(
        names::THROTTLE_UTILIZATION,
        None,
        "Our outbound peak in the target's message_limit window over the last minute, divided \
         by its count (1: at the venue's throttle); sessions of targets with a message_limit",
        |st| {
            each_session(st, |s| {
                let u = s.bursts.throttle_utilization;
                u.map(|u| (u, base(s))).into_iter().collect()
            })
        },
    );
    r.counter(
        names::THROTTLE_REJECTS,
        "Rejects received that say the venue throttled us (BusinessRejectReason 8-10, or a \
         reject whose Text speaks of a throttle)",
        |st| each_session(st, |s| vec![(s.bursts.throttle_rejects, base(s))]),
    );
}

/// A per-session count map summed per target, with the map's key as `key`.
fn per_target(
    st: &FixState,
    key: &'static str,
    f: fn(&super::forensics::Outcomes) -> &std::collections::BTreeMap<&'static str, u64>,
) -> Points<u64> {
    let mut sums: std::collections::BTreeMap<(String, &'static str), u64> = Default::default();
    for s in &st.sessions {
        let target = s.target.clone().unwrap_or_default();
        for (name, n) in f(&s.outcomes) {
            *sums.entry((target.clone(), name)).or_default() += n;
        }
    }
    (sums.into_iter())
        .map(|((t, name), n)| {
            let a = vec![KeyValue::new(attrs::TARGET, t), KeyValue::new(key, name)];
            (n, a)
        })
        .collect()
}

/// Per-session gauges: logged on, HeartBtInt, inbound silence, logon attempts in the window;
/// and the targets' lockout thresholds.
fn session_gauges(r: &mut Registrar) {
    r.gauge(
        names::LOGON_ATTEMPTS_IN_WINDOW,
        None,
        "Logons we sent on the FIX session within its target's logon_lockout window (60s \
         without one)",
        |st| each_session(st, |s| vec![(s.logon_attempts_in_window as f64, base(s))]),
    );
    r.gauge(
        names::LOGON_LOCKOUT_ATTEMPTS,
        None,
        "The target's logon_lockout.attempts: logons within its window that lock a session out",
        |st| {
            (st.logon_lockouts.iter())
                .map(|l| {
                    let target = vec![KeyValue::new(attrs::TARGET, l.target.clone())];
                    (f64::from(l.attempts), target)
                })
                .collect()
        },
    );
    r.gauge(
        names::LOGGED_ON,
        None,
        "1 while the FIX session is logged on",
        |st| each_session(st, |s| vec![(if s.logged_on { 1.0 } else { 0.0 }, base(s))]),
    );
    r.gauge(
        names::HEARTBEAT_INTERVAL,
        Some("s"),
        "HeartBtInt from the last Logon",
        |st| {
            each_session(st, |s| {
                s.heartbeat_interval_seconds
                    .map(|h| (h as f64, base(s)))
                    .into_iter()
                    .collect()
            })
        },
    );
    r.gauge(
        names::INBOUND_SILENCE,
        Some("s"),
        "Time since the last message received on the session",
        |st| {
            each_session(st, |s| {
                s.inbound
                    .silence_seconds
                    .map(|v| (v, base(s)))
                    .into_iter()
                    .collect()
            })
        },
    );
}

/// Per-session counters: logons, logouts, messages by type, sequence events, rejects, orders.
fn session_counters(r: &mut Registrar) {
    r.counter(names::LOGONS, "Logons answered", |st| {
        each_session(st, |s| vec![(s.logons, base(s))])
    });
    r.counter(
        names::LOGONS_REFUSED,
        "Logons we sent answered by a Logout (refused; neither logons nor logouts)",
        |st| each_session(st, |s| vec![(s.logons_refused, base(s))]),
    );
    r.counter(
        names::LOGOUTS,
        "Logouts, by who sent the first Logout",
        |st| {
            each_session(st, |s| {
                vec![
                    (s.logouts_us, with(base(s), attrs::INITIATOR, "us")),
                    (s.logouts_them, with(base(s), attrs::INITIATOR, "them")),
                ]
            })
        },
    );
    r.counter(
        names::MESSAGES,
        "FIX messages by direction and MsgType",
        |st| {
            each_session(st, |s| {
                let mut v = Vec::new();
                for (dir, d) in [("in", &s.inbound), ("out", &s.outbound)] {
                    for (t, n) in &d.by_type {
                        let a = with(base(s), attrs::DIRECTION, dir);
                        v.push((*n, with(a, attrs::MSG_TYPE, t.clone())));
                    }
                }
                v
            })
        },
    );
    r.counter(
        names::SEQUENCE_GAPS,
        "MsgSeqNum gaps (not PossDup, not GapFill)",
        |st| each_session(st, |s| per_direction(s, |d| d.sequence_gaps)),
    );
    r.counter(names::RESEND_REQUESTS, "ResendRequests", |st| {
        each_session(st, |s| per_direction(s, |d| d.resend_requests))
    });
    r.counter(names::TEST_REQUESTS, "TestRequests", |st| {
        each_session(st, |s| per_direction(s, |d| d.test_requests))
    });
    r.counter(
        names::REJECTS,
        "Session (35=3) and business (35=j) rejects",
        |st| {
            each_session(st, |s| {
                let mut v = Vec::new();
                for (dir, d) in [("in", &s.inbound), ("out", &s.outbound)] {
                    let a = with(base(s), attrs::DIRECTION, dir);
                    v.push((d.session_rejects, with(a.clone(), attrs::KIND, "session")));
                    v.push((d.business_rejects, with(a, attrs::KIND, "business")));
                }
                v
            })
        },
    );
    r.counter(
        names::ORDERS_UNANSWERED,
        "Orders given up unanswered (expired or over the pending cap)",
        |st| each_session(st, |s| vec![(s.orders_unanswered, base(s))]),
    );
}

/// The layer's own decoding and capture counts, by source.
fn layer_counters(r: &mut Registrar) {
    r.counter(names::DECODED, "FIX messages decoded", |s| {
        labelled(
            attrs::SOURCE,
            [
                (s.stats.wire.messages, "wire"),
                (s.stats.logs.messages, "log"),
            ],
        )
    });
    r.counter(names::MALFORMED, "Malformed FIX messages skipped", |s| {
        labelled(
            attrs::SOURCE,
            [
                (s.stats.wire.malformed, "wire"),
                (s.stats.logs.malformed, "log"),
            ],
        )
    });
    r.counter(
        names::BYTES_SKIPPED,
        "Bytes skipped on the wire (lost in gaps, or before the next 8=FIX)",
        |s| labelled(attrs::SOURCE, [(s.stats.wire.bytes_skipped, "wire")]),
    );
    r.counter(
        names::CAPTURE_DROPS,
        "Packets the kernel dropped before the capture read them",
        |s| labelled(attrs::SOURCE, s.stats.capture_drops.map(|d| (d, "wire"))),
    );
}

/// The FIX layer's own tables: the capture's connections (followed now, not followed because
/// the table was full, ended by why), the other bounds hit, the log files.
fn table_instruments(r: &mut Registrar) {
    r.gauge(
        names::CAPTURE_CONNECTIONS,
        None,
        "TCP connections the wire capture follows now",
        |s| match s.capture {
            true => vec![(s.stats.connections_followed as f64, Vec::new())],
            false => Vec::new(),
        },
    );
    r.gauge(
        names::LOG_FILES,
        None,
        "Engine-log files followed now, and matching files waiting",
        |s| match s.logs.is_empty() {
            true => Vec::new(),
            false => labelled(
                attrs::STATE,
                [
                    (s.log_files.len() as f64, "followed"),
                    (s.stats.logs.files_not_followed as f64, "not_followed"),
                ],
            ),
        },
    );
    r.counter(
        names::CAPTURE_NOT_FOLLOWED,
        "Connections the wire capture did not follow because its table was full",
        |s| match s.capture {
            true => vec![(s.stats.wire.not_followed, Vec::new())],
            false => Vec::new(),
        },
    );
    r.counter(
        names::CAPTURE_ENDED,
        "Connections that left the wire capture's table, by why (fin, reset, tcp_closed: the \
         TCP layer saw it end, idle: never seen by the TCP layer)",
        |s| match s.capture {
            true => labelled(
                attrs::REASON,
                EndReason::ALL.map(|r| (s.stats.wire.ended.get(r), r.as_str())),
            ),
            false => Vec::new(),
        },
    );
    r.counter(
        names::LIMIT_HITS,
        "Items a bound of the FIX layer turned away: messages of sessions over the session cap, \
         messages folded into msg_type other, orders given up over the pending cap, log lines \
         too long",
        |s| {
            labelled(
                attrs::LIMIT,
                [
                    (s.stats.sessions_over_cap, "sessions"),
                    (s.stats.msg_types_folded, "msg_types"),
                    (s.stats.orders_over_cap, "pending_orders"),
                    (s.stats.logs.lines_too_long, "log_line"),
                ],
            )
        },
    );
}
